//! The in-process worker that drains workflow queues into Step Functions.

pub mod breaker;
mod delivery;
pub mod drain;
mod express;
pub mod guarantee;
mod in_flight;
mod pacing;
mod reader;
mod recovery;
pub mod repeated;
mod retry;
pub mod sfn;

pub use breaker::Breakers;
pub use drain::{Drain, DrainPartners};
pub use guarantee::Guarantees;
pub use sfn::{AwsStepFunctions, SfnError, StepFunctions};
