//! User messages (Velociraptor's in-app notifications): `user_message(user=, message=)`
//! appends `{Timestamp, From, Message}` to the user's list in the store (settings
//! namespace `messages/<user>`, keys in time order), `user_messages()` reads it and
//! clears it. Messages belong to the user, not to an org, as in Velociraptor. A user holds
//! at most [`MAX_PER_USER`]; the oldest are dropped beyond it, with a WARN log line.

use serde_json::{json, Value};
use talon_shared::queue::now_us;
use talon_shared::store::Store;

use super::Error;

/// Messages kept per user.
pub const MAX_PER_USER: usize = 10_000;
/// Largest message, bytes of JSON.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

fn namespace(user: &str) -> String {
    format!("messages/{user}")
}

/// The message lists of every user.
#[derive(Clone)]
pub struct Messages {
    store: Store,
    seq: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Messages {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            seq: Default::default(),
        }
    }

    /// Appends a message from `from` to `user`'s list.
    pub async fn send(&self, user: &str, from: &str, message: Value) -> Result<(), Error> {
        let row = json!({
            "Timestamp": talon_core::timefmt::rfc3339(now_us()),
            "From": from,
            "Message": message,
        });
        let text = row.to_string();
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(Error::Invalid(format!(
                "message is {} bytes, over the limit of {MAX_MESSAGE_BYTES}",
                text.len()
            )));
        }
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10_000;
        let key = format!("{:016}.{seq:04}", now_us());
        let ns = namespace(user);
        let mut writes = vec![(ns.clone(), key, Some(text))];
        let existing = self
            .store
            .settings(&ns)
            .map_err(|e| Error::Failed(e.to_string()))?;
        let extra = (existing.len() + 1).saturating_sub(MAX_PER_USER);
        if extra > 0 {
            tracing::warn!(
                user,
                dropped = extra,
                "user message list full; oldest dropped"
            );
            writes.extend(
                existing
                    .into_iter()
                    .take(extra)
                    .map(|(k, _)| (ns.clone(), k, None)),
            );
        }
        self.store
            .transaction(Vec::new(), writes)
            .await
            .map_err(|e| Error::Failed(e.to_string()))
    }

    /// A user's messages, oldest first; with `clear`, the list is emptied after reading.
    pub async fn read(&self, user: &str, clear: bool) -> Result<Vec<Value>, Error> {
        let ns = namespace(user);
        let rows = self
            .store
            .settings(&ns)
            .map_err(|e| Error::Failed(e.to_string()))?;
        let out = rows
            .iter()
            .filter_map(|(_, v)| serde_json::from_str(v).ok())
            .collect();
        if clear && !rows.is_empty() {
            let writes = rows
                .into_iter()
                .map(|(k, _)| (ns.clone(), k, None))
                .collect();
            self.store
                .transaction(Vec::new(), writes)
                .await
                .map_err(|e| Error::Failed(e.to_string()))?;
        }
        Ok(out)
    }
}
