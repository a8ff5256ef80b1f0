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
    pub history: TierLimit,
    pub updates: TierLimit,
}

/// A Web API tier limit (Slack's Tier 3 is "50+ per minute"): calls within
/// a sliding window, the ones beyond answered 429 with a `Retry-After` that
/// lasts until the oldest call leaves the window. `calls: None` = no limit.
#[derive(Debug, Clone, Default)]
pub(super) struct TierLimit {
    pub calls: Option<u32>,
    pub window: Duration,
    recent: VecDeque<Instant>,
}

impl TierLimit {
    pub fn new(calls: Option<u32>, window: Duration) -> Self {
        TierLimit {
            calls,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Counts a call made at `now`; `Err(Retry-After seconds)` beyond the
    /// limit (a refused call does not count).
    pub fn admit(&mut self, now: Instant) -> Result<(), u64> {
        let Some(limit) = self.calls else {
            return Ok(());
        };
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() < limit as usize {
            self.recent.push_back(now);
            return Ok(());
        }
        let oldest = self.recent.front().copied().unwrap_or(now);
        let wait = self.window.saturating_sub(now.duration_since(oldest));
        Err(wait.as_secs_f64().ceil().max(1.0) as u64)
    }
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
    pub fn new(seed: u64, history: TierLimit, updates: TierLimit) -> Self {
        Faults {
            outage: None,
            ambiguous_rate: 0.0,
            late_answer: Duration::ZERO,
            ambiguous_so_far: 0,
            ambiguous_rng: fastrand::Rng::with_seed(seed),
            rate_limit_rate: 0.0,
            retry_after_secs: 1,
            rate_limit_rng: fastrand::Rng::with_seed(seed ^ RATE_LIMIT_STREAM),
            history,
            updates,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tier_limit_slides_over_its_window() {
        let mut limit = TierLimit::new(Some(2), Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(limit.admit(start), Ok(()));
        assert_eq!(limit.admit(start + Duration::from_secs(10)), Ok(()));
        assert_eq!(limit.admit(start + Duration::from_secs(20)), Err(40));
        assert_eq!(limit.admit(start + Duration::from_secs(60)), Ok(()));
        assert_eq!(limit.admit(start + Duration::from_millis(69_500)), Err(1));
        let mut unlimited = TierLimit::new(None, Duration::from_secs(60));
        assert!((0..1000).all(|_| unlimited.admit(start).is_ok()));
    }

    #[test]
    fn ambiguous_answers_alternate_and_rates_clamp() {
        let mut faults = Faults::new(1, TierLimit::default(), TierLimit::default());
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
