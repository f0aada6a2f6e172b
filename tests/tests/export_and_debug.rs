//! Time-range reads, per-day exports in Velociraptor's layout, the debug pages and metrics,
//! and config errors.

use talon_tests::*;

const QUEUE: &str = "Server.Audit.Logs";

#[test]
fn read_by_time_range_and_export_per_day() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    ok(&master.talon_stdin(
        &["events", "push", QUEUE],
        "{\"a\":1,\"s\":\"x,y\"}\n{\"b\":2}\n",
    ));
    let rows = json_lines(&ok(&master.talon(&["events", "read", QUEUE])));
    assert_eq!(rows.len(), 2);
    let ts = rows[0]["_ts"].as_i64().unwrap();

    // Ranges in unix seconds and RFC 3339.
    let before = (ts - 10).to_string();
    let after = (ts + 10).to_string();
    assert_eq!(
        json_lines(&ok(&master.talon(&[
            "events", "read", QUEUE, "--start", &before, "--end", &after
        ])))
        .len(),
        2
    );
    assert_eq!(
        json_lines(&ok(
            &master.talon(&["events", "read", QUEUE, "--start", &after])
        ))
        .len(),
        0
    );
    assert_eq!(
        json_lines(&ok(
            &master.talon(&["events", "read", QUEUE, "--end", &before])
        ))
        .len(),
        0
    );
    assert_eq!(
        json_lines(&ok(&master.talon(&[
            "events",
            "read",
            QUEUE,
            "--start",
            "2000-01-01T00:00:00Z"
        ])))
        .len(),
        2
    );
    let err = fails(
        &master.talon(&["events", "read", QUEUE, "--start", "soon"]),
        1,
    );
    assert!(
        err.contains("--start: time \"soon\" is neither RFC 3339 nor unix seconds"),
        "{err}"
    );

    let day = chrono_day(ts);
    let out = dir.path().join("export");
    let o = out.to_str().unwrap();
    ok(&master.talon(&["events", "export", QUEUE, "--out", o]));
    let jsonl = out.join(format!("server_artifacts/{QUEUE}/{day}.json"));
    let text =
        std::fs::read_to_string(&jsonl).unwrap_or_else(|e| panic!("{}: {e}", jsonl.display()));
    assert_eq!(json_lines(&text), rows);
    ok(&master.talon(&["events", "export", QUEUE, "--out", o, "--format", "csv"]));
    let csv =
        std::fs::read_to_string(out.join(format!("server_artifacts/{QUEUE}/{day}.csv"))).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "a,s,_ts,_Source,b");
    assert!(lines[1].starts_with("1,\"x,y\","), "{csv}");
    assert!(lines[2].starts_with(",,"), "{csv}");
    assert_eq!(lines.len(), 3);
}

fn chrono_day(ts: i64) -> String {
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let z = ts.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[test]
fn debug_pages_show_queue_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    ok(&master.talon_stdin(&["events", "push", QUEUE], "{}\n{}\n{}\n"));
    let mut watch = KillOnDrop(master.talon_spawn(&["events", "watch", QUEUE]));
    let rx = lines_of(&mut watch.0);
    assert!(wait_until(std::time::Duration::from_secs(20), || {
        master.queue_stats("root", QUEUE)["watchers"] == 1
    }));
    ok(&master.talon_stdin(&["events", "push", QUEUE], "{}\n"));
    rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
    let (status, html) = master.http_get("/debug/queues");
    assert!(status.contains("200"), "{status}");
    assert!(html.contains("<table"), "{html}");
    assert!(html.contains("<td>Server.Audit.Logs</td><td>SERVER_EVENT</td><td>true</td><td>1</td><td>4</td><td>0</td><td>0</td></tr>"), "{html}");
    // The JSON twin: {title, category, node, generated, sections: [{heading, columns, rows}]}.
    let (_, json) = master.http_get("/debug/queues?format=json");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["node"], "master");
    assert_eq!(v["sections"][0]["heading"], "Queues");
    let q = v["sections"][0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == QUEUE && q["org"] == "root")
        .unwrap();
    assert_eq!(q["rows_pushed"], 4);
    // The watcher is listed by name (the CLI's user) with its lag.
    let w = &q["watcher_list"][0];
    assert_eq!(w["name"], "admin", "{w}");
    assert!(html.contains("<h2>Watchers</h2>"), "{html}");
    assert!(w["lag"].as_u64().unwrap() <= 1, "{w}");
    let watchers = v["sections"][1]["rows"].as_array().unwrap();
    assert!(
        watchers
            .iter()
            .any(|r| r["queue"] == QUEUE && r["watcher"] == "admin"),
        "{v}"
    );
    let (_, metrics) = master.http_get("/metrics");
    assert!(
        metrics.contains("# TYPE talon_queue_rows_pushed_total counter"),
        "{metrics}"
    );
    assert!(metrics.contains("talon_queue_rows_pushed_total{org=\"root\",queue=\"Server.Audit.Logs\",type=\"SERVER_EVENT\"} 4"), "{metrics}");
}

#[test]
fn bad_config_is_a_usage_error_naming_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.yaml");
    std::fs::write(&config, "api_addr: 127.0.0.1:0\nretension: {}\n").unwrap();
    let out = std::process::Command::new(bin("talon-master"))
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2:1: unknown field `retension`",
            config.display()
        )),
        "{err}"
    );
    let out = std::process::Command::new(bin("talon-master"))
        .args(["--api-addr", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("api_addr \"nowhere\" is not HOST:PORT"));
}

#[test]
fn cli_usage_errors_exit_2() {
    let out = talon("127.0.0.1:1", &["events", "push"], None);
    assert_eq!(out.status.code(), Some(2));
    let out = talon("127.0.0.1:1", &["queues", "--format", "xml"], None);
    assert_eq!(out.status.code(), Some(2));
    // An unreachable server is an error (1), with one line naming the address.
    let out = talon("127.0.0.1:1", &["queues"], None);
    let err = fails(&out, 1);
    assert!(
        err.starts_with("talon: cannot connect to the Talon API at 127.0.0.1:1"),
        "{err}"
    );
}
