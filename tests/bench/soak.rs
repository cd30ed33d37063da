//! The soak: a sustained open-loop load through admission and the drain into the emulator
//! (a Pass state machine), long enough to pass every retention horizon, to show that Redis
//! memory reaches a plateau and latency does not drift. `scripts/soak` runs it (release).
//!
//! stepgate runs with the shipped defaults except the retention horizons, shortened so that
//! minutes show what days would (`SOAK_TTL_SECONDS` for the finished status and the
//! idempotency key; the audit tail and export are the defaults). Every trigger carries an
//! `Idempotency-Key`. Every 10 s it samples Redis `used_memory`, stepgate's RSS, p50/p99
//! admission latency (from when each request was due: no coordinated omission), the queue
//! depth and the unexported audit backlog. It passes when memory is flat over the last third
//! (the fitted slope over that span is under 5% of its mean), p99 of the last third is at
//! most 1.5× the first third's (+2 ms), every accepted trigger started exactly once (the
//! emulator's executions against the accepted request ids), and the trail verifies across
//! the files and Redis. It prints a table, writes `target/soak/samples.csv` and plots memory
//! and p99 over time to `target/soak/soak.png` (gnuplot).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod ready;
#[path = "../support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use stepgate::testing::TestConfig;
use support::{
    KillOnDrop, RedisServer, TestResult, create_state_machine, free_port, keys, partners,
    sfn_client,
};

const SAMPLE_EVERY: Duration = Duration::from_secs(10);

fn setting(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone)]
struct Sample {
    at_s: f64,
    used_memory: u64,
    rss_kib: u64,
    p50_ms: f64,
    p99_ms: f64,
    queue: u64,
    unexported: u64,
    accepted: usize,
}

/// What the load has seen so far.
#[derive(Default)]
struct Load {
    accepted: Vec<String>,
    /// Latencies (µs) since the last sample.
    window: Vec<u64>,
    refused: usize,
}

#[tokio::main]
async fn main() -> TestResult {
    let rate = setting("SOAK_RATE", 25.0);
    let minutes = setting("SOAK_MINUTES", 24.0);
    let ttl = setting("SOAK_TTL_SECONDS", 120.0) as u64;
    let partners = partners();
    let sfn = sfn_client().await;
    let arn = create_state_machine(&sfn).await?;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("audit.key");
    let status = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["keygen", "--out"])
        .arg(&key)
        .stdout(Stdio::null())
        .status()?;
    assert!(status.success(), "stepgate keygen failed");
    let port = free_port();
    let config = TestConfig::minimal(&partners.idp.issuer, support::AUDIENCE, &key)
        .set("server.listen", format!("127.0.0.1:{port}"))
        .set("server.finished_status_ttl_seconds", ttl)
        .set("server.idempotency_ttl_seconds", ttl)
        .set("redis.url", redis.url())
        .set("aws.endpoint_url", partners.sfn_endpoint.as_str())
        .set("aws.static_credentials.access_key_id", "soak")
        .set("aws.static_credentials.secret_access_key", "soak")
        .set("log.format", "json")
        .set("log.level", "warn")
        .set("workflows.orders.state_machine_arn", arn.as_str())
        .set(
            "workflows.orders.allow",
            json!([{"clients": ["billing-service"], "scopes": ["workflows:trigger"]}]),
        );
    let config_path = dir.path().join("stepgate.toml");
    std::fs::write(&config_path, config.render())?;
    let log = std::fs::File::create(dir.path().join("stepgate.log"))?;
    let process = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_stepgate"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["serve", "--config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    let base = format!("http://127.0.0.1:{port}");
    ready::wait_ready(&format!("{base}/readyz"), "stepgate").await?;
    eprintln!("soak: {rate}/s for {minutes} min, retention {ttl} s, sampling every 10 s");

    let token = Arc::new(Mutex::new(partners.idp.billing_token().await?));
    let load = Arc::new(Mutex::new(Load::default()));
    let length = Duration::from_secs_f64(minutes * 60.0);
    let generator = tokio::spawn(open_loop(
        format!("{base}/v1/workflows/orders/executions"),
        token.clone(),
        load.clone(),
        rate,
        length,
    ));
    let mut raw = redis.connection().await?;
    let queue = keys().queue(&stepgate::domain::WorkflowName::parse("orders")?);
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < length {
        tokio::time::sleep(SAMPLE_EVERY).await;
        // Tokens live ten minutes: a fresh one for the next window.
        if let Ok(fresh) = partners.idp.billing_token().await {
            *token.lock().unwrap() = fresh;
        }
        let (mut window, accepted) = {
            let mut load = load.lock().unwrap();
            (std::mem::take(&mut load.window), load.accepted.len())
        };
        window.sort_unstable();
        let sample = Sample {
            at_s: started.elapsed().as_secs_f64(),
            used_memory: info_field(&mut raw, "memory", "used_memory:").await?,
            rss_kib: rss_kib(process.0.id())?,
            p50_ms: percentile(&window, 0.50),
            p99_ms: percentile(&window, 0.99),
            queue: redis::cmd("XLEN").arg(&queue).query_async(&mut raw).await?,
            unexported: unexported(&mut raw).await?,
            accepted,
        };
        if samples.len().is_multiple_of(6) {
            print_row(&sample);
        }
        samples.push(sample);
    }
    generator.await??;
    let (accepted, refused) = {
        let load = load.lock().unwrap();
        (load.accepted.clone(), load.refused)
    };
    eprintln!(
        "soak: load done: {} accepted, {refused} refused; draining",
        accepted.len()
    );
    let drained = drain_and_export(&mut raw, &queue).await;
    let verdict = judge(&samples);
    let executions = execution_names(&sfn, &arn).await?;
    let distinct: HashSet<&String> = executions.iter().collect();
    let accepted_set: HashSet<&String> = accepted.iter().collect();
    let exactly_once = drained
        && executions.len() == accepted.len()
        && distinct.len() == executions.len()
        && distinct == accepted_set;
    let verified = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["audit", "verify", "--config"])
        .arg(&config_path)
        .arg("--files")
        .arg(dir.path().join("audit-trail"))
        .output()?;
    let trail = String::from_utf8_lossy(&verified.stdout).trim().to_owned();
    write_outputs(&samples)?;

    println!();
    println!("| measure | figure | pass |");
    println!("|---|---|---|");
    println!(
        "| duration, rate | {minutes} min at {rate}/s: {} accepted, {refused} refused | — |",
        accepted.len()
    );
    println!(
        "| Redis used_memory, last third | mean {:.1} MB, slope {:+.1} KB/min ({:+.2}% over the span) | {} |",
        verdict.memory_mean / 1e6,
        verdict.memory_slope_per_min / 1e3,
        verdict.memory_drift * 100.0,
        yes(verdict.memory_flat)
    );
    println!(
        "| stepgate RSS, last third | mean {:.1} MB, slope {:+.1} KB/min | {} |",
        verdict.rss_mean / 1e6,
        verdict.rss_slope_per_min / 1e3,
        yes(verdict.rss_flat)
    );
    println!(
        "| p99 admission, first → last third | {:.2} → {:.2} ms (p50 {:.2} → {:.2}) | {} |",
        verdict.p99_first,
        verdict.p99_last,
        verdict.p50_first,
        verdict.p50_last,
        yes(verdict.latency_steady)
    );
    println!(
        "| started exactly once | {} executions, {} distinct, {} accepted | {} |",
        executions.len(),
        distinct.len(),
        accepted.len(),
        yes(exactly_once)
    );
    println!(
        "| trail (files, then Redis) | {trail} | {} |",
        yes(verified.status.success())
    );
    println!("plot: target/soak/soak.png; samples: target/soak/samples.csv");
    let passed = verdict.memory_flat
        && verdict.rss_flat
        && verdict.latency_steady
        && exactly_once
        && verified.status.success();
    drop(process);
    if passed {
        println!("soak: PASSED");
        Ok(())
    } else {
        Err("soak: FAILED".into())
    }
}

fn yes(pass: bool) -> &'static str {
    if pass { "yes" } else { "NO" }
}

/// Sends one trigger every `1 / rate` s for `length`, each on its own task, so a slow
/// answer never delays the next one; latency counts from when a request was due.
async fn open_loop(
    url: String,
    token: Arc<Mutex<String>>,
    load: Arc<Mutex<Load>>,
    rate: f64,
    length: Duration,
) -> TestResult {
    let client = reqwest::Client::new();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut due = start;
    let mut n: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    while due < start + length {
        tokio::time::sleep_until(due).await;
        let (client, url, load) = (client.clone(), url.clone(), load.clone());
        let token = token.lock().unwrap().clone();
        tasks.spawn(async move {
            let response = client
                .post(&url)
                .bearer_auth(token)
                .header("idempotency-key", format!("soak-{n}"))
                .json(&json!({"input": {"order": n, "items": ["book", "pen"]}}))
                .send()
                .await;
            let latency = due.elapsed().as_micros() as u64;
            let accepted = match response {
                Ok(response) if response.status() == 202 => {
                    support::request_id_of(response).await.ok()
                }
                _ => None,
            };
            let mut load = load.lock().unwrap();
            load.window.push(latency);
            match accepted {
                Some(id) => load.accepted.push(id),
                None => load.refused += 1,
            }
        });
        while tasks.try_join_next().is_some() {}
        n += 1;
        due += interval;
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Waits until the queue is empty and the export has caught up; `false` if it never did.
async fn drain_and_export(raw: &mut redis::aio::MultiplexedConnection, queue: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let waiting: u64 = redis::cmd("XLEN")
            .arg(queue)
            .query_async(raw)
            .await
            .unwrap_or(u64::MAX);
        if waiting == 0 && unexported(raw).await.unwrap_or(u64::MAX) == 0 {
            // Started records are relayed a moment after their completion.
            tokio::time::sleep(Duration::from_secs(3)).await;
            return true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    false
}

struct Verdict {
    memory_mean: f64,
    memory_slope_per_min: f64,
    memory_drift: f64,
    memory_flat: bool,
    rss_mean: f64,
    rss_slope_per_min: f64,
    rss_flat: bool,
    p50_first: f64,
    p50_last: f64,
    p99_first: f64,
    p99_last: f64,
    latency_steady: bool,
}

fn judge(samples: &[Sample]) -> Verdict {
    let third = (samples.len() / 3).max(1);
    let first = &samples[..third.min(samples.len())];
    let last = &samples[samples.len().saturating_sub(third)..];
    let fit = |value: fn(&Sample) -> f64| -> (f64, f64, f64) {
        let points: Vec<(f64, f64)> = last.iter().map(|s| (s.at_s / 60.0, value(s))).collect();
        let (slope, mean) = slope_and_mean(&points);
        let span = points.last().map_or(0.0, |p| p.0) - points.first().map_or(0.0, |p| p.0);
        (
            mean,
            slope,
            if mean > 0.0 { slope * span / mean } else { 0.0 },
        )
    };
    let (memory_mean, memory_slope_per_min, memory_drift) = fit(|s| s.used_memory as f64);
    let (rss_mean, rss_slope_per_min, rss_drift) = fit(|s| s.rss_kib as f64 * 1024.0);
    let median = |samples: &[Sample], value: fn(&Sample) -> f64| {
        let mut values: Vec<f64> = samples.iter().map(value).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    let (p99_first, p99_last) = (median(first, |s| s.p99_ms), median(last, |s| s.p99_ms));
    Verdict {
        memory_mean,
        memory_slope_per_min,
        memory_drift,
        memory_flat: memory_drift.abs() < 0.05,
        rss_mean,
        rss_slope_per_min,
        rss_flat: rss_drift.abs() < 0.05,
        p50_first: median(first, |s| s.p50_ms),
        p50_last: median(last, |s| s.p50_ms),
        p99_first,
        p99_last,
        latency_steady: p99_last <= 1.5 * p99_first + 2.0,
    }
}

/// The least-squares slope of `points` (per unit of x) and the mean of their y.
fn slope_and_mean(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    if n < 2.0 {
        return (0.0, points.first().map_or(0.0, |p| p.1));
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    (if sxx > 0.0 { sxy / sxx } else { 0.0 }, my)
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn print_row(s: &Sample) {
    eprintln!(
        "soak: {:>5.0} s  used_memory {:>6.2} MB  rss {:>6.1} MB  p50 {:>6.2} ms  p99 {:>6.2} ms  queue {:>5}  unexported {:>6}  accepted {:>7}",
        s.at_s,
        s.used_memory as f64 / 1e6,
        s.rss_kib as f64 / 1024.0,
        s.p50_ms,
        s.p99_ms,
        s.queue,
        s.unexported,
        s.accepted
    );
}

async fn info_field(
    raw: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> TestResult<u64> {
    let info: String = redis::cmd("INFO").arg(section).query_async(raw).await?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0))
}

async fn unexported(raw: &mut redis::aio::MultiplexedConnection) -> TestResult<u64> {
    let head: Option<u64> = redis::cmd("HGET")
        .arg(keys().audit_head())
        .arg("seq")
        .query_async(raw)
        .await?;
    let exported: Option<u64> = redis::cmd("HGET")
        .arg(keys().audit_export())
        .arg("seq")
        .query_async(raw)
        .await?;
    Ok(head.unwrap_or(0).saturating_sub(exported.unwrap_or(0)))
}

fn rss_kib(pid: u32) -> TestResult<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0))
}

/// Every execution's name on `arn` (the request id of the trigger that started it).
async fn execution_names(sfn: &aws_sdk_sfn::Client, arn: &str) -> TestResult<Vec<String>> {
    let mut names = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page = sfn
            .list_executions()
            .state_machine_arn(arn)
            .max_results(1000)
            .set_next_token(next.take())
            .send()
            .await?;
        names.extend(page.executions().iter().map(|e| e.name().to_owned()));
        match page.next_token() {
            Some(token) => next = Some(token.to_owned()),
            None => return Ok(names),
        }
    }
}

/// `target/soak/samples.csv`, and the plot of memory and p99 over time.
fn write_outputs(samples: &[Sample]) -> TestResult {
    let out = support::root().join("target/soak");
    std::fs::create_dir_all(&out)?;
    let mut csv = String::from("seconds,used_memory_mb,rss_mb,p50_ms,p99_ms,queue,unexported\n");
    for s in samples {
        csv.push_str(&format!(
            "{:.0},{:.3},{:.3},{:.3},{:.3},{},{}\n",
            s.at_s,
            s.used_memory as f64 / 1e6,
            s.rss_kib as f64 / 1024.0,
            s.p50_ms,
            s.p99_ms,
            s.queue,
            s.unexported
        ));
    }
    std::fs::write(out.join("samples.csv"), csv)?;
    let plot = "set terminal pngcairo size 1000,500 noenhanced\n\
        set output 'soak.png'\n\
        set datafile separator ','\n\
        set key autotitle columnhead top left\n\
        set xlabel 'minutes'\n\
        set ylabel 'MB'\n\
        set y2label 'p99 admission latency (ms)'\n\
        set ytics nomirror\n\
        set y2tics\n\
        set yrange [0:*]\n\
        set y2range [0:*]\n\
        plot 'samples.csv' using ($1/60):2 with lines lw 2 title 'Redis used_memory (MB)', \\\n\
             '' using ($1/60):3 with lines lw 2 title 'stepgate RSS (MB)', \\\n\
             '' using ($1/60):5 axes x1y2 with lines title 'p99 (ms)'\n";
    std::fs::write(out.join("soak.gnuplot"), plot)?;
    let plotted = Command::new("gnuplot")
        .arg("soak.gnuplot")
        .current_dir(&out)
        .status();
    if !plotted.is_ok_and(|s| s.success()) {
        eprintln!("soak: gnuplot failed; the samples are in target/soak/samples.csv");
    }
    Ok(())
}
