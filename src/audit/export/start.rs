//! Starting the export with the process: its sink checked, the backlog watched on every
//! replica, the exporter spawned.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{ExportSettings, Exporter, S3Settings, SinkSettings, check_dir};
use crate::audit::s3::{S3Error, TrailBucket};
use crate::config::Config;
use crate::state::AppState;

const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Refuses to start with a sink that cannot take the trail — an export directory this
/// process cannot write (a read-only configuration mount, say), an S3 bucket that does not
/// exist or lacks the Object Lock asked for — which would hold the trail in Redis until
/// its cap stops admission. An S3 it cannot reach now is only warned of: the exporter
/// retries, and the cap holds meanwhile.
pub async fn check_sink(config: &Config) -> anyhow::Result<()> {
    let Some(files) = config.audit.export() else {
        return Ok(());
    };
    let Some(s3) = &config.audit.s3 else {
        return check_dir(&files.dir).with_context(|| {
            format!(
                "audit.files.dir {} cannot be written; point it at a durable volume \
                 (the container image has one at /var/lib/stepgate/audit)",
                files.dir.display()
            )
        });
    };
    let bucket = TrailBucket::from_config(&config.aws, s3).await;
    // Bounded: an S3 that does not answer delays the start by this much at most.
    let checked = tokio::time::timeout(CHECK_TIMEOUT, bucket.check(s3.object_lock_days.is_some()))
        .await
        .unwrap_or_else(|_| {
            Ok(Some(S3Error {
                bucket: s3.bucket.clone(),
                key: String::new(),
                detail: format!("no answer within {CHECK_TIMEOUT:?}"),
            }))
        });
    match checked {
        Ok(None) => Ok(()),
        Ok(Some(doubt)) => {
            tracing::warn!(error = %doubt, "cannot check the audit S3 bucket now; the export retries");
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("audit.s3 cannot take the trail: {e}")),
    }
}

/// The exporter and the watch on its backlog, when the trail is exported; the exporter
/// gives up its lease when it ends.
pub async fn start(
    state: &AppState,
    config: &Config,
    shutdown: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let Some(files) = config.audit.export() else {
        if config.audit.enabled {
            let (mut redis, keys) = (state.redis.clone(), state.keys.clone());
            tokio::spawn(async move {
                crate::audit::export_backlog::forget_baseline(&mut redis, &keys).await;
            });
        }
        return None;
    };
    // Every replica watches the backlog (the exporter runs on one): each gates its own
    // admission.
    tokio::spawn(crate::audit::export_backlog::watch(
        state.export_backlog.clone(),
        state.redis.clone(),
        state.keys.clone(),
        files.max_unexported_records,
        shutdown.clone(),
    ));
    let sink = match &config.audit.s3 {
        Some(s3) => SinkSettings::S3(S3Settings {
            bucket: TrailBucket::from_config(&config.aws, s3).await,
            object_lock_days: s3.object_lock_days,
            segment_records: s3.segment_records,
            segment_age: s3.segment_age,
        }),
        None => SinkSettings::Files {
            dir: files.dir.clone(),
            rotate_bytes: files.rotate_bytes,
        },
    };
    let exporter = Exporter::new(
        state.redis.clone(),
        state.keys.clone(),
        ExportSettings {
            sink,
            keep_records: files.redis_keep_records,
        },
    );
    Some(tokio::spawn(exporter.run(shutdown.clone())))
}
