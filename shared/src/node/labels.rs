//! Label edits made on another node (`Server.Internal.Label` rows carry the node that made
//! them), applied to this node's cached record and to the client's session here, so a
//! connected client gets its new event table without reconnecting.

use talon_core::Shutdown;

use crate::control::{ControlRow, LabelEdit};
use crate::frontend::FrontendService;
use crate::queue::{QueueManager, Result};

/// Follows label edits of every org until shutdown.
pub fn follow(qm: &QueueManager, frontend: &FrontendService, shutdown: &Shutdown) -> Result<()> {
    let mut edits = qm.watch_every_org(LabelEdit::QUEUE, "label-follower")?;
    let (fe, stop, node) = (
        frontend.clone(),
        shutdown.clone(),
        frontend.node().to_string(),
    );
    shutdown.spawn("label-follower", async move {
        loop {
            let (org, row) = tokio::select! {
                _ = stop.cancelled() => break,
                r = edits.next() => match r { Some(r) => r, None => break },
            };
            match LabelEdit::from_json(&row.json) {
                Ok(edit) if edit.node != node => apply(&fe, &org, edit).await,
                Ok(_) => {}
                Err(e) => tracing::warn!(org, error = %e, "unreadable label edit"),
            }
        }
    });
    Ok(())
}

async fn apply(frontend: &FrontendService, org: &str, edit: LabelEdit) {
    let clients = frontend.clients();
    let Ok(Some(mut rec)) = clients.get(org, &edit.client_id) else {
        return;
    };
    match edit.operation.as_str() {
        "set" if !rec.labels.contains(&edit.label) => rec.labels.push(edit.label),
        "remove" => rec.labels.retain(|l| *l != edit.label),
        _ => return,
    }
    if clients.put(org, &rec).await.is_ok() {
        frontend.labels_changed(org, &edit.client_id, rec.labels.clone());
    }
}
