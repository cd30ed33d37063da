//! Correlation: the `x-request-id` a caller sends (or the one stepgate sets) is echoed and
//! lands in every audit record of the request, `started` included; an X-Ray trace header
//! reaches `StartExecution`.

use serde_json::json;

use crate::support::{
    Proxy, RedisServer, TestResult, header, partners, request_id_of, spawn_app_with,
};

#[tokio::test]
async fn request_ids_reach_the_audit_and_trace_headers_reach_step_functions() -> TestResult {
    let proxy = Proxy::start(&partners().sfn_endpoint).await?;
    let app = spawn_app_with(RedisServer::start(), |config| {
        config.set("aws.endpoint_url", proxy.url.clone())
    })
    .await?;
    let idp = &partners().idp;
    let token = idp.billing_token().await?;
    let trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let response = app
        .http
        .post(app.url("/v1/workflows/orders/executions"))
        .bearer_auth(&token)
        .header("x-request-id", "req-7f3a")
        .header("X-Amzn-Trace-Id", trace)
        .json(&json!({"input": {"n": 1}}))
        .send()
        .await?;
    assert_eq!(header(&response, "x-request-id"), "req-7f3a");
    let request_id = request_id_of(response).await?;
    assert_eq!(
        app.settled_status(&request_id, &token).await["status"],
        "started"
    );
    assert!(
        proxy
            .sent()
            .contains(&format!("\"traceHeader\":\"{trace}\"")),
        "StartExecution carries the trace header"
    );

    // No x-request-id sent: the one stepgate sets is echoed and recorded.
    let denied = idp.denied_token().await?;
    let refused = app.trigger("orders", &denied, &json!({})).await?;
    let generated = header(&refused, "x-request-id");
    assert_eq!(generated.len(), 36, "a UUID: {generated}");

    let records = app.decision_records().await?;
    let of = |event: &str| {
        records
            .iter()
            .find(|r| r["event"] == event)
            .map(|r| r["http_request_id"].clone())
    };
    assert_eq!(of("accepted"), Some(json!("req-7f3a")));
    assert_eq!(
        of("started"),
        Some(json!("req-7f3a")),
        "carried through the queue"
    );
    assert_eq!(of("denied"), Some(json!(generated)));
    Ok(())
}
