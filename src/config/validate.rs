//! The checks a configuration must pass beyond its types; every problem names its key.

use jsonwebtoken::Algorithm;

use super::{Config, ConfigError, IssuerConfig, MIN_HEADER_BYTES, Problem};
use crate::domain::WorkflowName;

impl Config {
    /// Checks what types cannot say; reports every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |key: String, message: String| problems.push(Problem::new(key, message));

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
        if self.server.idempotency_ttl_seconds > self.server.status_ttl_seconds {
            problem(
                "server.idempotency_ttl_seconds".into(),
                "must not exceed status_ttl_seconds: a retry is answered with its request's status"
                    .into(),
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
        let known_issuer = |iss: &str| self.issuers.iter().any(|known| known.issuer == iss);
        for (section, rules) in self.policy_sections() {
            for (i, rule) in rules.iter().enumerate() {
                if let Err(e) = rule.check(known_issuer) {
                    problem(format!("{section}[{i}]"), e.to_string());
                }
            }
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
            } else if let Some(region) = workflow.state_machine_arn.split(':').nth(3)
                && region != self.aws.region
            {
                // One client per process, in aws.region: a start elsewhere would fail with
                // StateMachineDoesNotExist at the first delivery, long after the config check.
                problem(
                    key("state_machine_arn"),
                    format!(
                        "the state machine is in {region}, but stepgate calls Step Functions in \
                         aws.region ({}); run a stepgate per region",
                        self.aws.region
                    ),
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
            if let Err(e) = workflow.input_rules() {
                let written = if workflow.input_schema_file.is_some() {
                    "input_schema_file"
                } else {
                    "input_schema"
                };
                problem(key(written), e.to_string());
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
        let sections = self.policy_sections();
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
