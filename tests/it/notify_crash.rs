//! notify killed with SIGKILL mid-run and restarted: the fake Slack saw
//! every alert exactly once, and every alert has a response.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::Duration;

use crate::common::slack::{fake_slack, ledger_url, message, notify_toml, Backend};
use crate::common::{eventually, kill_child, stop_child, TestEnv};

const CHANNELS: [&str; 4] = ["C1", "C2", "C3", "C4"];
const MESSAGES: usize = 48;
const WAIT: Duration = Duration::from_secs(90);

async fn wait_for_posts(
    slack: &alertsvc::slack::fake::FakeSlack,
    child: &mut Child,
    at_least: usize,
) {
    eventually(WAIT, &format!("{at_least} posts"), async || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("notify exited early: {status}");
        }
        (slack.messages().len() >= at_least).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_notify_posts_every_alert_exactly_once() {
    let slack = fake_slack(&CHANNELS, None).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger_url(Backend::Sqlite, dir.path()).await;
    // 8 posts/s per channel: the run takes seconds, so kills land mid-run.
    let env = TestEnv::new(&notify_toml(&slack, &ledger, 8)).await;
    let mut expected = BTreeSet::new();
    for i in 0..MESSAGES {
        let alert = format!("crash-{i}");
        env.produce_message(&message(
            &alert,
            CHANNELS[i % CHANNELS.len()],
            &format!("Alert {i}"),
        ))
        .await;
        expected.insert(alert);
    }

    for (run, posts) in [(1, 6), (2, 20), (3, 30)] {
        let mut child = env.spawn_notify_process(&format!("notify-{run}.log"));
        wait_for_posts(&slack, &mut child, posts).await;
        kill_child(&mut child);
    }
    let mut child = env.spawn_notify_process("notify-final.log");
    let topic = env.topic("slack_responses");
    let codec = env.codecs["slack_responses"].clone();
    let records = env
        .read_until(
            &topic,
            |records| {
                let ids: BTreeSet<String> = records
                    .iter()
                    .filter_map(|r| {
                        futures::executor::block_on(codec.decode(r.payload.as_deref()?)).ok()
                    })
                    .filter_map(|v| v["alertId"].as_str().map(str::to_owned))
                    .collect();
                ids.len() >= MESSAGES
            },
            WAIT,
        )
        .await;
    assert!(
        stop_child(&mut child, WAIT).await.success(),
        "clean exit on SIGTERM"
    );

    let mut posts: BTreeMap<String, usize> = BTreeMap::new();
    for m in slack.messages() {
        *posts
            .entry(m.alert_id().expect("metadata").to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        posts.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "every alert posted"
    );
    let twice: Vec<_> = posts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "posted more than once: {twice:?}");
    let mut responded = BTreeSet::new();
    for record in &records {
        let value = codec
            .decode(record.payload.as_deref().unwrap())
            .await
            .unwrap();
        let response: alertsvc::messages::SlackResponse = serde_json::from_value(value).unwrap();
        assert!(response.ok, "{response:?}");
        responded.insert(response.alert_id);
    }
    assert_eq!(responded, expected, "a response for every alert");
}
