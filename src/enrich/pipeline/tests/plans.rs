//! Blocks checked through the Block Kit plans against the full pass, with
//! real templates: the same `Ok` bytes or the same error, renders whose
//! holes are known planned, every other render checked in full.

use minijinja::Value as JinjaValue;

use super::*;
use crate::test_rng::Lcg;

type Checked = Result<String, RecordError>;

/// What `render_blocks` answers, what rendering and the full check
/// answer, and whether the render's holes were known (`None`: it failed).
fn both(p: &Pipeline, text: &str, context: &JinjaValue) -> (Checked, Checked, Option<bool>) {
    let planned = p.render_blocks(text, context);
    let full = p
        .render_template(BLOCKS_TEMPLATE, context)
        .and_then(|blocks| {
            blockkit::check_rendered(text, &blocks).map_err(|e| match e {
                blockkit::RenderedError::Json(reason) => RecordError::BlocksJson(reason),
                blockkit::RenderedError::BlockKit(e) => RecordError::BlockKit(e),
            })
        });
    let template = p.templates.get_template(BLOCKS_TEMPLATE).unwrap();
    let known = holes::render(&template, context, 0, |_, holes| holes.is_some()).ok();
    (planned, full, known)
}

fn inline(blocks: &str) -> Pipeline {
    let settings: PipelineSettings = toml::from_str(&format!(
        r#"
        input = "in"
        output = "out"
        [message]
        alert_id = "a"
        channel = "C1"
        text = "t"
        blocks = '''{blocks}'''
        "#
    ))
    .unwrap();
    Pipeline::compile("p", &settings, &config_dir()).unwrap()
}

fn values() -> Vec<Json> {
    let mut v = vec![
        json!(""),
        json!("a"),
        json!("A & B <!here> \"Q\" \\ \u{1} ü 🚀"),
        json!("header"),
        json!("section"),
        json!("plain_text"),
        json!("primary"),
        json!("button"),
        json!("line\nbreak\ttab\u{8}\u{c}"),
        json!(null),
        json!(42),
        json!(1.5),
        json!(true),
        json!("\u{F0000}"),
    ];
    for n in [
        74, 75, 76, 149, 150, 151, 1999, 2000, 2001, 2999, 3000, 3001,
    ] {
        v.push(json!("x".repeat(n)));
        v.push(json!("é".repeat(n)));
        v.push(json!("<".repeat(n / 4 + 1)));
        v.push(json!("\"".repeat(n / 2 + 1)));
        v.push(json!("\u{1}".repeat(n / 6 + 1)));
    }
    v
}

/// Templates and whether their renders' holes are known.
const TEMPLATES: &[(bool, &str)] = &[
    (
        true,
        r#"[{"type": "header", "text": {"type": "plain_text", "text": "{{ a }}"}}]"#,
    ),
    (
        true,
        r#"[
      {%- if b %}{"type": "section", "text": {"type": "mrkdwn", "text": "*{{ a }}* {{ b|markup }}"}},{% endif %}
      {"text": {"text": "{{ c|default('none') }} {{ a|truncate(70) }}", "type": "plain_text"}, "type": "header"},
      {"type": "section", "fields": [{% for x in items %}{% if not loop.first %},{% endif %}{"type": "mrkdwn", "text": "{{ x }}"}{% endfor %}]},
      {"type": "actions", "elements": [{"type": "button", "style": "primary", "action_id": "{{ b }}", "text": {"type": "plain_text", "text": "{{ c }}"}, "value": "{{ a }}", "value": "{{ b }}"}]}
    ]"#,
    ),
    // A value where the rules compare it, or in a member name.
    (
        true,
        r#"[{"type": "{{ a }}", "text": {"type": "plain_text", "text": "{{ b }}"}}]"#,
    ),
    (
        true,
        r#"[{"type": "section", "text": {"type": "mrkdwn", "text{{ a }}": "{{ b }}", "text": "x"}}]"#,
    ),
    (
        true,
        r#"[{"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": "A"}, "style": "{{ a }}"}]}]"#,
    ),
    // Values written other than as holes.
    (
        false,
        r#"[{"type": "header", "text": {"type": "plain_text", "text": "{{ a|safe }}"}}]"#,
    ),
    (
        false,
        r#"[{"type": "header", "text": {"type": "plain_text", "text": "{{ a|tojson }}"}}]"#,
    ),
    (
        false,
        r#"{% set s %}{{ a }}!{% endset %}[{"type": "header", "text": {"type": "plain_text", "text": "{{ s }}"}}]"#,
    ),
    (
        false,
        r#"{% macro m(x) %}<{{ x }}>{% endmacro %}[{"type": "header", "text": {"type": "plain_text", "text": "{{ m(a) }}"}}]"#,
    ),
    (
        false,
        r#"[{"type": "header", "text": {"type": "plain_text", "text": "{% autoescape false %}{{ a }}{% endautoescape %}"}}]"#,
    ),
    (
        false,
        r#"[{"type": "header", "text": {"type": "plain_text", "text": "{% filter upper %}{{ a }}{% endfilter %}"}}]"#,
    ),
    // A capture that is not written: its value goes nowhere, the rest is known.
    (
        true,
        r#"{% set s %}{{ a }}{% endset %}[{"type": "header", "text": {"type": "plain_text", "text": "{{ b }}{{ s|length }}"}}]"#,
    ),
    // Not JSON, or JSON only for some values.
    (
        true,
        r#"[{"type": "header", "text": {"type": "plain_text", "text": "{{ a }}"}, "n": {{ b }}}]"#,
    ),
    (
        true,
        r#"[{"type": "header", "text": {"type": "plain_text", "text": "x\{{ a }}"}}]"#,
    ),
];

#[test]
fn planned_blocks_match_the_full_pass_for_generated_templates() {
    let values = values();
    let mut lcg = Lcg(11);
    for (t, &(known, template)) in TEMPLATES.iter().enumerate() {
        let p = inline(template);
        let mut passed = false;
        for round in 0..150 {
            let items: Vec<Json> = (0..lcg.next(4))
                .map(|_| lcg.pick(&values).clone())
                .collect();
            let context = JinjaValue::from_serialize(json!({
                "a": lcg.pick(&values).clone(), "b": lcg.pick(&values).clone(), "c": lcg.pick(&values).clone(),
                "items": items,
            }));
            let text = if round % 25 == 24 { " " } else { "fallback" };
            let (planned, full, was_known) = both(&p, text, &context);
            assert_eq!(planned, full, "template {t}: {template}");
            assert!(
                was_known.is_none_or(|k| k == known),
                "template {t}: {template}"
            );
            passed |= planned.is_ok();
        }
        let (with_plan, in_full) = p.blocks_plans.counts();
        if known {
            assert!(with_plan + in_full > 0, "template {t}: no skeleton kept");
        } else {
            assert_eq!((with_plan, in_full), (0, 0), "template {t}");
        }
        // The last is JSON for few values, if any.
        assert!(
            passed || t + 1 == TEMPLATES.len(),
            "template {t} never passed"
        );
    }
}

/// The shipped template, every branch (firing or resolved, with a Slack
/// user or not), generated values in every field.
#[test]
fn the_shipped_blocks_are_planned_and_match_the_full_pass() {
    let p = reference_pipeline();
    let values = values();
    let mut lcg = Lcg(5);
    for round in 0..400 {
        let mut pick = || lcg.pick(&values).clone();
        let data = json!({
            "env_id": pick(), "connector_id": pick(), "connector_name": pick(),
            "connector_type": pick(), "failure_reason": pick(),
            "labels": {"connector_old_status": pick(), "connector_new_status": pick()},
        });
        let slack_user = match round % 3 {
            0 => json!(null),
            _ => json!({"slack_user_id": pick()}),
        };
        let time = [7, 1_764_166_920_000_i64, -1][round % 3];
        let status = ["firing", "resolved"][round % 2];
        let context = JinjaValue::from_serialize(json!({
            "key": pick(), "event": {"data": data, "time": time},
            "assignment": {"org_name": pick(), "csdr_name": pick(), "csdr_email": pick()},
            "slack_user": slack_user, "pipeline": pick(),
            "status": status, "vars": {"console_url": pick()},
        }));
        let (planned, full, known) = both(&p, "fallback", &context);
        assert_eq!(planned, full, "round {round}");
        assert!(known != Some(false), "round {round}");
    }
    let (with_plan, in_full) = p.blocks_plans.counts();
    assert_eq!(in_full, 0);
    // Firing or resolved, with a user or not.
    assert!(with_plan >= 4, "{with_plan}");
}
