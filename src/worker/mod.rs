//! The in-process worker that drains workflow queues into Step Functions.

pub mod drain;
pub mod sfn;

pub use drain::{Drain, DrainTarget};
pub use sfn::{AwsStepFunctions, SfnError, StepFunctions};
