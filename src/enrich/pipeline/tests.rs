use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::json;

use super::*;
use crate::config::{Settings, Sources};
use crate::messages::AlertStatus;
use crate::slack::blockkit;

pub(super) struct Tables(HashMap<(String, String), Arc<Json>>);

impl TableLookup for Tables {
    fn lookup(&self, table: &str, key: &str) -> Option<Arc<Json>> {
        self.0.get(&(table.to_owned(), key.to_owned())).cloned()
    }
}

pub(super) fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
}

pub(super) fn reference_pipeline() -> Pipeline {
    let settings = Settings::load(&Sources {
        dir: config_dir(),
        env_name: None,
        extra_file: None,
        use_env_vars: false,
    })
    .unwrap();
    let enrich = settings.enrich.unwrap();
    let name = "connector-provisioning-failure";
    Pipeline::compile(name, &enrich.pipelines[name], &config_dir()).unwrap()
}

pub(super) fn tables() -> Tables {
    let mut map = HashMap::new();
    map.insert(
        ("csdr_assignment".into(), "org-1".into()),
        Arc::new(
            json!({"org_id": "org-1", "org_name": "Acme", "csdr_name": "Ada",
                        "csdr_email": "ada@example.com", "account_name": null, "updated_at": 0}),
        ),
    );
    map.insert(
        ("csdr_assignment".into(), "org-2".into()),
        Arc::new(
            json!({"org_id": "org-2", "org_name": null, "csdr_name": null,
                        "csdr_email": "nobody@example.com", "account_name": null, "updated_at": 0}),
        ),
    );
    map.insert(
        ("slack_users".into(), "ada@example.com".into()),
        Arc::new(json!({"email": "ada@example.com", "slack_user_id": "U0ADA",
                        "display_name": "Ada", "team_id": null})),
    );
    Tables(map)
}

pub(super) fn event(old_status: &str) -> Json {
    let data = json!({"env_id": "env-9", "connector_id": "lcc-42", "connector_name": "orders-sink",
                      "failure_reason": "auth \"failed\"\nbad key",
                      "labels": {"connector_old_status": old_status, "connector_new_status": "Failed"}});
    json!({"eventId": "e1", "eventType": "connector-failure", "source": "t", "time": 7,
           "data": data.to_string()})
}

pub(super) fn source(key: &Json) -> Source<'_> {
    Source {
        topic: "data-notifications-pipeline",
        partition: 0,
        offset: 12,
        key: Some(key),
        timestamp_ms: 1_700_000_000_000,
    }
}

pub(super) fn emitted(verdict: Verdict) -> SlackMessage {
    match verdict {
        Verdict::Emit(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[test]
fn provisioning_failure_becomes_a_direct_message() {
    let p = reference_pipeline();
    let msg = emitted(p.apply(&source(&json!("org-1")), &event("Provisioning"), &tables()));
    assert_eq!(msg.alert_id, "org-1-env-9-lcc-42-connector-failure");
    assert_eq!(msg.channel_id, "U0ADA");
    assert_eq!(msg.text, "Connector Failure for Org org-1!");
    assert_eq!(msg.created_at, 1_700_000_000_000);
    let blocks: Json = serde_json::from_str(&msg.blocks).unwrap();
    assert_eq!(blocks[0]["type"], "header");
    let rendered = blocks.to_string();
    assert!(
        rendered.contains("auth \\\"failed\\\"\\nbad key"),
        "{rendered}"
    );
    let actions = blocks.as_array().unwrap().last().unwrap();
    assert_eq!(actions["elements"][0]["text"]["text"], "Acknowledge");
    assert_eq!(actions["elements"][0]["value"], msg.alert_id);
}

#[test]
fn other_statuses_are_filtered() {
    let p = reference_pipeline();
    assert_eq!(
        p.apply(&source(&json!("org-1")), &event("Running"), &tables()),
        Verdict::Filtered
    );
    let no_labels = json!({"eventId": "e", "eventType": "x", "source": "", "time": 1,
                           "data": "{\"env_id\": \"e\"}"});
    assert_eq!(
        p.apply(&source(&json!("org-1")), &no_labels, &tables()),
        Verdict::Filtered
    );
}

#[test]
fn org_without_assignment_is_a_join_miss() {
    let p = reference_pipeline();
    assert_eq!(
        p.apply(
            &source(&json!("org-404")),
            &event("Provisioning"),
            &tables()
        ),
        Verdict::JoinMiss {
            join: "assignment".into(),
            table: "csdr_assignment".into()
        }
    );
}

#[test]
fn assignee_without_slack_user_goes_to_the_fallback_channel() {
    let p = reference_pipeline();
    let msg = emitted(p.apply(&source(&json!("org-2")), &event("Provisioning"), &tables()));
    assert_eq!(msg.channel_id, "C0ALERTS");
    assert!(msg.blocks.contains("no Slack user for nobody@example.com"));
}

#[test]
fn data_that_is_not_json_is_rejected() {
    let p = reference_pipeline();
    let bad = json!({"eventId": "e", "eventType": "x", "source": "", "time": 1, "data": "{oops"});
    match p.apply(&source(&json!("org-1")), &bad, &tables()) {
        Verdict::Reject(e) => {
            assert_eq!(e.stage(), "decode");
            assert!(e.to_string().contains("\"data\""), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_template_field_is_a_render_error() {
    let p = reference_pipeline();
    let data = json!({"connector_id": "c", "labels": {"connector_old_status": "Provisioning"}});
    let ev = json!({"eventId": "e", "eventType": "x", "source": "", "time": 1, "data": data.to_string()});
    match p.apply(&source(&json!("org-1")), &ev, &tables()) {
        Verdict::Reject(e) => {
            assert_eq!(e.stage(), "render");
            assert!(e.to_string().contains("alert_id"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

fn inline_pipeline(blocks: &str, filter: Option<&str>) -> Result<Pipeline, ConfigError> {
    let settings: PipelineSettings = toml::from_str(&format!(
        r#"
        input = "in"
        output = "out"
        {}
        [message]
        alert_id = "a-{{{{ key }}}}"
        channel = "C1"
        text = "t"
        blocks = '''{blocks}'''
        "#,
        filter
            .map(|f| format!("filter = '{f}'"))
            .unwrap_or_default()
    ))
    .unwrap();
    Pipeline::compile("p", &settings, &config_dir())
}

#[test]
fn block_kit_violation_is_rejected() {
    let p = inline_pipeline(
        r#"[{"type": "header", "text": {"type": "plain_text", "text": "{{ "x" * 200 }}"}}]"#,
        None,
    )
    .unwrap();
    match p.apply(&source(&json!("k")), &json!({}), &tables()) {
        Verdict::Reject(RecordError::BlockKit(e)) => assert_eq!(e.path, "blocks[0].text.text"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn template_that_is_not_json_is_rejected() {
    let p = inline_pipeline("[{{ key }}", None).unwrap();
    match p.apply(&source(&json!("k")), &json!({}), &tables()) {
        Verdict::Reject(e @ RecordError::BlocksJson(_)) => assert_eq!(e.stage(), "render"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn filter_errors_and_non_boolean_results_are_rejected() {
    let p = inline_pipeline("[]", Some("event.missing.field == 1")).unwrap();
    assert!(matches!(
        p.apply(&source(&json!("k")), &json!({}), &tables()),
        Verdict::Reject(RecordError::Filter(_))
    ));
    let p = inline_pipeline("[]", Some("\"yes\"")).unwrap();
    assert!(matches!(
        p.apply(&source(&json!("k")), &json!({}), &tables()),
        Verdict::Reject(RecordError::Filter(_))
    ));
}

#[test]
fn compile_errors_name_the_config_key() {
    let err = inline_pipeline("[]", Some("event.a ==")).unwrap_err();
    assert!(
        err.to_string().starts_with("`enrich.pipelines.p.filter`"),
        "{err}"
    );
    let err = inline_pipeline("[{% if %}]", None).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("`enrich.pipelines.p.message.blocks`"),
        "{err}"
    );
}

#[test]
fn data_renders_as_escaped_text_and_helpers_as_markup() {
    let p = reference_pipeline();
    let key = "org-3<!here>";
    let mut tables = tables();
    tables.0.insert(
        ("csdr_assignment".into(), key.into()),
        Arc::new(
            json!({"org_id": key, "org_name": "<!channel> & <@U1>", "csdr_name": "Ada",
                        "csdr_email": "ada@example.com", "account_name": null, "updated_at": 0}),
        ),
    );
    let data = json!({"env_id": "env-9", "connector_id": "lcc-42",
                      "failure_reason": "see <https://evil|click> \"now\"",
                      "labels": {"connector_old_status": "Provisioning"}});
    let ev = json!({"eventId": "e1", "eventType": "x", "source": "t", "time": 7,
                    "data": data.to_string()});
    let msg = emitted(p.apply(&source(&json!(key)), &ev, &tables));

    // The fallback text is Slack-escaped; ids are not Slack text.
    assert_eq!(msg.text, "Connector Failure for Org org-3&lt;!here&gt;!");
    assert_eq!(msg.alert_id, "org-3<!here>-env-9-lcc-42-connector-failure");
    assert_eq!(msg.channel_id, "U0ADA");

    let blocks: Json = serde_json::from_str(&msg.blocks).expect("blocks stay valid JSON");
    blockkit::validate_message(&msg.text, &blocks).expect("still valid Block Kit");
    let intro = blocks[1]["text"]["text"].as_str().unwrap();
    assert!(
        intro.starts_with("<@U0ADA>, a connector for *&lt;!channel&gt; &amp; &lt;@U1&gt;*"),
        "{intro}"
    );
    assert_eq!(
        blocks[2]["fields"][0]["text"],
        "*Organization*\n&lt;!channel&gt; &amp; &lt;@U1&gt; (`org-3&lt;!here&gt;`)"
    );
    assert_eq!(
        blocks[3]["text"]["text"],
        "*Failure reason*\n```see &lt;https://evil|click&gt; \"now\"```"
    );
    assert!(blocks[4]["text"]["text"].as_str().unwrap().ends_with(
        "<https://docs.confluent.io/cloud/current/connectors/|Confluent Cloud connectors>"
    ));
    // Nothing anywhere in the message can notify anyone but the CSDR.
    let all = msg.blocks.clone() + &msg.text;
    for live in ["<!channel>", "<!here>", "<@U1>", "<https://evil"] {
        assert!(!all.contains(live), "{live} is live markup in {all}");
    }
    assert_eq!(all.matches("<@").count(), 1, "only the CSDR mention: {all}");
}

#[test]
fn a_malformed_user_id_is_not_a_mention() {
    let p = reference_pipeline();
    let mut tables = tables();
    tables.0.insert(
        ("slack_users".into(), "ada@example.com".into()),
        Arc::new(
            json!({"email": "ada@example.com", "slack_user_id": "U1> <!channel",
                        "display_name": "Ada", "team_id": null}),
        ),
    );
    let msg = emitted(p.apply(&source(&json!("org-1")), &event("Provisioning"), &tables));
    let blocks: Json = serde_json::from_str(&msg.blocks).unwrap();
    let intro = blocks[1]["text"]["text"].as_str().unwrap();
    assert!(
        intro.starts_with("U1&gt; &lt;!channel, a connector"),
        "{intro}"
    );
}

#[test]
fn truncate_counts_escaped_characters_and_markup_opts_out() {
    let p = inline_pipeline(
        r#"[{"type": "section", "text": {"type": "mrkdwn", "text": "{{ ("<" * 1000) | truncate(3000) }}"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "{{ "<!here>"|markup }} {{ "<b>" }}"}}]"#,
        None,
    )
    .unwrap();
    let msg = emitted(p.apply(&source(&json!("k")), &json!({}), &tables()));
    let blocks: Json = serde_json::from_str(&msg.blocks).unwrap();
    let cut = blocks[0]["text"]["text"].as_str().unwrap();
    assert_eq!(cut.chars().count(), 749 * 4 + 1, "{cut}");
    assert!(cut.ends_with("&lt;…"));
    assert_eq!(blocks[1]["text"]["text"], "<!here> &lt;b&gt;");
}

#[test]
fn safe_inserts_raw_json() {
    let p = inline_pipeline(
        r#"[{"type": "section", "text": {"type": "mrkdwn", "text": {{ "a<b"|tojson }}}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "{{ '<q>'|safe }}"}}]"#,
        None,
    )
    .unwrap();
    let msg = emitted(p.apply(&source(&json!("k")), &json!({}), &tables()));
    let blocks: Json = serde_json::from_str(&msg.blocks).unwrap();
    assert_eq!(blocks[0]["text"]["text"], "a<b");
    assert_eq!(blocks[1]["text"]["text"], "<q>");
}

#[test]
fn key_text_is_the_string_or_sorted_compact_json() {
    assert_eq!(key_text(&json!("org-1")), "org-1");
    assert_eq!(key_text(&json!("")), "");
    assert_eq!(key_text(&json!(42)), "42");
    assert_eq!(key_text(&json!(true)), "true");
    assert_eq!(
        key_text(&json!({"z": [1, {"b": null, "a": "x\"y"}], "a": 1.5})),
        r#"{"a":1.5,"z":[1,{"a":"x\"y","b":null}]}"#
    );
    assert_eq!(into_key_text(json!("org-1")), "org-1");
    assert_eq!(into_key_text(json!(["a", 1])), r#"["a",1]"#);
}

/// A pipeline over record keys: the filter and templates read the key's
/// fields, the join builds the table's key as a CEL map.
fn keyed_pipeline(join_key: &str) -> Pipeline {
    let settings: PipelineSettings = toml::from_str(&format!(
        r#"
        input = "in"
        output = "out"
        filter = 'key.region == "eu"'
        joins = [{{ name = "assignment", table = "csdr_assignment", key = "{join_key}", kind = "inner" }}]
        [message]
        alert_id = "{{{{ key.org }}}}-{{{{ key.region }}}}"
        channel = "C1"
        text = "{{{{ assignment.org_name }}}} {{{{ key }}}}"
        blocks = '[]'
        "#
    ))
    .unwrap();
    Pipeline::compile("p", &settings, &config_dir()).unwrap()
}

#[test]
fn decoded_keys_reach_filters_joins_and_templates() {
    let mut tables = tables();
    tables.0.insert(
        (
            "csdr_assignment".into(),
            r#"{"org_id":"org-7","region":"eu"}"#.into(),
        ),
        Arc::new(json!({"org_name": "Seven"})),
    );
    let p = keyed_pipeline("{'region': key.region, 'org_id': key.org}");
    let key = json!({"org": "org-7", "region": "eu"});
    let msg = emitted(p.apply(&source(&key), &json!({}), &tables));
    assert_eq!(msg.alert_id, "org-7-eu");
    // A map key prints as a map (and is Slack-escaped like any value).
    assert_eq!(msg.text, r#"Seven {"org": "org-7", "region": "eu"}"#);
    assert_eq!(
        p.apply(
            &source(&json!({"org": "org-7", "region": "us"})),
            &json!({}),
            &tables
        ),
        Verdict::Filtered
    );
    assert_eq!(
        p.apply(
            &source(&json!({"org": "org-8", "region": "eu"})),
            &json!({}),
            &tables
        ),
        Verdict::JoinMiss {
            join: "assignment".into(),
            table: "csdr_assignment".into()
        }
    );
    // A list works the same way.
    tables.0.insert(
        ("csdr_assignment".into(), r#"["org-7","eu"]"#.into()),
        Arc::new(json!({"org_name": "Seven again"})),
    );
    let p = keyed_pipeline("[key.org, key.region]");
    let msg = emitted(p.apply(&source(&key), &json!({}), &tables));
    assert!(msg.text.starts_with("Seven again "), "{}", msg.text);
}

#[test]
fn a_missing_key_is_null() {
    let p = keyed_pipeline("key");
    let unused = json!("unused");
    let no_key = Source {
        key: None,
        ..source(&unused)
    };
    assert!(matches!(
        p.apply(&no_key, &json!({}), &tables()),
        Verdict::Reject(RecordError::Filter(_))
    ));
}

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
