//! Debug HTTP, on every node: the index `/debug` (every page by category), the pages
//! (`/debug/queues` per org, `/debug/logs`, and those a node adds, each HTML and JSON
//! with `?format=json`, shown through [`view`]), `/debug/watch` and `/metrics`
//! (Prometheus text format). Bound to a loopback address it is open
//! to the host; bound to any other, every page needs `Authorization: Bearer TOKEN` of a
//! user (`talon user add` writes one into the user's API config) holding READ_RESULTS in
//! the page's org (`?org=`, default root), or a token of the node's config.

pub mod view;

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::queue::{QueueManager, QueueStats};

/// The debug router over a queue manager.
/// What the debug pages read: the queue manager and, in a cluster, the bus.
#[derive(Clone)]
pub struct Pages {
    /// This node's name, shown on every page.
    pub node: String,
    /// Pages the node adds (the master's mail outbox ...), listed on the index.
    pub extra: Arc<Vec<view::IndexEntry>>,
    pub qm: QueueManager,
    pub bus: Option<crate::bus::Bus>,
    /// The clients connected to this node.
    pub frontend: crate::frontend::FrontendService,
    /// Streaming pages (`/debug/watch`) end when this fires, so they never hold up a
    /// graceful shutdown.
    pub stop: talon_core::Shutdown,
}

/// Who may read the debug pages when they are off loopback.
pub trait DebugAuth: Send + Sync {
    /// The permissions the bearer of `token` holds in `org`, or why it holds none.
    fn check(&self, token: &str, org: &str) -> Result<talon_core::acl::Permissions, String>;
}

/// Tokens of a node's config (SHA-256, hex), each with every permission.
pub struct ConfigTokens(pub Vec<String>);

impl DebugAuth for ConfigTokens {
    fn check(&self, token: &str, _org: &str) -> Result<talon_core::acl::Permissions, String> {
        if self.0.contains(&talon_core::deploy::token_sha256(token)) {
            Ok(talon_core::acl::Permissions::all())
        } else {
            Err("unknown token".into())
        }
    }
}

/// What the bearer of a request's token may do (set off loopback, where pages that show
/// more than READ_RESULTS allows check it; absent on loopback, which the host owns).
#[derive(Debug, Clone, Copy)]
pub struct Bearer(pub talon_core::acl::Permissions);

/// Requires a bearer token with READ_RESULTS in the request's org (`org=`, else root).
pub async fn require_token(
    State(auth): State<std::sync::Arc<dyn DebugAuth>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let unauthorized = |why: String| {
        (
            axum::http::StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            format!("{why}: the debug pages off loopback need Authorization: Bearer TOKEN (talon user add writes debug_token into the user's API config)\n"),
        )
            .into_response()
    };
    let Some(token) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return unauthorized("no bearer token".into());
    };
    let org = req
        .uri()
        .query()
        .and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "org")
                .map(|(_, v)| v.to_string())
        })
        .unwrap_or_else(|| crate::queue::ROOT_ORG.to_string());
    match auth.check(token, &org) {
        Ok(p) if p.has(talon_core::acl::Permission::ReadResults) => {
            req.extensions_mut().insert(Bearer(p));
            next.run(req).await
        }
        Ok(_) => (
            axum::http::StatusCode::FORBIDDEN,
            format!("no READ_RESULTS permission in org {org}\n"),
        )
            .into_response(),
        Err(why) => unauthorized(why),
    }
}

/// The debug router over `pages`.
pub fn router(pages: Pages) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/debug", get(index))
        .route("/debug/queues", get(queues_page))
        .route("/debug/logs", get(logs_page))
        .route("/debug/clients", get(clients_page))
        .route("/metrics", get(metrics))
        .route("/debug/watch", get(watch))
        .fallback(not_found)
        .with_state(pages)
}

/// Any other path: a 404 that says what exists.
async fn not_found(uri: axum::http::Uri) -> Response {
    let only_cluster = if uri.path() == "/debug/persister" {
        " (/debug/persister exists on the master of a cluster only)"
    } else {
        ""
    };
    (
        axum::http::StatusCode::NOT_FOUND,
        format!(
            "no page {}{only_cluster}; /debug lists every page\n",
            uri.path()
        ),
    )
        .into_response()
}

#[derive(Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

async fn index(State(p): State<Pages>, Query(q): Query<FormatQuery>) -> Response {
    use view::IndexEntry as E;
    let mut entries = vec![
        E::new(
            "Global",
            "Queues of every org",
            "/debug/queues",
            "each queue: type, durability, watchers, rows pushed, dropped, caught up",
        ),
        E::new(
            "Global",
            "Logs",
            "/debug/logs",
            "the last log lines of this process",
        ),
        E::new("Global", "Metrics", "/metrics", "Prometheus text"),
        E::new(
            "Client",
            "Connected clients",
            "/debug/clients",
            "the clients connected to this node, with their records",
        ),
        E::new(
            "Global",
            "Watch a queue",
            "/debug/watch?queue=Server.Audit.Logs",
            "a queue's rows as JSON Lines, from now on (?queue=NAME&org=ORG)",
        ),
    ];
    for org in p.qm.orgs() {
        entries.push(E::new(
            &format!("Org / {org} / Services"),
            "QueueManager",
            &format!("/debug/queues?org={org}"),
            "the org's queues and their watchers",
        ));
    }
    entries.extend(p.extra.iter().cloned());
    view::index(&entries, &p.node, q.format.as_deref())
}

/// Clients a page lists at most.
const PAGE_CLIENTS: usize = 5000;

async fn clients_page(State(p): State<Pages>, Query(q): Query<FormatQuery>) -> Response {
    let records = p.frontend.clients();
    let mut rows = Vec::new();
    let mut connected = 0usize;
    for org in p.qm.orgs() {
        for id in p.frontend.connected(&org) {
            connected += 1;
            if rows.len() >= PAGE_CLIENTS {
                continue;
            }
            let r = records.get(&org, &id).ok().flatten();
            let mut m = serde_json::Map::new();
            m.insert("org".into(), org.clone().into());
            m.insert("client_id".into(), id.clone().into());
            if let Some(r) = r {
                m.insert("hostname".into(), r.hostname.into());
                m.insert("os".into(), r.os.into());
                m.insert("labels".into(), r.labels.join(",").into());
                m.insert("last_ip".into(), r.last_ip.into());
                m.insert(
                    "last_seen".into(),
                    talon_core::timefmt::rfc3339(r.last_seen_at).into(),
                );
                m.insert("version".into(), r.version.into());
                m.insert("table_version".into(), r.last_event_table_version.into());
            }
            rows.push(m);
        }
    }
    let v = view::View {
        title: "Connected clients".into(),
        category: "Client".into(),
        about: format!(
            "{connected} clients connected to node {}{}.",
            p.node,
            if connected > PAGE_CLIENTS {
                format!("; the first {PAGE_CLIENTS} are listed")
            } else {
                String::new()
            }
        ),
        sections: vec![view::Section::new(
            "Clients",
            &[
                "org",
                "client_id",
                "hostname",
                "os",
                "labels",
                "last_ip",
                "last_seen",
                "version",
                "table_version",
            ],
            rows,
        )],
        refresh_secs: 5,
        org: None,
    };
    view::respond(v, &p.node, q.format.as_deref())
}

async fn logs_page(State(p): State<Pages>, Query(q): Query<FormatQuery>) -> Response {
    let rows = talon_core::telemetry::recent_lines()
        .into_iter()
        .rev()
        .map(|line| {
            let mut m = serde_json::Map::new();
            m.insert("line".into(), serde_json::Value::String(line));
            m
        })
        .collect();
    let v = view::View {
        title: "Logs".into(),
        category: "Global".into(),
        about: format!(
            "The last {} log lines of this process, newest first.",
            talon_core::telemetry::RECENT_LINES
        ),
        sections: vec![view::Section::new("Log lines", &["line"], rows)],
        refresh_secs: 5,
        org: None,
    };
    view::respond(v, &p.node, q.format.as_deref())
}

#[derive(Deserialize)]
struct WatchQuery {
    queue: String,
    org: Option<String>,
}

/// Streams a queue's rows as this node's watchers see them, as JSON Lines, from now on
/// (on any node: the way to check a minion's view of a queue).
async fn watch(
    State(Pages { qm, stop, .. }): State<Pages>,
    Query(q): Query<WatchQuery>,
) -> Response {
    let org = q.org.unwrap_or_else(|| crate::queue::ROOT_ORG.to_string());
    let mut watcher = match qm.watch(&org, &q.queue, "debug-http").await {
        Ok(w) => w,
        Err(e) => {
            return (axum::http::StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    let rows = async_stream::stream! {
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => break,
                ev = watcher.next() => match ev { Ok(ev) => ev, Err(_) => break },
            };
            let mut line = ev.row.json.clone();
            line.push('\n');
            yield Ok::<_, std::convert::Infallible>(line);
        }
    };
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(rows),
    )
        .into_response()
}

#[derive(Deserialize)]
struct QueuesQuery {
    format: Option<String>,
    org: Option<String>,
}

fn all_stats(qm: &QueueManager, org: Option<&str>) -> Vec<QueueStats> {
    match org {
        Some(o) => qm.stats(o),
        None => qm.orgs().iter().flat_map(|o| qm.stats(o)).collect(),
    }
}

async fn queues_page(State(p): State<Pages>, Query(q): Query<QueuesQuery>) -> Response {
    let stats = all_stats(&p.qm, q.org.as_deref());
    let to_map = |v: serde_json::Value| match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    let queues = stats
        .iter()
        .map(|s| to_map(serde_json::to_value(s).unwrap_or_default()))
        .collect();
    let watchers = stats
        .iter()
        .flat_map(|s| {
            s.watcher_list.iter().map(|w| {
                to_map(serde_json::json!({"org": s.org, "queue": s.name, "watcher": w.name, "rows_behind": w.lag}))
            })
        })
        .collect();
    let (title, category) = match &q.org {
        Some(o) => (
            format!("QueueManager of {o}"),
            format!("Org / {o} / Services"),
        ),
        None => ("Queues of every org".to_string(), "Global".to_string()),
    };
    let v = view::View {
        title,
        category,
        about: "Rows pushed, dropped (missed by slow watchers) and caught up (read back from the store) since this node started.".into(),
        sections: vec![
            view::Section::new(
                "Queues",
                &["org", "name", "type", "durable", "watchers", "rows_pushed", "rows_dropped", "rows_caught_up"],
                queues,
            ),
            view::Section::new("Watchers", &["org", "queue", "watcher", "rows_behind"], watchers),
        ],
        refresh_secs: 5,
        org: q.org.clone(),
    };
    view::respond(v, &p.node, q.format.as_deref())
}

/// A Prometheus metric family: name, type, help, and how to read it from a queue's stats.
type MetricFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&QueueStats) -> u64,
);

async fn metrics(State(Pages { qm, bus, .. }): State<Pages>) -> Response {
    let stats = all_stats(&qm, None);
    let mut out = String::new();
    let families: [MetricFamily; 4] = [
        (
            "talon_queue_rows_pushed_total",
            "counter",
            "Rows pushed to a queue since start.",
            |s| s.rows_pushed,
        ),
        (
            "talon_queue_rows_dropped_total",
            "counter",
            "Rows slow watchers of a queue missed.",
            |s| s.rows_dropped,
        ),
        (
            "talon_queue_rows_caught_up_total",
            "counter",
            "Rows lagging watchers read back from the store.",
            |s| s.rows_caught_up,
        ),
        (
            "talon_queue_watchers",
            "gauge",
            "Watchers of a queue now.",
            |s| s.watchers,
        ),
    ];
    for (name, kind, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in &stats {
            let _ = writeln!(
                out,
                "{name}{{org=\"{}\",queue=\"{}\",type=\"{}\"}} {}",
                label(&s.org),
                label(&s.name),
                s.kind,
                get(s)
            );
        }
    }
    if let Some(bus) = &bus {
        let _ = writeln!(
            out,
            "# HELP talon_bus_connected Whether this node is connected to NATS.\n# TYPE talon_bus_connected gauge\ntalon_bus_connected {}",
            u8::from(bus.connected())
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
