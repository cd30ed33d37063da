//! Configuration: a TOML file, then `STEPGATE_*` environment overrides, validated once.
//!
//! Environment variables use `__` between levels: `STEPGATE_REDIS__URL` sets `redis.url`,
//! `STEPGATE_WORKFLOWS__ORDERS__STATE_MACHINE_ARN` sets `workflows.orders.state_machine_arn`.
//! After [`Config::load`] the value is immutable; every error names the offending key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::domain::WorkflowName;
use crate::policy::{InputRules, Rule};

/// Step Functions rejects inputs over 256 KiB; a larger body could never start.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// Below this a request with an ordinary bearer token could not be read.
const MIN_HEADER_BYTES: usize = 4 * 1024;

/// The whole configuration of one stepgate process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub redis: RedisConfig,
    pub aws: AwsConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    pub audit: AuditConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Limits over all workflows.
    #[serde(default)]
    pub rate_limits: GlobalRateLimits,
    /// Who may use the admin API (dead letters); nobody by default.
    #[serde(default)]
    pub admin: AccessConfig,
    /// Who may read the audit trail through `GET /v1/audit`; nobody by default.
    #[serde(default)]
    pub audit_readers: AccessConfig,
    pub issuers: Vec<IssuerConfig>,
    pub workflows: BTreeMap<String, WorkflowConfig>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP API listens on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address of the operations listener (`/healthz`, `/readyz` with the state machines'
    /// circuits, `/metrics`); when set, the API listener serves `/healthz` only of the three.
    /// Unset, all three are on the API listener, where anyone who reaches it can read them.
    pub ops_listen: Option<SocketAddr>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// How long an accepted request's status stays readable.
    pub status_ttl_seconds: u64,
    /// How long a running execution's state (from `DescribeExecution`) is reused for status
    /// requests; an ended execution's state is kept as long as the status.
    pub live_status_ttl_ms: u64,
    /// How often the configuration file is checked for changes (0: only on SIGHUP).
    pub config_poll_ms: u64,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl_seconds: u64,
    /// On SIGTERM, how long to keep answering (readiness false, triggers 503) before the
    /// listener closes, so that load balancers stop sending traffic first.
    pub shutdown_grace_ms: u64,
    /// A connection must send a request's complete head within this time of its first byte
    /// (of being accepted, for its first request), else it is closed.
    pub header_read_timeout_ms: u64,
    /// A kept-alive connection that sends nothing for this long after an answer is closed.
    pub idle_timeout_ms: u64,
    /// The whole request, body included, must arrive within this time of its first byte,
    /// else it is answered 408.
    pub request_timeout_ms: u64,
    /// Open connections at most; beyond, a new connection is closed at once.
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes; beyond: 431.
    pub max_header_bytes: usize,
    /// Most header fields in a request; beyond: 431.
    pub max_headers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ops_listen: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            status_ttl_seconds: 7 * 24 * 3600,
            live_status_ttl_ms: 2_000,
            config_poll_ms: 2_000,
            idempotency_ttl_seconds: 24 * 3600,
            shutdown_grace_ms: 5_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            request_timeout_ms: 30_000,
            max_connections: 10_000,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`; may hold a password, so never logged.
    pub url: Secret,
    /// Prefix of every key stepgate writes, so several deployments can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Bound on any single Redis command on the request path.
    #[serde(default = "default_redis_timeout_ms")]
    pub command_timeout_ms: u64,
    /// Redis Cluster: `url` (and `cluster_seeds`) are seed nodes; the other nodes are
    /// discovered from them.
    #[serde(default)]
    pub cluster: bool,
    /// More seed nodes, so start-up does not depend on one node being up.
    #[serde(default)]
    pub cluster_seeds: Vec<Secret>,
}

fn default_key_prefix() -> String {
    "stepgate".to_owned()
}

fn default_redis_timeout_ms() -> u64 {
    2_000
}

/// `[aws]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    pub region: String,
    /// Only for emulators (moto, LocalStack); production talks to the regional endpoint.
    pub endpoint_url: Option<String>,
    /// Static credentials, only for emulators; production uses the standard credential chain.
    pub static_credentials: Option<StaticCredentials>,
    /// `StartExecution` calls per second for the whole account in this region, over all
    /// workflows and replicas. Default 150: Step Functions' documented refill rate for
    /// StartExecution in most regions (300 in the largest); 0 turns it off.
    #[serde(default = "default_account_starts")]
    pub starts_per_second: u32,
}

fn default_account_starts() -> u32 {
    150
}

/// `[aws.static_credentials]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
}

/// `[worker]`: the drain from Redis into Step Functions.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Run the drain in this process (a replica may serve the API only).
    pub enabled: bool,
    /// `StartExecution` calls in flight at once, over all workflows.
    pub max_in_flight: usize,
    /// Bound on one `StartExecution` call.
    pub call_timeout_ms: u64,
    /// First pause after a retryable failure; each further one doubles (±20% jitter)...
    pub retry_initial_backoff_ms: u64,
    /// ...up to this.
    pub retry_max_backoff_ms: u64,
    /// An entry still failing this long after it entered the queue goes to the dead letters.
    pub retry_max_age_seconds: u64,
    /// A delivering consumer renews its claim on an entry every `claim_idle_ms / 5`; another
    /// consumer takes over an entry left unrenewed this long (its consumer died).
    pub claim_idle_ms: u64,
    /// How long a blocking read waits for new entries.
    pub block_ms: u64,
    /// Consumer name in the group; default `<host>-<pid>-<random>`, unique per process.
    pub consumer_name: Option<String>,
    pub breaker: BreakerConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_in_flight: 32,
            call_timeout_ms: 10_000,
            retry_initial_backoff_ms: 200,
            retry_max_backoff_ms: 30_000,
            retry_max_age_seconds: 24 * 3600,
            claim_idle_ms: 60_000,
            block_ms: 2_000,
            consumer_name: None,
            breaker: BreakerConfig::default(),
        }
    }
}

/// `[worker.breaker]`: the circuit breaker of each state machine.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failed calls (5xx, timeouts, connection errors) that open it.
    pub failure_threshold: u32,
    /// How long it stays open before a probe call; doubles after a failed probe...
    pub open_ms: u64,
    /// ...up to this.
    pub max_open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_ms: 5_000,
            max_open_ms: 60_000,
        }
    }
}

impl WorkerConfig {
    /// The longest a delivering consumer can go without renewing its claim: a
    /// `StartExecution` and a `DescribeExecution` timing out, and a Redis command.
    pub fn longest_silence_ms(&self, redis_command_timeout_ms: u64) -> u64 {
        2 * self.call_timeout_ms + redis_command_timeout_ms
    }

    /// How often a delivering consumer renews its claim on an entry.
    pub fn claim_renewal_ms(&self) -> u64 {
        self.claim_idle_ms / 5
    }
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Off, nothing is recorded: for measuring the audit's cost, never for production.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Ed25519 private key (PKCS#8 PEM) written by `stepgate keygen`.
    pub signing_key: PathBuf,
    /// Keys that signed the trail before `signing_key`. The first write with a new key, by a
    /// process that also holds the trail's active key here, appends a `key_rotated` record
    /// signed by the old key that introduces the new one.
    #[serde(default)]
    pub retired_keys: Vec<PathBuf>,
    /// A signed checkpoint (size and Merkle root) at least every this many records…
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// …and at least this often while records arrive.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_seconds: u64,
    /// Refuse a trigger (503) when its `accepted` record cannot be written within
    /// `write_timeout_ms`: no workflow starts unaudited. Off, the record is buffered and
    /// retried while the trigger goes ahead.
    #[serde(default)]
    pub fail_closed: bool,
    #[serde(default = "default_audit_write_timeout")]
    pub write_timeout_ms: u64,
    /// `auth_failed` and `denied` records of one source (address, caller, workflow, reason)
    /// are aggregated over this many seconds: the first at once, the repeats as one record
    /// with a `count` (0: a record per refusal).
    #[serde(default = "default_refusal_window")]
    pub refusal_window_seconds: u64,
    /// Export to rotated JSON Lines files (and trim Redis behind the export).
    #[serde(default)]
    pub files: Option<AuditFilesConfig>,
}

/// `[audit.files]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditFilesConfig {
    /// The same durable directory for every process that exports (one exports at a time).
    pub dir: PathBuf,
    /// A new file once the current one holds this many bytes.
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// Keep only this many newest records in Redis; older ones are deleted once exported
    /// and covered by a checkpoint (0: keep everything).
    #[serde(default)]
    pub redis_keep_records: u64,
}

fn default_refusal_window() -> u64 {
    10
}

fn default_rotate_bytes() -> u64 {
    64 * 1024 * 1024
}

fn enabled() -> bool {
    true
}

fn default_checkpoint_every() -> u64 {
    1_000
}

fn default_checkpoint_interval() -> u64 {
    60
}

fn default_audit_write_timeout() -> u64 {
    2_000
}

impl AuditConfig {
    pub fn write_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.write_timeout_ms)
    }

    /// Failing closed, how long an admitted trigger stays invisible to the drain for its
    /// admitting process to write the audit record and release it; after that, the drain
    /// takes the process for dead and recovers the trigger (auditing it first).
    pub fn admission_hold(&self) -> Option<std::time::Duration> {
        self.fail_closed
            .then(|| self.write_timeout() + std::time::Duration::from_secs(10))
    }

    /// The trail's handle and writer, with this configuration's keys and checkpoints; no
    /// writer when the audit is off.
    pub fn open_log(
        &self,
        redis: crate::redis_conn::RedisConnection,
        keys: crate::queue::Keys,
    ) -> Result<
        (crate::audit::AuditLog, Option<crate::audit::AuditWriter>),
        crate::audit::signer::KeyError,
    > {
        if !self.enabled {
            tracing::warn!("the audit trail is OFF (audit.enabled = false): nothing is recorded");
            return Ok((crate::audit::AuditLog::disabled(), None));
        }
        let signer = crate::audit::AuditSigner::load(&self.signing_key)?;
        let retired = self
            .retired_keys
            .iter()
            .map(|path| crate::audit::AuditSigner::load(path))
            .collect::<Result<_, _>>()?;
        tracing::info!(audit.kid = signer.kid(), "audit signing key loaded");
        let settings = crate::audit::WriterSettings {
            checkpoint_every: self.checkpoint_every,
            checkpoint_interval: std::time::Duration::from_secs(self.checkpoint_interval_seconds),
            refusal_window: std::time::Duration::from_secs(self.refusal_window_seconds),
            ..Default::default()
        };
        let (log, writer) = crate::audit::AuditLog::new(redis, keys, signer, retired, settings);
        Ok((log, Some(writer)))
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing` filter directives; `RUST_LOG` overrides.
    pub level: String,
    /// An OpenTelemetry collector's OTLP/HTTP base URL (`http://collector:4318`): spans are
    /// exported there. Needs a build with `--features otlp`; the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` does the same.
    pub otlp_endpoint: Option<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".to_owned(),
            otlp_endpoint: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

/// `[admin]`, `[audit_readers]`: who may use an operator API, as rules over verified tokens
/// (as for a workflow: any allow rule matches and no deny rule does). Empty: nobody.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    #[serde(default)]
    pub allow: Vec<Rule>,
    #[serde(default)]
    pub deny: Vec<Rule>,
}

/// `[auth]`: settings common to all issuers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Verified tokens remembered (by SHA-256) until they expire, so repeated calls with the
    /// same token skip signature work; 0 turns the cache off.
    pub token_cache_entries: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_cache_entries: 10_000,
        }
    }
}

/// `[[issuers]]`: an OpenID provider whose access tokens stepgate accepts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Compared exactly with the token's `iss`; keys come from its OIDC discovery document.
    pub issuer: String,
    /// A token must name at least one of these in `aud`.
    pub audiences: Vec<String>,
    /// Signature algorithms accepted from this issuer (asymmetric only).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Minimum time between two JWKS fetches caused by unknown `kid`s.
    #[serde(default = "default_refetch_cooldown")]
    pub jwks_refetch_cooldown_seconds: u64,
    /// Bounds on the periodic JWKS refresh, which follows the response's `Cache-Control`.
    #[serde(default = "default_refresh_min")]
    pub jwks_refresh_min_seconds: u64,
    #[serde(default = "default_refresh_max")]
    pub jwks_refresh_max_seconds: u64,
    /// How long the last good keys keep serving while the issuer cannot be reached.
    #[serde(default = "default_max_stale")]
    pub jwks_max_stale_seconds: u64,
    /// A fixed JWKS file instead of discovery (air-gapped sites).
    pub jwks_file: Option<PathBuf>,
    /// A fixed JWKS document, inline, instead of discovery.
    pub jwks_inline: Option<String>,
    /// Require this JWT `typ` header, e.g. `at+jwt` (RFC 9068); `application/at+jwt` matches too.
    pub require_typ: Option<String>,
    /// Claims a token must carry beyond `exp`, `iss`, `aud` and `sub`.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Accept this issuer's opaque (non-JWT) tokens, verified by RFC 7662 introspection.
    pub introspection: Option<IntrospectionConfig>,
    /// Opaque tokens that start with this go to this issuer's introspection, and no others;
    /// required of each issuer when more than one introspects (a token is never shown to an
    /// issuer that did not mint it).
    pub opaque_token_prefix: Option<String>,
    /// How long an introspection's "not active" is remembered (by the token's hash).
    #[serde(default = "default_introspection_negative_cache")]
    pub introspection_negative_cache_seconds: u64,
    /// Introspection calls per second to this issuer at most (per process); beyond, callers
    /// with unknown opaque tokens get 503.
    #[serde(default = "default_introspection_rate")]
    pub introspection_max_per_second: u32,
    /// Let discovery, the JWKS and introspection use plain `http` (a warning at start).
    /// Without it they must be `https`, or `http` on loopback for a loopback issuer.
    #[serde(default)]
    pub allow_insecure_http: bool,
}

fn default_introspection_negative_cache() -> u64 {
    60
}

fn default_introspection_rate() -> u32 {
    50
}

/// `introspection = { client_id = "stepgate", client_secret = "…" }` of an issuer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// stepgate's own client at the issuer.
    pub client_id: String,
    pub client_secret: Secret,
    /// Default: the discovery document's `introspection_endpoint`.
    pub endpoint: Option<String>,
}

fn default_refresh_min() -> u64 {
    60
}

fn default_refresh_max() -> u64 {
    3600
}

fn default_max_stale() -> u64 {
    24 * 3600
}

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::RS256]
}

/// 30 s: enough for NTP-synchronised hosts, small next to a typical 5–60 minute token life.
fn default_leeway() -> u64 {
    30
}

fn default_refetch_cooldown() -> u64 {
    30
}

/// `[workflows.<name>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowConfig {
    pub state_machine_arn: String,
    /// An IAM role to start this workflow's executions with (assumed through STS, its
    /// credentials cached and refreshed before they expire); default: the process's own
    /// credentials. Least privilege: one role per workflow, allowed `states:StartExecution`
    /// on its state machine only.
    pub role_arn: Option<String>,
    /// Deny by default: a caller is allowed when any one allow rule matches...
    #[serde(default)]
    pub allow: Vec<Rule>,
    /// ...and no deny rule does (deny wins).
    #[serde(default)]
    pub deny: Vec<Rule>,
    /// Largest accepted input (bytes of JSON), below `server.max_body_bytes`.
    pub max_input_bytes: Option<usize>,
    /// JSON Schema (2020-12) the input must satisfy, as JSON text...
    pub input_schema: Option<String>,
    /// ...or in a file.
    pub input_schema_file: Option<PathBuf>,
    /// Each access token may trigger this workflow once: a `jti` seen before is refused
    /// until the token expires. Tokens without `jti` are refused.
    #[serde(default)]
    pub one_time_tokens: bool,
    /// What the audit trail keeps of inputs: their hash (default) or the input, redacted.
    #[serde(default)]
    pub audit: crate::audit::redact::InputAudit,
    /// Admission limits of this workflow.
    #[serde(default)]
    pub rate_limits: WorkflowRateLimits,
    /// Entries waiting in the queue at most; beyond, admission answers 503 (backpressure).
    pub max_backlog: Option<u64>,
    /// How fast the drain may start this workflow's executions.
    #[serde(default)]
    pub drain: DrainPacing,
}

/// `[workflows.<name>.drain]`: shared by every replica through Redis.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DrainPacing {
    /// `StartExecution` calls per second at most (any 1 s window).
    pub starts_per_second: Option<u32>,
    /// `StartExecution` calls in flight at once at most.
    pub max_in_flight: Option<u32>,
}

/// `[rate_limits]`: limits over all workflows.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GlobalRateLimits {
    /// Each caller (issuer and subject), over all workflows together.
    pub per_caller: Option<Rate>,
}

/// `[workflows.<name>.rate_limits]`
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRateLimits {
    /// All callers of this workflow together.
    pub workflow: Option<Rate>,
    /// Each caller (issuer and subject) of this workflow.
    pub per_caller: Option<Rate>,
}

/// `{ requests = 100, per_seconds = 60 }`: at most `requests` in any `per_seconds` window.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub requests: u32,
    pub per_seconds: u64,
}

impl WorkflowConfig {
    /// The compiled input rules (the schema file is read here).
    pub fn input_rules(&self) -> Result<InputRules, String> {
        InputRules::load(
            self.max_input_bytes,
            self.input_schema.as_deref(),
            self.input_schema_file.as_deref(),
        )
    }
}

/// A string that never shows in `Debug` output or logs.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A configuration that could not be loaded; each problem names its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// One invalid setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

impl Config {
    /// Reads `path`, applies `STEPGATE_*` overrides, and validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::Load(Box::new(figment::Error::from(format!(
                "cannot read {}: {e}",
                path.display()
            ))))
        })?;
        Self::with_environment(&text)
    }

    /// Parses TOML text, applies `STEPGATE_*` overrides, and validates the result.
    pub fn with_environment(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(
            Figment::new()
                .merge(Toml::string(text))
                // STEPGATE_CONFIG names the file itself; it is not a setting.
                .merge(
                    Env::prefixed("STEPGATE_")
                        .filter(|key| !key.as_str().eq_ignore_ascii_case("config"))
                        .split("__"),
                ),
        )
    }

    /// The sections a reload cannot change (they need a restart), where `self` and `other` differ.
    pub fn restart_only_changes(&self, other: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |name: &'static str, same: bool| {
            if !same {
                changed.push(name);
            }
        };
        check("server", self.server == other.server);
        check("redis", self.redis == other.redis);
        check("aws", self.aws == other.aws);
        check("worker", self.worker == other.worker);
        check("audit", self.audit == other.audit);
        check("log", self.log == other.log);
        changed
    }

    /// Parses and validates TOML text (no environment); for tests and tools.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(text)))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types cannot say; reports every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |key: String, message: String| problems.push(Problem { key, message });

        if !self.redis.url.expose().starts_with("redis://")
            && !self.redis.url.expose().starts_with("rediss://")
        {
            problem(
                "redis.url".into(),
                "must start with redis:// or rediss://".into(),
            );
        }
        let prefix_ok = !self.redis.key_prefix.is_empty()
            && self
                .redis
                .key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !prefix_ok {
            problem(
                "redis.key_prefix".into(),
                "use letters, digits, '-', '_' or '.' (no braces or colons)".into(),
            );
        }
        if self.server.max_body_bytes == 0 {
            problem(
                "server.max_body_bytes".into(),
                "must be greater than 0".into(),
            );
        }
        let at_least_one = [
            ("header_read_timeout_ms", self.server.header_read_timeout_ms),
            ("idle_timeout_ms", self.server.idle_timeout_ms),
            ("request_timeout_ms", self.server.request_timeout_ms),
            ("max_connections", self.server.max_connections as u64),
            ("max_headers", self.server.max_headers as u64),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                problem(format!("server.{key}"), "must be at least 1".into());
            }
        }
        if self.server.max_header_bytes < MIN_HEADER_BYTES {
            problem(
                "server.max_header_bytes".into(),
                format!(
                    "must be at least {MIN_HEADER_BYTES} (a bearer token alone can take several KiB)"
                ),
            );
        }
        if self.aws.region.is_empty() {
            problem("aws.region".into(), "must not be empty".into());
        }
        if let Some(url) = &self.aws.endpoint_url
            && reqwest::Url::parse(url).is_err()
        {
            problem("aws.endpoint_url".into(), format!("{url:?} is not a URL"));
        }
        if let Some(endpoint) = &self.log.otlp_endpoint {
            if !cfg!(feature = "otlp") {
                problem(
                    "log.otlp_endpoint".into(),
                    "this build has no OTLP export (build with --features otlp)".into(),
                );
            } else if reqwest::Url::parse(endpoint).is_err() {
                problem(
                    "log.otlp_endpoint".into(),
                    format!("{endpoint:?} is not a URL"),
                );
            }
        }
        if self.audit.fail_closed && !self.audit.enabled {
            problem(
                "audit.fail_closed".into(),
                "needs the audit enabled (audit.enabled = true)".into(),
            );
        }
        if self.audit.checkpoint_every == 0 {
            problem("audit.checkpoint_every".into(), "must be at least 1".into());
        }
        if self.audit.checkpoint_interval_seconds == 0 {
            problem(
                "audit.checkpoint_interval_seconds".into(),
                "must be at least 1".into(),
            );
        }
        if self
            .audit
            .files
            .as_ref()
            .is_some_and(|f| f.rotate_bytes == 0)
        {
            problem(
                "audit.files.rotate_bytes".into(),
                "must be at least 1".into(),
            );
        }
        if self.audit.write_timeout_ms == 0 {
            problem("audit.write_timeout_ms".into(), "must be at least 1".into());
        }
        let worker = &self.worker;
        if worker.max_in_flight == 0 {
            problem("worker.max_in_flight".into(), "must be at least 1".into());
        }
        let silence = worker.longest_silence_ms(self.redis.command_timeout_ms);
        if worker.claim_idle_ms <= worker.claim_renewal_ms() + silence {
            problem(
                "worker.claim_idle_ms".into(),
                format!(
                    "must exceed claim_idle_ms / 5 + {silence} ms (2 x call_timeout_ms + \
                     redis.command_timeout_ms), or a live delivery could be taken over"
                ),
            );
        }
        if worker.retry_initial_backoff_ms == 0
            || worker.retry_max_backoff_ms < worker.retry_initial_backoff_ms
        {
            problem(
                "worker.retry_max_backoff_ms".into(),
                "retry_initial_backoff_ms must be at least 1 and at most retry_max_backoff_ms"
                    .into(),
            );
        }
        if worker.breaker.failure_threshold == 0 || worker.breaker.open_ms == 0 {
            problem(
                "worker.breaker".into(),
                "failure_threshold and open_ms must be at least 1".into(),
            );
        }
        if self
            .rate_limits
            .per_caller
            .is_some_and(|r| r.requests == 0 || r.per_seconds == 0)
        {
            problem(
                "rate_limits.per_caller".into(),
                "requests and per_seconds must be at least 1".into(),
            );
        }
        if self.issuers.is_empty() {
            problem(
                "issuers".into(),
                "at least one trusted issuer is required".into(),
            );
        }
        for (i, issuer) in self.issuers.iter().enumerate() {
            let key = |field: &str| format!("issuers[{i}].{field}");
            if reqwest::Url::parse(&issuer.issuer).is_err() {
                problem(key("issuer"), format!("{:?} is not a URL", issuer.issuer));
            }
            if self.issuers[..i]
                .iter()
                .any(|other| other.issuer == issuer.issuer)
            {
                problem(key("issuer"), "the same issuer is configured twice".into());
            }
            if issuer.audiences.is_empty() {
                problem(key("audiences"), "at least one audience is required".into());
            }
            if issuer.algorithms.is_empty() {
                problem(
                    key("algorithms"),
                    "at least one algorithm is required".into(),
                );
            }
            if issuer.jwks_file.is_some() && issuer.jwks_inline.is_some() {
                problem(
                    key("jwks_file"),
                    "set jwks_file or jwks_inline, not both".into(),
                );
            }
            if issuer.jwks_refresh_min_seconds == 0
                || issuer.jwks_refresh_min_seconds > issuer.jwks_refresh_max_seconds
            {
                problem(
                    key("jwks_refresh_min_seconds"),
                    "must be at least 1 and at most jwks_refresh_max_seconds".into(),
                );
            }
            if issuer.jwks_max_stale_seconds < issuer.jwks_refresh_max_seconds {
                problem(
                    key("jwks_max_stale_seconds"),
                    "must be at least jwks_refresh_max_seconds, or keys go stale between refreshes"
                        .into(),
                );
            }
            if let Err(e) = crate::auth::fetch::check_issuer(issuer) {
                problem(key("issuer"), e.to_string());
            }
            if let Some(endpoint) = issuer
                .introspection
                .as_ref()
                .and_then(|i| i.endpoint.as_deref())
                && let Err(e) = crate::auth::fetch::EndpointRules::of(issuer).check(endpoint)
            {
                problem(key("introspection.endpoint"), e.to_string());
            }
            if issuer.introspection_max_per_second == 0 {
                problem(
                    key("introspection_max_per_second"),
                    "must be at least 1".into(),
                );
            }
            for alg in &issuer.algorithms {
                if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                    problem(
                        key("algorithms"),
                        format!("{alg:?} is symmetric; only public-key algorithms are accepted"),
                    );
                }
            }
        }
        for (key, message) in self.opaque_routing_problems() {
            problem(key, message);
        }
        for (key, message) in self.rules_without_issuer() {
            problem(key, message);
        }
        if self.workflows.is_empty() {
            problem(
                "workflows".into(),
                "at least one workflow is required".into(),
            );
        }
        for (name, workflow) in &self.workflows {
            let key = |field: &str| format!("workflows.{name}.{field}");
            if let Err(e) = WorkflowName::parse(name) {
                problem(format!("workflows.{name}"), e.to_string());
            }
            if !is_state_machine_arn(&workflow.state_machine_arn) {
                problem(
                    key("state_machine_arn"),
                    "expected arn:<partition>:states:<region>:<account>:stateMachine:<name>".into(),
                );
            }
            if workflow
                .role_arn
                .as_deref()
                .is_some_and(|arn| !is_role_arn(arn))
            {
                problem(
                    key("role_arn"),
                    "expected arn:<partition>:iam::<account>:role/<name>".into(),
                );
            }
            let known_issuer = |iss: &str| self.issuers.iter().any(|known| known.issuer == iss);
            for (list, rules) in [("allow", &workflow.allow), ("deny", &workflow.deny)] {
                for (i, rule) in rules.iter().enumerate() {
                    if let Err(message) = rule.check(known_issuer) {
                        problem(key(&format!("{list}[{i}]")), message);
                    }
                }
            }
            if let Err(message) = workflow.input_rules() {
                problem(key("input_schema"), message);
            }
            for pointer in workflow.audit.invalid_pointers() {
                problem(
                    key("audit.redact"),
                    format!("{pointer:?} is not a JSON Pointer (it starts with '/')"),
                );
            }
            let limits = [
                ("workflow", workflow.rate_limits.workflow),
                ("per_caller", workflow.rate_limits.per_caller),
            ];
            for (name, rate) in limits {
                if rate.is_some_and(|r| r.requests == 0 || r.per_seconds == 0) {
                    problem(
                        key(&format!("rate_limits.{name}")),
                        "requests and per_seconds must be at least 1".into(),
                    );
                }
            }
            if workflow.drain.starts_per_second == Some(0)
                || workflow.drain.max_in_flight == Some(0)
            {
                problem(
                    key("drain"),
                    "starts_per_second and max_in_flight must be at least 1".into(),
                );
            }
            if workflow.max_backlog == Some(0) {
                problem(key("max_backlog"), "must be at least 1".into());
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// With more than one introspecting issuer, each must own a prefix of opaque tokens, and
    /// no prefix may start another (a token would fit two issuers).
    fn opaque_routing_problems(&self) -> Vec<(String, String)> {
        let introspecting: Vec<(usize, &IssuerConfig)> = self
            .issuers
            .iter()
            .enumerate()
            .filter(|(_, issuer)| issuer.introspection.is_some())
            .collect();
        let mut problems = Vec::new();
        if introspecting.len() < 2 {
            return problems;
        }
        for (i, issuer) in &introspecting {
            let key = format!("issuers[{i}].opaque_token_prefix");
            match issuer.opaque_token_prefix.as_deref() {
                None | Some("") => problems.push((
                    key,
                    "required when more than one issuer introspects opaque tokens".into(),
                )),
                Some(prefix) => {
                    let overlaps = introspecting.iter().any(|(j, other)| {
                        j != i
                            && other
                                .opaque_token_prefix
                                .as_deref()
                                .is_some_and(|o| !o.is_empty() && prefix.starts_with(o))
                    });
                    if overlaps {
                        problems.push((
                            key,
                            format!("{prefix:?} starts with another issuer's prefix"),
                        ));
                    }
                }
            }
        }
        problems
    }

    /// With more than one trusted issuer, every rule must name its issuer: a `sub` or
    /// `client_id` minted by one IdP means nothing at another.
    fn rules_without_issuer(&self) -> Vec<(String, String)> {
        if self.issuers.len() < 2 {
            return Vec::new();
        }
        let mut sections: Vec<(String, &[Rule])> = Vec::new();
        for (name, workflow) in &self.workflows {
            sections.push((format!("workflows.{name}.allow"), workflow.allow.as_slice()));
            sections.push((format!("workflows.{name}.deny"), workflow.deny.as_slice()));
        }
        sections.push(("admin.allow".into(), self.admin.allow.as_slice()));
        sections.push(("admin.deny".into(), self.admin.deny.as_slice()));
        sections.push((
            "audit_readers.allow".into(),
            self.audit_readers.allow.as_slice(),
        ));
        sections.push((
            "audit_readers.deny".into(),
            self.audit_readers.deny.as_slice(),
        ));
        sections
            .into_iter()
            .flat_map(|(section, rules)| {
                rules
                    .iter()
                    .enumerate()
                    .filter(|(_, rule)| rule.issuer.is_none())
                    .map(move |(i, _)| {
                        (
                            format!("{section}[{i}]"),
                            "with more than one trusted issuer, a rule must name its issuer".into(),
                        )
                    })
            })
            .collect()
    }

    /// The configured workflows under their parsed names (valid after [`Config::validate`]).
    pub fn workflow_names(&self) -> impl Iterator<Item = (WorkflowName, &WorkflowConfig)> {
        self.workflows
            .iter()
            .filter_map(|(name, wf)| WorkflowName::parse(name).ok().map(|n| (n, wf)))
    }
}

fn is_state_machine_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.split(':').collect();
    matches!(parts.as_slice(),
        ["arn", partition, "states", region, account, "stateMachine", name]
            if partition.starts_with("aws")
            && !region.is_empty()
            && account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())
            && !name.is_empty() && name.len() <= 80)
}

fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(parts.as_slice(),
        ["arn", partition, "iam", "", account, resource]
            if partition.starts_with("aws")
            && account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())
            && resource.strip_prefix("role/").is_some_and(|name| !name.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const VALID: &str = r#"
        [redis]
        url = "redis://127.0.0.1:6379"
        [aws]
        region = "us-east-1"
        [audit]
        signing_key = "audit.key"
        [[issuers]]
        issuer = "http://127.0.0.1:4444"
        audiences = ["https://stepgate.local"]
        [workflows.orders]
        state_machine_arn = "arn:aws:states:us-east-1:123456789012:stateMachine:orders"
        [[workflows.orders.allow]]
        clients = ["billing-service"]
        scopes = ["workflows:trigger"]
    "#;

    fn problems(text: &str) -> Vec<Problem> {
        match Config::from_toml(text) {
            Err(ConfigError::Invalid(problems)) => problems,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    fn keys(text: &str) -> Vec<String> {
        problems(text).into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn a_valid_file_loads_with_defaults() -> Result<(), ConfigError> {
        let config = Config::from_toml(VALID)?;
        assert_eq!(config.server.max_body_bytes, 256 * 1024);
        assert_eq!(config.issuers[0].algorithms, vec![Algorithm::RS256]);
        assert_eq!(config.redis.key_prefix, "stepgate");
        Ok(())
    }

    #[test]
    fn problems_name_their_key() {
        let text = VALID
            .replace("stateMachine:orders", "function:orders")
            .replace("redis://", "http://")
            .replace(r#"clients = ["billing-service"]"#, "")
            .replace(r#"scopes = ["workflows:trigger"]"#, "");
        assert_eq!(
            keys(&text),
            vec![
                "redis.url",
                "workflows.orders.state_machine_arn",
                "workflows.orders.allow[0]"
            ]
        );
    }

    #[test]
    fn an_otlp_endpoint_needs_a_build_that_exports() {
        let text = format!("{VALID}\n[log]\notlp_endpoint = \"http://collector:4318\"\n");
        if cfg!(feature = "otlp") {
            assert!(Config::from_toml(&text).is_ok());
            assert_eq!(
                keys(&text.replace("http://collector:4318", "collector")),
                vec!["log.otlp_endpoint"]
            );
        } else {
            assert_eq!(keys(&text), vec!["log.otlp_endpoint"]);
        }
    }

    #[test]
    fn symmetric_algorithms_are_refused() {
        let text = VALID.replace(
            r#"audiences = ["https://stepgate.local"]"#,
            "audiences = [\"a\"]\nalgorithms = [\"HS256\"]",
        );
        assert_eq!(keys(&text), vec!["issuers[0].algorithms"]);
    }

    #[test]
    fn unsafe_workflow_names_are_refused() {
        let text = VALID
            .replace("[workflows.orders]", "[workflows.\"../x\"]")
            .replace("workflows.orders.allow", "workflows.\"../x\".allow");
        assert_eq!(keys(&text), vec!["workflows.../x"]);
    }

    #[test]
    fn a_role_must_be_an_iam_role_arn() {
        let with_role = |arn: &str| {
            VALID.replace(
                "state_machine_arn = \"arn:aws:states:us-east-1:123456789012:stateMachine:orders\"",
                &format!(
                    "state_machine_arn = \"arn:aws:states:us-east-1:123456789012:stateMachine:orders\"\nrole_arn = \"{arn}\""
                ),
            )
        };
        assert!(
            Config::from_toml(&with_role("arn:aws:iam::123456789012:role/stepgate-orders")).is_ok()
        );
        assert!(Config::from_toml(&with_role("arn:aws:iam::123456789012:role/path/to/r")).is_ok());
        for bad in [
            "arn:aws:iam::123456789012:user/someone",
            "arn:aws:iam::12345:role/r",
            "arn:aws:iam::123456789012:role/",
            "stepgate-orders",
        ] {
            assert_eq!(
                keys(&with_role(bad)),
                vec!["workflows.orders.role_arn"],
                "{bad}"
            );
        }
    }

    #[test]
    fn claim_idle_must_outlast_a_delivery() {
        let text = format!("{VALID}\n[worker]\ncall_timeout_ms = 10000\nclaim_idle_ms = 5000\n");
        assert_eq!(keys(&text), vec!["worker.claim_idle_ms"]);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let text = VALID.replace("[aws]", "[aws]\nregoin = \"x\"");
        let err = Config::from_toml(&text)
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("regoin"), "{err}");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() -> Result<(), ConfigError> {
        let config =
            Config::from_toml(&VALID.replace("redis://127.0.0.1", "redis://:hunter2@127.0.0.1"))?;
        assert!(!format!("{config:?}").contains("hunter2"));
        Ok(())
    }
}
