//! Filling a [`FastFilter`]'s paths from a record: a decoded event, or the
//! fields of a validated Avro scan, with `json_fields` parsed only as far
//! as the paths go (the rest of each document is checked, not built).
//! Values are what CEL would be handed: non-negative integers are `uint`,
//! JSON has no NaN, and a JSON field is the document it holds.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;

use super::{FastFilter, Val, EVENT, KEY, TOPIC};
use crate::avro::Scalar;
use crate::enrich::pipeline::cel_paths::check_json_text;
use crate::enrich::pipeline::Source;

impl FastFilter {
    /// The filter on a decoded event; `None`: the interpreter decides
    /// (also for a malformed JSON field, so the record fails as it did).
    pub(in crate::enrich::pipeline) fn eval_json(
        &self,
        source: &Source<'_>,
        event: &Json,
        json_fields: &[String],
    ) -> Option<bool> {
        let mut slots = self.slots(source);
        let Json::Object(members) = event else {
            self.fill_json(EVENT, event, &mut slots);
            return self.decide(&slots);
        };
        slots[EVENT] = Val::Map;
        for field in json_fields {
            if let Some(Json::String(text)) = members.get(field) {
                self.fill_text(self.member(EVENT, field), text, &mut slots)?;
            }
        }
        for &child in &self.paths[EVENT].children {
            let name = &self.paths[child].name;
            match members.get(name) {
                Some(Json::String(_)) if json_fields.contains(name) => {}
                Some(value) => self.fill_json(child, value, &mut slots),
                None => slots[child] = Val::Missing,
            }
        }
        self.decide(&slots)
    }

    /// The filter on the top-level fields of an Avro record (see
    /// [`crate::avro::Codec::scan`]); `None`: decode the record and let
    /// [`FastFilter::eval_json`] or the interpreter decide.
    pub(in crate::enrich::pipeline) fn eval_scan(
        &self,
        source: &Source<'_>,
        fields: &[(&str, Scalar<'_>)],
        json_fields: &[String],
    ) -> Option<bool> {
        let mut slots = self.slots(source);
        slots[EVENT] = Val::Map;
        for &child in &self.paths[EVENT].children {
            slots[child] = Val::Missing;
        }
        for (name, scalar) in fields {
            let child = self.member(EVENT, name);
            match scalar {
                Scalar::Str(text) if json_fields.iter().any(|f| f == name) => {
                    self.fill_text(child, text, &mut slots)?;
                }
                _ => {
                    if let Some(child) = child {
                        slots[child] = scalar_val(scalar)?;
                    }
                }
            }
        }
        self.decide(&slots)
    }

    /// Fresh slots: `key` and `topic` filled, the event left to the caller.
    fn slots<'a>(&self, source: &Source<'a>) -> Vec<Val<'a>> {
        let mut slots = vec![Val::Unreached; self.paths.len()];
        match source.key {
            Some(key) => self.fill_json(KEY, key, &mut slots),
            None => slots[KEY] = Val::Null,
        }
        slots[TOPIC] = Val::Str(Cow::Borrowed(source.topic));
        slots
    }

    fn member(&self, parent: usize, name: &str) -> Option<usize> {
        self.paths[parent]
            .children
            .iter()
            .copied()
            .find(|&c| self.paths[c].name == name)
    }

    fn fill_json<'a>(&self, node: usize, value: &'a Json, slots: &mut [Val<'a>]) {
        slots[node] = match value {
            Json::Object(members) => {
                for &child in &self.paths[node].children {
                    match members.get(&self.paths[child].name) {
                        Some(member) => self.fill_json(child, member, slots),
                        None => slots[child] = Val::Missing,
                    }
                }
                Val::Map
            }
            Json::Array(_) => Val::List,
            Json::Null => Val::Null,
            Json::Bool(b) => Val::Bool(*b),
            Json::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => Val::UInt(u),
                (None, Some(i)) => Val::Int(i),
                (None, None) => n.as_f64().map_or(Val::Null, Val::Float),
            },
            Json::String(s) => Val::Str(Cow::Borrowed(s)),
        };
    }

    /// The JSON document `text` into `node` (`None`: only checked); `None`
    /// when it is not one document.
    fn fill_text<'a>(
        &self,
        node: Option<usize>,
        text: &'a str,
        slots: &mut [Val<'a>],
    ) -> Option<()> {
        let Some(node) = node else {
            return check_json_text(text).ok();
        };
        let mut deserializer = serde_json::Deserializer::from_str(text);
        Seed {
            filter: self,
            node,
            slots,
        }
        .deserialize(&mut deserializer)
        .ok()?;
        deserializer.end().ok()
    }

    /// Sets `node` and marks what lies under it, so a member named twice
    /// in a document leaves nothing of its first value behind.
    fn set<'a>(&self, node: usize, value: Val<'a>, slots: &mut [Val<'a>]) {
        let under = if value == Val::Map {
            Val::Missing
        } else {
            Val::Unreached
        };
        for &child in &self.paths[node].children {
            self.set(child, Val::Unreached, slots);
            slots[child] = under.clone();
        }
        slots[node] = value;
    }
}

/// A scanned Avro value as decoding and `cel::to_value` would make it;
/// `None` for an array, map or record (not modelled here).
fn scalar_val<'a>(scalar: &Scalar<'a>) -> Option<Val<'a>> {
    Some(match scalar {
        Scalar::Null => Val::Null,
        Scalar::Bool(b) => Val::Bool(*b),
        Scalar::Long(i) => u64::try_from(*i).map_or(Val::Int(*i), Val::UInt),
        Scalar::Double(d) if d.is_finite() => Val::Float(*d),
        Scalar::Double(_) => Val::Null,
        Scalar::Str(s) => Val::Str(s.clone()),
        Scalar::Complex => return None,
    })
}

struct Seed<'f, 's, 'a> {
    filter: &'f FastFilter,
    node: usize,
    slots: &'s mut [Val<'a>],
}

impl<'a> DeserializeSeed<'a> for Seed<'_, '_, 'a> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'a>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'a> Seed<'_, '_, 'a> {
    fn put<E>(self, value: Val<'a>) -> Result<(), E> {
        self.filter.set(self.node, value, self.slots);
        Ok(())
    }
}

impl<'a> Visitor<'a> for Seed<'_, '_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.put(Val::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.put(Val::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.put(Val::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.put(Val::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'a str) -> Result<(), E> {
        self.put(Val::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.put(Val::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.put(Val::Null)
    }

    fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.put(Val::List)
    }

    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<(), A::Error> {
        let Seed {
            filter,
            node,
            slots,
        } = self;
        filter.set(node, Val::Map, slots);
        while let Some(child) = map.next_key_seed(MemberOf(filter, node))? {
            match child {
                Some(child) => map.next_value_seed(Seed {
                    filter,
                    node: child,
                    slots: &mut *slots,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A member's name, looked up among the node's read children.
struct MemberOf<'f>(&'f FastFilter, usize);

impl<'de> DeserializeSeed<'de> for MemberOf<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for MemberOf<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.0.member(self.1, v))
    }
}
