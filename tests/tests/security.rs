//! Security, tried as an attacker would on loopback, with real processes: the frontend takes
//! only TLS clients that hold the key of the id they claim; the API takes only certificates
//! of current users, limited by their roles and orgs; the debug pages off loopback take
//! only bearer tokens.

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use talon_core::pki::ClientIdentity;
use talon_proto::client::*;
use talon_tests::*;

fn hello(id: &str) -> ClientMessage {
    ClientMessage {
        msg: Some(client_message::Msg::Hello(Hello {
            client_id: id.into(),
            ..Hello::default()
        })),
    }
}

/// Another deployment (its own CA) in `dir`.
fn other_deployment(dir: &std::path::Path) -> std::path::PathBuf {
    let other = dir.join("other-deployment");
    talon_core::deploy::generate(&other, &talon_core::deploy::Plan::default()).unwrap();
    other
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frontend_takes_only_tls_clients_holding_the_key_of_their_id() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let f = dir.path().join("counter.yaml");
    std::fs::write(&f, COUNTER).unwrap();
    ok(&master.talon(&["artifacts", "add", f.to_str().unwrap()]));
    ok(&master.talon(&["monitoring", "client", "add", "Custom.Counter"]));

    // A real client over TLS: its rows are stored under the id its key names.
    let real = Client::start(&master.frontend.to_string(), &dir.path().join("real"), &[]);
    let id = real.id();
    assert!(
        wait_until(Duration::from_secs(30), || master
            .client_rows("Custom.Counter", &id)
            .len()
            >= 2),
        "{}",
        real.log()
    );

    // Plaintext gRPC: no session.
    let plain =
        frontend_client::FrontendClient::connect(format!("http://{}", master.frontend)).await;
    if let Ok(mut c) = plain {
        let r = c.session(futures::stream::iter(vec![hello(&id)])).await;
        assert!(r.is_err(), "a plaintext session was served");
    }

    // TLS without a client certificate: the handshake fails.
    let no_cert = {
        let mut roots = rustls::RootCertStore::empty();
        for c in
            talon_shared::security::certs("ca", &talon_tests::deployment::client().ca_certificate)
                .unwrap()
        {
            roots.add(c).unwrap();
        }
        let config =
            rustls::ClientConfig::builder_with_provider(talon_shared::security::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("talon-frontend").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut sock = std::net::TcpStream::connect(master.frontend).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut outcome = Ok(());
        // TLS 1.3: the refusal of a missing certificate arrives after the client's Finished.
        for _ in 0..10 {
            match conn.complete_io(&mut sock) {
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
                Ok(_) if !conn.is_handshaking() => {
                    let mut stream = rustls::Stream::new(&mut conn, &mut sock);
                    let _ = stream.write_all(talon_shared::frontend::http2::PREFACE);
                    let mut buf = [0u8; 64];
                    outcome = std::io::Read::read(&mut stream, &mut buf).map(|_| ());
                    break;
                }
                Ok(_) => {}
            }
        }
        outcome
    };
    let e = no_cert.expect_err("a connection without a client certificate was served");
    assert!(
        e.to_string().contains("Certificate") || e.to_string().contains("certificate"),
        "{e}"
    );

    // A client of another deployment (another CA) does not trust this frontend.
    let other = other_deployment(dir.path());
    let stranger = Client::start(
        &master.frontend.to_string(),
        &dir.path().join("stranger"),
        &[
            "--config",
            other.join("client.config.yaml").to_str().unwrap(),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(20), || stranger
            .log()
            .contains("UnknownIssuer")),
        "{}",
        stranger.log()
    );

    // A copy of the real client's id with another key: refused as that id, by name.
    let thief = ClientIdentity::new(None).unwrap();
    let mut c = frontend_client::FrontendClient::new(
        talon_tests::deployment::frontend_channel(master.frontend, &thief)
            .await
            .unwrap(),
    );
    let e = c
        .session(futures::stream::iter(vec![hello(&id)]))
        .await
        .expect_err("a borrowed id was accepted");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains(&format!(
            "is not the id of the key this connection presented ({})",
            thief.id
        )),
        "{e:?}"
    );
    // The stranger and the thief never became clients; the real one streams on.
    let list = ok(&master.talon(&["clients", "list", "--format", "json"]));
    assert_eq!(list.matches("\"client_id\"").count(), 1, "{list}");
    let before = master.client_rows("Custom.Counter", &id).len();
    assert!(wait_until(Duration::from_secs(20), || master
        .client_rows("Custom.Counter", &id)
        .len()
        > before));
}

#[test]
fn api_callers_are_current_users_limited_by_role_and_org() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let user = |name: &str, role: &str, org: &str| {
        let out = dir.path().join(format!("{name}.yaml"));
        ok(&master.talon(&[
            "--org",
            org,
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

    // No certificate at all: no API.
    let dir_path = dir.path().to_path_buf();
    let none = dir_path.join("none.yaml");
    let out = talon_as(&master.api.to_string(), &none, &["queues"], None);
    assert_eq!(out.status.code(), Some(1));
    // The administrator of another deployment (another CA): refused.
    let other = other_deployment(dir.path());
    let out = master.talon_user(&other.join("admin.api.yaml"), &["queues"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // A reader reads, and cannot add an artifact, push, or query at all.
    let reader = user("rita", "reader", "root");
    ok(&master.talon_user(&reader, &["queues"]));
    let f = dir.path().join("a.yaml");
    std::fs::write(&f, "name: Custom.Mine\ntype: SERVER_EVENT\n").unwrap();
    let e = fails(
        &master.talon_user(&reader, &["artifacts", "add", f.to_str().unwrap()]),
        1,
    );
    assert!(
        e.contains("user rita lacks the ARTIFACT_WRITER permission in org root"),
        "{e}"
    );
    let e = fails(
        &master.talon_user(
            &reader,
            &["events", "push", "Server.Audit.Logs", "--row", "{}"],
        ),
        1,
    );
    assert!(e.contains("lacks the PUBLISH permission"), "{e}");
    let e = fails(
        &master.talon_user(
            &reader,
            &["query", "SELECT * FROM parse_csv(filename='/etc/passwd')"],
        ),
        1,
    );
    assert!(e.contains("lacks the ANY_QUERY permission"), "{e}");

    // An analyst of org A queries in A, but reads no file there, and nothing of org B.
    let analyst = user("ann", "analyst", "A");
    let out = master.talon_user(
        &analyst,
        &[
            "--org",
            "A",
            "query",
            "SELECT * FROM parse_csv(filename='/etc/passwd')",
        ],
    );
    let e = fails(&out, 1);
    assert!(
        e.contains(
            "Permission denied: parse_csv(filename=...) needs the FILESYSTEM_READ permission"
        ),
        "{e}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "{out:?}");
    ok(&master.talon_user(
        &analyst,
        &["--org", "A", "query", "SELECT 1 AS One FROM scope()"],
    ));
    for args in [
        &["--org", "B", "queues"][..],
        &["--org", "B", "events", "read", "Server.Audit.Logs"],
        &[
            "--org",
            "B",
            "events",
            "watch",
            "Server.Audit.Logs",
            "--count",
            "1",
        ],
        &["--org", "B", "query", "SELECT 1 FROM scope()"],
    ] {
        let e = fails(&master.talon_user(&analyst, args), 1);
        assert!(
            e.contains("user ann is not a member of org B"),
            "{args:?}: {e}"
        );
    }

    // What alice does is audited under her certificate's name.
    let alice = user("alice", "org_admin", "root");
    ok(&master.talon_user(&alice, &["artifacts", "add", f.to_str().unwrap()]));
    let audit = json_lines(&ok(&master.talon(&["events", "read", "Server.Audit.Logs"])));
    let added = audit
        .iter()
        .find(|r| r["operation"] == "artifact_add")
        .expect("an audit row");
    assert_eq!(added["principal"], "alice", "{added}");
    assert_eq!(added["_Source"], "server", "{added}");
    let whoami = ok(&master.talon_user(&alice, &["user", "whoami"]));
    assert!(
        whoami.starts_with("alice\n") && !whoami.contains("SERVER_ADMIN"),
        "{whoami}"
    );
    // Only an administrator manages users.
    let e = fails(&master.talon_user(&alice, &["user", "list"]), 1);
    assert!(e.contains("lacks the SERVER_ADMIN permission"), "{e}");

    // A removed user's certificate stops working at once; so does a replaced one.
    let users = ok(&master.talon(&["user", "list"]));
    assert!(users.contains("alice") && users.contains("ann"), "{users}");
    ok(&master.talon(&["user", "remove", "alice"]));
    let e = fails(&master.talon_user(&alice, &["queues"]), 1);
    assert!(e.contains("user alice does not exist"), "{e}");
    let old = std::fs::read(&reader).unwrap();
    let stale = dir.path().join("rita-old.yaml");
    std::fs::write(&stale, old).unwrap();
    user("rita", "reader", "root");
    let e = fails(&master.talon_user(&stale, &["queues"]), 1);
    assert!(
        e.contains("the certificate of user rita was replaced"),
        "{e}"
    );

    // The principal header of old is gone: nothing a caller sends names it.
    assert!(!ok(&master.talon(&["events", "read", "Server.Audit.Logs"])).contains("cli:"));
}

#[test]
fn server_monitoring_runs_as_the_user_who_added_it_with_that_users_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let f = dir.path().join("reader.yaml");
    std::fs::write(
        &f,
        "name: Custom.FileReader\ntype: SERVER_EVENT\nsources:\n- query: |\n    SELECT * FROM foreach(row={SELECT * FROM clock(ms=200)}, query={SELECT * FROM parse_csv(filename='/etc/passwd')})\n",
    )
    .unwrap();
    ok(&master.talon(&["artifacts", "add", f.to_str().unwrap()]));
    let out = dir.path().join("carl.yaml");
    ok(&master.talon(&[
        "user",
        "add",
        "carl",
        "--role",
        "org_admin",
        "--out",
        out.to_str().unwrap(),
    ]));
    ok(&master.talon_user(&out, &["monitoring", "server", "add", "Custom.FileReader"]));
    let list = ok(&master.talon(&["monitoring", "server", "list", "--format", "json"]));
    let table: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(table[0]["principal"], "carl", "{table}");
    assert!(
        !table[0]["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "FILESYSTEM_READ"),
        "{table}"
    );
    // The query runs as carl: the file stays unread, and the log says why.
    assert!(
        wait_until(Duration::from_secs(20), || ok(&master.talon(&[
            "monitoring",
            "logs",
            "Custom.FileReader",
            "--count",
            "20"
        ]))
        .contains("needs the FILESYSTEM_READ permission")),
        "{}",
        ok(&master.talon(&["monitoring", "logs", "Custom.FileReader", "--count", "20"]))
    );
    let rows = master.queue_stats("root", "Custom.FileReader");
    assert_eq!(rows["rows_pushed"], 0, "{rows}");
}

/// The machine's own non-loopback IPv4 address (from the route a UDP socket would take;
/// nothing is sent), for a server that must not be on loopback.
fn own_address() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.254:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// GET `path` of `addr` with an optional bearer token; the status line.
fn status_of(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: talon\r\n{auth}\r\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

#[test]
fn debug_pages_off_loopback_need_a_token_with_read_results_in_the_org() {
    let Some(ip) = own_address() else {
        eprintln!("this machine has no non-loopback address; nothing to test");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(
        &dir.path().join("data"),
        &["--debug-addr", &format!("{ip}:0")],
    );
    assert_eq!(master.debug.ip(), ip);
    let watch = "/debug/watch?queue=Server.Audit.Logs";
    assert!(status_of(master.debug, watch, None).contains(" 401 "));
    assert!(status_of(master.debug, "/metrics", Some("guess")).contains(" 401 "));
    let admin: talon_core::deploy::ApiClientConfig =
        talon_core::deploy::read(&talon_tests::deployment::admin_config()).unwrap();
    let token = admin.debug_token.expect("the administrator has a token");
    assert!(status_of(master.debug, watch, Some(&token)).contains(" 200 "));
    // A reader of org A watches A, not root.
    let out = dir.path().join("r.yaml");
    ok(&master.talon(&[
        "--org",
        "A",
        "user",
        "add",
        "ria",
        "--role",
        "reader",
        "--out",
        out.to_str().unwrap(),
    ]));
    let ria: talon_core::deploy::ApiClientConfig = talon_core::deploy::read(&out).unwrap();
    let ria = ria.debug_token.unwrap();
    assert!(status_of(master.debug, watch, Some(&ria)).contains(" 401 "));
    assert!(status_of(master.debug, &format!("{watch}&org=A"), Some(&ria)).contains(" 200 "));
    // User messages: a reader of root sees that the administrator has messages, not what
    // they say; the administrator sees them.
    ok(&master.talon(&[
        "query",
        "SELECT user_message(user='admin', text='the vault code is 1234') FROM scope()",
    ]));
    let out = dir.path().join("rob.yaml");
    ok(&master.talon(&[
        "user",
        "add",
        "rob",
        "--role",
        "reader",
        "--out",
        out.to_str().unwrap(),
    ]));
    let rob: talon_core::deploy::ApiClientConfig = talon_core::deploy::read(&out).unwrap();
    let rob = rob.debug_token.unwrap();
    let page = |token: &str| {
        let mut s = std::net::TcpStream::connect(master.debug).unwrap();
        write!(
            s,
            "GET /debug/messages?format=json HTTP/1.0\r\nHost: talon\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        std::io::Read::read_to_string(&mut s, &mut body).unwrap();
        body
    };
    let as_rob = page(&rob);
    assert!(
        as_rob.contains(" 200 ") && as_rob.contains("(needs SERVER_ADMIN)"),
        "{as_rob}"
    );
    assert!(!as_rob.contains("vault code"), "{as_rob}");
    assert!(page(&token).contains("the vault code is 1234"));
    // The master never logs a token.
    assert!(!master.stderr().contains(&token) && !master.stderr().contains(&ria));
}
