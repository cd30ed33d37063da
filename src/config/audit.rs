//! `[audit]`: the signed trail's keys, checkpoints and export.

use std::path::PathBuf;

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
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_seconds: u64,
    /// Refuse a trigger (503) when its `accepted` record cannot be written within
    /// `write_timeout_ms`: no workflow starts unaudited. Off, the record is buffered and
    /// retried while the trigger goes ahead.
    #[serde(default)]
    pub fail_closed: bool,
    #[serde(default = "default_audit_write_timeout")]
    pub write_timeout_ms: u64,
    /// `auth_failed` and `denied` records of one source (address, caller, workflow, reason)
    /// are aggregated over this many seconds: the first at once, the repeats as one record
    /// with a `count` (0: a record per refusal).
    #[serde(default = "default_refusal_window")]
    pub refusal_window_seconds: u64,
    /// Export to rotated JSON Lines files (and trim Redis behind the export).
    #[serde(default)]
    pub files: Option<AuditFilesConfig>,
}

/// `[audit.files]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditFilesConfig {
    /// The same durable directory for every process that exports (one exports at a time).
    pub dir: PathBuf,
    /// A new file once the current one holds this many bytes.
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// Keep only this many newest records in Redis; older ones are deleted once exported
    /// and covered by a checkpoint (0: keep everything).
    #[serde(default)]
    pub redis_keep_records: u64,
}

fn default_refusal_window() -> u64 {
    10
}

fn default_rotate_bytes() -> u64 {
    64 * 1024 * 1024
}

fn enabled() -> bool {
    true
}

fn default_checkpoint_every() -> u64 {
    1_000
}

fn default_checkpoint_interval() -> u64 {
    60
}

fn default_audit_write_timeout() -> u64 {
    2_000
}

impl AuditConfig {
    pub fn write_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.write_timeout_ms)
    }

    /// Failing closed, how long an admitted trigger stays invisible to the drain for its
    /// admitting process to write the audit record and release it; after that, the drain
    /// takes the process for dead and recovers the trigger (auditing it first).
    pub fn admission_hold(&self) -> Option<std::time::Duration> {
        self.fail_closed
            .then(|| self.write_timeout() + std::time::Duration::from_secs(10))
    }

    /// The trail's handle and writer, with this configuration's keys and checkpoints; no
    /// writer when the audit is off.
    pub fn open_log(
        &self,
        redis: crate::redis_conn::RedisConnection,
        keys: crate::queue::Keys,
    ) -> Result<
        (crate::audit::AuditLog, Option<crate::audit::AuditWriter>),
        crate::audit::signer::KeyError,
    > {
        if !self.enabled {
            tracing::warn!("the audit trail is OFF (audit.enabled = false): nothing is recorded");
            return Ok((crate::audit::AuditLog::disabled(), None));
        }
        let signer = crate::audit::AuditSigner::load(&self.signing_key)?;
        let retired = self
            .retired_keys
            .iter()
            .map(|path| crate::audit::AuditSigner::load(path))
            .collect::<Result<_, _>>()?;
        tracing::info!(audit.kid = signer.kid(), "audit signing key loaded");
        let settings = crate::audit::WriterSettings {
            checkpoint_every: self.checkpoint_every,
            checkpoint_interval: std::time::Duration::from_secs(self.checkpoint_interval_seconds),
            refusal_window: std::time::Duration::from_secs(self.refusal_window_seconds),
            ..Default::default()
        };
        let (log, writer) = crate::audit::AuditLog::new(redis, keys, signer, retired, settings);
        Ok((log, Some(writer)))
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
        if self.checkpoint_interval_seconds == 0 {
            problems.add("audit.checkpoint_interval_seconds", "must be at least 1");
        }
        if self.files.as_ref().is_some_and(|f| f.rotate_bytes == 0) {
            problems.add("audit.files.rotate_bytes", "must be at least 1");
        }
        if self.write_timeout_ms == 0 {
            problems.add("audit.write_timeout_ms", "must be at least 1");
        }
    }
}
