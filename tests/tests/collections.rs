//! Collections (flows) and hunts with real processes: a master (standalone, or with two
//! minions and nats-server) and real clients. Flows run once with their limits, end in
//! the right state with exactly one completion row, follow their client to whichever node
//! it connects to, and hunts reach every node's clients, respect labels and the client
//! limit, and survive kill -9 of the master.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use talon_tests::cluster::{cluster, Minion};
use talon_tests::*;

/// CLIENT artifacts the tests collect.
const ARTIFACTS: &[(&str, &str)] = &[
    (
        "rows",
        "name: Custom.Flow.Rows\ntype: CLIENT\nparameters:\n- name: Count\n  type: int\n  default: '5'\nsources:\n- query: SELECT _value AS N FROM range(end=Count)\n",
    ),
    (
        "slow",
        "name: Custom.Flow.Slow\ntype: CLIENT\nsources:\n- query: SELECT sleep(time=600) AS Slept FROM scope()\n",
    ),
    (
        "failing",
        "name: Custom.Flow.Failing\ntype: CLIENT\nsources:\n- query: |\n    SELECT log(message='Error: the disk is on fire') AS Logged, 1 AS One FROM scope()\n",
    ),
];

fn add_artifacts(master: &Master, dir: &Path) {
    for (file, text) in ARTIFACTS {
        let f = dir.join(format!("{file}.yaml"));
        std::fs::write(&f, text).unwrap();
        ok(&master.talon(&["artifacts", "add", f.to_str().unwrap()]));
    }
}

fn flow(master: &Master, client: &str, flow_id: &str) -> Value {
    serde_json::from_str(&ok(&master.talon(&["flows", "show", client, flow_id]))).unwrap()
}

/// Waits until the flow is in `state`; the flow as last read.
fn wait_state(master: &Master, client: &str, flow_id: &str, state: &str) -> Value {
    let mut f = Value::Null;
    let reached = wait_until(Duration::from_secs(30), || {
        f = flow(master, client, flow_id);
        f["state"] == state
    });
    assert!(reached, "flow {flow_id} never reached {state}: {f}");
    f
}

/// Completion rows per flow id.
fn completions(master: &Master) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for r in json_lines(&ok(&master.talon(&[
        "events",
        "read",
        "System.Flow.Completion",
    ]))) {
        *out.entry(r["FlowId"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    out
}

fn collect(master: &Master, client: &str, args: &[&str]) -> String {
    let mut a = vec!["collect", client];
    a.extend_from_slice(args);
    let id = ok(&master.talon(&a)).trim().to_string();
    assert!(id.starts_with("F."), "{id}");
    id
}

/// Waits until the master's record knows the client.
fn wait_known(master: &Master, id: &str) {
    assert!(
        wait_until(Duration::from_secs(30), || {
            ok(&master.talon(&["clients", "list", "--format", "json"])).contains(id)
        }),
        "the master never recorded {id}"
    );
}

#[test]
fn flows_run_once_within_their_limits_and_complete_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let mut master = Master::start(&store, &[]);
    add_artifacts(&master, dir.path());
    let client = Client::start(&master.frontend.to_string(), &dir.path().join("c"), &[]);
    let id = client.id();
    wait_known(&master, &id);

    // Results, per-query status and Velociraptor's field names.
    let rows = collect(&master, &id, &["Custom.Flow.Rows", "--param", "Count=7"]);
    let f = wait_state(&master, &id, &rows, "FINISHED");
    assert_eq!(f["total_collected_rows"], 7, "{f}");
    assert_eq!(f["request"]["creator"], "admin");
    assert_eq!(f["request"]["artifacts"][0], "Custom.Flow.Rows");
    assert_eq!(f["artifacts_with_results"][0], "Custom.Flow.Rows");
    assert_eq!(f["query_stats"][0]["result_rows"], 7);
    let results = json_lines(&ok(&master.talon(&["flows", "results", &id, &rows])));
    let ns: Vec<i64> = results.iter().map(|r| r["N"].as_i64().unwrap()).collect();
    assert_eq!(ns, (0..7).collect::<Vec<_>>());

    // A large result is read page by page, every row once and in order.
    let big = collect(
        &master,
        &id,
        &["Custom.Flow.Rows", "--param", "Count=12001", "--wait"],
    );
    let ns: Vec<i64> = json_lines(&ok(&master.talon(&["flows", "results", &id, &big])))
        .iter()
        .map(|r| r["N"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, (0..12001).collect::<Vec<_>>());

    // The row limit stops the query: ERROR, and only that many rows.
    let limited = collect(
        &master,
        &id,
        &[
            "Custom.Flow.Rows",
            "--param",
            "Count=1000",
            "--max-rows",
            "3",
        ],
    );
    let f = wait_state(&master, &id, &limited, "ERROR");
    assert_eq!(f["total_collected_rows"], 3, "{f}");
    assert!(f["status"].as_str().unwrap().contains("max_rows 3"), "{f}");

    // A log line matching the error pattern fails the flow once its query ended.
    let failing = collect(&master, &id, &["Custom.Flow.Failing"]);
    let f = wait_state(&master, &id, &failing, "ERROR");
    assert!(
        f["status"]
            .as_str()
            .unwrap()
            .contains("the disk is on fire"),
        "{f}"
    );
    let logs = ok(&master.talon(&["flows", "logs", &id, &failing]));
    assert!(logs.contains("the disk is on fire"), "{logs}");

    // The time limit.
    let timed = collect(&master, &id, &["Custom.Flow.Slow", "--timeout", "1"]);
    let f = wait_state(&master, &id, &timed, "ERROR");
    assert!(f["status"].as_str().unwrap().starts_with("Timeout"), "{f}");

    // A cancel reaches the client and ends the flow at once.
    let slow = collect(&master, &id, &["Custom.Flow.Slow"]);
    wait_state(&master, &id, &slow, "IN_PROGRESS");
    let out = ok(&master.talon(&["flows", "cancel", &id, &slow]));
    assert!(out.contains("Cancelled by admin"), "{out}");
    assert!(
        wait_until(Duration::from_secs(20), || client
            .log()
            .contains("collection cancelled")),
        "{}",
        client.log()
    );
    let again = master.talon(&["flows", "cancel", &id, &slow]);
    assert!(fails(&again, 1).contains("already ended"));

    // Bad requests are refused with what was wrong.
    let unknown = master.talon(&["collect", &id, "No.Such.Artifact"]);
    assert!(fails(&unknown, 1).contains("unknown artifact No.Such.Artifact"));
    let event = master.talon(&["collect", &id, "Generic.Client.Stats"]);
    assert!(fails(&event, 1).contains("only Client artifacts"));
    let param = master.talon(&["collect", &id, "Custom.Flow.Rows", "--param", "Nope=1"]);
    assert!(fails(&param, 1).contains("parameter Nope"));
    let nobody = master.talon(&["collect", "C.0000000000000000", "Custom.Flow.Rows"]);
    assert!(fails(&nobody, 1).contains("unknown client"));

    // Exactly one completion per flow, also after a kill -9 and a restart.
    let all = [&rows, &big, &limited, &failing, &timed, &slow];
    assert!(
        wait_until(Duration::from_secs(20), || {
            let c = completions(&master);
            all.iter().all(|f| c.get(*f) == Some(&1))
        }),
        "{:?}",
        completions(&master)
    );
    let rows_again = collect(&master, &id, &["Custom.Flow.Rows", "--param", "Count=2"]);
    wait_state(&master, &id, &rows_again, "FINISHED");
    master.kill9();
    drop(client);
    let master = Master::start(&store, &[]);
    // The new master listens elsewhere: the client follows with the same state.
    let _client = Client::start(&master.frontend.to_string(), &dir.path().join("c"), &[]);
    let after = collect(&master, &id, &["Custom.Flow.Rows", "--param", "Count=1"]);
    wait_state(&master, &id, &after, "FINISHED");
    let c = completions(&master);
    for f in all.iter().copied().chain([&rows_again, &after]) {
        assert_eq!(c.get(f), Some(&1), "{f}: {c:?}");
    }
    assert_eq!(c.len(), 8, "{c:?}");
    // The completion row carries the flow as Velociraptor's artifacts read it.
    let row = json_lines(&ok(&master.talon(&[
        "events",
        "read",
        "System.Flow.Completion",
    ])))
    .into_iter()
    .find(|r| r["FlowId"] == rows.as_str())
    .unwrap();
    assert_eq!(row["ClientId"], id.as_str());
    assert_eq!(row["Flow"]["session_id"], rows.as_str());
    assert_eq!(row["Flow"]["state"], "FINISHED");
    assert_eq!(row["Flow"]["total_collected_rows"], 7);
    // Completion rows are the client's, so a per-client read finds them.
    let mine = vql(
        &master,
        &format!(
            "SELECT FlowId FROM monitoring(artifact='System.Flow.Completion', client_id='{id}')"
        ),
    );
    assert_eq!(mine.len(), 8, "{mine:?}");
    let none = vql(
        &master,
        "SELECT FlowId FROM monitoring(artifact='System.Flow.Completion', client_id='C.0000000000000000')",
    );
    assert!(none.is_empty(), "{none:?}");
}

#[test]
fn a_client_that_restarts_mid_flow_gets_the_flow_marked_unknown_once() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    add_artifacts(&master, dir.path());
    let state = dir.path().join("c");
    let mut client = Client::start(&master.frontend.to_string(), &state, &[]);
    let id = client.id();
    wait_known(&master, &id);
    let slow = collect(&master, &id, &["Custom.Flow.Slow"]);
    wait_state(&master, &id, &slow, "IN_PROGRESS");
    client.child.kill().unwrap();
    client.child.wait().unwrap();
    let client = Client::start(&master.frontend.to_string(), &state, &[]);
    let f = wait_state(&master, &id, &slow, "ERROR");
    assert!(
        f["status"].as_str().unwrap().contains("Unknown flow"),
        "{f}"
    );
    // A later collection runs normally; the restarted flow completed once.
    let rows = collect(&master, &id, &["Custom.Flow.Rows"]);
    wait_state(&master, &id, &rows, "FINISHED");
    assert!(wait_until(Duration::from_secs(20), || completions(&master)
        .contains_key(&rows)));
    assert_eq!(completions(&master).get(&slow), Some(&1));
    drop(client);
}

#[test]
fn a_flow_follows_its_client_to_either_minion_and_so_does_its_cancel() {
    let c = cluster();
    add_artifacts(&c.master, c.dir.path());
    let state = c.dir.path().join("roamer");
    let first = Client::start(&c.a.frontend.to_string(), &state, &[]);
    let id = first.id();
    wait_known(&c.master, &id);
    drop(first);

    // Scheduled while the client is offline: it runs when the client connects to b.
    let rows = collect(&c.master, &id, &["Custom.Flow.Rows", "--param", "Count=4"]);
    assert_eq!(flow(&c.master, &id, &rows)["state"], "RUNNING");
    let on_b = Client::start(&c.b.frontend.to_string(), &state, &[]);
    let f = wait_state(&c.master, &id, &rows, "FINISHED");
    assert_eq!(f["total_collected_rows"], 4, "{f}");
    assert!(f["inflight_time"].as_i64().unwrap() > 0, "{f}");
    let results = json_lines(&ok(&c.master.talon(&["flows", "results", &id, &rows])));
    assert_eq!(results.len(), 4);

    // Delivered at once to the node holding the client, and cancelled there.
    let slow = collect(&c.master, &id, &["Custom.Flow.Slow"]);
    wait_state(&c.master, &id, &slow, "IN_PROGRESS");
    ok(&c.master.talon(&["flows", "cancel", &id, &slow]));
    assert!(
        wait_until(Duration::from_secs(20), || on_b
            .log()
            .contains("collection cancelled")),
        "{}",
        on_b.log()
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            let done = completions(&c.master);
            done.get(&rows) == Some(&1) && done.get(&slow) == Some(&1)
        }),
        "{:?}",
        completions(&c.master)
    );
}

fn hunt(master: &Master, args: &[&str]) -> String {
    let mut a = vec!["hunts", "create"];
    a.extend_from_slice(args);
    let id = ok(&master.talon(&a)).trim().to_string();
    assert!(id.starts_with("H."), "{id}");
    id
}

fn hunt_state(master: &Master, hunt_id: &str) -> Value {
    serde_json::from_str(&ok(&master.talon(&["hunts", "show", hunt_id]))).unwrap()
}

fn hunt_clients(master: &Master, hunt_id: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(&ok(
        &master.talon(&["hunts", "clients", hunt_id, "--format", "json"])
    ))
    .unwrap();
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ClientId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Waits until the hunt's stats say `scheduled` and `finished`.
fn wait_stats(master: &Master, hunt_id: &str, scheduled: u64, finished: u64) -> Value {
    let mut h = Value::Null;
    let reached = wait_until(Duration::from_secs(40), || {
        h = hunt_state(master, hunt_id);
        h["stats"]["total_clients_scheduled"] == scheduled
            && h["stats"]["total_finished_clients"] == finished
    });
    assert!(reached, "{hunt_id}: wanted {scheduled}/{finished}: {h}");
    h
}

#[test]
fn hunts_reach_every_node_respect_labels_and_limits_and_survive_a_master_kill() {
    let mut c = cluster();
    add_artifacts(&c.master, c.dir.path());
    let d = c.dir.path().to_path_buf();
    let plain = Client::start(&c.a.frontend.to_string(), &d.join("plain"), &[]);
    let web = Client::start(
        &c.b.frontend.to_string(),
        &d.join("web"),
        &["--labels", "web"],
    );
    let prod = Client::start(
        &c.a.frontend.to_string(),
        &d.join("prod"),
        &["--labels", "web,prod"],
    );
    let (plain_id, web_id, prod_id) = (plain.id(), web.id(), prod.id());
    for id in [&plain_id, &web_id, &prod_id] {
        wait_known(&c.master, id);
    }

    // Include labels and an exclusion that wins.
    let labelled = hunt(
        &c.master,
        &[
            "Custom.Flow.Rows",
            "--label",
            "web",
            "--exclude-label",
            "prod",
            "--os",
            "linux",
        ],
    );
    wait_stats(&c.master, &labelled, 1, 1);
    assert_eq!(hunt_clients(&c.master, &labelled), vec![web_id.clone()]);

    // The client limit stops the hunt exactly.
    let limited = hunt(&c.master, &["Custom.Flow.Rows", "--client-limit", "2"]);
    let h = wait_stats(&c.master, &limited, 2, 2);
    assert_eq!(h["state"], "STOPPED", "{h}");
    assert!(
        h["stop_reason"]
            .as_str()
            .unwrap()
            .contains("client limit 2"),
        "{h}"
    );
    assert_eq!(hunt_clients(&c.master, &limited).len(), 2);

    // Every node's clients; results carry their flow and client.
    let all = hunt(&c.master, &["Custom.Flow.Rows", "--param", "Count=3"]);
    let h = wait_stats(&c.master, &all, 3, 3);
    assert_eq!(h["stats"]["total_collected_rows"], 9, "{h}");
    assert_eq!(h["stats"]["total_clients_with_results"], 3, "{h}");
    let results = json_lines(&ok(&c.master.talon(&["hunts", "results", &all])));
    assert_eq!(results.len(), 9);
    assert!(results
        .iter()
        .all(|r| r["FlowId"].as_str().unwrap().ends_with(".H")));

    // kill -9 of the master mid-hunt: stats intact, nobody scheduled twice, and the
    // hunt goes on for clients that come later, on a minion started after the hunt.
    c.master.kill9();
    c.master = talon_tests::cluster::start_master(c.dir.path(), &c.nats);
    let h = wait_stats(&c.master, &all, 3, 3);
    assert_eq!(h["stats"]["total_collected_rows"], 9, "{h}");
    let late = Minion::start(&c.nats.url(), "minion-late", c.dir.path(), 0);
    let newcomer = Client::start(&late.frontend.to_string(), &d.join("late"), &[]);
    let newcomer_id = newcomer.id();
    let h = wait_stats(&c.master, &all, 4, 4);
    assert_eq!(h["stats"]["total_collected_rows"], 12, "{h}");
    let mut expected = vec![plain_id, web_id, prod_id, newcomer_id];
    expected.sort();
    assert_eq!(hunt_clients(&c.master, &all), expected);
    // The limited hunt stayed stopped: the newcomer was not added to it.
    assert_eq!(hunt_clients(&c.master, &limited).len(), 2);
    let flows: Vec<Value> = json_lines(&ok(&c.master.talon(&[
        "events",
        "read",
        "System.Hunt.Creation",
    ])));
    assert_eq!(flows.len(), 3, "one creation row per hunt");

    // Stop ends it for good.
    ok(&c.master.talon(&["hunts", "stop", &all]));
    assert_eq!(hunt_state(&c.master, &all)["state"], "STOPPED");
    let start = c.master.talon(&["hunts", "start", &all]);
    assert!(fails(&start, 1).contains("cannot start again"));
    drop(late);
}

#[test]
fn server_collections_are_flows_of_the_server_and_every_call_needs_its_permission() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    add_artifacts(&master, dir.path());
    let sum = dir.path().join("sum.yaml");
    std::fs::write(&sum, "name: Custom.Sum\ntype: SERVER\nparameters:\n- name: N\n  type: int\n  default: '3'\nsources:\n- query: SELECT sum(item=_value) AS Total FROM range(end=N) GROUP BY 1\n").unwrap();
    ok(&master.talon(&["artifacts", "add", sum.to_str().unwrap()]));
    let rows = json_lines(&ok(&master.talon(&[
        "artifacts",
        "collect",
        "Custom.Sum",
        "--param",
        "N=5",
    ])));
    assert_eq!(rows, vec![serde_json::json!({"Total": 10})]);
    let flows: Value = serde_json::from_str(&ok(
        &master.talon(&["flows", "list", "server", "--format", "json"])
    ))
    .unwrap();
    let f = &flows[0];
    assert_eq!(f["state"], "FINISHED", "{f}");
    assert_eq!(f["client_id"], "server");
    let flow_id = f["session_id"].as_str().unwrap().to_string();
    assert!(wait_until(Duration::from_secs(20), || {
        completions(&master).get(&flow_id) == Some(&1)
    }));
    let row = json_lines(&ok(&master.talon(&[
        "events",
        "read",
        "System.Flow.Completion",
    ])))
    .into_iter()
    .find(|r| r["FlowId"] == flow_id.as_str())
    .unwrap();
    assert_eq!(row["ClientId"], "server");

    // Users: an analyst reads but collects and hunts nothing (a reader, without
    // ANY_QUERY, cannot call these at all); an investigator collects from clients and
    // hunts but not on the server.
    let user = |name: &str, role: &str| {
        let out = dir.path().join(format!("{name}.yaml"));
        ok(&master.talon(&[
            "user",
            "add",
            name,
            "--role",
            role,
            "--out",
            out.to_str().unwrap(),
        ]));
        out
    };
    let client = Client::start(&master.frontend.to_string(), &dir.path().join("c"), &[]);
    let id = client.id();
    wait_known(&master, &id);
    let rita = user("rita", "reader");
    let e = fails(&master.talon_user(&rita, &["flows", "list", "server"]), 1);
    assert!(e.contains("ANY_QUERY"), "{e}");
    let reader = user("anna", "analyst");
    let e = fails(
        &master.talon_user(&reader, &["collect", &id, "Custom.Flow.Rows"]),
        1,
    );
    assert!(e.contains("needs the COLLECT_CLIENT permission"), "{e}");
    let e = fails(
        &master.talon_user(&reader, &["hunts", "create", "Custom.Flow.Rows"]),
        1,
    );
    assert!(e.contains("needs the START_HUNT permission"), "{e}");
    ok(&master.talon_user(&reader, &["flows", "list", "server"]));
    let ivan = user("ivan", "investigator");
    let e = fails(
        &master.talon_user(&ivan, &["artifacts", "collect", "Custom.Sum"]),
        1,
    );
    assert!(e.contains("needs the COLLECT_SERVER permission"), "{e}");
    let mine = ok(&master.talon_user(&ivan, &["collect", &id, "Custom.Flow.Rows", "--wait"]));
    let f = flow(&master, &id, mine.trim());
    assert_eq!(f["request"]["creator"], "ivan");
    assert_eq!(f["state"], "FINISHED");

    // A server flow running when the master is killed ends as an unknown flow, once.
    let slow = dir.path().join("slow.yaml");
    std::fs::write(&slow, "name: Custom.Server.Slow\ntype: SERVER\nsources:\n- query: SELECT sleep(time=600) AS S FROM scope()\n").unwrap();
    ok(&master.talon(&["artifacts", "add", slow.to_str().unwrap()]));
    let made = json_lines(&ok(&master.talon(&[
        "query",
        "SELECT collect_client(client_id='server', artifacts='Custom.Server.Slow') AS F FROM scope()",
    ])));
    let cut = made[0]["F"]["flow_id"].as_str().unwrap().to_string();
    wait_state(&master, "server", &cut, "IN_PROGRESS");
    let mut master = master;
    master.kill9();
    let master = Master::start(&dir.path().join("data"), &[]);
    let f = wait_state(&master, "server", &cut, "ERROR");
    assert!(
        f["status"].as_str().unwrap().contains("server restarted"),
        "{f}"
    );
    assert!(wait_until(Duration::from_secs(20), || completions(&master)
        .get(&cut)
        == Some(&1)));
}

/// A client may answer only for its own flows, and never writes System.* queues: a forged
/// completion row is refused, and a response naming another client's flow files nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_forge_completions_or_answer_for_another_client() {
    use futures::StreamExt;
    use talon_proto::client::*;

    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    add_artifacts(&master, dir.path());
    let victim = Client::start(&master.frontend.to_string(), &dir.path().join("v"), &[]);
    let victim_id = victim.id();
    wait_known(&master, &victim_id);
    drop(victim);
    let flow_id = collect(&master, &victim_id, &["Custom.Flow.Rows"]);

    let me = talon_core::pki::ClientIdentity::new(None).unwrap();
    let mut c = frontend_client::FrontendClient::new(
        talon_tests::deployment::frontend_channel(master.frontend, &me)
            .await
            .unwrap(),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(ClientMessage {
        msg: Some(client_message::Msg::Hello(Hello {
            client_id: me.id.clone(),
            ..Hello::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = c
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut send = async |batch_id: u64, queue: &str, row: String| {
        tx.send(ClientMessage {
            msg: Some(client_message::Msg::Events(EventBatch {
                batch_id,
                incarnation: 7,
                queues: vec![QueueRows {
                    artifact: queue.into(),
                    rows_json: vec![row],
                }],
            })),
        })
        .await
        .unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("an answer")
                .expect("the stream goes on")
                .unwrap();
            if let Some(server_message::Msg::Ack(a)) = msg.msg {
                return a.error;
            }
        }
    };
    let forged = format!(
        "{{\"FlowId\":\"{flow_id}\",\"ClientId\":\"{victim_id}\",\"Flow\":{{\"state\":\"FINISHED\"}}}}"
    );
    let e = send(1, "System.Flow.Completion", forged).await;
    assert!(e.contains("written by the server"), "{e}");
    let status = format!(
        "{{\"FlowId\":\"{flow_id}\",\"ClientId\":\"{victim_id}\",\"Source\":\"Custom.Flow.Rows\",\"Status\":{{\"status\":0}}}}"
    );
    assert_eq!(send(2, "Server.Internal.FlowResponses", status).await, "");
    // The response was stored under the sender's id, which has no such flow: when the
    // victim later runs the flow itself (its rows filed after the forged one), the flow
    // holds the victim's answer alone.
    let victim = Client::start(&master.frontend.to_string(), &dir.path().join("v"), &[]);
    let f = wait_state(&master, &victim_id, &flow_id, "FINISHED");
    assert_eq!(f["total_collected_rows"], 5, "{f}");
    assert_eq!(f["query_stats"].as_array().unwrap().len(), 1, "{f}");
    assert!(wait_until(Duration::from_secs(20), || completions(&master)
        .get(&flow_id)
        == Some(&1)));
    assert_eq!(completions(&master).len(), 1);
    drop(victim);
}

fn vql(master: &Master, query: &str) -> Vec<Value> {
    json_lines(&ok(&master.talon(&["query", query])))
}

#[test]
fn hunts_expire_pause_and_start_and_vql_sees_what_the_cli_does() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    add_artifacts(&master, dir.path());

    // A hunt that expires stops by itself, and nobody is scheduled after.
    let short = hunt(&master, &["Custom.Flow.Rows", "--expires", "2s"]);
    let mut h = Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            h = hunt_state(&master, &short);
            h["state"] == "STOPPED"
        }),
        "{h}"
    );
    assert_eq!(h["stop_reason"], "expired", "{h}");

    // VQL makes a paused hunt; a client connecting meanwhile is not scheduled; starting
    // it offers it to that client.
    let made = vql(
        &master,
        "SELECT hunt(artifacts='Custom.Flow.Rows', expires=now() + 3600, pause=TRUE, description='from vql') AS H FROM scope()",
    );
    let paused = made[0]["H"]["HuntId"].as_str().unwrap().to_string();
    assert_eq!(made[0]["H"]["Request"]["state"], "PAUSED");
    let client = Client::start(&master.frontend.to_string(), &dir.path().join("c"), &[]);
    let id = client.id();
    wait_known(&master, &id);
    let f = collect(&master, &id, &["Custom.Flow.Rows", "--param", "Count=2"]);
    wait_state(&master, &id, &f, "FINISHED");
    assert_eq!(
        hunt_state(&master, &paused)["stats"]["total_clients_scheduled"],
        0
    );
    assert!(hunt_clients(&master, &short).is_empty());
    let started = vql(
        &master,
        &format!("SELECT hunt_update(hunt_id='{paused}', start=TRUE) AS U FROM scope()"),
    );
    assert_eq!(started[0]["U"]["Hunt"]["state"], "RUNNING");
    wait_stats(&master, &paused, 1, 1);

    // The reads the CLI makes, as VQL.
    let rows = vql(
        &master,
        &format!(
            "SELECT N FROM source(client_id='{id}', flow_id='{f}', artifact='Custom.Flow.Rows')"
        ),
    );
    assert_eq!(
        rows,
        vec![serde_json::json!({"N": 0}), serde_json::json!({"N": 1})]
    );
    let flows = vql(
        &master,
        &format!("SELECT ClientId, Flow.state AS State FROM hunt_flows(hunt_id='{paused}')"),
    );
    assert_eq!(
        flows,
        vec![serde_json::json!({"ClientId": id, "State": "FINISHED"})]
    );
    let results = vql(
        &master,
        &format!("SELECT count() AS Rows FROM hunt_results(hunt_id='{paused}', artifact='Custom.Flow.Rows') GROUP BY 1"),
    );
    assert_eq!(results[0]["Rows"], 5);
    let described = vql(
        &master,
        "SELECT hunt_id, hunt_description FROM hunts() WHERE hunt_description",
    );
    assert_eq!(
        described,
        vec![serde_json::json!({"hunt_id": paused, "hunt_description": "from vql"})]
    );
    let paused_again = vql(
        &master,
        &format!("SELECT hunt_update(hunt_id='{paused}', pause=TRUE) AS U FROM scope()"),
    );
    assert_eq!(paused_again[0]["U"]["Hunt"]["state"], "PAUSED");
    // Bad arguments say what was wrong.
    let out = master.talon(&[
        "query",
        "SELECT hunt(artifacts='Custom.Flow.Rows', expires=1) FROM scope()",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expire in the past"),
        "{out:?}"
    );
    let out = master.talon(&[
        "query",
        "SELECT hunt(artifacts='Custom.Flow.Rows', os='plan9') FROM scope()",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown os"),
        "{out:?}"
    );
    drop(client);
}

/// A flow streaming rows while its minion is killed: the client fails over, resends what
/// was not acknowledged, and the flow ends with every row once and one completion.
#[test]
fn a_flow_survives_kill_9_of_its_minion_with_every_row_once() {
    let mut c = cluster();
    add_artifacts(&c.master, c.dir.path());
    let ticks = c.dir.path().join("ticks.yaml");
    std::fs::write(&ticks, "name: Custom.Flow.Ticks\ntype: CLIENT\nsources:\n- query: SELECT count() AS N FROM clock(ms=100) LIMIT 60\n").unwrap();
    ok(&c
        .master
        .talon(&["artifacts", "add", ticks.to_str().unwrap()]));
    let frontends = format!("{},{}", c.a.frontend, c.b.frontend);
    let client = Client::start(&frontends, &c.dir.path().join("c"), &[]);
    let id = client.id();
    wait_known(&c.master, &id);
    let f = collect(&c.master, &id, &["Custom.Flow.Ticks"]);
    let mut seen = Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            seen = flow(&c.master, &id, &f);
            seen["total_collected_rows"].as_u64().unwrap_or(0) >= 5
        }),
        "{seen}"
    );
    c.a.kill9();
    let done = wait_state(&c.master, &id, &f, "FINISHED");
    assert_eq!(done["total_collected_rows"], 60, "{done}");
    let ns: Vec<i64> = json_lines(&ok(&c.master.talon(&["flows", "results", &id, &f])))
        .iter()
        .map(|r| r["N"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, (1..=60).collect::<Vec<_>>(), "every row once, in order");
    assert!(wait_until(Duration::from_secs(20), || completions(
        &c.master
    )
    .get(&f)
        == Some(&1)));
    drop(client);
}
