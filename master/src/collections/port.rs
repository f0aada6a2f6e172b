//! The VQL side of collections and hunts: each function and plugin call (Velociraptor's
//! argument names) turned into a request to the manager or a read of the store, and
//! its answer into rows. The CLI's `collect`, `flows` and `hunts` commands are these
//! calls, so there is one way in.

use std::collections::BTreeMap;

use futures::stream::{self, BoxStream, StreamExt};
use serde_json::{json, Map, Value};
use talon_shared::collections::*;
use talon_shared::queue::now_us;
use talon_shared::vql_host::ServicePort;
use talon_vql::engine::{HostError, HostResult};

use crate::args::{text, truthy};

use super::{CollectSpec, Collections, Error, HuntAction, HuntSpec};

/// Log lines a read returns at most (the manager keeps no more per flow).
const MAX_LOG_ROWS: usize = 100_000;

fn host_error(e: Error) -> HostError {
    match e {
        Error::NotFound(m) => HostError::NotFound(m),
        Error::Invalid(m) => HostError::Refused(m),
        other => HostError::failed(other),
    }
}

fn list(args: &Map<String, Value>, k: &str) -> Vec<String> {
    match args.get(k) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .filter(|s| !s.is_empty())
            .collect(),
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn number(args: &Map<String, Value>, k: &str) -> HostResult<u64> {
    match args.get(k) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or_else(|| HostError::Refused(format!("{k} must be a positive number"))),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| HostError::Refused(format!("{k} must be a number, not {s:?}"))),
        Some(other) => Err(HostError::Refused(format!(
            "{k} must be a number, not {other}"
        ))),
    }
}

/// Parameters from `env` (a dict) and `spec` (`{Artifact: {param: value}}`).
fn params(args: &Map<String, Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut add = |m: &Map<String, Value>| {
        for (k, v) in m {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.insert(k.clone(), v);
        }
    };
    if let Some(Value::Object(env)) = args.get("env") {
        add(env);
    }
    if let Some(Value::Object(spec)) = args.get("spec") {
        for v in spec.values() {
            if let Value::Object(m) = v {
                add(m);
            }
        }
    }
    out
}

/// A time argument: unix seconds (as `now() + 3600` gives), microseconds, or RFC 3339.
fn time_us(args: &Map<String, Value>, k: &str) -> HostResult<i64> {
    match args.get(k) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => {
            let f = n.as_f64().unwrap_or(0.0);
            Ok(if f > 1e14 { f as i64 } else { (f * 1e6) as i64 })
        }
        Some(Value::String(s)) => {
            talon_core::timefmt::parse_time(s).map_err(|e| HostError::Refused(format!("{k}: {e}")))
        }
        Some(other) => Err(HostError::Refused(format!(
            "{k} must be a time, not {other}"
        ))),
    }
}

fn fail(e: HostError) -> BoxStream<'static, HostResult<Value>> {
    stream::once(async move { Err(e) }).boxed()
}

fn rows_of(json: Vec<String>) -> BoxStream<'static, HostResult<Value>> {
    stream::iter(
        json.into_iter()
            .filter_map(|j| serde_json::from_str::<Value>(&j).ok())
            .map(Ok),
    )
    .boxed()
}

impl ServicePort for Collections {
    fn call(
        &self,
        org: &str,
        principal: &str,
        call: &str,
        args: Value,
    ) -> BoxStream<'static, HostResult<Value>> {
        let args = match args {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let (this, org, who) = (self.clone(), org.to_string(), principal.to_string());
        match call {
            "collect_client" => {
                let client = text(&args, "client_id");
                let spec = CollectSpec {
                    client_id: client.clone(),
                    artifacts: list(&args, "artifacts"),
                    params: params(&args),
                    timeout: match number(&args, "timeout") {
                        Ok(n) => n,
                        Err(e) => return fail(e),
                    },
                    max_rows: match number(&args, "max_rows") {
                        Ok(n) => n,
                        Err(e) => return fail(e),
                    },
                };
                if client == super::SERVER_CLIENT {
                    // The permissions the query runs with, as the VQL engine gave them.
                    let permissions = match args.get("_permissions") {
                        Some(Value::Array(names)) => Some(talon_core::acl::Permissions::of(
                            &names
                                .iter()
                                .filter_map(|n| {
                                    n.as_str().and_then(talon_core::acl::Permission::parse)
                                })
                                .collect::<Vec<_>>(),
                        )),
                        _ => None,
                    };
                    return stream::once(async move {
                        let f = this
                            .collect_server(&org, spec, &who, permissions)
                            .await
                            .map_err(host_error)?;
                        Ok(json!({"flow_id": f.session_id, "request": f.request}))
                    })
                    .boxed();
                }
                stream::once(async move {
                    let f = this.collect(&org, spec, &who).await.map_err(host_error)?;
                    Ok(json!({"flow_id": f.session_id, "request": f.request}))
                })
                .boxed()
            }
            "cancel_flow" => {
                let (client, flow) = (text(&args, "client_id"), text(&args, "flow_id"));
                stream::once(async move {
                    let f = this
                        .cancel(&org, &client, &flow, &who)
                        .await
                        .map_err(host_error)?;
                    Ok(json!({"flow_id": f.session_id, "state": f.state, "status": f.status}))
                })
                .boxed()
            }
            "flows" => {
                let (client, flow) = (text(&args, "client_id"), text(&args, "flow_id"));
                let now = now_us();
                let found = if flow.is_empty() {
                    this.flows(&org, &client)
                } else {
                    this.flow(&org, &client, &flow).map(|f| vec![f])
                };
                match found {
                    Ok(fs) => stream::iter(fs.into_iter().map(move |f| Ok(f.view(now)))).boxed(),
                    Err(e) => fail(host_error(e)),
                }
            }
            "flow_results" => {
                let (client, flow) = (text(&args, "client_id"), text(&args, "flow_id"));
                let source = source_name(&args);
                match this.results(&org, &client, &flow, source.as_deref()) {
                    Ok(rows) => rows
                        .filter_map(|j| async move { serde_json::from_str::<Value>(&j).ok() })
                        .map(Ok)
                        .boxed(),
                    Err(e) => fail(host_error(e)),
                }
            }
            "flow_logs" => {
                let (client, flow) = (text(&args, "client_id"), text(&args, "flow_id"));
                match this.logs(&org, &client, &flow, MAX_LOG_ROWS) {
                    Ok(rows) => rows_of(rows),
                    Err(e) => fail(host_error(e)),
                }
            }
            "hunt" => {
                let spec = match hunt_spec(&args) {
                    Ok(s) => s,
                    Err(e) => return fail(e),
                };
                stream::once(async move {
                    let h = this
                        .create_hunt(&org, spec, &who)
                        .await
                        .map_err(host_error)?;
                    Ok(json!({"HuntId": h.hunt_id, "Request": h}))
                })
                .boxed()
            }
            "hunt_update" => {
                let hunt_id = text(&args, "hunt_id");
                let mut actions = Vec::new();
                if truthy(&args, "start") {
                    actions.push(HuntAction::Start);
                }
                if truthy(&args, "pause") {
                    actions.push(HuntAction::Pause);
                }
                if truthy(&args, "stop") {
                    actions.push(HuntAction::Stop);
                }
                match time_us(&args, "expires") {
                    Ok(0) => {}
                    Ok(t) => actions.push(HuntAction::Expires(t)),
                    Err(e) => return fail(e),
                }
                if args.contains_key("description") {
                    actions.push(HuntAction::Description(text(&args, "description")));
                }
                if actions.is_empty() {
                    return fail(HostError::Refused(
                        "nothing to change: give start, pause, stop, expires or description".into(),
                    ));
                }
                stream::once(async move {
                    let mut last = None;
                    for a in actions {
                        last = Some(
                            this.modify_hunt(&org, &hunt_id, a, &who)
                                .await
                                .map_err(host_error)?,
                        );
                    }
                    Ok(json!({"HuntId": hunt_id, "Hunt": last}))
                })
                .boxed()
            }
            "hunts" => {
                let hunt_id = text(&args, "hunt_id");
                let found = if hunt_id.is_empty() {
                    this.hunts(&org)
                } else {
                    this.hunt(&org, &hunt_id).map(|h| vec![h])
                };
                match found {
                    Ok(hs) => stream::iter(
                        hs.into_iter()
                            .map(|h| Ok(serde_json::to_value(h).unwrap_or(Value::Null))),
                    )
                    .boxed(),
                    Err(e) => fail(host_error(e)),
                }
            }
            "hunt_flows" => {
                let hunt_id = text(&args, "hunt_id");
                let now = now_us();
                match this.hunt_flows(&org, &hunt_id) {
                    Ok(fs) => stream::iter(fs.into_iter().map(move |(client, f)| {
                        let flow_id = f.as_ref().map(|f| f.session_id.clone()).unwrap_or_default();
                        Ok(json!({
                            "HuntId": hunt_id,
                            "ClientId": client,
                            "FlowId": flow_id,
                            "Flow": f.map(|f| f.view(now)),
                        }))
                    }))
                    .boxed(),
                    Err(e) => fail(host_error(e)),
                }
            }
            "hunt_results" => {
                let hunt_id = text(&args, "hunt_id");
                let source = source_name(&args);
                let flows = match this.hunt_flows(&org, &hunt_id) {
                    Ok(f) => f,
                    Err(e) => return fail(host_error(e)),
                };
                // Read flow by flow, page by page, as the reader asks for more.
                stream::iter(flows)
                    .flat_map(move |(client, f)| {
                        let Some(f) = f else {
                            return stream::empty().boxed();
                        };
                        let Ok(rows) =
                            this.results(&org, &client, &f.session_id, source.as_deref())
                        else {
                            return stream::empty().boxed();
                        };
                        let flow_id = f.session_id.clone();
                        rows.filter_map(move |j| {
                            let (flow_id, client) = (flow_id.clone(), client.clone());
                            async move {
                                let mut v: Value = serde_json::from_str(&j).ok()?;
                                if let Value::Object(m) = &mut v {
                                    m.insert("FlowId".into(), flow_id.into());
                                    m.insert("ClientId".into(), client.into());
                                }
                                Some(Ok(v))
                            }
                        })
                        .boxed()
                    })
                    .boxed()
            }
            other => fail(HostError::NotHere(format!(
                "{other}: not a collections call"
            ))),
        }
    }
}

/// `artifact` and `source` as one source name (`Artifact` or `Artifact/Source`).
fn source_name(args: &Map<String, Value>) -> Option<String> {
    let a = text(args, "artifact");
    let s = text(args, "source");
    match (a.is_empty(), s.is_empty()) {
        (true, _) => None,
        (false, true) => Some(a),
        (false, false) => Some(format!("{a}/{s}")),
    }
}

fn hunt_spec(args: &Map<String, Value>) -> HostResult<HuntSpec> {
    Ok(HuntSpec {
        artifacts: list(args, "artifacts"),
        params: params(args),
        description: text(args, "description"),
        expires: time_us(args, "expires")?,
        client_limit: number(args, "client_limit")?,
        condition: Condition {
            labels: list(args, "include_labels"),
            excluded_labels: list(args, "exclude_labels"),
            os: text(args, "os"),
        },
        paused: truthy(args, "pause"),
        timeout: number(args, "timeout")?,
        max_rows: number(args, "max_rows")?,
    })
}
