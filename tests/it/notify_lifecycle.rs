//! An alert's life in Slack through notify and the fake Slack: resolved in
//! place with a reply in its thread, `resolved_unposted` for an alert never
//! posted, new content as thread replies, a recurrence in the first
//! occurrence's thread, and no reply twice — replayed, ambiguous, or left
//! in flight by a replica that died.

use std::collections::BTreeMap;
use std::time::Duration;

use alertsvc::messages::{
    AlertStatus, DeliveryOutcome, RecurrenceMode, ResolvedUnposted, SlackMessage, UpdateMode,
};
use alertsvc::notify::delivery::{content_hash, version_of};
use alertsvc::notify::ledger::{Claim, Ledger, Owner, Status};
use alertsvc::slack::fake::{FakeMessage, FakeSlack};
use serde_json::{json, Value};

use crate::common::slack::{
    by_alert, deliver_all, no_dead_letters, notify_env, notify_settings, now_ms, outcomes, version,
    Backend, NotifyEnv,
};

const WAIT: Duration = Duration::from_secs(60);

fn with(
    mut message: SlackMessage,
    status: AlertStatus,
    change: impl FnOnce(&mut SlackMessage),
) -> SlackMessage {
    message.status = status;
    change(&mut message);
    message
}

/// The fake's messages about `alert`: its own (top-level or broadcast)
/// and the replies about it, in the order stored.
fn about<'a>(messages: &'a [FakeMessage], alert: &str) -> Vec<&'a FakeMessage> {
    messages
        .iter()
        .filter(|m| m.about_alert() == Some(alert))
        .collect()
}

fn block_types(blocks: &Value) -> Vec<&str> {
    blocks
        .as_array()
        .map(|b| b.iter().filter_map(|b| b["type"].as_str()).collect())
        .unwrap_or_default()
}

async fn ledger(url: &str) -> Ledger {
    let ledger = Ledger::connect(url, 1).await.expect("ledger");
    ledger.migrate().await.expect("migrate");
    ledger
}

/// Firing, then resolved: one top-level post, one edit to the resolved
/// content, one reply in its thread. Then everything again (a new consumer
/// group reads the topic from the start) plus the resolved record once
/// more: nothing new in Slack, every repeat answered `duplicate`.
async fn firing_then_resolved_edits_in_place_and_replies_once(backend: Backend) {
    let NotifyEnv {
        slack,
        env,
        ledger: ledger_url,
        ledger_dir: _ledger_dir,
    } = notify_env(&["C1"], None, backend, 50).await;
    let now = now_ms();
    let firing = version("conn-1", "C1", "Connector failed", 10, now - 20_000);
    let resolved = with(
        version("conn-1", "C1", "Resolved: running again", 11, now - 10_000),
        AlertStatus::Resolved,
        |_| {},
    );
    env.produce_message(&firing).await;
    env.produce_message(&resolved).await;
    let notify = env.start_notify().await;
    let responses = env.read_responses(2, WAIT).await;
    notify.stop().await.expect("clean stop");

    let fake = slack.messages();
    let stored = about(&fake, "conn-1");
    assert_eq!(stored.len(), 2, "the alert and one reply: {fake:?}");
    let (top, reply) = (stored[0], stored[1]);
    assert!(top.thread_ts.is_none());
    assert_eq!(
        top.revisions,
        ["Connector failed", "Resolved: running again"]
    );
    assert_eq!(top.edits, 1);
    assert_eq!(
        top.blocks[0]["text"]["text"], "*Resolved: running again*",
        "edited to the resolved blocks"
    );
    assert_eq!(reply.thread_ts.as_deref(), Some(top.ts.as_str()));
    assert!(!reply.reply_broadcast && !reply.in_channel());
    assert_eq!(reply.text, "Resolved: running again");
    assert_eq!(reply.blocks, json!([]), "a short reply: text only");
    assert_eq!(reply.reply_key(), Some("resolved"));
    assert_eq!(
        slack.posts_by_alert(),
        BTreeMap::from([("conn-1".into(), 1)])
    );

    assert_eq!(responses.len(), 2, "{responses:?}");
    assert_eq!(responses[0].outcome, DeliveryOutcome::Posted);
    assert_eq!(responses[1].outcome, DeliveryOutcome::Updated);
    assert!(responses[1].ok);
    assert_eq!(responses[1].ts.as_deref(), Some(top.ts.as_str()));
    assert_eq!(responses[1].thread_ts.as_deref(), Some(top.ts.as_str()));
    assert_eq!(responses[1].reply_ts.as_deref(), Some(reply.ts.as_str()));
    assert_eq!(responses[1].attempts, 2, "a reply and an edit");

    let entry = ledger(&ledger_url)
        .await
        .get("conn-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.alert_status, AlertStatus::Resolved);
    assert_eq!(entry.reply_key.as_deref(), Some("resolved"));
    assert_eq!(entry.reply_ts.as_deref(), Some(reply.ts.as_str()));
    assert_eq!(entry.reply_pending, None);

    // A replay from the start, and the resolved record duplicated.
    let rerun = env
        .start_notify_with(notify_settings(&env, |n| {
            n.group_id = format!("{}-replay", n.group_id);
        }))
        .await;
    env.produce_message(&resolved).await;
    let responses = env.read_responses(5, WAIT).await;
    rerun.stop().await.expect("clean stop");
    let repeats: Vec<_> = responses[2..].iter().map(|r| r.outcome).collect();
    assert_eq!(repeats, [DeliveryOutcome::Duplicate; 3], "{responses:?}");
    assert!(responses[2..].iter().all(|r| r.ok && r.reply_ts.is_none()));
    let fake = slack.messages();
    assert_eq!(about(&fake, "conn-1").len(), 2, "no second reply: {fake:?}");
    assert_eq!(fake[0].edits, 1, "no second edit");
    no_dead_letters(&env).await;
}

crate::on_both_ledgers!(firing_then_resolved_edits_in_place_and_replies_once => resolved_in_place_sqlite, resolved_in_place_postgres);

/// A resolved record for an alert never posted is answered
/// `resolved_unposted` and posts nothing; the older firing record arriving
/// after it is not posted either (the alert is known resolved), a newer
/// one is. With `resolved_unposted = "post"` the resolved message is
/// posted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_alert_never_posted_posts_nothing() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], None, Backend::Sqlite, 50).await;
    let now = now_ms();
    let resolved = with(
        version("quiet", "C1", "Resolved", 20, now - 10_000),
        AlertStatus::Resolved,
        |_| {},
    );
    // Rendered from an earlier source record, delivered later.
    let late_firing = version("quiet", "C1", "Failing", 19, now - 20_000);
    let firing_again = version("quiet", "C1", "Failing again", 21, now - 5_000);
    let wanted = with(
        version("wanted", "C1", "Resolved, and said so", 30, now - 1_000),
        AlertStatus::Resolved,
        |m| m.resolved_unposted = ResolvedUnposted::Post,
    );
    for m in [&resolved, &late_firing, &resolved] {
        env.produce_message(m).await;
    }
    let notify = env.start_notify().await;
    let responses = env.read_responses(3, WAIT).await;
    assert!(
        slack.messages().is_empty(),
        "nothing posted: {:?}",
        slack.messages()
    );
    for r in &responses {
        assert_eq!(r.outcome, DeliveryOutcome::ResolvedUnposted, "{r:?}");
        assert!(r.ok && r.ts.is_none() && r.error.is_none(), "{r:?}");
        assert_eq!(r.channel_id, "C1");
    }
    env.produce_message(&firing_again).await;
    env.produce_message(&wanted).await;
    let responses = env.read_responses(5, WAIT).await;
    let metrics = env.notify_metrics().await;
    notify.stop().await.expect("clean stop");
    let outcomes = by_alert(&responses);
    assert_eq!(outcomes["quiet"][3].outcome, DeliveryOutcome::Posted);
    assert_eq!(outcomes["wanted"][0].outcome, DeliveryOutcome::Posted);
    let texts: Vec<String> = slack.messages().into_iter().map(|m| m.text).collect();
    assert_eq!(texts, ["Failing again", "Resolved, and said so"]);
    assert_eq!(
        crate::common::metric_value(
            &metrics,
            "alertsvc_slack_posts_total{outcome=\"resolved_unposted\"}"
        ),
        Some(3.0)
    );
    no_dead_letters(&env).await;
}

/// `updates = "thread"`: new content is a reply carrying it (without the
/// buttons), the message stays as first posted; the same content again
/// adds nothing. `edit_and_thread` does both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_content_goes_to_the_thread_as_configured() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], None, Backend::Sqlite, 50).await;
    let now = now_ms();
    let thread = |m: SlackMessage| with(m, AlertStatus::Firing, |m| m.updates = UpdateMode::Thread);
    let both = |m: SlackMessage| {
        with(m, AlertStatus::Firing, |m| {
            m.updates = UpdateMode::EditAndThread
        })
    };
    let messages = [
        thread(version("t", "C1", "t v1", 1, now - 9_000)),
        thread(version(
            "t",
            "C1",
            "t v2: retries exhausted",
            2,
            now - 8_000,
        )),
        thread(version(
            "t",
            "C1",
            "t v2: retries exhausted",
            2,
            now - 8_000,
        )),
        both(version("b", "C1", "b v1", 3, now - 7_000)),
        both(version("b", "C1", "b v2", 4, now - 6_000)),
    ];
    let messages: Vec<&SlackMessage> = messages.iter().collect();
    let responses = deliver_all(&env, &messages, env.settings.clone()).await;
    assert_eq!(
        outcomes(&responses),
        [
            DeliveryOutcome::Posted,
            DeliveryOutcome::Updated,
            DeliveryOutcome::Duplicate,
            DeliveryOutcome::Posted,
            DeliveryOutcome::Updated,
        ]
    );
    let fake = slack.messages();
    let t = about(&fake, "t");
    assert_eq!(t.len(), 2, "{fake:?}");
    assert_eq!(t[0].edits, 0, "thread only: no edit");
    assert_eq!(t[0].text, "t v1");
    assert_eq!(t[1].thread_ts.as_deref(), Some(t[0].ts.as_str()));
    assert_eq!(t[1].text, "t v2: retries exhausted");
    assert_eq!(
        block_types(&t[1].blocks),
        ["section"],
        "the content, not the buttons"
    );
    assert!(t[1].reply_key().is_some_and(|k| k.starts_with("update:")));
    assert_eq!(responses[1].reply_ts.as_deref(), Some(t[1].ts.as_str()));
    assert_eq!(responses[1].ts.as_deref(), Some(t[0].ts.as_str()));

    let b = about(&fake, "b");
    assert_eq!(b.len(), 2, "{fake:?}");
    assert_eq!(b[0].revisions, ["b v1", "b v2"], "edited");
    assert_eq!(b[1].text, "b v2", "and replied");
    assert_eq!(b[1].thread_ts.as_deref(), Some(b[0].ts.as_str()));
    assert_eq!(slack.stats().replies, 2);
}

/// A new occurrence after notify's dedup window, with `recurrence =
/// "thread"`: a reply in the first occurrence's thread, broadcast to the
/// channel; its resolution replies in the same thread and edits the
/// broadcast reply in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recurrence_goes_into_the_first_thread_and_resolves_there() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], None, Backend::Sqlite, 50).await;
    let now = now_ms();
    let threaded =
        |m: SlackMessage, status| with(m, status, |m| m.recurrence = RecurrenceMode::Thread);
    let first = threaded(
        version("conn-9", "C1", "failed", 1, now - 60_000),
        AlertStatus::Firing,
    );
    // 50 s later, past the 30 s window.
    let again = threaded(
        version("conn-9", "C1", "failed again", 2, now - 10_000),
        AlertStatus::Firing,
    );
    let resolved = threaded(
        version("conn-9", "C1", "running again", 3, now - 5_000),
        AlertStatus::Resolved,
    );
    let settings = notify_settings(&env, |n| n.dedup_window = Duration::from_secs(30));
    let responses = deliver_all(&env, &[&first, &again, &resolved], settings).await;
    assert_eq!(
        outcomes(&responses),
        [
            DeliveryOutcome::Posted,
            DeliveryOutcome::Posted,
            DeliveryOutcome::Updated
        ]
    );
    let fake = slack.messages();
    let stored = about(&fake, "conn-9");
    assert_eq!(stored.len(), 3, "{fake:?}");
    let (root, recurrence, notice) = (stored[0], stored[1], stored[2]);
    assert!(root.thread_ts.is_none());
    assert_eq!(root.revisions, ["failed"], "the first occurrence stays");
    assert_eq!(recurrence.thread_ts.as_deref(), Some(root.ts.as_str()));
    assert!(recurrence.reply_broadcast && recurrence.in_channel());
    assert_eq!(
        recurrence.metadata.as_ref().unwrap()["event_payload"]["occurrence"],
        "2"
    );
    assert_eq!(recurrence.revisions, ["failed again", "running again"]);
    assert_eq!(notice.thread_ts.as_deref(), Some(root.ts.as_str()));
    assert_eq!(notice.reply_key(), Some("resolved"));
    assert_eq!(
        notice.metadata.as_ref().unwrap()["event_payload"]["occurrence"],
        "2"
    );
    assert_eq!(
        slack.posts_by_alert(),
        BTreeMap::from([("conn-9".into(), 2)]),
        "two occurrences"
    );
    assert_eq!(responses[1].ts.as_deref(), Some(recurrence.ts.as_str()));
    assert_eq!(responses[1].thread_ts.as_deref(), Some(root.ts.as_str()));
    assert_eq!(responses[2].ts.as_deref(), Some(recurrence.ts.as_str()));
    assert_eq!(responses[2].reply_ts.as_deref(), Some(notice.ts.as_str()));
}

/// A reply Slack stored but answered with a 500 is found in the thread,
/// not made again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_reply_is_looked_up_not_made_twice() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], None, Backend::Sqlite, 50).await;
    let now = now_ms();
    let firing = version("amb", "C1", "failed", 1, now - 9_000);
    env.produce_message(&firing).await;
    let notify = env.start_notify().await;
    env.read_responses(1, WAIT).await;
    // Every post from now on is stored and answered 500.
    slack.set_ambiguous(1.0, Duration::from_secs(30));
    let resolved = with(
        version("amb", "C1", "resolved", 2, now - 5_000),
        AlertStatus::Resolved,
        |_| {},
    );
    env.produce_message(&resolved).await;
    let responses = env.read_responses(2, WAIT).await;
    notify.stop().await.expect("clean stop");
    let fake = slack.messages();
    let stored = about(&fake, "amb");
    assert_eq!(stored.len(), 2, "one reply: {fake:?}");
    assert_eq!(slack.stats().ambiguous, 1);
    assert!(slack.stats().replies_calls >= 1, "looked in the thread");
    assert_eq!(responses[1].outcome, DeliveryOutcome::Updated);
    assert_eq!(
        responses[1].reply_ts.as_deref(),
        Some(stored[1].ts.as_str())
    );
    assert_eq!(stored[0].revisions, ["failed", "resolved"]);
}

/// A replica died after Slack stored its resolved reply and before the
/// ledger said so (`reply_pending`), leaving the edit undone: the alert's
/// next owner finds the reply, makes the edit, and replies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_left_in_flight_by_a_dead_replica_is_found_then_the_edit_made() {
    let NotifyEnv {
        slack,
        env,
        ledger: ledger_url,
        ledger_dir: _ledger_dir,
    } = notify_env(&["C1"], None, Backend::Postgres, 50).await;
    let ledger = ledger(&ledger_url).await;
    let now = now_ms();
    let firing = version("died", "C1", "failed", 1, now - 9_000);
    let resolved = with(
        version("died", "C1", "resolved", 2, now - 5_000),
        AlertStatus::Resolved,
        |_| {},
    );
    let parent_ts = format!("{}.000001", now / 1000 - 8);
    let reply_ts = format!("{}.000002", now / 1000);
    left_mid_reply(&ledger, &slack, &firing, &parent_ts, &reply_ts).await;

    env.produce_message(&resolved).await;
    let notify = env.start_notify().await;
    let responses = env.read_responses(1, WAIT).await;
    notify.stop().await.expect("clean stop");
    assert_eq!(responses[0].outcome, DeliveryOutcome::Updated);
    assert_eq!(responses[0].reply_ts.as_deref(), Some(reply_ts.as_str()));
    let fake = slack.messages();
    assert_eq!(fake.len(), 2, "no second reply: {fake:?}");
    assert_eq!(fake[0].revisions, ["failed", "resolved"]);
    let entry = ledger.get("died").await.unwrap().unwrap();
    assert_eq!(entry.reply_pending, None);
    assert_eq!(entry.reply_key.as_deref(), Some("resolved"));
    assert_eq!(entry.alert_status, AlertStatus::Resolved);
}

/// The ledger and Slack as a replica leaves them when it dies right after
/// Slack stored the resolved reply to `firing`'s post.
async fn left_mid_reply(
    ledger: &Ledger,
    slack: &FakeSlack,
    firing: &SlackMessage,
    parent_ts: &str,
    reply_ts: &str,
) {
    let dead = Owner::new("replica-that-died");
    let now = now_ms();
    let Claim::Held(entry) = ledger
        .claim(&firing.alert_id, "C1", &dead, now, now - 1)
        .await
        .expect("claim")
    else {
        panic!("held by a live replica");
    };
    let mut entry = *entry;
    entry.status = Status::Posted;
    entry.ts = Some(parent_ts.to_owned());
    entry.content_hash = content_hash(firing);
    entry.version = version_of(firing);
    entry.reply_pending = Some("resolved".into());
    ledger
        .save(&entry, &dead, now, Some(now - 1))
        .await
        .expect("save");
    let meta = |event: &str, extra: Value| {
        let mut payload = json!({"alert_id": firing.alert_id, "occurrence": "1"});
        if let (Some(payload), Some(extra)) = (payload.as_object_mut(), extra.as_object()) {
            payload.extend(extra.clone());
        }
        Some(json!({"event_type": event, "event_payload": payload}))
    };
    slack.insert_message(FakeMessage {
        channel: "C1".into(),
        ts: parent_ts.to_owned(),
        text: firing.text.clone(),
        blocks: serde_json::from_str(&firing.blocks).unwrap(),
        metadata: meta("alertsvc_alert", json!({})),
        edits: 0,
        revisions: Vec::new(),
        thread_ts: None,
        reply_broadcast: false,
    });
    slack.insert_message(FakeMessage {
        channel: "C1".into(),
        ts: reply_ts.to_owned(),
        text: "resolved".into(),
        blocks: json!([]),
        metadata: meta("alertsvc_alert_reply", json!({"reply": "resolved"})),
        edits: 0,
        revisions: Vec::new(),
        thread_ts: Some(parent_ts.to_owned()),
        reply_broadcast: false,
    });
}
