//! The API's routes, one module per resource.

pub mod audit;
pub mod dead_letters;
pub mod executions;
pub mod health;
pub mod metrics;
pub mod requests;
pub mod workflows;
