//! Automation in VQL: `mail()` (function and plugin), `http_client()`, the secret
//! functions and `secrets()`, `user_message()`, `user_messages()`, `gui_users()` and
//! Talon's `mail_outbox()`, with Velociraptor's argument names. The master answers them
//! (its outbox, HTTP client, secret and message stores); here are the argument checks and
//! the permissions, so a query learns what it may not do before anything leaves the server.

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use talon_core::acl::Permission;

use crate::eval::engine::Place;
use crate::eval::expr::materialize_deep;
use crate::eval::registry::{Call, PluginCall, Registry};
use crate::eval::value::{Row, Value};

const MAIL_ARGS: &[&str] = &[
    "to",
    "cc",
    "from",
    "subject",
    "body",
    "headers",
    "period",
    "secret",
    "server",
    "server_port",
    "auth_username",
    "auth_password",
    "skip_verify",
    "root_ca",
];
const HTTP_ARGS: &[&str] = &[
    "url",
    "method",
    "data",
    "headers",
    "params",
    "secret",
    "skip_verify",
    "root_ca",
    "timeout",
    "chunk_size",
    "user_agent",
    "disable_ssl_security",
];
const SECRET_ARGS: &[&str] = &["name", "type", "secret", "description"];

pub(super) fn register(r: &mut Registry) {
    r.function("mail", Place::Server, mail);
    r.plugin("mail", Place::Server, false, mail_plugin);
    r.plugin("http_client", Place::Server, false, http_client);
    r.function("secret_add", Place::Server, secret_add);
    r.function("secret_modify", Place::Server, secret_modify);
    r.function("secret_rm", Place::Server, secret_rm);
    r.plugin("secrets", Place::Server, false, secrets);
    r.function("user_message", Place::Server, user_message);
    r.plugin("user_messages", Place::Server, false, user_messages);
    r.plugin("gui_users", Place::Server, false, gui_users);
    r.plugin("mail_outbox", Place::Server, false, mail_outbox);
}

/// A function call: permission, arguments, the host's one row back.
fn call_host<'a>(
    mut c: Call<'a>,
    permission: Option<(Permission, &'static str)>,
    allowed: &'static [&'static str],
    required: &'static [&'static str],
) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let ctx = c.scope.ctx().clone();
        if let Some((p, what)) = permission {
            if !ctx.allowed(p, what) {
                return Value::Null;
            }
        }
        if !c.check(allowed, required).await {
            return Value::Null;
        }
        let mut args = Row::new();
        for name in allowed {
            if let Some(v) = c.args.get(name).await {
                args.insert((*name).to_string(), materialize_deep(v, c.scope).await);
            }
        }
        first_row(&c, ctx.host.automation(&ctx.info.org, c.name, args)).await
    })
}

async fn first_row(
    c: &Call<'_>,
    mut rows: BoxStream<'static, crate::eval::engine::HostResult<Row>>,
) -> Value {
    match rows.next().await {
        // A scalar answer (user_message's user name) comes as a `_value` row.
        Some(Ok(mut row)) if row.len() == 1 && row.contains_key("_value") => {
            row.shift_remove("_value").unwrap_or_default()
        }
        Some(Ok(row)) => Value::Dict(row),
        Some(Err(e)) => c.fail(e),
        None => Value::Null,
    }
}

/// A plugin call: permission, arguments, the host's rows; an error is logged.
fn plugin_host(
    c: PluginCall,
    permission: Option<(Permission, &'static str)>,
    allowed: &[&str],
    required: &[&str],
) -> BoxStream<'static, Row> {
    let ctx = c.scope.ctx().clone();
    if let Some((p, what)) = permission {
        if !ctx.allowed(p, what) {
            return stream::empty().boxed();
        }
    }
    if !c.check(allowed, required) {
        return stream::empty().boxed();
    }
    let args: Row = c.args.iter().cloned().collect();
    let name = c.name.clone();
    let rows = ctx.host.automation(&ctx.info.org, &name, args);
    super::rows_or_log(ctx, name, rows)
}

const NETWORK_MAIL: Option<(Permission, &str)> = Some((Permission::Network, "mail"));
const ADMIN_SECRETS: Option<(Permission, &str)> = Some((Permission::ServerAdmin, "secrets"));

fn mail<'a>(c: Call<'a>) -> BoxFuture<'a, Value> {
    call_host(c, NETWORK_MAIL, MAIL_ARGS, &["to", "body"])
}

fn mail_plugin(c: PluginCall) -> BoxStream<'static, Row> {
    plugin_host(c, NETWORK_MAIL, MAIL_ARGS, &["to", "body"])
}

fn http_client(c: PluginCall) -> BoxStream<'static, Row> {
    plugin_host(
        c,
        Some((Permission::Network, "http_client")),
        HTTP_ARGS,
        &["url"],
    )
}

fn secret_add<'a>(c: Call<'a>) -> BoxFuture<'a, Value> {
    call_host(c, ADMIN_SECRETS, SECRET_ARGS, &["name", "type", "secret"])
}

fn secret_modify<'a>(c: Call<'a>) -> BoxFuture<'a, Value> {
    call_host(c, ADMIN_SECRETS, SECRET_ARGS, &["name", "secret"])
}

fn secret_rm<'a>(c: Call<'a>) -> BoxFuture<'a, Value> {
    call_host(c, ADMIN_SECRETS, &["name"], &["name"])
}

fn secrets(c: PluginCall) -> BoxStream<'static, Row> {
    plugin_host(c, ADMIN_SECRETS, &["name"], &[])
}

/// `user_message(user=, message=)`; without `message`, the other arguments are the message.
fn user_message<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.args.has("user").await {
            return c.fail("Field user is required");
        }
        let ctx = c.scope.ctx().clone();
        let mut args = Row::new();
        let mut rest = Row::new();
        for (k, v) in c.args.all().await {
            let v = materialize_deep(v, c.scope).await;
            match k.as_str() {
                "user" | "message" => {
                    args.insert(k, v);
                }
                _ => {
                    rest.insert(k, v);
                }
            }
        }
        if !args.contains_key("message") {
            args.insert("message".into(), Value::Dict(rest));
        }
        first_row(&c, ctx.host.automation(&ctx.info.org, c.name, args)).await
    })
}

fn user_messages(c: PluginCall) -> BoxStream<'static, Row> {
    plugin_host(c, None, &["user", "clear"], &[])
}

fn gui_users(c: PluginCall) -> BoxStream<'static, Row> {
    plugin_host(
        c,
        Some((Permission::ReadResults, "gui_users")),
        &["all_orgs"],
        &[],
    )
}

fn mail_outbox(c: PluginCall) -> BoxStream<'static, Row> {
    plugin_host(
        c,
        Some((Permission::ReadResults, "mail_outbox")),
        &["state", "limit"],
        &[],
    )
}
