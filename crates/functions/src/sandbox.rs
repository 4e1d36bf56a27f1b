//! One QuickJS runtime running one function version, with limits.
//!
//! A sandbox has no file system, no environment and no process access: its
//! only ways out are the host services in `__host` (logging, `fetch` under the
//! policy, hashing, URL parsing). Every invocation has a deadline enforced by
//! the interrupt handler (and by `fetch`'s own timeout), and the runtime has a
//! memory cap. A sandbox that was interrupted, ran out of memory or left a
//! promise that can never settle is *poisoned*: the pool drops it and never
//! runs anything in it again.
//!
//! The memory cap is kept by the runtime's allocator ([`Meter`]), not by
//! QuickJS's own limit, so that an invocation that hit it is known for
//! certain: out of memory, QuickJS may have no memory left even for its
//! "out of memory" error and throw `null` instead, which the prelude's
//! `catch` reports as any value a function throws ("Error: null"). Any
//! failure of an invocation during which an allocation was refused is a
//! [`FunctionError::memory`], whatever the exception says.
//!
//! An invocation is started ([`Sandbox::start`]) and then polled
//! ([`Sandbox::poll`]) rather than run to its end, so a worker can hold
//! several sandboxes mid-invocation and run whichever has something to do.
//! A sandbox still runs one invocation at a time: the deadline the interrupt
//! handler checks, the logs and the fetches in its state are that one's.

use crate::fetch::{FetchDone, Fetcher, InvocationFetches, RecordedRequest};
use crate::{ErrorKind, FunctionCode, FunctionError, Limits, LogLine};
use base64::Engine;
use rquickjs::allocator::{Allocator, RustAllocator};
use rquickjs::promise::PromiseState;
use rquickjs::{Context, Ctx, Function, Object, Persistent, Promise, Runtime, Value};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

const PRELUDE: &str = include_str!("../js/prelude.js");
/// The prelude's name in stack traces; its frames are left out of the
/// stacks users see (see `describe` in the prelude).
const PRELUDE_FILE: &str = "switchyard-prelude.js";
const EXPOSE_HANDLERS: &str = r#"
for (const name of ['onRequest', 'onTrack', 'onIdentify', 'onPage', 'onScreen', 'onGroup', 'onAlias', 'onDelete', 'onBatch']) {
  try {
    const f = (0, eval)(name);
    if (typeof f === 'function' && typeof globalThis[name] !== 'function') globalThis[name] = f;
  } catch (_) {}
}
"#;
/// Most log lines kept per invocation, and most bytes per line.
const MAX_LOG_LINES: usize = 500;
const MAX_LOG_LINE_BYTES: usize = 4096;

fn vendored(name: &str) -> Option<&'static str> {
    match name {
        "lodash" => Some(include_str!("../js/vendor/lodash.min.js")),
        "xml" => Some(include_str!("../js/vendor/xml/xml.js")),
        "xml/escapeForXML" => Some(include_str!("../js/vendor/xml/escapeForXML.js")),
        _ => None,
    }
}

/// A runtime's heap, counted against its memory cap.
pub(crate) struct Meter {
    used: Cell<usize>,
    cap: usize,
    /// An allocation failed (the cap, or the system, refused it) since the
    /// current invocation started.
    refused: Cell<bool>,
}

/// Bookkeeping per allocation: `RustAllocator`'s header. QuickJS's own
/// limit counted 8 bytes per allocation too. The difference: QuickJS's
/// 4 KB arenas of small blocks count whole here, partly used ones
/// included, so a cap is reached some 64–160 KB sooner than it was.
const ALLOC_OVERHEAD: usize = 8;

impl Meter {
    fn new(cap: usize) -> Meter {
        Meter {
            used: Cell::new(0),
            // QuickJS's convention: a limit of 0 is no limit.
            cap: if cap == 0 { usize::MAX } else { cap },
            refused: Cell::new(false),
        }
    }

    /// Whether `more` bytes fit under the cap; a refusal is remembered.
    fn admit(&self, more: usize) -> bool {
        let fits = self.used.get().saturating_add(more) <= self.cap;
        if !fits {
            self.refused.set(true);
        }
        fits
    }

    /// Counts a block the system allocator gave (or remembers that it gave none).
    fn taken(&self, ptr: *mut u8) -> *mut u8 {
        if ptr.is_null() {
            self.refused.set(true);
        } else {
            // SAFETY: `ptr` was just allocated by `RustAllocator`.
            let size = unsafe { RustAllocator::usable_size(ptr) };
            self.used.set(self.used.get() + size + ALLOC_OVERHEAD);
        }
        ptr
    }

    fn given_back(&self, size: usize) {
        self.used
            .set(self.used.get().saturating_sub(size + ALLOC_OVERHEAD));
    }
}

/// The Rust allocator, under a [`Meter`]'s cap.
struct CappedAllocator(Rc<Meter>);

// SAFETY: every block comes from `RustAllocator` and goes back to it; the
// meter only counts, and refuses before anything is allocated.
unsafe impl Allocator for CappedAllocator {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        if !self.0.admit(size.saturating_add(ALLOC_OVERHEAD)) {
            return std::ptr::null_mut();
        }
        self.0.taken(RustAllocator.alloc(size))
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        // `RustAllocator` panics on an overflowing size (across C: an abort).
        let Some(total) = count.checked_mul(size) else {
            self.0.refused.set(true);
            return std::ptr::null_mut();
        };
        if total == 0 {
            return std::ptr::null_mut();
        }
        if !self.0.admit(total.saturating_add(ALLOC_OVERHEAD)) {
            return std::ptr::null_mut();
        }
        self.0.taken(RustAllocator.calloc(count, size))
    }

    unsafe fn dealloc(&mut self, ptr: *mut u8) {
        self.0.given_back(RustAllocator::usable_size(ptr));
        RustAllocator.dealloc(ptr);
    }

    unsafe fn realloc(&mut self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        let old = RustAllocator::usable_size(ptr);
        if new_size > old && !self.0.admit(new_size - old) {
            return std::ptr::null_mut();
        }
        let moved = RustAllocator.realloc(ptr, new_size);
        if moved.is_null() {
            // The old block is still the caller's, and still counted.
            self.0.refused.set(true);
            return moved;
        }
        self.0.given_back(old);
        self.0.taken(moved)
    }

    unsafe fn usable_size(ptr: *mut u8) -> usize {
        RustAllocator::usable_size(ptr)
    }
}

struct HostState {
    deadline: Cell<Instant>,
    interrupted: Cell<bool>,
    logs: RefCell<Vec<LogLine>>,
    recorded: RefCell<Vec<RecordedRequest>>,
    fetcher: Rc<Fetcher>,
    /// The running invocation's fetches.
    calls: InvocationFetches,
    /// The runtime's memory cap: native results (`zlib`) are held to it too.
    memory_bytes: usize,
    /// The raw body of the request a source function runs on. Kept here,
    /// not in the invocation's JSON: a 2 MB body decoded in JavaScript (base64,
    /// byte by byte) took over 64 MB; here it becomes a string or bytes only
    /// when the function reads it, at its own size.
    body: RefCell<Vec<u8>>,
}

impl HostState {
    fn remaining(&self) -> Duration {
        self.deadline
            .get()
            .saturating_duration_since(Instant::now())
    }

    fn log(&self, level: &str, message: String) {
        let mut logs = self.logs.borrow_mut();
        if logs.len() >= MAX_LOG_LINES {
            return;
        }
        let mut message = message;
        if message.len() > MAX_LOG_LINE_BYTES {
            let mut cut = MAX_LOG_LINE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        logs.push(LogLine {
            at_ms: chrono::Utc::now().timestamp_millis(),
            level: level.to_string(),
            message,
        });
        if logs.len() == MAX_LOG_LINES {
            logs.push(LogLine {
                at_ms: chrono::Utc::now().timestamp_millis(),
                level: "warn".into(),
                message: format!("log limit reached: further lines of this invocation dropped ({MAX_LOG_LINES} kept)"),
            });
        }
    }
}

/// What an invocation produced, as the prelude reports it.
pub(crate) struct Invocation {
    pub output: Result<serde_json::Value, FunctionError>,
    pub logs: Vec<LogLine>,
    pub requests: Vec<RecordedRequest>,
}

/// Where a running invocation stands after [`Sandbox::poll`].
pub(crate) enum Step {
    Done(Invocation),
    /// Nothing to run before a fetch is answered or this instant (the next
    /// timer or the deadline, whichever comes first).
    Wait(Instant),
}

pub(crate) struct Sandbox {
    /// The promise of the invocation in progress. Dropped before `ctx` and
    /// `rt` (fields drop in order): a value outliving its runtime is a leak
    /// QuickJS asserts on.
    running: Option<Persistent<Promise<'static>>>,
    // `ctx` must drop before `rt`.
    ctx: Context,
    rt: Runtime,
    state: Rc<HostState>,
    meter: Rc<Meter>,
    file_name: String,
    pub version: String,
    /// The memory cap it was made with: a runtime is reused only under the same.
    pub memory_bytes: usize,
    pub calls: u32,
    pub poisoned: bool,
}

fn hash_bytes(alg: &str, data: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    Some(match alg.to_ascii_lowercase().as_str() {
        "sha1" => sha1::Sha1::digest(data).to_vec(),
        "sha256" => sha2::Sha256::digest(data).to_vec(),
        "sha384" => sha2::Sha384::digest(data).to_vec(),
        "sha512" => sha2::Sha512::digest(data).to_vec(),
        "md5" => md5::Md5::digest(data).to_vec(),
        _ => return None,
    })
}

fn hmac_bytes(alg: &str, key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    use hmac::{Hmac, Mac};
    macro_rules! mac {
        ($d:ty) => {{
            let mut m = Hmac::<$d>::new_from_slice(key).ok()?;
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }};
    }
    Some(match alg.to_ascii_lowercase().as_str() {
        "sha1" => mac!(sha1::Sha1),
        "sha256" => mac!(sha2::Sha256),
        "sha384" => mac!(sha2::Sha384),
        "sha512" => mac!(sha2::Sha512),
        "md5" => mac!(md5::Md5),
        _ => return None,
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> rquickjs::Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| rquickjs::Error::new_from_js("string", "base64 bytes"))
}

fn throw(ctx: &Ctx<'_>, message: String) -> rquickjs::Error {
    match rquickjs::Exception::from_message(ctx.clone(), &message) {
        Ok(e) => ctx.throw(e.into_value()),
        Err(e) => e,
    }
}

fn install_host<'js>(ctx: &Ctx<'js>, state: &Rc<HostState>) -> rquickjs::Result<()> {
    let host = Object::new(ctx.clone())?;
    let s = state.clone();
    host.set(
        "log",
        Function::new(ctx.clone(), move |level: String, message: String| {
            s.log(&level, message);
        })?,
    )?;
    let s = state.clone();
    host.set(
        "fetch",
        Function::new(
            ctx.clone(),
            move |method: String,
                  url: String,
                  headers: String,
                  body_b64: String,
                  text: String,
                  is_text: bool,
                  options: String|
                  -> f64 {
                let limits = crate::fetch::FetchLimits {
                    budget: s.remaining(),
                    max_bytes: s.memory_bytes,
                };
                let mut recorded = s.recorded.borrow_mut();
                let body = if is_text {
                    crate::fetch::Body::Text(&text)
                } else {
                    crate::fetch::Body::Base64(&body_b64)
                };
                let request = crate::fetch::Outgoing {
                    method: &method,
                    url: &url,
                    headers_json: &headers,
                    body,
                    options_json: &options,
                };
                s.fetcher.start(&s.calls, request, limits, &mut recorded) as f64
            },
        )?,
    )?;
    let s = state.clone();
    host.set(
        "requestText",
        Function::new(ctx.clone(), move || {
            String::from_utf8_lossy(&s.body.borrow()).into_owned()
        })?,
    )?;
    let s = state.clone();
    host.set(
        "requestBytes",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>| -> rquickjs::Result<rquickjs::TypedArray<'js, u8>> {
                rquickjs::TypedArray::<u8>::new_copy(ctx, s.body.borrow().as_slice())
            },
        )?,
    )?;
    host.set(
        "hash",
        Function::new(ctx.clone(), |ctx: Ctx<'_>, alg: String, data: String| {
            let data = unb64(&data)?;
            hash_bytes(&alg, &data)
                .map(|d| b64(&d))
                .ok_or_else(|| throw(&ctx, format!("Digest method not supported: {alg}")))
        })?,
    )?;
    host.set(
        "hmac",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'_>, alg: String, key: String, data: String| {
                let (key, data) = (unb64(&key)?, unb64(&data)?);
                hmac_bytes(&alg, &key, &data)
                    .map(|d| b64(&d))
                    .ok_or_else(|| throw(&ctx, format!("Invalid digest: {alg}")))
            },
        )?,
    )?;
    host.set(
        "sign",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'_>, alg: String, key: String, data: String, p1363: bool| {
                crate::native::sign(&alg, &key, &unb64(&data)?, p1363)
                    .map(|s| b64(&s))
                    .map_err(|e| throw(&ctx, e))
            },
        )?,
    )?;
    host.set(
        "verify",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'_>, alg: String, key: String, data: String, sig: String, p1363: bool| {
                crate::native::verify(&alg, &key, &unb64(&data)?, &unb64(&sig)?, p1363)
                    .map_err(|e| throw(&ctx, e))
            },
        )?,
    )?;
    host.set(
        "pbkdf2",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'_>,
             digest: String,
             password: String,
             salt: String,
             iterations: u32,
             key_len: usize| {
                crate::native::pbkdf2(
                    &digest,
                    &unb64(&password)?,
                    &unb64(&salt)?,
                    iterations,
                    key_len,
                )
                .map(|k| b64(&k))
                .map_err(|e| throw(&ctx, e))
            },
        )?,
    )?;
    host.set(
        "timeZone",
        Function::new(
            ctx.clone(),
            |name: String, epoch_ms: f64| -> Option<String> {
                crate::native::time_zone_at(&name, epoch_ms)
            },
        )?,
    )?;
    let max_bytes = state.memory_bytes;
    host.set(
        "zlib",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'_>, op: String, data: String| {
                crate::native::zlib(&op, &unb64(&data)?, max_bytes)
                    .map(|out| b64(&out))
                    .map_err(|e| throw(&ctx, e))
            },
        )?,
    )?;
    host.set(
        "randomBytes",
        Function::new(ctx.clone(), |n: usize| {
            use rand::RngCore;
            let mut bytes = vec![0u8; n.min(1 << 20)];
            rand::rng().fill_bytes(&mut bytes);
            b64(&bytes)
        })?,
    )?;
    host.set(
        "uuid",
        Function::new(ctx.clone(), || uuid::Uuid::new_v4().to_string())?,
    )?;
    host.set(
        "parseUrl",
        Function::new(
            ctx.clone(),
            |input: String, base: String| -> Option<String> {
                let parsed = if base.is_empty() {
                    url::Url::parse(&input)
                } else {
                    url::Url::parse(&base).and_then(|b| b.join(&input))
                }
                .ok()?;
                let search = parsed.query().map(|q| format!("?{q}")).unwrap_or_default();
                let hash = parsed
                    .fragment()
                    .map(|f| format!("#{f}"))
                    .unwrap_or_default();
                Some(
                    serde_json::json!({
                        "protocol": format!("{}:", parsed.scheme()),
                        "username": parsed.username(),
                        "password": parsed.password().unwrap_or(""),
                        "hostname": parsed.host_str().unwrap_or(""),
                        "port": parsed.port().map(|p| p.to_string()).unwrap_or_default(),
                        "pathname": parsed.path(),
                        "search": if search == "?" { String::new() } else { search },
                        "hash": if hash == "#" { String::new() } else { hash },
                    })
                    .to_string(),
                )
            },
        )?,
    )?;
    host.set(
        "vendorSource",
        Function::new(ctx.clone(), |ctx: Ctx<'_>, name: String| {
            vendored(&name).ok_or_else(|| throw(&ctx, format!("no vendored module {name}")))
        })?,
    )?;
    ctx.globals().set("__host", host)?;
    Ok(())
}

/// A thrown value that is not an object, as JavaScript prints it.
fn thrown_text(value: &Value<'_>) -> String {
    if let Some(s) = value.as_string() {
        return s.to_string().unwrap_or_default();
    }
    if value.is_null() {
        "null".into()
    } else if value.is_undefined() {
        "undefined".into()
    } else if let Some(b) = value.as_bool() {
        b.to_string()
    } else if let Some(n) = value.as_number() {
        n.to_string()
    } else {
        value.type_name().to_string()
    }
}

/// Turns the pending exception into a [`FunctionError`].
fn caught(ctx: &Ctx<'_>, err: rquickjs::Error, file: &str, state: &HostState) -> FunctionError {
    if state.interrupted.get() {
        return FunctionError::timeout();
    }
    let value: Value = if matches!(err, rquickjs::Error::Exception) {
        ctx.catch()
    } else {
        let text = err.to_string();
        if text.contains("out of memory") || text.contains("Allocation") {
            return FunctionError::memory();
        }
        return FunctionError::internal(text);
    };
    let (name, message, stack) = match value.as_object() {
        Some(obj) => (
            obj.get::<_, Option<String>>("name")
                .ok()
                .flatten()
                .unwrap_or_else(|| "Error".into()),
            obj.get::<_, Option<String>>("message")
                .ok()
                .flatten()
                .unwrap_or_default(),
            obj.get::<_, Option<String>>("stack")
                .ok()
                .flatten()
                .unwrap_or_default(),
        ),
        None => (
            "Error".to_string(),
            crate::no_error_object(&thrown_text(&value)),
            String::new(),
        ),
    };
    if message.contains("out of memory") {
        return FunctionError::memory();
    }
    if message == "interrupted" {
        return FunctionError::timeout();
    }
    let line = stack
        .split(&format!("{file}:"))
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    FunctionError {
        kind: ErrorKind::Thrown,
        name,
        message,
        line,
        stack,
    }
}

impl Sandbox {
    /// Creates a runtime and loads the prelude and the function's code.
    pub fn new(
        code: &FunctionCode,
        limits: &Limits,
        fetcher: Rc<Fetcher>,
    ) -> Result<Sandbox, FunctionError> {
        let meter = Rc::new(Meter::new(limits.memory_bytes));
        let rt = Runtime::new_with_alloc(CappedAllocator(meter.clone()))
            .map_err(|e| FunctionError::internal(e.to_string()))?;
        rt.set_max_stack_size(1024 * 1024);
        let ctx = Context::full(&rt).map_err(|e| FunctionError::internal(e.to_string()))?;
        let state = Rc::new(HostState {
            deadline: Cell::new(crate::later(Instant::now(), limits.timeout)),
            interrupted: Cell::new(false),
            logs: RefCell::new(Vec::new()),
            recorded: RefCell::new(Vec::new()),
            fetcher,
            calls: InvocationFetches::default(),
            memory_bytes: limits.memory_bytes,
            body: RefCell::new(Vec::new()),
        });
        {
            let s = state.clone();
            rt.set_interrupt_handler(Some(Box::new(move || {
                if Instant::now() >= s.deadline.get() {
                    s.interrupted.set(true);
                    true
                } else {
                    false
                }
            })));
        }
        let file_name = code.file_name.clone();
        let loaded = ctx.with(|ctx| -> Result<(), FunctionError> {
            install_host(&ctx, &state)
                .map_err(|e| FunctionError::internal(format!("host setup: {e}")))?;
            let mut prelude_options = rquickjs::context::EvalOptions::default();
            prelude_options.global = true;
            prelude_options.filename = Some(PRELUDE_FILE.into());
            ctx.eval_with_options::<(), _>(PRELUDE, prelude_options)
                .map_err(|e| caught(&ctx, e, PRELUDE_FILE, &state))
                .map_err(|e| {
                    FunctionError::internal(format!("prelude: {}: {}", e.name, e.message))
                })?;
            let mut options = rquickjs::context::EvalOptions::default();
            options.global = true;
            options.strict = false;
            options.filename = Some(file_name.clone());
            ctx.eval_with_options::<(), _>(code.source.as_bytes().to_vec(), options)
                .map_err(|e| caught(&ctx, e, &file_name, &state))?;
            // Handlers declared with `const`/`let` live in the global lexical
            // scope, not on the global object: publish them where the
            // invocation code looks.
            ctx.eval::<(), _>(EXPOSE_HANDLERS)
                .map_err(|e| caught(&ctx, e, "prelude.js", &state))
        });
        let mut sandbox = Sandbox {
            running: None,
            ctx,
            rt,
            state,
            meter,
            file_name,
            version: code.version.clone(),
            memory_bytes: limits.memory_bytes,
            calls: 0,
            poisoned: false,
        };
        match loaded {
            Ok(()) => Ok(sandbox),
            Err(_) if sandbox.meter.refused.get() => {
                // The code (or what it builds as it loads) does not fit the cap.
                sandbox.poisoned = true;
                Err(FunctionError::memory())
            }
            Err(e) => {
                sandbox.poisoned = true;
                Err(e)
            }
        }
    }

    /// Names of the handlers the code defines (`onTrack`, `onBatch`, …).
    pub fn handlers(&self) -> Vec<String> {
        self.ctx.with(|ctx| {
            let f: rquickjs::Result<Function> = ctx.globals().get("__handlers");
            f.and_then(|f| f.call::<_, String>(()))
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default()
        })
    }

    /// Runs one invocation to its end on this thread, waiting in place for
    /// its fetches and timers (tests without side effects, the offline CLI).
    pub fn invoke(
        &mut self,
        entry: &str,
        payload: &str,
        body: Vec<u8>,
        settings: &str,
        timeout: Duration,
    ) -> Invocation {
        if let Some(done) = self.start(entry, payload, body, settings, timeout) {
            return done;
        }
        loop {
            match self.poll() {
                Step::Done(done) => return done,
                Step::Wait(until) => {
                    let fetcher = self.state.fetcher.clone();
                    if let crate::fetch::Wake::Fetch(done) =
                        fetcher.wait(std::future::pending::<()>(), Some(until))
                    {
                        self.accept_fetch(done);
                    }
                }
            }
        }
    }

    /// The serial number of the invocation in progress (0 before the first).
    pub fn serial(&self) -> u64 {
        self.state.calls.serial()
    }

    /// Hands a fetch answer to the invocation in progress; `false` when it is
    /// not one of its own (a late answer to an invocation that ended).
    pub fn accept_fetch(&self, done: FetchDone) -> bool {
        self.running.is_some() && self.state.calls.accept(done)
    }

    /// Calls `entry` (`__invokeSource` or `__invokeDestination`): its
    /// synchronous part runs now, the rest in [`Sandbox::poll`]. `Some` when
    /// it failed before it could wait on anything.
    pub fn start(
        &mut self,
        entry: &str,
        payload: &str,
        body: Vec<u8>,
        settings: &str,
        timeout: Duration,
    ) -> Option<Invocation> {
        self.calls += 1;
        let state = self.state.clone();
        state.deadline.set(crate::later(Instant::now(), timeout));
        state.interrupted.set(false);
        self.meter.refused.set(false);
        state.logs.borrow_mut().clear();
        *state.body.borrow_mut() = body;
        state.recorded.borrow_mut().clear();
        state.calls.begin(state.fetcher.next_serial());
        let file = self.file_name.clone();
        let started = self.ctx.with(
            |ctx| -> Result<Persistent<Promise<'static>>, FunctionError> {
                let f: Function = ctx
                    .globals()
                    .get(entry)
                    .map_err(|e| FunctionError::internal(format!("{entry}: {e}")))?;
                let promise: Promise = f
                    .call((payload, settings, file.as_str()))
                    .map_err(|e| caught(&ctx, e, &file, &state))?;
                Ok(Persistent::save(&ctx, promise))
            },
        );
        match started {
            Ok(promise) => {
                self.running = Some(promise);
                None
            }
            Err(e) => Some(self.finish(Err(e))),
        }
    }

    /// Drives the invocation in progress: runs its jobs, hands it the fetch
    /// answers in, runs its due timers, until it settles or has to wait.
    pub fn poll(&mut self) -> Step {
        let Some(running) = self.running.clone() else {
            return Step::Done(self.finish(Err(FunctionError::internal(
                "no invocation in progress".into(),
            ))));
        };
        let state = self.state.clone();
        let file = self.file_name.clone();
        // `Ok(Err(delay))`: waiting, the next timer due in `delay` ms (none: < 0).
        let progress = self.ctx.with(|ctx| -> Result<Result<serde_json::Value, f64>, FunctionError> {
            let promise = running
                .restore(&ctx)
                .map_err(|e| FunctionError::internal(e.to_string()))?;
            loop {
                while ctx.execute_pending_job() {
                    if state.interrupted.get() {
                        return Err(FunctionError::timeout());
                    }
                }
                match promise.state() {
                    PromiseState::Resolved => {
                        let text: String = promise
                            .result::<String>()
                            .transpose()
                            .map_err(|e| caught(&ctx, e, &file, &state))?
                            .unwrap_or_default();
                        let value: serde_json::Value = serde_json::from_str(&text)
                            .map_err(|e| FunctionError::internal(format!("bad invocation result: {e}")))?;
                        // The prelude catches everything, engine failures included:
                        // those still poison the runtime.
                        if state.interrupted.get() {
                            return Err(FunctionError::timeout());
                        }
                        let error = &value["error"];
                        if error["name"] == "InternalError" {
                            let message = error["message"].as_str().unwrap_or_default();
                            if message.contains("out of memory") {
                                return Err(FunctionError::memory());
                            }
                            if message.contains("interrupted") {
                                return Err(FunctionError::timeout());
                            }
                            if message.contains("stack overflow") {
                                return Err(FunctionError::internal("stack overflow".into()));
                            }
                        }
                        return Ok(Ok(value));
                    }
                    PromiseState::Rejected => {
                        let err = promise.result::<Value>().and_then(|r| r.err());
                        return Err(match err {
                            Some(e) => caught(&ctx, e, &file, &state),
                            None => FunctionError::internal("the invocation was rejected".into()),
                        });
                    }
                    PromiseState::Pending => {}
                }
                if state.interrupted.get() || state.remaining().is_zero() {
                    return Err(FunctionError::timeout());
                }
                // Fetch answers first, in arrival order, then due timers.
                if let Some((id, answer)) = state.calls.take_ready() {
                    let done: Function = ctx
                        .globals()
                        .get("__fetchDone")
                        .map_err(|e| FunctionError::internal(e.to_string()))?;
                    done.call::<_, ()>((id as f64, answer))
                        .map_err(|e| caught(&ctx, e, &file, &state))?;
                    continue;
                }
                let next: Function = ctx
                    .globals()
                    .get("__nextTimerDelay")
                    .map_err(|e| FunctionError::internal(e.to_string()))?;
                let delay: f64 = next.call(()).map_err(|e| caught(&ctx, e, &file, &state))?;
                if (0.0..1.0).contains(&delay) {
                    let run: Function = ctx
                        .globals()
                        .get("__runNextTimer")
                        .map_err(|e| FunctionError::internal(e.to_string()))?;
                    run.call::<_, ()>(()).map_err(|e| caught(&ctx, e, &file, &state))?;
                    continue;
                }
                if delay < 0.0 && !state.calls.in_flight() {
                    return Err(FunctionError {
                        kind: ErrorKind::Timeout,
                        name: "TimeoutError".into(),
                        message: "the function returned a promise that never settles (nothing left to run)".into(),
                        line: None,
                        stack: String::new(),
                    });
                }
                return Ok(Err(delay));
            }
        });
        match progress {
            Ok(Ok(value)) => Step::Done(self.finish(Ok(value))),
            Err(e) => Step::Done(self.finish(Err(e))),
            Ok(Err(delay)) => {
                let deadline = self.state.deadline.get();
                let wake = if delay >= 0.0 {
                    crate::later(Instant::now(), Duration::from_millis(delay as u64)).min(deadline)
                } else {
                    deadline
                };
                Step::Wait(wake)
            }
        }
    }

    /// `output`, unless the invocation hit the memory cap: then it ran out
    /// of memory, however that surfaced (`null` thrown, an error whose
    /// properties could not be read, a result that could not be built) and
    /// even if the function caught it and went on, as a Node process that
    /// runs out of heap stops whatever the code catches. A timeout stays a
    /// timeout when the budget did run out; not a promise left pending
    /// because the code that would settle it ran out of memory.
    fn memory_verdict(
        &mut self,
        output: Result<serde_json::Value, FunctionError>,
    ) -> Result<serde_json::Value, FunctionError> {
        if !self.meter.refused.get() {
            return output;
        }
        // Whatever happens next, a runtime that ran out of memory mid-way
        // may hold half-built state: never reuse it.
        self.poisoned = true;
        match output {
            Err(e)
                if e.kind == ErrorKind::Timeout
                    && (self.state.interrupted.get() || self.state.remaining().is_zero()) =>
            {
                Err(e)
            }
            _ => Err(FunctionError::memory()),
        }
    }

    /// Drops the timers the invocation left (see `__clearTimers` in the
    /// prelude). A runtime where that fails is not reused.
    fn clear_timers(&mut self) {
        let cleared = self.ctx.with(|ctx| {
            ctx.globals()
                .get::<_, Function>("__clearTimers")
                .and_then(|clear| clear.call::<_, ()>(()))
                .is_ok()
        });
        if !cleared {
            self.poisoned = true;
        }
    }

    /// Ends the invocation in progress with `output`.
    fn finish(&mut self, output: Result<serde_json::Value, FunctionError>) -> Invocation {
        self.running = None;
        let state = self.state.clone();
        state.calls.cancel_all();
        state.body.take();
        self.clear_timers();
        let output = self.memory_verdict(output);
        if let Err(e) = &output {
            if matches!(
                e.kind,
                ErrorKind::Timeout | ErrorKind::Memory | ErrorKind::Internal
            ) {
                self.poisoned = true;
            }
        }
        // Leave no garbage from this call for the next one to pay for.
        if self.calls.is_multiple_of(64) {
            self.rt.run_gc();
        }
        Invocation {
            output,
            logs: state.logs.take(),
            requests: state.recorded.take(),
        }
    }
}
