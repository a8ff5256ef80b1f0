//! CEL is handed only the fields its programs read: `suppress` (evaluated
//! after the joins) is one of those programs, so the fields it alone reads
//! must reach it.

use serde_json::json;

use super::tests::{config_dir, emitted, event, source, tables};
use super::*;

const NOW: i64 = 1_800_000_000_000;

fn pipeline(suppress: Option<&str>) -> Pipeline {
    let suppress = suppress
        .map(|s| format!("suppress = '''{s}'''\n"))
        .unwrap_or_default();
    let toml_text = format!(
        r#"
        input = "in"
        output = "out"
        json_fields = ["data"]
        filter = 'event.data.labels.connector_old_status == "Provisioning"'
        joins = [{{ name = "assignment", table = "csdr_assignment", key = "key", kind = "inner" }}]
        {suppress}
        [message]
        alert_id = "a-{{{{ key }}}}"
        channel = "C1"
        text = "{{{{ event.data.connector_name }}}}"
        blocks = '[]'
        "#
    );
    let settings: PipelineSettings = toml::from_str(&toml_text).unwrap();
    Pipeline::compile("p", &settings, &config_dir()).unwrap()
}

#[test]
fn suppress_sees_event_and_join_fields_that_no_filter_or_key_reads() {
    // Neither the filter nor the join key reads `failure_reason`,
    // `eventType`, the key or `assignment.org_name`.
    let p = pipeline(Some(
        r#"event.data.failure_reason.startsWith("auth") && event.eventType == "connector-failure"
           && key == "org-1" && assignment.org_name == "Acme""#,
    ));
    let key = json!("org-1");
    assert_eq!(
        p.apply_at(&source(&key), &event("Provisioning"), &tables(), NOW),
        Verdict::Suppressed
    );
    // Each field decides: change one and the alert is sent.
    let mut other_reason = event("Provisioning");
    let mut data: Json = serde_json::from_str(other_reason["data"].as_str().unwrap()).unwrap();
    data["failure_reason"] = json!("quota exceeded");
    other_reason["data"] = json!(data.to_string());
    let msg = emitted(p.apply_at(&source(&key), &other_reason, &tables(), NOW));
    assert_eq!(msg.text, "orders-sink");
    let mut other_type = event("Provisioning");
    other_type["eventType"] = json!("connector-deleted");
    emitted(p.apply_at(&source(&key), &other_type, &tables(), NOW));
    // org-2's assignment has no org_name.
    emitted(p.apply_at(
        &source(&json!("org-2")),
        &event("Provisioning"),
        &tables(),
        NOW,
    ));
    // The filter still runs first.
    assert_eq!(
        p.apply_at(&source(&key), &event("Running"), &tables(), NOW),
        Verdict::Filtered
    );
    // Without suppress the same record is sent.
    let msg =
        emitted(pipeline(None).apply_at(&source(&key), &event("Provisioning"), &tables(), NOW));
    assert_eq!(msg.alert_id, "a-org-1");
}

#[test]
fn suppress_alone_gets_the_record_without_a_filter_or_cel_join() {
    let settings: PipelineSettings = toml::from_str(
        r#"
        input = "in"
        output = "out"
        json_fields = ["data"]
        suppress = 'event.data.labels.connector_new_status == "Failed"'
        [message]
        alert_id = "a-{{ key }}"
        channel = "C1"
        text = "t"
        blocks = '[]'
        "#,
    )
    .unwrap();
    let p = Pipeline::compile("p", &settings, &config_dir()).unwrap();
    assert_eq!(
        p.apply_at(
            &source(&json!("org-1")),
            &event("Provisioning"),
            &tables(),
            NOW
        ),
        Verdict::Suppressed
    );
}
