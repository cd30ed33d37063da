//! `[audit]`: the signed trail's keys, checkpoints and export.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[audit]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Off, nothing is recorded: for measuring the audit's cost, never for production.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Ed25519 private key (PKCS#8 PEM) written by `stepgate keygen`.
    pub signing_key: PathBuf,
    /// Keys that signed the trail before `signing_key`. The first write with a new key, by a
    /// process that also holds the trail's active key here, appends a `key_rotated` record
    /// signed by the old key that introduces the new one.
    #[serde(default)]
    pub retired_keys: Vec<PathBuf>,
    /// A signed checkpoint (size and Merkle root) at least every this many records…
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// …and at least this often while records arrive.
    #[serde(
        rename = "checkpoint_interval_seconds",
        with = "super::duration::seconds",
        default = "default_checkpoint_interval"
    )]
    pub checkpoint_interval: Duration,
    /// Refuse a trigger (503) when its `accepted` record cannot be written within
    /// `write_timeout_ms`: no workflow starts unaudited. Off, the record is buffered and
    /// retried while the trigger goes ahead.
    #[serde(default)]
    pub fail_closed: bool,
    #[serde(
        rename = "write_timeout_ms",
        with = "super::duration::millis",
        default = "default_audit_write_timeout"
    )]
    pub write_timeout: Duration,
    /// `auth_failed` and `denied` records of one source (address, caller, workflow, reason)
    /// are aggregated over this many seconds: the first at once, the repeats as one record
    /// with a `count` (0: a record per refusal).
    #[serde(
        rename = "refusal_window_seconds",
        with = "super::duration::seconds",
        default = "default_refusal_window"
    )]
    pub refusal_window: Duration,
    /// Export to rotated JSON Lines files, and trim Redis behind the export: on by default,
    /// so that Redis holds only what is not yet exported plus a bounded tail.
    #[serde(default)]
    pub files: AuditFilesConfig,
    /// Export to S3 instead of the files (`[audit.files]`'s `enabled`, `redis_keep_records`
    /// and `max_unexported_records` still govern the export).
    #[serde(default)]
    pub s3: Option<AuditS3Config>,
}

/// `[audit.s3]`: the trail as objects under a prefix, optionally under S3 Object Lock.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditS3Config {
    pub bucket: String,
    /// Where the objects go in the bucket: `<prefix>records/…` and `<prefix>checkpoints/…`.
    #[serde(default = "default_s3_prefix")]
    pub prefix: String,
    /// Every object is written with this many days of Object Lock retention in compliance
    /// mode: nobody, the bucket's owner included, can delete or overwrite it meanwhile. The
    /// bucket must have been created with Object Lock enabled.
    pub object_lock_days: Option<u32>,
    /// A segment object once this many records wait…
    #[serde(default = "default_segment_records")]
    pub segment_records: u64,
    /// …or once the oldest waiting record is this old.
    #[serde(
        rename = "segment_seconds",
        with = "super::duration::seconds",
        default = "default_segment_age"
    )]
    pub segment_age: Duration,
    /// An S3-compatible store or an emulator (default: `aws.endpoint_url`, else AWS's
    /// regional endpoint); addressed path-style.
    pub endpoint_url: Option<String>,
}

fn default_s3_prefix() -> String {
    "stepgate-audit/".to_owned()
}

/// The most records `audit.s3.segment_records` may ask for.
pub const MAX_SEGMENT_RECORDS: u64 = 50_000;

fn default_segment_records() -> u64 {
    // Some 5 MB of records: one PUT per 10,000 records keeps requests (and their cost) low
    // at volume, while one segment stays a small read.
    10_000
}

fn default_segment_age() -> Duration {
    // CloudTrail delivers its log files about every 5 minutes; a minute keeps the backlog
    // in Redis short at low volume.
    Duration::from_secs(60)
}

/// `[audit.files]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditFilesConfig {
    /// Off, Redis keeps every record forever: its memory grows with the trail.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// The same durable directory for every process of a deployment that exports (one
    /// exports at a time; the directory is locked meanwhile). Relative to the configuration
    /// file's directory.
    #[serde(default = "default_files_dir")]
    pub dir: PathBuf,
    /// A new file once the current one holds this many bytes.
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// Keep only this many newest records in Redis (for `GET /v1/audit` and verifying
    /// Redis alone); older ones are deleted once exported and covered by a checkpoint, so
    /// Redis holds at most this plus `checkpoint_every` plus what is not exported yet
    /// (0: keep everything).
    #[serde(default = "default_keep_records")]
    pub redis_keep_records: u64,
    /// Records Redis may hold that are not exported yet; at this many, triggers are refused
    /// (503) and readiness fails until the export catches up (a sink that is down never
    /// fills Redis, and nothing unexported is ever dropped).
    #[serde(default = "default_max_unexported")]
    pub max_unexported_records: u64,
}

impl Default for AuditFilesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: default_files_dir(),
            rotate_bytes: default_rotate_bytes(),
            redis_keep_records: default_keep_records(),
            max_unexported_records: default_max_unexported(),
        }
    }
}

fn default_files_dir() -> PathBuf {
    PathBuf::from("audit-trail")
}

fn default_max_unexported() -> u64 {
    // About 200 MB of records: some twenty minutes of a sink outage at 100 triggers/s.
    250_000
}

fn default_keep_records() -> u64 {
    500
}

fn default_refusal_window() -> Duration {
    Duration::from_secs(10)
}

fn default_rotate_bytes() -> u64 {
    64 * 1024 * 1024
}

fn enabled() -> bool {
    true
}

fn default_checkpoint_every() -> u64 {
    // Retention trims only to a checkpoint: their spacing is part of what Redis keeps.
    250
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_audit_write_timeout() -> Duration {
    Duration::from_secs(2)
}

/// How long an admitted trigger stays held beyond its record's write timeout before the
/// drain takes its admitting process for dead.
const HOLD_MARGIN: Duration = Duration::from_secs(10);

/// `audit.fail_closed`'s timing, derived in this one place for admission, the API and the
/// drain's recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailClosed {
    /// How long a trigger's record may take to be written before the trigger is refused
    /// (503) and withdrawn; also the bound on the recovery's own write.
    pub write_timeout: Duration,
    /// How long an admitted trigger stays invisible to the drain for its admitting process
    /// to write the record and release it; after that, the drain takes the process for dead
    /// and recovers the trigger (auditing it first).
    pub hold: Duration,
}

impl AuditConfig {
    /// Where the trail is exported, when it is (the audit and the export both on).
    pub fn export(&self) -> Option<&AuditFilesConfig> {
        (self.enabled && self.files.enabled).then_some(&self.files)
    }

    /// The timing of failing closed, when `fail_closed` is on.
    pub fn fail_closed_timing(&self) -> Option<FailClosed> {
        self.fail_closed.then(|| FailClosed {
            write_timeout: self.write_timeout,
            hold: self.write_timeout + HOLD_MARGIN,
        })
    }
}

impl AuditConfig {
    /// Its problems, each named by its key.
    pub(super) fn check(&self, problems: &mut super::validate::Problems) {
        if self.fail_closed && !self.enabled {
            problems.add(
                "audit.fail_closed",
                "needs the audit enabled (audit.enabled = true)",
            );
        }
        if self.checkpoint_every == 0 {
            problems.add("audit.checkpoint_every", "must be at least 1");
        }
        if self.checkpoint_interval.is_zero() {
            problems.add("audit.checkpoint_interval_seconds", "must be at least 1");
        }
        if self.files.rotate_bytes == 0 {
            problems.add("audit.files.rotate_bytes", "must be at least 1");
        }
        if self.files.max_unexported_records == 0 {
            problems.add("audit.files.max_unexported_records", "must be at least 1");
        }
        if self.write_timeout.is_zero() {
            problems.add("audit.write_timeout_ms", "must be at least 1");
        }
        if let Some(s3) = &self.s3 {
            s3.check(problems);
            if !self.enabled || !self.files.enabled {
                problems.add(
                    "audit.s3",
                    "needs the audit and its export on (audit.enabled, audit.files.enabled): \
                     it is the export's sink",
                );
            }
            // A segment is written once this many records wait: they must fit under the cap
            // with room to spare, or admission stops before the segment is due.
            if s3.segment_records > self.files.max_unexported_records / 2 {
                problems.add(
                    "audit.s3.segment_records",
                    format!(
                        "must be at most half of audit.files.max_unexported_records ({})",
                        self.files.max_unexported_records
                    ),
                );
            }
        }
    }
}

impl AuditS3Config {
    fn check(&self, problems: &mut super::validate::Problems) {
        // Bucket names: 3-63 lowercase letters, digits, dots and hyphens.
        let valid_bucket = (3..=63).contains(&self.bucket.len())
            && self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !valid_bucket {
            problems.add(
                "audit.s3.bucket",
                format!("{:?} is not an S3 bucket name", self.bucket),
            );
        }
        if self.prefix.starts_with('/') || !(self.prefix.is_empty() || self.prefix.ends_with('/')) {
            problems.add(
                "audit.s3.prefix",
                "must end with '/' and not start with one (or be empty)",
            );
        }
        if self.object_lock_days == Some(0) {
            problems.add(
                "audit.s3.object_lock_days",
                "must be at least 1 (or left out)",
            );
        }
        if !(1..=MAX_SEGMENT_RECORDS).contains(&self.segment_records) {
            problems.add(
                "audit.s3.segment_records",
                format!("must be 1 to {MAX_SEGMENT_RECORDS} (a segment is built in memory)"),
            );
        }
        if self.segment_age.is_zero() {
            problems.add("audit.s3.segment_seconds", "must be at least 1");
        }
        if let Some(url) = &self.endpoint_url
            && reqwest::Url::parse(url).is_err()
        {
            problems.add("audit.s3.endpoint_url", format!("{url:?} is not a URL"));
        }
    }
}
