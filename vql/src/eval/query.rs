//! Running queries: sources (plugins, LET queries, values), lazy columns, WHERE, GROUP BY,
//! ORDER BY, LIMIT, and programs of LET and SELECT statements.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::stream::{self, BoxStream};
use futures::StreamExt;
use indexmap::IndexMap;

use crate::eval::expr::{
    self, bind_params, eval, eval_fast, materialize, materialize_deep, truthy,
};
use crate::eval::registry::PluginCall;
use crate::eval::scope::{AggState, Binding, Found, Frame, LazyColumns, Scope};
use crate::eval::value::{self, Row, StoredQuery, Value};
use crate::limits::MAX_DEPTH;
use crate::syntax::ast::*;
use crate::syntax::format;

/// The rows of a value used as a query source or stored query.
pub fn query_rows(v: Value, scope: Scope) -> BoxStream<'static, Row> {
    match v {
        Value::Query(StoredQuery::Lazy { select, scope }) => run_select(select, scope),
        Value::Query(StoredQuery::Rows(rows)) => {
            stream::iter((0..rows.len()).map(move |i| rows[i].clone())).boxed()
        }
        Value::List(items) => {
            let _ = scope;
            stream::iter(items.into_iter().filter(|v| !v.is_null()).map(|v| match v {
                Value::Dict(d) => d,
                other => single("_value", other),
            }))
            .boxed()
        }
        Value::Dict(d) => stream::iter(std::iter::once(d)).boxed(),
        Value::Null => stream::empty().boxed(),
        other => stream::iter(std::iter::once(single("_value", other))).boxed(),
    }
}

/// A one-column row.
pub fn single(name: &str, v: Value) -> Row {
    let mut r = Row::new();
    r.insert(name.to_string(), v);
    r
}

/// Output names of a select's columns (alias or canonical text), by column index.
fn column_names(sel: &Select) -> Vec<Option<String>> {
    sel.columns
        .iter()
        .map(|c| match c {
            Column::Star => None,
            Column::Value { value, alias, .. } => {
                Some(alias.clone().unwrap_or_else(|| format::column_name(value)))
            }
        })
        .collect()
}

/// Computes a lazy column the first time it is used.
pub async fn lazy_column(cols: &Arc<LazyColumns>, i: usize, _at: &Scope) -> Value {
    if let Some(v) = cols
        .values
        .lock()
        .expect("lazy columns")
        .get(i)
        .cloned()
        .flatten()
    {
        return v;
    }
    let v = match &cols.select.columns[i] {
        // A column sees the columns before it (and not itself, so `x + 1 AS x` reads the
        // source's x).
        Column::Value { value, .. } if i > 0 && cols.by_name.values().any(|j| *j < i) => {
            column_value(value, &cols.base.push(Frame::Earlier(cols.clone(), i))).await
        }
        Column::Value { value, .. } => column_value(value, &cols.base).await,
        Column::Star => Value::Null,
    };
    cols.values.lock().expect("lazy columns")[i] = Some(v.clone());
    v
}

async fn column_value(value: &ColumnValue, base: &Scope) -> Value {
    match value {
        ColumnValue::Expr(e) => materialize_deep(eval(e, base).await, base).await,
        ColumnValue::Star => Value::Dict(base.snapshot()),
        ColumnValue::Query(q) => {
            let rows: Vec<Row> = run_select(q.clone(), base.clone()).collect().await;
            let mut items: Vec<Value> = rows
                .into_iter()
                .map(|r| {
                    if r.len() == 1 {
                        r.into_iter().next().map(|(_, v)| v).unwrap_or_default()
                    } else {
                        Value::Dict(r)
                    }
                })
                .collect();
            match items.len() {
                0 => Value::Null,
                1 => items.pop().unwrap_or_default(),
                _ => Value::List(items),
            }
        }
    }
}

struct RowCtx {
    source: Arc<Row>,
    lazy: Arc<LazyColumns>,
    /// The scope WHERE and GROUP BY see: base plus the lazy columns.
    filter: Scope,
}

fn row_ctx(
    sel: &Arc<Select>,
    by_name: &Arc<HashMap<String, usize>>,
    scope: &Scope,
    source: Arc<Row>,
) -> RowCtx {
    let base = scope.push(Frame::Row(source.clone()));
    let lazy = Arc::new(LazyColumns {
        select: sel.clone(),
        base: base.clone(),
        by_name: by_name.clone(),
        values: Mutex::new(vec![None; sel.columns.len()]),
    });
    // Without named columns there is nothing lazy to look up.
    let filter = if by_name.is_empty() {
        base
    } else {
        base.push(Frame::Lazy(lazy.clone()))
    };
    RowCtx {
        source,
        lazy,
        filter,
    }
}

async fn emit(sel: &Select, names: &[Option<String>], rc: &RowCtx) -> Row {
    let mut out = Row::new();
    for (i, c) in sel.columns.iter().enumerate() {
        match c {
            Column::Star => {
                for (k, v) in rc.source.iter() {
                    if !out.contains_key(k) {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            Column::Value { .. } => {
                let v = lazy_column(&rc.lazy, i, &rc.filter).await;
                let name = names[i].clone().unwrap_or_default();
                out.shift_remove(&name);
                out.insert(name, v);
            }
        }
    }
    out
}

/// Runs a SELECT in a scope; the stream ends when the source does (or at LIMIT).
pub fn run_select(sel: Arc<Select>, scope: Scope) -> BoxStream<'static, Row> {
    Box::pin(async_stream::stream! {
        let names = column_names(&sel);
        let by_name: Arc<HashMap<String, usize>> = Arc::new(names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.clone().map(|n| (n, i)))
            .collect());
        let limit = sel.limit.filter(|l| *l >= 0).map(|l| l as usize);
        if limit == Some(0) {
            return;
        }
        let buffered = sel.group_by.is_some() || sel.order_by.is_some();
        // One cancellation future for the whole run, not one per row.
        let mut source = source_rows(&sel.from, &scope)
            .await
            .take_until(scope.ctx().cancel.clone().cancelled_owned())
            .boxed();
        let mut emitted = 0usize;
        let mut bins: IndexMap<String, (AggState, Row)> = IndexMap::new();
        let mut buffer: Vec<Row> = Vec::new();
        while let Some(row) = source.next().await {
            // A source that is always ready (range() over a WHERE that keeps nothing) would
            // otherwise never give the thread back: every row spends tokio's cooperative
            // budget, so the query yields, other tasks run, and a dropped stream stops it.
            tokio::task::consume_budget().await;
            let rc = row_ctx(&sel, &by_name, &scope, Arc::new(row));
            if let Some(w) = &sel.where_ {
                let v = eval_fast(w, &rc.filter).await;
                if !truthy(&v, &rc.filter).await {
                    continue;
                }
            }
            if let Some(g) = &sel.group_by {
                let key = materialize_deep(eval(g, &rc.filter).await, &rc.filter).await.to_text();
                let agg = bins.entry(key.clone()).or_insert_with(|| (AggState::default(), Row::new())).0.clone();
                let binned = row_ctx(&sel, &by_name, &scope.with_agg(agg), rc.source);
                let out = emit(&sel, &names, &binned).await;
                bins.get_mut(&key).expect("bin inserted above").1 = out;
                continue;
            }
            let out = emit(&sel, &names, &rc).await;
            if buffered {
                buffer.push(out);
                continue;
            }
            yield out;
            emitted += 1;
            if limit.is_some_and(|l| emitted >= l) {
                return;
            }
        }
        if !buffered {
            return;
        }
        if sel.group_by.is_some() {
            buffer = bins.into_values().map(|(_, r)| r).collect();
        }
        if let Some(o) = &sel.order_by {
            buffer.sort_by(|a, b| {
                let (x, y) = (a.get(&o.column).cloned().unwrap_or_default(), b.get(&o.column).cloned().unwrap_or_default());
                value::sort_cmp(&x, &y)
            });
            if o.desc {
                buffer.reverse();
            }
        }
        for row in buffer.into_iter().take(limit.unwrap_or(usize::MAX)) {
            yield row;
        }
    })
}

/// The rows of a FROM clause.
async fn source_rows(from: &Source, scope: &Scope) -> BoxStream<'static, Row> {
    let ctx = scope.ctx().clone();
    let name = from.name();
    let args: &[Arg] = from.args.as_deref().unwrap_or(&[]);
    if let Some(p) = ctx.engine.get_plugin(&name) {
        if let Some(perm) = crate::builtins::permissions::required(&name, true) {
            if !ctx.allowed(perm, &name) {
                return futures::stream::empty().boxed();
            }
        }
        let mut values = Vec::with_capacity(args.len());
        for a in args {
            let v = expr::arg_value(&crate::eval::registry::ArgSrc::Ast(&a.value), scope).await;
            if a.name == "**" {
                if let Value::Dict(d) = v {
                    values.extend(d);
                }
                continue;
            }
            values.push((a.name.clone(), v));
        }
        return (p.imp)(PluginCall {
            name: name.clone(),
            args: values,
            scope: scope.clone(),
        });
    }
    if let Some(artifact) = name.strip_prefix("Artifact.") {
        return artifact_rows(artifact, args, scope).await;
    }
    if from.path.len() == 1 {
        let found = scope.find(&name);
        let is_call = matches!(
            found,
            Some(Found::Binding(Binding::Query(_) | Binding::Func { .. }))
        );
        // Each call of a stored query or LET function nests its rows' stream inside the
        // caller's; a query that calls itself would nest until the stack overflows.
        if is_call && scope.depth() > MAX_DEPTH {
            ctx.log(
                "ERROR",
                format!(
                    "query {name} recursed deeper than {} calls; stopped",
                    MAX_DEPTH / crate::limits::CALL_WEIGHT
                ),
            );
            return stream::empty().boxed();
        }
        match found {
            Some(Found::Binding(Binding::Query(select))) => {
                let child = bind_params(&[], args, scope).await;
                return run_select(select, child);
            }
            Some(Found::Binding(Binding::Func { params, body })) => {
                for a in args {
                    if !params.iter().any(|p| p.name == a.name) {
                        ctx.log(
                            "ERROR",
                            format!("Extra unrecognized arg {} in call to {name}", a.name),
                        );
                    }
                }
                for p in &params {
                    if p.default.is_none() && !args.iter().any(|a| a.name == p.name) {
                        ctx.log("ERROR", format!("Missing arg {} in call to {name}", p.name));
                    }
                }
                let child = bind_params(&params, args, scope).await.with_new_agg();
                return match body {
                    LetValue::Query(select) => run_select(select, child),
                    LetValue::Expr(e) => {
                        let v = eval(&e, &child).await;
                        query_rows(v, child)
                    }
                };
            }
            Some(Found::Binding(Binding::Value(v))) | Some(Found::Value(v)) => {
                return query_rows(v, scope.clone());
            }
            Some(Found::Binding(Binding::Expr(e))) => {
                let v = eval(&e, scope).await;
                return query_rows(v, scope.clone());
            }
            Some(Found::Column(cols, i, at)) => {
                let v = lazy_column(&cols, i, &at).await;
                return query_rows(v, scope.clone());
            }
            None => {}
        }
    }
    ctx.log("ERROR", format!("Plugin {name} not found"));
    stream::empty().boxed()
}

/// `Artifact.Name(params..., source='S')`: runs the artifact's sources in a scope of its
/// own (parameters as strings, then its preamble), each gated by its precondition.
async fn artifact_rows(artifact: &str, args: &[Arg], scope: &Scope) -> BoxStream<'static, Row> {
    let ctx = scope.ctx().clone();
    let mut params = Vec::new();
    let mut only_source = None;
    for a in args {
        let v = expr::arg_value(&crate::eval::registry::ArgSrc::Ast(&a.value), scope).await;
        if a.name == "source" {
            only_source = Some(v.to_text());
        } else {
            params.push((a.name.clone(), v.to_text()));
        }
    }
    let sources = match ctx.host.artifact_query(artifact, params) {
        Ok(s) => s,
        Err(e) => {
            ctx.log("ERROR", format!("Artifact.{artifact}: {e}"));
            return stream::empty().boxed();
        }
    };
    let scope = scope.clone();
    let artifact = artifact.to_string();
    Box::pin(async_stream::stream! {
        for src in sources {
            if let Some(want) = &only_source {
                if !src.name.ends_with(&format!("/{want}")) {
                    continue;
                }
            }
            let mut vars = IndexMap::new();
            for (k, v) in src.env {
                vars.insert(k, Binding::Value(v));
            }
            let child = scope.with_vars(vars);
            if let Some(pre) = &src.precondition {
                match crate::parse(pre) {
                    Ok(p) => {
                        let mut rows = run_program(Arc::new(p), child.clone());
                        if rows.next().await.is_none() {
                            continue;
                        }
                    }
                    Err(e) => {
                        child.ctx().log("ERROR", format!("Artifact.{artifact} precondition: {e}"));
                        continue;
                    }
                }
            }
            match crate::parse(&src.query) {
                Ok(p) => {
                    let mut rows = run_program(Arc::new(p), child);
                    while let Some(r) = rows.next().await {
                        yield r;
                    }
                }
                Err(e) => child.ctx().log("ERROR", format!("Artifact.{artifact}: {e}")),
            }
        }
    })
}

/// Runs statements in order: LETs bind in `scope`, each SELECT's rows are yielded.
pub fn run_program(program: Arc<Program>, scope: Scope) -> BoxStream<'static, Row> {
    Box::pin(async_stream::stream! {
        for stmt in &program.stmts {
            match stmt {
                Stmt::Let(l) => bind_let(l, &scope).await,
                Stmt::Select(sel) => {
                    let mut rows = run_select(Arc::new(sel.clone()), scope.clone());
                    while let Some(r) = rows.next().await {
                        yield r;
                    }
                }
            }
        }
    })
}

/// Applies one LET statement to a scope.
pub async fn bind_let(l: &Let, scope: &Scope) {
    if let Some(params) = &l.params {
        if l.materialize {
            scope.ctx().log(
                "WARN",
                format!(
                    "LET {} has parameters, so <= does not materialize it",
                    l.name
                ),
            );
        }
        scope.set(
            &l.name,
            Binding::Func {
                params: params.clone(),
                body: l.value.clone(),
            },
        );
        return;
    }
    if scope.ctx().engine.get_function(&l.name).is_some() {
        scope.ctx().log(
            "WARN",
            format!(
                "LET {} shadows a built-in function name outside calls",
                l.name
            ),
        );
    }
    let binding = match (&l.value, l.materialize) {
        (LetValue::Query(q), false) => Binding::Query(q.clone()),
        (LetValue::Query(q), true) => {
            let rows: Vec<Row> = run_select(q.clone(), scope.clone()).collect().await;
            Binding::Value(Value::Query(StoredQuery::Rows(Arc::new(rows))))
        }
        (LetValue::Expr(e), false) => Binding::Expr(e.clone()),
        (LetValue::Expr(e), true) => {
            let v = eval(e, scope).await;
            Binding::Value(materialize(v, scope).await)
        }
    };
    scope.set(&l.name, binding);
}
