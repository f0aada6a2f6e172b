//! Watchers see rows with `_ts` and `_Source`; two watchers each see everything; a slow
//! watcher blocks nobody and later gets every row in order; orgs are isolated.

use std::time::Duration;

use talon_tests::*;

const QUEUE: &str = "Server.Audit.Logs";

fn recv_rows(rx: &std::sync::mpsc::Receiver<String>, n: usize) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    while rows.len() < n {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("only {} of {n} rows arrived", rows.len()));
        rows.push(serde_json::from_str(&line).unwrap());
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_watchers_each_get_every_row_with_ts_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let mut a = KillOnDrop(master.talon_spawn(&["events", "watch", QUEUE, "--count", "3"]));
    let mut b = KillOnDrop(master.talon_spawn(&["events", "watch", QUEUE, "--count", "3"]));
    let (ra, rb) = (lines_of(&mut a.0), lines_of(&mut b.0));
    // Both watches are registered once the queue shows two watchers.
    assert!(wait_until(Duration::from_secs(20), || {
        master.queue_stats("root", QUEUE)["watchers"] == 2
    }));
    let stdin = "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n";
    ok(&master.talon_stdin(&["events", "push", QUEUE], stdin));
    for rx in [&ra, &rb] {
        let rows = recv_rows(rx, 3);
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r["n"], i as i64 + 1);
            assert!(r["_ts"].as_i64().unwrap() > 1_700_000_000, "{r}");
            assert_eq!(r["_Source"], "admin", "{r}");
        }
    }
    // --count 3 makes both exit 0.
    for w in [&mut a, &mut b] {
        assert!(wait_until(Duration::from_secs(10), || w
            .0
            .try_wait()
            .unwrap()
            .is_some()));
        assert!(w.0.try_wait().unwrap().unwrap().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_blocks_no_push_and_later_gets_every_row_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("talon.yaml");
    // A tiny in-memory buffer, so the stalled watcher must catch up from the store.
    std::fs::write(&config, "queue_buffer_batches: 4\n").unwrap();
    let master = Master::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let mut stalled = master.watch_stream(QUEUE).await;
    // A live watcher reading along the way.
    let (_live, live_rx) = master.spawn_watching(
        &["events", "watch", QUEUE, "--count", "4000"],
        "root",
        QUEUE,
        2,
    );
    // 400 pushes of 10 rows of about 1 KB: far more than the buffer holds, and more than
    // HTTP/2 flow control lets through to a reader that does not read.
    push_padded_rows(master.api, QUEUE, 400).await;
    let live_rows = recv_rows(&live_rx, 4000);
    assert!(live_rows
        .iter()
        .enumerate()
        .all(|(i, r)| r["i"] == i as i64));
    // Now the stalled watcher reads: every row, in order, none twice.
    for i in 0..4000 {
        let r = tokio::time::timeout(Duration::from_secs(20), stalled.message())
            .await
            .expect("stalled watcher gets its rows")
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.json).unwrap();
        assert_eq!(v["i"], i, "row out of order");
    }
    let audit = master.queue_stats("root", QUEUE);
    assert_eq!(audit["rows_dropped"], 0);
    assert_eq!(audit["rows_pushed"], 4000);
    assert!(audit["rows_caught_up"].as_u64().unwrap() > 0, "{audit}");
}

/// Pushes one row to org root, then one to org b.
fn push_to_both(master: &Master) {
    ok(&master.talon(&["events", "push", QUEUE, "--row", r#"{"org":"root"}"#]));
    ok(&master.talon(&[
        "--org",
        "b",
        "events",
        "push",
        QUEUE,
        "--row",
        r#"{"org":"b"}"#,
    ]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_in_org_b_never_sees_rows_of_root() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let (_watch_b, rx) =
        master.spawn_watching(&["--org", "b", "events", "watch", QUEUE], "b", QUEUE, 1);
    push_to_both(&master);
    let first = recv_rows(&rx, 1);
    assert_eq!(first[0]["org"], "b");
    // Stored rows are per org too.
    let b_rows = json_lines(&ok(&master.talon(&["--org", "b", "events", "read", QUEUE])));
    assert_eq!(b_rows.len(), 1);
    assert_eq!(b_rows[0]["org"], "b");
    let root_rows = json_lines(&ok(&master.talon(&["events", "read", QUEUE])));
    assert!(root_rows.iter().all(|r| r["org"] != "b"));
    // Nothing of root reached org b's watcher.
    push_to_both(&master);
    assert_eq!(recv_rows(&rx, 1)[0]["org"], "b");
}

#[test]
fn watch_exits_1_on_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let out = master.talon(&["events", "watch", QUEUE, "--count", "1", "--timeout", "0.5"]);
    let err = fails(&out, 1);
    assert!(
        err.contains("timed out after 0.5s with 0 of 1 rows"),
        "{err}"
    );
}
