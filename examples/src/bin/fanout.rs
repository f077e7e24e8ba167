//! One sender fans a file out to three receivers. Each receiver listens on its own port
//! with its own store; the sender dials each and sends the same file to all three at once.
//! Every receiver's stored copy is hashed again here and compared with the source.
//!
//! Run: `cargo run -p morag-examples --release --bin fanout [size_mib]` (default 32 MiB)

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use morag_examples::{agent_name, file_hash, init_tracing, write_test_file, Log, Pki};
use morag_transport::{close_code, Client, Inbound, Listener, ReceivedFile};
use tokio::task::JoinSet;

const RECEIVERS: [&str; 3] = ["recv-1", "recv-2", "recv-3"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let size_mib: u64 = match std::env::args().nth(1) {
        Some(a) => a.parse().context("size_mib must be a whole number")?,
        None => 32,
    };
    let log = Log::new();
    let pki = Pki::new()?;

    let source = write_test_file(&pki.dir().join("payload.bin"), size_mib << 20, 0x5eed)?;
    let source_hash = file_hash(&source)?;
    log.line(
        "sender",
        format!("source {size_mib} MiB, blake3 {source_hash}"),
    );

    // Three receivers, each waiting for one verified file.
    let mut listeners = Vec::new();
    let mut receivers: JoinSet<anyhow::Result<(String, ReceivedFile)>> = JoinSet::new();
    for id in RECEIVERS {
        let listener = std::sync::Arc::new(
            Listener::bind("127.0.0.1:0".parse()?, pki.agent(id)?)
                .with_context(|| format!("{id}: bind"))?,
        );
        log.line(id, format!("listening on {}", listener.local_addr()?));
        listeners.push((id, listener.clone()));
        receivers.spawn(async move {
            let session = listener.accept().await.context("listener closed")?;
            while let Some(inbound) = session.recv().await {
                if let Inbound::File(file) = inbound {
                    return Ok((id.to_string(), file));
                }
            }
            bail!("{id}: session closed before a file arrived")
        });
    }

    let sender = Client::new(pki.hub("sender")?).context("sender: client")?;
    let started = Instant::now();
    let mut sends = JoinSet::new();
    for (id, listener) in &listeners {
        let session = sender
            .connect(listener.local_addr()?, &agent_name(id))
            .await
            .with_context(|| format!("connect to {id}"))?;
        log.line("sender", format!("connected to {}", session.peer_id()));
        let (id, source) = (id.to_string(), source.clone());
        sends.spawn(async move {
            let outcome = session.send_file(source, "payload.bin").await;
            (id, session, outcome)
        });
    }

    let mut sessions = Vec::new();
    while let Some(joined) = sends.join_next().await {
        let (id, session, outcome) = joined?;
        let outcome = outcome.with_context(|| format!("send to {id}"))?;
        log.line(
            "sender",
            format!(
                "{id}: verified by receiver, hash {} size {} bytes_sent {} attempts {}",
                outcome.hash, outcome.size, outcome.bytes_sent, outcome.attempts
            ),
        );
        ensure!(outcome.hash == source_hash, "{id}: outcome hash differs");
        sessions.push(session);
    }
    let elapsed = started.elapsed();

    let mut stored: Vec<(String, PathBuf)> = Vec::new();
    while let Some(joined) = receivers.join_next().await {
        let (id, file) = joined??;
        let hash = file_hash(&file.path)?;
        let matches = hash == source_hash && file.size == size_mib << 20;
        log.line(
            &id,
            format!(
                "stored {} ({} bytes) at {}: re-hashed {hash}, {}",
                file.name,
                file.size,
                file.path.display(),
                if matches {
                    "matches the source"
                } else {
                    "DIFFERS"
                }
            ),
        );
        ensure!(matches, "{id}: stored file does not match the source");
        stored.push((id, file.path));
    }
    ensure!(
        stored.len() == RECEIVERS.len(),
        "not every receiver got the file"
    );
    let total = (size_mib << 20) as f64 * RECEIVERS.len() as f64;
    log.line(
        "sender",
        format!(
            "fanned out {} MiB to {} receivers in {:.2?} ({:.0} MiB/s total, hashing included)",
            size_mib,
            RECEIVERS.len(),
            elapsed,
            total / (1 << 20) as f64 / elapsed.as_secs_f64()
        ),
    );

    for s in &sessions {
        s.close(close_code::NORMAL, "done").await;
    }
    for (_, l) in &listeners {
        l.close(close_code::NORMAL, "done").await;
    }
    sender.close().await;
    log.line("fanout", "ok: all 3 receivers hold the verified file");
    Ok(())
}
