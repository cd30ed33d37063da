//! The file exporter's lease, with a fencing token: one exporter writes the files at a time.
//!
//! A lease is renewed, and checked, before every page the exporter writes; each new holder
//! gets a larger token (`export_lease.lua`), and the cursor in Redis only moves with the
//! newest token (`export_cursor.lua`), as trimming does. An exporter that lost its lease —
//! paused past its expiry during a long catch-up, while another replica took over — finds
//! out at its next page and writes nothing more (Kleppmann's fencing tokens, DDIA ch. 8).

use std::time::Duration;

use super::scripts::{
    ExportCursor, ExportCursorArgs, ExportCursorKeys, ExportLease, ExportLeaseArgs,
    ExportLeaseKeys, ReleaseExportLease, ReleaseExportLeaseArgs, ReleaseExportLeaseKeys,
};
use crate::queue::Keys;
use crate::redis_conn::RedisConnection;

/// How long a lease lasts without renewal.
const LEASE: Duration = Duration::from_secs(15);

pub(super) struct Lease {
    owner: String,
    /// This exporter's fencing token while it holds the lease; 0 when it does not.
    token: u64,
}

impl Lease {
    pub(super) fn new() -> Self {
        Self {
            owner: uuid::Uuid::new_v4().simple().to_string(),
            token: 0,
        }
    }

    pub(super) fn token(&self) -> u64 {
        self.token
    }

    /// Takes or renews the lease at the start of a round; `true` when held.
    pub(super) async fn take(
        &mut self,
        redis: &mut RedisConnection,
        keys: &Keys,
    ) -> redis::RedisResult<bool> {
        self.token = self.renew(redis, keys).await?;
        Ok(self.token != 0)
    }

    /// Renews the lease before the next page; `true` only when it is still held with the
    /// same token (a different one means it was lost in between, whatever was in progress).
    pub(super) async fn still_held(
        &mut self,
        redis: &mut RedisConnection,
        keys: &Keys,
    ) -> redis::RedisResult<bool> {
        let token = self.renew(redis, keys).await?;
        let kept = token != 0 && token == self.token;
        if !kept {
            tracing::warn!(
                token = self.token,
                "the audit export lease was lost mid-round; this exporter writes nothing more"
            );
            self.token = 0;
        }
        Ok(kept)
    }

    /// Moves the cursor to `seq`, where `sink` ends, if this exporter's token is still the
    /// newest.
    pub(super) async fn advance(
        &mut self,
        redis: &mut RedisConnection,
        keys: &Keys,
        seq: u64,
        sink: &str,
    ) -> redis::RedisResult<bool> {
        let cursor = ExportCursorKeys {
            export: keys.audit_export(),
            fence: keys.audit_export_fence(),
        };
        let args = ExportCursorArgs {
            token: self.token,
            seq,
            sink,
        };
        let moved: i64 = ExportCursor::invocation(cursor, &args)
            .invoke_async(redis)
            .await?;
        if moved != 1 {
            tracing::warn!(
                token = self.token,
                "a newer exporter holds the fence; stopping"
            );
            self.token = 0;
        }
        Ok(moved == 1)
    }

    /// Gives up the lease, if held, so that another exporter (or this one, restarted) takes
    /// over at once instead of after the lease expires.
    pub(super) async fn release(&mut self, redis: &mut RedisConnection, keys: &Keys) {
        if self.token == 0 {
            return;
        }
        let lease = ReleaseExportLeaseKeys {
            lease: keys.audit_export_lease(),
        };
        let args = ReleaseExportLeaseArgs {
            holder: &self.owner,
            token: self.token,
        };
        let released: redis::RedisResult<i64> = ReleaseExportLease::invocation(lease, &args)
            .invoke_async(redis)
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "could not give up the audit export lease; it expires by itself");
        }
        self.token = 0;
    }

    async fn renew(&self, redis: &mut RedisConnection, keys: &Keys) -> redis::RedisResult<u64> {
        let lease = ExportLeaseKeys {
            lease: keys.audit_export_lease(),
            fence: keys.audit_export_fence(),
        };
        let args = ExportLeaseArgs {
            holder: &self.owner,
            ttl_ms: LEASE.as_millis() as u64,
        };
        ExportLease::invocation(lease, &args)
            .invoke_async(redis)
            .await
    }
}
