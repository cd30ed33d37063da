//! Opening the trail from its configuration: the signing keys read from their files, the
//! writer's settings; or a trail that records nothing, when the audit is off.

use super::signer::KeyError;
use super::{AuditLog, AuditSigner, AuditWriter, WriterSettings};
use crate::config::AuditConfig;
use crate::queue::Keys;
use crate::redis_conn::RedisConnection;

impl AuditLog {
    /// The trail's handle and writer, with `config`'s keys and checkpoints; no writer when
    /// the audit is off.
    pub fn open(
        config: &AuditConfig,
        redis: RedisConnection,
        keys: Keys,
    ) -> Result<(AuditLog, Option<AuditWriter>), KeyError> {
        if !config.enabled {
            tracing::warn!("the audit trail is OFF (audit.enabled = false): nothing is recorded");
            return Ok((AuditLog::disabled(), None));
        }
        let signer = AuditSigner::load(&config.signing_key)?;
        let retired = config
            .retired_keys
            .iter()
            .map(|path| AuditSigner::load(path))
            .collect::<Result<_, _>>()?;
        tracing::info!(audit.kid = signer.kid(), "audit signing key loaded");
        let settings = WriterSettings {
            checkpoint_every: config.checkpoint_every,
            checkpoint_interval: config.checkpoint_interval,
            refusal_window: config.refusal_window,
            ..Default::default()
        };
        let (log, writer) = AuditLog::new(redis, keys, signer, retired, settings);
        Ok((log, Some(writer)))
    }
}
