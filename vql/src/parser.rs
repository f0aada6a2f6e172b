// chumsky's error type is large by design; parsers return it by value everywhere.
#![allow(clippy::result_large_err)]
//! The VQL parser: chumsky combinators over the lexer's tokens, following the grammar of
//! SPEC-VQL §1.2 (OR binds tighter than AND, comparisons do not chain, the right operand of
//! `*` and `/` is a bare primary, brace subqueries only as columns and arguments).

use chumsky::prelude::*;
use std::sync::Arc;

use chumsky::Stream;

use crate::ast::*;
use crate::lexer::{lex, Tok};

/// A parse (or lex) error with its 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub offset: usize,
    pub message: String,
}

/// 1-based line and column of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src.as_bytes()[..offset];
    let line = before.iter().filter(|c| **c == b'\n').count() + 1;
    let col_start = before
        .iter()
        .rposition(|c| *c == b'\n')
        .map(|p| p + 1)
        .unwrap_or(0);
    let column = String::from_utf8_lossy(&before[col_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// Parses a sequence of statements.
pub fn parse(src: &str) -> Result<Program, ParseError> {
    let tokens = lex(src).map_err(|e| {
        let (line, column) = line_col(src, e.offset);
        ParseError {
            line,
            column,
            offset: e.offset,
            message: e.message,
        }
    })?;
    let len = src.len();
    let mut depth = 0usize;
    for (t, span) in &tokens {
        match t {
            Tok::Op("(" | "[" | "{") => depth += 1,
            Tok::Op(")" | "]" | "}") => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > crate::engine::MAX_NESTING {
            let (line, column) = line_col(src, span.start);
            return Err(ParseError {
                line,
                column,
                offset: span.start,
                message: format!("brackets nested deeper than {}", crate::engine::MAX_NESTING),
            });
        }
    }
    if tokens.is_empty() {
        let (line, column) = line_col(src, len);
        return Err(ParseError {
            line,
            column,
            offset: len,
            message: "empty query: expected LET, SELECT or EXPLAIN".into(),
        });
    }
    let stream = Stream::from_iter(len..len + 1, tokens.into_iter());
    let program = program().parse(stream).map_err(|errs| {
        let e = errs
            .into_iter()
            .max_by_key(|e| e.span().start)
            .expect("chumsky reports at least one error");
        to_error(src, e)
    })?;
    check_depth(src, &program)?;
    Ok(program)
}

/// Deepest expression tree the evaluator accepts (evaluation recurses once per level).
pub const MAX_EXPR_DEPTH: usize = 128;

fn check_depth(src: &str, p: &Program) -> Result<(), ParseError> {
    fn depth(e: &Expr, at: usize, deepest: &mut (usize, usize)) {
        if at > deepest.0 {
            *deepest = (at, e.span.start);
        }
        if at > MAX_EXPR_DEPTH {
            return;
        }
        let mut sub = |x: &Expr| depth(x, at + 1, deepest);
        match &e.kind {
            ExprKind::List(items) => items.iter().for_each(&mut sub),
            ExprKind::Paren(x) | ExprKind::Not(x) | ExprKind::Member(x, _) => sub(x),
            ExprKind::Index(x, i) => {
                sub(x);
                if let Some(i) = i {
                    sub(i);
                }
            }
            ExprKind::Slice(x, a, b) => {
                sub(x);
                a.iter().chain(b.iter()).for_each(|y| sub(y));
            }
            ExprKind::Binary(_, l, r) => {
                sub(l);
                sub(r);
            }
            ExprKind::Symbol {
                call: Some(args), ..
            } => {
                for a in args {
                    match &a.value {
                        ArgValue::Expr(x) => sub(x),
                        ArgValue::List(items) => items.iter().for_each(&mut sub),
                        ArgValue::Query(_) => {}
                    }
                }
            }
            _ => {}
        }
    }
    let mut deepest = (0, 0);
    let mut visit = |e: &Expr| depth(e, 1, &mut deepest);
    for stmt in &p.stmts {
        match stmt {
            Stmt::Let(l) => {
                if let LetValue::Expr(e) = &l.value {
                    visit(e);
                }
            }
            Stmt::Select(s) => {
                for c in &s.columns {
                    if let Column::Value {
                        value: ColumnValue::Expr(e),
                        ..
                    } = c
                    {
                        visit(e);
                    }
                }
                s.where_
                    .iter()
                    .chain(s.group_by.iter())
                    .for_each(&mut visit);
            }
        }
    }
    if deepest.0 > MAX_EXPR_DEPTH {
        let (line, column) = line_col(src, deepest.1);
        return Err(ParseError {
            line,
            column,
            offset: deepest.1,
            message: format!("expression nested deeper than {MAX_EXPR_DEPTH} levels"),
        });
    }
    Ok(())
}

fn to_error(src: &str, e: Simple<Tok>) -> ParseError {
    let offset = e.span().start.min(src.len());
    let (line, column) = line_col(src, offset);
    let mut expected: Vec<String> = e
        .expected()
        .map(|t| match t {
            Some(t) => describe(t),
            None => "end of input".to_string(),
        })
        .collect();
    expected.sort();
    expected.dedup();
    let found = match e.found() {
        Some(t) => describe(t),
        None => "end of input".into(),
    };
    if let Some(label) = e.label() {
        expected.push(label.to_string());
        expected.sort();
        expected.dedup();
    }
    let message = match e.reason() {
        chumsky::error::SimpleReason::Custom(m) => m.clone(),
        _ if expected.is_empty() => format!("unexpected {found}"),
        _ => format!("expected {}, found {found}", expected.join(" or ")),
    };
    ParseError {
        line,
        column,
        offset,
        message,
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(i) => format!("identifier {i}"),
        Tok::Number(n) => format!("number {n}"),
        Tok::Str(_) => "string".into(),
        Tok::SymbolIdent(s) => format!("-{s}"),
        other => format!("'{other}'"),
    }
}

type P<O> = BoxedParser<'static, Tok, O, Simple<Tok>>;

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

/// An `ExprList`: one expression, or a list when a comma appears (`(1,)`, `(1, 2 3)` = `(1, 3)`).
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

fn args(arg_value: P<ArgValue>) -> P<Vec<Arg>> {
    ident()
        .then_ignore(op("="))
        .then(arg_value)
        .map_with_span(|(name, value), span| Arg { name, value, span })
        .separated_by(op(","))
        .delimited_by(op("("), op(")"))
        .boxed()
}

/// The select and expression parsers, which refer to each other.
fn parsers() -> (P<Select>, P<Expr>, P<ArgValue>) {
    let mut exported: Option<(P<Expr>, P<ArgValue>)> = None;
    let select = recursive(|select: Recursive<'static, Tok, Select, Simple<Tok>>| {
        let mut inner_arg_value: Option<P<ArgValue>> = None;
        let expr = recursive(|expr: Recursive<'static, Tok, Expr, Simple<Tok>>| {
            let expr: P<Expr> = expr.boxed();
            let list = expr_list(expr.clone());
            let arg_value: P<ArgValue> = choice((
                select
                    .clone()
                    .delimited_by(op("{"), op("}"))
                    .map(|s| ArgValue::Query(Arc::new(s))),
                list.clone()
                    .or_not()
                    .delimited_by(op("["), op("]"))
                    .map(|l| match l {
                        None => ArgValue::List(Vec::new()),
                        Some(Expr {
                            kind: ExprKind::List(items),
                            ..
                        }) => ArgValue::List(items),
                        Some(e) => ArgValue::Expr(e),
                    }),
                expr.clone().map(ArgValue::Expr),
            ))
            .boxed();
            inner_arg_value = Some(arg_value.clone());
            let call_args = args(arg_value.clone());
            let symbol = ident()
                .map(|s| (false, s))
                .or(select! { Tok::SymbolIdent(s) => (true, s) })
                .then(op(".").ignore_then(ident()).repeated())
                .then(call_args.repeated())
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
                });
            let literal = select! {
                Tok::Str(s) => ExprKind::Str(s),
                Tok::Number(n) => number_kind(&n),
                Tok::Bool(b) => ExprKind::Bool(b),
                Tok::Null => ExprKind::Null,
            }
            .map_with_span(Expr::new);
            let paren =
                list.clone()
                    .delimited_by(op("("), op(")"))
                    .map_with_span(|e, span| match e.kind {
                        ExprKind::List(_) => Expr::new(e.kind, span),
                        _ => Expr::new(ExprKind::Paren(Box::new(e)), span),
                    });
            let primary: P<Expr> = choice((symbol, paren, literal))
                .labelled("an expression")
                .boxed();

            enum Post {
                Index(Option<Expr>),
                Slice(Option<Expr>, Option<Expr>),
                Member(String),
            }
            let index = primary
                .clone()
                .repeated()
                .then(op(":").repeated())
                .then(primary.clone().repeated())
                .delimited_by(op("["), op("]"))
                .map(|((mut a, colons), mut b)| {
                    if colons.is_empty() && b.is_empty() {
                        Post::Index(a.pop())
                    } else if colons.is_empty() {
                        Post::Index(b.pop())
                    } else {
                        Post::Slice(a.pop(), b.pop())
                    }
                });
            let member = op(".").ignore_then(ident()).map(Post::Member);
            let postfix = primary
                .clone()
                .then(index.or(member).map_with_span(|p, s| (p, s)).repeated())
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
                });
            let product = postfix
                .then(
                    op("*")
                        .to(BinOp::Mul)
                        .or(op("/").to(BinOp::Div))
                        .then(primary.clone())
                        .repeated(),
                )
                .foldl(binary)
                .boxed();
            let sum = product
                .clone()
                .then(
                    op("+")
                        .to(BinOp::Add)
                        .or(op("-").to(BinOp::Sub))
                        .then(product)
                        .repeated(),
                )
                .foldl(binary)
                .boxed();
            let comp_op = choice((
                op("=").to(BinOp::Eq),
                op("!=").to(BinOp::Ne),
                op("<>").to(BinOp::Ne),
                op("<=").to(BinOp::Le),
                op(">=").to(BinOp::Ge),
                op("<").to(BinOp::Lt),
                op(">").to(BinOp::Gt),
                op("=~").to(BinOp::Regex),
                just(Tok::In).to(BinOp::In),
            ));
            let cond = recursive(|cond: Recursive<'static, Tok, Expr, Simple<Tok>>| {
                just(Tok::Not)
                    .map_with_span(|_, s: Span| s)
                    .then(cond)
                    .map(|(s, inner): (Span, Expr)| {
                        let span = s.start..inner.span.end;
                        Expr::new(ExprKind::Not(Box::new(inner)), span)
                    })
                    .or(sum.clone())
                    .then(comp_op.then(sum.clone()).repeated())
                    .map(|(lhs, mut comps)| match comps.pop() {
                        // Comparisons do not chain: only the last one is kept.
                        Some(last) => binary(lhs, last),
                        None => lhs,
                    })
            })
            .boxed();
            let or_expr = cond
                .clone()
                .then(
                    just(Tok::Or)
                        .to(BinOp::Or)
                        .or(just(Tok::AltOr).to(BinOp::AltOr))
                        .then(cond)
                        .repeated(),
                )
                .foldl(binary)
                .boxed();
            or_expr
                .clone()
                .then(
                    just(Tok::And)
                        .to(BinOp::And)
                        .or(just(Tok::AltAnd).to(BinOp::AltAnd))
                        .then(or_expr)
                        .repeated(),
                )
                .foldl(binary)
        });
        let expr: P<Expr> = expr.boxed();
        let list = expr_list(expr.clone());
        let arg_value = inner_arg_value.expect("the expression parser defines argument values");
        exported = Some((expr.clone(), arg_value.clone()));

        let column = choice((
            op("*").to(ColumnValue::Star),
            select
                .clone()
                .delimited_by(op("{"), op("}"))
                .map(|s| ColumnValue::Query(Arc::new(s))),
            expr.clone().map(ColumnValue::Expr),
        ))
        .then(just(Tok::As).ignore_then(ident()).or_not())
        .map_with_span(|(value, alias), span| match (value, alias) {
            (ColumnValue::Star, None) => Column::Star,
            (value, alias) => Column::Value { value, alias, span },
        });
        let columns = op("*")
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
            });
        let source = ident()
            .labelled("a plugin or query name")
            .separated_by(op("."))
            .at_least(1)
            .then(args(arg_value).or_not())
            .map_with_span(|(path, args), span| Source { path, args, span });
        let limit = select! { Tok::Number(n) => n }
            .labelled("a number")
            .try_map(|n, span| {
                parse_int(&n).ok_or_else(|| {
                    Simple::custom(span, format!("LIMIT needs an integer, found {n}"))
                })
            });
        just(Tok::Explain)
            .repeated()
            .then_ignore(just(Tok::Select))
            .then(columns)
            .then_ignore(just(Tok::From))
            .then(source)
            .then(just(Tok::Where).ignore_then(list.clone()).or_not())
            .then(just(Tok::GroupBy).ignore_then(list).or_not())
            .then(
                just(Tok::OrderBy)
                    .ignore_then(ident())
                    .then(just(Tok::Desc).or_not())
                    .map(|(column, desc)| OrderBy {
                        column,
                        desc: desc.is_some(),
                    })
                    .or_not(),
            )
            .then(just(Tok::Limit).ignore_then(limit).or_not())
            .map_with_span(
                |((((((explain, columns), from), where_), group_by), order_by), limit), span| {
                    Select {
                        explain: !explain.is_empty(),
                        columns,
                        from,
                        where_,
                        group_by,
                        order_by,
                        limit,
                        span,
                    }
                },
            )
    });
    let (expr, arg_value) = exported.expect("the select parser defines the expression parser");
    (select.boxed(), expr, arg_value)
}

fn program() -> P<Program> {
    let (select, expr, arg_value) = parsers();
    let param = ident()
        .then(op("=").ignore_then(arg_value).or_not())
        .map(|(name, default)| Param { name, default });
    let let_stmt = just(Tok::Let)
        .ignore_then(ident())
        .then(
            param
                .separated_by(op(","))
                .delimited_by(op("("), op(")"))
                .or_not(),
        )
        .then(op("=").to(false).or(op("<=").to(true)))
        .then(
            select
                .clone()
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
        });
    let_stmt
        .or(select.map(Stmt::Select))
        .repeated()
        .at_least(1)
        .then_ignore(end())
        .map(|stmts| Program { stmts })
        .boxed()
}
