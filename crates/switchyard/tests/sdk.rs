//! Compatibility with the official Segment SDKs: segment-analytics-python
//! (PyPI) and @segment/analytics-node (npm), installed in tests/sdk/ by
//! tests/sdk/install.sh (which scripts/test runs before `cargo test`).
//!
//! Each SDK is pointed at switchyard's host and sends every call type and
//! 1,000 track events; every message must reach a real webhook receiver
//! exactly once, signed. A crash test kills switchyard with SIGKILL while SDK
//! and raw-HTTP clients are sending, restarts it, and checks that every event
//! that was answered 200 is delivered (at least once).

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "s3cret";
const WRITE_KEY: &str = "wk_web";
/// Track events each SDK sends after the six call types.
const COUNT: usize = 1000;

fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk")
}

fn not_installed(what: &str, detail: &str) -> ! {
    panic!(
        "the official Segment SDK {what} is not installed in tests/sdk/ ({detail}).\n\
         Run scripts/test (it runs tests/sdk/install.sh before cargo test), \
         or tests/sdk/install.sh alone, then run this test again."
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Sdk {
    Python,
    Node,
}

impl Sdk {
    /// Panics (the test fails, it is not skipped) when the SDK is missing.
    fn require(self) {
        let dir = sdk_dir();
        match self {
            Sdk::Python => {
                let python = dir.join(".venv/bin/python");
                if !python.exists() {
                    not_installed("segment-analytics-python", "no tests/sdk/.venv/bin/python");
                }
                let ok = Command::new(&python)
                    .args(["-c", "import segment.analytics"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    not_installed(
                        "segment-analytics-python",
                        "`import segment.analytics` fails in tests/sdk/.venv",
                    );
                }
            }
            Sdk::Node => {
                if !dir
                    .join("node_modules/@segment/analytics-node/package.json")
                    .exists()
                {
                    not_installed(
                        "@segment/analytics-node",
                        "no tests/sdk/node_modules/@segment/analytics-node",
                    );
                }
            }
        }
    }

    fn command(self) -> Command {
        let dir = sdk_dir();
        let mut cmd = match self {
            Sdk::Python => {
                let mut c = Command::new(dir.join(".venv/bin/python"));
                c.arg(dir.join("python_sdk.py"));
                c
            }
            Sdk::Node => {
                let mut c = Command::new("node");
                c.arg(dir.join("node_sdk.mjs"));
                c
            }
        };
        cmd.current_dir(&dir);
        cmd
    }

    fn library(self) -> &'static str {
        match self {
            Sdk::Python => "analytics-python",
            Sdk::Node => "@segment/analytics-node",
        }
    }
}

/// A running SDK script; its stdout lines and stderr are collected.
struct SdkRun {
    sdk: Sdk,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl SdkRun {
    fn start(sdk: Sdk, host: &str, run_id: &str, env: &[(&str, &str)]) -> SdkRun {
        sdk.require();
        let mut cmd = sdk.command();
        cmd.env("HOST", host)
            .env("WRITE_KEY", WRITE_KEY)
            .env("RUN_ID", run_id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {sdk:?} SDK script: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("stdout");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        SdkRun {
            sdk,
            child: Some(child),
            lines,
            stderr,
        }
    }

    fn count(&self, prefix: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    fn summary(&self) -> String {
        let lines = self.lines.lock().unwrap();
        let tail: Vec<&String> = lines.iter().rev().take(5).collect();
        format!(
            "{:?} SDK script: {} stdout lines, last ones {:?}\nstderr:\n{}",
            self.sdk,
            lines.len(),
            tail,
            self.stderr.lock().unwrap()
        )
    }

    /// Waits for the script to exit (killing it after `secs`), asserts it
    /// exited 0, and returns its stdout lines.
    async fn finish(self, secs: u64) -> Vec<String> {
        let (status, lines, summary) = self.finish_status(secs).await;
        assert!(
            status.success(),
            "the SDK reported an error or the script failed ({status})\n{summary}"
        );
        lines
    }

    /// Waits for the script to exit (killing it after `secs`); returns its
    /// exit status, stdout lines and a summary for messages.
    async fn finish_status(mut self, secs: u64) -> (ExitStatus, Vec<String>, String) {
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + Duration::from_secs(secs);
        let status: ExitStatus = loop {
            if let Some(s) = child.try_wait().expect("wait for the SDK script") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the SDK script did not finish within {secs} s\n{}",
                    self.summary()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Let the reader threads drain what is left in the pipes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let lines = self.lines.lock().unwrap().clone();
        (status, lines, self.summary())
    }
}

impl Drop for SdkRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run_id(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    )
}

/// Polls the receiver until every id in `want` was delivered (answered 2xx)
/// at least once; panics with a summary after `secs`.
async fn wait_for_ids(
    rx: &Receiver,
    sy: &Switchyard,
    want: &HashSet<String>,
    secs: u64,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let records = rx.received("hook").await;
        let got: HashSet<String> = delivered(&records)
            .iter()
            .filter_map(|r| body(r)["messageId"].as_str().map(str::to_string))
            .collect();
        let missing: Vec<&String> = want.iter().filter(|id| !got.contains(*id)).collect();
        if missing.is_empty() {
            return records;
        }
        if Instant::now() > deadline {
            let log = sy.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{} of {} events were not delivered within {secs} s (receiver has {} requests); \
                 e.g. {:?}\nlast server log lines (newest first):\n{}",
                missing.len(),
                want.len(),
                records.len(),
                missing.iter().take(10).collect::<Vec<_>>(),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One SDK sends every call type and COUNT track events; each arrives once.
async fn sdk_delivers_every_event_exactly_once(sdk: Sdk) {
    sdk.require();
    let rx = Receiver::start(SECRET);
    let sy = Switchyard::start(&config_with(&signed_hook(&rx.url("hook"), SECRET)));
    let run = run_id(&format!("{sdk:?}").to_lowercase());
    let count = COUNT.to_string();
    let script = SdkRun::start(sdk, &sy.base, &run, &[("COUNT", count.as_str())]);
    let lines = script.finish(300).await;

    let sent: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("SENT "))
        .map(str::to_string)
        .collect();
    assert_eq!(sent.len(), COUNT + 6, "the SDK reported every message sent");
    let want: HashSet<String> = sent.iter().cloned().collect();
    assert_eq!(
        want.len(),
        sent.len(),
        "the SDK generated unique messageIds"
    );

    wait_for_ids(&rx, &sy, &want, 120).await;
    // Give stray duplicates (if any) time to show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = rx.received("hook").await;

    let mut per_id: HashMap<String, usize> = HashMap::new();
    let mut seqs: BTreeMap<u64, usize> = BTreeMap::new();
    let mut types: HashSet<String> = HashSet::new();
    for r in &records {
        assert_eq!(r["status"], 200, "the receiver answered 200: {}", r["raw"]);
        assert_eq!(
            r["segmentSignatureValid"], true,
            "valid Segment X-Signature: {}",
            r["raw"]
        );
        let event = body(r);
        assert!(event.is_object(), "one event per request: {event}");
        let id = event["messageId"].as_str().expect("messageId").to_string();
        assert!(want.contains(&id), "an event the SDK did not send: {event}");
        assert_eq!(run_tag(&event), Some(run.as_str()), "run tag kept: {event}");
        assert_eq!(
            event["context"]["library"]["name"],
            sdk.library(),
            "the SDK's context.library kept: {event}"
        );
        assert!(
            event["receivedAt"].is_string() && event["timestamp"].is_string(),
            "{event}"
        );
        *per_id.entry(id).or_default() += 1;
        types.insert(event["type"].as_str().unwrap_or("").to_string());
        if event["event"] == "Load Event" {
            let seq = event["properties"]["seq"].as_u64().expect("seq");
            *seqs.entry(seq).or_default() += 1;
        }
    }
    let dups: Vec<(&String, &usize)> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "{} messageIds delivered more than once, e.g. {:?}",
        dups.len(),
        dups.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(per_id.len(), COUNT + 6, "every message delivered");
    assert_eq!(records.len(), COUNT + 6, "no extra requests");
    assert_eq!(seqs.len(), COUNT, "every seq delivered");
    assert!(seqs.values().all(|n| *n == 1), "each seq once");
    assert_eq!(*seqs.keys().next().unwrap(), 0);
    assert_eq!(*seqs.keys().last().unwrap(), COUNT as u64 - 1);
    let want_types: HashSet<String> = ["track", "identify", "page", "screen", "group", "alias"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(types, want_types, "every call type delivered");
}

#[tokio::test]
async fn python_sdk_every_event_arrives_exactly_once() {
    sdk_delivers_every_event_exactly_once(Sdk::Python).await;
}

#[tokio::test]
async fn node_sdk_every_event_arrives_exactly_once() {
    sdk_delivers_every_event_exactly_once(Sdk::Node).await;
}

/// The scripts notice what the SDKs report: with a wrong write key switchyard
/// answers 401, each SDK reports it, and its script exits non-zero (so the
/// exit-0 checks above are not vacuous).
#[tokio::test]
async fn sdk_scripts_fail_when_the_sdk_reports_an_error() {
    Sdk::Python.require();
    Sdk::Node.require();
    let sy = Switchyard::start(&config_with(""));
    let run = run_id("wrongkey");
    for sdk in [Sdk::Python, Sdk::Node] {
        let script = SdkRun::start(
            sdk,
            &sy.base,
            &run,
            &[("WRITE_KEY", "wk_wrong"), ("COUNT", "3")],
        );
        let (status, _, summary) = script.finish_status(120).await;
        assert!(
            !status.success(),
            "{sdk:?}: a refused write key must make the script fail\n{summary}"
        );
        assert!(
            summary.contains("401"),
            "{sdk:?}: the SDK reported the 401\n{summary}"
        );
    }
}

/// Sends `/v1/batch` requests of 10 events until `stop`; records the
/// messageIds of every batch answered 200 (other outcomes are not retried).
async fn batch_loop(
    base: String,
    run: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) -> (usize, usize) {
    delivery::install_crypto_provider();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let (mut ok, mut failed) = (0, 0);
    let mut n = 0usize;
    // Bounded: about 40 s of sending at most, whatever happens.
    let deadline = Instant::now() + Duration::from_secs(40);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let ids: Vec<String> = (n..n + 10).map(|i| format!("rs-{run}-{i}")).collect();
        n += 10;
        let batch: Vec<Value> = ids
            .iter()
            .map(|id| {
                json!({"type": "track", "userId": "rs-user", "event": "Batch Event",
                       "messageId": id, "properties": {"run_id": run}})
            })
            .collect();
        let result = http
            .post(format!("{base}/v1/batch"))
            .basic_auth(WRITE_KEY, Some(""))
            .header("content-type", "application/json")
            .body(json!({ "batch": batch }).to_string())
            .send()
            .await;
        match result {
            Ok(resp) if resp.status().as_u16() == 200 => {
                let text = resp.text().await.unwrap_or_default();
                let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if answer["success"] == true {
                    ok += 1;
                    acked.lock().unwrap().extend(ids);
                } else {
                    failed += 1;
                }
            }
            _ => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (ok, failed)
}

/// SIGKILL twice under load: the Python SDK in sync mode (one request per
/// call, so each acknowledged messageId is known), the Node SDK with its own
/// retries, and a raw `/v1/batch` loop. Every event answered 200 must be
/// delivered after the restarts; duplicates are allowed here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_acknowledged_before_a_crash_are_delivered() {
    Sdk::Python.require();
    Sdk::Node.require();
    let rx = Receiver::start(SECRET);
    let mut sy = Switchyard::start(&config_with(&signed_hook(&rx.url("hook"), SECRET)));
    let run = run_id("crash");
    let base = sy.base.clone();

    let mut py = SdkRun::start(
        Sdk::Python,
        &base,
        &run,
        &[("MODE", "sync"), ("COUNT", "1500")],
    );
    let node = SdkRun::start(
        Sdk::Node,
        &base,
        &run,
        &[("COUNT", "600"), ("INTERVAL_MS", "5")],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let batch_acked = Arc::new(Mutex::new(Vec::new()));
    let loader = tokio::spawn(batch_loop(
        base.clone(),
        run.clone(),
        stop.clone(),
        batch_acked.clone(),
    ));

    // Crash twice, each time once the Python SDK has had 150 more events
    // acknowledged since the last start.
    let mut crashes = 0;
    for _ in 0..2 {
        let target = py.count("ACK ") + 150;
        let deadline = Instant::now() + Duration::from_secs(120);
        while py.count("ACK ") < target {
            if py.exited() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Python SDK got no 150 acknowledgements within 120 s\n{}",
                py.summary()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if py.exited() {
            break;
        }
        sy.kill9();
        crashes += 1;
        // Clients see connection errors for a moment before the restart.
        tokio::time::sleep(Duration::from_millis(300)).await;
        sy.restart();
        assert_eq!(sy.base, base, "restarted on the same address");
    }
    assert_eq!(
        crashes,
        2,
        "the Python SDK finished before both crashes\n{}",
        py.summary()
    );

    let py_lines = py.finish(300).await;
    let py_acked_all: Vec<String> = py_lines
        .iter()
        .filter_map(|l| l.strip_prefix("ACK "))
        .map(str::to_string)
        .collect();
    let py_failed = py_lines.iter().filter(|l| l.starts_with("FAIL ")).count();
    // The Node SDK retries through the outages: it must report every event
    // delivered (its script exits non-zero otherwise).
    let node_lines = node.finish(300).await;
    let node_sent: Vec<String> = node_lines
        .iter()
        .filter_map(|l| l.strip_prefix("SENT "))
        .map(str::to_string)
        .collect();
    assert_eq!(node_sent.len(), 606, "the Node SDK delivered every event");
    stop.store(true, Ordering::Relaxed);
    let (batches_ok, batches_failed) = loader.await.expect("batch loop");
    let batch_ids = batch_acked.lock().unwrap().clone();

    let mut want: HashSet<String> = HashSet::new();
    want.extend(py_acked_all.iter().cloned());
    want.extend(node_sent.iter().cloned());
    want.extend(batch_ids.iter().cloned());
    assert!(
        py_failed > 0 || batches_failed > 0,
        "the crashes were seen by the clients"
    );
    eprintln!(
        "crash test: python acked {} (failed {py_failed}), node delivered {}, \
         batches ok {batches_ok} (failed {batches_failed}); {} acknowledged events",
        py_acked_all.len(),
        node_sent.len(),
        want.len()
    );

    let records = wait_for_ids(&rx, &sy, &want, 180).await;
    for r in &records {
        assert_eq!(
            r["segmentSignatureValid"], true,
            "valid Segment X-Signature: {}",
            r["raw"]
        );
        let event = body(r);
        assert_eq!(run_tag(&event), Some(run.as_str()), "run tag kept: {event}");
    }
}
