//! `faultproxy`: relay UDP between a client and a server with injected faults, by hand.
//!
//! ```text
//! faultproxy --listen 127.0.0.1:4434 --upstream 127.0.0.1:4433 --delay-ms 50 --loss 0.01
//! ```
//!
//! While it runs, lines on stdin change it: `partition on`, `partition off`, `rebind`,
//! `upstream ADDR`, `stats`. Ctrl-C prints the counters and stops.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use morag_tests::{FaultProxy, Faults};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Relay UDP from --listen to --upstream, injecting network faults in both directions.
#[derive(Parser, Debug)]
#[command(name = "faultproxy")]
struct Args {
    /// Address clients send to.
    #[arg(long)]
    listen: SocketAddr,
    /// Address of the server datagrams are relayed to.
    #[arg(long)]
    upstream: SocketAddr,
    /// One-way delay in milliseconds, in each direction.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Uniform +- jitter in milliseconds added to the delay.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Probability (0..=1) that a datagram is dropped.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    loss: f64,
    /// Probability (0..=1) that a datagram is held back so later ones overtake it.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    reorder: f64,
    /// Probability (0..=1) that a datagram is sent twice.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    duplicate: f64,
    /// Bandwidth cap per direction, in bytes per second.
    #[arg(long)]
    bandwidth: Option<u64>,
    /// Start partitioned (drop everything).
    #[arg(long)]
    blackhole: bool,
}

fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a probability between 0 and 1"))
    }
}

impl Args {
    fn faults(&self) -> Faults {
        Faults {
            delay: Duration::from_millis(self.delay_ms),
            jitter: Duration::from_millis(self.jitter_ms),
            loss: self.loss,
            reorder: self.reorder,
            duplicate: self.duplicate,
            bandwidth_bytes_per_sec: self.bandwidth,
            blackhole: self.blackhole,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let proxy = FaultProxy::start(args.listen, args.upstream)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    proxy.set_faults(args.faults());
    eprintln!(
        "faultproxy: {} -> {} with {:?}",
        proxy.local_addr(),
        args.upstream,
        proxy.faults()
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            biased;
            r = tokio::signal::ctrl_c() => {
                r.context("cannot wait for ctrl-c")?;
                break;
            }
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(line)) => {
                    if let Err(e) = command(&proxy, line.trim()).await {
                        eprintln!("faultproxy: {e:#}");
                    }
                }
                _ => stdin_open = false,
            },
        }
    }
    eprintln!("faultproxy: {:?}", proxy.stats());
    proxy.shutdown().await;
    Ok(())
}

/// Runs one stdin command.
async fn command(proxy: &FaultProxy, line: &str) -> anyhow::Result<()> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => {}
        ["partition", "on"] => proxy.partition(true),
        ["partition", "off"] => proxy.partition(false),
        ["rebind"] => {
            let n = proxy.rebind().await.context("cannot bind new sockets")?;
            eprintln!("faultproxy: rebound {n} flows");
        }
        ["upstream", addr] => {
            let addr: SocketAddr = addr.parse().context("upstream wants ADDR:PORT")?;
            proxy.set_upstream(addr);
        }
        ["stats"] => eprintln!("faultproxy: {:?}", proxy.stats()),
        _ => bail!("unknown command {line:?}; try: partition on|off, rebind, upstream ADDR, stats"),
    }
    Ok(())
}
