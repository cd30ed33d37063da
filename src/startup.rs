//! Builds the application from its configuration and runs it until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditLog, AuditSigner, AuditWriter};
use crate::auth::Verifier;
use crate::auth::verifier::TrustedIssuer;
use crate::config::Config;
use crate::domain::WorkflowName;
use crate::policy::Policy;
use crate::queue::{Keys, Producer};
use crate::state::{App, AppState, Workflow};
use crate::worker::{AwsStepFunctions, Drain, DrainTarget, StepFunctions};

/// How long start-up waits for the issuers' keys; a slow IdP delays readiness, not start-up.
const INITIAL_KEY_LOAD: Duration = Duration::from_secs(5);
/// The longest pause between key fetch attempts while not loaded.
const KEY_RETRY_MAX: Duration = Duration::from_secs(30);
/// How long the audit writer may take to write what is left at shutdown.
const AUDIT_DRAIN: Duration = Duration::from_secs(10);

/// A built, bound, not yet running stepgate.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    drain: Option<Drain>,
    audit_writer: AuditWriter,
}

impl Application {
    /// Connects to Redis, applies migrations, loads keys, binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let sfn: Arc<dyn StepFunctions> = Arc::new(
            AwsStepFunctions::new(
                &config.aws,
                Duration::from_millis(config.worker.call_timeout_ms),
            )
            .await,
        );
        Self::build_with(config, sfn).await
    }

    /// As [`Application::build`], with a given Step Functions client.
    pub async fn build_with(config: Config, sfn: Arc<dyn StepFunctions>) -> anyhow::Result<Self> {
        let keys = Keys::new(&config.redis.key_prefix);
        let redis_client =
            redis::Client::open(config.redis.url.expose()).context("invalid redis.url")?;
        let redis = connect_redis(
            &redis_client,
            Duration::from_millis(config.redis.command_timeout_ms),
        )
        .await?;
        let workflows = workflows(&config)?;
        let names: Vec<WorkflowName> = workflows.iter().map(|(name, _)| name.clone()).collect();
        crate::migrations::apply(&mut redis.clone(), &keys, &names)
            .await
            .context("applying migrations")?;

        let signer = AuditSigner::load(&config.audit.signing_key)
            .context("loading the audit signing key")?;
        tracing::info!(audit.kid = signer.kid(), "audit signing key loaded");
        let (audit, audit_writer) = AuditLog::new(redis.clone(), keys.clone(), signer);

        let http = reqwest::Client::builder()
            // Discovery and JWKS must come from the configured issuer, not wherever it redirects.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        let verifier = Verifier::new(&config.issuers, http, config.auth.token_cache_entries)
            .map_err(anyhow::Error::msg)?;
        let loads = verifier.issuers().map(|issuer| async move {
            match tokio::time::timeout(INITIAL_KEY_LOAD, issuer.keys.refresh()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(issuer = %issuer.config.issuer, error = %e, "issuer keys not loaded yet"),
                Err(_) => tracing::warn!(issuer = %issuer.config.issuer, "issuer keys not loaded yet: timed out"),
            }
        });
        futures_util::future::join_all(loads).await;

        let drain = config.worker.enabled.then(|| Drain {
            redis_client,
            redis: redis.clone(),
            keys: keys.clone(),
            targets: workflows
                .iter()
                .map(|(name, w)| DrainTarget {
                    workflow: name.clone(),
                    state_machine_arn: w.state_machine_arn.clone(),
                })
                .collect(),
            sfn,
            audit: audit.clone(),
            consumer: config
                .worker
                .consumer_name
                .clone()
                .unwrap_or_else(unique_consumer_name),
            config: config.worker.clone(),
        });

        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        let state = AppState::new(App {
            verifier,
            workflows: workflows.into_iter().collect(),
            producer: Producer::new(
                redis.clone(),
                keys.clone(),
                config.server.status_ttl_seconds,
            ),
            redis,
            keys,
            audit,
            max_body_bytes: config.server.max_body_bytes,
        });
        Ok(Self {
            listener,
            state,
            drain,
            audit_writer,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle to this process' audit trail writer (tests flush through it).
    pub fn audit_log(&self) -> AuditLog {
        self.state.audit.clone()
    }

    /// Serves the API and runs the drain until `shutdown`; then stops accepting, lets
    /// in-flight requests and deliveries finish, and writes the remaining audit events.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            drain,
            audit_writer,
        } = self;
        let addr = listener.local_addr()?;
        let writer = tokio::spawn(audit_writer.run());
        let issuers: Vec<Arc<TrustedIssuer>> = state.verifier.issuers().cloned().collect();
        let refreshers: Vec<_> = issuers
            .into_iter()
            .map(|issuer| tokio::spawn(refresh_keys(issuer, shutdown.clone())))
            .collect();

        let app = crate::http::router(state).into_make_service_with_connect_info::<SocketAddr>();
        let server =
            axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
        tracing::info!(%addr, "stepgate listening");
        let drain = async {
            if let Some(drain) = drain {
                drain.run(shutdown.clone()).await;
            }
        };
        let (served, ()) = tokio::join!(server.into_future(), drain);
        for refresher in refreshers {
            refresher.abort();
        }
        // Every AuditLog handle is gone with the router and the drain: the writer finishes.
        if tokio::time::timeout(AUDIT_DRAIN, writer).await.is_err() {
            tracing::error!("audit writer did not finish in time; unwritten audit events are lost");
        }
        served.context("serving HTTP")
    }
}

/// The configured workflows as the request path needs them (schemas compiled).
pub fn workflows(config: &Config) -> anyhow::Result<Vec<(WorkflowName, Workflow)>> {
    config
        .workflow_names()
        .map(|(name, w)| {
            let input = w
                .input_rules()
                .map_err(|e| anyhow::anyhow!("workflows.{name}.input_schema: {e}"))?;
            let policy = Policy {
                allow: w.allow.clone(),
                deny: w.deny.clone(),
            };
            Ok((
                name,
                Workflow {
                    state_machine_arn: w.state_machine_arn.clone(),
                    policy,
                    input,
                    one_time_tokens: w.one_time_tokens,
                },
            ))
        })
        .collect()
}

/// A multiplexed connection with bounded connect and response times: a request must never
/// hang on an unreachable Redis (it answers 503 instead).
pub async fn connect_redis(
    client: &redis::Client,
    timeout: Duration,
) -> anyhow::Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
        .set_number_of_retries(2)
        .set_max_delay(1_000);
    ConnectionManager::new_with_config(client.clone(), config)
        .await
        .context("connecting to Redis")
}

/// Keeps one issuer's keys fresh: retries until loaded, then refreshes when they are due.
async fn refresh_keys(issuer: Arc<TrustedIssuer>, shutdown: CancellationToken) {
    let mut pause = Duration::from_secs(1);
    let mut failing = false;
    loop {
        let wait = match issuer.keys.next_refresh_in() {
            // Fixed keys: nothing to refresh.
            None => return,
            Some(due) if issuer.keys.is_loaded() && !failing => due.max(Duration::from_secs(1)),
            Some(_) => pause,
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
        match issuer.keys.refresh().await {
            Ok(_) => {
                failing = false;
                pause = Duration::from_secs(1);
            }
            Err(e) => {
                // The last good keys keep serving (up to their staleness bound) meanwhile.
                tracing::warn!(issuer = %issuer.config.issuer, error = %e, "refreshing issuer keys failed");
                failing = true;
                pause = (pause * 2).min(KEY_RETRY_MAX);
            }
        }
    }
}

/// `<host>-<pid>-<random>`: unique per process, so a restarted process never mistakes a
/// crashed one's deliveries for its own (those are reclaimed after `claim_idle_ms`).
fn unique_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "stepgate".into());
    let random = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{host}-{}-{random}", std::process::id())
}
