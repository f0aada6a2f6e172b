//! Data and type functions Velociraptor's alerting artifacts lean on: `typeof` (Go's type
//! names, which artifacts compare against), `humanize`, `regex_transform`, `to_dict`,
//! `items`, `array`, `set`, `join`, `atoi`, `base64encode`, `basename`, `rand`, `any`
//! and `all` (with lambdas given as text, `x=>x > 2`), `getpid`, `org`, `link_to`,
//! `generate`, `get_server_monitoring`, `get_client_monitoring` and `client_metadata`.

use std::sync::Arc;

use base64::Engine as _;
use futures::future::BoxFuture;
use futures::StreamExt;

use super::gofmt::go_type;
use crate::eval::engine::Place;
use crate::eval::expr::{eval, materialize, materialize_deep};
use crate::eval::query::query_rows;
use crate::eval::registry::{Call, Registry};
use crate::eval::scope::{Frame, Scope};
use crate::eval::value::{Dict, Row, Value};
use crate::syntax::ast::{Column, ColumnValue, Expr, Stmt};

pub(super) fn register(r: &mut Registry) {
    r.function("typeof", Place::Both, typeof_);
    r.function("humanize", Place::Both, humanize);
    r.function("regex_transform", Place::Both, regex_transform);
    r.function("to_dict", Place::Both, to_dict);
    r.function("items", Place::Both, items);
    r.function("array", Place::Both, array);
    r.function("set", Place::Both, set);
    r.function("join", Place::Both, join);
    r.function("atoi", Place::Both, atoi);
    r.function("base64encode", Place::Both, base64encode);
    r.function("basename", Place::Both, basename);
    r.function("rand", Place::Both, rand_);
    r.function("any", Place::Both, any);
    r.function("all", Place::Both, all);
    r.function("getpid", Place::Both, getpid);
    r.function("org", Place::Both, org);
    r.function("link_to", Place::Server, link_to);
    r.function("generate", Place::Both, generate);
    r.function(
        "get_server_monitoring",
        Place::Server,
        get_server_monitoring,
    );
    r.function(
        "get_client_monitoring",
        Place::Server,
        get_client_monitoring,
    );
    r.function("client_metadata", Place::Server, client_metadata);
}

/// A lambda given as text (`x=>x.Size > 10`): its parameter and its body.
pub struct Lambda {
    param: String,
    body: Expr,
}

impl Lambda {
    /// Parses `param => expression`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Lambda, String> {
        let (param, body) = text
            .split_once("=>")
            .ok_or_else(|| format!("lambda {text:?} has no =>"))?;
        let param = param.trim().to_string();
        if param.is_empty() || !param.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Err(format!("lambda {text:?} needs a parameter name before =>"));
        }
        let program = crate::parse(&format!("SELECT {} AS _ FROM scope()", body.trim()))
            .map_err(|e| format!("lambda {text:?}: {e}"))?;
        let expr = match program.stmts.first() {
            Some(Stmt::Select(sel)) => match sel.columns.first() {
                Some(Column::Value {
                    value: ColumnValue::Expr(e),
                    ..
                }) => Some(e.clone()),
                _ => None,
            },
            _ => None,
        };
        let body = expr.ok_or_else(|| format!("lambda {text:?} is not one expression"))?;
        Ok(Lambda { param, body })
    }

    /// The body's value with the parameter bound to `arg`.
    pub async fn call(&self, arg: Value, scope: &Scope) -> Value {
        let mut row = Row::new();
        row.insert(self.param.clone(), arg);
        let child = scope.push(Frame::Row(Arc::new(row)));
        let v = eval(&self.body, &child).await;
        materialize(v, &child).await
    }
}

fn typeof_<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let v = match c.args.get("x").await {
            Some(v) => v,
            None => c.args.get("a").await.unwrap_or_default(),
        };
        Value::from(go_type(&v))
    })
}

/// Go humanize's SI bytes: `2.0 kB`, `83 MB`.
pub fn human_bytes(n: f64) -> String {
    if n < 10.0 {
        return format!("{} B", n as i64);
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = (n.log10() / 3.0).floor().min(6.0) as usize;
    let v = n / 1000f64.powi(e as i32);
    if v < 10.0 {
        format!("{v:.1} {}", units[e])
    } else {
        format!("{v:.0} {}", units[e])
    }
}

/// A time relative to now, as Go humanize says it: `3 minutes ago`, `2 hours from now`.
pub fn human_time(secs_from_now: i64) -> String {
    let (n, suffix) = if secs_from_now <= 0 {
        (-secs_from_now, "ago")
    } else {
        (secs_from_now, "from now")
    };
    let (count, unit) = match n {
        0 => return "now".into(),
        1..=59 => (n, "second"),
        60..=3599 => (n / 60, "minute"),
        3600..=86_399 => (n / 3600, "hour"),
        86_400..=2_591_999 => (n / 86_400, "day"),
        2_592_000..=31_535_999 => (n / 2_592_000, "month"),
        _ => (n / 31_536_000, "year"),
    };
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {unit}{plural} {suffix}")
}

fn humanize<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(&["bytes", "time", "comma"], &[]).await {
            return Value::Null;
        }
        if let Some(v) = c.args.get("bytes").await {
            return match v {
                Value::Int(i) => Value::Str(human_bytes(i.max(0) as f64)),
                Value::Float(f) => Value::Str(human_bytes(f.max(0.0))),
                _ => Value::Null,
            };
        }
        if let Some(v) = c.args.get("comma").await {
            let Value::Int(i) = v else { return Value::Null };
            let digits = i.unsigned_abs().to_string();
            let mut out = String::new();
            for (n, ch) in digits.chars().enumerate() {
                if n > 0 && (digits.len() - n) % 3 == 0 {
                    out.push(',');
                }
                out.push(ch);
            }
            return Value::Str(if i < 0 { format!("-{out}") } else { out });
        }
        if let Some(v) = c.args.get("time").await {
            let t = match v {
                Value::Time(t) => t,
                Value::Int(i) => match crate::builtins::functions::epoch_to_time(i as f64) {
                    Value::Time(t) => t,
                    _ => return Value::Null,
                },
                Value::Str(s) => match crate::builtins::functions::parse_time_text(&s) {
                    Value::Time(t) => t,
                    _ => return Value::Null,
                },
                _ => return Value::Null,
            };
            let delta = (t - chrono::Utc::now()).num_seconds();
            return Value::Str(human_time(delta));
        }
        Value::Null
    })
}

fn regex_transform<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(&["source", "map", "key"], &["source", "map"]).await {
            return Value::Null;
        }
        let mut s = c.args.get("source").await.unwrap_or_default().to_text();
        let Value::Dict(map) =
            materialize_deep(c.args.get("map").await.unwrap_or_default(), c.scope).await
        else {
            return c.fail("map must be a dict of regex to replacement");
        };
        let ctx = c.scope.ctx().clone();
        for (re, replace) in map {
            if let Some(r) = ctx.regex(&re) {
                s = r.replace_all(&s, replace.to_text().as_str()).into_owned();
            }
        }
        Value::Str(s)
    })
}

/// Rows of a value: a query's rows, a list's dicts, or a dict as one row.
async fn rows_of(v: Value, scope: &Scope) -> Vec<Row> {
    match v {
        Value::Query(_) => query_rows(v, scope.clone()).collect().await,
        Value::List(l) => l
            .into_iter()
            .filter_map(|x| match x {
                Value::Dict(d) => Some(d),
                _ => None,
            })
            .collect(),
        Value::Dict(d) => vec![d],
        _ => Vec::new(),
    }
}

fn to_dict<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let item = c.args.get("item").await.unwrap_or_default();
        if let Value::Dict(d) = &item {
            return Value::Dict(d.clone());
        }
        let mut out = Dict::new();
        for row in rows_of(item, c.scope).await {
            // `{_key, _value}` rows make one member each (a missing `_value` is NULL);
            // other rows are merged in.
            match row.get("_key") {
                Some(k) => {
                    let v = row.get("_value").cloned().unwrap_or_default();
                    out.insert(k.to_text(), v);
                }
                None => out.extend(row),
            }
        }
        Value::Dict(out)
    })
}

/// `{_key, _value}` pairs of a dict (or of a list, by index).
pub fn pairs(v: &Value) -> Vec<Row> {
    let pair = |k: Value, v: Value| {
        let mut r = Row::new();
        r.insert("_key".into(), k);
        r.insert("_value".into(), v);
        r
    };
    match v {
        Value::Dict(d) => d
            .iter()
            .map(|(k, v)| pair(Value::from(k.as_str()), v.clone()))
            .collect(),
        Value::List(l) => l
            .iter()
            .enumerate()
            .map(|(i, v)| pair(Value::Int(i as i64), v.clone()))
            .collect(),
        _ => Vec::new(),
    }
}

fn items<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let item = materialize_deep(c.args.get("item").await.unwrap_or_default(), c.scope).await;
        Value::List(pairs(&item).into_iter().map(Value::Dict).collect())
    })
}

fn array<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let mut out = Vec::new();
        for (_, v) in c.args.all().await {
            match materialize_deep(v, c.scope).await {
                Value::List(l) => out.extend(l),
                Value::Null => {}
                other => out.push(other),
            }
        }
        Value::List(out)
    })
}

fn set<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c
            .check(&["item", "field", "value"], &["item", "field"])
            .await
        {
            return Value::Null;
        }
        let item = materialize_deep(c.args.get("item").await.unwrap_or_default(), c.scope).await;
        let Value::Dict(mut d) = item else {
            return c.fail("item must be a dict");
        };
        let field = c.args.get("field").await.unwrap_or_default().to_text();
        let value = materialize_deep(c.args.get("value").await.unwrap_or_default(), c.scope).await;
        d.insert(field, value);
        Value::Dict(d)
    })
}

fn join<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(&["array", "sep"], &["array"]).await {
            return Value::Null;
        }
        let items = materialize_deep(c.args.get("array").await.unwrap_or_default(), c.scope).await;
        let sep = c
            .args
            .get("sep")
            .await
            .map(|v| v.to_text())
            .unwrap_or_default();
        let parts: Vec<String> = super::arg_list(items).iter().map(Value::to_text).collect();
        Value::Str(parts.join(&sep))
    })
}

fn atoi<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        match c.args.get("string").await.unwrap_or_default() {
            Value::Int(i) => Value::Int(i),
            Value::Float(f) => Value::Int(f as i64),
            other => other
                .to_text()
                .trim()
                .parse()
                .map(Value::Int)
                .unwrap_or(Value::Null),
        }
    })
}

fn base64encode<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let bytes = match c.args.get("string").await.unwrap_or_default() {
            Value::Bytes(b) => b,
            other => other.to_text().into_bytes(),
        };
        Value::Str(base64::engine::general_purpose::STANDARD.encode(bytes))
    })
}

fn basename<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let path = c.args.get("path").await.unwrap_or_default().to_text();
        let trimmed = path.trim_end_matches(['/', '\\']);
        Value::Str(trimmed.rsplit(['/', '\\']).next().unwrap_or("").to_string())
    })
}

fn rand_<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let range = match c.args.get("range").await {
            Some(Value::Int(i)) if i > 0 => i as u64,
            _ => 1 << 31,
        };
        // Not for secrets: RandomState's keys are random per process, good enough for
        // boundaries and jitter.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        Value::Int((h.finish() % range) as i64)
    })
}

/// `any`/`all`: whether some (every) item passes `filter` (a lambda or a regex), or is
/// truthy when no filter is given.
fn any_all<'a>(mut c: Call<'a>, want_all: bool) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(&["items", "filter", "regex"], &["items"]).await {
            return Value::Null;
        }
        let items = materialize_deep(c.args.get("items").await.unwrap_or_default(), c.scope).await;
        let items = match items {
            Value::Dict(d) => d.into_values().collect(),
            other => super::arg_list(other),
        };
        let lambda = match c.args.get("filter").await {
            Some(f) => match Lambda::parse(&f.to_text()) {
                Ok(l) => Some(l),
                Err(e) => return c.fail(e),
            },
            None => None,
        };
        let regex = match c.args.get("regex").await {
            Some(r) => c.scope.ctx().regex(&r.to_text()),
            None => None,
        };
        for item in items {
            let pass = match (&lambda, &regex) {
                (Some(l), _) => l.call(item, c.scope).await.truthy(),
                (None, Some(r)) => r.is_match(&item.to_text()),
                (None, None) => item.truthy(),
            };
            if pass != want_all {
                return Value::Bool(pass);
            }
        }
        Value::Bool(want_all)
    })
}

fn any<'a>(c: Call<'a>) -> BoxFuture<'a, Value> {
    any_all(c, false)
}

fn all<'a>(c: Call<'a>) -> BoxFuture<'a, Value> {
    any_all(c, true)
}

fn getpid<'a>(_: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move { Value::Int(i64::from(std::process::id())) })
}

fn org<'a>(c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let org = c.scope.ctx().info.org.clone();
        let mut d = Dict::new();
        d.insert("id".into(), Value::Str(org.clone()));
        d.insert("name".into(), Value::Str(org));
        Value::Dict(d)
    })
}

/// Where a user finds a thing: Talon has no web GUI, so the link names the CLI command.
fn link_to<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let get = |v: Option<Value>| v.map(|v| v.to_text()).filter(|s| !s.is_empty());
        let client = get(c.args.get("client_id").await);
        let flow = get(c.args.get("flow_id").await);
        let hunt = get(c.args.get("hunt_id").await);
        let artifact = get(c.args.get("artifact").await);
        let text = get(c.args.get("text").await);
        let raw = c.args.get("raw").await.is_some_and(|v| v.truthy());
        let (label, target) = match (client, flow, hunt, artifact) {
            (Some(cl), Some(f), _, _) => (f.clone(), format!("talon flows show {cl} {f}")),
            (Some(cl), None, _, _) => (cl.clone(), format!("talon clients show {cl}")),
            (_, _, Some(h), _) => (h.clone(), format!("talon hunts show {h}")),
            (_, _, _, Some(a)) => (a.clone(), format!("talon artifacts show {a}")),
            _ => return c.fail("give client_id, flow_id, hunt_id or artifact"),
        };
        if raw {
            return Value::Str(target);
        }
        Value::Str(format!("[{}]({target})", text.unwrap_or(label)))
    })
}

/// `generate(query=)`: the query, to be read by several consumers (each reads it anew).
fn generate<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move { c.args.get("query").await.unwrap_or_default() })
}

fn get_server_monitoring<'a>(c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let ctx = c.scope.ctx().clone();
        ctx.host.monitoring_tables(&ctx.info.org).0
    })
}

fn get_client_monitoring<'a>(c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let ctx = c.scope.ctx().clone();
        ctx.host.monitoring_tables(&ctx.info.org).1
    })
}

/// Talon keeps no per-client metadata yet: a known client's metadata is an empty dict.
fn client_metadata<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(&["client_id"], &["client_id"]).await {
            return Value::Null;
        }
        let id = c.args.get("client_id").await.unwrap_or_default().to_text();
        let ctx = c.scope.ctx().clone();
        let known = ctx
            .host
            .clients(&ctx.info.org, &id)
            .iter()
            .any(|r| r.get("client_id").is_some_and(|v| v.to_text() == id));
        if known {
            Value::Dict(Dict::new())
        } else {
            c.fail(format!("unknown client {id}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanized_like_go() {
        assert_eq!(human_bytes(2048.0), "2.0 kB");
        assert_eq!(human_bytes(82_854_982.0), "83 MB");
        assert_eq!(human_bytes(5.0), "5 B");
        assert_eq!(human_time(-180), "3 minutes ago");
        assert_eq!(human_time(7200), "2 hours from now");
        assert_eq!(human_time(0), "now");
    }
}
