//! `[workflows.<name>]` and the rate limits over them.

use std::path::PathBuf;

use serde::Deserialize;

use crate::policy::{InputRules, Rule, SchemaError};

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
    pub fn input_rules(&self) -> Result<InputRules, SchemaError> {
        InputRules::load(
            self.max_input_bytes,
            self.input_schema.as_deref(),
            self.input_schema_file.as_deref(),
        )
    }
}
