//! The `morag-hub` command line: `serve`, `token create`, and the client commands that talk to
//! the HTTP API (`submit`, `jobs`, `job`, `cancel`, `workers`, `drain`).
//!
//! Exit codes: 0 success; 1 failure (a job that ended other than completed, an API error);
//! 64 bad flags or configuration (the message names the field); 69 the hub cannot be reached.

pub mod client;
mod follow;
mod submit;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, HubConfig};
pub use client::ApiClient;

#[derive(Debug, Parser)]
#[command(
    name = "morag-hub",
    version,
    about = "The MoRAG hub: queues media jobs and dispatches them to edge agents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log as JSON lines on stderr (filter with RUST_LOG).
    #[arg(long, global = true)]
    pub log_json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub.
    Serve(ServeArgs),
    /// Join tokens for enrolling agents.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Submit a media file as a job.
    Submit(submit::SubmitArgs),
    /// Exit 0 when the hub answers /healthz with "ok", else say why and exit 1 (a container's
    /// or a monitor's health check; needs no token).
    Healthcheck {
        /// Hub URL [env MORAG_HUB_URL; default: DIR/hub-url].
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// The hub's data directory [env MORAG_HUB_DATA; default: ./morag-hub].
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
    /// List jobs.
    Jobs {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show one job.
    Job {
        id: String,
        /// Follow it until it ends: progress, and the transcript as it is decoded.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancel a job.
    Cancel {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List agents.
    Workers {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke every certificate of an agent: each hub on the database closes its session within
    /// a second, re-dispatches its work and refuses it from then on (0-RTT included).
    Revoke {
        agent: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// An agent's policy: what it may serve, whatever it claims.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Stop giving an agent new work (running jobs finish); --undo to resume.
    Drain {
        agent: String,
        #[arg(long)]
        undo: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./morag-hub].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// QUIC listen address for agents [default: 0.0.0.0:7400].
    #[arg(long, value_name = "ADDR")]
    pub quic: Option<String>,
    /// HTTP listen address for the API [default: 127.0.0.1:7480].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// host:port agents dial (put in join tokens).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// The database: `sqlite` (embedded, the default) or a `postgres://` URL several hubs
    /// share.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// The content store directory (shared by hubs on one database) [default: DATA/store].
    #[arg(long, value_name = "DIR")]
    pub content_dir: Option<String>,
    /// A directory whose files submissions may name by `source_file_path` (repeat for more;
    /// replaces `input_dirs` from the file and the environment) [default: none].
    #[arg(long = "input-dir", value_name = "DIR")]
    pub input_dirs: Vec<String>,
    /// Any other setting as key=value (see docs/api.md for the keys).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a single-use join token; prints it alone on the last line.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// How long the token stays valid [default: 1h].
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// host:port agents dial [default: the address the hub advertises].
        #[arg(long, value_name = "HOST:PORT")]
        hub: Option<String>,
        /// Make the token re-issue this existing agent id (a replaced machine, a lost key): its
        /// old certificates are revoked when the new one is issued. Without it, an id that was
        /// issued before is refused.
        #[arg(long, value_name = "AGENT")]
        replace: Option<String>,
        #[command(flatten)]
        policy: PolicyArgs,
    },
}

/// What an agent may serve (unset: the default, see docs/operations.md "Security model").
#[derive(Debug, Args, Default)]
pub struct PolicyArgs {
    /// Queues it may serve, comma-separated, or `any`.
    #[arg(long, value_name = "Q1,Q2")]
    pub queues: Option<String>,
    /// Content types it may take (audio, video, image), or `any`.
    #[arg(long, value_name = "T1,T2")]
    pub content_types: Option<String>,
    /// The most it counts as: cpu, gpu or hybrid (`any`: as it reports).
    #[arg(long, value_name = "CAPABILITY")]
    pub capability: Option<String>,
    /// Jobs it may run at once (`default`: its GPUs, 1 to 8).
    #[arg(long, value_name = "N")]
    pub max_concurrent: Option<String>,
}

impl PolicyArgs {
    fn is_empty(&self) -> bool {
        self.queues.is_none()
            && self.content_types.is_none()
            && self.capability.is_none()
            && self.max_concurrent.is_none()
    }

    /// `base` with the fields given here changed.
    fn apply(
        &self,
        mut base: crate::policy::AgentPolicy,
    ) -> Result<crate::policy::AgentPolicy, Exit> {
        use crate::policy::parse_list;
        if let Some(q) = &self.queues {
            base.queues = parse_list(q);
        }
        if let Some(t) = &self.content_types {
            base.content_types = parse_list(t);
        }
        if let Some(c) = &self.capability {
            base.capability =
                (c.trim() != "any" && !c.trim().is_empty()).then(|| c.trim().to_string());
        }
        if let Some(n) = &self.max_concurrent {
            base.max_concurrent = match n.trim() {
                "default" | "" => None,
                v => Some(v.parse().map_err(|_| Exit {
                    code: 64,
                    message: format!("--max-concurrent {v:?}: expected a number or default"),
                })?),
            };
        }
        base.validate().map_err(|e| Exit {
            code: 64,
            message: e,
        })?;
        Ok(base)
    }
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Change what an agent may serve (the fields given; the others stay). Every hub on the
    /// database applies it within a second, to a connected agent too.
    Set {
        agent: String,
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Where the hub's database is, for the commands that write it directly.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Data directory of the hub [default: ./morag-hub].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The hubs' database [default: the one the hub in DATA last served with].
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}

/// An agent id as the command line names it (exit 64 when it cannot be one).
fn check_agent_id(agent: &str) -> Result<(), Exit> {
    morag_certs::validate_id(agent).map_err(|e| Exit {
        code: 64,
        message: format!("agent {agent:?}: {e}"),
    })
}

impl StoreArgs {
    fn load(&self) -> Result<HubConfig, Exit> {
        let mut overrides = Vec::new();
        if let Some(d) = &self.data {
            overrides.push(("data", d.display().to_string(), "--data".to_string()));
        }
        if let Some(s) = &self.store {
            overrides.push(("store", s.clone(), "--store".to_string()));
        }
        load_config(self.config.as_deref(), &overrides)
    }
}

/// Where the HTTP API is and how to authenticate.
#[derive(Debug, Args, Clone)]
pub struct ApiArgs {
    /// Hub URL [env MORAG_HUB_URL; default: from the data directory].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// API token [env MORAG_HUB_TOKEN; default: DIR/api-token].
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// The hub's data directory, to read the URL and token from [default: ./morag-hub].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// Set up tracing on stderr; `RUST_LOG` filters (default: info from the hub, warnings else).
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,morag_hub=info,morag_transport=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl From<ConfigError> for Exit {
    fn from(e: ConfigError) -> Self {
        Self {
            code: 64,
            message: e.to_string(),
        }
    }
}

impl From<anyhow::Error> for Exit {
    fn from(e: anyhow::Error) -> Self {
        let code = if e.downcast_ref::<client::Unreachable>().is_some() {
            69
        } else if e.downcast_ref::<ConfigError>().is_some() {
            64
        } else {
            1
        };
        let mut message = String::new();
        for cause in e.chain() {
            let text = cause.to_string();
            if message.contains(&text) {
                continue;
            }
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
        Self { code, message }
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => 64,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_tracing(cli.log_json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("morag-hub: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("morag-hub: error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// Load the configuration: defaults, file, environment, then the given overrides.
pub fn load_config(
    file: Option<&std::path::Path>,
    overrides: &[(&str, String, String)],
) -> Result<HubConfig, Exit> {
    let mut config = HubConfig::default();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| Exit {
            code: 64,
            message: format!("--config {}: {e}", path.display()),
        })?;
        config.apply_toml(&text, &path.display().to_string())?;
    }
    config.apply_env(|k| std::env::var(k).ok())?;
    for (key, value, field) in overrides {
        config.set(key, value, field)?;
    }
    Ok(config)
}

async fn run(cli: Cli) -> Result<u8, Exit> {
    match cli.command {
        Command::Serve(args) => {
            let mut overrides = Vec::new();
            if let Some(d) = &args.data {
                overrides.push(("data", d.display().to_string(), "--data".to_string()));
            }
            for (key, v) in [
                ("quic", &args.quic),
                ("http", &args.http),
                ("advertise", &args.advertise),
                ("store", &args.store),
                ("content_dir", &args.content_dir),
            ] {
                if let Some(v) = v {
                    overrides.push((key, v.clone(), format!("--{key}")));
                }
            }
            if !args.input_dirs.is_empty() {
                overrides.push((
                    "input_dirs",
                    args.input_dirs.join(","),
                    "--input-dir".to_string(),
                ));
            }
            let mut sets = Vec::new();
            for kv in &args.set {
                let (k, v) = kv.split_once('=').ok_or_else(|| Exit {
                    code: 64,
                    message: format!("--set {kv:?}: expected key=value"),
                })?;
                sets.push((k.trim().to_string(), v.to_string()));
            }
            let mut config = load_config(args.config.as_deref(), &overrides)?;
            for (k, v) in &sets {
                config.set(k, v, &format!("--set {k}"))?;
            }
            if cli.log_json {
                config.log_json = true;
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(signals(shutdown.clone()));
            crate::server::run(config, shutdown).await?;
            Ok(0)
        }
        Command::Token(TokenCommand::Create {
            store,
            ttl,
            hub,
            replace,
            policy,
        }) => {
            let config = store.load()?;
            let policy = if policy.is_empty() {
                None
            } else {
                Some(policy.apply(Default::default())?)
            };
            let ttl = match ttl {
                Some(t) => crate::config::parse_duration("--ttl", &t)?,
                None => config.token_ttl,
            };
            let token = crate::enroll::create_token(
                &config,
                ttl,
                hub.as_deref(),
                replace.as_deref(),
                policy.as_ref(),
            )
            .await?;
            println!(
                "join token for {} (single use, valid for {}):",
                token.hub(),
                humantime::format_duration(ttl)
            );
            if let Some(id) = &replace {
                println!("  it re-issues the agent id {id}; its old certificates are revoked when the new one is issued");
                println!("  on the agent: morag-agent enroll --id {id} --token-file <a file holding the token below>");
            } else {
                println!("  on the agent: morag-agent enroll --token-file <a file holding the token below>");
            }
            println!("{token}");
            Ok(0)
        }
        Command::Revoke { agent, store } => {
            check_agent_id(&agent)?;
            let config = store.load()?;
            match crate::enroll::revoke_agent(&config, &agent).await? {
                None => Err(Exit {
                    code: 1,
                    message: format!(
                        "no agent {agent:?} was ever enrolled or registered with the hubs on this database"
                    ),
                }),
                Some(n) => {
                    println!("revoked {agent} ({n} certificate(s) now): every hub on this database closes its session and refuses it within a second");
                    Ok(0)
                }
            }
        }
        Command::Agent(AgentCommand::Set {
            agent,
            policy,
            store,
        }) => {
            check_agent_id(&agent)?;
            let config = store.load()?;
            use crate::store::Store;
            let db = crate::enroll::open_store(&config).await?;
            let current = db
                .agent_policies()
                .await
                .map_err(anyhow::Error::from)?
                .into_iter()
                .find(|(id, _)| *id == agent)
                .map(|(_, p)| p)
                .unwrap_or_default();
            let new = policy.apply(current)?;
            db.set_agent_policy(&agent, &new, morag_transport::unix_ms())
                .await
                .map_err(anyhow::Error::from)?;
            println!(
                "policy of {agent}: {}",
                serde_json::to_string(&new).unwrap_or_default()
            );
            Ok(0)
        }
        Command::Submit(args) => Ok(submit::run(args).await?),
        Command::Jobs {
            state,
            queue,
            limit,
            api,
        } => {
            let c = ApiClient::from_args(&api)?;
            let mut q = vec![("limit".to_string(), limit.to_string())];
            if let Some(s) = state {
                q.push(("state".into(), s));
            }
            if let Some(s) = queue {
                q.push(("queue".into(), s));
            }
            let v = c.get_json("/api/v1/jobs", &q).await?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!(
                    "{:<37} {:<10} {:<6} {:<13} {:>6}  INPUT",
                    "ID", "STATE", "TYPE", "QUEUE", "DONE"
                );
                for j in v["jobs"].as_array().into_iter().flatten() {
                    println!(
                        "{:<37} {:<10} {:<6} {:<13} {:>5.0}%  {}",
                        j["id"].as_str().unwrap_or(""),
                        j["state"].as_str().unwrap_or(""),
                        j["content_type"].as_str().unwrap_or(""),
                        j["queue"].as_str().unwrap_or(""),
                        j["progress"]["percent"].as_f64().unwrap_or(0.0),
                        j["input"]["name"].as_str().unwrap_or(""),
                    );
                }
            }
            Ok(0)
        }
        Command::Job { id, follow, api } => {
            let c = ApiClient::from_args(&api)?;
            let v = if follow {
                follow::follow(&c, &id, api.json).await?
            } else {
                c.get_json(&format!("/api/v1/jobs/{id}"), &[]).await?
            };
            if api.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                submit::print_job(&v);
            }
            Ok(0)
        }
        Command::Cancel { id, api } => {
            let c = ApiClient::from_args(&api)?;
            let v = c
                .post_json(&format!("/api/v1/jobs/{id}/cancel"), &serde_json::json!({}))
                .await?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!(
                    "{}: {} ({})",
                    id,
                    v["state"].as_str().unwrap_or("?"),
                    v["cancel"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
        Command::Healthcheck { url, data } => {
            let url = client::base_url(url, data)?;
            let answer = reqwest::Client::new()
                .get(format!("{}/healthz", url.trim_end_matches('/')))
                .timeout(std::time::Duration::from_secs(5))
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("no answer from the hub at {url}: {e}"))?;
            let status = answer.status();
            let v: serde_json::Value = answer.json().await.unwrap_or_default();
            if status.is_success() && v["status"] == "ok" {
                println!(
                    "healthy: hub {} at {url}, {} agents connected",
                    v["version"].as_str().unwrap_or("?"),
                    v["agents_connected"]
                );
                Ok(0)
            } else {
                eprintln!("morag-hub: unhealthy: {url}/healthz answered {status}: {v}");
                Ok(1)
            }
        }
        Command::Workers { api } => {
            let c = ApiClient::from_args(&api)?;
            let v = c.get_json("/api/v1/agents", &[]).await?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!(
                    "{:<20} {:<7} {:<9} {:<8} {:>7}  QUEUES",
                    "ID", "CAP", "CONNECTED", "HEALTHY", "RUNNING"
                );
                for a in v["agents"].as_array().into_iter().flatten() {
                    let mut state = a["connected"].as_bool().unwrap_or(false).to_string();
                    if a["drained"].as_bool().unwrap_or(false) {
                        state.push_str(",drained");
                    }
                    println!(
                        "{:<20} {:<7} {:<9} {:<8} {:>7}  {}",
                        a["id"].as_str().unwrap_or(""),
                        a["capability"].as_str().unwrap_or(""),
                        state,
                        a["health"]["healthy"]
                            .as_bool()
                            .map(|b| b.to_string())
                            .unwrap_or("-".into()),
                        a["running"].as_array().map(|r| r.len()).unwrap_or(0),
                        a["queues"]
                            .as_array()
                            .map(|q| q
                                .iter()
                                .filter_map(|x| x.as_str())
                                .collect::<Vec<_>>()
                                .join(","))
                            .unwrap_or_default(),
                    );
                }
            }
            Ok(0)
        }
        Command::Drain { agent, undo, api } => {
            let c = ApiClient::from_args(&api)?;
            let verb = if undo { "undrain" } else { "drain" };
            let v = c
                .post_json(
                    &format!("/api/v1/agents/{agent}/{verb}"),
                    &serde_json::json!({}),
                )
                .await?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else if undo {
                println!("{agent}: takes new work again");
            } else {
                println!("{agent}: drained (no new work; running jobs finish)");
            }
            Ok(0)
        }
    }
}

/// SIGTERM or SIGINT: graceful shutdown. A second signal exits at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down (signal again to exit at once)");
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("morag-hub: exiting at once");
    std::process::exit(130);
}
