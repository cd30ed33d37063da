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
use stepgate::audit::{AuditLog, AuditSigner};
use stepgate::domain::WorkflowName;
use stepgate::queue::Keys;
use stepgate::startup::Application;
use tokio_util::sync::CancellationToken;

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub const AUDIENCE: &str = "https://stepgate.local";
/// Tokens for this audience are opaque (verified by introspection).
pub const OPAQUE_AUDIENCE: &str = "https://stepgate-opaque.local";
pub const REGION: &str = "us-east-1";
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/sfn";

/// The repository root.
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

// ---------------------------------------------------------------------------------------
// Redis

/// A `redis-server` of this test's own.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    aof: bool,
    /// A Redis Cluster node (see [`RedisCluster`]).
    cluster: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server without persistence.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a server with AOF, `appendfsync always` (survives restarts).
    pub fn start_durable() -> Self {
        Self::start_with(true)
    }

    fn start_with(aof: bool) -> Self {
        Self::start_node(aof, false)
    }

    fn start_node(aof: bool, cluster: bool) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        // A cluster node also listens on port + 10000 (the cluster bus).
        let port = loop {
            let port = free_port();
            if !cluster
                || (port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok())
            {
                break port;
            }
        };
        let mut server = Self {
            port,
            dir,
            aof,
            cluster,
            child: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the process on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args([
                "--dir",
                &self.dir.path().display().to_string(),
                "--daemonize",
                "no",
            ])
            .stdout(Stdio::null());
        if self.aof {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        if self.cluster {
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!("cannot start redis-server (run scripts/setup-partners): {e}")
        });
        self.child = Some(child);
        wait_for_port(self.port, "redis-server", Duration::from_secs(10));
        // Ready means answering PING, not just listening (AOF loading answers LOADING).
        let start = Instant::now();
        while !self.pong() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pong(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read(&mut reply).is_ok()
            && reply.starts_with(b"+PONG")
    }

    /// Freezes the process (SIGSTOP): it keeps its connections but answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
            assert!(status.is_ok_and(|s| s.success()), "kill {signal} failed");
        }
    }

    /// Kills the process (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn connection(&self) -> TestResult<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await?)
    }

    /// How many entries wait in `workflow`'s queue stream.
    pub async fn queue_len(&self, workflow: &str) -> TestResult<u64> {
        let mut redis = self.connection().await?;
        let key = keys().queue(&workflow_named(workflow)?);
        Ok(redis::cmd("XLEN").arg(key).query_async(&mut redis).await?)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of our own on loopback: masters only, AOF with `appendfsync always`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(size: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..size)
            .map(|_| RedisServer::start_node(true, true))
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status();
        assert!(
            created.is_ok_and(|s| s.success()),
            "redis-cli --cluster create failed"
        );
        let cluster = Self { nodes };
        cluster.wait_until_ok();
        cluster
    }

    /// Seed URLs, for `redis.url` and `redis.cluster_seeds`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Waits until every node reports `cluster_state:ok`.
    pub fn wait_until_ok(&self) {
        let start = Instant::now();
        for node in &self.nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "the cluster did not become ok: {info}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Step Functions (moto) and the identity provider: one each per test process

/// The shared partners.
pub struct Partners {
    pub sfn_endpoint: String,
    pub idp: Idp,
}

/// The running identity provider and the key it signs with.
#[derive(Deserialize)]
pub struct Idp {
    pub issuer: String,
    pub kid: String,
    pub private_key_pem: String,
    pub public_key_pem: String,
    /// A key the IdP never published (for forged tokens).
    pub attacker_private_key_pem: String,
    pub attacker_jwk: Value,
}

/// An identity provider of one test's own, stopped with the test; it can be restarted on
/// the same address (same issuer) with another key.
pub struct OwnIdp {
    pub idp: Idp,
    port: u16,
    child: Option<Child>,
}

impl OwnIdp {
    /// Starts an IdP with a new key on a free port.
    pub fn start() -> Self {
        let (idp, child) = spawn_idp(0, None).unwrap_or_else(|e| panic!("{e}"));
        let port = idp
            .issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        Self {
            idp,
            port,
            child: Some(child),
        }
    }

    /// Stops it (as an outage would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again at the same issuer URL, signing with `key_pem` (a new key if `None`).
    pub fn restart(&mut self, key_pem: Option<&str>) {
        self.stop();
        let start = Instant::now();
        loop {
            // The port may linger for a moment after the kill.
            match spawn_idp(self.port, key_pem) {
                Ok((idp, child)) => {
                    self.idp = idp;
                    self.child = Some(child);
                    return;
                }
                Err(e) => assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "IdP did not restart: {e}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Changes how the IdP answers (`/__test/set`, see `tests/partners/idp/idp.mjs`), e.g.
    /// `opaque_prefix=a_` or `jwks_padding=1048576`.
    pub async fn set(&self, query: &str) -> TestResult {
        reqwest::get(format!("{}/__test/set?{query}", self.idp.issuer))
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// How many introspection requests this IdP process has had.
    pub async fn introspections(&self) -> TestResult<u64> {
        let reply: Value = reqwest::get(format!("{}/__test/introspections", self.idp.issuer))
            .await?
            .json()
            .await?;
        Ok(reply["count"].as_u64().ok_or("no count")?)
    }

    /// How often the JWKS has been served since this IdP process started.
    pub async fn jwks_fetches(&self) -> TestResult<u64> {
        let reply: Value = reqwest::get(format!("{}/__test/jwks-fetches", self.idp.issuer))
            .await?
            .json()
            .await?;
        Ok(reply["count"].as_u64().ok_or("no count")?)
    }
}

impl Drop for OwnIdp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The identity provider's clients.
pub const CLIENTS: &str = r#"[
    {"client_id": "billing-service", "client_secret": "billing-secret", "scope": "workflows:trigger workflows:read"},
    {"client_id": "reporting-service", "client_secret": "reporting-secret", "scope": "workflows:read"},
    {"client_id": "stepgate", "client_secret": "stepgate-secret", "scope": "workflows:read"}
]"#;

pub fn partners() -> &'static Partners {
    static PARTNERS: OnceLock<Partners> = OnceLock::new();
    PARTNERS.get_or_init(|| Partners {
        sfn_endpoint: start_moto(),
        idp: start_idp(),
    })
}

#[expect(
    clippy::zombie_processes,
    reason = "the emulator exits by itself when the test process is gone"
)]
fn start_moto() -> String {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "moto is not installed: run scripts/setup-partners"
    );
    let port = free_port();
    // Not killed by the test: it exits by itself when this test process is gone.
    Command::new(python)
        .arg(root().join("tests/partners/sfn/moto_server.py"))
        .args([port.to_string(), std::process::id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start moto: {e}"));
    wait_for_port(port, "moto", Duration::from_secs(30));
    format!("http://127.0.0.1:{port}")
}

/// The shared IdP: its process exits by itself when the test process is gone.
fn start_idp() -> Idp {
    spawn_idp(0, None)
        .map(|(idp, _)| idp)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `oidc-provider` on `port` (0: any) and waits for its ready line.
fn spawn_idp(port: u16, key_pem: Option<&str>) -> Result<(Idp, Child), String> {
    let dir = root().join("tests/partners/idp");
    assert!(
        dir.join("node_modules").exists(),
        "oidc-provider is not installed: run scripts/setup-partners"
    );
    let mut command = Command::new("node");
    command
        .arg("idp.mjs")
        .current_dir(&dir)
        .env("IDP_PORT", port.to_string())
        .env("IDP_CLIENTS", CLIENTS)
        .env(
            "IDP_AUDIENCES",
            serde_json::json!([AUDIENCE, "https://other-service.local"]).to_string(),
        )
        .env(
            "IDP_OPAQUE_AUDIENCES",
            serde_json::json!([OPAQUE_AUDIENCE, "https://opaque-other.local"]).to_string(),
        )
        .env("IDP_PARENT_PID", std::process::id().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(pem) = key_pem {
        command.env("IDP_KEY_PEM", pem);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the identity provider: {e}"))?;
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    match serde_json::from_str(&line) {
        Ok(idp) => Ok((idp, child)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "the identity provider did not start: {e}: {line:?}"
            ))
        }
    }
}

impl Idp {
    /// An access token by the client_credentials grant, as a microservice gets it.
    pub async fn token(&self, client_id: &str, secret: &str, scope: &str) -> TestResult<String> {
        self.token_for(client_id, secret, scope, AUDIENCE).await
    }

    pub async fn token_for(
        &self,
        client_id: &str,
        secret: &str,
        scope: &str,
        resource: &str,
    ) -> TestResult<String> {
        let reply: Value = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .basic_auth(client_id, Some(secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", scope),
                ("resource", resource),
            ])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(reply["access_token"]
            .as_str()
            .ok_or("no access_token in the IdP's answer")?
            .to_owned())
    }

    /// reporting-service's token: a real client of the IdP that the default policy denies.
    pub async fn denied_token(&self) -> TestResult<String> {
        self.token("reporting-service", "reporting-secret", "workflows:read")
            .await
    }

    /// billing-service's token with the trigger scope: allowed by the default policy.
    pub async fn billing_token(&self) -> TestResult<String> {
        self.token("billing-service", "billing-secret", "workflows:trigger")
            .await
    }
}

/// A Step Functions client for the emulator.
pub async fn sfn_client() -> aws_sdk_sfn::Client {
    sfn_client_at(&partners().sfn_endpoint).await
}

/// A Step Functions client for `endpoint` (the emulator, or a proxy in front of it).
pub async fn sfn_client_at(endpoint: &str) -> aws_sdk_sfn::Client {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .load()
        .await;
    aws_sdk_sfn::Client::new(&config)
}

/// Creates a fresh state machine (a Pass state that echoes its input); returns its ARN.
pub async fn create_state_machine(sfn: &aws_sdk_sfn::Client) -> TestResult<String> {
    create_named_state_machine(sfn, &unique_name("orders")).await
}

/// `<prefix>-<12 hex>`: a name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The ARN the emulator gives state machine `name` (before it exists).
pub fn state_machine_arn(name: &str) -> String {
    format!("arn:aws:states:{REGION}:123456789012:stateMachine:{name}")
}

/// Creates state machine `name` (a Pass state that echoes its input); returns its ARN.
pub async fn create_named_state_machine(
    sfn: &aws_sdk_sfn::Client,
    name: &str,
) -> TestResult<String> {
    let definition = r#"{"StartAt": "Echo", "States": {"Echo": {"Type": "Pass", "End": true}}}"#;
    create_state_machine_from(sfn, name, definition).await
}

/// Creates state machine `name` from an Amazon States Language `definition`.
pub async fn create_state_machine_from(
    sfn: &aws_sdk_sfn::Client,
    name: &str,
    definition: &str,
) -> TestResult<String> {
    let created = sfn
        .create_state_machine()
        .name(name)
        .definition(definition)
        .role_arn(ROLE_ARN)
        .send()
        .await?;
    Ok(created.state_machine_arn)
}

/// The executions of a state machine, with their inputs.
pub async fn executions(
    sfn: &aws_sdk_sfn::Client,
    state_machine_arn: &str,
) -> TestResult<Vec<(String, String)>> {
    let listed = sfn
        .list_executions()
        .state_machine_arn(state_machine_arn)
        .send()
        .await?;
    let mut found = Vec::new();
    for execution in listed.executions {
        let described = sfn
            .describe_execution()
            .execution_arn(&execution.execution_arn)
            .send()
            .await?;
        found.push((execution.execution_arn, described.input.unwrap_or_default()));
    }
    Ok(found)
}

// ---------------------------------------------------------------------------------------
// stepgate

/// Settings a test may change before the app starts.
pub struct TestSettings {
    pub worker_enabled: bool,
    /// Where the app's Step Functions calls go (default: the emulator).
    pub sfn_endpoint: Option<String>,
    /// The trusted issuer (default: the shared IdP).
    pub issuer: Option<String>,
    /// The issuer's accepted audiences (default: [`AUDIENCE`]).
    pub audiences: Vec<String>,
    /// Extra TOML inside the `[[issuers]]` table.
    pub issuer_toml: String,
    /// Extra TOML appended to the configuration (`$STATE_MACHINE_ARN` is replaced).
    pub extra_toml: String,
    /// Extra keys of the `[worker]` table.
    pub worker_toml: String,
    /// Where Redis is, as `[redis]` keys (default: the app's own server's `url`).
    pub redis_toml: Option<String>,
    /// Extra keys of the `[audit]` table.
    pub audit_toml: String,
    /// Extra keys of the `[server]` table.
    pub server_toml: String,
    /// The base `orders` rule names the issuer (needed once a test trusts two).
    pub base_rule_issuer: bool,
}

impl Default for TestSettings {
    fn default() -> Self {
        Self {
            worker_enabled: true,
            sfn_endpoint: None,
            issuer: None,
            audiences: vec![AUDIENCE.to_owned()],
            issuer_toml: String::new(),
            extra_toml: String::new(),
            worker_toml: String::new(),
            redis_toml: None,
            audit_toml: String::new(),
            server_toml: String::new(),
            base_rule_issuer: false,
        }
    }
}

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
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app() -> TestResult<TestApp> {
    spawn_app_with(RedisServer::start(), TestSettings::default()).await
}

/// An app whose drain is off: accepted requests stay queued.
pub async fn spawn_app_without_drain() -> TestResult<TestApp> {
    spawn_app_with(
        RedisServer::start(),
        TestSettings {
            worker_enabled: false,
            ..TestSettings::default()
        },
    )
    .await
}

pub async fn spawn_app_with(redis: RedisServer, settings: TestSettings) -> TestResult<TestApp> {
    let sfn = sfn_client().await;
    let state_machine_arn = create_state_machine(&sfn).await?;
    let dir = tempfile::tempdir()?;
    AuditSigner::generate().write_pair(&dir.path().join("audit.key"))?;
    let config_path = dir.path().join("stepgate.toml");
    let text = config_text(&redis, &state_machine_arn, dir.path(), &settings);
    std::fs::write(&config_path, text)?;
    let mut app = TestApp {
        base: String::new(),
        ops_base: None,
        http: reqwest::Client::new(),
        redis,
        sfn,
        state_machine_arn,
        audit: None,
        config_path,
        dir,
        shutdown: CancellationToken::new(),
        task: None,
    };
    app.start().await?;
    Ok(app)
}

fn config_text(redis: &RedisServer, arn: &str, dir: &Path, settings: &TestSettings) -> String {
    let partners = partners();
    let endpoint = settings
        .sfn_endpoint
        .clone()
        .unwrap_or_else(|| partners.sfn_endpoint.clone());
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
config_poll_ms = 100
shutdown_grace_ms = 0
{server_toml}

[redis]
{redis}
command_timeout_ms = 1000

[aws]
region = "{REGION}"
endpoint_url = "{endpoint}"
[aws.static_credentials]
access_key_id = "test"
secret_access_key = "test"

[worker]
enabled = {worker}
call_timeout_ms = 1000
retry_initial_backoff_ms = 100
retry_max_backoff_ms = 1000
claim_idle_ms = 4000
block_ms = 500
{worker_toml}

[audit]
signing_key = "{key}"
{audit_toml}

[log]
format = "pretty"
level = "warn"

[[issuers]]
issuer = "{issuer}"
audiences = {audiences}
{issuer_toml}

[workflows.orders]
state_machine_arn = "{arn}"
[[workflows.orders.allow]]
{rule_issuer}
clients = ["billing-service"]
scopes = ["workflows:trigger"]
{extra}
"#,
        redis = settings
            .redis_toml
            .clone()
            .unwrap_or_else(|| format!("url = \"{}\"", redis.url())),
        worker = settings.worker_enabled,
        key = dir.join("audit.key").display(),
        issuer = settings.issuer.as_deref().unwrap_or(&partners.idp.issuer),
        audiences = serde_json::json!(settings.audiences),
        issuer_toml = settings.issuer_toml,
        worker_toml = settings.worker_toml,
        audit_toml = settings.audit_toml,
        server_toml = settings.server_toml,
        extra = settings.extra_toml.replace("$STATE_MACHINE_ARN", arn),
        rule_issuer = if settings.base_rule_issuer {
            format!(
                "issuer = \"{}\"",
                settings.issuer.as_deref().unwrap_or(&partners.idp.issuer)
            )
        } else {
            String::new()
        },
    )
}

/// A configuration `check-config` can read without any partner: `issuer` trusted, one
/// `orders` workflow allowing `billing-service`, then `extra` (a signing key is made in
/// `dir`).
pub fn minimal_config(dir: &Path, issuer: &str, extra: &str) -> String {
    let key = dir.join("audit.key");
    let _ = AuditSigner::generate().write_pair(&key);
    format!(
        r#"
[redis]
url = "redis://127.0.0.1:1"

[aws]
region = "{REGION}"

[audit]
signing_key = "{key}"

[[issuers]]
issuer = "{issuer}"
audiences = ["{AUDIENCE}"]

[workflows.orders]
state_machine_arn = "arn:aws:states:{REGION}:123456789012:stateMachine:orders"
[[workflows.orders.allow]]
clients = ["billing-service"]
{extra}
"#,
        key = key.display(),
    )
}

impl TestApp {
    /// Rewrites the configuration file (takes effect at the next [`TestApp::start`]).
    pub fn reconfigure(&self, settings: &TestSettings) -> TestResult {
        let text = config_text(
            &self.redis,
            &self.state_machine_arn,
            self.dir.path(),
            settings,
        );
        std::fs::write(&self.config_path, text)?;
        Ok(())
    }

    /// Builds and starts stepgate from this app's configuration file.
    pub async fn start(&mut self) -> TestResult {
        let app = Application::from_file(&self.config_path).await?;
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
        let app = Application::from_file(&self.config_path).await?;
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
            audit.flush().await;
        }
        self.audit_records_written().await
    }

    /// The audit records in Redis now, without flushing the writer first.
    pub async fn audit_records_written(&self) -> TestResult<Vec<Value>> {
        let mut redis = self.redis.connection().await?;
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys().audit_log())
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await?;
        entries
            .ids
            .iter()
            .map(|e| {
                Ok(serde_json::from_str(
                    &e.get::<String>("body").ok_or("record without body")?,
                )?)
            })
            .collect()
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
            audit.flush().await;
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

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A TCP proxy that can be cut: while down, it drops every connection (open ones too), as
/// a network partition or a crashed service would look to a client. It also keeps what
/// clients sent, to check requests on the wire.
pub struct Proxy {
    pub url: String,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<std::sync::Mutex<CancellationToken>>,
    connections: Arc<std::sync::atomic::AtomicU64>,
    sent: Arc<std::sync::Mutex<Vec<u8>>>,
    answer: Arc<std::sync::Mutex<Option<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards to `target` (`http://host:port`), up.
    pub async fn start(target: &str) -> TestResult<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let target = target.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cut = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let answer = Arc::new(std::sync::Mutex::new(None::<String>));
        let (up2, cut2, connections2, sent2, answer2) = (
            up.clone(),
            cut.clone(),
            connections.clone(),
            sent.clone(),
            answer.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                connections2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let cut = cut2.lock().unwrap().clone();
                if let Some(response) = answer2.lock().unwrap().clone() {
                    let sent = sent2.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            () = answer_every_request(inbound, response, sent) => {}
                            () = cut.cancelled() => {}
                        }
                    });
                    continue;
                }
                let (target, sent) = (target.clone(), sent2.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = inbound.into_split();
                    let (mut from_server, mut to_server) = outbound.into_split();
                    let upstream = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = from_client.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            sent.lock().unwrap().extend_from_slice(&buf[..n]);
                            if to_server.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = to_server.shutdown().await;
                    };
                    let downstream = async {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                        let _ = to_client.shutdown().await;
                    };
                    tokio::select! {
                        _ = futures_util::future::join(upstream, downstream) => {}
                        () = cut.cancelled() => {}
                    }
                });
            }
        });
        Ok(Self {
            url,
            up,
            cut,
            connections,
            sent,
            answer,
            _task: task,
        })
    }

    /// From the next connection on, answers every request with `response` (a whole HTTP/1.1
    /// response) instead of forwarding; `None` forwards again. Stands in for what the
    /// emulator does not do: a Step Functions that refuses stepgate's request signature
    /// (clock skew, expired session) as AWS does.
    pub fn answer_with(&self, response: Option<String>) {
        *self.answer.lock().unwrap() = response;
        let mut cut = self.cut.lock().unwrap();
        cut.cancel();
        *cut = CancellationToken::new();
    }

    /// Cuts every open connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut cut = self.cut.lock().unwrap();
        cut.cancel();
        *cut = CancellationToken::new();
    }

    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Connections attempted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Everything clients sent so far, as text.
    pub fn sent(&self) -> String {
        String::from_utf8_lossy(&self.sent.lock().unwrap()).into_owned()
    }
}

/// Reads HTTP/1.1 requests (head, then a `Content-Length` body) and answers each with
/// `response`, until the client closes.
async fn answer_every_request(
    mut stream: tokio::net::TcpStream,
    response: String,
    sent: Arc<std::sync::Mutex<Vec<u8>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffered = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let head_end = loop {
            if let Some(at) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffered.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffered[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buffered.len() < head_end + length {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffered.extend_from_slice(&buf[..n]),
            }
        }
        sent.lock()
            .unwrap()
            .extend_from_slice(&buffered[..head_end + length]);
        buffered.drain(..head_end + length);
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// An AWS JSON 1.0 error answer, as Step Functions sends one.
pub fn aws_json_error(status: u16, code: &str, message: &str) -> String {
    let body = serde_json::json!({ "__type": code, "message": message }).to_string();
    format!(
        "HTTP/1.1 {status} Error\r\ncontent-type: application/x-amz-json-1.0\r\n\
         x-amzn-requestid: test\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}
