//! Acknowledged rows survive `kill -9`; graceful shutdown flushes and exits 0.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use talon_proto::api::{PushRequest, ReadRequest};
use talon_tests::*;

const QUEUE: &str = "Server.Audit.Logs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_rows_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let mut master = Master::start(&store, &[]);

    // Four writers push one row per request as fast as they can; each records what was acked.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    let tasks = talon_core::Shutdown::default();
    for w in 0..4 {
        let mut client = master.client().await;
        let acked = acked.clone();
        writers.push(tasks.spawn("writer", async move {
            for i in 0.. {
                let id = format!("w{w}-{i}");
                let row = format!("{{\"id\":\"{id}\"}}");
                let req = PushRequest {
                    org: String::new(),
                    artifact: QUEUE.into(),
                    rows_json: vec![row.into_bytes()],
                    ..Default::default()
                };
                match client.push(req).await {
                    Ok(_) => acked.lock().unwrap().push(id),
                    Err(_) => break,
                }
            }
        }));
    }
    assert!(
        wait_until(Duration::from_secs(30), || acked.lock().unwrap().len()
            >= 300),
        "writers made no progress"
    );
    master.kill9();
    for w in writers {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .unwrap()
            .unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let master = Master::start(&store, &[]);
    let out = ok(&master.talon(&["events", "read", QUEUE]));
    let mut counts: HashMap<String, usize> = HashMap::new();
    for row in json_lines(&out) {
        *counts
            .entry(row["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for id in &acked {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "acked row {id} lost or duplicated"
        );
    }
    assert!(counts.values().all(|n| *n == 1), "a row was stored twice");

    // The store keeps working after the crash: new rows land after the old ones.
    ok(&master.talon(&["events", "push", QUEUE, "--row", r#"{"id":"after"}"#]));
    let rows = json_lines(&ok(&master.talon(&["events", "read", QUEUE])));
    assert_eq!(rows.last().unwrap()["id"], "after");
    assert_eq!(rows.len(), counts.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let mut master = Master::start(&store, &[]);
    let mut client = master.client().await;
    let rows: Vec<String> = (0..1000).map(|i| format!("{{\"i\":{i}}}")).collect();
    client
        .push(PushRequest {
            org: String::new(),
            artifact: QUEUE.into(),
            rows_json: rows.into_iter().map(String::into_bytes).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    // An open watch must not hold up shutdown.
    let mut watch = KillOnDrop(master.talon_spawn(&["events", "watch", QUEUE]));
    assert!(wait_until(Duration::from_secs(20), || {
        master.queue_stats("root", QUEUE)["watchers"] == 1
    }));
    let status = master.terminate();
    assert!(status.success(), "exit status {status}");
    // The server ended the watch rather than waiting for it.
    assert!(wait_until(Duration::from_secs(10), || watch
        .0
        .try_wait()
        .unwrap()
        .is_some()));

    let master = Master::start(&store, &[]);
    let mut stream = master
        .client()
        .await
        .read(ReadRequest {
            artifact: QUEUE.into(),
            ..ReadRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(r) = stream.message().await.unwrap() {
        let v: serde_json::Value = serde_json::from_str(&r.json).unwrap();
        assert_eq!(v["i"], n);
        n += 1;
    }
    assert_eq!(n, 1000);
}
