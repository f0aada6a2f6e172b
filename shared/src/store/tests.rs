//! Store tests: time ranges and client filters, and applying bus messages once.

use super::*;

fn row(ts_us: i64, client: &str, n: u32) -> StoredRow {
    StoredRow {
        ts_us,
        client: client.into(),
        json: format!("{{\"n\":{n}}}"),
    }
}

fn read(store: &Store, start: i64, end: i64, client: Option<&str>) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    store
        .read_time("s", start, end, client, |seq, r| {
            out.push((seq, r.json));
            true
        })
        .unwrap();
    out
}

#[tokio::test]
async fn time_ranges_and_client_filters() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.redb")).unwrap();
    let rows = vec![
        row(10, "C.a", 1),
        row(20, "C.b", 2),
        row(20, "C.a", 3),
        row(30, "C.b", 4),
    ];
    assert_eq!(store.append("s".into(), rows).await.unwrap(), 1);
    assert_eq!(
        store
            .append("other".into(), vec![row(15, "", 9)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(read(&store, 0, i64::MAX, None).len(), 4);
    let seqs = |v: Vec<(u64, String)>| v.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
    assert_eq!(seqs(read(&store, 20, 20, None)), vec![2, 3]);
    assert_eq!(seqs(read(&store, 11, 30, Some("C.b"))), vec![2, 4]);
    assert_eq!(seqs(read(&store, 0, i64::MAX, Some("C.a"))), vec![1, 3]);
    assert_eq!(seqs(read(&store, 31, i64::MAX, None)), Vec::<u64>::new());
    assert_eq!(store.read_seq("s", 2, 4, 10).unwrap().len(), 2);
    let mut streams = store.streams().unwrap();
    streams.sort();
    assert_eq!(
        streams,
        vec![("other".to_string(), 1), ("s".to_string(), 4)]
    );
    store.close().await;
    assert!(matches!(
        store.append("s".into(), vec![row(40, "", 5)]).await,
        Err(Error::Closed)
    ));
}

async fn apply(
    store: &Store,
    seq: u64,
    rows: Vec<StoredRow>,
    client: Option<(&str, u64, u32)>,
) -> bool {
    let client = client.map(|(k, b, p)| (k.to_string(), b, p));
    store
        .enqueue_bus(seq, vec![("s".into(), rows)], client)
        .await
        .unwrap()
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn bus_messages_apply_once_across_reopening_with_client_parts_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.redb");
    let store = Store::open(&path).unwrap();
    assert!(apply(&store, 1, vec![row(50, "", 1)], None).await);
    // A later message with an earlier time is clamped, so times never go back.
    assert!(apply(&store, 2, vec![row(40, "", 2)], None).await);
    // A redelivered message (same or older stream seq) is not applied again.
    assert!(!apply(&store, 2, vec![row(60, "", 2)], None).await);
    assert!(apply(&store, 3, vec![row(60, "C.a", 3)], Some(("k", 7, 0))).await);
    assert!(apply(&store, 4, vec![row(61, "C.a", 4)], Some(("k", 7, 1))).await);
    // The same client part published again (a resend past JetStream's dedup window)
    // arrives under a new stream seq and is still stored once.
    assert!(!apply(&store, 5, vec![row(62, "C.a", 3)], Some(("k", 7, 0))).await);
    store.close().await;
    drop(store);

    let store = Store::open(&path).unwrap();
    assert_eq!(store.bus_applied().unwrap(), 5);
    assert!(!apply(&store, 4, vec![row(70, "", 9)], None).await);
    assert!(apply(&store, 6, vec![row(70, "C.a", 5)], Some(("k", 8, 0))).await);
    let all = read(&store, 0, i64::MAX, None);
    let ns: Vec<&str> = all.iter().map(|(_, j)| j.as_str()).collect();
    assert_eq!(
        ns,
        [
            "{\"n\":1}",
            "{\"n\":2}",
            "{\"n\":3}",
            "{\"n\":4}",
            "{\"n\":5}"
        ]
    );
    // The clamped row reads back at the time of the row before it.
    assert_eq!(read(&store, 50, 50, None).len(), 2);
}

#[tokio::test]
async fn blocks_split_read_by_seq_and_time_and_purge_part_of_a_block() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.redb")).unwrap();
    // 2500 rows in one append: three blocks (1024, 1024, 452), times 0..2499.
    let rows: Vec<StoredRow> = (0..2500).map(|n| row(n as i64, "", n)).collect();
    assert_eq!(store.append("s".into(), rows).await.unwrap(), 1);
    let seqs = |v: Vec<(u64, StoredRow)>| v.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
    // Reads that start and end inside blocks and across their edges.
    assert_eq!(
        seqs(store.read_seq("s", 1020, 1030, 100).unwrap()),
        (1020..1030).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(store.read_seq("s", 2049, 9999, 3).unwrap()),
        vec![2049, 2050, 2051]
    );
    let got = read(&store, 1023, 1025, None);
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1024, 1025, 1026],
        "ts n is seq n+1"
    );
    assert_eq!(got[0].1, "{\"n\":1023}");
    // Purging before time 1500 takes the first block whole and part of the second.
    assert_eq!(store.purge("s".into(), 1500).await.unwrap(), 1500);
    assert_eq!(store.streams().unwrap(), vec![("s".to_string(), 1000)]);
    assert_eq!(read(&store, 0, i64::MAX, None)[0].0, 1501);
    assert_eq!(
        seqs(store.read_seq("s", 0, 1503, 10).unwrap()),
        vec![1501, 1502]
    );
    // Seqs go on after the purge.
    assert_eq!(
        store
            .append("s".into(), vec![row(3000, "", 9)])
            .await
            .unwrap(),
        2501
    );
    assert_eq!(store.purge("s".into(), i64::MAX).await.unwrap(), 1001);
    assert!(store.streams().unwrap().is_empty());
}

#[tokio::test]
async fn a_store_of_one_row_per_entry_is_moved_into_blocks_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    {
        // The layout before blocks: one entry per row, and the stream heads.
        let db = Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut events = w.open_table(EVENTS).unwrap();
            let mut heads = w.open_table(HEADS).unwrap();
            let mut buf = Vec::new();
            // Stream "s" lost seqs 1-2 to retention; "t" has one row.
            for (stream, seq, ts) in [("s", 3, 30), ("s", 4, 40), ("s", 5, 40), ("t", 1, 10)] {
                buf.clear();
                row(ts, "C.a", seq as u32).encode_at(ts, &mut buf);
                events.insert((stream, seq), buf.as_slice()).unwrap();
                heads.insert(stream, seq).unwrap();
            }
        }
        w.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    let mut streams = store.streams().unwrap();
    streams.sort();
    assert_eq!(streams, vec![("s".to_string(), 3), ("t".to_string(), 1)]);
    assert_eq!(
        read(&store, 40, 40, Some("C.a")),
        vec![(4, "{\"n\":4}".to_string()), (5, "{\"n\":5}".to_string())]
    );
    assert_eq!(
        store
            .append("s".into(), vec![row(50, "", 6)])
            .await
            .unwrap(),
        6
    );
    store.close().await;
    drop(store);
    // Opened again: nothing is moved twice.
    let store = Store::open(&path).unwrap();
    assert_eq!(read(&store, 0, i64::MAX, None).len(), 4);
}

#[tokio::test]
async fn namespaces_are_listed_once_each_and_transactions_write_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.redb")).unwrap();
    let mut writes = Vec::new();
    for org in ["a", "b", "b-2", "c"] {
        for k in 0..50 {
            writes.push((
                format!("clients/{org}"),
                format!("C.{k:04}"),
                Some("{}".into()),
            ));
        }
    }
    writes.push(("clientsX".into(), "k".into(), Some("v".into())));
    writes.push(("other/x".into(), "k".into(), Some("v".into())));
    store
        .transaction(
            vec![("s".into(), vec![row(1, "", 1), row(2, "", 2)])],
            writes,
        )
        .await
        .unwrap();
    assert_eq!(
        store.namespaces_with_prefix("clients/").unwrap(),
        vec!["a", "b", "b-2", "c"]
    );
    assert_eq!(store.last_seq("s").unwrap(), 2);
    let some = store.settings_with_prefix("clients/b", "C.004").unwrap();
    assert_eq!(some.len(), 10);
    // A delete in a transaction.
    store
        .transaction(
            Vec::new(),
            vec![("clients/a".into(), "C.0000".into(), None)],
        )
        .await
        .unwrap();
    assert_eq!(store.settings("clients/a").unwrap().len(), 49);
}
