//! A whole trail as its sources hold it: the Redis stream (live, possibly trimmed at the
//! front), a sink (the exported JSON Lines files or S3 objects, complete from record 1),
//! or a sink and Redis joined — the records both hold must be byte-identical.

use std::path::Path;

use super::checkpoint::SignedCheckpoint;
use super::files;
use super::record::sha256_hex;
use super::store::{self, ChainHead, StoredRecord};
use super::verify::{Problem, ProblemKind, StartPoint};
use crate::queue::Keys;
use crate::redis_conn::RedisConnection;

/// Records in order from `start`, the checkpoints over them, and Redis' head (if read).
#[derive(Debug, Clone)]
pub struct Trail {
    pub start: StartPoint,
    pub records: Vec<StoredRecord>,
    pub checkpoints: Vec<SignedCheckpoint>,
    pub head: Option<ChainHead>,
}

impl Trail {
    /// The seq of its last record (0: none, or unreadable).
    pub fn last_seq(&self) -> u64 {
        self.records.last().and_then(record_seq).unwrap_or(0)
    }
}

/// Why a source could not be read (as opposed to read and found wrong).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read the trail from Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Files(#[from] files::FilesError),
    #[error(transparent)]
    S3(#[from] super::s3::S3Error),
}

pub async fn from_redis(redis: &mut RedisConnection, keys: &Keys) -> Result<Trail, ReadError> {
    let start = store::read_start_point(redis, keys).await?;
    let records = store::read_all_records(redis, keys).await?;
    let checkpoints = store::read_checkpoints(redis, keys).await?;
    let head_fields = store::read_head_fields(redis, keys).await?;
    Ok(Trail {
        start,
        records,
        checkpoints,
        // A head from before frontiers still has seq and hash.
        head: ChainHead::from_fields(&head_fields).or_else(|| {
            let seq = head_fields.first().cloned().flatten()?.parse().ok()?;
            let hash = head_fields.get(1).cloned().flatten()?;
            Some(ChainHead {
                seq,
                hash,
                ..ChainHead::empty()
            })
        }),
    })
}

pub fn from_files(dir: &Path) -> Result<Trail, ReadError> {
    let (records, checkpoints) = files::read_dir(dir)?;
    Ok(Trail {
        start: StartPoint::genesis(),
        records,
        checkpoints,
        head: None,
    })
}

/// The trail under an S3 prefix (complete from record 1, as the files are).
pub async fn from_s3(bucket: &super::s3::TrailBucket) -> Result<Trail, ReadError> {
    let (records, checkpoints) = bucket.read_trail().await?;
    Ok(Trail {
        start: StartPoint::genesis(),
        records,
        checkpoints,
        head: None,
    })
}

/// A sink's trail (files or S3) continued by the records Redis holds beyond it; where both hold a
/// record, the bytes must agree.
pub fn join(files: Trail, redis: Trail) -> Result<Trail, Problem> {
    let mut joined = files;
    let last_in_files = joined.records.len() as u64;
    for record in redis.records {
        let seq = record_seq(&record);
        match seq {
            Some(seq) if seq >= 1 && seq <= last_in_files => {
                let in_files = &joined.records[(seq - 1) as usize];
                if in_files.body != record.body || in_files.signature != record.signature {
                    return Err(Problem {
                        kind: ProblemKind::Diverged,
                        seq,
                        location: format!("{} and {}", in_files.location, record.location),
                        detail: "the files and Redis hold different records under this seq".into(),
                    });
                }
            }
            _ => joined.records.push(record),
        }
    }
    // Both hold the checkpoints over what both hold: each is taken once (linear time).
    let mut seen: std::collections::HashSet<(String, String)> = joined
        .checkpoints
        .iter()
        .map(|c| (c.body.clone(), c.signature.clone()))
        .collect();
    for checkpoint in redis.checkpoints {
        if seen.insert((checkpoint.body.clone(), checkpoint.signature.clone())) {
            joined.checkpoints.push(checkpoint);
        }
    }
    joined.head = redis.head;
    // Redis is read first, so the sink may have gone on past Redis' head meanwhile: then the
    // head must be one of the sink's records, and the sink's own checkpoints vouch for the
    // rest.
    if let Some(head) = &joined.head
        && joined.records.len() as u64 > head.seq
    {
        let at = joined
            .records
            .iter()
            .rev()
            .find(|record| record_seq(record) == Some(head.seq));
        if at.is_some_and(|record| sha256_hex(record.body.as_bytes()) != head.hash) {
            return Err(Problem {
                kind: ProblemKind::Diverged,
                seq: head.seq,
                location: "Redis' chain head".into(),
                detail: "the sink's record under the head's seq is not the one the head names"
                    .into(),
            });
        }
        joined.head = None;
    }
    Ok(joined)
}

fn record_seq(record: &StoredRecord) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(&record.body)
        .ok()?
        .get("seq")?
        .as_u64()
}
