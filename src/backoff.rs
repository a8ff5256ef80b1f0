//! Capped exponential backoff with jitter, for the retry loops that wait on
//! something outside the process (the broker, the Schema Registry).

use std::time::Duration;

/// Delays that double from `initial` up to `max`; each is drawn between half
/// and all of its nominal value, so replicas that failed together do not
/// retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delay_for(self.attempt, fastrand::f64());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Back to `initial` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay of failure number `attempt` (0-based); `jitter` is in [0, 1).
    fn delay_for(&self, attempt: u32, jitter: f64) -> Duration {
        let nominal = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        nominal.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_jitter_and_is_capped() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(backoff.delay_for(0, 0.0), Duration::from_millis(50));
        assert!(backoff.delay_for(0, 0.999) < Duration::from_millis(100));
        assert_eq!(backoff.delay_for(2, 1.0), Duration::from_millis(400));
        assert_eq!(backoff.delay_for(10, 1.0), Duration::from_secs(1));
        assert_eq!(backoff.delay_for(u32::MAX, 0.0), Duration::from_millis(500));
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..5 {
            backoff.next_delay();
        }
        assert!(backoff.next_delay() >= Duration::from_millis(500));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
