//! The acceptance scenario, only through the CLI: create a function source
//! from a file, capture a real request, test the function on it, deploy, send
//! webhooks, watch them with `tail`, break the receiver, see dead letters,
//! fix it, replay, and see every event delivered exactly once.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn cli(sy: &Switchyard, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env("SWITCHYARD_SERVER", &sy.base)
        .env("SWITCHYARD_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "switchyard {args:?} failed: {text}");
    text
}

#[tokio::test]
async fn the_whole_story_through_the_cli() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start("[server]\n");

    cli(
        &sy,
        &[
            "functions",
            "create",
            "stigg",
            "--kind",
            "source",
            "--file",
            &fixture("stigg.js"),
            "--deploy",
        ],
    );
    let created = cli(&sy, &["sources", "create", "hooks", "--function", "stigg"]);
    let url = created
        .lines()
        .find_map(|l| l.strip_prefix("webhook URL: "))
        .unwrap_or_else(|| panic!("{created}"))
        .trim()
        .to_string();

    // A real sender posts a webhook; the catcher keeps it.
    let send = |body: Value| {
        let url = url.clone();
        async move {
            let resp = http_client()
                .post(&url)
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
        }
    };
    send(json!({"type": "subscription.created", "customer": {"id": "c-0"}, "plan": "pro"})).await;
    let captures: Value =
        serde_json::from_str(&cli(&sy, &["sources", "captures", "hooks", "--json"])).unwrap();
    let id = captures["data"][0]["id"].as_i64().unwrap().to_string();

    // Test version 2 on the captured request, then deploy it.
    let tested = cli(
        &sy,
        &[
            "sources",
            "test",
            "hooks",
            "--capture",
            &id,
            "--file",
            &fixture("stigg_v2.js"),
        ],
    );
    assert!(tested.contains("\"version\":2"), "{tested}");
    cli(
        &sy,
        &[
            "functions",
            "update",
            "stigg",
            "--file",
            &fixture("stigg_v2.js"),
            "--deploy",
        ],
    );
    let listed: Value = serde_json::from_str(&cli(&sy, &["functions", "list", "--json"])).unwrap();
    assert_eq!(listed["data"][0]["deployed_version"], 2);
    let table = cli(&sy, &["functions", "list"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "KIND", "DEPLOYED_VERSION", "LATEST_VERSION"],
        "{table}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row, ["stigg", "source", "2", "2"], "{table}");
    // A reader that goes away (`| head -1`) ends the CLI quietly: no panic.
    let mut piped = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["functions", "list"])
        .env("SWITCHYARD_SERVER", &sy.base)
        .env("SWITCHYARD_TOKEN", ADMIN_TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(piped.stdout.take());
    let out = piped.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    cli(
        &sy,
        &[
            "destinations",
            "create",
            "hook",
            "--source",
            "hooks",
            "--url",
            &rx.url("hook"),
            "--secret",
            "s3cret",
        ],
    );

    // Watch with tail (a line per event; `--json` gives the events).
    let mut tail = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["tail", "hooks"])
        .env("SWITCHYARD_SERVER", &sy.base)
        .env("SWITCHYARD_TOKEN", ADMIN_TOKEN)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    for i in 1..=3 {
        send(json!({"type": "invoice.paid", "customer": {"id": format!("c-{i}")}, "plan": "pro"}))
            .await;
    }
    rx.wait_delivered("hook", 3, 30).await;

    // Break the receiver: the next events are refused and dead-lettered.
    rx.control("hook", json!({"status": 400, "times": -1}))
        .await;
    for i in 4..=5 {
        send(json!({"type": "invoice.paid", "customer": {"id": format!("c-{i}")}, "plan": "team"}))
            .await;
    }
    let mut dead = Value::Null;
    for _ in 0..100 {
        dead = serde_json::from_str(&cli(
            &sy,
            &["deadletters", "list", "--destination", "hook", "--json"],
        ))
        .unwrap();
        if dead["data"].as_array().is_some_and(|a| a.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead["data"].as_array().unwrap().len(), 2, "{dead}");

    // Fix it and replay.
    rx.control("hook", json!({"status": 200, "times": 0})).await;
    let replayed = cli(&sy, &["deadletters", "replay", "--destination", "hook"]);
    assert_eq!(replayed.trim(), "replayed 2");
    let got = rx.wait_delivered("hook", 5, 30).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = delivered(&rx.received("hook").await);
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for r in &delivered {
        let b = body(r);
        assert_eq!(b["properties"]["version"], 2, "deployed version 2 ran: {b}");
        assert_eq!(r["segmentSignatureValid"], true);
        *per_user
            .entry(b["userId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(got.len(), 5);
    assert_eq!(per_user.len(), 5, "{per_user:?}");
    assert!(
        per_user.values().all(|n| *n == 1),
        "exactly once: {per_user:?}"
    );

    // tail saw every stored event (the capture's run under version 1 included).
    let stdout = tail.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .take(5)
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(30), lines)
        .await
        .expect("tail output")
        .unwrap();
    let _ = tail.kill();
    let _ = tail.wait();
    // A line each: time, type, name, user.
    for l in &lines {
        let fields: Vec<&str> = l.split("  ").collect();
        assert!(
            fields.len() == 4
                && chrono::DateTime::parse_from_rfc3339(fields[0]).is_ok()
                && fields[1] == "track"
                && fields[3].starts_with("user c-"),
            "{lines:?}"
        );
    }
}
