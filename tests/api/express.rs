//! EXPRESS state machines, which a second start of a name starts again: stepgate refuses an
//! EXPRESS workflow that does not state the guarantee it accepts, and honours the one it
//! states when a start's outcome is unknown. (moto reports the type but cannot reproduce
//! the duplicate itself: these tests check stepgate's decision, not AWS.)

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Proxy, RedisServer, TestApp, TestResult, create_express_state_machine, partners, request_id_of,
    sfn_client, spawn_app_with,
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
    let records = app.decision_records().await?;
    let events: Vec<&str> = records.iter().filter_map(|r| r["event"].as_str()).collect();
    assert_eq!(events, ["accepted", "failed"], "{records:?}");
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
    // Each retry after an unknown outcome may have started a second execution: counted.
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let counted = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(r#"stepgate_possible_duplicate_starts_total{workflow="orders"} "#)
        })
        .and_then(|value| value.trim().parse::<f64>().ok());
    assert!(counted.is_some_and(|n| n >= 1.0), "{metrics}");
    Ok(())
}
