//! The few members of Block Kit JSON the limits are about, read borrowed
//! from the text by serde (see [`super`]); everything else is skipped.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

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
pub(super) enum Member<'de, T> {
    #[default]
    Absent,
    Str(Text<'de>),
    Object(T),
    /// Present, neither a string nor an object.
    Other,
}

impl<T> Member<'_, T> {
    pub(super) fn is_absent(&self) -> bool {
        matches!(self, Member::Absent)
    }
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Member::Str(text) => Some(text.as_str()),
            _ => None,
        }
    }
    pub(super) fn object(&self) -> Option<&T> {
        match self {
            Member::Object(object) => Some(object),
            _ => None,
        }
    }
}

/// An object read into the members some rule looks at.
pub(super) trait FromMap<'de>: Sized {
    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
}

/// An object no rule looks into.
pub(super) struct Opaque;

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
pub(super) enum List<'de, T> {
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
pub(super) struct TextObject<'de> {
    pub(super) kind: Member<'de, Opaque>,
    pub(super) text: Member<'de, Opaque>,
}

#[derive(Default)]
pub(super) struct Element<'de> {
    pub(super) kind: Member<'de, Opaque>,
    pub(super) text: Member<'de, TextObject<'de>>,
    pub(super) value: Member<'de, Opaque>,
    pub(super) action_id: Member<'de, Opaque>,
    pub(super) url: Member<'de, Opaque>,
    pub(super) style: Member<'de, Opaque>,
    /// A `static_select` menu's.
    pub(super) placeholder: Member<'de, TextObject<'de>>,
    pub(super) options: List<'de, SelectOption<'de>>,
}

/// One option of a `static_select` menu.
#[derive(Default)]
pub(super) struct SelectOption<'de> {
    pub(super) text: Member<'de, TextObject<'de>>,
    pub(super) value: Member<'de, Opaque>,
}

#[derive(Default)]
pub(super) struct Block<'de> {
    pub(super) kind: Member<'de, Opaque>,
    pub(super) block_id: Member<'de, Opaque>,
    pub(super) text: Member<'de, TextObject<'de>>,
    pub(super) fields: List<'de, TextObject<'de>>,
    pub(super) accessory: Member<'de, Element<'de>>,
    pub(super) elements: List<'de, Element<'de>>,
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
