//! The embedded backend: one data directory holding SQLite in WAL mode and
//! the event segment files.
//!
//! Every write runs into one open transaction that is committed and synced
//! for a whole group of jobs at once (group commit, see [`crate::group_commit`]):
//! a request pays for one fsync shared with everything that arrived beside
//! it, instead of one of its own. Event bodies go to append-only segment
//! files (see [`crate::segments`]), which are the durable copy of the log;
//! the `events` table indexes them, filled in the background in large
//! transactions (see [`crate::pending_index`]). Each job but event appends runs inside
//! its own savepoint, so one failing job never takes its neighbours down.
//! Reads use a small pool of separate connections, which WAL lets run beside
//! the writer. Unix only (positioned file reads and writes, `mmap`).

use crate::group_commit::{begin_if_needed, sync_loop, Completion, GroupCommit, Job};
use crate::pending_index::{IndexEntry, PendingIndex, INSERT_EVENT};
use crate::recent_ids::RecentIds;
use crate::segments::{Location, NewRecord, SegmentReader, Segments, SEGMENT_BYTES};
use crate::*;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use tokio::sync::oneshot;

/// Options of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub data_dir: PathBuf,
    /// `true`: every group is synced before it is answered (its segment
    /// file, and the WAL when it changed more than events): survives power
    /// loss. `false`: nothing is synced (survives a process crash, not power
    /// loss).
    pub fsync: bool,
    /// Duplicate `messageId`s within this window are stored once.
    pub dedup_window_ms: i64,
    /// Most message ids remembered for deduplication (about 60 bytes of
    /// memory each); past it the oldest are forgotten before the window ends.
    pub dedup_max_ids: usize,
    /// Size past which event records go to a new segment file; whole
    /// segments are what retention removes.
    pub segment_bytes: u64,
    /// How long the index rows of new events wait to be inserted into the
    /// `events` table, in one transaction with those of the events beside
    /// them. Readers find them meanwhile; only the cost changes.
    pub index_interval: std::time::Duration,
    /// Index rows waiting past which appends insert them themselves: when
    /// the background insert cannot keep up, ingest slows down instead of
    /// memory growing (about 200 bytes a row).
    pub max_waiting_rows: usize,
}

impl EmbeddedOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EmbeddedOptions {
            data_dir: data_dir.into(),
            fsync: true,
            dedup_window_ms: 24 * 3600 * 1000,
            dedup_max_ids: 2_000_000,
            segment_bytes: SEGMENT_BYTES,
            index_interval: INDEX_INTERVAL,
            max_waiting_rows: 1 << 19,
        }
    }
}

/// See [`EmbeddedOptions::index_interval`]: at 40,000 events/s, 800 rows
/// per transaction.
const INDEX_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// The indexer's pause after a failed insert.
const INDEX_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Most index rows one job inserts (about a microsecond each): the writer
/// is not held for long.
const INDEX_CHUNK: usize = 2048;

/// How often the background checkpointer looks for WAL frames to copy into
/// the database when the last round found none, and when it found some.
/// Under load a longer pause copies each page once rather than each of its
/// versions, with fewer syncs: 2 ms cost the checkpointer 10% of a core on
/// `/v1/track`, 100 ms about 3%.
const CHECKPOINT_IDLE: std::time::Duration = std::time::Duration::from_millis(200);
const CHECKPOINT_BUSY: std::time::Duration = std::time::Duration::from_millis(100);

/// WAL pages (16 MiB) past which the background checkpointer asks the writer
/// to copy the last few frames between two transactions. Under steady load
/// the background checkpointer never catches up with the end of the WAL by
/// itself, and SQLite starts the WAL over from its beginning only once every
/// frame is copied: a WAL that only grows makes every frame write allocate
/// (and zero) new file blocks, which cost the writer a quarter of its time.
const WAL_RESET_PAGES: i64 = 4096;

/// The writer's page cache, in KiB (SQLite's default is 2 MiB, which made it
/// spill and re-read B-tree pages under load).
const WRITER_CACHE_KIB: i64 = 32 * 1024;

/// The embedded [`Store`].
pub struct EmbeddedStore {
    syncer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropping the sender stops the checkpointer, which then truncates the WAL.
    checkpointer: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    /// The thread writing zeros ahead of the event records (with syncs on).
    zeroer: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
    head_tx: Arc<watch::Sender<u64>>,
    source_ids: Arc<RwLock<HashMap<String, i64>>>,
    /// Every id a deleted source of each slug had: the events they stored
    /// still reach the destinations naming the slug, also once a new source
    /// has taken it (its events keep their own id).
    retired_ids: Arc<RwLock<HashMap<String, Vec<i64>>>>,
    segments_dir: PathBuf,
    /// The thread inserting waiting index rows (see [`spawn_indexer`]).
    indexer: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    /// The write side and what jobs touch, behind one reference count.
    log: Arc<EventLog>,
}

/// What storing events touches beside the connection.
struct EventLog {
    /// Only jobs touch it, with the writer held: the lock is uncontended.
    recent_ids: Arc<Mutex<RecentIds>>,
    /// The event records; like `recent_ids`, touched with the writer held.
    segments: Arc<Mutex<Segments>>,
    /// Index rows not in the `events` table yet; readers look here too.
    pending_index: Arc<Mutex<PendingIndex>>,
    commit: Arc<GroupCommit>,
    /// See [`EmbeddedOptions::max_waiting_rows`].
    max_waiting_rows: usize,
}

/// How a write job runs.
enum JobKind {
    /// An event append: small, with no savepoint (see [`EmbeddedStore::append_job`]).
    Append { transaction: bool },
    /// Small, in a savepoint: on the submitting thread, or on whichever
    /// thread holds the writer.
    Small,
    /// In a savepoint, on a blocking thread: it may touch many rows.
    Heavy,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS sources(
    id INTEGER PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    write_key_hash TEXT,
    token_hash TEXT,
    created_ms INTEGER NOT NULL,
    config TEXT
);
-- Sources deleted while events of theirs may still wait in the log: their
-- ids stay known (to destinations that still name them) and are never given
-- to another source.
CREATE TABLE IF NOT EXISTS retired_sources(
    id INTEGER PRIMARY KEY,
    slug TEXT NOT NULL,
    deleted_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS functions(
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    settings TEXT NOT NULL,
    deployed_version INTEGER NOT NULL DEFAULT 0,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS function_versions(
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    code TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY(name, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY,
    source_id INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    user_id TEXT,
    received_ms INTEGER NOT NULL,
    body BLOB NOT NULL
);
-- Where the event's record is in the segment files (see `segments`); an
-- event stored before segments existed has its body in the row instead.
DROP TABLE IF EXISTS dedup;
CREATE TABLE IF NOT EXISTS rejections(
    id INTEGER PRIMARY KEY,
    source_id INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    field TEXT,
    reason TEXT NOT NULL,
    excerpt TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors(
    destination TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS retries(
    id INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,
    url TEXT,
    message_ids TEXT NOT NULL,
    body BLOB NOT NULL,
    webhook_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    next_ms INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS retries_due ON retries(destination, next_ms);
CREATE TABLE IF NOT EXISTS dead_letters(
    id INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,
    url TEXT,
    message_ids TEXT NOT NULL,
    body BLOB NOT NULL,
    webhook_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    failed_ms INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT NOT NULL,
    response_excerpt TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_dest ON dead_letters(destination, id);
CREATE TABLE IF NOT EXISTS attempts(
    id INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,
    url TEXT NOT NULL,
    message_id TEXT NOT NULL,
    events INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    status INTEGER,
    latency_ms INTEGER NOT NULL,
    error TEXT,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_dest ON attempts(destination, id);
CREATE TABLE IF NOT EXISTS url_state(
    destination TEXT NOT NULL,
    url TEXT NOT NULL,
    disabled_reason TEXT NOT NULL,
    PRIMARY KEY(destination, url)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS raw_requests(
    id INTEGER PRIMARY KEY,
    source_id INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    request BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms INTEGER NOT NULL,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS raw_requests_due ON raw_requests(state, next_ms);
CREATE TABLE IF NOT EXISTS captures(
    id INTEGER PRIMARY KEY,
    source_id INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    request BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS captures_source ON captures(source_id, id);
CREATE TABLE IF NOT EXISTS function_logs(
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS function_logs_owner ON function_logs(owner, id);
CREATE TABLE IF NOT EXISTS objects(
    source_id INTEGER NOT NULL,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    properties TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY(source_id, collection, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS destinations(
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    origin TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    read_only INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE TABLE IF NOT EXISTS meta(
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- A dead letter's id is what replay and discard name, so it is never given
-- again: SQLite would reuse the highest id once its row is gone. The highest id
-- ever removed is kept here, and inserts take the next one after it.
CREATE TRIGGER IF NOT EXISTS dead_letters_removed AFTER DELETE ON dead_letters
BEGIN
    INSERT INTO meta(key, value) VALUES('dead_letters_high', OLD.id)
    ON CONFLICT(key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), OLD.id);
END;
-- For the newest-first pages of a source's rejections and dead raw requests.
-- Made at every open, like the rest: a directory of an older build gets them
-- at its first open, and an older build that opens it again keeps them up
-- to date without knowing of them, so they need no new store format.
CREATE INDEX IF NOT EXISTS rejections_source ON rejections(source_id, id);
CREATE INDEX IF NOT EXISTS raw_requests_source ON raw_requests(source_id, state, id);
"#;

/// The layout of the data directory this build writes. Raised when a newer
/// layout would mislead an older build (format 2: per-version function
/// declarations, persisted pauses, dead-letter ids never reused); a build
/// refuses a directory of a newer format instead of half-reading it.
const STORE_FORMAT: i64 = 2;

fn check_format(conn: &Connection) -> Result<()> {
    let has_meta: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
        [],
        |r| r.get(0),
    )?;
    if !has_meta {
        return Ok(());
    }
    let found: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'store_format'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match found.and_then(|f| f.parse::<i64>().ok()) {
        Some(found) if found > STORE_FORMAT => Err(StoreError::NewerFormat {
            found,
            known: STORE_FORMAT,
        }),
        _ => Ok(()),
    }
}

fn open_connection(path: &Path, fsync: bool) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if fsync { "FULL" } else { "NORMAL" })?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(conn)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn ids_to_json(ids: &[String]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_string())
}

fn ids_from_json(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `options.data_dir`.
    pub fn open(options: EmbeddedOptions) -> Result<Self> {
        std::fs::create_dir_all(&options.data_dir).map_err(|source| StoreError::DataDir {
            path: options.data_dir.display().to_string(),
            source,
        })?;
        let path = options.data_dir.join("switchyard.db");
        let writer_conn = open_connection(&path, options.fsync)?;
        check_format(&writer_conn)?;
        writer_conn.execute_batch(SCHEMA)?;
        add_segment_columns(&writer_conn)?;
        add_version_settings_column(&writer_conn)?;
        writer_conn.execute(
            "INSERT INTO meta(key, value) VALUES('store_format', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [STORE_FORMAT.to_string()],
        )?;
        // Checkpoints copy the WAL into the database file: done on the
        // writer's thread, they stalled every commit behind them (a quarter
        // of the writer's time under load). A background thread does them.
        writer_conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // The writer commits without syncing; a sync thread makes each
        // group durable before anyone hears of it (see `sync_loop`).
        writer_conn.pragma_update(None, "synchronous", "OFF")?;
        let wal_file =
            std::fs::File::open(options.data_dir.join("switchyard.db-wal")).map_err(|source| {
                StoreError::DataDir {
                    path: path.display().to_string(),
                    source,
                }
            })?;
        writer_conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        // The same file is rewritten from its start after each reset.
        writer_conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        // A request being answered inline when the process died goes back to
        // the queue: it was acknowledged only if its run completed.
        writer_conn.execute(
            "UPDATE raw_requests SET state = 'pending' WHERE state = 'inline'",
            [],
        )?;

        let head: u64 = writer_conn
            .query_row(
                "SELECT MAX(COALESCE((SELECT MAX(seq) FROM events), 0),
                            COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?1), 0))",
                [LAST_SEQ_KEY],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v as u64)?;
        let segments_dir = options.data_dir.join("events");
        let (segments, recovered) = Segments::open(
            &segments_dir,
            options.fsync,
            head + 1,
            head,
            options.segment_bytes,
        )?;
        let head = repair_index(&writer_conn, head, recovered)?;
        let segments = Arc::new(Mutex::new(segments));
        let mut ids = HashMap::new();
        let mut retired_ids: HashMap<String, Vec<i64>> = HashMap::new();
        {
            let mut stmt = writer_conn.prepare("SELECT slug, id FROM sources")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (slug, id) = row?;
                ids.insert(slug, id);
            }
            // A deleted source's events still reach the destinations that
            // name it, across restarts too, unless its slug was taken again.
            let mut stmt =
                writer_conn.prepare("SELECT slug, id FROM retired_sources ORDER BY id")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (slug, id) = row?;
                retired_ids.entry(slug).or_default().push(id);
            }
            for (slug, retired) in &retired_ids {
                if let Some(newest) = retired.last() {
                    ids.entry(slug.clone()).or_insert(*newest);
                }
            }
        }
        let recent_ids = Arc::new(Mutex::new(load_recent_ids(&writer_conn, &options)?));
        let (head_tx, _) = watch::channel(head);
        let head_tx = Arc::new(head_tx);
        let pending_index = Arc::new(Mutex::new(PendingIndex::default()));
        let (commit, groups) =
            GroupCommit::new(writer_conn, segments.clone(), pending_index.clone(), head);
        let commit = Arc::new(commit);
        let syncer = {
            let head_tx = head_tx.clone();
            let commit = commit.clone();
            let fsync = options.fsync;
            std::thread::Builder::new()
                .name("store-sync".into())
                .spawn(move || sync_loop(wal_file, fsync, groups, &head_tx, &commit))
                .map_err(|source| StoreError::DataDir {
                    path: path.display().to_string(),
                    source,
                })?
        };
        let checkpointer = spawn_checkpointer(&path, commit.clone())?;
        let indexer = spawn_indexer(
            commit.clone(),
            pending_index.clone(),
            options.index_interval,
        )?;
        let zeroer = if options.fsync {
            Some(crate::segments::spawn_zeroer(segments.clone())?)
        } else {
            None
        };
        let log = Arc::new(EventLog {
            recent_ids,
            segments,
            pending_index,
            commit,
            max_waiting_rows: options.max_waiting_rows,
        });
        let store = EmbeddedStore {
            syncer: Mutex::new(Some(syncer)),
            checkpointer: Mutex::new(Some(checkpointer)),
            zeroer: Mutex::new(zeroer),
            readers: Arc::new(Mutex::new(Vec::new())),
            path,
            head_tx,
            source_ids: Arc::new(RwLock::new(ids)),
            retired_ids: Arc::new(RwLock::new(retired_ids)),
            segments_dir,
            log,
            indexer: Mutex::new(Some(indexer)),
        };
        Ok(store)
    }

    /// Runs `f` inside the next group commit, in a savepoint of its own so
    /// that its failure leaves the other jobs of the commit whole; resolves
    /// once durable. `f` runs on the calling thread (or on the thread that
    /// holds the writer then): it must be small.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.write_job(JobKind::Small, f).await
    }

    /// Like [`Self::write`] for a job that may touch many rows: it runs on a
    /// blocking thread, so that no async thread waits for it.
    async fn heavy_write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.write_job(JobKind::Heavy, f).await
    }

    /// Like [`Self::write`] with no savepoint, for event appends, the most
    /// frequent job: an append that fails half-way is answered as failed, so
    /// the client sends it again and deduplication drops the events the
    /// first try did store. `transaction`: whether it writes rows too (an
    /// append alone writes records and index entries, no row).
    async fn append_job<T, F>(&self, transaction: bool, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.write_job(JobKind::Append { transaction }, f).await
    }

    async fn write_job<T, F>(&self, kind: JobKind, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let savepoint = !matches!(kind, JobKind::Append { .. });
        let transaction = !matches!(kind, JobKind::Append { transaction: false });
        let (tx, rx) = oneshot::channel::<Result<T>>();
        let log = self.event_log();
        let run = Box::new(move |conn: &Connection| -> Completion {
            if savepoint {
                // Its rows live in SQLite alone: the WAL must be synced.
                log.commit.wal_needed.store(true, Ordering::Release);
            }
            // Cached statements: each job's savepoint is not parsed again.
            let outcome = (|| {
                if !savepoint {
                    return f(conn);
                }
                let records_end = log.segments.lock().map_err(|_| StoreError::Closed)?.end();
                conn.prepare_cached("SAVEPOINT job")?.execute([])?;
                match f(conn) {
                    Ok(v) => {
                        conn.prepare_cached("RELEASE job")?.execute([])?;
                        Ok(v)
                    }
                    Err(e) => {
                        conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
                        conn.prepare_cached("RELEASE job")?.execute([])?;
                        // The events it stored go with its rows.
                        discard_records_from(&log.segments, &log.pending_index, records_end);
                        Err(e)
                    }
                }
            })();
            Box::new(move |committed: Result<(), String>| {
                let result = match committed {
                    Ok(()) => outcome,
                    Err(e) => Err(StoreError::Corrupt(format!("commit failed: {e}"))),
                };
                let _ = tx.send(result);
            })
        });
        let job = Job { transaction, run };
        match kind {
            JobKind::Append { .. } | JobKind::Small => self.log.commit.submit(job),
            JobKind::Heavy => {
                let commit = self.log.commit.clone();
                tokio::task::spawn_blocking(move || commit.run_blocking(job))
                    .await
                    .map_err(|_| StoreError::Closed)?;
            }
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a pooled read connection, off the async threads.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.lock().ok().and_then(|mut pool| pool.pop());
            let conn = match conn {
                Some(c) => c,
                None => open_connection(&path, false)?,
            };
            let result = f(&conn);
            if let Ok(mut pool) = readers.lock() {
                if pool.len() < 8 {
                    pool.push(conn);
                }
            }
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Inserts the index rows still waiting into the `events` table now,
    /// as the store does by itself within [`EmbeddedOptions::index_interval`]:
    /// for tools and tests that read the database file directly.
    pub async fn index_now(&self) -> Result<()> {
        let pending = self.log.pending_index.clone();
        self.write(move |conn| index_pending(&pending, conn)).await
    }

    /// One reference count for what a job needs: clones of shared `Arc`s
    /// on every request cost cache-line transfers between the cores.
    fn event_log(&self) -> Arc<EventLog> {
        self.log.clone()
    }

    fn source_id(&self, slug: &str) -> Result<i64> {
        self.source_ids
            .read()
            .map_err(|_| StoreError::Closed)?
            .get(slug)
            .copied()
            .ok_or_else(|| StoreError::UnknownSource(slug.to_string()))
    }
}

/// A thread with its own connection that copies WAL frames into the database
/// as they come (PASSIVE checkpoints: it never blocks the writer or readers),
/// and truncates the WAL when the store closes.
fn spawn_checkpointer(
    path: &Path,
    commit: Arc<GroupCommit>,
) -> Result<(mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let conn = open_connection(path, true)?;
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || {
            // Frames copied so far, as the last checkpoint reported them.
            let mut last_done = -1;
            // Returns whether the WAL is changing (the writer is busy).
            let mut checkpoint = |mode: &str| -> bool {
                let copied = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                });
                match copied {
                    Ok((busy, log, done)) => {
                        if log >= WAL_RESET_PAGES && log - done < WAL_RESET_PAGES / 4 {
                            commit.finish_checkpoint.store(true, Ordering::Release);
                        }
                        let changing = busy != 0 || done < log || done != last_done;
                        last_done = done;
                        changing
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, mode, "store: WAL checkpoint failed");
                        false
                    }
                }
            };
            let mut pause = CHECKPOINT_IDLE;
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(pause) {
                pause = if checkpoint("PASSIVE") {
                    CHECKPOINT_BUSY
                } else {
                    CHECKPOINT_IDLE
                };
            }
            checkpoint("TRUNCATE");
        })
        .map_err(|source| StoreError::DataDir {
            path: path.display().to_string(),
            source,
        })?;
    Ok((stop_tx, handle))
}

/// Starts the thread that inserts waiting index rows every `interval`
/// (sooner while more than a chunk waits), holding the writer itself (see
/// `GroupCommit::index_waiting`).
/// It stops when the sender is dropped; the store's close indexes the rest.
fn spawn_indexer(
    commit: Arc<GroupCommit>,
    pending: Arc<Mutex<PendingIndex>>,
    interval: std::time::Duration,
) -> Result<(mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("store-indexer".into())
        .spawn(move || {
            let mut pause = interval;
            // Failures are logged when they begin and end, not every round.
            let mut failing = false;
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(pause) {
                let waiting = pending.lock().map(|p| p.unstaged()).unwrap_or(0);
                if waiting == 0 {
                    pause = interval;
                    continue;
                }
                pause = match commit.index_waiting(INDEX_CHUNK) {
                    Ok(_) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("store: indexing new events again");
                        }
                        if waiting > INDEX_CHUNK {
                            std::time::Duration::ZERO
                        } else {
                            interval
                        }
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(error = %e, "store: cannot index new events yet; they are read from memory meanwhile, and appends index them once too many wait");
                        }
                        INDEX_RETRY
                    }
                };
            }
        })
        .map_err(|source| StoreError::DataDir {
            path: "store-indexer thread".into(),
            source,
        })?;
    Ok((stop_tx, handle))
}

fn row_to_retry(r: &rusqlite::Row<'_>) -> rusqlite::Result<RetryEntry> {
    Ok(RetryEntry {
        id: r.get(0)?,
        destination: r.get(1)?,
        url: r.get(2)?,
        message_ids: ids_from_json(&r.get::<_, String>(3)?),
        body: r.get(4)?,
        webhook_id: r.get(5)?,
        attempts: r.get(6)?,
        first_attempt_ms: r.get(7)?,
        next_attempt_ms: r.get(8)?,
        last_status: r.get(9)?,
        last_error: r.get(10)?,
    })
}

const RETRY_COLUMNS: &str = "id, destination, url, message_ids, body, webhook_id, attempts, first_ms, next_ms, last_status, last_error";

/// Rebuilds the recent message ids from the events of the dedup window.
fn load_recent_ids(conn: &Connection, options: &EmbeddedOptions) -> Result<RecentIds> {
    let mut recent = RecentIds::new(options.dedup_window_ms, options.dedup_max_ids);
    let cutoff = now_ms() - options.dedup_window_ms;
    let most = options.dedup_max_ids.max(1);
    // One walk of the primary key from the newest event back, to the first
    // one received before the window (events are logged in the order
    // received) or the `dedup_max_ids`th. Filtering every row by its time
    // instead read the whole log, seven days of it by default, to find one
    // day; and inserting the ids as they came grew the table (and the
    // expiry order) by doubling, each step holding both copies at once.
    let mut stmt = conn
        .prepare("SELECT seq, source_id, message_id, received_ms FROM events ORDER BY seq DESC")?;
    let mut rows = stmt.query([])?;
    let mut newest_first = Vec::new();
    while newest_first.len() < most {
        let Some(r) = rows.next()? else {
            break;
        };
        let received_ms: i64 = r.get(3)?;
        if received_ms < cutoff {
            break;
        }
        let message_id: String = r.get(2)?;
        let hash = recent.id_hash(r.get(1)?, &message_id);
        newest_first.push((received_ms, r.get::<_, i64>(0)? as u64, hash));
    }
    recent.load_newest_first(newest_first);
    Ok(recent)
}

/// Adds the columns of an event's record location to an `events` table
/// made before segments existed.
fn add_segment_columns(conn: &Connection) -> Result<()> {
    let has_seg: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('events') WHERE name = 'seg'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_seg {
        conn.execute_batch(
            "ALTER TABLE events ADD COLUMN seg INTEGER;
             ALTER TABLE events ADD COLUMN off INTEGER;
             ALTER TABLE events ADD COLUMN len INTEGER;",
        )?;
    }
    Ok(())
}

/// Gives each function version its own declarations (a store made when they
/// were kept per function reads NULL there and falls back to the function's).
fn add_version_settings_column(conn: &Connection) -> Result<()> {
    let has: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('function_versions') WHERE name = 'settings'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has {
        conn.execute_batch("ALTER TABLE function_versions ADD COLUMN settings TEXT;")?;
    }
    Ok(())
}

/// Brings the index in line with the segments after a crash: rows of
/// records that were cut off (never acknowledged) go, records the index
/// lacks (its newest rows: still waiting to be inserted when the process
/// died, or unsynced at a power loss) come back. Returns the head of the log.
fn repair_index(
    conn: &Connection,
    head: u64,
    recovered: crate::segments::Recovered,
) -> Result<u64> {
    let tx = conn.unchecked_transaction()?;
    let dropped = tx.execute(
        "DELETE FROM events WHERE seg = ?1 AND off >= ?2",
        params![recovered.segment as i64, recovered.valid_end as i64],
    )?;
    let mut head = head;
    {
        // A row already there is kept: opening must not fail on it.
        let mut insert = tx.prepare(&INSERT_EVENT.replacen("INSERT", "INSERT OR IGNORE", 1))?;
        for (r, loc) in &recovered.records {
            insert.execute(params![
                r.seq as i64,
                r.source_id,
                r.message_id,
                r.user_id,
                r.received_ms,
                loc.segment as i64,
                loc.offset as i64,
                loc.len as i64
            ])?;
            head = head.max(r.seq);
        }
    }
    tx.commit()?;
    if dropped > 0 || !recovered.records.is_empty() || recovered.truncated > 0 {
        tracing::warn!(
            segment = recovered.segment,
            restored = recovered.records.len(),
            dropped,
            truncated_bytes = recovered.truncated,
            "store: the event index was repaired from the segments (the last run did not stop cleanly)"
        );
    }
    Ok(head)
}

/// The body of an event row: in its segment record, or in the row itself
/// for an event stored before segments existed. `None` for a record that
/// is not there (the disk or someone else changed the file): logged, and
/// skipped by the readers, so that one damaged record does not stop a
/// destination for good. Any other error (the file cannot be opened or
/// read) is returned, and the read is tried again.
fn row_body(
    reader: &mut SegmentReader<'_>,
    seq: u64,
    inline: Vec<u8>,
    seg: Option<i64>,
    off: Option<i64>,
    len: Option<i64>,
) -> Result<Option<Vec<u8>>> {
    let (Some(segment), Some(offset), Some(len)) = (seg, off, len) else {
        return Ok(Some(inline));
    };
    let location = Location {
        segment: segment as u64,
        offset: offset as u64,
        len: len as u64,
    };
    record_body(reader, seq, location)
}

/// The body of the record at `location` (see [`row_body`] for `None`).
fn record_body(
    reader: &mut SegmentReader<'_>,
    seq: u64,
    location: Location,
) -> Result<Option<Vec<u8>>> {
    match reader.body(seq, location) {
        Ok(body) => Ok(Some(body)),
        Err(e)
            if e.get_ref()
                .is_some_and(|inner| inner.is::<segments::ErasedRecord>()) =>
        {
            tracing::debug!(
                seq,
                "store: an event's record was erased by a user deletion; it is skipped"
            );
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            tracing::error!(seq, error = %e, "store: an event's record is damaged; it is skipped");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The event of an index row still waiting, as readers return it; `None`
/// when its record is damaged (see [`row_body`]).
fn waiting_event(
    reader: &mut SegmentReader<'_>,
    entry: IndexEntry,
    source: String,
) -> Result<Option<StoredEvent>> {
    let Some(json) = record_body(reader, entry.seq, entry.location)? else {
        return Ok(None);
    };
    Ok(Some(StoredEvent {
        seq: entry.seq,
        source,
        message_id: entry.message_id,
        received_ms: entry.received_ms,
        json,
    }))
}

/// The meta key of the highest seq given, kept by every job that deletes
/// events: the newest ones may be among them, and their seqs must not be
/// given again after a restart.
const LAST_SEQ_KEY: &str = "events_last_seq";

fn keep_last_seq(conn: &Connection, pending_head: &AtomicU64) -> Result<()> {
    conn.execute(
        "INSERT INTO meta(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![LAST_SEQ_KEY, pending_head.load(Ordering::Acquire).to_string()],
    )?;
    Ok(())
}

/// Stores events (deduplicated by messageId within the window): their
/// records go to the segment, their index rows to [`PendingIndex`]; shared
/// by tracking appends and source-function runs. Touches no table (unless
/// too many rows wait, see [`EmbeddedOptions::max_waiting_rows`]): a group
/// of appends commits no SQLite transaction.
fn insert_events(
    conn: &Connection,
    source_id: i64,
    events: Vec<NewEvent>,
    log: &EventLog,
) -> Result<AppendReceipt> {
    let pending_head = &log.commit.pending_head;
    let now = now_ms();
    let mut receipt = AppendReceipt::default();
    let mut recent = log.recent_ids.lock().map_err(|_| StoreError::Closed)?;
    // The window is kept exactly, not only at the hourly compaction: an id
    // sent again once its window is over is a new event. Usually one look
    // at the oldest id.
    recent.expire(now);
    let mut segments = log.segments.lock().map_err(|_| StoreError::Closed)?;
    let mut pending = log.pending_index.lock().map_err(|_| StoreError::Closed)?;
    // Seqs are given here, never by SQLite: it would give the seq of a
    // deleted newest event again, which a destination's cursor has passed.
    let mut last_seq = pending_head.load(Ordering::Acquire);
    let hashes: Vec<_> = events
        .iter()
        .map(|e| recent.id_hash(source_id, &e.message_id))
        .collect();
    for hash in &hashes {
        recent.prefetch(*hash);
    }
    // The ids move into the index entries: no copy per event.
    for (e, hash) in events.into_iter().zip(hashes) {
        let mut location = None;
        let stored = recent.store_once(
            hash,
            now,
            |seq| {
                // The real id is compared, so a hash collision stores the
                // event. A row that is gone (purged, compacted) does not
                // count: storing twice is better than losing one.
                if let Some(id) = pending.message_id(seq, source_id) {
                    return Ok(id == e.message_id);
                }
                let stored: Option<String> = conn
                    .prepare_cached(
                        "SELECT message_id FROM events WHERE seq = ?1 AND source_id = ?2",
                    )?
                    .query_row(params![seq as i64, source_id], |r| r.get(0))
                    .optional()?;
                Ok::<_, StoreError>(stored.as_deref() == Some(e.message_id.as_str()))
            },
            || {
                let seq = last_seq + 1;
                location = Some(segments.append(NewRecord {
                    seq,
                    source_id,
                    received_ms: now,
                    message_id: &e.message_id,
                    user_id: e.user_id.as_deref(),
                    body: &e.json,
                })?);
                Ok(seq)
            },
        )?;
        match (stored, location) {
            (Some(seq), Some(location)) => {
                last_seq = seq;
                receipt.stored += 1;
                pending.push(IndexEntry {
                    seq,
                    source_id,
                    message_id: e.message_id,
                    user_id: e.user_id,
                    received_ms: now,
                    location,
                });
            }
            _ => receipt.duplicates += 1,
        }
    }
    // Once per job: an atomic read-modify-write per event was a tenth of
    // the writer's time.
    pending_head.fetch_max(last_seq, Ordering::AcqRel);
    if pending.unstaged() > log.max_waiting_rows {
        begin_if_needed(conn)?;
        pending.stage_all(conn)?;
    }
    Ok(receipt)
}

/// Takes back the records appended from `end` on, and their index
/// entries: a job that stored events failed, and is answered so (a source
/// function's run is tried again). A record already written (a segment
/// filled meanwhile) stays in its file with no index entry: never read.
fn discard_records_from(
    segments: &Mutex<Segments>,
    pending: &Mutex<PendingIndex>,
    end: (u64, u64),
) {
    let (Ok(mut segments), Ok(mut pending)) = (segments.lock(), pending.lock()) else {
        return;
    };
    segments.discard_from(end);
    pending.discard_from(end);
}

/// Inserts every index row waiting, inside the job's transaction: for the
/// jobs that read or delete rows of the `events` table.
fn index_pending(pending: &Mutex<PendingIndex>, conn: &Connection) -> Result<()> {
    pending
        .lock()
        .map_err(|_| StoreError::Closed)?
        .stage_all(conn)?;
    Ok(())
}

/// Ids of the dead letters of `destination` that `selection` picks.
fn selected_dead_letters(
    conn: &Connection,
    destination: &str,
    selection: &Selection,
) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM dead_letters WHERE destination = ?1
         AND (?2 IS NULL OR failed_ms >= ?2) AND (?3 IS NULL OR failed_ms < ?3) ORDER BY id",
    )?;
    let rows = stmt.query_map(
        params![destination, selection.since_ms, selection.until_ms],
        |r| r.get::<_, i64>(0),
    )?;
    let mut ids = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    if let Some(wanted) = &selection.ids {
        ids.retain(|id| wanted.contains(id));
    }
    Ok(ids)
}

/// Function log lines kept per owner; older lines are trimmed.
const LOGS_PER_OWNER: i64 = 10_000;

fn insert_logs(conn: &Connection, owner: &str, logs: &[FunctionLog]) -> Result<()> {
    if logs.is_empty() {
        return Ok(());
    }
    let mut stmt = conn.prepare_cached(
        "INSERT INTO function_logs(owner, at_ms, level, message) VALUES(?1, ?2, ?3, ?4)",
    )?;
    for l in logs {
        stmt.execute(params![owner, l.at_ms, l.level, l.message])?;
    }
    let last = conn.last_insert_rowid();
    if last % 1000 < logs.len() as i64 {
        conn.prepare_cached(
            "DELETE FROM function_logs WHERE owner = ?1 AND id <= (SELECT id FROM function_logs WHERE owner = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        )?
        .execute(params![owner, LOGS_PER_OWNER])?;
    }
    Ok(())
}

fn row_to_raw(slug: &str, r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        id: r.get(0)?,
        source: slug.to_string(),
        received_ms: r.get(1)?,
        request: r.get(2)?,
        state: r.get(3)?,
        attempts: r.get(4)?,
        next_attempt_ms: r.get(5)?,
        last_error: r.get(6)?,
    })
}

const RAW_COLUMNS: &str = "id, received_ms, request, state, attempts, next_ms, last_error";

impl EmbeddedStore {
    fn source_ids_of(&self, sources: &[String]) -> Result<HashMap<i64, String>> {
        let ids = self.source_ids.read().map_err(|_| StoreError::Closed)?;
        Ok(sources
            .iter()
            .filter_map(|s| ids.get(s).map(|id| (*id, s.clone())))
            .collect())
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn append(
        &self,
        source: &str,
        events: Vec<NewEvent>,
        rejections: Vec<Rejection>,
    ) -> Result<AppendReceipt> {
        let source_id = self.source_id(source)?;
        let log = self.event_log();
        self.append_job(!rejections.is_empty(), move |conn| {
            let now = now_ms();
            let receipt = insert_events(conn, source_id, events, &log)?;
            if !rejections.is_empty() {
                // Rejections live in SQLite alone.
                log.commit.wal_needed.store(true, Ordering::Release);
                let mut rej = conn.prepare_cached(
                    "INSERT INTO rejections(source_id, at_ms, idx, field, reason, excerpt) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for r in &rejections {
                    rej.execute(params![source_id, now, r.index as i64, r.field, r.reason, r.excerpt])?;
                }
            }
            Ok(receipt)
        })
        .await
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }

    async fn read_events(
        &self,
        sources: &[String],
        after: u64,
        scan: u64,
        limit: usize,
    ) -> Result<(Vec<StoredEvent>, u64)> {
        let wanted: HashMap<i64, String> = {
            let mut wanted = self.source_ids_of(sources)?;
            let retired = self.retired_ids.read().map_err(|_| StoreError::Closed)?;
            for slug in sources {
                for id in retired.get(slug).into_iter().flatten() {
                    wanted.insert(*id, slug.clone());
                }
            }
            wanted
        };
        let head = *self.head_tx.borrow();
        let dir = self.segments_dir.clone();
        let pending = self.log.pending_index.clone();
        self.read(move |conn| {
            let mut reader = SegmentReader::new(&dir);
            let upper = head.min(after.saturating_add(scan));
            // Taken before the table is read: an entry leaves the list only
            // once its row is committed, so each event is in one or both.
            let waiting =
                pending
                    .lock()
                    .map_err(|_| StoreError::Closed)?
                    .range(after, upper, |e| wanted.contains_key(&e.source_id));
            let mut stmt = conn.prepare_cached(
                "SELECT seq, source_id, message_id, received_ms, body, seg, off, len FROM events
                 WHERE seq > ?1 AND seq <= ?2 ORDER BY seq",
            )?;
            let mut rows = stmt.query(params![after as i64, upper as i64])?;
            let mut out = Vec::new();
            // Both are in seq order: merged, an event in both (its row was
            // committed meanwhile) taken once.
            let mut waiting = waiting.into_iter().peekable();
            let take_entry = |entry: IndexEntry,
                              reader: &mut SegmentReader<'_>,
                              out: &mut Vec<StoredEvent>|
             -> Result<()> {
                let source = wanted.get(&entry.source_id).cloned().unwrap_or_default();
                out.extend(waiting_event(reader, entry, source)?);
                Ok(())
            };
            while let Some(r) = rows.next()? {
                let seq = r.get::<_, i64>(0)? as u64;
                while let Some(entry) = waiting.next_if(|e| e.seq < seq) {
                    let entry_seq = entry.seq;
                    take_entry(entry, &mut reader, &mut out)?;
                    if out.len() >= limit {
                        return Ok((out, entry_seq));
                    }
                }
                waiting.next_if(|e| e.seq == seq);
                let source_id: i64 = r.get(1)?;
                if let Some(slug) = wanted.get(&source_id) {
                    let Some(json) =
                        row_body(&mut reader, seq, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)?
                    else {
                        continue;
                    };
                    out.push(StoredEvent {
                        seq,
                        source: slug.clone(),
                        message_id: r.get(2)?,
                        received_ms: r.get(3)?,
                        json,
                    });
                    if out.len() >= limit {
                        return Ok((out, seq));
                    }
                }
            }
            for entry in waiting {
                let entry_seq = entry.seq;
                take_entry(entry, &mut reader, &mut out)?;
                if out.len() >= limit {
                    return Ok((out, entry_seq));
                }
            }
            Ok((out, upper))
        })
        .await
    }

    async fn recent_events(
        &self,
        source: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        let source_id = self.source_id(source)?;
        let slug = source.to_string();
        let dir = self.segments_dir.clone();
        let head = *self.head_tx.borrow();
        let pending = self.log.pending_index.clone();
        let below = before.unwrap_or(u64::MAX);
        self.read(move |conn| {
            let mut reader = SegmentReader::new(&dir);
            // Taken before the table is read (see `read_events`): an entry
            // leaves the list only once its row is committed, so each event
            // is in one or both.
            let mut waiting = pending.lock().map_err(|_| StoreError::Closed)?.range(
                0,
                head.min(below.saturating_sub(1)),
                |e| e.source_id == source_id,
            );
            // No LIMIT: rows are read until the page is full, so that a
            // skipped damaged record does not make a short page, which a
            // client would take for the last one.
            let mut stmt = conn.prepare_cached(
                "SELECT seq, message_id, received_ms, body, seg, off, len FROM events
                 WHERE source_id = ?1 AND seq < ?2 ORDER BY seq DESC",
            )?;
            let mut rows = stmt.query(params![source_id, below.min(i64::MAX as u64) as i64])?;
            let mut out = Vec::new();
            // Both newest first once `waiting` is read from its end: merged
            // by position, an event in both (its row committed meanwhile)
            // taken once.
            while out.len() < limit {
                let Some(r) = rows.next()? else {
                    break;
                };
                let seq = r.get::<_, i64>(0)? as u64;
                while out.len() < limit && waiting.last().is_some_and(|e| e.seq > seq) {
                    if let Some(entry) = waiting.pop() {
                        out.extend(waiting_event(&mut reader, entry, slug.clone())?);
                    }
                }
                if out.len() >= limit {
                    break;
                }
                if waiting.last().is_some_and(|e| e.seq == seq) {
                    waiting.pop();
                }
                let Some(json) =
                    row_body(&mut reader, seq, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)?
                else {
                    continue;
                };
                out.push(StoredEvent {
                    seq,
                    source: slug.clone(),
                    message_id: r.get(1)?,
                    received_ms: r.get(2)?,
                    json,
                });
            }
            while out.len() < limit {
                let Some(entry) = waiting.pop() else {
                    break;
                };
                out.extend(waiting_event(&mut reader, entry, slug.clone())?);
            }
            Ok(out)
        })
        .await
    }

    async fn cursor(&self, destination: &str) -> Result<Option<u64>> {
        let destination = destination.to_string();
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT seq FROM cursors WHERE destination = ?1",
                    [destination],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?
                .map(|v| v as u64))
        })
        .await
    }

    async fn init_cursor(&self, destination: &str) -> Result<u64> {
        let destination = destination.to_string();
        let pending = self.log.pending_index.clone();
        self.write(move |conn| {
            index_pending(&pending, conn)?;
            conn.execute(
                "INSERT INTO cursors(destination, seq) SELECT ?1, COALESCE(MAX(seq), 0) FROM events
                 WHERE true ON CONFLICT(destination) DO NOTHING",
                [&destination],
            )?;
            Ok(conn.query_row(
                "SELECT seq FROM cursors WHERE destination = ?1",
                [&destination],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })
        .await
    }

    async fn commit_delivery(&self, commit: DeliveryCommit) -> Result<Vec<i64>> {
        self.write(move |conn| {
            let dest = &commit.destination;
            if let Some(seq) = commit.cursor {
                conn.prepare_cached(
                    "INSERT INTO cursors(destination, seq) VALUES(?1, ?2)
                     ON CONFLICT(destination) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                )?
                .execute(params![dest, seq as i64])?;
            }
            if !commit.attempts.is_empty() {
                let mut stmt = conn.prepare_cached(
                    "INSERT INTO attempts(destination, url, message_id, events, at_ms, status, latency_ms, error, outcome)
                     VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?;
                for a in &commit.attempts {
                    stmt.execute(params![
                        a.destination,
                        a.url,
                        a.message_id,
                        a.events,
                        a.at_ms,
                        a.status,
                        a.latency_ms as i64,
                        a.error,
                        a.outcome
                    ])?;
                }
            }
            let mut new_ids = Vec::new();
            for r in &commit.retries {
                if r.id == 0 {
                    conn.prepare_cached(
                        "INSERT INTO retries(destination, url, message_ids, body, webhook_id, attempts, first_ms, next_ms, last_status, last_error)
                         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )?
                    .execute(params![
                        r.destination,
                        r.url,
                        ids_to_json(&r.message_ids),
                        r.body,
                        r.webhook_id,
                        r.attempts,
                        r.first_attempt_ms,
                        r.next_attempt_ms,
                        r.last_status,
                        r.last_error
                    ])?;
                    new_ids.push(conn.last_insert_rowid());
                } else {
                    conn.prepare_cached(
                        "UPDATE retries SET attempts = ?2, next_ms = ?3, last_status = ?4, last_error = ?5 WHERE id = ?1",
                    )?
                    .execute(params![r.id, r.attempts, r.next_attempt_ms, r.last_status, r.last_error])?;
                }
            }
            for id in &commit.removed_retries {
                conn.prepare_cached("DELETE FROM retries WHERE id = ?1")?
                    .execute([id])?;
            }
            for d in &commit.dead_letters {
                conn.prepare_cached(
                    "INSERT INTO dead_letters(id, destination, url, message_ids, body, webhook_id, attempts, first_ms, failed_ms, last_status, last_error, response_excerpt)
                     VALUES(1 + MAX(
                         COALESCE((SELECT MAX(id) FROM dead_letters), 0),
                         COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'dead_letters_high'), 0)
                     ), ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?
                .execute(params![
                    d.destination,
                    d.url,
                    ids_to_json(&d.message_ids),
                    d.body,
                    d.webhook_id,
                    d.attempts,
                    d.first_attempt_ms,
                    d.failed_ms,
                    d.last_status,
                    d.last_error,
                    d.response_excerpt
                ])?;
            }
            for (url, reason) in &commit.disabled_urls {
                conn.prepare_cached(
                    "INSERT INTO url_state(destination, url, disabled_reason) VALUES(?1, ?2, ?3)
                     ON CONFLICT(destination, url) DO UPDATE SET disabled_reason = excluded.disabled_reason",
                )?
                .execute(params![dest, url, reason])?;
            }
            Ok(new_ids)
        })
        .await
    }

    async fn due_retries(
        &self,
        destination: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<RetryEntry>> {
        let destination = destination.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {RETRY_COLUMNS} FROM retries WHERE destination = ?1 AND next_ms <= ?2
                 ORDER BY next_ms LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![destination, now_ms, limit as i64], row_to_retry)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn next_retry_ms(&self, destination: &str) -> Result<Option<i64>> {
        let destination = destination.to_string();
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT MIN(next_ms) FROM retries WHERE destination = ?1",
                [destination],
                |r| r.get::<_, Option<i64>>(0),
            )?)
        })
        .await
    }

    async fn retry_count(&self, destination: &str) -> Result<u64> {
        let destination = destination.to_string();
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT COUNT(*) FROM retries WHERE destination = ?1",
                [destination],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })
        .await
    }

    async fn dead_letter_count(&self, destination: &str) -> Result<u64> {
        let destination = destination.to_string();
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT COUNT(*) FROM dead_letters WHERE destination = ?1",
                [destination],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })
        .await
    }

    async fn dead_letters(
        &self,
        destination: &str,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let destination = destination.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, destination, url, message_ids, body, webhook_id, attempts, first_ms, failed_ms, last_status, last_error, response_excerpt
                 FROM dead_letters WHERE destination = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![destination, after.unwrap_or(0), limit as i64], |r| {
                Ok(DeadLetter {
                    id: r.get(0)?,
                    destination: r.get(1)?,
                    url: r.get(2)?,
                    message_ids: ids_from_json(&r.get::<_, String>(3)?),
                    body: r.get(4)?,
                    webhook_id: r.get(5)?,
                    attempts: r.get(6)?,
                    first_attempt_ms: r.get(7)?,
                    failed_ms: r.get(8)?,
                    last_status: r.get(9)?,
                    last_error: r.get(10)?,
                    response_excerpt: r.get(11)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn replay_dead_letters(
        &self,
        destination: &str,
        selection: Selection,
    ) -> Result<Vec<i64>> {
        let destination = destination.to_string();
        self.heavy_write(move |conn| {
            let now = now_ms();
            let mut moved = Vec::new();
            for id in selected_dead_letters(conn, &destination, &selection)? {
                // A replay is a fresh delivery: attempts and age start over.
                let n = conn.execute(
                    "INSERT INTO retries(destination, url, message_ids, body, webhook_id, attempts, first_ms, next_ms, last_status, last_error)
                     SELECT destination, url, message_ids, body, webhook_id, 0, ?3, ?3, last_status, 'replayed from dead letters'
                     FROM dead_letters WHERE id = ?1 AND destination = ?2",
                    params![id, destination, now],
                )?;
                if n > 0 {
                    conn.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
                    moved.push(id);
                }
            }
            Ok(moved)
        })
        .await
    }

    async fn discard_dead_letters(
        &self,
        destination: &str,
        selection: Selection,
    ) -> Result<Vec<i64>> {
        let destination = destination.to_string();
        self.heavy_write(move |conn| {
            let mut discarded = Vec::new();
            for id in selected_dead_letters(conn, &destination, &selection)? {
                if conn.execute(
                    "DELETE FROM dead_letters WHERE id = ?1 AND destination = ?2",
                    params![id, destination],
                )? > 0
                {
                    discarded.push(id);
                }
            }
            Ok(discarded)
        })
        .await
    }

    async fn attempts(
        &self,
        destination: &str,
        before: Option<i64>,
        limit: usize,
        outcome: Option<String>,
    ) -> Result<Vec<Attempt>> {
        let destination = destination.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, destination, url, message_id, events, at_ms, status, latency_ms, error, outcome
                 FROM attempts WHERE destination = ?1 AND id < ?4 AND (?3 IS NULL OR outcome = ?3)
                 ORDER BY id DESC LIMIT ?2",
            )?;
            let before = before.unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![destination, limit as i64, outcome, before], |r| {
                Ok(Attempt {
                    id: r.get(0)?,
                    destination: r.get(1)?,
                    url: r.get(2)?,
                    message_id: r.get(3)?,
                    events: r.get(4)?,
                    at_ms: r.get(5)?,
                    status: r.get(6)?,
                    latency_ms: r.get::<_, i64>(7)? as u64,
                    error: r.get(8)?,
                    outcome: r.get(9)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn rejections(
        &self,
        source: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredRejection>> {
        let source_id = self.source_id(source)?;
        let slug = source.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, at_ms, idx, field, reason, excerpt FROM rejections
                 WHERE source_id = ?1 AND id < ?3 ORDER BY id DESC LIMIT ?2",
            )?;
            let before = before.unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![source_id, limit as i64, before], |r| {
                Ok(StoredRejection {
                    id: r.get(0)?,
                    source: slug.clone(),
                    at_ms: r.get(1)?,
                    rejection: Rejection {
                        index: r.get::<_, i64>(2)? as usize,
                        field: r.get(3)?,
                        reason: r.get(4)?,
                        excerpt: r.get(5)?,
                    },
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn disabled_urls(&self, destination: &str) -> Result<Vec<(String, String)>> {
        let destination = destination.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT url, disabled_reason FROM url_state WHERE destination = ?1",
            )?;
            let rows = stmt.query_map([destination], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn enable_urls(&self, destination: &str, url: Option<String>) -> Result<()> {
        let destination = destination.to_string();
        self.write(move |conn| {
            match url {
                Some(u) => conn.execute(
                    "DELETE FROM url_state WHERE destination = ?1 AND url = ?2",
                    params![destination, u],
                )?,
                None => conn.execute(
                    "DELETE FROM url_state WHERE destination = ?1",
                    [destination],
                )?,
            };
            Ok(())
        })
        .await
    }

    async fn backlog(&self, destination: &str) -> Result<u64> {
        let head = *self.head_tx.borrow();
        let cursor = self.cursor(destination).await?.unwrap_or(head);
        Ok(head.saturating_sub(cursor))
    }

    async fn put_source(&self, source: SourceRecord) -> Result<SourceRecord> {
        let ids = self.source_ids.clone();
        self.write(move |conn| {
            // A new source's id is past every id ever given, deleted ones
            // included: events of a deleted source must never pass for
            // another's.
            conn.execute(
                "INSERT INTO sources(id, slug, kind, write_key_hash, token_hash, created_ms, config)
                 VALUES(1 + MAX(COALESCE((SELECT MAX(id) FROM sources), 0), COALESCE((SELECT MAX(id) FROM retired_sources), 0)),
                        ?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(slug) DO UPDATE SET kind = excluded.kind,
                   write_key_hash = COALESCE(excluded.write_key_hash, sources.write_key_hash),
                   token_hash = COALESCE(excluded.token_hash, sources.token_hash),
                   config = COALESCE(excluded.config, sources.config)",
                params![source.slug, source.kind, source.write_key_hash, source.token_hash, source.created_ms, source.config],
            )?;
            let (id, record) = conn.query_row(
                "SELECT id, slug, kind, write_key_hash, token_hash, created_ms, config FROM sources WHERE slug = ?1",
                [&source.slug],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        SourceRecord {
                            slug: r.get(1)?,
                            kind: r.get(2)?,
                            write_key_hash: r.get(3)?,
                            token_hash: r.get(4)?,
                            created_ms: r.get(5)?,
                            config: r.get(6)?,
                        },
                    ))
                },
            )?;
            if let Ok(mut map) = ids.write() {
                map.insert(record.slug.clone(), id);
            }
            Ok(record)
        })
        .await
    }

    async fn delete_source(&self, slug: &str) -> Result<bool> {
        let slug = slug.to_string();
        let retired_ids = self.retired_ids.clone();
        self.heavy_write(move |conn| {
            // The id stays known (retired) so that queued events can still be
            // read, now and after a restart; a new source of the same slug
            // gets a new id.
            let id: Option<i64> = conn
                .query_row("SELECT id FROM sources WHERE slug = ?1", [&slug], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(id) = id else {
                return Ok(false);
            };
            conn.execute(
                "INSERT OR IGNORE INTO retired_sources(id, slug, deleted_ms) VALUES(?1, ?2, ?3)",
                params![id, slug, now_ms()],
            )?;
            conn.execute("DELETE FROM sources WHERE id = ?1", [id])?;
            let mut retired = retired_ids.write().map_err(|_| StoreError::Closed)?;
            let ids = retired.entry(slug).or_default();
            if !ids.contains(&id) {
                ids.push(id);
            }
            Ok(true)
        })
        .await
    }

    async fn sources(&self) -> Result<Vec<SourceRecord>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT slug, kind, write_key_hash, token_hash, created_ms, config FROM sources ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(SourceRecord {
                    slug: r.get(0)?,
                    kind: r.get(1)?,
                    write_key_hash: r.get(2)?,
                    token_hash: r.get(3)?,
                    created_ms: r.get(4)?,
                    config: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_string();
        self.read(move |conn| {
            Ok(conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn metas_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let prefix = prefix.to_string();
        self.read(move |conn| {
            // `substr` rather than LIKE: a prefix's `_` or `%` is not a wildcard.
            let mut stmt = conn.prepare_cached(
                "SELECT key, value FROM meta WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
            )?;
            let rows = stmt.query_map([prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn put_meta(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_string(), value.to_string());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO meta(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
            Ok(())
        })
        .await
    }

    async fn compact(
        &self,
        now_ms: i64,
        retention_ms: i64,
        destinations: &[String],
    ) -> Result<CompactReport> {
        let recent_ids = self.log.recent_ids.clone();
        let segments = self.log.segments.clone();
        let commit = self.log.commit.clone();
        let cutoff = now_ms - retention_ms;
        let destinations = destinations.to_vec();
        let pending = self.log.pending_index.clone();
        self.heavy_write(move |conn| {
            index_pending(&pending, conn)?;
            keep_last_seq(conn, &commit.pending_head)?;
            // Events are removed only once every destination has passed them.
            let mut floor = u64::MAX;
            for d in &destinations {
                let c: Option<i64> = conn
                    .query_row("SELECT seq FROM cursors WHERE destination = ?1", [d], |r| {
                        r.get(0)
                    })
                    .optional()?;
                floor = floor.min(c.unwrap_or(0) as u64);
            }
            let floor = if floor == u64::MAX {
                i64::MAX
            } else {
                floor as i64
            };
            // Segments no event points at since an earlier, durable round
            // go first: removing a file cannot be rolled back with the
            // deletes below, so their segments go at the next round.
            let oldest: Option<i64> = conn.query_row(
                "SELECT MIN(seg) FROM events WHERE seg IS NOT NULL",
                [],
                |r| r.get(0),
            )?;
            let removed = segments
                .lock()
                .map_err(|_| StoreError::Closed)?
                .remove_before(oldest.map_or(u64::MAX, |s| s as u64))?;
            if removed > 0 {
                tracing::info!(
                    segments = removed,
                    "store: removed event segments past the retention"
                );
            }
            Ok(CompactReport {
                dedup: recent_ids
                    .lock()
                    .map_err(|_| StoreError::Closed)?
                    .expire(now_ms),
                events: conn.execute(
                    "DELETE FROM events WHERE received_ms < ?1 AND seq <= ?2",
                    params![cutoff, floor],
                )? as u64,
                attempts: conn.execute("DELETE FROM attempts WHERE at_ms < ?1", [cutoff])? as u64,
                raw_requests: conn.execute(
                    "DELETE FROM raw_requests WHERE state = 'done' AND received_ms < ?1",
                    [cutoff],
                )? as u64,
                rejections: conn.execute("DELETE FROM rejections WHERE at_ms < ?1", [cutoff])?
                    as u64,
            })
        })
        .await
    }

    async fn append_raw(
        &self,
        source: &str,
        request: Vec<u8>,
        state: &str,
        capture: bool,
    ) -> Result<i64> {
        let source_id = self.source_id(source)?;
        let state = state.to_string();
        self.write(move |conn| {
            let now = now_ms();
            conn.prepare_cached(
                "INSERT INTO raw_requests(source_id, received_ms, request, state, attempts, next_ms) VALUES(?1, ?2, ?3, ?4, 0, ?2)",
            )?
            .execute(params![source_id, now, request, state])?;
            let id = conn.last_insert_rowid();
            if !capture {
                return Ok(id);
            }
            conn.prepare_cached("INSERT INTO captures(source_id, received_ms, request) VALUES(?1, ?2, ?3)")?
                .execute(params![source_id, now, request])?;
            conn.prepare_cached(
                "DELETE FROM captures WHERE source_id = ?1 AND id NOT IN
                 (SELECT id FROM captures WHERE source_id = ?1 ORDER BY id DESC LIMIT ?2)",
            )?
            .execute(params![source_id, CAPTURES_PER_SOURCE as i64])?;
            Ok(id)
        })
        .await
    }

    async fn due_raw(
        &self,
        sources: &[String],
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<RawRecord>> {
        let wanted = self.source_ids_of(sources)?;
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        self.read(move |conn| {
            let ids: Vec<String> = wanted.keys().map(|k| k.to_string()).collect();
            let mut stmt = conn.prepare(&format!(
                "SELECT {RAW_COLUMNS}, source_id FROM raw_requests
                 WHERE state = 'pending' AND next_ms <= ?1 AND source_id IN ({})
                 ORDER BY next_ms, id LIMIT ?2",
                ids.join(",")
            ))?;
            let rows = stmt.query_map(params![now_ms, limit as i64], |r| {
                let source_id: i64 = r.get(7)?;
                row_to_raw(wanted.get(&source_id).map(String::as_str).unwrap_or(""), r)
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn next_raw_ms(&self, sources: &[String]) -> Result<Option<i64>> {
        let wanted = self.source_ids_of(sources)?;
        if wanted.is_empty() {
            return Ok(None);
        }
        self.read(move |conn| {
            let ids: Vec<String> = wanted.keys().map(|k| k.to_string()).collect();
            Ok(conn.query_row(
                &format!(
                    "SELECT MIN(next_ms) FROM raw_requests WHERE state = 'pending' AND source_id IN ({})",
                    ids.join(",")
                ),
                [],
                |r| r.get::<_, Option<i64>>(0),
            )?)
        })
        .await
    }

    async fn complete_raw(
        &self,
        id: i64,
        source: &str,
        events: Vec<NewEvent>,
        objects: Vec<(String, String, serde_json::Value)>,
        logs: Vec<FunctionLog>,
    ) -> Result<AppendReceipt> {
        let source_id = self.source_id(source)?;
        let slug = source.to_string();
        let log = self.event_log();
        self.write(move |conn| {
            let now = now_ms();
            let receipt = insert_events(conn, source_id, events, &log)?;
            let mut upsert = conn.prepare_cached(
                "INSERT INTO objects(source_id, collection, id, properties, updated_ms) VALUES(?1, ?2, ?3, json(?4), ?5)
                 ON CONFLICT(source_id, collection, id) DO UPDATE SET
                   properties = json_patch(objects.properties, excluded.properties), updated_ms = excluded.updated_ms",
            )?;
            for (collection, object_id, properties) in &objects {
                upsert.execute(params![source_id, collection, object_id, properties.to_string(), now])?;
            }
            insert_logs(conn, &slug, &logs)?;
            conn.prepare_cached("UPDATE raw_requests SET state = 'done', last_error = '' WHERE id = ?1")?
                .execute([id])?;
            Ok(receipt)
        })
        .await
    }

    async fn fail_raw(
        &self,
        id: i64,
        source: &str,
        attempts: u32,
        next_ms: Option<i64>,
        error: String,
        logs: Vec<FunctionLog>,
    ) -> Result<()> {
        self.source_id(source)?;
        let slug = source.to_string();
        self.write(move |conn| {
            insert_logs(conn, &slug, &logs)?;
            let (state, next) = match next_ms {
                Some(n) => ("pending", n),
                None => ("dead", now_ms()),
            };
            conn.prepare_cached(
                "UPDATE raw_requests SET state = ?2, attempts = ?3, next_ms = ?4, last_error = ?5 WHERE id = ?1",
            )?
            .execute(params![id, state, attempts, next, error])?;
            Ok(())
        })
        .await
    }

    async fn raw_requests(
        &self,
        source: &str,
        state: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RawRecord>> {
        let source_id = self.source_id(source)?;
        let (slug, state) = (source.to_string(), state.to_string());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {RAW_COLUMNS} FROM raw_requests WHERE source_id = ?1 AND state = ?2 AND id < ?4 ORDER BY id DESC LIMIT ?3"
            ))?;
            let before = before.unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![source_id, state, limit as i64, before], |r| row_to_raw(&slug, r))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn raw_request_count(&self, source: &str, state: &str) -> Result<u64> {
        let source_id = self.source_id(source)?;
        let state = state.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM raw_requests WHERE source_id = ?1 AND state = ?2",
                )?
                .query_row(params![source_id, state], |r| r.get::<_, i64>(0))?
                as u64)
        })
        .await
    }

    async fn replay_raw(&self, source: &str, ids: Option<Vec<i64>>) -> Result<Vec<i64>> {
        let source_id = self.source_id(source)?;
        self.heavy_write(move |conn| {
            let now = now_ms();
            let replayed = match ids {
                Some(ids) => {
                    let mut replayed = Vec::new();
                    for id in ids {
                        if conn.execute(
                            "UPDATE raw_requests SET state = 'pending', attempts = 0, next_ms = ?3
                             WHERE id = ?1 AND source_id = ?2 AND state = 'dead'",
                            params![id, source_id, now],
                        )? > 0
                        {
                            replayed.push(id);
                        }
                    }
                    replayed
                }
                None => conn
                    .prepare(
                        "UPDATE raw_requests SET state = 'pending', attempts = 0, next_ms = ?2
                         WHERE source_id = ?1 AND state = 'dead' RETURNING id",
                    )?
                    .query_map(params![source_id, now], |r| r.get::<_, i64>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            };
            Ok(replayed)
        })
        .await
    }

    async fn captures(&self, source: &str) -> Result<Vec<RawRecord>> {
        let source_id = self.source_id(source)?;
        let slug = source.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, received_ms, request, 'captured', 0, 0, '' FROM captures WHERE source_id = ?1 ORDER BY id DESC",
            )?;
            let rows = stmt.query_map([source_id], |r| row_to_raw(&slug, r))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn function_logs(
        &self,
        owner: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredLog>> {
        let owner = owner.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, at_ms, level, message FROM function_logs
                 WHERE owner = ?1 AND id < ?3 ORDER BY id DESC LIMIT ?2",
            )?;
            let before = before.unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![owner, limit as i64, before], |r| {
                Ok(StoredLog {
                    id: r.get(0)?,
                    log: FunctionLog {
                        at_ms: r.get(1)?,
                        level: r.get(2)?,
                        message: r.get(3)?,
                    },
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn append_logs(&self, owner: &str, logs: Vec<FunctionLog>) -> Result<()> {
        let owner = owner.to_string();
        self.write(move |conn| insert_logs(conn, &owner, &logs))
            .await
    }

    async fn objects(
        &self,
        source: &str,
        collection: Option<String>,
        id: Option<String>,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<StoredObject>> {
        let source_id = self.source_id(source)?;
        self.read(move |conn| {
            // Two statements, not `(?5 IS NULL OR …)`: with the cursor in an
            // OR the primary key's range is not used, and each page would
            // scan the source's objects from the first.
            let (after_collection, after_id) = after.unzip();
            let mut stmt = conn.prepare_cached(if after_collection.is_some() {
                "SELECT collection, id, properties, updated_ms FROM objects
                 WHERE source_id = ?1 AND (?2 IS NULL OR collection = ?2) AND (?3 IS NULL OR id = ?3)
                 AND (collection, id) > (?5, ?6)
                 ORDER BY collection, id LIMIT ?4"
            } else {
                "SELECT collection, id, properties, updated_ms FROM objects
                 WHERE source_id = ?1 AND (?2 IS NULL OR collection = ?2) AND (?3 IS NULL OR id = ?3)
                 AND ?5 IS NULL AND ?6 IS NULL
                 ORDER BY collection, id LIMIT ?4"
            })?;
            let rows = stmt.query_map(params![source_id, collection, id, limit as i64, after_collection, after_id], |r| {
                let props: String = r.get(2)?;
                Ok(StoredObject {
                    collection: r.get(0)?,
                    id: r.get(1)?,
                    properties: serde_json::from_str(&props).unwrap_or(serde_json::Value::Null),
                    updated_ms: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn destinations(&self) -> Result<Vec<(String, String, String)>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT name, config, origin FROM destinations ORDER BY name")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn put_destination(&self, name: &str, config: &str, origin: &str) -> Result<()> {
        let (name, config, origin) = (name.to_string(), config.to_string(), origin.to_string());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO destinations(name, config, origin, updated_ms) VALUES(?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO UPDATE SET config = excluded.config, origin = excluded.origin, updated_ms = excluded.updated_ms",
                params![name, config, origin, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_destination(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.heavy_write(move |conn| {
            // Everything kept under the name goes with it: a destination made
            // later with the same name starts afresh, at the head of the log,
            // instead of inheriting a backlog and dead letters it never had.
            let existed = conn.execute("DELETE FROM destinations WHERE name = ?1", [&name])? > 0;
            let mut rows = 0;
            for table in [
                "cursors",
                "retries",
                "dead_letters",
                "attempts",
                "url_state",
            ] {
                rows += conn.execute(
                    &format!("DELETE FROM {table} WHERE destination = ?1"),
                    [&name],
                )?;
            }
            conn.execute(
                "DELETE FROM function_logs WHERE owner = ?1",
                [format!("destination:{name}")],
            )?;
            // What the start remembers of its URLs (to re-enable changed ones).
            conn.execute(
                "DELETE FROM meta WHERE key = ?1",
                [format!("destination_urls:{name}")],
            )?;
            Ok(existed || rows > 0)
        })
        .await
    }

    async fn save_function(
        &self,
        name: &str,
        kind: &str,
        code: &str,
        settings: &str,
    ) -> Result<u32> {
        let (name, kind, code, settings) = (
            name.to_string(),
            kind.to_string(),
            code.to_string(),
            settings.to_string(),
        );
        self.write(move |conn| {
            let now = now_ms();
            // The function's own declarations are the deployed version's: a
            // version saved but not deployed must not change what runs (nor
            // what a restart loads). Until a first deploy they follow the latest.
            conn.execute(
                "INSERT INTO functions(name, kind, settings, deployed_version, updated_ms) VALUES(?1, ?2, ?3, 0, ?4)
                 ON CONFLICT(name) DO UPDATE SET
                   settings = CASE WHEN deployed_version = 0 THEN excluded.settings ELSE settings END,
                   updated_ms = excluded.updated_ms",
                params![name, kind, settings, now],
            )?;
            let latest: Option<(u32, String, Option<String>)> = conn
                .query_row(
                    "SELECT version, code, settings FROM function_versions WHERE name = ?1 ORDER BY version DESC LIMIT 1",
                    [&name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            match latest {
                Some((v, existing, declared))
                    if existing == code && declared.as_deref().is_none_or(|d| d == settings) =>
                {
                    if declared.is_none() {
                        conn.execute(
                            "UPDATE function_versions SET settings = ?3 WHERE name = ?1 AND version = ?2",
                            params![name, v, settings],
                        )?;
                    }
                    Ok(v)
                }
                other => {
                    let v = other.map_or(1, |(v, _, _)| v + 1);
                    conn.execute(
                        "INSERT INTO function_versions(name, version, code, created_ms, settings) VALUES(?1, ?2, ?3, ?4, ?5)",
                        params![name, v, code, now, settings],
                    )?;
                    Ok(v)
                }
            }
        })
        .await
    }

    async fn functions(&self) -> Result<Vec<FunctionRecord>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT f.name, f.kind, f.settings, COALESCE(MAX(v.version), 0), f.deployed_version, f.updated_ms
                 FROM functions f LEFT JOIN function_versions v ON v.name = f.name GROUP BY f.name ORDER BY f.name",
            )?;
            let rows = stmt.query_map([], |r| {
                let settings: String = r.get(2)?;
                Ok(FunctionRecord {
                    name: r.get(0)?,
                    kind: r.get(1)?,
                    settings: serde_json::from_str(&settings).unwrap_or(serde_json::Value::Null),
                    latest_version: r.get(3)?,
                    deployed_version: r.get(4)?,
                    updated_ms: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn function_version(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<FunctionVersion>> {
        let name = name.to_string();
        self.read(move |conn| {
            let version = match version {
                Some(v) => Some(v),
                None => conn
                    .query_row(
                        "SELECT deployed_version FROM functions WHERE name = ?1",
                        [&name],
                        |r| r.get::<_, u32>(0),
                    )
                    .optional()?,
            };
            let Some(version) = version else {
                return Ok(None);
            };
            let row: Option<(u32, String, Option<String>, Option<String>)> = conn
                .query_row(
                    "SELECT v.version, v.code, v.settings, f.settings FROM function_versions v
                     LEFT JOIN functions f ON f.name = v.name WHERE v.name = ?1 AND v.version = ?2",
                    params![name, version],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            Ok(row.map(|(version, code, own, function)| FunctionVersion {
                version,
                code,
                settings: own
                    .or(function)
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .unwrap_or(serde_json::Value::Null),
            }))
        })
        .await
    }

    async fn function_code(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<(u32, String)>> {
        Ok(self
            .function_version(name, version)
            .await?
            .map(|v| (v.version, v.code)))
    }

    async fn deploy_function(&self, name: &str, version: u32) -> Result<bool> {
        let name = name.to_string();
        self.write(move |conn| {
            let declared: Option<Option<String>> = conn
                .query_row(
                    "SELECT settings FROM function_versions WHERE name = ?1 AND version = ?2",
                    params![name, version],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(declared) = declared else {
                return Ok(false);
            };
            conn.execute(
                "UPDATE functions SET deployed_version = ?2, settings = COALESCE(?4, settings), updated_ms = ?3 WHERE name = ?1",
                params![name, version, now_ms(), declared],
            )?;
            Ok(true)
        })
        .await
    }

    async fn function_versions(&self, name: &str) -> Result<Vec<(u32, i64, usize)>> {
        let name = name.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT version, created_ms, length(code) FROM function_versions WHERE name = ?1 ORDER BY version DESC",
            )?;
            let rows = stmt.query_map([name], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as usize)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn tokens(&self) -> Result<Vec<ApiToken>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, name, hash, read_only, created_ms FROM tokens WHERE revoked_ms IS NULL ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(ApiToken {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    hash: r.get(2)?,
                    read_only: r.get::<_, i64>(3)? != 0,
                    created_ms: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn create_token(&self, name: &str, hash: &str, read_only: bool) -> Result<ApiToken> {
        let (name, hash) = (name.to_string(), hash.to_string());
        self.write(move |conn| {
            let now = now_ms();
            conn.execute(
                "INSERT INTO tokens(name, hash, read_only, created_ms) VALUES(?1, ?2, ?3, ?4)",
                params![name, hash, read_only as i64, now],
            )?;
            Ok(ApiToken {
                id: conn.last_insert_rowid(),
                name,
                hash,
                read_only,
                created_ms: now,
            })
        })
        .await
    }

    async fn revoke_token(&self, id: i64) -> Result<bool> {
        self.write(move |conn| {
            Ok(conn.execute(
                "UPDATE tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id, now_ms()],
            )? > 0)
        })
        .await
    }

    async fn sources_of_user(&self, user_id: &str) -> Result<Vec<String>> {
        let user_id = user_id.to_string();
        let pending = self.log.pending_index.clone();
        let source_ids = self.source_ids.clone();
        self.read(move |conn| {
            let waiting: std::collections::HashSet<i64> = pending
                .lock()
                .map_err(|_| StoreError::Closed)?
                .range(0, u64::MAX, |e| e.user_id.as_deref() == Some(user_id.as_str()))
                .into_iter()
                .map(|e| e.source_id)
                .collect();
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT s.slug FROM events e JOIN sources s ON s.id = e.source_id WHERE e.user_id = ?1",
            )?;
            let rows = stmt.query_map([&user_id], |r| r.get::<_, String>(0))?;
            let mut slugs = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            let ids = source_ids.read().map_err(|_| StoreError::Closed)?;
            for (slug, id) in ids.iter() {
                if waiting.contains(id) && !slugs.contains(slug) {
                    slugs.push(slug.clone());
                }
            }
            Ok(slugs)
        })
        .await
    }

    async fn purge_user(&self, user_id: &str, keep: Vec<String>) -> Result<PurgeReport> {
        let user_id = user_id.to_string();
        let commit = self.log.commit.clone();
        let segments = self.log.segments.clone();
        let pending = self.log.pending_index.clone();
        self.heavy_write(move |conn| {
            index_pending(&pending, conn)?;
            keep_last_seq(conn, &commit.pending_head)?;
            conn.execute_batch("CREATE TEMP TABLE IF NOT EXISTS purge_keep(id TEXT PRIMARY KEY); DELETE FROM purge_keep;")?;
            for id in &keep {
                conn.execute("INSERT OR IGNORE INTO purge_keep(id) VALUES(?1)", [id])?;
            }
            // JSON text of the id as it appears in stored bodies.
            let quoted = serde_json::to_string(&user_id).unwrap_or_default();
            // The records go with the rows: erased in place, so that no copy
            // of the user's events stays on disk.
            let records = {
                let mut stmt = conn.prepare(
                    "SELECT seg, off, len FROM events
                     WHERE user_id = ?1 AND message_id NOT IN (SELECT id FROM purge_keep) AND seg IS NOT NULL",
                )?;
                let rows = stmt.query_map([&user_id], |r| {
                    Ok(Location {
                        segment: r.get::<_, i64>(0)? as u64,
                        offset: r.get::<_, i64>(1)? as u64,
                        len: r.get::<_, i64>(2)? as u64,
                    })
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            let mut report = PurgeReport {
                events: conn.execute(
                    "DELETE FROM events WHERE user_id = ?1 AND message_id NOT IN (SELECT id FROM purge_keep)",
                    [&user_id],
                )? as u64,
                ..Default::default()
            };
            segments.lock().map_err(|_| StoreError::Closed)?.erase(&records)?;
            // A request still waiting for its function was acknowledged and
            // may carry other users' data too: it is run, not dropped (what
            // it emits for this user is stored anew, like an event sent
            // after the deletion). Those run or dead-lettered go.
            report.raw_requests =
                purge_raw(conn, "raw_requests", "state NOT IN ('pending', 'inline')", &user_id)?;
            report.captures = purge_raw(conn, "captures", "1", &user_id)?;
            report.objects = conn.execute("DELETE FROM objects WHERE id = ?1", [&user_id])? as u64;
            // `"userId":"…"` as it appears in the stored JSON, found with
            // `instr`: exact and case-sensitive (`LIKE` ignores ASCII case,
            // so deleting `zed` took `ZED`'s rows too).
            let user_field = format!("\"userId\":{quoted}");
            report.retries = conn.execute(
                "DELETE FROM retries WHERE instr(CAST(body AS TEXT), ?1) > 0
                 AND NOT EXISTS (SELECT 1 FROM purge_keep k WHERE instr(retries.message_ids, k.id) > 0)",
                [&user_field],
            )? as u64;
            report.dead_letters = conn.execute(
                "DELETE FROM dead_letters WHERE instr(CAST(body AS TEXT), ?1) > 0
                 AND NOT EXISTS (SELECT 1 FROM purge_keep k WHERE instr(dead_letters.message_ids, k.id) > 0)",
                [&user_field],
            )? as u64;
            report.rejections = conn.execute(
                "DELETE FROM rejections WHERE instr(excerpt, ?1) > 0",
                [&user_field],
            )? as u64;
            Ok(report)
        })
        .await
    }

    async fn close(&self) {
        let indexer = self.indexer.lock().ok().and_then(|mut g| g.take());
        if let Some((stop, handle)) = indexer {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        let commit = self.log.commit.clone();
        let _ = tokio::task::spawn_blocking(move || commit.close()).await;
        let handle = self.syncer.lock().ok().and_then(|mut g| g.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        let threads = [&self.zeroer, &self.checkpointer];
        for thread in threads {
            let thread = thread.lock().ok().and_then(|mut g| g.take());
            if let Some((stop, handle)) = thread {
                drop(stop);
                let _ = tokio::task::spawn_blocking(move || handle.join()).await;
            }
        }
    }
}

impl Drop for EmbeddedStore {
    /// A store dropped without [`Store::close`] still commits what is open
    /// and stops its threads once the last group is synced.
    fn drop(&mut self) {
        self.log.commit.close();
    }
}

/// Whether `haystack` holds `needle` as a whole value: not as part of a
/// longer id (`zed` is not in `zed2`, `zedd` or `zed-order`), since a
/// raw request is a third party's payload that may name many users.
fn mentions_whole(haystack: &[u8], needle: &[u8]) -> bool {
    // Bytes that continue an id: letters, digits, `_-.@+`, and anything
    // beyond ASCII (part of a letter in UTF-8).
    let continues = |b: u8| b.is_ascii_alphanumeric() || b"_-.@+".contains(&b) || b >= 0x80;
    if needle.is_empty() || haystack.len() < needle.len() {
        return false;
    }
    (0..=haystack.len() - needle.len()).any(|at| {
        haystack[at..].starts_with(needle)
            && (at == 0 || !continues(haystack[at - 1]))
            && haystack
                .get(at + needle.len())
                .is_none_or(|b| !continues(*b))
    })
}

/// Whether a stored raw request (JSON with a base64 `body`) names `user`,
/// as a whole value, in its body, URL or headers.
fn raw_mentions(request: &[u8], user: &str) -> bool {
    use base64::Engine;
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(request) else {
        return false;
    };
    let body = v
        .get("body")
        .and_then(|b| b.as_str())
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default();
    let needle = user.as_bytes();
    mentions_whole(&body, needle)
        || v.get("url")
            .and_then(|u| u.as_str())
            .is_some_and(|u| mentions_whole(u.as_bytes(), needle))
        || v.get("headers")
            .is_some_and(|h| mentions_whole(h.to_string().as_bytes(), needle))
}

/// Deletes the rows of `table` (with `id` and `request` columns, and
/// matching `only`, an SQL condition) whose raw request names `user`.
fn purge_raw(conn: &Connection, table: &str, only: &str, user: &str) -> Result<u64> {
    let ids: Vec<i64> = {
        let mut stmt = conn.prepare(&format!("SELECT id, request FROM {table} WHERE {only}"))?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let mut ids = Vec::new();
        for row in rows {
            let (id, request) = row?;
            if raw_mentions(&request, user) {
                ids.push(id);
            }
        }
        ids
    };
    for id in &ids {
        conn.execute(&format!("DELETE FROM {table} WHERE id = ?1"), [id])?;
    }
    Ok(ids.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-store-{name}-{}-{}",
            std::process::id(),
            now_ms()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn event(id: &str) -> NewEvent {
        NewEvent {
            message_id: id.to_string(),
            user_id: Some("u".into()),
            json: format!(r#"{{"messageId":"{id}"}}"#).into_bytes(),
        }
    }

    async fn source(store: &EmbeddedStore, slug: &str) {
        store
            .put_source(SourceRecord {
                slug: slug.into(),
                kind: "tracking".into(),
                write_key_hash: Some("h".into()),
                token_hash: None,
                created_ms: 0,
                config: None,
            })
            .await
            .unwrap();
    }

    /// The message ids of every event of `source`, in log order.
    async fn stored_ids(store: &EmbeddedStore, source: &str) -> Vec<String> {
        let (events, _) = store
            .read_events(&[source.to_string()], 0, u64::MAX, 100_000)
            .await
            .unwrap();
        events.into_iter().map(|e| e.message_id).collect()
    }

    /// Many tasks on a multi-thread runtime append at once while large jobs
    /// (purges, which run on blocking threads and hold the writer) come and
    /// go: every append is answered, each event is stored once, the head is
    /// published, and the log survives a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_beside_large_jobs_all_land() {
        let dir = temp_dir("concurrent");
        let store = Arc::new(EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap());
        source(&store, "web").await;
        let mut tasks = Vec::new();
        for t in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut stored = 0;
                for i in 0..50 {
                    let events = (0..(1 + i % 3))
                        .map(|k| event(&format!("t{t}-{i}-{k}")))
                        .collect();
                    stored += store.append("web", events, vec![]).await.unwrap().stored;
                }
                stored
            }));
        }
        let purger = {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    store.purge_user("nobody", vec![]).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        };
        let deadline = std::time::Duration::from_secs(60);
        let mut stored = 0;
        for t in tasks {
            stored += tokio::time::timeout(deadline, t)
                .await
                .expect("an append was never answered")
                .unwrap();
        }
        purger.await.unwrap();
        let expected: usize = 16 * (0..50).map(|i| 1 + i % 3).sum::<usize>();
        assert_eq!(stored, expected);
        assert_eq!(*store.subscribe().borrow(), expected as u64);
        let mut ids = stored_ids(&store, "web").await;
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), expected, "each event once");
        store.close().await;

        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        assert_eq!(*store.subscribe().borrow(), expected as u64);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A slug deleted and taken again: the destinations naming it read the
    /// deleted source's events and the new one's, before and after a
    /// reopen, while the new source's own lists show only its events.
    #[tokio::test]
    async fn a_slug_taken_again_keeps_the_deleted_sources_events_for_delivery() {
        let dir = temp_dir("slug-again");
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        source(&store, "web").await;
        store
            .append("web", vec![event("old-1"), event("old-2")], vec![])
            .await
            .unwrap();
        assert!(store.delete_source("web").await.unwrap());
        assert!(!store.delete_source("web").await.unwrap(), "gone already");
        source(&store, "web").await;
        store
            .append("web", vec![event("new-1")], vec![])
            .await
            .unwrap();
        let both = vec!["old-1", "old-2", "new-1"];
        assert_eq!(stored_ids(&store, "web").await, both);
        let recent = store.recent_events("web", None, 10).await.unwrap();
        assert_eq!(recent.len(), 1, "the new source's own events only");
        store.close().await;

        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        assert_eq!(stored_ids(&store, "web").await, both);
        let recent = store.recent_events("web", None, 10).await.unwrap();
        assert_eq!(recent.len(), 1, "the new source's own events only");
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Closing while appends are in flight: each one is either answered as
    /// stored (and is there after a reopen) or refused; none hangs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn close_answers_every_append_in_flight() {
        let dir = temp_dir("close-in-flight");
        let store = Arc::new(EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap());
        source(&store, "web").await;
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for i in 0..200 {
                    let id = format!("c{t}-{i}");
                    match store.append("web", vec![event(&id)], vec![]).await {
                        Ok(r) if r.stored == 1 => acknowledged.push(id),
                        Ok(r) => panic!("unexpected receipt {r:?}"),
                        Err(_) => break,
                    }
                }
                acknowledged
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        store.close().await;
        let mut acknowledged = Vec::new();
        for t in tasks {
            acknowledged.extend(
                tokio::time::timeout(std::time::Duration::from_secs(60), t)
                    .await
                    .expect("an append was never answered")
                    .unwrap(),
            );
        }
        drop(store);

        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        let stored: std::collections::HashSet<_> =
            stored_ids(&store, "web").await.into_iter().collect();
        for id in &acknowledged {
            assert!(
                stored.contains(id),
                "{id} was acknowledged but is not stored"
            );
        }
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn rows(dir: &Path) -> i64 {
        db(dir)
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap()
    }

    /// Waits (10 s at most, else fails with `what`) for the background
    /// indexer to have inserted `count` rows.
    async fn wait_for_rows(dir: &Path, count: i64, what: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while rows(dir) < count {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// With the index rows waiting (an interval longer than the test), the
    /// events are read, deduplicated, listed and found by user all the
    /// same; deleting jobs index them first; and when the process dies
    /// before they are inserted (the store forgotten, not closed), the
    /// next open finds them in the segments, across segment files.
    #[tokio::test]
    async fn events_waiting_for_their_rows_are_found_and_survive_a_crash() {
        let dir = temp_dir("waiting");
        let mut options = EmbeddedOptions::new(&dir);
        options.index_interval = std::time::Duration::from_secs(3600);
        options.segment_bytes = 300;
        // No zeroer thread, which would go on writing into the forgotten
        // store's segment.
        options.fsync = false;
        let store = EmbeddedStore::open(options.clone()).unwrap();
        source(&store, "web").await;
        source(&store, "app").await;
        let ids: Vec<String> = (0..12).map(|i| format!("w{i}")).collect();
        for id in &ids {
            store.append("web", vec![event(id)], vec![]).await.unwrap();
        }
        store
            .append("app", vec![event("a0")], vec![])
            .await
            .unwrap();
        assert!(segment_files(&dir).len() >= 3);
        assert_eq!(rows(&dir), 0, "no row is inserted yet");
        assert_eq!(stored_ids(&store, "web").await, ids);
        let (events, scanned) = store
            .read_events(&["web".into()], 3, u64::MAX, 2)
            .await
            .unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!((seqs, scanned), (vec![4, 5], 5));
        assert_eq!(events[1].json, br#"{"messageId":"w4"}"#);
        let recent = store.recent_events("web", None, 3).await.unwrap();
        let recent: Vec<&str> = recent.iter().map(|e| e.message_id.as_str()).collect();
        assert_eq!(recent, ["w11", "w10", "w9"]);
        let again = store
            .append("web", vec![event("w3"), event("w12")], vec![])
            .await
            .unwrap();
        assert_eq!((again.stored, again.duplicates), (1, 1));
        let mut sources = store.sources_of_user("u").await.unwrap();
        sources.sort();
        assert_eq!(sources, ["app", "web"]);

        // Half indexed, half waiting: each event is read once.
        store.index_now().await.unwrap();
        assert_eq!(rows(&dir), 14);
        for i in 13..16 {
            store
                .append("web", vec![event(&format!("w{i}"))], vec![])
                .await
                .unwrap();
        }
        let all: Vec<String> = (0..16).map(|i| format!("w{i}")).collect();
        assert_eq!(stored_ids(&store, "web").await, all);
        let recent = store.recent_events("web", None, 5).await.unwrap();
        let recent: Vec<&str> = recent.iter().map(|e| e.message_id.as_str()).collect();
        assert_eq!(recent, ["w15", "w14", "w13", "w12", "w11"]);

        // A crash: the last rows were never inserted.
        for i in 16..22 {
            store
                .append("web", vec![event(&format!("w{i}"))], vec![])
                .await
                .unwrap();
        }
        std::mem::forget(store);
        assert_eq!(rows(&dir), 14);
        let store = EmbeddedStore::open(options).unwrap();
        assert_eq!(rows(&dir), 23, "every record is indexed at the open");
        let all: Vec<String> = (0..22).map(|i| format!("w{i}")).collect();
        assert_eq!(stored_ids(&store, "web").await, all);
        assert_eq!(*store.subscribe().borrow(), 23);
        let again = store
            .append("web", vec![event("w20")], vec![])
            .await
            .unwrap();
        assert_eq!(
            again.duplicates, 1,
            "the recovered ids count for deduplication"
        );
        // Deleting jobs see the waiting rows.
        store
            .append("web", vec![event("w22")], vec![])
            .await
            .unwrap();
        let purged = store.purge_user("u", vec![]).await.unwrap();
        assert_eq!(purged.events, 24);
        assert!(stored_ids(&store, "web").await.is_empty());
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// When the rows wait past the limit (the background insert is far
    /// behind, here never due), the appends insert them.
    #[tokio::test]
    async fn appends_insert_the_rows_themselves_when_too_many_wait() {
        let dir = temp_dir("backpressure");
        let mut options = EmbeddedOptions::new(&dir);
        options.index_interval = std::time::Duration::from_secs(3600);
        options.max_waiting_rows = 10;
        let store = EmbeddedStore::open(options).unwrap();
        source(&store, "web").await;
        let batch = |from: usize| (from..from + 6).map(|i| event(&format!("e{i}"))).collect();
        store.append("web", batch(0), vec![]).await.unwrap();
        assert_eq!(rows(&dir), 0, "6 wait: under the limit");
        store.append("web", batch(6), vec![]).await.unwrap();
        assert_eq!(rows(&dir), 12, "12 waited: the append inserted them");
        assert_eq!(stored_ids(&store, "web").await.len(), 12);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The indexer inserts rows in transactions of its own while appends
    /// go on from many tasks: every row another connection can see points
    /// at a record already written to its segment (never at zeros ahead of
    /// the records), and every event ends up with exactly one row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_committed_by_the_indexer_always_point_at_written_records() {
        let dir = temp_dir("indexer-commits");
        let mut options = EmbeddedOptions::new(&dir);
        options.index_interval = std::time::Duration::from_millis(1);
        let store = Arc::new(EmbeddedStore::open(options).unwrap());
        source(&store, "web").await;
        let writers: Vec<_> = (0..8)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..150 {
                        let id = format!("t{task}-{i}");
                        store.append("web", vec![event(&id)], vec![]).await.unwrap();
                    }
                })
            })
            .collect();
        let check = |dir: &Path| -> i64 {
            let conn = db(dir);
            let mut stmt = conn
                .prepare("SELECT seg, off, len, message_id FROM events ORDER BY seq")
                .unwrap();
            let rows: Vec<(i64, i64, i64, String)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            for (seg, off, len, id) in &rows {
                let path = dir.join("events").join(format!("{seg:020}.seg"));
                let file = std::fs::File::open(&path).unwrap();
                let mut record = vec![0u8; *len as usize];
                std::os::unix::fs::FileExt::read_exact_at(&file, &mut record, *off as u64).unwrap();
                let needle = format!(r#"{{"messageId":"{id}"}}"#);
                assert!(
                    record.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "the row of {id} points at a record not written yet"
                );
            }
            rows.len() as i64
        };
        while !writers.iter().all(|w| w.is_finished()) {
            check(&dir);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        for w in writers {
            w.await.unwrap();
        }
        wait_for_rows(&dir, 1200, "the indexer never caught up").await;
        assert_eq!(check(&dir), 1200, "one row per event");
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Rows the indexer cannot insert (here a trigger refuses them) keep
    /// their events readable from memory, and are inserted once the
    /// obstacle is gone.
    #[tokio::test]
    async fn events_whose_rows_cannot_be_inserted_stay_readable_and_are_indexed_later() {
        let dir = temp_dir("index-fails");
        let mut options = EmbeddedOptions::new(&dir);
        options.index_interval = std::time::Duration::from_millis(10);
        let store = EmbeddedStore::open(options).unwrap();
        source(&store, "web").await;
        db(&dir)
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        for id in ["a", "b", "c"] {
            store.append("web", vec![event(id)], vec![]).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(rows(&dir), 0, "the inserts fail");
        assert_eq!(stored_ids(&store, "web").await, ["a", "b", "c"]);
        let (events, _) = store
            .read_events(&["web".into()], 1, u64::MAX, 10)
            .await
            .unwrap();
        assert_eq!(events.len(), 2);
        db(&dir).execute_batch("DROP TRIGGER refuse").unwrap();
        wait_for_rows(&dir, 3, "the rows were never inserted").await;
        assert_eq!(stored_ids(&store, "web").await, ["a", "b", "c"]);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn appends_dedups_and_reads_in_order() {
        let dir = temp_dir("append");
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        source(&store, "web").await;
        source(&store, "app").await;
        let r = store
            .append("web", vec![event("a"), event("b"), event("a")], vec![])
            .await
            .unwrap();
        assert_eq!(
            r,
            AppendReceipt {
                stored: 2,
                duplicates: 1
            }
        );
        store.append("app", vec![event("a")], vec![]).await.unwrap();
        assert_eq!(*store.subscribe().borrow(), 3);
        let (events, upto) = store
            .read_events(&["web".to_string()], 0, 1000, 100)
            .await
            .unwrap();
        assert_eq!(upto, 3);
        let ids: Vec<_> = events.iter().map(|e| e.message_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        store.close().await;

        // Reopened: the log and the dedup index survive.
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        let r = store.append("web", vec![event("b")], vec![]).await.unwrap();
        assert_eq!(r.duplicates, 1);
        assert_eq!(*store.subscribe().borrow(), 3);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Reopened, a store remembers the ids of its dedup window, at most the
    /// newest `dedup_max_ids` of them.
    #[tokio::test]
    async fn reopened_it_remembers_the_newest_ids_of_the_window() {
        let dir = temp_dir("dedup-reopen");
        let options = |max_ids: usize, window_ms: i64| {
            let mut options = EmbeddedOptions::new(&dir);
            options.dedup_max_ids = max_ids;
            options.dedup_window_ms = window_ms;
            options
        };
        let store = EmbeddedStore::open(options(3, 60_000)).unwrap();
        source(&store, "web").await;
        for id in ["a", "b", "c", "d", "e"] {
            store.append("web", vec![event(id)], vec![]).await.unwrap();
        }
        store.close().await;
        let store = EmbeddedStore::open(options(3, 60_000)).unwrap();
        // The newest three first: a duplicate stores nothing, so it evicts
        // nothing either.
        for (id, duplicate) in [("c", 1), ("d", 1), ("e", 1), ("a", 0), ("b", 0)] {
            let receipt = store.append("web", vec![event(id)], vec![]).await.unwrap();
            assert_eq!(receipt.duplicates, duplicate, "{id}");
        }
        store.close().await;
        // Past the window nothing is remembered.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let store = EmbeddedStore::open(options(100, 20)).unwrap();
        let receipt = store.append("web", vec![event("e")], vec![]).await.unwrap();
        assert_eq!(receipt.duplicates, 0);
        store.close().await;
        // The walk back from the newest event stops at the window's edge:
        // the ids after it are remembered, those before it are not.
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        let store = EmbeddedStore::open(options(100, 60_000)).unwrap();
        store.append("web", vec![event("f")], vec![]).await.unwrap();
        store.close().await;
        let store = EmbeddedStore::open(options(100, 1_000)).unwrap();
        for (id, duplicate) in [("f", 1), ("a", 0)] {
            let receipt = store.append("web", vec![event(id)], vec![]).await.unwrap();
            assert_eq!(receipt.duplicates, duplicate, "{id}");
        }
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An id sent again once its window is over is stored: the window is
    /// kept at every append, not only when the store compacts.
    #[tokio::test]
    async fn an_id_sent_again_after_its_window_is_stored() {
        let dir = temp_dir("dedup-window");
        let mut options = EmbeddedOptions::new(&dir);
        options.dedup_window_ms = 200;
        let store = EmbeddedStore::open(options).unwrap();
        source(&store, "web").await;
        let first = store.append("web", vec![event("a")], vec![]).await.unwrap();
        let again = store.append("web", vec![event("a")], vec![]).await.unwrap();
        assert_eq!(
            (first.stored, again.duplicates),
            (1, 1),
            "within the window"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        let later = store.append("web", vec![event("a")], vec![]).await.unwrap();
        assert_eq!((later.stored, later.duplicates), (1, 0), "past the window");
        let twice = store.append("web", vec![event("a")], vec![]).await.unwrap();
        assert_eq!(twice.duplicates, 1, "and remembered again");
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Deleting the newest events (a user's purge, a compaction that takes
    /// every event) must not give their seqs again, before or after a
    /// restart: a destination's cursor has passed them, so an event stored
    /// under a seq given twice would never be delivered.
    #[tokio::test]
    async fn seqs_of_deleted_newest_events_are_never_given_again() {
        let dir = temp_dir("seq-floor");
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        source(&store, "web").await;
        let mut newest = event("b");
        newest.user_id = Some("gone".into());
        store
            .append("web", vec![event("a"), newest], vec![])
            .await
            .unwrap();
        assert_eq!(*store.subscribe().borrow(), 2);
        store.purge_user("gone", vec![]).await.unwrap();
        store.append("web", vec![event("c")], vec![]).await.unwrap();
        assert_eq!(*store.subscribe().borrow(), 3, "seq 2 is not given again");
        store.close().await;

        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        let report = store.compact(now_ms() + 1, 0, &[]).await.unwrap();
        assert_eq!(report.events, 2, "every event is past a zero retention");
        store.close().await;
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        assert_eq!(
            *store.subscribe().borrow(),
            3,
            "the head survives an empty log"
        );
        store.append("web", vec![event("d")], vec![]).await.unwrap();
        let (events, _) = store
            .read_events(&["web".to_string()], 3, u64::MAX, 10)
            .await
            .unwrap();
        let seqs: Vec<_> = events
            .iter()
            .map(|e| (e.seq, e.message_id.as_str()))
            .collect();
        assert_eq!(seqs, [(4, "d")]);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir.join("events"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    fn db(dir: &Path) -> Connection {
        Connection::open(dir.join("switchyard.db")).unwrap()
    }

    /// After a power loss the index may lack its newest rows (its WAL is
    /// synced with the checkpoints, not per group), and may hold rows of a
    /// group whose records never reached the disk. Reopening puts the
    /// former back from the segment and drops the latter.
    #[tokio::test]
    async fn the_index_is_repaired_from_the_newest_segment() {
        let dir = temp_dir("repair");
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        source(&store, "web").await;
        let ids: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        store
            .append("web", ids.iter().map(|id| event(id)).collect(), vec![])
            .await
            .unwrap();
        store.close().await;
        drop(store);
        // The index lost its four newest rows.
        db(&dir)
            .execute("DELETE FROM events WHERE seq > 6", [])
            .unwrap();
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        assert_eq!(
            stored_ids(&store, "web").await,
            ids,
            "every record is indexed again"
        );
        assert_eq!(*store.subscribe().borrow(), 10);
        let (events, _) = store
            .read_events(&["web".into()], 8, u64::MAX, 10)
            .await
            .unwrap();
        assert_eq!(events[0].json, br#"{"messageId":"m8"}"#);
        let again = store
            .append("web", vec![event("m9")], vec![])
            .await
            .unwrap();
        assert_eq!(again.duplicates, 1, "restored ids count for deduplication");
        store.close().await;
        drop(store);

        // The last two records torn: their rows go, the log goes on after them.
        let segment = segment_files(&dir).pop().unwrap();
        let len = std::fs::metadata(&segment).unwrap().len();
        let (off9,): (i64,) = db(&dir)
            .query_row("SELECT off FROM events WHERE seq = 9", [], |r| {
                Ok((r.get(0)?,))
            })
            .unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        file.set_len(off9 as u64 + 5).unwrap();
        assert!(len > off9 as u64 + 5);
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        assert_eq!(stored_ids(&store, "web").await, ids[..8].to_vec());
        store
            .append("web", vec![event("later")], vec![])
            .await
            .unwrap();
        let (events, _) = store
            .read_events(&["web".into()], 0, u64::MAX, 100)
            .await
            .unwrap();
        let last = events.last().unwrap();
        assert_eq!(
            (last.message_id.as_str(), &last.json[..]),
            ("later", &br#"{"messageId":"later"}"#[..])
        );
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A record damaged on disk is skipped by readers (and logged), so the
    /// events after it still reach their destinations.
    #[tokio::test]
    async fn a_damaged_record_is_skipped_not_a_wall() {
        let dir = temp_dir("damaged");
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        source(&store, "web").await;
        store
            .append("web", vec![event("a"), event("b"), event("c")], vec![])
            .await
            .unwrap();
        store.index_now().await.unwrap();
        let (off, len): (i64, i64) = db(&dir)
            .query_row("SELECT off, len FROM events WHERE seq = 2", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        let segment = segment_files(&dir).pop().unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[(off + len - 2) as usize] ^= 0x55;
        std::fs::write(&segment, &bytes).unwrap();
        assert_eq!(stored_ids(&store, "web").await, ["a", "c"]);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A user's deletion leaves no copy of their events in the segments,
    /// and events stored before segments existed (body in the row) are
    /// still read.
    #[tokio::test]
    async fn purged_events_are_erased_from_the_segments_and_old_rows_still_read() {
        let dir = temp_dir("erase");
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        source(&store, "web").await;
        let secret = NewEvent {
            message_id: "s1".into(),
            user_id: Some("gone@example.com".into()),
            json: br#"{"userId":"gone@example.com","event":"Secret"}"#.to_vec(),
        };
        store
            .append("web", vec![event("a"), secret, event("b")], vec![])
            .await
            .unwrap();
        store.index_now().await.unwrap();
        db(&dir)
            .execute(
                "INSERT INTO events(seq, source_id, message_id, user_id, received_ms, body) SELECT 100, source_id, 'legacy', 'u', 0, X'7B7D' FROM events LIMIT 1",
                [],
            )
            .unwrap();
        store.close().await;
        drop(store);
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        assert_eq!(*store.subscribe().borrow(), 100);
        let report = store.purge_user("gone@example.com", vec![]).await.unwrap();
        assert_eq!(report.events, 1);
        for file in segment_files(&dir) {
            let bytes = std::fs::read(file).unwrap();
            assert!(!String::from_utf8_lossy(&bytes).contains("gone@example.com"));
        }
        assert_eq!(stored_ids(&store, "web").await, ["a", "b", "legacy"]);
        let recent = store.recent_events("web", None, 10).await.unwrap();
        assert_eq!(recent[0].json, b"{}");
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A user's deletion takes the raw requests that name the user as a
    /// whole value, not those of users whose ids merely contain it, and
    /// not requests still waiting for their function (acknowledged, and
    /// perhaps carrying other users' data too).
    #[tokio::test]
    async fn a_deletion_takes_only_the_raw_requests_that_name_the_user() {
        let dir = temp_dir("purge-raw");
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        source(&store, "hook").await;
        let raw = |body: &str| {
            use base64::Engine;
            serde_json::json!({
                "method": "POST",
                "url": "https://switchyard.example/functions/hook",
                "headers": [["content-type", "application/json"]],
                "body": base64::engine::general_purpose::STANDARD.encode(body),
            })
            .to_string()
            .into_bytes()
        };
        let mut ids = std::collections::HashMap::new();
        for (name, body, state) in [
            ("zed", r#"[{"customer":"zed","total":3}]"#, "done"),
            ("zed, dead", r#"{"user":"zed"}"#, "dead"),
            ("zed, form", "customer=zed&total=3", "done"),
            (
                "zed, waiting",
                r#"[{"customer":"zed"},{"customer":"kim"}]"#,
                "pending",
            ),
            ("zed2", r#"[{"customer":"zed2"}]"#, "done"),
            ("zedd", r#"{"user":"zedd"}"#, "dead"),
            (
                "zed-order",
                r#"[{"order_id":"zed-order","customer":"kim"}]"#,
                "done",
            ),
            ("ZED", r#"{"user":"ZED"}"#, "done"),
            ("zed@example.com", r#"{"email":"zed@example.com"}"#, "done"),
        ] {
            let id = store
                .append_raw("hook", raw(body), state, true)
                .await
                .unwrap();
            ids.insert(name, id);
        }
        let report = store.purge_user("zed", vec![]).await.unwrap();
        assert_eq!(report.raw_requests, 3, "{report:?}");
        let left: Vec<i64> = db(&dir)
            .prepare("SELECT id FROM raw_requests ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let mut kept: Vec<i64> = [
            "zed, waiting",
            "zed2",
            "zedd",
            "zed-order",
            "ZED",
            "zed@example.com",
        ]
        .iter()
        .map(|n| ids[n])
        .collect();
        kept.sort();
        assert_eq!(left, kept);
        // Captures are copies for debugging: every one naming the user goes.
        assert_eq!(report.captures, 4);
        // Dead letters by the exact, case-sensitive `userId` of their body.
        for (n, body) in [
            r#"{"userId":"zed"}"#,
            r#"{"userId":"ZED"}"#,
            r#"{"userId":"zed2"}"#,
        ]
        .iter()
        .enumerate()
        {
            db(&dir)
                .execute(
                    "INSERT INTO dead_letters(destination, message_ids, body, webhook_id, attempts, first_ms, failed_ms, last_error, response_excerpt)
                     VALUES('hook', ?1, ?2, 'w', 1, 0, 0, '', '')",
                    params![format!("m{n}"), body.as_bytes()],
                )
                .unwrap();
        }
        let report = store.purge_user("zed", vec![]).await.unwrap();
        assert_eq!(report.dead_letters, 1);
        let bodies: Vec<Vec<u8>> = db(&dir)
            .prepare("SELECT body FROM dead_letters ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            bodies,
            [
                br#"{"userId":"ZED"}"#.to_vec(),
                br#"{"userId":"zed2"}"#.to_vec()
            ]
        );
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn whole_values_are_told_from_parts_of_longer_ids() {
        for (haystack, found) in [
            (r#"{"u":"zed"}"#, true),
            ("zed", true),
            ("a=zed&b=1", true),
            ("/users/zed/orders", true),
            ("zed2", false),
            ("zedd", false),
            ("x-zed", false),
            ("zed.example", false),
            ("zedé", false),
            ("azed", false),
        ] {
            assert_eq!(
                mentions_whole(haystack.as_bytes(), b"zed"),
                found,
                "{haystack}"
            );
        }
        assert!(!mentions_whole(b"zed", b""));
    }

    /// Retention removes whole segments once no event points into them,
    /// one compaction after their events went.
    #[tokio::test]
    async fn compaction_removes_segments_no_event_points_into() {
        let dir = temp_dir("segments");
        let mut options = EmbeddedOptions::new(&dir);
        options.segment_bytes = 300;
        let store = EmbeddedStore::open(options.clone()).unwrap();
        source(&store, "web").await;
        for i in 0..12 {
            store
                .append("web", vec![event(&format!("e{i}"))], vec![])
                .await
                .unwrap();
        }
        let before = segment_files(&dir).len();
        assert!(before >= 3, "{before} segments");
        let now = now_ms() + 1000;
        let first = store.compact(now, 0, &[]).await.unwrap();
        assert_eq!(first.events, 12);
        assert_eq!(
            segment_files(&dir).len(),
            before,
            "files go at the next round"
        );
        store.compact(now, 0, &[]).await.unwrap();
        assert_eq!(
            segment_files(&dir).len(),
            1,
            "only the active segment is left"
        );
        store
            .append("web", vec![event("after")], vec![])
            .await
            .unwrap();
        store.close().await;
        let store = EmbeddedStore::open(options).unwrap();
        assert_eq!(stored_ids(&store, "web").await, ["after"]);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn ids_past_the_window_are_stored_again() {
        let dir = temp_dir("window");
        let mut options = EmbeddedOptions::new(&dir);
        options.dedup_window_ms = 60_000;
        let store = EmbeddedStore::open(options).unwrap();
        source(&store, "web").await;
        store.append("web", vec![event("a")], vec![]).await.unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        let report = store.compact(now, i64::MAX / 4, &[]).await.unwrap();
        assert_eq!(report.dedup, 0, "still inside the window");
        let r = store.append("web", vec![event("a")], vec![]).await.unwrap();
        assert_eq!(r.duplicates, 1);
        let report = store
            .compact(now + 120_000, i64::MAX / 4, &[])
            .await
            .unwrap();
        assert_eq!(report.dedup, 1);
        let r = store.append("web", vec![event("a")], vec![]).await.unwrap();
        assert_eq!(r.stored, 1, "past the window the id is new again");
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn raw_requests_flow_and_objects_merge() {
        let dir = temp_dir("raw");
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        source(&store, "hook").await;
        let slugs = vec!["hook".to_string()];
        for i in 0..12 {
            store
                .append_raw(
                    "hook",
                    format!("{{\"n\":{i}}}").into_bytes(),
                    "pending",
                    true,
                )
                .await
                .unwrap();
        }
        assert_eq!(
            store.captures("hook").await.unwrap().len(),
            CAPTURES_PER_SOURCE
        );
        let due = store.due_raw(&slugs, now_ms() + 1, 100).await.unwrap();
        assert_eq!(due.len(), 12);
        let obj = |p: serde_json::Value| vec![("rooms".to_string(), "r1".to_string(), p)];
        store
            .complete_raw(
                due[0].id,
                "hook",
                vec![event("m1")],
                obj(serde_json::json!({"a": 1, "b": 2})),
                vec![],
            )
            .await
            .unwrap();
        store
            .complete_raw(
                due[1].id,
                "hook",
                vec![],
                obj(serde_json::json!({"b": 3, "c": 4})),
                vec![],
            )
            .await
            .unwrap();
        let objects = store
            .objects("hook", Some("rooms".into()), None, None, 10)
            .await
            .unwrap();
        assert_eq!(
            objects[0].properties,
            serde_json::json!({"a": 1, "b": 3, "c": 4})
        );
        store
            .fail_raw(
                due[2].id,
                "hook",
                5,
                None,
                "boom".into(),
                vec![FunctionLog {
                    at_ms: 1,
                    level: "error".into(),
                    message: "boom".into(),
                }],
            )
            .await
            .unwrap();
        let dead = store.raw_requests("hook", "dead", None, 10).await.unwrap();
        assert_eq!((dead.len(), dead[0].last_error.as_str()), (1, "boom"));
        assert_eq!(store.raw_request_count("hook", "dead").await.unwrap(), 1);
        assert_eq!(
            store.function_logs("hook", None, 10).await.unwrap()[0]
                .log
                .message,
            "boom"
        );
        assert_eq!(
            store
                .due_raw(&slugs, now_ms() + 1, 100)
                .await
                .unwrap()
                .len(),
            9
        );
        assert_eq!(store.replay_raw("hook", None).await.unwrap(), [dead[0].id]);
        assert_eq!(
            store
                .due_raw(&slugs, now_ms() + 1, 100)
                .await
                .unwrap()
                .len(),
            10
        );
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn unknown_source_is_refused() {
        let dir = temp_dir("unknown");
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        let err = store
            .append("nope", vec![event("a")], vec![])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::UnknownSource(_)));
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn delivery_commit_moves_cursor_and_schedules() {
        let dir = temp_dir("commit");
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        source(&store, "web").await;
        assert_eq!(store.init_cursor("hook").await.unwrap(), 0);
        store.append("web", vec![event("a")], vec![]).await.unwrap();
        let ids = store
            .commit_delivery(DeliveryCommit {
                destination: "hook".into(),
                cursor: Some(1),
                retries: vec![RetryEntry {
                    id: 0,
                    destination: "hook".into(),
                    url: None,
                    message_ids: vec!["a".into()],
                    body: b"{}".to_vec(),
                    webhook_id: "msg_a".into(),
                    attempts: 1,
                    first_attempt_ms: 10,
                    next_attempt_ms: 20,
                    last_status: Some(500),
                    last_error: "HTTP 500".into(),
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(ids.len(), 1);
        assert_eq!(store.cursor("hook").await.unwrap(), Some(1));
        assert!(store.due_retries("hook", 19, 10).await.unwrap().is_empty());
        let due = store.due_retries("hook", 20, 10).await.unwrap();
        assert_eq!(due[0].message_ids, ["a"]);
        assert_eq!(store.backlog("hook").await.unwrap(), 0);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_dead_letter_id_is_never_given_twice() {
        let dir = temp_dir("dead-ids");
        let dead_letter = |n: &str| DeadLetter {
            id: 0,
            destination: "hook".into(),
            url: None,
            message_ids: vec![n.into()],
            body: b"{}".to_vec(),
            webhook_id: format!("msg_{n}"),
            attempts: 3,
            first_attempt_ms: 10,
            failed_ms: 20,
            last_status: Some(400),
            last_error: "HTTP 400".into(),
            response_excerpt: String::new(),
        };
        let bury = |n: &'static str| DeliveryCommit {
            destination: "hook".into(),
            dead_letters: vec![dead_letter(n)],
            ..Default::default()
        };
        let ids = |letters: Vec<DeadLetter>| letters.iter().map(|d| d.id).collect::<Vec<_>>();
        {
            let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
            store.commit_delivery(bury("a")).await.unwrap();
            store.commit_delivery(bury("b")).await.unwrap();
            assert_eq!(
                ids(store.dead_letters("hook", None, 10).await.unwrap()),
                [1, 2]
            );
            // The newest goes: its id would be the next one SQLite hands out.
            let newest = Selection {
                ids: Some(vec![2]),
                ..Default::default()
            };
            assert_eq!(
                store.discard_dead_letters("hook", newest).await.unwrap(),
                [2]
            );
            store.commit_delivery(bury("c")).await.unwrap();
            assert_eq!(
                ids(store.dead_letters("hook", None, 10).await.unwrap()),
                [1, 3]
            );
            // Paged by the last id seen.
            assert_eq!(
                ids(store.dead_letters("hook", Some(1), 10).await.unwrap()),
                [3]
            );
            assert_eq!(
                store
                    .replay_dead_letters("hook", Selection::default())
                    .await
                    .unwrap(),
                [1, 3]
            );
            store.close().await;
        }
        // Emptied, and reopened: the ids still go on from the highest given.
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        store.commit_delivery(bury("d")).await.unwrap();
        assert_eq!(
            ids(store.dead_letters("hook", None, 10).await.unwrap()),
            [4]
        );
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_saved_version_does_not_change_the_deployed_versions_declarations() {
        let dir = temp_dir("function-versions");
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        let v1 = r#"{"settings":[{"name":"apiKey"}]}"#;
        let v2 = r#"{"settings":[{"name":"apiKey"},{"name":"region","required":true}]}"#;
        assert_eq!(
            store.save_function("f", "source", "one", v1).await.unwrap(),
            1
        );
        assert!(store.deploy_function("f", 1).await.unwrap());
        assert_eq!(
            store.save_function("f", "source", "two", v2).await.unwrap(),
            2
        );
        let deployed = store.function_version("f", None).await.unwrap().unwrap();
        assert_eq!((deployed.version, deployed.code.as_str()), (1, "one"));
        assert_eq!(deployed.settings["settings"].as_array().unwrap().len(), 1);
        let record = &store.functions().await.unwrap()[0];
        assert_eq!(record.settings["settings"].as_array().unwrap().len(), 1);
        let latest = store.function_version("f", Some(2)).await.unwrap().unwrap();
        assert_eq!(latest.settings["settings"].as_array().unwrap().len(), 2);
        // The same code with other declarations is a version of its own.
        assert_eq!(
            store.save_function("f", "source", "two", v1).await.unwrap(),
            3
        );
        assert_eq!(
            store.save_function("f", "source", "two", v1).await.unwrap(),
            3
        );
        assert!(store.deploy_function("f", 2).await.unwrap());
        let record = &store.functions().await.unwrap()[0];
        assert_eq!(record.deployed_version, 2);
        assert_eq!(record.settings["settings"].as_array().unwrap().len(), 2);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Newest-first lists page by a unique key: rows of one millisecond (a
    /// batch's rejections, a run's log lines) are each seen once while new
    /// rows arrive between pages, and none of the new ones is mixed in.
    #[tokio::test]
    async fn newest_first_lists_page_by_a_unique_key_while_rows_arrive() {
        let dir = temp_dir("paging");
        let mut options = EmbeddedOptions::new(&dir);
        // Events wait for their rows until `index_now`: pages merge both.
        options.index_interval = std::time::Duration::from_secs(3600);
        let store = EmbeddedStore::open(options).unwrap();
        source(&store, "web").await;
        let rejection = |n: usize| Rejection {
            index: n,
            field: None,
            reason: format!("r{n}"),
            excerpt: String::new(),
        };
        let log = |n: usize| FunctionLog {
            at_ms: 5,
            level: "info".into(),
            message: format!("l{n}"),
        };
        let old: Vec<String> = (0..30).map(|i| format!("e{i}")).collect();
        for (i, id) in old.iter().enumerate() {
            store.append("web", vec![event(id)], vec![]).await.unwrap();
            if i == 14 {
                store.index_now().await.unwrap();
            }
        }
        store
            .append("web", vec![], (0..23).map(rejection).collect())
            .await
            .unwrap();
        store
            .append_logs("destination:d", (0..23).map(log).collect())
            .await
            .unwrap();
        let mut dead = Vec::new();
        for i in 0..23 {
            dead.push(
                store
                    .append_raw("web", format!("{i}").into_bytes(), "dead", false)
                    .await
                    .unwrap(),
            );
        }

        let mut events = Vec::new();
        let mut before = None;
        for round in 0.. {
            let page = store.recent_events("web", before, 7).await.unwrap();
            let new = format!("new{round}");
            store
                .append("web", vec![event(&new)], vec![])
                .await
                .unwrap();
            if round == 2 {
                store.index_now().await.unwrap();
            }
            events.extend(page.iter().map(|e| e.message_id.clone()));
            match page.last() {
                Some(last) if page.len() == 7 => before = Some(last.seq),
                _ => break,
            }
        }
        let expected: Vec<String> = old.iter().rev().cloned().collect();
        assert_eq!(events, expected);

        let mut rejections = Vec::new();
        let mut before = None;
        loop {
            let page = store.rejections("web", before, 7).await.unwrap();
            store
                .append("web", vec![], vec![rejection(99)])
                .await
                .unwrap();
            rejections.extend(page.iter().map(|r| r.rejection.reason.clone()));
            match page.last() {
                Some(last) if page.len() == 7 => before = Some(last.id),
                _ => break,
            }
        }
        let expected: Vec<String> = (0..23).rev().map(|n| format!("r{n}")).collect();
        assert_eq!(rejections, expected);

        let mut logs = Vec::new();
        let mut before = None;
        loop {
            let page = store
                .function_logs("destination:d", before, 7)
                .await
                .unwrap();
            store
                .append_logs("destination:d", vec![log(99)])
                .await
                .unwrap();
            logs.extend(page.iter().map(|l| l.log.message.clone()));
            match page.last() {
                Some(last) if page.len() == 7 => before = Some(last.id),
                _ => break,
            }
        }
        let expected: Vec<String> = (0..23).rev().map(|n| format!("l{n}")).collect();
        assert_eq!(logs, expected);

        let mut raw = Vec::new();
        let mut before = None;
        loop {
            let page = store.raw_requests("web", "dead", before, 7).await.unwrap();
            store
                .append_raw("web", b"new".to_vec(), "dead", false)
                .await
                .unwrap();
            raw.extend(page.iter().map(|r| r.id));
            match page.last() {
                Some(last) if page.len() == 7 => before = Some(last.id),
                _ => break,
            }
        }
        dead.reverse();
        assert_eq!(raw, dead);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Objects page in key order: upserts keep an object where it is, and
    /// new keys after the cursor are met once like the rest.
    #[tokio::test]
    async fn objects_page_by_key_while_they_change() {
        let dir = temp_dir("objects-paging");
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        source(&store, "hook").await;
        let set = |keys: Vec<(String, String)>, n: i64| {
            let store = &store;
            async move {
                let id = store
                    .append_raw("hook", b"{}".to_vec(), "pending", false)
                    .await
                    .unwrap();
                let objects = keys
                    .into_iter()
                    .map(|(c, i)| (c, i, serde_json::json!({ "n": n })))
                    .collect();
                store
                    .complete_raw(id, "hook", vec![], objects, vec![])
                    .await
                    .unwrap();
            }
        };
        let key = |c: &str, i: usize| (c.to_string(), format!("{i:02}"));
        let old: Vec<(String, String)> = ["a", "b", "b/c"]
            .iter()
            .flat_map(|c| (0..8).map(move |i| key(c, i)))
            .collect();
        set(old.clone(), 0).await;
        let mut seen = Vec::new();
        let mut after = None;
        for round in 0.. {
            let page = store
                .objects("hook", None, None, after.clone(), 5)
                .await
                .unwrap();
            // Every old object changed, and a new one before the cursor
            // (never met) and one at the end (met once).
            set(old.clone(), round + 1).await;
            set(vec![key("A", round as usize)], 0).await;
            if round < 3 {
                set(vec![key("z", round as usize)], 0).await;
            }
            seen.extend(page.iter().map(|o| (o.collection.clone(), o.id.clone())));
            match page.last() {
                Some(last) if page.len() == 5 => {
                    after = Some((last.collection.clone(), last.id.clone()))
                }
                _ => break,
            }
        }
        let mut expected = old.clone();
        expected.extend((0..3).map(|i| key("z", i)));
        assert_eq!(seen, expected);
        // With a collection, pages stay in it.
        let page = store
            .objects("hook", Some("b".into()), None, Some(key("b", 5)), 10)
            .await
            .unwrap();
        let ids: Vec<&str> = page.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, ["06", "07"]);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A directory written before the paging indexes gets them at its next
    /// open, keeps its format and its rows.
    #[tokio::test]
    async fn a_directory_without_the_paging_indexes_gets_them_at_open() {
        let dir = temp_dir("indexes");
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        source(&store, "web").await;
        let rejection = Rejection {
            index: 0,
            field: None,
            reason: "r".into(),
            excerpt: String::new(),
        };
        store.append("web", vec![], vec![rejection]).await.unwrap();
        store.close().await;
        drop(store);
        let indexes = |dir: &Path| -> Vec<String> {
            let conn = db(dir);
            let mut stmt = conn
                .prepare(
                    "SELECT name FROM sqlite_master WHERE type = 'index'
                     AND name IN ('rejections_source', 'raw_requests_source') ORDER BY name",
                )
                .unwrap();
            let names = stmt
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<Vec<String>>>()
                .unwrap();
            names
        };
        assert_eq!(indexes(&dir), ["raw_requests_source", "rejections_source"]);
        db(&dir)
            .execute_batch("DROP INDEX rejections_source; DROP INDEX raw_requests_source;")
            .unwrap();
        assert!(indexes(&dir).is_empty());
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        assert_eq!(indexes(&dir), ["raw_requests_source", "rejections_source"]);
        assert_eq!(
            store.get_meta("store_format").await.unwrap().as_deref(),
            Some("2")
        );
        assert_eq!(store.rejections("web", None, 10).await.unwrap().len(), 1);
        // The pages use them rather than a scan of the whole table.
        let plan: String = db(&dir)
            .query_row(
                "EXPLAIN QUERY PLAN SELECT id FROM rejections
                 WHERE source_id = 1 AND id < 5 ORDER BY id DESC LIMIT 3",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("rejections_source"), "{plan}");
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_data_directory_of_a_newer_format_is_refused_not_half_read() {
        let dir = temp_dir("format");
        let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).unwrap();
        store.close().await;
        db(&dir)
            .execute(
                "UPDATE meta SET value = '99' WHERE key = 'store_format'",
                [],
            )
            .unwrap();
        let err = EmbeddedStore::open(EmbeddedOptions::new(&dir))
            .err()
            .expect("refused");
        assert!(
            matches!(
                err,
                StoreError::NewerFormat {
                    found: 99,
                    known: STORE_FORMAT
                }
            ),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
