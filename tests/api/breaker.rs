//! The circuit breaker: when Step Functions cannot be reached, the drain stops calling it,
//! entries wait in Redis (not failed), and a probe closes the breaker once it answers again.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Proxy, RedisServer, TestApp, TestResult, eventually, executions, partners, spawn_app_with,
};

pub async fn circuit(app: &TestApp) -> Option<Value> {
    let ready: Value = app
        .http
        .get(app.ops_url("/readyz"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    ready["circuits"]
        .as_array()?
        .iter()
        .find(|c| {
            c["state_machine"]
                .as_str()
                .is_some_and(|name| app.state_machine_arn.ends_with(&format!(":{name}")))
        })
        .cloned()
}

#[tokio::test]
async fn the_breaker_opens_holds_entries_in_redis_and_closes_when_the_service_is_back() -> TestResult
{
    let proxy = Proxy::start(&partners().sfn_endpoint).await?;
    proxy.down();
    let app = spawn_app_with(RedisServer::start(), |config| {
        config
            .set("aws.endpoint_url", proxy.url.clone())
            .set("worker.breaker.failure_threshold", 3)
            .set_ms("worker.breaker.open_ms", Duration::from_millis(1500))
            .set_ms("worker.breaker.max_open_ms", Duration::from_millis(1500))
            .set("server.ops_listen", "127.0.0.1:0")
    })
    .await?;
    let token = partners().idp.billing_token().await?;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(app.accept(&token, &json!({ "n": n })).await?);
    }

    // Opens after 3 consecutive failures...
    eventually(Duration::from_secs(10), "the breaker to open", || async {
        (circuit(&app).await?["state"] == "open").then_some(())
    })
    .await;
    let ready = app.http.get(app.ops_url("/readyz")).send().await?;
    assert_eq!(
        ready.status(),
        200,
        "an open breaker does not make the gateway unready"
    );

    // ...and while open, the drain leaves Step Functions alone: at most the probes (one per
    // 1.5 s opening) reach it, where 5 retrying entries would otherwise call several times a
    // second.
    let before = proxy.connections();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = proxy.connections() - before;
    assert!(during <= 3, "{during} connections while open");

    // The entries wait: neither failed nor dead-lettered.
    for id in &ids {
        let status: Value = app.request_status(id, &token).await?.json().await?;
        assert_eq!(status["status"], "queued", "{status}");
    }
    assert!(app.reasons("dead_lettered").await?.is_empty());

    // Back up: a probe succeeds, the breaker closes, everything starts, once.
    proxy.up();
    for id in &ids {
        let status = app.settled_status(id, &token).await;
        assert_eq!(status["status"], "started", "{status}");
    }
    let state = circuit(&app).await.ok_or("no circuit")?;
    assert_eq!(state["state"], "closed", "{state}");
    assert_eq!(executions(&app.sfn, &app.state_machine_arn).await?.len(), 5);
    Ok(())
}
