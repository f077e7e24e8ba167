//! Shared setup: settings, agent certificates from a hub's CA, statistics, `/proc` readings.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use morag_certs::{CertificateAuthority, IssuedCert, Validity};

/// Settings from the command line (after `cargo bench ... --`), with environment fallbacks.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sequential jobs per sync mode in (1), after `WARMUP`.
    pub seq_jobs: usize,
    /// Jobs submitted at once in (2).
    pub burst_jobs: usize,
    /// In-process agents in (1) and (2), and the slots of each.
    pub agents: usize,
    pub slots: u32,
    /// Submissions in flight while the burst is submitted.
    pub submitters: usize,
    /// Idle-agent steps in (3): total agents connected at each step.
    pub idle_steps: Vec<usize>,
    /// Measurement window per step in (3).
    pub window: Duration,
    /// A step of (3) whose connecting takes longer than this ends the ramp.
    pub connect_limit: Duration,
    /// Connects (and registrations) in flight in (3).
    pub connecting: usize,
    /// Send a `Heartbeat` body every second in (3) (off: only the transport's pings).
    pub beat_bodies: bool,
    /// Progress reports per second in (4).
    pub flood_rate: u64,
    /// Which parts to run.
    pub jobs: bool,
    pub idle: bool,
    pub flood: bool,
}

impl Settings {
    /// `--seq N --burst M --agents K --slots S --submitters N --idle 100,1000 --window SECS
    /// --connect-limit SECS --connecting N --pings-only --flood-rate N --only jobs|idle|flood`;
    /// `MORAG_BENCH_IDLE`
    /// sets the idle steps too.
    /// Unknown arguments (cargo adds `--bench`) are ignored.
    pub fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut s = Self {
            seq_jobs: 200,
            burst_jobs: 1000,
            agents: 4,
            slots: 8,
            submitters: 16,
            idle_steps: vec![100, 1000, 3000, 10_000],
            window: Duration::from_secs(10),
            connect_limit: Duration::from_secs(60),
            connecting: 64,
            beat_bodies: true,
            flood_rate: 10_000,
            jobs: true,
            idle: true,
            flood: true,
        };
        if let Ok(v) = std::env::var("MORAG_BENCH_IDLE") {
            s.idle_steps = steps(&v).context("MORAG_BENCH_IDLE")?;
        }
        let mut args = args.peekable();
        while let Some(a) = args.next() {
            let mut value =
                |name: &str| args.next().with_context(|| format!("{name} needs a value"));
            match a.as_str() {
                "--seq" => s.seq_jobs = num(&value("--seq")?, "--seq")?,
                "--burst" => s.burst_jobs = num(&value("--burst")?, "--burst")?,
                "--agents" => s.agents = num(&value("--agents")?, "--agents")?,
                "--slots" => s.slots = num(&value("--slots")?, "--slots")?,
                "--submitters" => s.submitters = num(&value("--submitters")?, "--submitters")?,
                "--idle" => s.idle_steps = steps(&value("--idle")?).context("--idle")?,
                "--window" => {
                    s.window = Duration::from_secs_f64(num(&value("--window")?, "--window")?)
                }
                "--connect-limit" => {
                    s.connect_limit =
                        Duration::from_secs_f64(num(&value("--connect-limit")?, "--connect-limit")?)
                }
                "--connecting" => s.connecting = num(&value("--connecting")?, "--connecting")?,
                "--pings-only" => s.beat_bodies = false,
                "--flood-rate" => s.flood_rate = num(&value("--flood-rate")?, "--flood-rate")?,
                "--only" => {
                    let only = value("--only")?;
                    s.jobs = only == "jobs";
                    s.idle = only == "idle";
                    s.flood = only == "flood";
                    anyhow::ensure!(
                        s.jobs || s.idle || s.flood,
                        "--only {only:?}: expected jobs, idle or flood"
                    );
                }
                _ => {}
            }
        }
        anyhow::ensure!(
            s.agents >= 1 && s.slots >= 1,
            "--agents and --slots must be at least 1"
        );
        anyhow::ensure!(
            s.submitters >= 1 && s.connecting >= 1,
            "--submitters and --connecting must be at least 1"
        );
        anyhow::ensure!(
            s.window >= Duration::from_secs(1),
            "--window must be at least 1 s"
        );
        Ok(s)
    }
}

fn num<T: std::str::FromStr>(v: &str, name: &str) -> anyhow::Result<T> {
    v.trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{name} {v:?}: expected a number"))
}

/// `100,1000,3000`: increasing totals.
fn steps(v: &str) -> anyhow::Result<Vec<usize>> {
    let list = v
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| num(s, "step"))
        .collect::<anyhow::Result<Vec<usize>>>()?;
    anyhow::ensure!(
        list.windows(2).all(|w| w[0] < w[1]),
        "{v:?}: expected increasing totals like 100,1000"
    );
    Ok(list)
}

/// A hub in this process with its data in `data`, on loopback ports of the system's choice,
/// with `settings` on top; and the token that stops it.
pub async fn start_hub(
    data: &Path,
    settings: &[(&str, String)],
) -> anyhow::Result<(morag_hub::Running, tokio_util::sync::CancellationToken)> {
    let mut config = morag_hub::HubConfig::default();
    let data = data.to_str().context("temp dir is not UTF-8")?;
    for (k, v) in [
        ("data", data),
        ("quic", "127.0.0.1:0"),
        ("http", "127.0.0.1:0"),
        ("shutdown_grace", "1s"),
    ] {
        config.set(k, v, k)?;
    }
    for (k, v) in settings {
        config.set(k, v, k)?;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let running = morag_hub::start(config, stop.clone())
        .await
        .context("starting the hub")?;
    Ok((running, stop))
}

/// The CA a hub created in its data directory.
pub fn hub_ca(data: &Path) -> anyhow::Result<CertificateAuthority> {
    let pki = data.join("pki");
    CertificateAuthority::load(&pki).with_context(|| format!("loading the CA in {}", pki.display()))
}

/// An agent certificate from the hub's CA.
pub fn agent_cert(ca: &CertificateAuthority, id: &str) -> anyhow::Result<IssuedCert> {
    ca.issue_agent(id, Validity::days(1))
        .with_context(|| format!("issuing a certificate for {id}"))
}

/// What `morag-agent serve` needs in its directory: `agent.pem`, `agent.key`, `ca.pem`.
pub fn agent_dir(ca: &CertificateAuthority, id: &str, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    agent_cert(ca, id)?.write(dir, "agent", true)?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    Ok(())
}

/// Nearest-rank percentile of unsorted samples; `None` when empty.
pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort();
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    Some(s[rank.min(s.len()) - 1])
}

/// A duration in milliseconds, 3 decimals, or "-".
pub fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".into(),
        |d| format!("{:.3}", d.as_secs_f64() * 1000.0),
    )
}

pub fn verdict(met: bool) -> &'static str {
    if met {
        "MET"
    } else {
        "MISSED"
    }
}

/// CPU time (user + system, all threads) of a process from `/proc/<pid>/stat`.
pub fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("malformed stat")?;
    // Fields after the command name start at field 3 (state); utime is 14, stime 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("malformed stat")
    };
    let ticks = tick(11)? + tick(12)?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a constant of the C library.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Resident memory of a process in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// Raise the open-file limit to the hard limit (one UDP socket per simulated agent); returns
/// the limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}
