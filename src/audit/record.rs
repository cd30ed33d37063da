//! Audit records: what happened (an [`AuditEvent`]) and its chained, signed form.
//!
//! A record's body is the RFC 8785 canonical JSON of the event's fields plus `v` (schema
//! version), `seq` (1, 2, …), `prev` (hex SHA-256 of the previous body; 64 zeros for the
//! first) and `kid` (the signing key's id). The record's hash is SHA-256 of the body bytes;
//! its signature is Ed25519 over the same bytes. No record holds a token: only its SHA-256;
//! a trigger's input only as its SHA-256 unless the workflow stores it, redacted.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

pub use super::canonical::canonical_json;

/// The record schema version written now. Version 4 added `requested` to refusals of an
/// unknown workflow and of the admin API; version 3 added `count` and `last_time` to
/// aggregated refusals; versions 1 (no `id`) and 2 still verify.
pub const SCHEMA_VERSION: u64 = 4;

/// `prev` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The kind of decision or lifecycle event.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
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
    /// A request was given up for good: an operator purged its dead letter, or (an EXPRESS
    /// workflow's `at_most_once`) its start's outcome is unknown (`outcome_unknown: …`).
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
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AuditEvent {
    /// Unique per event (UUIDv7): lets readers and SIEMs recognise a record they already hold.
    pub id: String,
    pub event: EventKind,
    /// RFC 3339, UTC.
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// `denied` for a workflow that is not configured, or by the admin API: the name the
    /// caller asked for, at most 64 characters (an aggregated record: its first repeat's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested: Option<String>,
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
    /// The `x-request-id` of the HTTP request the event is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_request_id: Option<String>,
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
    /// `auth_failed` and `denied`: how many refusals of one source this record stands for,
    /// itself included (see [`super::refusals`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// On the record a closing refusal window writes (any `count`): the time of the last
    /// refusal it stands for (`time` is the first's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_time: Option<String>,
}

impl AuditEvent {
    /// An event of `kind` happening now, with no other field set.
    pub fn now(kind: EventKind) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            event: kind,
            time: crate::clock::now_rfc3339(),
            workflow: None,
            requested: None,
            request_id: None,
            issuer: None,
            subject: None,
            client_id: None,
            client_addr: None,
            token_sha256: None,
            input_sha256: None,
            input: None,
            execution_arn: None,
            http_request_id: current_http_request_id(),
            attempt: None,
            reason: None,
            config_sha256: None,
            new_kid: None,
            public_key: None,
            count: None,
            last_time: None,
        }
    }

    /// The canonical body of this event as record `seq`, chained after `prev`: serialized
    /// straight into RFC 8785 form (members in sorted order, see [`Body`]).
    pub fn body(&self, seq: u64, prev: &str, kid: &str) -> Vec<u8> {
        let body = Body {
            attempt: self.attempt,
            client_addr: self.client_addr.as_deref(),
            client_id: self.client_id.as_deref(),
            config_sha256: self.config_sha256.as_deref(),
            count: self.count,
            event: self.event,
            execution_arn: self.execution_arn.as_deref(),
            http_request_id: self.http_request_id.as_deref(),
            id: &self.id,
            input: self.input.as_ref().and_then(canonical_raw),
            input_sha256: self.input_sha256.as_deref(),
            issuer: self.issuer.as_deref(),
            kid,
            last_time: self.last_time.as_deref(),
            new_kid: self.new_kid.as_deref(),
            prev,
            public_key: self.public_key.as_deref(),
            reason: self.reason.as_deref(),
            request_id: self.request_id.as_deref(),
            requested: self.requested.as_deref(),
            seq,
            subject: self.subject.as_deref(),
            time: &self.time,
            token_sha256: self.token_sha256.as_deref(),
            v: SCHEMA_VERSION,
            workflow: self.workflow.as_deref(),
        };
        // Serializing borrowed strings and integers cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// A record body with its members declared in RFC 8785 order (sorted by name), so that
/// `serde_json` writes the canonical form directly: its string escapes and integers are
/// JCS's, and `input` is canonicalized on its own. A unit test holds it to
/// [`canonical_json`]. The event's strings are `S`: borrowed `&str`s of an [`AuditEvent`],
/// or a sealed outbox event's strings, as their JSON text unless they hold an escape (see
/// `super::relayed`: what `serde_json` wrote once need not be unescaped and escaped again).
#[derive(Serialize)]
pub(super) struct Body<'a, S> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) client_addr: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) client_id: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) config_sha256: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) count: Option<u64>,
    pub(super) event: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) execution_arn: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) http_request_id: Option<S>,
    pub(super) id: S,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) input: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) input_sha256: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) issuer: Option<S>,
    pub(super) kid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) last_time: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) new_kid: Option<S>,
    pub(super) prev: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) public_key: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reason: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) request_id: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) requested: Option<S>,
    pub(super) seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) subject: Option<S>,
    pub(super) time: S,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) token_sha256: Option<S>,
    pub(super) v: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) workflow: Option<S>,
}

tokio::task_local! {
    /// The HTTP request being handled, for the events it causes.
    static HTTP_REQUEST_ID: Option<String>;
}

/// Runs `handling` with `id` as the request id of every event created in it.
pub async fn in_http_request<F: std::future::Future>(id: Option<String>, handling: F) -> F::Output {
    HTTP_REQUEST_ID.scope(id, handling).await
}

fn current_http_request_id() -> Option<String> {
    HTTP_REQUEST_ID.try_with(Clone::clone).ok().flatten()
}

/// `input` in RFC 8785 form, to be written as it is.
pub(super) fn canonical_raw(input: &Value) -> Option<Box<RawValue>> {
    let canonical = String::from_utf8(canonical_json(input)).ok()?;
    RawValue::from_string(canonical).ok()
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
pub(in crate::audit) mod tests {
    use super::*;

    /// An event with every field set, strings with every kind of escape (and `workflow`
    /// the given name): a new field is set here, so every test of bodies covers it.
    pub(in crate::audit) fn every_field_set(workflow: &str) -> AuditEvent {
        let mut event = AuditEvent::now(EventKind::KeyRotated);
        let text = "a \"quoted\" \\ back\u{1}slash\ttab\u{7f} \u{e9}\u{1f600}\u{2028}".to_owned();
        event.workflow = Some(workflow.to_owned());
        event.request_id = Some(text.clone());
        event.requested = Some(text.clone());
        event.issuer = Some(text.clone());
        event.subject = Some(text.clone());
        event.client_id = Some(text.clone());
        event.client_addr = Some(text.clone());
        event.token_sha256 = Some(text.clone());
        event.input_sha256 = Some(text.clone());
        event.input = Some(
            serde_json::json!({"z": [1.5, 1e21, -0.0, 9007199254740993u64], "a": {"\u{e9}": null, "b": true}}),
        );
        event.execution_arn = Some(text.clone());
        event.attempt = Some(3);
        event.reason = Some(text.clone());
        event.config_sha256 = Some(text.clone());
        event.new_kid = Some(text.clone());
        event.http_request_id = Some(text.clone());
        event.public_key = Some(text.clone());
        event.count = Some(u64::from(u32::MAX) + 1);
        event.last_time = Some(text);
        event
    }

    #[test]
    fn the_body_is_already_canonical_with_every_field_set() -> Result<(), serde_json::Error> {
        let event = every_field_set("a \"quoted\" \\ back\u{1}slash");
        let body = event.body(u64::from(u32::MAX) + 7, GENESIS_HASH, "k1");
        let parsed: Value = serde_json::from_slice(&body)?;
        assert_eq!(
            String::from_utf8_lossy(&canonical_json(&parsed)),
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            parsed.as_object().map(|o| o.len()),
            Some(26),
            "every member present"
        );
        Ok(())
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
