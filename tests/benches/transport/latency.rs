//! (b) Round trips idle and under a saturating transfer: morag-transport heartbeats
//! (datagrams) and request/response on the control stream, against a deliberately
//! single-stream design on plain quinn where pings share one stream with the file bytes.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use morag_transport::raw::{self, quinn};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::common::{fill, Pki, HEARTBEAT, SERVER_NAME};
use crate::pair::{ping, Pair};

/// Samples stamped with when they were taken (or their ping was sent).
type Samples = Arc<Mutex<Vec<(Instant, Duration)>>>;

/// Round trips split into the idle period and the transfer periods.
#[derive(Default)]
pub struct Split {
    pub idle: Vec<Duration>,
    pub load: Vec<Duration>,
}

impl Split {
    fn of(samples: &Samples, idle: (Instant, Instant), windows: &[(Instant, Instant)]) -> Self {
        let mut s = Split::default();
        for &(t, rtt) in samples.lock().unwrap().iter() {
            if t >= idle.0 && t <= idle.1 {
                s.idle.push(rtt);
            } else if windows.iter().any(|w| t >= w.0 && t <= w.1) {
                s.load.push(rtt);
            }
        }
        s
    }
}

pub struct MoragLatency {
    pub heartbeat: Split,
    pub request: Split,
    pub load_time: Duration,
    pub transfers: usize,
}

pub struct StreamLatency {
    pub ping: Split,
    pub load_time: Duration,
    pub transfers: usize,
}

/// How many samples at the start of `new` `old` already held: the window only grows at the
/// back and drops at the front.
fn overlap(old: &[Duration], new: &[Duration]) -> usize {
    (0..=old.len())
        .map(|s| &old[s..])
        .find(|tail| tail.len() <= new.len() && new[..tail.len()] == **tail)
        .map_or(0, |t| t.len())
}

/// Heartbeat round trips as they appear in the session's window, stamped when seen.
async fn sample_heartbeats(
    pair_sender: morag_transport::Session,
    out: Samples,
    stop: CancellationToken,
) {
    let mut last: Vec<Duration> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = pair_sender.heartbeat_rtts();
        let seen = overlap(&last, &now);
        let t = Instant::now();
        out.lock()
            .unwrap()
            .extend(now[seen..].iter().map(|&r| (t, r)));
        last = now;
    }
}

/// A small request every heartbeat interval, timed to its response.
async fn ping_requests(session: morag_transport::Session, out: Samples, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for seq in 0u64.. {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let t = Instant::now();
        if session.request(ping(seq)).await.is_ok() {
            out.lock().unwrap().push((t, t.elapsed()));
        }
    }
}

pub async fn morag(
    pair: &mut Pair,
    file: &Path,
    idle: Duration,
    load_secs: f64,
) -> anyhow::Result<MoragLatency> {
    let hb: Samples = Default::default();
    let req: Samples = Default::default();
    let stop = CancellationToken::new();
    let tasks = [
        tokio::spawn(sample_heartbeats(
            pair.sender.clone(),
            hb.clone(),
            stop.clone(),
        )),
        tokio::spawn(ping_requests(
            pair.sender.clone(),
            req.clone(),
            stop.clone(),
        )),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle_start = Instant::now();
    tokio::time::sleep(idle).await;
    let idle_end = Instant::now();
    let mut windows = Vec::new();
    let mut load = Duration::ZERO;
    while load.as_secs_f64() < load_secs {
        let t = pair.transfer(file).await?;
        windows.push((t.hashed, t.done));
        load += t.done - t.hashed;
    }
    stop.cancel();
    for t in tasks {
        t.await?;
    }
    Ok(MoragLatency {
        heartbeat: Split::of(&hb, (idle_start, idle_end), &windows),
        request: Split::of(&req, (idle_start, idle_end), &windows),
        load_time: load,
        transfers: windows.len(),
    })
}

// ---------------------------------------------------------------------------------------------
// Single stream: frames [kind u8][len u32 LE][payload] on ONE bidirectional stream.

const DATA: u8 = 0;
const PING: u8 = 1;
const PONG: u8 = 2;
const END: u8 = 3;
/// Largest frame payload: one file chunk.
const MAX_PAYLOAD: usize = 1 << 20;

fn header(kind: u8, len: usize) -> [u8; 5] {
    let mut h = [0u8; 5];
    h[0] = kind;
    h[1..].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

/// The receiving end: discard data, echo pings as pongs on the other direction, report each
/// END with the time it arrived.
async fn single_stream_receiver(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    done: mpsc::Sender<Instant>,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; MAX_PAYLOAD];
    loop {
        let mut h = [0u8; 5];
        if recv.read_exact(&mut h).await.is_err() {
            return Ok(());
        }
        let len = u32::from_le_bytes(h[1..].try_into().unwrap()) as usize;
        if len > MAX_PAYLOAD {
            bail!("frame of {len} bytes is over the limit");
        }
        recv.read_exact(&mut buf[..len]).await?;
        match h[0] {
            DATA => {}
            PING => {
                send.write_all(&header(PONG, len)).await?;
                send.write_all(&buf[..len]).await?;
            }
            END => {
                let _ = done.send(Instant::now()).await;
            }
            k => bail!("unknown frame kind {k}"),
        }
    }
}

/// The sending end's writer: pings go out between chunks, never inside one.
async fn single_stream_writer(
    mut send: quinn::SendStream,
    mut pings: mpsc::UnboundedReceiver<[u8; 16]>,
    mut jobs: mpsc::Receiver<u64>,
) -> anyhow::Result<()> {
    let mut chunk = vec![0u8; MAX_PAYLOAD];
    fill(&mut chunk, &mut 0x0bad_cafe_f00d_d00d);
    let chunk = Bytes::from(chunk);
    let mut left = 0u64;
    loop {
        while let Ok(p) = pings.try_recv() {
            send.write_all(&header(PING, p.len())).await?;
            send.write_all(&p).await?;
        }
        if left > 0 {
            let n = left.min(MAX_PAYLOAD as u64) as usize;
            send.write_all(&header(DATA, n)).await?;
            send.write_chunk(chunk.slice(..n)).await?;
            left -= n as u64;
            if left == 0 {
                send.write_all(&header(END, 0)).await?;
            }
            continue;
        }
        tokio::select! {
            biased;
            p = pings.recv() => match p {
                Some(p) => {
                    send.write_all(&header(PING, p.len())).await?;
                    send.write_all(&p).await?;
                }
                None => break,
            },
            j = jobs.recv() => match j {
                Some(n) => left = n,
                None => break,
            },
        }
    }
    let _ = send.finish();
    Ok(())
}

/// The sending end's reader: pongs back, timed.
async fn single_stream_pongs(
    mut recv: quinn::RecvStream,
    base: Instant,
    out: Samples,
) -> anyhow::Result<()> {
    loop {
        let mut h = [0u8; 5];
        if recv.read_exact(&mut h).await.is_err() {
            return Ok(());
        }
        let mut p = [0u8; 16];
        anyhow::ensure!(h[0] == PONG && h[1..] == 16u32.to_le_bytes(), "bad pong");
        recv.read_exact(&mut p).await?;
        let sent = Duration::from_nanos(u64::from_le_bytes(p[8..].try_into().unwrap()));
        let now = base.elapsed();
        out.lock()
            .unwrap()
            .push((base + sent, now.saturating_sub(sent)));
    }
}

pub async fn single_stream(
    pki: &Pki,
    dir: &Path,
    bytes: u64,
    idle: Duration,
    load_secs: f64,
) -> anyhow::Result<StreamLatency> {
    let server = quinn::Endpoint::server(
        raw::server_config(&pki.hub_config(dir))?,
        "127.0.0.1:0".parse()?,
    )?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(raw::client_config(&pki.agent_config(dir))?);
    let (done_tx, mut done_rx) = mpsc::channel(4);
    let srv = server.clone();
    let receiver = tokio::spawn(async move {
        let conn = srv.accept().await.context("no connection")?.await?;
        let (send, recv) = conn.accept_bi().await?;
        single_stream_receiver(send, recv, done_tx).await
    });
    let conn = client.connect(server.local_addr()?, SERVER_NAME)?.await?;
    let (send, recv) = conn.open_bi().await?;

    let base = Instant::now();
    let samples: Samples = Default::default();
    let (ping_tx, ping_rx) = mpsc::unbounded_channel();
    let (job_tx, job_rx) = mpsc::channel(1);
    let writer = tokio::spawn(single_stream_writer(send, ping_rx, job_rx));
    let reader = tokio::spawn(single_stream_pongs(recv, base, samples.clone()));
    let stop = CancellationToken::new();
    let pinger = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            for seq in 0u64.. {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let mut p = [0u8; 16];
                p[..8].copy_from_slice(&seq.to_le_bytes());
                p[8..].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
                if ping_tx.send(p).is_err() {
                    return;
                }
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle_start = Instant::now();
    tokio::time::sleep(idle).await;
    let idle_end = Instant::now();
    let mut windows = Vec::new();
    let mut load = Duration::ZERO;
    while load.as_secs_f64() < load_secs {
        let start = Instant::now();
        job_tx.send(bytes).await.context("writer gone")?;
        let end = done_rx.recv().await.context("receiver gone")?;
        windows.push((start, end));
        load += end - start;
    }
    // Let the last pongs come back.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.cancel();
    pinger.await?;
    drop(job_tx);
    writer.await??;
    conn.close(0u32.into(), b"done");
    let _ = reader.await?;
    receiver.abort();
    client.wait_idle().await;
    server.close(0u32.into(), b"done");
    Ok(StreamLatency {
        ping: Split::of(&samples, (idle_start, idle_end), &windows),
        load_time: load,
        transfers: windows.len(),
    })
}
