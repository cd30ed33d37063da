//! stepgate itself: one app per test, with its own Redis, state machine and signing key.

use super::*;
use stepgate::audit::{AuditLog, AuditSigner};
use stepgate::testing::{TestConfig, TestPartners};

/// What feeds a drain its workflows.
pub type WorkflowsSender = tokio::sync::watch::Sender<Vec<Arc<stepgate::config::Workflow>>>;

/// One running stepgate with its own Redis and state machine.
pub struct TestApp {
    pub base: String,
    /// The operations listener, when `server.ops_listen` is set.
    pub ops_base: Option<String>,
    pub http: reqwest::Client,
    pub redis: RedisServer,
    pub sfn: aws_sdk_sfn::Client,
    pub state_machine_arn: String,
    /// The running app's audit writer handle (to flush before reading the trail).
    pub audit: Option<AuditLog>,
    pub config_path: PathBuf,
    /// Where the trail is exported (`audit.files.dir`), as the running configuration says.
    pub trail_dir: PathBuf,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app() -> TestResult<TestApp> {
    spawn_app_with(RedisServer::start(), |config| config).await
}

/// An app whose drain is off: accepted requests stay queued.
pub async fn spawn_app_without_drain() -> TestResult<TestApp> {
    spawn_app_with(RedisServer::start(), |config| {
        config.set("worker.enabled", false)
    })
    .await
}

/// An app on `redis`, its configuration the base (see [`TestConfig::base`]) as `configure`
/// changes it.
pub async fn spawn_app_with(
    redis: RedisServer,
    configure: impl FnOnce(TestConfig) -> TestConfig,
) -> TestResult<TestApp> {
    let sfn = sfn_client().await;
    let state_machine_arn = create_state_machine(&sfn).await?;
    let dir = tempfile::tempdir()?;
    AuditSigner::generate().write_pair(&dir.path().join("audit.key"))?;
    let config_path = dir.path().join("stepgate.toml");
    let mut app = TestApp {
        base: String::new(),
        ops_base: None,
        http: reqwest::Client::new(),
        redis,
        sfn,
        state_machine_arn,
        audit: None,
        config_path,
        trail_dir: PathBuf::new(),
        dir,
        shutdown: CancellationToken::new(),
        task: None,
    };
    app.reconfigure(configure)?;
    app.start().await?;
    Ok(app)
}

/// A configuration file's text `check-config` can read without any partner (see
/// [`TestConfig::minimal`]; a signing key is made in `dir`), then `extra` as written: the
/// tests of what an operator writes by hand, mistakes included.
pub fn minimal_config(dir: &Path, issuer: &str, extra: &str) -> String {
    let key = dir.join("audit.key");
    let _ = AuditSigner::generate().write_pair(&key);
    format!(
        "{}\n{extra}",
        TestConfig::minimal(issuer, AUDIENCE, &key).render()
    )
}

impl TestApp {
    /// Rewrites the configuration file as `configure` changes the base (takes effect at
    /// the next [`TestApp::start`] or reload).
    pub fn reconfigure(&self, configure: impl FnOnce(TestConfig) -> TestConfig) -> TestResult {
        std::fs::write(&self.config_path, configure(self.base_config()).render())?;
        Ok(())
    }

    /// The configuration every test starts from: this app's Redis, state machine and key,
    /// the shared emulator and IdP.
    pub fn base_config(&self) -> TestConfig {
        let partners = partners();
        TestConfig::base(
            &TestPartners {
                redis_url: &self.redis.url(),
                sfn_endpoint: &partners.sfn_endpoint,
                issuer: &partners.idp.issuer,
                audience: AUDIENCE,
                signing_key: &self.dir.path().join("audit.key"),
            },
            &self.state_machine_arn,
        )
    }

    /// Builds and starts stepgate from this app's configuration file.
    pub async fn start(&mut self) -> TestResult {
        let app = Application::from_file(&self.config_path).await?;
        self.trail_dir = stepgate::config::Config::load(&self.config_path)?
            .audit
            .files
            .dir;
        self.base = format!("http://{}", app.local_addr()?);
        self.ops_base = app.ops_local_addr().map(|addr| format!("http://{addr}"));
        self.audit = Some(app.audit_log());
        self.shutdown = CancellationToken::new();
        let shutdown = self.shutdown.clone();
        self.task = Some(tokio::spawn(async move {
            if let Err(e) = app.run_until_stopped(shutdown).await {
                eprintln!("stepgate stopped with an error: {e:#}");
            }
        }));
        Ok(())
    }

    /// Another stepgate process on the same configuration and Redis (a replica), on its own
    /// port; stopped when dropped.
    pub async fn replica(&self) -> TestResult<Replica> {
        self.replica_of(|app| app).await
    }

    /// A replica as `change` makes it (e.g. `Application::without_audit_writer`).
    pub async fn replica_of(
        &self,
        change: impl FnOnce(Application) -> Application,
    ) -> TestResult<Replica> {
        let app = change(Application::from_file(&self.config_path).await?);
        let base = format!("http://{}", app.local_addr()?);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let _ = app.run_until_stopped(stop).await;
        });
        Ok(Replica {
            base,
            shutdown,
            _task: task,
        })
    }

    /// Begins a graceful shutdown (as SIGTERM does) without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Stops stepgate gracefully and waits for it.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        // The audit writer finishes once the last handle is gone.
        self.audit = None;
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `path` on the operations listener (`server.ops_listen = "127.0.0.1:0"` in the test's
    /// `server_toml`).
    pub fn ops_url(&self, path: &str) -> String {
        let base = self
            .ops_base
            .as_deref()
            .expect("this test needs server.ops_listen");
        format!("{base}{path}")
    }

    /// `POST /v1/workflows/{workflow}/executions` with `body` as JSON.
    pub async fn trigger(
        &self,
        workflow: &str,
        token: &str,
        body: &Value,
    ) -> TestResult<reqwest::Response> {
        Ok(self
            .http
            .post(self.url(&format!("/v1/workflows/{workflow}/executions")))
            .bearer_auth(token)
            .json(body)
            .send()
            .await?)
    }

    /// Triggers `orders` with `input`, asserts `202`, returns the request id.
    pub async fn accept(&self, token: &str, input: &Value) -> TestResult<String> {
        let response = self
            .trigger("orders", token, &serde_json::json!({ "input": input }))
            .await?;
        assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
        request_id_of(response).await
    }

    pub async fn request_status(
        &self,
        request_id: &str,
        token: &str,
    ) -> TestResult<reqwest::Response> {
        Ok(self
            .http
            .get(self.url(&format!("/v1/requests/{request_id}")))
            .bearer_auth(token)
            .send()
            .await?)
    }

    /// Polls the status endpoint until the request no longer waits (queued or deferred).
    pub async fn settled_status(&self, request_id: &str, token: &str) -> Value {
        eventually(Duration::from_secs(20), "the request to settle", || async {
            let status: Value = self
                .request_status(request_id, token)
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (!matches!(status["status"].as_str(), Some("queued" | "deferred"))).then_some(status)
        })
        .await
    }

    /// The audit records' bodies, after everything recorded so far is written.
    pub async fn audit_records(&self) -> TestResult<Vec<Value>> {
        if let Some(audit) = &self.audit {
            audit.flush().await?;
        }
        self.audit_records_written().await
    }

    /// The whole trail now, without flushing the writer first: the exported files, then
    /// the records Redis holds beyond them (Redis keeps only a tail).
    pub async fn audit_records_written(&self) -> TestResult<Vec<Value>> {
        let mut redis = self.redis.connection().await?;
        // Redis first: whatever retention trims after this read is in the files by then.
        let entries: ::redis::streams::StreamRangeReply = ::redis::cmd("XRANGE")
            .arg(keys().audit_log())
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await?;
        let in_redis = entries
            .ids
            .iter()
            .map(|e| {
                Ok(serde_json::from_str(
                    &e.get::<String>("body").ok_or("record without body")?,
                )?)
            })
            .collect::<TestResult<Vec<Value>>>()?;
        let mut records: Vec<Value> = stepgate::audit::files::read_dir(&self.trail_dir)
            .map(|(records, _)| records)
            .unwrap_or_default()
            .iter()
            // A line the exporter is writing right now is not a record yet.
            .map_while(|record| serde_json::from_str(&record.body).ok())
            .collect();
        let exported = records.last().and_then(|r| r["seq"].as_u64()).unwrap_or(0);
        records.extend(
            in_redis
                .into_iter()
                .filter(|r| r["seq"].as_u64().is_none_or(|seq| seq > exported)),
        );
        Ok(records)
    }

    /// The value of one series on `/metrics` (`name{labels}` as exposed), if present.
    pub async fn metric(&self, series: &str) -> TestResult<Option<f64>> {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        Ok(text.lines().find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        }))
    }

    /// A drain of its own on this app's configuration and Redis (as another process's
    /// would be), recording through `audit`; with the sender of its workflows, which must
    /// stay open while it runs.
    pub async fn standalone_drain(
        &self,
        audit: AuditLog,
    ) -> TestResult<(stepgate::worker::Drain, WorkflowsSender)> {
        use stepgate::config::Config;
        use stepgate::redis_conn::RedisEndpoint;
        use stepgate::worker::{AwsStepFunctions, Breakers, Drain, DrainPartners};
        let config = Config::load(&self.config_path)?;
        let redis_endpoint = RedisEndpoint::from_config(&config.redis)?;
        let partners = DrainPartners {
            redis: redis_endpoint.connect(Duration::from_secs(2)).await?,
            redis_endpoint,
            sfn: Arc::new(AwsStepFunctions::new(&config.aws, Duration::from_secs(5)).await),
            audit,
            breakers: Arc::new(Breakers::new(config.worker.breaker)),
            guarantees: Arc::default(),
        };
        // The drain serves what the configuration holds, as start-up would.
        let targets = config.checked_workflows().to_vec();
        let (targets, targets_rx) = tokio::sync::watch::channel(targets);
        let keys = stepgate::queue::Keys::new(&config.redis.key_prefix);
        Ok((Drain::new(partners, keys, targets_rx, &config), targets))
    }

    /// How many entries wait in `workflow`'s queue stream.
    pub async fn queue_len(&self, workflow: &str) -> TestResult<u64> {
        self.redis.queue_len(workflow).await
    }

    /// The audit records about requests (leaving out the configuration events).
    pub async fn decision_records(&self) -> TestResult<Vec<Value>> {
        let records = self.audit_records().await?;
        Ok(records
            .into_iter()
            .filter(|r| {
                !r["event"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("config_"))
            })
            .collect())
    }

    /// The `reason` of each audit record of `event`, in order.
    pub async fn reasons(&self, event: &str) -> TestResult<Vec<String>> {
        let records = self.decision_records().await?;
        Ok(records
            .iter()
            .filter(|r| r["event"] == event)
            .filter_map(|r| r["reason"].as_str().map(str::to_owned))
            .collect())
    }

    /// A trigger that starts, one the policy denies and one with a bad token (audit:
    /// accepted, started, denied, auth_failed), all recorded; returns the allowed token.
    pub async fn one_of_each_decision(&self) -> TestResult<String> {
        let idp = &partners().idp;
        let token = idp.billing_token().await?;
        let response = self
            .trigger("orders", &token, &serde_json::json!({"input": {"n": 1}}))
            .await?;
        let request_id = request_id_of(response).await?;
        assert_eq!(
            self.settled_status(&request_id, &token).await["status"],
            "started"
        );
        let denied = idp.denied_token().await?;
        let empty = serde_json::json!({});
        assert_eq!(
            self.trigger("orders", &denied, &empty).await?.status(),
            reqwest::StatusCode::FORBIDDEN
        );
        assert_eq!(
            self.trigger("orders", "not.a.token", &empty)
                .await?
                .status(),
            reqwest::StatusCode::UNAUTHORIZED
        );
        if let Some(audit) = &self.audit {
            audit.flush().await?;
        }
        Ok(token)
    }

    /// Runs the `stepgate` binary against this app's configuration.
    pub fn stepgate(&self, args: &[&str]) -> TestResult<std::process::Output> {
        Ok(Command::new(env!("CARGO_BIN_EXE_stepgate"))
            // Never the instance metadata service (a non-loopback address) from a test.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()?)
    }
}

/// A second stepgate on the same configuration (see [`TestApp::replica`]).
pub struct Replica {
    pub base: String,
    shutdown: CancellationToken,
    _task: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
