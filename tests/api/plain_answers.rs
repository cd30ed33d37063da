//! Every error a client can get is RFC 9457 problem+json with a stable `code`, in the API's
//! own terms; an idempotent retry is recognised by what it means and marked; one request can
//! be traced through the audit API.

use reqwest::StatusCode;
use serde_json::{Value, json};

use stepgate::testing::TestConfig;

use crate::support::{
    RedisServer, TestApp, TestResult, header, partners, request_id_of, spawn_app_with,
};

/// The problem's `code`, after checking the response is a problem document.
async fn problem_code(response: reqwest::Response) -> TestResult<(StatusCode, String, Value)> {
    let status = response.status();
    let content_type = header(&response, "content-type");
    let problem: Value = response.json().await?;
    assert_eq!(content_type, "application/problem+json", "{problem}");
    assert_eq!(problem["status"], status.as_u16(), "{problem}");
    let code = problem["code"].as_str().unwrap_or_default().to_owned();
    Ok((status, code, problem))
}

/// `POST` of raw `body` to `workflow`'s trigger, with extra headers.
async fn post_raw(
    app: &TestApp,
    workflow: &str,
    token: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> TestResult<reqwest::Response> {
    let mut request = app
        .http
        .post(app.url(&format!("/v1/workflows/{workflow}/executions")))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Ok(request.send().await?)
}

/// The drain off, and a workflow `small` taking inputs of 16 bytes at most.
fn small_workflow(config: TestConfig) -> TestConfig {
    let arn = config.orders_arn();
    config
        .set("worker.enabled", false)
        .workflow("small", &arn)
        .set("workflows.small.max_input_bytes", 16)
}

#[tokio::test]
async fn every_error_is_a_problem_in_the_apis_own_terms() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), small_workflow).await?;
    let token = partners().idp.billing_token().await?;

    let (status, code, _) =
        problem_code(app.http.get(app.url("/v1/nowhere")).send().await?).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    let undecodable = app
        .http
        .get(app.url("/v1/requests/%FF%FE"))
        .bearer_auth(&token)
        .send()
        .await?;
    let (status, code, _) = problem_code(undecodable).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );

    let wrong_method = app
        .http
        .delete(app.url("/v1/workflows/orders/executions"))
        .bearer_auth(&token)
        .send()
        .await?;
    let allow = header(&wrong_method, "allow");
    let (status, code, _) = problem_code(wrong_method).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    assert!(allow.contains("POST"), "Allow: {allow}");

    for (body, member) in [
        (r#"{"delay_seconds": -5}"#, "delay_seconds"),
        (r#"{"delay_seconds": "soon"}"#, "delay_seconds"),
        (r#"{"not_before": 1764045212}"#, "not_before"),
        ("[]", "JSON object"),
    ] {
        let (status, code, problem) =
            problem_code(post_raw(&app, "orders", &token, body, &[]).await?).await?;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_body"),
            "{body}"
        );
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(member), "{body}: {detail}");
        for rust in ["u64", "i64", "struct", "Option"] {
            assert!(!detail.contains(rust), "{body}: {detail}");
        }
    }

    let (status, code, problem) = problem_code(
        post_raw(
            &app,
            "small",
            &token,
            r#"{"input": {"much": "more than sixteen bytes"}}"#,
            &[],
        )
        .await?,
    )
    .await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "input_too_large")
    );
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("input") && detail.contains("16") && !detail.contains("body"),
        "{detail}"
    );

    let (status, code, _) = problem_code(
        post_raw(
            &app,
            "orders",
            &token,
            "{}",
            &[("idempotency-key", "has spaces in it")],
        )
        .await?,
    )
    .await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_idempotency_key")
    );
    Ok(())
}

#[tokio::test]
async fn a_retry_is_recognised_by_its_meaning_and_answered_with_the_current_status() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), |config| config).await?;
    let token = partners().idp.billing_token().await?;
    let key = [("idempotency-key", "order-A-1001")];
    let first = post_raw(&app, "orders", &token, r#"{"input":{"id":1}}"#, &key).await?;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let request_id = request_id_of(first).await?;
    let started = app.settled_status(&request_id, &token).await;
    assert_eq!(started["status"], "started", "{started}");

    // The envelope re-serialized (spacing, member order), the input's bytes the same.
    let retry = post_raw(&app, "orders", &token, "{ \"input\": {\"id\":1} }\n", &key).await?;
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&retry, "idempotent-replayed"), "true");
    let answer: Value = retry.json().await?;
    assert_eq!(answer["request_id"], request_id.as_str(), "{answer}");
    assert_eq!(
        answer["status"], "started",
        "the request as it is now: {answer}"
    );

    // Another input (even only its spacing: it reaches Step Functions byte for byte), or
    // another timing, is another request.
    for other in [
        r#"{"input":{"id": 1}}"#,
        r#"{"input":{"id":1},"delay_seconds":60}"#,
    ] {
        let refused = post_raw(&app, "orders", &token, other, &key).await?;
        assert_eq!(
            refused.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{other}"
        );
    }
    Ok(())
}

/// An app whose audit readers and admins are `billing-service`.
fn readers(config: TestConfig) -> TestConfig {
    config
        .set("worker.enabled", false)
        .push(
            "audit_readers.allow",
            json!({"clients": ["billing-service"]}),
        )
        .push("admin.allow", json!({"clients": ["billing-service"]}))
}

async fn read_audit(app: &TestApp, token: &str, query: &str) -> TestResult<reqwest::Response> {
    Ok(app
        .http
        .get(app.url(&format!("/v1/audit?{query}")))
        .bearer_auth(token)
        .send()
        .await?)
}

async fn records(app: &TestApp, token: &str, query: &str) -> TestResult<Vec<Value>> {
    let response = read_audit(app, token, query).await?;
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    let page: Value = response.json().await?;
    Ok(page["records"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|entry| entry["record"].clone())
        .collect())
}

#[tokio::test]
async fn one_request_can_be_traced_through_the_audit_api() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), readers).await?;
    let token = partners().idp.billing_token().await?;
    let reporting = partners().idp.denied_token().await?;
    let first = app.accept(&token, &json!({"n": 1})).await?;
    let _second = app.accept(&token, &json!({"n": 2})).await?;
    let long_name = "ghost".repeat(30);
    for workflow in ["ghost", long_name.as_str()] {
        let refused = app.trigger(workflow, &token, &json!({})).await?;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }
    let not_admin = app
        .http
        .get(app.url("/v1/admin/workflows/orders/dead-letters"))
        .bearer_auth(&reporting)
        .send()
        .await?;
    assert_eq!(not_admin.status(), StatusCode::FORBIDDEN);
    app.audit_records().await?;

    // A misspelt filter is refused, never ignored.
    let (status, code, problem) =
        problem_code(read_audit(&app, &token, &format!("requestid={first}")).await?).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_parameter"),
        "{problem}"
    );
    let (status, _, _) = problem_code(read_audit(&app, &token, "limit=1&limit=2").await?).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let traced = records(&app, &token, &format!("request_id={first}")).await?;
    assert_eq!(traced.len(), 1, "{traced:?}");
    assert_eq!(traced[0]["event"], "accepted");

    let denied_or_accepted = records(&app, &token, "event=accepted&event=denied").await?;
    let events: Vec<&str> = denied_or_accepted
        .iter()
        .filter_map(|r| r["event"].as_str())
        .collect();
    assert_eq!(
        events.iter().filter(|e| **e == "accepted").count(),
        2,
        "{events:?}"
    );
    assert!(events.contains(&"denied"), "{events:?}");
    let same = records(&app, &token, "event=accepted,denied").await?;
    assert_eq!(same.len(), denied_or_accepted.len());

    let denied = records(&app, &token, "event=denied").await?;
    let requested: Vec<&str> = denied
        .iter()
        .filter_map(|r| r["requested"].as_str())
        .collect();
    assert!(requested.contains(&"ghost"), "{denied:?}");
    let truncated = format!("{}…", &long_name[..64]);
    assert!(requested.contains(&truncated.as_str()), "{denied:?}");
    assert!(
        requested.contains(&"orders"),
        "the admin API's refusal: {denied:?}"
    );
    assert!(
        denied
            .iter()
            .all(|r| r["requested"].is_null() || r["workflow"].is_null()),
        "a name is either configured or only requested: {denied:?}"
    );
    Ok(())
}
