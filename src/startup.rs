//! Builds the application from its configuration and runs it until told to stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditEvent, AuditLog, AuditWriter};
use crate::config::Config;
use crate::config::Workflow;
use crate::queue::{Keys, Producer};
use crate::redis_conn::{RedisConnection, RedisEndpoint};
use crate::reload::Reloader;
use crate::runtime::{KeyRefreshers, Runtime};
use crate::state::{App, AppState, StepFunctionsView};
use crate::worker::{AwsStepFunctions, Breakers, Drain, DrainPartners, Guarantees, StepFunctions};

/// How long the file exporter may take to finish its round and give up its lease.
const EXPORT_STOP: Duration = Duration::from_secs(5);
/// How long the audit writer may take to write what is left at shutdown.
const AUDIT_DRAIN: Duration = Duration::from_secs(10);

/// A built, bound, not yet running stepgate.
pub struct Application {
    listener: TcpListener,
    /// `server.ops_listen`: `/healthz`, `/readyz`, `/metrics` for operators.
    ops_listener: Option<TcpListener>,
    state: AppState,
    drain: Option<Drain>,
    audit_writer: Option<AuditWriter>,
    http: reqwest::Client,
    targets: watch::Sender<Vec<Arc<Workflow>>>,
    config: Config,
    /// The file the configuration came from (and is reloaded from), with its SHA-256.
    source: Option<(PathBuf, String)>,
}

impl Application {
    /// Loads the configuration file and builds; the file is watched for reloads when running.
    pub async fn from_file(path: &Path) -> anyhow::Result<Self> {
        let (config, text) = load_file(path)?;
        Self::from_loaded(config, &text, path).await
    }

    /// Builds from a configuration already read from `path` (its text, `text`): the file
    /// is read once, and watched for reloads when running.
    pub async fn from_loaded(config: Config, text: &str, path: &Path) -> anyhow::Result<Self> {
        let sfn = aws_step_functions(&config).await;
        let sha256 = crate::config::digest(text, &config);
        Self::build_with(config, sfn, Some((path.to_owned(), sha256))).await
    }

    /// Connects to Redis, applies migrations, loads keys, binds the listener.
    pub async fn build_with(
        config: Config,
        sfn: Arc<dyn StepFunctions>,
        source: Option<(PathBuf, String)>,
    ) -> anyhow::Result<Self> {
        let keys = Keys::new(&config.redis.key_prefix);
        let redis_endpoint =
            RedisEndpoint::from_config(&config.redis).context("invalid redis.url")?;
        let redis = connect_redis(&redis_endpoint, config.redis.command_timeout).await?;

        // The writer's own connection: a relay moves pages of hundreds of events, which on
        // the shared one would queue admissions' replies behind them.
        let audit_redis = if config.audit.enabled {
            connect_redis(&redis_endpoint, config.redis.command_timeout).await?
        } else {
            redis.clone()
        };
        let (audit, audit_writer) = AuditLog::open(&config.audit, audit_redis, keys.clone())
            .context("loading the audit signing keys")?;
        // Refused at start rather than found out later: a sink this process cannot write
        // would hold the trail in Redis until its cap stops admission.
        crate::audit::export::check_sink(&config).await?;

        let http = identity_provider_client()?;
        let config_sha256 = source
            .as_ref()
            .map(|(_, sha)| sha.clone())
            .unwrap_or_default();
        let runtime = Runtime::build(&config, &http, config_sha256, None).await?;
        let names: Vec<_> = runtime.workflows.keys().cloned().collect();
        crate::migrations::apply(&mut redis.clone(), &keys, &names)
            .await
            .context("applying migrations")?;

        // An EXPRESS state machine without a guarantee the workflow accepts is refused here
        // when Step Functions can tell; otherwise the drain asks before the first start.
        let guarantees = Arc::new(Guarantees::default());
        guarantees
            .check(sfn.as_ref(), runtime.workflows.values())
            .await
            .map_err(|refused| anyhow::anyhow!(refused))?;

        let (targets, targets_rx) = watch::channel(runtime.drain_targets());
        let breakers = Arc::new(Breakers::new(config.worker.breaker));
        let sfn_for_api = Arc::clone(&sfn);
        let drain = config.worker.enabled.then(|| {
            let partners = DrainPartners {
                redis_endpoint,
                redis: redis.clone(),
                sfn,
                audit: audit.clone(),
                breakers: Arc::clone(&breakers),
                guarantees: Arc::clone(&guarantees),
            };
            Drain::new(partners, keys.clone(), targets_rx, &config)
        });

        let (listener, ops_listener) = bind_listeners(&config.server).await?;
        let sfn_view = StepFunctionsView {
            client: sfn_for_api,
            breakers,
            guarantees,
            credentials_problem: std::sync::RwLock::new(None),
        };
        let state = app_state(&config, Arc::new(runtime), redis, keys, audit, sfn_view);
        Ok(Self {
            listener,
            ops_listener,
            state,
            drain,
            audit_writer,
            http,
            targets,
            config,
            source,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the operations listener is bound, when `server.ops_listen` is set.
    pub fn ops_local_addr(&self) -> Option<SocketAddr> {
        self.ops_listener.as_ref()?.local_addr().ok()
    }

    /// A handle to this process' audit trail writer (tests flush through it).
    pub fn audit_log(&self) -> AuditLog {
        self.state.audit.clone()
    }

    /// This process as if it were killed before its audit writer ever appended: the writer
    /// is dropped, so only what the scripts wrote into Redis remains (tests).
    #[cfg(any(test, feature = "test-helpers"))]
    pub fn without_audit_writer(mut self) -> Self {
        self.audit_writer = None;
        self
    }

    /// Serves the API, runs the drain and (for a file) follows configuration reloads until
    /// `shutdown`; then stops accepting, lets in-flight requests and deliveries finish, and
    /// writes the remaining audit events.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            ops_listener,
            state,
            drain,
            audit_writer,
            http,
            targets,
            config,
            source,
        } = self;
        let addr = listener.local_addr()?;
        let config_server = config.server.clone();
        crate::redis_eviction::warn_at_start(&mut state.redis.clone()).await;
        let writer = audit_writer.map(|writer| tokio::spawn(writer.run()));
        let exporter = crate::audit::export::start(&state, &config, &shutdown).await;
        let reloader = start_companions(
            &state,
            &config,
            source.map(|(path, sha256)| ReloadSource {
                path,
                sha256,
                http,
                targets,
            }),
            &shutdown,
        )
        .await;
        let close = stop_admitting_then_close(&state, &shutdown, config.server.shutdown_grace);
        let server = serve_listeners(listener, ops_listener, state, &config_server, close);
        tracing::info!(%addr, "stepgate listening");
        let drain = async {
            if let Some(drain) = drain {
                drain.run(shutdown.clone()).await;
            }
        };
        let ((), ()) = tokio::join!(server, drain);
        if let Some(exporter) = exporter
            && tokio::time::timeout(EXPORT_STOP, exporter).await.is_err()
        {
            tracing::warn!("the audit exporter did not stop in time; its lease expires by itself");
        }
        if let Some(reloader) = reloader {
            // It holds an AppState (and so an audit handle): it must end before the writer can.
            let _ = reloader.await;
        }
        // Every AuditLog handle is gone with the router, the drain and the reloader.
        if let Some(writer) = writer
            && tokio::time::timeout(AUDIT_DRAIN, writer).await.is_err()
        {
            tracing::error!("audit writer did not finish in time; unwritten audit events are lost");
        }
        Ok(())
    }
}

/// The configuration in `path`, and the text it was read from.
pub fn load_file(path: &Path) -> anyhow::Result<(Config, String)> {
    Config::load_with_text(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// What request handlers share.
fn app_state(
    config: &Config,
    runtime: Arc<Runtime>,
    redis: RedisConnection,
    keys: Keys,
    audit: AuditLog,
    sfn: StepFunctionsView,
) -> AppState {
    let fail_closed = config.audit.fail_closed_timing();
    let producer = Producer::new(
        redis.clone(),
        keys.clone(),
        config.server.status_ttl,
        fail_closed.map(|timing| timing.hold),
    );
    let fail_closed = fail_closed.map(|timing| timing.write_timeout);
    AppState::new(
        App::new(runtime, producer, redis, keys, audit, sfn, &config.server)
            .failing_closed(fail_closed),
    )
}

/// The API's listener and the operations listener (`server.ops_listen`), if any.
async fn bind_listeners(
    server: &crate::config::ServerConfig,
) -> anyhow::Result<(TcpListener, Option<TcpListener>)> {
    let listener = TcpListener::bind(server.listen)
        .await
        .with_context(|| format!("binding {}", server.listen))?;
    let ops_listener = match server.ops_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding server.ops_listen {addr}"))?,
        ),
        None => None,
    };
    Ok((listener, ops_listener))
}

/// The HTTP client for discovery, keys and introspection.
fn identity_provider_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        // Discovery and JWKS must come from the configured issuer, not wherever it redirects.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")
}

/// Where a reload comes from, and what it hands the drain.
struct ReloadSource {
    path: PathBuf,
    /// The digest of the configuration the process started with.
    sha256: String,
    http: reqwest::Client,
    targets: watch::Sender<Vec<Arc<Workflow>>>,
}

/// What runs beside the API: the `config_loaded` record, the AWS
/// credentials watch, the issuers' key refreshers and, for a file, the reloader (returned:
/// it holds an audit handle, so it must end before the audit writer can).
async fn start_companions(
    state: &AppState,
    config: &Config,
    reload: Option<ReloadSource>,
    shutdown: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let sha256 = reload.as_ref().map(|source| source.sha256.clone());
    state.audit.record(AuditEvent::config_loaded(sha256)).await;

    tokio::spawn(watch_aws_credentials(state.clone(), shutdown.clone()));
    let mut refreshers = KeyRefreshers::default();
    refreshers.follow(&state.runtime(), shutdown);
    let ReloadSource {
        path,
        sha256,
        http,
        targets,
    } = reload?;
    let poll = config.server.config_poll;
    let reloader = Reloader {
        path,
        state: state.clone(),
        http,
        redis: state.redis.clone(),
        keys: state.keys.clone(),
        targets,
        refreshers,
        current: config.clone(),
        last_seen_sha256: sha256,
        refusal: None,
    };
    Some(tokio::spawn(reloader.run(poll, shutdown.clone())))
}

/// Shutdown in two steps: first stop admitting (readiness false, triggers get 503) for the
/// grace period, so load balancers move traffic away; then close the listeners (the token
/// returned).
fn stop_admitting_then_close(
    state: &AppState,
    shutdown: &CancellationToken,
    grace: Duration,
) -> CancellationToken {
    let close = CancellationToken::new();
    let (state, shutdown, closing) = (state.clone(), shutdown.clone(), close.clone());
    tokio::spawn(async move {
        shutdown.cancelled().await;
        state.stop_admitting();
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "shutting down: admission stopped"
        );
        tokio::time::sleep(grace).await;
        closing.cancel();
    });
    close
}

/// Serves the API (and the operations listener, if any) until `close`.
async fn serve_listeners(
    listener: TcpListener,
    ops_listener: Option<TcpListener>,
    state: AppState,
    server: &crate::config::ServerConfig,
    close: CancellationToken,
) {
    let mut limits = crate::http::listener::ConnectionLimits::from_config(server);
    limits.max_connections = connections_within_open_files(limits.max_connections);
    // Probes and scrapers need few connections, each brief: the ops port must not eat
    // the API's budget, nor be held by a client that connects and waits.
    let ops_limits = crate::http::listener::ConnectionLimits {
        max_connections: OPS_MAX_CONNECTIONS,
        header_read_timeout: limits.header_read_timeout.min(OPS_TIMEOUT),
        idle_timeout: limits.idle_timeout.min(OPS_TIMEOUT),
        ..limits
    };
    let ops = ops_listener.map(|ops_listener| {
        if let Ok(ops_addr) = ops_listener.local_addr() {
            tracing::info!(%ops_addr, "operations listener (/healthz, /readyz, /metrics)");
        }
        crate::http::listener::serve(
            ops_listener,
            crate::http::ops_router(state.clone()),
            ops_limits,
            close.clone(),
        )
    });
    let api = crate::http::listener::serve(
        listener,
        crate::http::router(state, ops.is_some()),
        limits,
        close,
    );
    match ops {
        Some(ops) => {
            tokio::join!(api, ops);
        }
        None => api.await,
    }
}

/// Descriptors kept beside the API's connections: Redis, Step Functions, the IdP, the
/// operations listener, files.
const SPARE_DESCRIPTORS: u64 = 256 + OPS_MAX_CONNECTIONS as u64;

/// Connections the operations listener holds at most…
const OPS_MAX_CONNECTIONS: usize = 256;
/// …and how long one may take to send a request or stay idle.
const OPS_TIMEOUT: Duration = Duration::from_secs(5);

/// Raises this process's soft limit on open files to its hard limit and returns how many
/// connections fit under it, at most `max_connections`: accepting past the limit would
/// leave no descriptor for Redis or Step Functions.
fn connections_within_open_files(max_connections: usize) -> usize {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < max_connections as u64 + SPARE_DESCRIPTORS => {
            let fitting = limit.saturating_sub(SPARE_DESCRIPTORS).max(1) as usize;
            tracing::warn!(
                open_files = limit,
                max_connections,
                serving = fitting,
                "the open-files limit is below server.max_connections plus what stepgate needs \
                 beside them; serving fewer connections (raise it: ulimit -n, LimitNOFILE)"
            );
            fitting
        }
        Ok(_) => max_connections,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit");
            max_connections
        }
    }
}

/// How often unresolvable AWS credentials are checked again (they may come later: a mounted
/// web identity token, a profile written by a sidecar)…
const CREDENTIALS_RECHECK: Duration = Duration::from_secs(30);
/// …and resolving ones (they may expire and not be renewed).
const CREDENTIALS_CHECK: Duration = Duration::from_secs(300);

/// Checks at start, and again while they fail, that AWS credentials resolve; says so in one
/// log line when that changes and keeps the answer for `/readyz`. Triggers are admitted
/// either way (they wait in Redis).
async fn watch_aws_credentials(state: AppState, shutdown: CancellationToken) {
    let mut reported: Option<String> = None;
    loop {
        let problem = state.step_functions.client.credentials_problem().await;
        match (&problem, &reported) {
            (Some(problem), None) => {
                tracing::error!("{problem}; executions cannot start until they can")
            }
            (None, Some(_)) => tracing::info!("AWS credentials resolve again"),
            _ => {}
        }
        let pause = if problem.is_some() {
            CREDENTIALS_RECHECK
        } else {
            CREDENTIALS_CHECK
        };
        *state
            .step_functions
            .credentials_problem
            .write()
            .unwrap_or_else(|p| p.into_inner()) = problem.clone();
        reported = problem;
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

pub async fn aws_step_functions(config: &Config) -> Arc<dyn StepFunctions> {
    Arc::new(AwsStepFunctions::new(&config.aws, config.worker.call_timeout).await)
}

/// A connection with bounded connect and response times: a request must never hang on an
/// unreachable Redis (it answers 503 instead).
pub async fn connect_redis(
    endpoint: &RedisEndpoint,
    timeout: Duration,
) -> anyhow::Result<RedisConnection> {
    endpoint
        .connect(timeout)
        .await
        .context("connecting to Redis")
}
