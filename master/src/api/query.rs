//! The Query call: VQL with the caller's permissions and the request's limits (or the
//! configured ones), streamed as rows and log lines.

use futures::StreamExt;
use talon_core::acl::Permission;
use talon_proto::api::admin_server::Admin;
use talon_proto::api::*;
use talon_shared::vql_host::Output;
use tonic::{Request, Response, Status};

use super::{org_of, AdminService};
use crate::error::ApiError;

impl AdminService {
    /// Runs a query for the caller (ANY_QUERY); names nothing defines are refused before it
    /// runs, as `artifacts verify` refuses them.
    #[allow(clippy::result_large_err)]
    pub(super) fn query_call(
        &self,
        req: Request<QueryRequest>,
    ) -> Result<Response<<Self as Admin>::QueryStream>, Status> {
        let caller = self.allow(&req, Permission::AnyQuery)?;
        let who = caller.name.clone();
        let r = req.into_inner();
        let org = org_of(&r.org).to_string();
        talon_shared::queue::validate_org(&org).map_err(ApiError::from)?;
        let env = r
            .env
            .into_iter()
            .map(|(k, v)| (k, talon_vql::Value::Str(v)))
            .collect();
        let info = talon_vql::engine::QueryInfo {
            org,
            permissions: Some(caller.permissions),
            ..Default::default()
        };
        // Names nothing defines are refused before the query runs, as `artifacts verify`
        // refuses them (a parse error is reported by run_limited below).
        if let Ok(program) = talon_vql::parse(&r.query) {
            let unknown = talon_artifacts::verify::unknown_calls(&program, self.vql.registry());
            if !unknown.is_empty() {
                let named: Vec<String> = unknown
                    .iter()
                    .map(|(kind, name, offset)| {
                        let (line, col) = talon_vql::parser::line_col(&r.query, *offset);
                        format!("{line}:{col}: unknown {kind} {name}")
                    })
                    .collect();
                return Err(ApiError::BadRequest(named.join("; ")).into());
            }
        }
        // The request's limits win over the configured defaults.
        let mut limits = self.query_limits;
        if r.timeout_secs > 0.0 && r.timeout_secs.is_finite() {
            limits.timeout = Some(std::time::Duration::from_secs_f64(r.timeout_secs.min(1e9)));
        }
        if r.max_rows > 0 {
            limits.max_rows = Some(r.max_rows);
        }
        // The query stops when the caller goes away (the stream is dropped) or at shutdown.
        let cancel = self.shutdown.token().child_token();
        let outputs = self
            .vql
            .run_limited(&r.query, env, info, &who, cancel.clone(), limits)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let guard = cancel.drop_guard();
        // The item type is fixed by tonic's generated trait.
        #[allow(clippy::result_large_err)]
        let stream = outputs.map(move |o| {
            let _keep = &guard;
            Ok(QueryResponse {
                item: Some(match o {
                    Output::Row(json) => query_response::Item::RowJson(json),
                    Output::Log(l) => query_response::Item::Log(LogMessage {
                        level: l.level,
                        message: l.message,
                    }),
                }),
            })
        });
        Ok(Response::new(stream.boxed()))
    }
}
