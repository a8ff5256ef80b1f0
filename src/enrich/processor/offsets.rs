//! Offsets of a batch: what to commit after it, and where to rewind the
//! consumer when it failed.

use std::collections::BTreeMap;

use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::BatchError;

/// The offsets to commit after a batch: last offset + 1 per partition.
pub fn next_offsets(batch: &[OwnedMessage]) -> Result<TopicPartitionList, KafkaError> {
    let mut last: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for message in batch {
        let entry = last
            .entry((message.topic().to_owned(), message.partition()))
            .or_insert(message.offset());
        *entry = (*entry).max(message.offset());
    }
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in last {
        offsets.add_partition_offset(&topic, partition, Offset::Offset(offset + 1))?;
    }
    Ok(offsets)
}

/// The first offset of each partition in a batch.
pub(super) fn first_offsets(batch: &[OwnedMessage]) -> BTreeMap<(String, i32), i64> {
    let mut first: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for message in batch {
        let entry = first
            .entry((message.topic().to_owned(), message.partition()))
            .or_insert(message.offset());
        *entry = (*entry).min(message.offset());
    }
    first
}

/// Seeks every partition of a failed batch back to the batch's first offset
/// there. When a seek fails the consumer's position stays past records that
/// were not committed, and the next batch's commit would skip them: that is
/// a fatal [`BatchError::Rewind`], and the processor stops (it resumes from
/// the committed offsets after a restart). The one exception is a partition
/// no longer assigned to this consumer (a rebalance took it meanwhile): this
/// consumer reads nothing more from it, and its next owner starts from its
/// committed offset.
pub(super) fn rewind(
    first_offsets: BTreeMap<(String, i32), i64>,
    mut seek: impl FnMut(&str, i32, i64) -> Result<(), KafkaError>,
    mut assigned: impl FnMut(&str, i32) -> Result<bool, KafkaError>,
) -> Result<(), BatchError> {
    for ((topic, partition), offset) in first_offsets {
        let Err(seek_error) = seek(&topic, partition, offset) else {
            continue;
        };
        let reason = match assigned(&topic, partition) {
            Ok(false) => {
                tracing::info!(%topic, partition, offset, error = %seek_error,
                    "rewind failed on a partition no longer assigned; its next owner starts from the committed offset");
                continue;
            }
            Ok(true) => seek_error.to_string(),
            Err(e) => format!("{seek_error}; the assignment cannot be read either: {e}"),
        };
        return Err(BatchError::Rewind {
            topic,
            partition,
            offset,
            reason,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::AvroError;
    use crate::kafka::SourcePosition;
    use rdkafka::error::RDKafkaErrorCode;

    fn offsets() -> BTreeMap<(String, i32), i64> {
        BTreeMap::from([(("in".to_owned(), 0), 10), (("in".to_owned(), 1), 20)])
    }

    fn seek_error() -> KafkaError {
        KafkaError::Seek("Local: Erroneous state".into())
    }

    #[test]
    fn a_rewind_seeks_every_partition_to_its_first_offset() {
        let mut seeks = Vec::new();
        rewind(
            offsets(),
            |t, p, o| {
                seeks.push((t.to_owned(), p, o));
                Ok(())
            },
            |_, _| panic!("not asked when every seek succeeds"),
        )
        .expect("rewound");
        assert_eq!(seeks, [("in".to_owned(), 0, 10), ("in".to_owned(), 1, 20)]);
    }

    #[test]
    fn a_failed_seek_on_an_assigned_partition_is_fatal() {
        let error = rewind(
            offsets(),
            |_, p, _| if p == 1 { Err(seek_error()) } else { Ok(()) },
            |_, _| Ok(true),
        )
        .unwrap_err();
        assert!(error.is_fatal(), "{error}");
        assert!(
            matches!(&error, BatchError::Rewind { topic, partition: 1, offset: 20, .. } if topic == "in"),
            "{error:?}"
        );
        assert!(error.to_string().starts_with(
            "cannot rewind in [1] to offset 20 after a failed batch (Seek error: Local: Erroneous state)"
        ));
    }

    #[test]
    fn a_failed_seek_with_an_unknown_assignment_is_fatal() {
        let error = rewind(
            offsets(),
            |_, _, _| Err(seek_error()),
            |_, _| {
                Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::BrokerTransportFailure,
                ))
            },
        )
        .unwrap_err();
        assert!(error.is_fatal(), "{error}");
        assert!(matches!(error, BatchError::Rewind { partition: 0, .. }));
    }

    #[test]
    fn a_failed_seek_on_a_revoked_partition_is_not_needed() {
        let mut asked = Vec::new();
        rewind(
            offsets(),
            |_, p, _| if p == 0 { Err(seek_error()) } else { Ok(()) },
            |t, p| {
                asked.push((t.to_owned(), p));
                Ok(false)
            },
        )
        .expect("the revoked partition restarts from its committed offset elsewhere");
        assert_eq!(asked, [("in".to_owned(), 0)]);
    }

    #[test]
    fn only_broken_producers_and_failed_rewinds_are_fatal() {
        assert!(!BatchError::NoGroupMetadata.is_fatal());
        assert!(!BatchError::Kafka {
            stage: "produce",
            source: KafkaError::Canceled
        }
        .is_fatal());
        let registry = BatchError::RegistryUnavailable {
            position: SourcePosition {
                topic: "in".into(),
                partition: 0,
                offset: 1,
            },
            source: AvroError::RegistryUnavailable("503".into()),
        };
        assert!(!registry.is_fatal());
        assert!(!registry.may_have_opened_a_transaction());
    }
}
