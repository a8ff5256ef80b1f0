//! Reading one topic's partitions from given offsets up to a bound, one
//! callback per record: produce's read-back and `dlq replay`. The caller
//! lists the partitions and keeps its own errors; this module assigns,
//! polls, knows when each partition is done and when to give up.
//! Blocking: call it from a blocking task.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::{StageContext, Watermarks};

/// How long one poll waits before the stop policy is checked again.
const POLL: Duration = Duration::from_millis(200);

/// Where each partition's read ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Until {
    /// At its end-of-partition event: where fetches end, not at a watermark
    /// listed earlier, which a broker may list stale (DEPENDENCY-FACTS).
    /// Every record read is passed on.
    PartitionEof,
    /// At the end offset listed when the read began; records past it were
    /// written since and wait for the next read.
    ListedEnds(BTreeMap<i32, i64>),
}

/// When a read that has not reached its bound gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The whole read took longer than this.
    TimeLimit(Duration),
    /// No record arrived for this long.
    Stall(Duration),
}

/// What to read: `topic`'s `partitions`, each from its offset, to `until`.
/// With [`Until::ListedEnds`] every partition needs its end listed, or it
/// is never done ([`BoundedRead::listed`] builds both from watermarks).
#[derive(Debug, Clone, PartialEq)]
pub struct BoundedRead<'a> {
    pub topic: &'a str,
    pub partitions: Vec<(i32, Offset)>,
    pub until: Until,
    pub stop: Stop,
}

impl<'a> BoundedRead<'a> {
    /// Every partition that holds records, from its beginning to the high
    /// watermark listed in `watermarks`.
    pub fn listed(topic: &'a str, watermarks: &[Watermarks], stop: Stop) -> BoundedRead<'a> {
        let ends: BTreeMap<i32, i64> = watermarks
            .iter()
            .filter(|w| w.high > w.low)
            .map(|w| (w.partition, w.high))
            .collect();
        BoundedRead {
            topic,
            partitions: ends.keys().map(|p| (*p, Offset::Beginning)).collect(),
            until: Until::ListedEnds(ends),
            stop,
        }
    }
}

impl BoundedRead<'_> {
    /// The end offset listed for `partition`, if the read ends at one.
    pub fn end_of(&self, partition: i32) -> Option<i64> {
        match &self.until {
            Until::ListedEnds(ends) => ends.get(&partition).copied(),
            Until::PartitionEof => None,
        }
    }
}

/// Why a read ended before its bound. Callers wrap it in their own errors.
#[derive(Debug, thiserror::Error)]
pub enum BoundedReadError {
    #[error("{0}")]
    Assignment(KafkaError),
    #[error("cannot assign: {0}")]
    Assign(KafkaError),
    #[error("{0}")]
    Poll(KafkaError),
    #[error("cannot read the position: {0}")]
    Position(KafkaError),
    #[error("the read took longer than {} s", .0.as_secs())]
    TimeLimit(Duration),
    #[error(
        "no progress for {} s with partitions {unfinished:?} unfinished (an open transaction?)",
        after.as_secs()
    )]
    Stalled {
        after: Duration,
        unfinished: Vec<i32>,
    },
}

/// Reads `read` with `consumer`, passing each record within the bound to
/// `on_record`, until every partition is done.
pub fn bounded_read(
    consumer: &BaseConsumer<StageContext>,
    read: &BoundedRead<'_>,
    mut on_record: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), BoundedReadError> {
    let mut assignment = TopicPartitionList::new();
    for (partition, start) in &read.partitions {
        assignment
            .add_partition_offset(read.topic, *partition, *start)
            .map_err(BoundedReadError::Assignment)?;
    }
    let mut open = Open::new(read);
    if open.is_done() {
        return Ok(());
    }
    consumer
        .assign(&assignment)
        .map_err(BoundedReadError::Assign)?;
    let mut patience = Patience::new(read.stop, Instant::now());
    while !open.is_done() {
        patience.check(Instant::now(), &open)?;
        match consumer.poll(POLL) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => open.reached_eof(partition),
            Some(Err(e)) => return Err(BoundedReadError::Poll(e)),
            Some(Ok(message)) => {
                patience.progressed(Instant::now());
                if open.within(message.partition(), message.offset()) {
                    on_record(&message);
                }
            }
        }
        if open.ends_by_position() {
            // Transaction markers and aborted records never reach the
            // application: the position, not the last offset seen, says
            // whether a partition is done.
            let position = consumer.position().map_err(BoundedReadError::Position)?;
            for element in position.elements() {
                if let Offset::Offset(at) = element.offset() {
                    open.at_position(element.partition(), at);
                }
            }
        }
    }
    Ok(())
}

/// The partitions not yet read to their bound.
#[derive(Debug)]
struct Open<'r> {
    until: &'r Until,
    partitions: BTreeSet<i32>,
}

impl<'r> Open<'r> {
    fn new(read: &'r BoundedRead<'_>) -> Open<'r> {
        Open {
            until: &read.until,
            partitions: read.partitions.iter().map(|(p, _)| *p).collect(),
        }
    }

    fn is_done(&self) -> bool {
        self.partitions.is_empty()
    }

    fn ends_by_position(&self) -> bool {
        matches!(self.until, Until::ListedEnds(_))
    }

    /// Whether the record at `offset` of `partition` is passed on.
    fn within(&self, partition: i32, offset: i64) -> bool {
        match self.until {
            Until::PartitionEof => true,
            Until::ListedEnds(ends) => {
                self.partitions.contains(&partition)
                    && ends.get(&partition).is_some_and(|end| offset < *end)
            }
        }
    }

    fn reached_eof(&mut self, partition: i32) {
        if *self.until == Until::PartitionEof {
            self.partitions.remove(&partition);
        }
    }

    /// The consumer's next offset of `partition` is `at`.
    fn at_position(&mut self, partition: i32, at: i64) {
        if let Until::ListedEnds(ends) = self.until {
            if ends.get(&partition).is_some_and(|end| at >= *end) {
                self.partitions.remove(&partition);
            }
        }
    }

    fn unfinished(&self) -> Vec<i32> {
        self.partitions.iter().copied().collect()
    }
}

/// The stop policy's clock.
#[derive(Debug)]
struct Patience {
    stop: Stop,
    started: Instant,
    last_progress: Instant,
}

impl Patience {
    fn new(stop: Stop, now: Instant) -> Patience {
        Patience {
            stop,
            started: now,
            last_progress: now,
        }
    }

    fn progressed(&mut self, now: Instant) {
        self.last_progress = now;
    }

    fn check(&self, now: Instant, open: &Open<'_>) -> Result<(), BoundedReadError> {
        match self.stop {
            Stop::TimeLimit(limit) if now > self.started + limit => {
                Err(BoundedReadError::TimeLimit(limit))
            }
            Stop::Stall(after) if now.duration_since(self.last_progress) > after => {
                Err(BoundedReadError::Stalled {
                    after,
                    unfinished: open.unfinished(),
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watermarks(partition: i32, low: i64, high: i64) -> Watermarks {
        Watermarks {
            partition,
            low,
            high,
        }
    }

    #[test]
    fn a_listed_read_takes_the_partitions_with_records_to_their_high_watermark() {
        let read = BoundedRead::listed(
            "t",
            &[
                watermarks(0, 0, 5),
                watermarks(1, 3, 3),
                watermarks(2, 2, 9),
            ],
            Stop::Stall(Duration::from_secs(1)),
        );
        assert_eq!(
            read.partitions,
            vec![(0, Offset::Beginning), (2, Offset::Beginning)]
        );
        assert_eq!(
            read.until,
            Until::ListedEnds(BTreeMap::from([(0, 5), (2, 9)]))
        );
    }

    #[test]
    fn listed_ends_pass_on_records_below_the_end_until_the_position_reaches_it() {
        let read = BoundedRead::listed(
            "t",
            &[watermarks(0, 0, 5), watermarks(1, 0, 2)],
            Stop::Stall(Duration::from_secs(1)),
        );
        let mut open = Open::new(&read);
        assert!(open.ends_by_position());
        assert!(open.within(0, 4));
        assert!(!open.within(0, 5), "written after the read began");
        // End-of-partition events say nothing here: the listed end does.
        open.reached_eof(1);
        assert_eq!(open.unfinished(), vec![0, 1]);
        open.at_position(1, 1);
        assert_eq!(open.unfinished(), vec![0, 1]);
        open.at_position(1, 2);
        assert_eq!(open.unfinished(), vec![0]);
        assert!(!open.within(1, 0), "a finished partition passes nothing on");
        open.at_position(0, 7);
        assert!(open.is_done());
    }

    #[test]
    fn eof_ends_a_partition_and_every_record_is_passed_on() {
        let read = BoundedRead {
            topic: "t",
            partitions: vec![(0, Offset::Offset(10)), (1, Offset::Beginning)],
            until: Until::PartitionEof,
            stop: Stop::TimeLimit(Duration::from_secs(1)),
        };
        let mut open = Open::new(&read);
        assert!(!open.ends_by_position());
        open.at_position(0, 1_000);
        assert_eq!(open.unfinished(), vec![0, 1]);
        open.reached_eof(0);
        assert_eq!(open.unfinished(), vec![1]);
        assert!(open.within(0, 1_000), "records after the event still count");
        open.reached_eof(1);
        assert!(open.is_done());
    }

    #[test]
    fn a_time_limit_counts_from_the_start_a_stall_from_the_last_record() {
        let read = BoundedRead {
            topic: "t",
            partitions: vec![(3, Offset::Beginning)],
            until: Until::PartitionEof,
            stop: Stop::TimeLimit(Duration::from_secs(10)),
        };
        let open = Open::new(&read);
        let t0 = Instant::now();
        let secs = |s| t0 + Duration::from_secs(s);

        let mut limit = Patience::new(Stop::TimeLimit(Duration::from_secs(10)), t0);
        limit.progressed(secs(9));
        assert!(limit.check(secs(10), &open).is_ok());
        assert!(matches!(
            limit.check(secs(11), &open),
            Err(BoundedReadError::TimeLimit(_))
        ));

        let mut stall = Patience::new(Stop::Stall(Duration::from_secs(10)), t0);
        stall.progressed(secs(9));
        assert!(stall.check(secs(19), &open).is_ok());
        let error = stall.check(secs(20), &open).unwrap_err();
        assert_eq!(
            error.to_string(),
            "no progress for 10 s with partitions [3] unfinished (an open transaction?)"
        );
    }
}
