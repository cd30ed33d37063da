//! Logging a failure that repeats: once when it first happens, then at most once per
//! interval with how many times it happened since, so an outage of minutes (expired
//! credentials, a clock off by an hour) is a handful of lines, not one per attempt.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one repeating failure is logged at most.
pub const LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Distinct failures tracked at most; beyond, the oldest kinds are forgotten (and so logged
/// again when they recur). Keys come from configured state machines and error codes, so a
/// handful is usual.
const MAX_TRACKED: usize = 256;

#[derive(Default)]
pub struct RepeatedFailures {
    seen: Mutex<HashMap<(String, String), Seen>>,
}

struct Seen {
    logged: Instant,
    since_logged: u64,
}

impl RepeatedFailures {
    /// Notes one failure of a start on `state_machine_arn` and logs it when due.
    pub fn note(&self, state_machine_arn: &str, error: &str) {
        if let Some(repeated) = self.due(state_machine_arn, error, Instant::now()) {
            tracing::warn!(
                state_machine.arn = %state_machine_arn,
                %error,
                repeated,
                "starting executions fails; retrying (logged once per {} s)",
                LOG_INTERVAL.as_secs()
            );
        }
    }

    /// `Some(count)` when this failure is to be logged now: the failures of its kind since it
    /// was last logged, this one included.
    fn due(&self, state_machine_arn: &str, error: &str, now: Instant) -> Option<u64> {
        let key = (state_machine_arn.to_owned(), kind_of(error).to_owned());
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_TRACKED && !seen.contains_key(&key) {
            let oldest = seen
                .iter()
                .min_by_key(|(_, s)| s.logged)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                seen.remove(&oldest);
            }
        }
        match seen.get_mut(&key) {
            Some(entry) if now.duration_since(entry.logged) < LOG_INTERVAL => {
                entry.since_logged += 1;
                None
            }
            Some(entry) => {
                let count = entry.since_logged + 1;
                entry.logged = now;
                entry.since_logged = 0;
                Some(count)
            }
            None => {
                seen.insert(
                    key,
                    Seen {
                        logged: now,
                        since_logged: 0,
                    },
                );
                Some(1)
            }
        }
    }
}

/// What makes two failures "the same": the error code, the text before the first `:`
/// (`InvalidSignatureException: Signature expired: …` varies in its times).
fn kind_of(error: &str) -> &str {
    error.split(':').next().unwrap_or(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_then_once_per_interval_with_the_count() {
        let failures = RepeatedFailures::default();
        let t0 = Instant::now();
        let arn = "arn:aws:states:us-east-1:1:stateMachine:a";
        let error = |n: u32| format!("InvalidSignatureException: Signature expired: {n}");
        assert_eq!(failures.due(arn, &error(0), t0), Some(1));
        for n in 1..=9 {
            assert_eq!(
                failures.due(arn, &error(n), t0 + Duration::from_secs(1)),
                None
            );
        }
        // Another state machine or another error is its own failure.
        assert_eq!(failures.due("other", &error(0), t0), Some(1));
        assert_eq!(failures.due(arn, "ThrottlingException: slow", t0), Some(1));
        let later = t0 + LOG_INTERVAL;
        assert_eq!(failures.due(arn, &error(10), later), Some(10));
        assert_eq!(failures.due(arn, &error(11), later), None);
    }
}
