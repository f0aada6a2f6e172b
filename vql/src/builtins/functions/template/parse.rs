//! The template's syntax: text and `{{ }}` actions split apart (with trim markers), each
//! action's words lexed, and the tree of nodes (blocks, pipelines, commands) built with
//! bounded depth; errors name the offset in the template.

use crate::eval::value::Value;

use super::MAX_DEPTH;

#[derive(Debug, Clone)]
pub(super) enum Tok {
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
pub(super) enum Term {
    Lit(Value),
    Dot(Vec<String>),
    Var(String, Vec<String>),
    Call(String, Vec<Term>),
    Sub(Box<Pipe>, Vec<String>),
}

#[derive(Debug, Clone)]
pub(super) struct Pipe {
    pub(super) cmds: Vec<Term>,
}

#[derive(Debug)]
pub(super) enum Node {
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

pub(super) fn parse(text: &str) -> Result<Vec<Node>, String> {
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
