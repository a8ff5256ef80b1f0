//! What the demo stands up before its stages start: the embedded broker,
//! scratch databases, the local Slack stand-in, the seeded warehouse and
//! the join tables' records.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use serde_json::Value as Json;
use sqlx::{Connection, Executor};

use super::DemoError;
use crate::config::{
    resolve_path, DemoBroker, DemoSettings, DemoSlack, DemoWarehouse, Secret, Settings,
    SourceSettings,
};
use crate::kafka::{client_config, Role, StageContext};
use crate::slack::fake::{FakeSlack, FakeSlackConfig};

pub(super) fn read_file(dir: &Path, relative: &str) -> Result<String, DemoError> {
    let path = resolve_path(dir, relative);
    std::fs::read_to_string(&path).map_err(|e| DemoError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

pub(super) fn read_json_list(dir: &Path, relative: &str) -> Result<Vec<Json>, DemoError> {
    let text = read_file(dir, relative)?;
    serde_json::from_str(&text).map_err(|e| DemoError::File {
        path: relative.to_owned(),
        reason: e.to_string(),
    })
}

/// A scratch directory for the demo's files, removed at the end.
pub(super) struct Scratch(PathBuf);

impl Scratch {
    pub(super) fn new() -> Result<Scratch, DemoError> {
        let path = std::env::temp_dir().join(format!(
            "alertsvc-demo-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&path).map_err(|e| DemoError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Scratch(path))
    }

    pub(super) fn sqlite_url(&self, name: &str) -> String {
        format!("sqlite://{}?mode=rwc", self.0.join(name).display())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn random_secret(prefix: &str) -> String {
    let bytes: Vec<u8> = (0..16).map(|_| fastrand::u8(..)).collect();
    format!("{prefix}{}", hex::encode(bytes))
}

/// The embedded broker with every configured topic and its dead-letter
/// topic, when the demo runs its own; the settings then point at it.
pub(super) fn start_broker(
    settings: &mut Settings,
    demo: &DemoSettings,
) -> Result<Option<MockCluster<'static, DefaultProducerContext>>, DemoError> {
    Ok(if demo.broker == DemoBroker::Embedded {
        let cluster = MockCluster::new(1).map_err(|e| DemoError::Broker(e.to_string()))?;
        settings.kafka.bootstrap_servers = cluster.bootstrap_servers();
        for topic in settings.topics.values() {
            for name in [topic.name.clone(), settings.dlq_topic(&topic.name)] {
                cluster
                    .create_topic(&name, demo.partitions, 1)
                    .map_err(|e| DemoError::Broker(format!("topic {name}: {e}")))?;
            }
        }
        Some(cluster)
    } else {
        None
    })
}

/// notify's ledger and produce's state live in the scratch directory.
pub(super) fn use_scratch_databases(settings: &mut Settings, scratch: &Scratch) {
    if let Some(notify) = settings.notify.as_mut() {
        notify.ledger.database_url = Secret::new(scratch.sqlite_url("ledger.db"));
    }
    if let Some(produce) = settings.produce.as_mut() {
        produce.state.database_url = Secret::new(scratch.sqlite_url("produce-state.db"));
    }
}

/// The local Slack stand-in, when the demo runs it: alerts go to users by
/// DM, or else to the fallback channels. notify is pointed at it.
pub(super) async fn start_slack(
    settings: &mut Settings,
    config_dir: &Path,
    demo: &DemoSettings,
    signing_secret: &str,
) -> Result<Option<Arc<FakeSlack>>, DemoError> {
    Ok(if demo.slack == DemoSlack::Local {
        let token = random_secret("xoxb-demo-");
        // Alerts go to users by DM, or else to the fallback channels.
        let users: Vec<String> = read_json_list(config_dir, &demo.slack_users)?
            .iter()
            .filter_map(|u| u["slack_user_id"].as_str().map(str::to_owned))
            .collect();
        let channels: Vec<String> = settings
            .enrich
            .iter()
            .flat_map(|e| e.pipelines.values())
            .filter_map(|p| p.vars.get("fallback_channel").cloned())
            .collect();
        let fake = FakeSlack::start(FakeSlackConfig {
            token: token.clone(),
            channels,
            users,
            per_channel_per_second: None,
            burst: 3,
            ..FakeSlackConfig::default()
        })
        .await
        .map_err(|e| DemoError::Slack(e.to_string()))?;
        if let Some(notify) = settings.notify.as_mut() {
            notify.slack.api_url = fake.url.clone();
            notify.slack.bot_token = Some(Secret::new(token));
            notify.slack.signing_secret = Some(Secret::new(signing_secret.to_owned()));
        }
        Some(Arc::new(fake))
    } else {
        None
    })
}

/// Seeds the embedded warehouse and points the SQL sources at it.
pub(super) async fn seed_warehouse(
    settings: &mut Settings,
    config_dir: &Path,
    demo: &DemoSettings,
    warehouse_url: &str,
) -> Result<(), DemoError> {
    if demo.warehouse == DemoWarehouse::Embedded {
        let seed = read_file(config_dir, &demo.seed_sql)?;
        let mut conn = sqlx::SqliteConnection::connect(warehouse_url)
            .await
            .map_err(|e| DemoError::Warehouse(e.to_string()))?;
        // The seed is a file of ours, next to the config.
        conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(seed)))
            .await
            .map_err(|e| DemoError::Warehouse(format!("{}: {e}", demo.seed_sql)))?;
        if let Some(produce) = settings.produce.as_mut() {
            for source in produce.sources.values_mut() {
                if let SourceSettings::Sql(sql) = source {
                    sql.url = Secret::new(warehouse_url.to_owned());
                }
            }
        }
    }
    Ok(())
}

/// Writes the assignment and Slack-user tables' records.
pub(super) async fn seed_tables(
    settings: &Settings,
    config_dir: &Path,
    demo: &DemoSettings,
) -> Result<(), DemoError> {
    let codecs = crate::avro::build_codecs(config_dir, settings)
        .map_err(|(topic, e)| DemoError::Broker(format!("topic {topic}: {e}")))?;
    let key_codecs = crate::avro::build_key_codecs(config_dir, settings)
        .map_err(|(topic, e)| DemoError::Broker(format!("topic {topic}: {e}")))?;
    let producer: FutureProducer<StageContext> = client_config(
        &settings.kafka,
        "the demo table seeder",
        &Role::IdempotentProducer { linger_ms: 5 },
    )
    .create_with_context(StageContext::default())
    .map_err(|e| DemoError::Broker(e.to_string()))?;
    let tables: [(&str, &str, &str); 2] = [
        ("csdr_assignment", demo.assignments.as_str(), "org_id"),
        ("slack_users", demo.slack_users.as_str(), "email"),
    ];
    for (topic_id, file, key_field) in tables {
        let topic = settings
            .topic(topic_id)
            .map_err(DemoError::Broker)?
            .name
            .clone();
        let (Some(codec), Some(key_codec)) = (codecs.get(topic_id), key_codecs.get(topic_id))
        else {
            return Err(DemoError::Broker(format!("no codec for {topic_id}")));
        };
        for record in read_json_list(config_dir, file)? {
            let failed = |e: crate::avro::AvroError| DemoError::File {
                path: file.to_owned(),
                reason: e.to_string(),
            };
            let key = key_codec.encode(&record[key_field]).await.map_err(failed)?;
            let payload = codec.encode(&record).await.map_err(failed)?;
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| DemoError::Broker(format!("{topic}: {e}")))?;
        }
    }
    Ok(())
}
