//! Where the directory's files end, and the matching places in Redis: read once per lease,
//! from the ends of the files only (their length does not matter). `entry_of` finds a
//! sink's last record in Redis for every sink.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::{ExportError, PAGE, Position, entry_id, record_seq};
use crate::audit::files::{self, CHECKPOINTS_FILE, FilesError};
use crate::audit::record::sha256_hex;
use crate::audit::store;
use crate::queue::Keys;
use crate::redis_conn::RedisConnection;

/// How much of a file's end is read to find its last line: far more than a record or a
/// checkpoint takes (a record's input is bounded by `server.max_body_bytes`, which stays
/// well below this in any sane configuration; a longer line is read whole).
const TAIL_BYTES: u64 = 1024 * 1024;

pub(super) async fn locate(
    redis: &mut RedisConnection,
    keys: &Keys,
    dir: &Path,
) -> Result<Position, ExportError> {
    std::fs::create_dir_all(dir).map_err(|e| FilesError::new(dir, e))?;
    let (cursor, mark) = read_cursor(redis, keys).await?;
    if let Some(mark) = mark.filter(|mark| mark.starts_with("s3://")) {
        return Err(ExportError::Gap(format!(
            "the trail is exported to S3 ({mark}), not to files: give every replica the same \
             sink ([audit.s3])"
        )));
    }
    let (checkpoint_size, checkpoint_entry) = last_checkpoint(redis, keys, dir).await?;
    let last = last_record(dir)?;
    let file = match files::record_files(dir)?.pop() {
        Some((_, path)) => {
            let size = std::fs::metadata(&path)
                .map_err(|e| FilesError::new(&path, e))?
                .len();
            Some((path, size))
        }
        None => None,
    };
    let Some((seq, hash)) = last else {
        let trimmed = read_trimmed_seq(redis, keys).await?;
        if trimmed > 0 {
            return Err(ExportError::Gap(format!(
                "the directory is empty but Redis holds records from {} on only; export \
                 into the directory that holds records 1..={trimmed}",
                trimmed + 1
            )));
        }
        return Ok(Position {
            checkpoint_size,
            checkpoint_entry,
            file,
            ..Position::default()
        });
    };
    let entry = entry_of(redis, keys, seq, Some(&hash)).await?;
    if let Some(cursor) = cursor.filter(|cursor| *cursor > seq) {
        tracing::warn!(
            dir = %dir.display(),
            files_end = seq,
            cursor,
            "the audit files end before the export cursor: files were removed; the records \
             after them are exported again from Redis"
        );
    }
    Ok(Position {
        seq,
        entry,
        checkpoint_size,
        checkpoint_entry,
        file,
        segment: None,
    })
}

/// The stream entry of record `seq`, which a sink ends with (checking it is the same
/// record, when its body's `hash` is known); `None` when Redis trimmed it and holds what
/// follows it from the start. Read once per lease: the stream holds the unexported records
/// and a bounded tail, so this is short.
pub(super) async fn entry_of(
    redis: &mut RedisConnection,
    keys: &Keys,
    seq: u64,
    hash: Option<&str>,
) -> Result<Option<String>, ExportError> {
    let mut after: Option<String> = None;
    loop {
        let page = store::read_records(redis, keys, after.as_deref(), PAGE).await?;
        for record in &page {
            if record_seq(record) == Some(seq) {
                if hash.is_some_and(|hash| sha256_hex(record.body.as_bytes()) != hash) {
                    return Err(ExportError::Gap(format!(
                        "record {seq} in the sink differs from Redis' record {seq}"
                    )));
                }
                return Ok(entry_id(record));
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = entry_id(last),
            _ => break,
        }
    }
    // Not in Redis: trimmed (fine if nothing after it was trimmed too) or the sink is
    // another trail's. Resuming before the first entry reads from the start.
    let first = store::read_records(redis, keys, None, 1).await?;
    match first.first().and_then(record_seq) {
        Some(first) if first == seq + 1 => Ok(None),
        None if read_trimmed_seq(redis, keys).await? == seq => Ok(None),
        _ => Err(ExportError::Gap(format!(
            "the sink ends at record {seq}, which Redis no longer holds next to its records"
        ))),
    }
}

/// The files' last checkpoint: its size, and its entry in Redis' checkpoint stream if Redis
/// still holds it.
async fn last_checkpoint(
    redis: &mut RedisConnection,
    keys: &Keys,
    dir: &Path,
) -> Result<(u64, Option<String>), ExportError> {
    let path = dir.join(CHECKPOINTS_FILE);
    let Some(line) = last_line(&path)? else {
        return Ok((0, None));
    };
    let Some((body, _)) = files::parse_line("checkpoint", &line) else {
        return Err(FilesError::new(&path, invalid("last line is not a checkpoint")).into());
    };
    let size = serde_json::from_str::<crate::audit::checkpoint::Checkpoint>(&body)
        .map_err(|_| FilesError::new(&path, invalid("last line is not a checkpoint")))?
        .size;
    let mut after: Option<String> = None;
    loop {
        let page = store::read_checkpoints_after(redis, keys, after.as_deref(), PAGE).await?;
        if let Some(found) = page.iter().find(|c| c.signed.body == body) {
            return Ok((size, Some(found.entry.clone())));
        }
        match page.last() {
            // Past its size, it is not in the stream any more.
            Some(last) if page.len() == PAGE && last.size.is_none_or(|last| last <= size) => {
                after = Some(last.entry.clone());
            }
            _ => return Ok((size, None)),
        }
    }
}

/// The export cursor: how far the sink goes, and its mark (where it ends).
pub(super) async fn read_cursor(
    redis: &mut RedisConnection,
    keys: &Keys,
) -> redis::RedisResult<(Option<u64>, Option<String>)> {
    redis::cmd("HMGET")
        .arg(keys.audit_export())
        .arg("seq")
        .arg("sink")
        .query_async(redis)
        .await
}

pub(super) async fn read_trimmed_seq(
    redis: &mut RedisConnection,
    keys: &Keys,
) -> redis::RedisResult<u64> {
    Ok(store::read_start_point(redis, keys).await?.seq)
}

/// The last record in `dir` (seq and body hash), cutting off a torn last line first (a
/// crash mid-write; its record is still in Redis and is written again).
fn last_record(dir: &Path) -> Result<Option<(u64, String)>, FilesError> {
    let Some((_, newest)) = files::record_files(dir)?.pop() else {
        return Ok(None);
    };
    let Some(line) = last_line(&newest)? else {
        // An empty newest file: the one before it ends the trail.
        std::fs::remove_file(&newest).map_err(|e| FilesError::new(&newest, e))?;
        return last_record(dir);
    };
    let (body, _) = files::parse_line("record", &line)
        .ok_or_else(|| FilesError::new(&newest, invalid("last line is not a record")))?;
    let seq = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|b| b["seq"].as_u64())
        .unwrap_or(0);
    Ok(Some((seq, sha256_hex(body.as_bytes()))))
}

/// The last complete line of `path` (`None`: no such file, or no complete line), cutting a
/// torn last line (a crash mid-write) off the file itself, so that the next line written
/// starts a line of its own. Reads only the file's end.
fn last_line(path: &Path) -> Result<Option<String>, FilesError> {
    let fail = |e| FilesError::new(path, e);
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e)),
    };
    let len = file.metadata().map_err(fail)?.len();
    let mut from = len.saturating_sub(TAIL_BYTES);
    loop {
        file.seek(SeekFrom::Start(from)).map_err(fail)?;
        let mut tail = Vec::new();
        (&mut file)
            .take(len - from)
            .read_to_end(&mut tail)
            .map_err(fail)?;
        let complete = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < tail.len() {
            file.set_len(from + complete as u64)
                .and_then(|()| file.sync_data())
                .map_err(fail)?;
        }
        let lines = &tail[..complete];
        let body = lines.strip_suffix(b"\n").unwrap_or(lines);
        match body.iter().rposition(|b| *b == b'\n') {
            Some(start) => return Ok(Some(utf8(path, &body[start + 1..])?)),
            // The whole file was read: its one line (if any) is the last.
            None if from == 0 => {
                return match complete {
                    0 => Ok(None),
                    _ => Ok(Some(utf8(path, body)?)),
                };
            }
            // A line longer than what was read: read more of the end.
            None => from = from.saturating_sub(TAIL_BYTES * 4),
        }
    }
}

fn utf8(path: &Path, bytes: &[u8]) -> Result<String, FilesError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| FilesError::new(path, invalid("not UTF-8")))
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_is_read_from_the_end_and_a_torn_one_is_cut_off()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        assert_eq!(last_line(&path)?, None);
        std::fs::write(&path, b"")?;
        assert_eq!(last_line(&path)?, None);
        std::fs::write(&path, b"torn")?;
        assert_eq!(last_line(&path)?, None);
        assert_eq!(std::fs::read(&path)?, b"");
        std::fs::write(&path, b"one\n")?;
        assert_eq!(last_line(&path)?.as_deref(), Some("one"));
        std::fs::write(&path, b"one\ntwo\nthr")?;
        assert_eq!(last_line(&path)?.as_deref(), Some("two"));
        assert_eq!(std::fs::read(&path)?, b"one\ntwo\n");
        // A last line longer than the first read of the end.
        let long = "x".repeat(TAIL_BYTES as usize + 10);
        std::fs::write(&path, format!("one\n{long}\n"))?;
        assert_eq!(last_line(&path)?, Some(long));
        Ok(())
    }
}
