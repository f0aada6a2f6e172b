//! The shutdown tree: one cancellation token per subsystem (children of one root), one
//! task tracker shared by all of them, a grace period, and the span of the node the
//! process serves. Every task of every Talon process is spawned here, with a name and a
//! span naming what it serves (node, org, queue, client), so a log line always says what
//! it is about and shutdown can wait for every task.
//!
//! Order, as the binaries write it: cancel intake (listeners and client streams), cancel
//! services, [`Shutdown::drain`] (wait for every task, at most the grace period), close
//! the bus, close the store.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Default time tasks get to finish once cancelled.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// A node of the shutdown tree; cheap to clone (clones share token and tracker).
#[derive(Clone, Debug)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
    span: tracing::Span,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new(DEFAULT_GRACE)
    }
}

impl Shutdown {
    /// A root with its own token and tracker.
    pub fn new(grace: Duration) -> Self {
        Self {
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            grace,
            span: tracing::Span::none(),
        }
    }

    /// A root whose tasks carry `node` in their spans.
    pub fn for_node(node: &str, grace: Duration) -> Self {
        Self::new(grace).in_span(tracing::info_span!("node", node = %node))
    }

    /// A root cancelled by SIGINT or SIGTERM (call inside the runtime).
    pub fn on_signals(grace: Duration) -> Self {
        let root = Self::new(grace);
        let token = root.token.clone();
        root.spawn("signals", async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot install a SIGTERM handler");
                        let _ = tokio::signal::ctrl_c().await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = token.cancelled() => return,
            }
            tracing::info!("signal received: shutting down");
            token.cancel();
        });
        root
    }

    /// A subsystem: its token is cancelled with this one (or on its own); its tasks are
    /// tracked with this one's.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
            tracker: self.tracker.clone(),
            grace: self.grace,
            span: self.span.clone(),
        }
    }

    /// A subsystem with a tracker of its own, so it can wait for its own tasks (the
    /// frontend for its connections); its token is cancelled with this one.
    pub fn subtree(&self) -> Self {
        Self {
            token: self.token.child_token(),
            tracker: TaskTracker::new(),
            grace: self.grace,
            span: self.span.clone(),
        }
    }

    /// The same node of the tree whose tasks run inside `span` (made a child of this
    /// one's span when it has no parent of its own).
    pub fn in_span(&self, span: tracing::Span) -> Self {
        if !self.span.is_none() && !span.is_none() {
            span.follows_from(&self.span);
        }
        let span = if span.is_none() {
            self.span.clone()
        } else {
            span
        };
        Self {
            token: self.token.clone(),
            tracker: self.tracker.clone(),
            grace: self.grace,
            span,
        }
    }

    /// The span tasks spawned here run in.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The cancellation token of this node of the tree.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Cancels this node and its children.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// A future resolving once cancelled, owning its token (for `with_graceful_shutdown`).
    pub fn cancelled_owned(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// Spawns a tracked task named `name` in this node's span. The task itself decides
    /// when to stop (by watching [`Shutdown::cancelled`]).
    pub fn spawn<F>(&self, name: &'static str, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let span = tracing::info_span!(parent: &self.span, "task", task = name);
        self.tracker.spawn(future.instrument(span))
    }

    /// Spawns a tracked task in `span`, which names it and what it serves (for many small
    /// tasks, such as one per connection, pass a `debug_span!`: disabled, it costs nothing).
    pub fn spawn_in<F>(&self, span: tracing::Span, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(future.instrument(span))
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }

    /// Waits for every tracked task, at most the grace period; false if some did not end.
    /// Tasks spawned after this call are still tracked and waited for.
    pub async fn drain(&self) -> bool {
        self.tracker.close();
        let done = tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!(
                running = self.tracker.len(),
                "some tasks did not stop within the grace period"
            );
        }
        self.tracker.reopen();
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tasks_that_stop_when_cancelled() {
        let root = Shutdown::new(Duration::from_secs(5));
        let child = root.child();
        let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stopped.clone();
        let c = child.clone();
        child.spawn("worker", async move {
            c.cancelled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        root.cancel();
        assert!(child.is_cancelled(), "a child is cancelled with its root");
        assert!(root.drain().await);
        assert!(stopped.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(root.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_after_the_grace_period() {
        let root = Shutdown::new(Duration::from_secs(2));
        root.spawn("stuck", std::future::pending::<()>());
        root.cancel();
        let started = tokio::time::Instant::now();
        assert!(!root.drain().await, "a task that never stops is reported");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_child_leaves_its_parent_running() {
        let root = Shutdown::new(Duration::from_secs(1));
        let intake = root.child();
        let stop = intake.clone();
        intake.spawn("loop", async move { stop.cancelled().await });
        intake.cancel();
        assert!(!root.is_cancelled());
        assert!(
            root.drain().await,
            "the loop ends when its node is cancelled"
        );
    }
}
