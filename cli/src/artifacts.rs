//! `talon artifacts ...`: list, show, add, delete over the API; verify offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use talon_proto::api::*;

use crate::{connect, output, status_error, TableFormat};

#[derive(Subcommand, Debug)]
pub enum ArtifactsCmd {
    /// List every artifact
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
    /// Print an artifact's YAML
    Show { name: String },
    /// Add artifacts from YAML files
    Add {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Replace user artifacts that already exist
        #[arg(long)]
        replace: bool,
    },
    /// Delete a user artifact
    Delete { name: String },
    /// Run a SERVER artifact on the server and print its rows as JSON Lines
    Collect {
        name: String,
        /// A parameter as K=V; repeatable
        #[arg(long = "param", value_name = "K=V")]
        params: Vec<String>,
    },
    /// Check YAML files, or every *.yaml below directories, without a server: the schema,
    /// every query's syntax, source shape, and unknown functions and plugins
    Verify {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Check the YAML schema and VQL syntax only (for artifacts written for Velociraptor
        /// that call functions Talon lacks)
        #[arg(long)]
        syntax_only: bool,
    },
}

/// Runs an artifacts subcommand.
pub async fn run(api: &str, cmd: ArtifactsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ArtifactsCmd::Verify { paths, syntax_only } => verify(&paths, syntax_only),
        ArtifactsCmd::List { format } => {
            let r = connect(api)
                .await?
                .list_artifacts(ListArtifactsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            match format {
                TableFormat::Json => {
                    let v: Vec<_> = r
                        .artifacts
                        .iter()
                        .map(|a| {
                            serde_json::json!({"name": a.name, "type": a.r#type,
                                "built_in": a.built_in, "description": a.description})
                        })
                        .collect();
                    output::print_json(&serde_json::Value::Array(v))?;
                }
                TableFormat::Table => {
                    let rows = r
                        .artifacts
                        .iter()
                        .map(|a| {
                            let first = a.description.lines().next().unwrap_or("").to_string();
                            vec![
                                a.name.clone(),
                                a.r#type.clone(),
                                if a.built_in { "built-in" } else { "user" }.into(),
                                first,
                            ]
                        })
                        .collect();
                    output::print_table(&["NAME", "TYPE", "ORIGIN", "DESCRIPTION"], rows)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ArtifactsCmd::Show { name } => {
            let a = connect(api)
                .await?
                .get_artifact(GetArtifactRequest { name })
                .await
                .map_err(status_error)?
                .into_inner();
            print!("{}", a.yaml);
            if !a.yaml.ends_with('\n') {
                println!();
            }
            Ok(ExitCode::SUCCESS)
        }
        ArtifactsCmd::Add { files, replace } => {
            // Read every file first, so a missing one adds nothing.
            let mut texts = Vec::new();
            for f in &files {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read {}", f.display()))?;
                texts.push((f.display().to_string(), text));
            }
            let mut c = connect(api).await?;
            for (origin, yaml) in texts {
                let req = SetArtifactRequest {
                    yaml,
                    origin: origin.clone(),
                };
                let r = if replace {
                    c.update_artifact(req).await
                } else {
                    c.add_artifact(req).await
                };
                let a = r
                    .map_err(|s| {
                        if s.code() == tonic::Code::AlreadyExists {
                            anyhow::anyhow!(
                                "{}: {} (use --replace to update it)",
                                origin,
                                s.message()
                            )
                        } else {
                            status_error(s)
                        }
                    })?
                    .into_inner();
                println!("added {} ({})", a.name, a.r#type);
            }
            Ok(ExitCode::SUCCESS)
        }
        ArtifactsCmd::Collect { .. } => unreachable!("collect is dispatched in lib.rs"),
        ArtifactsCmd::Delete { name } => {
            connect(api)
                .await?
                .delete_artifact(DeleteArtifactRequest { name: name.clone() })
                .await
                .map_err(status_error)?;
            println!("deleted {name}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads each file (or every `*.yaml` below a directory); prints OK or `file:line:col: message`.
fn verify(paths: &[PathBuf], syntax_only: bool) -> anyhow::Result<ExitCode> {
    use talon_artifacts::verify::{verify_with_imports as check_vql, Level};
    let registry = talon_artifacts::Registry::builtin();
    let level = if syntax_only {
        Level::Syntax
    } else {
        Level::Full
    };
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            collect_yaml(p, &mut files)
                .with_context(|| format!("cannot read directory {}", p.display()))?;
        } else {
            files.push(p.clone());
        }
    }
    files.sort();
    // Exports the files may import: the built-in artifacts' and those of the files given.
    let mut exports: std::collections::HashMap<String, String> =
        talon_artifacts::Repository::with_builtins()
            .list()
            .iter()
            .filter_map(|a| Some((a.def.name.clone(), a.def.export.clone()?)))
            .collect();
    for f in &files {
        let loaded = std::fs::read_to_string(f)
            .ok()
            .and_then(|t| talon_artifacts::load(&f.display().to_string(), &t).ok());
        if let Some(a) = loaded {
            if let Some(e) = a.def.export.clone() {
                exports.insert(a.def.name.clone(), e);
            }
        }
    }
    let mut failed = 0;
    for f in &files {
        let origin = f.display().to_string();
        let result = std::fs::read_to_string(f)
            .map_err(|e| vec![format!("{origin}:1:1: cannot read: {e}")])
            .and_then(|text| {
                let a = talon_artifacts::load(&origin, &text).map_err(|e| vec![e.to_string()])?;
                let imported: Vec<String> = a
                    .def
                    .imports
                    .iter()
                    .filter_map(|i| exports.get(i).cloned())
                    .collect();
                let problems = check_vql(&a, &registry, level, &origin, &imported);
                if problems.is_empty() {
                    Ok(a)
                } else {
                    Err(problems.iter().map(ToString::to_string).collect())
                }
            });
        match result {
            Ok(a) => println!("OK {origin} ({} {})", a.def.name, a.kind),
            Err(lines) => {
                failed += 1;
                for l in lines {
                    println!("{l}");
                }
            }
        }
    }
    if files.is_empty() {
        anyhow::bail!(
            "no *.yaml files found in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if failed > 0 {
        eprintln!(
            "talon: {failed} of {} artifact files failed verification",
            files.len()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_yaml(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}
