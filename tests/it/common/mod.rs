//! The one test harness: a broker (mock cluster or external), a fresh set
//! of uniquely named topics per test, configuration overlays on top of the
//! shipped `config/`, record builders, readers, and enrich runners
//! (in-process or as a child process that can be killed).

#![allow(dead_code)]

pub mod bigquery_proxy;
pub mod broker;
pub mod registry;
pub mod slack;
pub mod warehouse;

#[path = "../../testkit/mod.rs"]
pub mod testkit;

pub use testkit::{
    config_dir, connector_event, connector_status_event, eventually, free_port, http_get,
    kill_child, stop_child, wait_ready_at,
};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use alertsvc::avro::{build_codecs, build_key_codecs, Codecs, KeyCodecs};
use alertsvc::config::Settings;
use alertsvc::http::StageHandle;
use alertsvc::messages::SlackMessage;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use broker::Broker;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::var("TEST_LOG").is_ok() {
        alertsvc::telemetry::init(alertsvc::config::LogFormat::Human, "info");
    }
}

/// Topic ids of the shipped configuration, with partition counts for tests.
pub const TOPICS: &[(&str, i32)] = &[
    ("notifications", 3),
    ("onboarding", 2),
    ("csdr_assignment", 2),
    ("slack_users", 2),
    ("slack_messages", 3),
    ("slack_responses", 1),
    ("slack_interactions", 1),
    ("alert_state", 2),
];

/// Deep-merges TOML tables: `overlay` wins.
fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(base), toml::Value::Table(overlay)) => {
            for (k, v) in overlay {
                match base.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

pub struct TestEnv {
    pub broker: Broker,
    pub dir: tempfile::TempDir,
    pub suffix: String,
    pub overlay: PathBuf,
    /// Where the enrich and notify started in-process last listen: they
    /// bind port 0 and report the port they got, so tests never race for one.
    enrich_addr: Mutex<Option<SocketAddr>>,
    notify_addr: Mutex<Option<SocketAddr>>,
    pub settings: Settings,
    pub codecs: Codecs,
    pub key_codecs: KeyCodecs,
    producer: FutureProducer,
}

impl TestEnv {
    /// A fresh environment; `extra` is TOML merged over the test defaults.
    pub async fn new(extra: &str) -> TestEnv {
        Self::with_broker(Broker::start(), extra).await
    }

    pub async fn with_broker(broker: Broker, extra: &str) -> TestEnv {
        Self::with_layers(broker, &[extra]).await
    }

    /// Like [`TestEnv::new`] with several TOML overlays, later ones winning.
    pub async fn with_layers(broker: Broker, layers: &[&str]) -> TestEnv {
        init();
        let suffix = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let bootstrap = broker.bootstrap();
        let mut overlay: toml::Value = toml::from_str(&format!(
            r#"
            [kafka]
            bootstrap_servers = "{bootstrap}"
            [kafka.client]
            "session.timeout.ms" = "6000"
            "heartbeat.interval.ms" = "500"
            "fetch.wait.max.ms" = "100"
            "log_level" = "3"
            [enrich]
            group_id = "enrich-{suffix}"
            transactional_id_prefix = "enrich-{suffix}"
            max_batch_wait = "20ms"
            http_addr = "127.0.0.1:0"
            [notify]
            group_id = "notify-{suffix}"
            http_addr = "127.0.0.1:0"
            shutdown_grace = "5s"
            [notify.retry]
            initial_backoff = "50ms"
            max_backoff = "2s"
            "#
        ))
        .unwrap();
        let defaults = testkit::load_settings(None);
        let mut topics = toml::map::Map::new();
        for (id, partitions) in TOPICS {
            let name = format!("{}-{suffix}", defaults.topics[*id].name);
            broker.create_topic(&name, *partitions).await;
            broker
                .create_topic(&format!("{name}{}", defaults.kafka.dlq_suffix), 1)
                .await;
            let mut table = toml::map::Map::new();
            table.insert("name".into(), toml::Value::String(name));
            topics.insert((*id).into(), toml::Value::Table(table));
        }
        merge(
            &mut overlay,
            toml::Value::Table(toml::map::Map::from_iter([(
                "topics".to_owned(),
                toml::Value::Table(topics),
            )])),
        );
        for layer in layers {
            merge(&mut overlay, toml::from_str(layer).expect("extra TOML"));
        }

        let dir = tempfile::tempdir().expect("tempdir");
        let overlay_path = dir.path().join("test.toml");
        std::fs::write(&overlay_path, toml::to_string(&overlay).unwrap()).unwrap();
        let settings = testkit::load_settings(Some(overlay_path.clone()));
        let codecs = build_codecs(&config_dir(), &settings)
            .unwrap_or_else(|(t, e)| panic!("codec {t}: {e}"));
        let key_codecs = build_key_codecs(&config_dir(), &settings)
            .unwrap_or_else(|(t, e)| panic!("key codec {t}: {e}"));
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "0")
            .create()
            .expect("test producer");
        TestEnv {
            broker,
            dir,
            suffix,
            overlay: overlay_path,
            enrich_addr: Mutex::new(None),
            notify_addr: Mutex::new(None),
            settings,
            codecs,
            key_codecs,
            producer,
        }
    }

    pub fn topic(&self, id: &str) -> String {
        self.settings.topics[id].name.clone()
    }

    pub fn dlq(&self, id: &str) -> String {
        self.settings.dlq_topic(&self.topic(id))
    }

    /// Produces one record; returns its (partition, offset).
    pub async fn produce_raw(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: Option<&[u8]>,
    ) -> (i32, i64) {
        let mut record = FutureRecord::<str, [u8]>::to(topic);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        self.send(record).await
    }

    /// Like [`TestEnv::produce_raw`], with a key of any bytes.
    pub async fn produce_raw_key(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> (i32, i64) {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        self.send(record).await
    }

    /// A key in the topic's key format (`topics.<id>.key_format`).
    pub async fn encode_key(&self, topic_id: &str, key: &Value) -> Vec<u8> {
        self.key_codecs[topic_id]
            .encode(key)
            .await
            .expect("encode key")
    }

    pub async fn decode_key(&self, topic_id: &str, key: &[u8]) -> Value {
        self.key_codecs[topic_id]
            .decode(key)
            .await
            .expect("decode key")
    }

    /// Produces `value` keyed by `key`, both in the topic's formats.
    pub async fn produce_keyed(&self, topic_id: &str, key: &Value, value: &Value) -> (i32, i64) {
        let key = self.encode_key(topic_id, key).await;
        let payload = self.encode(topic_id, value).await;
        self.produce_raw_key(&self.topic(topic_id), Some(&key), Some(&payload))
            .await
    }

    async fn send<K: rdkafka::message::ToBytes + ?Sized>(
        &self,
        record: FutureRecord<'_, K, [u8]>,
    ) -> (i32, i64) {
        let topic = record.topic.to_owned();
        let delivery = self
            .producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
        (delivery.partition, delivery.offset)
    }

    pub async fn encode(&self, topic_id: &str, value: &Value) -> Vec<u8> {
        self.codecs[topic_id].encode(value).await.expect("encode")
    }

    pub async fn produce_event(&self, org: &str, event: &Value) -> (i32, i64) {
        let payload = self.encode("notifications", event).await;
        self.produce_raw(&self.topic("notifications"), Some(org), Some(&payload))
            .await
    }

    /// Like [`TestEnv::produce_event`], with the record's timestamp (its
    /// event time) set to `timestamp_ms`.
    pub async fn produce_event_at(
        &self,
        org: &str,
        event: &Value,
        timestamp_ms: i64,
    ) -> (i32, i64) {
        let payload = self.encode("notifications", event).await;
        let topic = self.topic("notifications");
        self.send(
            FutureRecord::to(&topic)
                .key(org)
                .payload(&payload[..])
                .timestamp(timestamp_ms),
        )
        .await
    }

    pub async fn put_assignment(&self, org: &str, email: &str, org_name: &str) {
        let value = testkit::assignment(org, email, org_name);
        let payload = self.encode("csdr_assignment", &value).await;
        self.produce_raw(&self.topic("csdr_assignment"), Some(org), Some(&payload))
            .await;
    }

    pub async fn delete_assignment(&self, org: &str) {
        self.produce_raw(&self.topic("csdr_assignment"), Some(org), None)
            .await;
    }

    pub async fn put_slack_user(&self, email: &str, user_id: &str) {
        let value = testkit::slack_user(email, user_id);
        let payload = self.encode("slack_users", &value).await;
        self.produce_raw(&self.topic("slack_users"), Some(email), Some(&payload))
            .await;
    }

    /// Publishes an alert's state to `alert-state`, as notify does: keyed by
    /// alert id, `state` holding the `AlertState` fields to set (the rest
    /// take defaults).
    pub async fn put_alert_state(&self, alert_id: &str, state: &Value) {
        let mut value = json!({"alertId": alert_id, "state": "firing", "actorId": null,
            "actorName": null, "at": 1_700_000_000_000i64, "snoozedUntil": null,
            "groupKey": null, "channelId": null, "messageTs": null, "pipeline": ""});
        if let (Some(value), Some(state)) = (value.as_object_mut(), state.as_object()) {
            value.extend(state.clone());
        }
        let payload = self.encode("alert_state", &value).await;
        self.produce_raw(&self.topic("alert_state"), Some(alert_id), Some(&payload))
            .await;
    }

    /// A tombstone for an alert's state on `alert-state`.
    pub async fn delete_alert_state(&self, alert_id: &str) {
        self.produce_raw(&self.topic("alert_state"), Some(alert_id), None)
            .await;
    }

    /// Reads `topic` from the beginning with `read_committed` until
    /// `expected` records arrived, then keeps reading for `settle` to catch
    /// any extra record; panics on timeout.
    pub async fn read(&self, topic: &str, expected: usize, timeout: Duration) -> Vec<Record> {
        let records = self
            .read_until(topic, |records| records.len() >= expected, timeout)
            .await;
        assert!(
            records.len() >= expected,
            "timed out reading {topic}: {} of {expected} records",
            records.len()
        );
        records
    }

    /// Reads `topic` from the beginning until `done` holds (then reads on
    /// for a settle period to catch extra records) or `timeout` passes.
    pub async fn read_until(
        &self,
        topic: &str,
        done: impl Fn(&[Record]) -> bool,
        timeout: Duration,
    ) -> Vec<Record> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap())
            .set("group.id", format!("reader-{}", self.suffix))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "100")
            .create()
            .expect("reader");
        let partitions = {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .expect("metadata");
            metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        drop(tpl);
        let mut records = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        let settle = Duration::from_millis(750);
        loop {
            let satisfied = done(&records);
            let until = if satisfied {
                tokio::time::Instant::now() + settle
            } else {
                deadline
            };
            match tokio::time::timeout_at(until, consumer.recv()).await {
                Ok(Ok(m)) => records.push(Record::from_message(&m)),
                Ok(Err(e)) => panic!("reading {topic}: {e}"),
                Err(_) => break,
            }
        }
        records
    }

    /// Up to `expected` records of topic `topic_id` (as [`TestEnv::read`]),
    /// each with its value decoded by the topic's codec.
    pub async fn read_decoded(
        &self,
        topic_id: &str,
        expected: usize,
        timeout: Duration,
    ) -> Vec<(Record, Value)> {
        let records = self.read(&self.topic(topic_id), expected, timeout).await;
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let value = self.codecs[topic_id]
                .decode(record.payload.as_deref().expect("payload"))
                .await
                .unwrap_or_else(|e| panic!("decode a {topic_id} record: {e}"));
            out.push((record, value));
        }
        out
    }

    /// The Slack messages written so far, decoded.
    pub async fn read_messages(
        &self,
        expected: usize,
        timeout: Duration,
    ) -> Vec<(Record, SlackMessage)> {
        self.read_decoded("slack_messages", expected, timeout)
            .await
            .into_iter()
            .map(|(record, value)| {
                (
                    record,
                    SlackMessage::from_json(value).expect("SlackMessage"),
                )
            })
            .collect()
    }

    pub async fn start_notify(&self) -> RunningStage {
        self.start_notify_with(self.settings.clone()).await
    }

    /// notify in-process with settings of the test's choosing.
    pub async fn start_notify_with(&self, settings: Settings) -> RunningStage {
        let notify = alertsvc::notify::Notify::build(&settings, &config_dir())
            .await
            .expect("notify binds its HTTP endpoints");
        let handle = notify.handle();
        *lock(&self.notify_addr) = Some(handle.addr);
        RunningStage::spawn(handle, |stop| notify.run_until_stopped(stop))
    }

    /// produce in-process on `schedule` (a cron expression), its endpoints
    /// bound where its settings say (port 0 in [`warehouse::produce_toml`]).
    pub async fn start_produce_scheduled(&self, schedule: &str) -> RunningStage {
        let settings = testkit::load_settings(Some(self.overlay.clone()));
        let options = alertsvc::produce::Options {
            schedule: Some(schedule.to_owned()),
            ..Default::default()
        };
        let produce = alertsvc::produce::Produce::build(&settings, &config_dir(), &options)
            .await
            .expect("produce builds");
        let handle = produce
            .handle()
            .expect("a scheduled produce serves endpoints");
        RunningStage::spawn(handle, |stop| produce.run_until_stopped(stop))
    }

    /// The address of the notify started last, in-process or as a child.
    pub fn notify_addr(&self) -> SocketAddr {
        lock(&self.notify_addr).expect("notify was started")
    }

    /// The address of the enrich started last, in-process or as a child.
    pub fn enrich_addr(&self) -> SocketAddr {
        lock(&self.enrich_addr).expect("enrich was started")
    }

    /// `alertsvc notify` as a child process.
    pub fn spawn_notify_process(&self, log_name: &str) -> Child {
        self.spawn_process("notify", log_name)
    }

    /// One of several `alertsvc notify` replicas: its own instance id
    /// (kept across its restarts, as a pod's name is) and HTTP port.
    pub fn spawn_notify_replica(&self, instance: &str, log_name: &str) -> Child {
        let mut command = self.process_command("notify", log_name, instance);
        command.env("ALERTSVC__NOTIFY__HTTP_ADDR", "127.0.0.1:0");
        command.spawn().expect("spawn alertsvc notify")
    }

    /// `alertsvc <stage>` (enrich or notify) as a child process (killable
    /// like a crashed pod), its HTTP endpoints where [`TestEnv::enrich_addr`]
    /// or [`TestEnv::notify_addr`] say: it binds port 0 and the address is
    /// read from its log before this returns.
    fn spawn_process(&self, stage: &str, log_name: &str) -> Child {
        let log = self.dir.path().join(log_name);
        let from = testkit::file_len(&log);
        let mut child = self
            .process_command(stage, log_name, "crash-test")
            .env(
                format!("ALERTSVC__{}__HTTP_ADDR", stage.to_uppercase()),
                "127.0.0.1:0",
            )
            .spawn()
            .expect("spawn alertsvc");
        let addr = testkit::address_after(&log, from, alertsvc::stage::SERVING_ON, &mut child);
        let slot = match stage {
            "enrich" => &self.enrich_addr,
            _ => &self.notify_addr,
        };
        *lock(slot) = Some(addr);
        child
    }

    fn process_command(&self, stage: &str, log_name: &str, instance: &str) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log_name))
            .expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_alertsvc"));
        command
            .arg("--config-dir")
            .arg(config_dir())
            .arg("--config")
            .arg(&self.overlay)
            .arg(stage)
            .env("ALERTSVC_INSTANCE_ID", instance)
            .env("RUST_LOG", "warn,alertsvc=info")
            .stdout(Stdio::null())
            .stderr(log);
        command
    }

    /// Sets one key of the configuration overlay the child processes read
    /// (`path` as TOML table names, e.g. `["produce", "lease"]`), as an
    /// operator edits config between runs.
    pub fn set_overlay_key(&self, path: &[&str], value: toml::Value) {
        let text = std::fs::read_to_string(&self.overlay).expect("read overlay");
        let mut overlay: toml::Value = toml::from_str(&text).expect("overlay TOML");
        let (last, tables) = path.split_last().expect("a key path");
        let mut table = overlay.as_table_mut().expect("overlay table");
        for name in tables {
            table = table
                .entry(*name)
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .expect("a table on the path");
        }
        table.insert((*last).to_owned(), value);
        std::fs::write(&self.overlay, toml::to_string(&overlay).expect("TOML")).expect("write");
    }

    /// The log a child process wrote (for a failing test's message).
    pub fn process_log(&self, log_name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(log_name)).unwrap_or_default()
    }

    /// `alertsvc produce ARGS` as a child process, ready to spawn or run.
    pub fn produce_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_alertsvc"));
        command
            .arg("--config-dir")
            .arg(config_dir())
            .arg("--config")
            .arg(&self.overlay)
            .arg("produce")
            .args(args)
            .env("RUST_LOG", "warn,alertsvc=info")
            .stdin(Stdio::null());
        command
    }

    /// Runs `alertsvc produce ARGS` to its end: (exit code, stdout, stderr).
    pub async fn run_produce(&self, args: &[&str]) -> (i32, String, String) {
        let mut command = self.produce_command(args);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("join")
            .expect("run alertsvc produce");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Every record of a topic, decoded with the topic's codec: (key, value).
    pub async fn read_events(&self, topic_id: &str, expected: usize) -> Vec<(String, Value)> {
        self.read_decoded(topic_id, expected, Duration::from_secs(30))
            .await
            .into_iter()
            .map(|(record, value)| (record.key.unwrap_or_default(), value))
            .collect()
    }

    /// Writes a `SlackMessage` with record headers.
    pub async fn produce_message_with_headers(
        &self,
        message: &SlackMessage,
        headers: &[(&str, &str)],
    ) -> (i32, i64) {
        let payload = self.codecs["slack_messages"]
            .encode_record(message, 0)
            .await
            .expect("encode");
        let topic = self.topic("slack_messages");
        let mut owned = rdkafka::message::OwnedHeaders::new();
        for (key, value) in headers {
            owned = owned.insert(rdkafka::message::Header {
                key,
                value: Some(*value),
            });
        }
        let record = FutureRecord::<str, [u8]>::to(&topic)
            .key(&message.channel_id)
            .payload(&payload)
            .headers(owned);
        self.send(record).await
    }

    /// Writes a `SlackMessage` to `slack-messages`, keyed by its channel.
    pub async fn produce_message(&self, message: &SlackMessage) -> (i32, i64) {
        let payload = self.codecs["slack_messages"]
            .encode_record(message, 0)
            .await
            .expect("encode");
        self.produce_raw(
            &self.topic("slack_messages"),
            Some(&message.channel_id),
            Some(&payload),
        )
        .await
    }

    /// The `SlackResponse`s written so far, decoded.
    pub async fn read_responses(
        &self,
        expected: usize,
        timeout: Duration,
    ) -> Vec<alertsvc::messages::SlackResponse> {
        self.read_decoded("slack_responses", expected, timeout)
            .await
            .into_iter()
            .map(|(_, value)| serde_json::from_value(value).expect("SlackResponse"))
            .collect()
    }

    pub async fn notify_metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.notify_addr()))
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    pub async fn start_enrich(&self) -> RunningStage {
        let enrich = alertsvc::enrich::Enrich::build(&self.settings, &config_dir())
            .await
            .expect("enrich binds its HTTP endpoints");
        let handle = enrich.handle();
        *lock(&self.enrich_addr) = Some(handle.addr);
        RunningStage::spawn(handle, |stop| enrich.run_until_stopped(stop))
    }

    /// `alertsvc enrich` as a child process (killable like a crashed pod).
    pub fn spawn_enrich_process(&self, log_name: &str) -> Child {
        self.spawn_process("enrich", log_name)
    }

    /// Offsets committed by `group` for every partition of `topic`.
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap())
            .set("group.id", group)
            .create()
            .expect("offsets consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        let offsets = committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            })
            .collect();
        drop(committed);
        offsets
    }

    /// End offsets of every partition of `topic`.
    pub fn end_offsets(&self, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap())
            .create()
            .expect("watermarks consumer");
        (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .collect()
    }

    pub async fn metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.enrich_addr()))
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// Waits until the metric `series` (name with labels, as printed)
    /// reaches at least `min`.
    pub async fn wait_metric(&self, series: &str, min: f64, timeout: Duration) -> f64 {
        eventually(timeout, &format!("metric {series} ≥ {min}"), || async {
            metric_value(&self.metrics().await, series).filter(|v| *v >= min)
        })
        .await
    }

    pub async fn wait_ready(&self, timeout: Duration) {
        wait_ready_at(self.enrich_addr(), timeout).await
    }
}

pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct RunningStage {
    pub token: CancellationToken,
    pub handle: JoinHandle<Result<(), String>>,
    /// The bound address, health and metrics registry of the stage.
    pub stage: StageHandle,
    pub http_addr: SocketAddr,
}

impl RunningStage {
    fn spawn<E, F>(
        stage_handle: StageHandle,
        stage: impl FnOnce(CancellationToken) -> F,
    ) -> RunningStage
    where
        E: std::fmt::Display + 'static,
        F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    {
        let token = CancellationToken::new();
        let running = stage(token.clone());
        let handle = tokio::spawn(async move { running.await.map_err(|e| format!("{e:#}")) });
        RunningStage {
            token,
            handle,
            http_addr: stage_handle.addr,
            stage: stage_handle,
        }
    }

    pub async fn stop(self) -> Result<(), String> {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the stage stops within 30 s")
            .expect("the stage's task")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// The key as text (lossy); `key_bytes` holds it as written.
    pub key: Option<String>,
    pub key_bytes: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
    /// The record's timestamp in epoch milliseconds, if it has one.
    pub timestamp: Option<i64>,
}

impl Record {
    fn from_message<M: Message>(m: &M) -> Record {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            key_bytes: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp: m.timestamp().to_millis(),
        }
    }
}

/// The alert ids of `messages`, sorted.
pub fn sorted_alert_ids(messages: &[(Record, alertsvc::messages::SlackMessage)]) -> Vec<String> {
    let mut ids: Vec<String> = messages.iter().map(|(_, m)| m.alert_id.clone()).collect();
    ids.sort();
    ids
}
