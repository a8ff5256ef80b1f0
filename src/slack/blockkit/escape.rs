//! JSON string escaping, written once for the two places that write JSON
//! text without serde_json: enrich's template output and the canonical
//! form of rendered blocks.

use std::fmt;

/// Writes `text` as the inside of a JSON string literal (no quotes),
/// escaped exactly as serde_json escapes it; unescaped runs are copied as
/// they are.
pub fn write_json_string_content<W: fmt::Write + ?Sized>(out: &mut W, text: &str) -> fmt::Result {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, byte) in text.bytes().enumerate() {
        let short = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.write_str(&text[start..i])?;
        if short.is_empty() {
            out.write_str("\\u00")?;
            out.write_char(char::from(HEX[usize::from(byte >> 4)]))?;
            out.write_char(char::from(HEX[usize::from(byte & 0xf)]))?;
        } else {
            out.write_str(short)?;
        }
        start = i + 1;
    }
    out.write_str(&text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(text: &str) -> String {
        let mut out = String::new();
        write_json_string_content(&mut out, text).expect("a String takes any text");
        out
    }

    #[test]
    fn escapes_as_serde_json_does() {
        let every_control: String = (0u8..0x20).map(char::from).collect();
        for text in [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "lines\nand\r\ttabs",
            "\u{7f} é ✓ 🚨",
            &every_control,
        ] {
            let serde = serde_json::to_string(text).expect("a str serializes");
            assert_eq!(format!("\"{}\"", escaped(text)), serde, "{text:?}");
        }
    }

    /// enrich wrote these two as `\u0008` and `\u000c` before it used this
    /// function; its rendered blocks are canonicalised before they leave,
    /// so what it emits is the same either way.
    #[test]
    fn backspace_and_form_feed_canonicalise_alike_in_either_spelling() {
        let blocks = |inside: &str| {
            format!(r#"[{{"type":"section","text":{{"type":"mrkdwn","text":"{inside}"}}}}]"#)
        };
        let long = blocks(r"a\u0008b\u000cc");
        let short = blocks(&escaped("a\u{8}b\u{c}c"));
        assert_eq!(short, blocks(r"a\bb\fc"));
        assert_eq!(
            super::super::canonical_json(&long).expect("valid JSON"),
            super::super::canonical_json(&short).expect("valid JSON")
        );
    }
}
