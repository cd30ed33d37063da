//! The verified caller, as the policy and handlers see it.

use serde_json::{Map, Value};

/// A caller whose access token was verified: who it is, on whose behalf, with which scopes.
#[derive(Debug, Clone)]
pub struct Principal {
    pub issuer: String,
    pub subject: String,
    /// `client_id` (RFC 9068), else `azp`.
    pub client_id: Option<String>,
    /// `scope` (space-separated string) or `scp` (array).
    pub scopes: Vec<String>,
    /// All claims, for policy rules on other claims (groups, roles …).
    pub claims: Map<String, Value>,
    /// SHA-256 of the token (hex): what logs and audit records carry instead of the token.
    pub token_sha256: String,
}

impl Principal {
    /// Builds a principal from verified claims; `sub` must already be checked present.
    pub fn from_claims(issuer: String, claims: Map<String, Value>, token_sha256: String) -> Self {
        let string = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let scopes = match (claims.get("scope"), claims.get("scp")) {
            (Some(Value::String(s)), _) => s.split_ascii_whitespace().map(str::to_owned).collect(),
            (_, Some(Value::Array(items))) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            (_, Some(Value::String(s))) => s.split_ascii_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Self {
            subject: string("sub").unwrap_or_default(),
            client_id: string("client_id").or_else(|| string("azp")),
            scopes,
            issuer,
            claims,
            token_sha256,
        }
    }

    /// Identifies the caller across issuers: the owner of the requests it creates.
    pub fn owner(&self) -> crate::domain::Owner {
        crate::domain::Owner {
            issuer: self.issuer.clone(),
            subject: self.subject.clone(),
        }
    }

    /// Whether the string claim, or any element of the array claim, `name` is one of `values`.
    pub fn claim_contains_any(&self, name: &str, values: &[String]) -> bool {
        let hit = |v: &Value| {
            v.as_str()
                .is_some_and(|s| values.iter().any(|want| want == s))
        };
        match self.claims.get(name) {
            Some(Value::Array(items)) => items.iter().any(hit),
            Some(v) => hit(v),
            None => false,
        }
    }
}
