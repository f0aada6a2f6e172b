//! Client records across the cluster, the master's half: last-activity pings from every
//! node (`Server.Internal.ClientPing`) applied to the store without ever moving last seen
//! back; client records other nodes saw at hello (`Server.Internal.ClientInfo`) merged,
//! the newer sighting winning; a snapshot announced on `Server.Internal.ClientInfoSnapshot`
//! every [`SNAPSHOT_PERIOD`] when the table changed, served page by page
//! ([`SnapshotPage`]); and single records answered ([`ClientLookup`]).

use std::time::Duration;

use talon_core::Shutdown;
use talon_shared::bus::Bus;
use talon_shared::control::{
    self, ClientInfo, ClientLookup, ClientPing, ControlRow, Page, PageRequest,
    SnapshotAnnouncement, SnapshotPage,
};
use talon_shared::frontend::FrontendService;
use talon_shared::queue::{QueueManager, ROOT_ORG};
use talon_shared::records::ClientRecord;

/// How often the master snapshots its client table when it changed.
pub const SNAPSHOT_PERIOD: Duration = Duration::from_secs(300);
/// Records per snapshot page (well below NATS's 1 MiB payload).
pub const SNAPSHOT_PAGE: usize = 500;

/// Starts the master's half. Returns once every watcher and subscription is in place.
pub async fn start(
    bus: &Bus,
    qm: &QueueManager,
    frontend: &FrontendService,
    period: Duration,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let fe = frontend.clone();
    bus.serve::<SnapshotPage, _, _>(shutdown, "client-snapshot-pages", move |req| {
        let page = page(&fe, &req);
        async move { page }
    })
    .await?;
    let fe = frontend.clone();
    bus.serve::<ClientLookup, _, _>(shutdown, "client-lookups", move |q| {
        let rec = fe.clients().get(&q.org, &q.client_id).ok().flatten();
        async move { rec }
    })
    .await?;

    let mut pings = qm.watch_every_org(ClientPing::QUEUE, "master-client-pings")?;
    let (fe, stop) = (frontend.clone(), shutdown.clone());
    shutdown.spawn("client-pings-apply", async move {
        loop {
            let (org, row) = tokio::select! {
                _ = stop.cancelled() => break,
                r = pings.next() => match r { Some(r) => r, None => break },
            };
            match ClientPing::from_json(&row.json) {
                Ok(p) => {
                    if let Err(e) = fe.clients().seen(&org, &p.client_id, p.last_seen_at).await {
                        tracing::warn!(org, error = %e, "cannot apply a client ping");
                    }
                }
                Err(e) => tracing::warn!(org, error = %e, "unreadable client ping"),
            }
        }
    });

    let mut infos = qm.watch_every_org(ClientInfo::QUEUE, "master-client-info")?;
    let (fe, stop, node) = (frontend.clone(), shutdown.clone(), bus.node().to_string());
    shutdown.spawn("client-info-merge", async move {
        loop {
            let (org, row) = tokio::select! {
                _ = stop.cancelled() => break,
                r = infos.next() => match r { Some(r) => r, None => break },
            };
            match ClientInfo::from_json(&row.json) {
                Ok(info) if info.node != node => merge(&fe, &org, info.record).await,
                Ok(_) => {}
                Err(e) => tracing::warn!(org, error = %e, "unreadable client info"),
            }
        }
    });

    let (fe, qm, stop, node) = (
        frontend.clone(),
        qm.clone(),
        shutdown.clone(),
        bus.node().to_string(),
    );
    shutdown.spawn("client-snapshots", async move {
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let clients = fe.clients();
            if !clients.take_dirty() {
                continue;
            }
            let orgs = clients.orgs().unwrap_or_default();
            let count: usize = orgs
                .iter()
                .map(|o| clients.list(o).map(|l| l.len()).unwrap_or(0))
                .sum();
            let announcement = SnapshotAnnouncement {
                orgs,
                clients: count,
                node: node.clone(),
            };
            if let Err(e) = control::push(&qm, ROOT_ORG, &announcement).await {
                tracing::warn!(error = %e, "cannot announce a client snapshot");
            }
        }
    });
    Ok(())
}

fn page(frontend: &FrontendService, req: &PageRequest) -> Page {
    let clients = frontend.clients();
    if req.org.is_empty() {
        return Page {
            orgs: clients.orgs().unwrap_or_default(),
            ..Page::default()
        };
    }
    let mut all = clients.list(&req.org).unwrap_or_default();
    all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    let end = (req.offset + SNAPSHOT_PAGE).min(all.len());
    Page {
        orgs: Vec::new(),
        records: all
            .get(req.offset..end)
            .map(<[_]>::to_vec)
            .unwrap_or_default(),
        more: end < all.len(),
    }
}

/// Merges a client record another node reported: the newer sighting wins, and last seen
/// never goes back.
async fn merge(frontend: &FrontendService, org: &str, rec: ClientRecord) {
    let clients = frontend.clients();
    let merged = match clients.get(org, &rec.client_id) {
        Ok(Some(old)) if old.last_seen_at > rec.last_seen_at => return,
        Ok(Some(old)) => ClientRecord {
            first_seen_at: old.first_seen_at.min(rec.first_seen_at),
            ..rec
        },
        _ => rec,
    };
    if let Err(e) = clients.put(org, &merged).await {
        tracing::error!(error = %e, "cannot store a client record");
    }
}
