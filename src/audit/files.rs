//! The trail as rotated JSON Lines files, for a SIEM and for keeping: `audit-<first seq,
//! 20 digits>.jsonl` holds records in order, one `{"record":{…},"sig":"…"}` per line, and
//! `checkpoints.jsonl` one `{"checkpoint":{…},"sig":"…"}` per line. Each object is the
//! record's body as a JSON object, so any tool indexes its fields; its RFC 8785 form gives
//! back the exact signed bytes.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::canonical::canonical_json;
use super::checkpoint::SignedCheckpoint;
use super::store::StoredRecord;

pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
const PREFIX: &str = "audit-";
const SUFFIX: &str = ".jsonl";

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FilesError {
    pub path: String,
    pub source: std::io::Error,
}

impl FilesError {
    pub fn new(path: &Path, source: std::io::Error) -> Self {
        Self {
            path: path.display().to_string(),
            source,
        }
    }
}

/// The file whose first record is `first_seq`.
pub fn record_file(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{first_seq:020}{SUFFIX}"))
}

/// One line (with its newline) for a record; `None` if the body is not JSON.
pub fn record_line(body: &str, signature: &str) -> Option<Vec<u8>> {
    line("record", body, signature)
}

pub fn checkpoint_line(checkpoint: &SignedCheckpoint) -> Option<Vec<u8>> {
    line("checkpoint", &checkpoint.body, &checkpoint.signature)
}

fn line(name: &str, body: &str, signature: &str) -> Option<Vec<u8>> {
    let body: Value = serde_json::from_str(body).ok()?;
    let mut line = canonical_json(&json!({ name: body, "sig": signature }));
    line.push(b'\n');
    Some(line)
}

/// The record files in `dir`, oldest first, with their first seq.
pub fn record_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, FilesError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| FilesError::new(dir, e))? {
        let entry = entry.map_err(|e| FilesError::new(dir, e))?;
        let name = entry.file_name();
        let first = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            files.push((first, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// Every record and checkpoint in `dir`. A line that is not a record becomes a record with
/// an empty body, so verification names its file and line.
pub fn read_dir(dir: &Path) -> Result<(Vec<StoredRecord>, Vec<SignedCheckpoint>), FilesError> {
    let mut records = Vec::new();
    for (_, path) in record_files(dir)? {
        let mut text = std::fs::read_to_string(&path).map_err(|e| FilesError::new(&path, e))?;
        // A last line without its newline is being written (the exporter cuts it after a
        // crash and writes it again): not a record yet.
        text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
        for (i, raw) in text.lines().enumerate() {
            let (body, signature) = parse_line("record", raw).unwrap_or_default();
            records.push(StoredRecord {
                location: format!("{} line {}", path.display(), i + 1),
                body,
                signature,
            });
        }
    }
    let path = dir.join(CHECKPOINTS_FILE);
    let checkpoints = match std::fs::read_to_string(&path) {
        Ok(text) => text[..text.rfind('\n').map_or(0, |i| i + 1)]
            .lines()
            .map(|raw| {
                let (body, signature) = parse_line("checkpoint", raw).unwrap_or_default();
                SignedCheckpoint { body, signature }
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(FilesError::new(&path, e)),
    };
    Ok((records, checkpoints))
}

/// `(canonical body, signature)` of a line.
pub fn parse_line(name: &str, raw: &str) -> Option<(String, String)> {
    let mut line: Value = serde_json::from_str(raw).ok()?;
    let body = line.get_mut(name)?.take();
    let signature = line.get("sig")?.as_str()?.to_owned();
    Some((
        String::from_utf8_lossy(&canonical_json(&body)).into_owned(),
        signature,
    ))
}
