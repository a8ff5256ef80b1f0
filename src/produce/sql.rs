//! Named query parameters. Job SQL writes `@name` on every source; BigQuery
//! takes that as is, PostgreSQL gets `$n` and SQLite `?n`, and values are
//! always bound, never spliced into the text.

/// How a dialect spells the n-th (1-based) positional parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// Keep `@name` (BigQuery named parameters).
    Named,
    /// `$1` (PostgreSQL).
    Dollar,
    /// `?1` (SQLite).
    Question,
}

/// SQL with its parameters found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSql {
    /// The text for the dialect.
    pub text: String,
    /// Distinct parameter names in order of first use: position n binds
    /// `names[n - 1]`.
    pub names: Vec<String>,
}

/// Finds `@name` parameters outside string literals, quoted identifiers and
/// comments, and rewrites them for `placeholder`. `@@system_variables`
/// and PostgreSQL's `@>`/`<@` operators are left alone.
pub fn parse(sql: &str, placeholder: Placeholder) -> ParsedSql {
    let bytes = sql.as_bytes();
    let mut text = String::with_capacity(sql.len());
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"' | b'`') => {
                i = skip_quoted(bytes, i, quote);
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                let end = skip_until(bytes, i, b"\n");
                if placeholder == Placeholder::Named {
                    // Emulators count `@name` inside comments as parameters:
                    // BigQuery gets the SQL without its comments.
                    text.push_str(&sql[copied..i]);
                    text.push('\n');
                    copied = end;
                }
                i = end;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = skip_until(bytes, i + 2, b"*/");
                if placeholder == Placeholder::Named {
                    text.push_str(&sql[copied..i]);
                    text.push(' ');
                    copied = end;
                }
                i = end;
            }
            b'$' if placeholder == Placeholder::Dollar => {
                i = skip_dollar_quoted(bytes, i);
            }
            b'@' if is_parameter_start(bytes, i) => {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len() && is_ident(bytes[end]) {
                    end += 1;
                }
                let name = &sql[start..end];
                text.push_str(&sql[copied..i]);
                let position = match names.iter().position(|n| n == name) {
                    Some(p) => p + 1,
                    None => {
                        names.push(name.to_owned());
                        names.len()
                    }
                };
                match placeholder {
                    Placeholder::Named => text.push_str(&sql[i..end]),
                    Placeholder::Dollar => text.push_str(&format!("${position}")),
                    Placeholder::Question => text.push_str(&format!("?{position}")),
                }
                copied = end;
                i = end;
            }
            _ => i += 1,
        }
    }
    text.push_str(&sql[copied..]);
    ParsedSql { text, names }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_parameter_start(bytes: &[u8], at: usize) -> bool {
    let next_starts_name = bytes
        .get(at + 1)
        .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_');
    let previous = at.checked_sub(1).map(|p| bytes[p]);
    let glued = previous.is_some_and(|b| b == b'@' || b == b'<' || is_ident(b));
    next_starts_name && !glued
}

/// Index just past the closing quote; a doubled quote is an escaped one.
fn skip_quoted(bytes: &[u8], open: usize, quote: u8) -> usize {
    let mut i = open + 1;
    while i < bytes.len() {
        if bytes[i] == b'\\' && quote != b'"' {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

fn skip_until(bytes: &[u8], from: usize, end: &[u8]) -> usize {
    let mut i = from;
    while i < bytes.len() {
        if bytes[i..].starts_with(end) {
            return i + end.len();
        }
        i += 1;
    }
    bytes.len()
}

/// PostgreSQL's `$tag$ … $tag$` strings; a `$1` is not one.
fn skip_dollar_quoted(bytes: &[u8], at: usize) -> usize {
    let mut end = at + 1;
    while end < bytes.len() && is_ident(bytes[end]) && !bytes[end].is_ascii_digit() {
        end += 1;
    }
    if bytes.get(end) != Some(&b'$') {
        return at + 1;
    }
    let tag = &bytes[at..=end];
    let mut i = end + 1;
    while i < bytes.len() {
        if bytes[i..].starts_with(tag) {
            return i + tag.len();
        }
        i += 1;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_become_positions_in_order_of_first_use() {
        let sql = "SELECT * FROM t WHERE a > @checkpoint AND b = @org OR c > @checkpoint";
        let pg = parse(sql, Placeholder::Dollar);
        assert_eq!(pg.text, "SELECT * FROM t WHERE a > $1 AND b = $2 OR c > $1");
        assert_eq!(pg.names, ["checkpoint", "org"]);
        let lite = parse(sql, Placeholder::Question);
        assert_eq!(
            lite.text,
            "SELECT * FROM t WHERE a > ?1 AND b = ?2 OR c > ?1"
        );
        let bq = parse(sql, Placeholder::Named);
        assert_eq!(bq.text, sql);
        assert_eq!(bq.names, ["checkpoint", "org"]);
    }

    #[test]
    fn bigquery_gets_the_sql_without_comments() {
        let sql = "-- reads @checkpoint\nSELECT 1 /* @no */ FROM t WHERE a > @checkpoint -- end";
        let bq = parse(sql, Placeholder::Named);
        assert_eq!(bq.text, "\nSELECT 1   FROM t WHERE a > @checkpoint \n");
        assert_eq!(bq.names, ["checkpoint"]);
    }

    #[test]
    fn literals_comments_and_operators_are_not_parameters() {
        let sql = "SELECT '@no', \"@no\", `@no`, 'it''s @no' -- @no\n\
                   FROM t /* @no */ WHERE tags @> x AND y <@ z AND @@project_id = p \
                   AND email = 'a@b.c' AND d = @yes";
        let parsed = parse(sql, Placeholder::Dollar);
        assert_eq!(parsed.names, ["yes"]);
        assert!(parsed.text.ends_with("AND d = $1"), "{}", parsed.text);
        assert!(parsed.text.contains("'a@b.c'"));
    }

    #[test]
    fn dollar_quoted_strings_are_skipped_in_postgres() {
        let sql = "SELECT $$ @no $$, $tag$ @no $tag$ WHERE x = @yes";
        let parsed = parse(sql, Placeholder::Dollar);
        assert_eq!(parsed.names, ["yes"]);
        assert!(parsed.text.ends_with("x = $1"));
    }

    #[test]
    fn a_text_without_parameters_is_unchanged() {
        let sql = "SELECT 1";
        assert_eq!(
            parse(sql, Placeholder::Question),
            ParsedSql {
                text: sql.into(),
                names: vec![]
            }
        );
    }
}
