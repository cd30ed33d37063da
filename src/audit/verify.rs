//! Checks an audit trail with nothing but the public key(s).
//!
//! For each record, in stream order: the body is canonical JSON of a known schema version,
//! signed by a known key; its `seq` follows the previous one and its `prev` is the previous
//! body's SHA-256. Finally the newest record must be the head Redis recorded, so records cut
//! off the end are noticed too.

use std::collections::HashMap;

use crate::redis_conn::RedisConnection;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde_json::Value;

use super::record::{GENESIS_HASH, SCHEMA_VERSION, canonical_json, sha256_hex};
use super::signer::key_id;
use crate::queue::Keys;

/// One stored record.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    /// The Redis stream entry id, to say where a problem is.
    pub entry_id: String,
    pub body: String,
    pub signature: String,
}

/// A trail that verified.
#[derive(Debug, PartialEq, Eq)]
pub struct VerifiedTrail {
    pub records: u64,
    pub head: String,
}

/// The first problem found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("record {position} (stream entry {entry_id}): {problem}")]
pub struct BrokenTrail {
    /// 1-based position in the stream.
    pub position: u64,
    pub entry_id: String,
    pub problem: String,
}

/// Verifies `records` (in stream order) against `keys`; `head` is Redis' `(seq, hash)`.
pub fn verify_records(
    records: &[StoredRecord],
    keys: &[VerifyingKey],
    head: Option<(u64, String)>,
) -> Result<VerifiedTrail, BrokenTrail> {
    let keys: HashMap<String, &VerifyingKey> = keys.iter().map(|k| (key_id(k), k)).collect();
    let mut prev = GENESIS_HASH.to_owned();
    let mut last_entry = String::from("-");
    for (i, record) in records.iter().enumerate() {
        let position = i as u64 + 1;
        let broken = |problem: String| BrokenTrail {
            position,
            entry_id: record.entry_id.clone(),
            problem,
        };
        let body: Value =
            serde_json::from_str(&record.body).map_err(|_| broken("body is not JSON".into()))?;
        if canonical_json(&body) != record.body.as_bytes() {
            return Err(broken("body is not in canonical form (altered)".into()));
        }
        if body["v"] != SCHEMA_VERSION {
            return Err(broken(format!(
                "unknown record schema version {}",
                body["v"]
            )));
        }
        let kid = body["kid"].as_str().unwrap_or_default();
        let key = keys
            .get(kid)
            .ok_or_else(|| broken(format!("signed by unknown key {kid:?}")))?;
        let signature = BASE64
            .decode(&record.signature)
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or_else(|| broken("signature is malformed".into()))?;
        key.verify(record.body.as_bytes(), &signature)
            .map_err(|_| broken("signature does not verify (record altered)".into()))?;
        if body["seq"] != position {
            return Err(broken(format!(
                "sequence number is {} where {position} was expected (a record was removed, inserted or reordered)",
                body["seq"]
            )));
        }
        if body["prev"] != prev.as_str() {
            return Err(broken(
                "previous-record hash does not match (chain broken)".into(),
            ));
        }
        prev = sha256_hex(record.body.as_bytes());
        last_entry.clone_from(&record.entry_id);
    }
    let count = records.len() as u64;
    if let Some((head_seq, head_hash)) = head
        && (head_seq != count || (count > 0 && head_hash != prev))
    {
        return Err(BrokenTrail {
            position: count,
            entry_id: last_entry,
            problem: format!(
                "the trail ends at record {count}, but its head says {head_seq}: records were cut off the end"
            ),
        });
    }
    Ok(VerifiedTrail {
        records: count,
        head: prev,
    })
}

/// Reads the whole trail and its head from Redis.
pub async fn read_trail(
    redis: &mut RedisConnection,
    keys: &Keys,
) -> redis::RedisResult<(Vec<StoredRecord>, Option<(u64, String)>)> {
    const PAGE: usize = 1_000;
    let mut records = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys.audit_log())
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(redis)
            .await?;
        let full = page.ids.len() == PAGE;
        for entry in page.ids {
            let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
            records.push(StoredRecord {
                body: field("body"),
                signature: field("sig"),
                entry_id: entry.id.clone(),
            });
            start = format!("({}", entry.id);
        }
        if !full {
            break;
        }
    }
    let (seq, hash): (Option<u64>, Option<String>) = redis::cmd("HMGET")
        .arg(keys.audit_head())
        .arg("seq")
        .arg("hash")
        .query_async(redis)
        .await?;
    Ok((records, seq.zip(hash)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{AuditEvent, EventKind};
    use crate::audit::signer::AuditSigner;

    fn trail(signer: &AuditSigner, n: u64) -> (Vec<StoredRecord>, (u64, String)) {
        let mut prev = GENESIS_HASH.to_owned();
        let mut records = Vec::new();
        for seq in 1..=n {
            let body = AuditEvent::now(EventKind::Accepted).body(seq, &prev, signer.kid());
            prev = sha256_hex(&body);
            records.push(StoredRecord {
                entry_id: format!("{seq}-0"),
                signature: BASE64.encode(signer.sign(&body)),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        (records, (n, prev))
    }

    #[test]
    fn an_intact_trail_verifies() {
        let signer = AuditSigner::generate();
        let (records, head) = trail(&signer, 5);
        let verified = verify_records(&records, &[signer.verifying_key()], Some(head.clone()));
        assert_eq!(
            verified,
            Ok(VerifiedTrail {
                records: 5,
                head: head.1
            })
        );
    }

    #[test]
    fn tampering_is_found_and_located() {
        let signer = AuditSigner::generate();
        let keys = [signer.verifying_key()];
        let (records, head) = trail(&signer, 5);
        let position = |records: &[StoredRecord]| {
            verify_records(records, &keys, Some(head.clone()))
                .err()
                .map(|e| e.position)
        };

        let mut altered = records.clone();
        altered[2].body = altered[2].body.replace("accepted", "denied");
        assert_eq!(position(&altered), Some(3));

        let mut removed = records.clone();
        removed.remove(1);
        assert_eq!(position(&removed), Some(2));

        let mut reordered = records.clone();
        reordered.swap(1, 3);
        assert_eq!(position(&reordered), Some(2));

        assert_eq!(
            position(&records[..4]),
            Some(4),
            "truncation is noticed through the head"
        );

        let stranger = AuditSigner::generate();
        assert!(verify_records(&records, &[stranger.verifying_key()], None).is_err());
    }
}
