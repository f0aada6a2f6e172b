//! Text functions: format, upcase, lowcase, split, regex_replace, parse_string_with_regex.

use futures::future::BoxFuture;

use super::gofmt::sprintf;
use crate::eval::engine::Place;
use crate::eval::expr::materialize_deep;
use crate::eval::registry::{Call, Registry};
use crate::eval::value::{Dict, Value};

pub(super) fn register(r: &mut Registry) {
    r.function("format", Place::Both, format);
    r.function("upcase", Place::Both, upcase);
    r.function("lowcase", Place::Both, lowcase);
    r.function("split", Place::Both, split);
    r.function("regex_replace", Place::Both, regex_replace);
    r.function(
        "parse_string_with_regex",
        Place::Both,
        parse_string_with_regex,
    );
}

/// Arguments as a list: a list stays, a scalar becomes one element, NULL none.
pub fn arg_list(v: Value) -> Vec<Value> {
    match v {
        Value::List(l) => l,
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

fn format<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(&["format", "args"], &["format"]).await {
            return Value::Bool(false);
        }
        let f = c.args.get("format").await.unwrap_or_default().to_text();
        let args = materialize_deep(c.args.get("args").await.unwrap_or_default(), c.scope).await;
        Value::Str(sprintf(&f, &arg_list(args)))
    })
}

fn upcase<'a>(c: Call<'a>) -> BoxFuture<'a, Value> {
    map_string(c, str::to_uppercase)
}

fn lowcase<'a>(c: Call<'a>) -> BoxFuture<'a, Value> {
    map_string(c, str::to_lowercase)
}

/// `f` applied to the `string` argument.
fn map_string<'a>(mut c: Call<'a>, f: fn(&str) -> String) -> BoxFuture<'a, Value> {
    Box::pin(
        async move { Value::Str(f(&c.args.get("string").await.unwrap_or_default().to_text())) },
    )
}

fn split<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(&["string", "sep", "sep_string"], &["string"]).await {
            return Value::Null;
        }
        let s = c.args.get("string").await.unwrap_or_default().to_text();
        if let Some(sep) = c.args.get("sep_string").await {
            return Value::List(s.split(sep.to_text().as_str()).map(Value::from).collect());
        }
        let sep = c
            .args
            .get("sep")
            .await
            .map(|v| v.to_text())
            .unwrap_or_else(|| ",".into());
        match regex::Regex::new(&sep) {
            Ok(re) => Value::List(re.split(&s).map(Value::from).collect()),
            Err(e) => c.fail(e),
        }
    })
}

fn regex_replace<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c
            .check(&["source", "re", "replace"], &["source", "re"])
            .await
        {
            return Value::Null;
        }
        let source = c.args.get("source").await.unwrap_or_default().to_text();
        let re = c.args.get("re").await.unwrap_or_default().to_text();
        let replace = c.args.get("replace").await.unwrap_or_default().to_text();
        match c.scope.ctx().regex(&re) {
            Some(r) => Value::Str(r.replace_all(&source, replace.as_str()).into_owned()),
            None => Value::Null,
        }
    })
}

fn parse_string_with_regex<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(&["string", "regex"], &["string", "regex"]).await {
            return Value::Null;
        }
        let s = c.args.get("string").await.unwrap_or_default().to_text();
        let regexes = arg_list(c.args.get("regex").await.unwrap_or_default());
        let mut out = Dict::new();
        for r in regexes {
            let Some(re) = c.scope.ctx().regex(&r.to_text()) else {
                return Value::Null;
            };
            for name in re.capture_names().flatten() {
                out.entry(name.to_string())
                    .or_insert_with(|| Value::from(""));
            }
            for caps in re.captures_iter(&s) {
                for (i, name) in re.capture_names().enumerate().skip(1) {
                    let key = name.map(str::to_string).unwrap_or_else(|| format!("g{i}"));
                    if let Some(m) = caps.get(i) {
                        out.insert(key, Value::from(m.as_str()));
                    }
                }
            }
        }
        Value::Dict(out)
    })
}

/// CSV of a list of dicts (or one dict): a header of every column, then one line per row.
pub fn to_csv(v: &Value) -> String {
    let rows: Vec<&Dict> = match v {
        Value::List(l) => l
            .iter()
            .filter_map(|x| {
                if let Value::Dict(d) = x {
                    Some(d)
                } else {
                    None
                }
            })
            .collect(),
        Value::Dict(d) => vec![d],
        _ => Vec::new(),
    };
    let mut cols: Vec<&str> = Vec::new();
    for r in &rows {
        for k in r.keys() {
            if !cols.contains(&k.as_str()) {
                cols.push(k);
            }
        }
    }
    let field = |s: String| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    let mut out = cols
        .iter()
        .map(|c| field(c.to_string()))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for r in rows {
        let line: Vec<String> = cols
            .iter()
            .map(|c| field(r.get(*c).map(Value::to_text).unwrap_or_default()))
            .collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}
