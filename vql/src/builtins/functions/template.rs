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

#[derive(Debug, Clone)]
enum Tok {
    Dot(Vec<String>),
    Var(String, Vec<String>),
    Str(String),
    Num(f64, bool),
    Ident(String),
    Field(Vec<String>),
    Open,
    Close,
    Pipe,
    Declare,
    Assign,
    Comma,
}

#[derive(Debug, Clone)]
enum Term {
    Lit(Value),
    Dot(Vec<String>),
    Var(String, Vec<String>),
    Call(String, Vec<Term>),
    Sub(Box<Pipe>, Vec<String>),
}

#[derive(Debug, Clone)]
struct Pipe {
    cmds: Vec<Term>,
}

#[derive(Debug)]
enum Node {
    Text(String),
    Print(Pipe),
    Set {
        name: String,
        pipe: Pipe,
    },
    If(Vec<(Pipe, Vec<Node>)>, Vec<Node>),
    Range {
        key: Option<String>,
        val: Option<String>,
        pipe: Pipe,
        body: Vec<Node>,
        else_: Vec<Node>,
    },
    With(Pipe, Vec<Node>, Vec<Node>),
    Break,
    Continue,
}

/// One `{{ }}` action's words.
fn lex(s: &str, at: usize) -> Result<Vec<Tok>, String> {
    let b: Vec<char> = s.chars().collect();
    let (mut i, mut out) = (0, Vec::new());
    let path = |b: &[char], i: &mut usize| {
        let mut parts = Vec::new();
        while *i < b.len() && b[*i] == '.' {
            *i += 1;
            let start = *i;
            while *i < b.len() && (b[*i].is_alphanumeric() || b[*i] == '_') {
                *i += 1;
            }
            if *i > start {
                parts.push(b[start..*i].iter().collect());
            }
        }
        parts
    };
    while i < b.len() {
        let ch = b[i];
        match ch {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                i += 1;
                out.push(Tok::Close);
                if i < b.len() && b[i] == '.' {
                    out.push(Tok::Field(path(&b, &mut i)));
                }
            }
            '|' => {
                out.push(Tok::Pipe);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            ':' if b.get(i + 1) == Some(&'=') => {
                out.push(Tok::Declare);
                i += 2;
            }
            '=' => {
                out.push(Tok::Assign);
                i += 1;
            }
            '.' => out.push(Tok::Dot(path(&b, &mut i))),
            '$' => {
                let start = i;
                i += 1;
                while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                    i += 1;
                }
                let name: String = b[start..i].iter().collect();
                out.push(Tok::Var(name, path(&b, &mut i)));
            }
            '"' => {
                i += 1;
                let mut t = String::new();
                loop {
                    match b.get(i) {
                        None => return Err(format!("template: unterminated string at {at}")),
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            let e = b.get(i + 1).copied().unwrap_or('\\');
                            t.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                other => other,
                            });
                            i += 2;
                        }
                        Some(c) => {
                            t.push(*c);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(t));
            }
            '`' => {
                let end = b[i + 1..]
                    .iter()
                    .position(|c| *c == '`')
                    .ok_or_else(|| format!("template: unterminated raw string at {at}"))?;
                out.push(Tok::Str(b[i + 1..i + 1 + end].iter().collect()));
                i += end + 2;
            }
            c if c.is_ascii_digit()
                || (c == '-' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let start = i;
                i += 1;
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == '.') {
                    i += 1;
                }
                let t: String = b[start..i].iter().collect();
                let n = t
                    .parse()
                    .map_err(|_| format!("template: bad number {t} at {at}"))?;
                out.push(Tok::Num(n, !t.contains('.')));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                    i += 1;
                }
                out.push(Tok::Ident(b[start..i].iter().collect()));
            }
            other => return Err(format!("template: unexpected {other:?} at {at}")),
        }
    }
    Ok(out)
}

/// A pipeline from words: `cmd | cmd ...`; a command is a call or one operand.
fn pipeline(t: &[Tok], pos: &mut usize, depth: usize, at: usize) -> Result<Pipe, String> {
    if depth > MAX_DEPTH {
        return Err(format!("template: nested too deep at {at}"));
    }
    let mut cmds = Vec::new();
    loop {
        let mut words = Vec::new();
        while *pos < t.len() && !matches!(t[*pos], Tok::Pipe | Tok::Close) {
            words.push(operand(t, pos, depth, at)?);
        }
        let cmd = match words.len() {
            0 => return Err(format!("template: empty command at {at}")),
            1 => words.pop().expect("one"),
            _ => match words.remove(0) {
                Term::Call(name, mut args) if args.is_empty() => {
                    args.extend(words);
                    Term::Call(name, args)
                }
                _ => {
                    return Err(format!(
                        "template: cannot call a value with arguments at {at}"
                    ))
                }
            },
        };
        cmds.push(cmd);
        if *pos < t.len() && matches!(t[*pos], Tok::Pipe) {
            *pos += 1;
            continue;
        }
        return Ok(Pipe { cmds });
    }
}

fn operand(t: &[Tok], pos: &mut usize, depth: usize, at: usize) -> Result<Term, String> {
    let tok = t[*pos].clone();
    *pos += 1;
    Ok(match tok {
        Tok::Dot(p) => Term::Dot(p),
        Tok::Var(n, p) => Term::Var(n, p),
        Tok::Str(s) => Term::Lit(Value::Str(s)),
        Tok::Num(n, true) => Term::Lit(Value::Int(n as i64)),
        Tok::Num(n, false) => Term::Lit(Value::Float(n)),
        Tok::Ident(i) => match i.as_str() {
            "true" => Term::Lit(Value::Bool(true)),
            "false" => Term::Lit(Value::Bool(false)),
            "nil" => Term::Lit(Value::Null),
            _ => Term::Call(i, Vec::new()),
        },
        Tok::Open => {
            let inner = pipeline(t, pos, depth + 1, at)?;
            if !matches!(t.get(*pos), Some(Tok::Close)) {
                return Err(format!("template: missing ) at {at}"));
            }
            *pos += 1;
            let fields = match t.get(*pos) {
                Some(Tok::Field(f)) => {
                    *pos += 1;
                    f.clone()
                }
                _ => Vec::new(),
            };
            Term::Sub(Box::new(inner), fields)
        }
        other => return Err(format!("template: unexpected {other:?} at {at}")),
    })
}

fn whole_pipe(t: &[Tok], at: usize) -> Result<Pipe, String> {
    let mut pos = 0;
    let p = pipeline(t, &mut pos, 0, at)?;
    if pos != t.len() {
        return Err(format!("template: unexpected ) at {at}"));
    }
    Ok(p)
}

/// Text and actions, with trim markers applied.
fn split(text: &str) -> Result<Vec<(usize, bool, String)>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut before = rest[..open].to_string();
        if trim_next {
            before = before.trim_start().to_string();
        }
        let mut inner_start = open + 2;
        if rest[inner_start..].starts_with('-')
            && rest[inner_start + 1..].starts_with(char::is_whitespace)
        {
            before = before.trim_end().to_string();
            inner_start += 1;
        }
        out.push((offset, false, before));
        let close = rest[inner_start..]
            .find("}}")
            .ok_or_else(|| format!("template: unclosed action at {}", offset + open))?
            + inner_start;
        let mut inner = &rest[inner_start..close];
        trim_next = false;
        if inner.ends_with('-') && inner[..inner.len() - 1].ends_with(char::is_whitespace) {
            inner = &inner[..inner.len() - 1];
            trim_next = true;
        }
        out.push((offset + open, true, inner.trim().to_string()));
        offset += close + 2;
        rest = &rest[close + 2..];
    }
    let tail = if trim_next { rest.trim_start() } else { rest };
    out.push((offset, false, tail.to_string()));
    Ok(out)
}

fn parse(text: &str) -> Result<Vec<Node>, String> {
    let pieces = split(text)?;
    let mut pos = 0;
    let (nodes, end) = block(&pieces, &mut pos, 0)?;
    match end {
        None => Ok(nodes),
        Some((at, word)) => Err(format!("template: unexpected {{{{{word}}}}} at {at}")),
    }
}

type Pieces = [(usize, bool, String)];
/// A block's nodes and the `end`/`else` that closed it (offset, text).
type Block = (Vec<Node>, Option<(usize, String)>);

/// Nodes up to an `end`/`else` (returned with its offset and text) or the end.
fn block(p: &Pieces, pos: &mut usize, depth: usize) -> Result<Block, String> {
    if depth > MAX_DEPTH {
        return Err("template: blocks nested too deep".into());
    }
    let mut nodes = Vec::new();
    while *pos < p.len() {
        let (at, action, text) = &p[*pos];
        *pos += 1;
        if !action {
            if !text.is_empty() {
                nodes.push(Node::Text(text.clone()));
            }
            continue;
        }
        let at = *at;
        if text.starts_with("/*") {
            continue;
        }
        let word = text.split_whitespace().next().unwrap_or("");
        let rest = text[word.len()..].trim();
        match word {
            "end" | "else" => return Ok((nodes, Some((at, text.clone())))),
            "break" => nodes.push(Node::Break),
            "continue" => nodes.push(Node::Continue),
            "if" => {
                let mut branches = vec![(whole_pipe(&lex(rest, at)?, at)?, Vec::new())];
                let mut else_ = Vec::new();
                loop {
                    let (body, end) = block(p, pos, depth + 1)?;
                    let Some((eat, etext)) = end else {
                        return Err(format!("template: if at {at} has no end"));
                    };
                    if branches.last().is_some_and(|b| b.1.is_empty()) && else_.is_empty() {
                        branches.last_mut().expect("branch").1 = body;
                    } else {
                        else_ = body;
                    }
                    if etext == "end" {
                        break;
                    }
                    let cond = etext.trim_start_matches("else").trim();
                    if let Some(c) = cond.strip_prefix("if") {
                        branches.push((whole_pipe(&lex(c.trim(), eat)?, eat)?, Vec::new()));
                    } else {
                        let (body, end) = block(p, pos, depth + 1)?;
                        if end.as_ref().map(|e| e.1.as_str()) != Some("end") {
                            return Err(format!("template: else at {eat} has no end"));
                        }
                        else_ = body;
                        break;
                    }
                }
                nodes.push(Node::If(branches, else_));
            }
            "range" | "with" => {
                let toks = lex(rest, at)?;
                let (mut key, mut val, mut start) = (None, None, 0);
                if let Some(d) = toks.iter().position(|t| matches!(t, Tok::Declare)) {
                    let names: Vec<String> = toks[..d]
                        .iter()
                        .filter_map(|t| match t {
                            Tok::Var(n, _) => Some(n.clone()),
                            _ => None,
                        })
                        .collect();
                    match names.as_slice() {
                        [v] => val = Some(v.clone()),
                        [k, v] => {
                            key = Some(k.clone());
                            val = Some(v.clone());
                        }
                        _ => return Err(format!("template: bad {word} variables at {at}")),
                    }
                    start = d + 1;
                }
                let pipe = whole_pipe(&toks[start..], at)?;
                let (body, end) = block(p, pos, depth + 1)?;
                let mut else_ = Vec::new();
                match end.as_ref().map(|e| e.1.as_str()) {
                    Some("end") => {}
                    Some("else") => {
                        let (b, end) = block(p, pos, depth + 1)?;
                        if end.as_ref().map(|e| e.1.as_str()) != Some("end") {
                            return Err(format!("template: {word} at {at} has no end"));
                        }
                        else_ = b;
                    }
                    _ => return Err(format!("template: {word} at {at} has no end")),
                }
                nodes.push(if word == "range" {
                    Node::Range {
                        key,
                        val,
                        pipe,
                        body,
                        else_,
                    }
                } else {
                    Node::With(pipe, body, else_)
                });
            }
            _ => {
                let toks = lex(text, at)?;
                match toks.get(1) {
                    Some(Tok::Declare) | Some(Tok::Assign) => {
                        let Some(Tok::Var(name, _)) = toks.first() else {
                            return Err(format!("template: bad assignment at {at}"));
                        };
                        nodes.push(Node::Set {
                            name: name.clone(),
                            pipe: whole_pipe(&toks[2..], at)?,
                        });
                    }
                    _ => nodes.push(Node::Print(whole_pipe(&toks, at)?)),
                }
            }
        }
    }
    Ok((nodes, None))
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
