//! The audit trail: every decision, signed and hash-chained in Redis.

pub mod record;
pub mod signer;
pub mod verify;
pub mod writer;

pub use record::{AuditEvent, EventKind};
pub use signer::AuditSigner;
pub use writer::{AuditLog, AuditWriter};
