//! The automation debug pages: `/debug/mail` (the outbox, newest first: every mail's
//! state, tries and last error) and `/debug/messages` (each user's messages), each as an
//! HTML table and, with `?format=json`, as JSON (the rows of `mail_outbox()` and
//! `user_messages()`). They sit behind the debug server's bearer check off loopback.

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use talon_shared::debug::escape;

use super::record::Mail;
use super::Automation;

/// Mails a page shows at most.
const PAGE_MAILS: usize = 1000;

#[derive(serde::Deserialize)]
struct PageQuery {
    format: Option<String>,
}

/// The routes, to merge into the debug server.
pub fn routes(a: Automation) -> Router {
    Router::new()
        .route("/debug/mail", get(mail_page))
        .route("/debug/messages", get(messages_page))
        .with_state(a)
}

fn json(v: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(v).unwrap_or_default(),
    )
        .into_response()
}

fn html(title: &str, table: String) -> Response {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Talon {t}</title></head>\
         <body><h1>{t}</h1>{table}</body></html>",
        t = escape(title)
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn cell(v: &Value) -> String {
    escape(&match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

async fn mail_page(State(a): State<Automation>, Query(q): Query<PageQuery>) -> Response {
    let rows: Vec<Value> = a
        .outbox
        .list(None, None, PAGE_MAILS)
        .iter()
        .map(Mail::row)
        .collect();
    if q.format.as_deref() == Some("json") {
        return json(&Value::Array(rows));
    }
    let cols = [
        "id",
        "state",
        "created",
        "org",
        "to",
        "subject",
        "attempts",
        "last_error",
        "held_until",
        "sent",
        "merged_into",
        "principal",
    ];
    let mut t = String::from("<table border=\"1\"><thead><tr>");
    for c in cols {
        let _ = write!(t, "<th>{c}</th>");
    }
    t.push_str("</tr></thead><tbody>");
    for r in &rows {
        t.push_str("<tr>");
        for c in cols {
            let _ = write!(t, "<td>{}</td>", cell(&r[c]));
        }
        t.push_str("</tr>");
    }
    t.push_str("</tbody></table>");
    html("Mail outbox", t)
}

async fn messages_page(State(a): State<Automation>, Query(q): Query<PageQuery>) -> Response {
    let mut rows = Vec::new();
    for user in a.users.list().unwrap_or_default() {
        for m in a.messages.read(&user.name, false).await.unwrap_or_default() {
            let mut m = m;
            if let Value::Object(o) = &mut m {
                o.insert("User".into(), Value::String(user.name.clone()));
            }
            rows.push(m);
        }
    }
    if q.format.as_deref() == Some("json") {
        return json(&Value::Array(rows));
    }
    let mut t = String::from(
        "<table border=\"1\"><thead><tr><th>user</th><th>time</th><th>from</th><th>message</th></tr></thead><tbody>",
    );
    for r in &rows {
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            cell(&r["User"]),
            cell(&r["Timestamp"]),
            cell(&r["From"]),
            cell(&r["Message"])
        );
    }
    t.push_str("</tbody></table>");
    html("User messages", t)
}
