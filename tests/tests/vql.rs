//! VQL through the server: `talon query`, send_event and watch_monitoring across queries,
//! alert() dedup kept in the store, and bad queries that harm nothing else.

use std::time::Duration;

use talon_tests::*;

#[test]
fn or_binds_tighter_than_and() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let out = ok(&master.talon(&["query", "SELECT TRUE OR FALSE AND FALSE AS X FROM scope()"]));
    assert_eq!(json_lines(&out), vec![serde_json::json!({"X": false})]);
}

#[test]
fn watch_monitoring_sees_rows_sent_by_another_query() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let (_watch, rx) = master.spawn_watching(
        &[
            "query",
            "SELECT * FROM watch_monitoring(artifact='Server.Audit.Logs')",
            "--timeout",
            "30",
        ],
        "root",
        "Server.Audit.Logs",
        1,
    );
    let sent = ok(&master.talon(&[
        "query",
        "SELECT send_event(artifact='Server.Audit.Logs', row=dict(operation='vql', n=7)) AS sent FROM scope()",
    ]));
    assert_eq!(json_lines(&sent)[0]["sent"]["n"], 7);
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the watcher saw the row");
    let row: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(row["n"], 7);
    // _Source is who sent the row (the query's principal), as stored.
    assert!(row["_Source"] == "admin", "{row}");
    assert!(row["_ts"].as_i64().unwrap() > 1_700_000_000);
    // The row is stored too, with the sender as _Source.
    let stored = json_lines(&ok(&master.talon(&["events", "read", "Server.Audit.Logs"])));
    assert!(stored[0]["_Source"] == "admin", "{stored:?}");
}

#[test]
fn send_event_refuses_internal_and_client_queues() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    for (queue, kind) in [
        ("Server.Internal.Ping", "INTERNAL"),
        ("Generic.Client.Stats", "CLIENT_EVENT"),
    ] {
        let q = format!("SELECT send_event(artifact='{queue}', row=dict(a=1)) AS s FROM scope()");
        let out = master.talon(&["query", &q]);
        assert_eq!(json_lines(&ok(&out)), vec![serde_json::json!({"s": null})]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "queue {queue} is {kind}; send_event may write SERVER_EVENT queues only"
            )),
            "{err}"
        );
    }
    let out = master.talon(&[
        "query",
        "SELECT send_event(artifact='Server.Audit.Logs', row='text') AS s FROM scope()",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("send_event: row must be a dict, got string")
    );
    assert!(json_lines(&ok(&master.talon(&["events", "read", "Server.Audit.Logs"]))).is_empty());
}

fn alerts_named(master: &Master, name: &str) -> usize {
    json_lines(&ok(&master.talon(&[
        "events",
        "read",
        "Server.Internal.Alerts",
    ])))
    .iter()
    .filter(|r| r["name"] == name)
    .count()
}

#[test]
fn ten_alerts_give_one_row_and_nine_info_lines_and_the_window_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let mut master = Master::start(&store, &[]);
    let out = master.talon(&[
        "query",
        "SELECT alert(name='Ten', source='test') AS a FROM range(end=10)",
    ]);
    let rows = json_lines(&ok(&out));
    assert_eq!(rows.iter().filter(|r| r["a"] == true).count(), 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("INFO: Alert Ten (Sup): "))
            .count(),
        9,
        "{err}"
    );
    assert_eq!(alerts_named(&master, "Ten"), 1);
    let stored = json_lines(&ok(&master.talon(&[
        "events",
        "read",
        "Server.Internal.Alerts",
    ])));
    assert_eq!(stored[0]["client_id"], "server");
    assert_eq!(stored[0]["event_data"]["source"], "test");

    ok(&master.talon(&[
        "query",
        "SELECT alert(name='Every', dedup=-1) FROM range(end=10)",
    ]));
    assert_eq!(alerts_named(&master, "Every"), 10);

    // The dedup window is kept in the store: a restart does not reopen it.
    master.kill9();
    let master = Master::start(&store, &[]);
    ok(&master.talon(&["query", "SELECT alert(name='Ten') FROM scope()"]));
    assert_eq!(alerts_named(&master, "Ten"), 1);
    // A short window reopens.
    ok(&master.talon(&[
        "query",
        "SELECT alert(name='Short', dedup=0) FROM range(end=2)",
    ]));
    assert_eq!(alerts_named(&master, "Short"), 2);
}

#[test]
fn bad_queries_get_clear_errors_and_harm_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let (_watch, rx) = master.spawn_watching(
        &[
            "query",
            "SELECT * FROM watch_monitoring(artifact='Server.Audit.Logs')",
            "--timeout",
            "60",
        ],
        "root",
        "Server.Audit.Logs",
        1,
    );
    let err = fails(&master.talon(&["query", "SELECT *\nFROM info(a=1,)"]), 1);
    assert!(err.contains("talon: 2:15: "), "{err}");
    let err = fails(
        &master.talon(&["query", "SELECT 1 FROM scope() WHERE $x"]),
        1,
    );
    assert!(err.contains("1:29: unexpected character '$'"), "{err}");
    let err = fails(
        &master.talon(&["query", "SELECT * FROM no_such_plugin()"]),
        1,
    );
    assert!(err.contains("1:15: unknown plugin no_such_plugin"), "{err}");
    let out = master.talon(&["query", "SELECT * FROM range(end='x')"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("range: end must be a number, got string")
    );
    let out = master.talon(&[
        "query",
        "SELECT * FROM watch_monitoring(artifact='No.Such')",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("watch_monitoring: unknown artifact No.Such")
    );
    // The long-running query was not disturbed.
    ok(&master.talon(&[
        "events",
        "push",
        "Server.Audit.Logs",
        "--row",
        r#"{"still":"here"}"#,
    ]));
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(line.contains("\"still\":\"here\""), "{line}");
}

#[test]
fn query_timeout_ends_an_event_query_with_exit_0_and_env_binds_variables() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let out = master.talon(&["query", "SELECT Unix FROM clock(ms=100)", "--timeout", "1"]);
    let rows = json_lines(&ok(&out));
    assert!((3..=12).contains(&rows.len()), "{} rows", rows.len());
    // The server stopped the clock: its watcher count is back to nothing to check, so check
    // that a new query still runs at once.
    let out = master.talon(&[
        "query",
        "SELECT Name + '!' AS x FROM scope()",
        "--env",
        "Name=bob",
    ]);
    assert_eq!(
        json_lines(&ok(&out)),
        vec![serde_json::json!({"x": "bob!"})]
    );
    let out = master.talon(&[
        "query",
        "SELECT 1 AS a, 2 AS b FROM scope()",
        "--format",
        "table",
    ]);
    assert_eq!(ok(&out).lines().collect::<Vec<_>>(), vec!["a  b", "1  2"]);
}

#[test]
fn foreach_over_watch_monitoring_keeps_streaming_and_client_artifacts_are_not_queues() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let (_watch, rx) =
        master.spawn_watching(&[
        "query",
        "SELECT * FROM foreach(row={SELECT * FROM watch_monitoring(artifact='Server.Audit.Logs')}, query={SELECT n * 2 AS doubled FROM scope()})",
        "--timeout",
        "30",
    ], "root", "Server.Audit.Logs", 1);
    for n in [1, 2] {
        ok(&master.talon(&[
            "events",
            "push",
            "Server.Audit.Logs",
            "--row",
            &format!("{{\"n\":{n}}}"),
        ]));
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(line, format!("{{\"doubled\":{}}}", n * 2));
    }
    // A CLIENT artifact has no queue: the watch ends at once with a log line.
    let f = dir.path().join("c.yaml");
    std::fs::write(
        &f,
        "name: Custom.Collect\nsources:\n- query: SELECT 1 FROM scope()\n",
    )
    .unwrap();
    ok(&master.talon(&["artifacts", "add", f.to_str().unwrap()]));
    let out = master.talon(&[
        "query",
        "SELECT * FROM watch_monitoring(artifact='Custom.Collect')",
    ]);
    // Nothing came out and it failed: exit 1.
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("watch_monitoring: unknown artifact Custom.Collect: no queue of that name"),
        "{err}"
    );
}

#[test]
fn clock_and_foreach_send_events_that_a_watcher_receives() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let f = dir.path().join("r.yaml");
    std::fs::write(
        &f,
        "name: Server.Events.Receive\ntype: SERVER_EVENT\ndescription: Rows sent by send_event\n",
    )
    .unwrap();
    ok(&master.talon(&["artifacts", "add", f.to_str().unwrap()]));
    let (_watch, rx) = master.spawn_watching(
        &[
            "query",
            "SELECT * FROM watch_monitoring(artifact='Server.Events.Receive')",
            "--timeout",
            "30",
        ],
        "root",
        "Server.Events.Receive",
        1,
    );
    let sender = "SELECT * FROM foreach(row={SELECT Unix FROM clock(period=1) LIMIT 2}, query={SELECT send_event(artifact='Server.Events.Receive', row=dict(Tick=Unix)) AS Sent FROM scope()})";
    let sent = json_lines(&ok(&master.talon(&["query", sender])));
    assert_eq!(sent.len(), 2);
    for s in &sent {
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        let row: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(row["Tick"], s["Sent"]["Tick"]);
        // The sender (the certificate's user), not the queue.
        assert_eq!(row["_Source"], "admin");
    }
}

/// CPU seconds a process has used so far (utime + stime from /proc).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// Runaway queries (range() under WHERE FALSE never produce a row) used to take every one
/// of the master's worker threads: the API, pushes and debug pages hung, `--timeout` never
/// fired, and the queries burned CPU after their callers left. Now queries run on a pool
/// of their own and stop with their callers.
#[test]
fn runaway_queries_neither_freeze_the_master_nor_outlive_their_callers() {
    const RUNAWAY: &str = "SELECT * FROM range(end=1000000000000) WHERE FALSE";
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let pid = master.pid();
    let cpu_over = |window: Duration| {
        let before = cpu_seconds(pid);
        std::thread::sleep(window);
        cpu_seconds(pid) - before
    };
    let mut runaways: Vec<_> = (0..4)
        .map(|_| KillOnDrop(master.talon_spawn(&["query", RUNAWAY])))
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || cpu_over(Duration::from_millis(
            300
        )) > 0.2),
        "the runaway queries never started"
    );
    // While all four run, the API answers at once.
    for _ in 0..3 {
        let quick = std::time::Instant::now();
        let queues = ok(&master.talon(&["queues"]));
        assert!(queues.contains("Server.Internal.Alerts"), "{queues}");
        assert!(
            quick.elapsed() < Duration::from_secs(1),
            "talon queues took {:?} beside four runaway queries",
            quick.elapsed()
        );
    }
    let quick = std::time::Instant::now();
    assert_eq!(
        ok(&master.talon(&["query", "SELECT 1 AS one FROM scope()"])).trim(),
        r#"{"one":1}"#
    );
    assert!(
        quick.elapsed() < Duration::from_secs(2),
        "a quick query waited {:?} behind the runaways",
        quick.elapsed()
    );
    // --timeout counts from the start of the command and stops the server's query too.
    let started = std::time::Instant::now();
    let out = master.talon(&["query", RUNAWAY, "--timeout", "2"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "--timeout 2 returned after {:?}",
        started.elapsed()
    );
    // Once their callers are gone, the queries stop using the CPU within 2 s.
    for r in &mut runaways {
        r.0.kill().unwrap();
        r.0.wait().unwrap();
    }
    let killed = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(3), || cpu_over(Duration::from_millis(
            250
        )) < 0.05),
        "the master kept burning CPU after the callers left"
    );
    assert!(
        killed.elapsed() < Duration::from_millis(2500),
        "CPU use stopped only {:?} after the callers left",
        killed.elapsed()
    );
}

/// A query stops at the configured limits, with an error naming the setting; a request's
/// own limit wins over the default.
#[test]
fn queries_stop_at_their_configured_limits() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("talon.yaml");
    std::fs::write(&config, "query_timeout_secs: 1\nquery_max_rows: 5\n").unwrap();
    let master = Master::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let started = std::time::Instant::now();
    let out = master.talon(&[
        "query",
        "SELECT * FROM range(end=1000000000000) WHERE FALSE",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("query_timeout_secs"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let out = master.talon(&["query", "SELECT * FROM range(end=100)"]);
    assert_eq!(json_lines(&String::from_utf8_lossy(&out.stdout)).len(), 5);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("more than 5 rows") && stderr.contains("query_max_rows"),
        "{stderr}"
    );
}

/// Smaller items of the hardening issue, through the real CLI: a query naming an unknown
/// function is refused before it runs, one whose statements all failed exits 1, a reader
/// that goes away (`| head`) ends the CLI quietly, and send_event rows keep their sender
/// as `_Source`.
#[test]
fn failed_queries_exit_1_and_a_closed_pipe_is_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let err = fails(
        &master.talon(&["query", "SELECT no_such() FROM scope()"]),
        1,
    );
    assert!(err.contains("1:8: unknown function no_such"), "{err}");
    let err = fails(&master.talon(&["query", "SELECT * FROM nope()"]), 1);
    assert!(err.contains("unknown plugin nope"), "{err}");
    // LET names and artifacts are known.
    ok(&master.talon(&["query", "LET f(x) = x + 1 SELECT f(x=1) AS y FROM scope()"]));
    let out = master.talon(&[
        "query",
        "SELECT * FROM parse_csv(filename='/no/such/file.csv')",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ERROR: parse_csv"));

    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {} query 'SELECT * FROM range(end=1000000)' | head -1",
            bin("talon").display()
        ))
        .env("TALON_API", master.api.to_string())
        .env("TALON_API_CONFIG", &master.api_config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"_value":0}"#
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "nothing about a broken pipe"
    );

    let (status, body) = master.http_get("/debug");
    assert!(
        status.contains("200") && body.contains("Queues of every org"),
        "{status} {body}"
    );
    let (status, body) = master.http_get("/debug/persister");
    assert!(status.contains("404"), "{status}");
    assert!(
        body.contains("exists on the master of a cluster only"),
        "{body}"
    );
}

/// Artifacts without sources have an empty `sources` list, so Velociraptor's
/// `WHERE NOT sources` query finds the queues without logging a missing symbol per row.
#[test]
fn artifact_definitions_have_every_column_and_a_missing_symbol_is_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let out = master.talon(&[
        "query",
        "SELECT name FROM artifact_definitions() WHERE NOT sources AND type =~ 'internal'",
    ]);
    let rows = json_lines(&ok(&out));
    assert!(
        rows.iter().any(|r| r["name"] == "Server.Internal.Ping"),
        "{rows:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("Symbol"), "{stderr}");
    let out = master.talon(&["query", "SELECT nothing FROM artifact_definitions()"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("Symbol nothing not found").count(),
        1,
        "{stderr}"
    );
}
