//! The templates' context for one record as one object whose members are
//! found by name, instead of a template map built for every render: the
//! map cost a `Value` key per member and per lookup, and every variable a
//! template reads is a lookup.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr};
use minijinja::Value as JinjaValue;

use crate::enrich::config::RECORD_NAMES as BASE;

/// What the templates see of a record: the record, the joins so far (in
/// the pipeline's order), the pipeline's constants, and `alert_id` and
/// `status` when set. A later member hides an earlier one of the same name
/// (join names may not be reserved ones: the configuration refuses them).
#[derive(Debug, Clone)]
pub(super) struct RenderContext {
    /// `key`, `event`, `topic`, `partition`, `offset`, `timestamp`,
    /// `pipeline`, `vars`, in [`BASE`]'s order.
    base: [JinjaValue; 8],
    /// The pipeline's join names; `joins` holds the first joins' values.
    join_names: Arc<[String]>,
    joins: Vec<JinjaValue>,
    alert_id: Option<JinjaValue>,
    status: Option<JinjaValue>,
}

impl RenderContext {
    pub fn new(base: [JinjaValue; 8], join_names: Arc<[String]>) -> Arc<RenderContext> {
        Arc::new(RenderContext {
            base,
            joins: Vec::with_capacity(join_names.len()),
            join_names,
            alert_id: None,
            status: None,
        })
    }

    /// The next join's value (`none` for no row).
    pub fn push_join(self: &mut Arc<Self>, value: JinjaValue) {
        Arc::make_mut(self).joins.push(value);
    }

    pub fn set_alert_id(self: &mut Arc<Self>, id: Option<&str>) {
        Arc::make_mut(self).alert_id = id.map(JinjaValue::from);
    }

    pub fn set_status(self: &mut Arc<Self>, status: &str) {
        Arc::make_mut(self).status = Some(JinjaValue::from(status));
    }

    /// The context as a template value; shares this one (a render drops
    /// its handle when it ends, so a later change copies nothing).
    pub fn value(self: &Arc<Self>) -> JinjaValue {
        JinjaValue::from_dyn_object(self.clone())
    }

    /// The member `name`, as a template's lookup finds it.
    pub fn get(&self, name: &str) -> Option<&JinjaValue> {
        match name {
            "status" if self.status.is_some() => return self.status.as_ref(),
            "alert_id" if self.alert_id.is_some() => return self.alert_id.as_ref(),
            _ => {}
        }
        let joins = self.join_names.iter().zip(&self.joins).rev();
        for (join, value) in joins {
            if join == name {
                return Some(value);
            }
        }
        let at = BASE.iter().position(|b| *b == name)?;
        Some(&self.base[at])
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        let joins = self.join_names[..self.joins.len()].iter();
        BASE.into_iter()
            .chain(joins.map(String::as_str))
            .chain(self.alert_id.as_ref().map(|_| "alert_id"))
            .chain(self.status.as_ref().map(|_| "status"))
    }
}

impl Object for RenderContext {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &JinjaValue) -> Option<JinjaValue> {
        self.get_value_by_str(key.as_str()?)
    }

    fn get_value_by_str(self: &Arc<Self>, name: &str) -> Option<JinjaValue> {
        self.get(name).cloned()
    }

    /// The names in order, each once, as the map this replaces listed them.
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let mut names: Vec<&str> = self.names().collect();
        names.sort_unstable();
        names.dedup();
        Enumerator::Values(names.into_iter().map(JinjaValue::from).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use minijinja::Environment;

    use super::*;

    /// Renders as the map of the same members did, lookups, iteration,
    /// missing names and hiding included.
    #[test]
    fn renders_as_the_map_it_replaces() {
        let base = || BASE.map(|name| JinjaValue::from(format!("<{name}>")));
        let names: Arc<[String]> = vec!["a".to_owned(), "b".to_owned(), "a".to_owned()].into();
        let mut context = RenderContext::new(base(), names);
        context.push_join(JinjaValue::from(1));
        context.push_join(JinjaValue::from(()));
        context.push_join(JinjaValue::from(3));
        context.set_alert_id(Some("id-1"));
        context.set_status("firing");
        let mut map: BTreeMap<&str, JinjaValue> = BASE.into_iter().zip(base()).collect();
        for (name, value) in [("a", 1.into()), ("b", ().into()), ("a", 3.into())] {
            map.insert(name, value);
        }
        map.insert("alert_id", "id-1".into());
        map.insert("status", "firing".into());
        let map: JinjaValue = map.into_iter().collect();
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let sources = [
            "{{ key }} {{ event }} {{ topic }} {{ partition }} {{ offset }} {{ timestamp }} {{ pipeline }} {{ vars }}",
            "{{ a }} {{ b }} {{ b is none }} {{ alert_id }} {{ status }}",
            "{{ missing | default('d') }} {{ c is defined }}",
        ];
        for source in sources {
            let template = env.template_from_str(source).unwrap();
            assert_eq!(
                template.render(context.value()).unwrap(),
                template.render(&map).unwrap(),
                "{source}"
            );
        }
        let strict = env.template_from_str("{{ missing }}").unwrap();
        assert!(strict.render(context.value()).is_err());
        let keys = |v: &JinjaValue| {
            v.try_iter()
                .unwrap()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&context.value()), keys(&map));
        // Without alert_id and status, before the joins: the base alone.
        let fresh = RenderContext::new(base(), Arc::from(Vec::new()));
        let template = env
            .template_from_str("{{ status is defined }}{{ alert_id is defined }}")
            .unwrap();
        assert_eq!(template.render(fresh.value()).unwrap(), "FalseFalse");
    }
}
