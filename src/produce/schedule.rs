//! In-process cron: runs a job at each time its schedule names, one run at
//! a time. Times follow tokio's clock, so tests drive it with paused time.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use tokio_util::sync::CancellationToken;

/// A parsed cron expression: five fields (minute granularity) or six with
/// seconds, evaluated in UTC.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    pattern: String,
}

/// A cron expression that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("cron expression {pattern:?}: {error}")]
pub struct ScheduleError {
    pub pattern: String,
    pub error: croner::errors::CronError,
}

impl Schedule {
    pub fn parse(pattern: &str) -> Result<Schedule, ScheduleError> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(pattern)
            .map_err(|error| ScheduleError {
                pattern: pattern.to_owned(),
                error,
            })?;
        Ok(Schedule {
            cron,
            pattern: pattern.to_owned(),
        })
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }
}

/// Wall-clock time read through tokio's clock: `now` advances with
/// `tokio::time`, paused or not.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_at_start: DateTime<Utc>,
    instant_at_start: tokio::time::Instant,
}

impl Clock {
    pub fn system() -> Clock {
        Clock::starting_at(Utc::now())
    }

    pub fn starting_at(wall: DateTime<Utc>) -> Clock {
        Clock {
            wall_at_start: wall,
            instant_at_start: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        let elapsed = self.instant_at_start.elapsed();
        self.wall_at_start + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }

    pub async fn sleep_until(&self, t: DateTime<Utc>) {
        let offset = (t - self.wall_at_start).to_std().unwrap_or(Duration::ZERO);
        tokio::time::sleep_until(self.instant_at_start + offset).await;
    }
}

/// Calls `run(fire_time)` at every fire time until `shutdown`. A run that
/// outlasts the interval makes the fire times it covered lapse (they are
/// logged, not queued): never two runs at once, never a burst of catch-up
/// runs.
pub async fn run_on_schedule<F, Fut>(
    name: &str,
    schedule: &Schedule,
    clock: Clock,
    shutdown: CancellationToken,
    mut run: F,
) where
    F: FnMut(DateTime<Utc>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut after = clock.now();
    loop {
        let Some(fire) = schedule.next_after(after) else {
            tracing::warn!(
                job = name,
                schedule = schedule.pattern(),
                "the schedule never fires again"
            );
            return;
        };
        tracing::debug!(job = name, next = %fire, "next run scheduled");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = clock.sleep_until(fire) => {}
        }
        run(fire).await;
        if shutdown.is_cancelled() {
            return;
        }
        let finished = clock.now();
        let lapsed = count_fires(schedule, fire, finished);
        if lapsed > 0 {
            tracing::warn!(
                job = name,
                lapsed,
                "the run outlasted its interval; fire times during it were skipped"
            );
        }
        after = finished;
    }
}

/// Fire times in (from, to], capped (only used for a log line).
fn count_fires(schedule: &Schedule, from: DateTime<Utc>, to: DateTime<Utc>) -> usize {
    let mut count = 0;
    let mut t = from;
    while let Some(next) = schedule.next_after(t) {
        if next > to || count >= 10_000 {
            break;
        }
        count += 1;
        t = next;
    }
    count
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use chrono::TimeZone;

    use super::*;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, s)
            .single()
            .unwrap()
    }

    #[test]
    fn five_and_six_field_expressions_parse() {
        let every_quarter = Schedule::parse("*/15 * * * *").unwrap();
        assert_eq!(every_quarter.next_after(at(10, 7, 0)), Some(at(10, 15, 0)));
        let every_ten_seconds = Schedule::parse("*/10 * * * * *").unwrap();
        assert_eq!(
            every_ten_seconds.next_after(at(10, 0, 0)),
            Some(at(10, 0, 10))
        );
        let e = Schedule::parse("every day").unwrap_err().to_string();
        assert!(e.contains("every day"), "{e}");
    }

    /// With paused time, a job whose runs take 90 s on a one-minute
    /// schedule runs at 10:01, 10:03, 10:05: at the cron times, one at a
    /// time, the fire times during a run lapsed.
    #[tokio::test(start_paused = true)]
    async fn fires_at_cron_times_one_run_at_a_time() {
        let clock = Clock::starting_at(at(10, 0, 30));
        let schedule = Schedule::parse("* * * * *").unwrap();
        let shutdown = CancellationToken::new();
        // (fire time, start time) of each run.
        type Runs = Arc<Mutex<Vec<(DateTime<Utc>, DateTime<Utc>)>>>;
        let runs: Runs = Arc::default();
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = {
            let (runs, active, shutdown) = (runs.clone(), active.clone(), shutdown.clone());
            tokio::spawn(async move {
                run_on_schedule("test", &schedule, clock, shutdown, |fire| {
                    let (runs, active) = (runs.clone(), active.clone());
                    async move {
                        let started = clock.now();
                        assert_eq!(active.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0);
                        tokio::time::sleep(Duration::from_secs(90)).await;
                        active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        runs.lock().unwrap().push((fire, started));
                    }
                })
                .await
            })
        };
        clock.sleep_until(at(10, 6, 45)).await;
        shutdown.cancel();
        task.await.unwrap();
        let runs = runs.lock().unwrap().clone();
        let fires: Vec<_> = runs.iter().map(|(fire, _)| *fire).collect();
        assert_eq!(fires, [at(10, 1, 0), at(10, 3, 0), at(10, 5, 0)]);
        for (fire, started) in runs {
            assert_eq!(fire, started, "a run starts at its fire time");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_waiting_for_the_next_fire() {
        let clock = Clock::starting_at(at(10, 0, 0));
        let schedule = Schedule::parse("0 0 * * *").unwrap();
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let mut ran = false;
        run_on_schedule("test", &schedule, clock, shutdown, |_| {
            ran = true;
            async {}
        })
        .await;
        assert!(!ran);
    }
}
