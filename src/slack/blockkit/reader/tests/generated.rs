//! Generated documents, and edits of them, through the reader and the
//! serde_json path.

use super::{agrees, reader, serde};
use crate::slack::blockkit::canonical_json;
use crate::slack::blockkit::reader::{canonical_shaped, Bail};
use crate::slack::blockkit::scan::{canonical_checked, canonical_checked_by_serde, Block, List};

/// Random JSON text: nested values, keys often repeated, escapes of every
/// kind, numbers of every form, whitespace here and there.
struct Gen {
    rng: fastrand::Rng,
    out: String,
}

impl Gen {
    fn ws(&mut self) {
        while self.rng.u8(..4) == 0 {
            let c = [' ', '\t', '\n', '\r'][self.rng.usize(..4)];
            self.out.push(c);
        }
    }

    fn value(&mut self, depth: u32) {
        self.ws();
        match self.rng.u8(..10) {
            0..=2 if depth < 5 => self.object(depth + 1),
            3..=4 if depth < 5 => self.array(depth + 1),
            0..=5 => self.string(),
            6..=8 => self.number(),
            _ => {
                let word = ["true", "false", "null"][self.rng.usize(..3)];
                self.out.push_str(word);
            }
        }
        self.ws();
    }

    fn object(&mut self, depth: u32) {
        self.out.push('{');
        self.ws();
        for i in 0..self.rng.usize(..6) {
            if i > 0 {
                self.out.push(',');
            }
            self.ws();
            self.key();
            self.ws();
            self.out.push(':');
            self.value(depth);
        }
        self.out.push('}');
    }

    fn array(&mut self, depth: u32) {
        self.out.push('[');
        self.ws();
        for i in 0..self.rng.usize(..5) {
            if i > 0 {
                self.out.push(',');
            }
            self.value(depth);
        }
        self.out.push(']');
    }

    fn key(&mut self) {
        const KEYS: [&str; 9] = [
            r#""type""#,
            r#""text""#,
            r#""a""#,
            r#""b""#,
            r#""é""#,
            r#""""#,
            r#""A""#,
            "\"\u{7f}\"",
            r#""a b/c""#,
        ];
        // A name with an escape leaves the document to serde_json.
        if self.rng.u8(..40) == 0 {
            self.string();
        } else {
            self.out.push_str(KEYS[self.rng.usize(..KEYS.len())]);
        }
    }

    fn string(&mut self) {
        const PIECES: [&str; 24] = [
            "a",
            "Z",
            " ",
            "0",
            "é",
            "🚨",
            "\u{7f}",
            "\u{80}",
            "/",
            "'",
            "plain text ",
            r#"\""#,
            r"\\",
            r"\/",
            r"\b",
            r"\f",
            r"\n",
            r"\r",
            r"\t",
            r"\u0000",
            r"\u001F",
            r"\u00e9",
            r"\uD83D\uDE00",
            r"\u2028",
        ];
        self.out.push('"');
        for _ in 0..self.rng.usize(..10) {
            if self.rng.u8(..8) == 0 {
                // Any character by its escape, a surrogate pair above the BMP.
                let c = self.rng.char(..);
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let hex = format!("\\u{unit:04x}");
                    let hex = if self.rng.bool() {
                        hex.to_uppercase().replace("\\U", "\\u")
                    } else {
                        hex
                    };
                    self.out.push_str(&hex);
                }
            } else {
                self.out.push_str(PIECES[self.rng.usize(..PIECES.len())]);
            }
        }
        self.out.push('"');
    }

    fn number(&mut self) {
        if self.rng.u8(..3) == 0 {
            self.out.push('-');
        }
        let digits = [1, 1, 2, 5, 17, 18, 19, 20, 21, 30][self.rng.usize(..10)];
        for i in 0..digits {
            let low = if i == 0 && digits > 1 { 1 } else { 0 };
            self.out.push(char::from(b'0' + self.rng.u8(low..10)));
        }
        if self.rng.u8(..4) == 0 {
            self.out.push('.');
            for _ in 0..self.rng.usize(1..20) {
                self.out.push(char::from(b'0' + self.rng.u8(..10)));
            }
        }
        if self.rng.u8(..5) == 0 {
            self.out.push(['e', 'E'][self.rng.usize(..2)]);
            match self.rng.u8(..3) {
                0 => self.out.push('+'),
                1 => self.out.push('-'),
                _ => {}
            }
            let exp = self.rng.u32(..330);
            self.out.push_str(&exp.to_string());
        }
    }
}

/// Small edits that make most documents invalid, and some valid in a
/// different way.
fn mutate(rng: &mut fastrand::Rng, text: &str) -> String {
    const INSERTS: [&str; 18] = [
        "\"", "\\", ",", ":", "{", "}", "[", "]", " ", "0", "-", "e", ".", "u", "\u{1}", "x",
        "\\u", "\\uD83D",
    ];
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..rng.usize(1..4) {
        let at = rng.usize(..=chars.len());
        match rng.u8(..3) {
            0 if at < chars.len() => {
                let end = (at + rng.usize(1..4)).min(chars.len());
                chars.drain(at..end);
            }
            1 if at < chars.len() => {
                let end = (at + rng.usize(1..8)).min(chars.len());
                let copy: Vec<char> = chars[at..end].to_vec();
                chars.splice(at..at, copy);
            }
            _ => {
                let insert = INSERTS[rng.usize(..INSERTS.len())];
                chars.splice(at..at, insert.chars());
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn generated_and_mutated_documents_come_out_as_serde_json_writes_them() {
    let mut gen = Gen {
        rng: fastrand::Rng::with_seed(13),
        out: String::new(),
    };
    let (mut taken, mut mutated_taken) = (0, 0);
    for _ in 0..4000 {
        gen.out.clear();
        gen.value(0);
        let text = gen.out.clone();
        // Generated numbers may be out of a float's range: both refuse.
        taken += usize::from(agrees(&text));
        let bad = mutate(&mut gen.rng, &text);
        match reader(&bad) {
            Ok(out) => {
                mutated_taken += 1;
                assert_eq!(serde(&bad), Ok(out), "{bad:?}");
            }
            Err(Bail) => {
                assert_eq!(canonical_json(&bad).map_err(|e| e.to_string()), serde(&bad));
            }
        }
    }
    assert!(taken > 2000, "{taken}");
    // Some edits leave valid JSON: those are compared too.
    assert!(mutated_taken > 100, "{mutated_taken}");
}

/// Random Block Kit: objects of the members the limits read (and others),
/// in any order, often repeated, with values of the right and wrong kinds.
fn block_kit(rng: &mut fastrand::Rng, out: &mut String, depth: u32) {
    const NAMES: [&str; 15] = [
        "type",
        "text",
        "block_id",
        "fields",
        "accessory",
        "elements",
        "value",
        "action_id",
        "url",
        "style",
        "placeholder",
        "options",
        "emoji",
        "alt_text",
        "image_url",
    ];
    const WORDS: [&str; 16] = [
        "section",
        "header",
        "context",
        "actions",
        "divider",
        "image",
        "button",
        "static_select",
        "plain_text",
        "mrkdwn",
        "primary",
        "danger",
        "nope",
        "",
        " ",
        "a\\nb",
    ];
    match rng.u8(..12) {
        0..=4 if depth < 5 => {
            out.push('{');
            for i in 0..rng.usize(..7) {
                if i > 0 {
                    out.push(',');
                }
                out.push('"');
                out.push_str(NAMES[rng.usize(..NAMES.len())]);
                out.push_str("\":");
                block_kit(rng, out, depth + 1);
            }
            out.push('}');
        }
        5..=6 if depth < 5 => {
            out.push('[');
            let len = [0, 1, 2, 3, 10, 11, 26, 51][rng.usize(..8)];
            for i in 0..len {
                if i > 0 {
                    out.push(',');
                }
                block_kit(rng, out, depth + 1);
            }
            out.push(']');
        }
        0..=8 => {
            out.push('"');
            out.push_str(WORDS[rng.usize(..WORDS.len())]);
            out.push('"');
        }
        9 => {
            let len = [1, 75, 76, 150, 151, 256, 2001, 3001][rng.usize(..8)];
            let c = ["x", "é", "\\u00e9"][rng.usize(..3)];
            out.push('"');
            out.push_str(&c.repeat(len));
            out.push('"');
        }
        10 => out.push_str(["1", "-0", "2.5", "null", "true"][rng.usize(..5)]),
        _ => out.push_str("{\"type\":\"plain_text\",\"text\":\"ok\"}"),
    }
}

/// Members as written, in a random order, some left out, some repeated
/// with another value (the last counts), some values swapped for noise.
fn object(rng: &mut fastrand::Rng, members: Vec<(&str, String)>) -> String {
    let mut chosen = Vec::new();
    for (name, value) in members {
        if rng.u8(..10) == 0 {
            continue;
        }
        let value = if rng.u8(..12) == 0 {
            let mut noise = String::new();
            block_kit(rng, &mut noise, 3);
            noise
        } else {
            value
        };
        if rng.u8(..10) == 0 {
            let mut other = String::new();
            block_kit(rng, &mut other, 3);
            chosen.push((name, other));
        }
        chosen.push((name, value));
    }
    if rng.u8(..8) == 0 {
        rng.shuffle(&mut chosen);
    }
    let members: Vec<String> = chosen
        .into_iter()
        .map(|(name, value)| format!("\"{name}\" : {value}"))
        .collect();
    format!("{{{}}}", members.join(", "))
}

fn text_object(rng: &mut fastrand::Rng, plain: bool) -> String {
    let kind = if plain || rng.bool() {
        "plain_text"
    } else {
        "mrkdwn"
    };
    let len = [1, 1, 5, 75, 76, 150, 151, 2001, 3001][rng.usize(..9)];
    let text = ["x", "é", "\\n", "\\u00e9"][rng.usize(..4)].repeat(len);
    object(
        rng,
        vec![
            ("type", format!("\"{kind}\"")),
            ("text", format!("\"{text}\"")),
        ],
    )
}

fn list(rng: &mut fastrand::Rng, item: impl Fn(&mut fastrand::Rng) -> String) -> String {
    let len = match rng.u8(..20) {
        0 => [0, 10, 11, 26, 51, 101][rng.usize(..6)],
        _ => rng.usize(1..4),
    };
    let items: Vec<String> = (0..len).map(|_| item(rng)).collect();
    format!("[{}]", items.join(","))
}

fn element(rng: &mut fastrand::Rng) -> String {
    if rng.bool() {
        let style = ["\"primary\"", "\"danger\"", "\"loud\""][rng.usize(..3)];
        let members = vec![
            ("type", "\"button\"".to_owned()),
            ("action_id", "\"a\"".to_owned()),
            ("text", text_object(rng, true)),
            ("value", "\"v\"".to_owned()),
            ("url", "\"https://example.com/\\u00e9\"".to_owned()),
            ("style", style.to_owned()),
        ];
        object(rng, members)
    } else {
        let option = |rng: &mut fastrand::Rng| {
            let members = vec![
                ("text", text_object(rng, true)),
                ("value", "\"1h\"".to_owned()),
            ];
            object(rng, members)
        };
        let members = vec![
            ("type", "\"static_select\"".to_owned()),
            ("action_id", "\"m\"".to_owned()),
            ("placeholder", text_object(rng, true)),
            ("options", list(rng, option)),
        ];
        object(rng, members)
    }
}

fn block(rng: &mut fastrand::Rng) -> String {
    let members = match rng.u8(..6) {
        0 => vec![
            ("type", "\"header\"".to_owned()),
            ("text", text_object(rng, true)),
        ],
        1 => vec![
            ("type", "\"section\"".to_owned()),
            ("text", text_object(rng, false)),
            ("fields", list(rng, |rng| text_object(rng, false))),
            ("accessory", element(rng)),
        ],
        2 => vec![
            ("type", "\"context\"".to_owned()),
            ("elements", list(rng, |rng| text_object(rng, false))),
        ],
        3 => vec![
            ("type", "\"actions\"".to_owned()),
            ("block_id", "\"b\"".to_owned()),
            ("elements", list(rng, element)),
        ],
        4 => vec![("type", "\"divider\"".to_owned())],
        _ => {
            let mut noise = String::new();
            block_kit(rng, &mut noise, 1);
            return noise;
        }
    };
    object(rng, members)
}

#[test]
fn generated_block_kit_gets_the_serde_json_paths_answer() {
    let mut rng = fastrand::Rng::with_seed(2);
    let (mut accepted, mut refused, mut taken) = (0, 0, 0);
    for _ in 0..1500 {
        let blocks = list(&mut rng, block);
        // Not taken: a name with an escape in the noise.
        taken += usize::from(canonical_shaped::<List<'_, Block<'_>>>(&blocks).is_ok());
        let fast = canonical_checked("fallback", &blocks);
        let slow = canonical_checked_by_serde("fallback", &blocks);
        assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{blocks}");
        if fast.is_ok() {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    // Both answers were compared, often, and mostly from the reader.
    assert!(accepted > 100 && refused > 100, "{accepted} {refused}");
    assert!(taken > 1400, "{taken}");
}
