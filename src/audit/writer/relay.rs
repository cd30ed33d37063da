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
//!
//! A flush relays each outbox up to the entry that was its last when the flush began, and
//! no further: the mark passing it, whoever moved it, is what the flush waits for. So a
//! flood behind it cannot make a flush chase an outbox that never empties, and an entry this
//! writer cannot relay (sealed by a key it does not hold yet) holds the flush until a
//! process that holds the key relays it, instead of being passed over.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::super::outbox::StreamId;
use super::{Appended, AuditWriter, Events};

/// Pages of one outbox a poll relays at most, so that a busy outbox does not keep the writer
/// from its own events.
const POLL_PAGES: usize = 8;
/// How long a flush waits for the outboxes (Redis failing, or another process to relay an
/// entry this one cannot) before it reports failure.
const FLUSH_PATIENCE: Duration = Duration::from_secs(10);
/// The longest pause between a flush's rounds while it waits.
const FLUSH_PAUSE_MAX: Duration = Duration::from_millis(250);

/// How far one relay of an outbox goes.
#[derive(Clone, Copy)]
enum Reach {
    /// This many pages at most (a poll).
    Pages(usize),
    /// Until the mark passes this entry (a flush).
    Through(StreamId),
}

impl AuditWriter {
    /// Relays every registered outbox, up to [`POLL_PAGES`] pages each; `false` when Redis
    /// failed a step (the next poll tries again).
    pub(super) async fn relay_outboxes(&mut self) -> bool {
        self.clear_nudge();
        let names = match self.outboxes.names(&mut self.redis).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the audit outboxes; retrying");
                return false;
            }
        };
        let mut relayed = true;
        for workflow in names {
            if let Err(e) = self.relay(&workflow, Reach::Pages(POLL_PAGES)).await {
                tracing::warn!(error = %e, outbox = %workflow, "cannot relay an audit outbox; retrying");
                relayed = false;
            }
        }
        relayed
    }

    /// Waits until every outbox entry written before this call is chained, relaying meanwhile,
    /// for up to [`FLUSH_PATIENCE`], and only while someone still waits for the answer
    /// (`flushing` not all closed): what a flush promises. `false` when that could not be
    /// done in time, or nobody waits any longer (the flush fails, the writer goes on with its
    /// other work, and the outboxes are relayed later). The writer does nothing else
    /// meanwhile, so a caller that gives up (a fail-closed request at its `write_timeout`)
    /// frees it at once.
    pub(super) async fn relay_for_flush(&mut self, flushing: &[oneshot::Sender<()>]) -> bool {
        let deadline = Instant::now() + FLUSH_PATIENCE;
        let mut pause = Duration::from_millis(10);
        let mut ends = None;
        let given_up = || flushing.iter().all(oneshot::Sender::is_closed);
        loop {
            // Before each round too: a batch whose callers all gave up while it was queued
            // (or during the pause) costs nothing more.
            if given_up() {
                return false;
            }
            if ends.is_none() {
                self.clear_nudge();
                ends = match self.outboxes.ends(&mut self.redis).await {
                    Ok(ends) => Some(ends),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the audit outboxes; retrying");
                        None
                    }
                };
            }
            if let Some(waiting) = ends.as_mut() {
                let mut still = Vec::new();
                for (workflow, end) in waiting.drain(..) {
                    match self.relay(&workflow, Reach::Through(end)).await {
                        Ok(true) => {}
                        Ok(false) => still.push((workflow, end)),
                        Err(e) => {
                            tracing::warn!(error = %e, outbox = %workflow, "cannot relay an audit outbox; retrying");
                            still.push((workflow, end));
                        }
                    }
                }
                if still.is_empty() {
                    return true;
                }
                *waiting = still;
            }
            if Instant::now() + pause > deadline {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(FLUSH_PAUSE_MAX);
        }
    }

    /// Cleared before reading the outboxes: an event nudged from now on is read by this
    /// relay or, its nudge sent again, by the next.
    fn clear_nudge(&self) {
        self.nudged
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Relays `workflow`'s outbox as far as `reach` asks; whether the mark reached it (for
    /// [`Reach::Pages`]: whether the outbox was caught up with).
    async fn relay(&mut self, workflow: &str, reach: Reach) -> redis::RedisResult<bool> {
        let mut left = match reach {
            Reach::Pages(pages) => pages,
            Reach::Through(_) => usize::MAX,
        };
        // Whether a remembered mark was dropped to be read afresh (once per call).
        let mut reread = false;
        while left > 0 {
            if let Reach::Through(end) = reach
                && self.outboxes.relayed_past(workflow, end)
            {
                return Ok(true);
            }
            left -= 1;
            let (read, pending) = self.outboxes.pending(&mut self.redis, workflow).await?;
            let fresh = read.is_some();
            if let Some(mark) = read.filter(|mark| !mark.is_empty()) {
                // Chained already (a relay that stopped between its append and its delete).
                self.outboxes.relayed_to(workflow, &mark);
                let trimmed = self.outboxes.trim(&mut self.redis, workflow, &mark).await;
                if let Reach::Through(end) = reach
                    && self.outboxes.relayed_past(workflow, end)
                {
                    // Chained is what a flush waits for; a trim left undone is redone later.
                    return Ok(true);
                }
                trimmed?;
            }
            let Some(pending) = pending else {
                let Reach::Through(end) = reach else {
                    return Ok(true);
                };
                if self.outboxes.relayed_past(workflow, end) {
                    return Ok(true);
                }
                // Blocked (an entry for another process to relay), or the mark this writer
                // remembers is stale (another writer relayed and trimmed): the mark is read
                // afresh, at once when it was remembered, else next round.
                self.outboxes.forget_mark(workflow);
                if fresh || reread {
                    return Ok(false);
                }
                reread = true;
                continue;
            };
            let moving = &pending.moving;
            let appended = self
                .append_until_written(Events::Sealed(&pending.events), Some(moving))
                .await;
            // Only entries this append chained may go: another writer that chained first
            // may have read fewer, and the rest are still to be chained — so after losing the
            // race, read on from the new mark whatever this page held.
            match appended {
                Appended::Here => {
                    self.outboxes.relayed_to(workflow, &moving.last);
                    self.outboxes
                        .trim(&mut self.redis, workflow, &moving.last)
                        .await?;
                    if !pending.more && matches!(reach, Reach::Pages(_)) {
                        return Ok(true);
                    }
                }
                Appended::Elsewhere => self.outboxes.forget_mark(workflow),
            }
        }
        Ok(false)
    }
}
