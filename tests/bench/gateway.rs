//! The benchmark: how fast stepgate is against its ceiling and against the service a team
//! would write without it, how quickly an accepted trigger reaches Step Functions, how fast
//! the drain empties a backlog, and how much memory it takes. `scripts/bench` runs it
//! (release build) and it prints every figure of one run side by side, with the targets.
//!
//! - **Admission** (wrk, `WRK_CONNECTIONS` keep-alive connections on loopback, `ROUNDS`
//!   alternating rounds of `ROUND` each, median round): stepgate's full trigger path as a
//!   release binary in its own process — real RS256 token from the real identity provider,
//!   policy, rate limits (a Redis script), XADD, audit record chained and signed — against
//!   a bare axum handler answering 202 (the ceiling), and against `benches/python` (FastAPI,
//!   PyJWT and redis-py under uvicorn, one worker per core). Every subject has its own Redis.
//!   The drain is off here, so admission alone is measured.
//! - **Latency at half load**: an open-loop generator at half of stepgate's measured maximum;
//!   each latency counts from the moment its request was due, so a stall is not hidden by
//!   the generator waiting for it (no coordinated omission).
//! - **Trigger to StartExecution**: triggers one at a time with the drain idle; from sending
//!   the trigger to its `StartExecution` arriving at the emulator's door (a timing proxy in
//!   this process in front of moto).
//! - **Drain**: a backlog of `DRAIN_ENTRIES` drained with `DRAIN_CONCURRENCY` calls in
//!   flight, against the emulator's own rate for the same calls at the same concurrency
//!   (aws-sdk-sfn straight at it), both timed at the same proxy from first to last start.
//! - **Under attack** ([`flood`]): real callers' trigger latency while 2,000 idle
//!   connections are held open and a tokenless flood runs beside them, against the same
//!   callers without the attack.
//! - **Memory**: peak RSS (`VmHWM`) of each stepgate process.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod flood;
mod ready;
#[path = "../support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use stepgate::testing::TestConfig;
use support::{
    KillOnDrop, RedisServer, TestResult, create_state_machine, eventually, free_port, partners,
    root, sfn_client, sfn_client_at,
};

const WRK_CONNECTIONS: usize = 32;
const ROUND: Duration = Duration::from_secs(5);
const ROUNDS: usize = 3;
const HALF_LOAD_LENGTH: Duration = Duration::from_secs(5);
const LATENCY_SAMPLES: usize = 200;
const DRAIN_ENTRIES: usize = 400;
const DRAIN_CONCURRENCY: usize = 16;
const TRIGGER_PATH: &str = "/v1/workflows/orders/executions";

#[tokio::main]
async fn main() -> TestResult {
    let partners = partners();
    let token = partners.idp.billing_token().await?;
    let sfn = sfn_client().await;

    // --- Admission: three subjects under the same wrk load, alternating.
    let ceiling = bare_axum()?;
    let admission_redis = RedisServer::start();
    let admission_arn = create_state_machine(&sfn).await?;
    let gateway = Stepgate::start(
        &admission_redis,
        &partners.sfn_endpoint,
        &admission_arn,
        DrainMode::Off,
    )
    .await?;
    let python_redis = RedisServer::start();
    let python = PythonService::start(&python_redis).await?;
    let subjects = [
        ("bare axum 202 (ceiling)", ceiling.clone()),
        ("stepgate full path", gateway.url.clone()),
        ("Python FastAPI + PyJWT", python.url.clone()),
    ];
    for (_, url) in &subjects {
        wrk(url, &token, Duration::from_secs(2)).await?;
    }
    let mut rounds: Vec<Vec<Wrk>> = vec![Vec::new(); subjects.len()];
    for _ in 0..ROUNDS {
        for (i, (_, url)) in subjects.iter().enumerate() {
            rounds[i].push(wrk(url, &token, ROUND).await?);
        }
    }
    let admission: Vec<Wrk> = rounds.into_iter().map(median).collect();
    let accepted_by_wrk: u64 = admission[1].requests;
    let queued = admission_redis.queue_len("orders").await?;
    assert!(
        queued >= accepted_by_wrk,
        "stepgate answered 202 to {accepted_by_wrk} requests in its median round but its queue holds only {queued}"
    );

    let half_rate = admission[1].rate() / 2.0;
    let half_load = open_loop(&gateway.url, &token, half_rate, HALF_LOAD_LENGTH).await?;
    let under_attack = flood::measure(&gateway.url, &token).await?;
    let admission_rss = gateway.peak_rss_kib()?;
    drop(gateway);
    drop(python);

    // --- Trigger to StartExecution, with an idle drain.
    let proxy = TimingProxy::start(&partners.sfn_endpoint).await?;
    let latency_redis = RedisServer::start();
    let latency_arn = create_state_machine(&sfn).await?;
    let drainer = Stepgate::start(&latency_redis, &proxy.url, &latency_arn, DrainMode::On).await?;
    let to_start = trigger_to_start(&drainer.url, &token, &proxy, &latency_arn).await?;
    let latency_rss = drainer.peak_rss_kib()?;
    drop(drainer);

    // --- Drain throughput against the emulator's own rate.
    let direct_arn = create_state_machine(&sfn).await?;
    let direct = direct_rate(&proxy, &direct_arn).await?;
    let drain_redis = RedisServer::start();
    let drain_arn = create_state_machine(&sfn).await?;
    let drain = drain_rate(&drain_redis, &proxy, &drain_arn, &token).await?;

    report(&Report {
        admission,
        half_rate,
        half_load,
        under_attack,
        to_start,
        direct,
        drain,
        rss_kib: [admission_rss, latency_rss, drain.rss_kib],
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The subjects

/// The ceiling: an axum handler that reads the body and answers 202 with a request id, on
/// its own runtime with one worker thread per core (as stepgate has).
fn bare_axum() -> TestResult<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let app = axum::Router::new().route(
                "/v1/workflows/{workflow}/executions",
                axum::routing::post(|_body: Bytes| async {
                    (
                        StatusCode::ACCEPTED,
                        axum::Json(json!({
                            "request_id": uuid::Uuid::now_v7().to_string(),
                            "status": "queued",
                        })),
                    )
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).expect("the listener");
            axum::serve(listener, app)
                .await
                .expect("the ceiling serves");
        });
    });
    Ok(url)
}

/// stepgate as it is deployed: the release binary in its own process.
struct Stepgate {
    url: String,
    process: KillOnDrop,
    _dir: tempfile::TempDir,
}

/// Whether a benchmarked stepgate drains its queue.
enum DrainMode {
    Off,
    /// With the default bound on starts in flight.
    On,
    /// With at most this many starts in flight.
    InFlight(usize),
}

impl Stepgate {
    /// Starts `stepgate serve` on its own Redis with the drain as `drain` says, and waits
    /// until it is ready. The workflow has a per-caller rate limit (far above
    /// the load), so the limit is checked and counted for every trigger; the account-wide
    /// start pacing is off, so the emulator, not a quota, limits the drain.
    async fn start(
        redis: &RedisServer,
        sfn_endpoint: &str,
        arn: &str,
        drain: DrainMode,
    ) -> TestResult<Self> {
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("audit.key");
        let status = Command::new(env!("CARGO_BIN_EXE_stepgate"))
            // Never the instance metadata service (a non-loopback address) from a test.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["keygen", "--out"])
            .arg(&key)
            .stdout(Stdio::null())
            .status()?;
        assert!(status.success(), "stepgate keygen failed");
        let port = free_port();
        let config = TestConfig::minimal(&partners().idp.issuer, support::AUDIENCE, &key)
            .set("server.listen", format!("127.0.0.1:{port}"))
            .set("redis.url", redis.url())
            .set("aws.endpoint_url", sfn_endpoint)
            .set("aws.starts_per_second", 0)
            .set("aws.static_credentials.access_key_id", "bench")
            .set("aws.static_credentials.secret_access_key", "bench")
            .set("log.format", "json")
            .set("log.level", "warn")
            .set("workflows.orders.state_machine_arn", arn)
            .set(
                "workflows.orders.rate_limits.per_caller",
                json!({"requests": 10_000_000, "per_seconds": 10}),
            )
            .set(
                "workflows.orders.allow",
                json!([{"clients": ["billing-service"], "scopes": ["workflows:trigger"]}]),
            )
            // Admission is measured with the drain off: the queue grows past the default
            // bound (100,000) within the run, and a 429 would fail it.
            .set("workflows.orders.max_backlog", 100_000_000)
            .set("worker.enabled", !matches!(drain, DrainMode::Off));
        let config = match drain {
            DrainMode::InFlight(at_most) => config.set("worker.max_in_flight", at_most),
            DrainMode::Off | DrainMode::On => config,
        };
        let path = dir.path().join("stepgate.toml");
        std::fs::write(&path, config.render())?;
        let log = std::fs::File::create(dir.path().join("stepgate.log"))?;
        let process = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_stepgate"))
                // Never the instance metadata service (a non-loopback address) from a test.
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .args(["serve", "--config"])
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
        let url = format!("http://127.0.0.1:{port}");
        ready::wait_ready(&format!("{url}/readyz"), "stepgate").await?;
        Ok(Self {
            url,
            process,
            _dir: dir,
        })
    }

    /// The process's peak resident set so far, in KiB.
    fn peak_rss_kib(&self) -> TestResult<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.0.id()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .ok_or("no VmHWM in /proc/<pid>/status")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .ok_or("VmHWM without a value")?
            .parse()?)
    }
}

/// `benches/python` under uvicorn, in its own process group (uvicorn's workers are child
/// processes: the whole group is killed at the end).
struct PythonService {
    url: String,
    group: u32,
    _leader: std::process::Child,
}

impl PythonService {
    async fn start(redis: &RedisServer) -> TestResult<Self> {
        use std::os::unix::process::CommandExt;
        let dir = root().join("benches/python");
        let uvicorn = dir.join(".venv/bin/uvicorn");
        assert!(
            uvicorn.exists(),
            "the Python service is not installed: run scripts/bench"
        );
        let port = free_port();
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let leader = Command::new(uvicorn)
            .args([
                "app:app",
                "--host",
                "127.0.0.1",
                "--no-access-log",
                "--log-level",
                "warning",
            ])
            .args([
                "--port",
                &port.to_string(),
                "--workers",
                &workers.to_string(),
            ])
            .current_dir(&dir)
            .env("ISSUER", &partners().idp.issuer)
            .env("AUDIENCE", support::AUDIENCE)
            .env("REDIS_URL", redis.url())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let service = Self {
            url: format!("http://127.0.0.1:{port}"),
            group: leader.id(),
            _leader: leader,
        };
        ready::wait_ready(&format!("{}/docs", service.url), "the Python service").await?;
        Ok(service)
    }
}

impl Drop for PythonService {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.group)])
            .status();
    }
}

// ---------------------------------------------------------------------------------------
// Load

/// One wrk run's figures.
#[derive(Clone, Debug, serde::Deserialize)]
struct Wrk {
    requests: u64,
    duration_us: u64,
    p50_us: u64,
    p99_us: u64,
    non_2xx: u64,
    socket_errors: u64,
}

impl Wrk {
    fn rate(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }
}

/// Runs wrk (one thread, `WRK_CONNECTIONS` connections) posting triggers to `base`.
async fn wrk(base: &str, token: &str, length: Duration) -> TestResult<Wrk> {
    let output = tokio::process::Command::new("wrk")
        .args(["-t1", &format!("-c{WRK_CONNECTIONS}")])
        .arg(format!("-d{}s", length.as_secs()))
        .arg("-s")
        .arg(root().join("benches/wrk/trigger.lua"))
        .arg(format!("{base}{TRIGGER_PATH}"))
        .env("BENCH_TOKEN", token)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .ok_or_else(|| {
            format!(
                "wrk printed no figures: {stdout} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let run: Wrk = serde_json::from_str(line)?;
    // A subject that refuses or drops requests would look fast: it fails the run instead.
    assert_eq!(
        run.non_2xx, 0,
        "{base} refused requests under load: {run:?}"
    );
    assert_eq!(
        run.socket_errors, 0,
        "{base} dropped connections under load: {run:?}"
    );
    Ok(run)
}

fn median(mut runs: Vec<Wrk>) -> Wrk {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    runs[runs.len() / 2].clone()
}

/// Latencies (µs, from when each request was due) of an open-loop load at `rate` per second.
async fn open_loop(base: &str, token: &str, rate: f64, length: Duration) -> TestResult<Vec<u64>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(WRK_CONNECTIONS)
        .build()?;
    let url = format!("{base}{TRIGGER_PATH}");
    // Each connection sends on its own fixed schedule, offset from the others.
    let interval = Duration::from_secs_f64(WRK_CONNECTIONS as f64 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let tasks: Vec<_> = (0..WRK_CONNECTIONS)
        .map(|k| {
            let (client, url, token) = (client.clone(), url.clone(), token.to_owned());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut due = start + interval.mul_f64(k as f64 / WRK_CONNECTIONS as f64);
                while due < start + length {
                    tokio::time::sleep_until(due).await;
                    let response = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({"input": {"order": "A-1042", "amount_cents": 1999}}))
                        .send()
                        .await
                        .expect("stepgate answers");
                    assert_eq!(response.status(), 202, "a trigger at half load was refused");
                    latencies.push(due.elapsed().as_micros() as u64);
                    due += interval;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    latencies.sort_unstable();
    Ok(latencies)
}

// ---------------------------------------------------------------------------------------
// Step Functions side

/// A proxy in front of the emulator that notes when each `StartExecution` arrives, with the
/// state machine and the input's `seq`.
struct TimingProxy {
    url: String,
    starts: Arc<Mutex<Vec<Start>>>,
}

#[derive(Clone)]
struct Start {
    at: Instant,
    state_machine: String,
    seq: Option<u64>,
}

#[derive(Clone)]
struct ProxyState {
    target: String,
    client: reqwest::Client,
    starts: Arc<Mutex<Vec<Start>>>,
}

impl TimingProxy {
    async fn start(target: &str) -> TestResult<Self> {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let state = ProxyState {
            target: target.to_owned(),
            client: reqwest::Client::new(),
            starts: Arc::clone(&starts),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { url, starts })
    }

    /// Waits for `expected` starts of `state_machine`, then a moment more so that a
    /// duplicate would show; fails if there is one.
    async fn all_starts(
        &self,
        state_machine: &str,
        expected: usize,
        deadline: Duration,
    ) -> Vec<Start> {
        eventually(deadline, "every start at the emulator", || async {
            (self.starts_of(state_machine).len() >= expected).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let starts = self.starts_of(state_machine);
        assert_eq!(starts.len(), expected, "an entry was started twice");
        starts
    }

    /// Arrival times of the starts of `state_machine`.
    fn starts_of(&self, state_machine: &str) -> Vec<Start> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.state_machine == state_machine)
            .cloned()
            .collect()
    }
}

async fn forward(
    State(proxy): State<ProxyState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let arrived = Instant::now();
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if target.ends_with(".StartExecution") {
        let call: Value = serde_json::from_slice(&body).unwrap_or_default();
        let input: Value = call["input"]
            .as_str()
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default();
        proxy.starts.lock().unwrap().push(Start {
            at: arrived,
            state_machine: call["stateMachineArn"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            seq: input["seq"].as_u64(),
        });
    }
    let mut request = proxy
        .client
        .post(format!("{}{uri}", proxy.target))
        .body(body);
    for (name, value) in &headers {
        if !matches!(name.as_str(), "host" | "content-length" | "connection") {
            request = request.header(name, value);
        }
    }
    let reply = request.send().await.expect("the emulator answers");
    let status = reply.status();
    let mut out = HeaderMap::new();
    for (name, value) in reply.headers() {
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            out.insert(name, value.clone());
        }
    }
    let body = reply.bytes().await.expect("the emulator's body");
    (status, out, body)
}

/// Milliseconds from sending each trigger to its `StartExecution` at the emulator, one at a
/// time with pauses between, so the drain is idle when each arrives.
async fn trigger_to_start(
    base: &str,
    token: &str,
    proxy: &TimingProxy,
    arn: &str,
) -> TestResult<Vec<f64>> {
    let client = reqwest::Client::new();
    let mut sent = HashMap::new();
    for seq in 0..LATENCY_SAMPLES as u64 {
        let at = Instant::now();
        trigger_seq(&client, base, token, seq).await?;
        sent.insert(seq, at);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let starts = proxy
        .all_starts(arn, LATENCY_SAMPLES, Duration::from_secs(60))
        .await;
    let mut latencies: Vec<f64> = starts
        .iter()
        .map(|s| {
            let seq = s.seq.expect("the input carries its seq");
            s.at.duration_since(sent[&seq]).as_secs_f64() * 1000.0
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// Posts the trigger whose input is `{"seq": seq}`; it must be accepted.
async fn trigger_seq(client: &reqwest::Client, base: &str, token: &str, seq: u64) -> TestResult {
    let response = client
        .post(format!("{base}{TRIGGER_PATH}"))
        .bearer_auth(token)
        .json(&json!({"input": {"seq": seq}}))
        .send()
        .await?;
    assert_eq!(response.status(), 202, "trigger {seq} was refused");
    Ok(())
}

/// Starts per second between the first and the last of `starts`.
fn start_rate(starts: &[Start]) -> f64 {
    let first = starts.iter().map(|s| s.at).min().expect("starts");
    let last = starts.iter().map(|s| s.at).max().expect("starts");
    (starts.len() - 1) as f64 / last.duration_since(first).as_secs_f64()
}

/// The emulator's own rate: `DRAIN_ENTRIES` StartExecution calls through the same proxy with
/// `DRAIN_CONCURRENCY` in flight, from the same SDK.
async fn direct_rate(proxy: &TimingProxy, arn: &str) -> TestResult<f64> {
    let client = sfn_client_at(&proxy.url).await;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..DRAIN_CONCURRENCY)
        .map(|_| {
            let (client, next, arn) = (client.clone(), Arc::clone(&next), arn.to_owned());
            tokio::spawn(async move {
                loop {
                    let seq = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if seq >= DRAIN_ENTRIES as u64 {
                        return;
                    }
                    client
                        .start_execution()
                        .state_machine_arn(&arn)
                        .name(format!("direct-{seq}"))
                        .input(json!({"seq": seq}).to_string())
                        .send()
                        .await
                        .expect("the emulator starts it");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    let starts = proxy.starts_of(arn);
    assert_eq!(starts.len(), DRAIN_ENTRIES);
    Ok(start_rate(&starts))
}

#[derive(Clone, Copy)]
struct Drain {
    rate: f64,
    rss_kib: u64,
}

/// stepgate's drain: `DRAIN_ENTRIES` triggers accepted with the drain off, then a stepgate
/// with the drain on (`DRAIN_CONCURRENCY` in flight, no pacing) empties the backlog.
async fn drain_rate(
    redis: &RedisServer,
    proxy: &TimingProxy,
    arn: &str,
    token: &str,
) -> TestResult<Drain> {
    {
        let admission = Stepgate::start(redis, &proxy.url, arn, DrainMode::Off).await?;
        let client = reqwest::Client::new();
        for seq in 0..DRAIN_ENTRIES as u64 {
            trigger_seq(&client, &admission.url, token, seq).await?;
        }
    }
    let drainer = Stepgate::start(
        redis,
        &proxy.url,
        arn,
        DrainMode::InFlight(DRAIN_CONCURRENCY),
    )
    .await?;
    let starts = proxy
        .all_starts(arn, DRAIN_ENTRIES, Duration::from_secs(120))
        .await;
    Ok(Drain {
        rate: start_rate(&starts),
        rss_kib: drainer.peak_rss_kib()?,
    })
}

// ---------------------------------------------------------------------------------------
// The table

struct Report {
    admission: Vec<Wrk>,
    half_rate: f64,
    half_load: Vec<u64>,
    under_attack: flood::UnderAttack,
    to_start: Vec<f64>,
    direct: f64,
    drain: Drain,
    rss_kib: [u64; 3],
}

fn percentile<T: Copy>(sorted: &[T], q: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn report(r: &Report) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "stepgate benchmark — {cores} cores, release build, loopback; wrk -t1 -c{WRK_CONNECTIONS}, {ROUNDS} alternating rounds of {} s, median round",
        ROUND.as_secs()
    );
    println!();
    println!(
        "{:<34} {:>12} {:>10} {:>10}",
        "admission", "requests/s", "p50", "p99"
    );
    let names = [
        "bare axum 202 (ceiling)",
        "stepgate full path",
        "Python FastAPI + PyJWT",
    ];
    for (name, run) in names.iter().zip(&r.admission) {
        println!(
            "{name:<34} {:>12.0} {:>8.2}ms {:>8.2}ms",
            run.rate(),
            run.p50_us as f64 / 1000.0,
            run.p99_us as f64 / 1000.0
        );
    }
    let [ceiling, gateway, python] = [0, 1, 2].map(|i| r.admission[i].rate());
    let half_p50 = percentile(&r.half_load, 0.50) as f64 / 1000.0;
    let half_p99 = percentile(&r.half_load, 0.99) as f64 / 1000.0;
    let start_p50 = percentile(&r.to_start, 0.50);
    let start_p99 = percentile(&r.to_start, 0.99);
    let rss_mib = *r.rss_kib.iter().max().unwrap_or(&0) as f64 / 1024.0;
    println!(
        "{:<34} {:>12.0} {half_p50:>8.2}ms {half_p99:>8.2}ms   (open loop, {} requests)",
        "stepgate at half load",
        r.half_rate,
        r.half_load.len()
    );
    r.under_attack.report();
    println!();
    println!(
        "trigger -> StartExecution (idle drain, {LATENCY_SAMPLES} triggers): p50 {start_p50:.2} ms, p99 {start_p99:.2} ms"
    );
    println!(
        "drain, {DRAIN_ENTRIES} entries, {DRAIN_CONCURRENCY} in flight: stepgate {:.0}/s, emulator direct {:.0}/s",
        r.drain.rate, r.direct
    );
    println!(
        "peak RSS of stepgate: {rss_mib:.1} MiB (admission {:.1}, idle drain {:.1}, backlog drain {:.1})",
        r.rss_kib[0] as f64 / 1024.0,
        r.rss_kib[1] as f64 / 1024.0,
        r.rss_kib[2] as f64 / 1024.0
    );
    println!();
    println!("{:<48} {:>12} {:>12}  ", "target", "measured", "");
    let targets = [
        (
            "full path >= 50% of the bare axum ceiling",
            gateway / ceiling * 100.0,
            "%",
            gateway >= 0.5 * ceiling,
        ),
        (
            "full path >= 10x the Python service",
            gateway / python,
            "x",
            gateway >= 10.0 * python,
        ),
        ("p99 at half load < 5 ms", half_p99, "ms", half_p99 < 5.0),
        (
            "trigger -> StartExecution p50 < 5 ms",
            start_p50,
            "ms",
            start_p50 < 5.0,
        ),
        (
            "drain >= 90% of the emulator's direct rate",
            r.drain.rate / r.direct * 100.0,
            "%",
            r.drain.rate >= 0.9 * r.direct,
        ),
        ("peak RSS < 64 MiB", rss_mib, "MiB", rss_mib < 64.0),
    ];
    for (what, value, unit, met) in targets {
        println!(
            "{what:<48} {value:>9.1} {unit:<3} {}",
            if met { "met" } else { "MISSED" }
        );
    }
}
