//! Moving the workflows' outbox events into the chain (see `crate::audit::outbox`).
//!
//! Each outbox is relayed a page at a time: the events after the last entry chained are
//! appended together with the move of that mark (one script, compare-and-set on the mark),
//! then the chained entries are deleted from the outbox. A writer that finds the mark moved
//! (another process chained the page first) deletes nothing (the other may have read fewer
//! entries) and reads on from the new mark; entries the mark already covers (a relay that
//! stopped between its append and its delete) are deleted by the next relay, unchained.

use super::{Appended, AuditWriter};

/// One outbox page's move: `workflow`'s entries after `after` up to `last`.
pub(super) struct OutboxMove {
    pub workflow: String,
    pub after: String,
    pub last: String,
}

impl AuditWriter {
    /// Relays every registered outbox until it is empty (as far as this writer saw).
    pub(super) async fn relay_outboxes(&mut self) {
        let names = match self.outboxes.names(&mut self.redis).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the audit outboxes; retrying");
                return;
            }
        };
        for workflow in names {
            if let Err(e) = self.relay(&workflow).await {
                tracing::warn!(error = %e, outbox = %workflow, "cannot relay an audit outbox; retrying");
            }
        }
    }

    async fn relay(&mut self, workflow: &str) -> redis::RedisResult<()> {
        loop {
            let Some(pending) = self.outboxes.pending(&mut self.redis, workflow).await? else {
                return Ok(());
            };
            let moving = OutboxMove {
                workflow: pending.workflow,
                after: pending.after,
                last: pending.last,
            };
            if !moving.after.is_empty() {
                // Chained already (a relay that stopped between its append and its delete).
                self.outboxes
                    .trim(&mut self.redis, workflow, &moving.after)
                    .await?;
            }
            let appended = self
                .append_until_written(&pending.events, Some(&moving))
                .await;
            // Only entries this append chained may go: another writer that chained first
            // may have read fewer, and the rest are still to be chained.
            if appended == Appended::Here {
                self.outboxes
                    .trim(&mut self.redis, workflow, &moving.last)
                    .await?;
            }
            if pending.read < crate::audit::outbox::RELAY_PAGE {
                return Ok(());
            }
        }
    }
}
