//! The automation debug pages: `/debug/mail` (the outbox, newest first: every mail's
//! state, tries and last error) and `/debug/messages` (each user's messages), shown
//! through the debug view (HTML, escaped, or JSON with `?format=json`; the rows are those
//! of `mail_outbox()` and `user_messages()`). They sit behind the debug server's bearer
//! check off loopback.

use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use talon_shared::debug::view::{respond, IndexEntry, Section, View};

use super::record::Mail;
use super::Automation;

/// Mails a page shows at most.
const PAGE_MAILS: usize = 1000;

#[derive(serde::Deserialize)]
struct PageQuery {
    format: Option<String>,
}

#[derive(Clone)]
struct PageState {
    a: Automation,
    node: String,
}

/// The routes, to merge into the debug server of node `node`.
pub fn routes(a: Automation, node: &str) -> Router {
    Router::new()
        .route("/debug/mail", get(mail_page))
        .route("/debug/messages", get(messages_page))
        .with_state(PageState {
            a,
            node: node.into(),
        })
}

/// The index entries of these pages.
pub fn index() -> Vec<IndexEntry> {
    vec![
        IndexEntry::new(
            "Global",
            "Mail outbox",
            "/debug/mail",
            "every mail(): queued, held, sent, failed with the SMTP answer, merged into a digest",
        ),
        IndexEntry::new(
            "Global",
            "User messages",
            "/debug/messages",
            "each API user's messages (user_message(), Server.Monitor.Alerts.UserMessage)",
        ),
    ]
}

async fn mail_page(State(s): State<PageState>, Query(q): Query<PageQuery>) -> Response {
    let rows: Vec<Value> =
        s.a.outbox
            .list(None, None, PAGE_MAILS)
            .iter()
            .map(Mail::row)
            .collect();
    let view = View {
        title: "Mail outbox".into(),
        category: "Global".into(),
        about: format!("The newest {PAGE_MAILS} mails of the outbox; nothing is dropped: a mail is sent, held for its recipients' send interval, merged into a digest, or failed after its last try."),
        sections: vec![Section::of_values(
            "Mails",
            &[
                "id", "state", "created", "org", "to", "subject", "attempts", "last_error",
                "next_attempt", "held_until", "sent", "merged_into", "principal",
            ],
            rows,
        )],
        refresh_secs: 5,
        org: None,
    };
    respond(view, &s.node, q.format.as_deref())
}

async fn messages_page(
    State(s): State<PageState>,
    Query(q): Query<PageQuery>,
    bearer: Option<axum::Extension<talon_shared::debug::Bearer>>,
) -> Response {
    // Off loopback, other users' messages need SERVER_ADMIN, as `talon messages list
    // --user` does: without it the page shows that they exist, not what they say.
    let hidden = bearer.is_some_and(|b| !b.0 .0.has(talon_core::acl::Permission::ServerAdmin));
    let mut rows = Vec::new();
    for user in s.a.users.list().unwrap_or_default() {
        for mut m in
            s.a.messages
                .read(&user.name, false)
                .await
                .unwrap_or_default()
        {
            if let Value::Object(o) = &mut m {
                o.insert("User".into(), Value::String(user.name.clone()));
                if hidden {
                    o.insert("Message".into(), Value::from("(needs SERVER_ADMIN)"));
                }
            }
            rows.push(m);
        }
    }
    let view = View {
        title: "User messages".into(),
        category: "Global".into(),
        about: "Every API user's messages, oldest first; a user reads and clears their own with talon messages list|clear.".into(),
        sections: vec![Section::of_values(
            "Messages",
            &["User", "Timestamp", "From", "Message"],
            rows,
        )],
        refresh_secs: 5,
        org: None,
    };
    respond(view, &s.node, q.format.as_deref())
}
