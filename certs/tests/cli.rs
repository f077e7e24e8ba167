//! Runs the real `morag-certs` binary in a temporary directory.

use std::path::Path;
use std::process::{Command, Output};

use morag_certs::{peer_identity, RevocationList, Role};

fn morag_certs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_morag-certs"))
        .args(args)
        .output()
        .expect("run morag-certs")
}

/// Run and require success; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = morag_certs(args);
    assert!(
        out.status.success(),
        "morag-certs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run and require failure; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = morag_certs(args);
    assert!(!out.status.success(), "morag-certs {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

fn cert_der(path: &Path) -> Vec<u8> {
    morag_certs::cert_der_from_pem(&std::fs::read(path).unwrap()).unwrap()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_issue_show_revoke() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let ca_s = ca.to_str().unwrap();

    let out = ok(&["init", "--dir", ca_s, "--name", "test CA", "--days", "30"]);
    for file in ["ca.pem", "ca.key", "revoked.txt", "crl.pem"] {
        assert!(ca.join(file).is_file(), "{file} missing");
        assert!(out.contains(file), "init did not report {file}: {out}");
    }
    #[cfg(unix)]
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
    let crl = RevocationList::from_pem(&std::fs::read(ca.join("crl.pem")).unwrap()).unwrap();
    assert!(crl.is_empty());

    // A second init refuses to replace the CA unless forced.
    let err = fails(&["init", "--dir", ca_s]);
    assert!(err.contains("exists; pass --force to overwrite"), "{err}");
    let old_ca = std::fs::read(ca.join("ca.pem")).unwrap();
    ok(&["init", "--dir", ca_s, "--days", "30", "--force"]);
    assert_ne!(std::fs::read(ca.join("ca.pem")).unwrap(), old_ca);

    // Hub certificate, written next to the CA by default.
    let out = ok(&[
        "issue-hub",
        "--dir",
        ca_s,
        "--name",
        "hub1",
        "--dns",
        "hub.example.org",
        "--ip",
        "127.0.0.1",
        "--days",
        "10",
    ]);
    let hub_pem = ca.join("hub-hub1.pem");
    assert!(
        out.contains("hub-hub1.pem") && out.contains("hub-hub1.key"),
        "{out}"
    );
    #[cfg(unix)]
    assert_eq!(mode(&ca.join("hub-hub1.key")), 0o600);
    let hub = peer_identity(&cert_der(&hub_pem)).unwrap();
    assert_eq!((hub.role, hub.id.as_str()), (Role::Hub, "hub1"));

    // Agent certificate into another directory.
    let agents = tmp.path().join("agents");
    let agents_s = agents.to_str().unwrap();
    ok(&[
        "issue-agent",
        "--dir",
        ca_s,
        "--id",
        "gpu-01",
        "--out",
        agents_s,
        "--days",
        "10",
    ]);
    let agent_pem = agents.join("agent-gpu-01.pem");
    #[cfg(unix)]
    assert_eq!(mode(&agents.join("agent-gpu-01.key")), 0o600);
    let agent = peer_identity(&cert_der(&agent_pem)).unwrap();
    assert_eq!((agent.role, agent.id.as_str()), (Role::Agent, "gpu-01"));

    // Overwriting needs --force.
    let old = std::fs::read(&agent_pem).unwrap();
    let err = fails(&[
        "issue-agent",
        "--dir",
        ca_s,
        "--id",
        "gpu-01",
        "--out",
        agents_s,
        "--days",
        "10",
    ]);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        std::fs::read(&agent_pem).unwrap(),
        old,
        "file changed on refusal"
    );
    ok(&[
        "issue-agent",
        "--dir",
        ca_s,
        "--id",
        "gpu-01",
        "--out",
        agents_s,
        "--days",
        "10",
        "--force",
    ]);
    assert_ne!(std::fs::read(&agent_pem).unwrap(), old);
    let agent = peer_identity(&cert_der(&agent_pem)).unwrap();

    // A certificate may not outlive the CA.
    let err = fails(&[
        "issue-agent",
        "--dir",
        ca_s,
        "--id",
        "long",
        "--days",
        "365",
    ]);
    assert!(err.contains("outlive the CA"), "{err}");

    // show prints role, id, serial.
    let out = ok(&["show", agent_pem.to_str().unwrap()]);
    assert!(out.contains("role: agent"), "{out}");
    assert!(out.contains("id: gpu-01"), "{out}");
    assert!(
        out.contains(&format!("serial: {}", hex::encode(&agent.serial))),
        "{out}"
    );
    assert!(out.contains("not_after: "), "{out}");

    // Revoke by file and by serial; the CRL lists both, numbers increase.
    let out = ok(&[
        "revoke",
        "--dir",
        ca_s,
        "--cert",
        agent_pem.to_str().unwrap(),
    ]);
    assert!(out.contains("crl.pem"), "{out}");
    let crl = RevocationList::from_pem(&std::fs::read(ca.join("crl.pem")).unwrap()).unwrap();
    assert!(crl.is_revoked(&agent.serial));
    assert!(!crl.is_revoked(&hub.serial));
    assert_eq!(crl.crl_number(), Some(&[2u8][..]));

    ok(&[
        "revoke",
        "--dir",
        ca_s,
        "--serial",
        &hex::encode(&hub.serial),
    ]);
    let crl = RevocationList::from_pem(&std::fs::read(ca.join("crl.pem")).unwrap()).unwrap();
    assert_eq!(crl.len(), 2);
    assert!(crl.is_revoked(&agent.serial) && crl.is_revoked(&hub.serial));
    assert_eq!(crl.crl_number(), Some(&[3u8][..]));
    let state = std::fs::read_to_string(ca.join("revoked.txt")).unwrap();
    assert!(state.contains(&hex::encode(&agent.serial)), "{state}");

    // crl re-signs with the same content.
    ok(&["crl", "--dir", ca_s]);
    let crl = RevocationList::from_pem(&std::fs::read(ca.join("crl.pem")).unwrap()).unwrap();
    assert_eq!(crl.len(), 2);
}

#[test]
fn bad_input_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let ca_s = ca.to_str().unwrap();

    let err = fails(&["issue-agent", "--dir", ca_s, "--id", "x"]);
    assert!(err.contains("morag-certs init"), "{err}");

    ok(&["init", "--dir", ca_s]);
    let err = fails(&["issue-agent", "--dir", ca_s, "--id", "bad/id"]);
    assert!(err.contains("'/'") && err.contains("A-Z a-z 0-9"), "{err}");
    let err = fails(&["issue-agent", "--dir", ca_s, "--id", &"a".repeat(65)]);
    assert!(err.contains("at most 64"), "{err}");
    assert!(!ca.join("agent-bad").exists());

    let err = fails(&["issue-hub", "--dir", ca_s, "--name", "h", "--dns", "a b"]);
    assert!(err.contains("not a valid DNS name"), "{err}");
    let err = fails(&["issue-hub", "--dir", ca_s, "--name", "h", "--ip", "nope"]);
    assert!(err.contains("nope"), "{err}");

    fails(&["revoke", "--dir", ca_s]);
    let err = fails(&["revoke", "--dir", ca_s, "--serial", "zz"]);
    assert!(err.contains("not hex"), "{err}");

    // A certificate from another CA is not silently "revoked".
    let other = tmp.path().join("other");
    let other_s = other.to_str().unwrap();
    ok(&["init", "--dir", other_s]);
    ok(&["issue-agent", "--dir", other_s, "--id", "stranger"]);
    let err = fails(&[
        "revoke",
        "--dir",
        ca_s,
        "--cert",
        other.join("agent-stranger.pem").to_str().unwrap(),
    ]);
    assert!(err.contains("not issued by this CA"), "{err}");

    let err = fails(&["show", ca.join("ca.key").to_str().unwrap()]);
    assert!(err.contains("no CERTIFICATE block"), "{err}");
    let err = fails(&["show", ca.join("ca.pem").to_str().unwrap()]);
    assert!(err.contains("no OU"), "{err}");
}
