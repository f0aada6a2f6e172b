//! The Server monitoring debug page (`/debug/monitoring`): each running source of the
//! server monitoring table with its principal, start times, restarts, last error and
//! last monitoring log lines; HTML or, with `?format=json`, the documented JSON twin.

use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use talon_shared::debug::view::{respond, IndexEntry, Section, View};

use crate::monitor::ServerMonitor;

/// Log lines shown per source.
const LAST_LINES: u64 = 3;

#[derive(serde::Deserialize)]
struct PageQuery {
    format: Option<String>,
}

#[derive(Clone)]
struct PageState {
    monitor: ServerMonitor,
    node: String,
}

/// The route, to merge into the debug server of node `node`.
pub fn routes(monitor: ServerMonitor, node: &str) -> Router {
    Router::new()
        .route("/debug/monitoring", get(page))
        .with_state(PageState {
            monitor,
            node: node.into(),
        })
}

/// The index entry of the page.
pub fn index() -> IndexEntry {
    IndexEntry::new(
        "Global",
        "Server monitoring",
        "/debug/monitoring",
        "each running source: principal, start, restarts, last error, last log lines",
    )
}

async fn page(State(s): State<PageState>, Query(q): Query<PageQuery>) -> Response {
    let rows = s
        .monitor
        .status()
        .into_iter()
        .map(|st| {
            let lines: Vec<String> = s
                .monitor
                .last_log_lines(&st.org, &st.artifact, LAST_LINES)
                .iter()
                .map(|l| {
                    format!(
                        "{}: {}",
                        l["Level"].as_str().unwrap_or(""),
                        l["Message"].as_str().unwrap_or("")
                    )
                })
                .collect();
            let mut v = serde_json::to_value(&st).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("last_log_lines".into(), Value::from(lines.join("\n")));
            }
            v
        })
        .collect();
    let suspended = if s.monitor.suspended() {
        "Suspended (--no-monitoring): nothing on the table runs."
    } else {
        "A query that fails or ends is restarted with backoff (1 s doubling to 60 s)."
    };
    let view = View {
        title: "Server monitoring".into(),
        category: "Global".into(),
        about: suspended.into(),
        sections: vec![Section::of_values(
            "Running sources",
            &[
                "org",
                "artifact",
                "queue",
                "principal",
                "started",
                "run_started",
                "restarts",
                "last_error",
                "last_error_at",
                "last_log_lines",
            ],
            rows,
        )],
        refresh_secs: 5,
        org: None,
    };
    respond(view, &s.node, q.format.as_deref())
}
