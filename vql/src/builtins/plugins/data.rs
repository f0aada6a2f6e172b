//! Plugins over rows and values: `items` (a dict's `{_key, _value}`), `combine` (named
//! queries one after another, as `chain`), `column_filter` (columns kept by regex),
//! `query` (a query given as text or a stored query, with `timeout` and an `exit` lambda),
//! and `write_jsonl`/`write_csv` (rows into a file on this machine, passed on).

use std::io::Write as _;
use std::time::Duration;

use futures::stream::{self, BoxStream};
use futures::StreamExt;
use talon_core::acl::Permission;

use crate::builtins::functions::data::{pairs, Lambda};
use crate::eval::engine::Place;
use crate::eval::query::{query_rows, run_program};
use crate::eval::registry::{PluginCall, Registry};
use crate::eval::value::{Row, Value};

pub(super) fn register(r: &mut Registry) {
    r.plugin("items", Place::Both, false, items);
    r.plugin("combine", Place::Both, false, super::chain);
    r.plugin("column_filter", Place::Both, false, column_filter);
    r.plugin("query", Place::Both, false, query);
    r.plugin("write_jsonl", Place::Both, false, write_jsonl);
    r.plugin("write_csv", Place::Both, false, write_csv);
}

fn items(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(&["item"], &["item"]) {
        return stream::empty().boxed();
    }
    stream::iter(pairs(c.get("item").unwrap_or(&Value::Null))).boxed()
}

fn column_filter(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(&["query", "include", "exclude"], &["query"]) {
        return stream::empty().boxed();
    }
    let ctx = c.scope.ctx().clone();
    let pattern = |k: &str| c.get(k).map(Value::to_text).and_then(|p| ctx.regex(&p));
    let (include, exclude) = (pattern("include"), pattern("exclude"));
    query_rows(c.get("query").cloned().unwrap_or_default(), c.scope.clone())
        .map(move |row| {
            row.into_iter()
                .filter(|(k, _)| include.as_ref().is_none_or(|r| r.is_match(k)))
                .filter(|(k, _)| exclude.as_ref().is_none_or(|r| !r.is_match(k)))
                .collect()
        })
        .boxed()
}

fn query(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(&["query", "inherit", "exit", "timeout", "env"], &["query"]) {
        return stream::empty().boxed();
    }
    let scope = c.scope.clone();
    let rows = match c.get("query").cloned().unwrap_or_default() {
        Value::Str(text) => match crate::parse(&text) {
            Ok(program) => run_program(std::sync::Arc::new(program), scope.clone()),
            Err(e) => {
                c.fail(format!("query does not parse: {e}"));
                return stream::empty().boxed();
            }
        },
        other => query_rows(other, scope.clone()),
    };
    let exit = match c.get("exit").map(Value::to_text) {
        Some(t) => match Lambda::parse(&t) {
            Ok(l) => Some(std::sync::Arc::new(l)),
            Err(e) => {
                c.fail(e);
                return stream::empty().boxed();
            }
        },
        None => None,
    };
    let timeout = match c.get("timeout") {
        Some(Value::Int(s)) if *s > 0 => Some(Duration::from_secs(*s as u64)),
        Some(Value::Float(s)) if *s > 0.0 => Some(Duration::from_secs_f64(*s)),
        _ => None,
    };
    Box::pin(async_stream::stream! {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut rows = rows;
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, rows.next()).await {
                    Ok(r) => r,
                    Err(_) => break,
                },
                None => rows.next().await,
            };
            let Some(row) = next else { break };
            if let Some(l) = &exit {
                if l.call(Value::Dict(row.clone()), &scope).await.truthy() {
                    break;
                }
            }
            yield row;
        }
    })
}

/// Writes rows to `filename` (FILESYSTEM_WRITE) with `line` per row (and `header` first),
/// passing each row on.
fn write_rows(
    c: PluginCall,
    header: fn(&Row) -> Option<String>,
    line: fn(&Row, &[String]) -> String,
) -> BoxStream<'static, Row> {
    if !c.check(
        &["filename", "query", "buffer_size", "max_size"],
        &["filename", "query"],
    ) {
        return stream::empty().boxed();
    }
    let ctx = c.scope.ctx().clone();
    if !ctx.allowed(Permission::FilesystemWrite, &c.name) {
        return stream::empty().boxed();
    }
    let path = c.get("filename").map(Value::to_text).unwrap_or_default();
    let file = match std::fs::File::create(&path) {
        Ok(f) => f,
        Err(e) => {
            c.fail(format!("cannot create {path}: {e}"));
            return stream::empty().boxed();
        }
    };
    let name = c.name.clone();
    let rows = query_rows(c.get("query").cloned().unwrap_or_default(), c.scope.clone());
    let mut out = std::io::BufWriter::new(file);
    let mut columns: Option<Vec<String>> = None;
    Box::pin(async_stream::stream! {
        let mut rows = rows;
        while let Some(row) = rows.next().await {
            let cols = columns.get_or_insert_with(|| {
                if let Some(h) = header(&row) {
                    let _ = out.write_all(h.as_bytes());
                }
                row.keys().cloned().collect()
            });
            if let Err(e) = out.write_all(line(&row, cols).as_bytes()) {
                ctx.log("ERROR", format!("{name}: writing {path}: {e}"));
                break;
            }
            yield row;
        }
        if let Err(e) = out.flush() {
            ctx.log("ERROR", format!("{name}: writing {path}: {e}"));
        }
    })
}

fn write_jsonl(c: PluginCall) -> BoxStream<'static, Row> {
    write_rows(
        c,
        |_| None,
        |row, _| format!("{}\n", Value::Dict(row.clone()).to_json()),
    )
}

fn csv_field(s: String) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn write_csv(c: PluginCall) -> BoxStream<'static, Row> {
    write_rows(
        c,
        |row| {
            let h: Vec<String> = row.keys().map(|k| csv_field(k.clone())).collect();
            Some(format!("{}\n", h.join(",")))
        },
        |row, cols| {
            let cells: Vec<String> = cols
                .iter()
                .map(|k| csv_field(row.get(k).map(Value::to_text).unwrap_or_default()))
                .collect();
            format!("{}\n", cells.join(","))
        },
    )
}
