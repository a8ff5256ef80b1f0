//! Strings: read as serde_json reads them into a `&str` (escapes decoded,
//! surrogate pairs joined, raw control characters refused) and written as
//! serde_json writes them (only `"`, `\` and control characters escaped).

use super::{next_escape, Bail, Read, Reader, Text};
use crate::slack::blockkit::escape::push_escaped_char;

impl<'de> Reader<'de> {
    /// The string whose opening quote is at `pos`, written to `out`.
    // Inlined where a string is read: most are plain, and the call cost
    // as much as copying one.
    #[inline]
    pub(super) fn string(&mut self) -> Read<Text<'de>> {
        let start = self.pos + 1;
        let end = next_escape(self.bytes, start);
        match self.bytes.get(end) {
            // No escape: the text is its own escaped form, quotes included.
            Some(b'"') => {
                self.pos = end + 1;
                self.out.extend_from_slice(&self.bytes[start - 1..=end]);
                Ok(Text::borrowed(&self.text[start..end]))
            }
            Some(b'\\') => self.escaped_string(start, end),
            // A raw control character, or the end of the text.
            _ => Err(Bail),
        }
    }

    /// The rest of a string with escapes, from its content's `start`; the
    /// first escape is at `at`. Decoded and rewritten in one pass.
    // Kept out of `string` so the plain case stays small.
    #[inline(never)]
    fn escaped_string(&mut self, start: usize, mut at: usize) -> Read<Text<'de>> {
        let mut decoded = String::with_capacity(at - start + 32);
        self.out.push(b'"');
        let mut run = start;
        loop {
            // Every byte `next_escape` stops at is ASCII: `at` is on a char
            // boundary.
            let plain = &self.text[run..at];
            decoded.push_str(plain);
            self.out.extend_from_slice(plain.as_bytes());
            match self.bytes.get(at) {
                Some(b'"') => {
                    self.out.push(b'"');
                    self.pos = at + 1;
                    return Ok(Text::decoded(decoded));
                }
                Some(b'\\') => {
                    let (c, len) = self.escape(at)?;
                    decoded.push(c);
                    push_escaped_char(&mut self.out, c);
                    run = at + len;
                }
                _ => return Err(Bail),
            }
            at = next_escape(self.bytes, run);
        }
    }

    /// The character of the escape at `at` (its backslash) and its length.
    fn escape(&self, at: usize) -> Read<(char, usize)> {
        let c = match self.bytes.get(at + 1) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => return self.unicode_escape(at),
            _ => return Err(Bail),
        };
        Ok((c, 2))
    }

    /// `\uXXXX`, or a surrogate pair `\uXXXX\uXXXX`; a lone surrogate is an
    /// error to serde_json reading a `&str`, left to it.
    fn unicode_escape(&self, at: usize) -> Read<(char, usize)> {
        let (code, len) = match self.hex4(at + 2)? {
            lead @ 0xD800..=0xDBFF => {
                if self.bytes.get(at + 6..at + 8) != Some(b"\\u") {
                    return Err(Bail);
                }
                let trail = self.hex4(at + 8)?;
                if !(0xDC00..=0xDFFF).contains(&trail) {
                    return Err(Bail);
                }
                (0x1_0000 + ((lead - 0xD800) << 10 | (trail - 0xDC00)), 12)
            }
            0xDC00..=0xDFFF => return Err(Bail),
            code => (code, 6),
        };
        char::from_u32(code).map(|c| (c, len)).ok_or(Bail)
    }

    /// Four hex digits at `at`, either case.
    fn hex4(&self, at: usize) -> Read<u32> {
        let digits = self.bytes.get(at..at + 4).ok_or(Bail)?;
        digits.iter().try_fold(0, |n, &d| {
            char::from(d).to_digit(16).map(|d| n << 4 | d).ok_or(Bail)
        })
    }
}
