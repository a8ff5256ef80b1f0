//! What can go wrong in `alertsvc produce`, and the exit status each
//! outcome gives `--once` (a CronJob tells them apart). Inner errors are
//! part of each message rather than chained sources: the CLI prints the
//! whole chain, and each cause should appear once.

use std::net::SocketAddr;
use std::path::PathBuf;

use rdkafka::error::KafkaError;

use crate::avro::AvroError;
use crate::config::CheckpointKind;
use crate::http::BindError;
use crate::metrics::MetricsError;

use super::job::RunError;
use super::mapping::{MappingError, ParamsError};
use super::schedule::ScheduleError;
use super::source::SourceError;
use super::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("no [produce] section in the configuration")]
    NotConfigured,
    #[error("no job named {0:?} in [produce.jobs]")]
    UnknownJob(String),
    #[error("`produce.jobs.{job}`: {error}")]
    Config {
        job: String,
        error: Box<JobConfigError>,
    },
    #[error("no job to run: [produce.jobs] has no enabled job")]
    NoEnabledJob,
    #[error("--schedule runs in-process; it cannot be combined with --once or --dry-run")]
    ScheduleWithOnce,
    #[error("{0}")]
    Schedule(ScheduleError),
    #[error("job {job} has no schedule: pass --once, --schedule CRON, or set its `schedule`")]
    Unscheduled { job: String },
    #[error("topic {topic}: {error}")]
    TopicWrites { topic: String, error: AvroError },
    #[error("no source {0:?} in [produce.sources]")]
    UnknownSource(String),
    #[error("source {0} is not connected")]
    SourceNotConnected(String),
    #[error("cannot create the producer: {0}")]
    Producer(KafkaError),
    #[error("{0}")]
    Metrics(MetricsError),
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("job {job}: {error}")]
    Job { job: String, error: Box<RunError> },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("job {job}: {count} row(s) could not be mapped and went to {dlq_topic}: {first}")]
    BadRows {
        job: String,
        count: u64,
        dlq_topic: String,
        first: String,
    },
    #[error(
        "job {job}: {error}; narrow the query (`alertsvc produce --dry-run --job {job}` \
         shows BigQuery's estimate) or raise `{limit_key}`"
    )]
    OverBytesLimit {
        job: String,
        limit_key: String,
        error: SourceError,
    },
    #[error(
        "job {job} is already running: {owner} holds it (run {run_id}, alive {alive_ago_s}s ago, \
         lease until {lease_until}); this run did nothing"
    )]
    LeaseHeld {
        job: String,
        run_id: String,
        owner: String,
        alive_ago_s: i64,
        lease_until: String,
    },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Several(Vec<ProduceError>),
}

/// Why a job's settings cannot be compiled (shown after the job's key).
#[derive(Debug, thiserror::Error)]
pub enum JobConfigError {
    /// The topic is not configured (the message is the settings' own).
    #[error("{0}")]
    Topic(String),
    #[error("topic {topic}: {error}")]
    TopicSchema { topic: String, error: AvroError },
    #[error("{0}")]
    Mapping(MappingError),
    #[error("sql_file {}: {error}", .path.display())]
    SqlFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("set sql or sql_file")]
    NoSql,
    #[error("{0}")]
    Params(ParamsError),
    #[error(
        "the SQL uses @{name}, which is not in `params`{}",
        if name == "checkpoint" { " (@checkpoint needs a [checkpoint] table)" } else { "" }
    )]
    UnknownParam { name: String },
    #[error("a checkpoint is configured but the SQL never reads @checkpoint")]
    CheckpointUnused,
    #[error("checkpoint.lookback: {0}")]
    Lookback(crate::config::LookbackError),
    #[error("checkpoint.initial {initial:?} is not a valid {kind:?} value")]
    Initial {
        initial: String,
        kind: CheckpointKind,
    },
    #[error("{0}")]
    Schedule(ScheduleError),
}

/// `--once`: rows went to the dead-letter topic, the run itself completed.
pub const EXIT_DEAD_LETTERS: u8 = 2;
/// `--once`: a query would have billed more than its `maximum_bytes_billed`
/// and did not run; nothing was emitted.
pub const EXIT_OVER_BYTES_LIMIT: u8 = 4;
/// `--once` exit status when another run holds the job (EX_TEMPFAIL: try
/// again later); distinct from 1 so a CronJob can tell it from a failure.
pub const EXIT_LEASE_HELD: u8 = 75;

/// The message stays produce's own, the I/O error part of it (not a
/// chained source).
impl From<BindError> for ProduceError {
    fn from(e: BindError) -> ProduceError {
        ProduceError::Listen {
            addr: e.addr,
            error: e.source,
        }
    }
}

impl ProduceError {
    /// [`EXIT_DEAD_LETTERS`] when the only trouble is rows sent to the
    /// dead-letter topic (the run itself completed),
    /// [`EXIT_OVER_BYTES_LIMIT`] for a query over its byte limit,
    /// [`EXIT_LEASE_HELD`] when another run holds the job, 1 for everything
    /// else. Several jobs: 1 if any failed otherwise, else 4 if any query
    /// was over its limit, else 2 if any had dead letters, else 75.
    pub fn exit_code(&self) -> u8 {
        match self {
            ProduceError::BadRows { .. } => EXIT_DEAD_LETTERS,
            ProduceError::OverBytesLimit { .. } => EXIT_OVER_BYTES_LIMIT,
            ProduceError::LeaseHeld { .. } => EXIT_LEASE_HELD,
            ProduceError::Several(all) => {
                let codes: Vec<u8> = all.iter().map(ProduceError::exit_code).collect();
                [1, EXIT_OVER_BYTES_LIMIT, EXIT_DEAD_LETTERS, EXIT_LEASE_HELD]
                    .into_iter()
                    .find(|code| codes.contains(code))
                    .unwrap_or(1)
            }
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(error: JobConfigError) -> String {
        ProduceError::Config {
            job: "j".into(),
            error: Box::new(error),
        }
        .to_string()
    }

    #[test]
    fn job_settings_errors_name_the_job_and_what_is_wrong() {
        assert_eq!(
            config(JobConfigError::UnknownParam {
                name: "checkpoint".into()
            }),
            "`produce.jobs.j`: the SQL uses @checkpoint, which is not in `params` \
             (@checkpoint needs a [checkpoint] table)"
        );
        assert_eq!(
            config(JobConfigError::UnknownParam { name: "org".into() }),
            "`produce.jobs.j`: the SQL uses @org, which is not in `params`"
        );
        assert_eq!(
            config(JobConfigError::CheckpointUnused),
            "`produce.jobs.j`: a checkpoint is configured but the SQL never reads @checkpoint"
        );
        assert_eq!(
            config(JobConfigError::Initial {
                initial: "soon".into(),
                kind: CheckpointKind::Timestamp
            }),
            "`produce.jobs.j`: checkpoint.initial \"soon\" is not a valid Timestamp value"
        );
    }

    #[test]
    fn setup_errors_keep_their_messages() {
        assert_eq!(
            ProduceError::NoEnabledJob.to_string(),
            "no job to run: [produce.jobs] has no enabled job"
        );
        assert_eq!(
            ProduceError::Unscheduled { job: "j".into() }.to_string(),
            "job j has no schedule: pass --once, --schedule CRON, or set its `schedule`"
        );
        assert_eq!(
            ProduceError::UnknownSource("wh".into()).to_string(),
            "no source \"wh\" in [produce.sources]"
        );
    }

    #[test]
    fn exit_codes_rank_failures_over_limits_over_dead_letters_over_leases() {
        let bad_rows = || ProduceError::BadRows {
            job: "a".into(),
            count: 1,
            dlq_topic: "t.dlq".into(),
            first: "row 1".into(),
        };
        let held = || ProduceError::LeaseHeld {
            job: "b".into(),
            run_id: "r".into(),
            owner: "o".into(),
            alive_ago_s: 0,
            lease_until: "later".into(),
        };
        assert_eq!(bad_rows().exit_code(), EXIT_DEAD_LETTERS);
        assert_eq!(held().exit_code(), EXIT_LEASE_HELD);
        assert_eq!(ProduceError::NoEnabledJob.exit_code(), 1);
        assert_eq!(
            ProduceError::Several(vec![held(), bad_rows()]).exit_code(),
            EXIT_DEAD_LETTERS
        );
        assert_eq!(
            ProduceError::Several(vec![held(), bad_rows(), ProduceError::NoEnabledJob]).exit_code(),
            1
        );
    }
}
