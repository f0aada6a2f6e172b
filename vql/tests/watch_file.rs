//! watch_file follows a file: lines appended after it starts arrive as rows.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use talon_vql::engine::QueryInfo;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn appended_lines_become_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.txt");
    std::fs::write(&path, "old line\n").unwrap();
    let q = format!(
        "SELECT Line FROM watch_file(filename='{}', poll_ms=20)",
        path.display()
    );
    let cancel = CancellationToken::new();
    let mut rows = talon_vql::Runner::default()
        .run(
            &q,
            vec![],
            QueryInfo::default(),
            cancel.clone(),
            Arc::new(|_| {}),
        )
        .unwrap();
    let reader = talon_core::Shutdown::default().spawn("reader", async move {
        let mut got = Vec::new();
        while got.len() < 2 {
            let r = rows.next().await.unwrap();
            got.push(r["Line"].to_text());
        }
        got
    });
    // Give the plugin time to note the end of the file, then append.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"first\nsecond\npartial").unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, vec!["first", "second"]);
    cancel.cancel();
}
