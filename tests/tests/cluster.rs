//! The cluster with real processes: a nats-server, a master, two minions and clients over
//! loopback. Rows come from a counting CLIENT_EVENT artifact, so "every row exactly once"
//! is checked as: each client's stored N values are 1, 2, 3 ... with no gap and no repeat.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use talon_tests::*;

/// Counter values per client in rows (JSON lines).
fn counts(lines: &[String]) -> BTreeMap<String, Vec<i64>> {
    let mut m: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if let (Some(c), Some(n)) = (v["ClientId"].as_str(), v["N"].as_i64()) {
            m.entry(c.to_string()).or_default().push(n);
        }
    }
    m
}

/// The master's stored counter rows, per client.
fn stored(master: &Master) -> BTreeMap<String, Vec<i64>> {
    let out = ok(&master.talon(&["events", "read", "Custom.Counter"]));
    counts(&out.lines().map(String::from).collect::<Vec<_>>())
}

/// Drains what a watcher received so far into `into`.
fn drain(rx: &Receiver<String>, into: &mut Vec<String>) {
    while let Ok(l) = rx.try_recv() {
        into.push(l);
    }
}

/// Waits until `rx` delivered a row with N >= `n` from every client in `clients`.
fn wait_rows(rx: &Receiver<String>, seen: &mut Vec<String>, clients: &[String], n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        drain(rx, seen);
        let c = counts(seen);
        if clients.iter().all(|id| {
            c.get(id)
                .and_then(|v| v.iter().max())
                .is_some_and(|m| *m >= n)
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rows up to N={n} never arrived: {c:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts each client's values are exactly 1..=max, each once.
fn assert_exactly_once(what: &str, per_client: &BTreeMap<String, Vec<i64>>, clients: &[String]) {
    for id in clients {
        let mut v = per_client.get(id).cloned().unwrap_or_default();
        v.sort_unstable();
        let max = *v.last().unwrap_or(&0);
        assert!(max > 0, "{what}: no rows of {id}");
        let expected: Vec<i64> = (1..=max).collect();
        assert_eq!(
            v, expected,
            "{what}: rows of {id} are not 1..={max} exactly once"
        );
    }
}

/// Waits until the master stored every row a watcher saw (the persister caught up).
fn wait_stored(master: &Master, seen: &BTreeMap<String, Vec<i64>>) -> BTreeMap<String, Vec<i64>> {
    let mut last = BTreeMap::new();
    let done = wait_until(Duration::from_secs(60), || {
        last = stored(master);
        seen.iter().all(|(id, ns)| {
            let have: BTreeSet<i64> = last.get(id).into_iter().flatten().copied().collect();
            ns.iter().all(|n| have.contains(n))
        })
    });
    if !done {
        let missing: Vec<String> = seen
            .iter()
            .map(|(id, ns)| {
                let have: BTreeSet<i64> = last.get(id).into_iter().flatten().copied().collect();
                let gone: Vec<&i64> = ns.iter().filter(|n| !have.contains(n)).take(10).collect();
                format!("{id}: {} stored, missing {gone:?}", have.len())
            })
            .collect();
        let log = master.stderr();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!(
            "the master never stored every row watchers saw: {missing:?}\nmaster log (last lines first):\n{}",
            tail.join("\n")
        );
    }
    last
}

#[test]
fn rows_from_clients_on_both_minions_reach_watchers_on_master_and_minion_once() {
    let c = cluster();
    let (_w, on_master) = c.master.spawn_watching(
        &["events", "watch", "Custom.Counter"],
        "root",
        "Custom.Counter",
        1,
    );
    let on_minion = c.b.watch("Custom.Counter");
    let c1 = Client::start(&c.a.frontend.to_string(), &c.dir.path().join("c1"), &[]);
    let c2 = Client::start(&c.b.frontend.to_string(), &c.dir.path().join("c2"), &[]);
    let ids = vec![c1.id(), c2.id()];
    let (mut m_seen, mut b_seen) = (Vec::new(), Vec::new());
    wait_rows(&on_master, &mut m_seen, &ids, 20);
    wait_rows(&on_minion, &mut b_seen, &ids, 20);
    drop((c1, c2));
    std::thread::sleep(Duration::from_millis(300)); // let in-flight rows land
    drain(&on_master, &mut m_seen);
    drain(&on_minion, &mut b_seen);
    // Each watcher saw each client's rows in one unbroken run, once each.
    for (what, seen) in [("master watcher", &m_seen), ("minion watcher", &b_seen)] {
        let per = counts(seen);
        for id in &ids {
            let v = &per[id];
            let first = v[0];
            assert_eq!(
                *v,
                (first..first + v.len() as i64).collect::<Vec<_>>(),
                "{what}: {id}"
            );
        }
    }
    let stored = wait_stored(&c.master, &counts(&m_seen));
    assert_exactly_once("stored", &stored, &ids);
    // The persister's own count (on the master's debug server) covers every stored row.
    let (_, body) = c.master.http_get("/debug/persister");
    let persister: serde_json::Value = serde_json::from_str(&body).expect(&body);
    let rows: usize = stored.values().map(Vec::len).sum();
    assert!(
        persister["rows_stored"].as_u64().unwrap_or(0) >= rows as u64
            && persister["applied_seq"].as_u64().unwrap_or(0) > 0,
        "{persister} for {rows} rows"
    );
    // The master knows both clients, connected on minions, with their hostnames.
    let list = ok(&c.master.talon(&["clients", "list", "--format", "json"]));
    for id in &ids {
        assert!(list.contains(id.as_str()), "{list}");
    }
}

#[test]
fn kill_9_of_a_minion_moves_its_clients_and_kill_9_of_the_master_loses_nothing() {
    let mut c = cluster();
    let frontends = format!("{},{}", c.a.frontend, c.b.frontend);
    let client = Client::start(&frontends, &c.dir.path().join("c1"), &[]);
    let id = client.id();
    let ids = vec![id.clone()];
    let on_b = c.b.watch("Custom.Counter");
    let mut seen = Vec::new();
    // The client is on minion a (first in its list); kill it.
    let (_w, on_master) = c.master.spawn_watching(
        &["events", "watch", "Custom.Counter"],
        "root",
        "Custom.Counter",
        1,
    );
    wait_rows(&on_master, &mut seen, &ids, 10);
    c.a.kill9();
    let killed_at = Instant::now();
    let before = counts(&seen)[&id].iter().copied().max().unwrap();
    let mut b_seen = Vec::new();
    wait_rows(&on_b, &mut b_seen, &ids, before + 10);
    assert!(
        killed_at.elapsed() < Duration::from_secs(30),
        "the client took {:?} to move to minion b",
        killed_at.elapsed()
    );
    assert!(
        client.log().contains(&c.b.frontend.to_string()),
        "{}",
        client.log()
    );

    // kill -9 of the master: minion b keeps accepting (its watcher keeps getting rows).
    c.master.kill9();
    drain(&on_b, &mut b_seen);
    let at_kill = counts(&b_seen)[&id].iter().copied().max().unwrap();
    wait_rows(&on_b, &mut b_seen, &ids, at_kill + 20);
    c.master = start_master(c.dir.path(), &c.nats);
    drop(client);
    c.b.wait_watchers_caught_up("Custom.Counter");
    drain(&on_b, &mut b_seen);
    let mut all = counts(&seen);
    for (k, v) in counts(&b_seen) {
        all.entry(k).or_default().extend(v);
    }
    let stored = wait_stored(&c.master, &all);
    assert_exactly_once("stored after both kills", &stored, &ids);
}

#[test]
fn a_nats_restart_loses_no_durable_row() {
    let mut c = cluster();
    let client = Client::start(&c.b.frontend.to_string(), &c.dir.path().join("c1"), &[]);
    let ids = vec![client.id()];
    let on_b = c.b.watch("Custom.Counter");
    let mut seen = Vec::new();
    wait_rows(&on_b, &mut seen, &ids, 10);
    c.nats.restart();
    // Rows made while NATS was away were spooled by the client and come through after.
    let before = counts(&seen)[&ids[0]].iter().copied().max().unwrap();
    wait_rows(&on_b, &mut seen, &ids, before + 20);
    drop(client);
    c.b.wait_watchers_caught_up("Custom.Counter");
    drain(&on_b, &mut seen);
    let stored = wait_stored(&c.master, &counts(&seen));
    assert_exactly_once("stored across a NATS restart", &stored, &ids);
}

#[test]
fn a_late_minion_has_artifacts_and_tables_at_once_and_status_shows_every_node() {
    let mut c = cluster();
    // The table changed after a and b started; a minion started now has it at once.
    ok(&c.master.talon(&[
        "monitoring",
        "client",
        "add",
        "Generic.Client.Stats",
        "--param",
        "Frequency=1",
    ]));
    let late = Minion::start(&c.nats.url(), "minion-late", c.dir.path(), 0);
    let on_late = late.watch("Custom.Counter");
    let stats = late.watch("Generic.Client.Stats");
    let client = Client::start(&late.frontend.to_string(), &c.dir.path().join("c1"), &[]);
    let ids = vec![client.id()];
    let mut seen = Vec::new();
    wait_rows(&on_late, &mut seen, &ids, 3);
    stats
        .recv_timeout(Duration::from_secs(20))
        .expect("the late minion's client runs the table changed before it started");

    // Every node reports; the late minion's client is counted; a killed node goes dead.
    let status = |m: &Master| -> serde_json::Value {
        serde_json::from_str(&ok(&m.talon(&["cluster", "status", "--format", "json"]))).unwrap()
    };
    let node = |s: &serde_json::Value, name: &str| -> serde_json::Value {
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == name)
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    let mut s = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            s = status(&c.master);
            ["master", "minion-a", "minion-b", "minion-late"]
                .iter()
                .all(|n| node(&s, n)["alive"] == true)
                && node(&s, "minion-late")["connected_clients"] == 1
        }),
        "{s}"
    );
    assert_eq!(s["mode"], "cluster");
    assert_eq!(node(&s, "master")["role"], "master");
    c.a.kill9();
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(75), || {
            s = status(&c.master);
            node(&s, "minion-a")["alive"] == false
        }),
        "{s}"
    );
    assert!(
        killed.elapsed() <= Duration::from_secs(71),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(node(&s, "minion-b")["alive"], true, "{s}");
    drop(client);
}

#[test]
fn a_push_while_nats_is_down_fails_and_one_after_it_returns_is_stored() {
    let mut c = cluster();
    c.nats.kill9();
    assert!(
        wait_until(Duration::from_secs(20), || c
            .master
            .http_get("/metrics")
            .1
            .contains("talon_bus_connected 0")),
        "the master never noticed NATS was gone"
    );
    let out = c.master.talon(&[
        "events",
        "push",
        "Server.Audit.Logs",
        "--row",
        "{\"op\":\"while-down\"}",
    ]);
    let err = fails(&out, 1);
    assert!(err.contains("NATS is unreachable"), "{err}");
    c.nats.restart();
    assert!(
        wait_until(Duration::from_secs(30), || c
            .master
            .talon(&[
                "events",
                "push",
                "Server.Audit.Logs",
                "--row",
                "{\"op\":\"after\"}"
            ])
            .status
            .success()),
        "pushes never worked again after NATS came back"
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            let rows = ok(&c.master.talon(&["events", "read", "Server.Audit.Logs"]));
            rows.contains("\"after\"")
        }),
        "the row pushed after NATS returned was not stored"
    );
    let rows = ok(&c.master.talon(&["events", "read", "Server.Audit.Logs"]));
    assert!(!rows.contains("while-down"), "{rows}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_in_a_cluster_catches_up_from_jetstream_losing_nothing() {
    const QUEUE: &str = "Server.Audit.Logs";
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("js"));
    let config = dir.path().join("talon.yaml");
    // A tiny in-memory buffer, so the stalled watcher must re-read what it missed.
    std::fs::write(&config, "queue_buffer_batches: 4\n").unwrap();
    let master = Master::start(
        &dir.path().join("master"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--nats-url",
            &nats.url(),
        ],
    );
    let mut stalled = master.watch_stream(QUEUE).await;
    push_padded_rows(master.api, QUEUE, 400).await;
    // Now the stalled watcher reads: every row, in order, none twice.
    for i in 0..4000 {
        let r = tokio::time::timeout(Duration::from_secs(20), stalled.message())
            .await
            .expect("stalled watcher gets its rows")
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.json).unwrap();
        assert_eq!(v["i"], i, "row out of order");
    }
    let audit = master.queue_stats("root", QUEUE);
    assert_eq!(audit["rows_dropped"], 0, "{audit}");
    assert!(audit["rows_caught_up"].as_u64().unwrap() > 0, "{audit}");
}

/// Item 7 of the hardening issue: with NATS unreachable or refusing, the master never
/// became ready, logged the cause at INFO and ignored SIGTERM. Now each failed attempt is
/// an ERROR naming the cause, attempts repeat with backoff, SIGTERM ends the wait, and
/// credentials in the URL are used. The NATS server (as every one in these tests) requires
/// TLS and a password: a node whose CA did not issue its certificate does not join either.
#[test]
fn a_master_waiting_for_nats_says_why_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("nats"));
    let config = talon_tests::deployment::server_config();
    let start = |name: &str, url: &str, own_ca: bool| {
        let log = dir.path().join(format!("{name}.log"));
        let mut cmd = std::process::Command::new(bin("talon-master"));
        if !own_ca {
            cmd.arg("--config").arg(&config);
        }
        let child = cmd
            .arg("--datastore")
            .arg(dir.path().join(name))
            .args(["--api-addr", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0"])
            .args(["--frontend-addr", "127.0.0.1:0", "--nats-url", url])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (KillOnDrop(child), log)
    };
    let unreachable = format!("nats://127.0.0.1:{}", free_port());
    let wrong = format!("nats://talon-master:wrong@127.0.0.1:{}", nats.port);
    for (name, url, own_ca, cause) in [
        ("refused", wrong, false, "authorization violation"),
        ("unreachable", unreachable, false, "cannot connect to NATS"),
        // A master with a CA of its own (made on its first start) trusts not this server.
        ("untrusted", nats.url(), true, "UnknownIssuer"),
    ] {
        let (mut master, log) = start(name, &url, own_ca);
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            wait_until(Duration::from_secs(20), || {
                let l = read();
                l.matches("cannot connect to NATS; retrying").count() >= 2 && l.contains(cause)
            }),
            "{name}: {}",
            read()
        );
        assert!(
            read().contains("ERROR"),
            "{name}: the cause is an error: {}",
            read()
        );
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &master.0.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = master.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: SIGTERM ignored: {}",
                read()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{name}: {status:?} {}", read());
    }
    // With the credentials in the URL it joins; and with those of its config.
    let auth = talon_tests::deployment::nats().master;
    let password = auth.password.clone().unwrap();
    let url = format!("nats://talon-master:{password}@127.0.0.1:{}", nats.port);
    for (name, url) in [("joined", url), ("configured", nats.url())] {
        let master = Master::start(&dir.path().join(name), &["--nats-url", &url]);
        assert!(wait_until(Duration::from_secs(30), || ok(
            &master.talon(&["cluster", "status"])
        )
        .contains("master")));
        assert!(
            !master.stderr().contains(&password),
            "the password is never logged"
        );
    }
}

/// NATS credentials other than a password: a master whose config holds an NKey seed joins
/// a nats-server that knows only that NKey's public key (over the deployment's TLS).
#[test]
fn a_master_joins_nats_with_an_nkey_seed_from_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let key = nkeys::KeyPair::new_user();
    let seed = key.seed().unwrap();
    // The edit is a plain fn: the public key reaches it through the environment of this
    // test process (each test runs in a process of its own).
    std::env::set_var("TALON_TEST_NKEY_PUBLIC", key.public_key());
    let nats = Nats::start_edited(&dir.path().join("js"), |conf| {
        let public = std::env::var("TALON_TEST_NKEY_PUBLIC").unwrap();
        let start = conf.find("users: [").unwrap();
        // The user list ends at the `]` alone on its line (permissions hold brackets too).
        let end = conf[start..].find("\n    ]").unwrap() + start + "\n    ]".len();
        format!(
            "{}users: [ {{ nkey: \"{public}\" }} ]{}",
            &conf[..start],
            &conf[end..]
        )
    });
    let ca = talon_tests::deployment::client().ca_certificate;
    let config = dir.path().join("nkey.yaml");
    let yaml = serde_yaml::to_string(&serde_json::json!({
        "nats": {"master": {"nkey_seed": seed, "ca_certificate": ca, "server_name": "talon-nats"}}
    }))
    .unwrap();
    std::fs::write(&config, yaml).unwrap();
    let master = Master::start(
        &dir.path().join("master"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--nats-url",
            &nats.url(),
        ],
    );
    assert!(wait_until(Duration::from_secs(30), || ok(
        &master.talon(&["cluster", "status"])
    )
    .contains("connected")));
    assert!(!master.stderr().contains(&seed), "the seed is never logged");
}
