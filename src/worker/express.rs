//! What a delivery does under its workflow's guarantee (see `guarantee.rs`).
//!
//! STANDARD (exactly once): nothing more; a second start of the name is refused by Step
//! Functions. EXPRESS: each start is marked in Redis (`queue/attempts.rs`) before the call,
//! with the delivery's own token, in one script that also says what an earlier delivery
//! left. The mark is dropped (only if still this delivery's) when the start certainly did
//! not happen, and turned into `started:<arn>` when it did. A later delivery of the same
//! request (after a crash mid-call, a reclaim, or beside a delivery still calling) that
//! finds another delivery's mark: under `at_most_once` ends the request `failed`
//! (`outcome_unknown`) and never calls; under `at_least_once` calls again, counted as a
//! possible duplicate (as is this delivery's own retry after an unknown outcome).

use super::delivery::Attempt;
use super::drain::Drain;
use super::guarantee::guarantee;
use super::sfn::SfnError;
use crate::config::{DeliveryGuarantee, Workflow};
use crate::metrics::{WorkflowLabels, metrics};
use crate::queue::QueuedRequest;
use crate::queue::attempts::{self, EarlierAttempt};
use crate::queue::consumer::Outcome;

/// The reason a request ends `failed` when its start's outcome is unknown.
const OUTCOME_UNKNOWN: &str = "outcome_unknown";

/// What one delivery carries from attempt to attempt: the guarantee once learned, the token
/// its marks carry (so it drops only its own), and whether its last start's outcome is
/// unknown (so the next start is counted as a possible duplicate, once, when it is made).
pub(super) struct Attempts {
    pub(super) guarantee: Option<DeliveryGuarantee>,
    token: String,
    pub(super) outcome_unknown: bool,
}

impl Attempts {
    pub(super) fn new() -> Self {
        Self {
            guarantee: None,
            token: uuid::Uuid::new_v4().simple().to_string(),
            outcome_unknown: false,
        }
    }
}

impl Drain {
    /// The guarantee this delivery works under, the state machine's type learned first if
    /// this process does not know it; with whether it asked. Asking is a call to the service
    /// the breaker admitted (as a probe when `probe`), so the breaker learns from the answer
    /// as from a start's, and the probe is spent. Ending without a call gives a probe back.
    pub(super) async fn prepare(
        &self,
        target: &Workflow,
        probe: bool,
    ) -> Result<(DeliveryGuarantee, bool), Attempt> {
        let arn = target.state_machine_arn.as_str();
        let (kind, asked) = match self.guarantees.known(target) {
            Some(kind) => (kind, false),
            None => {
                let answer = self.guarantees.ask(self.sfn.as_ref(), target).await;
                self.judge(arn, probe, &answer);
                (answer.map_err(Attempt::from)?, true)
            }
        };
        let accepted = guarantee(kind, target).map_err(|refused| {
            if probe && !asked {
                self.breakers.abandoned(arn);
            }
            Attempt::Done(Outcome::DeadLettered {
                reason: refused.to_string(),
            })
        })?;
        Ok((accepted, asked))
    }

    /// Marks the start about to be tried (EXPRESS only); `Err` is what the attempt comes to
    /// instead of a call. Under `at_most_once` a start already marked by another delivery,
    /// or one that cannot be marked, is not tried; under `at_least_once` it is (a lost mark
    /// only loses a count). A start recorded as succeeded is not tried under either. A start
    /// made after an unknown outcome (another delivery's, or this one's last) is counted as
    /// a possible duplicate.
    pub(super) async fn mark_attempt(
        &self,
        target: &Workflow,
        request: &QueuedRequest,
        attempts: &mut Attempts,
        guarantee: DeliveryGuarantee,
    ) -> Result<(), Attempt> {
        let exclusive = match guarantee {
            DeliveryGuarantee::ExactlyOnce => return Ok(()),
            DeliveryGuarantee::AtMostOnce => true,
            DeliveryGuarantee::AtLeastOnce => false,
        };
        let id = &request.request_id;
        let mut redis = self.redis.clone();
        let marked = attempts::mark(&mut redis, &self.keys, id, &attempts.token, exclusive).await;
        let retrying_unknown = std::mem::take(&mut attempts.outcome_unknown);
        match marked {
            Ok(EarlierAttempt::None) => {
                if retrying_unknown {
                    self.count_possible_duplicate(target);
                }
                Ok(())
            }
            Ok(EarlierAttempt::Started(execution_arn)) => {
                tracing::info!(execution.arn = %execution_arn, "an earlier delivery started this execution");
                Err(Attempt::Done(Outcome::Started { execution_arn }))
            }
            Ok(EarlierAttempt::Unknown) if exclusive => Err(Attempt::Done(Outcome::Failed {
                reason: format!(
                    "{OUTCOME_UNKNOWN}: another delivery called StartExecution and did not \
                     record whether it started (delivery = at_most_once: not tried again)"
                ),
            })),
            Ok(EarlierAttempt::Unknown) => {
                self.count_possible_duplicate(target);
                Ok(())
            }
            // Not knowing whether another attempt was made, at most once cannot go on.
            Err(e) if exclusive => Err(Attempt::Failed {
                error: format!("cannot mark the start attempt: {e}"),
                systemic: true,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot mark the start attempt; going on");
                if retrying_unknown {
                    self.count_possible_duplicate(target);
                }
                Ok(())
            }
        }
    }

    /// Records that the marked start succeeded (EXPRESS only), so that a delivery after a
    /// crash before the completion is recorded completes it instead of starting again.
    pub(super) async fn mark_started(
        &self,
        request: &QueuedRequest,
        attempts: &Attempts,
        guarantee: DeliveryGuarantee,
        execution_arn: &str,
    ) {
        if guarantee == DeliveryGuarantee::ExactlyOnce {
            return;
        }
        let mut redis = self.redis.clone();
        let id = &request.request_id;
        let marked =
            attempts::mark_started(&mut redis, &self.keys, id, &attempts.token, execution_arn);
        if let Err(e) = marked.await {
            tracing::warn!(error = %e, "cannot mark the start as succeeded");
        }
    }

    /// Drops this delivery's mark of a start that certainly did not happen, so that a later
    /// attempt does not take it for one of unknown outcome.
    pub(super) async fn not_started(
        &self,
        request: &QueuedRequest,
        attempts: &Attempts,
        guarantee: DeliveryGuarantee,
    ) {
        if guarantee == DeliveryGuarantee::ExactlyOnce {
            return;
        }
        let mut redis = self.redis.clone();
        let cleared = attempts::clear(&mut redis, &self.keys, &request.request_id, &attempts.token);
        if let Err(e) = cleared.await {
            tracing::warn!(error = %e, "cannot clear the start attempt's mark");
        }
    }

    fn count_possible_duplicate(&self, target: &Workflow) {
        metrics()
            .possible_duplicates
            .get_or_create(&WorkflowLabels {
                workflow: target.name.to_string(),
            })
            .inc();
    }
}

/// What a start of unknown outcome (a timeout, a connection lost mid-call, a 5xx) comes to:
/// retried where a second start cannot run twice (exactly once) or may (`at_least_once`:
/// the retry is counted when it is made); never retried under `at_most_once`.
pub(super) fn unknown_outcome(
    attempts: &mut Attempts,
    guarantee: DeliveryGuarantee,
    error: String,
) -> Attempt {
    match guarantee {
        DeliveryGuarantee::AtMostOnce => Attempt::Done(Outcome::Failed {
            reason: format!(
                "{OUTCOME_UNKNOWN}: {error} (delivery = at_most_once: not tried again)"
            ),
        }),
        DeliveryGuarantee::AtLeastOnce | DeliveryGuarantee::ExactlyOnce => {
            attempts.outcome_unknown = guarantee == DeliveryGuarantee::AtLeastOnce;
            Attempt::Failed {
                error,
                systemic: false,
            }
        }
    }
}

impl From<SfnError> for Attempt {
    /// A failed call that did not start anything: an answer about the request itself ends
    /// it; anything else is tried again (systemic failures without counting against it).
    fn from(error: SfnError) -> Self {
        match error {
            e @ (SfnError::Terminal(_) | SfnError::AlreadyExists) => {
                Attempt::Done(Outcome::DeadLettered {
                    reason: e.to_string(),
                })
            }
            SfnError::Systemic(error) => Attempt::Failed {
                error,
                systemic: true,
            },
            other => Attempt::Failed {
                error: other.to_string(),
                systemic: false,
            },
        }
    }
}
