//! Event functions: send_event() to SERVER_EVENT queues, alert() with per-org dedup kept by
//! the host, and log() with its per-query dedup.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::gofmt::sprintf;
use super::text::arg_list;
use crate::eval::engine::Place;
use crate::eval::expr::{materialize_deep, truthy};
use crate::eval::registry::{Call, Registry};
use crate::eval::value::{rfc3339, Dict, Value};

/// Default alert dedup window in seconds (Velociraptor's).
pub const ALERT_DEDUP_SECS: i64 = 7200;
/// Default log dedup window in seconds.
pub const LOG_DEDUP_SECS: i64 = 60;

pub(super) fn register(r: &mut Registry) {
    r.function("send_event", Place::Server, send_event);
    r.function("alert", Place::Both, alert);
    r.function("log", Place::Both, log);
    r.function("server_metadata", Place::Server, server_metadata);
    r.function("client_info", Place::Server, client_info);
    r.function("label", Place::Server, label);
}

fn client_info<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(&["client_id"], &["client_id"]).await {
            return Value::Null;
        }
        let id = c.args.get("client_id").await.unwrap_or_default().to_text();
        let ctx = c.scope.ctx().clone();
        if id == "server" {
            // The server is not a client record, but artifacts ask about it (alerts the
            // server raised): a record with its id and no labels, not an error.
            let v = serde_json::json!({"client_id": "server", "labels": [],
                "os_info": {"hostname": "server", "fqdn": "server", "system": std::env::consts::OS}});
            return Value::from_json(&v);
        }
        match ctx
            .host
            .clients(&ctx.info.org, &id)
            .into_iter()
            .find(|r| r.get("client_id").is_some_and(|v| v.to_text() == id))
        {
            Some(r) => Value::Dict(r),
            None => c.fail(format!("unknown client {id}")),
        }
    })
}

fn label<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c
            .check(&["client_id", "labels", "op"], &["client_id", "labels"])
            .await
        {
            return Value::Null;
        }
        let id = c.args.get("client_id").await.unwrap_or_default().to_text();
        let labels: Vec<String> = arg_list(c.args.get("labels").await.unwrap_or_default())
            .iter()
            .map(Value::to_text)
            .filter(|l| !l.is_empty())
            .collect();
        let op = c
            .args
            .get("op")
            .await
            .map(|v| v.to_text())
            .unwrap_or_default();
        if op.is_empty() {
            // No default operation, as in Velociraptor: nothing happens.
            return Value::Null;
        }
        if !matches!(op.as_str(), "set" | "remove" | "check") {
            return c.fail(format!("op must be set, remove or check, not {op:?}"));
        }
        let ctx = c.scope.ctx().clone();
        match ctx.host.label(&ctx.info.org, &id, labels, &op).await {
            Ok(v) => v,
            Err(e) => c.fail(e),
        }
    })
}

fn server_metadata<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(&["key"], &[]).await {
            return Value::Null;
        }
        let ctx = c.scope.ctx().clone();
        match c.args.get("key").await {
            Some(k) => ctx
                .host
                .metadata(&ctx.info.org, &k.to_text())
                .map(Value::Str)
                .unwrap_or_default(),
            None => Value::Dict(ctx.host.metadata_all(&ctx.info.org)),
        }
    })
}

fn send_event<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c
            .check(&["artifact", "row", "client_id"], &["artifact", "row"])
            .await
        {
            return Value::Null;
        }
        let artifact = c.args.get("artifact").await.unwrap_or_default().to_text();
        let row = materialize_deep(c.args.get("row").await.unwrap_or_default(), c.scope).await;
        let Value::Dict(d) = row else {
            return c.fail(format!("row must be a dict, got {}", row.type_name()));
        };
        let ctx = c.scope.ctx().clone();
        match ctx
            .host
            .send_event(&ctx.info.org, &artifact, d.clone())
            .await
        {
            Ok(()) => Value::Dict(d),
            Err(e) => c.fail(e),
        }
    })
}

fn alert<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.args.has("name").await {
            return c.fail("Field name is required");
        }
        if let Some(cond) = c.args.get("condition").await {
            if !truthy(&cond, c.scope).await {
                return Value::Null;
            }
        }
        let name = c.args.get("name").await.unwrap_or_default().to_text();
        let dedup = match c.args.get("dedup").await {
            Some(Value::Int(i)) => i,
            Some(Value::Float(f)) => f as i64,
            _ => ALERT_DEDUP_SECS,
        };
        let mut event_data = Dict::new();
        for (k, v) in c.args.all().await {
            if !matches!(k.as_str(), "name" | "dedup" | "condition") {
                event_data.insert(k, materialize_deep(v, c.scope).await);
            }
        }
        let mut body = Dict::new();
        body.insert("name".into(), Value::from(name.as_str()));
        body.insert("timestamp".into(), Value::Str(rfc3339(&chrono::Utc::now())));
        body.insert("event_data".into(), Value::Dict(event_data));
        let json = Value::Dict(body).to_json().to_string();
        let ctx = c.scope.ctx().clone();
        let allowed = dedup < 0 || ctx.host.alert_allowed(&ctx.info.org, &name, dedup).await;
        if allowed {
            ctx.log("ALERT", json);
            Value::Bool(true)
        } else {
            ctx.log("INFO", format!("Alert {name} (Sup): {json}"));
            Value::Bool(false)
        }
    })
}

fn log<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c
            .check(&["message", "args", "level", "dedup"], &["message"])
            .await
        {
            return Value::Bool(false);
        }
        let message = c.args.get("message").await.unwrap_or_default().to_text();
        let level = c
            .args
            .get("level")
            .await
            .map(|v| v.to_text().to_uppercase())
            .unwrap_or_default();
        let level = match level.as_str() {
            "INFO" | "WARN" | "ERROR" | "DEBUG" | "ALERT" => level,
            _ => "DEFAULT".to_string(),
        };
        let dedup = match c.args.get("dedup").await {
            Some(Value::Int(i)) => i,
            _ => LOG_DEDUP_SECS,
        };
        let ctx = c.scope.ctx().clone();
        if dedup >= 0 {
            let mut seen = ctx.log_dedup.lock().expect("log dedup");
            let now = Instant::now();
            if let Some(t) = seen.get(&message) {
                if now.duration_since(*t) < Duration::from_secs(dedup as u64) {
                    return Value::Bool(true);
                }
            }
            seen.insert(message.clone(), now);
        }
        let text = match c.args.get("args").await {
            Some(a) => sprintf(&message, &arg_list(materialize_deep(a, c.scope).await)),
            None => message,
        };
        ctx.log(&level, text);
        Value::Bool(true)
    })
}
