//! What notify does with alert states on its own: a change whose publish
//! never happened is published by the next run, a change Slack could not
//! show (an outage, its rate limit, a crash before the edit) reaches the
//! message later, and an alert whose snooze ended is firing again — on the
//! topic and on its message.

use std::time::Duration;

use alertsvc::notify::ledger::Ledger;
use alertsvc::notify::state::store::{Place, StateStore};
use alertsvc::notify::state::{AlertState, StateKind};
use alertsvc::slack::fake::{FakeMessage, OutageMode};
use serde_json::Value;

use crate::common::slack::{
    button, click, menu_choice, notify_env, now_ms, read_alert_states, stateful_message,
    wait_message, Backend, NotifyEnv,
};
use crate::common::{eventually, RunningStage};
use crate::notify_state::{ada, at, controls, record, state_line, state_of, HOUR_MS, WAIT};

/// A change written to the ledger whose publish never happened (the
/// replica died in between) is published by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_left_unpublished_is_published_by_the_next_run() {
    let NotifyEnv {
        env,
        ledger,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], None, Backend::Sqlite, 50).await;
    let db = Ledger::connect(&ledger, 1).await.expect("ledger");
    db.migrate().await.expect("migrate");
    let store = StateStore::new(&db);
    // Snoozed for another hour: the next run publishes it as it is.
    let now = crate::common::slack::now_ms();
    let state = alertsvc::notify::state::AlertState {
        kind: StateKind::Snoozed,
        actor: ada(),
        at: now,
        snoozed_until: Some(now + HOUR_MS),
        occurrence: 1,
    };
    let place = Place {
        channel_id: Some("C1".into()),
        message_ts: Some("1700000000.000100".into()),
        pipeline: "test".into(),
        group_key: None,
        text: Some("t".into()),
        blocks: Some("[]".into()),
    };
    assert!(store
        .compare_and_set("orphan", None, &state, &place, true)
        .await
        .expect("write"));
    let row = store.get("orphan").await.expect("read").expect("row");
    assert_eq!((row.version, row.published_version), (1, 0));

    let notify = env.start_notify().await;
    let states = read_alert_states(&env, 1, WAIT).await;
    assert_eq!(
        states,
        [(Some("orphan".to_owned()), record(&row, "1700000000.000100"))]
    );
    // Marked published: the next sweep leaves it alone. Polled, since the
    // mark follows the broker's acknowledgement.
    eventually(WAIT, "the row marked published", async || {
        let row = store.get("orphan").await.expect("read")?;
        (row.published_version == 1).then_some(())
    })
    .await;
    notify.stop().await.expect("clean stop");
}

/// Replicas publish an alert's state independently, so a replica's publish
/// of an older state can land on the topic after a peer's newer one, and
/// compaction would keep the older for good. The ledger follows the record
/// last on the topic, whichever mark arrives first, and the next sweep
/// publishes the row's state again.
async fn an_older_state_landing_last_is_published_again(backend: Backend) {
    let NotifyEnv {
        env,
        ledger,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], None, backend, 50).await;
    let db = Ledger::connect(&ledger, 1).await.expect("ledger");
    db.migrate().await.expect("migrate");
    let store = StateStore::new(&db);
    let ts = "1700000000.000100";
    let place = Place {
        channel_id: Some("C1".into()),
        message_ts: Some(ts.into()),
        pipeline: "test".into(),
        group_key: None,
        text: Some("t".into()),
        blocks: Some("[]".into()),
    };
    let now = now_ms();
    let firing = AlertState {
        kind: StateKind::Firing,
        actor: None,
        at: now,
        snoozed_until: None,
        occurrence: 1,
    };
    let acknowledged = AlertState {
        kind: StateKind::Acknowledged,
        actor: ada(),
        at: now + 1_000,
        ..firing.clone()
    };
    assert!(store
        .compare_and_set("raced", None, &firing, &place, true)
        .await
        .expect("write"));
    let older = store.get("raced").await.expect("read").expect("row");
    assert!(store
        .compare_and_set("raced", Some(1), &acknowledged, &place, true)
        .await
        .expect("write"));
    let newer = store.get("raced").await.expect("read").expect("row");
    assert_eq!((older.version, newer.version), (1, 2));

    // Replica B publishes version 2; replica A, which read version 1 just
    // before the click, lands its record after B's.
    let key = Value::String("raced".into());
    let (partition, first) = env
        .produce_keyed("alert_state", &key, &record(&newer, ts))
        .await;
    let (same, last) = env
        .produce_keyed("alert_state", &key, &record(&older, ts))
        .await;
    assert_eq!(same, partition, "one key, one partition");
    assert!(last > first);
    let published = async || store.get("raced").await.expect("read").expect("row");
    store
        .mark_published("raced", 1, partition, last)
        .await
        .expect("mark");
    // B's mark, arriving later, is for a record that is no longer last.
    store
        .mark_published("raced", 2, partition, first)
        .await
        .expect("mark");
    assert_eq!(published().await.published_version, 1);

    let notify = env.start_notify().await;
    let states: Vec<Value> = read_alert_states(&env, 3, WAIT)
        .await
        .into_iter()
        .map(|(key, value)| {
            assert_eq!(key.as_deref(), Some("raced"));
            value
        })
        .collect();
    assert_eq!(
        states,
        [record(&newer, ts), record(&older, ts), record(&newer, ts)],
        "the last record is the alert's state"
    );
    eventually(WAIT, "the row marked published at version 2", async || {
        (published().await.published_version == 2).then_some(())
    })
    .await;
    notify.stop().await.expect("clean stop");
}

crate::on_both_ledgers!(an_older_state_landing_last_is_published_again => an_older_state_landing_last_is_published_again_sqlite, an_older_state_landing_last_is_published_again_postgres);

/// notify on `backend` has posted the stateful alert `alert_id` to C1:
/// the environment, the running notify and the message as Slack shows it.
async fn one_posted(backend: Backend, alert_id: &str) -> (NotifyEnv, RunningStage, FakeMessage) {
    let env = notify_env(&["C1"], None, backend, 50).await;
    env.env
        .produce_message(&stateful_message(alert_id, "C1", "Connector failed"))
        .await;
    let notify = env.env.start_notify().await;
    env.env.read_responses(1, WAIT).await;
    let posted = wait_message(&env.slack, alert_id, |_| true, WAIT).await;
    (env, notify, posted)
}

/// The acknowledgement line `ada` leaves on a message at `at_ms`.
fn acknowledged_line(at_ms: i64) -> String {
    format!(":eyes: Acknowledged by <@U0ADA> at {}", at(at_ms))
}

/// Waits until `alert_id`'s message shows `ada`'s acknowledgement recorded
/// in the ledger, and its row says so; returns the message.
async fn wait_acknowledged_shown(
    slack: &alertsvc::slack::fake::FakeSlack,
    ledger: &str,
    alert_id: &str,
) -> FakeMessage {
    let row = eventually(WAIT, "the acknowledgement shown", async || {
        let row = state_of(ledger, alert_id).await;
        (row.state.kind == StateKind::Acknowledged && row.shown_version == row.version)
            .then_some(row)
    })
    .await;
    let line = acknowledged_line(row.state.at);
    wait_message(
        slack,
        alert_id,
        |m| state_line(m).as_deref() == Some(line.as_str()),
        WAIT,
    )
    .await
}

/// A click while every Slack call answers 503 for longer than the click's
/// own tries: the state is recorded at once, and shown on the message by
/// the background sweep once Slack is back, with one edit.
async fn a_click_during_an_outage_is_shown_once_slack_is_back(backend: Backend) {
    let (started, notify, posted) = one_posted(backend, "out-1").await;
    let NotifyEnv {
        slack, env, ledger, ..
    } = &started;

    slack.set_outage(Some(OutageMode::ServerError(503)));
    let ack = button("alertsvc_acknowledge", "out-1");
    assert_eq!(click(env, &posted, ("U0ADA", "ada"), ack).await, 200);
    let acked = state_of(ledger, "out-1").await;
    assert_eq!(
        (acked.state.kind, acked.version, acked.shown_version),
        (StateKind::Acknowledged, 2, 1),
        "recorded, not shown while Slack is down"
    );
    let refused = slack.stats().outage_rejections;
    eventually(WAIT, "the edit tried during the outage", async || {
        (slack.stats().outage_rejections > refused).then_some(())
    })
    .await;
    // The outage outlasts the click's own tries (three, a second apart):
    // what shows the state afterwards is the background sweep.
    tokio::time::sleep(Duration::from_secs(4)).await;

    slack.set_outage(None);
    let shown = wait_acknowledged_shown(slack, ledger, "out-1").await;
    assert_eq!(shown.edits, 1);
    assert_eq!(slack.stats().updates, 1, "one edit once Slack is back");
    notify.stop().await.expect("clean stop");
}

crate::on_both_ledgers!(a_click_during_an_outage_is_shown_once_slack_is_back => a_click_during_an_outage_is_shown_once_slack_is_back_sqlite, a_click_during_an_outage_is_shown_once_slack_is_back_postgres);

/// Three clicks at once where Slack allows one `chat.update` per two
/// seconds: the 429s are waited out and every message shows its state,
/// each edited once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_past_slacks_update_limit_are_all_shown() {
    let NotifyEnv {
        slack,
        env,
        ledger,
        ledger_dir: _ledger_dir,
    } = notify_env(&["C1"], None, Backend::Sqlite, 50).await;
    let ids = ["lim-1", "lim-2", "lim-3"];
    for id in ids {
        env.produce_message(&stateful_message(id, "C1", "Connector failed"))
            .await;
    }
    let notify = env.start_notify().await;
    env.read_responses(ids.len(), WAIT).await;
    slack.set_update_limit(Some(1), Duration::from_secs(2));
    for id in ids {
        let posted = wait_message(&slack, id, |_| true, WAIT).await;
        let ack = button("alertsvc_acknowledge", id);
        assert_eq!(click(&env, &posted, ("U0ADA", "ada"), ack).await, 200);
    }
    for id in ids {
        let shown = wait_acknowledged_shown(&slack, &ledger, id).await;
        assert_eq!(shown.edits, 1, "{id}");
    }
    let stats = slack.stats();
    assert_eq!(stats.updates, 3);
    assert!(stats.rate_limited > 0, "the limit was reached: {stats:?}");
    notify.stop().await.expect("clean stop");
}

/// A click recorded by a replica that died before its edit (the row's
/// shown version behind its version): the next run shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_left_unshown_is_shown_by_the_next_run() {
    let (started, notify, _) = one_posted(Backend::Sqlite, "crash-1").await;
    notify.stop().await.expect("clean stop");
    let NotifyEnv {
        slack, env, ledger, ..
    } = &started;

    let posted = state_of(ledger, "crash-1").await;
    assert_eq!(
        (posted.version, posted.shown_version),
        (1, 1),
        "the post shows its state"
    );
    let db = Ledger::connect(ledger, 1).await.expect("ledger");
    let acknowledged = AlertState {
        kind: StateKind::Acknowledged,
        actor: ada(),
        at: now_ms(),
        snoozed_until: None,
        occurrence: 1,
    };
    assert!(StateStore::new(&db)
        .compare_and_set("crash-1", Some(1), &acknowledged, &posted.place, false)
        .await
        .expect("write"));

    let notify = env.start_notify().await;
    let shown = wait_acknowledged_shown(slack, ledger, "crash-1").await;
    assert_eq!(shown.edits, 1);
    assert_eq!(slack.stats().updates, 1);
    notify.stop().await.expect("clean stop");
}

/// Snoozed for two seconds: when it ends, notify makes the alert firing
/// again by itself — a record with no actor, and the message back to all
/// its buttons without the snooze line.
async fn a_snooze_ends_by_itself(backend: Backend) {
    let (started, notify, posted) = one_posted(backend, "nap").await;
    let NotifyEnv {
        slack, env, ledger, ..
    } = &started;
    let ts = &posted.ts;
    let all_controls = controls(&posted);
    let snooze = menu_choice("alertsvc_snooze", "2s");
    assert_eq!(click(env, &posted, ("U0ADA", "ada"), snooze).await, 200);
    let awake = wait_message(slack, "nap", |m| m.edits >= 2, WAIT).await;
    let firing = state_of(ledger, "nap").await;
    assert_eq!(
        (firing.state.kind, &firing.state.actor),
        (StateKind::Firing, &None)
    );
    let states = read_alert_states(env, 3, WAIT).await;
    let kinds: Vec<&Value> = states.iter().map(|(_, v)| &v["state"]).collect();
    assert_eq!(kinds, ["firing", "snoozed", "firing"], "{states:?}");
    let due = states[1].1["snoozedUntil"].as_i64().expect("until");
    assert_eq!(Some(due), states[1].1["at"].as_i64().map(|at| at + 2_000));
    assert!(firing.state.at >= due, "{firing:?} before {due}");
    assert_eq!(state_line(&awake), None, "no snooze line once it ended");
    assert_eq!(controls(&awake), all_controls);
    assert_eq!(states[2].1, record(&firing, ts));
    assert_eq!(slack.stats().updates, 2, "the snooze and its end");
    notify.stop().await.expect("clean stop");
}

crate::on_both_ledgers!(a_snooze_ends_by_itself => a_snooze_ends_by_itself_sqlite, a_snooze_ends_by_itself_postgres);
