//! Copies the trail from Redis into its long-term home, a sink: rotated JSON Lines files
//! (`files_sink.rs`, the default) or immutable S3 objects (`s3_sink.rs`), and trims Redis
//! behind it.
//!
//! One exporter at a time holds a lease in Redis (several replicas may be configured to
//! export; the others stand by), so the sink is written in order by one hand; the lease
//! is renewed and checked before every page and fenced (`export_lease.rs`). A record is
//! counted as exported (the cursor in Redis) only after the sink holds it durably; each
//! new lease first finds where the sink ends (`locate.rs`, `S3Sink::locate`).
//!
//! Retention (`trim.rs`): with `keep_records` set, records beyond the newest `keep_records`
//! are deleted from Redis, but only up to a checkpoint and only once exported, with the
//! checkpoints before that one; the trimmed prefix's last seq, hash, Merkle frontier and key
//! stay in Redis, so the rest keeps verifying on its own, and the sink plus Redis verify as
//! a whole.
//!
//! Every read is from a cursor (records after the last exported entry, checkpoints after
//! the last exported checkpoint's entry), so a round costs the same whatever the trail's
//! length. A directory is locked while this exporter holds the lease (`dir_lock.rs`): two
//! deployments pointed at one directory must not interleave their files; S3 objects are
//! only ever created, never replaced.

mod dir_lock;
mod files_sink;
mod locate;
mod s3_locate;
mod s3_sink;
mod start;
mod trim;

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::export_lease::Lease;
use super::files::{self, FilesError};
use super::s3::S3Error;
use super::store::{self, StoredRecord};
use crate::queue::Keys;
use crate::redis_conn::RedisConnection;
use files_sink::FilesSink;
pub use files_sink::check_dir;
pub use s3_sink::S3Settings;
use s3_sink::S3Sink;
pub use start::{check_sink, start};

const ROUND: Duration = Duration::from_secs(1);
/// After a failed round this exporter waits longer than a round, so that another replica
/// gets to take the lease it gave up.
const AFTER_FAILURE: Duration = Duration::from_secs(5);
const PAGE: usize = 1_000;

pub struct ExportSettings {
    pub sink: SinkSettings,
    /// Keep at most this many records in Redis (0: keep all).
    pub keep_records: u64,
}

pub enum SinkSettings {
    Files {
        dir: PathBuf,
        /// A new file once the current one holds this many bytes.
        rotate_bytes: u64,
    },
    S3(S3Settings),
}

#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    S3(#[from] S3Error),
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

/// Where the sink ends.
#[derive(Debug, Clone, Default)]
struct Position {
    seq: u64,
    /// The Redis stream entry of record `seq` (`None` before the first).
    entry: Option<String>,
    /// The size of the sink's last checkpoint (0: none yet).
    checkpoint_size: u64,
    /// Its entry in Redis' checkpoint stream; `None` when Redis no longer holds it (or there
    /// is none): the next checkpoint is then the first larger than `checkpoint_size`.
    checkpoint_entry: Option<String>,
    /// The files sink's newest records file and its size (`None`: none yet, or another
    /// sink); the directory is listed only to locate, never per page.
    file: Option<(PathBuf, u64)>,
    /// The S3 sink's last segment (`s3://bucket/key`; `None`: none yet, or another sink).
    segment: Option<String>,
}

impl Position {
    /// Where the sink ends, as the cursor records it: the S3 segment, or the files.
    fn mark(&self) -> String {
        self.segment
            .clone()
            .unwrap_or_else(|| FILES_MARK.to_owned())
    }
}

/// The cursor's `sink` when the files hold what it counts.
const FILES_MARK: &str = "files";

enum Sink {
    Files(FilesSink),
    S3(S3Sink),
}

impl Sink {
    fn describe(&self) -> String {
        match self {
            Sink::Files(files) => files.dir.display().to_string(),
            Sink::S3(s3) => s3.settings.bucket.location.to_string(),
        }
    }
}

pub struct Exporter {
    redis: RedisConnection,
    keys: Keys,
    sink: Sink,
    keep_records: u64,
    lease: Lease,
    position: Option<Position>,
}

impl Exporter {
    pub fn new(redis: RedisConnection, keys: Keys, settings: ExportSettings) -> Self {
        let sink = match settings.sink {
            SinkSettings::Files { dir, rotate_bytes } => {
                Sink::Files(FilesSink::new(dir, rotate_bytes))
            }
            SinkSettings::S3(settings) => Sink::S3(S3Sink { settings }),
        };
        Self {
            redis,
            keys,
            sink,
            keep_records: settings.keep_records,
            lease: Lease::new(),
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
                        tracing::info!(sink = %self.sink.describe(), "audit export resumed");
                    }
                }
                // Another replica exports: whether this one's failure is over, it cannot tell.
                Ok(Round::Standby) => {}
                Err(e) => {
                    let error = e.to_string();
                    if failing.as_ref() != Some(&error) {
                        tracing::error!(%error, sink = %self.sink.describe(), "audit export failed; retrying");
                        failing = Some(error);
                    }
                    // Let go of the lease and the directory, so that another replica (which
                    // may reach the sink, or Redis, when this one cannot) takes over; re-read
                    // where the sink ends before this one's next try.
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
        self.release_sink();
        self.lease.release(&mut self.redis, &self.keys).await;
    }

    fn release_sink(&mut self) {
        if let Sink::Files(files) = &mut self.sink {
            files.release();
        }
    }

    /// The lease was lost: the sink is located afresh under the next one, and the
    /// directory is free for whoever holds it now.
    fn lost(&mut self) {
        self.position = None;
        self.release_sink();
    }

    /// One round; `Standby` when another exporter holds the lease.
    async fn round(&mut self) -> Result<Round, ExportError> {
        let before = self.lease.token();
        if !self.lease.take(&mut self.redis, &self.keys).await? {
            self.lost();
            return Ok(Round::Standby);
        }
        if self.lease.token() != before {
            // A new lease: another exporter may have written the sink since.
            self.position = None;
        }
        let mut position = match self.position.take() {
            Some(position) => position,
            None => {
                let position = self.locate().await?;
                // The sink may end past the cursor (written just before a crash): the cursor
                // catches up before anything is trimmed behind it.
                if position.seq > 0
                    && !self
                        .lease
                        .advance(&mut self.redis, &self.keys, position.seq, &position.mark())
                        .await?
                {
                    self.lost();
                    return Ok(Round::Standby);
                }
                position
            }
        };
        loop {
            // A page of records for the files; a whole segment, once one is due, for S3.
            let records = match &self.sink {
                Sink::Files(_) => {
                    let after = position.entry.as_deref();
                    store::read_records(&mut self.redis, &self.keys, after, PAGE).await?
                }
                Sink::S3(s3) => {
                    if !s3.due(&mut self.redis, &self.keys, &position).await? {
                        break;
                    }
                    s3.read_segment(&mut self.redis, &self.keys, &position)
                        .await?
                }
            };
            if records.is_empty() {
                break;
            }
            // Renewed and checked before every write: a lease lost mid-round (another
            // replica took over) stops the writing here, and the sink is located afresh.
            if !self.lease.still_held(&mut self.redis, &self.keys).await? {
                self.lost();
                return Ok(Round::Standby);
            }
            let last_page = match &self.sink {
                Sink::Files(files) => {
                    files.append_records(&mut position, &records)?;
                    records.len() < PAGE
                }
                Sink::S3(s3) => {
                    s3.put_segment(&mut position, &records).await?;
                    // Whether another segment is due, `due` tells.
                    false
                }
            };
            if !self
                .lease
                .advance(&mut self.redis, &self.keys, position.seq, &position.mark())
                .await?
            {
                self.lost();
                return Ok(Round::Standby);
            }
            if last_page {
                break;
            }
        }

        if !self.lease.still_held(&mut self.redis, &self.keys).await? {
            self.lost();
            return Ok(Round::Standby);
        }
        self.export_checkpoints(&mut position).await?;
        self.position = Some(position.clone());
        if self.keep_records > 0 {
            trim::trim(
                &mut self.redis,
                &self.keys,
                self.lease.token(),
                &position,
                self.keep_records,
            )
            .await?;
        }
        Ok(Round::Exported)
    }

    /// Where the sink ends, under a new lease (the directory locked first).
    async fn locate(&mut self) -> Result<Position, ExportError> {
        match &mut self.sink {
            Sink::Files(files) => {
                files.acquire()?;
                locate::locate(&mut self.redis, &self.keys, &files.dir).await
            }
            Sink::S3(s3) => s3.locate(&mut self.redis, &self.keys).await,
        }
    }

    /// Checkpoints the sink's records reach, in order, after those already exported.
    async fn export_checkpoints(&mut self, position: &mut Position) -> Result<(), ExportError> {
        loop {
            let page = store::read_checkpoints_after(
                &mut self.redis,
                &self.keys,
                position.checkpoint_entry.as_deref(),
                PAGE,
            )
            .await?;
            let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
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
                batch.push((
                    size,
                    files::checkpoint_line(&checkpoint.signed).unwrap_or_default(),
                ));
                position.checkpoint_size = size;
                position.checkpoint_entry = Some(checkpoint.entry.clone());
            }
            match &self.sink {
                Sink::Files(files) => {
                    let lines: Vec<u8> = batch.iter().flat_map(|(_, line)| line.clone()).collect();
                    files.append_checkpoints(&lines)?;
                }
                Sink::S3(s3) => s3.put_checkpoints(&batch).await?,
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
