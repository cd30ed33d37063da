//! One delivery: an entry from the queue to `StartExecution`, retried with backoff while its
//! claim is renewed, then completed (started, or dead-lettered) atomically with its ack.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::breaker::Admit;
use super::drain::{Drain, DrainTarget};
use super::retry::jittered;
use super::sfn::{SfnError, StepFunctions, execution_arn};
use crate::audit::{AuditEvent, EventKind};
use crate::clock::now_rfc3339;
use crate::queue::consumer::{self, Delivery, Outcome};
use crate::queue::{QueuedRequest, WORKERS_GROUP};

impl Drain {
    /// Starts one entry's execution and records the outcome; on shutdown, leaves the entry
    /// pending for a later delivery.
    pub(super) async fn deliver(
        &self,
        target: &DrainTarget,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) {
        let span =
            tracing::info_span!("deliver", workflow = %target.workflow, entry = %delivery.entry_id);
        // Before the span is first entered: entering starts it, with whatever parent it has.
        if let Ok(request) = &delivery.request {
            crate::telemetry::continue_trace(&span, request.traceparent.as_deref());
        }
        self.deliver_in_span(target, delivery, shutdown)
            .instrument(span)
            .await;
    }

    pub(super) async fn deliver_in_span(
        &self,
        target: &DrainTarget,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) {
        let mut claim = Claim {
            queue: self.keys.queue(&target.workflow),
            entry_id: delivery.entry_id.clone(),
            renewed: Instant::now(),
            every: Duration::from_millis(self.config.claim_renewal_ms().max(1)),
        };
        let outcome = match &delivery.request {
            Err(problem) => {
                tracing::error!(problem = %problem, "unreadable queue entry; it can never start");
                Some(Outcome::DeadLettered {
                    reason: format!("unreadable queue entry: {problem}"),
                })
            }
            Ok(request) => {
                self.start_with_retries(target, request, &mut claim, shutdown)
                    .await
            }
        };
        let Some(outcome) = outcome else { return };
        let request = delivery.request.as_ref().ok();
        match self
            .complete_with_retries(target, request, &delivery.entry_id, &outcome)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!("another delivery of this entry already recorded it");
                return;
            }
            Err(e) => {
                // Left pending: the redelivery meets ExecutionAlreadyExists and completes then.
                tracing::warn!(error = %e, "could not record the outcome; the entry will be redelivered");
                return;
            }
        }
        let kind = match outcome {
            Outcome::Started { .. } => EventKind::Started,
            Outcome::DeadLettered { .. } => EventKind::DeadLettered,
        };
        let mut event = request_event(kind, target, request);
        match outcome {
            Outcome::Started { execution_arn } => {
                crate::metrics::metrics()
                    .executions_started
                    .get_or_create(&crate::metrics::WorkflowLabels {
                        workflow: target.workflow.to_string(),
                    })
                    .inc();
                tracing::info!(execution.arn = %execution_arn, "execution started");
                event.execution_arn = Some(execution_arn);
            }
            Outcome::DeadLettered { reason } => {
                tracing::warn!(reason = %reason, "entry dead-lettered");
                event.reason = Some(reason);
            }
        }
        self.audit.record(event).await;
    }

    /// Calls Step Functions until the request started or can never start as it is.
    /// Retryable failures are retried with exponential backoff and jitter; once the entry is
    /// older than `retry_max_age_seconds`, the next failure dead-letters it. While the state
    /// machine's breaker is open, the entry waits (it stays pending, renewed, and nothing
    /// counts against it). `None` on shutdown, or when another consumer holds the entry now.
    pub(super) async fn start_with_retries(
        &self,
        target: &DrainTarget,
        request: &QueuedRequest,
        claim: &mut Claim,
        shutdown: &CancellationToken,
    ) -> Option<Outcome> {
        let arn = target.state_machine_arn.as_str();
        let mut backoff = Duration::from_millis(self.config.retry_initial_backoff_ms);
        let max_backoff = Duration::from_millis(self.config.retry_max_backoff_ms);
        let max_age = Duration::from_secs(self.config.retry_max_age_seconds);
        let mut attempt = 0u32;
        loop {
            let probe = loop {
                match self.breakers.admit(arn) {
                    Admit::Call => break false,
                    Admit::Probe => break true,
                    Admit::Wait(wait) => self.wait(wait, claim, shutdown).await?,
                }
            };
            let Some(permits) = self.pace(target, claim, shutdown).await else {
                if probe {
                    self.breakers.abandoned(arn);
                }
                return None;
            };
            let started = start_once(self.sfn.as_ref(), target, request).await;
            let mut systemic = false;
            self.release(target, permits).await;
            let error = match started {
                Ok(execution_arn) => {
                    self.breakers.succeeded(arn);
                    return Some(Outcome::Started { execution_arn });
                }
                Err(e @ (SfnError::Terminal(_) | SfnError::AlreadyExists)) => {
                    // The service answered; the request itself is the problem.
                    self.breakers.succeeded(arn);
                    return Some(Outcome::DeadLettered {
                        reason: e.to_string(),
                    });
                }
                Err(SfnError::Throttled(error)) => {
                    // Healthy but busy: slow down without judging the service.
                    if probe {
                        self.breakers.abandoned(arn);
                    }
                    error
                }
                Err(SfnError::Retryable(error)) => {
                    self.breakers.failed(arn);
                    error
                }
                Err(SfnError::Systemic(error)) => {
                    // Not the entry's fault: it waits however long the outage lasts.
                    self.breakers.failed(arn);
                    systemic = true;
                    error
                }
            };
            let age = entry_age(&claim.entry_id);
            if age > max_age && !systemic {
                return Some(Outcome::DeadLettered {
                    reason: format!(
                        "still failing {} s after it was queued (worker.retry_max_age_seconds = {}): {error}",
                        age.as_secs(),
                        max_age.as_secs()
                    ),
                });
            }
            attempt += 1;
            self.failures.note(arn, &error);
            let mut event = request_event(EventKind::Retried, target, Some(request));
            event.attempt = Some(attempt);
            event.reason = Some(error.to_string());
            self.audit.record(event).await;
            self.wait(jittered(backoff), claim, shutdown).await?;
            backoff = (backoff * 2).min(max_backoff);
        }
    }

    /// Waits `duration` while keeping the claim on the entry: renews it whenever due, so no
    /// other consumer takes over a live delivery. `None` on shutdown, or when the entry is no
    /// longer pending (another delivery of it finished).
    pub(super) async fn wait(
        &self,
        duration: Duration,
        claim: &mut Claim,
        shutdown: &CancellationToken,
    ) -> Option<()> {
        let until = Instant::now() + duration;
        loop {
            if claim.renewed.elapsed() >= claim.every && !self.renew(claim).await {
                return None;
            }
            let now = Instant::now();
            if now >= until {
                return Some(());
            }
            let next_renewal = (claim.renewed + claim.every).max(now);
            tokio::select! {
                () = tokio::time::sleep_until(until.min(next_renewal).into()) => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }

    /// Resets the entry's idle time (`XCLAIM` to ourselves); `false` when it is no longer
    /// pending. A failed renewal is only logged: the delivery goes on.
    pub(super) async fn renew(&self, claim: &mut Claim) -> bool {
        let renewed: redis::RedisResult<Vec<String>> = redis::cmd("XCLAIM")
            .arg(&claim.queue)
            .arg(WORKERS_GROUP)
            .arg(&self.consumer)
            .arg(0)
            .arg(&claim.entry_id)
            .arg("JUSTID")
            .query_async(&mut self.redis.clone())
            .await;
        claim.renewed = Instant::now();
        match renewed {
            Ok(ids) if ids.is_empty() => {
                tracing::info!("the entry is no longer pending; another delivery finished it");
                false
            }
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the claim on an entry");
                true
            }
        }
    }

    pub(super) async fn complete_with_retries(
        &self,
        target: &DrainTarget,
        request: Option<&QueuedRequest>,
        entry_id: &str,
        outcome: &Outcome,
    ) -> redis::RedisResult<bool> {
        let mut redis = self.redis.clone();
        let mut pause = Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            let id = request.map(|r| &r.request_id);
            let done = consumer::complete(
                &mut redis,
                &self.keys,
                &target.workflow,
                id,
                entry_id,
                outcome,
                &now_rfc3339(),
            )
            .await;
            attempts += 1;
            match done {
                Err(e) if attempts < 5 => {
                    tracing::debug!(error = %e, "recording the outcome failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
    }
}

/// One `StartExecution`, treating "already exists with the same input" as started.
pub async fn start_once(
    sfn: &dyn StepFunctions,
    target: &DrainTarget,
    request: &QueuedRequest,
) -> Result<String, SfnError> {
    let name = request.request_id.execution_name();
    let role = target.role_arn.as_deref();
    match sfn
        .start_execution(
            role,
            &target.state_machine_arn,
            &name,
            &request.input,
            request.trace_header.as_deref(),
        )
        .await
    {
        Err(SfnError::AlreadyExists) => {
            let arn = execution_arn(&target.state_machine_arn, &name);
            let existing = sfn.execution_input(role, &arn).await?;
            if same_json(&existing, &request.input) {
                tracing::info!(execution.arn = %arn, "execution was already started for this request");
                Ok(arn)
            } else {
                Err(SfnError::Terminal(format!(
                    "execution name {name} is already used with a different input"
                )))
            }
        }
        other => other,
    }
}

pub(super) fn same_json(a: &str, b: &str) -> bool {
    a == b
        || matches!((serde_json::from_str::<serde_json::Value>(a), serde_json::from_str::<serde_json::Value>(b)),
            (Ok(x), Ok(y)) if x == y)
}

/// A delivery's hold on its queue entry, renewed while it waits.
pub(super) struct Claim {
    queue: String,
    entry_id: String,
    renewed: Instant,
    every: Duration,
}

/// How long ago an entry entered its queue: a stream entry id starts with that time (ms).
pub(super) fn entry_age(entry_id: &str) -> Duration {
    let queued_ms = entry_id
        .split('-')
        .next()
        .and_then(|ms| ms.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_millis(crate::clock::unix_ms().saturating_sub(queued_ms))
}

/// An event about `request` (when its entry could be read) of `target`'s workflow.
pub(super) fn request_event(
    kind: EventKind,
    target: &DrainTarget,
    request: Option<&QueuedRequest>,
) -> AuditEvent {
    let mut event = AuditEvent::now(kind);
    event.workflow = Some(target.workflow.to_string());
    if let Some(request) = request {
        event.request_id = Some(request.request_id.to_string());
        set_owner(&mut event, &request.owner);
        event.client_id.clone_from(&request.client_id);
        event.http_request_id.clone_from(&request.http_request_id);
    }
    event
}

/// Issuer and subject from a request's owner, `"<issuer> <subject>"` (issuers are URLs,
/// without spaces).
pub(super) fn set_owner(event: &mut AuditEvent, owner: &str) {
    match owner.split_once(' ') {
        Some((issuer, subject)) => {
            event.issuer = Some(issuer.to_owned());
            event.subject = Some(subject.to_owned());
        }
        None => event.subject = Some(owner.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DrainPacing;
    use crate::domain::{RequestId, WorkflowName};
    use crate::worker::sfn::fake::{Call, FakeStepFunctions};

    const ARN: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:orders";

    fn target() -> DrainTarget {
        DrainTarget {
            workflow: WorkflowName::parse("orders").unwrap_or_else(|e| panic!("{e}")),
            state_machine_arn: ARN.into(),
            role_arn: None,
            pacing: DrainPacing::default(),
        }
    }

    fn request(input: &str) -> Result<QueuedRequest, Box<dyn std::error::Error>> {
        Ok(QueuedRequest {
            request_id: RequestId::generate(WorkflowName::parse("orders")?),
            input: input.into(),
            owner: "iss sub".into(),
            client_id: None,
            accepted_at: now_rfc3339(),
            http_request_id: None,
            trace_header: None,
            traceparent: None,
        })
    }

    #[tokio::test]
    async fn a_redelivery_of_a_started_request_counts_as_started()
    -> Result<(), Box<dyn std::error::Error>> {
        let request = request(r#"{"a":1}"#)?;
        let name = request.request_id.execution_name();
        let sfn =
            FakeStepFunctions::scripted([Err(SfnError::AlreadyExists), Ok(r#"{"a": 1}"#.into())]);
        assert_eq!(
            start_once(&sfn, &target(), &request).await,
            Ok(execution_arn(ARN, &name))
        );
        assert_eq!(
            sfn.calls(),
            vec![
                Call::Start {
                    name: name.clone(),
                    input: request.input.clone()
                },
                Call::Describe {
                    execution_arn: format!(
                        "arn:aws:states:us-east-1:123456789012:execution:orders:{name}"
                    )
                },
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_name_clash_with_another_input_is_terminal() -> Result<(), Box<dyn std::error::Error>>
    {
        let sfn =
            FakeStepFunctions::scripted([Err(SfnError::AlreadyExists), Ok(r#"{"a":2}"#.into())]);
        assert!(matches!(
            start_once(&sfn, &target(), &request(r#"{"a":1}"#)?).await,
            Err(SfnError::Terminal(_))
        ));
        Ok(())
    }
}
