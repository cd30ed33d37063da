//! What Redis keeps per trigger with the shipped defaults: 2,000 triggers with idempotency
//! keys, all started and exported, then every key's `MEMORY USAGE`, by kind.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{RedisServer, TestResult, eventually, keys, partners, spawn_app_with};

const TRIGGERS: usize = 2_000;
/// The target (issue 27): at most this many bytes stay in Redis per trigger.
const BYTES_PER_TRIGGER: u64 = 1_024;

/// A key with its variable parts (request ids, digests) as `<*>`.
fn kind(key: &str) -> String {
    key.split(':')
        .map(|part| {
            let hex = part.len() >= 32 && part.bytes().all(|b| b.is_ascii_hexdigit());
            if hex { "<*>" } else { part }
        })
        .collect::<Vec<_>>()
        .join(":")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_defaults_a_drained_trigger_leaves_at_most_a_kilobyte_in_redis() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), |config| config).await?;
    let token = partners().idp.billing_token().await?;
    let accepted: Vec<String> = futures_util::stream::iter(0..TRIGGERS)
        .map(|n| {
            let (app, token) = (&app, &token);
            async move {
                let response = app
                    .http
                    .post(app.url("/v1/workflows/orders/executions"))
                    .bearer_auth(token)
                    .header("idempotency-key", format!("order-{n}-of-a-long-day"))
                    .json(&json!({"input": {"order": n, "items": ["book", "pen"]}}))
                    .send()
                    .await?;
                assert_eq!(response.status(), StatusCode::ACCEPTED);
                crate::support::request_id_of(response).await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<TestResult<_>>()?;
    assert_eq!(accepted.len(), TRIGGERS);
    let mut redis = app.redis.connection().await?;
    let orders = stepgate::domain::WorkflowName::parse("orders")?;
    // Drained (every trigger started), then exported and trimmed to the default tail: at
    // most redis_keep_records (500) plus the records since the last checkpoint (250, and
    // the rest of the append that crossed it: a few under this load).
    eventually(Duration::from_secs(120), "every trigger started", || {
        let (mut redis, queue) = (redis.clone(), keys().queue(&orders));
        async move {
            let waiting: u64 = redis::cmd("XLEN")
                .arg(queue)
                .query_async(&mut redis)
                .await
                .ok()?;
            let exported: Option<u64> = redis::cmd("HGET")
                .arg(keys().audit_export())
                .arg("seq")
                .query_async(&mut redis)
                .await
                .ok()?;
            let head: Option<u64> = redis::cmd("HGET")
                .arg(keys().audit_head())
                .arg("seq")
                .query_async(&mut redis)
                .await
                .ok()?;
            let in_redis: u64 = redis::cmd("XLEN")
                .arg(keys().audit_log())
                .query_async(&mut redis)
                .await
                .ok()?;
            let settled = waiting == 0
                && head >= Some(2 * TRIGGERS as u64)
                && exported == head
                && in_redis <= 800;
            settled.then_some(())
        }
    })
    .await;

    let mut by_kind: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut without_ttl = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut redis)
            .await?;
        for key in batch {
            let bytes: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&key)
                .arg("SAMPLES")
                .arg(0)
                .query_async(&mut redis)
                .await?;
            let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut redis).await?;
            let entry = by_kind.entry(kind(&key)).or_default();
            entry.0 += 1;
            entry.1 += bytes.unwrap_or(0);
            if ttl == -1 {
                without_ttl.push(kind(&key));
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let total: u64 = by_kind.values().map(|(_, bytes)| bytes).sum();
    let records: u64 = redis::cmd("XLEN")
        .arg(keys().audit_log())
        .query_async(&mut redis)
        .await?;
    let per_trigger = total / TRIGGERS as u64;
    let breakdown: Vec<String> = by_kind
        .iter()
        .map(|(kind, (count, bytes))| {
            format!(
                "{kind}: {count} keys, {bytes} B, {} B per trigger",
                bytes / TRIGGERS as u64
            )
        })
        .collect();
    eprintln!(
        "memory: {per_trigger} B per trigger retained ({total} B for {TRIGGERS} triggers; \
         {records} audit records in Redis)\n  {}",
        breakdown.join("\n  ")
    );
    assert!(
        per_trigger <= BYTES_PER_TRIGGER,
        "{per_trigger} B per trigger:\n  {}",
        breakdown.join("\n  ")
    );
    // Keys without a TTL are the bounded ones: none of them is one per trigger.
    without_ttl.sort();
    without_ttl.dedup();
    assert!(
        without_ttl.len() < 30 && without_ttl.iter().all(|kind| !kind.contains("<*>")),
        "keys kept for good: {without_ttl:?}"
    );
    Ok(())
}
