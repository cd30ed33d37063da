//! Audit records: what happened (an [`AuditEvent`]) and its chained, signed form.
//!
//! A record's body is the RFC 8785 canonical JSON of the event's fields plus `v` (schema
//! version), `seq` (1, 2, …), `prev` (hex SHA-256 of the previous body; 64 zeros for the
//! first) and `kid` (the signing key's id). The record's hash is SHA-256 of the body bytes;
//! its signature is Ed25519 over the same bytes. No record holds a token: only its SHA-256;
//! a trigger's input only as its SHA-256 unless the workflow stores it, redacted.

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use super::canonical::canonical_json;

/// The record schema version written now. Version 1 (no `id`) still verifies.
pub const SCHEMA_VERSION: u64 = 2;

/// `prev` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The kind of decision or lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A token was missing, malformed or did not verify.
    AuthFailed,
    /// A verified caller was refused by a policy (or the workflow is unknown).
    Denied,
    /// A trigger was refused by a rate limit or the backlog bound.
    RateLimited,
    /// A trigger was written to its queue.
    Accepted,
    /// A trigger was accepted to start at a later time (held in Redis until then).
    Deferred,
    /// An accepted trigger was taken back before it could start: its `accepted` record
    /// could not be written in time (`audit.fail_closed`), and the caller was answered 503.
    Withdrawn,
    /// Step Functions started the execution.
    Started,
    /// A start failed in a way worth retrying; the request waits and is tried again.
    Retried,
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
    /// The trail's signing key changed: this record, signed by the old key, introduces the
    /// new one (`new_kid`, `public_key`); the old key signs nothing after it.
    KeyRotated,
}

/// One event, before chaining. Absent fields are left out of the record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// Unique per event (UUIDv7): lets readers and SIEMs recognise a record they already hold.
    pub id: String,
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
    /// The input itself, with the workflow's redactions applied, where the workflow asks
    /// for it (`audit_input = "redacted"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_arn: Option<String>,
    /// Which attempt failed, for `retried`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// SHA-256 of the configuration file, for configuration events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_sha256: Option<String>,
    /// The key introduced by `key_rotated`: its id and raw 32 bytes in base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

impl AuditEvent {
    /// An event of `kind` happening now, with no other field set.
    pub fn now(kind: EventKind) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
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
            input: None,
            execution_arn: None,
            attempt: None,
            reason: None,
            config_sha256: None,
            new_kid: None,
            public_key: None,
        }
    }

    /// The canonical body of this event as record `seq`, chained after `prev`.
    pub fn body(&self, seq: u64, prev: &str, kid: &str) -> Vec<u8> {
        let mut fields = match serde_json::to_value(self) {
            Ok(Value::Object(fields)) => fields,
            // A struct always serializes to an object.
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

#[cfg(test)]
mod tests {
    use super::*;

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
