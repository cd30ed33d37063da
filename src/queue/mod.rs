//! The Redis queue between admission and the drain: one stream per workflow.

pub mod attempts;
pub mod consumer;
pub mod dead_letters;
pub mod keys;
pub mod pacing;
pub mod producer;
pub mod request;
pub mod scripts;
pub mod waiting;

pub use keys::{Keys, WORKERS_GROUP};
pub use producer::{
    Admission, Enqueued, IdempotencyKey, Limit, LimitScope, OneTimeToken, Placement, Producer,
    Quota,
};
pub use request::{QueuedRequest, RequestState, StoredStatus};

/// `<ms>-<seq>`: a Redis stream entry id.
pub fn is_stream_id(raw: &str) -> bool {
    raw.split_once('-').is_some_and(|(ms, seq)| {
        [ms, seq]
            .iter()
            .all(|part| (1..=20).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit()))
    })
}
