//! Opaque access tokens, verified by asking their issuer (RFC 7662 token introspection)
//! with stepgate's own client credentials.
//!
//! The answer must say `active: true`; its `iss` (when given) must be the issuer, its `aud`
//! must name an accepted audience, and `exp`/`nbf` must hold (with leeway). The verifier
//! caches a positive answer until the token's `exp`, like a verified JWT.

use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use super::verifier::AuthError;
use crate::config::{IntrospectionConfig, IssuerConfig};

/// Introspection of one issuer's tokens.
pub struct Introspector {
    issuer: String,
    config: IntrospectionConfig,
    http: reqwest::Client,
    /// From the configuration, or else the discovery document's `introspection_endpoint`.
    endpoint: OnceCell<String>,
}

impl Introspector {
    pub fn new(issuer: &IssuerConfig, config: IntrospectionConfig, http: reqwest::Client) -> Self {
        let endpoint = config
            .endpoint
            .clone()
            .map_or_else(OnceCell::new, |e| OnceCell::new_with(Some(e)));
        Self {
            issuer: issuer.issuer.clone(),
            config,
            http,
            endpoint,
        }
    }

    /// The token's claims if the issuer says it is active; `None` if it says it is not.
    pub async fn introspect(&self, token: &str) -> Result<Option<Map<String, Value>>, AuthError> {
        let unavailable = |e: &dyn std::fmt::Display| AuthError::IntrospectionFailed(e.to_string());
        let endpoint = self.endpoint.get_or_try_init(|| self.discover()).await?;
        let reply: Map<String, Value> = self
            .http
            .post(endpoint)
            .basic_auth(
                &self.config.client_id,
                Some(self.config.client_secret.expose()),
            )
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .map_err(|e| unavailable(&e))?
            .error_for_status()
            .map_err(|e| unavailable(&e))?
            .json()
            .await
            .map_err(|e| unavailable(&e))?;
        if reply.get("active") != Some(&Value::Bool(true)) {
            return Ok(None);
        }
        Ok(Some(reply))
    }

    async fn discover(&self) -> Result<String, AuthError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let document: Value = async {
            self.http
                .get(url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await
        .map_err(|e: reqwest::Error| AuthError::IntrospectionFailed(e.to_string()))?;
        document["introspection_endpoint"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                AuthError::IntrospectionFailed("the issuer names no introspection_endpoint".into())
            })
    }
}

/// Checks an active introspection answer against the issuer's rules; returns its `exp`.
pub fn check_claims(
    issuer: &IssuerConfig,
    claims: &Map<String, Value>,
    now: u64,
) -> Result<u64, AuthError> {
    let reject = |why: &str| Err(AuthError::Rejected(why.to_owned()));
    if claims
        .get("iss")
        .and_then(Value::as_str)
        .is_some_and(|iss| iss != issuer.issuer)
    {
        return reject("wrong issuer");
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => issuer.audiences.contains(aud),
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .any(|a| issuer.audiences.iter().any(|w| w == a)),
        _ => false,
    };
    if !audience_ok {
        return reject("wrong audience");
    }
    let Some(exp) = claims.get("exp").and_then(Value::as_u64) else {
        return reject("missing claim exp");
    };
    if exp + issuer.leeway_seconds <= now {
        return reject("expired");
    }
    if claims
        .get("nbf")
        .and_then(Value::as_u64)
        .is_some_and(|nbf| nbf > now + issuer.leeway_seconds)
    {
        return reject("not yet valid (nbf)");
    }
    Ok(exp)
}

/// How long to wait for an introspection answer.
pub const INTROSPECTION_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn issuer() -> Result<IssuerConfig, serde_json::Error> {
        serde_json::from_value(
            json!({"issuer": "https://idp", "audiences": ["https://stepgate"], "leeway_seconds": 30}),
        )
    }

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn an_active_answer_must_fit_the_issuer() -> Result<(), serde_json::Error> {
        let issuer = issuer()?;
        let good =
            json!({"active": true, "iss": "https://idp", "aud": "https://stepgate", "exp": 1_000});
        assert_eq!(
            check_claims(&issuer, &claims(good.clone()), 900).ok(),
            Some(1_000)
        );
        assert!(
            check_claims(&issuer, &claims(good.clone()), 1_029).is_ok(),
            "within leeway"
        );
        assert!(
            check_claims(&issuer, &claims(good), 1_030).is_err(),
            "expired"
        );
        for bad in [
            json!({"active": true, "iss": "https://other", "aud": "https://stepgate", "exp": 1_000}),
            json!({"active": true, "aud": "https://elsewhere", "exp": 1_000}),
            json!({"active": true, "exp": 1_000}),
            json!({"active": true, "aud": ["https://stepgate"]}),
            json!({"active": true, "aud": ["x", "https://stepgate"], "exp": 1_000, "nbf": 990}),
        ] {
            assert!(
                check_claims(&issuer, &claims(bad.clone()), 900).is_err(),
                "{bad}"
            );
        }
        let within_leeway =
            json!({"active": true, "aud": ["x", "https://stepgate"], "exp": 1_000, "nbf": 920});
        assert!(check_claims(&issuer, &claims(within_leeway), 900).is_ok());
        Ok(())
    }
}
