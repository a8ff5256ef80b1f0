//! Which parts of its variables a CEL program reads, found once at compile
//! time, so a record hands CEL only those parts: converting a whole event
//! (and parsing whole JSON fields) into CEL values cost more than running a
//! filter that compares three fields.
//!
//! A variable used only through field selections (`event.data.labels.x`,
//! `has(event.data.labels)`) is projected to the selected fields; any other
//! use (`event` itself, `event.data[k]`, `event.data.size()`) hands over
//! the whole subtree it names, so the projection is what the program would
//! have seen everywhere it can look.

use std::collections::BTreeMap;
use std::fmt;

use cel::common::ast::{EntryExpr, Expr};
use cel::objects::{Key, Map as CelMap};
use cel::{IdedExpr, Program, Value as CelValue};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;

/// The part of a value a program reads: all of it, or some members (none:
/// only whether it is there, for `has()`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PathTree {
    whole: bool,
    members: BTreeMap<String, PathTree>,
}

static WHOLE: PathTree = PathTree {
    whole: true,
    members: BTreeMap::new(),
};

impl PathTree {
    fn mark(&mut self, path: &[&str], whole: bool) {
        if self.whole {
            return;
        }
        match path.split_first() {
            None => {
                if whole {
                    self.whole = true;
                    self.members.clear();
                }
            }
            Some((first, rest)) => self
                .members
                .entry((*first).to_owned())
                .or_default()
                .mark(rest, whole),
        }
    }

    fn member(&self, name: &str) -> Option<&PathTree> {
        if self.whole {
            Some(&WHOLE)
        } else {
            self.members.get(name)
        }
    }
}

/// What some programs read of each variable, by variable name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reads(BTreeMap<String, PathTree>);

impl Reads {
    pub fn of<'a>(programs: impl IntoIterator<Item = &'a Program>) -> Reads {
        let mut reads = Reads::default();
        for program in programs {
            reads.visit(program.expression(), &[]);
        }
        reads
    }

    /// What is read of `variable`; `None` when nothing is.
    pub fn get(&self, variable: &str) -> Option<&PathTree> {
        self.0.get(variable)
    }

    /// `shadowed`: comprehension variables in scope, which are not ours.
    fn visit(&mut self, expr: &IdedExpr, shadowed: &[&str]) {
        if let Some((root, path, whole)) = selection(&expr.expr) {
            if !shadowed.contains(&root) {
                self.0
                    .entry(root.to_owned())
                    .or_default()
                    .mark(&path, whole);
            }
            return;
        }
        match &expr.expr {
            Expr::Select(select) => self.visit(&select.operand, shadowed),
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    self.visit(target, shadowed);
                }
                for arg in &call.args {
                    self.visit(arg, shadowed);
                }
            }
            Expr::Comprehension(c) => {
                self.visit(&c.iter_range, shadowed);
                let mut inner = shadowed.to_vec();
                inner.push(c.iter_var.as_str());
                inner.extend(c.iter_var2.as_deref());
                inner.push(c.accu_var.as_str());
                self.visit(&c.accu_init, shadowed);
                for e in [&c.loop_cond, &c.loop_step, &c.result] {
                    self.visit(e, &inner);
                }
            }
            Expr::List(list) => {
                for element in &list.elements {
                    self.visit(element, shadowed);
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(e) = &entry.expr {
                        self.visit(&e.key, shadowed);
                        self.visit(&e.value, shadowed);
                    }
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    match &entry.expr {
                        EntryExpr::StructField(f) => self.visit(&f.value, shadowed),
                        EntryExpr::MapEntry(e) => {
                            self.visit(&e.key, shadowed);
                            self.visit(&e.value, shadowed);
                        }
                    }
                }
            }
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
}

/// `a.b.c` → (`a`, [`b`, `c`], whole); `has(a.b.c)` → (`a`, [`b`, `c`],
/// presence only). `None` for anything that is not such a chain.
fn selection(expr: &Expr) -> Option<(&str, Vec<&str>, bool)> {
    let mut path = Vec::new();
    let mut current = expr;
    let whole = !matches!(expr, Expr::Select(s) if s.test);
    loop {
        match current {
            Expr::Ident(name) => {
                path.reverse();
                return Some((name, path, whole));
            }
            // A presence test inside a chain (`has(a.b).c`) is not a path.
            Expr::Select(select) if !select.test || std::ptr::eq(current, expr) => {
                path.push(select.field.as_str());
                current = &select.operand.expr;
            }
            _ => return None,
        }
    }
}

/// `value` as CEL sees it, limited to `reads`. A member not read is left
/// out; one only tested for presence is `null`.
pub fn project(value: &Json, reads: &PathTree) -> Result<CelValue, String> {
    if reads.whole {
        return cel::to_value(value).map_err(|e| e.to_string());
    }
    match value {
        Json::Object(members) => {
            let mut projected = std::collections::HashMap::with_capacity(reads.members.len());
            for (name, member_reads) in &reads.members {
                if let Some(member) = members.get(name) {
                    projected.insert(
                        Key::from(name.clone()),
                        if member_reads.is_presence() {
                            CelValue::Null
                        } else {
                            project(member, member_reads)?
                        },
                    );
                }
            }
            Ok(CelValue::Map(CelMap::from(projected)))
        }
        // Selecting from anything else fails in CEL as it did on the
        // whole value.
        other => cel::to_value(other).map_err(|e| e.to_string()),
    }
}

/// [`project`] of the JSON document `text`, parsed only as far as `reads`
/// look (the rest is checked, not built).
pub fn project_json_text(text: &str, reads: &PathTree) -> Result<CelValue, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = Projection(reads).deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Checks that `text` is one JSON document without building it.
pub fn check_json_text(text: &str) -> Result<(), serde_json::Error> {
    serde_json::from_str::<IgnoredAny>(text).map(|_| ())
}

#[derive(Debug, PartialEq)]
pub enum ProjectError {
    /// A `json_fields` member is not a JSON document.
    JsonField {
        field: String,
        reason: String,
    },
    Value(String),
}

/// The event as CEL reads it (`None` when no program reads it), with its
/// `json_fields` parsed as far as they are read. Every JSON field is checked
/// whether read or not: a malformed one fails the record before any
/// program runs, as when the fields were parsed whole.
pub fn project_event(
    event: &Json,
    reads: Option<&PathTree>,
    json_fields: &[String],
) -> Result<Option<CelValue>, ProjectError> {
    let Json::Object(members) = event else {
        return reads
            .map(|r| project(event, r))
            .transpose()
            .map_err(ProjectError::Value);
    };
    let is_json_field = |name: &str| json_fields.iter().any(|f| f == name);
    // The reason as parsing the field whole words it (a partial parse
    // names what it expected differently); only paid for a bad record.
    let json_error = |field: &str, text: &str, e: serde_json::Error| ProjectError::JsonField {
        field: field.to_owned(),
        reason: serde_json::from_str::<Json>(text)
            .err()
            .unwrap_or(e)
            .to_string(),
    };
    let mut parsed = Vec::new();
    for field in json_fields {
        if let Some(Json::String(text)) = members.get(field) {
            match reads.and_then(|r| r.member(field)) {
                Some(r) if !r.is_presence() => parsed.push((
                    field.as_str(),
                    project_json_text(text, r).map_err(|e| json_error(field, text, e))?,
                )),
                _ => check_json_text(text).map_err(|e| json_error(field, text, e))?,
            }
        }
    }
    let Some(reads) = reads else {
        return Ok(None);
    };
    let names: Box<dyn Iterator<Item = &String>> = if reads.whole {
        Box::new(members.keys())
    } else {
        Box::new(reads.members.keys())
    };
    let mut projected = std::collections::HashMap::new();
    for name in names {
        let (Some(member), Some(member_reads)) = (members.get(name), reads.member(name)) else {
            continue;
        };
        let value = if member_reads.is_presence() {
            CelValue::Null
        } else if let (true, Json::String(_)) = (is_json_field(name), member) {
            match parsed.iter_mut().find(|(field, _)| *field == name.as_str()) {
                Some((_, value)) => std::mem::replace(value, CelValue::Null),
                None => continue,
            }
        } else {
            project(member, member_reads).map_err(ProjectError::Value)?
        };
        projected.insert(Key::from(name.clone()), value);
    }
    Ok(Some(CelValue::Map(CelMap::from(projected))))
}

impl PathTree {
    fn is_presence(&self) -> bool {
        !self.whole && self.members.is_empty()
    }
}

struct Projection<'t>(&'t PathTree);

impl<'de> DeserializeSeed<'de> for Projection<'_> {
    type Value = CelValue;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<CelValue, D::Error> {
        if self.0.whole {
            let json = <Json as serde::Deserialize>::deserialize(d)?;
            return cel::to_value(&json).map_err(de::Error::custom);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Projection<'_> {
    type Value = CelValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    // Scalars as `cel::to_value` of a `serde_json::Value` makes them.
    fn visit_bool<E>(self, v: bool) -> Result<CelValue, E> {
        Ok(CelValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<CelValue, E> {
        Ok(CelValue::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<CelValue, E> {
        Ok(CelValue::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<CelValue, E> {
        Ok(CelValue::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<CelValue, E> {
        Ok(CelValue::from(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<CelValue, E> {
        Ok(CelValue::from(v))
    }
    fn visit_unit<E>(self) -> Result<CelValue, E> {
        Ok(CelValue::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CelValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Projection(&WHOLE))? {
            items.push(item);
        }
        Ok(CelValue::List(std::sync::Arc::new(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CelValue, A::Error> {
        let mut projected = std::collections::HashMap::with_capacity(self.0.members.len());
        while let Some(found) = map.next_key_seed(MemberName(self.0))? {
            match found {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some((name, reads)) if reads.is_presence() => {
                    map.next_value::<IgnoredAny>()?;
                    projected.insert(Key::from(name.to_owned()), CelValue::Null);
                }
                Some((name, reads)) => {
                    let value = map.next_value_seed(Projection(reads))?;
                    projected.insert(Key::from(name.to_owned()), value);
                }
            }
        }
        Ok(CelValue::Map(CelMap::from(projected)))
    }
}

/// A member's name, looked up among the read ones without copying it.
struct MemberName<'t>(&'t PathTree);

impl<'de, 't> DeserializeSeed<'de> for MemberName<'t> {
    type Value = Option<(&'t str, &'t PathTree)>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 't> Visitor<'de> for MemberName<'t> {
    type Value = Option<(&'t str, &'t PathTree)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self
            .0
            .members
            .get_key_value(v)
            .map(|(name, reads)| (name.as_str(), reads)))
    }
}

#[cfg(test)]
mod tests;
