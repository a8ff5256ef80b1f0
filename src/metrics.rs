//! Prometheus metrics (DESIGN §10). Each stage registers its own set into a
//! registry that its `/metrics` endpoint serves.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
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

/// Event-time latencies, from an alert's source record to a stage's result:
/// seconds when all is well, minutes when a stage is behind or waits out an
/// outage (an alert older than `notify.max_age` is not posted at all).
const EVENT_LATENCY_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Seconds from `event_ms` (epoch milliseconds) to now; 0 for an event
/// time ahead of this host's clock.
pub fn seconds_since(event_ms: i64) -> f64 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    now_ms.saturating_sub(event_ms).max(0) as f64 / 1000.0
}

/// Fed by librdkafka's statistics (see `kafka::StageContext`).
fn consumer_lag(registry: &Registry) -> Result<IntGaugeVec, MetricsError> {
    gauge(
        registry,
        "alertsvc_consumer_lag",
        "Records between the committed position and the high watermark.",
        &["topic", "partition"],
    )
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
    /// Where a batch's time goes: collect, process, wait (for the previous
    /// transaction's commit), produce, offsets, commit.
    pub batch_phase_seconds: HistogramVec,
    pub event_latency: HistogramVec,
    pub registry_unavailable: IntGauge,
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
        let batch_phase_seconds = HistogramVec::new(
            HistogramOpts::new(
                "alertsvc_enrich_batch_phase_seconds",
                "Time a batch spends in each phase: collect, process, wait (for the previous transaction's commit), produce, offsets, commit.",
            )
            .buckets(vec![
                0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["phase"],
        )?;
        registry.register(Box::new(batch_phase_seconds.clone()))?;
        let event_latency = HistogramVec::new(
            HistogramOpts::new(
                "alertsvc_enrich_event_latency_seconds",
                "From an alert's event time (its source record's timestamp) to its Slack message committed to the output topic.",
            )
            .buckets(EVENT_LATENCY_BUCKETS.to_vec()),
            &["pipeline"],
        )?;
        registry.register(Box::new(event_latency.clone()))?;
        let registry_unavailable = IntGauge::new(
            "alertsvc_enrich_registry_unavailable",
            "1 while records wait for the Schema Registry to answer again, else 0.",
        )?;
        registry.register(Box::new(registry_unavailable.clone()))?;
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
                "Records a pipeline dropped, by reason (filtered, join_miss, suppressed).",
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
            consumer_lag: consumer_lag(registry)?,
            batch_seconds,
            batch_phase_seconds,
            event_latency,
            registry_unavailable,
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

/// The sum of a counter or gauge family over all its label values; 0 when
/// the family is not registered or has no samples yet.
pub fn sum(registry: &Registry, name: &str) -> f64 {
    use prometheus::proto::MetricType;
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| {
            let kind = family.get_field_type();
            family.get_metric().iter().map(move |metric| match kind {
                MetricType::COUNTER => metric.get_counter().get_value(),
                MetricType::GAUGE => metric.get_gauge().get_value(),
                _ => 0.0,
            })
        })
        .sum()
}

/// Metrics of `alertsvc notify`.
#[derive(Clone)]
pub struct NotifyMetrics {
    pub deliveries: IntCounterVec,
    pub slack_seconds: Histogram,
    pub event_to_slack_seconds: Histogram,
    pub pacing_wait_seconds: Histogram,
    pub rate_limited: prometheus::IntCounter,
    pub retries: prometheus::IntCounter,
    pub in_flight: prometheus::IntGauge,
    pub dlq: prometheus::IntCounter,
    pub interactions: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    pub claim_waits: prometheus::IntCounter,
    pub reconciliations: IntCounterVec,
    pub ambiguous: prometheus::IntCounter,
    pub slack_unreachable: prometheus::IntGauge,
    pub paused_partitions: prometheus::IntGauge,
    pub ledger_pruned: prometheus::IntCounter,
    pub dropped_on_revoke: prometheus::IntCounter,
}

impl NotifyMetrics {
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let histogram =
            |name: &str, help: &str, buckets: Vec<f64>| -> Result<Histogram, MetricsError> {
                let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let int_counter =
            |name: &str, help: &str| -> Result<prometheus::IntCounter, MetricsError> {
                let c = prometheus::IntCounter::new(name, help)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let in_flight = prometheus::IntGauge::new(
            "alertsvc_notify_in_flight",
            "Messages read and not yet finished.",
        )?;
        registry.register(Box::new(in_flight.clone()))?;
        let int_gauge = |name: &str, help: &str| -> Result<prometheus::IntGauge, MetricsError> {
            let g = prometheus::IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(NotifyMetrics {
            claim_waits: int_counter(
                "alertsvc_notify_claim_waits_total",
                "Times an alert was held by a peer replica and waited for.",
            )?,
            reconciliations: counter(
                registry,
                "alertsvc_notify_reconciliations_total",
                "Looks in a conversation for a post that may have landed, by result (found, absent).",
                &["result"],
            )?,
            ambiguous: int_counter(
                "alertsvc_slack_ambiguous_total",
                "Posts whose answer was unknown (timeout, reset, 5xx): looked up before any re-post.",
            )?,
            slack_unreachable: int_gauge(
                "alertsvc_slack_unreachable",
                "1 while Slack cannot be reached (consumption paused), else 0.",
            )?,
            paused_partitions: int_gauge(
                "alertsvc_notify_paused_partitions",
                "Input partitions paused (a channel backlog, max_in_flight, or a Slack outage).",
            )?,
            ledger_pruned: int_counter(
                "alertsvc_notify_ledger_pruned_total",
                "Ledger rows deleted after notify.ledger.retention.",
            )?,
            dropped_on_revoke: int_counter(
                "alertsvc_notify_dropped_on_revoke_total",
                "Queued messages dropped because their partition was revoked (the new owner delivers them).",
            )?,
            deliveries: counter(
                registry,
                "alertsvc_slack_posts_total",
                "Deliveries by outcome (posted, updated, duplicate, expired, failed).",
                &["outcome"],
            )?,
            slack_seconds: histogram(
                "alertsvc_slack_request_seconds",
                "Latency of Slack Web API calls.",
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            )?,
            event_to_slack_seconds: histogram(
                "alertsvc_notify_event_to_slack_seconds",
                "From an alert's event time (the message's createdAt: its source record's timestamp) to Slack's answer to its chat.postMessage.",
                EVENT_LATENCY_BUCKETS.to_vec(),
            )?,
            pacing_wait_seconds: histogram(
                "alertsvc_slack_pacing_wait_seconds",
                "Time a message waited for its channel's or the workspace's rate limit.",
                vec![0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0],
            )?,
            rate_limited: int_counter(
                "alertsvc_slack_rate_limited_total",
                "HTTP 429 answers from Slack (waited for Retry-After).",
            )?,
            retries: int_counter(
                "alertsvc_slack_retries_total",
                "Retried Slack calls after transient failures.",
            )?,
            in_flight,
            dlq: int_counter(
                "alertsvc_notify_dlq_total",
                "Messages sent to the dead-letter topic.",
            )?,
            interactions: counter(
                registry,
                "alertsvc_slack_interactions_total",
                "Interactivity requests by result (accepted, rejected).",
                &["result"],
            )?,
            consumer_lag: consumer_lag(registry)?,
        })
    }
}

/// Metrics of `alertsvc produce`, by job.
#[derive(Clone)]
pub struct ProduceMetrics {
    pub rows_read: IntCounterVec,
    pub events_produced: IntCounterVec,
    pub events_skipped: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub runs: IntCounterVec,
    pub lease_conflicts: IntCounterVec,
    pub last_success: IntGaugeVec,
    pub run_seconds: prometheus::HistogramVec,
    pub bytes_processed: IntCounterVec,
    pub bytes_billed: IntCounterVec,
}

impl ProduceMetrics {
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let run_seconds = prometheus::HistogramVec::new(
            HistogramOpts::new("alertsvc_produce_run_seconds", "Duration of one job run.")
                .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0]),
            &["job"],
        )?;
        registry.register(Box::new(run_seconds.clone()))?;
        Ok(ProduceMetrics {
            rows_read: counter(
                registry,
                "alertsvc_produce_rows_read_total",
                "Rows read from a job's source.",
                &["job"],
            )?,
            events_produced: counter(
                registry,
                "alertsvc_produce_events_produced_total",
                "Events acknowledged by Kafka.",
                &["job"],
            )?,
            events_skipped: counter(
                registry,
                "alertsvc_produce_events_skipped_total",
                "Rows whose event id was already emitted.",
                &["job"],
            )?,
            dead_letters: counter(
                registry,
                "alertsvc_produce_dead_letters_total",
                "Rows that could not be mapped, sent to the dead-letter topic.",
                &["job"],
            )?,
            runs: counter(
                registry,
                "alertsvc_produce_runs_total",
                "Job runs by outcome (ok, dead_letters, bytes_limit_exceeded, failed).",
                &["job", "outcome"],
            )?,
            lease_conflicts: counter(
                registry,
                "alertsvc_produce_lease_conflicts_total",
                "Runs that did not start because another run held the job's lease.",
                &["job"],
            )?,
            last_success: gauge(
                registry,
                "alertsvc_produce_last_success_timestamp_seconds",
                "When the job last finished a run with every event acknowledged.",
                &["job"],
            )?,
            run_seconds,
            bytes_processed: counter(
                registry,
                "alertsvc_produce_bytes_processed_total",
                "Bytes BigQuery processed for a job's queries (its statistics, once a query completed).",
                &["job"],
            )?,
            bytes_billed: counter(
                registry,
                "alertsvc_produce_bytes_billed_total",
                "Bytes BigQuery billed for a job's queries (0 for cached results).",
                &["job"],
            )?,
        })
    }
}
