//! Slack text escaping for templates, and helpers that build Slack markup
//! from parts.
//!
//! Slack reads `&`, `<` and `>` as control characters in `mrkdwn` and
//! `plain_text` text: `<!channel>` notifies a whole channel, `<@U123>` pings
//! a user, `<https://x|label>` is a link. Data put into a message (an org
//! name, a failure reason) must therefore be escaped as `&amp;`, `&lt;`,
//! `&gt;` (api.slack.com/reference/surfaces/formatting#escaping). Templates
//! do this for every interpolated value by default; a value becomes markup
//! only through `|markup` (trusted, explicit) or through the helpers here,
//! which check or escape their parts themselves.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use minijinja::value::{Object, ObjectRepr};
use minijinja::{Environment, Value};

/// Text Slack reads as markup as it is: no Slack escaping is applied when it
/// is rendered (JSON string escaping still is, in Block Kit templates).
///
/// Only the output of `|markup` and of the helpers is `Markup`; anything
/// derived from it (concatenation with `~`, other filters) is plain text
/// again, so escaping can be lost only where a template says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Markup(String);

impl Markup {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn value(text: String) -> Value {
        Value::from_object(Markup(text))
    }
}

impl Object for Markup {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn is_true(self: &Arc<Self>) -> bool {
        !self.0.is_empty()
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The markup a value carries, if it is `Markup`.
pub fn as_markup(value: &Value) -> Option<&str> {
    value.downcast_object_ref::<Markup>().map(Markup::as_str)
}

/// Escapes `&`, `<` and `>` as Slack requires for text it must not read as
/// markup.
pub fn escape(text: &str) -> Cow<'_, str> {
    // The three are ASCII, so they are found byte by byte (a `char`
    // pattern decodes every character first) and never split one.
    let Some(first) = text.bytes().position(|b| matches!(b, b'&' | b'<' | b'>')) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    let mut start = 0;
    for (at, byte) in text.bytes().enumerate().skip(first) {
        let entity = match byte {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            _ => continue,
        };
        out.push_str(&text[start..at]);
        out.push_str(entity);
        start = at + 1;
    }
    out.push_str(&text[start..]);
    Cow::Owned(out)
}

/// How many characters `c` takes once escaped: Slack's length limits count
/// the text it receives, entities included.
pub fn escaped_width(c: char) -> usize {
    match c {
        '&' => 5,
        '<' | '>' => 4,
        _ => 1,
    }
}

/// Registers `markup`, `mention`, `channel_mention`, `slack_date` and
/// `link`.
pub fn register(env: &mut Environment<'_>) {
    env.add_filter("markup", markup);
    env.add_filter("mention", mention);
    env.add_filter("channel_mention", channel_mention);
    env.add_filter("slack_date", slack_date);
    env.add_function("link", link);
}

/// `{{ epoch_millis|slack_date }}` → `<!date^SECS^{date_short_pretty} at
/// {time}|2026-11-26 14:02 UTC>`: Slack shows the time in each reader's own
/// time zone ("Yesterday at 3:02 PM"), other clients the UTC fallback.
/// Anything but an integer in range is returned unchanged (escaped text).
pub(super) fn slack_date(value: Value) -> Value {
    let Some(millis) = i64::try_from(value.clone()).ok() else {
        return value;
    };
    match chrono::DateTime::from_timestamp_millis(millis) {
        Some(at) => Markup::value(format!(
            "<!date^{}^{{date_short_pretty}} at {{time}}|{}>",
            at.timestamp(),
            at.format("%Y-%m-%d %H:%M UTC")
        )),
        None => value,
    }
}

/// `{{ value|markup }}`: the template vouches that `value` is Slack markup.
pub(super) fn markup(value: Value) -> Value {
    if as_markup(&value).is_some() {
        return value;
    }
    Markup::value(value.to_string())
}

/// `{{ user_id|mention }}` → `<@U123>` for a well-formed user id; anything
/// else is returned unchanged and so rendered as escaped text, never as a
/// mention of something else.
pub(super) fn mention(value: Value) -> Value {
    match value.as_str() {
        Some(id) if is_slack_id(id, &['U', 'W']) => Markup::value(format!("<@{id}>")),
        _ => value,
    }
}

/// `{{ channel_id|channel_mention }}` → `<#C123>` for a well-formed public
/// (`C…`) or private (`G…`) channel id; anything else stays escaped text.
fn channel_mention(value: Value) -> Value {
    match value.as_str() {
        Some(id) if is_slack_id(id, &['C', 'G']) => Markup::value(format!("<#{id}>")),
        _ => value,
    }
}

/// Slack ids are an uppercase type letter and uppercase letters or digits
/// (`U0ADA`, `C024BE7LR`); the length bound keeps garbage out.
fn is_slack_id(id: &str, prefixes: &[char]) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| prefixes.contains(&c))
        && (3..=24).contains(&id.len())
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// `link(url, label)` → `<url|label>`: the label is escaped text (unless it
/// is itself `Markup`), and the URL cannot end the link early: `|`, `<`,
/// `>`, whitespace and control characters are percent-encoded and `&` is
/// written `&amp;`, which Slack decodes back. Without a label (or with an
/// empty one) Slack shows the URL.
pub(super) fn link(url: Value, label: Option<Value>) -> Value {
    let url = encode_link_url(&url.to_string());
    let label = match &label {
        None => String::new(),
        Some(l) if l.is_none() || l.is_undefined() => String::new(),
        Some(l) => match as_markup(l) {
            Some(markup) => markup.to_owned(),
            None => escape(&l.to_string()).into_owned(),
        },
    };
    if label.is_empty() {
        Markup::value(format!("<{url}>"))
    } else {
        Markup::value(format!("<{url}|{label}>"))
    }
}

fn encode_link_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    for c in url.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '|' | '<' | '>' => out.push_str(&format!("%{:02X}", c as u32)),
            c if c.is_ascii_whitespace() || c.is_ascii_control() => {
                out.push_str(&format!("%{:02X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, ctx: Value) -> String {
        let mut env = Environment::new();
        register(&mut env);
        env.render_str(source, ctx).unwrap()
    }

    #[test]
    fn escapes_the_three_control_characters_only() {
        assert_eq!(
            escape("<!channel> & <@U1>"),
            "&lt;!channel&gt; &amp; &lt;@U1&gt;"
        );
        assert_eq!(escape("*bold* `code` \"q\""), "*bold* `code` \"q\"");
        assert!(matches!(escape("plain"), Cow::Borrowed("plain")));
        // Already-escaped text is escaped again: it is data, not markup.
        assert_eq!(escape("&lt;"), "&amp;lt;");
        assert_eq!(escape("é<ü>&🚀>"), "é&lt;ü&gt;&amp;🚀&gt;");
        assert_eq!(escape(">"), "&gt;");
        let width: usize = "a&<>".chars().map(escaped_width).sum();
        assert_eq!(width, escape("a&<>").chars().count());
    }

    #[test]
    fn mention_accepts_only_well_formed_user_ids() {
        let m = |id: &str| mention(Value::from(id));
        assert_eq!(as_markup(&m("U0ADA")), Some("<@U0ADA>"));
        assert_eq!(as_markup(&m("W123ABC")), Some("<@W123ABC>"));
        for bad in [
            "",
            "U",
            "u0ada",
            "C0ADA",
            "U0ADA>",
            "U1> <!channel",
            "<@U1>",
            "U 1",
        ] {
            let out = m(bad);
            assert!(as_markup(&out).is_none(), "{bad:?} became markup");
            assert_eq!(out.as_str(), Some(bad));
        }
        assert!(as_markup(&mention(Value::from(12))).is_none());
        assert!(as_markup(&mention(Value::from(()))).is_none());
    }

    #[test]
    fn channel_mention_accepts_only_channel_ids() {
        let m = |id: &str| channel_mention(Value::from(id));
        assert_eq!(as_markup(&m("C024BE7LR")), Some("<#C024BE7LR>"));
        assert_eq!(as_markup(&m("G0PRIV")), Some("<#G0PRIV>"));
        assert!(as_markup(&m("U0ADA")).is_none());
        assert!(as_markup(&m("C1|x>")).is_none());
    }

    #[test]
    fn link_escapes_the_label_and_encodes_the_url() {
        let l = |url: &str, label: Option<Value>| link(Value::from(url), label);
        assert_eq!(
            as_markup(&l(
                "https://x.test/a?b=1&c=2",
                Some(Value::from("Docs & <more>"))
            )),
            Some("<https://x.test/a?b=1&amp;c=2|Docs &amp; &lt;more&gt;>")
        );
        assert_eq!(
            as_markup(&l("https://x.test/<a>|b c", Some(Value::from("x")))),
            Some("<https://x.test/%3Ca%3E%7Cb%20c|x>")
        );
        assert_eq!(
            as_markup(&l("https://x.test", None)),
            Some("<https://x.test>")
        );
        assert_eq!(
            as_markup(&l("https://x.test", Some(Value::from("")))),
            Some("<https://x.test>")
        );
        let bold = markup(Value::from("*Docs*"));
        assert_eq!(
            as_markup(&l("https://x.test", Some(bold))),
            Some("<https://x.test|*Docs*>")
        );
    }

    #[test]
    fn slack_date_formats_epoch_millis_and_leaves_anything_else_as_text() {
        assert_eq!(
            as_markup(&slack_date(Value::from(1_764_166_920_000_i64))),
            Some("<!date^1764166920^{date_short_pretty} at {time}|2025-11-26 14:22 UTC>")
        );
        for other in [
            Value::from("soon <!here>"),
            Value::from(()),
            Value::from(1.5),
        ] {
            let out = slack_date(other.clone());
            assert!(as_markup(&out).is_none(), "{other:?} became markup");
        }
    }

    #[test]
    fn helpers_work_from_templates() {
        let ctx =
            minijinja::context! { id => "U0ADA", bad => "<!here>", url => "https://e.test/?q=|" };
        assert_eq!(
            render(
                "{{ id|mention }} {{ bad|mention }} {{ link(url, 'go') }} {{ '<b>'|markup }}",
                ctx
            ),
            "<@U0ADA> <!here> <https://e.test/?q=%7C|go> <b>"
        );
        // Markup is only what the helper returned: concatenation is text.
        let ctx = minijinja::context! { id => "U0ADA" };
        let concatenated = {
            let mut env = Environment::new();
            register(&mut env);
            env.compile_expression("id|mention ~ ''")
                .unwrap()
                .eval(ctx)
                .unwrap()
        };
        assert!(as_markup(&concatenated).is_none());
        assert_eq!(concatenated.as_str(), Some("<@U0ADA>"));
    }
}
