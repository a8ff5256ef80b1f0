//! One batch's records through the pipelines: on the consumer's task, or
//! split among `enrich.workers` threads (kept for the processor's life)
//! with outputs kept in input order.

use super::*;

impl Processor {
    pub(super) async fn process_batch(
        &self,
        batch: &[OwnedMessage],
    ) -> Result<Vec<Output>, BatchError> {
        if parallel::workers_for(batch.len(), self.workers.count()) <= 1 {
            return self.process_chunk(batch).await;
        }
        // Each worker runs its records' (normally ready) registry lookups
        // on this runtime; the first error in input order wins, as it did
        // processing them one by one.
        let runtime = tokio::runtime::Handle::current();
        let chunks = tokio::task::block_in_place(|| {
            self.workers
                .map_blocks(batch, |block| runtime.block_on(self.process_chunk(block)))
        });
        let mut outputs = Vec::with_capacity(batch.len());
        for chunk in chunks {
            outputs.extend(chunk?);
        }
        Ok(outputs)
    }

    /// [`Self::process`] for each record in order; stops at the first error.
    async fn process_chunk(&self, records: &[OwnedMessage]) -> Result<Vec<Output>, BatchError> {
        let mut outputs = Vec::new();
        for message in records {
            outputs.extend(self.process(message).await?);
        }
        Ok(outputs)
    }

    /// Applies every pipeline reading this record's topic; returns the
    /// records to write (outputs and dead letters), or that the Schema
    /// Registry could not be reached (the batch is then tried again).
    async fn process(&self, message: &OwnedMessage) -> Result<Vec<Output>, BatchError> {
        let span = tracing::debug_span!(
            "record",
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset()
        );
        self.process_record(message).instrument(span).await
    }

    async fn process_record(&self, message: &OwnedMessage) -> Result<Vec<Output>, BatchError> {
        let topic = message.topic();
        let Some(input) = self.inputs.get(topic) else {
            return Ok(Vec::new());
        };
        let dead = |stage: &'static str, reason: String, pipeline: Option<&str>| {
            let dlq_topic = format!("{topic}{}", self.dlq_suffix);
            let letter = DeadLetterRecord::from_message(dlq_topic, message, stage, reason);
            Output::DeadLetter(match pipeline {
                Some(pipeline) => letter.with_pipeline(pipeline),
                None => letter,
            })
        };
        // Not the record's fault: the batch waits for the registry instead.
        let unavailable = |source: AvroError| BatchError::RegistryUnavailable {
            position: SourcePosition::of(message),
            source,
        };
        let all_pipelines_dlq = |stage: &'static str| {
            for route in &input.routes {
                self.metrics
                    .records_in
                    .with_label_values(&[&route.pipeline.name])
                    .inc();
                self.metrics
                    .records_dlq
                    .with_label_values(&[&route.pipeline.name, stage])
                    .inc();
            }
        };

        let key = match message.key() {
            None => None,
            Some(bytes) => match input.key_codec.decode(bytes).await {
                Ok(key) => Some(key),
                Err(e) if e.is_transient() => return Err(unavailable(e)),
                Err(e) => {
                    all_pipelines_dlq("decode");
                    return Ok(vec![dead(
                        "decode",
                        format!("cannot decode key: {e}"),
                        None,
                    )]);
                }
            },
        };
        let Some(payload) = message.payload() else {
            all_pipelines_dlq("decode");
            return Ok(vec![dead(
                "decode",
                "record has no value (tombstone on a stream)".into(),
                None,
            )]);
        };
        let source = Source {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            key: key.as_ref(),
            timestamp_ms: message.timestamp().to_millis().unwrap_or_else(now_millis),
        };
        // Filters read the fields of a record the codec can vouch for
        // without decoding it: a record every pipeline filters out is never
        // decoded. Any other record is decoded as before, so one that does
        // not decode is dead-lettered as before.
        let scan = input.codec.scan(payload);
        let prefilters: Vec<Prefilter> = input
            .routes
            .iter()
            .map(|route| match &scan {
                Some(fields) => route.pipeline.prefilter(&source, fields),
                None => Prefilter::Undecided,
            })
            .collect();
        let all_filtered =
            !prefilters.is_empty() && prefilters.iter().all(|p| *p == Prefilter::Filtered);
        let event = if all_filtered {
            None
        } else {
            match input.codec.decode(payload).await {
                Ok(event) => Some(event),
                Err(e) if e.is_transient() => return Err(unavailable(e)),
                Err(e) => {
                    all_pipelines_dlq("decode");
                    return Ok(vec![dead(
                        "decode",
                        format!("cannot decode value: {e}"),
                        None,
                    )]);
                }
            }
        };

        let mut out = Vec::new();
        for (route, prefilter) in input.routes.iter().zip(prefilters) {
            let name = route.pipeline.name.as_str();
            self.metrics.records_in.with_label_values(&[name]).inc();
            let tables = self.tables.as_ref();
            // The event is decoded unless every pipeline filtered it.
            let verdict = match (prefilter, &event) {
                (Prefilter::Passed, Some(event)) => {
                    route.pipeline.apply_passed(&source, event, tables)
                }
                (Prefilter::Undecided, Some(event)) => route.pipeline.apply(&source, event, tables),
                (Prefilter::Filtered, _) | (_, None) => Verdict::Filtered,
            };
            match verdict {
                Verdict::Emit(slack_message) => {
                    let encoded = match route
                        .output_codec
                        .encode_record(
                            &slack_message,
                            slack_message.blocks.len() + slack_message.text.len(),
                        )
                        .await
                    {
                        Ok(payload) => route
                            .output_key_codec
                            .encode_str(&slack_message.channel_id)
                            .await
                            .map(|key| (key, payload))
                            .map_err(|e| (e, "the Slack message's key (its channel id)")),
                        Err(e) => Err((e, "the Slack message")),
                    };
                    match encoded {
                        Ok((key, payload)) => {
                            tracing::debug!(alert_id = %slack_message.alert_id, channel = %slack_message.channel_id, "alert");
                            self.metrics.records_out.with_label_values(&[name]).inc();
                            out.push(Output::Record(
                                OutRecord {
                                    topic: route.output_topic.clone(),
                                    key: Some(key),
                                    payload: Some(payload),
                                    headers: None,
                                },
                                Emitted {
                                    latency: self.metrics.event_latency.with_label_values(&[name]),
                                    event_ms: source.timestamp_ms,
                                },
                            ));
                        }
                        Err((e, _)) if e.is_transient() => return Err(unavailable(e)),
                        Err((e, what)) => {
                            self.metrics
                                .records_dlq
                                .with_label_values(&[name, "encode"])
                                .inc();
                            out.push(dead(
                                "encode",
                                format!("cannot encode {what}: {e}"),
                                Some(name),
                            ));
                        }
                    }
                }
                Verdict::Filtered => {
                    self.metrics
                        .records_dropped
                        .with_label_values(&[name, "filtered"])
                        .inc();
                }
                Verdict::Suppressed => {
                    self.metrics
                        .records_dropped
                        .with_label_values(&[name, "suppressed"])
                        .inc();
                }
                Verdict::JoinMiss { join, table } => {
                    tracing::debug!(pipeline = name, join, table, "join miss");
                    self.metrics
                        .records_dropped
                        .with_label_values(&[name, "join_miss"])
                        .inc();
                    self.metrics
                        .join_misses
                        .with_label_values(&[name, &table])
                        .inc();
                }
                Verdict::Reject(e) => {
                    self.metrics
                        .records_dlq
                        .with_label_values(&[name, e.stage()])
                        .inc();
                    out.push(dead(e.stage(), e.to_string(), Some(name)));
                }
            }
        }
        Ok(out)
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
