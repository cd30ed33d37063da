//! The checks a configuration must pass beyond its types; every problem names its key. Each
//! section checks itself (`check` in its module); this file runs them in order, and the
//! checks that span sections.

use std::sync::Arc;

use super::{Config, ConfigError, IssuerConfig, MIN_HEADER_BYTES, Problem, Workflow};

/// The problems found so far, reported all at once.
#[derive(Debug, Default)]
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(key, message));
    }
}

impl Config {
    /// Checks what types cannot say; reports every problem at once. Without problems, the
    /// checked workflows.
    pub(super) fn validate(&self) -> Result<Vec<Arc<Workflow>>, ConfigError> {
        let mut problems = Problems::default();
        self.check_redis(&mut problems);
        self.check_server(&mut problems);
        self.check_aws_and_log(&mut problems);
        self.audit.check(&mut problems);
        self.worker.check(self.redis.command_timeout, &mut problems);
        super::workflows::check_rate(
            "rate_limits.per_caller",
            self.rate_limits.per_caller,
            &mut problems,
        );
        if self.issuers.is_empty() {
            problems.add("issuers", "at least one trusted issuer is required");
        }
        for (i, issuer) in self.issuers.iter().enumerate() {
            issuer.check(i, &self.issuers[..i], &mut problems);
        }
        for (key, message) in self.opaque_routing_problems() {
            problems.add(key, message);
        }
        for (key, message) in self.rules_without_issuer() {
            problems.add(key, message);
        }
        let known_issuer = |iss: &str| self.issuers.iter().any(|known| known.issuer == iss);
        for (section, rules) in self.policy_sections() {
            for (i, rule) in rules.iter().enumerate() {
                if let Err(e) = rule.check(known_issuer) {
                    problems.add(format!("{section}[{i}]"), e.to_string());
                }
            }
        }
        if self.workflows.is_empty() {
            problems.add("workflows", "at least one workflow is required");
        }
        let checked: Vec<_> = self
            .workflows
            .iter()
            .filter_map(|(name, workflow)| workflow.check(name, &self.aws.region, &mut problems))
            .collect();
        if problems.0.is_empty() {
            Ok(checked)
        } else {
            Err(ConfigError::Invalid(problems.0))
        }
    }

    fn check_redis(&self, problems: &mut Problems) {
        if !self.redis.url.expose().starts_with("redis://")
            && !self.redis.url.expose().starts_with("rediss://")
        {
            problems.add("redis.url", "must start with redis:// or rediss://");
        }
        let prefix_ok = !self.redis.key_prefix.is_empty()
            && self
                .redis
                .key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !prefix_ok {
            problems.add(
                "redis.key_prefix",
                "use letters, digits, '-', '_' or '.' (no braces or colons)",
            );
        }
    }

    fn check_server(&self, problems: &mut Problems) {
        if self.server.max_body_bytes == 0 {
            problems.add("server.max_body_bytes", "must be greater than 0");
        }
        let at_least_one = [
            (
                "header_read_timeout_ms",
                self.server.header_read_timeout.as_millis() as u64,
            ),
            (
                "idle_timeout_ms",
                self.server.idle_timeout.as_millis() as u64,
            ),
            (
                "request_timeout_ms",
                self.server.request_timeout.as_millis() as u64,
            ),
            ("max_connections", self.server.max_connections as u64),
            ("max_headers", self.server.max_headers as u64),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                problems.add(format!("server.{key}"), "must be at least 1");
            }
        }
        if self.server.max_header_bytes < MIN_HEADER_BYTES {
            problems.add(
                "server.max_header_bytes",
                format!(
                    "must be at least {MIN_HEADER_BYTES} (a bearer token alone can take several KiB)"
                ),
            );
        }
        if self.server.status_ttl.is_zero() {
            problems.add("server.status_ttl_seconds", "must be at least 1");
        }
        let finished = self.server.finished_status_ttl();
        if self.server.idempotency_ttl > self.server.status_ttl {
            problems.add(
                "server.idempotency_ttl_seconds",
                "must not exceed status_ttl_seconds: a retry is answered with its request's status",
            );
        } else if self.server.idempotency_ttl > finished {
            problems.add(
                "server.idempotency_ttl_seconds",
                "must not exceed finished_status_ttl_seconds: a retry is answered with its \
                 request's status",
            );
        }
        if finished > self.server.status_ttl {
            problems.add(
                "server.finished_status_ttl_seconds",
                "must not exceed status_ttl_seconds",
            );
        }
        if self
            .server
            .finished_status_ttl
            .is_some_and(|ttl| ttl.is_zero())
        {
            problems.add("server.finished_status_ttl_seconds", "must be at least 1");
        }
    }

    fn check_aws_and_log(&self, problems: &mut Problems) {
        if self.aws.region.is_empty() {
            problems.add("aws.region", "must not be empty");
        }
        if let Some(url) = &self.aws.endpoint_url
            && reqwest::Url::parse(url).is_err()
        {
            problems.add("aws.endpoint_url", format!("{url:?} is not a URL"));
        }
        if let Some(endpoint) = &self.log.otlp_endpoint {
            if !cfg!(feature = "otlp") {
                problems.add(
                    "log.otlp_endpoint",
                    "this build has no OTLP export (build with --features otlp)",
                );
            } else if reqwest::Url::parse(endpoint).is_err() {
                problems.add("log.otlp_endpoint", format!("{endpoint:?} is not a URL"));
            }
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
