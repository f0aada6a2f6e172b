//! Output helpers: aligned tables, pretty JSON, CSV fields.

use std::io::Write;

use serde_json::Value;

/// Prints a table with a header row, columns padded to their widest cell.
pub fn print_table(header: &[&str], rows: Vec<Vec<String>>) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in &rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// Prints a JSON value, pretty.
pub fn print_json(v: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_default()
    )
}

/// One CSV field: strings as they are, other values as JSON; quoted when needed.
pub fn csv_field(v: Option<&Value>) -> String {
    let text = match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field(Some(&Value::from("a,b"))), "\"a,b\"");
        assert_eq!(
            csv_field(Some(&Value::from("say \"hi\""))),
            "\"say \"\"hi\"\"\""
        );
        assert_eq!(
            csv_field(Some(&serde_json::json!({"x": 1}))),
            "\"{\"\"x\"\":1}\""
        );
        assert_eq!(csv_field(None), "");
        assert_eq!(csv_field(Some(&Value::from(3))), "3");
    }
}
