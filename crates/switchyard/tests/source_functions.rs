//! End-to-end: source functions behind `POST /functions/{source}`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn config(receiver_url: &str) -> String {
    format!(
        r#"
[server]
function_retry_initial_ms = 50

[[sources]]
slug = "stigg"
kind = "function"
function = "stigg-to-track"
token = "tok_stigg"

[[sources]]
slug = "verified"
kind = "function"
function = "verify"
token = "tok_verified"
respond = "function"
settings = {{ signingSecret = "sign-me-123" }}

[[sources]]
slug = "windowed"
kind = "function"
function = "stigg-to-track"
token = "tok_windowed"
capture = "window"

[[sources]]
slug = "broken"
kind = "function"
function = "broken"
token = "tok_broken"

[[sources]]
slug = "echo"
kind = "function"
function = "echo"
token = "tok_echo"

[[functions]]
name = "echo"
kind = "source"
file = "{echo}"

[[functions]]
name = "stigg-to-track"
kind = "source"
file = "{stigg}"

[[functions]]
name = "verify"
kind = "source"
file = "{verify}"
settings = [{{ name = "signingSecret", type = "string", required = true, encrypted = true }}]

[[functions]]
name = "broken"
kind = "source"
file = "{broken}"
timeout_ms = 300
memory_mb = 16

[[destinations]]
name = "hook"
kind = "webhooks"
sources = ["stigg", "verified"]
urls = ["{receiver_url}"]
shared_secret = "s3cret"

[[destinations]]
name = "echoes"
kind = "webhooks"
sources = ["echo"]
urls = ["{echo_url}echoes"]
shared_secret = "s3cret"
"#,
        echo_url = receiver_url.trim_end_matches("hook"),
        stigg = fixture("stigg.js"),
        verify = fixture("verify.js"),
        broken = fixture("broken.js"),
        echo = fixture("echo_request.js"),
    )
}

async fn post_raw(
    sy: &Switchyard,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    sy.post_with(path, None, body.as_bytes().to_vec(), headers)
        .await
}

#[tokio::test]
async fn a_stigg_webhook_becomes_a_signed_track_event() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx.url("hook")));
    let payload = r#"{"type":"subscription.created","customer":{"id":"cust-1"},"plan":"pro"}"#;
    // The token in the header, the path and the query.
    let (s, b) = post_raw(
        &sy,
        "/functions/stigg",
        payload,
        &[("X-Segment-Source-Function-Token", "tok_stigg")],
    )
    .await;
    assert_eq!((s, b), (200, json!({"success": true})));
    let (s, _) = post_raw(&sy, "/functions/stigg/tok_stigg", payload, &[]).await;
    assert_eq!(s, 200);
    let (s, _) = post_raw(
        &sy,
        "/functions/stigg?token=tok_stigg&x=1",
        r#"{"type":"customer.updated"}"#,
        &[],
    )
    .await;
    assert_eq!(s, 200, "no customer: accepted, nothing emitted");
    let got = rx.wait_delivered("hook", 2, 30).await;
    for r in &got {
        assert_eq!(r["segmentSignatureValid"], true);
        let b = body(r);
        assert_eq!(
            (
                b["type"].as_str(),
                b["event"].as_str(),
                b["userId"].as_str()
            ),
            (Some("track"), Some("subscription_created"), Some("cust-1"))
        );
        assert_eq!(b["properties"]["plan"], "pro");
        assert!(b["messageId"].is_string() && b["receivedAt"].is_string());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received("hook").await.len(), 2);

    // Wrong or missing token.
    let (s, b) = post_raw(
        &sy,
        "/functions/stigg",
        payload,
        &[("X-Segment-Source-Function-Token", "nope")],
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, _) = post_raw(&sy, "/functions/stigg", payload, &[]).await;
    assert_eq!(s, 401);
    let (s, _) = post_raw(&sy, "/functions/stigg/tok_verified", payload, &[]).await;
    assert_eq!(s, 401, "another source's token");
    // Oversize body.
    let big = "x".repeat(2 * 1024 * 1024 + 10);
    let (s, b) = post_raw(&sy, "/functions/stigg/tok_stigg", &big, &[]).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );

    // The catcher kept the raw requests; the API shows them with their
    // credentials redacted.
    let (s, caps) = sy
        .admin("GET", "/api/v1/sources/stigg/captures", None)
        .await;
    assert_eq!(s, 200);
    let caps = caps["data"].as_array().unwrap().clone();
    assert_eq!(caps.len(), 3);
    assert_eq!(caps[0]["request"]["body"], r#"{"type":"customer.updated"}"#);
    assert!(
        caps[0]["request"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/functions/stigg?token=[redacted]&x=1"),
        "{}",
        caps[0]
    );
    assert!(
        caps[1]["request"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/functions/stigg/[redacted]"),
        "{}",
        caps[1]
    );
    assert!(
        !caps.iter().any(|c| c.to_string().contains("tok_stigg")),
        "the API never shows a token"
    );

    // Test without side effects on a capture, with unsaved code.
    let id = caps[1]["id"].as_i64().unwrap();
    let (s, t) = sy
        .admin("POST", "/api/v1/sources/stigg/test", Some(json!({"capture_id": id, "code": "async function onRequest(r) { console.log('hi'); Segment.track({userId: 'x', event: r.json().type}); }"})))
        .await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["events"][0]["event"], "subscription.created");
    assert_eq!(t["logs"][0]["message"], "hi");
    assert_eq!(t["error"], Value::Null);
    let (s, t) = sy
        .admin("POST", "/api/v1/sources/stigg/test", Some(json!({"payload": {"body": {"type": "a"}}, "code": "async function onRequest() {\n  throw new ValidationError('nope');\n}"})))
        .await;
    assert_eq!(s, 200);
    assert_eq!(t["error"]["name"], "ValidationError");
    assert_eq!(t["error"]["line"], 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received("hook").await.len(), 2, "tests deliver nothing");
}

#[tokio::test]
async fn exact_bytes_challenge_answers_logs_and_objects() {
    use hmac_helper::sign;
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx.url("hook")));
    // The challenge handshake gets the function's own answer.
    let (s, b) = post_raw(
        &sy,
        "/functions/verified/tok_verified",
        r#"{"challenge":"c-42"}"#,
        &[],
    )
    .await;
    assert_eq!((s, b), (200, json!({"challenge": "c-42"})));
    // Each Set-Cookie value the function gives is a header line of its own.
    for form in ["response", "object"] {
        let resp = http_client()
            .post(format!("{}/functions/verified/tok_verified", sy.base))
            .body(json!({ "cookies": form }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{form}");
        let cookies: Vec<&str> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2; HttpOnly"], "{form}");
    }
    // Unusual spacing and key order: the signature over the exact bytes verifies.
    let raw = "{ \"user\":\"u-9\",  \"plan\":\"team\", \"id\": 1.50 }";
    let sig = sign("sign-me-123", raw);
    let (s, b) = post_raw(
        &sy,
        "/functions/verified/tok_verified",
        raw,
        &[("X-Signature", &sig)],
    )
    .await;
    assert_eq!((s, b), (200, json!({"success": true})));
    let got = rx.wait_delivered("hook", 1, 30).await;
    let b = body(&got[0]);
    assert_eq!(
        (b["type"].as_str(), b["userId"].as_str()),
        (Some("identify"), Some("u-9"))
    );
    assert_eq!(b["traits"]["plan"], "team");
    // A bad signature: the function's error is the answer; nothing emitted.
    let (s, b) = post_raw(
        &sy,
        "/functions/verified/tok_verified",
        raw,
        &[("X-Signature", "bad")],
    )
    .await;
    assert_eq!(s, 500, "{b}");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("bad signature"));
    // The sender was told, and will send it again: switchyard does not
    // retry it as well. It waits in the dead letters, after one run.
    let (s, dead) = sy
        .admin("GET", "/api/v1/sources/verified/deadletters", None)
        .await;
    assert_eq!(s, 200, "{dead}");
    let dead = dead["data"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["attempts"], 1, "{dead:?}");
    // Logs, with the encrypted setting redacted.
    let (_, logs) = sy.admin("GET", "/api/v1/sources/verified/logs", None).await;
    let text = logs.to_string();
    assert!(text.contains("verified 1.5 with [redacted]"), "{text}");
    assert!(!text.contains("sign-me-123"));
    // Objects upserted by Segment.set.
    let (s, objects) = sy
        .admin(
            "GET",
            "/api/v1/sources/verified/objects?collection=accounts",
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(objects["data"][0]["id"], "u-9");
    assert_eq!(objects["data"][0]["properties"], json!({"plan": "team"}));
}

mod hmac_helper {
    pub fn sign(secret: &str, body: &str) -> String {
        // The sandbox's own HMAC is what is under test: compute this one in the
        // receiver's language-neutral way, with node.
        let out = std::process::Command::new("node")
            .arg("-e")
            .arg("const c=require('crypto');process.stdout.write(c.createHmac('sha256',process.argv[1]).update(process.argv[2]).digest('hex'))")
            .arg(secret)
            .arg(body)
            .output()
            .expect("node");
        String::from_utf8(out.stdout).unwrap()
    }
}

#[tokio::test]
async fn failing_functions_are_retried_then_dead_lettered_and_the_server_survives() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx.url("hook")));
    for mode in ["throw", "loop", "bomb"] {
        let (s, _) = post_raw(
            &sy,
            "/functions/broken/tok_broken",
            &json!({"mode": mode}).to_string(),
            &[],
        )
        .await;
        assert_eq!(s, 200, "acknowledged once stored");
    }
    let mut dead = Value::Null;
    for _ in 0..600 {
        let (_, d) = sy
            .admin("GET", "/api/v1/sources/broken/deadletters", None)
            .await;
        if d["data"].as_array().is_some_and(|a| a.len() == 3) {
            dead = d;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let items = dead["data"]
        .as_array()
        .unwrap_or_else(|| panic!("three dead letters expected: {dead}"));
    let errors: Vec<&str> = items
        .iter()
        .map(|d| d["last_error"].as_str().unwrap())
        .collect();
    assert!(items.iter().all(|d| d["attempts"] == 5), "{dead}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("InvalidEventPayload: cannot handle throw")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("time budget")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("memory limit")),
        "{errors:?}"
    );
    // Health counts the three requests, not their fifteen runs.
    let (_, health) = sy
        .admin("GET", "/api/v1/sources/broken/function", None)
        .await;
    assert_eq!(
        (
            health["health"]["consecutive_failures"].as_u64(),
            health["health"]["status"].as_str()
        ),
        (Some(3), Some("healthy")),
        "{health}"
    );
    // Still serving, and a healthy function on the same server still works.
    let (s, _) = post_raw(
        &sy,
        "/functions/stigg/tok_stigg",
        r#"{"type":"a.b","customer":{"id":"c"}}"#,
        &[],
    )
    .await;
    assert_eq!(s, 200);
    rx.wait_delivered("hook", 1, 30).await;
    let (_, logs) = sy
        .admin("GET", "/api/v1/sources/broken/logs?limit=100", None)
        .await;
    assert!(
        logs.to_string().contains("attempt 5 of 5, dead-lettered"),
        "{logs}"
    );
    // Replay puts them back in the queue.
    let (s, r) = sy
        .admin(
            "POST",
            "/api/v1/sources/broken/deadletters/replay",
            Some(json!({"ids": [items[0]["id"]]})),
        )
        .await;
    assert_eq!((s, r["replayed"].clone()), (200, json!(1)));
}

#[tokio::test]
async fn offline_test_command_with_a_functions_library_fixture() {
    let dir = TempDir::new("cli");
    let payload = dir.0.join("payload.json");
    std::fs::write(
        &payload,
        json!({"payload": {"body": {"type": "subscription.created", "customer": {"id": "c-7"}}, "headers": {"content-type": "application/json"}, "queryParameters": {"a": "1"}}, "settings": {}}).to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["functions", "test"])
        .arg(fixture("stigg.js"))
        .arg("--payload")
        .arg(&payload)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["events"][0]["event"], "subscription_created");
    assert_eq!(v["events"][0]["userId"], "c-7");
    assert_eq!(v["objects"], json!([]));
    assert_eq!(v["logs"], json!([]));
    assert_eq!(v["error"], Value::Null);

    let bad = dir.0.join("bad.js");
    std::fs::write(&bad, "async function onRequest(request) {\n  const b = request.json();\n  throw new InvalidEventPayload('no ' + b.type);\n}\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["functions", "test"])
        .arg(&bad)
        .arg("--payload")
        .arg(&payload)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["error"],
        json!({"name": "InvalidEventPayload", "message": "no subscription.created", "line": 3})
    );

    // --fetch-mock answers a source function's calls too, and they are listed.
    let enrich = dir.0.join("enrich.js");
    std::fs::write(&enrich, "async function onRequest(request, settings) {\n  const b = request.json();\n  const res = await fetch('https://crm.example/api/customers/' + b.customer.id);\n  const c = await res.json();\n  Segment.identify({ userId: b.customer.id, traits: { plan: c.plan, status: res.status } });\n}\n").unwrap();
    let mock = dir.0.join("mock.json");
    std::fs::write(
        &mock,
        json!([{"url": "https://crm.example/api/", "status": 203, "body": {"plan": "pro"}}])
            .to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["functions", "test"])
        .arg(&enrich)
        .arg("--payload")
        .arg(&payload)
        .arg("--fetch-mock")
        .arg(&mock)
        .arg("--json")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"], Value::Null, "{v}");
    assert_eq!(
        v["events"][0]["traits"],
        json!({"plan": "pro", "status": 203})
    );
    assert_eq!(
        v["requests"][0]["url"],
        "https://crm.example/api/customers/c-7"
    );
}

#[tokio::test]
async fn a_capture_window_source_keeps_requests_only_while_the_window_is_open() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx.url("hook")));
    let payload = r#"{"type":"a.b","customer":{"id":"c"}}"#;
    let (s, _) = post_raw(&sy, "/functions/windowed/tok_windowed", payload, &[]).await;
    assert_eq!(s, 200);
    let (_, caps) = sy
        .admin("GET", "/api/v1/sources/windowed/captures", None)
        .await;
    assert_eq!(caps["data"].as_array().unwrap().len(), 0, "no window open");
    let (_, status) = sy
        .admin("GET", "/api/v1/sources/windowed/capture", None)
        .await;
    assert_eq!(
        (status["mode"].as_str(), status["capturing"].as_bool()),
        (Some("window"), Some(false))
    );
    let (s, opened) = sy
        .admin(
            "POST",
            "/api/v1/sources/windowed/capture",
            Some(json!({"minutes": 5})),
        )
        .await;
    assert_eq!(s, 200, "{opened}");
    assert!(opened["capturing_until_ms"].as_i64().unwrap() > chrono::Utc::now().timestamp_millis());
    let (s, _) = post_raw(&sy, "/functions/windowed/tok_windowed", payload, &[]).await;
    assert_eq!(s, 200);
    let (_, caps) = sy
        .admin("GET", "/api/v1/sources/windowed/captures", None)
        .await;
    assert_eq!(caps["data"].as_array().unwrap().len(), 1);
    let (_, status) = sy.admin("GET", "/api/v1/sources/stigg/capture", None).await;
    assert_eq!(status["mode"], "always");
}

/// A sender that hangs up while a `respond = "function"` source runs its
/// function gets no answer, but its request was stored: the run goes on to
/// its end, and what it emits is delivered once, without waiting for a
/// restart to run the request again.
#[tokio::test]
async fn an_inline_run_whose_sender_hangs_up_still_delivers() {
    let rx = Receiver::start("s3cret");
    let code = TempDir::new("slow-function");
    let file = code.0.join("slow.js");
    std::fs::write(
        &file,
        r#"async function onRequest(request, settings) {
  const body = request.json();
  const started = Date.now();
  while (Date.now() - started < 600) {}
  Segment.track({ userId: body.user, event: 'Slow Done', messageId: 'slow-' + body.user });
  return new Response('done', { status: 200 });
}
"#,
    )
    .expect("write the function");
    let sy = Switchyard::start(&format!(
        r#"
[[sources]]
slug = "slow"
kind = "function"
function = "slow"
token = "tok_slow"
respond = "function"

[[functions]]
name = "slow"
kind = "source"
file = "{file}"

[[destinations]]
name = "hook"
kind = "webhooks"
sources = ["slow"]
urls = ["{url}"]
shared_secret = "s3cret"
"#,
        file = file.display(),
        url = rx.url("slow"),
    ));
    let payload = r#"{"user":"u-hang-up"}"#;
    let request = format!(
        "POST /functions/slow/tok_slow HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        sy.addr,
        payload.len()
    );
    // Stored by now (a sync takes well under 200 ms), and the function is
    // still running.
    send_and_hang_up(&sy.addr, &request, Duration::from_millis(200)).await;
    let got = rx.wait_delivered("slow", 1, 10).await;
    assert_eq!(body(&got[0])["messageId"], "slow-u-hang-up");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        delivered(&rx.received("slow").await).len(),
        1,
        "delivered once"
    );
}

/// Senders sign what they send (Twilio signs the whole URL it called): the
/// function sees the URL as called, token and proxy included, and the
/// sender's `Authorization`; logs, captures and the API show neither.
#[tokio::test]
async fn the_function_sees_the_request_as_sent_and_the_api_shows_no_credential() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx.url("hook")));
    let (s, b) = post_raw(
        &sy,
        "/functions/echo?token=tok_echo&x=1",
        "{}",
        &[
            ("Authorization", "Basic c2VuZGVyOnB3"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "hooks.example.org"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = post_raw(
        &sy,
        "/functions/echo",
        "{}",
        &[("X-Segment-Source-Function-Token", "tok_echo")],
    )
    .await;
    assert_eq!(s, 200);
    // A forwarded host that is not one is ignored: the path stays the path.
    let (s, _) = post_raw(
        &sy,
        "/functions/echo/tok_echo?x=3",
        "{}",
        &[("X-Forwarded-Host", "evil.example/x?y=#")],
    )
    .await;
    assert_eq!(s, 200);
    let got = rx.wait_delivered("echoes", 3, 30).await;
    let forged: Vec<Value> = got
        .iter()
        .map(|r| body(r)["properties"].clone())
        .filter(|p| p["url"].as_str().is_some_and(|u| u.ends_with("x=3")))
        .collect();
    assert_eq!(forged.len(), 1, "{got:?}");
    let url = forged[0]["url"].as_str().unwrap();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/functions/echo/tok_echo?x=3"),
        "{url}"
    );
    let got: Vec<Value> = got
        .into_iter()
        .filter(|r| {
            !body(r)["properties"]["url"]
                .as_str()
                .is_some_and(|u| u.ends_with("x=3"))
        })
        .collect();
    let mut seen: Vec<Value> = got.iter().map(|r| body(r)["properties"].clone()).collect();
    seen.sort_by_key(|p| p["url"].as_str().map(str::len));
    assert_eq!(
        seen[1],
        json!({
            "url": "https://hooks.example.org/functions/echo?token=tok_echo&x=1",
            "token": "tok_echo",
            "auth": "Basic c2VuZGVyOnB3",
            "switchyardToken": null,
        })
    );
    assert_eq!(
        seen[0]["switchyardToken"],
        Value::Null,
        "switchyard's own header is not passed on"
    );
    assert!(
        seen[0]["url"]
            .as_str()
            .unwrap()
            .ends_with("/functions/echo"),
        "{seen:?}"
    );

    // A token written percent-encoded, and a run that fails naming the
    // credentials: they reach the logs, dead letters and health redacted.
    let (s, b) = post_raw(
        &sy,
        "/functions/echo?token=tok%5Fecho&x=2",
        "{}",
        &[("Authorization", "Bearer s3nder-secret"), ("X-Fail", "1")],
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let mut letters = Value::Null;
    for _ in 0..200 {
        let (_, l) = sy
            .admin("GET", "/api/v1/sources/echo/deadletters", None)
            .await;
        if l["data"].as_array().is_some_and(|d| !d.is_empty()) {
            letters = l;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        letters["data"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("failed for")),
        "{letters}"
    );
    let (_, logs) = sy.admin("GET", "/api/v1/sources/echo/logs", None).await;
    assert!(
        logs.to_string().contains("echo?token=[redacted]&x=1"),
        "{logs}"
    );
    let (_, caps) = sy.admin("GET", "/api/v1/sources/echo/captures", None).await;
    let (_, health) = sy.admin("GET", "/api/v1/sources/echo/function", None).await;
    for shown in [&logs, &caps, &letters, &health] {
        let text = shown.to_string();
        for secret in ["tok_echo", "tok%5Fecho", "c2VuZGVyOnB3", "s3nder-secret"] {
            assert!(!text.contains(secret), "{secret} shown: {text}");
        }
        assert!(text.contains("[redacted]"), "{text}");
    }
}

/// A stop takes no more queued requests into the function: the runs under
/// way finish, and the rest wait in the store for the next start, where
/// each is run.
#[tokio::test]
async fn a_stop_leaves_queued_requests_for_the_next_start() {
    let rx = Receiver::start("s3cret");
    let upstream = rx.url("up");
    rx.control("up", json!({"status": 200, "times": -1, "delayMs": 1500}))
        .await;
    let config = format!(
        r#"
[server]
function_workers = 1
fetch_allow = ["127.0.0.1"]

[[sources]]
slug = "slow"
kind = "function"
function = "slow"
token = "tok_slow"
settings = {{ upstream = "{upstream}" }}

[[functions]]
name = "slow"
kind = "source"
file = "{file}"
timeout_ms = 10000
"#,
        file = fixture("slow_upstream.js"),
    );
    let mut sy = Switchyard::start(&config);
    const SENT: usize = 60;
    for n in 0..SENT {
        let (s, b) = post_raw(
            &sy,
            "/functions/slow/tok_slow",
            &json!({"n": n}).to_string(),
            &[],
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }
    // The first request ran alone; the others, queued meanwhile, are taken
    // together once it is done.
    for _ in 0..300 {
        if rx.received("up").await.len() > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_stop = rx.received("up").await.len();
    assert!(at_stop > 1 && at_stop < SENT, "{at_stop}");
    assert!(sy.terminate(), "a clean stop: {}", sy.log());
    let after_stop = rx.received("up").await.len();
    // At most the runs taken before the stop and not yet at the upstream.
    assert!(
        after_stop <= at_stop + 8,
        "the stop ran {} more requests: {at_stop} at the stop, {after_stop} after",
        after_stop - at_stop
    );
    sy.restart();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..600 {
        seen = rx
            .received("up")
            .await
            .iter()
            .filter_map(|r| body(r)["n"].as_u64())
            .collect();
        if seen.len() == SENT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen.len(),
        SENT,
        "every queued request runs after the start"
    );
}
