//! Roles and permissions, with Velociraptor's names: a role is a named set of permissions;
//! a user holds roles per org; every API call and every VQL function and plugin declares the
//! permission it needs.

use std::fmt;

/// One permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Run any query, including ones no artifact holds.
    AnyQuery,
    /// Push rows to a SERVER_EVENT queue (`talon events push`, `send_event()`).
    Publish,
    /// Read queues, stored rows, clients, artifacts and tables.
    ReadResults,
    /// Add and remove client labels.
    LabelClient,
    /// Change what clients run (client monitoring table, collections).
    CollectClient,
    /// Change what the server runs (server monitoring table, server collections).
    CollectServer,
    /// Add, change and delete artifacts.
    ArtifactWriter,
    /// Run programs on the server.
    Execve,
    /// Administer the server: users, metadata, the cluster, every org.
    ServerAdmin,
    /// Administer one org: delete clients, change its tables.
    OrgAdmin,
    /// Read files on the machine the query runs on.
    FilesystemRead,
    /// Write files on the machine the query runs on.
    FilesystemWrite,
    /// See the state of the machine the query runs on (processes, host information).
    MachineState,
    /// Make network connections from the server (mail, HTTP).
    Network,
    /// Create, start, pause and stop hunts.
    StartHunt,
}

/// Every permission, in the order listings print them.
pub const ALL: &[Permission] = &[
    Permission::AnyQuery,
    Permission::Publish,
    Permission::ReadResults,
    Permission::LabelClient,
    Permission::CollectClient,
    Permission::CollectServer,
    Permission::ArtifactWriter,
    Permission::Execve,
    Permission::ServerAdmin,
    Permission::OrgAdmin,
    Permission::FilesystemRead,
    Permission::FilesystemWrite,
    Permission::MachineState,
    Permission::Network,
    Permission::StartHunt,
];

impl Permission {
    /// The permission's name as artifacts and listings spell it.
    pub fn name(self) -> &'static str {
        match self {
            Permission::AnyQuery => "ANY_QUERY",
            Permission::Publish => "PUBLISH",
            Permission::ReadResults => "READ_RESULTS",
            Permission::LabelClient => "LABEL_CLIENT",
            Permission::CollectClient => "COLLECT_CLIENT",
            Permission::CollectServer => "COLLECT_SERVER",
            Permission::ArtifactWriter => "ARTIFACT_WRITER",
            Permission::Execve => "EXECVE",
            Permission::ServerAdmin => "SERVER_ADMIN",
            Permission::OrgAdmin => "ORG_ADMIN",
            Permission::FilesystemRead => "FILESYSTEM_READ",
            Permission::FilesystemWrite => "FILESYSTEM_WRITE",
            Permission::MachineState => "MACHINE_STATE",
            Permission::Network => "NETWORK",
            Permission::StartHunt => "START_HUNT",
        }
    }

    /// A permission by name (case-insensitive).
    pub fn parse(name: &str) -> Option<Permission> {
        ALL.iter()
            .copied()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of permissions (a bit per permission).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Permissions(u32);

impl Permissions {
    /// No permission.
    pub const NONE: Permissions = Permissions(0);

    /// Every permission.
    pub fn all() -> Permissions {
        Self::of(ALL)
    }

    /// The set of `perms`.
    pub fn of(perms: &[Permission]) -> Permissions {
        Permissions(perms.iter().fold(0, |acc, p| acc | bit(*p)))
    }

    /// Whether `p` is in the set.
    pub fn has(self, p: Permission) -> bool {
        self.0 & bit(p) != 0
    }

    /// The union of two sets.
    pub fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    /// The set without `p`.
    pub fn without(self, p: Permission) -> Permissions {
        Permissions(self.0 & !bit(p))
    }

    /// The permissions in the set, in [`ALL`]'s order.
    pub fn list(self) -> Vec<Permission> {
        ALL.iter().copied().filter(|p| self.has(*p)).collect()
    }

    /// The names of the permissions in the set.
    pub fn names(self) -> Vec<&'static str> {
        self.list().into_iter().map(Permission::name).collect()
    }
}

fn bit(p: Permission) -> u32 {
    1 << (p as u32)
}

/// The roles, with Velociraptor's names.
pub const ROLES: &[&str] = &[
    "administrator",
    "org_admin",
    "investigator",
    "analyst",
    "reader",
    "api",
];

/// The permissions of a role; None for a name that is not a role.
pub fn role_permissions(role: &str) -> Option<Permissions> {
    use Permission::*;
    let perms: &[Permission] = match role {
        "administrator" => return Some(Permissions::all()),
        "org_admin" => &[
            OrgAdmin,
            AnyQuery,
            Publish,
            ReadResults,
            LabelClient,
            CollectClient,
            CollectServer,
            ArtifactWriter,
            StartHunt,
        ],
        "investigator" => &[ReadResults, AnyQuery, LabelClient, CollectClient, StartHunt],
        "analyst" => &[ReadResults, AnyQuery, LabelClient],
        "reader" => &[ReadResults],
        "api" => &[AnyQuery, ReadResults],
        _ => return None,
    };
    Some(Permissions::of(perms))
}

/// The permissions of several roles together; unknown names add nothing.
pub fn roles_permissions<'a>(roles: impl IntoIterator<Item = &'a str>) -> Permissions {
    roles
        .into_iter()
        .filter_map(role_permissions)
        .fold(Permissions::NONE, Permissions::union)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_what_their_names_promise() {
        let admin = role_permissions("administrator").unwrap();
        assert!(ALL.iter().all(|p| admin.has(*p)));
        let reader = role_permissions("reader").unwrap();
        assert_eq!(reader.list(), vec![Permission::ReadResults]);
        let analyst = role_permissions("analyst").unwrap();
        assert!(analyst.has(Permission::AnyQuery) && !analyst.has(Permission::FilesystemRead));
        assert!(!role_permissions("org_admin")
            .unwrap()
            .has(Permission::ServerAdmin));
        assert_eq!(role_permissions("root"), None);
        assert_eq!(
            roles_permissions(["reader", "api"]).names(),
            vec!["ANY_QUERY", "READ_RESULTS"]
        );
    }

    #[test]
    fn names_round_trip() {
        for p in ALL {
            assert_eq!(Permission::parse(p.name()), Some(*p));
        }
        assert_eq!(
            Permission::parse("filesystem_read"),
            Some(Permission::FilesystemRead)
        );
        assert_eq!(Permission::parse("ROOT"), None);
    }
}
