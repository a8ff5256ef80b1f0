//! Building a [`super::OneLine`] from minijinja's parse: each node and
//! expression of the subset mapped to its evaluator form, anything else
//! refused (the template then stays minijinja's).

use super::*;

/// The compiler for one [`Subset`].
pub(super) struct Compiler {
    pub(super) subset: Subset,
}

impl Compiler {
    pub(super) fn blocks(&self) -> bool {
        self.subset == Subset::Blocks
    }

    /// A statement of the template's top level: `set` is taken here only
    /// (its variable then lives until the render ends, as a top-level
    /// `set` stores into the render's root frame).
    pub(super) fn top_node(&self, stmt: &ast::Stmt<'_>) -> Option<Node> {
        match stmt {
            // `set a, b = …` and `set a.b = …` compile to other
            // instructions.
            ast::Stmt::Set(set) if self.blocks() => match &set.target {
                ast::Expr::Var(var) => Some(Node::Set(var.id.into(), self.expr(&set.expr)?)),
                _ => None,
            },
            _ => self.node(stmt),
        }
    }

    pub(super) fn nodes(&self, children: &[ast::Stmt<'_>]) -> Option<Vec<Node>> {
        children.iter().map(|stmt| self.node(stmt)).collect()
    }

    pub(super) fn node(&self, stmt: &ast::Stmt<'_>) -> Option<Node> {
        Some(match stmt {
            ast::Stmt::EmitRaw(raw) => Node::Raw(raw.raw.into()),
            // A call is the one expression the code generator emits
            // specially (`super()`, `loop(…)`, blocks); of the calls only
            // `link(…)` is in the (blocks') subset.
            ast::Stmt::EmitExpr(emit) => Node::Emit(self.expr(&emit.expr)?),
            ast::Stmt::IfCond(cond) => Node::If {
                test: self.expr(&cond.expr)?,
                then: self.nodes(&cond.true_body)?,
                otherwise: self.nodes(&cond.false_body)?,
            },
            _ => return None,
        })
    }

    pub(super) fn boxed(&self, e: &ast::Expr<'_>) -> Option<Box<Expr>> {
        self.expr(e).map(Box::new)
    }

    /// The blocks' filters and `link`, or `None` for anything else.
    pub(super) fn blocks_expr(&self, e: &ast::Expr<'_>) -> Option<Expr> {
        if !self.blocks() {
            return None;
        }
        match e {
            ast::Expr::Filter(filter) => {
                let helper: fn(JinjaValue) -> JinjaValue = match filter.name {
                    // `truncate(state, text: String, max: usize)`: one
                    // positional argument, a constant `usize` converts.
                    "truncate" => {
                        let [ast::CallArg::Pos(max)] = &filter.args[..] else {
                            return None;
                        };
                        let max = usize::try_from(max.as_const()?).ok()?;
                        let input = self.boxed(filter.expr.as_ref()?)?;
                        return Some(Expr::Truncate(input, max));
                    }
                    "mention" => markup::mention,
                    "slack_date" => markup::slack_date,
                    "markup" => markup::markup,
                    _ => return None,
                };
                // Each takes the one value: an argument is an error.
                if !filter.args.is_empty() {
                    return None;
                }
                Some(Expr::Apply(helper, self.boxed(filter.expr.as_ref()?)?))
            }
            ast::Expr::Call(call) => {
                let ast::Expr::Var(var) = &call.expr else {
                    return None;
                };
                // `link(url, label: Option)`: one or two positional
                // arguments.
                if var.id != "link" || call.args.is_empty() || call.args.len() > 2 {
                    return None;
                }
                let args = call
                    .args
                    .iter()
                    .map(|arg| match arg {
                        ast::CallArg::Pos(arg) => self.expr(arg),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                let folded = match &args[..] {
                    [Expr::Const(url)] => Some(markup::link(url.clone(), None)),
                    [Expr::Const(url), Expr::Const(label)] => {
                        Some(markup::link(url.clone(), Some(label.clone())))
                    }
                    _ => None,
                };
                Some(Expr::Link { args, folded })
            }
            _ => None,
        }
    }

    pub(super) fn expr(&self, e: &ast::Expr<'_>) -> Option<Expr> {
        // The code generator folds first, with `as_const`'s own semantics
        // (`and` of constants folds to `false`, not to its left operand).
        if let Some(value) = e.as_const() {
            return Some(Expr::Const(value));
        }
        if let Some(blocks) = self.blocks_expr(e) {
            return Some(blocks);
        }
        let boxed = |e| self.boxed(e);
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
}
