//! `alertsvc notify`: posts `slack-messages` to Slack at Slack's pace, never
//! twice, and writes every outcome to `slack-responses` (DESIGN §6).
//!
//! One worker task per channel keeps that channel's messages in order while
//! channels proceed independently; offsets are stored only below the lowest
//! unfinished message of each partition ([`offsets`]); [`delivery`] decides
//! what to do with one message using the [`ledger`].

pub mod delivery;
pub mod interactions;
pub mod ledger;
pub mod offsets;
pub mod pacing;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::avro::{build_codecs, AvroError, Codec};
use crate::config::{NotifySettings, Settings};
use crate::http::{self, AppState, Health};
use crate::kafka::{client_config, enqueue, DeadLetter, OutRecord, StageContext};
use crate::messages::{to_json, DeliveryOutcome, SlackMessage, SlackResponse};
use crate::metrics::{MetricsError, NotifyMetrics};
use crate::slack::SlackApi;
use delivery::{DeliverError, Deliverer, Delivery};
use ledger::{Ledger, LedgerError};
use offsets::OffsetTracker;
use pacing::Pacer;

/// A channel worker with nothing to do for this long exits.
const WORKER_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("the configuration has no [notify] section")]
    NotConfigured,
    #[error("no Slack bot token: set ALERTSVC__NOTIFY__SLACK__BOT_TOKEN")]
    NoToken,
    #[error("topic {topic}: {source}")]
    Codec { topic: String, source: AvroError },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("Kafka {stage}: {source}")]
    Kafka {
        stage: &'static str,
        source: KafkaError,
    },
}

fn kafka(stage: &'static str) -> impl FnOnce(KafkaError) -> NotifyError {
    move |source| NotifyError::Kafka { stage, source }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Job {
    message: SlackMessage,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    partition: i32,
    offset: i64,
    _permit: OwnedSemaphorePermit,
}

struct Finished {
    partition: i32,
    offset: i64,
}

/// What every channel worker needs.
struct Shared {
    deliverer: Deliverer,
    producer: FutureProducer<StageContext>,
    responses_topic: String,
    responses_codec: Arc<Codec>,
    input_topic: String,
    dlq_topic: String,
    metrics: NotifyMetrics,
    health: Arc<Health>,
    /// Set when Slack rejects the token: nothing more is delivered.
    halted: CancellationToken,
    /// Set when the shutdown grace period is over.
    hard_stop: CancellationToken,
    finished: mpsc::UnboundedSender<Finished>,
}

/// Connects the ledger and applies migrations (`alertsvc migrate`).
pub async fn run(
    settings: &Settings,
    config_dir: &Path,
    shutdown: CancellationToken,
) -> Result<(), NotifyError> {
    let notify = settings.notify.as_ref().ok_or(NotifyError::NotConfigured)?;
    let token = notify
        .slack
        .bot_token
        .as_ref()
        .ok_or(NotifyError::NoToken)?;
    let registry = Registry::new();
    let metrics = NotifyMetrics::register(&registry)?;
    let codecs = build_codecs(config_dir, settings)
        .map_err(|(topic, source)| NotifyError::Codec { topic, source })?;
    let topic_name = |id: &str| {
        settings
            .topics
            .get(id)
            .map(|t| t.name.clone())
            .unwrap_or_default()
    };
    let input_topic = topic_name(&notify.input);

    let ledger = Ledger::connect(
        notify.ledger.database_url.expose(),
        notify.ledger.max_connections,
    )
    .await?;
    if notify.ledger.migrate_on_start {
        ledger.migrate().await?;
    }
    let slack = Arc::new(SlackApi::new(
        &notify.slack.api_url,
        token.expose(),
        notify.slack.request_timeout,
    ));
    let context = StageContext {
        lag: Some(metrics.consumer_lag.clone()),
    };
    let mut producer_config = client_config(&settings.kafka);
    producer_config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5");
    let producer: FutureProducer<StageContext> = producer_config
        .create_with_context(context.clone())
        .map_err(kafka("producer"))?;

    let health = Arc::new(Health::default());
    let interaction_state = Arc::new(interactions::InteractionState {
        signing_secret: notify.slack.signing_secret.clone(),
        producer: producer.clone(),
        topic: topic_name(&notify.interactions),
        codec: codecs[&notify.interactions].clone(),
        slack: Some(slack.clone()),
        replay: interactions::ReplayGuard::default(),
        metrics: metrics.clone(),
    });
    let router = http::ops_router(AppState {
        health: health.clone(),
        registry: registry.clone(),
    })
    .merge(
        axum::Router::new()
            .route(
                "/slack/interactions",
                axum::routing::post(interactions::handle),
            )
            .with_state(interaction_state),
    );
    let http_stop = CancellationToken::new();
    let (_, http_task) = http::serve(notify.http_addr, router, http_stop.clone())
        .await
        .map_err(|source| NotifyError::Http {
            addr: notify.http_addr,
            source,
        })?;

    let mut consumer_config = client_config(&settings.kafka);
    consumer_config
        .set("group.id", &notify.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", "15000");
    let consumer: StreamConsumer<StageContext> = consumer_config
        .create_with_context(context)
        .map_err(kafka("consumer"))?;
    consumer
        .subscribe(&[input_topic.as_str()])
        .map_err(kafka("subscribe"))?;

    let (finished_tx, finished_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        deliverer: Deliverer {
            slack,
            ledger,
            pacer: Arc::new(Pacer::new(&notify.pacing)),
            retry: notify.retry.clone(),
            max_age: notify.max_age,
            metrics: metrics.clone(),
        },
        producer,
        responses_topic: topic_name(&notify.responses),
        responses_codec: codecs[&notify.responses].clone(),
        dlq_topic: settings.dlq_topic(&input_topic),
        input_topic,
        metrics,
        health: health.clone(),
        halted: CancellationToken::new(),
        hard_stop: CancellationToken::new(),
        finished: finished_tx,
    });
    health.set_ready(true);
    tracing::info!(topic = %shared.input_topic, "notify is delivering");

    let codec = codecs[&notify.input].clone();
    let result = dispatch(&consumer, codec, shared, finished_rx, notify, &shutdown).await;
    health.set_ready(false);
    match tokio::task::block_in_place(|| consumer.commit_consumer_state(CommitMode::Sync)) {
        Ok(()) => {}
        // Everything finished was committed already: nothing to do.
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::error::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(e) => tracing::warn!(error = %e, "final offset commit failed"),
    }
    http_stop.cancel();
    let _ = http_task.await;
    result
}

/// Reads messages and hands each to its channel's worker until shutdown,
/// then waits (up to the grace period) for in-flight messages.
async fn dispatch(
    consumer: &StreamConsumer<StageContext>,
    codec: Arc<Codec>,
    shared: Arc<Shared>,
    mut finished_rx: mpsc::UnboundedReceiver<Finished>,
    notify: &NotifySettings,
    shutdown: &CancellationToken,
) -> Result<(), NotifyError> {
    let permits = Arc::new(Semaphore::new(notify.max_in_flight));
    let mut tracker = OffsetTracker::default();
    let mut workers: HashMap<String, mpsc::Sender<Job>> = HashMap::new();
    let store = |tracker: &mut OffsetTracker, done: Finished| {
        shared.metrics.in_flight.dec();
        if let Some(next) = tracker.finished(done.partition, done.offset) {
            // `store_offset` takes the last processed offset; the commit is
            // one past it.
            if let Err(e) = consumer.store_offset(&shared.input_topic, done.partition, next - 1) {
                tracing::debug!(partition = done.partition, error = %e, "offset not stored (partition revoked?)");
            }
        }
    };
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = finished_rx.recv() => store(&mut tracker, done),
            message = consumer.recv(), if !shared.halted.is_cancelled() && permits.available_permits() > 0 => {
                let message = match message {
                    Ok(message) => message.detach(),
                    Err(e) => {
                        tracing::warn!(error = %e, "consume failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
                tracker.started(message.partition(), message.offset());
                shared.metrics.in_flight.inc();
                match decode(&codec, &message).await {
                    Ok(slack_message) => {
                        let job = Job {
                            key: message.key().map(<[u8]>::to_vec),
                            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                            partition: message.partition(),
                            offset: message.offset(),
                            message: slack_message,
                            _permit: permit,
                        };
                        send_to_worker(&mut workers, &shared, job).await;
                    }
                    Err(reason) => {
                        dead_letter(&shared, &message, "decode", &reason).await;
                        drop(permit);
                        store(&mut tracker, Finished { partition: message.partition(), offset: message.offset() });
                    }
                }
            }
        }
    }
    tracing::info!(
        in_flight = tracker.unfinished(),
        "notify stopping: finishing in-flight messages"
    );
    drop(workers);
    let deadline = tokio::time::Instant::now() + notify.shutdown_grace;
    while tracker.unfinished() > 0 {
        tokio::select! {
            Some(done) = finished_rx.recv() => store(&mut tracker, done),
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(left = tracker.unfinished(), "grace period over; the rest is redelivered after restart");
                break;
            }
        }
    }
    shared.hard_stop.cancel();
    Ok(())
}

async fn decode(codec: &Codec, message: &OwnedMessage) -> Result<SlackMessage, String> {
    let payload = message.payload().ok_or("record has no value")?;
    let value = codec
        .decode(payload)
        .await
        .map_err(|e| format!("cannot decode: {e}"))?;
    SlackMessage::from_json(value).map_err(|e| format!("not a SlackMessage: {e}"))
}

async fn send_to_worker(
    workers: &mut HashMap<String, mpsc::Sender<Job>>,
    shared: &Arc<Shared>,
    job: Job,
) {
    let channel = job.message.channel_id.clone();
    let mut job = job;
    loop {
        let sender = workers.entry(channel.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(1024);
            tokio::spawn(channel_worker(shared.clone(), rx));
            tx
        });
        match sender.send(job).await {
            Ok(()) => return,
            // The worker retired while idle: start a new one.
            Err(mpsc::error::SendError(returned)) => {
                workers.remove(&channel);
                job = returned;
            }
        }
    }
}

/// Delivers one channel's messages in order.
async fn channel_worker(shared: Arc<Shared>, mut jobs: mpsc::Receiver<Job>) {
    loop {
        let job = tokio::select! {
            job = jobs.recv() => job,
            _ = tokio::time::sleep(WORKER_IDLE) => {
                // Refuse new jobs, then finish any that raced in.
                jobs.close();
                while let Some(job) = jobs.recv().await {
                    process(&shared, job).await;
                }
                return;
            }
        };
        let Some(job) = job else { return };
        process(&shared, job).await;
    }
}

async fn process(shared: &Shared, job: Job) {
    let mut ledger_failures = 0u32;
    loop {
        if shared.halted.is_cancelled() {
            return; // not finished: redelivered once the token is fixed
        }
        match shared
            .deliverer
            .deliver(&job.message, now_ms(), &shared.hard_stop)
            .await
        {
            Ok(delivery) => {
                if record_outcome(shared, &job, &delivery).await {
                    shared
                        .metrics
                        .deliveries
                        .with_label_values(&[outcome_label(delivery.outcome)])
                        .inc();
                    let _ = shared.finished.send(Finished {
                        partition: job.partition,
                        offset: job.offset,
                    });
                }
                return;
            }
            Err(DeliverError::Auth(e)) => {
                tracing::error!(error = %e, "Slack rejected the bot token: delivery stopped, readiness failing");
                shared.health.set_ready(false);
                shared.halted.cancel();
                return;
            }
            Err(DeliverError::Ledger(e)) => {
                ledger_failures += 1;
                let delay = Duration::from_millis(200 * 2u64.pow(ledger_failures.min(6)));
                tracing::error!(error = %e, ?delay, "ledger unavailable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shared.hard_stop.cancelled() => return,
                }
            }
            Err(DeliverError::Cancelled) => return,
        }
    }
}

fn outcome_label(outcome: DeliveryOutcome) -> &'static str {
    match outcome {
        DeliveryOutcome::Posted => "posted",
        DeliveryOutcome::Updated => "updated",
        DeliveryOutcome::Duplicate => "duplicate",
        DeliveryOutcome::Expired => "expired",
        DeliveryOutcome::Failed => "failed",
    }
}

/// Writes the response (and the dead letter) and waits for Kafka's ack;
/// false if shutdown came first (the message then stays unfinished).
async fn record_outcome(shared: &Shared, job: &Job, delivery: &Delivery) -> bool {
    let response = SlackResponse {
        alert_id: job.message.alert_id.clone(),
        channel_id: delivery.channel.clone(),
        ok: !matches!(
            delivery.outcome,
            DeliveryOutcome::Failed | DeliveryOutcome::Expired
        ),
        outcome: delivery.outcome,
        ts: delivery.ts.clone(),
        error: delivery.error.clone(),
        posted_at: now_ms(),
        attempts: delivery.attempts,
        http_status: delivery.http_status,
        source_partition: job.partition,
        source_offset: job.offset,
    };
    let payload = match shared.responses_codec.encode(&to_json(&response)).await {
        Ok(payload) => payload,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode SlackResponse");
            return false;
        }
    };
    let mut records = vec![OutRecord {
        topic: shared.responses_topic.clone(),
        key: Some(job.message.alert_id.clone().into_bytes()),
        payload: Some(payload),
        headers: None,
    }];
    if delivery.dead_letter {
        shared.metrics.dlq.inc();
        let letter = DeadLetter {
            source_topic: &shared.input_topic,
            partition: job.partition,
            offset: job.offset,
            stage: "deliver",
            reason: format!(
                "Slack error: {}",
                delivery.error.as_deref().unwrap_or("unknown")
            ),
            pipeline: None,
        };
        records.push(OutRecord {
            topic: shared.dlq_topic.clone(),
            key: job.key.clone(),
            payload: Some(job.payload.clone()),
            headers: Some(letter.headers()),
        });
    }
    for record in &records {
        if !produce_until_acked(shared, record).await {
            return false;
        }
    }
    true
}

async fn produce_until_acked(shared: &Shared, record: &OutRecord) -> bool {
    loop {
        let result = match enqueue(&shared.producer, record).await {
            Ok(delivery) => match delivery.await {
                Ok(Ok(_)) => return true,
                Ok(Err((e, _))) => e.to_string(),
                Err(_) => "delivery cancelled".to_owned(),
            },
            Err(e) => e.to_string(),
        };
        tracing::warn!(topic = %record.topic, error = %result, "produce failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shared.hard_stop.cancelled() => return false,
        }
    }
}

async fn dead_letter(shared: &Shared, message: &OwnedMessage, stage: &str, reason: &str) {
    tracing::warn!(
        partition = message.partition(),
        offset = message.offset(),
        reason,
        "message sent to the dead-letter topic"
    );
    shared.metrics.dlq.inc();
    let letter = DeadLetter {
        source_topic: &shared.input_topic,
        partition: message.partition(),
        offset: message.offset(),
        stage,
        reason: reason.to_owned(),
        pipeline: None,
    };
    let record = OutRecord {
        topic: shared.dlq_topic.clone(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        headers: Some(letter.headers()),
    };
    produce_until_acked(shared, &record).await;
}
