//! The formatter: canonical text of expressions and queries, used for unnamed column names
//! (`1+1` is `1 + 1`, `1 AND 2` is `1  AND 2`, `0x10` is `16`, `{SELECT 1 FROM scope()}` is
//! `{ SELECT 1 FROM scope() }`).

use crate::syntax::ast::*;

/// Canonical text of an expression.
pub fn expr(e: &Expr) -> String {
    let mut s = String::new();
    write_expr(&mut s, e);
    s
}

/// Canonical text of a SELECT.
pub fn select(q: &Select) -> String {
    let mut s = String::new();
    write_select(&mut s, q);
    s
}

/// An identifier, backticked when it is not a plain name.
pub fn ident(name: &str) -> String {
    let plain = name
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && !is_keyword(name);
    if plain {
        name.to_string()
    } else {
        format!("`{name}`")
    }
}

fn is_keyword(name: &str) -> bool {
    const KW: &[&str] = &[
        "EXPLAIN", "SELECT", "WHERE", "AND", "OR", "FROM", "NOT", "AS", "IN", "LIMIT", "NULL",
        "DESC", "TRUE", "FALSE", "LET",
    ];
    KW.iter().any(|k| k.eq_ignore_ascii_case(name))
}

/// A float as Go's `%v` would print it.
pub fn float(f: f64) -> String {
    if f.is_finite() && f == f.trunc() && f.abs() < 1e21 {
        format!("{f:.0}")
    } else {
        format!("{f}")
    }
}

fn string_lit(s: &mut String, bytes: &[u8]) {
    s.push('\'');
    for ch in String::from_utf8_lossy(bytes).chars() {
        match ch {
            '\'' => s.push_str("\\'"),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c => s.push(c),
        }
    }
    s.push('\'');
}

fn write_args(s: &mut String, args: &[Arg]) {
    s.push('(');
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&ident(&a.name));
        s.push('=');
        write_arg_value(s, &a.value);
    }
    s.push(')');
}

fn write_arg_value(s: &mut String, v: &ArgValue) {
    match v {
        ArgValue::Expr(e) => write_expr(s, e),
        ArgValue::List(items) => {
            s.push('[');
            write_list(s, items);
            s.push(']');
        }
        ArgValue::Query(q) => {
            s.push_str("{ ");
            write_select(s, q);
            s.push_str(" }");
        }
    }
}

fn write_list(s: &mut String, items: &[Expr]) {
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        write_expr(s, e);
    }
}

fn write_expr(s: &mut String, e: &Expr) {
    match &e.kind {
        ExprKind::Null => s.push_str("NULL"),
        ExprKind::Bool(b) => s.push_str(if *b { "TRUE" } else { "FALSE" }),
        ExprKind::Int(i) => s.push_str(&i.to_string()),
        ExprKind::Float(f) => s.push_str(&float(*f)),
        ExprKind::Str(b) => string_lit(s, b),
        ExprKind::List(items) => {
            s.push('(');
            write_list(s, items);
            if items.len() == 1 {
                s.push(',');
            }
            s.push(')');
        }
        ExprKind::Paren(inner) => {
            s.push('(');
            write_expr(s, inner);
            s.push(')');
        }
        ExprKind::Symbol {
            negated,
            path,
            call,
        } => {
            if *negated {
                s.push('-');
            }
            let parts: Vec<String> = path.iter().map(|p| ident(p)).collect();
            s.push_str(&parts.join("."));
            if let Some(args) = call {
                write_args(s, args);
            }
        }
        ExprKind::Member(lhs, name) => {
            write_expr(s, lhs);
            s.push('.');
            s.push_str(&ident(name));
        }
        ExprKind::Index(lhs, i) => {
            write_expr(s, lhs);
            s.push('[');
            if let Some(i) = i {
                write_expr(s, i);
            }
            s.push(']');
        }
        ExprKind::Slice(lhs, a, b) => {
            write_expr(s, lhs);
            s.push('[');
            if let Some(a) = a {
                write_expr(s, a);
            }
            s.push(':');
            if let Some(b) = b {
                write_expr(s, b);
            }
            s.push(']');
        }
        ExprKind::Not(inner) => {
            s.push_str("NOT ");
            write_expr(s, inner);
        }
        ExprKind::Binary(op, l, r) => {
            write_expr(s, l);
            match op {
                BinOp::And | BinOp::AltAnd => s.push_str("  "),
                _ => s.push(' '),
            }
            s.push_str(op.text());
            s.push(' ');
            write_expr(s, r);
        }
    }
}

fn write_select(s: &mut String, q: &Select) {
    if q.explain {
        s.push_str("EXPLAIN ");
    }
    s.push_str("SELECT ");
    for (i, c) in q.columns.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        match c {
            Column::Star => s.push('*'),
            Column::Value { value, alias, .. } => {
                match value {
                    ColumnValue::Star => s.push('*'),
                    ColumnValue::Expr(e) => write_expr(s, e),
                    ColumnValue::Query(q) => {
                        s.push_str("{ ");
                        write_select(s, q);
                        s.push_str(" }");
                    }
                }
                if let Some(a) = alias {
                    s.push_str(" AS ");
                    s.push_str(&ident(a));
                }
            }
        }
    }
    if !q.columns.is_empty() {
        s.push(' ');
    }
    s.push_str("FROM ");
    let parts: Vec<String> = q.from.path.iter().map(|p| ident(p)).collect();
    s.push_str(&parts.join("."));
    if let Some(args) = &q.from.args {
        write_args(s, args);
    }
    if let Some(w) = &q.where_ {
        s.push_str(" WHERE ");
        write_expr(s, w);
    }
    if let Some(g) = &q.group_by {
        s.push_str(" GROUP BY ");
        write_expr(s, g);
    }
    if let Some(o) = &q.order_by {
        s.push_str(" ORDER BY ");
        s.push_str(&ident(&o.column));
        if o.desc {
            s.push_str(" DESC");
        }
    }
    if let Some(l) = q.limit {
        s.push_str(&format!(" LIMIT {l}"));
    }
}

/// The column name of an unaliased column.
pub fn column_name(c: &ColumnValue) -> String {
    match c {
        ColumnValue::Star => "*".into(),
        ColumnValue::Expr(e) => expr(e),
        ColumnValue::Query(q) => format!("{{ {} }}", select(q)),
    }
}
