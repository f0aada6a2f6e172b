//! `template(template=, expansion=)`: the subset of Go's `text/template` that
//! Velociraptor's alerting artifacts use, over VQL values. Written here because no
//! maintained Rust crate implements Go's template language (the Go-template crates are
//! unmaintained and miss `break` and variables in `range`), and the Jinja-style engines
//! use a different syntax.
//!
//! Supported: text and `{{ }}` actions with `{{-`/`-}}` trimming and `{{/* */}}`
//! comments; `.`, `.A.B`, `$`, `$x`, `$x.A`; string, raw string, number, `true`, `false`
//! and `nil` literals; calls with arguments, parentheses and `|` pipes; `$x := p` and
//! `$x = p`; `if`/`else if`/`else`, `range` (with `$i, $x :=`, `else`, `break`,
//! `continue`), `with`/`else`; the functions `eq ne lt le gt ge and or not len index
//! printf print println html urlquery js Get`, and `.Keys`/`.Items` on dicts.
//! Bounded: nesting depth, loop iterations and output size, so a template cannot run
//! away; anything else is an error naming the offset.

use std::collections::HashMap;

use futures::future::BoxFuture;

mod parse;

use parse::{parse, Node, Pipe, Term};

use super::gofmt::sprintf;
use crate::eval::engine::Place;
use crate::eval::expr::materialize_deep;
use crate::eval::registry::{Call, Registry};
use crate::eval::value::{self, Dict, Value};

/// Deepest nesting of blocks and parentheses.
const MAX_DEPTH: usize = 64;
/// Most loop iterations of one expansion.
const MAX_STEPS: usize = 1_000_000;

pub(super) fn register(r: &mut Registry) {
    r.function("template", Place::Both, template);
}

fn template<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(&["template", "expansion"], &["template"]).await {
            return Value::Null;
        }
        let text = c.args.get("template").await.unwrap_or_default().to_text();
        let dot =
            materialize_deep(c.args.get("expansion").await.unwrap_or_default(), c.scope).await;
        match render(&text, dot) {
            Ok(s) => Value::Str(s),
            Err(e) => c.fail(e),
        }
    })
}

/// Expands a template with `dot` as `.`.
pub fn render(text: &str, dot: Value) -> Result<String, String> {
    let nodes = parse(text)?;
    let mut st = State {
        out: String::new(),
        vars: vec![HashMap::from([("$".to_string(), dot.clone())])],
        steps: 0,
    };
    match st.run(&nodes, &dot)? {
        Flow::Normal | Flow::Break | Flow::Continue => Ok(st.out),
    }
}

enum Flow {
    Normal,
    Break,
    Continue,
}

struct State {
    out: String,
    vars: Vec<HashMap<String, Value>>,
    steps: usize,
}

/// Go's truth: false, 0, nil and empty are false.
fn go_truth(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Int(i) => *i != 0,
        Value::Float(f) => *f != 0.0,
        Value::Str(s) => !s.is_empty(),
        Value::Bytes(b) => !b.is_empty(),
        Value::List(l) => !l.is_empty(),
        Value::Dict(d) => !d.is_empty(),
        _ => true,
    }
}

fn field(v: &Value, name: &str) -> Value {
    match (v, name) {
        (Value::Dict(d), "Keys") if !d.contains_key("Keys") => {
            Value::List(d.keys().map(|k| Value::from(k.as_str())).collect())
        }
        (Value::Dict(d), "Items") if !d.contains_key("Items") => Value::List(
            d.iter()
                .map(|(k, v)| {
                    let mut i = Dict::new();
                    i.insert("Key".into(), Value::from(k.as_str()));
                    i.insert("Value".into(), v.clone());
                    Value::Dict(i)
                })
                .collect(),
        ),
        _ => value::member(v, name),
    }
}

fn fields(mut v: Value, path: &[String]) -> Value {
    for p in path {
        v = field(&v, p);
    }
    v
}

impl State {
    fn var(&self, name: &str) -> Result<Value, String> {
        self.vars
            .iter()
            .rev()
            .find_map(|f| f.get(name).cloned())
            .ok_or_else(|| format!("template: undefined variable {name}"))
    }

    fn set(&mut self, name: &str, v: Value) {
        for f in self.vars.iter_mut().rev() {
            if let Some(slot) = f.get_mut(name) {
                *slot = v;
                return;
            }
        }
        self.vars
            .last_mut()
            .expect("frame")
            .insert(name.to_string(), v);
    }

    fn emit(&mut self, s: &str) -> Result<(), String> {
        if self.out.len() + s.len() > value::MAX_STRING_BYTES {
            return Err("template: output over the string limit".into());
        }
        self.out.push_str(s);
        Ok(())
    }

    fn run(&mut self, nodes: &[Node], dot: &Value) -> Result<Flow, String> {
        for n in nodes {
            match n {
                Node::Text(t) => self.emit(t)?,
                Node::Print(p) => {
                    let v = self.pipe(p, dot)?;
                    self.emit(&text_of(&v))?;
                }
                Node::Set { name, pipe } => {
                    let v = self.pipe(pipe, dot)?;
                    self.set(name, v);
                }
                Node::Break => return Ok(Flow::Break),
                Node::Continue => return Ok(Flow::Continue),
                Node::If(branches, else_) => {
                    let mut chosen = else_;
                    for (cond, body) in branches {
                        if go_truth(&self.pipe(cond, dot)?) {
                            chosen = body;
                            break;
                        }
                    }
                    match self.scoped(chosen, dot)? {
                        Flow::Normal => {}
                        other => return Ok(other),
                    }
                }
                Node::With(pipe, body, else_) => {
                    let v = self.pipe(pipe, dot)?;
                    let flow = if go_truth(&v) {
                        self.scoped(body, &v)?
                    } else {
                        self.scoped(else_, dot)?
                    };
                    if !matches!(flow, Flow::Normal) {
                        return Ok(flow);
                    }
                }
                Node::Range {
                    key,
                    val,
                    pipe,
                    body,
                    else_,
                } => {
                    let items: Vec<(Value, Value)> = match self.pipe(pipe, dot)? {
                        Value::List(l) => l
                            .into_iter()
                            .enumerate()
                            .map(|(i, v)| (Value::Int(i as i64), v))
                            .collect(),
                        Value::Dict(d) => d.into_iter().map(|(k, v)| (Value::Str(k), v)).collect(),
                        Value::Int(n) => (0..n.max(0))
                            .map(|i| (Value::Int(i), Value::Int(i)))
                            .collect(),
                        Value::Null => Vec::new(),
                        other => {
                            return Err(format!(
                                "template: cannot range over a {}",
                                other.type_name()
                            ))
                        }
                    };
                    if items.is_empty() {
                        self.scoped(else_, dot)?;
                        continue;
                    }
                    for (k, v) in items {
                        self.steps += 1;
                        if self.steps > MAX_STEPS {
                            return Err("template: too many loop iterations".into());
                        }
                        self.vars.push(HashMap::new());
                        if let Some(kn) = key {
                            self.vars.last_mut().expect("frame").insert(kn.clone(), k);
                        }
                        if let Some(vn) = val {
                            self.vars
                                .last_mut()
                                .expect("frame")
                                .insert(vn.clone(), v.clone());
                        }
                        let flow = self.run(body, &v);
                        self.vars.pop();
                        match flow? {
                            Flow::Break => break,
                            Flow::Continue | Flow::Normal => {}
                        }
                    }
                }
            }
        }
        Ok(Flow::Normal)
    }

    fn scoped(&mut self, nodes: &[Node], dot: &Value) -> Result<Flow, String> {
        self.vars.push(HashMap::new());
        let r = self.run(nodes, dot);
        self.vars.pop();
        r
    }

    fn pipe(&mut self, p: &Pipe, dot: &Value) -> Result<Value, String> {
        let mut carried: Option<Value> = None;
        for cmd in &p.cmds {
            let v = match (cmd, carried.take()) {
                (Term::Call(name, args), Some(prev)) => {
                    let mut vals = args
                        .iter()
                        .map(|a| self.term(a, dot))
                        .collect::<Result<Vec<_>, _>>()?;
                    vals.push(prev);
                    call(name, vals)?
                }
                (other, Some(_)) => return Err(format!("template: cannot pipe into {other:?}")),
                (t, None) => self.term(t, dot)?,
            };
            carried = Some(v);
        }
        Ok(carried.unwrap_or_default())
    }

    fn term(&mut self, t: &Term, dot: &Value) -> Result<Value, String> {
        Ok(match t {
            Term::Lit(v) => v.clone(),
            Term::Dot(path) => fields(dot.clone(), path),
            Term::Var(name, path) => fields(self.var(name)?, path),
            Term::Sub(p, path) => {
                let v = self.pipe(p, dot)?;
                fields(v, path)
            }
            Term::Call(name, args) => {
                let vals = args
                    .iter()
                    .map(|a| self.term(a, dot))
                    .collect::<Result<Vec<_>, _>>()?;
                call(name, vals)?
            }
        })
    }
}

/// How Go's fmt prints a value in a template.
fn text_of(v: &Value) -> String {
    match v {
        Value::Null => "<no value>".into(),
        Value::Time(t) => value::rfc3339(t),
        other => other.to_text(),
    }
}

fn cmp(name: &str, a: &Value, b: &Value) -> bool {
    match name {
        "eq" => value::equal(a, b),
        "ne" => !value::equal(a, b),
        "lt" => value::less(a, b),
        "le" => value::less(a, b) || value::equal(a, b),
        "gt" => value::less(b, a),
        _ => value::less(b, a) || value::equal(a, b),
    }
}

fn call(name: &str, args: Vec<Value>) -> Result<Value, String> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    Ok(match name {
        "eq" if args.len() > 2 => Value::Bool(args[1..].iter().any(|b| value::equal(&args[0], b))),
        "eq" | "ne" | "lt" | "le" | "gt" | "ge" => {
            if args.len() < 2 {
                return Err(format!("template: {name} needs two arguments"));
            }
            Value::Bool(cmp(name, &args[0], &args[1]))
        }
        "and" => args
            .iter()
            .find(|v| !go_truth(v))
            .or(args.last())
            .cloned()
            .unwrap_or_default(),
        "or" => args
            .iter()
            .find(|v| go_truth(v))
            .or(args.last())
            .cloned()
            .unwrap_or_default(),
        "not" => Value::Bool(!go_truth(&arg(0))),
        "len" => Value::Int(match arg(0) {
            Value::List(l) => l.len(),
            Value::Dict(d) => d.len(),
            Value::Str(s) => s.len(),
            Value::Bytes(b) => b.len(),
            Value::Null => 0,
            other => return Err(format!("template: len of a {}", other.type_name())),
        } as i64),
        "index" => args[1..].iter().fold(arg(0), |v, i| match i {
            Value::Str(k) => value::member(&v, k),
            other => value::index(&v, other),
        }),
        "Get" => {
            let mut v = arg(0);
            for part in arg(1).to_text().split('.').filter(|p| !p.is_empty()) {
                v = match (part.parse::<i64>(), &v) {
                    (Ok(i), Value::List(_)) => value::index(&v, &Value::Int(i)),
                    _ => field(&v, part),
                };
            }
            v
        }
        "printf" => Value::Str(sprintf(&arg(0).to_text(), &args[1.min(args.len())..])),
        "print" => Value::Str(args.iter().map(text_of).collect::<Vec<_>>().join("")),
        "println" => Value::Str(format!(
            "{}\n",
            args.iter().map(text_of).collect::<Vec<_>>().join(" ")
        )),
        "html" => Value::Str(html_escape(&args.iter().map(text_of).collect::<String>())),
        "js" => Value::Str(
            args.iter()
                .map(text_of)
                .collect::<String>()
                .escape_default()
                .to_string(),
        ),
        "urlquery" => Value::Str(
            args.iter()
                .map(text_of)
                .collect::<String>()
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    other => format!("%{other:02X}"),
                })
                .collect(),
        ),
        other => return Err(format!("template: function {other:?} not defined")),
    })
}

/// HTML text with `& < > " '` escaped.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(pairs: &[(&str, Value)]) -> Value {
        Value::Dict(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn the_subset_the_artifacts_use() {
        let d = dict(&[
            ("Name", Value::from("bob")),
            (
                "L",
                Value::List(vec![Value::Int(1), Value::Int(2), Value::Int(3)]),
            ),
            ("C", dict(&[("a", Value::Int(1)), ("b", Value::Int(2))])),
        ]);
        let t = "{{ .Name }}:{{ range $i, $x := .L }}{{ if ge $x 3 }}{{ break }}{{ end }}{{ $i }}{{ end }}|{{ len .L }}|{{ range .C.Items }}{{ .Key }}={{ .Value }};{{ end }}|{{ Get . \"C.b\" }}|{{ printf \"%03d\" 7 }}|{{ .Name | printf \"<%s>\" }}";
        assert_eq!(render(t, d).unwrap(), "bob:01|3|a=1;b=2;|2|007|<bob>");
    }

    #[test]
    fn trimming_else_if_with_and_variables() {
        let d = dict(&[("N", Value::Int(2))]);
        let t = "a  {{- if eq .N 1 }}one{{ else if eq .N 2 }}two{{ else }}many{{ end -}}  b{{ $x := 5 }}{{ with .Missing }}x{{ else }}{{ $x }}{{ end }}{{/* gone */}}";
        assert_eq!(render(t, d).unwrap(), "atwob5");
    }

    #[test]
    fn errors_name_the_place_and_loops_are_bounded() {
        assert!(render("{{ if .X }}", Value::Null)
            .unwrap_err()
            .contains("no end"));
        assert!(render("x {{ nope 1 }}", Value::Null)
            .unwrap_err()
            .contains("nope"));
        assert!(render("{{ .A", Value::Null)
            .unwrap_err()
            .contains("unclosed action at 0"));
        let deep = "{{ if 1 }}".repeat(100) + &"{{ end }}".repeat(100);
        assert!(render(&deep, Value::Null).is_err());
        let e = render("{{ range 2000000 }}{{ end }}", Value::Null).unwrap_err();
        assert!(e.contains("too many"), "{e}");
    }
}
