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
    let settings = Settings::load(&Sources::files_only(config_dir())).unwrap();
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

mod blocks_eval;
mod golden;
mod keys;
mod oneline;
mod plans;
mod suppress;

/// The formatter's shortcut: a value it writes unchanged is one neither
/// escape would change, and every value one of them changes is escaped.
#[test]
fn values_without_anything_to_escape_are_written_as_they_are() {
    let mut texts: Vec<String> = (0u8..=0x7f)
        .map(|b| format!("a{}b", char::from(b)))
        .collect();
    texts.extend(
        [
            "",
            "plain",
            "é ü 🚀 \u{2028}",
            "\u{7f}",
            "x&y",
            "<!here>",
            "a\"b",
            "\\",
            "\t",
        ]
        .map(String::from),
    );
    for text in &texts {
        let slack = markup::escape(text);
        let mut json = String::new();
        blockkit::write_json_string_content(&mut json, &slack).unwrap();
        assert_eq!(needs_escape(text, false), slack != *text, "{text:?}");
        assert_eq!(needs_escape(text, true), json != *text, "{text:?}");
    }
}
