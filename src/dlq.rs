//! `alertsvc dlq replay`: re-injects the dead letters of a topic into their
//! source topic once the cause is fixed (DESIGN §2, §4).
//!
//! The dead-letter topic is read from its beginning to the end offsets
//! listed when the command starts (`read_committed`), so records written
//! meanwhile (e.g. by a replayed record dying again) are left for the next
//! run. Each selected dead letter is produced with its original key and
//! bytes to the topic named by its `alertsvc.dlq.source.topic` header, with
//! `alertsvc.replayed.from = "<dlq topic>/<partition>/<offset>"`, and is
//! recorded in the `dlq_replays` table only after the broker acknowledged
//! it: a re-run skips what is recorded. A crash between the acknowledgement
//! and the write of that row replays the record once more on the next run
//! (at least once, never lost); the header lets a consumer tell.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::config::Settings;
use crate::db::DbError;
use crate::kafka::{
    client_config, dlq_headers, enqueue, partition_watermarks, OutRecord, Role, StageContext,
    Watermarks, DLQ_REPLAY_GROUP,
};

/// Header naming the dead letter a replayed record came from.
pub const REPLAYED_FROM: &str = "alertsvc.replayed.from";

/// Every header a dead letter gained on its way to the DLQ starts with this;
/// they are not copied to the replayed record.
const DLQ_HEADER_PREFIX: &str = "alertsvc.dlq.";

/// A progress line on stderr every this many records read.
const PROGRESS_EVERY: u64 = 1000;

/// Records produced before their acknowledgements are awaited and
/// recorded: bounds what a failure leaves produced but unrecorded.
const BATCH: usize = 500;

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// How long reading may go without progress before it gives up (an open
/// transaction on the DLQ holds `read_committed` readers back).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the skipped dead letters of produce were skipped (see [`skip_reason`]).
const SKIP_NO_SOURCE: &str = "no source position (produce's dead letters hold the warehouse \
     row as JSON, not an encoded event: fix the data and re-run the job or reset its checkpoint)";

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no topic {0:?} in [topics]")]
    UnknownTopic(String),
    #[error("no state database configured ([produce.state] or [notify.ledger])")]
    NoDatabase,
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("state database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("reading {topic}: {reason}")]
    Read { topic: String, reason: String },
    #[error("cannot create the producer: {0}")]
    Producer(String),
    #[error("replaying {from} to {topic}: the broker did not acknowledge it: {reason}")]
    NotAcknowledged {
        from: String,
        topic: String,
        reason: String,
    },
    #[error("{0} selected dead letter(s) not replayed: {1}")]
    Skipped(u64, String),
}

/// `--since`: dead letters with a record timestamp at or after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since(pub i64);

impl Since {
    /// An RFC 3339 time (`2026-11-26T10:00:00Z`) or a duration back from
    /// now (`24h`, `90m`).
    pub fn parse(text: &str, now_ms: i64) -> Result<Since, String> {
        if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
            return Ok(Since(time.timestamp_millis()));
        }
        match humantime::parse_duration(text) {
            Ok(duration) => {
                let back = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
                Ok(Since(now_ms.saturating_sub(back)))
            }
            Err(_) => Err(format!(
                "{text:?} is neither an RFC 3339 time nor a duration like 24h"
            )),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A topic id from `[topics]`.
    pub topic: String,
    pub since: Option<Since>,
    /// A substring of `alertsvc.dlq.reason`.
    pub reason: Option<String>,
    pub dry_run: bool,
}

/// One dead letter as read.
#[derive(Debug, Clone)]
struct DeadLetter {
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn matches(&self, options: &Options) -> bool {
        if let Some(Since(since)) = options.since {
            // A record without a timestamp cannot be shown to be recent.
            if self.timestamp_ms.is_none_or(|t| t < since) {
                return false;
            }
        }
        if let Some(wanted) = &options.reason {
            let reason = self.header(dlq_headers::REASON).unwrap_or_default();
            if !reason.contains(wanted.as_str()) {
                return false;
            }
        }
        true
    }

    /// `<dlq topic>/<partition>/<offset>`.
    fn origin(&self, dlq_topic: &str) -> String {
        format!("{dlq_topic}/{}/{}", self.partition, self.offset)
    }

    /// The record to re-produce: original key and bytes, original headers
    /// but the dead-letter ones, and where it came from.
    fn replay_record(&self, dlq_topic: &str, target: &str) -> OutRecord {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &self.headers {
            if key.starts_with(DLQ_HEADER_PREFIX) || key == REPLAYED_FROM {
                continue;
            }
            headers = headers.insert(Header {
                key: key.as_str(),
                value: value.as_deref(),
            });
        }
        let origin = self.origin(dlq_topic);
        headers = headers.insert(Header {
            key: REPLAYED_FROM,
            value: Some(origin.as_bytes()),
        });
        OutRecord {
            topic: target.to_owned(),
            key: self.key.clone(),
            payload: self.payload.clone(),
            headers: Some(headers),
        }
    }
}

/// Where a selected dead letter goes, or why it cannot be replayed.
fn target_of(letter: &DeadLetter) -> Result<String, &'static str> {
    match letter.header(dlq_headers::SOURCE_TOPIC) {
        Some(topic) if !topic.is_empty() => Ok(topic),
        // produce writes rows that could not become events: the payload is
        // the row, so producing it to the job's topic would put a record
        // no consumer can decode there.
        _ if letter.header(dlq_headers::JOB).is_some() => Err(SKIP_NO_SOURCE),
        _ => Err("no alertsvc.dlq.source.topic header"),
    }
}

/// What a run did, printed on stdout at its end.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub read: u64,
    pub matched: u64,
    pub replayed: u64,
    pub already_replayed: u64,
    /// Reason → count.
    pub skipped: BTreeMap<String, u64>,
}

impl Summary {
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    fn skipped_text(&self) -> String {
        self.skipped
            .iter()
            .map(|(reason, n)| format!("{n} × {reason}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "read: {}", self.read)?;
        writeln!(f, "matched: {}", self.matched)?;
        writeln!(f, "replayed: {}", self.replayed)?;
        writeln!(f, "already replayed: {}", self.already_replayed)?;
        write!(f, "skipped: {}", self.skipped_total())?;
        if !self.skipped.is_empty() {
            write!(f, " ({})", self.skipped_text())?;
        }
        writeln!(f)
    }
}

/// The state database and whether to migrate it: produce's when produce
/// is configured (its dead letters are the most common), else notify's
/// ledger. Both are normally one database; no `[dlq]` section is needed.
fn database(settings: &Settings) -> Result<(&str, bool), ReplayError> {
    if let Some(produce) = &settings.produce {
        let state = &produce.state;
        return Ok((state.database_url.expose(), state.migrate_on_start));
    }
    if let Some(notify) = &settings.notify {
        let ledger = &notify.ledger;
        return Ok((ledger.database_url.expose(), ledger.migrate_on_start));
    }
    Err(ReplayError::NoDatabase)
}

/// Runs `dlq replay`. The summary is printed on stdout (dry run: one JSON
/// line per record that would be replayed first); an error after the
/// summary says why not every selected record was replayed.
pub async fn run(settings: &Settings, options: &Options) -> Result<Summary, ReplayError> {
    let topic = settings
        .topic(&options.topic)
        .map_err(|_| ReplayError::UnknownTopic(options.topic.clone()))?;
    let dlq_topic = settings.dlq_topic(&topic.name);
    let (url, migrate) = database(settings)?;
    let pool = crate::db::connect(url, 1).await?;
    // Like the stages (`migrate_on_start`): `dlq_replays` may be new to this
    // database. Applying migrations touches no data, so a dry run does too.
    if migrate {
        crate::db::migrate(&pool, crate::db::is_postgres(url)).await?;
    }
    let done = replayed(&pool, &dlq_topic).await?;

    let letters = read_all(settings, &dlq_topic).await?;
    let mut summary = Summary {
        read: letters.len() as u64,
        ..Summary::default()
    };
    let mut selected: Vec<(DeadLetter, String)> = Vec::new();
    for letter in letters {
        if !letter.matches(options) {
            continue;
        }
        summary.matched += 1;
        if done.contains(&(letter.partition, letter.offset)) {
            summary.already_replayed += 1;
            continue;
        }
        match target_of(&letter) {
            Ok(target) => selected.push((letter, target)),
            Err(reason) => *summary.skipped.entry(reason.to_owned()).or_default() += 1,
        }
    }

    if options.dry_run {
        for (letter, target) in &selected {
            println!("{}", dry_run_line(letter, &dlq_topic, target));
        }
        summary.replayed = 0;
        print!("{summary}");
        return Ok(summary);
    }

    let result = replay(settings, &pool, &dlq_topic, &selected, &mut summary).await;
    print!("{summary}");
    result?;
    if summary.skipped_total() > 0 {
        return Err(ReplayError::Skipped(
            summary.skipped_total(),
            summary.skipped_text(),
        ));
    }
    Ok(summary)
}

fn dry_run_line(letter: &DeadLetter, dlq_topic: &str, target: &str) -> serde_json::Value {
    let text = |bytes: &Option<Vec<u8>>| {
        bytes
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    json!({
        "from": letter.origin(dlq_topic),
        "topic": target,
        "timestamp": letter.timestamp_ms,
        "key": text(&letter.key),
        "payload_bytes": letter.payload.as_ref().map(Vec::len),
        "reason": letter.header(dlq_headers::REASON),
        "stage": letter.header(dlq_headers::STAGE),
        "source_partition": letter.header(dlq_headers::SOURCE_PARTITION),
        "source_offset": letter.header(dlq_headers::SOURCE_OFFSET),
    })
}

/// Produces the selected dead letters batch by batch; each batch's
/// acknowledged records are recorded before the next batch starts, also
/// when a record of the batch was refused.
async fn replay(
    settings: &Settings,
    pool: &AnyPool,
    dlq_topic: &str,
    selected: &[(DeadLetter, String)],
    summary: &mut Summary,
) -> Result<(), ReplayError> {
    if selected.is_empty() {
        return Ok(());
    }
    let producer: FutureProducer<StageContext> = client_config(
        &settings.kafka,
        "the dlq replay producer",
        &Role::IdempotentProducer { linger_ms: 5 },
    )
    .create_with_context(StageContext::default())
    .map_err(|e| ReplayError::Producer(e.to_string()))?;
    for batch in selected.chunks(BATCH) {
        let mut deliveries = Vec::with_capacity(batch.len());
        for (letter, target) in batch {
            let record = letter.replay_record(dlq_topic, target);
            deliveries.push(enqueue(&producer, &record).await);
        }
        let mut acknowledged = Vec::with_capacity(batch.len());
        let mut failure = None;
        for ((letter, target), delivery) in batch.iter().zip(deliveries) {
            let outcome = match delivery {
                Ok(future) => match future.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("the producer dropped the record".to_owned()),
                },
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(()) => acknowledged.push((letter.partition, letter.offset, target.as_str())),
                Err(reason) => {
                    failure.get_or_insert(ReplayError::NotAcknowledged {
                        from: letter.origin(dlq_topic),
                        topic: target.clone(),
                        reason,
                    });
                }
            }
        }
        record_replayed(pool, dlq_topic, &acknowledged, now_ms()).await?;
        summary.replayed += acknowledged.len() as u64;
        if let Some(failure) = failure {
            return Err(failure);
        }
        if selected.len() > BATCH {
            eprintln!(
                "dlq replay: replayed {} of {}",
                summary.replayed,
                selected.len()
            );
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// (partition, offset) of every dead letter of `dlq_topic` already replayed.
async fn replayed(pool: &AnyPool, dlq_topic: &str) -> Result<HashSet<(i32, i64)>, ReplayError> {
    let rows: Vec<AnyRow> =
        sqlx::query("SELECT dlq_partition, dlq_offset FROM dlq_replays WHERE dlq_topic = $1")
            .bind(dlq_topic)
            .fetch_all(pool)
            .await?;
    let mut done = HashSet::with_capacity(rows.len());
    for row in rows {
        let partition: i64 = row.try_get("dlq_partition")?;
        let offset: i64 = row.try_get("dlq_offset")?;
        // Partitions are i32 in Kafka; a row outside that range was not
        // written by this code and matches no record.
        if let Ok(partition) = i32::try_from(partition) {
            done.insert((partition, offset));
        }
    }
    Ok(done)
}

async fn record_replayed(
    pool: &AnyPool,
    dlq_topic: &str,
    acknowledged: &[(i32, i64, &str)],
    now_ms: i64,
) -> Result<(), ReplayError> {
    if acknowledged.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    for (partition, offset, target) in acknowledged {
        sqlx::query(
            "INSERT INTO dlq_replays (dlq_topic, dlq_partition, dlq_offset, target_topic, \
             replayed_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO NOTHING",
        )
        .bind(dlq_topic)
        .bind(i64::from(*partition))
        .bind(*offset)
        .bind(*target)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Reads `dlq_topic` from its beginning to the end offsets listed now.
async fn read_all(settings: &Settings, dlq_topic: &str) -> Result<Vec<DeadLetter>, ReplayError> {
    let config = client_config(
        &settings.kafka,
        "the dlq replay reader",
        &Role::ReadBack {
            group_id: DLQ_REPLAY_GROUP.to_owned(),
        },
    );
    let topic = dlq_topic.to_owned();
    let error = |reason: String| ReplayError::Read {
        topic: dlq_topic.to_owned(),
        reason,
    };
    tokio::task::spawn_blocking(move || read_blocking(&config, &topic))
        .await
        .map_err(|e| error(format!("reader panicked: {e}")))?
        .map_err(error)
}

fn read_blocking(config: &rdkafka::ClientConfig, topic: &str) -> Result<Vec<DeadLetter>, String> {
    let consumer: BaseConsumer<StageContext> = config
        .create_with_context(StageContext::default())
        .map_err(|e| format!("cannot create the consumer: {e}"))?;
    // partition → end offset at start; a partition is done once the
    // consumer's position reaches it.
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    let watermarks =
        partition_watermarks(&consumer, topic, METADATA_TIMEOUT).map_err(|e| e.to_string())?;
    for Watermarks {
        partition,
        low,
        high,
    } in watermarks
    {
        if high > low {
            ends.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
    }
    let total: i64 = ends.values().sum();
    let mut letters = Vec::new();
    if ends.is_empty() {
        return Ok(letters);
    }
    consumer
        .assign(&assignment)
        .map_err(|e| format!("cannot assign: {e}"))?;
    let mut last_progress = Instant::now();
    let mut read: u64 = 0;
    while !ends.is_empty() {
        if last_progress.elapsed() > STALL_TIMEOUT {
            return Err(format!(
                "no progress for {} s with partitions {:?} unfinished (an open transaction?)",
                STALL_TIMEOUT.as_secs(),
                ends.keys().collect::<Vec<_>>()
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let partition = message.partition();
                // Records past the end listed at start were written after
                // the command began; they wait for the next run.
                if ends
                    .get(&partition)
                    .is_some_and(|end| message.offset() < *end)
                {
                    read += 1;
                    letters.push(DeadLetter {
                        partition,
                        offset: message.offset(),
                        timestamp_ms: message.timestamp().to_millis(),
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().map(<[u8]>::to_vec),
                        headers: message
                            .headers()
                            .map(|h| {
                                h.iter()
                                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    });
                    if read.is_multiple_of(PROGRESS_EVERY) {
                        eprintln!("dlq replay: read {read} of at most {total} from {topic}");
                    }
                }
            }
        }
        // Transaction markers and aborted records never reach the
        // application: the position, not the last offset seen, says
        // whether a partition is done.
        let position = consumer
            .position()
            .map_err(|e| format!("cannot read the position: {e}"))?;
        for element in position.elements() {
            if let Offset::Offset(at) = element.offset() {
                if ends.get(&element.partition()).is_some_and(|end| at >= *end) {
                    ends.remove(&element.partition());
                }
            }
        }
    }
    Ok(letters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(headers: &[(&str, &str)], timestamp_ms: Option<i64>) -> DeadLetter {
        DeadLetter {
            partition: 0,
            offset: 7,
            timestamp_ms,
            key: Some(b"k".to_vec()),
            payload: Some(vec![0, 1, 0xff]),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Some(v.as_bytes().to_vec())))
                .collect(),
        }
    }

    #[test]
    fn since_takes_a_time_or_a_duration() {
        let now = 1_800_000_000_000;
        assert_eq!(
            Since::parse("2026-11-26T10:00:00Z", now),
            Ok(Since(1_795_687_200_000))
        );
        assert_eq!(Since::parse("24h", now), Ok(Since(now - 86_400_000)));
        assert!(Since::parse("yesterday", now).is_err());
    }

    #[test]
    fn filters_compare_the_record_time_and_the_reason() {
        let l = letter(&[(dlq_headers::REASON, "template failed: x")], Some(1000));
        let opts = |since: Option<i64>, reason: Option<&str>| Options {
            topic: "t".into(),
            since: since.map(Since),
            reason: reason.map(str::to_owned),
            dry_run: false,
        };
        assert!(l.matches(&opts(None, None)));
        assert!(l.matches(&opts(Some(1000), Some("template"))));
        assert!(!l.matches(&opts(Some(1001), None)));
        assert!(!l.matches(&opts(None, Some("decode"))));
        assert!(!letter(&[], None).matches(&opts(Some(0), None)));
    }

    #[test]
    fn the_replayed_record_keeps_bytes_and_foreign_headers_only() {
        let l = letter(
            &[
                (dlq_headers::REASON, "r"),
                (dlq_headers::SOURCE_TOPIC, "in"),
                ("trace", "abc"),
            ],
            None,
        );
        assert_eq!(target_of(&l), Ok("in".to_owned()));
        let record = l.replay_record("in.dlq", "in");
        assert_eq!(record.topic, "in");
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(record.payload.as_deref(), Some(&[0, 1, 0xff][..]));
        let headers: Vec<(String, String)> = record
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            headers,
            [
                ("trace".to_owned(), "abc".to_owned()),
                (REPLAYED_FROM.to_owned(), "in.dlq/0/7".to_owned())
            ]
        );
    }

    #[test]
    fn produce_rows_are_skipped_with_a_reason() {
        let l = letter(&[(dlq_headers::JOB, "j"), (dlq_headers::ROW, "5")], None);
        assert_eq!(target_of(&l), Err(SKIP_NO_SOURCE));
    }
}
