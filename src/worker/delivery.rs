//! One delivery: an entry from the queue to `StartExecution`, retried with backoff while its
//! claim is renewed, then completed (started, dead-lettered, or for an EXPRESS workflow's
//! `at_most_once`, failed) atomically with its ack. What an EXPRESS workflow's guarantee
//! adds around each call is in `express.rs`.
//! Each step returns a typed result; a delivery that yields (shutdown, or the entry is no
//! longer ours) leaves its entry pending for a later delivery.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::breaker::Admit;
use super::drain::Drain;
use super::express::{Attempts, unknown_outcome};
use super::retry::{Next, RetrySchedule, jittered};
use super::sfn::{SfnError, StepFunctions, execution_arn};
use crate::audit::AuditEvent;
use crate::clock::now_rfc3339;
use crate::config::Workflow;
use crate::queue::QueuedRequest;
use crate::queue::consumer::{self, Completion, Delivery, Outcome};

/// Attempts at recording an outcome in Redis before the entry is left for redelivery.
const COMPLETE_ATTEMPTS: u32 = 5;
/// The pause after the first failed attempt at recording an outcome (doubling after each).
const COMPLETE_FIRST_PAUSE: Duration = Duration::from_millis(100);

/// Why a delivery stopped before its outcome: the entry stays pending, and a later delivery
/// (this process after a restart, or another consumer's reclaim) takes it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Yielded {
    /// The process is stopping.
    Shutdown,
    /// The entry is no longer pending for us: another delivery of it finished.
    ClaimLost,
}

/// What one call of `StartExecution` came to, short of an outcome.
pub(super) enum Attempt {
    Done(Outcome),
    Failed { error: String, systemic: bool },
}

/// Who recorded a delivery's outcome in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    /// This delivery: it writes the audit record.
    Here,
    /// Another delivery of the same entry, which audits it.
    Elsewhere,
}

impl Drain {
    /// Starts one entry's execution and records the outcome; on shutdown, leaves the entry
    /// pending for a later delivery.
    pub(super) async fn deliver(
        &self,
        target: &Workflow,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) {
        let span =
            tracing::info_span!("deliver", workflow = %target.name, entry = %delivery.entry_id);
        // Before the span is first entered: entering starts it, with whatever parent it has.
        if let Ok(request) = &delivery.request {
            crate::telemetry::continue_trace(&span, request.traceparent.as_deref());
        }
        self.deliver_in_span(target, delivery, shutdown)
            .instrument(span)
            .await;
    }

    async fn deliver_in_span(
        &self,
        target: &Workflow,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) {
        let mut claim = Claim {
            queue: self.keys.queue(&target.name),
            entry_id: delivery.entry_id.clone(),
            renewed: Instant::now(),
            every: self.config.claim_renewal().max(Duration::from_millis(1)),
        };
        let outcome = match &delivery.request {
            Err(problem) => {
                tracing::error!(problem = %problem, "unreadable queue entry; it can never start");
                Ok(Outcome::DeadLettered {
                    reason: format!("unreadable queue entry: {problem}"),
                })
            }
            Ok(request) => {
                self.start_with_retries(target, request, &mut claim, shutdown)
                    .await
            }
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(yielded) => {
                tracing::debug!(?yielded, "delivery yielded; the entry stays pending");
                return;
            }
        };
        let request = delivery.request.as_ref().ok();
        // Written into the outbox by the script that records the outcome: a crash after it
        // cannot lose the record, and only the delivery that records the outcome writes it.
        let event = outcome_event(target, request, &outcome);
        let sealed = self.audit.seal(&event);
        let completion = Completion {
            workflow: &target.name,
            request_id: request.map(|r| &r.request_id),
            entry_id: &delivery.entry_id,
            now: &now_rfc3339(),
            finished_ttl: self.finished_status_ttl,
            event: sealed.as_ref(),
        };
        match self.complete_with_retries(&completion, &outcome).await {
            Ok(Recorded::Here) => {
                self.audit.nudge();
                report_outcome(target, &outcome);
            }
            Ok(Recorded::Elsewhere) => {
                tracing::debug!("another delivery of this entry already recorded it");
            }
            Err(e) => {
                // Left pending: the redelivery meets ExecutionAlreadyExists and completes then.
                tracing::warn!(error = %e, "could not record the outcome; the entry will be redelivered");
            }
        }
    }

    /// Calls Step Functions until the request started or can never start as it is.
    /// Retryable failures are retried on the [`RetrySchedule`], with jitter; once the entry
    /// is older than `retry_max_age_seconds`, the next failure dead-letters it. While the
    /// state machine's breaker is open, the entry waits (it stays pending, renewed, and
    /// nothing counts against it).
    async fn start_with_retries(
        &self,
        target: &Workflow,
        request: &QueuedRequest,
        claim: &mut Claim,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, Yielded> {
        let mut schedule = RetrySchedule::new(&self.config);
        let mut attempts = Attempts::new();
        loop {
            let attempted = self
                .attempt(target, request, &mut attempts, claim, shutdown)
                .await?;
            let (error, systemic) = match attempted {
                Attempt::Done(outcome) => return Ok(outcome),
                Attempt::Failed { error, systemic } => (error, systemic),
            };
            let age = entry_age(&claim.entry_id);
            let (pause, attempt) = match schedule.after_failure(age, systemic) {
                Next::GiveUp => {
                    return Ok(Outcome::DeadLettered {
                        reason: format!(
                            "still failing {} s after it was queued (worker.retry_max_age_seconds = {}): {error}",
                            age.as_secs(),
                            schedule.max_age().as_secs()
                        ),
                    });
                }
                Next::RetryAfter { pause, attempt } => (pause, attempt),
            };
            self.failures.note(&target.state_machine_arn, &error);
            let event = AuditEvent::retried(&target.name, request, attempt, error);
            self.audit_in_outbox(target, event).await;
            self.wait(jittered(pause), claim, shutdown).await?;
        }
    }

    /// One call of `StartExecution`, once the state machine's breaker and the pacing allow
    /// it; the breaker learns from its answer, and the delivery's guarantee says what an
    /// answer of unknown outcome means.
    async fn attempt(
        &self,
        target: &Workflow,
        request: &QueuedRequest,
        attempts: &mut Attempts,
        claim: &mut Claim,
        shutdown: &CancellationToken,
    ) -> Result<Attempt, Yielded> {
        let arn = target.state_machine_arn.as_str();
        let probe = loop {
            match self.breakers.admit(arn) {
                Admit::Call => break false,
                Admit::Probe => break true,
                Admit::Wait(wait) => self.wait(wait, claim, shutdown).await?,
            }
        };
        // Learned through the breaker: asking the type is a call to the same service, which
        // spends a probe (judged by its answer).
        let (guarantee, probe) = match attempts.guarantee {
            Some(guarantee) => (guarantee, probe),
            None => match self.prepare(target, probe).await {
                Ok((learned, asked)) => (*attempts.guarantee.insert(learned), probe && !asked),
                Err(attempted) => return Ok(attempted),
            },
        };
        // Every way out without a call gives an unspent probe back.
        let abandon = || {
            if probe {
                self.breakers.abandoned(arn);
            }
        };
        let permits = self
            .pace(target, claim, shutdown)
            .await
            .inspect_err(|_| abandon())?;
        if let Err(attempted) = self
            .mark_attempt(target, request, attempts, guarantee)
            .await
        {
            self.release(target, permits).await;
            abandon();
            return Ok(attempted);
        }
        let started = start_once(self.sfn.as_ref(), target, request).await;
        self.release(target, permits).await;
        self.judge(arn, probe, &started);
        Ok(match started {
            Ok(execution_arn) => {
                self.mark_started(request, attempts, guarantee, &execution_arn)
                    .await;
                Attempt::Done(Outcome::Started { execution_arn })
            }
            Err(SfnError::OutcomeUnknown(error)) => unknown_outcome(attempts, guarantee, error),
            Err(not_started) => {
                self.not_started(request, attempts, guarantee).await;
                Attempt::from(not_started)
            }
        })
    }

    /// What the state machine's breaker learns from a call's answer: an answer about the
    /// request is a healthy service; throttling judges nothing (a probe is given back).
    pub(super) fn judge<T>(&self, arn: &str, probe: bool, answer: &Result<T, SfnError>) {
        match answer {
            Ok(_) | Err(SfnError::Terminal(_) | SfnError::AlreadyExists) => {
                self.breakers.succeeded(arn);
            }
            Err(SfnError::Throttled(_)) if probe => self.breakers.abandoned(arn),
            Err(SfnError::Throttled(_)) => {}
            Err(_) => self.breakers.failed(arn),
        }
    }

    /// Waits `duration` while keeping the claim on the entry: renews it whenever due, so no
    /// other consumer takes over a live delivery.
    pub(super) async fn wait(
        &self,
        duration: Duration,
        claim: &mut Claim,
        shutdown: &CancellationToken,
    ) -> Result<(), Yielded> {
        let until = Instant::now() + duration;
        loop {
            if claim.renewed.elapsed() >= claim.every {
                self.renew(claim).await?;
            }
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            let next_renewal = (claim.renewed + claim.every).max(now);
            tokio::select! {
                () = tokio::time::sleep_until(until.min(next_renewal).into()) => {}
                () = shutdown.cancelled() => return Err(Yielded::Shutdown),
            }
        }
    }

    /// Resets the entry's idle time. A failed renewal is only logged: the delivery goes on.
    async fn renew(&self, claim: &mut Claim) -> Result<(), Yielded> {
        let renewed = consumer::renew(
            &mut self.redis.clone(),
            &claim.queue,
            &self.consumer,
            &claim.entry_id,
        )
        .await;
        claim.renewed = Instant::now();
        match renewed {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::info!("the entry is no longer pending; another delivery finished it");
                Err(Yielded::ClaimLost)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the claim on an entry");
                Ok(())
            }
        }
    }

    /// Records the outcome in Redis, retrying a failed call a few times (the script records
    /// it, and writes its event, once: a retry after an ambiguous failure finds it done).
    async fn complete_with_retries(
        &self,
        completion: &Completion<'_>,
        outcome: &Outcome,
    ) -> redis::RedisResult<Recorded> {
        let mut redis = self.redis.clone();
        let mut pause = COMPLETE_FIRST_PAUSE;
        let mut attempts = 0;
        loop {
            let done = consumer::complete(&mut redis, &self.keys, completion, outcome).await;
            attempts += 1;
            match done {
                Err(e) if attempts < COMPLETE_ATTEMPTS => {
                    tracing::debug!(error = %e, "recording the outcome failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => return Err(e),
                Ok(true) => return Ok(Recorded::Here),
                Ok(false) => return Ok(Recorded::Elsewhere),
            }
        }
    }
}

/// The audit event of an outcome.
fn outcome_event(
    target: &Workflow,
    request: Option<&QueuedRequest>,
    outcome: &Outcome,
) -> AuditEvent {
    let workflow = &target.name;
    match outcome {
        Outcome::Started { execution_arn } => {
            AuditEvent::started(workflow, request, execution_arn.clone())
        }
        Outcome::DeadLettered { reason } => {
            AuditEvent::dead_lettered(workflow, request, reason.clone())
        }
        Outcome::Failed { reason } => AuditEvent::failed(workflow, request, reason.clone()),
    }
}

/// The metric and log line of an outcome this delivery recorded.
fn report_outcome(target: &Workflow, outcome: &Outcome) {
    match outcome {
        Outcome::Started { execution_arn } => {
            crate::metrics::metrics()
                .executions_started
                .get_or_create(&crate::metrics::WorkflowLabels {
                    workflow: target.name.to_string(),
                })
                .inc();
            tracing::info!(execution.arn = %execution_arn, "execution started");
        }
        Outcome::DeadLettered { reason } => tracing::warn!(reason = %reason, "entry dead-lettered"),
        Outcome::Failed { reason } => {
            tracing::warn!(reason = %reason, "request failed; not tried again");
        }
    }
}

/// One `StartExecution`, treating "already exists with the same input" as started.
pub async fn start_once(
    sfn: &dyn StepFunctions,
    target: &Workflow,
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::DrainPacing;
    use crate::domain::{RequestId, WorkflowName};
    use crate::worker::sfn::fake::{Call, FakeStepFunctions};

    const ARN: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:orders";

    pub(in crate::worker) fn target() -> Workflow {
        Workflow {
            name: WorkflowName::parse("orders").unwrap_or_else(|e| panic!("{e}")),
            state_machine_arn: ARN.into(),
            role_arn: None,
            policy: crate::policy::Policy::default(),
            input: crate::policy::InputRules::default(),
            one_time_tokens: false,
            rate_limits: crate::config::WorkflowRateLimits::default(),
            max_backlog: None,
            drain: DrainPacing::default(),
            audit_input: crate::audit::redact::InputAudit::default(),
            delivery: None,
        }
    }

    fn request(input: &str) -> Result<QueuedRequest, Box<dyn std::error::Error>> {
        Ok(QueuedRequest {
            request_id: RequestId::generate(WorkflowName::parse("orders")?),
            input: input.into(),
            owner: crate::domain::Owner::parse("iss sub"),
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
