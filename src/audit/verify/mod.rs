//! Checks an audit trail with nothing but the public key it started with.
//!
//! For each record, in order: the body is canonical JSON of a known schema version, names
//! the active key; its `seq` follows the previous one and its `prev` is the previous body's
//! SHA-256. The last record of every append is signed by that key, which covers the records
//! before it through their chained hashes; every record must be covered. A `key_rotated` record, signed by the active key, makes the key it
//! introduces active and retires the old one. Every checkpoint must be signed by the key
//! active at its size and match the Merkle root of the records up to it; a trail shorter
//! than a checkpoint (or than the head Redis keeps) was cut off.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Serialize;
use serde_json::Value;

use super::canonical::canonical_json;
use super::checkpoint::{Checkpoint, SignedCheckpoint};
use super::merkle::{Frontier, leaf_hash};
use super::record::{GENESIS_HASH, sha256_hex};
use super::signer::key_id;
use super::store::{ChainHead, StoredRecord};

/// What kind of problem, as the `--json` output and the exit code tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Not JSON, not canonical, unknown schema: the bytes were edited.
    Malformed,
    /// The signature does not verify over the bytes: the record was edited.
    Modified,
    /// A sequence number out of place: a record was removed, inserted or moved.
    Sequence,
    /// `prev` is not the previous record's hash.
    ChainBroken,
    /// Signed by a key the verifier was not given and no rotation introduced.
    UnknownKey,
    /// Signed by a key that a rotation retired before this record.
    RetiredKey,
    /// Records are missing after a point a checkpoint or the head vouches for.
    Truncated,
    /// A checkpoint's root or head does not match the records it covers.
    CheckpointMismatch,
    /// A checkpoint is malformed or its signature does not verify.
    CheckpointInvalid,
    /// Two copies of the trail (files and Redis) disagree about a record.
    Diverged,
    /// The trail does not extend a checkpoint saved from it earlier (`--since`): its tail
    /// was cut off, or its history rewritten, since.
    Inconsistent,
}

impl ProblemKind {
    /// The process exit code: 1 altered content, 4 truncation, 5 keys.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Truncated => 4,
            Self::UnknownKey | Self::RetiredKey => 5,
            _ => 1,
        }
    }
}

/// The first problem found, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("record {seq} ({location}): {detail}")]
pub struct Problem {
    pub kind: ProblemKind,
    /// The record's place in the trail (1-based), as far as the verifier got.
    pub seq: u64,
    pub location: String,
    pub detail: String,
}

/// A trail that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// Records checked (after any trimmed prefix).
    pub records: u64,
    /// The newest record's seq and hash.
    pub last_seq: u64,
    pub head: String,
    pub checkpoints: u64,
    /// The key that signs now, and the keys rotations introduced.
    pub active_kid: Option<String>,
    pub rotations: Vec<String>,
    /// The size of the saved checkpoint (`--since`) the trail was found consistent with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistent_with: Option<u64>,
}

/// Where verification starts when the records before it were trimmed from Redis: the last
/// trimmed record's seq, hash and Merkle frontier, and the key active after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartPoint {
    pub seq: u64,
    pub hash: String,
    pub frontier: Frontier,
    pub kid: Option<String>,
}

impl StartPoint {
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
            frontier: Frontier::default(),
            kid: None,
        }
    }
}

/// Verifies records one at a time, in order.
pub struct ChainVerifier {
    keys: HashMap<String, VerifyingKey>,
    active: Option<String>,
    /// Retired key id → the seq of the rotation that retired it.
    retired: HashMap<String, u64>,
    rotations: Vec<String>,
    seq: u64,
    first_seq: u64,
    prev: String,
    /// Where the previous record is, to name it when the next one's `prev` disagrees.
    prev_location: String,
    /// The first record not yet covered by a signature, and where it is.
    unsigned_from: Option<(u64, String)>,
    frontier: Frontier,
    checkpoints: BTreeMap<u64, Vec<SignedCheckpoint>>,
    checked: u64,
    /// Where a trimmed trail starts, until a signed checkpoint of its size vouched for it.
    unvouched_start: Option<StartPoint>,
    /// Checkpoints of exactly the trimmed prefix's size: the candidates to vouch for it.
    start_checkpoints: Vec<SignedCheckpoint>,
    /// A checkpoint saved earlier (`--since`) the trail must still be consistent with,
    /// until the records reach its size.
    since: Option<(u64, SignedCheckpoint)>,
    consistent_with: Option<u64>,
}

impl ChainVerifier {
    pub fn new(anchors: &[VerifyingKey], start: StartPoint) -> Self {
        let unvouched_start = (start.seq > 0).then(|| start.clone());
        Self {
            keys: anchors.iter().map(|k| (key_id(k), *k)).collect(),
            active: start.kid,
            retired: HashMap::new(),
            rotations: Vec::new(),
            seq: start.seq,
            first_seq: start.seq,
            prev: start.hash,
            prev_location: "the trim point".into(),
            unsigned_from: None,
            frontier: start.frontier,
            checkpoints: BTreeMap::new(),
            checked: 0,
            unvouched_start,
            start_checkpoints: Vec::new(),
            since: None,
            consistent_with: None,
        }
    }

    /// Checkpoints to hold the records against (any order; duplicates are fine).
    pub fn add_checkpoints(&mut self, checkpoints: &[SignedCheckpoint]) -> Result<(), Problem> {
        for (i, signed) in checkpoints.iter().enumerate() {
            let size = serde_json::from_str::<Checkpoint>(&signed.body)
                .map(|c| c.size)
                .map_err(|_| Problem {
                    kind: ProblemKind::CheckpointInvalid,
                    seq: 0,
                    location: format!("checkpoint {}", i + 1),
                    detail: "not a checkpoint".into(),
                })?;
            // Checkpoints before a trimmed prefix cannot be checked against records; one of
            // exactly its size is what vouches for the trim point.
            if size > self.first_seq {
                self.checkpoints
                    .entry(size)
                    .or_default()
                    .push(signed.clone());
            } else if size == self.first_seq {
                self.start_checkpoints.push(signed.clone());
            }
        }
        Ok(())
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Checks the next record: its form, its key, its place in the chain, its signature;
    /// then takes it into the chain and the Merkle tree and checks any checkpoint it closes.
    pub fn push(&mut self, record: &StoredRecord) -> Result<(), Problem> {
        self.check_start()?;
        let expected = self.seq + 1;
        let problem = |(kind, detail): Finding| Problem {
            kind,
            seq: expected,
            location: record.location.clone(),
            detail,
        };
        let body = canonical_body(record).map_err(problem)?;
        let kid = body["kid"].as_str().unwrap_or_default();
        let key = *self.signing_key(kid).map_err(problem)?;
        let seq = self.check_place(&body, expected).map_err(problem)?;
        self.check_signature(record, &body, &key, expected)
            .map_err(problem)?;
        if body["event"] == "key_rotated" {
            self.rotate(kid, &body, seq)
                .map_err(|e| problem((ProblemKind::Malformed, e.to_string())))?;
        } else {
            self.active = Some(kid.to_owned());
        }
        self.seq = seq;
        self.prev = sha256_hex(record.body.as_bytes());
        self.prev_location.clone_from(&record.location);
        self.frontier.push(leaf_hash(record.body.as_bytes()));
        self.check_checkpoints(&record.location)
    }

    /// The key `kid` names, if it may sign the next record.
    fn signing_key(&self, kid: &str) -> Result<&VerifyingKey, Finding> {
        if let Some(retired_at) = self.retired.get(kid) {
            return Err((
                ProblemKind::RetiredKey,
                format!("signed by key {kid}, retired by the rotation at record {retired_at}"),
            ));
        }
        let Some(key) = self.keys.get(kid) else {
            return Err((
                ProblemKind::UnknownKey,
                format!("signed by unknown key {kid:?}"),
            ));
        };
        if let Some(active) = self.active.as_deref().filter(|active| *active != kid) {
            return Err((
                ProblemKind::UnknownKey,
                format!(
                    "signed by key {kid} while key {active} is active, and no rotation introduced it"
                ),
            ));
        }
        Ok(key)
    }

    /// The record's `seq`, if it is the `expected` one and chained on the previous record.
    fn check_place(&self, body: &Value, expected: u64) -> Result<u64, Finding> {
        let seq = body["seq"].as_u64().unwrap_or(0);
        if seq != expected {
            let detail = if seq > expected {
                format!("seq is {seq} where {expected} was expected: records were removed or moved")
            } else {
                format!(
                    "seq is {seq} where {expected} was expected: a record was inserted, repeated or moved"
                )
            };
            return Err((ProblemKind::Sequence, detail));
        }
        if body["prev"] != self.prev.as_str() {
            return Err((
                ProblemKind::ChainBroken,
                format!(
                    "`prev` is not the hash of record {} ({}): that record or this one was edited",
                    self.seq, self.prev_location
                ),
            ));
        }
        Ok(seq)
    }

    /// Verifies the record's signature; an unsigned record (a batch is signed at its end)
    /// is remembered until a signed one covers it.
    fn check_signature(
        &mut self,
        record: &StoredRecord,
        body: &Value,
        key: &VerifyingKey,
        seq: u64,
    ) -> Result<(), Finding> {
        if record.signature.is_empty() {
            if body["event"] == "key_rotated" {
                return Err((
                    ProblemKind::Malformed,
                    "a key_rotated record must be signed (by the key it retires)".into(),
                ));
            }
            self.unsigned_from
                .get_or_insert_with(|| (seq, record.location.clone()));
            return Ok(());
        }
        let signature = BASE64
            .decode(&record.signature)
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or((ProblemKind::Modified, "signature is malformed".to_owned()))?;
        // Strict: refuses small-order keys and R, and non-canonical s (RFC 8032 §5.1.7).
        key.verify_strict(record.body.as_bytes(), &signature)
            .map_err(|_| {
                (
                    ProblemKind::Modified,
                    "signature does not verify (record edited)".to_owned(),
                )
            })?;
        self.unsigned_from = None;
        Ok(())
    }

    fn rotate(&mut self, old: &str, body: &Value, seq: u64) -> Result<(), RotationError> {
        let new_kid = body["new_kid"].as_str().unwrap_or_default();
        let key = body["public_key"]
            .as_str()
            .and_then(|b64| BASE64.decode(b64).ok())
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .filter(|bytes| VerifyingKey::from_bytes(bytes).is_ok())
            .ok_or(RotationError::NoPublicKey)
            .and_then(|bytes| strong_key(&bytes).ok_or(RotationError::WeakKey))?;
        if key_id(&key) != new_kid || new_kid == old {
            return Err(RotationError::WrongKid);
        }
        self.keys.insert(new_kid.to_owned(), key);
        self.retired.insert(old.to_owned(), seq);
        self.rotations.push(new_kid.to_owned());
        self.active = Some(new_kid.to_owned());
        Ok(())
    }

    fn check_checkpoints(&mut self, location: &str) -> Result<(), Problem> {
        self.check_since(location)?;
        let Some(checkpoints) = self.checkpoints.remove(&self.seq) else {
            return Ok(());
        };
        let root = self.frontier.root();
        for signed in checkpoints {
            let problem = |kind, detail: String| Problem {
                kind,
                seq: self.seq,
                location: location.to_owned(),
                detail,
            };
            let active = self.active.as_deref().unwrap_or_default();
            let checkpoint = signed
                .open(|kid| (kid == active).then(|| self.keys.get(kid)).flatten())
                .map_err(|e| {
                    problem(
                        ProblemKind::CheckpointInvalid,
                        format!("checkpoint of size {}: {e}", self.seq),
                    )
                })?;
            if checkpoint.root_hash() != Some(root) || checkpoint.head != self.prev {
                return Err(problem(
                    ProblemKind::CheckpointMismatch,
                    format!(
                        "the checkpoint of {} over {} records does not match the records up to here: history was rewritten",
                        checkpoint.time, checkpoint.size
                    ),
                ));
            }
            self.checked += 1;
        }
        Ok(())
    }

    /// Ends verification; `head` is what Redis says the newest record is (if verifying it).
    pub fn finish(mut self, head: Option<&ChainHead>) -> Result<Verified, Problem> {
        self.check_start()?;
        self.since_reached()?;
        let truncated = |detail: String| Problem {
            kind: ProblemKind::Truncated,
            seq: self.seq + 1,
            location: "end of trail".into(),
            detail,
        };
        if let Some((size, _)) = self.checkpoints.iter().next_back() {
            return Err(truncated(format!(
                "the trail ends at record {}, but a checkpoint covers {size} records: records {}..={size} were cut off",
                self.seq,
                self.seq + 1
            )));
        }
        if let Some((from, location)) = &self.unsigned_from {
            return Err(Problem {
                kind: ProblemKind::Truncated,
                seq: *from,
                location: location.clone(),
                detail: format!(
                    "records {from}..={} are not covered by a signature: the signed record that closed their append was cut off",
                    self.seq
                ),
            });
        }
        if let Some(head) = head
            && (head.seq != self.seq || head.hash != self.prev)
        {
            return Err(truncated(format!(
                "the trail ends at record {}, but its head says {}: records were cut off or replaced",
                self.seq, head.seq
            )));
        }
        Ok(Verified {
            records: self.seq - self.first_seq,
            last_seq: self.seq,
            head: self.prev,
            checkpoints: self.checked,
            active_kid: self.active,
            rotations: self.rotations,
            consistent_with: self.consistent_with,
        })
    }
}

/// Verifies `records` (in order) from `start` against `anchors` and `checkpoints`.
pub fn verify_records(
    records: &[StoredRecord],
    anchors: &[VerifyingKey],
    start: StartPoint,
    checkpoints: &[SignedCheckpoint],
    head: Option<&ChainHead>,
) -> Result<Verified, Problem> {
    verify_records_since(records, anchors, start, checkpoints, head, None)
}

/// [`verify_records`], and the trail must extend `since`, a checkpoint saved from it
/// earlier (see `anchors.rs`).
pub fn verify_records_since(
    records: &[StoredRecord],
    anchors: &[VerifyingKey],
    start: StartPoint,
    checkpoints: &[SignedCheckpoint],
    head: Option<&ChainHead>,
    since: Option<SignedCheckpoint>,
) -> Result<Verified, Problem> {
    let mut verifier = ChainVerifier::new(anchors, start);
    verifier.add_checkpoints(checkpoints)?;
    if let Some(saved) = since {
        verifier.hold_to(saved)?;
    }
    for record in records {
        verifier.push(record)?;
    }
    verifier.finish(head)
}

/// Why a `key_rotated` record cannot introduce its key.
#[derive(Debug, thiserror::Error)]
enum RotationError {
    #[error("key_rotated record without a valid public_key")]
    NoPublicKey,
    #[error("key_rotated record's new_kid does not name its public_key")]
    WrongKid,
    #[error(
        "key_rotated record's public_key is a weak (small-order) or non-canonical point, \
         under which signatures can be forged"
    )]
    WeakKey,
}

/// An Ed25519 public key fit to verify with: canonically encoded (y < p, as its own
/// re-encoding shows) and not of small order. Under a small-order key (the identity, say)
/// a fixed pair such as R = B, s = 1 satisfies the verification equation for any message.
pub fn strong_key(bytes: &[u8; 32]) -> Option<VerifyingKey> {
    let key = VerifyingKey::from_bytes(bytes).ok()?;
    let canonical = key.to_edwards().compress().to_bytes() == *bytes;
    (canonical && !key.is_weak()).then_some(key)
}

/// A problem's kind and detail, before it is placed at a record.
type Finding = (ProblemKind, String);

/// A record's body, if it is JSON in canonical form with a known schema version.
fn canonical_body(record: &StoredRecord) -> Result<Value, Finding> {
    let body: Value = serde_json::from_str(&record.body)
        .map_err(|_| (ProblemKind::Malformed, "body is not JSON".to_owned()))?;
    if canonical_json(&body) != record.body.as_bytes() {
        return Err((
            ProblemKind::Malformed,
            "body is not in canonical form (edited)".into(),
        ));
    }
    if !matches!(body["v"].as_u64(), Some(1..=4)) {
        return Err((
            ProblemKind::Malformed,
            format!("unknown record schema version {}", body["v"]),
        ));
    }
    Ok(body)
}

mod anchors;
#[cfg(test)]
mod tests;
