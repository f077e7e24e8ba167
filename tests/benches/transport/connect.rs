//! (c) Connect to first message through the fault proxy at 50 ms RTT: a full handshake (a
//! fresh `Client`, no ticket) against a 0-RTT reconnect (the same `Client` again).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use morag_tests::{FaultProxy, Faults};
use morag_transport::{close_code, Client, Listener};

use crate::common::{Pki, SERVER_NAME};
use crate::pair::{ping, serve};

/// One-way delay the proxy adds in each direction.
pub const ONE_WAY: Duration = Duration::from_millis(25);

#[derive(Default)]
pub struct Mode {
    /// `connect()` start to its return.
    pub connect: Vec<Duration>,
    /// `connect()` start to the first request's response.
    pub first_message: Vec<Duration>,
    /// `Session::zero_rtt()` of each connection.
    pub zero_rtt: Vec<bool>,
}

pub struct ConnectTimes {
    pub full: Mode,
    pub resumed: Mode,
}

async fn once(client: &Client, addr: SocketAddr, seq: u64, into: &mut Mode) -> anyhow::Result<()> {
    let start = Instant::now();
    let session = client.connect(addr, SERVER_NAME).await.context("connect")?;
    let connected = start.elapsed();
    let zero_rtt = session.zero_rtt();
    session.request(ping(seq)).await.context("first request")?;
    into.first_message.push(start.elapsed());
    into.connect.push(connected);
    into.zero_rtt.push(zero_rtt);
    session.close(close_code::NORMAL, "bench").await;
    Ok(())
}

pub async fn run(pki: &Pki, dir: &Path, runs: usize) -> anyhow::Result<ConnectTimes> {
    let listener = std::sync::Arc::new(Listener::bind(
        "127.0.0.1:0".parse()?,
        pki.hub_config(&dir.join("connect-store")),
    )?);
    let server = {
        let listener = listener.clone();
        tokio::spawn(async move {
            while let Some(session) = listener.accept().await {
                tokio::spawn(serve(session, None));
            }
        })
    };
    let proxy = FaultProxy::start("127.0.0.1:0".parse()?, listener.local_addr()?).await?;
    proxy.set_faults(Faults {
        delay: ONE_WAY,
        ..Faults::none()
    });
    let addr = proxy.local_addr();
    let config = pki.agent_config(&dir.join("connect-client"));

    let mut full = Mode::default();
    for seq in 0..runs as u64 {
        let client = Client::new(config.clone())?;
        once(&client, addr, seq, &mut full).await?;
        client.close().await;
    }

    let client = Client::new(config)?;
    let mut warm = Mode::default();
    once(&client, addr, 0, &mut warm).await?;
    ensure!(!warm.zero_rtt[0], "a fresh client cannot have a ticket");
    let mut resumed = Mode::default();
    for seq in 0..runs as u64 {
        once(&client, addr, seq, &mut resumed).await?;
    }
    client.close().await;
    listener.close(close_code::NORMAL, "bench done").await;
    server.abort();
    proxy.shutdown().await;
    Ok(ConnectTimes { full, resumed })
}
