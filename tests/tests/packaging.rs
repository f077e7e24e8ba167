//! What the packages ship: the systemd units pass `systemd-analyze verify`, the settings files
//! start real daemons, and every asset cargo-deb is told to pack exists.

mod hub_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hub_common::*;

fn packaging() -> PathBuf {
    repo_root().join("packaging")
}

/// The unit with `/usr/bin/<name>` pointed at this build's binary, so `verify` can check it.
fn unit_for_this_build(dir: &Path, name: &str) -> PathBuf {
    let text =
        std::fs::read_to_string(packaging().join(format!("systemd/{name}.service"))).unwrap();
    assert!(
        text.contains(&format!("ExecStart=/usr/bin/{name} ")),
        "{name}: ExecStart"
    );
    let text = text.replace(
        &format!("/usr/bin/{name}"),
        bin(name).canonicalize().unwrap().to_str().unwrap(),
    );
    let out = dir.join(format!("{name}.service"));
    std::fs::write(&out, text).unwrap();
    out
}

#[test]
fn systemd_units_verify_and_are_hardened() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["morag-hub", "morag-agent"] {
        let text =
            std::fs::read_to_string(packaging().join(format!("systemd/{name}.service"))).unwrap();
        for must in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=\n",
            "SystemCallFilter=@system-service",
            "KillSignal=SIGTERM",
            &format!("User={name}"),
            &format!("StateDirectory={name}"),
        ] {
            assert!(text.contains(must), "{name}.service lacks {must:?}");
        }
        let unit = unit_for_this_build(tmp.path(), name);
        let Ok(out) = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit)
            .output()
        else {
            eprintln!("SKIPPED verify of {name}: systemd-analyze is not installed (Debian package systemd)");
            continue;
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        // verify complains about what this machine lacks (the service user, other units);
        // anything about the unit's own lines is a defect.
        let own: Vec<_> = stderr
            .lines()
            .filter(|l| l.contains(&format!("{name}.service:")))
            .collect();
        assert!(own.is_empty(), "{name}.service: {}", own.join("\n"));
        eprintln!("{name}.service verified: {}", stderr.trim());
    }
}

#[tokio::test]
async fn the_shipped_settings_files_start_the_daemons() {
    let tmp = tempfile::tempdir().unwrap();
    // The ports come from flags, which beat the file; everything else from packaging/.
    let hub_toml = format!("--config={}", packaging().join("hub.toml").display());
    let hub = Hub::start(&tmp.path().join("hub"), &[&hub_toml]).await;
    let dir = tmp.path().join("edge");
    std::fs::create_dir_all(&dir).unwrap();
    issue_agent_cert(&hub.dir, &dir, "edge-pkg");
    // The shipped file plus one line whose effect the API shows, so the file is known read.
    let shipped = std::fs::read_to_string(packaging().join("agent.toml")).unwrap();
    let agent_toml = tmp.path().join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!("{shipped}\nname = \"from-agent-toml\"\n"),
    )
    .unwrap();
    let _agent = Agent::start(
        &hub.quic(),
        &dir,
        "edge-pkg",
        &["--config", agent_toml.to_str().unwrap()],
        &[],
    );
    let agents = hub.api.wait_agents(1).await;
    assert_eq!(agents, vec!["edge-pkg".to_string()]);
    let (_, list) = hub.api.get("/api/v1/agents").await;
    assert_eq!(list["agents"][0]["name"], "from-agent-toml", "{list}");
    assert_eq!(list["agents"][0]["max_concurrent_tasks"], 1, "{list}");
}

#[test]
fn every_packed_asset_exists() {
    for krate in ["daemon", "worker-agent"] {
        let dir = repo_root().join(krate);
        let manifest: toml::Value =
            toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
        let deb = &manifest["package"]["metadata"]["deb"];
        let assets = deb["assets"].as_array().expect("assets");
        assert!(assets.len() >= 3, "{krate}: {assets:?}");
        for a in assets {
            let src = a[0].as_str().unwrap();
            if src.starts_with("target/") {
                continue; // built by cargo deb
            }
            assert!(dir.join(src).is_file(), "{krate}: asset {src} is missing");
        }
        let scripts = dir.join(deb["maintainer-scripts"].as_str().unwrap());
        let postinst = std::fs::read_to_string(scripts.join("postinst")).unwrap();
        assert!(
            postinst.contains("#DEBHELPER#"),
            "{krate}: postinst needs #DEBHELPER#"
        );
        let units = &deb["systemd-units"];
        let unit = dir
            .join(units["unit-scripts"].as_str().unwrap())
            .join(format!("{}.service", units["unit-name"].as_str().unwrap()));
        assert!(unit.is_file(), "{}", unit.display());
    }
}

fn healthcheck(bin_name: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin(bin_name))
        .arg("healthcheck")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// What a container relies on: health checks for both daemons, and an agent that enrolls
/// itself on first start with a join token from a file.
#[tokio::test]
async fn health_checks_and_enrollment_on_first_start() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(&tmp.path().join("hub"), &[]).await;
    let (ok, text) = healthcheck("morag-hub", &["--url", &hub.api.base]);
    assert!(ok && text.contains("healthy"), "{text}");
    let data = hub.dir.to_str().unwrap().to_string();
    let (ok, text) = healthcheck("morag-hub", &["--data", &data]);
    assert!(ok, "the URL from the data directory: {text}");
    let (ok, text) = healthcheck("morag-hub", &["--url", "http://127.0.0.1:9"]);
    assert!(!ok && text.contains("no answer"), "{text}");

    let dir = tmp.path().join("edge");
    let dir_s = dir.to_str().unwrap().to_string();
    let (ok, text) = healthcheck("morag-agent", &["--dir", &dir_s]);
    assert!(!ok && text.contains("no status"), "{text}");
    let token_file = tmp.path().join("join-token");
    std::fs::write(&token_file, format!("{}\n", hub.join_token("10m"))).unwrap();
    let token_env = token_file.to_str().unwrap().to_string();
    let _agent = Agent::start(
        &hub.quic(),
        &dir,
        "first-start",
        &[],
        &[
            ("MORAG_REMOTE_JOIN_TOKEN_FILE", token_env.as_str()),
            ("MORAG_REMOTE_WORKER_ID", "first-start"),
        ],
    );
    assert_eq!(
        hub.api.wait_agents(1).await,
        vec!["first-start".to_string()]
    );
    assert!(dir.join("agent.pem").is_file(), "enrolled into --dir");
    let healthy = until(Duration::from_secs(15), "agent healthcheck", || async {
        let (ok, text) = healthcheck("morag-agent", &["--dir", &dir_s]);
        ok.then_some(text)
    })
    .await;
    assert!(
        healthy.contains("first-start") && healthy.contains(&hub.quic()),
        "{healthy}"
    );

    // The hub goes away: the agent says it is not connected.
    hub.proc.kill9();
    let unhealthy = until(Duration::from_secs(20), "agent unhealthy", || async {
        let (ok, text) = healthcheck("morag-agent", &["--dir", &dir_s]);
        (!ok).then_some(text)
    })
    .await;
    assert!(unhealthy.contains("not connected"), "{unhealthy}");
}
