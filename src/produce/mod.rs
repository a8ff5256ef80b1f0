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

use std::path::Path;
use std::sync::Arc;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::avro::Codec;
use crate::config::{ProduceSettings, Settings};
use crate::http::{AppState, Health};

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

/// `alertsvc produce`.
pub async fn run(
    settings: &Settings,
    config_dir: &Path,
    options: &Options,
    shutdown: CancellationToken,
) -> Result<(), ProduceError> {
    let produce = settings_of(settings)?;
    let jobs = compile_jobs(settings, config_dir, &options.jobs)?;
    let once = options.once || options.dry_run;
    if once && options.schedule.is_some() {
        return Err(ProduceError::ScheduleWithOnce);
    }
    let override_schedule = options
        .schedule
        .as_deref()
        .map(Schedule::parse)
        .transpose()
        .map_err(ProduceError::Schedule)?;
    if !once && override_schedule.is_none() {
        if let Some(job) = jobs.iter().find(|j| j.schedule.is_none()) {
            return Err(ProduceError::Unscheduled {
                job: job.name.clone(),
            });
        }
    }
    let written: Vec<(&str, &Codec)> = jobs
        .iter()
        .map(|job| (job.topic.as_str(), job.codec.as_ref()))
        .collect();
    crate::avro::check_writes(&written)
        .await
        .map_err(|(topic, error)| ProduceError::TopicWrites { topic, error })?;
    let registry = Registry::new();
    let runtime = Runtime::start(settings, &jobs, options, &registry).await?;

    if once {
        let results =
            futures::future::join_all(jobs.iter().map(|job| runtime.run(job, &shutdown))).await;
        let mut errors: Vec<ProduceError> = results.into_iter().filter_map(Result::err).collect();
        return match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ProduceError::Several(errors)),
        };
    }

    let health = Arc::new(Health::default());
    let router = crate::http::ops_router(AppState {
        health: health.clone(),
        registry: registry.clone(),
    });
    let (_, server) = crate::http::serve(produce.http_addr, router, shutdown.clone())
        .await
        .map_err(|error| ProduceError::Listen {
            addr: produce.http_addr,
            error,
        })?;
    health.set_ready(true);
    let clock = Clock::system();
    let loops = jobs.iter().map(|job| {
        let schedule = override_schedule
            .as_ref()
            .or(job.schedule.as_ref())
            .cloned();
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
