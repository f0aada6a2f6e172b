//! What each function and plugin needs (SPEC-VQL names the permission where Velociraptor
//! checks one): a query runs with its principal's permissions, and a call it may not make
//! logs "Permission denied" once and gives NULL (a function) or no rows (a plugin).
//! Anything not listed needs nothing beyond running a query.

use talon_core::acl::Permission;

/// The permission calling function or plugin `name` needs, if any.
pub fn required(name: &str, plugin: bool) -> Option<Permission> {
    use Permission::*;
    Some(match (name, plugin) {
        // Files on the machine the query runs on (parse_csv checks its accessor itself).
        ("watch_file", true) => FilesystemRead,
        // Processes and the host.
        ("pslist", true) | ("info", true) | ("client_stats", true) => MachineState,
        // Rows into queues.
        ("send_event", false) => Publish,
        ("label", false) => LabelClient,
        // Collections and hunts.
        ("collect_client", false) | ("cancel_flow", false) => CollectClient,
        ("hunt", false) | ("hunt_update", false) => StartHunt,
        ("flows", true)
        | ("flow_results", true)
        | ("flow_logs", true)
        | ("hunts", true)
        | ("hunt_results", true)
        | ("hunt_flows", true) => ReadResults,
        // Stored rows, clients, tables and artifacts.
        ("clients", true)
        | ("monitoring", true)
        | ("monitoring_logs", true)
        | ("watch_monitoring", true)
        | ("source", true)
        | ("artifact_definitions", true)
        | ("client_info", false)
        | ("server_metadata", false) => ReadResults,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_process_access_need_their_permissions() {
        assert_eq!(
            required("watch_file", true),
            Some(Permission::FilesystemRead)
        );
        assert_eq!(required("pslist", true), Some(Permission::MachineState));
        assert_eq!(required("format", false), None);
        // A function and a plugin of the same name are told apart.
        assert_eq!(required("label", true), None);
    }
}
