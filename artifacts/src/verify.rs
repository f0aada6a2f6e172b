//! Checking an artifact's VQL: every query parses, each source is LETs followed by one
//! SELECT, and every function and plugin it calls exists. Errors point into the YAML file.

use std::collections::HashSet;

use talon_vql::ast::*;
use talon_vql::registry::Registry;

use super::load::{LoadError, LoadedArtifact};

/// What to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Syntax only: for artifacts written for Velociraptor that call functions Talon lacks.
    Syntax,
    /// Syntax and source shape (LETs then one SELECT): what the server requires.
    Structure,
    /// Syntax, source shape, and known functions and plugins.
    Full,
}

struct Query<'a> {
    what: String,
    text: &'a str,
    /// A source query must be LETs then one SELECT.
    source: bool,
}

/// Checks an artifact's queries; returns every problem found.
pub fn verify(
    a: &LoadedArtifact,
    registry: &Registry,
    level: Level,
    origin: &str,
) -> Vec<LoadError> {
    verify_with_imports(a, registry, level, origin, &[])
}

/// As [`verify`], with the `export` texts of the artifacts `a` imports: their LETs are
/// known to its queries.
pub fn verify_with_imports(
    a: &LoadedArtifact,
    registry: &Registry,
    level: Level,
    origin: &str,
    imported_exports: &[String],
) -> Vec<LoadError> {
    let mut queries = Vec::new();
    if let Some(p) = &a.def.precondition {
        queries.push(Query {
            what: "precondition".into(),
            text: p,
            source: false,
        });
    }
    if let Some(e) = &a.def.export {
        queries.push(Query {
            what: "export".into(),
            text: e,
            source: false,
        });
    }
    for (i, s) in a.def.sources.iter().enumerate() {
        let name = s.name.clone().unwrap_or_else(|| i.to_string());
        if let Some(p) = &s.precondition {
            queries.push(Query {
                what: format!("source {name} precondition"),
                text: p,
                source: false,
            });
        }
        if let Some(q) = &s.query {
            queries.push(Query {
                what: format!("source {name}"),
                text: q,
                source: true,
            });
        }
    }
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for q in &queries {
        if q.text.trim().is_empty() {
            continue;
        }
        match talon_vql::parse(q.text) {
            Ok(p) => parsed.push((q, p)),
            Err(e) => errors.push(at(
                a,
                origin,
                q.text,
                e.offset,
                format!("{}: {}", q.what, e.message),
            )),
        }
    }
    if level < Level::Structure {
        errors.sort_by_key(|e| (e.line, e.column));
        return errors;
    }
    // Names any query of the artifact defines with LET (export LETs are visible to sources).
    let mut defined: HashSet<String> = HashSet::new();
    for text in imported_exports {
        if let Ok(p) = talon_vql::parse(text) {
            for s in &p.stmts {
                if let Stmt::Let(l) = s {
                    defined.insert(l.name.clone());
                }
            }
        }
    }
    for (_, p) in &parsed {
        for s in &p.stmts {
            if let Stmt::Let(l) = s {
                defined.insert(l.name.clone());
            }
        }
    }
    for (q, p) in &parsed {
        if q.source {
            let n = p.stmts.len();
            for (i, s) in p.stmts.iter().enumerate() {
                match (s, i + 1 == n) {
                    (Stmt::Let(l), true) => errors.push(at(
                        a,
                        origin,
                        q.text,
                        l.span.start,
                        format!(
                            "{}: the last statement must be a SELECT, not LET {}",
                            q.what, l.name
                        ),
                    )),
                    (Stmt::Select(sel), false) => errors.push(at(
                        a,
                        origin,
                        q.text,
                        sel.span.start,
                        format!(
                            "{}: only the last statement may be a SELECT; the others must be LETs",
                            q.what
                        ),
                    )),
                    _ => {}
                }
            }
        }
        for (name, offset) in endless_lets(p) {
            errors.push(at(
                a,
                origin,
                q.text,
                offset,
                format!(
                    "{}: LET {name} is a query that reads itself (through FROM), so it would recurse without end",
                    q.what
                ),
            ));
        }
        if level < Level::Full {
            continue;
        }
        for (kind, name, offset) in program_calls(p) {
            if defined.contains(&name) || name.starts_with("Artifact.") {
                continue;
            }
            let known = match kind {
                Kind::Function => registry.get_function(&name).is_some(),
                Kind::Plugin => registry.get_plugin(&name).is_some(),
            };
            if !known {
                let k = if kind == Kind::Function {
                    "function"
                } else {
                    "plugin"
                };
                errors.push(at(
                    a,
                    origin,
                    q.text,
                    offset,
                    format!("{}: unknown {k} {name}", q.what),
                ));
            }
        }
    }
    errors.sort_by_key(|e| (e.line, e.column));
    errors
}

/// The functions and plugins `program` calls that neither `registry` nor the program's own
/// LETs define: ("function" or "plugin", name, byte offset), in order. What the API checks
/// before running a query, as `verify` does for an artifact.
pub fn unknown_calls(program: &Program, registry: &Registry) -> Vec<(&'static str, String, usize)> {
    let defined: HashSet<String> = program
        .stmts
        .iter()
        .filter_map(|s| match s {
            Stmt::Let(l) => Some(l.name.clone()),
            Stmt::Select(_) => None,
        })
        .collect();
    program_calls(program)
        .into_iter()
        .filter(|(kind, name, _)| {
            !defined.contains(name)
                && !name.starts_with("Artifact.")
                && match kind {
                    Kind::Function => registry.get_function(name).is_none(),
                    Kind::Plugin => registry.get_plugin(name).is_none(),
                }
        })
        .map(|(kind, name, offset)| {
            let k = if kind == Kind::Function {
                "function"
            } else {
                "plugin"
            };
            (k, name, offset)
        })
        .collect()
}

/// The LET queries without parameters that read themselves, directly or through other such
/// LETs (`LET q = SELECT * FROM q`): they can only recurse until the depth limit stops them.
/// (A LET with parameters may recurse with a base case, through `if()`; it is not flagged.)
pub fn endless_lets(program: &Program) -> Vec<(String, usize)> {
    let mut reads: std::collections::HashMap<&str, (Vec<String>, usize)> = Default::default();
    for s in &program.stmts {
        if let Stmt::Let(l) = s {
            if let (None, LetValue::Query(sel)) = (&l.params, &l.value) {
                // What it reads: its own FROM (a bare name is a stored query), and every
                // plugin or stored query called with arguments inside it.
                let mut calls = Vec::new();
                select_calls(sel, &mut calls);
                let mut from: Vec<String> = calls
                    .into_iter()
                    .filter(|(k, _, _)| *k == Kind::Plugin)
                    .map(|(_, n, _)| n)
                    .collect();
                from.push(sel.from.name());
                reads.insert(l.name.as_str(), (from, l.span.start));
            }
        }
    }
    let mut endless = Vec::new();
    for (&name, (_, offset)) in &reads {
        // Depth-first from `name` over parameterless LETs: does it come back to `name`?
        let mut stack: Vec<&str> = vec![name];
        let mut seen: HashSet<&str> = HashSet::new();
        let mut cycle = false;
        while let Some(n) = stack.pop() {
            for next in reads.get(n).map(|(f, _)| f.as_slice()).unwrap_or_default() {
                if next == name {
                    cycle = true;
                } else if reads.contains_key(next.as_str()) && seen.insert(next.as_str()) {
                    stack.push(next.as_str());
                }
            }
        }
        if cycle {
            endless.push((name.to_string(), *offset));
        }
    }
    endless.sort_by_key(|(_, o)| *o);
    endless
}

/// Every function and plugin call of a program, in order: in LET values, LET parameter
/// defaults and SELECTs.
fn program_calls(program: &Program) -> Calls {
    let mut calls = Vec::new();
    for s in &program.stmts {
        match s {
            Stmt::Let(l) => {
                if let Some(params) = &l.params {
                    params
                        .iter()
                        .filter_map(|p| p.default.as_ref())
                        .for_each(|d| arg_calls(d, &mut calls));
                }
                match &l.value {
                    LetValue::Expr(e) => expr_calls(e, &mut calls),
                    LetValue::Query(sel) => select_calls(sel, &mut calls),
                }
            }
            Stmt::Select(sel) => select_calls(sel, &mut calls),
        }
    }
    calls
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Function,
    Plugin,
}

type Calls = Vec<(Kind, String, usize)>;

fn select_calls(sel: &Select, out: &mut Calls) {
    if sel.from.path.len() > 1 || sel.from.args.is_some() {
        out.push((Kind::Plugin, sel.from.name(), sel.from.span.start));
    }
    for a in sel.from.args.iter().flatten() {
        arg_calls(&a.value, out);
    }
    for c in &sel.columns {
        if let Column::Value { value, .. } = c {
            match value {
                ColumnValue::Expr(e) => expr_calls(e, out),
                ColumnValue::Query(q) => select_calls(q, out),
                ColumnValue::Star => {}
            }
        }
    }
    for e in sel.where_.iter().chain(sel.group_by.iter()) {
        expr_calls(e, out);
    }
}

fn arg_calls(v: &ArgValue, out: &mut Calls) {
    match v {
        ArgValue::Expr(e) => expr_calls(e, out),
        ArgValue::List(items) => items.iter().for_each(|e| expr_calls(e, out)),
        ArgValue::Query(q) => select_calls(q, out),
    }
}

fn expr_calls(e: &Expr, out: &mut Calls) {
    match &e.kind {
        ExprKind::Symbol {
            path,
            call: Some(args),
            ..
        } => {
            out.push((Kind::Function, path.join("."), e.span.start));
            args.iter().for_each(|a| arg_calls(&a.value, out));
        }
        ExprKind::List(items) => items.iter().for_each(|x| expr_calls(x, out)),
        ExprKind::Paren(x) | ExprKind::Not(x) | ExprKind::Member(x, _) => expr_calls(x, out),
        ExprKind::Index(x, i) => {
            expr_calls(x, out);
            if let Some(i) = i {
                expr_calls(i, out);
            }
        }
        ExprKind::Slice(x, a, b) => {
            expr_calls(x, out);
            a.iter().chain(b.iter()).for_each(|y| expr_calls(y, out));
        }
        ExprKind::Binary(_, l, r) => {
            expr_calls(l, out);
            expr_calls(r, out);
        }
        _ => {}
    }
}

/// A load error at a byte offset of a query, mapped to the query's place in the YAML file.
fn at(a: &LoadedArtifact, origin: &str, query: &str, offset: usize, message: String) -> LoadError {
    let (qline, qcol) = talon_vql::parser::line_col(query, offset);
    let (line, column) = match locate(&a.yaml, query) {
        Some((first_line, first_idx, indent)) => {
            let line = first_line + qline.saturating_sub(first_idx + 1);
            (line, qcol + indent)
        }
        None => (1, 1),
    };
    LoadError {
        origin: origin.to_string(),
        line,
        column,
        message,
    }
}

/// Where a query's first non-empty line sits in the YAML: (1-based file line, its index in
/// the query, indentation in the file).
fn locate(yaml: &str, query: &str) -> Option<(usize, usize, usize)> {
    let (idx, first) = query
        .lines()
        .enumerate()
        .find(|(_, l)| !l.trim().is_empty())?;
    let needle = first.trim();
    for (n, line) in yaml.lines().enumerate() {
        if let Some(pos) = line.find(needle) {
            let lead = first.len() - first.trim_start().len();
            return Some((n + 1, idx, pos.saturating_sub(lead)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load;

    fn check(text: &str, level: Level) -> Vec<String> {
        let a = load("a.yaml", text).unwrap();
        verify(&a, &Registry::builtin(), level, "a.yaml")
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn unknown_calls_are_named_with_their_place() {
        let text = "name: X\ntype: SERVER_EVENT\nsources:\n- query: |\n    LET A = 1\n    SELECT nope(a=1), dict(a=A) FROM bogus()\n";
        assert_eq!(
            check(text, Level::Full),
            vec![
                "a.yaml:6:12: source 0: unknown function nope",
                "a.yaml:6:38: source 0: unknown plugin bogus"
            ]
        );
        assert!(check(text, Level::Syntax).is_empty());
    }

    #[test]
    fn sources_are_lets_then_one_select() {
        let text = "name: X\ntype: SERVER_EVENT\nsources:\n- query: |\n    SELECT 1 FROM scope()\n    LET A = 1\n";
        let errs = check(text, Level::Full);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("a.yaml:5:5: source 0: only the last statement may be a SELECT")
        );
        assert!(errs[1].starts_with("a.yaml:6:5: source 0: the last statement must be a SELECT"));
        assert_eq!(check(text, Level::Structure).len(), 2);
        assert!(check(text, Level::Syntax).is_empty());
    }

    #[test]
    fn syntax_errors_point_into_the_file() {
        let text = "name: X\ntype: SERVER_EVENT\nsources:\n- query: |\n    SELECT *\n    FROM info(a=1,)\n";
        let errs = check(text, Level::Syntax);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("a.yaml:6:19: source 0: "), "{errs:?}");
    }

    #[test]
    fn lets_of_export_and_artifact_plugins_are_known() {
        let text = "name: X\ntype: SERVER\nexport: |\n  LET F(x) = x + 1\nsources:\n- query: |\n    SELECT F(x=1), * FROM Artifact.Other(a=1)\n";
        assert!(check(text, Level::Full).is_empty());
    }
}
