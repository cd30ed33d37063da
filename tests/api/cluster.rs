//! The whole request path on a 3-node Redis Cluster: every script's keys share a slot
//! (hash tags), and the caller-wide limit lives in the caller's own slot.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    RedisCluster, RedisServer, TestResult, partners, request_id_of, spawn_app_with,
    state_machine_arn, unique_name,
};

#[tokio::test]
async fn triggers_limits_deferral_and_dead_letters_work_on_a_redis_cluster() -> TestResult {
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    let missing = state_machine_arn(&unique_name("refunds"));
    // The app's own standalone server stays unused.
    let app = spawn_app_with(RedisServer::start(), |config| {
        config
            .redis_cluster(&urls)
            .set(
                "rate_limits.per_caller",
                json!({"requests": 4, "per_seconds": 60}),
            )
            .workflow("refunds", &missing)
    })
    .await?;
    let token = partners().idp.billing_token().await?;

    let now = app.accept(&token, &json!({"at": "once"})).await?;
    let later = app
        .trigger(
            "orders",
            &token,
            &json!({"input": {"at": "later"}, "delay_seconds": 1}),
        )
        .await?;
    assert_eq!(later.status(), StatusCode::ACCEPTED);
    let later = request_id_of(later).await?;
    let refund = app
        .trigger("refunds", &token, &json!({"input": {"refund": 1}}))
        .await?;
    assert_eq!(refund.status(), StatusCode::ACCEPTED);
    let refund = request_id_of(refund).await?;
    let fourth = app.trigger("orders", &token, &json!({})).await?;
    assert_eq!(fourth.status(), StatusCode::ACCEPTED);
    let fifth = app.trigger("orders", &token, &json!({})).await?;
    assert_eq!(
        fifth.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the caller-wide limit holds across workflows"
    );

    for id in [&now, &later] {
        let status = app.settled_status(id, &token).await;
        assert_eq!(status["status"], "started", "{status}");
    }
    let status = app.settled_status(&refund, &token).await;
    assert_eq!(status["status"], "dead_lettered", "{status}");
    let listed = app.stepgate(&["dlq", "list", "--workflow", "refunds", "--json"])?;
    let listed: Value = serde_json::from_slice(&listed.stdout)?;
    assert_eq!(listed["id"], refund.as_str());

    // Everything recorded so far is in Redis before the trail is checked.
    app.audit_records().await?;
    let verified = app.stepgate(&["audit", "verify"])?;
    assert!(verified.status.success(), "{verified:?}");
    Ok(())
}
