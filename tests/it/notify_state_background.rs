//! What notify does with alert states on its own: a change whose publish
//! never happened is published by the next run, and an alert whose snooze
//! ended is firing again — on the topic and on its message.

use std::time::Duration;

use alertsvc::notify::ledger::Ledger;
use alertsvc::notify::state::store::{Place, StateStore};
use alertsvc::notify::state::StateKind;
use serde_json::Value;

use crate::common::slack::{
    click, menu_choice, notify_env, read_alert_states, stateful_message, wait_message, Backend,
    NotifyEnv,
};
use crate::notify_state::{ada, controls, record, state_line, state_of, HOUR_MS, WAIT};

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
        .compare_and_set("orphan", None, &state, &place)
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
    let deadline = tokio::time::Instant::now() + WAIT;
    while store
        .get("orphan")
        .await
        .expect("read")
        .map(|r| r.published_version)
        != Some(1)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never marked published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    notify.stop().await.expect("clean stop");
}

/// Snoozed for two seconds: when it ends, notify makes the alert firing
/// again by itself — a record with no actor, and the message back to all
/// its buttons without the snooze line.
async fn a_snooze_ends_by_itself(backend: Backend) {
    let NotifyEnv {
        slack,
        env,
        ledger,
        ledger_dir: _ledger_dir,
    } = notify_env(&["C1"], None, backend, 50).await;
    env.produce_message(&stateful_message("nap", "C1", "Connector failed"))
        .await;
    let notify = env.start_notify().await;
    let responses = env.read_responses(1, WAIT).await;
    let ts = responses[0].ts.clone().expect("posted");
    let posted = wait_message(&slack, "nap", |_| true, WAIT).await;
    let all_controls = controls(&posted);
    let snooze = menu_choice("alertsvc_snooze", "2s");
    assert_eq!(click(&env, &posted, ("U0ADA", "ada"), snooze).await, 200);
    let awake = wait_message(&slack, "nap", |m| m.edits >= 2, WAIT).await;
    let firing = state_of(&ledger, "nap").await;
    assert_eq!(
        (firing.state.kind, &firing.state.actor),
        (StateKind::Firing, &None)
    );
    let states = read_alert_states(&env, 3, WAIT).await;
    let kinds: Vec<&Value> = states.iter().map(|(_, v)| &v["state"]).collect();
    assert_eq!(kinds, ["firing", "snoozed", "firing"], "{states:?}");
    let due = states[1].1["snoozedUntil"].as_i64().expect("until");
    assert_eq!(Some(due), states[1].1["at"].as_i64().map(|at| at + 2_000));
    assert!(firing.state.at >= due, "{firing:?} before {due}");
    assert_eq!(state_line(&awake), None, "no snooze line once it ended");
    assert_eq!(controls(&awake), all_controls);
    assert_eq!(states[2].1, record(&firing, &ts));
    assert_eq!(slack.stats().updates, 2, "the snooze and its end");
    notify.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snooze_ends_by_itself_sqlite() {
    a_snooze_ends_by_itself(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snooze_ends_by_itself_postgres() {
    a_snooze_ends_by_itself(Backend::Postgres).await;
}
