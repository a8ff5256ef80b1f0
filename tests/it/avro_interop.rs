//! Records every Avro client can read (issue 10): Apache Avro for Java
//! (Debian's libavro-java: `SchemaNormalization`, `BinaryMessageDecoder`,
//! `BinaryMessageEncoder`) and fastavro compute the same single-object
//! fingerprints as alertsvc, read what alertsvc's codec writes, and write
//! what it reads, including records of an older schema resolved through
//! `writer_schemas`.
//!
//! The other side runs once per test as one process over one JSON request
//! (`avro_interop/AvroInterop.java` in single-file source mode,
//! `avro_interop/avro_interop.py`). Missing tools fail the test: a skipped
//! interop test is how the fingerprint bug went unnoticed.

use std::path::{Path, PathBuf};
use std::process::Command;

use alertsvc::avro::{load_schema_file, spec_fingerprint, Codec};
use alertsvc::config::{KeyFormat, TopicSettings, WireFormat};
use serde_json::{json, Value};

const INSTALL: &str = "run scripts/install-test-deps.sh";

/// Debian's libavro-java and what it needs at run time. slf4j-api is a
/// dependency the jar loads on first use; slf4j-nop silences its warning.
const JAVA_CLASSPATH: &[&str] = &[
    "/usr/share/java/avro.jar",
    "/usr/share/java/jackson-core-asl.jar",
    "/usr/share/java/jackson-mapper-asl.jar",
    "/usr/share/java/avro-guava-dependencies.jar",
    "/usr/share/java/slf4j-api.jar",
    "/usr/share/java/slf4j-nop.jar",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helper(file: &str) -> PathBuf {
    repo().join("tests/it/avro_interop").join(file)
}

fn shipped(name: &str) -> PathBuf {
    repo().join("config/schemas").join(name)
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/avro").join(name)
}

/// Schemas with records giving every field, so what any client decodes is
/// exactly the record. Together: logical types, unions (with null, with a
/// record, with several branches), nested and referenced records, enums,
/// fixed, arrays, maps, bytes and non-ASCII text.
fn cases() -> Vec<(PathBuf, Vec<Value>)> {
    vec![
        (
            shipped("slack_message.avsc"),
            vec![
                json!({"alertId": "a-1", "channelId": "C0123", "text": "Disk full on db-1 — ünïcode ✅",
                "blocks": "[{\"type\":\"section\"}]", "createdAt": 1_764_000_000_123_i64,
                "pipeline": "connectors", "sourceTopic": "data-notifications-pipeline",
                "sourcePartition": 2, "sourceOffset": 9_000_000_000_i64, "status": "firing",
                "updates": "edit", "recurrence": "new", "resolvedUnposted": "skip",
                "groupKey": null, "groupWindowMs": 0}),
                json!({"alertId": "a-1", "channelId": "C0123", "text": "Resolved", "blocks": "[]",
                "createdAt": 1_764_000_100_000_i64, "pipeline": "connectors", "sourceTopic": "t",
                "sourcePartition": 0, "sourceOffset": 1, "status": "resolved",
                "updates": "edit_and_thread", "recurrence": "thread", "resolvedUnposted": "post",
                "groupKey": "org-1 ✅", "groupWindowMs": 600_000}),
            ],
        ),
        (
            shipped("slack_response.avsc"),
            vec![
                json!({"alertId": "a-1", "channelId": "C0123", "ok": true, "outcome": "posted",
                    "ts": "1764000000.000100", "error": null, "postedAt": 1_764_000_000_456_i64,
                    "attempts": 1, "httpStatus": 200, "sourcePartition": 0, "sourceOffset": 17,
                    "threadTs": "1764000000.000100", "replyTs": null}),
                json!({"alertId": "a-2", "channelId": "C0456", "ok": false, "outcome": "failed",
                    "ts": null, "error": "channel_not_found", "postedAt": 5, "attempts": 3,
                    "httpStatus": null, "sourcePartition": -1, "sourceOffset": -1,
                    "threadTs": null, "replyTs": null}),
                json!({"alertId": "a-1", "channelId": "C0123", "ok": true, "outcome": "updated",
                    "ts": "1764000000.000100", "error": null, "postedAt": 6, "attempts": 2,
                    "httpStatus": 200, "sourcePartition": 0, "sourceOffset": 18,
                    "threadTs": "1764000000.000100", "replyTs": "1764000100.000200"}),
                json!({"alertId": "a-3", "channelId": "C0123", "ok": true,
                    "outcome": "resolved_unposted", "ts": null, "error": null, "postedAt": 7,
                    "attempts": 0, "httpStatus": null, "sourcePartition": 1, "sourceOffset": 2,
                    "threadTs": null, "replyTs": null}),
            ],
        ),
        (
            shipped("slack_interaction.avsc"),
            vec![
                json!({"alertId": "a-1", "actionId": "ack", "value": null, "userId": "U1",
                "userName": "ana", "channelId": "C0123", "messageTs": null,
                "receivedAt": 1_764_000_000_000_i64, "payload": "{\"type\":\"block_actions\"}"}),
            ],
        ),
        (
            shipped("notifications_pipeline_event.avsc"),
            vec![
                json!({"eventId": "e-1", "eventType": "connector.failed", "source": "",
                "time": 0, "data": "{\"connector\":\"pg\"}"}),
            ],
        ),
        (
            shipped("csdr_assignment.avsc"),
            vec![
                json!({"org_id": "o-1", "org_name": "Acme", "csdr_name": null,
                "csdr_email": "csdr@example.com", "account_name": null, "updated_at": -1}),
            ],
        ),
        (
            shipped("slack_user.avsc"),
            vec![json!({"email": "ana@example.com", "slack_user_id": "U1",
                "display_name": null, "team_id": "T1"})],
        ),
        (
            fixture("interop_kitchen_sink.avsc"),
            vec![
                json!({"id": "k-1", "at": 1_764_000_000_123_i64, "atMicros": 1_764_000_000_123_456_i64,
                    "count": -7, "ratio": 0.25, "flag": true, "severity": "HIGH", "hash": "abcd",
                    "owner": {"name": "ana", "email": "ana@example.com", "since": 1_700_000_000_000_i64},
                    "previousOwner": {"name": "bo", "email": null, "since": null},
                    "tags": ["db", "prod"], "labels": {"retries": 3},
                    "choice": "text", "payload": "raw bytes", "lastSeverity": "LOW",
                    "otherHash": "wxyz"}),
                json!({"id": "k-2", "at": 0, "atMicros": 0, "count": 2_147_483_647, "ratio": -1.5,
                    "flag": false, "severity": "LOW", "hash": "0000",
                    "owner": {"name": "cy", "email": null, "since": null},
                    "previousOwner": null, "tags": [], "labels": {},
                    "choice": 42, "payload": "", "lastSeverity": null, "otherHash": "1234"}),
            ],
        ),
    ]
}

/// Schemas whose fingerprints are compared without records: every case's,
/// plus attributes and logical types the canonical form strips or keeps
/// (decimal, date, uuid, aliases, defaults, dotted names, fullname
/// references), and the old writer schema.
fn fingerprint_schemas() -> Vec<PathBuf> {
    let mut schemas: Vec<PathBuf> = cases().into_iter().map(|(schema, _)| schema).collect();
    schemas.push(fixture("canonical_edge_cases.avsc"));
    schemas.push(fixture("slack_message_v0.avsc"));
    schemas.push(shipped("slack_message_v1.avsc"));
    schemas.push(shipped("slack_message_v2.avsc"));
    schemas.push(shipped("slack_response_v1.avsc"));
    schemas
}

/// A `slack_message` record of the old schema, and how the current schema
/// reads it: the fields added since take their defaults.
fn evolution_case() -> (PathBuf, Value, Value) {
    let old = json!({"alertId": "a-9", "channelId": "C9", "text": "old", "blocks": "[]",
        "createdAt": 1_600_000_000_000_i64, "priority": 5});
    let read = json!({"alertId": "a-9", "channelId": "C9", "text": "old", "blocks": "[]",
        "createdAt": 1_600_000_000_000_i64, "pipeline": "", "sourceTopic": "",
        "sourcePartition": -1, "sourceOffset": -1, "status": "firing", "updates": "edit",
        "recurrence": "new", "resolvedUnposted": "skip", "groupKey": null, "groupWindowMs": 0});
    (fixture("slack_message_v0.avsc"), old, read)
}

fn codec(schema: &Path, writer_schemas: &[&Path]) -> Codec {
    let topic = TopicSettings {
        name: "interop".into(),
        format: WireFormat::AvroSingleObject,
        schema: Some(schema.display().to_string()),
        writer_schemas: writer_schemas
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        key_format: KeyFormat::String,
        key_schema: None,
        auto_register: None,
        use_latest_version: None,
    };
    Codec::build(&repo(), &topic, None).expect("codec")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex from the helper"))
        .collect()
}

/// Runs the other implementation over one request; `command` is its
/// program and arguments before the request file.
fn run(command: &[String], request: &Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("request.json");
    std::fs::write(&path, serde_json::to_vec(request).unwrap()).unwrap();
    let output = Command::new(&command[0])
        .args(&command[1..])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} ({INSTALL})", command[0]));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{command:?} printed no JSON ({e}): {output:?}"))
}

/// The whole exchange with one other implementation.
async fn exchange(name: &str, command: &[String]) {
    let cases = cases();
    let (old_schema, old_value, old_read) = evolution_case();
    let path = |p: &Path| Value::String(p.display().to_string());

    // What alertsvc writes, for the other side to decode.
    let mut decode = Vec::new();
    let mut expected_decoded = Vec::new();
    for (schema, values) in &cases {
        let codec = codec(schema, &[]);
        for value in values {
            let bytes = codec.encode(value).await.expect("alertsvc encodes");
            decode.push(json!({"schema": path(schema), "bytes": hex(&bytes)}));
            expected_decoded.push(value.clone());
        }
    }
    // What the other side writes, for alertsvc to decode: every case, and
    // a record of the old schema.
    let mut encode: Vec<Value> = cases
        .iter()
        .flat_map(|(schema, values)| {
            values
                .iter()
                .map(move |v| json!({"schema": path(schema), "value": v}))
        })
        .collect();
    encode.push(json!({"schema": path(&old_schema), "value": old_value}));

    let fingerprints = fingerprint_schemas();
    let request = json!({
        "fingerprint": fingerprints.iter().map(|p| path(p)).collect::<Vec<_>>(),
        "decode": decode,
        "encode": encode,
    });
    let response = run(command, &request);

    for (schema, theirs) in fingerprints.iter().zip(array(&response, "fingerprint")) {
        let file = load_schema_file(&repo(), &schema.display().to_string()).unwrap();
        let ours = hex(&spec_fingerprint(&file).unwrap());
        assert_eq!(
            theirs.as_str(),
            Some(ours.as_str()),
            "{name}'s fingerprint of {}",
            schema.display()
        );
    }
    let decoded = array(&response, "decode");
    assert_eq!(decoded.len(), expected_decoded.len());
    for (theirs, ours) in decoded.iter().zip(&expected_decoded) {
        assert_eq!(theirs, ours, "{name} decoded alertsvc's record differently");
    }

    let encoded = array(&response, "encode");
    assert_eq!(encoded.len(), encode.len());
    let (current, old) = encoded.split_at(encode.len() - 1);
    let mut written = current.iter();
    for (schema, values) in &cases {
        let codec = codec(schema, &[]);
        for value in values {
            let bytes = unhex(written.next().and_then(Value::as_str).unwrap());
            let back = codec
                .decode(&bytes)
                .await
                .unwrap_or_else(|e| panic!("alertsvc cannot read {name}'s {value}: {e}"));
            assert_eq!(&back, value, "{name}'s record of {}", schema.display());
        }
    }
    // Evolution: the old schema's record, read by a topic that lists it in
    // writer_schemas, has the new fields' defaults and drops the old field.
    let bytes = unhex(old[0].as_str().unwrap());
    let evolved = codec(&shipped("slack_message.avsc"), &[&old_schema]);
    assert_eq!(evolved.decode(&bytes).await.unwrap(), old_read);
    let strict = codec(&shipped("slack_message.avsc"), &[]);
    let err = strict.decode(&bytes).await.unwrap_err();
    assert!(err.to_string().contains(&hex(&bytes[2..10])), "{err}");
}

fn array<'a>(response: &'a Value, key: &str) -> &'a Vec<Value> {
    response[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key:?} in {response}"))
}

#[tokio::test]
async fn java_avro_reads_and_writes_alertsvc_records() {
    for jar in JAVA_CLASSPATH {
        assert!(
            Path::new(jar).exists(),
            "{jar} is missing: libavro-java is not installed ({INSTALL})"
        );
    }
    let java_ok = Command::new("java")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(java_ok, "no java on PATH ({INSTALL})");
    let command = [
        "java".to_owned(),
        "-cp".to_owned(),
        JAVA_CLASSPATH.join(":"),
        helper("AvroInterop.java").display().to_string(),
    ];
    exchange("Java Apache Avro", &command).await;
}

#[tokio::test]
async fn fastavro_reads_and_writes_alertsvc_records() {
    let fastavro_ok = Command::new("python3")
        .args(["-c", "import fastavro"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(fastavro_ok, "python3 cannot import fastavro ({INSTALL})");
    let command = [
        "python3".to_owned(),
        helper("avro_interop.py").display().to_string(),
    ];
    exchange("fastavro", &command).await;
}

/// The shipped schemas evolve only by added fields with defaults: a record
/// of the release before the alert lifecycle fields, read through
/// `writer_schemas`, comes out with the new fields' defaults.
#[tokio::test]
async fn records_before_the_lifecycle_fields_read_with_their_defaults() {
    let cases = [
        (
            "slack_message",
            json!({"alertId": "a-1", "channelId": "C1", "text": "t", "blocks": "[]",
                "createdAt": 5, "pipeline": "p", "sourceTopic": "s", "sourcePartition": 0,
                "sourceOffset": 1}),
            json!({"status": "firing", "updates": "edit", "recurrence": "new",
                "resolvedUnposted": "skip", "groupKey": null, "groupWindowMs": 0}),
        ),
        (
            "slack_response",
            json!({"alertId": "a-1", "channelId": "C1", "ok": true, "outcome": "updated",
                "ts": "1.2", "error": null, "postedAt": 5, "attempts": 1, "httpStatus": 200,
                "sourcePartition": 0, "sourceOffset": 1}),
            json!({"threadTs": null, "replyTs": null}),
        ),
    ];
    for (name, old, added) in cases {
        let v1 = shipped(&format!("{name}_v1.avsc"));
        let current = shipped(&format!("{name}.avsc"));
        let bytes = codec(&v1, &[]).encode(&old).await.expect("v1 encodes");
        // No writer_schemas: the shipped v1 schemas are built in, so an
        // upgrade reads what the previous release left on the topics.
        let read = codec(&current, &[])
            .decode(&bytes)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut expected = old.clone();
        for (k, v) in added.as_object().expect("object") {
            expected[k] = v.clone();
        }
        assert_eq!(read, expected, "{name}");
    }
}
