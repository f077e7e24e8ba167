//! One file fetched with iroh-blobs between two endpoints on loopback, the way iroh-blobs is
//! meant to be used for what our transport does: the sender's `FsStore` imports the file
//! (BLAKE3/bao outboard; not timed), the receiver's `FsStore` fetches it over one iroh (QUIC)
//! connection, verifying as it goes, and stores it (timed). No relay, no discovery: the
//! receiver dials the sender's loopback address.
//!
//! `bench-iroh FILE RUNS`: prints one line per run and a last line
//! `iroh-blobs: <best MiB/s> MiB/s <best seconds> s <CPU s/GiB>` that the transport benchmark
//! reads. Each run fetches into a fresh store, so nothing is already there.

use std::time::{Duration, Instant};

use anyhow::Context;
use iroh::endpoint::presets;
use iroh::{Endpoint, EndpointAddr, RelayMode};
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::BlobsProtocol;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let file = std::path::absolute(args.next().context("usage: bench-iroh FILE RUNS")?)?;
    let runs: usize = args.next().map_or(Ok(2), |r| r.parse())?;
    let size = std::fs::metadata(&file)?.len();
    let dir = tempdir()?;

    let send_store = FsStore::load(dir.join("send")).await?;
    let tag = send_store.blobs().add_path(&file).await?;
    let sender = endpoint().await?;
    let router = iroh::protocol::Router::builder(sender.clone())
        .accept(iroh_blobs::ALPN, BlobsProtocol::new(&send_store, None))
        .spawn();
    let addr = sender
        .bound_sockets()
        .into_iter()
        .find(|a| a.is_ipv4())
        .context("sender has no IPv4 socket")?;
    let sender_addr = EndpointAddr::new(sender.id()).with_ip_addr(addr);

    let mut best = Duration::MAX;
    let mut cpu_best = Duration::MAX;
    for run in 0..runs {
        let recv_store = FsStore::load(dir.join(format!("recv{run}"))).await?;
        let receiver = endpoint().await?;
        let conn = receiver
            .connect(sender_addr.clone(), iroh_blobs::ALPN)
            .await?;
        let cpu0 = cpu_time();
        let t = Instant::now();
        let stats = recv_store.remote().fetch(conn, tag.hash).await?;
        let took = t.elapsed();
        let cpu = cpu_time() - cpu0;
        anyhow::ensure!(
            recv_store.blobs().has(tag.hash).await?,
            "the fetched blob is not complete in the receiver's store"
        );
        eprintln!(
            "  iroh-blobs run {run}: {took:.3?}, {} payload bytes",
            stats.payload_bytes_read
        );
        if took < best {
            best = took;
            cpu_best = cpu;
        }
        receiver.close().await;
        recv_store.shutdown().await?;
    }
    // The router's shutdown ends the protocol handler, which shuts the sender's store down.
    router.shutdown().await?;
    let _ = send_store.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let mib = size as f64 / (1u64 << 20) as f64;
    println!(
        "iroh-blobs: {:.1} MiB/s {:.6} s {:.3} CPU s/GiB",
        mib / best.as_secs_f64(),
        best.as_secs_f64(),
        cpu_best.as_secs_f64() * (1u64 << 30) as f64 / size as f64
    );
    Ok(())
}

/// An endpoint on loopback with no relay and no address lookup.
async fn endpoint() -> anyhow::Result<Endpoint> {
    Ok(Endpoint::builder(presets::Minimal)
        .relay_mode(RelayMode::Disabled)
        .bind_addr("127.0.0.1:0")?
        .bind()
        .await?)
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let base = std::env::var_os("TMPDIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = base.join(format!("bench-iroh-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// CPU time of this process (user + system).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is the 12th, stime the
    // 13th of what follows ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    let ticks = f.iter().sum::<u64>();
    Duration::from_secs_f64(ticks as f64 / 100.0)
}
