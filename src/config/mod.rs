//! Configuration: a TOML file, then `STEPGATE_*` environment overrides, validated once.
//!
//! Environment variables use `__` between levels: `STEPGATE_REDIS__URL` sets `redis.url`,
//! `STEPGATE_WORKFLOWS__ORDERS__STATE_MACHINE_ARN` sets `workflows.orders.state_machine_arn`.
//! After [`Config::load`] the value is immutable; every error names the offending key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

mod access;
mod audit;
mod duration;
mod files;
mod issuers;
mod worker;
mod workflows;
pub use access::{AccessConfig, AuthConfig};
pub use audit::{AuditConfig, AuditFilesConfig, AuditS3Config, FailClosed, MAX_SEGMENT_RECORDS};
pub use files::digest;
pub use issuers::{IntrospectionConfig, IssuerConfig};
pub use worker::{BreakerConfig, WorkerConfig};
pub use workflows::{
    DeliveryGuarantee, DrainPacing, GlobalRateLimits, Rate, Workflow, WorkflowConfig,
    WorkflowRateLimits,
};
mod parse;
mod validate;

use crate::policy::Rule;

/// Step Functions rejects inputs over 256 KiB; a larger body could never start.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// `STEPGATE_*` environment variables that are not settings.
const NOT_SETTINGS: [&str; 2] = ["config", "bin"];

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
    /// As written; [`Config::checked_workflows`] is what the rest of stepgate uses.
    pub workflows: BTreeMap<String, WorkflowConfig>,
    /// Filled once every check passed: the workflows under their parsed names, schemas
    /// compiled.
    #[serde(skip)]
    checked_workflows: Vec<Arc<Workflow>>,
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
    /// How long an accepted request's status stays readable while it waits (queued,
    /// deferred: this long past its due time, dead-lettered).
    #[serde(rename = "status_ttl_seconds", with = "duration::seconds")]
    pub status_ttl: Duration,
    /// How long it stays readable once the drain ended it (started, or failed for good):
    /// the truth is in Step Functions from then on, under the execution ARN. Read through
    /// [`ServerConfig::finished_status_ttl`].
    #[serde(
        rename = "finished_status_ttl_seconds",
        default,
        deserialize_with = "duration::optional_seconds::deserialize"
    )]
    pub finished_status_ttl: Option<Duration>,
    /// How long a running execution's state (from `DescribeExecution`) is reused for status
    /// requests; an ended execution's state is kept as long as the status.
    #[serde(rename = "live_status_ttl_ms", with = "duration::millis")]
    pub live_status_ttl: Duration,
    /// How often the configuration file is checked for changes (0: only on SIGHUP).
    #[serde(rename = "config_poll_ms", with = "duration::millis")]
    pub config_poll: Duration,
    /// How long an `Idempotency-Key` is remembered.
    #[serde(rename = "idempotency_ttl_seconds", with = "duration::seconds")]
    pub idempotency_ttl: Duration,
    /// On SIGTERM, how long to keep answering (readiness false, triggers 503) before the
    /// listener closes, so that load balancers stop sending traffic first.
    #[serde(rename = "shutdown_grace_ms", with = "duration::millis")]
    pub shutdown_grace: Duration,
    /// A connection must send a request's complete head within this time of its first byte
    /// (of being accepted, for its first request), else it is closed.
    #[serde(rename = "header_read_timeout_ms", with = "duration::millis")]
    pub header_read_timeout: Duration,
    /// A kept-alive connection that sends nothing for this long after an answer is closed.
    #[serde(rename = "idle_timeout_ms", with = "duration::millis")]
    pub idle_timeout: Duration,
    /// The whole request, body included, must arrive within this time of its first byte,
    /// else it is answered 408.
    #[serde(rename = "request_timeout_ms", with = "duration::millis")]
    pub request_timeout: Duration,
    /// Open connections at most; beyond, a new connection is closed at once.
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes; beyond: 431.
    pub max_header_bytes: usize,
    /// Most header fields in a request; beyond: 431.
    pub max_headers: usize,
}

impl ServerConfig {
    /// How long a finished status is kept: as set, else a day within
    /// [`idempotency_ttl`, `status_ttl`] (so that files written before the setting existed
    /// keep their meaning and stay valid).
    pub fn finished_status_ttl(&self) -> Duration {
        self.finished_status_ttl.unwrap_or_else(|| {
            Duration::from_secs(24 * 3600)
                .max(self.idempotency_ttl)
                .min(self.status_ttl)
        })
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ops_listen: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            status_ttl: Duration::from_secs(7 * 24 * 3600),
            finished_status_ttl: None,
            live_status_ttl: Duration::from_secs(2),
            config_poll: Duration::from_secs(2),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            shutdown_grace: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
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
    #[serde(
        rename = "command_timeout_ms",
        with = "duration::millis",
        default = "default_redis_timeout"
    )]
    pub command_timeout: Duration,
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

fn default_redis_timeout() -> Duration {
    Duration::from_secs(2)
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
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// One invalid setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// As written: `workflows.orders.allow[1]`.
    pub key: String,
    pub message: String,
    /// Where the file says it (1-based), when the key is in the file.
    pub line: Option<usize>,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            line: None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "`{}` (line {line}): {}", self.key, self.message),
            None => write!(f, "`{}`: {}", self.key, self.message),
        }
    }
}

/// The settings in `text` with the `STEPGATE_*` environment overrides on top.
fn settings(text: &str) -> Figment {
    Figment::new().merge(Toml::string(text)).merge(
        // STEPGATE_CONFIG names the file itself and STEPGATE_BIN the binary (scripts/demo):
        // they are not settings.
        Env::prefixed("STEPGATE_")
            .filter(|key| {
                !NOT_SETTINGS
                    .iter()
                    .any(|n| key.as_str().eq_ignore_ascii_case(n))
            })
            .split("__"),
    )
}

impl Config {
    /// Reads `path`, applies `STEPGATE_*` overrides, and validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_text(path).map(|(config, _)| config)
    }

    /// [`Config::load`], and the text the file held (for its digest).
    pub fn load_with_text(path: &Path) -> Result<(Self, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::from_file_text(&text, path)?;
        Ok((config, text))
    }

    /// The configuration in `text`, the contents of the file at `path`: `STEPGATE_*`
    /// overrides applied, relative paths resolved against the file's directory, validated,
    /// and every file it names read. Every problem is reported at once, by key and line.
    pub fn from_file_text(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let figment = settings(text);
        let directory = path.parent().unwrap_or(Path::new(""));
        let directory = std::path::absolute(directory).unwrap_or_else(|_| directory.into());
        Self::checked(&figment, text, Some(&directory))
    }

    /// Only `[server]` of the file at `path` (with its `STEPGATE_SERVER__*` overrides):
    /// where a probe finds the process. Nothing else is read or checked — a probe must not
    /// fail because a key file became unreadable while the process runs on what it loaded.
    pub fn server_only(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let figment = settings(&text);
        // A file that does not parse is an error here too, never a silent default address.
        if let Err(e) = figment.extract::<figment::value::Dict>() {
            return Err(ConfigError::Invalid(vec![parse::syntax_problem(&e)]));
        }
        if !figment.contains("server") {
            return Ok(ServerConfig::default());
        }
        figment
            .extract_inner::<ServerConfig>("server")
            .map_err(|e| {
                let mut problem = parse::problem_from(&e);
                if !problem.key.starts_with("server") {
                    problem.key = format!("server.{}", problem.key);
                }
                ConfigError::Invalid(vec![problem])
            })
    }

    /// Reads, then validates; with a `directory` (the file's), relative paths are resolved
    /// against it and the files they name are read. Problems of every stage are reported
    /// together: what cannot be read is left out, and the rest still checked.
    fn checked(
        figment: &Figment,
        text: &str,
        directory: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let (config, mut problems) = parse::extract(figment, text);
        let Some(mut config) = config else {
            return Err(ConfigError::Invalid(problems));
        };
        let mut later = Vec::new();
        if let Some(directory) = directory {
            config.resolve_paths(directory);
        }
        let checked_workflows = match config.validate() {
            Ok(workflows) => workflows,
            Err(ConfigError::Invalid(found)) => {
                later.extend(found);
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        if directory.is_some() {
            later.extend(config.check_files());
        }
        // A check of what remained may only echo a value left out (`workflows`: at least
        // one is required, when the only one was): such a key is already reported.
        let within = |key: &str, outer: &str| {
            key.strip_prefix(outer)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        };
        let related = |a: &str, b: &str| within(a, b) || within(b, a);
        later.retain(|p| {
            !problems
                .iter()
                .any(|reported| related(&p.key, &reported.key))
        });
        problems.extend(later);
        if problems.is_empty() {
            config.checked_workflows = checked_workflows;
            return Ok(config);
        }
        let mut problems = parse::with_lines(problems, text);
        // In the file's order, like a compiler's; what the file does not hold comes last.
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(ConfigError::Invalid(problems))
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
        Self::checked(&Figment::new().merge(Toml::string(text)), text, None)
    }

    /// Every policy's rule lists under their keys (`workflows.orders.allow`, `admin.deny`, …):
    /// the one place that knows where policies live, so every check covers all of them.
    pub fn policy_sections(&self) -> Vec<(String, &[Rule])> {
        let mut sections: Vec<(String, &[Rule])> = Vec::new();
        for (name, workflow) in &self.workflows {
            sections.push((format!("workflows.{name}.allow"), &workflow.allow));
            sections.push((format!("workflows.{name}.deny"), &workflow.deny));
        }
        for (name, access) in [
            ("admin", &self.admin),
            ("audit_readers", &self.audit_readers),
        ] {
            sections.push((format!("{name}.allow"), &access.allow));
            sections.push((format!("{name}.deny"), &access.deny));
        }
        sections
    }

    /// The configured workflows, checked: names parsed, schemas compiled (in name order).
    pub fn checked_workflows(&self) -> &[Arc<Workflow>] {
        &self.checked_workflows
    }
}

#[cfg(test)]
mod tests;
