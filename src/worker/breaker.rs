//! Circuit breakers, one per state machine: after `failure_threshold` consecutive failed
//! calls (5xx, timeouts, connection errors) the breaker opens and the drain stops calling
//! that state machine for `open_ms`; then one probe call is let through (half-open): its
//! success closes the breaker, its failure opens it again for twice as long (up to
//! `max_open_ms`). While open, entries stay in Redis: nothing is read for that state
//! machine, entries already held wait, and none of them counts as failed.
//!
//! Breakers are per process, on purpose: each replica judges the path from itself to Step
//! Functions, and a breaker holds no work (the entries stay in Redis), so nothing is lost
//! or duplicated when replicas disagree.
//!
//! [`Breaker`] is pure: the caller passes the time in, so its rules are tested without
//! sleeping.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;

use crate::config::BreakerConfig;

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Call Step Functions.
    Call,
    /// Call Step Functions as the half-open probe; report the result.
    Probe,
    /// Do not call; ask again after this long.
    Wait(Duration),
}

/// The breaker's state, as `/readyz` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, open_for: Duration },
    HalfOpen { probing: bool, open_for: Duration },
}

/// One state machine's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
}

/// While a probe is out, how long others wait before asking again.
const PROBE_WAIT: Duration = Duration::from_millis(100);

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: State::Closed { failures: 0 },
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            State::Closed { .. } => Admit::Call,
            State::Open { until, open_for } => {
                if now < until {
                    Admit::Wait(until - now)
                } else {
                    self.state = State::HalfOpen {
                        probing: true,
                        open_for,
                    };
                    Admit::Probe
                }
            }
            State::HalfOpen { probing: true, .. } => Admit::Wait(PROBE_WAIT),
            State::HalfOpen {
                probing: false,
                open_for,
            } => {
                self.state = State::HalfOpen {
                    probing: true,
                    open_for,
                };
                Admit::Probe
            }
        }
    }

    /// Step Functions answered (started, or refused for a reason of the request's own).
    pub fn succeeded(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    /// The call failed in a way that says the service or the path to it is unwell.
    pub fn failed(&mut self, now: Instant) {
        let base = self.config.open;
        let max = self.config.max_open.max(self.config.open);
        self.state = match self.state {
            State::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            State::Closed { .. } => State::Open {
                until: now + base,
                open_for: base,
            },
            State::HalfOpen { open_for, .. } => {
                let open_for = (open_for * 2).min(max);
                State::Open {
                    until: now + open_for,
                    open_for,
                }
            }
            // A call admitted before the breaker opened: it does not extend the opening.
            open @ State::Open { .. } => open,
        };
    }

    /// An admitted call did not happen or ended without telling anything about the service
    /// (shutdown, throttling): a probe's turn goes to the next caller.
    pub fn abandoned(&mut self) {
        if let State::HalfOpen { open_for, .. } = self.state {
            self.state = State::HalfOpen {
                probing: false,
                open_for,
            };
        }
    }

    pub fn state(&self) -> CircuitState {
        match self.state {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn consecutive_failures(&self) -> u32 {
        match self.state {
            State::Closed { failures } => failures,
            _ => self.config.failure_threshold,
        }
    }
}

/// One breaker's state for the operations listener's `/readyz` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CircuitStatus {
    /// The state machine's name: never its ARN, which names the AWS account.
    pub state_machine: String,
    pub state: CircuitState,
    pub consecutive_failures: u32,
}

/// The name in a state machine ARN (`arn:aws:states:<region>:<account>:stateMachine:<name>`,
/// with `:<alias or version>` kept when there is one).
pub fn state_machine_name(arn: &str) -> &str {
    arn.split_once(":stateMachine:")
        .map_or(arn, |(_, name)| name)
}

/// The breakers of this process, by state machine ARN; created closed on first use.
pub struct Breakers {
    config: BreakerConfig,
    breakers: Mutex<HashMap<String, Breaker>>,
}

impl Breakers {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            breakers: Mutex::default(),
        }
    }

    fn with<T>(&self, state_machine_arn: &str, f: impl FnOnce(&mut Breaker) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        let mut breakers = self
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let breaker = breakers
            .entry(state_machine_arn.to_owned())
            .or_insert_with(|| Breaker::new(self.config));
        f(breaker)
    }

    pub fn admit(&self, state_machine_arn: &str) -> Admit {
        self.with(state_machine_arn, |b| b.admit(Instant::now()))
    }

    pub fn succeeded(&self, state_machine_arn: &str) {
        self.with(state_machine_arn, Breaker::succeeded);
    }

    pub fn failed(&self, state_machine_arn: &str) {
        self.with(state_machine_arn, |b| b.failed(Instant::now()));
    }

    pub fn abandoned(&self, state_machine_arn: &str) {
        self.with(state_machine_arn, Breaker::abandoned);
    }

    /// How long to hold off reading new entries for `state_machine_arn`: `None` when
    /// closed (or ready for a probe, which needs an entry).
    pub fn hold_off(&self, state_machine_arn: &str) -> Option<Duration> {
        self.with(state_machine_arn, |b| match b.state {
            State::Open { until, .. } => until.checked_duration_since(Instant::now()),
            State::HalfOpen { probing: true, .. } => Some(PROBE_WAIT),
            _ => None,
        })
    }

    /// Every breaker's state, sorted by state machine name.
    pub fn statuses(&self) -> Vec<CircuitStatus> {
        let breakers = self
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut statuses: Vec<CircuitStatus> = breakers
            .iter()
            .map(|(arn, b)| CircuitStatus {
                state_machine: state_machine_name(arn).to_owned(),
                state: b.state(),
                consecutive_failures: b.consecutive_failures(),
            })
            .collect();
        statuses.sort_by(|a, b| a.state_machine.cmp(&b.state_machine));
        statuses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: 3,
            open: Duration::from_secs(1),
            max_open: Duration::from_secs(3),
        })
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn opens_after_consecutive_failures_only() {
        let now = Instant::now();
        let mut b = breaker();
        b.failed(now);
        b.failed(now);
        b.succeeded();
        b.failed(now);
        b.failed(now);
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.admit(now), Admit::Call);
        b.failed(now);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admit(now), Admit::Wait(SECOND));
        assert_eq!(
            b.admit(now + SECOND / 4),
            Admit::Wait(SECOND * 3 / 4),
            "no call while open"
        );
    }

    #[test]
    fn lets_one_probe_through_when_the_time_is_up_and_closes_on_its_success() {
        let now = Instant::now();
        let mut b = breaker();
        (0..3).for_each(|_| b.failed(now));
        let later = now + SECOND;
        assert_eq!(b.admit(later), Admit::Probe);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(
            b.admit(later),
            Admit::Wait(PROBE_WAIT),
            "one probe at a time"
        );
        b.succeeded();
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.admit(later), Admit::Call);
    }

    #[test]
    fn a_failed_probe_reopens_for_twice_as_long_up_to_the_maximum() {
        let now = Instant::now();
        let mut b = breaker();
        (0..3).for_each(|_| b.failed(now));
        let mut at = now + SECOND;
        for open_for in [2, 3, 3] {
            assert_eq!(b.admit(at), Admit::Probe);
            b.failed(at);
            assert_eq!(b.state(), CircuitState::Open);
            assert_eq!(b.admit(at), Admit::Wait(SECOND * open_for));
            at += SECOND * open_for;
        }
        assert_eq!(b.admit(at), Admit::Probe);
        b.succeeded();
        (0..2).for_each(|_| b.failed(at));
        assert_eq!(b.state(), CircuitState::Closed, "the count starts over");
    }

    #[test]
    fn an_abandoned_probe_passes_the_turn_on() {
        let now = Instant::now();
        let mut b = breaker();
        (0..3).for_each(|_| b.failed(now));
        assert_eq!(b.admit(now + SECOND), Admit::Probe);
        b.abandoned();
        assert_eq!(b.admit(now + SECOND), Admit::Probe);
    }

    #[test]
    fn late_failures_of_calls_admitted_before_opening_do_not_extend_it() {
        let now = Instant::now();
        let mut b = breaker();
        (0..3).for_each(|_| b.failed(now));
        b.failed(now + SECOND / 2);
        assert_eq!(b.admit(now + SECOND), Admit::Probe);
    }

    #[test]
    fn breakers_are_per_state_machine() {
        let breakers = Breakers::new(BreakerConfig {
            failure_threshold: 1,
            open: Duration::from_secs(60),
            max_open: Duration::from_secs(60),
        });
        breakers.failed("arn:a");
        assert!(matches!(breakers.admit("arn:a"), Admit::Wait(_)));
        assert_eq!(breakers.admit("arn:b"), Admit::Call);
        assert!(breakers.hold_off("arn:a").is_some());
        assert_eq!(breakers.hold_off("arn:b"), None);
        let states: Vec<_> = breakers.statuses().into_iter().map(|s| s.state).collect();
        assert_eq!(states, vec![CircuitState::Open, CircuitState::Closed]);
    }
}
