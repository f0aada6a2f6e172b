//! Automation beyond mail, with real peers: a webhook (HTTP server) receives the
//! Slack-style POST of Velociraptor's "clients coming online" query, TLS is verified
//! (HTTPS server with the deployment's certificate), a silent peer is cut off by the
//! timeout, and secrets, user messages and the NETWORK and SERVER_ADMIN permissions hold.

use std::time::Duration;

use serde_json::Value;
use talon_tests::peers::*;
use talon_tests::*;

#[test]
fn clients_coming_online_are_posted_to_a_webhook_and_unlabelled() {
    let dir = tempfile::tempdir().unwrap();
    let http = Sink::http(&dir.path().join("http"));
    let master = master_with_mail(dir.path(), None);
    let client = Client::start(
        &master.frontend.to_string(),
        &dir.path().join("c"),
        &["--hostname", "laptop-7", "--labels", "notify"],
    );
    let id = client.id();
    assert!(wait_until(Duration::from_secs(30), || ok(
        &master.talon(&["clients", "list", "--search", "label:notify"])
    )
    .contains(&id)));
    // Velociraptor's "clients coming online to Slack" monitoring query, as users write it.
    add_artifact(
        &master,
        dir.path(),
        "slack",
        "name: Custom.Slack.ClientsOnline\ntype: SERVER_EVENT\nparameters:\n- name: LabelGroup\n  default: notify\n- name: SlackToken\nsources:\n- query: |\n    LET hits = SELECT * FROM clients(search='label:' + LabelGroup)\n    SELECT * FROM foreach(row={SELECT * FROM clock(period=1)}, query={\n      SELECT * FROM foreach(row=hits, query={\n        SELECT client_id, label(client_id=client_id, labels=LabelGroup, op='remove') AS Removed,\n               Url, Response\n        FROM http_client(\n          data=serialize(item=dict(text=format(format='Client %v (%v) has come online', args=[client_id, os_info.hostname])), format='json'),\n          headers=dict(`Content-Type`='application/json'),\n          method='POST',\n          url=SlackToken)\n      })\n    })\n",
    );
    let url = format!("http://127.0.0.1:{}/services/T0/B0/XYZ", http.port);
    ok(&master.talon(&[
        "monitoring",
        "server",
        "add",
        "Custom.Slack.ClientsOnline",
        "--param",
        &format!("SlackToken={url}"),
    ]));
    assert!(
        wait_until(Duration::from_secs(30), || !http.received().is_empty()),
        "no POST arrived"
    );
    let post: Value =
        serde_json::from_str(&std::fs::read_to_string(&http.received()[0]).unwrap()).unwrap();
    assert_eq!(post["method"], "POST");
    assert_eq!(post["path"], "/services/T0/B0/XYZ");
    assert_eq!(post["headers"]["content-type"], "application/json");
    let body: Value = serde_json::from_str(post["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body["text"],
        format!("Client {id} (laptop-7) has come online").as_str()
    );
    // The label is gone afterwards, so the client is announced once.
    assert!(wait_until(Duration::from_secs(20), || {
        let c: Value = serde_json::from_str(&ok(&master.talon(&["clients", "show", &id]))).unwrap();
        c["labels"].as_array().is_some_and(|l| l.is_empty())
    }));

    // A peer that accepts and never answers cannot hold the query: the timeout ends it
    // with an error row.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let started = std::time::Instant::now();
    let rows = query(
        &master,
        &format!(
            "SELECT Response, Content FROM http_client(url='http://{}/', timeout=1)",
            silent.local_addr().unwrap()
        ),
    );
    assert_eq!(rows[0]["Response"], 500, "{rows:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    drop(silent);

    // TLS is verified by default: a server whose certificate is of the deployment's CA
    // (not a public one) is refused, and the row says why; with that CA as root_ca the
    // same request goes through.
    let d = talon_tests::deployment::dir();
    let https = Sink::https(
        &dir.path().join("https"),
        &d.join("nats.crt"),
        &d.join("nats.key"),
    );
    let url = format!("https://127.0.0.1:{}/tls", https.port);
    let rows = query(
        &master,
        &format!("SELECT Response, Content FROM http_client(url='{url}', timeout=5)"),
    );
    assert_eq!(rows[0]["Response"], 500, "{rows:?}");
    assert!(
        rows[0]["Content"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{rows:?}"
    );
    assert!(https.received().is_empty());
    let ca = std::fs::read_to_string(d.join("ca.crt")).unwrap();
    let out = master.talon(&[
        "query",
        "--env",
        &format!("CA={ca}"),
        &format!("SELECT Response, Content FROM http_client(url='{url}', root_ca=CA, timeout=5)"),
    ]);
    let rows = json_lines(&ok(&out));
    assert_eq!(rows[0]["Response"], 200, "{rows:?}");
    assert_eq!(rows[0]["Content"], "{\"ok\": true}");
    assert_eq!(https.received().len(), 1);
}

#[test]
fn secrets_are_used_but_never_shown_and_messages_and_network_need_their_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Sink::smtp(&dir.path().join("smtp"));
    // No mail server in the config: only the secret knows where to send.
    let master = master_with_mail(dir.path(), None);
    let rows = query(
        &master,
        "SELECT mail(to='a@example.org', body='x') AS M FROM scope()",
    );
    assert!(rows[0]["M"]["ErrorStatus"]
        .as_str()
        .unwrap()
        .contains("no SMTP server"));

    let out = master.talon_stdin(
        &[
            "secrets",
            "add",
            "notify",
            "--type",
            "SMTP Creds",
            "--field",
            "server=127.0.0.1",
            "--field",
            &format!("server_port={}", smtp.port),
            "--field",
            "from=alerts@example.org",
            "--field",
            "auth_password=-",
        ],
        "hunter2-secret\n",
    );
    ok(&out);
    let e = fails(
        &master.talon(&[
            "secrets",
            "add",
            "bad",
            "--type",
            "SMTP Creds",
            "--field",
            "server=x",
        ]),
        1,
    );
    assert!(e.contains("needs the field server_port"), "{e}");
    let list = ok(&master.talon(&["secrets", "list"]));
    let show = ok(&master.talon(&["secrets", "show", "notify"]));
    assert!(
        show.contains("auth_password") && show.contains("(set)"),
        "{show}"
    );
    for text in [&list, &show] {
        assert!(
            !text.contains("hunter2") && !text.contains("127.0.0.1"),
            "{text}"
        );
    }

    let rows = query(
        &master,
        "SELECT mail(secret='notify', to='a@example.org', subject='via secret', body='x') AS M FROM scope()",
    );
    assert_eq!(rows[0]["M"]["ErrorStatus"], "OK: Message Sent", "{rows:?}");
    let got = mails(&smtp);
    assert_eq!(got[0]["from"], "alerts@example.org");
    assert_eq!(got[0]["subject"], "via secret");

    // Users: an analyst may query but not send mail, make HTTP requests, read secrets,
    // or read the administrator's messages.
    let anna = dir.path().join("anna.yaml");
    ok(&master.talon(&[
        "user",
        "add",
        "anna",
        "--role",
        "analyst",
        "--out",
        anna.to_str().unwrap(),
    ]));
    for vql in [
        "SELECT mail(to='a@example.org', body='x') AS M FROM scope()",
        "SELECT * FROM http_client(url='http://127.0.0.1:1/')",
    ] {
        let out = master.talon_user(&anna, &["query", vql]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            stderr.contains("needs the NETWORK permission"),
            "{vql}: {stderr}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("ErrorStatus"));
    }
    assert!(mails(&smtp).len() == 1);
    let e = fails(&master.talon_user(&anna, &["secrets", "list"]), 1);
    assert!(e.contains("SERVER_ADMIN"), "{e}");

    query(
        &master,
        "SELECT user_message(user='admin', message=dict(text='disk full')) AS U FROM scope()",
    );
    query(
        &master,
        "SELECT user_message(user='anna', text='hello anna') AS U FROM scope()",
    );
    let e = fails(
        &master.talon_user(&anna, &["messages", "list", "--user", "admin"]),
        1,
    );
    assert!(e.contains("SERVER_ADMIN"), "{e}");
    let own = ok(&master.talon_user(&anna, &["messages", "list", "--format", "json"]));
    assert!(
        own.contains("hello anna") && !own.contains("disk full"),
        "{own}"
    );
    let admin = ok(&master.talon(&["messages", "list"]));
    assert!(admin.contains("disk full"), "{admin}");
    let users = query(&master, "SELECT name, roles FROM gui_users()");
    assert!(users
        .iter()
        .any(|u| u["name"] == "anna" && u["roles"][0] == "analyst"));

    // The password never reached a log line.
    assert!(!master.stderr().contains("hunter2"));
}
