//! End-to-end: destination functions, with a local server checking what
//! they send, and each error class's outcome.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn node_hmac_sha256(secret: &str, body: &str) -> String {
    let out = std::process::Command::new("node")
        .arg("-e")
        .arg("process.stdout.write(require('crypto').createHmac('sha256',process.argv[1]).update(process.argv[2]).digest('hex'))")
        .arg(secret)
        .arg(body)
        .output()
        .expect("node");
    String::from_utf8(out.stdout).unwrap()
}

fn functions_config(rx: &Receiver) -> String {
    format!(
        r##"
[server]
fetch_allow = ["127.0.0.1"]

[[sources]]
slug = "web"
kind = "tracking"
write_key = "wk_web"

[[functions]]
name = "slack"
kind = "destination"
file = "{slack}"
settings = [{{ name = "webhookUrl", type = "string", required = true }}, {{ name = "channel", type = "string" }}]

[[functions]]
name = "zendesk"
kind = "destination"
file = "{zendesk}"
settings = [{{ name = "apiToken", type = "string", required = true, encrypted = true }}]

[[functions]]
name = "forwarder"
kind = "destination"
file = "{forwarder}"

[[functions]]
name = "batcher"
kind = "destination"
file = "{batcher}"

[[destinations]]
name = "slack"
kind = "function"
function = "slack"
sources = ["web"]
settings = {{ webhookUrl = "{slack_url}", channel = "#sales" }}
filter = {{ types = ["track"] }}

[[destinations]]
name = "zendesk"
kind = "function"
function = "zendesk"
sources = ["web"]
settings = {{ baseUrl = "{zendesk_url}", email = "agent@example.com", apiToken = "zd-secret-9" }}
filter = {{ events = ["Ticket Requested"], types = ["track"] }}

[[destinations]]
name = "forwarder"
kind = "function"
function = "forwarder"
sources = ["web"]
settings = {{ url = "{forward_url}", secret = "fw-secret" }}

[[destinations]]
name = "batcher"
kind = "function"
function = "batcher"
sources = ["web"]
settings = {{ url = "{batch_url}" }}
batch_size = 5
batch_max_wait_ms = 300
filter = {{ types = ["track"] }}
"##,
        slack = fixture("slack.js"),
        zendesk = fixture("zendesk.js"),
        forwarder = fixture("forwarder.js"),
        batcher = fixture("batcher.js"),
        slack_url = rx.url("slack"),
        zendesk_url = rx.url("zendesk").trim_end_matches("/zendesk").to_string() + "/zendesk",
        forward_url = rx.url("forward"),
        batch_url = rx.url("batch"),
    )
}

#[tokio::test]
async fn realistic_destination_functions_send_what_their_apis_expect() {
    let rx = Receiver::start("unused");
    let sy = Switchyard::start(&functions_config(&rx));
    let events = vec![
        json!({"type": "track", "userId": "u1", "event": "Signed Up", "properties": {"plan": "pro"}}),
        json!({"type": "track", "userId": "u2", "event": "Ticket Requested", "properties": {"subject": "Help", "email": "u2@example.com"}}),
        json!({"type": "identify", "userId": "u3", "traits": {"name": "Ada"}}),
        json!({"type": "track", "userId": "u4", "event": "Bad", "properties": {"bad": true}}),
        json!({"type": "track", "userId": "u5", "event": "Fine"}),
    ];
    let (s, b) = sy
        .post("/v1/batch", "wk_web", &json!({"batch": events}).to_string())
        .await;
    assert_eq!(s, 200, "{b}");

    // Slack: one post per track, text built from the event.
    let slack = rx.wait_delivered("slack", 4, 30).await;
    let texts: Vec<String> = slack
        .iter()
        .map(|r| body(r)["text"].as_str().unwrap().to_string())
        .collect();
    assert!(
        texts.contains(&"*Signed Up* by u1".to_string()),
        "{texts:?}"
    );
    assert_eq!(body(&slack[0])["channel"], "#sales");
    assert_eq!(
        slack.len(),
        4,
        "tracks only (the filter drops the identify)"
    );

    // Zendesk: only Ticket Requested, with Basic auth.
    let zd = rx.wait_delivered("zendesk", 1, 30).await;
    let zd_body = body(&zd[0]);
    assert_eq!(zd_body["ticket"]["subject"], "Help");
    let expected = format!(
        "Basic {}",
        base64_encode("agent@example.com/token:zd-secret-9")
    );
    assert_eq!(zd[0]["headers"]["authorization"], expected);

    // The forwarder signs every event, identify included.
    let fw = rx.wait_delivered("forward", 5, 30).await;
    for r in &fw {
        let raw = r["raw"].as_str().unwrap();
        assert_eq!(
            r["headers"]["x-signature"],
            node_hmac_sha256("fw-secret", raw)
        );
    }

    // onBatch: one batch; the bad event is dead-lettered, the others delivered.
    let batches = rx.wait_delivered("batch", 1, 30).await;
    let sent: Vec<Value> = batches
        .iter()
        .flat_map(|r| body(r).as_array().unwrap().clone())
        .collect();
    assert_eq!(sent.len(), 3, "{sent:?}");
    let mut dead = Value::Null;
    for _ in 0..100 {
        let (_, d) = sy
            .admin("GET", "/api/v1/destinations/batcher/deadletters", None)
            .await;
        if d["data"].as_array().is_some_and(|a| !a.is_empty()) {
            dead = d;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead["data"].as_array().unwrap().len(), 1, "{dead}");
    assert_eq!(dead["data"][0]["body"][0]["userId"], "u4");
    assert!(dead["data"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("bad event"));

    // Logs never show encrypted settings.
    let (_, attempts) = sy
        .admin("GET", "/api/v1/destinations/zendesk/attempts", None)
        .await;
    assert_eq!(attempts["data"][0]["outcome"], "delivered", "{attempts}");
    assert!(!attempts.to_string().contains("zd-secret-9"));
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn each_error_class_has_its_outcome_and_stuck_functions_stall_nothing() {
    let rx = Receiver::start("s3cret");
    let config = format!(
        r#"
[[sources]]
slug = "web"
kind = "tracking"
write_key = "wk_web"

[[functions]]
name = "errors"
kind = "destination"
file = "{errors}"
timeout_ms = 300
memory_mb = 16

[[destinations]]
name = "errors"
kind = "function"
function = "errors"
sources = ["web"]
retry_initial_ms = 100
max_retry_age = "2s"
concurrency = 2

[[destinations]]
name = "healthy"
kind = "webhooks"
sources = ["web"]
urls = ["{healthy}"]
shared_secret = "s3cret"
"#,
        errors = fixture("errors.js"),
        healthy = rx.url("healthy"),
    );
    let sy = Switchyard::start(&config);
    let names = [
        "retry",
        "invalid",
        "validation",
        "drop",
        "boom",
        "loop",
        "bomb",
        "fine",
    ];
    let mut batch: Vec<Value> = names
        .iter()
        .map(|n| json!({"type": "track", "userId": "u", "event": n, "messageId": format!("m-{n}")}))
        .collect();
    batch.push(json!({"type": "identify", "userId": "u", "messageId": "m-identify"}));
    let (s, _) = sy
        .post("/v1/batch", "wk_web", &json!({"batch": batch}).to_string())
        .await;
    assert_eq!(s, 200);
    // The healthy destination is not held up by the stuck function.
    rx.wait_delivered("healthy", 9, 30).await;

    // Wait until retry/loop/bomb are given up on (max age 2 s).
    let mut letters: HashMap<String, Value> = HashMap::new();
    for _ in 0..300 {
        let (_, d) = sy
            .admin("GET", "/api/v1/destinations/errors/deadletters", None)
            .await;
        letters = d["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["message_ids"][0].as_str().unwrap().to_string(), l.clone()))
            .collect();
        if letters.len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: std::collections::BTreeSet<&str> = letters.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        [
            "m-bomb",
            "m-boom",
            "m-invalid",
            "m-loop",
            "m-retry",
            "m-validation"
        ]
        .into_iter()
        .collect(),
        "{letters:#?}"
    );
    // Not retried: one attempt, error and stack kept.
    for id in ["m-invalid", "m-validation", "m-boom"] {
        assert_eq!(letters[id]["attempts"], 1, "{id}: {}", letters[id]);
        assert!(letters[id]["last_error"]
            .as_str()
            .unwrap()
            .contains("not retried"));
    }
    assert!(letters["m-invalid"]["last_error"]
        .as_str()
        .unwrap()
        .contains("InvalidEventPayload: missing field"));
    assert!(
        letters["m-boom"]["last_error"]
            .as_str()
            .unwrap()
            .contains("errors.js"),
        "the stack is kept"
    );
    // Retried until the maximum age.
    for id in ["m-retry", "m-loop", "m-bomb"] {
        assert!(
            letters[id]["attempts"].as_u64().unwrap() >= 2,
            "{id}: {}",
            letters[id]
        );
        assert!(
            letters[id]["last_error"]
                .as_str()
                .unwrap()
                .contains("gave up"),
            "{}",
            letters[id]
        );
    }
    assert!(letters["m-loop"]["last_error"]
        .as_str()
        .unwrap()
        .contains("time budget"));
    assert!(letters["m-bomb"]["last_error"]
        .as_str()
        .unwrap()
        .contains("memory"));

    // Dropped and unsupported are recorded, not dead letters.
    let (_, attempts) = sy
        .admin(
            "GET",
            "/api/v1/destinations/errors/attempts?limit=1000",
            None,
        )
        .await;
    let by_id: HashMap<String, Vec<String>> =
        attempts["data"]
            .as_array()
            .unwrap()
            .iter()
            .fold(HashMap::new(), |mut m, a| {
                m.entry(a["message_id"].as_str().unwrap().to_string())
                    .or_default()
                    .push(a["outcome"].as_str().unwrap().to_string());
                m
            });
    assert_eq!(by_id["m-drop"], ["dropped"]);
    assert_eq!(by_id["m-identify"], ["unsupported"]);
    assert_eq!(by_id["m-fine"], ["delivered"]);
    assert!(by_id["m-retry"].iter().filter(|o| *o == "retry").count() >= 1);
    // Each run is counted by its outcome.
    let (_, metrics) = sy.get_text("/metrics").await;
    for outcome in ["ok", "error", "dropped", "unsupported"] {
        let series = format!(
            "switchyard_function_invocations_total{{destination=\"errors\",outcome=\"{outcome}\"}}"
        );
        assert!(
            metrics.contains(&series),
            "{series} missing from:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn offline_destination_test_with_fetch_mocks() {
    let dir = TempDir::new("dcli");
    let event = dir.0.join("event.json");
    std::fs::write(&event, json!({"type": "track", "event": "Ticket Requested", "userId": "u", "properties": {"subject": "S", "email": "e@x"}}).to_string()).unwrap();
    let settings = dir.0.join("settings.json");
    std::fs::write(
        &settings,
        json!({"baseUrl": "https://acme.zendesk.example", "email": "a@b", "apiToken": "t"})
            .to_string(),
    )
    .unwrap();
    let mock = dir.0.join("mock.json");
    std::fs::write(&mock, json!([{"url": "https://acme.zendesk.example/api/", "status": 201, "body": {"ticket": {"id": 7}}}]).to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["functions", "test"])
        .arg(fixture("zendesk.js"))
        .arg("--event")
        .arg(&event)
        .arg("--settings")
        .arg(&settings)
        .arg("--fetch-mock")
        .arg(&mock)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"], json!({"ticket": {"id": 7}}));
    assert_eq!(v["requests"][0]["method"], "POST");
    assert_eq!(
        v["requests"][0]["url"],
        "https://acme.zendesk.example/api/v2/tickets.json"
    );
    assert_eq!(
        v["requests"][0]["headers"]["authorization"],
        format!("Basic {}", base64_encode("a@b/token:t"))
    );
    assert_eq!(v["error"], Value::Null);
    // Without mocks every fetch gets 200 {}.
    std::fs::write(
        &settings,
        json!({"webhookUrl": "https://hooks.slack.example/T1"}).to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["functions", "test"])
        .arg(fixture("slack.js"))
        .arg("--event")
        .arg(&event)
        .arg("--settings")
        .arg(&settings)
        .arg("--json")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"], Value::Null, "{v}");
    assert_eq!(v["requests"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn api_test_runs_mock_fetch_or_really_send_when_asked() {
    let rx = Receiver::start("unused");
    let sy = Switchyard::start(&functions_config(&rx));
    let event = json!({"type": "track", "userId": "u", "event": "Tested"});
    let settings = json!({"webhookUrl": rx.url("live")});
    let (s, out) = sy
        .admin(
            "POST",
            "/api/v1/functions/slack/test",
            Some(json!({"event": event, "settings": settings})),
        )
        .await;
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["error"], Value::Null);
    assert_eq!(out["requests"][0]["url"], rx.url("live"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.received("live").await.is_empty(), "mocked: nothing sent");
    let (s, out) = sy
        .admin(
            "POST",
            "/api/v1/functions/slack/test",
            Some(json!({"event": event, "settings": settings, "live_fetch": true})),
        )
        .await;
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["error"], Value::Null, "{out}");
    let got = rx.wait_delivered("live", 1, 30).await;
    assert_eq!(body(&got[0])["text"], "*Tested* by u");
}

/// The `[server]` function settings have flags and environment variables
/// like every other setting: `SWITCHYARD_FETCH_ALLOW` lets a function call
/// the loopback receiver, which the same server refuses without it.
#[tokio::test]
async fn function_settings_come_from_the_environment_too() {
    let rx = Receiver::start("unused");
    let config = config_with(&format!(
        r#"
[[functions]]
name = "fwd"
kind = "destination"
file = "{forwarder}"
settings = [{{ name = "url", required = true }}, {{ name = "secret" }}]

[[destinations]]
name = "forward"
kind = "function"
function = "fwd"
sources = ["web"]
settings = {{ url = "{url}", secret = "s" }}
"#,
        forwarder = fixture("forwarder.js"),
        url = rx.url("fwd"),
    ));
    let env = |pairs: &[(&str, &str)]| Launch {
        env: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Launch::default()
    };
    let allowed = Switchyard::start_with(
        &config,
        env(&[
            ("SWITCHYARD_FETCH_ALLOW", "127.0.0.1,localhost"),
            ("SWITCHYARD_FUNCTION_WORKERS", "1"),
        ]),
    );
    let event = r#"{"userId":"u","event":"E","messageId":"allowed"}"#;
    assert_eq!(allowed.post("/v1/track", "wk_web", event).await.0, 200);
    let got = rx.wait_delivered("fwd", 1, 30).await;
    assert_eq!(message_id(&got[0]), "allowed");

    let refused = Switchyard::start(&config);
    let event = r#"{"userId":"u","event":"E","messageId":"refused"}"#;
    assert_eq!(refused.post("/v1/track", "wk_web", event).await.0, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, attempts) = refused
            .admin("GET", "/api/v1/destinations/forward/attempts", None)
            .await;
        if attempts.to_string().contains("private or loopback") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refused fetch recorded: {attempts}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rx.received("fwd").await.len(), 1, "nothing more arrived");
}

/// An HTTP server on loopback that holds every request until `release()`
/// (or a generous deadline), then answers each 200; it counts the requests
/// it got.
struct HoldingServer {
    port: u16,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    release: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HoldingServer {
    fn start() -> HoldingServer {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, r, st) = (seen.clone(), release.clone(), stop.clone());
        std::thread::spawn(move || {
            // Past the test's own wait: the test fails on what it sees
            // before the server lets anything through.
            let deadline = std::time::Instant::now() + Duration::from_secs(90);
            let mut held = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let mut buf = vec![0u8; 65536];
                        let _ = stream.read(&mut buf);
                        held.push(stream);
                        s.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
                if r.load(Ordering::SeqCst) || std::time::Instant::now() >= deadline {
                    for mut stream in held.drain(..) {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        );
                    }
                }
            }
        });
        HoldingServer {
            port,
            seen,
            release,
            stop,
        }
    }

    fn seen(&self) -> usize {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HoldingServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// With one function worker, a destination whose upstream holds every
/// request gets as many in flight as its `concurrency` (not one), and a
/// source function still answers meanwhile, on that same worker.
#[tokio::test]
async fn one_function_worker_honours_a_destinations_concurrency() {
    let upstream = HoldingServer::start();
    let code = TempDir::new("in-flight-functions");
    let slow = code.0.join("slow.js");
    std::fs::write(
        &slow,
        "async function onTrack(event, settings) {\n  const res = await fetch(settings.url, { method: 'POST', body: JSON.stringify(event) });\n  if (res.status !== 200) throw new RetryError('upstream ' + res.status);\n}\n",
    )
    .unwrap();
    let echo = code.0.join("echo.js");
    std::fs::write(
        &echo,
        "async function onRequest(request) {\n  await new Promise((r) => setTimeout(r, 5));\n  return new Response('echo ' + request.json().n, { status: 200 });\n}\n",
    )
    .unwrap();
    let sy = Switchyard::start(&format!(
        r#"
[server]
fetch_allow = ["127.0.0.1"]
function_workers = 1

[[sources]]
slug = "web"
kind = "tracking"
write_key = "wk_web"

[[sources]]
slug = "echo"
kind = "function"
function = "echo"
token = "tok_echo"
respond = "function"

[[functions]]
name = "slow"
kind = "destination"
file = "{slow}"
timeout_ms = 60000

[[functions]]
name = "echo"
kind = "source"
file = "{echo}"

[[destinations]]
name = "slow"
kind = "function"
function = "slow"
sources = ["web"]
settings = {{ url = "http://127.0.0.1:{port}/hold" }}
concurrency = 8
"#,
        slow = slow.display(),
        echo = echo.display(),
        port = upstream.port,
    ));
    sy.send_tracks(12, "held").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while upstream.seen() < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} requests reached the upstream at once; log:\n{}",
            upstream.seen(),
            sy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Meanwhile, on the one worker, a source function runs and answers.
    let (status, answer) = sy
        .post_with(
            "/functions/echo/tok_echo",
            None,
            br#"{"n": 7}"#.to_vec(),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!("echo 7"));
    // Nothing was answered upstream yet, and the destination kept to its
    // concurrency: exactly 8 of the 12 went out.
    assert_eq!(upstream.seen(), 8, "no more than `concurrency` in flight");

    upstream
        .release
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut delivered = 0;
    for _ in 0..300 {
        let (_, attempts) = sy
            .admin("GET", "/api/v1/destinations/slow/attempts?limit=1000", None)
            .await;
        delivered = attempts["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["outcome"] == "delivered")
            .count();
        if delivered == 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(delivered, 12, "log:\n{}", sy.log());
}
