//! What tests and benchmarks share with the library (the `test-helpers` feature): the one
//! typed builder of test configurations. Partners (Redis, the IdP, the Step Functions
//! emulator, the fault proxy) are started by the harness under `tests/support/`.

mod config;
mod toml_text;

pub use config::{REGION, TestConfig, TestPartners};
