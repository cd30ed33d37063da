//! Real callers beside an attack: their trigger latency while 2,000 idle connections are
//! held open and a tokenless flood (wrk, `GET /v1/workflows` without a token, as fast as it
//! goes) runs beside them, against the same callers without either.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::{TestResult, root};
use crate::{TRIGGER_PATH, open_loop, percentile};

/// Connections held open without a request (half of them half-way through a head).
pub const IDLE_CONNECTIONS: usize = 2_000;
/// The callers' own rate: a steady service, far below the gateway's capacity.
pub const CALLER_RATE: f64 = 200.0;
const LENGTH: Duration = Duration::from_secs(5);
const FLOOD_CONNECTIONS: usize = 32;

/// Latencies (µs) of the callers, without and with the attack.
pub struct UnderAttack {
    pub quiet: Vec<u64>,
    pub attacked: Vec<u64>,
    /// Tokenless requests the flood got answered per second.
    pub flood_rate: f64,
}

impl UnderAttack {
    pub fn report(&self) {
        let line = |name: &str, latencies: &[u64]| {
            println!(
                "{name:<34} {CALLER_RATE:>12.0} {:>8.2}ms {:>8.2}ms   (open loop, {} requests)",
                percentile(latencies, 0.50) as f64 / 1000.0,
                percentile(latencies, 0.99) as f64 / 1000.0,
                latencies.len()
            );
        };
        line("callers, quiet", &self.quiet);
        line("callers, under attack", &self.attacked);
        println!(
            "  attack: {IDLE_CONNECTIONS} idle connections held open + tokenless flood of {:.0} requests/s (wrk -c{FLOOD_CONNECTIONS})",
            self.flood_rate
        );
    }
}

pub async fn measure(base: &str, token: &str) -> TestResult<UnderAttack> {
    let quiet = open_loop(base, token, CALLER_RATE, LENGTH).await?;

    // This process holds the idle connections (stepgate raises its own limit).
    rlimit::increase_nofile_limit(u64::MAX)?;
    let addr = base.trim_start_matches("http://");
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for n in 0..IDLE_CONNECTIONS {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        if n.is_multiple_of(2) {
            stream
                .write_all(format!("POST {TRIGGER_PATH} HTTP/1.1\r\nHost: x\r\n").as_bytes())
                .await?;
        }
        idle.push(stream);
    }
    let flood = tokio::process::Command::new("wrk")
        .args(["-t1", &format!("-c{FLOOD_CONNECTIONS}")])
        .arg(format!("-d{}s", LENGTH.as_secs() + 2))
        .arg("-s")
        .arg(root().join("benches/wrk/tokenless.lua"))
        .arg(format!("{base}/v1/workflows"))
        .output();
    let callers = async {
        // Let the flood reach full speed first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        open_loop(base, token, CALLER_RATE, LENGTH).await
    };
    let (flood, attacked) = tokio::join!(flood, callers);
    drop(idle);
    let flood = flood?;
    let stdout = String::from_utf8_lossy(&flood.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .ok_or_else(|| format!("the flood's wrk printed no figures: {stdout}"))?;
    let figures: serde_json::Value = serde_json::from_str(line)?;
    let requests = figures["requests"].as_f64().unwrap_or_default();
    let seconds = figures["duration_us"].as_f64().unwrap_or(1.0) / 1e6;
    Ok(UnderAttack {
        quiet,
        attacked: attacked?,
        flood_rate: requests / seconds,
    })
}
