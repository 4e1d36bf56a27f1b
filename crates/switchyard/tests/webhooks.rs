//! End-to-end: switchyard and a real receiver on loopback, through the
//! Webhooks destination's whole contract.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

fn hook(name: &str, url: &str, extra: &str) -> String {
    let initial = if extra.contains("retry_initial_ms") {
        ""
    } else {
        "retry_initial_ms = 100\n"
    };
    format!(
        "[[destinations]]\nname = \"{name}\"\nkind = \"webhooks\"\nsources = [\"web\"]\nurls = [\"{url}\"]\nshared_secret = \"s3cret\"\n{initial}{extra}\n"
    )
}

async fn send_all_types(sy: &Switchyard) {
    let calls = [
        (
            "track",
            json!({"userId": "u1", "event": "Purchased an Item", "properties": {"revenue": 39.95, "whole": 2.0}}),
        ),
        (
            "identify",
            json!({"userId": "u1", "traits": {"email": "a@example.com", "name": "Achilles"}}),
        ),
        (
            "page",
            json!({"userId": "u1", "name": "Pricing", "properties": {"path": "/pricing"}}),
        ),
        (
            "screen",
            json!({"anonymousId": "a1", "name": "Main Screen"}),
        ),
        (
            "group",
            json!({"userId": "u1", "groupId": "g1", "traits": {"name": "Initech"}}),
        ),
        ("alias", json!({"userId": "u1", "previousId": "a1"})),
    ];
    for (kind, body) in calls {
        let (status, answer) = sy
            .post(&format!("/v1/{kind}"), "wk_web", &body.to_string())
            .await;
        assert_eq!(status, 200, "{kind}: {answer}");
        assert_eq!(answer, json!({"success": true}));
    }
}

#[tokio::test]
async fn every_message_type_arrives_once_with_a_valid_signature() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config_with(&hook(
        "hook",
        &rx.url("hook"),
        "headers = { \"X-Env\" = \"prod\" }",
    )));
    send_all_types(&sy).await;
    let got = rx.wait_delivered("hook", 6, 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_again = rx.received("hook").await;
    assert_eq!(got_again.len(), 6, "each message exactly once");
    let mut types = HashSet::new();
    for r in &got {
        assert_eq!(r["segmentSignatureValid"], true, "signature: {r}");
        assert_eq!(r["headers"]["content-type"], "application/json");
        assert_eq!(r["headers"]["x-env"], "prod");
        assert!(r["headers"]["user-agent"]
            .as_str()
            .unwrap()
            .starts_with("switchyard/"));
        let b = body(r);
        assert!(
            b["messageId"].is_string() && b["receivedAt"].is_string() && b["timestamp"].is_string()
        );
        types.insert(b["type"].as_str().unwrap().to_string());
    }
    assert_eq!(types.len(), 6, "{types:?}");
    // Integral floats travel as JavaScript writes them, so the signature verifies.
    let track = got.iter().map(body).find(|b| b["type"] == "track").unwrap();
    assert_eq!(track["properties"]["whole"], json!(2));
}

#[tokio::test]
async fn batch_mode_sends_arrays_signed_over_the_first_event() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config_with(&hook(
        "hook",
        &rx.url("hook"),
        "batch_size = 10\nbatch_max_wait_ms = 200",
    )));
    let batch: Vec<Value> = (0..25)
        .map(|i| json!({"type": "track", "userId": "u", "event": "E", "messageId": format!("m-{i}")}))
        .collect();
    let (status, answer) = sy
        .post(
            "/v1/batch",
            "wk_web",
            &json!({ "batch": batch }).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let got = rx
        .wait_until("hook", 30, |r| {
            r.iter()
                .map(|x| body(x).as_array().map_or(0, |a| a.len()))
                .sum::<usize>()
                >= 25
        })
        .await;
    let mut ids = HashSet::new();
    for r in &got {
        assert_eq!(r["segmentSignatureValid"], true, "{r}");
        let items = body(r);
        let items = items.as_array().expect("array body");
        assert!(items.len() <= 10);
        for e in items {
            assert!(ids.insert(e["messageId"].as_str().unwrap().to_string()));
        }
    }
    assert_eq!(ids.len(), 25);
}

#[tokio::test]
async fn standard_webhooks_signatures_with_rotation() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let old = "whsec_c2VjcmV0LW9sZC1zZWNyZXQ=";
    let rx_new = Receiver::start(secret);
    let rx_old = Receiver::start(old);
    let dests = format!(
        "[[sources]]\nslug = \"app\"\nkind = \"tracking\"\nwrite_key = \"wk_app\"\n\n\
         [[destinations]]\nname = \"new\"\nkind = \"webhooks\"\nsources = [\"web\", \"app\"]\nurls = [\"{}\"]\nshared_secret = \"{secret}\"\nprevious_shared_secret = \"{old}\"\nsignature = \"standard-webhooks\"\n\n\
         [[destinations]]\nname = \"old\"\nkind = \"webhooks\"\nsources = [\"web\", \"app\"]\nurls = [\"{}\"]\nshared_secret = \"{secret}\"\nprevious_shared_secret = \"{old}\"\nsignature = \"standard-webhooks\"\n",
        rx_new.url("hook"),
        rx_old.url("hook")
    );
    let sy = Switchyard::start(&config_with(&dests));
    // Two sources, one messageId: two events, two webhook ids.
    for key in ["wk_web", "wk_app"] {
        let (status, _) = sy
            .post("/v1/identify", key, r#"{"userId":"u1","messageId":"abc"}"#)
            .await;
        assert_eq!(status, 200);
    }
    for rx in [&rx_new, &rx_old] {
        let got = rx.wait_delivered("hook", 2, 30).await;
        let mut ids: Vec<&str> = got
            .iter()
            .map(|r| r["headers"]["webhook-id"].as_str().unwrap_or_default())
            .collect();
        ids.sort();
        assert_eq!(ids, ["msg_app.abc", "msg_web.abc"]);
        for r in &got {
            assert_eq!(r["standardSignatureValid"], true, "{r}");
            assert!(r["headers"]["x-signature"].is_null());
            assert_eq!(
                r["headers"]["webhook-signature"]
                    .as_str()
                    .unwrap()
                    .split(' ')
                    .count(),
                2
            );
        }
    }
}

#[tokio::test]
async fn a_500_is_retried_until_delivered_with_a_stable_webhook_id() {
    let rx = Receiver::start("s3cret");
    rx.control("hook", json!({"status": 500, "times": 2})).await;
    let sy = Switchyard::start(&config_with(&hook("hook", &rx.url("hook"), "")));
    let (status, _) = sy
        .post(
            "/v1/track",
            "wk_web",
            r#"{"userId":"u","event":"E","messageId":"r1"}"#,
        )
        .await;
    assert_eq!(status, 200);
    rx.wait_delivered("hook", 1, 30).await;
    let all = rx.received("hook").await;
    assert_eq!(all.len(), 3, "two failures then the delivery");
    assert!(all.iter().all(|r| r["segmentSignatureValid"] == true));
    let (_, attempts) = sy
        .admin("GET", "/api/v1/destinations/hook/attempts", None)
        .await;
    let outcomes: Vec<&str> = attempts["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["delivered", "retry", "retry"], "newest first");
    assert_eq!(attempts["data"][2]["status"], 500);
}

#[tokio::test]
async fn a_receiver_hanging_past_the_timeout_is_retried() {
    let rx = Receiver::start("s3cret");
    rx.control("hook", json!({"status": 0, "times": 1})).await;
    let sy = Switchyard::start(&config_with(&hook(
        "hook",
        &rx.url("hook"),
        "timeout_ms = 500",
    )));
    let (status, _) = sy
        .post("/v1/track", "wk_web", r#"{"userId":"u","event":"E"}"#)
        .await;
    assert_eq!(status, 200);
    rx.wait_delivered("hook", 1, 30).await;
    assert_eq!(rx.received("hook").await.len(), 2);
    let (_, attempts) = sy
        .admin("GET", "/api/v1/destinations/hook/attempts", None)
        .await;
    let last = &attempts["data"][1];
    assert!(
        last["error"].as_str().unwrap().contains("timed out"),
        "{last}"
    );
}

#[tokio::test]
async fn a_400_is_dead_lettered_not_retried_and_can_be_replayed() {
    let rx = Receiver::start("s3cret");
    rx.control("hook", json!({"status": 400, "times": -1}))
        .await;
    let sy = Switchyard::start(&config_with(&hook("hook", &rx.url("hook"), "")));
    let (status, _) = sy
        .post(
            "/v1/track",
            "wk_web",
            r#"{"userId":"u","event":"E","messageId":"dl1"}"#,
        )
        .await;
    assert_eq!(status, 200);
    rx.wait_until("hook", 30, |r| !r.is_empty()).await;
    let mut dead = Value::Null;
    for _ in 0..100 {
        let (_, d) = sy
            .admin("GET", "/api/v1/destinations/hook/deadletters", None)
            .await;
        if !d["data"].as_array().unwrap().is_empty() {
            dead = d;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let letter = &dead["data"][0];
    assert_eq!(letter["last_status"], 400, "{dead}");
    assert_eq!(letter["attempts"], 1);
    assert_eq!(letter["message_ids"], json!(["dl1"]));
    assert_eq!(letter["body"]["messageId"], "dl1");
    assert!(letter["response_excerpt"].as_str().unwrap().contains("400"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(rx.received("hook").await.len(), 1, "a 400 is not retried");

    // A selection in the query string (not where the API reads it) is
    // refused, instead of taking every dead letter.
    for (method, path) in [
        ("DELETE", "/api/v1/destinations/hook/deadletters?id=1"),
        ("POST", "/api/v1/destinations/hook/deadletters/replay?id=1"),
    ] {
        let (status, answer) = sy.admin(method, path, None).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some("invalid_query")),
            "{method} {path}: {answer}"
        );
    }
    // Fix the receiver, replay: delivered.
    rx.control("hook", json!({"status": 200, "times": 0})).await;
    let (status, answer) = sy
        .admin(
            "POST",
            "/api/v1/destinations/hook/deadletters/replay",
            Some(json!({})),
        )
        .await;
    assert_eq!((status, answer["replayed"].clone()), (200, json!(1)));
    let got = rx.wait_delivered("hook", 1, 30).await;
    assert_eq!(body(&got[0])["messageId"], "dl1");
    let (_, d) = sy
        .admin("GET", "/api/v1/destinations/hook/deadletters", None)
        .await;
    assert!(d["data"].as_array().unwrap().is_empty());
}

/// A webhooks destination `hook` of the `web` source with two URLs, and
/// `extra` TOML lines.
fn two_url_hook(first: &str, second: &str, extra: &str) -> String {
    format!(
        "[[destinations]]\nname = \"hook\"\nkind = \"webhooks\"\nsources = [\"web\"]\nurls = [\"{first}\", \"{second}\"]\nshared_secret = \"s3cret\"\n{extra}"
    )
}

#[tokio::test]
async fn classic_rule_one_url_down_delivers_once_without_retrying_the_other() {
    let rx = Receiver::start("s3cret");
    rx.control("down", json!({"status": 503, "times": -1}))
        .await;
    let dest = two_url_hook(&rx.url("down"), &rx.url("up"), "retry_initial_ms = 100\n");
    let sy = Switchyard::start(&config_with(&dest));
    for i in 0..3 {
        let (status, _) = sy
            .post(
                "/v1/track",
                "wk_web",
                &json!({"userId": "u", "event": "E", "messageId": format!("c{i}")}).to_string(),
            )
            .await;
        assert_eq!(status, 200);
    }
    rx.wait_delivered("up", 3, 30).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        rx.received("up").await.len(),
        3,
        "each event once at the healthy URL"
    );
    assert_eq!(
        rx.received("down").await.len(),
        3,
        "the failed URL is not retried once another succeeded"
    );
    let (_, d) = sy
        .admin("GET", "/api/v1/destinations/hook/deadletters", None)
        .await;
    assert!(d["data"].as_array().unwrap().is_empty());
}

/// The first-success rule with one URL refusing (400) and one failing
/// (500, then fine): the retry goes to the failing URL only, since a 4xx is
/// not retried.
#[tokio::test]
async fn classic_rule_retries_only_the_urls_that_may_still_take_the_message() {
    let rx = Receiver::start("s3cret");
    rx.control("refuses", json!({"status": 400, "times": -1}))
        .await;
    rx.control("flaky", json!({"status": 500, "times": 2}))
        .await;
    let dest = two_url_hook(
        &rx.url("refuses"),
        &rx.url("flaky"),
        "retry_initial_ms = 100\n",
    );
    let sy = Switchyard::start(&config_with(&dest));
    let (status, _) = sy
        .post(
            "/v1/track",
            "wk_web",
            r#"{"userId":"u","event":"E","messageId":"r1"}"#,
        )
        .await;
    assert_eq!(status, 200);
    rx.wait_delivered("flaky", 1, 30).await;
    assert_eq!(
        rx.received("refuses").await.len(),
        1,
        "a 4xx is not retried"
    );
    let (_, d) = sy
        .admin("GET", "/api/v1/destinations/hook/deadletters", None)
        .await;
    assert!(d["data"].as_array().unwrap().is_empty(), "{d}");
}

#[tokio::test]
async fn fanout_all_retries_the_down_url_on_its_own_then_dead_letters_it() {
    let rx = Receiver::start("s3cret");
    rx.control("down", json!({"status": 503, "times": -1}))
        .await;
    let dest = two_url_hook(
        &rx.url("down"),
        &rx.url("up"),
        "fanout = \"all\"\nretry_initial_ms = 100\nmax_retry_age = \"2s\"\n",
    );
    let sy = Switchyard::start(&config_with(&dest));
    let (status, _) = sy
        .post(
            "/v1/track",
            "wk_web",
            r#"{"userId":"u","event":"E","messageId":"f1"}"#,
        )
        .await;
    assert_eq!(status, 200);
    rx.wait_delivered("up", 1, 30).await;
    rx.wait_until("down", 30, |r| r.len() >= 3).await;
    let mut letters = Value::Null;
    for _ in 0..200 {
        let (_, d) = sy
            .admin("GET", "/api/v1/destinations/hook/deadletters", None)
            .await;
        if !d["data"].as_array().unwrap().is_empty() {
            letters = d;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let letter = &letters["data"][0];
    assert_eq!(letter["url"], rx.url("down"), "{letters}");
    assert_eq!(letter["last_status"], 503);
    assert!(letter["attempts"].as_u64().unwrap() >= 3);
    assert!(letter["last_error"].as_str().unwrap().contains("gave up"));
    assert_eq!(
        rx.received("up").await.len(),
        1,
        "the healthy URL got it once"
    );
}

#[tokio::test]
async fn a_dead_destination_does_not_delay_a_healthy_one() {
    let rx = Receiver::start("s3cret");
    // The dead receiver never answers; its timeout is longer than this test waits.
    rx.control("dead", json!({"status": 0, "times": -1})).await;
    let dests = format!(
        "{}\n{}",
        hook(
            "dead",
            &rx.url("dead"),
            "timeout_ms = 120000\nconcurrency = 2"
        ),
        hook("healthy", &rx.url("healthy"), "")
    );
    let sy = Switchyard::start(&config_with(&dests));
    for i in 0..20 {
        let (status, _) = sy
            .post(
                "/v1/track",
                "wk_web",
                &json!({"userId": "u", "event": "E", "messageId": format!("h{i}")}).to_string(),
            )
            .await;
        assert_eq!(status, 200);
    }
    let got = rx.wait_delivered("healthy", 20, 60).await;
    assert_eq!(got.len(), 20);
    assert!(delivered(&rx.received("dead").await).is_empty());
}

#[tokio::test]
async fn a_410_disables_the_url_until_re_enabled() {
    let rx = Receiver::start("s3cret");
    rx.control("hook", json!({"status": 410, "times": 1})).await;
    let sy = Switchyard::start(&config_with(&hook("hook", &rx.url("hook"), "")));
    let (status, _) = sy
        .post(
            "/v1/track",
            "wk_web",
            r#"{"userId":"u","event":"E","messageId":"g1"}"#,
        )
        .await;
    assert_eq!(status, 200);
    rx.wait_until("hook", 30, |r| r.len() == 1).await;
    let (status, _) = sy
        .post(
            "/v1/track",
            "wk_web",
            r#"{"userId":"u","event":"E","messageId":"g2"}"#,
        )
        .await;
    assert_eq!(status, 200);
    let mut letters = Value::Null;
    for _ in 0..200 {
        let (_, d) = sy
            .admin("GET", "/api/v1/destinations/hook/deadletters", None)
            .await;
        if d["data"].as_array().unwrap().len() == 2 {
            letters = d;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(letters["data"][0]["last_status"], 410, "{letters}");
    assert!(letters["data"][1]["last_error"]
        .as_str()
        .unwrap()
        .contains("disabled"));
    assert_eq!(
        rx.received("hook").await.len(),
        1,
        "no request to a disabled URL"
    );

    let (status, answer) = sy
        .admin(
            "POST",
            "/api/v1/destinations/hook/urls/enable",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["disabled"], json!([]));
    sy.admin("POST", "/api/v1/destinations/hook/deadletters/replay", None)
        .await;
    let got = rx.wait_delivered("hook", 2, 30).await;
    let ids: HashSet<String> = got
        .iter()
        .map(|r| body(r)["messageId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, HashSet::from(["g1".to_string(), "g2".to_string()]));
}

#[tokio::test]
async fn a_429_retry_after_is_honoured() {
    let rx = Receiver::start("s3cret");
    rx.control(
        "hook",
        json!({"status": 429, "times": 1, "retryAfter": "1"}),
    )
    .await;
    let sy = Switchyard::start(&config_with(&hook("hook", &rx.url("hook"), "")));
    let (status, _) = sy
        .post("/v1/track", "wk_web", r#"{"userId":"u","event":"E"}"#)
        .await;
    assert_eq!(status, 200);
    rx.wait_delivered("hook", 1, 30).await;
    let all = rx.received("hook").await;
    assert_eq!(all.len(), 2);
    let gap = all[1]["at"].as_u64().unwrap() - all[0]["at"].as_u64().unwrap();
    assert!(
        gap >= 900,
        "retried after {gap} ms, before the receiver's Retry-After of 1 s"
    );
}

#[tokio::test]
async fn duplicate_message_ids_are_delivered_once() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config_with(&hook("hook", &rx.url("hook"), "")));
    for _ in 0..3 {
        let (status, _) = sy
            .post(
                "/v1/track",
                "wk_web",
                r#"{"userId":"u","event":"E","messageId":"same"}"#,
            )
            .await;
        assert_eq!(status, 200);
    }
    let (status, _) = sy
        .post(
            "/v1/track",
            "wk_web",
            r#"{"userId":"u","event":"E","messageId":"other"}"#,
        )
        .await;
    assert_eq!(status, 200);
    rx.wait_delivered("hook", 2, 30).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.received("hook").await.len(), 2);
}

#[tokio::test]
async fn scheduled_retries_survive_a_graceful_restart() {
    let rx = Receiver::start("s3cret");
    rx.control("hook", json!({"status": 503, "times": -1}))
        .await;
    let mut sy = Switchyard::start(&config_with(&hook(
        "hook",
        &rx.url("hook"),
        "retry_initial_ms = 3000",
    )));
    let (status, _) = sy
        .post(
            "/v1/track",
            "wk_web",
            r#"{"userId":"u","event":"E","messageId":"p1"}"#,
        )
        .await;
    assert_eq!(status, 200);
    rx.wait_until("hook", 30, |r| !r.is_empty()).await;
    assert!(sy.terminate(), "SIGTERM exits cleanly");
    rx.control("hook", json!({"status": 200, "times": 0})).await;
    sy.restart();
    let got = rx.wait_delivered("hook", 1, 30).await;
    assert_eq!(body(&got[0])["messageId"], "p1");
    assert_eq!(got[0]["segmentSignatureValid"], true);
}

#[tokio::test]
async fn sigterm_with_a_backlog_stops_promptly_and_the_backlog_resumes() {
    let rx = Receiver::start("s3cret");
    // A slow receiver: 300 ms per request, one at a time.
    rx.control("hook", json!({"status": 200, "times": -1, "delayMs": 300}))
        .await;
    let mut sy = Switchyard::start(&config_with(&hook(
        "hook",
        &rx.url("hook"),
        "concurrency = 1",
    )));
    sy.send_tracks(300, "b").await;
    rx.wait_until("hook", 30, |r| !r.is_empty()).await;
    // The whole backlog would take 90 s: SIGTERM must not wait for it.
    assert!(
        sy.terminate(),
        "SIGTERM exits cleanly (within the harness's 30 s)"
    );
    rx.control("hook", json!({"status": 200, "times": 0})).await;
    sy.restart();
    let got = rx
        .wait_until("hook", 60, |r| {
            delivered(r)
                .iter()
                .map(message_id)
                .collect::<HashSet<_>>()
                .len()
                == 300
        })
        .await;
    assert!(delivered(&got).len() >= 300);
}

#[tokio::test]
async fn delivered_events_and_attempts_age_out_but_undelivered_ones_stay() {
    let rx = Receiver::start("s3cret");
    rx.control("slow", json!({"status": 0, "times": -1})).await;
    let config = format!(
        "[server]\nretention = \"1s\"\n\n{}",
        config_with(&format!(
            "{}\n{}",
            hook("hook", &rx.url("hook"), ""),
            hook(
                "stuck",
                &rx.url("slow"),
                "timeout_ms = 60000\nconcurrency = 1"
            )
        ))
    );
    let sy = Switchyard::start(&config);
    for i in 0..3 {
        let (s, _) = sy
            .post(
                "/v1/track",
                "wk_web",
                &json!({"userId": "u", "event": "E", "messageId": format!("r{i}")}).to_string(),
            )
            .await;
        assert_eq!(s, 200);
    }
    rx.wait_delivered("hook", 3, 30).await;
    let db = rusqlite::Connection::open(sy.dir.0.join("data/switchyard.db")).unwrap();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    tokio::time::sleep(Duration::from_secs(3)).await;
    // "stuck" has not passed them: the events stay; the attempts age out.
    assert_eq!(count("SELECT COUNT(*) FROM events"), 3);
    assert_eq!(
        count("SELECT COUNT(*) FROM attempts WHERE destination = 'hook'"),
        0
    );
}

#[tokio::test]
async fn events_every_destination_passed_are_removed_after_the_retention() {
    let rx = Receiver::start("s3cret");
    let config = format!(
        "[server]\nretention = \"1s\"\n\n{}",
        config_with(&hook("hook", &rx.url("hook"), ""))
    );
    let sy = Switchyard::start(&config);
    let (s, _) = sy
        .post("/v1/track", "wk_web", r#"{"userId":"u","event":"E"}"#)
        .await;
    assert_eq!(s, 200);
    rx.wait_delivered("hook", 1, 30).await;
    let db = rusqlite::Connection::open(sy.dir.0.join("data/switchyard.db")).unwrap();
    let mut left = -1;
    for _ in 0..100 {
        left = db
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0);
}

/// A private CA and a `localhost` certificate it signed, made with openssl.
fn private_ca(dir: &std::path::Path) -> (String, String, String) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=switchyard test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

#[tokio::test]
async fn tls_is_verified_unknown_issuers_refused_and_a_ca_file_trusted() {
    let dir = TempDir::new("tls");
    let (ca, cert, key) = private_ca(&dir.0);
    let rx = Receiver::start_with(
        "s3cret",
        &[("RECEIVER_TLS_CERT", &cert), ("RECEIVER_TLS_KEY", &key)],
    );
    let tls = rx.tls_base.clone().expect("an HTTPS port");
    let dests = format!(
        "{}\n{}",
        hook(
            "untrusted",
            &format!("{tls}/hook/untrusted"),
            "max_retry_age = \"1s\""
        ),
        hook(
            "trusted",
            &format!("{tls}/hook/trusted"),
            &format!("ca_file = \"{ca}\"")
        )
    );
    let sy = Switchyard::start(&config_with(&dests));
    let (s, _) = sy
        .post("/v1/track", "wk_web", r#"{"userId":"u","event":"E"}"#)
        .await;
    assert_eq!(s, 200);
    let got = rx.wait_delivered("trusted", 1, 30).await;
    assert_eq!(got[0]["segmentSignatureValid"], true);
    // Without the CA the certificate is refused: no request reaches the receiver.
    let mut attempts = Value::Null;
    for _ in 0..100 {
        let (_, a) = sy
            .admin("GET", "/api/v1/destinations/untrusted/attempts", None)
            .await;
        if a["data"].as_array().is_some_and(|x| !x.is_empty()) {
            attempts = a;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let error = attempts["data"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        error.contains("certificate") || error.contains("issuer"),
        "{attempts}"
    );
    assert!(rx.received("untrusted").await.is_empty());
}

/// SIGTERM while clients are sending: the server exits cleanly, and every
/// event it answered 200 is delivered once it is started again (requests in
/// flight at the signal are answered or refused, never acknowledged and lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acknowledged_event() {
    let rx = Receiver::start("s3cret");
    let mut sy = Switchyard::start(&config_with(&hook("hook", &rx.url("hook"), "")));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..8 {
        let base = sy.base.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let http = http_client();
            let mut acknowledged = Vec::new();
            for n in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let id = format!("term-{client}-{n}");
                let sent = http
                    .post(format!("{base}/v1/track"))
                    .basic_auth("wk_web", Some(""))
                    .body(format!(
                        r#"{{"userId":"u","event":"E","messageId":"{id}"}}"#
                    ))
                    .send()
                    .await;
                match sent {
                    Ok(answer) if answer.status() == 200 => acknowledged.push(id),
                    // Refused or cut off by the shutdown: not acknowledged.
                    _ => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Blocks this worker until the server has exited; the clients go on on
    // the other one.
    let exited_cleanly = sy.terminate();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.extend(client.await.expect("client"));
    }
    assert!(exited_cleanly, "SIGTERM exits cleanly under load");
    assert!(!acknowledged.is_empty(), "some events were acknowledged");
    sy.restart();
    let want: HashSet<String> = acknowledged.into_iter().collect();
    let got = rx
        .wait_until("hook", 60, |records| {
            let ids: HashSet<String> = delivered(records).iter().map(message_id).collect();
            want.is_subset(&ids)
        })
        .await;
    let delivered_ids: Vec<String> = delivered(&got).iter().map(message_id).collect();
    let unique: HashSet<&String> = delivered_ids.iter().collect();
    assert_eq!(unique.len(), delivered_ids.len(), "each event arrives once");
}

#[tokio::test]
async fn an_open_breaker_at_the_end_of_the_window_still_gets_a_last_attempt() {
    let rx = Receiver::start("s3cret");
    rx.control("hook", json!({"status": 500, "times": -1}))
        .await;
    let sy = Switchyard::start(&config_with(&hook(
        "hook",
        &rx.url("hook"),
        "max_retry_age = \"4s\"\n",
    )));
    sy.send_tracks(30, "b").await;
    // Enough failures to open the breaker (it stays open at least 5 s, past
    // the 4 s window); then the receiver comes back.
    rx.wait_until("hook", 30, |r| r.len() >= 20).await;
    rx.control("hook", json!({"status": 200, "times": 0})).await;
    let got = rx
        .wait_until("hook", 30, |r| {
            delivered(r)
                .iter()
                .map(message_id)
                .collect::<HashSet<_>>()
                .len()
                == 30
        })
        .await;
    assert_eq!(
        delivered(&got)
            .iter()
            .map(message_id)
            .collect::<HashSet<_>>()
            .len(),
        30
    );
    let (_, d) = sy
        .admin("GET", "/api/v1/destinations/hook/deadletters", None)
        .await;
    assert_eq!(d["total"], 0, "{d}");
}

/// A slow destination records what it delivered as it goes, not once its
/// whole backlog is through: attempts show while the backlog drains, and a
/// crash then sends again only the little that was not recorded.
#[tokio::test]
async fn a_slow_destination_records_its_progress_while_its_backlog_drains() {
    let rx = Receiver::start("s3cret");
    // 40 events at 300 ms each, two at a time: about 6 s in all.
    rx.control("hook", json!({"status": 200, "times": -1, "delayMs": 300}))
        .await;
    let sy = Switchyard::start(&config_with(&hook(
        "hook",
        &rx.url("hook"),
        "concurrency = 2",
    )));
    sy.send_tracks(40, "p").await;
    let mut recorded = 0;
    for _ in 0..300 {
        let (_, attempts) = sy
            .admin("GET", "/api/v1/destinations/hook/attempts", None)
            .await;
        recorded = attempts["data"].as_array().map_or(0, Vec::len);
        if recorded > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrived = rx.received("hook").await.len();
    assert!(recorded > 0, "attempts are recorded");
    assert!(
        arrived < 40,
        "recorded while the backlog drains ({recorded} recorded, {arrived} of 40 arrived)"
    );
    rx.wait_delivered("hook", 40, 60).await;
}
