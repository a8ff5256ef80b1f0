//! Rendered JSON text to the compact form `serde_json::Value::to_string`
//! gives it (members sorted by name, the last of duplicates kept, strings
//! and numbers written as serde_json writes them), without building a
//! `Value`: the bytes of `blocks` stay what they were when enrich parsed
//! them into a tree, so notify's content hashes don't change.

use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::scan::Text;

/// `text` (one JSON document) in compact canonical form.
pub fn canonical_json(text: &str) -> Result<String, serde_json::Error> {
    let mut out = String::with_capacity(text.len());
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let mut buffers = Buffers {
        scratch: String::new(),
        members: Vec::new(),
    };
    Canonical {
        out: &mut out,
        buffers: &mut buffers,
    }
    .deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(out)
}

/// What every object of one document reuses instead of allocating its own:
/// members are read onto one stack (an object's above its parent's) and
/// reordered through one scratch string.
struct Buffers<'de> {
    scratch: String,
    members: Vec<(Text<'de>, Range<usize>)>,
}

struct Canonical<'o, 'de> {
    out: &'o mut String,
    buffers: &'o mut Buffers<'de>,
}

impl<'de> Canonical<'_, 'de> {
    fn nested(&mut self) -> Canonical<'_, 'de> {
        Canonical {
            out: &mut *self.out,
            buffers: &mut *self.buffers,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Canonical<'_, 'de> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
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

impl<'de> Visitor<'de> for Canonical<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.out.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.out.push_str(&serde_json::Number::from(v).to_string());
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.out.push_str(&serde_json::Number::from(v).to_string());
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // As `Value` holds it: a finite float (JSON has no other).
        match serde_json::Number::from_f64(v) {
            Some(n) => self.out.push_str(&n.to_string()),
            None => self.out.push_str("null"),
        }
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        write_str(self.out, v);
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.out.push_str("null");
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.out.push('[');
        let mut first = true;
        loop {
            let mark = self.out.len();
            if !first {
                self.out.push(',');
            }
            if seq.next_element_seed(self.nested())?.is_none() {
                self.out.truncate(mark);
                break;
            }
            first = false;
        }
        self.out.push(']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        // Members are written as they come, then put in name order.
        let start = self.out.len();
        let base = self.buffers.members.len();
        while let Some(name) = map.next_key::<Text<'de>>()? {
            let value_start = self.out.len();
            map.next_value_seed(self.nested())?;
            let range = value_start - start..self.out.len() - start;
            self.buffers.members.push((name, range));
        }
        let Buffers { scratch, members } = &mut *self.buffers;
        scratch.clear();
        scratch.push_str(&self.out[start..]);
        self.out.truncate(start);
        let own = &mut members[base..];
        // Stable: of equal names the last comes last, and is the one kept.
        own.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        self.out.push('{');
        let mut first = true;
        for (i, (name, range)) in own.iter().enumerate() {
            if own
                .get(i + 1)
                .is_some_and(|next| next.0.as_str() == name.as_str())
            {
                continue;
            }
            if !first {
                self.out.push(',');
            }
            first = false;
            write_str(self.out, name.as_str());
            self.out.push(':');
            self.out.push_str(&scratch[range.clone()]);
        }
        self.out.push('}');
        members.truncate(base);
        Ok(())
    }
}
