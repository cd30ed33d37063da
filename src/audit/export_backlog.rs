//! How far the export is behind, watched by every replica (the exporter runs on one): the
//! records the chain holds that the files do not yet (head `seq` − the export cursor). At
//! `audit.files.max_unexported_records` admission stops (503) and the replica is not ready
//! until the export catches up: a sink that is down (disk full, directory unwritable) then
//! holds Redis to a bound instead of filling it, and no record is ever dropped to make room.
//!
//! Records the chain held when the export was turned on (a trail an earlier version or
//! configuration kept whole in Redis) are not counted: the first replica that starts with
//! the export on notes the head as the export's `baseline`, so the catch-up refuses nothing
//! while a stuck export still stops admission once it falls `cap` records behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::queue::Keys;
use crate::redis_conn::RedisConnection;

const EVERY: Duration = Duration::from_millis(250);
/// The export cursor's field: the head when the export was turned on.
const BASELINE: &str = "baseline";

/// The latest reading, and this replica's admissions since: cheap to ask on every trigger.
/// Between readings the gate counts the records its own admissions add, so one replica does
/// not run past the cap by a reading interval's worth of traffic (by the few records still
/// on their way into the chain when a reading is taken, at most); the other replicas'
/// admissions show at the next reading.
#[derive(Debug, Default)]
pub struct ExportBacklog {
    /// Unexported records, as last read.
    records: AtomicU64,
    /// This replica's admissions, ever, and as of the last reading.
    admitted: AtomicU64,
    admitted_at_reading: AtomicU64,
    /// 0 until the first reading (no export: no gate).
    cap: AtomicU64,
    /// Whether the gate was last seen closed: its changes are logged, once each.
    closed: AtomicBool,
}

impl ExportBacklog {
    /// Records not exported yet: as last read, plus this replica's admissions since.
    pub fn records(&self) -> u64 {
        // `admitted_at_reading` is stored after `records`: seeing the new one means seeing
        // the new reading too (else the estimate is high, never low).
        let at_reading = self.admitted_at_reading.load(Ordering::Acquire);
        let own = self
            .admitted
            .load(Ordering::Relaxed)
            .saturating_sub(at_reading);
        self.records.load(Ordering::Relaxed) + own
    }

    /// Whether the backlog reached its cap: triggers are refused until it is below again.
    pub fn over_cap(&self) -> bool {
        let cap = self.cap.load(Ordering::Relaxed);
        let records = self.records();
        let over = cap > 0 && records >= cap;
        if self.closed.swap(over, Ordering::Relaxed) != over {
            log_change(over, records, cap);
        }
        over
    }

    /// One admitted trigger: its record is on its way into the chain.
    pub fn admitted(&self) {
        self.admitted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn cap(&self) -> u64 {
        self.cap.load(Ordering::Relaxed)
    }

    /// Takes a reading of `unexported` records.
    fn observe(&self, unexported: u64, cap: u64) {
        let now = self.admitted.load(Ordering::Relaxed);
        self.records.store(unexported, Ordering::Relaxed);
        self.admitted_at_reading.store(now, Ordering::Release);
        self.cap.store(cap, Ordering::Relaxed);
        crate::metrics::metrics()
            .audit_unexported
            .set(i64::try_from(unexported).unwrap_or(i64::MAX));
        // Logs a change even while no trigger asks.
        self.over_cap();
    }
}

fn log_change(over: bool, records: u64, cap: u64) {
    if over {
        tracing::error!(
            unexported = records,
            cap,
            "the audit export is {records} records behind (cap \
             audit.files.max_unexported_records = {cap}): triggers are refused (503) and this \
             instance is not ready until it catches up; see the export's error"
        );
    } else {
        tracing::info!(
            unexported = records,
            "the audit export is below its cap: triggers are admitted again"
        );
    }
}

/// Reads the backlog every 250 ms until `shutdown`.
pub async fn watch(
    backlog: Arc<ExportBacklog>,
    mut redis: RedisConnection,
    keys: Keys,
    cap: u64,
    shutdown: CancellationToken,
) {
    loop {
        match read(&mut redis, &keys).await {
            Ok(unexported) => backlog.observe(unexported, cap),
            // Redis unreachable: admission fails on its own; keep the last reading.
            Err(e) => tracing::debug!(error = %e, "cannot read the audit export backlog"),
        }
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// The records chained after both the export cursor and the baseline, which is set to the
/// head the first time (again should someone delete it: it then forgives what is behind).
async fn read(redis: &mut RedisConnection, keys: &Keys) -> redis::RedisResult<u64> {
    let head: Option<u64> = redis::cmd("HGET")
        .arg(keys.audit_head())
        .arg("seq")
        .query_async(redis)
        .await?;
    let head = head.unwrap_or(0);
    let ((exported, baseline),): ((Option<u64>, Option<u64>),) = redis::pipe()
        .cmd("HSETNX")
        .arg(keys.audit_export())
        .arg(BASELINE)
        .arg(head)
        .ignore()
        .cmd("HMGET")
        .arg(keys.audit_export())
        .arg("seq")
        .arg(BASELINE)
        .query_async(redis)
        .await?;
    let from = exported.unwrap_or(0).max(baseline.unwrap_or(head));
    Ok(head.saturating_sub(from))
}

/// With the export off, forgets the baseline: turned on again later, the export starts
/// counting from the head of then.
pub async fn forget_baseline(redis: &mut RedisConnection, keys: &Keys) {
    let forgotten: redis::RedisResult<()> = redis::cmd("HDEL")
        .arg(keys.audit_export())
        .arg(BASELINE)
        .query_async(redis)
        .await;
    if let Err(e) = forgotten {
        tracing::debug!(error = %e, "cannot clear the audit export baseline");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_closes_at_the_cap_and_opens_below_it() {
        let backlog = ExportBacklog::default();
        assert!(!backlog.over_cap(), "no reading, no gate");
        backlog.observe(100, 100);
        assert!(backlog.over_cap());
        assert_eq!(backlog.records(), 100);
        backlog.observe(90, 100);
        assert!(!backlog.over_cap());
        // This replica's own admissions close the gate before the next reading...
        backlog.observe(98, 100);
        backlog.admitted();
        assert!(!backlog.over_cap());
        backlog.admitted();
        assert!(backlog.over_cap());
        assert_eq!(backlog.records(), 100);
        // ...and the next reading, which holds their records, counts them once.
        backlog.observe(100, 100);
        assert_eq!(backlog.records(), 100);
    }
}
