//! Cluster services in the in-process sandbox (a real nats-server; master and minions in
//! this process; real clients): pings and registrations, client snapshots, labels,
//! cluster-wide conflicts with their Ping and Pong rows, notifications, message ids, health.

use std::time::{Duration, Instant};

use talon_tests::*;

#[test]
fn pings_move_last_seen_forward_registrations_follow_watches_and_late_minions_get_snapshots() {
    let c = sandbox_cluster();
    let client = Client::start(&c.a.frontend.to_string(), &c.dir.path().join("c1"), &[]);
    let id = client.id();
    let show = |m: &Master| -> Option<serde_json::Value> {
        let out = m.talon(&["clients", "show", &id]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    };
    let mut rec = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            rec = show(&c.master);
            rec.is_some()
        }),
        "the master never learned the client"
    );
    let rec = rec.unwrap();
    assert_eq!(rec["connected"], true, "{rec}");
    let first = rec["last_seen_at"].as_i64().unwrap();
    // The client stays connected to minion a; its pings move last seen on the master.
    assert!(
        wait_until(Duration::from_secs(30), || show(&c.master)
            .is_some_and(|r| r["last_seen_at"].as_i64().unwrap() > first)),
        "last seen never moved forward"
    );

    // A watch on the master shows up in its registrations.
    let (_regs, regs) = c.master.spawn_watching(
        &["events", "watch", "Server.Internal.MasterRegistrations"],
        "root",
        "Server.Internal.MasterRegistrations",
        1,
    );
    let (_w, _rows) = c.master.spawn_watching(
        &["events", "watch", "Custom.Counter"],
        "root",
        "Custom.Counter",
        1,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = regs
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a registrations row naming root/Custom.Counter");
        if line.contains("root/Custom.Counter") {
            break;
        }
    }

    // A minion started now fetches the master's client table.
    let late = Minion::start(&c.nats.url(), "minion-late", c.dir.path(), 0);
    assert!(
        wait_until(Duration::from_secs(20), || late
            .log()
            .contains("client snapshot fetched org=\"root\" records=1")),
        "{}",
        late.log()
    );
    drop(client);
}

#[test]
fn a_label_added_on_the_master_reaches_a_client_on_a_minion_without_restart() {
    let c = sandbox_cluster();
    ok(&c.master.talon(&[
        "monitoring",
        "client",
        "add",
        "Generic.Client.Stats",
        "--label",
        "web",
        "--param",
        "Frequency=1",
    ]));
    let stats = c.b.watch("Generic.Client.Stats");
    let counter = c.b.watch("Custom.Counter");
    let client = Client::start(&c.a.frontend.to_string(), &c.dir.path().join("c1"), &[]);
    let id = client.id();
    // Connected and streaming its unlabelled table, but no stats yet.
    counter
        .recv_timeout(Duration::from_secs(20))
        .expect("counter rows from the client on minion a");
    assert!(stats.try_recv().is_err(), "stats before the label");
    assert!(
        wait_until(Duration::from_secs(20), || c
            .master
            .talon(&["clients", "show", &id])
            .status
            .success()),
        "the master never learned the client"
    );
    ok(&c.master.talon(&["clients", "label", &id, "--add", "web"]));
    let row: serde_json::Value = serde_json::from_str(
        &stats
            .recv_timeout(Duration::from_secs(20))
            .expect("stats rows once the label reached the client's node"),
    )
    .unwrap();
    assert_eq!(row["ClientId"], id.as_str());
}

/// A raw gRPC session to a frontend: its server stream after the welcome.
async fn raw_session(
    frontend: std::net::SocketAddr,
    me: &talon_core::pki::ClientIdentity,
) -> Result<
    (
        tokio::sync::mpsc::Sender<talon_proto::client::ClientMessage>,
        tonic::Streaming<talon_proto::client::ServerMessage>,
    ),
    tonic::Status,
> {
    use talon_proto::client::*;
    let mut client = frontend_client::FrontendClient::new(
        talon_tests::deployment::frontend_channel(frontend, me)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?,
    );
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ClientMessage {
        msg: Some(client_message::Msg::Hello(Hello {
            client_id: me.id.clone(),
            hostname: "raw".into(),
            ..Hello::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let welcome = stream.message().await?.expect("welcome");
    assert!(matches!(welcome.msg, Some(server_message::Msg::Welcome(_))));
    Ok((tx, stream))
}

/// Whether an event table arrives on `stream` within `within`.
async fn table_arrives(
    stream: &mut tonic::Streaming<talon_proto::client::ServerMessage>,
    within: Duration,
) -> bool {
    use talon_proto::client::server_message::Msg;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return false,
            Ok(Ok(Some(m))) if matches!(m.msg, Some(Msg::EventTable(_))) => return true,
            Ok(Ok(Some(_))) => continue,
            Ok(other) => panic!("the session ended: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_on_another_minion_is_refused_and_notifications_reach_the_holding_node()
{
    let c = tokio::task::block_in_place(sandbox_cluster);
    let me = talon_core::pki::ClientIdentity::new(None).unwrap();
    let id = me.id.as_str();
    let (_tx, mut stream) = raw_session(c.a.frontend, &me).await.unwrap();
    assert!(
        table_arrives(&mut stream, Duration::from_secs(10)).await,
        "the first table"
    );

    // The same id on minion B is refused, and the conflict is reported cluster-wide.
    let (_conflicts, conflicts) =
        tokio::task::block_in_place(|| c.master.watch_one("Server.Internal.ClientConflict"));
    // Presence goes over the replicated queues: B asks with a Ping row, every other node
    // answers with a Pong row carrying the same NotifyTarget.
    let pings = tokio::task::block_in_place(|| c.a.watch("Server.Internal.Ping"));
    let pongs = tokio::task::block_in_place(|| c.a.watch("Server.Internal.Pong"));
    let e = raw_session(c.b.frontend, &me).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains("is already connected"), "{e:?}");
    let ping: serde_json::Value = serde_json::from_str(
        &tokio::task::block_in_place(|| pings.recv_timeout(Duration::from_secs(20)))
            .expect("a Ping row"),
    )
    .unwrap();
    assert_eq!(
        (ping["ClientId"].as_str(), ping["Node"].as_str()),
        (Some(id), Some("minion-b")),
        "{ping}"
    );
    let target = ping["NotifyTarget"]
        .as_str()
        .expect("NotifyTarget")
        .to_string();
    let mut answers = std::collections::BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while answers.len() < 2 && std::time::Instant::now() < deadline {
        let Ok(line) = tokio::task::block_in_place(|| pongs.recv_timeout(Duration::from_secs(1)))
        else {
            continue;
        };
        let pong: serde_json::Value = serde_json::from_str(&line).unwrap();
        if pong["NotifyTarget"] == target.as_str() {
            assert_eq!(pong["ClientId"], id, "{pong}");
            answers.insert(
                pong["Node"].as_str().unwrap().to_string(),
                pong["Connected"].as_bool().unwrap(),
            );
        }
    }
    assert_eq!(
        answers,
        [
            ("master".to_string(), false),
            ("minion-a".to_string(), true)
        ]
        .into(),
        "the Pong answers to B's Ping"
    );
    let row: serde_json::Value = serde_json::from_str(
        &tokio::task::block_in_place(|| conflicts.recv_timeout(Duration::from_secs(20)))
            .expect("a conflict row on the master"),
    )
    .unwrap();
    assert_eq!(
        (row["ClientId"].as_str(), row["Node"].as_str()),
        (Some(id), Some("minion-b"))
    );

    // A notification published by another node reaches minion A, which wakes the client
    // (it sends the table again); one naming another client does not.
    let bus = talon_shared::bus::Bus::connect(
        &c.nats.url(),
        "test-node",
        &talon_tests::deployment::nats().master,
    )
    .await
    .unwrap();
    let notify = |target: &str, n: u32| {
        let row = talon_shared::store::StoredRow {
            ts_us: 0,
            client: String::new(),
            json: serde_json::json!({"Target": target, "Tag": "test"}).to_string(),
        };
        let bus = bus.clone();
        async move {
            bus.send(
                "root",
                false,
                vec![("Server.Internal.Notifications".into(), vec![row])],
                None,
                &format!("test-notify-{n}"),
            )
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        }
    };
    notify("C.00000000000000ff", 1).await;
    assert!(
        !table_arrives(&mut stream, Duration::from_secs(3)).await,
        "woken by another client's notification"
    );
    notify(id, 2).await;
    assert!(
        table_arrives(&mut stream, Duration::from_secs(20)).await,
        "the notification never woke the client on minion A"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_publish_is_stored_once_and_health_totals_reach_the_master() {
    let c = tokio::task::block_in_place(sandbox_cluster);
    let me = talon_core::pki::ClientIdentity::new(None).unwrap();
    let (_tx, _stream) = raw_session(c.a.frontend, &me).await.unwrap();
    let (_health, health) = tokio::task::block_in_place(|| {
        c.master.spawn_watching(
            &["events", "watch", "Server.Monitor.Health"],
            "root",
            "Server.Monitor.Health",
            1,
        )
    });
    // The same batch published twice under one message id (a retry after a lost ack) is
    // stored once; another id is another batch.
    let bus = talon_shared::bus::Bus::connect(
        &c.nats.url(),
        "test-node",
        &talon_tests::deployment::nats().master,
    )
    .await
    .unwrap();
    for (tag, msg_id) in [
        ("once", "retry-1"),
        ("once", "retry-1"),
        ("last", "retry-2"),
    ] {
        let row = talon_shared::store::StoredRow {
            ts_us: 1,
            client: String::new(),
            json: serde_json::json!({ "Tag": tag }).to_string(),
        };
        bus.send(
            "root",
            true,
            vec![("Server.Audit.Logs".into(), vec![row])],
            None,
            msg_id,
        )
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    }
    let tags = || {
        ok(&c.master.talon(&["events", "read", "Server.Audit.Logs"]))
            .lines()
            .filter_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                v["Tag"].as_str().map(String::from)
            })
            .collect::<Vec<_>>()
    };
    let mut stored = Vec::new();
    assert!(
        tokio::task::block_in_place(|| wait_until(Duration::from_secs(20), || {
            stored = tags();
            stored.contains(&"last".to_string())
        })),
        "the last batch was never stored: {stored:?}"
    );
    assert_eq!(
        stored,
        vec!["once", "last"],
        "the retried batch is stored once"
    );

    // Health: the master writes per-org totals from the nodes' reports (every 10 s).
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tokio::task::block_in_place(|| health.recv_timeout(left))
            .expect("a health row with three nodes and the client within 40 s");
        let row: serde_json::Value = serde_json::from_str(&line).unwrap();
        if row["NodesAlive"] == 3 && row["ConnectedClients"].as_u64() >= Some(1) {
            let mut nodes: Vec<&str> = row["Nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|n| n.as_str())
                .collect();
            nodes.sort_unstable();
            assert_eq!(nodes, ["master", "minion-a", "minion-b"]);
            break;
        }
    }
}

/// A peer never acts under another's name on the bus: a minion's NATS user may publish only
/// on its own node's subjects (NATS refuses the rest), and a batch whose payload names
/// another node than its subject is passed over by the persister and every watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minion_publishes_rows_only_under_its_own_node_name() {
    use prost::Message;
    use talon_proto::bus::{BusBatch, BusRow, QueueRows};
    const QUEUE: &str = "Server.Audit.Logs";
    let c = tokio::task::block_in_place(sandbox_cluster);
    let file: serde_yaml::Value =
        talon_core::deploy::read(&talon_tests::deployment::minion_config("minion-a")).unwrap();
    let auth: talon_core::deploy::NatsAuth =
        serde_yaml::from_value(file["nats"]["minion"].clone()).unwrap();
    // minion-a's own user, over the deployment's TLS, as a compromised minion-a would.
    let nats = async_nats::ConnectOptions::with_user_and_password(
        auth.user.clone().unwrap(),
        auth.password.clone().unwrap(),
    )
    .add_root_certificates(talon_tests::deployment::dir().join("ca.crt"))
    .require_tls(true)
    .connect(c.nats.url())
    .await
    .unwrap();
    let js = async_nats::jetstream::new(nats);
    let batch = |node: &str, marker: &str| {
        BusBatch {
            org: "root".into(),
            node: node.into(),
            queues: vec![QueueRows {
                queue: QUEUE.into(),
                rows: vec![BusRow {
                    ts_us: 1,
                    client: String::new(),
                    json: format!("{{\"operation\":\"{marker}\"}}"),
                }],
            }],
            ..Default::default()
        }
        .encode_to_vec()
    };
    let publish = |subject: &str, payload: Vec<u8>| {
        let js = js.clone();
        let subject = subject.to_string();
        async move {
            match js.publish(subject, payload.into()).await {
                Ok(ack) => tokio::time::timeout(Duration::from_secs(5), ack)
                    .await
                    .map_err(|_| "no ack".to_string())?
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    // On minion-b's subject: NATS refuses minion-a's user.
    let other = format!("talon.root.d.@minion-b.{QUEUE}");
    assert!(publish(&other, batch("minion-b", "as-b")).await.is_err());
    // On its own subject, claiming minion-b in the payload: stored by JetStream, passed
    // over by the persister.
    let own = format!("talon.root.d.@minion-a.{QUEUE}");
    publish(&own, batch("minion-b", "forged")).await.unwrap();
    // Under its own name: stored.
    publish(&own, batch("minion-a", "honest")).await.unwrap();
    let read = || ok(&c.master.talon(&["events", "read", QUEUE]));
    assert!(
        tokio::task::block_in_place(
            || wait_until(Duration::from_secs(20), || read().contains("honest"))
        ),
        "{}",
        read()
    );
    let stored = read();
    assert!(
        !stored.contains("forged") && !stored.contains("as-b"),
        "{stored}"
    );
    // Nor may it delete, pull from or ack the master's persister consumer (which would keep
    // rows from the store).
    let stream = js.get_stream("TALON_EVENTS").await.unwrap();
    // A refused request is never answered: a short wait stands for the refusal.
    let deleted = tokio::time::timeout(
        Duration::from_secs(3),
        stream.delete_consumer("talon-persister"),
    )
    .await;
    assert!(
        !matches!(deleted, Ok(Ok(_))),
        "a minion deleted the persister's consumer"
    );
    let pull = js
        .publish(
            "$JS.API.CONSUMER.MSG.NEXT.TALON_EVENTS.talon-persister",
            "1".into(),
        )
        .await;
    let pulled = match pull {
        Err(_) => false,
        Ok(ack) => matches!(
            tokio::time::timeout(Duration::from_secs(3), ack).await,
            Ok(Ok(_))
        ),
    };
    assert!(!pulled, "a minion pulled from the persister's consumer");
    publish(&own, batch("minion-a", "after")).await.unwrap();
    assert!(
        tokio::task::block_in_place(
            || wait_until(Duration::from_secs(20), || read().contains("after"))
        ),
        "the persister stopped: {}",
        read()
    );
    let (_, progress) = c.master.http_get("/debug/persister");
    let progress: serde_json::Value = serde_json::from_str(&progress).unwrap();
    assert_eq!(progress["undecodable"], 1, "{progress}");
}

/// A minion's NATS user answers JetStream's flow control: a watcher on a minion receives
/// every row of a stream of ten megabytes (a stalled ordered consumer once stopped a remote
/// watcher after about 2 MB, with the user unable to publish the flow-control replies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_a_minion_receives_megabytes_of_rows_without_stalling() {
    const QUEUE: &str = "Server.Audit.Logs";
    const BATCHES: usize = 1000;
    let c = tokio::task::block_in_place(sandbox_cluster);
    let rx = tokio::task::block_in_place(|| c.b.watch(QUEUE));
    push_padded_rows(c.master.api, QUEUE, BATCHES).await;
    let seen = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < BATCHES * 10 {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("\"pad\"") => seen += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        seen
    });
    assert_eq!(seen, BATCHES * 10, "the watcher on minion B stalled");
}
