//! `talon mail list`, `talon secrets add|list|show|remove` and `talon messages
//! list|clear`: each one VQL call on the server (`mail_outbox()`, `secret_add()`,
//! `secrets()`, `user_messages()` ...) with its arguments passed as one JSON variable, so
//! the CLI and VQL check the same permissions. Secret values go to the server in that
//! variable (read from a file or stdin, never from the command line unless given there)
//! and are never printed back.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Map, Value};

use crate::collections::{call, first_column, s};
use crate::{output, TableFormat};

#[derive(Debug, Subcommand)]
pub enum MailCmd {
    /// The outbox, newest first: every mail's state (queued, sent, failed, merged into a
    /// digest), tries and the server's last answer
    List {
        /// Only mails in this state
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCmd {
    /// Add a typed secret ("SMTP Creds" or "HTTP Secrets")
    Add {
        name: String,
        /// The secret's type
        #[arg(long = "type")]
        kind: String,
        /// A field, K=V (repeatable); a value of `-` is read from stdin
        #[arg(long = "field", value_name = "K=V")]
        fields: Vec<String>,
        /// Fields from a JSON object in this file (`-`: stdin)
        #[arg(long)]
        from_file: Option<PathBuf>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Change fields of a secret (K= removes one)
    Modify {
        name: String,
        #[arg(long = "field", value_name = "K=V")]
        fields: Vec<String>,
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// The secrets of the org: names, types and which fields are set, never values
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
    /// One secret (JSON): its type, description and field names, never values
    Show { name: String },
    /// Remove a secret
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub enum MessagesCmd {
    /// Your messages (or, as a server administrator, another user's), oldest first
    List {
        #[arg(long)]
        user: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
    /// Print and clear your messages (or another user's)
    Clear {
        #[arg(long)]
        user: Option<String>,
    },
}

pub async fn mail(api: &str, org: &str, cmd: MailCmd) -> anyhow::Result<ExitCode> {
    let MailCmd::List {
        state,
        limit,
        format,
    } = cmd;
    let rows = call(
        api,
        org,
        "SELECT * FROM mail_outbox(state=A.state, limit=A.limit)",
        json!({"state": state.unwrap_or_default(), "limit": limit}),
    )
    .await?;
    match format {
        TableFormat::Json => output::print_json(&Value::Array(rows))?,
        TableFormat::Table => output::print_table(
            &["MAIL", "STATE", "CREATED", "TO", "SUBJECT", "TRIES", "INFO"],
            rows.iter()
                .map(|m| {
                    let to = m["to"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    let info = match s(m, "state").as_str() {
                        "merged" => format!("in digest {}", s(m, "merged_into")),
                        "sent" if m["digest_of"].as_array().is_some_and(|d| !d.is_empty()) => {
                            format!(
                                "digest of {}",
                                m["digest_of"].as_array().map_or(0, Vec::len)
                            )
                        }
                        "queued" if !s(m, "held_until").is_empty() => {
                            format!("held until {}", s(m, "held_until"))
                        }
                        _ => s(m, "last_error"),
                    };
                    vec![
                        s(m, "id"),
                        s(m, "state"),
                        s(m, "created"),
                        to,
                        s(m, "subject"),
                        format!("{}/{}", s(m, "attempts"), s(m, "max_attempts")),
                        info,
                    ]
                })
                .collect(),
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Fields from `K=V` pairs (a `-` value read from stdin) and a JSON file; `K=` is NULL.
fn fields(pairs: &[String], file: Option<&PathBuf>) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    let read_stdin = || -> anyhow::Result<String> {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    };
    if let Some(f) = file {
        let text = if f.as_os_str() == "-" {
            read_stdin()?
        } else {
            std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?
        };
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(m)) => out.extend(m),
            _ => anyhow::bail!("{} must hold a JSON object of fields", f.display()),
        }
    }
    let mut stdin_used = false;
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            anyhow::bail!(
                "--field {k:?}: expected K=V",
                k = p.split('=').next().unwrap_or(p)
            );
        };
        let value = match v {
            "-" if !stdin_used => {
                stdin_used = true;
                Value::String(read_stdin()?.trim_end_matches(['\r', '\n']).to_string())
            }
            "-" => anyhow::bail!("only one --field may read stdin"),
            "" => Value::Null,
            v => match k {
                // Numbers and booleans as the secret types expect them.
                "server_port" => v
                    .parse::<u64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::String(v.into())),
                "skip_verify" => Value::Bool(matches!(v, "true" | "TRUE" | "yes" | "Y" | "1")),
                "headers" => serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.into())),
                _ => Value::String(v.into()),
            },
        };
        out.insert(k.to_string(), value);
    }
    Ok(out)
}

fn print_secrets(rows: &[Value], format: TableFormat) -> anyhow::Result<()> {
    match format {
        TableFormat::Json => Ok(output::print_json(&Value::Array(rows.to_vec()))?),
        TableFormat::Table => Ok(output::print_table(
            &[
                "NAME",
                "TYPE",
                "FIELDS",
                "CREATED BY",
                "MODIFIED",
                "DESCRIPTION",
            ],
            rows.iter()
                .map(|r| {
                    let fields = r["fields"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| {
                                    let mark = if v == "(set)" { "" } else { "(empty)" };
                                    format!("{k}{mark}")
                                })
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    vec![
                        s(r, "name"),
                        s(r, "type"),
                        fields,
                        s(r, "created_by"),
                        s(r, "modified"),
                        s(r, "description"),
                    ]
                })
                .collect(),
        )?),
    }
}

pub async fn secrets(api: &str, org: &str, cmd: SecretsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretsCmd::Add {
            name,
            kind,
            fields: pairs,
            from_file,
            description,
        } => {
            let f = fields(&pairs, from_file.as_ref())?;
            let rows = call(
                api,
                org,
                "SELECT secret_add(name=A.name, type=A.type, secret=A.secret, description=A.description) AS S FROM scope()",
                json!({"name": name, "type": kind, "secret": f, "description": description}),
            )
            .await?;
            let added = first_column(&rows, "S");
            if added.is_null() {
                anyhow::bail!("secret {name} was not added");
            }
            print_secrets(&[added], TableFormat::Table)?;
        }
        SecretsCmd::Modify {
            name,
            fields: pairs,
            from_file,
        } => {
            let f = fields(&pairs, from_file.as_ref())?;
            let rows = call(
                api,
                org,
                "SELECT secret_modify(name=A.name, secret=A.secret) AS S FROM scope()",
                json!({"name": name, "secret": f}),
            )
            .await?;
            let changed = first_column(&rows, "S");
            if changed.is_null() {
                anyhow::bail!("secret {name} was not changed");
            }
            print_secrets(&[changed], TableFormat::Table)?;
        }
        SecretsCmd::List { format } => {
            let rows = call(api, org, "SELECT * FROM secrets()", json!({})).await?;
            print_secrets(&rows, format)?;
        }
        SecretsCmd::Show { name } => {
            let rows = call(
                api,
                org,
                "SELECT * FROM secrets(name=A.name)",
                json!({"name": name}),
            )
            .await?;
            match rows.first() {
                Some(r) => output::print_json(r)?,
                None => anyhow::bail!("no secret named {name:?}"),
            }
        }
        SecretsCmd::Remove { name } => {
            let rows = call(
                api,
                org,
                "SELECT secret_rm(name=A.name) AS S FROM scope()",
                json!({"name": name}),
            )
            .await?;
            if first_column(&rows, "S").is_null() {
                anyhow::bail!("secret {name} was not removed");
            }
            println!("removed secret {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn messages(api: &str, org: &str, cmd: MessagesCmd) -> anyhow::Result<ExitCode> {
    let (user, clear, format) = match cmd {
        MessagesCmd::List { user, format } => (user, false, format),
        MessagesCmd::Clear { user } => (user, true, TableFormat::Table),
    };
    let rows = call(
        api,
        org,
        "SELECT * FROM user_messages(user=A.user, clear=A.clear)",
        json!({"user": user.unwrap_or_default(), "clear": clear}),
    )
    .await?;
    match format {
        TableFormat::Json => output::print_json(&Value::Array(rows.clone()))?,
        TableFormat::Table => output::print_table(
            &["TIME", "FROM", "MESSAGE"],
            rows.iter()
                .map(|r| vec![s(r, "Timestamp"), s(r, "From"), r["Message"].to_string()])
                .collect(),
        )?,
    }
    if clear {
        eprintln!("cleared {} messages", rows.len());
    }
    Ok(ExitCode::SUCCESS)
}
