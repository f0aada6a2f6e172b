//! The one tracing set-up every binary installs: `RUST_LOG` filter, text or JSON lines,
//! to stderr, with the last [`RECENT_LINES`] lines also kept in memory for the debug
//! pages' Logs page ([`recent_lines`]).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Lines kept in memory.
pub const RECENT_LINES: usize = 1000;
/// Longest line kept (a longer one is cut).
const MAX_LINE: usize = 4096;

static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// The last log lines of this process, oldest first.
pub fn recent_lines() -> Vec<String> {
    RECENT
        .lock()
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default()
}

fn remember(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let Ok(mut recent) = RECENT.lock() else {
        return;
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut line = line.to_string();
        if line.len() > MAX_LINE {
            let cut = (0..=MAX_LINE)
                .rev()
                .find(|i| line.is_char_boundary(*i))
                .unwrap_or(0);
            line.truncate(cut);
        }
        if recent.len() >= RECENT_LINES {
            recent.pop_front();
        }
        recent.push_back(line);
    }
}

/// Writes an event to stderr and keeps its lines.
struct Tee;

/// One event's bytes, kept when the event is written out.
struct TeeWriter(Vec<u8>);

impl Write for TeeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for TeeWriter {
    fn drop(&mut self) {
        let _ = std::io::stderr().write_all(&self.0);
        remember(&self.0);
    }
}

impl<'a> MakeWriter<'a> for Tee {
    type Writer = TeeWriter;
    fn make_writer(&'a self) -> TeeWriter {
        TeeWriter(Vec::with_capacity(256))
    }
}

/// Installs the global subscriber, logging to stderr; `default_filter` applies when
/// `RUST_LOG` is unset.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(Tee);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_are_kept_and_bounded() {
        for i in 0..RECENT_LINES + 5 {
            remember(format!("line {i}\n").as_bytes());
        }
        let lines = recent_lines();
        assert_eq!(lines.len(), RECENT_LINES);
        assert_eq!(lines.last().unwrap(), &format!("line {}", RECENT_LINES + 4));
        remember("x".repeat(10_000).as_bytes());
        assert_eq!(recent_lines().last().unwrap().len(), MAX_LINE);
    }
}
