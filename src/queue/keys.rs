//! Every Redis key stepgate uses, in one place.
//!
//! Keys of one workflow share the hash tag `{wf:<name>}`, so they live in one Redis Cluster
//! slot and a script may touch them together (admission writes the queue entry and the
//! request's status in one atomic step). Audit keys share `{audit}`, bookkeeping `{meta}`.
//!
//! | key                                   | type   | holds                                  |
//! |---------------------------------------|--------|----------------------------------------|
//! | `<p>:{wf:<name>}:queue`               | stream | accepted triggers awaiting the drain   |
//! | `<p>:{wf:<name>}:status:<32 hex>`     | string | one request's status, compact JSON (expires) |
//! | `<p>:{wf:<name>}:request:<32 hex>`    | hash   | a status as earlier versions wrote it (read and updated until it expires) |
//! | `<p>:{wf:<name>}:request:<32 hex>:live` | string | the execution's state, cached briefly|
//! | `<p>:{wf:<name>}:request:<32 hex>:attempt` | string | an EXPRESS start was tried (expires)|
//! | `<p>:{wf:<name>}:dead`                | stream | dead letters: entries that cannot start|
//! | `<p>:{wf:<name>}:dead:index`          | hash   | request id → dead-letter entry id      |
//! | `<p>:{wf:<name>}:schema`              | hash   | migrations applied to this workflow    |
//! | `<p>:{wf:<name>}:jti:<sha256>`        | string | a used one-time token (expires with it)|
//! | `<p>:{wf:<name>}:rate:workflow`       | zset   | admissions in the workflow's window    |
//! | `<p>:{wf:<name>}:rate:caller:<hash>`  | zset   | one caller's admissions in its window  |
//! | `<p>:{wf:<name>}:idem:<sha256>`       | hash   | a caller's idempotency key (expires)   |
//! | `<p>:{wf:<name>}:deferred`            | zset   | deferred triggers by due time (ms)     |
//! | `<p>:{wf:<name>}:deferred:entries`    | hash   | deferred (and held) triggers' fields   |
//! | `<p>:{wf:<name>}:held`                | zset   | fail_closed: triggers awaiting audit   |
//! | `<p>:{wf:<name>}:unused`              | —      | never written; fills unused script keys|
//! | `<p>:{wf:<name>}:pace`                | zset   | StartExecution permits (pace_*.lua)    |
//! | `<p>:{wf:<name>}:inflight`            | zset   | StartExecution calls in flight (leases)|
//! | `<p>:{sfn:<region>}:pace`             | zset   | permits for the whole account/region   |
//! | `<p>:{caller:<hash>}:rate`            | zset   | one caller's admissions, all workflows |
//! | `<p>:{wf:<name>}:audit:outbox`        | stream | audit events written with their state changes, until chained |
//! | `<p>:{audit}:outboxes`                | set    | the workflows whose outboxes are relayed |
//! | `<p>:{audit}:outbox:relayed`          | hash   | per workflow, the last outbox entry chained |
//! | `<p>:{audit}:log`                     | stream | signed, hash-chained audit records     |
//! | `<p>:{audit}:head`                    | hash   | the chain head: seq, hash, active key, Merkle frontier |
//! | `<p>:{audit}:checkpoints`             | stream | signed checkpoints (size, Merkle root) |
//! | `<p>:{audit}:trimmed`                 | hash   | where retention cut the record stream  |
//! | `<p>:{audit}:export`                  | hash   | the file exporter's cursor, and the head when export was turned on (`baseline`) |
//! | `<p>:{audit}:export:lease`            | string | one exporter at a time (holder, token) |
//! | `<p>:{audit}:export:fence`            | string | the lease's last fencing token         |
//! | `<p>:{audit}:writer:<id>`             | string | a writer's last batch id (expires)     |
//! | `<p>:{meta}:schema`                   | hash   | global migrations applied              |
//! | `<p>:{meta}:migration-lock`           | string | held while migrations run              |

use crate::domain::{RequestId, WorkflowName};

/// The consumer group every stepgate process reads workflow queues through; each entry is
/// delivered to one consumer of the group, and stays pending until acknowledged.
pub const WORKERS_GROUP: &str = "stepgate-workers";

/// Builds key names under a deployment's prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn queue(&self, workflow: &WorkflowName) -> String {
        format!("{}:{{wf:{workflow}}}:queue", self.prefix)
    }

    /// The workflow's audit outbox: events written with the state changes they record, in
    /// the workflow's slot, until a writer moves them into the chain.
    pub fn audit_outbox(&self, workflow: &WorkflowName) -> String {
        format!("{}:{{wf:{workflow}}}:audit:outbox", self.prefix)
    }

    /// An execution's live state, cached briefly (see `live_status`).
    pub fn live_status(&self, id: &RequestId) -> String {
        format!("{}:live", self.request(id))
    }

    /// Marks that a start of the request's EXPRESS execution was tried, so that a later
    /// delivery knows the outcome of an earlier one may be unknown.
    pub fn attempt(&self, id: &RequestId) -> String {
        format!("{}:attempt", self.request(id))
    }

    /// A request's status: compact JSON (`queue::request::StoredStatus`), expiring.
    pub fn status(&self, id: &RequestId) -> String {
        format!(
            "{}:{{wf:{}}}:status:{}",
            self.prefix,
            id.workflow(),
            id.local_part()
        )
    }

    /// The stem of a request's short-lived keys; earlier versions kept its status here as a
    /// hash (read, and updated, until those expire).
    pub fn request(&self, id: &RequestId) -> String {
        format!(
            "{}:{{wf:{}}}:request:{}",
            self.prefix,
            id.workflow(),
            id.local_part()
        )
    }

    /// Entries that can never start as they are, with the reason; kept until replayed or
    /// purged.
    pub fn dead_letters(&self, workflow: &WorkflowName) -> String {
        format!("{}:{{wf:{workflow}}}:dead", self.prefix)
    }

    /// Request id (or `entry:<id>` for an unreadable entry) → its dead-letter entry id.
    pub fn dead_letter_index(&self, workflow: &WorkflowName) -> String {
        format!("{}:{{wf:{workflow}}}:dead:index", self.prefix)
    }

    /// Marks a one-time token as used; `token_id` is a digest, never the raw `jti`.
    pub fn used_token(&self, workflow: &WorkflowName, token_id: &str) -> String {
        format!("{}:{{wf:{workflow}}}:jti:{token_id}", self.prefix)
    }

    /// Admission times for a rate limit of `workflow`: `scope` is `workflow` or
    /// `caller:<digest>`.
    pub fn rate(&self, workflow: &WorkflowName, scope: &str) -> String {
        format!("{}:{{wf:{workflow}}}:rate:{scope}", self.prefix)
    }

    /// A caller's idempotency key; `digest` covers the caller and the key (both caller-chosen).
    pub fn idempotency(&self, workflow: &WorkflowName, digest: &str) -> String {
        format!("{}:{{wf:{workflow}}}:idem:{digest}", self.prefix)
    }

    /// Recent `StartExecution` permits of a workflow (drain pacing).
    pub fn pace(&self, workflow: &WorkflowName) -> String {
        format!("{}:{{wf:{workflow}}}:pace", self.prefix)
    }

    /// `StartExecution` calls of a workflow in flight, as expiring leases.
    pub fn in_flight(&self, workflow: &WorkflowName) -> String {
        format!("{}:{{wf:{workflow}}}:inflight", self.prefix)
    }

    /// Recent `StartExecution` permits of the whole account in `region`.
    pub fn account_pace(&self, region: &str) -> String {
        format!("{}:{{sfn:{region}}}:pace", self.prefix)
    }

    /// Admission times of one caller over all workflows: in the caller's own slot.
    pub fn caller_rate(&self, digest: &str) -> String {
        format!("{}:{{caller:{digest}}}:rate", self.prefix)
    }

    /// Deferred triggers by due time.
    pub fn deferred(&self, workflow: &WorkflowName) -> String {
        format!("{}:{{wf:{workflow}}}:deferred", self.prefix)
    }

    /// Triggers held until their audit record is written (`audit.fail_closed`), scored by
    /// when recovery may take them over.
    pub fn held(&self, workflow: &WorkflowName) -> String {
        format!("{}:{{wf:{workflow}}}:held", self.prefix)
    }

    /// Deferred (and held) triggers' queue fields, by request id.
    pub fn deferred_entries(&self, workflow: &WorkflowName) -> String {
        format!("{}:{{wf:{workflow}}}:deferred:entries", self.prefix)
    }

    /// A key of the workflow's slot that is never written: stands in for the optional keys a
    /// script does not use this time (every key a script names must be declared, in one slot).
    pub fn unused(&self, workflow: &WorkflowName) -> String {
        format!("{}:{{wf:{workflow}}}:unused", self.prefix)
    }

    pub fn workflow_schema(&self, workflow: &WorkflowName) -> String {
        format!("{}:{{wf:{workflow}}}:schema", self.prefix)
    }

    pub fn audit_log(&self) -> String {
        format!("{}:{{audit}}:log", self.prefix)
    }

    pub fn audit_head(&self) -> String {
        format!("{}:{{audit}}:head", self.prefix)
    }

    /// The workflows whose outboxes the writers relay.
    pub fn audit_outboxes(&self) -> String {
        format!("{}:{{audit}}:outboxes", self.prefix)
    }

    /// Per workflow, the id of the last outbox entry moved into the chain.
    pub fn audit_relayed(&self) -> String {
        format!("{}:{{audit}}:outbox:relayed", self.prefix)
    }

    /// Signed checkpoints (size and Merkle root of the trail), oldest first.
    pub fn audit_checkpoints(&self) -> String {
        format!("{}:{{audit}}:checkpoints", self.prefix)
    }

    /// Where the record stream starts after retention trimmed its front: the last trimmed
    /// record's seq, hash and Merkle frontier, and the key active after it.
    pub fn audit_trimmed(&self) -> String {
        format!("{}:{{audit}}:trimmed", self.prefix)
    }

    /// How far the file exporter has written (`seq`).
    pub fn audit_export(&self) -> String {
        format!("{}:{{audit}}:export", self.prefix)
    }

    /// The file exporter's lease: one exporter at a time.
    pub fn audit_export_lease(&self) -> String {
        format!("{}:{{audit}}:export:lease", self.prefix)
    }

    /// The export lease's fencing counter: each new lease holder gets the next token.
    pub fn audit_export_fence(&self) -> String {
        format!("{}:{{audit}}:export:fence", self.prefix)
    }

    /// The last batch a writer appended: makes a retried append happen once.
    pub fn audit_writer(&self, writer: &str) -> String {
        format!("{}:{{audit}}:writer:{writer}", self.prefix)
    }

    pub fn global_schema(&self) -> String {
        format!("{}:{{meta}}:schema", self.prefix)
    }

    pub fn migration_lock(&self) -> String {
        format!("{}:{{meta}}:migration-lock", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A key with its variable parts (prefix, workflow, digests, ids) as `<…>`.
    fn shape(key: &str, local_part: &str) -> String {
        key.replacen("p:", "<p>:", 1)
            .replace("wf:orders", "wf:<name>")
            .replace(local_part, "<*>")
            .replace("DIGEST", "<*>")
            .replace("us-east-1", "<*>")
            .replace("WRITER", "<*>")
    }

    #[test]
    fn the_key_table_lists_every_key_keys_can_make() -> Result<(), Box<dyn std::error::Error>> {
        let keys = Keys::new("p");
        let workflow = WorkflowName::parse("orders")?;
        let id = RequestId::generate(workflow.clone());
        let made = [
            keys.queue(&workflow),
            keys.request(&id),
            keys.status(&id),
            keys.live_status(&id),
            keys.attempt(&id),
            keys.dead_letters(&workflow),
            keys.dead_letter_index(&workflow),
            keys.workflow_schema(&workflow),
            keys.used_token(&workflow, "DIGEST"),
            keys.rate(&workflow, "workflow"),
            keys.rate(&workflow, "caller:DIGEST"),
            keys.idempotency(&workflow, "DIGEST"),
            keys.deferred(&workflow),
            keys.deferred_entries(&workflow),
            keys.held(&workflow),
            keys.unused(&workflow),
            keys.pace(&workflow),
            keys.in_flight(&workflow),
            keys.account_pace("us-east-1"),
            keys.caller_rate("DIGEST"),
            keys.audit_log(),
            keys.audit_head(),
            keys.audit_checkpoints(),
            keys.audit_trimmed(),
            keys.audit_export(),
            keys.audit_export_lease(),
            keys.audit_export_fence(),
            keys.audit_outbox(&workflow),
            keys.audit_outboxes(),
            keys.audit_relayed(),
            keys.audit_writer("WRITER"),
            keys.global_schema(),
            keys.migration_lock(),
        ];
        let local_part = id.local_part();
        let made: BTreeSet<String> = made.iter().map(|k| shape(k, &local_part)).collect();
        // The table in this module's documentation, its placeholders as `<*>`.
        let placeholder = |cell: &str| {
            let mut out = String::new();
            let mut rest = cell;
            while let Some(open) = rest.find('<') {
                out.push_str(&rest[..open]);
                let close = rest[open..].find('>').map_or(rest.len(), |c| open + c + 1);
                let inner = &rest[open..close];
                out.push_str(if inner == "<p>" || inner == "<name>" {
                    inner
                } else {
                    "<*>"
                });
                rest = &rest[close..];
            }
            out.push_str(rest);
            out
        };
        let listed: BTreeSet<String> = include_str!("keys.rs")
            .lines()
            .filter_map(|line| line.strip_prefix("//! | `"))
            .filter_map(|rest| rest.split_once('`'))
            .map(|(key, _)| placeholder(key))
            .collect();
        assert_eq!(made, listed, "the table and the keys differ");
        Ok(())
    }
}
