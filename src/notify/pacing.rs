//! Pacing and retry decisions: Slack allows about one message per second
//! per channel (short bursts) and a workspace-wide method rate. Limits are
//! kept with `governor` (keyed by channel, plus one direct limiter), so a
//! throttled channel only ever waits for itself.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{PacingSettings, RetrySettings};

pub struct Pacer {
    per_channel: DefaultKeyedRateLimiter<String>,
    workspace: DefaultDirectRateLimiter,
    history: DefaultDirectRateLimiter,
}

/// A quota a little slower than the nominal rate: requests reach Slack
/// with jitter, and one that arrives a few milliseconds early against
/// Slack's own bucket is a 429 and a second's wait.
fn quota(per_second: u32, burst: u32) -> Quota {
    let per_second = per_second.max(1);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    let period = Duration::from_secs_f64(1.0 / f64::from(per_second)).mul_f64(1.02)
        + Duration::from_micros(PACING_MARGIN_MICROS.min(1_000_000 / u64::from(per_second) / 50));
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// Extra spacing between two messages to one channel, at most 2% of the
/// period.
const PACING_MARGIN_MICROS: u64 = 15_000;

impl Pacer {
    pub fn new(settings: &PacingSettings) -> Pacer {
        Pacer {
            per_channel: RateLimiter::keyed(quota(
                settings.per_channel_per_second,
                settings.per_channel_burst,
            )),
            workspace: RateLimiter::direct(quota(
                settings.workspace_per_second,
                settings.workspace_burst,
            )),
            history: RateLimiter::direct(
                Quota::with_period(Duration::from_secs(60) / settings.history_per_minute.max(1))
                    .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN))
                    .allow_burst(
                        NonZeroU32::new(settings.history_per_minute.clamp(1, 10))
                            .unwrap_or(NonZeroU32::MIN),
                    ),
            ),
        }
    }

    /// Waits until a `conversations.history` call may go.
    pub async fn history_ready(&self) {
        self.history.until_ready().await;
    }

    /// Waits until a message may go to `channel`; returns how long it waited.
    pub async fn ready(&self, channel: &str) -> Duration {
        let started = tokio::time::Instant::now();
        self.per_channel.until_key_ready(&channel.to_owned()).await;
        self.workspace.until_ready().await;
        // Keyed limiters keep one entry per channel ever seen; shed idle ones.
        if self.per_channel.len() > 10_000 {
            self.per_channel.retain_recent();
        }
        started.elapsed()
    }
}

/// Exponential backoff with jitter for attempt `attempt` (1-based): between
/// half and all of `initial · 2^(attempt-1)`, capped at `max`. `jitter` is
/// a number in [0, 1).
pub fn backoff(retry: &RetrySettings, attempt: u32, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let full = retry
        .initial_backoff
        .saturating_mul(1u32 << exponent)
        .min(retry.max_backoff);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// How long to wait before the next attempt, honouring Slack's
/// `Retry-After` when it sent one.
pub fn retry_delay(
    retry: &RetrySettings,
    attempt: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    match retry_after {
        Some(after) => after,
        None => backoff(retry, attempt, jitter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry() -> RetrySettings {
        RetrySettings {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        assert_eq!(backoff(&retry(), 1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(&retry(), 1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(&retry(), 3, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(&retry(), 10, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(&retry(), 40, 0.0), Duration::from_millis(500));
    }

    #[test]
    fn retry_after_wins_over_backoff() {
        assert_eq!(
            retry_delay(&retry(), 1, Some(Duration::from_secs(7)), 0.3),
            Duration::from_secs(7)
        );
        assert_eq!(
            retry_delay(&retry(), 2, None, 1.0),
            Duration::from_millis(200)
        );
    }

    #[tokio::test]
    async fn one_channel_waits_while_another_does_not() {
        let pacer = Pacer::new(&PacingSettings {
            per_channel_per_second: 2,
            per_channel_burst: 1,
            workspace_per_second: 1000,
            workspace_burst: 1000,
            history_per_minute: 50,
        });
        assert!(pacer.ready("A").await < Duration::from_millis(50));
        let other = pacer.ready("B").await;
        assert!(other < Duration::from_millis(50), "B waited {other:?}");
        let second = pacer.ready("A").await;
        assert!(
            second >= Duration::from_millis(400),
            "A waited only {second:?}"
        );
    }
}
