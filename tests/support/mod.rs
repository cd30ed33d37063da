//! The test harness: real partners, started and stopped by the tests themselves.
//!
//! - Redis: one `redis-server` per test, on a free port, killed when the test ends; tests may
//!   stop, pause and restart it.
//! - Step Functions: moto's server, one per test process (it is slow to start); each test
//!   creates its own state machines, so tests never see each other's executions.
//! - Identity provider: `oidc-provider`, one per test process, with its own generated key.
//!
//! A partner that cannot start fails the test loudly (run `scripts/setup-partners`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_sfn::config::{BehaviorVersion, Credentials, Region};
use serde::Deserialize;
use serde_json::Value;
use stepgate::domain::WorkflowName;
use stepgate::queue::Keys;
use stepgate::startup::Application;
use tokio_util::sync::CancellationToken;

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub const AUDIENCE: &str = "https://stepgate.local";
/// Tokens for this audience are opaque (verified by introspection).
pub const OPAQUE_AUDIENCE: &str = "https://stepgate-opaque.local";
pub use stepgate::testing::REGION;
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/sfn";

/// The Redis keys of a test app (prefix `stepgate`): tests name keys only through these.
pub fn keys() -> Keys {
    Keys::new("stepgate")
}

/// A workflow's name, parsed.
pub fn workflow_named(name: &str) -> TestResult<WorkflowName> {
    Ok(WorkflowName::parse(name)?)
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn wait_for_port(port: u16, what: &str, deadline: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < deadline,
            "{what} did not listen on port {port} within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` until it returns `Some`, or fails after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

mod app;
mod idp;
mod moto;
mod proxy;
mod redis;

pub use app::*;
pub use idp::*;
pub use moto::*;
pub use proxy::*;
pub use redis::*;

/// The shared partners.
pub struct Partners {
    pub sfn_endpoint: String,
    pub idp: Idp,
}

pub fn partners() -> &'static Partners {
    static PARTNERS: OnceLock<Partners> = OnceLock::new();
    PARTNERS.get_or_init(|| Partners {
        sfn_endpoint: start_moto(),
        idp: start_idp(),
    })
}

/// The `request_id` of an accepted trigger's answer.
pub async fn request_id_of(response: reqwest::Response) -> TestResult<String> {
    let body: Value = response.json().await?;
    Ok(body["request_id"]
        .as_str()
        .ok_or("no request_id in the answer")?
        .to_owned())
}

/// A child process killed when the test ends, however it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A response header as text ("" when absent).
pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}
