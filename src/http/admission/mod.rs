//! Admission of a trigger, from the verified caller to its `202` or its refusal.
//!
//! - `checks.rs` builds what the workflow asks of the trigger (idempotency key, one-time
//!   token, rate limits, backlog bound) from the configuration: pure.
//! - `decide.rs` turns Redis' answer into the caller's: [`Admitted`] or a [`Refusal`]: pure.
//! - `record.rs` is the one audit point. Every outcome of a trigger after its token was
//!   verified goes through [`record`] before the answer leaves, so no path can answer
//!   without it. Token refusals are audited by the `Caller` extractor, alike for every route.
//!
//! A [`Refusal`] says whether it is audited, and as what, where it is made: a decision about
//! the caller (`denied`, `auth_failed`, `rate_limited`) is; a malformed request or an
//! unavailable partner, where nothing was decided about the caller, is not.

mod checks;
mod decide;
mod record;

pub use checks::{Ask, checks, idempotency_key};
pub use decide::decide;
pub use record::{admission_events, record, take_back_after_ambiguity};

use serde_json::Value;

use crate::audit::{AuditEvent, EventKind};
use crate::auth::Principal;
use crate::domain::WorkflowName;
use crate::http::error::{ApiError, RateLimitHeaders};
use crate::queue::{Admission, Placement, QueuedRequest};

/// A trigger Redis took.
pub enum Admitted {
    /// Newly admitted.
    New(Box<NewTrigger>),
    /// A retry with the same idempotency key and body: the request it admitted before
    /// (audited then).
    Duplicate {
        workflow: WorkflowName,
        request_id: String,
    },
}

/// A newly admitted trigger and what its answer and its audit record need.
pub struct NewTrigger {
    pub workflow: WorkflowName,
    pub request: QueuedRequest,
    /// The checks it passed (a withdrawal gives their quota back).
    pub checks: Admission,
    pub placement: Placement,
    /// The quota headers of its rate limits.
    pub quota: RateLimitHeaders,
    /// The input as the trail keeps it, where the workflow asks for it.
    pub stored_input: Option<Value>,
}

/// A refused trigger: the caller's answer, and what the trail records of it.
#[derive(Debug)]
pub struct Refusal {
    pub error: ApiError,
    /// Boxed: refusals travel in `Result`s, and most answers are not refusals.
    record: Option<Box<RefusalRecord>>,
}

#[derive(Debug)]
struct RefusalRecord {
    kind: EventKind,
    workflow: Option<WorkflowName>,
    /// For a workflow that is not configured: the name asked for (bounded).
    requested: Option<String>,
    reason: String,
}

impl Refusal {
    /// A decision about the caller's request to `workflow`, recorded as `kind` with `reason`.
    pub fn audited(
        kind: EventKind,
        workflow: &WorkflowName,
        reason: String,
        error: ApiError,
    ) -> Self {
        Self {
            error,
            record: Some(Box::new(RefusalRecord {
                kind,
                workflow: Some(workflow.clone()),
                requested: None,
                reason,
            })),
        }
    }

    /// The policy refuses the caller the workflow it asked for (`raw`), or no such workflow
    /// exists: both answered alike, recorded as `denied`.
    pub fn denied(known: Option<&WorkflowName>, raw: &str, reason: String) -> Self {
        Self {
            error: ApiError::Forbidden(reason.clone()),
            record: Some(Box::new(RefusalRecord {
                kind: EventKind::Denied,
                workflow: known.cloned(),
                requested: known.is_none().then(|| requested_name(raw)),
                reason,
            })),
        }
    }

    /// A malformed request, or a partner unavailable: nothing was decided about the caller,
    /// and the trail records nothing.
    pub fn not_audited(error: ApiError) -> Self {
        Self {
            error,
            record: None,
        }
    }

    /// The audit record of this refusal of `caller`, if it has one.
    fn event(&self, caller: &Principal) -> Option<AuditEvent> {
        let record = self.record.as_ref()?;
        let mut event = AuditEvent::refusal(
            record.kind,
            caller,
            record.workflow.as_ref(),
            record.reason.clone(),
        );
        event.requested.clone_from(&record.requested);
        Some(event)
    }
}

/// Longest name kept of what a refused caller asked for (`requested` in the trail).
const MAX_REQUESTED: usize = 64;

/// The workflow name a caller asked for, as the trail keeps it: at most 64 characters. It is
/// recorded whether or not such a workflow exists; the caller's answer does not say.
pub fn requested_name(raw: &str) -> String {
    match raw.char_indices().nth(MAX_REQUESTED) {
        Some((end, _)) => format!("{}…", &raw[..end]),
        None => raw.to_owned(),
    }
}
