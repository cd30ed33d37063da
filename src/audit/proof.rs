//! Inclusion and consistency proofs as self-contained JSON documents: everything needed to
//! check them is inside, except the public key. Any RFC 9162 + Ed25519 implementation can
//! check one (the tests do it with a short Python script).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, CheckpointError, SignedCheckpoint};
use super::merkle::{self, Hash, leaf_hash, parse_hash};
use super::signer::key_id;
use super::store::StoredRecord;

/// A signed object as carried in a proof: canonical bytes and base64 Ed25519 signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub body: String,
    pub signature: String,
}

impl From<&SignedCheckpoint> for Signed {
    fn from(c: &SignedCheckpoint) -> Self {
        Self {
            body: c.body.clone(),
            signature: c.signature.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Proof {
    /// Record `leaf_index + 1` is in the tree the checkpoint signs.
    Inclusion {
        leaf_index: u64,
        tree_size: u64,
        record: Signed,
        /// Hex hashes, leaf to root (RFC 9162 §2.1.3).
        audit_path: Vec<String>,
        checkpoint: Signed,
    },
    /// The tree `old` signs is a prefix of the tree `new` signs.
    Consistency {
        old: Signed,
        new: Signed,
        /// Hex hashes (RFC 9162 §2.1.4).
        path: Vec<String>,
    },
}

/// Why a proof cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProveError {
    #[error("no checkpoint covers record {0} yet (the newest covers {1}); wait for the next one")]
    NotCheckpointed(u64, u64),
    #[error("there is no checkpoint of size {0}")]
    NoSuchCheckpoint(u64),
    #[error("record {0} does not exist")]
    NoSuchRecord(u64),
    #[error(
        "the trail holds {0} records from record 1 on, fewer than the {1} the proof needs (trimmed? add --files)"
    )]
    MissingRecords(u64, u64),
    #[error("{0} must be less than or equal to {1}")]
    Order(u64, u64),
}

fn sizes(checkpoints: &[SignedCheckpoint]) -> Vec<(u64, &SignedCheckpoint)> {
    let mut sized: Vec<_> = checkpoints
        .iter()
        .filter_map(|c| {
            serde_json::from_str::<Checkpoint>(&c.body)
                .ok()
                .map(|p| (p.size, c))
        })
        .collect();
    sized.sort_by_key(|(size, _)| *size);
    sized
}

/// The leaf hashes of the first `size` records; `records` must start at record 1.
fn leaves(records: &[StoredRecord], size: u64) -> Result<Vec<Hash>, ProveError> {
    if (records.len() as u64) < size {
        return Err(ProveError::MissingRecords(records.len() as u64, size));
    }
    Ok(records[..size as usize]
        .iter()
        .map(|r| leaf_hash(r.body.as_bytes()))
        .collect())
}

/// Proves record `seq` is under `at` (a checkpoint size), or under the newest checkpoint.
pub fn prove_inclusion(
    records: &[StoredRecord],
    checkpoints: &[SignedCheckpoint],
    seq: u64,
    at: Option<u64>,
) -> Result<Proof, ProveError> {
    if seq == 0 {
        return Err(ProveError::NoSuchRecord(seq));
    }
    let sized = sizes(checkpoints);
    let (size, checkpoint) = match at {
        Some(at) => sized
            .iter()
            .find(|(size, _)| *size == at)
            .ok_or(ProveError::NoSuchCheckpoint(at))?,
        None => sized.last().ok_or(ProveError::NotCheckpointed(seq, 0))?,
    };
    if seq > *size {
        return Err(ProveError::NotCheckpointed(seq, *size));
    }
    let leaves = leaves(records, *size)?;
    let index = (seq - 1) as usize;
    let record = &records[index];
    Ok(Proof::Inclusion {
        leaf_index: seq - 1,
        tree_size: *size,
        record: Signed {
            body: record.body.clone(),
            signature: record.signature.clone(),
        },
        audit_path: merkle::inclusion_proof(index, &leaves)
            .iter()
            .map(hex::encode)
            .collect(),
        checkpoint: (*checkpoint).into(),
    })
}

/// Proves the checkpoint of size `old` is consistent with the one of size `new`.
pub fn prove_consistency(
    records: &[StoredRecord],
    checkpoints: &[SignedCheckpoint],
    old: u64,
    new: u64,
) -> Result<Proof, ProveError> {
    if old > new {
        return Err(ProveError::Order(old, new));
    }
    let sized = sizes(checkpoints);
    let find = |size: u64| {
        sized
            .iter()
            .find(|(s, _)| *s == size)
            .map(|(_, c)| *c)
            .ok_or(ProveError::NoSuchCheckpoint(size))
    };
    let (old_checkpoint, new_checkpoint) = (find(old)?, find(new)?);
    let leaves = leaves(records, new)?;
    Ok(Proof::Consistency {
        old: old_checkpoint.into(),
        new: new_checkpoint.into(),
        path: merkle::consistency_proof(old as usize, &leaves)
            .iter()
            .map(hex::encode)
            .collect(),
    })
}

/// What a valid proof shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProofChecked {
    pub statement: String,
    /// The checkpoints' key ids.
    pub kids: Vec<String>,
}

/// Why a proof does not hold.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{0:?} is not a SHA-256 hash")]
    NotAHash(String),
    #[error("tree_size differs from the checkpoint's size")]
    SizeMismatch,
    #[error("the record body is not JSON")]
    RecordNotJson,
    #[error("the record's seq is not leaf_index + 1")]
    WrongSeq,
    #[error("the record's signature is malformed")]
    MalformedSignature,
    #[error("the record's signature does not verify")]
    BadSignature,
    #[error("the audit path does not lead to the checkpoint's root")]
    WrongRoot,
    #[error("a checkpoint root is not a hash")]
    RootNotAHash,
    #[error("the trail of {old} records is not a prefix of the trail of {new} records")]
    NotAPrefix { old: u64, new: u64 },
}

/// Checks `proof` with the public keys alone.
pub fn verify_proof(proof: &Proof, keys: &[VerifyingKey]) -> Result<ProofChecked, ProofError> {
    let open = |signed: &Signed| -> Result<Checkpoint, ProofError> {
        Ok(SignedCheckpoint {
            body: signed.body.clone(),
            signature: signed.signature.clone(),
        }
        .open(|kid| keys.iter().find(|k| key_id(k) == kid))?)
    };
    let hashes = |hexes: &[String]| -> Result<Vec<Hash>, ProofError> {
        hexes
            .iter()
            .map(|h| parse_hash(h).ok_or_else(|| ProofError::NotAHash(h.clone())))
            .collect()
    };
    match proof {
        Proof::Inclusion {
            leaf_index,
            tree_size,
            record,
            audit_path,
            checkpoint,
        } => {
            let checkpoint = open(checkpoint)?;
            if checkpoint.size != *tree_size {
                return Err(ProofError::SizeMismatch);
            }
            let body: serde_json::Value =
                serde_json::from_str(&record.body).map_err(|_| ProofError::RecordNotJson)?;
            if body["seq"].as_u64() != Some(leaf_index + 1) {
                return Err(ProofError::WrongSeq);
            }
            check_record_signature(record, &body, keys)?;
            let root = merkle::root_from_inclusion(
                *leaf_index,
                *tree_size,
                leaf_hash(record.body.as_bytes()),
                &hashes(audit_path)?,
            );
            if root.is_none() || root != checkpoint.root_hash() {
                return Err(ProofError::WrongRoot);
            }
            Ok(ProofChecked {
                statement: format!(
                    "record {} is included in the trail of {} records signed at {}",
                    leaf_index + 1,
                    tree_size,
                    checkpoint.time
                ),
                kids: vec![checkpoint.kid],
            })
        }
        Proof::Consistency { old, new, path } => {
            let (old, new) = (open(old)?, open(new)?);
            let (Some(old_root), Some(new_root)) = (old.root_hash(), new.root_hash()) else {
                return Err(ProofError::RootNotAHash);
            };
            if !merkle::verify_consistency(old.size, new.size, &old_root, &new_root, &hashes(path)?)
            {
                return Err(ProofError::NotAPrefix {
                    old: old.size,
                    new: new.size,
                });
            }
            Ok(ProofChecked {
                statement: format!(
                    "the first {} records (checkpoint of {}) are unchanged in the trail of {} records (checkpoint of {})",
                    old.size, old.time, new.size, new.time
                ),
                kids: vec![old.kid, new.kid],
            })
        }
    }
}

/// The record's own signature, where its key is among those given (a record from before a
/// rotation is signed by an older key) and it is signed (a batch is signed at its end).
fn check_record_signature(
    record: &Signed,
    body: &serde_json::Value,
    keys: &[VerifyingKey],
) -> Result<(), ProofError> {
    let record_kid = body["kid"].as_str().unwrap_or_default();
    let Some(key) = keys
        .iter()
        .find(|k| key_id(k) == record_kid)
        .filter(|_| !record.signature.is_empty())
    else {
        return Ok(());
    };
    let signature = BASE64
        .decode(&record.signature)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or(ProofError::MalformedSignature)?;
    key.verify_strict(record.body.as_bytes(), &signature)
        .map_err(|_| ProofError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::Frontier;
    use crate::audit::record::{AuditEvent, EventKind, GENESIS_HASH, sha256_hex};
    use crate::audit::signer::AuditSigner;

    fn trail(signer: &AuditSigner, n: u64) -> (Vec<StoredRecord>, Vec<SignedCheckpoint>) {
        let (mut records, mut checkpoints) = (Vec::new(), Vec::new());
        let mut prev = GENESIS_HASH.to_owned();
        let mut frontier = Frontier::default();
        for seq in 1..=n {
            let body = AuditEvent::now(EventKind::Started).body(seq, &prev, signer.kid());
            prev = sha256_hex(&body);
            frontier.push(leaf_hash(&body));
            records.push(StoredRecord {
                location: String::new(),
                signature: BASE64.encode(signer.sign(&body)),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            if seq.is_multiple_of(5) {
                checkpoints
                    .push(Checkpoint::new(seq, &frontier.root(), &prev, signer.kid()).sign(signer));
            }
        }
        (records, checkpoints)
    }

    #[test]
    fn proofs_verify_with_the_public_key_and_fail_otherwise() {
        let signer = AuditSigner::generate();
        let keys = [signer.verifying_key()];
        let (records, checkpoints) = trail(&signer, 23);
        for seq in 1..=20 {
            let proof = prove_inclusion(&records, &checkpoints, seq, None);
            assert!(
                proof.as_ref().is_ok_and(|p| verify_proof(p, &keys).is_ok()),
                "record {seq}"
            );
        }
        assert_eq!(
            prove_inclusion(&records, &checkpoints, 21, None),
            Err(ProveError::NotCheckpointed(21, 20))
        );
        let consistency = prove_consistency(&records, &checkpoints, 5, 15);
        assert!(
            consistency
                .as_ref()
                .is_ok_and(|p| verify_proof(p, &keys).is_ok())
        );

        let stranger = [AuditSigner::generate().verifying_key()];
        assert!(
            consistency
                .as_ref()
                .is_ok_and(|p| verify_proof(p, &stranger).is_err())
        );
        let Ok(Proof::Inclusion {
            leaf_index,
            tree_size,
            record,
            audit_path,
            checkpoint,
        }) = prove_inclusion(&records, &checkpoints, 7, None)
        else {
            panic!("no proof");
        };
        let forged = Proof::Inclusion {
            leaf_index,
            tree_size,
            record: Signed {
                body: records[8].body.clone(),
                signature: records[8].signature.clone(),
            },
            audit_path,
            checkpoint,
        };
        assert!(verify_proof(&forged, &keys).is_err());
        let _ = record;
    }
}
