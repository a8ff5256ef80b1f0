//! The text checks against the tree checks: same answer, same error path
//! and reason, and blocks written exactly as `Value::to_string` writes them.

use serde_json::{json, Value};

use super::*;

fn tree(text: &str, blocks_json: &str) -> Result<String, RenderedError> {
    let blocks: Value =
        serde_json::from_str(blocks_json).map_err(|e| RenderedError::Json(e.to_string()))?;
    validate_message(text, &blocks).map_err(RenderedError::BlockKit)?;
    Ok(blocks.to_string())
}

fn same(text: &str, blocks_json: &str) {
    assert_eq!(
        check_rendered(text, blocks_json),
        tree(text, blocks_json),
        "{text:?} {blocks_json}"
    );
}

fn button(extra: Value) -> Value {
    let mut b = json!({"type": "button", "action_id": "a",
        "text": {"type": "plain_text", "text": "Ack"}});
    if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
        b.extend(extra.clone());
    }
    b
}

/// A valid `static_select` menu, its members replaced by `extra`'s.
fn select(extra: Value) -> Value {
    let mut menu = json!({"type": "static_select", "action_id": "m",
        "placeholder": {"type": "plain_text", "text": "Snooze"},
        "options": [option("1 hour", "1h"), option("4 hours", "4h")]});
    if let (Some(m), Some(extra)) = (menu.as_object_mut(), extra.as_object()) {
        m.extend(extra.clone());
    }
    menu
}

fn option(text: &str, value: &str) -> Value {
    json!({"text": {"type": "plain_text", "text": text}, "value": value})
}

#[test]
fn valid_and_invalid_documents_get_the_same_answer() {
    let long = |n: usize| "é".repeat(n);
    let cases = vec![
        json!([{"type": "header", "text": {"type": "plain_text", "text": "h"}}]),
        json!([{"type": "header", "text": {"type": "plain_text", "text": long(150)}}]),
        json!([{"type": "header", "text": {"type": "plain_text", "text": long(151)}}]),
        json!([{"type": "header", "text": {"type": "mrkdwn", "text": "h"}}]),
        json!([{"type": "header"}]),
        json!([{"type": "header", "text": null}]),
        json!([{"type": "header", "text": "plain"}]),
        json!([{"type": "header", "text": {"type": "plain_text", "text": ""}}]),
        json!([{"type": "header", "text": {"type": "plain_text", "text": 5}}]),
        json!([{"type": "section"}]),
        json!([{"type": "section", "text": {"type": "mrkdwn", "text": "x".repeat(3001)}}]),
        json!([{"type": "section", "fields": []}]),
        json!([{"type": "section", "fields": null}]),
        json!([{"type": "section", "fields": {"a": 1}}]),
        json!([{"type": "section", "fields": vec![json!({"type": "mrkdwn", "text": "f"}); 11]}]),
        json!([{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}, "s", 3]}]),
        json!([{"type": "section", "fields": [{"type": "mrkdwn", "text": long(2001)}]}]),
        json!([{"type": "section", "text": {"type": "mrkdwn", "text": "t"},
                "accessory": button(json!({"style": "danger"}))}]),
        json!([{"type": "section", "text": {"type": "mrkdwn", "text": "t"},
                "accessory": button(json!({"style": "loud"}))}]),
        json!([{"type": "section", "text": {"type": "mrkdwn", "text": "t"}, "accessory": "x"}]),
        json!([{"type": "context", "elements": [{"type": "image", "image_url": "u"},
                {"type": "mrkdwn", "text": "c"}]}]),
        json!([{"type": "context", "elements": [{"type": "mrkdwn", "text": {"a": 1}}]}]),
        json!([{"type": "context", "elements": [7]}]),
        json!([{"type": "context", "elements": vec![json!({"type": "mrkdwn", "text": "c"}); 11]}]),
        json!([{"type": "context"}]),
        json!([{"type": "actions", "elements": [button(json!({})), {"type": "static_select"}]}]),
        json!([{"type": "actions", "elements": [button(json!({"value": 1}))]}]),
        json!([{"type": "actions", "elements": [select(json!({}))]}]),
        json!([{"type": "section", "text": {"type": "mrkdwn", "text": "t"},
                "accessory": select(json!({"action_id": "a".repeat(256)}))}]),
        json!([{"type": "actions", "elements": [select(json!({"action_id": 5}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"placeholder": null}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"placeholder": "p"}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"placeholder":
                {"type": "mrkdwn", "text": "p"}}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"placeholder":
                {"type": "plain_text", "text": long(151)}}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"placeholder":
                {"type": "plain_text", "text": ""}}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"options": []}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"options": null}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"options": {"a": 1}}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"options": vec![option("o", "v"); 100]}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"options": vec![option("o", "v"); 101]}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"options": [option("o", "v"), "s"]}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"options": [7]}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"options": [{"value": "v"}]}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"options": [{"text": null, "value": "v"}]}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"options":
                [{"text": {"type": "mrkdwn", "text": "o"}, "value": "v"}]}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"options": [option(&long(76), "v")]}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"options": [option(&long(75), "v")]}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"options": [option("o", &long(151))]}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"options":
                [{"text": {"type": "plain_text", "text": "o"}}]}))]}]),
        json!([{"type": "actions", "elements": [select(json!({"options":
                [{"text": {"type": "plain_text", "text": "o"}, "value": 1}]}))]}]),
        json!([{"type": "actions", "elements": [button(json!({"url": "u".repeat(3001)}))]}]),
        json!([{"type": "actions", "elements": [button(json!({"action_id": null}))]}]),
        json!([{"type": "actions", "elements": [button(json!({"text": {"type": "mrkdwn", "text": "b"}}))]}]),
        json!([{"type": "actions", "elements": [button(json!({"text": {"type": "plain_text", "text": long(76)}}))]}]),
        json!([{"type": "divider", "block_id": "b".repeat(255)}]),
        json!([{"type": "divider", "block_id": "b".repeat(256)}]),
        json!([{"type": "divider", "block_id": 3}]),
        json!([{"type": "nope"}]),
        json!([{"type": 1}]),
        json!([{"no": "type"}]),
        json!(["block"]),
        json!([[]]),
        Value::Array(vec![json!({"type": "divider"}); 50]),
        Value::Array(vec![json!({"type": "divider"}); 51]),
        json!({"type": "divider"}),
        json!("blocks"),
        json!([]),
    ];
    for case in &cases {
        same("fallback", &case.to_string());
        same("fallback", &serde_json::to_string_pretty(case).unwrap());
    }
    same("", "[]");
    same("  ", "[]");
    same(&"t".repeat(40_001), "[]");
    same(&"t".repeat(40_000), "[]");
}

#[test]
fn malformed_text_is_refused_with_the_parsers_reason() {
    for text in [
        "[",
        "[{\"type\": \"divider\"},]",
        "[] x",
        "",
        "[{\"type\": \"divider\"}",
        "[\"\\q\"]",
    ] {
        let got = check_rendered("t", text);
        assert!(matches!(got, Err(RenderedError::Json(_))), "{text}");
        assert_eq!(got, tree("t", text), "{text}");
    }
}

#[test]
fn blocks_come_out_as_value_to_string_writes_them() {
    let texts = [
        r#"[ {"type" : "section", "text": {"type": "mrkdwn", "text": "a \"q\" \\ \n\t\r \u0001 \u001f \b \f é \u00e9 \ud83d\ude00 \/"}} ]"#,
        r#"{"b": 1, "a": [1, -2, 3.5, 1e3, 1.0, 0.1, 12345678901234567890, -9223372036854775808, true, false, null], "c": {}, "d": []}"#,
        r#"{"dup": 1, "x": {"z": 1, "y": 2}, "dup": {"last": true}}"#,
        r#"  "just a string"  "#,
        "[[[{}]]]",
        r#"{"": 0, "é": 1, "e": 2, "E": 3, "ab": 4, "a": 5}"#,
        // Unescaped names and strings (written as they stand) next to
        // escaped ones, DEL and non-ASCII raw.
        "{\"raw\u{7f}é/\": \"\u{7f} ✓ / 🚨\", \"esc\\u0001\": \"q\\\"\", \"a\\/b\": [\"\\u00e9\", \"é\"]}",
    ];
    for text in texts {
        let expected = serde_json::from_str::<Value>(text).unwrap().to_string();
        assert_eq!(canonical_json(text).unwrap(), expected, "{text}");
    }
}
