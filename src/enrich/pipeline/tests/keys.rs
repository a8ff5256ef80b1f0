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

/// Keys that select members are read without CEL when they end on a
/// string; when they do not, CEL computes them with every variable they
/// read (the record's key, earlier joins, `alert_id`), as before.
#[test]
fn path_keys_that_are_not_strings_fall_back_to_cel() {
    let settings: PipelineSettings = toml::from_str(
        r#"
        input = "in"
        output = "out"
        joins = [
          { name = "assignment", table = "csdr_assignment", key = "key", kind = "inner" },
          { name = "by_number", table = "slack_users", key = "assignment.updated_at", kind = "left" },
          { name = "by_id", table = "slack_users", key = "alert_id", kind = "left" },
        ]
        suppress = 'status == "resolved"'
        [message]
        alert_id = "id-{{ key }}"
        channel = "C1"
        text = "{{ assignment.org_name }} {{ by_number.slack_user_id if by_number else '-' }} {{ by_id.slack_user_id if by_id else '-' }}"
        blocks = '[]'
        "#,
    )
    .unwrap();
    let p = Pipeline::compile("p", &settings, &config_dir()).unwrap();
    let mut tables = tables();
    for (key, row) in [
        ("7", json!({"org_name": "Seven", "updated_at": 42})),
        ("org-s", json!({"org_name": "S", "updated_at": "id-org-s"})),
    ] {
        tables
            .0
            .insert(("csdr_assignment".into(), key.into()), Arc::new(row));
    }
    for (key, user) in [("42", "U42"), ("id-org-s", "US"), ("id-7", "U7")] {
        tables.0.insert(
            ("slack_users".into(), key.into()),
            Arc::new(json!({"slack_user_id": user})),
        );
    }
    // A number key and a number member: CEL turns both into text.
    let msg = emitted(p.apply(&source(&json!(7)), &json!({}), &tables));
    assert_eq!(msg.text, "Seven U42 U7");
    // Strings all the way: no CEL for the keys.
    let msg = emitted(p.apply(&source(&json!("org-s")), &json!({}), &tables));
    assert_eq!(msg.text, "S US US");
}

/// A record the filter passed whose JSON field is malformed fails with
/// the field's parse error, whether or not CEL reads the event.
#[test]
fn a_malformed_json_field_fails_a_passed_record_with_its_parse_error() {
    let reason = serde_json::from_str::<Json>("{\"a\": [1,")
        .unwrap_err()
        .to_string();
    for key in ["key", "event.org"] {
        let settings: PipelineSettings = toml::from_str(&format!(
            r#"
            input = "in"
            output = "out"
            json_fields = ["data", "more"]
            joins = [{{ name = "assignment", table = "csdr_assignment", key = "{key}", kind = "inner" }}]
            [message]
            alert_id = "a"
            channel = "C1"
            text = "t"
            blocks = '[]'
            "#
        ))
        .unwrap();
        let p = Pipeline::compile("p", &settings, &config_dir()).unwrap();
        let event = json!({"org": "org-1", "data": "{\"a\": [1,", "more": "also bad"});
        assert_eq!(
            p.apply_passed(&source(&json!("org-1")), &event, &tables()),
            Verdict::Reject(RecordError::JsonField {
                field: "data".into(),
                reason: reason.clone()
            }),
            "{key}"
        );
    }
}

/// `topic` reaches CEL wherever a program names it: a join key, a
/// filter, `suppress`.
#[test]
fn programs_that_name_the_topic_see_it() {
    let settings: PipelineSettings = toml::from_str(
        r#"
        input = "in"
        output = "out"
        filter = 'topic.startsWith("data-")'
        joins = [{ name = "assignment", table = "csdr_assignment", key = "topic", kind = "inner" }]
        suppress = 'topic == "muted"'
        [message]
        alert_id = "a"
        channel = "C1"
        text = "{{ assignment.org_name }}"
        blocks = '[]'
        "#,
    )
    .unwrap();
    let p = Pipeline::compile("p", &settings, &config_dir()).unwrap();
    let mut tables = tables();
    tables.0.insert(
        (
            "csdr_assignment".into(),
            "data-notifications-pipeline".into(),
        ),
        Arc::new(json!({"org_name": "By topic"})),
    );
    let msg = emitted(p.apply(&source(&json!("k")), &json!({}), &tables));
    assert_eq!(msg.text, "By topic");
    let passed = p.apply_passed(&source(&json!("k")), &json!({}), &tables);
    assert_eq!(emitted(passed).text, "By topic");
}
