//! A configuration for tests and benchmarks, built as values rather than spliced text: a
//! tree of settings under their dotted keys (`worker.breaker.failure_threshold`), rendered
//! to the TOML `stepgate serve` reads. Loading still checks it as any file, so a misspelt
//! key fails the test that wrote it instead of passing unnoticed.

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value, json};

/// The region every test state machine lives in.
pub const REGION: &str = "us-east-1";

/// The configuration of one test gateway, as a tree of settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TestConfig {
    root: Map<String, Value>,
}

/// Where a test gateway's partners are.
#[derive(Debug, Clone)]
pub struct TestPartners<'a> {
    /// The Redis URL (one standalone server; see [`TestConfig::redis_cluster`]).
    pub redis_url: &'a str,
    /// Where Step Functions calls go (the emulator, or a proxy in front of it).
    pub sfn_endpoint: &'a str,
    /// The trusted issuer, with its accepted audience.
    pub issuer: &'a str,
    pub audience: &'a str,
    /// The audit signing key's file.
    pub signing_key: &'a Path,
}

impl TestConfig {
    /// The base every test starts from: an ephemeral listener, quick timings (a drain that
    /// retries within a test's patience), static emulator credentials, one trusted issuer,
    /// and the workflow `orders` open to `billing-service` with the trigger scope.
    pub fn base(partners: &TestPartners<'_>, orders_arn: &str) -> Self {
        let mut config = Self::minimal(partners.issuer, partners.audience, partners.signing_key)
            .set("redis.url", partners.redis_url)
            .set_ms("redis.command_timeout_ms", Duration::from_secs(1))
            .set("server.listen", "127.0.0.1:0")
            .set_ms("server.config_poll_ms", Duration::from_millis(100))
            .set_ms("server.shutdown_grace_ms", Duration::ZERO)
            .set("aws.endpoint_url", partners.sfn_endpoint)
            .set("aws.static_credentials.access_key_id", "test")
            .set("aws.static_credentials.secret_access_key", "test")
            .set("worker.enabled", true)
            .set_ms("worker.call_timeout_ms", Duration::from_secs(1))
            .set_ms(
                "worker.retry_initial_backoff_ms",
                Duration::from_millis(100),
            )
            .set_ms("worker.retry_max_backoff_ms", Duration::from_secs(1))
            .set_ms("worker.claim_idle_ms", Duration::from_secs(4))
            .set_ms("worker.block_ms", Duration::from_millis(500))
            .set("log.format", "pretty")
            .set("log.level", "warn");
        config = config.set("workflows.orders.state_machine_arn", orders_arn);
        config.set(
            "workflows.orders.allow",
            json!([{"clients": ["billing-service"], "scopes": ["workflows:trigger"]}]),
        )
    }

    /// What `check-config` needs and no more: Redis on a closed port, the region, a signing
    /// key, one issuer, and `orders` (a state machine that need not exist) open to
    /// `billing-service`.
    pub fn minimal(issuer: &str, audience: &str, signing_key: &Path) -> Self {
        Self { root: Map::new() }
            .set("redis.url", "redis://127.0.0.1:1")
            .set("aws.region", REGION)
            .set("audit.signing_key", signing_key.display().to_string())
            .set(
                "issuers",
                json!([{"issuer": issuer, "audiences": [audience]}]),
            )
            .set(
                "workflows.orders.state_machine_arn",
                format!("arn:aws:states:{REGION}:123456789012:stateMachine:orders"),
            )
            .set(
                "workflows.orders.allow",
                json!([{"clients": ["billing-service"]}]),
            )
    }

    /// Sets the setting at the dotted `key` (tables made as needed), replacing what was
    /// there.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        let (table, last) = self.table_for(key);
        table.insert(last.to_owned(), value.into());
        self
    }

    /// Sets a time setting (a key ending in `_ms`) from a `Duration`.
    pub fn set_ms(self, key: &str, value: Duration) -> Self {
        debug_assert!(key.ends_with("_ms"), "{key} is not a millisecond setting");
        self.set(key, u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    /// Sets a time setting (a key ending in `_seconds`) from a `Duration`.
    pub fn set_seconds(self, key: &str, value: Duration) -> Self {
        debug_assert!(key.ends_with("_seconds"), "{key} is not a seconds setting");
        self.set(key, value.as_secs())
    }

    /// Appends `item` to the list at `key` (`workflows.orders.deny`, `issuers`, …).
    pub fn push(mut self, key: &str, item: Value) -> Self {
        let (table, last) = self.table_for(key);
        match table.get_mut(last) {
            Some(Value::Array(items)) => items.push(item),
            _ => {
                table.insert(last.to_owned(), Value::Array(vec![item]));
            }
        }
        self
    }

    /// Removes the setting at `key` (a test of what happens without it).
    pub fn remove(mut self, key: &str) -> Self {
        let (table, last) = self.table_for(key);
        table.remove(last);
        self
    }

    /// Adds the workflow `name` on `arn`, open to `billing-service` (any scope).
    pub fn workflow(self, name: &str, arn: &str) -> Self {
        self.set(&format!("workflows.{name}.state_machine_arn"), arn)
            .set(
                &format!("workflows.{name}.allow"),
                json!([{"clients": ["billing-service"]}]),
            )
    }

    /// Redis Cluster: the first node's URL, the others as seeds.
    pub fn redis_cluster(self, urls: &[String]) -> Self {
        let seeds: Vec<Value> = urls.iter().skip(1).map(|u| json!(u)).collect();
        self.set("redis.url", urls.first().cloned().unwrap_or_default())
            .set("redis.cluster", true)
            .set("redis.cluster_seeds", seeds)
    }

    /// The setting at `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let mut parts = key.split('.');
        let first = parts.next()?;
        parts.try_fold(self.root.get(first)?, |value, part| value.get(part))
    }

    /// The state machine `orders` starts.
    pub fn orders_arn(&self) -> String {
        self.get("workflows.orders.state_machine_arn")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    /// The TOML text of this configuration.
    pub fn render(&self) -> String {
        let mut out = String::new();
        super::toml_text::write_table(&mut out, &[], &self.root);
        out
    }

    /// The table holding `key`'s last part, made as needed (a non-table in the way is
    /// replaced: the builder says what the file holds, last call wins).
    fn table_for<'k>(&mut self, key: &'k str) -> (&mut Map<String, Value>, &'k str) {
        let (path, last) = key.rsplit_once('.').unwrap_or(("", key));
        let mut table = &mut self.root;
        for part in path.split('.').filter(|p| !p.is_empty()) {
            let entry = table
                .entry(part.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            let Value::Object(next) = entry else {
                unreachable!("made a table just above")
            };
            table = next;
        }
        (table, last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_configuration_loads_and_every_setting_lands_where_its_key_says()
    -> Result<(), Box<dyn std::error::Error>> {
        let partners = TestPartners {
            redis_url: "redis://127.0.0.1:7000",
            sfn_endpoint: "http://127.0.0.1:5000",
            issuer: "http://127.0.0.1:4444",
            audience: "https://stepgate.local",
            signing_key: Path::new("/nonexistent/audit.key"),
        };
        let arn = format!("arn:aws:states:{REGION}:123456789012:stateMachine:orders-1");
        let text = TestConfig::base(&partners, &arn)
            .set("worker.breaker.failure_threshold", 3)
            .set_ms("worker.breaker.open_ms", Duration::from_millis(1500))
            .workflow("refunds", &arn)
            .push(
                "workflows.refunds.deny",
                json!({"subjects": ["blocked \"one\""]}),
            )
            .set(
                "rate_limits.per_caller",
                json!({"requests": 4, "per_seconds": 60}),
            )
            .push(
                "audit_readers.allow",
                json!({"clients": ["reporting-service"]}),
            )
            .render();
        let config = crate::config::Config::from_toml(&text).map_err(|e| format!("{e}\n{text}"))?;
        assert_eq!(config.worker.breaker.failure_threshold, 3);
        assert_eq!(config.worker.breaker.open, Duration::from_millis(1500));
        assert_eq!(config.worker.block, Duration::from_millis(500));
        assert_eq!(config.workflows["refunds"].deny.len(), 1);
        assert_eq!(config.workflows["orders"].state_machine_arn, arn);
        assert_eq!(config.audit_readers.allow.len(), 1);
        assert_eq!(
            config.rate_limits.per_caller.map(|r| r.per),
            Some(Duration::from_secs(60))
        );
        assert_eq!(config.checked_workflows().len(), 2);
        Ok(())
    }
}
