//! Where the S3 sink's objects end, read once per lease: at the segment the export cursor
//! names (checked against Redis), or past it where segments were written before a crash let
//! the cursor move (each checked line by line against Redis, which still holds them). A
//! cursor that does not name one of this prefix's segments (moved by the files sink, or by
//! a version that did not name segments) is taken only if the prefix holds a segment that
//! ends where it says; else it is refused: the records it counts are not in this prefix.

use super::files_sink::export_line;
use super::locate::{entry_of, read_cursor, read_trimmed_seq};
use super::s3_sink::S3Sink;
use super::{ExportError, PAGE, Position, entry_id, record_seq};
use crate::audit::files::parse_line;
use crate::audit::record::sha256_hex;
use crate::audit::store;
use crate::config::MAX_SEGMENT_RECORDS;
use crate::queue::Keys;
use crate::redis_conn::RedisConnection;

/// Segments that may lie past the cursor: the one a crash left before its cursor moved, and
/// one an exporter that lost its lease may still have landed, and one more for luck.
const MAX_PAST_CURSOR: usize = 3;

impl S3Sink {
    /// Where the objects end (see the module's comment).
    pub(super) async fn locate(
        &self,
        redis: &mut RedisConnection,
        keys: &Keys,
    ) -> Result<Position, ExportError> {
        let bucket = &self.settings.bucket;
        let (cursor, mark) = read_cursor(redis, keys).await?;
        let mut seq = cursor.unwrap_or(0);
        let mut segment = None;
        let mut hash = None;
        if seq > 0 {
            let named = mark
                .as_deref()
                .and_then(|mark| mark.strip_prefix(&bucket.location.to_string()))
                .filter(|key| key.starts_with("records/"))
                .map(|relative| format!("{}{relative}", bucket.location.prefix));
            let (key, last_hash) = match self.segment_ending_at(named, seq).await? {
                Some(found) => found,
                None => {
                    return Err(ExportError::Gap(format!(
                        "records 1..={seq} were exported to {}, but {} holds no segment \
                         ending at record {seq}: copy them there first (as segments of at most \
                         {MAX_SEGMENT_RECORDS} records), or export to the sink that holds them",
                        mark.as_deref().unwrap_or("another sink"),
                        bucket.location
                    )));
                }
            };
            hash = Some(last_hash);
            segment = Some(bucket.location.url(&key));
        }
        for past in 0..=MAX_PAST_CURSOR {
            let key = bucket.location.record_key(seq + 1);
            let object = bucket.get(&key).await?;
            if object.is_some() && past == MAX_PAST_CURSOR {
                return Err(ExportError::Gap(format!(
                    "more than {MAX_PAST_CURSOR} segments past the export cursor in {}",
                    bucket.location
                )));
            }
            let Some(object) = object else {
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
            seq = same_as_redis(redis, keys, seq, hash.as_deref(), &object)
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

    /// The segment ending at record `seq` and its last record's hash: `named` (the cursor's
    /// mark) if it does, else the last segment that starts at most `MAX_SEGMENT_RECORDS`
    /// records before `seq`, found by one bounded listing.
    async fn segment_ending_at(
        &self,
        named: Option<String>,
        seq: u64,
    ) -> Result<Option<(String, String)>, ExportError> {
        let bucket = &self.settings.bucket;
        let ends_at_seq = |object: Option<Vec<u8>>| {
            object
                .as_deref()
                .and_then(last_record)
                .filter(|(last, _)| *last == seq)
                .map(|(_, hash)| hash)
        };
        if let Some(key) = named
            && let Some(hash) = ends_at_seq(bucket.get(&key).await?)
        {
            return Ok(Some((key, hash)));
        }
        let Some(key) = bucket
            .last_segment_from(seq.saturating_sub(MAX_SEGMENT_RECORDS), seq)
            .await?
        else {
            return Ok(None);
        };
        let found = ends_at_seq(bucket.get(&key).await?).map(|hash| (key.clone(), hash));
        if found.is_some() {
            tracing::warn!(segment = %bucket.location.url(&key), seq, "the audit export cursor did not name the S3 segment it ends with; found it");
        }
        Ok(found)
    }
}

/// Whether `object` holds, line for line, the records Redis holds after record `after`
/// (whose body hashes to `hash`, when known); its last seq if it does.
async fn same_as_redis(
    redis: &mut RedisConnection,
    keys: &Keys,
    after: u64,
    hash: Option<&str>,
    object: &[u8],
) -> Result<Option<u64>, ExportError> {
    let text = String::from_utf8_lossy(object);
    let lines: Vec<&str> = text.lines().collect();
    let mut entry = match after {
        0 => None,
        _ => entry_of(redis, keys, after, hash).await?,
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
