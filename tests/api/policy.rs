//! Policies beyond the first allow rule: deny rules win; inputs must fit the workflow.

use reqwest::StatusCode;
use serde_json::{Value, json};

use stepgate::testing::TestConfig;

use crate::support::{
    RedisServer, TestResult, header, keys, partners, spawn_app_with, workflow_named,
};

#[tokio::test]
async fn a_matching_deny_rule_wins_over_allow() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), |config| {
        config.set("worker.enabled", false).push(
            "workflows.orders.deny",
            json!({"claims": [{"path": "scope", "glob": "*workflows:read*"}]}),
        )
    })
    .await?;
    let idp = &partners().idp;
    let narrow = idp
        .token("billing-service", "billing-secret", "workflows:trigger")
        .await?;
    let broad = idp
        .token(
            "billing-service",
            "billing-secret",
            "workflows:trigger workflows:read",
        )
        .await?;

    assert_eq!(
        app.trigger("orders", &narrow, &json!({})).await?.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        app.trigger("orders", &broad, &json!({})).await?.status(),
        StatusCode::FORBIDDEN
    );
    let records = app.decision_records().await?;
    let denied: Vec<&Value> = records.iter().filter(|r| r["event"] == "denied").collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["reason"], "deny rule 0 matched");
    Ok(())
}

/// The drain off, and a workflow `payments` with an input schema and size limit, open to
/// clients named `billing-…`.
fn payments(config: TestConfig) -> TestConfig {
    let arn = config.orders_arn();
    let schema = json!({
        "type": "object",
        "required": ["order_id", "amount_cents"],
        "additionalProperties": false,
        "properties": {
            "order_id": {"type": "string", "pattern": "^[A-Z]-[0-9]+$"},
            "amount_cents": {"type": "integer", "minimum": 1},
            "items": {"type": "array", "items": {"type": "object", "required": ["sku"]}}
        }
    });
    config
        .set("worker.enabled", false)
        .set("workflows.payments.state_machine_arn", arn)
        .set("workflows.payments.max_input_bytes", 200)
        .set("workflows.payments.input_schema", schema.to_string())
        .set(
            "workflows.payments.allow",
            json!([{"clients": ["billing-service"], "claims": [{"path": "client_id", "prefix": "billing-"}]}]),
        )
}

#[tokio::test]
async fn inputs_that_fail_the_schema_get_422_naming_each_failing_path() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), payments).await?;
    let token = partners().idp.billing_token().await?;

    let valid = json!({"input": {"order_id": "A-1", "amount_cents": 100, "items": [{"sku": "x"}]}});
    assert_eq!(
        app.trigger("payments", &token, &valid).await?.status(),
        StatusCode::ACCEPTED
    );

    let invalid = json!({"input": {"order_id": "a1", "amount_cents": 0, "items": [{"qty": 1}], "extra": true}});
    let response = app.trigger("payments", &token, &invalid).await?;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        header(&response, "content-type"),
        "application/problem+json"
    );
    let problem: Value = response.json().await?;
    assert_eq!(problem["code"], "invalid_input");
    let mut paths: Vec<&str> = problem["errors"]
        .as_array()
        .ok_or("no errors")?
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        vec!["", "/amount_cents", "/items/0", "/order_id"],
        "{problem}"
    );

    let oversized =
        json!({"input": {"order_id": format!("A-{}", "1".repeat(300)), "amount_cents": 1}});
    let response = app.trigger("payments", &token, &oversized).await?;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let queued = app.queue_len("payments").await?;
    assert_eq!(queued, 1, "only the valid input was queued");
    Ok(())
}

#[tokio::test]
async fn callers_see_only_the_workflows_they_may_trigger_with_their_schemas() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), payments).await?;
    let list = |token: String| {
        let request = app
            .http
            .get(app.url("/v1/workflows"))
            .bearer_auth(token)
            .send();
        async move { request.await?.json::<Value>().await }
    };
    let billing = list(partners().idp.billing_token().await?).await?;
    let names: Vec<&str> = billing["workflows"]
        .as_array()
        .ok_or("no list")?
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(names, vec!["orders", "payments"]);
    assert_eq!(
        billing["workflows"][1]["input_schema"]["required"],
        json!(["order_id", "amount_cents"])
    );
    assert_eq!(billing["workflows"][1]["max_input_bytes"], 200);
    assert_eq!(
        billing["workflows"][0]["trigger_url"],
        "/v1/workflows/orders/executions"
    );

    let reporting = list(partners().idp.denied_token().await?).await?;
    assert_eq!(reporting, json!({"workflows": []}));
    Ok(())
}

#[tokio::test]
async fn policy_explain_verifies_a_real_token_and_shows_every_rule() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), payments).await?;
    let explain = |workflow: &str, token: String| -> TestResult<(bool, String)> {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stepgate"))
            // Never the instance metadata service (a non-loopback address) from a test.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args([
                "policy",
                "explain",
                "--workflow",
                workflow,
                "--token",
                "-",
                "--config",
            ])
            .arg(&app.config_path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .ok_or("stdin")?
            .write_all(token.as_bytes())?;
        let output = child.wait_with_output()?;
        Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ))
    };
    let (allowed, text) = explain("payments", partners().idp.billing_token().await?)?;
    assert!(allowed && text.contains("ALLOWED by allow[0]"), "{text}");
    let (allowed, text) = explain("orders", partners().idp.denied_token().await?)?;
    assert!(
        !allowed
            && text.contains("DENIED")
            && text.contains("allow[0]: does not match (client, scope workflows:trigger)"),
        "{text}"
    );
    let (allowed, text) = explain("orders", "forged.token.here".into())?;
    assert!(!allowed && text.contains("token refused"), "{text}");
    Ok(())
}

/// An app whose `payouts` workflow takes one-time tokens only (its drain off).
pub(crate) async fn one_time_token_app() -> TestResult<crate::support::TestApp> {
    spawn_app_with(RedisServer::start(), |config| {
        let arn = config.orders_arn();
        config
            .set("worker.enabled", false)
            .workflow("payouts", &arn)
            .set("workflows.payouts.one_time_tokens", true)
    })
    .await
}

#[tokio::test]
async fn a_one_time_token_triggers_once_and_is_refused_after() -> TestResult {
    let app = one_time_token_app().await?;
    let idp = &partners().idp;
    let token = idp.billing_token().await?;

    assert_eq!(
        app.trigger("payouts", &token, &json!({})).await?.status(),
        StatusCode::ACCEPTED
    );
    let replay = app.trigger("payouts", &token, &json!({})).await?;
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    assert!(
        crate::support::header(&replay, "www-authenticate").contains(r#"error="invalid_token""#)
    );
    // Other workflows are not one-time; a fresh token works again.
    assert_eq!(
        app.trigger("orders", &token, &json!({})).await?.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        app.trigger("payouts", &idp.billing_token().await?, &json!({}))
            .await?
            .status(),
        StatusCode::ACCEPTED
    );

    // The marker expires with the token, and holds only a digest of it.
    let mut redis = app.redis.connection().await?;
    let markers: Vec<String> = redis::cmd("KEYS")
        .arg(keys().used_token(&workflow_named("payouts")?, "*"))
        .query_async(&mut redis)
        .await?;
    assert_eq!(markers.len(), 2);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&markers[0])
        .query_async(&mut redis)
        .await?;
    assert!(
        (500..=640).contains(&ttl),
        "about the token's 600 s life plus leeway: {ttl}"
    );

    let refusals: Vec<Value> = app
        .decision_records()
        .await?
        .into_iter()
        .filter(|r| r["event"] == "auth_failed")
        .collect();
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0]["reason"], "one-time token was used before");
    assert_eq!(refusals[0]["workflow"], "payouts");
    Ok(())
}
