//! A byte-level JSON reader for the one pass over rendered blocks: it
//! writes the canonical form and reads the [`Shape`] exactly as the
//! serde_json path in `canonical` does, without serde_json's visitors
//! (its string scans and member keys were most of the pass's cost).
//!
//! It decides only documents it is sure of. Anything else — not JSON, a
//! lone surrogate escape, nesting near serde_json's limit, a member name
//! with an escape — ends it with
//! [`Bail`], and the serde_json path decides: the same answer, or the error
//! worded as serde_json words it. Numbers other than plain 64-bit integers
//! are parsed by serde_json itself (its float rounding is its own).

use std::cmp::Ordering;
use std::io::Write as _;
use std::ops::Range;

use super::canonical::{MemberValue, Members, Shape};
use super::escape::next_escape;
use super::scan::Text;

mod string;
#[cfg(test)]
mod tests;

/// The reader leaves this document to the serde_json path.
#[derive(Debug, PartialEq)]
pub(super) struct Bail;

type Read<T> = Result<T, Bail>;

/// Nested arrays and objects the reader takes; serde_json refuses the
/// 128th, so every document the reader takes is one serde_json takes.
const MAX_DEPTH: u32 = 100;

/// `text` in compact canonical form and read as `S`, or [`Bail`].
pub(super) fn canonical_shaped<'de, S: Shape<'de>>(text: &'de str) -> Result<(String, S), Bail> {
    let mut reader = Reader {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        out: Vec::with_capacity(text.len()),
        scratch: Vec::new(),
        members: Vec::new(),
        depth: 0,
    };
    let shape = reader.value::<S>()?;
    reader.skip_whitespace();
    if reader.pos != reader.bytes.len() {
        return Err(Bail);
    }
    // Everything written is whole characters: runs of `text` cut at ASCII
    // bytes, ASCII punctuation, decoded escapes. Bytes are written without
    // a check each; the one check is here (never failing, or serde_json
    // would decide).
    let out = String::from_utf8(reader.out).map_err(|_| Bail)?;
    Ok((out, shape))
}

/// A member on the stack of the objects being read.
struct Member<'de> {
    /// The name's first eight bytes, big-endian, zero-padded: names
    /// compare as these do unless they are equal (names hold no NUL: a raw
    /// control character is refused, an escaped one bails).
    key: u64,
    name: &'de str,
    /// Where `"name":value` stands in `out`.
    range: Range<usize>,
}

impl Member<'_> {
    /// Name order, as `str`'s `Ord` (byte order).
    fn cmp(&self, other: &Self) -> Ordering {
        self.key
            .cmp(&other.key)
            .then_with(|| self.name.cmp(other.name))
    }

    fn same_name(&self, other: &Self) -> bool {
        self.key == other.key && self.name == other.name
    }
}

/// [`Member::key`] of the `len` bytes at `at`: one load, the bytes past
/// the name masked off (byte by byte at the end of the text).
fn name_key(bytes: &[u8], at: usize, len: usize) -> u64 {
    if let Some(word) = bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) {
        let keep = if len >= 8 {
            u64::MAX
        } else {
            !(u64::MAX >> (8 * len))
        };
        return u64::from_be_bytes(*word) & keep;
    }
    let name = bytes.get(at..at + len).unwrap_or_default();
    let mut key = 0;
    for (i, &byte) in name.iter().take(8).enumerate() {
        key |= u64::from(byte) << (56 - 8 * i);
    }
    key
}

struct Reader<'de> {
    text: &'de str,
    bytes: &'de [u8],
    /// The next byte to read.
    pos: usize,
    /// The canonical form so far (UTF-8, checked once at the end).
    out: Vec<u8>,
    /// An object's members while they are put in name order.
    scratch: Vec<u8>,
    /// The members of the objects being read, an object's above its
    /// parent's.
    members: Vec<Member<'de>>,
    depth: u32,
}

/// A member's value, read by [`Members::member`] as the shape it wants.
pub(super) struct ReaderValue<'r, 'de>(&'r mut Reader<'de>);

impl<'de> MemberValue<'de> for ReaderValue<'_, 'de> {
    type Error = Bail;
    fn read<S: Shape<'de>>(self) -> Read<S> {
        self.0.value()
    }
}

impl<'de> Reader<'de> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// The next value, written to `out` and read as `S`.
    fn value<S: Shape<'de>>(&mut self) -> Read<S> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'"') => self.string().map(S::string),
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(|()| S::scalar()),
            _ => Err(Bail),
        }
    }

    fn literal<S: Shape<'de>>(&mut self, word: &str) -> Read<S> {
        if !self.bytes[self.pos..].starts_with(word.as_bytes()) {
            return Err(Bail);
        }
        self.pos += word.len();
        self.out.extend_from_slice(word.as_bytes());
        Ok(S::scalar())
    }

    /// A number, written as serde_json's `Value` writes it. An integer of
    /// up to 18 digits is a `u64` or an `i64` to serde_json, printed with
    /// the digits it was written with (JSON has no leading zeros); any other
    /// number — a fraction, an exponent, `-0` (a float to serde_json), a
    /// longer integer — is parsed and printed by serde_json itself.
    fn number(&mut self) -> Read<()> {
        let start = self.pos;
        let mut i = start + usize::from(self.bytes[start] == b'-');
        let digits = i;
        match self.bytes.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = self.digits(i),
            _ => return Err(Bail),
        }
        let int_digits = i - digits;
        let mut integer = true;
        if self.bytes.get(i) == Some(&b'.') {
            integer = false;
            i = self.some_digits(i + 1)?;
        }
        if let Some(b'e' | b'E') = self.bytes.get(i) {
            integer = false;
            i += 1;
            if let Some(b'+' | b'-') = self.bytes.get(i) {
                i += 1;
            }
            i = self.some_digits(i)?;
        }
        self.pos = i;
        let token = &self.text[start..i];
        if integer && int_digits <= 18 && token != "-0" {
            self.out.extend_from_slice(token.as_bytes());
            return Ok(());
        }
        let number: serde_json::Number = serde_json::from_str(token).map_err(|_| Bail)?;
        // Writing to a Vec cannot fail.
        let _ = write!(self.out, "{number}");
        Ok(())
    }

    /// The end of the run of ASCII digits at `i`.
    fn digits(&self, mut i: usize) -> usize {
        while let Some(b'0'..=b'9') = self.bytes.get(i) {
            i += 1;
        }
        i
    }

    /// The end of the run of ASCII digits at `i`; there must be one.
    fn some_digits(&self, i: usize) -> Read<usize> {
        let end = self.digits(i);
        if end == i {
            return Err(Bail);
        }
        Ok(end)
    }

    fn enter(&mut self) -> Read<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Bail);
        }
        self.pos += 1;
        self.skip_whitespace();
        Ok(())
    }

    fn array<S: Shape<'de>>(&mut self) -> Read<S> {
        self.enter()?;
        let mut items = S::Items::default();
        self.out.push(b'[');
        if self.peek() == Some(b']') {
            self.pos += 1;
        } else {
            loop {
                S::push(&mut items, self.value::<S::Item>()?);
                self.skip_whitespace();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.out.push(b',');
                    }
                    Some(b']') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(Bail),
                }
            }
        }
        self.out.push(b']');
        self.depth -= 1;
        Ok(S::array(items))
    }

    /// Members are written as they come, `"name":value`, and put in name
    /// order once the object has ended (most often they are not).
    fn object<S: Shape<'de>>(&mut self) -> Read<S> {
        self.enter()?;
        let mut object = S::Object::default();
        self.out.push(b'{');
        let start = self.out.len();
        let base = self.members.len();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                if self.peek() != Some(b'"') {
                    return Err(Bail);
                }
                let member_start = self.out.len();
                let name_at = self.pos + 1;
                // Names are plain words in templates; one with an escape is
                // left to serde_json (so names here borrow from the text).
                let name = self.string()?.unescaped().ok_or(Bail)?;
                let key = name_key(self.bytes, name_at, name.len());
                self.skip_whitespace();
                if self.peek() != Some(b':') {
                    return Err(Bail);
                }
                self.pos += 1;
                self.out.push(b':');
                object.member(name, ReaderValue(self))?;
                self.members.push(Member {
                    key,
                    name,
                    range: member_start..self.out.len(),
                });
                self.skip_whitespace();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.out.push(b',');
                        self.skip_whitespace();
                    }
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(Bail),
                }
            }
            self.order_members(start, base);
        }
        self.out.push(b'}');
        self.members.truncate(base);
        self.depth -= 1;
        Ok(S::object(object))
    }

    /// Rewrites the members from `out[start..]` (those on the stack from
    /// `base`) in name order, the last of equal names kept, as a
    /// `BTreeMap` holds them; members already in that order stay as written.
    fn order_members(&mut self, start: usize, base: usize) {
        let Reader {
            out,
            scratch,
            members,
            ..
        } = self;
        let own = &mut members[base..];
        if own.windows(2).all(|w| w[0].cmp(&w[1]) == Ordering::Less) {
            return;
        }
        scratch.clear();
        scratch.extend_from_slice(&out[start..]);
        out.truncate(start);
        // Stable: of equal names the last comes last, and is the one kept.
        own.sort_by(Member::cmp);
        let mut first = true;
        for (i, member) in own.iter().enumerate() {
            if own.get(i + 1).is_some_and(|next| next.same_name(member)) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&scratch[member.range.start - start..member.range.end - start]);
        }
    }
}
