// For the reuse/live benchmark (tests/benches/reuse_live.rs): opens a job's page on the
// dashboard in Debian's headless Chromium and prints when (ms since the epoch) the first line
// of its live transcript appeared: `first-line-at-ms N`.
import { chromium } from "playwright-core";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set (tests/benches/reuse_live.rs sets it)`);
  return v;
};
const HUB = env("HUB_URL");
const TOKEN = env("HUB_TOKEN");
const JOB = env("JOB_ID");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${HUB}/`);
  await page.evaluate((t) => localStorage.setItem("morag-hub-token", t), TOKEN);
  await page.goto(`${HUB}/#/jobs/${JOB}`);
  // Polled in the page every animation frame: the time it is first seen.
  const at = await page.waitForFunction(
    () => document.querySelector("#live-transcript li") ? Date.now() : null,
    null,
    { timeout: 600_000, polling: "raf" },
  );
  console.log(`first-line-at-ms ${await at.jsonValue()}`);
} finally {
  await browser.close();
}
