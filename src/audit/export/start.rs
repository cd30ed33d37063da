//! Starting the export with the process: its sink checked, the backlog watched on every
//! replica, the exporter spawned.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{ExportSettings, Exporter, S3Settings, SinkSettings, check_dir};
use crate::audit::s3::TrailBucket;
use crate::config::Config;
use crate::state::AppState;

/// Refuses to start with an export directory this process cannot write (a read-only
/// configuration mount, say), which would hold the trail in Redis until its cap stops
/// admission.
pub fn check_dir_of(config: &Config) -> anyhow::Result<()> {
    if let Some(files) = config.audit.export()
        && config.audit.s3.is_none()
    {
        check_dir(&files.dir).with_context(|| {
            format!(
                "audit.files.dir {} cannot be written; point it at a durable volume \
                 (the container image has one at /var/lib/stepgate/audit)",
                files.dir.display()
            )
        })?;
    }
    Ok(())
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
