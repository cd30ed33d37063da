//! The retry schedule's jitter.

use std::time::Duration;

/// `pause` ± 20%, so retries of many entries do not fire in lockstep.
pub(super) fn jittered(pause: Duration) -> Duration {
    let pause_ms = pause.as_millis() as u64;
    let spread = pause_ms / 5;
    let offset = if spread == 0 {
        0
    } else {
        u64::from(rand_core::RngCore::next_u32(&mut rand_core::OsRng)) % (2 * spread + 1)
    };
    Duration::from_millis(pause_ms - spread + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(1)).as_millis();
            assert!((800..=1200).contains(&d), "{d}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}
