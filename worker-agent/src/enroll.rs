//! `morag-agent enroll`: trade a join token for this machine's certificate. The key is made
//! here and never leaves the machine; the hub is verified by the CA fingerprint the token
//! carries before the token's secret is sent.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use morag_certs::enroll::{enroll_with, EnrollOptions, JoinToken};

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The join token (`morag-hub token create` prints it). A token on the command line is
    /// visible to every user in `ps`: prefer --token-file or MORAG_REMOTE_JOIN_TOKEN.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Read the join token from this file [env MORAG_REMOTE_JOIN_TOKEN_FILE].
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// The hub's address [default: the one in the token].
    #[arg(long, value_name = "HOST:PORT")]
    pub hub: Option<String>,
    /// Where to keep the key, certificate and CA [default: ./morag-agent].
    #[arg(long, value_name = "DIR", default_value = "morag-agent")]
    pub dir: PathBuf,
    /// This agent's id; the hub refuses one it has issued before [default: the host name and a
    /// random suffix, printed].
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// A display name sent to the hub [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Replace an existing key and certificate.
    #[arg(long)]
    pub force: bool,
}

/// A new agent id: the host name (lowercase, characters outside `[a-z0-9-]` replaced) and a
/// random suffix, so that two agents enrolled on one host without `--id` do not share an id.
fn default_id() -> String {
    let suffix: u32 = rand::random::<u32>() & 0xff_ffff;
    format!("{}-{suffix:06x}", host_id())
}

/// The host name as an id part.
fn host_id() -> String {
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
    // Room for the suffix within the id's limit.
    let id: String = id.trim_matches('-').chars().take(48).collect();
    let id = id.trim_end_matches('-').to_string();
    if morag_certs::validate_id(&id).is_ok() {
        id
    } else {
        "agent".to_string()
    }
}

/// The join token from the flag, the file, or the environment (in that order); a token given
/// as a flag draws a warning, since any user of the machine can read it in `ps`.
pub fn token_from(
    flag: Option<&str>,
    file: Option<&std::path::Path>,
    flag_name: &str,
) -> anyhow::Result<Option<String>> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let Some(t) = flag {
        tracing::warn!(
            "{flag_name} on the command line is visible to every user of this machine in `ps`; \
             prefer {flag_name}-file or the MORAG_REMOTE_JOIN_TOKEN environment variable"
        );
        return Ok(Some(t.trim().to_string()));
    }
    let file = file
        .map(std::path::Path::to_path_buf)
        .or_else(|| env("MORAG_REMOTE_JOIN_TOKEN_FILE").map(PathBuf::from));
    if let Some(p) = file {
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("reading the join token from {}", p.display()))?;
        return Ok(Some(text.trim().to_string()));
    }
    Ok(env("MORAG_REMOTE_JOIN_TOKEN").map(|t| t.trim().to_string()))
}

pub fn run(args: EnrollArgs) -> anyhow::Result<()> {
    let text = token_from(args.token.as_deref(), args.token_file.as_deref(), "--token")?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no join token: give --token-file PATH, MORAG_REMOTE_JOIN_TOKEN, or --token"
            )
        })?;
    run_with_token(&text, &args)
}

/// Enroll with the join token `text` (already read from wherever it was given).
pub fn run_with_token(text: &str, args: &EnrollArgs) -> anyhow::Result<()> {
    let token: JoinToken = text
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("join token: {e}"))?;
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
