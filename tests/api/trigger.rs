//! The trigger path end to end: IdP token → policy → Redis → drain → Step Functions.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestResult, executions, header, partners, request_id_of, spawn_app};

#[tokio::test]
async fn a_token_from_the_idp_starts_an_execution_with_exactly_the_callers_input() -> TestResult {
    let app = spawn_app().await?;
    let token = partners().idp.billing_token().await?;
    let input = json!({"order_id": "A-1001", "amount_cents": 4200, "items": [{"sku": "x", "qty": 2}], "note": "ünïcode ✓"});

    let response = app
        .trigger("orders", &token, &json!({ "input": input }))
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let accepted: Value = response.json().await?;
    let request_id = accepted["request_id"].as_str().ok_or("no request_id")?;
    assert_eq!(accepted["status"], "queued");
    assert_eq!(accepted["status_url"], format!("/v1/requests/{request_id}"));
    assert_eq!(location.as_deref(), accepted["status_url"].as_str());

    let status = app.settled_status(request_id, &token).await;
    assert_eq!(status["status"], "started", "{status}");
    let execution_arn = status["execution_arn"].as_str().ok_or("no execution_arn")?;
    assert!(
        execution_arn.ends_with(&format!(":{request_id}")),
        "the execution is named after the request"
    );

    let started = executions(&app.sfn, &app.state_machine_arn).await?;
    assert_eq!(started.len(), 1, "exactly one execution: {started:?}");
    assert_eq!(started[0].0, execution_arn);
    assert_eq!(serde_json::from_str::<Value>(&started[0].1)?, input);

    let decisions: Vec<Value> = app
        .decision_records()
        .await?
        .into_iter()
        .map(|r| r["event"].clone())
        .collect();
    assert_eq!(decisions, vec![json!("accepted"), json!("started")]);
    Ok(())
}

#[tokio::test]
async fn the_input_reaches_step_functions_byte_for_byte() -> TestResult {
    let app = spawn_app().await?;
    let token = partners().idp.billing_token().await?;
    // Spacing and key order a re-serialization would change.
    let raw_input = r#"{ "z": 1,  "a": [1.50, 2e3] }"#;
    let body = format!(r#"{{"input": {raw_input}}}"#);
    let response = app
        .http
        .post(app.url("/v1/workflows/orders/executions"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let request_id = request_id_of(response).await?;
    assert_eq!(
        app.settled_status(&request_id, &token).await["status"],
        "started"
    );
    let started = executions(&app.sfn, &app.state_machine_arn).await?;
    assert_eq!(
        started.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(),
        vec![raw_input]
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_input_starts_with_an_empty_object() -> TestResult {
    let app = spawn_app().await?;
    let token = partners().idp.billing_token().await?;
    let response = app.trigger("orders", &token, &json!({})).await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let request_id = request_id_of(response).await?;
    assert_eq!(
        app.settled_status(&request_id, &token).await["status"],
        "started"
    );
    assert_eq!(
        executions(&app.sfn, &app.state_machine_arn).await?[0].1,
        "{}"
    );
    Ok(())
}

#[tokio::test]
async fn a_policy_denied_caller_gets_403_and_leaves_a_denied_record() -> TestResult {
    let app = spawn_app().await?;
    // reporting-service is a real client of the IdP, but the policy allows only billing-service.
    let token = partners().idp.denied_token().await?;

    let response = app.trigger("orders", &token, &json!({"input": {}})).await?;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let challenge = header(&response, "www-authenticate");
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains(r#"error="insufficient_scope""#),
        "{challenge}"
    );
    assert_eq!(
        header(&response, "content-type"),
        "application/problem+json"
    );
    let problem: Value = response.json().await?;
    assert_eq!(problem["code"], "insufficient_scope");
    assert_eq!(problem["status"], 403);

    let records = app.decision_records().await?;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["event"], "denied");
    assert_eq!(records[0]["workflow"], "orders");
    assert_eq!(records[0]["subject"], "reporting-service");
    assert!(
        records[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("client")
    );
    let queued = app.queue_len("orders").await?;
    assert_eq!(queued, 0, "nothing reaches the queue");
    Ok(())
}

#[tokio::test]
async fn an_unknown_workflow_answers_exactly_like_a_forbidden_one() -> TestResult {
    let app = spawn_app().await?;
    let denied = partners().idp.denied_token().await?;
    let allowed = partners().idp.billing_token().await?;

    let forbidden = app.trigger("orders", &denied, &json!({})).await?;
    let unknown = app
        .trigger("no-such-workflow", &allowed, &json!({}))
        .await?;
    let unsafe_name = app.trigger("..%2F..%2Fetc", &allowed, &json!({})).await?;
    let shape = |r: &reqwest::Response| {
        (
            r.status(),
            r.headers().get("www-authenticate").cloned(),
            r.headers().get("content-type").cloned(),
        )
    };
    assert_eq!(shape(&unknown), shape(&forbidden));
    assert_eq!(shape(&unsafe_name), shape(&forbidden));
    let (forbidden, unknown): (Value, Value) = (forbidden.json().await?, unknown.json().await?);
    assert_eq!(unknown, forbidden);
    Ok(())
}

#[tokio::test]
async fn only_the_creator_may_read_a_request() -> TestResult {
    let app = spawn_app().await?;
    let token = partners().idp.billing_token().await?;
    let response = app
        .trigger("orders", &token, &json!({"input": {"a": 1}}))
        .await?;
    let request_id = request_id_of(response).await?;

    let other = partners().idp.denied_token().await?;
    let peek = app.request_status(&request_id, &other).await?;
    assert_eq!(peek.status(), StatusCode::NOT_FOUND);
    assert_eq!(peek.json::<Value>().await?["code"], "not_found");

    let own = app.request_status(&request_id, &token).await?;
    assert_eq!(own.status(), StatusCode::OK);
    let status: Value = own.json().await?;
    assert_eq!(status["request_id"], request_id.as_str());
    assert_eq!(status["workflow"], "orders");
    assert!(
        status["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    for unknown in [
        "orders_0192f5c4e3b87d8e9a6b1c2d3e4f5a6b",
        "nope",
        "other_0192f5c4e3b87d8e9a6b1c2d3e4f5a6b",
    ] {
        assert_eq!(
            app.request_status(unknown, &token).await?.status(),
            StatusCode::NOT_FOUND,
            "{unknown}"
        );
    }
    Ok(())
}
