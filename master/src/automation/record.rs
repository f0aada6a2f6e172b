//! An outbox record: a mail with where it goes ([`Transport`]), its state, tries and
//! last error, and the rows and `mail()` answers made of it. Passwords and bodies are kept
//! (a retry after a restart needs them) but never listed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Where and how a mail is sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transport {
    pub server: String,
    pub port: u16,
    #[serde(default)]
    pub auth_username: String,
    /// Kept with the mail so a retry after a restart can log in; never listed.
    #[serde(default)]
    pub auth_password: String,
    #[serde(default)]
    pub skip_verify: bool,
    #[serde(default)]
    pub root_ca: String,
    /// `starttls`, `tls`, `opportunistic`, `none`, or empty for the default.
    #[serde(default)]
    pub tls: String,
}

impl Transport {
    /// The TLS mode: the one set, else implicit TLS on 465, STARTTLS required when
    /// logging in (credentials never go out in clear), else STARTTLS when offered.
    pub fn tls_mode(&self) -> &str {
        match self.tls.as_str() {
            "" if self.port == 465 => "tls",
            "" if !self.auth_username.is_empty() => "starttls",
            "" => "opportunistic",
            other => other,
        }
    }
}

/// One outbox record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Mail {
    pub id: String,
    pub org: String,
    /// Who called `mail()`.
    pub principal: String,
    pub created_us: i64,
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    pub from: String,
    pub subject: String,
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Seconds between mails to the same recipients; negative: no limit.
    pub period_secs: i64,
    pub transport: Transport,
    /// `queued`, `sent`, `failed` or `merged`.
    pub state: String,
    pub attempts: u32,
    pub max_attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    /// When the next try may happen.
    pub next_us: i64,
    #[serde(default)]
    pub sent_us: Option<i64>,
    /// While held by the rate limit: until when.
    #[serde(default)]
    pub held_until_us: Option<i64>,
    /// The digest this mail went out in.
    #[serde(default)]
    pub merged_into: Option<String>,
    /// For a digest: the mails it carries.
    #[serde(default)]
    pub digest_of: Vec<String>,
}

impl Mail {
    pub(super) fn key(&self) -> String {
        let mut rcpt: Vec<String> = self
            .to
            .iter()
            .chain(&self.cc)
            .map(|a| a.trim().to_ascii_lowercase())
            .collect();
        rcpt.sort();
        format!(
            "{}\x1f{}:{}\x1f{}",
            self.org,
            self.transport.server,
            self.transport.port,
            rcpt.join(",")
        )
    }

    pub(super) fn finished(&self) -> bool {
        self.state != "queued"
    }

    /// The row `mail_outbox()` shows: no body, no password.
    pub fn row(&self) -> Value {
        let t = |us: Option<i64>| us.map(talon_core::timefmt::rfc3339);
        json!({
            "id": self.id,
            "state": self.state,
            "created": talon_core::timefmt::rfc3339(self.created_us),
            "to": self.to,
            "cc": self.cc,
            "from": self.from,
            "subject": self.subject,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "last_error": self.last_error,
            "next_attempt": if self.state == "queued" { t(Some(self.next_us)) } else { None },
            "held_until": t(self.held_until_us),
            "sent": t(self.sent_us),
            "merged_into": self.merged_into,
            "digest_of": self.digest_of,
            "server": format!("{}:{}", self.transport.server, self.transport.port),
            "principal": self.principal,
            "org": self.org,
        })
    }

    /// What `mail()` answers once this mail's first outcome is known.
    pub fn status(&self) -> String {
        match self.state.as_str() {
            "sent" => "OK: Message Sent".into(),
            "merged" => format!(
                "OK: Queued; {} went out in digest {}",
                self.id,
                self.merged_into.as_deref().unwrap_or("?")
            ),
            "failed" => format!(
                "Error: {} (mail {} failed after {} attempts)",
                self.last_error.as_deref().unwrap_or("unknown"),
                self.id,
                self.attempts
            ),
            _ if self.attempts > 0 => format!(
                "Error: {} (mail {} is queued; attempt {} of {} at {})",
                self.last_error.as_deref().unwrap_or("unknown"),
                self.id,
                self.attempts + 1,
                self.max_attempts,
                talon_core::timefmt::rfc3339(self.next_us)
            ),
            _ => match self.held_until_us {
                Some(until) => format!(
                    "OK: Queued; mail {} is held until {} by the send interval ({} s) for these recipients, then sent (with any others held for them, as one digest)",
                    self.id,
                    talon_core::timefmt::rfc3339(until),
                    self.period_secs
                ),
                None => format!("OK: Queued as mail {}", self.id),
            },
        }
    }

    #[cfg(test)]
    pub fn for_test(subject: &str, body: &str) -> Mail {
        Mail {
            id: "M.test".into(),
            org: "root".into(),
            to: vec!["a@example.org".into()],
            from: "talon@example.org".into(),
            subject: subject.into(),
            body: body.into(),
            period_secs: 60,
            state: "queued".into(),
            max_attempts: 1,
            ..Mail::default()
        }
    }
}
