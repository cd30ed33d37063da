//! `GET /v1/audit`: the trail's records, filtered, oldest first, a page at a time — for
//! callers the `[audit_readers]` policy allows. Each record comes with its signature, so a
//! reader can check it (or a whole range, with `stepgate audit verify`) independently.

use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use crate::audit::store;
use crate::audit::{AuditEvent, EventKind, OperatorApi};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::Caller;
use crate::http::query::QueryParams;
use crate::policy::{Decision, authorize};
use crate::queue::is_stream_id;
use crate::state::AppState;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 500;
/// Records examined per request at most: a filter that matches rarely still answers
/// quickly, with `next_after` to continue from.
const SCAN_BUDGET: usize = 5_000;
/// A record reaches the stream after it happened (batching, or buffering during an
/// outage); scanning stops this long past `until`.
const APPEND_DELAY_ALLOWANCE_MS: u64 = 5 * 60 * 1_000;

/// Filters (all optional, combined with AND) and the page; any other parameter is refused.
/// (This describes the parameters for the documentation; [`QueryParams`] reads them.)
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AuditQuery {
    /// Only records about this workflow.
    #[param(min_length = 1)]
    pub workflow: Option<String>,
    /// Only records whose `subject` is this (for a trigger: the caller's `sub`).
    #[param(min_length = 1)]
    pub subject: Option<String>,
    /// Only records of these decisions or events: repeat the parameter
    /// (`event=accepted&event=started`) or separate them by commas.
    #[param(style = Form, explode)]
    pub event: Option<Vec<EventKind>>,
    /// Only records about this request (every step of one trigger: `accepted`, `started`, …).
    #[param(min_length = 1)]
    pub request_id: Option<String>,
    /// Only records at or after this time (RFC 3339).
    #[param(min_length = 1)]
    pub since: Option<String>,
    /// Only records at or before this time (RFC 3339).
    #[param(min_length = 1)]
    pub until: Option<String>,
    /// Continue after this cursor (the previous page's `next_after`).
    #[param(pattern = r"^[0-9]{1,20}-[0-9]{1,20}$")]
    pub after: Option<String>,
    /// At most this many records (1 to 500; default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

/// One record as stored: its canonical body (parsed) and the body's Ed25519 signature.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    /// The record (schema in the README): `seq`, `prev`, `kid`, `id`, `time`, `event`, …
    #[schema(value_type = Object)]
    pub record: Value,
    /// Base64 Ed25519 signature over the record's RFC 8785 canonical JSON. Only the last
    /// record of each append is signed; the records before it are covered by its signature
    /// through their chained hashes (`prev`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "records": [{
        "record": {"v": 2, "seq": 42, "prev": "9f2c…", "kid": "3b1f0c9d2a4e6f80",
                   "id": "0192f5c4-e3b8-7d8e-9a6b-1c2d3e4f5a6b", "time": "2026-11-25T10:15:00.123Z",
                   "event": "accepted", "workflow": "orders", "subject": "billing-service",
                   "request_id": "orders_0192f5c4e3b87d8e9a6b1c2d3e4f5a6b", "input_sha256": "5f70…"},
        "signature": "mZ3…=="
    }],
    "next_after": "1764065700123-0"
}))]
pub struct AuditPage {
    pub records: Vec<AuditEntry>,
    /// Pass as `after` for more; absent when the trail (as filtered) is exhausted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// Read the audit trail.
///
/// Records matching every given filter, oldest first. A page may hold fewer than `limit`
/// records and still have a `next_after` (at most 5,000 records are examined per call).
#[utoipa::path(
    get,
    path = "/v1/audit",
    operation_id = "list_audit_records",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "One page of records", body = AuditPage),
        (status = 400, description = "An invalid filter, cursor or limit", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid access token", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge"))),
        (status = 403, description = "The `[audit_readers]` policy does not allow this caller", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge"))),
        (status = 503, description = "Redis is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn list_audit_records(
    State(state): State<AppState>,
    Caller(caller, runtime): Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<AuditPage>, ApiError> {
    if let Decision::Denied { reason } = authorize(&caller, &runtime.audit_readers) {
        let event = AuditEvent::operator_denied(OperatorApi::Audit, &caller, None, &reason);
        state.audit.record(event).await;
        return Err(ApiError::Forbidden(reason));
    }
    let query = QueryParams::parse(query.as_deref(), PARAMETERS, &["event"])?;
    let filter = Filter::parse(&query)?;
    let limit = query.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let mut cursor = match (query.one("after"), filter.since_ms) {
        (Some(after), _) if is_stream_id(after) => Some(after.to_owned()),
        (Some(_), _) => {
            return Err(ApiError::InvalidParameter(
                "`after` must be a cursor such as 1764045212140-0".into(),
            ));
        }
        // Records are appended after they happen: none at or after `since` sits before it.
        (None, Some(since_ms)) => Some(format!("{}-0", since_ms.saturating_sub(1))),
        (None, None) => None,
    };
    let mut redis = state.redis.clone();
    let mut records = Vec::new();
    let mut scanned = 0;
    let mut exhausted = false;
    while records.len() < limit && scanned < SCAN_BUDGET {
        let page = store::read_records(&mut redis, &state.keys, cursor.as_deref(), limit.max(100))
            .await
            .map_err(|e| ApiError::redis_unavailable(&e))?;
        if page.is_empty() {
            exhausted = true;
            break;
        }
        for stored in page {
            scanned += 1;
            let entry = stored
                .location
                .strip_prefix("stream entry ")
                .unwrap_or_default()
                .to_owned();
            if filter.past_until(&entry) {
                exhausted = true;
                break;
            }
            cursor = Some(entry);
            let Ok(record) = serde_json::from_str::<Value>(&stored.body) else {
                continue;
            };
            if filter.matches(&record) {
                records.push(AuditEntry {
                    record,
                    signature: Some(stored.signature).filter(|s| !s.is_empty()),
                });
                if records.len() == limit {
                    break;
                }
            }
        }
        if exhausted {
            break;
        }
    }
    Ok(Json(AuditPage {
        records,
        next_after: if exhausted { None } else { cursor },
    }))
}

/// The parameters of `GET /v1/audit`.
const PARAMETERS: &[&str] = &[
    "workflow",
    "subject",
    "event",
    "request_id",
    "since",
    "until",
    "after",
    "limit",
];

struct Filter<'q> {
    workflow: Option<&'q str>,
    subject: Option<&'q str>,
    request_id: Option<&'q str>,
    /// Empty: every event.
    events: Vec<Value>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
}

impl<'q> Filter<'q> {
    fn parse(query: &'q QueryParams) -> Result<Self, ApiError> {
        let time = |name: &str| {
            query
                .one(name)
                .map(|text| {
                    OffsetDateTime::parse(text, &Rfc3339)
                        .map(|t| (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
                        .map_err(|_| {
                            ApiError::InvalidParameter(format!(
                                "`{name}` must be an RFC 3339 time such as 2026-11-25T10:00:00Z"
                            ))
                        })
                })
                .transpose()
        };
        let events = query
            .all("event")
            .into_iter()
            .map(|name| {
                serde_json::from_value::<EventKind>(Value::String(name.to_owned()))
                    .map(|_| Value::String(name.to_owned()))
                    .map_err(|_| {
                        ApiError::InvalidParameter(format!(
                            "`event` takes the record events (accepted, denied, started, …); {} is not one",
                            if name.len() <= 40 { name } else { "that" }
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            workflow: query.one("workflow"),
            subject: query.one("subject"),
            request_id: query.one("request_id"),
            events,
            since_ms: time("since")?,
            until_ms: time("until")?,
        })
    }

    fn matches(&self, record: &Value) -> bool {
        let is = |field: &str, want: Option<&str>| want.is_none_or(|w| record[field] == w);
        let event_ok = self.events.is_empty() || self.events.contains(&record["event"]);
        let time_ms = record["time"]
            .as_str()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64);
        let in_time = match time_ms {
            Some(ms) => {
                self.since_ms.is_none_or(|since| ms >= since)
                    && self.until_ms.is_none_or(|until| ms <= until)
            }
            None => self.since_ms.is_none() && self.until_ms.is_none(),
        };
        is("workflow", self.workflow)
            && is("subject", self.subject)
            && is("request_id", self.request_id)
            && event_ok
            && in_time
    }

    /// Whether the stream entry was appended so long after `until` that no later entry
    /// can hold a record from before it.
    fn past_until(&self, entry: &str) -> bool {
        let appended_ms = entry
            .split_once('-')
            .and_then(|(ms, _)| ms.parse::<u64>().ok());
        matches!((self.until_ms, appended_ms), (Some(until), Some(ms)) if ms > until + APPEND_DELAY_ALLOWANCE_MS)
    }
}
