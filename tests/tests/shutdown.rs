//! Shutdown in the in-process sandbox: a master stops in its one order without waiting out
//! the grace period, even with a debug-page watch and an API watch open, and both streams
//! end rather than hang.

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use talon_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_watches_end_at_shutdown_and_do_not_hold_it_up() {
    let dir = tempfile::tempdir().unwrap();
    let master = tokio::task::block_in_place(|| Master::in_process(&dir.path().join("m"), None));
    let mut debug = std::net::TcpStream::connect(master.debug).unwrap();
    write!(
        debug,
        "GET /debug/watch?queue=Server.Audit.Logs HTTP/1.0\r\n\r\n"
    )
    .unwrap();
    debug
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut debug = BufReader::new(debug);
    let mut status = String::new();
    debug.read_line(&mut status).unwrap();
    assert!(status.contains(" 200 "), "{status}");
    let mut api = master.watch_stream("Server.Audit.Logs").await;

    let started = Instant::now();
    tokio::task::block_in_place(|| drop(master));
    let took = started.elapsed();
    // The grace period is 5 s; a stream holding shutdown up would cost all of it.
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    let mut rest = Vec::new();
    tokio::task::block_in_place(|| debug.read_to_end(&mut rest))
        .expect("the debug watch ends with the connection, not by timing out");
    match tokio::time::timeout(Duration::from_secs(10), api.message()).await {
        Ok(Ok(None)) | Ok(Err(_)) => {}
        other => panic!("the API watch did not end: {other:?}"),
    }
}
