//! The CEL subset real filters use — field selections, literals, `has()`,
//! comparisons, `&&`, `||`, `!`, `?:`, `in` a list literal, and string
//! `startsWith` / `endsWith` / `contains` — compiled once into a tree that
//! is evaluated against the fields it reads, taken straight from the record
//! (see [`slots`]) instead of from CEL values built for the interpreter.
//!
//! It decides only what it is sure of: any error (a missing field, a type
//! that does not compare, a non-boolean operand), and any value it does not
//! model (a map or list compared), hands the record to the interpreter,
//! which then decides, errors included, exactly as before. A filter outside
//! the subset is not compiled at all.

use std::borrow::Cow;
use std::cmp::Ordering;

use cel::common::ast::{operators, CallExpr, Expr, LiteralValue};
use cel::IdedExpr;

mod slots;

/// The variables a fast filter may read, and their nodes in
/// [`FastFilter::paths`].
const ROOTS: [&str; 3] = ["event", "key", "topic"];
const EVENT: usize = 0;
const KEY: usize = 1;
const TOPIC: usize = 2;

#[derive(Debug)]
pub(super) struct FastFilter {
    expr: Node,
    /// The member paths the filter reads, as a tree from [`ROOTS`]; a
    /// record fills one [`Val`] per node.
    paths: Vec<PathNode>,
}

#[derive(Debug)]
struct PathNode {
    name: String,
    children: Vec<usize>,
}

/// What a record holds at one path.
#[derive(Debug, Clone, PartialEq)]
enum Val<'a> {
    /// Not reached: an ancestor is missing or not a map.
    Unreached,
    /// A member its map does not have.
    Missing,
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Map,
    List,
}

#[derive(Debug)]
enum Node {
    Lit(Val<'static>),
    Path(usize),
    Has { parent: usize, child: usize },
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cond(Box<[Node; 3]>),
    Eq(Box<Node>, Box<Node>),
    Ne(Box<Node>, Box<Node>),
    Cmp(Box<Node>, Box<Node>, fn(Ordering) -> bool),
    In(Box<Node>, Vec<Node>),
    Text(fn(&str, &str) -> bool, Box<Node>, Box<Node>),
}

/// A value during evaluation.
#[derive(Debug, Clone, Copy)]
enum R<'x> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'x str),
    /// A map or a list.
    Composite,
}

impl FastFilter {
    /// `None`: the expression is outside the subset.
    pub(super) fn compile(expr: &IdedExpr) -> Option<FastFilter> {
        let mut filter = FastFilter {
            expr: Node::Lit(Val::Null),
            paths: ROOTS
                .iter()
                .map(|name| PathNode {
                    name: (*name).to_owned(),
                    children: Vec::new(),
                })
                .collect(),
        };
        filter.expr = filter.node(expr)?;
        Some(filter)
    }

    fn node(&mut self, expr: &IdedExpr) -> Option<Node> {
        Some(match &expr.expr {
            Expr::Literal(literal) => Node::Lit(match literal {
                LiteralValue::Null => Val::Null,
                LiteralValue::Boolean(b) => Val::Bool(*b.inner()),
                LiteralValue::Int(i) => Val::Int(*i.inner()),
                LiteralValue::UInt(u) => Val::UInt(*u.inner()),
                LiteralValue::Double(d) => Val::Float(*d.inner()),
                LiteralValue::String(s) => Val::Str(Cow::Owned(s.inner().to_owned())),
                LiteralValue::Bytes(_) => return None,
            }),
            Expr::Select(select) if select.test => {
                let parent = self.path(&select.operand.expr)?;
                Node::Has {
                    parent,
                    child: self.child(parent, &select.field),
                }
            }
            Expr::Ident(_) | Expr::Select(_) => Node::Path(self.path(&expr.expr)?),
            Expr::Call(call) => self.call(call)?,
            _ => return None,
        })
    }

    /// The node of a selection chain on one of [`ROOTS`].
    fn path(&mut self, expr: &Expr) -> Option<usize> {
        match expr {
            Expr::Ident(name) => ROOTS.iter().position(|root| root == name),
            Expr::Select(select) if !select.test => {
                let parent = self.path(&select.operand.expr)?;
                Some(self.child(parent, &select.field))
            }
            _ => None,
        }
    }

    fn child(&mut self, parent: usize, name: &str) -> usize {
        if let Some(&known) = self.paths[parent]
            .children
            .iter()
            .find(|&&c| self.paths[c].name == name)
        {
            return known;
        }
        self.paths.push(PathNode {
            name: name.to_owned(),
            children: Vec::new(),
        });
        let id = self.paths.len() - 1;
        self.paths[parent].children.push(id);
        id
    }

    fn call(&mut self, call: &CallExpr) -> Option<Node> {
        let two = |this: &mut Self, l: &IdedExpr, r: &IdedExpr| {
            Some((Box::new(this.node(l)?), Box::new(this.node(r)?)))
        };
        Some(
            match (
                call.target.as_deref(),
                call.func_name.as_str(),
                &call.args[..],
            ) {
                (None, operators::LOGICAL_AND, [l, r]) => {
                    let (l, r) = two(self, l, r)?;
                    Node::And(l, r)
                }
                (None, operators::LOGICAL_OR, [l, r]) => {
                    let (l, r) = two(self, l, r)?;
                    Node::Or(l, r)
                }
                (None, operators::LOGICAL_NOT, [operand]) => {
                    Node::Not(Box::new(self.node(operand)?))
                }
                (None, operators::CONDITIONAL, [c, t, f]) => {
                    Node::Cond(Box::new([self.node(c)?, self.node(t)?, self.node(f)?]))
                }
                (None, operators::EQUALS, [l, r]) => {
                    let (l, r) = two(self, l, r)?;
                    Node::Eq(l, r)
                }
                (None, operators::NOT_EQUALS, [l, r]) => {
                    let (l, r) = two(self, l, r)?;
                    Node::Ne(l, r)
                }
                (None, op, [l, r]) if comparison(op).is_some() => {
                    let test = comparison(op)?;
                    let (l, r) = two(self, l, r)?;
                    Node::Cmp(l, r, test)
                }
                (None, operators::IN, [item, list]) => match &list.expr {
                    Expr::List(list) if list.optional_indices.is_empty() => Node::In(
                        Box::new(self.node(item)?),
                        list.elements
                            .iter()
                            .map(|e| self.node(e))
                            .collect::<Option<_>>()?,
                    ),
                    _ => return None,
                },
                (Some(target), name, [arg]) => {
                    let test: fn(&str, &str) -> bool = match name {
                        "startsWith" => |s, p| s.starts_with(p),
                        "endsWith" => |s, p| s.ends_with(p),
                        "contains" => |s, p| s.contains(p),
                        _ => return None,
                    };
                    let (target, arg) = two(self, target, arg)?;
                    Node::Text(test, target, arg)
                }
                _ => return None,
            },
        )
    }

    /// The filter's decision on filled `slots`; `None`: the interpreter's.
    fn decide(&self, slots: &[Val<'_>]) -> Option<bool> {
        match eval(&self.expr, slots)? {
            R::Bool(b) => Some(b),
            _ => None,
        }
    }
}

fn comparison(op: &str) -> Option<fn(Ordering) -> bool> {
    Some(match op {
        operators::LESS => |o| o == Ordering::Less,
        operators::LESS_EQUALS => |o| o != Ordering::Greater,
        operators::GREATER => |o| o == Ordering::Greater,
        operators::GREATER_EQUALS => |o| o != Ordering::Less,
        _ => return None,
    })
}

fn eval<'x>(node: &'x Node, slots: &'x [Val<'_>]) -> Option<R<'x>> {
    let boolean = |node: &'x Node| match eval(node, slots)? {
        R::Bool(b) => Some(b),
        _ => None,
    };
    Some(match node {
        Node::Lit(value) => R::of(value)?,
        Node::Path(i) => R::of(slots.get(*i)?)?,
        Node::Has { parent, child } => match (slots.get(*parent)?, slots.get(*child)?) {
            (Val::Map, Val::Missing) => R::Bool(false),
            (Val::Map, _) => R::Bool(true),
            _ => return None,
        },
        Node::Not(operand) => R::Bool(!boolean(operand)?),
        Node::And(l, r) => R::Bool(boolean(l)? && boolean(r)?),
        Node::Or(l, r) => R::Bool(boolean(l)? || boolean(r)?),
        Node::Cond(parts) => {
            let [c, t, f] = &**parts;
            if boolean(c)? {
                eval(t, slots)?
            } else {
                eval(f, slots)?
            }
        }
        Node::Eq(l, r) => R::Bool(equals(eval(l, slots)?, eval(r, slots)?)?),
        Node::Ne(l, r) => R::Bool(!equals(eval(l, slots)?, eval(r, slots)?)?),
        Node::Cmp(l, r, test) => R::Bool(test(compare(eval(l, slots)?, eval(r, slots)?)?)),
        Node::In(item, list) => {
            let item = eval(item, slots)?;
            // Every element is evaluated first, as the interpreter builds
            // the list before looking in it.
            let mut found = false;
            for element in list {
                found |= equals(eval(element, slots)?, item)?;
            }
            R::Bool(found)
        }
        Node::Text(test, target, arg) => match (eval(target, slots)?, eval(arg, slots)?) {
            (R::Str(s), R::Str(p)) => R::Bool(test(s, p)),
            _ => return None,
        },
    })
}

impl<'x> R<'x> {
    /// `None` for a value selecting it fails on.
    fn of(value: &'x Val<'_>) -> Option<R<'x>> {
        Some(match value {
            Val::Unreached | Val::Missing => return None,
            Val::Null => R::Null,
            Val::Bool(b) => R::Bool(*b),
            Val::Int(i) => R::Int(*i),
            Val::UInt(u) => R::UInt(*u),
            Val::Float(f) => R::Float(*f),
            Val::Str(s) => R::Str(s),
            Val::Map | Val::List => R::Composite,
        })
    }
}

/// CEL's `==`: numbers across int, uint and double by value, anything else
/// only within its type. `None` for maps and lists (not modelled).
fn equals(a: R<'_>, b: R<'_>) -> Option<bool> {
    Some(match (a, b) {
        (R::Composite, _) | (_, R::Composite) => return None,
        (R::Null, R::Null) => true,
        (R::Bool(a), R::Bool(b)) => a == b,
        (R::Str(a), R::Str(b)) => a == b,
        (a, b) => numbers(a, b).is_some_and(|o| o == Some(Ordering::Equal)),
    })
}

/// CEL's ordering; `None` where CEL fails (different types, NaN).
fn compare(a: R<'_>, b: R<'_>) -> Option<Ordering> {
    match (a, b) {
        (R::Str(a), R::Str(b)) => Some(a.cmp(b)),
        (R::Bool(a), R::Bool(b)) => Some(a.cmp(&b)),
        (a, b) => numbers(a, b)?,
    }
}

/// `None`: not two numbers; `Some(None)`: numbers that do not compare (NaN).
/// Mixed int and uint compare exactly; with a double, as doubles.
fn numbers(a: R<'_>, b: R<'_>) -> Option<Option<Ordering>> {
    Some(match (a, b) {
        (R::Int(a), R::Int(b)) => Some(a.cmp(&b)),
        (R::UInt(a), R::UInt(b)) => Some(a.cmp(&b)),
        (R::Int(a), R::UInt(b)) => Some(u64::try_from(a).map_or(Ordering::Less, |a| a.cmp(&b))),
        (R::UInt(a), R::Int(b)) => Some(i64::try_from(a).map_or(Ordering::Greater, |a| a.cmp(&b))),
        (R::Int(a), R::Float(b)) => (a as f64).partial_cmp(&b),
        (R::UInt(a), R::Float(b)) => (a as f64).partial_cmp(&b),
        (R::Float(a), R::Int(b)) => a.partial_cmp(&(b as f64)),
        (R::Float(a), R::UInt(b)) => a.partial_cmp(&(b as f64)),
        (R::Float(a), R::Float(b)) => a.partial_cmp(&b),
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
