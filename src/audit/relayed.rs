//! The record body of an outbox event, made from its sealed JSON as it is.
//!
//! A relayed event was serialized by `serde_json` when it was sealed, and its seal has been
//! checked: its strings are already in the form a record body writes them (RFC 8785 and
//! `serde_json` escape alike). So they are borrowed from the JSON text and written back
//! verbatim into the body's canonical member order, instead of being parsed into an
//! [`AuditEvent`](super::AuditEvent) (an allocation and an unescape per field) and escaped
//! again. Only `input` is canonicalized, as for any event. The body is byte for byte the
//! one the event would have had (a unit test holds the two to each other).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::record::{Body, EventKind, SCHEMA_VERSION, canonical_raw};

/// Why a sealed event cannot be chained (never for an event stepgate sealed).
#[derive(Debug, thiserror::Error)]
pub enum Unchainable {
    #[error("not an audit event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a member that must be a string is not one")]
    NotAString,
    #[error("an event of another workflow's outbox")]
    OtherWorkflow,
}

/// The members of a sealed event, its strings as JSON text.
#[derive(Deserialize)]
struct Sealed<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
    event: EventKind,
    #[serde(borrow)]
    time: &'a RawValue,
    #[serde(borrow)]
    workflow: Option<&'a RawValue>,
    #[serde(borrow)]
    requested: Option<&'a RawValue>,
    #[serde(borrow)]
    request_id: Option<&'a RawValue>,
    #[serde(borrow)]
    issuer: Option<&'a RawValue>,
    #[serde(borrow)]
    subject: Option<&'a RawValue>,
    #[serde(borrow)]
    client_id: Option<&'a RawValue>,
    #[serde(borrow)]
    client_addr: Option<&'a RawValue>,
    #[serde(borrow)]
    token_sha256: Option<&'a RawValue>,
    #[serde(borrow)]
    input_sha256: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    execution_arn: Option<&'a RawValue>,
    #[serde(borrow)]
    http_request_id: Option<&'a RawValue>,
    attempt: Option<u32>,
    #[serde(borrow)]
    reason: Option<&'a RawValue>,
    #[serde(borrow)]
    config_sha256: Option<&'a RawValue>,
    #[serde(borrow)]
    new_kid: Option<&'a RawValue>,
    #[serde(borrow)]
    public_key: Option<&'a RawValue>,
    count: Option<u64>,
    #[serde(borrow)]
    last_time: Option<&'a RawValue>,
}

impl<'a> Sealed<'a> {
    /// Every member the record schema holds as a string.
    fn strings(&self) -> [Option<&'a RawValue>; 18] {
        [
            Some(self.id),
            Some(self.time),
            self.workflow,
            self.requested,
            self.request_id,
            self.issuer,
            self.subject,
            self.client_id,
            self.client_addr,
            self.token_sha256,
            self.input_sha256,
            self.execution_arn,
            self.http_request_id,
            self.reason,
            self.config_sha256,
            self.new_kid,
            self.public_key,
            self.last_time,
        ]
    }
}

/// The body of the event sealed as `json`, taken from `workflow`'s outbox, as record `seq`
/// chained after `prev` and signed by `kid`.
pub fn body(
    json: &str,
    workflow: &str,
    seq: u64,
    prev: &str,
    kid: &str,
) -> Result<Vec<u8>, Unchainable> {
    let sealed: Sealed<'_> = serde_json::from_str(json)?;
    let is_string = |raw: &Option<&RawValue>| raw.is_none_or(|raw| raw.get().starts_with('"'));
    if !sealed.strings().iter().all(is_string) {
        return Err(Unchainable::NotAString);
    }
    // Workflow names need no escape: the JSON text is the name in quotes.
    let named = sealed
        .workflow
        .and_then(|raw| raw.get().strip_prefix('"')?.strip_suffix('"'));
    if named != Some(workflow) {
        return Err(Unchainable::OtherWorkflow);
    }
    let input = match sealed.input {
        None => None,
        Some(raw) => canonical_raw(&serde_json::from_str(raw.get())?),
    };
    let body = Body {
        attempt: sealed.attempt,
        client_addr: sealed.client_addr,
        client_id: sealed.client_id,
        config_sha256: sealed.config_sha256,
        count: sealed.count,
        event: sealed.event,
        execution_arn: sealed.execution_arn,
        http_request_id: sealed.http_request_id,
        id: sealed.id,
        input,
        input_sha256: sealed.input_sha256,
        issuer: sealed.issuer,
        kid,
        last_time: sealed.last_time,
        new_kid: sealed.new_kid,
        prev,
        public_key: sealed.public_key,
        reason: sealed.reason,
        request_id: sealed.request_id,
        requested: sealed.requested,
        seq,
        subject: sealed.subject,
        time: sealed.time,
        token_sha256: sealed.token_sha256,
        v: SCHEMA_VERSION,
        workflow: sealed.workflow,
    };
    // The body is the event's JSON and the chain's members (about 150 bytes): reserved at
    // once rather than grown.
    let mut bytes = Vec::with_capacity(json.len() + 192);
    serde_json::to_writer(&mut bytes, &body)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditEvent;
    use crate::audit::record::GENESIS_HASH;
    use crate::audit::record::tests::every_field_set;

    #[test]
    fn a_relayed_body_is_byte_for_byte_the_events_own() -> Result<(), Unchainable> {
        let full = every_field_set("orders-2");
        let mut bare = AuditEvent::now(EventKind::Accepted);
        bare.workflow = Some("orders-2".into());
        for event in [full, bare] {
            let json = serde_json::to_string(&event).map_err(Unchainable::Json)?;
            let relayed = body(&json, "orders-2", 42, GENESIS_HASH, "k1")?;
            assert_eq!(
                String::from_utf8_lossy(&relayed),
                String::from_utf8_lossy(&event.body(42, GENESIS_HASH, "k1"))
            );
            // Every member sealed is carried, and the chain's four are added.
            let members = |bytes: &[u8]| {
                serde_json::from_slice::<serde_json::Value>(bytes)
                    .ok()
                    .and_then(|value| value.as_object().map(serde_json::Map::len))
            };
            assert_eq!(
                members(&relayed),
                members(json.as_bytes()).map(|sealed| sealed + 4)
            );
        }
        Ok(())
    }

    #[test]
    fn an_event_of_another_outbox_or_of_another_shape_is_not_chained() {
        let mut event = AuditEvent::now(EventKind::Accepted);
        event.workflow = Some("orders".into());
        let json = serde_json::to_string(&event).unwrap_or_default();
        let chained = |json: &str, workflow| body(json, workflow, 1, GENESIS_HASH, "k1");
        assert!(matches!(
            chained(&json, "billing"),
            Err(Unchainable::OtherWorkflow)
        ));
        let unnamed = json.replace(r#","workflow":"orders""#, "");
        assert!(matches!(
            chained(&unnamed, "orders"),
            Err(Unchainable::OtherWorkflow)
        ));
        let numeric = json.replace(
            r#""workflow":"orders""#,
            r#""workflow":"orders","reason":7"#,
        );
        assert!(matches!(
            chained(&numeric, "orders"),
            Err(Unchainable::NotAString)
        ));
        let unknown_kind = json.replace(r#""accepted""#, r#""exploded""#);
        assert!(matches!(
            chained(&unknown_kind, "orders"),
            Err(Unchainable::Json(_))
        ));
        assert!(chained(&json, "orders").is_ok());
    }
}
