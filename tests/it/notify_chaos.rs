//! Three notify replicas on one PostgreSQL ledger, one consumer group,
//! against a Slack that goes away for a while, answers some posts
//! ambiguously (stored, then a 500 or an answer after the client gave up)
//! and rate-limits others; replicas are killed with SIGKILL and restarted
//! (each kill is a rebalance), and a second version of some alerts arrives
//! mid-run. Every alert must be posted exactly once, no message may ever
//! show an older version than it showed before, and nothing transient may
//! reach the dead-letter topic.
//!
//! `ALERTSVC_CHAOS_ALERTS=3000 cargo test --release --test it notify_chaos
//! -- --nocapture` is the longer run whose figures are in
//! `docs/RELIABILITY.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::{Duration, Instant};

use alertsvc::clock::now_ms;
use alertsvc::messages::{DeliveryOutcome, SlackResponse};
use alertsvc::slack::fake::{dm_channel, FakeSlack, OutageMode};

use crate::common::slack::{
    fake_slack, ledger_url, no_dead_letters, notify_toml, version, Backend,
};
use crate::common::{eventually, kill_child, stop_child, Broker, TestEnv};

const CHANNELS: usize = 30;
const USERS: usize = 10;

fn targets() -> Vec<String> {
    (0..CHANNELS)
        .map(|i| format!("C{i:03}"))
        .chain((0..USERS).map(|i| format!("U{i:03}")))
        .collect()
}

/// The version number a text shows ("… v2" → 2).
fn version_of_text(text: &str) -> u32 {
    text.rsplit_once(" v")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

struct Replica {
    name: String,
    child: Child,
    starts: u32,
}

impl Replica {
    fn start(env: &TestEnv, name: &str) -> Replica {
        Replica {
            name: name.to_owned(),
            child: env.spawn_notify_replica(name, &format!("{name}.log")),
            starts: 1,
        }
    }

    fn kill_and_restart(&mut self, env: &TestEnv) {
        kill_child(&mut self.child);
        self.child = env.spawn_notify_replica(&self.name, &format!("{}.log", self.name));
        self.starts += 1;
    }

    fn check_alive(&mut self, env: &TestEnv) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited: {status}\n{}",
                self.name,
                env.process_log(&format!("{}.log", self.name))
            );
        }
    }
}

/// A failing test must not leave replicas running.
impl Drop for Replica {
    fn drop(&mut self) {
        // No panic here: this may run while a failed test unwinds.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_for(
    what: &str,
    deadline: Instant,
    replicas: &mut [Replica],
    env: &TestEnv,
    done: impl Fn() -> bool,
) {
    let left = deadline.saturating_duration_since(Instant::now());
    eventually(left, what, async || {
        for replica in replicas.iter_mut() {
            replica.check_alive(env);
        }
        done().then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_through_outage_ambiguity_and_kills_post_every_alert_once() {
    let alerts: usize = std::env::var("ALERTSVC_CHAOS_ALERTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(240);
    let targets = targets();
    let target_refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    let slack: FakeSlack = fake_slack(&target_refs, None).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger_url(Backend::Postgres, dir.path()).await;
    let env = TestEnv::with_layers(
        Broker::start(),
        &[
            &notify_toml(&slack, &ledger, 20),
            r#"
            [kafka.client]
            "session.timeout.ms" = "6000"
            [notify]
            reconcile_delay = "200ms"
            unreachable_after = 3
            shutdown_grace = "5s"
            [notify.slack]
            request_timeout = "1s"
            [notify.ledger]
            claim_lease = "4s"
            [notify.retry]
            initial_backoff = "50ms"
            max_backoff = "1s"
            "#,
        ],
    )
    .await;
    slack.set_ambiguous(0.05, Duration::from_millis(1_500));
    slack.set_rate_limit_injection(0.05, 1);

    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| Replica::start(&env, &format!("replica-{i}")))
        .collect();
    // Alerts arrive while the replicas run: at `ALERTSVC_CHAOS_RATE` per
    // second (default: all at once), each created when it is produced.
    let rate: f64 = std::env::var("ALERTSVC_CHAOS_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0.0);
    let created = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<String, i64>::new()));
    let mut expected: BTreeMap<String, (String, u32)> = BTreeMap::new();
    for i in 0..alerts {
        expected.insert(
            format!("chaos-{i}"),
            (targets[i % targets.len()].clone(), 1),
        );
    }
    let producing = {
        let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", env.broker.bootstrap())
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        let codec = env.codecs["slack_messages"].clone();
        let topic = env.topic("slack_messages");
        let targets = targets.clone();
        let created = created.clone();
        tokio::spawn(async move {
            let began = Instant::now();
            for i in 0..alerts {
                if rate > 0.0 {
                    let due = began + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let alert = format!("chaos-{i}");
                let target = &targets[i % targets.len()];
                let at = now_ms();
                let m = version(&alert, target, &format!("{alert} v1"), 1, at);
                created.lock().unwrap().insert(alert, at);
                let payload = codec.encode_record(&m, 0).await.expect("encode");
                producer
                    .send(
                        rdkafka::producer::FutureRecord::to(&topic)
                            .key(target.as_str())
                            .payload(&payload),
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("produce");
            }
        })
    };
    let began = Instant::now();
    // When a replica was killed or Slack went away: (start, end) in ms.
    let mut disruptions: Vec<(i64, i64)> = Vec::new();
    let deadline = began + Duration::from_secs(600);
    let mut rng = fastrand::Rng::with_seed(7);
    let posted = |n: usize| {
        let slack = slack.clone();
        move || slack.posts_by_alert().len() >= n
    };

    wait_for(
        "first posts",
        deadline,
        &mut replicas,
        &env,
        posted(alerts / 5),
    )
    .await;
    let victim = rng.usize(..replicas.len());
    disruptions.push((now_ms(), now_ms()));
    replicas[victim].kill_and_restart(&env);

    // A second version of every fourth alert posted so far, mid-run.
    let first_versions: Vec<(String, i64)> = created
        .lock()
        .unwrap()
        .iter()
        .map(|(a, t)| (a.clone(), *t))
        .collect();
    for (alert, at) in first_versions.iter().step_by(4) {
        let target = expected[alert].0.clone();
        let m = version(alert, &target, &format!("{alert} v2"), 2, at + 1);
        env.produce_message(&m).await;
        expected.insert(alert.clone(), (target, 2));
    }

    wait_for(
        "posts before the outage",
        deadline,
        &mut replicas,
        &env,
        posted(alerts * 2 / 5),
    )
    .await;
    // The outage lasts until every replica could have felt it past
    // `unreachable_after` (3 refused calls each), not a fixed time; a
    // replica is killed while it lasts.
    let felt = slack.stats().outage_rejections + 3 * replicas.len();
    let outage_began = now_ms();
    slack.set_outage(Some(OutageMode::Refuse));
    wait_for(
        "the replicas to run into the outage",
        deadline,
        &mut replicas,
        &env,
        || slack.stats().outage_rejections >= felt,
    )
    .await;
    let victim = rng.usize(..replicas.len());
    disruptions.push((now_ms(), now_ms()));
    replicas[victim].kill_and_restart(&env);
    slack.set_outage(None);
    disruptions.push((outage_began, now_ms()));

    wait_for(
        "posts after the outage",
        deadline,
        &mut replicas,
        &env,
        posted(alerts * 7 / 10),
    )
    .await;
    let victim = rng.usize(..replicas.len());
    disruptions.push((now_ms(), now_ms()));
    replicas[victim].kill_and_restart(&env);

    // Done when every alert shows its latest version.
    let shows_latest = || {
        let messages = slack.messages();
        let shown: BTreeMap<String, u32> = messages
            .iter()
            .filter_map(|m| Some((m.alert_id()?.to_owned(), version_of_text(&m.text))))
            .collect();
        expected
            .iter()
            .all(|(alert, (_, v))| shown.get(alert) == Some(v))
    };
    wait_for(
        "every alert's latest version",
        deadline,
        &mut replicas,
        &env,
        shows_latest,
    )
    .await;
    producing.await.expect("producer task");
    let elapsed = began.elapsed();

    // Every alert answered ok with its ts, read from slack-responses.
    let codec = env.codecs["slack_responses"].clone();
    let decode = |payload: &[u8]| -> Option<SlackResponse> {
        let value = futures::executor::block_on(codec.decode(payload)).ok()?;
        serde_json::from_value(value).ok()
    };
    let records = env
        .read_until(
            &env.topic("slack_responses"),
            |records| {
                let answered: BTreeSet<String> = records
                    .iter()
                    .filter_map(|r| decode(r.payload.as_deref()?))
                    .filter(|r| r.ok)
                    .map(|r| r.alert_id)
                    .collect();
                answered.len() >= alerts
            },
            Duration::from_secs(60),
        )
        .await;
    // Stopped together, as a rollout's SIGTERMs arrive.
    let statuses = futures::future::join_all(
        replicas
            .iter_mut()
            .map(|r| stop_child(&mut r.child, Duration::from_secs(60))),
    )
    .await;
    for (replica, status) in replicas.iter().zip(statuses) {
        assert!(
            status.success(),
            "{} exit on SIGTERM: {status}",
            replica.name
        );
    }

    let messages = slack.messages();
    let posts = slack.posts_by_alert();
    let twice: Vec<_> = posts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "posted more than once: {twice:?}");
    assert_eq!(
        posts.keys().cloned().collect::<BTreeSet<_>>(),
        expected.keys().cloned().collect::<BTreeSet<_>>(),
        "every alert posted"
    );
    for m in &messages {
        let versions: Vec<u32> = m.revisions.iter().map(|t| version_of_text(t)).collect();
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "{:?} went backwards: {:?}",
            m.alert_id(),
            m.revisions
        );
        let (target, _) = &expected[m.alert_id().unwrap_or_default()];
        let conversation = if target.starts_with('U') {
            dm_channel(target)
        } else {
            target.clone()
        };
        assert_eq!(&m.channel, &conversation, "{:?}", m.alert_id());
    }

    let responses: Vec<SlackResponse> = records
        .iter()
        .filter_map(|r| decode(r.payload.as_deref()?))
        .collect();
    let mut posted_answers: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &responses {
        assert!(r.ok, "only ok answers: {r:?}");
        let shown = messages
            .iter()
            .find(|m| m.alert_id() == Some(r.alert_id.as_str()))
            .expect("posted");
        assert_eq!(r.ts.as_deref(), Some(shown.ts.as_str()), "{r:?}");
        if r.outcome == DeliveryOutcome::Posted {
            *posted_answers.entry(r.alert_id.as_str()).or_default() += 1;
        }
    }
    let mut by_outcome: BTreeMap<String, usize> = BTreeMap::new();
    for r in &responses {
        *by_outcome.entry(format!("{:?}", r.outcome)).or_default() += 1;
    }
    let answered: BTreeSet<&str> = responses.iter().map(|r| r.alert_id.as_str()).collect();
    assert_eq!(answered.len(), alerts, "every alert answered");
    let reported_twice: Vec<_> = posted_answers.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        reported_twice.is_empty(),
        "`posted` answered twice: {reported_twice:?}"
    );
    no_dead_letters(&env).await;

    // Latency from createdAt to Slack's ts; "calm": alerts created more
    // than 20 s after any kill or the outage's end and not just before one
    // (a kill stops the group for a session timeout and a rebalance).
    let created = created.lock().unwrap().clone();
    let mut latencies = Vec::new();
    let mut calm = Vec::new();
    for m in &messages {
        let Some(at) = m.alert_id().and_then(|a| created.get(a)) else {
            continue;
        };
        let ts_ms =
            m.ts.parse::<f64>()
                .map(|t| (t * 1000.0) as i64)
                .unwrap_or(0);
        latencies.push(ts_ms - at);
        let disrupted = disruptions
            .iter()
            .any(|(start, end)| *at > start - 2_000 && *at < end + 20_000);
        if !disrupted {
            calm.push(ts_ms - at);
        }
    }
    let percentile = |values: &mut Vec<i64>, p: f64| -> i64 {
        values.sort_unstable();
        values
            .get(((values.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let stats = slack.stats();
    let restarts: u32 = replicas.iter().map(|r| r.starts - 1).sum();
    println!(
        "chaos: {alerts} alerts to {} targets ({USERS} DMs), 3 replicas, {restarts} SIGKILLs, \
         a 5 s outage; {} posts, {} updates, {} ambiguous answers, {} injected or paced 429s, \
         {} outage rejections; lost 0, duplicates 0; {} responses ({by_outcome:?}), {} alerts answered `posted` \
         (the rest `duplicate` after a kill between ledger and response); all shown in {:.1} s; \
         createdAt→Slack p50 {} ms, p95 {} ms (all), p95 {} ms over {} alerts created away from kills and the outage",
        targets.len(),
        stats.posts,
        stats.updates,
        stats.ambiguous,
        stats.rate_limited,
        stats.outage_rejections,
        responses.len(),
        posted_answers.len(),
        elapsed.as_secs_f64(),
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.95),
        percentile(&mut calm, 0.95),
        calm.len(),
    );
}
