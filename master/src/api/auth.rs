//! Who calls the API and what it may do: the caller is the user named by its TLS client
//! certificate (issued by the deployment CA, and still the user's current one), and every
//! call names the permission it needs in the org it touches.

use std::collections::BTreeMap;

use talon_core::acl::{Permission, Permissions};
use talon_proto::api::*;
use tonic::{Request, Response, Status};

use super::AdminService;
use crate::users::User;

/// An authenticated caller.
pub(super) struct Caller {
    pub name: String,
    pub permissions: Permissions,
}

/// A request naming the org it acts in (empty: root).
pub(super) trait InOrg {
    fn org(&self) -> &str;
}

macro_rules! in_org {
    ($($t:ty),*) => {
        $(impl InOrg for $t {
            fn org(&self) -> &str {
                &self.org
            }
        })*
    };
}

in_org!(
    ClientMonitoringRequest,
    DeleteClientRequest,
    GetClientRequest,
    GetMetadataRequest,
    LabelClientRequest,
    ListClientsRequest,
    ListQueuesRequest,
    PushRequest,
    QueryRequest,
    ReadRequest,
    ServerMonitoringRequest,
    SetMetadataRequest,
    WatchRequest
);

impl AdminService {
    /// The caller of `req` if it may `need` in the org the request names.
    #[allow(clippy::result_large_err)]
    pub(super) fn allow<T: InOrg>(
        &self,
        req: &Request<T>,
        need: Permission,
    ) -> Result<Caller, Status> {
        self.authorize(req, super::org_of(req.get_ref().org()), need)
    }

    /// The caller of `req` if it may `need` in `org`; UNAUTHENTICATED without a current
    /// user's certificate, PERMISSION_DENIED without the permission or the org.
    #[allow(clippy::result_large_err)]
    pub(super) fn authorize<T>(
        &self,
        req: &Request<T>,
        org: &str,
        need: Permission,
    ) -> Result<Caller, Status> {
        let user = self.user_of(req)?;
        let Some(permissions) = user.permissions(org) else {
            return Err(Status::permission_denied(format!(
                "user {} is not a member of org {org}",
                user.name
            )));
        };
        if !permissions.has(need) {
            return Err(Status::permission_denied(format!(
                "user {} lacks the {need} permission in org {org}",
                user.name
            )));
        }
        Ok(Caller {
            name: user.name,
            permissions,
        })
    }

    #[allow(clippy::result_large_err)]
    fn user_of<T>(&self, req: &Request<T>) -> Result<User, Status> {
        let certs = req.peer_certs().ok_or_else(|| {
            Status::unauthenticated(
                "a client certificate issued by the deployment CA is required (talon --api-config FILE)",
            )
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let name = talon_shared::security::common_name(leaf.as_ref())
            .ok_or_else(|| Status::unauthenticated("the client certificate names no user"))?;
        let fingerprint = talon_core::pki::fingerprint(leaf.as_ref());
        let user = self
            .users
            .get(&name)
            .map_err(|e| Status::internal(format!("cannot read users: {e}")))?;
        match user {
            Some(u) if u.certificate_sha256 == fingerprint => Ok(u),
            Some(_) => Err(Status::unauthenticated(format!(
                "the certificate of user {name} was replaced; use the current one"
            ))),
            None => Err(Status::unauthenticated(format!(
                "user {name} does not exist (removed?)"
            ))),
        }
    }
}

fn user_msg(u: &User, permissions: Option<Permissions>) -> talon_proto::api::User {
    talon_proto::api::User {
        name: u.name.clone(),
        orgs: u
            .orgs
            .iter()
            .map(|(org, roles)| OrgRoles {
                org: org.clone(),
                roles: roles.clone(),
            })
            .collect(),
        certificate_sha256: u.certificate_sha256.clone(),
        created_by: u.created_by.clone(),
        created_us: u.created_us,
        permissions: permissions
            .map(|p| p.names().into_iter().map(String::from).collect())
            .unwrap_or_default(),
    }
}

impl AdminService {
    pub(super) async fn add_user_call(
        &self,
        req: Request<AddUserRequest>,
    ) -> Result<Response<AddUserResponse>, Status> {
        let caller = self.authorize(&req, talon_core::ids::ROOT_ORG, Permission::ServerAdmin)?;
        let r = req.into_inner();
        crate::users::valid_name(&r.name).map_err(Status::invalid_argument)?;
        let role = if r.role.is_empty() {
            "reader".to_string()
        } else {
            r.role.clone()
        };
        if talon_core::acl::role_permissions(&role).is_none() {
            return Err(Status::invalid_argument(format!(
                "unknown role {role:?}; roles: {}",
                talon_core::acl::ROLES.join(", ")
            )));
        }
        let org = super::org_of(&r.org).to_string();
        talon_shared::queue::validate_org(&org)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let Some(ca) = &self.ca else {
            return Err(Status::failed_precondition(
                "this master does not hold the CA's key (tls.ca_private_key_file), so it cannot issue certificates",
            ));
        };
        let issued = ca
            .issue_user(&r.name)
            .map_err(|e| Status::internal(e.to_string()))?;
        let der = talon_core::pki::cert_der("issued certificate", &issued.cert_pem)
            .map_err(|e| Status::internal(e.to_string()))?;
        let token = talon_core::pki::random_secret(40);
        let existing = self
            .users
            .get(&r.name)
            .map_err(|e| Status::internal(e.to_string()))?;
        // Adding a role to an existing user keeps its other orgs, and issues a new
        // certificate (the old one stops working).
        let mut orgs = existing.map(|u| u.orgs).unwrap_or_else(BTreeMap::new);
        orgs.insert(org.clone(), vec![role.clone()]);
        let user = User {
            name: r.name.clone(),
            orgs,
            certificate_sha256: talon_core::pki::fingerprint(&der),
            debug_token_sha256: Some(talon_core::deploy::token_sha256(&token)),
            created_by: caller.name.clone(),
            created_us: talon_shared::queue::now_us(),
        };
        self.users
            .put(&user)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let config = talon_core::deploy::ApiClientConfig {
            name: r.name.clone(),
            api_addr: if r.api_addr.is_empty() {
                self.api_addr.clone()
            } else {
                r.api_addr
            },
            ca_certificate: ca.cert_pem.clone(),
            certificate: issued.cert_pem,
            private_key: issued.key_pem,
            server_name: None,
            debug_token: Some(token),
        };
        super::audit(
            &self.qm,
            talon_core::ids::ROOT_ORG,
            "user_add",
            &caller.name,
            serde_json::json!({"user": r.name, "role": role, "org": org}),
        )
        .await;
        Ok(Response::new(AddUserResponse {
            api_config_yaml: serde_yaml::to_string(&config).expect("config serialises"),
            user: Some(user_msg(&user, None)),
        }))
    }

    pub(super) async fn list_users_call(
        &self,
        req: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        self.authorize(&req, talon_core::ids::ROOT_ORG, Permission::ServerAdmin)?;
        let users = self
            .users
            .list()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ListUsersResponse {
            users: users.iter().map(|u| user_msg(u, None)).collect(),
        }))
    }

    pub(super) async fn remove_user_call(
        &self,
        req: Request<RemoveUserRequest>,
    ) -> Result<Response<RemoveUserResponse>, Status> {
        let caller = self.authorize(&req, talon_core::ids::ROOT_ORG, Permission::ServerAdmin)?;
        let name = req.into_inner().name;
        if name == caller.name {
            return Err(Status::failed_precondition(
                "a user cannot remove itself (another administrator can)",
            ));
        }
        let removed = self
            .users
            .remove(&name)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if !removed {
            return Err(Status::not_found(format!("no user {name}")));
        }
        super::audit(
            &self.qm,
            talon_core::ids::ROOT_ORG,
            "user_remove",
            &caller.name,
            serde_json::json!({"user": name}),
        )
        .await;
        Ok(Response::new(RemoveUserResponse {}))
    }

    pub(super) async fn who_am_i_call(
        &self,
        req: Request<WhoAmIRequest>,
    ) -> Result<Response<talon_proto::api::User>, Status> {
        let user = self.user_of(&req)?;
        let org = super::org_of(&req.get_ref().org);
        Ok(Response::new(user_msg(&user, user.permissions(org))))
    }
}
