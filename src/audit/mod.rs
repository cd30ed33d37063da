//! The audit trail: every decision, signed, hash-chained and checkpointed in Redis.

pub mod canonical;
pub mod checkpoint;
mod events;
pub mod export;
pub mod export_backlog;
mod export_lease;
pub mod files;
pub mod merkle;
mod open;
pub mod outbox;
mod outbox_entries;
pub mod proof;
pub mod record;
pub mod redact;
pub mod refusals;
mod relayed;
pub mod s3;
pub mod scripts;
pub mod signer;
pub mod store;
pub mod trail;
pub mod verify;
pub mod writer;

pub use events::{DeadLetterHandled, OperatorApi};
pub use record::{AuditEvent, EventKind};
pub use signer::AuditSigner;
pub use writer::{AuditLog, AuditWriter, WriterSettings};
