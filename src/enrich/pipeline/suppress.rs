//! `suppress`: a per-pipeline CEL expression evaluated after the joins;
//! true means the record is not emitted (it is counted as `suppressed`, its
//! offset committed like any other, nothing dead-lettered). It reads what
//! the filter reads (`event`, `key`, `topic`), every join by name, `now`
//! (wall-clock epoch milliseconds, an int like the Avro `timestamp-millis`
//! fields of table rows, so `state.snoozedUntil > now` compares directly),
//! `alert_id` and `status` (the rendered `message.alert_id` and
//! `message.status`).

use std::collections::HashSet;

use cel::{Context as CelContext, Env as CelEnv, Program, Value as CelValue};

use super::RecordError;
use crate::config::ConfigError;

/// The variable holding the time of evaluation.
pub(super) const NOW: &str = "now";

pub(super) struct Suppress {
    program: Program,
    /// The variables the expression reads, found once: walking the
    /// expression for them on every record cost more than evaluating it.
    variables: HashSet<String>,
}

impl Suppress {
    pub fn compile(
        pipeline: &str,
        source: &str,
        cel_env: &CelEnv,
    ) -> Result<Suppress, ConfigError> {
        let program = cel_env.compile(source).map_err(|e| {
            ConfigError::invalid(
                format!("enrich.pipelines.{pipeline}.suppress"),
                format!("invalid CEL expression: {e}"),
            )
        })?;
        let variables = program
            .references()
            .variables()
            .into_iter()
            .map(str::to_owned)
            .collect();
        Ok(Suppress { program, variables })
    }

    /// The compiled expression (for what it reads of the record).
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Whether the expression reads the variable `name` (so it must be
    /// computed and bound before [`Suppress::decide`]).
    pub fn reads(&self, name: &str) -> bool {
        self.variables.contains(name)
    }

    /// True: do not emit. Anything but a boolean is the record's error, as
    /// for the filter: a suppress rule that cannot decide must not silently
    /// drop or send.
    pub fn decide(&self, context: &CelContext) -> Result<bool, RecordError> {
        match self.program.execute(context) {
            Ok(CelValue::Bool(suppressed)) => Ok(suppressed),
            Ok(other) => Err(RecordError::Suppress(format!(
                "returned {other:?}, not a boolean"
            ))),
            Err(e) => Err(RecordError::Suppress(e.to_string())),
        }
    }
}

/// Wall-clock time in epoch milliseconds, the unit of `now`.
pub(super) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use serde_json::json;

    fn decide(source: &str, vars: serde_json::Value) -> Result<bool, RecordError> {
        let env = Arc::new(CelEnv::stdlib());
        let suppress = Suppress::compile("p", source, &env).unwrap();
        let mut context = CelContext::with_env(env);
        if let serde_json::Value::Object(vars) = vars {
            for (name, value) in vars {
                context.add_variable_from_value(name, cel::to_value(&value).unwrap());
            }
        }
        suppress.decide(&context)
    }

    const SNOOZED: &str = r#"status == "firing" && state != null && state.state == "snoozed"
        && state.snoozedUntil != null && state.snoozedUntil > now"#;

    #[test]
    fn snoozed_until_compares_with_now_in_millis() {
        let state = |until: serde_json::Value| json!({"state": "snoozed", "snoozedUntil": until});
        let vars = |status: &str, state: serde_json::Value| json!({"status": status, "state": state, "now": 1_700_000_000_000i64});
        assert_eq!(
            decide(SNOOZED, vars("firing", state(json!(1_700_000_000_001i64)))),
            Ok(true)
        );
        assert_eq!(
            decide(SNOOZED, vars("firing", state(json!(1_700_000_000_000i64)))),
            Ok(false)
        );
        assert_eq!(
            decide(
                SNOOZED,
                vars("resolved", state(json!(1_800_000_000_000i64)))
            ),
            Ok(false)
        );
        assert_eq!(
            decide(SNOOZED, vars("firing", state(json!(null)))),
            Ok(false)
        );
        assert_eq!(
            decide(SNOOZED, vars("firing", json!(null))),
            Ok(false),
            "a left-join miss"
        );
        assert_eq!(
            decide(
                SNOOZED,
                vars(
                    "firing",
                    json!({"state": "acknowledged", "snoozedUntil": null})
                )
            ),
            Ok(false)
        );
    }

    #[test]
    fn a_result_that_is_not_a_boolean_or_an_error_is_the_records_error() {
        let err = decide("event.missing.field", json!({"event": {}})).unwrap_err();
        assert_eq!(err.stage(), "suppress");
        assert!(err.to_string().starts_with("suppress failed: "), "{err}");
        assert_eq!(
            decide("now - 1", json!({"now": -5})),
            Err(RecordError::Suppress(
                "returned Int(-6), not a boolean".into()
            ))
        );
    }

    #[test]
    fn compile_errors_name_the_pipeline_and_reads_are_known() {
        let env = CelEnv::stdlib();
        let err = Suppress::compile("p", "now >", &env)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("`enrich.pipelines.p.suppress`: invalid CEL expression"),
            "{err}"
        );
        let suppress = Suppress::compile("p", SNOOZED, &env).unwrap();
        for name in ["status", "state", "now"] {
            assert!(suppress.reads(name), "{name}");
        }
        assert!(!suppress.reads("alert_id"));
    }

    #[test]
    fn now_is_epoch_millis() {
        // 2026-01-01 and 2100-01-01: milliseconds, not seconds or micros.
        let now = now_millis();
        assert!(
            (1_767_225_600_000..4_102_444_800_000).contains(&now),
            "{now}"
        );
    }
}
