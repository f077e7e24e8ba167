//! `morag-hub serve`: open the data directory and the database, bind QUIC (agents) and HTTP
//! (clients), run until the shutdown token fires, then shut down gracefully: stop accepting
//! jobs, tell agents `SHUTDOWN` (they reconnect to the next hub process), close.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use morag_transport::{close_code, DetectorConfig, Listener, Role, SessionConfig};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::HubConfig;
use crate::hub::Hub;
use crate::init;
use crate::store::sql::SqlStore;
use crate::store::Store;

/// A hub that is up: where it listens and what a client needs.
#[derive(Debug)]
pub struct Running {
    pub hub: Arc<Hub>,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    /// `host:port` for join tokens.
    pub advertised: String,
    tasks: JoinSet<()>,
}

impl Running {
    /// Wait until the hub has shut down (after its token fired): its tasks end (HTTP
    /// connections still open after `shutdown_grace` are dropped), then agents are told
    /// `SHUTDOWN` and the QUIC endpoint closes.
    pub async fn wait(mut self) {
        self.hub.shutdown.cancelled().await;
        let grace = self.hub.config.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?grace,
                "tasks still busy after the grace period; stopping them"
            );
            self.tasks.abort_all();
        }
        self.hub.listener_close().await;
    }
}

/// Open everything and start serving.
pub async fn start(mut config: HubConfig, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let data = init::prepare(&config)?;
    if config.max_store_bytes_auto {
        config.max_store_bytes = Some(init::default_store_quota(&config)?);
    }
    let hub_id = crate::hub::new_id("hub");
    let target = config.store_target();
    let store = SqlStore::open(&target, config.sync, &hub_id)
        .await
        .with_context(|| format!("opening the database {}", target.redacted()))?;
    let notices = store
        .notices()
        .await
        .with_context(|| format!("listening to the database {}", target.redacted()))?;
    // Revocations live in the database (every hub of a deployment refuses them): the CRL the
    // hub starts with lists them, and `identity_loop` follows later ones.
    let mut crl_ca = morag_certs::CertificateAuthority::load(&config.pki_dir())
        .context("loading the CA for revocations")?;
    let revoked = store
        .revoked_serials()
        .await
        .context("reading the revoked certificates")?;
    let revoked_serials = crate::hub::usable_serials(&revoked);
    let revocations = if revoked_serials.is_empty() {
        data.revocations.clone()
    } else {
        crl_ca
            .revoke(&revoked_serials)
            .context("signing the revocation list")?
    };
    let mut session = SessionConfig::new(data.credentials.clone());
    session.revocations = revocations;
    session.store_dir = config.store_dir();
    session.allowed_roles = Some(vec![Role::Agent]);
    session.software = concat!("morag-hub/", env!("CARGO_PKG_VERSION")).to_string();
    session.heartbeat = DetectorConfig {
        interval: config.heartbeat_interval,
        suspect_after: config.heartbeat_interval * 3,
        dead_after: config.heartbeat_interval * 5,
    };
    // Agents ping each interval; the hub answers and pings every other interval. With
    // thousands of agents that saves a quarter of the heartbeat packets the hub handles.
    session.quiet_when_pinged = true;
    session.link.congestion = config.congestion;
    session.close_grace = config.shutdown_grace;
    let attempts = crate::hub::AttemptTable::default();
    session.accept_filter = Some(crate::hub::artifact_filter(
        attempts.clone(),
        config.max_upload_bytes,
    ));
    session.max_store_bytes = config.max_store_bytes;
    let listener = Listener::bind(config.quic, session)
        .with_context(|| format!("binding QUIC on {}", config.quic))?;
    let quic = listener.local_addr()?;
    let http_listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http))?;
    let http = http_listener.local_addr()?;
    let advertised = config.advertised(quic.port());
    // For the command line on this host: where the API is, and what agents dial.
    let local_http = if http.ip().is_unspecified() {
        SocketAddr::new("127.0.0.1".parse().expect("ip"), http.port())
    } else {
        http
    };
    std::fs::write(
        config.data.join(crate::cli::client::URL_FILE),
        format!("http://{local_http}\n"),
    )?;
    std::fs::write(
        config.data.join(crate::enroll::ADVERTISE_FILE),
        format!("{advertised}\n"),
    )?;
    let store_file = config.data.join(crate::enroll::STORE_FILE);
    match &config.store {
        Some(url) => init::write_private(&store_file, &format!("{url}\n"))?,
        None => {
            let _ = std::fs::remove_file(&store_file);
        }
    }
    // Enrollment: TLS on the TCP port with the QUIC port's number.
    let enroll_listener = tokio::net::TcpListener::bind(quic)
        .await
        .with_context(|| format!("binding the enrollment endpoint on TCP {quic}"))?;
    let store: Arc<dyn crate::store::Store> = Arc::new(store);
    let authority = Arc::new(crate::enroll::HubAuthority::new(store.clone(), data.ca));
    let chain = format!("{}{}", data.hub_cert_pem, data.credentials.ca_pem);
    let hub = Hub::new(
        hub_id,
        config,
        store,
        listener,
        attempts,
        data.api_token.clone(),
        data.ca_fingerprint,
        shutdown.clone(),
    )?;

    let mut tasks = JoinSet::new();
    let key = data.hub_key_pem.clone();
    let stop = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) =
            morag_certs::enroll::serve(enroll_listener, &chain, &key, authority, stop).await
        {
            tracing::error!(error = %e, "enrollment endpoint failed");
        }
    });
    tasks.spawn(hub.clone().accept_loop());
    tasks.spawn(hub.clone().dispatch_loop());
    tasks.spawn(hub.clone().rescue_loop());
    tasks.spawn(hub.clone().lease_loop());
    if let Some(notices) = notices {
        tasks.spawn(hub.clone().notice_loop(notices));
    }
    tasks.spawn(hub.clone().gc_loop());
    tasks.spawn(
        hub.clone()
            .identity_loop(crl_ca, revoked.into_iter().collect()),
    );
    let app = crate::api::router(hub.clone());
    let stop = shutdown.clone();
    let h = hub.clone();
    tasks.spawn(async move {
        let serve = axum::serve(http_listener, app).with_graceful_shutdown(async move {
            stop.cancelled().await;
            h.stop_accepting();
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(%quic, %http, advertised, hub_id = %hub.hub_id, store = %target.redacted(), "hub up");
    Ok(Running {
        hub,
        quic,
        http,
        advertised,
        tasks,
    })
}

impl Hub {
    /// Tell every agent the hub is going away (they reconnect to the next one) and close.
    pub(crate) async fn listener_close(&self) {
        self.stop_accepting();
        self.listener
            .close(close_code::SHUTDOWN, "hub shutting down")
            .await;
    }
}

/// Serve until `shutdown` fires; print where to reach the hub first.
pub async fn run(config: HubConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data_dir = config.data.clone();
    let token_path = config.token_path();
    let running = start(config, shutdown).await?;
    let fp = init::fingerprint_text(&running.hub.ca_fingerprint);
    println!("morag-hub {}", env!("CARGO_PKG_VERSION"));
    println!("  data:      {}", data_dir.display());
    println!(
        "  database:  {}",
        running.hub.config.store_target().redacted()
    );
    println!("  content:   {}", running.hub.config.store_dir().display());
    println!("  hub id:    {}", running.hub.hub_id);
    println!(
        "  quic:      {} (agents dial {})",
        running.quic, running.advertised
    );
    println!("  http:      http://{}", running.http);
    println!("  ca:        {fp}");
    println!("  api token: {}", token_path.display());
    println!(
        "  join an agent: morag-hub token create --data {}",
        data_dir.display()
    );
    running.wait().await;
    tracing::info!("hub stopped");
    Ok(())
}
