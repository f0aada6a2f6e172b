//! VQL values and the operator rules of SPEC-VQL §1.5: truthiness, NULL handling,
//! comparison, arithmetic, `IN`, `=~`, member access and indexing.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use indexmap::IndexMap;

use crate::eval::scope::Scope;
use crate::syntax::ast::Select;

/// An ordered dict with case-sensitive string keys.
pub type Dict = IndexMap<String, Value>;

/// A row is a dict.
pub type Row = Dict;

pub use crate::limits::MAX_STRING_BYTES;

/// A VQL value.
#[derive(Clone, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A byte string that is not valid UTF-8.
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(Dict),
    Time(DateTime<Utc>),
    /// A stored query: rows produced on demand.
    Query(StoredQuery),
}

/// A query kept as a value: lazily run in its scope, or rows already materialised.
#[derive(Clone)]
pub enum StoredQuery {
    Lazy { select: Arc<Select>, scope: Scope },
    Rows(Arc<Vec<Row>>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Query(StoredQuery::Lazy { .. }) => f.write_str("<query>"),
            Value::Query(StoredQuery::Rows(r)) => write!(f, "<query of {} rows>", r.len()),
            other => write!(f, "{}", other.to_json()),
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        equal(self, other)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<Dict> for Value {
    fn from(d: Dict) -> Self {
        Value::Dict(d)
    }
}

impl Value {
    /// A string value from bytes: text when valid UTF-8, else bytes.
    pub fn from_bytes(b: Vec<u8>) -> Value {
        match String::from_utf8(b) {
            Ok(s) => Value::Str(s),
            Err(e) => Value::Bytes(e.into_bytes()),
        }
    }

    /// Whether this is NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Truthiness (stored queries must be materialised first to be judged by rows).
    pub fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i > 0,
            Value::Float(f) => *f > 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::Bytes(b) => !b.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Dict(d) => !d.is_empty(),
            Value::Time(t) => t.timestamp() > 0,
            Value::Query(StoredQuery::Rows(r)) => !r.is_empty(),
            Value::Query(StoredQuery::Lazy { .. }) => true,
        }
    }

    /// The value as text: strings as they are, others as JSON.
    pub fn to_text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Str(s) => s.clone(),
            Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            Value::Time(t) => rfc3339(t),
            other => other.to_json().to_string(),
        }
    }

    /// The value as JSON (times as RFC 3339 strings, byte strings lossily as text).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::Str(s) => J::String(s.clone()),
            Value::Bytes(b) => J::String(String::from_utf8_lossy(b).into_owned()),
            Value::List(l) => J::Array(l.iter().map(Value::to_json).collect()),
            Value::Dict(d) => J::Object(d.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
            Value::Time(t) => J::String(rfc3339(t)),
            Value::Query(StoredQuery::Rows(r)) => J::Array(
                r.iter()
                    .map(|row| Value::Dict(row.clone()).to_json())
                    .collect(),
            ),
            Value::Query(StoredQuery::Lazy { .. }) => J::Null,
        }
    }

    /// A value from JSON.
    pub fn from_json(j: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match j {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(0.0)),
            },
            J::String(s) => Value::Str(s.clone()),
            J::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            J::Object(o) => Value::Dict(
                o.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// The name of the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) | Value::Bytes(_) => "string",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Time(_) => "time",
            Value::Query(_) => "query",
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Str(s) => Some(s.as_bytes()),
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

/// RFC 3339 UTC text of a time.
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// A time from epoch seconds (fractions kept).
pub fn time_from_secs(secs: f64) -> Value {
    let whole = secs.floor();
    let nanos = ((secs - whole) * 1e9).round() as u32;
    Utc.timestamp_opt(whole as i64, nanos.min(999_999_999))
        .single()
        .map(Value::Time)
        .unwrap_or(Value::Null)
}

fn bool_of_string(s: &str) -> Option<bool> {
    match s {
        "Y" | "y" | "TRUE" | "True" | "true" => Some(true),
        "N" | "n" | "FALSE" | "False" | "false" => Some(false),
        _ => None,
    }
}

/// `a = b`.
pub fn equal(a: &Value, b: &Value) -> bool {
    use Value::*;
    match (a, b) {
        (Null, Null) => true,
        (Null, _) | (_, Null) => false,
        (Bool(x), Bool(y)) => x == y,
        (Bool(x), Int(i)) | (Int(i), Bool(x)) => *x && *i == 1 || !*x && *i == 0,
        (Bool(x), Str(s)) | (Str(s), Bool(x)) => bool_of_string(s) == Some(*x),
        (Int(x), Int(y)) => x == y,
        (Int(_) | Float(_), Int(_) | Float(_)) => a.as_f64() == b.as_f64(),
        (Str(_) | Bytes(_), Str(_) | Bytes(_)) => a.bytes() == b.bytes(),
        (List(x), List(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q)),
        (Dict(x), Dict(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        (Time(x), Time(y)) => x == y,
        (Time(t), Int(_) | Float(_)) | (Int(_) | Float(_), Time(t)) => {
            let n = if let Time(_) = a { b } else { a };
            n.as_f64() == Some(t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9)
        }
        _ => false,
    }
}

fn time_secs(t: &DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9
}

/// `a < b`; FALSE when the values do not order.
pub fn less(a: &Value, b: &Value) -> bool {
    order(a, b) == Some(Ordering::Less)
}

/// The ordering `<` uses, if any.
pub fn order(a: &Value, b: &Value) -> Option<Ordering> {
    use Value::*;
    match (a, b) {
        (Int(x), Int(y)) => Some(x.cmp(y)),
        (Int(_) | Float(_), Int(_) | Float(_)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Str(_) | Bytes(_), Str(_) | Bytes(_)) => Some(a.bytes()?.cmp(b.bytes()?)),
        (Time(x), Time(y)) => Some(x.cmp(y)),
        (Time(t), Int(_) | Float(_)) => time_secs(t).partial_cmp(&b.as_f64()?),
        (Int(_) | Float(_), Time(t)) => a.as_f64()?.partial_cmp(&time_secs(t)),
        (Dict(x), Dict(y)) => Some(x.len().cmp(&y.len())),
        _ => None,
    }
}

/// Sort order of ORDER BY: NULL sorts like "".
pub fn sort_cmp(a: &Value, b: &Value) -> Ordering {
    let empty = Value::Str(String::new());
    let a = if a.is_null() { &empty } else { a };
    let b = if b.is_null() { &empty } else { b };
    order(a, b).unwrap_or(Ordering::Equal)
}

/// `a + b`.
pub fn add(a: &Value, b: &Value) -> Value {
    use Value::*;
    match (a, b) {
        (Int(x), Int(y)) => Int(x.wrapping_add(*y)),
        (Int(_) | Float(_), Int(_) | Float(_)) => {
            Float(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0))
        }
        (Str(_) | Bytes(_), Str(_) | Bytes(_)) => {
            let (x, y) = (a.bytes().unwrap_or_default(), b.bytes().unwrap_or_default());
            if x.len() + y.len() > MAX_STRING_BYTES {
                return Null;
            }
            Value::from_bytes([x, y].concat())
        }
        (List(x), List(y)) => List(x.iter().chain(y).cloned().collect()),
        (List(x), other) if !other.is_null() => List(
            x.iter()
                .cloned()
                .chain(std::iter::once(other.clone()))
                .collect(),
        ),
        (other, List(y)) if !other.is_null() => List(
            std::iter::once(other.clone())
                .chain(y.iter().cloned())
                .collect(),
        ),
        (Dict(x), Dict(y)) => {
            let mut d = x.clone();
            for (k, v) in y {
                d.insert(k.clone(), v.clone());
            }
            Dict(d)
        }
        (Query(StoredQuery::Rows(x)), Query(StoredQuery::Rows(y))) => Query(StoredQuery::Rows(
            Arc::new(x.iter().chain(y.iter()).cloned().collect()),
        )),
        _ => Null,
    }
}

/// `a - b`.
pub fn sub(a: &Value, b: &Value) -> Value {
    use Value::*;
    match (a, b) {
        (Int(x), Int(y)) => Int(x.wrapping_sub(*y)),
        (Int(_) | Float(_), Int(_) | Float(_)) => {
            Float(a.as_f64().unwrap_or(0.0) - b.as_f64().unwrap_or(0.0))
        }
        (Dict(x), Dict(y)) => Dict(
            x.iter()
                .filter(|(k, _)| !y.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => Null,
    }
}

/// `a * b`.
pub fn mul(a: &Value, b: &Value) -> Value {
    use Value::*;
    match (a, b) {
        (Int(x), Int(y)) => Int(x.wrapping_mul(*y)),
        (Int(_) | Float(_), Int(_) | Float(_)) => {
            Float(a.as_f64().unwrap_or(0.0) * b.as_f64().unwrap_or(0.0))
        }
        (Str(s), Int(n)) if *n >= 0 => {
            if s.len().saturating_mul(*n as usize) > MAX_STRING_BYTES {
                return Null;
            }
            Str(s.repeat(*n as usize))
        }
        (Dict(x), Dict(y)) => Dict(
            x.iter()
                .filter(|(k, _)| y.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => Null,
    }
}

/// `a / b`: always a float; division by zero is NULL.
pub fn div(a: &Value, b: &Value) -> Value {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if y != 0.0 => Value::Float(x / y),
        _ => Value::Null,
    }
}

/// `a IN b`.
pub fn contains(a: &Value, b: &Value) -> bool {
    match b {
        Value::List(items) => items.iter().any(|i| equal(a, i)),
        Value::Str(_) | Value::Bytes(_) => match (a.bytes(), b.bytes()) {
            (Some(needle), Some(hay)) => {
                needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
            }
            _ => false,
        },
        Value::Dict(d) => match a {
            Value::Str(k) => d.contains_key(k),
            _ => false,
        },
        Value::Query(StoredQuery::Rows(rows)) => rows
            .iter()
            .any(|r| r.len() == 1 && r.values().next().is_some_and(|v| equal(a, v))),
        _ => false,
    }
}

/// The text `=~` matches a value against (strings, numbers, times; dicts as JSON).
pub fn regex_subject(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.clone()),
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => Some(v.to_json().to_string()),
        Value::Time(t) => Some(rfc3339(t)),
        Value::Dict(_) => Some(v.to_json().to_string()),
        _ => None,
    }
}

/// `v.name`: a dict key, mapped over lists, a time's members.
pub fn member(v: &Value, name: &str) -> Value {
    match v {
        Value::Dict(d) => match d.get(name) {
            Some(x) => x.clone(),
            None => dict_method(d, name),
        },
        Value::List(l) => Value::List(l.iter().map(|x| member(x, name)).collect()),
        Value::Query(StoredQuery::Rows(rows)) => Value::List(
            rows.iter()
                .map(|r| r.get(name).cloned().unwrap_or(Value::Null))
                .collect(),
        ),
        Value::Time(t) => time_member(t, name),
        _ => Value::Null,
    }
}

fn dict_method(d: &Dict, name: &str) -> Value {
    match name {
        "@Keys" => Value::List(d.keys().map(|k| Value::Str(k.clone())).collect()),
        "@Values" => Value::List(d.values().cloned().collect()),
        "@Items" => Value::List(
            d.iter()
                .map(|(k, v)| {
                    let mut i = Dict::new();
                    i.insert("Key".into(), Value::Str(k.clone()));
                    i.insert("Value".into(), v.clone());
                    Value::Dict(i)
                })
                .collect(),
        ),
        "@Len" => Value::Int(d.len() as i64),
        "@ToMap" => Value::Dict(d.clone()),
        "@String" => Value::Str(Value::Dict(d.clone()).to_json().to_string()),
        _ => Value::Null,
    }
}

fn time_member(t: &DateTime<Utc>, name: &str) -> Value {
    use chrono::{Datelike, Timelike};
    match name {
        "Unix" => Value::Int(t.timestamp()),
        "UnixNano" => Value::Int(t.timestamp_nanos_opt().unwrap_or(0)),
        "UnixMilli" => Value::Int(t.timestamp_millis()),
        "UnixMicro" => Value::Int(t.timestamp_micros()),
        "Year" => Value::Int(i64::from(t.year())),
        "Month" => Value::Int(i64::from(t.month())),
        "Day" => Value::Int(i64::from(t.day())),
        "Hour" => Value::Int(i64::from(t.hour())),
        "Minute" => Value::Int(i64::from(t.minute())),
        "Second" => Value::Int(i64::from(t.second())),
        "Nanosecond" => Value::Int(i64::from(t.nanosecond())),
        "Weekday" => Value::Int(i64::from(t.weekday().num_days_from_sunday())),
        "String" => Value::Str(rfc3339(t)),
        _ => Value::Null,
    }
}

fn norm_index(i: i64, len: usize) -> Option<usize> {
    let i = if i < 0 { len as i64 + i } else { i };
    (i >= 0 && (i as usize) < len).then_some(i as usize)
}

/// `v[i]`: negative counts from the end; strings give byte values; out of range NULL.
pub fn index(v: &Value, i: &Value) -> Value {
    match (v, i) {
        (Value::List(l), Value::Int(i)) => norm_index(*i, l.len())
            .map(|i| l[i].clone())
            .unwrap_or_default(),
        (Value::Str(_) | Value::Bytes(_), Value::Int(i)) => {
            let b = v.bytes().unwrap_or_default();
            norm_index(*i, b.len())
                .map(|i| Value::Int(i64::from(b[i])))
                .unwrap_or_default()
        }
        (Value::Query(StoredQuery::Rows(r)), Value::Int(i)) => norm_index(*i, r.len())
            .map(|i| Value::Dict(r[i].clone()))
            .unwrap_or_default(),
        (Value::Dict(d), Value::Str(k)) => d.get(k).cloned().unwrap_or_default(),
        _ => Value::Null,
    }
}

/// `v[a:b]`, clamped like Python.
pub fn slice(v: &Value, a: Option<&Value>, b: Option<&Value>) -> Value {
    let bound = |x: Option<&Value>, len: usize, default: usize| -> usize {
        match x {
            Some(Value::Int(i)) => {
                let i = if *i < 0 { len as i64 + i } else { *i };
                i.clamp(0, len as i64) as usize
            }
            _ => default,
        }
    };
    match v {
        Value::List(l) => {
            let (s, e) = (bound(a, l.len(), 0), bound(b, l.len(), l.len()));
            Value::List(if s < e { l[s..e].to_vec() } else { Vec::new() })
        }
        Value::Str(_) | Value::Bytes(_) => {
            let by = v.bytes().unwrap_or_default();
            let (s, e) = (bound(a, by.len(), 0), bound(b, by.len(), by.len()));
            Value::from_bytes(if s < e { by[s..e].to_vec() } else { Vec::new() })
        }
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_of_section_1_5() {
        use Value::*;
        assert!(equal(&Null, &Null));
        assert!(!equal(&Int(1), &Null));
        assert!(!less(&Null, &Int(1)) && !less(&Int(1), &Null));
        assert!(add(&Null, &Int(1)).is_null());
        assert!(equal(&Int(1), &Float(1.0)));
        assert!(!equal(&Int(1), &Str("1".into())));
        assert!(less(&Str("B".into()), &Str("a".into())));
        assert!(equal(&Bool(true), &Int(1)) && !equal(&Int(2), &Bool(true)));
        assert!(matches!(div(&Int(7), &Int(2)), Float(f) if f == 3.5));
        assert!(div(&Int(10), &Int(0)).is_null());
        assert!(add(&Int(1), &Str("foo".into())).is_null());
        assert!(add(&Int(1), &Bool(true)).is_null());
        assert!(matches!(add(&Int(i64::MAX), &Int(1)), Int(i64::MIN)));
        assert_eq!(
            add(&Int(1), &List(vec![Int(3), Int(4)])),
            List(vec![Int(1), Int(3), Int(4)])
        );
        assert!(contains(&Str("b".into()), &Str("abc".into())));
        assert!(!contains(&Int(1), &Null));
        assert!(!Int(-1).truthy());
        assert_eq!(index(&Str("Hello".into()), &Int(-1)), Int(111));
        assert_eq!(
            slice(&Str("Hello".into()), Some(&Int(-3)), None),
            Str("llo".into())
        );
        assert_eq!(
            slice(&Str("Hello".into()), Some(&Int(2)), Some(&Int(300))),
            Str("llo".into())
        );
        assert!(equal(
            &Int(65535 * 65535 * 65535),
            &Int(281_462_092_005_375)
        ));
    }
}
