//! How far the export is behind, watched by every replica (the exporter runs on one): the
//! records the chain holds that the files do not yet (head `seq` − the export cursor). At
//! `audit.files.max_unexported_records` admission stops (503) and the replica is not ready
//! until the export catches up: a sink that is down (disk full, directory unwritable) then
//! holds Redis to a bound instead of filling it, and no record is ever dropped to make room.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::queue::Keys;
use crate::redis_conn::RedisConnection;

const EVERY: Duration = Duration::from_millis(250);

/// The latest reading, and this replica's admissions since the reading before it: cheap to
/// ask on every trigger. The gate counts the records its own admissions add, so one replica
/// cannot run past the cap by a reading interval's worth of traffic; counting from the
/// reading before the last covers records still on their way into the chain when the last
/// one was taken (the estimate errs high: the gate closes a little early, never late). The
/// other replicas' admissions show at the next reading.
#[derive(Debug, Default)]
pub struct ExportBacklog {
    records: AtomicU64,
    /// This replica's admissions, ever.
    admitted: AtomicU64,
    /// `admitted` as of the reading before the last, and as of the last.
    counted_from: AtomicU64,
    admitted_at_reading: AtomicU64,
    /// 0 until the first reading (no export: no gate).
    cap: AtomicU64,
    /// Whether the last reading was over the cap: its change is logged, once.
    over_at_reading: AtomicBool,
}

impl ExportBacklog {
    /// Records not exported yet, as last read, plus this replica's admissions since the
    /// reading before.
    pub fn records(&self) -> u64 {
        let own = (self.admitted.load(Ordering::Relaxed))
            .saturating_sub(self.counted_from.load(Ordering::Relaxed));
        self.records.load(Ordering::Relaxed) + own
    }

    /// Whether the backlog reached its cap: triggers are refused until it is below again.
    pub fn over_cap(&self) -> bool {
        let cap = self.cap.load(Ordering::Relaxed);
        cap > 0 && self.records() >= cap
    }

    /// One admitted trigger: its record is on its way into the chain.
    pub fn admitted(&self) {
        self.admitted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn cap(&self) -> u64 {
        self.cap.load(Ordering::Relaxed)
    }

    /// Takes a reading: `head` records chained, `exported` of them in the files.
    fn observe(&self, head: u64, exported: u64, cap: u64) {
        let records = head.saturating_sub(exported);
        let now = self.admitted.load(Ordering::Relaxed);
        let before = self.admitted_at_reading.swap(now, Ordering::Relaxed);
        self.counted_from.store(before, Ordering::Relaxed);
        self.records.store(records, Ordering::Relaxed);
        self.cap.store(cap, Ordering::Relaxed);
        crate::metrics::metrics()
            .audit_unexported
            .set(i64::try_from(records).unwrap_or(i64::MAX));
        let over = records >= cap;
        match (self.over_at_reading.swap(over, Ordering::Relaxed), over) {
            (false, true) => tracing::error!(
                unexported = records,
                cap,
                "the audit export is {records} records behind (cap \
                 audit.files.max_unexported_records = {cap}): triggers are refused (503) and \
                 this instance is not ready until it catches up; see the export's error"
            ),
            (true, false) => tracing::info!(
                unexported = records,
                "the audit export caught up below its cap: triggers are admitted again"
            ),
            _ => {}
        }
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
            Ok(Some((head, exported))) => backlog.observe(head, exported, cap),
            Ok(None) => {}
            // Redis unreachable: admission fails on its own; keep the last reading.
            Err(e) => tracing::debug!(error = %e, "cannot read the audit export backlog"),
        }
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// The chain's head `seq` and the export cursor's (0 when absent), or `None` until the
/// export first reached the head: a trail kept whole in Redis by an earlier version (or
/// configuration) is exported first, without refusing triggers while it is.
async fn read(redis: &mut RedisConnection, keys: &Keys) -> redis::RedisResult<Option<(u64, u64)>> {
    let (head, (exported, caught_up)): (Option<u64>, (Option<u64>, Option<u8>)) = redis::pipe()
        .cmd("HGET")
        .arg(keys.audit_head())
        .arg("seq")
        .cmd("HMGET")
        .arg(keys.audit_export())
        .arg("seq")
        .arg(super::export::CAUGHT_UP)
        .query_async(redis)
        .await?;
    Ok(caught_up
        .is_some()
        .then(|| (head.unwrap_or(0), exported.unwrap_or(0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_closes_at_the_cap_and_opens_below_it() {
        let backlog = ExportBacklog::default();
        backlog.observe(100, 0, 100);
        assert!(backlog.over_cap());
        assert_eq!(backlog.records(), 100);
        backlog.observe(150, 60, 100);
        assert!(!backlog.over_cap());
        // A cursor ahead of a head read a moment earlier is no backlog.
        backlog.observe(10, 12, 100);
        assert_eq!(backlog.records(), 0);
        // This replica's own admissions close the gate before the next reading...
        backlog.observe(98, 0, 100);
        backlog.admitted();
        assert!(!backlog.over_cap());
        backlog.admitted();
        assert!(backlog.over_cap());
        assert_eq!(backlog.records(), 100);
        // ...and still count at the next reading, which may not hold their records yet.
        backlog.observe(98, 0, 100);
        assert_eq!(backlog.records(), 100);
        backlog.observe(100, 0, 100);
        assert_eq!(backlog.records(), 100);
    }
}
