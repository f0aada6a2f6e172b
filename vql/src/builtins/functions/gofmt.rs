//! A subset of Go's `fmt.Sprintf` (the verbs VQL artifacts use) and Go time layouts.

use crate::eval::value::{rfc3339, Value};

/// Formats `args` by the Go format string `fmt`: `%v %s %d %x %X %q %T %f %e %t %%`, with
/// flags `-`, `0`, `+`, width and precision, and explicit argument indexes (`%[2]s`).
/// Missing args render `%!v(MISSING)`.
pub fn sprintf(fmt: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    let mut next = 0usize;
    let mut reordered = false;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut flags = String::new();
        while let Some(&f) = chars.peek() {
            if "-+0 #".contains(f) {
                flags.push(f);
                chars.next();
            } else {
                break;
            }
        }
        let mut width = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            chars.next();
        }
        let mut precision: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                p.push(d);
                chars.next();
            }
            precision = Some(p.parse().unwrap_or(0));
        }
        if chars.peek() == Some(&'[') {
            // `%[n]verb`: argument n (from 1); the following verbs go on after it.
            chars.next();
            let mut n = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                n.push(d);
                chars.next();
            }
            match (chars.next(), n.parse::<usize>()) {
                (Some(']'), Ok(i)) if i >= 1 => {
                    next = i - 1;
                    reordered = true;
                }
                _ => {
                    out.push_str("%!(BADINDEX)");
                    continue;
                }
            }
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        next += 1;
        let text = render(verb, arg, precision, flags.contains('+'));
        out.push_str(&pad(&text, width.parse().unwrap_or(0), &flags, verb));
    }
    if !reordered && next < args.len() {
        out.push_str("%!(EXTRA ");
        let extra: Vec<String> = args[next..]
            .iter()
            .map(|a| format!("{}={}", go_type(a), plain(a)))
            .collect();
        out.push_str(&extra.join(", "));
        out.push(')');
    }
    out
}

/// Go's name of a value's type, as `%T` and `typeof()` print it.
pub(crate) fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int64",
        Value::Float(_) => "float64",
        Value::Str(_) => "string",
        Value::Bytes(_) => "[]uint8",
        Value::List(_) => "[]interface {}",
        Value::Dict(_) => "*ordereddict.Dict",
        Value::Time(_) => "time.Time",
        Value::Query(_) => "types.StoredQuery",
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => crate::syntax::format::float(*f),
        Value::Str(s) => s.clone(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Time(t) => rfc3339(t),
        Value::List(l) => format!("[{}]", l.iter().map(plain).collect::<Vec<_>>().join(" ")),
        other => other.to_json().to_string(),
    }
}

fn render(verb: char, v: &Value, precision: Option<usize>, plus: bool) -> String {
    match verb {
        'v' | 's' => {
            let s = plain(v);
            match precision {
                Some(p) if verb == 's' => s.chars().take(p).collect(),
                _ => s,
            }
        }
        'd' => match v {
            Value::Int(i) if plus && *i >= 0 => format!("+{i}"),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => format!("%!d(float64={})", crate::syntax::format::float(*f)),
            other => format!("%!d({}={})", go_type(other), plain(other)),
        },
        'x' | 'X' => {
            let s = match v {
                Value::Int(i) => format!("{i:x}"),
                Value::Str(s) => s.bytes().map(|b| format!("{b:02x}")).collect(),
                Value::Bytes(b) => b.iter().map(|b| format!("{b:02x}")).collect(),
                other => plain(other),
            };
            if verb == 'X' {
                s.to_uppercase()
            } else {
                s
            }
        }
        'q' => format!("{:?}", plain(v)),
        'T' => go_type(v).to_string(),
        't' => match v {
            Value::Bool(b) => b.to_string(),
            other => format!("%!t({}={})", go_type(other), plain(other)),
        },
        'f' | 'F' | 'e' | 'g' => {
            let f = match v {
                Value::Int(i) => *i as f64,
                Value::Float(f) => *f,
                other => return format!("%!{verb}({}={})", go_type(other), plain(other)),
            };
            match verb {
                'e' => format!("{:.*e}", precision.unwrap_or(6), f),
                'g' => crate::syntax::format::float(f),
                _ => format!("{:.*}", precision.unwrap_or(6), f),
            }
        }
        other => format!("%!{other}({})", plain(v)),
    }
}

fn pad(s: &str, width: usize, flags: &str, verb: char) -> String {
    let len = s.chars().count();
    if len >= width {
        return s.to_string();
    }
    let fill = width - len;
    if flags.contains('-') {
        format!("{s}{}", " ".repeat(fill))
    } else if flags.contains('0') && "dxXfe".contains(verb) {
        match s.strip_prefix('-') {
            Some(rest) => format!("-{}{rest}", "0".repeat(fill)),
            None => format!("{}{s}", "0".repeat(fill)),
        }
    } else {
        format!("{}{s}", " ".repeat(fill))
    }
}

/// Converts a Go time layout (`2006-01-02 15:04:05`) to a strftime pattern.
pub fn go_layout_to_strftime(layout: &str) -> String {
    const MAP: &[(&str, &str)] = &[
        ("2006", "%Y"),
        ("January", "%B"),
        ("Jan", "%b"),
        ("Monday", "%A"),
        ("Mon", "%a"),
        ("01", "%m"),
        ("02", "%d"),
        ("15", "%H"),
        ("03", "%I"),
        ("04", "%M"),
        ("05", "%S"),
        ("PM", "%p"),
        ("MST", "%Z"),
        ("-0700", "%z"),
        (".000000", "%.6f"),
        (".000", "%.3f"),
    ];
    let mut out = String::new();
    let mut rest = layout;
    'outer: while !rest.is_empty() {
        for (go, st) in MAP {
            if let Some(r) = rest.strip_prefix(go) {
                out.push_str(st);
                rest = r;
                continue 'outer;
            }
        }
        let c = rest.chars().next().expect("non-empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_verbs() {
        let a = [Value::Int(5), Value::from("x"), Value::Float(1.5)];
        assert_eq!(sprintf("%v-%s-%v", &a), "5-x-1.5");
        assert_eq!(
            sprintf(
                "%02x %5d|%-3s|",
                &[Value::Int(10), Value::Int(42), Value::from("a")]
            ),
            "0a    42|a  |"
        );
        assert_eq!(sprintf("%v %v", &[Value::Int(1)]), "1 %!v(MISSING)");
        assert_eq!(
            sprintf("%q %T %%", &[Value::from("a"), Value::Int(1)]),
            "\"a\" int64 %"
        );
        assert_eq!(sprintf("%.2f", &[Value::Float(1.23456)]), "1.23");
        assert_eq!(
            go_layout_to_strftime("2006-01-02 15:04:05"),
            "%Y-%m-%d %H:%M:%S"
        );
    }
}
