//! The JavaScript sandbox for source and destination functions.
//!
//! Functions run in QuickJS runtimes on a pool of worker threads. A worker
//! keeps warm runtimes per function version and reuses them (recycled every
//! `recycle_after` calls), so an invocation costs microseconds, not a cold
//! start. While an invocation awaits `fetch` or a timer its worker runs
//! others, each in a runtime of its own: a runtime runs one invocation at a
//! time, so its deadline, memory cap and logs are that invocation's. A
//! runtime that timed out, ran out of memory or got stuck is dropped and
//! never reused. Workers take tasks from shared queues (`Scheduler`):
//! source runs first, functions in turn, none holding every slot of a
//! worker. This crate never touches the store: it takes a request or an
//! event and returns what the function emitted, logged and answered.

mod fetch;
mod native;
mod sandbox;

pub use fetch::{error_chain, is_internal, FetchMode, FetchPolicy, MockResponse, RecordedRequest};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Installs the process-wide TLS crypto provider (ring) once.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A function's code, identified by a version derived from its text.
#[derive(Debug, Clone)]
pub struct FunctionCode {
    pub name: String,
    pub source: Arc<str>,
    /// Hex digest of the code: a new version gets fresh runtimes.
    pub version: String,
    /// Shown in stack traces and error line numbers.
    pub file_name: String,
}

impl FunctionCode {
    pub fn new(name: &str, file_name: &str, source: &str) -> FunctionCode {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(source.as_bytes());
        FunctionCode {
            name: name.to_string(),
            source: Arc::from(source),
            version: hex::encode(&digest[..8]),
            file_name: file_name.to_string(),
        }
    }
}

/// Limits of one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock budget of an invocation, `fetch` included (Segment: 1 s).
    pub timeout: Duration,
    /// Memory cap of a runtime.
    pub memory_bytes: usize,
    /// Calls after which a warm runtime is replaced by a fresh one.
    pub recycle_after: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(1),
            memory_bytes: 64 * 1024 * 1024,
            recycle_after: 10_000,
        }
    }
}

/// One line of a function's console output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogLine {
    pub at_ms: i64,
    pub level: String,
    pub message: String,
}

/// An object upserted with `Segment.set`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectSet {
    pub collection: String,
    pub id: String,
    pub properties: Value,
}

/// The raw webhook request a source function receives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RawRequest {
    pub method: String,
    /// Absolute URL, query string included.
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The body exactly as received.
    #[serde(with = "base64_bytes")]
    pub body: Vec<u8>,
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// An HTTP answer chosen by a function (`respond = "function"` sources).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// How an invocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The function threw (or rejected).
    Thrown,
    /// The budget ran out (loop, slow fetch, promise that never settles).
    Timeout,
    /// The memory cap was hit.
    Memory,
    /// A destination function has no handler for the event's type.
    Unsupported,
    /// The sandbox itself failed.
    Internal,
}

/// A failed invocation, as users see it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FunctionError {
    pub kind: ErrorKind,
    pub name: String,
    pub message: String,
    pub line: Option<u32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stack: String,
}

impl FunctionError {
    fn timeout() -> Self {
        FunctionError {
            kind: ErrorKind::Timeout,
            name: "TimeoutError".into(),
            message: "the function exceeded its time budget and was stopped".into(),
            line: None,
            stack: String::new(),
        }
    }
    fn memory() -> Self {
        FunctionError {
            kind: ErrorKind::Memory,
            name: "MemoryError".into(),
            message: "the function exceeded its memory limit and was stopped".into(),
            line: None,
            stack: String::new(),
        }
    }
    fn internal(message: String) -> Self {
        FunctionError {
            kind: ErrorKind::Internal,
            name: "InternalError".into(),
            message,
            line: None,
            stack: String::new(),
        }
    }
}

impl std::fmt::Display for FunctionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.message)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

/// What a source function run produced.
#[derive(Debug, Clone, Default)]
pub struct SourceOutcome {
    /// Messages from `Segment.*` (or the legacy `events`), not yet normalized.
    pub messages: Vec<Value>,
    pub objects: Vec<ObjectSet>,
    pub response: Option<HttpAnswer>,
    pub logs: Vec<LogLine>,
    pub requests: Vec<RecordedRequest>,
    pub error: Option<FunctionError>,
}

/// What a destination function run produced.
#[derive(Debug, Clone, Default)]
pub struct DestinationOutcome {
    /// The handler's return value.
    pub result: Option<Value>,
    /// `onBatch` ran (for an array, or for one event of a type the function
    /// has no handler of its own for): `result` holds per-event statuses.
    pub batch: bool,
    pub logs: Vec<LogLine>,
    pub requests: Vec<RecordedRequest>,
    pub error: Option<FunctionError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Entry {
    Source,
    Destination,
}

impl Entry {
    fn global(self) -> &'static str {
        match self {
            Entry::Source => "__invokeSource",
            Entry::Destination => "__invokeDestination",
        }
    }
}

struct RawOutcome {
    output: Result<Value, FunctionError>,
    logs: Vec<LogLine>,
    requests: Vec<RecordedRequest>,
}

fn decode_answer(v: &Value) -> Option<HttpAnswer> {
    use base64::Engine;
    let status = v.get("status")?.as_u64()? as u16;
    let headers = v
        .get("headers")
        .and_then(|h| serde_json::from_value::<Vec<(String, String)>>(h.clone()).ok())
        .unwrap_or_default();
    let body = v
        .get("body")
        .and_then(Value::as_str)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default();
    Some(HttpAnswer {
        status,
        headers,
        body,
    })
}

/// The message of a thrown value that is not an `Error`. `null` and
/// `undefined` carry none, and "Error: null" reads as an engine failure
/// (it was one, when out of memory: see the sandbox): say what was thrown.
fn no_error_object(shown: &str) -> String {
    match shown {
        "null" | "undefined" => format!("the function threw {shown}, not an Error"),
        other => other.to_string(),
    }
}

fn function_error_from(v: &Value, unsupported: bool) -> FunctionError {
    let get = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (name, mut message, stack) = (get("name"), get("message"), get("stack"));
    let line = v.get("line").and_then(Value::as_u64).map(|l| l as u32);
    // The prelude reports a thrown non-Error as a plain "Error" with no
    // stack; a real Error thrown by the function has its frames.
    if name == "Error" && stack.is_empty() && line.is_none() {
        message = no_error_object(&message);
    }
    FunctionError {
        kind: if unsupported {
            ErrorKind::Unsupported
        } else {
            ErrorKind::Thrown
        },
        name,
        message,
        line,
        stack,
    }
}

fn source_outcome(raw: RawOutcome) -> SourceOutcome {
    let mut out = SourceOutcome {
        logs: raw.logs,
        requests: raw.requests,
        ..Default::default()
    };
    match raw.output {
        Err(e) => out.error = Some(e),
        Ok(v) if v.get("ok") == Some(&Value::Bool(true)) => {
            out.messages = v
                .get("messages")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            out.objects = v
                .get("objects")
                .and_then(|o| serde_json::from_value(o.clone()).ok())
                .unwrap_or_default();
            out.response = v.get("response").and_then(decode_answer);
        }
        Ok(v) => {
            out.error = Some(function_error_from(
                v.get("error").unwrap_or(&Value::Null),
                false,
            ))
        }
    }
    out
}

fn destination_outcome(raw: RawOutcome) -> DestinationOutcome {
    let mut out = DestinationOutcome {
        logs: raw.logs,
        requests: raw.requests,
        ..Default::default()
    };
    match raw.output {
        Err(e) => out.error = Some(e),
        Ok(v) if v.get("ok") == Some(&Value::Bool(true)) => {
            out.result = v.get("result").cloned().filter(|r| !r.is_null());
            out.batch = v.get("batch") == Some(&Value::Bool(true));
        }
        Ok(v) => {
            let unsupported = v.get("unsupported") == Some(&Value::Bool(true));
            out.error = Some(function_error_from(
                v.get("error").unwrap_or(&Value::Null),
                unsupported,
            ));
        }
    }
    out
}

fn run_in(
    sandbox: &mut sandbox::Sandbox,
    entry: Entry,
    payload: &str,
    body: Vec<u8>,
    settings: &str,
    limits: &Limits,
) -> RawOutcome {
    let inv = sandbox.invoke(entry.global(), payload, body, settings, limits.timeout);
    RawOutcome {
        output: inv.output,
        logs: inv.logs,
        requests: inv.requests,
    }
}

/// Runs one invocation on the current thread in a fresh runtime: for tests
/// without side effects and the offline CLI (`fetch` per `mode`).
fn run_once(
    code: &FunctionCode,
    entry: Entry,
    payload: &str,
    body: Vec<u8>,
    settings: &str,
    limits: &Limits,
    mode: FetchMode,
) -> RawOutcome {
    let fetcher = match fetch::Fetcher::new(mode) {
        Ok(f) => Rc::new(f),
        Err(e) => {
            return RawOutcome {
                output: Err(FunctionError::internal(e)),
                logs: vec![],
                requests: vec![],
            }
        }
    };
    match sandbox::Sandbox::new(code, limits, fetcher) {
        Ok(mut sb) => run_in(&mut sb, entry, payload, body, settings, limits),
        Err(e) => RawOutcome {
            output: Err(e),
            logs: vec![],
            requests: vec![],
        },
    }
}

/// Runs a source function once, in a fresh runtime on this thread.
pub fn run_source_once(
    code: &FunctionCode,
    request: &RawRequest,
    settings: &Value,
    limits: &Limits,
    mode: FetchMode,
) -> SourceOutcome {
    let (payload, body) = source_payload(request);
    source_outcome(run_once(
        code,
        Entry::Source,
        &payload,
        body,
        &settings.to_string(),
        limits,
        mode,
    ))
}

/// Runs a destination handler once (an array runs `onBatch`), in a fresh runtime.
pub fn run_destination_once(
    code: &FunctionCode,
    event: &Value,
    settings: &Value,
    limits: &Limits,
    mode: FetchMode,
) -> DestinationOutcome {
    destination_outcome(run_once(
        code,
        Entry::Destination,
        &event.to_string(),
        Vec::new(),
        &settings.to_string(),
        limits,
        mode,
    ))
}

/// Loads code and lists the handlers it defines, or the error that stops it loading.
pub fn inspect(code: &FunctionCode, limits: &Limits) -> Result<Vec<String>, FunctionError> {
    let fetcher = Rc::new(
        fetch::Fetcher::new(FetchMode::Mock(Arc::new(Vec::new())))
            .map_err(FunctionError::internal)?,
    );
    let sb = sandbox::Sandbox::new(code, limits, fetcher)?;
    Ok(sb.handlers())
}

/// A source request as the invocation gets it: its method, URL and headers
/// as JSON, and its body apart (read from the host only when the function
/// reads it).
fn source_payload(request: &RawRequest) -> (String, Vec<u8>) {
    let head = serde_json::json!({
        "method": request.method,
        "url": request.url,
        "headers": request.headers,
    });
    (head.to_string(), request.body.clone())
}

struct Task {
    /// Tells it apart in its queue (see [`Scheduler::withdraw`]).
    id: u64,
    code: Arc<FunctionCode>,
    entry: Entry,
    payload: String,
    body: Vec<u8>,
    settings: String,
    limits: Limits,
    queued_at: Instant,
    reply: oneshot::Sender<RawOutcome>,
}

impl Task {
    fn share(&self) -> Share {
        (self.entry, self.code.name.clone())
    }

    /// The time budget left when a worker starts it. A source run's budget
    /// runs from the moment it is queued: someone may be waiting on it (a
    /// `respond = "function"` sender), and `timeout_ms` is what bounds that
    /// wait. A destination invocation gets its whole budget when it starts:
    /// its wait for a slot is the pool's backpressure on delivery, not the
    /// function's doing.
    fn budget(&self) -> Duration {
        match self.entry {
            Entry::Source => self.limits.timeout.saturating_sub(self.queued_at.elapsed()),
            Entry::Destination => self.limits.timeout,
        }
    }
}

/// `from + by`, or a year on when that is past what an `Instant` holds (a
/// `timeout_ms` as large as a u64 goes is taken, not refused).
fn later(from: Instant, by: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    from.checked_add(by)
        .or_else(|| from.checked_add(YEAR))
        .unwrap_or(from)
}

/// A source run whose budget ran out before a worker could start it.
fn not_started() -> FunctionError {
    FunctionError {
        kind: ErrorKind::Timeout,
        name: "TimeoutError".into(),
        message:
            "the function waited for a free runtime longer than its time budget and did not run"
                .into(),
        line: None,
        stack: String::new(),
    }
}

/// Idle warm runtimes one worker thread keeps, all functions together.
const MAX_WARM_PER_WORKER: usize = 64;

/// Invocations one worker thread runs at once, sources and destinations
/// together. Each holds a runtime of its own (up to the function's memory
/// cap), so this bounds a worker's memory; tasks beyond it wait in the
/// queue, or go to another worker.
pub const MAX_IN_FLIGHT_PER_WORKER: usize = 64;

/// Slots of a worker beyond [`MAX_IN_FLIGHT_PER_WORKER`] that only source
/// runs take: however many destination invocations wait on slow upstreams,
/// a source function's run (a `respond = "function"` answer its sender waits
/// for) starts at once.
pub const SOURCE_SLOTS_PER_WORKER: usize = 16;

/// Invocations of one function one worker runs at once: a quarter of its
/// slots always stay for the others, so one destination with a high
/// `concurrency` and a hanging upstream cannot hold every slot until its
/// invocations time out.
pub const MAX_IN_FLIGHT_PER_FUNCTION: usize = MAX_IN_FLIGHT_PER_WORKER * 3 / 4;

/// Whose turn a task waits for: its function, sources and destinations apart.
type Share = (Entry, String);

/// Tasks of one kind waiting for a worker, by function, served in turn.
#[derive(Default)]
struct Lane {
    waiting: HashMap<Share, std::collections::VecDeque<Task>>,
    /// Functions with tasks waiting, the next to serve first: a function
    /// with hundreds of tasks queued takes one slot, then every other
    /// function waiting takes one, and so on.
    turn: std::collections::VecDeque<Share>,
}

impl Lane {
    fn push(&mut self, task: Task) {
        let share = task.share();
        let queue = self.waiting.entry(share.clone()).or_default();
        if queue.is_empty() {
            self.turn.push_back(share);
        }
        queue.push_back(task);
    }

    /// The next task of the first function in turn that `load` leaves room for.
    fn take(&mut self, load: &Load) -> Option<Task> {
        let at = self
            .turn
            .iter()
            .position(|share| load.of(share) < MAX_IN_FLIGHT_PER_FUNCTION)?;
        let share = self.turn.remove(at)?;
        let queue = self.waiting.get_mut(&share)?;
        let task = queue.pop_front();
        if queue.is_empty() {
            self.waiting.remove(&share);
        } else {
            self.turn.push_back(share);
        }
        task
    }

    fn withdraw(&mut self, share: &Share, id: u64) -> bool {
        let Some(queue) = self.waiting.get_mut(share) else {
            return false;
        };
        let Some(at) = queue.iter().position(|t| t.id == id) else {
            return false;
        };
        queue.remove(at);
        if queue.is_empty() {
            self.waiting.remove(share);
            self.turn.retain(|s| s != share);
        }
        true
    }

    fn is_empty(&self) -> bool {
        self.turn.is_empty()
    }
}

#[derive(Default)]
struct Queues {
    next_id: u64,
    closed: bool,
    sources: Lane,
    destinations: Lane,
}

/// The invocations one worker has in flight, by function.
#[derive(Default)]
struct Load {
    total: usize,
    by_share: HashMap<Share, usize>,
}

impl Load {
    fn of(&self, share: &Share) -> usize {
        self.by_share.get(share).copied().unwrap_or(0)
    }

    fn add(&mut self, share: &Share) {
        self.total += 1;
        *self.by_share.entry(share.clone()).or_insert(0) += 1;
    }

    fn remove(&mut self, share: &Share) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.by_share.get_mut(share) {
            *n -= 1;
            if *n == 0 {
                self.by_share.remove(share);
            }
        }
    }
}

/// What a worker found in the queues.
enum Found {
    Task(Task),
    /// Nothing it may take now.
    Nothing,
    /// Shut down, and nothing is left to run.
    Closed,
}

/// The queues every worker takes tasks from: source runs first (and only
/// they into a worker's [`SOURCE_SLOTS_PER_WORKER`]), each kind's functions
/// in turn, none past [`MAX_IN_FLIGHT_PER_FUNCTION`] on a worker.
#[derive(Default)]
struct Scheduler {
    queues: Mutex<Queues>,
    /// Rung when a task is queued and at shutdown.
    ready: tokio::sync::Notify,
}

impl Scheduler {
    /// Queues a task; its id, or `None` when the pool is shut down (the
    /// task is dropped, and its caller told so).
    fn push(&self, mut task: Task) -> Option<u64> {
        let mut q = self.lock();
        if q.closed {
            return None;
        }
        q.next_id += 1;
        task.id = q.next_id;
        let id = task.id;
        match task.entry {
            Entry::Source => q.sources.push(task),
            Entry::Destination => q.destinations.push(task),
        }
        drop(q);
        // Every worker looks: the first one may have no room for this
        // function while another has.
        self.ready.notify_waiters();
        Some(id)
    }

    /// The queues; a worker that panicked holding them left them whole
    /// (nothing in here panics between two changes), so they are used on.
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self, load: &Load) -> Found {
        let mut q = self.lock();
        loop {
            let task = if load.total < MAX_IN_FLIGHT_PER_WORKER + SOURCE_SLOTS_PER_WORKER {
                q.sources.take(load)
            } else {
                None
            }
            .or_else(|| {
                (load.total < MAX_IN_FLIGHT_PER_WORKER)
                    .then(|| q.destinations.take(load))
                    .flatten()
            });
            match task {
                // Its caller gave up waiting (shutdown, a sender gone):
                // running it would do its work for no one.
                Some(task) if task.reply.is_closed() => continue,
                Some(task) => return Found::Task(task),
                None if q.closed && q.sources.is_empty() && q.destinations.is_empty() => {
                    return Found::Closed
                }
                None => return Found::Nothing,
            }
        }
    }

    /// Takes a task out of its queue if no worker started it yet.
    fn withdraw(&self, share: &Share, id: u64) -> bool {
        let mut q = self.lock();
        match share.0 {
            Entry::Source => q.sources.withdraw(share, id),
            Entry::Destination => q.destinations.withdraw(share, id),
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_waiters();
    }

    /// The next task this worker may take, waiting for one if need be;
    /// `None` once the pool is shut down and nothing is left to run.
    async fn next(&self, load: &Load) -> Option<Task> {
        loop {
            // Listen before looking: a task queued in between still wakes us.
            let rung = self.ready.notified();
            tokio::pin!(rung);
            rung.as_mut().enable();
            match self.take(load) {
                Found::Task(task) => return Some(task),
                Found::Closed => return None,
                Found::Nothing => rung.await,
            }
        }
    }
}

/// Worker threads with warm runtimes.
pub struct Pool {
    scheduler: Arc<Scheduler>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// An invocation in progress on a worker.
struct Active {
    key: String,
    share: Share,
    sandbox: sandbox::Sandbox,
    /// When to poll it next; `None`: at once (just started, or a fetch
    /// answer came in).
    wake: Option<std::time::Instant>,
    reply: oneshot::Sender<RawOutcome>,
}

/// One worker thread's runtimes: the idle warm ones by function, the ones
/// running an invocation, and the fetcher they share.
struct Worker {
    fetcher: Rc<fetch::Fetcher>,
    warm: HashMap<String, Vec<sandbox::Sandbox>>,
    active: Vec<Active>,
    /// `active` counted by function, for the scheduler.
    load: Load,
}

impl Worker {
    /// A warm runtime for `code`, or a new one. Several invocations of one
    /// function in flight at once each get a runtime of their own: a
    /// QuickJS runtime runs one invocation at a time, so its interrupt
    /// handler, memory cap, logs and globals stay that invocation's.
    fn take(
        &mut self,
        code: &FunctionCode,
        limits: &Limits,
    ) -> Result<sandbox::Sandbox, FunctionError> {
        if let Some(idle) = self.warm.get_mut(&code.name) {
            while let Some(sb) = idle.pop() {
                if sb.version == code.version
                    && sb.memory_bytes == limits.memory_bytes
                    && !sb.poisoned
                    && sb.calls < limits.recycle_after
                {
                    return Ok(sb);
                }
            }
        }
        sandbox::Sandbox::new(code, limits, self.fetcher.clone())
    }

    /// Keeps a runtime warm after its invocation, unless it must not be reused.
    fn put_back(&mut self, key: String, sb: sandbox::Sandbox) {
        if sb.poisoned {
            // Never reuse a runtime after a kill.
            return;
        }
        let idle: usize = self.warm.values().map(Vec::len).sum();
        if idle >= MAX_WARM_PER_WORKER {
            // Bounded memory with many functions: drop from the function
            // with the most idle runtimes (rebuilt when needed again).
            if let Some(most) = self
                .warm
                .iter_mut()
                .max_by_key(|(_, v)| v.len())
                .map(|(_, v)| v)
            {
                most.remove(0);
            }
        }
        self.warm.retain(|_, v| !v.is_empty());
        self.warm.entry(key).or_default().push(sb);
    }

    fn begin(&mut self, task: Task) {
        let budget = task.budget();
        if budget.is_zero() {
            let _ = task.reply.send(RawOutcome {
                output: Err(not_started()),
                logs: vec![],
                requests: vec![],
            });
            return;
        }
        let mut sb = match self.take(&task.code, &task.limits) {
            Ok(sb) => sb,
            Err(e) => {
                let _ = task.reply.send(RawOutcome {
                    output: Err(e),
                    logs: vec![],
                    requests: vec![],
                });
                return;
            }
        };
        let started = sb.start(
            task.entry.global(),
            &task.payload,
            task.body,
            &task.settings,
            budget,
        );
        match started {
            Some(inv) => self.end(task.code.name.clone(), sb, task.reply, inv),
            None => {
                let share = (task.entry, task.code.name.clone());
                self.load.add(&share);
                self.active.push(Active {
                    key: task.code.name.clone(),
                    share,
                    sandbox: sb,
                    wake: None,
                    reply: task.reply,
                });
            }
        }
    }

    fn end(
        &mut self,
        key: String,
        sb: sandbox::Sandbox,
        reply: oneshot::Sender<RawOutcome>,
        inv: sandbox::Invocation,
    ) {
        self.put_back(key, sb);
        let _ = reply.send(RawOutcome {
            output: inv.output,
            logs: inv.logs,
            requests: inv.requests,
        });
    }

    /// Hands a fetch answer to the invocation that made it.
    fn route(&mut self, done: fetch::FetchDone) {
        if let Some(a) = self
            .active
            .iter_mut()
            .find(|a| a.sandbox.serial() == done.invocation)
        {
            if a.sandbox.accept_fetch(done) {
                a.wake = None;
            }
        }
    }

    /// Polls every invocation that has something to do.
    fn poll_due(&mut self) {
        // Answers that came in while JavaScript held the thread go to their
        // invocations before anyone's deadline is looked at.
        while let Some(done) = self.fetcher.try_next() {
            self.route(done);
        }
        let now = std::time::Instant::now();
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].wake.is_some_and(|w| w > now) {
                i += 1;
                continue;
            }
            match self.active[i].sandbox.poll() {
                sandbox::Step::Wait(until) => {
                    self.active[i].wake = Some(until);
                    i += 1;
                }
                sandbox::Step::Done(inv) => {
                    let a = self.active.swap_remove(i);
                    self.load.remove(&a.share);
                    self.end(a.key, a.sandbox, a.reply, inv);
                }
            }
        }
    }
}

/// Runs invocations until the pool shuts down. While an invocation waits on
/// `fetch` or a timer, the worker runs others: it sleeps only when every
/// invocation it holds waits, until a fetch is answered, a timer or deadline
/// comes, or a new task arrives.
fn worker(scheduler: Arc<Scheduler>, policy: Arc<FetchPolicy>) {
    let fetcher = match fetch::Fetcher::new(FetchMode::Live(policy)) {
        Ok(f) => Rc::new(f),
        Err(e) => {
            tracing::error!(error = %e, "function worker cannot start");
            return;
        }
    };
    let mut w = Worker {
        fetcher: fetcher.clone(),
        warm: HashMap::new(),
        active: Vec::new(),
        load: Load::default(),
    };
    let mut closed = false;
    loop {
        w.poll_due();
        if closed && w.active.is_empty() {
            return;
        }
        let accept = !closed && w.active.len() < MAX_IN_FLIGHT_PER_WORKER + SOURCE_SLOTS_PER_WORKER;
        let until = w.active.iter().filter_map(|a| a.wake).min();
        let (scheduler, load) = (&scheduler, &w.load);
        let task = async move {
            if accept {
                scheduler.next(load).await
            } else {
                std::future::pending().await
            }
        };
        match fetcher.wait(task, until) {
            fetch::Wake::Fetch(done) => w.route(done),
            fetch::Wake::Other(Some(task)) => w.begin(task),
            fetch::Wake::Other(None) => closed = true,
            fetch::Wake::Timer => {}
        }
    }
}

impl Pool {
    /// Starts `workers` threads; `fetch` follows `policy`.
    pub fn new(workers: usize, policy: FetchPolicy) -> Pool {
        let scheduler = Arc::new(Scheduler::default());
        let policy = Arc::new(policy);
        let threads = (0..workers.max(1))
            .filter_map(|i| {
                let scheduler = scheduler.clone();
                let policy = policy.clone();
                std::thread::Builder::new()
                    .name(format!("function-worker-{i}"))
                    .stack_size(8 * 1024 * 1024)
                    .spawn(move || worker(scheduler, policy))
                    .ok()
            })
            .collect();
        Pool {
            scheduler,
            threads: Mutex::new(threads),
        }
    }

    async fn run(
        &self,
        code: Arc<FunctionCode>,
        entry: Entry,
        payload: String,
        body: Vec<u8>,
        settings: String,
        limits: Limits,
    ) -> RawOutcome {
        let (reply, mut answer) = oneshot::channel();
        let task = Task {
            id: 0,
            code,
            entry,
            payload,
            body,
            settings,
            limits,
            queued_at: Instant::now(),
            reply,
        };
        let (share, deadline) = (task.share(), later(task.queued_at, limits.timeout));
        let failed = |e: FunctionError| RawOutcome {
            output: Err(e),
            logs: vec![],
            requests: vec![],
        };
        let Some(id) = self.scheduler.push(task) else {
            return failed(FunctionError::internal(
                "the function pool is shut down".into(),
            ));
        };
        if entry == Entry::Source {
            // Its sender must hear within the budget even when every slot
            // is taken: past it, a run no worker started is withdrawn. One
            // that started ends at the same deadline, as its own timeout.
            match tokio::time::timeout_at(deadline.into(), &mut answer).await {
                Ok(answered) => {
                    return answered.unwrap_or_else(|_| {
                        failed(FunctionError::internal(
                            "the function worker stopped".into(),
                        ))
                    })
                }
                Err(_) if self.scheduler.withdraw(&share, id) => return failed(not_started()),
                Err(_) => {}
            }
        }
        answer.await.unwrap_or_else(|_| {
            failed(FunctionError::internal(
                "the function worker stopped".into(),
            ))
        })
    }

    pub async fn run_source(
        &self,
        code: Arc<FunctionCode>,
        request: &RawRequest,
        settings: &Value,
        limits: Limits,
    ) -> SourceOutcome {
        let (payload, body) = source_payload(request);
        source_outcome(
            self.run(
                code,
                Entry::Source,
                payload,
                body,
                settings.to_string(),
                limits,
            )
            .await,
        )
    }

    /// Runs the handler for `event`'s type; an array runs `onBatch`.
    pub async fn run_destination(
        &self,
        code: Arc<FunctionCode>,
        event: String,
        settings: &Value,
        limits: Limits,
    ) -> DestinationOutcome {
        destination_outcome(
            self.run(
                code,
                Entry::Destination,
                event,
                Vec::new(),
                settings.to_string(),
                limits,
            )
            .await,
        )
    }

    /// Stops taking tasks; the workers finish the ones queued and in
    /// progress, then stop.
    pub fn shutdown(&self) {
        self.scheduler.close();
        if let Ok(mut threads) = self.threads.lock() {
            for t in threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

/// Builds a request from a fixture of Segment's public functions library:
/// `{"body": …, "headers": {…}, "url": "…"}` or with `"queryParameters": {…}`.
/// A string body is taken as the raw text; anything else is sent as JSON.
pub fn fixture_request(payload: &Value) -> Result<RawRequest, String> {
    const SHAPE: &str = "the payload is a request: {\"body\": … (the request body: an object or a string), \"headers\": {…}, \"url\": \"…\" or \"queryParameters\": {…}, \"method\": \"POST\"}";
    let obj = payload.as_object().ok_or(SHAPE)?;
    // A payload that is the body itself (`{"user": "u1"}`) would run on an
    // empty body without a word: refuse it, naming the shape.
    let unknown: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !["body", "headers", "url", "queryParameters", "method"].contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "{SHAPE}; unknown field{} {} (put the request body under `body`)",
            if unknown.len() == 1 { "" } else { "s" },
            unknown
                .iter()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let body = match obj.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.as_bytes().to_vec(),
        Some(other) => serde_json::to_vec(other).map_err(|e| e.to_string())?,
    };
    let mut headers: Vec<(String, String)> = match obj.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(h)) => h
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Array(items) => items
                        .iter()
                        .map(|i| {
                            i.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| i.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Some(_) => return Err("`headers` must be an object".into()),
    };
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        && !body.is_empty()
    {
        headers.push(("content-type".into(), "application/json".into()));
    }
    let mut url = match obj.get("url") {
        Some(Value::String(u)) => {
            url::Url::parse(u).map_err(|e| format!("invalid `url` {u:?}: {e}"))?
        }
        None | Some(Value::Null) => {
            url::Url::parse("https://localhost/").map_err(|e| e.to_string())?
        }
        Some(_) => return Err("`url` must be a string".into()),
    };
    if let Some(q) = obj.get("queryParameters") {
        let q = q.as_object().ok_or("`queryParameters` must be an object")?;
        let mut pairs = url.query_pairs_mut();
        for (k, v) in q {
            pairs.append_pair(
                k,
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
                    .as_str(),
            );
        }
    }
    Ok(RawRequest {
        method: obj
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("POST")
            .to_string(),
        url: url.to_string(),
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(scheduler: &Scheduler, entry: Entry, name: &str) -> oneshot::Receiver<RawOutcome> {
        let (reply, answer) = oneshot::channel();
        scheduler
            .push(Task {
                id: 0,
                code: Arc::new(FunctionCode::new(name, "f.js", "")),
                entry,
                payload: String::new(),
                body: Vec::new(),
                settings: String::new(),
                limits: Limits::default(),
                queued_at: Instant::now(),
                reply,
            })
            .expect("open");
        answer
    }

    fn next(scheduler: &Scheduler, load: &Load) -> Option<String> {
        match scheduler.take(load) {
            Found::Task(t) => Some(t.code.name.clone()),
            Found::Nothing | Found::Closed => None,
        }
    }

    #[test]
    fn a_budget_past_what_an_instant_holds_is_taken_not_a_panic() {
        let code = FunctionCode::new("f", "f.js", "async function onTrack() { return 1; }");
        let limits = Limits {
            timeout: Duration::from_millis(u64::MAX),
            ..Limits::default()
        };
        let out = run_destination_once(
            &code,
            &serde_json::json!({"type": "track", "event": "e", "userId": "u"}),
            &serde_json::json!({}),
            &limits,
            FetchMode::Mock(Arc::new(Vec::new())),
        );
        assert_eq!(out.result, Some(serde_json::json!(1)), "{:?}", out.error);
    }

    #[test]
    fn sources_go_first_functions_take_turns_and_none_takes_every_slot() {
        let s = Scheduler::default();
        let mut waiting = Vec::new();
        for _ in 0..3 {
            waiting.push(queue(&s, Entry::Destination, "hog"));
        }
        waiting.push(queue(&s, Entry::Destination, "other"));
        waiting.push(queue(&s, Entry::Source, "hook"));
        let gone = queue(&s, Entry::Destination, "gone");
        drop(gone);
        let idle = Load::default();
        let order: Vec<String> = std::iter::from_fn(|| next(&s, &idle)).collect();
        // The source first; then each destination in turn, not in the order
        // queued; a task whose caller gave up is not run.
        assert_eq!(order, ["hook", "hog", "other", "hog", "hog"]);

        for _ in 0..2 {
            waiting.push(queue(&s, Entry::Destination, "hog"));
        }
        waiting.push(queue(&s, Entry::Source, "hook"));
        let mut load = Load::default();
        let hog = (Entry::Destination, "hog".to_string());
        for _ in 0..MAX_IN_FLIGHT_PER_WORKER {
            load.add(&hog);
        }
        // A full worker takes source runs only, into their own slots.
        assert_eq!(next(&s, &load).as_deref(), Some("hook"));
        assert_eq!(next(&s, &load), None);
        // Below the worker's slots, but at its share: not this function.
        for _ in 0..MAX_IN_FLIGHT_PER_WORKER - MAX_IN_FLIGHT_PER_FUNCTION + 1 {
            load.remove(&hog);
        }
        assert_eq!(load.of(&hog), MAX_IN_FLIGHT_PER_FUNCTION - 1);
        assert_eq!(next(&s, &load).as_deref(), Some("hog"));
        load.add(&hog);
        assert_eq!(next(&s, &load), None, "at its share");
        s.close();
        assert!(
            matches!(s.take(&load), Found::Nothing),
            "one is left to run"
        );
        assert_eq!(next(&s, &idle).as_deref(), Some("hog"));
        assert!(matches!(s.take(&idle), Found::Closed));
    }

    #[test]
    fn a_payload_that_is_not_a_request_fixture_is_refused_naming_the_shape() {
        let err = fixture_request(&serde_json::json!({"user": "u1"})).unwrap_err();
        assert!(err.contains("\"body\""), "{err}");
        assert!(err.contains("unknown field \"user\""), "{err}");
        let ok =
            fixture_request(&serde_json::json!({"body": {"user": "u1"}, "headers": {"x-a": "1"}}))
                .unwrap();
        assert_eq!(ok.body, br#"{"user":"u1"}"#);
        // A request without a body (a GET with its query) is a request still.
        let get =
            fixture_request(&serde_json::json!({"method": "GET", "queryParameters": {"a": "1"}}))
                .unwrap();
        assert!(get.body.is_empty() && get.url.ends_with("?a=1"));
    }
}
