//! The store's writer thread: takes every queued request into one write transaction,
//! commits once, then answers each request in order.

use std::collections::HashMap;
use std::sync::Arc;

use redb::Database;
use tokio::sync::mpsc;

use super::*;

pub(super) struct Writer {
    db: Arc<Database>,
    /// First seqs per stream of each applied client batch in the current group, by index.
    batch_seqs: HashMap<usize, Vec<u64>>,
    /// Caches of what the committed tables say, loaded on first use and dropped when a
    /// commit fails: the next seq per stream (from `heads`), and the last stored time per
    /// stream (from its last block).
    next: HashMap<String, u64>,
    last_ts: HashMap<String, i64>,
    buf: Vec<u8>,
}

impl Writer {
    pub(super) fn new(db: Arc<Database>) -> Self {
        Self {
            db,
            batch_seqs: HashMap::new(),
            next: HashMap::new(),
            last_ts: HashMap::new(),
            buf: Vec::with_capacity(1024),
        }
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            let mut rows = group_rows(&group[0]);
            while rows < MAX_GROUP_ROWS {
                match rx.try_recv() {
                    Ok(cmd) => {
                        rows += group_rows(&cmd);
                        group.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            let stop = group.iter().any(|c| matches!(c, Command::Shutdown { .. }));
            self.commit_group(group);
            if stop {
                break;
            }
        }
        tracing::debug!("store writer stopped");
    }

    fn commit_group(&mut self, group: Vec<Command>) {
        self.batch_seqs.clear();
        match self.write_group(&group) {
            Ok(results) => {
                for (i, (cmd, res)) in group.into_iter().zip(results).enumerate() {
                    match cmd {
                        Command::AppendBatch {
                            on_commit, reply, ..
                        } => {
                            if let Some(seqs) = self.batch_seqs.remove(&i) {
                                for (f, first) in on_commit.into_iter().zip(seqs) {
                                    f(first);
                                }
                            }
                            let _ = reply.send(Ok(res > 0));
                        }
                        Command::Append {
                            on_commit, reply, ..
                        } => {
                            on_commit(res);
                            let _ = reply.send(Ok(res));
                        }
                        Command::PutArtifact { reply, .. } => {
                            let _ = reply.send(Ok(()));
                        }
                        Command::DeleteArtifact { reply, .. } => {
                            let _ = reply.send(Ok(res > 0));
                        }
                        Command::Purge { reply, .. } => {
                            let _ = reply.send(Ok(res));
                        }
                        Command::Shutdown { reply } => {
                            let _ = reply.send(());
                        }
                        Command::AlertDedup { reply, .. }
                        | Command::SetSetting { reply, .. }
                        | Command::Transaction { reply, .. }
                        | Command::ApplyBus { reply, .. } => {
                            let _ = reply.send(Ok(res > 0));
                        }
                    }
                }
            }
            Err(e) => {
                // The caches may hold what the failed transaction wrote; the tables do not.
                self.next.clear();
                self.last_ts.clear();
                tracing::error!(error = %e, "store commit failed");
                for cmd in group {
                    let err = || e.clone();
                    match cmd {
                        Command::Append { reply, .. } | Command::Purge { reply, .. } => {
                            let _ = reply.send(Err(err()));
                        }
                        Command::PutArtifact { reply, .. } => {
                            let _ = reply.send(Err(err()));
                        }
                        Command::DeleteArtifact { reply, .. } => {
                            let _ = reply.send(Err(err()));
                        }
                        Command::Shutdown { reply } => {
                            let _ = reply.send(());
                        }
                        Command::AlertDedup { reply, .. }
                        | Command::SetSetting { reply, .. }
                        | Command::Transaction { reply, .. }
                        | Command::ApplyBus { reply, .. }
                        | Command::AppendBatch { reply, .. } => {
                            let _ = reply.send(Err(err()));
                        }
                    }
                }
            }
        }
    }

    /// The next seq of a stream: cached, else one past its stored head.
    fn next_seq(
        &self,
        heads: &redb::Table<&str, u64>,
        stream: &str,
    ) -> Result<u64, redb::StorageError> {
        match self.next.get(stream) {
            Some(n) => Ok(*n),
            None => Ok(heads.get(stream)?.map(|v| v.value() + 1).unwrap_or(1)),
        }
    }

    /// The last row time of a stream: cached, else read from its last block.
    fn last_ts(
        &self,
        blocks: &redb::Table<(&str, u64), &[u8]>,
        stream: &str,
    ) -> Result<i64, redb::StorageError> {
        if let Some(t) = self.last_ts.get(stream) {
            return Ok(*t);
        }
        let last = blocks.range((stream, 0)..=(stream, u64::MAX))?.next_back();
        Ok(match last {
            Some(item) => block::Block::parse(item?.1.value()).map_or(i64::MIN, |b| b.last_ts),
            None => i64::MIN,
        })
    }

    /// Appends rows to a stream after its last seq, as blocks, their times raised so they
    /// never go back; returns the first new seq.
    fn append_rows(
        &mut self,
        blocks: &mut redb::Table<(&str, u64), &[u8]>,
        heads: &mut redb::Table<&str, u64>,
        stream: &str,
        rows: &[StoredRow],
    ) -> Result<u64, redb::StorageError> {
        let next = self.next_seq(heads, stream)?;
        if rows.is_empty() {
            return Ok(next);
        }
        let mut last = self.last_ts(blocks, stream)?;
        let mut seq = next;
        for run in block::runs(rows) {
            last = block::encode(run.iter(), last, &mut self.buf);
            blocks.insert((stream, seq), self.buf.as_slice())?;
            seq += run.len() as u64;
        }
        heads.insert(stream, seq - 1)?;
        self.next.insert(stream.to_string(), seq);
        self.last_ts.insert(stream.to_string(), last);
        Ok(next)
    }

    /// Deletes a stream's rows older than `before_us`: whole blocks, and the older rows of
    /// the block that holds both (it is written again under its first kept seq).
    fn purge(
        &mut self,
        blocks: &mut redb::Table<(&str, u64), &[u8]>,
        stream: &str,
        before_us: i64,
    ) -> Result<u64> {
        let (mut whole, mut partial, mut purged) = (Vec::new(), None, 0u64);
        for item in blocks.range((stream, 0)..=(stream, u64::MAX))? {
            let (k, v) = item?;
            let first = k.value().1;
            let parsed = block::Block::parse(v.value()).ok_or_else(|| Error::Corrupt {
                stream: stream.into(),
                seq: first,
            })?;
            if parsed.last_ts < before_us {
                whole.push(first);
                purged += parsed.count;
                continue;
            }
            let rows = block::decode(stream, first, v.value())?;
            let old = rows.iter().take_while(|r| r.ts_us < before_us).count();
            if old > 0 {
                purged += old as u64;
                partial = Some((first, old, rows));
            }
            break;
        }
        for first in whole {
            blocks.remove((stream, first))?;
        }
        if let Some((first, old, rows)) = partial {
            blocks.remove((stream, first))?;
            block::encode(rows[old..].iter(), i64::MIN, &mut self.buf);
            blocks.insert((stream, first + old as u64), self.buf.as_slice())?;
        }
        Ok(purged)
    }

    /// Writes a group in one transaction; per-command results (first seq, or a count).
    fn write_group(&mut self, group: &[Command]) -> Result<Vec<u64>> {
        let w = self.db.begin_write()?;
        let mut results = Vec::with_capacity(group.len());
        {
            let mut events = w.open_table(EVENT_BLOCKS)?;
            let mut artifacts = w.open_table(ARTIFACTS)?;
            let mut heads = w.open_table(HEADS)?;
            let mut alerts = w.open_table(ALERTS)?;
            let mut settings = w.open_table(SETTINGS)?;
            let mut batches = w.open_table(CLIENT_BATCHES)?;
            let mut incarnations = w.open_table(CLIENT_INCARNATIONS)?;
            let mut applied = w.open_table(BUS_APPLIED)?;
            let mut parts = w.open_table(CLIENT_PARTS)?;
            for (index, cmd) in group.iter().enumerate() {
                match cmd {
                    Command::AppendBatch {
                        appends,
                        dedup: (key, batch_id),
                        ..
                    } => {
                        let last = batches.get(key.as_str())?.map(|v| v.value());
                        if last.is_some_and(|last| *batch_id <= last) {
                            results.push(0);
                            continue;
                        }
                        if last.is_none() {
                            let forget = admit_incarnation(&mut incarnations, key)?;
                            for old in forget {
                                batches.remove(old.as_str())?;
                            }
                        }
                        let mut seqs = Vec::with_capacity(appends.len());
                        for (stream, rows) in appends {
                            seqs.push(self.append_rows(&mut events, &mut heads, stream, rows)?);
                        }
                        batches.insert(key.as_str(), *batch_id)?;
                        self.batch_seqs.insert(index, seqs);
                        results.push(1);
                    }
                    Command::Append { stream, rows, .. } => {
                        let next = self.append_rows(&mut events, &mut heads, stream, rows)?;
                        results.push(next);
                    }
                    Command::PutArtifact { name, yaml, .. } => {
                        artifacts.insert(name.as_str(), yaml.as_str())?;
                        results.push(1);
                    }
                    Command::DeleteArtifact { name, .. } => {
                        let gone = artifacts.remove(name.as_str())?.is_some();
                        results.push(gone as u64);
                    }
                    Command::Purge {
                        stream, before_us, ..
                    } => {
                        let purged = self.purge(&mut events, stream, *before_us)?;
                        results.push(purged);
                    }
                    Command::Shutdown { .. } => results.push(0),
                    Command::ApplyBus {
                        seq,
                        appends,
                        client,
                        ..
                    } => {
                        let done = applied.get("persister")?.map(|v| v.value()).unwrap_or(0);
                        if *seq <= done {
                            results.push(0);
                            continue;
                        }
                        applied.insert("persister", *seq)?;
                        if let Some((key, batch, part)) = client {
                            let last = parts.get(key.as_str())?.map(|v| v.value());
                            if last.is_some_and(|l| (*batch, *part) <= l) {
                                results.push(0);
                                continue;
                            }
                            if last.is_none() {
                                let forget = admit_incarnation(&mut incarnations, key)?;
                                for old in forget {
                                    parts.remove(old.as_str())?;
                                }
                            }
                            parts.insert(key.as_str(), (*batch, *part))?;
                        }
                        // Times are clamped so they never go back within a stream.
                        for (stream, rows) in appends {
                            self.append_rows(&mut events, &mut heads, stream, rows)?;
                        }
                        results.push(1);
                    }
                    Command::SetSetting {
                        namespace,
                        key,
                        value,
                        ..
                    } => {
                        let k = (namespace.as_str(), key.as_str());
                        let changed = match value {
                            Some(v) => settings
                                .insert(k, v.as_str())?
                                .is_none_or(|old| old.value() != v),
                            None => settings.remove(k)?.is_some(),
                        };
                        results.push(u64::from(changed));
                    }
                    Command::Transaction {
                        appends,
                        settings: writes,
                        ..
                    } => {
                        for (stream, rows) in appends {
                            if !rows.is_empty() {
                                self.append_rows(&mut events, &mut heads, stream, rows)?;
                            }
                        }
                        for (namespace, key, value) in writes {
                            let k = (namespace.as_str(), key.as_str());
                            match value {
                                Some(v) => {
                                    settings.insert(k, v.as_str())?;
                                }
                                None => {
                                    settings.remove(k)?;
                                }
                            }
                        }
                        results.push(1);
                    }
                    Command::AlertDedup {
                        org,
                        name,
                        now_us,
                        window_us,
                        ..
                    } => {
                        let key = (org.as_str(), name.as_str());
                        let last = alerts.get(key)?.map(|v| v.value());
                        let allowed = last.is_none_or(|t| now_us.saturating_sub(t) >= *window_us);
                        if allowed {
                            alerts.insert(key, *now_us)?;
                        }
                        results.push(u64::from(allowed));
                    }
                }
            }
        }
        w.commit()?;
        Ok(results)
    }
}

fn group_rows(cmd: &Command) -> usize {
    match cmd {
        Command::Append { rows, .. } => rows.len(),
        Command::AppendBatch { appends, .. } => appends.iter().map(|(_, r)| r.len()).sum(),
        Command::ApplyBus { appends, .. } | Command::Transaction { appends, .. } => {
            appends.iter().map(|(_, r)| r.len()).sum()
        }
        _ => 1,
    }
}

/// Records a client spool incarnation seen for the first time and returns the keys of the
/// same client's oldest incarnations beyond [`MAX_INCARNATIONS`], now forgotten.
fn admit_incarnation(incarnations: &mut redb::Table<&str, i64>, key: &str) -> Result<Vec<String>> {
    let now = chrono::Utc::now().timestamp_micros();
    incarnations.insert(key, now)?;
    let Some(cut) = key.rfind('\u{1f}') else {
        return Ok(Vec::new());
    };
    let prefix = &key[..=cut];
    let mut others: Vec<(i64, String)> = Vec::new();
    for item in incarnations.range(prefix..)? {
        let (k, v) = item?;
        if !k.value().starts_with(prefix) {
            break;
        }
        if k.value() != key {
            others.push((v.value(), k.value().to_string()));
        }
    }
    // The new one is kept: it is the one the client is using now.
    let excess = (others.len() + 1).saturating_sub(MAX_INCARNATIONS);
    others.sort();
    let forget: Vec<String> = others.into_iter().take(excess).map(|(_, k)| k).collect();
    for k in &forget {
        incarnations.remove(k.as_str())?;
    }
    Ok(forget)
}
