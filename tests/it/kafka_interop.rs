//! Records every Kafka client can read, through a real broker (issue 10):
//! an independent client — Python's confluent-kafka with its own
//! librdkafka, values encoded by fastavro, by Confluent's own
//! `AvroSerializer`/`AvroDeserializer` against the test's Schema Registry,
//! or by `json` — writes every topic alertsvc reads and reads every topic
//! alertsvc writes, in each wire format.
//!
//! One scenario per format, every stage running:
//! - Python writes the tables (upserts, a tombstone, non-ASCII keys and
//!   values), events (one alerting, one filtered, one dead-lettered) and
//!   two ready Slack messages; produce writes events from a SQLite
//!   warehouse; enrich joins everything, notify posts to the fake Slack,
//!   a signed click is recorded.
//! - alertsvc must read Python's bytes as the values Python was given, make
//!   exactly the alerts its own pipeline makes of those values, and post
//!   exactly the messages on `slack-messages`.
//! - Python then reads every topic alertsvc wrote (`read_committed`) and
//!   must decode each record to exactly what alertsvc's codec decodes, with
//!   the same key, headers and timestamp.
//!
//! The Python side is one process per direction over one JSON request
//! (`kafka_interop/kafka_interop.py`), from the virtualenv that
//! `scripts/install-test-deps.sh` makes. Without it the tests fail.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use alertsvc::enrich::pipeline::{Pipeline, Source, TableLookup, Verdict};
use alertsvc::messages::{DeliveryOutcome, SlackInteraction, SlackMessage};
use alertsvc::slack::fake::{dm_channel, FakeMessage, FakeSlack};
use alertsvc::slack::is_user_id;
use alertsvc::slack::signing::sign;
use serde_json::{json, Value};

use crate::common::registry::FakeRegistry;
use crate::common::slack::{
    fake_slack, ledger_url, message, notify_toml, now_ms, Backend, SIGNING_SECRET,
};
use crate::common::warehouse::{expected_event, failure, produce_toml, Failure, Warehouse};
use crate::common::{config_dir, connector_event, eventually, http_get, Broker, Record, TestEnv};
use crate::produce_sources::by_event_id;

const INSTALL: &str = "run scripts/install-test-deps.sh";
/// The virtualenv with confluent-kafka and fastavro; the install script
/// makes it there too.
const VENV_ENV: &str = "ALERTSVC_KAFKA_INTEROP_VENV";
const PIPELINE: &str = "connector-provisioning-failure";
const WAIT: Duration = Duration::from_secs(30);
const CLICKER: &str = "U0ACK";
/// Slack still sends its deprecated verification token with a click.
const VERIFICATION_TOKEN: &str = "deprecated-verification-token";
/// Python's org: a non-ASCII key, in the alert id and Slack's metadata.
const PY_ORG: &str = "org-zürich";

/// The topics the scenario uses, all in the format under test.
const TOPIC_IDS: &[&str] = &[
    "notifications",
    "csdr_assignment",
    "slack_users",
    "slack_messages",
    "slack_responses",
    "slack_interactions",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    SingleObject,
    Json,
    Confluent,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::SingleObject => "avro-single-object",
            Format::Json => "json",
            Format::Confluent => "avro-confluent",
        }
    }

    /// Whether `bytes` carry this format's framing.
    fn frames(self, bytes: &[u8]) -> bool {
        match self {
            Format::SingleObject => bytes.starts_with(&[0xc3, 0x01]),
            Format::Confluent => bytes.first() == Some(&0),
            Format::Json => bytes.first() == Some(&b'{'),
        }
    }
}

fn python() -> PathBuf {
    let venv = std::env::var(VENV_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/alertsvc/kafka-interop-venv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no Python with confluent-kafka at {}: {INSTALL} (or set {VENV_ENV})",
        python.display()
    );
    python
}

/// Runs the Python client over one request; its JSON answer.
async fn run_python(request: &Value) -> Value {
    let python = python();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/kafka_interop/kafka_interop.py");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("request.json");
    std::fs::write(&path, serde_json::to_vec(request).expect("request")).expect("write request");
    let output = tokio::task::spawn_blocking({
        let python = python.clone();
        move || Command::new(python).arg(script).arg(path).output()
    })
    .await
    .expect("join")
    .unwrap_or_else(|e| panic!("{}: {e} ({INSTALL})", python.display()));
    assert!(
        output.status.success(),
        "the Python client failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "the Python client printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex from the Python client"))
        .collect()
}

fn assignment(org: &str, name: &str, email: &str, updated_at: i64) -> Value {
    json!({"org_id": org, "org_name": name, "csdr_name": format!("CSDR of {name}"),
           "csdr_email": email, "account_name": null, "updated_at": updated_at})
}

fn slack_user(email: &str, id: &str, display: Option<&str>) -> Value {
    json!({"email": email, "slack_user_id": id, "display_name": display,
           "team_id": display.map(|_| "T1")})
}

/// One record the Python client writes (`value` `None`: a tombstone), and
/// where it landed.
struct Write {
    topic_id: &'static str,
    key: String,
    value: Option<Value>,
    partition: i32,
    offset: i64,
    bytes: Option<String>,
}

fn write(topic_id: &'static str, key: &str, value: Option<Value>) -> Write {
    Write {
        topic_id,
        key: key.to_owned(),
        value,
        partition: -1,
        offset: -1,
        bytes: None,
    }
}

impl Write {
    fn is(&self, topic_id: &str, record: &Record) -> bool {
        self.topic_id == topic_id
            && self.partition == record.partition
            && self.offset == record.offset
    }
}

/// What Python writes, in order. Tables: org-1 and org-2 match produce's
/// rows (org-1's CSDR has a Slack user, org-2's does not: fallback
/// channel), org-3's assignment is deleted again by a tombstone (its event
/// misses the inner join). Events: one alert, one filtered out, one whose
/// `data` is not JSON (dead-lettered). Two messages go straight to notify.
fn python_writes() -> (Vec<Write>, Vec<SlackMessage>) {
    let mut bad = connector_event("py-bad", "env-py", "lcc-py-3", "Provisioning");
    bad["data"] = json!("{not json");
    let messages = vec![
        message("py-msg-1", "C0PY", "From Python ✅ to a channel"),
        message("py-msg-2", "U0PY", "From Python to a DM <@U0PY> & co"),
    ];
    let mut writes = vec![
        write(
            "csdr_assignment",
            "org-1",
            Some(assignment("org-1", "Zürich Ärzte AG", "ada@example.com", 1)),
        ),
        write(
            "csdr_assignment",
            "org-2",
            Some(assignment("org-2", "Bobcorp", "bob@example.com", 2)),
        ),
        write(
            "csdr_assignment",
            "org-3",
            Some(assignment("org-3", "Gone Ltd", "carol@example.com", 3)),
        ),
        write("csdr_assignment", "org-3", None),
        // Slack's markup characters in data: escaped by the template.
        write(
            "csdr_assignment",
            PY_ORG,
            Some(assignment(PY_ORG, "Söhne & <Töchter>", "py@example.com", 4)),
        ),
        write(
            "slack_users",
            "ada@example.com",
            Some(slack_user("ada@example.com", "U0ADA", Some("Ada"))),
        ),
        write(
            "slack_users",
            "py@example.com",
            Some(slack_user("py@example.com", "U0PY", None)),
        ),
        write(
            "notifications",
            PY_ORG,
            Some(connector_event(
                "py-e1",
                "env-py",
                "lcc-py-1",
                "Provisioning",
            )),
        ),
        write(
            "notifications",
            PY_ORG,
            Some(connector_event("py-e2", "env-py", "lcc-py-2", "Running")),
        ),
        write("notifications", PY_ORG, Some(bad)),
    ];
    for m in &messages {
        writes.push(write(
            "slack_messages",
            &m.channel_id,
            Some(alertsvc::messages::to_json(m)),
        ));
    }
    (writes, messages)
}

/// The alerts the scenario must make, worked out by hand: alert id →
/// channel, in alert id order.
const ALERTS: &[(&str, &str)] = &[
    ("org-1-env-1-lcc-00001-connector-failure", "U0ADA"),
    ("org-2-env-2-lcc-00002-connector-failure", "C0ALERTS"),
    ("org-zürich-env-py-lcc-py-1-connector-failure", "U0PY"),
];

/// The tables as Python left them: (table, key) → value.
#[derive(Default)]
struct Tables(BTreeMap<(String, String), Arc<Value>>);

impl TableLookup for Tables {
    fn lookup(&self, table: &str, key: &str) -> Option<Arc<Value>> {
        self.0.get(&(table.to_owned(), key.to_owned())).cloned()
    }
}

fn formats_toml(format: Format, registry: Option<&FakeRegistry>) -> String {
    let mut toml = String::new();
    if let Some(registry) = registry {
        toml.push_str(&format!("[schema_registry]\nurl = \"{}\"\n", registry.url));
    }
    for id in TOPIC_IDS {
        toml.push_str(&format!("[topics.{id}]\nformat = \"{}\"\n", format.name()));
    }
    toml
}

/// Every record of the scenario's topics, read after the stages stopped.
struct Topics {
    events: Vec<Record>,
    assignments: Vec<Record>,
    users: Vec<Record>,
    messages: Vec<Record>,
    responses: Vec<Record>,
    interactions: Vec<Record>,
    dead: Vec<Record>,
}

impl Topics {
    fn of(&self, topic_id: &str) -> &[Record] {
        match topic_id {
            "notifications" => &self.events,
            "csdr_assignment" => &self.assignments,
            "slack_users" => &self.users,
            "slack_messages" => &self.messages,
            "slack_responses" => &self.responses,
            "slack_interactions" => &self.interactions,
            other => panic!("the scenario has no topic {other}"),
        }
    }
}

struct Scenario {
    format: Format,
    registry: Option<FakeRegistry>,
    slack: FakeSlack,
    warehouse: Warehouse,
    rows: Vec<Failure>,
    env: TestEnv,
    writes: Vec<Write>,
    py_messages: Vec<SlackMessage>,
    /// Holds the warehouse, ledger and produce state.
    _dir: tempfile::TempDir,
}

impl Scenario {
    async fn new(format: Format) -> Scenario {
        let registry = match format {
            Format::Confluent => Some(FakeRegistry::start().await),
            _ => None,
        };
        let slack = fake_slack(&["C0ALERTS", "C0PY", "U0ADA", "U0PY"], None).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = ledger_url(Backend::Sqlite, dir.path()).await;
        let warehouse = Warehouse::sqlite(dir.path()).await;
        // org-0 Running (filtered), org-1 and org-2 alert, org-3
        // (tombstoned) and org-4 miss the assignment join.
        let rows: Vec<Failure> = (0..5).map(failure).collect();
        warehouse.insert(&rows).await;
        let env = TestEnv::with_layers(
            Broker::start(),
            &[
                &notify_toml(&slack, &ledger, 50),
                &produce_toml(dir.path(), &warehouse, "", ""),
                &formats_toml(format, registry.as_ref()),
            ],
        )
        .await;
        let (writes, py_messages) = python_writes();
        Scenario {
            format,
            registry,
            slack,
            warehouse,
            rows,
            env,
            writes,
            py_messages,
            _dir: dir,
        }
    }

    /// Format and schema of a topic, as the Python client is told them.
    fn codec_spec(&self, topic_id: &str) -> Value {
        let schema = self.env.settings.topics[topic_id]
            .schema
            .as_ref()
            .map(|s| config_dir().join(s).display().to_string());
        json!({"format": self.format.name(), "schema": schema})
    }

    async fn python(&self, mut request: Value) -> Value {
        request["bootstrap"] = json!(self.env.broker.bootstrap());
        request["registry"] = json!(self.registry.as_ref().map(|r| r.url.clone()));
        run_python(&request).await
    }

    /// A record as alertsvc reads it, in the Python client's terms.
    async fn as_alertsvc_reads(&self, topic_id: &str, record: &Record) -> Value {
        json!({
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
            "key": record.key,
            "headers": record.headers,
            "bytes": record.payload.as_deref().map(hex),
            "value": self.decode(topic_id, record).await,
        })
    }

    async fn decode(&self, topic_id: &str, record: &Record) -> Value {
        let Some(payload) = &record.payload else {
            return Value::Null;
        };
        self.env.codecs[topic_id]
            .decode(payload)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "alertsvc cannot decode {topic_id} {}/{}: {e}",
                    record.partition, record.offset
                )
            })
    }

    /// Python writes every topic alertsvc reads; alertsvc's codecs must
    /// read each record as the value Python was given. Checked before any
    /// stage runs: later a mismatch would only show as missing alerts.
    async fn python_writes(&mut self, now: i64) {
        let produce: Vec<Value> = self
            .writes
            .iter()
            .map(|w| {
                let mut item = self.codec_spec(w.topic_id);
                item["topic"] = json!(self.env.topic(w.topic_id));
                item["key"] = json!(w.key);
                item["value"] = w.value.clone().unwrap_or(Value::Null);
                item["timestamp"] = json!(now);
                item
            })
            .collect();
        let answer = self.python(json!({"produce": produce})).await;
        let produced = answer["produced"].as_array().expect("produced");
        assert_eq!(produced.len(), self.writes.len());
        for (w, p) in self.writes.iter_mut().zip(produced) {
            let number = |k: &str| p[k].as_i64().unwrap_or_else(|| panic!("{k} in {p}"));
            w.partition = i32::try_from(number("partition")).expect("partition");
            w.offset = number("offset");
            w.bytes = p["bytes"].as_str().map(str::to_owned);
        }
        for w in &self.writes {
            let (Some(value), Some(bytes)) = (&w.value, &w.bytes) else {
                assert_eq!(w.value, None, "Python wrote no bytes for a value");
                continue;
            };
            let bytes = unhex(bytes);
            let (id, format) = (w.topic_id, self.format.name());
            assert!(
                self.format.frames(&bytes),
                "Python's {id} record is not {format}"
            );
            let decoded = self.env.codecs[id]
                .decode(&bytes)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "alertsvc cannot read Python's {id} record {}: {e}",
                        hex(&bytes)
                    )
                });
            assert_eq!(&decoded, value, "alertsvc decodes Python's {id} record");
        }
    }

    /// produce, enrich and notify run until every message is posted; a
    /// signed click on the first alert is recorded and acted on. Returns
    /// the posts as they were before the click changed one.
    async fn run_stages(&self) -> Vec<FakeMessage> {
        let env = &self.env;
        let (code, _, stderr) = env.run_produce(&["--once"]).await;
        assert_eq!(code, 0, "produce --once failed: {stderr}");
        let enrich = env.start_enrich().await;
        let notify = env.start_notify().await;
        let total = ALERTS.len() + self.py_messages.len();
        env.read_responses(total, WAIT).await;
        let posts = self.slack.messages();
        assert_eq!(posts.len(), total, "one post per message: {posts:?}");
        let clicked = ALERTS[0].0;
        let post = posts
            .iter()
            .find(|p| p.alert_id() == Some(clicked))
            .unwrap_or_else(|| panic!("{clicked} was not posted: {posts:?}"));
        click(env, post, clicked).await;
        eventually(WAIT, "the clicked message updated", || async {
            self.slack
                .messages()
                .iter()
                .any(|p| p.alert_id() == Some(clicked) && p.edits == 1)
                .then_some(())
        })
        .await;
        // Stopped, so that both readers see the same records.
        notify.stop().await.expect("notify stops cleanly");
        enrich.stop().await.expect("enrich stops cleanly");
        posts
    }

    async fn read_topics(&self) -> Topics {
        let env = &self.env;
        let python = |id: &str| self.writes.iter().filter(|w| w.topic_id == id).count();
        let read = |id: &str, count: usize| {
            let topic = env.topic(id);
            async move { env.read(&topic, count, WAIT).await }
        };
        let messages = ALERTS.len() + self.py_messages.len();
        Topics {
            events: read("notifications", self.rows.len() + python("notifications")).await,
            assignments: read("csdr_assignment", python("csdr_assignment")).await,
            users: read("slack_users", python("slack_users")).await,
            messages: read("slack_messages", messages).await,
            responses: read("slack_responses", messages).await,
            interactions: read("slack_interactions", 1).await,
            dead: env.read(&env.dlq("notifications"), 1, WAIT).await,
        }
    }

    /// Python's records on the topics, byte for byte where Python said they
    /// landed; the tables as they are after them.
    async fn check_python_records(&self, topics: &Topics) -> Tables {
        let mut tables = Tables::default();
        for w in &self.writes {
            let what = format!("{} (Python's {})", w.topic_id, w.key);
            let record = topics
                .of(w.topic_id)
                .iter()
                .find(|r| w.is(w.topic_id, r))
                .unwrap_or_else(|| panic!("{what}: no record at {}/{}", w.partition, w.offset));
            assert_eq!(record.key.as_deref(), Some(w.key.as_str()), "{what}: key");
            assert_eq!(
                record.payload.as_deref().map(hex),
                w.bytes,
                "{what}: the bytes Python wrote"
            );
            if matches!(w.topic_id, "csdr_assignment" | "slack_users") {
                let slot = (w.topic_id.to_owned(), w.key.clone());
                match &w.value {
                    Some(v) => tables.0.insert(slot, Arc::new(v.clone())),
                    None => tables.0.remove(&slot),
                };
            }
        }
        tables
    }

    fn is_python(&self, topic_id: &str, record: &Record) -> bool {
        self.writes.iter().any(|w| w.is(topic_id, record))
    }

    /// produce's events are the shipped job's mapping of the rows.
    async fn check_produced_events(&self, topics: &Topics) {
        let mut events = Vec::new();
        for record in &topics.events {
            if !self.is_python("notifications", record) {
                let value = self.decode("notifications", record).await;
                events.push((record.key.clone().unwrap_or_default(), value));
            }
        }
        let expected: BTreeMap<String, (String, Value)> = self
            .rows
            .iter()
            .map(|row| {
                let (key, event) = expected_event(&self.warehouse, row);
                let id = event["eventId"].as_str().unwrap_or_default().to_owned();
                (id, (key, event))
            })
            .collect();
        assert_eq!(by_event_id(events), expected, "produce's events");
    }

    /// enrich made exactly what its pipeline makes of the values Python
    /// and produce were given, keyed by channel; the ones worked out by
    /// hand; and dead-lettered the bad event with Python's bytes.
    async fn check_alerts(&self, topics: &Topics, tables: &Tables) -> Vec<SlackMessage> {
        let env = &self.env;
        let settings = &env
            .settings
            .enrich
            .as_ref()
            .expect("enrich settings")
            .pipelines[PIPELINE];
        let pipeline = Pipeline::compile(PIPELINE, settings, &config_dir()).expect("pipeline");
        let topic = env.topic("notifications");
        let mut expected = Vec::new();
        let mut rejected = Vec::new();
        for record in &topics.events {
            // The topic's keys are strings (key_format "string").
            let key = record.key.clone().map(Value::String);
            let source = Source {
                topic: &topic,
                partition: record.partition,
                offset: record.offset,
                key: key.as_ref(),
                timestamp_ms: record.timestamp.expect("events have timestamps"),
            };
            let event = self.decode("notifications", record).await;
            match pipeline.apply(&source, &event, tables) {
                Verdict::Emit(m) => expected.push(m),
                Verdict::Reject(e) => rejected.push((record.partition, record.offset, e)),
                Verdict::Filtered | Verdict::Suppressed | Verdict::JoinMiss { .. } => {}
            }
        }
        expected.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        let mut enriched = Vec::new();
        for record in &topics.messages {
            if self.is_python("slack_messages", record) {
                continue;
            }
            let value = self.decode("slack_messages", record).await;
            let m = SlackMessage::from_json(value).expect("a SlackMessage");
            assert_eq!(
                record.key.as_deref(),
                Some(m.channel_id.as_str()),
                "keyed by channel"
            );
            enriched.push(m);
        }
        enriched.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        assert_eq!(enriched, expected, "enrich's alerts");
        let got: Vec<(&str, &str)> = enriched
            .iter()
            .map(|m| (m.alert_id.as_str(), m.channel_id.as_str()))
            .collect();
        assert_eq!(got, ALERTS);
        let blocks = |i: usize| enriched[i].blocks.as_str();
        assert!(
            blocks(0).contains("*Organization*\\nZürich Ärzte AG (`org-1`)"),
            "{}",
            blocks(0)
        );
        assert!(
            blocks(2).contains("*Organization*\\nSöhne &amp; &lt;Töchter&gt; (`org-zürich`)"),
            "{}",
            blocks(2)
        );

        let bad = self
            .writes
            .iter()
            .find(|w| w.value.as_ref().is_some_and(|v| v["eventId"] == "py-bad"))
            .expect("the bad event");
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!((rejected[0].0, rejected[0].1), (bad.partition, bad.offset));
        assert_eq!(topics.dead.len(), 1, "one dead letter");
        let letter = &topics.dead[0];
        assert_eq!(letter.key.as_deref(), Some(PY_ORG));
        assert_eq!(
            letter.payload.as_deref().map(hex),
            bad.bytes,
            "the dead letter keeps Python's bytes"
        );
        let headers = &letter.headers;
        let expected_headers = [
            ("alertsvc.dlq.stage", "decode".to_owned()),
            ("alertsvc.dlq.source.topic", topic.clone()),
            ("alertsvc.dlq.source.partition", bad.partition.to_string()),
            ("alertsvc.dlq.source.offset", bad.offset.to_string()),
        ];
        for (name, value) in expected_headers {
            assert_eq!(headers.get(name), Some(&value), "{name} in {headers:?}");
        }
        assert!(
            headers["alertsvc.dlq.reason"].contains("field \"data\" is not a JSON document"),
            "{headers:?}"
        );
        enriched
    }

    /// Every message on `slack-messages` posted once, exactly as written,
    /// answered `posted` with its ts; the click recorded.
    async fn check_delivery(
        &self,
        topics: &Topics,
        enriched: &[SlackMessage],
        posts: &[FakeMessage],
    ) {
        let mut expected: Vec<(String, String, String, Value)> = enriched
            .iter()
            .chain(&self.py_messages)
            .map(|m| {
                let channel = if is_user_id(&m.channel_id) {
                    dm_channel(&m.channel_id)
                } else {
                    m.channel_id.clone()
                };
                let blocks = serde_json::from_str(&m.blocks).expect("blocks");
                (m.alert_id.clone(), channel, m.text.clone(), blocks)
            })
            .collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        let mut got: Vec<(String, String, String, Value)> = posts
            .iter()
            .map(|p| {
                let alert = p.alert_id().unwrap_or_default().to_owned();
                (alert, p.channel.clone(), p.text.clone(), p.blocks.clone())
            })
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, expected, "the posts");

        let mut answered = Vec::new();
        for record in &topics.responses {
            let value = self.decode("slack_responses", record).await;
            let r: alertsvc::messages::SlackResponse =
                serde_json::from_value(value).expect("a SlackResponse");
            assert!(r.ok && r.outcome == DeliveryOutcome::Posted, "{r:?}");
            answered.push((r.alert_id, r.ts));
        }
        answered.sort();
        let mut posted: Vec<(String, Option<String>)> = posts
            .iter()
            .map(|p| {
                (
                    p.alert_id().unwrap_or_default().to_owned(),
                    Some(p.ts.clone()),
                )
            })
            .collect();
        posted.sort();
        assert_eq!(answered, posted, "one response per post, with its ts");

        assert_eq!(topics.interactions.len(), 1);
        let value = self
            .decode("slack_interactions", &topics.interactions[0])
            .await;
        let interaction: SlackInteraction = serde_json::from_value(value).expect("an interaction");
        let clicked = posts
            .iter()
            .find(|p| p.alert_id() == Some(ALERTS[0].0))
            .expect("the clicked post");
        assert_eq!(
            (
                interaction.alert_id.as_str(),
                interaction.action_id.as_str(),
                interaction.user_id.as_str(),
                interaction.message_ts.as_deref()
            ),
            (
                ALERTS[0].0,
                "alertsvc_acknowledge",
                CLICKER,
                Some(clicked.ts.as_str())
            )
        );
        assert!(
            !interaction.payload.contains(VERIFICATION_TOKEN),
            "the stored payload drops Slack's token: {}",
            interaction.payload
        );
    }

    /// Python's serializer registered the inputs' subjects, alertsvc its
    /// outputs'; on `slack-messages`, which both write, one version.
    async fn check_subjects(&self) {
        let Some(registry) = &self.registry else {
            return;
        };
        let mut subjects: Vec<String> = TOPIC_IDS
            .iter()
            .map(|id| format!("{}-value", self.env.topic(id)))
            .collect();
        subjects.sort();
        assert_eq!(registry.subjects(), subjects);
        let latest = format!(
            "{}/subjects/{}-value/versions/latest",
            registry.url,
            self.env.topic("slack_messages")
        );
        let (status, body) = http_get(&latest).await.expect("registry answers");
        let version: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!((status, &version["version"]), (200, &json!(1)), "{body}");
    }

    /// Python reads every topic alertsvc writes (`read_committed`) and
    /// decodes every record exactly as alertsvc does, dead letters with
    /// their source topic's format.
    async fn python_reads(&self, topics: &Topics) {
        let env = &self.env;
        let mut consume = Vec::new();
        let mut ours: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let written = [
            ("notifications", env.topic("notifications"), &topics.events),
            (
                "slack_messages",
                env.topic("slack_messages"),
                &topics.messages,
            ),
            (
                "slack_responses",
                env.topic("slack_responses"),
                &topics.responses,
            ),
            (
                "slack_interactions",
                env.topic("slack_interactions"),
                &topics.interactions,
            ),
            ("notifications", env.dlq("notifications"), &topics.dead),
        ];
        for (id, topic, records) in written {
            let mut item = self.codec_spec(id);
            item["topic"] = json!(topic);
            item["context_topic"] = json!(env.topic(id));
            item["count"] = json!(records.len());
            consume.push(item);
            let mut decoded = Vec::new();
            for record in records {
                decoded.push(self.as_alertsvc_reads(id, record).await);
            }
            decoded.sort_by_key(|r| (r["partition"].as_i64(), r["offset"].as_i64()));
            ours.insert(topic, decoded);
        }
        let answer = self.python(json!({"consume": consume})).await;
        for (topic, ours) in ours {
            let theirs = answer["consumed"][&topic]
                .as_array()
                .unwrap_or_else(|| panic!("Python read nothing of {topic}: {answer}"));
            assert_eq!(theirs.len(), ours.len(), "records of {topic} Python read");
            for (theirs, ours) in theirs.iter().zip(&ours) {
                assert_eq!(
                    theirs, ours,
                    "{topic}: Python's record (left) is not what alertsvc reads (right)"
                );
            }
        }
    }
}

/// Clicks Acknowledge on a posted alert through notify's signed endpoint.
async fn click(env: &TestEnv, posted: &FakeMessage, alert_id: &str) {
    let payload = json!({
        "type": "block_actions",
        "token": VERIFICATION_TOKEN,
        "user": {"id": CLICKER, "username": "ack-er", "team_id": "T1"},
        "channel": {"id": posted.channel, "name": "alerts"},
        "container": {"type": "message", "message_ts": posted.ts, "channel_id": posted.channel},
        "message": {"type": "message", "ts": posted.ts, "text": posted.text,
                    "blocks": posted.blocks, "metadata": posted.metadata},
        "actions": [{"type": "button", "action_id": "alertsvc_acknowledge",
                     "block_id": "alertsvc_actions", "value": alert_id}]
    });
    let body = format!(
        "payload={}",
        form_urlencoded::byte_serialize(payload.to_string().as_bytes()).collect::<String>()
    );
    let now = (now_ms() / 1000).to_string();
    let status = reqwest::Client::new()
        .post(format!("http://{}/slack/interactions", env.notify_addr()))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", &now)
        .header(
            "x-slack-signature",
            sign(SIGNING_SECRET, &now, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .expect("interaction request")
        .status();
    assert_eq!(status.as_u16(), 200, "the signed click is accepted");
}

async fn exchange(format: Format) {
    let mut scenario = Scenario::new(format).await;
    // Recent, so that notify does not answer Python's messages `expired`.
    scenario.python_writes(now_ms()).await;
    let posts = scenario.run_stages().await;
    let topics = scenario.read_topics().await;
    let tables = scenario.check_python_records(&topics).await;
    scenario.check_produced_events(&topics).await;
    let enriched = scenario.check_alerts(&topics, &tables).await;
    scenario.check_delivery(&topics, &enriched, &posts).await;
    scenario.check_subjects().await;
    scenario.python_reads(&topics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_exchange_single_object_records_with_every_stage() {
    exchange(Format::SingleObject).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_exchange_json_records_with_every_stage() {
    exchange(Format::Json).await;
}

/// Confluent's own serializer and deserializer (confluent-kafka's
/// `AvroSerializer` registering its schemas, `AvroDeserializer` fetching
/// writer schemas by id) against the test's registry, both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_serdes_exchange_registry_framed_records_with_every_stage() {
    exchange(Format::Confluent).await;
}
