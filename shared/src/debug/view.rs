//! How a debug page is shown: a [`View`] (title, category, sections of rows) rendered as
//! HTML by the minijinja templates in `templates/` (auto-escaped; sortable, filterable,
//! refreshing, with no script from elsewhere), or as its JSON twin with `?format=json`:
//!
//! ```json
//! {"title": "...", "category": "...", "node": "...", "generated": "RFC 3339",
//!  "sections": [{"heading": "...", "columns": ["..."], "rows": [{"column": value}]}]}
//! ```
//!
//! and the [`IndexEntry`]s the index page lists by category.

use std::sync::OnceLock;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use minijinja::{context, Environment};
use serde::Serialize;
use serde_json::{Map, Value};

/// One table of a page.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub heading: String,
    pub columns: Vec<String>,
    pub rows: Vec<Map<String, Value>>,
}

impl Section {
    /// A section of rows shown in `columns` order.
    pub fn new(heading: &str, columns: &[&str], rows: Vec<Map<String, Value>>) -> Section {
        Section {
            heading: heading.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows,
        }
    }

    /// A section of JSON objects (other values are skipped).
    pub fn of_values(heading: &str, columns: &[&str], rows: Vec<Value>) -> Section {
        let rows = rows
            .into_iter()
            .filter_map(|v| match v {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .collect();
        Self::new(heading, columns, rows)
    }
}

/// A page: what it shows and where it belongs.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub title: String,
    pub category: String,
    /// One line under the title.
    pub about: String,
    pub sections: Vec<Section>,
    /// Seconds between reloads of the HTML page; 0: none.
    #[serde(skip)]
    pub refresh_secs: u32,
    /// The org the page shows, kept in its JSON link.
    #[serde(skip)]
    pub org: Option<String>,
}

/// A page the index lists.
#[derive(Debug, Clone, Serialize)]
pub struct IndexEntry {
    /// `Global`, `Org / <org> / Services`, `Cluster`, `Client` ...
    pub category: String,
    pub title: String,
    pub path: String,
    pub about: String,
}

impl IndexEntry {
    pub fn new(category: &str, title: &str, path: &str, about: &str) -> IndexEntry {
        IndexEntry {
            category: category.into(),
            title: title.into(),
            path: path.into(),
            about: about.into(),
        }
    }
}

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.add_template("page.html", include_str!("templates/page.html"))
            .expect("page template parses");
        env.add_template("index.html", include_str!("templates/index.html"))
            .expect("index template parses");
        env
    })
}

/// A cell as text: strings as they are, NULL empty, others as JSON.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn error(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("cannot render the page: {e}\n"),
    )
        .into_response()
}

/// The page as HTML, or as its JSON twin when `format` is `json`.
pub fn respond(view: View, node: &str, format: Option<&str>) -> Response {
    let now = talon_core::timefmt::rfc3339(chrono::Utc::now().timestamp_micros());
    if format == Some("json") {
        let mut v = serde_json::to_value(&view).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("node".into(), Value::String(node.into()));
            m.insert("generated".into(), Value::String(now));
        }
        let body = serde_json::to_string_pretty(&v).unwrap_or_default();
        return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    let sections: Vec<Value> = view
        .sections
        .iter()
        .map(|s| {
            let cells: Vec<Vec<String>> = s
                .rows
                .iter()
                .map(|r| s.columns.iter().map(|c| cell(r.get(c))).collect())
                .collect();
            serde_json::json!({"heading": s.heading, "columns": s.columns, "cells": cells})
        })
        .collect();
    let rendered = env().get_template("page.html").and_then(|t| {
        t.render(context! {
            title => view.title,
            category => view.category,
            about => view.about,
            node => node,
            now => now,
            refresh => view.refresh_secs,
            org => view.org,
            sections => sections,
        })
    });
    match rendered {
        Ok(html) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(e) => error(e),
    }
}

/// The index: every entry by category, in the order given; JSON: `{node, pages: [...]}`.
pub fn index(entries: &[IndexEntry], node: &str, format: Option<&str>) -> Response {
    if format == Some("json") {
        let body =
            serde_json::to_string_pretty(&serde_json::json!({"node": node, "pages": entries}))
                .unwrap_or_default();
        return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    let mut categories: Vec<(String, Vec<&IndexEntry>)> = Vec::new();
    for e in entries {
        match categories.iter_mut().find(|(c, _)| *c == e.category) {
            Some((_, pages)) => pages.push(e),
            None => categories.push((e.category.clone(), vec![e])),
        }
    }
    let categories: Vec<Value> = categories
        .into_iter()
        .map(|(name, pages)| serde_json::json!({"name": name, "pages": pages}))
        .collect();
    match env()
        .get_template("index.html")
        .and_then(|t| t.render(context! { node => node, categories => categories }))
    {
        Ok(html) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(e) => error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cells_are_escaped_and_the_twin_keeps_types() {
        let mut row = Map::new();
        row.insert("name".into(), Value::String("<script>x</script>".into()));
        row.insert("n".into(), Value::from(3));
        let view = View {
            title: "T".into(),
            category: "Global".into(),
            about: String::new(),
            sections: vec![Section::new("S", &["name", "n"], vec![row])],
            refresh_secs: 5,
            org: None,
        };
        let html = respond(view.clone(), "master", None);
        let body = axum::body::to_bytes(html.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.contains("&lt;script&gt;x&lt;&#x2f;script&gt;") || text.contains("&lt;script&gt;"),
            "{text}"
        );
        assert!(!text.contains("<script>x</script>"));
        let json = respond(view, "master", Some("json"));
        let body = axum::body::to_bytes(json.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["sections"][0]["rows"][0]["n"], 3);
        assert_eq!(v["node"], "master");
    }
}
