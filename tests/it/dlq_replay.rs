//! `alertsvc dlq replay`: dead letters go back to their source topic with
//! their original key and bytes, selected by reason and time, each at most
//! once across runs; a dry run changes nothing; produce's rows (no source
//! position) are skipped by name.

use std::process::{Command, Stdio};
use std::time::Duration;

use alertsvc::clock::now_ms;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::common::{config_dir, TestEnv};

/// A dead letter as the stages write it.
struct Letter {
    key: Option<&'static str>,
    payload: Vec<u8>,
    reason: &'static str,
    /// `None`: one of produce's rows (job and row headers instead).
    source: Option<(i32, i64)>,
    timestamp_ms: i64,
}

async fn env(dir: &tempfile::TempDir) -> TestEnv {
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("state.db").display()
    );
    TestEnv::new(&format!("[produce.state]\ndatabase_url = \"{url}\"\n")).await
}

/// Writes the dead letters to the DLQ of `notifications`; returns their offsets.
async fn write_letters(env: &TestEnv, letters: &[Letter]) -> Vec<i64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env.broker.bootstrap())
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let (dlq, source) = (env.dlq("notifications"), env.topic("notifications"));
    let mut offsets = Vec::new();
    for letter in letters {
        let mut headers = OwnedHeaders::new()
            .insert(header("alertsvc.dlq.reason", letter.reason))
            .insert(header("alertsvc.dlq.stage", "decode"))
            .insert(header("traceparent", "00-abc-def-01"));
        match letter.source {
            Some((partition, offset)) => {
                headers = headers
                    .insert(header("alertsvc.dlq.source.topic", &source))
                    .insert(header(
                        "alertsvc.dlq.source.partition",
                        &partition.to_string(),
                    ))
                    .insert(header("alertsvc.dlq.source.offset", &offset.to_string()));
            }
            None => {
                headers = headers
                    .insert(header("alertsvc.dlq.job", "connector-failures"))
                    .insert(header("alertsvc.dlq.row", "5"));
            }
        }
        let mut record = FutureRecord::<str, [u8]>::to(&dlq)
            .payload(&letter.payload)
            .headers(headers)
            .timestamp(letter.timestamp_ms);
        if let Some(key) = letter.key {
            record = record.key(key);
        }
        let delivery = producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {dlq}: {e}"));
        offsets.push(delivery.offset);
    }
    offsets
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// Runs `alertsvc dlq replay --topic notifications ARGS`: (exit code, stdout, stderr).
async fn replay(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_alertsvc"));
    command
        .arg("--config-dir")
        .arg(config_dir())
        .arg("--config")
        .arg(&env.overlay)
        .args(["dlq", "replay", "--topic", "notifications"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run alertsvc dlq replay");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Records in the source topic, counted by reading them: tansu's listed
/// watermarks can be stale (DEPENDENCY-FACTS).
async fn source_records(env: &TestEnv, expected: usize) -> usize {
    env.read_until(
        &env.topic("notifications"),
        |records| records.len() >= expected,
        Duration::from_secs(10),
    )
    .await
    .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_by_reason_once_and_skips_produce_rows() {
    let dir = tempfile::tempdir().unwrap();
    let env = env(&dir).await;
    let now = now_ms();
    let letters = [
        Letter {
            key: Some("org-1"),
            payload: vec![0, 0, 0, 0, 7, 0xff, 1],
            reason: "schema 7 not found",
            source: Some((2, 40)),
            timestamp_ms: now,
        },
        Letter {
            key: Some("org-2"),
            payload: vec![0, 0, 0, 0, 7, 0xfe, 2],
            reason: "render: template failed",
            source: Some((0, 41)),
            timestamp_ms: now,
        },
        Letter {
            key: None,
            payload: vec![0, 0, 0, 0, 7, 0xfd, 3],
            reason: "schema 7 not found",
            source: Some((1, 42)),
            timestamp_ms: now,
        },
        Letter {
            key: None,
            payload: br#"{"org_id":null}"#.to_vec(),
            reason: "row 5, column org_id: missing key (NULL)",
            source: None,
            timestamp_ms: now,
        },
    ];
    let offsets = write_letters(&env, &letters).await;
    let dlq = env.dlq("notifications");

    // A dry run lists what would go, and sends nothing.
    let (code, stdout, stderr) = replay(&env, &["--dry-run"]).await;
    assert_eq!(code, 0, "{stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0]["from"], format!("{dlq}/0/{}", offsets[0]));
    assert_eq!(lines[0]["topic"], env.topic("notifications"));
    assert_eq!(lines[0]["key"], "org-1");
    assert_eq!(lines[1]["reason"], "render: template failed");
    assert!(stdout.contains("read: 4\nmatched: 4\nreplayed: 0\nalready replayed: 0\nskipped: 1 (1 × no source position (produce's dead letters"), "{stdout}");
    assert_eq!(source_records(&env, 0).await, 0);

    // Only the matching reason; original key and bytes, the foreign
    // header kept, the dead-letter headers gone, the origin named.
    let (code, stdout, stderr) = replay(&env, &["--reason", "schema 7"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("matched: 2\nreplayed: 2\n"), "{stdout}");
    let replayed = env
        .read(&env.topic("notifications"), 2, Duration::from_secs(10))
        .await;
    assert_eq!(replayed.len(), 2);
    for (i, letter_index) in [(0usize, 0usize), (1, 2)] {
        let record = replayed
            .iter()
            .find(|r| {
                r.headers.get("alertsvc.replayed.from")
                    == Some(&format!("{dlq}/0/{}", offsets[letter_index]))
            })
            .unwrap_or_else(|| panic!("record {i}: {replayed:?}"));
        let letter = &letters[letter_index];
        assert_eq!(record.key.as_deref(), letter.key);
        assert_eq!(record.payload.as_deref(), Some(&letter.payload[..]));
        assert_eq!(record.headers["traceparent"], "00-abc-def-01");
        assert!(
            !record
                .headers
                .keys()
                .any(|k| k.starts_with("alertsvc.dlq.")),
            "{:?}",
            record.headers
        );
    }

    // Again: nothing more is replayed.
    let (code, stdout, stderr) = replay(&env, &["--reason", "schema 7"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("replayed: 0\nalready replayed: 2\nskipped: 0\n"),
        "{stdout}"
    );

    // Everything: the other reason goes, produce's row is skipped by name
    // and makes the exit status non-zero, twice.
    for (replayed, already) in [(1, 2), (0, 3)] {
        let (code, stdout, stderr) = replay(&env, &[]).await;
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stdout.contains(&format!(
                "matched: 4\nreplayed: {replayed}\nalready replayed: {already}\nskipped: 1 ("
            )),
            "{stdout}"
        );
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.contains("1 selected dead letter(s) not replayed")
                && last.contains("no source position"),
            "{last}"
        );
    }
    assert_eq!(source_records(&env, 3).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_selects_by_the_dead_letters_time() {
    let dir = tempfile::tempdir().unwrap();
    let env = env(&dir).await;
    let now = now_ms();
    let old = 1_577_836_800_000; // 2020-01-01T00:00:00Z
    let letter = |key, timestamp_ms| Letter {
        key: Some(key),
        payload: key.as_bytes().to_vec(),
        reason: "schema 7 not found",
        source: Some((0, 1)),
        timestamp_ms,
    };
    write_letters(
        &env,
        &[
            letter("old-1", old),
            letter("new-1", now),
            letter("old-2", old + 1),
        ],
    )
    .await;

    let (code, stdout, stderr) = replay(&env, &["--since", "1h", "--dry-run"]).await;
    assert_eq!(code, 0, "{stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_eq!(lines[0]["key"], "new-1");
    let (code, stdout, stderr) =
        replay(&env, &["--since", "2020-01-01T00:00:00.001Z", "--dry-run"]).await;
    assert_eq!(code, 0, "{stderr}");
    let keys: Vec<_> = json_lines(&stdout)
        .iter()
        .map(|l| l["key"].clone())
        .collect();
    assert_eq!(keys, ["new-1", "old-2"]);

    let (code, stdout, stderr) = replay(&env, &["--since", "1h"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("read: 3\nmatched: 1\nreplayed: 1\n"),
        "{stdout}"
    );
    let records = env
        .read(&env.topic("notifications"), 1, Duration::from_secs(10))
        .await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key.as_deref(), Some("new-1"));

    let (code, _, stderr) = replay(&env, &["--since", "yesterday"]).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("--since"), "{stderr}");
}
