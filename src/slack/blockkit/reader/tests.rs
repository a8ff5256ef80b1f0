//! The reader against the serde_json path: every document it takes is
//! written and read exactly as that path writes and reads it, and every
//! document it leaves is one serde_json refuses or one it is not sure of.

use serde_json::Value;

use super::{canonical_shaped, Bail, MAX_DEPTH};
use crate::slack::blockkit::canonical::serde_shaped;
use crate::slack::blockkit::canonical_json;

mod generated;

fn reader(text: &str) -> Result<String, Bail> {
    canonical_shaped::<()>(text).map(|(out, ())| out)
}

fn serde(text: &str) -> Result<String, String> {
    serde_shaped::<()>(text)
        .map(|(out, ())| out)
        .map_err(|e| e.to_string())
}

/// The reader takes `text` and writes what the serde_json path and
/// `Value::to_string` write.
fn takes(text: &str) {
    let expected = serde(text).unwrap_or_else(|e| panic!("serde_json refused {text:?}: {e}"));
    assert_eq!(reader(text), Ok(expected.clone()), "{text:?}");
    let tree = serde_json::from_str::<Value>(text).map(|v| v.to_string());
    assert_eq!(tree.ok(), Some(expected), "{text:?}");
}

/// What the reader takes, serde_json takes and writes the same; true when
/// the reader took `text`. (It leaves some that serde_json takes: names
/// with escapes.)
fn agrees(text: &str) -> bool {
    let expected = serde(text);
    assert_eq!(canonical_json(text).map_err(|e| e.to_string()), expected);
    match reader(text) {
        Ok(out) => {
            assert_eq!(Ok(out), expected, "{text:?}");
            true
        }
        Err(Bail) => false,
    }
}

/// The reader leaves `text` to serde_json, which refuses it.
fn refuses(text: &str) {
    assert_eq!(reader(text), Err(Bail), "{text:?}");
    assert!(serde(text).is_err(), "serde_json took {text:?}");
    assert_eq!(canonical_json(text).map_err(|e| e.to_string()), serde(text));
}

#[test]
fn escapes_are_read_and_written_as_serde_json_does() {
    for text in [
        r#""plain""#,
        r#""""#,
        r#""\" \\ \/ \b \f \n \r \t""#,
        r#""\u0000 \u0001 \u0008 \u0009 \u000a \u000C \u001f \u001F \u0020 \u007f""#,
        r#""\u00e9 \u00E9 \u2028 \uffff \uFFFD \u0041\u0042""#,
        r#""\ud83d\ude00 \uD83D\uDE00 \uDBFF\uDFFF \uD800\uDC00""#,
        r#""a\"""#,
        r#""\\""#,
        r#""\u005c\u0022 \u002F""#,
        "\"raw \u{7f} é ✓ 🚨 / \"",
        "\"mixed é \\n 🚨 \\ud83d\\udea8 \u{7f}\\u007f\"",
        r#"{"type": "a\nb\u0000"}"#,
    ] {
        takes(text);
    }
}

/// A member name with an escape is left to serde_json, which writes it.
#[test]
fn escaped_names_are_left_to_serde_json() {
    for text in [
        r#"{"\u0074ype": "a\nb", "t\"": 1, "\\": 2}"#,
        r#"{"a":1,"\u0061":2}"#,
        r#"{"": 0, "é": 1, "\u00e9": 6}"#,
        r#"[{"type": "divider"}, {"t\u0065xt": 1}]"#,
    ] {
        assert_eq!(reader(text), Err(Bail), "{text}");
        let tree = serde_json::from_str::<Value>(text).map(|v| v.to_string());
        assert_eq!(canonical_json(text).ok(), tree.ok(), "{text}");
    }
}

#[test]
fn bad_and_lone_escapes_are_left_to_serde_json() {
    for text in [
        r#""\q""#,
        r#""\u12""#,
        r#""\u12g4""#,
        r#""\uD800""#,
        r#""\uDC00""#,
        r#""\uDE00\uD83D""#,
        r#""\uD83D\u0041""#,
        r#""\uD83Dx""#,
        r#""\uD83D\n""#,
        r#""\uD83D\uD83D""#,
        r#""\"#,
        r#""\u"#,
        r#""unterminated"#,
        "\"raw \n newline\"",
        "\"raw \u{1} control\"",
        "\"raw \u{1f}\"",
        "{\"na\tme\": 1}",
    ] {
        refuses(text);
    }
}

#[test]
fn numbers_are_written_as_serde_json_writes_them() {
    for text in [
        "0",
        "-1",
        "7",
        "123",
        "-123",
        "999999999999999999",
        "-999999999999999999",
        "1000000000000000000",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775807",
        "-9223372036854775808",
        "-9223372036854775809",
        "-18446744073709551616",
        "123456789012345678901234567890",
        "-0",
        "0.0",
        "-0.0",
        "1.5",
        "-1.5",
        "0.1",
        "1e3",
        "1E3",
        "1e+3",
        "1e-3",
        "-1E-3",
        "1.25e-7",
        "2.5E+10",
        "0e0",
        "-0e-0",
        "5e-324",
        "1e-400",
        "1.7976931348623157e308",
        "123456789012345678901234567890.5e-10",
        "3.141592653589793238462643383279",
        "[1,-2,3.5,1e3,1.0,-0,0]",
    ] {
        takes(text);
    }
    for text in [
        "01", "-01", "1.", ".5", "-", "1e", "1e+", "+1", "1.e3", "--1", "1x", "1e400", "-1e400",
    ] {
        refuses(text);
    }
}

#[test]
fn whitespace_literals_and_the_end() {
    for text in [
        " \t\n\r[ 1 , { \"a\" : [ ] , \"b\" :{ } } , true,false , null ] \r\n\t ",
        "[]",
        "{}",
        "[ ]",
        "{ }",
        "true",
        "false",
        "null",
        "[[],[[]],{}]",
    ] {
        takes(text);
    }
    for text in [
        "",
        "   ",
        "[] x",
        "[],",
        "[1,]",
        "{\"a\":1,}",
        "[1 2]",
        "{\"a\" 1}",
        "{\"a\":}",
        "{a:1}",
        "{1:1}",
        "[",
        "{",
        "]",
        "tru",
        "nul",
        "truex",
        "[null1]",
        "\u{c}[]",
        "[\u{a0}]",
        "'a'",
    ] {
        refuses(text);
    }
}

#[test]
fn members_in_name_order_and_the_last_of_duplicates_kept() {
    for text in [
        r#"{"a":1,"b":2}"#,
        r#"{"b":1,"a":2}"#,
        r#"{"a":1,"a":2}"#,
        r#"{"a":2,"a":1,"a":[3]}"#,
        r#"{"b":1,"a":2,"b":{"c":1,"c":[],"a":0}}"#,
        r#"{"a":{"x":1},"a":{"y":2}}"#,
        r#"{"z":{"b":[{"d":1,"c":2}],"a":0},"y":[{"q":1,"p":{"s":1,"r":2}}],"z":5}"#,
        r#"{"": 0, "é": 1, "e": 2, "E": 3, "ab": 4, "a": 5, "ü": 6}"#,
        r#"[{"type":"section","text":{"type":"mrkdwn","text":"x"}},{"b":1,"a":2}]"#,
    ] {
        takes(text);
    }
}

fn nested(depth: usize) -> String {
    let mut text = "[".repeat(depth);
    text.push_str(&"]".repeat(depth));
    text
}

#[test]
fn deep_nesting_is_left_to_serde_json() {
    takes(&nested(MAX_DEPTH as usize));
    let object = format!("{}1{}", r#"{"a":"#.repeat(100), "}".repeat(100));
    takes(&object);
    for depth in [MAX_DEPTH as usize + 1, 127, 128, 500] {
        let text = nested(depth);
        assert_eq!(reader(&text), Err(Bail), "{depth}");
        assert_eq!(
            canonical_json(&text).map_err(|e| e.to_string()),
            serde(&text)
        );
    }
}

/// A member's 8-byte key orders names as `str` does, whether the name is
/// read with one load (text after it) or byte by byte (at the text's end).
#[test]
fn name_keys_order_names_as_str_does() {
    let names = [
        "",
        "a",
        "ab",
        "abc",
        "type",
        "text",
        "emoji",
        "elements",
        "element",
        "elementsx",
        "action_id",
        "action_i",
        "placeholder",
        "é",
        "z",
        "~",
        "aaaaaaa",
        "aaaaaaaa",
        "aaaaaaaab",
        "aaaaaaab",
        "\u{7f}",
        "ü_name_longer_than_eight",
    ];
    let keys = |name: &str| {
        let followed = format!("{name}\":\"zzzzzzzzzzzz");
        [
            super::name_key(followed.as_bytes(), 0, name.len()),
            super::name_key(name.as_bytes(), 0, name.len()),
        ]
    };
    for a in names {
        let [a_load, a_bytes] = keys(a);
        assert_eq!(a_load, a_bytes, "{a:?}");
        for b in names {
            let [b_key, _] = keys(b);
            assert_eq!(
                a_load.cmp(&b_key).then_with(|| a.cmp(b)),
                a.cmp(b),
                "{a:?} {b:?}"
            );
        }
    }
}
