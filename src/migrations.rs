//! Versioned, idempotent Redis setup steps from `migrations/`, applied under a lock.
//!
//! Each file is a Lua script whose first line names its scope:
//! - `-- scope: workflow` runs once per configured workflow, with `queue` = the workflow's
//!   queue and `group` = the workers' consumer group (named as in [`crate::lua`]); applied
//!   versions are recorded in the workflow's own `schema` hash, so a workflow added later
//!   gets every step at next start.
//!
//! Every key a script touches is in one hash slot, so steps run unchanged on Redis Cluster.
//! Steps are idempotent: a process that dies between a step and its record re-runs it safely.

use std::time::Duration;

use crate::lua::{Contract, lua_args, lua_keys, lua_script};
use crate::redis_conn::RedisConnection;
use redis::{AsyncCommands, Script};

use crate::domain::WorkflowName;
use crate::queue::{Keys, WORKERS_GROUP};

/// One step.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub script: &'static str,
}

impl Migration {
    /// A workflow step's contract: every one has the same keys and arguments.
    pub const fn contract(&self) -> Contract {
        Contract {
            file: self.name,
            body: self.script,
            keys: WorkflowStepKeys::NAMES,
            args: WorkflowStepArgs::NAMES,
            rest: WorkflowStepArgs::REST,
        }
    }
}

lua_keys! { struct WorkflowStepKeys { queue } }
lua_args! { struct WorkflowStepArgs<'a> { group: &'a str } }

lua_keys! { struct LockKeys { lock } }
lua_args! { struct UnlockArgs<'a> { token: &'a str } }
lua_script! {
    /// Releases the migration lock if this run still holds it.
    struct Unlock = "migration_unlock.lua", LockKeys, UnlockArgs;
}

/// All steps, in order. A unit test checks this matches the files in `migrations/`.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "0001_workflow_queue.lua",
    script: include_str!("../migrations/0001_workflow_queue.lua"),
}];

/// How long a migration run may hold the lock before another process may take it over.
const LOCK_TTL: Duration = Duration::from_secs(30);
/// How long to wait for another process' run to finish.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Why migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("another process held the migration lock for over {} s", LOCK_WAIT.as_secs())]
    LockTimeout,
    #[error("migration {name} failed for workflow {workflow}: {source}")]
    Step {
        name: &'static str,
        workflow: String,
        source: redis::RedisError,
    },
}

/// Applies every step not yet applied, for every workflow; returns how many ran.
pub async fn apply(
    redis: &mut RedisConnection,
    keys: &Keys,
    workflows: &[WorkflowName],
) -> Result<usize, MigrationError> {
    // Every configured workflow's audit outbox is relayed by every writer from now on.
    crate::audit::outbox::register(redis, keys, workflows).await?;
    let token = uuid::Uuid::new_v4().to_string();
    acquire_lock(redis, keys, &token).await?;
    let result = apply_locked(redis, keys, workflows).await;
    let lock = LockKeys {
        lock: keys.migration_lock(),
    };
    let _: redis::RedisResult<i64> = Unlock::invocation(lock, &UnlockArgs { token: &token })
        .invoke_async(redis)
        .await;
    result
}

async fn acquire_lock(
    redis: &mut RedisConnection,
    keys: &Keys,
    token: &str,
) -> Result<(), MigrationError> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        let taken: Option<String> = redis::cmd("SET")
            .arg(keys.migration_lock())
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(LOCK_TTL.as_millis() as u64)
            .query_async(redis)
            .await?;
        if taken.is_some() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(MigrationError::LockTimeout);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn apply_locked(
    redis: &mut RedisConnection,
    keys: &Keys,
    workflows: &[WorkflowName],
) -> Result<usize, MigrationError> {
    let mut ran = 0;
    for workflow in workflows {
        let schema = keys.workflow_schema(workflow);
        for migration in MIGRATIONS {
            let applied: Option<String> = redis.hget(&schema, migration.version).await?;
            if applied.is_some() {
                continue;
            }
            let script = Script::new(&migration.contract().source());
            let mut invocation = script.prepare_invoke();
            WorkflowStepKeys {
                queue: keys.queue(workflow),
            }
            .push(&mut invocation);
            WorkflowStepArgs {
                group: WORKERS_GROUP,
            }
            .push(&mut invocation);
            let _: redis::Value =
                invocation
                    .invoke_async(redis)
                    .await
                    .map_err(|source| MigrationError::Step {
                        name: migration.name,
                        workflow: workflow.to_string(),
                        source,
                    })?;
            let _: () = redis
                .hset(&schema, migration.version, crate::clock::now_rfc3339())
                .await?;
            tracing::info!(migration = migration.name, workflow = %workflow, "applied migration");
            ran += 1;
        }
    }
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_migrations_is_listed_in_order() -> std::io::Result<()> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|name| name.ends_with(".lua"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, listed);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
            assert!(
                m.script.starts_with("-- scope: workflow\n"),
                "{} must declare its scope",
                m.name
            );
        }
        let mut contracts: Vec<Contract> = MIGRATIONS.iter().map(Migration::contract).collect();
        contracts.push(Unlock::CONTRACT);
        crate::lua::assert_contracts_hold(&contracts);
        Ok(())
    }
}
