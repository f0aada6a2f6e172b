//! Server automation, the master's side of the VQL calls that reach outside: `mail()`
//! into the durable [`outbox`] (records in [`record`], sent with lettre by [`smtp`]),
//! `http_client()` ([`http`]), the debug [`pages`] of the outbox and messages,
//! typed [`secrets`] that fill both, user [`messages`] and `gui_users()`. Each call arrives
//! as `(org, principal, call, args)` through [`ServicePort`]; the VQL side has checked
//! the caller's permission, and what needs more (another user's messages) is checked here.

pub mod http;
pub mod messages;
pub mod outbox;
pub mod pages;
pub mod record;
pub mod secrets;
pub mod smtp;

use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use serde_json::{json, Map, Value};
use talon_core::acl::Permission;
use talon_shared::store::Store;
use talon_shared::vql_host::ServicePort;
use talon_vql::engine::{HostError, HostResult};

use crate::args::{text, truthy};
use crate::config::MailConfig;
use outbox::{Mail, Outbox, Transport};
use secrets::Secrets;

/// How long `mail()` waits for its mail's first outcome before answering "queued".
const MAIL_ANSWER_WAIT: Duration = Duration::from_secs(10);
/// Velociraptor's `period` default, seconds.
const DEFAULT_PERIOD_SECS: i64 = 60;

/// Automation errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
}

fn host_error(e: Error) -> HostError {
    match e {
        Error::Invalid(m) => HostError::Refused(m),
        Error::NotFound(m) => HostError::NotFound(m),
        Error::Failed(m) => HostError::Failed(std::sync::Arc::new(Error::Failed(m))),
    }
}

/// A list argument: a list, or one string (split at commas, as addresses often are).
fn addresses(args: &Map<String, Value>, k: &str) -> Vec<String> {
    let items: Vec<String> = match args.get(k) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(Value::String(s)) => s.split(',').map(str::to_string).collect(),
        _ => Vec::new(),
    };
    items
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The automation services of the master.
#[derive(Clone)]
pub struct Automation {
    pub outbox: Outbox,
    pub secrets: Secrets,
    pub messages: messages::Messages,
    pub(crate) users: crate::users::Users,
    mail: MailConfig,
}

impl Automation {
    /// The services over the store; the outbox's sender is [`Outbox::run`].
    pub fn new(store: Store, mail: MailConfig) -> Result<Self, Error> {
        let retry = outbox::Retry {
            max_attempts: mail.max_attempts.unwrap_or(5),
            first_backoff: Duration::from_secs(mail.retry_secs.unwrap_or(30)),
        };
        Ok(Self {
            outbox: Outbox::open(store.clone(), retry)?,
            secrets: Secrets::new(store.clone()),
            messages: messages::Messages::new(store.clone()),
            users: crate::users::Users::new(store),
            mail,
        })
    }

    /// A `mail()` call as an outbox record: the secret's fields, then the call's, then
    /// the config's `mail:` section, then the defaults (port 587).
    fn mail_of(
        &self,
        org: &str,
        principal: &str,
        args: &Map<String, Value>,
    ) -> Result<Mail, Error> {
        let to = addresses(args, "to");
        if to.is_empty() {
            return Err(Error::Invalid("no recipients: to= is empty".into()));
        }
        let body = text(args, "body");
        let mut headers = std::collections::BTreeMap::new();
        if let Some(Value::Object(h)) = args.get("headers") {
            for (k, v) in h {
                headers.insert(
                    k.clone(),
                    match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    },
                );
            }
        }
        let mut a = args.clone();
        let secret = text(args, "secret");
        let secret_from = if !secret.is_empty() {
            let s = self.secrets.get_typed(org, &secret, secrets::SMTP_CREDS)?;
            // As Velociraptor: the secret's fields replace the call's (an empty one
            // blanks it, for the config to fill); its sender only when it has one.
            for f in [
                "server",
                "server_port",
                "auth_username",
                "auth_password",
                "root_ca",
                "skip_verify",
            ] {
                a.insert(f.into(), s.fields.get(f).cloned().unwrap_or(Value::Null));
            }
            s.text("from")
        } else {
            String::new()
        };
        let cfg = &self.mail;
        let pick = |k: &str, c: &Option<String>| {
            let v = text(&a, k);
            if v.is_empty() {
                c.clone().unwrap_or_default()
            } else {
                v
            }
        };
        let auth_username = pick("auth_username", &cfg.auth_username);
        let from = [
            secret_from,
            text(&a, "from"),
            cfg.from.clone().unwrap_or_default(),
            auth_username.clone(),
        ]
        .into_iter()
        .find(|s| !s.trim().is_empty())
        .unwrap_or_else(|| smtp::DEFAULT_FROM.to_string());
        let port = match a.get("server_port") {
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|p| (1..=65535).contains(p))
                .map(|p| p as u16),
            Some(Value::String(s)) if !s.is_empty() => s.parse().ok(),
            _ => None,
        }
        .or(cfg.server_port)
        .unwrap_or(587);
        let period = match a.get("period") {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(DEFAULT_PERIOD_SECS),
            Some(Value::String(s)) => s.parse().unwrap_or(DEFAULT_PERIOD_SECS),
            _ => DEFAULT_PERIOD_SECS,
        };
        let transport = Transport {
            server: pick("server", &cfg.server),
            port,
            auth_username,
            auth_password: pick("auth_password", &cfg.auth_password),
            skip_verify: truthy(&a, "skip_verify") || cfg.skip_verify,
            root_ca: pick("root_ca", &cfg.root_ca),
            tls: cfg.tls.clone().unwrap_or_default(),
        };
        if transport.server.is_empty() {
            return Err(Error::Invalid(
                "no SMTP server: set mail.server in the config, or pass server= or secret=".into(),
            ));
        }
        Ok(Mail {
            org: org.into(),
            principal: principal.into(),
            to,
            cc: addresses(args, "cc"),
            from,
            subject: text(args, "subject"),
            body,
            headers,
            period_secs: if period == 0 {
                DEFAULT_PERIOD_SECS
            } else {
                period
            },
            transport,
            state: "queued".into(),
            max_attempts: 1,
            ..Mail::default()
        })
    }

    /// `mail()`: the row says what happened; a refused call is an error row too, never
    /// a silent drop.
    async fn mail(&self, org: &str, principal: &str, args: &Map<String, Value>) -> Value {
        let queued = match self.mail_of(org, principal, args) {
            Ok(m) => self.outbox.enqueue(m).await,
            Err(e) => Err(e),
        };
        match queued {
            Ok(m) => {
                let outcome = self
                    .outbox
                    .first_outcome(&m.id, MAIL_ANSWER_WAIT)
                    .await
                    .unwrap_or(m);
                json!({"ErrorStatus": outcome.status(), "MailId": outcome.id, "State": outcome.state})
            }
            Err(e) => {
                tracing::error!(principal, error = %e, "mail refused");
                json!({"ErrorStatus": format!("Error: {e}"), "MailId": null, "State": "refused"})
            }
        }
    }

    /// `http_client()`: the secret's fields fill what the call left out.
    fn http(&self, org: &str, args: &Map<String, Value>) -> BoxStream<'static, HostResult<Value>> {
        let mut a = args.clone();
        let secret = text(args, "secret");
        if !secret.is_empty() {
            match self.secrets.get_typed(org, &secret, secrets::HTTP_SECRETS) {
                Ok(s) => {
                    for (k, v) in &s.fields {
                        let given = a
                            .get(k)
                            .is_some_and(|x| !x.is_null() && x.as_str() != Some(""));
                        if !given || k == "headers" {
                            if k == "headers" {
                                let mut h = s
                                    .fields
                                    .get("headers")
                                    .and_then(Value::as_object)
                                    .cloned()
                                    .unwrap_or_default();
                                if let Some(Value::Object(given)) = a.get("headers") {
                                    h.extend(given.clone());
                                }
                                a.insert("headers".into(), Value::Object(h));
                            } else {
                                a.insert(k.clone(), v.clone());
                            }
                        }
                    }
                }
                Err(e) => return stream::once(async move { Err(host_error(e)) }).boxed(),
            }
        }
        match http::Request::from_args(&a) {
            Ok(req) => http::run(req),
            Err(e) => stream::once(async move { Err(HostError::Refused(e)) }).boxed(),
        }
    }

    /// Whether `principal` may act on `user`'s messages: itself, or a server administrator.
    /// Principals that are not users (server monitoring) act for the server.
    fn may_read_messages_of(&self, principal: &str, user: &str) -> bool {
        if principal == user {
            return true;
        }
        match self.users.get(principal) {
            Ok(Some(u)) => u
                .permissions(talon_core::ids::ROOT_ORG)
                .is_some_and(|p| p.has(Permission::ServerAdmin)),
            // Not a user: one of the server's own principals (server monitoring).
            Ok(None) => true,
            Err(_) => false,
        }
    }

    async fn answer(
        &self,
        org: &str,
        principal: &str,
        call: &str,
        args: Map<String, Value>,
    ) -> Result<Vec<Value>, Error> {
        match call {
            "mail" => Ok(vec![self.mail(org, principal, &args).await]),
            "mail_outbox" => {
                let state = text(&args, "state");
                let limit = args.get("limit").and_then(Value::as_u64).unwrap_or(1000) as usize;
                let state = (!state.is_empty()).then_some(state);
                Ok(self
                    .outbox
                    .list(Some(org), state.as_deref(), limit)
                    .iter()
                    .map(Mail::row)
                    .collect())
            }
            "secret_add" => {
                let s = self
                    .secrets
                    .add(
                        org,
                        &text(&args, "name"),
                        &text(&args, "type"),
                        &text(&args, "description"),
                        args.get("secret").unwrap_or(&Value::Null),
                        principal,
                    )
                    .await?;
                tracing::info!(principal, secret = %s.name, kind = %s.kind, "secret added");
                Ok(vec![s.redacted()])
            }
            "secret_modify" => {
                let description = args.get("description").and_then(Value::as_str);
                let s = self
                    .secrets
                    .modify(
                        org,
                        &text(&args, "name"),
                        args.get("secret").unwrap_or(&Value::Null),
                        description,
                    )
                    .await?;
                tracing::info!(principal, secret = %s.name, "secret changed");
                Ok(vec![s.redacted()])
            }
            "secret_rm" => {
                let name = text(&args, "name");
                self.secrets.remove(org, &name).await?;
                tracing::info!(principal, secret = %name, "secret removed");
                Ok(vec![json!({"name": name, "removed": true})])
            }
            "secrets" => {
                let name = text(&args, "name");
                if !name.is_empty() {
                    return Ok(vec![self.secrets.get(org, &name)?.redacted()]);
                }
                Ok(self
                    .secrets
                    .list(org)?
                    .iter()
                    .map(secrets::Secret::redacted)
                    .collect())
            }
            "user_message" => {
                let user = text(&args, "user");
                if self
                    .users
                    .get(&user)
                    .map_err(|e| Error::Failed(e.to_string()))?
                    .is_none()
                {
                    return Err(Error::NotFound(format!("no user named {user:?}")));
                }
                let message = args.get("message").cloned().unwrap_or(Value::Null);
                self.messages.send(&user, principal, message).await?;
                Ok(vec![Value::String(user)])
            }
            "user_messages" => {
                let user = match text(&args, "user") {
                    u if u.is_empty() => principal.to_string(),
                    u => u,
                };
                if !self.may_read_messages_of(principal, &user) {
                    return Err(Error::Invalid(format!(
                        "reading the messages of {user} needs the {} permission",
                        Permission::ServerAdmin
                    )));
                }
                self.messages.read(&user, truthy(&args, "clear")).await
            }
            "gui_users" => {
                let all = truthy(&args, "all_orgs");
                let users = self
                    .users
                    .list()
                    .map_err(|e| Error::Failed(e.to_string()))?;
                let mut rows = Vec::new();
                for u in users {
                    for (o, roles) in &u.orgs {
                        if all || o == org {
                            rows.push(json!({"name": u.name, "org_id": o, "roles": roles, "created_by": u.created_by}));
                        }
                    }
                }
                Ok(rows)
            }
            other => Err(Error::Invalid(format!("{other} is not an automation call"))),
        }
    }
}

impl ServicePort for Automation {
    fn call(
        &self,
        org: &str,
        principal: &str,
        call: &str,
        args: Value,
    ) -> BoxStream<'static, HostResult<Value>> {
        let args = match args {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        if call == "http_client" {
            return self.http(org, &args);
        }
        let (me, org, principal, call) = (
            self.clone(),
            org.to_string(),
            principal.to_string(),
            call.to_string(),
        );
        stream::once(async move { me.answer(&org, &principal, &call, args).await })
            .flat_map(|r| match r {
                Ok(rows) => stream::iter(rows.into_iter().map(Ok)).boxed(),
                Err(e) => stream::once(async move { Err(host_error(e)) }).boxed(),
            })
            .boxed()
    }
}
