//! Plugins for endpoints (Linux /proc): info, pslist, client_stats, watch_file.

use std::time::Duration;

use futures::stream::{self, BoxStream};
use futures::StreamExt;

use super::int_arg;
use crate::eval::engine::Place;
use crate::eval::registry::{PluginCall, Registry};
use crate::eval::value::{Row, Value};

pub(super) fn register(r: &mut Registry) {
    r.plugin("info", Place::Client, false, info);
    r.plugin("pslist", Place::Client, false, pslist);
    r.plugin("client_stats", Place::Client, false, client_stats);
    r.plugin("watch_file", Place::Client, true, watch_file);
}

/// Host facts: hostname, OS, architecture.
fn info(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(&[], &[]) {
        return stream::empty().boxed();
    }
    let mut r = Row::new();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| std::env::var("HOSTNAME").unwrap_or_default());
    r.insert("Hostname".into(), Value::Str(hostname.clone()));
    r.insert("Fqdn".into(), Value::Str(hostname));
    r.insert("OS".into(), Value::from(std::env::consts::OS));
    r.insert("Architecture".into(), Value::from(std::env::consts::ARCH));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    r.insert(
        "KernelVersion".into(),
        Value::Str(release.trim().to_string()),
    );
    r.insert("Pid".into(), Value::Int(i64::from(std::process::id())));
    stream::iter(std::iter::once(r)).boxed()
}

/// Clock ticks per second of /proc times (USER_HZ; 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// The fields of a /proc stat line Talon uses.
struct ProcStat {
    name: String,
    ppid: i64,
    /// Ticks in user and kernel mode.
    utime: u64,
    stime: u64,
    /// Ticks since boot at start.
    start: u64,
    vsize: i64,
    /// Pages.
    rss: i64,
}

impl ProcStat {
    fn cpu(&self) -> u64 {
        self.utime + self.stime
    }
}

fn proc_stat(stat: &str) -> Option<ProcStat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_string();
    let f: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // Fields after the name: state(0) ppid(1) ... utime(11) stime(12) ... starttime(19) vsize(20) rss(21)
    Some(ProcStat {
        name,
        ppid: f.get(1)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
        vsize: f.get(20)?.parse().ok()?,
        rss: f.get(21)?.parse().ok()?,
    })
}

fn uptime_secs() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

const PAGE_BYTES: i64 = 4096;

/// One process as a row: Pid, Ppid, Name, CommandLine, RSS (bytes), CPUPercent over its
/// life, CreateTime (unix seconds, fractional), and Velociraptor's `Times` (`user`,
/// `system`: CPU seconds) and `MemoryInfo` (`RSS`, `VMS`: bytes).
fn process_row(pid: i64) -> Option<Row> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let stat = proc_stat(&text)?;
    let (cpu, start, ppid, rss) = (stat.cpu(), stat.start, stat.ppid, stat.rss);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline)
        .replace('\0', " ")
        .trim()
        .to_string();
    let uptime = uptime_secs();
    let alive = (uptime - start as f64 / TICKS_PER_SEC).max(0.01);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut r = Row::new();
    r.insert("Pid".into(), Value::Int(pid));
    r.insert("Ppid".into(), Value::Int(ppid));
    r.insert("Name".into(), Value::Str(stat.name.clone()));
    r.insert("CommandLine".into(), Value::Str(cmdline));
    r.insert("RSS".into(), Value::Int(rss * PAGE_BYTES));
    r.insert(
        "CPUPercent".into(),
        Value::Float(cpu as f64 / TICKS_PER_SEC / alive * 100.0),
    );
    r.insert("CreateTime".into(), Value::Float(now - alive));
    let mut times = Row::new();
    times.insert(
        "user".into(),
        Value::Float(stat.utime as f64 / TICKS_PER_SEC),
    );
    times.insert(
        "system".into(),
        Value::Float(stat.stime as f64 / TICKS_PER_SEC),
    );
    r.insert("Times".into(), Value::Dict(times));
    let mut mem = Row::new();
    mem.insert("RSS".into(), Value::Int(rss * PAGE_BYTES));
    mem.insert("VMS".into(), Value::Int(stat.vsize));
    r.insert("MemoryInfo".into(), Value::Dict(mem));
    Some(r)
}

/// Processes from /proc.
fn pslist(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(&["pid"], &[]) {
        return stream::empty().boxed();
    }
    let only = c.get("pid").and_then(|v| {
        if let Value::Int(i) = v {
            Some(*i)
        } else {
            None
        }
    });
    let pids: Vec<i64> = match only {
        Some(p) => vec![p],
        None => std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default(),
    };
    stream::iter(pids.into_iter().filter_map(process_row)).boxed()
}

/// The running process's own CPU and memory: CPUPercent (since the last call, or since
/// start on the first), RSS bytes.
fn client_stats(c: PluginCall) -> BoxStream<'static, Row> {
    use std::sync::Mutex;
    static LAST: Mutex<Option<(u64, f64)>> = Mutex::new(None);
    if !c.check(&[], &[]) {
        return stream::empty().boxed();
    }
    let Some(mut row) = process_row(i64::from(std::process::id())) else {
        c.fail("cannot read /proc/self");
        return stream::empty().boxed();
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    if let Some(cpu) = proc_stat(&stat).map(|s| s.cpu()) {
        let now = uptime_secs();
        let mut last = LAST.lock().expect("client stats");
        if let Some((prev_cpu, prev_t)) = *last {
            let dt = (now - prev_t).max(0.01);
            let pct = (cpu.saturating_sub(prev_cpu)) as f64 / TICKS_PER_SEC / dt * 100.0;
            row.insert("CPUPercent".into(), Value::Float(pct));
        }
        *last = Some((cpu, now));
    }
    stream::iter(std::iter::once(row)).boxed()
}

/// Follows a text file like `tail -f`: one row per new line (`Line`, `Offset`), from its end
/// (or from the start with `start=TRUE`). Never ends until cancelled.
fn watch_file(c: PluginCall) -> BoxStream<'static, Row> {
    if !c.check(&["filename", "start", "poll_ms"], &["filename"]) {
        return stream::empty().boxed();
    }
    let path = c.get("filename").map(Value::to_text).unwrap_or_default();
    let from_start = c.get("start").is_some_and(Value::truthy);
    let poll = Duration::from_millis(int_arg(&c, "poll_ms", 250).unwrap_or(250).max(10) as u64);
    let cancel = c.scope.ctx().cancel.clone();
    Box::pin(async_stream::stream! {
        use std::io::{Read, Seek, SeekFrom};
        let mut offset: u64 = if from_start { 0 } else { std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) };
        let mut partial = String::new();
        loop {
            if let Ok(mut f) = std::fs::File::open(&path) {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if len < offset {
                    offset = 0; // truncated or rotated
                }
                let mut buf = String::new();
                if f.seek(SeekFrom::Start(offset)).is_ok() && f.read_to_string(&mut buf).is_ok() {
                    offset += buf.len() as u64;
                    partial.push_str(&buf);
                    while let Some(i) = partial.find('\n') {
                        let line: String = partial.drain(..=i).collect();
                        let mut r = Row::new();
                        r.insert("Line".into(), Value::Str(line.trim_end_matches(['\n', '\r']).to_string()));
                        r.insert("Offset".into(), Value::Int((offset - partial.len() as u64) as i64));
                        yield r;
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    })
}
