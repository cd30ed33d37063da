//! The Redis queue between admission and the drain: one stream per workflow.

pub mod consumer;
pub mod dead_letters;
pub mod keys;
pub mod producer;
pub mod request;

pub use keys::{Keys, WORKERS_GROUP};
pub use producer::{
    Admission, Enqueued, IdempotencyKey, Limit, LimitScope, OneTimeToken, Producer, Quota,
};
pub use request::{QueuedRequest, RequestState, StoredStatus};
