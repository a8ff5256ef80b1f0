//! The one-line evaluator against minijinja: for generated templates of
//! every construct in the subset and generated records, every answer the
//! evaluator gives is minijinja's rendered text (and it gives none where
//! minijinja fails); the shipped templates on every branch; templates
//! outside the subset left to minijinja.

use minijinja::Value as JinjaValue;

use super::context::RenderContext;
use super::oneline::{Escape, OneLine};
use super::*;
use crate::test_rng::Lcg;

/// A field's value: `None` leaves the field out.
pub(super) fn values() -> Vec<Option<Json>> {
    vec![
        None,
        Some(json!(null)),
        Some(json!(true)),
        Some(json!(false)),
        Some(json!(0)),
        Some(json!(7)),
        Some(json!(-3)),
        Some(json!(1.5)),
        Some(json!(2.0)),
        Some(json!(18_446_744_073_709_551_615_u64)),
        Some(json!("")),
        Some(json!("a")),
        Some(json!("firing")),
        Some(json!("resolved")),
        Some(json!("Running")),
        Some(json!("<!here> & \"q\" <@U1>")),
        Some(json!("ü 🚀 é")),
        Some(json!(" padded ")),
        Some(json!({})),
        Some(json!({"inner": "x <y>", "n": 1})),
        Some(json!([1, "a"])),
    ]
}

const FIELDS: [&str; 4] = ["s", "t", "u", "o"];

/// A pipeline whose context has the record, a left join `slack_user` and
/// vars (strings, as the configuration takes them).
pub(super) fn pipeline() -> Pipeline {
    let settings: PipelineSettings = toml::from_str(
        r#"
        input = "in"
        output = "out"
        joins = [{ name = "slack_user", table = "users", key = "key", kind = "left" }]
        [vars]
        fallback_channel = "C0ALERTS"
        markup = "<b> & ü"
        n = "3"
        empty = ""
        [message]
        alert_id = "{{ key }}"
        channel = "C1"
        text = "t"
        blocks = '[]'
        "#,
    )
    .unwrap();
    Pipeline::compile("p", &settings, &config_dir()).unwrap()
}

/// A generated record's context: `key` a string, none or a number; the
/// event's `data` with generated fields (and a nested object of them);
/// `slack_user` a row or none; `status` set or not.
pub(super) fn record_context(
    p: &Pipeline,
    lcg: &mut Lcg,
    values: &[Option<Json>],
) -> Arc<RenderContext> {
    let key = match lcg.next(4) {
        0 => None,
        1 => Some(json!(5)),
        2 => Some(json!("org <1> ü")),
        _ => Some(json!("org-1")),
    };
    let fields = |lcg: &mut Lcg| {
        let mut data = serde_json::Map::new();
        for field in FIELDS {
            if let Some(value) = lcg.pick(values) {
                data.insert(field.to_owned(), value.clone());
            }
        }
        data
    };
    let mut data = fields(lcg);
    if lcg.next(3) > 0 {
        data.insert("labels".to_owned(), Json::Object(fields(lcg)));
    }
    let event = Arc::new(json!({"eventId": "e1", "data": data}));
    let user = match lcg.next(3) {
        0 => None,
        1 => Some(Arc::new(json!({"slack_user_id": "U0ADA"}))),
        _ => {
            let mut row = fields(lcg);
            if let Some(id) = lcg.pick(values) {
                row.insert("slack_user_id".to_owned(), id.clone());
            }
            Some(Arc::new(Json::Object(row)))
        }
    };
    let source = Source {
        topic: "notifications",
        partition: 2,
        offset: 40,
        key: key.as_ref(),
        timestamp_ms: 1_700_000_000_000,
    };
    let mut context = p.template_context(&source, &event, &[("slack_user", user)]);
    match lcg.next(3) {
        0 => {}
        1 => context.set_status("firing"),
        _ => context.set_status("resolved"),
    }
    context
}

/// Paths, constants and names the generated expressions read: defined,
/// missing at the end, missing in the middle, attributes of non-objects,
/// names the context lacks (and a global).
pub(super) const ATOMS: &[&str] = &[
    "key",
    "status",
    "topic",
    "partition",
    "timestamp",
    "pipeline",
    "slack_user",
    "slack_user.slack_user_id",
    "slack_user.s",
    "vars.fallback_channel",
    "vars.markup",
    "vars.n",
    "vars.empty",
    "vars.missing",
    "event.data.s",
    "event.data.t",
    "event.data.u",
    "event.data.o",
    "event.data.o.inner",
    "event.data.o.n",
    "event.data.labels",
    "event.data.labels.s",
    "event.data.labels.o.inner",
    "event.data.missing",
    "event.data.s.x",
    "event.missing.x",
    "key.x",
    "nope",
    "range",
    "'a'",
    "''",
    "'firing'",
    "'Running'",
    "'<i> & ü'",
    "none",
    "true",
    "false",
    "0",
    "7",
    "1.5",
];

/// A generated expression over [`ATOMS`] with every operator of the
/// subset, parenthesised (precedence is minijinja's parser's business).
fn expression(lcg: &mut Lcg, depth: usize) -> String {
    let atom = |lcg: &mut Lcg| (*lcg.pick(ATOMS)).to_owned();
    if depth == 0 {
        return atom(lcg);
    }
    let sub = |lcg: &mut Lcg| format!("({})", expression(lcg, depth - 1));
    match lcg.next(11) {
        0 => format!("{} ~ {}", sub(lcg), sub(lcg)),
        1 => format!("{} == {}", sub(lcg), sub(lcg)),
        2 => format!("{} != {}", sub(lcg), sub(lcg)),
        3 => format!("not {}", sub(lcg)),
        4 => format!("{} and {}", sub(lcg), sub(lcg)),
        5 => format!("{} or {}", sub(lcg), sub(lcg)),
        6 => format!("{} if {} else {}", sub(lcg), sub(lcg), sub(lcg)),
        7 => format!("{} if {}", sub(lcg), sub(lcg)),
        8 => format!("{} | default({})", sub(lcg), sub(lcg)),
        9 => format!("{} | default", sub(lcg)),
        _ => atom(lcg),
    }
}

/// A generated template: literal text (markup characters, non-ASCII,
/// whitespace), values, `if` blocks with and without `else`, whitespace
/// control.
fn template(lcg: &mut Lcg) -> String {
    let mut out = String::new();
    for _ in 0..1 + lcg.next(3) {
        match lcg.next(6) {
            0 => {
                let text: &&str = lcg.pick(&[" ", "x-", "<&> ü ", "\n", "{# c #}"]);
                out.push_str(text);
            }
            1 | 2 => {
                let depth = lcg.next(3);
                out.push_str(&format!("{{{{ {} }}}}", expression(lcg, depth)));
            }
            3 => out.push_str(&format!(
                "{{% if {} %}}[{{{{ {} }}}}]{{% else %}}({{{{ {} }}}}){{% endif %}}",
                expression(lcg, 1),
                expression(lcg, 1),
                expression(lcg, 0)
            )),
            4 => out.push_str(&format!(
                "{{%- if {} %}} yes {{%- endif %}}",
                expression(lcg, 2)
            )),
            _ => out.push_str(&format!(
                "{{% if {} %}}a{{% elif {} %}}b{{% endif %}}",
                expression(lcg, 0),
                expression(lcg, 1)
            )),
        }
    }
    out
}

/// Per template: how many renders minijinja finished, how many the
/// evaluator answered (each equal to minijinja's).
fn compare(
    env: &Environment<'static>,
    name: &'static str,
    source: &str,
    contexts: &[Arc<RenderContext>],
) -> (usize, usize) {
    let escape = match name {
        TEXT_TEMPLATE => Escape::SlackText,
        _ => Escape::None,
    };
    let template = env.template_from_named_str(name, source);
    let fast = OneLine::compile(env, source, escape);
    // Generated sources minijinja does not parse (an `if` expression in
    // an `{% if %}` condition) are not compiled either.
    let (template, fast) = match (template, fast) {
        (Ok(template), Some(fast)) => (template, fast),
        (Err(_), None) => return (0, 0),
        (template, fast) => panic!(
            "{source:?}: parsed {}, compiled {}",
            template.is_ok(),
            fast.is_some()
        ),
    };
    let (mut finished, mut answered) = (0, 0);
    for context in contexts {
        let expected = template.render(context.value());
        finished += usize::from(expected.is_ok());
        if let Some(rendered) = fast.render(context) {
            answered += 1;
            assert_eq!(
                Ok(&rendered),
                expected.as_ref().map_err(|e| e.to_string()),
                "{name} {source:?} with {context:?}"
            );
        }
    }
    (finished, answered)
}

#[test]
fn generated_templates_render_as_minijinja_renders_them() {
    let p = pipeline();
    let env = template_environment();
    let values = values();
    let mut lcg = Lcg(3);
    let contexts: Vec<_> = (0..120)
        .map(|_| record_context(&p, &mut lcg, &values))
        .collect();
    let (mut finished, mut answered, mut templates) = (0, 0, 0);
    for round in 0..600 {
        let source = template(&mut lcg);
        // Both escape modes: ids (none) and the Slack text.
        let name = if round % 2 == 0 {
            "channel"
        } else {
            TEXT_TEMPLATE
        };
        let (f, a) = compare(&env, name, &source, &contexts);
        assert!(a <= f, "{source:?}: answered where minijinja failed");
        if f > 0 && !source.contains("nope") && !source.contains("range") {
            templates += 1;
        }
        finished += f;
        answered += a;
    }
    // Most renders that finish involve no undefined value the evaluator
    // leaves to minijinja.
    assert!(templates > 250, "{templates}");
    assert!(answered * 10 > finished * 6, "{answered} of {finished}");
}

/// Each construct alone over the generated contexts, so a wrong answer
/// for one cannot hide behind another's fallback.
#[test]
fn each_construct_renders_as_minijinja_renders_it() {
    let p = pipeline();
    let env = template_environment();
    let values = values();
    let mut lcg = Lcg(17);
    let contexts: Vec<_> = (0..400)
        .map(|_| record_context(&p, &mut lcg, &values))
        .collect();
    let cases: &[(&str, usize)] = &[
        ("lit <&> ü\n", 400),
        ("{{ 'x' }}{{ '<&>' }}", 400),
        ("{{ key }}", 250),
        ("{{ status }}", 200),
        (
            "{{ topic }}-{{ partition }}-{{ timestamp }}-{{ pipeline }}",
            400,
        ),
        ("{{ event.data.s }}", 100),
        ("{{ event.data.o.inner }}", 10),
        ("{{ slack_user.slack_user_id }}", 100),
        (
            "{{ vars.fallback_channel }} {{ vars.markup }} {{ vars.n }} {{ vars.empty }}",
            400,
        ),
        ("{{ event.data.s ~ '-' ~ key }}", 100),
        ("{{ event.data.s == 'a' }}", 100),
        ("{{ event.data.s != event.data.t }}", 50),
        ("{{ event.data.labels.s == event.data.labels.t }}", 20),
        ("{{ status == 'resolved' }}", 200),
        ("{{ not event.data.s }}", 100),
        ("{{ event.data.s and event.data.t }}", 50),
        ("{{ event.data.s or event.data.t }}", 50),
        ("{{ slack_user or vars.fallback_channel }}", 400),
        (
            "{{ slack_user.slack_user_id if slack_user else vars.fallback_channel }}",
            250,
        ),
        ("{{ 'yes' if event.data.s else 'no' }}", 100),
        ("{{ 'yes' if event.data.o else 'no' }}", 100),
        ("{{ 'yes' if event.data.labels else 'no' }}", 200),
        ("{{ event.data.missing | default('d') }}", 400),
        ("{{ event.data.s | default('d') }}", 400),
        ("{{ event.data.labels.s | default(key) }}", 100),
        ("{{ event.data.s | default }}", 400),
        ("{{ (event.data.s | default('')) == 'Running' }}", 400),
        ("{% if event.data.s %}a{% else %}b{% endif %}", 100),
        (
            "{% if status == 'resolved' %}R {{ key }}{% else %}F {{ key }}!{% endif %}",
            150,
        ),
        (
            "{% if event.data.s == 'a' %}a{% elif event.data.t %}t{% endif %}",
            50,
        ),
        ("{% if not slack_user %}none{% endif %}", 400),
        ("{{ event.data.o }} {{ event.data.u }}", 20),
        ("  {{- key -}}  ", 250),
    ];
    for &(source, least) in cases {
        for name in ["alert_id", TEXT_TEMPLATE] {
            let (finished, answered) = compare(&env, name, source, &contexts);
            // Each of these reads no undefined value where minijinja
            // finishes: the evaluator answers every such render.
            assert!(
                answered == finished && finished >= least,
                "{name} {source:?}: {answered} answered of {finished} finished"
            );
        }
    }
}

#[test]
fn the_shipped_templates_render_as_minijinja_renders_them_on_every_branch() {
    let p = reference_pipeline();
    let names = ["alert_id", "channel", STATUS_TEMPLATE, TEXT_TEMPLATE];
    for name in names {
        assert!(p.one_line(name).is_some(), "{name} is in the subset");
    }
    let statuses = [
        None,
        Some(json!("Running")),
        Some(json!("Failed")),
        Some(json!(null)),
        Some(json!("running <b>")),
    ];
    let ids = [
        Some(json!("env-9")),
        None,
        Some(json!(12)),
        Some(json!("é<&>")),
    ];
    let users = [
        None,
        Some(json!({"slack_user_id": "U0ADA"})),
        Some(json!({"slack_user_id": null})),
        Some(json!({"email": "x"})),
        Some(json!({})),
    ];
    let mut seen = std::collections::BTreeSet::new();
    let mut answered = 0;
    for status in &statuses {
        for id in &ids {
            for user in &users {
                for rendered_status in [None, Some("firing"), Some("resolved")] {
                    let mut labels = json!({"connector_old_status": "Provisioning"});
                    if let Some(s) = status {
                        labels["connector_new_status"] = s.clone();
                    }
                    let mut data = json!({"connector_id": "lcc-42", "labels": labels});
                    if let Some(id) = id {
                        data["env_id"] = id.clone();
                    }
                    let event = Arc::new(json!({"eventId": "e1", "data": data}));
                    let key = json!("org-1");
                    let source = Source {
                        topic: "notifications",
                        partition: 0,
                        offset: 1,
                        key: Some(&key),
                        timestamp_ms: 7,
                    };
                    let joined = [
                        ("assignment", Some(Arc::new(json!({"csdr_email": "a@b"})))),
                        ("slack_user", user.clone().map(Arc::new)),
                    ];
                    let mut context = p.template_context(&source, &event, &joined);
                    if let Some(s) = rendered_status {
                        context.set_status(s);
                    }
                    for name in names {
                        let expected = p.render_template(name, &context.value());
                        let fast = p.one_line(name).and_then(|t| t.render(&context));
                        if let Some(fast) = &fast {
                            assert_eq!(Ok(fast), expected.as_ref(), "{name} {context:?}");
                            answered += 1;
                        }
                        seen.insert((name, expected.map_err(|_| "error".to_owned())));
                    }
                }
            }
        }
    }
    let seen: Vec<_> = seen.into_iter().collect();
    for branch in [
        (
            "alert_id",
            Ok("org-1-env-9-lcc-42-connector-failure".to_owned()),
        ),
        (
            "alert_id",
            Ok("org-1-12-lcc-42-connector-failure".to_owned()),
        ),
        ("alert_id", Err("error".to_owned())),
        ("channel", Ok("U0ADA".to_owned())),
        ("channel", Ok("None".to_owned())),
        ("channel", Ok("C0ALERTS".to_owned())),
        ("channel", Err("error".to_owned())),
        ("status", Ok("resolved".to_owned())),
        ("status", Ok("firing".to_owned())),
        (
            "text",
            Ok("Resolved: the connector of Org org-1 is running again".to_owned()),
        ),
        ("text", Ok("Connector Failure for Org org-1!".to_owned())),
    ] {
        assert!(seen.contains(&branch), "{branch:?} not seen in {seen:?}");
    }
    assert!(answered > 900, "{answered}");
}

/// Templates outside the subset are left to minijinja when the pipeline
/// is built; in it, whitespace control, comments and raw blocks.
#[test]
fn templates_outside_the_subset_fall_back_to_minijinja() {
    let env = template_environment();
    for source in [
        "{{ key | upper }}",
        "{{ key | markup }}",
        "{{ key | truncate(3) }}",
        "{{ key[0] }}",
        "{{ event['data'] }}",
        "{{ partition + 1 }}",
        "{{ -partition }}",
        "{{ link('https://x') }}",
        "{{ range(3) }}",
        "{% for x in [1] %}{{ x }}{% endfor %}",
        "{% set x = 1 %}{{ x }}",
        "{{ key is defined }}",
        "{{ partition < 3 }}",
        "{{ key == key == key }}",
        "{{ key in 'abc' }}",
        "{{ key | default('x', true) }}",
        "{{ key | default(x='y') }}",
        "{% autoescape false %}{{ key }}{% endautoescape %}",
        "{% filter upper %}{{ key }}{% endfilter %}",
        "{% macro m() %}x{% endmacro %}{{ m() }}",
        "{{ [key][0] }}",
        "{{ {'a': key}.a }}",
        "{{ key[1:] }}",
        "{% with x = 1 %}{{ x }}{% endwith %}",
    ] {
        assert!(
            OneLine::compile(&env, source, Escape::None).is_none(),
            "{source:?} compiled"
        );
    }
    for source in [
        "{{- key -}}",
        "a {# note #} b",
        "{% raw %}{{ key }}{% endraw %}",
        "{{ [1, 2] }}",
        "{{ 'a' ~ 'b' }}",
        "{{ '' and 'x' }}",
    ] {
        assert!(
            OneLine::compile(&env, source, Escape::None).is_some(),
            "{source:?} not compiled"
        );
    }

    // A pipeline with templates outside it renders them with minijinja.
    let settings: PipelineSettings = toml::from_str(
        r#"
        input = "in"
        output = "out"
        [message]
        alert_id = "{{ key | upper }}-{{ event.n + 1 }}"
        channel = "{% for c in ['C1'] %}{{ c }}{% endfor %}"
        text = "{{ event.s | truncate(4) }} {{ '<b>' | markup }}"
        blocks = '[]'
        "#,
    )
    .unwrap();
    let p = Pipeline::compile("p", &settings, &config_dir()).unwrap();
    for name in ["alert_id", "channel", TEXT_TEMPLATE] {
        assert!(p.one_line(name).is_none(), "{name}");
    }
    let key = json!("org-1");
    let source = source(&key);
    let event = json!({"n": 1, "s": "<long>"});
    let Verdict::Emit(message) = p.apply(&source, &event, &Tables(HashMap::new())) else {
        panic!("not emitted");
    };
    assert_eq!(message.alert_id, "ORG-1-2");
    assert_eq!(message.channel_id, "C1");
    // `<` counts four characters escaped: nothing fits before the `…`.
    assert_eq!(message.text, "… <b>");
}

/// Renders the evaluator leaves to minijinja end as minijinja ends them:
/// the same error, the same text.
#[test]
fn undefined_values_are_minijinjas_to_report() {
    let settings: PipelineSettings = toml::from_str(
        r#"
        input = "in"
        output = "out"
        [message]
        alert_id = "{{ event.missing }}"
        channel = "{{ 'C1' if event.flag }}{{ event.missing.x | default('') }}"
        text = "t"
        blocks = '[]'
        "#,
    )
    .unwrap();
    let p = Pipeline::compile("p", &settings, &config_dir()).unwrap();
    let key = json!("k");
    let source = source(&key);
    let event = Arc::new(json!({"flag": false}));
    let context = p.template_context(&source, &event, &[]);
    for name in ["alert_id", "channel"] {
        let fast = p.one_line(name).expect("in the subset");
        assert_eq!(fast.render(&context), None, "{name}");
    }
    let expected = p.render_template("alert_id", &context.value()).unwrap_err();
    match p.apply(&source, &event, &Tables(HashMap::new())) {
        Verdict::Reject(e) => assert_eq!(e, expected),
        other => panic!("{other:?}"),
    }
}

/// The values `compare` hands over are the pipeline's own.
#[test]
fn generated_contexts_hold_what_they_say() {
    let p = pipeline();
    let values = values();
    let mut lcg = Lcg(1);
    let context = record_context(&p, &mut lcg, &values);
    let value = context.value();
    assert!(value.get_attr("event").unwrap().get_attr("data").is_ok());
    assert_eq!(
        value
            .get_attr("vars")
            .unwrap()
            .get_attr("fallback_channel")
            .unwrap(),
        JinjaValue::from("C0ALERTS")
    );
}
