//! `audit.fail_closed`: a trigger is answered 202 only once its record is chained, or it is
//! withdrawn (503); a retry of one still held is told to wait; held triggers of a process
//! that died are recovered with exactly one `accepted` record.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    RedisServer, TestApp, TestResult, keys, partners, request_id_of, spawn_app_with, workflow_named,
};

async fn spawn_app_failing_closed() -> TestResult<TestApp> {
    spawn_app_with(RedisServer::start(), |config| {
        config.set("audit.fail_closed", true).set_ms(
            "audit.write_timeout_ms",
            std::time::Duration::from_millis(500),
        )
    })
    .await
}

/// `fail_closed`: a trigger whose `accepted` record cannot be written is refused (503 with
/// Retry-After) and taken back, so it never starts; the trail says so once it can.
#[tokio::test]
async fn failing_closed_refuses_triggers_the_trail_cannot_record() -> TestResult {
    let app = spawn_app_failing_closed().await?;
    let token = partners().idp.billing_token().await?;
    let first = request_id_of(
        app.trigger("orders", &token, &json!({"input": {"n": 1}}))
            .await?,
    )
    .await?;
    assert_eq!(
        app.settled_status(&first, &token).await["status"],
        "started"
    );

    let mut redis = break_the_trail(&app).await?;
    let refused = app
        .trigger("orders", &token, &json!({"input": {"n": 2}}))
        .await?;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(crate::support::header(&refused, "retry-after"), "5");
    assert_eq!(app.queue_len("orders").await?, 0, "nothing queued");
    let held: u64 = redis::cmd("ZCARD")
        .arg(keys().held(&workflow_named("orders")?))
        .query_async(&mut redis)
        .await?;
    assert_eq!(held, 0, "nothing held");

    mend_the_trail(&mut redis).await?;
    crate::support::eventually(
        std::time::Duration::from_secs(15),
        "the trail to catch up",
        || async {
            let records = app.decision_records().await.ok()?;
            records
                .iter()
                .any(|r| r["event"] == "withdrawn")
                .then_some(())
        },
    )
    .await;
    let third = request_id_of(
        app.trigger("orders", &token, &json!({"input": {"n": 3}}))
            .await?,
    )
    .await?;
    assert_eq!(
        app.settled_status(&third, &token).await["status"],
        "started"
    );

    let records = app.decision_records().await?;
    let events: Vec<(&str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap_or(""),
                r["request_id"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let second = events[2].1;
    assert_eq!(
        events,
        vec![
            ("accepted", first.as_str()),
            ("started", first.as_str()),
            ("accepted", second),
            ("withdrawn", second),
            ("accepted", third.as_str()),
            ("started", third.as_str()),
        ]
    );
    let started = crate::support::executions(&app.sfn, &app.state_machine_arn).await?;
    assert_eq!(started.len(), 2, "the refused trigger never started");
    assert_eq!(crate::audit::verify_json(&app, &[])?.0, 0);
    Ok(())
}

/// `fail_closed`: a retry (same Idempotency-Key) of a trigger still held for its record is
/// answered `409 request_pending` + `Retry-After`, never a `202` for a trigger that is then
/// withdrawn; once it is withdrawn, the retry is admitted as a new request, and starts.
#[tokio::test]
async fn failing_closed_a_retry_of_a_held_trigger_is_told_to_wait() -> TestResult {
    let app = failing_closed_within(2_000).await?;
    let token = partners().idp.billing_token().await?;
    let body = json!({"input": {"n": 77}});
    let send = || send_with_key(&app, &token, "order-77", &body);
    let mut redis = break_the_trail(&app).await?;
    let retry = async {
        // While the first waits for its record (up to write_timeout_ms).
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        send().await
    };
    let (first, retry) = tokio::join!(send(), retry);
    let (first, retry) = (first?, retry?);
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE, "withdrawn");
    assert_eq!(retry.status(), StatusCode::CONFLICT);
    assert_eq!(crate::support::header(&retry, "retry-after"), "1");
    let problem: Value = retry.json().await?;
    assert_eq!(problem["code"], "request_pending", "{problem}");

    mend_the_trail(&mut redis).await?;
    let again = send().await?;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    let id = request_id_of(again).await?;
    assert_eq!(app.settled_status(&id, &token).await["status"], "started");
    let started = crate::support::executions(&app.sfn, &app.state_machine_arn).await?;
    assert_eq!(started.len(), 1, "the withdrawn trigger never started");
    Ok(())
}

/// A deferred trigger is held too while failing closed: due before its record could be
/// chained, it must neither start nor be answered 202, and a retry meanwhile is told to
/// wait. (Before, deferred triggers were not held: the promotion queued this one while its
/// admission still waited, and the withdrawal, finding it gone, answered 202.)
#[tokio::test]
async fn failing_closed_a_deferred_trigger_due_before_its_record_is_chained_never_starts()
-> TestResult {
    let app = failing_closed_within(2_500).await?;
    let token = partners().idp.billing_token().await?;
    let body = json!({"input": {"n": 1}, "delay_seconds": 1});
    let send = || send_with_key(&app, &token, "soon-1", &body);
    let _redis = break_the_trail(&app).await?;
    let retry = async {
        // After its due time, while the first still waits for its record.
        tokio::time::sleep(std::time::Duration::from_millis(1_800)).await;
        send().await
    };
    let (first, retry) = tokio::join!(send(), retry);
    let (first, retry) = (first?, retry?);
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE, "withdrawn");
    assert_eq!(retry.status(), StatusCode::CONFLICT, "still held");
    assert_eq!(app.queue_len("orders").await?, 0, "never queued");
    // Past the hold too (write_timeout plus a margin): nothing was promoted or recovered.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(app.queue_len("orders").await?, 0, "never queued");
    let started = crate::support::executions(&app.sfn, &app.state_machine_arn).await?;
    assert!(started.is_empty(), "{started:?}");
    Ok(())
}

/// An app failing closed, waiting up to `write_timeout_ms` for a trigger's record.
async fn failing_closed_within(write_timeout_ms: u64) -> TestResult<TestApp> {
    spawn_app_with(RedisServer::start(), |config| {
        config.set("audit.fail_closed", true).set_ms(
            "audit.write_timeout_ms",
            std::time::Duration::from_millis(write_timeout_ms),
        )
    })
    .await
}

/// Triggers `orders` with `body` under `Idempotency-Key: key`.
async fn send_with_key(
    app: &TestApp,
    token: &str,
    key: &str,
    body: &Value,
) -> reqwest::Result<reqwest::Response> {
    app.http
        .post(app.url("/v1/workflows/orders/executions"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
}

/// Makes every append fail (the record stream moved aside, a string in its place) until
/// [`mend_the_trail`]; a connection for that.
async fn break_the_trail(app: &TestApp) -> TestResult<redis::aio::MultiplexedConnection> {
    // The record stream exists once the start-up's record is written (RENAME needs it).
    app.audit_records().await?;
    let mut redis = app.redis.connection().await?;
    let _: () = redis::pipe()
        .cmd("RENAME")
        .arg(keys().audit_log())
        .arg("aside")
        .cmd("SET")
        .arg(keys().audit_log())
        .arg("broken")
        .query_async(&mut redis)
        .await?;
    Ok(redis)
}

/// Undoes [`break_the_trail`].
async fn mend_the_trail(redis: &mut redis::aio::MultiplexedConnection) -> TestResult {
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(keys().audit_log())
        .cmd("RENAME")
        .arg("aside")
        .arg(keys().audit_log())
        .query_async(redis)
        .await?;
    Ok(())
}

/// A held trigger whose admitting process died before releasing it, admitted by a version
/// before the outbox (no `accepted` record anywhere): the drain records one (written, marked
/// recovered) and only then queues it; it starts once.
#[tokio::test]
async fn held_triggers_of_a_stopped_process_are_audited_then_started() -> TestResult {
    let (app, id) = strand_a_held_trigger(false).await?;
    let records = settled_decisions(&app, &id).await?;
    assert!(
        records[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("recovered"))
    );
    assert_eq!(records[0]["request_id"], id);
    Ok(())
}

/// The same, admitted with its `accepted` record in the outbox: the drain chains that one
/// before the release and writes no other, so the trail holds exactly one.
#[tokio::test]
async fn a_held_trigger_with_its_record_in_the_outbox_is_not_recorded_twice() -> TestResult {
    let (app, id) = strand_a_held_trigger(true).await?;
    let records = settled_decisions(&app, &id).await?;
    assert_eq!(
        records[0]["reason"],
        Value::Null,
        "the admission's own record"
    );
    Ok(())
}

/// What enqueue.lua leaves when its process dies before the release, the hold passed; with
/// `in_outbox`, also the `accepted` event it wrote into the outbox (sealed with the app's
/// key), as the current version does.
async fn strand_a_held_trigger(in_outbox: bool) -> TestResult<(TestApp, String)> {
    use stepgate::audit::outbox::Seal;
    use stepgate::domain::{RequestId, WorkflowName};
    let app = spawn_app_failing_closed().await?;
    let keys = keys();
    let workflow = WorkflowName::parse("orders")?;
    let id = RequestId::generate(workflow.clone());
    let mut redis = app.redis.connection().await?;
    let now_ms = stepgate::clock::unix_ms();
    let owner = format!("{} billing-service", partners().idp.issuer);
    let mut pipe = redis::pipe();
    pipe.cmd("ZADD")
        .arg(keys.held(&workflow))
        .arg(now_ms - 1)
        .arg(id.to_string())
        .cmd("HSET")
        .arg(keys.deferred_entries(&workflow))
        .arg(id.to_string())
        .arg(
            json!({"input": "{\"n\":7}", "owner": owner, "client_id": "billing-service",
            "accepted_at": stepgate::clock::now_rfc3339(), "audited": in_outbox})
            .to_string(),
        )
        .cmd("HSET")
        .arg(keys.request(&id))
        .arg("status")
        .arg("queued")
        .arg("owner")
        .arg(&owner)
        .arg("created_at")
        .arg("2026-01-01T00:00:00Z")
        .arg("updated_at")
        .arg("2026-01-01T00:00:00Z");
    if in_outbox {
        let dir = app.config_path.parent().ok_or("no dir")?;
        let seal = Seal::of(&stepgate::audit::AuditSigner::load(&dir.join("audit.key"))?);
        let mut event = stepgate::audit::AuditEvent::now(stepgate::audit::EventKind::Accepted);
        event.workflow = Some("orders".into());
        event.request_id = Some(id.to_string());
        let sealed = seal.seal(&event);
        pipe.cmd("XADD")
            .arg(keys.audit_outbox(&workflow))
            .arg("*")
            .arg("event")
            .arg(&sealed.json)
            .arg("mac")
            .arg(&sealed.mac);
    }
    let _: () = pipe.query_async(&mut redis).await?;
    Ok((app, id.to_string()))
}

/// The trail's decisions once request `id` has started (exactly once): exactly one
/// `accepted` record, then its `started`.
async fn settled_decisions(app: &TestApp, id: &str) -> TestResult<Vec<Value>> {
    let token = partners().idp.billing_token().await?;
    assert_eq!(app.settled_status(id, &token).await["status"], "started");
    let started = crate::support::executions(&app.sfn, &app.state_machine_arn).await?;
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].1, "{\"n\":7}");
    let records = app.decision_records().await?;
    let events: Vec<_> = records
        .iter()
        .map(|r| r["event"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(events, vec!["accepted", "started"], "{records:?}");
    Ok(records)
}
