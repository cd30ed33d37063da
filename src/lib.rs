//! stepgate: an HTTP gateway that starts AWS Step Functions executions for authenticated
//! services — OIDC bearer tokens, per-workflow policy, a durable Redis queue drained into
//! `StartExecution` exactly once per request, and a signed, hash-chained audit trail.

pub mod audit;
pub mod auth;
pub mod aws_sdk;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod http;
pub mod live_status;
pub mod lua;
pub mod metrics;
pub mod migrations;
pub mod policy;
pub mod queue;
pub mod redis_conn;
pub mod redis_eviction;
pub mod reload;
pub mod runtime;
pub mod startup;
pub mod state;
pub mod telemetry;
#[cfg(any(test, feature = "test-helpers"))]
pub mod testing;
pub mod worker;
