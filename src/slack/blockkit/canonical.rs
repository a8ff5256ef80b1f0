//! Rendered JSON text to the compact form `serde_json::Value::to_string`
//! gives it (members sorted by name, the last of duplicates kept, strings
//! and numbers written as serde_json writes them), without building a
//! `Value`: the bytes of `blocks` stay what they were when enrich parsed
//! them into a tree, so notify's content hashes don't change.
//!
//! The same pass reads the few members the Block Kit limits are about
//! (a [`Shape`], see `scan::read`), so the rendered text is parsed once:
//! by the byte-level reader (`super::reader`), or, for a document it
//! leaves (not JSON, or not one it is sure of), by serde_json here.

use std::fmt::{self, Write as _};
use std::marker::PhantomData;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::reader;
use super::scan::Text;

/// `text` (one JSON document) in compact canonical form.
pub fn canonical_json(text: &str) -> Result<String, serde_json::Error> {
    canonical_shaped::<()>(text).map(|(out, ())| out)
}

/// `text` in compact canonical form, and the document read as `S`.
pub(super) fn canonical_shaped<'de, S: Shape<'de>>(
    text: &'de str,
) -> Result<(String, S), serde_json::Error> {
    // The reader writes and reads what this path would, or leaves the
    // document to it (and serde_json's error to word).
    reader::canonical_shaped(text).or_else(|reader::Bail| serde_shaped(text))
}

/// `canonical_shaped` through serde_json alone.
pub(super) fn serde_shaped<'de, S: Shape<'de>>(
    text: &'de str,
) -> Result<(String, S), serde_json::Error> {
    let mut out = String::with_capacity(text.len());
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let mut buffers = Buffers {
        scratch: String::new(),
        members: Vec::new(),
    };
    let shape = Writer {
        out: &mut out,
        buffers: &mut buffers,
    }
    .seed::<S>()
    .deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok((out, shape))
}

/// What a JSON value is read into while it is written: a scalar, a string,
/// an array's items or an object's members, as the caller needs them.
pub(super) trait Shape<'de>: Sized {
    /// An array's items are read as this.
    type Item: Shape<'de>;
    /// Where the items are gathered.
    type Items: Default;
    /// An object is read into this.
    type Object: Members<'de>;
    fn push(items: &mut Self::Items, item: Self::Item);
    fn string(text: Text<'de>) -> Self;
    /// A number, a boolean or null.
    fn scalar() -> Self;
    fn array(items: Self::Items) -> Self;
    fn object(object: Self::Object) -> Self;
}

/// An object's members as some shape reads them.
pub(super) trait Members<'de>: Default {
    /// Reads the value of the member `name` (`value.read()` as the shape
    /// it wants); called again for a duplicate, whose value is the one
    /// kept, as in a tree.
    fn member<V: MemberValue<'de>>(&mut self, name: &str, value: V) -> Result<(), V::Error>;
}

/// A member's value, yet to be read (and written): by serde_json or by
/// the reader.
pub(super) trait MemberValue<'de> {
    type Error;
    fn read<S: Shape<'de>>(self) -> Result<S, Self::Error>;
}

/// Nothing read: the canonical form only.
impl<'de> Shape<'de> for () {
    type Item = ();
    type Items = ();
    type Object = ();
    fn push(_: &mut (), _: ()) {}
    fn string(_: Text<'de>) {}
    fn scalar() {}
    fn array(_: ()) {}
    fn object(_: ()) {}
}

impl<'de> Members<'de> for () {
    fn member<V: MemberValue<'de>>(&mut self, _: &str, value: V) -> Result<(), V::Error> {
        value.read::<()>()
    }
}

/// The value serde_json's map is at, written where `writer` writes.
struct SerdeValue<'m, 'o, 'de, A> {
    map: &'m mut A,
    writer: Writer<'o, 'de>,
}

impl<'de, A: MapAccess<'de>> MemberValue<'de> for SerdeValue<'_, '_, 'de, A> {
    type Error = A::Error;
    fn read<S: Shape<'de>>(self) -> Result<S, A::Error> {
        self.map.next_value_seed(self.writer.seed::<S>())
    }
}

/// What every object of one document reuses instead of allocating its own:
/// members are read onto one stack (an object's above its parent's) and
/// reordered through one scratch string.
struct Buffers<'de> {
    scratch: String,
    members: Vec<(Text<'de>, Range<usize>)>,
}

/// Where a value's canonical form is written.
struct Writer<'o, 'de> {
    out: &'o mut String,
    buffers: &'o mut Buffers<'de>,
}

impl<'o, 'de> Writer<'o, 'de> {
    /// A seed that writes the next value and reads it as `S`.
    fn seed<S: Shape<'de>>(self) -> Canonical<'o, 'de, S> {
        Canonical {
            writer: self,
            shape: PhantomData,
        }
    }
}

struct Canonical<'o, 'de, S> {
    writer: Writer<'o, 'de>,
    shape: PhantomData<S>,
}

impl<'de, S> Canonical<'_, 'de, S> {
    fn nested(&mut self) -> Writer<'_, 'de> {
        Writer {
            out: &mut *self.writer.out,
            buffers: &mut *self.writer.buffers,
        }
    }
}

impl<'de, S: Shape<'de>> DeserializeSeed<'de> for Canonical<'_, 'de, S> {
    type Value = S;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<S, D::Error> {
        d.deserialize_any(self)
    }
}

/// `text` as a JSON string literal, escaped exactly as serde_json does.
fn write_str(out: &mut String, text: &str) {
    out.push('"');
    // Writing to a String cannot fail.
    let _ = super::write_json_string_content(out, text);
    out.push('"');
}

/// `text`, read from the document unchanged, as a JSON string literal.
/// serde_json borrows a string only when its source had no escape, and
/// refuses a raw control character in one, so nothing in it needs an
/// escape (serde_json escapes only `"`, `\\` and controls): its bytes are
/// what the escape would write.
fn write_unescaped_str(out: &mut String, text: &str) {
    debug_assert!(!text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'));
    out.push('"');
    out.push_str(text);
    out.push('"');
}

/// A member name as a JSON string literal.
fn write_name(out: &mut String, name: &Text<'_>) {
    match name.unescaped() {
        Some(text) => write_unescaped_str(out, text),
        None => write_str(out, name.as_str()),
    }
}

impl<'de, S: Shape<'de>> Visitor<'de> for Canonical<'_, 'de, S> {
    type Value = S;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<S, E> {
        self.writer.out.push_str(if v { "true" } else { "false" });
        Ok(S::scalar())
    }
    // Integers print as serde_json's `Number` prints them (plain decimal
    // digits); written in place rather than through a `String` each.
    fn visit_i64<E>(self, v: i64) -> Result<S, E> {
        let _ = write!(self.writer.out, "{v}");
        Ok(S::scalar())
    }
    fn visit_u64<E>(self, v: u64) -> Result<S, E> {
        let _ = write!(self.writer.out, "{v}");
        Ok(S::scalar())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<S, E> {
        // As `Value` holds it: a finite float (JSON has no other).
        match serde_json::Number::from_f64(v) {
            Some(n) => {
                let _ = write!(self.writer.out, "{n}");
            }
            None => self.writer.out.push_str("null"),
        }
        Ok(S::scalar())
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<S, E> {
        write_unescaped_str(self.writer.out, v);
        Ok(S::string(Text::borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<S, E> {
        write_str(self.writer.out, v);
        Ok(S::string(Text::owned(v)))
    }
    fn visit_unit<E>(self) -> Result<S, E> {
        self.writer.out.push_str("null");
        Ok(S::scalar())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<S, A::Error> {
        let mut items = S::Items::default();
        self.writer.out.push('[');
        let mut first = true;
        loop {
            let mark = self.writer.out.len();
            if !first {
                self.writer.out.push(',');
            }
            match seq.next_element_seed(self.nested().seed::<S::Item>())? {
                Some(item) => S::push(&mut items, item),
                None => {
                    self.writer.out.truncate(mark);
                    break;
                }
            }
            first = false;
        }
        self.writer.out.push(']');
        Ok(S::array(items))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<S, A::Error> {
        let mut object = S::Object::default();
        // Members are written as they come, then put in name order.
        let start = self.writer.out.len();
        let base = self.writer.buffers.members.len();
        while let Some(name) = map.next_key::<Text<'de>>()? {
            let value_start = self.writer.out.len();
            let value = SerdeValue {
                map: &mut map,
                writer: self.nested(),
            };
            object.member(name.as_str(), value)?;
            let range = value_start - start..self.writer.out.len() - start;
            self.writer.buffers.members.push((name, range));
        }
        let out = &mut *self.writer.out;
        let Buffers { scratch, members } = &mut *self.writer.buffers;
        scratch.clear();
        scratch.push_str(&out[start..]);
        out.truncate(start);
        let own = &mut members[base..];
        // Stable: of equal names the last comes last, and is the one kept.
        own.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        out.push('{');
        let mut first = true;
        for (i, (name, range)) in own.iter().enumerate() {
            if own
                .get(i + 1)
                .is_some_and(|next| next.0.as_str() == name.as_str())
            {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            write_name(out, name);
            out.push(':');
            out.push_str(&scratch[range.clone()]);
        }
        out.push('}');
        members.truncate(base);
        Ok(S::object(object))
    }
}
