//! The files sink: records appended to rotated JSON Lines files, checkpoints to
//! `checkpoints.jsonl`, each write synced before the cursor moves; the directory is locked
//! while this exporter holds the lease (`dir_lock.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::dir_lock::DirLock;
use super::{ExportError, Position, entry_id, record_seq};
use crate::audit::files::{self, CHECKPOINTS_FILE, FilesError};
use crate::audit::store::StoredRecord;

pub(super) struct FilesSink {
    pub(super) dir: PathBuf,
    /// A new file once the current one holds this many bytes.
    rotate_bytes: u64,
    /// Held with the lease: the directory is this exporter's alone meanwhile.
    lock: Option<DirLock>,
}

impl FilesSink {
    pub(super) fn new(dir: PathBuf, rotate_bytes: u64) -> Self {
        Self {
            dir,
            rotate_bytes,
            lock: None,
        }
    }

    pub(super) fn acquire(&mut self) -> Result<(), ExportError> {
        if self.lock.is_none() {
            self.lock = Some(DirLock::take(&self.dir)?);
        }
        Ok(())
    }

    pub(super) fn release(&mut self) {
        self.lock = None;
    }

    pub(super) fn append_records(
        &self,
        position: &mut Position,
        records: &[StoredRecord],
    ) -> Result<(), ExportError> {
        let dir = &self.dir;
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
            let line = export_line(record);
            let path = match current.take() {
                Some(path) if size < self.rotate_bytes => path,
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

    /// Appends checkpoint lines, in order.
    pub(super) fn append_checkpoints(&self, lines: &[u8]) -> Result<(), ExportError> {
        if lines.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(CHECKPOINTS_FILE);
        let new_file = !path.exists();
        append_synced(&path, lines)?;
        if new_file {
            sync_dir(&self.dir);
        }
        Ok(())
    }
}

/// A record's line. One that is not JSON is exported as-is under its seq, so verification
/// of the sink reports it just as verification of Redis does.
pub(super) fn export_line(record: &StoredRecord) -> Vec<u8> {
    files::record_line(&record.body, &record.signature).unwrap_or_else(|| {
        format!(
            "{{\"record\":{},\"sig\":{}}}\n",
            serde_json::Value::String(record.body.clone()),
            serde_json::Value::String(record.signature.clone())
        )
        .into_bytes()
    })
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
