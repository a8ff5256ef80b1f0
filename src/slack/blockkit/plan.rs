//! Block Kit checks planned once per *skeleton* of a render.
//!
//! enrich's blocks templates write every interpolated value as JSON string
//! content, so a value cannot change the document's structure: a render
//! is a skeleton (the template's literal bytes, for the branches taken)
//! with holes (what each value wrote). Member order, the structural limits
//! and every string the rules compare belong to the skeleton; only the
//! lengths of the strings holding holes depend on the values. So the full
//! pass runs once per skeleton, on the skeleton with one placeholder
//! character in each hole ([`Plan::build`]); a render with that skeleton
//! is then the plan's canonical bytes with the holes copied in, after a
//! few length checks ([`Plan::apply`]). Whatever a plan cannot answer
//! exactly — an error, a limit a value breaks, a skeleton it cannot read —
//! goes through [`super::check_rendered`], so outputs and errors are what
//! they always were, byte for byte.

use std::ops::Range;
use std::sync::{PoisonError, RwLock};

use super::canonical::canonical_shaped;
use super::escape::next_escape;
use super::scan::{self, check_blocks, Block, List, Rules};
use super::{check_rendered, BlockKitError, RenderedError};

#[cfg(test)]
mod tests;

/// Skeletons kept per [`Plans`]: a template's branches give a few; one
/// whose literal text follows its data (a loop, an `if` on a value) could
/// give many, and those past the bound are checked in full.
const MAX_PLANS: usize = 64;
/// Holes a plan takes (each needs its own placeholder).
const MAX_HOLES: usize = 4096;
/// The first placeholder: U+F0000 (private use) for hole 0, and so on.
const PLACEHOLDER: u32 = 0xF_0000;

/// The plans of one blocks template, shared by the threads that render it.
/// (Kept per thread instead they would be lost with each batch's scoped
/// worker thread, see `enrich::parallel`, and planned again.)
#[derive(Default)]
pub struct Plans {
    entries: RwLock<Vec<Entry>>,
}

impl std::fmt::Debug for Plans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plans").finish_non_exhaustive()
    }
}

impl Plans {
    pub fn new() -> Plans {
        Plans::default()
    }

    /// (skeletons with a plan, skeletons checked in full), for tests.
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let planned = entries.iter().filter(|e| e.plan.is_some()).count();
        (planned, entries.len() - planned)
    }

    /// [`check_rendered`] of `text` and `blocks_json`, where `holes` are
    /// the byte ranges of `blocks_json` the values were written to, in
    /// order, each as [`super::write_json_string_content`] writes a
    /// string (a hole that is not is found, and the render checked in
    /// full); everything outside them is the template's.
    pub fn check(
        &self,
        text: &str,
        blocks_json: &str,
        holes: &[Range<usize>],
    ) -> Result<String, RenderedError> {
        let Some(filled) = filled_len(blocks_json, holes) else {
            return check_rendered(text, blocks_json);
        };
        let render = Render {
            text: blocks_json,
            holes,
            literal_len: blocks_json.len() - filled,
        };
        {
            let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = entries.iter().find(|e| e.skeleton_of(&render)) {
                return entry.check(text, &render);
            }
            if entries.len() >= MAX_PLANS {
                return check_rendered(text, blocks_json);
            }
        }
        let entry = Entry::of(&render);
        let result = entry.check(text, &render);
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have planned the same skeleton meanwhile.
        if entries.len() < MAX_PLANS && !entries.iter().any(|e| e.skeleton_of(&render)) {
            entries.push(entry);
        }
        result
    }
}

/// The bytes the holes take, once they are seen to be in order, inside
/// `text`, on character boundaries, and each the escaped form of a
/// string; `None` otherwise.
fn filled_len(text: &str, holes: &[Range<usize>]) -> Option<usize> {
    let mut at = 0;
    let mut filled = 0;
    for hole in holes {
        if hole.start < at
            || hole.end < hole.start
            || !text.is_char_boundary(hole.start)
            || !text.is_char_boundary(hole.end)
            || !escaped_as_written(text.get(hole.clone())?)
        {
            return None;
        }
        filled += hole.len();
        at = hole.end;
    }
    Some(filled)
}

/// Whether `content` is what [`super::write_json_string_content`] writes
/// for some string: no raw `"` or control character, and only the escapes
/// it writes (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, and `\u00XX` in
/// lower case for the other controls). Then it is also what the canonical
/// form writes for the characters it stands for.
fn escaped_as_written(content: &str) -> bool {
    let bytes = content.as_bytes();
    let mut at = next_escape(bytes, 0);
    while let Some(&byte) = bytes.get(at) {
        if byte != b'\\' {
            return false;
        }
        let len = match bytes.get(at + 1) {
            Some(b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't') => 2,
            Some(b'u') => match bytes.get(at + 2..at + 6) {
                Some(&[b'0', b'0', high @ (b'0' | b'1'), low]) => {
                    let code = (high - b'0') << 4
                        | match low {
                            b'0'..=b'9' => low - b'0',
                            b'a'..=b'f' => low - b'a' + 10,
                            _ => return false,
                        };
                    // The five with a short form are written short.
                    if matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                        return false;
                    }
                    6
                }
                _ => return false,
            },
            _ => return false,
        };
        at = next_escape(bytes, at + len);
    }
    true
}

/// How many characters the escaped `content` stands for (every escape
/// [`escaped_as_written`] takes is one).
fn decoded_chars(content: &str) -> usize {
    let bytes = content.as_bytes();
    let mut chars = 0;
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        if byte == b'\\' {
            chars += 1;
            at += if bytes.get(at + 1) == Some(&b'u') {
                6
            } else {
                2
            };
        } else {
            // A UTF-8 continuation byte is part of the character before.
            chars += usize::from(byte & 0xc0 != 0x80);
            at += 1;
        }
    }
    chars
}

/// One render: its text and where the values went.
struct Render<'a> {
    text: &'a str,
    holes: &'a [Range<usize>],
    /// The bytes outside the holes.
    literal_len: usize,
}

impl Render<'_> {
    /// The `i`th literal segment: before hole `i`, or after the last.
    fn literal(&self, i: usize) -> &str {
        let start = match i {
            0 => 0,
            i => self.holes[i - 1].end,
        };
        let end = self.holes.get(i).map_or(self.text.len(), |hole| hole.start);
        &self.text[start..end]
    }

    fn hole(&self, i: usize) -> &str {
        &self.text[self.holes[i].clone()]
    }
}

/// A skeleton and its plan.
struct Entry {
    /// The literal segments, one after another.
    literals: String,
    /// Where each segment ends in `literals` (one more than the holes).
    ends: Box<[usize]>,
    /// `None`: renders of this skeleton are checked in full.
    plan: Option<Plan>,
}

impl Entry {
    /// [`check_rendered`]'s answer for a render of this skeleton.
    fn check(&self, text: &str, render: &Render<'_>) -> Result<String, RenderedError> {
        match &self.plan {
            Some(plan) => plan.apply(text, render),
            None => check_rendered(text, render.text),
        }
    }

    fn of(render: &Render<'_>) -> Entry {
        let mut literals = String::with_capacity(render.literal_len);
        let mut ends = Vec::with_capacity(render.holes.len() + 1);
        for i in 0..=render.holes.len() {
            literals.push_str(render.literal(i));
            ends.push(literals.len());
        }
        let plan = Plan::build(&literals, &ends);
        Entry {
            literals,
            ends: ends.into(),
            plan,
        }
    }

    /// Whether `render` has this skeleton: the same literal bytes, cut by
    /// holes at the same places (compared, not hashed).
    fn skeleton_of(&self, render: &Render<'_>) -> bool {
        if self.ends.len() != render.holes.len() + 1 || self.literals.len() != render.literal_len {
            return false;
        }
        let mut start = 0;
        self.ends.iter().enumerate().all(|(i, &end)| {
            let same = self.literals.as_bytes()[start..end] == *render.literal(i).as_bytes();
            start = end;
            same
        })
    }
}

/// A limit on a string that holds holes: its characters outside them and
/// which they are.
struct Limit {
    /// `None`: the string must not be empty.
    max: Option<usize>,
    chars: usize,
    /// Into [`Plan::limit_holes`].
    holes: Range<usize>,
}

/// What one skeleton's renders are: canonical bytes and holes, once the
/// limits hold.
struct Plan {
    /// The canonical form's bytes between the holes, one after another.
    canonical: String,
    /// In canonical order: a run of `canonical` ending at `.0`, then the
    /// hole `.1` (none after the last run). The canonical form may drop a
    /// hole (a duplicate member's) or move it (members put in order).
    segments: Box<[(usize, Option<usize>)]>,
    limits: Box<[Limit]>,
    limit_holes: Box<[usize]>,
}

impl Plan {
    /// The plan of the skeleton `literals` cut at `ends`, or `None` when
    /// its renders must be checked in full: it is not a document the
    /// limits take with any values, a hole is in a member name or in a
    /// string the rules compare, or its text could hold a placeholder.
    fn build(literals: &str, ends: &[usize]) -> Option<Plan> {
        let holes = ends.len() - 1;
        if holes > MAX_HOLES || !placeholder_free(literals) {
            return None;
        }
        let mut document = String::with_capacity(literals.len() + 4 * holes);
        let mut start = 0;
        for (i, &end) in ends.iter().enumerate() {
            document.push_str(&literals[start..end]);
            start = end;
            if i < holes {
                document.push(placeholder(i)?);
            }
        }
        let (canonical, blocks) = canonical_shaped::<List<'_, Block<'_>>>(&document).ok()?;
        let mut rules = Planning {
            holes,
            limits: Vec::new(),
            limit_holes: Vec::new(),
            refused: false,
        };
        check_blocks(&mut rules, &blocks).ok()?;
        if rules.refused {
            return None;
        }
        let mut out = String::with_capacity(canonical.len());
        let mut segments = Vec::with_capacity(holes + 1);
        let mut seen = vec![false; holes];
        let mut run = 0;
        for (at, c) in canonical.char_indices() {
            let Some(hole) = hole_of(c, holes) else {
                continue;
            };
            let after = at + c.len_utf8();
            if std::mem::replace(&mut seen[hole], true) || in_member_name(&canonical, after) {
                return None;
            }
            out.push_str(&canonical[run..at]);
            segments.push((out.len(), Some(hole)));
            run = after;
        }
        out.push_str(&canonical[run..]);
        segments.push((out.len(), None));
        Some(Plan {
            canonical: out,
            segments: segments.into(),
            limits: rules.limits.into(),
            limit_holes: rules.limit_holes.into(),
        })
    }

    fn apply(&self, text: &str, render: &Render<'_>) -> Result<String, RenderedError> {
        // A failure is worded by the full pass (which checks `text` first
        // too: the document itself is known to be one it reads).
        if scan::check_text(text).is_err() || !self.limits.iter().all(|l| self.holds(l, render)) {
            return check_rendered(text, render.text);
        }
        let filled = render.text.len() - render.literal_len;
        let mut out = String::with_capacity(self.canonical.len() + filled);
        let mut start = 0;
        for &(end, hole) in &self.segments {
            out.push_str(&self.canonical[start..end]);
            start = end;
            if let Some(hole) = hole {
                out.push_str(render.hole(hole));
            }
        }
        Ok(out)
    }

    fn holds(&self, limit: &Limit, render: &Render<'_>) -> bool {
        let holes = &self.limit_holes[limit.holes.clone()];
        let Some(max) = limit.max else {
            return limit.chars > 0 || holes.iter().any(|&h| !render.holes[h].is_empty());
        };
        // An escape is longer than its character: most strings are far
        // below their limit in bytes.
        let bytes: usize = holes.iter().map(|&h| render.holes[h].len()).sum();
        if limit.chars + bytes <= max {
            return true;
        }
        let chars: usize = holes.iter().map(|&h| decoded_chars(render.hole(h))).sum();
        limit.chars + chars <= max
    }
}

/// The placeholder of hole `i`.
fn placeholder(i: usize) -> Option<char> {
    u32::try_from(i)
        .ok()
        .and_then(|i| char::from_u32(PLACEHOLDER + i))
}

/// The hole whose placeholder `c` is, of `holes`.
fn hole_of(c: char, holes: usize) -> Option<usize> {
    let i = usize::try_from(u32::from(c).checked_sub(PLACEHOLDER)?).ok()?;
    (i < holes).then_some(i)
}

/// Whether no character of `literals`, as written or as a JSON escape,
/// can be a placeholder: none at or above U+C0000 (UTF-8 lead byte F3 or
/// F4), no `\uDB..` escape (the high surrogates of U+D0000 and above).
/// Wider than needed, so simple.
fn placeholder_free(literals: &str) -> bool {
    let bytes = literals.as_bytes();
    !bytes.iter().any(|&b| b >= 0xf3)
        && !bytes.windows(4).any(|w| {
            w[0] == b'\\' && w[1] == b'u' && w[2].eq_ignore_ascii_case(&b'd') && {
                w[3].eq_ignore_ascii_case(&b'b')
            }
        })
}

/// Whether the string of the canonical form `text` that goes on at
/// `from` is a member name (compact: a name is followed by `:`).
fn in_member_name(text: &str, from: usize) -> bool {
    let bytes = text.as_bytes();
    let mut at = from;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b'\\' => at += 2,
            b'"' => return bytes.get(at + 1) == Some(&b':'),
            _ => at += 1,
        }
    }
    false
}

/// The rules run on a skeleton: a string with placeholders has its
/// limits noted (the values decide them); one without is checked; a
/// compared string with a placeholder refuses the plan.
struct Planning {
    holes: usize,
    limits: Vec<Limit>,
    limit_holes: Vec<usize>,
    refused: bool,
}

impl Planning {
    /// Notes `max` for `text` if it holds holes; whether it did.
    fn note(&mut self, text: &str, max: Option<usize>) -> bool {
        if !text.bytes().any(|b| b >= 0xf3) {
            return false;
        }
        let start = self.limit_holes.len();
        let mut chars = 0;
        for c in text.chars() {
            match hole_of(c, self.holes) {
                Some(hole) => self.limit_holes.push(hole),
                None => chars += 1,
            }
        }
        if self.limit_holes.len() == start {
            return false;
        }
        self.limits.push(Limit {
            max,
            chars,
            holes: start..self.limit_holes.len(),
        });
        true
    }
}

impl Rules for Planning {
    fn max_len(
        &mut self,
        path: impl FnOnce() -> String,
        text: &str,
        max: usize,
    ) -> Result<(), BlockKitError> {
        if self.note(text, Some(max)) {
            return Ok(());
        }
        scan::Exact.max_len(path, text, max)
    }

    fn non_empty(
        &mut self,
        path: impl FnOnce() -> String,
        text: &str,
    ) -> Result<(), BlockKitError> {
        if self.note(text, None) {
            return Ok(());
        }
        scan::Exact.non_empty(path, text)
    }

    fn word<'a>(&mut self, text: Option<&'a str>) -> Option<&'a str> {
        if text.is_some_and(|t| t.chars().any(|c| hole_of(c, self.holes).is_some())) {
            self.refused = true;
        }
        text
    }
}
