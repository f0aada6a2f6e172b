//! The one artifact loader used by server and CLI: load-time rewriting, strict YAML,
//! name and type rules, with errors that name the file, line and column.

use std::fmt;

use super::builtin;
use super::model::Artifact;

/// The artifact types of SPEC-VQL §3.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ArtifactKind {
    Client,
    ClientEvent,
    Server,
    ServerEvent,
    Notebook,
    Internal,
}

impl ArtifactKind {
    /// Parses a type as written in YAML (case-insensitive; empty means CLIENT).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "" | "client" => Self::Client,
            "client_event" => Self::ClientEvent,
            "server" => Self::Server,
            "server_event" => Self::ServerEvent,
            "notebook" => Self::Notebook,
            "internal" => Self::Internal,
            _ => return None,
        })
    }

    /// The canonical upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "CLIENT",
            Self::ClientEvent => "CLIENT_EVENT",
            Self::Server => "SERVER",
            Self::ServerEvent => "SERVER_EVENT",
            Self::Notebook => "NOTEBOOK",
            Self::Internal => "INTERNAL",
        }
    }

    /// Whether artifacts of this type establish an event queue.
    pub fn has_queue(self) -> bool {
        matches!(self, Self::ClientEvent | Self::ServerEvent | Self::Internal)
    }

    /// Whether the queue's rows are stored.
    pub fn is_durable(self) -> bool {
        matches!(self, Self::ClientEvent | Self::ServerEvent)
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An artifact that passed every load-time rule.
#[derive(Debug, Clone)]
pub struct LoadedArtifact {
    pub def: Artifact,
    pub kind: ArtifactKind,
    /// The YAML text as given (after CRLF normalisation).
    pub yaml: String,
    pub built_in: bool,
}

impl LoadedArtifact {
    /// Artifact name.
    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// The queue names this artifact establishes (`Name`, or `Name/Source` per named source).
    pub fn queue_names(&self) -> Vec<String> {
        if !self.kind.has_queue() {
            return Vec::new();
        }
        let mut names: Vec<String> = Vec::new();
        for s in &self.def.sources {
            let q = match s.name.as_deref() {
                Some(n) if !n.is_empty() => format!("{}/{}", self.def.name, n),
                _ => self.def.name.clone(),
            };
            if !names.contains(&q) {
                names.push(q);
            }
        }
        if names.is_empty() {
            names.push(self.def.name.clone());
        }
        names
    }
}

/// A load error: where (origin, 1-based line and column) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub origin: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.origin, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for LoadError {}

/// The largest artifact accepted, in bytes of YAML: checked before anything else, by the
/// server's add and update and by `talon artifacts verify` alike.
pub const MAX_ARTIFACT_BYTES: usize = 8 * 1024 * 1024;

/// Loads one artifact from YAML text. `origin` names the text in errors (a file name).
pub fn load(origin: &str, text: &str) -> Result<LoadedArtifact, LoadError> {
    load_with(origin, text, false)
}

/// Loads an artifact; `built_in` skips the rules that protect built-ins from being replaced.
pub(crate) fn load_with(
    origin: &str,
    text: &str,
    built_in: bool,
) -> Result<LoadedArtifact, LoadError> {
    if text.len() > MAX_ARTIFACT_BYTES {
        return Err(LoadError {
            origin: origin.to_string(),
            line: 1,
            column: 1,
            message: format!(
                "the artifact is {} bytes, over the limit of {MAX_ARTIFACT_BYTES} bytes (8 MiB)",
                text.len()
            ),
        });
    }
    let yaml = text.replace("\r\n", "\n");
    let (rewritten, line_origin) = rewrite_query_lines(&yaml);
    let err = |line: usize, column: usize, message: String| LoadError {
        origin: origin.to_string(),
        line,
        column,
        message,
    };
    let mut def: Artifact = serde_yaml::from_str(&rewritten).map_err(|e| {
        let (line, col) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let line = line_origin
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(line);
        err(line, col, yaml_message(&e))
    })?;
    let (name_line, name_col) = locate_key(&yaml, "name");
    validate_name(&def.name).map_err(|m| err(name_line, name_col, m))?;
    let type_text = def.type_.clone().unwrap_or_default();
    let kind = ArtifactKind::parse(&type_text).ok_or_else(|| {
        let (l, c) = locate_key(&yaml, "type");
        err(
            l,
            c,
            format!(
                "artifact {}: unknown type {type_text:?} (expected CLIENT, CLIENT_EVENT, SERVER, SERVER_EVENT, NOTEBOOK or INTERNAL)",
                def.name
            ),
        )
    })?;
    def.type_ = Some(kind.as_str().to_ascii_lowercase());
    for (i, source) in def.sources.iter_mut().enumerate() {
        if !source.queries.is_empty() {
            if source.query.is_some() {
                let (l, c) = locate_key(&yaml, "queries");
                return Err(err(
                    l,
                    c,
                    format!("source {i} of {}: both query and queries are set", def.name),
                ));
            }
            source.query = Some(std::mem::take(&mut source.queries).join("\n"));
        }
    }
    for report in &def.reports {
        let t = report.type_.as_deref().unwrap_or("").to_ascii_lowercase();
        let valid = [
            "",
            "client",
            "server_event",
            "monitoring_daily",
            "internal",
            "hunt",
            "templates",
            "html",
        ];
        if !valid.contains(&t.as_str()) {
            let (l, c) = locate_key(&yaml, "reports");
            return Err(err(
                l,
                c,
                format!("artifact {}: unknown report type {t:?}", def.name),
            ));
        }
    }
    if !built_in {
        if let Some(b) = builtin::find(&def.name) {
            if b.kind != kind {
                return Err(err(
                    name_line,
                    name_col,
                    format!(
                        "artifact {} is the built-in {} queue and cannot be redefined as {}",
                        def.name, b.kind, kind
                    ),
                ));
            }
        }
    }
    Ok(LoadedArtifact {
        def,
        kind,
        yaml,
        built_in,
    })
}

/// Checks the name rules: `[A-Za-z0-9_.]+`, no dot-separated part starting with a digit.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("artifact name is empty".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '.'))
    {
        return Err(format!(
            "artifact name {name:?} has the character {bad:?}; only letters, digits, '_' and '.' are allowed"
        ));
    }
    for part in name.split('.') {
        if part.is_empty() {
            return Err(format!(
                "artifact name {name:?} has an empty part between dots"
            ));
        }
        if part.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!(
                "artifact name {name:?}: part {part:?} starts with a digit"
            ));
        }
    }
    Ok(())
}

/// Velociraptor's load-time rewriting: a line that is just `query:` or `precondition:`
/// becomes a literal block, and a list item starting with `SELECT`, `LET` or `//` becomes a
/// literal block item, so multi-line VQL keeps its newlines. Returns the text and, for each
/// of its lines, the line of the original it came from (1-based).
fn rewrite_query_lines(text: &str) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(text.len() + 16);
    let mut origin = Vec::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let body = line.trim_end_matches('\n');
        let key = body.trim_start().trim_start_matches("- ").trim_end();
        let indent = &body[..body.len() - body.trim_start().len()];
        let item = body.trim_start().strip_prefix('-').map(str::trim_start);
        if key == "query:" || key == "precondition:" {
            out.push_str(body.trim_end());
            out.push_str(" |\n");
            origin.push(n + 1);
        } else if let Some(rest) = item.filter(|r| {
            let first = r.split_whitespace().next().unwrap_or("");
            first == "SELECT" || first == "LET" || r.starts_with("//")
        }) {
            out.push_str(&format!("{indent}- |\n{indent}  {rest}\n"));
            origin.extend([n + 1, n + 1]);
        } else {
            out.push_str(body);
            out.push('\n');
            origin.push(n + 1);
        }
    }
    (out, origin)
}

/// The 1-based line and column of the first top-level `key:` in the text, or 1:1.
fn locate_key(text: &str, key: &str) -> (usize, usize) {
    let prefix = format!("{key}:");
    for (i, line) in text.lines().enumerate() {
        if line.starts_with(&prefix) {
            return (i + 1, 1);
        }
    }
    (1, 1)
}

/// serde_yaml's message without its trailing " at line L column C" (we print the location first).
fn yaml_message(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_line_and_column() {
        let e = load("a.yaml", "name: X.Y\ntype: SERVER_EVENT\nbogus: 1\n").unwrap_err();
        assert_eq!((e.line, e.column), (3, 1));
        assert!(e.message.contains("unknown field `bogus`"), "{e}");
        assert!(e.to_string().starts_with("a.yaml:3:1: "), "{e}");
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["a-b", "X.1y", "", "a..b", "a b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        validate_name("Custom.Foo_2.Bar").unwrap();
    }

    #[test]
    fn type_is_case_insensitive_and_checked() {
        let a = load("a", "name: X\ntype: server_event\n").unwrap();
        assert_eq!(a.kind, ArtifactKind::ServerEvent);
        let e = load("a", "name: X\n\ntype: FOO\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("unknown type"), "{e}");
    }

    #[test]
    fn builtin_queue_keeps_its_type() {
        let e = load("a", "name: Server.Internal.Alerts\ntype: CLIENT_EVENT\n").unwrap_err();
        assert!(e.message.contains("built-in SERVER_EVENT queue"), "{e}");
    }

    #[test]
    fn bare_query_line_keeps_newlines_and_queries_fold() {
        let a = load(
            "a",
            "name: X\ntype: SERVER_EVENT\nsources:\n- name: S\n  query:\n    LET A = 1\n    SELECT * FROM scope()\n- queries:\n  - SELECT 1 FROM scope()\n  - SELECT 2 FROM scope()\n",
        )
        .unwrap();
        assert_eq!(
            a.def.sources[0].query.as_deref(),
            Some("LET A = 1\nSELECT * FROM scope()\n")
        );
        assert_eq!(
            a.def.sources[1].query.as_deref(),
            Some("SELECT 1 FROM scope()\n\nSELECT 2 FROM scope()\n")
        );
        assert_eq!(a.queue_names(), vec!["X/S".to_string(), "X".to_string()]);
    }

    #[test]
    fn list_items_of_vql_become_literal_blocks() {
        let text = "name: X\ntype: SERVER_EVENT\nsources:\n- queries:\n  - SELECT * FROM info()\n    WHERE TRUE\n  - LET X = 1\n    SELECT X FROM scope()\nbogus: 1\n";
        let e = load("a", text).unwrap_err();
        // Lines added by the rewriting do not shift the reported line.
        assert_eq!(e.line, 9, "{e}");
        let ok = load("a", &text.replace("bogus: 1\n", "")).unwrap();
        assert_eq!(
            ok.def.sources[0].query.as_deref(),
            Some("SELECT * FROM info()\nWHERE TRUE\n\nLET X = 1\nSELECT X FROM scope()\n")
        );
    }

    #[test]
    fn all_schema_keys_are_accepted() {
        let text = r#"
name: Full.Schema
aliases: [Other.Name]
description: d
author: me
reference: [https://example.com]
references: [https://example.com]
required_permissions: [COLLECT_SERVER]
implied_permissions: [READ_RESULTS]
impersonate: admin
resources: {timeout: 10, ops_per_second: 5, cpu_limit: 50, iops_limit: 1, max_rows: 10, max_upload_bytes: 1, max_batch_wait: 1, max_batch_rows: 1, max_batch_rows_buffer: 1}
tools: [{name: t, url: "http://x", github_project: a/b, github_asset_regex: ".", serve_locally: true, expected_hash: "00", version: "1", filename: f}]
precondition: SELECT * FROM info()
parameters:
- {name: P, default: 5, description: d, type: int, choices: [a], friendly_name: f, validating_regex: ".", artifact_type: CLIENT, sources: [s]}
type: SERVER
sources:
- name: s
  description: d
  query: SELECT * FROM info()
  notebook: [{type: vql, name: n, template: t, output: o, env: [{key: k, value: v}]}]
imports: [Other.Artifact]
export: LET X = 1
reports: [{type: html, timeout: 5, name: r, template: t, parameters: [{name: p}]}]
column_types: [{name: c, type: timestamp, description: d}]
raw: ignored
compiled: true
built_in: true
compiled_in: true
is_alias: false
is_inherited: false
metadata: {hidden: true}
"#;
        let a = load("full.yaml", text).unwrap();
        assert_eq!(a.def.parameters[0].default.as_deref(), Some("5"));
        assert_eq!(a.kind, ArtifactKind::Server);
    }
}
