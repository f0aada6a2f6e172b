//! The VQL lexer: vfilter's rules tried in a fixed order, the first that matches winning
//! (SPEC-VQL §1.1). Comments and whitespace are dropped; everything else becomes a token
//! with its byte span.

use std::fmt;
use std::ops::Range;

/// A token of VQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tok {
    Explain,
    Select,
    Where,
    And,
    Or,
    /// `|`, `||`, `|||` ...
    AltOr,
    /// `&&`
    AltAnd,
    From,
    Not,
    As,
    In,
    Limit,
    Null,
    Desc,
    GroupBy,
    OrderBy,
    Bool(bool),
    Let,
    /// Number text as written (with any leading `-`).
    Number(String),
    /// An identifier, unquoted (backticks removed).
    Ident(String),
    /// `-name`: a negated symbol; holds the name.
    SymbolIdent(String),
    /// An operator or punctuation.
    Op(&'static str),
    /// A string literal's bytes after unquoting.
    Str(Vec<u8>),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Explain => f.write_str("EXPLAIN"),
            Tok::Select => f.write_str("SELECT"),
            Tok::Where => f.write_str("WHERE"),
            Tok::And => f.write_str("AND"),
            Tok::Or => f.write_str("OR"),
            Tok::AltOr => f.write_str("||"),
            Tok::AltAnd => f.write_str("&&"),
            Tok::From => f.write_str("FROM"),
            Tok::Not => f.write_str("NOT"),
            Tok::As => f.write_str("AS"),
            Tok::In => f.write_str("IN"),
            Tok::Limit => f.write_str("LIMIT"),
            Tok::Null => f.write_str("NULL"),
            Tok::Desc => f.write_str("DESC"),
            Tok::GroupBy => f.write_str("GROUP BY"),
            Tok::OrderBy => f.write_str("ORDER BY"),
            Tok::Bool(b) => f.write_str(if *b { "TRUE" } else { "FALSE" }),
            Tok::Let => f.write_str("LET"),
            Tok::Number(n) => f.write_str(n),
            Tok::Ident(i) => write!(f, "{i}"),
            Tok::SymbolIdent(i) => write!(f, "-{i}"),
            Tok::Op(o) => f.write_str(o),
            Tok::Str(_) => f.write_str("string"),
        }
    }
}

/// A lexer error: byte offset and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexError {
    pub offset: usize,
    pub message: String,
}

/// Multi-character operators first, then single characters (rule 12).
const OPERATORS: &[&str] = &[
    "<>", "!=", "<=", ">=", "=>", "=~", "-", "+", ":", "*", "/", "%", ",", ".", "(", ")", "=", "<",
    ">", "{", "}", "[", "]",
];

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Splits VQL into tokens with byte spans.
pub fn lex(src: &str) -> Result<Vec<(Tok, Range<usize>)>, LexError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |offset: usize, message: String| LexError { offset, message };
    while i < b.len() {
        let c = b[i];
        // 1. whitespace
        if matches!(c, b' ' | b'\t' | b'\r' | b'\n' | 0x0c) {
            i += 1;
            continue;
        }
        let rest = &b[i..];
        // 2-4. comments
        if rest.starts_with(b"/*") {
            match find(rest, b"*/", 2) {
                Some(end) => {
                    i += end + 2;
                    continue;
                }
                None => return Err(err(i, "unterminated /* comment".into())),
            }
        }
        if rest.starts_with(b"--") || rest.starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        // 5. EXPLAIN SELECT WHERE AND OR
        if let Some((tok, n)) = keyword(
            rest,
            &[
                ("EXPLAIN", Tok::Explain),
                ("SELECT", Tok::Select),
                ("WHERE", Tok::Where),
                ("AND", Tok::And),
                ("OR", Tok::Or),
            ],
        ) {
            out.push((tok, i..i + n));
            i += n;
            continue;
        }
        // 6-7. || and &&
        if c == b'|' {
            let n = rest.iter().take_while(|c| **c == b'|').count();
            out.push((Tok::AltOr, i..i + n));
            i += n;
            continue;
        }
        if rest.starts_with(b"&&") {
            out.push((Tok::AltAnd, i..i + 2));
            i += 2;
            continue;
        }
        // 8. FROM NOT AS IN LIMIT NULL DESC GROUP BY ORDER BY TRUE FALSE LET
        if let Some(n) = two_words(rest, b"GROUP") {
            out.push((Tok::GroupBy, i..i + n));
            i += n;
            continue;
        }
        if let Some(n) = two_words(rest, b"ORDER") {
            out.push((Tok::OrderBy, i..i + n));
            i += n;
            continue;
        }
        if let Some((tok, n)) = keyword(
            rest,
            &[
                ("FROM", Tok::From),
                ("NOT", Tok::Not),
                ("AS", Tok::As),
                ("IN", Tok::In),
                ("LIMIT", Tok::Limit),
                ("NULL", Tok::Null),
                ("DESC", Tok::Desc),
                ("TRUE", Tok::Bool(true)),
                ("FALSE", Tok::Bool(false)),
                ("LET", Tok::Let),
            ],
        ) {
            out.push((tok, i..i + n));
            i += n;
            continue;
        }
        // 9. numbers
        if let Some(n) = number(rest) {
            out.push((Tok::Number(src[i..i + n].to_string()), i..i + n));
            i += n;
            continue;
        }
        // 10. identifiers
        if let Some((name, n)) = ident(rest).map_err(|m| err(i, m))? {
            out.push((Tok::Ident(name), i..i + n));
            i += n;
            continue;
        }
        // 11. -identifier
        if c == b'-' {
            if let Some((name, n)) = ident(&rest[1..]).map_err(|m| err(i, m))? {
                out.push((Tok::SymbolIdent(name), i..i + 1 + n));
                i += 1 + n;
                continue;
            }
        }
        // 12. operators
        if let Some(op) = OPERATORS.iter().find(|op| rest.starts_with(op.as_bytes())) {
            out.push((Tok::Op(op), i..i + op.len()));
            i += op.len();
            continue;
        }
        // 13. '''raw'''
        if rest.starts_with(b"'''") {
            if let Some(end) = find(rest, b"'''", 3) {
                out.push((Tok::Str(rest[3..end].to_vec()), i..i + end + 3));
                i += end + 3;
                continue;
            }
        }
        // 14. quoted strings
        if c == b'\'' || c == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != c {
                if rest[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            if j >= rest.len() {
                return Err(err(i, "unterminated string".into()));
            }
            out.push((Tok::Str(unquote(&rest[1..j])), i..i + j + 1));
            i += j + 1;
            continue;
        }
        let ch = src[i..].chars().next().unwrap_or('?');
        return Err(err(i, format!("unexpected character {ch:?}")));
    }
    Ok(out)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    (from..=hay.len().saturating_sub(needle.len())).find(|&k| hay[k..].starts_with(needle))
}

/// A whole-word, case-insensitive keyword at the start of `rest`.
fn keyword(rest: &[u8], words: &[(&str, Tok)]) -> Option<(Tok, usize)> {
    for (w, tok) in words {
        let n = w.len();
        if rest.len() >= n
            && rest[..n].eq_ignore_ascii_case(w.as_bytes())
            && !rest.get(n).is_some_and(|c| is_ident_char(*c))
        {
            return Some((tok.clone(), n));
        }
    }
    None
}

/// `GROUP BY` / `ORDER BY` with any whitespace between the words.
fn two_words(rest: &[u8], first: &[u8]) -> Option<usize> {
    let n = first.len();
    if rest.len() < n || !rest[..n].eq_ignore_ascii_case(first) {
        return None;
    }
    let ws = rest[n..]
        .iter()
        .take_while(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n' | 0x0c))
        .count();
    if ws == 0 {
        return None;
    }
    let at = n + ws;
    if rest.len() >= at + 2
        && rest[at..at + 2].eq_ignore_ascii_case(b"BY")
        && !rest.get(at + 2).is_some_and(|c| is_ident_char(*c))
    {
        Some(at + 2)
    } else {
        None
    }
}

/// `-?(0x[0-9a-fA-F]+ | [0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?)`, anchored; its length.
fn number(rest: &[u8]) -> Option<usize> {
    let mut i = usize::from(rest.first() == Some(&b'-'));
    let digits =
        |from: usize, f: fn(u8) -> bool| rest[from..].iter().take_while(|c| f(**c)).count();
    if rest[i..].starts_with(b"0x") {
        let h = digits(i + 2, |c| c.is_ascii_hexdigit());
        if h > 0 {
            return Some(i + 2 + h);
        }
    }
    let int = digits(i, |c| c.is_ascii_digit());
    let after_int = i + int;
    let frac = if rest.get(after_int) == Some(&b'.') {
        digits(after_int + 1, |c| c.is_ascii_digit())
    } else {
        0
    };
    if frac > 0 {
        i = after_int + 1 + frac;
    } else if int > 0 {
        i = after_int;
    } else {
        return None;
    }
    if matches!(rest.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(rest.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let e = digits(j, |c| c.is_ascii_digit());
        if e > 0 {
            i = j + e;
        }
    }
    Some(i)
}

/// A plain or backticked identifier at the start of `rest`: (name, length).
fn ident(rest: &[u8]) -> Result<Option<(String, usize)>, String> {
    match rest.first() {
        Some(c) if is_ident_start(*c) => {
            let n = rest.iter().take_while(|c| is_ident_char(**c)).count();
            Ok(Some((String::from_utf8_lossy(&rest[..n]).into_owned(), n)))
        }
        Some(b'`') => match rest[1..].iter().position(|c| *c == b'`') {
            Some(end) => Ok(Some((
                String::from_utf8_lossy(&rest[1..1 + end]).into_owned(),
                end + 2,
            ))),
            None => Err("unterminated backtick identifier".into()),
        },
        _ => Ok(None),
    }
}

/// vfilter's string unquoting: `\n \r \t \\ \' \"`, `\xHH` to one byte, other `\c` to `c`,
/// an invalid `\x` kept verbatim, a lone trailing backslash dropped.
pub fn unquote(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' {
            out.push(s[i]);
            i += 1;
            continue;
        }
        let Some(&c) = s.get(i + 1) else {
            break; // lone trailing backslash
        };
        match c {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'x' => {
                let hex = s.get(i + 2..i + 4).and_then(|h| {
                    std::str::from_utf8(h)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                });
                match hex {
                    Some(v) if s[i + 2..i + 4].iter().all(u8::is_ascii_hexdigit) => {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                    _ => out.extend_from_slice(b"\\x"),
                }
            }
            other => out.push(other),
        }
        i += 2;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).unwrap().into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn rule_order_quirks() {
        assert_eq!(
            toks("x-1"),
            vec![Tok::Ident("x".into()), Tok::Number("-1".into())]
        );
        assert_eq!(
            toks("a-b"),
            vec![Tok::Ident("a".into()), Tok::SymbolIdent("b".into())]
        );
        assert_eq!(
            toks("0X10"),
            vec![Tok::Number("0".into()), Tok::Ident("X10".into())]
        );
        assert_eq!(toks("1."), vec![Tok::Number("1".into()), Tok::Op(".")]);
        assert_eq!(
            toks(".5 1e3"),
            vec![Tok::Number(".5".into()), Tok::Number("1e3".into())]
        );
        assert_eq!(
            toks("TRUE1 NULLX ANDY select_x"),
            ["TRUE1", "NULLX", "ANDY", "select_x"]
                .map(|s| Tok::Ident(s.into()))
                .to_vec()
        );
        assert_eq!(
            toks("group \n by oRdEr bY"),
            vec![Tok::GroupBy, Tok::OrderBy]
        );
        assert_eq!(toks("1--1"), vec![Tok::Number("1".into())]);
        assert_eq!(
            toks("a ||| b"),
            vec![Tok::Ident("a".into()), Tok::AltOr, Tok::Ident("b".into())]
        );
        assert_eq!(
            toks("1 /* x */ + 2 // c"),
            vec![
                Tok::Number("1".into()),
                Tok::Op("+"),
                Tok::Number("2".into())
            ]
        );
        assert_eq!(toks("`a b`"), vec![Tok::Ident("a b".into())]);
        assert_eq!(toks("'http://x'"), vec![Tok::Str(b"http://x".to_vec())]);
    }

    #[test]
    fn lexer_errors() {
        for bad in [
            "$x",
            "a; b",
            "'unterminated",
            "'''''",
            "a # b",
            "!x",
            "a & b",
            "`x",
        ] {
            assert!(lex(bad).is_err(), "{bad}");
        }
        assert_eq!(toks("'''a''b'''"), vec![Tok::Str(b"a''b".to_vec())]);
        assert_eq!(
            toks("'''Raw \\r\\n'''"),
            vec![Tok::Str(b"Raw \\r\\n".to_vec())]
        );
    }

    #[test]
    fn unquoting() {
        assert_eq!(
            unquote(br"With Hex \x01\x02\xf0\xf1"),
            b"With Hex \x01\x02\xf0\xf1".to_vec()
        );
        assert_eq!(unquote(br"Trailing \"), b"Trailing ".to_vec());
        assert_eq!(unquote(br"Invalid hex \xag"), b"Invalid hex \\xag".to_vec());
        assert_eq!(unquote(br"a\'b\q\n"), b"a'bq\n".to_vec());
    }
}
