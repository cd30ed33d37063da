//! The command line: `stepgate [serve] | migrate | check-config | openapi | keygen | audit |
//! policy | dlq`.

mod audit;
mod dlq;
mod operator;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgGroup, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::audit::AuditSigner;
use crate::auth::{Principal, Verifier};
use crate::config::Config;
use crate::http::openapi;
use crate::policy::Decision;
use crate::queue::Keys;
use crate::redis_conn::RedisEndpoint;
use crate::startup::{Application, connect_redis};

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
        Command::Migrate(arg) => {
            let config = load(&arg)?;
            let redis =
                connect_redis(&redis_endpoint(&config)?, std::time::Duration::from_secs(5)).await?;
            let names: Vec<_> = config.workflow_names().map(|(name, _)| name).collect();
            let ran = crate::migrations::apply(
                &mut redis.clone(),
                &Keys::new(&config.redis.key_prefix),
                &names,
            )
            .await?;
            println!("migrations applied: {ran} step(s) ran");
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck { url, ready, config } => healthcheck(url, ready, &config).await,
        Command::CheckConfig(arg) => {
            let config = load(&arg)?;
            // The digest the trail's config events record: the file and every file it reads.
            let text = std::fs::read_to_string(&arg.config)
                .with_context(|| format!("reading {}", arg.config.display()))?;
            println!(
                "configuration is valid: {} issuer(s), {} workflow(s); sha256 {}",
                config.issuers.len(),
                config.workflows.len(),
                crate::config::digest(&text, &config)
            );
            // Not a configuration error (they may come from the environment later), but the
            // first thing to know when nothing starts.
            let sfn = crate::startup::aws_step_functions(&config).await;
            if let Some(problem) = sfn.credentials_problem().await {
                println!("warning: {problem}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi { check, write, path } => {
            let generated = openapi::document_json()?;
            if check {
                let committed = std::fs::read_to_string(&path).unwrap_or_default();
                if committed != generated {
                    eprintln!(
                        "{} is stale: run `stepgate openapi --write`",
                        path.display()
                    );
                    return Ok(ExitCode::FAILURE);
                }
                println!("{} is up to date", path.display());
            } else if write {
                std::fs::write(&path, generated)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            } else {
                print!("{generated}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out } => {
            let signer = AuditSigner::generate();
            let public = signer.write_pair(&out)?;
            println!(
                "wrote {} (private) and {} (public); key id {}",
                out.display(),
                public.display(),
                signer.kid()
            );
            Ok(ExitCode::SUCCESS)
        }
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
            explain_policy(&config, &section, token.as_deref(), claims.as_deref()).await
        }
        Command::Dlq(command) => dlq::run(command).await,
    }
}

async fn serve(arg: &ConfigArg) -> anyhow::Result<ExitCode> {
    let config = load(arg)?;
    let telemetry = crate::telemetry::init(&config.log)?;
    let app = Application::from_file(&arg.config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let served = app.run_until_stopped(shutdown).await;
    telemetry.shutdown().await;
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Which policy `policy explain` evaluates.
enum PolicySection {
    Workflow(String),
    Admin,
    AuditReaders,
}

async fn explain_policy(
    arg: &ConfigArg,
    section: &PolicySection,
    token: Option<&str>,
    claims: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let config = load(arg)?;
    let access = |access: &crate::config::AccessConfig| crate::policy::Policy {
        allow: access.allow.clone(),
        deny: access.deny.clone(),
    };
    let (title, policy) = match section {
        PolicySection::Workflow(workflow) => {
            let workflows = crate::runtime::workflows(&config)?;
            let Some((name, rules)) = workflows
                .into_iter()
                .find(|(name, _)| name.as_str() == workflow)
            else {
                anyhow::bail!("no workflow named {workflow:?} in {}", arg.config.display());
            };
            (format!("workflow {name}"), rules.policy)
        }
        PolicySection::Admin => ("[admin]".to_owned(), access(&config.admin)),
        PolicySection::AuditReaders => {
            ("[audit_readers]".to_owned(), access(&config.audit_readers))
        }
    };
    let caller = match (token, claims) {
        (Some(token), _) => {
            let token = if token == "-" {
                std::io::read_to_string(std::io::stdin())?.trim().to_owned()
            } else {
                token.to_owned()
            };
            let verifier = Verifier::new(&config.issuers, reqwest::Client::new(), 0, None)?;
            for issuer in verifier.issuers() {
                if let Err(e) = issuer.keys.refresh().await {
                    eprintln!("issuer {}: {e}", issuer.config.issuer);
                }
            }
            match verifier.verify(&token).await {
                Ok(principal) => (*principal).clone(),
                Err(e) => {
                    println!("token refused: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a JSON object", path.display()))?;
            let issuer = claims
                .get("iss")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            Principal::from_claims(issuer, claims, String::new())
        }
        (None, None) => anyhow::bail!("give --token or --claims"),
    };
    let explanation = crate::policy::explain(&caller, &policy);
    let allowed = matches!(explanation.decision, Decision::Allowed { .. });
    match &explanation.decision {
        Decision::Allowed { rule } => println!("{title}: ALLOWED by allow[{rule}]"),
        Decision::Denied { reason } => println!("{title}: DENIED ({reason})"),
    }
    println!(
        "  caller: issuer {}, subject {}, client {}, scopes [{}]",
        caller.issuer,
        caller.subject,
        caller.client_id.as_deref().unwrap_or("(none)"),
        caller.scopes.join(" ")
    );
    for line in &explanation.rules {
        println!("  {line}");
    }
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
            let server = load(arg)?.server;
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
