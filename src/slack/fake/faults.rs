//! The faults a chaos test injects into the fake: an outage, posts whose
//! answer is lost though Slack stored them, and 429s beyond the fake's own
//! rate limits. Random choices come from seeded generators, so a run can
//! be repeated exactly; each fault has its own generator, so switching one
//! fault on does not move which calls another one hits.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How the fake is down while an outage lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageMode {
    /// Connections are accepted and dropped without an HTTP answer (open
    /// ones at their next request): the client sees a transport error, as
    /// when Slack's edge cannot be reached.
    Refuse,
    /// Every call answers this HTTP status (an invalid one answers 500).
    ServerError(u16),
}

/// What the caller of a stored `chat.postMessage` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PostAnswer {
    Success,
    /// Ambiguous: stored, but answered HTTP 500.
    ServerError,
    /// Ambiguous: stored, and answered only after this delay (meant to
    /// exceed the client's timeout).
    Late(Duration),
}

/// How long Slack counts history calls against the tier limit.
const HISTORY_WINDOW: Duration = Duration::from_secs(60);
/// Keeps the generators of the different faults apart.
const RATE_LIMIT_STREAM: u64 = 0x9e37_79b9_7f4a_7c15;

pub(super) struct Faults {
    pub outage: Option<OutageMode>,
    ambiguous_rate: f64,
    late_answer: Duration,
    ambiguous_so_far: u64,
    ambiguous_rng: fastrand::Rng,
    rate_limit_rate: f64,
    retry_after_secs: u64,
    rate_limit_rng: fastrand::Rng,
    pub history_per_minute: Option<u32>,
    history_calls: VecDeque<Instant>,
}

/// A probability from a caller's rate: NaN and out-of-range values clamp.
fn probability(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    }
}

impl Faults {
    pub fn new(seed: u64, history_per_minute: Option<u32>) -> Self {
        Faults {
            outage: None,
            ambiguous_rate: 0.0,
            late_answer: Duration::ZERO,
            ambiguous_so_far: 0,
            ambiguous_rng: fastrand::Rng::with_seed(seed),
            rate_limit_rate: 0.0,
            retry_after_secs: 1,
            rate_limit_rng: fastrand::Rng::with_seed(seed ^ RATE_LIMIT_STREAM),
            history_per_minute,
            history_calls: VecDeque::new(),
        }
    }

    pub fn set_ambiguous(&mut self, rate: f64, late_answer: Duration) {
        self.ambiguous_rate = probability(rate);
        self.late_answer = late_answer;
    }

    pub fn set_rate_limit_injection(&mut self, rate: f64, retry_after_secs: u64) {
        self.rate_limit_rate = probability(rate);
        self.retry_after_secs = retry_after_secs;
    }

    /// `Some(Retry-After seconds)` when this post is to be answered 429.
    pub fn injected_rate_limit(&mut self) -> Option<u64> {
        // No draw when off, so a run without this fault keeps its sequence.
        let hit = self.rate_limit_rate > 0.0 && self.rate_limit_rng.f64() < self.rate_limit_rate;
        hit.then_some(self.retry_after_secs)
    }

    /// The answer to a post that has just been stored.
    pub fn post_answer(&mut self) -> PostAnswer {
        if self.ambiguous_rate <= 0.0 || self.ambiguous_rng.f64() >= self.ambiguous_rate {
            return PostAnswer::Success;
        }
        // Alternating rather than drawn: exactly half of each kind, and a
        // test knows that the first ambiguous post is the 500.
        self.ambiguous_so_far += 1;
        if self.ambiguous_so_far % 2 == 1 {
            PostAnswer::ServerError
        } else {
            PostAnswer::Late(self.late_answer)
        }
    }

    /// Counts a `conversations.history` call against the tier limit;
    /// `Err(Retry-After seconds)` beyond it.
    pub fn admit_history(&mut self, now: Instant) -> Result<(), u64> {
        let Some(limit) = self.history_per_minute else {
            return Ok(());
        };
        while self
            .history_calls
            .front()
            .is_some_and(|t| now.duration_since(*t) >= HISTORY_WINDOW)
        {
            self.history_calls.pop_front();
        }
        if self.history_calls.len() < limit as usize {
            self.history_calls.push_back(now);
            return Ok(());
        }
        let oldest = self.history_calls.front().copied().unwrap_or(now);
        let wait = HISTORY_WINDOW.saturating_sub(now.duration_since(oldest));
        Err(wait.as_secs_f64().ceil().max(1.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_limit_slides_over_a_minute() {
        let mut faults = Faults::new(1, Some(2));
        let start = Instant::now();
        assert_eq!(faults.admit_history(start), Ok(()));
        assert_eq!(
            faults.admit_history(start + Duration::from_secs(10)),
            Ok(())
        );
        assert_eq!(
            faults.admit_history(start + Duration::from_secs(20)),
            Err(40)
        );
        assert_eq!(
            faults.admit_history(start + Duration::from_secs(60)),
            Ok(())
        );
        assert_eq!(
            faults.admit_history(start + Duration::from_millis(69_500)),
            Err(1)
        );
    }

    #[test]
    fn ambiguous_answers_alternate_and_rates_clamp() {
        let mut faults = Faults::new(1, None);
        faults.set_ambiguous(7.0, Duration::from_secs(3));
        assert_eq!(faults.post_answer(), PostAnswer::ServerError);
        assert_eq!(
            faults.post_answer(),
            PostAnswer::Late(Duration::from_secs(3))
        );
        assert_eq!(faults.post_answer(), PostAnswer::ServerError);
        faults.set_ambiguous(f64::NAN, Duration::ZERO);
        assert_eq!(faults.post_answer(), PostAnswer::Success);
    }
}
