//! The master's registrations: the queues its watchers use, pushed to
//! `Server.Internal.MasterRegistrations` whenever they change (checked every
//! [`REGISTRATIONS_CHECK`]) and answered on [`RegistrationsGet`], so a node that starts
//! learns them at once. Nothing depends on them for delivery: every durable row goes to
//! JetStream and every node follows what its own watchers need.

use std::time::Duration;

use talon_core::Shutdown;
use talon_shared::bus::Bus;
use talon_shared::control::{self, Registrations, RegistrationsGet};
use talon_shared::queue::{QueueManager, ROOT_ORG};

/// How often the master checks whether the queues it watches changed.
pub const REGISTRATIONS_CHECK: Duration = Duration::from_secs(1);

/// The queues the master watches, as `org/queue`.
fn watched(qm: &QueueManager) -> Vec<String> {
    let mut out: Vec<String> = qm
        .orgs()
        .iter()
        .flat_map(|o| qm.stats(o))
        .filter(|q| q.watchers > 0)
        .map(|q| format!("{}/{}", q.org, q.name))
        .collect();
    out.sort();
    out
}

/// Starts announcing and answering registrations.
pub async fn start(bus: &Bus, qm: &QueueManager, shutdown: &Shutdown) -> anyhow::Result<()> {
    let (q, node) = (qm.clone(), bus.node().to_string());
    bus.serve::<RegistrationsGet, _, _>(shutdown, "registrations-answer", move |()| {
        let answer = Registrations {
            node: node.clone(),
            queues: watched(&q),
        };
        async move { answer }
    })
    .await?;
    let (qm, stop, node) = (qm.clone(), shutdown.clone(), bus.node().to_string());
    shutdown.spawn("registrations", async move {
        let mut tick = tokio::time::interval(REGISTRATIONS_CHECK);
        let mut last: Option<Vec<String>> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = watched(&qm);
            if last.as_ref() != Some(&now) {
                let row = Registrations {
                    node: node.clone(),
                    queues: now.clone(),
                };
                if let Err(e) = control::push(&qm, ROOT_ORG, &row).await {
                    tracing::warn!(error = %e, "cannot announce registrations");
                }
                last = Some(now);
            }
        }
    });
    Ok(())
}
