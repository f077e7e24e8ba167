//! Command-line interface: argument types and one function per command.
//! Output goes to the given writer so that tests can capture it.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use morag_certs::{
    cert_der_from_pem, parse_serial_hex, peer_identity, CertificateAuthority, Validity,
    DEFAULT_CA_NAME,
};

/// Certificate authority for a MoRAG deployment.
#[derive(Debug, Parser)]
#[command(name = "morag-certs", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new CA in DIR (ca.pem, ca.key, revoked.txt, crl.pem).
    Init {
        #[command(flatten)]
        ca: CaDir,
        /// The CA's name (certificate CN).
        #[arg(long, default_value = DEFAULT_CA_NAME)]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace an existing CA (certificates it issued stop verifying).
        #[arg(long)]
        force: bool,
    },
    /// Issue a hub certificate: writes hub-NAME.pem and hub-NAME.key.
    IssueHub {
        #[command(flatten)]
        ca: CaDir,
        /// Hub name (certificate CN): 1-64 of A-Z a-z 0-9 . _ -
        #[arg(long)]
        name: String,
        /// DNS name agents use to reach the hub (repeatable; default: NAME).
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// IP address agents use to reach the hub (repeatable).
        #[arg(long = "ip", value_name = "IP")]
        ip: Vec<IpAddr>,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Issue an agent certificate: writes agent-ID.pem and agent-ID.key.
    IssueAgent {
        #[command(flatten)]
        ca: CaDir,
        /// Agent id (certificate CN): 1-64 of A-Z a-z 0-9 . _ -
        #[arg(long)]
        id: String,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Revoke certificates: updates DIR/revoked.txt and writes DIR/crl.pem.
    #[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["cert", "serial"])))]
    Revoke {
        #[command(flatten)]
        ca: CaDir,
        /// Certificate file (PEM) to revoke (repeatable).
        #[arg(long = "cert", value_name = "FILE")]
        cert: Vec<PathBuf>,
        /// Serial to revoke, hex as `show` prints it (repeatable).
        #[arg(long = "serial", value_name = "HEX")]
        serial: Vec<String>,
    },
    /// Re-sign the current CRL into DIR/crl.pem (e.g. before it expires).
    Crl {
        #[command(flatten)]
        ca: CaDir,
    },
    /// Print a certificate's role, id, serial and expiry.
    Show {
        /// Certificate file (PEM).
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct CaDir {
    /// CA directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct OutArgs {
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Output directory (default: the CA directory).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

/// Run one command, printing what it wrote to `stdout`.
pub fn run(cli: Cli, stdout: &mut impl Write) -> Result<()> {
    match cli.command {
        Command::Init {
            ca,
            name,
            days,
            force,
        } => init(&ca.dir, &name, days, force, stdout),
        Command::IssueHub {
            ca,
            name,
            dns,
            ip,
            out,
        } => {
            let authority = load(&ca.dir)?;
            let issued = authority
                .issue_hub(&name, &dns, &ip, validity(out.days)?)
                .with_context(|| format!("cannot issue a certificate for hub {name:?}"))?;
            let dir = out.out.as_deref().unwrap_or(&ca.dir);
            let (cert, key) = issued.write(dir, &format!("hub-{name}"), out.force)?;
            wrote(stdout, &cert, &key, &issued.serial_hex())
        }
        Command::IssueAgent { ca, id, out } => {
            let authority = load(&ca.dir)?;
            let issued = authority
                .issue_agent(&id, validity(out.days)?)
                .with_context(|| format!("cannot issue a certificate for agent {id:?}"))?;
            let dir = out.out.as_deref().unwrap_or(&ca.dir);
            let (cert, key) = issued.write(dir, &format!("agent-{id}"), out.force)?;
            wrote(stdout, &cert, &key, &issued.serial_hex())
        }
        Command::Revoke { ca, cert, serial } => revoke(&ca.dir, &cert, &serial, stdout),
        Command::Crl { ca } => {
            let authority = load(&ca.dir)?;
            let (path, list) = authority.write_crl(&ca.dir)?;
            writeln!(
                stdout,
                "wrote {} (crl number {}, {} revoked)",
                path.display(),
                authority.crl_number(),
                list.len()
            )?;
            Ok(())
        }
        Command::Show { file } => show(&file, stdout),
    }
}

fn init(dir: &Path, name: &str, days: u32, force: bool, stdout: &mut impl Write) -> Result<()> {
    let ca =
        CertificateAuthority::generate(name, validity(days)?).context("cannot create the CA")?;
    ca.save(dir, force)?;
    let (crl, _) = ca.write_crl(dir)?;
    for file in [
        morag_certs::CA_CERT_FILE,
        morag_certs::CA_KEY_FILE,
        morag_certs::REVOKED_FILE,
    ] {
        writeln!(stdout, "wrote {}", dir.join(file).display())?;
    }
    writeln!(stdout, "wrote {}", crl.display())?;
    Ok(())
}

fn revoke(
    dir: &Path,
    certs: &[PathBuf],
    serials: &[String],
    stdout: &mut impl Write,
) -> Result<()> {
    let mut ca = load(dir)?;
    let mut to_revoke = Vec::new();
    for path in certs {
        let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let der = cert_der_from_pem(&pem).with_context(|| format!("{}", path.display()))?;
        let serial = ca
            .issued_serial(&der)
            .with_context(|| format!("cannot revoke {}", path.display()))?;
        to_revoke.push(serial);
    }
    for text in serials {
        to_revoke.push(parse_serial_hex(text).map_err(anyhow::Error::msg)?);
    }
    let list = ca.revoke(&to_revoke)?;
    ca.save_revocation_state(dir)?;
    let (crl, _) = ca.write_crl(dir)?;
    for serial in &to_revoke {
        writeln!(
            stdout,
            "revoked {}",
            hex::encode(morag_certs::normalize_serial(serial))
        )?;
    }
    writeln!(
        stdout,
        "wrote {}",
        dir.join(morag_certs::REVOKED_FILE).display()
    )?;
    writeln!(
        stdout,
        "wrote {} (crl number {}, {} revoked)",
        crl.display(),
        ca.crl_number(),
        list.len()
    )?;
    Ok(())
}

fn show(file: &Path, stdout: &mut impl Write) -> Result<()> {
    let pem = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let der = cert_der_from_pem(&pem).with_context(|| format!("{}", file.display()))?;
    let id = peer_identity(&der).with_context(|| format!("{}", file.display()))?;
    let not_after = match id.not_after.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let when = time::OffsetDateTime::from_unix_timestamp(not_after)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix {not_after}"));
    let expired = if id.not_after < SystemTime::now() {
        " (expired)"
    } else {
        ""
    };
    writeln!(stdout, "role: {}", id.role)?;
    writeln!(stdout, "id: {}", id.id)?;
    writeln!(stdout, "serial: {}", id.serial_hex())?;
    writeln!(stdout, "not_after: {when}{expired}")?;
    Ok(())
}

fn load(dir: &Path) -> Result<CertificateAuthority> {
    Ok(CertificateAuthority::load(dir)?)
}

fn validity(days: u32) -> Result<Validity> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    Ok(Validity::days(days))
}

fn wrote(stdout: &mut impl Write, cert: &Path, key: &Path, serial: &str) -> Result<()> {
    writeln!(stdout, "wrote {} (serial {serial})", cert.display())?;
    writeln!(stdout, "wrote {}", key.display())?;
    Ok(())
}
