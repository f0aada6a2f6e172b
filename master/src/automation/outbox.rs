//! The mail outbox: every `mail()` becomes a record in the store (settings namespace
//! `mail`) before anything is tried, so no mail is lost to a restart, a throttle or a
//! refusing server. One task sends them:
//!
//! - **rate limit per recipient list**: after a mail to a list of recipients, the next one
//!   to the same list waits `period` seconds (the call's `period`, Velociraptor's 60 by
//!   default; negative: no limit);
//! - **digest, never a drop**: mails that arrived while their list was held go out as one
//!   multipart/digest mail naming each of them (each is marked `merged` into it);
//! - **retry with backoff**: a failed try is retried after `retry_secs`, doubling up to an
//!   hour, until `max_attempts`; then the mail is `failed` with the server's answer.
//!
//! `mail_outbox()` (and `talon mail list`) shows every record's state; finished records
//! beyond [`MAX_KEPT`] are pruned oldest first.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use talon_shared::queue::now_us;
use talon_shared::store::Store;
use tokio::sync::{oneshot, Notify};

pub use super::record::{Mail, Transport};
use super::{smtp, Error};

/// The settings namespace of outbox records.
const NAMESPACE: &str = "mail";
/// Finished records kept (sent, failed, merged); older ones are pruned.
pub const MAX_KEPT: usize = 10_000;
/// Mails waiting at most; a `mail()` beyond it is refused with an error row.
pub const MAX_QUEUED: usize = 10_000;
/// Largest mail (body and headers), bytes.
pub const MAX_MAIL_BYTES: usize = 25 * 1024 * 1024;
/// Longest wait between retries.
const MAX_BACKOFF_US: i64 = 3_600_000_000;

/// How the outbox retries.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub max_attempts: u32,
    pub first_backoff: Duration,
}

struct State {
    mails: BTreeMap<String, Mail>,
    /// Last try per recipient key.
    last_send: HashMap<String, i64>,
    waiters: HashMap<String, Vec<oneshot::Sender<Mail>>>,
    seq: u64,
}

struct Inner {
    store: Store,
    state: Mutex<State>,
    wake: Notify,
    retry: Retry,
}

/// The outbox: queue, list, and the sending task ([`Outbox::run`]).
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

/// One piece of work of a pass.
enum Job {
    Send(String),
    Digest(Vec<String>),
}

impl Outbox {
    /// The outbox with the records kept in the store; a mail that was being sent when
    /// the master stopped is tried again (at least once, never lost).
    pub fn open(store: Store, retry: Retry) -> Result<Self, Error> {
        let mut mails = BTreeMap::new();
        let mut last_send = HashMap::new();
        for (id, text) in store
            .settings(NAMESPACE)
            .map_err(|e| Error::Failed(e.to_string()))?
        {
            match serde_json::from_str::<Mail>(&text) {
                Ok(m) => {
                    if let Some(s) = m.sent_us {
                        let e = last_send.entry(m.key()).or_insert(s);
                        *e = (*e).max(s);
                    }
                    mails.insert(id, m);
                }
                Err(e) => {
                    tracing::error!(mail = %id, error = %e, "unreadable outbox record skipped")
                }
            }
        }
        let queued = mails.values().filter(|m| !m.finished()).count();
        if queued > 0 {
            tracing::info!(queued, "outbox has mail to send");
        }
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                state: Mutex::new(State {
                    mails,
                    last_send,
                    waiters: HashMap::new(),
                    seq: 0,
                }),
                wake: Notify::new(),
                retry,
            }),
        })
    }

    fn new_id(state: &mut State, now: i64) -> String {
        state.seq += 1;
        format!("M.{now:016}.{:04}", state.seq % 10_000)
    }

    /// Puts a mail in the outbox (durable before this returns) and wakes the sender.
    pub async fn enqueue(&self, mut m: Mail) -> Result<Mail, Error> {
        let size = m.body.len()
            + m.headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if size > MAX_MAIL_BYTES {
            return Err(Error::Invalid(format!(
                "mail is {size} bytes, over the limit of {MAX_MAIL_BYTES}"
            )));
        }
        smtp::check_addresses(&m).map_err(Error::Invalid)?;
        smtp::message(&m).map_err(Error::Invalid)?;
        let now = now_us();
        {
            let mut st = self.inner.state.lock().expect("outbox");
            let queued = st.mails.values().filter(|m| !m.finished()).count();
            if queued >= MAX_QUEUED {
                return Err(Error::Invalid(format!(
                    "the outbox holds {queued} unsent mails, its limit; see talon mail list"
                )));
            }
            m.id = Self::new_id(&mut st, now);
        }
        m.created_us = now;
        m.next_us = now;
        m.state = "queued".into();
        m.max_attempts = self.inner.retry.max_attempts;
        self.persist(&[&m]).await?;
        self.inner
            .state
            .lock()
            .expect("outbox")
            .mails
            .insert(m.id.clone(), m.clone());
        self.inner.wake.notify_one();
        Ok(m)
    }

    /// Waits up to `timeout` for a mail's first outcome (sent, failed try, held, merged).
    pub async fn first_outcome(&self, id: &str, timeout: Duration) -> Option<Mail> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.inner.state.lock().expect("outbox");
            let m = st.mails.get(id)?;
            if m.finished() || m.attempts > 0 || m.held_until_us.is_some() {
                return Some(m.clone());
            }
            st.waiters.entry(id.to_string()).or_default().push(tx);
        }
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }

    /// Records, newest first, optionally of one state and org.
    pub fn list(&self, org: Option<&str>, state: Option<&str>, limit: usize) -> Vec<Mail> {
        let st = self.inner.state.lock().expect("outbox");
        st.mails
            .values()
            .rev()
            .filter(|m| org.is_none_or(|o| m.org == o))
            .filter(|m| state.is_none_or(|s| m.state == s))
            .take(limit)
            .cloned()
            .collect()
    }

    async fn persist(&self, mails: &[&Mail]) -> Result<(), Error> {
        let mut writes = Vec::with_capacity(mails.len());
        for m in mails {
            let text = serde_json::to_string(m).map_err(|e| Error::Failed(e.to_string()))?;
            writes.push((NAMESPACE.to_string(), m.id.clone(), Some(text)));
        }
        self.inner
            .store
            .transaction(Vec::new(), writes)
            .await
            .map_err(|e| Error::Failed(e.to_string()))
    }

    fn notify(&self, m: &Mail) {
        let waiters = self
            .inner
            .state
            .lock()
            .expect("outbox")
            .waiters
            .remove(&m.id);
        for w in waiters.into_iter().flatten() {
            let _ = w.send(m.clone());
        }
    }

    /// What is due now, and when to look again.
    fn plan(&self, now: i64) -> (Vec<Job>, Option<i64>, Vec<Mail>) {
        let mut st = self.inner.state.lock().expect("outbox");
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in st.mails.values().filter(|m| !m.finished()) {
            groups.entry(m.key()).or_default().push(m.id.clone());
        }
        let (mut jobs, mut wake, mut held) = (Vec::new(), None::<i64>, Vec::new());
        let mut soonest = |t: i64| wake = Some(wake.map_or(t, |w: i64| w.min(t)));
        for (key, ids) in groups {
            let period = st.mails[&ids[0]].period_secs;
            if period < 0 {
                for id in ids {
                    let next = st.mails[&id].next_us;
                    if next <= now {
                        jobs.push(Job::Send(id));
                    } else {
                        soonest(next);
                    }
                }
                continue;
            }
            let open_at = st.last_send.get(&key).map_or(i64::MIN, |t| {
                t.saturating_add(period.saturating_mul(1_000_000))
            });
            if now < open_at {
                soonest(open_at);
                for id in &ids {
                    let m = st.mails.get_mut(id).expect("listed");
                    if m.held_until_us != Some(open_at) && m.attempts == 0 {
                        m.held_until_us = Some(open_at);
                        held.push(m.clone());
                    }
                }
                continue;
            }
            let due: Vec<&Mail> = ids
                .iter()
                .map(|id| &st.mails[id])
                .filter(|m| m.next_us <= now)
                .collect();
            if let Some(retry) = due.iter().find(|m| m.attempts > 0) {
                jobs.push(Job::Send(retry.id.clone()));
            } else if due.len() == 1 {
                jobs.push(Job::Send(due[0].id.clone()));
            } else if due.len() > 1 {
                jobs.push(Job::Digest(due.iter().map(|m| m.id.clone()).collect()));
            }
            for m in ids
                .iter()
                .map(|id| &st.mails[id])
                .filter(|m| m.next_us > now)
            {
                soonest(m.next_us);
            }
        }
        (jobs, wake, held)
    }

    /// Sends mail until `stop` fires.
    pub async fn run(self, stop: talon_core::Shutdown) {
        loop {
            let now = now_us();
            let (jobs, wake, held) = self.plan(now);
            for m in &held {
                tracing::info!(mail = %m.id, until = %talon_core::timefmt::rfc3339(m.held_until_us.unwrap_or(0)), "mail held by the send interval");
                if let Err(e) = self.persist(&[m]).await {
                    tracing::error!(error = %e, "outbox record not stored");
                }
                self.notify(m);
            }
            let worked = !jobs.is_empty();
            for job in jobs {
                let id = match job {
                    Job::Send(id) => id,
                    Job::Digest(ids) => match self.merge(&ids).await {
                        Ok(id) => id,
                        Err(e) => {
                            tracing::error!(error = %e, "digest not made; sending one by one");
                            ids[0].clone()
                        }
                    },
                };
                self.attempt(&id).await;
            }
            if worked {
                // What was tried has a new next try (or none): plan again before sleeping.
                continue;
            }
            let sleep = wake.map_or(Duration::from_secs(3600), |w| {
                Duration::from_micros((w - now_us()).clamp(0, MAX_BACKOFF_US) as u64)
            });
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Makes one digest of mails held for the same recipients; they become `merged`.
    async fn merge(&self, ids: &[String]) -> Result<String, Error> {
        let (digest, originals) = {
            let mut st = self.inner.state.lock().expect("outbox");
            let mails: Vec<&Mail> = ids.iter().filter_map(|id| st.mails.get(id)).collect();
            let first = mails[0].clone();
            let (body, boundary) = smtp::digest_body(&mails);
            let mut subjects: Vec<&str> = mails.iter().map(|m| m.subject.as_str()).collect();
            subjects.dedup();
            let mut subject = format!("{} mails: {}", mails.len(), subjects.join("; "));
            if subject.len() > 200 {
                let cut = (0..=197)
                    .rev()
                    .find(|i| subject.is_char_boundary(*i))
                    .unwrap_or(0);
                subject.truncate(cut);
                subject.push_str("...");
            }
            let now = now_us();
            let mut d = first.clone();
            d.id = Self::new_id(&mut st, now);
            d.created_us = now;
            d.subject = subject;
            d.body = body;
            d.headers = BTreeMap::from([(
                "Content-Type".to_string(),
                format!("multipart/mixed; boundary=\"{boundary}\""),
            )]);
            d.digest_of = ids.to_vec();
            d.held_until_us = None;
            d.attempts = 0;
            let mut originals = Vec::new();
            for id in ids {
                let m = st.mails.get_mut(id).expect("listed");
                m.state = "merged".into();
                m.merged_into = Some(d.id.clone());
                originals.push(m.clone());
            }
            st.mails.insert(d.id.clone(), d.clone());
            (d, originals)
        };
        let mut all: Vec<&Mail> = originals.iter().collect();
        all.push(&digest);
        self.persist(&all).await?;
        for m in &originals {
            self.notify(m);
        }
        tracing::info!(digest = %digest.id, mails = ids.len(), "held mails merged into one digest");
        Ok(digest.id)
    }

    /// One try of one mail, and its record updated.
    async fn attempt(&self, id: &str) {
        let mail = {
            let mut st = self.inner.state.lock().expect("outbox");
            let Some(m) = st.mails.get(id).cloned() else {
                return;
            };
            st.last_send.insert(m.key(), now_us());
            m
        };
        let result = smtp::send(&mail).await;
        let now = now_us();
        let updated = {
            let mut st = self.inner.state.lock().expect("outbox");
            let Some(m) = st.mails.get_mut(id) else {
                return;
            };
            m.attempts += 1;
            m.held_until_us = None;
            match &result {
                Ok(()) => {
                    m.state = "sent".into();
                    m.sent_us = Some(now);
                    m.last_error = None;
                }
                Err(e) => {
                    m.last_error = Some(e.clone());
                    if m.attempts >= m.max_attempts {
                        m.state = "failed".into();
                    } else {
                        let base = self.inner.retry.first_backoff.as_micros() as i64;
                        let backoff = base
                            .saturating_mul(1 << (m.attempts - 1).min(20))
                            .min(MAX_BACKOFF_US);
                        m.next_us = now + backoff;
                    }
                }
            }
            m.clone()
        };
        match (&result, updated.state.as_str()) {
            (Ok(()), _) => tracing::info!(mail = %id, to = ?updated.to, "mail sent"),
            (Err(e), "failed") => {
                tracing::error!(mail = %id, attempts = updated.attempts, error = %e, "mail failed after its last try")
            }
            (Err(e), _) => {
                tracing::warn!(mail = %id, attempt = updated.attempts, error = %e, "mail not sent; will retry")
            }
        }
        if let Err(e) = self.persist(&[&updated]).await {
            tracing::error!(mail = %id, error = %e, "outbox record not stored");
        }
        self.notify(&updated);
        self.prune().await;
    }

    /// Drops the oldest finished records beyond [`MAX_KEPT`].
    async fn prune(&self) {
        let doomed: Vec<String> = {
            let mut st = self.inner.state.lock().expect("outbox");
            let finished: Vec<String> = st
                .mails
                .values()
                .filter(|m| m.finished())
                .map(|m| m.id.clone())
                .collect();
            let extra = finished.len().saturating_sub(MAX_KEPT);
            let doomed: Vec<String> = finished.into_iter().take(extra).collect();
            for id in &doomed {
                st.mails.remove(id);
            }
            doomed
        };
        if doomed.is_empty() {
            return;
        }
        let writes = doomed
            .into_iter()
            .map(|id| (NAMESPACE.to_string(), id, None))
            .collect();
        if let Err(e) = self.inner.store.transaction(Vec::new(), writes).await {
            tracing::error!(error = %e, "old outbox records not pruned");
        }
    }
}
