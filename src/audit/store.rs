//! The trail's place in Redis, all in the `{audit}` hash slot: the record stream, the
//! checkpoint stream, and the head — `seq`, `hash` (of the newest body), `kid` (the key
//! signing now), `frontier` (the Merkle frontier, so any replica can checkpoint), `cp` and
//! `cpt` (size and time of the newest checkpoint).

use redis::streams::StreamRangeReply;

use super::checkpoint::SignedCheckpoint;
use super::merkle::Frontier;
use super::record::GENESIS_HASH;
use super::verify::StartPoint;
use crate::queue::Keys;
use crate::redis_conn::RedisConnection;

/// One stored record.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    /// Where it is, to say where a problem is: a stream entry id or a file and line.
    pub location: String,
    pub body: String,
    pub signature: String,
}

/// The chain head as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
    /// `None` for an empty trail.
    pub kid: Option<String>,
    pub frontier: Frontier,
    pub checkpoint_size: u64,
    pub checkpoint_ms: u64,
}

impl ChainHead {
    pub fn empty() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
            kid: None,
            frontier: Frontier::default(),
            checkpoint_size: 0,
            checkpoint_ms: 0,
        }
    }

    /// From the head's fields `seq, hash, kid, frontier, cp, cpt`; `None` when the head
    /// predates the frontier (a trail written by an earlier version) and must be rebuilt.
    pub fn from_fields(fields: &[Option<String>]) -> Option<Self> {
        let field = |i: usize| fields.get(i).cloned().flatten().filter(|f| !f.is_empty());
        let seq: u64 = field(0).and_then(|s| s.parse().ok()).unwrap_or(0);
        if seq == 0 {
            return Some(Self::empty());
        }
        let frontier = Frontier::decode(&field(3)?)?;
        (frontier.size() == seq).then(|| Self {
            seq,
            hash: field(1).unwrap_or_default(),
            kid: field(2),
            frontier,
            checkpoint_size: field(4).and_then(|s| s.parse().ok()).unwrap_or(0),
            checkpoint_ms: field(5).and_then(|s| s.parse().ok()).unwrap_or(0),
        })
    }
}

const HEAD_FIELDS: [&str; 6] = ["seq", "hash", "kid", "frontier", "cp", "cpt"];

/// The head's raw fields (see [`ChainHead::from_fields`]).
pub async fn read_head_fields(
    redis: &mut RedisConnection,
    keys: &Keys,
) -> redis::RedisResult<Vec<Option<String>>> {
    redis::cmd("HMGET")
        .arg(keys.audit_head())
        .arg(&HEAD_FIELDS[..])
        .query_async(redis)
        .await
}

/// Records after stream entry `after` (`None`: from the start), at most `count`.
pub async fn read_records(
    redis: &mut RedisConnection,
    keys: &Keys,
    after: Option<&str>,
    count: usize,
) -> redis::RedisResult<Vec<StoredRecord>> {
    let page = read_stream(redis, &keys.audit_log(), after, count).await?;
    Ok(page
        .ids
        .into_iter()
        .map(|entry| StoredRecord {
            body: entry.get("body").unwrap_or_default(),
            signature: entry.get("sig").unwrap_or_default(),
            location: format!("stream entry {}", entry.id),
        })
        .collect())
}

/// Every record, in stream order.
pub async fn read_all_records(
    redis: &mut RedisConnection,
    keys: &Keys,
) -> redis::RedisResult<Vec<StoredRecord>> {
    const PAGE: usize = 2_000;
    let mut records: Vec<StoredRecord> = Vec::new();
    loop {
        let after = records
            .last()
            .and_then(|r| r.location.strip_prefix("stream entry "));
        let page = read_records(redis, keys, after, PAGE).await?;
        let full = page.len() == PAGE;
        records.extend(page);
        if !full {
            return Ok(records);
        }
    }
}

/// Every checkpoint, oldest first.
pub async fn read_checkpoints(
    redis: &mut RedisConnection,
    keys: &Keys,
) -> redis::RedisResult<Vec<SignedCheckpoint>> {
    let reply = read_stream(redis, &keys.audit_checkpoints(), None, usize::MAX).await?;
    Ok(reply
        .ids
        .into_iter()
        .map(|entry| SignedCheckpoint {
            body: entry.get("body").unwrap_or_default(),
            signature: entry.get("sig").unwrap_or_default(),
        })
        .collect())
}

/// The newest signed checkpoint, if any.
pub async fn newest_checkpoint(
    redis: &mut RedisConnection,
    keys: &Keys,
) -> redis::RedisResult<Option<SignedCheckpoint>> {
    let newest = newest_entry(redis, &keys.audit_checkpoints()).await?;
    Ok(newest.map(|entry| SignedCheckpoint {
        body: entry.get("body").unwrap_or_default(),
        signature: entry.get("sig").unwrap_or_default(),
    }))
}

/// The newest entry of the stream at `key`, if any.
pub(super) async fn newest_entry(
    redis: &mut RedisConnection,
    key: &str,
) -> redis::RedisResult<Option<redis::streams::StreamId>> {
    let page: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(redis)
        .await?;
    Ok(page.ids.into_iter().next())
}

/// A checkpoint with its stream entry id.
#[derive(Debug, Clone)]
pub struct StoredCheckpoint {
    pub entry: String,
    /// `None` for an entry that is not a checkpoint (written by someone else): never
    /// exported, never a trim boundary.
    pub size: Option<u64>,
    pub signed: SignedCheckpoint,
}

impl StoredCheckpoint {
    fn from_entry(entry: &redis::streams::StreamId) -> Self {
        let body: String = entry.get("body").unwrap_or_default();
        Self {
            entry: entry.id.clone(),
            size: serde_json::from_str::<super::checkpoint::Checkpoint>(&body)
                .ok()
                .map(|checkpoint| checkpoint.size)
                .filter(|size| *size > 0),
            signed: SignedCheckpoint {
                body,
                signature: entry.get("sig").unwrap_or_default(),
            },
        }
    }
}

/// Checkpoints after stream entry `after` (`None`: from the start), at most `count`.
pub async fn read_checkpoints_after(
    redis: &mut RedisConnection,
    keys: &Keys,
    after: Option<&str>,
    count: usize,
) -> redis::RedisResult<Vec<StoredCheckpoint>> {
    let page = read_stream(redis, &keys.audit_checkpoints(), after, count).await?;
    Ok(page.ids.iter().map(StoredCheckpoint::from_entry).collect())
}

/// The newest signed checkpoint covering at most `limit` records: retention trims only to
/// such a boundary, so the trim point is always one a signature vouches for. Read from the
/// oldest, which retention keeps at the last trim point, so the search is as short as the
/// stretch being trimmed.
/// An entry claiming more records than the chain's `head` holds is no checkpoint of it
/// (someone else wrote it) and is passed over.
pub async fn checkpoint_at_most(
    redis: &mut RedisConnection,
    keys: &Keys,
    limit: u64,
    head: u64,
) -> redis::RedisResult<Option<StoredCheckpoint>> {
    const PAGE: usize = 64;
    let mut found = None;
    let mut after: Option<String> = None;
    loop {
        let page = read_checkpoints_after(redis, keys, after.as_deref(), PAGE).await?;
        for checkpoint in &page {
            match checkpoint.size {
                Some(size) if size > head => {}
                Some(size) if size > limit => return Ok(found),
                Some(_) => found = Some(checkpoint.clone()),
                None => {}
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.entry.clone()),
            _ => return Ok(found),
        }
    }
}

async fn read_stream(
    redis: &mut RedisConnection,
    key: &str,
    after: Option<&str>,
    count: usize,
) -> redis::RedisResult<StreamRangeReply> {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(key);
    match after {
        Some(id) => cmd.arg(format!("({id}")),
        None => cmd.arg("-"),
    };
    cmd.arg("+");
    if count != usize::MAX {
        cmd.arg("COUNT").arg(count);
    }
    cmd.query_async(redis).await
}

/// Where the Redis stream starts when its front was trimmed (see retention).
pub async fn read_start_point(
    redis: &mut RedisConnection,
    keys: &Keys,
) -> redis::RedisResult<StartPoint> {
    let (seq, hash, frontier, kid): (Option<u64>, Option<String>, Option<String>, Option<String>) =
        redis::cmd("HMGET")
            .arg(keys.audit_trimmed())
            .arg(&["seq", "hash", "frontier", "kid"][..])
            .query_async(redis)
            .await?;
    Ok(
        match (seq, hash, frontier.as_deref().and_then(Frontier::decode)) {
            (Some(seq), Some(hash), Some(frontier)) if seq > 0 => StartPoint {
                seq,
                hash,
                frontier,
                kid: kid.filter(|kid| !kid.is_empty()),
            },
            _ => StartPoint::genesis(),
        },
    )
}
