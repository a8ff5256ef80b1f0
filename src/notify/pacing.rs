//! Pacing and retry decisions: Slack allows about one message per second
//! per channel (short bursts) and a workspace-wide method rate. Limits are
//! kept with `governor` (keyed by channel, plus one direct limiter), so a
//! throttled channel only ever waits for itself. The limiters read tokio's
//! clock and wait with tokio's timer, so tests run pacing under paused time.

use std::time::Duration;

use governor::RateLimiter;
use tokio::time::Instant;

use super::keyed_locks::{KeyedGuard, KeyedLocks};
use crate::config::{PacingSettings, RetrySettings};
mod limiters;

use self::limiters::*;

pub struct Pacer {
    per_channel: ChannelLimiter,
    workspace: DirectLimiter,
    history: DirectLimiter,
    /// Lookups waiting for the history tier, first come first served (the
    /// limiter alone lets whichever waiter wakes first through).
    history_line: tokio::sync::Mutex<()>,
    /// `chat.update`'s own tier (Tier 3), workspace-wide: a burst of
    /// resolutions or clicks would otherwise run into 429s together.
    updates: TierLimiter,
    /// Edits waiting for the tier, first come first served: only the first
    /// in line goes on to its channel, so the tier's grant is taken right
    /// before its call while no channel is held waiting for the tier.
    update_line: tokio::sync::Mutex<()>,
    answered: AnsweredLimiter,
    /// One call at a time per channel, from its grant to its answer: the
    /// answered limiter's charge then always follows the call it paced,
    /// whichever task (a channel's worker, an edit waiting for its tier, a
    /// click's edit, a group's summary) makes it.
    lanes: KeyedLocks,
}

/// A request's turn at its channel: the caller makes its call and hands
/// the turn back to [`Pacer::answered`]. Dropped unanswered (no call was
/// made), the channel is simply free again.
#[must_use = "hand the turn back to Pacer::answered once the call is answered"]
pub struct Turn<'a> {
    channel: String,
    /// How long the request waited for its turn.
    pub waited: Duration,
    _lane: KeyedGuard<'a>,
}

impl Pacer {
    pub fn new(settings: &PacingSettings) -> Pacer {
        Pacer {
            per_channel: RateLimiter::dashmap_with_clock(
                quota(settings.per_channel_per_second, settings.per_channel_burst),
                TokioClock,
            ),
            workspace: RateLimiter::direct_with_clock(
                quota(settings.workspace_per_second, settings.workspace_burst),
                TokioClock,
            ),
            history: RateLimiter::direct_with_clock(
                per_minute_quota(settings.history_per_minute),
                TokioClock,
            ),
            history_line: tokio::sync::Mutex::new(()),
            updates: TierLimiter::new({
                let (period, burst) = per_minute_tier(settings.updates_per_minute);
                Gcra::new(period, burst)
            }),
            update_line: tokio::sync::Mutex::new(()),
            answered: AnsweredLimiter::new(
                settings.per_channel_per_second,
                settings.per_channel_burst,
            ),
            lanes: KeyedLocks::default(),
        }
    }

    /// The request made in `turn` was answered (or failed): it reached
    /// Slack by now, and the channel is free for the next.
    pub fn answered(&self, turn: Turn<'_>) {
        self.answered.charge(&turn.channel);
    }

    /// Waits until a `conversations.history` call may go, in line with the
    /// other lookups. `on_wait` runs once, first, if the call cannot go at
    /// once: the tier is the workspace's and a burst of lookups makes the
    /// line long, so the caller lets go of what others wait on (its
    /// channel) before it waits.
    pub async fn history_ready(&self, on_wait: impl FnOnce()) {
        if let Ok(_first) = self.history_line.try_lock() {
            if self.history.check().is_ok() {
                return;
            }
            on_wait();
            until_allowed(|| self.history.check()).await;
            return;
        }
        on_wait();
        let _in_line = self.history_line.lock().await;
        until_allowed(|| self.history.check()).await;
    }

    /// Waits until a `chat.update` of a message in `channel` may go: in
    /// line with the other edits until the method's tier has room, holding
    /// no channel meanwhile; then the channel's turn, and the tier's grant
    /// taken just before the call.
    pub async fn update_ready(&self, channel: &str) -> Turn<'_> {
        let started = Instant::now();
        let first_in_line = self.update_line.lock().await;
        self.updates.until_free().await;
        let mut turn = self.ready(channel).await;
        // Nobody else takes the tier while this edit is first in line: it
        // is still free (waiting again is only for safety).
        self.updates.until_free().await;
        self.updates.take();
        drop(first_in_line);
        turn.waited = started.elapsed();
        turn
    }

    /// Waits until a message may go to `channel`: its turn at the channel,
    /// then the channel's and the workspace's pace.
    pub async fn ready(&self, channel: &str) -> Turn<'_> {
        let started = Instant::now();
        let lane = self.lanes.lock(channel).await;
        while let Some(at) = self.answered.not_before(channel) {
            tokio::time::sleep_until(at).await;
        }
        let key = channel.to_owned();
        until_allowed(|| self.per_channel.check_key(&key)).await;
        until_allowed(|| self.workspace.check()).await;
        // Keyed limiters keep one entry per channel ever seen; shed idle ones.
        if self.per_channel.len() > 10_000 {
            self.per_channel.retain_recent();
        }
        Turn {
            channel: key,
            waited: started.elapsed(),
            _lane: lane,
        }
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
    use std::sync::Arc;

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

    // Paused time: the figures are exact, and the test takes no wall time.
    #[tokio::test(start_paused = true)]
    async fn one_channel_waits_while_another_does_not() {
        let pacer = Pacer::new(&PacingSettings {
            per_channel_per_second: 2,
            per_channel_burst: 1,
            ..PacingSettings::roomy()
        });
        assert_eq!(pacer.ready("A").await.waited, Duration::ZERO);
        assert_eq!(
            pacer.ready("B").await.waited,
            Duration::ZERO,
            "B waits for nobody"
        );
        // 2/s, slowed by 2% and a margin of at most 2% of the period.
        let second = pacer.ready("A").await.waited;
        assert!(
            second >= Duration::from_millis(510) && second <= Duration::from_millis(530),
            "A waited {second:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_moves_the_channels_next_request_later() {
        let pacer = Pacer::new(&PacingSettings {
            per_channel_per_second: 1,
            per_channel_burst: 2,
            ..PacingSettings::roomy()
        });
        // A burst of two, the first answered (so: arrived) only 900 ms later.
        let first = pacer.ready("A").await;
        assert_eq!(first.waited, Duration::ZERO);
        tokio::time::advance(Duration::from_millis(900)).await;
        pacer.answered(first);
        let second = pacer.ready("A").await;
        assert_eq!(second.waited, Duration::ZERO);
        pacer.answered(second);
        // The grant-time limiter alone would let the third go at ~1.035 s;
        // Slack saw the first at up to 900 ms, so it must wait until 1.9 s.
        let third = pacer.ready("A").await.waited;
        assert_eq!(third, Duration::from_millis(1000), "waited {third:?}");
        // Another channel is not held back.
        assert_eq!(pacer.ready("B").await.waited, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_workspace_limit_holds_every_channel_back() {
        let pacer = Pacer::new(&PacingSettings {
            per_channel_per_second: 100,
            per_channel_burst: 10,
            workspace_per_second: 2,
            workspace_burst: 1,
            ..PacingSettings::roomy()
        });
        assert_eq!(pacer.ready("A").await.waited, Duration::ZERO);
        let other = pacer.ready("B").await.waited;
        assert!(
            other >= Duration::from_millis(510) && other <= Duration::from_millis(530),
            "B waited {other:?}"
        );
    }

    fn settings(per_channel_per_second: u32, updates_per_minute: u32) -> PacingSettings {
        PacingSettings {
            per_channel_per_second,
            per_channel_burst: 1,
            updates_per_minute,
            ..PacingSettings::roomy()
        }
    }

    /// An edit waiting for `chat.update`'s tier holds no channel: its own
    /// channel's next post and other channels go meanwhile, and the edit
    /// goes when the tier has room.
    #[tokio::test(start_paused = true)]
    async fn an_edit_waiting_for_its_tier_holds_no_channel() {
        // 6 a minute: a burst of 1, then one per 10.2 s.
        let pacer = Arc::new(Pacer::new(&settings(100, 6)));
        let start = Instant::now();
        let first = pacer.update_ready("A").await;
        assert_eq!(first.waited, Duration::ZERO);
        pacer.answered(first);
        let edit = tokio::spawn({
            let pacer = pacer.clone();
            async move {
                let turn = pacer.update_ready("A").await;
                let waited = turn.waited;
                pacer.answered(turn);
                (waited, start.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let post = pacer.ready("A").await;
        assert_eq!(post.waited, Duration::ZERO, "A's next post does not wait");
        pacer.answered(post);
        let post = pacer.ready("A").await;
        assert!(
            post.waited <= Duration::from_millis(20),
            "{:?}",
            post.waited
        );
        pacer.answered(post);
        assert!(!edit.is_finished(), "the tier has no room yet");
        let (waited, at) = edit.await.unwrap();
        assert!(
            at >= Duration::from_millis(10_200) && at <= Duration::from_millis(10_220),
            "the edit went at {at:?}"
        );
        assert!(waited >= Duration::from_millis(10_100), "{waited:?}");
    }

    /// Calls to one channel never overlap, whoever makes them: the next
    /// turn starts when the last call is answered (or given up).
    #[tokio::test(start_paused = true)]
    async fn one_channel_has_one_call_in_flight() {
        let pacer = Arc::new(Pacer::new(&settings(1000, 1000)));
        let turn = pacer.ready("A").await;
        let next = tokio::spawn({
            let pacer = pacer.clone();
            async move { pacer.ready("A").await.waited }
        });
        let edit = tokio::spawn({
            let pacer = pacer.clone();
            async move { pacer.update_ready("A").await.waited }
        });
        assert_eq!(pacer.ready("B").await.waited, Duration::ZERO);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!next.is_finished() && !edit.is_finished(), "A is busy");
        pacer.answered(turn);
        assert!(next.await.unwrap() >= Duration::from_secs(5));
        assert!(edit.await.unwrap() >= Duration::from_secs(5));
    }

    /// Edits waiting for the tier go in the order they asked.
    #[tokio::test(start_paused = true)]
    async fn edits_wait_for_the_tier_in_line() {
        let pacer = Arc::new(Pacer::new(&settings(100, 6)));
        pacer.answered(pacer.update_ready("X").await);
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut edits = Vec::new();
        for channel in ["C", "B", "A", "B"] {
            let (pacer, order) = (pacer.clone(), order.clone());
            edits.push(tokio::spawn(async move {
                let turn = pacer.update_ready(channel).await;
                order.lock().unwrap().push((channel, Instant::now()));
                pacer.answered(turn);
            }));
            tokio::task::yield_now().await;
        }
        for edit in edits {
            edit.await.unwrap();
        }
        let order = order.lock().unwrap();
        let channels: Vec<_> = order.iter().map(|(c, _)| *c).collect();
        assert_eq!(channels, ["C", "B", "A", "B"]);
        for pair in order.windows(2) {
            assert!(pair[1].1 - pair[0].1 >= Duration::from_millis(10_200));
        }
    }

    /// Lookups waiting for the history tier go in the order they asked,
    /// and only a lookup that has to wait is told to let go of its channel.
    #[tokio::test(start_paused = true)]
    async fn lookups_wait_for_the_history_tier_in_line() {
        let pacer = Arc::new(Pacer::new(&PacingSettings {
            history_per_minute: 6,
            ..settings(100, 50)
        }));
        let told = std::sync::atomic::AtomicBool::new(false);
        pacer
            .history_ready(|| told.store(true, std::sync::atomic::Ordering::SeqCst))
            .await;
        assert!(!told.into_inner(), "the burst's lookup went at once");
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut lookups = Vec::new();
        for n in 0..4 {
            let (pacer, order) = (pacer.clone(), order.clone());
            lookups.push(tokio::spawn(async move {
                let mut told = false;
                pacer.history_ready(|| told = true).await;
                order.lock().unwrap().push((n, told, Instant::now()));
            }));
            tokio::task::yield_now().await;
        }
        for lookup in lookups {
            lookup.await.unwrap();
        }
        let order = order.lock().unwrap();
        let seen: Vec<_> = order.iter().map(|(n, told, _)| (*n, *told)).collect();
        assert_eq!(seen, [(0, true), (1, true), (2, true), (3, true)]);
        // 6 a minute: a burst of one, then one every 60 / 6 · 1.02 s.
        for pair in order.windows(2) {
            assert!(pair[1].2 - pair[0].2 >= Duration::from_millis(10_200));
        }
    }

    /// Grant times of `calls` calls of one per-minute tier.
    async fn tier_grants(calls: usize, call: impl AsyncFn(&Pacer, usize)) -> Vec<Duration> {
        let pacer = Pacer::new(&PacingSettings::roomy());
        let start = tokio::time::Instant::now();
        let mut grants = Vec::new();
        for n in 0..calls {
            call(&pacer, n).await;
            grants.push(start.elapsed());
        }
        grants
    }

    /// Slack counts a tier over any minute (the fake keeps a sliding
    /// window): 51 calls must never fall within 60 s, and a short burst
    /// still goes at once.
    fn assert_within_tier(grants: &[Duration], per_minute: usize) {
        assert!(grants[..5].iter().all(|g| g.is_zero()), "{grants:?}");
        assert!(grants[5] > Duration::ZERO, "{grants:?}");
        for (first, last) in grants.iter().zip(&grants[per_minute..]) {
            assert!(
                *last - *first >= Duration::from_secs(60),
                "{} calls within {:?}",
                per_minute + 1,
                *last - *first
            );
        }
        // ...and not much slower than the tier allows: the 150th call
        // within 195 s (Slack's own window would allow it after 120 s; the
        // burst and the 2% spare cost the rest).
        let last = grants[grants.len() - 1];
        assert!(last <= Duration::from_secs(195), "{last:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn updates_keep_to_their_tier_in_any_minute_across_channels() {
        let grants = tier_grants(150, async |pacer, n| {
            let turn = pacer.update_ready(&format!("C{}", n % 7)).await;
            pacer.answered(turn);
        })
        .await;
        assert_within_tier(&grants, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn history_calls_keep_to_their_tier_in_any_minute() {
        let grants = tier_grants(150, async |pacer, _| pacer.history_ready(|| ()).await).await;
        assert_within_tier(&grants, 50);
    }
}
