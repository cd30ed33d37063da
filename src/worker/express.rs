//! What a delivery does under its workflow's guarantee (see `guarantee.rs`).
//!
//! STANDARD (exactly once): nothing more; a second start of the name is refused by Step
//! Functions. EXPRESS: each start is marked in Redis before the call and the mark dropped
//! when the start certainly did not happen, so a later delivery of the same request (after
//! a crash mid-call, or a reclaim) knows an earlier attempt's outcome may be unknown. Under
//! `at_most_once` such a request ends `failed` (`outcome_unknown`) and is never tried again;
//! under `at_least_once` it is tried again and counted as a possible duplicate.

use super::delivery::Attempt;
use super::drain::Drain;
use super::guarantee::guarantee;
use super::sfn::SfnError;
use crate::config::{DeliveryGuarantee, Workflow};
use crate::metrics::{WorkflowLabels, metrics};
use crate::queue::QueuedRequest;
use crate::queue::consumer::{self, Outcome};

/// The reason a request ends `failed` when its start's outcome is unknown.
const OUTCOME_UNKNOWN: &str = "outcome_unknown";

impl Drain {
    /// The guarantee this delivery works under (the state machine's type learned first), and
    /// what an earlier delivery's unfinished attempt means for it. A failure to learn either
    /// is a failed attempt, retried like a start; the breaker (which let this call through,
    /// as a probe when `probe`) learns from the answer as from a start's.
    pub(super) async fn prepare(
        &self,
        target: &Workflow,
        request: &QueuedRequest,
        probe: bool,
    ) -> Result<DeliveryGuarantee, Attempt> {
        let learned = match self.guarantees.known(target) {
            Some(kind) => Ok(kind),
            None => {
                let asked = self.guarantees.learn(self.sfn.as_ref(), target).await;
                self.judge(target, probe, &asked);
                asked
            }
        };
        let kind = match learned {
            Ok(kind) => kind,
            Err(e @ (SfnError::Terminal(_) | SfnError::AlreadyExists)) => {
                let reason = e.to_string();
                return Err(Attempt::Done(Outcome::DeadLettered { reason }));
            }
            Err(SfnError::Systemic(error)) => {
                return Err(Attempt::Failed {
                    error,
                    systemic: true,
                });
            }
            Err(e) => {
                return Err(Attempt::Failed {
                    error: e.to_string(),
                    systemic: false,
                });
            }
        };
        let accepted = guarantee(kind, target).map_err(|refused| {
            Attempt::Done(Outcome::DeadLettered {
                reason: refused.to_string(),
            })
        })?;
        if accepted == DeliveryGuarantee::ExactlyOnce {
            return Ok(accepted);
        }
        let earlier =
            consumer::attempted(&mut self.redis.clone(), &self.keys, &request.request_id).await;
        match (earlier, accepted) {
            (Ok(false), _) => Ok(accepted),
            (Ok(true), DeliveryGuarantee::AtMostOnce) => Err(Attempt::Done(Outcome::Failed {
                reason: format!(
                    "{OUTCOME_UNKNOWN}: an earlier delivery called StartExecution and did not \
                     learn whether it started (delivery = at_most_once: not tried again)"
                ),
            })),
            (Ok(true), _) => {
                self.count_possible_duplicate(target);
                Ok(accepted)
            }
            // Not knowing whether an earlier attempt was made, at most once cannot go on.
            (Err(e), DeliveryGuarantee::AtMostOnce) => Err(Attempt::Failed {
                error: format!("cannot read the start attempt's mark: {e}"),
                systemic: true,
            }),
            (Err(_), _) => Ok(accepted),
        }
    }

    /// What the breaker learns from the answer to `DescribeStateMachine`, as from a start.
    fn judge<T>(&self, target: &Workflow, probe: bool, asked: &Result<T, SfnError>) {
        let arn = target.state_machine_arn.as_str();
        match asked {
            Ok(_) | Err(SfnError::Terminal(_) | SfnError::AlreadyExists) => {
                self.breakers.succeeded(arn);
            }
            Err(SfnError::Throttled(_)) if probe => self.breakers.abandoned(arn),
            Err(SfnError::Throttled(_)) => {}
            Err(_) => self.breakers.failed(arn),
        }
    }

    /// Marks the start about to be tried (EXPRESS only). Under `at_most_once` a start that
    /// cannot be marked is not tried; under `at_least_once` it is (a lost mark only loses
    /// a count).
    pub(super) async fn mark_attempt(
        &self,
        request: &QueuedRequest,
        guarantee: DeliveryGuarantee,
    ) -> redis::RedisResult<()> {
        if guarantee == DeliveryGuarantee::ExactlyOnce {
            return Ok(());
        }
        let marked =
            consumer::mark_attempt(&mut self.redis.clone(), &self.keys, &request.request_id).await;
        match (marked, guarantee) {
            (Err(e), DeliveryGuarantee::AtMostOnce) => Err(e),
            (Err(e), _) => {
                tracing::warn!(error = %e, "cannot mark the start attempt; going on");
                Ok(())
            }
            (Ok(()), _) => Ok(()),
        }
    }

    /// Drops the mark of a start that certainly did not happen, so that a later delivery
    /// does not take it for one of unknown outcome.
    pub(super) async fn not_started(&self, request: &QueuedRequest, guarantee: DeliveryGuarantee) {
        if guarantee == DeliveryGuarantee::ExactlyOnce {
            return;
        }
        let cleared =
            consumer::clear_attempt(&mut self.redis.clone(), &self.keys, &request.request_id).await;
        if let Err(e) = cleared {
            tracing::warn!(error = %e, "cannot clear the start attempt's mark");
        }
    }

    /// What a start of unknown outcome (a timeout, a connection lost mid-call, a 5xx) comes
    /// to: retried where a second start cannot run twice (exactly once) or may
    /// (`at_least_once`, counted); never retried under `at_most_once`.
    pub(super) fn unknown_outcome(
        &self,
        target: &Workflow,
        guarantee: DeliveryGuarantee,
        error: String,
    ) -> Attempt {
        match guarantee {
            DeliveryGuarantee::AtMostOnce => Attempt::Done(Outcome::Failed {
                reason: format!(
                    "{OUTCOME_UNKNOWN}: {error} (delivery = at_most_once: not tried again)"
                ),
            }),
            DeliveryGuarantee::AtLeastOnce => {
                self.count_possible_duplicate(target);
                Attempt::Failed {
                    error,
                    systemic: false,
                }
            }
            DeliveryGuarantee::ExactlyOnce => Attempt::Failed {
                error,
                systemic: false,
            },
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
