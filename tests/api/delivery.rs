//! Exactly once across crashes and redeliveries: stop a worker between reading an entry and
//! acknowledging it, restart, and count the executions in the emulator.

use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};
use serde_json::{Value, json};

use crate::support::{
    RedisServer, TestApp, TestResult, eventually, executions, keys, partners, spawn_app_with,
    workflow_named,
};

/// The `orders` workflow's queue.
fn queue() -> TestResult<String> {
    Ok(keys().queue(&workflow_named("orders")?))
}
const GROUP: &str = stepgate::queue::WORKERS_GROUP;

/// Accepts connections and never answers: a Step Functions call into it hangs until timeout.
async fn black_hole() -> TestResult<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok((url, task))
}

async fn pending_count(app: &TestApp) -> TestResult<u64> {
    let mut redis = app.redis.connection().await?;
    let summary: redis::streams::StreamPendingReply = redis.xpending(queue()?, GROUP).await?;
    Ok(summary.count() as u64)
}

#[tokio::test]
async fn a_worker_stopped_between_read_and_ack_starts_exactly_one_execution_after_restart()
-> TestResult {
    let (hang, _hole) = black_hole().await?;
    let mut app = spawn_app_with(RedisServer::start(), |config| {
        config.set("aws.endpoint_url", hang)
    })
    .await?;
    let token = partners().idp.billing_token().await?;
    let input = json!({"order_id": "crash-1"});
    let request_id = app.accept(&token, &input).await?;

    // The worker has read the entry and is stuck in StartExecution: stop it there.
    eventually(
        Duration::from_secs(10),
        "the worker to read the entry",
        || async { (pending_count(&app).await.ok()? == 1).then_some(()) },
    )
    .await;
    app.stop().await;
    assert_eq!(pending_count(&app).await?, 1, "read, never acknowledged");
    assert!(
        executions(&app.sfn, &app.state_machine_arn)
            .await?
            .is_empty()
    );

    // A new process (new consumer name) with Step Functions reachable takes it over.
    app.reconfigure(|config| config)?;
    app.start().await?;
    let status = app.settled_status(&request_id, &token).await;
    assert_eq!(status["status"], "started", "{status}");
    let started = executions(&app.sfn, &app.state_machine_arn).await?;
    assert_eq!(started.len(), 1, "exactly one execution: {started:?}");
    assert_eq!(serde_json::from_str::<Value>(&started[0].1)?, input);
    assert_eq!(
        pending_count(&app).await?,
        0,
        "acknowledged after the start"
    );
    Ok(())
}

/// Plays a worker that read the entry, started its execution, and died before the ack.
async fn crash_after_start(app: &TestApp, input_override: Option<&str>) -> TestResult<String> {
    let mut redis = app.redis.connection().await?;
    let options = StreamReadOptions::default()
        .group(GROUP, "crashed-worker")
        .count(1);
    let read: StreamReadReply = redis.xread_options(&[queue()?], &[">"], &options).await?;
    let entry = read
        .keys
        .first()
        .and_then(|k| k.ids.first())
        .ok_or("nothing to read")?;
    let request_id: String = entry.get("request_id").ok_or("no request_id")?;
    let input: String = entry.get("input").ok_or("no input")?;
    let started = app
        .sfn
        .start_execution()
        .state_machine_arn(&app.state_machine_arn)
        .name(&request_id)
        .input(input_override.unwrap_or(&input))
        .send()
        .await?;
    Ok(started.execution_arn)
}

#[tokio::test]
async fn a_redelivered_entry_whose_execution_already_started_is_not_started_again() -> TestResult {
    let mut app = spawn_app_with(RedisServer::start(), |config| {
        config.set("worker.enabled", false)
    })
    .await?;
    let token = partners().idp.billing_token().await?;
    let request_id = app.accept(&token, &json!({"order_id": "crash-2"})).await?;
    let execution_arn = crash_after_start(&app, None).await?;

    app.stop().await;
    app.reconfigure(|config| config)?;
    app.start().await?;
    let status = app.settled_status(&request_id, &token).await;
    assert_eq!(status["status"], "started", "{status}");
    assert_eq!(status["execution_arn"], execution_arn.as_str());
    assert_eq!(
        executions(&app.sfn, &app.state_machine_arn).await?.len(),
        1,
        "still exactly one execution"
    );
    assert_eq!(pending_count(&app).await?, 0);
    Ok(())
}

#[tokio::test]
async fn an_execution_name_taken_with_another_input_dead_letters_the_request() -> TestResult {
    let mut app = spawn_app_with(RedisServer::start(), |config| {
        config.set("worker.enabled", false)
    })
    .await?;
    let token = partners().idp.billing_token().await?;
    let request_id = app.accept(&token, &json!({"order_id": "mine"})).await?;
    crash_after_start(&app, Some(r#"{"order_id": "someone else's"}"#)).await?;

    app.stop().await;
    app.reconfigure(|config| config)?;
    app.start().await?;
    let status = app.settled_status(&request_id, &token).await;
    assert_eq!(status["status"], "dead_lettered", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap_or_default()
            .contains("different input"),
        "{status}"
    );
    let records = app.decision_records().await?;
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "dead_lettered" && r["request_id"] == request_id.as_str())
    );
    Ok(())
}

#[tokio::test]
async fn a_deferred_trigger_waits_in_redis_and_starts_once_when_due() -> TestResult {
    let app = crate::support::spawn_app().await?;
    let token = partners().idp.billing_token().await?;
    let response = app
        .trigger(
            "orders",
            &token,
            &json!({"input": {"later": true}, "delay_seconds": 2}),
        )
        .await?;
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let accepted: Value = response.json().await?;
    assert_eq!(accepted["status"], "deferred");
    let request_id = accepted["request_id"].as_str().ok_or("no id")?;

    let status: Value = app.request_status(request_id, &token).await?.json().await?;
    assert_eq!(status["status"], "deferred");
    assert!(
        status["not_before"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{status}"
    );
    // A negative: half its delay passes with nothing started.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(
        executions(&app.sfn, &app.state_machine_arn)
            .await?
            .is_empty(),
        "not before its time"
    );

    let status = app.settled_status(request_id, &token).await;
    assert_eq!(status["status"], "started", "{status}");
    assert_eq!(executions(&app.sfn, &app.state_machine_arn).await?.len(), 1);
    let events: Vec<Value> = app
        .decision_records()
        .await?
        .into_iter()
        .map(|r| r["event"].clone())
        .collect();
    assert_eq!(events, vec![json!("deferred"), json!("started")]);
    Ok(())
}

/// A deferred trigger's status lives `status_ttl_seconds` past its due time, not past its
/// admission: a caller can follow a 30-day deferral to its end.
#[tokio::test]
async fn a_long_deferral_keeps_its_status_until_due_plus_the_status_ttl() -> TestResult {
    let app = crate::support::spawn_app_with(RedisServer::start(), |config| {
        config.set("worker.enabled", false)
    })
    .await?;
    let token = partners().idp.billing_token().await?;
    let delay = 30 * 24 * 3600;
    let response = app
        .trigger(
            "orders",
            &token,
            &json!({"input": {"much": "later"}, "delay_seconds": delay}),
        )
        .await?;
    let request_id = crate::support::request_id_of(response).await?;
    let id = stepgate::domain::RequestId::parse(&request_id)?;
    let ttl: i64 = redis::cmd("TTL")
        .arg(keys().status(&id))
        .query_async(&mut app.redis.connection().await?)
        .await?;
    let status_ttl = 7 * 24 * 3600;
    assert!(
        ttl > status_ttl + delay - 60 && ttl <= status_ttl + delay + 1,
        "the status expires in {ttl} s"
    );
    Ok(())
}

#[tokio::test]
async fn a_deferred_trigger_survives_a_restart() -> TestResult {
    let mut app = crate::support::spawn_app().await?;
    let token = partners().idp.billing_token().await?;
    let response = app
        .trigger(
            "orders",
            &token,
            &json!({"input": {"n": 1}, "delay_seconds": 2}),
        )
        .await?;
    let request_id = crate::support::request_id_of(response).await?;
    app.stop().await;
    // Past its due time while no process runs.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        executions(&app.sfn, &app.state_machine_arn)
            .await?
            .is_empty(),
        "nobody was running"
    );

    app.start().await?;
    let status = app.settled_status(&request_id, &token).await;
    assert_eq!(status["status"], "started", "{status}");
    assert_eq!(executions(&app.sfn, &app.state_machine_arn).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn deferral_times_are_checked() -> TestResult {
    let app = crate::support::spawn_app_without_drain().await?;
    let token = partners().idp.billing_token().await?;
    let past = app
        .trigger(
            "orders",
            &token,
            &json!({"not_before": "2020-01-01T00:00:00Z"}),
        )
        .await?;
    assert_eq!(
        past.json::<Value>().await?["status"],
        "queued",
        "a time in the past is now"
    );
    for bad in [
        json!({"not_before": "2030-01-01T00:00:00Z", "delay_seconds": 5}),
        json!({"not_before": "tomorrow"}),
        json!({"delay_seconds": 400 * 24 * 3600}),
        json!({"delay_seconds": -1}),
    ] {
        let response = app.trigger("orders", &token, &bad).await?;
        assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST, "{bad}");
    }
    Ok(())
}

/// `Drain::run_until_empty` returns once everything accepted has started, so a test or a
/// benchmark drains without sleeping; an entry still waiting keeps it running.
#[tokio::test]
async fn a_drain_run_until_empty_returns_once_every_accepted_request_started() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), |config| {
        config.set("worker.enabled", false)
    })
    .await?;
    let token = partners().idp.billing_token().await?;
    let mut accepted = Vec::new();
    for n in 0..20 {
        accepted.push(app.accept(&token, &json!({"n": n})).await?);
    }
    assert_eq!(app.queue_len("orders").await?, 20);

    let (drain, _targets) = app
        .standalone_drain(stepgate::audit::AuditLog::disabled())
        .await?;
    tokio::time::timeout(
        Duration::from_secs(60),
        drain.run_until_empty(tokio_util::sync::CancellationToken::new()),
    )
    .await?;

    // Returned: everything started, nothing left behind, and nothing waited on by the test.
    assert_eq!(app.queue_len("orders").await?, 0);
    assert_eq!(pending_count(&app).await?, 0);
    let started = executions(&app.sfn, &app.state_machine_arn).await?;
    assert_eq!(started.len(), 20, "{started:?}");
    for request_id in &accepted {
        let status: Value = app.request_status(request_id, &token).await?.json().await?;
        assert_eq!(status["status"], "started", "{status}");
    }
    Ok(())
}

/// The consumers of `orders`' group: name and pending entries.
async fn consumers(app: &TestApp) -> TestResult<Vec<(String, usize)>> {
    let reply: redis::streams::StreamInfoConsumersReply = app
        .redis
        .connection()
        .await?
        .xinfo_consumers(queue()?, GROUP)
        .await?;
    Ok(reply
        .consumers
        .into_iter()
        .map(|c| (c.name, c.pending))
        .collect())
}

/// Consumers of stopped processes are removed from the group once idle past
/// `worker.consumer_expiry_seconds` with nothing pending, so restarts do not grow it; one
/// that still owns an entry is kept until the entry is taken over, and the entry is not lost.
#[tokio::test]
async fn idle_consumers_are_removed_but_never_with_entries_pending() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), |config| {
        config.set("worker.consumer_expiry_seconds", 1)
    })
    .await?;
    let mut redis = app.redis.connection().await?;
    let queue = queue()?;
    eventually(Duration::from_secs(10), "the live reader", || async {
        consumers(&app).await.ok().filter(|c| c.len() == 1)
    })
    .await;
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&queue)
        .arg(GROUP)
        .arg("ghost-idle")
        .query_async(&mut redis)
        .await?;
    // An entry pending for a stopped process: added and read in one transaction, before
    // the live reader (served only after it) can take it.
    let _: redis::Value = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(&queue)
        .arg("*")
        .arg("request_id")
        .arg("orders_not-a-valid-id")
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("ghost-owner")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&queue)
        .arg(">")
        .query_async(&mut redis)
        .await?;

    let left = eventually(Duration::from_secs(10), "ghost-idle removed", || async {
        consumers(&app)
            .await
            .ok()
            .filter(|c| !c.iter().any(|(name, _)| name == "ghost-idle"))
    })
    .await;
    assert!(
        left.contains(&("ghost-owner".to_owned(), 1)),
        "the owner of a pending entry is kept: {left:?}"
    );
    // Once the entry is taken over (after claim_idle_ms) and settled, its old owner goes too.
    let left = eventually(Duration::from_secs(20), "ghost-owner removed", || async {
        consumers(&app)
            .await
            .ok()
            .filter(|c| c.iter().all(|(name, _)| !name.starts_with("ghost-")))
    })
    .await;
    assert_eq!(left.len(), 1, "the live reader stays: {left:?}");
    eventually(Duration::from_secs(10), "the entry settled", || async {
        app.queue_len("orders").await.ok().filter(|n| *n == 0)
    })
    .await;
    let dead: u64 = redis
        .xlen(keys().dead_letters(&workflow_named("orders")?))
        .await?;
    assert_eq!(
        dead, 1,
        "the unreadable entry went to the dead letters, not lost"
    );
    Ok(())
}
