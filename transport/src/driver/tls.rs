//! rustls and quinn configuration: TLS 1.3 only, mutual authentication against the deployment's
//! CA, certificate revocation lists, ALPN `morag/1`, and 0-RTT.

use std::sync::Arc;

use morag_certs::RevocationList;
use rustls::client::{ClientSessionMemoryCache, Resumption, WebPkiServerVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::{CongestionControl, Credentials, SessionConfig};
use crate::error::ConfigError;
use crate::wire::ALPN;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad(what: &str, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Credentials(format!("{what}: {e}"))
}

pub(crate) fn cert_chain(creds: &Credentials) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let chain = CertificateDer::pem_slice_iter(creds.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate PEM", e))?;
    if chain.is_empty() {
        return Err(bad("certificate PEM", "no certificate found"));
    }
    Ok(chain)
}

fn key(creds: &Credentials) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes()).map_err(|e| bad("private key PEM", e))
}

fn roots(creds: &Credentials) -> Result<Arc<RootCertStore>, ConfigError> {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(creds.ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| bad("CA PEM", e))?;
        store.add(cert).map_err(|e| bad("CA certificate", e))?;
    }
    if store.is_empty() {
        return Err(bad("CA PEM", "no certificate found"));
    }
    Ok(Arc::new(store))
}

fn crls(revocations: &RevocationList) -> Vec<CertificateRevocationListDer<'static>> {
    revocations
        .der()
        .map(|d| vec![CertificateRevocationListDer::from(d.to_vec())])
        .unwrap_or_default()
}

/// The QUIC transport settings both sides use.
pub(crate) fn transport_config(cfg: &SessionConfig) -> Result<quinn::TransportConfig, ConfigError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(cfg.idle_timeout)
        .map_err(|e| ConfigError::Invalid("idle_timeout", e.to_string()))?;
    t.max_idle_timeout(Some(idle));
    // Liveness comes from our own heartbeat datagrams; no QUIC keep-alives on top.
    t.keep_alive_interval(None);
    // Windows large enough that one bulk stream is not flow-control bound on a fast link.
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    t.receive_window(quinn::VarInt::from_u32(64 << 20));
    t.send_window(64 << 20);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(256));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.datagram_receive_buffer_size(Some(64 << 10));
    t.datagram_send_buffer_size(64 << 10);
    let link = &cfg.link;
    t.packet_threshold(link.packet_threshold);
    t.time_threshold(link.time_threshold);
    t.initial_rtt(link.initial_rtt);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(link.max_udp_payload);
    t.mtu_discovery_config(Some(mtu));
    match link.congestion {
        CongestionControl::Bbr => {
            t.congestion_controller_factory(Arc::new(super::congestion::RateCappedBbr::default()))
        }
        CongestionControl::Cubic => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
        }
        CongestionControl::NewReno => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default()))
        }
    };
    Ok(t)
}

/// Server (accepting side) configuration.
pub(crate) fn server_config(cfg: &SessionConfig) -> Result<quinn::ServerConfig, ConfigError> {
    let creds = &cfg.credentials;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(creds)?, provider())
        .with_crls(crls(&cfg.revocations))
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| bad("client verifier", e))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad("TLS versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert_chain(creds)?, key(creds)?)
        .map_err(|e| bad("certificate and key", e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // quinn accepts only 0 or u32::MAX; the default stateful ticket store makes tickets
    // single-use, which blocks replay of early data within this process.
    tls.max_early_data_size = u32::MAX;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls))
        .map_err(|e| bad("QUIC TLS", e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config(cfg)?));
    Ok(server)
}

/// A session-ticket store for one client configuration.
pub(crate) fn ticket_store() -> Arc<ClientSessionMemoryCache> {
    Arc::new(ClientSessionMemoryCache::new(64))
}

/// Client (dialing side) configuration.
pub(crate) fn client_config(
    cfg: &SessionConfig,
    tickets: Arc<ClientSessionMemoryCache>,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, ConfigError> {
    let creds = &cfg.credentials;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(creds)?, provider())
        .with_crls(crls(&cfg.revocations))
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| bad("server verifier", e))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad("TLS versions", e))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(cert_chain(creds)?, key(creds)?)
        .map_err(|e| bad("certificate and key", e))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.enable_early_data = cfg.zero_rtt;
    tls.resumption = Resumption::store(tickets);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| bad("QUIC TLS", e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport_config(cfg)?));
    Ok(client)
}

/// Words for a failed handshake, naming the likely cause.
pub(crate) fn describe_connection_error(e: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    match e {
        E::ApplicationClosed(c) => {
            let code = u32::try_from(c.error_code.into_inner()).unwrap_or(u32::MAX);
            format!(
                "peer closed the connection: {} ({})",
                crate::wire::close_code::describe(code),
                String::from_utf8_lossy(&c.reason)
            )
        }
        E::ConnectionClosed(c) => {
            let code = u64::from(c.error_code);
            let hint = match code.checked_sub(0x100) {
                Some(42) => "the peer rejected our certificate (bad certificate)",
                Some(44) => "the peer rejected our certificate: it is revoked",
                Some(45) => "the peer rejected our certificate: it is expired",
                Some(46) => "the peer rejected our certificate",
                Some(48) => "the peer does not trust our certificate's CA (unknown CA)",
                Some(116) => "the peer requires a client certificate",
                Some(120) => {
                    "no common application protocol (ALPN): the peer does not speak morag/1"
                }
                _ => "",
            };
            if hint.is_empty() {
                format!("peer closed the connection: {c}")
            } else {
                format!("{hint} ({c})")
            }
        }
        E::TransportError(t) => format!("handshake failed: {t}"),
        E::TimedOut => "timed out: no answer from the peer".to_string(),
        other => other.to_string(),
    }
}
