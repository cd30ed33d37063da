//! What is stored for an accepted request: its queue entry and its status.

use std::collections::HashMap;

use redis::{FromRedisValue, Value};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{Owner, RequestId};

/// Fields of a queue entry.
pub mod field {
    pub const REQUEST_ID: &str = "request_id";
    pub const INPUT: &str = "input";
    pub const OWNER: &str = "owner";
    pub const CLIENT_ID: &str = "client_id";
    pub const ACCEPTED_AT: &str = "accepted_at";
    pub const HTTP_REQUEST_ID: &str = "http_request_id";
    pub const TRACE_HEADER: &str = "trace_header";
    pub const TRACEPARENT: &str = "traceparent";
}

/// Fields of a request's status hash, as versions before the compact status wrote it.
mod legacy_field {
    pub const STATUS: &str = "status";
    pub const OWNER: &str = "owner";
    pub const CREATED_AT: &str = "created_at";
    pub const UPDATED_AT: &str = "updated_at";
    pub const EXECUTION_ARN: &str = "execution_arn";
    pub const ERROR: &str = "error";
    pub const NOT_BEFORE_MS: &str = "not_before_ms";
}

/// An accepted trigger as the drain reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRequest {
    pub request_id: RequestId,
    /// The caller's input, byte for byte as received (valid JSON).
    pub input: String,
    pub owner: Owner,
    pub client_id: Option<String>,
    pub accepted_at: String,
    /// The `x-request-id` of the HTTP request that accepted it (carried into the audit).
    pub http_request_id: Option<String>,
    /// The caller's X-Ray `X-Amzn-Trace-Id`, passed to `StartExecution`.
    pub trace_header: Option<String>,
    /// The W3C `traceparent` of the accepting request's span, when spans are exported: the
    /// drain's span continues that trace.
    pub traceparent: Option<String>,
}

/// Why a queue entry cannot be read as a request (it can never start).
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("entry has no {0}")]
    Missing(&'static str),
    #[error("entry field {0} is not text")]
    NotText(&'static str),
    #[error("entry is not a JSON object")]
    NotJson,
    #[error(transparent)]
    RequestId(#[from] crate::domain::RequestIdError),
}

impl QueuedRequest {
    /// Reads an entry's fields; `Err` names what is missing or malformed.
    pub fn from_fields(fields: &HashMap<String, Value>) -> Result<Self, EntryError> {
        let text = |name: &'static str| -> Result<String, EntryError> {
            let value = fields.get(name).ok_or(EntryError::Missing(name))?;
            String::from_redis_value(value).map_err(|_| EntryError::NotText(name))
        };
        let request_id = RequestId::parse(&text(field::REQUEST_ID)?)?;
        let optional = |name: &'static str| text(name).ok().filter(|v| !v.is_empty());
        let client_id = optional(field::CLIENT_ID);
        Ok(Self {
            request_id,
            input: text(field::INPUT)?,
            owner: Owner::parse(&text(field::OWNER)?),
            client_id,
            accepted_at: text(field::ACCEPTED_AT)?,
            http_request_id: optional(field::HTTP_REQUEST_ID),
            trace_header: optional(field::TRACE_HEADER),
            traceparent: optional(field::TRACEPARENT),
        })
    }

    /// Reads a held or deferred trigger: its id, and the fields `enqueue.lua` keeps for it
    /// as one JSON object until it enters the queue.
    pub fn from_waiting(request_id: &str, json: &str) -> Result<Self, EntryError> {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(json).map_err(|_| EntryError::NotJson)?;
        let text = |value: &str| Value::BulkString(value.as_bytes().to_vec());
        let mut fields: HashMap<String, Value> = object
            .iter()
            .filter_map(|(name, value)| Some((name.clone(), text(value.as_str()?))))
            .collect();
        fields.insert(field::REQUEST_ID.to_owned(), text(request_id));
        Self::from_fields(&fields)
    }
}

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// In Redis, waiting for its `not_before` time.
    Deferred,
    /// In Redis, waiting for the drain.
    Queued,
    /// Step Functions accepted `StartExecution`; `execution_arn` is set.
    Started,
    /// It cannot start as it is (`error` says why) and waits in the workflow's dead letters
    /// for an operator to replay or purge it.
    DeadLettered,
    /// Given up for good (purged from the dead letters, or an EXPRESS `at_most_once` start
    /// of unknown outcome); `error` says why.
    Failed,
}

impl RequestState {
    /// Every state, for parsing.
    pub const ALL: [RequestState; 5] = [
        RequestState::Deferred,
        RequestState::Queued,
        RequestState::Started,
        RequestState::DeadLettered,
        RequestState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Deferred => "deferred",
            RequestState::Queued => "queued",
            RequestState::Started => "started",
            RequestState::DeadLettered => "dead_lettered",
            RequestState::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        RequestState::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// A request's status as stored: compact JSON, short names, absent members left out —
/// Redis keeps millions of these, and a value stays a plain string of ~200 bytes whatever
/// it holds (a hash turns into a far larger table once one value passes 64 bytes, as an
/// execution ARN does). Written by `enqueue.lua`, updated by the drain's and the operators'
/// scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredStatus {
    #[serde(rename = "s")]
    pub state: RequestState,
    /// [`Owner::digest`] of the caller that made the request (an earlier version's hash
    /// holds the owner itself).
    #[serde(rename = "o")]
    owner: String,
    /// When it was accepted (Unix ms).
    #[serde(rename = "c")]
    created_ms: u64,
    /// When it last changed (Unix ms); absent until it first changes.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    updated_ms: Option<u64>,
    /// The execution ARN, its last part cut off where that is the request id (see
    /// [`StoredStatus::store_arn`]).
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    arn: Option<String>,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When a deferred trigger is due (Unix ms; 0 for one queued at once).
    #[serde(rename = "n", default, skip_serializing_if = "is_zero")]
    pub not_before_ms: u64,
    /// Read from the hash an earlier version wrote (whose `owner` is the owner itself).
    #[serde(skip)]
    legacy: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl StoredStatus {
    /// `None` for a value that is not a status.
    pub fn from_json(json: &str) -> Option<Self> {
        serde_json::from_str(json).ok()
    }

    /// From the hash an earlier version wrote; `None` for an absent (empty) or unreadable one.
    pub fn from_legacy_hash(mut hash: HashMap<String, String>) -> Option<Self> {
        let ms = |text: Option<String>| text.map(|t| crate::clock::unix_ms_from_rfc3339(&t));
        Some(Self {
            state: RequestState::parse(hash.get(legacy_field::STATUS)?)?,
            owner: hash.remove(legacy_field::OWNER)?,
            created_ms: ms(hash.remove(legacy_field::CREATED_AT))?,
            updated_ms: ms(hash.remove(legacy_field::UPDATED_AT)),
            arn: hash.remove(legacy_field::EXECUTION_ARN),
            error: hash.remove(legacy_field::ERROR),
            not_before_ms: hash
                .get(legacy_field::NOT_BEFORE_MS)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            legacy: true,
        })
    }

    /// An execution ARN as the status keeps it: the execution's name is the request id, so
    /// an ARN that ends with `:<request id>` is kept as everything up to that colon (no ARN
    /// ends with a colon, so the two forms never mix up).
    pub fn store_arn(execution_arn: &str, id: &RequestId) -> String {
        let name = id.to_string();
        match execution_arn.strip_suffix(name.as_str()) {
            Some(stem) if stem.ends_with(':') => stem.to_owned(),
            _ => execution_arn.to_owned(),
        }
    }

    /// The execution ARN, once started.
    pub fn execution_arn(&self, id: &RequestId) -> Option<String> {
        self.arn.as_ref().map(|arn| match arn.ends_with(':') {
            true => format!("{arn}{id}"),
            false => arn.clone(),
        })
    }

    /// When it was accepted (RFC 3339).
    pub fn created_at(&self) -> String {
        crate::clock::rfc3339_from_unix_ms(self.created_ms)
    }

    /// When the status last changed (RFC 3339).
    pub fn updated_at(&self) -> String {
        crate::clock::rfc3339_from_unix_ms(self.updated_ms.unwrap_or(self.created_ms))
    }

    /// Whether `owner` made this request (an earlier version stored the owner itself).
    pub fn is_owned_by(&self, owner: &Owner) -> bool {
        match self.legacy {
            true => self.owner == owner.to_string(),
            false => self.owner == owner.digest(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_back_as_the_scripts_write_it() -> Result<(), Box<dyn std::error::Error>> {
        let id = RequestId::parse("orders_0192f5c4e3b87d8e9a6b1c2d3e4f5a6b")?;
        // As enqueue.lua writes it, then as complete.lua leaves it (cjson escapes `/`).
        let queued = r#"{"s":"queued","o":"0123456789abcdef0123456789abcdef","c":1765101600123}"#;
        let status = StoredStatus::from_json(queued).ok_or("unread")?;
        assert_eq!(status.state, RequestState::Queued);
        assert_eq!(status.updated_at(), "2025-12-07T10:00:00.123Z");
        assert_eq!(status.execution_arn(&id), None);
        let failed = r#"{"s":"failed","o":"x","c":1,"u":2,"e":"a\/b","n":1765101600000}"#;
        let status = StoredStatus::from_json(failed).ok_or("unread")?;
        assert_eq!(
            (
                status.error.as_deref(),
                status.updated_ms,
                status.not_before_ms
            ),
            (Some("a/b"), Some(2), 1_765_101_600_000)
        );
        let owner = Owner::parse("https://idp.example.com svc");
        let mine = StoredStatus {
            owner: owner.digest(),
            ..status.clone()
        };
        assert!(mine.is_owned_by(&owner));
        assert!(!mine.is_owned_by(&Owner::parse("https://idp.example.com other")));
        // A compact status holds the digest only; an earlier version's hash the owner itself.
        let spelled_out = StoredStatus {
            owner: owner.to_string(),
            ..status
        };
        assert!(!spelled_out.is_owned_by(&owner));
        let legacy = StoredStatus {
            legacy: true,
            ..spelled_out
        };
        assert!(legacy.is_owned_by(&owner));
        assert_eq!(StoredStatus::from_json("not json"), None);
        Ok(())
    }

    #[test]
    fn an_arn_named_by_its_request_is_kept_short_and_read_back_whole()
    -> Result<(), Box<dyn std::error::Error>> {
        let id = RequestId::parse("orders_0192f5c4e3b87d8e9a6b1c2d3e4f5a6b")?;
        let standard = format!("arn:aws:states:us-east-1:123456789012:execution:orders:{id}");
        let express = format!("arn:aws:states:us-east-1:123456789012:express:orders:{id}:0f1e");
        for arn in [standard.as_str(), express.as_str(), "arn:other", "x"] {
            let stored = StoredStatus::store_arn(arn, &id);
            let status = StoredStatus {
                arn: Some(stored.clone()),
                ..StoredStatus::from_json(r#"{"s":"started","o":"x","c":1}"#).ok_or("unread")?
            };
            assert_eq!(status.execution_arn(&id).as_deref(), Some(arn), "{stored}");
        }
        assert!(StoredStatus::store_arn(&standard, &id).ends_with(":orders:"));
        Ok(())
    }

    #[test]
    fn every_state_round_trips_and_matches_its_json_name() -> Result<(), serde_json::Error> {
        for state in RequestState::ALL {
            assert_eq!(RequestState::parse(state.as_str()), Some(state));
            assert_eq!(
                serde_json::to_value(state)?,
                serde_json::Value::from(state.as_str())
            );
        }
        Ok(())
    }
}
