//! The audit trail's Lua scripts and their keys and arguments by name (see [`crate::lua`]).
//! Every key is in the `{audit}` slot.

use crate::lua::{Contract, lua_args, lua_keys, lua_script};

lua_keys! { pub struct AppendKeys { head, log, checkpoints, writer_batch, relayed } }
lua_args! {
    pub struct AppendArgs<'a> {
        expected_seq: u64,
        expected_hash: &'a str,
        batch_id: u64,
        new_seq: u64,
        new_hash: &'a str,
        kid: &'a str,
        frontier: String,
        checkpoint_body: &'a str,
        checkpoint_sig: &'a str,
        now_ms: u64,
        outbox: &'a str,
        outbox_after: &'a str,
        outbox_last: &'a str,
        ..records: Vec<(&'a [u8], &'a str)>,
    }
}
lua_script! {
    /// Appends chained, signed records (and a checkpoint) with compare-and-set on the head.
    pub struct Append = "append.lua", AppendKeys, AppendArgs;
}

lua_keys! { pub struct TrimKeys { marker, log, checkpoints, fence } }
lua_args! {
    pub struct TrimArgs<'a> {
        token: u64,
        expected_seq: u64,
        seq: u64,
        hash: &'a str,
        frontier: String,
        kid: &'a str,
        keep_checkpoints_from: &'a str,
        ..entry_ids: &'a [String],
    }
}
lua_script! {
    /// Deletes exported records from the front and moves the trim marker with them.
    pub struct Trim = "trim.lua", TrimKeys, TrimArgs;
}

lua_keys! { pub struct ExportLeaseKeys { lease, fence } }
lua_args! { pub struct ExportLeaseArgs<'a> { holder: &'a str, ttl_ms: u64 } }
lua_script! {
    /// Takes or renews the file exporter's lease; answers its fencing token.
    pub struct ExportLease = "export_lease.lua", ExportLeaseKeys, ExportLeaseArgs;
}

lua_keys! { pub struct ReleaseExportLeaseKeys { lease } }
lua_args! { pub struct ReleaseExportLeaseArgs<'a> { holder: &'a str, token: u64 } }
lua_script! {
    /// Gives up the file exporter's lease, if still held.
    pub struct ReleaseExportLease = "export_release.lua", ReleaseExportLeaseKeys, ReleaseExportLeaseArgs;
}

lua_keys! { pub struct ExportCursorKeys { export, fence } }
lua_args! { pub struct ExportCursorArgs<'a> { token: u64, seq: u64, sink: &'a str } }
lua_script! {
    /// Records how far the sink goes, and where it ends (`sink`: the files, or the S3
    /// segment that ends at `seq`), if the fencing token is still the newest.
    pub struct ExportCursor = "export_cursor.lua", ExportCursorKeys, ExportCursorArgs;
}

/// Every script of the audit trail, for the contract test.
pub const ALL: &[Contract] = &[
    Append::CONTRACT,
    Trim::CONTRACT,
    ExportLease::CONTRACT,
    ReleaseExportLease::CONTRACT,
    ExportCursor::CONTRACT,
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_script_uses_exactly_the_names_it_declares() {
        crate::lua::assert_contracts_hold(super::ALL);
    }
}
