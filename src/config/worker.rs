//! `[worker]`: the drain from Redis into Step Functions, and its checks.

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
    pub call_timeout_ms: u64,
    /// First pause after a retryable failure; each further one doubles (±20% jitter)...
    pub retry_initial_backoff_ms: u64,
    /// ...up to this.
    pub retry_max_backoff_ms: u64,
    /// An entry still failing this long after it entered the queue goes to the dead letters.
    pub retry_max_age_seconds: u64,
    /// A delivering consumer renews its claim on an entry every `claim_idle_ms / 5`; another
    /// consumer takes over an entry left unrenewed this long (its consumer died).
    pub claim_idle_ms: u64,
    /// How long a blocking read waits for new entries.
    pub block_ms: u64,
    /// Consumer name in the group; default `<host>-<pid>-<random>`, unique per process.
    pub consumer_name: Option<String>,
    pub breaker: BreakerConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_in_flight: 32,
            call_timeout_ms: 10_000,
            retry_initial_backoff_ms: 200,
            retry_max_backoff_ms: 30_000,
            retry_max_age_seconds: 24 * 3600,
            claim_idle_ms: 60_000,
            block_ms: 2_000,
            consumer_name: None,
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
    pub open_ms: u64,
    /// ...up to this.
    pub max_open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_ms: 5_000,
            max_open_ms: 60_000,
        }
    }
}

impl WorkerConfig {
    /// The longest a delivering consumer can go without renewing its claim: a
    /// `StartExecution` and a `DescribeExecution` timing out, and a Redis command.
    pub fn longest_silence_ms(&self, redis_command_timeout_ms: u64) -> u64 {
        2 * self.call_timeout_ms + redis_command_timeout_ms
    }

    /// How often a delivering consumer renews its claim on an entry.
    pub fn claim_renewal_ms(&self) -> u64 {
        self.claim_idle_ms / 5
    }
}

impl WorkerConfig {
    /// Its problems, each named by its key; a claim must outlive the longest silence of a
    /// delivery, which depends on Redis' command timeout.
    pub(super) fn check(&self, redis_command_timeout_ms: u64, problems: &mut Problems) {
        if self.max_in_flight == 0 {
            problems.add("worker.max_in_flight", "must be at least 1");
        }
        let silence = self.longest_silence_ms(redis_command_timeout_ms);
        if self.claim_idle_ms <= self.claim_renewal_ms() + silence {
            problems.add(
                "worker.claim_idle_ms",
                format!(
                    "must exceed claim_idle_ms / 5 + {silence} ms (2 x call_timeout_ms + \
                     redis.command_timeout_ms), or a live delivery could be taken over"
                ),
            );
        }
        if self.retry_initial_backoff_ms == 0
            || self.retry_max_backoff_ms < self.retry_initial_backoff_ms
        {
            problems.add(
                "worker.retry_max_backoff_ms",
                "retry_initial_backoff_ms must be at least 1 and at most retry_max_backoff_ms",
            );
        }
        if self.breaker.failure_threshold == 0 || self.breaker.open_ms == 0 {
            problems.add(
                "worker.breaker",
                "failure_threshold and open_ms must be at least 1",
            );
        }
    }
}
