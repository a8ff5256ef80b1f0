//! Join keys: a CEL expression (`key`) or a template (`key_template`),
//! either of which may read `alert_id`, the alert id the pipeline renders
//! for the record, so a table keyed by alert id (`alert-state`) is joined
//! with `key = "alert_id"`.
//!
//! A key is computed before later joins and before `status`, so a key that
//! reads them (directly, or through `message.alert_id`) is refused at
//! compile time instead of failing on every record.

use std::collections::HashSet;

use cel::common::ast::Expr;
use cel::{Env as CelEnv, IdedExpr, Program, Value as CelValue};
use minijinja::Environment;
use serde_json::Value as Json;

use super::interned::intern;
use super::into_key_text;
use crate::config::{ConfigError, JoinKeySource, JoinSettings};

/// The variable a join key or `suppress` reads for the rendered alert id.
pub(super) const ALERT_ID: &str = "alert_id";
/// Rendered after every join (it may read them), so no key can read it.
const STATUS: &str = "status";

pub(super) enum KeyExpr {
    Cel(Program),
    /// The name of the template in the pipeline's environment.
    Template(String),
}

pub(super) struct JoinKey {
    pub expr: KeyExpr,
    /// For a CEL key that is a variable or a chain of member selections.
    pub path: Option<KeyPath>,
    /// Top-level names the key reads (CEL variables or template variables;
    /// a comprehension's own variables may appear too).
    reads: HashSet<String>,
}

/// A CEL key that only selects members (`key`, `assignment.csdr_email`):
/// where it ends on a JSON string, that string is the value CEL gives it
/// (a JSON string is a CEL string, a member a map lookup), read without
/// the interpreter; anywhere else the interpreter decides.
pub(super) struct KeyPath {
    pub root: String,
    fields: Vec<String>,
}

impl KeyPath {
    fn of(expr: &IdedExpr) -> Option<KeyPath> {
        match &expr.expr {
            Expr::Ident(name) => Some(KeyPath {
                root: name.clone(),
                fields: Vec::new(),
            }),
            Expr::Select(select) if !select.test => {
                let mut path = KeyPath::of(&select.operand)?;
                path.fields.push(select.field.clone());
                Some(path)
            }
            _ => None,
        }
    }

    /// The string at the end of the path from `root`, the JSON the root
    /// variable is bound from; `None` when it is not one.
    pub fn string_in<'j>(&self, root: &'j Json) -> Option<&'j str> {
        let mut at = root;
        for field in &self.fields {
            at = at.as_object()?.get(field)?;
        }
        at.as_str()
    }

    /// Whether the path is the variable itself.
    pub fn is_root(&self) -> bool {
        self.fields.is_empty()
    }
}

impl JoinKey {
    pub fn reads(&self, name: &str) -> bool {
        self.reads.contains(name)
    }

    /// The CEL program, for a key that is one (not a template).
    pub fn cel_program(&self) -> Option<&Program> {
        match &self.expr {
            KeyExpr::Cel(program) => Some(program),
            KeyExpr::Template(_) => None,
        }
    }

    pub fn reads_alert_id(&self) -> bool {
        self.reads(ALERT_ID)
    }
}

/// The name a join's key template is stored under in the pipeline's
/// template environment (never one of the message templates').
fn template_name(index: usize) -> String {
    format!("joins[{index}].key_template")
}

/// Compiles join `index`'s key; a template is added to `templates`.
pub(super) fn compile(
    pipeline: &str,
    index: usize,
    join: &JoinSettings,
    cel_env: &CelEnv,
    templates: &mut Environment<'static>,
) -> Result<JoinKey, ConfigError> {
    let config_key = |k: &str| format!("enrich.pipelines.{pipeline}.joins[{index}].{k}");
    match join.key_source(pipeline, index)? {
        JoinKeySource::Cel(source) => {
            let program = cel_env.compile(source).map_err(|e| {
                ConfigError::invalid(config_key("key"), format!("invalid CEL expression: {e}"))
            })?;
            let reads = program
                .references()
                .variables()
                .into_iter()
                .map(str::to_owned)
                .collect();
            Ok(JoinKey {
                path: KeyPath::of(program.expression()),
                expr: KeyExpr::Cel(program),
                reads,
            })
        }
        JoinKeySource::Template(source) => {
            let name = template_name(index);
            templates
                .add_template(intern(&name), intern(source))
                .map_err(|e| {
                    ConfigError::invalid(
                        config_key("key_template"),
                        format!("invalid template: {e:#}"),
                    )
                })?;
            let reads = templates
                .get_template(&name)
                .map_err(|e| ConfigError::invalid(config_key("key_template"), format!("{e:#}")))?
                .undeclared_variables(false);
            Ok(JoinKey {
                expr: KeyExpr::Template(name),
                path: None,
                reads,
            })
        }
    }
}

/// Refuses keys that read what is not known yet when they are computed:
/// `status`, their own join or a later one — directly, or through
/// `alert_id` when `message.alert_id` (whose reads are `alert_id_reads`)
/// reads it.
pub(super) fn check_order(
    pipeline: &str,
    joins: &[(&str, &JoinKey, bool)],
    alert_id_reads: &HashSet<String>,
) -> Result<(), ConfigError> {
    for (index, (join, key, is_template)) in joins.iter().enumerate() {
        let config_key = format!(
            "enrich.pipelines.{pipeline}.joins[{index}].{}",
            if *is_template { "key_template" } else { "key" }
        );
        let unknown_yet = |name: &str| {
            name == STATUS || joins[index..].iter().any(|(later, _, _)| *later == name)
        };
        let late = |name: &str| {
            if name == STATUS {
                "status (rendered after every join)".to_owned()
            } else if name == *join {
                format!("join {name:?} itself")
            } else {
                format!("join {name:?}, which comes later")
            }
        };
        let mut direct: Vec<&String> = key.reads.iter().filter(|n| unknown_yet(n)).collect();
        direct.sort();
        if let Some(name) = direct.first() {
            return Err(ConfigError::invalid(
                config_key,
                format!("join {join:?}: the key reads {}", late(name)),
            ));
        }
        if key.reads_alert_id() {
            let mut through: Vec<&String> =
                alert_id_reads.iter().filter(|n| unknown_yet(n)).collect();
            through.sort();
            if let Some(name) = through.first() {
                return Err(ConfigError::invalid(
                    config_key,
                    format!(
                        "join {join:?}: the key reads alert_id, and message.alert_id reads {}",
                        late(name)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The table key text for a CEL key's value; `None` (no lookup) for null.
pub(super) fn cel_key_text(value: CelValue) -> Result<Option<String>, String> {
    match value {
        CelValue::String(s) => Ok(Some(s.to_string())),
        CelValue::Int(i) => Ok(Some(i.to_string())),
        CelValue::UInt(i) => Ok(Some(i.to_string())),
        CelValue::Null => Ok(None),
        // A map or list (e.g. `{'org': event.org_id}`) matches a table keyed
        // by a JSON or Avro record with those fields.
        other => match other.json() {
            Ok(json) => Ok(Some(into_key_text(json))),
            Err(e) => Err(format!("returned {other:?}, which is not a table key: {e}")),
        },
    }
}

/// The table key text for a rendered key template: the text itself, as a
/// string key is; surrounding whitespace is not content, and an empty
/// result is no key (like CEL's `null`: no lookup).
pub(super) fn template_key_text(rendered: &str) -> Option<String> {
    let trimmed = rendered.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Where a path key reads a string, it is the key CEL computes from
    /// the same JSON; anything but member selections is no path.
    #[test]
    fn a_path_key_reads_what_cel_computes() {
        let env = std::sync::Arc::new(CelEnv::stdlib());
        let values = [
            json!("s"),
            json!(""),
            json!("with \"quotes\" é"),
            json!(1),
            json!(null),
            json!({"a": "x"}),
            json!({"a": {"b": "y"}}),
            json!({"a": {"b": "y", "c": 1}, "d": "e"}),
            json!({"a": 1}),
            json!({"b": "z"}),
            json!([1]),
            json!({"a": {"b": null}}),
            json!({"a": ["b"]}),
        ];
        let mut read = 0;
        for source in ["v", "v.a", "v.a.b", " v . a "] {
            let program = env.compile(source).unwrap();
            let path = KeyPath::of(program.expression()).expect(source);
            assert_eq!(path.root, "v");
            for value in &values {
                let Some(fast) = path.string_in(value) else {
                    continue;
                };
                read += 1;
                let mut cel = cel::Context::with_env(env.clone());
                cel.add_variable_from_value("v", cel::to_value(value).unwrap());
                let by_cel = cel_key_text(program.execute(&cel).unwrap());
                assert_eq!(by_cel, Ok(Some(fast.to_owned())), "{source} on {value}");
            }
        }
        assert!(read >= 5);
        for source in [
            "v == 'a'",
            "has(v.a)",
            "v['a']",
            "'v'",
            "v.a + 'x'",
            "string(v)",
        ] {
            let program = env.compile(source).unwrap();
            assert!(KeyPath::of(program.expression()).is_none(), "{source}");
        }
    }

    fn join(toml_text: &str) -> JoinSettings {
        toml::from_str(&format!(
            "name = \"j\"\ntable = \"t\"\nkind = \"left\"\n{toml_text}"
        ))
        .unwrap()
    }

    fn compiled(toml_text: &str) -> Result<JoinKey, ConfigError> {
        let mut templates = Environment::new();
        compile("p", 0, &join(toml_text), &CelEnv::stdlib(), &mut templates)
    }

    fn names(names: &[&str]) -> HashSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn a_key_is_cel_or_a_template_and_says_what_it_reads() {
        let key = compiled(r#"key = "alert_id""#).unwrap();
        assert!(matches!(key.expr, KeyExpr::Cel(_)));
        assert!(key.reads_alert_id());
        let key = compiled(r#"key_template = "{{ key }}-{{ assignment.org_id }}""#).unwrap();
        assert!(matches!(&key.expr, KeyExpr::Template(name) if name == "joins[0].key_template"));
        assert_eq!(key.reads, names(&["key", "assignment"]));
        assert!(!key.reads_alert_id());
    }

    #[test]
    fn compile_errors_name_the_pipeline_and_the_join() {
        let err = compiled(r#"key = "event.a ==""#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("`enrich.pipelines.p.joins[0].key`: invalid CEL expression"),
            "{err}"
        );
        let err = compiled(r#"key_template = "{{ key""#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("`enrich.pipelines.p.joins[0].key_template`: invalid template"),
            "{err}"
        );
        for both_or_neither in ["", "key = \"key\"\nkey_template = \"{{ key }}\""] {
            let err = compiled(both_or_neither)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert_eq!(
                err,
                "`enrich.pipelines.p.joins[0]`: join \"j\": set exactly one of key (CEL) and key_template"
            );
        }
    }

    fn order(keys: &[(&str, &str)], alert_id_reads: &[&str]) -> Result<(), String> {
        let mut templates = Environment::new();
        let compiled: Vec<(String, JoinKey, bool)> = keys
            .iter()
            .enumerate()
            .map(|(i, (name, key))| {
                let mut settings = join(key);
                settings.name = (*name).to_owned();
                let is_template = settings.key_template.is_some();
                let key = compile("p", i, &settings, &CelEnv::stdlib(), &mut templates).unwrap();
                ((*name).to_owned(), key, is_template)
            })
            .collect();
        let joins: Vec<(&str, &JoinKey, bool)> = compiled
            .iter()
            .map(|(name, key, template)| (name.as_str(), key, *template))
            .collect();
        check_order("p", &joins, &names(alert_id_reads)).map_err(|e| e.to_string())
    }

    #[test]
    fn keys_read_only_what_is_known_before_their_join() {
        let fine = [
            ("assignment", r#"key = "key""#),
            ("user", r#"key = "assignment.csdr_email""#),
            ("state", r#"key = "alert_id""#),
            (
                "other",
                r#"key_template = "{{ alert_id }}/{{ user.slack_user_id }}""#,
            ),
        ];
        assert_eq!(order(&fine, &["key", "event", "assignment"]), Ok(()));
        assert_eq!(
            order(&fine[..2], &["status"]),
            Ok(()),
            "alert_id's reads matter only to keys that read it"
        );
        assert_eq!(
            order(&[("a", r#"key = "b.x""#), ("b", r#"key = "key""#)], &[]),
            Err("`enrich.pipelines.p.joins[0].key`: join \"a\": the key reads join \"b\", which comes later".into())
        );
        assert_eq!(
            order(&[("a", r#"key_template = "{{ a.x }}""#)], &[]),
            Err("`enrich.pipelines.p.joins[0].key_template`: join \"a\": the key reads join \"a\" itself".into())
        );
        assert_eq!(
            order(&[("a", r#"key = "status""#)], &[]),
            Err("`enrich.pipelines.p.joins[0].key`: join \"a\": the key reads status (rendered after every join)".into())
        );
        assert_eq!(
            order(&fine, &["key", "other"]),
            Err("`enrich.pipelines.p.joins[2].key`: join \"state\": the key reads alert_id, and message.alert_id reads join \"other\", which comes later".into())
        );
        assert_eq!(
            order(&[("state", r#"key = "alert_id""#)], &["status"]),
            Err("`enrich.pipelines.p.joins[0].key`: join \"state\": the key reads alert_id, and message.alert_id reads status (rendered after every join)".into())
        );
    }

    #[test]
    fn key_values_become_the_tables_key_text() {
        assert_eq!(
            cel_key_text(CelValue::from("org-1")),
            Ok(Some("org-1".into()))
        );
        assert_eq!(cel_key_text(CelValue::Int(-7)), Ok(Some("-7".into())));
        assert_eq!(cel_key_text(CelValue::UInt(7)), Ok(Some("7".into())));
        assert_eq!(cel_key_text(CelValue::Null), Ok(None));
        let map = cel::to_value(json!({"region": "eu", "org": "o"})).unwrap();
        assert_eq!(
            cel_key_text(map),
            Ok(Some(r#"{"org":"o","region":"eu"}"#.into()))
        );
        assert_eq!(template_key_text("  a-1 \n"), Some("a-1".into()));
        assert_eq!(template_key_text(" \n"), None);
    }
}
