//! What stepgate fetches from an identity provider, and how much of it it reads.
//!
//! Discovery, the JWKS and introspection decide who gets in, so they travel over `https`:
//! plain `http` only to a loopback address when the issuer itself is `http` on loopback (a
//! local development IdP), or anywhere when the issuer sets `allow_insecure_http` (warned
//! at start). Every answer is read up to a cap: an IdP that answers with megabytes is a
//! failed fetch (the last good keys keep serving), not memory spent.

use reqwest::Url;
use serde::de::DeserializeOwned;

use crate::config::IssuerConfig;

/// Largest OIDC discovery document read.
pub const MAX_DISCOVERY_BYTES: usize = 64 * 1024;
/// Largest JWKS read.
pub const MAX_JWKS_BYTES: usize = 512 * 1024;
/// Largest introspection answer read.
pub const MAX_INTROSPECTION_BYTES: usize = 64 * 1024;

/// Which URLs an issuer's endpoints may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointRules {
    /// `allow_insecure_http`: any `http` URL.
    insecure_http: bool,
    /// The issuer is `http` on loopback: `http` URLs on loopback.
    loopback_http: bool,
}

/// Why an endpoint or an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchRefused {
    #[error("{0:?} is not a URL")]
    NotUrl(String),
    #[error(
        "{0} must be https (http only on a loopback address for a loopback issuer, or with \
         allow_insecure_http = true)"
    )]
    Insecure(String),
    #[error("the answer is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Http(String),
    #[error("the answer is not the expected JSON: {0}")]
    Json(String),
}

impl EndpointRules {
    pub fn of(issuer: &IssuerConfig) -> Self {
        Self {
            insecure_http: issuer.allow_insecure_http,
            loopback_http: Url::parse(&issuer.issuer)
                .is_ok_and(|url| url.scheme() == "http" && is_loopback(&url)),
        }
    }

    /// `url`, if an endpoint of this issuer may have it.
    pub fn check(&self, url: &str) -> Result<Url, FetchRefused> {
        let parsed = Url::parse(url).map_err(|_| FetchRefused::NotUrl(url.to_owned()))?;
        let allowed = match parsed.scheme() {
            "https" => true,
            "http" => self.insecure_http || (self.loopback_http && is_loopback(&parsed)),
            _ => false,
        };
        if allowed {
            Ok(parsed)
        } else {
            Err(FetchRefused::Insecure(url.to_owned()))
        }
    }
}

/// Whether `issuer` (a configured issuer URL) may be used as it is: `https`, or `http` on
/// loopback, or `allow_insecure_http`.
pub fn check_issuer(issuer: &IssuerConfig) -> Result<(), FetchRefused> {
    let url =
        Url::parse(&issuer.issuer).map_err(|_| FetchRefused::NotUrl(issuer.issuer.clone()))?;
    let allowed = match url.scheme() {
        "https" => true,
        "http" => issuer.allow_insecure_http || is_loopback(&url),
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(FetchRefused::Insecure(issuer.issuer.clone()))
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// The body of a successful `response`, at most `limit` bytes (else refused without reading
/// more than `limit` and one chunk).
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, FetchRefused> {
    let response_status = response.error_for_status_ref().map(|_| ());
    response_status.map_err(|e| FetchRefused::Http(e.to_string()))?;
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(FetchRefused::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FetchRefused::Http(e.to_string()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(FetchRefused::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A successful `response`'s JSON body, read up to `limit` bytes.
pub async fn json_capped<T: DeserializeOwned>(
    response: reqwest::Response,
    limit: usize,
) -> Result<T, FetchRefused> {
    let body = read_capped(response, limit).await?;
    serde_json::from_slice(&body).map_err(|e| FetchRefused::Json(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(url: &str, insecure: bool) -> Result<IssuerConfig, serde_json::Error> {
        serde_json::from_value(serde_json::json!({
            "issuer": url, "audiences": ["a"], "allow_insecure_http": insecure
        }))
    }

    #[test]
    fn endpoints_are_https_unless_the_issuer_is_local_or_allowed() -> Result<(), serde_json::Error>
    {
        let remote = EndpointRules::of(&issuer("https://idp.example", false)?);
        assert!(remote.check("https://idp.example/jwks").is_ok());
        assert!(remote.check("http://idp.example/jwks").is_err());
        assert!(remote.check("http://127.0.0.1/jwks").is_err());
        assert!(remote.check("file:///etc/passwd").is_err());

        let local = EndpointRules::of(&issuer("http://127.0.0.1:4444", false)?);
        assert!(local.check("http://127.0.0.1:4444/jwks").is_ok());
        assert!(local.check("http://[::1]/jwks").is_ok());
        assert!(local.check("http://localhost/jwks").is_ok());
        assert!(local.check("http://idp.example/jwks").is_err());

        let allowed = EndpointRules::of(&issuer("http://idp.internal", true)?);
        assert!(allowed.check("http://idp.internal/jwks").is_ok());

        assert!(check_issuer(&issuer("http://idp.example", false)?).is_err());
        assert!(check_issuer(&issuer("http://127.0.0.2:80", false)?).is_ok());
        assert!(check_issuer(&issuer("http://idp.example", true)?).is_ok());
        assert!(check_issuer(&issuer("https://idp.example", false)?).is_ok());
        Ok(())
    }
}
