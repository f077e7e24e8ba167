//! (a) Bulk throughput: morag-transport verified file transfer vs plain quinn (one stream)
//! vs TLS 1.3 over TCP, all on loopback with the same certificates.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use morag_transport::raw;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::common::{cpu_time, fill, Pki, SERVER_NAME};
use crate::pair::Pair;

/// Application write size for the baselines.
const CHUNK: usize = 1 << 20;

pub struct Ours {
    /// From `send_file` to the receiver's verified "complete": hashing the source included.
    pub with_hash: Duration,
    /// From the moment the hash is known to the receiver's "complete".
    pub transfer: Duration,
    /// Process CPU time per run (both ends), averaged over the runs, hashing included.
    pub cpu: Duration,
}

/// A baseline's best time and its CPU time per run (both ends), averaged over the runs.
pub struct Baseline {
    pub time: Duration,
    pub cpu: Duration,
}

/// Best of `runs` morag-transport file transfers.
pub async fn ours(pair: &mut Pair, file: &Path, runs: usize) -> anyhow::Result<Ours> {
    let mut best: Option<Ours> = None;
    let cpu0 = cpu_time();
    for run in 0..runs {
        let t = pair.transfer(file).await?;
        let r = Ours {
            with_hash: t.done - t.start,
            transfer: t.done - t.hashed,
            cpu: Duration::ZERO,
        };
        eprintln!(
            "  morag run {run}: total {:.3?}, hashing {:.3?}, transfer {:.3?}, path {:?}",
            r.with_hash,
            t.hashed - t.start,
            r.transfer,
            pair.sender.path_stats()
        );
        best = Some(match best {
            Some(b) if b.transfer <= r.transfer => Ours {
                with_hash: b.with_hash.min(r.with_hash),
                ..b
            },
            Some(b) => Ours {
                with_hash: b.with_hash.min(r.with_hash),
                ..r
            },
            None => r,
        });
    }
    let cpu = (cpu_time() - cpu0) / runs as u32;
    best.map(|b| Ours { cpu, ..b }).context("no run")
}

fn test_chunk() -> Bytes {
    let mut buf = vec![0u8; CHUNK];
    fill(&mut buf, &mut 0x1234_5678_9abc_def1);
    Bytes::from(buf)
}

/// Best of `runs` transfers of `bytes` over one fresh stream each, on one
/// plain quinn connection with the sessions' TLS and transport settings.
pub async fn plain_quinn(
    pki: &Pki,
    dir: &Path,
    bytes: u64,
    runs: usize,
) -> anyhow::Result<Baseline> {
    let (hub, agent) = (pki.hub_config(dir), pki.agent_config(dir));
    let server_cfg = raw::server_config(&hub)?;
    let client_cfg = raw::client_config(&agent)?;
    let bind = |cfg, server| raw::endpoint("127.0.0.1:0".parse().expect("addr"), cfg, server);
    let server = bind(&hub, Some(server_cfg))?;
    let mut client = bind(&agent, None)?;
    client.set_default_client_config(client_cfg);

    let (done_tx, mut done_rx) = mpsc::channel::<(u64, Instant)>(1);
    let srv = server.clone();
    let receiver = tokio::spawn(async move {
        let conn = srv.accept().await.context("no connection")?.await?;
        // The sessions' transport settings allow no unidirectional streams.
        while let Ok((_send, mut recv)) = conn.accept_bi().await {
            let mut n = 0u64;
            while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
                n += chunk.bytes.len() as u64;
            }
            let _ = done_tx.send((n, Instant::now())).await;
        }
        anyhow::Ok(())
    });
    let conn = client
        .connect(server.local_addr()?, SERVER_NAME)?
        .await
        .context("plain quinn connect")?;
    let chunk = test_chunk();
    let mut best = Duration::MAX;
    let cpu0 = cpu_time();
    for run in 0..runs {
        let start = Instant::now();
        let (mut send, _recv) = conn.open_bi().await?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            send.write_chunk(chunk.slice(..n)).await?;
            left -= n as u64;
        }
        send.finish()?;
        let (n, end) = done_rx.recv().await.context("receiver gone")?;
        anyhow::ensure!(n == bytes, "receiver got {n} of {bytes} bytes");
        let d = end - start;
        eprintln!("  quinn run {run}: {d:.3?}");
        best = best.min(d);
    }
    let cpu = (cpu_time() - cpu0) / runs as u32;
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    server.close(0u32.into(), b"done");
    receiver.abort();
    Ok(Baseline { time: best, cpu })
}

fn tls_configs(
    pki: &Pki,
) -> anyhow::Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let roots = Arc::new(roots);
    let chain =
        |pem: &str| CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            chain(&pki.hub.cert_pem)?,
            PrivateKeyDer::from_pem_slice(pki.hub.key_pem.as_bytes())?,
        )?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            chain(&pki.agent.cert_pem)?,
            PrivateKeyDer::from_pem_slice(pki.agent.key_pem.as_bytes())?,
        )?;
    Ok((Arc::new(server), Arc::new(client)))
}

/// Best of `runs` transfers of `bytes` over TLS 1.3 over TCP (tokio-rustls, ring, mutual
/// auth with the same certificates), one connection per run, handshake not timed. Also
/// returns the negotiated cipher suite.
pub async fn tls_tcp(pki: &Pki, bytes: u64, runs: usize) -> anyhow::Result<(Baseline, String)> {
    let (server_cfg, client_cfg) = tls_configs(pki)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
    let connector = tokio_rustls::TlsConnector::from(client_cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (done_tx, mut done_rx) = mpsc::channel::<(u64, Instant)>(1);
    let receiver = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut buf = vec![0u8; CHUNK];
            let mut n = 0u64;
            loop {
                let r = tls.read(&mut buf).await?;
                if r == 0 {
                    break;
                }
                n += r as u64;
            }
            let _ = done_tx.send((n, Instant::now())).await;
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    });
    let chunk = test_chunk();
    let mut best = Duration::MAX;
    let mut suite = String::new();
    let mut cpu = Duration::ZERO;
    for run in 0..runs {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(SERVER_NAME.to_string())?;
        let mut tls = connector.connect(name, tcp).await?;
        suite = format!(
            "{:?}",
            tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite())
        );
        let start = Instant::now();
        let cpu0 = cpu_time();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            tls.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        tls.shutdown().await?;
        let (n, end) = done_rx.recv().await.context("receiver gone")?;
        cpu += cpu_time() - cpu0;
        anyhow::ensure!(n == bytes, "receiver got {n} of {bytes} bytes");
        let d = end - start;
        eprintln!("  tls/tcp run {run}: {d:.3?}");
        best = best.min(d);
    }
    receiver.abort();
    Ok((
        Baseline {
            time: best,
            cpu: cpu / runs as u32,
        },
        suite,
    ))
}

/// The optional iroh-blobs comparison: runs the `bench-iroh` binary (built from
/// `tests/bench-iroh`, outside the workspace, so the default build never compiles iroh) on the
/// same file, and reads its best time and CPU from its last line.
pub fn iroh_blobs(binary: &Path, file: &Path, runs: usize) -> anyhow::Result<Baseline> {
    let out = std::process::Command::new(binary)
        .arg(file)
        .arg(runs.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    anyhow::ensure!(out.status.success(), "{} failed", binary.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rfind(|l| l.starts_with("iroh-blobs:"))
        .context("bench-iroh printed no result line")?;
    // "iroh-blobs: <MiB/s> MiB/s <seconds> s <cpu> CPU s/GiB"
    let f: Vec<&str> = line.split_whitespace().collect();
    anyhow::ensure!(f.len() >= 6, "unexpected bench-iroh line {line:?}");
    let secs: f64 = f[3].parse().context("seconds")?;
    let cpu_per_gib: f64 = f[5].parse().context("CPU")?;
    let bytes = std::fs::metadata(file)?.len() as f64;
    Ok(Baseline {
        time: Duration::from_secs_f64(secs),
        cpu: Duration::from_secs_f64(cpu_per_gib * bytes / (1u64 << 30) as f64),
    })
}
