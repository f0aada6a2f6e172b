//! The crate layout holds: the endpoint agent and the CLI never link the server engine,
//! its store, its bus, its HTTP server or the frontend's HTTP/2 code.

use std::process::Command;

fn normal_deps(package: &str) -> Vec<String> {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

#[test]
fn the_agent_and_the_cli_link_no_server_code() {
    for package in ["talon-client", "talon-cli"] {
        let deps = normal_deps(package);
        assert!(
            deps.iter().any(|d| d == "talon-core"),
            "{package}: {deps:?}"
        );
        for banned in [
            "talon-shared",
            "talon-master",
            "redb",
            "axum",
            "async-nats",
            "loona-hpack",
        ] {
            assert!(
                !deps.iter().any(|d| d == banned),
                "{package} links {banned}"
            );
        }
    }
}
