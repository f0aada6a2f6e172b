//! Real peers for the automation tests, as processes on 127.0.0.1: an SMTP server
//! (aiosmtpd) and an HTTP server, both from `tests/peers/sinks.py`, which store what they
//! receive as files the tests read. Each is killed (by its own pid) when dropped.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The script that runs the peers.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/sinks.py")
}

/// A running peer: its port and the directory it stores what it receives in.
pub struct Sink {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Sink {
    /// An SMTP server storing each accepted message as `<n>.eml`; recipients whose local
    /// part starts with `refuse` are refused with 451.
    pub fn smtp(dir: &Path) -> Sink {
        Self::start("smtp", dir)
    }

    /// An HTTP server storing each request as `<n>.json` (`method, path, headers, body`).
    pub fn http(dir: &Path) -> Sink {
        Self::start("http", dir)
    }

    /// The SMTP server requiring STARTTLS with a certificate (PEM files).
    pub fn smtp_starttls(dir: &Path, cert: &Path, key: &Path) -> Sink {
        Self::start_with("smtp-starttls", dir, &[cert, key])
    }

    /// The HTTP server over TLS with a certificate (PEM files).
    pub fn https(dir: &Path, cert: &Path, key: &Path) -> Sink {
        Self::start_with("https", dir, &[cert, key])
    }

    fn start(kind: &str, dir: &Path) -> Sink {
        Self::start_with(kind, dir, &[])
    }

    fn start_with(kind: &str, dir: &Path, extra: &[&Path]) -> Sink {
        let mut child = Command::new("python3")
            .arg(script())
            .arg(kind)
            .arg(dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs tests/peers/sinks.py (scripts/test installs aiosmtpd)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("sink's first line");
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("the {kind} sink did not start (is aiosmtpd installed?): {line:?}")
            });
        Sink {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    /// The files received so far, in arrival order.
    pub fn received(&self) -> Vec<PathBuf> {
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let p = e.path();
                        let n = p.file_stem()?.to_str()?.parse().ok()?;
                        Some((n, p))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.into_iter().map(|(_, p)| p).collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stored message as Python's email parser reads it: `subject`, `from`, `to`,
/// `mime_version`, `defects`, and `parts` (each `type`, `filename`, decoded `text`).
pub fn parse_mail(path: &Path) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(script())
        .arg("parse")
        .arg(path)
        .output()
        .expect("python3 parses the mail");
    assert!(
        out.status.success(),
        "cannot parse {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parse prints JSON")
}

/// A master whose `mail:` section points at `smtp` (when given), retrying quickly (3
/// tries, 1 s apart); with None, no mail server (2 tries).
pub fn master_with_mail(dir: &Path, smtp: Option<u16>) -> crate::Master {
    let config = dir.join("master.yaml");
    let mail = match smtp {
        Some(port) => format!(
            "mail:\n  server: 127.0.0.1\n  server_port: {port}\n  from: talon@example.org\n  max_attempts: 3\n  retry_secs: 1\n"
        ),
        None => "mail:\n  max_attempts: 2\n  retry_secs: 1\n".to_string(),
    };
    std::fs::write(&config, mail).unwrap();
    crate::Master::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

/// Adds an artifact from YAML text (written as `dir/<file>.yaml`).
pub fn add_artifact(master: &crate::Master, dir: &Path, file: &str, text: &str) {
    let f = dir.join(format!("{file}.yaml"));
    std::fs::write(&f, text).unwrap();
    crate::ok(&master.talon(&["artifacts", "add", f.to_str().unwrap()]));
}

/// A query's rows.
pub fn query(master: &crate::Master, vql: &str) -> Vec<serde_json::Value> {
    crate::json_lines(&crate::ok(&master.talon(&["query", vql])))
}

/// The outbox as `talon mail list --format json` prints it.
pub fn outbox(master: &crate::Master) -> Vec<serde_json::Value> {
    serde_json::from_str(&crate::ok(
        &master.talon(&["mail", "list", "--format", "json"]),
    ))
    .unwrap()
}

/// Every mail the sink received, parsed.
pub fn mails(sink: &Sink) -> Vec<serde_json::Value> {
    sink.received().iter().map(|p| parse_mail(p)).collect()
}

/// The decoded text of every part of a parsed mail.
pub fn mail_text(mail: &serde_json::Value) -> String {
    mail["parts"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}
