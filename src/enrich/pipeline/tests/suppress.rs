//! The alert-state join and suppress expressions.

use super::*;

const NOW: i64 = 1_800_000_000_000;
const ALERT: &str = "org-1-env-9-lcc-42-connector-failure";

/// The reference tables plus `ALERT`'s state in `alert_state`.
fn tables_with_state(state: Json) -> Tables {
    let mut tables = tables();
    tables
        .0
        .insert(("alert_state".into(), ALERT.into()), Arc::new(state));
    tables
}

fn recovery() -> Json {
    let mut event = event("Failed");
    let data = json!({"env_id": "env-9", "connector_id": "lcc-42", "connector_name": "orders-sink",
                      "failure_reason": "",
                      "labels": {"connector_old_status": "Failed", "connector_new_status": "Running"}});
    event["data"] = Json::String(data.to_string());
    event
}

#[test]
fn the_shipped_pipeline_suppresses_firing_records_of_snoozed_alerts_only() {
    let p = reference_pipeline();
    let key = json!("org-1");
    let apply = |event: &Json, tables: &Tables| p.apply_at(&source(&key), event, tables, NOW);
    let snoozed =
        |until: Json| json!({"alertId": ALERT, "state": "snoozed", "snoozedUntil": until});
    let later = tables_with_state(snoozed(json!(NOW + 1)));
    assert_eq!(apply(&event("Provisioning"), &later), Verdict::Suppressed);
    let resolved = emitted(apply(&recovery(), &later));
    assert_eq!(
        (resolved.alert_id.as_str(), resolved.status),
        (ALERT, AlertStatus::Resolved)
    );
    for state in [
        snoozed(json!(NOW)),
        snoozed(json!(null)),
        json!({"alertId": ALERT, "state": "acknowledged", "snoozedUntil": null}),
        json!({"alertId": ALERT, "state": "resolved", "snoozedUntil": null}),
    ] {
        let msg = emitted(apply(
            &event("Provisioning"),
            &tables_with_state(state.clone()),
        ));
        assert_eq!(
            (msg.alert_id.as_str(), msg.status),
            (ALERT, AlertStatus::Firing),
            "{state}"
        );
    }
    let msg = emitted(apply(&event("Provisioning"), &tables()));
    assert_eq!(msg.alert_id, ALERT, "no state: a left join");
    // The clock decides: the same snooze is over later.
    let msg = emitted(p.apply_at(&source(&key), &event("Provisioning"), &later, NOW + 1));
    assert_eq!(msg.status, AlertStatus::Firing);
}

fn pipeline_with(joins: &str, suppress: &str) -> Result<Pipeline, ConfigError> {
    let settings: PipelineSettings = toml::from_str(&format!(
        r#"
        input = "in"
        output = "out"
        joins = [{joins}]
        suppress = '{suppress}'
        [message]
        alert_id = "a-{{{{ key }}}}-{{{{ assignment.org_id if assignment else 'none' }}}}"
        channel = "C1"
        text = "{{{{ state.note if state else 'no state' }}}}"
        blocks = '[]'
        "#
    ))
    .unwrap();
    Pipeline::compile("p", &settings, &config_dir())
}

#[test]
fn key_templates_and_alert_id_keys_find_the_row_the_pipeline_renders() {
    let assignment =
        r#"{ name = "assignment", table = "csdr_assignment", key = "key", kind = "left" }"#;
    let mut tables = tables();
    for (key, note) in [
        ("a-org-1-org-1", "one"),
        ("a-org-9-none", "nine"),
        ("org-1/Acme", "tpl"),
    ] {
        tables.0.insert(
            ("states".into(), key.into()),
            Arc::new(json!({"note": note, "mute": note == "nine"})),
        );
    }
    tables.0.insert(
        ("states".into(), String::new()),
        Arc::new(json!({"note": "empty"})),
    );
    let by_alert_id = format!(
        r#"{assignment}, {{ name = "state", table = "states", key = "alert_id", kind = "left" }}"#
    );
    let p = pipeline_with(&by_alert_id, "false").unwrap();
    let text = |p: &Pipeline, key: &str| {
        emitted(p.apply_at(&source(&json!(key)), &json!({}), &tables, NOW)).text
    };
    assert_eq!(text(&p, "org-1"), "one");
    assert_eq!(
        text(&p, "org-9"),
        "nine",
        "alert_id rendered with the left-join miss"
    );
    let by_template = format!(
        r#"{assignment}, {{ name = "state", table = "states", key_template = "{{{{ key }}}}/{{{{ assignment.org_name }}}}", kind = "left" }}"#
    );
    let p = pipeline_with(&by_template, "false").unwrap();
    assert_eq!(text(&p, "org-1"), "tpl");
    // An empty key is no key: a left join binds null, not a lookup of "".
    let empty = format!(
        r#"{assignment}, {{ name = "state", table = "states", key_template = "{{% if false %}}x{{% endif %}}", kind = "left" }}"#
    );
    assert_eq!(
        text(&pipeline_with(&empty, "false").unwrap(), "org-1"),
        "no state"
    );
    // A key template that fails is the record's join error.
    let failing = format!(
        r#"{assignment}, {{ name = "state", table = "states", key_template = "{{{{ event.nope }}}}", kind = "left" }}"#
    );
    match pipeline_with(&failing, "false").unwrap().apply_at(
        &source(&json!("org-1")),
        &json!({}),
        &tables,
        NOW,
    ) {
        Verdict::Reject(e @ RecordError::JoinKey { .. }) => assert_eq!(e.stage(), "join"),
        other => panic!("{other:?}"),
    }
    // suppress sees the joins and alert_id.
    let p = pipeline_with(
        &by_alert_id,
        r#"state != null && state.mute && alert_id == "a-org-9-none""#,
    )
    .unwrap();
    assert_eq!(
        p.apply_at(&source(&json!("org-9")), &json!({}), &tables, NOW),
        Verdict::Suppressed
    );
    assert_eq!(text(&p, "org-1"), "one");
}

#[test]
fn a_suppress_expression_that_cannot_decide_is_the_records_error() {
    let assignment =
        r#"{ name = "assignment", table = "csdr_assignment", key = "key", kind = "left" }"#;
    let p = pipeline_with(assignment, "assignment.org_name").unwrap();
    match p.apply_at(&source(&json!("org-1")), &json!({}), &tables(), NOW) {
        Verdict::Reject(e @ RecordError::Suppress(_)) => {
            assert_eq!(e.stage(), "suppress");
            assert_eq!(
                e.to_string(),
                "suppress failed: returned String(\"Acme\"), not a boolean"
            );
        }
        other => panic!("{other:?}"),
    }
    let err = pipeline_with(assignment, "now >").unwrap_err().to_string();
    assert!(
        err.starts_with("`enrich.pipelines.p.suppress`: invalid CEL expression"),
        "{err}"
    );
}
