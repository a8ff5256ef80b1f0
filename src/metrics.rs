//! Prometheus metrics (DESIGN §10). Each stage registers its own set into a
//! registry that its `/metrics` endpoint serves.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Debug, thiserror::Error)]
#[error("metric registration failed: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, MetricsError> {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// Metrics of `alertsvc enrich`.
#[derive(Clone)]
pub struct EnrichMetrics {
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub records_dropped: IntCounterVec,
    pub records_dlq: IntCounterVec,
    pub join_misses: IntCounterVec,
    pub table_size: IntGaugeVec,
    pub table_updates: IntCounterVec,
    pub transactions: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    pub batch_seconds: Histogram,
}

impl EnrichMetrics {
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "alertsvc_enrich_batch_seconds",
                "Time to process and commit one batch (one transaction).",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        registry.register(Box::new(batch_seconds.clone()))?;
        Ok(EnrichMetrics {
            records_in: counter(
                registry,
                "alertsvc_enrich_records_in_total",
                "Records read by a pipeline.",
                &["pipeline"],
            )?,
            records_out: counter(
                registry,
                "alertsvc_enrich_records_out_total",
                "Slack messages written by a pipeline.",
                &["pipeline"],
            )?,
            records_dropped: counter(
                registry,
                "alertsvc_enrich_records_dropped_total",
                "Records a pipeline dropped, by reason (filtered, join_miss).",
                &["pipeline", "reason"],
            )?,
            records_dlq: counter(
                registry,
                "alertsvc_enrich_records_dlq_total",
                "Records sent to a dead-letter topic, by failed stage.",
                &["pipeline", "stage"],
            )?,
            join_misses: counter(
                registry,
                "alertsvc_enrich_join_misses_total",
                "Inner-join lookups that found nothing.",
                &["pipeline", "table"],
            )?,
            table_size: gauge(
                registry,
                "alertsvc_table_size",
                "Keys held by a table.",
                &["table"],
            )?,
            table_updates: counter(
                registry,
                "alertsvc_table_updates_total",
                "Table records applied, by kind (upsert, delete, invalid).",
                &["table", "kind"],
            )?,
            transactions: counter(
                registry,
                "alertsvc_enrich_commits_total",
                "Batches committed or aborted.",
                &["outcome"],
            )?,
            consumer_lag: gauge(
                registry,
                "alertsvc_consumer_lag",
                "Records between the committed position and the high watermark.",
                &["topic", "partition"],
            )?,
            batch_seconds,
        })
    }
}

/// The registry in Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    let encoder = TextEncoder::new();
    if encoder.encode(&registry.gather(), &mut buffer).is_err() {
        return String::new();
    }
    String::from_utf8(buffer).unwrap_or_default()
}
