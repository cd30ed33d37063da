//! The one audit point of a trigger: every outcome after its token was verified is recorded
//! here before the caller is answered.

use std::time::Duration;

use super::{Admitted, NewTrigger, Refusal};
use crate::audit::{AuditEvent, EventKind};
use crate::auth::Principal;
use crate::clock::now_rfc3339;
use crate::http::error::ApiError;
use crate::queue::Placement;
use crate::state::AppState;

/// Retry-After when the audit trail cannot take a trigger's record.
const AUDIT_RETRY_SECONDS: u64 = 5;

/// Records the outcome of `caller`'s trigger in the audit trail, then hands it back for
/// the answer. An admitted trigger is recorded `accepted` (or `deferred`); with
/// `audit.fail_closed`, durably before the answer, and taken back (`withdrawn`, 503) when
/// its record cannot be written in time. A refusal is recorded as it says.
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
            let event = admission_event(caller, &trigger);
            match state.audit_fail_closed {
                None => state.audit.record(event).await,
                Some(deadline) => record_before_answering(state, &trigger, event, deadline).await?,
            }
            Ok(Admitted::New(trigger))
        }
    }
}

fn admission_event(caller: &Principal, trigger: &NewTrigger) -> AuditEvent {
    let kind = match trigger.placement {
        Placement::Deferred => EventKind::Deferred,
        Placement::Queue { .. } | Placement::Held => EventKind::Accepted,
    };
    AuditEvent::admission(
        kind,
        caller,
        &trigger.workflow,
        &trigger.request.request_id.to_string(),
        &trigger.request.input,
        trigger.stored_input.clone(),
    )
}

/// `audit.fail_closed`: the trigger's record must be in the trail before the 202; a held
/// trigger is released to the drain only then. If the record cannot be written in time, the
/// trigger is taken back and the caller told 503.
async fn record_before_answering(
    state: &AppState,
    trigger: &NewTrigger,
    event: AuditEvent,
    deadline: Duration,
) -> Result<(), ApiError> {
    let request = &trigger.request;
    let mut withdrawn = event.clone();
    if state.audit.record_durably(event, deadline).await.is_ok() {
        if trigger.placement == Placement::Held
            && let Err(e) = state.producer.release(request).await
        {
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
    match state.producer.withdraw(request, &trigger.checks).await {
        Ok(true) => {
            tracing::error!(request.id = %request.request_id, "audit record not written in time; trigger withdrawn");
            withdrawn.event = EventKind::Withdrawn;
            withdrawn.id = uuid::Uuid::now_v7().to_string();
            withdrawn.time = now_rfc3339();
            withdrawn.reason = Some(
                "its audit record could not be written in time (audit.fail_closed); answered 503"
                    .into(),
            );
            state.audit.record(withdrawn).await;
            Err(unavailable(
                "the trigger's audit record could not be written, so it was not queued",
            ))
        }
        // Released already (this process stalled past the hold): it is queued, audited by
        // the recovery that released it.
        Ok(false) => Ok(()),
        Err(e) => {
            tracing::error!(request.id = %request.request_id, error = %e, "audit record not written and the trigger could not be withdrawn");
            Err(unavailable(
                "the trigger's audit record could not be written and Redis could not take the trigger back: \
                 it starts once its record is written; retry with the same Idempotency-Key to learn its request id",
            ))
        }
    }
}
