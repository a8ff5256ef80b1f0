//! Block Kit limits checked on JSON text: each block is read into the few
//! borrowed members the limits are about, never into a tree. The rules and
//! their error paths are [`super::validate_message`]'s; the tests hold the
//! two to the same answers.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{
    fail, BlockKitError, MAX_ACTION_ELEMENTS, MAX_ACTION_ID, MAX_BLOCKS, MAX_BLOCK_ID,
    MAX_BUTTON_TEXT, MAX_BUTTON_VALUE, MAX_CONTEXT_ELEMENTS, MAX_FIELDS, MAX_FIELD_TEXT,
    MAX_HEADER_TEXT, MAX_MESSAGE_TEXT, MAX_OPTIONS, MAX_OPTION_TEXT, MAX_OPTION_VALUE,
    MAX_PLACEHOLDER, MAX_SECTION_TEXT, MAX_URL,
};

/// A string from the text, borrowed unless it had escapes.
pub struct Text<'de>(Cow<'de, str>);

impl Text<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Owned(v.to_owned())))
    }
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor)
    }
}

/// A member as the rules see it.
#[derive(Default)]
enum Member<'de, T> {
    #[default]
    Absent,
    Str(Text<'de>),
    Object(T),
    /// Present, neither a string nor an object.
    Other,
}

impl<T> Member<'_, T> {
    fn is_absent(&self) -> bool {
        matches!(self, Member::Absent)
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Member::Str(text) => Some(text.as_str()),
            _ => None,
        }
    }
    fn object(&self) -> Option<&T> {
        match self {
            Member::Object(object) => Some(object),
            _ => None,
        }
    }
}

/// An object read into the members some rule looks at.
trait FromMap<'de>: Sized {
    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
}

/// An object no rule looks into.
struct Opaque;

impl<'de> FromMap<'de> for Opaque {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Opaque)
    }
}

/// A scalar where an object or array is looked for: `$other`.
macro_rules! other_on_scalars {
    ($other:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
}

struct MemberVisitor<T>(PhantomData<T>);

impl<'de, T: FromMap<'de>> Visitor<'de> for MemberVisitor<T> {
    type Value = Member<'de, T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    other_on_scalars!(Member::Other);
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Member::Str(Text(Cow::Borrowed(v))))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Member::Str(Text(Cow::Owned(v.to_owned()))))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Member::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Ok(Member::Object(T::from_map(map)?))
    }
}

impl<'de, T: FromMap<'de>> Deserialize<'de> for Member<'de, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MemberVisitor(PhantomData))
    }
}

/// A member that should be an array.
#[derive(Default)]
enum List<'de, T> {
    #[default]
    Absent,
    Items(Vec<Member<'de, T>>),
    Other,
}

struct ListVisitor<T>(PhantomData<T>);

impl<'de, T: FromMap<'de>> Visitor<'de> for ListVisitor<T> {
    type Value = List<'de, T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    other_on_scalars!(List::Other);
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(List::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(List::Items(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Opaque::from_map(map)?;
        Ok(List::Other)
    }
}

impl<'de, T: FromMap<'de>> Deserialize<'de> for List<'de, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ListVisitor(PhantomData))
    }
}

/// `{type, text}`: a text object, or a context element.
#[derive(Default)]
struct TextObject<'de> {
    kind: Member<'de, Opaque>,
    text: Member<'de, Opaque>,
}

#[derive(Default)]
struct Element<'de> {
    kind: Member<'de, Opaque>,
    text: Member<'de, TextObject<'de>>,
    value: Member<'de, Opaque>,
    action_id: Member<'de, Opaque>,
    url: Member<'de, Opaque>,
    style: Member<'de, Opaque>,
    /// A `static_select` menu's.
    placeholder: Member<'de, TextObject<'de>>,
    options: List<'de, SelectOption<'de>>,
}

/// One option of a `static_select` menu.
#[derive(Default)]
struct SelectOption<'de> {
    text: Member<'de, TextObject<'de>>,
    value: Member<'de, Opaque>,
}

#[derive(Default)]
struct Block<'de> {
    kind: Member<'de, Opaque>,
    block_id: Member<'de, Opaque>,
    text: Member<'de, TextObject<'de>>,
    fields: List<'de, TextObject<'de>>,
    accessory: Member<'de, Element<'de>>,
    elements: List<'de, Element<'de>>,
}

/// Reads the named members into `$target`, skips the rest; of duplicates
/// the last counts, as in a parsed tree.
macro_rules! read_members {
    ($map:ident, $target:ident, { $($name:literal => $field:ident),* $(,)? }) => {{
        while let Some(name) = $map.next_key::<Text<'de>>()? {
            match name.as_str() {
                $($name => $target.$field = $map.next_value()?,)*
                _ => {
                    $map.next_value::<IgnoredAny>()?;
                }
            }
        }
    }};
}

impl<'de> FromMap<'de> for TextObject<'de> {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut object = TextObject::default();
        read_members!(map, object, {"type" => kind, "text" => text});
        Ok(object)
    }
}

impl<'de> FromMap<'de> for Element<'de> {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut element = Element::default();
        read_members!(map, element, {
            "type" => kind, "text" => text, "value" => value,
            "action_id" => action_id, "url" => url, "style" => style,
            "placeholder" => placeholder, "options" => options,
        });
        Ok(element)
    }
}

impl<'de> FromMap<'de> for SelectOption<'de> {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut option = SelectOption::default();
        read_members!(map, option, {"text" => text, "value" => value});
        Ok(option)
    }
}

impl<'de> FromMap<'de> for Block<'de> {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut block = Block::default();
        read_members!(map, block, {
            "type" => kind, "block_id" => block_id, "text" => text,
            "fields" => fields, "accessory" => accessory, "elements" => elements,
        });
        Ok(block)
    }
}

/// Why rendered blocks were refused.
#[derive(Debug)]
pub enum ScanError {
    Json(serde_json::Error),
    BlockKit(BlockKitError),
}

/// [`super::validate_message`] of `text` and the blocks in `blocks_json`.
pub fn validate_message_text(text: &str, blocks_json: &str) -> Result<(), ScanError> {
    let blocks: List<'_, Block<'_>> = serde_json::from_str(blocks_json).map_err(ScanError::Json)?;
    check_message(text, &blocks).map_err(ScanError::BlockKit)
}

fn check_message(text: &str, blocks: &List<'_, Block<'_>>) -> Result<(), BlockKitError> {
    if text.trim().is_empty() {
        return Err(fail("text", "fallback text must not be empty"));
    }
    max_len(|| "text".into(), text, MAX_MESSAGE_TEXT)?;
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
        check_block(&|| format!("blocks[{i}]"), block)?;
    }
    Ok(())
}

type Path<'a> = &'a dyn Fn() -> String;

fn check_block(path: Path, block: &Member<'_, Block<'_>>) -> Result<(), BlockKitError> {
    let Some((block, kind)) = block
        .object()
        .and_then(|b| b.kind.as_str().map(|kind| (b, kind)))
    else {
        return Err(fail(path(), "block has no \"type\""));
    };
    if !block.block_id.is_absent() {
        let id = block
            .block_id
            .as_str()
            .ok_or_else(|| fail(format!("{}.block_id", path()), "must be a string"))?;
        max_len(|| format!("{}.block_id", path()), id, MAX_BLOCK_ID)?;
    }
    match kind {
        "header" => {
            let text = text_object(
                &|| format!("{}.text", path()),
                text_parts(&block.text),
                true,
            )?;
            max_len(|| format!("{}.text.text", path()), text, MAX_HEADER_TEXT)?;
        }
        "section" => {
            if block.text.is_absent() && matches!(block.fields, List::Absent) {
                return Err(fail(path(), "section needs \"text\" or \"fields\""));
            }
            if !block.text.is_absent() {
                let text = text_object(
                    &|| format!("{}.text", path()),
                    text_parts(&block.text),
                    false,
                )?;
                max_len(|| format!("{}.text.text", path()), text, MAX_SECTION_TEXT)?;
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
                        let text = text_object(&p, text_parts(field), false)?;
                        max_len(|| format!("{}.text", p()), text, MAX_FIELD_TEXT)?;
                    }
                }
            }
            if !block.accessory.is_absent() {
                check_element(&|| format!("{}.accessory", path()), &block.accessory)?;
            }
        }
        "context" => {
            let elements = elements(path, &block.elements, MAX_CONTEXT_ELEMENTS)?;
            for (j, element) in elements.iter().enumerate() {
                let p = || format!("{}.elements[{j}]", path());
                let element = element.object();
                if element.and_then(|e| e.kind.as_str()) == Some("image") {
                    continue;
                }
                let parts = Some((
                    element.and_then(|e| e.kind.as_str()),
                    element.and_then(|e| e.text.as_str()),
                ));
                let text = text_object(&p, parts, false)?;
                max_len(|| format!("{}.text", p()), text, MAX_SECTION_TEXT)?;
            }
        }
        "actions" => {
            let elements = elements(path, &block.elements, MAX_ACTION_ELEMENTS)?;
            for (j, element) in elements.iter().enumerate() {
                check_element(&|| format!("{}.elements[{j}]", path()), element)?;
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

fn check_element(path: Path, element: &Member<'_, Element<'_>>) -> Result<(), BlockKitError> {
    let Some(element) = element.object() else {
        return Ok(());
    };
    match element.kind.as_str() {
        Some("button") => {}
        Some("static_select") => return check_static_select(path, element),
        _ => return Ok(()),
    }
    let text = text_object(
        &|| format!("{}.text", path()),
        text_parts(&element.text),
        true,
    )?;
    max_len(|| format!("{}.text.text", path()), text, MAX_BUTTON_TEXT)?;
    for (name, member, max) in [
        ("value", &element.value, MAX_BUTTON_VALUE),
        ("action_id", &element.action_id, MAX_ACTION_ID),
        ("url", &element.url, MAX_URL),
    ] {
        if !member.is_absent() {
            let v = member
                .as_str()
                .ok_or_else(|| fail(format!("{}.{name}", path()), "must be a string"))?;
            max_len(|| format!("{}.{name}", path()), v, max)?;
        }
    }
    if let Some(style) = element.style.as_str() {
        if style != "primary" && style != "danger" {
            return Err(fail(
                format!("{}.style", path()),
                format!("{style:?} is not \"primary\" or \"danger\""),
            ));
        }
    }
    Ok(())
}

fn check_static_select(path: Path, element: &Element<'_>) -> Result<(), BlockKitError> {
    if !element.placeholder.is_absent() {
        let text = text_object(
            &|| format!("{}.placeholder", path()),
            text_parts(&element.placeholder),
            true,
        )?;
        max_len(
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
        max_len(|| format!("{}.action_id", path()), id, MAX_ACTION_ID)?;
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
            &|| format!("{}.text", p()),
            option.and_then(|o| text_parts(&o.text)),
            true,
        )?;
        max_len(|| format!("{}.text.text", p()), text, MAX_OPTION_TEXT)?;
        let value = option
            .and_then(|o| o.value.as_str())
            .ok_or_else(|| fail(format!("{}.value", p()), "must be a string"))?;
        max_len(|| format!("{}.value", p()), value, MAX_OPTION_VALUE)?;
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

fn text_object<'a>(
    path: Path,
    parts: Option<(Option<&str>, Option<&'a str>)>,
    plain_only: bool,
) -> Result<&'a str, BlockKitError> {
    let (kind, text) = parts.ok_or_else(|| fail(path(), "missing text object"))?;
    match kind {
        Some("plain_text") => {}
        Some("mrkdwn") if !plain_only => {}
        Some("mrkdwn") => return Err(fail(path(), "must be plain_text")),
        _ => return Err(fail(path(), "text object needs type plain_text or mrkdwn")),
    }
    let text = text.ok_or_else(|| fail(format!("{}.text", path()), "must be a string"))?;
    if text.is_empty() {
        return Err(fail(format!("{}.text", path()), "must not be empty"));
    }
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
