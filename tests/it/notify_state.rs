//! Alert states through notify: Acknowledge, Snooze and Resolve clicks
//! (signed, as Slack sends them) change the state in the ledger once,
//! edit the message once with a line saying who did what, keep that line
//! on later edits, and publish every change to `alert-state`; an upstream
//! resolve does the same with no actor.

use std::time::Duration;

use alertsvc::messages::{AlertStatus, DeliveryOutcome, SlackMessage};
use alertsvc::notify::ledger::Ledger;
use alertsvc::notify::state::service::Applied;
use alertsvc::notify::state::store::{StateRow, StateStore};
use alertsvc::notify::state::{Action, Actor, AlertState, AlertStates, NoChange, StateKind};
use alertsvc::slack::fake::FakeMessage;
use serde_json::{json, Value};

use crate::common::slack::{
    button, click, menu_choice, no_dead_letters, notify_env, now_ms, read_alert_states,
    stateful_message, wait_message, Backend, NotifyEnv,
};
use crate::common::{eventually, RunningStage};

pub(crate) const WAIT: Duration = Duration::from_secs(60);
pub(crate) const HOUR_MS: i64 = 3_600_000;

pub(crate) async fn state_of(ledger_url: &str, alert_id: &str) -> StateRow {
    let ledger = Ledger::connect(ledger_url, 1).await.expect("ledger");
    StateStore::new(&ledger)
        .get(alert_id)
        .await
        .expect("read state")
        .expect("a state row")
}

/// The state line notify shows (the `alertsvc_state` context block).
pub(crate) fn state_line(message: &FakeMessage) -> Option<String> {
    message.blocks.as_array()?.iter().find_map(|b| {
        (b["block_id"] == "alertsvc_state")
            .then(|| b["elements"][0]["text"].as_str().map(str::to_owned))
            .flatten()
    })
}

/// The action ids of the message's controls, in order.
pub(crate) fn controls(message: &FakeMessage) -> Vec<String> {
    message
        .blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["action_id"].as_str().map(str::to_owned))
        .collect()
}

pub(crate) fn at(millis: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(millis).expect("time");
    format!(
        "<!date^{}^{{time}}|{}>",
        t.timestamp(),
        t.format("%H:%M UTC")
    )
}

pub(crate) fn until(millis: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(millis).expect("time");
    format!(
        "<!date^{}^{{date_short_pretty}} at {{time}}|{}>",
        t.timestamp(),
        t.format("%Y-%m-%d %H:%M UTC")
    )
}

/// The AlertState record notify publishes for `row` on message `ts`.
pub(crate) fn record(row: &StateRow, ts: &str) -> Value {
    let actor = row.state.actor.as_ref();
    json!({"alertId": row.alert_id, "state": row.state.kind.as_str(),
           "actorId": actor.map(|a| a.id.clone()), "actorName": actor.and_then(|a| a.name.clone()),
           "at": row.state.at, "snoozedUntil": row.state.snoozed_until, "groupKey": null,
           "channelId": "C1", "messageTs": ts, "pipeline": "test"})
}

/// A row's state and version, without the markers that follow it to the
/// topic and the message: those move on their own, in the background.
fn change_of(row: &StateRow) -> (AlertState, i64) {
    (row.state.clone(), row.version)
}

pub(crate) fn ada() -> Option<Actor> {
    Some(Actor {
        id: "U0ADA".into(),
        name: Some("ada".into()),
    })
}

/// Where both lifecycles start: notify on `backend` has posted each of
/// these stateful alerts (id, text) to C1.
struct Started {
    env: NotifyEnv,
    notify: RunningStage,
    /// Per alert, in the order given: the message produced, its ts, and
    /// the message as Slack shows it.
    sent: Vec<SlackMessage>,
    ts: Vec<String>,
    shown: Vec<FakeMessage>,
}

async fn post_alerts(backend: Backend, alerts: &[(&str, &str)]) -> Started {
    let env = notify_env(&["C1"], None, backend, 50).await;
    let sent: Vec<SlackMessage> = alerts
        .iter()
        .map(|(alert_id, text)| stateful_message(alert_id, "C1", text))
        .collect();
    for message in &sent {
        env.env.produce_message(message).await;
    }
    let notify = env.env.start_notify().await;
    let responses = env.env.read_responses(sent.len(), WAIT).await;
    let mut ts = Vec::new();
    let mut shown = Vec::new();
    for message in &sent {
        let response = responses.iter().find(|r| r.alert_id == message.alert_id);
        ts.push(response.and_then(|r| r.ts.clone()).expect("posted"));
        shown.push(wait_message(&env.slack, &message.alert_id, |_| true, WAIT).await);
    }
    Started {
        env,
        notify,
        sent,
        ts,
        shown,
    }
}

/// Posted (firing) → Acknowledge → Acknowledge again (nothing) → new
/// content (edited, still acknowledged) → Snooze 4h.
async fn acknowledge_then_snooze(backend: Backend) {
    let started = post_alerts(backend, &[("st-1", "Connector failed")]).await;
    let NotifyEnv {
        slack, env, ledger, ..
    } = &started.env;
    let (first, ts, posted) = (&started.sent[0], &started.ts[0], &started.shown[0]);
    assert_eq!(state_line(posted), None, "a firing alert has no state line");

    // Posting is the first state: firing, by nobody.
    let fired = state_of(ledger, "st-1").await;
    assert_eq!(
        (fired.state.kind, &fired.state.actor, fired.state.occurrence),
        (StateKind::Firing, &None, 1)
    );
    let states = read_alert_states(env, 1, WAIT).await;
    assert_eq!(states, [(Some("st-1".into()), record(&fired, ts))]);

    let before = now_ms();
    let ack = button("alertsvc_acknowledge", "st-1");
    assert_eq!(click(env, posted, ("U0ADA", "ada"), ack).await, 200);
    let after = now_ms();
    let acked_message = wait_message(slack, "st-1", |m| m.edits >= 1, WAIT).await;
    let acked = state_of(ledger, "st-1").await;
    assert_eq!(
        (acked.state.kind, &acked.state.actor),
        (StateKind::Acknowledged, &ada())
    );
    assert!((before..=after).contains(&acked.state.at), "{acked:?}");
    assert_eq!(
        state_line(&acked_message).as_deref(),
        Some(format!(":eyes: Acknowledged by <@U0ADA> at {}", at(acked.state.at)).as_str())
    );
    assert_eq!(
        controls(&acked_message),
        [
            "alertsvc_resolve",
            "alertsvc_snooze",
            "alertsvc_open_console"
        ],
        "no Acknowledge once acknowledged"
    );
    assert_eq!(acked_message.text, "Connector failed");

    // Acknowledged again (a second person, or a double click): answered,
    // nothing changes.
    let again = button("alertsvc_acknowledge", "st-1");
    assert_eq!(click(env, posted, ("U0BOB", "bob"), again).await, 200);
    assert_eq!(
        change_of(&state_of(ledger, "st-1").await),
        change_of(&acked),
        "no second state"
    );

    // New content: edited in place, still saying who acknowledged it.
    let mut newer = stateful_message("st-1", "C1", "Connector failed again: auth error");
    newer.source_offset = first.source_offset + 1;
    env.produce_message(&newer).await;
    let responses = env.read_responses(2, WAIT).await;
    assert_eq!(
        responses[1].outcome,
        DeliveryOutcome::Updated,
        "{responses:?}"
    );
    let edited = wait_message(slack, "st-1", |m| m.edits >= 2, WAIT).await;
    assert_eq!(edited.text, "Connector failed again: auth error");
    assert_eq!(
        edited.blocks[0]["text"]["text"],
        "*Connector failed again: auth error*"
    );
    assert_eq!(state_line(&edited), state_line(&acked_message));
    assert_eq!(controls(&edited), controls(&acked_message));

    // Snooze for 4 hours, from the menu.
    let snooze = menu_choice("alertsvc_snooze", "4h");
    assert_eq!(click(env, &edited, ("U0ADA", "ada"), snooze).await, 200);
    let snoozed_message = wait_message(slack, "st-1", |m| m.edits >= 3, WAIT).await;
    let snoozed = state_of(ledger, "st-1").await;
    assert_eq!(
        (snoozed.state.kind, &snoozed.state.actor),
        (StateKind::Snoozed, &ada())
    );
    assert_eq!(
        snoozed.state.snoozed_until,
        Some(snoozed.state.at + 4 * HOUR_MS)
    );
    assert_eq!(
        state_line(&snoozed_message).as_deref(),
        Some(
            format!(
                ":zzz: Snoozed by <@U0ADA> at {} until {}",
                at(snoozed.state.at),
                until(snoozed.state.at + 4 * HOUR_MS)
            )
            .as_str()
        )
    );
    assert_eq!(
        snoozed_message.text, "Connector failed again: auth error",
        "a click re-renders the latest content"
    );

    // Exactly: firing, acknowledged, snoozed — nothing for the second
    // click or the content edit; and three edits in all.
    let states = read_alert_states(env, 3, WAIT).await;
    let expected = [&fired, &acked, &snoozed].map(|row| (Some("st-1".to_owned()), record(row, ts)));
    assert_eq!(states, expected);
    assert_eq!(
        states[2].1["snoozedUntil"],
        json!(snoozed.state.at + 4 * HOUR_MS)
    );
    assert_eq!(
        slack.stats().updates,
        3,
        "one edit per change and the content edit"
    );
    started.notify.stop().await.expect("clean stop");
    no_dead_letters(env).await;
}

crate::on_both_ledgers!(acknowledge_then_snooze => acknowledge_then_snooze_sqlite, acknowledge_then_snooze_postgres);

/// Resolve from the button (by bob), and resolved upstream after an
/// acknowledgement (no actor): both end resolved, with their line and no
/// state buttons; a click on a resolved alert changes nothing.
async fn resolve_by_button_and_upstream(backend: Backend) {
    let started = post_alerts(backend, &[("rb", "Disk full"), ("up", "Connector failed")]).await;
    let NotifyEnv {
        slack, env, ledger, ..
    } = &started.env;
    let (rb, up, upstream_alert) = (&started.shown[0], &started.shown[1], &started.sent[1]);

    assert_eq!(
        click(env, rb, ("U0BOB", "bob"), button("alertsvc_resolve", "rb")).await,
        200
    );
    let resolved_message = wait_message(slack, "rb", |m| m.edits >= 1, WAIT).await;
    let resolved = state_of(ledger, "rb").await;
    let bob = Some(Actor {
        id: "U0BOB".into(),
        name: Some("bob".into()),
    });
    assert_eq!(
        (resolved.state.kind, &resolved.state.actor),
        (StateKind::Resolved, &bob)
    );
    assert_eq!(
        state_line(&resolved_message).as_deref(),
        Some(
            format!(
                ":white_check_mark: Resolved by <@U0BOB> at {}",
                at(resolved.state.at)
            )
            .as_str()
        )
    );
    assert_eq!(
        controls(&resolved_message),
        ["alertsvc_open_console"],
        "state buttons gone"
    );

    let ack = button("alertsvc_acknowledge", "up");
    assert_eq!(click(env, up, ("U0ADA", "ada"), ack).await, 200);
    wait_message(slack, "up", |m| m.edits >= 1, WAIT).await;
    let acked = state_of(ledger, "up").await;
    let mut recovered = stateful_message("up", "C1", "Resolved: the connector runs again");
    recovered.status = AlertStatus::Resolved;
    recovered.source_offset = upstream_alert.source_offset + 1;
    env.produce_message(&recovered).await;
    let responses_now = env.read_responses(3, WAIT).await;
    assert_eq!(responses_now[2].outcome, DeliveryOutcome::Updated);
    let upstream_message = wait_message(slack, "up", |m| m.edits >= 2, WAIT).await;
    let upstream = state_of(ledger, "up").await;
    assert_eq!(
        (upstream.state.kind, &upstream.state.actor),
        (StateKind::Resolved, &None)
    );
    assert_eq!(upstream_message.text, "Resolved: the connector runs again");
    assert_eq!(
        state_line(&upstream_message).as_deref(),
        Some(format!(":white_check_mark: Resolved at {}", at(upstream.state.at)).as_str())
    );
    assert_eq!(controls(&upstream_message), ["alertsvc_open_console"]);

    // A click left on a resolved alert's old message: nothing changes.
    let late = button("alertsvc_acknowledge", "rb");
    assert_eq!(click(env, rb, ("U0ADA", "ada"), late).await, 200);
    assert_eq!(
        change_of(&state_of(ledger, "rb").await),
        change_of(&resolved)
    );

    let states = read_alert_states(env, 5, WAIT).await;
    let (rb_ts, up_ts) = (&started.ts[0], &started.ts[1]);
    let of = |alert: &str| -> Vec<Value> {
        states
            .iter()
            .filter(|(k, _)| k.as_deref() == Some(alert))
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(of("rb").len(), 2, "{states:?}");
    assert_eq!(of("rb")[0]["state"], "firing");
    assert_eq!(of("rb")[1], record(&resolved, rb_ts));
    let up_records = of("up");
    assert_eq!(up_records.len(), 3, "{states:?}");
    assert_eq!(up_records[0]["state"], "firing");
    assert_eq!(up_records[1], record(&acked, up_ts));
    assert_eq!(up_records[2], record(&upstream, up_ts));
    assert_eq!(up_records[2]["actorId"], Value::Null);
    assert_eq!(states.len(), 5, "nothing else: {states:?}");
    assert_eq!(
        slack.stats().updates,
        3,
        "resolve click, ack click, upstream edit"
    );
    started.notify.stop().await.expect("clean stop");
    no_dead_letters(env).await;
}

crate::on_both_ledgers!(resolve_by_button_and_upstream => resolve_by_button_and_upstream_sqlite, resolve_by_button_and_upstream_postgres);

/// Eight people click Acknowledge at once (or two replicas apply one
/// click): compare-and-set lets exactly one change through.
async fn concurrent_clicks_make_one_change(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = crate::common::slack::ledger_url(backend, dir.path()).await;
    let ledger = Ledger::connect(&url, 8).await.expect("ledger");
    ledger.migrate().await.expect("migrate");
    let states = std::sync::Arc::new(AlertStates::new(StateStore::new(&ledger), None, None));
    let now = now_ms();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let states = states.clone();
            tokio::spawn(async move {
                let actor = Actor {
                    id: format!("U0P{i}"),
                    name: None,
                };
                let ids = ["race".to_owned()];
                states
                    .act(&ids, &Action::Acknowledge(actor), now + i, None)
                    .await
                    .remove(0)
                    .expect("applied")
            })
        })
        .collect();
    let mut changed = Vec::new();
    let mut unchanged = 0;
    for task in tasks {
        match task.await.expect("task") {
            Applied::Changed(row) => changed.push(row),
            Applied::Unchanged(NoChange::AlreadyAcknowledged, Some(_)) => unchanged += 1,
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!((changed.len(), unchanged), (1, 7), "{changed:?}");
    // With no message known to show it on, the change is given up on
    // showing (marked shown) by its background show.
    let row = eventually(WAIT, "the change marked shown", async || {
        let row = states.store().get("race").await.expect("read")?;
        (row.shown_version == row.version).then_some(row)
    })
    .await;
    let expected = StateRow {
        shown_version: 1,
        ..changed[0].clone()
    };
    assert_eq!(row, expected, "the one change is what the ledger holds");
    assert_eq!((row.version, row.state.kind), (1, StateKind::Acknowledged));
}

crate::on_both_ledgers!(concurrent_clicks_make_one_change => concurrent_clicks_make_one_change_sqlite, concurrent_clicks_make_one_change_postgres);
