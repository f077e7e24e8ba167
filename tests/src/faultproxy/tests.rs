//! The proxy against real UDP sockets on 127.0.0.1. Timing tests assert lower bounds only (or
//! very loose upper bounds): the machine running them is noisy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use super::{FaultProxy, Faults, ProxyOptions};

const MS: Duration = Duration::from_millis(1);
/// How long to wait for something that should arrive.
const PATIENCE: Duration = Duration::from_secs(5);
/// How long to wait for something that should not arrive.
const QUIET: Duration = Duration::from_millis(300);
/// The largest UDP payload over IPv4.
const MAX_UDP_V4: usize = 65507;

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An upstream server that echoes each datagram, except `whoami`, answered with the sender's
/// address. Counts what it receives.
struct Echo {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo() -> Echo {
    let sock = UdpSocket::bind(localhost()).await.unwrap();
    let addr = sock.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            count.fetch_add(1, Relaxed);
            let reply = if &buf[..n] == b"whoami" {
                peer.to_string().into_bytes()
            } else {
                buf[..n].to_vec()
            };
            let _ = sock.send_to(&reply, peer).await;
        }
    });
    Echo {
        addr,
        received,
        task,
    }
}

async fn client(proxy: &FaultProxy) -> UdpSocket {
    let sock = UdpSocket::bind(localhost()).await.unwrap();
    sock.connect(proxy.local_addr()).await.unwrap();
    sock
}

async fn recv_within(sock: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    match timeout(wait, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

async fn round_trip(sock: &UdpSocket, data: &[u8]) -> Vec<u8> {
    sock.send(data).await.unwrap();
    recv_within(sock, PATIENCE).await.expect("no reply")
}

/// Sends `n` small datagrams in small bursts, so that no socket buffer overflows.
async fn send_paced(sock: &UdpSocket, n: usize) {
    for i in 0..n {
        sock.send(&(i as u32).to_be_bytes()).await.unwrap();
        if i % 50 == 49 {
            tokio::time::sleep(MS).await;
        }
    }
}

/// Waits until `counter` stops changing for a while.
async fn settle(counter: &AtomicU64) -> u64 {
    let mut last = counter.load(Relaxed);
    loop {
        tokio::time::sleep(QUIET).await;
        let now = counter.load(Relaxed);
        if now == last {
            return now;
        }
        last = now;
    }
}

async fn whoami(sock: &UdpSocket) -> SocketAddr {
    let reply = round_trip(sock, b"whoami").await;
    String::from_utf8(reply).unwrap().parse().unwrap()
}

#[tokio::test]
async fn relays_both_ways_including_empty_and_largest_datagrams() {
    let server = echo().await;
    let proxy = FaultProxy::start(localhost(), server.addr).await.unwrap();
    let c = client(&proxy).await;
    let big: Vec<u8> = (0..MAX_UDP_V4).map(|i| i as u8).collect();
    for faults in [
        Faults::none(),
        Faults {
            delay: MS,
            ..Faults::none()
        },
    ] {
        proxy.set_faults(faults);
        assert_eq!(round_trip(&c, b"hello").await, b"hello");
        assert_eq!(round_trip(&c, b"").await, b"");
        assert_eq!(round_trip(&c, &big).await, big);
    }
    let seen_by_server = whoami(&c).await;
    assert_ne!(seen_by_server, c.local_addr().unwrap(), "the proxy relays");
    assert_eq!(proxy.flow_count(), 1);
    assert_eq!(proxy.stats().forwarded, 14);
    assert_eq!(proxy.stats().dropped, 0);
}

#[tokio::test]
async fn delay_applies_in_each_direction_and_pipelines() {
    let server = echo().await;
    let proxy = FaultProxy::start(localhost(), server.addr).await.unwrap();
    let c = client(&proxy).await;
    round_trip(&c, b"warm up").await;
    proxy.set_faults(Faults {
        delay: 50 * MS,
        ..Faults::none()
    });
    let start = Instant::now();
    round_trip(&c, b"ping").await;
    assert!(start.elapsed() >= 100 * MS, "took {:?}", start.elapsed());

    // 20 datagrams in flight at once take about one round trip, not 20.
    let start = Instant::now();
    for i in 0..20u8 {
        c.send(&[i]).await.unwrap();
    }
    for _ in 0..20 {
        recv_within(&c, PATIENCE).await.expect("echo lost");
    }
    let took = start.elapsed();
    assert!(took >= 100 * MS, "took {took:?}");
    assert!(took < 1500 * MS, "delays were serialised: {took:?}");
}

#[tokio::test]
async fn loss_of_one_drops_everything() {
    let server = echo().await;
    let proxy = FaultProxy::start(localhost(), server.addr).await.unwrap();
    let c = client(&proxy).await;
    proxy.set_faults(Faults {
        loss: 1.0,
        ..Faults::none()
    });
    send_paced(&c, 50).await;
    assert_eq!(recv_within(&c, QUIET).await, None);
    assert_eq!(server.received.load(Relaxed), 0);
    assert_eq!(proxy.stats().dropped, 50);
}

#[tokio::test]
async fn loss_of_half_drops_about_half() {
    let server = echo().await;
    let options = ProxyOptions {
        seed: Some(42),
        ..ProxyOptions::default()
    };
    let proxy = FaultProxy::start_with(localhost(), server.addr, options)
        .await
        .unwrap();
    let c = client(&proxy).await;
    proxy.set_faults(Faults {
        loss: 0.5,
        ..Faults::none()
    });
    send_paced(&c, 1000).await;
    let arrived = settle(&server.received).await;
    assert!((350..=650).contains(&arrived), "{arrived} of 1000 arrived");
    assert!(proxy.stats().dropped >= 1000 - arrived);
}

#[tokio::test]
async fn duplicate_of_one_doubles() {
    let server = echo().await;
    let proxy = FaultProxy::start(localhost(), server.addr).await.unwrap();
    let c = client(&proxy).await;
    proxy.set_faults(Faults {
        duplicate: 1.0,
        ..Faults::none()
    });
    send_paced(&c, 10).await;
    assert_eq!(settle(&server.received).await, 20);
    // 20 echoes, each doubled on the way back.
    let mut back = 0;
    while recv_within(&c, QUIET).await.is_some() {
        back += 1;
    }
    assert_eq!(back, 40);
    assert_eq!(proxy.stats().duplicated, 30);
    assert_eq!(proxy.stats().forwarded, 60);
}

#[tokio::test]
async fn reorder_lets_later_datagrams_overtake() {
    let server = echo().await;
    let options = ProxyOptions {
        seed: Some(7),
        ..ProxyOptions::default()
    };
    let proxy = FaultProxy::start_with(localhost(), server.addr, options)
        .await
        .unwrap();
    let c = client(&proxy).await;
    proxy.set_faults(Faults {
        delay: 20 * MS,
        reorder: 0.3,
        ..Faults::none()
    });
    send_paced(&c, 100).await;
    let mut seqs = Vec::new();
    while let Some(d) = recv_within(&c, QUIET).await {
        seqs.push(u32::from_be_bytes(d[..4].try_into().unwrap()));
    }
    assert_eq!(seqs.len(), 100, "reordering loses nothing");
    assert!(seqs.windows(2).any(|w| w[0] > w[1]), "in order: {seqs:?}");
    assert!(proxy.stats().reordered > 0);
}

#[tokio::test]
async fn blackhole_drops_and_lifting_it_restores() {
    let server = echo().await;
    let proxy = FaultProxy::start(localhost(), server.addr).await.unwrap();
    let c = client(&proxy).await;
    proxy.set_faults(Faults {
        delay: MS,
        ..Faults::none()
    });
    round_trip(&c, b"before").await;
    proxy.partition(true);
    assert!(proxy.faults().blackhole);
    c.send(b"during").await.unwrap();
    assert_eq!(recv_within(&c, QUIET).await, None);
    assert_eq!(server.received.load(Relaxed), 1);
    proxy.partition(false);
    assert_eq!(proxy.faults().delay, MS, "other faults are kept");
    assert_eq!(round_trip(&c, b"after").await, b"after");
}

#[tokio::test]
async fn rebind_changes_the_source_port_and_traffic_still_flows() {
    let server = echo().await;
    let proxy = FaultProxy::start(localhost(), server.addr).await.unwrap();
    let c = client(&proxy).await;
    let before = whoami(&c).await;
    assert_eq!(proxy.rebind().await.unwrap(), 1);
    let after = whoami(&c).await;
    assert_ne!(before.port(), after.port());
    assert_eq!(round_trip(&c, b"still here").await, b"still here");
    assert_eq!(proxy.stats().rebinds, 1);
    assert_eq!(proxy.flow_count(), 1);
}

#[tokio::test]
async fn bandwidth_cap_paces_the_transfer() {
    const CHUNK: usize = 1000;
    const TOTAL: usize = 2_000_000;
    const WINDOW: usize = 100;
    let server = echo().await;
    let proxy = FaultProxy::start(localhost(), server.addr).await.unwrap();
    let c = client(&proxy).await;
    proxy.set_faults(Faults {
        bandwidth_bytes_per_sec: Some(1_000_000),
        ..Faults::none()
    });
    let chunk = vec![7u8; CHUNK];
    let (mut sent, mut echoed, mut in_flight) = (0, 0, 0);
    let start = Instant::now();
    while echoed < TOTAL {
        while in_flight < WINDOW && sent < TOTAL {
            c.send(&chunk).await.unwrap();
            sent += CHUNK;
            in_flight += 1;
        }
        match recv_within(&c, QUIET).await {
            Some(d) => {
                echoed += d.len();
                in_flight -= 1;
            }
            // Lost on loopback (should not happen): forget what is in flight.
            None if sent >= TOTAL => break,
            None => in_flight = 0,
        }
    }
    let took = start.elapsed();
    assert!(echoed >= TOTAL * 9 / 10, "only {echoed} bytes came back");
    assert!(took >= 1500 * MS, "2 MB at 1 MB/s took {took:?}");
}

#[tokio::test]
async fn set_upstream_redirects() {
    let first = echo().await;
    let second = echo().await;
    let proxy = FaultProxy::start(localhost(), first.addr).await.unwrap();
    let c = client(&proxy).await;
    round_trip(&c, b"one").await;
    proxy.set_upstream(second.addr);
    assert_eq!(round_trip(&c, b"two").await, b"two");
    assert_eq!(first.received.load(Relaxed), 1);
    assert_eq!(second.received.load(Relaxed), 1);
}

#[tokio::test]
async fn idle_flows_are_removed_and_recreated() {
    let server = echo().await;
    let options = ProxyOptions {
        flow_idle_timeout: 100 * MS,
        ..ProxyOptions::default()
    };
    let proxy = FaultProxy::start_with(localhost(), server.addr, options)
        .await
        .unwrap();
    let c = client(&proxy).await;
    round_trip(&c, b"a").await;
    assert_eq!(proxy.flow_count(), 1);
    let start = Instant::now();
    while proxy.flow_count() > 0 {
        assert!(start.elapsed() < PATIENCE, "idle flow never removed");
        tokio::time::sleep(20 * MS).await;
    }
    assert_eq!(round_trip(&c, b"b").await, b"b");
    assert_eq!(proxy.flow_count(), 1);
}

#[tokio::test]
async fn shutdown_closes_the_sockets() {
    let server = echo().await;
    let proxy = FaultProxy::start(localhost(), server.addr).await.unwrap();
    let addr = proxy.local_addr();
    let c = client(&proxy).await;
    round_trip(&c, b"x").await;
    proxy.shutdown().await;
    // The port is free again, so the listening socket is closed.
    UdpSocket::bind(addr).await.unwrap();
}
