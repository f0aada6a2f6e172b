//! The server monitoring table end to end: artifacts run continuously, fill their queues,
//! stop when removed, restart after errors with the error in their monitoring log, and come
//! back after a restart. Also `artifacts collect` and server metadata.

use std::time::Duration;

use talon_tests::*;

const TICKER: &str = r#"name: Custom.Ticker
description: One row per period
type: SERVER_EVENT
parameters:
- name: Period
  type: int
  default: "1"
sources:
- query: |
    SELECT Unix, Period AS P FROM clock(period=Period)
"#;

const BROKEN: &str = r#"name: Custom.Broken
type: SERVER_EVENT
sources:
- query: |
    LET x <= log(message='starting the broken one', level='INFO')
    SELECT * FROM parse_csv(filename='/no/such/dir/file.csv', accessor=x)
"#;

fn add_artifact(master: &Master, dir: &std::path::Path, name: &str, text: &str) {
    let f = dir.join(format!("{name}.yaml"));
    std::fs::write(&f, text).unwrap();
    ok(&master.talon(&["artifacts", "add", f.to_str().unwrap()]));
}

fn stored(master: &Master, queue: &str) -> Vec<serde_json::Value> {
    json_lines(&ok(&master.talon(&["events", "read", queue])))
}

#[test]
fn a_clock_artifact_fills_its_queue_until_removed_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let mut master = Master::start(&store, &[]);
    add_artifact(&master, dir.path(), "ticker", TICKER);
    ok(&master.talon(&[
        "monitoring",
        "server",
        "add",
        "Custom.Ticker",
        "--param",
        "Period=1",
    ]));
    let list = ok(&master.talon(&["monitoring", "server", "list", "--format", "json"]));
    assert!(
        list.contains("\"Custom.Ticker\"") && list.contains("\"Period\": \"1\""),
        "{list}"
    );
    assert!(wait_until(Duration::from_secs(20), || stored(
        &master,
        "Custom.Ticker"
    )
    .len()
        >= 3));
    let rows = stored(&master, "Custom.Ticker");
    assert_eq!(
        rows[0]["P"], 1,
        "the int parameter was converted: {}",
        rows[0]
    );
    assert_eq!(rows[0]["_Source"], "server");
    let secs: Vec<i64> = rows.iter().map(|r| r["Unix"].as_i64().unwrap()).collect();
    assert!(
        secs.windows(2)
            .all(|w| w[1] - w[0] >= 1 && w[1] - w[0] <= 2),
        "about one row a second: {secs:?}"
    );

    // The table is stored: after kill -9 and a restart the artifact runs again.
    master.kill9();
    let master = Master::start(&store, &[]);
    let before = stored(&master, "Custom.Ticker").len();
    assert!(wait_until(Duration::from_secs(20), || stored(
        &master,
        "Custom.Ticker"
    )
    .len()
        >= before + 2));

    ok(&master.talon(&["monitoring", "server", "remove", "Custom.Ticker"]));
    // Removal stops it: its last monitoring log line says so, and after that line no row
    // comes (its pushes are done before the line is written).
    assert!(
        wait_until(Duration::from_secs(20), || ok(&master.talon(&[
            "monitoring",
            "logs",
            "Custom.Ticker"
        ]))
        .contains("Custom.Ticker: stopped")),
        "no stopped line in the monitoring log"
    );
    let settled = stored(&master, "Custom.Ticker").len();
    assert!(wait_until(Duration::from_secs(3), || ok(&master.talon(&[
        "monitoring",
        "server",
        "list"
    ]))
    .lines()
    .all(|l| !l.contains("Custom.Ticker"))));
    assert_eq!(
        stored(&master, "Custom.Ticker").len(),
        settled,
        "rows kept coming after remove"
    );
    let err = fails(
        &master.talon(&["monitoring", "server", "remove", "Custom.Ticker"]),
        1,
    );
    assert!(
        err.contains("is not in the server monitoring table"),
        "{err}"
    );
    let audit = stored(&master, "Server.Audit.Logs");
    assert!(audit
        .iter()
        .any(|r| r["operation"] == "server_monitoring_add"));
    assert!(audit
        .iter()
        .any(|r| r["operation"] == "server_monitoring_remove"));
}

#[test]
fn a_failing_query_is_restarted_and_its_error_is_in_its_monitoring_log() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    add_artifact(&master, dir.path(), "broken", BROKEN);
    ok(&master.talon(&["monitoring", "server", "add", "Custom.Broken"]));
    // It ends at once, is logged, and restarts (1 s, then 2 s): two starts within 10 s.
    assert!(wait_until(Duration::from_secs(15), || {
        let logs = ok(&master.talon(&["monitoring", "logs", "Custom.Broken"]));
        logs.matches("INFO: starting the broken one").count() >= 2
    }));
    let logs = ok(&master.talon(&["monitoring", "logs", "Custom.Broken"]));
    assert!(
        logs.contains("ERROR: parse_csv: cannot read /no/such/dir/file.csv"),
        "{logs}"
    );
    assert!(
        logs.contains("ERROR: Custom.Broken: query ended; restarting in 1s"),
        "{logs}"
    );
    let last = ok(&master.talon(&["monitoring", "logs", "Custom.Broken", "--count", "1"]));
    assert_eq!(last.lines().count(), 1);
    // The Server monitoring debug page shows the source with its restarts and last error.
    let (_, page) = master.http_get("/debug/monitoring?format=json");
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    let broken = page["sections"][0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["artifact"] == "Custom.Broken")
        .cloned()
        .unwrap_or_else(|| panic!("Custom.Broken is not on the page: {page}"));
    assert!(broken["restarts"].as_u64().unwrap() >= 1, "{broken}");
    assert_eq!(broken["last_error"], "query ended", "{broken}");
    assert!(
        broken["last_log_lines"]
            .as_str()
            .unwrap()
            .contains("restarting"),
        "{broken}"
    );
    assert_eq!(broken["principal"], "server:admin");
    // The server is fine: other queries run.
    ok(&master.talon(&["query", "SELECT 1 FROM scope()"]));
    let err = fails(
        &master.talon(&["monitoring", "server", "add", "Server.Audit.Logs"]),
        1,
    );
    assert!(
        err.contains("artifact Server.Audit.Logs has no sources to run"),
        "{err}"
    );
    let err = fails(
        &master.talon(&["monitoring", "server", "add", "Generic.Client.Stats"]),
        1,
    );
    assert!(
        err.contains("is CLIENT_EVENT; the server monitoring table takes SERVER_EVENT artifacts"),
        "{err}"
    );
    let err = fails(
        &master.talon(&[
            "monitoring",
            "server",
            "add",
            "Custom.Broken",
            "--param",
            "X=1",
        ]),
        1,
    );
    assert!(
        err.contains("artifact Custom.Broken has no parameter X"),
        "{err}"
    );
}

#[test]
fn collect_runs_a_server_artifact_with_parameters_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    add_artifact(&master, dir.path(), "sum", "name: Custom.Sum\ntype: SERVER\nparameters:\n- name: N\n  type: int\n  default: '3'\n- name: Owner\n  type: server_metadata\nsources:\n- query: |\n    SELECT sum(item=_value) AS Total, Owner FROM range(end=N) GROUP BY 1\n");
    ok(&master.talon(&["metadata", "set", "Owner", "secops"]));
    assert_eq!(
        ok(&master.talon(&["metadata", "get", "Owner"])).trim(),
        "secops"
    );
    let rows = json_lines(&ok(&master.talon(&[
        "artifacts",
        "collect",
        "Custom.Sum",
        "--param",
        "N=5",
    ])));
    assert_eq!(
        rows,
        vec![serde_json::json!({"Total": 10, "Owner": "secops"})]
    );
    let rows = json_lines(&ok(&master.talon(&["artifacts", "collect", "Custom.Sum"])));
    assert_eq!(rows[0]["Total"], 3);
    let q = ok(&master.talon(&["query", "SELECT server_metadata().Owner AS o FROM scope()"]));
    assert_eq!(json_lines(&q), vec![serde_json::json!({"o": "secops"})]);
    let err = fails(
        &master.talon(&["artifacts", "collect", "Server.Audit.Logs"]),
        1,
    );
    assert!(err.contains("collect runs SERVER artifacts"), "{err}");
    let mods = stored(&master, "Server.Internal.MetadataModifications");
    assert_eq!(mods[0]["key"], "Owner");
}

/// `--no-monitoring` starts a master whose server monitoring table is kept but not run,
/// so an artifact that misbehaves on every start can be removed through the API.
#[test]
fn a_master_started_with_no_monitoring_runs_nothing_and_can_be_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let mut master = Master::start(&store, &[]);
    add_artifact(&master, dir.path(), "ticker", TICKER);
    ok(&master.talon(&[
        "monitoring",
        "server",
        "add",
        "Custom.Ticker",
        "--param",
        "Period=1",
    ]));
    assert!(wait_until(Duration::from_secs(20), || !stored(
        &master,
        "Custom.Ticker"
    )
    .is_empty()));
    master.terminate();

    let master = Master::start(&store, &["--no-monitoring"]);
    assert!(
        master.stderr().contains("server monitoring suspended"),
        "{}",
        master.stderr()
    );
    let before = stored(&master, "Custom.Ticker").len();
    let list = ok(&master.talon(&["monitoring", "server", "list", "--format", "json"]));
    assert!(
        list.contains("\"Custom.Ticker\""),
        "the table is kept: {list}"
    );
    // A clock of one second would have pushed by now; nothing on the table runs.
    let quiet_until = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < quiet_until {
        assert_eq!(stored(&master, "Custom.Ticker").len(), before);
    }
    ok(&master.talon(&["monitoring", "server", "remove", "Custom.Ticker"]));
    let list = ok(&master.talon(&["monitoring", "server", "list", "--format", "json"]));
    assert!(!list.contains("\"Custom.Ticker\""), "{list}");
}
