//! Redis unavailable: callers get 503 with Retry-After, never a 202 for a request Redis did
//! not take; service resumes by itself when Redis is back.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{RedisServer, TestResult, eventually, partners, spawn_app_with};

async fn assert_unavailable(response: reqwest::Response) -> TestResult {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "Retry-After: {retry_after:?}"
    );
    let problem: Value = response.json().await?;
    assert_eq!(problem["code"], "unavailable");
    Ok(())
}

#[tokio::test]
async fn with_redis_stopped_triggers_get_503_and_nothing_is_queued() -> TestResult {
    let mut app = spawn_app_with(RedisServer::start_durable(), |config| {
        config.set("worker.enabled", false)
    })
    .await?;
    let token = partners().idp.billing_token().await?;

    app.redis.stop();
    for i in 0..3 {
        assert_unavailable(
            app.trigger("orders", &token, &json!({"input": {"i": i}}))
                .await?,
        )
        .await?;
    }
    let ready = app.http.get(app.url("/readyz")).send().await?;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Redis keeps everything it acknowledged (AOF, fsync always): nothing was taken.
    app.redis.restart();
    let queued = app.queue_len("orders").await?;
    assert_eq!(queued, 0);

    // And the gateway reconnects by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = app
            .trigger("orders", &token, &json!({"input": {"i": "after"}}))
            .await?;
        if response.status() == StatusCode::ACCEPTED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after Redis came back: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let queued = app.queue_len("orders").await?;
    assert_eq!(queued, 1, "exactly the request that got 202");
    Ok(())
}

#[tokio::test]
async fn a_frozen_redis_gets_503_within_the_command_timeout() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), |config| {
        config.set("worker.enabled", false)
    })
    .await?;
    let token = partners().idp.billing_token().await?;
    app.redis.pause();
    let started = Instant::now();
    let response = app.trigger("orders", &token, &json!({"input": {}})).await;
    let elapsed = started.elapsed();
    app.redis.resume();
    assert_unavailable(response?).await?;
    assert!(
        elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn on_shutdown_readiness_fails_and_admission_stops_before_the_listener_closes() -> TestResult
{
    let mut app = crate::support::spawn_app_without_drain().await?;
    app.stop().await;
    app.reconfigure(|config| {
        config
            .set("worker.enabled", false)
            .set_ms("server.shutdown_grace_ms", Duration::from_millis(1500))
    })?;
    app.start().await?;
    let token = partners().idp.billing_token().await?;
    assert_eq!(
        app.trigger("orders", &token, &json!({})).await?.status(),
        StatusCode::ACCEPTED
    );

    app.begin_shutdown();
    let ready = eventually(Duration::from_secs(1), "readiness to fail", || async {
        let ready = app.http.get(app.url("/readyz")).send().await.ok()?;
        (ready.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(ready)
    })
    .await;
    assert_eq!(
        ready.json::<Value>().await?["checks"]["admission"],
        "shutting down"
    );
    assert_unavailable(app.trigger("orders", &token, &json!({})).await?).await?;

    // After the grace period the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.http.get(app.url("/healthz")).send().await.is_ok() {
        assert!(Instant::now() < deadline, "the listener stayed open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let queued = app.queue_len("orders").await?;
    assert_eq!(queued, 1, "only the trigger admitted before shutdown");
    Ok(())
}

/// A Redis that may evict stepgate's keys under memory pressure (`allkeys-*`, and
/// `volatile-*`: idempotency keys carry TTLs) is named in readiness, which stays ready: it
/// is the operator's setting to fix, and nothing is lost until memory runs short.
#[tokio::test]
async fn a_redis_that_may_evict_is_named_in_readiness() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), |config| {
        config.set("worker.enabled", false)
    })
    .await?;
    let readiness = || async {
        let response = app.http.get(app.url("/readyz")).send().await?;
        let status = response.status();
        TestResult::Ok((status, response.json::<Value>().await?))
    };
    let (status, body) = readiness().await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["redis_eviction"], "ok", "{body}");
    let mut redis = app.redis.connection().await?;
    for policy in ["volatile-lru", "allkeys-lfu"] {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(policy)
            .query_async(&mut redis)
            .await?;
        let (status, body) = readiness().await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        let detail = body["checks"]["redis_eviction"]
            .as_str()
            .unwrap_or_default();
        assert!(
            detail.contains(policy) && detail.contains("set maxmemory-policy noeviction"),
            "{body}"
        );
    }
    Ok(())
}
