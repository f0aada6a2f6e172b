//! The debug pages in a real browser and their metrics in a real checker: headless
//! Chromium (Debian's `chromium`) opens every page the index of a cluster's master and of
//! a minion lists, with its script running, and each renders its heading and rows; every
//! JSON twin has the documented shape, a client connected to the minion is on its Clients
//! page; `promtool check metrics` (Debian's `prometheus`)
//! accepts each node's `/metrics`.

use std::net::SocketAddr;
use std::process::Command;

use serde_json::Value;
use talon_tests::cluster::cluster;

fn get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{path}: {head}"
    );
    body.to_string()
}

/// The page's DOM after its script ran, as headless Chromium renders it.
fn rendered(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs (scripts/test installs Debian's chromium)");
    assert!(
        out.status.success(),
        "chromium {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn check_node(debug: SocketAddr, node: &str) {
    let index: Value = serde_json::from_str(&get(debug, "/debug?format=json")).unwrap();
    assert_eq!(index["node"], node);
    let pages = index["pages"].as_array().unwrap();
    let dom = rendered(&format!("http://{debug}/debug"));
    assert!(dom.contains(&format!("Talon debug: node {node}")), "{dom}");
    for category in ["Global", "Org / root / Services"] {
        assert!(
            dom.contains(&format!("<h2>{category}</h2>")),
            "{category}: {dom}"
        );
    }
    let mut seen = 0;
    for p in pages {
        let path = p["path"].as_str().unwrap();
        let title = p["title"].as_str().unwrap();
        assert!(dom.contains(title), "the index does not show {title}");
        if path.starts_with("/debug/watch") || path == "/metrics" || path == "/debug/persister" {
            continue;
        }
        let page = rendered(&format!("http://{debug}{path}"));
        assert!(!page.contains("cannot render"), "{path}: {page}");
        assert!(page.contains("<h1>"), "{path}: no heading: {page}");
        // The page's script ran in the browser (it marks the body once the tables are
        // sortable and filterable).
        assert!(
            page.contains("data-tables=\"ready\"") && page.contains("<table"),
            "{path}: {page}"
        );
        let sep = if path.contains('?') { '&' } else { '?' };
        let twin: Value =
            serde_json::from_str(&get(debug, &format!("{path}{sep}format=json"))).unwrap();
        assert_eq!(twin["node"], node, "{path}");
        for key in ["title", "category", "generated"] {
            assert!(twin[key].is_string(), "{path}: no {key}: {twin}");
        }
        for s in twin["sections"].as_array().unwrap() {
            assert!(s["heading"].is_string() && s["columns"].is_array() && s["rows"].is_array());
            // Where rows exist, the browser shows them.
            if let Some(first) = s["rows"].as_array().unwrap().first() {
                let col = s["columns"][0].as_str().unwrap();
                if let Some(v) = first[col]
                    .as_str()
                    .filter(|v| !v.is_empty() && !v.contains(['<', '>', '&', '"', '/']))
                {
                    assert!(
                        page.contains(&format!("<td>{v}</td>")),
                        "{path}: row {v} missing"
                    );
                }
            }
        }
        seen += 1;
    }
    assert!(seen >= 3, "only {seen} pages on {node}");
    // Queues exist on every node, so the queue page has rows.
    let queues = rendered(&format!("http://{debug}/debug/queues"));
    assert!(queues.contains("<td>Server.Audit.Logs</td>"), "{queues}");

    // promtool accepts the metrics.
    let metrics = get(debug, "/metrics");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/test installs Debian's prometheus)");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(metrics.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool on {node}: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_page_of_a_master_and_a_minion_renders_in_a_browser_and_metrics_pass_promtool() {
    let c = cluster();
    // A client on minion a, so its Clients page has a row.
    let state = c.dir.path().join("client");
    let client =
        talon_tests::Client::start(&c.a.frontend.to_string(), &state, &["--hostname", "web-9"]);
    let id = client.id();
    assert!(
        talon_tests::wait_until(std::time::Duration::from_secs(30), || {
            let page: Value =
                serde_json::from_str(&get(c.a.debug, "/debug/clients?format=json")).unwrap();
            page["sections"][0]["rows"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|r| r["client_id"] == id.as_str() && r["hostname"] == "web-9")
            })
        }),
        "the client never showed on minion a's Clients page"
    );
    check_node(c.master.debug, "master");
    check_node(c.a.debug, &c.a.name);
    // The master lists its own pages too.
    let index = get(c.master.debug, "/debug?format=json");
    for path in ["/debug/mail", "/debug/messages", "/debug/persister"] {
        assert!(index.contains(path), "{path}: {index}");
    }
}
