//! Reading the arguments of a VQL call that arrives as a JSON object (the service ports):
//! a string of any value, and truth as Velociraptor's boolean parameters read it.

use serde_json::{Map, Value};

/// An argument as text: a string as it is, NULL or absent as empty, others as JSON.
pub(crate) fn text(args: &Map<String, Value>, k: &str) -> String {
    match args.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// An argument's truth: true, a non-zero number, or `true`/`y`/`yes`/`1` in any case.
pub(crate) fn truthy(args: &Map<String, Value>, k: &str) -> bool {
    match args.get(k) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0) != 0.0,
        Some(Value::String(s)) => {
            matches!(s.to_ascii_lowercase().as_str(), "true" | "y" | "yes" | "1")
        }
        _ => false,
    }
}
