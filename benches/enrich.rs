//! Enrich benchmarks; prints figures (recorded in docs/PERFORMANCE.md).
//!
//!   cargo bench --bench enrich -- core [N]    pure core on one core, N events
//!                                             (default 100,000), with the
//!                                             join tables as decoded trees
//!                                             and as enrich keeps them
//!   cargo bench --bench enrich -- e2e [N]     through the mock broker with
//!                                             transactions, vs. a raw copy
//!                                             of the same records; then
//!                                             p50/p99 latency at half
//!                                             enrich's rate
//!   cargo bench --bench enrich -- bootstrap [N]  table bootstrap time, RSS,
//!                                             the broker's own read rate,
//!                                             enrich's time to ready
//!
//! `scripts/test.sh` runs each with a small N in the dev profile (a smoke
//! run: they must build and run; no figure is checked).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alertsvc::avro::{build_codecs, Codec, Codecs, KeyCodec};
use alertsvc::clock::now_ms;
use alertsvc::config::Settings;
use alertsvc::enrich::parallel::Workers;
use alertsvc::enrich::pipeline::{Pipeline, Prefilter, Source, TableLookup, Verdict};
use alertsvc::enrich::readiness::Readiness;
use alertsvc::enrich::table::{BootstrapProgress, TableLoader, Tables};
use alertsvc::enrich::Enrich;
use alertsvc::http::Health;
use alertsvc::kafka::StageContext;
use alertsvc::metrics::EnrichMetrics;
use futures::executor::block_on;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[path = "../tests/testkit/mod.rs"]
mod testkit;

use testkit::{config_dir, load_settings, mock_cluster, wait_ready_at};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PIPELINE: &str = "connector-provisioning-failure";

/// Event `i`: a third of them from `Running` (which the pipeline drops).
fn event(i: usize) -> Value {
    let status = if i.is_multiple_of(3) {
        "Running"
    } else {
        "Provisioning"
    };
    testkit::connector_event(
        &format!("e{i}"),
        &format!("env-{}", i % 97),
        &format!("lcc-{i}"),
        status,
    )
}

/// 500 CSDRs share the orgs.
fn assignment(org: usize) -> Value {
    testkit::assignment(
        &format!("org-{org}"),
        &format!("csdr{}@example.com", org % 500),
        &format!("Org {org}"),
    )
}

fn slack_user(n: usize) -> Value {
    testkit::slack_user(&format!("csdr{n}@example.com"), &format!("U{n:05}"))
}

/// enrich's settings on `bootstrap`, its HTTP endpoints on port 0, with
/// `extra` under `[enrich]`.
fn enrich_settings(dir: &Path, bootstrap: &str, extra: &str) -> Settings {
    load_settings(Some(testkit::bench_overlay(
        dir,
        bootstrap,
        &format!("[enrich]\nhttp_addr = \"127.0.0.1:0\"\n{extra}"),
    )))
}

struct MemTables(HashMap<(String, String), Arc<Value>>);

impl TableLookup for MemTables {
    fn lookup(&self, table: &str, key: &str) -> Option<Arc<Value>> {
        self.0.get(&(table.to_owned(), key.to_owned())).cloned()
    }
}

/// One record through one pipeline as the processor runs it: the filter on
/// the scanned Avro fields, the full decode only for a record it does not
/// filter out.
fn enrich_one(
    pipeline: &Pipeline,
    input: &Codec,
    source: &Source<'_>,
    payload: &[u8],
    tables: &dyn TableLookup,
) -> Verdict {
    let prefilter = input.scan(payload).map_or(Prefilter::Undecided, |fields| {
        pipeline.prefilter(source, &fields)
    });
    if prefilter == Prefilter::Filtered {
        return Verdict::Filtered;
    }
    let event = block_on(input.decode(payload)).expect("decode");
    if prefilter == Prefilter::Passed {
        pipeline.apply_passed(source, &event, tables)
    } else {
        pipeline.apply(source, &event, tables)
    }
}

/// Emitted events, bytes written, elapsed, for `rounds` passes over
/// `records` with `tables`.
fn run_core(
    pipeline: &Pipeline,
    input: &Codec,
    output: &Codec,
    records: &[(Value, Vec<u8>)],
    tables: &(dyn TableLookup + Sync),
    rounds: usize,
) -> (Duration, usize, usize) {
    let mut emitted = 0usize;
    let mut bytes = 0usize;
    let started = Instant::now();
    for _ in 0..rounds {
        for (i, (key, payload)) in records.iter().enumerate() {
            let source = Source {
                topic: "in",
                partition: 0,
                offset: i as i64,
                key: Some(key),
                timestamp_ms: 1,
            };
            if let Verdict::Emit(message) = enrich_one(pipeline, input, &source, payload, tables) {
                bytes += block_on(output.encode_record(&message, message.blocks.len()))
                    .expect("encode")
                    .len();
                emitted += 1;
            }
        }
    }
    (started.elapsed(), emitted, bytes)
}

fn bench_core(events: usize) {
    let settings = load_settings(None);
    let codecs = build_codecs(&config_dir(), &settings).expect("codecs");
    let enrich = settings.enrich.as_ref().expect("enrich");
    let pipeline =
        Pipeline::compile(PIPELINE, &enrich.pipelines[PIPELINE], &config_dir()).expect("pipeline");
    let orgs = 10_000;
    // The same rows twice: decoded JSON trees (how tables were kept before
    // 2026-11-26) and enrich's `Tables` (compact, decoded on each lookup).
    let mut trees = HashMap::new();
    let mut tables = Tables::default();
    let assignments = tables.insert("csdr_assignment", codecs["csdr_assignment"].clone());
    let users = tables.insert("slack_users", codecs["slack_users"].clone());
    // One org in ten has no assignment: join misses are part of the mix.
    for org in (0..orgs).filter(|o| o % 10 != 9) {
        let (key, row) = (format!("org-{org}"), assignment(org));
        let payload = block_on(codecs["csdr_assignment"].encode(&row)).expect("encode");
        block_on(assignments.upsert_record(&key, &payload)).expect("table row");
        trees.insert(("csdr_assignment".to_owned(), key), Arc::new(row));
    }
    for n in (0..500).filter(|n| n % 5 != 4) {
        let (key, row) = (format!("csdr{n}@example.com"), slack_user(n));
        let payload = block_on(codecs["slack_users"].encode(&row)).expect("encode");
        block_on(users.upsert_record(&key, &payload)).expect("table row");
        trees.insert(("slack_users".to_owned(), key), Arc::new(row));
    }
    let trees = MemTables(trees);
    let input = &codecs["notifications"];
    let output = &codecs["slack_messages"];
    let per_round = events.clamp(1, 20_000);
    let rounds = events.div_ceil(per_round);
    // Decoded keys, as the processor hands them to the pipeline.
    let records: Vec<(Value, Vec<u8>)> = (0..per_round)
        .map(|i| {
            (
                Value::String(format!("org-{}", i % orgs)),
                block_on(input.encode(&event(i))).expect("encode"),
            )
        })
        .collect();

    let mut rates = [0.0; 2];
    let mix: [(&str, &(dyn TableLookup + Sync)); 2] = [
        ("tables as decoded trees", &trees),
        ("tables as enrich keeps them (compact)", &tables),
    ];
    // Warm-up, then both one after the other.
    run_core(&pipeline, input, output, &records, &tables, 1);
    for (i, (label, lookup)) in mix.into_iter().enumerate() {
        let (elapsed, emitted, bytes) =
            run_core(&pipeline, input, output, &records, lookup, rounds);
        let events = rounds * records.len();
        let rate = events as f64 / elapsed.as_secs_f64();
        println!(
            "core, {label}: {events} events ({emitted} emitted, {} filtered or join misses) in {:.2?}: {rate:.0} events/s, {:.2} µs/event, mean output {} B",
            events - emitted,
            elapsed,
            elapsed.as_secs_f64() * 1e6 / events as f64,
            bytes / emitted.max(1)
        );
        rates[i] = rate;
    }
    println!(
        "  compact tables: {:.3} × the decoded trees' rate",
        rates[1] / rates[0]
    );

    // As the processor runs a batch: records of a batch of 1,000 taken in
    // blocks by the workers (helper threads started once, with the
    // processor), outputs in input order.
    let cores = alertsvc::enrich::parallel::cores();
    let mut one_core = 0.0;
    for workers in [1, 2] {
        let pool = Workers::new(workers).expect("worker threads");
        let started = Instant::now();
        let (mut emitted, mut in_order) = (0usize, true);
        for _ in 0..rounds {
            for batch in records.chunks(1000) {
                let blocks = pool.map_blocks(batch, |block| {
                    (
                        block.len(),
                        run_core(&pipeline, input, output, block, &tables, 1),
                    )
                });
                in_order &= blocks.iter().map(|(n, _)| n).sum::<usize>() == batch.len();
                emitted += blocks.iter().map(|(_, (_, e, _))| e).sum::<usize>();
            }
        }
        let elapsed = started.elapsed();
        let events = rounds * records.len();
        let rate = events as f64 / elapsed.as_secs_f64();
        if workers == 1 {
            one_core = rate;
        }
        println!(
            "core, batches of 1,000 on {workers} worker(s) ({cores} cores): {events} events ({emitted} emitted) in {elapsed:.2?}: {rate:.0} events/s, {:.2} × one worker{}",
            rate / one_core,
            if in_order { "" } else { " (RECORDS MISSING)" }
        );
    }

    // Cost of each step alone, to show where the time goes.
    let (key, payload) = (&records[1].0, &records[1].1);
    let value = block_on(input.decode(payload)).expect("decode");
    let source = Source {
        topic: "in",
        partition: 0,
        offset: 1,
        key: Some(key),
        timestamp_ms: 1,
    };
    let Verdict::Emit(message) = pipeline.apply(&source, &value, &tables) else {
        panic!("record 1 emits")
    };
    let n = (events / 2).max(100);
    let time = |label: &str, f: &dyn Fn()| {
        let started = Instant::now();
        for _ in 0..n {
            f();
        }
        println!(
            "  {label}: {:.2} µs",
            started.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    };
    time("decode (single-object Avro → JSON)", &|| {
        block_on(input.decode(payload)).expect("decode");
    });
    let filtered = block_on(input.decode(&records[0].1)).expect("decode");
    time("filtered event (parse data, CEL filter)", &|| {
        pipeline.apply(&source, &filtered, &tables);
    });
    time("filtered event, full decode then filter", &|| {
        let event = block_on(input.decode(&records[0].1)).expect("decode");
        assert!(matches!(
            pipeline.apply(&source, &event, &tables),
            Verdict::Filtered
        ));
    });
    time(
        "scan (single-object Avro checked whole, fields borrowed)",
        &|| {
            input.scan(&records[0].1).expect("scan");
        },
    );
    // As enrich runs it: the datum checked whole and the filter run on its
    // fields; a filtered record is never decoded to JSON.
    time(
        "filtered event, decode included (scan + filter, as enrich runs it)",
        &|| {
            assert!(matches!(
                enrich_one(&pipeline, input, &source, &records[0].1, &tables),
                Verdict::Filtered
            ));
        },
    );
    time(
        "emitted event, decode and encode included (compact tables)",
        &|| {
            let event = block_on(input.decode(payload)).expect("decode");
            let Verdict::Emit(message) = pipeline.apply(&source, &event, &tables) else {
                panic!("record 1 emits")
            };
            block_on(output.encode_record(&message, message.blocks.len())).expect("encode");
        },
    );
    time(
        "emitted event as enrich runs it (scan + filter, decode, the rest, encode)",
        &|| {
            let Verdict::Emit(message) = enrich_one(&pipeline, input, &source, payload, &tables)
            else {
                panic!("record 1 emits")
            };
            block_on(output.encode_record(&message, message.blocks.len())).expect("encode");
        },
    );
    for (label, lookup) in mix {
        time(
            &format!("emitted event (filter, 2 joins, render, Block Kit check), {label}"),
            &|| {
                pipeline.apply(&source, &value, lookup);
            },
        );
        time(&format!("one assignment lookup, {label}"), &|| {
            lookup.lookup("csdr_assignment", "org-1").expect("row");
        });
    }
    time("encode (the message → single-object Avro)", &|| {
        block_on(output.encode_record(&message, message.blocks.len())).expect("encode");
    });
}

/// CPU time this process used so far (every thread: the mock broker's
/// included), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th, in clock ticks (100 per second here).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn produce_all(
    bootstrap: &str,
    topic: &str,
    records: impl Iterator<Item = (String, Vec<u8>)>,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let mut pending = Vec::new();
    for (key, payload) in records {
        loop {
            match producer.send_result(FutureRecord::to(topic).key(&key).payload(&payload)) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((_, _)) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        if pending.len() >= 50_000 {
            for d in pending.drain(..) {
                d.await.expect("delivery").expect("delivered");
            }
        }
    }
    for d in pending {
        d.await.expect("delivery").expect("delivered");
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// A read_committed consumer of enrich's output: it sees a Slack message
/// only once its transaction committed, so the time it receives one is an
/// upper bound of the commit's (later by at most a fetch round trip).
struct Drain {
    consumer: StreamConsumer,
    codec: Arc<Codec>,
}

impl Drain {
    fn new(bootstrap: &str, topic: &str, codec: Arc<Codec>) -> Drain {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("drain-{topic}"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        Drain { consumer, codec }
    }

    /// Reads `count` records; returns when the last one was read.
    async fn read(&self, count: usize) -> Instant {
        for _ in 0..count {
            self.next().await;
        }
        Instant::now()
    }

    /// Reads `count` records; returns each one's latency in ms: its
    /// receive time (wall clock) minus its `createdAt`, which enrich sets
    /// to the event's timestamp (the input record's).
    async fn latencies(&self, count: usize) -> Vec<i64> {
        let mut latencies = Vec::with_capacity(count);
        for _ in 0..count {
            let m = self.next().await;
            let received = now_ms();
            let message = self
                .codec
                .decode(m.payload().expect("payload"))
                .await
                .expect("slack message");
            let created = message["createdAt"].as_i64().expect("createdAt");
            latencies.push(received - created);
        }
        latencies
    }

    async fn next(&self) -> rdkafka::message::BorrowedMessage<'_> {
        tokio::time::timeout(Duration::from_secs(120), self.consumer.recv())
            .await
            .expect("progress")
            .expect("message")
    }
}

/// The `q` quantile (0..1) of sorted values.
fn quantile(sorted: &[i64], q: f64) -> i64 {
    let at = ((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1);
    sorted
        .get(at.min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

/// Produces events `from..from + count` at `rate` per second, each stamped
/// with the wall-clock time it is sent: the event time the latency counts
/// from.
async fn produce_paced(bootstrap: &str, codec: &Codec, from: usize, count: usize, rate: f64) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let tick = Duration::from_millis(10);
    let per_tick = (rate * tick.as_secs_f64()).max(1.0) as usize;
    let mut ticks = tokio::time::interval(tick);
    let mut pending = Vec::new();
    let mut i = from;
    while i < from + count {
        ticks.tick().await;
        for _ in 0..per_tick.min(from + count - i) {
            let key = format!("org-{}", i % 10_000);
            let payload = codec.encode(&event(i)).await.expect("encode");
            let record = FutureRecord::to("data-notifications-pipeline")
                .key(&key)
                .payload(&payload)
                .timestamp(now_ms());
            pending.push(producer.send_result(record).expect("queue"));
            i += 1;
        }
    }
    for d in pending {
        d.await.expect("delivery").expect("delivered");
    }
}

/// The enrich process's `alertsvc_enrich_records_in_total`, summed.
async fn records_in(addr: &str) -> f64 {
    let Ok(response) = reqwest::get(format!("http://{addr}/metrics")).await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("alertsvc_enrich_records_in_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn bench_e2e(events: usize) {
    let cluster = mock_cluster(&[
        // The mock broker keeps at most 5 MB per partition and deletes
        // older records: enough partitions to hold every record.
        ("data-notifications-pipeline", 128),
        ("data-csdr-assignment", 2),
        ("data-slack-users", 2),
        ("alert-state", 2),
        ("slack-messages", 384),
        ("raw-copy", 128),
    ]);
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = enrich_settings(dir.path(), &bootstrap, "max_batch_records = 5000");
    let codecs: Codecs = build_codecs(&config_dir(), &settings).expect("codecs");
    let orgs = 10_000;
    produce_all(
        &bootstrap,
        "data-csdr-assignment",
        (0..orgs).map(|o| {
            (
                format!("org-{o}"),
                block_on(codecs["csdr_assignment"].encode(&assignment(o))).expect("encode"),
            )
        }),
    )
    .await;
    produce_all(
        &bootstrap,
        "data-slack-users",
        (0..500).map(|n| {
            (
                format!("csdr{n}@example.com"),
                block_on(codecs["slack_users"].encode(&slack_user(n))).expect("encode"),
            )
        }),
    )
    .await;
    let started = Instant::now();
    produce_all(
        &bootstrap,
        "data-notifications-pipeline",
        (0..events).map(|i| {
            (
                format!("org-{}", i % orgs),
                block_on(codecs["notifications"].encode(&event(i))).expect("encode"),
            )
        }),
    )
    .await;
    println!("e2e: produced {events} events in {:.2?}", started.elapsed());
    let expected = (0..events).filter(|i| i % 3 != 0).count();

    // Raw copy: consume → produce the same records in transactions of the
    // same size, no decoding or processing; timed from its first record.
    let copy_time = raw_copy(bootstrap.clone(), events).await;
    let copy_rate = events as f64 / copy_time.as_secs_f64();
    println!("e2e: raw transactional copy: {events} records in {copy_time:.2?} = {copy_rate:.0} records/s");

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let rss_before = rss_mb();
    let enrich = Enrich::build(&settings, &config_dir())
        .await
        .expect("enrich binds");
    let http_addr = enrich.handle().addr.to_string();
    let enrich = tokio::spawn(async move {
        enrich.run_until_stopped(stop).await.expect("enrich");
    });
    let drain = Arc::new(Drain::new(
        &bootstrap,
        "slack-messages",
        codecs["slack_messages"].clone(),
    ));
    let drained = tokio::spawn({
        let drain = drain.clone();
        async move { drain.read(expected).await }
    });
    // Timed from the first record enrich reads (after group join and table
    // bootstrap), like the copy.
    while records_in(&http_addr).await == 0.0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first_in = Instant::now();
    let last_out = drained.await.expect("drain");
    let enrich_time = last_out - first_in;
    let rate = events as f64 / enrich_time.as_secs_f64();
    println!(
        "e2e: enrich (exactly-once): {events} events → {expected} messages in {enrich_time:.2?} = {rate:.0} events/s ({:.2} × raw copy); RSS {:.0} → {:.0} MB",
        rate / copy_rate,
        rss_before,
        rss_mb()
    );
    println!(
        "e2e: where enrich's batches spent their time (s, summed): {}",
        phases(&http_addr).await
    );

    // Latency: with the backlog drained, events arrive at half the rate
    // just measured (a load enrich keeps up with), each stamped when sent;
    // a backlog would measure its own queueing instead.
    let paced = (events / 10).max(300);
    let paced_rate = (rate / 2.0).max(100.0);
    let paced_expected = (events..events + paced).filter(|i| i % 3 != 0).count();
    let measured = tokio::spawn({
        let drain = drain.clone();
        async move { drain.latencies(paced_expected).await }
    });
    produce_paced(
        &bootstrap,
        &codecs["notifications"],
        events,
        paced,
        paced_rate,
    )
    .await;
    let mut latencies = measured.await.expect("latencies");
    latencies.sort_unstable();
    println!(
        "e2e: latency, event timestamp → Slack message read read_committed, {paced} events at {paced_rate:.0}/s ({} messages): p50 {} ms, p99 {} ms, max {} ms",
        latencies.len(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0)
    );
    shutdown.cancel();
    let _ = enrich.await;
}

/// `alertsvc_enrich_batch_phase_seconds` summed per phase.
async fn phases(addr: &str) -> String {
    let Ok(response) = reqwest::get(format!("http://{addr}/metrics")).await else {
        return String::new();
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("alertsvc_enrich_batch_phase_seconds_sum{phase=\""))
        .filter_map(|l| {
            let (phase, rest) = l.split_once('"')?;
            Some(format!(
                "{phase} {:.2}",
                rest.rsplit(' ').next()?.parse::<f64>().ok()?
            ))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn raw_copy(bootstrap: String, events: usize) -> Duration {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "raw-copy")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", "raw-copy")
        .set("queue.buffering.max.messages", "10000000")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    tokio::task::block_in_place(|| producer.init_transactions(Duration::from_secs(30)))
        .expect("init");
    consumer
        .subscribe(&["data-notifications-pipeline"])
        .expect("subscribe");
    let mut copied = 0;
    let mut first = None;
    while copied < events {
        tokio::task::block_in_place(|| producer.begin_transaction()).expect("begin");
        let mut offsets = rdkafka::TopicPartitionList::new();
        for _ in 0..5000.min(events - copied) {
            let m = consumer.recv().await.expect("message");
            first.get_or_insert_with(Instant::now);
            loop {
                let record = FutureRecord::to("raw-copy")
                    .key(m.key().unwrap_or_default())
                    .payload(m.payload().unwrap_or_default());
                match producer.send_result(record) {
                    Ok(_) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                }
            }
            offsets
                .add_partition_offset(
                    m.topic(),
                    m.partition(),
                    rdkafka::Offset::Offset(m.offset() + 1),
                )
                .expect("offset");
            copied += 1;
        }
        let group = consumer.group_metadata().expect("group");
        tokio::task::block_in_place(|| {
            producer.send_offsets_to_transaction(&offsets, &group, Duration::from_secs(30))?;
            producer.commit_transaction(Duration::from_secs(30))
        })
        .expect("commit");
    }
    first.map(|f| f.elapsed()).unwrap_or_default()
}

fn table_consumer(bootstrap: &str, group: &str) -> StreamConsumer<StageContext> {
    // As enrich sets up its table consumers.
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("fetch.queue.backoff.ms", "10")
        .create_with_context(StageContext::default())
        .expect("consumer")
}

/// The broker's own ceiling: every record of `topic` read by a consumer
/// set up like a table loader, nothing decoded or kept, up to the high
/// watermarks read before (as the loader does). Returns the records read
/// and the time from assignment to the last one.
async fn read_all(bootstrap: &str, topic: &str, partitions: i32) -> (usize, Duration) {
    let consumer = table_consumer(bootstrap, "bootstrap-bench-ceiling");
    let mut assignment = TopicPartitionList::new();
    let mut watermarks = Vec::new();
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(30))
            .expect("watermarks");
        watermarks.push((p, low, high));
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    let mut progress = BootstrapProgress::new(&watermarks);
    let started = Instant::now();
    consumer.assign(&assignment).expect("assign");
    let mut read = 0;
    while !progress.is_done() {
        match tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("progress")
        {
            Ok(m) => {
                read += 1;
                progress.record_consumed(m.partition(), m.offset());
            }
            Err(KafkaError::PartitionEOF(p)) => progress.partition_eof(p),
            Err(e) => panic!("read: {e}"),
        }
    }
    (read, started.elapsed())
}

async fn bench_bootstrap(records: usize) {
    const PARTITIONS: i32 = 128;
    const TOPIC: &str = "data-csdr-assignment";
    let cluster = mock_cluster(&[
        // The mock broker keeps at most 5 MB per partition: enough
        // partitions to hold every record.
        (TOPIC, PARTITIONS),
        ("data-slack-users", 1),
        ("alert-state", 1),
        ("data-notifications-pipeline", 1),
        ("slack-messages", 1),
    ]);
    let bootstrap = cluster.bootstrap_servers();
    let settings = load_settings(None);
    let codecs = build_codecs(&config_dir(), &settings).expect("codecs");
    let codec: Arc<Codec> = codecs["csdr_assignment"].clone();
    produce_all(
        &bootstrap,
        TOPIC,
        (0..records).map(|o| {
            (
                format!("org-{o}"),
                block_on(codec.encode(&assignment(o))).expect("encode"),
            )
        }),
    )
    .await;

    // 1. One table loader alone: bootstrap time and the memory it adds.
    let registry = prometheus::Registry::new();
    let metrics = EnrichMetrics::register(&registry).expect("metrics");
    let dlq: FutureProducer<StageContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create_with_context(StageContext::default())
        .expect("producer");
    let mut tables = Tables::default();
    let table = tables.insert("csdr_assignment", codec);
    let loader = TableLoader {
        id: "csdr_assignment".into(),
        topic: TOPIC.into(),
        dlq_topic: format!("{TOPIC}.dlq"),
        key_codec: Arc::new(KeyCodec::Text),
        table: table.clone(),
        consumer: table_consumer(&bootstrap, "bootstrap-bench"),
        dlq,
        readiness: Arc::new(Readiness::new(
            Arc::new(Health::default()),
            metrics.registry_unavailable.clone(),
        )),
        metrics: metrics.clone(),
    };
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let shutdown = CancellationToken::new();
    let rss_before = rss_mb();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let task = tokio::spawn(loader.run(tx, shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(600), rx.wait_for(|done| *done))
        .await
        .expect("bootstrapped within 10 minutes")
        .expect("loader running");
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    let rss_after = rss_mb();
    println!(
        "bootstrap: {records} assignment records → {} keys in {elapsed:.2?} ({:.0} records/s, CPU {cpu:.2} s); RSS {rss_before:.0} → {rss_after:.0} MB (+{:.0} MB)",
        table.len(),
        records as f64 / elapsed.as_secs_f64(),
        rss_after - rss_before
    );
    assert_eq!(table.len(), records, "every key loaded");
    assert!(table.get("org-0").is_some(), "rows can be read back");
    shutdown.cancel();
    let _ = task.await;
    drop((tables, table));

    // 2. The ceiling: the same records read by the same kind of consumer,
    // nothing decoded or kept.
    let cpu_before = cpu_seconds();
    let (read, elapsed) = read_all(&bootstrap, TOPIC, PARTITIONS).await;
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "bootstrap: the broker's ceiling, {read} records read without decoding or keeping them in {elapsed:.2?} ({:.0} records/s, CPU {cpu:.2} s)",
        read as f64 / elapsed.as_secs_f64()
    );

    // 3. enrich as a whole (both tables, output schema ids): from start to
    // `/readyz` answering 200.
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = enrich_settings(dir.path(), &bootstrap, "");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let started = Instant::now();
    let enrich = Enrich::build(&settings, &config_dir())
        .await
        .expect("enrich binds");
    let addr = enrich.handle().addr;
    let enrich = tokio::spawn(async move {
        enrich.run_until_stopped(stop).await.expect("enrich");
    });
    wait_ready_at(addr, Duration::from_secs(600)).await;
    println!(
        "bootstrap: enrich ready (/readyz 200) {:.2?} after start, {records} assignment records in its table",
        started.elapsed()
    );
    shutdown.cancel();
    let _ = enrich.await;
}

fn main() {
    let args = testkit::bench_init();
    let which = args.first().map(String::as_str).unwrap_or("core");
    let n: Option<usize> = args.get(1).and_then(|n| n.parse().ok());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match which {
        "core" => bench_core(n.unwrap_or(100_000)),
        "e2e" => runtime.block_on(bench_e2e(n.unwrap_or(1_000_000))),
        "bootstrap" => runtime.block_on(bench_bootstrap(n.unwrap_or(1_000_000))),
        other => {
            eprintln!("unknown benchmark {other:?}: core [N] | e2e [N] | bootstrap [N]");
            std::process::exit(2);
        }
    }
}
