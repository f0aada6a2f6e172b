//! Files on the machine the query runs on: `read_file(filename=, length=, offset=,
//! accessor=)` (FILESYSTEM_READ; `accessor='data'` reads the filename itself) and
//! `stat(filename=)`, and `tempdir()` (FILESYSTEM_WRITE; removed when the query ends).
//! Reads are bounded, so one call cannot fill memory.

use std::io::{Read as _, Seek as _};

use futures::future::BoxFuture;
use talon_core::acl::Permission;

use crate::eval::engine::Place;
use crate::eval::registry::{Call, Registry};
use crate::eval::value::{time_from_secs, Dict, Value};

/// Default and largest bytes one `read_file` returns.
const DEFAULT_LENGTH: u64 = 4 * 1024 * 1024;
const MAX_LENGTH: u64 = crate::limits::MAX_STRING_BYTES as u64;

pub(super) fn register(r: &mut Registry) {
    r.function("read_file", Place::Both, read_file);
    r.function("stat", Place::Both, stat);
    r.function("tempdir", Place::Both, tempdir);
}

/// Most temporary directories one query may make.
const MAX_TEMP_DIRS: usize = 100;

fn tempdir<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(&["remove_last"], &[]).await {
            return Value::Null;
        }
        let ctx = c.scope.ctx().clone();
        if !ctx.allowed(Permission::FilesystemWrite, "tempdir") {
            return Value::Null;
        }
        let mut dirs = ctx.temp_dirs.lock().expect("temp dirs");
        if dirs.len() >= MAX_TEMP_DIRS {
            drop(dirs);
            return c.fail(format!(
                "a query may make at most {MAX_TEMP_DIRS} temporary directories"
            ));
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "talon-vql-{}-{nanos:x}-{}",
            std::process::id(),
            dirs.len()
        ));
        if let Err(e) = std::fs::create_dir(&path) {
            drop(dirs);
            return c.fail(format!("cannot create {}: {e}", path.display()));
        }
        dirs.push(path.clone());
        Value::Str(path.to_string_lossy().into_owned())
    })
}

fn read_file<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c
            .check(&["filename", "length", "offset", "accessor"], &["filename"])
            .await
        {
            return Value::Null;
        }
        let name = c.args.get("filename").await.unwrap_or_default();
        let accessor = c
            .args
            .get("accessor")
            .await
            .map(|v| v.to_text())
            .unwrap_or_default();
        if accessor == "data" {
            return name;
        }
        if !c
            .scope
            .ctx()
            .allowed(Permission::FilesystemRead, "read_file")
        {
            return Value::Null;
        }
        let length = match c.args.get("length").await {
            Some(Value::Int(n)) if n > 0 => (n as u64).min(MAX_LENGTH),
            _ => DEFAULT_LENGTH,
        };
        let offset = match c.args.get("offset").await {
            Some(Value::Int(n)) if n > 0 => n as u64,
            _ => 0,
        };
        let path = name.to_text();
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut f = std::fs::File::open(&path)?;
            f.seek(std::io::SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            f.take(length).read_to_end(&mut buf)?;
            Ok(buf)
        })
        .await;
        match read {
            Ok(Ok(bytes)) => Value::from_bytes(bytes),
            Ok(Err(e)) => {
                c.scope
                    .ctx()
                    .log("DEBUG", format!("read_file: {}: {e}", name.to_text()));
                Value::Null
            }
            Err(e) => c.fail(e),
        }
    })
}

fn stat<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if !c.check(&["filename", "accessor"], &["filename"]).await {
            return Value::Null;
        }
        if !c.scope.ctx().allowed(Permission::FilesystemRead, "stat") {
            return Value::Null;
        }
        let path = c.args.get("filename").await.unwrap_or_default().to_text();
        let Ok(m) = std::fs::metadata(&path) else {
            return Value::Null;
        };
        let mut d = Dict::new();
        let name = std::path::Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        d.insert("Name".into(), Value::Str(name));
        d.insert("OSPath".into(), Value::Str(path.clone()));
        d.insert("FullPath".into(), Value::Str(path));
        d.insert("Size".into(), Value::Int(m.len() as i64));
        d.insert("IsDir".into(), Value::Bool(m.is_dir()));
        if let Ok(t) = m.modified() {
            let secs = t
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            d.insert("Mtime".into(), time_from_secs(secs));
        }
        Value::Dict(d)
    })
}
