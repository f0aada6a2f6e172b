//! Notifications: a row of `Server.Internal.Notifications` whose `Target` is a client
//! connected here wakes it (it gets its event table again), debounced per client.

use std::time::Duration;

use serde_json::Value;

use super::FrontendService;

/// A client is woken at most once per this window (Velociraptor's default).
pub const WAKE_DEBOUNCE: Duration = Duration::from_secs(1);

/// Queue naming clients to wake.
pub const NOTIFICATIONS_QUEUE: &str = "Server.Internal.Notifications";

impl FrontendService {
    /// Follows an org's notifications (once): a row whose `Target` is a client connected
    /// here wakes it, which makes it check in: it gets its event table again.
    pub(super) async fn follow_notifications(&self, org: &str) {
        if !self
            .inner
            .notified_orgs
            .lock()
            .expect("orgs")
            .insert(org.to_string())
        {
            return;
        }
        let mut watcher = match self
            .inner
            .qm
            .watch(org, NOTIFICATIONS_QUEUE, "frontend-notifier")
            .await
        {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(org, error = %e, "cannot follow notifications");
                return;
            }
        };
        let (this, org) = (self.clone(), org.to_string());
        let span =
            tracing::info_span!(parent: self.inner.shutdown.span(), "notifications", org = %org);
        let stop = self.inner.shutdown.clone();
        self.inner.shutdown.spawn_in(span, async move {
            loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => break,
                    ev = watcher.next() => match ev { Ok(ev) => ev, Err(_) => break },
                };
                let Ok(Value::Object(row)) = serde_json::from_str::<Value>(&ev.row.json) else {
                    continue;
                };
                let Some(target) = row.get("Target").and_then(Value::as_str) else {
                    continue;
                };
                this.wake_debounced(&org, target);
            }
        });
    }

    /// Wakes a connected client at most once per [`WAKE_DEBOUNCE`]: a notification inside
    /// the window is not dropped but delivered once the window ends (several become one).
    fn wake_debounced(&self, org: &str, client: &str) {
        let key = (org.to_string(), client.to_string());
        let now = tokio::time::Instant::now();
        let delay = {
            let mut wakes = self.inner.wakes.lock().expect("wakes");
            if wakes.len() > 10_000 {
                wakes.retain(|_, (last, pending)| {
                    *pending || now.duration_since(*last) < WAKE_DEBOUNCE
                });
            }
            match wakes.get_mut(&key) {
                Some((_, true)) => return, // a wake is already scheduled
                Some((last, pending)) if now.duration_since(*last) < WAKE_DEBOUNCE => {
                    *pending = true;
                    Some(WAKE_DEBOUNCE - now.duration_since(*last))
                }
                _ => {
                    wakes.insert(key.clone(), (now, false));
                    None
                }
            }
        };
        match delay {
            None => self.wake(org, client),
            Some(d) => {
                let this = self.clone();
                self.inner.shutdown.spawn("wake-debounced", async move {
                    tokio::time::sleep(d).await;
                    this.inner
                        .wakes
                        .lock()
                        .expect("wakes")
                        .insert(key.clone(), (tokio::time::Instant::now(), false));
                    this.wake(&key.0, &key.1);
                });
            }
        }
    }

    /// Sends a connected client its event table again (which makes it check in).
    fn wake(&self, org: &str, client: &str) {
        let found = self
            .inner
            .sessions
            .lock()
            .expect("sessions")
            .get(&(org.to_string(), client.to_string()))
            .map(|s| (s.labels.clone(), s.tx.clone()));
        if let Some((labels, tx)) = found {
            if let Ok(msg) = self.table_message(org, &labels) {
                let _ = tx.try_send(msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parts::Parts;
    use talon_proto::client::server_message::Msg;
    use tokio::time::Instant;

    /// A burst of notifications inside the window wakes the client twice: at once, and
    /// once more when the window ends; none is lost and the burst is not repeated.
    #[tokio::test(start_paused = true)]
    async fn a_burst_wakes_at_once_and_once_more_at_the_end_of_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let parts = Parts::standalone("test", dir.path().join("t.redb"))
            .await
            .unwrap();
        let fe = parts.frontend.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let key = ("root".to_string(), "C.00000000000000aa".to_string());
        fe.inner.sessions.lock().unwrap().insert(
            key.clone(),
            super::super::Session {
                id: 1,
                labels: Vec::new(),
                os: String::new(),
                tx,
            },
        );
        let start = Instant::now();
        for _ in 0..5 {
            fe.wake_debounced(&key.0, &key.1);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut woken = Vec::new();
        for _ in 0..2 {
            let m = rx.recv().await.unwrap();
            assert!(matches!(m.message().msg, Some(Msg::EventTable(_))));
            woken.push((Instant::now() - start).as_millis());
        }
        assert_eq!(woken[1], WAKE_DEBOUNCE.as_millis(), "{woken:?}");
        // Nothing else was scheduled: the window passes quietly.
        tokio::time::sleep(WAKE_DEBOUNCE * 3).await;
        assert!(
            rx.try_recv().is_err(),
            "a burst woke the client more than twice"
        );
        // After the window a notification wakes at once again.
        let again = Instant::now();
        fe.wake_debounced(&key.0, &key.1);
        rx.recv().await.unwrap();
        assert_eq!(Instant::now(), again);
    }
}
