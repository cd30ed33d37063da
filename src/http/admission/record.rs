//! The one audit point of a trigger: every outcome after its token was verified is recorded
//! here before the caller is answered.
//!
//! An admitted trigger's event is not handed to the writer: admission writes it, sealed,
//! into the workflow's outbox in the same script that admits the trigger
//! ([`admission_events`] makes it), so it is in Redis whenever the trigger is, whatever
//! happens to this process next.

use std::time::Duration;

use serde_json::Value;

use super::{Admitted, NewTrigger, Refusal};
use crate::audit::outbox::AdmissionEvents;
use crate::audit::{AuditEvent, AuditLog, EventKind};
use crate::auth::Principal;
use crate::http::error::ApiError;
use crate::queue::{Admission, QueuedRequest};
use crate::state::AppState;

/// Retry-After when the audit trail cannot take a trigger's record.
const AUDIT_RETRY_SECONDS: u64 = 5;

/// The events admission writes into the outbox with `request`: `accepted`, and `deferred`
/// when it asked for a time (Redis' clock decides which one it becomes). Sealed before the
/// script runs, so a refused trigger pays for its redaction and seal too: the price of the
/// record being written with the change, not after it.
pub fn admission_events(
    audit: &AuditLog,
    caller: &Principal,
    request: &QueuedRequest,
    asks_for_a_time: bool,
    stored_input: Option<Value>,
) -> AdmissionEvents {
    let mut event = admission_event(EventKind::Accepted, caller, request, stored_input);
    let accepted = audit.seal(&event);
    // At most one of the two is ever written, so they may share the event id.
    let deferred = asks_for_a_time
        .then(|| {
            event.event = EventKind::Deferred;
            audit.seal(&event)
        })
        .flatten();
    AdmissionEvents { accepted, deferred }
}

fn admission_event(
    kind: EventKind,
    caller: &Principal,
    request: &QueuedRequest,
    stored_input: Option<Value>,
) -> AuditEvent {
    AuditEvent::admission(
        kind,
        caller,
        request.request_id.workflow(),
        &request.request_id.to_string(),
        &request.input,
        stored_input,
    )
}

/// Records the outcome of `caller`'s trigger in the audit trail, then hands it back for
/// the answer. An admitted trigger's record is in its outbox already; with
/// `audit.fail_closed` it must also be chained before the answer, or the trigger is taken
/// back (`withdrawn`, 503). A refusal is recorded as it says.
pub async fn record(
    state: &AppState,
    caller: &Principal,
    decided: Result<Admitted, Refusal>,
) -> Result<Admitted, ApiError> {
    match decided {
        Err(refusal) => {
            if let Some(event) = refusal.event(caller) {
                state.audit.record(event).await;
            }
            Err(refusal.error)
        }
        // Recorded when it was first admitted.
        Ok(duplicate @ Admitted::Duplicate { .. }) => Ok(duplicate),
        Ok(Admitted::New(trigger)) => {
            match state.audit_fail_closed {
                None => state.audit.nudge(),
                Some(deadline) => chain_before_answering(state, caller, &trigger, deadline).await?,
            }
            Ok(Admitted::New(trigger))
        }
    }
}

/// `audit.fail_closed`: the trigger's record must be chained (relayed from the outbox into
/// the signed trail) before the 202; a held trigger is released to the drain only then. If
/// it cannot be chained in time, the trigger is taken back and the caller told 503.
async fn chain_before_answering(
    state: &AppState,
    caller: &Principal,
    trigger: &NewTrigger,
    deadline: Duration,
) -> Result<(), ApiError> {
    let request = &trigger.request;
    if let Ok(Ok(())) = tokio::time::timeout(deadline, state.audit.flush()).await {
        // Every trigger is held while failing closed (a deferred one too: it may come due
        // before its record is chained).
        if let Err(e) = state.producer.release(request).await {
            // Audited and in Redis: the drain recovers it once the hold expires.
            tracing::warn!(request.id = %request.request_id, error = %e, "could not release a held trigger; the drain will recover it");
        }
        return Ok(());
    }
    let unavailable = |detail: &str| ApiError::Unavailable {
        what: "the audit trail",
        detail: detail.to_owned(),
        retry_after_seconds: AUDIT_RETRY_SECONDS,
    };
    let sealed = withdrawn_event(
        state,
        caller,
        request,
        trigger.stored_input.clone(),
        "its audit record could not be chained in time (audit.fail_closed); answered 503",
    );
    match state
        .producer
        .withdraw(request, &trigger.checks, sealed.as_ref())
        .await
    {
        Ok(true) => {
            state.audit.nudge();
            tracing::error!(request.id = %request.request_id, "audit record not chained in time; trigger withdrawn");
            Err(unavailable(
                "the trigger's audit record could not be written, so it was not queued",
            ))
        }
        // Released already (this process stalled past the hold): it is queued, its record
        // chained by the recovery that released it.
        Ok(false) => Ok(()),
        Err(e) => {
            tracing::error!(request.id = %request.request_id, error = %e, "audit record not chained and the trigger could not be withdrawn");
            Err(unavailable(
                "the trigger's audit record could not be written, and whether Redis took the trigger back is \
                 unknown: if not, it starts once its record is written; retry with the same Idempotency-Key \
                 to learn whether it holds a request id",
            ))
        }
    }
}

/// The `withdrawn` event of `request`, sealed for its outbox.
fn withdrawn_event(
    state: &AppState,
    caller: &Principal,
    request: &QueuedRequest,
    stored_input: Option<Value>,
    reason: &str,
) -> Option<crate::audit::outbox::SealedEvent> {
    let mut withdrawn = admission_event(EventKind::Withdrawn, caller, request, stored_input);
    withdrawn.reason = Some(reason.to_owned());
    state.audit.seal(&withdrawn)
}

/// `audit.fail_closed`, after the admission script failed in a way that leaves unknown
/// whether it ran (a timeout, a connection dropped mid-call): the caller is told 503, so a
/// trigger it may have admitted, held, is taken back (a no-op if it did not run). Should
/// this fail too, the drain's recovery releases the trigger once its hold expires.
pub async fn take_back_after_ambiguity(
    state: &AppState,
    caller: &Principal,
    request: &QueuedRequest,
    checks: &Admission,
    stored_input: Option<Value>,
) {
    if state.audit_fail_closed.is_none() {
        return;
    }
    let sealed = withdrawn_event(
        state,
        caller,
        request,
        stored_input,
        "Redis' answer to its admission was lost (audit.fail_closed); answered 503",
    );
    match state
        .producer
        .withdraw(request, checks, sealed.as_ref())
        .await
    {
        Ok(true) => state.audit.nudge(),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(request.id = %request.request_id, error = %e, "a trigger whose admission was ambiguous could not be taken back; if admitted, it starts once its hold expires");
        }
    }
}
