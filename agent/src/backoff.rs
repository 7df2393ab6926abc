//! Exponential backoff with jitter for talking to a server that is down or overloaded.

use rand::Rng;
use std::time::Duration;

const FIRST: Duration = Duration::from_millis(500);
const CAP: Duration = Duration::from_secs(30);

/// Doubles from [`FIRST`] to [`CAP`]. Each delay is drawn from the upper half of the current
/// step, so a fleet that lost its server at the same moment does not come back in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { step: FIRST }
    }
}

impl Backoff {
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(CAP);
        step.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    pub(crate) fn reset(&mut self) {
        self.step = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay();
        assert!(first >= FIRST / 2 && first <= FIRST);
        for _ in 0..20 {
            assert!(backoff.next_delay() <= CAP);
        }
        assert!(backoff.next_delay() >= CAP / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= FIRST);
    }
}
