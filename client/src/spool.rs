//! The local spool: event batches kept on disk until the server acknowledges them, across
//! frontend outages and client restarts. Bounded: when full, the oldest batch is dropped
//! with a counted, logged reason.

use std::path::{Path, PathBuf};

use prost::Message;
use talon_proto::client::{EventBatch, QueueRows};

/// Default spool size limit.
pub const DEFAULT_SPOOL_BYTES: u64 = 256 * 1024 * 1024;

/// A directory of `<batch id>.batch` files (protobuf `EventBatch`).
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// (batch id, size) in id order.
    files: Vec<(u64, u64)>,
    next_id: u64,
    /// Picked at random each time the spool is opened and carried by every batch made
    /// since, so the server never confuses a batch of this run with one of an earlier run,
    /// even when the state directory was restored from an older copy.
    incarnation: u64,
    /// Batches dropped because the spool was full.
    pub dropped: u64,
    /// Batches the server refused (and so were dropped), since the spool was opened.
    pub refused: u64,
}

fn file_name(id: u64) -> String {
    format!("{id:020}.batch")
}

impl Spool {
    /// Opens (creating) the spool in `dir`.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let mut files = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".batch"))
                .and_then(|n| n.parse().ok())
            else {
                continue;
            };
            files.push((id, e.metadata()?.len()));
        }
        files.sort();
        let counter = std::fs::read_to_string(dir.join("next_id"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1);
        let next_id = files.last().map(|(id, _)| id + 1).unwrap_or(1).max(counter);
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            files,
            next_id,
            incarnation: rand::random(),
            dropped: 0,
            refused: 0,
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, s)| s).sum()
    }

    /// Batches held.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Stores rows as a new batch (durably) and returns it.
    pub fn add(&mut self, queues: Vec<QueueRows>) -> std::io::Result<EventBatch> {
        let batch = EventBatch {
            batch_id: self.next_id,
            incarnation: self.incarnation,
            queues,
        };
        self.next_id += 1;
        // The counter is written first, so a batch id is never used twice.
        write_synced(
            &self.dir.join("next_id"),
            self.next_id.to_string().as_bytes(),
        )?;
        let bytes = batch.encode_to_vec();
        write_synced(&self.dir.join(file_name(batch.batch_id)), &bytes)?;
        self.files.push((batch.batch_id, bytes.len() as u64));
        while self.bytes() > self.max_bytes && self.files.len() > 1 {
            let (id, size) = self.files.remove(0);
            let _ = std::fs::remove_file(self.dir.join(file_name(id)));
            self.dropped += 1;
            tracing::error!(
                batch = id,
                bytes = size,
                dropped = self.dropped,
                "spool full: dropped the oldest unacknowledged batch"
            );
        }
        Ok(batch)
    }

    /// Every batch held, oldest first.
    pub fn pending(&self) -> Vec<EventBatch> {
        self.files
            .iter()
            .filter_map(|(id, _)| {
                let bytes = std::fs::read(self.dir.join(file_name(*id))).ok()?;
                EventBatch::decode(bytes.as_slice()).ok()
            })
            .collect()
    }

    /// One batch held, when it is.
    pub fn get(&self, id: u64) -> Option<EventBatch> {
        self.files.binary_search_by_key(&id, |(f, _)| *f).ok()?;
        let bytes = std::fs::read(self.dir.join(file_name(id))).ok()?;
        EventBatch::decode(bytes.as_slice()).ok()
    }

    /// Forgets an acknowledged batch.
    pub fn ack(&mut self, id: u64) {
        if let Some(i) = self.files.iter().position(|(f, _)| *f == id) {
            self.files.remove(i);
            let _ = std::fs::remove_file(self.dir.join(file_name(id)));
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<QueueRows> {
        vec![QueueRows {
            artifact: "A".into(),
            rows_json: vec!["{\"x\":\"0123456789\"}".into(); n],
        }]
    }

    #[test]
    fn batches_survive_reopen_and_ids_never_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).unwrap();
        let a = s.add(rows(1)).unwrap();
        let b = s.add(rows(1)).unwrap();
        assert_eq!((a.batch_id, b.batch_id), (1, 2));
        assert_eq!(a.incarnation, b.incarnation);
        s.ack(1);
        let mut s = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).unwrap();
        assert_eq!(
            s.pending()
                .iter()
                .map(|b| (b.batch_id, b.incarnation))
                .collect::<Vec<_>>(),
            vec![(2, a.incarnation)],
            "a batch kept across a restart is resent under the incarnation it was made in"
        );
        assert_ne!(
            s.add(rows(1)).unwrap().incarnation,
            a.incarnation,
            "a new run is a new incarnation"
        );
        s.ack(3);
        s.ack(2);
        let mut s = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).unwrap();
        assert_eq!(
            s.add(rows(1)).unwrap().batch_id,
            4,
            "ids continue after everything was acked"
        );
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 100).unwrap();
        for _ in 0..5 {
            s.add(rows(2)).unwrap();
        }
        assert!(s.bytes() <= 100 || s.len() == 1);
        assert!(s.dropped >= 3, "dropped {}", s.dropped);
        assert_eq!(s.pending().last().unwrap().batch_id, 5);
    }
}
