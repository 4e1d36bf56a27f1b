//! analytics.js (@segment/analytics-next, installed in tests/sdk/ by
//! tests/sdk/install.sh) in a real headless Chromium, pointed at switchyard
//! with nothing but its `cdnURL`: it loads its settings from switchyard, then
//! sends every call type from a page of another origin (CORS), one request
//! per call and, in a second page, batched through `/v1/b`. Every message
//! must reach a real webhook receiver exactly once, signed.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

const SECRET: &str = "s3cret";

/// The page: loads analytics.js, sends the six call types, and says in its
/// title when every call's promise has settled.
const PAGE: &str = r#"<!doctype html>
<html><head><title>pending</title>
<script src="/ajs/index.js"></script>
<script>
const options = BATCHING
  ? { integrations: { "Segment.io": { deliveryStrategy: { strategy: "batching", config: { size: 3, timeout: 200 } } } } }
  : {};
const analytics = AnalyticsNext.AnalyticsBrowser.load({ writeKey: "wk_web", cdnURL: "SWITCHYARD" }, options);
const run = { run_id: "RUN" };
(async () => {
  try {
    await Promise.all([
      analytics.identify("user-1", { plan: "pro", ...run }),
      analytics.track("Clicked", { n: 1, ...run }),
      analytics.page("Docs", "Home", { ...run }),
      analytics.screen("Home", { ...run }),
      analytics.group("g-1", { name: "Acme", ...run }),
      analytics.alias("user-2", "user-1", { context: run }),
    ]);
    document.title = "done";
  } catch (e) {
    document.title = "error: " + e;
  }
})();
</script></head><body></body></html>
"#;

fn analytics_js_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/sdk/node_modules/@segment/analytics-next/dist/umd");
    if !dir.join("index.js").exists() {
        panic!(
            "analytics.js (@segment/analytics-next) is not installed in tests/sdk/.\n\
             Run scripts/test (it runs tests/sdk/install.sh before cargo test), \
             or tests/sdk/install.sh alone, then run this test again."
        );
    }
    dir
}

fn chromium() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("chromium"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "Chromium is not installed: install Debian's chromium package \
             (tests/sdk/install.sh does it when run as root), then run this test again."
        )
    })
}

/// Serves the page (with switchyard's address and the run tag filled in)
/// and analytics.js's files, on a loopback port of its own: another origin
/// than switchyard's.
async fn serve_page(analytics_js: PathBuf, switchyard: &str, run: &str, batching: bool) -> String {
    use axum::extract::Path;
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let page = PAGE
        .replace("SWITCHYARD", switchyard)
        .replace("RUN", run)
        .replace("BATCHING", if batching { "true" } else { "false" });
    let dir = analytics_js;
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || {
                let page = page.clone();
                async move { ([(header::CONTENT_TYPE, "text/html")], page) }
            }),
        )
        .route(
            "/ajs/{file}",
            axum::routing::get(move |Path(file): Path<String>| {
                let dir = dir.clone();
                async move {
                    if file.contains('/') || file.contains("..") {
                        return StatusCode::NOT_FOUND.into_response();
                    }
                    match std::fs::read(dir.join(&file)) {
                        Ok(bytes) => ([(header::CONTENT_TYPE, "application/javascript")], bytes)
                            .into_response(),
                        Err(_) => StatusCode::NOT_FOUND.into_response(),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/")
}

/// Opens `url` in headless Chromium until the page's scripts are done (or
/// 20 s of the page's virtual time); panics unless the page says it is done.
async fn open_in_chromium(chromium: &std::path::Path, url: &str) {
    let profile = TempDir::new("chromium");
    let browser = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=20000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let pid = browser.id().to_string();
    let finished = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || browser.wait_with_output()),
    )
    .await;
    let output = match finished {
        Ok(output) => output.expect("join").expect("chromium output"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status();
            panic!("chromium did not finish within 120 s");
        }
    };
    let dom = String::from_utf8_lossy(&output.stdout);
    let log = String::from_utf8_lossy(&output.stderr);
    let title = dom
        .split("<title>")
        .nth(1)
        .and_then(|t| t.split("</title>").next())
        .unwrap_or("");
    if title != "done" {
        let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
        panic!("the page did not finish (title {title:?}); console: {console:#?}");
    }
}

async fn every_call_arrives_once_from_a_browser(batching: bool) {
    // Both are looked for first, so that a missing one fails the test
    // before any server starts.
    let analytics_js = analytics_js_dir();
    let chromium = chromium();
    let rx = Receiver::start(SECRET);
    let sy = Switchyard::start(&config_with(&signed_hook(&rx.url("hook"), SECRET)));
    let run = format!(
        "ajs-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    );
    let page = serve_page(analytics_js, &sy.base, &run, batching).await;
    open_in_chromium(&chromium, &page).await;

    rx.wait_delivered("hook", 6, 30).await;
    // Give stray duplicates (if any) time to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = delivered(&rx.received("hook").await);
    let mut per_id: HashMap<String, usize> = HashMap::new();
    let mut types = HashSet::new();
    for r in &records {
        assert_eq!(r["segmentSignatureValid"], true, "{}", r["raw"]);
        let event = body(r);
        assert_eq!(
            event["context"]["library"]["name"], "analytics.js",
            "{event}"
        );
        assert!(event.get("writeKey").is_none(), "{event}");
        assert_eq!(
            run_tag(&event),
            Some(run.as_str()),
            "a message of this run: {event}"
        );
        *per_id
            .entry(event["messageId"].as_str().expect("messageId").to_string())
            .or_default() += 1;
        types.insert(event["type"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(records.len(), 6, "one delivery per call: {records:#?}");
    assert!(per_id.values().all(|n| *n == 1), "{per_id:?}");
    let want: HashSet<String> = ["track", "identify", "page", "screen", "group", "alias"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(types, want);

    // Each message reached switchyard once: an answer the page could not
    // read (no CORS header) would have been sent again.
    let (_, metrics) = sy.get_text("/metrics").await;
    assert_eq!(
        web_counter(&metrics, "switchyard_events_received_total"),
        6,
        "{metrics}"
    );

    // A batch's messages share the moment it was received.
    let received: HashSet<String> = records
        .iter()
        .map(|r| {
            body(r)["receivedAt"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    if batching {
        assert!(
            received.len() < records.len(),
            "no request carried several messages: {received:?}"
        );
    }
}

#[tokio::test]
async fn analytics_js_in_chromium_sends_every_call_once() {
    every_call_arrives_once_from_a_browser(false).await;
}

#[tokio::test]
async fn analytics_js_in_chromium_batches_through_v1_b() {
    every_call_arrives_once_from_a_browser(true).await;
}
