//! End-to-end: the Tracking API's answers to good and bad input.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn bad_input_gets_a_precise_answer_and_the_server_keeps_serving() {
    let sy = Switchyard::start(&config_with(""));
    let track = |b: &str| b.to_string();

    // Malformed JSON.
    let (s, b) = sy.post("/v1/track", "wk_web", "{\"userId\": ").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("malformed_json")),
        "{b}"
    );
    // Empty body.
    let (s, b) = sy.post("/v1/track", "wk_web", "").await;
    assert_eq!(s, 400, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("empty"));
    // Not an object.
    let (s, b) = sy.post("/v1/track", "wk_web", "[1,2]").await;
    assert_eq!(s, 400, "{b}");
    // Missing fields, named.
    let (s, b) = sy
        .post("/v1/track", "wk_web", &track(r#"{"userId":"u"}"#))
        .await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("event")),
        "{b}"
    );
    let (s, b) = sy.post("/v1/identify", "wk_web", r#"{"traits":{}}"#).await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("userId")),
        "{b}"
    );
    let (s, b) = sy.post("/v1/group", "wk_web", r#"{"userId":"u"}"#).await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("groupId")),
        "{b}"
    );
    let (s, b) = sy.post("/v1/alias", "wk_web", r#"{"userId":"u"}"#).await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("previousId")),
        "{b}"
    );
    // Wrong types.
    let (s, b) = sy
        .post("/v1/track", "wk_web", r#"{"userId":"u","event":42}"#)
        .await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("event")),
        "{b}"
    );
    let (s, b) = sy
        .post(
            "/v1/track",
            "wk_web",
            r#"{"userId":"u","event":"e","properties":"x"}"#,
        )
        .await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("properties")),
        "{b}"
    );
    let (s, b) = sy
        .post(
            "/v1/track",
            "wk_web",
            r#"{"userId":"u","event":"e","timestamp":"noon"}"#,
        )
        .await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("timestamp")),
        "{b}"
    );
    // messageId too long.
    let long = "m".repeat(101);
    let (s, b) = sy
        .post(
            "/v1/track",
            "wk_web",
            &json!({"userId": "u", "event": "e", "messageId": long}).to_string(),
        )
        .await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("messageId")),
        "{b}"
    );
    // Oversize message (> 32 KB) and oversize body (> 500 KB).
    let big = "x".repeat(40 * 1024);
    let (s, b) = sy
        .post(
            "/v1/track",
            "wk_web",
            &json!({"userId": "u", "event": "e", "properties": {"b": big}}).to_string(),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("message_too_large")),
        "{b}"
    );
    // Measured as sent: spaces and escapes count too.
    let padded = format!(
        r#"{{"userId":"u","event":"e","properties":{{"b":"{}"}}{}}}"#,
        "x".repeat(30 * 1024),
        " ".repeat(4 * 1024)
    );
    let (s, b) = sy.post("/v1/track", "wk_web", &padded).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("message_too_large")),
        "{b}"
    );
    let huge = "x".repeat(600 * 1024);
    let (s, b) = sy
        .post("/v1/batch", "wk_web", &json!({"batch": [{"type": "track", "userId": "u", "event": "e", "properties": {"b": huge}}]}).to_string())
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{b}"
    );
    // Invalid UTF-8.
    let (s, b) = sy
        .post_with(
            "/v1/track",
            Some("wk_web"),
            b"{\"userId\":\"\xff\xfe\",\"event\":\"e\"}".to_vec(),
            &[],
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_utf8")),
        "{b}"
    );
    // Deep nesting.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let (s, b) = sy
        .post(
            "/v1/track",
            "wk_web",
            &format!(r#"{{"userId":"u","event":"e","properties":{{"d":{deep}}}}}"#),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("json_too_deep")),
        "{b}"
    );
    // Gzip: valid bodies (in one member or several, as RFC 1952 allows) are
    // read whole; a bomb is refused, not expanded; what is not gzip, or
    // follows its last member, is refused.
    let mut two_members = gzip(br#"{"userId":"u","#);
    two_members.extend(gzip(br#""event":"two members"}"#));
    let mut trailing = gzip(br#"{"userId":"u","event":"zipped"}"#);
    trailing.extend_from_slice(b"garbage");
    let bomb = gzip(&vec![b' '; 50 * 1024 * 1024]);
    assert!(bomb.len() < 100 * 1024);
    for (path, body, want) in [
        (
            "/v1/track",
            gzip(br#"{"userId":"u","event":"zipped"}"#),
            (200, None),
        ),
        ("/v1/track", two_members, (200, None)),
        ("/v1/track", trailing, (400, Some("bad_gzip"))),
        ("/v1/batch", bomb, (413, Some("payload_too_large"))),
        ("/v1/track", b"not gzip".to_vec(), (400, Some("bad_gzip"))),
    ] {
        let (s, b) = sy
            .post_with(path, Some("wk_web"), body, &[("content-encoding", "gzip")])
            .await;
        assert_eq!((s, b["error"]["code"].as_str()), want, "{b}");
    }
    let (s, _) = sy
        .post_with(
            "/v1/track",
            Some("wk_web"),
            b"{}".to_vec(),
            &[("content-encoding", "br")],
        )
        .await;
    assert_eq!(s, 415);
    // Wrong and missing auth.
    let (s, b) = sy
        .post("/v1/track", "wk_wrong", r#"{"userId":"u","event":"e"}"#)
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{b}"
    );
    let (s, b) = sy
        .post_with(
            "/v1/track",
            None,
            br#"{"userId":"u","event":"e"}"#.to_vec(),
            &[],
        )
        .await;
    assert_eq!(s, 401, "{b}");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("write key"));
    let (s, _) = sy
        .post_with(
            "/v1/track",
            None,
            br#"{"userId":"u","event":"e"}"#.to_vec(),
            &[("authorization", "Bearer x")],
        )
        .await;
    assert_eq!(s, 401);
    // The write key in the body works too.
    let (s, b) = sy
        .post_with(
            "/v1/track",
            None,
            br#"{"userId":"u","event":"e","writeKey":"wk_web"}"#.to_vec(),
            &[],
        )
        .await;
    assert_eq!(s, 200, "{b}");
    // Unknown route: JSON 404.
    let (s, b) = sy.post("/v1/nope", "wk_web", "{}").await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")));

    // Still serving.
    let (s, text) = sy.get_text("/healthz").await;
    assert_eq!(s, 200, "{text}");
    let (s, b) = sy
        .post("/v1/track", "wk_web", r#"{"userId":"u","event":"ok"}"#)
        .await;
    assert_eq!((s, b), (200, json!({"success": true})));
}

#[tokio::test]
async fn a_batch_keeps_its_good_items_and_reports_the_bad_ones() {
    let sy = Switchyard::start(&config_with(""));
    let batch = json!({"batch": [
        {"type": "track", "userId": "u", "event": "ok-1"},
        {"type": "track", "userId": "u"},
        {"type": "identify", "anonymousId": "a"},
        {"type": "purchase", "userId": "u"},
        {"userId": "u", "event": "no type"},
    ]});
    let (s, b) = sy.post("/v1/batch", "wk_web", &batch.to_string()).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["success"], true);
    let rejected = b["rejected"].as_array().unwrap();
    let indices: Vec<u64> = rejected
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [1, 3, 4]);
    assert_eq!(rejected[0]["field"], "event");
    assert_eq!(rejected[1]["field"], "type");

    // Rejections are kept and visible.
    let (s, list) = sy
        .admin("GET", "/api/v1/sources/web/rejections", None)
        .await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    assert!(list["data"][0]["excerpt"]
        .as_str()
        .unwrap()
        .contains("no type"));

    // No valid item at all: 400, with the reasons.
    let (s, b) = sy
        .post(
            "/v1/batch",
            "wk_web",
            &json!({"batch": [{"type": "track"}]}).to_string(),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["rejected"][0]["index"], 0);
    let (s, b) = sy.post("/v1/batch", "wk_web", r#"{"batch": []}"#).await;
    assert_eq!((s, b["error"]["field"].as_str()), (400, Some("batch")));
    let (s, _) = sy.post("/v1/batch", "wk_web", r#"{"batch": {}}"#).await;
    assert_eq!(s, 400);
    // Too many events.
    let many: Vec<Value> = (0..2501)
        .map(|_| json!({"type": "track", "userId": "u", "event": "e"}))
        .collect();
    let (s, b) = sy
        .post("/v1/batch", "wk_web", &json!({"batch": many}).to_string())
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("batch_too_large")),
        "{b}"
    );
    // /v1/import is the same door.
    let (s, b) = sy
        .post(
            "/v1/import",
            "wk_web",
            &json!({"batch": [{"type": "page", "userId": "u"}]}).to_string(),
        )
        .await;
    assert_eq!(s, 200, "{b}");

    // An emoji cut in half is a lone surrogate: valid JSON that costs neither
    // its batch nor its own message, which keeps U+FFFD in its place.
    let (s, b) = sy
        .post(
            "/v1/batch",
            "wk_web",
            r#"{"batch": [{"type": "track", "userId": 77.0, "event": "Great \ud83d", "messageId": "cut"},
                          {"type": "track", "userId": "u", "event": "clean", "messageId": "clean",
                           "timestamp": "2024-01-01T10:00+0100"}]}"#,
        )
        .await;
    assert_eq!((s, &b["rejected"]), (200, &Value::Null), "{b}");
    let (_, recent) = sy
        .admin("GET", "/api/v1/sources/web/events?limit=100", None)
        .await;
    let stored = |id: &str| {
        recent["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["messageId"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not stored: {recent}"))
    };
    assert_eq!(stored("cut")["event"], "Great \u{fffd}");
    assert_eq!(stored("cut")["userId"], "77", "identifiers are strings");
    assert_eq!(
        stored("clean")["originalTimestamp"],
        "2024-01-01T09:00:00.000Z"
    );
    assert_eq!(stored("clean")["version"], 1);
}

#[tokio::test]
async fn management_routes_refuse_missing_and_wrong_tokens() {
    let sy = Switchyard::start(&config_with(""));
    let client = http_client();
    for (auth, expected) in [
        (None, 401),
        (Some("Bearer nope"), 401),
        (Some("Basic d2tfd2ViOg=="), 401),
    ] {
        let mut req = client.get(format!("{}/api/v1/sources/web/rejections", sy.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), expected, "{auth:?}");
    }
    let (s, _) = sy
        .admin("GET", "/api/v1/sources/nope/rejections", None)
        .await;
    assert_eq!(s, 404);
    let (s, _) = sy
        .admin("GET", "/api/v1/destinations/nope/deadletters", None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn metrics_count_per_source() {
    let sy = Switchyard::start(&config_with(""));
    let (s, _) = sy
        .post("/v1/track", "wk_web", r#"{"userId":"u","event":"e"}"#)
        .await;
    assert_eq!(s, 200);
    let (s, text) = sy.get_text("/metrics").await;
    assert_eq!(s, 200);
    assert!(
        text.contains("switchyard_events_stored_total{source=\"web\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_events_received_total{source=\"web\"} 1"),
        "{text}"
    );
}

/// Runs `switchyard serve` with no configuration in `dir` until it listens;
/// returns its stdout lines and the child (which the caller stops and waits for).
#[allow(clippy::zombie_processes)]
fn serve_bare(dir: &std::path::Path) -> (Vec<String>, std::process::Child) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env_remove("SWITCHYARD_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("switchyard exited early: {lines:?}");
        }
        let done = line.contains("listening on");
        lines.push(line.trim_end().to_string());
        if done {
            return (lines, child);
        }
    }
}

#[tokio::test]
async fn first_start_without_configuration_creates_a_default_source() {
    let dir = TempDir::new("firststart");
    let (lines, child) = serve_bare(&dir.0);
    let text = lines.join("\n");
    assert!(text.contains("created source \"default\""), "{text}");
    let key = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("write key: "))
        .and_then(|l| l.split_whitespace().next())
        .expect("a write key is printed")
        .to_string();
    assert!(key.starts_with("wk_"));
    assert!(text.contains("admin token: sya_"), "{text}");
    let base = lines
        .last()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    let resp = http_client()
        .post(format!("{base}/v1/track"))
        .basic_auth(&key, Some(""))
        .body(r#"{"userId":"u","event":"Hello"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait_with_output().unwrap().status;
    assert!(status.success(), "SIGTERM exits cleanly");
    assert!(
        dir.0.join("switchyard-data/switchyard.db").exists(),
        "data in ./switchyard-data"
    );

    // Second start: the key is not shown again and still works.
    let (lines, mut child) = serve_bare(&dir.0);
    let text = lines.join("\n");
    assert!(!text.contains("write key"), "{text}");
    let base = lines
        .last()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    let resp = http_client()
        .post(format!("{base}/v1/identify"))
        .basic_auth(&key, Some(""))
        .body(r#"{"userId":"u"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let _ = child.kill();
    let _ = child.wait();
}

/// What analytics.js does from a web page: it posts `text/plain` bodies
/// carrying the write key to `/v1/{first letter}` and batches to `/v1/b`,
/// across origins. Each message is stored once, without its write key, and
/// the browser may read every answer.
#[tokio::test]
async fn analytics_js_doors_take_text_plain_bodies_across_origins() {
    let sy = Switchyard::start(&config_with(""));
    let client = http_client();
    let origin = "http://shop.example";

    // The preflight a browser sends before a JSON or authorized POST.
    let resp = client
        .request(reqwest::Method::OPTIONS, format!("{}/v1/t", sy.base))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let allowed = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(allowed("access-control-allow-origin"), "*");
    assert!(allowed("access-control-allow-methods").contains("POST"));
    assert_eq!(
        allowed("access-control-allow-headers"),
        "authorization,content-type"
    );

    let send = |path: &'static str, body: Value| {
        let request = client
            .post(format!("{}{path}", sy.base))
            .header("origin", origin)
            .header("content-type", "text/plain")
            .body(body.to_string());
        async move {
            let resp = request.send().await.unwrap();
            let allow = resp
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap().to_string());
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (status, allow, text)
        }
    };
    let message = |kind: &str, id: &str| {
        let mut m =
            json!({"writeKey": "wk_web", "type": kind, "anonymousId": "anon-1", "messageId": id});
        match kind {
            "track" => m["event"] = json!("Clicked"),
            "group" => m["groupId"] = json!("g1"),
            "alias" => m["previousId"] = json!("anon-0"),
            _ => {}
        }
        m
    };
    for (path, kind) in [
        ("/v1/t", "track"),
        ("/v1/i", "identify"),
        ("/v1/p", "page"),
        ("/v1/s", "screen"),
        ("/v1/g", "group"),
        ("/v1/a", "alias"),
    ] {
        let (status, allow, text) = send(path, message(kind, &format!("ajs-{kind}"))).await;
        assert_eq!(
            (status, allow.as_deref()),
            (200, Some("*")),
            "{path}: {text}"
        );
    }
    // The batching dispatcher: an object today, a bare array in older builds.
    let (status, allow, text) = send(
        "/v1/b",
        json!({"batch": [message("track", "ajs-b1")], "writeKey": "wk_web", "sentAt": "2026-12-03T10:00:00.000Z"}),
    )
    .await;
    assert_eq!((status, allow.as_deref()), (200, Some("*")), "{text}");
    let (status, _, text) = send("/v1/b", json!([message("track", "ajs-b2")])).await;
    assert_eq!(status, 200, "{text}");
    // A refusal is readable too, and names what is wrong.
    let (status, allow, text) = send("/v1/t", json!({"writeKey": "nope", "type": "track"})).await;
    assert_eq!((status, allow.as_deref()), (401, Some("*")), "{text}");
    let (status, _, text) = send("/v1/b", json!([{"type": "track", "event": "E"}])).await;
    assert_eq!(status, 401, "no write key anywhere: {text}");
    // Its reports about itself are taken and dropped (never stored), and a
    // flood is refused like an oversize message.
    let report = json!({"series": [{"type": "Counter", "metric": "analytics_js.invoke", "value": 1, "tags": {"method": "track"}}]});
    let (status, allow, text) = send("/v1/m", report).await;
    assert_eq!((status, allow.as_deref()), (200, Some("*")), "{text}");
    let (status, _, text) = send("/v1/m", json!({"series": "x".repeat(40_000)})).await;
    assert_eq!(status, 413, "{text}");

    let (s, list) = sy
        .admin("GET", "/api/v1/sources/web/events?limit=100", None)
        .await;
    assert_eq!(s, 200, "{list}");
    let stored = list["data"].as_array().unwrap();
    let mut ids: Vec<&str> = stored
        .iter()
        .map(|e| e["messageId"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [
            "ajs-alias",
            "ajs-b1",
            "ajs-b2",
            "ajs-group",
            "ajs-identify",
            "ajs-page",
            "ajs-screen",
            "ajs-track"
        ]
    );
    for event in stored {
        assert!(event.get("writeKey").is_none(), "{event}");
    }
    let types: std::collections::BTreeSet<&str> =
        stored.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types.into_iter().collect::<Vec<_>>(),
        ["alias", "group", "identify", "page", "screen", "track"]
    );
}

/// analytics.js given switchyard as its `cdnURL` loads its settings here,
/// and is told to send its calls to the host it asked.
#[tokio::test]
async fn analytics_js_settings_name_the_host_it_reached() {
    let sy = Switchyard::start(&config_with(""));
    let client = http_client();
    let resp = client
        .get(format!("{}/v1/projects/wk_web/settings", sy.base))
        .header("origin", "http://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"]
            .to_str()
            .unwrap(),
        "*"
    );
    let settings: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    let segment = &settings["integrations"]["Segment.io"];
    let host = sy.base.trim_start_matches("http://");
    assert_eq!(segment["apiKey"], "wk_web");
    assert_eq!(segment["apiHost"], format!("{host}/v1"));
    assert_eq!(segment["protocol"], "http");
    assert_eq!(settings["metrics"]["sampleRate"], 0);

    // Behind a TLS proxy: its host and scheme.
    let text = client
        .get(format!("{}/v1/projects/wk_web/settings", sy.base))
        .header("host", "events.shop.example")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let settings: Value = serde_json::from_str(&text).unwrap();
    let segment = &settings["integrations"]["Segment.io"];
    assert_eq!(segment["apiHost"], "events.shop.example/v1");
    assert_eq!(segment["protocol"], "https");

    // The host named is one that answers analytics.js's calls.
    let (s, b) = sy
        .post_with(
            "/v1/t",
            None,
            json!({"writeKey": "wk_web", "type": "track", "event": "E", "anonymousId": "a"})
                .to_string()
                .into_bytes(),
            &[],
        )
        .await;
    assert_eq!(s, 200, "{b}");

    let resp = client
        .get(format!("{}/v1/projects/nope/settings", sy.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("write key"));
}

/// A client that hangs up while its event is on its way to the disk does
/// not get an answer, but the event is stored all the same (a retry would
/// be deduplicated), so it must be counted as stored and delivered: once
/// the server is idle, received and stored agree, and the destination got
/// each stored event once. (A request the server had not read when its
/// client hung up is neither received nor stored.)
#[tokio::test]
async fn events_of_clients_that_hang_up_are_counted_as_stored_and_delivered() {
    let receiver = Receiver::start("s3cret");
    let sy = Switchyard::start(&config_with(&signed_hook(
        &receiver.url("hangup"),
        "s3cret",
    )));
    const CLIENTS: usize = 200;
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let addr = sy.addr.clone();
        clients.push(tokio::spawn(async move {
            let body = format!(r#"{{"userId":"u","event":"e","messageId":"hang-up-{n}"}}"#);
            let request = raw_post(&addr, "/v1/track", &body);
            // Hanging up from at once to 4 ms later: some clients hang up
            // before their request is read, most while it waits for its
            // group commit, some after the answer.
            send_and_hang_up(&addr, &request, Duration::from_micros(20 * n as u64)).await;
        }));
    }
    for client in clients {
        client.await.expect("client");
    }
    // Settled: the same count of received events twice, 300 ms apart.
    let (mut settled, mut last) = (None, String::new());
    for _ in 0..40 {
        let (status, text) = sy.get_text("/metrics").await;
        assert_eq!(status, 200);
        let received = web_counter(&text, "switchyard_events_received_total");
        let stored = web_counter(&text, "switchyard_events_stored_total");
        if received > 0 && stored == received && settled == Some(received) {
            let arrived = receiver.wait_delivered("hangup", stored as usize, 20).await;
            let mut ids: Vec<String> = arrived.iter().map(message_id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len() as u64, stored, "each stored event arrives once");
            assert_eq!(
                arrived.len() as u64,
                stored,
                "each stored event arrives once"
            );
            return;
        }
        settled = Some(received);
        last = text;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("received and stored still disagree after 12 s:\n{last}");
}

/// A client that shuts down its sending side once its request is out (as
/// `nc -N` does) still reads the answer, for a single call and for a batch,
/// and the events are stored once.
#[tokio::test]
async fn a_client_that_half_closes_still_gets_its_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let receiver = Receiver::start("s3cret");
    let sy = Switchyard::start(&config_with(&signed_hook(&receiver.url("half"), "s3cret")));
    let calls = [
        (
            "/v1/track",
            json!({"userId": "u", "event": "e", "messageId": "half-1"}),
        ),
        (
            "/v1/batch",
            json!({"batch": [
                {"type": "identify", "userId": "u", "messageId": "half-2"},
                {"type": "track", "userId": "u", "event": "e", "messageId": "half-3"},
            ]}),
        ),
    ];
    for (path, body) in calls {
        let body = body.to_string();
        let mut stream = tokio::net::TcpStream::connect(&sy.addr)
            .await
            .expect("connect");
        let request = raw_post(&sy.addr, path, &body);
        stream.write_all(request.as_bytes()).await.expect("send");
        stream.shutdown().await.expect("half-close");
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
            .await
            .expect("an answer within 10 s")
            .expect("read the answer");
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "{path}: {answer}"
        );
        assert!(answer.ends_with(r#"{"success":true}"#), "{path}: {answer}");
    }
    let arrived = receiver.wait_delivered("half", 3, 20).await;
    let mut ids: Vec<String> = arrived.iter().map(message_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["half-1", "half-2", "half-3"]);
}

/// Clients that trickle their requests are cut off after `client_timeout`:
/// headers that do not complete close the connection, a body that stalls
/// gets a 408 (in the tracking API and in the management API alike) and is
/// not stored, and the server goes on serving.
#[tokio::test]
async fn slow_clients_are_cut_off_after_the_client_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sy = Switchyard::start(&format!(
        "[server]\nclient_timeout = \"1s\"\n\n{}",
        config_with("")
    ));
    let read_all = |mut stream: tokio::net::TcpStream| async move {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the server ends the exchange within 10 s");
        // A reset is also an end; what was read before it counts.
        let _ = read;
        String::from_utf8_lossy(&answer).into_owned()
    };

    let mut headers_only = tokio::net::TcpStream::connect(&sy.addr)
        .await
        .expect("connect");
    headers_only
        .write_all(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        .await
        .expect("send");
    let body = r#"{"userId":"u","event":"e","messageId":"slow-body"}"#;
    let mut stalled_body = tokio::net::TcpStream::connect(&sy.addr)
        .await
        .expect("connect");
    let request = raw_post(&sy.addr, "/v1/track", body);
    stalled_body
        .write_all(&request.as_bytes()[..request.len() - body.len() + 10])
        .await
        .expect("send");
    let mut stalled_management = tokio::net::TcpStream::connect(&sy.addr)
        .await
        .expect("connect");
    stalled_management
        .write_all(
            format!(
                "POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{{\"name\":"
            )
            .as_bytes(),
        )
        .await
        .expect("send");
    let started = std::time::Instant::now();
    let (headers_answer, body_answer, management_answer) = tokio::join!(
        read_all(headers_only),
        read_all(stalled_body),
        read_all(stalled_management)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "cut off before the timeout"
    );
    assert!(
        !headers_answer.contains("200 OK"),
        "stalled headers: {headers_answer}"
    );
    assert!(
        body_answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "stalled body: {body_answer}"
    );
    assert!(
        body_answer.contains(r#""code":"body_timeout""#),
        "{body_answer}"
    );
    assert!(
        management_answer.starts_with("HTTP/1.1 408 Request Timeout\r\n")
            && management_answer.contains(r#""code":"body_timeout""#),
        "stalled management body: {management_answer}"
    );

    // Requests that arrive whole are served, and the stalled one was not stored.
    let (status, _) = sy
        .post(
            "/v1/track",
            "wk_web",
            r#"{"userId":"u","event":"e","messageId":"whole"}"#,
        )
        .await;
    assert_eq!(status, 200);
    let (_, metrics) = sy.get_text("/metrics").await;
    assert_eq!(web_counter(&metrics, "switchyard_events_stored_total"), 1);
}

/// A server started with a soft limit of 256 open files serves 600 clients
/// holding their connections open at once: it raises its own limit (to the
/// hard one) instead of leaving clients past the 256th waiting to be accepted.
#[tokio::test]
async fn clients_past_the_soft_open_files_limit_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CLIENTS: usize = 600;
    let sy = Switchyard::start_with(
        &config_with(""),
        Launch {
            open_files: Some(256),
            ..Launch::default()
        },
    );
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let addr = sy.addr.clone();
        clients.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            let body = format!(r#"{{"userId":"u","event":"e","messageId":"many-{n}"}}"#);
            let request = raw_post(&addr, "/v1/track", &body);
            stream.write_all(request.as_bytes()).await.expect("send");
            let mut answer = Vec::new();
            let mut buf = [0u8; 512];
            while !answer.ends_with(br#"{"success":true}"#) {
                let read = stream.read(&mut buf).await.expect("read");
                assert!(
                    read > 0,
                    "connection closed: {}",
                    String::from_utf8_lossy(&answer)
                );
                answer.extend_from_slice(&buf[..read]);
            }
            // Held open until every client has its answer.
            stream
        }));
    }
    let mut open = Vec::new();
    for client in clients {
        let stream = tokio::time::timeout(Duration::from_secs(20), client)
            .await
            .expect("every client answered within 20 s (were some never accepted?)")
            .expect("client");
        open.push(stream);
    }
    let (_, metrics) = sy.get_text("/metrics").await;
    assert_eq!(
        web_counter(&metrics, "switchyard_events_stored_total"),
        CLIENTS as u64
    );
    drop(open);
}

/// `switchyard serve` in `dir` with `SWITCHYARD_MASTER_KEY` set to `key` (or
/// unset): the child once it listens (the caller stops and waits for it), or
/// what it printed when it exited.
#[allow(clippy::zombie_processes)]
fn serve_with_master_key(
    dir: &std::path::Path,
    key: Option<&str>,
) -> Result<std::process::Child, String> {
    use std::io::{BufRead, Read};
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env_remove("SWITCHYARD_CONFIG")
        .env_remove("SWITCHYARD_MASTER_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(key) = key {
        command.env("SWITCHYARD_MASTER_KEY", key);
    }
    let mut child = command.spawn().unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            let _ = child.wait();
            return Err(err);
        }
        if line.contains("listening on") {
            return Ok(child);
        }
    }
}

#[test]
fn a_start_with_another_master_key_is_refused_and_changes_nothing() {
    let dir = TempDir::new("masterkey");
    let key = "ab".repeat(32);
    let stop = |mut child: std::process::Child| {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let _ = child.wait();
    };
    stop(serve_with_master_key(&dir.0, Some(&key)).expect("first start"));
    // Without the key: refused, saying why, and no key file is left behind
    // to lock the directory to a key nobody chose.
    let err = serve_with_master_key(&dir.0, None).expect_err("refused");
    assert!(err.contains("another master key"), "{err}");
    assert!(!dir.0.join("switchyard-data/master.key").exists());
    let err = serve_with_master_key(&dir.0, Some(&"cd".repeat(32))).expect_err("refused");
    assert!(err.contains("another master key"), "{err}");
    stop(serve_with_master_key(&dir.0, Some(&key)).expect("the right key starts"));
}
