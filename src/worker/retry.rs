//! The retry schedule of one delivery: exponential backoff up to a cap, and an age past which
//! a failing entry is given up (unless the failure is the service's, not the entry's).

use std::time::Duration;

use crate::config::WorkerConfig;

/// When to try again after a failed start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Try again after `pause` (before jitter); this was failure number `attempt`.
    RetryAfter { pause: Duration, attempt: u32 },
    /// The entry is older than the schedule's maximum age: it goes to the dead letters.
    GiveUp,
}

/// One delivery's backoff; pure, so its decisions are testable without a clock.
#[derive(Debug, Clone)]
pub(super) struct RetrySchedule {
    next_pause: Duration,
    max_pause: Duration,
    max_age: Duration,
    failures: u32,
}

impl RetrySchedule {
    pub(super) fn new(config: &WorkerConfig) -> Self {
        Self {
            next_pause: config.retry_initial_backoff,
            max_pause: config.retry_max_backoff,
            max_age: config.retry_max_age,
            failures: 0,
        }
    }

    /// The entry's age past which a failure is final.
    pub(super) fn max_age(&self) -> Duration {
        self.max_age
    }

    /// After a failure of an entry queued `age` ago. A `systemic` failure (the service's
    /// outage, not the entry's fault) is retried however old the entry is.
    pub(super) fn after_failure(&mut self, age: Duration, systemic: bool) -> Next {
        if age > self.max_age && !systemic {
            return Next::GiveUp;
        }
        self.failures += 1;
        let pause = self.next_pause;
        self.next_pause = (self.next_pause * 2).min(self.max_pause);
        Next::RetryAfter {
            pause,
            attempt: self.failures,
        }
    }
}

/// `pause` ± 20%, so retries of many entries do not fire in lockstep.
pub(super) fn jittered(pause: Duration) -> Duration {
    let pause_ms = pause.as_millis() as u64;
    let spread = pause_ms / 5;
    let offset = if spread == 0 {
        0
    } else {
        u64::from(rand_core::RngCore::next_u32(&mut rand_core::OsRng)) % (2 * spread + 1)
    };
    Duration::from_millis(pause_ms - spread + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule {
            next_pause: Duration::from_millis(100),
            max_pause: Duration::from_millis(350),
            max_age: Duration::from_secs(60),
            failures: 0,
        }
    }

    #[test]
    fn pauses_double_up_to_the_cap_and_count_the_failures() {
        let mut schedule = schedule();
        let young = Duration::from_secs(1);
        let pauses: Vec<Next> = (0..4)
            .map(|_| schedule.after_failure(young, false))
            .collect();
        let expected =
            [(100, 1), (200, 2), (350, 3), (350, 4)].map(|(ms, attempt)| Next::RetryAfter {
                pause: Duration::from_millis(ms),
                attempt,
            });
        assert_eq!(pauses, expected);
    }

    #[test]
    fn an_old_entry_is_given_up_unless_the_service_is_down() {
        let mut schedule = schedule();
        let old = Duration::from_secs(61);
        assert!(matches!(
            schedule.after_failure(old, true),
            Next::RetryAfter { attempt: 1, .. }
        ));
        assert_eq!(schedule.after_failure(old, false), Next::GiveUp);
        assert!(matches!(
            schedule.after_failure(Duration::from_secs(60), false),
            Next::RetryAfter { attempt: 2, .. }
        ));
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(1)).as_millis();
            assert!((800..=1200).contains(&d), "{d}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}
