//! The fast filter against the interpreter, on generated expressions and
//! records: wherever the fast filter decides, the interpreter (handed the
//! record as the pipeline hands it, projected) must return that boolean.

use std::sync::Arc;

use cel::{Context, Env, Program, Value as CelValue};
use serde_json::{json, Value as Json};

use super::super::apply::bind_record;
use super::super::cel_paths::Reads;
use super::*;
use crate::avro::{SchemaFile, SingleObject};
use crate::enrich::pipeline::Source;

const MEMBERS: [&str; 6] = ["a", "b", "c", "data", "f", "e"];
const NESTED: [&str; 3] = ["a", "b", "c"];
const LITERALS: [&str; 16] = [
    "1",
    "1u",
    "2",
    "0",
    "-1",
    "0.5",
    "1.0",
    "'x'",
    "'y'",
    "''",
    "true",
    "false",
    "null",
    "18446744073709551615u",
    "'Provisioning'",
    "-2.5",
];

/// Fields of every kind, unions of scalars, a map, a JSON field.
const SCHEMA: &str = r#"{"type":"record","name":"E","fields":[
    {"name":"a","type":["null","boolean","long","double","string"]},
    {"name":"b","type":["null","long","string"]},
    {"name":"c","type":{"type":"map","values":"long"}},
    {"name":"data","type":"string"},
    {"name":"f","type":"float"},
    {"name":"e","type":{"type":"enum","name":"En","symbols":["x","y"]}}]}"#;

struct Interpreter {
    env: Arc<Env>,
}

impl Interpreter {
    fn new() -> Interpreter {
        Interpreter {
            env: Arc::new(Env::stdlib()),
        }
    }

    fn compile(&self, source: &str) -> Option<Program> {
        self.env.compile(source).ok()
    }

    /// The program on the record as the pipeline binds it.
    fn run(
        &self,
        program: &Program,
        source: &Source<'_>,
        event: &Json,
        fields: &[String],
    ) -> Result<CelValue, String> {
        let mut cel = Context::with_env(self.env.clone());
        bind_record(&mut cel, &Reads::of([program]), fields, source, event)
            .map_err(|e| e.to_string())?;
        program.execute(&cel).map_err(|e| e.to_string())
    }
}

fn scalar(rng: &mut fastrand::Rng) -> Json {
    match rng.u8(0..16) {
        0 => Json::Null,
        1 => json!(true),
        2 => json!(false),
        3 => json!(0),
        4 => json!(1),
        5 => json!(2),
        6 => json!(-1),
        7 => json!(u64::MAX),
        8 => json!(1.0),
        9 => json!(0.5),
        10 => json!(-2.5),
        11 => json!("x"),
        12 => json!("y"),
        13 => json!(""),
        14 => json!("Provisioning"),
        _ => json!("xy"),
    }
}

fn value(rng: &mut fastrand::Rng, depth: usize) -> Json {
    match (depth, rng.u8(0..4)) {
        (0, _) | (_, 0 | 1) => scalar(rng),
        (_, 2) => {
            let mut members = serde_json::Map::new();
            for k in NESTED {
                if rng.u8(0..10) < 7 {
                    members.insert(k.to_owned(), value(rng, depth - 1));
                }
            }
            Json::Object(members)
        }
        _ => Json::Array((0..rng.usize(0..3)).map(|_| scalar(rng)).collect()),
    }
}

/// A JSON document, now and then malformed or with a member twice.
fn json_text(rng: &mut fastrand::Rng) -> String {
    match rng.u8(0..12) {
        0 => "{\"a\": ".to_owned(),
        1 => "{} x".to_owned(),
        2 => r#"{"a": {"b": 1}, "a": 2}"#.to_owned(),
        3 => r#"{"a": "esc\"aped", "b": "\u0078"}"#.to_owned(),
        _ => value(rng, 2).to_string(),
    }
}

fn json_event(rng: &mut fastrand::Rng) -> Json {
    let mut event = serde_json::Map::new();
    for member in MEMBERS {
        if rng.u8(0..10) < 7 {
            let v = if member == "data" && rng.u8(0..5) > 0 {
                json!(json_text(rng))
            } else {
                value(rng, 2)
            };
            event.insert(member.to_owned(), v);
        }
    }
    Json::Object(event)
}

/// A record of [`SCHEMA`], as JSON.
fn avro_event(rng: &mut fastrand::Rng) -> Json {
    let mut a = scalar(rng);
    if a == json!(u64::MAX) {
        a = json!(3);
    }
    let b = match rng.u8(0..3) {
        0 => Json::Null,
        1 => json!(rng.i64(-2..3)),
        _ => json!(rng.choice(["x", "y", ""]).unwrap_or("x")),
    };
    let mut c = serde_json::Map::new();
    for k in NESTED {
        if rng.bool() {
            c.insert(k.to_owned(), json!(rng.i64(-1..2)));
        }
    }
    json!({"a": a, "b": b, "c": c, "data": json_text(rng),
           "f": rng.choice([0.5, 1.0, -2.5, 0.0]).unwrap_or(0.5),
           "e": rng.choice(["x", "y"]).unwrap_or("x")})
}

fn key(rng: &mut fastrand::Rng) -> Option<Json> {
    match rng.u8(0..4) {
        0 => None,
        1 => Some(json!("x")),
        2 => Some(json!({"a": "x", "b": 1})),
        _ => Some(json!("y")),
    }
}

fn path(rng: &mut fastrand::Rng, min_segments: usize) -> String {
    let mut path = match rng.u8(0..10) {
        0 => "key".to_owned(),
        1 if min_segments == 0 => "topic".to_owned(),
        _ => "event".to_owned(),
    };
    for i in 0..rng.usize(min_segments..3).max(min_segments) {
        let segment = if i == 0 && path == "event" {
            rng.choice(MEMBERS)
        } else {
            rng.choice(NESTED)
        };
        path.push('.');
        path.push_str(segment.unwrap_or("a"));
    }
    path
}

fn term(rng: &mut fastrand::Rng) -> String {
    match rng.u8(0..5) {
        0 => path(rng, 0),
        1 | 2 => path(rng, 1),
        _ => rng.choice(LITERALS).unwrap_or("1").to_owned(),
    }
}

fn expr(rng: &mut fastrand::Rng, depth: usize) -> String {
    let ops = ["==", "!=", "<", "<=", ">", ">="];
    match rng.u8(0..if depth == 0 { 6 } else { 11 }) {
        0 | 1 => format!(
            "{} {} {}",
            term(rng),
            rng.choice(ops).unwrap_or("=="),
            term(rng)
        ),
        2 => format!("has({})", path(rng, 1)),
        3 => format!(
            "{}.{}({})",
            term(rng),
            rng.choice(["startsWith", "endsWith", "contains"])
                .unwrap_or("contains"),
            rng.choice(["'x'", "''", "'y'", "1"]).unwrap_or("'x'")
        ),
        4 => format!("{} in [{}, {}]", term(rng), term(rng), term(rng)),
        5 => term(rng),
        6 | 7 => format!("({} && {})", expr(rng, depth - 1), expr(rng, depth - 1)),
        8 => format!("({} || {})", expr(rng, depth - 1), expr(rng, depth - 1)),
        9 => format!("!({})", expr(rng, depth - 1)),
        _ => format!(
            "({} ? {} : {})",
            expr(rng, depth - 1),
            expr(rng, depth - 1),
            expr(rng, depth - 1)
        ),
    }
}

fn source(key: Option<&Json>) -> Source<'_> {
    Source {
        topic: "x",
        partition: 0,
        offset: 0,
        key,
        timestamp_ms: 0,
    }
}

#[derive(Default, Debug)]
struct Tally {
    decided: [usize; 2],
    undecided: usize,
}

impl Tally {
    /// Where `fast` decided, the interpreter agrees.
    fn check(&mut self, what: &str, fast: Option<bool>, interpreted: &Result<CelValue, String>) {
        match fast {
            Some(b) => {
                assert_eq!(interpreted, &Ok(CelValue::Bool(b)), "{what}");
                self.decided[usize::from(b)] += 1;
            }
            None => self.undecided += 1,
        }
    }
}

fn schema() -> SingleObject {
    SingleObject::new(&SchemaFile::parse("e.avsc", SCHEMA).unwrap(), &[]).unwrap()
}

#[test]
fn fast_filter_agrees_with_the_interpreter() {
    let cel = Interpreter::new();
    let codec = schema();
    let fields = ["data".to_owned()];
    let mut rng = fastrand::Rng::with_seed(13);
    let (mut json_tally, mut scan_tally) = (Tally::default(), Tally::default());
    let mut outside = 0;
    for _ in 0..3000 {
        let text = expr(&mut rng, 3);
        let Some(program) = cel.compile(&text) else {
            continue;
        };
        let Some(fast) = FastFilter::compile(program.expression()) else {
            outside += 1;
            continue;
        };
        for _ in 0..10 {
            let key = key(&mut rng);
            let source = source(key.as_ref());
            let event = json_event(&mut rng);
            let what = format!("{text} on {event} (key {key:?})");
            let interpreted = cel.run(&program, &source, &event, &fields);
            json_tally.check(
                &what,
                fast.eval_json(&source, &event, &fields),
                &interpreted,
            );

            let record = avro_event(&mut rng);
            let bytes = codec.encode(&record).unwrap();
            let decoded = codec.decode(&bytes).unwrap();
            let scanned = codec.scan(&bytes).expect("a well-formed record is scanned");
            let what = format!("{text} on Avro {decoded} (key {key:?})");
            let interpreted = cel.run(&program, &source, &decoded, &fields);
            scan_tally.check(
                &what,
                fast.eval_scan(&source, &scanned, &fields),
                &interpreted,
            );
            json_tally.check(
                &what,
                fast.eval_json(&source, &decoded, &fields),
                &interpreted,
            );
        }
    }
    // Each outcome happens often enough for the comparison to mean something.
    for tally in [&json_tally, &scan_tally] {
        assert!(
            tally.decided[0] > 1000 && tally.decided[1] > 1000 && tally.undecided > 1000,
            "{json_tally:?} {scan_tally:?}"
        );
    }
    // The generator writes only the subset: all of it compiles.
    assert_eq!(outside, 0, "expressions the fast filter did not compile");
}

#[test]
fn literal_edge_cases_agree() {
    let cel = Interpreter::new();
    let fields: [String; 0] = [];
    let event = json!({"i": -1, "u": 1, "big": u64::MAX, "f": 1.0, "half": 0.5,
                       "s": "é", "n": null, "m": {"a": 1}, "l": [1]});
    let mut decided = 0;
    for text in [
        "event.i < event.u",
        "event.big > event.i",
        "event.big == 18446744073709551615u",
        "event.u == 1.0 && event.f == 1 && event.f == 1u",
        "event.half < 1 && event.half > 0u",
        "event.s > 'e' && event.s.contains('é')",
        "event.n == null && !(event.n != null)",
        "event.i == -1",
        "event.u in [2, 1.0]",
        "event.m == {'a': 1u}",
        "event.l == [1]",
        "has(event.m.a) && !has(event.m.b)",
        "has(event.s.x)",
        "event.missing == 1 || true",
        "true || event.missing == 1",
        "false && event.missing == 1",
        "event.n < 1",
        "event.s < 1",
        "event.u ? true : false",
        "event.u == 1 ? 'yes' : 'no'",
        "topic == 'x' && key == null",
    ] {
        let program = cel.compile(text).unwrap();
        // Map and list literals, and `-1` (a negation), are outside it.
        let Some(fast) = FastFilter::compile(program.expression()) else {
            continue;
        };
        let source = source(None);
        let result = fast.eval_json(&source, &event, &fields);
        let interpreted = cel.run(&program, &source, &event, &fields);
        if let Some(b) = result {
            assert_eq!(interpreted, Ok(CelValue::Bool(b)), "{text}");
            decided += 1;
        }
    }
    assert!(decided >= 12, "{decided}");
}

#[test]
fn expressions_outside_the_subset_are_not_compiled() {
    let cel = Interpreter::new();
    for text in [
        "event.a + 1 == 2",
        "event.items.exists(i, i == 1)",
        "event.a[0] == 1",
        "size(event.a) == 1",
        "assignment.x == 1",
        "{'a': 1}.a == 1",
        "event.a.matches('x')",
    ] {
        let program = cel.compile(text).unwrap();
        assert!(
            FastFilter::compile(program.expression()).is_none(),
            "{text}"
        );
    }
}

/// The shipped pipelines' filters are in the subset and agree with the
/// interpreter on the connector events they exist for, as decoded JSON and
/// as scanned Avro of the shipped schema.
#[test]
fn shipped_filters_are_fast_and_agree() {
    use crate::config::{Settings, Sources};
    let dir = super::super::tests::config_dir();
    let settings = Settings::load(&Sources::files_only(dir.clone())).unwrap();
    let enrich = settings.enrich.unwrap();
    let schema =
        crate::avro::load_schema_file(&dir, "schemas/notifications_pipeline_event.avsc").unwrap();
    let codec = SingleObject::new(&schema, &[]).unwrap();
    let cel = Interpreter::new();
    let mut rng = fastrand::Rng::with_seed(17);
    let statuses = ["Provisioning", "Failed", "Running", ""];
    let mut filters = 0;
    for (name, pipeline) in &enrich.pipelines {
        let Some(filter) = &pipeline.filter else {
            continue;
        };
        filters += 1;
        let program = cel.compile(filter).unwrap();
        let fast = FastFilter::compile(program.expression())
            .unwrap_or_else(|| panic!("{name}: filter outside the fast subset"));
        let mut tally = Tally::default();
        for _ in 0..2000 {
            let mut labels = serde_json::Map::new();
            for label in ["connector_old_status", "connector_new_status"] {
                if rng.u8(0..5) > 0 {
                    labels.insert(label.into(), json!(rng.choice(statuses).unwrap_or("")));
                }
            }
            let data = match rng.u8(0..10) {
                0 => "{\"labels\": ".to_owned(),
                1 => json!({"labels": "Provisioning"}).to_string(),
                2 => json!({"env_id": "e"}).to_string(),
                _ => json!({"env_id": "e", "labels": labels}).to_string(),
            };
            let record = json!({"eventId": "e1", "eventType": "t", "source": "s",
                                "time": 5, "data": data});
            let bytes = codec.encode(&record).unwrap();
            let decoded = codec.decode(&bytes).unwrap();
            let scanned = codec.scan(&bytes).unwrap();
            let key = json!("org-1");
            let source = source(Some(&key));
            let interpreted = cel.run(&program, &source, &decoded, &pipeline.json_fields);
            let what = format!("{name} on {decoded}");
            tally.check(
                &what,
                fast.eval_scan(&source, &scanned, &pipeline.json_fields),
                &interpreted,
            );
            tally.check(
                &what,
                fast.eval_json(&source, &decoded, &pipeline.json_fields),
                &interpreted,
            );
        }
        assert!(
            tally.decided[0] > 1000 && tally.decided[1] > 200 && tally.undecided > 100,
            "{name}: {tally:?}"
        );
    }
    assert!(filters > 0);
}
