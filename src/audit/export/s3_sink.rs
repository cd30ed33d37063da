//! The S3 sink: records leave Redis in segments, one immutable object per segment (written
//! once `segment_records` wait or the oldest waiting record is `segment_age` old, so that
//! objects stay few at any rate), and the newest checkpoint they reach as an object of its
//! own. Nothing is appended or replaced: the export cursor in Redis says where the objects
//! end, and a segment written just before a crash (the cursor not yet moved) is found at
//! the next one's key and taken as written.

use std::time::Duration;

use super::files_sink::export_line;
use super::locate::{entry_of, read_trimmed_seq};
use super::{ExportError, Position, entry_id, record_seq};
use crate::audit::files::parse_line;
use crate::audit::record::sha256_hex;
use crate::audit::s3::{Put, TrailBucket};
use crate::audit::store::{self, StoredRecord};
use crate::queue::Keys;
use crate::redis_conn::RedisConnection;

pub struct S3Settings {
    pub bucket: TrailBucket,
    pub object_lock_days: Option<u32>,
    pub segment_records: u64,
    pub segment_age: Duration,
}

pub(super) struct S3Sink {
    pub(super) settings: S3Settings,
}

impl S3Sink {
    /// Records read, and written, per segment.
    pub(super) fn page(&self) -> usize {
        usize::try_from(self.settings.segment_records).unwrap_or(usize::MAX)
    }

    /// Whether a segment is due: enough records wait, or the oldest has waited long enough
    /// (its stream entry's time). Two short reads, whatever the backlog.
    pub(super) async fn due(
        &self,
        redis: &mut RedisConnection,
        keys: &Keys,
        position: &Position,
    ) -> Result<bool, ExportError> {
        let head: Option<u64> = redis::cmd("HGET")
            .arg(keys.audit_head())
            .arg("seq")
            .query_async(redis)
            .await?;
        let waiting = head.unwrap_or(0).saturating_sub(position.seq);
        if waiting == 0 {
            return Ok(false);
        }
        if waiting >= self.settings.segment_records {
            return Ok(true);
        }
        let oldest = store::read_records(redis, keys, position.entry.as_deref(), 1).await?;
        let Some(entry) = oldest.first().and_then(entry_id) else {
            return Ok(false);
        };
        let written_ms = entry
            .split('-')
            .next()
            .and_then(|ms| ms.parse::<u64>().ok())
            .unwrap_or(0);
        let age = crate::clock::unix_ms().saturating_sub(written_ms);
        Ok(u128::from(age) >= self.settings.segment_age.as_millis())
    }

    /// One segment of `records` (those after `position`), as one new object.
    pub(super) async fn put_segment(
        &self,
        position: &mut Position,
        records: &[StoredRecord],
    ) -> Result<(), ExportError> {
        let mut body = Vec::new();
        let mut first = None;
        for record in records {
            let seq = record_seq(record).unwrap_or(position.seq + 1);
            if seq <= position.seq {
                continue;
            }
            first.get_or_insert(seq);
            body.extend(export_line(record));
            position.seq = seq;
            position.entry = entry_id(record);
        }
        let Some(first) = first else {
            return Ok(());
        };
        let bucket = &self.settings.bucket;
        let key = bucket.location.record_key(first);
        match bucket
            .put_new(&key, body, self.settings.object_lock_days)
            .await?
        {
            Put::Written => Ok(()),
            Put::Exists => Err(ExportError::Gap(format!(
                "s3://{}/{key} exists already (written by an exporter that lost its lease, or \
                 by another deployment exporting to this prefix); locating the end again",
                bucket.location.bucket
            ))),
        }
    }

    /// The newest of `checkpoints` (size, line), which vouches for every record before it;
    /// already there (a round that failed after writing it) is as good as written.
    pub(super) async fn put_checkpoint(
        &self,
        checkpoints: &[(u64, Vec<u8>)],
    ) -> Result<(), ExportError> {
        let Some((size, line)) = checkpoints.last() else {
            return Ok(());
        };
        let bucket = &self.settings.bucket;
        let key = bucket.location.checkpoint_key(*size);
        bucket
            .put_new(&key, line.clone(), self.settings.object_lock_days)
            .await?;
        Ok(())
    }

    /// Where the objects end: at the export cursor, or past it where segments were written
    /// before a crash let the cursor move. Reads a few objects, not the prefix.
    pub(super) async fn locate(
        &self,
        redis: &mut RedisConnection,
        keys: &Keys,
    ) -> Result<Position, ExportError> {
        let bucket = &self.settings.bucket;
        let cursor: Option<u64> = redis::cmd("HGET")
            .arg(keys.audit_export())
            .arg("seq")
            .query_async(redis)
            .await?;
        let mut seq = cursor.unwrap_or(0);
        let mut hash = None;
        loop {
            let key = bucket.location.record_key(seq + 1);
            let Some(object) = bucket.get(&key).await? else {
                break;
            };
            let (last, last_hash) = last_record(&object)
                .filter(|(last, _)| *last > seq)
                .ok_or_else(|| {
                    ExportError::Gap(format!(
                        "s3://{}/{key} does not continue the trail after record {seq}",
                        bucket.location.bucket
                    ))
                })?;
            seq = last;
            hash = Some(last_hash);
        }
        if seq == 0 {
            let trimmed = read_trimmed_seq(redis, keys).await?;
            if trimmed > 0 {
                return Err(ExportError::Gap(format!(
                    "{} holds no records but Redis holds records from {} on only; export to \
                     the sink that holds records 1..={trimmed}",
                    bucket.location,
                    trimmed + 1
                )));
            }
            return Ok(Position::default());
        }
        if hash.is_none() && !bucket.holds_records().await? {
            return Err(ExportError::Gap(format!(
                "{} holds no records, but records 1..={seq} were exported (to files, before \
                 the sink was S3?): copy them there first, as segments",
                bucket.location
            )));
        }
        let entry = entry_of(redis, keys, seq, hash.as_deref()).await?;
        Ok(Position {
            seq,
            entry,
            ..Position::default()
        })
    }
}

/// The seq and body hash of a segment's last record.
fn last_record(object: &[u8]) -> Option<(u64, String)> {
    let text = std::str::from_utf8(object).ok()?;
    let line = text.lines().rev().find(|line| !line.trim().is_empty())?;
    let (body, _) = parse_line("record", line)?;
    let seq = serde_json::from_str::<serde_json::Value>(&body)
        .ok()?
        .get("seq")?
        .as_u64()?;
    Some((seq, sha256_hex(body.as_bytes())))
}
