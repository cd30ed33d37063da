//! One Redis connection type for a standalone server and for Redis Cluster.
//!
//! Everything stepgate sends is single-slot (every key of a command or script shares a
//! hash tag, see `queue::keys`), so the same commands and scripts run on either; the cluster
//! connection routes each by its key and follows the cluster's topology.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::config::RedisConfig;

/// A multiplexed connection that reconnects by itself; cheap to clone.
#[derive(Clone)]
pub enum RedisConnection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Standalone(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Standalone(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// Where Redis is: makes connections.
#[derive(Clone)]
pub enum RedisEndpoint {
    Standalone(redis::Client),
    /// The seed nodes; the rest of the cluster is discovered from them.
    Cluster(Vec<String>),
}

impl RedisEndpoint {
    pub fn from_config(config: &RedisConfig) -> RedisResult<Self> {
        if config.cluster {
            let mut seeds = vec![config.url.expose().to_owned()];
            seeds.extend(config.cluster_seeds.iter().map(|s| s.expose().to_owned()));
            // Parses the URLs now, so a bad one fails at start-up.
            ClusterClient::new(seeds.clone())?;
            Ok(RedisEndpoint::Cluster(seeds))
        } else {
            Ok(RedisEndpoint::Standalone(redis::Client::open(
                config.url.expose(),
            )?))
        }
    }

    /// A connection whose every command answers within `timeout` (or fails): a request
    /// must never hang on an unreachable Redis (it answers 503 instead).
    pub async fn connect(&self, timeout: Duration) -> RedisResult<RedisConnection> {
        match self {
            RedisEndpoint::Standalone(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(2)
                    .set_max_delay(1_000);
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(RedisConnection::Standalone)
            }
            RedisEndpoint::Cluster(seeds) => ClusterClientBuilder::new(seeds.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .max_retry_wait(1_000)
                .build()?
                .get_async_connection()
                .await
                .map(RedisConnection::Cluster),
        }
    }
}

/// Whether a failed call certainly did not run: the connection was refused before anything
/// was sent, or Redis answered with an error it gives only before running a command (a
/// redirect, a failover, loading, read-only). Any other failure leaves the outcome unknown:
/// after a timeout or a connection dropped mid-call the command may have run, and a script's
/// runtime error may follow some of its writes.
pub fn refused_before_running(error: &redis::RedisError) -> bool {
    use redis::ErrorKind::*;
    error.is_connection_refusal()
        || matches!(
            error.kind(),
            Moved
                | Ask
                | TryAgain
                | ClusterDown
                | CrossSlot
                | MasterDown
                | ReadOnly
                | BusyLoadingError
        )
}

#[cfg(test)]
mod tests {
    use std::io;

    use redis::{ErrorKind, RedisError};

    use super::refused_before_running;

    #[test]
    fn only_failures_before_running_are_certain() {
        let io = |kind| RedisError::from(io::Error::new(kind, "test"));
        let answered = |kind| RedisError::from((kind, "test"));
        assert!(refused_before_running(&io(
            io::ErrorKind::ConnectionRefused
        )));
        assert!(refused_before_running(&answered(ErrorKind::ReadOnly)));
        assert!(refused_before_running(&answered(ErrorKind::Moved)));
        // The call may have run.
        assert!(!refused_before_running(&io(io::ErrorKind::TimedOut)));
        assert!(!refused_before_running(&io(io::ErrorKind::ConnectionReset)));
        assert!(!refused_before_running(&io(io::ErrorKind::UnexpectedEof)));
        assert!(!refused_before_running(&answered(ErrorKind::ResponseError)));
        assert!(!refused_before_running(&answered(ErrorKind::TypeError)));
    }
}
