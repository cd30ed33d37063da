//! Hostile clients at the identity edges: opaque tokens sent to the wrong issuer, floods of
//! bogus opaque tokens, introspection answers without a caller, insecure and oversized key
//! documents, and rules that would let one IdP's subject pass at another.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::keys::status_of;
use crate::support::{
    AUDIENCE, OPAQUE_AUDIENCE, OwnIdp, RedisServer, TestApp, TestResult, spawn_app_with,
};

/// Introspection as the `stepgate` client, with `settings` (an object) of the issuer's.
fn introspection(settings: Value) -> Value {
    let mut issuer = settings;
    issuer["introspection"] = json!({"client_id": "stepgate", "client_secret": "stepgate-secret"});
    issuer
}

/// `idp` trusted for both audiences, with `settings` (an object) of its own.
fn trusted(idp: &OwnIdp, settings: Value) -> Value {
    let mut issuer = settings;
    issuer["issuer"] = json!(idp.idp.issuer);
    issuer["audiences"] = json!([AUDIENCE, OPAQUE_AUDIENCE]);
    issuer
}

async fn app_trusting(idp: &OwnIdp, settings: Value) -> TestResult<TestApp> {
    let issuer = trusted(idp, settings);
    spawn_app_with(RedisServer::start(), |config| {
        config
            .set("worker.enabled", false)
            .set("issuers", json!([issuer]))
    })
    .await
}

async fn opaque_token(idp: &OwnIdp) -> TestResult<String> {
    idp.idp
        .token_for(
            "billing-service",
            "billing-secret",
            "workflows:trigger",
            OPAQUE_AUDIENCE,
        )
        .await
}

/// What `stepgate check-config` says of a minimal configuration trusting `issuer`, plus
/// `extra`; asserts that it refuses it.
fn refused_config(issuer: &str, extra: &str) -> TestResult<String> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("stepgate.toml");
    std::fs::write(
        &config,
        crate::support::minimal_config(dir.path(), issuer, extra),
    )?;
    let checked = std::process::Command::new(env!("CARGO_BIN_EXE_stepgate"))
        // Never the instance metadata service (a non-loopback address) from a test.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["check-config", "--config"])
        .arg(&config)
        .output()?;
    assert!(!checked.status.success(), "check-config accepted it");
    Ok(String::from_utf8_lossy(&checked.stderr).into_owned())
}

#[tokio::test]
async fn an_opaque_token_reaches_only_its_own_issuer() -> TestResult {
    let (a, b) = (OwnIdp::start(), OwnIdp::start());
    a.set("opaque_prefix=a_").await?;
    b.set("opaque_prefix=b_").await?;
    let mut second = introspection(json!({"opaque_token_prefix": "b_"}));
    second["issuer"] = json!(b.idp.issuer);
    second["audiences"] = json!([OPAQUE_AUDIENCE]);
    let first = trusted(&a, introspection(json!({"opaque_token_prefix": "a_"})));
    let app = spawn_app_with(RedisServer::start(), |config| {
        config
            .set("worker.enabled", false)
            .set("issuers", json!([first, second]))
            .set(
                "workflows.orders.allow",
                json!([
                    {"issuer": a.idp.issuer, "clients": ["billing-service"], "scopes": ["workflows:trigger"]},
                    {"issuer": b.idp.issuer, "clients": ["billing-service"]},
                ]),
            )
    })
    .await?;
    let token = opaque_token(&b).await?;
    assert!(token.starts_with("b_"), "{token}");
    assert_eq!(status_of(&app, &token).await?, StatusCode::ACCEPTED);
    assert_eq!(
        status_of(&app, "b_made-up").await?,
        StatusCode::UNAUTHORIZED
    );
    // Neither prefix: nobody is asked.
    assert_eq!(
        status_of(&app, "c_made-up").await?,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(b.introspections().await?, 2, "b saw its own two tokens");
    assert_eq!(a.introspections().await?, 0, "a saw none of b's tokens");
    Ok(())
}

#[tokio::test]
async fn a_flood_of_one_bogus_token_costs_one_introspection() -> TestResult {
    let idp = OwnIdp::start();
    let app = app_trusting(&idp, introspection(json!({}))).await?;
    for _ in 0..10 {
        let burst = (0..100).map(|_| status_of(&app, "x"));
        for status in futures_util::future::join_all(burst).await {
            assert_eq!(status?, StatusCode::UNAUTHORIZED);
        }
    }
    assert_eq!(idp.introspections().await?, 1, "1,000 × `Bearer x`");
    Ok(())
}

#[tokio::test]
async fn introspection_calls_are_bounded_per_second() -> TestResult {
    let idp = OwnIdp::start();
    let app = app_trusting(
        &idp,
        introspection(json!({"introspection_max_per_second": 5})),
    )
    .await?;
    let started = std::time::Instant::now();
    let distinct = (0..40).map(|n| {
        let app = &app;
        async move {
            app.trigger("orders", &format!("bogus-{n}"), &json!({}))
                .await
        }
    });
    let (mut refused, mut busy) = (0, 0);
    for response in futures_util::future::join_all(distinct).await {
        let response = response?;
        match response.status() {
            StatusCode::UNAUTHORIZED => refused += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(crate::support::header(&response, "retry-after"), "1");
                busy += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let seconds = started.elapsed().as_secs() + 1;
    let calls = idp.introspections().await?;
    assert_eq!(calls, refused, "each 401 is one answer of the IdP");
    assert!(
        calls <= 5 * seconds,
        "{calls} introspections in under {seconds} s (5 per second)"
    );
    assert_eq!(refused + busy, 40);
    assert!(busy > 0, "none was held back");
    Ok(())
}

#[tokio::test]
async fn an_introspection_answer_without_a_caller_is_refused() -> TestResult {
    let idp = OwnIdp::start();
    let app = app_trusting(&idp, introspection(json!({}))).await?;
    idp.set("strip_subject=1").await?;
    let token = opaque_token(&idp).await?;
    assert_eq!(status_of(&app, &token).await?, StatusCode::UNAUTHORIZED);
    let reasons = app.reasons("auth_failed").await?;
    assert!(
        reasons.iter().any(|r| r.contains("names no subject")),
        "{reasons:?}"
    );
    Ok(())
}

#[tokio::test]
async fn key_documents_must_come_over_https_and_fit_the_cap() -> TestResult {
    // A plain-http issuer elsewhere than loopback is refused before anything is fetched.
    let said = refused_config("http://idp.example.com", "")?;
    assert!(
        said.contains("issuers[0].issuer") && said.contains("https"),
        "{said}"
    );

    // The same rule for discovered URLs (a jwks_uri or introspection endpoint in plain
    // http elsewhere than loopback) is `auth::fetch`'s unit test: a test here would have to
    // name a non-loopback address, and this machine must send nothing there.
    Ok(())
}

#[tokio::test]
async fn an_oversized_key_set_is_refused_and_the_old_keys_keep_serving() -> TestResult {
    let mut idp = OwnIdp::start();
    let app = app_trusting(&idp, json!({"jwks_refetch_cooldown_seconds": 1})).await?;
    let old_token = idp.idp.billing_token().await?;
    assert_eq!(status_of(&app, &old_token).await?, StatusCode::ACCEPTED);

    // The IdP rotates to a new key and serves its key set padded to 1 MiB.
    idp.restart(None);
    idp.set("jwks_padding=1048576").await?;
    let new_token = idp.idp.billing_token().await?;
    // Past the 1 s refetch cooldown, so the unknown kid may cause a fetch.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let fetched_before = idp.jwks_fetches().await?;
    assert_eq!(status_of(&app, &new_token).await?, StatusCode::UNAUTHORIZED);
    assert!(idp.jwks_fetches().await? > fetched_before, "stepgate asked");
    assert_eq!(
        status_of(&app, &old_token).await?,
        StatusCode::ACCEPTED,
        "the old keys were replaced by the oversized set"
    );

    // The same set within the cap is taken: the size was the only obstacle.
    idp.set("jwks_padding=0").await?;
    // Past the cooldown again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(status_of(&app, &new_token).await?, StatusCode::ACCEPTED);
    Ok(())
}

#[tokio::test]
async fn with_two_issuers_every_rule_names_its_issuer() -> TestResult {
    let second = r#"
[[issuers]]
issuer = "https://second.example"
audiences = ["https://stepgate.local"]

[[admin.allow]]
issuer = "https://second.example"
clients = ["ops"]

[[audit_readers.allow]]
clients = ["auditor"]
"#;
    let said = refused_config("https://first.example", second)?;
    for rule in ["workflows.orders.allow[0]", "audit_readers.allow[0]"] {
        assert!(said.contains(rule), "{rule} not named: {said}");
    }
    assert!(!said.contains("admin.allow[0]"), "{said}");
    Ok(())
}

#[tokio::test]
async fn missing_aws_credentials_are_said_in_one_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("stepgate.toml");
    // No static credentials, and nothing in this environment to find any with.
    std::fs::write(
        &config,
        crate::support::minimal_config(dir.path(), "https://idp.example", ""),
    )?;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_stepgate"));
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    let checked = command
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .env("HOME", dir.path())
        .args(["check-config", "--config"])
        .arg(&config)
        .output()?;
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{said}");
    let warnings: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("warning: no AWS credentials"))
        .collect();
    assert_eq!(warnings.len(), 1, "{said}");
    assert!(warnings[0].len() < 400, "one clear line: {}", warnings[0]);
    Ok(())
}
