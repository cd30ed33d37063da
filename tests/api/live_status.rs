//! `GET /v1/requests/{id}` shows a started execution's live state from `DescribeExecution`,
//! reused from Redis within `server.live_status_ttl_ms` and for good once it has ended.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Proxy, RedisServer, TestResult, create_state_machine_from, eventually, partners, sfn_client,
    spawn_app_with, unique_name,
};

#[tokio::test]
async fn a_started_request_shows_its_execution_state_cached_briefly() -> TestResult {
    // An execution that stays RUNNING for 3 s, then SUCCEEDED.
    let sfn = sfn_client().await;
    let waiting = create_state_machine_from(
        &sfn,
        &unique_name("waits"),
        r#"{"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 3, "End": true}}}"#,
    )
    .await?;
    // Every Step Functions call passes this proxy, so the test can count DescribeExecution.
    let proxy = Proxy::start(&partners().sfn_endpoint).await?;
    let app = spawn_app_with(RedisServer::start(), |config| {
        config
            .set("aws.endpoint_url", proxy.url.clone())
            .set_ms("server.live_status_ttl_ms", Duration::from_millis(500))
            .workflow("waits", &waiting)
    })
    .await?;
    let describes = || {
        proxy
            .sent()
            .matches("AWSStepFunctions.DescribeExecution")
            .count()
    };
    let token = partners().idp.billing_token().await?;
    let response = app
        .http
        .post(app.url("/v1/workflows/waits/executions"))
        .bearer_auth(&token)
        .json(&json!({"input": {"n": 1}}))
        .send()
        .await?;
    let request_id = response.json::<Value>().await?["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let started = app.settled_status(&request_id, &token).await;
    assert_eq!(started["status"], "started");
    assert_eq!(started["execution_status"], "RUNNING", "{started}");
    let after_first = describes();
    assert_eq!(after_first, 1);

    // Polled again within the expiry: answered from Redis.
    for _ in 0..5 {
        let status = status_of(&app, &request_id, &token).await?;
        assert_eq!(status["execution_status"], "RUNNING");
    }
    assert_eq!(
        describes(),
        1,
        "no DescribeExecution within live_status_ttl_ms"
    );

    // After the expiry: asked again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let status = status_of(&app, &request_id, &token).await?;
    assert_eq!(status["execution_status"], "RUNNING");
    assert_eq!(describes(), 2, "asked again once the cached state expired");

    let ended = eventually(
        Duration::from_secs(15),
        "the execution to succeed",
        || async {
            let status = status_of(&app, &request_id, &token).await.ok()?;
            (status["execution_status"] == "SUCCEEDED").then_some(status)
        },
    )
    .await;
    assert_eq!(ended["status"], "started");
    // An ended state never changes: kept, not asked again.
    let asked = describes();
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..3 {
        let status = status_of(&app, &request_id, &token).await?;
        assert_eq!(status["execution_status"], "SUCCEEDED");
    }
    assert_eq!(describes(), asked);
    Ok(())
}

async fn status_of(
    app: &crate::support::TestApp,
    request_id: &str,
    token: &str,
) -> TestResult<Value> {
    Ok(app.request_status(request_id, token).await?.json().await?)
}
