// The dashboard in a real browser: Debian's Chromium, headless, driven by playwright-core
// against a real hub with a real agent (started by tests/tests/dashboard.rs, which passes
// their addresses in the environment). Exits non-zero with a message on the first failed
// check; screenshots go to $OUT_DIR.
import { chromium } from "playwright-core";
import { readFile, mkdir } from "node:fs/promises";
import path from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set (tests/tests/dashboard.rs sets it)`);
  return v;
};
const HUB = env("HUB_URL");
const TOKEN = env("HUB_TOKEN");
const AGENT = env("AGENT_ID");
const OUT = env("OUT_DIR");
const SHORT = env("SHORT_MEDIA");
const LONG = env("LONG_MEDIA");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

const step = (s) => console.log(`[dashboard] ${s}`);
function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

async function submit(file) {
  const form = new FormData();
  form.append("type", "audio");
  form.append("gpu", "any");
  form.append("file", new Blob([await readFile(file)]), path.basename(file));
  const r = await fetch(`${HUB}/api/v1/jobs`, { method: "POST", headers: { Authorization: `Bearer ${TOKEN}` }, body: form });
  const v = await r.json();
  check(r.status === 201, `submit answered ${r.status}: ${JSON.stringify(v)}`);
  return v.id;
}

async function getJson(route) {
  const r = await fetch(`${HUB}${route}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  return r.json();
}

const job = (id) => getJson(`/api/v1/jobs/${id}`);

await mkdir(OUT, { recursive: true });
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 }, acceptDownloads: true });
  page = await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  // Nothing may be fetched from outside the hub.
  const foreign = [];
  page.on("request", (r) => { if (!r.url().startsWith(HUB) && !r.url().startsWith("blob:") && !r.url().startsWith("data:")) foreign.push(r.url()); });

  step("the login form comes first; a wrong token is refused with the hub's message");
  await page.goto(`${HUB}/`);
  await page.locator("#login-form").waitFor({ state: "visible" });
  await page.fill("#token", "mh_wrong");
  await page.click("#login-form button[type=submit]");
  await page.locator("#login-error", { hasText: "wrong bearer token" }).waitFor();
  await page.screenshot({ path: `${OUT}/01-login-refused.png` });

  step("log in; the agent is listed, connected and healthy");
  await page.fill("#token", TOKEN);
  await page.click("#login-form button[type=submit]");
  await page.locator("#login").waitFor({ state: "hidden" });
  check(await page.locator("#nav").isVisible(), "the navigation shows once logged in");
  const agentRow = page.locator(`tr[data-agent="${AGENT}"]`);
  await agentRow.locator(".badge.healthy").waitFor({ timeout: 30_000 });
  const agentText = await agentRow.innerText();
  check(agentText.includes("no GPU (CPU)") || /#0 /.test(agentText), `GPU column: ${agentText}`);
  check(/RTT \d+(\.\d)? ms/.test(agentText), `connection RTT shown: ${agentText}`);
  check(await page.evaluate(() => localStorage.getItem("morag-hub-token")) === TOKEN, "token kept in the browser");
  await page.locator("#overview .cards").waitFor();
  await page.screenshot({ path: `${OUT}/02-overview.png`, fullPage: true });

  step("a job submitted through the API shows up; its progress bar reaches 100 %");
  await page.click('nav a[href="#/jobs"]');
  const short = await submit(SHORT);
  const row = page.locator(`tr[data-job="${short}"]`);
  await row.waitFor({ timeout: 30_000 });
  const seen = new Set();
  const deadline = Date.now() + 120_000;
  for (;;) {
    const now = await row.locator('[role="progressbar"]').getAttribute("aria-valuenow").catch(() => null);
    if (now !== null) seen.add(Number(now));
    if (now === "100" && (await row.getAttribute("data-state")) === "completed") break;
    check(Date.now() < deadline, `progress bar of ${short} never reached 100 (saw ${[...seen]})`);
    await page.waitForTimeout(50);
  }
  check((await row.innerText()).includes(AGENT), "the finished job's row names its agent");
  step(`progress values seen: ${[...seen].sort((a, b) => a - b).join(", ")}`);
  await page.screenshot({ path: `${OUT}/03-jobs-completed.png`, fullPage: true });

  step("the job page shows the transcript, the attempt, the events and downloads artifacts");
  await row.locator("a").first().click();
  await page.locator("#transcript").waitFor({ timeout: 30_000 });
  const text = (await page.locator("#transcript").innerText()).toLowerCase();
  check(text.includes("country"), `transcript shows the recording's words: ${text}`);
  check(/\[00:0\d\]/.test(text), `segments carry [MM:SS] times: ${text}`);
  await page.locator('#timeline li[data-kind="completed"]').waitFor();
  const attempts = await page.locator("#job table").first().innerText();
  check(attempts.includes(AGENT) && attempts.includes("completed"), `attempt row: ${attempts}`);
  // The device the agent ran it on (no GPU here: the CPU), in its own column.
  check(attempts.split("\n").some((line) => line.split("\t").includes("cpu")), `attempt device: ${attempts}`);
  const [dl] = await Promise.all([
    page.waitForEvent("download"),
    page.locator("button.download", { hasText: "result.json" }).click(),
  ]);
  const doc = JSON.parse(await readFile(await dl.path(), "utf8"));
  check(Array.isArray(doc.segments) && doc.segments.length > 0 && doc.success === true, "downloaded result.json is the result document");
  await page.screenshot({ path: `${OUT}/04-job-page.png`, fullPage: true });

  step("a long job is cancelled from the jobs list while it runs");
  const long = await submit(LONG);
  await page.click('nav a[href="#/jobs"]');
  const longRow = page.locator(`tr[data-job="${long}"]`);
  await page.locator(`tr[data-job="${long}"][data-state="running"]`).waitFor({ timeout: 60_000 });
  await page.screenshot({ path: `${OUT}/05-running.png`, fullPage: true });

  step("the running job's page shows its transcript growing before the job completes");
  await page.goto(`${HUB}/#/jobs/${long}`);
  await page.locator("#live-transcript li").first().waitFor({ timeout: 60_000 });
  const liveState = (await job(long)).state;
  check(liveState === "running", `the job is still ${liveState} while its live text shows`);
  const firstLines = await page.locator("#live-transcript li").count();
  await page.waitForFunction((n) => document.querySelectorAll("#live-transcript li").length > n, firstLines, { timeout: 60_000 });
  const liveText = (await page.locator("#live-transcript").innerText()).toLowerCase();
  check(liveText.includes("country"), `live transcript shows the recording's words: ${liveText.slice(0, 200)}`);
  check((await page.locator("#job-state").getAttribute("data-state")) !== "completed", "not completed yet");
  await page.screenshot({ path: `${OUT}/05b-live-transcript.png`, fullPage: true });
  await page.click('nav a[href="#/jobs"]');
  await longRow.waitFor({ timeout: 30_000 });
  await longRow.locator("button.cancel").click();
  await page.locator(`tr[data-job="${long}"][data-state="cancelled"]`).waitFor({ timeout: 30_000 });
  const cancelled = await job(long);
  check(cancelled.state === "cancelled", `the hub says ${cancelled.state}`);
  await page.screenshot({ path: `${OUT}/06-cancelled.png`, fullPage: true });

  step("drain and undrain the agent from its row");
  await page.click('nav a[href="#/agents"]');
  await agentRow.locator("button.drain", { hasText: /^Drain$/ }).click();
  await agentRow.locator(".badge.drained").waitFor({ timeout: 15_000 });
  await agentRow.locator("button.drain", { hasText: /^Undrain$/ }).click();
  await agentRow.locator(".badge.healthy").waitFor({ timeout: 15_000 });

  step("set the agent's policy from its row; the hub applies it");
  check((await agentRow.locator(".policy").first().innerText()).includes("policy: default"), "default policy shown");
  // The row asks field by field: queues, content types, capability, jobs at once.
  const answers = ["", "audio", "", "3"];
  const onDialog = (d) => d.accept(answers.shift() ?? "");
  page.on("dialog", onDialog);
  await agentRow.locator("button.policy").click();
  await agentRow.locator(".policy", { hasText: "3 at once" }).waitFor({ timeout: 15_000 });
  page.off("dialog", onDialog);
  const listed = (await getJson("/api/v1/agents")).agents.find((a) => a.id === AGENT);
  check(JSON.stringify(listed.policy) === JSON.stringify({ content_types: ["audio"], max_concurrent: 3 }),
    `the hub holds the policy: ${JSON.stringify(listed.policy)}`);

  step("the overview counts what happened");
  await page.click('nav a[href="#/"]');
  const cards = await page.locator("#overview .cards").innerText();
  check(/(^|\n)1\s*\ncompleted, last hour/.test(cards), `overview cards: ${cards}`);
  await page.screenshot({ path: `${OUT}/07-overview-after.png`, fullPage: true });

  step("the same recording again takes the first result: the job page says so");
  const again = await submit(SHORT);
  const reused = await job(again);
  check(reused.state === "completed" && reused.reused_from === short, `reused: ${JSON.stringify(reused).slice(0, 300)}`);
  await page.goto(`${HUB}/#/jobs/${again}`);
  await page.locator("#job-reused").waitFor({ timeout: 15_000 });
  check((await page.locator("#job-reused").innerText()).includes(short), "names the job whose result it took");
  await page.locator("#transcript").waitFor({ timeout: 15_000 });

  step("log out forgets the token");
  await page.click("#logout");
  await page.locator("#login-form").waitFor({ state: "visible" });
  check(!(await page.locator("#nav").isVisible()), "the navigation hides when logged out");
  check(await page.evaluate(() => localStorage.getItem("morag-hub-token")) === null, "token removed");

  check(pageErrors.length === 0, `no script errors: ${pageErrors.join(" | ")}`);
  check(foreign.length === 0, `nothing fetched from outside the hub: ${foreign.join(", ")}`);
  step("all checks passed");
} catch (e) {
  if (page) await page.screenshot({ path: `${OUT}/failure.png`, fullPage: true }).catch(() => {});
  console.error(`[dashboard] FAILED: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
