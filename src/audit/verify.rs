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
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
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
}

impl ChainVerifier {
    pub fn new(anchors: &[VerifyingKey], start: StartPoint) -> Self {
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
            // Checkpoints before a trimmed prefix cannot be checked against records.
            if size > self.first_seq {
                self.checkpoints
                    .entry(size)
                    .or_default()
                    .push(signed.clone());
            }
        }
        Ok(())
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn push(&mut self, record: &StoredRecord) -> Result<(), Problem> {
        let expected = self.seq + 1;
        let problem = |kind, detail: String| Problem {
            kind,
            seq: expected,
            location: record.location.clone(),
            detail,
        };
        let body: Value = serde_json::from_str(&record.body)
            .map_err(|_| problem(ProblemKind::Malformed, "body is not JSON".into()))?;
        if canonical_json(&body) != record.body.as_bytes() {
            return Err(problem(
                ProblemKind::Malformed,
                "body is not in canonical form (edited)".into(),
            ));
        }
        if !matches!(body["v"].as_u64(), Some(1..=4)) {
            return Err(problem(
                ProblemKind::Malformed,
                format!("unknown record schema version {}", body["v"]),
            ));
        }
        let kid = body["kid"].as_str().unwrap_or_default();
        if let Some(retired_at) = self.retired.get(kid) {
            return Err(problem(
                ProblemKind::RetiredKey,
                format!("signed by key {kid}, retired by the rotation at record {retired_at}"),
            ));
        }
        let Some(key) = self.keys.get(kid) else {
            return Err(problem(
                ProblemKind::UnknownKey,
                format!("signed by unknown key {kid:?}"),
            ));
        };
        if let Some(active) = self.active.as_deref().filter(|active| *active != kid) {
            return Err(problem(
                ProblemKind::UnknownKey,
                format!(
                    "signed by key {kid} while key {active} is active, and no rotation introduced it"
                ),
            ));
        }
        let seq = body["seq"].as_u64().unwrap_or(0);
        if seq != expected {
            let detail = if seq > expected {
                format!("seq is {seq} where {expected} was expected: records were removed or moved")
            } else {
                format!(
                    "seq is {seq} where {expected} was expected: a record was inserted, repeated or moved"
                )
            };
            return Err(problem(ProblemKind::Sequence, detail));
        }
        if body["prev"] != self.prev.as_str() {
            return Err(problem(
                ProblemKind::ChainBroken,
                format!(
                    "`prev` is not the hash of record {} ({}): that record or this one was edited",
                    self.seq, self.prev_location
                ),
            ));
        }
        if record.signature.is_empty() {
            if body["event"] == "key_rotated" {
                return Err(problem(
                    ProblemKind::Malformed,
                    "a key_rotated record must be signed (by the key it retires)".into(),
                ));
            }
            self.unsigned_from
                .get_or_insert_with(|| (expected, record.location.clone()));
        } else {
            let signature = BASE64
                .decode(&record.signature)
                .ok()
                .and_then(|bytes| Signature::from_slice(&bytes).ok())
                .ok_or_else(|| problem(ProblemKind::Modified, "signature is malformed".into()))?;
            key.verify(record.body.as_bytes(), &signature)
                .map_err(|_| {
                    problem(
                        ProblemKind::Modified,
                        "signature does not verify (record edited)".into(),
                    )
                })?;
            self.unsigned_from = None;
        }
        if body["event"] == "key_rotated" {
            self.rotate(kid, &body, seq)
                .map_err(|e| problem(ProblemKind::Malformed, e.to_string()))?;
        } else {
            self.active = Some(kid.to_owned());
        }
        self.seq = seq;
        self.prev = sha256_hex(record.body.as_bytes());
        self.prev_location.clone_from(&record.location);
        self.frontier.push(leaf_hash(record.body.as_bytes()));
        self.check_checkpoints(&record.location)
    }

    fn rotate(&mut self, old: &str, body: &Value, seq: u64) -> Result<(), RotationError> {
        let new_kid = body["new_kid"].as_str().unwrap_or_default();
        let key = body["public_key"]
            .as_str()
            .and_then(|b64| BASE64.decode(b64).ok())
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
            .ok_or(RotationError::NoPublicKey)?;
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
    pub fn finish(self, head: Option<&ChainHead>) -> Result<Verified, Problem> {
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
    let mut verifier = ChainVerifier::new(anchors, start);
    verifier.add_checkpoints(checkpoints)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{AuditEvent, EventKind};
    use crate::audit::signer::AuditSigner;

    struct Trail {
        records: Vec<StoredRecord>,
        checkpoints: Vec<SignedCheckpoint>,
        head: ChainHead,
    }

    /// `n` records signed by `first`, rotating to `second` after record `rotate_at`, with a
    /// checkpoint after every 4 records.
    fn trail(first: &AuditSigner, second: &AuditSigner, n: u64, rotate_at: u64) -> Trail {
        let mut head = ChainHead::empty();
        let mut records = Vec::new();
        let mut checkpoints = Vec::new();
        let mut signer = first;
        while head.seq < n {
            let event = if head.seq + 1 == rotate_at {
                let mut rotation = AuditEvent::now(EventKind::KeyRotated);
                rotation.new_kid = Some(second.kid().to_owned());
                rotation.public_key = Some(BASE64.encode(second.verifying_key().as_bytes()));
                rotation
            } else {
                AuditEvent::now(EventKind::Accepted)
            };
            let body = event.body(head.seq + 1, &head.hash, signer.kid());
            head.seq += 1;
            head.hash = sha256_hex(&body);
            head.frontier.push(leaf_hash(&body));
            records.push(StoredRecord {
                location: format!("entry {}", head.seq),
                signature: BASE64.encode(signer.sign(&body)),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            if head.seq == rotate_at {
                signer = second;
            }
            if head.seq % 4 == 0 {
                checkpoints.push(
                    Checkpoint::new(head.seq, &head.frontier.root(), &head.hash, signer.kid())
                        .sign(signer),
                );
            }
        }
        Trail {
            records,
            checkpoints,
            head,
        }
    }

    fn check(
        trail: &Trail,
        records: &[StoredRecord],
        key: &AuditSigner,
    ) -> Result<Verified, Problem> {
        verify_records(
            records,
            &[key.verifying_key()],
            StartPoint::genesis(),
            &trail.checkpoints,
            Some(&trail.head),
        )
    }

    fn resign(record: &mut StoredRecord, signer: &AuditSigner) {
        record.signature = BASE64.encode(signer.sign(record.body.as_bytes()));
    }

    #[test]
    fn an_intact_trail_with_a_rotation_verifies_from_the_first_key_alone() {
        let (first, second) = (AuditSigner::generate(), AuditSigner::generate());
        let trail = trail(&first, &second, 10, 6);
        let verified = check(&trail, &trail.records, &first);
        assert_eq!(
            verified.map(|v| (v.records, v.checkpoints, v.active_kid, v.rotations)),
            Ok((
                10,
                2,
                Some(second.kid().to_owned()),
                vec![second.kid().to_owned()]
            ))
        );
    }

    #[test]
    fn every_kind_of_tampering_is_found_at_its_record() {
        let (first, second) = (AuditSigner::generate(), AuditSigner::generate());
        let trail = trail(&first, &second, 10, 6);
        let found = |records: &[StoredRecord]| {
            check(&trail, records, &first)
                .err()
                .map(|p| (p.kind, p.seq))
        };

        let mut modified = trail.records.clone();
        modified[2].body = modified[2].body.replace("accepted", "denied");
        assert_eq!(found(&modified), Some((ProblemKind::Modified, 3)));

        let mut removed = trail.records.clone();
        removed.remove(1);
        assert_eq!(found(&removed), Some((ProblemKind::Sequence, 2)));

        let mut inserted = trail.records.clone();
        inserted.insert(3, trail.records[1].clone());
        assert_eq!(found(&inserted), Some((ProblemKind::Sequence, 4)));

        let mut reordered = trail.records.clone();
        reordered.swap(1, 3);
        assert_eq!(found(&reordered), Some((ProblemKind::Sequence, 2)));

        // Cut after the checkpoint at 8: the checkpoint notices (the head alone would too).
        assert_eq!(
            found(&trail.records[..7]),
            Some((ProblemKind::Truncated, 8))
        );

        let stranger = AuditSigner::generate();
        let mut wrong_key = trail.records.clone();
        let forged = AuditEvent::now(EventKind::Accepted).body(
            3,
            &sha256_hex(wrong_key[1].body.as_bytes()),
            stranger.kid(),
        );
        wrong_key[2].body = String::from_utf8_lossy(&forged).into_owned();
        resign(&mut wrong_key[2], &stranger);
        assert_eq!(found(&wrong_key), Some((ProblemKind::UnknownKey, 3)));

        // Record 8 rewritten and re-signed with the key that was retired at record 6.
        let mut retired = trail.records.clone();
        let forged = AuditEvent::now(EventKind::Started).body(
            8,
            &sha256_hex(retired[6].body.as_bytes()),
            first.kid(),
        );
        retired[7].body = String::from_utf8_lossy(&forged).into_owned();
        resign(&mut retired[7], &first);
        assert_eq!(found(&retired), Some((ProblemKind::RetiredKey, 8)));

        // A rewritten history, consistently re-chained and re-signed with the current key:
        // only the checkpoint can tell.
        let mut rewritten = trail.records.clone();
        let mut prev = sha256_hex(rewritten[6].body.as_bytes());
        for (i, record) in rewritten.iter_mut().enumerate().skip(7) {
            let body = AuditEvent::now(EventKind::Denied).body(i as u64 + 1, &prev, second.kid());
            prev = sha256_hex(&body);
            record.body = String::from_utf8_lossy(&body).into_owned();
            resign(record, &second);
        }
        let mut head = trail.head.clone();
        head.hash = prev;
        assert_eq!(
            verify_records(
                &rewritten,
                &[first.verifying_key()],
                StartPoint::genesis(),
                &trail.checkpoints,
                Some(&head)
            )
            .err()
            .map(|p| (p.kind, p.seq)),
            Some((ProblemKind::CheckpointMismatch, 8))
        );
    }

    #[test]
    fn records_between_signatures_are_covered_by_the_next_one() {
        let (first, second) = (AuditSigner::generate(), AuditSigner::generate());
        let mut trail = trail(&first, &second, 9, 100);
        // Appended in three batches: only each batch's last record is signed.
        for (i, record) in trail.records.iter_mut().enumerate() {
            if (i + 1) % 3 != 0 {
                record.signature.clear();
            }
        }
        assert!(check(&trail, &trail.records, &first).is_ok());

        let mut edited = trail.records.clone();
        edited[4].body = edited[4].body.replace("accepted", "denied");
        let found = check(&trail, &edited, &first).err();
        assert_eq!(
            found.as_ref().map(|p| (p.kind, p.seq)),
            Some((ProblemKind::ChainBroken, 6))
        );
        assert!(found.is_some_and(|p| p.detail.contains("record 5 (entry 5)")));

        // The signed record closing the last batch cut off (the head rewritten to match).
        let mut head = trail.head.clone();
        head.seq = 8;
        head.hash = sha256_hex(trail.records[7].body.as_bytes());
        let cut = verify_records(
            &trail.records[..8],
            &[first.verifying_key()],
            StartPoint::genesis(),
            &trail.checkpoints,
            Some(&head),
        );
        assert_eq!(
            cut.err().map(|p| (p.kind, p.seq)),
            Some((ProblemKind::Truncated, 7))
        );
    }

    #[test]
    fn a_trimmed_trail_verifies_from_its_start_point() {
        let (first, second) = (AuditSigner::generate(), AuditSigner::generate());
        let trail = trail(&first, &second, 10, 20);
        let mut frontier = Frontier::default();
        for record in &trail.records[..5] {
            frontier.push(leaf_hash(record.body.as_bytes()));
        }
        let start = StartPoint {
            seq: 5,
            hash: sha256_hex(trail.records[4].body.as_bytes()),
            frontier,
            kid: Some(first.kid().to_owned()),
        };
        let verified = verify_records(
            &trail.records[5..],
            &[first.verifying_key()],
            start,
            &trail.checkpoints,
            Some(&trail.head),
        );
        assert_eq!(verified.map(|v| (v.records, v.checkpoints)), Ok((5, 1)));
    }
}
