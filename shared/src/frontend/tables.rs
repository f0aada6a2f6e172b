//! Event tables and labels of connected clients: a table change or a label edit sends
//! the affected clients their new table at once, and label edits are announced on
//! `Server.Internal.Label` with the node that made them.

use super::{FrontendService, Outbox};
use crate::control::{ControlRow, LabelEdit};
use crate::records::ClientRecord;

/// Why relabelling failed.
#[derive(Debug, thiserror::Error)]
pub enum RelabelError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

impl FrontendService {
    /// Sends the current event table to every connected client of an org (after a change).
    pub fn table_changed(&self, org: &str) {
        let targets: Vec<(Vec<String>, Outbox)> = self
            .inner
            .sessions
            .lock()
            .expect("sessions")
            .iter()
            .filter(|((o, _), _)| o == org)
            .map(|(_, s)| (s.labels.clone(), s.tx.clone()))
            .collect();
        // Clients with the same labels share one encoded table.
        for (labels, tx) in targets {
            if let Ok(msg) = self.table_message(org, &labels) {
                let _ = tx.try_send(msg);
            }
        }
    }

    /// Updates a connected client's labels (so its table follows them) and resends its table.
    pub fn labels_changed(&self, org: &str, client: &str, labels: Vec<String>) {
        let tx = {
            let mut s = self.inner.sessions.lock().expect("sessions");
            match s.get_mut(&(org.to_string(), client.to_string())) {
                Some(sess) => {
                    sess.labels = labels.clone();
                    Some(sess.tx.clone())
                }
                None => None,
            }
        };
        if let (Some(tx), Ok(msg)) = (tx, self.table_message(org, &labels)) {
            let _ = tx.try_send(msg);
        }
    }

    /// Adds and removes labels of a client, announces each on `Server.Internal.Label`, and
    /// sends the client its table for the new labels if it is connected here.
    pub async fn relabel(
        &self,
        org: &str,
        client: &str,
        add: &[String],
        remove: &[String],
        principal: &str,
    ) -> Result<ClientRecord, RelabelError> {
        let clients = &self.inner.clients;
        let mut c = clients.get(org, client)?.ok_or_else(|| {
            RelabelError::NotFound(format!("unknown client {client} in org {org}"))
        })?;
        if add.iter().any(String::is_empty) {
            return Err(RelabelError::Invalid("a label must not be empty".into()));
        }
        for l in add {
            if !c.labels.contains(l) {
                c.labels.push(l.clone());
            }
        }
        c.labels.retain(|l| !remove.contains(l));
        clients.put(org, &c).await?;
        for (op, labels) in [("set", add), ("remove", remove)] {
            for l in labels {
                let edit = LabelEdit {
                    client_id: client.to_string(),
                    operation: op.to_string(),
                    label: l.clone(),
                    node: self.inner.node.clone(),
                };
                let _ = self
                    .inner
                    .qm
                    .push(org, LabelEdit::QUEUE, vec![edit.to_row()], principal, "")
                    .await;
            }
        }
        self.labels_changed(org, client, c.labels.clone());
        Ok(c)
    }
}
