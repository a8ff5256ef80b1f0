//! Block Kit limits checked on JSON text: while the canonical form is
//! written, each block is read into the few borrowed members the limits
//! are about, never into a tree. The rules and their error paths are
//! [`super::validate_message`]'s; the tests hold the two to the same
//! answers.

use super::{
    fail, BlockKitError, MAX_ACTION_ELEMENTS, MAX_ACTION_ID, MAX_BLOCKS, MAX_BLOCK_ID,
    MAX_BUTTON_TEXT, MAX_BUTTON_VALUE, MAX_CONTEXT_ELEMENTS, MAX_FIELDS, MAX_FIELD_TEXT,
    MAX_HEADER_TEXT, MAX_MESSAGE_TEXT, MAX_OPTIONS, MAX_OPTION_TEXT, MAX_OPTION_VALUE,
    MAX_PLACEHOLDER, MAX_SECTION_TEXT, MAX_URL,
};

mod read;

use super::canonical::canonical_shaped;

pub use read::Text;
pub(super) use read::{Block, List};
use read::{Element, Member, TextObject};

/// Why rendered blocks were refused.
#[derive(Debug)]
pub enum ScanError {
    Json(serde_json::Error),
    BlockKit(BlockKitError),
}

/// The blocks in `blocks_json` in canonical form, once
/// [`super::validate_message`] of `text` and them passes; one parse.
pub fn canonical_checked(text: &str, blocks_json: &str) -> Result<String, ScanError> {
    let (canonical, blocks) =
        canonical_shaped::<List<'_, Block<'_>>>(blocks_json).map_err(ScanError::Json)?;
    check_message(text, &blocks).map_err(ScanError::BlockKit)?;
    Ok(canonical)
}

/// [`canonical_checked`] with serde_json reading the blocks, as before the
/// reader: what the reader's answers are held to.
#[cfg(test)]
pub(super) fn canonical_checked_by_serde(
    text: &str,
    blocks_json: &str,
) -> Result<String, ScanError> {
    let (canonical, blocks) = super::canonical::serde_shaped::<List<'_, Block<'_>>>(blocks_json)
        .map_err(ScanError::Json)?;
    check_message(text, &blocks).map_err(ScanError::BlockKit)?;
    Ok(canonical)
}

fn check_message(text: &str, blocks: &List<'_, Block<'_>>) -> Result<(), BlockKitError> {
    check_text(text)?;
    check_blocks(&mut Exact, blocks)
}

/// The fallback text's limits (the first checked).
pub(super) fn check_text(text: &str) -> Result<(), BlockKitError> {
    if text.trim().is_empty() {
        return Err(fail("text", "fallback text must not be empty"));
    }
    Exact.max_len(|| "text".into(), text, MAX_MESSAGE_TEXT)
}

/// What the rules do with the strings whose content they read: check
/// them ([`Exact`]), or, for a document whose values are placeholders,
/// note what the values must satisfy (`super::plan`). Generic, so the
/// exact checks cost what they did before.
pub(super) trait Rules {
    /// At most `max` characters.
    fn max_len(
        &mut self,
        path: impl FnOnce() -> String,
        text: &str,
        max: usize,
    ) -> Result<(), BlockKitError>;
    /// At least one character.
    fn non_empty(&mut self, path: impl FnOnce() -> String, text: &str)
        -> Result<(), BlockKitError>;
    /// A string compared with the rules' words (a `type`, a `style`).
    fn word<'a>(&mut self, text: Option<&'a str>) -> Option<&'a str>;
}

/// The rules applied to the strings as they are.
pub(super) struct Exact;

impl Rules for Exact {
    #[inline]
    fn max_len(
        &mut self,
        path: impl FnOnce() -> String,
        text: &str,
        max: usize,
    ) -> Result<(), BlockKitError> {
        max_len(path, text, max)
    }
    #[inline]
    fn non_empty(
        &mut self,
        path: impl FnOnce() -> String,
        text: &str,
    ) -> Result<(), BlockKitError> {
        if text.is_empty() {
            return Err(fail(path(), "must not be empty"));
        }
        Ok(())
    }
    #[inline]
    fn word<'a>(&mut self, text: Option<&'a str>) -> Option<&'a str> {
        text
    }
}

/// The blocks' limits, in the order [`super::validate_message`] checks them.
pub(super) fn check_blocks<R: Rules>(
    rules: &mut R,
    blocks: &List<'_, Block<'_>>,
) -> Result<(), BlockKitError> {
    let List::Items(blocks) = blocks else {
        return Err(fail("blocks", "must be a JSON array"));
    };
    if blocks.len() > MAX_BLOCKS {
        return Err(fail(
            "blocks",
            format!("{} blocks, Slack allows {MAX_BLOCKS}", blocks.len()),
        ));
    }
    for (i, block) in blocks.iter().enumerate() {
        check_block(rules, &|| format!("blocks[{i}]"), block)?;
    }
    Ok(())
}

type Path<'a> = &'a dyn Fn() -> String;

fn check_block<R: Rules>(
    rules: &mut R,
    path: Path,
    block: &Member<'_, Block<'_>>,
) -> Result<(), BlockKitError> {
    let Some((block, kind)) = block
        .object()
        .and_then(|b| rules.word(b.kind.as_str()).map(|kind| (b, kind)))
    else {
        return Err(fail(path(), "block has no \"type\""));
    };
    if !block.block_id.is_absent() {
        let id = block
            .block_id
            .as_str()
            .ok_or_else(|| fail(format!("{}.block_id", path()), "must be a string"))?;
        rules.max_len(|| format!("{}.block_id", path()), id, MAX_BLOCK_ID)?;
    }
    match kind {
        "header" => {
            let text = text_object(
                rules,
                &|| format!("{}.text", path()),
                text_parts(&block.text),
                true,
            )?;
            rules.max_len(|| format!("{}.text.text", path()), text, MAX_HEADER_TEXT)?;
        }
        "section" => {
            if block.text.is_absent() && matches!(block.fields, List::Absent) {
                return Err(fail(path(), "section needs \"text\" or \"fields\""));
            }
            if !block.text.is_absent() {
                let text = text_object(
                    rules,
                    &|| format!("{}.text", path()),
                    text_parts(&block.text),
                    false,
                )?;
                rules.max_len(|| format!("{}.text.text", path()), text, MAX_SECTION_TEXT)?;
            }
            match &block.fields {
                List::Absent => {}
                List::Other => return Err(fail(format!("{}.fields", path()), "must be an array")),
                List::Items(fields) => {
                    if fields.is_empty() || fields.len() > MAX_FIELDS {
                        return Err(fail(
                            format!("{}.fields", path()),
                            format!("{} fields, Slack allows 1 to {MAX_FIELDS}", fields.len()),
                        ));
                    }
                    for (j, field) in fields.iter().enumerate() {
                        let p = || format!("{}.fields[{j}]", path());
                        let text = text_object(rules, &p, text_parts(field), false)?;
                        rules.max_len(|| format!("{}.text", p()), text, MAX_FIELD_TEXT)?;
                    }
                }
            }
            if !block.accessory.is_absent() {
                check_element(rules, &|| format!("{}.accessory", path()), &block.accessory)?;
            }
        }
        "context" => {
            let elements = elements(path, &block.elements, MAX_CONTEXT_ELEMENTS)?;
            for (j, element) in elements.iter().enumerate() {
                let p = || format!("{}.elements[{j}]", path());
                let element = element.object();
                if rules.word(element.and_then(|e| e.kind.as_str())) == Some("image") {
                    continue;
                }
                let parts = Some((
                    element.and_then(|e| e.kind.as_str()),
                    element.and_then(|e| e.text.as_str()),
                ));
                let text = text_object(rules, &p, parts, false)?;
                rules.max_len(|| format!("{}.text", p()), text, MAX_SECTION_TEXT)?;
            }
        }
        "actions" => {
            let elements = elements(path, &block.elements, MAX_ACTION_ELEMENTS)?;
            for (j, element) in elements.iter().enumerate() {
                check_element(rules, &|| format!("{}.elements[{j}]", path()), element)?;
            }
        }
        "divider" | "image" | "rich_text" | "input" | "file" | "video" => {}
        other => return Err(fail(path(), format!("unknown block type {other:?}"))),
    }
    Ok(())
}

fn elements<'a, 'de>(
    path: Path,
    elements: &'a List<'de, Element<'de>>,
    max: usize,
) -> Result<&'a [Member<'de, Element<'de>>], BlockKitError> {
    let List::Items(elements) = elements else {
        return Err(fail(format!("{}.elements", path()), "must be an array"));
    };
    if elements.is_empty() || elements.len() > max {
        return Err(fail(
            format!("{}.elements", path()),
            format!("{} elements, Slack allows 1 to {max}", elements.len()),
        ));
    }
    Ok(elements)
}

fn check_element<R: Rules>(
    rules: &mut R,
    path: Path,
    element: &Member<'_, Element<'_>>,
) -> Result<(), BlockKitError> {
    let Some(element) = element.object() else {
        return Ok(());
    };
    match rules.word(element.kind.as_str()) {
        Some("button") => {}
        Some("static_select") => return check_static_select(rules, path, element),
        _ => return Ok(()),
    }
    let text = text_object(
        rules,
        &|| format!("{}.text", path()),
        text_parts(&element.text),
        true,
    )?;
    rules.max_len(|| format!("{}.text.text", path()), text, MAX_BUTTON_TEXT)?;
    for (name, member, max) in [
        ("value", &element.value, MAX_BUTTON_VALUE),
        ("action_id", &element.action_id, MAX_ACTION_ID),
        ("url", &element.url, MAX_URL),
    ] {
        if !member.is_absent() {
            let v = member
                .as_str()
                .ok_or_else(|| fail(format!("{}.{name}", path()), "must be a string"))?;
            rules.max_len(|| format!("{}.{name}", path()), v, max)?;
        }
    }
    if let Some(style) = rules.word(element.style.as_str()) {
        if style != "primary" && style != "danger" {
            return Err(fail(
                format!("{}.style", path()),
                format!("{style:?} is not \"primary\" or \"danger\""),
            ));
        }
    }
    Ok(())
}

fn check_static_select<R: Rules>(
    rules: &mut R,
    path: Path,
    element: &Element<'_>,
) -> Result<(), BlockKitError> {
    if !element.placeholder.is_absent() {
        let text = text_object(
            rules,
            &|| format!("{}.placeholder", path()),
            text_parts(&element.placeholder),
            true,
        )?;
        rules.max_len(
            || format!("{}.placeholder.text", path()),
            text,
            MAX_PLACEHOLDER,
        )?;
    }
    if !element.action_id.is_absent() {
        let id = element
            .action_id
            .as_str()
            .ok_or_else(|| fail(format!("{}.action_id", path()), "must be a string"))?;
        rules.max_len(|| format!("{}.action_id", path()), id, MAX_ACTION_ID)?;
    }
    let List::Items(options) = &element.options else {
        return Err(fail(format!("{}.options", path()), "must be an array"));
    };
    if options.is_empty() || options.len() > MAX_OPTIONS {
        return Err(fail(
            format!("{}.options", path()),
            format!("{} options, Slack allows 1 to {MAX_OPTIONS}", options.len()),
        ));
    }
    for (i, option) in options.iter().enumerate() {
        let p = || format!("{}.options[{i}]", path());
        // An option that is not an object has neither member.
        let option = option.object();
        let text = text_object(
            rules,
            &|| format!("{}.text", p()),
            option.and_then(|o| text_parts(&o.text)),
            true,
        )?;
        rules.max_len(|| format!("{}.text.text", p()), text, MAX_OPTION_TEXT)?;
        let value = option
            .and_then(|o| o.value.as_str())
            .ok_or_else(|| fail(format!("{}.value", p()), "must be a string"))?;
        rules.max_len(|| format!("{}.value", p()), value, MAX_OPTION_VALUE)?;
    }
    Ok(())
}

/// A text object's (type, text) strings; `None` when it is absent.
fn text_parts<'a>(
    member: &'a Member<'_, TextObject<'_>>,
) -> Option<(Option<&'a str>, Option<&'a str>)> {
    if member.is_absent() {
        return None;
    }
    let object = member.object();
    Some((
        object.and_then(|o| o.kind.as_str()),
        object.and_then(|o| o.text.as_str()),
    ))
}

fn text_object<'a, R: Rules>(
    rules: &mut R,
    path: Path,
    parts: Option<(Option<&str>, Option<&'a str>)>,
    plain_only: bool,
) -> Result<&'a str, BlockKitError> {
    let (kind, text) = parts.ok_or_else(|| fail(path(), "missing text object"))?;
    match rules.word(kind) {
        Some("plain_text") => {}
        Some("mrkdwn") if !plain_only => {}
        Some("mrkdwn") => return Err(fail(path(), "must be plain_text")),
        _ => return Err(fail(path(), "text object needs type plain_text or mrkdwn")),
    }
    let text = text.ok_or_else(|| fail(format!("{}.text", path()), "must be a string"))?;
    rules.non_empty(|| format!("{}.text", path()), text)?;
    Ok(text)
}

fn max_len(path: impl FnOnce() -> String, text: &str, max: usize) -> Result<(), BlockKitError> {
    // Most texts are far below the limit: their byte length says so.
    if text.len() <= max {
        return Ok(());
    }
    let chars = text.chars().count();
    if chars > max {
        return Err(fail(
            path(),
            format!("{chars} characters, Slack allows {max}"),
        ));
    }
    Ok(())
}
