//! The data directory: created with everything the hub needs on first start, loaded after.
//!
//! ```text
//! DIR/pki/ca.pem, ca.key (0600)      the deployment's CA (morag-certs)
//! DIR/pki/hub.pem, hub.key (0600)    the hub's certificate, re-issued on every start so its
//!                                    names follow the configuration
//! DIR/pki/crl.pem                    revoked agent certificates
//! DIR/hub.db                         jobs, attempts, events, agents, join tokens
//! DIR/store/                         content by BLAKE3 (inputs and artifacts)
//! DIR/uploads/                       uploads in flight
//! DIR/api-token (0600)               the bearer token of the HTTP API
//! DIR/store-url (0600)               the PostgreSQL URL it serves with (absent on SQLite)
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use morag_certs::{CertificateAuthority, RevocationList, Validity};
use morag_transport::Credentials;
use sha2::Digest;

use crate::config::HubConfig;

/// What the hub loaded from its data directory.
pub struct DataDir {
    pub ca: CertificateAuthority,
    pub credentials: Credentials,
    pub revocations: RevocationList,
    pub api_token: String,
    /// SHA-256 of the CA certificate (DER): agents pin it.
    pub ca_fingerprint: [u8; 32],
    pub hub_cert_pem: String,
    pub hub_key_pem: String,
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir")
            .field("ca_fingerprint", &hex::encode(self.ca_fingerprint))
            .finish_non_exhaustive()
    }
}

/// `sha256:<hex>` of a CA fingerprint.
pub fn fingerprint_text(fp: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(fp))
}

/// `DATA/store-quota`: the content store's default quota, decided at the first start.
pub const STORE_QUOTA_FILE: &str = "store-quota";

/// The content store's quota when `max_store_bytes` is not set: read from `DATA/store-quota`,
/// or (first start) what the store holds plus 80 % of the free space of its file system,
/// written there so that it does not shrink as the store fills.
pub fn default_store_quota(config: &HubConfig) -> anyhow::Result<u64> {
    let file = config.data.join(STORE_QUOTA_FILE);
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Ok(n) = text.trim().parse::<u64>() {
            return Ok(n);
        }
        tracing::warn!(file = %file.display(), "unreadable store quota: deciding it again");
    }
    let dir = config.store_dir();
    let st = rustix::fs::statvfs(&dir)
        .with_context(|| format!("measuring the free space of {}", dir.display()))?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    // What the store holds already counts in (an upgraded hub must not start over its quota).
    let held = morag_transport::ContentStore::open(&dir)
        .and_then(|c| c.usage())
        .unwrap_or(0);
    let quota = held.saturating_add(free / 5 * 4);
    std::fs::write(&file, format!("{quota}\n"))
        .with_context(|| format!("writing {}", file.display()))?;
    tracing::info!(bytes = quota, held, file = %file.display(), "content store quota set to what it holds plus 80 % of the free space (set max_store_bytes to change it)");
    Ok(quota)
}

/// Remove uploads a crash left behind (nothing is in flight before the hub serves).
fn sweep_uploads(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file())
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, dir = %dir.display(), "removed uploads left by an earlier run");
    }
}

/// Create or load the data directory.
pub fn prepare(config: &HubConfig) -> anyhow::Result<DataDir> {
    let pki = config.pki_dir();
    for dir in [&config.data, &config.store_dir(), &config.uploads_dir()] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
    }
    sweep_uploads(&config.uploads_dir());
    let ca = if pki.join(morag_certs::CA_CERT_FILE).exists() {
        CertificateAuthority::load(&pki)
            .with_context(|| format!("loading the CA in {}", pki.display()))?
    } else {
        let ca = CertificateAuthority::generate(morag_certs::DEFAULT_CA_NAME, Validity::days(3650))
            .context("generating the deployment CA")?;
        ca.save(&pki, false)
            .with_context(|| format!("saving the CA in {}", pki.display()))?;
        tracing::info!(dir = %pki.display(), "created the deployment CA");
        ca
    };
    let (dns, ips) = hub_names(config);
    let hub = ca
        .issue_hub(&config.name, &dns, &ips, Validity::days(365))
        .context("issuing the hub certificate")?;
    hub.write(&pki, "hub", true)
        .with_context(|| format!("writing the hub certificate in {}", pki.display()))?;
    let (_, revocations) = ca.write_crl(&pki).context("writing the revocation list")?;
    let api_token = api_token(&config.token_path())?;
    let ca_fingerprint: [u8; 32] = sha2::Sha256::digest(ca.cert_der()).into();
    Ok(DataDir {
        credentials: Credentials {
            cert_chain_pem: hub.cert_pem.clone(),
            key_pem: hub.key_pem.clone(),
            ca_pem: ca.cert_pem().to_string(),
        },
        hub_cert_pem: hub.cert_pem.clone(),
        hub_key_pem: hub.key_pem.clone(),
        ca,
        revocations,
        api_token,
        ca_fingerprint,
    })
}

/// DNS names and IPs the hub certificate is valid for: loopback, this host's name, the
/// configured names, the listen and advertised addresses.
fn hub_names(config: &HubConfig) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec!["localhost".to_string(), config.name.clone()];
    let mut ips: Vec<IpAddr> = vec!["127.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            dns.push(h.to_string());
        }
    }
    dns.extend(config.dns_names.iter().cloned());
    ips.extend(config.ips.iter().copied());
    if !config.quic.ip().is_unspecified() {
        ips.push(config.quic.ip());
    }
    if let Some(adv) = &config.advertise {
        let host = host_of(adv);
        match host.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(host.to_string()),
        }
    }
    dns.sort();
    dns.dedup();
    dns.retain(|d| morag_certs::validate_id(d).is_ok() || d.contains('.'));
    ips.sort();
    ips.dedup();
    (dns, ips)
}

/// The host part of `host:port` (IPv6 brackets removed).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Read the API token, or create it (mode 0600) on first start.
fn api_token(path: &Path) -> anyhow::Result<String> {
    if path.exists() {
        let t = std::fs::read_to_string(path)
            .with_context(|| format!("reading the API token {}", path.display()))?;
        let t = t.trim().to_string();
        anyhow::ensure!(
            !t.is_empty(),
            "the API token file {} is empty",
            path.display()
        );
        return Ok(t);
    }
    let token = format!("mh_{}", hex::encode(rand::random::<[u8; 24]>()));
    write_private(path, &token)?;
    Ok(token)
}

/// Write a file only its owner can read.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_and_second_loads_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let config = HubConfig {
            data: dir.path().join("hub"),
            ..Default::default()
        };
        let a = prepare(&config).unwrap();
        let b = prepare(&config).unwrap();
        assert_eq!(a.ca_fingerprint, b.ca_fingerprint);
        assert_eq!(a.api_token, b.api_token);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(config.token_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(host_of("[::1]:7400"), "::1");
        assert_eq!(host_of("hub.example:7400"), "hub.example");
    }
}
