use serde_json::{json, Number, Value as Json};

use super::*;
use crate::avro::fixtures::{codec, file, MESSAGE_SCHEMA, OLD_MESSAGE_SCHEMA};
use crate::avro::SingleObject;

/// Every type a scan models, nested where it can be (not recursive: a
/// recursive schema is not scanned).
const WIDE_SCHEMA: &str = r#"{"type":"record","name":"W","namespace":"t","fields":[
    {"name":"s","type":"string"},
    {"name":"i","type":"int"},
    {"name":"l","type":"long"},
    {"name":"f","type":"float"},
    {"name":"d","type":"double"},
    {"name":"b","type":"boolean"},
    {"name":"by","type":"bytes"},
    {"name":"fx","type":{"type":"fixed","name":"F2","size":2}},
    {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B","C"]}},
    {"name":"u","type":["null","string","long"]},
    {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"arr","type":{"type":"array","items":{"type":"record","name":"R","fields":[
        {"name":"x","type":"long"},{"name":"y","type":["null",
            {"type":"record","name":"Leaf","fields":[{"name":"x","type":"long"}]}]}]}}},
    {"name":"m","type":{"type":"map","values":"double"}},
    {"name":"r","type":"R"},
    {"name":"n","type":"null"}
]}"#;

/// `scalar` as `avro_to_json` makes the value (`None`: a complex value).
fn scalar_json(scalar: &Scalar<'_>) -> Option<Json> {
    Some(match scalar {
        Scalar::Null => Json::Null,
        Scalar::Bool(b) => Json::Bool(*b),
        Scalar::Long(i) => Json::from(*i),
        Scalar::Double(d) => Number::from_f64(*d).map_or(Json::Null, Json::Number),
        Scalar::Str(s) => Json::String(s.clone().into_owned()),
        Scalar::Complex => return None,
    })
}

/// A scan that vouches for `bytes` agrees with decoding them.
fn check(codec: &SingleObject, bytes: &[u8]) -> bool {
    let Some(fields) = codec.scan(bytes) else {
        return false;
    };
    let decoded = codec
        .decode(bytes)
        .unwrap_or_else(|e| panic!("scanned but does not decode ({e}): {bytes:?}"));
    let Json::Object(members) = &decoded else {
        panic!("not a record: {decoded}")
    };
    assert_eq!(fields.len(), members.len());
    for (name, scalar) in &fields {
        let member = &members[*name];
        match scalar_json(scalar) {
            Some(value) => assert_eq!(&value, member, "{name}"),
            None => assert!(member.is_array() || member.is_object(), "{name}: {member}"),
        }
    }
    true
}

fn wide_record(rng: &mut fastrand::Rng) -> Json {
    let text: String = (0..rng.usize(0..6))
        .map(|_| rng.choice(['a', 'é', '"', '\u{1F600}', 'z']).unwrap_or('a'))
        .collect();
    let node =
        |x: i64| json!({"x": x, "y": if x % 2 == 0 { json!({"x": -x}) } else { Json::Null }});
    json!({
        "s": text,
        "i": rng.i32(..),
        "l": rng.i64(..),
        "f": rng.f32() * 100.0 - 50.0,
        "d": rng.f64() * 1e9 - 5e8,
        "b": rng.bool(),
        "by": "xy",
        "fx": "ab",
        "e": rng.choice(["A", "B", "C"]).unwrap_or("A"),
        "u": match rng.u8(0..3) { 0 => Json::Null, 1 => json!(text), _ => json!(rng.i64(..)) },
        "ts": rng.i64(0..2_000_000_000_000),
        "arr": (0..rng.i64(0..4)).map(node).collect::<Vec<_>>(),
        "m": (0..rng.usize(0..3)).map(|i| (format!("k{i}"), json!(i as f64 / 3.0))).collect::<serde_json::Map<_, _>>(),
        "r": node(rng.i64(-5..5)),
        "n": null,
    })
}

#[test]
fn scans_agree_with_decoding() {
    let codec = codec(WIDE_SCHEMA);
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..300 {
        let bytes = codec.encode(&wide_record(&mut rng)).unwrap();
        assert!(check(&codec, &bytes), "a well-formed record is scanned");
    }
}

/// Truncated, extended and corrupted records: whatever the scan vouches
/// for decodes to the same values; the rest is left to the decoder.
#[test]
fn damaged_records_are_never_vouched_for_wrongly() {
    let codec = codec(WIDE_SCHEMA);
    let mut rng = fastrand::Rng::with_seed(11);
    let (mut vouched, mut refused) = (0, 0);
    for _ in 0..200 {
        let bytes = codec.encode(&wide_record(&mut rng)).unwrap();
        for cut in 10..bytes.len() {
            assert!(!check(&codec, &bytes[..cut]), "truncated at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(!check(&codec, &longer), "trailing byte");
        for _ in 0..20 {
            let mut damaged = bytes.clone();
            let at = rng.usize(10..damaged.len());
            damaged[at] = rng.u8(..);
            if check(&codec, &damaged) {
                vouched += 1;
            } else {
                refused += 1;
            }
        }
    }
    // Both outcomes happen, or the test would not show anything.
    assert!(
        vouched > 100 && refused > 100,
        "{vouched} vouched, {refused} refused"
    );
}

#[test]
fn invalid_values_are_left_to_the_decoder() {
    let codec = codec(
        r#"{"type":"record","name":"V","fields":[
        {"name":"b","type":"boolean"},{"name":"s","type":"string"},
        {"name":"e","type":{"type":"enum","name":"E","symbols":["A"]}},
        {"name":"u","type":["null","long"]},{"name":"i","type":"int"}]}"#,
    );
    let good = codec
        .encode(&json!({"b": true, "s": "é", "e": "A", "u": 3, "i": 1}))
        .unwrap();
    assert!(check(&codec, &good));
    let datum = good[10..].to_vec();
    let with = |datum: Vec<u8>| [&good[..10], &datum[..]].concat();
    // [b=1][len 2 → 4]["é" c3 a9][e=0][u: branch 1 → 2][3 → 6][i 1 → 2]
    assert_eq!(datum, [1, 4, 0xc3, 0xa9, 0, 2, 6, 2]);
    for (at, byte) in [
        (0, 2),    // a boolean is 0 or 1
        (3, 0x28), // not UTF-8
        (4, 2),    // no enum symbol 1
        (5, 4),    // no union branch 2
        (5, 1),    // negative branch
    ] {
        let mut bad = datum.clone();
        bad[at] = byte;
        let bytes = with(bad);
        assert_eq!(codec.scan(&bytes), None, "byte {at} = {byte}");
    }
    // An int beyond 32 bits.
    let mut bad = datum[..7].to_vec();
    bad.extend([0x80, 0x80, 0x80, 0x80, 0x20]);
    assert_eq!(codec.scan(&with(bad.clone())), None);
    assert!(codec.decode(&with(bad)).is_err());
    // A varint of eleven bytes.
    let mut bad = datum[..7].to_vec();
    bad.extend([0xff; 10]);
    bad.push(0);
    assert_eq!(codec.scan(&with(bad)), None);
}

#[test]
fn records_of_older_writers_are_decoded_not_scanned() {
    let reader = file("reader.avsc", MESSAGE_SCHEMA);
    let codec = SingleObject::new(&reader, &[file("old.avsc", OLD_MESSAGE_SCHEMA)]).unwrap();
    let old = crate::avro::fixtures::codec(OLD_MESSAGE_SCHEMA)
        .encode(&json!({"id": "a", "legacy": 7, "at": 5}))
        .unwrap();
    assert_eq!(codec.scan(&old), None);
    assert!(codec.decode(&old).is_ok());
    let current = codec.encode(&json!({"id": "b", "at": 6})).unwrap();
    assert!(check(&codec, &current));
    assert_eq!(codec.scan(b"not avro"), None);
}

#[test]
fn schemas_with_types_a_scan_does_not_model_are_not_scanned() {
    let codec = codec(
        r#"{"type":"record","name":"U","fields":[
        {"name":"id","type":{"type":"string","logicalType":"uuid"}}]}"#,
    );
    let bytes = codec
        .encode(&json!({"id": "67e55044-10b1-426f-9247-bb680e5fe0c8"}))
        .unwrap();
    assert_eq!(codec.scan(&bytes), None);
    assert!(codec.decode(&bytes).is_ok());
}

/// The value `apache_avro` decodes from `datum`, as `avro_to_json` makes it.
#[allow(deprecated)]
fn tree_json(codec: &SingleObject, mut datum: &[u8]) -> Option<Json> {
    let value = apache_avro::from_avro_datum(&codec.schema.schema, &mut datum, None).ok()?;
    datum.is_empty().then(|| crate::avro::avro_to_json(value))
}

/// `Shape::to_json` gives the tree path's value for every datum it reads,
/// and reads every well-formed one; damaged ones it declines or reads as
/// the tree path does.
#[test]
fn json_reads_agree_with_the_tree_path() {
    let wide = codec(WIDE_SCHEMA);
    let shape = Shape::of(&wide.schema.schema, wide.schema.names()).unwrap();
    let mut rng = fastrand::Rng::with_seed(13);
    let (mut read, mut declined) = (0, 0);
    for _ in 0..200 {
        let record = wide_record(&mut rng);
        let bytes = wide.encode(&record).unwrap();
        let datum = &bytes[10..];
        let json = shape.to_json(datum).expect("a well-formed datum is read");
        assert_eq!(Some(&json), tree_json(&wide, datum).as_ref());
        for cut in 0..datum.len() {
            assert_eq!(shape.to_json(&datum[..cut]), None, "truncated at {cut}");
        }
        let mut longer = datum.to_vec();
        longer.push(0);
        assert_eq!(shape.to_json(&longer), None, "trailing byte");
        for _ in 0..20 {
            let mut damaged = datum.to_vec();
            let at = rng.usize(..damaged.len());
            damaged[at] = rng.u8(..);
            match shape.to_json(&damaged) {
                Some(json) => {
                    assert_eq!(Some(json), tree_json(&wide, &damaged), "{damaged:?}");
                    read += 1;
                }
                None => declined += 1,
            }
        }
    }
    assert!(
        read > 100 && declined > 100,
        "{read} read, {declined} declined"
    );
    // NaN and infinities read as null, as decoding makes them.
    let nan = codec(
        r#"{"type":"record","name":"N","fields":[
        {"name":"f","type":"float"},{"name":"d","type":"double"}]}"#,
    );
    let shape = Shape::of(&nan.schema.schema, nan.schema.names()).unwrap();
    let mut datum = f32::NAN.to_le_bytes().to_vec();
    datum.extend(f64::INFINITY.to_le_bytes());
    assert_eq!(shape.to_json(&datum), Some(json!({"f": null, "d": null})));
    assert_eq!(shape.to_json(&datum), tree_json(&nan, &datum));
    // A map key written twice keeps its last value.
    let map = codec(
        r#"{"type":"record","name":"M","fields":[
        {"name":"m","type":{"type":"map","values":"long"}}]}"#,
    );
    let shape = Shape::of(&map.schema.schema, map.schema.names()).unwrap();
    let datum = [4, 2, b'k', 2, 2, b'k', 4, 0];
    assert_eq!(shape.to_json(&datum), Some(json!({"m": {"k": 2}})));
    assert_eq!(shape.to_json(&datum), tree_json(&map, &datum));
}

/// A struct over [`WIDE_SCHEMA`]'s scalars, each read as serde reads the
/// JSON a decode gives; the complex fields are not named (passed over).
#[derive(Debug, PartialEq, serde::Deserialize)]
struct WideScalars {
    s: String,
    i: i32,
    l: i64,
    f: f32,
    d: f64,
    b: bool,
    by: String,
    fx: String,
    e: WideEnum,
    u: Option<Json>,
    ts: i64,
    n: Option<String>,
    #[serde(default)]
    absent: Option<i64>,
}

#[derive(Debug, PartialEq, serde::Deserialize)]
enum WideEnum {
    A,
    B,
    C,
}

/// `from_fields` of a scan gives what `serde_json::from_value` of the
/// decode gives, or an error (the caller then decodes): the value both
/// agree on, `None` when `from_fields` refused.
fn agree<T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
    codec: &SingleObject,
    bytes: &[u8],
) -> Option<T> {
    let fields = codec.scan(bytes).expect("scanned");
    let direct = from_fields::<T>(fields).ok()?;
    let decoded = serde_json::from_value::<T>(codec.decode(bytes).expect("decodes"))
        .unwrap_or_else(|e| panic!("from_fields gave {direct:?}, from_value refused: {e}"));
    assert_eq!(direct, decoded);
    Some(direct)
}

#[test]
fn fields_read_into_a_struct_as_from_value_reads_the_decode() {
    let codec = codec(WIDE_SCHEMA);
    let mut rng = fastrand::Rng::with_seed(11);
    for _ in 0..300 {
        let bytes = codec.encode(&wide_record(&mut rng)).unwrap();
        assert!(agree::<WideScalars>(&codec, &bytes).is_some());
    }
}

/// What `from_value` refuses, `from_fields` refuses too (the caller then
/// decodes and reports the decoder's error): an integer out of the field's
/// range, a string where a number is wanted, a symbol no variant has, a
/// field missing. A complex field asked for is refused as well, though
/// `from_value` reads it: a scan does not read them, the decode does.
#[test]
fn what_from_value_refuses_from_fields_refuses() {
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct WantsArray {
        arr: Vec<Json>,
    }
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Narrow {
        i: u8,
    }
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct StringAsNumber {
        s: i64,
    }
    #[derive(Debug, PartialEq, serde::Deserialize)]
    enum OtherEnum {
        A,
    }
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct FewerSymbols {
        e: OtherEnum,
    }
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Missing {
        gone: String,
    }
    fn both_refuse<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        codec: &SingleObject,
        bytes: &[u8],
    ) {
        let fields = codec.scan(bytes).expect("scanned");
        assert!(from_fields::<T>(fields).is_err());
        assert!(serde_json::from_value::<T>(codec.decode(bytes).unwrap()).is_err());
    }
    let codec = codec(WIDE_SCHEMA);
    let mut rng = fastrand::Rng::with_seed(12);
    let mut record = wide_record(&mut rng);
    record["i"] = json!(300);
    record["e"] = json!("B");
    record["arr"] = json!([{"x": 1, "y": null}]);
    let bytes = codec.encode(&record).unwrap();
    both_refuse::<Narrow>(&codec, &bytes);
    both_refuse::<StringAsNumber>(&codec, &bytes);
    both_refuse::<FewerSymbols>(&codec, &bytes);
    both_refuse::<Missing>(&codec, &bytes);
    let fields = codec.scan(&bytes).expect("scanned");
    assert!(from_fields::<WantsArray>(fields).is_err());
    assert_eq!(
        serde_json::from_value::<WantsArray>(codec.decode(&bytes).unwrap()).unwrap(),
        WantsArray {
            arr: vec![json!({"x": 1, "y": null})]
        }
    );
}

/// The shipped `slack_message` schema into [`crate::messages::SlackMessage`]:
/// every enum's symbols, a group key or none, text that needs escaping.
#[test]
fn shipped_slack_messages_read_straight_into_the_struct() {
    use crate::messages::{
        AlertStatus, RecurrenceMode, ResolvedUnposted, SlackMessage, UpdateMode,
    };
    let codec = codec(include_str!("../../../config/schemas/slack_message.avsc"));
    let mut rng = fastrand::Rng::with_seed(13);
    for n in 0..200i64 {
        let text: String = (0..rng.usize(0..12))
            .map(|_| {
                rng.choice(['a', 'é', '"', '\\', '\n', '\u{1F600}'])
                    .unwrap_or('a')
            })
            .collect();
        let message = SlackMessage {
            alert_id: format!("alert-{n}{text}"),
            channel_id: format!("C{n}"),
            text: text.clone(),
            blocks: format!(r#"[{{"type":"section","text":{{"type":"mrkdwn","text":{text:?}}}}}]"#),
            created_at: rng.i64(..),
            pipeline: "p".into(),
            source_topic: text.clone(),
            source_partition: rng.i32(..),
            source_offset: rng.i64(..),
            status: *rng
                .choice(&[AlertStatus::Firing, AlertStatus::Resolved])
                .unwrap(),
            updates: *rng
                .choice(&[
                    UpdateMode::Edit,
                    UpdateMode::Thread,
                    UpdateMode::EditAndThread,
                ])
                .unwrap(),
            recurrence: *rng
                .choice(&[RecurrenceMode::New, RecurrenceMode::Thread])
                .unwrap(),
            resolved_unposted: *rng
                .choice(&[ResolvedUnposted::Skip, ResolvedUnposted::Post])
                .unwrap(),
            group_key: rng.bool().then(|| format!("g{text}")),
            group_window_ms: rng.i64(0..100_000),
        };
        let bytes = codec.encode(&crate::messages::to_json(&message)).unwrap();
        assert_eq!(agree::<SlackMessage>(&codec, &bytes), Some(message));
    }
}
