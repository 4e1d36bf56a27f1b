//! Storage for switchyard: the append-only event log, per-destination cursors,
//! the retry schedule, dead letters, delivery attempts and configuration.
//!
//! [`Store`] is the one trait every backend implements; [`embedded`] is the
//! default backend (SQLite in WAL mode, one directory on disk, group commit).
//! A scale-out backend (NATS JetStream) implements the same trait, so HTTP and
//! delivery code never learn which backend they run on. This crate knows
//! nothing of HTTP or JavaScript.

pub mod embedded;
mod group_commit;
mod pending_index;
mod recent_ids;
pub mod secrets;
mod segments;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::watch;

pub use embedded::{EmbeddedOptions, EmbeddedStore};

/// Errors from a store backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("unknown source {0:?}")]
    UnknownSource(String),
    #[error("the store is shut down")]
    Closed,
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The data directory was written by a newer switchyard.
    #[error("the data directory has store format {found}; this switchyard knows formats up to {known}: run the newer switchyard (or restore a backup made for this one)")]
    NewerFormat { found: i64, known: i64 },
    /// Reading or writing an event segment file (the message names it).
    #[error("event segment: {0}")]
    Segment(#[from] std::io::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A normalized message on its way into the log.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub message_id: String,
    pub user_id: Option<String>,
    /// Compact JSON: exactly what destinations receive.
    pub json: Vec<u8>,
}

/// A message in the log.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Position in the log, strictly increasing.
    pub seq: u64,
    pub source: String,
    pub message_id: String,
    pub received_ms: i64,
    pub json: Vec<u8>,
}

/// A batch item refused by validation, kept so that nothing is dropped silently.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub index: usize,
    pub field: Option<String>,
    pub reason: String,
    /// The start of the refused item, for diagnosis.
    pub excerpt: String,
}

/// A recorded rejection, as listed by the API.
#[derive(Debug, Clone, Serialize)]
pub struct StoredRejection {
    pub id: i64,
    pub source: String,
    pub at_ms: i64,
    #[serde(flatten)]
    pub rejection: Rejection,
}

/// What an append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendReceipt {
    pub stored: usize,
    /// Messages whose `messageId` was already stored within the dedup window.
    pub duplicates: usize,
}

/// One delivery waiting for its next try. `body` is the exact payload (one
/// event, or a JSON array in batch mode); `url` is `None` when every URL of the
/// destination is tried together (the classic first-success rule).
#[derive(Debug, Clone, Serialize)]
pub struct RetryEntry {
    /// 0 for an entry not yet stored.
    pub id: i64,
    pub destination: String,
    pub url: Option<String>,
    pub message_ids: Vec<String>,
    #[serde(skip)]
    pub body: Vec<u8>,
    /// Stable across retries (Standard Webhooks `webhook-id`).
    pub webhook_id: String,
    pub attempts: u32,
    pub first_attempt_ms: i64,
    pub next_attempt_ms: i64,
    pub last_status: Option<u16>,
    pub last_error: String,
}

/// A delivery given up on: kept for inspection and replay.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub destination: String,
    pub url: Option<String>,
    pub message_ids: Vec<String>,
    #[serde(skip)]
    pub body: Vec<u8>,
    pub webhook_id: String,
    pub attempts: u32,
    pub first_attempt_ms: i64,
    pub failed_ms: i64,
    pub last_status: Option<u16>,
    pub last_error: String,
    /// The start of the receiver's last response body.
    pub response_excerpt: String,
}

/// One HTTP attempt (or a deliberate deferral) of one delivery.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// Its row's id, once stored (0 before): newest-first pages go on from
    /// the smallest id seen.
    pub id: i64,
    pub destination: String,
    pub url: String,
    /// The first message of the delivery.
    pub message_id: String,
    pub events: u32,
    pub at_ms: i64,
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
    /// One of [`ATTEMPT_OUTCOMES`].
    pub outcome: String,
}

/// Every outcome an [`Attempt`] can record: webhooks give the first four,
/// destination functions `delivered`, `partial`, `retry`, `dead_letter`,
/// `unsupported` and `dropped`.
pub const ATTEMPT_OUTCOMES: &[&str] = &[
    "delivered",
    "retry",
    "rejected",
    "gone",
    "partial",
    "dead_letter",
    "unsupported",
    "dropped",
];

/// Everything one delivery round changed, written in one transaction so a
/// crash never leaves the cursor ahead of what was resolved.
#[derive(Debug, Clone, Default)]
pub struct DeliveryCommit {
    pub destination: String,
    /// New cursor position: every event up to it is delivered, scheduled or dead.
    pub cursor: Option<u64>,
    pub attempts: Vec<Attempt>,
    /// Inserted when `id == 0`, updated otherwise.
    pub retries: Vec<RetryEntry>,
    pub removed_retries: Vec<i64>,
    pub dead_letters: Vec<DeadLetter>,
    /// URLs switched off (410 Gone): (url, reason).
    pub disabled_urls: Vec<(String, String)>,
}

/// Which dead letters an operation applies to: by id, by failure time, or all.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    pub ids: Option<Vec<i64>>,
    /// Failed at or after (Unix ms).
    pub since_ms: Option<i64>,
    /// Failed before (Unix ms).
    pub until_ms: Option<i64>,
}

/// A source as stored; credentials are hashes only.
#[derive(Debug, Clone, Serialize)]
pub struct SourceRecord {
    pub slug: String,
    pub kind: String,
    #[serde(skip)]
    pub write_key_hash: Option<String>,
    #[serde(skip)]
    pub token_hash: Option<String>,
    pub created_ms: i64,
    /// Function sources: `{"function", "settings", "respond"}` as JSON.
    #[serde(skip)]
    pub config: Option<String>,
}

/// A raw webhook request waiting for (or done with) its source function.
#[derive(Debug, Clone, Serialize)]
pub struct RawRecord {
    pub id: i64,
    pub source: String,
    pub received_ms: i64,
    /// The request as the functions crate serializes it (JSON).
    #[serde(skip)]
    pub request: Vec<u8>,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    /// `pending`, `inline` (being answered by the function), `done`, `dead`.
    pub state: String,
    pub last_error: String,
}

/// One line of a function's output.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionLog {
    pub at_ms: i64,
    pub level: String,
    pub message: String,
}

/// A stored line of a function's output, as listed by the API.
#[derive(Debug, Clone, Serialize)]
pub struct StoredLog {
    /// Unique and increasing: newest-first pages go on from the smallest id
    /// seen, which lines written in the same millisecond cannot share.
    pub id: i64,
    #[serde(flatten)]
    pub log: FunctionLog,
}

/// An object upserted by a source function (`Segment.set`).
#[derive(Debug, Clone, Serialize)]
pub struct StoredObject {
    pub collection: String,
    pub id: String,
    pub properties: serde_json::Value,
    pub updated_ms: i64,
}

/// An API token (digest only).
#[derive(Debug, Clone, Serialize)]
pub struct ApiToken {
    pub id: i64,
    pub name: String,
    #[serde(skip)]
    pub hash: String,
    pub read_only: bool,
    pub created_ms: i64,
}

/// A function kept in the store, with its versions.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionRecord {
    pub name: String,
    /// `source` or `destination`.
    pub kind: String,
    /// The declared settings (and limits) of the deployed version, or of the
    /// latest one while none is deployed, as JSON.
    pub settings: serde_json::Value,
    pub latest_version: u32,
    /// The version that runs; 0 when never deployed.
    pub deployed_version: u32,
    pub updated_ms: i64,
}

/// One saved version of a function.
#[derive(Debug, Clone)]
pub struct FunctionVersion {
    pub version: u32,
    pub code: String,
    /// The declared settings and limits this version was saved with.
    pub settings: serde_json::Value,
}

/// What a compaction removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompactReport {
    pub events: u64,
    pub attempts: u64,
    pub raw_requests: u64,
    pub rejections: u64,
    pub dedup: u64,
}

/// What a user deletion did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    pub events: u64,
    pub raw_requests: u64,
    pub captures: u64,
    pub objects: u64,
    pub retries: u64,
    pub dead_letters: u64,
    pub rejections: u64,
}

/// Captured raw requests kept per source (the webhook catcher).
pub const CAPTURES_PER_SOURCE: usize = 10;

/// The storage trait: one per backend.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends messages of one source (deduplicated by `messageId`) and records
    /// rejected items. Resolves only once durable.
    async fn append(
        &self,
        source: &str,
        events: Vec<NewEvent>,
        rejections: Vec<Rejection>,
    ) -> Result<AppendReceipt>;

    /// The newest committed log position; changes wake delivery workers.
    fn subscribe(&self) -> watch::Receiver<u64>;

    /// Reads events of `sources` after `after`, scanning at most `scan` log
    /// positions. Returns the events and the last position scanned.
    async fn read_events(
        &self,
        sources: &[String],
        after: u64,
        scan: u64,
        limit: usize,
    ) -> Result<(Vec<StoredEvent>, u64)>;

    /// The newest events of a source (the debugger backlog), newest first:
    /// at most `limit`, with positions below `before` when given. Positions
    /// are never given twice and grow with each append, so paging by the
    /// last one seen misses none and repeats none while events arrive.
    async fn recent_events(
        &self,
        source: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>>;

    /// A destination's cursor, `None` if it never ran.
    async fn cursor(&self, destination: &str) -> Result<Option<u64>>;

    /// Applies one delivery round atomically. Returns the ids given to new retries.
    async fn commit_delivery(&self, commit: DeliveryCommit) -> Result<Vec<i64>>;

    /// Retries of a destination due at `now_ms`, oldest first.
    async fn due_retries(
        &self,
        destination: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<RetryEntry>>;

    /// When the next retry of a destination is due.
    async fn next_retry_ms(&self, destination: &str) -> Result<Option<i64>>;

    /// Number of retries waiting for a destination.
    async fn retry_count(&self, destination: &str) -> Result<u64>;

    /// A destination's dead letters, oldest first: at most `limit`, with ids
    /// greater than `after` (ids are never given twice, so paging by the
    /// last id seen misses none and repeats none).
    async fn dead_letters(
        &self,
        destination: &str,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>>;

    /// How many dead letters a destination has.
    async fn dead_letter_count(&self, destination: &str) -> Result<u64>;

    /// Moves dead letters back to the retry schedule, due now. `None` = all of
    /// the destination's. Returns the ids of those requeued, so that a caller
    /// that named ids can tell which matched none.
    async fn replay_dead_letters(
        &self,
        destination: &str,
        selection: Selection,
    ) -> Result<Vec<i64>>;

    /// Deletes dead letters for good. Returns the ids of those deleted.
    async fn discard_dead_letters(
        &self,
        destination: &str,
        selection: Selection,
    ) -> Result<Vec<i64>>;

    /// Attempts, newest first, optionally only those with one outcome.
    /// A destination's attempts, newest first: at most `limit`, with ids
    /// below `before` when given, of one outcome when given.
    async fn attempts(
        &self,
        destination: &str,
        before: Option<i64>,
        limit: usize,
        outcome: Option<String>,
    ) -> Result<Vec<Attempt>>;

    /// A source's rejected batch items, newest first: at most `limit`, with
    /// ids below `before` when given.
    async fn rejections(
        &self,
        source: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredRejection>>;

    /// URLs switched off for a destination: (url, reason).
    async fn disabled_urls(&self, destination: &str) -> Result<Vec<(String, String)>>;

    /// Switches URLs of a destination back on (all when `url` is `None`).
    async fn enable_urls(&self, destination: &str, url: Option<String>) -> Result<()>;

    /// Number of log positions after a destination's cursor (queue depth).
    async fn backlog(&self, destination: &str) -> Result<u64>;

    /// Creates or updates a source. Hashes that are `None` keep the stored ones.
    async fn put_source(&self, source: SourceRecord) -> Result<SourceRecord>;

    /// Removes a source's record and credentials (its stored events stay,
    /// for destinations still delivering them). Returns whether it existed.
    async fn delete_source(&self, slug: &str) -> Result<bool>;

    async fn sources(&self) -> Result<Vec<SourceRecord>>;

    /// Sets a destination's cursor if it has none (new destinations start at the head).
    async fn init_cursor(&self, destination: &str) -> Result<u64>;

    /// Small named values (admin token hash, schema facts).
    async fn get_meta(&self, key: &str) -> Result<Option<String>>;
    async fn put_meta(&self, key: &str, value: &str) -> Result<()>;
    /// Every value whose key starts with `prefix`, in key order.
    async fn metas_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>>;

    /// Removes what has aged out: dedup entries older than the dedup window;
    /// events older than `retention_ms` that every destination in
    /// `destinations` has passed; attempts, finished raw requests and
    /// rejections older than `retention_ms`. Dead letters are kept until
    /// replayed or discarded. Returns what was removed.
    async fn compact(
        &self,
        now_ms: i64,
        retention_ms: i64,
        destinations: &[String],
    ) -> Result<CompactReport>;

    /// Stores a raw webhook request of a function source durably (and in the
    /// source's captures, the 10 most recent kept). Returns its id.
    async fn append_raw(
        &self,
        source: &str,
        request: Vec<u8>,
        state: &str,
        capture: bool,
    ) -> Result<i64>;

    /// Pending raw requests due at `now_ms` for these sources, oldest first.
    async fn due_raw(
        &self,
        sources: &[String],
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<RawRecord>>;

    /// When the next pending raw request of these sources is due.
    async fn next_raw_ms(&self, sources: &[String]) -> Result<Option<i64>>;

    /// A successful run: appends its events, upserts its objects (properties
    /// merged by id), records its logs and marks the request done — atomically.
    async fn complete_raw(
        &self,
        id: i64,
        source: &str,
        events: Vec<NewEvent>,
        objects: Vec<(String, String, serde_json::Value)>,
        logs: Vec<FunctionLog>,
    ) -> Result<AppendReceipt>;

    /// A failed run: records its logs and error; schedules the next try at
    /// `next_ms`, or dead-letters the request when `next_ms` is `None`.
    async fn fail_raw(
        &self,
        id: i64,
        source: &str,
        attempts: u32,
        next_ms: Option<i64>,
        error: String,
        logs: Vec<FunctionLog>,
    ) -> Result<()>;

    /// Raw requests of a source in a state (`dead`, `pending`, …), newest
    /// first: at most `limit`, with ids below `before` when given.
    async fn raw_requests(
        &self,
        source: &str,
        state: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RawRecord>>;

    /// How many raw requests of a source are in a state (`dead`, …).
    async fn raw_request_count(&self, source: &str, state: &str) -> Result<u64>;

    /// Dead raw requests back to pending, due now (all of the source's when
    /// `ids` is `None`). Returns the ids of those requeued.
    async fn replay_raw(&self, source: &str, ids: Option<Vec<i64>>) -> Result<Vec<i64>>;

    /// The source's captured requests, newest first.
    async fn captures(&self, source: &str) -> Result<Vec<RawRecord>>;

    /// Function logs of an owner (a source slug, or `destination:<name>`),
    /// newest first: at most `limit`, with ids below `before` when given.
    async fn function_logs(
        &self,
        owner: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredLog>>;

    /// Appends function logs for an owner (a destination function's runs).
    async fn append_logs(&self, owner: &str, logs: Vec<FunctionLog>) -> Result<()>;

    /// Objects of a source, optionally of one collection and one id, in
    /// (collection, id) order: at most `limit`, after the (collection, id)
    /// `after` when given. An upsert keeps an object's key, so paging by
    /// the last key seen misses none and repeats none while objects change.
    async fn objects(
        &self,
        source: &str,
        collection: Option<String>,
        id: Option<String>,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<StoredObject>>;

    /// Stored destination configurations: (name, JSON, origin `file` or `api`).
    async fn destinations(&self) -> Result<Vec<(String, String, String)>>;
    async fn put_destination(&self, name: &str, config: &str, origin: &str) -> Result<()>;
    /// Returns whether it existed.
    /// Forgets a destination: its configuration, cursor, retries, dead
    /// letters, attempts, URL states and logs. Whether it had any of them.
    async fn delete_destination(&self, name: &str) -> Result<bool>;

    /// Saves code and its declarations (`settings`) as the function's next
    /// version (creating the function); returns the version. Saving the same
    /// code and declarations as the latest is a no-op. The declarations belong
    /// to the version: saving never changes what the deployed version runs with.
    async fn save_function(
        &self,
        name: &str,
        kind: &str,
        code: &str,
        settings: &str,
    ) -> Result<u32>;
    async fn functions(&self) -> Result<Vec<FunctionRecord>>;
    /// A version's code and declarations (`None`: the deployed one).
    async fn function_version(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<FunctionVersion>>;
    /// A version's code (`None`: the deployed one).
    async fn function_code(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<(u32, String)>>;
    /// Makes `version` the one that runs.
    async fn deploy_function(&self, name: &str, version: u32) -> Result<bool>;
    /// (version, created_ms, bytes) of every version, newest first.
    async fn function_versions(&self, name: &str) -> Result<Vec<(u32, i64, usize)>>;

    /// API tokens that are not revoked.
    async fn tokens(&self) -> Result<Vec<ApiToken>>;
    async fn create_token(&self, name: &str, hash: &str, read_only: bool) -> Result<ApiToken>;
    /// Returns whether a token was revoked.
    async fn revoke_token(&self, id: i64) -> Result<bool>;

    /// Sources with stored events of `user_id`.
    async fn sources_of_user(&self, user_id: &str) -> Result<Vec<String>>;

    /// Removes every stored trace of `user_id` (events, raw requests and
    /// captures that mention it, objects with its id, pending retries and dead
    /// letters carrying it), except the events whose ids are in `keep`.
    async fn purge_user(&self, user_id: &str, keep: Vec<String>) -> Result<PurgeReport>;

    /// Waits for pending writes and stops.
    async fn close(&self);
}
