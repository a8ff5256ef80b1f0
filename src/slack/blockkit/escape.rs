//! JSON string escaping, written once for the two places that write JSON
//! text without serde_json: enrich's template output and the canonical
//! form of rendered blocks.

use std::fmt;

/// Writes `text` as the inside of a JSON string literal (no quotes),
/// escaped exactly as serde_json escapes it; unescaped runs are copied as
/// they are.
pub fn write_json_string_content<W: fmt::Write + ?Sized>(out: &mut W, text: &str) -> fmt::Result {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    let mut start = 0;
    loop {
        let i = next_escape(bytes, start);
        // Escaped bytes are ASCII, so `i` is on a char boundary.
        out.write_str(&text[start..i])?;
        let Some(&byte) = bytes.get(i) else {
            return Ok(());
        };
        match ESCAPE[usize::from(byte)] {
            b'u' => {
                out.write_str("\\u00")?;
                out.write_char(char::from(HEX[usize::from(byte >> 4)]))?;
                out.write_char(char::from(HEX[usize::from(byte & 0xf)]))?;
            }
            short => {
                out.write_char('\\')?;
                out.write_char(char::from(short))?;
            }
        }
        start = i + 1;
    }
}

/// The index of the first byte at or after `from` that must be escaped,
/// or `bytes.len()`. Rendered blocks are mostly plain text, so sixteen
/// bytes are tested at a time ([`flagged`]), then eight (as serde_json's
/// reader skips them); only the last few bytes of the text are looked at
/// one by one.
pub(super) fn next_escape(bytes: &[u8], from: usize) -> usize {
    let Some(rest) = bytes.get(from..) else {
        return from;
    };
    let (blocks, tail) = rest.as_chunks::<16>();
    for (i, block) in blocks.iter().enumerate() {
        let mask = flagged(block);
        if mask != 0 {
            return from + i * 16 + mask.trailing_zeros() as usize;
        }
    }
    let from = from + blocks.len() * 16;
    let (words, _) = tail.as_chunks::<8>();
    for (i, word) in words.iter().enumerate() {
        let found = flagged_word(u64::from_le_bytes(*word));
        if found != 0 {
            return from + i * 8 + (found.trailing_zeros() / 8) as usize;
        }
    }
    let mut at = from + words.len() * 8;
    while let Some(&byte) = bytes.get(at) {
        if ESCAPE[usize::from(byte)] != 0 {
            break;
        }
        at += 1;
    }
    at
}

/// Bit `i` set when byte `i` of `block` must be escaped (SSE2, which every
/// x86_64 has: one compare per kind for all sixteen bytes).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
fn flagged(block: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: the build enables SSE2 (the `cfg` above), so its intrinsics
    // run on this machine; `block` is sixteen readable bytes, and `loadu`
    // takes any alignment.
    let mask = unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // A byte is below 0x20 exactly when the unsigned minimum of it and
        // 0x1f is itself.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control))
    };
    // The sixteen sign bits: the other bits of the i32 are zero.
    mask as u32
}

/// [`flagged`] without SSE2: two words.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
fn flagged(block: &[u8; 16]) -> u32 {
    let (words, _) = block.as_chunks::<8>();
    let mut mask = 0;
    for (half, word) in words.iter().enumerate() {
        let found = flagged_word(u64::from_le_bytes(*word));
        if found != 0 {
            mask |= 1 << (half * 8 + (found.trailing_zeros() / 8) as usize);
        }
    }
    mask
}

/// The high bit of the lowest byte of `word` (little-endian) that must be
/// escaped, and perhaps of bytes above it; 0 when none must be.
fn flagged_word(word: u64) -> u64 {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    // A byte below 0x20, or equal to `"` or `\`, sets its high bit in one
    // of these (the classic "has a zero / a smaller byte" tests). A byte
    // above a flagged one may be flagged wrongly (the borrow runs upward),
    // the lowest flagged byte never: it is the answer.
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (control | quote | backslash) & HIGH
}

/// `c` as serde_json writes it inside a JSON string (as
/// [`write_json_string_content`] writes it), in UTF-8.
pub(super) fn push_escaped_char(out: &mut Vec<u8>, c: char) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // `u8::try_from` takes every char below U+0100: only ASCII is one byte.
    match u8::try_from(c).ok().filter(u8::is_ascii) {
        Some(byte) => match ESCAPE[usize::from(byte)] {
            0 => out.push(byte),
            b'u' => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]),
            short => out.extend_from_slice(&[b'\\', short]),
        },
        None => {
            let mut bytes = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut bytes).as_bytes());
        }
    }
}

/// For each byte: 0 when it is written as it is, else the letter after
/// the backslash (`u` for the `\u00XX` form), as serde_json escapes.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

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
            "eight by eight \"then\" more plain text, a tab\t, a \u{1f} late",
            "\u{80}\u{9f}\u{a0}\u{ff} bytes above 0x7f in every lane: éééééééé\"",
        ] {
            let serde = serde_json::to_string(text).expect("a str serializes");
            assert_eq!(format!("\"{}\"", escaped(text)), serde, "{text:?}");
        }
    }

    /// Every byte value at every position of a block, a word and the tail,
    /// searched from every start: the first byte the table escapes.
    #[test]
    fn next_escape_finds_the_first_escaped_byte_from_any_start() {
        for special in 0..=u8::MAX {
            for at in 0..40 {
                let mut bytes = [b'a'; 40];
                bytes[at] = special;
                for from in 0..=40 {
                    let want = (from..40)
                        .find(|&i| ESCAPE[usize::from(bytes[i])] != 0)
                        .unwrap_or(40);
                    assert_eq!(
                        next_escape(&bytes, from),
                        want,
                        "{special} at {at} from {from}"
                    );
                }
            }
        }
    }

    /// Every position of every escaped byte in a word, with plain and
    /// multi-byte text around it: the word test may not miss one.
    #[test]
    fn finds_an_escape_in_every_lane() {
        for special in ['"', '\\', '\n', '\u{0}', '\u{1f}', '\u{8}'] {
            for len in 0..40 {
                for at in 0..=len {
                    for filler in ['a', 'é', '\u{7f}', ' ', '!', '#', '[', ']'] {
                        let mut text: String = std::iter::repeat_n(filler, len).collect();
                        let byte = text.char_indices().nth(at).map_or(text.len(), |(i, _)| i);
                        text.insert(byte, special);
                        let serde = serde_json::to_string(&text).expect("a str serializes");
                        assert_eq!(format!("\"{}\"", escaped(&text)), serde, "{text:?}");
                    }
                }
            }
        }
    }

    /// Each character as the reader writes it is what the string escape
    /// writes: ASCII, the two-byte range `u8::try_from` also takes, beyond.
    #[test]
    fn an_escaped_char_is_written_as_the_string_escape_writes_it() {
        let chars = (0..0x3000_u32)
            .chain([
                0xD7FF, 0xE000, 0xFFFD, 0xFFFF, 0x1_0000, 0x1_F680, 0x10_FFFF,
            ])
            .filter_map(char::from_u32);
        for c in chars {
            let mut bytes = Vec::new();
            push_escaped_char(&mut bytes, c);
            assert_eq!(
                String::from_utf8(bytes).as_deref(),
                Ok(escaped(c.encode_utf8(&mut [0; 4])).as_str()),
                "{c:?}"
            );
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
