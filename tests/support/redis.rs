//! Redis: one `redis-server` per test on a free port, which tests may stop, pause and
//! restart; and a 3-node Redis Cluster.

use super::*;

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

    /// The server process's id, while it runs.
    #[allow(dead_code)] // Only the audit benchmark reads it (its Redis' CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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

    pub async fn connection(&self) -> TestResult<::redis::aio::MultiplexedConnection> {
        Ok(::redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await?)
    }

    /// How many entries wait in `workflow`'s queue stream.
    pub async fn queue_len(&self, workflow: &str) -> TestResult<u64> {
        let mut redis = self.connection().await?;
        let key = keys().queue(&workflow_named(workflow)?);
        Ok(::redis::cmd("XLEN")
            .arg(key)
            .query_async(&mut redis)
            .await?)
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
