//! The fault run: 2,000 triggers through two `stepgate serve` processes while each of them
//! is killed with SIGKILL at random instants (three kills in all, mid-delivery as much as
//! between deliveries), Redis (AOF, `appendfsync always`) is killed and restarted, and Step
//! Functions is unreachable for 10 s. Afterwards the emulator must hold exactly one
//! execution per accepted request, with its input; every request must be `started`; the
//! audit trail must verify and hold exactly one `accepted` and exactly one `started` record
//! per request id. Once
//! against one Redis, once against a 3-node Redis Cluster.
//!
//! The emulator keeps its state in memory, so "down" is a cut network (a proxy that drops
//! every connection), which is what the gateway sees of an outage either way.
//!
//! Clients behave as a careful microservice does: each trigger carries an
//! `Idempotency-Key`, and a failed attempt (503, a dropped connection) is retried with it
//! until answered `202`.

// The harness fails loudly when a partner cannot start.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stepgate::audit::AuditSigner;
use stepgate::testing::{TestConfig, TestPartners};
use tokio::sync::Mutex;

use support::{
    AUDIENCE, KillOnDrop, Proxy, RedisCluster, RedisServer, TestResult, create_state_machine,
    eventually, free_port, partners, sfn_client,
};

/// The two runs share the machine's two cores: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const TOTAL: usize = 2_000;
const CLIENTS: usize = 16;

/// Where the gateways keep their data.
enum Store {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl Store {
    /// Where the gateways find it.
    fn configure(&self, config: TestConfig) -> TestConfig {
        match self {
            Store::Standalone(_) => config,
            Store::Cluster(cluster) => config.redis_cluster(&cluster.urls()),
        }
    }

    fn url(&self) -> String {
        match self {
            Store::Standalone(server) => server.url(),
            Store::Cluster(cluster) => cluster.urls()[0].clone(),
        }
    }

    /// Kills Redis (the node holding the workflow's queue, for a cluster) and starts it
    /// again on its data.
    fn crash_and_restart(&mut self) {
        match self {
            Store::Standalone(server) => server.restart(),
            Store::Cluster(cluster) => {
                let queue_key = match stepgate::domain::WorkflowName::parse("orders") {
                    Ok(orders) => stepgate::queue::Keys::new("stepgate").queue(&orders),
                    Err(e) => panic!("{e}"),
                };
                let holder = cluster
                    .nodes
                    .iter_mut()
                    .find(|node| {
                        let reply = Command::new("redis-cli")
                            .args(["-p", &node.port.to_string(), "type"])
                            .arg(&queue_key)
                            .output()
                            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                            .unwrap_or_default();
                        reply.trim() == "stream"
                    })
                    .expect("a node holds the queue");
                holder.restart();
                cluster.wait_until_ok();
            }
        }
    }
}

/// One `stepgate serve` process.
struct Gateway {
    port: u16,
    config: PathBuf,
    log: PathBuf,
    process: Option<KillOnDrop>,
    base: String,
}

impl Gateway {
    async fn start(config: &Path, log: PathBuf) -> TestResult<Self> {
        let port = free_port();
        let mut gateway = Self {
            port,
            config: config.to_owned(),
            log,
            process: None,
            base: format!("http://127.0.0.1:{port}"),
        };
        gateway.spawn().await?;
        Ok(gateway)
    }

    async fn spawn(&mut self) -> TestResult {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_stepgate"))
            // Never the instance metadata service (a non-loopback address) from a test.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["serve", "--config"])
            .arg(&self.config)
            .env(
                "STEPGATE_SERVER__LISTEN",
                format!("127.0.0.1:{}", self.port),
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()?;
        self.process = Some(KillOnDrop(child));
        let http = reqwest::Client::new();
        let url = format!("{}/healthz", self.base);
        eventually(Duration::from_secs(30), "stepgate to serve", || async {
            http.get(&url)
                .send()
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        })
        .await;
        Ok(())
    }

    /// SIGKILL, as a crash or an OOM kill: no shutdown, nothing flushed.
    fn kill(&mut self) {
        self.process = None; // KillOnDrop sends SIGKILL and reaps.
    }
}

/// Sleeps a random number of milliseconds in `range`.
async fn random_pause(range: std::ops::Range<u64>) {
    use rand_core::RngCore as _;
    let span = range.end.saturating_sub(range.start).max(1);
    let ms = range.start + u64::from(rand_core::OsRng.next_u32()) % span;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// How many records of `event` the whole trail holds per request id: the exported files
/// joined with what Redis still holds (Redis keeps only a tail).
async fn records_per_request(config: &Path, event: &str) -> TestResult<HashMap<String, usize>> {
    use stepgate::audit::trail;
    let config = stepgate::config::Config::load(config)?;
    let mut redis = stepgate::redis_conn::RedisEndpoint::from_config(&config.redis)?
        .connect(Duration::from_secs(5))
        .await?;
    let keys = stepgate::queue::Keys::new(&config.redis.key_prefix);
    // Redis first: whatever retention trims after this read is in the files by then.
    let in_redis = trail::from_redis(&mut redis, &keys).await?;
    let files = trail::from_files(&config.audit.files.dir)?;
    let joined = trail::join(files, in_redis)
        .map_err(|problem| format!("the files and Redis disagree: {problem:?}"))?;
    let mut counts = HashMap::new();
    for record in &joined.records {
        let body: Value = serde_json::from_str(&record.body).unwrap_or_default();
        if body["event"] == event {
            let id = body["request_id"].as_str().unwrap_or_default();
            *counts.entry(id.to_owned()).or_default() += 1;
        }
    }
    Ok(counts)
}

/// Asserts that the trail holds exactly one `event` record per accepted trigger, and no
/// other. Relaying trails the changes by up to a poll, so the count is awaited, then read
/// again: a record relayed late (a duplicate) would show in the later read.
async fn exactly_one_record_each(
    config: &Path,
    event: &str,
    accepted: &HashMap<usize, String>,
) -> TestResult {
    let counted = eventually(Duration::from_secs(30), "every record", || async {
        let counted = records_per_request(config, event).await.ok()?;
        (counted.values().sum::<usize>() >= TOTAL).then_some(counted)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = records_per_request(config, event).await?;
    assert_eq!(again, counted, "the trail's {event} records settled");
    for (n, id) in accepted {
        assert_eq!(
            counted.get(id.as_str()).copied().unwrap_or(0),
            1,
            "`{event}` records of trigger {n} ({id})"
        );
    }
    assert_eq!(
        counted.values().sum::<usize>(),
        TOTAL,
        "no other `{event}` record"
    );
    Ok(())
}

/// Sends trigger `n` to `base` until it is answered `202`; its request id.
async fn trigger_until_accepted(
    http: &reqwest::Client,
    bases: &[String],
    token: &str,
    n: usize,
) -> String {
    let key = format!("chaos-{n}");
    let body = json!({ "input": { "n": n } });
    let start = Instant::now();
    for attempt in 0.. {
        let base = &bases[(n + attempt) % bases.len()];
        let sent = http
            .post(format!("{base}/v1/workflows/orders/executions"))
            .bearer_auth(token)
            .header("idempotency-key", &key)
            .json(&body)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(response) = sent {
            if response.status() == reqwest::StatusCode::ACCEPTED {
                let accepted: Value = response.json().await.unwrap_or_default();
                if let Some(id) = accepted["request_id"].as_str() {
                    return id.to_owned();
                }
            } else {
                assert!(
                    response.status().is_server_error(),
                    "trigger {n}: unexpected {}",
                    response.status()
                );
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "trigger {n} never accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

/// Every execution of `arn`: (name, input).
async fn all_executions(sfn: &aws_sdk_sfn::Client, arn: &str) -> TestResult<Vec<(String, String)>> {
    let mut names = Vec::new();
    let mut next = None;
    loop {
        let page = sfn
            .list_executions()
            .state_machine_arn(arn)
            .max_results(1000)
            .set_next_token(next)
            .send()
            .await?;
        names.extend(page.executions.into_iter().map(|e| e.name));
        next = page.next_token;
        if next.is_none() {
            break;
        }
    }
    let mut found = Vec::with_capacity(names.len());
    let prefix = arn.replacen(":stateMachine:", ":execution:", 1);
    for name in names {
        let described = sfn
            .describe_execution()
            .execution_arn(format!("{prefix}:{name}"))
            .send()
            .await?;
        found.push((name, described.input.unwrap_or_default()));
    }
    Ok(found)
}

async fn count_executions(sfn: &aws_sdk_sfn::Client, arn: &str) -> usize {
    let mut count = 0;
    let mut next = None;
    loop {
        let Ok(page) = sfn
            .list_executions()
            .state_machine_arn(arn)
            .max_results(1000)
            .set_next_token(next)
            .send()
            .await
        else {
            return 0;
        };
        count += page.executions.len();
        next = page.next_token;
        if next.is_none() {
            return count;
        }
    }
}

async fn run(mut store: Store) -> TestResult {
    let _turn = ONE_AT_A_TIME.lock().await;
    let started_at = Instant::now();
    let proxy = Proxy::start(&partners().sfn_endpoint).await?;
    let sfn = sfn_client().await;
    let arn = create_state_machine(&sfn).await?;
    let dir = tempfile::tempdir()?;
    AuditSigner::generate().write_pair(&dir.path().join("audit.key"))?;
    let config = dir.path().join("stepgate.toml");
    let key = dir.path().join("audit.key");
    let redis_url = store.url();
    let base = TestConfig::base(
        &TestPartners {
            redis_url: &redis_url,
            sfn_endpoint: &proxy.url,
            issuer: &partners().idp.issuer,
            audience: AUDIENCE,
            signing_key: &key,
        },
        &arn,
    );
    // Each process gets its own address (STEPGATE_SERVER__LISTEN) and never reloads; its
    // log is JSON at info, for the post-mortem of a failed run.
    let settings = store
        .configure(base)
        .remove("server.listen")
        .remove("server.config_poll_ms")
        // The fault run's caller needs no scope: only the client is checked, as before.
        .set(
            "workflows.orders.allow",
            json!([{ "clients": ["billing-service"] }]),
        )
        // Reads the trail back through the audit API, to count its records.
        .push(
            "audit_readers.allow",
            json!({ "clients": ["billing-service"] }),
        )
        .set_ms("worker.breaker.open_ms", Duration::from_secs(1))
        .set_ms("worker.breaker.max_open_ms", Duration::from_secs(2))
        .set("log.format", "json")
        .set("log.level", "info");
    std::fs::write(&config, settings.render())?;
    let mut first = Gateway::start(&config, dir.path().join("first.log")).await?;
    let mut second = Gateway::start(&config, dir.path().join("second.log")).await?;
    let bases = vec![first.base.clone(), second.base.clone()];
    let token = partners().idp.billing_token().await?;

    // The load: CLIENTS callers share out TOTAL triggers.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (next, bases, token) = (Arc::clone(&next), bases.clone(), token.clone());
        callers.spawn(async move {
            let http = reqwest::Client::new();
            let mut accepted = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= TOTAL {
                    return accepted;
                }
                accepted.push((n, trigger_until_accepted(&http, &bases, &token, n).await));
            }
        });
    }

    // The faults, while triggers arrive and drain, each after a random pause: a kill lands
    // wherever the deliveries and the audit writer happen to be.
    random_pause(500..1_500).await;
    eprintln!("chaos: SIGKILL the first gateway");
    first.kill();
    first.spawn().await?;
    random_pause(200..1_000).await;
    eprintln!("chaos: SIGKILL the second gateway");
    second.kill();
    second.spawn().await?;
    random_pause(500..1_500).await;
    eprintln!("chaos: kill and restart Redis");
    store.crash_and_restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("chaos: Step Functions unreachable for 10 s");
    proxy.down();
    let outage = Instant::now();
    random_pause(1_000..4_000).await;
    eprintln!("chaos: SIGKILL the first gateway again");
    first.kill();
    first.spawn().await?;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed())).await;
    proxy.up();
    eprintln!("chaos: Step Functions reachable again");

    let mut accepted: HashMap<usize, String> = HashMap::new();
    while let Some(batch) = callers.join_next().await {
        accepted.extend(batch?);
    }
    assert_eq!(accepted.len(), TOTAL);
    let ids: HashSet<&String> = accepted.values().collect();
    assert_eq!(ids.len(), TOTAL, "one request id per trigger");
    eprintln!("chaos: {TOTAL} accepted after {:?}", started_at.elapsed());

    eventually(
        Duration::from_secs(300),
        "every execution to start",
        || async { (count_executions(&sfn, &arn).await >= TOTAL).then_some(()) },
    )
    .await;
    eprintln!("chaos: {TOTAL} executions after {:?}", started_at.elapsed());
    // Redeliveries still in flight would show as extra executions: give them time.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let executions = all_executions(&sfn, &arn).await?;
    assert_eq!(executions.len(), TOTAL, "exactly one execution per request");
    let by_name: HashMap<&str, &str> = executions
        .iter()
        .map(|(name, input)| (name.as_str(), input.as_str()))
        .collect();
    for (n, id) in &accepted {
        let input = by_name
            .get(id.as_str())
            .unwrap_or_else(|| panic!("no execution for trigger {n} ({id})"));
        let input: Value = serde_json::from_str(input)?;
        assert_eq!(
            input,
            json!({ "n": n }),
            "trigger {n} started with its input"
        );
    }

    // Every status ends `started`.
    let http = reqwest::Client::new();
    for id in accepted.values() {
        let url = format!("{}/v1/requests/{id}", second.base);
        let status = eventually(
            Duration::from_secs(30),
            "the status to be started",
            || async {
                let status: Value = http
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (status["status"] != "queued").then_some(status)
            },
        )
        .await;
        assert_eq!(status["status"], "started", "{status}");
    }

    let verified = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        // Never the instance metadata service (a non-loopback address) from a test.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["audit", "verify", "--config"])
        .arg(&config)
        // The whole trail: the exported files, then what Redis holds beyond them.
        .arg("--files")
        .arg(dir.path().join("audit-trail"))
        .output()?;
    assert!(
        verified.status.success(),
        "audit verify: {}",
        String::from_utf8_lossy(&verified.stdout)
    );
    // The trail holds exactly one `accepted` and one `started` record per request: none
    // lost with a killed process (each is written by the script that makes its change),
    // none twice (a retry with the same key is a duplicate, not a second admission).
    for event in ["accepted", "started"] {
        exactly_one_record_each(&config, event, &accepted).await?;
    }
    eprintln!(
        "chaos: done in {:?}; {}",
        started_at.elapsed(),
        String::from_utf8_lossy(&verified.stdout).trim()
    );
    drop(first);
    drop(second);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_triggers_survive_crashes_a_redis_restart_and_an_outage() -> TestResult {
    run(Store::Standalone(RedisServer::start_durable())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_on_a_three_node_redis_cluster() -> TestResult {
    run(Store::Cluster(RedisCluster::start(3))).await
}
