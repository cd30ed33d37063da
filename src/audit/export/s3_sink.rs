//! The S3 sink: records leave Redis in segments, one immutable object per segment (written
//! once `segment_records` wait or the oldest waiting record is `segment_age` old, so that
//! objects stay few at any rate), and the newest checkpoint they reach as an object of its
//! own. Nothing is appended or replaced: the export cursor in Redis says where the objects
//! end, and a segment written just before a crash (the cursor not yet moved) is found at
//! the next one's key and taken as written.

use std::time::Duration;

use super::files_sink::export_line;
use super::locate::{entry_of, read_trimmed_seq};
use super::{ExportError, PAGE, Position, entry_id, record_seq};
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
    /// (its stream entry's time). Three short commands, whatever the backlog.
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
        // Redis' clock, which stamped the entry: this host's may be off.
        let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(redis).await?;
        let now_ms = seconds * 1_000 + micros / 1_000;
        Ok(u128::from(now_ms.saturating_sub(written_ms)) >= self.settings.segment_age.as_millis())
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
        let written = bucket
            .put_new(&key, body.clone(), self.settings.object_lock_days)
            .await?;
        // "Exists" with these very bytes: an earlier attempt landed, its answer was lost.
        if written == Put::Exists && bucket.get(&key).await?.as_deref() != Some(&body[..]) {
            return Err(ExportError::Gap(format!(
                "s3://{}/{key} exists already with other records (written by an exporter \
                 that lost its lease, or by another deployment exporting to this prefix); \
                 locating the end again",
                bucket.location.bucket
            )));
        }
        position.segment = Some(bucket.location.url(&key));
        Ok(())
    }

    /// `checkpoints` (size, line) as one object named by the newest size; already there (a
    /// round that failed after writing it) is as good as written.
    pub(super) async fn put_checkpoints(
        &self,
        checkpoints: &[(u64, Vec<u8>)],
    ) -> Result<(), ExportError> {
        let Some((size, _)) = checkpoints.last() else {
            return Ok(());
        };
        let lines: Vec<u8> = checkpoints
            .iter()
            .flat_map(|(_, line)| line.iter().copied())
            .collect();
        let bucket = &self.settings.bucket;
        let key = bucket.location.checkpoint_key(*size);
        bucket
            .put_new(&key, lines, self.settings.object_lock_days)
            .await?;
        Ok(())
    }

    /// Where the objects end: at the segment the export cursor names (checked against
    /// Redis), or past it where segments were written before a crash let the cursor move
    /// (each checked line by line against Redis, which still holds them). A cursor that
    /// another sink moved is refused: those records are not in this prefix.
    pub(super) async fn locate(
        &self,
        redis: &mut RedisConnection,
        keys: &Keys,
    ) -> Result<Position, ExportError> {
        let bucket = &self.settings.bucket;
        let (cursor, mark): (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(keys.audit_export())
            .arg("seq")
            .arg("sink")
            .query_async(redis)
            .await?;
        let mut seq = cursor.unwrap_or(0);
        let mut segment = None;
        let mut hash = None;
        if seq > 0 {
            let ours = mark
                .as_deref()
                .and_then(|mark| mark.strip_prefix(&bucket.location.to_string()))
                .filter(|key| key.starts_with("records/"));
            let Some(relative) = ours else {
                return Err(ExportError::Gap(format!(
                    "records 1..={seq} were exported to {}, not to {}: copy them there first \
                     (as segments), or export to the sink that holds them",
                    mark.as_deref().unwrap_or("another sink"),
                    bucket.location
                )));
            };
            let key = format!("{}{relative}", bucket.location.prefix);
            let object = bucket.get(&key).await?.ok_or_else(|| {
                ExportError::Gap(format!(
                    "s3://{}/{key}, where the export cursor says the trail ends, is missing",
                    bucket.location.bucket
                ))
            })?;
            let (last, last_hash) = last_record(&object)
                .filter(|(last, _)| *last == seq)
                .ok_or_else(|| {
                    ExportError::Gap(format!(
                        "s3://{}/{key} does not end at record {seq}, as the export cursor says",
                        bucket.location.bucket
                    ))
                })?;
            seq = last;
            hash = Some(last_hash);
            segment = Some(bucket.location.url(&key));
        }
        for _ in 0..MAX_PAST_CURSOR {
            let key = bucket.location.record_key(seq + 1);
            let Some(object) = bucket.get(&key).await? else {
                let entry = match seq {
                    0 => None,
                    _ => entry_of(redis, keys, seq, hash.as_deref()).await?,
                };
                if seq == 0 {
                    let trimmed = read_trimmed_seq(redis, keys).await?;
                    if trimmed > 0 {
                        return Err(ExportError::Gap(format!(
                            "{} holds no records but Redis holds records from {} on only; \
                             export to the sink that holds records 1..={trimmed}",
                            bucket.location,
                            trimmed + 1
                        )));
                    }
                }
                return Ok(Position {
                    seq,
                    entry,
                    segment,
                    ..Position::default()
                });
            };
            seq = same_as_redis(redis, keys, seq, &object)
                .await?
                .ok_or_else(|| {
                    ExportError::Gap(format!(
                        "s3://{}/{key} is not this trail's records {}.. as Redis holds them",
                        bucket.location.bucket,
                        seq + 1
                    ))
                })?;
            hash = None;
            segment = Some(bucket.location.url(&key));
        }
        Err(ExportError::Gap(format!(
            "more than {MAX_PAST_CURSOR} segments past the export cursor in {}",
            bucket.location
        )))
    }
}

/// Segments that may lie past the cursor: the one a crash left before its cursor moved, and
/// one an exporter that lost its lease may still have landed.
const MAX_PAST_CURSOR: usize = 3;

/// Whether `object` holds, line for line, the records Redis holds after record `after`;
/// its last seq if it does.
async fn same_as_redis(
    redis: &mut RedisConnection,
    keys: &Keys,
    after: u64,
    object: &[u8],
) -> Result<Option<u64>, ExportError> {
    let text = String::from_utf8_lossy(object);
    let lines: Vec<&str> = text.lines().collect();
    let mut entry = match after {
        0 => None,
        _ => entry_of(redis, keys, after, None).await?,
    };
    let mut expected = after + 1;
    let mut at = 0;
    while at < lines.len() {
        let page = store::read_records(redis, keys, entry.as_deref(), PAGE).await?;
        if page.is_empty() {
            return Ok(None);
        }
        for record in &page {
            let Some(line) = lines.get(at) else {
                break;
            };
            let same = record_seq(record) == Some(expected)
                && export_line(record) == format!("{line}\n").into_bytes();
            if !same {
                return Ok(None);
            }
            expected += 1;
            at += 1;
        }
        entry = page.last().and_then(entry_id);
    }
    Ok((at > 0).then_some(expected - 1))
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
