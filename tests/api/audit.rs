//! `stepgate audit verify` on a real trail, and after tampering with it in Redis.

use redis::streams::StreamRangeReply;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, TestResult, partners, request_id_of, spawn_app};

const LOG: &str = "stepgate:{audit}:log";

/// A trail with every kind of record of this version: config_loaded, accepted, started,
/// denied, auth_failed.
async fn app_with_a_trail() -> TestResult<(TestApp, String)> {
    let app = spawn_app().await?;
    let idp = &partners().idp;
    let token = idp.billing_token().await?;
    let response = app
        .trigger("orders", &token, &json!({"input": {"n": 1}}))
        .await?;
    let request_id = request_id_of(response).await?;
    assert_eq!(
        app.settled_status(&request_id, &token).await["status"],
        "started"
    );
    let denied = idp.denied_token().await?;
    assert_eq!(
        app.trigger("orders", &denied, &json!({})).await?.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.trigger("orders", "not.a.token", &json!({}))
            .await?
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let events: Vec<_> = app
        .audit_records()
        .await?
        .into_iter()
        .map(|r| r["event"].clone())
        .collect();
    assert_eq!(
        events,
        vec![
            json!("config_loaded"),
            json!("accepted"),
            json!("started"),
            json!("denied"),
            json!("auth_failed")
        ]
    );
    Ok((app, token))
}

fn verify(app: &TestApp, extra: &[&str]) -> TestResult<(bool, String)> {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    let output = app.stepgate(&args)?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    Ok((output.status.success(), text))
}

async fn entries(app: &TestApp) -> TestResult<Vec<(String, String, String)>> {
    let mut redis = app.redis.connection().await?;
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(LOG)
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await?;
    Ok(reply
        .ids
        .iter()
        .map(|e| {
            (
                e.id.clone(),
                e.get("body").unwrap_or_default(),
                e.get("sig").unwrap_or_default(),
            )
        })
        .collect())
}

#[tokio::test]
async fn verify_passes_on_a_real_trail_with_the_public_key_alone() -> TestResult {
    let (app, token) = app_with_a_trail().await?;
    let (ok, text) = verify(&app, &[])?;
    assert!(ok && text.contains("verified: 5 records"), "{text}");

    let public_key = app.config_path.with_file_name("audit.pub");
    let (ok, text) = verify(&app, &["--public-key", &public_key.display().to_string()])?;
    assert!(ok, "{text}");

    let trail = serde_json::to_string(&entries(&app).await?)?;
    assert!(!trail.contains(&token), "no record holds the bearer token");
    Ok(())
}

#[tokio::test]
async fn verify_names_the_record_that_was_altered() -> TestResult {
    let (app, _) = app_with_a_trail().await?;
    let original = entries(&app).await?;
    let mut redis = app.redis.connection().await?;
    // Streams are append-only: rewrite the whole stream, same ids, one body changed.
    let _: () = redis::cmd("DEL").arg(LOG).query_async(&mut redis).await?;
    for (i, (id, body, sig)) in original.iter().enumerate() {
        let body = if i == 3 {
            body.replace("reporting-service", "billing-service")
        } else {
            body.clone()
        };
        let _: String = redis::cmd("XADD")
            .arg(LOG)
            .arg(id)
            .arg("body")
            .arg(body)
            .arg("sig")
            .arg(sig)
            .query_async(&mut redis)
            .await?;
    }
    let (ok, text) = verify(&app, &[])?;
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("record 4 (stream entry {})", original[3].0))
            && text.contains("signature"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn verify_notices_a_removed_record() -> TestResult {
    let (app, _) = app_with_a_trail().await?;
    let original = entries(&app).await?;
    let mut redis = app.redis.connection().await?;
    let _: u64 = redis::cmd("XDEL")
        .arg(LOG)
        .arg(&original[1].0)
        .query_async(&mut redis)
        .await?;
    let (ok, text) = verify(&app, &[])?;
    assert!(
        !ok && text.contains("record 2") && text.contains("removed"),
        "{text}"
    );

    Ok(())
}

#[tokio::test]
async fn verify_notices_records_cut_off_the_end() -> TestResult {
    let (app, _) = app_with_a_trail().await?;
    let original = entries(&app).await?;
    let mut redis = app.redis.connection().await?;
    let _: u64 = redis::cmd("XDEL")
        .arg(LOG)
        .arg(&original[4].0)
        .query_async(&mut redis)
        .await?;
    let (ok, text) = verify(&app, &[])?;
    assert!(!ok && text.contains("cut off the end"), "{text}");
    Ok(())
}

#[tokio::test]
async fn verify_refuses_a_trail_signed_by_another_key() -> TestResult {
    let (app, _) = app_with_a_trail().await?;
    let stranger = app.config_path.with_file_name("stranger.key");
    stepgate::audit::AuditSigner::generate().write_pair(&stranger)?;
    let (ok, text) = verify(
        &app,
        &[
            "--public-key",
            &stranger.with_extension("pub").display().to_string(),
        ],
    )?;
    assert!(
        !ok && text.contains("record 1") && text.contains("unknown key"),
        "{text}"
    );
    Ok(())
}
