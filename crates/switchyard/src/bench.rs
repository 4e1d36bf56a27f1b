//! `switchyard bench`: starts a switchyard server (this executable, `serve`)
//! and a bare axum handler as child processes on loopback, drives both with
//! the same requests, and reports throughput, latency and memory. See
//! BENCHMARKS.md for the method and the figures.
//!
//! Phases, in order (each optional through `--phases`):
//! 1. bare handler: `/v1/track` then `/v1/batch`, closed loop;
//! 2. `ingest-only`: `track` then `batch` on a switchyard server with no
//!    destination: parsing, validation and durable storage alone, which is
//!    what the throughput targets budget (skipped with `--no-destination`,
//!    where the main server already is that, and with `--no-ingest-only`);
//! 3. switchyard with a webhooks destination, idle RSS;
//! 4. switchyard, `latency`: `/v1/track` paced (open loop) at `--latency-rate`,
//!    time from each 200 to the event's arrival at the in-process receiver;
//! 5. switchyard, `track` then `batch`, closed loop, same bodies as the bare
//!    handler got; the delivery backlog is left to drain (bounded) in between;
//! 6. switchyard, peak RSS (`VmHWM`);
//! 7. the destination phases `fn-track`, `fn-batch`, `webhooks`,
//!    `webhooks-batch`: each on a fresh server with that one destination, a
//!    backlog ingested through `/v1/batch`, then how fast the destination
//!    drains it to the receiver (see `destinations.rs`).

mod children;
mod client;
mod destinations;
mod durable_bare;
mod receiver;

use anyhow::{bail, Context};
use children::{cpu_secs, machine_cpu_secs, Child, Memory, ScratchDir};
use clap::{ArgAction, Args, ValueEnum};
use client::{quantile_ms, LoadResult, LoadSpec, PacedBook};
use receiver::Receiver;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const WRITE_KEY: &str = "wk_bench";
const SECRET: &str = "s3cret";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// Acceptance → receiver latency at a paced rate.
    Latency,
    /// `/v1/track` throughput (one event per request).
    Track,
    /// `/v1/batch` throughput.
    Batch,
    /// Drain rate of a destination function's `onTrack` (one fetch per event).
    FnTrack,
    /// Drain rate of a destination function's `onBatch` (one fetch per batch).
    FnBatch,
    /// Drain rate of the webhooks destination, one event per request.
    Webhooks,
    /// Drain rate of the webhooks destination, `--fn-batch-size` events per request.
    WebhooksBatch,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Seconds measured per throughput phase.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of unmeasured warm-up before each throughput window.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Concurrent keep-alive connections of the throughput phases.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Events per `/v1/batch` request.
    #[arg(long, default_value_t = 100)]
    pub batch_events: usize,
    /// Approximate size of one event in bytes.
    #[arg(long, default_value_t = 500)]
    pub event_bytes: usize,
    /// Events per second of the paced delivery-latency phase.
    #[arg(long, default_value_t = 1000)]
    pub latency_rate: u64,
    /// Seconds of the paced delivery-latency phase.
    #[arg(long, default_value_t = 5.0)]
    pub latency_duration: f64,
    /// Connections of the paced delivery-latency phase.
    #[arg(long, default_value_t = 16)]
    pub latency_connections: usize,
    /// Phases to run: latency, track, batch (switchyard and the bare handler),
    /// then fn-track, fn-batch, webhooks, webhooks-batch (a fresh server each).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "latency,track,batch,fn-track,fn-batch,webhooks,webhooks-batch"
    )]
    pub phases: Vec<Phase>,
    /// Events ingested (through `/v1/batch`) for each destination phase.
    #[arg(long, default_value_t = 200_000)]
    pub drain_events: u64,
    /// Longest drain measured per destination phase, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub drain_duration: f64,
    /// `batch_size` of the `fn-batch` and `webhooks-batch` phases.
    #[arg(long, default_value_t = 100)]
    pub fn_batch_size: usize,
    /// `function_workers` of the server in the function phases (default: the server's, one per core).
    #[arg(long)]
    pub function_workers: Option<usize>,
    /// JavaScript file to use in the function phases instead of the built-in
    /// one. It gets `settings.url` (the receiver) and `settings.apiKey`; the
    /// receiver counts one event per request, or the `"messageId":` keys of a
    /// body that is a JSON array.
    #[arg(long)]
    pub function_file: Option<std::path::PathBuf>,
    /// Skip the bare-handler comparison.
    #[arg(long)]
    pub no_bare: bool,
    /// Rounds of the bare handler's and the ingest-only server's `track` and
    /// `batch` phases, taken in turn (bare, ingest-only, bare, …). The ratios
    /// and targets use the median of the rounds' pairs: on a machine whose
    /// speed drifts, both sides of a pair are measured seconds apart.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// fsync every group commit of the server under test (`--fsync false` to compare).
    #[arg(long, env = "SWITCHYARD_FSYNC", default_value_t = true, action = ArgAction::Set)]
    pub fsync: bool,
    /// Configure no destination: ingest alone (the latency phase is skipped).
    #[arg(long)]
    pub no_destination: bool,
    /// Skip the second run of `track`/`batch` on a server with no destination.
    #[arg(long)]
    pub no_ingest_only: bool,
    /// `batch_size` of the webhooks destination (events per webhook request).
    #[arg(long, default_value_t = 1)]
    pub delivery_batch_size: usize,
    /// Longest wait, in seconds, for the delivery backlog to drain between phases.
    #[arg(long, default_value_t = 15.0)]
    pub drain_timeout: f64,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Keep the scratch directory (data, configuration, logs) after the run.
    #[arg(long)]
    pub keep: bool,
    /// Skip the durable bare handler (the bare handler plus a group-committed
    /// `fdatasync` of every body, see `bench/durable_bare.rs`).
    #[arg(long)]
    pub no_durable_bare: bool,
    /// Internal: run as the bare handler.
    #[arg(long, hide = true)]
    pub bare_server: bool,
    /// Internal: with `--bare-server`, sync every body into this directory
    /// before answering.
    #[arg(long, hide = true)]
    pub durable_dir: Option<std::path::PathBuf>,
}

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the bench started (never 0, so 0 can mean "not yet").
pub(crate) fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// Position of `needle` in `haystack`.
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, _) = needle.split_first()?;
    let mut i = 0;
    while i + needle.len() <= haystack.len() {
        let p = haystack[i..].iter().position(|&b| b == first)?;
        i += p;
        if haystack.get(i..i + needle.len()) == Some(needle) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn progress(quiet: bool, msg: impl AsRef<str>) {
    if !quiet {
        eprintln!("bench: {}", msg.as_ref());
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// One closed-loop throughput measurement.
struct Throughput {
    server: &'static str,
    phase: Phase,
    per_request: usize,
    result: LoadResult,
    /// CPU cores used during the window (1.0 = one core busy).
    server_cpu: f64,
    bench_cpu: f64,
    /// CPU cores used by every other process of the machine during the window.
    other_cpu: f64,
    /// Events the receiver got per second during the window (switchyard only).
    delivered_per_sec: Option<f64>,
}

impl Throughput {
    fn endpoint(&self) -> &'static str {
        match self.phase {
            Phase::Batch => "/v1/batch",
            _ => "/v1/track",
        }
    }

    fn json(&self) -> Value {
        let r = &self.result;
        json!({
            "server": self.server,
            "endpoint": self.endpoint(),
            "events_per_request": self.per_request.max(1),
            "request_bytes": r.request_bytes,
            "requests_per_sec": r.requests_per_sec(),
            "events_per_sec": r.events_per_sec(),
            "latency_p50_ms": quantile_ms(&r.latencies_us, 0.50),
            "latency_p99_ms": quantile_ms(&r.latencies_us, 0.99),
            "latency_max_ms": quantile_ms(&r.latencies_us, 1.0),
            "ok_requests": r.ok_requests,
            "failed_requests": r.failed_requests,
            "first_error": r.first_error,
            "window_secs": r.window_secs,
            "server_cpu_cores": self.server_cpu,
            "bench_cpu_cores": self.bench_cpu,
            "other_processes_cpu_cores": self.other_cpu,
            "server_cpu_us_per_event": if r.ok_events > 0 { self.server_cpu * r.window_secs * 1e6 / r.ok_events as f64 } else { f64::NAN },
            "delivered_events_per_sec": self.delivered_per_sec,
        })
    }
}

/// The paced delivery-latency measurement.
struct Paced {
    rate: u64,
    scheduled: usize,
    accepted: usize,
    failed: u64,
    first_error: Option<String>,
    arrived: usize,
    arrived_before_ack: usize,
    duplicates: u64,
    /// Acceptance → arrival, microseconds, sorted.
    delivery_us: Vec<u32>,
    /// Send → 200, microseconds, sorted.
    ingest_us: Vec<u32>,
    achieved_rate: f64,
    server_cpu: f64,
    other_cpu: f64,
}

impl Paced {
    fn json(&self) -> Value {
        json!({
            "rate_per_sec": self.rate,
            "achieved_accepted_per_sec": self.achieved_rate,
            "scheduled": self.scheduled,
            "accepted": self.accepted,
            "failed": self.failed,
            "first_error": self.first_error,
            "arrived": self.arrived,
            "missing": self.accepted.saturating_sub(self.arrived),
            "arrived_before_200": self.arrived_before_ack,
            "delivered_twice": self.duplicates,
            "delivery_p50_ms": quantile_ms(&self.delivery_us, 0.50),
            "delivery_p99_ms": quantile_ms(&self.delivery_us, 0.99),
            "delivery_max_ms": quantile_ms(&self.delivery_us, 1.0),
            "ingest_p50_ms": quantile_ms(&self.ingest_us, 0.50),
            "ingest_p99_ms": quantile_ms(&self.ingest_us, 0.99),
            "server_cpu_cores": self.server_cpu,
            "other_processes_cpu_cores": self.other_cpu,
        })
    }
}

#[derive(Default)]
struct Report {
    throughput: Vec<Throughput>,
    paced: Option<Paced>,
    idle: Memory,
    peak: Memory,
    bare_idle: Option<Memory>,
    bare_peak: Option<Memory>,
    drains: Vec<Value>,
    /// Delivery alone, after the load: (events/s, server CPU cores).
    drain_rate: Option<(f64, f64)>,
    /// CPU cores busy on the machine in the second before the run.
    busy_before: f64,
    server_log_problems: Vec<String>,
    unsigned_deliveries: u64,
    /// The destination phases.
    destinations: Vec<destinations::Drain>,
}

/// `server`'s requests/s and events/s as fractions of the bare handler's.
fn ratio(server: &Throughput, bare: &Throughput) -> (f64, f64) {
    (
        server.result.requests_per_sec() / bare.result.requests_per_sec(),
        server.result.events_per_sec() / bare.result.events_per_sec(),
    )
}

/// The rows of the server with no destination (see the module comment).
const INGEST_ONLY: &str = "ingest-only";
/// The rows of the durable bare handler (see `bench/durable_bare.rs`).
const DURABLE_BARE: &str = "durable-bare";

impl Report {
    /// The rows of `server` in `phase`, one per round, in order.
    fn rows(&self, server: &str, phase: Phase) -> Vec<&Throughput> {
        self.throughput
            .iter()
            .filter(|t| t.server == server && t.phase == phase)
            .collect()
    }

    /// The median round of `server` in `phase` (by requests/s).
    fn find(&self, server: &str, phase: Phase) -> Option<&Throughput> {
        let mut rows = self.rows(server, phase);
        rows.sort_by(|a, b| {
            a.result
                .requests_per_sec()
                .total_cmp(&b.result.requests_per_sec())
        });
        rows.get(rows.len() / 2).copied()
    }

    /// switchyard's ingest alone: the `ingest-only` rows when they were
    /// measured, otherwise the main server's (which has no destination then).
    fn ingest(&self, phase: Phase) -> Option<&Throughput> {
        self.find(INGEST_ONLY, phase)
            .or_else(|| self.find("switchyard", phase))
    }

    /// `server` against `reference` (the bare handler, or the durable
    /// one): the median of the rounds' pairs when both ran the same rounds
    /// in turn, else of the medians.
    fn ratio_of(&self, server: &str, reference: &str, phase: Phase) -> Option<(f64, f64)> {
        let mut pairs = self.pairs(server, reference, phase);
        if pairs.is_empty() {
            return Some(ratio(
                self.find(server, phase)?,
                self.find(reference, phase)?,
            ));
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(pairs[pairs.len() / 2])
    }

    /// The ratios of each round of `server` to the round of `reference`
    /// taken just before it, when both ran the same rounds (at least two).
    fn pairs(&self, server: &str, reference: &str, phase: Phase) -> Vec<(f64, f64)> {
        let (rows, reference) = (self.rows(server, phase), self.rows(reference, phase));
        if rows.len() != reference.len() || rows.len() < 2 {
            return Vec::new();
        }
        rows.iter()
            .zip(&reference)
            .map(|(s, b)| ratio(s, b))
            .collect()
    }

    /// switchyard's ingest against `reference`.
    fn ratio(&self, reference: &str, phase: Phase) -> Option<(f64, f64)> {
        let server = self.ingest(phase)?.server;
        self.ratio_of(server, reference, phase)
    }
}

/// A target of the specification: (name, wanted, measured, met).
fn targets(report: &Report, args: &BenchArgs) -> Vec<(String, String, String, Option<bool>)> {
    let mut out = Vec::new();
    let batch = report.ingest(Phase::Batch);
    out.push((
        "durable events/s through /v1/batch".to_string(),
        ">= 250,000 events/s".to_string(),
        batch.map_or("not run".into(), |t| {
            format!(
                "{:.0} events/s{}",
                t.result.events_per_sec(),
                if args.fsync {
                    ""
                } else {
                    " (fsync off: not durable)"
                }
            )
        }),
        batch.map(|t| t.result.events_per_sec() >= 250_000.0 && args.fsync),
    ));
    let track = report.ratio("bare", Phase::Track);
    out.push((
        "/v1/track requests/s vs the bare handler".to_string(),
        ">= 50%".to_string(),
        track.map_or("not run".into(), |(r, _)| format!("{:.1}%", r * 100.0)),
        track.map(|(r, _)| r >= 0.5),
    ));
    let p99 = report.paced.as_ref().map(|p| {
        (
            quantile_ms(&p.delivery_us, 0.99),
            p.accepted.saturating_sub(p.arrived),
            p.rate,
        )
    });
    out.push((
        format!(
            "p99 acceptance -> receiver at {} events/s",
            args.latency_rate
        ),
        "< 50 ms".to_string(),
        p99.map_or("not run".into(), |(ms, missing, _)| {
            if missing > 0 {
                format!("{ms:.1} ms ({missing} never arrived)")
            } else {
                format!("{ms:.1} ms")
            }
        }),
        p99.map(|(ms, missing, rate)| ms < 50.0 && missing == 0 && rate >= 1000),
    ));
    out.push((
        "idle RSS of the server".to_string(),
        "< 30 MB".to_string(),
        if report.idle.rss > 0 {
            format!("{:.1} MB", mb(report.idle.rss))
        } else {
            "not run".to_string()
        },
        (report.idle.rss > 0).then_some(report.idle.rss < 30_000_000),
    ));
    out
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn machine() -> Value {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|v| v.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_total_bytes": mem_total,
    })
}

fn write_config(
    path: &std::path::Path,
    receiver: SocketAddr,
    args: &BenchArgs,
) -> anyhow::Result<()> {
    let mut text =
        format!("[[sources]]\nslug = \"web\"\nkind = \"tracking\"\nwrite_key = \"{WRITE_KEY}\"\n");
    if !args.no_destination {
        text.push_str(&format!(
            "\n[[destinations]]\nname = \"hook\"\nkind = \"webhooks\"\nsources = [\"web\"]\nurls = [\"http://{receiver}/hook\"]\nshared_secret = \"{SECRET}\"\nbatch_size = {}\n",
            args.delivery_batch_size.max(1)
        ));
        if args.delivery_batch_size > 1 {
            text.push_str("batch_max_wait_ms = 10\n");
        }
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Starts the bare handler (`bench --bare-server`), or with `durable` the
/// durable one, which syncs every body into that directory.
async fn start_bare(
    exe: &std::path::Path,
    scratch: &ScratchDir,
    durable: Option<&std::path::Path>,
    quiet: bool,
) -> anyhow::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--bare-server"]);
    let name = match durable {
        Some(dir) => {
            cmd.arg("--durable-dir").arg(dir);
            "durable bare handler"
        }
        None => "bare handler",
    };
    let log = scratch.path.join(format!("{}.log", name.replace(' ', "-")));
    // The durable one first writes and syncs its 64 MiB ring.
    let child = Child::spawn(name, cmd, &log, secs(30.0)).await?;
    progress(
        quiet,
        format!("{name}: pid {} on {}", child.pid, child.addr),
    );
    Ok(child)
}

/// Writes the config for `args` and starts `serve` on it; its config, data
/// directory and log in the scratch directory are named with `suffix`.
async fn start_server(
    exe: &std::path::Path,
    scratch: &ScratchDir,
    suffix: &str,
    receiver: SocketAddr,
    args: &BenchArgs,
) -> anyhow::Result<Child> {
    let config = scratch.path.join(format!("switchyard{suffix}.toml"));
    write_config(&config, receiver, args)?;
    Child::spawn(
        &format!("switchyard{suffix} server"),
        serve_command(
            exe,
            &config,
            &scratch.path.join(format!("data{suffix}")),
            args,
        ),
        &scratch.path.join(format!("server{suffix}.log")),
        secs(30.0),
    )
    .await
}

/// Runs one closed-loop phase against `target` and samples CPU and deliveries
/// at the edges of the measured window.
async fn throughput(
    args: &BenchArgs,
    target: &Child,
    server: &'static str,
    phase: Phase,
    id_prefix: String,
    receiver: Option<&Arc<Receiver>>,
) -> Throughput {
    let per_request = if phase == Phase::Batch {
        args.batch_events
    } else {
        0
    };
    let spec = LoadSpec {
        addr: target.addr,
        path: if phase == Phase::Batch {
            "/v1/batch"
        } else {
            "/v1/track"
        },
        write_key: WRITE_KEY.to_string(),
        per_request,
        event_bytes: args.event_bytes,
        connections: args.connections,
        warmup: secs(args.warmup),
        duration: secs(args.duration),
        id_prefix,
    };
    let start = Instant::now();
    let from = start + spec.warmup;
    let to = from + spec.duration;
    let pid = target.pid;
    let delivered = receiver.cloned();
    let sampler = tokio::spawn(async move {
        let sample = || {
            (
                cpu_secs(pid),
                cpu_secs(std::process::id()),
                delivered.as_ref().map(|r| r.events.load(Ordering::Relaxed)),
                Instant::now(),
                machine_cpu_secs().0,
            )
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(from)).await;
        let a = sample();
        tokio::time::sleep_until(tokio::time::Instant::from_std(to)).await;
        let b = sample();
        let wall = b.3.duration_since(a.3).as_secs_f64().max(1e-9);
        let delivered = match (a.2, b.2) {
            (Some(x), Some(y)) => Some((y - x) as f64 / wall),
            _ => None,
        };
        let (server, bench) = ((b.0 - a.0) / wall, (b.1 - a.1) / wall);
        let other = ((b.4 - a.4) / wall - server - bench).max(0.0);
        (server, bench, other, delivered)
    });
    let result = client::run_load(&spec, start).await;
    let (server_cpu, bench_cpu, other_cpu, delivered_per_sec) =
        sampler
            .await
            .unwrap_or((f64::NAN, f64::NAN, f64::NAN, None));
    Throughput {
        server,
        phase,
        per_request,
        result,
        server_cpu,
        bench_cpu,
        other_cpu,
        delivered_per_sec,
    }
}

/// Waits until the receiver has `accepted` events, at most `timeout`.
async fn drain(receiver: &Receiver, accepted: u64, timeout: Duration, after: &str) -> Value {
    let start = Instant::now();
    loop {
        let got = receiver.events.load(Ordering::Relaxed);
        if got >= accepted || start.elapsed() >= timeout {
            return json!({
                "after": after,
                "accepted_so_far": accepted,
                "delivered_so_far": got,
                "backlog": accepted.saturating_sub(got),
                "waited_secs": start.elapsed().as_secs_f64(),
                "drained": got >= accepted,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn paced(
    args: &BenchArgs,
    server: &Child,
    receiver: &Arc<Receiver>,
    prefix: &str,
    count: usize,
) -> Paced {
    let book = PacedBook::new(count);
    let cpu0 = server.cpu_secs();
    let own0 = cpu_secs(std::process::id());
    let machine0 = machine_cpu_secs().0;
    let t0 = Instant::now();
    let spec = client::PacedSpec {
        addr: server.addr,
        write_key: WRITE_KEY.to_string(),
        prefix: prefix.to_string(),
        event_bytes: args.event_bytes,
        rate: args.latency_rate,
        count,
        connections: args.latency_connections,
    };
    client::run_paced(&spec, book.clone()).await;
    let sending = t0.elapsed().as_secs_f64();
    let cpu = (server.cpu_secs() - cpu0) / sending.max(1e-9);
    let own = (cpu_secs(std::process::id()) - own0) / sending.max(1e-9);
    let other = ((machine_cpu_secs().0 - machine0) / sending.max(1e-9) - cpu - own).max(0.0);
    let accepted_idx: Vec<usize> = (0..count)
        .filter(|&n| book.accepted_ns[n].load(Ordering::Acquire) != 0)
        .collect();
    // Let the last events arrive.
    let deadline = Instant::now() + secs(args.drain_timeout);
    while Instant::now() < deadline
        && accepted_idx
            .iter()
            .any(|&n| receiver.arrived_ns[n].load(Ordering::Acquire) == 0)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut delivery_us = Vec::with_capacity(count);
    let mut arrived = 0;
    let mut before = 0;
    for &n in &accepted_idx {
        let acc = book.accepted_ns[n].load(Ordering::Acquire);
        let arr = receiver.arrived_ns[n].load(Ordering::Acquire);
        if arr == 0 {
            continue;
        }
        arrived += 1;
        if arr < acc {
            before += 1;
        }
        delivery_us.push((arr.saturating_sub(acc) / 1000).min(u64::from(u32::MAX)) as u32);
    }
    delivery_us.sort_unstable();
    let mut ingest_us = book.ingest_us.lock().map(|v| v.clone()).unwrap_or_default();
    ingest_us.sort_unstable();
    let first_error = book.first_error.lock().ok().and_then(|f| f.clone());
    Paced {
        rate: args.latency_rate,
        scheduled: count,
        accepted: accepted_idx.len(),
        failed: book.failed.load(Ordering::Relaxed),
        first_error,
        arrived,
        arrived_before_ack: before,
        duplicates: receiver.arrived_twice.load(Ordering::Relaxed),
        delivery_us,
        ingest_us,
        achieved_rate: accepted_idx.len() as f64 / sending.max(1e-9),
        server_cpu: cpu,
        other_cpu: other,
    }
}

fn serve_command(
    exe: &std::path::Path,
    config: &std::path::Path,
    data: &std::path::Path,
    args: &BenchArgs,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args([
            "--admin-token",
            &format!("bench-{:016x}", rand::random::<u64>()),
        ])
        .args(["--fsync", if args.fsync { "true" } else { "false" }])
        .env("SWITCHYARD_LOG", "warn");
    // The bench decides every setting of the server it measures.
    for var in [
        "SWITCHYARD_STORE",
        "SWITCHYARD_DEDUP_WINDOW",
        "SWITCHYARD_MAX_MESSAGE_BYTES",
        "SWITCHYARD_MAX_BATCH_BYTES",
        "SWITCHYARD_MAX_BATCH_EVENTS",
        "SWITCHYARD_LOG_FORMAT",
        "SWITCHYARD_MASTER_KEY",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    now_ns();
    if args.duration <= 0.0
        || args.connections == 0
        || args.batch_events == 0
        || args.latency_rate == 0
        || args.drain_events == 0
    {
        bail!("--duration, --connections, --batch-events, --latency-rate and --drain-events must be positive");
    }
    let quiet = false;
    let has = |p: Phase| args.phases.contains(&p);
    let exe = std::env::current_exe().context("cannot find the switchyard executable")?;
    // Declared first: dropped last, after the children are gone.
    let scratch = ScratchDir::new(args.keep)?;
    let run_id = format!("{:08x}", rand::random::<u32>());
    let paced_prefix = format!("lat{run_id}-");
    let paced_count = if has(Phase::Latency) && !args.no_destination {
        (args.latency_rate as f64 * args.latency_duration)
            .round()
            .max(1.0) as usize
    } else {
        0
    };
    let (receiver_addr, receiver) = receiver::start_receiver(&paced_prefix, paced_count).await?;
    let mut report = Report::default();
    let (busy0, _) = machine_cpu_secs();
    tokio::time::sleep(Duration::from_secs(1)).await;
    report.busy_before = machine_cpu_secs().0 - busy0;
    if report.busy_before > 0.1 {
        progress(
            quiet,
            format!(
                "warning: the machine is already {:.0}% busy (100% = one core): the figures will be low",
                report.busy_before * 100.0
            ),
        );
    }
    let loads: Vec<Phase> = [Phase::Track, Phase::Batch]
        .into_iter()
        .filter(|p| has(*p))
        .collect();

    // The bare handler and the ingest-only server (switchyard with no
    // destination) take the loads in turn, round after round, so that a
    // drift of the machine's speed falls on both sides of each pair alike.
    // Before the main server: the targets are read from these rows, and a
    // server started after another one has written gigabytes pays for that
    // writeback in its syncs (10-20% of `/v1/batch` in earlier runs).
    let mut bare = None;
    if !args.no_bare && !loads.is_empty() {
        let child = start_bare(&exe, &scratch, None, quiet).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        report.bare_idle = Some(child.memory());
        bare = Some(child);
    }
    let mut durable_bare = None;
    if !args.no_bare && !args.no_durable_bare && args.fsync && !loads.is_empty() {
        let dir = scratch.path.join(DURABLE_BARE);
        durable_bare = Some(start_bare(&exe, &scratch, Some(&dir), quiet).await?);
    }
    let alone = BenchArgs {
        no_destination: true,
        ..args.clone()
    };
    let mut ingest_only = None;
    if !args.no_destination && !args.no_ingest_only && !loads.is_empty() {
        ingest_only =
            Some(start_server(&exe, &scratch, "-ingest-only", receiver_addr, &alone).await?);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for &phase in &loads {
        for round in 0..args.rounds.max(1) {
            let turns = [
                (&mut bare, "bare", &args, "tp"),
                (&mut durable_bare, DURABLE_BARE, &args, "db"),
                (&mut ingest_only, INGEST_ONLY, &alone, "io"),
            ];
            for (child, name, child_args, prefix) in turns {
                let Some(child) = child.as_mut() else {
                    continue;
                };
                progress(
                    quiet,
                    format!(
                        "{name}: {phase:?} load, round {} of {}, {} connections",
                        round + 1,
                        args.rounds.max(1),
                        args.connections
                    ),
                );
                let t = throughput(
                    child_args,
                    child,
                    name,
                    phase,
                    format!("{prefix}{run_id}-{phase:?}-{round}"),
                    None,
                )
                .await;
                report.throughput.push(t);
                child.check_alive()?;
            }
        }
    }
    if let Some(child) = bare {
        report.bare_peak = Some(child.memory());
        child.stop(secs(5.0)).await;
    }
    if let Some(child) = durable_bare {
        child.stop(secs(5.0)).await;
    }
    if let Some(server) = ingest_only {
        server.stop(secs(5.0)).await;
    }

    if paced_count > 0 || !loads.is_empty() {
        let mut server = start_server(&exe, &scratch, "", receiver_addr, &args).await?;
        progress(
            quiet,
            format!(
                "switchyard: pid {} on {} (fsync={}, destination: {})",
                server.pid,
                server.addr,
                args.fsync,
                if args.no_destination {
                    "none".to_string()
                } else {
                    format!("webhooks -> {receiver_addr}")
                }
            ),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        report.idle = server.memory();
        let mut accepted: u64 = 0;

        if paced_count > 0 {
            progress(
                quiet,
                format!(
                    "switchyard: delivery latency, {} events/s for {}s",
                    args.latency_rate, args.latency_duration
                ),
            );
            let p = paced(&args, &server, &receiver, &paced_prefix, paced_count).await;
            server.check_alive()?;
            accepted += p.accepted as u64;
            report.paced = Some(p);
        }
        for (i, &phase) in loads.iter().enumerate() {
            if !args.no_destination && i > 0 {
                progress(
                    quiet,
                    "switchyard: waiting for the delivery backlog to drain",
                );
                let d = drain(
                    &receiver,
                    accepted,
                    secs(args.drain_timeout),
                    &format!("{:?}", loads[i - 1]),
                )
                .await;
                report.drains.push(d);
            }
            progress(
                quiet,
                format!(
                    "switchyard: {phase:?} load, {} connections",
                    args.connections
                ),
            );
            let t = throughput(
                &args,
                &server,
                "switchyard",
                phase,
                format!("tp{run_id}-{phase:?}"),
                (!args.no_destination).then_some(&receiver),
            )
            .await;
            accepted += t.result.total_ok_events;
            report.throughput.push(t);
            server.check_alive()?;
        }
        if !args.no_destination && !loads.is_empty() {
            // A short look at how far delivery is behind at the end.
            let d = drain(
                &receiver,
                accepted,
                Duration::from_millis(0),
                &format!("{:?}", loads[loads.len() - 1]),
            )
            .await;
            let backlog = d["backlog"].as_u64().unwrap_or(0);
            report.drains.push(d);
            if backlog > 0 {
                // With no ingest load: how fast does delivery alone go?
                let before = receiver.events.load(Ordering::Relaxed);
                let cpu0 = server.cpu_secs();
                let t0 = Instant::now();
                tokio::time::sleep(Duration::from_secs(3)).await;
                let wall = t0.elapsed().as_secs_f64();
                let rate = (receiver.events.load(Ordering::Relaxed) - before) as f64 / wall;
                report.drain_rate = Some((rate, (server.cpu_secs() - cpu0) / wall));
            }
        }
        report.peak = server.memory();
        report.unsigned_deliveries = receiver.unsigned.load(Ordering::Relaxed);
        let log_problems: Vec<String> = server
            .log_tail(10_000)
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .map(str::to_string)
            .collect();
        report.server_log_problems = log_problems;
        // On SIGTERM switchyard finishes the delivery requests in flight and
        // leaves the backlog behind its cursors; past 5 s it is killed (the
        // data is scratch).
        let status = server.stop(secs(5.0)).await;
        if let Some(s) = status.filter(|s| !s.success() && s.code().is_some()) {
            progress(quiet, format!("switchyard exited with {s}"));
        }
    }

    let drains: Vec<Phase> = destinations::PHASES
        .into_iter()
        .filter(|p| has(*p))
        .collect();
    for phase in drains {
        // The same message ids for every destination: each server is fresh.
        let d = destinations::run(
            &args,
            &exe,
            &scratch,
            receiver_addr,
            &receiver,
            phase,
            &format!("dr{run_id}"),
        )
        .await?;
        report.destinations.push(d);
    }

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(&report, &args))?
        );
    } else {
        print_table(&report, &args);
    }
    Ok(())
}

fn report_json(report: &Report, args: &BenchArgs) -> Value {
    let ratio = |reference: &str, p: Phase| {
        report.ratio(reference, p).map(|(r, e)| {
            let server = report.ingest(p).map_or("switchyard", |t| t.server);
            let rounds: Vec<f64> = report
                .pairs(server, reference, p)
                .iter()
                .map(|(r, _)| *r)
                .collect();
            json!({"requests": r, "events": e, "requests_per_round": rounds})
        })
    };
    json!({
        "machine": machine(),
        "machine_busy_before_run_cores": report.busy_before,
        "settings": {
            "duration_secs": args.duration,
            "warmup_secs": args.warmup,
            "connections": args.connections,
            "rounds": args.rounds,
            "batch_events": args.batch_events,
            "event_bytes": args.event_bytes,
            "latency_rate": args.latency_rate,
            "latency_duration_secs": args.latency_duration,
            "latency_connections": args.latency_connections,
            "fsync": args.fsync,
            "destination": !args.no_destination,
            "delivery_batch_size": args.delivery_batch_size,
            "drain_events": args.drain_events,
            "drain_duration_secs": args.drain_duration,
            "fn_batch_size": args.fn_batch_size,
            "function_workers": args.function_workers,
            "function_file": args.function_file,
        },
        "throughput": report.throughput.iter().map(Throughput::json).collect::<Vec<_>>(),
        "ratio_to_bare": {"track": ratio("bare", Phase::Track), "batch": ratio("bare", Phase::Batch)},
        "ratio_to_durable_bare": {
            "track": ratio(DURABLE_BARE, Phase::Track),
            "batch": ratio(DURABLE_BARE, Phase::Batch),
        },
        "delivery_latency": report.paced.as_ref().map(Paced::json),
        "delivery_backlog": report.drains,
        "delivery_without_ingest": report.drain_rate.map(|(r, c)| json!({"events_per_sec": r, "server_cpu_cores": c})),
        "memory": {
            "switchyard_idle_rss_bytes": report.idle.rss,
            "switchyard_peak_rss_bytes": report.peak.hwm,
            "bare_idle_rss_bytes": report.bare_idle.map(|m| m.rss),
            "bare_peak_rss_bytes": report.bare_peak.map(|m| m.hwm),
        },
        "destinations": report.destinations.iter().map(destinations::Drain::json).collect::<Vec<_>>(),
        "unsigned_deliveries": report.unsigned_deliveries,
        "server_log_problems": report.server_log_problems.iter().take(20).collect::<Vec<_>>(),
        "targets": targets(report, args).into_iter().map(|(name, want, got, met)| json!({
            "target": name, "wanted": want, "measured": got, "met": met,
        })).collect::<Vec<_>>(),
    })
}

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

fn print_table(report: &Report, args: &BenchArgs) {
    let m = machine();
    println!();
    println!(
        "switchyard bench: {} CPUs ({}), {:.1} GB RAM; load generator and servers share these CPUs",
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["mem_total_bytes"].as_u64().unwrap_or(0) as f64 / 1e9
    );
    println!(
        "  machine busy before the run: {:.0}% (100% = one core)",
        report.busy_before * 100.0
    );
    println!(
        "  {} connections, {}s measured per phase after {}s warm-up, ~{} B events, {} events per batch, fsync={}, destination: {}",
        args.connections,
        args.duration,
        args.warmup,
        args.event_bytes,
        args.batch_events,
        args.fsync,
        if args.no_destination { "none".to_string() } else { format!("webhooks, batch_size {}", args.delivery_batch_size) }
    );
    if !report.throughput.is_empty() {
        println!();
        println!(
            "{:<11} {:<10} {:>10} {:>11} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>9} {:>11}",
            "server",
            "endpoint",
            "req/s",
            "events/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "srv CPU",
            "gen CPU",
            "others",
            "µs/event",
            "delivered/s"
        );
        for t in &report.throughput {
            let r = &t.result;
            let per_event = if r.ok_events > 0 {
                t.server_cpu * r.window_secs * 1e6 / r.ok_events as f64
            } else {
                f64::NAN
            };
            println!(
                "{:<11} {:<10} {:>10.0} {:>11.0} {:>8} {:>8} {:>7} {:>7.0}% {:>7.0}% {:>7.0}% {:>9.1} {:>11}",
                t.server,
                t.endpoint(),
                r.requests_per_sec(),
                r.events_per_sec(),
                fmt_ms(quantile_ms(&r.latencies_us, 0.5)),
                fmt_ms(quantile_ms(&r.latencies_us, 0.99)),
                r.failed_requests,
                t.server_cpu * 100.0,
                t.bench_cpu * 100.0,
                t.other_cpu * 100.0,
                per_event,
                t.delivered_per_sec.map_or("-".to_string(), |d| format!("{d:.0}")),
            );
            if let Some(e) = &r.first_error {
                println!("            first error: {e}");
            }
        }
        println!("  (CPU: 100% = one core; gen = the bench process: load generator and webhook receiver;");
        println!("   others = every other process of the machine: above a few % the figures are disturbed)");
        let busiest = report
            .throughput
            .iter()
            .map(|t| t.other_cpu)
            .fold(0.0, f64::max);
        if busiest > 0.1 {
            println!(
                "  WARNING: other processes used up to {:.0}% CPU during a measured window; rerun on a quiet machine",
                busiest * 100.0
            );
        }
        if report.find(INGEST_ONLY, Phase::Track).is_some()
            || report.find(INGEST_ONLY, Phase::Batch).is_some()
        {
            println!("  ({INGEST_ONLY} = switchyard with no destination: parsing, validation and durable storage alone)");
        }
        if args.rounds > 1 && report.rows("bare", Phase::Track).len() > 1 {
            println!("  (bare, {DURABLE_BARE} and {INGEST_ONLY}: one row per round, in the order measured; ratios and targets use the median pair)");
        }
        if report.find(DURABLE_BARE, Phase::Track).is_some() {
            println!("  ({DURABLE_BARE} = the bare handler that answers once the body is written and fdatasynced, group-committed: the least any durable server pays here)");
        }
        let comparisons = [
            ("switchyard", "bare"),
            (INGEST_ONLY, "bare"),
            (DURABLE_BARE, "bare"),
            (INGEST_ONLY, DURABLE_BARE),
            ("switchyard", DURABLE_BARE),
        ];
        for (server, reference) in comparisons {
            for phase in [Phase::Track, Phase::Batch] {
                if let Some((req, ev)) = report.ratio_of(server, reference, phase) {
                    let rounds: Vec<String> = report
                        .pairs(server, reference, phase)
                        .iter()
                        .map(|(r, _)| format!("{:.1}%", r * 100.0))
                        .collect();
                    println!(
                        "  {server} / {reference} on {}: {:.1}% of requests/s, {:.1}% of events/s{}",
                        if phase == Phase::Batch {
                            "/v1/batch"
                        } else {
                            "/v1/track"
                        },
                        req * 100.0,
                        ev * 100.0,
                        if rounds.is_empty() {
                            String::new()
                        } else {
                            format!(" (median of the rounds: {})", rounds.join(", "))
                        }
                    );
                }
            }
        }
    }
    if let Some(p) = &report.paced {
        println!();
        println!(
            "delivery latency, acceptance (200 at the client) -> arrival at the receiver, /v1/track paced at {}/s for {}s:",
            p.rate, args.latency_duration
        );
        println!(
            "  accepted {} of {} ({:.0}/s), arrived {}, missing {}, failed {}; p50 {} ms, p99 {} ms, max {} ms",
            p.accepted,
            p.scheduled,
            p.achieved_rate,
            p.arrived,
            p.accepted.saturating_sub(p.arrived),
            p.failed,
            fmt_ms(quantile_ms(&p.delivery_us, 0.5)),
            fmt_ms(quantile_ms(&p.delivery_us, 0.99)),
            fmt_ms(quantile_ms(&p.delivery_us, 1.0)),
        );
        println!(
            "  ingest of those requests: p50 {} ms, p99 {} ms; server CPU {:.0}%, others {:.0}%; arrived before the client saw its 200: {}",
            fmt_ms(quantile_ms(&p.ingest_us, 0.5)),
            fmt_ms(quantile_ms(&p.ingest_us, 0.99)),
            p.server_cpu * 100.0,
            p.other_cpu * 100.0,
            p.arrived_before_ack
        );
        if let Some(e) = &p.first_error {
            println!("  first error: {e}");
        }
    }
    for d in &report.drains {
        println!(
            "  delivery after {}: {} accepted, {} delivered, backlog {} (waited {:.1}s)",
            d["after"].as_str().unwrap_or("?"),
            d["accepted_so_far"],
            d["delivered_so_far"],
            d["backlog"],
            d["waited_secs"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some((rate, cpu)) = report.drain_rate {
        println!(
            "  delivery alone (no ingest load, 3 s, backlog draining): {rate:.0} events/s at {:.0}% server CPU",
            cpu * 100.0
        );
    }
    if report.idle.rss > 0 {
        println!();
        print!(
            "memory: switchyard idle RSS {:.1} MB, peak RSS (VmHWM) {:.1} MB",
            mb(report.idle.rss),
            mb(report.peak.hwm)
        );
        if let (Some(i), Some(p)) = (report.bare_idle, report.bare_peak) {
            print!(
                "; bare handler idle {:.1} MB, peak {:.1} MB",
                mb(i.rss),
                mb(p.hwm)
            );
        }
        println!();
    }
    if report.unsigned_deliveries > 0 {
        println!(
            "warning: {} deliveries arrived without X-Signature",
            report.unsigned_deliveries
        );
    }
    if !report.server_log_problems.is_empty() {
        println!(
            "server log: {} warnings/errors, first:",
            report.server_log_problems.len()
        );
        for l in report.server_log_problems.iter().take(3) {
            println!("  {l}");
        }
    }
    destinations::print(&report.destinations, args);
    println!();
    println!(
        "{:<44} {:<20} {:<34} result",
        "target", "wanted", "measured"
    );
    for (name, want, got, met) in targets(report, args) {
        println!(
            "{:<44} {:<20} {:<34} {}",
            name,
            want,
            got,
            match met {
                Some(true) => "MET",
                Some(false) => "NOT MET",
                None => "-",
            }
        );
    }
}

async fn interrupted() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.bare_server {
        return receiver::bare_server(args.durable_dir.as_deref()).await;
    }
    // Dropping the bench future kills the children (their guards live in it).
    tokio::select! {
        r = bench(args) => r,
        _ = interrupted() => bail!("interrupted; the servers started for the run were stopped"),
    }
}
