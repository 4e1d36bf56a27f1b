//! `fetch` against loopback servers, as node-fetch 2 (what Segment runs)
//! behaves: what goes out on the wire, how failures are reported, redirects,
//! compressed answers and headers.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_functions::*;

/// What the scripted server does with a request, by its path.
enum Reply {
    /// Raw response bytes, written as given, then the connection closed.
    Raw(Vec<u8>),
    /// Close the connection without answering.
    Hangup,
    /// Answer after this long.
    Late(Duration, Vec<u8>),
}

/// A loopback HTTP/1.1 server: answers each request by `script(path)`,
/// keeps every request's raw head and body, and stops when dropped.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(script: impl Fn(&str) -> Reply + Send + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let Some((request, path)) = read_request(&stream) else {
                    continue;
                };
                s.lock().unwrap().push(request);
                let mut stream = stream;
                match script(&path) {
                    Reply::Raw(bytes) => {
                        let _ = stream.write_all(&bytes);
                    }
                    Reply::Hangup => drop(stream),
                    Reply::Late(wait, bytes) => {
                        std::thread::spawn(move || {
                            std::thread::sleep(wait);
                            let _ = stream.write_all(&bytes);
                        });
                    }
                }
            }
        });
        Server { port, seen, stop }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests received, with header names in lower case.
    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// The request received for `path`.
    fn request(&self, path: &str) -> String {
        let needle = format!(" {path} HTTP/1.1");
        self.requests()
            .into_iter()
            .find(|r| r.lines().next().is_some_and(|l| l.ends_with(&needle)))
            .unwrap_or_else(|| panic!("no request for {path}: {:?}", self.requests()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads one request (head and a `content-length` body): its text, with
/// header names lower-cased, and its path.
fn read_request(mut stream: &TcpStream) -> Option<(String, String)> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    // Header values are kept byte for byte (as Latin-1), names lower-cased.
    let text: String = buf.iter().map(|&b| b as char).collect();
    let (head_text, body) = text.split_at(head_end.min(text.len()));
    let mut lines = head_text.lines();
    let mut out = lines.next().unwrap_or_default().to_string();
    out.push_str("\r\n");
    for line in lines {
        match line.split_once(':') {
            Some((k, v)) => out.push_str(&format!("{}:{}\r\n", k.to_ascii_lowercase(), v)),
            None => out.push_str(&format!("{line}\r\n")),
        }
    }
    out.push_str("\r\n");
    out.push_str(body);
    Some((out, path))
}

fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn ok(body: &str) -> Vec<u8> {
    response(
        "200 OK",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
}

fn live() -> FetchMode {
    FetchMode::Live(Arc::new(FetchPolicy {
        allow: vec!["127.0.0.1".into()],
        deny: vec![],
    }))
}

/// Runs `onTrack` of `src` with `settings.url` set to `url`; its result.
fn run_with(src: &str, url: &str, limits: &Limits) -> Value {
    let out = run_destination_once(
        &FunctionCode::new("f", "function.js", src),
        &json!({"type": "track", "event": "E", "userId": "u"}),
        &json!({ "url": url }),
        limits,
        live(),
    );
    assert!(out.error.is_none(), "{:?}", out.error);
    out.result.expect("a result")
}

fn run(src: &str, url: &str) -> Value {
    run_with(
        src,
        url,
        &Limits {
            timeout: Duration::from_secs(10),
            ..Limits::default()
        },
    )
}

fn header<'a>(request: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}:");
    request
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::trim))
        .collect()
}

#[test]
fn a_request_without_a_body_gets_content_length_zero_where_node_sends_it() {
    let server = Server::start(|_| Reply::Raw(ok("{}")));
    let src = r#"
async function onTrack(event, settings) {
  for (const method of ['POST', 'PUT', 'PATCH', 'DELETE', 'GET']) await fetch(settings.url + '/none-' + method, { method });
  await fetch(settings.url + '/empty', { method: 'POST', body: '' });
  await fetch(settings.url + '/empty-delete', { method: 'DELETE', body: '' });
  return 'sent';
}"#;
    assert_eq!(run(src, &server.url()), json!("sent"));
    for path in [
        "/none-POST",
        "/none-PUT",
        "/none-PATCH",
        "/empty",
        "/empty-delete",
    ] {
        let r = server.request(path);
        assert_eq!(header(&r, "content-length"), ["0"], "{path}: {r}");
        assert!(header(&r, "transfer-encoding").is_empty(), "{r}");
    }
    for path in ["/none-DELETE", "/none-GET"] {
        let r = server.request(path);
        assert!(header(&r, "content-length").is_empty(), "{path}: {r}");
    }
    let r = server.request("/empty");
    assert_eq!(
        header(&r, "content-type"),
        ["text/plain;charset=UTF-8"],
        "{r}"
    );
}

#[test]
fn network_failures_are_fetch_errors_with_nodes_codes() {
    // A port nothing listens on: bound, then let go.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = Server::start(|path| match path {
        "/reset" => Reply::Hangup,
        "/slow" => Reply::Late(Duration::from_millis(1500), ok("{}")),
        _ => Reply::Raw(ok("{}")),
    });
    let src = format!(
        r#"
const pick = (e) => ({{ name: e.name, type: e.type, code: e.code, errno: e.errno, message: e.message, isError: e instanceof Error }});
async function onTrack(event, settings) {{
  const out = {{}};
  for (const [k, url, opts] of [
    ['refused', 'http://127.0.0.1:{closed}/x', {{}}],
    ['reset', settings.url + '/reset', {{}}],
    ['timeout', settings.url + '/slow', {{ timeout: 100 }}],
    ['relative', '/relative/path', {{}}],
    ['scheme', 'ftp://127.0.0.1/x', {{}}],
  ]) {{
    try {{ await fetch(url, opts); out[k] = 'resolved'; }} catch (e) {{ out[k] = pick(e); }}
  }}
  out.FetchError = typeof require('node-fetch').FetchError;
  return out;
}}"#
    );
    let out = run(&src, &server.url());
    assert_eq!(
        out["refused"],
        json!({"name": "FetchError", "type": "system", "code": "ECONNREFUSED", "errno": "ECONNREFUSED", "isError": true,
               "message": format!("request to http://127.0.0.1:{closed}/x failed, reason: connect ECONNREFUSED 127.0.0.1:{closed}")})
    );
    assert_eq!(
        out["reset"],
        json!({"name": "FetchError", "type": "system", "code": "ECONNRESET", "errno": "ECONNRESET", "isError": true,
               "message": format!("request to {}/reset failed, reason: socket hang up", server.url())})
    );
    assert_eq!(
        out["timeout"],
        json!({"name": "FetchError", "type": "request-timeout", "isError": true,
               "message": format!("network timeout at: {}/slow", server.url())})
    );
    assert_eq!(out["relative"]["name"], "TypeError");
    assert_eq!(
        out["relative"]["message"],
        "Only absolute URLs are supported"
    );
    assert_eq!(
        out["scheme"]["message"],
        "Only HTTP(S) protocols are supported"
    );
    assert_eq!(out["FetchError"], "function");
}

#[test]
fn a_refused_host_is_a_fetch_error_too() {
    let src = r#"
async function onTrack(event, settings) {
  try { await fetch(settings.url); } catch (e) { return { name: e.name, type: e.type, code: e.code === undefined, message: e.message }; }
}"#;
    let out = run_destination_once(
        &FunctionCode::new("f", "function.js", src),
        &json!({"type": "track", "event": "E", "userId": "u"}),
        &json!({ "url": "http://127.0.0.1:9/x" }),
        &Limits::default(),
        FetchMode::Live(Arc::new(FetchPolicy::default())),
    );
    let r = out.result.expect("a result");
    assert_eq!(r["name"], "FetchError");
    assert_eq!(r["type"], "system");
    // No code: a refusal is no network failure to retry.
    assert_eq!(r["code"], true);
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .starts_with("request to http://127.0.0.1:9/x failed, reason: ")
            && r["message"]
                .as_str()
                .unwrap()
                .contains("private or loopback"),
        "{r}"
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn compressed_answers_are_decoded_unless_compress_is_false() {
    let zlib = {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(br#"{"d":"zlib"}"#).unwrap();
        e.finish().unwrap()
    };
    let raw = {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(br#"{"d":"raw"}"#).unwrap();
        e.finish().unwrap()
    };
    let server = Server::start(move |path| {
        let (coding, body) = match path {
            "/deflate" => ("deflate", zlib.clone()),
            "/raw-deflate" => ("deflate", raw.clone()),
            "/broken" => ("gzip", b"not gzip at all".to_vec()),
            _ => ("gzip", gzip(br#"{"z":1}"#)),
        };
        Reply::Raw(response(
            "200 OK",
            &[
                ("content-type", "application/json"),
                ("content-encoding", coding),
            ],
            &body,
        ))
    });
    let src = r#"
async function onTrack(event, settings) {
  const gz = await fetch(settings.url + '/gzip');
  const plain = await fetch(settings.url + '/gzip-off', { compress: false });
  const bytes = await plain.buffer();
  const broken = await fetch(settings.url + '/broken');
  let brokenError;
  try { await broken.text(); } catch (e) { brokenError = { name: e.name, type: e.type }; }
  return {
    encoding: gz.headers.get('content-encoding'),
    gzip: await gz.json(),
    deflate: await (await fetch(settings.url + '/deflate')).json(),
    rawDeflate: await (await fetch(settings.url + '/raw-deflate')).json(),
    offMagic: [bytes[0], bytes[1]],
    brokenError,
  };
}"#;
    let out = run(src, &server.url());
    assert_eq!(
        out,
        json!({
            "encoding": "gzip",
            "gzip": {"z": 1},
            "deflate": {"d": "zlib"},
            "rawDeflate": {"d": "raw"},
            "offMagic": [0x1f, 0x8b],
            "brokenError": {"name": "FetchError", "type": "system"},
        })
    );
    let asked = server.request("/gzip");
    assert_eq!(
        header(&asked, "accept-encoding"),
        ["gzip,deflate"],
        "{asked}"
    );
    let off = server.request("/gzip-off");
    assert!(header(&off, "accept-encoding").is_empty(), "{off}");
}

#[test]
fn a_decompression_bomb_is_refused_not_expanded() {
    // 64 MiB of zeros, about 64 KiB on the wire, against a 16 MiB runtime.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    let server = Server::start(move |_| {
        Reply::Raw(response("200 OK", &[("content-encoding", "gzip")], &bomb))
    });
    let src = r#"
async function onTrack(event, settings) {
  const res = await fetch(settings.url + '/bomb');
  try { const t = await res.text(); return { read: t.length }; }
  catch (e) { return { name: e.name, type: e.type, status: res.status }; }
}"#;
    let out = run_with(
        src,
        &server.url(),
        &Limits {
            timeout: Duration::from_secs(20),
            memory_bytes: 16 << 20,
            ..Limits::default()
        },
    );
    assert_eq!(
        out,
        json!({"name": "FetchError", "type": "max-size", "status": 200})
    );
}

#[test]
fn json_of_a_body_that_is_not_json_is_an_invalid_json_fetch_error() {
    let server = Server::start(|path| match path {
        "/empty" => Reply::Raw(response("204 No Content", &[], b"")),
        _ => Reply::Raw(response(
            "200 OK",
            &[("content-type", "text/html")],
            b"<html>oops</html>",
        )),
    });
    let src = r#"
async function onTrack(event, settings) {
  const out = {};
  for (const p of ['/html', '/empty']) {
    try { await (await fetch(settings.url + p)).json(); } catch (e) { out[p] = { name: e.name, type: e.type, message: e.message }; }
  }
  return out;
}"#;
    let out = run(src, &server.url());
    for p in ["/html", "/empty"] {
        assert_eq!(out[p]["name"], "FetchError", "{out}");
        assert_eq!(out[p]["type"], "invalid-json", "{out}");
        let prefix = format!("invalid json response body at {}{p} reason: ", server.url());
        assert!(
            out[p]["message"].as_str().unwrap().starts_with(&prefix),
            "{out}"
        );
    }
}

#[test]
fn redirects_follow_nodes_modes_and_counts() {
    let server = Server::start(|path| {
        let to = |location: &str, status: &str| {
            Reply::Raw(response(status, &[("location", location)], b""))
        };
        match path {
            "/r1" => to("/r2", "302 Found"),
            "/r2" => to("/final", "301 Moved Permanently"),
            "/see-other" => to("/final", "303 See Other"),
            _ => Reply::Raw(ok(r#"{"final":true}"#)),
        }
    });
    let src = r#"
async function onTrack(event, settings) {
  const u = settings.url;
  const out = {};
  const manual = await fetch(u + '/r1', { redirect: 'manual' });
  out.manual = { status: manual.status, location: manual.headers.get('location'), redirected: manual.redirected };
  const followed = await fetch(u + '/r1');
  out.follow = { status: followed.status, url: followed.url, redirected: followed.redirected, body: await followed.json() };
  try { await fetch(u + '/r1', { redirect: 'error' }); } catch (e) { out.error = { name: e.name, type: e.type, message: e.message }; }
  try { await fetch(u + '/r1', { follow: 1 }); } catch (e) { out.max = { name: e.name, type: e.type, message: e.message }; }
  const post = await fetch(u + '/see-other', { method: 'POST', body: 'x' });
  out.post = post.status;
  const plain = await fetch(u + '/final');
  out.plain = { url: plain.url, redirected: plain.redirected };
  return out;
}"#;
    let out = run(src, &server.url());
    let u = server.url();
    assert_eq!(
        out["manual"],
        json!({"status": 302, "location": format!("{u}/r2"), "redirected": false})
    );
    assert_eq!(
        out["follow"],
        json!({"status": 200, "url": format!("{u}/final"), "redirected": true, "body": {"final": true}})
    );
    assert_eq!(
        out["error"],
        json!({"name": "FetchError", "type": "no-redirect", "message": format!("redirect mode is set to error: {u}/r1")})
    );
    assert_eq!(
        out["max"],
        json!({"name": "FetchError", "type": "max-redirect", "message": format!("maximum redirect reached at: {u}/r2")})
    );
    assert_eq!(out["post"], 200);
    assert_eq!(
        out["plain"],
        json!({"url": format!("{u}/final"), "redirected": false})
    );
    for r in server.requests() {
        assert!(header(&r, "referer").is_empty(), "{r}");
    }
    // A 303 is followed with a GET and no body.
    let after = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /final"))
        .count();
    assert!(after >= 3, "{:?}", server.requests());
    assert!(!server
        .requests()
        .iter()
        .any(|r| r.starts_with("POST /final")));
}

#[test]
fn set_cookie_lines_stay_apart_in_raw() {
    let server = Server::start(|_| {
        Reply::Raw(response(
            "200 OK",
            &[
                ("set-cookie", "a=1; Path=/"),
                ("set-cookie", "b=2; HttpOnly"),
            ],
            b"ok",
        ))
    });
    let src = r#"
async function onTrack(event, settings) {
  const res = await fetch(settings.url);
  const raw = res.headers.raw();
  const h = new Headers([['X-Dup', 'a'], ['x-dup', 'b']]);
  return { raw: raw['set-cookie'], get: res.headers.get('set-cookie'), dupRaw: h.raw(), dupGet: h.get('X-DUP') };
}"#;
    let out = run(src, &server.url());
    assert_eq!(
        out,
        json!({
            "raw": ["a=1; Path=/", "b=2; HttpOnly"],
            "get": "a=1; Path=/, b=2; HttpOnly",
            "dupRaw": {"X-Dup": ["a", "b"]},
            "dupGet": "a, b",
        })
    );
}

#[test]
fn request_headers_go_out_as_node_fetch_writes_them() {
    let server = Server::start(|_| Reply::Raw(ok("{}")));
    let src = r#"
async function onTrack(event, settings) {
  await fetch(settings.url + '/obj', { method: 'POST', body: { a: 1 } });
  await fetch(settings.url + '/undef', { headers: { 'X-Api-Key': undefined } });
  await fetch(settings.url + '/dup', { headers: [['X-Dup', 'a'], ['X-Dup', 'b']] });
  await fetch(settings.url + '/latin1', { headers: { 'X-Name': 'café' } });
  let bad;
  try { new Headers({ 'x-a': 'a\nb' }); } catch (e) { bad = e.name; }
  return bad;
}"#;
    assert_eq!(run(src, &server.url()), json!("TypeError"));
    let obj = server.request("/obj");
    assert_eq!(
        header(&obj, "content-type"),
        ["text/plain;charset=UTF-8"],
        "{obj}"
    );
    assert!(obj.ends_with("[object Object]"), "{obj}");
    assert_eq!(
        header(&server.request("/undef"), "x-api-key"),
        ["undefined"]
    );
    assert_eq!(header(&server.request("/dup"), "x-dup"), ["a", "b"]);
    // One byte per character, as Node writes header values.
    assert_eq!(header(&server.request("/latin1"), "x-name"), ["caf\u{e9}"]);
}

#[test]
fn received_header_values_are_read_as_node_reads_them_and_never_refused() {
    // `é` in UTF-8 and a byte past Latin-1 in a response: Node reads each
    // byte as one character and does not refuse them.
    let server = Server::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nx-name: caf\xc3\xa9\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                .to_vec(),
        )
    });
    let src = r#"
async function onTrack(event, settings) {
  const res = await fetch(settings.url);
  return { name: res.headers.get('x-name'), body: await res.text() };
}"#;
    assert_eq!(
        run(src, &server.url()),
        json!({"name": "caf\u{c3}\u{a9}", "body": "ok"})
    );
}

#[test]
fn a_source_function_runs_on_any_header_it_receives() {
    let out = run_source_once(
        &FunctionCode::new(
            "f",
            "function.js",
            r#"
async function onRequest(request) {
  Segment.track({ event: 'E', userId: 'u', properties: { name: request.headers.get('x-name') } });
  return new Response('ok', { status: 201 });
}"#,
        ),
        &RawRequest {
            method: "POST".into(),
            url: "https://hooks.example/functions/f".into(),
            headers: vec![("X-Name".into(), "名前 ✓".into())],
            body: b"{}".to_vec(),
        },
        &json!({}),
        &Limits::default(),
        FetchMode::Mock(Arc::new(vec![])),
    );
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.messages[0]["properties"]["name"], "名前 ✓");
    assert_eq!(out.response.expect("an answer").status, 201);
}

#[test]
fn a_received_header_forwarded_is_written_or_refused_as_node_fetch_does() {
    let server = Server::start(|_| Reply::Raw(ok("{}")));
    let src = r#"
async function onRequest(request, settings) {
  await fetch(settings.url + '/forward', { headers: { 'X-Name': request.headers.get('x-name') } });
}"#;
    let run = |name: &str| {
        run_source_once(
            &FunctionCode::new("f", "function.js", src),
            &RawRequest {
                method: "POST".into(),
                url: "https://hooks.example/functions/f".into(),
                headers: vec![("X-Name".into(), name.into())],
                body: b"{}".to_vec(),
            },
            &json!({ "url": server.url() }),
            &Limits::default(),
            live(),
        )
    };
    let out = run("café");
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(header(&server.request("/forward"), "x-name"), ["caf\u{e9}"]);
    let e = run("名前").error.expect("refused");
    assert_eq!(e.name, "TypeError");
    assert_eq!(e.message, "名前 is not a legal HTTP header value");
}
