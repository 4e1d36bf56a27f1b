//! The destination phases: how fast one destination drains a backlog to the
//! receiver. For each phase a fresh switchyard server is started with that
//! one destination on the source `web`, configured with `enabled = false`,
//! and `--drain-events` events are ingested through `/v1/batch`. A disabled
//! destination keeps its cursor, so they all wait. The server is stopped and
//! started again on the same data with the destination enabled, and from the
//! moment it listens the bench counts arrivals at the receiver until every
//! event has arrived, or for at most `--drain-duration` seconds. Ingest and
//! delivery never overlap: the figure is delivery alone. The server is then
//! killed: what it had not delivered is scratch.
//!
//! - `fn-track`: a destination function whose `onTrack` maps the event and
//!   `fetch`es it to the receiver (one request per event);
//! - `fn-batch`: the same function's `onBatch`, `batch_size` =
//!   `--fn-batch-size`, one `fetch` of a JSON array per batch;
//! - `webhooks`: the webhooks destination, `batch_size` 1, signed;
//! - `webhooks-batch`: the webhooks destination, `batch_size` =
//!   `--fn-batch-size`.
//!
//! Every server gets the same events (same bodies, same message ids).

use super::children::{cpu_secs, machine_cpu_secs, thread_cpu_secs, Child, ScratchDir};
use super::client::{self, CountResult, CountSpec};
use super::receiver::Receiver;
use super::{progress, secs, serve_command, BenchArgs, Phase, SECRET, WRITE_KEY};
use anyhow::Context;
use clap::ValueEnum;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The destination function of `fn-track` and `fn-batch`: maps a Segment
/// track event to a partner API's shape and posts it (one event, or the
/// whole batch as one JSON array). It keeps `messageId`, which the receiver
/// counts. `fetch` reuses its connections (keep-alive, per worker thread).
pub const PARTNER_JS: &str = r#"// switchyard bench: a partner API destination.
function toPartner(e) {
  const p = e.properties || {};
  return {
    messageId: e.messageId,
    name: e.event,
    user: e.userId || e.anonymousId,
    time: e.timestamp,
    value: p.revenue,
    currency: p.currency,
    coupon: p.coupon,
    items: (p.products || []).map((x) => ({ id: x.sku, name: x.name, price: x.price, qty: x.quantity })),
    ip: e.context && e.context.ip,
    userAgent: e.context && e.context.userAgent,
  };
}

async function post(body, settings) {
  const res = await fetch(settings.url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${settings.apiKey}` },
    body: JSON.stringify(body),
  });
  if (res.status === 429 || res.status >= 500) throw new RetryError(`partner answered ${res.status}`);
  if (!res.ok) throw new ValidationError(`partner answered ${res.status}`);
}

async function onTrack(event, settings) {
  await post(toPartner(event), settings);
}

// Returns nothing: every event of the batch is delivered when it returns.
async function onBatch(events, settings) {
  await post(events.map(toPartner), settings);
}
"#;

pub const PHASES: [Phase; 4] = [
    Phase::FnTrack,
    Phase::FnBatch,
    Phase::Webhooks,
    Phase::WebhooksBatch,
];

fn label(phase: Phase) -> &'static str {
    match phase {
        Phase::FnTrack => "function onTrack",
        Phase::FnBatch => "function onBatch",
        Phase::Webhooks => "webhooks",
        Phase::WebhooksBatch => "webhooks batched",
        _ => "?",
    }
}

fn batch_size(phase: Phase, args: &BenchArgs) -> usize {
    match phase {
        Phase::FnBatch | Phase::WebhooksBatch => args.fn_batch_size.max(1),
        _ => 1,
    }
}

/// One destination phase.
pub struct Drain {
    pub phase: Phase,
    pub batch_size: usize,
    pub ingest: CountResult,
    /// Server CPU (cores) while ingesting.
    pub ingest_server_cpu: f64,
    /// From starting the delivering server to its `listening on` line.
    pub startup_secs: f64,
    /// Events that arrived before the window (while the server started).
    pub delivered_before_window: u64,
    pub window_secs: f64,
    pub delivered_in_window: u64,
    /// Requests and new TCP connections the receiver got during the window.
    pub requests_in_window: u64,
    pub connections_in_window: u64,
    pub delivered_total: u64,
    pub drained: bool,
    /// CPU cores during the window (1.0 = one core).
    pub server_cpu: f64,
    pub bench_cpu: f64,
    pub other_cpu: f64,
    /// Server CPU cores per thread name during the window, busiest first.
    pub threads: Vec<(String, f64)>,
    pub peak_rss: u64,
    pub log_problems: Vec<String>,
}

impl Drain {
    pub fn label(&self) -> &'static str {
        label(self.phase)
    }

    pub fn delivered_per_sec(&self) -> f64 {
        self.delivered_in_window as f64 / self.window_secs.max(1e-9)
    }

    pub fn cpu_us_per_event(&self) -> f64 {
        if self.delivered_in_window == 0 {
            return f64::NAN;
        }
        self.server_cpu * self.window_secs * 1e6 / self.delivered_in_window as f64
    }

    pub fn json(&self) -> Value {
        json!({
            "phase": self.phase.to_possible_value().map(|v| v.get_name().to_string()),
            "destination": self.label(),
            "batch_size": self.batch_size,
            "ingested_events": self.ingest.accepted_events,
            "ingest_failed_requests": self.ingest.failed_requests,
            "ingest_first_error": self.ingest.first_error,
            "ingest_secs": self.ingest.secs,
            "ingest_events_per_sec": self.ingest.accepted_events as f64 / self.ingest.secs.max(1e-9),
            "ingest_server_cpu_cores": self.ingest_server_cpu,
            "restart_secs": self.startup_secs,
            "delivered_before_window": self.delivered_before_window,
            "window_secs": self.window_secs,
            "delivered_in_window": self.delivered_in_window,
            "delivered_events_per_sec": self.delivered_per_sec(),
            "receiver_requests_per_sec": self.requests_in_window as f64 / self.window_secs.max(1e-9),
            "receiver_new_connections_in_window": self.connections_in_window,
            "delivered_total": self.delivered_total,
            "drained": self.drained,
            "server_cpu_cores": self.server_cpu,
            "bench_cpu_cores": self.bench_cpu,
            "other_processes_cpu_cores": self.other_cpu,
            "server_cpu_us_per_delivered_event": self.cpu_us_per_event(),
            "server_threads_cpu_cores": self.threads.iter().map(|(n, c)| json!({"thread": n, "cores": c})).collect::<Vec<_>>(),
            "peak_rss_bytes": self.peak_rss,
            "server_log_problems": self.log_problems.iter().take(20).collect::<Vec<_>>(),
        })
    }
}

fn write_config(
    dir: &Path,
    phase: Phase,
    receiver: SocketAddr,
    args: &BenchArgs,
    enabled: bool,
) -> anyhow::Result<std::path::PathBuf> {
    let size = batch_size(phase, args);
    let mut wait = format!("enabled = {enabled}\n");
    if size > 1 {
        wait.push_str("batch_max_wait_ms = 10\n");
    }
    let mut text = String::new();
    let function = matches!(phase, Phase::FnTrack | Phase::FnBatch);
    if function {
        text.push_str("[server]\nfetch_allow = [\"127.0.0.1\"]\n");
        if let Some(n) = args.function_workers {
            text.push_str(&format!("function_workers = {n}\n"));
        }
        text.push('\n');
    }
    text.push_str(&format!(
        "[[sources]]\nslug = \"web\"\nkind = \"tracking\"\nwrite_key = \"{WRITE_KEY}\"\n\n"
    ));
    if function {
        let js = dir.join("partner.js");
        let code = match &args.function_file {
            Some(f) => std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?,
            None => PARTNER_JS.to_string(),
        };
        std::fs::write(&js, code).with_context(|| format!("cannot write {}", js.display()))?;
        text.push_str(&format!(
            "[[functions]]\nname = \"partner\"\nkind = \"destination\"\nfile = {}\n\n\
             [[destinations]]\nname = \"partner\"\nkind = \"function\"\nfunction = \"partner\"\n\
             sources = [\"web\"]\nsettings = {{ url = \"http://{receiver}/fn\", apiKey = \"bench-key\" }}\n\
             batch_size = {size}\n{wait}",
            toml::Value::String(js.display().to_string())
        ));
    } else {
        text.push_str(&format!(
            "[[destinations]]\nname = \"hook\"\nkind = \"webhooks\"\nsources = [\"web\"]\n\
             urls = [\"http://{receiver}/hook\"]\nshared_secret = \"{SECRET}\"\nbatch_size = {size}\n{wait}"
        ));
    }
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

async fn start(
    exe: &Path,
    config: &Path,
    dir: &Path,
    log: &str,
    args: &BenchArgs,
) -> anyhow::Result<Child> {
    Child::spawn(
        "switchyard server",
        serve_command(exe, config, &dir.join("data"), args),
        &dir.join(log),
        secs(30.0),
    )
    .await
}

/// Runs one destination phase against a fresh server.
pub async fn run(
    args: &BenchArgs,
    exe: &Path,
    scratch: &ScratchDir,
    receiver_addr: SocketAddr,
    receiver: &Arc<Receiver>,
    phase: Phase,
    id_prefix: &str,
) -> anyhow::Result<Drain> {
    let dir = scratch.path.join(format!("{phase:?}").to_lowercase());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // 1. The backlog, with the destination disabled.
    let config = write_config(&dir, phase, receiver_addr, args, false)?;
    let mut server = start(exe, &config, &dir, "ingest.log", args).await?;
    progress(
        false,
        format!(
            "{}: {} events through /v1/batch with the destination disabled (pid {})",
            label(phase),
            args.drain_events,
            server.pid,
        ),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_request = args.batch_events;
    let spec = CountSpec {
        addr: server.addr,
        path: "/v1/batch",
        write_key: WRITE_KEY.to_string(),
        per_request,
        event_bytes: args.event_bytes,
        connections: args.connections,
        requests: args.drain_events.div_ceil(per_request as u64),
        id_prefix: id_prefix.to_string(),
    };
    let cpu_before_ingest = server.cpu_secs();
    let ingest = client::send_count(&spec).await;
    let ingest_server_cpu = (server.cpu_secs() - cpu_before_ingest) / ingest.secs.max(1e-9);
    server.check_alive()?;
    server.stop(secs(10.0)).await;

    // 2. The same data, the destination enabled: the drain.
    let config = write_config(&dir, phase, receiver_addr, args, true)?;
    let base = receiver.events.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut server = start(exe, &config, &dir, "server.log", args).await?;
    let startup_secs = started.elapsed().as_secs_f64();
    progress(
        false,
        format!(
            "{}: draining (pid {}, at most {}s)",
            label(phase),
            server.pid,
            args.drain_duration
        ),
    );
    let own = std::process::id();
    let t0 = Instant::now();
    let got0 = receiver.events.load(Ordering::Relaxed);
    let req0 = receiver.requests.load(Ordering::Relaxed);
    let conn0 = receiver.connections.load(Ordering::Relaxed);
    let (cpu0, own0, machine0) = (server.cpu_secs(), cpu_secs(own), machine_cpu_secs().0);
    let threads0 = thread_cpu_secs(server.pid);
    let want = base + ingest.accepted_events;
    let limit = secs(args.drain_duration);
    while receiver.events.load(Ordering::Relaxed) < want && t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let got1 = receiver.events.load(Ordering::Relaxed);
    let window = t0.elapsed().as_secs_f64().max(1e-9);
    let (cpu1, own1, machine1) = (server.cpu_secs(), cpu_secs(own), machine_cpu_secs().0);
    let threads1 = thread_cpu_secs(server.pid);
    let server_cpu = (cpu1 - cpu0) / window;
    let bench_cpu = (own1 - own0) / window;
    let other_cpu = ((machine1 - machine0) / window - server_cpu - bench_cpu).max(0.0);
    let mut threads: Vec<(String, f64)> = threads1
        .iter()
        .map(|(name, t)| {
            let before = threads0.get(name).copied().unwrap_or(0.0);
            (name.clone(), (t - before).max(0.0) / window)
        })
        .filter(|(_, c)| *c >= 0.005)
        .collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    let peak_rss = server.memory().hwm;
    server.check_alive()?;
    let log_problems: Vec<String> = server
        .log_tail(10_000)
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .map(str::to_string)
        .collect();
    server.kill();
    Ok(Drain {
        phase,
        batch_size: batch_size(phase, args),
        ingest_server_cpu,
        startup_secs,
        delivered_before_window: got0 - base,
        window_secs: window,
        delivered_in_window: got1 - got0,
        requests_in_window: receiver.requests.load(Ordering::Relaxed) - req0,
        connections_in_window: receiver.connections.load(Ordering::Relaxed) - conn0,
        delivered_total: got1 - base,
        drained: got1 >= want,
        ingest,
        server_cpu,
        bench_cpu,
        other_cpu,
        threads,
        peak_rss,
        log_problems,
    })
}

/// The table of the destination phases.
pub fn print(drains: &[Drain], args: &BenchArgs) {
    if drains.is_empty() {
        return;
    }
    println!();
    println!(
        "destinations: each on a fresh server; {} events (~{} B) through /v1/batch ({} per request, {} connections) with the destination disabled,\n  then a restart with it enabled; delivery alone, measured from `listening` until all arrived or {}s",
        args.drain_events, args.event_bytes, args.batch_events, args.connections, args.drain_duration
    );
    println!(
        "{:<17} {:>5} {:>11} {:>10} {:>12} {:>7} {:>9} {:>8} {:>6} {:>8} {:>8} {:>8} {:>9}",
        "destination",
        "batch",
        "ingest ev/s",
        "restart",
        "delivered/s",
        "window",
        "left",
        "req/s",
        "conns",
        "srv CPU",
        "gen CPU",
        "others",
        "µs/event"
    );
    for d in drains {
        println!(
            "{:<17} {:>5} {:>11.0} {:>9.2}s {:>12.0} {:>6.2}s {:>9} {:>8.0} {:>6} {:>7.0}% {:>7.0}% {:>7.0}% {:>9.1}",
            d.label(),
            d.batch_size,
            d.ingest.accepted_events as f64 / d.ingest.secs.max(1e-9),
            d.startup_secs,
            d.delivered_per_sec(),
            d.window_secs,
            d.ingest.accepted_events.saturating_sub(d.delivered_total),
            d.requests_in_window as f64 / d.window_secs,
            d.connections_in_window,
            d.server_cpu * 100.0,
            d.bench_cpu * 100.0,
            d.other_cpu * 100.0,
            d.cpu_us_per_event(),
        );
        let threads: Vec<String> = d
            .threads
            .iter()
            .take(5)
            .map(|(n, c)| format!("{n} {:.0}%", c * 100.0))
            .collect();
        println!(
            "    server threads: {}; peak RSS {:.1} MB",
            threads.join(", "),
            d.peak_rss as f64 / 1e6
        );
        if d.delivered_before_window > 0 {
            println!(
                "    {} events arrived before the window (while the server started)",
                d.delivered_before_window
            );
        }
        if d.ingest.failed_requests > 0 {
            println!(
                "    ingest: {} failed requests, first: {}",
                d.ingest.failed_requests,
                d.ingest.first_error.as_deref().unwrap_or("?")
            );
        }
        if !d.log_problems.is_empty() {
            println!(
                "    server log: {} warnings/errors, first: {}",
                d.log_problems.len(),
                d.log_problems[0]
            );
        }
    }
    println!("  (restart = start of the delivering server until it listens; left = not delivered when the window ended;");
    println!("   conns = new connections to the receiver during the window; µs/event = server CPU per delivered event)");
    if let (Some(t), Some(b)) = (
        drains.iter().find(|d| d.phase == Phase::FnTrack),
        drains.iter().find(|d| d.phase == Phase::Webhooks),
    ) {
        println!(
            "  function onTrack / webhooks: {:.2}x the events/s",
            t.delivered_per_sec() / b.delivered_per_sec().max(1e-9)
        );
    }
    if let (Some(t), Some(b)) = (
        drains.iter().find(|d| d.phase == Phase::FnBatch),
        drains.iter().find(|d| d.phase == Phase::WebhooksBatch),
    ) {
        println!(
            "  function onBatch / webhooks batched: {:.2}x the events/s",
            t.delivered_per_sec() / b.delivered_per_sec().max(1e-9)
        );
    }
}
