//! The syntax tree of VQL, with byte spans into the source.

use std::ops::Range;
use std::sync::Arc;

/// A byte range of the source.
pub type Span = Range<usize>;

/// A sequence of statements (an artifact source, a `talon query`).
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub stmts: Vec<Stmt>,
}

/// One statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    Let(Let),
    Select(Select),
}

/// `LET name[(params)] =|<= value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Let {
    pub name: String,
    /// Present (maybe empty) when the LET declares parameters.
    pub params: Option<Vec<Param>>,
    /// `<=`: evaluate (and materialise) now.
    pub materialize: bool,
    pub value: LetValue,
    pub span: Span,
}

/// What a LET binds.
#[derive(Debug, Clone, PartialEq)]
pub enum LetValue {
    Query(Arc<Select>),
    Expr(Expr),
}

/// A parameter of a LET function or query, with an optional default.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub default: Option<ArgValue>,
}

/// `SELECT ... FROM ...`.
#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    pub explain: bool,
    pub columns: Vec<Column>,
    pub from: Source,
    pub where_: Option<Expr>,
    pub group_by: Option<Expr>,
    pub order_by: Option<OrderBy>,
    pub limit: Option<i64>,
    pub span: Span,
}

/// `ORDER BY name [DESC]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderBy {
    pub column: String,
    pub desc: bool,
}

/// One column of a SELECT.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// `*`.
    Star,
    /// An expression or brace subquery, maybe aliased.
    Value {
        value: ColumnValue,
        alias: Option<String>,
        span: Span,
    },
}

/// The value of a column.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnValue {
    Expr(Expr),
    Query(Arc<Select>),
    /// `* AS x`: the whole row under one name.
    Star,
}

/// `FROM name.path(args)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub path: Vec<String>,
    pub args: Option<Vec<Arg>>,
    pub span: Span,
}

impl Source {
    /// The dotted name.
    pub fn name(&self) -> String {
        self.path.join(".")
    }
}

/// A keyword argument `name = value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    pub name: String,
    pub value: ArgValue,
    pub span: Span,
}

/// An argument's value.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgValue {
    /// `{ SELECT ... }`: passed as an unevaluated query.
    Query(Arc<Select>),
    /// `[a, b]`: evaluated before the call.
    List(Vec<Expr>),
    /// An expression: passed lazily to functions, evaluated before plugins.
    Expr(Expr),
}

/// An expression with its span.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    And,
    /// `&&`
    AltAnd,
    Or,
    /// `||`
    AltOr,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Regex,
    In,
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    /// The operator as the formatter prints it.
    pub fn text(self) -> &'static str {
        match self {
            BinOp::And => "AND",
            BinOp::AltAnd => "&&",
            BinOp::Or => "OR",
            BinOp::AltOr => "||",
            BinOp::Eq => "=",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Regex => "=~",
            BinOp::In => "IN",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }
}

/// Expression forms.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Vec<u8>),
    /// `(a, b)`.
    List(Vec<Expr>),
    /// `(e)`.
    Paren(Box<Expr>),
    /// A (maybe negated) dotted name, maybe called: `a.b`, `-x`, `f(a=1)`.
    Symbol {
        negated: bool,
        path: Vec<String>,
        call: Option<Vec<Arg>>,
    },
    /// Postfix `.name`.
    Member(Box<Expr>, String),
    /// Postfix `[i]`; `None` for `x[]`.
    Index(Box<Expr>, Option<Box<Expr>>),
    /// Postfix `[a:b]`.
    Slice(Box<Expr>, Option<Box<Expr>>, Option<Box<Expr>>),
    Not(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
}

impl Expr {
    /// An expression of a kind at a span.
    pub fn new(kind: ExprKind, span: Span) -> Self {
        Self { kind, span }
    }

    /// Takes the kind out, leaving NULL (an `Expr` has a `Drop`, so its fields cannot be
    /// moved out by a pattern).
    pub fn take_kind(&mut self) -> ExprKind {
        std::mem::replace(&mut self.kind, ExprKind::Null)
    }
}

/// Deep trees (a long `1+1+...` chain, `a.b.c...`) are dropped with an explicit stack: the
/// compiler's recursive drop would overflow the thread's stack on a tree the depth check
/// has just refused, aborting the process instead of returning the error.
impl Drop for Expr {
    fn drop(&mut self) {
        let mut pending = Vec::new();
        children_into(self.take_kind(), &mut pending);
        while let Some(mut e) = pending.pop() {
            // Each popped expression is left childless before it drops.
            children_into(e.take_kind(), &mut pending);
        }
    }
}

fn children_into(kind: ExprKind, out: &mut Vec<Expr>) {
    match kind {
        ExprKind::List(items) => out.extend(items),
        ExprKind::Paren(x) | ExprKind::Not(x) | ExprKind::Member(x, _) => out.push(*x),
        ExprKind::Index(x, i) => {
            out.push(*x);
            out.extend(i.map(|i| *i));
        }
        ExprKind::Slice(x, a, b) => {
            out.push(*x);
            out.extend(a.map(|a| *a));
            out.extend(b.map(|b| *b));
        }
        ExprKind::Binary(_, l, r) => {
            out.push(*l);
            out.push(*r);
        }
        ExprKind::Symbol {
            call: Some(args), ..
        } => {
            for a in args {
                match a.value {
                    ArgValue::Expr(x) => out.push(x),
                    ArgValue::List(items) => out.extend(items),
                    ArgValue::Query(_) => {}
                }
            }
        }
        _ => {}
    }
}
