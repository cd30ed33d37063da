//! The transactional audit outbox: an event that goes with a Redis state change is written
//! by the script that makes the change, into the workflow's outbox stream (the workflow's
//! hash slot, so the script stays single-slot on Redis Cluster). Any process's writer then
//! moves outbox events into the one chain (`writer/relay.rs`), exactly once: the append
//! script records, with the records, the id of the last outbox entry it chained, and only
//! if that id is still the one the writer read (compare-and-set), so a retry after an
//! ambiguous append, or two writers relaying at once, neither loses nor repeats an event.
//! A process killed at any instant loses nothing: the event is in Redis with the change.
//!
//! Outbox entries are sealed (HMAC-SHA256 with a key derived from the signing key, named by
//! its key id): someone who can write to Redis but does not hold the key cannot have an
//! event of their making signed into the trail; such an entry is skipped, logged and
//! counted, never chained. An entry sealed by a key this process does not hold (a newer
//! process's, during a rolling key rotation) is left for a process that holds it — the relay
//! of that outbox stops before it — for up to five minutes; then it counts as forged.

use std::collections::HashMap;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

pub(super) use super::outbox_entries::StreamId;
use super::outbox_entries::{OutboxEntry, next_id, outbox_entries};
use super::record::AuditEvent;
use super::signer::AuditSigner;
use crate::domain::WorkflowName;
use crate::queue::Keys;
use crate::redis_conn::RedisConnection;

/// Outbox entries moved into the chain by one append at most.
pub(super) const RELAY_PAGE: usize = 256;
/// Bytes reserved for an event's JSON: an admission's event takes about 600.
const SEALED_CAPACITY: usize = 1024;
/// How long an entry sealed by a key this process does not hold is left for a process that
/// holds it (a rolling key rotation takes less); older, it is taken for a forgery, so that
/// an entry naming a made-up key cannot stall the outbox for good.
const UNKNOWN_KEY_PATIENCE_MS: u64 = 5 * 60 * 1000;

/// HMAC-SHA256 with a 32-byte key.
pub(super) fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut mac = keyed(key);
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// An HMAC-SHA256 keyed by `key`, zero-padded to the block size as HMAC pads any shorter
/// key (so the infallible fixed-size constructor serves).
fn keyed(key: &[u8; 32]) -> Hmac<Sha256> {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    <Hmac<Sha256> as KeyInit>::new(&block.into())
}

/// An event ready for an outbox: its JSON and the seal over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedEvent {
    pub json: String,
    pub mac: String,
}

impl SealedEvent {
    /// A script's `event` and `mac` arguments for `sealed`: `''` for none (the audit off).
    pub fn args(sealed: Option<&Self>) -> (&str, &str) {
        sealed.map_or(("", ""), |sealed| {
            (sealed.json.as_str(), sealed.mac.as_str())
        })
    }
}

/// What admission writes into the outbox with a trigger: its `accepted` event, and its
/// `deferred` one when it asked for a time (the script, on Redis' clock, picks which).
/// Empty with the audit off.
#[derive(Debug, Clone, Default)]
pub struct AdmissionEvents {
    pub accepted: Option<SealedEvent>,
    pub deferred: Option<SealedEvent>,
}

/// Seals events for the outbox (the handles' side) and checks seals (the relay's side).
/// A seal is `<key id>:<hex HMAC>`.
#[derive(Clone)]
pub struct Seal {
    kid: String,
    /// Keyed once: each seal and check starts from a copy (the key's two HMAC blocks are
    /// not hashed again per event).
    keyed: Hmac<Sha256>,
}

/// What an outbox entry's seal says.
enum Opened {
    /// The event's JSON, sealed by a key this process holds.
    Event(String),
    /// Not sealed by the key it names: never chained.
    Forged,
    /// Sealed by a key this process does not hold: left for one that does.
    UnknownKey,
}

impl Seal {
    pub fn of(signer: &AuditSigner) -> Self {
        Self {
            kid: signer.kid().to_owned(),
            keyed: keyed(&signer.outbox_key()),
        }
    }

    pub fn seal(&self, event: &AuditEvent) -> SealedEvent {
        // Serializing strings, integers and JSON values cannot fail. Sized for an
        // admission's event at once (growing a string costs a copy each time).
        let mut json = Vec::with_capacity(SEALED_CAPACITY);
        let _ = serde_json::to_writer(&mut json, event);
        let json = String::from_utf8(json).unwrap_or_default();
        let mut tag = self.keyed.clone();
        tag.update(json.as_bytes());
        let mut hex = [0u8; 64];
        // 32 bytes always fit 64 hex digits.
        let _ = hex::encode_to_slice(tag.finalize().into_bytes(), &mut hex);
        let mut mac = String::with_capacity(self.kid.len() + 1 + hex.len());
        mac.push_str(&self.kid);
        mac.push(':');
        mac.push_str(std::str::from_utf8(&hex).unwrap_or_default());
        SealedEvent { json, mac }
    }

    /// Whether `mac` (the hex part of a seal) is this key's over `json`: compared as hex
    /// text, in constant time (what `seal` writes is lowercase hex; decoding the hex costs
    /// more than encoding the tag).
    fn opens(&self, json: &str, mac: &str) -> bool {
        let mut check = self.keyed.clone();
        check.update(json.as_bytes());
        let mut hex = [0u8; 64];
        let _ = hex::encode_to_slice(check.finalize().into_bytes(), &mut hex);
        mac.len() == hex.len()
            && bool::from(subtle::ConstantTimeEq::ct_eq(mac.as_bytes(), &hex[..]))
    }
}

/// Registers `workflows` as outboxes to relay (at start-up and on reload). A workflow that
/// leaves the configuration stays registered, so what its outbox still holds is relayed.
pub async fn register<'a>(
    redis: &mut RedisConnection,
    keys: &Keys,
    workflows: impl IntoIterator<Item = &'a WorkflowName>,
) -> redis::RedisResult<()> {
    let names: Vec<&str> = workflows.into_iter().map(WorkflowName::as_str).collect();
    if names.is_empty() {
        return Ok(());
    }
    redis::cmd("SADD")
        .arg(keys.audit_outboxes())
        .arg(names)
        .query_async(redis)
        .await
}

/// Adds an event that has no state change of its own to write it with (`retried`).
pub async fn add(
    redis: &mut RedisConnection,
    keys: &Keys,
    workflow: &WorkflowName,
    event: &SealedEvent,
) -> redis::RedisResult<()> {
    let _: String = redis::cmd("XADD")
        .arg(keys.audit_outbox(workflow))
        .arg("*")
        .arg("event")
        .arg(&event.json)
        .arg("mac")
        .arg(&event.mac)
        .query_async(redis)
        .await?;
    Ok(())
}

/// An outbox page's move into the chain: `workflow`'s entries after `after` up to `last`.
pub(super) struct OutboxMove {
    pub workflow: String,
    /// The last entry chained before these ('' for none), as the append must find it.
    pub after: String,
    /// The last entry these events come from.
    pub last: String,
}

/// An outbox entry whose seal holds: its id and its event's JSON.
pub(super) struct SealedEntry {
    pub id: String,
    pub json: String,
}

/// The next events of one outbox not yet in the chain.
pub(super) struct Pending {
    pub moving: OutboxMove,
    /// The entries whose seal holds (see `super::relayed` for their events).
    pub events: Vec<SealedEntry>,
    /// Whether the outbox may hold more after `last` (a full page was taken).
    pub more: bool,
}

/// The relay's side: which outboxes there are, what each holds beyond what was chained.
pub(super) struct Outboxes {
    keys: Keys,
    /// The seals of the signing key and of every retired key (a process not yet restarted
    /// after a rotation still seals with the old one).
    seals: Vec<Seal>,
    /// Per outbox, the mark this writer moved last and trimmed the outbox to: the next
    /// relay reads on from it without asking Redis. Stale when another writer relayed since;
    /// the append's compare-and-set then says so, and the mark is read afresh.
    marks: HashMap<String, String>,
}

impl Outboxes {
    pub fn new(keys: Keys, seals: Vec<Seal>) -> Self {
        Self {
            keys,
            seals,
            marks: HashMap::new(),
        }
    }

    /// `workflow`'s outbox is relayed and trimmed up to `last` by this writer.
    pub fn relayed_to(&mut self, workflow: &str, last: &str) {
        self.marks.insert(workflow.to_owned(), last.to_owned());
    }

    /// Whether this writer knows `workflow`'s mark to be at or past `end`.
    pub fn relayed_past(&self, workflow: &str, end: StreamId) -> bool {
        self.marks
            .get(workflow)
            .and_then(|mark| StreamId::parse(mark))
            .is_some_and(|mark| mark >= end)
    }

    /// Another writer moved `workflow`'s mark: read it afresh next time.
    pub fn forget_mark(&mut self, workflow: &str) {
        self.marks.remove(workflow);
    }

    pub async fn names(&self, redis: &mut RedisConnection) -> redis::RedisResult<Vec<String>> {
        redis::cmd("SMEMBERS")
            .arg(self.keys.audit_outboxes())
            .query_async(redis)
            .await
    }

    /// Each outbox's last entry now (empty outboxes left out): what a flush must see chained.
    pub async fn ends(
        &self,
        redis: &mut RedisConnection,
    ) -> redis::RedisResult<Vec<(String, StreamId)>> {
        let mut ends = Vec::new();
        for workflow in self.names(redis).await? {
            let Ok(name) = WorkflowName::parse(&workflow) else {
                continue;
            };
            let newest = super::store::newest_entry(redis, &self.keys.audit_outbox(&name)).await?;
            if let Some(end) = newest.and_then(|entry| StreamId::parse(&entry.id)) {
                ends.push((workflow, end));
            }
        }
        Ok(ends)
    }

    /// Up to [`RELAY_PAGE`] events of `workflow`'s outbox after its last entry chained
    /// (`None` when there are none); with the mark read from Redis, when it was (entries up
    /// to it are chained, but may not have been deleted yet).
    pub async fn pending(
        &self,
        redis: &mut RedisConnection,
        workflow: &str,
    ) -> redis::RedisResult<(Option<String>, Option<Pending>)> {
        let Ok(name) = WorkflowName::parse(workflow) else {
            return Ok((None, None));
        };
        let (after, read) = match self.marks.get(workflow) {
            Some(mark) => (mark.clone(), None),
            None => {
                let mark: Option<String> = redis::cmd("HGET")
                    .arg(self.keys.audit_relayed())
                    .arg(workflow)
                    .query_async(redis)
                    .await?;
                let mark = mark.unwrap_or_default();
                (mark.clone(), Some(mark))
            }
        };
        let start = if after.is_empty() {
            "-".to_owned()
        } else {
            format!("({after}")
        };
        let page: redis::Value = redis::cmd("XRANGE")
            .arg(self.keys.audit_outbox(&name))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(RELAY_PAGE)
            .query_async(redis)
            .await?;
        let page = outbox_entries(page)?;
        let mut events = Vec::with_capacity(page.len());
        let mut last = None;
        let mut more = page.len() == RELAY_PAGE;
        for entry in page {
            let id = entry.id.clone();
            match self.open(workflow, entry) {
                Opened::Event(json) => {
                    last = Some(id.clone());
                    events.push(SealedEntry { id, json });
                    continue;
                }
                Opened::Forged => {}
                Opened::UnknownKey => {
                    tracing::warn!(outbox = workflow, entry = %id, "an audit outbox entry is sealed by a key this process does not hold (a rotation in progress?); left for a process that holds it");
                    more = false;
                    break;
                }
            }
            last = Some(id);
        }
        let Some(last) = last else {
            return Ok((read, None));
        };
        Ok((
            read,
            Some(Pending {
                moving: OutboxMove {
                    workflow: workflow.to_owned(),
                    after,
                    last,
                },
                events,
                more,
            }),
        ))
    }

    /// Deletes the entries of `workflow`'s outbox up to `last` (chained already).
    pub async fn trim(
        &self,
        redis: &mut RedisConnection,
        workflow: &str,
        last: &str,
    ) -> redis::RedisResult<()> {
        let (Ok(name), Some(next)) = (WorkflowName::parse(workflow), next_id(last)) else {
            return Ok(());
        };
        let _: i64 = redis::cmd("XTRIM")
            .arg(self.keys.audit_outbox(&name))
            .arg("MINID")
            .arg(next)
            .query_async(redis)
            .await?;
        Ok(())
    }

    /// The entry's event, if its seal holds (whether it is an event of this workflow is
    /// checked as its body is made, `super::relayed`).
    fn open(&self, workflow: &str, entry: OutboxEntry) -> Opened {
        let sealed = std::str::from_utf8(&entry.mac)
            .ok()
            .and_then(|mac| mac.split_once(':'));
        let event = match sealed {
            Some((kid, mac)) => match self.seals.iter().find(|seal| seal.kid == kid) {
                None if waiting_for_its_key(&entry.id) => return Opened::UnknownKey,
                None => None,
                Some(seal) => String::from_utf8(entry.event)
                    .ok()
                    .filter(|json| seal.opens(json, mac)),
            },
            None => None,
        };
        match event {
            Some(json) => Opened::Event(json),
            None => {
                forged(workflow, &entry.id);
                Opened::Forged
            }
        }
    }
}

/// Logs and counts an outbox entry whose seal does not hold: it is never chained.
fn forged(workflow: &str, entry: &str) {
    tracing::error!(
        outbox = workflow,
        entry,
        "an audit outbox entry without a valid seal was skipped (written by someone without the signing key?)"
    );
    crate::metrics::metrics().audit_outbox_rejected.inc();
}

/// Whether an entry (`<ms>-<seq>`) sealed by an unknown key is still given time for a
/// process holding that key: added within [`UNKNOWN_KEY_PATIENCE_MS`]. An id from the future
/// (added with an explicit id, never by stepgate) gets none: it would never grow old.
fn waiting_for_its_key(id: &str) -> bool {
    let added = id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<u64>().ok())
        .unwrap_or(0);
    let now = crate::clock::unix_ms();
    added <= now + CLOCK_SKEW_MS && now.saturating_sub(added) < UNKNOWN_KEY_PATIENCE_MS
}

/// How far ahead of this process's clock Redis' may be.
const CLOCK_SKEW_MS: u64 = 60_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::EventKind;

    #[test]
    fn a_seal_opens_only_what_it_sealed_with_its_key() {
        let seal = Seal::of(&AuditSigner::generate());
        let mut event = AuditEvent::now(EventKind::Started);
        event.workflow = Some("orders".into());
        let sealed = seal.seal(&event);
        let (kid, mac) = sealed.mac.split_once(':').unwrap_or_default();
        assert_eq!(kid, seal.kid);
        assert!(seal.opens(&sealed.json, mac));
        let edited = sealed.json.replace("started", "accepted");
        assert!(!seal.opens(&edited, mac));
        let other = Seal::of(&AuditSigner::generate());
        assert!(!other.opens(&sealed.json, mac));
        assert!(!seal.opens(&sealed.json, "zz"));
    }
}
