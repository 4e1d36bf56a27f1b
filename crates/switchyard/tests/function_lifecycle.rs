//! End-to-end: what happens to functions across deploys and restarts —
//! refused deploys change nothing, a function that cannot run does not stop
//! the server, pauses outlive restarts — and the test API's answers.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SOURCE_V1: &str = r#"
async function onRequest(request, settings) {
  console.log('ran v1');
  Segment.track({ event: 'v1', userId: 'u1' });
}
"#;

async fn create_function(sy: &Switchyard, body: Value) -> (u16, Value) {
    sy.admin("POST", "/api/v1/functions", Some(body)).await
}

/// Creates a function source; returns its webhook path (token included).
async fn create_source(sy: &Switchyard, slug: &str, function: &str, settings: Value) -> String {
    let (s, created) = sy
        .admin(
            "POST",
            "/api/v1/sources",
            Some(json!({"slug": slug, "kind": "function", "function": function, "settings": settings})),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    created["url"].as_str().unwrap().to_string()
}

/// Waits until the source's logs contain `text` `n` times (or panics).
async fn wait_for_log(sy: &Switchyard, slug: &str, text: &str, n: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (_, logs) = sy
            .admin(
                "GET",
                &format!("/api/v1/sources/{slug}/logs?limit=500"),
                None,
            )
            .await;
        let found = logs["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(text)))
                    .count()
            })
            .unwrap_or(0);
        if found >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{slug}: {n} × {text:?} not logged within {secs} s: {logs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn health(sy: &Switchyard, slug: &str) -> Value {
    sy.admin("GET", &format!("/api/v1/sources/{slug}/function"), None)
        .await
        .1["health"]
        .clone()
}

#[tokio::test]
async fn a_refused_deploy_changes_nothing_and_the_server_restarts() {
    let mut sy = Switchyard::start("[server]\nfunction_retry_initial_ms = 50\n");
    let (s, f) = create_function(
        &sy,
        json!({"name": "hookfn", "kind": "source", "code": SOURCE_V1, "deploy": true,
               "settings": [{"name": "apiKey", "required": true, "encrypted": true}]}),
    )
    .await;
    assert_eq!(s, 201, "{f}");
    let url = create_source(&sy, "a", "hookfn", json!({"apiKey": "k_123456"})).await;

    // v2 needs a setting source `a` lacks: refused, and nothing is saved.
    let v2 = SOURCE_V1.replace("v1", "v2");
    let (s, refused) = sy
        .admin(
            "PUT",
            "/api/v1/functions/hookfn",
            Some(json!({"code": v2, "deploy": true,
                        "settings": [{"name": "apiKey", "required": true, "encrypted": true},
                                     {"name": "region", "required": true}]})),
        )
        .await;
    assert_eq!(
        (s, refused["error"]["code"].as_str()),
        (400, Some("deploy_failed")),
        "{refused}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("region"),
        "{refused}"
    );
    let (_, versions) = sy
        .admin("GET", "/api/v1/functions/hookfn/versions", None)
        .await;
    assert_eq!(
        versions["data"],
        json!([{"version": 1, "deployed": true, "created_ms": versions["data"][0]["created_ms"], "bytes": SOURCE_V1.len()}]),
        "{versions}"
    );

    // Saved without deploying, v2 does not change what v1 runs with either.
    let (s, saved) = sy
        .admin(
            "PUT",
            "/api/v1/functions/hookfn",
            Some(json!({"code": v2,
                        "settings": [{"name": "apiKey", "required": true, "encrypted": true},
                                     {"name": "region", "required": true}]})),
        )
        .await;
    assert_eq!((s, saved["version"].as_u64()), (200, Some(2)), "{saved}");

    sy.restart();
    assert_eq!(health(&sy, "a").await["status"], "healthy");
    let (s, _) = sy.post_with(&url, None, b"{}".to_vec(), &[]).await;
    assert_eq!(s, 200);
    wait_for_log(&sy, "a", "ran v1", 1, 20).await;
    let (_, functions) = sy.admin("GET", "/api/v1/functions", None).await;
    assert_eq!(functions["data"][0]["deployed_version"], 1, "{functions}");
    assert_eq!(
        functions["data"][0]["settings"]["settings"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "the deployed version's declarations: {functions}"
    );
}

#[tokio::test]
async fn a_function_that_cannot_run_at_start_waits_while_the_rest_starts() {
    let dir = TempDir::new("lifecycle-files");
    let hook = dir.0.join("hook.js");
    let other = dir.0.join("other.js");
    std::fs::write(&hook, SOURCE_V1).unwrap();
    std::fs::write(&other, SOURCE_V1.replace("ran v1", "other ran")).unwrap();
    let config = |hook_settings: &str| {
        format!(
            r#"
[server]
function_retry_initial_ms = 50

[[sources]]
slug = "other"
kind = "function"
function = "other"
token = "tok_other"

[[functions]]
name = "hook"
kind = "source"
file = "{hook}"
settings = [{hook_settings}]

[[functions]]
name = "other"
kind = "source"
file = "{other}"
"#,
            hook = hook.display(),
            other = other.display(),
        )
    };
    let mut sy = Switchyard::start(&config(""));
    let url = create_source(&sy, "a", "hook", json!({})).await;

    // The file now declares a setting source `a` lacks, and `other`'s file
    // no longer loads.
    std::fs::write(
        sy.dir.0.join("switchyard.toml"),
        config(r#"{ name = "region", required = true }"#),
    )
    .unwrap();
    std::fs::write(&other, "async function onRequest( {").unwrap();
    sy.restart();

    let failed = health(&sy, "a").await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("region")),
        "{failed}"
    );
    // Its requests are taken and wait; resuming cannot run what cannot run.
    let (s, _) = sy.post_with(&url, None, b"{}".to_vec(), &[]).await;
    assert_eq!(s, 200);
    sy.admin("POST", "/api/v1/sources/a/function/resume", None)
        .await;
    assert_eq!(health(&sy, "a").await["status"], "failed");
    // `other` goes on running the version it ran before its file broke.
    let (s, _) = sy
        .post_with("/functions/other/tok_other", None, b"{}".to_vec(), &[])
        .await;
    assert_eq!(s, 200);
    wait_for_log(&sy, "other", "other ran", 1, 20).await;
    assert!(
        sy.log().contains("not deployed"),
        "the broken file is reported: {}",
        sy.log()
    );

    // The setting given, the waiting request runs.
    let (s, patched) = sy
        .admin(
            "PATCH",
            "/api/v1/sources/a",
            Some(json!({"settings": {"region": "eu"}})),
        )
        .await;
    assert_eq!(s, 200, "{patched}");
    wait_for_log(&sy, "a", "ran v1", 1, 20).await;
    assert_eq!(health(&sy, "a").await["status"], "healthy");
}

#[tokio::test]
async fn a_paused_source_stays_paused_across_restarts_until_resumed() {
    let mut sy = Switchyard::start("[server]\nfunction_retry_initial_ms = 60000\n");
    let code = r#"
async function onRequest(request, settings) {
  const body = request.json();
  if (body.bad) throw new Error('rejected');
  console.log('ran ' + body.n);
}
"#;
    let (s, f) = create_function(
        &sy,
        json!({"name": "picky", "kind": "source", "code": code, "deploy": true}),
    )
    .await;
    assert_eq!(s, 201, "{f}");
    let url = create_source(&sy, "p", "picky", json!({})).await;
    for _ in 0..25 {
        let (s, _) = sy
            .post_with(&url, None, br#"{"bad":true}"#.to_vec(), &[])
            .await;
        assert_eq!(s, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while health(&sy, "p").await["status"] != "paused" {
        assert!(Instant::now() < deadline, "{}", health(&sy, "p").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, _) = sy.post_with(&url, None, br#"{"n":1}"#.to_vec(), &[]).await;
    assert_eq!(s, 200);

    sy.restart();
    let paused = health(&sy, "p").await;
    assert_eq!(paused["status"], "paused", "{paused}");
    assert!(
        paused["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("rejected")),
        "{paused}"
    );
    assert!(sy.terminate(), "stops cleanly");
    sy.restart();
    assert_eq!(health(&sy, "p").await["status"], "paused");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, logs) = sy
        .admin("GET", "/api/v1/sources/p/logs?limit=500", None)
        .await;
    assert!(!logs.to_string().contains("ran 1"), "still held: {logs}");

    // Resumed, the held request runs, and the next restart keeps it running.
    sy.admin("POST", "/api/v1/sources/p/function/resume", None)
        .await;
    wait_for_log(&sy, "p", "ran 1", 1, 20).await;
    sy.restart();
    assert_eq!(health(&sy, "p").await["status"], "healthy");
}

#[tokio::test]
async fn deploys_refuse_code_without_a_handler_of_its_kind() {
    let sy = Switchyard::start("");
    let (s, f) = create_function(
        &sy,
        json!({"name": "src", "kind": "source", "code": SOURCE_V1, "deploy": true}),
    )
    .await;
    assert_eq!(s, 201, "{f}");
    let misspelled = SOURCE_V1.replace("onRequest", "onRequst");
    let (s, refused) = sy
        .admin(
            "PUT",
            "/api/v1/functions/src",
            Some(json!({"code": misspelled, "deploy": true})),
        )
        .await;
    assert_eq!(
        (s, refused["error"]["code"].as_str()),
        (400, Some("invalid_code")),
        "{refused}"
    );
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("onRequest") && message.contains("processEvents"),
        "{message}"
    );
    let (_, versions) = sy
        .admin("GET", "/api/v1/functions/src/versions", None)
        .await;
    assert_eq!(versions["data"].as_array().map(Vec::len), Some(1));

    // The legacy form is a handler too.
    let (s, legacy) = create_function(
        &sy,
        json!({"name": "legacy", "kind": "source", "deploy": true,
               "code": "exports.processEvents = async (event) => ({ events: [] })"}),
    )
    .await;
    assert_eq!(s, 201, "{legacy}");

    let (s, refused) = create_function(
        &sy,
        json!({"name": "dst", "kind": "destination", "deploy": true,
               "code": "async function onTrak(event, settings) {}"}),
    )
    .await;
    assert_eq!(s, 400, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("onTrack") && message.contains("onBatch"),
        "{message}"
    );
    let (_, all) = sy.admin("GET", "/api/v1/functions", None).await;
    assert!(!all.to_string().contains("\"dst\""), "{all}");
}

#[tokio::test]
async fn the_test_apis_redact_encrypted_settings_and_name_the_payload_shape() {
    let sy = Switchyard::start("");
    let code = r#"
async function onRequest(request, settings) {
  const body = request.json();
  await fetch('https://api.example.com/v1/customers/' + body.id + '?key=' + settings.apiKey, {
    method: 'POST',
    headers: { Authorization: 'Bearer ' + settings.apiKey },
    body: JSON.stringify({ key: settings.apiKey }),
  });
  console.log('lookup with ' + settings.apiKey);
}
"#;
    let (s, f) = create_function(
        &sy,
        json!({"name": "billing", "kind": "source", "code": code, "deploy": true,
               "settings": [{"name": "apiKey", "required": true, "encrypted": true}]}),
    )
    .await;
    assert_eq!(s, 201, "{f}");
    create_source(
        &sy,
        "billing",
        "billing",
        json!({"apiKey": "sk_live_TOPSECRET"}),
    )
    .await;

    let (s, out) = sy
        .admin(
            "POST",
            "/api/v1/sources/billing/test",
            Some(json!({"payload": {"body": {"id": "c1"}}})),
        )
        .await;
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["requests"].as_array().map(Vec::len), Some(1), "{out}");
    assert!(!out.to_string().contains("TOPSECRET"), "{out}");
    assert_eq!(
        out["requests"][0]["headers"]["authorization"],
        "Bearer [redacted]"
    );
    // Settings given to a test are merged over the source's, and the mask
    // (what the API shows) stands for the stored value, not for itself.
    let (s, out) = sy
        .admin(
            "POST",
            "/api/v1/sources/billing/test",
            Some(json!({"payload": {"body": {"id": "c1"}}, "settings": {"apiKey": "********"}})),
        )
        .await;
    assert_eq!(s, 200, "{out}");
    assert_eq!(
        out["requests"][0]["headers"]["authorization"], "Bearer [redacted]",
        "the stored key was used, and redacted: {out}"
    );

    let (s, out) = sy
        .admin(
            "POST",
            "/api/v1/functions/billing/test",
            Some(json!({"payload": {"body": {"id": "c1"}}, "settings": {"apiKey": "sk_live_TOPSECRET"}})),
        )
        .await;
    assert_eq!(s, 200, "{out}");
    assert!(!out.to_string().contains("TOPSECRET"), "{out}");
    assert!(out["requests"][0]["url"]
        .as_str()
        .is_some_and(|u| u.ends_with("key=[redacted]")));

    // A payload that is the body itself is refused, naming the shape.
    let (s, refused) = sy
        .admin(
            "POST",
            "/api/v1/sources/billing/test",
            Some(json!({"payload": {"id": "c1"}})),
        )
        .await;
    assert_eq!(
        (s, refused["error"]["code"].as_str()),
        (400, Some("invalid_payload")),
        "{refused}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"body\"") && m.contains("\"id\"")),
        "{refused}"
    );
}

#[tokio::test]
async fn an_onbatch_only_destination_gets_every_event() {
    let rx = Receiver::start("unused");
    let dir = TempDir::new("lifecycle-onbatch");
    let file = dir.0.join("batch_only.js");
    std::fs::write(
        &file,
        r#"
async function onBatch(events, settings) {
  await fetch(settings.url, { method: 'POST', body: JSON.stringify(events.map((e) => e.properties.i)) });
  return events.map(() => ({ status: 200 }));
}
"#,
    )
    .unwrap();
    let sy = Switchyard::start(&format!(
        r#"
[server]
fetch_allow = ["127.0.0.1"]

[[sources]]
slug = "web"
kind = "tracking"
write_key = "wk_web"

[[functions]]
name = "batch-only"
kind = "destination"
file = "{file}"

[[destinations]]
name = "warehouse"
kind = "function"
function = "batch-only"
sources = ["web"]
settings = {{ url = "{batched}" }}
batch_max_wait_ms = 300

[[destinations]]
name = "one-by-one"
kind = "function"
function = "batch-only"
sources = ["web"]
settings = {{ url = "{ones}" }}
batch_size = 1
"#,
        file = file.display(),
        batched = rx.url("batched"),
        ones = rx.url("ones"),
    ));
    let batch: Vec<Value> = (0..25)
        .map(|i| json!({"type": "track", "event": "E", "userId": "u", "properties": {"i": i}}))
        .collect();
    let (s, answer) = sy
        .post("/v1/batch", "wk_web", &json!({"batch": batch}).to_string())
        .await;
    assert_eq!(s, 200, "{answer}");
    let sizes = |records: &[Value]| -> Vec<usize> {
        records
            .iter()
            .map(|r| body(r).as_array().map(Vec::len).unwrap_or(0))
            .collect()
    };
    // Not given, `batch_size` is Segment's 20 for a function with onBatch.
    let got = rx
        .wait_until("batched", 20, |r| {
            sizes(&delivered(r)).iter().sum::<usize>() >= 25
        })
        .await;
    // The two batches are delivered at once: in either order.
    let mut batches = sizes(&delivered(&got));
    batches.sort_unstable();
    assert_eq!(batches, [5, 20]);
    // `batch_size = 1`: each event alone, still to onBatch.
    let got = rx
        .wait_until("ones", 20, |r| delivered(r).len() >= 25)
        .await;
    assert!(sizes(&delivered(&got)).iter().all(|&n| n == 1));
    let (_, metrics) = sy.get_text("/metrics").await;
    assert!(!metrics.contains("reason=\"unsupported\""), "{metrics}");
}
