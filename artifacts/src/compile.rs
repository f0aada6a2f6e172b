//! Artifacts as VQL (SPEC-VQL §3.3): parameters arrive as strings and a preamble of LETs
//! converts them by type; then the artifact's export, its imports' exports, and the source.
//! Each source becomes its own query, named `Artifact` or `Artifact/Source`.

use talon_vql::format::ident;
use talon_vql::Value;

use super::{LoadedArtifact, Repository};

/// Compile errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("unknown artifact {0}")]
    UnknownArtifact(String),
    #[error("artifact {artifact} has no parameter {param} (it has: {known})")]
    UnknownParameter {
        artifact: String,
        param: String,
        known: String,
    },
    #[error("artifact {artifact} imports {import}, which does not exist")]
    MissingImport { artifact: String, import: String },
    #[error("artifact {0} has no sources to run")]
    NoSources(String),
}

/// One runnable source of an artifact.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// `Artifact` or `Artifact/Source`: the queue (or result set) its rows go to.
    pub queue: String,
    /// Runs first; the source runs only if it yields a row.
    pub precondition: Option<String>,
    /// Preamble, exports and the source query.
    pub query: String,
    /// Parameters as strings (defaults, overridden by what was given).
    pub env: Vec<(String, Value)>,
}

/// The LET that converts a string parameter to its declared type, if any.
fn preamble(name: &str, type_: &str) -> Option<String> {
    let n = ident(name);
    let t = type_.to_ascii_lowercase();
    Some(match t.as_str() {
        "int" | "int64" | "integer" => format!("LET {n} <= int(int={n})"),
        "float" => format!("LET {n} <= parse_float(string={n})"),
        "timestamp" => format!("LET {n} <= timestamp(epoch={n})"),
        "bool" => format!("LET {n} <= {n} = TRUE OR {n} =~ '^(Y|TRUE|YES|OK)$'"),
        "csv" | "artifactset" => format!(
            "LET {n} <= if(condition=format(format='%T', args={n}) = 'string', then={{ SELECT * FROM parse_csv(filename={n}, accessor='data') }}, else={n})"
        ),
        "server_metadata" => format!("LET {n} <= server_metadata(key={})", talon_vql::Value::from(name).to_json()),
        "yaml" => format!("LET {n} <= if(condition=format(format='%T', args={n}) = 'string', then=parse_yaml(data={n}), else={n})"),
        "json" => format!("LET {n} <= if(condition=format(format='%T', args={n}) = 'string', then=parse_json(data={n}), else={n})"),
        "json_array" | "regex_array" | "multichoice" => format!(
            "LET {n} <= if(condition=format(format='%T', args={n}) = 'string', then=parse_json_array(data={n}), else={n})"
        ),
        _ => return None,
    })
}

/// Compiles every source of an artifact with the given parameters.
pub fn compile(
    repo: &Repository,
    name: &str,
    params: &[(String, String)],
) -> Result<Vec<Compiled>, Error> {
    let a = repo
        .get(name)
        .ok_or_else(|| Error::UnknownArtifact(name.to_string()))?;
    compile_artifact(repo, &a, params)
}

/// Compiles a loaded artifact.
pub fn compile_artifact(
    repo: &Repository,
    a: &LoadedArtifact,
    params: &[(String, String)],
) -> Result<Vec<Compiled>, Error> {
    let mut env: Vec<(String, Value)> = a
        .def
        .parameters
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                Value::Str(p.default.clone().unwrap_or_default()),
            )
        })
        .collect();
    for (k, v) in params {
        match env.iter_mut().find(|(n, _)| n == k) {
            Some(slot) => slot.1 = Value::Str(v.clone()),
            None => {
                return Err(Error::UnknownParameter {
                    artifact: a.def.name.clone(),
                    param: k.clone(),
                    known: a
                        .def
                        .parameters
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        }
    }
    let mut head = String::new();
    for p in &a.def.parameters {
        if let Some(line) = preamble(&p.name, p.type_.as_deref().unwrap_or("")) {
            head.push_str(&line);
            head.push('\n');
        }
    }
    if let Some(e) = &a.def.export {
        head.push_str(e);
        head.push('\n');
    }
    for i in &a.def.imports {
        let imported = repo.get(i).ok_or_else(|| Error::MissingImport {
            artifact: a.def.name.clone(),
            import: i.clone(),
        })?;
        if let Some(e) = &imported.def.export {
            head.push_str(e);
            head.push('\n');
        }
    }
    let mut out = Vec::new();
    for s in &a.def.sources {
        let Some(q) = s.query.as_deref().filter(|q| !q.trim().is_empty()) else {
            continue;
        };
        let queue = match s.name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => format!("{}/{n}", a.def.name),
            None => a.def.name.clone(),
        };
        out.push(Compiled {
            queue,
            precondition: s
                .precondition
                .clone()
                .or_else(|| a.def.precondition.clone()),
            query: format!("{head}{q}"),
            env: env.clone(),
        });
    }
    if out.is_empty() {
        return Err(Error::NoSources(a.def.name.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_defaults_overrides_and_preamble() {
        let repo = Repository::with_builtins();
        let a = repo
            .check(
                "t",
                "name: T.A\ntype: SERVER_EVENT\nexport: LET E = 1\nparameters:\n- name: N\n  type: int\n  default: '3'\n- name: S\nsources:\n- name: One\n  query: SELECT * FROM scope()\n",
                false,
            )
            .unwrap();
        repo.insert(a);
        let c = compile(&repo, "T.A", &[("S".into(), "x".into())]).unwrap();
        assert_eq!(c[0].queue, "T.A/One");
        assert_eq!(
            c[0].query,
            "LET N <= int(int=N)\nLET E = 1\nSELECT * FROM scope()"
        );
        assert_eq!(
            c[0].env,
            vec![
                ("N".to_string(), Value::from("3")),
                ("S".to_string(), Value::from("x"))
            ]
        );
        let e = compile(&repo, "T.A", &[("Nope".into(), "1".into())]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "artifact T.A has no parameter Nope (it has: N, S)"
        );
        assert_eq!(
            compile(&repo, "Server.Audit.Logs", &[]).unwrap_err(),
            Error::NoSources("Server.Audit.Logs".into())
        );
    }
}
