//! The command line: `stepgate [serve] | migrate | check-config | openapi | keygen | audit |
//! policy | dlq`.

mod audit;
mod audit_sources;
mod dlq;
mod explain;
mod operator;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgGroup, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::openapi;
use crate::redis_conn::RedisEndpoint;
use crate::startup::Application;
use explain::PolicySection;

#[derive(Debug, Parser)]
#[command(
    name = "stepgate",
    version,
    about = "Starts AWS Step Functions executions for authenticated services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The configuration file (TOML); `STEPGATE_*` variables override it.
    #[arg(long, short, env = "STEPGATE_CONFIG", default_value = "stepgate.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API and run the drain (the default).
    Serve(ConfigArg),
    /// Apply the Redis migrations and exit.
    Migrate(ConfigArg),
    /// Validate the configuration and exit.
    CheckConfig(ConfigArg),
    /// Probe the running server on this machine (a container HEALTHCHECK): exit 0 when
    /// `/healthz` (or, with `--ready`, `/readyz`) answers 200 within 2 s, else 1.
    Healthcheck {
        /// Probe this URL instead of `http://<server.listen>/healthz` from the configuration.
        #[arg(long)]
        url: Option<String>,
        /// Probe readiness instead of liveness.
        #[arg(long)]
        ready: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the OpenAPI document, or compare it with the committed one.
    Openapi {
        /// Exit non-zero when `--path` differs from the generated document.
        #[arg(long)]
        check: bool,
        /// Write the document to this file instead of standard output.
        #[arg(long)]
        write: bool,
        #[arg(long, default_value = openapi::COMMITTED_PATH)]
        path: PathBuf,
    },
    /// Write a new Ed25519 audit signing key (PKCS#8 PEM) and its public key (`.pub`).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Audit trail tools.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Policy tools.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Dead letters: list, replay, purge.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show whether a caller passes a policy (a workflow's, `[admin]` or `[audit_readers]`),
    /// and every condition each rule failed. Exits 0 when allowed, 1 when denied (or the
    /// token is refused).
    #[command(group(ArgGroup::new("policy").required(true).args(["workflow", "admin", "audit_readers"])))]
    #[command(group(ArgGroup::new("caller").required(true).args(["token", "claims"])))]
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// The workflow whose policy to explain.
        #[arg(long)]
        workflow: Option<String>,
        /// Explain the `[admin]` policy (the dead-letter admin API).
        #[arg(long)]
        admin: bool,
        /// Explain the `[audit_readers]` policy (`GET /v1/audit`).
        #[arg(long)]
        audit_readers: bool,
        /// An access token to verify against the configured issuers (`-` reads standard
        /// input, which keeps the token out of the process list and shell history).
        #[arg(long)]
        token: Option<String>,
        /// A JSON file of claims to evaluate as they are (no verification).
        #[arg(long)]
        claims: Option<PathBuf>,
    },
}

/// Runs the command; `Ok` carries the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let default_config = || ConfigArg {
        config: std::env::var_os("STEPGATE_CONFIG")
            .map_or_else(|| PathBuf::from("stepgate.toml"), PathBuf::from),
    };
    match cli
        .command
        .unwrap_or_else(|| Command::Serve(default_config()))
    {
        Command::Serve(arg) => serve(&arg).await,
        Command::Migrate(arg) => setup::migrate(&arg).await,
        Command::Healthcheck { url, ready, config } => healthcheck(url, ready, &config).await,
        Command::CheckConfig(arg) => setup::check_config(&arg).await,
        Command::Openapi { check, write, path } => setup::openapi(check, write, &path),
        Command::Keygen { out } => setup::keygen(&out),
        Command::Audit(command) => audit::run(command).await,
        Command::Policy(PolicyCommand::Explain {
            config,
            workflow,
            admin,
            audit_readers,
            token,
            claims,
        }) => {
            let section = match (workflow, admin, audit_readers) {
                (Some(name), _, _) => PolicySection::Workflow(name),
                (None, true, _) => PolicySection::Admin,
                _ => PolicySection::AuditReaders,
            };
            explain::explain_policy(&config, &section, token.as_deref(), claims.as_deref()).await
        }
        Command::Dlq(command) => dlq::run(command).await,
    }
}

async fn serve(arg: &ConfigArg) -> anyhow::Result<ExitCode> {
    let (config, text) = crate::startup::load_file(&arg.config)?;
    let telemetry = crate::telemetry::init(&config.log)?;
    let app = Application::from_loaded(config, &text, &arg.config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let served = app.run_until_stopped(shutdown).await;
    telemetry.shutdown().await;
    served?;
    Ok(ExitCode::SUCCESS)
}

async fn healthcheck(
    url: Option<String>,
    ready: bool,
    arg: &ConfigArg,
) -> anyhow::Result<ExitCode> {
    let path = if ready { "/readyz" } else { "/healthz" };
    let url = match url {
        Some(url) => url,
        None => {
            // Probes go to the operations listener when there is one (`/readyz` is only
            // there then).
            let server = Config::server_only(&arg.config)
                .map_err(|e| anyhow::anyhow!("{}: {e}", arg.config.display()))?;
            let listen = server.ops_listen.unwrap_or(server.listen);
            // A server listening on every interface answers on loopback.
            let host = if listen.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                listen.ip()
            };
            format!(
                "http://{}{path}",
                std::net::SocketAddr::new(host, listen.port())
            )
        }
    };
    let answer = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()?
        .get(&url)
        .send()
        .await;
    match answer {
        Ok(response) if response.status().is_success() => Ok(ExitCode::SUCCESS),
        Ok(response) => {
            eprintln!("{url}: {}", response.status());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn load(arg: &ConfigArg) -> anyhow::Result<Config> {
    Config::load(&arg.config).map_err(|e| anyhow::anyhow!("{}: {e}", arg.config.display()))
}

fn redis_endpoint(config: &Config) -> anyhow::Result<RedisEndpoint> {
    RedisEndpoint::from_config(&config.redis).context("invalid redis.url")
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
