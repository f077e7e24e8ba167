//! Enrollment end to end over real TLS on 127.0.0.1: a hub serving
//! [`serve`] with an in-memory authority (single use, expiry), agents
//! calling [`enroll`], and hostile clients speaking raw bytes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use morag_certs::enroll::wire::{self, EnrollResponse, ALPN, MAX_FRAME_LEN};
use morag_certs::enroll::{
    ca_fingerprint, enroll, enroll_with, serve, EnrollAuthority, EnrollError, EnrollGrant,
    EnrollOptions, EnrollRefusal, EnrollRequest, JoinToken, StoredToken, TokenCheck,
    TokenParseError, AGENT_CA_FILE, AGENT_CERT_FILE, AGENT_KEY_FILE,
};
use morag_certs::{cert_der_from_pem, peer_identity, CertificateAuthority, Role, Validity};
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Bound on anything a test waits for.
const WAIT: Duration = Duration::from_secs(20);
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The hub's side: tokens by id, and how many requests reached it.
struct MemoryAuthority {
    ca: CertificateAuthority,
    tokens: Mutex<HashMap<String, StoredToken>>,
    requests: AtomicUsize,
}

impl EnrollAuthority for MemoryAuthority {
    fn enroll(&self, req: &EnrollRequest) -> Result<EnrollGrant, EnrollRefusal> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut tokens = self.tokens.lock().unwrap();
        let stored = tokens.get_mut(&req.token_id);
        TokenCheck::check(stored.as_deref(), &req.secret, SystemTime::now()).into_result()?;
        let cert = self
            .ca
            .sign_agent_csr(&req.csr_pem, &req.agent_id, Validity::days(1))
            .map_err(|e| EnrollRefusal::BadRequest(e.to_string()))?;
        stored.expect("checked").used = true;
        Ok(EnrollGrant {
            cert_pem: cert.cert_pem,
            ca_pem: self.ca.cert_pem().to_owned(),
        })
    }
}

/// A running hub.
struct Hub {
    addr: SocketAddr,
    authority: Arc<MemoryAuthority>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), morag_certs::enroll::ServeError>>,
}

impl Hub {
    /// A hub whose certificate names 127.0.0.1, issued by a fresh CA.
    async fn start() -> Hub {
        let ca = CertificateAuthority::generate("test-ca", Validity::days(30)).unwrap();
        let hub = ca
            .issue_hub("hub", &[], &[LOOPBACK], Validity::days(2))
            .unwrap();
        let chain = format!("{}{}", hub.cert_pem, ca.cert_pem());
        Self::start_with(ca, &chain, &hub.key_pem).await
    }

    async fn start_with(ca: CertificateAuthority, chain: &str, key: &str) -> Hub {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        Self::serve_on(listener, ca, chain, key)
    }

    fn serve_on(listener: TcpListener, ca: CertificateAuthority, chain: &str, key: &str) -> Hub {
        let addr = listener.local_addr().unwrap();
        let authority = Arc::new(MemoryAuthority {
            ca,
            tokens: Mutex::default(),
            requests: AtomicUsize::new(0),
        });
        let shutdown = CancellationToken::new();
        let (chain, key) = (chain.to_owned(), key.to_owned());
        let task = tokio::spawn({
            let authority: Arc<dyn EnrollAuthority> = authority.clone();
            let shutdown = shutdown.clone();
            async move { serve(listener, &chain, &key, authority, shutdown).await }
        });
        Hub {
            addr,
            authority,
            shutdown,
            task,
        }
    }

    /// A token the hub knows, expiring at `expires_at`.
    fn token(&self, expires_at: SystemTime) -> JoinToken {
        let fingerprint = ca_fingerprint(&self.authority.ca.cert_der());
        let token = JoinToken::generate(&self.addr.to_string(), fingerprint).unwrap();
        self.authority.tokens.lock().unwrap().insert(
            token.id.clone(),
            StoredToken {
                secret_hash: token.secret_hash(),
                expires_at,
                used: false,
            },
        );
        token
    }

    fn valid_token(&self) -> JoinToken {
        self.token(SystemTime::now() + Duration::from_secs(3600))
    }

    fn requests(&self) -> usize {
        self.authority.requests.load(Ordering::SeqCst)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops promptly")
            .unwrap()
            .unwrap();
    }
}

async fn enroll_in(
    hub: &Hub,
    token: &JoinToken,
    agent: &str,
    dir: &Path,
) -> Result<(), EnrollError> {
    tokio::time::timeout(WAIT, enroll(&hub.addr.to_string(), token, agent, dir))
        .await
        .expect("enroll is bounded")
        .map(|_| ())
}

fn refusal(result: Result<(), EnrollError>) -> EnrollRefusal {
    match result {
        Err(EnrollError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn good_token_enrolls_once_and_the_files_work() {
    let hub = Hub::start().await;
    let token = hub.valid_token();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let enrolled = tokio::time::timeout(WAIT, enroll(&token.hub, &token, "gpu-01", &agent_dir))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(enrolled.identity.role, Role::Agent);
    assert_eq!(enrolled.identity.id, "gpu-01");
    assert_eq!(enrolled.key_path, agent_dir.join(AGENT_KEY_FILE));

    // The certificate names the agent and is signed by the CA.
    let cert_pem = std::fs::read(agent_dir.join(AGENT_CERT_FILE)).unwrap();
    let cert_der = cert_der_from_pem(&cert_pem).unwrap();
    let identity = peer_identity(&cert_der).unwrap();
    assert_eq!(
        (identity.role, identity.id.as_str()),
        (Role::Agent, "gpu-01")
    );
    let ca_pem = std::fs::read_to_string(agent_dir.join(AGENT_CA_FILE)).unwrap();
    assert_eq!(ca_pem, hub.authority.ca.cert_pem());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(hub.authority.ca.cert_der()))
        .unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_client_cert(
            &CertificateDer::from(cert_der.clone()),
            &[],
            UnixTime::now(),
        )
        .expect("the agent certificate verifies against the CA");

    // The key is the agent's own, private, and matches the certificate.
    let key_pem = std::fs::read_to_string(agent_dir.join(AGENT_KEY_FILE)).unwrap();
    let key = KeyPair::from_pem(&key_pem).unwrap();
    let (_, cert) = X509Certificate::from_der(&cert_der).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&agent_dir.join(AGENT_KEY_FILE)), 0o600);
        assert_eq!(mode(&agent_dir), 0o700);
    }

    // The same token a second time is refused, and nothing is written.
    let again = dir.path().join("again");
    let refused = refusal(enroll_in(&hub, &token, "gpu-02", &again).await);
    assert_eq!(refused, EnrollRefusal::TokenUsed);
    let message = EnrollError::Refused(refused).to_string();
    assert!(message.contains("already used"), "{message}");
    assert!(!again.exists());
    assert_eq!(hub.requests(), 2);
    hub.stop().await;
}

#[tokio::test]
async fn enrolls_over_ipv6_loopback() {
    let v6 = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
    let Ok(listener) = TcpListener::bind((v6, 0)).await else {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    };
    let ca = CertificateAuthority::generate("test-ca", Validity::days(30)).unwrap();
    let cert = ca.issue_hub("hub", &[], &[v6], Validity::days(2)).unwrap();
    let chain = format!("{}{}", cert.cert_pem, ca.cert_pem());
    let hub = Hub::serve_on(listener, ca, &chain, &cert.key_pem);
    let token = hub.valid_token();
    assert!(token.hub.starts_with("[::1]:"), "{}", token.hub);
    let token: JoinToken = token.to_string().parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    enroll_in(&hub, &token, "gpu-v6", dir.path()).await.unwrap();
    hub.stop().await;
}

#[tokio::test]
async fn expired_token_is_refused() {
    let hub = Hub::start().await;
    let token = hub.token(SystemTime::now() - Duration::from_secs(1));
    let dir = tempfile::tempdir().unwrap();
    let result = enroll_in(&hub, &token, "gpu-03", dir.path()).await;
    let message = result.as_ref().unwrap_err().to_string();
    assert_eq!(refusal(result), EnrollRefusal::TokenExpired);
    assert!(message.contains("join token expired"), "{message}");
    assert!(!dir.path().join(AGENT_KEY_FILE).exists());
    hub.stop().await;
}

#[tokio::test]
async fn forged_secret_is_refused_and_does_not_spend_the_token() {
    let hub = Hub::start().await;
    let token = hub.valid_token();
    let forged = JoinToken {
        secret: "aaaaaaaaaaaaaaaa".into(),
        ..token.clone()
    };
    let dir = tempfile::tempdir().unwrap();
    let result = enroll_in(&hub, &forged, "gpu-04", dir.path()).await;
    let message = result.as_ref().unwrap_err().to_string();
    assert_eq!(refusal(result), EnrollRefusal::UnknownToken);
    assert!(message.contains("unknown join token"), "{message}");

    let unknown = JoinToken {
        id: "zzzzzz".into(),
        ..token.clone()
    };
    assert_eq!(
        refusal(enroll_in(&hub, &unknown, "gpu-04", dir.path()).await),
        EnrollRefusal::UnknownToken
    );
    // The real holder still enrolls.
    enroll_in(&hub, &token, "gpu-04", dir.path()).await.unwrap();
    hub.stop().await;
}

#[tokio::test]
async fn token_for_another_ca_fails_before_the_secret_is_sent() {
    let hub = Hub::start().await;
    let mut token = hub.valid_token();
    let other = CertificateAuthority::generate("other-ca", Validity::days(30)).unwrap();
    token.ca_fingerprint = ca_fingerprint(&other.cert_der());
    let dir = tempfile::tempdir().unwrap();
    let err = enroll_in(&hub, &token, "gpu-05", dir.path())
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::CaMismatch { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("the hub's CA does not match the token's fingerprint"),
        "{message}"
    );
    assert!(message.contains("man in the middle"), "{message}");
    assert_eq!(hub.requests(), 0, "the authority saw a request");
    assert!(!dir.path().join(AGENT_KEY_FILE).exists());
    hub.stop().await;
}

#[tokio::test]
async fn impostor_presenting_the_real_ca_certificate_is_refused() {
    // The impostor has its own CA but appends the real (public) CA
    // certificate to its chain: the fingerprint matches, the signature does not.
    let real = CertificateAuthority::generate("real-ca", Validity::days(30)).unwrap();
    let fake = CertificateAuthority::generate("real-ca", Validity::days(30)).unwrap();
    let fake_hub = fake
        .issue_hub("hub", &[], &[LOOPBACK], Validity::days(2))
        .unwrap();
    let chain = format!("{}{}", fake_hub.cert_pem, real.cert_pem());
    let real_fingerprint = ca_fingerprint(&real.cert_der());
    let impostor = Hub::start_with(fake, &chain, &fake_hub.key_pem).await;
    let mut token = impostor.valid_token();
    token.ca_fingerprint = real_fingerprint;
    let dir = tempfile::tempdir().unwrap();
    let err = enroll_in(&impostor, &token, "gpu-06", dir.path())
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::HubCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("man in the middle"), "{err}");
    assert_eq!(impostor.requests(), 0);
    impostor.stop().await;
}

#[tokio::test]
async fn hub_certificate_must_name_the_dialed_host() {
    let hub = Hub::start().await;
    let token = hub.valid_token();
    let dir = tempfile::tempdir().unwrap();
    // The hub certificate names 127.0.0.1 only.
    let by_name = format!("localhost:{}", hub.addr.port());
    let err = tokio::time::timeout(WAIT, enroll(&by_name, &token, "gpu-07", dir.path()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, EnrollError::HubCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("localhost"), "{err}");
    assert_eq!(hub.requests(), 0);
    hub.stop().await;
}

#[tokio::test]
async fn existing_key_is_kept_unless_forced() {
    let hub = Hub::start().await;
    let token = hub.valid_token();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(AGENT_KEY_FILE), "old key").unwrap();
    let err = enroll_in(&hub, &token, "gpu-08", dir.path())
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::Exists { .. }), "{err:?}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(
        hub.requests(),
        0,
        "token spent although nothing could be written"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join(AGENT_KEY_FILE)).unwrap(),
        "old key"
    );

    let options = EnrollOptions {
        force: true,
        name: Some("edge-8".into()),
        ..EnrollOptions::default()
    };
    enroll_with(&token.hub, &token, "gpu-08", dir.path(), &options)
        .await
        .unwrap();
    let key = std::fs::read_to_string(dir.path().join(AGENT_KEY_FILE)).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    hub.stop().await;
}

/// A TLS client that trusts the hub's CA, for sending raw frames.
async fn raw_tls(hub: &Hub) -> TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(hub.authority.ca.cert_der()))
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    let tcp = TcpStream::connect(hub.addr).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(LOOPBACK.into()), tcp)
        .await
        .unwrap()
}

/// Send bytes, then read the one response frame.
async fn raw_exchange(hub: &Hub, bytes: &[u8]) -> EnrollResponse {
    let mut tls = raw_tls(hub).await;
    tls.write_all(bytes).await.unwrap();
    tls.flush().await.unwrap();
    let body = tokio::time::timeout(WAIT, wire::read_frame(&mut tls))
        .await
        .unwrap()
        .unwrap();
    wire::decode_response(&body).unwrap()
}

fn bad_request_code(response: &EnrollResponse) -> &str {
    match response {
        EnrollResponse::Refused { code, .. } => code,
        EnrollResponse::Granted(_) => panic!("granted: {response:?}"),
    }
}

#[tokio::test]
async fn garbage_and_oversize_requests_do_not_stop_the_server() {
    let hub = Hub::start().await;

    // Not TLS at all: the server closes the connection.
    let mut tcp = TcpStream::connect(hub.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut sink))
        .await
        .expect("the server closes a non-TLS connection");

    // A length over the limit is refused before any body is read.
    let oversize = u32::try_from(MAX_FRAME_LEN + 1).unwrap().to_be_bytes();
    let response = raw_exchange(&hub, &oversize).await;
    assert_eq!(bad_request_code(&response), "bad_request");
    let response = raw_exchange(&hub, &u32::MAX.to_be_bytes()).await;
    assert_eq!(bad_request_code(&response), "bad_request");

    // A frame that is not a request.
    let mut junk = 5u32.to_be_bytes().to_vec();
    junk.extend_from_slice(b"\xffjunk");
    assert_eq!(
        bad_request_code(&raw_exchange(&hub, &junk).await),
        "bad_request"
    );

    // A well-formed request with a garbage CSR never reaches the authority.
    let token = hub.valid_token();
    let request = EnrollRequest {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        agent_id: "gpu-09".into(),
        csr_pem: "not a csr".into(),
        name: None,
    };
    let response = raw_exchange(&hub, &wire::encode(&request).unwrap()).await;
    assert_eq!(bad_request_code(&response), "bad_request");

    // A token id that cannot exist never reaches the authority either.
    let request = EnrollRequest {
        token_id: "../../etc".into(),
        ..request
    };
    let response = raw_exchange(&hub, &wire::encode(&request).unwrap()).await;
    assert_eq!(bad_request_code(&response), "unknown_token");

    // A client that says nothing and one that hangs up mid-frame.
    let _idle = TcpStream::connect(hub.addr).await.unwrap();
    let mut cut = raw_tls(&hub).await;
    cut.write_all(&[0, 0, 1, 0, b'{']).await.unwrap();
    drop(cut);

    assert_eq!(hub.requests(), 0);
    // The server still serves a good client, with the token untouched.
    let dir = tempfile::tempdir().unwrap();
    enroll_in(&hub, &token, "gpu-09", dir.path()).await.unwrap();
    assert_eq!(hub.requests(), 1);
    hub.stop().await;
}

#[tokio::test]
async fn csr_asking_for_the_hub_role_still_yields_an_agent_certificate() {
    let hub = Hub::start().await;
    let token = hub.valid_token();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec!["hub.example.org".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, Role::Hub.ou());
    params.distinguished_name.push(DnType::CommonName, "hub");
    let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();
    let request = EnrollRequest {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        agent_id: "gpu-10".into(),
        csr_pem,
        name: None,
    };
    let response = raw_exchange(&hub, &wire::encode(&request).unwrap()).await;
    let grant = response.into_result().unwrap();
    let identity = peer_identity(&cert_der_from_pem(grant.cert_pem.as_bytes()).unwrap()).unwrap();
    assert_eq!(
        (identity.role, identity.id.as_str()),
        (Role::Agent, "gpu-10")
    );
    hub.stop().await;
}

#[tokio::test]
async fn shutdown_drops_idle_connections_at_once() {
    let hub = Hub::start().await;
    let _idle_tcp = TcpStream::connect(hub.addr).await.unwrap();
    let _idle_tls = raw_tls(&hub).await;
    let started = std::time::Instant::now();
    hub.stop().await;
    // Well under READ_TIMEOUT: the connections were cancelled, not timed out.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn concurrent_enrollments_each_succeed_once() {
    let hub = Arc::new(Hub::start().await);
    let dir = tempfile::tempdir().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let token = hub.valid_token();
        let agent_dir = dir.path().join(format!("a{i}"));
        let hub = hub.clone();
        tasks.spawn(async move { enroll_in(&hub, &token, &format!("gpu-{i}"), &agent_dir).await });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(hub.requests(), 8);
    Arc::into_inner(hub).unwrap().stop().await;
}

#[test]
fn join_token_text_round_trips() {
    for hub in [
        "[::1]:7443",
        "[2001:db8::42]:443",
        "10.1.2.3:7443",
        "hub.example.org:7443",
    ] {
        let token = JoinToken::generate(hub, [0x5a; 32]).unwrap();
        let text = token.to_string();
        assert!(text.starts_with("MRG1."), "{text}");
        assert!(!text.contains(char::is_whitespace), "{text}");
        let back: JoinToken = text.parse().unwrap();
        assert_eq!(back, token);
        assert_eq!(back.hub, hub);
        // Pasted with surrounding whitespace.
        assert_eq!(format!("  {text}\n").parse::<JoinToken>().unwrap(), token);
    }
}

#[test]
fn malformed_join_tokens_say_what_is_wrong() {
    let good = JoinToken::generate("[::1]:7443", [1; 32])
        .unwrap()
        .to_string();
    let fp = "01".repeat(32);
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "must start with"),
        ("hello".into(), "must start with"),
        (good.replacen("MRG1", "MRG2", 1), "not supported"),
        ("MRG1.abc123".into(), "secret is missing"),
        (
            "MRG1.abc123.0123456789abcdef".into(),
            "CA fingerprint is missing",
        ),
        (
            format!("MRG1.abc123.0123456789abcdef.{fp}"),
            "hub address is missing",
        ),
        (
            format!("MRG1.ABC123.0123456789abcdef.{fp}.h:1"),
            "id \"ABC123\"",
        ),
        (
            format!("MRG1.abc12.0123456789abcdef.{fp}.h:1"),
            "id \"abc12\"",
        ),
        (format!("MRG1.abc123.short.{fp}.h:1"), "secret is malformed"),
        (
            format!("MRG1.abc123.0123456789ABCDEF.{fp}.h:1"),
            "secret is malformed",
        ),
        (
            "MRG1.abc123.0123456789abcdef.0102.h:1".into(),
            "fingerprint is malformed",
        ),
        (
            format!("MRG1.abc123.0123456789abcdef.{}.h:1", "AB".repeat(32)),
            "fingerprint is malformed",
        ),
        (
            format!("MRG1.abc123.0123456789abcdef.{fp}.hub"),
            "has no port",
        ),
        (
            format!("MRG1.abc123.0123456789abcdef.{fp}.::1:7443"),
            "in brackets",
        ),
        (
            format!("MRG1.abc123.0123456789abcdef.{fp}.h:70000"),
            "invalid port",
        ),
    ];
    for (text, expected) in cases {
        let err: TokenParseError = text.parse::<JoinToken>().unwrap_err();
        let message = err.to_string();
        assert!(message.contains(expected), "{text:?}: {message}");
    }
    // The secret never appears in errors or debug output.
    let token: JoinToken = good.parse().unwrap();
    assert!(!format!("{token:?}").contains(&token.secret));
}
