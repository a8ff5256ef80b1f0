//! `alertsvc produce`: scheduled warehouse queries become keyed events
//! (DESIGN §7). Each job's SQL runs on its source (BigQuery, PostgreSQL or
//! SQLite) with its checkpoint bound as `@checkpoint`; every row becomes one
//! event on the job's topic, produced idempotently and keyed by the key
//! column; the checkpoint advances once Kafka has acknowledged every event.
//!
//! Exactly-once emission per job and event id rests on records in the
//! state database: the ids already emitted (the ledger: kept from the
//! checkpoint minus the job's lookback up, or for `dedup_retention` without
//! a checkpoint), and the job's run record: the lease of the one run that
//! may work on the job, with the topic's end offsets when it began. A run
//! that dies leaves that record behind; once its lease lapsed, the next run
//! reads the topic back from those offsets, learns which events made it,
//! and emits only the rest.

use std::net::SocketAddr;
use std::path::Path;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::avro::Codec;
use crate::config::{ProduceSettings, Settings};
use crate::http::StageHandle;
use crate::stage::{Bound, Stage, Work};

pub mod checkpoint;
mod compile;
mod error;
pub mod job;
pub mod lease;
pub mod mapping;
pub mod row;
mod runtime;
pub mod schedule;
pub mod source;
pub mod sql;
pub mod state;

pub use compile::compile_jobs;
pub use error::{
    JobConfigError, ProduceError, EXIT_DEAD_LETTERS, EXIT_LEASE_HELD, EXIT_OVER_BYTES_LIMIT,
};
use job::CompiledJob;
use runtime::Runtime;
use schedule::{Clock, Schedule};

/// How `alertsvc produce` was asked to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Jobs to run; empty means every enabled job.
    pub jobs: Vec<String>,
    /// Run each job once and exit (a Kubernetes CronJob).
    pub once: bool,
    /// Run on this cron schedule instead of each job's own.
    pub schedule: Option<String>,
    /// Print events as JSON lines; produce and record nothing.
    pub dry_run: bool,
    /// How long a run waits for its job while another run holds it (0:
    /// give up at once).
    pub wait_for_lease: std::time::Duration,
}

fn settings_of(settings: &Settings) -> Result<&ProduceSettings, ProduceError> {
    settings.produce.as_ref().ok_or(ProduceError::NotConfigured)
}

/// `alertsvc produce`: builds, then runs until done (`--once`) or until
/// `shutdown`.
pub async fn run(
    settings: &Settings,
    config_dir: &Path,
    options: &Options,
    shutdown: CancellationToken,
) -> Result<(), ProduceError> {
    Produce::build(settings, config_dir, options)
        .await?
        .run_until_stopped(shutdown)
        .await
}

/// `alertsvc produce`, its options checked. On a schedule (each job's, or
/// `--schedule`) it is a long-running stage like enrich and notify: its
/// endpoints (`produce.http_addr`) are bound by [`Produce::build`]. With
/// `--once` or `--dry-run` each job runs once and nothing is served: a
/// CronJob's pod is not scraped (deploy/README.md).
pub enum Produce {
    Once(Box<Once>),
    Scheduled(Box<Stage<Scheduled>>),
}

impl Produce {
    pub async fn build(
        settings: &Settings,
        config_dir: &Path,
        options: &Options,
    ) -> Result<Produce, ProduceError> {
        settings_of(settings)?;
        let jobs = compile_jobs(settings, config_dir, &options.jobs)?;
        let once = options.once || options.dry_run;
        if once && options.schedule.is_some() {
            return Err(ProduceError::ScheduleWithOnce);
        }
        let schedule = options
            .schedule
            .as_deref()
            .map(Schedule::parse)
            .transpose()
            .map_err(ProduceError::Schedule)?;
        if once {
            return Ok(Produce::Once(Box::new(Once {
                settings: settings.clone(),
                jobs,
                options: options.clone(),
            })));
        }
        if schedule.is_none() {
            if let Some(job) = jobs.iter().find(|j| j.schedule.is_none()) {
                return Err(ProduceError::Unscheduled {
                    job: job.name.clone(),
                });
            }
        }
        let work = Scheduled {
            jobs,
            schedule,
            options: options.clone(),
        };
        Ok(Produce::Scheduled(Box::new(
            Stage::build_with(work, settings, config_dir).await?,
        )))
    }

    /// The scheduled stage's endpoints; `None` when produce runs once.
    pub fn handle(&self) -> Option<StageHandle> {
        match self {
            Produce::Once(_) => None,
            Produce::Scheduled(stage) => Some(stage.handle()),
        }
    }

    /// `--once`: until every job's run ends (each run also stops on
    /// `shutdown`); on a schedule: until `shutdown`.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), ProduceError> {
        match self {
            Produce::Once(once) => once.run(shutdown).await,
            Produce::Scheduled(stage) => stage.run_until_stopped(shutdown).await,
        }
    }
}

/// Finds the schema ids the jobs' topics write with (a schema the registry
/// refuses stops produce here), then connects what every run shares.
async fn start(
    settings: &Settings,
    jobs: &[CompiledJob],
    options: &Options,
    registry: &Registry,
) -> Result<Runtime, ProduceError> {
    let written: Vec<(&str, &Codec)> = jobs
        .iter()
        .flat_map(|job| {
            [Some(job.codec.as_ref()), job.key_codec.encoded()]
                .into_iter()
                .flatten()
                .map(|codec| (job.topic.as_str(), codec))
        })
        .collect();
    crate::avro::check_writes(&written)
        .await
        .map_err(|(topic, error)| ProduceError::TopicWrites { topic, error })?;
    Runtime::start(settings, jobs, options, registry).await
}

/// Each job run once, together.
pub struct Once {
    settings: Settings,
    jobs: Vec<CompiledJob>,
    options: Options,
}

impl Once {
    async fn run(self, shutdown: CancellationToken) -> Result<(), ProduceError> {
        // Nothing serves these metrics: the process ends with its runs.
        let registry = Registry::new();
        let runtime = start(&self.settings, &self.jobs, &self.options, &registry).await?;
        let results =
            futures::future::join_all(self.jobs.iter().map(|job| runtime.run(job, &shutdown)))
                .await;
        let mut errors: Vec<ProduceError> = results.into_iter().filter_map(Result::err).collect();
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ProduceError::Several(errors)),
        }
    }
}

/// The jobs on their schedules (`--schedule` overrides each job's), until
/// shutdown: produce's part of its [`Stage`].
pub struct Scheduled {
    jobs: Vec<CompiledJob>,
    schedule: Option<Schedule>,
    options: Options,
}

impl Work for Scheduled {
    type Error = ProduceError;

    fn http_addr(&self, settings: &Settings) -> Result<SocketAddr, ProduceError> {
        Ok(settings_of(settings)?.http_addr)
    }

    async fn run(self, bound: Bound<'_>, shutdown: CancellationToken) -> Result<(), ProduceError> {
        let Bound { settings, ops, .. } = bound;
        let handle = ops.handle().clone();
        let runtime = start(settings, &self.jobs, &self.options, &handle.registry).await?;
        // produce has no warm-up for /readyz to report: its endpoints
        // answer, ready, once what every run shares is connected.
        let server = ops.serve(axum::Router::new(), shutdown.clone());
        handle.health.set_ready(true);
        let clock = Clock::system();
        let loops = self.jobs.iter().map(|job| {
            let schedule = self.schedule.as_ref().or(job.schedule.as_ref()).cloned();
            let (runtime, shutdown) = (&runtime, shutdown.clone());
            async move {
                let Some(schedule) = schedule else { return };
                tracing::info!(job = %job.name, schedule = schedule.pattern(), "scheduled");
                schedule::run_on_schedule(&job.name, &schedule, clock, shutdown.clone(), |_| {
                    let shutdown = shutdown.clone();
                    async move {
                        // Failures are logged and counted; the next fire retries.
                        let _ = runtime.run(job, &shutdown).await;
                    }
                })
                .await;
            }
        });
        futures::future::join_all(loops).await;
        let _ = server.await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;

    fn serving_on(http_addr: std::net::SocketAddr) -> (Settings, std::path::PathBuf) {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut settings = Settings::load(&Sources::files_only(dir.clone())).unwrap();
        settings.produce.as_mut().unwrap().http_addr = http_addr;
        (settings, dir)
    }

    #[tokio::test]
    async fn on_a_schedule_produce_binds_at_build_and_once_it_serves_nothing() {
        let (settings, dir) = serving_on("127.0.0.1:0".parse().unwrap());
        let scheduled = Produce::build(&settings, &dir, &Options::default())
            .await
            .unwrap();
        let handle = scheduled
            .handle()
            .expect("a scheduled produce has endpoints");
        assert_ne!(handle.addr.port(), 0);

        let taken = Produce::build(&serving_on(handle.addr).0, &dir, &Options::default())
            .await
            .err()
            .map(|e| e.to_string());
        assert!(
            taken
                .as_deref()
                .is_some_and(|e| e.starts_with(&format!("cannot listen on {}: ", handle.addr))),
            "{taken:?}"
        );

        let once = Options {
            once: true,
            ..Options::default()
        };
        let once = Produce::build(&settings, &dir, &once).await.unwrap();
        assert!(once.handle().is_none());
    }
}
