//! Admission limits in Redis: rate limits exact across replicas, and the backlog bound.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use stepgate::testing::TestConfig;

use crate::support::{
    RedisServer, TestResult, header, keys, partners, spawn_app_with, workflow_named,
};

/// The drain off, and a second workflow `limited` on the app's state machine, open to two
/// clients, with the settings in `own` (an object) besides.
fn limited(own: Value) -> impl FnOnce(TestConfig) -> TestConfig {
    move |config| {
        let arn = config.orders_arn();
        let config = config
            .set("worker.enabled", false)
            .set("workflows.limited.state_machine_arn", arn)
            .set(
                "workflows.limited.allow",
                json!([{"clients": ["billing-service", "reporting-service"]}]),
            );
        let Value::Object(own) = own else {
            panic!("settings of the workflow are an object, not {own}")
        };
        own.into_iter().fold(config, |config, (key, value)| {
            config.set(&format!("workflows.limited.{key}"), value)
        })
    }
}

fn per_seconds(requests: u32, seconds: u32) -> Value {
    json!({"requests": requests, "per_seconds": seconds})
}

#[tokio::test]
async fn a_caller_limit_admits_exactly_its_quota_across_two_replicas() -> TestResult {
    let app = spawn_app_with(
        RedisServer::start(),
        limited(json!({"rate_limits": {"per_caller": per_seconds(100, 60)}})),
    )
    .await?;
    let replica = app.replica().await?;
    let token = partners().idp.billing_token().await?;

    let mut attempts = Vec::new();
    for i in 0..300_u32 {
        let base = if i.is_multiple_of(2) {
            app.base.clone()
        } else {
            replica.base.clone()
        };
        let (http, token) = (app.http.clone(), token.clone());
        attempts.push(tokio::spawn(async move {
            http.post(format!("{base}/v1/workflows/limited/executions"))
                .bearer_auth(token)
                .json(&json!({"input": {"i": i}}))
                .send()
                .await
        }));
    }
    let (mut accepted, mut limited) = (0, 0);
    for attempt in attempts {
        let response = attempt.await??;
        match response.status() {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                let retry_after: u64 = header(&response, "retry-after").parse()?;
                assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
                assert_eq!(
                    header(&response, "ratelimit-policy"),
                    r#""caller";q=100;w=60"#
                );
                assert!(header(&response, "ratelimit").starts_with(r#""caller";r=0;t="#));
                assert_eq!(response.json::<Value>().await?["code"], "rate_limited");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((accepted, limited), (100, 200));

    let queued = app.queue_len("limited").await?;
    assert_eq!(queued, 100);
    let records = app.decision_records().await?;
    let refused = records
        .iter()
        .filter(|r| r["event"] == "rate_limited")
        .count();
    assert!(
        refused >= 100,
        "this replica audited its refusals ({refused})"
    );
    // Another caller has a quota of its own.
    let other = partners().idp.denied_token().await?;
    assert_eq!(
        app.trigger("limited", &other, &json!({})).await?.status(),
        StatusCode::ACCEPTED
    );
    Ok(())
}

#[tokio::test]
async fn a_workflow_limit_counts_all_callers_and_reports_the_quota() -> TestResult {
    let app = spawn_app_with(
        RedisServer::start(),
        limited(json!({"rate_limits": {
            "workflow": per_seconds(3, 60),
            "per_caller": per_seconds(2, 60),
        }})),
    )
    .await?;
    let (billing, reporting) = (
        partners().idp.billing_token().await?,
        partners().idp.denied_token().await?,
    );

    let first = app.trigger("limited", &billing, &json!({})).await?;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(
        header(&first, "ratelimit-policy"),
        r#""workflow";q=3;w=60, "caller";q=2;w=60"#
    );
    assert_eq!(
        header(&first, "ratelimit"),
        r#""caller";r=1;t=60"#,
        "the tightest quota"
    );
    assert_eq!(
        app.trigger("limited", &billing, &json!({})).await?.status(),
        StatusCode::ACCEPTED
    );
    let third = app.trigger("limited", &billing, &json!({})).await?;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&third, "ratelimit").starts_with(r#""caller";r=0;"#));

    assert_eq!(
        app.trigger("limited", &reporting, &json!({}))
            .await?
            .status(),
        StatusCode::ACCEPTED
    );
    let fourth = app.trigger("limited", &reporting, &json!({})).await?;
    assert_eq!(fourth.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        header(&fourth, "ratelimit").starts_with(r#""workflow";r=0;"#),
        "the workflow's 3 are used up"
    );
    // A refused trigger counts nowhere: other workflows are unaffected.
    assert_eq!(
        app.trigger("orders", &billing, &json!({})).await?.status(),
        StatusCode::ACCEPTED
    );
    let reasons = app.reasons("rate_limited").await?;
    assert_eq!(
        reasons,
        vec![
            "rate limit caller exhausted",
            "rate limit workflow exhausted"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_full_backlog_answers_503_and_keeps_every_queued_entry() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), limited(json!({"max_backlog": 3}))).await?;
    let token = partners().idp.billing_token().await?;
    for i in 0..3 {
        assert_eq!(
            app.trigger("limited", &token, &json!({"input": {"i": i}}))
                .await?
                .status(),
            StatusCode::ACCEPTED
        );
    }
    let refused = app
        .trigger("limited", &token, &json!({"input": {"i": 3}}))
        .await?;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&refused, "retry-after"), "5");
    assert_eq!(refused.json::<Value>().await?["code"], "unavailable");

    let queued = app.queue_len("limited").await?;
    assert_eq!(queued, 3, "nothing trimmed, nothing added");
    let records = app.decision_records().await?;
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "rate_limited"
                && r["reason"] == "the backlog of 3 entries is full")
    );
    Ok(())
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_gets_the_same_request_and_queues_nothing()
-> TestResult {
    let app = spawn_app_with(
        RedisServer::start(),
        limited(json!({"rate_limits": {"per_caller": per_seconds(1, 60)}})),
    )
    .await?;
    let token = partners().idp.billing_token().await?;
    let send = |key: &str, body: Value, token: String| {
        app.http
            .post(app.url("/v1/workflows/limited/executions"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let body = json!({"input": {"order_id": "A-7"}});
    let first = send("order-A-7", body.clone(), token.clone()).await?;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await?;

    // Not counted again (the quota is 1), not queued again: the same answer.
    let retry = send("order-A-7", body.clone(), token.clone()).await?;
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    assert_eq!(retry.json::<Value>().await?, first);

    let other_body = send(
        "order-A-7",
        json!({"input": {"order_id": "A-8"}}),
        token.clone(),
    )
    .await?;
    assert_eq!(other_body.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        other_body.json::<Value>().await?["code"],
        "idempotency_key_reused"
    );

    // Keys are per caller: another caller's same key is its own request.
    let other_caller = send("order-A-7", body, partners().idp.denied_token().await?).await?;
    assert_eq!(other_caller.status(), StatusCode::ACCEPTED);
    assert_ne!(
        other_caller.json::<Value>().await?["request_id"],
        first["request_id"]
    );

    let too_long = send(&"k".repeat(256), json!({}), token).await?;
    assert_eq!(too_long.status(), StatusCode::BAD_REQUEST);

    let queued = app.queue_len("limited").await?;
    assert_eq!(queued, 2, "the first request and the other caller's");
    let accepted = app
        .decision_records()
        .await?
        .iter()
        .filter(|r| r["event"] == "accepted")
        .count();
    assert_eq!(accepted, 2);
    Ok(())
}

#[tokio::test]
async fn a_callers_total_limit_spans_workflows_and_refused_admissions_are_refunded() -> TestResult {
    let backlog_of_one = limited(json!({"max_backlog": 1}));
    let app = spawn_app_with(RedisServer::start(), |config| {
        backlog_of_one(config).set("rate_limits.per_caller", per_seconds(3, 60))
    })
    .await?;
    let token = partners().idp.billing_token().await?;

    let first = app.trigger("limited", &token, &json!({})).await?;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&first, "ratelimit"), r#""caller-total";r=2;t=60"#);
    // Refused by the workflow's backlog: the total quota is given back.
    assert_eq!(
        app.trigger("limited", &token, &json!({})).await?.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        app.trigger("orders", &token, &json!({})).await?.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        app.trigger("orders", &token, &json!({})).await?.status(),
        StatusCode::ACCEPTED
    );
    let over = app.trigger("orders", &token, &json!({})).await?;
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        header(&over, "ratelimit").starts_with(r#""caller-total";r=0;"#),
        "{}",
        header(&over, "ratelimit")
    );
    assert_eq!(
        header(&over, "ratelimit-policy"),
        r#""caller-total";q=3;w=60"#
    );
    // Another caller is not affected.
    let other = partners().idp.denied_token().await?;
    assert_eq!(
        app.trigger("limited", &other, &json!({})).await?.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "backlog"
    );
    Ok(())
}

/// A retry of a request an earlier version admitted (its idempotency record holds the old
/// fingerprint: the workflow and the body's bytes) is still recognised after an upgrade.
#[tokio::test]
async fn a_retry_of_a_request_admitted_before_an_upgrade_is_recognised() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), limited(json!({}))).await?;
    let token = partners().idp.billing_token().await?;
    let body = serde_json::to_vec(&json!({"input": {"order_id": "A-9"}}))?;
    let send = || {
        app.http
            .post(app.url("/v1/workflows/limited/executions"))
            .bearer_auth(&token)
            .header("idempotency-key", "order-A-9")
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    let first = send().await?;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await?;

    // What the earlier version stored instead of today's fingerprint.
    let mut redis = app.redis.connection().await?;
    let workflow = workflow_named("limited")?;
    let records: Vec<String> = redis::cmd("KEYS")
        .arg(keys().idempotency(&workflow, "*"))
        .query_async(&mut redis)
        .await?;
    let [record] = records.as_slice() else {
        return Err(format!("one idempotency record expected: {records:?}").into());
    };
    let legacy = hex::encode(Sha256::digest([b"limited\n".as_slice(), &body].concat()));
    let _: () = redis::cmd("HSET")
        .arg(record)
        .arg("fingerprint")
        .arg(&legacy)
        .query_async(&mut redis)
        .await?;

    let retry = send().await?;
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&retry, "idempotent-replayed"), "true");
    assert_eq!(
        retry.json::<Value>().await?["request_id"],
        first["request_id"]
    );
    assert_eq!(app.queue_len("limited").await?, 1, "queued once");
    Ok(())
}

/// A caller's total quota is not refunded when Redis times out after it may have run the
/// workflow's script: here it did (the script was slow, the caller got 503), and refunding
/// would have admitted one trigger more than the quota. Under-admit, never over-admit.
#[tokio::test]
async fn a_timeout_after_the_script_ran_refunds_nothing() -> TestResult {
    let windowed = limited(json!({"rate_limits": {"workflow": per_seconds(1_000, 3_600)}}));
    let app = spawn_app_with(RedisServer::start(), |config| {
        windowed(config)
            .set("rate_limits.per_caller", per_seconds(2, 3_600))
            .set("redis.command_timeout_ms", 100)
    })
    .await?;
    let token = partners().idp.billing_token().await?;
    // Two million expired admissions in the workflow's window: the script's sweep of them
    // outlasts the command timeout, and then the script queues the trigger all the same.
    let window = keys().rate(&workflow_named("limited")?, "workflow");
    let mut redis = app.redis.connection().await?;
    for chunk in 0..200 {
        let mut add = redis::cmd("ZADD");
        add.arg(&window);
        for member in 0..10_000 {
            add.arg(0).arg(chunk * 10_000 + member);
        }
        let _: i64 = add.query_async(&mut redis).await?;
    }

    let timed_out = app.trigger("limited", &token, &json!({})).await?;
    assert_eq!(timed_out.status(), StatusCode::SERVICE_UNAVAILABLE);
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the slow script queued the trigger",
        || async { app.queue_len("limited").await.ok().filter(|n| *n == 1) },
    )
    .await;
    // The quota of two is spent by the queued trigger and the next one.
    let second = app.trigger("limited", &token, &json!({})).await?;
    assert_eq!(second.status(), StatusCode::ACCEPTED);
    let third = app.trigger("limited", &token, &json!({})).await?;
    assert_eq!(
        third.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        header(&third, "ratelimit")
    );
    Ok(())
}
