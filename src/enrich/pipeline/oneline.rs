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

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::machinery::{ast, parse, WhitespaceConfig};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::ValueKind;
use minijinja::{Environment, Value as JinjaValue};
use serde_json::{Map, Value as Json};

use super::context::RenderContext;
use super::{jinja_json, needs_escape};
use crate::enrich::markup;

/// How a template's printed values are escaped: its auto-escape mode as
/// [`super::slack_formatter`] applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Escape {
    /// `AutoEscape::None`: written as minijinja displays them.
    None,
    /// The `slack-text` mode: Slack-escaped unless safe or markup.
    SlackText,
}

/// A one-line template compiled for [`OneLine::render`].
#[derive(Debug)]
pub(super) struct OneLine {
    body: Vec<Node>,
    escape: Escape,
}

#[derive(Debug)]
enum Node {
    Raw(Box<str>),
    Emit(Expr),
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
}

impl OneLine {
    /// `source` compiled for `env` (whose whitespace settings the parse
    /// uses), or `None` when it is outside the subset (or does not parse:
    /// the environment reports that when the template is added).
    pub fn compile(env: &Environment<'_>, source: &str, escape: Escape) -> Option<OneLine> {
        let whitespace = WhitespaceConfig {
            keep_trailing_newline: env.keep_trailing_newline(),
            lstrip_blocks: env.lstrip_blocks(),
            trim_blocks: env.trim_blocks(),
        };
        let tree = parse(source, "<one-line>", SyntaxConfig, whitespace).ok()?;
        let ast::Stmt::Template(template) = tree else {
            return None;
        };
        Some(OneLine {
            body: nodes(&template.children)?,
            escape,
        })
    }

    /// The rendered text, or `None`: render this context with minijinja.
    pub fn render(&self, context: &RenderContext) -> Option<String> {
        let mut out = String::with_capacity(64);
        self.write(&self.body, context, &mut out)?;
        Some(out)
    }

    fn write(&self, body: &[Node], context: &RenderContext, out: &mut String) -> Option<()> {
        for node in body {
            match node {
                Node::Raw(text) => out.push_str(text),
                Node::Emit(expr) => {
                    let value = eval(expr, context)?;
                    self.emit(&value, out)?;
                }
                Node::If {
                    test,
                    then,
                    otherwise,
                } => {
                    let branch = if truthy(&eval(test, context)?)? {
                        then
                    } else {
                        otherwise
                    };
                    self.write(branch, context, out)?;
                }
            }
        }
        Some(())
    }

    /// What the VM's `Emit` writes through `slack_formatter` (outside a
    /// recorded render): an undefined value is minijinja's to report.
    fn emit(&self, value: &Val<'_>, out: &mut String) -> Option<()> {
        match (self.escape, value) {
            (_, Val::Undefined) => return None,
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

fn nodes(children: &[ast::Stmt<'_>]) -> Option<Vec<Node>> {
    children.iter().map(node).collect()
}

fn node(stmt: &ast::Stmt<'_>) -> Option<Node> {
    Some(match stmt {
        ast::Stmt::EmitRaw(raw) => Node::Raw(raw.raw.into()),
        // A call is the one expression the code generator emits specially
        // (`super()`, `loop(…)`, blocks); calls are outside the subset.
        ast::Stmt::EmitExpr(emit) => Node::Emit(expr(&emit.expr)?),
        ast::Stmt::IfCond(cond) => Node::If {
            test: expr(&cond.expr)?,
            then: nodes(&cond.true_body)?,
            otherwise: nodes(&cond.false_body)?,
        },
        _ => return None,
    })
}

fn boxed(e: &ast::Expr<'_>) -> Option<Box<Expr>> {
    expr(e).map(Box::new)
}

fn expr(e: &ast::Expr<'_>) -> Option<Expr> {
    // The code generator folds first, with `as_const`'s own semantics
    // (`and` of constants folds to `false`, not to its left operand).
    if let Some(value) = e.as_const() {
        return Some(Expr::Const(value));
    }
    Some(match e {
        ast::Expr::Var(var) => Expr::Var(var.id.into()),
        ast::Expr::GetAttr(attr) => Expr::Attr(boxed(&attr.expr)?, attr.name.into()),
        ast::Expr::BinOp(op) => {
            let (left, right) = (boxed(&op.left)?, boxed(&op.right)?);
            match op.op {
                ast::BinOpKind::Concat => Expr::Concat(left, right),
                ast::BinOpKind::ScAnd => Expr::And(left, right),
                ast::BinOpKind::ScOr => Expr::Or(left, right),
                ast::BinOpKind::Eq | ast::BinOpKind::Ne => Expr::Eq {
                    left,
                    right,
                    negated: matches!(op.op, ast::BinOpKind::Ne),
                },
                _ => return None,
            }
        }
        // A chain (`a == b == c`) compiles to other instructions.
        ast::Expr::Compare(compare) if compare.ops.len() == 1 => {
            let op = &compare.ops[0];
            let negated = match op.op {
                ast::CompareOpKind::Eq => false,
                ast::CompareOpKind::Ne => true,
                _ => return None,
            };
            Expr::Eq {
                left: boxed(&compare.expr)?,
                right: boxed(&op.expr)?,
                negated,
            }
        }
        ast::Expr::UnaryOp(op) if matches!(op.op, ast::UnaryOpKind::Not) => {
            Expr::Not(boxed(&op.expr)?)
        }
        ast::Expr::IfExpr(cond) => Expr::If {
            test: boxed(&cond.test_expr)?,
            then: boxed(&cond.true_expr)?,
            otherwise: match &cond.false_expr {
                Some(e) => Some(boxed(e)?),
                None => None,
            },
        },
        // The pipeline registers no filter of this name, so it is
        // minijinja's built-in; its second argument (`lax`) is not
        // supported.
        ast::Expr::Filter(filter) if filter.name == "default" && filter.args.len() <= 1 => {
            let input = boxed(filter.expr.as_ref()?)?;
            let other = match filter.args.first() {
                None => None,
                Some(ast::CallArg::Pos(arg)) => Some(boxed(arg)?),
                Some(_) => return None,
            };
            Expr::Default(input, other)
        }
        _ => return None,
    })
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

fn eval<'a>(expr: &'a Expr, context: &'a RenderContext) -> Option<Val<'a>> {
    Some(match expr {
        Expr::Const(value) => Val::of(value)?,
        // A name the context lacks may be a global: minijinja's to find.
        Expr::Var(name) => Val::of(context.get(name)?)?,
        Expr::Attr(parent, name) => match eval(parent, context)? {
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
            let (left, right) = (eval(left, context)?, eval(right, context)?);
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
            let (left, right) = (eval(left, context)?, eval(right, context)?);
            let equal = match (&left, &right) {
                (Val::Undefined, _) | (_, Val::Undefined) => return None,
                (Val::Str(a), Val::Str(b)) => a == b,
                (a, b) => a.to_jinja() == b.to_jinja(),
            };
            Val::Value(Cow::Owned(JinjaValue::from(equal != *negated)))
        }
        Expr::Not(operand) => {
            let value = eval(operand, context)?;
            Val::Value(Cow::Owned(JinjaValue::from(!truthy(&value)?)))
        }
        // `JumpIfFalseOrPop` / `JumpIfTrueOrPop`: the deciding operand
        // itself is the result.
        Expr::And(left, right) => {
            let left = eval(left, context)?;
            if truthy(&left)? {
                eval(right, context)?
            } else {
                left
            }
        }
        Expr::Or(left, right) => {
            let left = eval(left, context)?;
            if truthy(&left)? {
                left
            } else {
                eval(right, context)?
            }
        }
        Expr::If {
            test,
            then,
            otherwise,
        } => {
            if truthy(&eval(test, context)?)? {
                eval(then, context)?
            } else {
                match otherwise {
                    Some(otherwise) => eval(otherwise, context)?,
                    // The VM's silent undefined: printing it or testing it
                    // differs from a missing value's, so minijinja decides.
                    None => Val::Undefined,
                }
            }
        }
        Expr::Default(input, other) => {
            // The VM evaluates the argument before calling the filter.
            let input = eval(input, context)?;
            let other = match other {
                Some(other) => eval(other, context)?,
                None => Val::Str(Cow::Borrowed("")),
            };
            if matches!(input, Val::Undefined) {
                other
            } else {
                input
            }
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
