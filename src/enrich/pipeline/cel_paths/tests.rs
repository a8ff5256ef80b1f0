use std::sync::Arc;

use cel::{Context, Env};
use serde_json::json;

use super::*;

fn compile(source: &str) -> Program {
    Env::stdlib().compile(source).unwrap()
}

fn reads(sources: &[&str]) -> Reads {
    let programs: Vec<Program> = sources.iter().map(|s| compile(s)).collect();
    Reads::of(&programs)
}

/// Runs `source` with `event` bound whole and projected: both must agree.
fn run_both(source: &str, event: &Json) -> (Result<CelValue, String>, Result<CelValue, String>) {
    let env = Arc::new(Env::stdlib());
    let program = env.compile(source).unwrap();
    let run = |value: CelValue| {
        let mut context = Context::with_env(env.clone());
        context.add_variable_from_value("event", value);
        program.execute(&context).map_err(|e| e.to_string())
    };
    let whole = run(cel::to_value(event).unwrap());
    let r = Reads::of([&program]);
    let projected = run(project(event, r.get("event").unwrap()).unwrap());
    (whole, projected)
}

#[test]
fn selections_are_paths_and_other_uses_are_whole() {
    let r = reads(&[
        "has(event.data.labels) && event.data.labels.old == 'x'",
        "event.other.size() > 0 && key == 'k'",
    ]);
    let event = r.get("event").unwrap();
    assert!(!event.whole);
    let data = &event.members["data"];
    assert!(!data.whole);
    let labels = &data.members["labels"];
    assert!(!labels.whole && labels.members.keys().eq(["old"]));
    assert!(labels.members["old"].whole);
    assert!(event.members["other"].whole);
    assert!(r.get("key").unwrap().whole);
    assert_eq!(r.get("topic"), None);
}

#[test]
fn presence_only_is_marked_as_such() {
    let r = reads(&["has(event.a.b)"]);
    let a = &r.get("event").unwrap().members["a"];
    assert!(a.members["b"].is_presence());
    // A whole use elsewhere wins.
    let r = reads(&["has(event.a.b)", "event.a"]);
    assert!(r.get("event").unwrap().members["a"].whole);
}

#[test]
fn comprehension_variables_are_not_the_outer_ones() {
    let r = reads(&["event.items.exists(event, event.x == 1)"]);
    let event = r.get("event").unwrap();
    assert!(event.members["items"].whole);
    assert_eq!(event.members.len(), 1);
}

#[test]
fn projection_keeps_only_what_is_read() {
    let r = reads(&["event.a.b == 1 && has(event.c)"]);
    let event = json!({"a": {"b": 1, "z": [1, 2]}, "c": {"deep": "x"}, "d": "unused"});
    let projected = project(&event, r.get("event").unwrap()).unwrap();
    let expected = cel::to_value(json!({"a": {"b": 1}, "c": null})).unwrap();
    assert_eq!(projected, expected);
}

#[test]
fn projected_and_whole_values_give_the_same_results() {
    let event = json!({"a": {"b": 1, "s": "x", "n": null, "l": [1, "two"]}, "t": "text", "neg": -3, "f": 1.5});
    for source in [
        "event.a.b == 1",
        "event.a.b == 2",
        "has(event.a.n) && !has(event.a.missing)",
        "has(event.a) && event.a.s == 'x'",
        "event.a.l[1] == 'two'",
        "event.a.l.size()",
        "event.neg < 0 && event.f > 1.0",
        "event.a.missing == 1",
        "event.t.b == 1",
        "event.a",
        "event.a.s.startsWith('x')",
    ] {
        let (whole, projected) = run_both(source, &event);
        assert_eq!(whole, projected, "{source}");
    }
}

#[test]
fn json_text_is_parsed_as_far_as_it_is_read() {
    let r = reads(&["event.data.labels.old == 'Provisioning' && has(event.data.id)"]);
    let data = &r.get("event").unwrap().members["data"];
    let text = r#"{"id": "x", "labels": {"old": "Provisioning", "new": "Failed"}, "big": [1, {"n": 2}], "u": 7}"#;
    let projected = project_json_text(text, data).unwrap();
    let expected = cel::to_value(json!({"id": null, "labels": {"old": "Provisioning"}})).unwrap();
    assert_eq!(projected, expected);
    // Numbers and nested whole values come out as `cel::to_value` makes them.
    let r = reads(&["event.d.u == 7u && event.d.neg == -1 && event.d.big == [1, {'n': 2}]"]);
    let data = &r.get("event").unwrap().members["d"];
    let text = r#"{"u": 7, "neg": -1, "big": [1, {"n": 2}], "skip": {"a": [true]}}"#;
    let full: Json = serde_json::from_str(text).unwrap();
    let expected = project(&full, data).unwrap();
    assert_eq!(project_json_text(text, data).unwrap(), expected);
}

#[test]
fn malformed_json_fields_fail_whether_read_or_not() {
    let fields = ["data".to_owned()];
    let bad = json!({"data": "{\"a\": 1,", "x": 1});
    let whole_error = serde_json::from_str::<Json>("{\"a\": 1,")
        .unwrap_err()
        .to_string();
    for sources in [
        &["event.x == 1"][..],
        &["event.data.a == 1"],
        &["has(event.data)"],
    ] {
        let r = reads(sources);
        assert_eq!(
            project_event(&bad, r.get("event"), &fields),
            Err(ProjectError::JsonField {
                field: "data".into(),
                reason: whole_error.clone()
            }),
            "{sources:?}"
        );
    }
    let trailing = json!({"data": "{} x"});
    let r = reads(&["event.data.a == 1"]);
    assert!(matches!(
        project_event(&trailing, r.get("event"), &fields),
        Err(ProjectError::JsonField { .. })
    ));
}

#[test]
fn project_event_parses_read_json_fields_and_leaves_out_the_rest() {
    let fields = ["data".to_owned(), "other".to_owned()];
    let event =
        json!({"data": "{\"a\": {\"b\": 2}, \"c\": 3}", "other": "[1]", "plain": "p", "n": 1});
    let r = reads(&["event.data.a.b == 2 && event.plain == 'p'"]);
    let projected = project_event(&event, r.get("event"), &fields).unwrap();
    let expected = cel::to_value(json!({"data": {"a": {"b": 2}}, "plain": "p"})).unwrap();
    assert_eq!(projected, Some(expected));
    // Read whole: every member, JSON fields parsed.
    let r = reads(&["event"]);
    let projected = project_event(&event, r.get("event"), &fields).unwrap();
    let expected =
        cel::to_value(json!({"data": {"a": {"b": 2}, "c": 3}, "other": [1], "plain": "p", "n": 1}))
            .unwrap();
    assert_eq!(projected, Some(expected));
    // Not read at all: nothing to bind.
    assert_eq!(project_event(&event, None, &fields), Ok(None));
}
