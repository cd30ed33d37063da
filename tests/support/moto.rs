//! Step Functions: moto's server, one per test process (it is slow to start); each test
//! creates its own state machines, so tests never see each other's executions.

use super::*;

#[expect(
    clippy::zombie_processes,
    reason = "the emulator exits by itself when the test process is gone"
)]
pub(super) fn start_moto() -> String {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "moto is not installed: run scripts/setup-partners"
    );
    let port = free_port();
    // Not killed by the test: it exits by itself when this test process is gone.
    Command::new(python)
        .arg(root().join("tests/partners/sfn/moto_server.py"))
        .args([port.to_string(), std::process::id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start moto: {e}"));
    wait_for_port(port, "moto", Duration::from_secs(30));
    format!("http://127.0.0.1:{port}")
}

/// A Step Functions client for the emulator.
pub async fn sfn_client() -> aws_sdk_sfn::Client {
    sfn_client_at(&partners().sfn_endpoint).await
}

/// A Step Functions client for `endpoint` (the emulator, or a proxy in front of it).
pub async fn sfn_client_at(endpoint: &str) -> aws_sdk_sfn::Client {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .load()
        .await;
    aws_sdk_sfn::Client::new(&config)
}

/// Creates a fresh state machine (a Pass state that echoes its input); returns its ARN.
pub async fn create_state_machine(sfn: &aws_sdk_sfn::Client) -> TestResult<String> {
    create_named_state_machine(sfn, &unique_name("orders")).await
}

/// `<prefix>-<12 hex>`: a name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The ARN the emulator gives state machine `name` (before it exists).
pub fn state_machine_arn(name: &str) -> String {
    format!("arn:aws:states:{REGION}:123456789012:stateMachine:{name}")
}

/// Creates state machine `name` (a Pass state that echoes its input); returns its ARN.
pub async fn create_named_state_machine(
    sfn: &aws_sdk_sfn::Client,
    name: &str,
) -> TestResult<String> {
    let definition = r#"{"StartAt": "Echo", "States": {"Echo": {"Type": "Pass", "End": true}}}"#;
    create_state_machine_from(sfn, name, definition).await
}

/// Creates a fresh EXPRESS state machine (a Pass state); returns its ARN.
pub async fn create_express_state_machine(sfn: &aws_sdk_sfn::Client) -> TestResult<String> {
    let definition = r#"{"StartAt": "Echo", "States": {"Echo": {"Type": "Pass", "End": true}}}"#;
    let created = sfn
        .create_state_machine()
        .name(unique_name("express"))
        .definition(definition)
        .role_arn(ROLE_ARN)
        .r#type(aws_sdk_sfn::types::StateMachineType::Express)
        .send()
        .await?;
    Ok(created.state_machine_arn)
}

/// Creates state machine `name` from an Amazon States Language `definition`.
pub async fn create_state_machine_from(
    sfn: &aws_sdk_sfn::Client,
    name: &str,
    definition: &str,
) -> TestResult<String> {
    let created = sfn
        .create_state_machine()
        .name(name)
        .definition(definition)
        .role_arn(ROLE_ARN)
        .send()
        .await?;
    Ok(created.state_machine_arn)
}

/// The executions of a state machine, with their inputs.
pub async fn executions(
    sfn: &aws_sdk_sfn::Client,
    state_machine_arn: &str,
) -> TestResult<Vec<(String, String)>> {
    let listed = sfn
        .list_executions()
        .state_machine_arn(state_machine_arn)
        .send()
        .await?;
    let mut found = Vec::new();
    for execution in listed.executions {
        let described = sfn
            .describe_execution()
            .execution_arn(&execution.execution_arn)
            .send()
            .await?;
        found.push((execution.execution_arn, described.input.unwrap_or_default()));
    }
    Ok(found)
}

/// An S3 client for the emulator (path-style, as stepgate addresses an endpoint it is
/// given).
pub async fn s3_client() -> aws_sdk_s3::Client {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(&partners().sfn_endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .load()
        .await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    )
}

/// A new bucket with Object Lock enabled (and so versioning), as an audit trail's should
/// be.
pub async fn create_locked_bucket(s3: &aws_sdk_s3::Client) -> TestResult<String> {
    let bucket = unique_name("trail").to_ascii_lowercase().replace('_', "-");
    s3.create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await?;
    Ok(bucket)
}
