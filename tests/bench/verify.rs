//! What token verification costs per request, with and without the verified-token cache.
//!
//! `scripts/bench-verify` runs it (release build). It starts the real identity provider,
//! gets a real RS256 access token by the client_credentials grant, loads the issuer's keys
//! by OIDC discovery, and times `Verifier::verify` on that token: every call a full
//! signature check (cache off), then the cached path (cache on).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use stepgate::auth::Verifier;
use stepgate::config::IssuerConfig;

const AUDIENCE: &str = "https://stepgate.local";
const ITERATIONS: u32 = 20_000;

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
    let issuer = serde_json::from_str::<Value>(&line)?["issuer"]
        .as_str()
        .ok_or("no issuer")?
        .to_owned();
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
    let _ = idp.kill();
    let _ = idp.wait();
    Ok(())
}
