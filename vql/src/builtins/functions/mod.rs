//! Built-in functions (SPEC-VQL §2): basics here, text in [`text`], aggregates in
//! [`aggregate`], event and alert functions in [`events`].

mod aggregate;
pub mod data;
mod events;
mod files;
pub mod gofmt;
mod template;
mod text;

pub use text::arg_list;

use base64::Engine as _;
use futures::future::BoxFuture;

use crate::eval::engine::Place;
use crate::eval::expr::{materialize, materialize_deep, truthy};
use crate::eval::registry::{Call, Registry};
use crate::eval::value::{time_from_secs, Dict, Value};

/// Registers every built-in function.
pub fn register(r: &mut Registry) {
    r.function("dict", Place::Both, dict);
    r.function("if", Place::Both, if_);
    r.function("scope", Place::Both, scope);
    r.function("now", Place::Both, now);
    r.function("timestamp", Place::Both, timestamp);
    r.function("get", Place::Both, get);
    r.function("int", Place::Both, int);
    r.function("parse_float", Place::Both, parse_float);
    r.function("str", Place::Both, str_);
    r.function("len", Place::Both, len);
    r.function("sleep", Place::Both, sleep);
    r.function("base64decode", Place::Both, base64decode);
    r.function("utf16", Place::Both, utf16);
    r.function("parse_json", Place::Both, parse_json);
    r.function("parse_json_array", Place::Both, parse_json_array);
    r.function("parse_yaml", Place::Both, parse_yaml);
    r.function("serialize", Place::Both, serialize);
    text::register(r);
    data::register(r);
    files::register(r);
    template::register(r);
    aggregate::register(r);
    events::register(r);
}

fn dict<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let mut d = Dict::new();
        for (k, v) in c.args.all().await {
            d.insert(k, materialize_deep(v, c.scope).await);
        }
        Value::Dict(d)
    })
}

fn if_<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c
            .check(&["condition", "then", "else"], &["condition"])
            .await
        {
            return Value::Null;
        }
        let cond = c.args.get("condition").await.unwrap_or_default();
        let branch = if truthy(&cond, c.scope).await {
            "then"
        } else {
            "else"
        };
        c.args.get(branch).await.unwrap_or_default()
    })
}

fn scope<'a>(c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move { Value::Dict(c.scope.snapshot()) })
}

fn now<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let ns = c.args.get("ns").await.is_some_and(|v| v.truthy());
        let t = chrono::Utc::now();
        Value::Int(if ns {
            t.timestamp_nanos_opt().unwrap_or(0)
        } else {
            t.timestamp()
        })
    })
}

/// Epoch numbers auto-scaled: > 2e16 ns, > 2e13 µs, > 2e10 ms, else seconds.
pub fn epoch_to_time(n: f64) -> Value {
    let secs = if n > 2e16 {
        n / 1e9
    } else if n > 2e13 {
        n / 1e6
    } else if n > 2e10 {
        n / 1e3
    } else {
        n
    };
    time_from_secs(secs)
}

/// Parses a time string leniently: RFC 3339, common date layouts, or a number.
pub fn parse_time_text(s: &str) -> Value {
    let t = s.trim();
    if let Ok(n) = t.parse::<f64>() {
        return epoch_to_time(n);
    }
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Value::Time(d.with_timezone(&chrono::Utc));
    }
    if let Ok(d) = chrono::DateTime::parse_from_rfc2822(t) {
        return Value::Time(d.with_timezone(&chrono::Utc));
    }
    // Go's time.String(): `2006-01-02 15:04:05.999999999 -0700 MST` (the zone name is
    // redundant with the offset, and chrono cannot read names).
    let without_name = match t.rsplit_once(' ') {
        Some((head, name)) if name.chars().all(|c| c.is_ascii_alphabetic()) => head,
        _ => t,
    };
    if let Ok(d) = chrono::DateTime::parse_from_str(without_name, "%Y-%m-%d %H:%M:%S%.f %z") {
        return Value::Time(d.with_timezone(&chrono::Utc));
    }
    for layout in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y/%m/%d %H:%M:%S",
    ] {
        if let Ok(d) = chrono::NaiveDateTime::parse_from_str(t, layout) {
            return Value::Time(d.and_utc());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Value::Time(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    Value::Null
}

fn timestamp<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c
            .check(
                &[
                    "epoch",
                    "string",
                    "format",
                    "winfiletime",
                    "cocoatime",
                    "mactime",
                ],
                &[],
            )
            .await
        {
            return Value::Null;
        }
        if let Some(v) = c.args.get("epoch").await {
            return match v {
                Value::Int(i) => epoch_to_time(i as f64),
                Value::Float(f) => epoch_to_time(f),
                Value::Time(t) => Value::Time(t),
                Value::Str(s) => parse_time_text(&s),
                _ => Value::Null,
            };
        }
        if let Some(v @ (Value::Int(_) | Value::Float(_))) = c.args.get("string").await {
            // A number given as the string is an epoch, as the log rows' Timestamp.
            return epoch_to_time(num(&v).unwrap_or(0.0));
        }
        if let Some(Value::Str(s)) = c.args.get("string").await {
            if let Some(Value::Str(fmt)) = c.args.get("format").await {
                return match chrono::NaiveDateTime::parse_from_str(
                    &s,
                    &gofmt::go_layout_to_strftime(&fmt),
                ) {
                    Ok(d) => Value::Time(d.and_utc()),
                    Err(_) => Value::Null,
                };
            }
            return parse_time_text(&s);
        }
        if let Some(Value::Int(ft)) = c.args.get("winfiletime").await {
            return time_from_secs(ft as f64 / 1e7 - 11_644_473_600.0);
        }
        if let Some(v) = c.args.get("cocoatime").await {
            if let Some(n) = num(&v) {
                return time_from_secs(n + 978_307_200.0);
            }
        }
        if let Some(v) = c.args.get("mactime").await {
            if let Some(n) = num(&v) {
                return time_from_secs(n - 2_082_844_800.0);
            }
        }
        Value::Null
    })
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// Walks a dotted path (`a.0.b`) through dicts and lists.
pub fn walk(mut v: Value, path: &str) -> Option<Value> {
    for part in path.split('.').filter(|p| !p.is_empty()) {
        v = match v {
            Value::Dict(d) => d.get(part)?.clone(),
            Value::List(l) => {
                let i: i64 = part.parse().ok()?;
                let i = if i < 0 { l.len() as i64 + i } else { i };
                l.get(usize::try_from(i).ok()?)?.clone()
            }
            _ => return None,
        };
    }
    Some(v)
}

fn get<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(&["item", "member", "field", "default"], &[]).await {
            return Value::Null;
        }
        let item = match c.args.get("item").await {
            Some(v) => materialize(v, c.scope).await,
            None => Value::Dict(c.scope.snapshot()),
        };
        let default = c.args.get("default").await.unwrap_or_default();
        if let Some(f) = c.args.get("field").await {
            return match (&item, f) {
                (Value::Dict(d), Value::Str(k)) => d.get(&k).cloned().unwrap_or(default),
                (Value::List(l), Value::Int(i)) => usize::try_from(i)
                    .ok()
                    .and_then(|i| l.get(i).cloned())
                    .unwrap_or(default),
                _ => default,
            };
        }
        match c.args.get("member").await {
            Some(Value::Str(m)) => walk(item, &m).unwrap_or(default),
            _ => c.fail("either member or field must be given"),
        }
    })
}

fn int<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        match c.args.get("int").await {
            Some(Value::Int(i)) => Value::Int(i),
            Some(Value::Float(f)) => Value::Int(f as i64),
            Some(Value::Bool(b)) => Value::Int(i64::from(b)),
            Some(Value::Str(s)) => crate::syntax::parser::parse_int(s.trim())
                .or_else(|| s.trim().parse::<f64>().ok().map(|f| f as i64))
                .map(Value::Int)
                .unwrap_or(Value::Int(0)),
            Some(Value::Time(t)) => Value::Int(t.timestamp()),
            _ => Value::Int(0),
        }
    })
}

fn parse_float<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        match c.args.get("string").await {
            Some(Value::Float(f)) => Value::Float(f),
            Some(Value::Int(i)) => Value::Float(i as f64),
            Some(v) => v
                .to_text()
                .trim()
                .parse::<f64>()
                .map(Value::Float)
                .unwrap_or(Value::Float(0.0)),
            None => Value::Float(0.0),
        }
    })
}

fn str_<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let v = c.args.get("str").await.unwrap_or_default();
        let v = materialize_deep(v, c.scope).await;
        match v {
            Value::Null => Value::Str(String::new()),
            Value::Str(s) => Value::Str(s),
            Value::Float(f) => Value::Str(crate::syntax::format::float(f)),
            other => Value::Str(other.to_text()),
        }
    })
}

fn len<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let v = c.args.get("list").await.unwrap_or_default();
        match materialize(v, c.scope).await {
            Value::List(l) => Value::Int(l.len() as i64),
            Value::Dict(d) => Value::Int(d.len() as i64),
            Value::Str(s) => Value::Int(s.len() as i64),
            Value::Bytes(b) => Value::Int(b.len() as i64),
            Value::Query(crate::eval::value::StoredQuery::Rows(r)) => Value::Int(r.len() as i64),
            _ => Value::Int(0),
        }
    })
}

fn sleep<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let secs = c
            .args
            .get("time")
            .await
            .and_then(|v| num(&v))
            .unwrap_or(0.0);
        let ms = c.args.get("ms").await.and_then(|v| num(&v)).unwrap_or(0.0);
        let d = std::time::Duration::from_secs_f64((secs + ms / 1000.0).max(0.0));
        let cancel = c.scope.ctx().cancel.clone();
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(d) => {}
        }
        Value::Bool(true)
    })
}

fn base64decode<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let s = c.args.get("string").await.unwrap_or_default().to_text();
        match base64::engine::general_purpose::STANDARD.decode(s.as_bytes()) {
            Ok(b) => Value::from_bytes(b),
            Err(_) => Value::Null,
        }
    })
}

fn utf16<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let b = match c.args.get("string").await {
            Some(Value::Str(s)) => s.into_bytes(),
            Some(Value::Bytes(b)) => b,
            _ => return Value::Null,
        };
        let units: Vec<u16> = b
            .chunks_exact(2)
            .map(|p| u16::from_le_bytes([p[0], p[1]]))
            .collect();
        Value::Str(String::from_utf16_lossy(&units))
    })
}

fn parse_json<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let data = c.args.get("data").await.unwrap_or_default().to_text();
        if !data.starts_with('{') {
            return c.fail("data must be a JSON object (use parse_json_array for arrays)");
        }
        match serde_json::from_str::<serde_json::Value>(&data) {
            Ok(j) => Value::from_json(&j),
            Err(e) => c.fail(e),
        }
    })
}

fn parse_json_array<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let data = c.args.get("data").await.unwrap_or_default().to_text();
        match serde_json::from_str::<serde_json::Value>(data.trim()) {
            Ok(j @ serde_json::Value::Array(_)) => Value::from_json(&j),
            Ok(_) => c.fail("data is not a JSON array"),
            Err(e) => c.fail(e),
        }
    })
}

fn parse_yaml<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let data = c.args.get("data").await.unwrap_or_default().to_text();
        match serde_yaml::from_str::<serde_json::Value>(&data) {
            Ok(j) => Value::from_json(&j),
            Err(e) => c.fail(e),
        }
    })
}

fn serialize<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(&["item", "format"], &["item"]).await {
            return Value::Null;
        }
        let item = materialize_deep(c.args.get("item").await.unwrap_or_default(), c.scope).await;
        let format = c
            .args
            .get("format")
            .await
            .map(|v| v.to_text())
            .unwrap_or_else(|| "json".into());
        let bytes = || match &item {
            Value::Str(s) => s.as_bytes().to_vec(),
            Value::Bytes(b) => b.clone(),
            other => other.to_text().into_bytes(),
        };
        match format.as_str() {
            "json" => Value::Str(serde_json::to_string_pretty(&item.to_json()).unwrap_or_default()),
            "string" => Value::Str(item.to_text()),
            "yaml" => Value::Str(serde_yaml::to_string(&item.to_json()).unwrap_or_default()),
            "hex" => Value::Str(bytes().iter().map(|b| format!("{b:02x}")).collect()),
            "base64" => {
                Value::Str(base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes()))
            }
            "csv" => Value::Str(text::to_csv(&item)),
            other => c.fail(format!("unknown format {other}")),
        }
    })
}
