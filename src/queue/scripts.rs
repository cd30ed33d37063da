//! The queue's Lua scripts and their keys and arguments by name (see [`crate::lua`]).
//! Every key of one script is in one hash slot: the workflow's, or for `Reserve` and the
//! pacing scripts, the window's own.

use crate::lua::{Contract, lua_args, lua_keys, lua_script};

lua_keys! {
    /// Admission's keys, all in the workflow's slot.
    pub struct AdmissionKeys {
        queue, status, used_token, workflow_rate, caller_rate, idempotency,
        deferred, deferred_entries, held, dead_letters, outbox,
    }
}
lua_args! {
    pub struct EnqueueArgs<'a> {
        plan_json: &'a str, input: &'a str, accepted_event: &'a str, accepted_mac: &'a str,
        deferred_event: &'a str, deferred_mac: &'a str,
    }
}
lua_script! {
    /// Admission of one trigger: every check, then every write.
    pub struct Enqueue = "enqueue.lua", AdmissionKeys, EnqueueArgs;
}

lua_keys! {
    /// Admission's keys less the queue and the deferred triggers, which a withdrawal never
    /// touches (it takes back only what is still held).
    pub struct WithdrawKeys {
        status, used_token, workflow_rate, caller_rate, idempotency,
        deferred_entries, held, outbox,
    }
}
impl From<AdmissionKeys> for WithdrawKeys {
    fn from(keys: AdmissionKeys) -> Self {
        Self {
            status: keys.status,
            used_token: keys.used_token,
            workflow_rate: keys.workflow_rate,
            caller_rate: keys.caller_rate,
            idempotency: keys.idempotency,
            deferred_entries: keys.deferred_entries,
            held: keys.held,
            outbox: keys.outbox,
        }
    }
}
lua_args! { pub struct WithdrawArgs<'a> { request_id: &'a str, event: &'a str, mac: &'a str } }
lua_script! {
    /// Takes back a held or deferred trigger whose audit record could not be written.
    pub struct Withdraw = "withdraw.lua", WithdrawKeys, WithdrawArgs;
}

lua_keys! { pub struct ReserveKeys { window } }
lua_args! { pub struct ReserveArgs<'a> { member: &'a str, requests: u32, period_ms: u64 } }
lua_script! {
    /// One admission in a caller's window over all workflows (its own slot).
    pub struct Reserve = "reserve.lua", ReserveKeys, ReserveArgs;
}

lua_keys! { pub struct MoveKeys { deferred, deferred_entries, queue } }
lua_args! { pub struct PromoteArgs { batch: usize } }
lua_script! {
    /// Moves due deferred triggers into the queue.
    pub struct Promote = "promote.lua", MoveKeys, PromoteArgs;
}

lua_keys! { pub struct ReleaseKeys { held, deferred_entries, queue, deferred } }
lua_args! { pub struct ReleaseArgs<'a> { ..request_ids: &'a [String] } }
lua_script! {
    /// Moves held triggers into the queue (or, not yet due, the deferred ones), each only
    /// if still held.
    pub struct Release = "release.lua", ReleaseKeys, ReleaseArgs;
}

lua_keys! { pub struct CompleteKeys { queue, status, legacy_status, attempt, outbox } }
lua_args! {
    pub struct CompleteArgs<'a> {
        group: &'a str, entry_id: &'a str, state: &'a str, updated_at: &'a str,
        updated_ms: u64, execution_arn: &'a str, stored_arn: &'a str, failure: &'a str,
        finished_ttl: u64, event: &'a str, mac: &'a str,
    }
}
lua_script! {
    /// Records a started (or failed) execution and removes its entry.
    pub struct Complete = "complete.lua", CompleteKeys, CompleteArgs;
}

lua_keys! {
    pub struct DeadLetterKeys {
        queue, dead_letters, dead_letter_index, status, legacy_status, attempt, outbox,
    }
}
lua_args! {
    pub struct DeadLetterArgs<'a> {
        group: &'a str, entry_id: &'a str, index_field: &'a str, reason: &'a str, now: &'a str,
        now_ms: u64, event: &'a str, mac: &'a str,
    }
}
lua_script! {
    /// Moves an entry that can never start into the dead letters.
    pub struct DeadLetter = "dead_letter.lua", DeadLetterKeys, DeadLetterArgs;
}

lua_keys! {
    pub struct ReplayKeys {
        dead_letters, dead_letter_index, queue, status, legacy_status, outbox,
    }
}
lua_args! {
    pub struct DeadLetterIndexArgs<'a> {
        index_field: &'a str, now: &'a str, now_ms: u64, event: &'a str, mac: &'a str,
    }
}
lua_script! {
    /// Puts a dead letter back into the queue.
    pub struct Replay = "replay.lua", ReplayKeys, DeadLetterIndexArgs;
}

lua_keys! {
    pub struct PurgeKeys { dead_letters, dead_letter_index, status, legacy_status, outbox }
}
impl From<ReplayKeys> for PurgeKeys {
    fn from(keys: ReplayKeys) -> Self {
        Self {
            dead_letters: keys.dead_letters,
            dead_letter_index: keys.dead_letter_index,
            status: keys.status,
            legacy_status: keys.legacy_status,
            outbox: keys.outbox,
        }
    }
}
lua_script! {
    /// Drops a dead letter for good.
    pub struct Purge = "purge.lua", PurgeKeys, DeadLetterIndexArgs;
}

lua_keys! { pub struct LeaseKeys { leases } }
lua_args! { pub struct TakeLeaseArgs<'a> { member: &'a str, max: u32, ttl_ms: u64 } }
lua_script! {
    /// Takes one of a workflow's in-flight leases.
    pub struct TakeLease = "lease.lua", LeaseKeys, TakeLeaseArgs;
}

lua_keys! { pub struct PaceKeys { window } }
lua_args! {
    pub struct PaceReserveArgs<'a> { member: &'a str, starts: u32, window_ms: u64, bound_ms: u64 }
}
lua_script! {
    /// A permit of a pacing window.
    pub struct PaceReserve = "pace_reserve.lua", PaceKeys, PaceReserveArgs;
}

lua_args! { pub struct PaceSettleArgs<'a> { member: &'a str } }
lua_script! {
    /// Settles a pacing permit at the time of its call's answer.
    pub struct PaceSettle = "pace_settle.lua", PaceKeys, PaceSettleArgs;
}

lua_keys! { pub struct PruneConsumersKeys { queue } }
lua_args! { pub struct PruneConsumersArgs<'a> { group: &'a str, keep: &'a str, min_idle_ms: u64 } }
lua_script! {
    /// Removes consumers idle past a bound with nothing pending.
    pub struct PruneConsumers = "prune_consumers.lua", PruneConsumersKeys, PruneConsumersArgs;
}

lua_keys! { pub struct AttemptKeys { attempt } }
lua_args! { pub struct MarkAttemptArgs<'a> { token: &'a str, exclusive: &'a str, ttl_seconds: u64 } }
lua_script! {
    /// Marks an EXPRESS start about to be tried; answers what an earlier delivery left.
    pub struct MarkAttempt = "attempt_mark.lua", AttemptKeys, MarkAttemptArgs;
}

lua_args! { pub struct MarkStartedArgs<'a> { token: &'a str, started: &'a str, ttl_seconds: u64 } }
lua_script! {
    /// Turns a delivery's own mark into the record of its start.
    pub struct MarkStarted = "attempt_started.lua", AttemptKeys, MarkStartedArgs;
}

lua_args! { pub struct ClearAttemptArgs<'a> { token: &'a str } }
lua_script! {
    /// Drops a delivery's own mark of a start that certainly did not happen.
    pub struct ClearAttempt = "attempt_clear.lua", AttemptKeys, ClearAttemptArgs;
}

/// Every script of the queue, for the contract test.
pub const ALL: &[Contract] = &[
    Enqueue::CONTRACT,
    Withdraw::CONTRACT,
    Reserve::CONTRACT,
    Promote::CONTRACT,
    Release::CONTRACT,
    Complete::CONTRACT,
    DeadLetter::CONTRACT,
    Replay::CONTRACT,
    Purge::CONTRACT,
    TakeLease::CONTRACT,
    PaceReserve::CONTRACT,
    PaceSettle::CONTRACT,
    PruneConsumers::CONTRACT,
    MarkAttempt::CONTRACT,
    MarkStarted::CONTRACT,
    ClearAttempt::CONTRACT,
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_script_uses_exactly_the_names_it_declares() {
        crate::lua::assert_contracts_hold(super::ALL);
    }

    #[test]
    fn every_lua_file_of_the_queue_has_a_contract() {
        let files: Vec<&str> = super::ALL.iter().map(|c| c.file).collect();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/queue");
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".lua") {
                assert!(files.contains(&name.as_str()), "{name} has no contract");
            }
        }
    }
}
