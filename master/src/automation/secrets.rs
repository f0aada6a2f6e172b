//! Typed secrets, as Velociraptor has them: a name, a type (`SMTP Creds`, `HTTP Secrets`)
//! whose fields are checked, and the values, kept in the store's settings (namespace
//! `secrets/<org>`). `mail(secret=)` and `http_client(secret=)` read them on the master;
//! nothing that lists or shows a secret, and no log line, carries a value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use talon_shared::store::Store;

use super::Error;

/// The type whose fields fill `mail()`.
pub const SMTP_CREDS: &str = "SMTP Creds";
/// The type whose fields fill `http_client()`.
pub const HTTP_SECRETS: &str = "HTTP Secrets";
/// Longest secret name.
const MAX_NAME_LEN: usize = 128;
/// Largest secret, bytes of JSON.
const MAX_SECRET_BYTES: usize = 64 * 1024;

/// A secret type: the fields it may have and those it must.
struct Kind {
    name: &'static str,
    fields: &'static [&'static str],
    required: &'static [&'static str],
}

const KINDS: &[Kind] = &[
    Kind {
        name: SMTP_CREDS,
        fields: &[
            "server",
            "server_port",
            "auth_username",
            "auth_password",
            "skip_verify",
            "from",
            "root_ca",
        ],
        required: &["server", "server_port"],
    },
    Kind {
        name: HTTP_SECRETS,
        fields: &[
            "url",
            "method",
            "user_agent",
            "headers",
            "skip_verify",
            "root_ca",
        ],
        required: &["url"],
    },
];

/// One stored secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Secret {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: String,
    pub fields: Map<String, Value>,
    pub created_by: String,
    pub created_us: i64,
    pub modified_us: i64,
}

impl Secret {
    /// A string field; empty when unset.
    pub fn text(&self, field: &str) -> String {
        match self.fields.get(field) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    }

    /// The row `secrets()` and `talon secrets list|show` print: field names, never values.
    pub fn redacted(&self) -> Value {
        let fields: BTreeMap<&String, &str> = self
            .fields
            .iter()
            .map(|(k, v)| {
                let set = !matches!(v, Value::Null) && v.as_str() != Some("");
                (k, if set { "(set)" } else { "(empty)" })
            })
            .collect();
        json!({
            "name": self.name,
            "type": self.kind,
            "description": self.description,
            "fields": fields,
            "created_by": self.created_by,
            "created": talon_core::timefmt::rfc3339(self.created_us),
            "modified": talon_core::timefmt::rfc3339(self.modified_us),
        })
    }
}

fn namespace(org: &str) -> String {
    format!("secrets/{org}")
}

/// Checks a name, a type and fields; returns the fields as stored.
fn check(name: &str, kind: &str, fields: &Value) -> Result<Map<String, Value>, Error> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ' '))
    {
        return Err(Error::Invalid(format!(
            "secret name {name:?} must be 1 to {MAX_NAME_LEN} letters, digits, spaces, '.', '_' or '-'"
        )));
    }
    let Some(k) = KINDS.iter().find(|k| k.name == kind) else {
        let known: Vec<_> = KINDS.iter().map(|k| k.name).collect();
        return Err(Error::Invalid(format!(
            "secret type {kind:?} is unknown; known types: {}",
            known.join(", ")
        )));
    };
    let Value::Object(map) = fields else {
        return Err(Error::Invalid(
            "secret must be a dict of the type's fields".into(),
        ));
    };
    if serde_json::to_string(map).map_or(0, |s| s.len()) > MAX_SECRET_BYTES {
        return Err(Error::Invalid(format!(
            "secret {name} is over {MAX_SECRET_BYTES} bytes"
        )));
    }
    if let Some(bad) = map.keys().find(|f| !k.fields.contains(&f.as_str())) {
        return Err(Error::Invalid(format!(
            "{kind} has no field {bad:?}; its fields: {}",
            k.fields.join(", ")
        )));
    }
    for r in k.required {
        let set = map
            .get(*r)
            .is_some_and(|v| !v.is_null() && v.as_str() != Some(""));
        if !set {
            return Err(Error::Invalid(format!(
                "{kind} secret {name} needs the field {r}"
            )));
        }
    }
    Ok(map.clone())
}

/// The secrets of every org, in the store.
#[derive(Clone)]
pub struct Secrets {
    store: Store,
}

impl Secrets {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// A secret by name.
    pub fn get(&self, org: &str, name: &str) -> Result<Secret, Error> {
        let text = self
            .store
            .setting(&namespace(org), name)
            .map_err(|e| Error::Failed(e.to_string()))?
            .ok_or_else(|| Error::NotFound(format!("no secret named {name:?}")))?;
        serde_json::from_str(&text).map_err(|e| Error::Failed(format!("secret {name}: {e}")))
    }

    /// A secret of `kind` by name (what `mail(secret=)` asks for).
    pub fn get_typed(&self, org: &str, name: &str, kind: &str) -> Result<Secret, Error> {
        let s = self.get(org, name)?;
        if s.kind != kind {
            return Err(Error::Invalid(format!(
                "secret {name} is of type {:?}, not {kind:?}",
                s.kind
            )));
        }
        Ok(s)
    }

    /// Every secret of an org, by name.
    pub fn list(&self, org: &str) -> Result<Vec<Secret>, Error> {
        let rows = self
            .store
            .settings(&namespace(org))
            .map_err(|e| Error::Failed(e.to_string()))?;
        Ok(rows
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_str(&v).ok())
            .collect())
    }

    /// Adds a secret; an existing name is refused (use [`Secrets::modify`]).
    pub async fn add(
        &self,
        org: &str,
        name: &str,
        kind: &str,
        description: &str,
        fields: &Value,
        by: &str,
    ) -> Result<Secret, Error> {
        let fields = check(name, kind, fields)?;
        if self.get(org, name).is_ok() {
            return Err(Error::Invalid(format!(
                "a secret named {name:?} exists; change it with secret_modify"
            )));
        }
        let now = talon_shared::queue::now_us();
        let s = Secret {
            name: name.into(),
            kind: kind.into(),
            description: description.into(),
            fields,
            created_by: by.into(),
            created_us: now,
            modified_us: now,
        };
        self.put(org, &s).await?;
        Ok(s)
    }

    /// Changes the fields given (a NULL field is removed) and keeps the others.
    pub async fn modify(
        &self,
        org: &str,
        name: &str,
        fields: &Value,
        description: Option<&str>,
    ) -> Result<Secret, Error> {
        let mut s = self.get(org, name)?;
        let Value::Object(changes) = fields else {
            return Err(Error::Invalid("secret must be a dict of fields".into()));
        };
        let mut merged = s.fields.clone();
        for (k, v) in changes {
            if v.is_null() {
                merged.remove(k);
            } else {
                merged.insert(k.clone(), v.clone());
            }
        }
        s.fields = check(name, &s.kind, &Value::Object(merged))?;
        if let Some(d) = description {
            s.description = d.into();
        }
        s.modified_us = talon_shared::queue::now_us();
        self.put(org, &s).await?;
        Ok(s)
    }

    /// Removes a secret.
    pub async fn remove(&self, org: &str, name: &str) -> Result<(), Error> {
        self.get(org, name)?;
        self.store
            .set_setting(&namespace(org), name, None)
            .await
            .map_err(|e| Error::Failed(e.to_string()))?;
        Ok(())
    }

    async fn put(&self, org: &str, s: &Secret) -> Result<(), Error> {
        let text = serde_json::to_string(s).map_err(|e| Error::Failed(e.to_string()))?;
        self.store
            .set_setting(&namespace(org), &s.name, Some(&text))
            .await
            .map_err(|e| Error::Failed(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_fields_are_checked() {
        let ok = json!({"server": "smtp.example.org", "server_port": 587, "auth_password": "x"});
        assert!(check("mail", SMTP_CREDS, &ok).is_ok());
        let missing = json!({"server": "smtp.example.org"});
        let e = check("mail", SMTP_CREDS, &missing).unwrap_err().to_string();
        assert!(e.contains("server_port"), "{e}");
        let unknown = json!({"url": "x", "password": "p"});
        let e = check("h", HTTP_SECRETS, &unknown).unwrap_err().to_string();
        assert!(e.contains("no field \"password\""), "{e}");
        let e = check("h", "Nope", &ok).unwrap_err().to_string();
        assert!(e.contains("SMTP Creds"), "{e}");
        assert!(check("../x", SMTP_CREDS, &ok).is_err());
    }

    #[test]
    fn the_redacted_row_has_no_values() {
        let s = Secret {
            name: "m".into(),
            kind: SMTP_CREDS.into(),
            description: String::new(),
            fields: check(
                "m",
                SMTP_CREDS,
                &json!({"server": "smtp.example.org", "server_port": 25, "auth_password": "hunter2"}),
            )
            .unwrap(),
            created_by: "admin".into(),
            created_us: 0,
            modified_us: 0,
        };
        let text = s.redacted().to_string();
        assert!(!text.contains("hunter2") && !text.contains("smtp.example.org"));
        assert!(text.contains("auth_password"));
    }
}
