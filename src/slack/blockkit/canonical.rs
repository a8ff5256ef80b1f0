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
    Canonical(&mut out).deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(out)
}

struct Canonical<'o>(&'o mut String);

impl<'de> DeserializeSeed<'de> for Canonical<'_> {
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

impl<'de> Visitor<'de> for Canonical<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push_str(&serde_json::Number::from(v).to_string());
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push_str(&serde_json::Number::from(v).to_string());
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // As `Value` holds it: a finite float (JSON has no other).
        match serde_json::Number::from_f64(v) {
            Some(n) => self.0.push_str(&n.to_string()),
            None => self.0.push_str("null"),
        }
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        write_str(self.0, v);
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.push_str("null");
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.push('[');
        let mut first = true;
        loop {
            let mark = self.0.len();
            if !first {
                self.0.push(',');
            }
            if seq.next_element_seed(Canonical(self.0))?.is_none() {
                self.0.truncate(mark);
                break;
            }
            first = false;
        }
        self.0.push(']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Members are written as they come, then put in name order.
        let start = self.0.len();
        let mut members: Vec<(Text<'de>, Range<usize>)> = Vec::new();
        while let Some(name) = map.next_key::<Text<'de>>()? {
            let value_start = self.0.len();
            map.next_value_seed(Canonical(self.0))?;
            members.push((name, value_start - start..self.0.len() - start));
        }
        let written = self.0.split_off(start);
        // Stable: of equal names the last comes last, and is the one kept.
        members.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        self.0.push('{');
        let mut first = true;
        for (i, (name, range)) in members.iter().enumerate() {
            if members
                .get(i + 1)
                .is_some_and(|next| next.0.as_str() == name.as_str())
            {
                continue;
            }
            if !first {
                self.0.push(',');
            }
            first = false;
            write_str(self.0, name.as_str());
            self.0.push(':');
            self.0.push_str(&written[range.clone()]);
        }
        self.0.push('}');
        Ok(())
    }
}
