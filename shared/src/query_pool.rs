//! Where VQL runs, and for how long.
//!
//! A [`QueryPool`] is a tokio runtime of its own with a few worker threads: the node's
//! queries (API queries and server monitoring) run there, so queries that keep every one
//! of its threads busy leave the node's main runtime (the API, the client frontend, the
//! store, the bus) free to answer. [`drive`] runs one query's output stream as a task of
//! the pool under its [`QueryLimits`], forwarding items through a bounded channel: the
//! query stops when it ends, when its token is cancelled, when the reader goes away, or
//! when a limit is hit (the last item then says which, naming the setting).

use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use talon_vql::engine::LogLine;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::vql_host::Output;

/// Stack of each query thread: evaluation recurses through nested queries and expressions
/// (bounded by `vql/src/limits.rs`); a generous stack keeps the deepest allowed query far
/// from the end of it.
const QUERY_THREAD_STACK: usize = 16 * 1024 * 1024;

/// Items of a query's output held for a reader that is slower than the query.
const OUTPUT_BUFFER: usize = 256;

/// Limits of one query; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryLimits {
    /// Wall time from the start of the query.
    pub timeout: Option<Duration>,
    /// Rows the query may produce.
    pub max_rows: Option<u64>,
}

impl QueryLimits {
    /// No limit: for server monitoring queries, which run until they are removed.
    pub const NONE: QueryLimits = QueryLimits {
        timeout: None,
        max_rows: None,
    };
}

/// A runtime for queries. Cheap to clone; the runtime stops when the last clone is gone.
#[derive(Clone)]
pub struct QueryPool {
    handle: Handle,
    _owner: std::sync::Arc<Owner>,
}

/// Owns the pool's thread: dropping it stops the runtime (in the background, so a drop in
/// async code never blocks).
struct Owner {
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.stop.take();
    }
}

impl QueryPool {
    /// A pool of `threads` worker threads (at least 1), named `vql-<n>`.
    pub fn new(threads: usize) -> std::io::Result<QueryPool> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_stack_size(QUERY_THREAD_STACK)
            .thread_name_fn(|| {
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(1);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("vql-{n}")
            })
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("vql-pool".into())
            .spawn(move || {
                // Returns once every sender is gone.
                let _ = stopped.recv();
                runtime.shutdown_background();
            })?;
        Ok(QueryPool {
            handle,
            _owner: std::sync::Arc::new(Owner { stop: Some(stop) }),
        })
    }

    /// The pool's runtime.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// The default number of query threads: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// Runs `outputs` as a task on `pool` (the current runtime when None) under `limits` and
/// `cancel`, and returns its items. Dropping the returned stream stops the query.
pub fn drive(
    pool: Option<&QueryPool>,
    outputs: BoxStream<'static, Output>,
    limits: QueryLimits,
    cancel: CancellationToken,
) -> BoxStream<'static, Output> {
    let (tx, rx) = mpsc::channel(OUTPUT_BUFFER);
    let task = run(outputs, limits, cancel, tx).instrument(tracing::Span::current());
    match pool {
        Some(p) => drop(p.handle.spawn(task)),
        None => drop(tokio::spawn(task)),
    }
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

async fn run(
    mut outputs: BoxStream<'static, Output>,
    limits: QueryLimits,
    cancel: CancellationToken,
    tx: mpsc::Sender<Output>,
) {
    let deadline = limits.timeout.map(|t| tokio::time::Instant::now() + t);
    let over_time = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(over_time);
    let mut rows = 0u64;
    loop {
        // Every branch is looked at whenever the query yields, which it does at least every
        // few hundred rows (tokio's cooperative budget), so a cancel or a deadline reaches
        // a query that produces nothing.
        let item = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tx.closed() => return,
            _ = &mut over_time => {
                let t = limits.timeout.unwrap_or_default();
                let message = format!(
                    "query stopped: it ran for {} s, its time limit (query_timeout_secs, or the request's timeout)",
                    t.as_secs_f64()
                );
                let _ = tx.send(stopped(message)).await;
                return;
            }
            item = outputs.next() => item,
        };
        let Some(item) = item else { return };
        if matches!(item, Output::Row(_)) {
            rows += 1;
            if limits.max_rows.is_some_and(|max| rows > max) {
                let message = format!(
                    "query stopped: it produced more than {} rows, its row limit (query_max_rows, or the request's max_rows)",
                    rows - 1
                );
                let _ = tx.send(stopped(message)).await;
                return;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            sent = tx.send(item) => if sent.is_err() { return },
        }
    }
}

fn stopped(message: String) -> Output {
    Output::Log(LogLine {
        level: "ERROR".into(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A query that never yields a row and spins forever, counting its steps.
    fn runaway(steps: Arc<AtomicU64>) -> BoxStream<'static, Output> {
        futures::stream::unfold((), move |_| {
            let steps = steps.clone();
            async move {
                loop {
                    steps.fetch_add(1, Ordering::Relaxed);
                    tokio::task::consume_budget().await;
                }
                #[allow(unreachable_code)]
                Some((Output::Row(String::new()), ()))
            }
        })
        .boxed()
    }

    #[test]
    fn runaway_queries_leave_the_main_runtime_free_and_stop_when_dropped() {
        let main = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let pool = QueryPool::new(1).unwrap();
        let steps = Arc::new(AtomicU64::new(0));
        main.block_on(async {
            let queries: Vec<_> = (0..4)
                .map(|_| {
                    drive(
                        Some(&pool),
                        runaway(steps.clone()),
                        QueryLimits::NONE,
                        CancellationToken::new(),
                    )
                })
                .collect();
            // The main runtime's one thread answers at once while the pool spins.
            let t = std::time::Instant::now();
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(
                t.elapsed() < Duration::from_millis(500),
                "{:?}",
                t.elapsed()
            );
            assert!(steps.load(Ordering::Relaxed) > 0);
            drop(queries);
            // Once the readers are gone the steps stop.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                let before = steps.load(Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                if steps.load(Ordering::Relaxed) == before {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "still running");
            }
        });
    }

    #[tokio::test]
    async fn limits_stop_a_query_with_an_error_naming_the_setting() {
        let steps = Arc::new(AtomicU64::new(0));
        let limits = QueryLimits {
            timeout: Some(Duration::from_millis(100)),
            max_rows: None,
        };
        let out: Vec<Output> = drive(None, runaway(steps), limits, CancellationToken::new())
            .collect()
            .await;
        match out.as_slice() {
            [Output::Log(l)] => {
                assert_eq!(l.level, "ERROR");
                assert!(l.message.contains("query_timeout_secs"), "{}", l.message);
            }
            other => panic!("{other:?}"),
        }
        let rows = futures::stream::iter((0..10).map(|i| Output::Row(i.to_string()))).boxed();
        let limits = QueryLimits {
            timeout: None,
            max_rows: Some(3),
        };
        let out: Vec<Output> = drive(None, rows, limits, CancellationToken::new())
            .collect()
            .await;
        assert_eq!(out.len(), 4, "{out:?}");
        match &out[3] {
            Output::Log(l) => assert!(
                l.message.contains("more than 3 rows") && l.message.contains("query_max_rows"),
                "{}",
                l.message
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_cancelled_query_stops() {
        let steps = Arc::new(AtomicU64::new(0));
        let cancel = CancellationToken::new();
        let out = drive(
            None,
            runaway(steps.clone()),
            QueryLimits::NONE,
            cancel.clone(),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        cancel.cancel();
        let out: Vec<Output> = out.collect().await;
        assert!(out.is_empty());
        let before = steps.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(steps.load(Ordering::Relaxed), before);
    }
}
