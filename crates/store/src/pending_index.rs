//! Index rows of stored events that are not in the `events` table yet.
//!
//! An event is stored once its segment record is durable; its row in the
//! `events` table (ids, source, where the record is) only makes it quick to
//! find. Inserting that row inside the group commit of every request, a
//! handful of rows per transaction, cost `/v1/track` a sixth of its CPU
//! (each commit rewrote the same B-tree pages into the WAL). So appends
//! leave their rows here, and a background job inserts them in large
//! transactions (see `spawn_indexer` in `embedded`). Meanwhile whatever
//! needs the rows asks this list too: readers (the events of the log's tail
//! are here, not in the table), deduplication (the stored id of a seq), and
//! the jobs that delete rows, which index everything first.
//!
//! The rows in the table are always a prefix of the log (in seq order):
//! entries leave the front of this list once the transaction that inserted
//! them has committed, so a reader that takes its copy of the list before
//! it reads the table misses no event.

use crate::segments::Location;
use rusqlite::{Connection, Statement};
use std::collections::VecDeque;
use std::sync::LazyLock;

/// An event's row, waiting to be inserted.
#[derive(Debug, Clone)]
pub(crate) struct IndexEntry {
    pub seq: u64,
    pub source_id: i64,
    pub message_id: String,
    pub user_id: Option<String>,
    pub received_ms: i64,
    pub location: Location,
}

/// Parameters of one row of an insert (the body is an empty literal).
const COLUMNS: usize = 8;
/// Rows per statement of [`INSERT_EVENTS`]: a statement per row made the
/// indexer a quarter of the server's CPU under `/v1/batch` load, most of it
/// running the statement rather than writing the B-tree.
const ROWS_PER_INSERT: usize = 32;

/// The index row of an event whose record is in a segment.
pub(crate) static INSERT_EVENT: LazyLock<String> = LazyLock::new(|| insert_sql(1));
/// [`INSERT_EVENT`] for [`ROWS_PER_INSERT`] rows.
static INSERT_EVENTS: LazyLock<String> = LazyLock::new(|| insert_sql(ROWS_PER_INSERT));

/// An insert of `rows` index rows, [`COLUMNS`] parameters each.
fn insert_sql(rows: usize) -> String {
    let rows: Vec<String> = (0..rows)
        .map(|row| {
            let p = |column: usize| format!("?{}", row * COLUMNS + column);
            let body = "X''".to_string();
            let values = [p(1), p(2), p(3), p(4), p(5), body, p(6), p(7), p(8)];
            format!("({})", values.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO events(seq, source_id, message_id, user_id, received_ms, body, seg, off, len) VALUES {}",
        rows.join(", ")
    )
}

/// Binds `e` to the parameters after `first` (0-based) of an insert.
fn bind_row(insert: &mut Statement<'_>, first: usize, e: &IndexEntry) -> rusqlite::Result<()> {
    insert.raw_bind_parameter(first + 1, e.seq as i64)?;
    insert.raw_bind_parameter(first + 2, e.source_id)?;
    insert.raw_bind_parameter(first + 3, e.message_id.as_str())?;
    insert.raw_bind_parameter(first + 4, e.user_id.as_deref())?;
    insert.raw_bind_parameter(first + 5, e.received_ms)?;
    insert.raw_bind_parameter(first + 6, e.location.segment as i64)?;
    insert.raw_bind_parameter(first + 7, e.location.offset as i64)?;
    insert.raw_bind_parameter(first + 8, e.location.len as i64)
}

/// Rows not in the table yet, oldest first.
#[derive(Debug, Default)]
pub(crate) struct PendingIndex {
    entries: VecDeque<IndexEntry>,
    /// How many entries at the front the open transaction has inserted;
    /// they leave once it commits ([`Self::committed`]).
    staged: usize,
}

impl PendingIndex {
    /// Adds the row of an event just appended (seqs only grow).
    pub(crate) fn push(&mut self, entry: IndexEntry) {
        debug_assert!(self.entries.back().is_none_or(|e| e.seq < entry.seq));
        self.entries.push_back(entry);
    }

    /// Entries no transaction has inserted yet.
    pub(crate) fn unstaged(&self) -> usize {
        self.entries.len() - self.staged
    }

    /// The message id stored under `seq` for `source_id`, if its row is
    /// still waiting here.
    pub(crate) fn message_id(&self, seq: u64, source_id: i64) -> Option<&str> {
        let i = self.entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
        let entry = &self.entries[i];
        (entry.source_id == source_id).then_some(entry.message_id.as_str())
    }

    /// Inserts up to `max` rows not inserted yet into the open transaction
    /// of `conn`, in a savepoint: on an error none of them is inserted, and
    /// they are tried again later. Returns how many were inserted.
    pub(crate) fn stage(&mut self, conn: &Connection, max: usize) -> rusqlite::Result<usize> {
        let end = self.entries.len().min(self.staged.saturating_add(max));
        if end == self.staged {
            return Ok(0);
        }
        conn.prepare_cached("SAVEPOINT index_rows")?.execute([])?;
        let inserted = (|| {
            let (mut run, mut rest) = (self.staged, end - self.staged);
            if rest >= ROWS_PER_INSERT {
                let mut insert = conn.prepare_cached(&INSERT_EVENTS)?;
                while rest >= ROWS_PER_INSERT {
                    let rows = self.entries.range(run..run + ROWS_PER_INSERT);
                    for (row, e) in rows.enumerate() {
                        bind_row(&mut insert, row * COLUMNS, e)?;
                    }
                    insert.raw_execute()?;
                    run += ROWS_PER_INSERT;
                    rest -= ROWS_PER_INSERT;
                }
            }
            let mut insert = conn.prepare_cached(&INSERT_EVENT)?;
            for e in self.entries.range(run..end) {
                bind_row(&mut insert, 0, e)?;
                insert.raw_execute()?;
            }
            Ok(())
        })();
        match inserted {
            Ok(()) => {
                conn.prepare_cached("RELEASE index_rows")?.execute([])?;
                let count = end - self.staged;
                self.staged = end;
                Ok(count)
            }
            Err(e) => {
                conn.prepare_cached("ROLLBACK TO index_rows")?.execute([])?;
                conn.prepare_cached("RELEASE index_rows")?.execute([])?;
                Err(e)
            }
        }
    }

    /// Inserts every row waiting (for a job that reads or deletes rows).
    pub(crate) fn stage_all(&mut self, conn: &Connection) -> rusqlite::Result<usize> {
        self.stage(conn, usize::MAX)
    }

    /// The open transaction committed: its rows are in the table.
    pub(crate) fn committed(&mut self) {
        self.entries.drain(..self.staged);
        self.staged = 0;
    }

    /// The open transaction was rolled back: its rows wait again.
    pub(crate) fn rolled_back(&mut self) {
        self.staged = 0;
    }

    /// Drops the entries of records that were never written (at or past
    /// `end`, the segment and offset where the written records end): their
    /// appends failed.
    pub(crate) fn discard_from(&mut self, end: (u64, u64)) {
        while let Some(last) = self.entries.back() {
            if (last.location.segment, last.location.offset) < end {
                break;
            }
            self.entries.pop_back();
        }
        self.staged = self.staged.min(self.entries.len());
    }

    /// Copies of the entries with `after < seq <= upto` that `wanted`
    /// accepts, oldest first.
    pub(crate) fn range(
        &self,
        after: u64,
        upto: u64,
        mut wanted: impl FnMut(&IndexEntry) -> bool,
    ) -> Vec<IndexEntry> {
        let start = self.entries.partition_point(|e| e.seq <= after);
        self.entries
            .range(start..)
            .take_while(|e| e.seq <= upto)
            .filter(|e| wanted(e))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, offset: u64) -> IndexEntry {
        IndexEntry {
            seq,
            source_id: 1,
            message_id: format!("m{seq}"),
            user_id: None,
            received_ms: 0,
            location: Location {
                segment: 1,
                offset,
                len: 10,
            },
        }
    }

    fn table() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE events(seq INTEGER PRIMARY KEY, source_id INTEGER, message_id TEXT,
             user_id TEXT, received_ms INTEGER, body BLOB, seg INTEGER, off INTEGER, len INTEGER)",
        )
        .unwrap();
        conn
    }

    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn entries_leave_only_once_their_transaction_commits() {
        let conn = table();
        let mut pending = PendingIndex::default();
        for seq in 1..=5 {
            pending.push(entry(seq, seq * 10));
        }
        conn.execute_batch("BEGIN").unwrap();
        assert_eq!(pending.stage(&conn, 3).unwrap(), 3);
        assert_eq!((pending.entries.len(), pending.unstaged()), (5, 2));
        // Still answered from the list until the commit.
        assert_eq!(pending.message_id(2, 1), Some("m2"));
        assert_eq!(pending.message_id(2, 9), None, "another source's seq");
        conn.execute_batch("ROLLBACK").unwrap();
        pending.rolled_back();
        assert_eq!(pending.unstaged(), 5);

        conn.execute_batch("BEGIN").unwrap();
        assert_eq!(pending.stage_all(&conn).unwrap(), 5);
        conn.execute_batch("COMMIT").unwrap();
        pending.committed();
        assert_eq!((pending.entries.len(), rows(&conn)), (0, 5));
    }

    #[test]
    fn a_failed_insert_leaves_no_row_behind() {
        let conn = table();
        conn.execute("INSERT INTO events(seq) VALUES(3)", [])
            .unwrap();
        let mut pending = PendingIndex::default();
        // A statement of many rows fails whole, and so does the tail.
        let count = ROWS_PER_INSERT as u64 + 4;
        for seq in 1..=count {
            pending.push(entry(seq, seq * 10));
        }
        conn.execute_batch("BEGIN").unwrap();
        assert!(pending.stage_all(&conn).is_err(), "seq 3 is taken");
        conn.execute_batch("COMMIT").unwrap();
        assert_eq!((rows(&conn), pending.unstaged()), (1, count as usize));
        conn.execute(&format!("UPDATE events SET seq = {count}"), [])
            .unwrap();
        conn.execute_batch("BEGIN").unwrap();
        assert!(pending.stage_all(&conn).is_err(), "the last seq is taken");
        conn.execute_batch("COMMIT").unwrap();
        assert_eq!((rows(&conn), pending.unstaged()), (1, count as usize));
    }

    #[test]
    fn many_rows_per_statement_insert_each_entry_as_it_is() {
        let conn = table();
        let mut pending = PendingIndex::default();
        // Two full statements and a tail of single rows.
        let count = 2 * ROWS_PER_INSERT as u64 + 5;
        for seq in 1..=count {
            let mut e = entry(seq, seq * 10);
            e.user_id = (seq % 2 == 0).then(|| format!("u{seq}"));
            e.received_ms = seq as i64 * 7;
            pending.push(e);
        }
        conn.execute_batch("BEGIN").unwrap();
        assert_eq!(pending.stage_all(&conn).unwrap(), count as usize);
        conn.execute_batch("COMMIT").unwrap();
        pending.committed();
        let mut stmt = conn
            .prepare("SELECT seq, source_id, message_id, user_id, received_ms, body, seg, off, len FROM events ORDER BY seq")
            .unwrap();
        type Row = (
            i64,
            i64,
            String,
            Option<String>,
            i64,
            Vec<u8>,
            i64,
            i64,
            i64,
        );
        let stored: Vec<Row> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(stored.len(), count as usize);
        for (i, row) in stored.into_iter().enumerate() {
            let seq = i as i64 + 1;
            let user = (seq % 2 == 0).then(|| format!("u{seq}"));
            assert_eq!(
                row,
                (
                    seq,
                    1,
                    format!("m{seq}"),
                    user,
                    seq * 7,
                    vec![],
                    1,
                    seq * 10,
                    10
                )
            );
        }
    }

    #[test]
    fn ranges_and_discarded_tails() {
        let mut pending = PendingIndex::default();
        for seq in [3, 4, 7, 9] {
            pending.push(entry(seq, seq * 10));
        }
        let seqs = |v: Vec<IndexEntry>| v.into_iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(pending.range(3, 8, |_| true)), [4, 7]);
        assert_eq!(seqs(pending.range(0, u64::MAX, |e| e.seq != 4)), [3, 7, 9]);
        // Records from offset 70 on were never written.
        pending.discard_from((1, 70));
        assert_eq!(seqs(pending.range(0, u64::MAX, |_| true)), [3, 4]);
    }
}
