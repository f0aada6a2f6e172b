//! Collections and hunts in VQL: `collect_client()`, `cancel_flow()`, `hunt()` and
//! `hunt_update()` (functions: one dict back), `flows()`, `flow_results()`, `flow_logs()`,
//! `hunts()`, `hunt_results()` and `hunt_flows()` (plugins), all answered by the host
//! (the master's flow and hunt manager) with Velociraptor's argument names.

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};

use crate::eval::engine::Place;
use crate::eval::registry::{Call, PluginCall, Registry};
use crate::eval::value::{Row, Value};

const COLLECT_ARGS: &[&str] = &[
    "client_id",
    "artifacts",
    "env",
    "spec",
    "timeout",
    "max_rows",
    "urgent",
    "org_id",
];
const CANCEL_ARGS: &[&str] = &["client_id", "flow_id"];
const HUNT_ARGS: &[&str] = &[
    "artifacts",
    "description",
    "tags",
    "expires",
    "spec",
    "env",
    "timeout",
    "max_rows",
    "pause",
    "include_labels",
    "exclude_labels",
    "os",
    "client_limit",
];
const HUNT_UPDATE_ARGS: &[&str] = &[
    "hunt_id",
    "start",
    "stop",
    "pause",
    "description",
    "expires",
];

pub(super) fn register(r: &mut Registry) {
    r.function("collect_client", Place::Server, collect_client);
    r.function("cancel_flow", Place::Server, cancel_flow);
    r.function("hunt", Place::Server, hunt);
    r.function("hunt_update", Place::Server, hunt_update);
    r.plugin("flows", Place::Server, false, flows);
    r.plugin("flow_results", Place::Server, false, flow_results);
    r.plugin("flow_logs", Place::Server, false, flow_logs);
    r.plugin("hunts", Place::Server, false, hunts);
    r.plugin("hunt_results", Place::Server, false, hunt_results);
    r.plugin("hunt_flows", Place::Server, false, hunt_flows);
    r.plugin("uploads", Place::Server, false, uploads);
}

/// `uploads(client_id=, flow_id=)`: Talon's flows upload no files yet, so there are none
/// to list (the arguments are still checked).
fn uploads(c: PluginCall) -> BoxStream<'static, Row> {
    let _ = c.check(&["client_id", "flow_id"], &[]);
    stream::empty().boxed()
}

/// A function call: its arguments evaluated, sent to the host, its one row back.
fn call_host<'a>(
    mut c: Call<'a>,
    allowed: &'static [&'static str],
    required: &'static [&'static str],
) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(allowed, required).await {
            return Value::Null;
        }
        let mut args = Row::new();
        for name in allowed {
            if let Some(v) = c.args.get(name).await {
                args.insert((*name).to_string(), v);
            }
        }
        let ctx = c.scope.ctx().clone();
        let mut rows = ctx.host.collections(&ctx.info.org, c.name, args);
        match rows.next().await {
            Some(Ok(row)) => Value::Dict(row),
            Some(Err(e)) => c.fail(e),
            None => Value::Null,
        }
    })
}

fn collect_client<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(COLLECT_ARGS, &["client_id", "artifacts"]).await {
            return Value::Null;
        }
        let mut args = Row::new();
        for name in COLLECT_ARGS {
            if let Some(v) = c.args.get(name).await {
                args.insert((*name).to_string(), v);
            }
        }
        let ctx = c.scope.ctx().clone();
        let on_server = args.get("client_id").map(Value::to_text).as_deref() == Some("server");
        if on_server {
            // A server collection runs with the caller's permissions, and needs its own.
            if !ctx.allowed(
                talon_core::acl::Permission::CollectServer,
                "collect_client on the server",
            ) {
                return Value::Null;
            }
            let granted = match ctx.info.permissions {
                Some(p) => Value::List(p.names().into_iter().map(Value::from).collect()),
                None => Value::Null,
            };
            args.insert("_permissions".into(), granted);
        }
        let mut rows = ctx.host.collections(&ctx.info.org, c.name, args);
        match rows.next().await {
            Some(Ok(row)) => Value::Dict(row),
            Some(Err(e)) => c.fail(e),
            None => Value::Null,
        }
    })
}

fn cancel_flow<'a>(c: Call<'a>) -> BoxFuture<'a, Value> {
    call_host(c, CANCEL_ARGS, &["client_id", "flow_id"])
}

fn hunt<'a>(c: Call<'a>) -> BoxFuture<'a, Value> {
    call_host(c, HUNT_ARGS, &["artifacts"])
}

fn hunt_update<'a>(c: Call<'a>) -> BoxFuture<'a, Value> {
    call_host(c, HUNT_UPDATE_ARGS, &["hunt_id"])
}

/// A plugin call: its arguments to the host, its rows back; an error is logged.
fn plugin_host(c: PluginCall, allowed: &[&str], required: &[&str]) -> BoxStream<'static, Row> {
    if !c.check(allowed, required) {
        return stream::empty().boxed();
    }
    let args: Row = c.args.iter().cloned().collect();
    let ctx = c.scope.ctx().clone();
    let name = c.name.clone();
    let rows = ctx.host.collections(&ctx.info.org, &name, args);
    super::rows_or_log(ctx, name, rows)
}

fn flows(c: PluginCall) -> BoxStream<'static, Row> {
    plugin_host(c, &["client_id", "flow_id", "summary"], &["client_id"])
}

fn flow_results(c: PluginCall) -> BoxStream<'static, Row> {
    plugin_host(
        c,
        &["client_id", "flow_id", "artifact", "source"],
        &["client_id", "flow_id"],
    )
}

fn flow_logs(c: PluginCall) -> BoxStream<'static, Row> {
    plugin_host(c, &["client_id", "flow_id"], &["client_id", "flow_id"])
}

fn hunts(c: PluginCall) -> BoxStream<'static, Row> {
    plugin_host(c, &["hunt_id", "summary"], &[])
}

fn hunt_results(c: PluginCall) -> BoxStream<'static, Row> {
    plugin_host(c, &["hunt_id", "artifact", "source", "brief"], &["hunt_id"])
}

fn hunt_flows(c: PluginCall) -> BoxStream<'static, Row> {
    plugin_host(
        c,
        &["hunt_id", "start_row", "limit", "basic_info"],
        &["hunt_id"],
    )
}

/// `source()` with a flow or hunt id reads that collection's results.
pub(crate) fn source_of_collection(
    c: &PluginCall,
    artifact: &str,
) -> Option<BoxStream<'static, Row>> {
    let flow = c
        .get("flow_id")
        .map(Value::to_text)
        .filter(|s| !s.is_empty());
    let hunt = c
        .get("hunt_id")
        .map(Value::to_text)
        .filter(|s| !s.is_empty());
    let (call, mut args) = match (flow, hunt) {
        (Some(f), _) => {
            let mut a = Row::new();
            a.insert("flow_id".into(), Value::Str(f));
            let client = c
                .get("client_id")
                .cloned()
                .or_else(|| c.scope.snapshot().get("ClientId").cloned())
                .unwrap_or_default();
            a.insert("client_id".into(), client);
            ("flow_results", a)
        }
        (None, Some(h)) => {
            let mut a = Row::new();
            a.insert("hunt_id".into(), Value::Str(h));
            ("hunt_results", a)
        }
        (None, None) => return None,
    };
    args.insert("artifact".into(), Value::Str(artifact.to_string()));
    if let Some(s) = c.get("source") {
        args.insert("source".into(), s.clone());
    }
    let ctx = c.scope.ctx().clone();
    let rows = ctx.host.collections(&ctx.info.org, call, args);
    Some(
        rows.filter_map(move |r| {
            let ctx = ctx.clone();
            async move { r.map_err(|e| ctx.log("ERROR", format!("source: {e}"))).ok() }
        })
        .boxed(),
    )
}
