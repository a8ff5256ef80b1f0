//! Publishing alert states in batches. Every change asks for its alert's
//! state to be published; one task at a time (the leader) takes every alert
//! waiting, reads their rows in one query, enqueues all their records,
//! awaits the broker's acks together and then marks them published. One
//! publish at a time per alert was the rule before, and still is: a batch
//! names each alert once, and the next batch starts only once the previous
//! one's acks and marks are in, so an older state of an alert never lands
//! after a newer one from this process.
//!
//! The leader runs in a task of its own, so a caller that stops waiting
//! (its future dropped) does not strand the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::oneshot;

use super::service::{state_record, AlertStates, Publisher};
use super::store::StateRow;
use crate::kafka::{enqueue, OutRecord};

/// How long a publish waits for the broker before leaving the row to the
/// background publisher.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// The most alerts one batch publishes: bounds its read's parameters and
/// how long the next batch waits.
const MAX_BATCH: usize = 512;

type Waiters = Vec<oneshot::Sender<bool>>;

/// Alerts waiting for their state to be published, and whether a leader
/// is publishing them.
#[derive(Default)]
pub(super) struct PublishQueue {
    inner: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    /// In the order first asked for, each alert once, with everyone waiting
    /// for it.
    order: Vec<String>,
    waiting: HashMap<String, Waiters>,
    leading: bool,
}

impl PublishQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Nothing in the queue is left half-changed by a panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks for `alert_id`'s state to be published: the answer (`true`
    /// once the broker has the row's latest state), and whether the caller
    /// must start the leader (no one is leading).
    fn join(&self, alert_id: &str) -> (oneshot::Receiver<bool>, bool) {
        let (sender, answer) = oneshot::channel();
        let mut queue = self.lock();
        match queue.waiting.get_mut(alert_id) {
            Some(waiters) => waiters.push(sender),
            None => {
                queue.order.push(alert_id.to_owned());
                queue.waiting.insert(alert_id.to_owned(), vec![sender]);
            }
        }
        let lead = !queue.leading;
        queue.leading = true;
        (answer, lead)
    }

    /// The leader's next batch, at most `max` alerts, oldest first; empty
    /// when none is waiting, and the leader has then stepped down (in the
    /// same lock as [`Self::join`] checks it, so no alert is left without
    /// one).
    fn next_batch(&self, max: usize) -> Vec<(String, Waiters)> {
        let mut queue = self.lock();
        let n = queue.order.len().min(max);
        if n == 0 {
            queue.leading = false;
        }
        let taken: Vec<String> = queue.order.drain(..n).collect();
        taken
            .into_iter()
            .map(|id| {
                let waiters = queue.waiting.remove(&id).unwrap_or_default();
                (id, waiters)
            })
            .collect()
    }

    /// The leader stopped without finishing (a panic): everyone waiting is
    /// answered `false` (the background sweep publishes them) and the next
    /// caller leads.
    fn abandon(&self) {
        let mut queue = self.lock();
        queue.order.clear();
        queue.waiting.clear();
        queue.leading = false;
    }
}

/// Steps the leader down if it stops before the queue is empty.
struct Leading<'a> {
    queue: &'a PublishQueue,
    done: bool,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.queue.abandon();
        }
    }
}

/// A record's place in its batch, its row, and where it landed (partition,
/// offset) or why not.
type Acked<'r> = (usize, &'r StateRow, Result<(i32, i64), String>);

/// What happened to one alert's record in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// On the topic: at `offset` of `partition`, to be marked.
    Landed {
        partition: i32,
        offset: i64,
    },
    /// The topic has it already (marked published), or it is not in the
    /// ledger: nothing to send.
    Nothing {
        published: bool,
    },
    Failed,
}

impl AlertStates {
    /// Publishes the alert's latest state, in the next batch; `true` once
    /// the broker has it.
    pub async fn publish(self: &Arc<Self>, alert_id: &str) -> bool {
        if self.publisher.is_none() {
            return false;
        }
        let (answer, lead) = self.publishing.join(alert_id);
        if lead {
            let states = self.clone();
            tokio::spawn(async move { states.lead().await });
        }
        answer.await.unwrap_or(false)
    }

    /// Publishes batches until no alert is waiting.
    async fn lead(self: Arc<Self>) {
        let Some(publisher) = &self.publisher else {
            self.publishing.abandon();
            return;
        };
        let mut leading = Leading {
            queue: &self.publishing,
            done: false,
        };
        loop {
            let batch = self.publishing.next_batch(MAX_BATCH);
            if batch.is_empty() {
                leading.done = true;
                return;
            }
            let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
            let published = self.publish_batch(publisher, &ids).await;
            for ((_, waiters), published) in batch.into_iter().zip(published) {
                for waiter in waiters {
                    let _ = waiter.send(published);
                }
            }
        }
    }

    /// Publishes the latest state of each of `alert_ids` (named once each):
    /// for each, whether the broker has it.
    async fn publish_batch(&self, publisher: &Publisher, alert_ids: &[&str]) -> Vec<bool> {
        let rows = match self.store.get_records(alert_ids).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(alerts = alert_ids.len(), error = %e, "cannot read the alert states to publish them");
                return vec![false; alert_ids.len()];
            }
        };
        let (mut sent, to_send) = to_send(alert_ids, &rows);
        // All enqueued before any ack is awaited: the producer sends them
        // in as few requests as it can.
        let mut acks = Vec::with_capacity(to_send.len());
        for (i, row) in to_send {
            match enqueue_state(publisher, row).await {
                Ok(delivery) => acks.push((i, row, delivery)),
                Err(e) => {
                    tracing::warn!(alert_id = %row.alert_id, error = %e, "alert state not published; trying again later");
                }
            }
        }
        let landed = join_all(
            acks.into_iter()
                .map(|(i, row, delivery)| async move { (i, row, landed(delivery).await) }),
        )
        .await;
        let marks = settle(&mut sent, landed);
        self.mark_all(&marks).await;
        sent.into_iter().map(published).collect()
    }

    /// Marks each landed record's row published, in one statement.
    async fn mark_all(&self, marks: &[(&StateRow, i32, i64)]) {
        let marks: Vec<(&str, i64, i32, i64)> = marks
            .iter()
            .map(|(row, partition, offset)| {
                (row.alert_id.as_str(), row.version, *partition, *offset)
            })
            .collect();
        if let Err(e) = self.store.mark_published_many(&marks).await {
            // Published again later: harmless, the value is the same.
            tracing::warn!(alerts = marks.len(), error = %e, "cannot record the alert states as published");
        }
    }
}

/// For each of `alert_ids`, what its row (in `rows`, if it has one) needs:
/// nothing, or its record sent (`Failed` until it lands), and those to
/// send with their place in the batch.
fn to_send<'r>(
    alert_ids: &[&str],
    rows: &'r [StateRow],
) -> (Vec<Sent>, Vec<(usize, &'r StateRow)>) {
    let mut by_id: HashMap<&str, &StateRow> =
        rows.iter().map(|r| (r.alert_id.as_str(), r)).collect();
    let mut sending = Vec::new();
    let mut sent = Vec::with_capacity(alert_ids.len());
    for (i, alert_id) in alert_ids.iter().enumerate() {
        sent.push(match by_id.remove(alert_id) {
            None => Sent::Nothing { published: false },
            Some(row) if row.published_version >= row.version => Sent::Nothing { published: true },
            Some(row) => {
                sending.push((i, row));
                Sent::Failed
            }
        });
    }
    (sent, sending)
}

/// Records where each acked record landed in `sent`; the marks to write
/// (row, partition, offset): only for records the broker acked, so a
/// failed one leaves its row's marker where it was.
fn settle<'r>(sent: &mut [Sent], landed: Vec<Acked<'r>>) -> Vec<(&'r StateRow, i32, i64)> {
    let mut marks = Vec::with_capacity(landed.len());
    for (i, row, landed) in landed {
        match landed {
            Ok((partition, offset)) => {
                sent[i] = Sent::Landed { partition, offset };
                marks.push((row, partition, offset));
            }
            Err(e) => {
                tracing::warn!(alert_id = %row.alert_id, error = %e, "alert state not published; trying again later");
            }
        }
    }
    marks
}

/// Whether the broker has the alert's latest state after `sent`.
fn published(sent: Sent) -> bool {
    match sent {
        Sent::Landed { .. } => true,
        Sent::Nothing { published } => published,
        Sent::Failed => false,
    }
}

/// The row's record, encoded and handed to the producer.
async fn enqueue_state(
    publisher: &Publisher,
    row: &StateRow,
) -> Result<rdkafka::producer::DeliveryFuture, String> {
    let payload = publisher
        .codec
        .encode_record(&state_record(row), 64)
        .await
        .map_err(|e| e.to_string())?;
    let key = publisher
        .key_codec
        .encode_str(&row.alert_id)
        .await
        .map_err(|e| e.to_string())?;
    let record = OutRecord {
        topic: publisher.topic.clone(),
        key: Some(key),
        payload: Some(payload),
        headers: None,
    };
    enqueue(&publisher.producer, &record)
        .await
        .map_err(|e| e.to_string())
}

/// Where the record landed (partition, offset), once the broker acked it.
async fn landed(delivery: rdkafka::producer::DeliveryFuture) -> Result<(i32, i64), String> {
    let delivered = tokio::time::timeout(PUBLISH_TIMEOUT, delivery)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|_| "cancelled".to_owned())?
        .map_err(|(e, _)| e.to_string())?;
    Ok((delivered.partition, delivered.offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::state::store::{Place, StateStore};
    use crate::notify::state::{AlertState, StateKind};

    fn answered(answer: &mut oneshot::Receiver<bool>) -> Option<bool> {
        answer.try_recv().ok()
    }

    #[test]
    fn the_first_caller_leads_and_the_rest_wait() {
        let queue = PublishQueue::default();
        let (_a, lead_a) = queue.join("a");
        let (_b, lead_b) = queue.join("b");
        assert!(lead_a);
        assert!(!lead_b, "one leader at a time");
    }

    #[test]
    fn a_batch_takes_every_alert_waiting_once_oldest_first() {
        let queue = PublishQueue::default();
        let (mut a1, _) = queue.join("a");
        let (_b, _) = queue.join("b");
        let (mut a2, _) = queue.join("a");
        let batch = queue.next_batch(10);
        let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(batch[0].1.len(), 2, "both callers for a wait on one record");
        for (_, waiters) in batch {
            for waiter in waiters {
                let _ = waiter.send(true);
            }
        }
        assert_eq!(
            (answered(&mut a1), answered(&mut a2)),
            (Some(true), Some(true))
        );
    }

    #[test]
    fn a_batch_is_bounded_and_the_rest_wait_for_the_next() {
        let queue = PublishQueue::default();
        for id in ["a", "b", "c"] {
            queue.join(id);
        }
        let first: Vec<String> = queue.next_batch(2).into_iter().map(|(id, _)| id).collect();
        let second: Vec<String> = queue.next_batch(2).into_iter().map(|(id, _)| id).collect();
        assert_eq!(
            (first, second),
            (vec!["a".into(), "b".into()], vec!["c".into()])
        );
    }

    #[test]
    fn an_alert_asked_for_during_a_batch_is_in_the_next_one() {
        // Its change may be newer than the row the running batch read.
        let queue = PublishQueue::default();
        queue.join("a");
        let running = queue.next_batch(10);
        assert_eq!(running.len(), 1);
        let (_again, lead) = queue.join("a");
        assert!(!lead, "the running leader takes it");
        let next: Vec<String> = queue.next_batch(10).into_iter().map(|(id, _)| id).collect();
        assert_eq!(next, ["a"]);
    }

    #[test]
    fn the_leader_steps_down_when_nothing_waits() {
        let queue = PublishQueue::default();
        queue.join("a");
        assert_eq!(queue.next_batch(10).len(), 1);
        assert!(queue.next_batch(10).is_empty());
        let (_b, lead) = queue.join("b");
        assert!(lead, "the next caller leads again");
    }

    #[test]
    fn an_abandoned_batch_answers_false_and_frees_the_lead() {
        let queue = PublishQueue::default();
        let (mut a, _) = queue.join("a");
        {
            let _leading = Leading {
                queue: &queue,
                done: false,
            };
        }
        assert!(
            matches!(a.try_recv(), Err(oneshot::error::TryRecvError::Closed)),
            "answered (false) by its sender's drop"
        );
        let (_b, lead) = queue.join("b");
        assert!(lead);
    }

    #[test]
    fn only_a_landed_or_already_published_record_counts() {
        assert!(published(Sent::Landed {
            partition: 0,
            offset: 1
        }));
        assert!(published(Sent::Nothing { published: true }));
        assert!(!published(Sent::Nothing { published: false }));
        assert!(!published(Sent::Failed));
    }

    fn row(alert_id: &str, version: i64, published_version: i64) -> StateRow {
        StateRow {
            alert_id: alert_id.into(),
            state: AlertState {
                kind: StateKind::Firing,
                actor: None,
                at: 1,
                snoozed_until: None,
                occurrence: 1,
            },
            version,
            published_version,
            shown_version: version,
            place: Place {
                channel_id: Some("C1".into()),
                message_ts: Some("1.2".into()),
                pipeline: "p".into(),
                ..Place::default()
            },
        }
    }

    #[test]
    fn only_rows_behind_the_topic_are_sent() {
        let rows = [row("behind", 2, 1), row("current", 3, 3)];
        let (sent, sending) = to_send(&["gone", "current", "behind"], &rows);
        assert_eq!(
            sent,
            [
                Sent::Nothing { published: false },
                Sent::Nothing { published: true },
                Sent::Failed,
            ]
        );
        let sending: Vec<(usize, &str)> = sending
            .iter()
            .map(|(i, r)| (*i, r.alert_id.as_str()))
            .collect();
        assert_eq!(sending, [(2, "behind")]);
    }

    #[test]
    fn a_failed_ack_is_not_marked_and_the_others_are() {
        let rows = [row("a", 1, 0), row("b", 1, 0), row("c", 2, 1)];
        let mut sent = vec![Sent::Failed; 3];
        let landed = vec![
            (0, &rows[0], Ok((4, 10))),
            (1, &rows[1], Err("timed out".to_owned())),
            (2, &rows[2], Ok((7, 11))),
        ];
        let marks: Vec<(&str, i64, i32, i64)> = settle(&mut sent, landed)
            .into_iter()
            .map(|(r, p, o)| (r.alert_id.as_str(), r.version, p, o))
            .collect();
        assert_eq!(marks, [("a", 1, 4, 10), ("c", 2, 7, 11)]);
        let published: Vec<bool> = sent.into_iter().map(published).collect();
        assert_eq!(published, [true, false, true]);
    }

    /// States, a ledger and a producer to a mock broker with the
    /// `alert-state` topic.
    struct Rig {
        _dir: tempfile::TempDir,
        cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        states: Arc<AlertStates>,
        /// Another pool on the ledger, for reading the markers.
        pool: sqlx::AnyPool,
    }

    async fn rig() -> Rig {
        use crate::avro::{build_codecs, build_key_codecs};
        use crate::config::{Settings, Sources};
        use crate::kafka::{client_config, Role, StageContext};
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("l.db").display());
        let ledger = crate::notify::ledger::Ledger::connect(&url, 4)
            .await
            .expect("ledger");
        ledger.migrate().await.expect("migrate");
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("alert-state", 4, 1).expect("topic");
        let config = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut settings = Settings::load(&Sources::files_only(config.clone())).expect("settings");
        settings.kafka.bootstrap_servers = cluster.bootstrap_servers();
        let codecs = build_codecs(&config, &settings).expect("codecs");
        let key_codecs = build_key_codecs(&config, &settings).expect("key codecs");
        let mut client = client_config(
            &settings.kafka,
            "test",
            &Role::IdempotentProducer { linger_ms: 5 },
        );
        // A refused record fails fast instead of being retried for minutes.
        client.set("message.timeout.ms", "3000");
        let producer = client
            .create_with_context(StageContext { lag: None })
            .expect("producer");
        let publisher = Publisher {
            producer,
            topic: "alert-state".into(),
            codec: codecs["alert_state"].clone(),
            key_codec: key_codecs["alert_state"].clone(),
        };
        let states = Arc::new(AlertStates::new(
            StateStore::new(&ledger),
            Some(publisher),
            None,
        ));
        let pool = crate::db::connect(&url, 1).await.expect("pool");
        Rig {
            _dir: dir,
            cluster,
            states,
            pool,
        }
    }

    async fn write(states: &AlertStates, alert_id: &str, expected: Option<i64>, kind: StateKind) {
        let state = AlertState {
            kind,
            actor: None,
            at: 1,
            snoozed_until: None,
            occurrence: 1,
        };
        let place = row(alert_id, 1, 0).place;
        assert!(states
            .store
            .compare_and_set(alert_id, expected, &state, &place, true)
            .await
            .expect("write"));
    }

    async fn stored(states: &AlertStates, alert_id: &str) -> StateRow {
        states
            .store
            .get(alert_id)
            .await
            .expect("read")
            .expect("row")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_asked_for_together_are_all_marked_and_a_newer_state_lands_later() {
        let rig = rig().await;
        let states = &rig.states;
        let ids: Vec<String> = (0..50).map(|i| format!("a-{i}")).collect();
        for id in &ids {
            write(states, id, None, StateKind::Firing).await;
        }
        let published = join_all(ids.iter().map(|id| states.publish(id))).await;
        assert!(published.iter().all(|&p| p), "{published:?}");
        for id in &ids {
            let row = stored(states, id).await;
            assert_eq!(row.published_version, 1, "{id}");
        }
        let first = stored(states, "a-0").await;
        let offset_of = async |alert_id: &str| -> (i64, i64) {
            let row: (i64, i64) = sqlx::query_as(
                "SELECT published_version, published_offset FROM alert_states WHERE alert_id = $1",
            )
            .bind(alert_id)
            .fetch_one(&rig.pool)
            .await
            .expect("marker");
            row
        };
        let (_, before) = offset_of("a-0").await;
        write(states, "a-0", Some(first.version), StateKind::Resolved).await;
        assert!(states.publish("a-0").await);
        let (version, after) = offset_of("a-0").await;
        assert_eq!(version, 2);
        assert!(
            after > before,
            "the newer record is later: {before} then {after}"
        );
        // Nothing behind: asked again, it is answered without a record.
        assert!(states.publish("a-0").await);
        assert_eq!(offset_of("a-0").await, (2, after));
        assert!(!states.publish("no-such-alert").await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_publisher_reads_the_record_without_the_messages_content() {
        let rig = rig().await;
        let states = &rig.states;
        let state = AlertState {
            kind: StateKind::Snoozed,
            actor: Some(crate::notify::state::Actor {
                id: "U1".into(),
                name: Some("Ann".into()),
            }),
            at: 5,
            snoozed_until: Some(9),
            occurrence: 2,
        };
        let place = Place {
            channel_id: Some("C1".into()),
            message_ts: Some("1.2".into()),
            pipeline: "p".into(),
            group_key: Some("g".into()),
            text: Some("the text".into()),
            blocks: Some("[{\"type\":\"divider\"}]".into()),
        };
        assert!(states
            .store
            .compare_and_set("x", None, &state, &place, false)
            .await
            .expect("write"));
        let full = stored(states, "x").await;
        assert_eq!(full.place.blocks, place.blocks, "the full row has it");
        let records = states
            .store
            .get_records(&["none", "x"])
            .await
            .expect("read");
        let mut expected = full.clone();
        expected.place.text = None;
        expected.place.blocks = None;
        assert_eq!(records, vec![expected]);
        assert_eq!(state_record(&records[0]), state_record(&full));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_record_leaves_the_marker_unmoved_until_published_again() {
        use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
        let rig = rig().await;
        let states = &rig.states;
        write(states, "x", None, StateKind::Firing).await;
        rig.cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 20],
        );
        assert!(!states.publish("x").await, "the broker refused it");
        assert_eq!(stored(states, "x").await.published_version, 0);
        rig.cluster.clear_request_errors(RDKafkaApiKey::Produce);
        assert_eq!(states.publish_pending().await.expect("sweep"), 1);
        assert_eq!(stored(states, "x").await.published_version, 1);
    }
}
