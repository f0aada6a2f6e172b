//! `talon config generate` (a new deployment: CA, certificates and every config file) and
//! `talon user` (API users: add, list, remove, whoami).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;
use talon_proto::api::*;

use crate::{connect, output, status_error, TableFormat};

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Write a new deployment into DIR: server.config.yaml (the master),
    /// minion-NAME.config.yaml (each minion),
    /// client.config.yaml, admin.api.yaml, nats.conf and the CA's key
    Generate {
        /// Directory to write (made if missing; refused if it holds a deployment)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Frontend address the servers listen on
        #[arg(long, default_value = "127.0.0.1:8000", value_name = "HOST:PORT")]
        frontend_addr: String,
        /// Admin API address of the master
        #[arg(long, default_value = "127.0.0.1:8001", value_name = "HOST:PORT")]
        api_addr: String,
        /// Debug HTTP address
        #[arg(long, default_value = "127.0.0.1:8889", value_name = "HOST:PORT")]
        debug_addr: String,
        /// Frontend addresses clients dial, in order [default: --frontend-addr]; repeatable
        #[arg(long = "public-frontend", value_name = "HOST:PORT")]
        public_frontends: Vec<String>,
        /// Further DNS names or IP addresses for the server certificates; repeatable
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Address nats.conf listens on
        #[arg(long, default_value = "127.0.0.1:4222", value_name = "HOST:PORT")]
        nats_listen: String,
        /// Write no NATS configuration (standalone deployments)
        #[arg(long)]
        no_nats: bool,
        /// A minion's node name: it gets minion-NAME.config.yaml and a NATS user bound to
        /// that name; repeatable [default: m1 and m2]
        #[arg(long = "minion", value_name = "NAME")]
        minions: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user (or give an existing one a role in an org, with a new certificate) and
    /// write its API client config to FILE (mode 0600)
    Add {
        name: String,
        /// administrator, org_admin, investigator, analyst, reader or api
        #[arg(long)]
        role: String,
        /// Where to write the user's API client config
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The API address the config names [default: the address the master listens on]
        #[arg(long, value_name = "HOST:PORT")]
        api_addr: Option<String>,
    },
    /// Every user with its roles per org
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
    /// Remove a user; its certificate stops working at once
    Remove { name: String },
    /// Who this CLI calls as, and its permissions in the org
    Whoami,
}

/// Runs `config generate`.
pub fn config(cmd: &ConfigCmd) -> anyhow::Result<ExitCode> {
    let ConfigCmd::Generate {
        out,
        frontend_addr,
        api_addr,
        debug_addr,
        public_frontends,
        names,
        nats_listen,
        no_nats,
        minions,
    } = cmd;
    let plan = talon_core::deploy::Plan {
        frontend_addr: frontend_addr.clone(),
        api_addr: api_addr.clone(),
        debug_addr: debug_addr.clone(),
        public_frontends: public_frontends.clone(),
        names: names.clone(),
        nats: !no_nats,
        nats_listen: nats_listen.clone(),
        minions: if minions.is_empty() {
            talon_core::deploy::Plan::default().minions
        } else {
            minions.clone()
        },
    };
    talon_core::deploy::generate(out, &plan)?;
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    writeln!(o, "wrote a new deployment to {}:", out.display())?;
    let minion_files: Vec<String> = plan
        .minions
        .iter()
        .map(|m| talon_core::deploy::minion_config(m))
        .collect();
    let mut files: Vec<(&str, &str)> = vec![
        (
            talon_core::deploy::SERVER_CONFIG,
            "talon-master --config (minions: their own files below)",
        ),
        (
            talon_core::deploy::CA_KEY,
            "the CA's key: the master issues users with it; keep it off minions",
        ),
        (talon_core::deploy::CLIENT_CONFIG, "talon-client --config"),
        (
            talon_core::deploy::ADMIN_API_CONFIG,
            "talon --api-config (the administrator)",
        ),
    ];
    if !no_nats {
        files.push((
            talon_core::deploy::NATS_CONF,
            "nats-server -c (TLS, a user for the master and one per minion)",
        ));
        for f in &minion_files {
            files.push((
                f,
                "talon-minion --config (a NATS user bound to its node name)",
            ));
        }
    }
    for (name, what) in files {
        writeln!(o, "  {name:<24} {what}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a `user` subcommand.
pub async fn user(api: &str, org: &str, cmd: UserCmd) -> anyhow::Result<ExitCode> {
    let mut c = connect(api).await?;
    match cmd {
        UserCmd::Add {
            name,
            role,
            out,
            api_addr,
        } => {
            let r = c
                .add_user(AddUserRequest {
                    name: name.clone(),
                    role: role.clone(),
                    org: org.to_string(),
                    api_addr: api_addr.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let head = "# Talon API client config made by `talon user add`; it holds a private key: keep it private.\n";
            talon_core::pki::write_secret(&out, &format!("{head}{}", r.api_config_yaml))
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
            println!(
                "added user {name} ({role} in org {org}); its API config is {} (use: talon --api-config {})",
                out.display(),
                out.display()
            );
        }
        UserCmd::List { format } => {
            let r = c
                .list_users(ListUsersRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let orgs = |u: &User| {
                u.orgs
                    .iter()
                    .map(|o| format!("{}:{}", o.org, o.roles.join("+")))
                    .collect::<Vec<_>>()
            };
            match format {
                TableFormat::Json => output::print_json(&json!(r
                    .users
                    .iter()
                    .map(|u| json!({
                        "name": u.name, "orgs": u.orgs.iter().map(|o| json!({"org": o.org, "roles": o.roles})).collect::<Vec<_>>(),
                        "created_by": u.created_by, "created_us": u.created_us,
                        "certificate_sha256": u.certificate_sha256,
                    }))
                    .collect::<Vec<_>>()))?,
                TableFormat::Table => output::print_table(
                    &["NAME", "ROLES", "CREATED BY", "CERTIFICATE SHA-256"],
                    r.users
                        .iter()
                        .map(|u| {
                            vec![
                                u.name.clone(),
                                orgs(u).join(" "),
                                u.created_by.clone(),
                                u.certificate_sha256.chars().take(16).collect(),
                            ]
                        })
                        .collect(),
                )?,
            }
        }
        UserCmd::Remove { name } => {
            c.remove_user(RemoveUserRequest { name: name.clone() })
                .await
                .map_err(status_error)?;
            println!("removed user {name}");
        }
        UserCmd::Whoami => {
            let u = c
                .who_am_i(WhoAmIRequest {
                    org: org.to_string(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", u.name);
            println!("permissions in org {org}: {}", u.permissions.join(" "));
        }
    }
    Ok(ExitCode::SUCCESS)
}
