//! Rows as one `jsonb` value, for the multi-row writes other modules hand
//! the writer as an [`super::super::Op::Statement`] (whose values are
//! scalars: the alert-state publisher's marks). PostgreSQL reads them back
//! with `jsonb_array_elements`.
//!
//! A `VALUES` list of n rows of `$n` placeholders is a different statement
//! text for every n: the server parses and plans it anew each time, and
//! sqlx describes it first (a round trip more). With the rows in `$1`, the
//! statement has one text, prepared once per connection. (The writer's own
//! merged statements take their rows as arrays: `columns`.)

use std::fmt::Write;

use super::conn::Val;

/// `values`, `width` to a row, as one JSON array of arrays.
pub(super) fn encode(values: &[Val<'_>], width: usize) -> String {
    // Room for every value as it is, its quotes and comma, and the rows'
    // brackets: one allocation unless something needs escaping.
    let texts: usize = values
        .iter()
        .map(|value| match value {
            Val::Text(Some(text)) => text.len() + 3,
            _ => 21,
        })
        .sum();
    let mut json = String::with_capacity(texts + 2 * values.len() / width.max(1) + 2);
    json.push('[');
    for (r, row) in values.chunks(width.max(1)).enumerate() {
        if r > 0 {
            json.push(',');
        }
        json.push('[');
        for (i, value) in row.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            match value {
                Val::Text(Some(text)) => push_string(&mut json, text),
                // `itoa`, not `write!`: the formatting machinery was a
                // quarter of this function's instructions (callgrind).
                Val::Int(Some(int)) => json.push_str(itoa::Buffer::new().format(*int)),
                Val::Text(None) | Val::Int(None) => json.push_str("null"),
            }
        }
        json.push(']');
    }
    json.push(']');
    json
}

/// `text` as a JSON string. PostgreSQL's `jsonb` refuses `\u0000`, as its
/// `text` refuses a NUL byte: such a value fails its statement either way.
fn push_string(json: &mut String, text: &str) {
    json.push('"');
    // Runs needing no escape are copied whole: the rendered blocks a first
    // state carries are kilobytes with a few quotes.
    let bytes = text.as_bytes();
    let mut run = 0;
    while let Some(i) = next_escape(bytes, run) {
        // Every byte escaped is ASCII, so `run` and `i` are char boundaries.
        json.push_str(&text[run..i]);
        match bytes[i] {
            b'"' => json.push_str("\\\""),
            b'\\' => json.push_str("\\\\"),
            b'\n' => json.push_str("\\n"),
            b'\r' => json.push_str("\\r"),
            b'\t' => json.push_str("\\t"),
            byte => {
                let _ = write!(json, "\\u{byte:04x}");
            }
        }
        run = i + 1;
    }
    json.push_str(&text[run..]);
    json.push('"');
}

/// Whether JSON needs `byte` escaped in a string.
fn escaped(byte: u8) -> bool {
    byte == b'"' || byte == b'\\' || byte < 0x20
}

/// The first byte at or after `from` that [`escaped`] holds for. Eight
/// bytes are tested at a time (the byte-by-byte loop was most of
/// [`encode`]'s instructions): a word has a byte below 0x20, a quote or a
/// backslash exactly when these bit tests say so ("Bit Twiddling Hacks",
/// `hasless` and `haszero`).
fn next_escape(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS;
    let mut at = from;
    for chunk in bytes.get(from..)?.chunks_exact(8) {
        let Ok(chunk) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let word = u64::from_ne_bytes(chunk);
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        if below(word, 0x20) | below(quote, 1) | below(backslash, 1) != 0 {
            break;
        }
        at += 8;
    }
    bytes
        .get(at..)?
        .iter()
        .position(|&byte| escaped(byte))
        .map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_json_arrays_of_rows() {
        let values = [
            Val::Text(Some("a\"b\\c\n\u{1}é")),
            Val::Int(Some(-9_007_199_254_740_993)),
            Val::Text(None),
            Val::Int(None),
        ];
        let json = encode(&values, 2);
        assert_eq!(
            json,
            r#"[["a\"b\\c\n\u0001é",-9007199254740993],[null,null]]"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(parsed[0][0], "a\"b\\c\n\u{1}é");
        assert_eq!(encode(&[], 3), "[]");
        let ints = [i64::MIN, -1, 0, 7, i64::MAX].map(|int| Val::Int(Some(int)));
        assert_eq!(
            encode(&ints, 5),
            "[[-9223372036854775808,-1,0,7,9223372036854775807]]"
        );
    }

    #[test]
    fn every_text_reads_back_as_it_was() {
        let controls: String = (0u8..0x20).map(char::from).collect();
        let texts = [
            String::new(),
            controls.clone(),
            format!("é{controls}ü\"\\€"),
            "*Connector failed* — \"org-1\"\n".repeat(100),
            "ascii only".into(),
        ];
        for text in &texts {
            let json = encode(&[Val::Text(Some(text))], 1);
            let parsed: Vec<Vec<String>> = serde_json::from_str(&json).expect("valid JSON");
            assert_eq!(parsed, vec![vec![text.clone()]], "{json}");
        }
    }

    /// Each byte that needs escaping, and some that do not (the bytes
    /// either side of each test's limits, a multi-byte character), at every
    /// place in and across the eight-byte words, in long plain runs: the
    /// same text as serde_json writes.
    #[test]
    fn escapes_are_found_wherever_they_fall_in_a_word() {
        let specials = ["\"", "\\", "\u{0}", "\u{1f}", "\n", "\t", "\r"];
        let plain = [" ", "!", "#", "[", "]", "\u{7f}", "é", "€"];
        for special in specials.iter().chain(&plain) {
            for before in 0..20 {
                for after in [0, 1, 7, 8, 9, 23] {
                    let text = format!("{}{special}{}", "a".repeat(before), "b".repeat(after));
                    let ours = encode(&[Val::Text(Some(&text))], 1);
                    let theirs = format!("[[{}]]", serde_json::to_string(&text).expect("JSON"));
                    assert_eq!(ours, theirs, "{text:?}");
                }
            }
        }
        assert_eq!(next_escape(b"abc", 3), None);
        assert_eq!(next_escape(b"abc", 4), None);
        assert_eq!(next_escape(b"a\"cdefghij\"", 2), Some(10));
    }
}
