//! Token attacks: every one is refused with 401 and an audit record, and nothing is queued.
//! Hand-made tokens are signed with the identity provider's real key, so each differs from
//! an accepted token in exactly the one way under test (see the positive control).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{AUDIENCE, Idp, TestApp, TestResult, header, partners, spawn_app};

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Claims as the IdP issues them for billing-service.
fn good_claims(idp: &Idp) -> Value {
    json!({
        "iss": idp.issuer, "aud": AUDIENCE, "sub": "billing-service", "client_id": "billing-service",
        "scope": "workflows:trigger", "jti": uuid::Uuid::new_v4().to_string(), "iat": now(), "exp": now() + 300,
    })
}

fn sign_rs256(idp: &Idp, kid: &str, claims: &Value) -> TestResult<String> {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    header.typ = Some("at+jwt".to_owned());
    Ok(encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(idp.private_key_pem.as_bytes())?,
    )?)
}

/// Any header and payload bytes, signed RS256 with `key_pem`: for tokens `encode` cannot make.
fn sign_raw(key_pem: &str, header: &Value, payload: &[u8]) -> TestResult<String> {
    let signing_input = format!(
        "{}.{}",
        B64URL.encode(serde_json::to_vec(header)?),
        B64URL.encode(payload)
    );
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_rsa_pem(key_pem.as_bytes())?,
        Algorithm::RS256,
    )?;
    Ok(format!("{signing_input}.{signature}"))
}

fn with_claim(idp: &Idp, name: &str, value: Value) -> Value {
    let mut claims = good_claims(idp);
    claims[name] = value;
    claims
}

async fn assert_refused(app: &TestApp, case: &str, token: &str) -> TestResult {
    let response = app
        .trigger("orders", token, &json!({"input": {"case": case}}))
        .await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case}");
    let challenge = header(&response, "www-authenticate");
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{case}: {challenge}"
    );
    let problem: Value = response.json().await?;
    assert_eq!(problem["code"], "invalid_token", "{case}");
    assert_eq!(
        problem["detail"], "the access token is invalid",
        "{case}: reveals nothing more"
    );
    Ok(())
}

#[tokio::test]
async fn every_forged_or_invalid_token_gets_401_and_an_audit_record() -> TestResult {
    // A record per refusal (no aggregation), to see each attack's own token hash.
    let app = crate::support::spawn_app_with(crate::support::RedisServer::start(), |config| {
        config.set("audit.refusal_window_seconds", 0)
    })
    .await?;
    let idp = &partners().idp;

    // Positive control: a hand-made token with the IdP's key and claims is accepted.
    let control = sign_rs256(idp, &idp.kid, &good_claims(idp))?;
    assert_eq!(
        app.trigger("orders", &control, &json!({})).await?.status(),
        StatusCode::ACCEPTED
    );

    let real = idp.billing_token().await?;
    let parts: Vec<&str> = real.split('.').collect();
    let mut tampered_claims: Value = serde_json::from_slice(&B64URL.decode(parts[1])?)?;
    tampered_claims["sub"] = json!("admin-service");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64URL.encode(serde_json::to_vec(&tampered_claims)?),
        parts[2]
    );
    let alg_none = format!(
        "{}.{}.",
        B64URL.encode(br#"{"alg":"none","typ":"JWT"}"#),
        B64URL.encode(serde_json::to_vec(&good_claims(idp))?)
    );
    let claims_bytes = serde_json::to_vec(&good_claims(idp))?;
    let duplicated = {
        let text = String::from_utf8(claims_bytes.clone())?;
        text.replacen('{', r#"{"sub":"admin-service","#, 1)
            .into_bytes()
    };
    let mut without_exp = good_claims(idp);
    without_exp.as_object_mut().ok_or("claims")?.remove("exp");
    let mut ps_header = Header::new(Algorithm::PS256);
    ps_header.kid = Some(idp.kid.clone());
    let ps256 = encode(
        &ps_header,
        &good_claims(idp),
        &EncodingKey::from_rsa_pem(idp.private_key_pem.as_bytes())?,
    )?;
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(idp.kid.clone());
    let hs256_with_public_key = encode(
        &hs_header,
        &good_claims(idp),
        &EncodingKey::from_secret(idp.public_key_pem.as_bytes()),
    )?;

    let cases = [
        (
            "expired",
            "expired",
            sign_rs256(idp, &idp.kid, &with_claim(idp, "exp", json!(now() - 120)))?,
        ),
        (
            "not yet valid",
            "not yet valid",
            sign_rs256(idp, &idp.kid, &with_claim(idp, "nbf", json!(now() + 300)))?,
        ),
        (
            "wrong audience (a real token for another service)",
            "wrong audience",
            idp.token_for(
                "billing-service",
                "billing-secret",
                "workflows:trigger",
                "https://other-service.local",
            )
            .await?,
        ),
        (
            "wrong issuer",
            "issuer is not trusted",
            sign_rs256(
                idp,
                &idp.kid,
                &with_claim(idp, "iss", json!("http://127.0.0.1:9/evil")),
            )?,
        ),
        ("alg none", "not a well-formed", alg_none),
        (
            "HS256 keyed with the issuer's public key",
            "HS256 is not allowed",
            hs256_with_public_key,
        ),
        (
            "unknown kid",
            "no key",
            sign_rs256(idp, "no-such-key", &good_claims(idp))?,
        ),
        ("tampered payload", "bad signature", tampered),
        (
            "garbage",
            "not a well-formed",
            "this-is-not-a-jwt".to_owned(),
        ),
        // Issue 3: key confusion, header tricks, malformed claims.
        (
            "kid path injection",
            "no key",
            sign_rs256(idp, "../../../../etc/passwd", &good_claims(idp))?,
        ),
        (
            "kid SQL injection",
            "no key",
            sign_rs256(idp, "' OR '1'='1' --", &good_claims(idp))?,
        ),
        (
            "jku header pointing to the attacker's keys",
            "no key",
            sign_raw(
                &idp.attacker_private_key_pem,
                &json!({"alg": "RS256", "kid": "attacker-key", "jku": "http://127.0.0.1:9/jwks.json"}),
                &claims_bytes,
            )?,
        ),
        (
            "x5u header pointing elsewhere",
            "no key",
            sign_raw(
                &idp.attacker_private_key_pem,
                &json!({"alg": "RS256", "kid": "attacker-key", "x5u": "http://127.0.0.1:9/cert.pem"}),
                &claims_bytes,
            )?,
        ),
        (
            "jwk header embedding the attacker's key",
            "no key",
            sign_raw(
                &idp.attacker_private_key_pem,
                &json!({"alg": "RS256", "kid": "attacker-key", "jwk": idp.attacker_jwk}),
                &claims_bytes,
            )?,
        ),
        (
            "attacker's key under the issuer's kid",
            "bad signature",
            sign_raw(
                &idp.attacker_private_key_pem,
                &json!({"alg": "RS256", "kid": idp.kid}),
                &claims_bytes,
            )?,
        ),
        (
            "crit header with an unknown extension",
            "critical header",
            sign_raw(
                &idp.private_key_pem,
                &json!({"alg": "RS256", "kid": idp.kid, "crit": ["urn:x:ext"], "urn:x:ext": "on"}),
                &claims_bytes,
            )?,
        ),
        (
            "algorithm not allowed for this issuer (PS256)",
            "PS256 is not allowed",
            ps256,
        ),
        (
            "nested JWT",
            "nested JWT",
            sign_raw(
                &idp.private_key_pem,
                &json!({"alg": "RS256", "kid": idp.kid, "cty": "JWT"}),
                &claims_bytes,
            )?,
        ),
        (
            "oversized token (> 16 KiB)",
            "larger than",
            sign_rs256(
                idp,
                &idp.kid,
                &with_claim(idp, "pad", json!("x".repeat(17 * 1024))),
            )?,
        ),
        (
            "duplicate claims",
            "repeats a claim",
            sign_raw(
                &idp.private_key_pem,
                &json!({"alg": "RS256", "kid": idp.kid}),
                &duplicated,
            )?,
        ),
        (
            "exp as a string",
            "exp",
            sign_rs256(
                idp,
                &idp.kid,
                &with_claim(idp, "exp", json!((now() + 300).to_string())),
            )?,
        ),
        (
            "missing exp",
            "missing claim exp",
            sign_rs256(idp, &idp.kid, &without_exp)?,
        ),
        (
            "signature stripped",
            "bad signature",
            format!("{}.{}.", parts[0], parts[1]),
        ),
    ];
    assert!(
        cases.len() >= 20,
        "the attack suite has {} cases",
        cases.len()
    );
    for (case, _, token) in &cases {
        assert_refused(&app, case, token).await?;
    }

    let records = app.decision_records().await?;
    let refusals: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "auth_failed")
        .collect();
    assert_eq!(
        refusals.len(),
        cases.len(),
        "one auth_failed record per attack"
    );
    for (record, (case, reason, token)) in refusals.iter().zip(&cases) {
        let expected_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
        assert_eq!(record["token_sha256"], expected_hash.as_str(), "{case}");
        assert_eq!(record["client_addr"], "127.0.0.1", "{case}");
        let recorded = record["reason"].as_str().unwrap_or_default();
        assert!(
            recorded.contains(reason),
            "{case}: refused for {recorded:?}, expected {reason:?}"
        );
    }
    let trail = serde_json::to_string(&records)?;
    for (case, _, token) in &cases {
        assert!(
            !trail.contains(token.as_str()),
            "the trail must not hold the token ({case})"
        );
    }
    let accepted: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "accepted")
        .collect();
    assert_eq!(accepted.len(), 1, "only the positive control was queued");
    let executions = crate::support::executions(&app.sfn, &app.state_machine_arn).await?;
    assert!(
        executions.iter().all(|(_, input)| input == "{}"),
        "no attack input reached Step Functions: {executions:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_request_without_credentials_gets_a_bare_challenge() -> TestResult {
    let app = spawn_app().await?;
    let response = app
        .http
        .post(app.url("/v1/workflows/orders/executions"))
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // RFC 6750 §3.1: no error code when the request carried no authentication at all.
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some(r#"Bearer realm="stepgate""#)
    );
    assert_eq!(response.json::<Value>().await?["code"], "missing_token");
    Ok(())
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_single() -> TestResult {
    let app = spawn_app().await?;
    let token = partners().idp.billing_token().await?;
    let url = app.url("/v1/workflows/orders/executions");
    let lowercase = app
        .http
        .post(&url)
        .header("authorization", format!("bearer {token}"))
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(lowercase.status(), StatusCode::ACCEPTED);

    let twice = app
        .http
        .post(&url)
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {token}"))
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(twice.status(), StatusCode::BAD_REQUEST);
    let challenge = header(&twice, "www-authenticate");
    assert!(
        challenge.contains(r#"error="invalid_request""#),
        "{challenge}"
    );
    let records = app.decision_records().await?;
    assert!(
        records.iter().any(|r| r["event"] == "auth_failed"
            && r["reason"]
                .as_str()
                .is_some_and(|r| r.contains("more than one"))),
        "the malformed request is audited: {records:?}"
    );
    Ok(())
}

/// A one-time token whose `exp` has a fraction (RFC 7519's NumericDate allows one, and the
/// verifier accepts it) is remembered for its whole life: before, its marker lived only the
/// clock leeway, and the token could be replayed once that passed.
#[tokio::test]
async fn a_one_time_token_with_a_fractional_exp_is_remembered_for_its_life() -> TestResult {
    let app = crate::policy::one_time_token_app().await?;
    let idp = &partners().idp;
    let exp = serde_json::Number::from_f64(now() as f64 + 300.5).ok_or("exp")?;
    let token = sign_rs256(idp, &idp.kid, &with_claim(idp, "exp", Value::Number(exp)))?;
    let first = app.trigger("payouts", &token, &json!({})).await?;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let mut redis = app.redis.connection().await?;
    let markers: Vec<String> = redis::cmd("KEYS")
        .arg(crate::support::keys().used_token(&crate::support::workflow_named("payouts")?, "*"))
        .query_async(&mut redis)
        .await?;
    assert_eq!(markers.len(), 1);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&markers[0])
        .query_async(&mut redis)
        .await?;
    assert!(ttl >= 295, "remembered {ttl} s of the token's 300 s life");
    let replay = app.trigger("payouts", &token, &json!({})).await?;
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    Ok(())
}
