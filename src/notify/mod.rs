//! `alertsvc notify`: posts `slack-messages` to Slack at Slack's pace,
//! exactly once across retries, restarts and replicas, and writes every
//! outcome to `slack-responses` (DESIGN §6).
//!
//! A message travels: [`dispatch`] (consumer loop, pausing, rebalances) →
//! [`worker`] (one task per channel, in order) → [`delivery`] (claims the
//! alert in the [`ledger`], executes what [`decision`] plans) →
//! [`responses`] (outcome and dead letter acknowledged by Kafka) → back to
//! [`dispatch`], which stores the offset below the lowest unfinished
//! message of the partition ([`offsets`]).

pub mod backlog;
pub mod config;
pub mod decision;
pub mod delivery;
pub mod dispatch;
pub mod grouping;
pub mod interactions;
pub mod keyed_locks;
pub mod ledger;
pub mod offsets;
pub mod pacing;
pub mod responses;
pub mod slack_health;
pub mod slack_side;
pub mod state;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::avro::{build_codecs, build_key_codecs, AvroError};
use crate::clock::now_ms;
use crate::config::Settings;
use crate::http::BindError;
use crate::kafka::{client_config, Commits, Role, StageContext, NOTIFY_LINGER_MS};
use crate::metrics::{MetricsError, NotifyMetrics};
use crate::slack::SlackApi;
use crate::stage::{Bound, Stage, Work};
use decision::Rules;
use delivery::{Deliverer, DeliverySettings};
use dispatch::{Assignment, Dispatcher, NotifyContext};
use grouping::GroupLedger;
use ledger::{Ledger, LedgerError, Owner};
use pacing::Pacer;
use responses::Responses;
use slack_health::SlackHealth;
use slack_side::SlackSide;
use worker::Shared;

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
    #[error(transparent)]
    Http(#[from] BindError),
    #[error("Kafka {stage}: {source}")]
    Kafka {
        stage: &'static str,
        source: KafkaError,
    },
}

/// How often states not yet on the topic are published, and states not yet
/// on their message shown.
const STATE_SWEEP_EVERY: Duration = Duration::from_secs(5);

fn kafka(stage: &'static str) -> impl FnOnce(KafkaError) -> NotifyError {
    move |source| NotifyError::Kafka { stage, source }
}

/// The name this replica claims alerts under: unique among live replicas,
/// stable across its restarts.
pub fn instance_id(configured: Option<&str>) -> String {
    crate::stage::replica_name(configured).unwrap_or_else(|| "notify".to_owned())
}

/// notify, bound but not yet working: its HTTP endpoints' address (the
/// interactions endpoint included), health and metrics are known before
/// `run_until_stopped` connects the ledger and starts consuming
/// (`notify.http_addr`; port 0 picks one). `Notify::run` is build-then-run
/// for the CLI.
pub type Notify = Stage<NotifyWork>;

/// notify's part of its [`Stage`]: connects the ledger (migrating it if
/// configured), serves HTTP, consumes and delivers until shutdown, then
/// commits.
#[derive(Debug, Default)]
pub struct NotifyWork;

impl Work for NotifyWork {
    type Error = NotifyError;

    fn http_addr(&self, settings: &Settings) -> Result<SocketAddr, NotifyError> {
        Ok(settings
            .notify
            .as_ref()
            .ok_or(NotifyError::NotConfigured)?
            .http_addr)
    }

    async fn run(self, bound: Bound<'_>, shutdown: CancellationToken) -> Result<(), NotifyError> {
        // Every post's buffers come and go; with huge pages each return
        // and reuse of them was a 2 MiB page zeroed anew (see the module).
        if !crate::memory::disable_transparent_huge_pages() {
            tracing::debug!("transparent huge pages left as the system has them");
        }
        run_with(bound, shutdown).await
    }
}

async fn run_with(bound: Bound<'_>, shutdown: CancellationToken) -> Result<(), NotifyError> {
    let (settings, config_dir, ops) = (bound.settings, bound.config_dir, bound.ops);
    let notify = settings.notify.as_ref().ok_or(NotifyError::NotConfigured)?;
    let token = notify
        .slack
        .bot_token
        .as_ref()
        .ok_or(NotifyError::NoToken)?;
    let registry = ops.handle().registry.clone();
    let metrics = NotifyMetrics::register(&registry)?;
    let codecs = build_codecs(config_dir, settings)
        .map_err(|(topic, source)| NotifyError::Codec { topic, source })?;
    let key_codecs = build_key_codecs(config_dir, settings)
        .map_err(|(topic, source)| NotifyError::Codec { topic, source })?;
    let topic_name = |id: &str| {
        settings
            .topics
            .get(id)
            .map(|t| t.name.clone())
            .unwrap_or_default()
    };
    let input_topic = topic_name(&notify.input);
    let written: Vec<(&str, &crate::avro::Codec)> = [&notify.responses, &notify.interactions]
        .into_iter()
        .chain(notify.alert_state.as_ref())
        .flat_map(|id| {
            let key = key_codecs[id].encoded();
            [Some(codecs[id].as_ref()), key]
                .into_iter()
                .flatten()
                .map(move |codec| (id.as_str(), codec))
        })
        .collect();
    crate::avro::check_writes(&written)
        .await
        .map_err(|(topic, source)| NotifyError::Codec { topic, source })?;

    let ledger = Ledger::connect(
        notify.ledger.database_url.expose(),
        notify.ledger.max_connections,
    )
    .await?;
    if notify.ledger.migrate_on_start {
        ledger.migrate().await?;
    }
    let side = SlackSide {
        api: Arc::new(SlackApi::new(
            &notify.slack.api_url,
            token.expose(),
            notify.slack.request_timeout,
        )),
        pacer: Arc::new(Pacer::new(&notify.pacing)),
        health: Arc::new(SlackHealth::new(
            notify.unreachable_after,
            metrics.slack_unreachable.clone(),
        )),
    };
    let context = StageContext {
        lag: Some(metrics.consumer_lag.clone()),
    };
    let producer: FutureProducer<StageContext> = client_config(
        &settings.kafka,
        "the notify producer",
        &Role::IdempotentProducer {
            linger_ms: NOTIFY_LINGER_MS,
        },
    )
    .create_with_context(context.clone())
    .map_err(kafka("producer"))?;

    let states = Arc::new(state::AlertStates::new(
        state::store::StateStore::new(&ledger),
        notify
            .alert_state
            .as_ref()
            .map(|id| state::service::Publisher {
                producer: producer.clone(),
                topic: topic_name(id),
                codec: codecs[id].clone(),
                key_codec: key_codecs[id].clone(),
            }),
        Some(side.clone()),
    ));
    let health = ops.handle().health.clone();
    let interaction_state = Arc::new(interactions::InteractionState {
        signing_secret: notify.slack.signing_secret.clone(),
        producer: producer.clone(),
        topic: topic_name(&notify.interactions),
        codec: codecs[&notify.interactions].clone(),
        key_codec: key_codecs[&notify.interactions].clone(),
        replay: crate::slack::signing::ReplayGuard::default(),
        metrics: metrics.clone(),
        states: Some(states.clone()),
        groups: Some(GroupLedger::new(&ledger)),
    });
    let interactions_route = axum::Router::new()
        .route(
            "/slack/interactions",
            axum::routing::post(interactions::handle),
        )
        .with_state(interaction_state);
    let http_stop = CancellationToken::new();
    let http_task = ops.serve(interactions_route, http_stop.clone());

    let assignment = Arc::new(Assignment::default());
    let consumer: StreamConsumer<NotifyContext> = client_config(
        &settings.kafka,
        "the notify consumer",
        &Role::StreamConsumer {
            group_id: notify.group_id.clone(),
            commits: Commits::AutoStored,
        },
    )
    .create_with_context(NotifyContext {
        stage: context,
        assignment: assignment.clone(),
    })
    .map_err(kafka("consumer"))?;
    consumer
        .subscribe(&[input_topic.as_str()])
        .map_err(kafka("subscribe"))?;

    let owner = Owner::new(&instance_id(notify.instance_id.as_deref()));
    tracing::info!(instance = %owner.instance, "claiming alerts as this instance");
    let probing = {
        let (health, slack, stop) = (side.health.clone(), side.api.clone(), shutdown.clone());
        let every = notify.retry.initial_backoff.max(Duration::from_secs(1));
        tokio::spawn(async move { health.probe(&slack, every, &stop).await })
    };
    let deliverer = Deliverer::new(
        side,
        ledger.clone(),
        DeliverySettings {
            retry: notify.retry.clone(),
            rules: Rules {
                max_age: notify.max_age,
                dedup_window: notify.dedup_window,
            },
            claim_lease: notify.ledger.claim_lease,
            reconcile_delay: notify.reconcile_delay,
            group_update_interval: notify.group_update_interval,
        },
        owner,
        metrics.clone(),
    )
    .with_states(states.clone());
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        deliverer,
        responses: Responses {
            producer,
            topic: topic_name(&notify.responses),
            codec: codecs[&notify.responses].clone(),
            key_codec: key_codecs[&notify.responses].clone(),
            input_topic: input_topic.clone(),
            dlq_topic: settings.dlq_topic(&input_topic),
            metrics: metrics.clone(),
        },
        metrics: metrics.clone(),
        health: health.clone(),
        halted: CancellationToken::new(),
        draining: CancellationToken::new(),
        done: done_tx,
    });
    let publishing = tokio::spawn(
        states
            .clone()
            .run_background(STATE_SWEEP_EVERY, shutdown.clone()),
    );
    let flushing = tokio::spawn(
        shared
            .deliverer
            .grouper()
            .clone()
            .run_flusher(shutdown.clone()),
    );
    let pruning = tokio::spawn(prune_ledger(
        ledger,
        notify.ledger.retention,
        notify.ledger.prune_interval,
        metrics,
        shutdown.clone(),
    ));
    health.set_ready(true);
    tracing::info!(topic = %input_topic, "notify is delivering");

    Dispatcher {
        consumer: &consumer,
        assignment,
        codec: codecs[&notify.input].clone(),
        shared,
        done_rx,
        input_topic,
        settings: notify,
        hard_stop: CancellationToken::new(),
    }
    .run(&shutdown)
    .await;
    pruning.abort();
    probing.abort();
    publishing.abort();
    flushing.abort();
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
    Ok(())
}

/// Deletes ledger rows past their retention, in the background.
async fn prune_ledger(
    ledger: Ledger,
    retention: Duration,
    every: Duration,
    metrics: NotifyMetrics,
    stop: CancellationToken,
) {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        let now = now_ms();
        let states = state::store::StateStore::new(&ledger);
        match states.prune(now.saturating_sub(retention_ms)).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "alert states past their retention deleted"),
            Err(e) => tracing::warn!(error = %e, "alert state pruning failed; trying again later"),
        }
        match ledger.prune(now.saturating_sub(retention_ms), now).await {
            Ok(0) => {}
            Ok(pruned) => {
                metrics.ledger_pruned.inc_by(pruned);
                tracing::info!(pruned, "ledger rows past their retention deleted");
            }
            Err(e) => tracing::warn!(error = %e, "ledger pruning failed; trying again later"),
        }
        if let Err(e) = GroupLedger::new(&ledger)
            .prune(now.saturating_sub(retention_ms))
            .await
        {
            tracing::warn!(error = %e, "group pruning failed; trying again later");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}
