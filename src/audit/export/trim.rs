//! Retention: deletes exported, checkpointed records beyond the newest `keep_records` from
//! Redis, with the checkpoints before the one the cut lands on.

use super::{ExportError, Position, entry_id, record_seq};
use crate::audit::merkle::leaf_hash;
use crate::audit::record::sha256_hex;
use crate::audit::scripts::{Trim, TrimArgs, TrimKeys};
use crate::audit::store;
use crate::audit::verify::StartPoint;
use crate::queue::Keys;
use crate::redis_conn::RedisConnection;

/// Records deleted per round at most (the deletion's reply and script stay small even when
/// retention is first turned on over a long trail); the next round goes on.
const MAX_TRIM: u64 = 10_000;

/// Trims up to the newest checkpoint boundary the export (`position`), the head's newest
/// checkpoint and `keep_records` allow; `token` is the exporter's fencing token.
pub(super) async fn trim(
    redis: &mut RedisConnection,
    keys: &Keys,
    token: u64,
    position: &Position,
    keep_records: u64,
) -> Result<(), ExportError> {
    let head = store::read_head_fields(redis, keys).await?;
    let Some(head) = store::ChainHead::from_fields(&head) else {
        return Ok(());
    };
    // Only records whose checkpoint is exported too: the sink must hold every checkpoint
    // Redis gives up.
    let wanted = position
        .seq
        .min(position.checkpoint_size)
        .min(head.checkpoint_size)
        .min(head.seq.saturating_sub(keep_records));
    let StartPoint {
        seq: mut trimmed_seq,
        mut hash,
        mut frontier,
        mut kid,
    } = store::read_start_point(redis, keys).await?;
    if wanted <= trimmed_seq {
        return Ok(());
    }
    // Only to a checkpoint's size: verification from Redis alone starts at the trim marker
    // and accepts it only where a signed checkpoint vouches for it.
    let capped = wanted.min(trimmed_seq + MAX_TRIM);
    let mut boundary = store::checkpoint_at_most(redis, keys, capped, head.seq).await?;
    let size = |c: &Option<crate::audit::store::StoredCheckpoint>| c.as_ref().and_then(|c| c.size);
    if size(&boundary).is_none_or(|size| size <= trimmed_seq) && capped < wanted {
        // No checkpoint within the cap (checkpoints rarer than MAX_TRIM records).
        boundary = store::checkpoint_at_most(redis, keys, wanted, head.seq).await?;
    }
    let Some((boundary, boundary_size)) = boundary
        .and_then(|c| c.size.map(|size| (c, size)))
        .filter(|(_, size)| *size > trimmed_seq)
    else {
        return Ok(());
    };
    let expected = trimmed_seq;
    let records =
        store::read_records(redis, keys, None, (boundary_size - trimmed_seq) as usize).await?;
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
    // The checkpoints before the boundary go too, but only when the cut reaches it (a gap
    // in the stream stops the cut early; the boundary must stay to vouch for the marker).
    let keep_checkpoints_from = if trimmed_seq == boundary_size {
        boundary.entry.as_str()
    } else {
        "0-0"
    };
    let keys = TrimKeys {
        marker: keys.audit_trimmed(),
        log: keys.audit_log(),
        checkpoints: keys.audit_checkpoints(),
        fence: keys.audit_export_fence(),
    };
    let args = TrimArgs {
        token,
        expected_seq: expected,
        seq: trimmed_seq,
        hash: &hash,
        frontier: frontier.encode(),
        kid: kid.as_deref().unwrap_or_default(),
        keep_checkpoints_from,
        entry_ids: &ids,
    };
    let trimmed: i64 = Trim::invocation(keys, &args).invoke_async(redis).await?;
    if trimmed == 1 {
        tracing::info!(
            through = trimmed_seq,
            records = ids.len(),
            "audit records trimmed from Redis (exported and checkpointed)"
        );
    }
    Ok(())
}
