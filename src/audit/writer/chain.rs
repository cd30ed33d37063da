//! Making an append's records: each event's canonical body chained on the head, the
//! signature on the record closing each key's span, and the checkpoint when one is due.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::super::checkpoint::Checkpoint;
use super::super::merkle::leaf_hash;
use super::super::outbox::{OutboxMove, SealedEntry};
use super::super::record::{AuditEvent, sha256_hex};
use super::super::relayed;
use super::super::store::ChainHead;
use super::{AppendError, AuditWriter};

impl AuditWriter {
    /// The records (and checkpoint, if due) that put `events` after `head`; `None` when
    /// there is nothing to write (never when an outbox's move is given: its mark moves even
    /// past entries none of which is chained).
    pub(super) fn chain(
        &self,
        head: &ChainHead,
        events: Events<'_>,
        moving: Option<&OutboxMove>,
    ) -> Result<Option<Plan>, AppendError> {
        let ours = self.signer.kid();
        let rotating_from = match head.kid.as_deref() {
            None => None,
            Some(kid) if kid == ours => None,
            Some(kid) => match self.retired.iter().find(|r| r.kid() == kid) {
                Some(old) => Some(old),
                None => {
                    return Err(AppendError::ForeignKey {
                        active: kid.to_owned(),
                        ours: ours.to_owned(),
                    });
                }
            },
        };
        let mut next = head.clone();
        let mut records = Vec::with_capacity(events.len() + 1);
        let mut rotation = 0;
        let mut skipped = Vec::new();
        if let (Some(old), false) = (rotating_from, events.is_empty()) {
            let public_key = BASE64.encode(self.signer.verifying_key().as_bytes());
            let body = AuditEvent::key_rotated(old.kid(), ours, public_key).body(
                next.seq + 1,
                &next.hash,
                old.kid(),
            );
            let signature = BASE64.encode(old.sign(&body));
            link(&mut next, &mut records, body, signature);
            rotation = 1;
        }
        match events {
            Events::Built(events) => {
                for event in events {
                    let body = event.body(next.seq + 1, &next.hash, ours);
                    link(&mut next, &mut records, body, String::new());
                }
            }
            Events::Sealed(events) => {
                let workflow = moving.map_or("", |moving| moving.workflow.as_str());
                for entry in events {
                    match relayed::body(&entry.json, workflow, next.seq + 1, &next.hash, ours) {
                        Ok(body) => link(&mut next, &mut records, body, String::new()),
                        Err(e) => skipped.push((entry.id.clone(), e)),
                    }
                }
            }
        }
        // Only the record closing a key's span in this append is signed: it covers the
        // records before it through their chained hashes (one signature per append, not per
        // record, is what keeps the audit cheap under load).
        if let Some((body, signature)) = records.get_mut(rotation..).and_then(<[_]>::last_mut) {
            *signature = BASE64.encode(self.signer.sign(body));
        }
        if !records.is_empty() {
            next.kid = Some(ours.to_owned());
        }
        let now_ms = crate::clock::unix_ms();
        let due = next.seq > head.checkpoint_size
            && (next.seq - head.checkpoint_size >= self.settings.checkpoint_every
                || now_ms.saturating_sub(head.checkpoint_ms)
                    >= self.settings.checkpoint_interval.as_millis() as u64);
        // A checkpoint is signed by the key active after its last record.
        let checkpoint_signer = match (&next.kid, rotating_from) {
            (Some(kid), Some(old)) if kid == old.kid() => old,
            _ => &self.signer,
        };
        let checkpoint = due.then(|| {
            next.checkpoint_size = next.seq;
            next.checkpoint_ms = now_ms;
            let signed = Checkpoint::new(
                next.seq,
                &next.frontier.root(),
                &next.hash,
                checkpoint_signer.kid(),
            )
            .sign(checkpoint_signer);
            (signed.body, signed.signature)
        });
        // An outbox's move is written even with nothing to chain (only skipped entries): the
        // mark must still pass them.
        if records.is_empty() && checkpoint.is_none() && moving.is_none() {
            return Ok(None);
        }
        Ok(Some(Plan {
            records,
            checkpoint,
            head: next,
            skipped,
        }))
    }
}

/// Chains the record `body` after `next` (moving it on), with `signature` (empty for none).
fn link(
    next: &mut ChainHead,
    records: &mut Vec<(Vec<u8>, String)>,
    body: Vec<u8>,
    signature: String,
) {
    next.seq += 1;
    next.hash = sha256_hex(&body);
    next.frontier.push(leaf_hash(&body));
    records.push((body, signature));
}

/// What one append chains.
#[derive(Clone, Copy)]
pub(super) enum Events<'a> {
    /// Events of this process.
    Built(&'a [AuditEvent]),
    /// Events relayed from the outbox an append moves, as sealed (`super::relayed`).
    Sealed(&'a [SealedEntry]),
}

impl Events<'_> {
    pub fn len(&self) -> usize {
        match self {
            Self::Built(events) => events.len(),
            Self::Sealed(events) => events.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one append writes.
pub(super) struct Plan {
    pub records: Vec<(Vec<u8>, String)>,
    pub checkpoint: Option<(String, String)>,
    pub head: ChainHead,
    /// Outbox entries sealed by a key this process holds that cannot be chained (an event
    /// of another workflow's outbox, copied there by someone with access to Redis), by id.
    skipped: Vec<(String, relayed::Unchainable)>,
}

impl Plan {
    /// Logs and counts the entries this plan skipped, once its append went through (a plan
    /// made again after a conflict or a failed try must not count them again).
    pub fn report_skipped(&self, moving: Option<&OutboxMove>) {
        let workflow = moving.map_or("", |moving| moving.workflow.as_str());
        for (entry, error) in &self.skipped {
            tracing::error!(outbox = workflow, entry = %entry, error = %error, "a sealed audit outbox entry that cannot be chained was skipped (copied from elsewhere by someone with access to Redis?)");
            crate::metrics::metrics().audit_outbox_rejected.inc();
        }
    }
}
