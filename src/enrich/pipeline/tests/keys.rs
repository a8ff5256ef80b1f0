//! Record keys as text, and decoded keys reaching filters, joins and
//! templates.

use super::*;

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
