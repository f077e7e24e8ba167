//! (d) Edge links: a verified file through the in-process fault proxy (delay, random loss,
//! reordering, a bandwidth cap), as goodput and as a share of the clean link at the same round
//! trip. Ours with the transport's link defaults, ours with QUIC's defaults (NewReno, packet
//! threshold 3, time threshold 9/8), and plain quinn with its default transport settings
//! sending from memory. Both session ends use the production heartbeat settings, and every
//! `Suspect` or `Lost` event during a run is counted.
//!
//! `MORAG_BENCH_LINK_BYTES` (default 16 MiB) per transfer; `MORAG_BENCH_LINK_LIMIT` seconds
//! before a transfer is given up (default 90); `MORAG_BENCH_LINK_VARIANTS`: more link settings
//! to compare, `controller/packet_threshold/time_threshold` separated by commas (say
//! `cubic/3/1.125,newreno/10/2`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use morag_tests::{FaultProxy, Faults, ProxyOptions};
use morag_transport::raw::{self, quinn};
use morag_transport::{
    Client, CongestionControl, DetectorConfig, LinkConfig, Listener, Session, SessionEvent,
};
use tokio::sync::mpsc;

use crate::common::{Pki, SERVER_NAME};
use crate::pair::serve;

/// A network path the proxy makes.
pub struct Link {
    pub name: &'static str,
    /// Its clean counterpart (same delay, no faults), by name.
    pub clean: &'static str,
    pub faults: Faults,
}

fn link(name: &'static str, clean: &'static str, one_way_ms: u64, f: impl Fn(&mut Faults)) -> Link {
    let mut faults = Faults::none();
    faults.delay = Duration::from_millis(one_way_ms);
    f(&mut faults);
    Link {
        name,
        clean,
        faults,
    }
}

/// The paths of the links section.
pub fn links() -> Vec<Link> {
    vec![
        link("20 ms clean", "20 ms clean", 10, |_| {}),
        link("20 ms, 1 % loss", "20 ms clean", 10, |f| f.loss = 0.01),
        link("20 ms, 2 % reordered", "20 ms clean", 10, |f| {
            f.reorder = 0.02
        }),
        link("100 ms clean", "100 ms clean", 50, |_| {}),
        link("100 ms, 0.5 % loss", "100 ms clean", 50, |f| f.loss = 0.005),
        link("200 ms clean", "200 ms clean", 100, |_| {}),
        link("20 ms, 100 Mbit/s cap", "20 ms, 100 Mbit/s cap", 10, |f| {
            f.bandwidth_bytes_per_sec = Some(12_500_000)
        }),
    ]
}

/// Who sends: our session with these link settings, or plain quinn.
#[derive(Clone)]
pub enum Sender {
    Ours(String, LinkConfig),
    PlainQuinn,
}

impl Sender {
    pub fn name(&self) -> String {
        match self {
            Sender::Ours(n, _) => n.clone(),
            Sender::PlainQuinn => "plain quinn, its defaults".into(),
        }
    }
}

/// The senders compared: ours, ours with QUIC's link defaults, plain quinn, and any from
/// `MORAG_BENCH_LINK_VARIANTS`.
pub fn senders() -> anyhow::Result<Vec<Sender>> {
    let d = LinkConfig::default();
    let mut v = vec![
        Sender::Ours(
            format!(
                "ours: {:?}, {} pkts, {:.3} RTT (defaults)",
                d.congestion, d.packet_threshold, d.time_threshold
            ),
            d,
        ),
        Sender::Ours(
            "ours with QUIC's link defaults (NewReno, 3, 1.125)".into(),
            LinkConfig::quic_defaults(),
        ),
        Sender::PlainQuinn,
    ];
    if let Ok(list) = std::env::var("MORAG_BENCH_LINK_VARIANTS") {
        for spec in list.split(',').filter(|s| !s.trim().is_empty()) {
            let parts: Vec<&str> = spec.trim().split('/').collect();
            anyhow::ensure!(
                parts.len() == 3,
                "MORAG_BENCH_LINK_VARIANTS: {spec:?} is not controller/packets/rtts"
            );
            let cfg = LinkConfig {
                congestion: parts[0]
                    .parse::<CongestionControl>()
                    .map_err(anyhow::Error::msg)?,
                packet_threshold: parts[1].parse().context("packet threshold")?,
                time_threshold: parts[2].parse().context("time threshold")?,
                ..LinkConfig::default()
            };
            cfg.validate().map_err(anyhow::Error::msg)?;
            v.push(Sender::Ours(format!("ours: {spec}"), cfg));
        }
    }
    Ok(v)
}

/// One transfer's outcome.
pub struct Run {
    /// `None`: not done within the limit.
    pub time: Option<Duration>,
    /// `Suspect` and `Lost` events on either side during the run.
    pub alarms: u64,
}

/// What every run of the section shares.
pub struct Bench<'a> {
    pub pki: &'a Pki,
    pub dir: &'a Path,
    /// The file ours sends; plain quinn sends as many bytes from memory.
    pub file: &'a Path,
    pub bytes: u64,
    /// A transfer not done by then is given up.
    pub limit: Duration,
}

impl Bench<'_> {
    /// Send the file over `link` with `sender`; `seed` makes the proxy's fault decisions
    /// repeatable, so every sender meets the same pattern.
    pub async fn run(&self, link: &Link, sender: &Sender, seed: u64) -> anyhow::Result<Run> {
        match sender {
            Sender::Ours(_, cfg) => ours(self, link, *cfg, seed).await,
            Sender::PlainQuinn => plain(self, link, seed).await,
        }
    }
}

async fn proxy_to(upstream: SocketAddr, link: &Link, seed: u64) -> anyhow::Result<FaultProxy> {
    let mut options = ProxyOptions::default();
    options.seed = Some(seed);
    let proxy = FaultProxy::start_with("127.0.0.1:0".parse()?, upstream, options).await?;
    proxy.set_faults(link.faults.clone());
    Ok(proxy)
}

/// Count `Suspect` and `Lost` events of `session` into `alarms`.
fn watch(session: &Session, alarms: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    let mut events = session.events();
    tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            if matches!(e, SessionEvent::Suspect | SessionEvent::Lost { .. }) {
                alarms.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

async fn ours(b: &Bench<'_>, link: &Link, cfg: LinkConfig, seed: u64) -> anyhow::Result<Run> {
    let (pki, dir, file, limit) = (b.pki, b.dir, b.file, b.limit);
    let mut hub_cfg = pki.hub_config(&dir.join("link-recv"));
    let mut agent_cfg = pki.agent_config(&dir.join("link-send"));
    for c in [&mut hub_cfg, &mut agent_cfg] {
        c.link = cfg;
        c.heartbeat = DetectorConfig::default();
    }
    let listener = Listener::bind("127.0.0.1:0".parse()?, hub_cfg)?;
    let proxy = proxy_to(listener.local_addr()?, link, seed).await?;
    let client = Client::new(agent_cfg)?;
    let (sender, receiver) = tokio::join!(
        client.connect(proxy.local_addr(), SERVER_NAME),
        listener.accept()
    );
    let sender = sender.context("connect through the proxy")?;
    let receiver = receiver.context("accept")?;
    let alarms = Arc::new(AtomicU64::new(0));
    let w1 = watch(&sender, alarms.clone());
    let w2 = watch(&receiver, alarms.clone());
    let (tx, mut rx) = mpsc::channel(1);
    tokio::spawn(serve(receiver, Some(tx)));
    let start = Instant::now();
    let transfer = sender.send_file(file, "link.bin");
    let time = match tokio::time::timeout(limit, async {
        transfer.finish().await.context("transfer")?;
        rx.recv().await.context("receiver gone")?;
        anyhow::Ok(())
    })
    .await
    {
        Ok(r) => {
            r?;
            Some(start.elapsed())
        }
        Err(_) => None,
    };
    let alarms = alarms.load(Ordering::Relaxed);
    w1.abort();
    w2.abort();
    sender.close(0, "done").await;
    client.close().await;
    listener.close(0, "done").await;
    proxy.shutdown().await;
    Ok(Run { time, alarms })
}

async fn plain(b: &Bench<'_>, link: &Link, seed: u64) -> anyhow::Result<Run> {
    let (pki, dir, bytes, limit) = (b.pki, b.dir, b.bytes, b.limit);
    let defaults = Arc::new(quinn::TransportConfig::default());
    let mut server_cfg = raw::server_config(&pki.hub_config(dir))?;
    server_cfg.transport_config(defaults.clone());
    let mut client_cfg = raw::client_config(&pki.agent_config(dir))?;
    client_cfg.transport_config(defaults);
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
    let proxy = proxy_to(server.local_addr()?, link, seed).await?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(client_cfg);
    let srv = server.clone();
    let receiver = tokio::spawn(async move {
        let conn = srv.accept().await.context("no connection")?.await?;
        let (_send, mut recv) = conn.accept_bi().await?;
        let mut n = 0u64;
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
            n += chunk.bytes.len() as u64;
        }
        anyhow::Ok((n, Instant::now()))
    });
    let conn = client
        .connect(proxy.local_addr(), SERVER_NAME)?
        .await
        .context("plain quinn connect")?;
    let chunk = bytes::Bytes::from(vec![0x5au8; 1 << 20]);
    let start = Instant::now();
    let sent = async {
        let (mut send, _recv) = conn.open_bi().await?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            send.write_chunk(chunk.slice(..n)).await?;
            left -= n as u64;
        }
        send.finish()?;
        let (n, end) = receiver.await??;
        anyhow::ensure!(n == bytes, "receiver got {n} of {bytes} bytes");
        anyhow::Ok(end)
    };
    let time = match tokio::time::timeout(limit, sent).await {
        Ok(r) => Some(r? - start),
        Err(_) => None,
    };
    conn.close(0u32.into(), b"done");
    server.close(0u32.into(), b"done");
    proxy.shutdown().await;
    Ok(Run { time, alarms: 0 })
}
