//! A worker runs other invocations while one awaits `fetch`: many are in
//! flight on one worker thread, and a stuck one is still stopped without
//! harming the others.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_functions::*;

/// An HTTP server on loopback that holds every request it gets, answering
/// none until `release_at` are open at once, `release()` is called or a
/// generous deadline passes; after that it answers every request at once.
/// It counts the most requests it held open at the same time.
struct Holder {
    port: u16,
    seen: Arc<AtomicUsize>,
    most_open: Arc<AtomicUsize>,
    release: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Holder {
    fn start(release_at: usize) -> Holder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let most_open = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, m, r, st) = (
            seen.clone(),
            most_open.clone(),
            release.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut held: Vec<(std::net::TcpStream, String)> = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let mut buf = vec![0u8; 65536];
                        let n = stream.read(&mut buf).unwrap_or(0);
                        let path = String::from_utf8_lossy(&buf[..n])
                            .split_whitespace()
                            .nth(1)
                            .unwrap_or_default()
                            .to_string();
                        held.push((stream, path));
                        s.fetch_add(1, Ordering::SeqCst);
                        m.fetch_max(held.len(), Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
                if held.len() >= release_at || Instant::now() >= deadline {
                    r.store(true, Ordering::SeqCst);
                }
                if r.load(Ordering::SeqCst) {
                    for (mut stream, path) in held.drain(..) {
                        let body = json!({ "path": path }).to_string();
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(head.as_bytes());
                        let _ = stream.write_all(body.as_bytes());
                    }
                }
            }
        });
        Holder {
            port,
            seen,
            most_open,
            release,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn release(&self) {
        self.release.store(true, Ordering::SeqCst);
    }

    async fn wait_seen(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.seen.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "the server saw {} requests, not {n}",
                self.seen.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn local_pool(workers: usize) -> Arc<Pool> {
    Arc::new(Pool::new(
        workers,
        FetchPolicy {
            allow: vec!["127.0.0.1".into()],
            deny: vec![],
        },
    ))
}

/// Generous: these tests assert on overlap, never on speed.
fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(30),
        ..Limits::default()
    }
}

const FETCHER: &str = r#"
async function onTrack(event, settings) {
  console.log('start ' + event.event);
  const res = await fetch(settings.url + '/' + event.event);
  const answer = await res.json();
  console.log('done ' + event.event);
  return answer.path;
}"#;

fn fetcher() -> Arc<FunctionCode> {
    Arc::new(FunctionCode::new("fetcher", "fetcher.js", FETCHER))
}

fn track(name: &str) -> String {
    json!({"type": "track", "event": name, "userId": "u"}).to_string()
}

/// Starts one destination invocation of `FETCHER` per name.
fn spawn_fetches(
    pool: &Arc<Pool>,
    settings: &Value,
    names: &[String],
) -> Vec<tokio::task::JoinHandle<DestinationOutcome>> {
    names
        .iter()
        .map(|name| {
            let (pool, settings, event) = (pool.clone(), settings.clone(), track(name));
            tokio::spawn(async move {
                pool.run_destination(fetcher(), event, &settings, limits())
                    .await
            })
        })
        .collect()
}

/// Each invocation answered with its own path and kept its own logs only.
fn assert_each_got_its_own(names: &[String], outcomes: Vec<DestinationOutcome>) {
    for (name, out) in names.iter().zip(outcomes) {
        assert!(out.error.is_none(), "{name}: {:?}", out.error);
        assert_eq!(out.result, Some(json!(format!("/{name}"))), "{name}");
        let logs: Vec<&str> = out.logs.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            logs,
            [format!("start {name}"), format!("done {name}")],
            "{name}'s logs are its own"
        );
        let urls: Vec<&str> = out.requests.iter().map(|r| r.url.as_str()).collect();
        assert_eq!(urls.len(), 1, "{name}: {urls:?}");
        assert!(urls[0].ends_with(&format!("/{name}")), "{name}: {urls:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_keeps_many_fetches_in_flight() {
    const N: usize = 8;
    let holder = Holder::start(N);
    let pool = local_pool(1);
    let names: Vec<String> = (0..N).map(|i| format!("e{i}")).collect();
    let tasks = spawn_fetches(&pool, &json!({"url": holder.url()}), &names);
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(
        holder.most_open.load(Ordering::SeqCst),
        N,
        "the one worker had all {N} fetches open at once"
    );
    assert_each_got_its_own(&names, outcomes);
    pool.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_function_runs_while_one_awaits_a_slow_fetch() {
    let holder = Holder::start(usize::MAX);
    let pool = local_pool(1);
    let names = vec!["slow".to_string()];
    let slow = spawn_fetches(&pool, &json!({"url": holder.url()}), &names);
    holder.wait_seen(1).await;

    let source = Arc::new(FunctionCode::new(
        "source",
        "source.js",
        "async function onRequest(request) { const n = await new Promise((r) => setTimeout(() => r(request.json().n), 5)); Segment.track({ userId: 'u', event: 'got ' + n }); }",
    ));
    let request = RawRequest {
        method: "POST".into(),
        url: "https://hooks.example/functions/s".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: br#"{"n": 7}"#.to_vec(),
    };
    let out = pool
        .run_source(source, &request, &json!({}), limits())
        .await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.messages[0]["event"], "got 7");
    assert!(
        !slow[0].is_finished(),
        "the source function finished while the slow fetch was still held"
    );

    holder.release();
    let mut outcomes = Vec::new();
    for t in slow {
        outcomes.push(t.await.unwrap());
    }
    assert_each_got_its_own(&names, outcomes);
    pool.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_function_is_stopped_while_others_await_fetch_on_its_worker() {
    const N: usize = 4;
    let holder = Holder::start(usize::MAX);
    let pool = local_pool(1);
    let names: Vec<String> = (0..N).map(|i| format!("w{i}")).collect();
    let waiting = spawn_fetches(&pool, &json!({"url": holder.url()}), &names);
    holder.wait_seen(N).await;

    let short = Limits {
        timeout: Duration::from_millis(300),
        memory_bytes: 16 * 1024 * 1024,
        ..Limits::default()
    };
    let event = track("x");
    let looping = Arc::new(FunctionCode::new(
        "loop",
        "loop.js",
        "async function onTrack() { console.log('looping'); for (;;) {} }",
    ));
    let out = pool
        .run_destination(looping.clone(), event.clone(), &json!({}), short)
        .await;
    let e = out.error.expect("the loop is stopped");
    assert_eq!(e.kind, ErrorKind::Timeout, "{e:?}");
    assert_eq!(out.logs.len(), 1, "only its own logs: {:?}", out.logs);
    // A loop after an await (run from the job queue, not the first call).
    let later = Arc::new(FunctionCode::new(
        "later",
        "later.js",
        "async function onTrack() { await null; await new Promise((r) => setTimeout(r, 1)); for (;;) {} }",
    ));
    let out = pool
        .run_destination(later, event.clone(), &json!({}), short)
        .await;
    assert_eq!(out.error.expect("stopped").kind, ErrorKind::Timeout);
    // A memory bomb hits its own runtime's cap.
    let bomb = Arc::new(FunctionCode::new(
        "bomb",
        "bomb.js",
        "async function onTrack() { await null; const a = []; for (;;) a.push(new Array(100000).fill(1)); }",
    ));
    let out = pool
        .run_destination(bomb, event.clone(), &json!({}), short)
        .await;
    let e = out.error.expect("the bomb is stopped");
    assert!(
        matches!(e.kind, ErrorKind::Memory | ErrorKind::Timeout),
        "{e:?}"
    );
    for t in &waiting {
        assert!(!t.is_finished(), "the fetches are still held");
    }

    holder.release();
    let mut outcomes = Vec::new();
    for t in waiting {
        outcomes.push(t.await.unwrap());
    }
    assert_each_got_its_own(&names, outcomes);
    // And the worker is healthy after all that.
    let out = pool
        .run_destination(
            fetcher(),
            track("after"),
            &json!({"url": holder.url()}),
            limits(),
        )
        .await;
    assert_eq!(out.result, Some(json!("/after")), "{:?}", out.error);
    pool.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_invocations_in_flight() {
    let holder = Holder::start(usize::MAX);
    let pool = local_pool(1);
    let names = vec!["a".to_string(), "b".to_string()];
    let waiting = spawn_fetches(&pool, &json!({"url": holder.url()}), &names);
    holder.wait_seen(2).await;
    let stopping = {
        let pool = pool.clone();
        tokio::task::spawn_blocking(move || pool.shutdown())
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    holder.release();
    stopping.await.unwrap();
    let mut outcomes = Vec::new();
    for t in waiting {
        outcomes.push(t.await.unwrap());
    }
    assert_each_got_its_own(&names, outcomes);
    let out = pool
        .run_destination(
            fetcher(),
            track("late"),
            &json!({"url": holder.url()}),
            limits(),
        )
        .await;
    assert_eq!(out.error.expect("refused").kind, ErrorKind::Internal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_left_behind_never_answers_the_next_invocation() {
    // Answers every request at once: the first invocation's answer may come
    // back while the second awaits its own.
    let holder = Holder::start(1);
    let pool = local_pool(1);
    let f = Arc::new(FunctionCode::new(
        "leaver",
        "leaver.js",
        r#"
let calls = 0;
async function onTrack(event, settings) {
  calls++;
  if (event.event === 'first') { fetch(settings.url + '/first'); return 'left ' + calls; }
  const res = await fetch(settings.url + '/second');
  return (await res.json()).path + ' ' + calls;
}"#,
    ));
    let settings = json!({"url": holder.url()});
    let first = pool
        .run_destination(f.clone(), track("first"), &settings, limits())
        .await;
    assert_eq!(first.result, Some(json!("left 1")), "{:?}", first.error);
    let second = pool
        .run_destination(f.clone(), track("second"), &settings, limits())
        .await;
    // The same warm runtime (its counter went on), and its own answer only.
    assert_eq!(
        second.result,
        Some(json!("/second 2")),
        "{:?}",
        second.error
    );
    let urls: Vec<&str> = second.requests.iter().map(|r| r.url.as_str()).collect();
    assert_eq!(urls.len(), 1, "{urls:?}");
    assert!(urls[0].ends_with("/second"), "{urls:?}");
    pool.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_left_behind_never_fires_in_the_next_invocation() {
    let pool = local_pool(1);
    let f = Arc::new(FunctionCode::new(
        "stray",
        "stray.js",
        r#"
let calls = 0;
let fired = 0;
async function onTrack(event) {
  calls++;
  if (event.event === 'first') {
    setTimeout(() => { fired++; throw new Error('late timer of ' + event.event) }, 10);
    return 'left ' + calls;
  }
  await new Promise((r) => setTimeout(r, 100));
  return 'second ' + calls + ', fired ' + fired;
}"#,
    ));
    let first = pool
        .run_destination(f.clone(), track("first"), &json!({}), limits())
        .await;
    assert_eq!(first.result, Some(json!("left 1")), "{:?}", first.error);
    let second = pool
        .run_destination(f.clone(), track("second"), &json!({}), limits())
        .await;
    // The same warm runtime (its counter went on); the first one's timer
    // ended with it.
    assert_eq!(
        second.result,
        Some(json!("second 2, fired 0")),
        "{:?}",
        second.error
    );
    pool.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_wait_does_not_hold_the_worker_either() {
    let pool = local_pool(1);
    let sleeper = Arc::new(FunctionCode::new(
        "sleeper",
        "sleeper.js",
        "async function onTrack() { await new Promise((r) => setTimeout(r, 600000)); return 'woke'; }",
    ));
    let sleeping = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let limits = Limits {
                timeout: Duration::from_secs(5),
                ..Limits::default()
            };
            pool.run_destination(sleeper, track("s"), &json!({}), limits)
                .await
        })
    };
    // Queued first: the worker takes tasks in order.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let quick = Arc::new(FunctionCode::new(
        "quick",
        "quick.js",
        "async function onTrack(event) { await new Promise((r) => setTimeout(r, 1)); return event.event; }",
    ));
    for i in 0..3 {
        let name = format!("q{i}");
        let out = pool
            .run_destination(quick.clone(), track(&name), &json!({}), limits())
            .await;
        assert_eq!(out.result, Some(json!(name)), "{:?}", out.error);
    }
    assert!(!sleeping.is_finished(), "quick ones ran while it slept");
    // Its budget still ends the wait.
    let out = sleeping.await.unwrap();
    assert_eq!(out.error.expect("timed out").kind, ErrorKind::Timeout);
    pool.shutdown();
}

/// Starts one destination invocation of `code` per name.
fn spawn_destinations(
    pool: &Arc<Pool>,
    code: &Arc<FunctionCode>,
    settings: &Value,
    names: &[String],
) -> Vec<tokio::task::JoinHandle<DestinationOutcome>> {
    names
        .iter()
        .map(|name| {
            let (pool, code, settings, event) =
                (pool.clone(), code.clone(), settings.clone(), track(name));
            tokio::spawn(
                async move { pool.run_destination(code, event, &settings, limits()).await },
            )
        })
        .collect()
}

fn challenge() -> (Arc<FunctionCode>, RawRequest) {
    let source = Arc::new(FunctionCode::new(
        "challenge",
        "challenge.js",
        "async function onRequest(request) { return new Response(JSON.stringify({ challenge: request.json().challenge }), { status: 200 }); }",
    ));
    let request = RawRequest {
        method: "POST".into(),
        url: "https://hooks.example/functions/s".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: br#"{"challenge": "c7"}"#.to_vec(),
    };
    (source, request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_filling_the_worker_leaves_room_for_others_and_for_source_runs() {
    let holder = Holder::start(usize::MAX);
    let pool = local_pool(1);
    let settings = json!({"url": holder.url()});
    // One destination with far more in flight than the worker has slots,
    // every one held on its fetch by a server that never answers.
    let hog_names: Vec<String> = (0..MAX_IN_FLIGHT_PER_WORKER + 20)
        .map(|i| format!("hog{i}"))
        .collect();
    let hog = spawn_destinations(&pool, &fetcher(), &settings, &hog_names);
    holder.wait_seen(MAX_IN_FLIGHT_PER_FUNCTION).await;

    // Another destination still gets the rest of the worker's slots.
    let other_code = Arc::new(FunctionCode::new("other", "other.js", FETCHER));
    let other_names: Vec<String> = (0..MAX_IN_FLIGHT_PER_WORKER - MAX_IN_FLIGHT_PER_FUNCTION)
        .map(|i| format!("other{i}"))
        .collect();
    let other = spawn_destinations(&pool, &other_code, &settings, &other_names);
    holder.wait_seen(MAX_IN_FLIGHT_PER_WORKER).await;

    // Every general slot is held now; a source run (a challenge its sender
    // waits for) goes through all the same, while they are still held.
    let (source, request) = challenge();
    for _ in 0..3 {
        let out = pool
            .run_source(source.clone(), &request, &json!({}), limits())
            .await;
        assert!(out.error.is_none(), "{:?}", out.error);
        let answer = out.response.expect("the function answered");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, br#"{"challenge":"c7"}"#);
    }
    assert!(
        hog.iter().chain(&other).all(|t| !t.is_finished()),
        "the destinations' fetches are all still held"
    );
    assert_eq!(
        holder.most_open.load(Ordering::SeqCst),
        MAX_IN_FLIGHT_PER_WORKER,
        "one function held at most its share, both together the worker's slots"
    );

    holder.release();
    let mut outcomes = Vec::new();
    for t in hog {
        outcomes.push(t.await.unwrap());
    }
    assert_each_got_its_own(&hog_names, outcomes);
    for (name, t) in other_names.iter().zip(other) {
        let out = t.await.unwrap();
        assert_eq!(
            out.result,
            Some(json!(format!("/{name}"))),
            "{:?}",
            out.error
        );
    }
    pool.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_run_that_cannot_start_within_its_budget_does_not_run() {
    let holder = Holder::start(usize::MAX);
    let pool = local_pool(1);
    // Source runs held on their fetches, two functions each at its share,
    // fill every slot of the worker, the ones kept for sources included.
    let held_code = |name: &str| {
        Arc::new(FunctionCode::new(
            name,
            &format!("{name}.js"),
            "async function onRequest(request, settings) { const res = await fetch(settings.url + '/' + request.json().n); Segment.track({ userId: 'u', event: (await res.json()).path }); }",
        ))
    };
    let total = MAX_IN_FLIGHT_PER_WORKER + SOURCE_SLOTS_PER_WORKER;
    let settings = json!({"url": holder.url()});
    let held: Vec<_> = (0..total)
        .map(|i| {
            let code = held_code(if i % 2 == 0 { "even" } else { "odd" });
            let request = RawRequest {
                method: "POST".into(),
                url: "https://hooks.example/functions/s".into(),
                headers: vec![("content-type".into(), "application/json".into())],
                body: json!({ "n": format!("s{i}") }).to_string().into_bytes(),
            };
            let (pool, settings) = (pool.clone(), settings.clone());
            tokio::spawn(async move { pool.run_source(code, &request, &settings, limits()).await })
        })
        .collect();
    holder.wait_seen(total).await;

    // Its budget counts from the moment it was asked for: it times out
    // without having run, rather than wait for a slot past its budget.
    let (source, request) = challenge();
    let short = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let out = pool.run_source(source, &request, &json!({}), short).await;
    let e = out.error.expect("no slot within its budget");
    assert_eq!(e.kind, ErrorKind::Timeout, "{e:?}");
    assert!(e.message.contains("did not run"), "{e}");
    assert!(out.logs.is_empty() && out.response.is_none());
    assert!(held.iter().all(|t| !t.is_finished()), "still held");

    holder.release();
    for (i, t) in held.into_iter().enumerate() {
        let out = t.await.unwrap();
        assert!(out.error.is_none(), "{:?}", out.error);
        assert_eq!(out.messages[0]["event"], format!("/s{i}"));
    }
    pool.shutdown();
}
