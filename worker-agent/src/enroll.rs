//! `morag-agent enroll`: trade a join token for this machine's certificate. The key is made
//! here and never leaves the machine; the hub is verified by the CA fingerprint the token
//! carries before the token's secret is sent.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use morag_certs::enroll::{enroll_with, EnrollOptions, JoinToken};

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The join token (`morag-hub token create` prints it).
    #[arg(long, value_name = "TOKEN")]
    pub token: String,
    /// The hub's address [default: the one in the token].
    #[arg(long, value_name = "HOST:PORT")]
    pub hub: Option<String>,
    /// Where to keep the key, certificate and CA [default: ./morag-agent].
    #[arg(long, value_name = "DIR", default_value = "morag-agent")]
    pub dir: PathBuf,
    /// This agent's id [default: the host name].
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// A display name sent to the hub [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Replace an existing key and certificate.
    #[arg(long)]
    pub force: bool,
}

/// The host name as an agent id: lowercase, characters outside `[a-z0-9-]` replaced.
fn default_id() -> String {
    let host = sysinfo::System::host_name()
        .ok()
        .unwrap_or_default()
        .to_lowercase();
    let id: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let id = id.trim_matches('-').to_string();
    if morag_certs::validate_id(&id).is_ok() {
        id
    } else {
        "agent".to_string()
    }
}

pub fn run(args: EnrollArgs) -> anyhow::Result<()> {
    let token: JoinToken = args
        .token
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("--token: {e}"))?;
    let hub = args.hub.clone().unwrap_or_else(|| token.hub.clone());
    let id = args.id.clone().unwrap_or_else(default_id);
    morag_certs::validate_id(&id).map_err(|e| anyhow::anyhow!("--id {id:?}: {e}"))?;
    let options = EnrollOptions {
        force: args.force,
        name: args
            .name
            .clone()
            .or_else(|| sysinfo::System::host_name().ok()),
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let enrolled = runtime
        .block_on(enroll_with(&hub, &token, &id, &args.dir, &options))
        .with_context(|| format!("enrolling with the hub at {hub}"))?;
    // `serve --dir DIR` finds the hub here.
    std::fs::write(args.dir.join("hub"), format!("{hub}\n"))
        .with_context(|| format!("writing {}", args.dir.join("hub").display()))?;
    println!("enrolled as {} with the hub at {hub}", enrolled.identity.id);
    println!("  certificate: {}", enrolled.cert_path.display());
    println!(
        "  key:         {} (never leaves this machine)",
        enrolled.key_path.display()
    );
    println!(
        "  start:       morag-agent serve --dir {}",
        args.dir.display()
    );
    Ok(())
}
