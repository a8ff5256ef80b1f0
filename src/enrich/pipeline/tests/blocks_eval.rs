//! The blocks template through the evaluator against minijinja: the same
//! text and the same holes (what `holes::render` records of minijinja's
//! render) wherever the evaluator answers, no answer where minijinja
//! fails; the shipped template on every branch with generated values,
//! generated templates of every construct of the blocks' subset, and the
//! pipeline's answer (checked blocks or error) equal either way.

use minijinja::Template;

use super::super::oneline::{OneLine, Rendered};
use super::oneline::{pipeline, record_context, values as oneline_values, ATOMS};
use super::*;
use crate::enrich::pipeline::context::RenderContext;
use crate::test_rng::Lcg;

/// minijinja's render of `template` with the holes its formatter noted.
fn minijinja_render(
    template: &Template<'_, '_>,
    context: &Arc<RenderContext>,
) -> Result<Rendered, String> {
    holes::render(template, &context.value(), 0, |text, holes| Rendered {
        text: text.to_owned(),
        holes: holes.map(<[_]>::to_vec),
    })
    .map_err(|e| format!("{e:#}"))
}

/// Renders `template` with minijinja and with its compiled `fast` form for
/// each context; every answer the evaluator gives must equal minijinja's.
/// The renders minijinja finished, and those the evaluator answered.
fn compare(
    source: &str,
    template: &Template<'_, '_>,
    fast: &OneLine,
    contexts: &[Arc<RenderContext>],
) -> (usize, usize) {
    let (mut finished, mut answered) = (0, 0);
    for context in contexts {
        let expected = minijinja_render(template, context);
        finished += usize::from(expected.is_ok());
        if let Some(rendered) = fast.render_blocks(context, 0) {
            answered += 1;
            assert_eq!(
                Ok(&rendered),
                expected.as_ref(),
                "{source:?} with {context:?}"
            );
        }
    }
    (finished, answered)
}

/// Strings that need each escape (Slack's `& < >`, JSON's `" \` and
/// control characters), non-ASCII, Slack ids, and lengths around the
/// template's `truncate(2800)` (`<` counts four, `&` five).
fn strings() -> Vec<Json> {
    let mut v = vec![
        json!(""),
        json!("a"),
        json!("U0ADA"),
        json!("W123ABC"),
        json!("u0ada"),
        json!("<!here> & \"q\" <@U1>"),
        json!("back\\slash \"quoted\""),
        json!("line\nbreak\ttab\r\u{1}\u{8}\u{c}\u{1f}"),
        json!("ü 🚀 é — ✓"),
        json!("&amp; &lt;"),
        json!("https://x.test/a?b=1&c=<2>|d e"),
        json!("\u{F0000}"),
    ];
    for n in [2798, 2799, 2800, 2801, 3000] {
        v.push(json!("x".repeat(n)));
        v.push(json!("é".repeat(n)));
        v.push(json!(format!("{}<", "y".repeat(n - 4))));
        v.push(json!(format!("{}&", "y".repeat(n - 5))));
        v.push(json!("\"".repeat(n / 2)));
    }
    v
}

/// Any field's value: a string, or one of the other kinds (`None`: left
/// out).
fn field(lcg: &mut Lcg, strings: &[Json]) -> Option<Json> {
    match lcg.next(10) {
        0 => None,
        1 => Some(json!(null)),
        2 => Some(json!(42)),
        3 => Some(json!({"inner": "<x>"})),
        _ => Some(lcg.pick(strings).clone()),
    }
}

/// A generated record of the shipped pipeline: every field of the
/// template missing, null, another kind, or a string from [`strings`];
/// `assignment` with or without a name, `slack_user` a row (a good id, a
/// generated one, none) or none; firing or resolved.
fn shipped_context(p: &Pipeline, lcg: &mut Lcg, strings: &[Json]) -> Arc<RenderContext> {
    let mut data = serde_json::Map::new();
    for name in [
        "env_id",
        "connector_id",
        "connector_name",
        "connector_type",
        "failure_reason",
    ] {
        // The ids are usually there (the alert id needs them).
        let value = if name.ends_with("_id") && lcg.next(4) > 0 {
            Some(lcg.pick(strings).clone())
        } else {
            field(lcg, strings)
        };
        if let Some(value) = value {
            data.insert(name.to_owned(), value);
        }
    }
    let mut labels = serde_json::Map::new();
    if lcg.next(6) > 0 {
        labels.insert("connector_old_status".to_owned(), lcg.pick(strings).clone());
    }
    if let Some(value) = field(lcg, strings) {
        labels.insert("connector_new_status".to_owned(), value);
    }
    data.insert("labels".to_owned(), Json::Object(labels));
    let time = [
        Some(json!(1_764_166_920_000_i64)),
        Some(json!(7)),
        Some(json!(-1)),
        Some(json!("soon <!here>")),
        None,
    ];
    let mut event = json!({"eventId": "e1", "data": data});
    if let Some(time) = lcg.pick(&time) {
        event["time"] = time.clone();
    }
    let mut assignment = serde_json::Map::new();
    for name in ["org_name", "csdr_name", "csdr_email"] {
        let value = match lcg.next(5) {
            0 => json!(null),
            1 => json!(""),
            _ => lcg.pick(strings).clone(),
        };
        // A missing name fails `or`: rarely.
        if lcg.next(12) > 0 {
            assignment.insert(name.to_owned(), value);
        }
    }
    let slack_user = match lcg.next(4) {
        0 => None,
        1 => Some(json!({"slack_user_id": "U0ADA"})),
        2 => Some(json!({"slack_user_id": null})),
        _ => Some(json!({"slack_user_id": lcg.pick(strings).clone()})),
    };
    let key = match lcg.next(5) {
        0 => json!(5),
        1 => lcg.pick(strings).clone(),
        _ => json!("org-1"),
    };
    let source = Source {
        topic: "notifications",
        partition: 0,
        offset: 1,
        key: Some(&key),
        timestamp_ms: 7,
    };
    let joined = [
        ("assignment", Some(Arc::new(Json::Object(assignment)))),
        ("slack_user", slack_user.map(Arc::new)),
        ("alert_state", None),
    ];
    let mut context = p.template_context(&source, &Arc::new(event), &joined);
    context.set_status(["firing", "resolved"][lcg.next(2)]);
    context
}

#[test]
fn the_shipped_blocks_render_as_minijinja_renders_them_on_every_branch() {
    let p = reference_pipeline();
    let fast = p
        .blocks_fast
        .as_ref()
        .expect("the shipped blocks are in the subset");
    let template = p.templates.get_template(BLOCKS_TEMPLATE).unwrap();
    let strings = strings();
    let mut lcg = Lcg(23);
    let (mut finished, mut answered) = (0, 0);
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..3000 {
        let context = shipped_context(&p, &mut lcg, &strings);
        let expected = minijinja_render(&template, &context);
        finished += usize::from(expected.is_ok());
        if let Some(rendered) = fast.render_blocks(&context, 0) {
            answered += 1;
            assert_eq!(
                Ok(&rendered),
                expected.as_ref(),
                "round {round}: {context:?}"
            );
            assert!(rendered.holes.is_some(), "round {round}");
        }
        // The pipeline's answer, checked blocks or error, is the one
        // minijinja's render gives.
        let text = if round % 50 == 49 { " " } else { "fallback" };
        assert_eq!(
            p.render_blocks_of(text, &context),
            p.render_blocks(text, &context.value()),
            "round {round}"
        );
        if let Ok(rendered) = &expected {
            for (branch, needle) in [
                ("resolved", "Resolved: the connector"),
                ("firing", "Connector failed while provisioning"),
                ("mention", "<@U0ADA>, a connector"),
                ("no user", "no Slack user for"),
                ("truncated", "…```"),
                ("date", "<!date^1764166920^"),
                ("escaped", "&lt;!here&gt; &amp; \\\"q\\\""),
                ("control", "\\u0001"),
                ("default reason", "No reason was reported."),
            ] {
                if rendered.text.contains(needle) {
                    seen.insert(branch);
                }
            }
        }
    }
    assert_eq!(seen.len(), 9, "branches seen: {seen:?}");
    // Renders minijinja finishes with no undefined value read outside
    // `default` are the evaluator's: most of them.
    assert!(answered * 10 > finished * 7, "{answered} of {finished}");
    assert!(finished > 1500, "{finished}");
}

/// Atoms of the generated blocks expressions: the one-line atoms, the
/// `set` variables, values for the helpers.
fn atom(lcg: &mut Lcg) -> String {
    const MORE: &[&str] = &[
        "a",
        "b",
        "1764166920000",
        "-1",
        "'U0ADA'",
        "'https://x.test/?q=1&r=<2>'",
        "'Docs & <more>'",
        "none",
    ];
    if lcg.next(3) == 0 {
        (*lcg.pick(MORE)).to_owned()
    } else {
        (*lcg.pick(ATOMS)).to_owned()
    }
}

/// A generated expression with the blocks' constructs (and the one-line
/// operators that combine them).
fn expression(lcg: &mut Lcg, depth: usize) -> String {
    if depth == 0 {
        return atom(lcg);
    }
    let sub = |lcg: &mut Lcg| format!("({})", expression(lcg, depth - 1));
    match lcg.next(12) {
        0 => {
            let input = sub(lcg);
            format!("{input} | truncate({})", lcg.pick(&[0, 1, 3, 10, 40]))
        }
        1 => format!("{} | mention", sub(lcg)),
        2 => format!("{} | slack_date", sub(lcg)),
        3 => format!("{} | markup", sub(lcg)),
        4 => format!("link({})", sub(lcg)),
        5 => format!("link({}, {})", sub(lcg), sub(lcg)),
        6 => format!("{} ~ {}", sub(lcg), sub(lcg)),
        7 => format!("{} or {}", sub(lcg), sub(lcg)),
        8 => format!("{} | default({})", sub(lcg), sub(lcg)),
        9 => format!("{} if {} else {}", sub(lcg), sub(lcg), sub(lcg)),
        10 => format!("not {}", sub(lcg)),
        _ => atom(lcg),
    }
}

/// A generated blocks template: top-level `set`s (one may hide `link`),
/// then a JSON document whose strings hold values, `if` blocks, literal
/// text with characters JSON and Slack escape.
fn template(lcg: &mut Lcg) -> String {
    let mut out = String::new();
    for name in ["a", "b"] {
        if lcg.next(4) > 0 {
            out.push_str(&format!("{{%- set {name} = {} -%}}", {
                let depth = lcg.next(3);
                expression(lcg, depth)
            }));
        }
    }
    if lcg.next(20) == 0 {
        out.push_str("{% set link = 'x' %}");
    }
    out.push_str(r#"[{"type": "section", "text": {"type": "mrkdwn", "text": ""#);
    for _ in 0..1 + lcg.next(4) {
        match lcg.next(5) {
            0 => {
                let text: &&str = lcg.pick(&[" ", "*x* ", "\\n• ", "ü — ", "&lt;"]);
                out.push_str(text);
            }
            1 | 2 => out.push_str(&format!("{{{{ {} }}}}", {
                let depth = lcg.next(4);
                expression(lcg, depth)
            })),
            3 => out.push_str(&format!(
                "{{% if {} %}}[{{{{ {} }}}}]{{% else %}}({{{{ {} }}}}){{% endif %}}",
                expression(lcg, 1),
                expression(lcg, 2),
                expression(lcg, 0)
            )),
            _ => out.push_str(&format!(
                "{{%- if {} %}} {{{{ a }}}} {{%- endif %}}",
                expression(lcg, 1)
            )),
        }
    }
    out.push_str(r#""}}]"#);
    out
}

#[test]
fn generated_blocks_templates_render_as_minijinja_renders_them() {
    let p = pipeline();
    let env = template_environment();
    let mut values = oneline_values();
    values.extend(strings().into_iter().take(12).map(Some));
    values.push(Some(json!(1_764_166_920_000_i64)));
    let mut lcg = Lcg(29);
    let contexts: Vec<_> = (0..80)
        .map(|_| record_context(&p, &mut lcg, &values))
        .collect();
    let (mut finished, mut answered, mut compiled) = (0, 0, 0);
    for _ in 0..500 {
        let source = template(&mut lcg);
        let template = env.template_from_named_str(BLOCKS_TEMPLATE, &source);
        let fast = OneLine::compile_blocks(&env, &source);
        let (template, fast) = match (template, fast) {
            (Ok(template), Some(fast)) => (template, fast),
            // A source minijinja does not parse is not compiled either.
            (Err(_), None) => continue,
            (template, fast) => panic!(
                "{source:?}: parsed {}, compiled {}",
                template.is_ok(),
                fast.is_some()
            ),
        };
        compiled += 1;
        let (done, same) = compare(&source, &template, &fast, &contexts);
        finished += done;
        answered += same;
    }
    assert!(compiled > 400, "{compiled}");
    assert!(answered * 10 > finished * 5, "{answered} of {finished}");
}

/// Each new construct alone, so a wrong answer for one cannot hide
/// behind another's fallback: every render minijinja finishes is
/// answered, and equal.
#[test]
fn each_blocks_construct_renders_as_minijinja_renders_it() {
    let p = pipeline();
    let env = template_environment();
    let mut values = oneline_values();
    values.extend(strings().into_iter().map(Some));
    values.push(Some(json!(1_764_166_920_000_i64)));
    let mut lcg = Lcg(31);
    let contexts: Vec<_> = (0..300)
        .map(|_| record_context(&p, &mut lcg, &values))
        .collect();
    let cases: &[(&str, usize)] = &[
        (r#"{"t": "{{ event.data.s }}"}"#, 100),
        (
            r#"{"t": "{{ key }} {{ vars.markup }} {{ partition }}"}"#,
            200,
        ),
        (r#"{"t": "{{ event.data.o }} {{ event.data.labels }}"}"#, 10),
        ("{% set x = event.data.s %}{{ x }}{{ x }}", 100),
        ("{% set x = key %}{% set x = x ~ '!' %}{{ x }}", 200),
        ("{% set key = 'k' %}{{ key }}", 300),
        ("{{ event.data.s | truncate(5) }}", 100),
        (
            "{{ event.data.s | default('<none>') | truncate(2800) }}",
            300,
        ),
        (
            "{{ event.data.s | truncate(0) }}|{{ key | truncate(1) }}",
            50,
        ),
        ("{{ slack_user.slack_user_id | mention }}", 50),
        ("{{ event.data.s | mention }}", 100),
        (
            "{{ event.data.s | slack_date }} {{ 1764166920000 | slack_date }}",
            100,
        ),
        (
            "{{ event.data.s | markup }} {{ vars.markup | markup | markup }}",
            100,
        ),
        (
            "{{ link('https://x.test/?a=1&b=<2>', 'Docs & <more>') }}",
            300,
        ),
        ("{{ link(event.data.s) }} {{ link(vars.markup, key) }}", 100),
        (
            "{{ link('u', event.data.s | markup) }} {{ link('u', none) }}",
            100,
        ),
        ("{{ (event.data.s | mention) ~ '' }}", 100),
        ("{% if event.data.s | mention %}m{% endif %}", 100),
        ("{{ event.data.s or key }}", 100),
        ("{{ slack_user or vars.fallback_channel }}", 300),
    ];
    for &(source, least) in cases {
        let template = env
            .template_from_named_str(BLOCKS_TEMPLATE, source)
            .unwrap();
        let fast = OneLine::compile_blocks(&env, source).expect(source);
        let (finished, answered) = compare(source, &template, &fast, &contexts);
        assert!(
            answered == finished && finished >= least,
            "{source:?}: {answered} answered of {finished} finished"
        );
    }
}

/// Outside the blocks' subset: minijinja renders the template (decided
/// when the pipeline is built); `link` hidden by a context member or a
/// `set` is minijinja's to call.
#[test]
fn blocks_outside_the_subset_are_minijinjas() {
    let env = template_environment();
    for source in [
        "{{ key | upper }}",
        "{{ key | safe }}",
        "{{ key | tojson }}",
        "{{ key | truncate }}",
        "{{ key | truncate(n) }}",
        "{{ key | truncate(-1) }}",
        "{{ key | truncate(3, 4) }}",
        "{{ key | mention(1) }}",
        "{{ key | channel_mention }}",
        "{{ link() }}",
        "{{ link('a', 'b', 'c') }}",
        "{{ link(url='a') }}",
        "{{ range(3) }}",
        "{% for x in [1] %}{{ x }}{% endfor %}",
        "{% set a, b = 1, 2 %}{{ a }}",
        "{% set s %}x{% endset %}{{ s }}",
        "{% if key %}{% set x = 1 %}{% endif %}",
        "{% autoescape false %}{{ key }}{% endautoescape %}",
        "{% macro m() %}x{% endmacro %}{{ m() }}",
    ] {
        assert!(
            OneLine::compile_blocks(&env, source).is_none(),
            "{source:?} compiled"
        );
    }
    // The one-line subset stays as it was.
    for source in [
        "{% set x = 1 %}{{ x }}",
        "{{ key | truncate(3) }}",
        "{{ link('u') }}",
    ] {
        assert!(
            OneLine::compile(&env, source, oneline_escape()).is_none(),
            "{source:?}"
        );
        assert!(
            OneLine::compile_blocks(&env, source).is_some(),
            "{source:?}"
        );
    }

    let p = pipeline();
    let values = oneline_values();
    let mut lcg = Lcg(37);
    let context = record_context(&p, &mut lcg, &values);
    let shadowed = "{% set link = 'x' %}{{ link('u') }}";
    let fast = OneLine::compile_blocks(&env, shadowed).unwrap();
    assert_eq!(fast.render_blocks(&context, 0), None);
    assert!(env
        .template_from_named_str(BLOCKS_TEMPLATE, shadowed)
        .unwrap()
        .render(context.value())
        .is_err());
}

fn oneline_escape() -> super::super::oneline::Escape {
    super::super::oneline::Escape::None
}

/// Through `apply`: a pipeline whose blocks are in the subset emits what
/// the same pipeline emits when minijinja renders them, and rejects with
/// minijinja's error where a value is undefined.
#[test]
fn apply_emits_and_rejects_as_minijinja_does() {
    let mut p = reference_pipeline();
    assert!(p.blocks_fast.is_some());
    let tables = tables();
    let key = json!("org-1");
    let firing = event("Provisioning");
    let mut data: Json = serde_json::from_str(firing["data"].as_str().unwrap()).unwrap();
    data["labels"]["connector_old_status"] = json!("Failed");
    data["labels"]["connector_new_status"] = json!("Running");
    let mut resolved = event("Failed");
    resolved["data"] = json!(data.to_string());
    // `slack_date` of none prints `none`; of an undefined value (no
    // `time`) the print is an error.
    let mut time_null = resolved.clone();
    time_null["time"] = json!(null);
    let mut no_time = resolved.clone();
    no_time.as_object_mut().unwrap().remove("time");
    let events = [firing, resolved, time_null, no_time];
    let apply_all = |p: &Pipeline| -> Vec<Verdict> {
        events
            .iter()
            .map(|e| p.apply(&source(&key), e, &tables))
            .collect()
    };
    let fast = apply_all(&p);
    p.blocks_fast = None;
    let expected = apply_all(&p);
    assert_eq!(fast, expected);
    for verdict in &expected[..3] {
        assert!(matches!(verdict, Verdict::Emit(_)), "{verdict:?}");
    }
    assert!(
        matches!(expected[3], Verdict::Reject(_)),
        "{:?}",
        expected[3]
    );
}
