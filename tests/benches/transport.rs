//! Transport benchmark: one run, one table. All on loopback, release build.
//!
//! ```text
//! cargo bench -p morag-tests --bench transport
//! MORAG_BENCH_BYTES=268435456 cargo bench -p morag-tests --bench transport
//! ```
//!
//! Settings (environment): `MORAG_BENCH_BYTES` (per transfer, default 1 GiB),
//! `MORAG_BENCH_RUNS` (throughput runs per method, best reported, default 2),
//! `MORAG_BENCH_LOAD_SECS` (seconds of transfer under which latency is sampled, default 3),
//! `MORAG_BENCH_CONNECTS` (connects per mode, default 10), `MORAG_BENCH_ONLY` (`links`: only
//! part (d), whose own settings are in `links`; `loopback`: all but (d); `throughput`: only
//! (a); `ours`: only our side of (a), for profiling), `MORAG_BENCH_IROH` (path of the
//! `bench-iroh` binary: adds iroh-blobs to (a); build it with
//! `cargo build --release --manifest-path tests/bench-iroh/Cargo.toml`). Temp files go to
//! `TMPDIR`.
//!
//! # Layout
//! - `common`: certificates, configs, settings, test data, percentiles.
//! - `pair`: a morag-transport listener + client session pair.
//! - `throughput` (a): morag-transport vs plain quinn vs TLS 1.3 over TCP.
//! - `latency` (b): heartbeat and request RTT idle/under load vs a single-stream design.
//! - `connect` (c): connect to first message at 50 ms RTT, full handshake vs 0-RTT.
//! - `links` (d): a file through the fault proxy (loss, reordering, long RTT, a cap), ours
//!   against QUIC's defaults and plain quinn. `MORAG_BENCH_ONLY=links` runs only this part.

#[path = "transport/common.rs"]
mod common;
#[path = "transport/connect.rs"]
mod connect;
#[path = "transport/latency.rs"]
mod latency;
#[path = "transport/links.rs"]
mod links;
#[path = "transport/pair.rs"]
mod pair;
#[path = "transport/throughput.rs"]
mod throughput;

use std::time::Duration;

use anyhow::Context;
use common::{cpu_per_gib, median, mib_per_s, ms, percentile, verdict, Pki, Settings};

/// Idle period before the loaded one in (b).
const IDLE: Duration = Duration::from_secs(2);

fn main() -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        println!("transport: benchmark");
        return Ok(());
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let pki = Pki::generate()?;
    let dir = tempfile::tempdir().context("temp dir")?;
    let only = std::env::var("MORAG_BENCH_ONLY").unwrap_or_default();
    anyhow::ensure!(
        ["", "links", "loopback", "throughput", "ours"].contains(&only.as_str()),
        "MORAG_BENCH_ONLY={only:?}: expected links, loopback, throughput or ours"
    );
    if only == "links" {
        return links_section(&pki, dir.path()).await;
    }
    let s = Settings::from_env()?;
    let file = dir.path().join("source.bin");
    let mib = s.bytes as f64 / (1u64 << 20) as f64;
    eprintln!("writing {mib:.0} MiB test file in {}", dir.path().display());
    common::write_file(&file, s.bytes)?;

    eprintln!("(a) throughput");
    let mut pair = pair::Pair::start(&pki, dir.path()).await?;
    let ours = throughput::ours(&mut pair, &file, s.runs).await?;
    if only == "ours" {
        // For profiling our side alone.
        println!(
            "ours: {:.0} MiB/s transfer alone, {:.2} CPU s/GiB",
            mib_per_s(s.bytes, ours.transfer),
            cpu_per_gib(ours.cpu, s.bytes)
        );
        pair.close().await;
        return Ok(());
    }
    let quinn = throughput::plain_quinn(&pki, dir.path(), s.bytes, s.runs).await?;
    let (tcp, suite) = throughput::tls_tcp(&pki, s.bytes, s.runs).await?;
    let iroh = match std::env::var_os("MORAG_BENCH_IROH") {
        Some(bin) => Some(throughput::iroh_blobs(bin.as_ref(), &file, s.runs)?),
        None => None,
    };

    // ---- the table ----
    let ours_t = mib_per_s(s.bytes, ours.transfer);
    let ours_h = mib_per_s(s.bytes, ours.with_hash);
    let quinn_t = mib_per_s(s.bytes, quinn.time);
    let tcp_t = mib_per_s(s.bytes, tcp.time);
    println!();
    println!(
        "MoRAG transport benchmark: loopback, {} cores, {mib:.0} MiB per transfer, best of {} runs",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        s.runs
    );
    println!();
    println!("(a) throughput                                         MiB/s      time  CPU s/GiB");
    let row = |name: &str, t: f64, d: Duration, cpu: Option<Duration>| {
        let cpu = cpu.map_or("".into(), |c| format!("{:.2}", cpu_per_gib(c, s.bytes)));
        println!("  {name:<50} {t:>7.0} {:>9} {cpu:>10}", format!("{d:.3?}"))
    };
    row(
        "morag-transport verified file, incl. source hash",
        ours_h,
        ours.with_hash,
        Some(ours.cpu),
    );
    row(
        "morag-transport verified file, transfer alone",
        ours_t,
        ours.transfer,
        None,
    );
    row(
        "plain quinn, 1 stream, from memory",
        quinn_t,
        quinn.time,
        Some(quinn.cpu),
    );
    row(
        "TLS 1.3 over TCP, tokio-rustls, from memory",
        tcp_t,
        tcp.time,
        Some(tcp.cpu),
    );
    if let Some(iroh) = &iroh {
        row(
            "iroh-blobs 0.104, FsStore to FsStore (fetch alone)",
            mib_per_s(s.bytes, iroh.time),
            iroh.time,
            Some(iroh.cpu),
        );
    }
    println!("  (TLS/TCP cipher suite: {suite}; CPU = both ends, whole process)");
    let r_quinn = ours_t / quinn_t;
    println!(
        "  ratio ours/quinn (transfer alone) {r_quinn:.2}  [target >= 0.8: {}]",
        verdict(r_quinn >= 0.8)
    );
    println!(
        "  ratio ours/quinn (incl. hash)     {:.2}",
        ours_h / quinn_t
    );
    println!("  ratio ours/tcp   (transfer alone) {:.2}", ours_t / tcp_t);
    println!("  ratio ours/tcp   (incl. hash)     {:.2}", ours_h / tcp_t);
    match &iroh {
        Some(iroh) => {
            let r = ours_t / mib_per_s(s.bytes, iroh.time);
            println!(
                "  ratio ours/iroh-blobs (transfer alone vs fetch alone) {r:.2}  [target >= 1.25: {}]",
                verdict(r >= 1.25)
            );
        }
        None => println!(
            "  (iroh-blobs comparison skipped: build tests/bench-iroh and set MORAG_BENCH_IROH)"
        ),
    }
    if only == "throughput" {
        pair.close().await;
        return Ok(());
    }

    eprintln!("(b) latency idle and under load");
    let lat = latency::morag(&mut pair, &file, IDLE, s.load_secs).await?;
    pair.close().await;
    let single = latency::single_stream(&pki, dir.path(), s.bytes, IDLE, s.load_secs).await?;

    eprintln!("(c) connect to first message at 50 ms RTT");
    let conn = connect::run(&pki, dir.path(), s.connects).await?;

    println!();
    println!(
        "(b) round trip, ms (every {} ms; load: {} transfers, {:.2?} morag / {} transfers, {:.2?} single stream)",
        common::HEARTBEAT.as_millis(),
        lat.transfers,
        lat.load_time,
        single.transfers,
        single.load_time
    );
    println!(
        "  {:<44} {:>6} {:>9} {:>9} {:>6} {:>9} {:>9}",
        "", "n idle", "p50 idle", "p99 idle", "n load", "p50 load", "p99 load"
    );
    let lrow = |name: &str, sp: &latency::Split| {
        println!(
            "  {name:<44} {:>6} {:>9} {:>9} {:>6} {:>9} {:>9}",
            sp.idle.len(),
            ms(percentile(&sp.idle, 50.0)),
            ms(percentile(&sp.idle, 99.0)),
            sp.load.len(),
            ms(percentile(&sp.load, 50.0)),
            ms(percentile(&sp.load, 99.0)),
        )
    };
    lrow("morag heartbeat (datagram)", &lat.heartbeat);
    lrow("morag request/response (control stream)", &lat.request);
    lrow(
        "single-stream quinn ping (behind file chunks)",
        &single.ping,
    );
    let hb_target = |sp: &latency::Split| -> Option<(Duration, Duration, bool)> {
        let idle = percentile(&sp.idle, 99.0)?;
        let load = percentile(&sp.load, 99.0)?;
        let limit = idle * 2 + Duration::from_millis(1);
        Some((load, limit, load <= limit))
    };
    if let Some((load, limit, met)) = hb_target(&lat.heartbeat) {
        println!(
            "  heartbeat p99 under load {} ms vs limit 2 x idle p99 + 1 ms = {} ms  [target: {}]",
            ms(Some(load)),
            ms(Some(limit)),
            verdict(met)
        );
    } else {
        println!("  heartbeat target: not enough samples [target: MISSED]");
    }
    if let Some((load, limit, met)) = hb_target(&lat.request) {
        println!(
            "  (request/response p99 under load {} ms vs the same rule {} ms: {})",
            ms(Some(load)),
            ms(Some(limit)),
            verdict(met)
        );
    }

    println!();
    let rtt = connect::ONE_WAY * 2;
    println!(
        "(c) connect to first message via fault proxy, RTT {} ms, median of {}",
        rtt.as_millis(),
        s.connects
    );
    let zero = |m: &connect::Mode| m.zero_rtt.iter().filter(|z| **z).count();
    println!(
        "  {:<40} {:>11} {:>15} {:>8}",
        "", "connect ms", "first reply ms", "0-RTT"
    );
    for (name, m) in [
        ("full handshake (fresh Client)", &conn.full),
        ("0-RTT reconnect (same Client)", &conn.resumed),
    ] {
        println!(
            "  {name:<40} {:>11} {:>15} {:>5}/{}",
            ms(median(&m.connect)),
            ms(median(&m.first_message)),
            zero(m),
            m.zero_rtt.len()
        );
    }
    let full = median(&conn.full.first_message).unwrap_or_default();
    let resumed = median(&conn.resumed.first_message).unwrap_or_default();
    let saved = full.saturating_sub(resumed);
    let saved_rtts = saved.as_secs_f64() / rtt.as_secs_f64();
    println!(
        "  0-RTT saves {} ms = {saved_rtts:.2} RTT to the first reply (connect alone: {:.2} RTT); session.zero_rtt() true on {}/{}  [target >= 1 RTT: {}]",
        ms(Some(saved)),
        median(&conn.full.connect).unwrap_or_default().saturating_sub(median(&conn.resumed.connect).unwrap_or_default()).as_secs_f64() / rtt.as_secs_f64(),
        zero(&conn.resumed),
        conn.resumed.zero_rtt.len(),
        verdict(saved_rtts >= 1.0 && zero(&conn.resumed) == conn.resumed.zero_rtt.len())
    );
    if only.is_empty() {
        links_section(&pki, dir.path()).await?;
    }
    Ok(())
}

/// Part (d): runs every sender over every link and prints the table.
async fn links_section(pki: &Pki, dir: &std::path::Path) -> anyhow::Result<()> {
    fn var<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
        match std::env::var(name) {
            Ok(v) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("{name}={v:?} is not valid")),
            Err(_) => Ok(default),
        }
    }
    let bytes: u64 = var("MORAG_BENCH_LINK_BYTES", 16u64 << 20)?;
    let limit = Duration::from_secs(var("MORAG_BENCH_LINK_LIMIT", 90u64)?);
    let file = dir.join("link-source.bin");
    common::write_file(&file, bytes)?;
    let bench = links::Bench {
        pki,
        dir,
        file: &file,
        bytes,
        limit,
    };
    let senders = links::senders()?;
    let all = links::links();
    eprintln!("(d) links");
    // results[link][sender]
    let mut results = Vec::new();
    for (li, link) in all.iter().enumerate() {
        let mut row = Vec::new();
        for sender in &senders {
            let r = bench.run(link, sender, 7 + li as u64).await?;
            eprintln!(
                "  {} / {}: {} (alarms {})",
                link.name,
                sender.name(),
                r.time.map_or("gave up".into(), |t| format!("{t:.2?}")),
                r.alarms
            );
            row.push(r);
        }
        results.push(row);
    }

    let mib = bytes as f64 / (1u64 << 20) as f64;
    println!();
    println!(
        "(d) links: {mib:.0} MiB verified file through the fault proxy (in process); MiB/s, share of the same sender's clean link at that RTT"
    );
    println!(
        "    [alarms: Suspect/Lost events on either end, production heartbeat settings]; gave up after {} s",
        limit.as_secs()
    );
    for (si, sender) in senders.iter().enumerate() {
        println!("  {}", sender.name());
        for (li, link) in all.iter().enumerate() {
            let clean = all.iter().position(|l| l.name == link.clean).unwrap_or(li);
            let r = &results[li][si];
            let share = match (r.time, results[clean][si].time) {
                (Some(t), Some(c)) => {
                    format!("{:>4.0} %", 100.0 * c.as_secs_f64() / t.as_secs_f64())
                }
                _ => "   - ".into(),
            };
            println!(
                "    {:<24} {:>8} {share}  alarms {}",
                link.name,
                r.time
                    .map_or("gave up".into(), |t| format!("{:.1}", mib_per_s(bytes, t))),
                r.alarms
            );
        }
    }
    // Targets: ours (row 0) against its clean link and against plain quinn (row 2).
    let goodput = |li: usize, si: usize| results[li][si].time.map(|t| mib_per_s(bytes, t));
    let at = |name: &str| all.iter().position(|l| l.name == name).expect("link");
    let clean = at("20 ms clean");
    for (name, share_target) in [("20 ms, 1 % loss", 0.5), ("20 ms, 2 % reordered", 0.8)] {
        let li = at(name);
        let (Some(ours), Some(ours_clean)) = (goodput(li, 0), goodput(clean, 0)) else {
            println!("  {name}: ours did not finish  [target: MISSED]");
            continue;
        };
        let share = ours / ours_clean;
        let vs_quinn = goodput(li, 2).map_or(f64::INFINITY, |q| ours / q);
        println!(
            "  {name}: ours {:.0} % of clean [target >= {:.0} %: {}], {vs_quinn:.1}x plain quinn [target >= 5x: {}]",
            share * 100.0,
            share_target * 100.0,
            verdict(share >= share_target),
            verdict(vs_quinn >= 5.0)
        );
    }
    let alarms: u64 = results.iter().flatten().map(|r| r.alarms).sum();
    println!(
        "  alarms in all runs of ours: {alarms}  [target 0: {}]",
        verdict(alarms == 0)
    );
    Ok(())
}
