//! Waiting for a process a benchmark started beside it.

use std::time::{Duration, Instant};

use crate::support::TestResult;

/// Polls `url` until it answers 2xx, for at most a minute: a process started beside the
/// test (a benchmark's stepgate) is ready.
pub async fn wait_ready(url: &str, what: &str) -> TestResult {
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("{what} was not ready within 60 s ({url})").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
