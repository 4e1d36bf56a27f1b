//! A function over its memory cap ends as a `MemoryError`, every time: also
//! when the engine had no memory left to build the exception it throws (it
//! then throws `null`), and with many such runtimes in flight on one worker.

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use switchyard_functions::*;

fn track(name: &str) -> String {
    json!({"type": "track", "event": name, "userId": "u"}).to_string()
}

fn capped() -> Limits {
    Limits {
        timeout: Duration::from_secs(20),
        memory_bytes: 16 * 1024 * 1024,
        ..Limits::default()
    }
}

/// Each waits on a timer first, so that several are in flight on the worker
/// at once, then grows until its runtime's cap stops it.
const BOMBS: [&str; 4] = [
    // The tester's bomb: big strings into an array.
    "async function onTrack() { await new Promise((r) => setTimeout(r, 2)); const a = []; while (true) a.push('x'.repeat(100000) + Math.random()); }",
    "async function onTrack() { await new Promise((r) => setTimeout(r, 2)); const a = []; for (;;) a.push(new Array(100000).fill(1)); }",
    // Small objects: the allocation that fails is small, and so is the room
    // left for the error.
    "async function onTrack() { await new Promise((r) => setTimeout(r, 2)); const o = {}; for (let i = 0; ; i++) o['k' + i] = { i, s: 'y'.repeat(100) }; }",
    "async function onTrack() { await null; const m = new Map(); for (let i = 0; ; i++) m.set(i, [i, { i }]); }",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_memory_bombs_in_flight_on_one_worker_are_all_memory_errors() {
    let pool = Arc::new(Pool::new(1, FetchPolicy::default()));
    let codes: Vec<Arc<FunctionCode>> = BOMBS
        .iter()
        .enumerate()
        .map(|(i, src)| Arc::new(FunctionCode::new(&format!("bomb{i}"), "bomb.js", src)))
        .collect();
    let mut seen = Vec::new();
    for round in 0..6 {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (pool, code) = (pool.clone(), codes[(round + i) % codes.len()].clone());
                tokio::spawn(async move {
                    pool.run_destination(
                        code,
                        track(&format!("r{round}e{i}")),
                        &json!({}),
                        capped(),
                    )
                    .await
                })
            })
            .collect();
        for t in tasks {
            let out = t.await.expect("the invocation task");
            seen.push(out.error.expect("a bomb never succeeds"));
        }
    }
    let wrong: Vec<String> = seen
        .iter()
        .filter(|e| e.kind != ErrorKind::Memory || e.name != "MemoryError")
        .map(|e| format!("{:?} {e}", e.kind))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} bombs were not memory errors: {wrong:?}",
        wrong.len(),
        seen.len()
    );
    // The worker is healthy after all that.
    let ok = Arc::new(FunctionCode::new(
        "ok",
        "ok.js",
        "async function onTrack(event) { return event.event; }",
    ));
    let out = pool
        .run_destination(ok, track("after"), &json!({}), capped())
        .await;
    assert_eq!(out.result, Some(json!("after")), "{:?}", out.error);
    pool.shutdown();
}

#[test]
fn a_function_that_throws_null_is_its_own_error_not_a_memory_error() {
    let code = FunctionCode::new(
        "thrower",
        "thrower.js",
        "async function onTrack() { throw null; }",
    );
    let out = run_destination_once(
        &code,
        &json!({"type": "track", "event": "e", "userId": "u"}),
        &json!({}),
        &capped(),
        FetchMode::Mock(Arc::new(Vec::new())),
    );
    let e = out.error.expect("it threw");
    assert_eq!(e.kind, ErrorKind::Thrown, "{e:?}");
    assert_eq!(
        e.to_string(),
        "Error: the function threw null, not an Error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_function_does_after_hitting_the_cap_does_not_hide_it() {
    let pool = Pool::new(1, FetchPolicy::default());
    let grow = "const o = {}; for (let i = 0; ; i++) o['k' + i] = { i, s: 'y'.repeat(100) };";
    // Caught, and something else thrown: the cap is what stopped it.
    let rethrows = Arc::new(FunctionCode::new(
        "rethrows",
        "rethrows.js",
        &format!("async function onTrack() {{ try {{ {grow} }} catch (e) {{ throw new ValidationError('bad event') }} }}"),
    ));
    // Caught, and finished after all: still out of memory, as a Node
    // process that runs out of heap stops whatever the code catches.
    let recovers = Arc::new(FunctionCode::new(
        "recovers",
        "recovers.js",
        &format!(
            "async function onTrack() {{ try {{ {grow} }} catch (e) {{ }} return 'recovered'; }}"
        ),
    ));
    for _ in 0..3 {
        let out = pool
            .run_destination(rethrows.clone(), track("e"), &json!({}), capped())
            .await;
        let e = out.error.expect("stopped");
        assert_eq!(
            (e.kind, e.name.as_str()),
            (ErrorKind::Memory, "MemoryError"),
            "{e:?}"
        );
        let out = pool
            .run_destination(recovers.clone(), track("e"), &json!({}), capped())
            .await;
        let e = out.error.expect("stopped, though it caught the failure");
        assert_eq!(e.kind, ErrorKind::Memory, "{e:?}");
    }
    // A source function's run too.
    let source = Arc::new(FunctionCode::new(
        "source-bomb",
        "source.js",
        &format!("async function onRequest() {{ {grow} }}"),
    ));
    let request = RawRequest {
        method: "POST".into(),
        url: "https://hooks.example/functions/s".into(),
        headers: vec![],
        body: b"{}".to_vec(),
    };
    for _ in 0..3 {
        let out = pool
            .run_source(source.clone(), &request, &json!({}), capped())
            .await;
        let e = out.error.expect("stopped");
        assert_eq!(e.kind, ErrorKind::Memory, "{e:?}");
    }
    pool.shutdown();
}
