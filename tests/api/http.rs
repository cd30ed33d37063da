//! The HTTP surface: bodies, probes, the OpenAPI document and the docs page, the CLI.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestResult, header, keys, partners, root, spawn_app, workflow_named};

#[tokio::test]
async fn bodies_are_checked_after_authorization() -> TestResult {
    let app = spawn_app().await?;
    let token = partners().idp.billing_token().await?;
    let url = app.url("/v1/workflows/orders/executions");
    let post = |body: Vec<u8>, content_type: &'static str| {
        app.http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    let oversized = format!(r#"{{"input": {{"blob": "{}"}}}}"#, "x".repeat(256 * 1024));
    let response = post(oversized.into_bytes(), "application/json").await?;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.json::<Value>().await?["code"], "payload_too_large");

    let response = post(b"{not json".to_vec(), "application/json").await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        header(&response, "content-type"),
        "application/problem+json"
    );
    assert_eq!(response.json::<Value>().await?["code"], "invalid_body");

    let response = post(
        br#"{"input": {}, "surprise": 1}"#.to_vec(),
        "application/json",
    )
    .await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let response = post(b"input=1".to_vec(), "application/x-www-form-urlencoded").await?;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // A denied caller is refused before its body is even read.
    let denied = partners().idp.denied_token().await?;
    let huge = vec![b'x'; 512 * 1024];
    let response = app
        .http
        .post(&url)
        .bearer_auth(&denied)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    Ok(())
}

#[tokio::test]
async fn probes_report_liveness_and_readiness() -> TestResult {
    let app = spawn_app().await?;
    let health = app.http.get(app.url("/healthz")).send().await?;
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app.http.get(app.url("/readyz")).send().await?;
    assert_eq!(ready.status(), StatusCode::OK);
    let body: Value = ready.json().await?;
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["redis"], "ok");
    assert_eq!(
        body["checks"][format!("issuer {}", partners().idp.issuer)],
        "ok"
    );
    assert!(
        ready_has_request_id(&app).await?,
        "responses carry x-request-id"
    );
    Ok(())
}

async fn ready_has_request_id(app: &crate::support::TestApp) -> TestResult<bool> {
    let response = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-me")
        .send()
        .await?;
    Ok(response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        == Some("trace-me"))
}

#[tokio::test]
async fn the_committed_openapi_document_is_the_generated_one() -> TestResult {
    let committed = std::fs::read_to_string(root().join("openapi/openapi.json"))?;
    let generated = stepgate::http::openapi::document_json()?;
    assert!(
        committed == generated,
        "openapi/openapi.json is stale: run `cargo run -- openapi --write` and commit it"
    );
    let document: Value = serde_json::from_str(&generated)?;
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1"))
    );
    let trigger = &document["paths"]["/v1/workflows/{workflow}/executions"]["post"];
    assert_eq!(trigger["operationId"], "create_execution");
    assert_eq!(trigger["security"], json!([{"bearer": []}]));
    for status in ["202", "400", "401", "403", "413", "415", "503"] {
        assert!(
            trigger["responses"][status].is_object(),
            "response {status} documented"
        );
    }
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    Ok(())
}

#[tokio::test]
async fn the_served_document_and_the_docs_page() -> TestResult {
    let app = spawn_app().await?;
    let served: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await?
        .json()
        .await?;
    let generated: Value = serde_json::from_str(&stepgate::http::openapi::document_json()?)?;

    // The configured issuer's client-credentials flow, for the docs' "Authorize" dialog.
    let discovery: Value = app
        .http
        .get(format!(
            "{}/.well-known/openid-configuration",
            crate::support::partners().idp.issuer
        ))
        .send()
        .await?
        .json()
        .await?;
    let scheme = &served["components"]["securitySchemes"]["client_credentials"];
    assert_eq!(scheme["type"], "oauth2");
    let flow = &scheme["flows"]["clientCredentials"];
    assert_eq!(flow["tokenUrl"], discovery["token_endpoint"]);
    assert!(
        flow["scopes"].get("workflows:trigger").is_some(),
        "{scheme}"
    );
    let trigger = &served["paths"]["/v1/workflows/{workflow}/executions"]["post"];
    assert!(
        trigger["security"]
            .as_array()
            .is_some_and(|s| s.contains(&serde_json::json!({"client_credentials": []}))),
        "{trigger}"
    );
    // Apart from that, the served document is the generated (and committed) one.
    let mut stripped = served.clone();
    if let Some(schemes) = stripped["components"]["securitySchemes"].as_object_mut() {
        schemes.remove("client_credentials");
    }
    if let Some(paths) = stripped["paths"].as_object_mut() {
        for operation in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in operation.values_mut() {
                if let Some(security) = op.get_mut("security").and_then(Value::as_array_mut) {
                    security.retain(|s| s.get("client_credentials").is_none());
                }
            }
        }
    }
    assert_eq!(stripped, generated);
    let docs = app.http.get(app.url("/docs/")).send().await?;
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await?.contains("swagger-ui"));
    let config = app
        .http
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        config.contains("/openapi.json"),
        "the UI loads our document, offline"
    );
    Ok(())
}

#[tokio::test]
async fn migrate_is_idempotent_and_creates_the_consumer_group() -> TestResult {
    let app = spawn_app().await?;
    let output = app.stepgate(&["migrate"])?;
    assert!(output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("0 step(s) ran"),
        "already applied at start-up"
    );
    let mut redis = app.redis.connection().await?;
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(keys().queue(&workflow_named("orders")?))
        .query_async(&mut redis)
        .await?;
    assert_eq!(groups.len(), 1);
    let _: () = redis::cmd("DEL")
        .arg(keys().workflow_schema(&workflow_named("orders")?))
        .query_async(&mut redis)
        .await?;
    let output = app.stepgate(&["migrate"])?;
    assert!(
        output.status.success()
            && String::from_utf8_lossy(&output.stdout).contains("1 step(s) ran")
    );
    Ok(())
}

#[tokio::test]
async fn check_config_names_the_bad_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(root().join("stepgate.example.toml"))?
        .replace("stateMachine:orders", "lambda:orders");
    std::fs::write(&path, text)?;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_stepgate"))
        // Never the instance metadata service (a non-loopback address) from a test.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["check-config", "--config"])
        .arg(&path)
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`workflows.orders.state_machine_arn`"),
        "{stderr}"
    );

    // The example as written, with the key `stepgate keygen` makes beside it, from
    // another working directory.
    let example = dir.path().join("stepgate.example.toml");
    std::fs::copy(root().join("stepgate.example.toml"), &example)?;
    stepgate::audit::AuditSigner::generate().write_pair(&dir.path().join("audit.key"))?;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_stepgate"))
        // Never the instance metadata service (a non-loopback address) from a test.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["check-config", "--config"])
        .arg(&example)
        .current_dir("/")
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Environment overrides apply over the file, and are validated the same way.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_stepgate"))
        // Never the instance metadata service (a non-loopback address) from a test.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["check-config", "--config"])
        .arg(&example)
        .env("STEPGATE_REDIS__URL", "http://127.0.0.1:6379")
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("`redis.url`"));
    Ok(())
}
