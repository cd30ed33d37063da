//! Drain pacing: a burst stays in Redis and reaches Step Functions at the configured rate.
//!
//! The rate is enforced when calls are sent; the emulator stamps a start when it gets to it,
//! so calls queued inside a stalled emulator would be stamped together. The in-flight cap
//! bounds that bunching (here to none), and the pacing window's 5% margin absorbs jitter.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{RedisServer, TestResult, partners, spawn_app_with};

/// Every execution's start time at the emulator (ms since the epoch).
async fn start_times(sfn: &aws_sdk_sfn::Client, arn: &str) -> TestResult<Vec<i64>> {
    let mut times = Vec::new();
    let mut next = None;
    loop {
        let page = sfn
            .list_executions()
            .state_machine_arn(arn)
            .set_next_token(next)
            .max_results(1000)
            .send()
            .await?;
        times.extend(page.executions.iter().map(|e| {
            e.start_date.secs() * 1_000 + i64::from(e.start_date.subsec_nanos()) / 1_000_000
        }));
        next = page.next_token;
        if next.is_none() {
            return Ok(times);
        }
    }
}

#[tokio::test]
async fn a_burst_of_500_reaches_step_functions_at_no_more_than_50_per_second() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), |config| {
        let arn = config.orders_arn();
        config.workflow("paced", &arn).set(
            "workflows.paced.drain",
            json!({"starts_per_second": 50, "max_in_flight": 1}),
        )
    })
    .await?;
    let token = partners().idp.billing_token().await?;

    let mut accepted = 0;
    for chunk in (0..500).collect::<Vec<u32>>().chunks(50) {
        let bodies: Vec<_> = chunk.iter().map(|i| json!({"input": {"i": i}})).collect();
        let sends = bodies.iter().map(|body| app.trigger("paced", &token, body));
        for response in futures_util::future::join_all(sends).await {
            assert_eq!(response?.status(), StatusCode::ACCEPTED);
            accepted += 1;
        }
    }
    assert_eq!(accepted, 500);

    let started = Instant::now();
    let times = loop {
        let times = start_times(&app.sfn, &app.state_machine_arn).await?;
        if times.len() >= 500 {
            break times;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} of 500 started",
            times.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(times.len(), 500, "every request started, none twice");
    let mut sorted = times;
    sorted.sort_unstable();
    let busiest = sorted
        .iter()
        .map(|&t| sorted.iter().filter(|&&u| u >= t && u < t + 1_000).count())
        .max()
        .unwrap_or(0);
    assert!(busiest <= 50, "{busiest} starts within one second");
    let span = Duration::from_millis((sorted[499] - sorted[0]).unsigned_abs());
    assert!(
        span >= Duration::from_secs(9),
        "500 at 50/s take about 10 s, took {span:?}"
    );
    eprintln!("paced drain: busiest 1 s window {busiest} starts, 500 starts over {span:?}");
    let queued = app.queue_len("paced").await?;
    assert_eq!(queued, 0, "drained");
    Ok(())
}
