//! Grouped alerts through notify and the fake Slack: a burst of one org's
//! connector failures becomes one summary message, edited in place a few
//! times (not once per alert) until it shows every alert, with each alert
//! a reply in its thread — within the fake's per-channel pace, once each
//! across a replay and across two replicas delivering the same records.

use std::collections::BTreeMap;
use std::time::Duration;

use alertsvc::messages::{AlertStatus, DeliveryOutcome, SlackMessage};
use alertsvc::notify::grouping::GroupLedger;
use alertsvc::notify::ledger::Ledger;
use alertsvc::slack::fake::{FakeMessage, FakeSlack};
use alertsvc::slack::GROUP_METADATA_EVENT;
use serde_json::Value;

use crate::common::slack::{
    button, click, menu_choice, no_dead_letters, notify_env, notify_settings, now_ms, version,
    Backend, NotifyEnv,
};
use crate::common::{eventually, TestEnv};

const WAIT: Duration = Duration::from_secs(90);
const ALERTS: usize = 40;
const WINDOW_MS: i64 = 10 * 60 * 1000;

/// Alert `i` of org-1's burst: one connector failure a second, the last
/// one `now - 5 s`.
fn failure(i: usize, now: i64) -> SlackMessage {
    let mut m = version(
        &format!("org-1-env-1-lcc-{i:02}-connector-failure"),
        "C1",
        &format!("Connector lcc-{i:02} failed for Org org-1"),
        i as i64,
        now - 5_000 - (ALERTS - i) as i64 * 1_000,
    );
    m.group_key = Some("org-1".into());
    m.group_window_ms = WINDOW_MS;
    m
}

fn resolved(i: usize, now: i64) -> SlackMessage {
    let mut m = failure(i, now);
    m.status = AlertStatus::Resolved;
    m.text = format!("Resolved: connector lcc-{i:02} of Org org-1 runs again");
    m.source_offset += 1_000;
    m.created_at = now - 1_000 + i as i64;
    m
}

fn summaries(messages: &[FakeMessage]) -> Vec<&FakeMessage> {
    messages
        .iter()
        .filter(|m| {
            m.metadata
                .as_ref()
                .is_some_and(|meta| meta["event_type"] == GROUP_METADATA_EVENT)
        })
        .collect()
}

fn header(message: &FakeMessage) -> &str {
    message.blocks[0]["text"]["text"].as_str().unwrap_or("")
}

/// Waits until the one summary shows `text`.
async fn summary_showing(slack: &FakeSlack, text: &str) -> FakeMessage {
    let what = format!("the summary showing {text:?}");
    eventually(WAIT, &what, || async {
        let messages = slack.messages();
        summaries(&messages)
            .first()
            .filter(|s| s.text == text)
            .map(|s| (*s).clone())
    })
    .await
}

async fn a_burst_becomes_one_summary_with_every_alert_in_its_thread(backend: Backend) {
    let NotifyEnv {
        slack,
        env,
        ledger: ledger_url,
        ledger_dir: _ledger_dir,
        // notify paces the channel at half the fake's limit: a loaded test
        // machine delays some requests more than others, and Slack's limit is
        // no place to find out by how much.
    } = notify_env(&["C1"], Some(10.0), backend, 5).await;
    let now = now_ms();
    let burst: Vec<SlackMessage> = (1..=ALERTS).map(|i| failure(i, now)).collect();
    for m in &burst {
        env.produce_message(m).await;
    }
    // The burst takes about 8 s at notify's pace: a few edits.
    let settings = notify_settings(&env, |n| {
        n.group_update_interval = Duration::from_secs(2);
    });
    let notify = env.start_notify_with(settings.clone()).await;
    let responses = env.read_responses(ALERTS, WAIT).await;
    let summary = summary_showing(&slack, "40 alerts: org-1").await;

    let fake = slack.messages();
    let top: Vec<&FakeMessage> = fake.iter().filter(|m| m.thread_ts.is_none()).collect();
    assert_eq!(top.len(), 1, "one top-level message: {top:?}");
    assert_eq!(top[0].ts, summary.ts);
    let replies: Vec<&FakeMessage> = fake
        .iter()
        .filter(|m| m.thread_ts.as_deref() == Some(summary.ts.as_str()))
        .collect();
    assert_eq!(replies.len(), ALERTS, "every alert in the thread");
    assert!(replies
        .iter()
        .all(|r| !r.reply_broadcast && !r.in_channel()));
    let replied: BTreeMap<String, String> = replies
        .iter()
        .map(|r| (r.alert_id().unwrap_or("?").to_owned(), r.text.clone()))
        .collect();
    let expected: BTreeMap<String, String> = burst
        .iter()
        .map(|m| (m.alert_id.clone(), m.text.clone()))
        .collect();
    assert_eq!(replied, expected, "each alert replied once, with its text");
    assert_eq!(slack.stats().rate_limited, 0, "within the per-channel pace");

    assert_eq!(header(&summary), ":rotating_light: 40 alerts: org-1");
    assert_eq!(
        summary.blocks[1]["text"]["text"],
        "• Connector lcc-40 failed for Org org-1\n• Connector lcc-39 failed for Org org-1\n\
         • Connector lcc-38 failed for Org org-1\n• Connector lcc-37 failed for Org org-1\n\
         • Connector lcc-36 failed for Org org-1"
    );
    assert_eq!(
        summary.blocks[2]["elements"][0]["text"],
        "+35 more in the thread · Group `org-1` · every alert is in the thread"
    );
    let meta = summary.metadata.clone().unwrap_or(Value::Null);
    let group_id = meta["event_payload"]["group_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(meta["event_payload"]["group_key"], "org-1");
    let buttons = &summary.blocks[3]["elements"];
    for (i, action) in ["alertsvc_acknowledge", "alertsvc_resolve"]
        .iter()
        .enumerate()
    {
        assert_eq!(buttons[i]["action_id"], *action);
        assert_eq!(buttons[i]["value"], format!("group:{group_id}"));
    }
    assert_eq!(buttons[2]["action_id"], "alertsvc_snooze");
    assert!(
        summary.edits >= 1 && summary.edits <= 8,
        "a burst is coalesced into a few edits: {:?}",
        summary.revisions
    );
    assert_eq!(
        summary.revisions.last().map(String::as_str),
        Some("40 alerts: org-1")
    );

    assert_eq!(responses.len(), ALERTS);
    for r in &responses {
        assert_eq!(r.outcome, DeliveryOutcome::Posted, "{r:?}");
        assert_eq!(r.thread_ts.as_deref(), Some(summary.ts.as_str()), "{r:?}");
    }
    let ledger = Ledger::connect(&ledger_url, 1).await.expect("ledger");
    let members = GroupLedger::new(&ledger)
        .members(&group_id)
        .await
        .expect("members");
    assert_eq!(members.len(), ALERTS);

    // Three recover: each gets its resolved reply in the summary's thread
    // and its own reply edited; the summary counts them.
    for i in [3, 17, 40] {
        env.produce_message(&resolved(i, now)).await;
    }
    let responses = env.read_responses(ALERTS + 3, WAIT).await;
    let summary = summary_showing(&slack, "40 alerts · 3 resolved: org-1").await;
    notify.stop().await.expect("clean stop");
    for r in &responses[ALERTS..] {
        assert_eq!(r.outcome, DeliveryOutcome::Updated, "{r:?}");
        assert_eq!(r.thread_ts.as_deref(), Some(summary.ts.as_str()));
    }
    let fake = slack.messages();
    for i in [3, 17, 40] {
        let id = failure(i, now).alert_id;
        let about: Vec<&FakeMessage> = fake
            .iter()
            .filter(|m| m.about_alert() == Some(id.as_str()))
            .collect();
        assert_eq!(about.len(), 2, "its reply and a resolved notice: {about:?}");
        assert_eq!(about[0].revisions.len(), 2, "edited to the resolved text");
        assert_eq!(about[1].reply_key(), Some("resolved"));
        assert_eq!(about[1].thread_ts.as_deref(), Some(summary.ts.as_str()));
    }
    assert_eq!(
        summary.blocks[1]["text"]["text"].as_str().map(|t| t
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()),
        Some(":white_check_mark: ~Resolved: connector lcc-40 of Org org-1 runs again~".into())
    );

    // A replay from the start: nothing new in Slack.
    let posts_before = slack.stats().posts;
    let rerun = env
        .start_notify_with(notify_settings(&env, |n| {
            n.group_id = format!("{}-replay", n.group_id);
            n.group_update_interval = Duration::from_secs(1);
        }))
        .await;
    let responses = env.read_responses(2 * (ALERTS + 3), WAIT).await;
    rerun.stop().await.expect("clean stop");
    assert!(responses[ALERTS + 3..]
        .iter()
        .all(|r| r.outcome == DeliveryOutcome::Duplicate));
    assert_eq!(slack.stats().posts, posts_before, "nothing posted again");
    assert_eq!(summaries(&slack.messages()).len(), 1);
    no_dead_letters(&env).await;
}

crate::on_both_ledgers!(a_burst_becomes_one_summary_with_every_alert_in_its_thread => a_burst_becomes_one_summary_sqlite, a_burst_becomes_one_summary_postgres);

/// Two replicas both deliver the same burst (as during a rebalance): one
/// summary, one reply per alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_post_one_summary_and_each_reply_once() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], Some(10.0), Backend::Postgres, 10).await;
    let now = now_ms();
    for i in 1..=20 {
        env.produce_message(&failure(i, now)).await;
    }
    let replica = |name: &'static str| {
        notify_settings(&env, move |n| {
            n.group_id = format!("{}-{name}", n.group_id);
            n.instance_id = Some(name.into());
            // Two in one process: each on a port of its own.
            n.http_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            n.group_update_interval = Duration::from_secs(1);
        })
    };
    let (a, b) = (replica("replica-a"), replica("replica-b"));
    let a = env.start_notify_with(a).await;
    let b = env.start_notify_with(b).await;
    let responses = env.read_responses(40, WAIT).await;
    let summary = summary_showing(&slack, "20 alerts: org-1").await;
    a.stop().await.expect("clean stop");
    b.stop().await.expect("clean stop");
    let fake = slack.messages();
    assert_eq!(summaries(&fake).len(), 1, "{fake:?}");
    assert_eq!(fake.iter().filter(|m| m.thread_ts.is_none()).count(), 1);
    let posts = slack.posts_by_alert();
    assert_eq!(posts.len(), 20, "{posts:?}");
    assert!(posts.values().all(|n| *n == 1), "{posts:?}");
    assert!(fake
        .iter()
        .filter(|m| m.alert_id().is_some())
        .all(|m| m.thread_ts.as_deref() == Some(summary.ts.as_str())));
    let outcomes: BTreeMap<String, usize> =
        responses.iter().fold(BTreeMap::new(), |mut counts, r| {
            *counts.entry(format!("{:?}", r.outcome)).or_default() += 1;
            counts
        });
    assert_eq!(
        outcomes,
        BTreeMap::from([("Duplicate".into(), 20), ("Posted".into(), 20)])
    );
    // No 429 check here: each replica paces the channel on its own, so two
    // may exceed its rate together (answered 429, retried after).
}

/// Every post is stored but answered ambiguously (a 500, or too late):
/// the summary and each reply are looked up, never posted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_answers_are_looked_up_not_posted_twice() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], None, Backend::Sqlite, 50).await;
    slack.set_ambiguous(1.0, Duration::from_secs(6));
    let now = now_ms();
    for i in 1..=4 {
        env.produce_message(&failure(i, now)).await;
    }
    let notify = env
        .start_notify_with(notify_settings(&env, |n| {
            n.group_update_interval = Duration::from_millis(500);
        }))
        .await;
    let responses = env.read_responses(4, WAIT).await;
    let summary = summary_showing(&slack, "4 alerts: org-1").await;
    notify.stop().await.expect("clean stop");
    assert!(slack.stats().ambiguous >= 5, "{:?}", slack.stats());
    let fake = slack.messages();
    assert_eq!(summaries(&fake).len(), 1, "{fake:?}");
    let posts = slack.posts_by_alert();
    assert_eq!(posts.len(), 4, "{posts:?}");
    assert!(posts.values().all(|n| *n == 1), "{posts:?}");
    for r in &responses {
        assert_eq!(r.outcome, DeliveryOutcome::Posted, "{r:?}");
        assert_eq!(r.thread_ts.as_deref(), Some(summary.ts.as_str()));
    }
}

/// The group ledger on its own: one head per conversation and key, taken
/// over only once its window has ended, whoever opens it; members listed
/// for the group's buttons; closed groups pruned.
#[tokio::test]
async fn a_window_is_opened_once_and_closed_groups_are_pruned() {
    use alertsvc::notify::grouping::plan::{joins, Head};
    use alertsvc::notify::grouping::summary::Member;

    let dir = tempfile::tempdir().expect("tempdir");
    let url = crate::common::slack::ledger_url(Backend::Sqlite, dir.path()).await;
    let ledger = Ledger::connect(&url, 1).await.expect("ledger");
    ledger.migrate().await.expect("migrate");
    let groups = GroupLedger::new(&ledger);
    let first = joins(None, "C1", "org-1", 1_000, 600_000);
    // Another replica, with another alert of the same window, a moment later.
    let rival = joins(None, "C1", "org-1", 2_000, 600_000);
    assert_ne!(first.group_id, rival.group_id);
    assert_eq!(groups.open("C1", "org-1", &first, 5).await.unwrap(), first);
    assert_eq!(groups.open("C1", "org-1", &rival, 6).await.unwrap(), first);
    let other_key = joins(None, "C1", "org-2", 2_000, 600_000);
    assert_eq!(
        groups.open("C1", "org-2", &other_key, 6).await.unwrap(),
        other_key
    );
    for (i, status) in [(1, AlertStatus::Firing), (2, AlertStatus::Resolved)] {
        let member = Member {
            alert_id: format!("a-{i}"),
            text: format!("alert {i}"),
            status,
            created_at: 1_000 + i,
        };
        groups
            .upsert_member(&first.group_id, &member, 7)
            .await
            .unwrap();
        // Twice: still one member.
        groups
            .upsert_member(&first.group_id, &member, 8)
            .await
            .unwrap();
    }
    let members = groups.members(&first.group_id).await.unwrap();
    let ids: Vec<(&str, AlertStatus)> = members
        .iter()
        .map(|m| (m.alert_id.as_str(), m.status))
        .collect();
    assert_eq!(
        ids,
        [("a-1", AlertStatus::Firing), ("a-2", AlertStatus::Resolved)]
    );
    let row = groups.get(&first.group_id).await.unwrap().expect("group");
    assert_eq!(row.revision, 4, "each change marks the summary out of date");

    // After the window: the next alert opens the next group.
    let next = joins(Some(&first), "C1", "org-1", 601_000, 600_000);
    assert_eq!(
        groups.open("C1", "org-1", &next, 601_001).await.unwrap(),
        next
    );
    let Head { group_id, .. } = next;
    assert_ne!(group_id, first.group_id);

    // Unposted groups whose windows closed before the cut are pruned with
    // their members; the open one stays.
    assert_eq!(groups.prune(700_000).await.unwrap(), 2);
    assert!(groups.members(&first.group_id).await.unwrap().is_empty());
    assert!(groups.get(&group_id).await.unwrap().is_some());
}

/// The shipped connector pipeline grouped by org: enrich renders the group
/// key, notify turns five failures and one recovery into one summary in
/// the assignee's DM with the five alerts in its thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connector_pipeline_grouped_by_org_end_to_end() {
    use crate::common::connector_status_event;
    use crate::common::slack::notify_env_with;

    let grouping = "
        [enrich.pipelines.connector-provisioning-failure]
        group_key = \"{{ key }}\"
        group_window = \"10m\"
    ";
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env_with(
        &["U0ADA", "C0ALERTS"],
        Some(10.0),
        Backend::Sqlite,
        5,
        grouping,
    )
    .await;
    env.put_assignment("org-a", "ada@example.com", "Acme").await;
    env.put_slack_user("ada@example.com", "U0ADA").await;
    for i in 1..=5 {
        let event = connector_status_event(
            &format!("e{i}"),
            "env-1",
            &format!("lcc-{i}"),
            "Provisioning",
            "Failed",
        );
        env.produce_event("org-a", &event).await;
    }
    let recovery = connector_status_event("e6", "env-1", "lcc-2", "Failed", "Running");
    env.produce_event("org-a", &recovery).await;
    let enrich = env.start_enrich().await;
    let messages = env.read_messages(6, WAIT).await;
    for (_, m) in &messages {
        assert_eq!(m.group_key.as_deref(), Some("org-a"), "{m:?}");
        assert_eq!(m.group_window_ms, 600_000);
    }
    let notify = env
        .start_notify_with(notify_settings(&env, |n| {
            n.group_update_interval = Duration::from_millis(500);
        }))
        .await;
    let responses = env.read_responses(6, WAIT).await;
    let summary = summary_showing(&slack, "5 alerts · 1 resolved: org-a").await;
    notify.stop().await.expect("clean stop");
    enrich.stop().await.expect("clean stop");
    assert_eq!(summary.channel, "D0ADA");
    let fake = slack.messages();
    assert_eq!(fake.iter().filter(|m| m.thread_ts.is_none()).count(), 1);
    let replies: Vec<&FakeMessage> = fake
        .iter()
        .filter(|m| m.thread_ts.as_deref() == Some(summary.ts.as_str()))
        .collect();
    // Five alerts, and the recovered one's resolved notice.
    assert_eq!(replies.len(), 6, "{replies:?}");
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.reply_key() == Some("resolved"))
            .count(),
        1
    );
    let outcomes: Vec<DeliveryOutcome> = responses.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            [DeliveryOutcome::Posted; 5].as_slice(),
            &[DeliveryOutcome::Updated]
        ]
        .concat()
    );
    assert_eq!(slack.stats().rate_limited, 0);
}

/// The latest `alert-state` record of each alert, from the topic.
async fn latest_states(env: &TestEnv) -> BTreeMap<String, Value> {
    let records = env
        .read_until(&env.topic("alert_state"), |_| true, Duration::from_secs(5))
        .await;
    let mut latest = BTreeMap::new();
    for record in records {
        let value = env.codecs["alert_state"]
            .decode(record.payload.as_deref().expect("payload"))
            .await
            .expect("decode AlertState");
        latest.insert(record.key.unwrap_or_default(), value);
    }
    latest
}

/// The summary's buttons act on the whole group: each member's state
/// changes (on the alert-state topic, with who and until when), and so does
/// the group's own, shown on the summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_buttons_act_on_every_member() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], Some(10.0), Backend::Sqlite, 5).await;
    let now = now_ms();
    let members: Vec<SlackMessage> = (1..=4).map(|i| failure(i, now)).collect();
    for m in &members {
        env.produce_message(m).await;
    }
    let settings = notify_settings(&env, |n| {
        n.group_update_interval = Duration::from_secs(1);
    });
    let notify = env.start_notify_with(settings).await;
    env.read_responses(members.len(), WAIT).await;
    let summary = summary_showing(&slack, "4 alerts: org-1").await;
    let group_id = summary.metadata.clone().unwrap_or(Value::Null)["event_payload"]["group_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let group = format!("group:{group_id}");

    let status = click(
        &env,
        &summary,
        ("U7", "ada"),
        button("alertsvc_acknowledge", &group),
    )
    .await;
    assert_eq!(status, 200);
    let expect_all = |state: &'static str| {
        let env = &env;
        let mut ids: Vec<String> = members.iter().map(|m| m.alert_id.clone()).collect();
        ids.push(group.clone());
        async move {
            let latest = latest_states(env).await;
            ids.iter()
                .all(|id| latest.get(id).is_some_and(|v| v["state"] == state))
                .then_some(latest)
        }
    };
    let acknowledged = eventually(WAIT, "every member acknowledged", || {
        expect_all("acknowledged")
    })
    .await;
    for m in &members {
        assert_eq!(acknowledged[&m.alert_id]["actorId"], "U7", "{}", m.alert_id);
        assert_eq!(
            acknowledged[&m.alert_id]["groupKey"], "org-1",
            "{}",
            m.alert_id
        );
    }
    assert_eq!(acknowledged[&group]["groupKey"], "org-1");
    let shown = eventually(WAIT, "the summary saying who acknowledged", || async {
        slack
            .messages()
            .into_iter()
            .find(|m| m.ts == summary.ts && m.blocks.to_string().contains("Acknowledged by <@U7>"))
    })
    .await;
    assert_eq!(shown.thread_ts, None);

    let clicked = click(
        &env,
        &shown,
        ("U7", "ada"),
        menu_choice("alertsvc_snooze", &format!("{group}|4h")),
    )
    .await;
    assert_eq!(clicked, 200);
    let snoozed = eventually(WAIT, "every member snoozed", || expect_all("snoozed")).await;
    eventually(WAIT, "the summary showing the snooze", || async {
        slack
            .messages()
            .into_iter()
            .find(|m| m.ts == summary.ts && m.blocks.to_string().contains(":zzz: Snoozed by <@U7>"))
    })
    .await;
    // A member joining later changes the summary's count; the group's own
    // state line stays on it.
    env.produce_message(&failure(5, now)).await;
    let recounted = summary_showing(&slack, "5 alerts: org-1").await;
    assert!(
        recounted
            .blocks
            .to_string()
            .contains(":zzz: Snoozed by <@U7>"),
        "{}",
        recounted.blocks
    );
    notify.stop().await.expect("clean stop");
    for m in &members {
        let until = snoozed[&m.alert_id]["snoozedUntil"]
            .as_i64()
            .unwrap_or_default();
        let at = snoozed[&m.alert_id]["at"].as_i64().unwrap_or_default();
        assert_eq!(until - at, 4 * 3_600_000, "{}", m.alert_id);
    }
}
