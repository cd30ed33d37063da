//! Audit records: what happened (an [`AuditEvent`]) and its chained, signed form.
//!
//! A record's body is canonical JSON (object keys sorted, no whitespace — RFC 8785 for the
//! strings and integers these records hold) over the event's fields plus `v` (schema
//! version), `seq` (1, 2, …), `prev` (hex SHA-256 of the previous body; 64 zeros for the
//! first) and `kid` (the signing key's id). The record's hash is SHA-256 of the body bytes;
//! its signature is Ed25519 over the same bytes. No record holds a token or an input: only
//! their SHA-256.

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The record schema version.
pub const SCHEMA_VERSION: u64 = 1;

/// `prev` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The kind of decision or lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A token was missing, malformed or did not verify.
    AuthFailed,
    /// A verified caller was refused by the workflow's policy (or the workflow is unknown).
    Denied,
    /// A trigger was refused by a rate limit or the backlog bound.
    RateLimited,
    /// A trigger was written to its queue.
    Accepted,
    /// A trigger was accepted to start at a later time (held in Redis until then).
    Deferred,
    /// Step Functions started the execution.
    Started,
    /// A request could not start as it is and went to its workflow's dead letters.
    DeadLettered,
    /// An operator put a dead letter back into its queue (same request id).
    Replayed,
    /// A request was given up for good (an operator purged its dead letter).
    Failed,
    /// The process started with a configuration.
    ConfigLoaded,
    /// A new configuration was installed.
    ConfigReloaded,
    /// A new configuration was refused; the running one stays.
    ConfigRefused,
}

/// One event, before chaining. Absent fields are left out of the record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    pub event: EventKind,
    /// RFC 3339, UTC.
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// SHA-256 of the configuration file, for configuration events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_sha256: Option<String>,
}

impl AuditEvent {
    /// An event of `kind` happening now, with no other field set.
    pub fn now(kind: EventKind) -> Self {
        Self {
            event: kind,
            time: crate::clock::now_rfc3339(),
            workflow: None,
            request_id: None,
            issuer: None,
            subject: None,
            client_id: None,
            client_addr: None,
            token_sha256: None,
            input_sha256: None,
            execution_arn: None,
            reason: None,
            config_sha256: None,
        }
    }

    /// The canonical body of this event as record `seq`, chained after `prev`.
    pub fn body(&self, seq: u64, prev: &str, kid: &str) -> Vec<u8> {
        let mut fields = match serde_json::to_value(self) {
            Ok(Value::Object(fields)) => fields,
            // A struct of strings always serializes to an object.
            _ => Map::new(),
        };
        fields.insert("v".into(), SCHEMA_VERSION.into());
        fields.insert("seq".into(), seq.into());
        fields.insert("prev".into(), prev.into());
        fields.insert("kid".into(), kid.into());
        canonical_json(&Value::Object(fields))
    }
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Serializes with object keys sorted and no insignificant whitespace, independent of how
/// `serde_json` orders maps; strings are escaped as `serde_json` does (as RFC 8785 asks).
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            // RFC 8785 orders by UTF-16 code units; identical to byte order for our ASCII keys.
            entries.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(&Value::String(key.clone()), out);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let value = json!({"b": 1, "a": {"z": [true, null, "x\"y"], "c": -2}});
        assert_eq!(
            canonical_json(&value),
            br#"{"a":{"c":-2,"z":[true,null,"x\"y"]},"b":1}"#.to_vec()
        );
    }

    #[test]
    fn body_carries_the_chain_fields_and_leaves_out_absent_ones() -> Result<(), serde_json::Error> {
        let mut event = AuditEvent::now(EventKind::Denied);
        event.workflow = Some("orders".into());
        let body: Value = serde_json::from_slice(&event.body(7, GENESIS_HASH, "k1"))?;
        assert_eq!(body["seq"], 7);
        assert_eq!(body["prev"], GENESIS_HASH);
        assert_eq!(body["kid"], "k1");
        assert_eq!(body["event"], "denied");
        assert!(body.get("request_id").is_none());
        Ok(())
    }
}
