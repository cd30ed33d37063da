//! Copies the trail from Redis into rotated JSON Lines files, and trims Redis behind it.
//!
//! One exporter at a time holds a lease in Redis (several replicas may be configured to
//! export; the others stand by), so the files are written in order by one hand; the lease
//! is renewed and checked before every page and fenced (`export_lease.rs`). The files
//! are the exporter's memory: it resumes after the last record it finds in its directory,
//! so the directory should be the same durable volume for every process that exports. A
//! record is counted as exported (the cursor in Redis) only after its file is synced.
//!
//! Retention: with `keep_records` set, records beyond the newest `keep_records` are deleted
//! from Redis, but only up to the newest checkpoint and only once exported; the trimmed
//! prefix's last seq, hash, Merkle frontier and key stay in Redis, so the rest keeps
//! verifying on its own, and files plus Redis verify as a whole.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::checkpoint::Checkpoint;
use super::export_lease::Lease;
use super::files::{self, CHECKPOINTS_FILE, FilesError};
use super::merkle::leaf_hash;
use super::record::sha256_hex;
use super::scripts::{Trim, TrimArgs, TrimKeys};
use super::store::{self, StoredRecord};
use super::verify::StartPoint;
use crate::queue::Keys;
use crate::redis_conn::RedisConnection;

const ROUND: Duration = Duration::from_secs(1);
const PAGE: usize = 1_000;

#[derive(Debug, Clone)]
pub struct ExportSettings {
    pub dir: PathBuf,
    /// A new file once the current one holds this many bytes.
    pub rotate_bytes: u64,
    /// Keep at most this many records in Redis (0: keep all).
    pub keep_records: u64,
}

#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error("{0}")]
    Gap(String),
}

/// Where the files end.
#[derive(Debug, Clone, Default)]
struct Position {
    seq: u64,
    /// The Redis stream entry of record `seq` (`None` before the first).
    entry: Option<String>,
    checkpoints: u64,
}

pub struct Exporter {
    redis: RedisConnection,
    keys: Keys,
    settings: ExportSettings,
    lease: Lease,
    position: Option<Position>,
}

impl Exporter {
    pub fn new(redis: RedisConnection, keys: Keys, settings: ExportSettings) -> Self {
        Self {
            redis,
            keys,
            settings,
            lease: Lease::new(),
            position: None,
        }
    }

    /// Exports every `ROUND` until `shutdown`; then gives up the lease.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.round().await {
                tracing::error!(error = %e, dir = %self.settings.dir.display(), "audit export failed; retrying");
                // Re-read where the files end before the next try.
                self.position = None;
            }
            tokio::select! {
                () = tokio::time::sleep(ROUND) => {}
                () = shutdown.cancelled() => break,
            }
        }
        self.release().await;
    }

    /// Gives up the lease, if this exporter holds it.
    async fn release(&mut self) {
        self.lease.release(&mut self.redis, &self.keys).await;
    }

    async fn round(&mut self) -> Result<(), ExportError> {
        let before = self.lease.token();
        if !self.lease.take(&mut self.redis, &self.keys).await? {
            self.position = None;
            return Ok(());
        }
        if self.lease.token() != before {
            // A new lease: another exporter may have written the files since.
            self.position = None;
        }
        let mut position = match self.position.take() {
            Some(position) => position,
            None => self.locate().await?,
        };
        loop {
            let records =
                store::read_records(&mut self.redis, &self.keys, position.entry.as_deref(), PAGE)
                    .await?;
            if records.is_empty() {
                break;
            }
            // Renewed and checked before every page: a lease lost mid-round (another replica
            // took over) stops the writing here, and the files are located afresh.
            if !self.lease.still_held(&mut self.redis, &self.keys).await? {
                self.position = None;
                return Ok(());
            }
            self.append_records(&mut position, &records)?;
            if !self
                .lease
                .advance(&mut self.redis, &self.keys, position.seq)
                .await?
            {
                self.position = None;
                return Ok(());
            }
            if records.len() < PAGE {
                break;
            }
        }
        if !self.lease.still_held(&mut self.redis, &self.keys).await? {
            self.position = None;
            return Ok(());
        }
        self.export_checkpoints(&mut position).await?;
        self.position = Some(position.clone());
        if self.settings.keep_records > 0 {
            self.trim(position.seq).await?;
        }
        Ok(())
    }

    /// Where the directory's files end, and the matching stream entry.
    async fn locate(&mut self) -> Result<Position, ExportError> {
        let dir = &self.settings.dir;
        std::fs::create_dir_all(dir).map_err(|e| FilesError::new(dir, e))?;
        let last = last_record(dir)?;
        let checkpoints = count_lines(&dir.join(CHECKPOINTS_FILE))?;
        let Some((seq, hash)) = last else {
            let trimmed = read_trimmed_seq(&mut self.redis, &self.keys).await?;
            if trimmed > 0 {
                return Err(ExportError::Gap(format!(
                    "the directory is empty but Redis holds records from {} on only; export \
                     into the directory that holds records 1..={trimmed}",
                    trimmed + 1
                )));
            }
            return Ok(Position {
                seq: 0,
                entry: None,
                checkpoints,
            });
        };
        // Find record `seq` in the stream (once per lease), checking it is the same record.
        let mut after: Option<String> = None;
        loop {
            let page =
                store::read_records(&mut self.redis, &self.keys, after.as_deref(), PAGE).await?;
            for record in &page {
                if record_seq(record) == Some(seq) {
                    if sha256_hex(record.body.as_bytes()) != hash {
                        return Err(ExportError::Gap(format!(
                            "record {seq} in the files differs from Redis' record {seq}"
                        )));
                    }
                    return Ok(Position {
                        seq,
                        entry: entry_id(record),
                        checkpoints,
                    });
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = entry_id(last),
                _ => break,
            }
        }
        // Not in Redis: trimmed (fine if nothing after it was trimmed too) or the files
        // are from elsewhere.
        let first = store::read_records(&mut self.redis, &self.keys, None, 1).await?;
        match first.first().and_then(record_seq) {
            Some(first) if first == seq + 1 => Ok(Position {
                seq,
                // Resume before the first entry: read from the start.
                entry: None,
                checkpoints,
            }),
            None if read_trimmed_seq(&mut self.redis, &self.keys).await? == seq => Ok(Position {
                seq,
                entry: None,
                checkpoints,
            }),
            _ => Err(ExportError::Gap(format!(
                "the files end at record {seq}, which Redis no longer holds next to its records"
            ))),
        }
    }

    fn append_records(
        &self,
        position: &mut Position,
        records: &[StoredRecord],
    ) -> Result<(), ExportError> {
        let dir = &self.settings.dir;
        let mut current = files::record_files(dir)?.pop().map(|(_, path)| path);
        let mut size = match &current {
            Some(path) => std::fs::metadata(path)
                .map_err(|e| FilesError::new(path, e))?
                .len(),
            None => 0,
        };
        // (file, lines) in order: a file is full once it reaches rotate_bytes.
        let mut writes: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        for record in records {
            let seq = record_seq(record).unwrap_or(position.seq + 1);
            if seq <= position.seq {
                continue;
            }
            // A record that is not JSON is exported as-is under its seq, so verification
            // of the files reports it just as verification of Redis does.
            let line = files::record_line(&record.body, &record.signature).unwrap_or_else(|| {
                format!(
                    "{{\"record\":{},\"sig\":{}}}\n",
                    serde_json::Value::String(record.body.clone()),
                    serde_json::Value::String(record.signature.clone())
                )
                .into_bytes()
            });
            let path = match current.take() {
                Some(path) if size < self.settings.rotate_bytes => path,
                _ => {
                    size = 0;
                    files::record_file(dir, seq)
                }
            };
            match writes.last_mut() {
                Some((last, lines)) if *last == path => lines.extend_from_slice(&line),
                _ => writes.push((path.clone(), line.clone())),
            }
            size += line.len() as u64;
            current = Some(path);
            position.seq = seq;
            position.entry = entry_id(record);
        }
        let new_files = writes.iter().any(|(path, _)| !path.exists());
        for (path, lines) in writes {
            append_synced(&path, &lines)?;
        }
        if new_files {
            // New directory entries must be durable too.
            if let Ok(handle) = std::fs::File::open(dir) {
                let _ = handle.sync_all();
            }
        }
        Ok(())
    }

    /// Checkpoints the files' records reach, in order, after those already exported.
    async fn export_checkpoints(&mut self, position: &mut Position) -> Result<(), ExportError> {
        let checkpoints = store::read_checkpoints(&mut self.redis, &self.keys).await?;
        let mut lines = Vec::new();
        for checkpoint in checkpoints.iter().skip(position.checkpoints as usize) {
            let size = serde_json::from_str::<Checkpoint>(&checkpoint.body)
                .map(|c| c.size)
                .unwrap_or(u64::MAX);
            if size > position.seq {
                break;
            }
            lines.extend(files::checkpoint_line(checkpoint).unwrap_or_default());
            position.checkpoints += 1;
        }
        if lines.is_empty() {
            return Ok(());
        }
        append_synced(&self.settings.dir.join(CHECKPOINTS_FILE), &lines)?;
        Ok(())
    }

    /// Deletes exported, checkpointed records beyond the newest `keep_records`, up to the
    /// newest checkpoint boundary that allows.
    async fn trim(&mut self, exported: u64) -> Result<(), ExportError> {
        let head = store::read_head_fields(&mut self.redis, &self.keys).await?;
        let Some(head) = store::ChainHead::from_fields(&head) else {
            return Ok(());
        };
        let wanted = exported
            .min(head.checkpoint_size)
            .min(head.seq.saturating_sub(self.settings.keep_records));
        // Only to a checkpoint's size: verification from Redis alone starts at the trim
        // marker and accepts it only where a signed checkpoint vouches for it.
        let limit = store::checkpoint_size_at_most(&mut self.redis, &self.keys, wanted).await?;
        let StartPoint {
            seq: mut trimmed_seq,
            mut hash,
            mut frontier,
            mut kid,
        } = store::read_start_point(&mut self.redis, &self.keys).await?;
        if limit <= trimmed_seq {
            return Ok(());
        }
        let expected = trimmed_seq;
        let records = store::read_records(
            &mut self.redis,
            &self.keys,
            None,
            (limit - trimmed_seq) as usize,
        )
        .await?;
        let mut ids = Vec::new();
        for record in &records {
            let Some(seq) = record_seq(record).filter(|seq| *seq == trimmed_seq + 1) else {
                break;
            };
            let body: serde_json::Value = serde_json::from_str(&record.body).unwrap_or_default();
            kid = body["new_kid"]
                .as_str()
                .or(body["kid"].as_str())
                .map(str::to_owned);
            hash = sha256_hex(record.body.as_bytes());
            frontier.push(leaf_hash(record.body.as_bytes()));
            trimmed_seq = seq;
            ids.extend(entry_id(record));
        }
        if ids.is_empty() {
            return Ok(());
        }
        let keys = TrimKeys {
            marker: self.keys.audit_trimmed(),
            log: self.keys.audit_log(),
            fence: self.keys.audit_export_fence(),
        };
        let args = TrimArgs {
            token: self.lease.token(),
            expected_seq: expected,
            seq: trimmed_seq,
            hash: &hash,
            frontier: frontier.encode(),
            kid: kid.as_deref().unwrap_or_default(),
            entry_ids: &ids,
        };
        let trimmed: i64 = Trim::invocation(keys, &args)
            .invoke_async(&mut self.redis)
            .await?;
        if trimmed == 1 {
            tracing::info!(
                through = trimmed_seq,
                records = ids.len(),
                "audit records trimmed from Redis (exported and checkpointed)"
            );
        }
        Ok(())
    }
}

fn record_seq(record: &StoredRecord) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(&record.body)
        .ok()?
        .get("seq")?
        .as_u64()
}

fn entry_id(record: &StoredRecord) -> Option<String> {
    record
        .location
        .strip_prefix("stream entry ")
        .map(str::to_owned)
}

async fn read_trimmed_seq(redis: &mut RedisConnection, keys: &Keys) -> redis::RedisResult<u64> {
    Ok(store::read_start_point(redis, keys).await?.seq)
}

/// The last record in `dir` (seq and body hash), cutting off a torn last line first (a
/// crash mid-write; its record is still in Redis and is written again).
fn last_record(dir: &Path) -> Result<Option<(u64, String)>, FilesError> {
    let Some((_, newest)) = files::record_files(dir)?.pop() else {
        return Ok(None);
    };
    let text = complete_lines(&newest)?;
    let Some(line) = text.lines().last() else {
        // An empty newest file: the one before it ends the trail.
        std::fs::remove_file(&newest).map_err(|e| FilesError::new(&newest, e))?;
        return last_record(dir);
    };
    let (body, _) = files::parse_line("record", line).ok_or_else(|| {
        FilesError::new(
            &newest,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "last line is not a record"),
        )
    })?;
    let seq = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|b| b["seq"].as_u64())
        .unwrap_or(0);
    Ok(Some((seq, sha256_hex(body.as_bytes()))))
}

/// The text of `path` up to its last complete line, cutting a torn last line (a crash
/// mid-write) off the file itself, so that the next line written starts a line of its own.
fn complete_lines(path: &Path) -> Result<String, FilesError> {
    let mut text = std::fs::read_to_string(path).map_err(|e| FilesError::new(path, e))?;
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    if complete < text.len() {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| FilesError::new(path, e))?;
        file.set_len(complete as u64)
            .and_then(|()| file.sync_data())
            .map_err(|e| FilesError::new(path, e))?;
        text.truncate(complete);
    }
    Ok(text)
}

/// Appends `bytes` to `path` and waits until they are on disk.
fn append_synced(path: &Path, bytes: &[u8]) -> Result<(), FilesError> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| FilesError::new(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_data())
        .map_err(|e| FilesError::new(path, e))
}

/// How many complete lines `path` holds (a torn last line cut off: its checkpoint is still
/// in Redis and is written again).
fn count_lines(path: &Path) -> Result<u64, FilesError> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(complete_lines(path)?.lines().count() as u64),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(FilesError::new(path, e)),
    }
}
