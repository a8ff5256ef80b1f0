//! `alertsvc demo`: the whole pipeline in one process (DESIGN §8). An
//! embedded Kafka broker (librdkafka's mock cluster, reachable by any client
//! at the printed address), a SQLite warehouse seeded from `config/demo`,
//! the assignment and Slack-user tables, `produce`, `enrich` and `notify` on
//! the shipped pipelines, and a local Slack stand-in whose messages show in
//! the terminal and on a preview page. Each part can be the real thing
//! instead (`[demo]` in `config/demo/demo.toml`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use serde_json::Value as Json;
use sqlx::{Connection, Executor};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{
    resolve_path, DemoBroker, DemoSettings, DemoSlack, DemoWarehouse, Secret, Settings,
    SourceSettings,
};
use crate::http::StageHandle;
use crate::kafka::{client_config, Role, StageContext};
use crate::produce::row::format_sql_datetime;
use crate::slack::fake::{FakeMessage, FakeSlack, FakeSlackConfig};

mod preview;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("no [demo] section: the demo layers config/demo/demo.toml over the config")]
    NotConfigured,
    #[error("demo file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("embedded broker: {0}")]
    Broker(String),
    #[error("demo warehouse: {0}")]
    Warehouse(String),
    #[error("local Slack stand-in: {0}")]
    Slack(String),
    #[error("{stage} stopped: {reason}")]
    Stage { stage: &'static str, reason: String },
    #[error("--events counts the failures the demo writes into its own warehouse: it needs demo.warehouse = \"embedded\"")]
    EventsNeedWarehouse,
    #[error("the demo did not finish within {limit:?}: {progress}")]
    Unfinished { limit: Duration, progress: String },
}

/// How the demo ends by itself (for scripts); by default it runs until
/// Ctrl-C.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Write this many connector failures, wait until every resulting alert
    /// is delivered, then exit.
    pub events: Option<usize>,
    /// Exit after this long (with `events`: fail if not finished by then).
    pub exit_after: Option<Duration>,
}

/// One row of `failures.csv`: a connector status change template — a
/// failure, or (`new_status` `Running`) a recovery of the connector last
/// written failing with the same org, environment and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureTemplate {
    pub org_id: String,
    pub env_id: String,
    pub connector_name: String,
    pub connector_type: String,
    pub old_status: String,
    pub new_status: String,
    pub failure_reason: String,
}

impl FailureTemplate {
    pub fn is_recovery(&self) -> bool {
        self.new_status == "Running"
    }
}

const FAILURES_HEADER: &str =
    "org_id,env_id,connector_name,connector_type,old_status,new_status,failure_reason";

/// Reads `failures.csv` (a header, then comma-separated fields; the last
/// field may contain commas).
pub fn parse_failures(text: &str) -> Result<Vec<FailureTemplate>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or("empty file")?;
    if header.trim() != FAILURES_HEADER {
        return Err(format!(
            "unexpected header {header:?}, expected {FAILURES_HEADER:?}"
        ));
    }
    let templates: Vec<FailureTemplate> = lines
        .enumerate()
        .map(|(i, line)| {
            let fields: Vec<&str> = line.splitn(7, ',').map(str::trim).collect();
            match fields.as_slice() {
                [org, env, name, kind, old, new, reason] => Ok(FailureTemplate {
                    org_id: (*org).into(),
                    env_id: (*env).into(),
                    connector_name: (*name).into(),
                    connector_type: (*kind).into(),
                    old_status: (*old).into(),
                    new_status: (*new).into(),
                    failure_reason: (*reason).into(),
                }),
                _ => Err(format!("line {}: expected 7 fields", i + 2)),
            }
        })
        .collect::<Result<_, _>>()?;
    if templates.is_empty() {
        return Err("no rows".into());
    }
    Ok(templates)
}

/// The n-th failure the demo writes: template `n % len`, connector id
/// `lcc-demo-<n>`.
pub fn nth_failure(templates: &[FailureTemplate], n: usize) -> (FailureTemplate, String) {
    (
        templates[n % templates.len()].clone(),
        format!("lcc-demo-{n:04}"),
    )
}

fn read_file(dir: &Path, relative: &str) -> Result<String, DemoError> {
    let path = resolve_path(dir, relative);
    std::fs::read_to_string(&path).map_err(|e| DemoError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn read_json_list(dir: &Path, relative: &str) -> Result<Vec<Json>, DemoError> {
    let text = read_file(dir, relative)?;
    serde_json::from_str(&text).map_err(|e| DemoError::File {
        path: relative.to_owned(),
        reason: e.to_string(),
    })
}

/// A scratch directory for the demo's files, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, DemoError> {
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

    fn sqlite_url(&self, name: &str) -> String {
        format!("sqlite://{}?mode=rwc", self.0.join(name).display())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn random_secret(prefix: &str) -> String {
    let bytes: Vec<u8> = (0..16).map(|_| fastrand::u8(..)).collect();
    format!("{prefix}{}", hex::encode(bytes))
}

pub async fn run(
    mut settings: Settings,
    config_dir: &Path,
    options: Options,
    shutdown: CancellationToken,
) -> Result<(), DemoError> {
    let demo = settings.demo.clone().ok_or(DemoError::NotConfigured)?;
    if options.events.is_some() && demo.warehouse != DemoWarehouse::Embedded {
        return Err(DemoError::EventsNeedWarehouse);
    }
    let scratch = Scratch::new()?;
    let templates = parse_failures(&read_file(config_dir, &demo.failures)?).map_err(|reason| {
        DemoError::File {
            path: demo.failures.clone(),
            reason,
        }
    })?;

    // The broker.
    let _cluster: Option<MockCluster<'static, DefaultProducerContext>> =
        if demo.broker == DemoBroker::Embedded {
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
        };
    let bootstrap = settings.kafka.bootstrap_servers.clone();
    println!("Kafka broker: {bootstrap}   (watch: kcat -b {bootstrap} -C -t slack-messages)");

    // State databases in the scratch directory.
    if let Some(notify) = settings.notify.as_mut() {
        notify.ledger.database_url = Secret::new(scratch.sqlite_url("ledger.db"));
    }
    if let Some(produce) = settings.produce.as_mut() {
        produce.state.database_url = Secret::new(scratch.sqlite_url("produce-state.db"));
    }

    // Slack.
    let signing_secret = random_secret("");
    let slack = if demo.slack == DemoSlack::Local {
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
            notify.slack.signing_secret = Some(Secret::new(signing_secret.clone()));
        }
        Some(Arc::new(fake))
    } else {
        None
    };

    // The warehouse.
    let warehouse_url = scratch.sqlite_url("warehouse.db");
    if demo.warehouse == DemoWarehouse::Embedded {
        let seed = read_file(config_dir, &demo.seed_sql)?;
        let mut conn = sqlx::SqliteConnection::connect(&warehouse_url)
            .await
            .map_err(|e| DemoError::Warehouse(e.to_string()))?;
        // The seed is a file of ours, next to the config.
        conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(seed)))
            .await
            .map_err(|e| DemoError::Warehouse(format!("{}: {e}", demo.seed_sql)))?;
        if let Some(produce) = settings.produce.as_mut() {
            for source in produce.sources.values_mut() {
                if let SourceSettings::Sql(sql) = source {
                    sql.url = Secret::new(warehouse_url.clone());
                }
            }
        }
    }

    seed_tables(&settings, config_dir, &demo).await?;

    // The stages.
    let stages = shutdown.child_token();
    let mut tasks: JoinSet<Result<(), DemoError>> = JoinSet::new();
    let dir = config_dir.to_owned();
    let failed = |stage: &'static str, e: &dyn std::fmt::Display| DemoError::Stage {
        stage,
        reason: e.to_string(),
    };
    // Bound first: the preview needs notify's address, the progress check
    // reads both stages' registries.
    let enrich = crate::enrich::Enrich::build(&settings, config_dir)
        .await
        .map_err(|e| failed("enrich", &e))?;
    let notify = crate::notify::Notify::build(&settings, config_dir)
        .await
        .map_err(|e| failed("notify", &e))?;
    let handles = Handles {
        enrich: enrich.handle(),
        notify: notify.handle(),
    };
    let t = stages.clone();
    spawn_stage(&mut tasks, "enrich", enrich.run_until_stopped(t));
    let t = stages.clone();
    spawn_stage(&mut tasks, "notify", notify.run_until_stopped(t));
    let (s, d, t) = (settings.clone(), dir, stages.clone());
    spawn_stage(&mut tasks, "produce", async move {
        crate::produce::run(&s, &d, &crate::produce::Options::default(), t).await
    });

    // The terminal and the preview page.
    if let Some(slack) = &slack {
        let mut messages = slack.subscribe();
        let fake = slack.clone();
        tokio::spawn(async move {
            while let Some(message) = messages.recv().await {
                let dm_user = fake.dm_user(&message.channel);
                println!("{}", terminal_line(&message, dm_user.as_deref()));
            }
        });
        let addr = preview::serve(
            demo.http_addr,
            slack.clone(),
            handles.notify.addr,
            signing_secret.clone(),
            stages.clone(),
        )
        .await
        .map_err(|e| DemoError::Slack(format!("preview page on {}: {e}", demo.http_addr)))?;
        println!("Slack stand-in: every delivered alert prints here; preview page: http://{addr}/");
    }

    // Traffic, and the end.
    let writer = FailureWriter::new(warehouse_url, templates);
    let outcome = drive(&handles, &demo, &options, writer, &shutdown, &mut tasks).await;
    stages.cancel();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Err(e)) = joined {
            tracing::warn!(error = %e, "stage ended with an error");
        }
    }
    if let Some(slack) = &slack {
        let delivered = slack.messages();
        let alerts = delivered.iter().filter(|m| m.alert_id().is_some()).count();
        println!(
            "demo: {alerts} alerts delivered to the Slack stand-in, {} thread replies",
            delivered.len() - alerts
        );
    }
    outcome
}

/// Runs a stage in the demo's task set; its error names the stage.
fn spawn_stage<E: std::fmt::Display>(
    tasks: &mut JoinSet<Result<(), DemoError>>,
    stage: &'static str,
    run: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
) {
    tasks.spawn(async move {
        run.await.map_err(|e| DemoError::Stage {
            stage,
            reason: e.to_string(),
        })
    });
}

/// What the terminal shows for a stored or updated message. A DM is
/// named by its user, the id the alert was addressed to: its `D…`
/// conversation id means nothing to a reader.
fn terminal_line(message: &FakeMessage, dm_user: Option<&str>) -> String {
    let to = dm_user.unwrap_or(&message.channel);
    let alert = message.about_alert().unwrap_or("-");
    let text: String = message.text.chars().take(100).collect();
    if message.edits > 0 {
        format!("slack  {to:<10} {alert}  (updated) {text}")
    } else if message.reply_key().is_some() {
        format!("slack  {to:<10} {alert}  (reply) {text}")
    } else {
        format!("slack  {to:<10} {alert}  {text}")
    }
}

/// Writes the assignment and Slack-user tables' records.
async fn seed_tables(
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

/// Writes connector status changes into the demo warehouse, one after
/// another.
struct FailureWriter {
    url: String,
    templates: Vec<FailureTemplate>,
    written: usize,
    last_micros: i64,
    /// The connector id last written failing, by org, environment and
    /// connector name: what a recovery row recovers.
    failing: HashMap<(String, String, String), String>,
}

impl FailureWriter {
    fn new(url: String, templates: Vec<FailureTemplate>) -> FailureWriter {
        FailureWriter {
            url,
            templates,
            written: 0,
            last_micros: 0,
            failing: HashMap::new(),
        }
    }

    /// The next row and its connector id: a failure's is new, a
    /// recovery's is the connector it recovers (a new one when none
    /// failed: its alert was never posted).
    fn next_row(&mut self) -> (FailureTemplate, String) {
        let (template, fresh_id) = nth_failure(&self.templates, self.written);
        let connector = (
            template.org_id.clone(),
            template.env_id.clone(),
            template.connector_name.clone(),
        );
        let id = if template.is_recovery() {
            self.failing.remove(&connector).unwrap_or(fresh_id)
        } else {
            self.failing.insert(connector, fresh_id.clone());
            fresh_id
        };
        (template, id)
    }

    async fn write(&mut self, count: usize) -> Result<(), DemoError> {
        let mut conn = sqlx::SqliteConnection::connect(&self.url)
            .await
            .map_err(|e| DemoError::Warehouse(e.to_string()))?;
        for _ in 0..count {
            let (template, connector_id) = self.next_row();
            // Strictly increasing times: the job's checkpoint is `failed_at`.
            let now = chrono::Utc::now().timestamp_micros();
            self.last_micros = now.max(self.last_micros + 1);
            let reason = Some(template.failure_reason.as_str()).filter(|r| !r.is_empty());
            sqlx::query(
                "INSERT INTO connector_status_changes VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .bind(&template.org_id)
            .bind(&template.env_id)
            .bind(&connector_id)
            .bind(&template.connector_name)
            .bind(&template.connector_type)
            .bind(&template.old_status)
            .bind(&template.new_status)
            .bind(reason)
            .bind(format_sql_datetime(self.last_micros))
            .execute(&mut conn)
            .await
            .map_err(|e| DemoError::Warehouse(e.to_string()))?;
            self.written += 1;
        }
        Ok(())
    }
}

/// The stage counters the end condition reads.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Progress {
    enrich_in: f64,
    enrich_done: f64,
    enrich_out: f64,
    notify_done: f64,
}

impl Progress {
    fn describe(&self, events: usize) -> String {
        format!(
            "{} of {events} events through enrich, {} of {} alerts answered by Slack",
            self.enrich_done, self.notify_done, self.enrich_out
        )
    }

    fn finished(&self, events: usize) -> bool {
        let events = events as f64;
        self.enrich_in >= events
            && self.enrich_done >= events
            && self.notify_done >= self.enrich_out
    }
}

/// The running stages the demo watches, read from their own registries.
struct Handles {
    enrich: StageHandle,
    notify: StageHandle,
}

fn read_progress(handles: &Handles) -> Progress {
    let enrich = |name| handles.enrich.metric_sum(name);
    let out = enrich("alertsvc_enrich_records_out_total");
    Progress {
        enrich_in: enrich("alertsvc_enrich_records_in_total"),
        enrich_done: out
            + enrich("alertsvc_enrich_records_dropped_total")
            + enrich("alertsvc_enrich_records_dlq_total"),
        enrich_out: out,
        notify_done: handles.notify.metric_sum("alertsvc_slack_posts_total"),
    }
}

/// Writes traffic and decides when the demo ends.
async fn drive(
    handles: &Handles,
    demo: &DemoSettings,
    options: &Options,
    mut writer: FailureWriter,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<Result<(), DemoError>>,
) -> Result<(), DemoError> {
    let deadline = options
        .exit_after
        .map(|limit| (tokio::time::Instant::now() + limit, limit));
    let live = demo.warehouse == DemoWarehouse::Embedded;
    if let (Some(events), true) = (options.events, live) {
        writer.write(events).await?;
    }
    let mut traffic = tokio::time::interval(demo.event_interval);
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = async {
                match deadline {
                    Some((at, _)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                return match (options.events, deadline) {
                    (Some(events), Some((_, limit))) => Err(DemoError::Unfinished {
                        limit,
                        progress: read_progress(handles).describe(events),
                    }),
                    _ => Ok(()),
                };
            }
            Some(joined) = tasks.join_next() => {
                let (stage, reason) = match joined {
                    Ok(Err(DemoError::Stage { stage, reason })) => (stage, reason),
                    Ok(Err(other)) => ("a stage", other.to_string()),
                    Ok(Ok(())) => ("a stage", "it returned early".to_owned()),
                    Err(e) => ("a stage", e.to_string()),
                };
                return Err(DemoError::Stage { stage, reason });
            }
            _ = traffic.tick(), if options.events.is_none() && live => {
                writer.write(1).await?;
            }
            _ = check.tick(), if options.events.is_some() => {
                let events = options.events.unwrap_or_default();
                let progress = read_progress(handles);
                if progress.finished(events) {
                    // Let the last answers reach the terminal.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_csv_parses_and_cycles() {
        let text =
            "org_id,env_id,connector_name,connector_type,old_status,new_status,failure_reason\n\
                    org-a,env-1,c1,S3Sink,Provisioning,Failed,Denied, twice\n\
                    org-b,env-2,c2,S3Sink,Running,Failed,Gone\n";
        let templates = parse_failures(text).unwrap();
        assert_eq!(templates[0].failure_reason, "Denied, twice");
        assert_eq!(templates[1].new_status, "Failed");
        let (third, id) = nth_failure(&templates, 2);
        assert_eq!(third.org_id, "org-a");
        assert_eq!(id, "lcc-demo-0002");
        assert!(parse_failures("a,b\n").is_err());
        let old_header = "org_id,env_id,connector_name,connector_type,old_status,failure_reason\n\
                          org-a,env-1,c1,S3Sink,Provisioning,Denied\n";
        let err = parse_failures(old_header).unwrap_err();
        assert!(err.contains("new_status"), "{err}");
    }

    #[test]
    fn a_recovery_row_recovers_the_connector_last_written_failing() {
        let text =
            "org_id,env_id,connector_name,connector_type,old_status,new_status,failure_reason\n\
                    org-a,env-1,c1,S3Sink,Provisioning,Failed,Denied\n\
                    org-a,env-1,c1,S3Sink,Failed,Running,\n\
                    org-a,env-1,c1,S3Sink,Failed,Running,\n";
        let mut writer = FailureWriter::new(String::new(), parse_failures(text).unwrap());
        let mut ids = Vec::new();
        for _ in 0..5 {
            let (row, id) = writer.next_row();
            ids.push((row.new_status, id));
            writer.written += 1;
        }
        let ids: Vec<(&str, &str)> = ids.iter().map(|(s, i)| (s.as_str(), i.as_str())).collect();
        assert_eq!(
            ids,
            [
                ("Failed", "lcc-demo-0000"),
                ("Running", "lcc-demo-0000"),
                // Nothing failing any more: a connector never alerted.
                ("Running", "lcc-demo-0002"),
                ("Failed", "lcc-demo-0003"),
                ("Running", "lcc-demo-0003"),
            ]
        );
    }

    #[test]
    fn progress_is_finished_when_every_alert_is_answered() {
        let mut p = Progress {
            enrich_in: 6.0,
            enrich_done: 6.0,
            enrich_out: 4.0,
            notify_done: 3.0,
        };
        assert!(!p.finished(6));
        p.notify_done = 4.0;
        assert!(p.finished(6));
        assert!(!p.finished(7));
    }
}
