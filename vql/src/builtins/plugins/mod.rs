//! Built-in plugins (SPEC-VQL §2): scope, range, foreach, if, chain, clock,
//! watch_monitoring, monitoring, source, artifact_definitions, monitoring_logs, parse_csv,
//! clients; the endpoint plugins are in [`endpoint`].

mod data;
mod endpoint;

use std::time::Duration;

use futures::stream::{self, BoxStream};
use futures::StreamExt;

use crate::builtins::functions::{epoch_to_time, parse_time_text};
use crate::eval::engine::Place;
use crate::eval::expr::truthy;
use crate::eval::query::{query_rows, run_select, single};
use crate::eval::registry::{PluginCall, Registry};
use crate::eval::scope::Frame;
use crate::eval::value::{Row, StoredQuery, Value};

/// Workers `foreach(async=TRUE)` uses.
pub const ASYNC_WORKERS: usize = 100;

/// Registers every built-in plugin.
pub fn register(r: &mut Registry) {
    endpoint::register(r);
    data::register(r);
    r.plugin("clients", Place::Server, false, clients);
    r.plugin("monitoring_logs", Place::Server, false, monitoring_logs);
    r.plugin("parse_csv", Place::Both, false, parse_csv);
    r.plugin("scope", Place::Both, false, scope);
    r.plugin("range", Place::Both, false, range);
    r.plugin("foreach", Place::Both, false, foreach);
    r.plugin("if", Place::Both, false, if_);
    r.plugin("chain", Place::Both, false, chain);
    r.plugin("clock", Place::Both, true, clock);
    r.plugin("watch_monitoring", Place::Server, true, watch_monitoring);
    r.plugin("monitoring", Place::Server, false, monitoring);
    r.plugin("source", Place::Server, false, source);
    r.plugin(
        "artifact_definitions",
        Place::Server,
        false,
        artifact_definitions,
    );
}

fn scope(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(&[], &[]) {
        return stream::empty().boxed();
    }
    stream::iter(std::iter::once(Row::new())).boxed()
}

pub(crate) fn int_arg(c: &PluginCall, name: &str, default: i64) -> Option<i64> {
    match c.get(name) {
        None | Some(Value::Null) => Some(default),
        Some(Value::Int(i)) => Some(*i),
        Some(Value::Float(f)) => Some(*f as i64),
        Some(other) => {
            c.fail(format!(
                "{name} must be a number, got {}",
                other.type_name()
            ));
            None
        }
    }
}

fn range(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(&["start", "end", "step"], &["end"]) {
        return stream::empty().boxed();
    }
    let (Some(start), Some(end), Some(step)) = (
        int_arg(&c, "start", 0),
        int_arg(&c, "end", 0),
        int_arg(&c, "step", 1),
    ) else {
        return stream::empty().boxed();
    };
    if step <= 0 {
        c.fail("step must be positive");
        return stream::empty().boxed();
    }
    stream::iter(
        (start..end)
            .step_by(step as usize)
            .map(|i| single("_value", Value::Int(i))),
    )
    .boxed()
}

/// Runs a query value (or emits a non-query value's rows) in a scope with `row` on top.
fn run_in(query: &Value, scope: &crate::eval::scope::Scope, row: Row) -> BoxStream<'static, Row> {
    let child = scope.push(Frame::Row(std::sync::Arc::new(row)));
    match query {
        Value::Query(StoredQuery::Lazy { select, .. }) => run_select(select.clone(), child),
        other => query_rows(other.clone(), child),
    }
}

fn foreach(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(&["row", "query", "workers", "async", "column"], &["row"]) {
        return stream::empty().boxed();
    }
    let workers = if c.get("async").is_some_and(Value::truthy) {
        ASYNC_WORKERS
    } else {
        int_arg(&c, "workers", 1).unwrap_or(1).max(1) as usize
    };
    let column = c.get("column").map(Value::to_text);
    let rows = query_rows(c.get("row").cloned().unwrap_or_default(), c.scope.clone());
    let rows = rows.map(move |r| match &column {
        Some(col) => match r.get(col).cloned() {
            Some(Value::Dict(d)) => d,
            Some(other) => single("_value", other),
            None => Row::new(),
        },
        None => r,
    });
    let Some(query) = c.get("query").cloned() else {
        return rows.boxed();
    };
    let scope = c.scope.clone();
    if workers == 1 {
        rows.flat_map(move |r| run_in(&query, &scope, r)).boxed()
    } else {
        rows.flat_map_unordered(workers, move |r| run_in(&query, &scope, r))
            .boxed()
    }
}

fn if_(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(&["condition", "then", "else"], &["condition", "then"]) {
        return stream::empty().boxed();
    }
    let scope = c.scope.clone();
    let cond = c.get("condition").cloned().unwrap_or_default();
    let then = c.get("then").cloned().unwrap_or_default();
    let else_ = c.get("else").cloned().unwrap_or_default();
    Box::pin(async_stream::stream! {
        let chosen = if truthy(&cond, &scope).await { then } else { else_ };
        let mut rows = query_rows(chosen, scope.clone());
        while let Some(r) = rows.next().await {
            yield r;
        }
    })
}

pub(super) fn chain(c: PluginCall) -> BoxStream<'static, Row> {
    let is_async = c.get("async").is_some_and(Value::truthy);
    let queries: Vec<BoxStream<'static, Row>> = c
        .args
        .iter()
        .filter(|(n, _)| n != "async")
        .map(|(_, q)| query_rows(q.clone(), c.scope.clone()))
        .collect();
    if is_async {
        stream::select_all(queries).boxed()
    } else {
        stream::iter(queries).flatten().boxed()
    }
}

/// A time as a row of its members (`Unix`, `UnixNano`, ..., `String`).
pub fn time_row(t: chrono::DateTime<chrono::Utc>) -> Row {
    let mut r = Row::new();
    let v = Value::Time(t);
    for m in [
        "Unix",
        "UnixNano",
        "UnixMilli",
        "Year",
        "Month",
        "Day",
        "Hour",
        "Minute",
        "Second",
        "Nanosecond",
        "Weekday",
        "String",
    ] {
        r.insert(m.to_string(), crate::eval::value::member(&v, m));
    }
    r
}

/// Microseconds of a time argument (anything `timestamp()` accepts).
pub fn time_arg_us(v: &Value) -> Option<i64> {
    let t = match v {
        Value::Int(i) => epoch_to_time(*i as f64),
        Value::Float(f) => epoch_to_time(*f),
        Value::Str(s) => parse_time_text(s),
        Value::Time(t) => Value::Time(*t),
        _ => Value::Null,
    };
    match t {
        Value::Time(t) => Some(t.timestamp_micros()),
        _ => None,
    }
}

fn clock(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(&["start", "period", "ms"], &[]) {
        return stream::empty().boxed();
    }
    let period = c.get("period").and_then(|v| match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    });
    let ms = int_arg(&c, "ms", 0).unwrap_or(0);
    let mut every = period.unwrap_or(0.0) + ms as f64 / 1000.0;
    if every <= 0.0 {
        every = 1.0;
    }
    let start = c.get("start").and_then(time_arg_us);
    let cancel = c.scope.ctx().cancel.clone();
    Box::pin(async_stream::stream! {
        if let Some(start) = start {
            let wait = start - chrono::Utc::now().timestamp_micros();
            if wait > 0 {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_micros(wait as u64)) => {}
                }
            }
            yield time_row(chrono::Utc::now());
        }
        let mut tick = tokio::time::interval(Duration::from_secs_f64(every));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            yield time_row(chrono::Utc::now());
        }
    })
}

fn watch_monitoring(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(&["artifact"], &["artifact"]) {
        return stream::empty().boxed();
    }
    let artifact = c.get("artifact").map(Value::to_text).unwrap_or_default();
    let ctx = c.scope.ctx().clone();
    let name = c.name.clone();
    let cancel = ctx.cancel.clone();
    let watch = ctx.host.watch(&ctx.info.org, &artifact);
    stream::once(async move {
        match watch.await {
            Err(e) => {
                ctx.log("ERROR", format!("{name}: {e}"));
                stream::empty().boxed()
            }
            // Rows as stored: `_Source` names who pushed each (for send_event(), the
            // query's principal), never the queue.
            Ok(rows) => rows.boxed(),
        }
    })
    .flatten()
    .take_until(cancel.cancelled_owned())
    .boxed()
}

fn stored(c: &PluginCall, artifact: String, client: Option<String>) -> BoxStream<'static, Row> {
    let start = c.get("start_time").and_then(time_arg_us).unwrap_or(0);
    let end = c.get("end_time").and_then(time_arg_us).unwrap_or(i64::MAX);
    let ctx = c.scope.ctx().clone();
    let name = c.name.clone();
    let rows = ctx.host.read(&ctx.info.org, &artifact, client, start, end);
    rows.filter_map(move |r| {
        let ctx = ctx.clone();
        let name = name.clone();
        async move {
            match r {
                Ok(row) => Some(row),
                Err(e) => {
                    ctx.log("ERROR", format!("{name}: {e}"));
                    None
                }
            }
        }
    })
    .boxed()
}

fn queue_name(c: &PluginCall) -> String {
    let artifact = c.get("artifact").map(Value::to_text).unwrap_or_default();
    match c
        .get("source")
        .map(Value::to_text)
        .filter(|s| !s.is_empty())
    {
        Some(s) => format!("{artifact}/{s}"),
        None => artifact,
    }
}

fn client_filter(v: Option<&Value>) -> Option<String> {
    v.map(Value::to_text)
        .filter(|c| !c.is_empty() && c != "server")
}

fn monitoring(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(
        &[
            "client_id",
            "artifact",
            "source",
            "start_time",
            "end_time",
            "start_row",
        ],
        &["client_id", "artifact"],
    ) {
        return stream::empty().boxed();
    }
    let skip = int_arg(&c, "start_row", 0).unwrap_or(0).max(0) as usize;
    stored(&c, queue_name(&c), client_filter(c.get("client_id")))
        .skip(skip)
        .boxed()
}

fn source(c: PluginCall) -> BoxStream<'static, Row> {
    let allowed = [
        "client_id",
        "flow_id",
        "hunt_id",
        "artifact",
        "source",
        "start_time",
        "end_time",
        "notebook_id",
        "notebook_cell_id",
        "notebook_cell_table",
        "start_row",
        "count",
        "orgs",
    ];
    if !c.check(&allowed, &[]) {
        return stream::empty().boxed();
    }
    let snapshot = c.scope.snapshot();
    let artifact = match c.get("artifact") {
        Some(a) => a.to_text(),
        None => snapshot
            .get("ArtifactName")
            .map(Value::to_text)
            .unwrap_or_default(),
    };
    if artifact.is_empty() {
        c.fail("artifact is required (none given and no ArtifactName in scope)");
        return stream::empty().boxed();
    }
    let skip = int_arg(&c, "start_row", 0).unwrap_or(0).max(0) as usize;
    let count = int_arg(&c, "count", -1).unwrap_or(-1);
    if let Some(rows) = crate::builtins::collections::source_of_collection(&c, &artifact) {
        let rows = rows.skip(skip);
        return if count >= 0 {
            rows.take(count as usize).boxed()
        } else {
            rows.boxed()
        };
    }
    let client = client_filter(c.get("client_id").or(snapshot.get("ClientId")));
    let queue = match c
        .get("source")
        .map(Value::to_text)
        .filter(|s| !s.is_empty())
    {
        Some(s) => format!("{artifact}/{s}"),
        None => artifact,
    };
    let rows = stored(&c, queue, client).skip(skip);
    if count >= 0 {
        rows.take(count as usize).boxed()
    } else {
        rows.boxed()
    }
}

fn artifact_definitions(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(&["names", "deps", "sanitize"], &[]) {
        return stream::empty().boxed();
    }
    let names: Vec<String> =
        crate::builtins::functions::arg_list(c.get("names").cloned().unwrap_or_default())
            .iter()
            .map(Value::to_text)
            .collect();
    let defs = c.scope.ctx().host.artifact_definitions();
    stream::iter(defs.into_iter().filter(move |d| {
        names.is_empty() || d.get("name").is_some_and(|n| names.contains(&n.to_text()))
    }))
    .boxed()
}

fn monitoring_logs(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(
        &["artifact", "start_time", "end_time", "client_id", "flow_id"],
        &["artifact"],
    ) {
        return stream::empty().boxed();
    }
    let artifact = c.get("artifact").map(Value::to_text).unwrap_or_default();
    let start = c.get("start_time").and_then(time_arg_us).unwrap_or(0);
    let end = c.get("end_time").and_then(time_arg_us).unwrap_or(i64::MAX);
    // A client's monitoring log is kept under `client \x1f artifact`.
    let client = c
        .get("client_id")
        .map(Value::to_text)
        .filter(|id| !id.is_empty() && id != "server");
    let stream_name = match &client {
        Some(id) => format!("{id}\u{1f}{artifact}"),
        None => artifact.clone(),
    };
    let ctx = c.scope.ctx().clone();
    let rows = ctx.host.read_logs(&ctx.info.org, &stream_name, start, end);
    rows.filter_map(move |r| {
        let ctx = ctx.clone();
        let (client, artifact) = (client.clone(), artifact.clone());
        async move {
            let mut row = r
                .map_err(|e| ctx.log("ERROR", format!("monitoring_logs: {e}")))
                .ok()?;
            if let Some(id) = client {
                row.insert("Artifact".into(), Value::Str(artifact));
                row.insert("ClientId".into(), Value::Str(id));
            }
            Some(row)
        }
    })
    .boxed()
}

/// Splits CSV text into records (quotes, doubled quotes, newlines inside quotes).
pub fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rec = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => rec.push(std::mem::take(&mut field)),
            ('\r', false) => {}
            ('\n', false) => {
                rec.push(std::mem::take(&mut field));
                out.push(std::mem::take(&mut rec));
            }
            (c, _) => field.push(c),
        }
    }
    if !field.is_empty() || !rec.is_empty() {
        rec.push(field);
        out.push(rec);
    }
    out
}

fn parse_csv(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(
        &["filename", "accessor", "auto_headers", "separator"],
        &["filename"],
    ) {
        return stream::empty().boxed();
    }
    let name = c.get("filename").map(Value::to_text).unwrap_or_default();
    let text = match c.get("accessor").map(Value::to_text).as_deref() {
        Some("data") => name,
        _ if !c.scope.ctx().allowed(
            talon_core::acl::Permission::FilesystemRead,
            "parse_csv(filename=...)",
        ) =>
        {
            return stream::empty().boxed();
        }
        _ => match std::fs::read_to_string(&name) {
            Ok(t) => t,
            Err(e) => {
                c.fail(format!("cannot read {name}: {e}"));
                return stream::empty().boxed();
            }
        },
    };
    let mut records = csv_records(&text).into_iter();
    let Some(header) = records.next() else {
        return stream::empty().boxed();
    };
    let rows: Vec<Row> = records
        .filter(|r| !(r.len() == 1 && r[0].is_empty()))
        .map(|r| {
            header
                .iter()
                .enumerate()
                .map(|(i, h)| (h.clone(), Value::Str(r.get(i).cloned().unwrap_or_default())))
                .collect()
        })
        .collect();
    stream::iter(rows).boxed()
}

/// Client records: every client, those matching `search` (`label:X`, `host:Y`), or one
/// `client_id`.
fn clients(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(&["search", "client_id", "start", "limit"], &[]) {
        return stream::empty().boxed();
    }
    let search = match (c.get("client_id"), c.get("search")) {
        (Some(id), _) => id.to_text(),
        (None, Some(s)) => s.to_text(),
        _ => String::new(),
    };
    let ctx = c.scope.ctx().clone();
    stream::iter(ctx.host.clients(&ctx.info.org, &search)).boxed()
}
