//! API users, kept in the store's settings (namespace `users`): each user's roles per org
//! and the SHA-256 of its current certificate. A certificate is accepted only while its
//! user exists with that fingerprint, so removing a user (or issuing it a new
//! certificate) revokes the old certificate at once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use talon_core::acl::{self, Permission, Permissions};
use talon_core::ids::ROOT_ORG;
use talon_shared::store::Store;

/// The settings namespace of users.
const NAMESPACE: &str = "users";
/// Longest user name.
pub const MAX_NAME_LEN: usize = 64;

/// One API user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// Roles per org.
    pub orgs: BTreeMap<String, Vec<String>>,
    pub certificate_sha256: String,
    /// SHA-256 of the user's debug-page bearer token, hex.
    #[serde(default)]
    pub debug_token_sha256: Option<String>,
    pub created_by: String,
    pub created_us: i64,
}

impl User {
    /// What the user may do in `org`. An administrator of the root org administers every
    /// org; SERVER_ADMIN is held only through the root org.
    pub fn permissions(&self, org: &str) -> Option<Permissions> {
        let root = self.orgs.get(ROOT_ORG);
        if root.is_some_and(|r| r.iter().any(|x| x == "administrator")) {
            return Some(Permissions::all());
        }
        let roles = self.orgs.get(org)?;
        let perms = acl::roles_permissions(roles.iter().map(String::as_str));
        if org == ROOT_ORG {
            return Some(perms);
        }
        Some(perms.without(Permission::ServerAdmin))
    }
}

/// Checks a user name: 1 to 64 letters, digits, `.`, `_`, `-` and `@`.
pub fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "user name {name:?} must be 1 to {MAX_NAME_LEN} characters"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err(format!(
            "user name {name:?} may hold only letters, digits, '.', '_', '-' and '@'"
        ));
    }
    if name == "server" || name.starts_with("server:") {
        return Err(format!("user name {name:?} is reserved for the server"));
    }
    Ok(())
}

/// The debug pages' check on the master: a user's bearer token, with the user's
/// permissions in the org asked for; or one of the config's tokens, with every permission.
pub struct DebugTokens {
    pub users: Users,
    pub config_tokens: Vec<String>,
}

impl talon_shared::debug::DebugAuth for DebugTokens {
    fn check(&self, token: &str, org: &str) -> Result<Permissions, String> {
        let hash = talon_core::deploy::token_sha256(token);
        if self.config_tokens.contains(&hash) {
            return Ok(Permissions::all());
        }
        let users = self
            .users
            .list()
            .map_err(|e| format!("cannot read users: {e}"))?;
        let user = users
            .into_iter()
            .find(|u| u.debug_token_sha256.as_deref() == Some(hash.as_str()))
            .ok_or_else(|| "unknown token".to_string())?;
        user.permissions(org)
            .ok_or_else(|| format!("user {} is not a member of org {org}", user.name))
    }
}

/// The users of a store.
#[derive(Clone)]
pub struct Users {
    store: Store,
}

impl Users {
    pub fn new(store: Store) -> Users {
        Users { store }
    }

    /// A user by name.
    pub fn get(&self, name: &str) -> anyhow::Result<Option<User>> {
        match self.store.setting(NAMESPACE, name)? {
            Some(json) => Ok(Some(serde_json::from_str(&json)?)),
            None => Ok(None),
        }
    }

    /// Every user, by name.
    pub fn list(&self) -> anyhow::Result<Vec<User>> {
        self.store
            .settings(NAMESPACE)?
            .into_iter()
            .map(|(_, json)| Ok(serde_json::from_str(&json)?))
            .collect()
    }

    /// Adds or replaces a user.
    pub async fn put(&self, user: &User) -> anyhow::Result<()> {
        let json = serde_json::to_string(user)?;
        self.store
            .set_setting(NAMESPACE, &user.name, Some(&json))
            .await?;
        Ok(())
    }

    /// Removes a user; false when there was none.
    pub async fn remove(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self.store.set_setting(NAMESPACE, name, None).await?)
    }

    /// Adds each initial user that does not exist yet, and gives one the config made before
    /// its current certificate (after a CA rotation). A removed initial user comes back on
    /// the next start: remove it from the config to remove it for good.
    pub async fn ensure(&self, initial: &[talon_core::deploy::InitialUser]) -> anyhow::Result<()> {
        for u in initial {
            valid_name(&u.name).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                acl::role_permissions(&u.role).is_some(),
                "initial_users: {}: unknown role {:?}",
                u.name,
                u.role
            );
            match self.get(&u.name)? {
                None => {
                    self.put(&User {
                        name: u.name.clone(),
                        orgs: BTreeMap::from([(ROOT_ORG.to_string(), vec![u.role.clone()])]),
                        certificate_sha256: u.certificate_sha256.clone(),
                        debug_token_sha256: u.debug_token_sha256.clone(),
                        created_by: "config".into(),
                        created_us: talon_shared::queue::now_us(),
                    })
                    .await?;
                    tracing::info!(user = %u.name, role = %u.role, "added the config's initial user");
                }
                // The config is the root of trust: a user it made follows its certificate
                // (a rotated CA issues the administrator anew).
                Some(mut existing)
                    if existing.created_by == "config"
                        && (existing.certificate_sha256 != u.certificate_sha256
                            || existing.debug_token_sha256 != u.debug_token_sha256) =>
                {
                    existing.certificate_sha256 = u.certificate_sha256.clone();
                    existing.debug_token_sha256 = u.debug_token_sha256.clone();
                    self.put(&existing).await?;
                    tracing::info!(user = %u.name, "the config's initial user has a new certificate");
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(orgs: &[(&str, &str)]) -> User {
        User {
            name: "u".into(),
            orgs: orgs
                .iter()
                .map(|(o, r)| (o.to_string(), vec![r.to_string()]))
                .collect(),
            certificate_sha256: String::new(),
            debug_token_sha256: None,
            created_by: String::new(),
            created_us: 0,
        }
    }

    #[test]
    fn an_org_role_holds_in_its_org_only() {
        let analyst = user(&[("A", "analyst")]);
        assert!(analyst.permissions("A").unwrap().has(Permission::AnyQuery));
        assert_eq!(analyst.permissions("B"), None);
        let admin = user(&[("root", "administrator")]);
        assert!(admin.permissions("B").unwrap().has(Permission::ServerAdmin));
        let org_admin = user(&[("A", "administrator")]);
        assert!(!org_admin
            .permissions("A")
            .unwrap()
            .has(Permission::ServerAdmin));
    }

    #[test]
    fn names_are_plain_and_server_is_reserved() {
        assert!(valid_name("alice@example.com").is_ok());
        assert!(valid_name("server").is_err());
        assert!(valid_name("a b").is_err());
        assert!(valid_name("").is_err());
    }
}
