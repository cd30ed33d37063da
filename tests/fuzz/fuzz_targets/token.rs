//! Token and header parsing, end to end: the `Authorization` header, the unverified reads,
//! and full verification against a fixed key set (no network). Any panic is a finding.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use stepgate::auth::{Verifier, unverified};
use stepgate::config::IssuerConfig;
use stepgate::http::extract::bearer_token;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("runtime: {e}"))
});

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    let config: IssuerConfig = serde_json::from_value(serde_json::json!({
        "issuer": "https://fuzz.invalid",
        "audiences": ["https://stepgate.local"],
        "algorithms": ["RS256", "PS256", "ES256", "EdDSA"],
        "require_typ": "at+jwt",
        "jwks_inline": include_str!("../jwks.json"),
    }))
    .unwrap_or_else(|e| panic!("config: {e}"));
    // No token cache: every input goes through the whole verification.
    Verifier::new(&[config], reqwest_client(), 0, None).unwrap_or_else(|e| panic!("verifier: {e}"))
});

fn reqwest_client() -> stepgate::auth::HttpClient {
    stepgate::auth::HttpClient::new()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = stepgate::http::HeaderValue::from_bytes(data) {
        let _ = bearer_token(std::iter::once(&value));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = unverified::issuer(text);
        let _ = unverified::has_duplicate_claims(text);
        let _ = RUNTIME.block_on(VERIFIER.verify(text));
    }
});
