//! `fetch` for functions: real HTTP through the host, within the invocation's
//! budget, under an allow/deny policy checked on resolved addresses (the
//! addresses checked are the addresses connected to: no DNS-rebinding gap).

use base64::Engine;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::sync::mpsc;

/// Who functions may call.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FetchPolicy {
    /// Hosts (names or IP addresses) allowed even when they resolve to private
    /// or loopback addresses.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Hosts always refused.
    #[serde(default)]
    pub deny: Vec<String>,
}

impl FetchPolicy {
    fn allowed_host(&self, host: &str) -> bool {
        self.allow.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    fn denied_host(&self, host: &str) -> bool {
        self.deny.iter().any(|h| h.eq_ignore_ascii_case(host))
    }
}

/// Private, loopback, link-local (cloud metadata), CGNAT, multicast and
/// unspecified addresses: refused unless the host is allowed explicitly.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Why a name gave no address to connect to: a lookup failure (node's
/// `ENOTFOUND`) or the policy (no code: nothing to retry).
#[derive(Debug)]
struct ResolveError {
    code: Option<&'static str>,
    message: String,
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ResolveError {}

/// Resolves names and drops internal addresses unless the host is allowed.
struct PolicyResolver {
    policy: Arc<FetchPolicy>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            if policy.denied_host(&host) {
                return Err(Box::new(ResolveError {
                    code: None,
                    message: format!("host {host} is denied by the fetch policy"),
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), 0)).await {
                Ok(addrs) => addrs.collect(),
                Err(_) => {
                    return Err(Box::new(ResolveError {
                        code: Some("ENOTFOUND"),
                        message: format!("getaddrinfo ENOTFOUND {host}"),
                    })
                        as Box<dyn std::error::Error + Send + Sync>)
                }
            };
            let allowed = policy.allowed_host(&host);
            let usable: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| allowed || !is_internal(a.ip()))
                .collect();
            if usable.is_empty() {
                return Err(Box::new(ResolveError {
                    code: None,
                    message: format!(
                        "{host} resolves only to private or loopback addresses, which functions may not call (add it to fetch_allow to permit)"
                    ),
                }) as Box<dyn std::error::Error + Send + Sync>);
            }
            let iter: reqwest::dns::Addrs = Box::new(usable.into_iter());
            Ok(iter)
        })
    }
}

/// Checks a URL before the request: scheme, denied hosts, IP literals (which
/// never reach the resolver).
fn check_url(policy: &FetchPolicy, url: &reqwest::Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "only http and https URLs can be fetched, not {:?}",
            url.scheme()
        ));
    }
    let host = url.host_str().unwrap_or_default();
    if policy.denied_host(host) {
        return Err(format!("host {host} is denied by the fetch policy"));
    }
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        if is_internal(ip) && !policy.allowed_host(host) && !policy.allowed_host(literal) {
            return Err(format!(
                "{ip} is a private or loopback address, which functions may not call (add it to fetch_allow to permit)"
            ));
        }
    }
    Ok(())
}

/// A canned answer for offline tests, chosen by URL prefix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MockResponse {
    pub url: String,
    #[serde(default = "ok_status")]
    pub status: u16,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub body: serde_json::Value,
}

fn ok_status() -> u16 {
    200
}

/// A request a function made (recorded for tests without side effects).
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    pub method: String,
    pub url: String,
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: String,
}

/// How `fetch` is answered.
#[derive(Debug, Clone)]
pub enum FetchMode {
    /// Real HTTP under the policy.
    Live(Arc<FetchPolicy>),
    /// No network: answers from the mocks (or 200 `{}`), requests recorded.
    Mock(Arc<Vec<MockResponse>>),
}

/// How long a kept-alive connection may idle before it is not reused: below
/// the keep-alive timeouts of common servers (Node's is 5 s), so a request
/// is not sent on a connection its server is closing at that moment.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// A fetch answered: which invocation started it, its id within that
/// invocation, and the JSON the prelude expects (`{error}` on failure).
#[derive(Debug)]
pub struct FetchDone {
    pub invocation: u64,
    pub id: u64,
    pub answer: String,
}

/// What a worker waited for ([`Fetcher::wait`]).
pub enum Wake<T> {
    /// A fetch of some invocation was answered.
    Fetch(FetchDone),
    /// The other future the worker waits on (a new task) finished.
    Other(T),
    /// The time given passed.
    Timer,
}

/// Performs fetches for one worker thread and every invocation in flight on
/// it. Fetches run concurrently on a runtime of their own; each answer comes
/// back tagged with the invocation that started it, so a worker can wait for
/// "any fetch of any invocation answered" ([`Fetcher::wait`]) and run other
/// invocations meanwhile. `Promise.all` over several calls takes as long as
/// the slowest, as in Node.
pub struct Fetcher {
    mode: FetchMode,
    client: Option<reqwest::Client>,
    /// A runtime with one thread of its own. Its connections are driven even
    /// while no invocation runs: a kept-alive connection its server closed
    /// leaves the pool then. (Driven only while an invocation waited, a
    /// closed connection stayed pooled, and the next request was sent on it
    /// and failed: "connection closed before message completed".)
    runtime: Option<tokio::runtime::Runtime>,
    done_tx: mpsc::UnboundedSender<FetchDone>,
    done_rx: RefCell<mpsc::UnboundedReceiver<FetchDone>>,
    /// Serial numbers of invocations: an answer that comes back after its
    /// invocation ended (cancelled too late) matches no live invocation.
    next_invocation: Cell<u64>,
}

/// The fetches of the invocation a sandbox is running.
#[derive(Default)]
pub struct InvocationFetches {
    invocation: Cell<u64>,
    next_id: Cell<u64>,
    /// Spawned and not answered yet.
    pending: RefCell<HashMap<u64, tokio::task::AbortHandle>>,
    /// Answers to hand to the JavaScript side, in arrival order (mocks and
    /// refusals are known at once).
    ready: RefCell<VecDeque<(u64, String)>>,
}

impl InvocationFetches {
    /// Starts a new invocation's accounting under `serial`.
    pub fn begin(&self, serial: u64) {
        self.cancel_all();
        self.invocation.set(serial);
    }

    pub fn serial(&self) -> u64 {
        self.invocation.get()
    }

    /// Whether a fetch started is still to be handed to the JavaScript side.
    pub fn in_flight(&self) -> bool {
        !self.ready.borrow().is_empty() || !self.pending.borrow().is_empty()
    }

    pub fn take_ready(&self) -> Option<(u64, String)> {
        self.ready.borrow_mut().pop_front()
    }

    /// Takes an answer if it belongs to this invocation and is still awaited.
    pub fn accept(&self, done: FetchDone) -> bool {
        if done.invocation != self.invocation.get()
            || self.pending.borrow_mut().remove(&done.id).is_none()
        {
            return false;
        }
        self.ready.borrow_mut().push_back((done.id, done.answer));
        true
    }

    /// Drops what an invocation left running (a `fetch` it never awaited):
    /// the next one starts with none.
    pub fn cancel_all(&self) {
        self.ready.borrow_mut().clear();
        for (_, handle) in self.pending.borrow_mut().drain() {
            handle.abort();
        }
    }
}

/// A request as the JavaScript side hands it over.
pub struct Outgoing<'a> {
    pub method: &'a str,
    pub url: &'a str,
    /// `[[name, value], …]` as JSON.
    pub headers_json: &'a str,
    pub body: Body<'a>,
    /// node-fetch's options as JSON ([`Options`]).
    pub options_json: &'a str,
}

/// A request body as the JavaScript side hands it over.
pub enum Body<'a> {
    /// A string body, passed as is (no per-byte work in JavaScript).
    Text(&'a str),
    /// Binary bodies, base64-encoded.
    Base64(&'a str),
}

/// node-fetch 2's request options that the host carries out.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct Options {
    /// `follow`, `manual` or `error`.
    redirect: String,
    /// Redirects followed at most.
    follow: u32,
    /// Milliseconds to the response headers, and again to the end of the
    /// body; 0 for none (the budget still applies).
    timeout: u64,
    /// Ask for and decode gzip and deflate.
    compress: bool,
    /// Whether the request has a body at all: an empty one still gets
    /// `Content-Length: 0`, and so does a missing one on methods that
    /// usually carry one.
    has_body: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            redirect: "follow".into(),
            follow: 20,
            timeout: 0,
            compress: true,
            has_body: false,
        }
    }
}

/// How a fetch failed, as node-fetch reports it: a `FetchError` with a
/// `type` (and a system `code` when there is one), or a `TypeError` for a
/// request that could not be made at all.
#[derive(Debug, Serialize)]
pub struct Failure {
    error: String,
    name: &'static str,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
}

impl Failure {
    fn fetch(message: String, kind: &'static str) -> Failure {
        Failure {
            error: message,
            name: "FetchError",
            kind: Some(kind),
            code: None,
        }
    }

    fn type_error(message: &str) -> Failure {
        Failure {
            error: message.to_string(),
            name: "TypeError",
            kind: None,
            code: None,
        }
    }

    /// node-fetch's `request to URL failed, reason: …`.
    fn system(url: &reqwest::Url, reason: &str, code: Option<&str>) -> Failure {
        Failure {
            error: format!("request to {url} failed, reason: {reason}"),
            name: "FetchError",
            kind: Some("system"),
            code: code.map(str::to_string),
        }
    }
}

/// What the JavaScript side receives, as JSON: a UTF-8 body as `text`,
/// anything else base64-encoded in `body`.
#[derive(Debug, Serialize)]
struct FetchAnswer {
    status: u16,
    #[serde(rename = "statusText")]
    status_text: String,
    headers: Vec<(String, String)>,
    body: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    /// The URL answered, after redirects.
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// Redirects followed to get here.
    counter: u32,
    /// The body could not be read: node-fetch rejects reading it (not the
    /// fetch) with this.
    #[serde(rename = "bodyError", skip_serializing_if = "Option::is_none")]
    body_error: Option<Failure>,
}

impl FetchAnswer {
    fn new(
        status: u16,
        status_text: String,
        headers: Vec<(String, String)>,
        bytes: Vec<u8>,
    ) -> Self {
        let mut answer = FetchAnswer {
            status,
            status_text,
            headers,
            body: String::new(),
            text: None,
            url: None,
            counter: 0,
            body_error: None,
        };
        match String::from_utf8(bytes) {
            Ok(text) => answer.text = Some(text),
            Err(e) => {
                answer.body = base64::engine::general_purpose::STANDARD.encode(e.into_bytes())
            }
        }
        answer
    }
}

impl Fetcher {
    pub fn new(mode: FetchMode) -> Result<Fetcher, String> {
        let (client, runtime) = match &mode {
            FetchMode::Live(policy) => {
                crate::install_crypto_provider();
                let client = reqwest::Client::builder()
                    .dns_resolver(Arc::new(PolicyResolver {
                        policy: policy.clone(),
                    }))
                    // Redirects are followed by `exchange`, as node-fetch
                    // does (modes, counts, the final URL, no Referer).
                    .redirect(reqwest::redirect::Policy::none())
                    .referer(false)
                    .user_agent(concat!("switchyard-functions/", env!("CARGO_PKG_VERSION")))
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    .build()
                    .map_err(|e| format!("cannot build the fetch client: {e}"))?;
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("function-fetch")
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the fetch runtime: {e}"))?;
                (Some(client), Some(runtime))
            }
            FetchMode::Mock(_) => (None, None),
        };
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Ok(Fetcher {
            mode,
            client,
            runtime,
            done_tx,
            done_rx: RefCell::new(done_rx),
            next_invocation: Cell::new(0),
        })
    }

    /// A serial number for a new invocation.
    pub fn next_serial(&self) -> u64 {
        let serial = self.next_invocation.get() + 1;
        self.next_invocation.set(serial);
        serial
    }

    /// Starts one fetch for `calls`' invocation and returns its id; its
    /// answer comes back through [`Fetcher::wait`] (or at once, in `calls`'
    /// ready answers, for mocks and refusals).
    pub fn start(
        &self,
        calls: &InvocationFetches,
        request: Outgoing<'_>,
        limits: FetchLimits,
        recorded: &mut Vec<RecordedRequest>,
    ) -> u64 {
        let id = calls.next_id.get() + 1;
        calls.next_id.set(id);
        match self.begin(calls.invocation.get(), id, request, limits, recorded) {
            Started::Answered(answer) => calls.ready.borrow_mut().push_back((id, answer)),
            Started::Spawned(handle) => {
                calls.pending.borrow_mut().insert(id, handle);
            }
        }
        id
    }

    /// An answer already in, without waiting.
    pub fn try_next(&self) -> Option<FetchDone> {
        self.done_rx.borrow_mut().try_recv().ok()
    }

    /// Waits for the first of: a fetch answered, `other` finished, `until`
    /// passed (never, when `None`).
    pub fn wait<T>(
        &self,
        other: impl std::future::Future<Output = T>,
        until: Option<Instant>,
    ) -> Wake<T> {
        let Some(runtime) = &self.runtime else {
            // No network (mocks): nothing can be answered later, and no
            // pool waits on this fetcher for tasks.
            if let Some(until) = until {
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
            }
            return Wake::Timer;
        };
        let mut done_rx = self.done_rx.borrow_mut();
        runtime.block_on(async {
            let timer = async {
                match until {
                    Some(until) => tokio::time::sleep_until(until.into()).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                Some(done) = done_rx.recv() => Wake::Fetch(done),
                out = other => Wake::Other(out),
                () = timer => Wake::Timer,
            }
        })
    }

    /// Checks and records a request, then answers it at once (`Some`: mocks
    /// and refusals) or spawns it (`None`).
    fn begin(
        &self,
        invocation: u64,
        id: u64,
        request: Outgoing<'_>,
        limits: FetchLimits,
        recorded: &mut Vec<RecordedRequest>,
    ) -> Started {
        let Outgoing {
            method,
            url,
            headers_json,
            body,
            options_json,
        } = request;
        let refuse = |failure: Failure| Started::Answered(answer_json(Err(failure)));
        let headers: Vec<(String, String)> = serde_json::from_str(headers_json).unwrap_or_default();
        let options: Options = serde_json::from_str(options_json).unwrap_or_default();
        let body = match body {
            Body::Text(t) => t.as_bytes().to_vec(),
            Body::Base64("") => Vec::new(),
            Body::Base64(b64) => match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(b) => b,
                Err(_) => return refuse(Failure::type_error("invalid request body")),
            },
        };
        // node-fetch's own checks, with its words.
        let parsed = match reqwest::Url::parse(url) {
            Ok(u) if u.has_host() || !matches!(u.scheme(), "http" | "https") => u,
            Ok(_) | Err(url::ParseError::RelativeUrlWithoutBase) => {
                return refuse(Failure::type_error("Only absolute URLs are supported"))
            }
            Err(e) => return refuse(Failure::type_error(&format!("Invalid URL {url:?}: {e}"))),
        };
        if !matches!(parsed.scheme(), "http" | "https") {
            return refuse(Failure::type_error("Only HTTP(S) protocols are supported"));
        }
        recorded.push(RecordedRequest {
            method: method.to_string(),
            url: parsed.to_string(),
            headers: recorded_headers(&headers),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        match &self.mode {
            FetchMode::Mock(mocks) => {
                let mock = mocks
                    .iter()
                    .filter(|m| parsed.as_str().starts_with(&m.url))
                    .max_by_key(|m| m.url.len());
                let (status, headers, body) = match mock {
                    Some(m) => (
                        m.status,
                        m.headers.clone().into_iter().collect::<Vec<_>>(),
                        match &m.body {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        },
                    ),
                    None => (
                        200,
                        vec![("content-type".to_string(), "application/json".to_string())],
                        "{}".to_string(),
                    ),
                };
                Started::Answered(answer_json(Ok(FetchAnswer::new(
                    status,
                    String::new(),
                    headers,
                    body.into_bytes(),
                ))))
            }
            FetchMode::Live(policy) => {
                if let Err(e) = check_url(policy, &parsed) {
                    return refuse(Failure::system(&parsed, &e, None));
                }
                let (Some(client), Some(runtime)) = (&self.client, &self.runtime) else {
                    return refuse(Failure::system(&parsed, "fetch is not available", None));
                };
                let budget = limits.budget;
                if budget.is_zero() {
                    return refuse(Failure::fetch(
                        format!(
                            "network timeout at: {parsed} (the function's time budget is spent)"
                        ),
                        "request-timeout",
                    ));
                }
                let method = match reqwest::Method::from_bytes(method.as_bytes()) {
                    Ok(m) => m,
                    Err(_) => {
                        return refuse(Failure::type_error(&format!("invalid method {method:?}")))
                    }
                };
                let hop = Hop {
                    method,
                    url: parsed,
                    headers,
                    body,
                };
                let exchange = exchange(
                    client.clone(),
                    policy.clone(),
                    hop,
                    options,
                    limits.max_bytes,
                );
                let done_tx = self.done_tx.clone();
                let answer = async move {
                    let answer = match tokio::time::timeout(budget, exchange).await {
                        Ok(answer) => answer,
                        Err(_) => Err(Failure::fetch(
                            format!(
                                "network timeout: the function's time budget ({} ms left) ran out",
                                budget.as_millis()
                            ),
                            "request-timeout",
                        )),
                    };
                    // The worker may have ended the invocation meanwhile:
                    // then nobody listens, and that is fine.
                    let _ = done_tx.send(FetchDone {
                        invocation,
                        id,
                        answer: answer_json(answer),
                    });
                };
                Started::Spawned(runtime.spawn(answer).abort_handle())
            }
        }
    }
}

/// Headers as a record shows them: names in lower case, a repeated
/// header's values joined as `Headers.get` joins them.
fn recorded_headers(headers: &[(String, String)]) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::<String, String>::new();
    for (k, v) in headers {
        out.entry(k.to_ascii_lowercase())
            .and_modify(|cur| {
                cur.push_str(", ");
                cur.push_str(v);
            })
            .or_insert_with(|| v.clone());
    }
    out
}

/// What a fetch may take: the invocation's time left, and the bytes a
/// response body may hold (received and decoded alike).
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    pub budget: Duration,
    pub max_bytes: usize,
}

/// One request of a fetch (the first, or one after a redirect).
struct Hop {
    method: reqwest::Method,
    url: reqwest::Url,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Methods Node's http client sends without a length when they have no
/// body; any other gets `Content-Length: 0`.
fn bodiless_by_default(method: &reqwest::Method) -> bool {
    matches!(
        method.as_str(),
        "GET" | "HEAD" | "DELETE" | "OPTIONS" | "TRACE" | "CONNECT"
    )
}

/// A header value as Node writes it: one byte per character (Latin-1), so
/// `café` goes out as four bytes. (`Headers` refuses characters past
/// Latin-1, as node-fetch does, so none reach here.)
fn latin1_value(v: &str) -> Option<reqwest::header::HeaderValue> {
    let bytes: Vec<u8> = v.chars().map(|c| c as u32 as u8).collect();
    reqwest::header::HeaderValue::from_bytes(&bytes).ok()
}

/// Sends a request, following redirects as node-fetch 2 does, and reads
/// the answer within `max_bytes`, decoded.
async fn exchange(
    client: reqwest::Client,
    policy: Arc<FetchPolicy>,
    mut hop: Hop,
    options: Options,
    max_bytes: usize,
) -> Result<FetchAnswer, Failure> {
    let timeout = (options.timeout > 0).then(|| Duration::from_millis(options.timeout));
    let mut has_body = options.has_body;
    let mut counter = 0u32;
    loop {
        let mut request = client.request(hop.method.clone(), hop.url.clone());
        let has = |name: &str| {
            hop.headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(name))
        };
        for (k, v) in &hop.headers {
            let Some(value) = latin1_value(v) else {
                return Err(Failure::type_error(&format!(
                    "{v} is not a legal HTTP header value"
                )));
            };
            request = request.header(k.as_str(), value);
        }
        if hop.body.is_empty()
            && !has("content-length")
            && (has_body || !bodiless_by_default(&hop.method))
        {
            request = request.header("content-length", "0");
        }
        if options.compress && !has("accept-encoding") {
            request = request.header("accept-encoding", "gzip,deflate");
        }
        let request = request.body(hop.body.clone());
        let sent = match timeout {
            Some(t) => match tokio::time::timeout(t, request.send()).await {
                Ok(sent) => sent,
                Err(_) => {
                    return Err(Failure::fetch(
                        format!("network timeout at: {}", hop.url),
                        "request-timeout",
                    ))
                }
            },
            None => request.send().await,
        };
        let resp = sent.map_err(|e| network_failure(&hop.url, &e))?;
        let status = resp.status().as_u16();
        // Values as Node reads them: one character per byte (Latin-1).
        let mut headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.as_bytes().iter().map(|&b| b as char).collect(),
                )
            })
            .collect();
        if matches!(status, 301 | 302 | 303 | 307 | 308) {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .and_then(|l| hop.url.join(&l).ok());
            match options.redirect.as_str() {
                "error" => {
                    return Err(Failure::fetch(
                        format!("redirect mode is set to error: {}", hop.url),
                        "no-redirect",
                    ))
                }
                "manual" => {
                    // node-fetch hands back the Location resolved.
                    if let Some(location) = &location {
                        for (k, v) in headers.iter_mut() {
                            if k == "location" {
                                *v = location.to_string();
                            }
                        }
                    }
                }
                _ => {
                    if let Some(next) = location {
                        if counter >= options.follow {
                            return Err(Failure::fetch(
                                format!("maximum redirect reached at: {}", hop.url),
                                "max-redirect",
                            ));
                        }
                        if let Err(e) = check_url(&policy, &next) {
                            return Err(Failure::system(&next, &e, None));
                        }
                        if status == 303 || (matches!(status, 301 | 302) && hop.method == "POST") {
                            hop.method = reqwest::Method::GET;
                            hop.body = Vec::new();
                            has_body = false;
                            hop.headers
                                .retain(|(k, _)| !k.eq_ignore_ascii_case("content-length"));
                        }
                        hop.url = next;
                        counter += 1;
                        continue;
                    }
                }
            }
        }
        let status_text = resp.status().canonical_reason().unwrap_or("").to_string();
        let url = hop.url.to_string();
        let coding = resp
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let decode = options.compress && hop.method != "HEAD" && status != 204 && status != 304;
        let read = read_body(resp, &hop.url, max_bytes);
        let read = match timeout {
            Some(t) => match tokio::time::timeout(t, read).await {
                Ok(read) => read,
                Err(_) => Err(Failure::fetch(
                    format!(
                        "Response timeout while trying to fetch {} (over {}ms)",
                        hop.url, options.timeout
                    ),
                    "body-timeout",
                )),
            },
            None => read.await,
        };
        let (bytes, body_error) = match read {
            Ok(raw) => match coding.as_deref().filter(|_| decode) {
                Some(coding) => match decode_body(coding, raw, max_bytes) {
                    Ok(bytes) => (bytes, None),
                    Err(reason) => (
                        Vec::new(),
                        Some(Failure {
                            error: format!(
                                "Invalid response body while trying to fetch {}: {reason}",
                                hop.url
                            ),
                            name: "FetchError",
                            kind: Some(if reason.contains("over limit") {
                                "max-size"
                            } else {
                                "system"
                            }),
                            code: (!reason.contains("over limit"))
                                .then(|| "Z_DATA_ERROR".to_string()),
                        }),
                    ),
                },
                None => (raw, None),
            },
            Err(failure) => (Vec::new(), Some(failure)),
        };
        let mut answer = FetchAnswer::new(status, status_text, headers, bytes);
        answer.url = Some(url);
        answer.counter = counter;
        answer.body_error = body_error;
        return Ok(answer);
    }
}

/// Reads a body, refusing it past `max_bytes` (as node-fetch's `size`).
async fn read_body(
    mut resp: reqwest::Response,
    url: &reqwest::Url,
    max_bytes: usize,
) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > max_bytes {
                    return Err(Failure::fetch(
                        format!("content size at {url} over limit: {max_bytes}"),
                        "max-size",
                    ));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(e) => {
                let mut failure = network_failure(url, &e);
                failure.error = format!(
                    "Invalid response body while trying to fetch {url}: {}",
                    failure
                        .error
                        .split("reason: ")
                        .nth(1)
                        .unwrap_or(&failure.error)
                );
                return Err(failure);
            }
        }
    }
}

/// Undoes a `Content-Encoding` node-fetch undoes (gzip, deflate in either
/// wrapping); others are left as they came. The output is held to
/// `max_bytes` while it is produced: a small bomb is refused, not expanded.
fn decode_body(coding: &str, raw: Vec<u8>, max_bytes: usize) -> Result<Vec<u8>, String> {
    use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
    use std::io::Read;
    let reader: Box<dyn Read + '_> = match coding {
        "gzip" | "x-gzip" => Box::new(MultiGzDecoder::new(raw.as_slice())),
        // Old servers send raw deflate under this name; node-fetch tells
        // them apart by the zlib header's first byte.
        "deflate" | "x-deflate" if raw.first().is_some_and(|b| b & 0x0f == 0x08) => {
            Box::new(ZlibDecoder::new(raw.as_slice()))
        }
        "deflate" | "x-deflate" => Box::new(DeflateDecoder::new(raw.as_slice())),
        _ => return Ok(raw),
    };
    let mut out = Vec::new();
    let read = reader
        .take((max_bytes as u64).saturating_add(1))
        .read_to_end(&mut out);
    if out.len() > max_bytes {
        return Err(format!("decoded content over limit: {max_bytes}"));
    }
    match read {
        Ok(_) => Ok(out),
        // A stream cut short gives what it held, as Node's lenient flush.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => Ok(out),
        Err(_) => Err("incorrect header check".to_string()),
    }
}

/// A failed exchange in node-fetch's terms: the system error code Node
/// would give (what functions decide retries on) and its reason text.
fn network_failure(url: &reqwest::Url, e: &reqwest::Error) -> Failure {
    let address = format!(
        "{}:{}",
        url.host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']'),
        url.port_or_known_default().unwrap_or(0)
    );
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<ResolveError>() {
            return Failure::system(url, &r.message, r.code);
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            let code = match io.kind() {
                K::ConnectionRefused => Some("ECONNREFUSED"),
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => Some("ECONNRESET"),
                K::TimedOut => Some("ETIMEDOUT"),
                K::HostUnreachable => Some("EHOSTUNREACH"),
                K::NetworkUnreachable => Some("ENETUNREACH"),
                K::AddrNotAvailable => Some("EADDRNOTAVAIL"),
                _ => None,
            };
            if let Some(code) = code {
                let reason = if code == "ECONNRESET" {
                    "socket hang up".to_string()
                } else {
                    format!("connect {code} {address}")
                };
                return Failure::system(url, &reason, Some(code));
            }
        }
        source = s.source();
    }
    let chain = error_chain(e);
    // hyper's words for a connection the server dropped before answering,
    // which Node calls a hang-up.
    if chain.contains("connection closed before message completed")
        || chain.contains("connection reset")
        || chain.contains("unexpected end of file")
    {
        return Failure::system(url, "socket hang up", Some("ECONNRESET"));
    }
    if e.is_timeout() {
        return Failure::system(
            url,
            &format!("connect ETIMEDOUT {address}"),
            Some("ETIMEDOUT"),
        );
    }
    Failure::system(url, &chain, None)
}

/// What starting a fetch gave.
enum Started {
    /// Answered at once (mocks, refusals).
    Answered(String),
    /// Out on the network.
    Spawned(tokio::task::AbortHandle),
}

/// The JSON of an answer, or of a failure.
fn answer_json(answer: Result<FetchAnswer, Failure>) -> String {
    let json = match answer {
        Ok(answer) => serde_json::to_string(&answer),
        Err(failure) => serde_json::to_string(&failure),
    };
    json.unwrap_or_else(|e| {
        serde_json::json!({ "error": e.to_string(), "name": "TypeError" }).to_string()
    })
}

/// Flattens an error and its causes into one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "172.32.0.1"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn literal_addresses_are_checked() {
        let policy = FetchPolicy::default();
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(check_url(&policy, &url("http://127.0.0.1:9000/x")).is_err());
        assert!(check_url(&policy, &url("http://[::1]/x")).is_err());
        assert!(check_url(&policy, &url("file:///etc/passwd")).is_err());
        assert!(check_url(&policy, &url("https://93.184.216.34/")).is_ok());
        let allowed = FetchPolicy {
            allow: vec!["127.0.0.1".into()],
            deny: vec![],
        };
        assert!(check_url(&allowed, &url("http://127.0.0.1:9000/x")).is_ok());
        let denied = FetchPolicy {
            allow: vec![],
            deny: vec!["api.example.com".into()],
        };
        assert!(check_url(&denied, &url("https://api.example.com/")).is_err());
    }
}
