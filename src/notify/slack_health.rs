//! Whether Slack can be reached, learned from every call's outcome, and a
//! probe that finds out when it is back: the dispatcher pauses consumption
//! while it is away, so alerts wait in Kafka rather than in memory or the
//! dead-letter topic.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::decision::{classify, Failure};
use crate::slack::{SlackApi, SlackError};

/// Whether Slack can be reached, from the outcome of every call: after
/// `threshold` calls in a row that could not reach it (or got no answer),
/// it is unreachable until a call gets an answer. The dispatcher pauses
/// consumption meanwhile.
pub struct SlackHealth {
    threshold: u32,
    failures_in_a_row: AtomicU32,
    unreachable: AtomicBool,
    gauge: prometheus::IntGauge,
}

impl SlackHealth {
    pub fn new(threshold: u32, gauge: prometheus::IntGauge) -> SlackHealth {
        SlackHealth {
            threshold: threshold.max(1),
            failures_in_a_row: AtomicU32::new(0),
            unreachable: AtomicBool::new(false),
            gauge,
        }
    }

    pub fn is_unreachable(&self) -> bool {
        self.unreachable.load(Ordering::SeqCst)
    }

    /// While Slack is unreachable, asks it (`auth.test`) every `every`:
    /// with every partition paused there may be no delivery left to find
    /// out that it is back.
    pub async fn probe(&self, slack: &SlackApi, every: Duration, stop: &CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            if !self.is_unreachable() {
                continue;
            }
            match slack.auth_test().await {
                Ok(()) => self.answered(),
                Err(e) => match classify(&e) {
                    Failure::Unreachable | Failure::Ambiguous => {
                        tracing::debug!(error = %e, "Slack still unreachable")
                    }
                    // Any answer means Slack is there; what it said is for
                    // the deliveries to find out.
                    _ => self.answered(),
                },
            }
        }
    }

    /// Tells the detector how a call ended: its value, or the error with
    /// its class. Every Slack call's result goes through here.
    pub(super) fn observe<T>(
        &self,
        result: Result<T, SlackError>,
    ) -> Result<T, (SlackError, Failure)> {
        let error = match result {
            Ok(value) => {
                self.answered();
                return Ok(value);
            }
            Err(e) => e,
        };
        let failure = classify(&error);
        match failure {
            Failure::Unreachable | Failure::Ambiguous => self.no_answer(&error),
            _ => self.answered(),
        }
        Err((error, failure))
    }

    pub(super) fn answered(&self) {
        self.failures_in_a_row.store(0, Ordering::SeqCst);
        if self.unreachable.swap(false, Ordering::SeqCst) {
            self.gauge.set(0);
            tracing::warn!("Slack answers again: consumption resumes");
        }
    }

    pub(super) fn no_answer(&self, error: &SlackError) {
        let failures = self.failures_in_a_row.fetch_add(1, Ordering::SeqCst) + 1;
        if failures >= self.threshold && !self.unreachable.swap(true, Ordering::SeqCst) {
            self.gauge.set(1);
            tracing::warn!(%error, failures, "Slack is unreachable: consumption paused, alerts wait (up to max_age)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_after_calls_in_a_row_without_an_answer_until_one_answers() {
        let health = SlackHealth::new(3, prometheus::IntGauge::new("g", "g").unwrap());
        let lost = SlackError::Timeout(Duration::from_secs(1));
        health.no_answer(&lost);
        health.no_answer(&lost);
        health.answered();
        health.no_answer(&lost);
        health.no_answer(&lost);
        assert!(!health.is_unreachable(), "an answer in between resets");
        health.no_answer(&lost);
        assert!(health.is_unreachable());
        assert_eq!(health.gauge.get(), 1);
        health.answered();
        assert!(!health.is_unreachable());
        assert_eq!(health.gauge.get(), 0);
    }
}
