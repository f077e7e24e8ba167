//! The hub's dashboard in a real browser: a real hub and agent here, Debian's headless
//! Chromium driven by playwright-core (`tests/browser/dashboard.mjs`): log in, see the agent,
//! watch an API-submitted job's progress bar reach 100 %, open its transcript and download an
//! artifact, cancel a long job, drain the agent. Screenshots land in `target/browser-artifacts/`.
//!
//! Needs `node`, `/usr/bin/chromium` (or `$CHROMIUM`) and `tests/browser/node_modules`
//! (`scripts/test.sh` installs all three). Without them the test says what is missing and
//! passes, unless `MORAG_REQUIRE_BROWSER=1` (set by `.ci/run`), which makes it fail instead.

mod hub_common;

use std::path::PathBuf;
use std::time::Duration;

use hub_common::*;

fn missing_browser_parts() -> Vec<String> {
    let mut missing = Vec::new();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !PathBuf::from(&chromium).is_file() {
        missing.push(format!("{chromium} (Debian package chromium)"));
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        missing.push("node (Debian package nodejs)".into());
    }
    if !repo_root()
        .join("tests/browser/node_modules/playwright-core")
        .is_dir()
    {
        missing.push("tests/browser/node_modules (npm ci --prefix tests/browser)".into());
    }
    missing
}

#[tokio::test]
async fn dashboard_in_headless_chromium() {
    let missing = missing_browser_parts();
    if !missing.is_empty() {
        let msg = format!(
            "browser test cannot run, missing: {}; scripts/test.sh installs them",
            missing.join(", ")
        );
        if std::env::var("MORAG_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!("{msg} (MORAG_REQUIRE_BROWSER=1)");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"), &[]).await;
    let dir = tmp.path().join("edge-ui");
    std::fs::create_dir_all(&dir).unwrap();
    issue_agent_cert(&hub.dir, &dir, "edge-ui");
    let _agent = Agent::start(&hub.quic(), &dir, "edge-ui", &[], &[]);
    hub.api.wait_agents(1).await;

    let out_dir = repo_root().join("target/browser-artifacts");
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(repo_root().join("tests/browser/dashboard.mjs"))
        .env("HUB_URL", &hub.api.base)
        .env("HUB_TOKEN", &hub.api.token)
        .env("AGENT_ID", "edge-ui")
        .env("OUT_DIR", &out_dir)
        .env("SHORT_MEDIA", jfk())
        .env("LONG_MEDIA", long_recording(40))
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("the browser test finished within 5 minutes")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "the dashboard checks failed (screenshots in {}):\n{stderr}\nhub log:\n{}",
        out_dir.display(),
        hub.proc.log_text()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    for shot in ["02-overview.png", "04-job-page.png", "06-cancelled.png"] {
        let meta = std::fs::metadata(out_dir.join(shot)).expect(shot);
        assert!(meta.len() > 10_000, "{shot} is {} bytes", meta.len());
    }
}
