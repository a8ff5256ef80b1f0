//! `alertsvc enrich`: declared pipelines filter stream events, join them with
//! GlobalKTable-style tables, render Block Kit messages and write them to
//! `slack-messages`, exactly once (DESIGN §5).
//!
//! [`pipeline`] is the pure per-record logic, [`table`] keeps the join
//! tables, [`processor`] moves records between Kafka and the pipelines.

pub mod config;
pub mod markup;
pub mod parallel;
pub mod pipeline;
pub mod processor;
pub mod readiness;
pub mod table;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::avro::{build_codecs, build_key_codecs, AvroError, Codec, KeyCodec};
use crate::backoff::Backoff;
use crate::config::{ConfigError, EnrichSettings, ProcessingGuarantee, Settings};
use crate::http::BindError;
use crate::kafka::{client_config, Commits, Role, StageContext};
use crate::metrics::{EnrichMetrics, MetricsError};
use crate::stage::{Bound, Stage, Work};
use pipeline::Pipeline;
use processor::{BatchError, InputTopic, Processor, Route};
use readiness::Readiness;
use table::{TableError, TableLoader, Tables};

#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("the configuration has no [enrich] section")]
    NotConfigured,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("topic {topic}: {source}")]
    Codec { topic: String, source: AvroError },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Http(#[from] BindError),
    #[error("cannot create the Kafka {client}: {source}")]
    Client {
        client: &'static str,
        source: KafkaError,
    },
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("table loader stopped: {0}")]
    TableTask(String),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Workers(#[from] parallel::WorkersError),
}

/// Compiles every enabled pipeline of the configuration.
pub fn compile_pipelines(
    enrich: &EnrichSettings,
    config_dir: &Path,
) -> Result<Vec<Arc<Pipeline>>, ConfigError> {
    enrich
        .pipelines
        .iter()
        .filter(|(_, p)| p.enabled)
        .map(|(name, p)| Pipeline::compile(name, p, config_dir).map(Arc::new))
        .collect()
}

/// Stable per replica, so a restarted replica fences its predecessor's
/// open transaction.
fn instance_id() -> String {
    crate::stage::replica_name(None).unwrap_or_else(|| "0".to_owned())
}

/// enrich, bound but not yet working: its HTTP endpoints' address, health
/// and metrics are known before `run_until_stopped` starts the tables and
/// the stream (`enrich.http_addr`; port 0 picks one). `Enrich::run` is
/// build-then-run for the CLI.
pub type Enrich = Stage<EnrichWork>;

/// enrich's part of its [`Stage`]: until shutdown, then it commits or
/// aborts the open batch.
#[derive(Debug, Default)]
pub struct EnrichWork;

impl Work for EnrichWork {
    type Error = EnrichError;

    fn http_addr(&self, settings: &Settings) -> Result<SocketAddr, EnrichError> {
        Ok(settings
            .enrich
            .as_ref()
            .ok_or(EnrichError::NotConfigured)?
            .http_addr)
    }

    async fn run(self, bound: Bound<'_>, shutdown: CancellationToken) -> Result<(), EnrichError> {
        run_with(bound, shutdown).await
    }
}

async fn run_with(bound: Bound<'_>, shutdown: CancellationToken) -> Result<(), EnrichError> {
    let (settings, config_dir, ops) = (bound.settings, bound.config_dir, bound.ops);
    let enrich = settings.enrich.as_ref().ok_or(EnrichError::NotConfigured)?;
    let registry = ops.handle().registry.clone();
    let metrics = EnrichMetrics::register(&registry)?;
    let codecs = build_codecs(config_dir, settings)
        .map_err(|(topic, source)| EnrichError::Codec { topic, source })?;
    let key_codecs = build_key_codecs(config_dir, settings)
        .map_err(|(topic, source)| EnrichError::Codec { topic, source })?;
    let pipelines = compile_pipelines(enrich, config_dir)?;

    // Everything below stops with `stop`: on shutdown, or when a table
    // loader dies (the tables would go stale).
    let stop = shutdown.child_token();
    let health = ops.handle().health.clone();
    let readiness = Arc::new(Readiness::new(
        health.clone(),
        metrics.registry_unavailable.clone(),
    ));
    let http_task = ops.serve(axum::Router::new(), stop.clone());

    let context = StageContext {
        lag: Some(metrics.consumer_lag.clone()),
    };
    let dlq_producer: FutureProducer<StageContext> = client_config(
        &settings.kafka,
        "the enrich dead-letter producer",
        &Role::IdempotentProducer { linger_ms: 5 },
    )
    .create_with_context(context.clone())
    .map_err(|source| EnrichError::Client {
        client: "dead-letter producer",
        source,
    })?;

    let mut tables = Tables::default();
    let mut loaders = Vec::new();
    for (id, table_settings) in &enrich.tables {
        let topic =
            settings.topic_at(&format!("enrich.tables.{id}.topic"), &table_settings.topic)?;
        let consumer: StreamConsumer<StageContext> = client_config(
            &settings.kafka,
            &format!("the enrich table reader of {id}"),
            &Role::TableReader {
                group_id: format!("{}-table-{id}", enrich.group_id),
            },
        )
        .create_with_context(context.clone())
        .map_err(|source| EnrichError::Client {
            client: "table consumer",
            source,
        })?;
        loaders.push(TableLoader {
            id: id.clone(),
            topic: topic.name.clone(),
            dlq_topic: settings.dlq_topic(&topic.name),
            key_codec: key_codecs[&table_settings.topic].clone(),
            table: tables.insert(id, codecs[&table_settings.topic].clone()),
            consumer,
            dlq: dlq_producer.clone(),
            metrics: metrics.clone(),
            readiness: readiness.clone(),
        });
    }
    let tables = Arc::new(tables);

    let mut bootstrapped = Vec::new();
    let mut table_tasks = tokio::task::JoinSet::new();
    for loader in loaders {
        let (tx, rx) = watch::channel(false);
        bootstrapped.push(rx);
        let stop = stop.clone();
        table_tasks.spawn(async move { loader.run(tx, stop).await });
    }

    let mut inputs: HashMap<String, InputTopic> = HashMap::new();
    for pipeline in pipelines {
        let key = |k: &str| format!("enrich.pipelines.{}.{k}", pipeline.name);
        let input = settings.topic_at(&key("input"), &pipeline.input)?;
        let output = settings.topic_at(&key("output"), &pipeline.output)?;
        let route = Route {
            output_topic: output.name.clone(),
            output_codec: codecs[&pipeline.output].clone(),
            output_key_codec: key_codecs[&pipeline.output].clone(),
            pipeline: pipeline.clone(),
        };
        inputs
            .entry(input.name.clone())
            .or_insert_with(|| InputTopic {
                codec: codecs[&pipeline.input].clone(),
                key_codec: key_codecs[&pipeline.input].clone(),
                routes: Vec::new(),
            })
            .routes
            .push(route);
    }

    let outputs: BTreeMap<String, (Arc<Codec>, Arc<KeyCodec>)> = inputs
        .values()
        .flat_map(|input| &input.routes)
        .map(|route| {
            let codecs = (route.output_codec.clone(), route.output_key_codec.clone());
            (route.pipeline.output.clone(), codecs)
        })
        .collect();

    let processor = build_processor(
        settings,
        enrich,
        inputs,
        tables,
        metrics,
        readiness.clone(),
        context,
    )?;

    // No stream record before every table is complete and every output
    // knows its schema id.
    let all_bootstrapped = async {
        for mut rx in bootstrapped {
            let _ = rx.wait_for(|done| *done).await;
        }
        Ok(())
    };
    let started = async {
        tokio::try_join!(
            all_bootstrapped,
            prepare_outputs(&outputs, &readiness, &stop)
        )
    };
    tokio::select! {
        started = started => {
            if let Err(error) = started {
                stop.cancel();
                return Err(error);
            }
        }
        _ = stop.cancelled() => {}
        Some(joined) = table_tasks.join_next() => {
            stop.cancel();
            return Err(table_task_error(joined));
        }
    }
    if stop.is_cancelled() {
        return Ok(());
    }
    readiness.bootstrapped();
    tracing::info!("all tables bootstrapped; enrich is ready");

    let processing = processor.run(stop.clone());
    tokio::pin!(processing);
    let result = loop {
        tokio::select! {
            result = &mut processing => break result.map_err(EnrichError::from),
            Some(joined) = table_tasks.join_next(), if !stop.is_cancelled() => {
                if stop.is_cancelled() {
                    continue; // loaders end on shutdown: expected
                }
                // A dead loader means stale joins: stop after the open batch.
                let error = table_task_error(joined);
                tracing::error!(%error, "table loader failed; stopping");
                stop.cancel();
                let _ = (&mut processing).await;
                break Err(error);
            }
        }
    };
    if result.is_err() {
        health.set_failed();
    }
    readiness.stopping();
    stop.cancel();
    while table_tasks.join_next().await.is_some() {}
    let _ = http_task.await;
    result
}

/// First and longest wait between tries to find an output's schema id.
const PREPARE_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

/// Finds the schema id every output topic writes with (its values', and
/// its keys' when they are encoded) before the first
/// record is read. A schema missing from a subject alertsvc may not
/// register in, or a latest version our records cannot be written as, is a
/// configuration error: enrich stops with it at startup instead of
/// dead-lettering every record. A registry that cannot answer (or refuses
/// our key) is waited for, not ready meanwhile, with the reason on
/// `/readyz`.
async fn prepare_outputs(
    outputs: &BTreeMap<String, (Arc<Codec>, Arc<KeyCodec>)>,
    readiness: &Readiness,
    stop: &CancellationToken,
) -> Result<(), EnrichError> {
    let mut written: Vec<(&String, &Codec)> = Vec::new();
    for (topic, (codec, key)) in outputs {
        written.push((topic, codec));
        written.extend(key.encoded().map(|key| (topic, key)));
    }
    for (topic, codec) in written {
        let reader = format!("output topic {topic}");
        let mut backoff = Backoff::new(PREPARE_BACKOFF.0, PREPARE_BACKOFF.1);
        let mut waited = false;
        loop {
            match codec.prepare_writes().await {
                Ok(used) => {
                    if let Some(used) = used {
                        tracing::info!(topic, subject = %used.subject, mode = %used.mode,
                            id = ?used.id, version = ?used.version, "output schema");
                    }
                    if waited {
                        readiness.registry_available(&reader);
                    }
                    break;
                }
                Err(error) if error.is_transient() => {
                    if !waited {
                        // Logged here too: `Readiness` logs only the first
                        // reader of an outage, and this error may carry the
                        // fix.
                        tracing::warn!(topic, %error, "cannot find the output's schema id yet; waiting (not ready)");
                        waited = true;
                    }
                    readiness.registry_unavailable(&reader, &error);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = stop.cancelled() => return Ok(()),
                    }
                }
                Err(source) => {
                    return Err(EnrichError::Codec {
                        topic: topic.clone(),
                        source,
                    })
                }
            }
        }
    }
    Ok(())
}

fn table_task_error(joined: Result<Result<(), TableError>, tokio::task::JoinError>) -> EnrichError {
    match joined {
        Ok(Ok(())) => EnrichError::TableTask("stopped unexpectedly".into()),
        Ok(Err(e)) => EnrichError::Table(e),
        Err(e) => EnrichError::TableTask(e.to_string()),
    }
}

fn build_processor(
    settings: &Settings,
    enrich: &EnrichSettings,
    inputs: HashMap<String, InputTopic>,
    tables: Arc<Tables>,
    metrics: EnrichMetrics,
    readiness: Arc<Readiness>,
    context: StageContext,
) -> Result<Processor, EnrichError> {
    let exactly_once = enrich.processing_guarantee == ProcessingGuarantee::ExactlyOnce;
    let consumer: StreamConsumer<StageContext> = client_config(
        &settings.kafka,
        "the enrich consumer",
        &Role::StreamConsumer {
            group_id: enrich.group_id.clone(),
            commits: Commits::Manual,
        },
    )
    .create_with_context(context.clone())
    .map_err(|source| EnrichError::Client {
        client: "consumer",
        source,
    })?;

    let role = if exactly_once {
        let transactional_id = format!("{}-{}", enrich.transactional_id_prefix, instance_id());
        tracing::info!(%transactional_id, "exactly-once processing");
        Role::TransactionalProducer {
            linger_ms: 5,
            transactional_id,
            transaction_timeout: enrich.transaction_timeout,
        }
    } else {
        Role::IdempotentProducer { linger_ms: 5 }
    };
    let producer: FutureProducer<StageContext> =
        client_config(&settings.kafka, "the enrich producer", &role)
            .create_with_context(context)
            .map_err(|source| EnrichError::Client {
                client: "producer",
                source,
            })?;

    Ok(Processor {
        consumer,
        producer,
        guarantee: enrich.processing_guarantee,
        inputs,
        tables,
        dlq_suffix: settings.kafka.dlq_suffix.clone(),
        metrics,
        readiness,
        max_batch_records: enrich.max_batch_records,
        workers: parallel::Workers::new(enrich.workers)?,
        max_batch_wait: enrich.max_batch_wait,
        kafka_timeout: Duration::from_secs(30),
    })
}
