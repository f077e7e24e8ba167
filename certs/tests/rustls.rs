//! rustls (the transport's TLS stack) accepts what the CA issues and honours
//! its CRL.

use std::sync::Arc;
use std::time::Duration;

use morag_certs::{CertificateAuthority, Validity};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};

fn now() -> UnixTime {
    UnixTime::now()
}

#[test]
fn rustls_verifies_issued_certificates_and_honours_the_crl() {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut ca = CertificateAuthority::generate("rustls-test-ca", Validity::days(30)).unwrap();
    let hub = ca
        .issue_hub(
            "hub1",
            &["hub.example.org".into()],
            &["127.0.0.1".parse().unwrap()],
            Validity::days(1),
        )
        .unwrap();
    let good = ca.issue_agent("good", Validity::days(1)).unwrap();
    let bad = ca.issue_agent("bad", Validity::days(1)).unwrap();
    let expired = ca.issue_agent("old", Validity::expired()).unwrap();
    let crl = ca.revoke(std::slice::from_ref(&bad.serial)).unwrap();

    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.cert_der())).unwrap();
    let roots = Arc::new(roots);

    // The hub's view: client certificates checked against the CA and the CRL.
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls([CertificateRevocationListDer::from(
                crl.der().unwrap().to_vec(),
            )])
            .build()
            .unwrap();
    let verify_client =
        |der: Vec<u8>| client_verifier.verify_client_cert(&CertificateDer::from(der), &[], now());
    verify_client(good.cert_der()).expect("agent certificate accepted");
    verify_client(hub.cert_der()).expect("hub certificate is also a client certificate");
    let err = verify_client(bad.cert_der()).unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
        ),
        "{err:?}"
    );
    let err = verify_client(expired.cert_der()).unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
                | rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ExpiredContext { .. }
                )
        ),
        "{err:?}"
    );

    // A certificate from another CA is refused.
    let stranger = CertificateAuthority::generate("other", Validity::days(30))
        .unwrap()
        .issue_agent("good", Validity::days(1))
        .unwrap();
    assert!(verify_client(stranger.cert_der()).is_err());

    // The agent's view: the hub's certificate for its DNS name and IP.
    let server_verifier =
        WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .unwrap();
    let hub_der = CertificateDer::from(hub.cert_der());
    for name in ["hub.example.org", "127.0.0.1"] {
        let name = ServerName::try_from(name).unwrap();
        server_verifier
            .verify_server_cert(&hub_der, &[], &name, &[], now())
            .unwrap_or_else(|e| panic!("hub rejected for {name:?}: {e:?}"));
    }
    let wrong = ServerName::try_from("other.example.org").unwrap();
    assert!(server_verifier
        .verify_server_cert(&hub_der, &[], &wrong, &[], now())
        .is_err());

    // An agent can serve too, under <id>.agent.morag.
    let agent_name = ServerName::try_from("good.agent.morag").unwrap();
    server_verifier
        .verify_server_cert(
            &CertificateDer::from(good.cert_der()),
            &[],
            &agent_name,
            &[],
            now(),
        )
        .expect("agent certificate accepted as a server certificate");

    // Once expired, the hub certificate is refused.
    let later = UnixTime::since_unix_epoch(
        now()
            .as_secs()
            .checked_add(Duration::from_secs(3 * 24 * 3600).as_secs())
            .map(Duration::from_secs)
            .unwrap(),
    );
    assert!(server_verifier
        .verify_server_cert(
            &hub_der,
            &[],
            &ServerName::try_from("hub.example.org").unwrap(),
            &[],
            later
        )
        .is_err());
}
