//! Reads of a token *before* its signature is checked.
//!
//! **Nothing read here may be trusted.** The issuer is read only to choose among the
//! configured issuers (whose keys then decide), and for the audit record of a refused
//! token; the duplicate-claim check only ever refuses.

use std::collections::HashSet;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

#[derive(Deserialize)]
struct IssuerOnly {
    iss: String,
}

/// The `iss` claim, unverified.
pub fn issuer(token: &str) -> Option<String> {
    jsonwebtoken::dangerous::insecure_decode::<IssuerOnly>(token)
        .ok()
        .map(|t| t.claims.iss)
}

/// Whether the payload repeats a member name in any object. JSON parsers disagree on which
/// duplicate wins, so a token that repeats a claim is refused (RFC 7519 §4, RFC 8725 §3.2).
pub fn has_duplicate_claims(token: &str) -> bool {
    let Some(payload) = token.split('.').nth(1) else {
        return true;
    };
    let Ok(json) = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')) else {
        return true;
    };
    serde_json::from_slice::<UniqueKeys>(&json).is_err()
}

/// Any JSON value whose objects, at every depth, have unique member names.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(de::Error::custom("duplicate member name"));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(payload: &str) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn repeated_claims_are_found_at_any_depth() {
        assert!(!has_duplicate_claims(&token(
            r#"{"sub":"a","aud":["x","x"],"o":{"k":1}}"#
        )));
        assert!(has_duplicate_claims(&token(r#"{"sub":"a","sub":"admin"}"#)));
        assert!(has_duplicate_claims(&token(r#"{"o":{"k":1,"k":2}}"#)));
        assert!(has_duplicate_claims(&token(r#"{"a":[{"k":1,"k":2}]}"#)));
        assert!(has_duplicate_claims("no-dots"));
        assert!(has_duplicate_claims("a.!!!.c"));
    }
}

/// Whether `token` is shaped like a compact JWS or JWE: 3 or 5 dot-separated parts whose
/// first decodes to a JSON object with `alg`. Decoded unverified, only to decide where the
/// token may be sent.
pub fn looks_like_jose(token: &str) -> bool {
    let parts = token.split('.').count();
    if parts != 3 && parts != 5 {
        return false;
    }
    let header = token.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|header| header.get("alg").is_some())
}

#[cfg(test)]
mod jose_shape_tests {
    use super::looks_like_jose;

    #[test]
    fn tells_a_jose_token_from_an_opaque_one_with_dots() {
        // {"alg":"ES512"} as a header, and a JWE's five parts.
        assert!(looks_like_jose("eyJhbGciOiJFUzUxMiJ9.e30.c2ln"));
        assert!(looks_like_jose("eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d"));
        assert!(!looks_like_jose("ory_at_abc.def"));
        assert!(!looks_like_jose("ya29.a0AfH6SM"));
        assert!(!looks_like_jose("abc.def.ghi"));
        assert!(!looks_like_jose("opaque"));
    }
}
