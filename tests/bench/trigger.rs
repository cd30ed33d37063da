//! What the audit trail costs the trigger path: the same load against two stepgates, one
//! with the audit on, one with it off (`audit.enabled = false`), alternating in one run.
//!
//! `scripts/bench-audit` runs it (release build). Each stepgate has its own Redis; the
//! drain is off, so only admission is measured: a real RS256 token from the real identity
//! provider (verified once, then a cache hit, as for a service reusing its token), the
//! policy, the admission script in Redis, and — with the audit on — the `accepted` event
//! sealed and written into the workflow's outbox by that script, then relayed by the writer
//! (read back, chained, signed, appended, deleted from the outbox). Load: `CONCURRENCY` keep-alive connections posting
//! triggers as fast as answered for `ROUND` each, in `PAIRS` pairs of rounds (one of each
//! configuration, back to back, the order alternating from pair to pair so that a machine
//! slowing down or speeding up favours neither). The cost is the median of the pairs' costs:
//! on a shared 2-core machine the throughput of whole rounds drifts by more than the audit
//! costs, while two adjacent rounds see the same machine.
//!
//! For a profiler, `BENCH_AUDIT_ONLY=on` (or `off`) runs one configuration alone for
//! `PROFILE_LENGTH` (record it once each way and compare samples per request).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{RedisServer, TestApp, TestResult, partners, spawn_app_with};

const CONCURRENCY: usize = 32;
const ROUND: Duration = Duration::from_secs(2);
const PAIRS: usize = 16;
/// `BENCH_AUDIT_ONLY=on` (or `off`): how long that one configuration runs.
const PROFILE_LENGTH: Duration = Duration::from_secs(20);

struct Round {
    rate: f64,
    latencies_us: Vec<u64>,
    /// CPU time per request of this process (gateway and load) and the app's Redis.
    cpu_us: f64,
}

/// CPU time (user + system) a process has used so far, in µs; `/proc` counts it in
/// USER_HZ (100 per second on Linux).
fn cpu_used_us(pid: &str) -> TestResult<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .ok_or("unreadable /proc stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks * 10_000.0)
}

/// CPU time used so far by this process and `app`'s Redis.
fn cpu_of(app: &TestApp) -> TestResult<f64> {
    let redis = app.redis.pid().ok_or("Redis is not running")?;
    Ok(cpu_used_us("self")? + cpu_used_us(&redis.to_string())?)
}

#[tokio::main]
async fn main() -> TestResult {
    let audited = |enabled: bool| {
        move |config: stepgate::testing::TestConfig| {
            config
                .set("worker.enabled", false)
                .set("audit.enabled", enabled)
        }
    };
    let on = spawn_app_with(RedisServer::start(), audited(true)).await?;
    let off = spawn_app_with(RedisServer::start(), audited(false)).await?;
    let token = partners().idp.billing_token().await?;

    // Warm both up (connections, token cache, scripts loaded).
    for app in [&on, &off] {
        load(app, &token, Duration::from_secs(1)).await?;
    }
    // For a profiler: one configuration under load for `PROFILE_LENGTH`, nothing else.
    if let Ok(only) = std::env::var("BENCH_AUDIT_ONLY") {
        let app = if only == "on" { &on } else { &off };
        let round = load(app, &token, PROFILE_LENGTH).await?;
        println!(
            "audit {only} only: {} requests, {:.0} requests/s, CPU {:.1} µs per request",
            round.latencies_us.len(),
            round.rate,
            round.cpu_us
        );
        return Ok(());
    }
    let mut results: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for pair in 0..PAIRS {
        let order = if pair.is_multiple_of(2) {
            [0, 1]
        } else {
            [1, 0]
        };
        for i in order {
            let app = if i == 0 { &off } else { &on };
            results[i].push(load(app, &token, ROUND).await?);
        }
    }
    let records = on.audit_records().await?.len();
    let admitted: usize = results[1].iter().map(|r| r.latencies_us.len()).sum();

    println!(
        "trigger path, {CONCURRENCY} connections, {PAIRS} pairs of {} s rounds, off/on order alternating (release build)",
        ROUND.as_secs()
    );
    println!(
        "{:<10} {:>12} {:>10} {:>10}   (requests/s per round, in order)",
        "audit", "requests/s", "p50", "p99"
    );
    let mut medians = [0.0; 2];
    for (i, name) in ["off", "on"].into_iter().enumerate() {
        let mut rates: Vec<f64> = results[i].iter().map(|r| r.rate).collect();
        rates.sort_by(f64::total_cmp);
        medians[i] = (rates[(rates.len() - 1) / 2] + rates[rates.len() / 2]) / 2.0;
        let mut latencies: Vec<u64> = results[i]
            .iter()
            .flat_map(|r| r.latencies_us.iter().copied())
            .collect();
        latencies.sort_unstable();
        let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
        println!(
            "{name:<10} {:>12.0} {:>8.2}ms {:>8.2}ms   ({})",
            medians[i],
            pick(0.50),
            pick(0.99),
            results[i]
                .iter()
                .map(|r| format!("{:.0}", r.rate))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let paired = |cost: fn(&Round, &Round) -> f64| -> (f64, String) {
        let mut costs: Vec<f64> = results[0]
            .iter()
            .zip(&results[1])
            .map(|(off, on)| cost(off, on) * 100.0)
            .collect();
        let listed = costs
            .iter()
            .map(|c| format!("{c:.1}%"))
            .collect::<Vec<_>>()
            .join(", ");
        costs.sort_by(f64::total_cmp);
        let median = (costs[(costs.len() - 1) / 2] + costs[costs.len() / 2]) / 2.0;
        (median, listed)
    };
    let (cost, listed) = paired(|off, on| 1.0 - on.rate / off.rate);
    println!(
        "audit cost: {cost:.1}% of throughput, median of the pairs ({listed}); target: at most 15%; \
         medians of the rounds: {:.1}%; {records} records in the trail (start-up records \
         included) for {admitted} triggers admitted with the audit on",
        (1.0 - medians[1] / medians[0]) * 100.0
    );
    // CPU time per request drifts less than throughput on a shared machine: on a machine the
    // load saturates, throughput is the CPU budget over it. The load generator runs in this
    // process, so its share (the same in both) dilutes the audit's.
    let cpu: Vec<f64> = results
        .iter()
        .map(|rounds| {
            let mut per_request: Vec<f64> = rounds.iter().map(|r| r.cpu_us).collect();
            per_request.sort_by(f64::total_cmp);
            (per_request[(per_request.len() - 1) / 2] + per_request[per_request.len() / 2]) / 2.0
        })
        .collect();
    let (cpu_cost, cpu_listed) = paired(|off, on| 1.0 - off.cpu_us / on.cpu_us);
    println!(
        "CPU per request, gateway + Redis + load generator (medians): off {:.1} µs, on {:.1} µs; \
         the audit's share of it: {cpu_cost:.1}%, median of the pairs ({cpu_listed})",
        cpu[0], cpu[1],
    );
    Ok(())
}

/// Posts triggers from `CONCURRENCY` tasks for `length`; the rate and every latency.
async fn load(app: &TestApp, token: &str, length: Duration) -> TestResult<Round> {
    let stop = Arc::new(AtomicBool::new(false));
    let url = app.url("/v1/workflows/orders/executions");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()?;
    let started = Instant::now();
    let cpu_before = cpu_of(app)?;
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|task| {
            let (client, url, token, stop) = (
                client.clone(),
                url.clone(),
                token.to_owned(),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({"input": {"task": task, "n": n}}))
                        .send()
                        .await
                        .expect("stepgate answers");
                    assert_eq!(response.status(), 202, "every trigger is accepted");
                    latencies.push(sent.elapsed().as_micros() as u64);
                    n += 1;
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await?);
    }
    // The round's work is done when its records are chained: relaying what it admitted
    // belongs to it, not to the next round (perhaps of the other configuration).
    if let Some(audit) = &app.audit {
        audit.flush().await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_us = (cpu_of(app)? - cpu_before) / latencies_us.len().max(1) as f64;
    Ok(Round {
        rate: latencies_us.len() as f64 / elapsed,
        latencies_us,
        cpu_us,
    })
}
