//! Hub benchmark: per-job overhead, dispatch throughput, and the cost of idle agents. All on
//! loopback; prints one report and asserts nothing about timing.
//!
//! ```text
//! cargo bench -p morag-tests --bench hub
//! cargo bench -p morag-tests --bench hub -- --seq 100 --burst 500 --idle 100,1000
//! cargo bench -p morag-tests --bench hub -- --only idle --idle 100,1000,3000,10000
//! cargo bench -p morag-tests --bench hub -- --only flood --flood-rate 10000 --window 10
//! ```
//!
//! Parts (1) and (2) run on each store: SQLite with `sync=full` and `sync=normal`, and
//! PostgreSQL (a server of the bench's own from Debian's binaries, `fsync` on, started by
//! `scripts/test-postgres.sh`; skipped with a note when it cannot start).
//!
//! Arguments: `--seq N` sequential jobs per store (default 200, after 5 warm-up jobs),
//! `--burst M` jobs submitted at once (1000), `--agents K` and `--slots S` in-process agents
//! and their slots (4 x 8), `--submitters N` submissions in flight during the burst (16),
//! `--idle 100,1000,3000,10000` the idle-agent ramp (also `MORAG_BENCH_IDLE`), `--window SECS`
//! measurement window per step (10), `--connect-limit SECS` a step that connects slower than
//! this ends the ramp (60), `--connecting N` connects in flight (64), `--pings-only` no
//! `Heartbeat` bodies in (3) (the transport's ping datagrams alone), `--flood-rate N` progress
//! reports per second in (4) (10000), `--only jobs|idle|flood`.
//! Temp files go to `TMPDIR`.
//!
//! # Layout
//! - `common`: settings, agent certificates from a hub's CA, percentiles, `/proc` readings.
//! - `jobs` (1) and (2): in-process hub and agents with a no-op processor; jobs through the
//!   HTTP API, completion from `hub.subscribe()`.
//! - `idle` (3): the hub as its own process, simulated agents heartbeating.
//! - `flood` (4): the API's latency while an agent floods the hub with progress reports, against
//!   the same hub with the agent quiet.

#[path = "hub/common.rs"]
mod common;
#[path = "hub/flood.rs"]
mod flood;
#[path = "hub/idle.rs"]
mod idle;
#[path = "hub/jobs.rs"]
mod jobs;

use std::time::Duration;

use anyhow::Context;
use common::{ms, percentile, verdict, Settings};

/// Per-job target (submit to completed, median).
const JOB_TARGET: Duration = Duration::from_millis(1);
/// Idle-agent target: this many agents under this share of one core.
const IDLE_TARGET_AGENTS: usize = 10_000;
const IDLE_TARGET_CPU: f64 = 0.5;

fn main() -> std::process::ExitCode {
    // Re-executed as the hub of part (3): the real binary's entry point.
    if std::env::var_os(idle::CHILD_ENV).is_some() {
        return morag_hub::cli::main();
    }
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
        println!("hub: benchmark");
        return Ok(());
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let s = Settings::parse(std::env::args().skip(1))?;
    let dir = tempfile::tempdir().context("temp dir")?;

    let mut runs = Vec::new();
    if s.jobs {
        for sync in ["full", "normal"] {
            let label = format!("sqlite sync={sync}");
            eprintln!("(1)+(2) {label}");
            let d = dir.path().join(format!("jobs-{sync}"));
            std::fs::create_dir_all(&d)?;
            runs.push(jobs::run(&s, &label, &[("sync", sync.to_string())], &d).await?);
        }
        // The same on PostgreSQL, durable as SQLite's `full` (fsync on every commit).
        let pg = morag_hub::testing::PgServer::start(&dir.path().join("pg"), true);
        match pg {
            Ok(pg) => {
                let url = pg
                    .create_database("bench")
                    .await
                    .map_err(anyhow::Error::msg)?;
                eprintln!("(1)+(2) postgres");
                let d = dir.path().join("jobs-postgres");
                std::fs::create_dir_all(&d)?;
                runs.push(jobs::run(&s, "postgres", &[("store", url)], &d).await?);
            }
            Err(e) => eprintln!("note: PostgreSQL skipped: {e}"),
        }
    }
    let idle = if s.idle {
        let d = dir.path().join("idle");
        std::fs::create_dir_all(&d)?;
        Some(idle::run(&s, &d).await?)
    } else {
        None
    };

    let flood = if s.flood {
        eprintln!("(4) progress flood");
        let d = dir.path().join("flood");
        std::fs::create_dir_all(&d)?;
        Some(flood::run(&s, &d).await?)
    } else {
        None
    };

    println!();
    println!(
        "MoRAG hub benchmark: loopback, {} cores, bench profile",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if !runs.is_empty() {
        report_jobs(&s, &runs);
        report_ratios(&runs);
    }
    if let Some(idle) = idle {
        report_idle(&s, &idle);
    }
    if let Some(f) = flood {
        report_flood(&s, &f);
    }
    Ok(())
}

fn report_flood(s: &Settings, f: &flood::FloodRun) {
    println!();
    println!(
        "(4) GET /api/v1/jobs one after another, {:?} quiet then {:?} while one agent sends progress",
        s.window, f.window
    );
    println!(
        "    at {}/s asked ({:.0}/s sent, {} reports, 1 kB message each)",
        s.flood_rate,
        f.sent as f64 / f.window.as_secs_f64(),
        f.sent
    );
    println!("    | | requests | p50 ms | p99 ms |");
    for (label, v) in [("quiet", &f.baseline), ("flooded", &f.flooded)] {
        println!(
            "    | {label} | {} | {} | {} |",
            v.len(),
            ms(percentile(v, 50.0)),
            ms(percentile(v, 99.0))
        );
    }
    let ratio = match (percentile(&f.flooded, 99.0), percentile(&f.baseline, 99.0)) {
        (Some(a), Some(b)) if !b.is_zero() => format!("{:.2}", a.as_secs_f64() / b.as_secs_f64()),
        _ => "-".into(),
    };
    println!("    p99 flooded / quiet: {ratio}");
    println!(
        "    job events written during the flood: {} (at most one progress per second per attempt); database +{} bytes",
        f.events, f.db_growth
    );
}

fn report_jobs(s: &Settings, runs: &[jobs::SyncRun]) {
    println!();
    println!(
        "(1) per job, one at a time: {} jobs after {} warm-up, {} agents x {} slots in-process, no-op processor,",
        s.seq_jobs,
        jobs::WARMUP,
        s.agents,
        s.slots
    );
    println!("    4 KiB input per job by source_file_path; completion seen on hub.subscribe()");
    println!("    ms from just before the POST: p50 (p99)");
    // Event kinds in the order they first appear.
    let mut kinds: Vec<String> = Vec::new();
    for r in runs {
        for sample in &r.samples {
            for (k, _) in &sample.events {
                if !kinds.contains(k) {
                    kinds.push(k.clone());
                }
            }
        }
    }
    // Put the submit response after the events that happen before it.
    let mut cols: Vec<String> = Vec::new();
    let first_after_submit = |r: &jobs::SyncRun, k: &str| {
        let at = offsets(r, k);
        let sub: Vec<Duration> = r.samples.iter().map(|x| x.submit).collect();
        percentile(&at, 50.0) > percentile(&sub, 50.0)
    };
    let mut submit_placed = false;
    for k in &kinds {
        if !submit_placed && runs.iter().any(|r| first_after_submit(r, k)) {
            cols.push("response".into());
            submit_placed = true;
        }
        cols.push(k.clone());
    }
    if !submit_placed {
        cols.push("response".into());
    }
    print!("  {:<18}", "");
    for c in &cols {
        print!(" {:>19}", c);
    }
    println!();
    for r in runs {
        print!("  {:<18}", r.label);
        for c in &cols {
            let v: Vec<Duration> = if c == "response" {
                r.samples.iter().map(|x| x.submit).collect()
            } else {
                offsets(r, c)
            };
            print!(
                " {:>19}",
                format!(
                    "{} ({})",
                    ms(percentile(&v, 50.0)),
                    ms(percentile(&v, 99.0))
                )
            );
        }
        println!();
    }
    for r in runs {
        let total: Vec<Duration> = r.samples.iter().map(|x| x.total).collect();
        let p50 = percentile(&total, 50.0).unwrap_or_default();
        println!(
            "  {:<18} submit -> completed p50 {} ms, p99 {} ms  [target p50 < {} ms: {}]",
            r.label,
            ms(Some(p50)),
            ms(percentile(&total, 99.0)),
            JOB_TARGET.as_millis(),
            verdict(p50 < JOB_TARGET && !total.is_empty())
        );
    }

    println!();
    println!(
        "(2) dispatch throughput: jobs POSTed {} at a time, {} agents x {} slots, no-op processor",
        s.submitters, s.agents, s.slots
    );
    println!(
        "  {:<18} {:>6} {:>8} {:>12} {:>13} {:>14} {:>7}",
        "", "jobs", "failed", "submitted s", "submit jobs/s", "all ended s", "jobs/s"
    );
    for r in runs {
        let b = &r.burst;
        println!(
            "  {:<18} {:>6} {:>8} {:>12.3} {:>13.0} {:>14.3} {:>7.0}",
            r.label,
            b.jobs,
            b.failed,
            b.submitted.as_secs_f64(),
            b.jobs as f64 / b.submitted.as_secs_f64(),
            b.completed.as_secs_f64(),
            b.jobs as f64 / b.completed.as_secs_f64()
        );
    }
}

/// Each store against the embedded default (SQLite, `sync=full`), in this run.
fn report_ratios(runs: &[jobs::SyncRun]) {
    let Some(base) = runs.first() else { return };
    let p50 = |r: &jobs::SyncRun| {
        let total: Vec<Duration> = r.samples.iter().map(|x| x.total).collect();
        percentile(&total, 50.0).unwrap_or_default().as_secs_f64()
    };
    let rate = |r: &jobs::SyncRun| r.burst.jobs as f64 / r.burst.completed.as_secs_f64();
    println!();
    println!("  against {} in this run:", base.label);
    for r in &runs[1..] {
        println!(
            "  {:<18} per-job p50 x{:.2}, end-to-end jobs/s x{:.2}",
            r.label,
            p50(r) / p50(base),
            rate(r) / rate(base)
        );
    }
}

/// When events of `kind` arrived, per sample.
fn offsets(r: &jobs::SyncRun, kind: &str) -> Vec<Duration> {
    r.samples
        .iter()
        .filter_map(|x| x.events.iter().find(|(k, _)| k == kind).map(|(_, d)| *d))
        .collect()
}

fn report_idle(s: &Settings, idle: &idle::Idle) {
    println!();
    println!(
        "(3) idle agents: hub in its own process (morag-hub serve, heartbeat_interval=1s, sync=full);"
    );
    println!(
        "    agents are transport clients in the bench process (one Client/UDP socket each, open-file limit {}),",
        idle.nofile
    );
    println!(
        "    register, then {}; CPU over a {:.0} s window after a 2 s settle",
        if s.beat_bodies {
            "a Heartbeat body every 1 s (and the transport's 1 s pings)"
        } else {
            "only the transport's 1 s ping datagrams (--pings-only)"
        },
        s.window.as_secs_f64()
    );
    println!(
        "  no agents: hub CPU {:.1} % of one core, RSS {:.1} MB",
        idle.idle_cpu * 100.0,
        idle.idle_rss as f64 / 1e6
    );
    println!(
        "  {:>7} {:>11} {:>10} {:>10} {:>10} {:>13} {:>11} {:>13}",
        "agents",
        "registered",
        "hub sees",
        "issue s",
        "connect s",
        "hub CPU %",
        "hub RSS MB",
        "bench CPU %"
    );
    for st in &idle.steps {
        println!(
            "  {:>7} {:>11} {:>10} {:>10.1} {:>10.1} {:>13.1} {:>11.1} {:>13.1}",
            st.target,
            st.registered,
            st.hub_connected.map_or("-".into(), |n| n.to_string()),
            st.issue.as_secs_f64(),
            st.connect.as_secs_f64(),
            st.hub_cpu * 100.0,
            st.hub_rss as f64 / 1e6,
            st.bench_cpu * 100.0
        );
        if let Some(why) = &st.stopped {
            println!("    ramp stopped: {why}");
        }
    }
    println!(
        "  (CPU % is of one core; the machine has 2, shared by the hub and all simulated agents)"
    );
    let at_target = idle
        .steps
        .iter()
        .find(|st| st.target >= IDLE_TARGET_AGENTS && st.stopped.is_none());
    match at_target {
        Some(st) => println!(
            "  {} agents: hub CPU {:.1} % of a core  [target < {:.0} %: {}]",
            st.target,
            st.hub_cpu * 100.0,
            IDLE_TARGET_CPU * 100.0,
            verdict(st.hub_cpu < IDLE_TARGET_CPU)
        ),
        None => println!(
            "  {IDLE_TARGET_AGENTS} agents not reached in this run  [target < {:.0} % of a core at {IDLE_TARGET_AGENTS}: NOT MEASURED]",
            IDLE_TARGET_CPU * 100.0
        ),
    }
}
