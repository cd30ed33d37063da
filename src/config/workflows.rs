//! `[workflows.<name>]` and the rate limits over them.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::validate::Problems;
use crate::audit::redact::InputAudit;
use crate::domain::WorkflowName;
use crate::policy::{InputRules, Policy, Rule, SchemaError};

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
    /// Triggers waiting at most — queued, deferred, held, and dead letters awaiting an
    /// operator; beyond, admission answers 503 (backpressure). A bound by default, so that
    /// Redis holds a bounded queue even while Step Functions is down for long.
    #[serde(default = "default_max_backlog")]
    pub max_backlog: Option<u64>,
    /// How fast the drain may start this workflow's executions.
    #[serde(default)]
    pub drain: DrainPacing,
    /// The delivery guarantee accepted for an EXPRESS state machine, which cannot give
    /// exactly once (a STANDARD one always gets exactly once).
    pub delivery: Option<DeliveryGuarantee>,
}

/// `workflows.<name>.delivery`: how often a request may start its execution.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryGuarantee {
    /// Once, across retries, crashes and redeliveries (STANDARD: the execution name is the
    /// request id, and Step Functions refuses a second start of a name).
    ExactlyOnce,
    /// At least once: a start whose outcome is unknown is retried, so it may run twice.
    AtLeastOnce,
    /// At most once: a start whose outcome is unknown is never retried; the request ends
    /// `failed` (`outcome_unknown`).
    AtMostOnce,
}

impl DeliveryGuarantee {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryGuarantee::ExactlyOnce => "exactly_once",
            DeliveryGuarantee::AtLeastOnce => "at_least_once",
            DeliveryGuarantee::AtMostOnce => "at_most_once",
        }
    }
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
    #[serde(rename = "per_seconds", with = "super::duration::seconds")]
    pub per: std::time::Duration,
}

/// A workflow as every part of stepgate sees it once its configuration is checked: the
/// request path (policy, input rules, limits) and the drain (state machine, role, pacing)
/// share this one shape. The process builds it only through [`WorkflowConfig::check`]
/// (start-up and reload alike), so its name is parsed and its schema compiled once; the
/// fields are public for tests that need a workflow without a configuration file.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: WorkflowName,
    pub state_machine_arn: String,
    /// The role to start executions with, if not the process's own.
    pub role_arn: Option<String>,
    pub policy: Policy,
    pub input: InputRules,
    pub one_time_tokens: bool,
    pub rate_limits: WorkflowRateLimits,
    pub max_backlog: Option<u64>,
    pub drain: DrainPacing,
    pub audit_input: InputAudit,
    /// The guarantee accepted for an EXPRESS state machine (`None`: exactly once, which
    /// only a STANDARD one gives).
    pub delivery: Option<DeliveryGuarantee>,
}

impl Workflow {
    /// Whether `other` is delivered exactly as this one: a reload that changes only the
    /// policy, limits or input rules keeps the workflow's reader (and its pending entries).
    pub fn same_delivery(&self, other: &Workflow) -> bool {
        self.name == other.name
            && self.state_machine_arn == other.state_machine_arn
            && self.role_arn == other.role_arn
            && self.drain == other.drain
            && self.delivery == other.delivery
    }
}

impl WorkflowConfig {
    /// Its problems, named by `workflows.<name>`'s keys; its state machine must be in
    /// `aws_region`, where stepgate calls Step Functions. Without problems, the checked
    /// workflow (the schema file is read and compiled here, once).
    pub(super) fn check(
        &self,
        name: &str,
        aws_region: &str,
        problems: &mut Problems,
    ) -> Option<Arc<Workflow>> {
        let key = |field: &str| format!("workflows.{name}.{field}");
        let parsed = WorkflowName::parse(name)
            .inspect_err(|e| problems.add(format!("workflows.{name}"), e.to_string()))
            .ok();
        if !is_state_machine_arn(&self.state_machine_arn) {
            problems.add(
                key("state_machine_arn"),
                "expected arn:<partition>:states:<region>:<account>:stateMachine:<name>",
            );
        } else if let Some(region) = self.state_machine_arn.split(':').nth(3)
            && region != aws_region
        {
            // One client per process, in aws.region: a start elsewhere would fail with
            // StateMachineDoesNotExist at the first delivery, long after the config check.
            problems.add(
                key("state_machine_arn"),
                format!(
                    "the state machine is in {region}, but stepgate calls Step Functions in \
                     aws.region ({aws_region}); run a stepgate per region"
                ),
            );
        }
        if self
            .role_arn
            .as_deref()
            .is_some_and(|arn| !is_role_arn(arn))
        {
            problems.add(
                key("role_arn"),
                "expected arn:<partition>:iam::<account>:role/<name>",
            );
        }
        let input = self
            .input_rules()
            .inspect_err(|e| {
                let written = if self.input_schema_file.is_some() {
                    "input_schema_file"
                } else {
                    "input_schema"
                };
                problems.add(key(written), e.to_string());
            })
            .ok();
        for pointer in self.audit.invalid_pointers() {
            problems.add(
                key("audit.redact"),
                format!("{pointer:?} is not a JSON Pointer (it starts with '/')"),
            );
        }
        check_rate(
            &key("rate_limits.workflow"),
            self.rate_limits.workflow,
            problems,
        );
        check_rate(
            &key("rate_limits.per_caller"),
            self.rate_limits.per_caller,
            problems,
        );
        if self.drain.starts_per_second == Some(0) || self.drain.max_in_flight == Some(0) {
            problems.add(
                key("drain"),
                "starts_per_second and max_in_flight must be at least 1",
            );
        }
        if self.max_backlog == Some(0) {
            problems.add(key("max_backlog"), "must be at least 1");
        }
        Some(Arc::new(self.checked(parsed?, input?)))
    }

    fn checked(&self, name: WorkflowName, input: InputRules) -> Workflow {
        Workflow {
            name,
            state_machine_arn: self.state_machine_arn.clone(),
            role_arn: self.role_arn.clone(),
            policy: Policy {
                allow: self.allow.clone(),
                deny: self.deny.clone(),
            },
            input,
            one_time_tokens: self.one_time_tokens,
            rate_limits: self.rate_limits.clone(),
            max_backlog: self.max_backlog,
            drain: self.drain,
            audit_input: self.audit.clone(),
            delivery: self.delivery,
        }
    }

    /// The compiled input rules (the schema file is read here).
    fn input_rules(&self) -> Result<InputRules, SchemaError> {
        InputRules::load(
            self.max_input_bytes,
            self.input_schema.as_deref(),
            self.input_schema_file.as_deref(),
        )
    }
}

/// A rate limit's problem, named `key`.
pub(super) fn check_rate(key: &str, rate: Option<Rate>, problems: &mut Problems) {
    if rate.is_some_and(|r| r.requests == 0 || r.per.is_zero()) {
        problems.add(key, "requests and per_seconds must be at least 1");
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

fn default_max_backlog() -> Option<u64> {
    Some(100_000)
}
