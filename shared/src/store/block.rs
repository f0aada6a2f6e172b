//! Blocks of event rows: each append to a stream is stored as blocks of consecutive rows,
//! one table entry per block keyed by `(stream, first seq)`, instead of one entry per row.
//! One B-tree insert per row was most of the master's CPU when it stored a cluster's rows.
//!
//! A block is `[u32 count][i64 last ts]` then, per row, `[u32 length][row]` with the row in
//! [`StoredRow`]'s encoding. The header lets time-range reads skip a block without reading
//! its rows. Here too: a stream's first and last seq, and the one-time move of a store made
//! before blocks.

use redb::ReadableTable;

use super::{Error, Result, StoredRow, EVENTS, EVENT_BLOCKS};

/// Rows in one block at most.
pub const BLOCK_ROWS: usize = 1024;
/// Bytes of rows in one block at most (a single larger row gets a block of its own).
pub const BLOCK_BYTES: usize = 1 << 20;

const HEADER: usize = 12;

/// Appends a block of `rows` to `out`; row timestamps are raised to at least `floor` and
/// never go backwards. Returns the last timestamp written.
pub fn encode<'a>(rows: impl Iterator<Item = &'a StoredRow>, floor: i64, out: &mut Vec<u8>) -> i64 {
    out.clear();
    out.extend_from_slice(&[0; HEADER]);
    let (mut count, mut last) = (0u32, floor);
    for row in rows {
        last = last.max(row.ts_us);
        out.extend_from_slice(&(row.encoded_len() as u32).to_le_bytes());
        row.encode_at(last, out);
        count += 1;
    }
    out[0..4].copy_from_slice(&count.to_le_bytes());
    out[4..12].copy_from_slice(&last.to_le_bytes());
    last
}

/// Splits `rows` into runs that each make one block.
pub fn runs(rows: &[StoredRow]) -> Vec<&[StoredRow]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let size = 4 + row.encoded_len();
        if i > start && (i - start >= BLOCK_ROWS || bytes + size > BLOCK_BYTES) {
            out.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

/// A block read back.
pub struct Block<'a> {
    pub count: u64,
    pub last_ts: i64,
    body: &'a [u8],
}

impl<'a> Block<'a> {
    pub fn parse(b: &'a [u8]) -> Option<Block<'a>> {
        Some(Block {
            count: u64::from(u32::from_le_bytes(b.get(0..4)?.try_into().ok()?)),
            last_ts: i64::from_le_bytes(b.get(4..12)?.try_into().ok()?),
            body: b.get(HEADER..)?,
        })
    }

    /// The encoded rows, in order (None for a damaged one).
    pub fn rows(&self) -> impl Iterator<Item = Option<&'a [u8]>> {
        let mut rest = self.body;
        (0..self.count).map(move |_| {
            let len = u32::from_le_bytes(rest.get(0..4)?.try_into().ok()?) as usize;
            let row = rest.get(4..4 + len)?;
            rest = &rest[4 + len..];
            Some(row)
        })
    }
}

/// Decodes a block read from `stream` at key `first`, naming the seq where it is damaged.
pub fn decode(stream: &str, first: u64, b: &[u8]) -> Result<Vec<StoredRow>> {
    let corrupt = |seq| Error::Corrupt {
        stream: stream.into(),
        seq,
    };
    let block = Block::parse(b).ok_or_else(|| corrupt(first))?;
    block
        .rows()
        .enumerate()
        .map(|(i, row)| {
            let seq = first + i as u64;
            row.and_then(StoredRow::decode).ok_or_else(|| corrupt(seq))
        })
        .collect()
}

/// The block holding `seq` of `stream`, if any: its first seq, row count and last time.
pub fn holding<T: ReadableTable<(&'static str, u64), &'static [u8]>>(
    t: &T,
    stream: &str,
    seq: u64,
) -> Result<Option<(u64, u64, i64)>> {
    let Some(item) = t.range((stream, 0)..=(stream, seq))?.next_back() else {
        return Ok(None);
    };
    let (k, v) = item?;
    let first = k.value().1;
    let block = Block::parse(v.value()).ok_or_else(|| Error::Corrupt {
        stream: stream.into(),
        seq: first,
    })?;
    Ok((seq < first + block.count).then_some((first, block.count, block.last_ts)))
}

/// The first and last seq a stream holds.
pub fn bounds<T: ReadableTable<(&'static str, u64), &'static [u8]>>(
    t: &T,
    stream: &str,
) -> Result<Option<(u64, u64)>> {
    let last_of = |first: u64, v: &[u8]| -> Result<u64> {
        let block = Block::parse(v).ok_or_else(|| Error::Corrupt {
            stream: stream.into(),
            seq: first,
        })?;
        Ok(first + block.count.max(1) - 1)
    };
    let mut range = t.range((stream, 0)..=(stream, u64::MAX))?;
    let (first, first_last) = match range.next() {
        Some(item) => {
            let (k, v) = item?;
            let first = k.value().1;
            (first, last_of(first, v.value())?)
        }
        None => return Ok(None),
    };
    let last = match range.next_back() {
        Some(item) => {
            let (k, v) = item?;
            last_of(k.value().1, v.value())?
        }
        None => first_last,
    };
    Ok(Some((first, last)))
}

/// Moves the rows of a store made before blocks (one entry per row) into blocks, once, in
/// the open's transaction; returns how many rows moved.
pub fn move_rows_into_blocks(w: &redb::WriteTransaction) -> Result<u64> {
    use redb::TableHandle;
    if !w.list_tables()?.any(|t| t.name() == EVENTS.name()) {
        return Ok(0);
    }
    let mut moved = 0u64;
    {
        let old = w.open_table(EVENTS)?;
        let mut blocks = w.open_table(EVENT_BLOCKS)?;
        let mut buf = Vec::new();
        let mut flush = |stream: &str, first: u64, rows: &mut Vec<StoredRow>| -> Result<()> {
            let mut at = first;
            for run in runs(rows) {
                encode(run.iter(), i64::MIN, &mut buf);
                blocks.insert((stream, at), buf.as_slice())?;
                at += run.len() as u64;
            }
            rows.clear();
            Ok(())
        };
        let (mut stream, mut first, mut rows) = (String::new(), 0u64, Vec::new());
        for item in old.iter()? {
            let (k, v) = item?;
            let (s, seq) = k.value();
            let row = StoredRow::decode(v.value()).ok_or_else(|| Error::Corrupt {
                stream: s.into(),
                seq,
            })?;
            if s != stream || seq != first + rows.len() as u64 {
                flush(&stream, first, &mut rows)?;
                (stream, first) = (s.to_string(), seq);
            }
            rows.push(row);
            moved += 1;
        }
        flush(&stream, first, &mut rows)?;
    }
    w.delete_table(EVENTS)?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ts_us: i64, n: usize) -> StoredRow {
        StoredRow {
            ts_us,
            client: if n.is_multiple_of(2) {
                "C.a".into()
            } else {
                String::new()
            },
            json: format!("{{\"n\":{n}}}"),
        }
    }

    #[test]
    fn blocks_round_trip_and_keep_time_from_going_back() {
        let rows = [row(10, 0), row(5, 1), row(30, 2)];
        let mut out = Vec::new();
        assert_eq!(encode(rows.iter(), 20, &mut out), 30);
        let back = decode("s", 1, &out).unwrap();
        let ts: Vec<i64> = back.iter().map(|r| r.ts_us).collect();
        assert_eq!(ts, vec![20, 20, 30], "raised to the floor, never back");
        assert_eq!(back[2].json, rows[2].json);
        assert_eq!(back[0].client, "C.a");
        let e = decode("s", 7, &out[..out.len() - 1]).unwrap_err();
        assert!(e.to_string().contains("s#9"), "{e}");
    }

    #[test]
    fn runs_split_by_rows_and_bytes() {
        let many: Vec<StoredRow> = (0..2500).map(|n| row(1, n)).collect();
        let lens: Vec<usize> = runs(&many).iter().map(|r| r.len()).collect();
        assert_eq!(lens, vec![1024, 1024, 452]);
        let big = StoredRow {
            ts_us: 1,
            client: String::new(),
            json: "x".repeat(BLOCK_BYTES),
        };
        let mixed = vec![row(1, 0), big.clone(), big, row(1, 1)];
        let lens: Vec<usize> = runs(&mixed).iter().map(|r| r.len()).collect();
        assert_eq!(lens, vec![1, 1, 1, 1]);
        assert!(runs(&[]).is_empty());
    }
}
