//! `GET /metrics`: after some traffic, the families and labels an operator relies on are
//! there, with the values that traffic produced.

use reqwest::StatusCode;

use crate::support::{TestResult, header, partners, spawn_app};

#[tokio::test]
async fn metrics_name_and_label_what_happened() -> TestResult {
    let app = spawn_app().await?;
    let idp = &partners().idp;
    app.one_of_each_decision().await?;

    let response = app.http.get(app.url("/metrics")).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, "content-type").starts_with("application/openmetrics-text"));
    let text = response.text().await?;
    // Counters are per process (other tests in this binary add to them): at least 1.
    let at_least_one = |series: &str| {
        let value = text
            .lines()
            .find_map(|line| line.strip_prefix(series))
            .and_then(|rest| rest.trim().parse::<f64>().ok());
        assert!(
            value.is_some_and(|v| v >= 1.0),
            "{series} missing or 0 in:\n{text}"
        );
    };
    let trigger = r#"route="/v1/workflows/{workflow}/executions",method="POST""#;
    at_least_one(&format!(
        r#"stepgate_http_requests_total{{{trigger},status="202",decision="accepted"}}"#
    ));
    at_least_one(&format!(
        r#"stepgate_http_requests_total{{{trigger},status="403",decision="denied"}}"#
    ));
    at_least_one(&format!(
        r#"stepgate_http_requests_total{{{trigger},status="401",decision="auth_failed"}}"#
    ));
    at_least_one(
        r#"stepgate_http_request_duration_seconds_count{route="/v1/workflows/{workflow}/executions"}"#,
    );
    at_least_one(r#"stepgate_sfn_calls_total{operation="StartExecution",outcome="ok"}"#);
    at_least_one(r#"stepgate_sfn_call_duration_seconds_count{operation="StartExecution"}"#);
    at_least_one(r#"stepgate_executions_started_total{workflow="orders"}"#);
    at_least_one(&format!(
        r#"stepgate_jwks_fetches_total{{issuer="{}",outcome="ok"}}"#,
        idp.issuer
    ));
    at_least_one("stepgate_audit_append_duration_seconds_count");
    at_least_one("stepgate_audit_records_total");
    at_least_one(&format!(
        r#"stepgate_circuit_state{{state_machine="{}",state="closed"}}"#,
        stepgate::worker::breaker::state_machine_name(&app.state_machine_arn)
    ));
    // Read from this app's Redis at scrape time: the started request left nothing behind.
    for gauge in [
        "stepgate_queue_backlog",
        "stepgate_queue_pending",
        "stepgate_queue_deferred",
        "stepgate_dead_letters",
    ] {
        let series = format!(r#"{gauge}{{workflow="orders"}} 0"#);
        assert!(text.lines().any(|l| l == series), "{series} in:\n{text}");
    }
    Ok(())
}
