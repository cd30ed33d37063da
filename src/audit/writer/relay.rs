//! Moving the workflows' outbox events into the chain (see `crate::audit::outbox`).
//!
//! Each outbox is relayed a page at a time: the events after the last entry chained are
//! appended together with the move of that mark (one script, compare-and-set on the mark),
//! then the chained entries are deleted from the outbox. A writer that finds the mark moved
//! (another process chained the page first) deletes nothing (the other may have read fewer
//! entries) and reads on from the new mark; entries the mark already covers (a relay that
//! stopped between its append and its delete) are deleted by the next relay, unchained.

use super::{Appended, AuditWriter};

/// Pages of one outbox a poll relays at most, so that a busy outbox does not keep the writer
/// from its own events; a flush relays until every outbox is empty.
const POLL_PAGES: usize = 8;

impl AuditWriter {
    /// Relays every registered outbox, up to [`POLL_PAGES`] pages each; `false` when Redis
    /// failed a step (the next poll tries again).
    pub(super) async fn relay_outboxes(&mut self) -> bool {
        self.relay_all(Some(POLL_PAGES)).await
    }

    /// Relays every outbox until it is empty, retrying while Redis fails: what a flush
    /// promises (everything recorded before it is in the chain).
    pub(super) async fn relay_until_empty(&mut self) {
        let mut pause = std::time::Duration::from_millis(50);
        while !self.relay_all(None).await {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(super::RETRY_MAX);
        }
    }

    async fn relay_all(&mut self, pages: Option<usize>) -> bool {
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
            let (after, pending) = self.outboxes.pending(&mut self.redis, workflow).await?;
            if !after.is_empty() {
                // Chained already (a relay that stopped between its append and its delete).
                self.outboxes
                    .trim(&mut self.redis, workflow, &after)
                    .await?;
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
                    if !pending.more {
                        return Ok(());
                    }
                }
                Appended::Elsewhere => {}
            }
        }
        Ok(())
    }
}
