// chumsky's error type is large by design; parsers return it by value everywhere.
#![allow(clippy::result_large_err)]
//! The grammar of SPEC-VQL §1.2 as chumsky combinators over the lexer's tokens, one
//! function per production. The three recursive productions (a SELECT, an expression and
//! an argument value, each of which can hold the others) are declared first and defined
//! from these functions in [`parsers`].

use std::sync::Arc;

use chumsky::prelude::*;

use crate::syntax::ast::*;
use crate::syntax::lexer::Tok;

/// A boxed parser of the token stream.
pub(crate) type P<O> = BoxedParser<'static, Tok, O, Simple<Tok>>;

fn op(s: &'static str) -> impl Parser<Tok, Tok, Error = Simple<Tok>> + Clone {
    just(Tok::Op(s))
}

fn ident() -> impl Parser<Tok, String, Error = Simple<Tok>> + Clone {
    select! { Tok::Ident(s) => s }.labelled("an identifier")
}

/// Integer literal rules of Go's ParseInt with base prefixes; None when not an integer.
pub fn parse_int(text: &str) -> Option<i64> {
    let (neg, t) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    let v = if let Some(h) = t.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()? as i64
    } else if t.len() > 1 && t.starts_with('0') && t.bytes().all(|c| c.is_ascii_digit()) {
        i64::from_str_radix(&t[1..], 8).ok()?
    } else if t.bytes().all(|c| c.is_ascii_digit()) && !t.is_empty() {
        t.parse::<i64>().ok()?
    } else {
        return None;
    };
    Some(if neg { v.wrapping_neg() } else { v })
}

fn number_kind(text: &str) -> ExprKind {
    match parse_int(text) {
        Some(i) => ExprKind::Int(i),
        None => ExprKind::Float(text.parse::<f64>().unwrap_or(f64::NAN)),
    }
}

fn binary(lhs: Expr, (op, rhs): (BinOp, Expr)) -> Expr {
    let span = lhs.span.start..rhs.span.end;
    Expr::new(ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)), span)
}

/// The SELECT, expression and argument value parsers, which refer to each other.
pub(crate) fn parsers() -> (P<Select>, P<Expr>, P<ArgValue>) {
    let mut select_rec: Recursive<'static, Tok, Select, Simple<Tok>> = Recursive::declare();
    let mut expr_rec: Recursive<'static, Tok, Expr, Simple<Tok>> = Recursive::declare();
    let select_p = select_rec.clone().boxed();
    let expr_p = expr_rec.clone().boxed();
    let arg = arg_value(select_p.clone(), expr_p.clone());
    expr_rec.define(expression(expr_p.clone(), arg.clone()));
    select_rec.define(select_query(select_p, expr_p.clone(), arg.clone()));
    (select_rec.boxed(), expr_rec.boxed(), arg)
}

/// `ExprList`: one expression, or a list when a comma appears (`(1,)`, `(1, 2 3)` = `(1, 3)`).
fn expr_list(expr: P<Expr>) -> P<Expr> {
    expr.clone()
        .then(op(",").ignore_then(expr.repeated()).repeated())
        .map_with_span(|(first, groups), span| {
            if groups.is_empty() {
                first
            } else {
                let mut items = vec![first];
                items.extend(groups.into_iter().filter_map(|mut g| g.pop()));
                Expr::new(ExprKind::List(items), span)
            }
        })
        .boxed()
}

/// An argument's name: an identifier, or a keyword used as one (`mail(from=...)`,
/// `hunt_flows(limit=...)`), as vfilter allows.
fn arg_name() -> impl Parser<Tok, String, Error = Simple<Tok>> + Clone {
    ident().or(select! {
        Tok::From => "from".to_string(),
        Tok::Limit => "limit".to_string(),
        Tok::Desc => "desc".to_string(),
    })
}

/// `Args`: `(name = value, ...)`.
fn args(arg_value: P<ArgValue>) -> P<Vec<Arg>> {
    arg_name()
        .then_ignore(op("="))
        .then(arg_value)
        .map_with_span(|(name, value), span| Arg { name, value, span })
        .separated_by(op(","))
        .delimited_by(op("("), op(")"))
        .boxed()
}

/// `ArgValue`: a `{subquery}`, a `[list]`, or an expression.
fn arg_value(select: P<Select>, expr: P<Expr>) -> P<ArgValue> {
    choice((
        select
            .delimited_by(op("{"), op("}"))
            .map(|s| ArgValue::Query(Arc::new(s))),
        expr_list(expr.clone())
            .or_not()
            .delimited_by(op("["), op("]"))
            .map(|l| match l {
                None => ArgValue::List(Vec::new()),
                Some(mut e) if matches!(e.kind, ExprKind::List(_)) => match e.take_kind() {
                    ExprKind::List(items) => ArgValue::List(items),
                    _ => unreachable!("matched a list"),
                },
                Some(e) => ArgValue::Expr(e),
            }),
        expr.map(ArgValue::Expr),
    ))
    .boxed()
}

/// `Symbol`: a dotted path, possibly negated (`-x`), possibly called (`f(a=1)(b=2)`).
fn symbol(arg_value: P<ArgValue>) -> P<Expr> {
    ident()
        .map(|s| (false, s))
        .or(select! { Tok::SymbolIdent(s) => (true, s) })
        .then(op(".").ignore_then(ident()).repeated())
        .then(args(arg_value).repeated())
        .map_with_span(|(((negated, first), rest), calls), span| {
            let mut path = vec![first];
            path.extend(rest);
            let call = if calls.is_empty() {
                None
            } else {
                Some(calls.into_iter().flatten().collect())
            };
            Expr::new(
                ExprKind::Symbol {
                    negated,
                    path,
                    call,
                },
                span,
            )
        })
        .boxed()
}

/// `Literal`: a string, number, boolean or NULL.
fn literal() -> P<Expr> {
    select! {
        Tok::Str(s) => ExprKind::Str(s),
        Tok::Number(n) => number_kind(&n),
        Tok::Bool(b) => ExprKind::Bool(b),
        Tok::Null => ExprKind::Null,
    }
    .map_with_span(Expr::new)
    .boxed()
}

/// `Paren`: `( ExprList )`, a list when it holds a comma.
fn paren(expr: P<Expr>) -> P<Expr> {
    expr_list(expr)
        .delimited_by(op("("), op(")"))
        .map_with_span(|mut e, span| match e.kind {
            ExprKind::List(_) => Expr::new(e.take_kind(), span),
            _ => Expr::new(ExprKind::Paren(Box::new(e)), span),
        })
        .boxed()
}

/// `Primary`: a symbol, a parenthesised list or a literal.
fn primary(expr: P<Expr>, arg_value: P<ArgValue>) -> P<Expr> {
    choice((symbol(arg_value), paren(expr), literal()))
        .labelled("an expression")
        .boxed()
}

/// A postfix operation: `[i]`, `[a:b]` or `.member`.
#[derive(Clone)]
enum Post {
    Index(Option<Expr>),
    Slice(Option<Expr>, Option<Expr>),
    Member(String),
}

/// `Index`: `[primary]` or a slice `[a:b]` (vfilter keeps the last primary of each side).
fn index(primary: P<Expr>) -> P<Post> {
    primary
        .clone()
        .repeated()
        .then(op(":").repeated())
        .then(primary.repeated())
        .delimited_by(op("["), op("]"))
        .map(|((mut a, colons), mut b)| {
            if colons.is_empty() && b.is_empty() {
                Post::Index(a.pop())
            } else if colons.is_empty() {
                Post::Index(b.pop())
            } else {
                Post::Slice(a.pop(), b.pop())
            }
        })
        .boxed()
}

/// `Postfix`: a primary followed by indexes, slices and members.
fn postfix(primary: P<Expr>) -> P<Expr> {
    let member = op(".").ignore_then(arg_name()).map(Post::Member);
    primary
        .clone()
        .then(
            index(primary)
                .or(member)
                .map_with_span(|p, s| (p, s))
                .repeated(),
        )
        .foldl(|lhs, (p, span)| {
            let span = lhs.span.start..span.end;
            let kind = match p {
                Post::Index(i) => ExprKind::Index(Box::new(lhs), i.map(Box::new)),
                Post::Slice(a, b) => {
                    ExprKind::Slice(Box::new(lhs), a.map(Box::new), b.map(Box::new))
                }
                Post::Member(m) => ExprKind::Member(Box::new(lhs), m),
            };
            Expr::new(kind, span)
        })
        .boxed()
}

/// `Product`: postfix expressions joined by `*` and `/`, whose right operand is a bare
/// primary (vfilter's grammar).
fn product(primary: P<Expr>) -> P<Expr> {
    postfix(primary.clone())
        .then(
            op("*")
                .to(BinOp::Mul)
                .or(op("/").to(BinOp::Div))
                .then(primary)
                .repeated(),
        )
        .foldl(binary)
        .boxed()
}

/// `Sum`: products joined by `+` and `-`.
fn sum(product: P<Expr>) -> P<Expr> {
    product
        .clone()
        .then(
            op("+")
                .to(BinOp::Add)
                .or(op("-").to(BinOp::Sub))
                .then(product)
                .repeated(),
        )
        .foldl(binary)
        .boxed()
}

/// A comparison operator.
fn comparison_op() -> P<BinOp> {
    choice((
        op("=").to(BinOp::Eq),
        op("!=").to(BinOp::Ne),
        op("<>").to(BinOp::Ne),
        op("<=").to(BinOp::Le),
        op(">=").to(BinOp::Ge),
        op("<").to(BinOp::Lt),
        op(">").to(BinOp::Gt),
        op("=~").to(BinOp::Regex),
        just(Tok::In).to(BinOp::In),
    ))
    .boxed()
}

/// `Condition`: `NOT condition`, or sums compared; comparisons do not chain (only the
/// last is kept).
fn condition(sum: P<Expr>) -> P<Expr> {
    recursive(|cond: Recursive<'static, Tok, Expr, Simple<Tok>>| {
        just(Tok::Not)
            .map_with_span(|_, s: Span| s)
            .then(cond)
            .map(|(s, inner): (Span, Expr)| {
                let span = s.start..inner.span.end;
                Expr::new(ExprKind::Not(Box::new(inner)), span)
            })
            .or(sum.clone())
            .then(comparison_op().then(sum).repeated())
            .map(|(lhs, mut comps)| match comps.pop() {
                Some(last) => binary(lhs, last),
                None => lhs,
            })
    })
    .boxed()
}

/// `OrExpr`: conditions joined by `OR` and `||` (OR binds tighter than AND in VQL).
fn or_expr(cond: P<Expr>) -> P<Expr> {
    cond.clone()
        .then(
            just(Tok::Or)
                .to(BinOp::Or)
                .or(just(Tok::AltOr).to(BinOp::AltOr))
                .then(cond)
                .repeated(),
        )
        .foldl(binary)
        .boxed()
}

/// `AndExpr`: or-expressions joined by `AND` and `&&`.
fn and_expr(or: P<Expr>) -> P<Expr> {
    or.clone()
        .then(
            just(Tok::And)
                .to(BinOp::And)
                .or(just(Tok::AltAnd).to(BinOp::AltAnd))
                .then(or)
                .repeated(),
        )
        .foldl(binary)
        .boxed()
}

/// `Expression`: the whole precedence ladder over `expr` (the recursive handle).
fn expression(expr: P<Expr>, arg_value: P<ArgValue>) -> P<Expr> {
    let primary = primary(expr, arg_value);
    and_expr(or_expr(condition(sum(product(primary)))))
}

/// `Column`: `*`, a `{subquery}` or an expression, with an optional `AS alias`.
fn column(select: P<Select>, expr: P<Expr>) -> P<Column> {
    choice((
        op("*").to(ColumnValue::Star),
        select
            .delimited_by(op("{"), op("}"))
            .map(|s| ColumnValue::Query(Arc::new(s))),
        expr.map(ColumnValue::Expr),
    ))
    .then(just(Tok::As).ignore_then(ident()).or_not())
    .map_with_span(|(value, alias), span| match (value, alias) {
        (ColumnValue::Star, None) => Column::Star,
        (value, alias) => Column::Value { value, alias, span },
    })
    .boxed()
}

/// `Columns`: an optional leading `*` (with or without a comma), then columns.
fn columns(column: P<Column>) -> P<Vec<Column>> {
    op("*")
        .then(op(",").or_not())
        .or_not()
        .then(column.separated_by(op(",")))
        .map(|(star, cols)| {
            let mut out = Vec::new();
            if star.is_some() {
                out.push(Column::Star);
            }
            out.extend(cols);
            out
        })
        .boxed()
}

/// `Source`: a plugin or query name (dotted) with optional arguments.
fn source(arg_value: P<ArgValue>) -> P<Source> {
    ident()
        .labelled("a plugin or query name")
        .separated_by(op("."))
        .at_least(1)
        .then(args(arg_value).or_not())
        .map_with_span(|(path, args), span| Source { path, args, span })
        .boxed()
}

/// `Limit`: an integer.
fn limit() -> P<i64> {
    select! { Tok::Number(n) => n }
        .labelled("a number")
        .try_map(|n, span| {
            parse_int(&n)
                .ok_or_else(|| Simple::custom(span, format!("LIMIT needs an integer, found {n}")))
        })
        .boxed()
}

/// `OrderBy`: a column name and an optional `DESC`.
fn order_by() -> P<OrderBy> {
    ident()
        .then(just(Tok::Desc).or_not())
        .map(|(column, desc)| OrderBy {
            column,
            desc: desc.is_some(),
        })
        .boxed()
}

/// `Select`: `[EXPLAIN] SELECT columns FROM source [WHERE] [GROUP BY] [ORDER BY] [LIMIT]`.
fn select_query(select: P<Select>, expr: P<Expr>, arg_value: P<ArgValue>) -> P<Select> {
    let list = expr_list(expr.clone());
    just(Tok::Explain)
        .repeated()
        .then_ignore(just(Tok::Select))
        .then(columns(column(select, expr)))
        .then_ignore(just(Tok::From))
        .then(source(arg_value))
        .then(just(Tok::Where).ignore_then(list.clone()).or_not())
        .then(just(Tok::GroupBy).ignore_then(list).or_not())
        .then(just(Tok::OrderBy).ignore_then(order_by()).or_not())
        .then(just(Tok::Limit).ignore_then(limit()).or_not())
        .map_with_span(
            |((((((explain, columns), from), where_), group_by), order_by), limit), span| Select {
                explain: !explain.is_empty(),
                columns,
                from,
                where_,
                group_by,
                order_by,
                limit,
                span,
            },
        )
        .boxed()
}

/// `Param`: a LET function's parameter with an optional default.
fn param(arg_value: P<ArgValue>) -> P<Param> {
    ident()
        .then(op("=").ignore_then(arg_value).or_not())
        .map(|(name, default)| Param { name, default })
        .boxed()
}

/// `Let`: `LET name [(params)] = value` (or `<=` to materialize).
fn let_stmt(select: P<Select>, expr: P<Expr>, arg_value: P<ArgValue>) -> P<Stmt> {
    just(Tok::Let)
        .ignore_then(ident())
        .then(
            param(arg_value)
                .separated_by(op(","))
                .delimited_by(op("("), op(")"))
                .or_not(),
        )
        .then(op("=").to(false).or(op("<=").to(true)))
        .then(
            select
                .map(|s| LetValue::Query(Arc::new(s)))
                .or(expr.map(LetValue::Expr)),
        )
        .map_with_span(|(((name, params), materialize), value), span| {
            Stmt::Let(Let {
                name,
                params,
                materialize,
                value,
                span,
            })
        })
        .boxed()
}

/// `Program`: one or more LET and SELECT statements.
pub(crate) fn program() -> P<Program> {
    let (select, expr, arg_value) = parsers();
    let_stmt(select.clone(), expr, arg_value)
        .or(select.map(Stmt::Select))
        .repeated()
        .at_least(1)
        .then_ignore(end())
        .map(|stmts| Program { stmts })
        .boxed()
}
