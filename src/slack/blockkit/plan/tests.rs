//! Planned checks against the full pass: for generated skeletons and
//! values, the same `Ok` bytes or the same error; and the escape facts the
//! plans rest on, for every character.

use std::ops::Range;

use super::super::escape::push_escaped_char;
use super::super::write_json_string_content;
use super::*;
use crate::test_rng::Lcg;

/// `text` escaped as a blocks template writes a value.
fn escaped(text: &str) -> String {
    let mut out = String::new();
    write_json_string_content(&mut out, text).expect("a String takes any text");
    out
}

/// A render of `skeleton` (`¤` marks a hole) with `values` escaped into
/// the holes: its text and the holes' ranges.
fn render(skeleton: &str, values: &[&str]) -> (String, Vec<Range<usize>>) {
    let mut text = String::new();
    let mut holes = Vec::new();
    for (i, literal) in skeleton.split('¤').enumerate() {
        if i > 0 {
            let start = text.len();
            text.push_str(&escaped(values[(i - 1) % values.len()]));
            holes.push(start..text.len());
        }
        text.push_str(literal);
    }
    (text, holes)
}

fn values() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        "a",
        "Acme & <Co>",
        "header",
        "section",
        "context",
        "actions",
        "divider",
        "plain_text",
        "mrkdwn",
        "button",
        "static_select",
        "image",
        "primary",
        "danger",
        "loud",
        "ü 🚀 é",
        "\"quoted\" \\ back",
        "line\nbreak\ttab",
        "\u{1}\u{1f}\u{7f}",
        "\u{F0000}",
        "\u{FFFFD}",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for n in [
        74, 75, 76, 149, 150, 151, 254, 255, 256, 1999, 2000, 2001, 2999, 3000, 3001,
    ] {
        v.push("x".repeat(n));
        v.push("é".repeat(n));
        // Two bytes escaped per character: over in bytes, maybe not in characters.
        v.push("\"".repeat(n));
        // Six bytes escaped per character.
        v.push("\u{1}".repeat(n));
    }
    v.push("🚀".repeat(40_001));
    v
}

/// Skeletons: the expected kind of plan (`Some(true)`: planned, `Some(false)`:
/// checked in full, `None`: either), and the text.
const SKELETONS: &[(Option<bool>, &str)] = &[
    (
        Some(true),
        r#"[{"type":"header","text":{"type":"plain_text","text":"¤"}}]"#,
    ),
    (
        Some(true),
        r#"[{"type": "header", "text": {"type": "plain_text", "text": ":x: ¤ and ¤", "emoji": true}}]"#,
    ),
    // Members out of order, holes moved with them.
    (
        Some(true),
        r#"[{"text":{"text":"*Org* ¤ (`¤`)","type":"mrkdwn"},"type":"section","fields":[{"type":"mrkdwn","text":"¤"},{"text":"a¤b","type":"mrkdwn","z":"¤"}]}]"#,
    ),
    // Duplicates: the first text (and its hole) dropped.
    (
        Some(true),
        r#"[{"type":"section","text":{"type":"mrkdwn","text":"¤"},"text":{"type":"mrkdwn","text":"x¤"}}]"#,
    ),
    (
        Some(true),
        r#"[{"type":"section","text":{"type":"mrkdwn","text":"¤","text":"¤¤"}}]"#,
    ),
    // A hole in a string no rule reads, and in a block id.
    (
        Some(true),
        r#"[{"type":"divider","x":"¤","block_id":"b¤"},{"type":"image","alt":"¤"}]"#,
    ),
    // Escapes around holes.
    (
        Some(true),
        r#"[{"type":"section","text":{"type":"mrkdwn","text":"\n¤\"¤\\\u00e9¤\u0001"}}]"#,
    ),
    (
        Some(true),
        r#"[{"type":"context","elements":[{"type":"image","image_url":"¤"},{"type":"mrkdwn","text":"Alert `¤` · ¤"}]}]"#,
    ),
    (
        Some(true),
        r#"[{"type":"actions","block_id":"alertsvc_actions","elements":[
        {"type":"button","action_id":"a¤","style":"primary","text":{"type":"plain_text","text":"¤"},"value":"¤"},
        {"type":"static_select","action_id":"¤","placeholder":{"type":"plain_text","text":"¤"},"options":[
            {"text":{"type":"plain_text","text":"¤"},"value":"¤"},{"value":"4h","text":{"type":"plain_text","text":"4 ¤"}}]},
        {"type":"button","text":{"type":"plain_text","text":"Open"},"url":"¤/environments/¤"}]}]"#,
    ),
    (
        Some(true),
        r#"[{"type":"section","text":{"type":"mrkdwn","text":"t"},"accessory":{"type":"button","text":{"type":"plain_text","text":"¤"},"value":"¤"}}]"#,
    ),
    // Holes in member names.
    (
        Some(false),
        r#"[{"type":"section","text":{"type":"mrkdwn","t¤":"a","text":"b"}}]"#,
    ),
    (
        Some(false),
        r#"[{"type":"section","¤":{"type":"mrkdwn","text":"b"}}]"#,
    ),
    // Holes in strings the rules compare.
    (
        Some(false),
        r#"[{"type":"¤","text":{"type":"plain_text","text":"h"}}]"#,
    ),
    (
        Some(false),
        r#"[{"type":"section","text":{"type":"¤","text":"a"}}]"#,
    ),
    (
        Some(false),
        r#"[{"type":"context","elements":[{"type":"¤","text":"c"}]}]"#,
    ),
    (
        Some(false),
        r#"[{"type":"actions","elements":[{"type":"button","text":{"type":"plain_text","text":"A"},"style":"¤"}]}]"#,
    ),
    (
        Some(false),
        r#"[{"type":"actions","elements":[{"type":"butto¤","text":{"type":"plain_text","text":"A"},"url":"¤"}]}]"#,
    ),
    // Not JSON once a placeholder stands in a hole: a hole outside a
    // string, after a lone backslash, inside an escape.
    (
        Some(false),
        r#"[{"type":"header","text":{"type":"plain_text","text":"h"},"n":¤}]"#,
    ),
    (
        Some(false),
        r#"[{"type":"header","text":{"type":"plain_text","text":"h\¤"}}]"#,
    ),
    (
        Some(false),
        r#"[{"type":"header","text":{"type":"plain_text","text":"h\u00¤"}}]"#,
    ),
    (
        Some(false),
        r#"[{"type":"header","text":{"type":"plain_text","text":"\ud83d¤"}}]"#,
    ),
    // Errors whatever the values are.
    (Some(false), r#"{"type":"header","text":"¤"}"#),
    (
        Some(false),
        r#"[{"type":"section","fields":[]},{"type":"header","text":{"type":"plain_text","text":"¤"}}]"#,
    ),
    (
        Some(false),
        r#"[{"type":"header","text":{"type":"plain_text","text":"¤"}},{"type":"nope"}]"#,
    ),
    (
        Some(false),
        r#"[{"type":"header","text":{"type":"plain_text","text":"¤"}}"#,
    ),
    // A placeholder in the skeleton itself, raw or escaped.
    (
        Some(false),
        "[{\"type\":\"header\",\"text\":{\"type\":\"plain_text\",\"text\":\"\u{F0000}¤\"}}]",
    ),
    (
        Some(false),
        r#"[{"type":"header","text":{"type":"plain_text","text":"\udb80\udc00¤"}}]"#,
    ),
    // No holes at all.
    (Some(true), r#"[{"type":"divider"}]"#),
    (
        None,
        r#"[{"type":"section","text":{"type":"mrkdwn","text":"¤"},"fields":[{"type":"mrkdwn","text":"¤"},{"type":"mrkdwn","text":"¤"},{"type":"mrkdwn","text":"¤"},{"type":"mrkdwn","text":"¤"},{"type":"mrkdwn","text":"¤"},{"type":"mrkdwn","text":"¤"}]},{"type":"context","elements":[{"type":"mrkdwn","text":"¤"}]}]"#,
    ),
];

#[test]
fn planned_renders_match_the_full_pass() {
    let values = values();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    let texts = ["fallback", " \n ", &"t".repeat(40_000), &"t".repeat(40_001)];
    let mut lcg = Lcg(7);
    for (i, &(expect, skeleton)) in SKELETONS.iter().enumerate() {
        let plans = Plans::new();
        let holes = skeleton.matches('¤').count();
        let mut oks = 0;
        for round in 0..300 {
            let picked: Vec<&str> = (0..holes.max(1)).map(|_| *lcg.pick(&values)).collect();
            let text = if round % 10 == 9 {
                *lcg.pick(&texts)
            } else {
                "fallback"
            };
            let (blocks, ranges) = render(skeleton, &picked);
            let planned = plans.check(text, &blocks, &ranges);
            assert_eq!(
                planned,
                check_rendered(text, &blocks),
                "skeleton {i} {skeleton} values {picked:?} text {}",
                text.len()
            );
            oks += usize::from(planned.is_ok());
        }
        let counts = plans.counts();
        assert_eq!(counts.0 + counts.1, 1, "skeleton {i}: one skeleton");
        if let Some(planned) = expect {
            assert_eq!(counts.0 == 1, planned, "skeleton {i} {skeleton}");
        }
        // Planned skeletons must also be seen to pass sometimes.
        if expect == Some(true) {
            assert!(oks > 0, "skeleton {i}: never passed");
        }
    }
}

/// The shapes of one skeleton with values at and around each limit, so
/// every noted limit is met and broken.
#[test]
fn each_limit_is_decided_as_the_full_pass_decides_it() {
    let skeleton = SKELETONS[8].1;
    let holes = skeleton.matches('¤').count();
    let plans = Plans::new();
    for value in values() {
        for at in 0..holes {
            let mut picked = vec!["v"; holes];
            picked[at] = &value;
            let (blocks, ranges) = render(skeleton, &picked);
            assert_eq!(
                plans.check("fallback", &blocks, &ranges),
                check_rendered("fallback", &blocks),
                "hole {at} value of {} bytes",
                value.len()
            );
        }
    }
    assert_eq!(plans.counts(), (1, 0));
}

#[test]
fn holes_that_are_not_escaped_values_are_checked_in_full() {
    let plans = Plans::new();
    let skeleton = SKELETONS[0].1;
    let (blocks, ranges) = render(skeleton, &["ok"]);
    assert!(plans.check("f", &blocks, &ranges).is_ok());
    let at = ranges[0].start;
    for (raw, why) in [
        ("a\"b", "a raw quote"),
        ("a\u{1}b", "a raw control character"),
        ("a\\u0008b", "a long escape serde_json writes short"),
        ("a\\u001Fb", "upper-case hex"),
        ("a\\/b", "an escaped slash"),
        ("a\\", "a lone backslash"),
    ] {
        let text = format!("{}{raw}{}", &blocks[..at], &blocks[ranges[0].end..]);
        let hole = at..at + raw.len();
        assert_eq!(
            plans.check("f", &text, std::slice::from_ref(&hole)),
            check_rendered("f", &text),
            "{why}"
        );
        assert!(!escaped_as_written(raw), "{why}");
    }
    // Out of order, out of the text, off a character boundary.
    let text = format!("{}é{}", &blocks[..at], &blocks[at..]);
    let (beyond, split) = (0..text.len() + 1, at..at + 1);
    let cases: [&[Range<usize>]; 3] = [
        &[3..4, 1..2],
        std::slice::from_ref(&beyond),
        std::slice::from_ref(&split),
    ];
    for holes in cases {
        assert_eq!(plans.check("f", &text, holes), check_rendered("f", &text));
    }
}

/// What the plans rest on, for every character: a value's escaped form
/// is what the canonical form writes for it (as the reader writes a
/// decoded character, and as serde_json writes a string), the check of
/// escaped forms takes it, and it counts as one character.
#[test]
fn every_character_is_escaped_as_the_canonical_form_writes_it() {
    for c in (0..=0x10_FFFF_u32).filter_map(char::from_u32) {
        let text = c.encode_utf8(&mut [0; 4]).to_owned();
        let written = escaped(&text);
        let mut bytes = Vec::new();
        push_escaped_char(&mut bytes, c);
        assert_eq!(bytes, written.as_bytes(), "{c:?}");
        assert!(escaped_as_written(&written), "{c:?}");
        assert_eq!(decoded_chars(&written), 1, "{c:?}");
        if !c.is_ascii() && u32::from(c) % 4099 != 0 {
            continue;
        }
        let serde = serde_json::to_string(&text).expect("a str serializes");
        assert_eq!(format!("\"{written}\""), serde, "{c:?}");
    }
}

#[test]
fn no_placeholder_fits_in_a_skeleton() {
    assert!(placeholder_free(r#"[{"a":"é 🚀 \u00e9 \ud83d\ude80"}]"#));
    assert!(!placeholder_free("\u{F0000}"));
    assert!(!placeholder_free("\u{C0000}"));
    assert!(!placeholder_free(r"\uDB80\uDC00"));
    assert!(!placeholder_free(r"\udbff"));
    assert_eq!(placeholder(0), Some('\u{F0000}'));
    assert_eq!(hole_of('\u{F0000}', 1), Some(0));
    assert_eq!(hole_of('\u{F0001}', 1), None);
    assert_eq!(hole_of('a', 1), None);
    assert!(in_member_name(r#"{"ab":"c"}"#, 3));
    assert!(!in_member_name(r#"{"ab":"c\"d"}"#, 8));
}
