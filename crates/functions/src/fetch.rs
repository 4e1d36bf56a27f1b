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
                return Err(format!("host {host} is denied by the fetch policy").into());
            }
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .collect();
            let allowed = policy.allowed_host(&host);
            let usable: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| allowed || !is_internal(a.ip()))
                .collect();
            if usable.is_empty() {
                return Err(format!(
                    "{host} resolves only to private or loopback addresses, which functions may not call (add it to fetch_allow to permit)"
                )
                .into());
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
}

/// A request body as the JavaScript side hands it over.
pub enum Body<'a> {
    /// A string body, passed as is (no per-byte work in JavaScript).
    Text(&'a str),
    /// Binary bodies, base64-encoded.
    Base64(&'a str),
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
}

impl FetchAnswer {
    fn new(
        status: u16,
        status_text: String,
        headers: Vec<(String, String)>,
        bytes: Vec<u8>,
    ) -> Self {
        match String::from_utf8(bytes) {
            Ok(text) => FetchAnswer {
                status,
                status_text,
                headers,
                body: String::new(),
                text: Some(text),
            },
            Err(e) => FetchAnswer {
                status,
                status_text,
                headers,
                body: base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
                text: None,
            },
        }
    }
}

impl Fetcher {
    pub fn new(mode: FetchMode) -> Result<Fetcher, String> {
        let (client, runtime) = match &mode {
            FetchMode::Live(policy) => {
                crate::install_crypto_provider();
                let policy_for_redirects = policy.clone();
                let client = reqwest::Client::builder()
                    .dns_resolver(Arc::new(PolicyResolver {
                        policy: policy.clone(),
                    }))
                    .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                        if attempt.previous().len() >= 10 {
                            return attempt.error("too many redirects");
                        }
                        match check_url(&policy_for_redirects, attempt.url()) {
                            Ok(()) => attempt.follow(),
                            Err(e) => attempt.error(e),
                        }
                    }))
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
        budget: Duration,
        recorded: &mut Vec<RecordedRequest>,
    ) -> u64 {
        let id = calls.next_id.get() + 1;
        calls.next_id.set(id);
        match self.begin(calls.invocation.get(), id, request, budget, recorded) {
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
        budget: Duration,
        recorded: &mut Vec<RecordedRequest>,
    ) -> Started {
        let Outgoing {
            method,
            url,
            headers_json,
            body,
        } = request;
        let error =
            |msg: String| Started::Answered(serde_json::json!({ "error": msg }).to_string());
        let headers: Vec<(String, String)> = serde_json::from_str(headers_json).unwrap_or_default();
        let body = match body {
            Body::Text(t) => t.as_bytes().to_vec(),
            Body::Base64("") => Vec::new(),
            Body::Base64(b64) => match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(b) => b,
                Err(_) => return error("invalid request body".into()),
            },
        };
        let parsed = match reqwest::Url::parse(url) {
            Ok(u) => u,
            Err(e) => return error(format!("invalid URL {url:?}: {e}")),
        };
        recorded.push(RecordedRequest {
            method: method.to_string(),
            url: parsed.to_string(),
            headers: headers.iter().cloned().collect(),
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
                    return error(e);
                }
                let (Some(client), Some(runtime)) = (&self.client, &self.runtime) else {
                    return error("fetch is not available".into());
                };
                if budget.is_zero() {
                    return error("the function's time budget is spent".into());
                }
                let method = match reqwest::Method::from_bytes(method.as_bytes()) {
                    Ok(m) => m,
                    Err(_) => return error(format!("invalid method {method:?}")),
                };
                let mut request = client.request(method, parsed).timeout(budget).body(body);
                for (k, v) in &headers {
                    request = request.header(k.as_str(), v.as_str());
                }
                let exchange = async move {
                    let resp = request.send().await?;
                    let status = resp.status();
                    let headers: Vec<(String, String)> = resp
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect();
                    let bytes = resp.bytes().await?;
                    Ok::<_, reqwest::Error>(FetchAnswer::new(
                        status.as_u16(),
                        status.canonical_reason().unwrap_or("").to_string(),
                        headers,
                        bytes.to_vec(),
                    ))
                };
                let done_tx = self.done_tx.clone();
                let answer = async move {
                    let answer = exchange.await.map_err(|e| {
                        if e.is_timeout() {
                            format!(
                                "timed out: the function's time budget ({} ms left) ran out",
                                budget.as_millis()
                            )
                        } else {
                            error_chain(&e)
                        }
                    });
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

/// What starting a fetch gave.
enum Started {
    /// Answered at once (mocks, refusals).
    Answered(String),
    /// Out on the network.
    Spawned(tokio::task::AbortHandle),
}

/// The JSON of an answer, or of `{error}`.
fn answer_json(answer: Result<FetchAnswer, String>) -> String {
    let error = |msg: String| serde_json::json!({ "error": msg }).to_string();
    match answer {
        Ok(answer) => serde_json::to_string(&answer).unwrap_or_else(|e| error(e.to_string())),
        Err(e) => error(e),
    }
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
