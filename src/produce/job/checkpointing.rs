//! A run's checkpoint decisions, kept free of the database and Kafka so
//! they can be tested on their own: where the run starts (the stored or
//! initial checkpoint, and from where the ledger is complete), which
//! acknowledged ids are worth writing to the ledger, and what a finished
//! run stores and prunes.

use std::time::Duration;

use crate::config::CheckpointKind;

use super::super::checkpoint::CheckpointValue;
use super::super::state::{Prune, StoredCheckpoint};
use super::RunError;

/// Where an incremental job starts: its checkpoint, and the value from
/// which the ledger holds every emitted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub checkpoint: CheckpointValue,
    pub ledger_from: CheckpointValue,
}

/// The stored checkpoint or, before the first run that finished, the
/// configured initial one (`None`: the job has no checkpoint).
pub fn start(
    checkpoint: Option<&(CheckpointKind, Option<String>)>,
    stored: Option<StoredCheckpoint>,
) -> Result<Option<Start>, RunError> {
    let Some((kind, initial)) = checkpoint else {
        return Ok(None);
    };
    let kind = *kind;
    let parse = |text: &str, what: &'static str| {
        CheckpointValue::parse(kind, text).ok_or_else(|| RunError::BadCheckpoint {
            what,
            text: text.to_owned(),
            kind,
        })
    };
    let Some(stored) = stored else {
        // Nothing was emitted below the first checkpoint: the ledger is
        // complete from there.
        let first = match initial {
            Some(text) => parse(text, "checkpoint")?,
            None => CheckpointValue::initial(kind),
        };
        return Ok(Some(Start {
            checkpoint: first.clone(),
            ledger_from: first,
        }));
    };
    let checkpoint = parse(&stored.checkpoint, "checkpoint")?;
    let ledger_from = match &stored.ledger_from {
        Some(text) => parse(text, "ledger_from")?,
        // Checkpointed by a version that kept only the ids at the
        // checkpoint.
        None => checkpoint.clone(),
    };
    Ok(Some(Start {
        checkpoint,
        ledger_from,
    }))
}

/// The greatest checkpoint value seen.
#[derive(Debug, Default)]
pub struct Greatest {
    value: Option<CheckpointValue>,
}

impl Greatest {
    pub fn see(&mut self, value: Option<&CheckpointValue>) {
        let Some(value) = value else { return };
        if self.value.as_ref().is_none_or(|v| value > v) {
            self.value = Some(value.clone());
        }
    }

    pub fn value(&self) -> Option<&CheckpointValue> {
        self.value.as_ref()
    }

    /// Leaves out of `marks` the events no later run can read again: below
    /// the greatest value so far minus the lookback (the new checkpoint is
    /// at least that), the finished run's pruning would delete them at
    /// once. A backfill of months thus writes only its last window to the
    /// ledger. If this run fails instead, the next one reads back every
    /// event it sent anyway.
    pub fn drop_unreachable(&self, marks: &mut Vec<(String, String)>, lookback: i64) {
        let Some(greatest) = &self.value else { return };
        let floor = greatest.minus(lookback).sort_key();
        // An empty position (no value of its own) is placed at the
        // checkpoint when the run finishes: kept.
        marks.retain(|(_, position)| position.is_empty() || *position >= floor);
    }
}

/// What a run that emitted everything writes when it finishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// The new checkpoint (incremental jobs).
    pub checkpoint: Option<CheckpointValue>,
    /// What is stored for the next run.
    pub stored: Option<StoredCheckpoint>,
    pub prune: Prune,
}

/// The checkpoint is the greatest value seen, never lower than where the
/// run started (a window reaching below it finds older values too). Jobs
/// without a checkpoint forget ids older than `dedup_retention` before the
/// run began.
pub fn finish(
    start: Option<&Start>,
    greatest: Option<&CheckpointValue>,
    lookback: i64,
    dedup_retention: Duration,
    run_started_ms: i64,
) -> Finish {
    let Some(start) = start else {
        let retention_ms = i64::try_from(dedup_retention.as_millis()).unwrap_or(i64::MAX);
        return Finish {
            checkpoint: None,
            stored: None,
            prune: Prune::EmittedBefore(run_started_ms.saturating_sub(retention_ms)),
        };
    };
    let checkpoint = match greatest {
        Some(seen) => start.checkpoint.clone().max(seen.clone()),
        None => start.checkpoint.clone(),
    };
    // The next run reads down to here at most: ids below can never come
    // back, and the ledger is complete from here (or from where it already
    // was, if that is higher).
    let floor = checkpoint.minus(lookback);
    let stored = StoredCheckpoint {
        checkpoint: checkpoint.display(),
        ledger_from: Some(floor.clone().max(start.ledger_from.clone()).display()),
    };
    let prune = Prune::BelowPosition {
        floor: floor.sort_key(),
        checkpoint: checkpoint.sort_key(),
    };
    Finish {
        checkpoint: Some(checkpoint),
        stored: Some(stored),
        prune,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(v: i64) -> CheckpointValue {
        CheckpointValue::Integer(v)
    }

    fn started(checkpoint: i64, ledger_from: i64) -> Start {
        Start {
            checkpoint: int(checkpoint),
            ledger_from: int(ledger_from),
        }
    }

    #[test]
    fn start_without_checkpoint_is_none() {
        assert_eq!(start(None, None).unwrap(), None);
    }

    #[test]
    fn first_run_starts_at_the_initial_value_with_a_complete_ledger() {
        let config = (CheckpointKind::Integer, Some("40".to_owned()));
        assert_eq!(start(Some(&config), None).unwrap(), Some(started(40, 40)));
        let unset = (CheckpointKind::Integer, None);
        assert_eq!(
            start(Some(&unset), None).unwrap(),
            Some(started(i64::MIN, i64::MIN))
        );
    }

    #[test]
    fn stored_checkpoint_wins_and_old_records_ledger_from_the_checkpoint() {
        let config = (CheckpointKind::Integer, Some("1".to_owned()));
        let stored = StoredCheckpoint {
            checkpoint: "90".into(),
            ledger_from: Some("70".into()),
        };
        assert_eq!(
            start(Some(&config), Some(stored)).unwrap(),
            Some(started(90, 70))
        );
        let before_ledger_from = StoredCheckpoint {
            checkpoint: "90".into(),
            ledger_from: None,
        };
        assert_eq!(
            start(Some(&config), Some(before_ledger_from)).unwrap(),
            Some(started(90, 90))
        );
    }

    #[test]
    fn unreadable_stored_values_name_what_is_wrong() {
        let config = (CheckpointKind::Integer, None);
        let stored = StoredCheckpoint {
            checkpoint: "90".into(),
            ledger_from: Some("ninety".into()),
        };
        let error = start(Some(&config), Some(stored)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "ledger_from \"ninety\" is not a valid Integer value"
        );
    }

    #[test]
    fn checkpoint_advances_to_the_greatest_value_and_prunes_below_the_lookback() {
        let plan = finish(
            Some(&started(100, 50)),
            Some(&int(130)),
            20,
            Duration::from_secs(60),
            1_000_000,
        );
        assert_eq!(plan.checkpoint, Some(int(130)));
        assert_eq!(
            plan.stored,
            Some(StoredCheckpoint {
                checkpoint: "130".into(),
                ledger_from: Some("110".into()),
            })
        );
        assert_eq!(
            plan.prune,
            Prune::BelowPosition {
                floor: int(110).sort_key(),
                checkpoint: int(130).sort_key(),
            }
        );
    }

    #[test]
    fn checkpoint_never_moves_down() {
        let plan = finish(
            Some(&started(100, 100)),
            Some(&int(80)),
            0,
            Duration::ZERO,
            0,
        );
        assert_eq!(plan.checkpoint, Some(int(100)));
        let none_seen = finish(Some(&started(100, 100)), None, 0, Duration::ZERO, 0);
        assert_eq!(none_seen.checkpoint, Some(int(100)));
    }

    #[test]
    fn ledger_from_stays_where_it_was_when_higher_than_the_floor() {
        // The lookback was raised: the ledger is complete only from 95.
        let plan = finish(
            Some(&started(100, 95)),
            Some(&int(100)),
            50,
            Duration::ZERO,
            0,
        );
        let stored = plan.stored.unwrap();
        assert_eq!(stored.ledger_from.as_deref(), Some("95"));
        assert_eq!(
            plan.prune,
            Prune::BelowPosition {
                floor: int(50).sort_key(),
                checkpoint: int(100).sort_key(),
            }
        );
    }

    #[test]
    fn jobs_without_checkpoint_forget_ids_older_than_the_retention() {
        let plan = finish(None, None, 0, Duration::from_secs(3600), 10_000_000);
        assert_eq!(
            plan,
            Finish {
                checkpoint: None,
                stored: None,
                prune: Prune::EmittedBefore(10_000_000 - 3_600_000),
            }
        );
        let forever = finish(None, None, 0, Duration::MAX, 5);
        assert_eq!(forever.prune, Prune::EmittedBefore(5 - i64::MAX));
    }

    #[test]
    fn marks_below_the_greatest_value_minus_the_lookback_are_dropped() {
        let mut greatest = Greatest::default();
        greatest.see(Some(&int(10)));
        greatest.see(None);
        greatest.see(Some(&int(30)));
        greatest.see(Some(&int(20)));
        assert_eq!(greatest.value(), Some(&int(30)));
        let mut marks = vec![
            ("a".to_owned(), int(19).sort_key()),
            ("b".to_owned(), int(20).sort_key()),
            ("c".to_owned(), String::new()),
            ("d".to_owned(), int(30).sort_key()),
        ];
        greatest.drop_unreachable(&mut marks, 10);
        let kept: Vec<&str> = marks.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(kept, ["b", "c", "d"]);
    }

    #[test]
    fn nothing_seen_drops_nothing() {
        let mut marks = vec![("a".to_owned(), int(1).sort_key())];
        Greatest::default().drop_unreachable(&mut marks, 0);
        assert_eq!(marks.len(), 1);
    }
}
