//! The record body of an outbox event, made from its sealed JSON as it is.
//!
//! A relayed event was serialized by `serde_json` when it was sealed, and its seal has been
//! checked: its strings are already in the form a record body writes them (RFC 8785 and
//! `serde_json` escape alike). So they are borrowed from the JSON text and written back
//! verbatim into the body's canonical member order, instead of being parsed into an
//! [`AuditEvent`](super::AuditEvent) (an allocation and an unescape per field) and escaped
//! again; only a string holding an escape (rare: a quote, a backslash, a control character)
//! is decoded and written again, so that an escape `serde_json` would not have written
//! cannot reach a record. `input` is canonicalized, as for any event. The body is byte for
//! byte the one the event would have had (a unit test holds the two to each other).

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

/// A string member as the body writes it: its JSON text as sealed when it holds no escape
/// (what it says and how `serde_json` writes it are then the same bytes), else decoded and
/// written again — so an escape `serde_json` would not have written (`\/`, `\u0041`, an
/// unpaired surrogate) never reaches a record as it came.
enum Text<'a> {
    Verbatim(&'a RawValue),
    Decoded(String),
}

impl serde::Serialize for Text<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Verbatim(raw) => raw.serialize(serializer),
            Self::Decoded(text) => serializer.serialize_str(text),
        }
    }
}

fn text(raw: &RawValue) -> Result<Text<'_>, Unchainable> {
    let json = raw.get();
    if !json.starts_with('"') {
        return Err(Unchainable::NotAString);
    }
    if json.contains('\\') {
        return Ok(Text::Decoded(serde_json::from_str(json)?));
    }
    Ok(Text::Verbatim(raw))
}

fn optional_text(raw: Option<&RawValue>) -> Result<Option<Text<'_>>, Unchainable> {
    raw.map(text).transpose()
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
        client_addr: optional_text(sealed.client_addr)?,
        client_id: optional_text(sealed.client_id)?,
        config_sha256: optional_text(sealed.config_sha256)?,
        count: sealed.count,
        event: sealed.event,
        execution_arn: optional_text(sealed.execution_arn)?,
        http_request_id: optional_text(sealed.http_request_id)?,
        id: text(sealed.id)?,
        input,
        input_sha256: optional_text(sealed.input_sha256)?,
        issuer: optional_text(sealed.issuer)?,
        kid,
        last_time: optional_text(sealed.last_time)?,
        new_kid: optional_text(sealed.new_kid)?,
        prev,
        public_key: optional_text(sealed.public_key)?,
        reason: optional_text(sealed.reason)?,
        request_id: optional_text(sealed.request_id)?,
        requested: optional_text(sealed.requested)?,
        seq,
        subject: optional_text(sealed.subject)?,
        time: text(sealed.time)?,
        token_sha256: optional_text(sealed.token_sha256)?,
        v: SCHEMA_VERSION,
        workflow: optional_text(sealed.workflow)?,
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
        // No escape anywhere (written verbatim), but every kind of text JSON writes raw.
        let mut plain = every_field_set("orders-2");
        let raw = "/\u{7f} \u{e9}\u{1f600}\u{2028}'<>&".to_owned();
        for text in [
            &mut plain.request_id,
            &mut plain.reason,
            &mut plain.subject,
            &mut plain.last_time,
        ] {
            *text = Some(raw.clone());
        }
        for event in [full, bare, plain] {
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
    fn an_escape_serde_json_would_not_write_is_written_as_it_would() -> Result<(), Unchainable> {
        let mut event = AuditEvent::now(EventKind::Retried);
        event.workflow = Some("orders".into());
        event.reason = Some("a/A\u{1f}".into());
        let json = serde_json::to_string(&event).map_err(Unchainable::Json)?;
        let odd = json.replace(r#""a/A\u001f""#, r#""a\/\u0041\u001F""#);
        assert_ne!(odd, json);
        let expected = event.body(3, GENESIS_HASH, "k1");
        assert_eq!(body(&odd, "orders", 3, GENESIS_HASH, "k1")?, expected);
        let unpaired = json.replace(r#""a/A\u001f""#, r#""\ud800""#);
        assert!(matches!(
            body(&unpaired, "orders", 3, GENESIS_HASH, "k1"),
            Err(Unchainable::Json(_))
        ));
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
