//! A JSON object as a template sees it, read on access: converting a whole
//! event and two table rows into template values for every alert cost more
//! than rendering the few fields a template shows.

use std::ptr::NonNull;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr};
use minijinja::Value as JinjaValue;
use serde_json::{Map, Value as Json};

/// An object inside the JSON tree `root`. The tree is shared, so a nested
/// object costs a pointer, not a copy; a member is found in its own object
/// (walking a path of names from the root on every access, and cloning
/// that path for every nested object, cost more than the rest of a render).
#[derive(Debug)]
struct JsonObject {
    /// Keeps `members` alive and unchanged: it owns the tree `members`
    /// points into, and a tree behind an `Arc` this holds a count of is
    /// never mutated (`Arc::get_mut` needs the only count, `make_mut`
    /// copies).
    root: Arc<Json>,
    members: NonNull<Map<String, Json>>,
}

// SAFETY: `members` is a shared borrow of data `root` owns and never
// changes (see the field); `Json` is `Send` and `Sync`, so sharing or
// sending that borrow with its owner is as safe as sharing `&Json`.
unsafe impl Send for JsonObject {}
// SAFETY: as for `Send`.
unsafe impl Sync for JsonObject {}

impl JsonObject {
    fn members(&self) -> &Map<String, Json> {
        // SAFETY: points into `self.root`, alive and unchanged while
        // `self` is (see the field).
        unsafe { self.members.as_ref() }
    }
}

/// `value` (inside the tree `root`) as a template value: scalars directly,
/// objects as lazy views, arrays converted (rare in records).
fn to_jinja(root: &Arc<Json>, value: &Json) -> JinjaValue {
    match value {
        Json::Null => JinjaValue::from(()),
        Json::Bool(b) => JinjaValue::from(*b),
        Json::String(s) => JinjaValue::from(s.as_str()),
        Json::Object(members) => JinjaValue::from_object(JsonObject {
            root: root.clone(),
            members: NonNull::from(members),
        }),
        // Numbers as `from_serialize` makes them (serde_json serializes a
        // number as u64, i64 or f64, in that order), without a serializer.
        Json::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => JinjaValue::from(u),
            (None, Some(i)) => JinjaValue::from(i),
            (None, None) => JinjaValue::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        // Arrays as `from_serialize` makes them.
        Json::Array(_) => JinjaValue::from_serialize(value),
    }
}

/// The template value of a shared JSON value, without converting it.
pub fn lazy(root: Arc<Json>) -> JinjaValue {
    to_jinja(&root, &root)
}

/// A member of the tree `root` as [`lazy`]'s views hand it out.
pub fn member(root: &Arc<Json>, value: &Json) -> JinjaValue {
    to_jinja(root, value)
}

/// The view of `members`, an object inside the tree `root`.
pub fn object(root: &Arc<Json>, members: &Map<String, Json>) -> JinjaValue {
    JinjaValue::from_object(JsonObject {
        root: root.clone(),
        members: NonNull::from(members),
    })
}

/// The tree and members a view reads, when `value` is one.
pub fn object_of(value: &JinjaValue) -> Option<(&Arc<Json>, &Map<String, Json>)> {
    let view = value.downcast_object_ref::<JsonObject>()?;
    Some((&view.root, view.members()))
}

impl Object for JsonObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &JinjaValue) -> Option<JinjaValue> {
        self.get_value_by_str(key.as_str()?)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<JinjaValue> {
        let value = self.members().get(key)?;
        Some(to_jinja(&self.root, value))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let keys: Vec<JinjaValue> = self
            .members()
            .keys()
            .map(|k| JinjaValue::from(k.as_str()))
            .collect();
        Enumerator::Values(keys)
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.members().len())
    }
}

#[cfg(test)]
mod tests {
    use minijinja::Environment;
    use serde_json::json;

    use super::*;

    /// Every template renders the same with the lazy view as with the
    /// converted value.
    #[test]
    fn lazy_values_render_as_converted_ones() {
        let event = json!({"s": "text <b>", "n": 5, "neg": -2, "f": 1.5, "null": null, "t": true,
            "o": {"a": {"b": "deep"}, "l": [1, "two", {"x": 1}], "e": {}},
            "empty": {}, "big": 18446744073709551615_u64, "min": -9223372036854775808_i64,
            "e3": 1e3});
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let templates = [
            "{{ e.s }} {{ e.n + 1 }} {{ e.neg }} {{ e.f }} {{ e.null }} {{ e.t }}",
            "{{ e.o.a.b }} {{ e.o.l[1] }} {{ e.o.l[2].x }} {{ e.o.l | length }}",
            "{{ e.o.a }} {{ e.o }}",
            "{{ e.o | tojson }} {{ e | tojson }}",
            "{{ e.missing | default('d') }} {{ e.o.a.missing | default('m') }}",
            "{% if e.empty %}y{% else %}n{% endif %}{% if e.o %}y{% endif %}{% if e.null %}y{% else %}n{% endif %}",
            "{% for k in e.o %}{{ k }},{% endfor %}{% for k, v in e.o.a | items %}{{ k }}={{ v }}{% endfor %}",
            "{{ e.o | length }} {{ e.o.a is mapping }} {{ e.s is string }} {{ e.null or 'x' }}",
            "{{ e.o.a == {'b': 'deep'} }} {{ e.o.e | length }} {{ 'a' in e.o }}",
            "{{ e.big }} {{ e.min }} {{ e.e3 }} {{ e.n / 2 }} {{ e.n is integer }} {{ e.f is float }} {{ e.e3 is float }} {{ e.big - 1 }}",
        ];
        let root = Arc::new(event.clone());
        for source in templates {
            let template = env.template_from_str(source).unwrap();
            let converted = template
                .render(minijinja::context! { e => JinjaValue::from_serialize(&event) })
                .unwrap();
            let lazy = template
                .render(minijinja::context! { e => lazy(root.clone()) })
                .unwrap();
            assert_eq!(lazy, converted, "{source}");
        }
        // A strict undefined still fails the same way.
        let template = env.template_from_str("{{ e.o.missing }}").unwrap();
        assert!(template
            .render(minijinja::context! { e => lazy(root) })
            .is_err());
    }
}
