//! Sending one outbox mail with lettre: the transport (server, port, STARTTLS or TLS,
//! credentials, trusted roots) from the mail's settings, and the message from its
//! recipients, subject, headers and body. A body whose `Content-Type` is multipart (as
//! Generic.Utils.SendEmail builds it) is sent as it is, so its parts and boundary survive.
//! Also the digest: several held mails to the same recipients as one multipart/digest.

use std::time::Duration;

use lettre::message::header::{
    ContentTransferEncoding, ContentType, HeaderName, HeaderValue, MIME_VERSION_1_0,
};
use lettre::message::{Body, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::outbox::{Mail, Transport};

/// How long one SMTP conversation may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// The sender when nothing else names one (Velociraptor's fallback, Talon's domain).
pub const DEFAULT_FROM: &str = "no-reply@talon.example.com";

fn tls_params(t: &Transport) -> Result<TlsParameters, String> {
    let mut b = TlsParameters::builder(t.server.clone());
    if t.skip_verify {
        b = b
            .dangerous_accept_invalid_certs(true)
            .dangerous_accept_invalid_hostnames(true);
    }
    if !t.root_ca.trim().is_empty() {
        let cert = Certificate::from_pem(t.root_ca.as_bytes())
            .map_err(|e| format!("root_ca is not a PEM certificate: {e}"))?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| format!("TLS settings: {e}"))
}

/// The transport for a mail's settings.
fn transport(t: &Transport) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    if t.server.is_empty() {
        return Err(
            "no SMTP server: set mail.server in the config, or pass server= or secret=".into(),
        );
    }
    let mode = t.tls_mode();
    let tls = match mode {
        "none" => Tls::None,
        "tls" => Tls::Wrapper(tls_params(t)?),
        "starttls" => Tls::Required(tls_params(t)?),
        _ => Tls::Opportunistic(tls_params(t)?),
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(t.server.clone())
        .port(t.port)
        .tls(tls)
        .timeout(Some(SMTP_TIMEOUT));
    if !t.auth_username.is_empty() {
        b = b.credentials(Credentials::new(
            t.auth_username.clone(),
            t.auth_password.clone(),
        ));
    }
    Ok(b.build())
}

fn mailbox(what: &str, text: &str) -> Result<Mailbox, String> {
    text.trim()
        .parse::<Mailbox>()
        .map_err(|e| format!("{what} {text:?} is not an address: {e}"))
}

/// Checks the addresses of a mail before it is queued.
pub fn check_addresses(m: &Mail) -> Result<(), String> {
    mailbox("from", &m.from)?;
    for a in &m.to {
        mailbox("to", a)?;
    }
    for a in &m.cc {
        mailbox("cc", a)?;
    }
    Ok(())
}

/// The lettre message of a mail.
pub fn message(m: &Mail) -> Result<Message, String> {
    let mut b = Message::builder()
        .from(mailbox("from", &m.from)?)
        .subject(m.subject.clone())
        .header(MIME_VERSION_1_0)
        .date_now();
    for a in &m.to {
        b = b.to(mailbox("to", a)?);
    }
    for a in &m.cc {
        b = b.cc(mailbox("cc", a)?);
    }
    let mut content_type = "text/plain; charset=utf-8".to_string();
    for (k, v) in &m.headers {
        if k.eq_ignore_ascii_case("content-type") {
            content_type = v.clone();
            continue;
        }
        if ["from", "to", "cc", "subject", "date", "mime-version"]
            .iter()
            .any(|h| k.eq_ignore_ascii_case(h))
        {
            continue;
        }
        let name = HeaderName::new_from_ascii(k.clone())
            .map_err(|_| format!("header name {k:?} is not valid"))?;
        if v.contains(['\r', '\n']) {
            return Err(format!("header {k} has a line break"));
        }
        b = b.raw_header(HeaderValue::new(name, v.clone()));
    }
    let ct = ContentType::parse(&content_type)
        .map_err(|e| format!("Content-Type {content_type:?}: {e}"))?;
    let body = if content_type.to_ascii_lowercase().starts_with("multipart/") {
        // A built multipart body goes out as it is, with CRLF line ends; it must already be
        // valid for SMTP (no NUL, no line over 998 characters).
        let crlf = m.body.replace("\r\n", "\n").replace('\n', "\r\n");
        if crlf.split("\r\n").any(|l| l.len() > 998) {
            return Err("a multipart body has a line over 998 characters".into());
        }
        if crlf.contains('\0') {
            return Err("a multipart body has a NUL byte".into());
        }
        let enc = if crlf.is_ascii() {
            ContentTransferEncoding::SevenBit
        } else {
            ContentTransferEncoding::EightBit
        };
        Body::dangerous_pre_encoded(crlf.into_bytes(), enc)
    } else {
        Body::new(m.body.clone())
    };
    b.header(ct).body(body).map_err(|e| e.to_string())
}

/// Sends one mail; the error is the server's answer or what went wrong on the way.
pub async fn send(m: &Mail) -> Result<(), String> {
    let msg = message(m)?;
    let t = transport(&m.transport)?;
    t.send(msg).await.map(|_| ()).map_err(|e| e.to_string())
}

/// A multipart/digest body holding each mail as a message/rfc822 part after a summary;
/// returns the body and its boundary.
pub fn digest_body(mails: &[&Mail]) -> (String, String) {
    let boundary = format!("talon-digest-{:016x}", rand::random::<u64>());
    let mut out = String::new();
    out.push_str(&format!("--{boundary}\r\n"));
    out.push_str("Content-Type: text/plain; charset=utf-8\r\n\r\n");
    out.push_str(&format!(
        "{} mails to the same recipients arrived inside the send interval; Talon sent them together.\r\n\r\n",
        mails.len()
    ));
    for (i, m) in mails.iter().enumerate() {
        out.push_str(&format!(
            "{}. {} ({}, {})\r\n",
            i + 1,
            m.subject,
            talon_core::timefmt::rfc3339(m.created_us),
            m.id
        ));
    }
    for m in mails {
        out.push_str(&format!(
            "\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n"
        ));
        out.push_str(&format!(
            "Subject: {}\r\n",
            m.subject.replace(['\r', '\n'], " ")
        ));
        let ct = m
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "text/plain; charset=utf-8".into());
        out.push_str(&format!("Content-Type: {ct}\r\nMIME-Version: 1.0\r\n\r\n"));
        out.push_str(&m.body.replace("\r\n", "\n").replace('\n', "\r\n"));
        out.push_str("\r\n");
    }
    out.push_str(&format!("\r\n--{boundary}--\r\n"));
    (out, boundary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(subject: &str, body: &str, ct: Option<&str>) -> Mail {
        let mut m = Mail::for_test(subject, body);
        if let Some(ct) = ct {
            m.headers.insert("Content-Type".into(), ct.into());
        }
        m
    }

    #[test]
    fn a_multipart_body_goes_out_as_built() {
        let body = "--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1--\r\n";
        let m = mail("s", body, Some("multipart/mixed; boundary=b1"));
        let text = String::from_utf8(message(&m).unwrap().formatted()).unwrap();
        assert!(
            text.contains("boundary=b1") || text.contains("boundary=\"b1\""),
            "{text}"
        );
        assert!(text.contains(body), "{text}");
    }

    #[test]
    fn bad_headers_and_addresses_are_refused() {
        let mut m = mail("s", "b", None);
        m.headers
            .insert("X-A".into(), "x\r\nBcc: evil@example.com".into());
        assert!(message(&m).unwrap_err().contains("line break"));
        let mut m = mail("s", "b", None);
        m.to = vec!["not an address".into()];
        assert!(check_addresses(&m).unwrap_err().contains("not an address"));
    }

    #[test]
    fn a_digest_names_every_mail() {
        let a = mail("first", "one", None);
        let b = mail("second", "two", Some("text/html"));
        let (body, boundary) = digest_body(&[&a, &b]);
        assert!(body.contains("1. first") && body.contains("2. second"));
        assert_eq!(body.matches(&format!("--{boundary}\r\n")).count(), 3);
        assert!(body.ends_with(&format!("--{boundary}--\r\n")));
    }
}
