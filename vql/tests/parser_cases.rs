//! SPEC-VQL "Test cases worth reproducing" 1-10: what parses, what fails, and how.

use talon_vql::ast::{ColumnValue, Stmt};
use talon_vql::{format, parse};

/// Wraps an expression in a query and returns the canonical text of its column.
fn expr(e: &str) -> Result<String, String> {
    let q = format!("SELECT {e} FROM scope()");
    let p = parse(&q).map_err(|e| e.to_string())?;
    match &p.stmts[..] {
        [Stmt::Select(s)] => match &s.columns[..] {
            [talon_vql::ast::Column::Value { value, .. }] => Ok(format::column_name(value)),
            other => Err(format!("{} columns", other.len())),
        },
        _ => Err("not one select".into()),
    }
}

fn ok(e: &str) -> String {
    expr(e).unwrap_or_else(|err| panic!("{e:?} should parse: {err}"))
}

fn err(e: &str) {
    assert!(expr(e).is_err(), "{e:?} should fail, got {:?}", expr(e));
}

fn stmt_ok(q: &str) -> usize {
    parse(q)
        .unwrap_or_else(|e| panic!("{q:?}: {e}"))
        .stmts
        .len()
}

fn stmt_err(q: &str) {
    assert!(parse(q).is_err(), "{q:?} should fail");
}

#[test]
fn case_1_precedence() {
    // The canonical text does not show grouping, so compare parenthesised forms' trees.
    let same = |a: &str, b: &str| {
        let strip = |s: &str| {
            let p = parse(&format!("SELECT {s} AS x FROM scope()")).unwrap();
            let Stmt::Select(sel) = &p.stmts[0] else {
                panic!()
            };
            let talon_vql::ast::Column::Value {
                value: ColumnValue::Expr(e),
                ..
            } = &sel.columns[0]
            else {
                panic!()
            };
            tree(e)
        };
        assert_eq!(strip(a), strip(b), "{a} vs {b}");
    };
    same("a OR b AND c", "(a OR b) AND c");
    same("a AND b OR c", "a AND (b OR c)");
    same("NOT a = b", "NOT (a = b)");
    same("NOT a AND b", "(NOT a) AND b");
    same("a = b + c * d", "a = (b + (c * d))");
    same("1 + 2 - 3 * 4 / 5", "(1 + 2) - ((3 * 4) / 5)");
    same("a || b && c", "(a || b) && c");
}

/// The tree shape of an expression, parentheses removed.
fn tree(e: &talon_vql::ast::Expr) -> String {
    use talon_vql::ast::ExprKind::*;
    match &e.kind {
        Paren(inner) => tree(inner),
        Binary(op, l, r) => format!("({} {} {})", tree(l), op.text(), tree(r)),
        Not(inner) => format!("(NOT {})", tree(inner)),
        _ => format::expr(e),
    }
}

#[test]
fn case_2_minus_traps() {
    for e in [
        "x-1", "1-1", "a -1", "a-b", "-(1+2)", "- x", "5 * - x", "f(c=- 1)",
    ] {
        err(e);
    }
    for e in ["a - b", "1 - -1", "-x", "5 * -x", "f(a=-1, b=-x)"] {
        ok(e);
    }
    stmt_err("SELECT 1--1 FROM scope()");
}

#[test]
fn case_3_postfix_traps() {
    for e in ["2 * x[0]", "2 * f(a=1).b", "f(a=1).b(c=2)", "x[a+1]"] {
        err(e);
    }
    for e in [
        "x[0] * 2",
        "2 * (x[0])",
        "2 * x.y",
        "f(a=1).b.c",
        "x.y(a=1)",
        "x[(a+1)]",
        "x[]",
    ] {
        ok(e);
    }
    assert_eq!(ok("f(a=1)(b=2)"), "f(a=1, b=2)");
    assert_eq!(ok("x[1 2]"), "x[2]");
}

#[test]
fn case_4_chained_comparison_keeps_the_last() {
    assert_eq!(ok("1 = 1 = 2"), "1 = 2");
}

#[test]
fn case_5_lists_and_subqueries() {
    err("[1,2]");
    ok("f(a=[1,2,3], b=[], c=[1,])");
    err("f(a=[,])");
    assert_eq!(ok("(1,)"), "(1,)");
    err("()");
    assert_eq!(ok("(1, 2 3)"), "(1, 3)");
    err("x IN {SELECT * FROM info()}");
    stmt_err("LET X = {SELECT * FROM info()}");
    assert_eq!(ok("{SELECT * FROM info()}"), "{ SELECT * FROM info() }");
}

#[test]
fn case_6_arguments() {
    err("f(1)");
    err("f(a=1,)");
    ok("dict(`a b`=1)");
    err("f(in=1)");
    assert_eq!(ok("f(a=b=1)"), "f(a=b = 1)");
}

#[test]
fn case_7_clauses() {
    stmt_ok("SELECT * FROM x() GROUP   BY a");
    stmt_ok("SELECT * FROM x() oRdEr bY a");
    stmt_ok("SELECT * FROM x() GROUP\nBY a ORDER\n  BY b DESC LIMIT 3");
    stmt_err("SELECT * FROM x() ORDER BY c, d");
    stmt_err("SELECT * FROM x() ORDER BY c ASC");
    stmt_err("SELECT * FROM x() ORDER BY a.b");
    stmt_err("SELECT * FROM x() LIMIT 1 ORDER BY c");
    stmt_err("SELECT * FROM x() LIMIT 3 WHERE a");
    stmt_ok("SELECT * FROM x() LIMIT -1");
    let p = parse("SELECT * FROM x() LIMIT 0x10").unwrap();
    let Stmt::Select(s) = &p.stmts[0] else {
        panic!()
    };
    assert_eq!(s.limit, Some(16));
    stmt_err("SELECT * FROM x() LIMIT 1.5");
    stmt_err("SELECT * FROM x() LIMIT 1e3");
    stmt_ok("SELECT FROM scope()");
    let p = parse("SELECT * a FROM x()").unwrap();
    let Stmt::Select(s) = &p.stmts[0] else {
        panic!()
    };
    assert_eq!(s.columns.len(), 2);
    stmt_err("SELECT 1 AS 'b' FROM x()");
}

#[test]
fn case_8_statements() {
    assert_eq!(stmt_ok("LET X = 1 LET Y = 2 SELECT * FROM info()"), 3);
    stmt_err("SELECT * FROM info(); SELECT 1 FROM scope()");
    stmt_err("LET X = 1, 2");
    stmt_ok("LET X() = 1");
    stmt_err("LET X(a,) = 1");
    stmt_ok("LET X(a, b=2) = a + b");
    stmt_ok("EXPLAIN EXPLAIN SELECT * FROM info()");
    stmt_err("");
    stmt_err("-- only a comment");
}

#[test]
fn case_9_lexing() {
    err("0X10");
    assert_eq!(ok("08"), "8");
    assert_eq!(ok("010"), "8");
    ok(".5");
    err("1.");
    err("1.2.3");
    err("x.1");
    err("$x");
    err("r'abc'");
    err("'unterminated");
    ok("'''a''b'''");
    err("'''''");
    stmt_err("SELECT 1 AS `a``b` FROM x()");
    for id in ["TRUE1", "NULLX", "ANDY", "select_x"] {
        assert_eq!(ok(id), id);
    }
    assert_eq!(ok("1 /* x */ + 2"), "1 + 2");
    stmt_ok("SELECT 1 -- c\nFROM scope() // c");
}

#[test]
fn canonical_column_names() {
    assert_eq!(ok("1+1"), "1 + 1");
    assert_eq!(ok("1 AND 2"), "1  AND 2");
    assert_eq!(ok("0x10"), "16");
    assert_eq!(ok("1.50"), "1.5");
    assert_eq!(ok("x.y"), "x.y");
    assert_eq!(ok("count()"), "count()");
    assert_eq!(ok("NULL  && ''"), "NULL  && ''");
}

#[test]
fn errors_name_line_and_column() {
    let e = parse("SELECT *\nFROM info(\n  a=1,)").unwrap_err();
    assert_eq!((e.line, e.column), (3, 7), "{e}");
    let e = parse("SELECT 1 FROM scope() WHERE x = $").unwrap_err();
    assert_eq!((e.line, e.column), (1, 33));
    assert!(e.message.contains("unexpected character '$'"), "{e}");
    let e = parse("SELECT 1 FROM x() LIMIT").unwrap_err();
    assert_eq!(e.to_string(), "1:24: expected a number, found end of input");
    let e = parse("SELECT * FROM").unwrap_err();
    assert_eq!(
        e.to_string(),
        "1:14: expected an identifier, found end of input"
    );
}
