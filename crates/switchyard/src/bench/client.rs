//! The load generator: a minimal HTTP/1.1 keep-alive client over raw TCP.
//!
//! A full HTTP client costs several times the CPU of this one per request, and
//! on a 2-core machine every cycle the generator burns is taken from the server
//! under test; so requests are prebuilt byte strings whose message ids are
//! patched in place, and responses are parsed only as far as the status line
//! and `Content-Length`.

use super::{find, now_ns};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Width of the per-request counter patched into every message id.
const SEQ_DIGITS: usize = 10;
const SEQ_MARK: &[u8] = b"@@@@@@@@@@";

/// One keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one complete request and reads the whole response; returns its status.
    pub async fn send(&mut self, request: &[u8]) -> std::io::Result<u16> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])
                    .map_err(|_| bad("response head is not text"))?;
                let status: u16 = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad("no status code"))?;
                let mut length = None;
                let mut close = false;
                for line in head.split("\r\n").skip(1) {
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse::<usize>().ok();
                        } else if name.eq_ignore_ascii_case("connection")
                            && value.trim().eq_ignore_ascii_case("close")
                        {
                            close = true;
                        }
                    }
                }
                let length = length.ok_or_else(|| bad("response without Content-Length"))?;
                let total = end + 4 + length;
                while self.buf.len() < total {
                    let n = self.stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                if close {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        format!("server closed the connection after status {status}"),
                    ));
                }
                return Ok(status);
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The HTTP head of a POST with a JSON body and the write key as Basic user.
pub fn request_head(addr: SocketAddr, path: &str, write_key: &str, body_len: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {}\r\nContent-Type: application/json\r\nUser-Agent: switchyard-bench\r\nContent-Length: {body_len}\r\n\r\n",
        base64(format!("{write_key}:").as_bytes())
    )
}

/// One ~`size`-byte track event whose message id is `{prefix}-{seq}-{index}`;
/// `seq` is either digits or the patch mark.
pub fn event_json(prefix: &str, seq: &str, index: usize, size: usize) -> String {
    let head = format!(
        r#"{{"type":"track","event":"Order Completed","userId":"user-{}","messageId":"{prefix}-{seq}-{index:04}","properties":{{"revenue":42.5,"currency":"EUR","coupon":"SPRING","products":[{{"sku":"SKU-1","name":"Widget","price":19.99,"quantity":1}},{{"sku":"SKU-2","name":"Gadget","price":22.51,"quantity":1}}],"pad":""#,
        index % 97
    );
    let tail = r#""},"context":{"library":{"name":"switchyard-bench","version":"1"},"ip":"127.0.0.1","locale":"en-US","userAgent":"Mozilla/5.0 (X11; Linux x86_64) switchyard-bench"}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(size + 8);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(tail);
    s
}

/// The body of a request: one event (`per_request == 0`: `/v1/track`) or a batch.
pub fn body(prefix: &str, per_request: usize, event_bytes: usize) -> String {
    let mark = std::str::from_utf8(SEQ_MARK).unwrap_or("@");
    if per_request == 0 {
        return event_json(prefix, mark, 0, event_bytes);
    }
    let events: Vec<String> = (0..per_request)
        .map(|i| event_json(prefix, mark, i, event_bytes))
        .collect();
    format!(r#"{{"batch":[{}]}}"#, events.join(","))
}

/// A prebuilt request whose message-id counters are rewritten before each send.
pub struct Template {
    bytes: Vec<u8>,
    offsets: Vec<usize>,
}

impl Template {
    pub fn new(head: &str, body: &str) -> Template {
        let mut bytes = Vec::with_capacity(head.len() + body.len());
        bytes.extend_from_slice(head.as_bytes());
        bytes.extend_from_slice(body.as_bytes());
        let mut offsets = Vec::new();
        let mut at = 0;
        while let Some(p) = find(&bytes[at..], SEQ_MARK) {
            offsets.push(at + p);
            at += p + SEQ_DIGITS;
        }
        let mut t = Template { bytes, offsets };
        t.set_seq(0);
        t
    }

    pub fn set_seq(&mut self, mut seq: u64) {
        let mut digits = [b'0'; SEQ_DIGITS];
        for d in digits.iter_mut().rev() {
            *d = b'0' + (seq % 10) as u8;
            seq /= 10;
        }
        for &o in &self.offsets {
            self.bytes[o..o + SEQ_DIGITS].copy_from_slice(&digits);
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A closed-loop load: `connections` connections, each sending back to back.
#[derive(Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub path: &'static str,
    pub write_key: String,
    /// 0 for single-event endpoints.
    pub per_request: usize,
    pub event_bytes: usize,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Message-id prefix; unique per phase so no event is a duplicate.
    pub id_prefix: String,
}

#[derive(Debug, Default)]
pub struct LoadResult {
    /// 2xx responses completed inside the measured window.
    pub ok_requests: u64,
    pub ok_events: u64,
    /// Non-2xx answers and transport errors inside the window.
    pub failed_requests: u64,
    /// Events accepted over the whole phase, warm-up included.
    pub total_ok_events: u64,
    pub window_secs: f64,
    /// Latency of every 2xx request of the window, microseconds, sorted.
    pub latencies_us: Vec<u32>,
    pub first_error: Option<String>,
    pub request_bytes: usize,
}

impl LoadResult {
    pub fn requests_per_sec(&self) -> f64 {
        self.ok_requests as f64 / self.window_secs
    }
    pub fn events_per_sec(&self) -> f64 {
        self.ok_events as f64 / self.window_secs
    }
}

/// The `q` quantile (0..=1) of sorted microseconds, in milliseconds.
pub fn quantile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

struct ConnOutcome {
    ok_requests: u64,
    failed_requests: u64,
    total_ok_requests: u64,
    latencies_us: Vec<u32>,
    first_error: Option<String>,
}

/// Runs the load from `start`; the window measured is
/// `[start + warmup, start + warmup + duration]`.
pub async fn run_load(spec: &LoadSpec, start: Instant) -> LoadResult {
    let per_event = spec.per_request.max(1) as u64;
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let mut tasks = Vec::new();
    let mut request_bytes = 0;
    for c in 0..spec.connections {
        let prefix = format!("{}-c{c:03}", spec.id_prefix);
        let body = body(&prefix, spec.per_request, spec.event_bytes);
        let head = request_head(spec.addr, spec.path, &spec.write_key, body.len());
        let mut template = Template::new(&head, &body);
        request_bytes = template.bytes().len();
        let addr = spec.addr;
        tasks.push(tokio::spawn(async move {
            let mut out = ConnOutcome {
                ok_requests: 0,
                failed_requests: 0,
                total_ok_requests: 0,
                latencies_us: Vec::with_capacity(4096),
                first_error: None,
            };
            let mut conn: Option<Conn> = None;
            let mut seq = 0u64;
            while Instant::now() < end {
                if conn.is_none() {
                    match Conn::connect(addr).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            out.first_error
                                .get_or_insert_with(|| format!("connect: {e}"));
                            if Instant::now() >= measure_from {
                                out.failed_requests += 1;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                template.set_seq(seq);
                seq += 1;
                let sent = Instant::now();
                let result = c.send(template.bytes()).await;
                let done = Instant::now();
                let in_window = done >= measure_from && done <= end;
                match result {
                    Ok(status) if (200..300).contains(&status) => {
                        out.total_ok_requests += 1;
                        if in_window {
                            out.ok_requests += 1;
                            let us = done
                                .duration_since(sent)
                                .as_micros()
                                .min(u128::from(u32::MAX));
                            out.latencies_us.push(us as u32);
                        }
                    }
                    Ok(status) => {
                        out.first_error
                            .get_or_insert_with(|| format!("HTTP status {status}"));
                        if in_window {
                            out.failed_requests += 1;
                        }
                    }
                    Err(e) => {
                        out.first_error
                            .get_or_insert_with(|| format!("transport: {e}"));
                        if in_window {
                            out.failed_requests += 1;
                        }
                        conn = None;
                    }
                }
            }
            out
        }));
    }
    let mut result = LoadResult {
        window_secs: spec.duration.as_secs_f64(),
        request_bytes,
        ..Default::default()
    };
    for t in tasks {
        if let Ok(o) = t.await {
            result.ok_requests += o.ok_requests;
            result.failed_requests += o.failed_requests;
            result.total_ok_events += o.total_ok_requests * per_event;
            result.latencies_us.extend(o.latencies_us);
            if result.first_error.is_none() {
                result.first_error = o.first_error;
            }
        }
    }
    result.ok_events = result.ok_requests * per_event;
    result.latencies_us.sort_unstable();
    result
}

/// Times of the paced (open-loop) latency phase, nanoseconds since the bench's start.
pub struct PacedBook {
    pub sent_ns: Vec<AtomicU64>,
    pub accepted_ns: Vec<AtomicU64>,
    pub ingest_us: std::sync::Mutex<Vec<u32>>,
    pub failed: AtomicU64,
    pub first_error: std::sync::Mutex<Option<String>>,
}

impl PacedBook {
    pub fn new(capacity: usize) -> Arc<PacedBook> {
        Arc::new(PacedBook {
            sent_ns: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            accepted_ns: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            ingest_us: std::sync::Mutex::new(Vec::with_capacity(capacity)),
            failed: AtomicU64::new(0),
            first_error: std::sync::Mutex::new(None),
        })
    }
}

/// The paced (open-loop) phase: `count` single events through `/v1/track` at
/// `rate` per second over `connections` connections; event `n` has message id
/// `{prefix}{n}-…`.
pub struct PacedSpec {
    pub addr: SocketAddr,
    pub write_key: String,
    pub prefix: String,
    pub event_bytes: usize,
    pub rate: u64,
    pub count: usize,
    pub connections: usize,
}

/// Runs the paced phase: the schedule does not wait for answers.
pub async fn run_paced(spec: &PacedSpec, book: Arc<PacedBook>) {
    let PacedSpec {
        addr,
        event_bytes,
        rate,
        count,
        connections,
        ..
    } = *spec;
    let (write_key, prefix) = (spec.write_key.as_str(), spec.prefix.as_str());
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        senders.push(tx);
        let book = book.clone();
        let prefix = prefix.to_string();
        let write_key = write_key.to_string();
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<Conn> = None;
            while let Some(n) = rx.recv().await {
                // The id is `{prefix}{n}-{seq}-0000` with seq "n" again: the
                // receiver reads the number right after the prefix.
                let body = event_json(&format!("{prefix}{n}"), "x", 0, event_bytes);
                let mut request =
                    request_head(addr, "/v1/track", &write_key, body.len()).into_bytes();
                request.extend_from_slice(body.as_bytes());
                if conn.is_none() {
                    match Conn::connect(addr).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            book.failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut f) = book.first_error.lock() {
                                f.get_or_insert_with(|| format!("connect: {e}"));
                            }
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                let sent = Instant::now();
                book.sent_ns[n].store(now_ns(), Ordering::Release);
                match c.send(&request).await {
                    Ok(status) if (200..300).contains(&status) => {
                        book.accepted_ns[n].store(now_ns(), Ordering::Release);
                        let us = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                        if let Ok(mut v) = book.ingest_us.lock() {
                            v.push(us);
                        }
                    }
                    other => {
                        book.failed.fetch_add(1, Ordering::Relaxed);
                        let msg = match other {
                            Ok(status) => format!("HTTP status {status}"),
                            Err(e) => {
                                conn = None;
                                format!("transport: {e}")
                            }
                        };
                        if let Ok(mut f) = book.first_error.lock() {
                            f.get_or_insert(msg);
                        }
                    }
                }
            }
        }));
    }
    let start = tokio::time::Instant::now();
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    for n in 0..count {
        // Absolute schedule: a late tick is followed by catch-up sends.
        tokio::time::sleep_until(start + period * n as u32).await;
        let _ = senders[n % senders.len()].send(n);
    }
    drop(senders);
    for t in tasks {
        let _ = t.await;
    }
}

/// A counted load: `requests` requests of `per_request` events each, sent
/// back to back over `connections` keep-alive connections.
pub struct CountSpec {
    pub addr: SocketAddr,
    pub path: &'static str,
    pub write_key: String,
    pub per_request: usize,
    pub event_bytes: usize,
    pub connections: usize,
    pub requests: u64,
    /// Message ids are `{id_prefix}-c{conn}-{seq}-{index}`.
    pub id_prefix: String,
}

/// What [`send_count`] achieved.
#[derive(Debug, Default)]
pub struct CountResult {
    /// Events in 2xx answers.
    pub accepted_events: u64,
    pub failed_requests: u64,
    pub first_error: Option<String>,
    pub secs: f64,
}

/// Sends the requests of `spec` and returns when all have been answered (a
/// connection gives up after 20 failures in a row).
pub async fn send_count(spec: &CountSpec) -> CountResult {
    let start = Instant::now();
    let remaining = Arc::new(AtomicU64::new(spec.requests));
    let per_event = spec.per_request.max(1) as u64;
    let mut tasks = Vec::new();
    for c in 0..spec.connections.max(1) {
        let prefix = format!("{}-c{c:03}", spec.id_prefix);
        let body = body(&prefix, spec.per_request, spec.event_bytes);
        let head = request_head(spec.addr, spec.path, &spec.write_key, body.len());
        let mut template = Template::new(&head, &body);
        let remaining = remaining.clone();
        let addr = spec.addr;
        tasks.push(tokio::spawn(async move {
            let mut out = CountResult::default();
            let mut conn: Option<Conn> = None;
            let mut seq = 0u64;
            let mut failures_in_a_row = 0;
            while failures_in_a_row < 20
                && remaining
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok()
            {
                if conn.is_none() {
                    match Conn::connect(addr).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            out.first_error
                                .get_or_insert_with(|| format!("connect: {e}"));
                            out.failed_requests += 1;
                            failures_in_a_row += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                template.set_seq(seq);
                seq += 1;
                let failure = match c.send(template.bytes()).await {
                    Ok(status) if (200..300).contains(&status) => {
                        out.accepted_events += per_event;
                        failures_in_a_row = 0;
                        continue;
                    }
                    Ok(status) => format!("HTTP status {status}"),
                    Err(e) => {
                        conn = None;
                        format!("transport: {e}")
                    }
                };
                out.first_error.get_or_insert(failure);
                out.failed_requests += 1;
                failures_in_a_row += 1;
            }
            out
        }));
    }
    let mut result = CountResult::default();
    for t in tasks {
        if let Ok(o) = t.await {
            result.accepted_events += o.accepted_events;
            result.failed_requests += o.failed_requests;
            if result.first_error.is_none() {
                result.first_error = o.first_error;
            }
        }
    }
    result.secs = start.elapsed().as_secs_f64();
    result
}
