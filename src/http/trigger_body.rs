//! The trigger's body: read into what it means (the input's bytes and when to start), with
//! errors in the API's own terms, and the fingerprint that makes a retry recognisable.

use serde::Deserialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::audit::record::sha256_hex;
use crate::domain::WorkflowName;
use crate::http::error::ApiError;

/// The furthest a trigger may be deferred.
pub const MAX_DEFER: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);

/// The trigger's body.
// Each member is read as raw JSON first, so a wrong type gets an answer about that member
// rather than a deserializer's.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"input": {"order_id": "A-1001", "amount_cents": 4200}}))]
pub struct CreateExecution {
    /// The execution's input: any JSON value, passed to Step Functions byte for byte.
    /// Defaults to `{}`.
    #[schema(value_type = Option<serde_json::Value>)]
    pub input: Option<Box<RawValue>>,
    /// Start no earlier than this time (RFC 3339); the trigger waits in Redis until then.
    #[schema(value_type = Option<String>, example = "2026-11-25T18:00:00Z")]
    pub not_before: Option<Box<RawValue>>,
    /// Start no earlier than this many seconds from now (instead of `not_before`).
    #[schema(value_type = Option<u64>, minimum = 0, maximum = 7776000)]
    pub delay_seconds: Option<Box<RawValue>>,
}

/// When a trigger asks to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timing {
    Now,
    NotBefore(String),
    DelaySeconds(u64),
}

/// A trigger's body, read.
#[derive(Debug)]
pub struct Trigger {
    /// The input's JSON text exactly as sent (`{}` when absent).
    pub input: String,
    pub timing: Timing,
}

impl Trigger {
    /// Reads a body; every error says which member is wrong and how, in the API's terms.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let invalid = |why: String| ApiError::InvalidBody(why);
        // A deserializer would answer a non-object with its own type names.
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(invalid(
                "the body must be a JSON object, such as {\"input\": {}}".into(),
            ));
        }
        let body: CreateExecution = serde_json::from_slice(body).map_err(|e| {
            invalid(match e.classify() {
                serde_json::error::Category::Data => e.to_string(),
                _ => format!("the body is not valid JSON: {e}"),
            })
        })?;
        let timing = match (body.not_before, body.delay_seconds) {
            (Some(_), Some(_)) => {
                return Err(invalid("give not_before or delay_seconds, not both".into()));
            }
            (Some(at), None) => {
                Timing::NotBefore(serde_json::from_str(at.get()).map_err(|_| {
                    invalid("not_before must be a string holding an RFC 3339 time".into())
                })?)
            }
            (None, Some(seconds)) => Timing::DelaySeconds(
                serde_json::from_str::<u64>(seconds.get())
                    .ok()
                    .filter(|s| *s <= MAX_DEFER.as_secs())
                    .ok_or_else(|| {
                        invalid(format!(
                            "delay_seconds must be a whole number of seconds from 0 to {}",
                            MAX_DEFER.as_secs()
                        ))
                    })?,
            ),
            (None, None) => Timing::Now,
        };
        let input = body
            .input
            .map_or_else(|| "{}".to_owned(), |raw| raw.get().to_owned());
        Ok(Self { input, timing })
    }

    /// When the trigger is due (Unix ms), if it asks to be deferred into the future.
    pub fn due_ms(&self, now_ms: u64) -> Result<Option<u64>, ApiError> {
        let due = match &self.timing {
            Timing::Now => return Ok(None),
            Timing::NotBefore(at) => {
                let at =
                    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| {
                            ApiError::InvalidBody(format!(
                                "not_before is not an RFC 3339 time: {e}"
                            ))
                        })?;
                crate::clock::to_unix_ms(at)
            }
            Timing::DelaySeconds(seconds) => now_ms.saturating_add(seconds.saturating_mul(1_000)),
        };
        if due > now_ms + MAX_DEFER.as_millis() as u64 {
            return Err(ApiError::InvalidBody(format!(
                "a trigger can be deferred by at most {} days",
                MAX_DEFER.as_secs() / 86_400
            )));
        }
        Ok((due > now_ms).then_some(due))
    }

    /// What makes two triggers the same request, for `Idempotency-Key`: the workflow, the
    /// input's bytes and the timing as asked — not the body's layout, so a client that
    /// serializes its envelope anew on retry is still recognised.
    pub fn fingerprint(&self, workflow: &WorkflowName) -> String {
        let timing = match &self.timing {
            Timing::Now => String::new(),
            Timing::NotBefore(at) => format!("not_before={at}"),
            Timing::DelaySeconds(seconds) => format!("delay_seconds={seconds}"),
        };
        // Length-prefixed: no two (workflow, input, timing) triples hash alike.
        let framed = format!(
            "v2\n{}:{}\n{}:{}\n{timing}",
            workflow.as_str().len(),
            workflow.as_str(),
            self.input.len(),
            self.input
        );
        sha256_hex(framed.as_bytes())
    }

    /// The fingerprint versions before v2 stored: the workflow and the body's bytes. Kept
    /// so a retry of a request admitted before an upgrade is still recognised.
    pub fn legacy_fingerprint(workflow: &WorkflowName, body: &[u8]) -> String {
        sha256_hex(&[workflow.as_str().as_bytes(), b"\n", body].concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: &str) -> Result<Trigger, String> {
        Trigger::parse(body.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_envelope_layout_does_not_change_the_fingerprint() -> Result<(), String> {
        let workflow = WorkflowName::parse("orders").map_err(|e| e.to_string())?;
        let compact = parsed(r#"{"input":{"a":1},"delay_seconds":5}"#)?;
        let spaced = parsed("{ \"delay_seconds\" : 5,\n \"input\": {\"a\":1} }")?;
        assert_eq!(
            compact.fingerprint(&workflow),
            spaced.fingerprint(&workflow)
        );
        let other_input = parsed(r#"{"input":{"a": 1},"delay_seconds":5}"#)?;
        assert_ne!(
            compact.fingerprint(&workflow),
            other_input.fingerprint(&workflow)
        );
        let other_timing = parsed(r#"{"input":{"a":1},"delay_seconds":6}"#)?;
        assert_ne!(
            compact.fingerprint(&workflow),
            other_timing.fingerprint(&workflow)
        );
        Ok(())
    }

    #[test]
    fn wrong_members_are_named_without_type_names() {
        for (body, expected) in [
            (
                r#"{"delay_seconds": -5}"#,
                "delay_seconds must be a whole number",
            ),
            (
                r#"{"delay_seconds": "5"}"#,
                "delay_seconds must be a whole number",
            ),
            (r#"{"not_before": 5}"#, "not_before must be a string"),
            ("[1]", "must be a JSON object"),
            ("{\"input\": ", "not valid JSON"),
        ] {
            let said = parsed(body).err().unwrap_or_default();
            assert!(said.contains(expected), "{body}: {said}");
            assert!(
                !said.contains("u64") && !said.contains("struct"),
                "{body}: {said}"
            );
        }
    }
}
