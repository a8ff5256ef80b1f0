//! The limiters [`super::Pacer`] combines, on tokio's clock: governor's
//! keyed and direct ones, a GCRA of its own for the per-minute tiers
//! (governor's cannot say when it would next allow without taking the
//! grant), and the per-channel limiter charged at answer time.

use std::num::NonZeroU32;
use std::ops::Add;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};
use tokio::time::Instant;

/// tokio's clock for governor: it stands still and jumps with
/// `tokio::time::pause`/`advance`, as everything else in the process does.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokioInstant(tokio::time::Instant);

impl Add<Nanos> for TokioInstant {
    type Output = TokioInstant;

    fn add(self, later: Nanos) -> TokioInstant {
        TokioInstant(self.0 + Duration::from(later))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::from(self.0.saturating_duration_since(earlier.0))
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        TokioInstant(
            self.0
                .checked_sub(Duration::from(duration))
                .unwrap_or(self.0),
        )
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        TokioInstant(tokio::time::Instant::now())
    }
}

pub(super) type Middleware = NoOpMiddleware<TokioInstant>;
pub(super) type ChannelLimiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, TokioClock, Middleware>;
pub(super) type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, Middleware>;

/// The generic cell rate algorithm on tokio's clock: one request per
/// `period` on average, `tolerance` ahead of that schedule at most (a
/// burst of `tolerance / period + 1`). Pure: the caller keeps the
/// theoretical arrival time (TAT).
#[derive(Debug, Clone, Copy)]
pub(super) struct Gcra {
    period: Duration,
    tolerance: Duration,
}

impl Gcra {
    pub(super) fn new(period: Duration, burst: u32) -> Gcra {
        Gcra {
            period,
            tolerance: period * burst.max(1).saturating_sub(1),
        }
    }

    /// When the next request may go, if not at `now`.
    pub(super) fn not_before(&self, tat: Option<Instant>, now: Instant) -> Option<Instant> {
        let at = tat?.checked_sub(self.tolerance)?;
        (at > now).then_some(at)
    }

    /// The TAT after a request at `now`.
    pub(super) fn charged(&self, tat: Option<Instant>, now: Instant) -> Instant {
        tat.map_or(now, |tat| tat.max(now)) + self.period
    }
}

/// A [`Gcra`] with its one TAT, for a workspace-wide tier.
pub(super) struct TierLimiter {
    gcra: Gcra,
    tat: std::sync::Mutex<Option<Instant>>,
}

impl TierLimiter {
    pub(super) fn new(gcra: Gcra) -> TierLimiter {
        TierLimiter {
            gcra,
            tat: std::sync::Mutex::new(None),
        }
    }

    pub(super) fn not_before(&self) -> Option<Instant> {
        let tat = *self.tat.lock().unwrap_or_else(|e| e.into_inner());
        self.gcra.not_before(tat, Instant::now())
    }

    pub(super) async fn until_free(&self) {
        while let Some(at) = self.not_before() {
            tokio::time::sleep_until(at).await;
        }
    }

    pub(super) fn take(&self) {
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        *tat = Some(self.gcra.charged(*tat, Instant::now()));
    }
}

/// Slack counts a request when it *arrives*, the limiters above when they
/// let it go; when many channels start at once, a request can arrive late
/// and the channel's next one less than a period after it (a 429). This
/// per-channel GCRA at Slack's nominal rate and burst is charged with each
/// request's *answer* time instead: a request arrives no later than it is
/// answered, and a later arrival only moves the bucket's theoretical
/// arrival time later, so whatever this lets go Slack's bucket admits
/// whatever the transit delay. It is charged by [`Pacer::answered`].
pub(super) struct AnsweredLimiter {
    gcra: Gcra,
    /// Theoretical arrival time per channel.
    tat: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

impl AnsweredLimiter {
    pub(super) fn new(per_second: u32, burst: u32) -> AnsweredLimiter {
        AnsweredLimiter {
            gcra: Gcra::new(Duration::from_secs(1) / per_second.max(1), burst),
            tat: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// When a request to `channel` may go, if not now.
    pub(super) fn not_before(&self, channel: &str) -> Option<Instant> {
        let tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        self.gcra
            .not_before(tat.get(channel).copied(), Instant::now())
    }

    pub(super) fn charge(&self, channel: &str) {
        let now = Instant::now();
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        if tat.len() > 10_000 {
            tat.retain(|_, at| *at > now);
        }
        let at = tat.entry(channel.to_owned()).or_insert(now);
        *at = self.gcra.charged(Some(*at), now);
    }
}

/// Sleeps (on tokio's timer) until `check` lets a request go.
pub(super) async fn until_allowed(mut check: impl FnMut() -> Result<(), NotUntil<TokioInstant>>) {
    while let Err(not_until) = check() {
        tokio::time::sleep(not_until.wait_time_from(TokioClock.now())).await;
    }
}

/// A quota a little slower than the nominal rate: requests reach Slack
/// with jitter, and one that arrives a few milliseconds early against
/// Slack's own bucket is a 429 and a second's wait.
pub(super) fn quota(per_second: u32, burst: u32) -> Quota {
    let per_second = per_second.max(1);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    let period = Duration::from_secs_f64(1.0 / f64::from(per_second)).mul_f64(1.02)
        + Duration::from_micros(PACING_MARGIN_MICROS.min(1_000_000 / u64::from(per_second) / 50));
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// The schedule of one of Slack's per-minute tiers, which Slack counts
/// over any minute: a burst of a tenth of the calls (at most 5), the rest
/// spread so that a burst plus what follows within a minute stays at
/// `per_minute`, with 2% to spare for requests that reach Slack unevenly.
pub(super) fn per_minute_tier(per_minute: u32) -> (Duration, u32) {
    let per_minute = per_minute.max(1);
    let burst = (per_minute / 10).clamp(1, 5);
    let period = (Duration::from_secs(60) / (per_minute - burst + 1)).mul_f64(1.02);
    (period, burst)
}

pub(super) fn per_minute_quota(per_minute: u32) -> Quota {
    let (period, burst) = per_minute_tier(per_minute);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

/// Extra spacing between two messages to one channel, at most 2% of the
/// period.
pub(super) const PACING_MARGIN_MICROS: u64 = 15_000;
