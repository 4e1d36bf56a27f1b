//! Group commit for the embedded store, with no writer thread.
//!
//! Jobs run on the thread that submits them, into one open group (and one
//! SQLite transaction, begun by the first job that writes rows: plain event
//! appends write records and index entries only, see `pending_index`),
//! under one lock: whoever holds the [`Writer`] runs every job queued so far
//! (flat combining), so a job never waits for another thread to wake up. A
//! single `store-sync` thread makes committed groups durable. While it syncs
//! one group, the next one fills; when the sync is done, the sync thread
//! commits that group itself and syncs it. So
//! under load a request costs no thread hand-off on its way in, and one
//! wake-up on its way out, shared with its whole group.
//!
//! An earlier design ran every job on a writer thread: a request crossed
//! threads four times (worker → writer → sync → writer, sync → worker), and
//! the context switches were a quarter of the CPU of `/v1/track`.

use crate::pending_index::PendingIndex;
use crate::segments::Segments;
use rusqlite::Connection;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use tokio::sync::watch;

/// Tells a job's waiter how its commit ended (`Err` with the reason).
pub(crate) type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A job runs on the write connection (inside the open transaction when it
/// asks for one) and returns how to answer its waiter once what it wrote is
/// durable. Dropping a job unrun tells its waiter that the store is closed.
pub(crate) struct Job {
    /// Whether it writes rows: a group of plain event appends (records and
    /// index entries only, see [`PendingIndex`]) opens no transaction.
    pub transaction: bool,
    pub run: Box<dyn FnOnce(&Connection) -> Completion + Send>,
}

/// Most jobs folded into one transaction.
const MAX_JOBS_PER_COMMIT: usize = 4096;

/// A committed group on its way to the disk: its waiters and the head of
/// the log once it is durable.
pub(crate) struct Committed {
    completions: Vec<Completion>,
    head: u64,
    /// The segment its events were written to, if any.
    segment: Option<Arc<File>>,
    /// Whether it changed rows that must be durable by themselves (every
    /// job but a plain event append): then the WAL is synced too.
    wal: bool,
}

/// The write connection and the transaction being filled.
pub(crate) struct Writer {
    /// `None` once the store is closed: jobs are then dropped unrun.
    conn: Option<Connection>,
    /// Waiters of the jobs run since the last commit (a transaction is open
    /// only if one of them asked for it).
    open: Vec<Completion>,
    /// A committed group is with the sync thread, which commits the open
    /// group itself when it is done: meanwhile that group grows.
    syncing: bool,
    to_sync: Option<mpsc::Sender<Committed>>,
    /// The queue's buffer, swapped with it so neither reallocates.
    spare: Vec<Job>,
    /// Event records, written before each commit.
    segments: Arc<Mutex<Segments>>,
    /// Index rows of the events appended, told how each commit ends.
    pending_index: Arc<Mutex<PendingIndex>>,
}

/// The write side of the store: the writer, the jobs queued for it, and
/// what the sync thread needs.
pub(crate) struct GroupCommit {
    writer: Mutex<Writer>,
    queue: Mutex<Vec<Job>>,
    /// Highest seq written by jobs of the open transaction; published to
    /// subscribers only once durable.
    pub(crate) pending_head: AtomicU64,
    /// Set by the checkpointer when the WAL should start over (see
    /// `WAL_RESET_PAGES` in `embedded`).
    pub(crate) finish_checkpoint: AtomicBool,
    /// Set by a job of the open transaction whose rows must be durable
    /// when it is answered (see [`Committed::wal`]).
    pub(crate) wal_needed: AtomicBool,
}

/// Locks recovering from a panic in a job: the transaction's state is
/// SQLite's, which a panic in our code does not corrupt.
fn relock<'a, T>(
    lock: Result<MutexGuard<'a, T>, PoisonError<MutexGuard<'a, T>>>,
) -> MutexGuard<'a, T> {
    lock.unwrap_or_else(PoisonError::into_inner)
}

impl Writer {
    /// Runs `job`, beginning a transaction first if it needs one and none
    /// is open.
    fn run(&mut self, job: Job) {
        let Some(conn) = &self.conn else {
            return;
        };
        if job.transaction {
            if let Err(e) = begin_if_needed(conn) {
                tracing::error!(error = %e, "store: cannot begin a transaction");
                return;
            }
        }
        self.open.push((job.run)(conn));
    }

    /// Inserts every index row waiting, into the open transaction (begun if
    /// need be): what a clean close leaves needs no repair at the next open.
    fn index_all(&mut self) {
        let Some(conn) = &self.conn else {
            return;
        };
        let mut pending = relock(self.pending_index.lock());
        if pending.unstaged() == 0 {
            return;
        }
        let indexed = begin_if_needed(conn).and_then(|()| pending.stage_all(conn));
        if let Err(e) = indexed {
            // The next open indexes them from the segments.
            tracing::warn!(error = %e, "store: cannot index the newest events");
        }
    }

    /// Inserts up to `max` waiting index rows; returns how many. Into the
    /// open transaction when a job began one (it commits with their group);
    /// otherwise, the usual case under event load, in a transaction of its
    /// own committed at once, so that the next group's commit, on the way
    /// of every request, has no rows to write. The rows need no sync of
    /// their own: a crash indexes the segments again.
    fn index_chunk(&mut self, max: usize) -> Result<usize, String> {
        let Some(conn) = &self.conn else {
            return Ok(0);
        };
        let mut segments = relock(self.segments.lock());
        let mut pending = relock(self.pending_index.lock());
        if !conn.is_autocommit() {
            return pending.stage(conn, max).map_err(|e| e.to_string());
        }
        // A row is committed only after its record is written.
        segments.write_pending().map_err(|e| e.to_string())?;
        drop(segments);
        let staged = begin_if_needed(conn).and_then(|()| pending.stage(conn, max));
        let committed = staged.and_then(|count| commit_transaction(conn).map(|()| count));
        match committed {
            Ok(count) => {
                pending.committed();
                Ok(count)
            }
            Err(e) => {
                pending.rolled_back();
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                Err(e.to_string())
            }
        }
    }

    /// Writes the records of the jobs run since the last commit, commits the
    /// open transaction if there is one, and hands the group to the sync
    /// thread.
    fn commit(&mut self, pending_head: &AtomicU64, wal_needed: &AtomicBool) {
        let Some(conn) = &self.conn else {
            return;
        };
        let transaction = !conn.is_autocommit();
        if self.open.is_empty() && !transaction {
            return;
        }
        let completions = std::mem::take(&mut self.open);
        let wal = wal_needed.swap(false, Ordering::AcqRel);
        let mut segments = relock(self.segments.lock());
        // The records go first: a row committed is never without its record
        // once both are durable. Records written for a transaction that then
        // fails to commit stay in the segment, and their index entries wait
        // for the next one (their appends were answered with an error):
        // stored at least once, as when a client retries.
        let flushed = segments.flush().map_err(|e| e.to_string());
        let committed = flushed.and_then(|segment| {
            if !transaction {
                return Ok(segment);
            }
            commit_transaction(conn)
                .map(|()| segment)
                .map_err(|e| e.to_string())
        });
        let mut pending = relock(self.pending_index.lock());
        let segment = match committed {
            Ok(segment) => {
                pending.committed();
                segment
            }
            Err(e) => {
                segments.discard_pending();
                pending.rolled_back();
                pending.discard_from(segments.end());
                drop((segments, pending));
                tracing::error!(error = %e, "store: commit failed");
                if transaction {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                for done in completions {
                    done(Err(e.clone()));
                }
                return;
            }
        };
        drop((segments, pending));
        let group = Committed {
            completions,
            head: pending_head.load(Ordering::Acquire),
            segment,
            wal,
        };
        let sent = match &self.to_sync {
            Some(to_sync) => to_sync.send(group).map_err(|mpsc::SendError(g)| g),
            None => Err(group),
        };
        match sent {
            Ok(()) => self.syncing = true,
            Err(group) => {
                for done in group.completions {
                    done(Err("the store is closing".into()));
                }
            }
        }
    }

    /// Copies what the background checkpointer has not, with no transaction
    /// open, so that the next one starts the WAL over. With syncs on, as
    /// every checkpoint must: the WAL is synced before its frames are
    /// copied, the database after.
    fn finish_checkpoint(&self) {
        let Some(conn) = &self.conn else {
            return;
        };
        let checkpoint = conn
            .pragma_update(None, "synchronous", "FULL")
            .and_then(|()| conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())))
            .and_then(|()| conn.pragma_update(None, "synchronous", "OFF"));
        if let Err(e) = checkpoint {
            tracing::warn!(error = %e, "store: WAL checkpoint failed");
        }
    }
}

/// `COMMIT`, cached: it runs with every group that wrote rows.
fn commit_transaction(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
}

/// `BEGIN IMMEDIATE` unless a transaction is open (the writer commits it
/// with its group). Cached: it runs thousands of times a second.
pub(crate) fn begin_if_needed(conn: &Connection) -> rusqlite::Result<()> {
    if !conn.is_autocommit() {
        return Ok(());
    }
    conn.prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
}

impl GroupCommit {
    /// Takes the write connection (committing with `synchronous=OFF`) and
    /// returns the receiving end for [`sync_loop`].
    pub(crate) fn new(
        conn: Connection,
        segments: Arc<Mutex<Segments>>,
        pending_index: Arc<Mutex<PendingIndex>>,
        head: u64,
    ) -> (Self, mpsc::Receiver<Committed>) {
        let (to_sync, groups) = mpsc::channel();
        let writer = Writer {
            conn: Some(conn),
            open: Vec::new(),
            syncing: false,
            to_sync: Some(to_sync),
            spare: Vec::new(),
            segments,
            pending_index,
        };
        let commit = GroupCommit {
            writer: Mutex::new(writer),
            queue: Mutex::new(Vec::new()),
            pending_head: AtomicU64::new(head),
            finish_checkpoint: AtomicBool::new(false),
            wal_needed: AtomicBool::new(false),
        };
        (commit, groups)
    }

    /// Queues a small job and runs the queue unless another thread is
    /// running it (that thread then runs this job too).
    pub(crate) fn submit(&self, job: Job) {
        relock(self.queue.lock()).push(job);
        self.run_queue();
    }

    /// Runs a job that may take long (it touches many rows) on the calling
    /// thread, which may block: call it off the async threads. Small jobs
    /// queued meanwhile wait for it, as they would in one transaction.
    pub(crate) fn run_blocking(&self, job: Job) {
        self.with_writer(|w| {
            w.run(job);
            if !w.syncing {
                w.commit(&self.pending_head, &self.wal_needed);
            }
        });
    }

    /// Inserts up to `max` waiting index rows on the calling thread, which
    /// may block (see [`Writer::index_chunk`]): never on an async worker,
    /// which would hold its other requests meanwhile.
    pub(crate) fn index_waiting(&self, max: usize) -> Result<usize, String> {
        self.with_writer(|w| w.index_chunk(max))
    }

    /// Runs the queued jobs while no one else does, committing when the
    /// sync thread is free. Returns at once if another thread holds the
    /// writer: it runs the queue again after releasing it.
    fn run_queue(&self) {
        loop {
            let mut writer = match self.writer.try_lock() {
                Ok(w) => w,
                Err(TryLockError::WouldBlock) => return,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
            };
            self.run_queued(&mut writer);
            if !writer.syncing || writer.open.len() >= MAX_JOBS_PER_COMMIT {
                writer.commit(&self.pending_head, &self.wal_needed);
            }
            drop(writer);
            // A job queued while the writer was held, after its holder took
            // the queue, is run here: its submitter found the writer busy.
            if relock(self.queue.lock()).is_empty() {
                return;
            }
        }
    }

    fn run_queued(&self, writer: &mut Writer) {
        let mut jobs = std::mem::take(&mut writer.spare);
        std::mem::swap(&mut *relock(self.queue.lock()), &mut jobs);
        for job in jobs.drain(..) {
            writer.run(job);
        }
        writer.spare = jobs;
    }

    /// Holds the writer (waiting for it), runs the queue, then `f`; runs
    /// what was queued meanwhile once the writer is let go.
    fn with_writer<R>(&self, f: impl FnOnce(&mut Writer) -> R) -> R {
        let mut writer = relock(self.writer.lock());
        self.run_queued(&mut writer);
        let result = f(&mut writer);
        drop(writer);
        self.run_queue();
        result
    }

    /// Commits what is open, stops taking jobs and closes the connection
    /// (with syncs on: closing may checkpoint). The sync thread ends once
    /// it has synced and answered every group.
    pub(crate) fn close(&self) {
        let conn = self.with_writer(|w| {
            w.index_all();
            w.commit(&self.pending_head, &self.wal_needed);
            w.to_sync = None;
            w.conn.take()
        });
        if let Some(conn) = conn {
            let _ = conn.pragma_update(None, "synchronous", "FULL");
        }
    }
}

/// The sync thread: makes committed groups durable, publishes the new head
/// to the delivery loops, commits the group that filled meanwhile, then
/// answers the waiters. One `fdatasync` of the segment covers the events of
/// every group committed before it began, one of the WAL (only when a group
/// needs it) their other rows.
pub(crate) fn sync_loop(
    wal: std::fs::File,
    fsync: bool,
    groups: mpsc::Receiver<Committed>,
    head_tx: &watch::Sender<u64>,
    commit: &GroupCommit,
) {
    while let Ok(first) = groups.recv() {
        let mut ready = vec![first];
        while let Ok(more) = groups.try_recv() {
            ready.push(more);
        }
        let synced = if fsync {
            sync_groups(&wal, &ready)
        } else {
            Ok(())
        };
        match &synced {
            Ok(()) => {
                let head = ready.iter().map(|g| g.head).max().unwrap_or(0);
                head_tx.send_if_modified(|h| {
                    if *h < head {
                        *h = head;
                        true
                    } else {
                        false
                    }
                });
            }
            Err(e) => tracing::error!(error = %e, "store: sync failed"),
        }
        // The next group is committed before the waiters are answered, so
        // that it reaches the queue of this thread first.
        commit.with_writer(|w| {
            w.syncing = false;
            w.commit(&commit.pending_head, &commit.wal_needed);
            let idle = w.open.is_empty() && w.conn.as_ref().is_some_and(Connection::is_autocommit);
            if idle && commit.finish_checkpoint.swap(false, Ordering::AcqRel) {
                w.finish_checkpoint();
            }
        });
        for group in ready {
            for done in group.completions {
                done(synced.clone());
            }
        }
    }
}

/// Syncs what `groups` wrote: each segment they used once, then the WAL if
/// any of them needs it.
fn sync_groups(wal: &File, groups: &[Committed]) -> Result<(), String> {
    let mut synced: Vec<&Arc<File>> = Vec::new();
    for segment in groups.iter().filter_map(|g| g.segment.as_ref()) {
        if !synced.iter().any(|s| Arc::ptr_eq(s, segment)) {
            segment
                .sync_data()
                .map_err(|e| format!("cannot sync the event segment: {e}"))?;
            synced.push(segment);
        }
    }
    if groups.iter().any(|g| g.wal) {
        wal.sync_data()
            .map_err(|e| format!("cannot sync the WAL: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pending_index::IndexEntry;
    use crate::segments::NewRecord;

    /// A group handed to the sync thread and not synced yet keeps the
    /// writer `syncing`, so the jobs after it stay open with their records
    /// in memory. When the indexer commits their rows in a transaction of
    /// its own, it writes those records first: a row another connection
    /// can see never points past the end of its segment.
    #[test]
    fn the_indexer_writes_the_records_of_the_rows_it_commits() {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-group-commit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let conn = Connection::open(dir.join("db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE events(seq INTEGER PRIMARY KEY, source_id, message_id, user_id,
             received_ms, body, seg, off, len)",
        )
        .unwrap();
        let (segments, _) = Segments::open(&dir.join("events"), false, 1, 0, 1 << 20).unwrap();
        let segments = Arc::new(Mutex::new(segments));
        let pending = Arc::new(Mutex::new(PendingIndex::default()));
        let (commit, groups) = GroupCommit::new(conn, segments.clone(), pending.clone(), 0);
        let append = |seq: u64| {
            let (segments, pending) = (segments.clone(), pending.clone());
            Job {
                transaction: false,
                run: Box::new(move |_: &Connection| -> Completion {
                    let id = format!("m{seq}");
                    let location = relock(segments.lock())
                        .append(NewRecord {
                            seq,
                            source_id: 1,
                            received_ms: 0,
                            message_id: &id,
                            user_id: None,
                            body: b"{}",
                        })
                        .unwrap();
                    relock(pending.lock()).push(IndexEntry {
                        seq,
                        source_id: 1,
                        message_id: id,
                        user_id: None,
                        received_ms: 0,
                        location,
                    });
                    Box::new(|_| {})
                }),
            }
        };
        commit.submit(append(1));
        // Committed at once (no sync was running), then held here: the
        // writer stays `syncing`.
        let _first = groups.recv().unwrap();
        commit.submit(append(2));
        let (_, open_end) = relock(segments.lock()).end();
        assert_eq!(commit.index_waiting(100), Ok(2));
        assert_eq!(relock(pending.lock()).unstaged(), 0);
        let other = Connection::open(dir.join("db")).unwrap();
        let (rows, furthest): (i64, i64) = other
            .query_row("SELECT COUNT(*), MAX(off + len) FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((rows, furthest as u64), (2, open_end));
        let segment = std::fs::read_dir(dir.join("events"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert!(
            segment.metadata().unwrap().len() >= open_end,
            "the open group's record was not written before its row was committed"
        );
        assert!(groups.try_recv().is_err(), "the open group is still open");
        drop(commit);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
