//! What token verification costs per request, with and without the verified-token cache.
//!
//! `scripts/bench-verify` runs it (release build). It starts the real identity provider,
//! gets a real RS256 access token by the client_credentials grant, loads the issuer's keys
//! by OIDC discovery, and times `Verifier::verify` on that token: every call a full
//! signature check (cache off), then the cached path (cache on), then the cached path
//! while another task verifies a flood of distinct valid tokens into a full cache (each of
//! them a signature check and an insert that must evict): the hits must not wait for it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use stepgate::auth::Verifier;
use stepgate::config::IssuerConfig;

const AUDIENCE: &str = "https://stepgate.local";
const ITERATIONS: u32 = 20_000;
/// Distinct valid tokens of the flood, into a cache of `FLOOD_CACHE` entries.
const FLOOD_TOKENS: usize = 3_000;
const FLOOD_CACHE: usize = 1_000;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut idp = Command::new("node")
        .arg("idp.mjs")
        .current_dir(root.join("tests/partners/idp"))
        .env("IDP_CLIENTS", r#"[{"client_id": "bench", "client_secret": "bench-secret", "scope": "workflows:trigger"}]"#)
        .env("IDP_PARENT_PID", std::process::id().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(idp.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let ready: Value = serde_json::from_str(&line)?;
    let issuer = ready["issuer"].as_str().ok_or("no issuer")?.to_owned();
    let reply: Value = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .basic_auth("bench", Some("bench-secret"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "workflows:trigger"),
        ])
        .send()
        .await?
        .json()
        .await?;
    let token = reply["access_token"].as_str().ok_or("no token")?.to_owned();

    let config: IssuerConfig =
        serde_json::from_value(serde_json::json!({"issuer": issuer, "audiences": [AUDIENCE]}))?;
    println!(
        "verify cost per request, RS256 (2048-bit) access token from oidc-provider, {ITERATIONS} calls each"
    );
    println!(
        "{:<28} {:>12} {:>14}",
        "mode", "per call", "calls/s (1 core)"
    );
    for (mode, cache_entries) in [
        ("signature check (cache off)", 0),
        ("token cache hit", 10_000),
    ] {
        let verifier = Verifier::new(
            std::slice::from_ref(&config),
            reqwest::Client::new(),
            cache_entries,
            None,
        )?;
        for issuer in verifier.issuers() {
            issuer.keys.refresh().await?;
        }
        verifier.verify(&token).await?;
        let started = Instant::now();
        for _ in 0..ITERATIONS {
            verifier.verify(&token).await?;
        }
        let per_call = started.elapsed() / ITERATIONS;
        let rate = Duration::from_secs(1).as_nanos() / per_call.as_nanos().max(1);
        println!(
            "{mode:<28} {:>10.2} µs {rate:>14}",
            per_call.as_nanos() as f64 / 1_000.0
        );
    }
    flood(&config, &token, &ready).await?;
    let _ = idp.kill();
    let _ = idp.wait();
    Ok(())
}

/// Cache hits of one caller while another task verifies `FLOOD_TOKENS` distinct valid
/// tokens (signed here with the IdP's own key) into a full cache.
async fn flood(config: &IssuerConfig, hot: &str, ready: &Value) -> Result<()> {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        ready["private_key_pem"]
            .as_str()
            .ok_or("no key")?
            .as_bytes(),
    )?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(ready["kid"].as_str().ok_or("no kid")?.to_owned());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 600;
    let tokens = (0..FLOOD_TOKENS)
        .map(|n| {
            let claims = serde_json::json!({"iss": config.issuer, "aud": AUDIENCE,
                "sub": format!("flood-{n}"), "exp": exp});
            jsonwebtoken::encode(&header, &claims, &key)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let verifier = std::sync::Arc::new(Verifier::new(
        std::slice::from_ref(config),
        reqwest::Client::new(),
        FLOOD_CACHE,
        None,
    )?);
    for issuer in verifier.issuers() {
        issuer.keys.refresh().await?;
    }
    // Fill the cache first, so every flood token's insert evicts.
    for token in &tokens[..FLOOD_CACHE] {
        verifier.verify(token).await?;
    }
    verifier.verify(hot).await?;
    let flooding = {
        let (verifier, tokens) = (std::sync::Arc::clone(&verifier), tokens.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            for token in &tokens[FLOOD_CACHE..] {
                verifier.verify(token).await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(started.elapsed())
        })
    };
    let mut slowest = Duration::ZERO;
    let mut hits = 0u32;
    let started = Instant::now();
    while !flooding.is_finished() {
        let call = Instant::now();
        verifier.verify(hot).await?;
        slowest = slowest.max(call.elapsed());
        hits += 1;
    }
    let per_hit = started.elapsed() / hits.max(1);
    let flood_took = flooding.await??;
    println!(
        "{:<28} {:>10.2} µs   (slowest {:.1} µs; {hits} hits while {} new tokens took {:.2} s, cache {FLOOD_CACHE})",
        "cache hit during a flood",
        per_hit.as_nanos() as f64 / 1_000.0,
        slowest.as_nanos() as f64 / 1_000.0,
        FLOOD_TOKENS - FLOOD_CACHE,
        flood_took.as_secs_f64()
    );
    Ok(())
}
