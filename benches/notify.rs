//! notify benchmarks against the fake Slack (figures in docs/PERFORMANCE.md).
//!
//!   cargo bench --bench notify -- paced [CHANNELS] [PER_CHANNEL]
//!       Slack's limits enforced by the fake (1/s per channel, burst 3):
//!       429s seen and the share of the allowed rate achieved.
//!   cargo bench --bench notify -- unlimited [MESSAGES] [CHANNELS]
//!       no limits, no latency: posts/s through the whole path, and the
//!       CPU per post of notify's threads apart from the fake Slack's
//!       (its own runtime) and the mock broker's, and the whole machine's
//!       (PostgreSQL's server's apart, when it is the ledger and runs
//!       here: `/proc` is read for processes named `postgres`). 200 channels unless
//!       told: a channel has one message in flight at a time, so more
//!       channels show what the per-channel chain costs. Each second's
//!       posts follow (`ALERTSVC_BENCH_WINDOW_MS=100` for tenths): a run
//!       longer than `notify.max_in_flight` (10,000) shows whether the
//!       rate holds once the backlog is full.
//!   cargo bench --bench notify -- slack [MESSAGES]
//!       the ceiling Slack's side sets: notify's client posting to the fake
//!       from 200 tasks (one per channel), no ledger, no Kafka.
//!   cargo bench --bench notify -- kafka [MESSAGES]
//!       the ceiling the broker sets: response-sized records through
//!       notify's producer to the mock broker, each awaited by one of 200
//!       tasks (as a worker did), then all in flight at once.
//!
//! The ledger is a SQLite file in a temporary directory; with
//! `ALERTSVC_BENCH_POSTGRES=postgres://user@host:port` it is a new database
//! on that server instead. `ALERTSVC_BENCH_LEDGER_CONNECTIONS=N` sets
//! `notify.ledger.max_connections` (default config: 5);
//! `ALERTSVC_BENCH_KAFKA_CLIENT=linger.ms=1,batch.num.messages=100` sets
//! `[kafka.client]` properties (every client of notify takes them).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use alertsvc::avro::build_codecs;
use alertsvc::messages::SlackMessage;
use alertsvc::notify::Notify;
use alertsvc::slack::fake::{FakeSlack, FakeSlackConfig};
use futures::executor::block_on;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

#[path = "../tests/testkit/mod.rs"]
mod testkit;

use testkit::{config_dir, load_settings, mock_cluster};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "xoxb-bench";
const BLOCKS: &str = r#"[{"type":"section","text":{"type":"mrkdwn","text":"*Connector failed* for org-1 in env-1"}}]"#;

struct Run {
    elapsed: Duration,
    /// CPU time the whole process (notify, the fake Slack, the mock
    /// broker) used from the first post to the last.
    cpu: Duration,
    /// From the last post until every alert's state was on the
    /// `alert-state` topic and marked so in the ledger (`None`: not within
    /// two minutes), and the process's CPU time over the same span.
    states_lag: Option<Duration>,
    states_cpu: Duration,
    /// The posting window's CPU time by whose threads it was.
    split: Vec<(Side, Duration)>,
    /// Notify's share by thread name (numbers dropped), largest first.
    notify_threads: Vec<(String, Duration)>,
    /// The whole machine over the posting window (every process, the
    /// PostgreSQL server's included).
    machine: MachineCpu,
    /// The PostgreSQL server's processes over the posting window (zero
    /// for SQLite, or where the server's processes cannot be read).
    postgres_cpu: Duration,
    slack: FakeSlack,
    /// Each whole window (a second unless told) of the posting window:
    /// posts, and the machine's busy CPU time over it.
    windows: Vec<(usize, Duration)>,
}

/// The machine's CPU time by kind, from the first line of `/proc/stat`
/// (USER_HZ ticks, 100 a second on Linux, summed over all CPUs).
#[derive(Debug, Default, Clone, Copy)]
struct MachineCpu {
    /// user, nice, system, irq, softirq.
    busy: Duration,
    /// Time the hypervisor ran something else while this guest wanted
    /// the CPU: a guest's CPU per post rises with it, not with its work.
    steal: Duration,
}

fn machine_cpu() -> MachineCpu {
    let Some(line) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| stat.lines().next().map(str::to_owned))
    else {
        return MachineCpu::default();
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    let at = |i: usize| Duration::from_millis(ticks.get(i).copied().unwrap_or(0) * 10);
    MachineCpu {
        busy: at(0) + at(1) + at(2) + at(5) + at(6),
        steal: at(7),
    }
}

impl MachineCpu {
    fn since(self, before: MachineCpu) -> MachineCpu {
        MachineCpu {
            busy: self.busy.saturating_sub(before.busy),
            steal: self.steal.saturating_sub(before.steal),
        }
    }
}

/// CPU time of every process named `postgres` on this machine (the
/// server's postmaster and backends), from `/proc/*/stat`.
fn postgres_cpu() -> Duration {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    processes
        .flatten()
        .filter(|p| {
            p.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|p| std::fs::read_to_string(p.path().join("stat")).ok())
        .filter_map(|stat| parse_stat(&stat))
        .filter(|(name, _)| name == "postgres")
        .map(|(_, cpu)| cpu)
        .sum()
}

/// Whose work a thread of the bench process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Side {
    Notify,
    FakeSlack,
    MockBroker,
    /// The bench's own thread (it watches the fake's counters) and the
    /// clients that were there before notify started (the mock cluster's
    /// handle).
    Bench,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Notify => "notify",
            Side::FakeSlack => "fake Slack",
            Side::MockBroker => "mock broker",
            Side::Bench => "bench and setup",
        }
    }
}

/// The fake Slack's runtime's threads, and notify's.
const FAKE_SLACK_THREADS: &str = "fake-slack";
const NOTIFY_THREADS: &str = "notify-rt";

/// Each thread of this process: its name and CPU time (user + system),
/// from `/proc/self/task/*/stat`, by thread id; empty where there is no
/// such directory.
fn thread_cpu() -> Threads {
    let mut threads = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return threads;
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        // A thread that ended meanwhile has no file left.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let Some((name, cpu)) = parse_stat(&stat) else {
            continue;
        };
        threads.insert(tid, (name, cpu));
    }
    threads
}

/// The name (in parentheses, which it may contain) and utime + stime of a
/// `stat` line: the fields after the name start with the state, utime is
/// the 12th of them and stime the 13th, in USER_HZ ticks (100 a second on
/// Linux).
fn parse_stat(stat: &str) -> Option<(String, Duration)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    Some((name, Duration::from_millis(ticks * 10)))
}

/// Whose thread `tid` (named `name`) is; `earlier`: threads there before
/// notify was built.
fn side_of(tid: u32, name: &str, earlier: &HashSet<u32>) -> Side {
    if name.starts_with(FAKE_SLACK_THREADS) {
        Side::FakeSlack
    } else if name == "rdk:mock" {
        Side::MockBroker
    } else if name.starts_with(NOTIFY_THREADS) || !earlier.contains(&tid) {
        Side::Notify
    } else {
        Side::Bench
    }
}

/// Each thread's name and CPU time, by thread id.
type Threads = HashMap<u32, (String, Duration)>;

/// The CPU each side used, and notify's by thread name.
type Split = (Vec<(Side, Duration)>, Vec<(String, Duration)>);

/// The CPU each side used between two `thread_cpu` readings, and notify's
/// by thread name.
fn cpu_split(before: &Threads, after: &Threads, earlier: &HashSet<u32>) -> Split {
    let mut sides: BTreeMap<Side, Duration> = BTreeMap::new();
    let mut names: BTreeMap<String, Duration> = BTreeMap::new();
    for (tid, (name, cpu)) in after {
        let was = before.get(tid).map_or(Duration::ZERO, |(_, cpu)| *cpu);
        let used = cpu.saturating_sub(was);
        let side = side_of(*tid, name, earlier);
        *sides.entry(side).or_default() += used;
        if side == Side::Notify {
            // `rdk:broker1`, `sqlx-sqlite-worker-0`, … as one each.
            let kind = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
            *names.entry(kind.to_owned()).or_default() += used;
        }
    }
    let mut names: Vec<_> = names.into_iter().collect();
    names.sort_by_key(|(_, cpu)| std::cmp::Reverse(*cpu));
    (sides.into_iter().collect(), names)
}

/// Waits until the ledger at `url` has `total` alert states, each marked
/// published (the mark follows the broker's ack); how long that took, or
/// `None` after `limit`.
async fn states_published(url: &str, total: usize, limit: Duration) -> Option<Duration> {
    use sqlx::Row;
    let started = Instant::now();
    let pool = alertsvc::db::connect(url, 1)
        .await
        .expect("ledger to watch");
    loop {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM alert_states \
             WHERE published_version >= version AND published_version > 0",
        )
        .fetch_one(&pool)
        .await
        .expect("count published states");
        let published: i64 = row.try_get("n").expect("a count");
        if usize::try_from(published).is_ok_and(|n| n >= total) {
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            eprintln!("{published} of {total} alert states published after {limit:?}");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// CPU time (user + system) this process used so far, from
/// `/proc/self/stat` (in USER_HZ ticks, 100 per second on Linux); zero
/// where there is no such file.
fn process_cpu() -> Duration {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| parse_stat(&stat))
        .map_or(Duration::ZERO, |(_, cpu)| cpu)
}

async fn run(
    channels: usize,
    per_channel: usize,
    fake_limit: Option<f64>,
    pacing: (u32, u32),
    slack_runtime: &tokio::runtime::Handle,
) -> Run {
    let cluster = mock_cluster(&[
        ("slack-messages", 32),
        ("slack-responses", 32),
        ("slack-interactions", 32),
    ]);
    let bootstrap = cluster.bootstrap_servers();
    // The fake serves on its own runtime's threads, so that their CPU is
    // told apart from notify's.
    let (names, slack) = slack_runtime
        .spawn(fake_slack(channels, fake_limit))
        .await
        .expect("fake Slack started");
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger_url(dir.path()).await;
    let connections = std::env::var("ALERTSVC_BENCH_LEDGER_CONNECTIONS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .map(|n| format!("max_connections = {n}\n"))
        .unwrap_or_default();
    let client: String = std::env::var("ALERTSVC_BENCH_KAFKA_CLIENT")
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| format!("{name:?} = {value:?}\n"))
        .collect();
    let overlay = testkit::bench_overlay(
        dir.path(),
        &bootstrap,
        &format!(
            "[notify]\nhttp_addr = \"127.0.0.1:0\"\n\
             [notify.slack]\napi_url = \"{}\"\nbot_token = \"{TOKEN}\"\n\
             [notify.pacing]\nper_channel_per_second = {}\nper_channel_burst = {}\nworkspace_per_second = 1000000\nworkspace_burst = 1000000\n\
             [notify.ledger]\ndatabase_url = \"{ledger}\"\n{connections}\
             [kafka.client]\n{client}",
            slack.url,
            pacing.0,
            pacing.1,
        ),
    );
    let settings = load_settings(Some(overlay));
    let codecs = build_codecs(&config_dir(), &settings).expect("codecs");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut sent: Vec<DeliveryFuture> = Vec::with_capacity(per_channel * names.len());
    for i in 0..per_channel {
        for channel in &names {
            let message = SlackMessage {
                alert_id: format!("{channel}-{i}"),
                channel_id: channel.clone(),
                text: "Connector Failure".into(),
                blocks: BLOCKS.into(),
                created_at: now,
                pipeline: "bench".into(),
                source_topic: "bench".into(),
                source_partition: 0,
                source_offset: 0,
                status: Default::default(),
                updates: Default::default(),
                recurrence: Default::default(),
                resolved_unposted: Default::default(),
                group_key: None,
                group_window_ms: 0,
            };
            let payload =
                block_on(codecs["slack_messages"].encode_record(&message, 0)).expect("encode");
            // All in flight at once: awaited one at a time, each waited
            // out librdkafka's `linger.ms` (~100 s of set-up for 20,000).
            let record = FutureRecord::to("slack-messages")
                .key(channel)
                .payload(&payload);
            sent.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("produce"),
            );
        }
    }
    for delivery in sent {
        delivery.await.expect("delivered").expect("produce");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    // Its threads end with it: those there now are not notify's.
    drop(producer);
    let earlier: HashSet<u32> = thread_cpu().into_keys().collect();
    let total = channels * per_channel;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let notify = Notify::build(&settings, &config_dir())
        .await
        .expect("notify binds");
    let task = tokio::spawn(async move {
        notify.run_until_stopped(stop).await.expect("notify");
    });
    // Timed from the first post to the last. A run that stops posting
    // fails instead of hanging (the CI smoke run).
    let stalled = |since: Instant| {
        let posts = slack.stats().posts;
        assert!(
            since.elapsed() < Duration::from_secs(120),
            "no progress for 2 minutes: {posts} of {total} messages posted"
        );
        posts
    };
    let waiting = Instant::now();
    while stalled(waiting) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    let cpu_before = process_cpu();
    let threads_before = thread_cpu();
    let (machine_before, postgres_before) = (machine_cpu(), postgres_cpu());
    let (mut last, mut progress) = (0, Instant::now());
    // Each second's posts and the machine's CPU meanwhile: a run long
    // enough to fill `max_in_flight` shows whether the rate holds.
    let window = std::env::var("ALERTSVC_BENCH_WINDOW_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_secs(1), Duration::from_millis);
    let mut windows = Vec::new();
    let (mut window_from, mut window_posts, mut window_busy) = (started, 0, machine_before);
    loop {
        let posts = stalled(progress);
        if posts >= total {
            break;
        }
        if posts > last {
            (last, progress) = (posts, Instant::now());
        }
        if window_from.elapsed() >= window {
            let busy = machine_cpu();
            windows.push((posts - window_posts, busy.since(window_busy).busy));
            (window_from, window_posts, window_busy) = (Instant::now(), posts, busy);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    let cpu_after = process_cpu();
    let machine = machine_cpu().since(machine_before);
    let postgres_cpu = postgres_cpu().saturating_sub(postgres_before);
    let (split, notify_threads) = cpu_split(&threads_before, &thread_cpu(), &earlier);
    let cpu = cpu_after.saturating_sub(cpu_before);
    let states_lag = states_published(&ledger, total, Duration::from_secs(120)).await;
    let states_cpu = process_cpu().saturating_sub(cpu_after);
    shutdown.cancel();
    let _ = task.await;
    Run {
        elapsed,
        cpu,
        states_lag,
        states_cpu,
        split,
        notify_threads,
        machine,
        postgres_cpu,
        slack,
        windows,
    }
}

/// The fake Slack with `channels` channels (`C0000`…), Slack's burst of 3
/// and `limit` posts per second per channel.
async fn fake_slack(channels: usize, limit: Option<f64>) -> (Vec<String>, FakeSlack) {
    let names: Vec<String> = (0..channels).map(|c| format!("C{c:04}")).collect();
    let slack = FakeSlack::start(FakeSlackConfig {
        token: TOKEN.into(),
        channels: names.clone(),
        per_channel_per_second: limit,
        burst: 3,
        ..FakeSlackConfig::default()
    })
    .await
    .expect("fake slack");
    (names, slack)
}

/// Posts `per_channel` messages to each of `channels` channels of the fake,
/// one task per channel, with notify's Slack client.
async fn slack_alone(
    channels: usize,
    per_channel: usize,
    slack_runtime: &tokio::runtime::Handle,
) -> (Duration, usize) {
    use alertsvc::slack::{AlertRef, SlackApi};
    use std::sync::Arc;
    let (names, slack) = slack_runtime
        .spawn(fake_slack(channels, None))
        .await
        .expect("fake Slack started");
    let api = Arc::new(SlackApi::new(&slack.url, TOKEN, Duration::from_secs(10)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for channel in names {
        let api = api.clone();
        tasks.spawn(async move {
            for i in 0..per_channel {
                let alert_id = format!("{channel}-{i}");
                let alert = AlertRef {
                    alert_id: &alert_id,
                    occurrence: 1,
                };
                api.post(&channel, "Connector Failure", BLOCKS, &alert)
                    .await
                    .expect("posted");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("poster");
    }
    (started.elapsed(), slack.stats().posts)
}

/// A response-sized record for `slack-responses`, enqueued (the broker's
/// ack is the future returned).
fn enqueue(producer: &FutureProducer, key: &str, payload: &[u8]) -> DeliveryFuture {
    producer
        .send_result(
            FutureRecord::to("slack-responses")
                .key(key)
                .payload(payload),
        )
        .map_err(|(e, _)| e)
        .expect("enqueued")
}
/// Produces `per_task` response-sized records from each of `tasks` tasks,
/// each awaiting its ack before the next; then the same number with all of
/// them in flight at once. Returns both durations.
async fn kafka_alone(tasks: usize, per_task: usize) -> (Duration, Duration) {
    use alertsvc::kafka::{client_config, Role};
    use std::sync::Arc;
    let cluster = mock_cluster(&[("slack-responses", 32)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let overlay = testkit::bench_overlay(dir.path(), &cluster.bootstrap_servers(), "");
    let settings = load_settings(Some(overlay));
    let producer: FutureProducer = client_config(
        &settings.kafka,
        "bench",
        &Role::IdempotentProducer { linger_ms: 5 },
    )
    .create()
    .expect("producer");
    let producer = Arc::new(producer);
    // About a SlackResponse's size in Avro.
    let payload = vec![b'r'; 160];
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let (producer, payload) = (producer.clone(), payload.clone());
        set.spawn(async move {
            for i in 0..per_task {
                enqueue(&producer, &format!("C{t:04}-{i}"), &payload)
                    .await
                    .expect("not cancelled")
                    .map_err(|(e, _)| e)
                    .expect("acked");
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("producer task");
    }
    let serial = started.elapsed();
    let started = Instant::now();
    let mut acks = Vec::with_capacity(tasks * per_task);
    for n in 0..tasks * per_task {
        acks.push(enqueue(&producer, &format!("K{n}"), &payload));
    }
    for ack in acks {
        ack.await
            .expect("not cancelled")
            .map_err(|(e, _)| e)
            .expect("acked");
    }
    (serial, started.elapsed())
}

/// A SQLite file in `dir`, or a new PostgreSQL database (see the top).
async fn ledger_url(dir: &std::path::Path) -> String {
    let Ok(server) = std::env::var("ALERTSVC_BENCH_POSTGRES") else {
        return format!("sqlite://{}?mode=rwc", dir.join("ledger.db").display());
    };
    alertsvc::db::create_scratch_database(&server, "alertsvc_bench")
        .await
        .expect("ALERTSVC_BENCH_POSTGRES reachable, and its user may create databases")
}

fn ledger_kind() -> &'static str {
    if std::env::var_os("ALERTSVC_BENCH_POSTGRES").is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    }
}

fn main() {
    let args = testkit::bench_init();
    let number =
        |i: usize, default: usize| args.get(i).and_then(|n| n.parse().ok()).unwrap_or(default);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(NOTIFY_THREADS)
        .enable_all()
        .build()
        .expect("runtime");
    let slack_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(FAKE_SLACK_THREADS)
        .enable_all()
        .build()
        .expect("the fake Slack's runtime");
    let slack_handle = slack_runtime.handle();
    match args.first().map(String::as_str).unwrap_or("paced") {
        "paced" => {
            let (channels, per_channel) = (number(1, 200), number(2, 10));
            let r = runtime.block_on(run(channels, per_channel, Some(1.0), (1, 3), slack_handle));
            let total = channels * per_channel;
            // Each channel may send a burst of 3 at once, then 1/s: the
            // fastest Slack allows is (per_channel - 3) seconds.
            let ideal = per_channel.saturating_sub(3) as f64;
            let stats = r.slack.stats();
            println!(
                "paced: {total} messages to {channels} channels in {:.2?} (Slack's limits allow {ideal:.0} s): {:.0} posts/s, {:.1}% of the allowed rate, {} HTTP 429s",
                r.elapsed,
                total as f64 / r.elapsed.as_secs_f64(),
                100.0 * ideal / r.elapsed.as_secs_f64(),
                stats.rate_limited
            );
        }
        "unlimited" => {
            let (total, channels) = (number(1, 20_000), number(2, 200).max(1));
            let r = runtime.block_on(run(
                channels,
                total / channels,
                None,
                (1_000_000, 1_000_000),
                slack_handle,
            ));
            println!(
                "unlimited: {total} messages to {channels} channels in {:.2?}: {:.0} posts/s (fake Slack, {} ledger, responses acked); CPU {:.0} µs per post ({:.2?} for the process); alert states all published {} after the last post (CPU {:.2?} meanwhile)",
                r.elapsed,
                total as f64 / r.elapsed.as_secs_f64(),
                ledger_kind(),
                r.cpu.as_secs_f64() * 1e6 / total as f64,
                r.cpu,
                r.states_lag
                    .map_or_else(|| "not".to_owned(), |lag| format!("{lag:.2?}")),
                r.states_cpu
            );
            let per_post = |cpu: Duration| cpu.as_secs_f64() * 1e6 / total as f64;
            let sides: Vec<String> = r
                .split
                .iter()
                .map(|(side, cpu)| format!("{} {:.0} µs", side.name(), per_post(*cpu)))
                .collect();
            println!("  CPU per post by side: {}", sides.join(", "));
            let threads: Vec<String> = r
                .notify_threads
                .iter()
                .map(|(name, cpu)| format!("{name} {:.0}", per_post(*cpu)))
                .collect();
            println!("  notify's threads (µs per post): {}", threads.join(", "));
            if let Some((_, notify)) = r.split.iter().find(|(side, _)| *side == Side::Notify) {
                let us = per_post(*notify);
                println!(
                    "  notify alone: {us:.0} µs of CPU per post, at most {:.0} posts/s on 2 cores",
                    2e6 / us
                );
            }
            let window = r.elapsed.as_secs_f64();
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            let mut machine = format!(
                "  the machine: {:.2} of its {cores} cores busy, {:.0} µs of CPU per post (all processes), {:.2} cores stolen by the host",
                r.machine.busy.as_secs_f64() / window,
                per_post(r.machine.busy),
                r.machine.steal.as_secs_f64() / window,
            );
            if ledger_kind() == "PostgreSQL" {
                machine += &format!(
                    "; PostgreSQL server {:.0} µs per post",
                    per_post(r.postgres_cpu)
                );
            }
            println!("{machine}");
            if !r.windows.is_empty() {
                let by_window: Vec<String> = r
                    .windows
                    .iter()
                    .map(|(posts, busy)| {
                        let us = busy.as_secs_f64() * 1e6 / (*posts).max(1) as f64;
                        format!("{:.1}k ({us:.0} µs)", *posts as f64 / 1e3)
                    })
                    .collect();
                println!(
                    "  by window: posts (the machine's CPU per post): {}",
                    by_window.join(", ")
                );
            }
        }
        "slack" => {
            let total = number(1, 20_000);
            let (elapsed, posts) = runtime.block_on(slack_alone(200, total / 200, slack_handle));
            println!(
                "slack: {posts} posts from 200 tasks in {elapsed:.2?}: {:.0} posts/s (notify's client, fake Slack over HTTP, no ledger, no Kafka)",
                posts as f64 / elapsed.as_secs_f64()
            );
        }
        "kafka" => {
            let total = number(1, 20_000);
            let (serial, pipelined) = runtime.block_on(kafka_alone(200, total / 200));
            let rate = |d: Duration| (total / 200 * 200) as f64 / d.as_secs_f64();
            println!(
                "kafka: {} response records: {:.0}/s awaited one at a time by 200 tasks ({serial:.2?}), {:.0}/s all in flight ({pipelined:.2?}) (notify's producer, mock broker)",
                total / 200 * 200,
                rate(serial),
                rate(pipelined)
            );
        }
        other => {
            eprintln!("unknown benchmark {other:?}: paced | unlimited | slack | kafka");
            std::process::exit(2);
        }
    }
}
