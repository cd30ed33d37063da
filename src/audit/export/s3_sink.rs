//! The S3 sink: records leave Redis in segments, one immutable object per segment (written
//! once `segment_records` wait or the oldest waiting record is `segment_age` old, so that
//! objects stay few at any rate; at most `MAX_SEGMENT_BYTES`), and the checkpoints a round
//! reaches as one object. Nothing is appended or replaced: the export cursor in Redis says
//! where the objects end (`s3_locate.rs`).

use std::time::Duration;

use super::files_sink::export_line;
use super::{ExportError, PAGE, Position, entry_id, record_seq};
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

/// A segment's records stop here, whatever `segment_records` says (records can carry large
/// inputs): a segment is built in memory and must go up within a PUT's time.
const MAX_SEGMENT_BYTES: usize = 16 * 1024 * 1024;

pub(super) struct S3Sink {
    pub(super) settings: S3Settings,
}

impl S3Sink {
    /// The next segment's records: those after `position`, read a page at a time, up to
    /// `segment_records` or `MAX_SEGMENT_BYTES`.
    pub(super) async fn read_segment(
        &self,
        redis: &mut RedisConnection,
        keys: &Keys,
        position: &Position,
    ) -> Result<Vec<StoredRecord>, ExportError> {
        let wanted = usize::try_from(self.settings.segment_records).unwrap_or(usize::MAX);
        let mut records: Vec<StoredRecord> = Vec::new();
        let mut bytes = 0;
        let mut after = position.entry.clone();
        while records.len() < wanted && bytes < MAX_SEGMENT_BYTES {
            let page = store::read_records(
                redis,
                keys,
                after.as_deref(),
                PAGE.min(wanted - records.len()),
            )
            .await?;
            let Some(last) = page.last() else {
                break;
            };
            after = entry_id(last);
            let full = page.len() == PAGE;
            for record in page {
                bytes += record.body.len() + record.signature.len();
                records.push(record);
                if bytes >= MAX_SEGMENT_BYTES {
                    break;
                }
            }
            if !full {
                break;
            }
        }
        Ok(records)
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
        let key = self.settings.bucket.location.record_key(first);
        self.put_once(&key, body).await?;
        position.segment = Some(self.settings.bucket.location.url(&key));
        Ok(())
    }

    /// Writes `body` at `key` unless it is there already; there with these very bytes is as
    /// good as written (an earlier attempt landed and its answer was lost, or a round failed
    /// after it), there with others is a conflict: another exporter's, or another trail's.
    async fn put_once(&self, key: &str, body: Vec<u8>) -> Result<(), ExportError> {
        let bucket = &self.settings.bucket;
        let digest = sha256_hex(&body);
        let written = bucket
            .put_new(key, body, self.settings.object_lock_days)
            .await?;
        if written == Put::Exists
            && bucket.get(key).await?.map(|there| sha256_hex(&there)) != Some(digest)
        {
            return Err(ExportError::Gap(format!(
                "{} exists already with other contents (written by an exporter that lost its \
                 lease, or by another deployment exporting to this prefix); locating the end \
                 again",
                bucket.location.url(key)
            )));
        }
        Ok(())
    }

    /// `checkpoints` (size, line) as one object named by the newest size.
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
        let key = self.settings.bucket.location.checkpoint_key(*size);
        self.put_once(&key, lines).await
    }
}
