//! A morag-transport session pair on loopback: a listener (receiver) and a client (sender).
//! The receiver deletes every file it gets, so the same file can be sent again, and answers
//! small ping requests.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context};
use morag_transport::{
    close_code, Body, Client, Envelope, Inbound, Listener, ReceivedFile, Reply, Session,
};
use tokio::sync::mpsc;

use crate::common::{Pki, SERVER_NAME};

/// Kind of the small request the latency runs time.
pub const PING: &str = "bench.ping";

pub struct Pair {
    pub listener: Listener,
    pub client: Client,
    /// The dialing (sending) side.
    pub sender: Session,
    received: mpsc::Receiver<ReceivedFile>,
}

/// When one transfer hashed its source and finished.
pub struct Timing {
    pub start: Instant,
    pub hashed: Instant,
    pub done: Instant,
}

impl Pair {
    pub async fn start(pki: &Pki, dir: &Path) -> anyhow::Result<Self> {
        let listener = Listener::bind(
            "127.0.0.1:0".parse()?,
            pki.hub_config(&dir.join("recv-store")),
        )?;
        let client = Client::new(pki.agent_config(&dir.join("send-store")))?;
        let (sender, receiver) = tokio::join!(
            client.connect(listener.local_addr()?, SERVER_NAME),
            listener.accept()
        );
        let sender = sender.context("connect")?;
        let receiver = receiver.context("accept")?;
        let (tx, received) = mpsc::channel(4);
        tokio::spawn(serve(receiver, Some(tx)));
        Ok(Self {
            listener,
            client,
            sender,
            received,
        })
    }

    /// Send `path` and wait until the receiver holds it, verified.
    pub async fn transfer(&mut self, path: &Path) -> anyhow::Result<Timing> {
        let start = Instant::now();
        let transfer = self.sender.send_file(path, "bench.bin");
        let mut progress = transfer.progress();
        let hashed = tokio::spawn(async move {
            progress
                .wait_for(|p| !p.hash.is_empty())
                .await
                .ok()
                .map(|_| Instant::now())
        });
        let outcome = transfer.await.context("transfer")?;
        let done = Instant::now();
        let hashed = hashed.await?.context("progress never showed the hash")?;
        ensure!(
            !outcome.skipped,
            "receiver already had the file: not a transfer"
        );
        let file = self.received.recv().await.context("receiver gone")?;
        ensure!(file.hash == outcome.hash, "receiver stored another hash");
        Ok(Timing {
            start,
            hashed,
            done,
        })
    }

    pub async fn close(self) {
        self.sender.close(close_code::NORMAL, "bench done").await;
        self.listener.close(close_code::NORMAL, "bench done").await;
        self.client.close().await;
    }
}

/// The receiving side: delete files once verified (reporting them), answer pings.
pub async fn serve(session: Session, files: Option<mpsc::Sender<ReceivedFile>>) {
    while let Some(inbound) = session.recv().await {
        match inbound {
            Inbound::File(f) => {
                let _ = std::fs::remove_file(&f.path);
                if let Some(files) = &files {
                    let _ = files.send(f).await;
                }
            }
            Inbound::Message(env) => {
                if env.decode_user::<u64>(PING).is_some() {
                    let _ = session.respond(
                        &env,
                        Body::Reply(Reply {
                            ok: true,
                            message: String::new(),
                        }),
                    );
                }
            }
        }
    }
}

/// A ping request.
pub fn ping(seq: u64) -> Envelope {
    Envelope::user(PING, &seq).expect("u64 encodes")
}
