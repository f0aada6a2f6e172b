use std::time::Duration;

use serde_json::{json, Map, Value};

use super::*;

fn rows(n: usize, from: usize) -> Vec<Map<String, Value>> {
    (from..from + n)
        .map(|i| json!({ "i": i }).as_object().unwrap().clone())
        .collect()
}

fn manager(dir: &tempfile::TempDir, buffer_batches: usize) -> QueueManager {
    let store = Store::open(&dir.path().join("talon.redb")).unwrap();
    let limits = Limits {
        buffer_batches,
        ..Limits::default()
    };
    QueueManager::new(Repository::with_builtins(), store, limits)
}

async fn next(w: &mut Watcher) -> Value {
    let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("row within 10 s")
        .unwrap();
    serde_json::from_str(&ev.row.json).unwrap()
}

const AUDIT: &str = "Server.Audit.Logs";

#[tokio::test]
async fn watchers_get_every_row_with_ts_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let qm = manager(&dir, 16);
    let mut a = qm.watch(ROOT_ORG, AUDIT, "test").await.unwrap();
    let mut b = qm.watch(ROOT_ORG, AUDIT, "test").await.unwrap();
    qm.push(ROOT_ORG, AUDIT, rows(3, 0), "tester", "")
        .await
        .unwrap();
    for w in [&mut a, &mut b] {
        for i in 0..3 {
            let v = next(w).await;
            assert_eq!(v["i"], i);
            assert_eq!(v["_Source"], "tester");
            assert!(v["_ts"].as_i64().unwrap() > 1_600_000_000);
        }
    }
    assert_eq!(
        qm.stats(ROOT_ORG)
            .iter()
            .find(|s| s.name == AUDIT)
            .unwrap()
            .watchers,
        2
    );
    drop(a);
    assert_eq!(
        qm.stats(ROOT_ORG)
            .iter()
            .find(|s| s.name == AUDIT)
            .unwrap()
            .watchers,
        1
    );
}

#[tokio::test]
async fn slow_durable_watcher_catches_up_in_order_without_blocking_pushes() {
    let dir = tempfile::tempdir().unwrap();
    // A buffer of two batches: the watcher below falls far behind it.
    let qm = manager(&dir, 2);
    let mut w = qm.watch(ROOT_ORG, AUDIT, "test").await.unwrap();
    for b in 0..50 {
        // Every push returns although nobody reads.
        tokio::time::timeout(
            Duration::from_secs(10),
            qm.push(ROOT_ORG, AUDIT, rows(10, b * 10), "t", ""),
        )
        .await
        .expect("push is not blocked by a slow watcher")
        .unwrap();
    }
    let lag = |qm: &QueueManager| {
        let s = qm
            .stats(ROOT_ORG)
            .into_iter()
            .find(|s| s.name == AUDIT)
            .unwrap();
        s.watcher_list[0].lag
    };
    assert_eq!(lag(&qm), 500);
    for i in 0..500 {
        assert_eq!(next(&mut w).await["i"], i);
    }
    assert_eq!(lag(&qm), 0);
    let s = qm
        .stats(ROOT_ORG)
        .into_iter()
        .find(|s| s.name == AUDIT)
        .unwrap();
    assert_eq!((s.rows_pushed, s.rows_dropped), (500, 0));
    assert!(
        s.rows_caught_up > 0,
        "the watcher read missed rows from the store"
    );
}

#[tokio::test]
async fn slow_internal_watcher_drops_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let qm = manager(&dir, 2);
    let q = "Server.Internal.Ping";
    let mut w = qm.watch(ROOT_ORG, q, "test").await.unwrap();
    for b in 0..10 {
        qm.push(ROOT_ORG, q, rows(1, b), "t", "").await.unwrap();
    }
    // Only the last two batches are still buffered.
    assert_eq!(next(&mut w).await["i"], 8);
    assert_eq!(next(&mut w).await["i"], 9);
    let s = qm
        .stats(ROOT_ORG)
        .into_iter()
        .find(|s| s.name == q)
        .unwrap();
    assert_eq!(s.rows_dropped, 8);
}

#[test]
fn stamping_replaces_given_ts_and_source_without_duplicates() {
    let row = json!({"_Source": "forged", "a": {"b": "}{"}, "_ts": 1})
        .as_object()
        .unwrap()
        .clone();
    let text = stamp(&row, 42, "server", 0);
    assert_eq!(text, r#"{"a":{"b":"}{"},"_ts":42,"_Source":"server"}"#);
}

#[tokio::test]
async fn orgs_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let qm = manager(&dir, 16);
    let mut in_b = qm.watch("b", AUDIT, "test").await.unwrap();
    qm.push(ROOT_ORG, AUDIT, rows(1, 0), "t", "").await.unwrap();
    qm.push("b", AUDIT, rows(1, 7), "t", "").await.unwrap();
    assert_eq!(next(&mut in_b).await["i"], 7);
    let mut seen = Vec::new();
    qm.read("b", AUDIT, None, 0, i64::MAX, move |_, r| {
        seen.push(r.json);
        true
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn rows_survive_reopen_and_read_by_time() {
    let dir = tempfile::tempdir().unwrap();
    {
        let qm = manager(&dir, 16);
        qm.push(ROOT_ORG, AUDIT, rows(5, 0), "t", "").await.unwrap();
        qm.inner.store.close().await;
    }
    let qm = manager(&dir, 16);
    qm.push(ROOT_ORG, AUDIT, rows(1, 5), "t", "").await.unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    qm.read(ROOT_ORG, AUDIT, None, 0, i64::MAX, move |seq, r| {
        tx.send((seq, r)).unwrap();
        true
    })
    .await
    .unwrap();
    let got: Vec<_> = rx.try_iter().collect();
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    // A time range that starts after the first five rows returns only the sixth.
    let sixth_ts = got[5].1.ts_us;
    let (tx, rx) = std::sync::mpsc::channel();
    qm.read(
        ROOT_ORG,
        AUDIT,
        None,
        got[4].1.ts_us + 1,
        i64::MAX,
        move |s, _| {
            tx.send(s).unwrap();
            true
        },
    )
    .await
    .unwrap();
    let after: Vec<u64> = rx.try_iter().collect();
    assert!(after
        .iter()
        .all(|s| *s == 6 || got[(*s - 1) as usize].1.ts_us == sixth_ts));
    assert!(after.contains(&6));
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let dir_limits = Limits {
        max_row_bytes: 64,
        buffer_batches: 4,
        ..Limits::default()
    };
    let store = Store::open(&dir.path().join("t.redb")).unwrap();
    let qm = QueueManager::new(Repository::with_builtins(), store, dir_limits);
    let e = qm.parse_rows(&["{\"a\":1}", "{oops"]).unwrap_err();
    assert!(e.to_string().starts_with("row 1: invalid JSON"), "{e}");
    let e = qm.parse_rows(&["[1]"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "row 0: a row must be a JSON object, got an array"
    );
    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(100));
    assert!(matches!(
        qm.parse_rows(&[big]),
        Err(Error::RowTooLarge { .. })
    ));
    let e = qm
        .push(ROOT_ORG, "No.Such", rows(1, 0), "t", "")
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown artifact No.Such: no queue of that name"
    );
    let e = qm
        .push("bad org", AUDIT, rows(1, 0), "t", "")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidOrg(_)));
    let e = qm
        .read(
            ROOT_ORG,
            "Server.Internal.Ping",
            None,
            0,
            i64::MAX,
            |_, _| true,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("INTERNAL"), "{e}");
    assert_eq!(qm.inner.store.streams().unwrap(), vec![]);
}

#[tokio::test]
async fn retention_deletes_old_rows_only() {
    let dir = tempfile::tempdir().unwrap();
    let qm = manager(&dir, 16);
    qm.push(ROOT_ORG, AUDIT, rows(3, 0), "t", "").await.unwrap();
    qm.push("b", AUDIT, rows(2, 0), "t", "").await.unwrap();
    // Nothing is older than a day yet.
    assert_eq!(qm.apply_retention(now_us(), |_| 1).await.unwrap(), 0);
    // Three days on, one-day retention deletes them; 0 days keeps rows forever.
    let later = now_us() + 3 * 86_400 * 1_000_000;
    assert_eq!(qm.apply_retention(later, |_| 0).await.unwrap(), 0);
    assert_eq!(qm.apply_retention(later, |_| 1).await.unwrap(), 5);
    // Seqs continue after the purge, so watchers' cursors stay valid.
    qm.push(ROOT_ORG, AUDIT, rows(1, 3), "t", "").await.unwrap();
    assert_eq!(
        qm.inner
            .store
            .last_seq(&stream_key(ROOT_ORG, AUDIT))
            .unwrap(),
        4
    );
}

#[tokio::test]
async fn client_batches_are_applied_once_with_client_id() {
    let dir = tempfile::tempdir().unwrap();
    let qm = manager(&dir, 16);
    let stats = "Generic.Client.Stats";
    let procs = "Windows.Events.ProcessCreation";
    let mut w = qm.watch(ROOT_ORG, stats, "t").await.unwrap();
    let batch = || {
        vec![
            (stats.to_string(), rows(2, 0)),
            (procs.to_string(), rows(1, 9)),
        ]
    };
    assert!(qm
        .push_client_batch(ROOT_ORG, "C.1", name(7, 1), batch())
        .await
        .unwrap());
    // The same batch again (a client resending after a lost ack) is not stored twice.
    assert!(!qm
        .push_client_batch(ROOT_ORG, "C.1", name(7, 1), batch())
        .await
        .unwrap());
    // Another client's batch 1 is its own.
    assert!(qm
        .push_client_batch(ROOT_ORG, "C.2", name(7, 1), batch())
        .await
        .unwrap());
    let v = next(&mut w).await;
    assert_eq!(
        (v["ClientId"].as_str(), v["_Source"].as_str()),
        (Some("C.1"), Some("C.1"))
    );
    let count = |queue: &'static str, client: Option<&str>| {
        let qm = qm.clone();
        let client = client.map(str::to_string);
        async move {
            let (tx, rx) = std::sync::mpsc::channel();
            qm.read(ROOT_ORG, queue, client, 0, i64::MAX, move |_, r| {
                tx.send(r).is_ok()
            })
            .await
            .unwrap();
            rx.try_iter().count()
        }
    };
    assert_eq!(count(stats, None).await, 4);
    assert_eq!(count(stats, Some("C.1")).await, 2);
    assert_eq!(count(procs, Some("C.2")).await, 1);
    let e = qm
        .push_client_batch(
            ROOT_ORG,
            "C.1",
            name(7, 2),
            vec![(AUDIT.to_string(), rows(1, 0))],
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("clients may push only to CLIENT_EVENT queues"),
        "{e}"
    );
    assert_eq!(
        qm.inner
            .store
            .last_client_batch(&store::client_batch_key(ROOT_ORG, "C.1", 7))
            .unwrap(),
        1
    );
}

fn name(incarnation: u64, id: u64) -> BatchName {
    BatchName { incarnation, id }
}

#[tokio::test]
async fn a_forged_or_restored_batch_counter_never_drops_a_later_real_batch() {
    let dir = tempfile::tempdir().unwrap();
    let qm = manager(&dir, 16);
    let stats = "Generic.Client.Stats";
    let push = |n: BatchName| {
        let qm = qm.clone();
        async move {
            qm.push_client_batch(ROOT_ORG, "C.1", n, vec![(stats.to_string(), rows(1, 0))])
                .await
        }
    };
    // A batch id no client can have made is refused, visibly, and nothing is stored.
    for bad in [0, MAX_BATCH_ID + 1, 1 << 63] {
        let e = push(name(7, bad)).await.unwrap_err();
        assert!(
            matches!(e, Error::InvalidBatch { id, .. } if id == bad),
            "{bad}: {e}"
        );
        assert!(e.to_string().contains(&format!("batch id {bad}")), "{e}");
    }
    // A run that got far ahead (or a copy of the state taken later than the one restored)...
    assert!(push(name(7, 5_000)).await.unwrap());
    // ...does not hide the batches of the next run, whose counter starts lower.
    assert!(push(name(8, 10)).await.unwrap());
    assert!(push(name(8, 11)).await.unwrap());
    // A resend within a run is still applied once.
    assert!(!push(name(8, 11)).await.unwrap());
    assert!(!push(name(7, 4_999)).await.unwrap());
    let stored = count_rows(&qm, stats).await;
    assert_eq!(stored, 3);

    // Only the newest incarnations are remembered; the one in use always is.
    for inc in 100..100 + store::MAX_INCARNATIONS as u64 {
        assert!(push(name(inc, 1)).await.unwrap());
    }
    assert!(!push(name(100 + store::MAX_INCARNATIONS as u64 - 1, 1))
        .await
        .unwrap());
    let key = |inc| store::client_batch_key(ROOT_ORG, "C.1", inc);
    assert_eq!(
        qm.inner.store.last_client_batch(&key(7)).unwrap(),
        0,
        "oldest forgotten"
    );
    assert_eq!(qm.inner.store.last_client_batch(&key(100)).unwrap(), 1);
}

async fn count_rows(qm: &QueueManager, queue: &'static str) -> usize {
    let (tx, rx) = std::sync::mpsc::channel();
    qm.read(ROOT_ORG, queue, None, 0, i64::MAX, move |_, r| {
        tx.send(r).is_ok()
    })
    .await
    .unwrap();
    rx.try_iter().count()
}

/// A stalled watcher once held its queue's last 1 024 batches whatever their size (150
/// pushes of two 9 MiB rows took a master from 1.3 to 5.2 GB). The buffer is now bounded
/// in bytes: the stalled watcher later reads what the buffer gave up from the store (a
/// durable queue) or has it counted as dropped (INTERNAL).
#[tokio::test]
async fn a_stalled_watcher_holds_no_more_than_the_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.redb")).unwrap();
    let budget = 1 << 20;
    let limits = Limits {
        buffer_bytes: budget,
        ..Limits::default()
    };
    let qm = QueueManager::new(Repository::with_builtins(), store, limits);
    let pad = "x".repeat(200 * 1024);
    let big = |i: usize| json!({"i": i, "pad": pad}).as_object().unwrap().clone();
    for queue in [AUDIT, "Server.Internal.Ping"] {
        let mut stalled = qm.watch(ROOT_ORG, queue, "stalled").await.unwrap();
        for b in 0..40 {
            qm.push(ROOT_ORG, queue, vec![big(2 * b), big(2 * b + 1)], "t", "")
                .await
                .unwrap();
        }
        let state = qm.state(ROOT_ORG, queue).unwrap();
        let held = state.buffer.held();
        // The budget, and the newest batch, which is always kept.
        assert!(
            held <= budget + 2 * (210 * 1024),
            "{queue}: {held} bytes held"
        );
        let mut got = Vec::new();
        if queue == AUDIT {
            for _ in 0..80 {
                got.push(next(&mut stalled).await["i"].as_u64().unwrap());
            }
            assert_eq!(got, (0..80).collect::<Vec<_>>(), "every row, in order");
        } else {
            // Only what the buffer still held; the rest counted as dropped.
            while let Ok(Ok(ev)) =
                tokio::time::timeout(Duration::from_millis(200), stalled.next()).await
            {
                let v: Value = serde_json::from_str(&ev.row.json).unwrap();
                got.push(v["i"].as_u64().unwrap());
            }
            let dropped = state.dropped.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(dropped + got.len() as u64, 80, "{got:?}");
            assert!(dropped > 0);
            assert!(got.contains(&79), "the newest rows arrive: {got:?}");
        }
    }
}

/// A row of exactly the size limit is accepted (the server's stamps do not count against
/// it), and the API and clients share one nesting limit.
#[tokio::test]
async fn the_row_limits_are_the_rows_own_and_the_same_for_api_and_clients() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.redb")).unwrap();
    let limits = Limits {
        max_row_bytes: 1000,
        ..Limits::default()
    };
    let qm = QueueManager::new(Repository::with_builtins(), store, limits);
    let exact = format!("{{\"pad\":\"{}\"}}", "x".repeat(1000 - 10));
    assert_eq!(exact.len(), 1000);
    let rows = qm.parse_rows(&[exact.as_str()]).unwrap();
    qm.push(ROOT_ORG, AUDIT, rows, "a-rather-long-principal-name", "")
        .await
        .unwrap();
    let stats = "Generic.Client.Stats".to_string();
    let batch = |row: &str| vec![(stats.clone(), vec![row.to_string()])];
    qm.push_client_batch(ROOT_ORG, "C.1", name(1, 1), batch(&exact))
        .await
        .unwrap();
    let over = format!("{{\"pad\":\"{}\"}}", "x".repeat(1000 - 9));
    assert!(matches!(
        qm.parse_rows(&[over.as_str()]),
        Err(Error::RowTooLarge { .. })
    ));

    let deep = |n: usize| format!("{{\"a\":{}1{}}}", "[".repeat(n), "]".repeat(n));
    assert!(qm.parse_rows(&[deep(MAX_JSON_DEPTH - 1)]).is_ok());
    let api = qm
        .parse_rows(&[deep(MAX_JSON_DEPTH)])
        .unwrap_err()
        .to_string();
    let client = qm
        .push_client_batch(ROOT_ORG, "C.1", name(1, 2), batch(&deep(200)))
        .await
        .unwrap_err()
        .to_string();
    assert!(api.contains("nested deeper than 127 levels"), "{api}");
    assert!(client.contains("nested deeper than 127 levels"), "{client}");
    // Brackets inside strings are text, not nesting.
    let quoted = format!("{{\"a\":\"{}\"}}", "[".repeat(900));
    assert!(qm.parse_rows(&[quoted]).is_ok());
}

/// A push sent in parts under a push id stores each part once, so a push cut off midway
/// can be sent again whole.
#[tokio::test]
async fn push_parts_are_stored_once_per_push_id() {
    let dir = tempfile::tempdir().unwrap();
    let qm = manager(&dir, 16);
    let part = |p: u64| {
        let qm = qm.clone();
        async move {
            qm.push_part(ROOT_ORG, AUDIT, rows(2, 2 * p as usize), "t", "push-1", p)
                .await
                .unwrap()
        }
    };
    assert_eq!(part(1).await, 2);
    assert_eq!(part(2).await, 2);
    // Cut off here; everything is sent again.
    for p in 1..=3 {
        part(p).await;
    }
    assert_eq!(count_rows(&qm, AUDIT).await, 6);
    // Another push id is another push.
    qm.push_part(ROOT_ORG, AUDIT, rows(1, 0), "t", "push-2", 1)
        .await
        .unwrap();
    assert_eq!(count_rows(&qm, AUDIT).await, 7);
    let e = qm
        .push_part(ROOT_ORG, AUDIT, rows(1, 0), "t", "", 1)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("push id"), "{e}");
    let e = qm
        .push_part(ROOT_ORG, "Server.Internal.Ping", rows(1, 0), "t", "x", 1)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::WrongKind { .. }), "{e}");
}
