//! What a run did, as its caller, the logs and a dry run's user see it.

use std::io::Write;
use std::time::Instant;

use super::super::source::Source;

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    pub rows_read: u64,
    pub events_produced: u64,
    pub events_skipped: u64,
    pub recovered: u64,
    pub dead_letters: u64,
    pub bad_rows: Vec<String>,
    pub checkpoint: Option<String>,
    /// What the run's query scanned and billed (BigQuery).
    pub bytes_processed: Option<u64>,
    pub bytes_billed: Option<u64>,
    /// Dry runs on BigQuery: its estimate of the bytes the query processes.
    pub estimated_bytes: Option<u64>,
}

/// The dry run's totals on stderr (stdout holds only events): rows and
/// events, and on BigQuery its estimate of the bytes processed.
pub fn print_dry_run_summary(job: &str, source: &Source, report: &RunReport) {
    let bytes = |b: u64| format!("{} ({b} bytes)", crate::config::ByteSize::from(b));
    let estimate = match (source, report.estimated_bytes) {
        (_, Some(estimated)) => format!("; BigQuery estimates {} processed", bytes(estimated)),
        (Source::BigQuery(_), None) => "; BigQuery gave no estimate".into(),
        (Source::Sql(_), None) => String::new(),
    };
    let _ = writeln!(
        std::io::stderr().lock(),
        "dry run of job {job}: {} rows read, {} events would be produced, {} already emitted, \
         {} rows cannot be mapped{estimate}",
        report.rows_read,
        report.events_produced,
        report.events_skipped,
        report.dead_letters,
    );
}

pub fn log_progress(job: &str, report: &RunReport, started: Instant) {
    let seconds = started.elapsed().as_secs_f64().max(1e-3);
    tracing::info!(
        job,
        rows_read = report.rows_read,
        events_produced = report.events_produced,
        skipped = report.events_skipped,
        dead_letters = report.dead_letters,
        rows_per_second = (report.rows_read as f64 / seconds).round(),
        "progress"
    );
}
