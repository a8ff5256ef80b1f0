//! The one-line message templates (`alert_id`, `channel`, `status`, `text`)
//! evaluated without minijinja's VM: a render costs ~4.5k instructions of
//! fixed set-up (state, frames, output) for templates that print two or
//! three values. A template is compiled here once, from minijinja's own
//! parse of its source, when every node is in a small subset: literal
//! text, `{{ expr }}`, `{% if %}…{% else %}…{% endif %}`, and expressions
//! of variables, member paths (`a.b`), constants, `~`, `==`, `!=`, `not`,
//! `and`, `or`, `… if … else …` and the `default` filter (with at most one
//! positional argument). Anything else keeps minijinja for every render.
//!
//! The evaluator follows minijinja 2's VM (`vm/mod.rs`) step by step and
//! reads the same lazy JSON views the VM would. Where a render would touch
//! an undefined value anywhere but `default`'s input (an error in strict
//! mode, or semantics this copy would have to reproduce), or a name not in
//! the record's context (it may be one of the environment's globals), it
//! answers `None` and the caller renders that record with minijinja: the
//! output or the error is then minijinja's own. Values other than strings
//! and JSON objects are handed to minijinja's `Value` for comparison,
//! truthiness and display, so only the string and object fast paths are
//! this module's own semantics; the differential tests in
//! `tests/oneline.rs` hold them to minijinja's.
//!
//! The blocks template goes through the same evaluator
//! ([`OneLine::compile_blocks`]) with a wider subset: `{% set name = expr
//! %}` at the top level, the filters `truncate`, `mention`, `slack_date`,
//! `markup` and the function `link(…)` (each calls the very function the
//! environment registers), and the `slack-json` escape mode, recording
//! where each value went as [`super::holes`] records a minijinja render's
//! (the Block Kit plans read those holes). The pipeline's environment
//! ([`super::template_environment`]) is the one these names are taken
//! from: filters are looked up in the environment only, so a filter name
//! means the registered filter; `link` is a global that a context member
//! or a `set` of that name would hide, which is checked when it is called.
//! The helpers' arguments are converted as their `ArgType`s convert them:
//! a `Value` argument (`mention`, `slack_date`, `markup`, `link`'s URL)
//! takes an undefined value as it is, and `link`'s optional label is
//! none for it; those are the only places besides `default`'s input where
//! an undefined value does not send the render to minijinja. Block Kit
//! differential tests: `tests/blocks_eval.rs`.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;

use minijinja::machinery::{ast, parse, WhitespaceConfig};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::ValueKind;
use minijinja::{Environment, Value as JinjaValue};
use serde_json::{Map, Value as Json};

use super::context::RenderContext;
use super::{jinja_json, needs_escape};
use crate::enrich::markup;

mod compile;

use self::compile::Compiler;

/// How a template's printed values are escaped: its auto-escape mode as
/// [`super::slack_formatter`] applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Escape {
    /// `AutoEscape::None`: written as minijinja displays them.
    None,
    /// The `slack-text` mode: Slack-escaped unless safe or markup.
    SlackText,
    /// The `slack-json` mode (the blocks'): Slack-escaped unless safe or
    /// markup, then written as JSON string content unless safe.
    SlackJson,
}

/// A one-line template compiled for [`OneLine::render`], or the blocks
/// template for [`OneLine::render_blocks`].
#[derive(Debug)]
pub(super) struct OneLine {
    body: Vec<Node>,
    escape: Escape,
}

/// A blocks render ([`OneLine::render_blocks`]): the text, and the holes
/// as [`super::holes::render`] hands them on (`None`: a value was written
/// other than as a hole).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Rendered {
    pub text: String,
    pub holes: Option<Vec<Range<usize>>>,
}

#[derive(Debug)]
enum Node {
    Raw(Box<str>),
    Emit(Expr),
    /// `{% set name = expr %}` at the top level (blocks only).
    Set(Box<str>, Expr),
    If {
        test: Expr,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

#[derive(Debug)]
enum Expr {
    /// A constant, or a subexpression minijinja's code generator folds
    /// into one (`ast::Expr::as_const`, which the VM never evaluates).
    Const(JinjaValue),
    Var(Box<str>),
    Attr(Box<Expr>, Box<str>),
    Concat(Box<Expr>, Box<Expr>),
    /// `==`, or `!=` when `negated`.
    Eq {
        left: Box<Expr>,
        right: Box<Expr>,
        negated: bool,
    },
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    If {
        test: Box<Expr>,
        then: Box<Expr>,
        otherwise: Option<Box<Expr>>,
    },
    Default(Box<Expr>, Option<Box<Expr>>),
    /// `truncate(max)`, the pipeline's filter (blocks only).
    Truncate(Box<Expr>, usize),
    /// A filter of one value, the registered function itself: `mention`,
    /// `slack_date`, `markup` (blocks only).
    Apply(fn(JinjaValue) -> JinjaValue, Box<Expr>),
    /// `link(url[, label])` (blocks only); `folded`: its value, computed
    /// once when every argument is a constant.
    Link {
        args: Vec<Expr>,
        folded: Option<JinjaValue>,
    },
}

/// Which constructs a compile accepts: the one-line subset, or the
/// blocks' wider one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subset {
    OneLine,
    Blocks,
}

impl OneLine {
    /// `source` compiled for `env` (whose whitespace settings the parse
    /// uses), or `None` when it is outside the subset (or does not parse:
    /// the environment reports that when the template is added).
    pub fn compile(env: &Environment<'_>, source: &str, escape: Escape) -> Option<OneLine> {
        OneLine::compile_as(env, source, escape, Subset::OneLine)
    }

    /// The blocks template compiled for [`OneLine::render_blocks`] (its
    /// mode is `slack-json`), or `None` when it is outside the blocks'
    /// subset.
    pub fn compile_blocks(env: &Environment<'_>, source: &str) -> Option<OneLine> {
        OneLine::compile_as(env, source, Escape::SlackJson, Subset::Blocks)
    }

    fn compile_as(
        env: &Environment<'_>,
        source: &str,
        escape: Escape,
        subset: Subset,
    ) -> Option<OneLine> {
        let whitespace = WhitespaceConfig {
            keep_trailing_newline: env.keep_trailing_newline(),
            lstrip_blocks: env.lstrip_blocks(),
            trim_blocks: env.trim_blocks(),
        };
        let tree = parse(source, "<one-line>", SyntaxConfig, whitespace).ok()?;
        let ast::Stmt::Template(template) = tree else {
            return None;
        };
        let compiler = Compiler { subset };
        let body = template
            .children
            .iter()
            .map(|stmt| compiler.top_node(stmt))
            .collect::<Option<Vec<_>>>()?;
        Some(OneLine { body, escape })
    }

    /// The rendered text, or `None`: render this context with minijinja.
    pub fn render(&self, context: &RenderContext) -> Option<String> {
        let mut out = Out {
            text: String::with_capacity(64),
            holes: None,
        };
        let mut scope = Scope {
            context,
            locals: Vec::new(),
        };
        self.write(&self.body, &mut scope, &mut out)?;
        Some(out.text)
    }

    /// A blocks render with its holes, or `None`: render this context
    /// with minijinja. `size_hint`: the output's expected length.
    pub fn render_blocks(&self, context: &RenderContext, size_hint: usize) -> Option<Rendered> {
        let mut out = Out {
            text: String::with_capacity(size_hint),
            holes: Some(Vec::with_capacity(32)),
        };
        let mut scope = Scope {
            context,
            locals: Vec::new(),
        };
        self.write(&self.body, &mut scope, &mut out)?;
        Some(Rendered {
            text: out.text,
            holes: out.holes,
        })
    }

    fn write<'a>(&'a self, body: &'a [Node], scope: &mut Scope<'a>, out: &mut Out) -> Option<()> {
        for node in body {
            match node {
                Node::Raw(text) => out.text.push_str(text),
                Node::Emit(expr) => {
                    let value = eval(expr, scope)?;
                    self.emit(&value, out)?;
                }
                Node::Set(name, expr) => {
                    let value = eval(expr, scope)?;
                    scope.locals.push((name.as_ref(), value));
                }
                Node::If {
                    test,
                    then,
                    otherwise,
                } => {
                    let branch = if truthy(&eval(test, scope)?)? {
                        then
                    } else {
                        otherwise
                    };
                    self.write(branch, scope, out)?;
                }
            }
        }
        Some(())
    }

    /// What the VM's `Emit` writes through `slack_formatter`: an undefined
    /// value is minijinja's to report. In a recorded render (`out.holes`
    /// set) each value written as JSON string content is a hole and any
    /// other makes the holes unknown, as the formatter notes them.
    fn emit(&self, value: &Val<'_>, out: &mut Out) -> Option<()> {
        if matches!(value, Val::Undefined) {
            return None;
        }
        if self.escape == Escape::SlackJson {
            let start = out.text.len();
            let hole = emit_json(value, &mut out.text)?;
            if let Some(holes) = &mut out.holes {
                if hole {
                    holes.push(start..out.text.len());
                } else {
                    out.holes = None;
                }
            }
            return Some(());
        }
        let out = &mut out.text;
        match (self.escape, value) {
            (_, Val::Undefined) | (Escape::SlackJson, _) => return None,
            (Escape::None, Val::Str(text)) => out.push_str(text),
            (Escape::SlackText, Val::Str(text)) => {
                if needs_escape(text, false) {
                    out.push_str(&markup::escape(text));
                } else {
                    out.push_str(text);
                }
            }
            (Escape::None, other) => {
                let value = other.to_jinja();
                write!(out, "{value}").ok()?;
            }
            (Escape::SlackText, other) => {
                let value = other.to_jinja();
                if value.is_safe() {
                    write!(out, "{value}").ok()?;
                } else if let Some(trusted) = markup::as_markup(&value) {
                    out.push_str(trusted);
                } else {
                    out.push_str(&markup::escape(&value.to_string()));
                }
            }
        }
        Some(())
    }
}

/// Written output, and the holes of a recorded render (`None` when not
/// recording, or once a value was written other than as a hole).
struct Out {
    text: String,
    holes: Option<Vec<Range<usize>>>,
}

/// Writes `value` as `slack_formatter` does in the `slack-json` mode;
/// `false` when it was written verbatim (a safe value: not a hole).
fn emit_json(value: &Val<'_>, out: &mut String) -> Option<bool> {
    let write = |out: &mut String, slack_text: &str| {
        crate::slack::blockkit::write_json_string_content(out, slack_text).ok()
    };
    match value {
        Val::Undefined => return None,
        Val::Str(text) => {
            if needs_escape(text, true) {
                write(out, &markup::escape(text))?;
            } else {
                out.push_str(text);
            }
        }
        other => {
            let value = other.to_jinja();
            if value.is_safe() {
                write!(out, "{value}").ok()?;
                return Some(false);
            }
            if let Some(text) = value.as_str() {
                if !needs_escape(text, true) {
                    out.push_str(text);
                    return Some(true);
                }
            }
            match markup::as_markup(&value) {
                Some(trusted) => write(out, trusted)?,
                None => match value.as_str() {
                    Some(text) => write(out, &markup::escape(text))?,
                    None => write(out, &markup::escape(&value.to_string()))?,
                },
            }
        }
    }
    Some(true)
}

/// A value while evaluating: strings and JSON objects read in place,
/// everything else as minijinja's value.
#[derive(Debug, Clone)]
enum Val<'a> {
    Undefined,
    /// A plain (not safe) string.
    Str(Cow<'a, str>),
    /// An object of a JSON tree behind a lazy view ([`jinja_json`]).
    Object(&'a Arc<Json>, &'a Map<String, Json>),
    Value(Cow<'a, JinjaValue>),
}

impl<'a> Val<'a> {
    /// A value of the context or a constant.
    fn of(value: &'a JinjaValue) -> Option<Val<'a>> {
        if let Some((root, members)) = jinja_json::object_of(value) {
            return Some(Val::Object(root, members));
        }
        Some(match value.kind() {
            // The VM refuses an invalid value wherever it is loaded.
            ValueKind::Invalid => return None,
            ValueKind::Undefined => Val::Undefined,
            ValueKind::String if !value.is_safe() => Val::Str(Cow::Borrowed(value.as_str()?)),
            _ => Val::Value(Cow::Borrowed(value)),
        })
    }

    /// A member of a JSON object, as the lazy view hands it out.
    fn member(root: &'a Arc<Json>, member: &'a Json) -> Val<'a> {
        match member {
            Json::String(text) => Val::Str(Cow::Borrowed(text)),
            Json::Object(members) => Val::Object(root, members),
            other => Val::Value(Cow::Owned(jinja_json::member(root, other))),
        }
    }

    fn owned(value: JinjaValue) -> Option<Val<'a>> {
        Some(match value.kind() {
            ValueKind::Invalid => return None,
            ValueKind::Undefined => Val::Undefined,
            _ => Val::Value(Cow::Owned(value)),
        })
    }

    /// The same value as minijinja's.
    fn to_jinja(&self) -> Cow<'_, JinjaValue> {
        match self {
            Val::Undefined => Cow::Owned(JinjaValue::UNDEFINED),
            Val::Str(text) => Cow::Owned(JinjaValue::from(text.as_ref())),
            Val::Object(root, members) => Cow::Owned(jinja_json::object(root, members)),
            Val::Value(value) => Cow::Borrowed(value.as_ref()),
        }
    }
}

/// `Value::is_true` where the VM's strict check would pass (`None` for an
/// undefined value).
fn truthy(value: &Val<'_>) -> Option<bool> {
    Some(match value {
        Val::Undefined => return None,
        Val::Str(text) => !text.is_empty(),
        // The view's `enumerator_len` is its member count, and an object
        // is true unless that is 0.
        Val::Object(_, members) => !members.is_empty(),
        Val::Value(value) => value.is_true(),
    })
}

/// What a render's names resolve to: its `set` variables, then the
/// record's context (the VM's frame, then its context).
struct Scope<'a> {
    context: &'a RenderContext,
    locals: Vec<(&'a str, Val<'a>)>,
}

impl<'a> Scope<'a> {
    /// `name`'s value; `None` for a name the context lacks (it may be a
    /// global: minijinja's to find) or an invalid value.
    fn var(&self, name: &str) -> Option<Val<'a>> {
        if let Some((_, value)) = self.locals.iter().rev().find(|(n, _)| *n == name) {
            return Some(value.clone());
        }
        Val::of(self.context.get(name)?)
    }

    /// Whether `name` is a local or a context member, which hide a global
    /// of the same name.
    fn holds(&self, name: &str) -> bool {
        self.locals.iter().any(|(n, _)| *n == name) || self.context.get(name).is_some()
    }
}

fn eval<'a>(expr: &'a Expr, scope: &Scope<'a>) -> Option<Val<'a>> {
    let eval = |expr: &'a Expr| eval(expr, scope);
    Some(match expr {
        Expr::Const(value) => Val::of(value)?,
        Expr::Var(name) => scope.var(name)?,
        Expr::Attr(parent, name) => match eval(parent)? {
            // The VM's `GetAttr` fails on an undefined parent.
            Val::Undefined => return None,
            Val::Object(root, members) => match members.get(name.as_ref()) {
                Some(member) => Val::member(root, member),
                None => Val::Undefined,
            },
            // `get_attr_fast`: objects answer, anything else has no
            // attributes (undefined, not an error: the parent was defined).
            // `get_attr` is `get_attr_fast` for a defined value: objects
            // answer, anything else has no attributes (undefined, not an
            // error: the parent was defined).
            Val::Value(value) => Val::owned(value.get_attr(name).ok()?)?,
            Val::Str(_) => Val::Undefined,
        },
        Expr::Concat(left, right) => {
            let (left, right) = (eval(left)?, eval(right)?);
            if matches!(left, Val::Undefined) || matches!(right, Val::Undefined) {
                return None;
            }
            let mut text = String::new();
            display(&left, &mut text)?;
            display(&right, &mut text)?;
            Val::Str(Cow::Owned(text))
        }
        Expr::Eq {
            left,
            right,
            negated,
        } => {
            let (left, right) = (eval(left)?, eval(right)?);
            let equal = match (&left, &right) {
                (Val::Undefined, _) | (_, Val::Undefined) => return None,
                (Val::Str(a), Val::Str(b)) => a == b,
                (a, b) => a.to_jinja() == b.to_jinja(),
            };
            Val::Value(Cow::Owned(JinjaValue::from(equal != *negated)))
        }
        Expr::Not(operand) => {
            let value = eval(operand)?;
            Val::Value(Cow::Owned(JinjaValue::from(!truthy(&value)?)))
        }
        // `JumpIfFalseOrPop` / `JumpIfTrueOrPop`: the deciding operand
        // itself is the result.
        Expr::And(left, right) => {
            let left = eval(left)?;
            if truthy(&left)? {
                eval(right)?
            } else {
                left
            }
        }
        Expr::Or(left, right) => {
            let left = eval(left)?;
            if truthy(&left)? {
                left
            } else {
                eval(right)?
            }
        }
        Expr::If {
            test,
            then,
            otherwise,
        } => {
            if truthy(&eval(test)?)? {
                eval(then)?
            } else {
                match otherwise {
                    Some(otherwise) => eval(otherwise)?,
                    // The VM's silent undefined: printing it or testing it
                    // differs from a missing value's, so minijinja decides.
                    None => Val::Undefined,
                }
            }
        }
        Expr::Default(input, other) => {
            // The VM evaluates the argument before calling the filter.
            let input = eval(input)?;
            let other = match other {
                Some(other) => eval(other)?,
                None => Val::Str(Cow::Borrowed("")),
            };
            if matches!(input, Val::Undefined) {
                other
            } else {
                input
            }
        }
        Expr::Truncate(input, max) => {
            // The `String` argument: the value's `Display` (an undefined
            // one is an error in strict mode).
            let text = match eval(input)? {
                Val::Undefined => return None,
                Val::Str(text) => text.into_owned(),
                other => other.to_jinja().to_string(),
            };
            // Compiled for the blocks only, whose mode (`slack-json`)
            // counts characters as escaped.
            let escaped = true;
            Val::Str(Cow::Owned(super::truncate_text(text, *max, escaped)))
        }
        // The helpers take any value (a `Value` argument is not checked
        // for undefined): `markup` of an undefined value is empty markup,
        // the others hand it back (and printing it is minijinja's).
        Expr::Apply(helper, input) => Val::owned(helper(eval(input)?.to_jinja().into_owned()))?,
        Expr::Link { args, folded } => {
            // The VM looks the name up where it looks up variables first.
            if scope.holds("link") {
                return None;
            }
            if let Some(value) = folded {
                return Val::of(value);
            }
            // `url: Value` takes any value, undefined too (it displays
            // empty); `label: Option<Value>` is `None` for none or an
            // undefined value.
            let mut values = Vec::with_capacity(args.len());
            for arg in args {
                values.push(eval(arg)?.to_jinja().into_owned());
            }
            let mut values = values.into_iter();
            let url = values.next()?;
            let label = values
                .next()
                .filter(|label| !label.is_undefined() && !label.is_none());
            Val::owned(markup::link(url, label))?
        }
    })
}

/// `Display` of the value, as `~` writes it.
fn display(value: &Val<'_>, out: &mut String) -> Option<()> {
    match value {
        Val::Str(text) => out.push_str(text),
        other => write!(out, "{}", other.to_jinja()).ok()?,
    }
    Some(())
}
