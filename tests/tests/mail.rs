//! Mail with a real SMTP server (aiosmtpd) on loopback and a real master: the durable
//! outbox (sent, refused and retried, shown as failed with the server's answer, a held
//! mail surviving kill -9), STARTTLS with certificate checks, Generic.Utils.SendEmail's
//! MIME parsed back into its parts, a burst of alerts mailed in full, and a failing
//! server query turned into an alert and then a mail.

use std::time::Duration;

use serde_json::Value;
use talon_tests::peers::*;
use talon_tests::*;

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
    assert!(mail_text(&got[0]).contains("the body text"));

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

    // A held mail survives kill -9: of two mails to the same recipient in a row, the
    // second is held for the send interval, in the store; the restarted master sends it
    // when the interval is over.
    let rows = query(
        &master,
        "SELECT mail(to='crash@example.org', subject='first', body='before the crash', period=6) AS M FROM scope()",
    );
    assert_eq!(rows[0]["M"]["ErrorStatus"], "OK: Message Sent", "{rows:?}");
    let rows = query(
        &master,
        "SELECT mail(to='crash@example.org', subject='held', body='after the crash', period=6) AS M FROM scope()",
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
        3,
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
                .map(|m| format!("{} {}", m["subject"], mail_text(m)))
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
    assert!(mail_text(first).contains("&lt;b&gt;1&lt;/b&gt;"), "{first}");
    if received.len() < 5 {
        let digest = received
            .iter()
            .find(|m| m["subject"].as_str().unwrap().contains("mails:"));
        assert!(
            digest.is_some(),
            "fewer mails than alerts and no digest: {received:?}"
        );
    }
    // In the outbox every alert is accounted for once: a mail of its own, or merged into
    // a digest that names it.
    let all = outbox(&master);
    let merged = all.iter().filter(|m| m["state"] == "merged").count();
    let sent = all.iter().filter(|m| m["state"] == "sent");
    let (digests, singles): (Vec<&Value>, Vec<&Value>) =
        sent.partition(|m| m["digest_of"].as_array().is_some_and(|d| !d.is_empty()));
    let in_digests: usize = digests
        .iter()
        .map(|d| d["digest_of"].as_array().unwrap().len())
        .sum();
    assert_eq!(in_digests, merged, "{all:?}");
    assert_eq!(singles.len() + in_digests, 5, "{all:?}");

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
    let twin: Value = serde_json::from_str(&twin).unwrap();
    let listed = twin["sections"][0]["rows"].as_array().unwrap().len();
    assert_eq!(listed, outbox(&master).len(), "{twin}");
    let (_, page) = master.http_get("/debug/messages");
    assert!(
        page.contains("burst-5") && page.contains("&lt;b&gt;5&lt;"),
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
                    format!("{} {}", m["subject"], mail_text(m))
                        .contains("Server event query error in Custom.Failing")
                })
                .unwrap_or_default();
            !chain.is_null()
        }),
        "the error never became a mail"
    );
    let text = mail_text(&chain);
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
