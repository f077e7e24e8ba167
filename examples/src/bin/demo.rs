//! The main-job demo: a hub and a worker on loopback with generated certificates. The worker
//! reports task progress, the hub cancels the task and gets a reply, the worker sends its
//! partial result as a verified file, and both sides close.
//!
//! Run: `cargo run -p morag-examples --bin demo`

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use morag_examples::{file_hash, init_tracing, Log, Pki};
use morag_transport::{
    close_code, Body, Client, Envelope, Inbound, Listener, Reply, Session, TaskCancel, TaskProgress,
};

const TASK: &str = "task-42";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let log = Log::new();
    let pki = Pki::new()?;
    log.line(
        "demo",
        format!("generated a CA and certificates in {}", pki.dir().display()),
    );

    let hub = Listener::bind("127.0.0.1:0".parse()?, pki.hub("hub")?).context("hub: bind")?;
    let addr = hub.local_addr()?;
    log.line("hub", format!("listening on {addr} (QUIC, mutual TLS)"));

    let artifact = pki.dir().join("partial-transcript.txt");
    write_transcript(&artifact)?;
    let artifact_hash = file_hash(&artifact)?;

    let worker_client = Client::new(pki.agent("gpu-01")?).context("worker: client")?;
    let worker = tokio::spawn(run_worker(worker_client.clone(), addr, artifact, log));
    let hub_session = tokio::time::timeout(Duration::from_secs(10), hub.accept())
        .await
        .context("no worker connected")?
        .context("hub closed")?;
    log.line(
        "hub",
        format!(
            "accepted {} (role {}, serial {})",
            hub_session.peer_id(),
            hub_session.peer().role,
            hub_session.peer().serial_hex()
        ),
    );

    let received = tokio::time::timeout(
        Duration::from_secs(30),
        run_hub(&hub_session, &artifact_hash, log),
    )
    .await
    .context("hub side timed out")??;
    worker.await.context("worker task")??;

    hub.close(close_code::NORMAL, "demo over").await;
    worker_client.close().await;
    log.line(
        "demo",
        format!("ok: progress, cancel, reply and a verified file ({received} bytes)"),
    );
    Ok(())
}

/// The hub: watch progress, cancel the task once it is past half way, then take the file.
async fn run_hub(session: &Session, expected_hash: &str, log: Log) -> anyhow::Result<u64> {
    loop {
        let Some(Inbound::Message(env)) = session.recv().await else {
            bail!("worker went away before reporting progress");
        };
        let Body::TaskProgress(p) = &env.body else {
            log.line("hub", format!("got {}", env.body.kind()));
            continue;
        };
        log.line(
            "hub",
            format!("progress {} {:.0}% ({})", p.task_id, p.percent, p.stage),
        );
        if p.percent >= 50.0 {
            break;
        }
    }
    log.line("hub", format!("cancelling {TASK} (urgent)"));
    let cancel = Body::TaskCancel(TaskCancel {
        task_id: TASK.into(),
        reason: "user asked to stop".into(),
    });
    let reply = session
        .request(Envelope::new(cancel))
        .await
        .context("cancel request")?;
    let Body::Reply(r) = reply.body else {
        bail!("expected a reply, got {}", reply.body.kind());
    };
    log.line("hub", format!("reply: ok={} {:?}", r.ok, r.message));
    ensure!(r.ok, "worker did not cancel");

    loop {
        match session.recv().await {
            Some(Inbound::File(f)) => {
                let hash = file_hash(&f.path)?;
                log.line(
                    "hub",
                    format!(
                        "file {} verified: {} bytes, blake3 {}…, stored at {}",
                        f.name,
                        f.size,
                        &f.hash[..16],
                        f.path.display()
                    ),
                );
                ensure!(
                    hash == expected_hash && f.hash == expected_hash,
                    "stored file hash {hash} differs from the worker's {expected_hash}"
                );
                return Ok(f.size);
            }
            Some(Inbound::Message(env)) => log.line("hub", format!("got {}", env.body.kind())),
            None => bail!("worker went away before sending the file"),
        }
    }
}

/// The worker: connect, report progress, obey the cancel, send the partial result.
async fn run_worker(
    client: Client,
    hub: std::net::SocketAddr,
    artifact: std::path::PathBuf,
    log: Log,
) -> anyhow::Result<()> {
    let session = client
        .connect(hub, "hub")
        .await
        .context("worker: connect")?;
    log.line("gpu-01", format!("connected to {}", session.peer_id()));
    let mut percent = 0.0;
    for (p, stage) in [(10.0, "decode"), (55.0, "transcribe")] {
        percent = p;
        session.send_body(Body::TaskProgress(TaskProgress {
            task_id: TASK.into(),
            percent: p,
            stage: stage.into(),
            ..Default::default()
        }))?;
        log.line("gpu-01", format!("sent progress {TASK} {p:.0}% ({stage})"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    loop {
        let Some(Inbound::Message(env)) = session.recv().await else {
            bail!("hub went away before the cancel");
        };
        if let Body::TaskCancel(c) = &env.body {
            log.line("gpu-01", format!("cancel {}: {:?}", c.task_id, c.reason));
            session.respond(
                &env,
                Body::Reply(Reply {
                    ok: true,
                    message: format!("stopped {} at {percent:.0}%", c.task_id),
                }),
            )?;
            break;
        }
    }
    let outcome = session
        .send_file(&artifact, "partial-transcript.txt")
        .await
        .context("send partial result")?;
    log.line(
        "gpu-01",
        format!(
            "sent partial-transcript.txt: {} bytes, verified by the hub (blake3 {}…)",
            outcome.size,
            &outcome.hash[..16]
        ),
    );
    session.close(close_code::NORMAL, "task cancelled").await;
    log.line("gpu-01", "closed the session");
    Ok(())
}

fn write_transcript(path: &Path) -> anyhow::Result<()> {
    let mut text = String::new();
    for i in 0..20_000 {
        text.push_str(&format!(
            "[{:02}:{:02}.{:03}] segment {i}: the quick brown fox jumps over the lazy dog\n",
            i / 600,
            (i / 10) % 60,
            (i % 10) * 100
        ));
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}
