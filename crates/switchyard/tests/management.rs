//! End-to-end: the management API's auth, OpenAPI document, tokens, user
//! deletion and the CLI.

mod common;

use common::*;
use serde_json::{json, Value};
use server::openapi::{Auth, ROUTES};
use std::time::Duration;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn config(rx: &Receiver) -> String {
    format!(
        r#"
[[sources]]
slug = "web"
kind = "tracking"
write_key = "wk_web"

[[sources]]
slug = "stigg"
kind = "function"
function = "stigg"
token = "tok_stigg"

[[functions]]
name = "stigg"
kind = "source"
file = "{stigg}"

[[destinations]]
name = "hook"
kind = "webhooks"
sources = ["web", "stigg"]
urls = ["{url}"]
shared_secret = "s3cret"
retry_initial_ms = 100
"#,
        stigg = fixture("stigg.js"),
        url = rx.url("hook"),
    )
}

fn concrete(path: &str) -> String {
    path.replace("{slug}", "stigg")
        .replace("{name}", "hook")
        .replace("{id}", "999")
        .replace("{token}", "tok_stigg")
}

async fn call(sy: &Switchyard, method: &str, path: &str, auth: Option<&str>) -> (u16, Value) {
    call_with(sy, method, path, auth, "{}").await
}

/// `call`, with `body` (as JSON) on every method but GET.
async fn call_with(
    sy: &Switchyard,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &'static str,
) -> (u16, Value) {
    let client = http_client();
    let mut req = client
        .request(
            method.to_uppercase().parse().unwrap(),
            format!("{}{}", sy.base, concrete(path)),
        )
        .header("content-type", "application/json");
    if method != "get" {
        req = req.body(body);
    }
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let streaming = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
    if streaming {
        // A live stream never ends: its answer is the open stream itself.
        return (status, json!({"stream": true}));
    }
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn every_management_route_checks_its_token() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let read_only = format!("Bearer {}", read_only_token(&sy).await);
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let basic_write_key = format!("Basic {}", base64_of("wk_web:"));
    let wrong: [(&str, Option<&str>); 5] = [
        ("no token", None),
        ("wrong token", Some("Bearer nope")),
        ("write key as Basic", Some(&basic_write_key)),
        ("write key as Bearer", Some("Bearer wk_web")),
        ("function token", Some("Bearer tok_stigg")),
    ];
    // Digests of configurations that hold secrets are for tokens that may
    // change them, not for read-only viewers.
    for (path, pointer) in [
        ("/api/v1/destinations/hook", "/digest"),
        ("/api/v1/sources/stigg", "/function/digest"),
    ] {
        let (s, b) = call(&sy, "get", path, Some(&admin)).await;
        assert_eq!(s, 200, "{path}: {b}");
        assert!(
            b.pointer(pointer).is_some_and(Value::is_string),
            "{path}: {b}"
        );
        let (s, b) = call(&sy, "get", path, Some(&read_only)).await;
        assert_eq!(s, 200, "{path}: {b}");
        assert!(
            b.pointer(pointer).is_some_and(Value::is_null),
            "{path}: {b}"
        );
    }
    let mut checked = 0;
    for (method, path, auth, _) in ROUTES {
        if *auth != Auth::Api {
            continue;
        }
        for (what, header) in &wrong {
            let (s, b) = call(&sy, method, path, *header).await;
            assert_eq!(s, 401, "{method} {path} with {what}: {b}");
            assert_eq!(b["error"]["code"], "unauthorized");
        }
        let (s, b) = call(&sy, method, path, Some(&read_only)).await;
        if *method == "get" {
            assert!(s != 401 && s != 403, "{method} {path} read-only: {s} {b}");
        } else {
            assert_eq!(
                (s, b["error"]["code"].as_str()),
                (403, Some("read_only_token")),
                "{method} {path}"
            );
        }
        // With the admin token the route exists and answers JSON.
        let (s, b) = call(&sy, method, path, Some(&admin)).await;
        assert!(s != 401 && s != 403 && s != 405, "{method} {path}: {s} {b}");
        if s == 404 {
            assert!(
                !b["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("no route"),
                "{method} {path} is not routed"
            );
        }
        assert!(b.is_object(), "{method} {path}: {b}");
        // A malformed body is refused in the same JSON shape (a route that
        // reads no body ignores it).
        if *method != "get" {
            let (s, b) = call_with(&sy, method, path, Some(&admin), r#"{"oops"#).await;
            assert!(b.is_object(), "{method} {path} malformed: {s} {b}");
            if s == 400 {
                assert_eq!(b["error"]["code"], "invalid_body", "{method} {path}: {b}");
            }
            assert!(s < 500, "{method} {path} malformed: {s} {b}");
        }
        checked += 1;
    }
    assert!(checked >= 20, "{checked}");
}

/// A new read-only API token.
async fn read_only_token(sy: &Switchyard) -> String {
    let (s, t) = sy
        .admin(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "viewer", "read_only": true})),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    t["token"].as_str().expect("token").to_string()
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let (s, text) = sy.get_text("/api/v1/openapi.json").await;
    assert_eq!(s, 200);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().unwrap();
    let mut operation_ids = std::collections::HashSet::new();
    for (path, item) in paths {
        assert!(path.starts_with('/'));
        for (method, op) in item.as_object().unwrap() {
            assert!(["get", "post", "put", "delete", "patch"].contains(&method.as_str()));
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{path}"
            );
            assert!(
                operation_ids.insert(op["operationId"].as_str().unwrap().to_string()),
                "duplicate operationId at {path}"
            );
            let declared: Vec<&str> = op["parameters"]
                .as_array()
                .map(|p| p.iter().map(|x| x["name"].as_str().unwrap()).collect())
                .unwrap_or_default();
            for seg in path.split('/').filter(|s| s.starts_with('{')) {
                assert!(
                    declared.contains(&seg.trim_matches(|c| c == '{' || c == '}')),
                    "{path}: {seg} undeclared"
                );
            }
            for req in op["security"].as_array().unwrap() {
                for scheme in req.as_object().unwrap().keys() {
                    assert!(
                        doc["components"]["securitySchemes"][scheme].is_object(),
                        "{scheme}"
                    );
                }
            }
        }
    }
    assert_eq!(
        paths
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum::<usize>(),
        ROUTES.len()
    );
    // And it is a valid OpenAPI 3.0 document, by an independent validator
    // (openapi-spec-validator, installed by tests/sdk/install.sh).
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk/.venv/bin/python");
    let mut check = std::process::Command::new(&python)
        .args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(sys.stdin))",
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (run tests/sdk/install.sh)", python.display()));
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenAPI document does not validate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every non-management route answers (management ones: see the auth test).
    for (method, path, auth, _) in ROUTES {
        if *auth == Auth::Api {
            continue;
        }
        let header = match auth {
            Auth::WriteKey => Some(format!("Basic {}", base64_of("wk_web:"))),
            Auth::FunctionToken => None,
            _ => None,
        };
        let (s, b) = call(
            &sy,
            method,
            &format!(
                "{}{}",
                path.replace("{write_key}", "wk_web"),
                if *auth == Auth::FunctionToken && !path.contains("{token}") {
                    "?token=tok_stigg"
                } else {
                    ""
                }
            ),
            header.as_deref(),
        )
        .await;
        assert!(s != 404 && s != 405 && s != 401, "{method} {path}: {s} {b}");
    }
}

#[tokio::test]
async fn tokens_are_created_shown_once_and_revoked() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let (s, t) = sy
        .admin("POST", "/api/v1/tokens", Some(json!({"name": "ci"})))
        .await;
    assert_eq!(s, 201);
    let token = t["token"].as_str().unwrap().to_string();
    let id = t["id"].as_i64().unwrap();
    let (_, list) = sy.admin("GET", "/api/v1/tokens", None).await;
    assert!(!list.to_string().contains(&token), "never shown again");
    let (s, _) = call(
        &sy,
        "post",
        "/api/v1/sources/{slug}/function/resume",
        Some(&format!("Bearer {token}")),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = sy
        .admin("DELETE", &format!("/api/v1/tokens/{id}"), None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        &sy,
        "get",
        "/api/v1/sources",
        Some(&format!("Bearer {token}")),
    )
    .await;
    assert_eq!(s, 401);
    let (s, b) = sy
        .admin(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "x", "admin": true})),
        )
        .await;
    assert_eq!(s, 400, "unknown fields are refused: {b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("admin"));
}

/// A management call runs to its end even if its client hangs up: a token
/// revoked in the store stops working at once, whether or not the client
/// that revoked it waited for the answer. (Before, one revoked by a client
/// that hung up went on working until the next start.)
#[tokio::test]
async fn a_token_revoked_by_a_client_that_hangs_up_stops_working() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let mut tokens = Vec::new();
    for n in 0..40 {
        let (s, t) = sy
            .admin(
                "POST",
                "/api/v1/tokens",
                Some(json!({"name": format!("t{n}")})),
            )
            .await;
        assert_eq!(s, 201, "{t}");
        tokens.push((
            t["id"].as_i64().unwrap(),
            t["token"].as_str().unwrap().to_string(),
        ));
    }
    let mut clients = Vec::new();
    for (n, (id, _)) in tokens.iter().enumerate() {
        let (addr, id) = (sy.addr.clone(), *id);
        clients.push(tokio::spawn(async move {
            let request = format!(
                "DELETE /api/v1/tokens/{id} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 0\r\n\r\n"
            );
            // From at once to 10 ms later: some before the call is read,
            // some while it writes, some after the answer.
            send_and_hang_up(&addr, &request, Duration::from_micros(250 * n as u64)).await;
        }));
    }
    for client in clients {
        client.await.expect("client");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, list) = sy.admin("GET", "/api/v1/tokens", None).await;
    assert_eq!(s, 200, "{list}");
    let listed = list.to_string();
    let mut revoked = 0;
    for (id, token) in &tokens {
        let active = list["data"]
            .as_array()
            .unwrap_or_else(|| panic!("a token list: {listed}"))
            .iter()
            .any(|t| t["id"].as_i64() == Some(*id));
        let (s, _) = call(
            &sy,
            "get",
            "/api/v1/sources",
            Some(&format!("Bearer {token}")),
        )
        .await;
        assert_eq!(
            (active, s == 200),
            (active, active),
            "token {id}: active in the store: {active}, answered {s}"
        );
        revoked += usize::from(!active);
    }
    assert!(revoked > 0, "some revocations were read: {listed}");
}

#[tokio::test]
async fn deleting_a_user_notifies_destinations_and_purges_their_data() {
    let rx = Receiver::start("s3cret");
    let mut sy = Switchyard::start(&config(&rx));
    for (i, user) in ["u1", "u2", "u1"].iter().enumerate() {
        let (s, _) = sy
            .post(
                "/v1/track",
                "wk_web",
                &json!({"userId": user, "event": "E", "messageId": format!("t{i}")}).to_string(),
            )
            .await;
        assert_eq!(s, 200);
    }
    let (s, _) = sy
        .post_with(
            "/functions/stigg/tok_stigg",
            None,
            br#"{"type":"a.b","customer":{"id":"u1"}}"#.to_vec(),
            &[],
        )
        .await;
    assert_eq!(s, 200);
    rx.wait_delivered("hook", 4, 30).await;

    let (s, d) = sy
        .admin("POST", "/api/v1/deletions", Some(json!({"userId": "u1"})))
        .await;
    assert_eq!(s, 201, "{d}");
    let mut sources: Vec<&str> = d["affected_sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    sources.sort();
    assert_eq!(sources, ["stigg", "web"]);
    assert_eq!(d["purged"]["events"], 3, "{d}");
    assert!(d["purged"]["captures"].as_u64().unwrap() >= 1, "{d}");

    // Every affected source's destinations get the signed delete notice.
    let got = rx
        .wait_until("hook", 30, |r| {
            r.iter().filter(|x| body(x)["type"] == "delete").count() == 2
        })
        .await;
    for r in got.iter().filter(|x| body(x)["type"] == "delete") {
        assert_eq!(body(r)["userId"], "u1");
        assert_eq!(r["segmentSignatureValid"], true);
    }
    let id = d["id"].as_str().unwrap();
    let mut progress = Value::Null;
    for _ in 0..50 {
        let (_, p) = sy
            .admin("GET", &format!("/api/v1/deletions/{id}"), None)
            .await;
        if p["deliveries"].as_array().is_some_and(|a| a.len() == 2) {
            progress = p;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        progress["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["outcome"] == "delivered"),
        "{progress}"
    );

    // Nothing of u1 remains in the store but the delete notices; u2 is untouched.
    let db = rusqlite::Connection::open(sy.dir.0.join("data/switchyard.db")).unwrap();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    // Event bodies are in the segment files: the only records of u1 left
    // there are the two delete notices (the purged ones are erased).
    assert_eq!(count("SELECT COUNT(*) FROM events WHERE user_id = 'u1'"), 2);
    let mut segments = String::new();
    for file in std::fs::read_dir(sy.dir.0.join("data/events")).unwrap() {
        let bytes = std::fs::read(file.unwrap().path()).unwrap();
        segments.push_str(&String::from_utf8_lossy(&bytes));
    }
    assert_eq!(
        segments.matches(r#""userId":"u1""#).count(),
        2,
        "{segments}"
    );
    assert_eq!(segments.matches(r#""type":"delete""#).count(), 2);
    assert_eq!(count("SELECT COUNT(*) FROM events WHERE user_id = 'u2'"), 1);
    let captures: Vec<Vec<u8>> = {
        let mut stmt = db.prepare("SELECT request FROM captures").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    assert!(captures.is_empty(), "the capture mentioning u1 is gone");
    assert_eq!(count("SELECT COUNT(*) FROM raw_requests"), 0);

    // A deletion cut short by a crash (recorded `running`, nothing done yet)
    // is finished at the next start: notices sent, data purged.
    let (s, _) = sy
        .post(
            "/v1/track",
            "wk_web",
            r#"{"userId":"u3","event":"E","messageId":"u3-1"}"#,
        )
        .await;
    assert_eq!(s, 200);
    rx.wait_until("hook", 30, |r| r.iter().any(|x| body(x)["userId"] == "u3"))
        .await;
    sy.kill9();
    db.execute(
        "INSERT INTO meta(key, value) VALUES('deletion:del_cut', ?1)",
        [
            json!({"id": "del_cut", "userId": "u3", "created_at": "2026-01-01T00:00:00.000Z",
                "status": "running", "affected_sources": ["web"]})
            .to_string(),
        ],
    )
    .unwrap();
    sy.restart();
    let (s, finished) = sy.admin("GET", "/api/v1/deletions/del_cut", None).await;
    assert_eq!(
        (s, &finished["status"]),
        (200, &json!("completed")),
        "{finished}"
    );
    assert_eq!(finished["purged"]["events"], 1, "{finished}");
    rx.wait_until("hook", 30, |r| {
        r.iter()
            .any(|x| body(x)["type"] == "delete" && body(x)["userId"] == "u3")
    })
    .await;
    assert_eq!(
        count("SELECT COUNT(*) FROM events WHERE user_id = 'u3'"),
        1,
        "only the notice"
    );

    // The list of deletions is the store's: it outlives a restart.
    drop(db);
    sy.restart();
    let (s, list) = sy.admin("GET", "/api/v1/deletions", None).await;
    assert_eq!(s, 200, "{list}");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, ["del_cut", id], "oldest first");
}

fn cli(sy: &Switchyard, args: &[&str]) -> (i32, String) {
    cli_as(sy, ADMIN_TOKEN, args)
}

/// The CLI against `sy` with `token`: exit code and stdout + stderr.
fn cli_as(sy: &Switchyard, token: &str, args: &[&str]) -> (i32, String) {
    cli_env(
        &[("SWITCHYARD_SERVER", &sy.base), ("SWITCHYARD_TOKEN", token)],
        args,
    )
}

#[tokio::test]
async fn the_cli_lists_and_replays_dead_letters() {
    let rx = Receiver::start("s3cret");
    rx.control("hook", json!({"status": 400, "times": -1}))
        .await;
    let sy = Switchyard::start(&config(&rx));
    for i in 0..3 {
        let (s, _) = sy
            .post(
                "/v1/track",
                "wk_web",
                &json!({"userId": "u", "event": "E", "messageId": format!("c{i}")}).to_string(),
            )
            .await;
        assert_eq!(s, 200);
    }
    let mut listed = String::new();
    for _ in 0..100 {
        let (code, out) = cli(&sy, &["deadletters", "list", "--destination", "hook"]);
        assert_eq!(code, 0, "{out}");
        if out.contains("3 shown of 3 in all") {
            listed = out;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed.starts_with("ID"), "{listed}");
    assert!(listed.contains("HTTP 400"), "{listed}");
    assert!(
        listed
            .lines()
            .nth(1)
            .is_some_and(|l| ["  c0  ", "  c1  ", "  c2  "].iter().any(|c| l.contains(c))),
        "message ids as a list: {listed}"
    );
    // A page, and where the next one starts.
    let (code, page) = cli(
        &sy,
        &["deadletters", "list", "--destination", "hook", "-n", "2"],
    );
    assert_eq!(code, 0, "{page}");
    let next = page
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("2 shown of 3 in all; next: --after "))
        .unwrap_or_else(|| panic!("{page}"))
        .to_string();
    let (code, rest) = cli(
        &sy,
        &[
            "deadletters",
            "list",
            "--destination",
            "hook",
            "--after",
            &next,
        ],
    );
    assert!(code == 0 && rest.contains("1 shown of 3 in all"), "{rest}");
    let (code, out) = cli(
        &sy,
        &["deadletters", "list", "--destination", "hook", "--json"],
    );
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
    let (s, rejected) = sy
        .admin(
            "GET",
            "/api/v1/destinations/hook/attempts?outcome=rejected",
            None,
        )
        .await;
    assert_eq!((s, rejected["data"].as_array().unwrap().len()), (200, 3));
    let (s, unknown) = sy
        .admin(
            "GET",
            "/api/v1/destinations/hook/attempts?outcome=rejectd",
            None,
        )
        .await;
    assert_eq!(
        (s, &unknown["error"]["code"], &unknown["error"]["field"]),
        (400, &json!("invalid_query"), &json!("outcome")),
        "a misspelt outcome is not an empty list: {unknown}"
    );
    let first = v["data"][0]["id"].as_i64().unwrap().to_string();
    let (code, out) = cli(
        &sy,
        &[
            "deadletters",
            "discard",
            "--destination",
            "hook",
            "--id",
            &first,
        ],
    );
    assert_eq!((code, out.trim()), (0, "discarded 1"));
    // An id that matches no dead letter (any more) is named, and fails.
    let (code, out) = cli(
        &sy,
        &[
            "deadletters",
            "discard",
            "--destination",
            "hook",
            "--id",
            &first,
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("discarded 0\n")
            && out.contains(&format!("no dead letter {first} for destination \"hook\"")),
        "{out}"
    );
    let (code, out) = cli(
        &sy,
        &[
            "--json",
            "deadletters",
            "replay",
            "--destination",
            "hook",
            "--id",
            "999999",
            "--id",
            &first,
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("no dead letters 999999, {first} for destination")),
        "{out}"
    );
    let answer: Value = serde_json::from_str(out.split("switchyard:").next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        answer,
        json!({"replayed": 0, "not_found": [999999, first.parse::<i64>().unwrap()]})
    );
    let (code, out) = cli(
        &sy,
        &[
            "deadletters",
            "replay",
            "--destination",
            "hook",
            "--until-ms",
            "1",
        ],
    );
    assert_eq!(
        (code, out.trim()),
        (0, "replayed 0"),
        "none failed before 1970"
    );
    rx.control("hook", json!({"status": 200, "times": 0})).await;
    let (code, out) = cli(&sy, &["deadletters", "replay", "--destination", "hook"]);
    assert_eq!((code, out.trim()), (0, "replayed 2"));
    rx.wait_delivered("hook", 2, 30).await;
    // Exit codes: 1 when the server refuses, 2 for usage or connection errors.
    let (code, _) = cli(&sy, &["deadletters", "list", "--destination", "nope"]);
    assert_eq!(code, 1);
    let (code, _) = cli(
        &sy,
        &["destinations", "list", "--server", "http://127.0.0.1:9"],
    );
    assert_eq!(code, 2);
    let (code, out) = cli(&sy, &["destinations", "list"]);
    assert_eq!(code, 0);
    // Its sources as a list to read, not as JSON.
    let hook = out
        .lines()
        .find(|l| l.starts_with("hook "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(hook.contains("  web, stigg  "), "{out}");
    assert!(!out.contains('['), "{out}");
}

#[tokio::test]
async fn sources_are_created_rotated_and_tailed_live() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let (s, created) = sy
        .admin("POST", "/api/v1/sources", Some(json!({"slug": "mobile"})))
        .await;
    assert_eq!(s, 201, "{created}");
    let key = created["write_key"].as_str().unwrap().to_string();
    let (s, _) = sy.post("/v1/identify", &key, r#"{"userId":"m1"}"#).await;
    assert_eq!(s, 200, "a new source works at once");
    let (s, b) = sy
        .admin("POST", "/api/v1/sources", Some(json!({"slug": "mobile"})))
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("conflict")));
    let (s, _) = sy
        .admin(
            "POST",
            "/api/v1/sources",
            Some(json!({"slug": "x", "kind": "function"})),
        )
        .await;
    assert_eq!(s, 400);

    // Rotation: the old key stops working, the new one works.
    let (s, rotated) = sy
        .admin("POST", "/api/v1/sources/mobile/rotate", None)
        .await;
    assert_eq!(s, 200);
    let new_key = rotated["write_key"].as_str().unwrap().to_string();
    assert_eq!(
        sy.post("/v1/identify", &key, r#"{"userId":"m1"}"#).await.0,
        401
    );
    assert_eq!(
        sy.post("/v1/identify", &new_key, r#"{"userId":"m1"}"#)
            .await
            .0,
        200
    );
    let (s, list) = sy.admin("GET", "/api/v1/sources", None).await;
    assert_eq!(s, 200);
    assert!(!list.to_string().contains(&new_key), "keys are masked");
    // A deleted source's key stops working at once.
    let (s, gone) = sy
        .admin("POST", "/api/v1/sources", Some(json!({"slug": "gone"})))
        .await;
    assert_eq!(s, 201);
    let gone_key = gone["write_key"].as_str().unwrap().to_string();
    let (s, _) = sy
        .post("/v1/identify", &gone_key, r#"{"userId":"g1"}"#)
        .await;
    assert_eq!(
        s, 200,
        "the key is verified (and remembered) before the deletion"
    );
    let (s, _) = sy.admin("DELETE", "/api/v1/sources/gone", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        sy.post("/v1/identify", &gone_key, r#"{"userId":"g1"}"#)
            .await
            .0,
        401
    );
    let (s, _) = sy.admin("DELETE", "/api/v1/sources/gone", None).await;
    assert_eq!(s, 404);

    // The debugger backlog and the live tail through the CLI.
    let (_, recent) = sy
        .admin("GET", "/api/v1/sources/mobile/events?limit=10", None)
        .await;
    assert_eq!(recent["data"].as_array().unwrap().len(), 2);
    let mut tail = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        // `--json`: each event as one JSON object per line.
        .args(["--json", "tail", "mobile"])
        .env("SWITCHYARD_SERVER", &sy.base)
        .env("SWITCHYARD_TOKEN", ADMIN_TOKEN)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        let (s, _) = sy
            .post(
                "/v1/track",
                &new_key,
                &json!({"userId": "m1", "event": format!("Live {i}")}).to_string(),
            )
            .await;
        assert_eq!(s, 200);
    }
    let stdout = tail.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .take(3)
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(30), lines)
        .await
        .expect("tail printed 3 events")
        .unwrap();
    let _ = tail.kill();
    let _ = tail.wait();
    for (i, line) in lines.iter().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["event"], format!("Live {i}"));
    }
}

#[tokio::test]
async fn destinations_are_created_changed_and_removed_at_run_time() {
    let rx = Receiver::start("s3cret");
    let mut sy = Switchyard::start(&config(&rx));
    let send = |sy: &Switchyard, id: &str| {
        let body = json!({"userId": "u", "event": "E", "messageId": id}).to_string();
        let sy_base = sy.base.clone();
        async move {
            let resp = http_client()
                .post(format!("{sy_base}/v1/track"))
                .basic_auth("wk_web", Some(""))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
        }
    };
    let (s, b) = sy
        .admin("POST", "/api/v1/destinations", Some(json!({"name": "api-hook", "kind": "webhooks", "sources": ["web"], "urls": [rx.url("api1")], "shared_secret": "s3cret"})))
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["config"]["shared_secret"], "********");
    // Secrets are encrypted at rest: the database never holds them in clear.
    let db = rusqlite::Connection::open(sy.dir.0.join("data/switchyard.db")).unwrap();
    let stored: Vec<String> = db
        .prepare("SELECT config FROM destinations")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(stored.len(), 2);
    assert!(
        stored
            .iter()
            .all(|c| !c.contains("s3cret") && c.contains("enc:v1:")),
        "{stored:?}"
    );
    send(&sy, "a1").await;
    let got = rx.wait_delivered("api1", 1, 30).await;
    assert_eq!(got[0]["segmentSignatureValid"], true);

    // Bad configurations are refused with the reason.
    let (s, b) = sy
        .admin(
            "POST",
            "/api/v1/destinations",
            Some(json!({"name": "x", "urls": ["http://a"], "sharedSecret": "typo"})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sharedSecret"),
        "{b}"
    );
    let (s, _) = sy
        .admin("POST", "/api/v1/destinations", Some(json!({"name": "x", "urls": ["http://a/1", "http://a/2", "http://a/3", "http://a/4", "http://a/5", "http://a/6"]})))
        .await;
    assert_eq!(s, 400);
    let (s, _) = sy
        .admin(
            "POST",
            "/api/v1/destinations",
            Some(json!({"name": "x", "sources": ["nope"], "urls": ["http://a"]})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = sy
        .admin(
            "POST",
            "/api/v1/destinations",
            Some(json!({"name": "api-hook", "urls": ["http://a"]})),
        )
        .await;
    assert_eq!(s, 409);

    // Change the URL of the configuration as read back: its masked secret
    // means "unchanged", so events are still signed with the real one.
    let (_, read) = sy.admin("GET", "/api/v1/destinations/api-hook", None).await;
    let mut changed = read["config"].clone();
    assert_eq!(changed["shared_secret"], "********", "{read}");
    changed["urls"] = json!([rx.url("api2").replace("://", "://hook:pa55@")]);
    changed["headers"] = json!({"Authorization": "Bearer crm-key"});
    let (s, b) = sy
        .admin("PUT", "/api/v1/destinations/api-hook", Some(changed))
        .await;
    assert_eq!(s, 200, "{b}");
    send(&sy, "a2").await;
    let got = rx.wait_delivered("api2", 1, 30).await;
    assert_eq!(body(&got[0])["messageId"], "a2");
    assert_eq!(got[0]["segmentSignatureValid"], true, "{:?}", got[0]);
    // A mask with no stored secret behind it is refused, not stored.
    let (s, b) = sy
        .admin(
            "POST",
            "/api/v1/destinations",
            Some(json!({"name": "masked", "urls": ["http://a"], "shared_secret": "********"})),
        )
        .await;
    assert_eq!(
        (s, &b["error"]["field"]),
        (400, &json!("shared_secret")),
        "{b}"
    );
    // Header values and URL passwords are the admin's to read, not a viewer's.
    let viewer = format!("Bearer {}", read_only_token(&sy).await);
    let (_, seen) = call(&sy, "get", "/api/v1/destinations/api-hook", Some(&viewer)).await;
    assert_eq!(
        seen["config"]["headers"]["Authorization"], "********",
        "{seen}"
    );
    assert!(
        seen["config"]["urls"][0]
            .as_str()
            .unwrap()
            .contains("://hook:********@"),
        "{seen}"
    );
    // What the viewer saw, written back by an admin, keeps them too.
    let (s, b) = sy
        .admin(
            "PUT",
            "/api/v1/destinations/api-hook",
            Some(seen["config"].clone()),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (_, seen) = sy.admin("GET", "/api/v1/destinations/api-hook", None).await;
    assert_eq!(
        seen["config"]["headers"]["Authorization"], "Bearer crm-key",
        "{seen}"
    );
    assert!(
        seen["config"]["urls"][0]
            .as_str()
            .unwrap()
            .contains("://hook:pa55@"),
        "{seen}"
    );
    let (s, b) = sy
        .admin(
            "POST",
            "/api/v1/destinations",
            Some(
                json!({"name": "masked2", "urls": ["http://a"], "headers": {"X-Key": "********"}}),
            ),
        )
        .await;
    assert_eq!(
        (s, &b["error"]["field"]),
        (400, &json!("headers.X-Key")),
        "{b}"
    );

    // It survives a restart.
    sy.restart();
    send(&sy, "a3").await;
    rx.wait_delivered("api2", 2, 30).await;
    let (s, d) = sy.admin("GET", "/api/v1/destinations/api-hook", None).await;
    assert_eq!(
        (s, d["origin"].as_str(), d["running"].as_bool()),
        (200, Some("api"), Some(true)),
        "{d}"
    );

    // Removed: nothing more is sent.
    let (s, _) = sy
        .admin("DELETE", "/api/v1/destinations/api-hook", None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = sy.admin("GET", "/api/v1/destinations/api-hook", None).await;
    assert_eq!(s, 404);
    send(&sy, "a4").await;
    rx.wait_delivered("hook", 4, 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // (The restart above was a SIGKILL: a redelivery of a2 is at-least-once, allowed.)
    let ids: std::collections::HashSet<String> =
        rx.received("api2").await.iter().map(message_id).collect();
    assert_eq!(ids, ["a2", "a3"].iter().map(|s| s.to_string()).collect());

    // Made again under the same name, it starts afresh: at the head of the
    // log (not with a4, sent while there was no such destination).
    let (s, b) = sy
        .admin("POST", "/api/v1/destinations", Some(json!({"name": "api-hook", "kind": "webhooks", "sources": ["web"], "urls": [rx.url("api3")], "shared_secret": "s3cret"})))
        .await;
    assert_eq!(s, 201, "{b}");
    send(&sy, "a5").await;
    rx.wait_delivered("api3", 1, 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<String> = rx.received("api3").await.iter().map(message_id).collect();
    assert_eq!(ids, ["a5"]);
}

/// `switchyard apply --config FILE EXTRA…` against `sy`.
fn apply_file(sy: &Switchyard, file: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["apply", "--config", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    cli(sy, &args)
}

#[tokio::test]
async fn apply_reconciles_a_running_server_to_a_file_idempotently() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let dir = TempDir::new("apply");
    let file = dir.0.join("next.toml");
    let next = config(&rx).replace(&rx.url("hook"), &rx.url("hook2"))
        + &format!(
            "\n[[sources]]\nslug = \"newsrc\"\nkind = \"tracking\"\nwrite_key = \"wk_new\"\n\n[[destinations]]\nname = \"extra\"\nkind = \"webhooks\"\nsources = [\"newsrc\"]\nurls = [\"{}\"]\nshared_secret = \"s3cret\"\n",
            rx.url("extra")
        );
    std::fs::write(&file, &next).unwrap();
    let apply = |extra: &[&str]| apply_file(&sy, &file, extra);
    // A read-only token sees no digests: apply says so instead of planning.
    let viewer = read_only_token(&sy).await;
    let (code, out) = cli_as(
        &sy,
        &viewer,
        &["apply", "--dry-run", "--config", file.to_str().unwrap()],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("not a read-only one"), "{out}");

    let (code, plan) = apply(&["--dry-run"]);
    assert_eq!(code, 0, "{plan}");
    assert!(plan.contains("+ create source newsrc"), "{plan}");
    assert!(plan.contains("~ change destination hook"), "{plan}");
    assert!(plan.contains("+ create destination extra"), "{plan}");
    assert_eq!(
        sy.post("/v1/track", "wk_new", r#"{"userId":"u","event":"E"}"#)
            .await
            .0,
        401,
        "dry run changes nothing"
    );

    let (code, out) = apply(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("applied"), "{out}");
    assert_eq!(
        sy.post("/v1/track", "wk_new", r#"{"userId":"u","event":"E"}"#)
            .await
            .0,
        200
    );
    rx.wait_delivered("extra", 1, 30).await;
    assert_eq!(
        sy.post("/v1/track", "wk_web", r#"{"userId":"u","event":"E"}"#)
            .await
            .0,
        200
    );
    rx.wait_delivered("hook2", 1, 30).await;

    let (code, plan) = apply(&["--dry-run"]);
    assert_eq!(code, 0);
    assert!(plan.contains("no changes"), "idempotent: {plan}");

    // A write key changed in the file is set, as a start would set it, and
    // the plan says so; --json gives the plan as one JSON document.
    std::fs::write(&file, next.replace("wk_new", "wk_newer")).unwrap();
    let (code, plan) = apply(&["--dry-run", "--json"]);
    assert_eq!(code, 0, "{plan}");
    let plan: Value = serde_json::from_str(&plan).unwrap_or_else(|e| panic!("{e}: {plan}"));
    assert_eq!(
        plan["steps"],
        json!([{"action": "change", "kind": "source", "name": "newsrc", "note": "its write key from the file"}]),
        "{plan}"
    );
    let (code, out) = apply(&["--json"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["applied"],
        true
    );
    let track = |key: &'static str| sy.post("/v1/track", key, r#"{"userId":"u","event":"E"}"#);
    assert_eq!(
        (track("wk_newer").await.0, track("wk_new").await.0),
        (200, 401)
    );
    let (code, plan) = apply(&["--dry-run"]);
    assert!(code == 0 && plan.contains("no changes"), "{plan}");
    // A key another source has is refused: in the file, by the API, and
    // when the file gives a source the key of one made through the API.
    std::fs::write(&file, next.replace("wk_new", "wk_web")).unwrap();
    let (code, out) = apply(&[]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("have the same `write_key`"), "{out}");
    let (s, _) = sy
        .admin(
            "POST",
            "/api/v1/sources",
            Some(json!({"slug": "apisrc", "write_key": "wk_api"})),
        )
        .await;
    assert_eq!(s, 201);
    std::fs::write(&file, next.replace("wk_new", "wk_api")).unwrap();
    let (code, out) = apply(&[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("already belongs to source \"apisrc\""),
        "{out}"
    );
    let (s, body) = sy
        .admin(
            "POST",
            "/api/v1/sources",
            Some(json!({"slug": "intruder", "write_key": "wk_web"})),
        )
        .await;
    assert_eq!(
        (s, &body["error"]["field"]),
        (409, &json!("write_key")),
        "{body}"
    );
    let (s, _) = sy
        .admin(
            "POST",
            "/api/v1/sources",
            Some(json!({"slug": "blank", "write_key": ""})),
        )
        .await;
    assert_eq!(s, 400);
    std::fs::write(&file, &next).unwrap();
    let (code, out) = apply(&[]);
    assert_eq!(code, 0, "{out}");
    // Two sources trade keys, as a start with the file would make them.
    let swapped = next
        .replace("\"wk_web\"", "\"wk_swap\"")
        .replace("\"wk_new\"", "\"wk_web\"")
        .replace("\"wk_swap\"", "\"wk_new\"");
    std::fs::write(&file, &swapped).unwrap();
    let (code, out) = apply(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.matches("its write key from the file").count(),
        2,
        "{out}"
    );
    let (s, _) = sy
        .post(
            "/v1/track",
            "wk_web",
            r#"{"userId":"u","event":"E","messageId":"swap-1"}"#,
        )
        .await;
    assert_eq!(s, 200);
    let (_, events) = sy.admin("GET", "/api/v1/sources/newsrc/events", None).await;
    assert!(
        events.to_string().contains("swap-1"),
        "wk_web names newsrc now: {events}"
    );
    std::fs::write(&file, &next).unwrap();
    let (code, out) = apply(&[]);
    assert_eq!(code, 0, "{out}");

    // Dropping a destination from the file removes it.
    std::fs::write(
        &file,
        config(&rx).replace(&rx.url("hook"), &rx.url("hook2"))
            + "\n[[sources]]\nslug = \"newsrc\"\nkind = \"tracking\"\n",
    )
    .unwrap();
    let (code, plan) = apply(&["--keep-unlisted", "--dry-run"]);
    assert_eq!(code, 0, "{plan}");
    assert!(plan.contains("= keep destination extra"), "{plan}");
    assert!(!plan.contains("- remove"), "{plan}");
    let (code, plan) = apply(&[]);
    assert_eq!(code, 0, "{plan}");
    assert!(
        plan.contains("- remove destination extra (created through the API"),
        "{plan}"
    );
    let (s, _) = sy.admin("GET", "/api/v1/destinations/extra", None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn function_logs_and_completions_from_the_cli() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let (s, _) = sy
        .post_with(
            "/functions/stigg/tok_stigg",
            None,
            br#"{"customer":{"id":"c"},"type":null}"#.to_vec(),
            &[],
        )
        .await;
    assert_eq!(s, 200);
    let mut out = String::new();
    for _ in 0..100 {
        let (code, o) = cli(&sy, &["functions", "logs", "--source", "stigg", "-n", "10"]);
        assert_eq!(code, 0, "{o}");
        if o.contains("TypeError") {
            out = o;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(out.contains("attempt 1 of 5, will retry"), "{out}");
    // The same lines, live, as Server-Sent Events.
    let mut resp = http_client()
        .get(format!("{}/api/v1/sources/stigg/logs/stream", sy.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut seen = String::new();
    let read = async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("TypeError") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("a log line on the stream");
    assert!(seen.contains("data:"), "{seen}");
    let (code, script) = cli(&sy, &["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(
        script.contains("switchyard") && script.contains("deadletters"),
        "{}",
        &script[..200.min(script.len())]
    );
}

#[tokio::test]
async fn the_cli_replays_hundreds_of_dead_letters_in_chunks() {
    let rx = Receiver::start("s3cret");
    rx.control("hook", json!({"status": 400, "times": -1}))
        .await;
    let sy = Switchyard::start(&config(&rx));
    sy.send_tracks(450, "m").await;
    let mut total = 0;
    for _ in 0..300 {
        let (_, d) = sy
            .admin("GET", "/api/v1/destinations/hook/deadletters?limit=1", None)
            .await;
        total = d["total"].as_u64().unwrap_or(0);
        if total == 450 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(total, 450);
    // Pages follow each other by id, with nothing missed or repeated.
    let (_, first) = sy
        .admin(
            "GET",
            "/api/v1/destinations/hook/deadletters?limit=400",
            None,
        )
        .await;
    let after = first["next_after"]
        .as_i64()
        .expect("a full page names the next");
    let (_, rest) = sy
        .admin(
            "GET",
            &format!("/api/v1/destinations/hook/deadletters?limit=400&after={after}"),
            None,
        )
        .await;
    assert_eq!(
        (rest["data"].as_array().unwrap().len(), &rest["next_after"]),
        (50, &Value::Null)
    );
    assert!(rest["data"][0]["id"].as_i64().unwrap() > after);
    // Replayed while the receiver still refuses them: each is replayed once
    // by one command, although each comes straight back as a new dead letter.
    let (code, out) = cli(&sy, &["deadletters", "replay", "--destination", "hook"]);
    assert_eq!((code, out.trim()), (0, "replayed 450"));
    for _ in 0..300 {
        let (_, d) = sy
            .admin("GET", "/api/v1/destinations/hook/deadletters?limit=1", None)
            .await;
        if d["total"] == 450 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rx.control("hook", json!({"status": 200, "times": 0})).await;
    let (code, out) = cli(&sy, &["deadletters", "replay", "--destination", "hook"]);
    assert_eq!((code, out.trim()), (0, "replayed 450"));
    let got = rx
        .wait_until("hook", 60, |r| {
            delivered(r)
                .iter()
                .map(message_id)
                .collect::<std::collections::HashSet<_>>()
                .len()
                == 450
        })
        .await;
    assert_eq!(delivered(&got).len(), 450, "each once");

    // Attempts are paged newest first, by id: every one once.
    let mut seen = Vec::new();
    let mut path = "/api/v1/destinations/hook/attempts?limit=1000".to_string();
    loop {
        let (s, page) = sy.admin("GET", &path, None).await;
        assert_eq!(s, 200, "{page}");
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["id"].as_i64().unwrap()),
        );
        match page["next_before"].as_i64() {
            Some(before) => {
                path = format!("/api/v1/destinations/hook/attempts?limit=1000&before={before}")
            }
            None => break,
        }
    }
    assert!(seen.len() >= 3 * 450, "{}", seen.len());
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first, none twice"
    );
    let (s, b) = sy
        .admin("GET", "/api/v1/destinations/hook/attempts?after=1", None)
        .await;
    assert_eq!((s, &b["error"]["field"]), (400, &json!("after")), "{b}");
}

fn paging_config() -> String {
    format!(
        r#"
[[sources]]
slug = "web"
kind = "tracking"
write_key = "wk_web"

[[sources]]
slug = "pager"
kind = "function"
function = "pager"
token = "tok_pager"

# Answered by the function, so a failed run is a dead letter at once.
[[sources]]
slug = "doomed"
kind = "function"
function = "pager"
token = "tok_doomed"
respond = "function"

[[functions]]
name = "pager"
kind = "source"
file = "{pager}"

[[functions]]
name = "echo"
kind = "destination"
file = "{echo}"

[[destinations]]
name = "echo"
kind = "function"
function = "echo"
sources = ["web"]
"#,
        pager = fixture("pager.js"),
        echo = fixture("echo.js"),
    )
}

type Arrivals<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

/// Every row of a paged list, page after page by the cursor each page
/// names (`next_before` or `next_after`), with `between(round)` run after
/// each page is read: rows arriving while a client pages.
async fn page_through<'a>(
    sy: &Switchyard,
    path: &str,
    limit: usize,
    mut between: impl FnMut(usize) -> Arrivals<'a>,
) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut cursor = String::new();
    for round in 0usize.. {
        assert!(round < 100, "{path}: the pages never end");
        let url = format!("{path}?limit={limit}{cursor}");
        let (s, page) = sy.admin("GET", &url, None).await;
        assert_eq!(s, 200, "{url}: {page}");
        let data = page["data"].as_array().unwrap();
        rows.extend(data.iter().cloned());
        between(round).await;
        let next = [
            ("before", &page["next_before"]),
            ("after", &page["next_after"]),
        ]
        .into_iter()
        .find(|(_, v)| !v.is_null());
        let Some((name, value)) = next else {
            assert!(data.len() < limit, "{url}: a full page names the next");
            break;
        };
        assert_eq!(data.len(), limit, "{url}: only a full page names the next");
        let value = value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_string);
        cursor = format!("&{name}={value}");
    }
    rows
}

/// A newest-first list paged while rows arrive: each row of `before` (the
/// whole list, read first) once, newest first, and nothing else but rows
/// newer than all of them.
fn assert_each_once_newest_first(what: &str, before: &[Value], paged: &[Value]) {
    let ids = |rows: &[Value]| -> Vec<i64> {
        rows.iter()
            .map(|r| r["id"].as_i64().expect("an id"))
            .collect()
    };
    let (before, paged) = (ids(before), ids(paged));
    assert!(
        paged.windows(2).all(|w| w[0] > w[1]),
        "{what}: newest first, none twice: {paged:?}"
    );
    let newest = before.first().copied().unwrap_or(0);
    for id in &before {
        assert!(paged.contains(id), "{what}: {id} missed");
    }
    for id in &paged {
        assert!(
            before.contains(id) || *id > newest,
            "{what}: {id} is neither listed before nor new"
        );
    }
}

/// Polls `path` (with `limit=1000`) until it lists at least `count` rows;
/// returns them.
async fn at_least(sy: &Switchyard, path: &str, count: usize) -> Vec<Value> {
    for _ in 0..300 {
        let (s, page) = sy.admin("GET", &format!("{path}?limit=1000"), None).await;
        assert_eq!(s, 200, "{path}: {page}");
        let rows = page["data"].as_array().cloned().unwrap_or_default();
        if rows.len() >= count {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never listed {count} rows");
}

async fn hook(sy: &Switchyard, source: &str, body: Value) {
    let (s, b) = sy
        .post_with(
            &format!("/functions/{source}/tok_{source}"),
            None,
            body.to_string().into_bytes(),
            &[],
        )
        .await;
    assert!(s < 500 || source == "doomed", "{source}: {s} {b}");
}

/// Every list of the management API pages with a cursor: rows written in
/// one millisecond (a batch's rejections, a run's log lines) and rows that
/// arrive between pages are neither missed nor repeated.
#[tokio::test]
async fn every_list_pages_with_a_cursor_while_rows_arrive() {
    let sy = &Switchyard::start(&paging_config());

    // Recent events, by log position; new ones never mix in.
    sy.send_tracks(120, "old").await;
    let (_, all) = sy
        .admin("GET", "/api/v1/sources/web/events?limit=1000", None)
        .await;
    let expected: Vec<Value> = (0..120).rev().map(|i| json!(format!("old{i}"))).collect();
    let listed: Vec<Value> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["messageId"].clone())
        .collect();
    assert_eq!(listed, expected);
    let paged = page_through(sy, "/api/v1/sources/web/events", 50, |round| {
        Box::pin(async move { sy.send_tracks(3, &format!("new{round}-")).await })
    })
    .await;
    let paged: Vec<Value> = paged.iter().map(|e| e["messageId"].clone()).collect();
    assert_eq!(paged, expected);

    // Rejections: one batch's share a millisecond.
    // With one valid message: a batch of none is refused as a whole.
    let invalid = |n: usize| {
        let mut batch = vec![json!({"type": "track", "event": "no user"}); n];
        batch.push(json!({"type": "track", "event": "E", "userId": "u"}));
        json!({ "batch": batch })
    };
    let (s, b) = sy
        .post("/v1/batch", "wk_web", &invalid(120).to_string())
        .await;
    assert_eq!(s, 200, "{b}");
    let path = "/api/v1/sources/web/rejections";
    let before = at_least(sy, path, 120).await;
    assert_eq!(before.len(), 120);
    let paged = page_through(sy, path, 50, |_| {
        Box::pin(async move {
            let (s, b) = sy
                .post("/v1/batch", "wk_web", &invalid(2).to_string())
                .await;
            assert_eq!(s, 200, "{b}");
        })
    })
    .await;
    assert_each_once_newest_first("rejections", &before, &paged);
    assert_eq!(paged.len(), 120);

    // A destination function's logs, written as deliveries run on.
    let path = "/api/v1/destinations/echo/logs";
    let before = at_least(sy, path, 120).await;
    let paged = page_through(sy, path, 50, |round| {
        Box::pin(async move { sy.send_tracks(5, &format!("more{round}-")).await })
    })
    .await;
    assert_each_once_newest_first("destination logs", &before, &paged);

    // A source function's logs: a run's lines share a millisecond or few.
    hook(sy, "pager", json!({"lines": 120, "tag": "a"})).await;
    let path = "/api/v1/sources/pager/logs";
    let before = at_least(sy, path, 120).await;
    let paged = page_through(sy, path, 50, |round| {
        Box::pin(
            async move { hook(sy, "pager", json!({"lines": 7, "tag": format!("n{round}")})).await },
        )
    })
    .await;
    assert_each_once_newest_first("source logs", &before, &paged);
    assert!(paged
        .iter()
        .all(|l| l["message"].is_string() && l["at_ms"].is_i64()));

    // A source's dead raw requests.
    for i in 0..60 {
        hook(sy, "doomed", json!({"fail": true, "tag": i})).await;
    }
    let path = "/api/v1/sources/doomed/deadletters";
    let before = at_least(sy, path, 60).await;
    assert_eq!(before.len(), 60);
    let paged = page_through(sy, path, 25, |round| {
        Box::pin(async move { hook(sy, "doomed", json!({"fail": true, "tag": round})).await })
    })
    .await;
    assert_each_once_newest_first("source dead letters", &before, &paged);
    assert_eq!(paged.len(), 60);

    // Objects, by key: changed ones stay in place, and new ones before the
    // cursor are not met.
    let objects = |collection: &str, n: usize, tag: String| json!({"objects": n, "collection": collection, "tag": tag});
    hook(sy, "pager", objects("c", 120, "v0".into())).await;
    let path = "/api/v1/sources/pager/objects";
    let before = at_least(sy, path, 120).await;
    let key = |o: &Value| (o["collection"].clone(), o["id"].clone());
    let before: Vec<_> = before.iter().map(key).collect();
    let paged = page_through(sy, path, 50, |round| {
        Box::pin(async move {
            hook(sy, "pager", objects("c", 120, format!("v{}", round + 1))).await;
            hook(sy, "pager", objects("a", round + 1, "new".into())).await;
        })
    })
    .await;
    let paged: Vec<_> = paged.iter().map(key).collect();
    assert_eq!(paged, before, "in key order, each once");

    // Bad cursors and empty pages are refused by name.
    let before_lists = [
        "/api/v1/sources/web/events",
        "/api/v1/sources/web/rejections",
        "/api/v1/sources/pager/logs",
        "/api/v1/destinations/echo/logs",
        "/api/v1/sources/doomed/deadletters",
        "/api/v1/destinations/echo/attempts",
    ];
    let mut refused = vec![
        ("/api/v1/sources/pager/objects?after=bm90IGEga2V5", "after"),
        ("/api/v1/sources/pager/objects?after=%22%22", "after"),
        ("/api/v1/sources/pager/objects?before=3", "before"),
        ("/api/v1/sources/pager/objects?limit=0", "limit"),
        ("/api/v1/destinations/echo/deadletters?after=x", "after"),
        ("/api/v1/destinations/echo/deadletters?before=3", "before"),
        ("/api/v1/destinations/echo/deadletters?limit=0", "limit"),
        ("/api/v1/sources/pager/logs?outcome=delivered", "outcome"),
        ("/api/v1/sources/web/rejections?collection=c", "collection"),
    ];
    let owned: Vec<(String, &str)> = before_lists
        .iter()
        .flat_map(|p| {
            [
                (format!("{p}?before=x"), "before"),
                (format!("{p}?before=1.5"), "before"),
                (format!("{p}?after=3"), "after"),
                (format!("{p}?limit=0"), "limit"),
            ]
        })
        .collect();
    refused.extend(owned.iter().map(|(p, f)| (p.as_str(), *f)));
    for (path, field) in refused {
        let (s, b) = sy.admin("GET", path, None).await;
        assert_eq!(
            (s, b["error"]["code"].as_str(), b["error"]["field"].as_str()),
            (400, Some("invalid_query"), Some(field)),
            "{path}: {b}"
        );
    }
}

/// The live log stream follows the lines by id: equal lines written in one
/// millisecond are each sent, once.
#[tokio::test]
async fn the_log_stream_sends_each_of_equal_lines() {
    let sy = &Switchyard::start(&paging_config());
    let mut resp = http_client()
        .get(format!("{}/api/v1/sources/pager/logs/stream", sy.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    hook(sy, "pager", json!({"lines": 5, "same": true, "tag": "x"})).await;
    let mut seen = String::new();
    let read = async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.matches("same x").count() >= 5 {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap_or_else(|_| panic!("five lines on the stream: {seen}"));
    // Another line, to learn that none of the five came twice meanwhile.
    hook(sy, "pager", json!({"lines": 1, "tag": "end"})).await;
    let read = async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("line end 0") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap_or_else(|_| panic!("the last line on the stream: {seen}"));
    let ids: Vec<i64> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| {
            serde_json::from_str::<Value>(d.trim()).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(seen.matches("same x").count(), 5, "{seen}");
    assert_eq!(ids.len(), 6, "{seen}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

#[tokio::test]
async fn a_connected_tail_does_not_hold_up_a_graceful_shutdown() {
    let rx = Receiver::start("s3cret");
    let mut sy = Switchyard::start(&config(&rx));
    let mut tail = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["tail", "web"])
        .env("SWITCHYARD_SERVER", &sy.base)
        .env("SWITCHYARD_TOKEN", ADMIN_TOKEN)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sy.terminate(), "SIGTERM exits while a live stream is open");
    let _ = tail.kill();
    let _ = tail.wait();
}

#[tokio::test]
async fn a_function_source_is_read_and_changed() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let (s, src) = sy.admin("GET", "/api/v1/sources/stigg", None).await;
    assert_eq!(s, 200, "{src}");
    assert_eq!(
        (src["kind"].as_str(), src["token"].as_str()),
        (Some("function"), Some("********"))
    );
    assert_eq!(src["function"]["capture"], "always");
    let (s, b) = sy
        .admin(
            "PATCH",
            "/api/v1/sources/stigg",
            Some(json!({"capture": "window"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (_, src) = sy.admin("GET", "/api/v1/sources/stigg", None).await;
    assert_eq!(src["function"]["capture"], "window");
    // Settings are merged as PATCH merges: the mask keeps a stored value,
    // null removes one, and an unknown masked setting is refused.
    let digest = |src: &Value| src["function"]["digest"].clone();
    let before = digest(&src);
    let (s, b) = sy
        .admin(
            "PATCH",
            "/api/v1/sources/stigg",
            Some(json!({"settings": {"prefix": "********"}})),
        )
        .await;
    assert_eq!(
        (s, &b["error"]["field"]),
        (400, &json!("settings.prefix")),
        "{b}"
    );
    let (s, b) = sy
        .admin(
            "PATCH",
            "/api/v1/sources/stigg",
            Some(json!({"settings": {}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (_, src) = sy.admin("GET", "/api/v1/sources/stigg", None).await;
    assert_eq!(digest(&src), before, "an empty change keeps every setting");
    let (s, _) = sy
        .admin(
            "PATCH",
            "/api/v1/sources/stigg",
            Some(json!({"respond": "later"})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = sy
        .admin(
            "PATCH",
            "/api/v1/sources/web",
            Some(json!({"respond": "ack"})),
        )
        .await;
    assert_eq!(s, 400, "a tracking source has no function");
    let (s, _) = sy.admin("GET", "/api/v1/sources/nope", None).await;
    assert_eq!(s, 404);
    // Still working after the change.
    let (s, _) = sy
        .post_with(
            "/functions/stigg/tok_stigg",
            None,
            br#"{"type":"a.b","customer":{"id":"c"}}"#.to_vec(),
            &[],
        )
        .await;
    assert_eq!(s, 200);
    rx.wait_delivered("hook", 1, 30).await;
}

/// `switchyard apply` deploys functions too: a changed file becomes a new
/// version running where the function runs, new functions, function sources
/// and function destinations are created and a changed function source is
/// changed, in an order that lets each find what it needs; applied twice, it
/// has nothing left to do.
#[tokio::test]
async fn apply_deploys_function_code_function_sources_and_destinations() {
    let rx = Receiver::start("s3cret");
    let start = format!("[server]\nfetch_allow = [\"127.0.0.1\"]\n{}", config(&rx));
    let sy = Switchyard::start(&start);
    let dir = TempDir::new("apply-functions");
    let file = dir.0.join("next.toml");
    // Relative paths are read from the file's directory.
    std::fs::copy(fixture("forwarder.js"), dir.0.join("forwarder.js")).unwrap();
    let next = start
        .replace(&fixture("stigg.js"), &fixture("stigg_v2.js"))
        .replace(
            r#"sources = ["web", "stigg"]"#,
            r#"sources = ["web", "stigg", "stigg2"]"#,
        )
        .replace(
            "token = \"tok_stigg\"\n",
            "token = \"tok_stigg\"\ncapture = \"window\"\n",
        )
        + &format!(
            r#"
[[sources]]
slug = "stigg2"
kind = "function"
function = "stigg"
token = "tok_stigg2"

[[sources]]
slug = "verified"
kind = "function"
function = "verify"
token = "tok_verified"
settings = {{ signingSecret = "first" }}

[[functions]]
name = "verify"
kind = "source"
file = "{verify}"
settings = [{{ name = "signingSecret", required = true, encrypted = true }}]

[[functions]]
name = "fwd"
kind = "destination"
file = "forwarder.js"
settings = [{{ name = "url", required = true }}, {{ name = "secret", encrypted = true }}]

[[destinations]]
name = "forward"
kind = "function"
function = "fwd"
sources = ["web"]
settings = {{ url = "{}", secret = "fw" }}
"#,
            rx.url("fwd"),
            verify = fixture("verify.js"),
        );
    let apply = |extra: &[&str]| apply_file(&sy, &file, extra);
    // Code that does not load is named with its file, dry run or not.
    std::fs::write(dir.0.join("forwarder.js"), "async function onTrack(e) {").unwrap();
    std::fs::write(&file, &next).unwrap();
    let (code, out) = apply(&["--dry-run"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("forwarder.js") && out.contains("SyntaxError"),
        "{out}"
    );
    std::fs::copy(fixture("forwarder.js"), dir.0.join("forwarder.js")).unwrap();
    let (code, plan) = apply(&["--dry-run"]);
    assert_eq!(code, 0, "{plan}");
    for step in [
        "~ change function stigg",
        "+ create function fwd",
        "+ create source stigg2",
        "~ change source stigg",
        "~ change destination hook",
        "+ create destination forward",
    ] {
        assert!(plan.contains(step), "{step}: {plan}");
    }
    let webhook = br#"{"type":"subscription.created","customer":{"id":"c1"},"plan":"pro"}"#;
    let (s, _) = sy
        .post_with("/functions/stigg2/tok_stigg2", None, webhook.to_vec(), &[])
        .await;
    assert!(s == 401 || s == 404, "a dry run creates nothing: {s}");

    let (code, out) = apply(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("applied"), "{out}");
    // The running source runs version 2 now, and so does the new one.
    for (path, user) in [
        ("/functions/stigg/tok_stigg", "c1"),
        ("/functions/stigg2/tok_stigg2", "c2"),
    ] {
        let webhook = format!(
            r#"{{"type":"subscription.created","customer":{{"id":"{user}"}},"plan":"pro"}}"#
        );
        let (s, b) = sy.post_with(path, None, webhook.into_bytes(), &[]).await;
        assert_eq!(s, 200, "{path}: {b}");
    }
    let hook = rx.wait_delivered("hook", 2, 30).await;
    for record in &hook {
        let event = body(record);
        assert_eq!(event["properties"]["version"], 2, "{event}");
    }
    let (_, source) = sy.admin("GET", "/api/v1/sources/stigg", None).await;
    assert_eq!(source["function"]["capture"], "window", "{source}");
    // The new function destination forwards the tracking source's events.
    let (s, _) = sy
        .post(
            "/v1/track",
            "wk_web",
            r#"{"userId":"u","event":"E","messageId":"fwd-1"}"#,
        )
        .await;
    assert_eq!(s, 200);
    let forwarded = rx.wait_delivered("fwd", 1, 30).await;
    assert_eq!(message_id(&forwarded[0]), "fwd-1");

    let (code, plan) = apply(&["--dry-run"]);
    assert_eq!(code, 0, "{plan}");
    assert!(plan.contains("no changes"), "idempotent: {plan}");

    // A changed setting (never shown by the API) is seen by its digest.
    std::fs::write(&file, next.replace("\"first\"", "\"second\"")).unwrap();
    let (code, plan) = apply(&[]);
    assert_eq!(code, 0, "{plan}");
    assert!(plan.contains("~ change source verified"), "{plan}");
    assert!(!plan.contains("change source stigg"), "{plan}");
    let (code, plan) = apply(&["--dry-run"]);
    assert_eq!(code, 0, "{plan}");
    assert!(plan.contains("no changes"), "idempotent: {plan}");
}

#[tokio::test]
async fn every_error_is_json_and_a_revoked_token_loses_its_open_streams() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let admin = format!("Bearer {ADMIN_TOKEN}");
    for (method, path, body, status, code, field) in [
        (
            "get",
            "/api/v1/destinations/hook/attempts?limit=-1",
            "{}",
            400,
            "invalid_query",
            Some("limit"),
        ),
        (
            "get",
            "/api/v1/destinations/hook/attempts?cursor=abc",
            "{}",
            400,
            "invalid_query",
            Some("cursor"),
        ),
        (
            "get",
            "/api/v1/sources/web/events?limit=x",
            "{}",
            400,
            "invalid_query",
            Some("limit"),
        ),
        ("delete", "/api/v1/tokens/abc", "{}", 404, "not_found", None),
        (
            "get",
            "/api/v1/destinations/hook/attempts?limit=1001",
            "{}",
            400,
            "invalid_query",
            Some("limit"),
        ),
        (
            "get",
            "/api/v1/sources/web/rejections?before=-5",
            "{}",
            400,
            "invalid_query",
            Some("before"),
        ),
        (
            "get",
            "/api/v1/sources/stigg/captures?limit=1",
            "{}",
            400,
            "invalid_query",
            None,
        ),
        (
            "post",
            "/api/v1/sources",
            r#"{"slug": "t2", "settings": {"a": 1}}"#,
            400,
            "invalid_body",
            Some("settings"),
        ),
        (
            "post",
            "/api/v1/sources",
            r#"{"slug": "t3", "capture": "window"}"#,
            400,
            "invalid_body",
            Some("capture"),
        ),
        (
            "post",
            "/api/v1/sources",
            r#"{"slug": "f2", "kind": "function", "function": "x", "write_key": "wk_f2"}"#,
            400,
            "invalid_body",
            Some("write_key"),
        ),
        (
            "patch",
            "/api/v1/tokens",
            "{}",
            405,
            "method_not_allowed",
            None,
        ),
        (
            "post",
            "/api/v1/tokens",
            r#"{"name": "t", "bogus": 1}"#,
            400,
            "invalid_body",
            Some("bogus"),
        ),
        (
            "post",
            "/api/v1/tokens",
            r#"{"name": 5}"#,
            400,
            "invalid_body",
            Some("name"),
        ),
        (
            "get",
            "/api/v1/sources/no-such-source/logs",
            "{}",
            404,
            "not_found",
            None,
        ),
        (
            "get",
            "/api/v1/sources/web/events?limit=0",
            "{}",
            400,
            "invalid_query",
            Some("limit"),
        ),
        (
            "post",
            "/api/v1/destinations/hook/deadletters/replay",
            r#"{"ids": [1], "since_ms": 0}"#,
            400,
            "invalid_body",
            Some("ids"),
        ),
    ] {
        let (s, b) = call_with(&sy, method, path, Some(&admin), body).await;
        assert_eq!(
            (s, b["error"]["code"].as_str(), b["error"]["field"].as_str()),
            (status, Some(code), field),
            "{method} {path}: {b}"
        );
    }
    // An optional body may be empty whatever its Content-Type, and one sent
    // as a form (curl -d) is still read as the JSON it is, not ignored.
    let raw = |path: &str, content_type: &str, body: &'static str| {
        http_client()
            .post(format!("{}{path}", sy.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let resp = raw("/api/v1/sources/stigg/rotate", "application/json", "")
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = raw(
        "/api/v1/destinations/hook/deadletters/replay",
        "application/x-www-form-urlencoded",
        r#"{"ids": [999999]}"#,
    )
    .await
    .unwrap();
    let answer: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(answer["replayed"], 0, "only the id named: {answer}");
    // The scheme is read in any case.
    let (s, _) = call(
        &sy,
        "get",
        "/api/v1/sources",
        Some(&format!("bearer {ADMIN_TOKEN}")),
    )
    .await;
    assert_eq!(s, 200);

    let (_, made) = sy
        .admin("POST", "/api/v1/tokens", Some(json!({"name": "watcher"})))
        .await;
    let token = made["token"].as_str().unwrap().to_string();
    let mut stream = http_client()
        .get(format!("{}/api/v1/sources/web/events/stream", sy.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let (s, _) = sy
        .admin("DELETE", &format!("/api/v1/tokens/{}", made["id"]), None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = sy
        .post(
            "/v1/track",
            "wk_web",
            r#"{"userId":"u","event":"After revocation"}"#,
        )
        .await;
    assert_eq!(s, 200);
    let mut seen = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(chunk)) = stream.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ends: {seen}");
    assert!(!seen.contains("After revocation"), "{seen}");

    // A stream of a source that is deleted ends too, even with nothing sent.
    let (s, _) = sy
        .admin("POST", "/api/v1/sources", Some(json!({"slug": "brief"})))
        .await;
    assert_eq!(s, 201);
    let mut stream = http_client()
        .get(format!("{}/api/v1/sources/brief/events/stream", sy.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let (s, _) = sy.admin("DELETE", "/api/v1/sources/brief", None).await;
    assert_eq!(s, 200);
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream of a deleted source ends");
}

#[tokio::test]
async fn a_destination_keeps_a_deleted_source_and_delivers_its_stored_events() {
    let rx = Receiver::start("s3cret");
    let mut sy = Switchyard::start(&config(&rx));
    let (s, b) = sy
        .admin(
            "POST",
            "/api/v1/sources",
            Some(json!({"slug": "old", "write_key": "wk_old"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let destination = json!({"name": "d", "kind": "webhooks", "sources": ["old"], "urls": [rx.url("d")], "shared_secret": "s3cret", "enabled": false});
    let (s, b) = sy
        .admin("POST", "/api/v1/destinations", Some(destination.clone()))
        .await;
    assert_eq!(s, 201, "{b}");
    for i in 0..3 {
        let (s, _) = sy
            .post(
                "/v1/track",
                "wk_old",
                &json!({"userId": "u", "event": "E", "messageId": format!("o{i}")}).to_string(),
            )
            .await;
        assert_eq!(s, 200);
    }
    let (s, _) = sy.admin("DELETE", "/api/v1/sources/old", None).await;
    assert_eq!(s, 200);
    // A source made next gets an id of its own: none of the deleted one's
    // events pass for its.
    let (s, _) = sy
        .admin("POST", "/api/v1/sources", Some(json!({"slug": "newer"})))
        .await;
    assert_eq!(s, 201);
    let (_, events) = sy.admin("GET", "/api/v1/sources/newer/events", None).await;
    assert_eq!(events["data"], json!([]), "{events}");
    // Its slug taken again: the destination naming it gets the deleted
    // source's events and the new one's; the new source shows only its own.
    let (s, _) = sy
        .admin(
            "POST",
            "/api/v1/sources",
            Some(json!({"slug": "old", "write_key": "wk_old_again"})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = sy
        .post(
            "/v1/track",
            "wk_old_again",
            &json!({"userId": "u", "event": "E", "messageId": "again"}).to_string(),
        )
        .await;
    assert_eq!(s, 200);
    let (_, events) = sy.admin("GET", "/api/v1/sources/old/events", None).await;
    assert_eq!(events["data"].as_array().map(Vec::len), Some(1), "{events}");
    // And the deleted source's events outlive a restart.
    sy.restart();
    // Switched on again, still naming the deleted source: its events go out.
    let mut enabled = destination;
    enabled["enabled"] = json!(true);
    let (s, b) = sy
        .admin("PUT", "/api/v1/destinations/d", Some(enabled))
        .await;
    assert_eq!(s, 200, "{b}");
    let got = rx.wait_delivered("d", 4, 30).await;
    assert_eq!(got.len(), 4);
    // A source it never named is still refused.
    let (s, _) = sy
        .admin(
            "PUT",
            "/api/v1/destinations/d",
            Some(json!({"sources": ["old", "gone"], "urls": [rx.url("d")]})),
        )
        .await;
    assert_eq!(s, 400);
}

/// The CLI with no `SWITCHYARD_SERVER` or `SWITCHYARD_TOKEN` in its
/// environment, unless `env` sets them: exit code and stdout + stderr.
fn cli_env(env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env_remove("SWITCHYARD_SERVER")
        .env_remove("SWITCHYARD_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `--server` and `--token` are global: they go before the subcommand or
/// after it, and still come from the environment when not given. The
/// commands that call no server keep them out of their help and refuse
/// them: `serve --token` would read as the server's own token, which is
/// `--admin-token`.
#[tokio::test]
async fn the_connection_options_go_before_or_after_the_subcommand() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let base = sy.base.as_str();
    for args in [
        vec!["--server", base, "--token", ADMIN_TOKEN, "sources", "list"],
        vec!["sources", "list", "--server", base, "--token", ADMIN_TOKEN],
        vec!["--token", ADMIN_TOKEN, "sources", "--server", base, "list"],
        vec![
            "--server",
            base,
            "--token",
            ADMIN_TOKEN,
            "functions",
            "list",
        ],
        vec![
            "--server",
            base,
            "destinations",
            "list",
            "--token",
            ADMIN_TOKEN,
        ],
    ] {
        let (code, out) = cli_env(&[], &args);
        assert_eq!(code, 0, "{args:?}: {out}");
        assert!(
            out.contains("stigg") || out.contains("hook"),
            "{args:?}: {out}"
        );
    }
    // The environment, and a flag before the subcommand over it.
    let (code, out) = cli_env(
        &[
            ("SWITCHYARD_SERVER", base),
            ("SWITCHYARD_TOKEN", ADMIN_TOKEN),
        ],
        &["sources", "list"],
    );
    assert!(code == 0 && out.contains("web"), "{out}");
    let (code, out) = cli_env(
        &[
            ("SWITCHYARD_SERVER", "http://127.0.0.1:9"),
            ("SWITCHYARD_TOKEN", "wrong"),
        ],
        &["--server", base, "--token", ADMIN_TOKEN, "sources", "list"],
    );
    assert!(code == 0 && out.contains("web"), "{out}");
    let (code, out) = cli_env(&[("SWITCHYARD_SERVER", base)], &["sources", "list"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--token or SWITCHYARD_TOKEN"), "{out}");

    // Help: the top level and every command that calls a server show them.
    for args in [
        vec!["--help"],
        vec!["sources", "list", "--help"],
        vec!["sources", "create", "--help"],
        vec!["functions", "create", "--help"],
        vec!["destinations", "create", "--help"],
        vec!["deadletters", "replay", "--help"],
        vec!["logs", "--help"],
        vec!["tail", "--help"],
        vec!["delete-user", "--help"],
        vec!["apply", "--help"],
    ] {
        let (code, out) = cli_env(&[], &args);
        assert_eq!(code, 0, "{args:?}: {out}");
        assert!(
            out.contains("--server <SERVER>") && out.contains("--token <TOKEN>"),
            "{args:?}: {out}"
        );
    }
    for args in [
        vec!["serve", "--help"],
        vec!["bench", "--help"],
        vec!["completions", "--help"],
        vec!["functions", "test", "--help"],
    ] {
        let (code, out) = cli_env(&[], &args);
        assert_eq!(code, 0, "{args:?}: {out}");
        assert!(
            !out.contains("--server") && !out.contains("--token"),
            "{args:?}: {out}"
        );
    }
    let (_, serve_help) = cli_env(&[], &["serve", "--help"]);
    assert!(serve_help.contains("--admin-token"), "{serve_help}");
    // Refused where nothing calls a server, before or after the subcommand;
    // their environment variables are not (a shell may set them for all).
    for args in [vec!["serve", "--token", "t"], vec!["--token", "t", "serve"]] {
        let (code, out) = cli_env(&[], &args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(out.contains("--admin-token"), "{args:?}: {out}");
    }
    let (code, out) = cli_env(&[], &["--server", base, "serve"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--listen"), "{out}");
    let stigg = fixture("stigg.js");
    let (code, out) = cli_env(
        &[],
        &[
            "functions",
            "test",
            &stigg,
            "--payload",
            &stigg,
            "--server",
            base,
        ],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("calls no running server"), "{out}");
    let (code, out) = cli_env(
        &[("SWITCHYARD_SERVER", base), ("SWITCHYARD_TOKEN", "t")],
        &["completions", "bash"],
    );
    assert!(code == 0 && out.contains("switchyard"), "{out}");
}

/// `functions create` and `functions update` say what they did in a line, as
/// the other commands do; `--json` gives the API's answer.
#[tokio::test]
async fn functions_create_and_update_print_a_summary_or_the_json() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let stigg = fixture("stigg.js");
    let v2 = fixture("stigg_v2.js");
    let (code, out) = cli(
        &sy,
        &[
            "functions",
            "create",
            "relay",
            "--kind",
            "source",
            "--file",
            &stigg,
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        "function relay created: a source function, version 1, not deployed (`switchyard functions deploy relay`)"
    );
    let (code, out) = cli(
        &sy,
        &[
            "functions",
            "create",
            "relay2",
            "--kind",
            "source",
            "--file",
            &stigg,
            "--deploy",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        "function relay2 created: a source function, version 1, deployed"
    );
    // A function never deployed has no deployed version: `-`, and the
    // JSON keeps the API's number.
    let (code, out) = cli(&sy, &["functions", "list"]);
    assert_eq!(code, 0, "{out}");
    let row = |name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name}: {out}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row("relay"), ["relay", "source", "-", "1"], "{out}");
    assert_eq!(row("relay2"), ["relay2", "source", "1", "1"], "{out}");
    let (code, out) = cli(&sy, &["functions", "list", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let relay = v["data"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["name"] == "relay"))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(relay["deployed_version"], 0, "{out}");
    let (code, out) = cli(&sy, &["functions", "update", "stigg", "--file", &v2]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        "function stigg: version 2 saved; not deployed: version 1 still runs (`switchyard functions deploy stigg`)"
    );
    let (code, out) = cli(
        &sy,
        &["functions", "update", "stigg", "--file", &stigg, "--deploy"],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        "function stigg: version 3 saved; deployed, running on source(s) stigg"
    );
    // The same file again is no new version, and the line says so.
    let (code, out) = cli(&sy, &["functions", "update", "stigg", "--file", &stigg]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        "function stigg: the file is version 3 already, nothing saved; it is the version deployed"
    );
    let (code, out) = cli(
        &sy,
        &["functions", "update", "stigg", "--file", &stigg, "--deploy"],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        "function stigg: the file is version 3 already, nothing saved; deployed, running on source(s) stigg"
    );
    let (code, out) = cli(
        &sy,
        &["functions", "update", "relay", "--file", &v2, "--deploy"],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        "function relay: version 2 saved; deployed, nothing runs it yet"
    );
    // --json: the API's answer, as it was.
    let (code, out) = cli(
        &sy,
        &[
            "functions",
            "update",
            "stigg",
            "--file",
            &v2,
            "--deploy",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let answer: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(answer["version"], 4, "{answer}");
    assert_eq!(answer["function"]["deployed_version"], 4, "{answer}");
    assert_eq!(
        answer["deployed_to"]["sources"],
        json!(["stigg"]),
        "{answer}"
    );
    let (code, out) = cli(
        &sy,
        &[
            "functions",
            "create",
            "relay3",
            "--kind",
            "source",
            "--file",
            &stigg,
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let answer: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        (&answer["version"], &answer["function"]["name"]),
        (&json!(1), &json!("relay3"))
    );
    // A refusal is still the server's message, exit code 1.
    let (code, out) = cli(&sy, &["functions", "update", "nope", "--file", &stigg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unknown function"), "{out}");
}

/// The webhook catcher from the CLI: `sources create --capture window` makes
/// a source that keeps requests only while a window is open, `sources
/// capture-window` opens one, and `sources update --capture` switches
/// between that and always capturing.
#[tokio::test]
async fn sources_create_and_update_set_the_webhook_catcher() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let (code, out) = cli(
        &sy,
        &[
            "sources",
            "create",
            "hooks",
            "--function",
            "stigg",
            "--capture",
            "window",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "only while a capture window is open: `switchyard sources capture-window hooks`"
        ),
        "{out}"
    );
    let url = out
        .lines()
        .find_map(|l| l.strip_prefix("webhook URL: "))
        .unwrap_or_else(|| panic!("{out}"))
        .trim()
        .to_string();
    let mode = || async {
        let (s, src) = sy.admin("GET", "/api/v1/sources/hooks", None).await;
        assert_eq!(s, 200, "{src}");
        src["function"]["capture"].clone()
    };
    assert_eq!(mode().await, "window");
    let send = || async {
        let resp = http_client()
            .post(&url)
            .body(r#"{"type":"a.b","customer":{"id":"c"}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    };
    let captured = || {
        let (code, out) = cli(&sy, &["sources", "captures", "hooks", "--json"]);
        assert_eq!(code, 0, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        v["data"].as_array().map_or(0, Vec::len)
    };
    send().await;
    assert_eq!(captured(), 0, "no window open");
    let (code, out) = cli(
        &sy,
        &["sources", "capture-window", "hooks", "--minutes", "1"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("source hooks: capture window open until "),
        "{out}"
    );
    send().await;
    assert_eq!(captured(), 1, "the window is open");

    let (code, out) = cli(&sy, &["sources", "update", "hooks", "--capture", "always"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        "source hooks changed: function stigg, respond ack, capture always"
    );
    assert_eq!(mode().await, "always");
    let (code, out) = cli(&sy, &["sources", "update", "hooks", "--capture", "window"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(mode().await, "window");

    // Usage errors, before any call: a tracking source has no catcher, a
    // mode must be one of the two, and an update must change something.
    for args in [
        vec!["sources", "create", "plain", "--capture", "window"],
        vec![
            "sources",
            "create",
            "odd",
            "--function",
            "stigg",
            "--capture",
            "sometimes",
        ],
        vec!["sources", "update", "hooks"],
        vec!["sources", "capture-window", "hooks", "--minutes", "0"],
    ] {
        let (code, out) = cli(&sy, &args);
        assert_eq!(code, 2, "{args:?}: {out}");
    }
    for slug in ["plain", "odd"] {
        let (s, _) = sy
            .admin("GET", &format!("/api/v1/sources/{slug}"), None)
            .await;
        assert_eq!(s, 404, "{slug} was not created");
    }
    // The server's refusals: a tracking source has no function to change.
    let (code, out) = cli(&sy, &["sources", "update", "web", "--capture", "always"]);
    assert_eq!(code, 1, "{out}");
}

/// `apply --dry-run` finds a write key the file gives that a source on the
/// server already has and keeps, as the apply itself would find it (a 409),
/// but before anything is changed; with a read-only token, which may not
/// compare keys, it says it cannot tell.
#[tokio::test]
async fn apply_plans_find_write_keys_other_sources_have() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let (s, b) = sy
        .admin(
            "POST",
            "/api/v1/sources",
            Some(json!({"slug": "apisrc", "write_key": "wk_api"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let dir = TempDir::new("apply-keys");
    let file = dir.0.join("next.toml");
    // A new function comes first in the plan: a plan that stopped only at
    // the source would have created it.
    let with = |key: &str| {
        config(&rx)
            + &format!(
                "\n[[functions]]\nname = \"relay\"\nkind = \"source\"\nfile = \"{}\"\n\n[[sources]]\nslug = \"newsrc\"\nkind = \"tracking\"\nwrite_key = \"{key}\"\n",
                fixture("stigg.js")
            )
    };
    std::fs::write(&file, with("wk_api")).unwrap();
    for extra in [vec!["--dry-run"], vec![]] {
        let (code, out) = apply_file(&sy, &file, &extra);
        assert_eq!(code, 1, "{extra:?}: {out}");
        assert!(
            out.contains(
                "+ create source newsrc (its write key already belongs to source \"apisrc\")"
            ),
            "{extra:?}: {out}"
        );
        assert!(out.contains("nothing was changed"), "{out}");
        assert!(!out.contains("applied"), "{out}");
    }
    let (code, out) = apply_file(&sy, &file, &["--dry-run", "--json"]);
    assert_eq!(code, 1, "{out}");
    let plan: Value = serde_json::from_str(out.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {out}"));
    let source_step = plan["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == "newsrc"))
        .cloned()
        .unwrap_or_else(|| panic!("{plan}"));
    assert_eq!(
        source_step["note"],
        "its write key already belongs to source \"apisrc\""
    );
    assert_eq!(plan["applied"], false);
    for path in ["/api/v1/sources/newsrc", "/api/v1/functions/relay"] {
        let (s, _) = sy.admin("GET", path, None).await;
        assert_eq!(s, 404, "{path}: nothing was changed");
    }
    // A source of the file that declares no key keeps the one it has.
    std::fs::write(
        &file,
        with("wk_web").replace(
            "write_key = \"wk_web\"\n\n[[sources]]\nslug = \"stigg\"",
            "\n[[sources]]\nslug = \"stigg\"",
        ),
    )
    .unwrap();
    let (code, out) = apply_file(&sy, &file, &["--dry-run"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("already belongs to source \"web\""), "{out}");

    // A free key plans and applies; then an existing source given a taken
    // key is found too.
    std::fs::write(&file, with("wk_new")).unwrap();
    let (code, out) = apply_file(&sy, &file, &["--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("+ create source newsrc\n"), "{out}");
    let (code, out) = apply_file(&sy, &file, &[]);
    assert_eq!(code, 0, "{out}");
    std::fs::write(&file, with("wk_api")).unwrap();
    let (code, out) = apply_file(&sy, &file, &["--dry-run"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "~ change source newsrc (its write key from the file; its write key already belongs to source \"apisrc\")"
        ),
        "{out}"
    );
    // A key a source of the file gives up is free: two sources may trade.
    let swapped = with("wk_new")
        .replace("\"wk_web\"", "\"wk_swap\"")
        .replace("\"wk_new\"", "\"wk_web\"")
        .replace("\"wk_swap\"", "\"wk_new\"");
    std::fs::write(&file, &swapped).unwrap();
    let (code, out) = apply_file(&sy, &file, &["--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.matches("its write key from the file").count(),
        2,
        "{out}"
    );

    // A read-only token may not compare write keys: no claim of success.
    let viewer = read_only_token(&sy).await;
    std::fs::write(
        &file,
        "[[sources]]\nslug = \"viewed\"\nkind = \"tracking\"\nwrite_key = \"wk_viewed\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (code, out) = cli_as(
        &sy,
        &viewer,
        &["apply", "--dry-run", "--keep-unlisted", "--config", path],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("+ create source viewed ("), "{out}");
    assert!(out.contains("cannot tell whether another source"), "{out}");
    assert!(out.contains("not a read-only one"), "{out}");
    let (code, out) = apply_file(&sy, &file, &["--dry-run", "--keep-unlisted"]);
    assert_eq!(code, 0, "an admin token can tell: {out}");
}

/// Deletions page oldest first with an opaque `after`, even when several
/// are made within one millisecond (their ids are random).
#[tokio::test]
async fn deletions_page_oldest_first_with_a_cursor() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let mut made = Vec::new();
    for i in 0..5 {
        let (s, d) = sy
            .admin(
                "POST",
                "/api/v1/deletions",
                Some(json!({"userId": format!("gone-{i}")})),
            )
            .await;
        assert_eq!(s, 201, "{d}");
        made.push(d["id"].as_str().unwrap().to_string());
    }
    let mut paged = Vec::new();
    let mut path = "/api/v1/deletions?limit=2".to_string();
    for _ in 0..10 {
        let (s, page) = sy.admin("GET", &path, None).await;
        assert_eq!(s, 200, "{page}");
        for d in page["data"].as_array().unwrap() {
            paged.push(d["id"].as_str().unwrap().to_string());
        }
        match page["next_after"].as_str() {
            Some(next) => path = format!("/api/v1/deletions?limit=2&after={next}"),
            None => break,
        }
    }
    let mut expected = made.clone();
    expected.sort();
    let mut got = paged.clone();
    got.sort();
    assert_eq!(got, expected, "each deletion once: {paged:?}");
    let (_, all) = sy.admin("GET", "/api/v1/deletions", None).await;
    let all: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(all, paged, "pages in the order of the whole list");
    for (query, field) in [
        ("after=nope", "after"),
        ("before=3", "before"),
        ("limit=0", "limit"),
    ] {
        let (s, e) = sy
            .admin("GET", &format!("/api/v1/deletions?{query}"), None)
            .await;
        assert_eq!(
            (s, e["error"]["field"].as_str()),
            (400, Some(field)),
            "{query}: {e}"
        );
    }
}

/// A file in a fresh temporary directory, for the CLI to read.
fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-cli-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Output piped into `head` ends quietly once `head` has its lines: the
/// completion script (larger than a pipe's buffer) was written by
/// clap_complete, which panicked on the broken pipe.
#[test]
fn output_piped_into_head_ends_quietly() {
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let out = std::process::Command::new("bash")
        .args([
            "-c",
            &format!(
                "'{bin}' completions bash | head -1 >/dev/null; echo \"exit ${{PIPESTATUS[0]}}\""
            ),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), "exit 0", "{stdout}{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// `--server` takes a bare `HOST:PORT` as `http://`, and refuses what is
/// not a URL by name instead of the HTTP client's "relative URL without a
/// base"; `--json` is global like `--server` and `--token`, and refused by
/// the commands that print no JSON.
#[tokio::test]
async fn server_without_scheme_and_json_before_the_subcommand() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let bare = sy.base.trim_start_matches("http://");
    let token = [("SWITCHYARD_TOKEN", ADMIN_TOKEN)];
    let (code, out) = cli_env(&token, &["--server", bare, "sources", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("stigg"), "{out}");
    let (code, out) = cli_env(
        &[("SWITCHYARD_SERVER", bare), token[0]],
        &["sources", "list"],
    );
    assert_eq!(code, 0, "{out}");
    for wrong in ["ftp://127.0.0.1:8080", "127.0.0.1:8080/api", "not a url"] {
        let (code, out) = cli_env(&token, &["--server", wrong, "sources", "list"]);
        assert_eq!(code, 2, "{wrong}: {out}");
        assert!(
            out.contains("invalid value") && out.contains("--server") && out.contains("HOST:PORT"),
            "{wrong}: {out}"
        );
        assert!(!out.contains("relative URL"), "{out}");
    }

    let (code, out) = cli_env(&[("SWITCHYARD_SERVER", "ftp://x")], &["sources", "list"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("for SWITCHYARD_SERVER"), "{out}");
    let env = [("SWITCHYARD_SERVER", sy.base.as_str()), token[0]];
    // Values from the environment are not written into usage lines.
    let (code, out) = cli_env(&env, &["sources", "create"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("Usage: switchyard sources create <SLUG>"),
        "{out}"
    );
    for args in [
        vec!["--json", "sources", "list"],
        vec!["sources", "--json", "list"],
        vec!["sources", "list", "--json"],
    ] {
        let (code, out) = cli_env(&env, &args);
        assert_eq!(code, 0, "{args:?}: {out}");
        let v: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"));
        assert!(v["data"].is_array(), "{args:?}: {out}");
    }
    let (code, out) = cli_env(&env, &["--json", "functions", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(serde_json::from_str::<Value>(&out).is_ok(), "{out}");
    // `functions test` keeps its meaning: its report as one document.
    let payload = temp_file(
        "payload.json",
        r#"{"payload": {"body": {"type": "x", "customer": {"id": "c"}}}}"#,
    );
    let (code, out) = cli_env(
        &[],
        &[
            "--json",
            "functions",
            "test",
            &fixture("stigg.js"),
            "--payload",
            payload.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["events"][0]["userId"], "c", "{out}");
    for args in [
        vec!["--json", "completions", "bash"],
        vec!["completions", "bash", "--json"],
        vec!["serve", "--json"],
    ] {
        let (code, out) = cli_env(&[], &args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(out.contains("prints no JSON"), "{args:?}: {out}");
    }
    let (_, help) = cli_env(&[], &["completions", "--help"]);
    assert!(!help.contains("--json"), "{help}");
}

/// `functions deploy` says what it did in a line, as `create` and `update`
/// do; `--json` gives the API's answer. A name is one path segment, `/`
/// and all, and query values are encoded.
#[tokio::test]
async fn deploy_prints_a_line_and_names_and_queries_are_encoded() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let (code, out) = cli(&sy, &["functions", "deploy", "stigg", "--version", "1"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        "function stigg: version 1 deployed, running on source(s) stigg"
    );
    let (code, out) = cli(&sy, &["functions", "deploy", "stigg", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["deployed_version"], 1, "{out}");

    let (code, out) = cli(&sy, &["functions", "deploy", "a/b"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(r#"unknown function "a/b""#), "{out}");
    let (code, out) = cli(
        &sy,
        &["sources", "objects", "stigg", "--collection", "a b&c=d"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("COLLECTION"), "{out}");
    let (code, out) = cli(&sy, &["sources", "show", "no such/source"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(r#""no such/source""#), "{out}");
}

/// `--settings` and `--respond` are for function sources: refused without
/// `--function` instead of dropped. `sources test` exits 1 when the
/// function fails, with `--json` as without. `--settings-schema` shows
/// where its JSON is wrong.
#[tokio::test]
async fn refusals_and_exit_codes_do_not_depend_on_the_output() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    for args in [
        vec!["sources", "create", "t1", "--settings", "{}"],
        vec!["sources", "create", "t1", "--respond", "function"],
    ] {
        let (code, out) = cli(&sy, &args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(out.contains("--function <FUNCTION>"), "{args:?}: {out}");
    }
    let (s, _) = sy.admin("GET", "/api/v1/sources/t1", None).await;
    assert_eq!(s, 404, "nothing created");

    let payload = temp_file("fail.json", r#"{"payload": {"body": {"mode": "x"}}}"#);
    for json in [false, true] {
        let mut args = vec![
            "sources",
            "test",
            "stigg",
            "--payload",
            payload.to_str().unwrap(),
        ];
        let broken = fixture("broken.js");
        args.extend(["--file", &broken]);
        if json {
            args.push("--json");
        }
        let (code, out) = cli(&sy, &args);
        assert_eq!(code, 1, "--json {json}: {out}");
        assert!(out.contains("cannot handle x"), "{out}");
    }
    // The objects the function set are shown beside its messages.
    let setter = temp_file(
        "setter.js",
        "async function onRequest(request) {\n  Segment.track({ event: 'E', userId: 'u-1' });\n  Segment.set({ collection: 'accounts', id: 'u-1', properties: { plan: 'pro' } });\n}\n",
    );
    let ok = temp_file("ok.json", r#"{"payload": {"body": {}}}"#);
    let (code, out) = cli(
        &sy,
        &[
            "sources",
            "test",
            "stigg",
            "--payload",
            ok.to_str().unwrap(),
            "--file",
            setter.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("events (1):\n"), "{out}");
    assert!(
        out.contains("objects (1):\n  accounts/u-1 {\"plan\":\"pro\"}\n"),
        "{out}"
    );

    let schema = temp_file("schema.json", "[\n  {\"name\": \"apiKey\",}\n]\n");
    let (code, out) = cli(
        &sy,
        &[
            "functions",
            "create",
            "f2",
            "--kind",
            "source",
            "--file",
            &fixture("stigg.js"),
            "--settings-schema",
            schema.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("is not valid JSON") && out.contains("line 2 column"),
        "{out}"
    );
    let object = temp_file("schema.json", "{}");
    let (code, out) = cli(
        &sy,
        &[
            "functions",
            "create",
            "f2",
            "--kind",
            "source",
            "--file",
            &fixture("stigg.js"),
            "--settings-schema",
            object.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("is not a JSON array of settings"), "{out}");

    // Discarding every dead letter takes --all.
    let (code, out) = cli(&sy, &["deadletters", "discard", "--destination", "hook"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--all"), "{out}");
    let (code, out) = cli(
        &sy,
        &["deadletters", "discard", "--destination", "hook", "--all"],
    );
    assert_eq!((code, out.trim()), (0, "discarded 0"));
    let (code, out) = cli(
        &sy,
        &[
            "deadletters",
            "discard",
            "--destination",
            "hook",
            "--all",
            "--id",
            "1",
        ],
    );
    assert_eq!(code, 2, "{out}");
}

/// `sources show|delete|rotate`, `tokens list|create|revoke` and
/// `destinations enable|disable|urls enable`, with times in tables as RFC
/// 3339 and as numbers in `--json`.
#[tokio::test]
async fn sources_tokens_and_destinations_are_managed_from_the_cli() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let (code, out) = cli(&sy, &["sources", "show", "stigg"]);
    assert_eq!(code, 0, "{out}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["SLUG", "KIND", "FUNCTION", "RESPOND", "CAPTURE", "CREATED"],
        "{out}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..5],
        ["stigg", "function", "stigg", "ack", "always"],
        "{out}"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(row[5]).is_ok(),
        "{out}"
    );
    let (code, out) = cli(&sy, &["sources", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines().next().unwrap_or_default().contains("CAPTURE"),
        "{out}"
    );
    let stigg = out
        .lines()
        .find(|l| l.starts_with("stigg"))
        .unwrap_or_default();
    assert!(stigg.contains("always"), "{out}");
    let (code, out) = cli(&sy, &["sources", "list", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(v["data"][0]["created_ms"].is_i64(), "{out}");

    // Rotation: a generated key, a given one, a dry run.
    let (code, out) = cli(&sy, &["sources", "rotate", "web"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("source web: new write key wk_"), "{out}");
    let (code, out) = cli(
        &sy,
        &[
            "sources",
            "rotate",
            "web",
            "--write-key",
            "wk_given",
            "--dry-run",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("differs"), "{out}");
    let (code, out) = cli(
        &sy,
        &["sources", "rotate", "web", "--write-key", "wk_given"],
    );
    assert_eq!(code, 0, "{out}");
    let (s, _) = sy
        .post("/v1/track", "wk_given", r#"{"userId": "u", "event": "E"}"#)
        .await;
    assert_eq!(s, 200, "{out}");
    let (code, out) = cli(&sy, &["sources", "rotate", "web", "--dry-run"]);
    assert_eq!(code, 2, "a dry run compares a given key: {out}");
    let (code, out) = cli(&sy, &["sources", "rotate", "stigg"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("new token tok_") && out.contains("webhook URL: "),
        "{out}"
    );

    let (code, out) = cli(&sy, &["sources", "create", "gone"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&sy, &["sources", "delete", "gone"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("source gone deleted"), "{out}");
    let (code, _) = cli(&sy, &["sources", "show", "gone"]);
    assert_eq!(code, 1);

    // Tokens.
    let (code, out) = cli(&sy, &["tokens", "create", "ci", "--read-only"]);
    assert_eq!(code, 0, "{out}");
    let token = out
        .split_whitespace()
        .find(|w| w.starts_with("syr_"))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let (code, out) = cli_as(&sy, &token, &["tokens", "list"]);
    assert_eq!(code, 0, "{out}");
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["ID", "NAME", "READ_ONLY", "CREATED"], "{out}");
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(&row[1..3], ["ci", "true"], "{out}");
    let id = row[0].to_string();
    let (code, out) = cli(&sy, &["tokens", "revoke", &id]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("token {id} revoked").as_str())
    );
    let (code, _) = cli_as(&sy, &token, &["tokens", "list"]);
    assert_eq!(code, 1, "revoked");

    // Destinations: disabled and enabled again, keeping their place.
    let (code, out) = cli(&sy, &["destinations", "disable", "hook"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("destination hook disabled"), "{out}");
    let (_, d) = sy.admin("GET", "/api/v1/destinations/hook", None).await;
    assert_eq!(d["config"]["enabled"], false, "{d}");
    assert_eq!(
        d["config"]["shared_secret"], "********",
        "the secret is kept: {d}"
    );
    let (code, out) = cli(&sy, &["destinations", "disable", "hook"]);
    assert_eq!(
        (code, out.trim()),
        (0, "destination hook is disabled already")
    );
    // A PATCH of `enabled` alone: the answer says whether it changed.
    let (code, out) = cli(&sy, &["destinations", "enable", "hook", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        (&v["changed"], &v["enabled"]),
        (&json!(true), &json!(true)),
        "{out}"
    );
    let (_, d) = sy.admin("GET", "/api/v1/destinations/hook", None).await;
    assert_eq!(d["config"]["enabled"], true, "{d}");
    let (code, out) = cli(&sy, &["destinations", "enable", "hook"]);
    assert_eq!(
        (code, out.trim()),
        (0, "destination hook is enabled already")
    );
    let (code, out) = cli(&sy, &["destinations", "urls", "enable", "hook"]);
    assert_eq!(
        (code, out.trim()),
        (0, "destination hook: its URLs enabled")
    );
    let (code, out) = cli(&sy, &["destinations", "enable", "nope"]);
    assert_eq!(code, 1, "{out}");
}

/// `functions logs --follow --json` prints each line as one JSON object,
/// its time as the API's number, and every line written while it follows
/// exactly once, in order (alike lines of one millisecond included).
#[tokio::test]
async fn followed_logs_print_json_lines() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    async fn run(sy: &Switchyard) {
        let (s, _) = sy
            .post_with(
                "/functions/stigg/tok_stigg",
                None,
                br#"{"customer":{"id":"c"},"type":null}"#.to_vec(),
                &[],
            )
            .await;
        assert_eq!(s, 200);
    }
    async fn logged(sy: &Switchyard, n: usize) -> Vec<i64> {
        for _ in 0..300 {
            let (_, v) = sy
                .admin("GET", "/api/v1/sources/stigg/logs?limit=1000", None)
                .await;
            let ids: Vec<i64> = v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["id"].as_i64().unwrap())
                .collect();
            if ids.len() >= n {
                return ids;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("fewer than {n} log lines");
    }
    run(&sy).await;
    let per_run = logged(&sy, 1).await.len();
    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "functions",
            "logs",
            "--source",
            "stigg",
            "--follow",
            "--json",
        ])
        .env("SWITCHYARD_SERVER", &sy.base)
        .env("SWITCHYARD_TOKEN", ADMIN_TOKEN)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, mut printed) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    for _ in 0..3 {
        run(&sy).await;
    }
    let mut expected = logged(&sy, 4 * per_run).await;
    expected.sort();
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let line = tokio::time::timeout(Duration::from_secs(30), printed.recv())
            .await
            .expect("the follower prints every line")
            .expect("the follower is running");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["at_ms"].is_i64() && v["message"].is_string(), "{line}");
        seen.push(v["id"].as_i64().unwrap());
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(seen, expected, "each line once, oldest first");
}

/// `sources create` and `sources rotate` take the write key or token to set
/// (`--write-key`, `--source-token`: `--token` is the CLI's API token).
#[tokio::test]
async fn the_cli_sets_given_write_keys_and_source_tokens() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let (code, out) = cli(
        &sy,
        &["sources", "create", "app", "--write-key", "wk_app_given"],
    );
    assert_eq!(code, 0, "{out}");
    let (s, _) = sy
        .post(
            "/v1/track",
            "wk_app_given",
            &json!({"userId": "u", "event": "E"}).to_string(),
        )
        .await;
    assert_eq!(s, 200, "the given write key works");
    let (code, out) = cli(
        &sy,
        &[
            "sources",
            "create",
            "hooks",
            "--function",
            "stigg",
            "--source-token",
            "tok_hooks_given",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let hook = |token: &'static str| {
        let sy = &sy;
        async move {
            sy.post_with(
                &format!("/functions/hooks/{token}"),
                None,
                b"{}".to_vec(),
                &[],
            )
            .await
            .0
        }
    };
    assert_eq!(hook("tok_hooks_given").await, 200);
    let (code, out) = cli(
        &sy,
        &[
            "sources",
            "rotate",
            "hooks",
            "--source-token",
            "tok_hooks_given",
            "--dry-run",
        ],
    );
    assert_eq!(
        (code, out.trim()),
        (
            0,
            "source hooks: the token given is its own already; nothing changed"
        )
    );
    let (code, out) = cli(
        &sy,
        &[
            "sources",
            "rotate",
            "hooks",
            "--source-token",
            "tok_hooks_next",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("token set to the one given"), "{out}");
    assert_eq!(hook("tok_hooks_given").await, 401, "the old token stops");
    assert_eq!(hook("tok_hooks_next").await, 200);
    // Each flag belongs to its kind of source, and a dry run needs a value.
    let (code, _) = cli(&sy, &["sources", "create", "x", "--source-token", "t"]);
    assert_eq!(code, 2);
    let (code, _) = cli(
        &sy,
        &[
            "sources",
            "create",
            "y",
            "--function",
            "stigg",
            "--write-key",
            "k",
        ],
    );
    assert_eq!(code, 2);
    let (code, _) = cli(&sy, &["sources", "rotate", "hooks", "--dry-run"]);
    assert_eq!(code, 2);
}

/// The CLI's lists take a page size and a cursor, and a full page says how
/// to get the next one.
#[tokio::test]
async fn cli_lists_page_and_say_where_the_next_page_starts() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let batch = json!({"batch": [
        {"type": "track", "userId": "u", "event": "ok"},
        {"type": "track", "userId": "u"},
        {"type": "track", "event": "no user"},
        {"type": "identify"},
    ]});
    let (s, b) = sy.post("/v1/batch", "wk_web", &batch.to_string()).await;
    assert_eq!(s, 200, "{b}");
    let (code, out) = cli(&sy, &["sources", "rejections", "web", "-n", "2"]);
    assert_eq!(code, 0, "{out}");
    let more = out
        .lines()
        .find_map(|l| l.strip_prefix("more: --before "))
        .unwrap_or_else(|| panic!("a full page says where the next starts: {out}"))
        .trim()
        .to_string();
    let (code, out) = cli(
        &sy,
        &["sources", "rejections", "web", "-n", "2", "--before", &more],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines().count(),
        2,
        "a header and the last rejection: {out}"
    );
    assert!(!out.contains("more:"), "{out}");
    let (code, out) = cli(&sy, &["sources", "rejections", "web", "-n", "1001"]);
    assert_eq!(code, 1, "the server refuses a page above 1000: {out}");

    // Delivery attempts, newest first: the batch's one valid event and two more.
    for id in ["a1", "a2"] {
        let (s, b) = sy
            .post(
                "/v1/track",
                "wk_web",
                &json!({"userId": "u", "event": "E", "messageId": id}).to_string(),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }
    rx.wait_delivered("hook", 3, 30).await;
    // An attempt is recorded once its answer is in: after the receiver's log.
    at_least(&sy, "/api/v1/destinations/hook/attempts", 3).await;
    let (code, out) = cli(&sy, &["destinations", "attempts", "hook", "-n", "2"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 4, "a header, 2 rows, the hint: {out}");
    let more = out
        .lines()
        .find_map(|l| l.strip_prefix("more: --before "))
        .unwrap_or_else(|| panic!("a full page says where the next starts: {out}"))
        .trim()
        .to_string();
    let (code, out) = cli(
        &sy,
        &[
            "destinations",
            "attempts",
            "hook",
            "--limit",
            "2",
            "--before",
            &more,
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines().count(),
        2,
        "a header and the oldest attempt: {out}"
    );
    assert!(!out.contains("more:"), "{out}");
}

/// A setting the server's function source has and the file does not is
/// removed by `apply`, which then has nothing left to change.
#[tokio::test]
async fn apply_removes_a_setting_the_file_does_not_have_and_converges() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let (code, out) = cli(
        &sy,
        &[
            "sources",
            "update",
            "stigg",
            "--settings",
            r#"{"extra":"value"}"#,
        ],
    );
    assert_eq!(code, 0, "{out}");
    let dir = TempDir::new("apply-settings");
    let file = dir.0.join("same.toml");
    std::fs::write(&file, config(&rx)).unwrap();
    let (code, out) = apply_file(&sy, &file, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("~ change source stigg"), "{out}");
    let (_, source) = sy.admin("GET", "/api/v1/sources/stigg", None).await;
    assert!(
        source["function"]["settings"].get("extra").is_none(),
        "{source}"
    );
    let (code, out) = apply_file(&sy, &file, &["--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no changes"), "the second plan: {out}");
}

/// `PATCH /destinations/{name}` changes the fields given and keeps the
/// others (secrets included), merges headers by name, refuses unknown
/// fields and a new kind by name, and tells a patch that changes nothing.
#[tokio::test]
async fn a_destination_is_patched_field_by_field() {
    let rx = Receiver::start("s3cret");
    let sy = Switchyard::start(&config(&rx));
    let patch = |body: Value| sy.admin("PATCH", "/api/v1/destinations/hook", Some(body));
    let (s, b) = patch(json!({"headers": {"X-Env": "prod", "X-Team": "data"}})).await;
    assert_eq!((s, &b["changed"]), (200, &json!(true)), "{b}");
    assert_eq!(b["config"]["shared_secret"], "********", "{b}");
    // Header names are merged ignoring case; null removes one.
    let (s, b) = patch(json!({"headers": {"x-env": "staging", "X-Team": null}})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["config"]["headers"], json!({"x-env": "staging"}), "{b}");
    let (_, d) = sy.admin("GET", "/api/v1/destinations/hook", None).await;
    assert_eq!(d["config"]["urls"], json!([rx.url("hook")]), "{d}");
    assert_eq!(d["config"]["retry_initial_ms"], 100, "{d}");
    assert_eq!(d["config"]["headers"], json!({"x-env": "staging"}), "{d}");
    // Deliveries are still signed with the stored secret, with the header.
    let (s, _) = sy
        .post(
            "/v1/track",
            "wk_web",
            r#"{"userId": "u", "event": "E", "messageId": "p1"}"#,
        )
        .await;
    assert_eq!(s, 200);
    let got = rx.wait_delivered("hook", 1, 30).await;
    assert_eq!(got[0]["segmentSignatureValid"], true, "{:?}", got[0]);
    assert_eq!(got[0]["headers"]["x-env"], "staging", "{:?}", got[0]);
    // null takes a field back to its default.
    let (s, b) = patch(json!({"retry_initial_ms": null})).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["config"].get("retry_initial_ms").is_none(), "{b}");
    // A value the configuration has already, its default included, is no change.
    for same in [json!({"enabled": true}), json!({}), json!({"x-env": null})] {
        let (s, b) = patch(same.clone()).await;
        assert_eq!((s, &b["changed"]), (200, &json!(false)), "{same}: {b}");
    }
    let (s, b) = patch(json!({"enabled": false})).await;
    assert_eq!(
        (s, &b["changed"], &b["enabled"]),
        (200, &json!(true), &json!(false)),
        "{b}"
    );
    // Refusals name the field.
    let (s, b) = patch(json!({"sharedSecret": "typo"})).await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("sharedSecret")),
        "{b}"
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown field")),
        "{b}"
    );
    let (s, b) = patch(json!({"kind": "function", "function": "f"})).await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("kind")),
        "{b}"
    );
    let (s, b) = patch(json!({"urls": null})).await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("urls")),
        "{b}"
    );
    let (s, b) = patch(json!(["enabled"])).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_body")),
        "{b}"
    );
    let (s, b) = sy
        .admin(
            "PATCH",
            "/api/v1/destinations/nope",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{b}"
    );
    // What was refused changed nothing.
    let (_, d) = sy.admin("GET", "/api/v1/destinations/hook", None).await;
    assert_eq!(d["config"]["urls"], json!([rx.url("hook")]), "{d}");
    assert_eq!(d["config"]["enabled"], false, "{d}");
}

/// `deadletters list --source` pages newest first with `--before` and says
/// how many there are in all, as the destination listing does; a replay of
/// an id that is not a dead letter fails, naming it.
#[tokio::test]
async fn a_source_s_dead_letters_page_with_a_total_from_the_cli() {
    let sy = &Switchyard::start(&paging_config());
    for i in 0..3 {
        hook(sy, "doomed", json!({"fail": true, "tag": i})).await;
    }
    let rows = at_least(sy, "/api/v1/sources/doomed/deadletters", 3).await;
    let list = |extra: &[&str]| {
        let mut args = vec!["deadletters", "list", "--source", "doomed"];
        args.extend_from_slice(extra);
        cli(sy, &args)
    };
    let (code, out) = list(&["-n", "2"]);
    assert_eq!(code, 0, "{out}");
    let next = out
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("2 shown of 3 in all; next: --before "))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    assert_eq!(out.lines().count(), 4, "a header, 2 rows, the total: {out}");
    let (code, out) = list(&["-n", "2", "--before", &next]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().last(), Some("1 shown of 3 in all"), "{out}");
    let oldest = rows[2]["id"].as_i64().unwrap();
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(&oldest.to_string())),
        "{out}"
    );
    let (code, out) = list(&["--json"]);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["total"], 3, "{out}");
    // `--before` pages a source's (newest first), `--after` a destination's.
    let (code, out) = cli(
        sy,
        &[
            "deadletters",
            "list",
            "--destination",
            "echo",
            "--before",
            "3",
        ],
    );
    assert_eq!(code, 2, "{out}");

    let (code, out) = cli(
        sy,
        &[
            "deadletters",
            "replay",
            "--source",
            "doomed",
            "--id",
            "999999",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("replayed 0\n")
            && out.contains("no dead letter 999999 for source \"doomed\""),
        "{out}"
    );
}
