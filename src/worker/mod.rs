//! The in-process worker that drains workflow queues into Step Functions.

pub mod breaker;
pub mod drain;
pub mod repeated;
pub mod sfn;

pub use breaker::Breakers;
pub use drain::{Drain, DrainTarget};
pub use sfn::{AwsStepFunctions, SfnError, StepFunctions};
