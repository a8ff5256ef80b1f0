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

use std::collections::BTreeMap;

use rdkafka::producer::FutureProducer;
use serde_json::json;
use sqlx::AnyPool;

use crate::config::Settings;
use crate::db::DbError;
use crate::kafka::{client_config, dlq_headers, enqueue, Role, StageContext};

mod ledger;
mod letter;
mod read;

use crate::clock::now_ms;
use ledger::{record_replayed, replayed};
use letter::{target_of, DeadLetter};
use read::read_all;

/// Header naming the dead letter a replayed record came from.
pub const REPLAYED_FROM: &str = "alertsvc.replayed.from";

/// Records produced before their acknowledgements are awaited and
/// recorded: bounds what a failure leaves produced but unrecorded.
const BATCH: usize = 500;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
