//! `Duration`s written in TOML as whole milliseconds or seconds: the key says which
//! (`…_ms`, `…_seconds`), the type holds a `Duration`, so no code converts by hand.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// For `#[serde(with = "…::millis")]`: a whole number of milliseconds.
pub mod millis {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(raw: D) -> Result<Duration, D::Error> {
        u64::deserialize(raw).map(Duration::from_millis)
    }
}

/// For `#[serde(with = "…::seconds")]`: a whole number of seconds.
pub mod seconds {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(raw: D) -> Result<Duration, D::Error> {
        u64::deserialize(raw).map(Duration::from_secs)
    }
}

/// A number of seconds that may be left out (`None`: a default derived elsewhere).
pub mod optional_seconds {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(raw: D) -> Result<Option<Duration>, D::Error> {
        u64::deserialize(raw).map(|s| Some(Duration::from_secs(s)))
    }
}
