//! Moving the workflows' outbox events into the chain (see `crate::audit::outbox`).
//!
//! Each outbox is relayed a page at a time: the events after the last entry chained are
//! appended together with the move of that mark (one script, compare-and-set on the mark),
//! then the chained entries are deleted from the outbox. A writer that finds the mark moved
//! (another process chained the page first) deletes nothing (the other may have read fewer
//! entries) and reads on from the new mark; entries the mark already covers (a relay that
//! stopped between its append and its delete) are deleted by the next relay, unchained.
//! A writer remembers the mark it moved last and reads on from it without asking Redis; the
//! compare-and-set catches a mark that went stale, and it is then read afresh.

use super::{Appended, AuditWriter};

/// Pages of one outbox a poll relays at most, so that a busy outbox does not keep the writer
/// from its own events; a flush relays until every outbox is empty.
const POLL_PAGES: usize = 8;
/// How long a flush keeps relaying while Redis fails before it reports failure.
const FLUSH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

impl AuditWriter {
    /// Relays every registered outbox, up to [`POLL_PAGES`] pages each; `false` when Redis
    /// failed a step (the next poll tries again).
    pub(super) async fn relay_outboxes(&mut self) -> bool {
        self.relay_all(Some(POLL_PAGES)).await
    }

    /// Relays every outbox until it is empty, retrying while Redis fails, for up to
    /// [`FLUSH_PATIENCE`]: what a flush promises (everything recorded before it is in the
    /// chain); `false` when that could not be done in time (the flush fails, the writer
    /// goes on with its other work, and the outboxes are relayed later).
    pub(super) async fn relay_until_empty(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + FLUSH_PATIENCE;
        let mut pause = std::time::Duration::from_millis(50);
        while !self.relay_all(None).await {
            if tokio::time::Instant::now() + pause > deadline {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(super::RETRY_MAX);
        }
        true
    }

    async fn relay_all(&mut self, pages: Option<usize>) -> bool {
        // Cleared before reading: an event nudged from now on is read by this relay or, its
        // nudge sent again, by the next.
        self.nudged
            .store(false, std::sync::atomic::Ordering::Release);
        let names = match self.outboxes.names(&mut self.redis).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the audit outboxes; retrying");
                return false;
            }
        };
        let mut relayed = true;
        for workflow in names {
            if let Err(e) = self.relay(&workflow, pages).await {
                tracing::warn!(error = %e, outbox = %workflow, "cannot relay an audit outbox; retrying");
                relayed = false;
            }
        }
        relayed
    }

    async fn relay(&mut self, workflow: &str, pages: Option<usize>) -> redis::RedisResult<()> {
        let mut left = pages.unwrap_or(usize::MAX);
        while left > 0 {
            left -= 1;
            let (read, pending) = self.outboxes.pending(&mut self.redis, workflow).await?;
            if let Some(mark) = read.filter(|mark| !mark.is_empty()) {
                // Chained already (a relay that stopped between its append and its delete).
                self.outboxes.trim(&mut self.redis, workflow, &mark).await?;
                self.outboxes.relayed_to(workflow, &mark);
            }
            let Some(pending) = pending else {
                return Ok(());
            };
            let moving = &pending.moving;
            let appended = self
                .append_until_written(&pending.events, Some(moving))
                .await;
            // Only entries this append chained may go: another writer that chained first
            // may have read fewer, and the rest are still to be chained — so after losing the
            // race, read on from the new mark whatever this page held.
            match appended {
                Appended::Here => {
                    self.outboxes
                        .trim(&mut self.redis, workflow, &moving.last)
                        .await?;
                    self.outboxes.relayed_to(workflow, &moving.last);
                    if !pending.more {
                        return Ok(());
                    }
                }
                Appended::Elsewhere => self.outboxes.forget_mark(workflow),
            }
        }
        Ok(())
    }
}
