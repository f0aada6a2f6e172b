//! Server automation with real peers: a real SMTP server (aiosmtpd) and HTTP server on
//! loopback, a real master and real clients. Mail goes through the durable outbox (sent,
//! refused and retried, shown as failed with the server's answer), Generic.Utils.SendEmail
//! builds MIME that parses back into its parts, a burst of alerts is mailed in full, a
//! failing server query becomes an alert and then a mail, a webhook receives the
//! Slack-style POST, and secrets, user messages and permissions hold.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use talon_tests::peers::{parse_mail, Sink};
use talon_tests::*;

/// A master whose `mail:` section points at `smtp` (when given), retrying quickly.
fn master_with_mail(dir: &Path, smtp: Option<u16>) -> Master {
    let config = dir.join("master.yaml");
    let mail = match smtp {
        Some(port) => format!(
            "mail:\n  server: 127.0.0.1\n  server_port: {port}\n  from: talon@example.org\n  max_attempts: 3\n  retry_secs: 1\n"
        ),
        None => "mail:\n  max_attempts: 2\n  retry_secs: 1\n".to_string(),
    };
    std::fs::write(&config, mail).unwrap();
    Master::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

fn add_artifact(master: &Master, dir: &Path, name: &str, text: &str) {
    let f = dir.join(format!("{name}.yaml"));
    std::fs::write(&f, text).unwrap();
    ok(&master.talon(&["artifacts", "add", f.to_str().unwrap()]));
}

fn query(master: &Master, vql: &str) -> Vec<Value> {
    json_lines(&ok(&master.talon(&["query", vql])))
}

fn outbox(master: &Master) -> Vec<Value> {
    serde_json::from_str(&ok(&master.talon(&["mail", "list", "--format", "json"]))).unwrap()
}

/// Every received mail, parsed.
fn mails(sink: &Sink) -> Vec<Value> {
    sink.received().iter().map(|p| parse_mail(p)).collect()
}

fn text_of(mail: &Value) -> String {
    mail["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn mail_goes_through_the_outbox_and_a_refused_mail_is_retried_then_failed() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Sink::smtp(&dir.path().join("smtp"));
    let master = master_with_mail(dir.path(), Some(smtp.port));

    let rows = query(
        &master,
        "SELECT mail(to='ops@example.org', subject='hello', body='the body text') AS M FROM scope()",
    );
    assert_eq!(rows[0]["M"]["ErrorStatus"], "OK: Message Sent", "{rows:?}");
    let got = mails(&smtp);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["subject"], "hello");
    assert_eq!(got[0]["from"], "talon@example.org");
    assert!(text_of(&got[0]).contains("the body text"));

    // The plugin form, refused by the server: the row says so, the outbox retries and
    // then marks it failed with the server's answer; nothing is dropped silently.
    let rows = query(
        &master,
        "SELECT * FROM mail(to='refuse@example.org', subject='no', body='x', period=-1)",
    );
    let status = rows[0]["ErrorStatus"].as_str().unwrap().to_string();
    assert!(
        status.contains("451") && status.contains("attempt 2 of 3"),
        "{status}"
    );
    let id = rows[0]["MailId"].as_str().unwrap().to_string();
    let mut failed = Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            failed = outbox(&master)
                .into_iter()
                .find(|m| m["id"] == id.as_str())
                .unwrap_or_default();
            failed["state"] == "failed"
        }),
        "never failed: {failed}"
    );
    assert_eq!(failed["attempts"], 3);
    assert!(failed["last_error"]
        .as_str()
        .unwrap()
        .contains("refuses this recipient"));
    let table = ok(&master.talon(&["mail", "list"]));
    assert!(
        table.contains("failed") && table.contains("sent"),
        "{table}"
    );

    // Oversized mail is refused with a clear error, and the outbox keeps working.
    let rows = query(
        &master,
        "SELECT mail(to='ops@example.org', body=format(format='%026214500d', args=[0]), period=-1) AS M FROM scope()",
    );
    let status = rows[0]["M"]["ErrorStatus"].as_str().unwrap();
    assert!(status.contains("over the limit of 26214400"), "{status}");
    // A mail that cannot be sent at all is an error row, never a silent drop.
    let rows = query(
        &master,
        "SELECT mail(to='not an address', body='x') AS M FROM scope()",
    );
    assert!(rows[0]["M"]["ErrorStatus"]
        .as_str()
        .unwrap()
        .contains("not an address"));

    // A held mail survives kill -9: the second mail to ops inside the send interval is
    // queued in the store, and the restarted master sends it when the interval is over.
    let rows = query(
        &master,
        "SELECT mail(to='ops@example.org', subject='held', body='after the crash', period=4) AS M FROM scope()",
    );
    let status = rows[0]["M"]["ErrorStatus"].as_str().unwrap().to_string();
    assert!(status.contains("held until"), "{status}");
    let mut master = master;
    master.kill9();
    let config = dir.path().join("master.yaml");
    let master = Master::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    assert!(
        wait_until(Duration::from_secs(30), || mails(&smtp)
            .iter()
            .any(|m| m["subject"] == "held")),
        "the held mail was lost: {:?}",
        outbox(&master)
    );
    let sent = outbox(&master);
    assert_eq!(
        sent.iter().filter(|m| m["state"] == "sent").count(),
        2,
        "{sent:?}"
    );
}

#[test]
fn send_email_builds_mime_that_parses_into_plain_html_and_attachment() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Sink::smtp(&dir.path().join("smtp"));
    let master = master_with_mail(dir.path(), Some(smtp.port));
    let attachment = dir.path().join("report.txt");
    std::fs::write(&attachment, "x".repeat(300)).unwrap();
    let files = format!(
        "Path,Filename\n{},report.txt\n{},gone.txt\n",
        attachment.display(),
        dir.path().join("missing").display()
    );
    let long_plain = "plain words ".repeat(40);
    let out = ok(&master.talon(&[
        "artifacts",
        "collect",
        "Generic.Utils.SendEmail",
        "--param",
        "Recipients=[\"a@example.org\", \"b@example.org\"]",
        "--param",
        &format!("PlainTextMessage={long_plain}"),
        "--param",
        "HTMLMessage=<p><b>bold</b> words</p>",
        "--param",
        "Subject=Report",
        "--param",
        &format!("FilesToUpload={files}"),
        "--param",
        "Period=-1",
    ]));
    let row: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(row["Mail"]["ErrorStatus"], "OK: Message Sent", "{out}");
    let received = smtp.received();
    assert_eq!(received.len(), 1);
    let m = parse_mail(&received[0]);
    assert_eq!(m["subject"], "Report");
    assert_eq!(m["mime_version"], "1.0");
    assert_eq!(m["defects"], serde_json::json!([]), "{m}");
    let types: Vec<&str> = m["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "multipart/mixed",
            "multipart/alternative",
            "text/plain",
            "text/html",
            "application/octet-stream"
        ]
    );
    let parts = m["parts"].as_array().unwrap();
    assert_eq!(parts[2]["text"], long_plain.as_str());
    assert_eq!(parts[3]["text"], "<p><b>bold</b> words</p>");
    assert_eq!(parts[4]["filename"], "report.txt");
    assert_eq!(parts[4]["text"], "x".repeat(300));
    // Base64 bodies are wrapped at 76 columns: no line of the raw message is longer.
    let raw = std::fs::read_to_string(&received[0]).unwrap();
    let longest = raw.lines().filter(|l| !l.contains(':')).map(str::len).max();
    assert!(longest <= Some(76), "a body line of {longest:?} characters");
}

#[test]
fn a_failing_query_becomes_an_alert_and_a_mail_and_a_burst_of_alerts_is_mailed_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Sink::smtp(&dir.path().join("smtp"));
    let master = master_with_mail(dir.path(), Some(smtp.port));
    ok(&master.talon(&[
        "monitoring",
        "server",
        "add",
        "Server.Monitor.Alerts",
        "--param",
        "Recipients=Address\nops@example.org\n",
        "--param",
        "SendInterval=2",
    ]));
    ok(&master.talon(&[
        "monitoring",
        "server",
        "add",
        "Server.Monitor.Alerts.UserMessage",
    ]));
    // The alert watchers are in place once the alerts queue has two watchers.
    assert!(wait_until(Duration::from_secs(20), || {
        master.queue_stats("root", "Server.Internal.Alerts")["watchers"]
            .as_u64()
            .is_some_and(|w| w >= 2)
    }));

    // Five alerts inside the send interval: every one reaches the mailbox, as its own mail
    // or inside a digest; never fewer.
    for i in 1..=5 {
        query(
            &master,
            &format!("SELECT alert(name='burst-{i}', dedup=-1, severity='high', detail='<b>{i}</b>') FROM scope()"),
        );
    }
    let mut all = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            all = mails(&smtp)
                .iter()
                .map(|m| format!("{} {}", m["subject"], text_of(m)))
                .collect();
            (1..=5).all(|i| all.contains(&format!("burst-{i}")))
        }),
        "not every alert was mailed: {all}"
    );
    let received = mails(&smtp);
    assert!(received.len() <= 5, "{} mails", received.len());
    let first = &received[0];
    assert_eq!(first["subject"], "Server alert (high): burst-1");
    // Alert data is escaped in the HTML part.
    assert!(text_of(first).contains("&lt;b&gt;1&lt;/b&gt;"), "{first}");
    if received.len() < 5 {
        let digest = received
            .iter()
            .find(|m| m["subject"].as_str().unwrap().contains("mails:"));
        assert!(
            digest.is_some(),
            "fewer mails than alerts and no digest: {received:?}"
        );
    }
    let merged = outbox(&master)
        .into_iter()
        .filter(|m| m["state"] == "merged")
        .count();
    assert_eq!(
        merged + received.len(),
        5 + usize::from(merged > 0),
        "{merged} merged"
    );

    // The user message artifact posted each alert to the administrator.
    let msgs = ok(&master.talon(&["messages", "list", "--format", "json"]));
    assert!(
        (1..=5).all(|i| msgs.contains(&format!("burst-{i}"))),
        "{msgs}"
    );
    // The debug pages show the outbox and the messages, escaped, with JSON twins.
    let (_, page) = master.http_get("/debug/mail");
    assert!(
        page.contains("<h1>Mail outbox</h1>") && page.contains("burst-1"),
        "{page}"
    );
    let (_, twin) = master.http_get("/debug/mail?format=json");
    let twin: Vec<Value> = serde_json::from_str(&twin).unwrap();
    assert_eq!(twin.len(), outbox(&master).len());
    let (_, page) = master.http_get("/debug/messages");
    assert!(
        page.contains("burst-5") && page.contains("&lt;b&gt;5&lt;/b&gt;"),
        "{page}"
    );
    assert!(!page.contains("<b>5</b>"), "{page}");
    ok(&master.talon(&["messages", "clear"]));
    let msgs: Vec<Value> =
        serde_json::from_str(&ok(&master.talon(&["messages", "list", "--format", "json"])))
            .unwrap();
    assert!(msgs.is_empty(), "{msgs:?}");

    // The whole chain: a server event query logs an ERROR, Server.Monitor.Errors.Alert
    // raises an alert for it, Server.Monitor.Alerts mails it.
    add_artifact(
        &master,
        dir.path(),
        "failing",
        "name: Custom.Failing\ntype: SERVER_EVENT\nsources:\n- query: |\n    SELECT * FROM foreach(row={SELECT * FROM clock(period=1)}, query={\n      SELECT log(message='the disk is on fire', level='ERROR') AS L FROM scope()\n    })\n",
    );
    ok(&master.talon(&["monitoring", "server", "add", "Custom.Failing"]));
    ok(&master.talon(&[
        "monitoring",
        "server",
        "add",
        "Server.Monitor.Errors.Alert",
        "--param",
        "Period=1",
    ]));
    let mut chain = Value::Null;
    assert!(
        wait_until(Duration::from_secs(40), || {
            chain = mails(&smtp)
                .into_iter()
                .find(|m| {
                    format!("{} {}", m["subject"], text_of(m))
                        .contains("Server event query error in Custom.Failing")
                })
                .unwrap_or_default();
            !chain.is_null()
        }),
        "the error never became a mail"
    );
    let text = text_of(&chain);
    assert!(
        text.contains("the disk is on fire") && text.contains("medium"),
        "{text}"
    );
    // The error monitor does not alert on itself or on the mailer.
    let alerts = ok(&master.talon(&["events", "read", "Server.Internal.Alerts"]));
    assert!(
        !alerts.contains("error in Server.Monitor.Alerts"),
        "{alerts}"
    );
}

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

#[test]
fn mail_over_starttls_verifies_the_server_certificate_unless_given_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = talon_tests::deployment::dir();
    // A server whose certificate is of the deployment's CA, not a public one.
    let smtp = Sink::smtp_starttls(
        &dir.path().join("smtp"),
        &d.join("nats.crt"),
        &d.join("nats.key"),
    );
    let config = dir.path().join("master.yaml");
    std::fs::write(&config, "mail:\n  tls: starttls\n  max_attempts: 1\n").unwrap();
    let master = Master::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let send = |extra: &str| {
        let vql = format!(
            "SELECT mail(server='127.0.0.1', server_port={}, to='a@example.org', subject='tls', body='x', period=-1{extra}) AS M FROM scope()",
            smtp.port
        );
        let ca = std::fs::read_to_string(d.join("ca.crt")).unwrap();
        let rows = json_lines(&ok(&master.talon(&[
            "query",
            "--env",
            &format!("CA={ca}"),
            &vql,
        ])));
        rows[0]["M"]["ErrorStatus"].as_str().unwrap().to_string()
    };
    let refused = send("");
    assert!(
        refused.to_lowercase().contains("certificate")
            && refused.contains("failed after 1 attempts"),
        "{refused}"
    );
    assert!(smtp.received().is_empty());
    assert_eq!(send(", root_ca=CA"), "OK: Message Sent");
    assert_eq!(smtp.received().len(), 1);
}
