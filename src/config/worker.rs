//! `[worker]`: the drain from Redis into Step Functions, and its checks.

use std::time::Duration;

use serde::Deserialize;

use super::validate::Problems;

/// `[worker]`: the drain from Redis into Step Functions.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Run the drain in this process (a replica may serve the API only).
    pub enabled: bool,
    /// `StartExecution` calls in flight at once, over all workflows.
    pub max_in_flight: usize,
    /// Bound on one `StartExecution` call.
    #[serde(rename = "call_timeout_ms", with = "super::duration::millis")]
    pub call_timeout: Duration,
    /// First pause after a retryable failure; each further one doubles (±20% jitter)...
    #[serde(rename = "retry_initial_backoff_ms", with = "super::duration::millis")]
    pub retry_initial_backoff: Duration,
    /// ...up to this.
    #[serde(rename = "retry_max_backoff_ms", with = "super::duration::millis")]
    pub retry_max_backoff: Duration,
    /// An entry still failing this long after it entered the queue goes to the dead letters.
    #[serde(rename = "retry_max_age_seconds", with = "super::duration::seconds")]
    pub retry_max_age: Duration,
    /// A delivering consumer renews its claim on an entry every `claim_idle_ms / 5`; another
    /// consumer takes over an entry left unrenewed this long (its consumer died).
    #[serde(rename = "claim_idle_ms", with = "super::duration::millis")]
    pub claim_idle: Duration,
    /// How long a blocking read waits for new entries.
    #[serde(rename = "block_ms", with = "super::duration::millis")]
    pub block: Duration,
    /// Consumer name in the group; default `<host>-<pid>-<random>`, unique per process.
    pub consumer_name: Option<String>,
    /// A consumer of the group idle this long with no entry pending (a stopped process) is
    /// removed by any replica; one that still owns entries never is.
    #[serde(rename = "consumer_expiry_seconds", with = "super::duration::seconds")]
    pub consumer_expiry: Duration,
    pub breaker: BreakerConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_in_flight: 32,
            call_timeout: Duration::from_secs(10),
            retry_initial_backoff: Duration::from_millis(200),
            retry_max_backoff: Duration::from_secs(30),
            retry_max_age: Duration::from_secs(24 * 3600),
            claim_idle: Duration::from_secs(60),
            block: Duration::from_secs(2),
            consumer_name: None,
            consumer_expiry: Duration::from_secs(3600),
            breaker: BreakerConfig::default(),
        }
    }
}

/// `[worker.breaker]`: the circuit breaker of each state machine.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failed calls (5xx, timeouts, connection errors) that open it.
    pub failure_threshold: u32,
    /// How long it stays open before a probe call; doubles after a failed probe...
    #[serde(rename = "open_ms", with = "super::duration::millis")]
    pub open: Duration,
    /// ...up to this.
    #[serde(rename = "max_open_ms", with = "super::duration::millis")]
    pub max_open: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open: Duration::from_secs(5),
            max_open: Duration::from_secs(60),
        }
    }
}

impl WorkerConfig {
    /// The longest a delivering consumer can go without renewing its claim: a
    /// `StartExecution` and a `DescribeExecution` timing out, and a Redis command.
    pub fn longest_silence(&self, redis_command_timeout: Duration) -> Duration {
        2 * self.call_timeout + redis_command_timeout
    }

    /// How often a delivering consumer renews its claim on an entry.
    pub fn claim_renewal(&self) -> Duration {
        self.claim_idle / 5
    }
}

impl WorkerConfig {
    /// Its problems, each named by its key; a claim must outlive the longest silence of a
    /// delivery, which depends on Redis' command timeout.
    pub(super) fn check(&self, redis_command_timeout: Duration, problems: &mut Problems) {
        if self.max_in_flight == 0 {
            problems.add("worker.max_in_flight", "must be at least 1");
        }
        let silence = self.longest_silence(redis_command_timeout);
        if self.claim_idle <= self.claim_renewal() + silence {
            problems.add(
                "worker.claim_idle_ms",
                format!(
                    "must exceed claim_idle_ms / 5 + {} ms (2 x call_timeout_ms + \
                     redis.command_timeout_ms), or a live delivery could be taken over",
                    silence.as_millis()
                ),
            );
        }
        if self.consumer_expiry <= self.block {
            // A live reader is idle at most one blocking read between reads.
            problems.add(
                "worker.consumer_expiry_seconds",
                "must exceed block_ms, or live readers would be removed between reads",
            );
        }
        if self.retry_initial_backoff.is_zero()
            || self.retry_max_backoff < self.retry_initial_backoff
        {
            problems.add(
                "worker.retry_max_backoff_ms",
                "retry_initial_backoff_ms must be at least 1 and at most retry_max_backoff_ms",
            );
        }
        if self.breaker.failure_threshold == 0 || self.breaker.open.is_zero() {
            problems.add(
                "worker.breaker",
                "failure_threshold and open_ms must be at least 1",
            );
        }
    }
}
