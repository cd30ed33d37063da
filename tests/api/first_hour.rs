//! The first hour of a new operator: policies that cannot open by accident, configuration
//! problems found by `check-config` (every one, by key and line, from any directory), and
//! Step Functions errors that reach callers and records short.

use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};
use stepgate::audit::AuditSigner;

use stepgate::testing::TestConfig;

use crate::support::{
    RedisServer, TestResult, minimal_config, partners, request_id_of, spawn_app_with,
};

/// `stepgate <args>` (never the instance metadata service), from `cwd`.
fn stepgate_in(cwd: &Path, args: &[&str]) -> TestResult<std::process::Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .current_dir(cwd)
        .args(args)
        .output()?)
}

/// `check-config` of `text` written to `<dir>/etc/stepgate.toml`, run from `/`: exit code and
/// standard error.
fn check_config(dir: &Path, text: &str) -> TestResult<(Option<i32>, String)> {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc)?;
    let path = etc.join("stepgate.toml");
    std::fs::write(&path, text)?;
    let out = stepgate_in(
        Path::new("/"),
        &["check-config", "--config", &path.to_string_lossy()],
    )?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

const ISSUER: &str = "http://127.0.0.1:4444";

#[tokio::test]
async fn a_rule_without_a_condition_is_refused_in_every_policy_section() -> TestResult {
    let dir = tempfile::tempdir()?;
    // The workflow's allow list already holds one rule.
    let sections = [
        ("workflows.orders.allow", 1),
        ("workflows.orders.deny", 0),
        ("admin.allow", 0),
        ("admin.deny", 0),
        ("audit_readers.allow", 0),
        ("audit_readers.deny", 0),
    ];
    for (section, index) in sections {
        for body in [
            "",
            "scopes = []\nclients = []",
            "issuer = \"http://127.0.0.1:4444\"",
        ] {
            let text = minimal_config(dir.path(), ISSUER, &format!("[[{section}]]\n{body}\n"));
            let (code, said) = check_config(dir.path(), &text)?;
            assert_eq!(code, Some(2), "{section} with {body:?} was accepted");
            assert!(
                said.contains(&format!("`{section}[{index}]`"))
                    && said.contains("at least one condition"),
                "{section} with {body:?}: {said}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn check_config_reads_every_file_serve_reads_and_names_its_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let base = minimal_config(dir.path(), ISSUER, "");
    let key_line = base
        .lines()
        .find(|l| l.starts_with("signing_key"))
        .unwrap_or_default()
        .to_owned();
    std::fs::write(dir.path().join("etc-notes.txt"), "not a key\n")?;
    std::fs::write(dir.path().join("jwks.json"), "{\"keys\": 5}")?;
    let cases = [
        (
            base.replace(&key_line, "signing_key = \"nope.key\""),
            "`audit.signing_key`",
            "No such file",
        ),
        (
            base.replace(&key_line, "signing_key = \"../etc-notes.txt\""),
            "`audit.signing_key`",
            "not a PEM private key",
        ),
        (
            base.replace(
                &key_line,
                &format!("{key_line}\nretired_keys = [\"gone.key\"]"),
            ),
            "`audit.retired_keys[0]`",
            "No such file",
        ),
        (
            base.replace(
                "audiences = [\"https://stepgate.local\"]",
                "audiences = [\"https://stepgate.local\"]\njwks_file = \"../jwks.json\"",
            ),
            "`issuers[0].jwks_file`",
            "not a JWKS document",
        ),
        (
            base.replace(
                "[[workflows.orders.allow]]",
                "input_schema_file = \"schemas/orders.json\"\n[[workflows.orders.allow]]",
            ),
            "`workflows.orders.input_schema_file`",
            "No such file",
        ),
    ];
    for (text, key, reason) in cases {
        let (code, said) = check_config(dir.path(), &text)?;
        assert_eq!(code, Some(2), "{key} was accepted: {said}");
        assert!(said.contains(key) && said.contains(reason), "{key}: {said}");
        assert_eq!(said.matches(reason).count(), 1, "said once: {said}");
    }

    // `serve` refuses the same file the same way, before it connects to anything.
    let text = base.replace(&key_line, "signing_key = \"nope.key\"");
    let path = dir.path().join("etc/stepgate.toml");
    std::fs::write(&path, text)?;
    let out = stepgate_in(
        Path::new("/"),
        &["serve", "--config", &path.to_string_lossy()],
    )?;
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("`audit.signing_key`"), "{said}");
    Ok(())
}

#[tokio::test]
async fn relative_paths_resolve_against_the_configuration_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(etc.join("keys"))?;
    std::fs::create_dir_all(etc.join("schemas"))?;
    AuditSigner::generate().write_pair(&etc.join("keys/audit.key"))?;
    std::fs::write(
        etc.join("schemas/orders.json"),
        r#"{"type": "object", "required": ["order_id"]}"#,
    )?;
    // The minimal configuration, its key and a schema named relative to the file.
    let absolute = minimal_config(dir.path(), ISSUER, "");
    let text = absolute
        .lines()
        .map(|line| match line {
            l if l.starts_with("signing_key") => "signing_key = \"keys/audit.key\"".to_owned(),
            "[[workflows.orders.allow]]" => {
                "input_schema_file = \"schemas/orders.json\"\n[[workflows.orders.allow]]".to_owned()
            }
            l => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("keys/audit.key") && text.contains("schemas/orders.json"));
    // From `/`, from the file's directory and from its parent: the same files.
    for cwd in [Path::new("/"), etc.as_path(), dir.path()] {
        let path = etc.join("stepgate.toml");
        std::fs::write(&path, &text)?;
        let relative_or_not = if cwd == dir.path() {
            "etc/stepgate.toml".to_owned()
        } else {
            path.to_string_lossy().into_owned()
        };
        let out = stepgate_in(cwd, &["check-config", "--config", &relative_or_not])?;
        assert!(
            out.status.success(),
            "from {}: {}",
            cwd.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test]
async fn every_unknown_or_mistyped_key_is_reported_at_once_with_its_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let text = minimal_config(
        dir.path(),
        ISSUER,
        r#"
[workflows.reports]
state_machine_ar = "arn:aws:states:us-east-1:123456789012:stateMachine:reports"

[workflows.eu]
state_machine_arn = "arn:aws:states:eu-west-1:123456789012:stateMachine:eu"
[[workflows.eu.allow]]
clients = ["billing-service"]

[server]
max_body_bytes = "big"
"#,
    );
    let (code, said) = check_config(dir.path(), &text)?;
    assert_eq!(code, Some(2), "{said}");
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.starts_with(needle))
            .map(|i| i + 1)
            .unwrap_or_default()
    };
    for (key, line) in [
        (
            "workflows.reports.state_machine_ar",
            line_of("state_machine_ar "),
        ),
        ("server.max_body_bytes", line_of("max_body_bytes")),
        (
            "workflows.eu.state_machine_arn",
            line_of("state_machine_arn = \"arn:aws:states:eu-west-1"),
        ),
    ] {
        assert!(
            said.contains(&format!("`{key}` (line {line})")),
            "{key} at line {line}: {said}"
        );
    }
    assert!(
        said.contains("eu-west-1") && said.contains("aws.region"),
        "{said}"
    );
    assert!(
        !said.contains("default.") && !said.contains("``") && !said.contains("TOML source"),
        "{said}"
    );
    Ok(())
}

/// A workflow whose state machine does not exist (its start is refused for good), with
/// `billing-service` as admin and audit reader.
fn missing_state_machine(config: TestConfig) -> TestConfig {
    let (_, refunds) = crate::dead_letters::missing_state_machine();
    crate::dead_letters::billing_is_admin(refunds(config)).push(
        "audit_readers.allow",
        json!({"clients": ["billing-service"]}),
    )
}

/// Marks of an SDK error's `Debug` output (and of the emulator's HTTP answer).
const DEBUG_MARKS: [&str; 6] = [
    "ServiceError(",
    "SdkBody",
    "raw: Response",
    "HttpInfo",
    "Werkzeug",
    "x-amzn-requestid",
];

fn assert_short_and_clean(place: &str, text: &str) {
    for mark in DEBUG_MARKS {
        assert!(!text.contains(mark), "{place} holds {mark:?}: {text}");
    }
}

#[tokio::test]
async fn step_functions_errors_reach_callers_and_records_in_short() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), missing_state_machine).await?;
    let token = partners().idp.billing_token().await?;
    let response = app
        .trigger("refunds", &token, &json!({"input": {"n": 1}}))
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let request_id = request_id_of(response).await?;
    let status = app.settled_status(&request_id, &token).await;
    assert_eq!(status["status"], "dead_lettered", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("StateMachineDoesNotExist") && error.len() <= 300,
        "{error}"
    );
    assert_short_and_clean("the status", &status.to_string());

    let listed = app
        .http
        .get(app.url("/v1/admin/workflows/refunds/dead-letters"))
        .bearer_auth(&token)
        .send()
        .await?
        .text()
        .await?;
    assert!(listed.contains("StateMachineDoesNotExist"), "{listed}");
    assert_short_and_clean("the admin API", &listed);
    let cli = app.stepgate(&["dlq", "list", "--workflow", "refunds", "--json"])?;
    assert_short_and_clean("dlq list", &String::from_utf8_lossy(&cli.stdout));

    let purged = app.stepgate(&["dlq", "purge", "--workflow", "refunds", &request_id])?;
    assert!(purged.status.success(), "{purged:?}");
    let after: Value = app
        .request_status(&request_id, &token)
        .await?
        .json()
        .await?;
    assert_eq!(after["status"], "failed", "{after}");
    assert_short_and_clean("the status after a purge", &after.to_string());

    let records = app.audit_records().await?;
    assert!(records.iter().any(|r| r["event"] == "dead_lettered"));
    for record in &records {
        assert_short_and_clean("the trail", &record.to_string());
    }
    let read = app
        .http
        .get(app.url("/v1/audit"))
        .bearer_auth(&token)
        .send()
        .await?
        .text()
        .await?;
    assert_short_and_clean("GET /v1/audit", &read);
    Ok(())
}

#[tokio::test]
async fn cli_actions_are_attributed_by_the_process_uid_and_the_kernel_hostname() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), missing_state_machine).await?;
    let token = partners().idp.billing_token().await?;
    let request_id = request_id_of(
        app.trigger("refunds", &token, &json!({"input": {}}))
            .await?,
    )
    .await?;
    let status = app.settled_status(&request_id, &token).await;
    assert_eq!(status["status"], "dead_lettered", "{status}");
    let out = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("USER", "mallory-not-me")
        .env("LOGNAME", "mallory-not-me")
        .env("HOSTNAME", "elsewhere.example")
        .args([
            "dlq",
            "purge",
            "--workflow",
            "refunds",
            &request_id,
            "--config",
        ])
        .arg(&app.config_path)
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let records = app.audit_records().await?;
    let failed: Vec<&Value> = records.iter().filter(|r| r["event"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{records:?}");
    let subject = failed[0]["subject"].as_str().unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    assert!(subject.starts_with("cli:uid="), "{subject}");
    assert!(subject.ends_with(&format!("@{}", host.trim())), "{subject}");
    assert!(
        !subject.contains("mallory") && !subject.contains("elsewhere"),
        "{subject}"
    );
    Ok(())
}

/// The claims of a caller, written to a file for `policy explain --claims`.
fn claims_file(dir: &Path, claims: &Value) -> TestResult<String> {
    let path = dir.join("claims.json");
    std::fs::write(&path, claims.to_string())?;
    Ok(path.to_string_lossy().into_owned())
}

#[tokio::test]
async fn policy_explain_names_every_failed_condition_of_every_policy() -> TestResult {
    let dir = tempfile::tempdir()?;
    let text = minimal_config(
        dir.path(),
        ISSUER,
        r#"
[[workflows.orders.deny]]
subjects = ["blocked"]
scopes = ["never"]

[[admin.allow]]
clients = ["ops"]
scopes = ["admin"]

[[audit_readers.allow]]
clients = ["auditor"]
"#,
    );
    let config = dir.path().join("stepgate.toml");
    std::fs::write(&config, text)?;
    let config = config.to_string_lossy().into_owned();
    let claims = claims_file(
        dir.path(),
        &json!({"iss": ISSUER, "sub": "someone", "client_id": "billing-service", "scope": "read"}),
    )?;

    let help = stepgate_in(dir.path(), &["policy", "explain", "--help"])?;
    let usage = String::from_utf8_lossy(&help.stdout);
    assert!(
        !usage.contains("--token <TOKEN> --claims <CLAIMS>"),
        "one of them, not both: {usage}"
    );
    assert!(
        usage.contains("--admin") && usage.contains("--audit-readers"),
        "{usage}"
    );

    let run = |policy: &[&str]| -> TestResult<(Option<i32>, String)> {
        let mut args = vec![
            "policy", "explain", "--config", &config, "--claims", &claims,
        ];
        args.extend_from_slice(policy);
        let out = stepgate_in(dir.path(), &args)?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    };
    let (code, said) = run(&["--admin"])?;
    assert_eq!(code, Some(1), "{said}");
    assert!(said.starts_with("[admin]: DENIED"), "{said}");
    assert!(
        said.contains("allow[0]: does not match (client, scope admin)"),
        "{said}"
    );
    assert!(
        said.contains("client billing-service") && !said.contains("Some("),
        "{said}"
    );

    let (code, said) = run(&["--audit-readers"])?;
    assert_eq!(code, Some(1), "{said}");
    assert!(said.starts_with("[audit_readers]: DENIED"), "{said}");

    let (code, said) = run(&["--workflow", "orders"])?;
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("deny[0]: does not match (subject, scope never)"),
        "{said}"
    );
    Ok(())
}

#[tokio::test]
async fn the_readme_quickstart_configuration_checks_as_written() -> TestResult {
    let readme = std::fs::read_to_string(crate::support::root().join("README.md"))?;
    let (_, after) = readme
        .split_once("<!-- quickstart-config")
        .ok_or("the README has no quickstart configuration")?;
    let block = after
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(toml, _)| toml)
        .ok_or("no toml block after the marker")?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("stepgate.toml"), block)?;
    let keygen = stepgate_in(dir.path(), &["keygen", "--out", "audit.key"])?;
    assert!(keygen.status.success(), "{keygen:?}");
    // As scripts/demo runs it: STEPGATE_BIN names the binary, it is not a setting.
    let checked = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("STEPGATE_BIN", env!("CARGO_BIN_EXE_stepgate"))
        .current_dir(dir.path())
        .args(["check-config", "--config", "stepgate.toml"])
        .output()?;
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success() && said.starts_with("configuration is valid"),
        "{said}{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    Ok(())
}

/// The key `stepgate keygen` writes is PKCS#8 v1, which standard tools read: OpenSSL 3.0
/// derives from it exactly the public key written beside it (a v2 key, with the public key
/// embedded, it refuses).
#[tokio::test]
async fn keygen_writes_a_private_key_openssl_reads() -> TestResult {
    let dir = tempfile::tempdir()?;
    let keygen = stepgate_in(dir.path(), &["keygen", "--out", "audit.key"])?;
    assert!(keygen.status.success(), "{keygen:?}");
    let derived = Command::new("openssl")
        .current_dir(dir.path())
        .args(["pkey", "-in", "audit.key", "-pubout"])
        .output()?;
    assert!(
        derived.status.success(),
        "openssl cannot read the key: {}",
        String::from_utf8_lossy(&derived.stderr)
    );
    let written = std::fs::read_to_string(dir.path().join("audit.pub"))?;
    assert_eq!(String::from_utf8_lossy(&derived.stdout), written);
    // And stepgate reads what OpenSSL makes.
    let made = Command::new("openssl")
        .current_dir(dir.path())
        .args(["genpkey", "-algorithm", "ed25519", "-out", "openssl.key"])
        .output()?;
    assert!(made.status.success(), "{made:?}");
    AuditSigner::load(&dir.path().join("openssl.key"))?;
    Ok(())
}
