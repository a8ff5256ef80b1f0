//! The few members of Block Kit JSON the limits are about, read borrowed
//! from the text while its canonical form is written (see [`super`] and
//! `canonical::Shape`); everything else is only written.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Visitor};

use super::super::canonical::{MemberValue, Members, Shape};

/// A string from the text, borrowed unless it had escapes.
pub struct Text<'de>(Cow<'de, str>);

impl<'de> Text<'de> {
    pub fn borrowed(text: &'de str) -> Self {
        Text(Cow::Borrowed(text))
    }
    pub fn owned(text: &str) -> Self {
        Text(Cow::Owned(text.to_owned()))
    }
    /// A string whose escapes were decoded into `text`.
    pub fn decoded(text: String) -> Self {
        Text(Cow::Owned(text))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The text as it stood in the document (it had no escapes).
    pub fn unescaped(&self) -> Option<&'de str> {
        match self.0 {
            Cow::Borrowed(text) => Some(text),
            Cow::Owned(_) => None,
        }
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
        Ok(Text::borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
        Ok(Text::owned(v))
    }
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor)
    }
}

/// A member as the rules see it.
#[derive(Default)]
pub(in super::super) enum Member<'de, T> {
    #[default]
    Absent,
    Str(Text<'de>),
    Object(T),
    /// Present, neither a string nor an object.
    Other,
}

impl<T> Member<'_, T> {
    pub(in super::super) fn is_absent(&self) -> bool {
        matches!(self, Member::Absent)
    }
    pub(in super::super) fn as_str(&self) -> Option<&str> {
        match self {
            Member::Str(text) => Some(text.as_str()),
            _ => None,
        }
    }
    pub(in super::super) fn object(&self) -> Option<&T> {
        match self {
            Member::Object(object) => Some(object),
            _ => None,
        }
    }
}

impl<'de, T: Members<'de>> Shape<'de> for Member<'de, T> {
    type Item = ();
    type Items = ();
    type Object = T;
    fn push(_: &mut (), _: ()) {}
    fn string(text: Text<'de>) -> Self {
        Member::Str(text)
    }
    fn scalar() -> Self {
        Member::Other
    }
    fn array(_: ()) -> Self {
        Member::Other
    }
    fn object(object: T) -> Self {
        Member::Object(object)
    }
}

/// A member that should be an array.
#[derive(Default)]
pub(in super::super) enum List<'de, T> {
    #[default]
    Absent,
    Items(Vec<Member<'de, T>>),
    Other,
}

impl<'de, T: Members<'de>> Shape<'de> for List<'de, T> {
    type Item = Member<'de, T>;
    type Items = Vec<Member<'de, T>>;
    /// An object no rule looks into.
    type Object = ();
    fn push(items: &mut Vec<Member<'de, T>>, item: Member<'de, T>) {
        items.push(item);
    }
    fn string(_: Text<'de>) -> Self {
        List::Other
    }
    fn scalar() -> Self {
        List::Other
    }
    fn array(items: Vec<Member<'de, T>>) -> Self {
        List::Items(items)
    }
    fn object(_: ()) -> Self {
        List::Other
    }
}

/// `{type, text}`: a text object, or a context element.
#[derive(Default)]
pub(in super::super) struct TextObject<'de> {
    pub(in super::super) kind: Member<'de, ()>,
    pub(in super::super) text: Member<'de, ()>,
}

#[derive(Default)]
pub(in super::super) struct Element<'de> {
    pub(in super::super) kind: Member<'de, ()>,
    pub(in super::super) text: Member<'de, TextObject<'de>>,
    pub(in super::super) value: Member<'de, ()>,
    pub(in super::super) action_id: Member<'de, ()>,
    pub(in super::super) url: Member<'de, ()>,
    pub(in super::super) style: Member<'de, ()>,
    /// A `static_select` menu's.
    pub(in super::super) placeholder: Member<'de, TextObject<'de>>,
    pub(in super::super) options: List<'de, SelectOption<'de>>,
}

/// One option of a `static_select` menu.
#[derive(Default)]
pub(in super::super) struct SelectOption<'de> {
    pub(in super::super) text: Member<'de, TextObject<'de>>,
    pub(in super::super) value: Member<'de, ()>,
}

#[derive(Default)]
pub(in super::super) struct Block<'de> {
    pub(in super::super) kind: Member<'de, ()>,
    pub(in super::super) block_id: Member<'de, ()>,
    pub(in super::super) text: Member<'de, TextObject<'de>>,
    pub(in super::super) fields: List<'de, TextObject<'de>>,
    pub(in super::super) accessory: Member<'de, Element<'de>>,
    pub(in super::super) elements: List<'de, Element<'de>>,
}

/// Reads the named members into their fields and only writes the rest; a
/// duplicate overwrites, so the last counts, as in a parsed tree.
macro_rules! members {
    ($type:ident { $($name:literal => $field:ident),* $(,)? }) => {
        impl<'de> Members<'de> for $type<'de> {
            fn member<V: MemberValue<'de>>(
                &mut self,
                name: &str,
                value: V,
            ) -> Result<(), V::Error> {
                match name {
                    $($name => self.$field = value.read()?,)*
                    _ => value.read::<()>()?,
                }
                Ok(())
            }
        }
    };
}

members!(TextObject { "type" => kind, "text" => text });
members!(Element {
    "type" => kind, "text" => text, "value" => value,
    "action_id" => action_id, "url" => url, "style" => style,
    "placeholder" => placeholder, "options" => options,
});
members!(SelectOption { "text" => text, "value" => value });
members!(Block {
    "type" => kind, "block_id" => block_id, "text" => text,
    "fields" => fields, "accessory" => accessory, "elements" => elements,
});
