//! Enrich benchmarks; prints figures (recorded in docs/PERFORMANCE.md).
//!
//!   cargo bench --bench enrich -- core        pure core on one core
//!   cargo bench --bench enrich -- e2e [N]     through the mock broker with
//!                                             transactions, vs. a raw copy
//!   cargo bench --bench enrich -- bootstrap [N]  table bootstrap time, RSS

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alertsvc::avro::{build_codecs, Codec, Codecs, KeyCodec};
use alertsvc::config::{Settings, Sources};
use alertsvc::enrich::pipeline::{Pipeline, Source, TableLookup, Verdict};
use alertsvc::enrich::readiness::Readiness;
use alertsvc::enrich::table::{TableLoader, Tables};
use alertsvc::http::Health;
use alertsvc::kafka::StageContext;
use alertsvc::metrics::EnrichMetrics;
use futures::executor::block_on;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PIPELINE: &str = "connector-provisioning-failure";

fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn settings(extra: Option<PathBuf>) -> Settings {
    Settings::load(&Sources {
        dir: config_dir(),
        env_name: None,
        extra_file: extra,
        use_env_vars: false,
    })
    .expect("config")
}

fn event(i: usize) -> Value {
    let status = if i.is_multiple_of(3) {
        "Running"
    } else {
        "Provisioning"
    };
    let data = json!({"env_id": format!("env-{}", i % 97), "connector_id": format!("lcc-{i}"),
        "connector_name": format!("sink-{i}"), "connector_type": "PostgresSink",
        "failure_reason": "authentication failed for user \"app\"",
        "labels": {"connector_old_status": status, "connector_new_status": "Failed"}});
    json!({"eventId": format!("e{i}"), "eventType": "connector-failure", "source": "bench",
           "time": 1_700_000_000_000i64, "data": data.to_string()})
}

fn assignment(org: usize) -> Value {
    json!({"org_id": format!("org-{org}"), "org_name": format!("Org {org}"), "csdr_name": "CSDR",
           "csdr_email": format!("csdr{}@example.com", org % 500), "updated_at": 1})
}

fn slack_user(n: usize) -> Value {
    json!({"email": format!("csdr{n}@example.com"), "slack_user_id": format!("U{n:05}")})
}

struct MemTables(HashMap<(String, String), Arc<Value>>);

impl TableLookup for MemTables {
    fn lookup(&self, table: &str, key: &str) -> Option<Arc<Value>> {
        self.0.get(&(table.to_owned(), key.to_owned())).cloned()
    }
}

fn bench_core() {
    let settings = settings(None);
    let codecs = build_codecs(&config_dir(), &settings).expect("codecs");
    let enrich = settings.enrich.as_ref().expect("enrich");
    let pipeline =
        Pipeline::compile(PIPELINE, &enrich.pipelines[PIPELINE], &config_dir()).expect("pipeline");
    let orgs = 10_000;
    let mut map = HashMap::new();
    // One org in ten has no assignment: join misses are part of the mix.
    for org in (0..orgs).filter(|o| o % 10 != 9) {
        map.insert(
            ("csdr_assignment".to_owned(), format!("org-{org}")),
            Arc::new(assignment(org)),
        );
    }
    for n in (0..500).filter(|n| n % 5 != 4) {
        map.insert(
            ("slack_users".to_owned(), format!("csdr{n}@example.com")),
            Arc::new(slack_user(n)),
        );
    }
    let tables = MemTables(map);
    let input = &codecs["notifications"];
    let output = &codecs["slack_messages"];
    let records: Vec<(String, Vec<u8>)> = (0..20_000)
        .map(|i| {
            (
                format!("org-{}", i % orgs),
                block_on(input.encode(&event(i))).expect("encode"),
            )
        })
        .collect();
    // Decoded keys, as the processor hands them to the pipeline.
    let keys: Vec<Value> = records
        .iter()
        .map(|(key, _)| Value::String(key.clone()))
        .collect();

    let run = |rounds: usize| {
        let mut emitted = 0usize;
        let mut bytes = 0usize;
        let started = Instant::now();
        for _ in 0..rounds {
            for (i, (key, (_, payload))) in keys.iter().zip(&records).enumerate() {
                let value = block_on(input.decode(payload)).expect("decode");
                let source = Source {
                    topic: "in",
                    partition: 0,
                    offset: i as i64,
                    key: Some(key),
                    timestamp_ms: 1,
                };
                if let Verdict::Emit(message) = pipeline.apply(&source, &value, &tables) {
                    bytes += block_on(output.encode(&message.to_json()))
                        .expect("encode")
                        .len();
                    emitted += 1;
                }
            }
        }
        (started.elapsed(), emitted, bytes)
    };
    run(1);
    let rounds = 5;
    let (elapsed, emitted, bytes) = run(rounds);
    let events = rounds * records.len();
    println!(
        "core: {events} events ({emitted} emitted, {} filtered or join misses) in {:.2?}: {:.0} events/s, {:.2} µs/event, mean output {} B",
        events - emitted,
        elapsed,
        events as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / events as f64,
        bytes / emitted.max(1)
    );

    // Cost of each step alone, to show where the time goes.
    let (key, payload) = (&keys[1], &records[1].1);
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
    let json = message.to_json();
    let n = 50_000;
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
    time(
        "emitted event (filter, 2 joins, render, Block Kit check)",
        &|| {
            pipeline.apply(&source, &value, &tables);
        },
    );
    time("encode (JSON → single-object Avro)", &|| {
        block_on(output.encode(&json)).expect("encode");
    });
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

/// Reads `topic` until `count` records arrived; returns when the last one
/// was read.
async fn drain(bootstrap: String, topic: &'static str, count: usize) -> Instant {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("drain-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    for _ in 0..count {
        let m = tokio::time::timeout(Duration::from_secs(120), consumer.recv())
            .await
            .expect("progress")
            .expect("message");
        let _ = m.offset();
    }
    Instant::now()
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
    let cluster = MockCluster::new(1).expect("mock");
    let bootstrap = cluster.bootstrap_servers();
    for (topic, partitions) in [
        // The mock broker keeps at most 5 MB per partition and deletes
        // older records: enough partitions to hold every record.
        ("data-notifications-pipeline", 128),
        ("data-csdr-assignment", 2),
        ("data-slack-users", 2),
        ("slack-messages", 384),
        ("raw-copy", 128),
    ] {
        cluster.create_topic(topic, partitions, 1).expect("topic");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let overlay = dir.path().join("bench.toml");
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let http_addr = format!("127.0.0.1:{http_port}");
    std::fs::write(
        &overlay,
        format!(
            "[log]\nlevel = \"warn\"\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\n[enrich]\nhttp_addr = \"{http_addr}\"\nmax_batch_records = 5000\n"
        ),
    )
    .expect("overlay");
    let settings = settings(Some(overlay));
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
    let enrich = tokio::spawn(async move {
        alertsvc::enrich::run(&settings, &config_dir(), stop)
            .await
            .expect("enrich");
    });
    let drained = tokio::spawn(drain(bootstrap.clone(), "slack-messages", expected));
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
    shutdown.cancel();
    let _ = enrich.await;
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

async fn bench_bootstrap(records: usize) {
    let cluster = MockCluster::new(1).expect("mock");
    let bootstrap = cluster.bootstrap_servers();
    // The mock broker keeps at most 5 MB per partition: enough partitions
    // to hold every record.
    cluster
        .create_topic("data-csdr-assignment", 128, 1)
        .expect("topic");
    let settings = settings(None);
    let codecs = build_codecs(&config_dir(), &settings).expect("codecs");
    let codec: Arc<Codec> = codecs["csdr_assignment"].clone();
    produce_all(
        &bootstrap,
        "data-csdr-assignment",
        (0..records).map(|o| {
            (
                format!("org-{o}"),
                block_on(codec.encode(&assignment(o))).expect("encode"),
            )
        }),
    )
    .await;
    let registry = prometheus::Registry::new();
    let metrics = EnrichMetrics::register(&registry).expect("metrics");
    let consumer: StreamConsumer<StageContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "bootstrap-bench")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(StageContext::default())
        .expect("consumer");
    let dlq: FutureProducer<StageContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create_with_context(StageContext::default())
        .expect("producer");
    let mut tables = Tables::default();
    let table = tables.insert("csdr_assignment");
    let loader = TableLoader {
        id: "csdr_assignment".into(),
        topic: "data-csdr-assignment".into(),
        dlq_topic: "data-csdr-assignment.dlq".into(),
        codec,
        key_codec: Arc::new(KeyCodec::Text),
        table: table.clone(),
        consumer,
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
    let started = Instant::now();
    let task = tokio::spawn(loader.run(tx, shutdown.clone()));
    rx.wait_for(|done| *done).await.expect("bootstrapped");
    let elapsed = started.elapsed();
    println!(
        "bootstrap: {records} assignment records → {} keys in {elapsed:.2?} ({:.0} records/s); RSS {rss_before:.0} → {:.0} MB",
        table.len(),
        records as f64 / elapsed.as_secs_f64(),
        rss_mb()
    );
    shutdown.cancel();
    let _ = task.await;
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let which = args.first().map(String::as_str).unwrap_or("core");
    let n = args
        .get(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match which {
        "core" => bench_core(),
        "e2e" => runtime.block_on(bench_e2e(n)),
        "bootstrap" => runtime.block_on(bench_bootstrap(n)),
        other => eprintln!("unknown benchmark {other:?}: core | e2e [N] | bootstrap [N]"),
    }
}
