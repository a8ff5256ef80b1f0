//! `group_key` and `group_window`: rendered per event, checked together.

use serde_json::json;

use super::tests::{config_dir, emitted, event, reference_pipeline, source, tables};
use super::*;

fn grouped_pipeline(group: &str) -> Result<Pipeline, ConfigError> {
    let toml_text = [
        "input = \"in\"\noutput = \"out\"\n",
        group,
        "\n[message]\nalert_id = \"a-{{ key }}\"\nchannel = \"C1\"\ntext = \"t\"\n",
        "blocks = '''[{\"type\": \"section\", \"text\": {\"type\": \"mrkdwn\", \"text\": \"x\"}}]'''\n",
    ]
    .concat();
    let settings: PipelineSettings = toml::from_str(&toml_text).unwrap();
    Pipeline::compile("p", &settings, &config_dir())
}

#[test]
fn the_group_key_is_rendered_per_event_with_the_window() {
    let p = grouped_pipeline(
        "group_key = \"{{ key }}/{{ event.env | default('') }}\"\ngroup_window = \"10m\"",
    )
    .unwrap();
    let msg = emitted(p.apply(
        &source(&json!("org-1")),
        &json!({"env": "env-1"}),
        &tables(),
    ));
    assert_eq!(msg.group_key.as_deref(), Some("org-1/env-1"));
    assert_eq!(msg.group_window_ms, 600_000);
    // Rendered empty: this alert is not grouped.
    let p =
        grouped_pipeline("group_key = \"{{ event.team | default('') }}\"\ngroup_window = \"10m\"")
            .unwrap();
    let msg = emitted(p.apply(&source(&json!("org-1")), &json!({}), &tables()));
    assert_eq!((msg.group_key, msg.group_window_ms), (None, 0));
    // The shipped pipeline does not group.
    let msg = emitted(reference_pipeline().apply(
        &source(&json!("org-1")),
        &event("Provisioning"),
        &tables(),
    ));
    assert_eq!((msg.group_key, msg.group_window_ms), (None, 0));
}

#[test]
fn group_key_and_group_window_come_together_and_errors_name_them() {
    for (settings, key) in [
        (
            "group_key = \"{{ key }}\"",
            "enrich.pipelines.p.group_window",
        ),
        ("group_window = \"10m\"", "enrich.pipelines.p.group_key"),
        (
            "group_key = \"{{ key }}\"\ngroup_window = \"500ms\"",
            "enrich.pipelines.p.group_window",
        ),
        (
            "group_key = \"{% if %}\"\ngroup_window = \"10m\"",
            "enrich.pipelines.p.group_key",
        ),
    ] {
        let err = grouped_pipeline(settings).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!("`{key}`")),
            "{settings}: {err}"
        );
    }
}
