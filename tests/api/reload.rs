//! Configuration reloads: installed atomically without a restart, or refused with the
//! running configuration kept; audited either way with the file's SHA-256.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use stepgate::testing::TestConfig;

use crate::support::{
    RedisServer, TestApp, TestResult, eventually, partners, spawn_app_with, spawn_app_without_drain,
};

/// `orders` also open to `reporting-service`.
fn let_reporting_in(config: TestConfig) -> TestConfig {
    config.push(
        "workflows.orders.allow",
        json!({"clients": ["reporting-service"]}),
    )
}

/// The configuration's digest as the trail records it: the file and every file it reads.
fn file_sha256(app: &TestApp) -> TestResult<String> {
    let text = std::fs::read_to_string(&app.config_path)?;
    let config = stepgate::config::Config::from_file_text(&text, &app.config_path)?;
    Ok(stepgate::config::digest(&text, &config))
}

/// The drain off, and a `refunds` workflow on the app's state machine whose input schema
/// is the file `schema`.
fn refunds_with_schema(config: TestConfig, schema: &std::path::Path) -> TestConfig {
    let arn = config.orders_arn();
    config
        .set("worker.enabled", false)
        .workflow("refunds", &arn)
        .set(
            "workflows.refunds.input_schema_file",
            schema.display().to_string(),
        )
}

async fn config_events(app: &TestApp) -> TestResult<Vec<Value>> {
    Ok(app
        .audit_records()
        .await?
        .into_iter()
        .filter(|r| {
            r["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("config_"))
        })
        .collect())
}

async fn wait_for_config_event(app: &TestApp, count: usize) -> Vec<Value> {
    eventually(
        Duration::from_secs(10),
        "the reload to be audited",
        || async {
            let events = config_events(app).await.ok()?;
            (events.len() >= count).then_some(events)
        },
    )
    .await
}

#[tokio::test]
async fn a_changed_policy_is_installed_without_a_restart_and_audited() -> TestResult {
    let app = spawn_app_without_drain().await?;
    let reporting = partners().idp.denied_token().await?;
    assert_eq!(
        app.trigger("orders", &reporting, &json!({}))
            .await?
            .status(),
        StatusCode::FORBIDDEN
    );
    let started_with = file_sha256(&app)?;

    app.reconfigure(|config| let_reporting_in(config.set("worker.enabled", false)))?;
    let events = wait_for_config_event(&app, 2).await;
    assert_eq!(events[0]["event"], "config_loaded");
    assert_eq!(events[0]["config_sha256"], started_with.as_str());
    assert_eq!(events[1]["event"], "config_reloaded");
    assert_eq!(events[1]["config_sha256"], file_sha256(&app)?.as_str());
    assert_eq!(
        app.trigger("orders", &reporting, &json!({}))
            .await?
            .status(),
        StatusCode::ACCEPTED
    );
    Ok(())
}

#[tokio::test]
async fn an_invalid_or_restart_only_change_is_refused_and_the_running_config_stays() -> TestResult {
    let app = spawn_app_without_drain().await?;
    let billing = partners().idp.billing_token().await?;
    let original = std::fs::read_to_string(&app.config_path)?;

    // An activity's ARN where a state machine's belongs.
    app.reconfigure(|config| {
        let activity = config.orders_arn().replace(":stateMachine:", ":activity:");
        config
            .set("worker.enabled", false)
            .set("workflows.orders.state_machine_arn", activity)
    })?;
    let events = wait_for_config_event(&app, 2).await;
    assert_eq!(events[1]["event"], "config_refused");
    // A refused file is hashed with the files the running configuration reads.
    let running = stepgate::config::Config::from_file_text(&original, &app.config_path)?;
    let refused = std::fs::read_to_string(&app.config_path)?;
    assert_eq!(
        events[1]["config_sha256"],
        stepgate::config::digest(&refused, &running).as_str()
    );
    assert!(
        events[1]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("`workflows.orders.state_machine_arn`")),
        "{}",
        events[1]
    );
    assert_eq!(
        app.trigger("orders", &billing, &json!({})).await?.status(),
        StatusCode::ACCEPTED,
        "still serving"
    );

    app.reconfigure(|config| {
        config
            .set("worker.enabled", false)
            .set_ms("worker.block_ms", Duration::from_millis(600))
    })?;
    let events = wait_for_config_event(&app, 3).await;
    assert_eq!(events[2]["event"], "config_refused");
    assert_eq!(events[2]["reason"], "changes to [worker] need a restart");
    Ok(())
}

#[tokio::test]
async fn a_workflow_added_by_a_reload_is_served_by_the_drain() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), |config| config).await?;
    let billing = partners().idp.billing_token().await?;
    assert_eq!(
        app.trigger("refunds", &billing, &json!({})).await?.status(),
        StatusCode::FORBIDDEN
    );
    app.reconfigure(|config| {
        let arn = config.orders_arn();
        config.workflow("refunds", &arn)
    })?;
    wait_for_config_event(&app, 2).await;

    let request_id = app.accept(&billing, &json!({"refund": 1})).await;
    assert!(request_id.is_ok(), "orders still works");
    let response = app
        .trigger("refunds", &billing, &json!({"input": {"refund": 2}}))
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let request_id = crate::support::request_id_of(response).await?;
    let status = app.settled_status(&request_id, &billing).await;
    assert_eq!(
        status["status"], "started",
        "the new workflow's queue is drained: {status}"
    );
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_a_running_stepgate_process() -> TestResult {
    let app = spawn_app_without_drain().await?;
    // A second, real process on the same Redis, reloading only on SIGHUP.
    let port = crate::support::free_port();
    let config = app.config_path.with_file_name("process.toml");
    let process_config = app
        .base_config()
        .set("worker.enabled", false)
        .set("server.listen", format!("127.0.0.1:{port}"))
        .set_ms("server.config_poll_ms", Duration::ZERO);
    std::fs::write(&config, process_config.render())?;
    let process = crate::support::KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_stepgate"))
            // Never the instance metadata service (a non-loopback address) from a test.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["serve", "--config"])
            .arg(&config)
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let reporting = partners().idp.denied_token().await?;
    let trigger = || {
        http.post(format!("{base}/v1/workflows/orders/executions"))
            .bearer_auth(&reporting)
            .json(&json!({}))
            .send()
    };
    let started = Instant::now();
    let first = loop {
        if let Ok(response) = trigger().await {
            break response.status();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "stepgate serve did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(first, StatusCode::FORBIDDEN);

    std::fs::write(&config, let_reporting_in(process_config).render())?;
    // A deliberate wait: nothing should happen, and no condition marks "nothing happened".
    // Polling is off here, so half a second is ample for a (wrong) reload to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        trigger().await?.status(),
        StatusCode::FORBIDDEN,
        "no polling: the file alone changes nothing"
    );
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &process.0.id().to_string()])
        .status()?;
    assert!(hup.success());
    eventually(Duration::from_secs(10), "the SIGHUP reload", || async {
        (trigger().await.ok()?.status() == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn a_changed_schema_file_is_a_changed_configuration() -> TestResult {
    let schemas = tempfile::tempdir()?;
    let schema = schemas.path().join("refunds.json");
    std::fs::write(&schema, r#"{"type": "object", "required": ["refund"]}"#)?;
    let app = spawn_app_with(RedisServer::start(), |config| {
        refunds_with_schema(config, &schema)
    })
    .await?;
    let billing = partners().idp.billing_token().await?;
    let input = json!({"input": {"amount": 5}});
    assert_eq!(
        app.trigger("refunds", &billing, &input).await?.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // Only the schema file changes: the policy changed, so the configuration did.
    std::fs::write(&schema, r#"{"type": "object"}"#)?;
    let events = wait_for_config_event(&app, 2).await;
    assert_eq!(events[1]["event"], "config_reloaded", "{}", events[1]);
    assert_ne!(events[1]["config_sha256"], events[0]["config_sha256"]);
    assert_eq!(events[1]["config_sha256"], file_sha256(&app)?.as_str());
    assert_eq!(
        app.trigger("refunds", &billing, &input).await?.status(),
        StatusCode::ACCEPTED
    );
    Ok(())
}

/// A refused change is recorded once, not at every poll, even when the refused file names
/// other files than the running one (a new signing key here: a restart-only change).
#[tokio::test]
async fn a_refused_change_is_recorded_once_while_it_stays() -> TestResult {
    let app = spawn_app_without_drain().await?;
    let dir = app.config_path.parent().ok_or("no directory")?;
    let new_key = dir.join("new.key");
    stepgate::audit::AuditSigner::generate().write_pair(&new_key)?;
    app.reconfigure(|config| {
        config
            .set("worker.enabled", false)
            .set("audit.signing_key", new_key.display().to_string())
    })?;
    let events = wait_for_config_event(&app, 2).await;
    assert_eq!(events[1]["event"], "config_refused");
    assert_eq!(events[1]["reason"], "changes to [audit] need a restart");

    // Twenty polls (config_poll_ms = 100) later, still the one record.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = config_events(&app).await?;
    assert_eq!(events.len(), 2, "{events:#?}");
    Ok(())
}

/// A change refused because a file it names is missing is installed once the file appears,
/// although the running configuration never named that file.
#[tokio::test]
async fn a_file_a_refused_change_waits_for_is_noticed_when_it_appears() -> TestResult {
    let app = spawn_app_without_drain().await?;
    let schemas = tempfile::tempdir()?;
    let schema = schemas.path().join("refunds.json");
    app.reconfigure(|config| refunds_with_schema(config, &schema))?;
    let events = wait_for_config_event(&app, 2).await;
    assert_eq!(events[1]["event"], "config_refused", "{}", events[1]);

    std::fs::write(&schema, r#"{"type": "object"}"#)?;
    let events = wait_for_config_event(&app, 3).await;
    assert_eq!(events[2]["event"], "config_reloaded", "{}", events[2]);
    let billing = partners().idp.billing_token().await?;
    assert_eq!(
        app.trigger("refunds", &billing, &json!({"input": {}}))
            .await?
            .status(),
        StatusCode::ACCEPTED
    );
    Ok(())
}
