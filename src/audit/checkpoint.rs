//! Signed checkpoints: "the trail's first `size` records have Merkle root `root`", signed by
//! the key active after record `size`. Like a Certificate Transparency signed tree head, a
//! checkpoint pins history: anything removed or rewritten before `size` no longer matches
//! the root, and a trail shorter than `size` has been truncated.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::canonical::canonical_json;
use super::merkle::{Hash, parse_hash};
use super::signer::AuditSigner;

/// The checkpoint schema version.
pub const CHECKPOINT_VERSION: u64 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub v: u64,
    /// Always `"checkpoint"`, so a checkpoint's bytes can never pass for a record's.
    #[serde(rename = "type")]
    pub kind: String,
    /// Records covered: seq 1 to `size`.
    pub size: u64,
    /// Hex RFC 9162 Merkle root over those records' bodies.
    pub root: String,
    /// Hex SHA-256 of record `size`'s body (the chain head), tying the two structures.
    pub head: String,
    pub time: String,
    pub kid: String,
}

/// A checkpoint as stored: its canonical bytes and their signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub body: String,
    pub signature: String,
}

impl Checkpoint {
    pub fn new(size: u64, root: &Hash, head: &str, kid: &str) -> Self {
        Self {
            v: CHECKPOINT_VERSION,
            kind: "checkpoint".to_owned(),
            size,
            root: hex::encode(root),
            head: head.to_owned(),
            time: crate::clock::now_rfc3339(),
            kid: kid.to_owned(),
        }
    }

    pub fn sign(&self, signer: &AuditSigner) -> SignedCheckpoint {
        let body = serde_json::to_value(self)
            .map(|value| canonical_json(&value))
            .unwrap_or_default();
        SignedCheckpoint {
            signature: BASE64.encode(signer.sign(&body)),
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub fn root_hash(&self) -> Option<Hash> {
        parse_hash(&self.root)
    }
}

/// Logs a checkpoint just appended, in its `checkpoint` field: the line
/// `checkpoints.jsonl` holds, so a log pipeline outside Redis keeps a copy an auditor can
/// hold the trail to later (`audit verify --since`).
pub fn log_appended(body: &str, signature: &str) {
    let signed = SignedCheckpoint {
        body: body.to_owned(),
        signature: signature.to_owned(),
    };
    if let Some(line) = super::files::checkpoint_line(&signed) {
        let line = String::from_utf8_lossy(&line);
        tracing::info!(
            target: "stepgate::audit::checkpoint",
            checkpoint = %line.trim_end(),
            "audit checkpoint"
        );
    }
}

/// Why a stored checkpoint is not to be trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("checkpoint is not canonical JSON of the checkpoint schema")]
    Malformed,
    #[error("checkpoint is signed by unknown key {0:?}")]
    UnknownKey(String),
    #[error("checkpoint signature does not verify")]
    BadSignature,
}

impl SignedCheckpoint {
    /// The checkpoint, if its bytes are canonical and `key_for(kid)` signed them.
    pub fn open<'k>(
        &self,
        key_for: impl Fn(&str) -> Option<&'k VerifyingKey>,
    ) -> Result<Checkpoint, CheckpointError> {
        let value: Value =
            serde_json::from_str(&self.body).map_err(|_| CheckpointError::Malformed)?;
        if canonical_json(&value) != self.body.as_bytes() {
            return Err(CheckpointError::Malformed);
        }
        let checkpoint: Checkpoint =
            serde_json::from_value(value).map_err(|_| CheckpointError::Malformed)?;
        if checkpoint.v != CHECKPOINT_VERSION
            || checkpoint.kind != "checkpoint"
            || checkpoint.root_hash().is_none()
        {
            return Err(CheckpointError::Malformed);
        }
        let key = key_for(&checkpoint.kid)
            .ok_or_else(|| CheckpointError::UnknownKey(checkpoint.kid.clone()))?;
        let signature = BASE64
            .decode(&self.signature)
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or(CheckpointError::BadSignature)?;
        key.verify_strict(self.body.as_bytes(), &signature)
            .map_err(|_| CheckpointError::BadSignature)?;
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::empty_root;

    #[test]
    fn a_signed_checkpoint_opens_with_its_key_only() {
        let signer = AuditSigner::generate();
        let signed = Checkpoint::new(0, &empty_root(), "00", signer.kid()).sign(&signer);
        let key = signer.verifying_key();
        let opened = signed.open(|kid| (kid == signer.kid()).then_some(&key));
        assert_eq!(opened.map(|c| c.size), Ok(0));

        let stranger = AuditSigner::generate().verifying_key();
        assert_eq!(
            signed.open(|_| Some(&stranger)),
            Err(CheckpointError::BadSignature)
        );
        let mut altered = signed.clone();
        altered.body = altered.body.replace("\"size\":0", "\"size\":1");
        assert_eq!(
            altered.open(|_| Some(&key)),
            Err(CheckpointError::BadSignature)
        );
    }
}
