//! EXPRESS state machines, which a second start of a name starts again: stepgate refuses an
//! EXPRESS workflow that does not state the guarantee it accepts, and honours the one it
//! states when a start's outcome is unknown. (moto reports the type but cannot reproduce
//! the duplicate itself: these tests check stepgate's decision, not AWS.)

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};

use crate::support::{
    Proxy, RedisServer, TestApp, TestResult, create_express_state_machine, keys, partners,
    request_id_of, sfn_client, spawn_app_with,
};

/// An app whose `orders` workflow runs on a fresh EXPRESS state machine with `delivery`,
/// reached through a proxy that can cut Step Functions off mid-call.
async fn express_app(delivery: &str) -> TestResult<(TestApp, Proxy)> {
    let proxy = Proxy::start(&partners().sfn_endpoint).await?;
    let express = create_express_state_machine(&sfn_client().await).await?;
    let url = proxy.url.clone();
    let app = spawn_app_with(RedisServer::start(), |config| {
        config
            .set("aws.endpoint_url", url)
            .set("workflows.orders.state_machine_arn", express)
            .set("workflows.orders.delivery", delivery)
    })
    .await?;
    Ok((app, proxy))
}

#[tokio::test]
async fn an_express_workflow_without_a_guarantee_is_refused_at_start() -> TestResult {
    let mut app = spawn_app_with(RedisServer::start(), |config| config).await?;
    let express = create_express_state_machine(&app.sfn).await?;
    app.stop().await;
    let arn = express.clone();
    app.reconfigure(move |config| config.set("workflows.orders.state_machine_arn", arn))?;
    let refused = app.start().await.err().ok_or("started")?.to_string();
    assert!(
        refused.contains("workflows.orders") && refused.contains("EXPRESS"),
        "{refused}"
    );
    // Exactly once is not a guarantee an EXPRESS state machine can give either.
    let arn = express.clone();
    app.reconfigure(move |config| {
        config
            .set("workflows.orders.state_machine_arn", arn)
            .set("workflows.orders.delivery", "exactly_once")
    })?;
    assert!(app.start().await.is_err());

    let arn = express.clone();
    app.reconfigure(move |config| {
        config
            .set("workflows.orders.state_machine_arn", arn)
            .set("workflows.orders.delivery", "at_least_once")
    })?;
    app.start().await?;
    let token = partners().idp.billing_token().await?;
    let listed: Value = app
        .http
        .get(app.url("/v1/workflows"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        listed["workflows"][0]["delivery"], "at_least_once",
        "{listed}"
    );
    Ok(())
}

/// Triggers `orders` while Step Functions is cut off mid-call; returns the request id.
async fn trigger_during_a_cut(app: &TestApp, proxy: &Proxy) -> TestResult<String> {
    proxy.down();
    let token = partners().idp.billing_token().await?;
    let response = app
        .trigger("orders", &token, &json!({"input": {"n": 1}}))
        .await?;
    request_id_of(response).await
}

#[tokio::test]
async fn at_most_once_a_start_cut_off_mid_call_fails_and_is_never_retried() -> TestResult {
    let (app, proxy) = express_app("at_most_once").await?;
    let request_id = trigger_during_a_cut(&app, &proxy).await?;
    let token = partners().idp.billing_token().await?;
    let status = app.settled_status(&request_id, &token).await;
    assert_eq!(status["status"], "failed", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("outcome_unknown: "), "{error}");
    let calls = proxy.connections();
    proxy.up();
    // Time passing is what is tested: several retry pauses go by with no call.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(proxy.connections(), calls, "never retried");
    assert_eq!(events(&app).await?, ["accepted", "failed"]);
    Ok(())
}

#[tokio::test]
async fn at_least_once_a_start_cut_off_mid_call_is_retried() -> TestResult {
    let (app, proxy) = express_app("at_least_once").await?;
    let request_id = trigger_during_a_cut(&app, &proxy).await?;
    crate::support::eventually(Duration::from_secs(10), "a retried start", || async {
        let records = app.decision_records().await.ok()?;
        records
            .iter()
            .any(|r| r["event"] == "retried")
            .then_some(())
    })
    .await;
    proxy.up();
    let token = partners().idp.billing_token().await?;
    let status = app.settled_status(&request_id, &token).await;
    assert_eq!(status["status"], "started", "{status}");
    // An EXPRESS execution cannot be described: its status is not asked of Step Functions.
    assert!(status.get("execution_status").is_none(), "{status}");
    assert!(!proxy.sent().contains("DescribeExecution"));
    // Each retry after an unknown outcome may have started a second execution: counted.
    let counted = app
        .metric(r#"stepgate_possible_duplicate_starts_total{workflow="orders"}"#)
        .await?;
    assert!(counted.is_some_and(|n| n >= 1.0), "{counted:?}");
    Ok(())
}

/// Triggers `orders` due in a second and leaves `mark` as an earlier delivery's mark of its
/// start, before any delivery can see it; returns the request id.
async fn trigger_marked(app: &TestApp, mark: &str) -> TestResult<String> {
    let token = partners().idp.billing_token().await?;
    let response = app
        .trigger(
            "orders",
            &token,
            &json!({"input": {"n": 1}, "delay_seconds": 1}),
        )
        .await?;
    let request_id = request_id_of(response).await?;
    let id = stepgate::domain::RequestId::parse(&request_id)?;
    let mut redis = app.redis.connection().await?;
    let () = redis.set(keys().attempt(&id), mark).await?;
    Ok(request_id)
}

/// The kinds of the decision records in the trail, in order.
async fn events(app: &TestApp) -> TestResult<Vec<String>> {
    Ok(app
        .decision_records()
        .await?
        .iter()
        .filter_map(|r| r["event"].as_str().map(str::to_owned))
        .collect())
}

/// How many `StartExecution` calls went through `proxy`.
fn starts_sent(proxy: &Proxy) -> usize {
    proxy
        .sent()
        .matches("AWSStepFunctions.StartExecution")
        .count()
}

#[tokio::test]
async fn at_most_once_a_start_marked_by_a_crashed_delivery_is_never_tried() -> TestResult {
    // What a delivery killed between marking its start and calling leaves behind.
    let (app, proxy) = express_app("at_most_once").await?;
    let request_id = trigger_marked(&app, "a-crashed-delivery").await?;
    let token = partners().idp.billing_token().await?;
    let status = app.settled_status(&request_id, &token).await;
    assert_eq!(status["status"], "failed", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("outcome_unknown: "), "{error}");
    assert_eq!(starts_sent(&proxy), 0, "{}", proxy.sent());
    assert_eq!(events(&app).await?, ["deferred", "failed"]);
    Ok(())
}

#[tokio::test]
async fn a_start_that_succeeded_before_a_crash_completes_without_starting_again() -> TestResult {
    // What a delivery killed after its start succeeded, before the completion, leaves.
    for delivery in ["at_most_once", "at_least_once"] {
        let (app, proxy) = express_app(delivery).await?;
        let arn = "arn:aws:states:us-east-1:123456789012:express:orders:earlier:1";
        let request_id = trigger_marked(&app, &format!("started:{arn}")).await?;
        let token = partners().idp.billing_token().await?;
        let status = app.settled_status(&request_id, &token).await;
        assert_eq!(status["status"], "started", "{delivery}: {status}");
        assert_eq!(status["execution_arn"], arn, "{delivery}: {status}");
        assert_eq!(starts_sent(&proxy), 0, "{delivery}: {}", proxy.sent());
        let records = app.decision_records().await?;
        let events: Vec<&str> = records.iter().filter_map(|r| r["event"].as_str()).collect();
        assert_eq!(events, ["deferred", "started"], "{delivery}: {records:?}");
        let started = records.iter().find(|r| r["event"] == "started");
        assert_eq!(started.map(|r| &r["execution_arn"]), Some(&json!(arn)));
    }
    Ok(())
}

#[tokio::test]
async fn a_delivery_can_neither_take_nor_drop_another_deliverys_mark() -> TestResult {
    use stepgate::queue::attempts::{self, EarlierAttempt};
    let app = crate::support::spawn_app_without_drain().await?;
    let config = stepgate::config::Config::load(&app.config_path)?;
    let endpoint = stepgate::redis_conn::RedisEndpoint::from_config(&config.redis)?;
    let mut redis = endpoint.connect(Duration::from_secs(2)).await?;
    let id = stepgate::domain::RequestId::generate(crate::support::workflow_named("orders")?);
    let keys = keys();
    // At most once: the first delivery marks; a second one, at once or later, may not call.
    let first = attempts::mark(&mut redis, &keys, &id, "first", true).await?;
    assert_eq!(first, EarlierAttempt::None);
    let second = attempts::mark(&mut redis, &keys, &id, "second", true).await?;
    assert_eq!(second, EarlierAttempt::Unknown);
    // The second delivery's "not started" must not drop the first one's live mark.
    attempts::clear(&mut redis, &keys, &id, "second").await?;
    let third = attempts::mark(&mut redis, &keys, &id, "third", true).await?;
    assert_eq!(third, EarlierAttempt::Unknown, "the first mark survives");
    attempts::clear(&mut redis, &keys, &id, "first").await?;
    let fourth = attempts::mark(&mut redis, &keys, &id, "fourth", true).await?;
    assert_eq!(fourth, EarlierAttempt::None, "its own delivery dropped it");
    // A delivery's own mark (a clear that failed, a mark whose call timed out after Redis
    // ran it) is no earlier attempt.
    let again = attempts::mark(&mut redis, &keys, &id, "fourth", true).await?;
    assert_eq!(again, EarlierAttempt::None, "its own mark");
    // A start is recorded only over the delivery's own mark.
    attempts::mark_started(&mut redis, &keys, &id, "someone-else", "arn:y").await?;
    let unchanged = attempts::mark(&mut redis, &keys, &id, "probe", true).await?;
    assert_eq!(unchanged, EarlierAttempt::Unknown);
    // At least once takes the mark over, but never one that records a start.
    let again = attempts::mark(&mut redis, &keys, &id, "fifth", false).await?;
    assert_eq!(again, EarlierAttempt::Unknown);
    attempts::mark_started(&mut redis, &keys, &id, "fifth", "arn:x").await?;
    let started = attempts::mark(&mut redis, &keys, &id, "sixth", false).await?;
    assert_eq!(started, EarlierAttempt::Started("arn:x".into()));
    attempts::clear(&mut redis, &keys, &id, "sixth").await?;
    let kept = attempts::mark(&mut redis, &keys, &id, "seventh", true).await?;
    assert_eq!(kept, EarlierAttempt::Started("arn:x".into()));
    // Completed by another delivery (the mark dropped with the entry): a late success of a
    // delivery still calling does not bring the mark back.
    let mut raw = app.redis.connection().await?;
    let () = raw.del(keys.attempt(&id)).await?;
    attempts::mark_started(&mut redis, &keys, &id, "late", "arn:z").await?;
    let exists: bool = raw.exists(keys.attempt(&id)).await?;
    assert!(!exists, "no mark recreated after completion");
    Ok(())
}

#[tokio::test]
async fn a_probe_that_ends_without_a_call_gives_the_breaker_back() -> TestResult {
    let proxy = Proxy::start(&partners().sfn_endpoint).await?;
    let express = create_express_state_machine(&sfn_client().await).await?;
    let url = proxy.url.clone();
    let app = spawn_app_with(RedisServer::start(), |config| {
        config
            .set("aws.endpoint_url", url)
            .set("workflows.orders.state_machine_arn", express)
            .set("workflows.orders.delivery", "at_most_once")
            .set("worker.breaker.failure_threshold", 1)
            .set_ms("worker.breaker.open_ms", Duration::from_millis(300))
            .set_ms("worker.breaker.max_open_ms", Duration::from_millis(300))
    })
    .await?;
    let token = partners().idp.billing_token().await?;
    // A start cut off mid-call opens the breaker (the type is known since start-up).
    let cut = trigger_during_a_cut(&app, &proxy).await?;
    assert_eq!(app.settled_status(&cut, &token).await["status"], "failed");
    proxy.up();
    // The next delivery is the breaker's probe, and it ends without calling: an earlier
    // delivery's mark says its start's outcome is unknown.
    let marked = trigger_marked(&app, "a-crashed-delivery").await?;
    assert_eq!(
        app.settled_status(&marked, &token).await["status"],
        "failed"
    );
    // The probe was given back: the next trigger is delivered.
    let next = app
        .trigger("orders", &token, &json!({"input": {"n": 2}}))
        .await?;
    let next = request_id_of(next).await?;
    let status = app.settled_status(&next, &token).await;
    assert_eq!(status["status"], "started", "{status}");
    Ok(())
}

#[tokio::test]
async fn triggers_wait_while_the_role_may_not_ask_the_state_machines_type() -> TestResult {
    // An upgrade whose role lacks states:DescribeStateMachine: nothing is the triggers' fault.
    let proxy = Proxy::start(&partners().sfn_endpoint).await?;
    proxy.answer_with(Some(crate::support::aws_json_error(
        400,
        "AccessDeniedException",
        "User is not authorized to perform: states:DescribeStateMachine",
    )));
    let url = proxy.url.clone();
    let app = spawn_app_with(RedisServer::start(), |config| {
        config
            .set("aws.endpoint_url", url)
            .set_seconds("worker.retry_max_age_seconds", Duration::from_secs(1))
            .set_ms("worker.breaker.open_ms", Duration::from_millis(300))
            .set_ms("worker.breaker.max_open_ms", Duration::from_millis(300))
    })
    .await?;
    let token = partners().idp.billing_token().await?;
    let id = app.accept(&token, &json!({"n": 1})).await?;
    crate::support::eventually(Duration::from_secs(10), "the type asked again", || async {
        (proxy.sent().matches("DescribeStateMachine").count() >= 2).then_some(())
    })
    .await;
    // Well past retry_max_age_seconds: still waiting, nothing dead-lettered or started.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let status: Value = app.request_status(&id, &token).await?.json().await?;
    assert_eq!(status["status"], "queued", "{status}");
    assert!(app.reasons("dead_lettered").await?.is_empty());
    assert_eq!(starts_sent(&proxy), 0);
    // The permission is granted: the trigger starts, once.
    proxy.answer_with(None);
    let status = app.settled_status(&id, &token).await;
    assert_eq!(status["status"], "started", "{status}");
    Ok(())
}
