use std::collections::BTreeMap;

use apache_avro::Schema;
use serde::Serialize;
use serde_json::{json, Value as Json};

use crate::avro::datum::tests::wide_schema as wide;
use crate::avro::TypedSchema;

/// Writes `value` both ways: the direct writer must write what the JSON
/// path writes for `to_value(value)`, or decline and leave `out` as it was.
/// Whether it wrote.
fn agrees<T: Serialize>(schema: &TypedSchema, value: &T) -> bool {
    let mut direct = vec![0xAA];
    let wrote = schema.write_serialized(value, &mut direct);
    let json = serde_json::to_value(value).unwrap_or(Json::Null);
    let mut via_json = vec![0xAA];
    let json_wrote = schema.write_datum(&json, &mut via_json);
    if wrote {
        assert!(
            json_wrote,
            "written directly, refused by the JSON path: {json}"
        );
        assert_eq!(direct, via_json, "{json}");
    } else {
        assert_eq!(direct, [0xAA], "a declined write left bytes: {json}");
    }
    wrote
}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum E {
    X,
    Y,
    Z,
}

#[derive(Serialize, Clone)]
struct In {
    a: String,
}

#[derive(Serialize, Clone, Copy)]
#[serde(untagged)]
enum Num {
    Int(i64),
    Float(f64),
}

#[derive(Serialize, Clone)]
#[serde(untagged)]
enum U {
    Long(i64),
    In(In),
    Text(String),
}

/// Every field of the schema, in its order.
#[derive(Serialize, Clone)]
struct Wide {
    s: String,
    i: i64,
    l: Num,
    ts: u64,
    f: f32,
    d: f64,
    b: bool,
    e: E,
    e2: E,
    o: Option<String>,
    u: Option<U>,
    n: Option<i64>,
    a: Vec<i64>,
    m: BTreeMap<String, Option<String>>,
    r: Option<In>,
}

fn text(rng: &mut fastrand::Rng) -> String {
    (0..rng.usize(0..8))
        .map(|_| {
            rng.choice(['a', 'é', '"', '\\', '\u{0}', '\u{1F680}'])
                .unwrap_or('a')
        })
        .collect()
}

fn wide_value(rng: &mut fastrand::Rng) -> Wide {
    let e = |rng: &mut fastrand::Rng| rng.choice([E::X, E::Y, E::Y, E::Z]).unwrap_or(E::X);
    Wide {
        s: text(rng),
        // Mostly within an int, sometimes beyond it (the schema refuses).
        i: if rng.u8(..) < 240 {
            i64::from(rng.i32(..))
        } else {
            rng.i64(..)
        },
        // A float, whole or not, is refused by a long, as the JSON path
        // refuses it.
        l: match rng.u8(0..8) {
            0 => Num::Float(3.0),
            1 => Num::Float(rng.f64()),
            _ => Num::Int(rng.i64(..)),
        },
        ts: if rng.u8(..) < 240 {
            rng.u64(0..=i64::MAX as u64)
        } else {
            rng.u64(i64::MAX as u64 + 1..)
        },
        f: match rng.u8(0..8) {
            0 => f32::NAN,
            1 => f32::INFINITY,
            _ => rng.f32() * 200.0 - 100.0,
        },
        d: match rng.u8(0..8) {
            0 => f64::NEG_INFINITY,
            _ => (rng.f64() - 0.5) * 1e300,
        },
        b: rng.bool(),
        e: e(rng),
        e2: e(rng),
        o: rng.bool().then(|| text(rng)),
        u: match rng.u8(0..5) {
            0 => None,
            1 => Some(U::Long(rng.i64(..))),
            2 => Some(U::In(In { a: text(rng) })),
            3 => Some(U::Text(text(rng))),
            _ => Some(U::Long(-1)),
        },
        n: match rng.u8(0..4) {
            0 => None,
            1 => Some(rng.i64(..)),
            _ => Some(i64::from(rng.i16(..))),
        },
        a: (0..rng.usize(0..4)).map(|_| rng.i64(..)).collect(),
        m: (0..rng.usize(0..3))
            .map(|i| (format!("k{i}"), rng.bool().then(|| text(rng))))
            .collect(),
        r: rng.bool().then(|| In { a: text(rng) }),
    }
}

#[test]
fn random_records_are_written_as_the_json_path_writes_them() {
    let schema = wide();
    let mut rng = fastrand::Rng::with_seed(17);
    let (mut wrote, mut declined) = (0, 0);
    for _ in 0..3000 {
        if agrees(&schema, &wide_value(&mut rng)) {
            wrote += 1;
        } else {
            declined += 1;
        }
    }
    // Both outcomes occur: valid records are written directly, invalid
    // ones (an int out of range, a float for a long, `z`, …) declined.
    assert!(
        wrote > 300 && declined > 300,
        "{wrote} written, {declined} declined"
    );
}

#[test]
fn a_valid_record_is_written_directly() {
    let schema = wide();
    let mut value = Wide {
        s: "é 🚀".into(),
        i: -7,
        l: Num::Int(i64::MIN),
        ts: 1_700_000_000_000,
        f: 1.5,
        d: f64::NAN,
        b: true,
        e: E::Y,
        e2: E::X,
        o: Some("o".into()),
        u: Some(U::In(In { a: "in".into() })),
        n: None,
        a: vec![1, -1, 1 << 40],
        m: [("k".to_owned(), None), ("v".to_owned(), Some("w".into()))]
            .into_iter()
            .collect(),
        r: Some(In { a: "r".into() }),
    };
    // NaN is JSON's null, which a double refuses.
    assert!(!agrees(&schema, &value));
    value.d = -0.0;
    assert!(agrees(&schema, &value));
    value.l = Num::Float(3.0);
    assert!(!agrees(&schema, &value), "a float for a long");
    value.l = Num::Int(3);
    #[derive(Serialize)]
    struct Flat<'a> {
        #[serde(flatten)]
        rest: &'a Wide,
    }
    assert!(
        !agrees(&schema, &Flat { rest: &value }),
        "a flattened struct is a map"
    );
    let mut out = Vec::new();
    assert!(schema.write_datum(
        &serde_json::to_value(Flat { rest: &value }).unwrap(),
        &mut out
    ));
}

/// Fields left out take their defaults (or null); fields the schema lacks
/// are passed over; fields out of the schema's order are declined.
#[test]
fn missing_extra_and_reordered_fields() {
    let schema = wide();
    #[derive(Serialize)]
    struct Sparse {
        s: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        i: Option<i32>,
        unknown: Vec<bool>,
        e: &'static str,
        a: &'static [i64],
    }
    assert!(agrees(
        &schema,
        &Sparse {
            s: "x",
            i: None,
            unknown: vec![true],
            e: "y",
            a: &[4, 5]
        }
    ));
    assert!(agrees(
        &schema,
        &Sparse {
            s: "x",
            i: Some(9),
            unknown: vec![],
            e: "x",
            a: &[]
        }
    ));
    // `n` has no default but takes null: a record without it is written.
    #[derive(Serialize)]
    struct OnlyS {
        s: &'static str,
    }
    assert!(agrees(&schema, &OnlyS { s: "only" }));
    #[derive(Serialize)]
    struct Reordered {
        i: i32,
        s: &'static str,
    }
    assert!(!agrees(&schema, &Reordered { i: 1, s: "x" }));
    // Without `s`, which has no default, both refuse.
    #[derive(Serialize)]
    struct NoS {
        i: i32,
    }
    assert!(!agrees(&schema, &NoS { i: 1 }));
}

/// A union with more than one branch a compound value could take is left
/// to the JSON path, which tries them in turn; so are shapes not modelled.
#[test]
fn ambiguous_unions_and_unmodelled_shapes_are_declined() {
    let schema = TypedSchema::new(
        Schema::parse_str(
            r#"{"type": "record", "name": "R", "fields": [
            {"name": "v", "type": ["null",
                {"type": "record", "name": "A", "fields": [{"name": "a", "type": "long"}]},
                {"type": "record", "name": "B", "fields": [{"name": "b", "type": "string"}]}]}
        ]}"#,
        )
        .unwrap(),
    );
    #[derive(Serialize)]
    struct V<T> {
        v: T,
    }
    #[derive(Serialize)]
    struct Bee {
        b: &'static str,
    }
    assert!(agrees(&schema, &V { v: None::<Bee> }));
    assert!(!agrees(
        &schema,
        &V {
            v: Some(Bee { b: "x" })
        }
    ));
    let mut out = Vec::new();
    assert!(schema.write_datum(&json!({"v": {"b": "x"}}), &mut out));

    let list = TypedSchema::new(
        Schema::parse_str(r#"{"type": "array", "items": {"type": "map", "values": "int"}}"#)
            .unwrap(),
    );
    let maps: Vec<BTreeMap<&str, i32>> =
        vec![[("a", 1), ("b", -2)].into_iter().collect(), BTreeMap::new()];
    assert!(agrees(&list, &maps));
    // Integer keys become strings in JSON; not modelled here.
    let numbered: Vec<BTreeMap<i32, i32>> = vec![[(1, 1)].into_iter().collect()];
    assert!(!agrees(&list, &numbered));
    assert!(!agrees(&list, &vec![(1, 2)]), "tuples");
    let bytes = TypedSchema::new(Schema::parse_str(r#"["null", "bytes"]"#).unwrap());
    assert!(!agrees(&bytes, &"raw"));
    assert!(agrees(&bytes, &()));
}

/// The records the stages write take the direct path with the shipped
/// schemas: a field moved out of the schema's order would silently cost
/// the JSON path again.
#[test]
fn shipped_records_are_written_directly() {
    use crate::messages::{
        AlertStatus, DeliveryOutcome, RecurrenceMode, ResolvedUnposted, SlackInteraction,
        SlackMessage, SlackResponse, UpdateMode,
    };
    use crate::notify::state::service::StateRecord;
    let shipped = |name: &str| {
        let path = format!("{}/config/schemas/{name}.avsc", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        TypedSchema::new(Schema::parse_str(&text).unwrap())
    };
    // Every symbol of every mode, odd values.
    let message_schema = shipped("slack_message");
    let mut n = 0i64;
    for status in [AlertStatus::Firing, AlertStatus::Resolved] {
        for updates in [
            UpdateMode::Edit,
            UpdateMode::Thread,
            UpdateMode::EditAndThread,
        ] {
            for recurrence in [RecurrenceMode::New, RecurrenceMode::Thread] {
                for resolved_unposted in [ResolvedUnposted::Skip, ResolvedUnposted::Post] {
                    for group_key in [None, Some(""), Some("org-1 \"é\"")] {
                        n += 1;
                        let message = SlackMessage {
                            alert_id: format!("a-{n}"),
                            channel_id: "C1".into(),
                            text: "t \u{1} ü".into(),
                            blocks: r#"[{"type":"section","text":{"type":"mrkdwn","text":"x"}}]"#
                                .into(),
                            created_at: if n % 2 == 0 { -n } else { i64::MAX - n },
                            pipeline: String::new(),
                            source_topic: "in".into(),
                            source_partition: if n % 3 == 0 { i32::MIN } else { 7 },
                            source_offset: n * 1_000_000_007,
                            status,
                            updates,
                            recurrence,
                            resolved_unposted,
                            group_key: group_key.map(String::from),
                            group_window_ms: n % 4,
                        };
                        assert!(agrees(&message_schema, &message));
                    }
                }
            }
        }
    }
    for (outcome, ts) in [
        (DeliveryOutcome::Posted, Some("1.2".to_owned())),
        (DeliveryOutcome::ResolvedUnposted, None),
    ] {
        let response = SlackResponse {
            alert_id: "A-1".into(),
            channel_id: "C1".into(),
            ok: ts.is_some(),
            outcome,
            ts: ts.clone(),
            error: ts.is_none().then(|| "channel_not_found".into()),
            posted_at: 1_700_000_000_000,
            attempts: 2,
            http_status: Some(200),
            source_partition: 1,
            source_offset: i64::MAX,
            thread_ts: ts.clone(),
            reply_ts: None,
        };
        assert!(agrees(&shipped("slack_response"), &response));
    }
    let interaction = SlackInteraction {
        alert_id: "A-1".into(),
        action_id: "ack".into(),
        value: None,
        user_id: "U1".into(),
        user_name: Some("ada".into()),
        channel_id: Some("C1".into()),
        message_ts: None,
        received_at: 5,
        payload: "{}".into(),
    };
    assert!(agrees(&shipped("slack_interaction"), &interaction));
    let state = StateRecord {
        alert_id: "A-1",
        state: "snoozed",
        actor_id: Some("U1"),
        actor_name: None,
        at: 5,
        snoozed_until: Some(9),
        group_key: None,
        channel_id: Some("C1"),
        message_ts: Some("1.2"),
        pipeline: "p",
    };
    assert!(agrees(&shipped("alert_state"), &state));
}
