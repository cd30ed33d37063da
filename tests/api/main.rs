//! Integration tests of stepgate on real partners; see `tests/support` for how they run.

// The harness fails loudly when a partner cannot start: that is a test failure, not a path
// that serves requests.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod admission;
mod audit;
mod auth;
mod breaker;
mod cluster;
mod correlation;
mod dead_letters;
mod delivery;
mod deploy;
mod docs;
mod export;
mod export_faults;
mod export_s3;
mod export_s3_locate;
mod express;
mod fail_closed;
mod first_hour;
mod hostile;
mod hostile_identity;
mod http;
mod keys;
mod live_status;
mod memory;
mod metrics;
mod outage;
mod outbox;
mod pacing;
mod plain_answers;
mod policy;
mod reload;
mod roles;
#[path = "../support/mod.rs"]
mod support;
mod trail_format;
mod trigger;
