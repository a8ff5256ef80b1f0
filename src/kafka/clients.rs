//! Every librdkafka client alertsvc creates is configured here, by role.
//! Order matters: the base (bootstrap servers, SASL credentials), then the
//! role's properties, then the operator's `[kafka.client]` — applied last,
//! so an operator can tune anything. Overriding a property a stage relies
//! on (a read_committed consumer's `isolation.level`, a producer's
//! `enable.idempotence`, …) can break exactly-once delivery, so those are
//! listed with the reason, and `config check` (and each client as it is
//! built) warns about them.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use crate::config::{is_sensitive_property, KafkaSettings, ProcessingGuarantee, Settings};

/// How a stream consumer's offsets reach the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commits {
    /// The stage commits itself (enrich: in its transactions, or after a
    /// batch is acknowledged).
    Manual,
    /// The stage stores the offset of each record it has finished and
    /// librdkafka's auto-commit commits what was stored (notify).
    AutoStored,
}

/// What a client is for. Each role sets the properties its stage relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A group member reading read_committed from the earliest offset.
    StreamConsumer { group_id: String, commits: Commits },
    /// Loads a table topic from its start and learns where each partition
    /// ends from end-of-partition events; never commits.
    TableReader { group_id: String },
    /// Reads assigned partitions to their end (produce's read-back, the
    /// dead-letter replay); never commits.
    ReadBack { group_id: String },
    /// Writes with idempotence and `acks=all`.
    IdempotentProducer { linger_ms: u32 },
    /// An idempotent producer with a transactional id (enrich's
    /// exactly-once path).
    TransactionalProducer {
        linger_ms: u32,
        transactional_id: String,
        transaction_timeout: Duration,
    },
}

/// A property a role sets: its value and, when the stage relies on it,
/// what goes wrong if `[kafka.client]` overrides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    pub name: &'static str,
    pub value: String,
    pub relied_on: Option<&'static str>,
}

fn tuning(name: &'static str, value: impl Into<String>) -> Property {
    Property {
        name,
        value: value.into(),
        relied_on: None,
    }
}

fn relied(name: &'static str, value: impl Into<String>, why: &'static str) -> Property {
    Property {
        name,
        value: value.into(),
        relied_on: Some(why),
    }
}

const WHY_GROUP: &str = "each consumer needs its own consumer group; a shared one splits \
                         partitions between unrelated readers";
const WHY_READ_COMMITTED: &str = "records of aborted or still open transactions would be read \
                                  as if committed";
const WHY_NO_AUTO_COMMIT: &str = "the stage commits offsets itself once a record is done; \
                                  auto-commit would commit records not yet processed, which \
                                  are then lost on a crash";
const WHY_NO_AUTO_STORE: &str = "the stage stores an offset once its record is done; \
                                 storing on poll would commit records not yet processed";
const WHY_AUTO_COMMIT: &str = "notify's stored offsets reach the broker only through \
                               auto-commit; without it every restart re-reads the topic";
const WHY_EARLIEST: &str = "a new consumer group must start at the topic's beginning, or \
                            records written before it first ran are skipped";
const WHY_EOF: &str = "the reader knows it reached a partition's end only from \
                       end-of-partition events; without them it never finishes";
const WHY_READER_NO_COMMIT: &str = "the reader must not commit to its group: each read \
                                    starts from the offsets it assigns";
const WHY_IDEMPOTENCE: &str = "a retried send could be written twice";
const WHY_ACKS: &str = "a record acknowledged by the leader alone can be lost with it";
const WHY_TRANSACTIONAL_ID: &str = "exactly-once needs one transactional id per instance; a \
                                    shared id fences the other instances";
const WHY_TRANSACTION_TIMEOUT: &str = "it is set from enrich.transaction_timeout";

impl Role {
    /// The properties this role sets, in the order they are applied.
    pub fn properties(&self) -> Vec<Property> {
        match self {
            Role::StreamConsumer { group_id, commits } => {
                let mut properties = vec![relied("group.id", group_id.as_str(), WHY_GROUP)];
                match commits {
                    Commits::Manual => {
                        properties.push(relied("enable.auto.commit", "false", WHY_NO_AUTO_COMMIT))
                    }
                    Commits::AutoStored => properties.extend([
                        relied("enable.auto.commit", "true", WHY_AUTO_COMMIT),
                        tuning("auto.commit.interval.ms", "1000"),
                        // A replica that dies or rolls over moves only its
                        // own partitions: with the eager protocol every
                        // member stops posting until the group settles (a
                        // session timeout after a SIGKILL). All members of
                        // a group must name the same strategy.
                        tuning("partition.assignment.strategy", "cooperative-sticky"),
                    ]),
                }
                properties.extend([
                    relied("enable.auto.offset.store", "false", WHY_NO_AUTO_STORE),
                    relied("auto.offset.reset", "earliest", WHY_EARLIEST),
                    relied("isolation.level", "read_committed", WHY_READ_COMMITTED),
                    tuning("statistics.interval.ms", "15000"),
                ]);
                properties
            }
            Role::TableReader { group_id } => vec![
                relied("group.id", group_id.as_str(), WHY_GROUP),
                relied("enable.auto.commit", "false", WHY_READER_NO_COMMIT),
                relied("enable.partition.eof", "true", WHY_EOF),
                relied("auto.offset.reset", "earliest", WHY_EARLIEST),
                relied("isolation.level", "read_committed", WHY_READ_COMMITTED),
                // librdkafka waits a whole second before fetching a partition
                // again once its pre-fetch queue is over 64 MiB, which a
                // table's first fetch is: a 1M-row bootstrap took 7–8 s
                // instead of 2.3 s, idle most of the time
                // (docs/PERFORMANCE.md).
                tuning("fetch.queue.backoff.ms", "10"),
            ],
            Role::ReadBack { group_id } => vec![
                relied("group.id", group_id.as_str(), WHY_GROUP),
                relied("enable.auto.commit", "false", WHY_READER_NO_COMMIT),
                tuning("enable.auto.offset.store", "false"),
                relied("enable.partition.eof", "true", WHY_EOF),
                relied("isolation.level", "read_committed", WHY_READ_COMMITTED),
            ],
            Role::IdempotentProducer { linger_ms } => producer(*linger_ms),
            Role::TransactionalProducer {
                linger_ms,
                transactional_id,
                transaction_timeout,
            } => {
                let mut properties = producer(*linger_ms);
                properties.extend([
                    relied(
                        "transactional.id",
                        transactional_id.as_str(),
                        WHY_TRANSACTIONAL_ID,
                    ),
                    relied(
                        "transaction.timeout.ms",
                        transaction_timeout.as_millis().to_string(),
                        WHY_TRANSACTION_TIMEOUT,
                    ),
                ]);
                properties
            }
        }
    }
}

fn producer(linger_ms: u32) -> Vec<Property> {
    vec![
        relied("enable.idempotence", "true", WHY_IDEMPOTENCE),
        relied("acks", "all", WHY_ACKS),
        tuning("linger.ms", linger_ms.to_string()),
    ]
}

/// Bootstrap servers and SASL credentials: what every client shares.
fn base(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    if let (Some(user), Some(password)) = (&kafka.sasl_username, &kafka.sasl_password) {
        config.set("sasl.username", user.expose());
        config.set("sasl.password", password.expose());
    }
    config
}

/// The configuration of the client `name` (e.g. "enrich consumer") in
/// `role`: the base, the role's properties, then `[kafka.client]`, which
/// wins. Each relied-on property it overrides is logged as a warning.
pub fn client_config(kafka: &KafkaSettings, name: &str, role: &Role) -> ClientConfig {
    let mut config = base(kafka);
    for property in role.properties() {
        config.set(property.name, property.value);
    }
    for warning in overrides(
        "kafka.client",
        &kafka.client,
        &[(name.to_owned(), role.clone())],
    ) {
        tracing::warn!("{warning}");
    }
    for (name, value) in &kafka.client {
        config.set(name, value);
    }
    config
}

/// Checks every pass-through property against librdkafka by building a
/// client from it (no connection is needed for that).
pub fn check_client_properties(kafka: &KafkaSettings) -> Result<(), String> {
    let mut config = base(kafka);
    for (name, value) in &kafka.client {
        config.set(name, value);
    }
    // A client with an unreachable bootstrap address never blocks here.
    config.set("bootstrap.servers", "127.0.0.1:1");
    config
        .create::<rdkafka::producer::BaseProducer>()
        .map(drop)
        .map_err(|e| match e {
            KafkaError::ClientConfig(_, description, name, _) if !name.is_empty() => {
                format!("kafka.client.\"{name}\": {description}")
            }
            other => other.to_string(),
        })
}

/// The clients the configured stages build, named as warnings name them.
/// The dead-letter replay (`alertsvc dlq replay`) runs with any
/// configuration, so its clients are always listed.
fn configured_clients(settings: &Settings) -> Vec<(String, Role)> {
    let mut clients = Vec::new();
    if let Some(enrich) = &settings.enrich {
        clients.push((
            "the enrich consumer".to_owned(),
            Role::StreamConsumer {
                group_id: enrich.group_id.clone(),
                commits: Commits::Manual,
            },
        ));
        let producer = match enrich.processing_guarantee {
            ProcessingGuarantee::ExactlyOnce => Role::TransactionalProducer {
                linger_ms: 5,
                transactional_id: format!("{}-<instance>", enrich.transactional_id_prefix),
                transaction_timeout: enrich.transaction_timeout,
            },
            ProcessingGuarantee::AtLeastOnce => Role::IdempotentProducer { linger_ms: 5 },
        };
        clients.push(("the enrich producer".to_owned(), producer));
        clients.push((
            "the enrich dead-letter producer".to_owned(),
            Role::IdempotentProducer { linger_ms: 5 },
        ));
        for id in enrich.tables.keys() {
            clients.push((
                format!("the enrich table reader of {id}"),
                Role::TableReader {
                    group_id: format!("{}-table-{id}", enrich.group_id),
                },
            ));
        }
    }
    if let Some(notify) = &settings.notify {
        clients.push((
            "the notify consumer".to_owned(),
            Role::StreamConsumer {
                group_id: notify.group_id.clone(),
                commits: Commits::AutoStored,
            },
        ));
        clients.push((
            "the notify producer".to_owned(),
            Role::IdempotentProducer {
                linger_ms: NOTIFY_LINGER_MS,
            },
        ));
    }
    if settings.produce.is_some() {
        clients.push((
            "the produce producer".to_owned(),
            Role::IdempotentProducer {
                linger_ms: PRODUCE_LINGER_MS,
            },
        ));
        clients.push((
            "the produce read-back reader".to_owned(),
            Role::ReadBack {
                group_id: PRODUCE_READBACK_GROUP.to_owned(),
            },
        ));
    }
    clients.push((
        "the dlq replay reader".to_owned(),
        Role::ReadBack {
            group_id: DLQ_REPLAY_GROUP.to_owned(),
        },
    ));
    clients.push((
        "the dlq replay producer".to_owned(),
        Role::IdempotentProducer { linger_ms: 5 },
    ));
    clients
}

/// The consumer group of produce's read-back reader.
pub const PRODUCE_READBACK_GROUP: &str = "alertsvc-produce-readback";
/// The consumer group of `alertsvc dlq replay`'s reader.
pub const DLQ_REPLAY_GROUP: &str = "alertsvc-dlq-replay";

/// `config check`'s warnings: each `[kafka.client]` property that overrides
/// what a configured stage's client relies on, then each
/// `[produce.producer]` property that overrides what produce's producer
/// relies on (it is applied after `[kafka.client]`).
pub fn client_warnings(settings: &Settings) -> Vec<String> {
    let mut warnings = overrides(
        "kafka.client",
        &settings.kafka.client,
        &configured_clients(settings),
    );
    if let Some(produce) = &settings.produce {
        warnings.extend(overrides(
            "produce.producer",
            &produce.producer,
            &[(
                "the produce producer".to_owned(),
                Role::IdempotentProducer {
                    linger_ms: PRODUCE_LINGER_MS,
                },
            )],
        ));
    }
    warnings
}

/// produce batches more than the streaming stages: it writes whole result
/// sets at once.
pub const PRODUCE_LINGER_MS: u32 = 20;

/// notify writes two records per post (the response, the alert state).
/// Nothing waits on them but the consumer's offsets and the state's
/// readers (the post itself is done), so they wait for fuller batches: at
/// 5 ms the broker's requests and the delivery reports that wake their
/// tasks cost notify ~15% of its CPU per post (`docs/PERFORMANCE.md`,
/// eighteenth round). A button click's answer to Slack, which waits for
/// its record, is up to 15 ms later, far inside Slack's 3 s.
pub const NOTIFY_LINGER_MS: u32 = 20;

/// One warning per property of `client` (the table named `table`) that
/// overrides a relied-on value the clients set, naming every client that
/// sets it. Values of credential-like properties are never shown.
fn overrides(
    table: &str,
    client: &BTreeMap<String, String>,
    clients: &[(String, Role)],
) -> Vec<String> {
    // (property, role's value, why) → the clients that set it.
    let mut overridden: BTreeMap<(&str, String, &str), Vec<&str>> = BTreeMap::new();
    let mut order = Vec::new();
    for (name, role) in clients {
        for property in role.properties() {
            let Some(why) = property.relied_on else {
                continue;
            };
            let Some(value) = client.get(property.name) else {
                continue;
            };
            if value.trim().eq_ignore_ascii_case(&property.value) {
                continue;
            }
            let key = (property.name, property.value, why);
            if !overridden.contains_key(&key) {
                order.push(key.clone());
            }
            overridden.entry(key).or_default().push(name.as_str());
        }
    }
    order
        .into_iter()
        .map(|key| {
            let names = &overridden[&key];
            let (name, role_value, why) = key;
            let shown = |value: &str| {
                if is_sensitive_property(name) {
                    crate::config::REDACTED.to_owned()
                } else {
                    value.to_owned()
                }
            };
            let sets = if names.len() == 1 { "sets" } else { "set" };
            format!(
                "{table}.{name} = {} overrides what {} {sets} ({}): {why}",
                shown(&client[name]),
                names.join(", "),
                shown(&role_value),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(client: &[(&str, &str)]) -> KafkaSettings {
        KafkaSettings {
            bootstrap_servers: "broker:9092".into(),
            sasl_username: None,
            sasl_password: None,
            client: client
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            dlq_suffix: ".dlq".into(),
        }
    }

    fn consumer() -> Role {
        Role::StreamConsumer {
            group_id: "g".into(),
            commits: Commits::Manual,
        }
    }

    #[test]
    fn the_role_sets_what_its_stage_relies_on() {
        let config = client_config(&settings(&[]), "c", &consumer());
        assert_eq!(config.get("bootstrap.servers"), Some("broker:9092"));
        assert_eq!(config.get("group.id"), Some("g"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(config.get("isolation.level"), Some("read_committed"));

        let producer = Role::TransactionalProducer {
            linger_ms: 5,
            transactional_id: "enrich-host".into(),
            transaction_timeout: Duration::from_secs(60),
        };
        let config = client_config(&settings(&[]), "p", &producer);
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("transactional.id"), Some("enrich-host"));
        assert_eq!(config.get("transaction.timeout.ms"), Some("60000"));
    }

    #[test]
    fn a_kafka_client_property_wins_over_the_role() {
        let kafka = settings(&[("linger.ms", "50"), ("isolation.level", "read_uncommitted")]);
        let config = client_config(&kafka, "p", &Role::IdempotentProducer { linger_ms: 5 });
        assert_eq!(config.get("linger.ms"), Some("50"));
        let config = client_config(&kafka, "c", &consumer());
        assert_eq!(config.get("isolation.level"), Some("read_uncommitted"));
    }

    #[test]
    fn overriding_a_relied_on_property_is_a_warning_tuning_is_not() {
        let clients = vec![
            ("the enrich consumer".to_owned(), consumer()),
            (
                "the notify consumer".to_owned(),
                Role::StreamConsumer {
                    group_id: "n".into(),
                    commits: Commits::AutoStored,
                },
            ),
            (
                "the notify producer".to_owned(),
                Role::IdempotentProducer { linger_ms: 5 },
            ),
        ];
        let client = settings(&[
            ("isolation.level", "read_uncommitted"),
            ("enable.auto.commit", "true"),
            ("enable.idempotence", "false"),
            ("linger.ms", "100"),
            ("statistics.interval.ms", "0"),
            ("acks", "ALL"),
        ])
        .client;
        assert_eq!(
            overrides("kafka.client", &client, &clients),
            vec![
                "kafka.client.enable.auto.commit = true overrides what the enrich consumer sets \
                 (false): the stage commits offsets itself once a record is done; auto-commit \
                 would commit records not yet processed, which are then lost on a crash"
                    .to_owned(),
                "kafka.client.isolation.level = read_uncommitted overrides what the enrich \
                 consumer, the notify consumer set (read_committed): records of aborted or still \
                 open transactions would be read as if committed"
                    .to_owned(),
                "kafka.client.enable.idempotence = false overrides what the notify producer sets \
                 (true): a retried send could be written twice"
                    .to_owned(),
            ]
        );
        assert!(overrides(
            "kafka.client",
            &settings(&[("linger.ms", "1")]).client,
            &clients
        )
        .is_empty());
    }
}
