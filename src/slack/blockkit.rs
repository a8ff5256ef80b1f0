//! Slack's Block Kit limits. enrich checks them before a message leaves it,
//! so that a message Slack would reject with `invalid_blocks` or
//! `msg_too_long` goes to the dead-letter topic instead of being retried by
//! notify; the fake Slack enforces the same limits, as Slack does.
//!
//! Limits are Slack's documented ones (api.slack.com/reference/block-kit).

use serde_json::Value;

pub const MAX_BLOCKS: usize = 50;
pub const MAX_MESSAGE_TEXT: usize = 40_000;
const MAX_SECTION_TEXT: usize = 3000;
const MAX_HEADER_TEXT: usize = 150;
const MAX_FIELDS: usize = 10;
const MAX_FIELD_TEXT: usize = 2000;
const MAX_BLOCK_ID: usize = 255;
const MAX_ACTION_ELEMENTS: usize = 25;
const MAX_CONTEXT_ELEMENTS: usize = 10;
const MAX_BUTTON_TEXT: usize = 75;
const MAX_BUTTON_VALUE: usize = 2000;
const MAX_ACTION_ID: usize = 255;
const MAX_URL: usize = 3000;
const MAX_PLACEHOLDER: usize = 150;
const MAX_OPTIONS: usize = 100;
const MAX_OPTION_TEXT: usize = 75;
const MAX_OPTION_VALUE: usize = 150;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct BlockKitError {
    pub path: String,
    pub reason: String,
}

fn fail(path: impl Into<String>, reason: impl Into<String>) -> BlockKitError {
    BlockKitError {
        path: path.into(),
        reason: reason.into(),
    }
}

mod canonical;
mod escape;
mod plan;
mod reader;
#[cfg(test)]
mod rendered_tests;
mod scan;

pub use canonical::canonical_json;
pub use escape::write_json_string_content;
pub use plan::Plans;

/// Why rendered blocks were refused.
#[derive(Debug, Clone, PartialEq)]
pub enum RenderedError {
    /// Not one JSON document (serde_json's reason).
    Json(String),
    BlockKit(BlockKitError),
}

/// Checks a message's fallback text and its blocks as rendered (JSON text),
/// as [`validate_message`] checks them parsed; returns the blocks in the
/// compact form `serde_json::Value::to_string` gives them.
pub fn check_rendered(text: &str, blocks_json: &str) -> Result<String, RenderedError> {
    // The reason as a parse into a tree words it (a reader that skips what
    // it does not need names the expected token differently).
    let json_error = |e: serde_json::Error| {
        RenderedError::Json(
            serde_json::from_str::<Value>(blocks_json)
                .err()
                .unwrap_or(e)
                .to_string(),
        )
    };
    match scan::canonical_checked(text, blocks_json) {
        Ok(blocks) => Ok(blocks),
        Err(scan::ScanError::BlockKit(e)) => Err(RenderedError::BlockKit(e)),
        Err(scan::ScanError::Json(e)) => Err(json_error(e)),
    }
}

/// Checks a message's fallback text and its blocks.
pub fn validate_message(text: &str, blocks: &Value) -> Result<(), BlockKitError> {
    if text.trim().is_empty() {
        return Err(fail("text", "fallback text must not be empty"));
    }
    let chars = text.chars().count();
    if chars > MAX_MESSAGE_TEXT {
        return Err(fail(
            "text",
            format!("{chars} characters, Slack allows {MAX_MESSAGE_TEXT}"),
        ));
    }
    let blocks = blocks
        .as_array()
        .ok_or_else(|| fail("blocks", "must be a JSON array"))?;
    if blocks.len() > MAX_BLOCKS {
        return Err(fail(
            "blocks",
            format!("{} blocks, Slack allows {MAX_BLOCKS}", blocks.len()),
        ));
    }
    for (i, block) in blocks.iter().enumerate() {
        validate_block(&format!("blocks[{i}]"), block)?;
    }
    Ok(())
}

fn validate_block(path: &str, block: &Value) -> Result<(), BlockKitError> {
    let kind = block
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| fail(path, "block has no \"type\""))?;
    if let Some(id) = block.get("block_id") {
        let id = id
            .as_str()
            .ok_or_else(|| fail(format!("{path}.block_id"), "must be a string"))?;
        max_len(&format!("{path}.block_id"), id, MAX_BLOCK_ID)?;
    }
    match kind {
        "header" => {
            let text = text_object(&format!("{path}.text"), block.get("text"), true)?;
            max_len(&format!("{path}.text.text"), text, MAX_HEADER_TEXT)?;
        }
        "section" => {
            let text = block.get("text");
            let fields = block.get("fields");
            if text.is_none() && fields.is_none() {
                return Err(fail(path, "section needs \"text\" or \"fields\""));
            }
            if text.is_some() {
                let text = text_object(&format!("{path}.text"), text, false)?;
                max_len(&format!("{path}.text.text"), text, MAX_SECTION_TEXT)?;
            }
            if let Some(fields) = fields {
                let fields = fields
                    .as_array()
                    .ok_or_else(|| fail(format!("{path}.fields"), "must be an array"))?;
                if fields.is_empty() || fields.len() > MAX_FIELDS {
                    return Err(fail(
                        format!("{path}.fields"),
                        format!("{} fields, Slack allows 1 to {MAX_FIELDS}", fields.len()),
                    ));
                }
                for (j, field) in fields.iter().enumerate() {
                    let p = format!("{path}.fields[{j}]");
                    let text = text_object(&p, Some(field), false)?;
                    max_len(&format!("{p}.text"), text, MAX_FIELD_TEXT)?;
                }
            }
            if let Some(accessory) = block.get("accessory") {
                validate_element(&format!("{path}.accessory"), accessory)?;
            }
        }
        "context" => {
            let elements = elements(path, block, MAX_CONTEXT_ELEMENTS)?;
            for (j, element) in elements.iter().enumerate() {
                let p = format!("{path}.elements[{j}]");
                match element.get("type").and_then(Value::as_str) {
                    Some("image") => {}
                    _ => {
                        let text = text_object(&p, Some(element), false)?;
                        max_len(&format!("{p}.text"), text, MAX_SECTION_TEXT)?;
                    }
                }
            }
        }
        "actions" => {
            let elements = elements(path, block, MAX_ACTION_ELEMENTS)?;
            for (j, element) in elements.iter().enumerate() {
                validate_element(&format!("{path}.elements[{j}]"), element)?;
            }
        }
        "divider" | "image" | "rich_text" | "input" | "file" | "video" => {}
        other => return Err(fail(path, format!("unknown block type {other:?}"))),
    }
    Ok(())
}

fn elements<'a>(path: &str, block: &'a Value, max: usize) -> Result<&'a [Value], BlockKitError> {
    let elements = block
        .get("elements")
        .and_then(Value::as_array)
        .ok_or_else(|| fail(format!("{path}.elements"), "must be an array"))?;
    if elements.is_empty() || elements.len() > max {
        return Err(fail(
            format!("{path}.elements"),
            format!("{} elements, Slack allows 1 to {max}", elements.len()),
        ));
    }
    Ok(elements)
}

fn validate_element(path: &str, element: &Value) -> Result<(), BlockKitError> {
    match element.get("type").and_then(Value::as_str) {
        Some("button") => {}
        Some("static_select") => return validate_static_select(path, element),
        _ => return Ok(()),
    }
    let text = text_object(&format!("{path}.text"), element.get("text"), true)?;
    max_len(&format!("{path}.text.text"), text, MAX_BUTTON_TEXT)?;
    for (name, max) in [
        ("value", MAX_BUTTON_VALUE),
        ("action_id", MAX_ACTION_ID),
        ("url", MAX_URL),
    ] {
        if let Some(v) = element.get(name) {
            let v = v
                .as_str()
                .ok_or_else(|| fail(format!("{path}.{name}"), "must be a string"))?;
            max_len(&format!("{path}.{name}"), v, max)?;
        }
    }
    if let Some(style) = element.get("style").and_then(Value::as_str) {
        if style != "primary" && style != "danger" {
            return Err(fail(
                format!("{path}.style"),
                format!("{style:?} is not \"primary\" or \"danger\""),
            ));
        }
    }
    Ok(())
}

/// A `static_select` menu: a plain-text placeholder and 1–100 options,
/// each plain text with a value (Slack's limits).
fn validate_static_select(path: &str, element: &Value) -> Result<(), BlockKitError> {
    if let Some(placeholder) = element.get("placeholder") {
        let text = text_object(&format!("{path}.placeholder"), Some(placeholder), true)?;
        max_len(&format!("{path}.placeholder.text"), text, MAX_PLACEHOLDER)?;
    }
    if let Some(id) = element.get("action_id") {
        let id = id
            .as_str()
            .ok_or_else(|| fail(format!("{path}.action_id"), "must be a string"))?;
        max_len(&format!("{path}.action_id"), id, MAX_ACTION_ID)?;
    }
    let options = element
        .get("options")
        .and_then(Value::as_array)
        .ok_or_else(|| fail(format!("{path}.options"), "must be an array"))?;
    if options.is_empty() || options.len() > MAX_OPTIONS {
        return Err(fail(
            format!("{path}.options"),
            format!("{} options, Slack allows 1 to {MAX_OPTIONS}", options.len()),
        ));
    }
    for (i, option) in options.iter().enumerate() {
        let p = format!("{path}.options[{i}]");
        let text = text_object(&format!("{p}.text"), option.get("text"), true)?;
        max_len(&format!("{p}.text.text"), text, MAX_OPTION_TEXT)?;
        let value = option
            .get("value")
            .and_then(Value::as_str)
            .ok_or_else(|| fail(format!("{p}.value"), "must be a string"))?;
        max_len(&format!("{p}.value"), value, MAX_OPTION_VALUE)?;
    }
    Ok(())
}

/// A text object `{type: plain_text|mrkdwn, text}`; returns the text.
fn text_object<'a>(
    path: &str,
    value: Option<&'a Value>,
    plain_only: bool,
) -> Result<&'a str, BlockKitError> {
    let value = value.ok_or_else(|| fail(path, "missing text object"))?;
    let kind = value.get("type").and_then(Value::as_str);
    match kind {
        Some("plain_text") => {}
        Some("mrkdwn") if !plain_only => {}
        Some("mrkdwn") => return Err(fail(path, "must be plain_text")),
        _ => return Err(fail(path, "text object needs type plain_text or mrkdwn")),
    }
    let text = value
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| fail(format!("{path}.text"), "must be a string"))?;
    if text.is_empty() {
        return Err(fail(format!("{path}.text"), "must not be empty"));
    }
    Ok(text)
}

fn max_len(path: &str, text: &str, max: usize) -> Result<(), BlockKitError> {
    let chars = text.chars().count();
    if chars > max {
        return Err(fail(
            path,
            format!("{chars} characters, Slack allows {max}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn header(text: &str) -> Value {
        json!({"type": "header", "text": {"type": "plain_text", "text": text}})
    }

    #[test]
    fn accepts_a_typical_alert() {
        let blocks = json!([
            header("Connector failure"),
            {"type": "section", "text": {"type": "mrkdwn", "text": "*Org* o-1"},
             "fields": [{"type": "mrkdwn", "text": "a"}, {"type": "plain_text", "text": "b"}]},
            {"type": "divider"},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}]},
            {"type": "actions", "elements": [{"type": "button", "action_id": "ack",
              "text": {"type": "plain_text", "text": "Acknowledge"}, "value": "id", "style": "primary"}]}
        ]);
        assert_eq!(validate_message("fallback", &blocks), Ok(()));
    }

    #[test]
    fn header_over_150_characters_is_rejected() {
        let err = validate_message("t", &json!([header(&"h".repeat(151))])).unwrap_err();
        assert_eq!(err.path, "blocks[0].text.text");
        assert!(err.reason.contains("151 characters"));
    }

    #[test]
    fn section_text_over_3000_characters_is_rejected() {
        let block =
            json!({"type": "section", "text": {"type": "mrkdwn", "text": "x".repeat(3001)}});
        let err = validate_message("t", &json!([block])).unwrap_err();
        assert_eq!(err.path, "blocks[0].text.text");
    }

    #[test]
    fn more_than_50_blocks_is_rejected() {
        let blocks = Value::Array(vec![json!({"type": "divider"}); 51]);
        let err = validate_message("t", &blocks).unwrap_err();
        assert_eq!(err.path, "blocks");
    }

    #[test]
    fn structural_errors_are_named() {
        assert!(validate_message("t", &json!({"type": "divider"})).is_err());
        assert!(validate_message("t", &json!([{"type": "nope"}])).is_err());
        assert!(validate_message("", &json!([])).is_err());
        let bad_button = json!([{"type": "actions", "elements": [{"type": "button",
            "text": {"type": "mrkdwn", "text": "x"}}]}]);
        let err = validate_message("t", &bad_button).unwrap_err();
        assert_eq!(err.path, "blocks[0].elements[0].text");
    }

    #[test]
    fn static_select_menus_are_checked() {
        let menu = |options: Value| {
            json!([{"type": "actions", "elements": [{"type": "static_select", "action_id": "m",
                "placeholder": {"type": "plain_text", "text": "Snooze"}, "options": options}]}])
        };
        let option = |text: &str, value: &str| json!({"text": {"type": "plain_text", "text": text}, "value": value});
        assert_eq!(
            validate_message("t", &menu(json!([option("1 hour", "1h")]))),
            Ok(())
        );
        let cases = [
            (json!([]), "blocks[0].elements[0].options"),
            (
                json!([option(&"x".repeat(76), "1h")]),
                "blocks[0].elements[0].options[0].text.text",
            ),
            (
                json!([option("1 hour", &"v".repeat(151))]),
                "blocks[0].elements[0].options[0].value",
            ),
            (
                json!([{"text": {"type": "mrkdwn", "text": "*1h*"}, "value": "1h"}]),
                "blocks[0].elements[0].options[0].text",
            ),
            (
                json!([{"text": {"type": "plain_text", "text": "1h"}}]),
                "blocks[0].elements[0].options[0].value",
            ),
        ];
        for (options, path) in cases {
            let err = validate_message("t", &menu(options.clone())).unwrap_err();
            assert_eq!(err.path, path, "{options}");
        }
    }
}
