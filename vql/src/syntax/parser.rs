// chumsky's error type is large by design; parsers return it by value everywhere.
#![allow(clippy::result_large_err)]
//! The VQL parser: the lexer's tokens through the grammar of SPEC-VQL §1.2 ([`crate::syntax::grammar`]:
//! OR binds tighter than AND, comparisons do not chain, the right operand of `*` and `/` is
//! a bare primary, brace subqueries only as columns and arguments), then the nesting and
//! depth limits, with errors at their line and column.

use chumsky::prelude::*;

use chumsky::Stream;

use crate::limits::MAX_NESTING;
use crate::syntax::ast::*;
pub use crate::syntax::grammar::parse_int;
use crate::syntax::grammar::program;
use crate::syntax::lexer::{lex, Tok};

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
        if depth > MAX_NESTING {
            let (line, column) = line_col(src, span.start);
            return Err(ParseError {
                line,
                column,
                offset: span.start,
                message: format!("brackets nested deeper than {}", MAX_NESTING),
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

pub use crate::limits::MAX_EXPR_DEPTH;

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
