//! Copies the trail from Redis into rotated JSON Lines files, and trims Redis behind it.
//!
//! One exporter at a time holds a lease in Redis (several replicas may be configured to
//! export; the others stand by), so the files are written in order by one hand; the lease
//! is renewed and checked before every page and fenced (`export_lease.rs`). The files
//! are the exporter's memory: it resumes after the last record it finds in its directory,
//! so the directory should be the same durable volume for every process that exports. A
//! record is counted as exported (the cursor in Redis) only after its file is synced.
//!
//! Retention (`trim.rs`): with `keep_records` set, records beyond the newest `keep_records`
//! are deleted from Redis, but only up to a checkpoint and only once exported, with the
//! checkpoints before that one; the trimmed prefix's last seq, hash, Merkle frontier and key
//! stay in Redis, so the rest keeps verifying on its own, and files plus Redis verify as a
//! whole.
//!
//! Every read is from a cursor (records after the last exported entry, checkpoints after
//! the last exported checkpoint's entry), so a round costs the same whatever the trail's
//! length. The directory is locked while this exporter holds the lease (`dir_lock.rs`):
//! two deployments pointed at one directory must not interleave their files.

mod dir_lock;
mod locate;
mod trim;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::export_lease::Lease;
use super::files::{self, CHECKPOINTS_FILE, FilesError};
use super::store::{self, StoredRecord};
use crate::queue::Keys;
use crate::redis_conn::RedisConnection;
use dir_lock::DirLock;

const ROUND: Duration = Duration::from_secs(1);
/// After a failed round this exporter waits longer than a round, so that another replica
/// gets to take the lease it gave up.
const AFTER_FAILURE: Duration = Duration::from_secs(5);
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
    #[error(transparent)]
    Locked(#[from] dir_lock::LockError),
}

/// What a round did.
enum Round {
    Exported,
    Standby,
}

/// Where the files end.
#[derive(Debug, Clone, Default)]
struct Position {
    seq: u64,
    /// The Redis stream entry of record `seq` (`None` before the first).
    entry: Option<String>,
    /// The size of the files' last checkpoint (0: none yet).
    checkpoint_size: u64,
    /// Its entry in Redis' checkpoint stream; `None` when Redis no longer holds it (or there
    /// is none): the next checkpoint is then the first larger than `checkpoint_size`.
    checkpoint_entry: Option<String>,
    /// The newest records file and its size (`None`: none yet); the directory is listed
    /// only to locate, never per page.
    file: Option<(PathBuf, u64)>,
}

pub struct Exporter {
    redis: RedisConnection,
    keys: Keys,
    settings: ExportSettings,
    lease: Lease,
    /// Held with the lease: the directory is this exporter's alone meanwhile.
    lock: Option<DirLock>,
    position: Option<Position>,
}

impl Exporter {
    pub fn new(redis: RedisConnection, keys: Keys, settings: ExportSettings) -> Self {
        Self {
            redis,
            keys,
            settings,
            lease: Lease::new(),
            lock: None,
            position: None,
        }
    }

    /// Exports every `ROUND` until `shutdown`; then gives up the lease.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // A failure is logged when it starts or changes, not every round it lasts.
        let mut failing: Option<String> = None;
        loop {
            match self.round().await {
                Ok(Round::Exported) => {
                    if failing.take().is_some() {
                        tracing::info!(dir = %self.settings.dir.display(), "audit export resumed");
                    }
                }
                // Another replica exports: whether this one's failure is over, it cannot tell.
                Ok(Round::Standby) => {}
                Err(e) => {
                    let error = e.to_string();
                    if failing.as_ref() != Some(&error) {
                        tracing::error!(%error, dir = %self.settings.dir.display(), "audit export failed; retrying");
                        failing = Some(error);
                    }
                    // Let go of the lease and the directory, so that another replica (which
                    // may reach the disk, or Redis, when this one cannot) takes over; re-read
                    // where the files end before this one's next try.
                    self.release().await;
                    self.position = None;
                }
            }
            let pause = if failing.is_some() {
                AFTER_FAILURE
            } else {
                ROUND
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => break,
            }
        }
        self.release().await;
    }

    /// Gives up the lease and the directory, if this exporter holds them.
    async fn release(&mut self) {
        self.lock = None;
        self.lease.release(&mut self.redis, &self.keys).await;
    }

    /// The lease was lost: the files are located afresh under the next one, and the
    /// directory is free for whoever holds it now.
    fn lost(&mut self) {
        self.position = None;
        self.lock = None;
    }

    /// One round; `Standby` when another exporter holds the lease.
    async fn round(&mut self) -> Result<Round, ExportError> {
        let before = self.lease.token();
        if !self.lease.take(&mut self.redis, &self.keys).await? {
            self.lost();
            return Ok(Round::Standby);
        }
        if self.lease.token() != before {
            // A new lease: another exporter may have written the files since.
            self.position = None;
        }
        if self.lock.is_none() {
            self.lock = Some(DirLock::take(&self.settings.dir)?);
        }
        let mut position = match self.position.take() {
            Some(position) => position,
            None => locate::locate(&mut self.redis, &self.keys, &self.settings.dir).await?,
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
                self.lost();
                return Ok(Round::Standby);
            }
            self.append_records(&mut position, &records)?;
            if !self
                .lease
                .advance(&mut self.redis, &self.keys, position.seq)
                .await?
            {
                self.lost();
                return Ok(Round::Standby);
            }
            if records.len() < PAGE {
                break;
            }
        }

        if !self.lease.still_held(&mut self.redis, &self.keys).await? {
            self.lost();
            return Ok(Round::Standby);
        }
        self.export_checkpoints(&mut position).await?;
        self.position = Some(position.clone());
        if self.settings.keep_records > 0 {
            trim::trim(
                &mut self.redis,
                &self.keys,
                self.lease.token(),
                &position,
                self.settings.keep_records,
            )
            .await?;
        }
        Ok(Round::Exported)
    }

    fn append_records(
        &self,
        position: &mut Position,
        records: &[StoredRecord],
    ) -> Result<(), ExportError> {
        let dir = &self.settings.dir;
        let (mut current, mut size) = match position.file.take() {
            Some((path, size)) => (Some(path), size),
            None => (None, 0),
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
        position.file = current.map(|path| (path, size));
        let new_files = writes.iter().any(|(path, _)| !path.exists());
        for (path, lines) in writes {
            append_synced(&path, &lines)?;
        }
        if new_files {
            sync_dir(dir);
        }
        Ok(())
    }

    /// Checkpoints the files' records reach, in order, after those already exported.
    async fn export_checkpoints(&mut self, position: &mut Position) -> Result<(), ExportError> {
        loop {
            let page = store::read_checkpoints_after(
                &mut self.redis,
                &self.keys,
                position.checkpoint_entry.as_deref(),
                PAGE,
            )
            .await?;
            let mut lines = Vec::new();
            let mut reached_records = false;
            for checkpoint in &page {
                let Some(size) = checkpoint.size else {
                    // Not a checkpoint (someone else wrote it): passed over, loudly, so that
                    // it stops neither the export nor retention behind it. (Before the
                    // files' last checkpoint is found, entries are passed over by size.)
                    if position.checkpoint_entry.is_some() {
                        tracing::error!(entry = %checkpoint.entry, "an entry of the audit checkpoint stream is not a checkpoint; not exported");
                        position.checkpoint_entry = Some(checkpoint.entry.clone());
                    }
                    continue;
                };
                if position.checkpoint_entry.is_none() && size <= position.checkpoint_size {
                    // Exported before Redis' copy of the files' last checkpoint was trimmed.
                    continue;
                }
                if size > position.seq {
                    reached_records = true;
                    break;
                }
                lines.extend(files::checkpoint_line(&checkpoint.signed).unwrap_or_default());
                position.checkpoint_size = size;
                position.checkpoint_entry = Some(checkpoint.entry.clone());
            }
            if !lines.is_empty() {
                let path = self.settings.dir.join(CHECKPOINTS_FILE);
                let new_file = !path.exists();
                append_synced(&path, &lines)?;
                if new_file {
                    sync_dir(&self.settings.dir);
                }
            }
            if reached_records || page.len() < PAGE {
                return Ok(());
            }
            if position.checkpoint_entry.is_none() {
                // A whole page already exported: read on after it.
                position.checkpoint_entry = page.last().map(|c| c.entry.clone());
            }
        }
    }
}

/// Whether this process can write into `dir` (made if missing): a file of its own created
/// and removed (replicas starting together on one volume each use their own).
pub fn check_dir(dir: &Path) -> Result<(), FilesError> {
    std::fs::create_dir_all(dir).map_err(|e| FilesError::new(dir, e))?;
    let probe = dir.join(format!(
        ".write-probe-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::File::create_new(&probe).map_err(|e| FilesError::new(&probe, e))?;
    match std::fs::remove_file(&probe) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(FilesError::new(&probe, e)),
        _ => Ok(()),
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

/// Makes new entries of `dir` durable (a file created there survives a power loss).
fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
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
