//! Writing a processed batch and committing it: a transaction left
//! committing on a blocking thread (exactly-once), or acknowledged outputs
//! then offsets (at-least-once); and abandoning a failed batch.

use super::*;

impl Processor {
    /// Begins the batch's transaction and writes its outputs, dead letters
    /// and input offsets into it, then commits it on a blocking thread:
    /// commit_transaction flushes every output, which takes as long as the
    /// broker needs, and the next batch is processed meanwhile. The
    /// committed offsets come back for the lag metric.
    pub(super) async fn start_commit(
        &self,
        batch: &[OwnedMessage],
        outputs: Vec<Output>,
    ) -> Result<CommitHandle, BatchError> {
        tokio::task::block_in_place(|| self.producer.begin_transaction())
            .map_err(BatchError::kafka("begin_transaction"))?;
        let started = Instant::now();
        for output in outputs {
            // Dead letters go into the transaction like outputs: they are
            // written exactly when the offsets past their records commit.
            let record = match output {
                Output::Record(record, _) => record,
                Output::DeadLetter(letter) => letter.into_record(),
            };
            // Delivery is confirmed by commit_transaction as a whole.
            enqueue(&self.producer, &record)
                .await
                .map_err(BatchError::kafka("produce"))?;
        }
        self.phase("produce", started);
        let offsets = next_offsets(batch).map_err(BatchError::kafka("offsets"))?;
        let group = self
            .consumer
            .group_metadata()
            .ok_or(BatchError::NoGroupMetadata)?;
        let producer = self.producer.clone();
        let timeout = self.kafka_timeout;
        let phases = self.metrics.batch_phase_seconds.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            producer
                .send_offsets_to_transaction(&offsets, &group, timeout)
                .map_err(BatchError::kafka("send_offsets_to_transaction"))?;
            let sent = Instant::now();
            phases
                .with_label_values(&["offsets"])
                .observe((sent - started).as_secs_f64());
            producer
                .commit_transaction(timeout)
                .map_err(BatchError::kafka("commit_transaction"))?;
            phases
                .with_label_values(&["commit"])
                .observe(sent.elapsed().as_secs_f64());
            Ok(Some(offsets))
        }))
    }

    /// Outputs and dead letters are acknowledged before the offsets commit.
    /// Dead letters are retried until acknowledged (or `hard_stop`), so a
    /// failed dead-letter write does not send the batch's outputs again.
    pub(super) async fn commit_at_least_once(
        &self,
        batch: &[OwnedMessage],
        outputs: Vec<Output>,
        hard_stop: &CancellationToken,
    ) -> Result<(), BatchError> {
        let mut deliveries = Vec::new();
        let mut dead_letters = Vec::new();
        for output in outputs {
            match output {
                Output::Record(record, _) => deliveries.push(
                    enqueue(&self.producer, &record)
                        .await
                        .map_err(BatchError::kafka("produce"))?,
                ),
                Output::DeadLetter(letter) => {
                    dead_letters.push(send_dead_letter(&self.producer, letter, hard_stop))
                }
            }
        }
        let outputs_acked = async {
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => {
                        return Err(BatchError::Kafka {
                            stage: "produce",
                            source: e,
                        })
                    }
                    Err(_) => {
                        return Err(BatchError::Kafka {
                            stage: "produce",
                            source: KafkaError::Canceled,
                        })
                    }
                }
            }
            Ok(())
        };
        let (outputs_acked, dead_letters_acked) =
            tokio::join!(outputs_acked, futures::future::join_all(dead_letters));
        outputs_acked?;
        for acked in dead_letters_acked {
            acked?;
        }
        let offsets = next_offsets(batch).map_err(BatchError::kafka("offsets"))?;
        tokio::task::block_in_place(|| self.consumer.commit(&offsets, CommitMode::Sync))
            .map_err(BatchError::kafka("commit"))
    }

    /// Aborts the open transaction (if one may be open) and seeks back to
    /// the batch's first offsets so its records are consumed again. An error
    /// here is fatal (see [`rewind`]).
    pub(super) fn abandon_batch(
        &self,
        batch: &[OwnedMessage],
        abort: bool,
        shutdown: &CancellationToken,
    ) -> Result<(), BatchError> {
        if abort && self.guarantee == ProcessingGuarantee::ExactlyOnce {
            if let Err(source) =
                tokio::task::block_in_place(|| self.producer.abort_transaction(self.kafka_timeout))
            {
                let error = BatchError::Kafka {
                    stage: "abort_transaction",
                    source,
                };
                if error.is_fatal() {
                    return Err(error);
                }
                // The next batch's begin_transaction fails until an abort
                // goes through, and that batch's failure aborts again.
                tracing::warn!(%error, "abort_transaction failed");
            }
        }
        if shutdown.is_cancelled() {
            // The processor commits nothing more before it exits; the next
            // start reads the batch again from the committed offsets.
            return Ok(());
        }
        rewind(
            first_offsets(batch),
            |topic, partition, offset| {
                tokio::task::block_in_place(|| {
                    self.consumer
                        .seek(topic, partition, Offset::Offset(offset), self.kafka_timeout)
                })
            },
            |topic, partition| {
                let assignment = self.consumer.assignment()?;
                let assigned = assignment.find_partition(topic, partition).is_some();
                Ok(assigned)
            },
        )
    }
}
