//! File transfer over real QUIC on 127.0.0.1: resume after a cut (only unverified bytes are
//! sent again), corruption detected piece by piece, content already held, size limits, and
//! several transfers at once on one session.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use morag_tests::{FaultProxy, Faults};
use morag_transport::{Inbound, ReceivedFile, Session, TransferError};

const MIB: u64 = 1 << 20;
/// Piece size the manifest picks for files up to 64 GiB.
const PIECE: u64 = MIB;

/// The next file the session receives (messages are not expected).
async fn recv_file(session: &Session, limit: Duration) -> ReceivedFile {
    match with_deadline(limit, "received file", session.recv()).await {
        Some(Inbound::File(f)) => f,
        other => panic!("expected a file, got {other:?}"),
    }
}

fn partial_path(store: &Path, hash: &str) -> std::path::PathBuf {
    store.join("partial").join(format!("{hash}.part"))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Wait until `path` has kept its length for 300 ms (the receiver flushes verified pieces after
/// the cut); returns that length.
async fn settled_len(path: &Path) -> u64 {
    let mut last = file_len(path);
    let mut since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(5);
    while since.elapsed() < Duration::from_millis(300) {
        assert!(
            Instant::now() < deadline,
            "{} keeps changing",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = file_len(path);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_cut() {
    let _serial = serial().await;
    init_tracing();
    let Proxied {
        pki: _pki,
        hub_side,
        listener: _listener,
        proxy,
        agent_side,
        client: _client,
        agent,
        hub,
    } = proxied("uploader").await;
    let mut hub_events = EventLog::new(&hub);
    let mut agent_events = EventLog::new(&agent);

    const SIZE: u64 = 64 * MIB;
    let (path, hash) = random_file(agent_side.store_dir(), "result.bin", SIZE as usize, 11);
    proxy.set_faults(Faults {
        bandwidth_bytes_per_sec: Some(16_000_000),
        ..Faults::default()
    });
    let started = Instant::now();
    let transfer = agent.send_file(&path, "result.bin");
    let mut progress = transfer.progress();
    let transfer = tokio::spawn(transfer.finish());

    // Cut the link once half the file has been handed to QUIC.
    let at_cut = progress
        .wait_for(|p| p.position >= SIZE / 2)
        .await
        .unwrap()
        .clone();
    assert_eq!(at_cut.attempts, 1);
    proxy.partition(true);
    let cut = Instant::now();
    eprintln!(
        "cut at {:.1} MiB handed to QUIC, {:?} after the start",
        at_cut.position as f64 / MIB as f64,
        cut - started
    );
    let (lost_at, _) = hub_events
        .wait_for(Duration::from_secs(6), is_lost)
        .await
        .expect("the receiver loses the session");
    agent_events
        .wait_for(Duration::from_secs(6), is_lost)
        .await
        .expect("the sender loses the session");
    let part = partial_path(hub_side.store_dir(), &hash);
    let verified_at_cut = settled_len(&part).await;
    let first_attempt_seen = progress.borrow().bytes_sent;
    eprintln!(
        "Lost {:?} after the cut; receiver holds {:.1} MiB verified in {}",
        lost_at - cut,
        verified_at_cut as f64 / MIB as f64,
        part.display()
    );
    assert!(verified_at_cut > 0, "some pieces arrived before the cut");
    assert_eq!(
        verified_at_cut % PIECE,
        0,
        "the partial file holds whole pieces"
    );
    assert!(verified_at_cut < SIZE);

    proxy.partition(false);
    let healed = Instant::now();
    let (up_at, _) = agent_events
        .wait_for(Duration::from_secs(15), is_connected)
        .await
        .expect("the session reconnects");
    eprintln!("reconnected {:?} after the partition ended", up_at - healed);
    let outcome = with_deadline(Duration::from_secs(30), "transfer", transfer)
        .await
        .unwrap()
        .expect("the transfer completes after the reconnect");
    let received = recv_file(&hub, Duration::from_secs(5)).await;

    // Accounting. Attempt 2 sends exactly [resumed_from, size); whatever else was handed to
    // QUIC belongs to attempt 1.
    let resumed_from = outcome.resumed_from;
    let second = SIZE - resumed_from;
    let first = outcome.bytes_sent - second;
    // Bytes of attempt 1 sent again: in flight or in an incomplete piece at the cut.
    let resent = first - resumed_from;
    // Bytes the receiver had verified at the cut and that were sent again anyway.
    let verified_resent = verified_at_cut.saturating_sub(resumed_from);
    eprintln!(
        "outcome: attempts {}, resumed_from {:.1} MiB, bytes_sent {:.1} MiB (attempt 1 {:.1} MiB, attempt 2 {:.1} MiB); \
         sent twice {:.1} MiB (lost in flight or unverified); verified bytes sent again {verified_resent}; total {:?}",
        outcome.attempts,
        resumed_from as f64 / MIB as f64,
        outcome.bytes_sent as f64 / MIB as f64,
        first as f64 / MIB as f64,
        second as f64 / MIB as f64,
        resent as f64 / MIB as f64,
        started.elapsed()
    );
    assert_eq!(outcome.attempts, 2);
    assert!(!outcome.skipped);
    assert!(
        verified_at_cut <= resumed_from,
        "everything verified before the cut is reused ({verified_at_cut} > {resumed_from})"
    );
    assert!(
        verified_resent <= PIECE,
        "at most one piece of verified data sent again"
    );
    assert!(
        resumed_from <= verified_at_cut + PIECE,
        "the resume point ({resumed_from}) is backed by what the receiver held ({verified_at_cut})"
    );
    assert!(
        first >= first_attempt_seen,
        "attempt 1 handed {first} bytes to QUIC, progress showed at least {first_attempt_seen}"
    );
    assert!(first >= resumed_from);
    assert_eq!(outcome.hash, hash);
    assert_eq!(received.hash, hash);
    assert_eq!(received.resumed_from, resumed_from);
    assert!(!part.exists(), "the partial file became the final one");
    assert_eq!(
        file_hash(&received.path),
        hash,
        "the receiver holds the source's bytes"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_detected() {
    let _serial = serial().await;
    init_tracing();
    let Proxied {
        pki: _pki,
        hub_side,
        listener: _listener,
        proxy,
        agent_side,
        client: _client,
        agent,
        hub,
    } = proxied("flaky-disk").await;

    const SIZE: u64 = 32 * MIB;
    const FLIP_AT: u64 = SIZE - 1000;
    let (path, hash) = random_file(agent_side.store_dir(), "result.bin", SIZE as usize, 21);
    proxy.set_faults(Faults {
        bandwidth_bytes_per_sec: Some(8_000_000),
        ..Faults::default()
    });
    let transfer = agent.send_file(&path, "result.bin");
    let mut progress = transfer.progress();
    let transfer = tokio::spawn(transfer.finish());

    // Hashed, barely started: change a byte near the end of the source.
    let p = progress
        .wait_for(|p| !p.hash.is_empty())
        .await
        .unwrap()
        .clone();
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(FLIP_AT)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(FLIP_AT)).unwrap();
        f.write_all(&[b[0] ^ 0xff]).unwrap();
    }
    eprintln!(
        "flipped byte {FLIP_AT} with {:.1} MiB handed to QUIC",
        progress.borrow().position as f64 / MIB as f64
    );
    assert_eq!(p.hash, hash);
    assert!(
        progress.borrow().position < 8 * MIB,
        "the flip must happen before the sender reads the last piece"
    );

    let result = with_deadline(Duration::from_secs(30), "transfer", transfer)
        .await
        .unwrap();
    eprintln!("corrupted transfer ended with: {result:?}");
    let expected_piece = FLIP_AT / PIECE;
    match result {
        Err(TransferError::Corrupted { piece }) => assert_eq!(piece, expected_piece),
        other => panic!("expected Corrupted {{ piece: {expected_piece} }}, got {other:?}"),
    }
    assert!(
        !hub_side.store_dir().join(&hash).exists(),
        "no final file under the hash"
    );
    let part = partial_path(hub_side.store_dir(), &hash);
    let kept = settled_len(&part).await;
    eprintln!(
        "receiver kept {:.1} MiB of verified pieces",
        kept as f64 / MIB as f64
    );
    assert_eq!(
        kept,
        expected_piece * PIECE,
        "the pieces before the bad one are kept"
    );
    assert!(
        try_recv(&hub, Duration::from_millis(300)).await.is_none(),
        "no file is delivered to the application"
    );
    // The session itself is fine.
    agent.send_body(progress_msg()).unwrap();
    assert_eq!(
        label(&recv_message(&hub, Duration::from_secs(5)).await),
        "still-here"
    );
    proxy.shutdown().await;
}

fn progress_msg() -> morag_transport::Body {
    progress("still-here", 0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_oversize_and_concurrent() {
    let _serial = serial().await;
    init_tracing();
    let pki = Pki::new();
    let mut hub_side = pki.hub_config();
    hub_side.config.max_file_size = 8 * MIB;
    let listener = listen(hub_side.config.clone());
    let addr = listener.local_addr().unwrap();
    let agent_side = pki.agent_config("repeater");
    let (_client, agent, hub) = connect_pair(&listener, addr, agent_side.config.clone()).await;
    let dir = agent_side.store_dir();

    // The same content twice: the second transfer is skipped.
    let (path, hash) = random_file(dir, "a.bin", (3 * MIB) as usize, 31);
    let first = agent.send_file(&path, "a.bin").await.expect("first send");
    assert!(!first.skipped);
    assert_eq!(first.bytes_sent, 3 * MIB);
    let got = recv_file(&hub, Duration::from_secs(5)).await;
    assert_eq!((got.hash.as_str(), got.skipped), (hash.as_str(), false));
    let second = agent
        .send_file(&path, "a-again.bin")
        .await
        .expect("second send");
    eprintln!("second send of the same content: {second:?}");
    assert!(second.skipped, "the receiver already holds it");
    assert_eq!(second.bytes_sent, 0);
    assert_eq!(second.hash, hash);
    let got = recv_file(&hub, Duration::from_secs(5)).await;
    assert!(got.skipped);
    assert_eq!(got.path, hub_side.store_dir().join(&hash));

    // Over the receiver's limit.
    let (big, big_hash) = random_file(dir, "big.bin", (9 * MIB) as usize, 32);
    let e = agent
        .send_file(&big, "big.bin")
        .await
        .expect_err("over the receiver's max_file_size");
    eprintln!("oversize: {e}");
    match &e {
        TransferError::Rejected(m) => assert!(m.contains("limit"), "{m}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(e.to_string().contains("refused"), "{e}");
    assert!(!hub_side.store_dir().join(&big_hash).exists());

    // Several at once on one session.
    let files: Vec<_> = (0..4)
        .map(|i| {
            random_file(
                dir,
                &format!("c{i}.bin"),
                (3 * MIB) as usize + i * 1000,
                40 + i as u64,
            )
        })
        .collect();
    let t = Instant::now();
    let transfers: Vec<_> = files
        .iter()
        .map(|(p, _)| agent.send_file(p, p.file_name().unwrap().to_string_lossy()))
        .collect();
    let mut outcomes = Vec::new();
    for tr in transfers {
        outcomes.push(tr.await.expect("concurrent transfer"));
    }
    eprintln!("4 concurrent transfers of ~3 MiB in {:?}", t.elapsed());
    let mut received = Vec::new();
    for _ in 0..files.len() {
        received.push(recv_file(&hub, Duration::from_secs(5)).await);
    }
    for ((_, hash), outcome) in files.iter().zip(&outcomes) {
        assert_eq!(&outcome.hash, hash);
        assert!(!outcome.skipped);
        let r = received
            .iter()
            .find(|r| &r.hash == hash)
            .unwrap_or_else(|| panic!("{hash} not received"));
        assert_eq!(file_hash(&r.path), *hash);
    }
}

/// A bad but working link: delay, loss, reordering and duplication all at once (jitter is left
/// out: per-datagram jitter reorders nearly every packet, which QUIC reads as loss). The
/// session stays up, requests are answered, and a transfer arrives verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_link() {
    let _serial = serial().await;
    init_tracing();
    let pki = Pki::new();
    let hub_side = pki.hub_config();
    let listener = listen(hub_side.config.clone());
    let proxy = FaultProxy::start(localhost(), listener.local_addr().unwrap())
        .await
        .unwrap();
    proxy.set_faults(Faults {
        delay: Duration::from_millis(10),
        jitter: Duration::ZERO,
        loss: 0.01,
        reorder: 0.01,
        duplicate: 0.01,
        ..Faults::default()
    });
    let agent_side = pki.agent_config("lossy");
    let (_client, agent, hub) =
        connect_pair(&listener, proxy.local_addr(), agent_side.config.clone()).await;
    let mut agent_events = EventLog::new(&agent);

    let responder = {
        let hub = hub.clone();
        tokio::spawn(async move {
            while let Some(Inbound::Message(req)) = hub.recv().await {
                let _ = hub.respond(
                    &req,
                    morag_transport::Body::Reply(morag_transport::Reply {
                        ok: true,
                        message: label(&req),
                    }),
                );
            }
        })
    };
    let t = Instant::now();
    for i in 0..20u32 {
        let req = morag_transport::Envelope::user("probe", &i).unwrap();
        agent.request(req).await.expect("request over a lossy link");
    }
    eprintln!("20 requests over the lossy link: {:?}", t.elapsed());
    responder.abort();
    let t = Instant::now();

    const SIZE: usize = 2 << 20;
    let (path, hash) = random_file(agent_side.store_dir(), "lossy.bin", SIZE, 5);
    let outcome = with_deadline(
        Duration::from_secs(60),
        "transfer",
        agent.send_file(&path, "lossy.bin").finish(),
    )
    .await
    .expect("transfer over a lossy link");
    assert_eq!(outcome.hash, hash);
    assert_eq!(outcome.attempts, 1);
    eprintln!("{SIZE} bytes over the lossy link: {:?}", t.elapsed());
    let received = recv_file(&hub, Duration::from_secs(5)).await;
    assert_eq!(file_hash(&received.path), hash);
    let stats = proxy.stats();
    eprintln!("proxy: {stats:?}; agent status {:?}", agent.status());
    assert!(stats.dropped > 0 && stats.duplicated > 0 && stats.reordered > 0);
    assert!(
        !agent_events.any(is_lost),
        "the session must survive a lossy link"
    );
}
