//! The issuer's keys over time: rotation, outages, floods of unknown `kid`s, fixed keys.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::StatusCode;
use serde_json::{Value, json};

use stepgate::testing::TestConfig;

use crate::support::{
    AUDIENCE, OPAQUE_AUDIENCE, OwnIdp, RedisServer, TestApp, TestResult, spawn_app_with,
};

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The issuer at `url`, for `audiences`, with `settings` (an object) of its own.
fn issuer_at(url: &str, audiences: &[&str], settings: Value) -> Value {
    let mut issuer = settings;
    issuer["issuer"] = json!(url);
    issuer["audiences"] = json!(audiences);
    issuer
}

/// The drain off, and `issuer` the one trusted issuer.
fn trusting(issuer: Value) -> impl FnOnce(TestConfig) -> TestConfig {
    move |config| {
        config
            .set("worker.enabled", false)
            .set("issuers", json!([issuer]))
    }
}

async fn app_for(idp: &OwnIdp, settings: Value) -> TestResult<TestApp> {
    let issuer = issuer_at(&idp.idp.issuer, &[AUDIENCE], settings);
    spawn_app_with(RedisServer::start(), trusting(issuer)).await
}

pub async fn status_of(app: &TestApp, token: &str) -> TestResult<StatusCode> {
    Ok(app
        .trigger("orders", token, &json!({"input": {}}))
        .await?
        .status())
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_within_one_cooldown_and_the_old_one_stops_verifying()
-> TestResult {
    let mut idp = OwnIdp::start();
    let app = app_for(&idp, json!({"jwks_refetch_cooldown_seconds": 1})).await?;
    let old_token = idp.idp.billing_token().await?;
    assert_eq!(
        status_of(&app, &old_token).await?,
        StatusCode::ACCEPTED,
        "and now cached"
    );

    idp.restart(None);
    let new_token = idp.idp.billing_token().await?;
    let rotated = Instant::now();
    while status_of(&app, &new_token).await? != StatusCode::ACCEPTED {
        assert!(
            rotated.elapsed() < Duration::from_secs(4),
            "the new key was not picked up within one cooldown"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The old key left the JWKS with that fetch: its token no longer passes, cached or not.
    assert_eq!(status_of(&app, &old_token).await?, StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn tokens_signed_with_cached_keys_pass_while_the_idp_is_down() -> TestResult {
    let mut idp = OwnIdp::start();
    let app = app_for(&idp, json!({})).await?;
    let unused = idp.idp.billing_token().await?;
    idp.stop();

    assert_eq!(status_of(&app, &unused).await?, StatusCode::ACCEPTED);
    let ready: Value = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        ready["status"], "ready",
        "the last good keys keep serving: {ready}"
    );
    Ok(())
}

#[tokio::test]
async fn two_hundred_concurrent_unknown_kids_cause_at_most_one_jwks_fetch() -> TestResult {
    let idp = OwnIdp::start();
    // A cooldown longer than the flood takes, so at most one fetch is allowed during it...
    let app = app_for(&idp, json!({"jwks_refetch_cooldown_seconds": 3})).await?;
    // ...and past the cooldown of the start-up fetch, so that the flood may cause that one.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let before = idp.jwks_fetches().await?;

    let key = EncodingKey::from_rsa_pem(idp.idp.attacker_private_key_pem.as_bytes())?;
    let claims = json!({"iss": idp.idp.issuer, "aud": AUDIENCE, "sub": "billing-service", "client_id": "billing-service",
                        "scope": "workflows:trigger", "exp": now() + 300});
    let mut requests = Vec::new();
    for i in 0..200 {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("rotated-{i}"));
        let token = encode(&header, &claims, &key)?;
        let (http, url) = (app.http.clone(), app.url("/v1/workflows/orders/executions"));
        requests.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({}))
                .send()
                .await
                .map(|r| r.status())
        }));
    }
    let flood = Instant::now();
    for request in requests {
        assert_eq!(request.await??, StatusCode::UNAUTHORIZED);
    }
    assert!(
        flood.elapsed() < Duration::from_secs(3),
        "the flood outlasted the cooldown: {:?}",
        flood.elapsed()
    );
    let fetches = idp.jwks_fetches().await? - before;
    assert_eq!(
        fetches, 1,
        "one refetch for the whole flood (single flight + cooldown)"
    );
    Ok(())
}

#[tokio::test]
async fn fixed_keys_serve_an_air_gapped_issuer_without_any_fetch() -> TestResult {
    let idp = OwnIdp::start();
    let jwks: Value = reqwest::get(format!("{}/jwks", idp.idp.issuer))
        .await?
        .json()
        .await?;
    // An issuer nobody can reach: only the inline keys can verify its tokens.
    let issuer = "https://idp.air-gapped.invalid";
    let inline = issuer_at(
        issuer,
        &[AUDIENCE],
        json!({"jwks_inline": jwks.to_string()}),
    );
    let app = spawn_app_with(RedisServer::start(), trusting(inline)).await?;
    let ready = app.http.get(app.url("/readyz")).send().await?;
    assert_eq!(ready.status(), StatusCode::OK);

    let key = EncodingKey::from_rsa_pem(idp.idp.private_key_pem.as_bytes())?;
    let claims = json!({"iss": issuer, "aud": AUDIENCE, "sub": "billing-service", "client_id": "billing-service",
                        "scope": "workflows:trigger", "exp": now() + 300});
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(idp.idp.kid.clone());
    assert_eq!(
        status_of(&app, &encode(&header, &claims, &key)?).await?,
        StatusCode::ACCEPTED
    );
    header.kid = Some("unknown".into());
    assert_eq!(
        status_of(&app, &encode(&header, &claims, &key)?).await?,
        StatusCode::UNAUTHORIZED
    );
    Ok(())
}

#[tokio::test]
async fn an_issuer_may_require_the_access_token_type_and_more_claims() -> TestResult {
    let idp = OwnIdp::start();
    let app = app_for(
        &idp,
        json!({"require_typ": "at+jwt", "required_claims": ["jti", "client_id"]}),
    )
    .await?;
    // oidc-provider issues RFC 9068 tokens: typ at+jwt, with a jti.
    assert_eq!(
        status_of(&app, &idp.idp.billing_token().await?).await?,
        StatusCode::ACCEPTED
    );

    let key = EncodingKey::from_rsa_pem(idp.idp.private_key_pem.as_bytes())?;
    let claims = json!({"iss": idp.idp.issuer, "aud": AUDIENCE, "sub": "billing-service", "client_id": "billing-service",
                        "scope": "workflows:trigger", "exp": now() + 300, "jti": "j-1"});
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(idp.idp.kid.clone());
    header.typ = Some("JWT".into());
    assert_eq!(
        status_of(&app, &encode(&header, &claims, &key)?).await?,
        StatusCode::UNAUTHORIZED,
        "an ID-token-like typ"
    );
    header.typ = Some("application/at+jwt".into());
    assert_eq!(
        status_of(&app, &encode(&header, &claims, &key)?).await?,
        StatusCode::ACCEPTED
    );
    let mut without_jti = claims.clone();
    without_jti.as_object_mut().ok_or("claims")?.remove("jti");
    assert_eq!(
        status_of(&app, &encode(&header, &without_jti, &key)?).await?,
        StatusCode::UNAUTHORIZED
    );

    let reasons = app.reasons("auth_failed").await?;
    assert_eq!(
        reasons,
        vec![
            r#"token type Some("JWT") is not the required one"#,
            "token rejected: missing claim jti"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn keys_are_not_taken_from_a_discovery_document_naming_another_issuer() -> TestResult {
    let idp = OwnIdp::start();
    // The document says "http://127.0.0.1:<port>"; the configuration says it with a slash.
    let slashed = issuer_at(&format!("{}/", idp.idp.issuer), &[AUDIENCE], json!({}));
    let app = spawn_app_with(RedisServer::start(), trusting(slashed)).await?;
    let ready = app.http.get(app.url("/readyz")).send().await?;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await?;
    assert_eq!(
        body["checks"][format!("issuer {}/", idp.idp.issuer)],
        "signing keys not loaded"
    );
    Ok(())
}

#[tokio::test]
async fn opaque_tokens_are_verified_by_introspection_and_cached_while_they_live() -> TestResult {
    let mut idp = OwnIdp::start();
    let introspected = issuer_at(
        &idp.idp.issuer,
        &[AUDIENCE, OPAQUE_AUDIENCE],
        json!({"introspection": {"client_id": "stepgate", "client_secret": "stepgate-secret"}}),
    );
    let app = spawn_app_with(RedisServer::start(), trusting(introspected)).await?;
    let opaque = idp
        .idp
        .token_for(
            "billing-service",
            "billing-secret",
            "workflows:trigger",
            OPAQUE_AUDIENCE,
        )
        .await?;
    assert_eq!(
        opaque.split('.').count(),
        1,
        "an opaque token, not a JWT: {opaque}"
    );

    let response = app
        .trigger("orders", &opaque, &json!({"input": {}}))
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let request_id = crate::support::request_id_of(response).await?;
    let status: Value = app
        .request_status(&request_id, &opaque)
        .await?
        .json()
        .await?;
    assert_eq!(
        status["status"], "queued",
        "the client is the subject that owns the request"
    );

    let other_audience = idp
        .idp
        .token_for(
            "billing-service",
            "billing-secret",
            "workflows:trigger",
            "https://opaque-other.local",
        )
        .await?;
    assert_eq!(
        status_of(&app, &other_audience).await?,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of(&app, "made-up-opaque-token").await?,
        StatusCode::UNAUTHORIZED
    );

    // While the token lives its introspection answer is cached: the IdP may go away.
    idp.stop();
    assert_eq!(status_of(&app, &opaque).await?, StatusCode::ACCEPTED);
    // A token never seen cannot be checked now: that is our problem, not the caller's.
    let response = app
        .trigger("orders", "another-opaque-token", &json!({}))
        .await?;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));

    let reasons = app.reasons("auth_failed").await?;
    assert_eq!(
        reasons[..2],
        [
            "token rejected: wrong audience",
            "token is not active (introspection)"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn several_issuers_are_trusted_at_once_and_rules_can_tell_them_apart() -> TestResult {
    let second = OwnIdp::start();
    let first = &crate::support::partners().idp;
    let (one, two) = (first.issuer.as_str(), second.idp.issuer.as_str());
    let app = spawn_app_with(RedisServer::start(), |config| {
        config
            .set("worker.enabled", false)
            .push("issuers", issuer_at(two, &[AUDIENCE], json!({})))
            .set(
                "workflows.orders.allow",
                json!([
                    {"issuer": one, "clients": ["billing-service"], "scopes": ["workflows:trigger"]},
                    {"issuer": two, "clients": ["billing-service"]},
                ]),
            )
            .push(
                "workflows.orders.deny",
                json!({"issuer": two, "scopes": ["workflows:read"]}),
            )
    })
    .await?;

    assert_eq!(
        status_of(&app, &first.billing_token().await?).await?,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        status_of(&app, &second.idp.billing_token().await?).await?,
        StatusCode::ACCEPTED
    );
    // The same scopes from the first issuer pass; from the second, the deny rule matches.
    const BROAD: &str = "workflows:trigger workflows:read";
    let from_first = first
        .token("billing-service", "billing-secret", BROAD)
        .await?;
    let from_second = second
        .idp
        .token("billing-service", "billing-secret", BROAD)
        .await?;
    assert_eq!(status_of(&app, &from_first).await?, StatusCode::ACCEPTED);
    assert_eq!(status_of(&app, &from_second).await?, StatusCode::FORBIDDEN);
    // A token of one issuer under the other's name does not verify.
    let forged = {
        let key = EncodingKey::from_rsa_pem(first.private_key_pem.as_bytes())?;
        let claims = json!({"iss": second.idp.issuer, "aud": AUDIENCE, "sub": "billing-service",
                            "client_id": "billing-service", "exp": now() + 300});
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(first.kid.clone());
        encode(&header, &claims, &key)?
    };
    assert_eq!(status_of(&app, &forged).await?, StatusCode::UNAUTHORIZED);
    Ok(())
}
