//! Whether Redis may evict stepgate's keys: its `maxmemory-policy`, read from `INFO memory`
//! (which managed services allow where they disable `CONFIG`).
//!
//! Only `noeviction` is safe. `allkeys-*` may evict queued triggers and the trail;
//! `volatile-*` may evict every key with a TTL, and idempotency keys, one-time tokens,
//! statuses and rate windows all carry one — an evicted idempotency key lets a retry start
//! a workflow twice. Under `noeviction` a full Redis refuses writes instead, which stepgate
//! answers with 503 and loses nothing.

use redis::Value;

use crate::redis_conn::RedisConnection;

/// The policy under which nothing is evicted.
pub const SAFE_POLICY: &str = "noeviction";

/// Every node's `maxmemory-policy` that is not `noeviction` (empty: none may evict). On a
/// cluster, `INFO` goes to every node.
pub async fn evicting_policies(redis: &mut RedisConnection) -> redis::RedisResult<Vec<String>> {
    let reply: Value = redis::cmd("INFO").arg("memory").query_async(redis).await?;
    let mut policies = Vec::new();
    collect_policies(&reply, &mut policies);
    policies.retain(|policy| policy != SAFE_POLICY);
    policies.sort();
    policies.dedup();
    Ok(policies)
}

/// What to tell an operator about `policies` (from [`evicting_policies`]).
pub fn warning(policies: &[String]) -> String {
    format!(
        "Redis maxmemory-policy is {}: under memory pressure Redis may evict stepgate's keys \
         (queued triggers, idempotency keys, the audit trail) and lose them silently; set \
         maxmemory-policy {SAFE_POLICY}",
        policies.join(", ")
    )
}

/// Logs one warning line at start-up when Redis may evict; a Redis that will not say (an
/// ACL without `INFO`) is noted too, since the setting cannot be checked.
pub async fn warn_at_start(redis: &mut RedisConnection) {
    match evicting_policies(redis).await {
        Ok(policies) if policies.is_empty() => {}
        Ok(policies) => tracing::warn!("{}", warning(&policies)),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot read Redis' maxmemory-policy (INFO memory); make sure it is {SAFE_POLICY}"
        ),
    }
}

fn collect_policies(value: &Value, policies: &mut Vec<String>) {
    match value {
        Value::BulkString(bytes) => collect_from_text(&String::from_utf8_lossy(bytes), policies),
        Value::SimpleString(text) => collect_from_text(text, policies),
        Value::VerbatimString { text, .. } => collect_from_text(text, policies),
        Value::Array(values) | Value::Set(values) => {
            values.iter().for_each(|v| collect_policies(v, policies));
        }
        Value::Map(pairs) => pairs
            .iter()
            .for_each(|(_, v)| collect_policies(v, policies)),
        _ => {}
    }
}

fn collect_from_text(text: &str, policies: &mut Vec<String>) {
    policies.extend(
        text.lines()
            .filter_map(|line| line.trim().strip_prefix("maxmemory_policy:"))
            .map(|policy| policy.trim().to_owned()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(policy: &str) -> Value {
        Value::BulkString(
            format!("# Memory\r\nused_memory:1000\r\nmaxmemory_policy:{policy}\r\n").into_bytes(),
        )
    }

    #[test]
    fn policies_are_read_from_one_node_or_every_node_of_a_cluster() {
        let mut found = Vec::new();
        collect_policies(&info("allkeys-lru"), &mut found);
        assert_eq!(found, ["allkeys-lru"]);
        let mut found = Vec::new();
        let cluster = Value::Map(vec![
            (Value::SimpleString("a:1".into()), info("noeviction")),
            (Value::SimpleString("b:2".into()), info("volatile-ttl")),
        ]);
        collect_policies(&cluster, &mut found);
        assert_eq!(found, ["noeviction", "volatile-ttl"]);
    }
}
