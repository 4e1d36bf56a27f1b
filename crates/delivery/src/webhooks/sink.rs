//! Drives a Webhooks destination: reads the log through the destination's
//! cursor, sends, and records every outcome.
//!
//! Two loops per destination, so a backlog of failing retries never holds up
//! fresh events: the fresh loop follows the log (cursor advanced only after
//! each event is delivered, scheduled for retry or dead-lettered, in the same
//! transaction), and the retry loop works the retry schedule.

use super::config::{Fanout, WebhooksConfig};
use super::request_builder::{self, batch_body};
use super::service::{self, Sent};
use crate::breaker::{BreakerConfig, Gate, Health, UrlHealth};
use crate::retry::{classify, RetryPolicy, Verdict};
use futures_util::stream::{self, StreamExt};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Attempt, DeadLetter, DeliveryCommit, RetryEntry, Store, StoredEvent};
use tokio::sync::{watch, Notify};

/// Events read from the log per round.
const READ_LIMIT: usize = 2000;
/// Log positions scanned per round when looking for this destination's sources.
const SCAN_LIMIT: u64 = 100_000;

/// One unit of delivery: one event, or one batch, to one URL or all of them.
#[derive(Debug, Clone)]
struct Job {
    retry_id: i64,
    url: Option<String>,
    message_ids: Vec<String>,
    body: Vec<u8>,
    webhook_id: String,
    attempts: u32,
    first_attempt_ms: i64,
    /// When the oldest event of a fresh job was received (lag metric).
    received_ms: Option<i64>,
    last_status: Option<u16>,
    last_error: String,
}

#[derive(Debug)]
enum Resolution {
    Delivered,
    Schedule { next_ms: i64 },
    Dead { excerpt: String },
}

struct JobResult {
    job: Job,
    resolution: Resolution,
    attempts: Vec<Attempt>,
    disabled: Vec<(String, String)>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn instant_to_ms(at: Instant, now: Instant, now_ms: i64) -> i64 {
    now_ms + at.saturating_duration_since(now).as_millis() as i64
}

/// A running Webhooks destination.
pub struct WebhooksSink {
    config: WebhooksConfig,
    store: Arc<dyn Store>,
    client: reqwest::Client,
    health: UrlHealth,
    disabled: Mutex<HashSet<String>>,
    policy: RetryPolicy,
    retry_wake: Notify,
}

impl WebhooksSink {
    pub async fn new(config: WebhooksConfig, store: Arc<dyn Store>) -> Result<Arc<Self>, String> {
        config.validate()?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let client = service::client(timeout, config.ca_file.as_deref())
            .map_err(|e| format!("destination {:?}: {e}", config.name))?;
        // The cursor is fixed before any HTTP request is accepted, so a new
        // destination starts exactly at the head and never skips an event.
        store
            .init_cursor(&config.name)
            .await
            .map_err(|e| format!("destination {:?}: {e}", config.name))?;
        let disabled = store
            .disabled_urls(&config.name)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(url, _)| url)
            .collect();
        Ok(Arc::new(WebhooksSink {
            policy: config.retry_policy(),
            config,
            store,
            client,
            health: UrlHealth::new(BreakerConfig::default()),
            disabled: Mutex::new(disabled),
            retry_wake: Notify::new(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &WebhooksConfig {
        &self.config
    }

    /// Re-reads the disabled URLs from the store (after one was re-enabled).
    pub async fn reload_disabled(&self) -> Result<Vec<(String, String)>, store::StoreError> {
        let disabled = self.store.disabled_urls(&self.config.name).await?;
        if let Ok(mut set) = self.disabled.lock() {
            *set = disabled.iter().map(|(u, _)| u.clone()).collect();
        }
        Ok(disabled)
    }

    /// Wakes the retry loop (after a replay was requested).
    pub fn wake_retries(&self) {
        self.retry_wake.notify_one();
    }

    /// Starts both loops; they stop when `shutdown` turns true, after
    /// finishing (and recording) the round in progress.
    pub fn spawn(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let fresh = tokio::spawn(self.clone().fresh_loop(shutdown.clone()));
        let retries = tokio::spawn(self.clone().retry_loop(shutdown.clone()));
        let gauge = tokio::spawn(self.clone().gauge_loop(shutdown));
        vec![fresh, retries, gauge]
    }

    fn jobs_for(&self, events: &[StoredEvent]) -> Vec<Job> {
        let now = now_ms();
        let urls: Vec<Option<String>> = match self.config.fanout {
            Fanout::FirstSuccess => vec![None],
            Fanout::All => self.config.urls.iter().cloned().map(Some).collect(),
        };
        let mut jobs = Vec::new();
        for chunk in events.chunks(self.config.batch_size.max(1)) {
            let (body, webhook_id) = if self.config.batch_size == 1 {
                (
                    chunk[0].json.clone(),
                    format!("msg_{}", chunk[0].message_id),
                )
            } else {
                (
                    batch_body(chunk.iter().map(|e| e.json.as_slice())),
                    format!("batch_{}_{}", chunk[0].message_id, chunk.len()),
                )
            };
            for url in &urls {
                jobs.push(Job {
                    retry_id: 0,
                    url: url.clone(),
                    message_ids: chunk.iter().map(|e| e.message_id.clone()).collect(),
                    body: body.clone(),
                    webhook_id: webhook_id.clone(),
                    attempts: 0,
                    first_attempt_ms: now,
                    received_ms: chunk.iter().map(|e| e.received_ms).min(),
                    last_status: None,
                    last_error: String::new(),
                });
            }
        }
        jobs
    }

    fn is_disabled(&self, url: &str) -> bool {
        self.disabled
            .lock()
            .map(|d| d.contains(url))
            .unwrap_or(false)
    }

    async fn run_job(&self, mut job: Job) -> JobResult {
        let name = &self.config.name;
        let targets: Vec<String> = match &job.url {
            Some(u) => vec![u.clone()],
            None => self.config.urls.clone(),
        };
        let live: Vec<String> = targets
            .into_iter()
            .filter(|u| !self.is_disabled(u))
            .collect();
        if live.is_empty() {
            job.last_error =
                "every URL of this delivery is disabled (410 Gone); re-enable it to replay".into();
            return JobResult {
                job,
                resolution: Resolution::Dead {
                    excerpt: String::new(),
                },
                attempts: vec![],
                disabled: vec![],
            };
        }
        let now = Instant::now();
        let mut go = Vec::new();
        let mut wait_until: Option<Instant> = None;
        for url in live {
            match self.health.gate(&url, now) {
                Gate::Go => go.push(url),
                Gate::Wait(at) => wait_until = Some(wait_until.map_or(at, |w| w.min(at))),
            }
        }
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let timestamp = chrono::Utc::now().timestamp();
        let sends = go.iter().map(|url| {
            let request =
                request_builder::build(&self.config, url, &job.webhook_id, &job.body, timestamp);
            let client = &self.client;
            async move { (url.clone(), service::send(client, request, timeout).await) }
        });
        let sent: Vec<(String, Sent)> = futures_util::future::join_all(sends).await;

        let at_ms = now_ms();
        let mut attempts = Vec::new();
        let mut disabled = Vec::new();
        let (mut delivered, mut retry, mut retry_after) = (false, false, None::<Duration>);
        let mut excerpt = String::new();
        let mut first_failure: Option<(Option<u16>, String)> = None;
        for (url, s) in &sent {
            let verdict = classify(s.status, s.retry_after);
            let outcome = match &verdict {
                Verdict::Delivered => {
                    delivered = true;
                    self.health.record(url, Health::Alive, Instant::now());
                    "delivered"
                }
                Verdict::Retry {
                    retry_after: ra,
                    slow_down,
                } => {
                    retry = true;
                    if let Some(ra) = ra {
                        retry_after = Some(retry_after.map_or(*ra, |r: Duration| r.max(*ra)));
                    }
                    let health = if *slow_down {
                        Health::SlowDown(*ra)
                    } else {
                        Health::Failing
                    };
                    self.health.record(url, health, Instant::now());
                    "retry"
                }
                Verdict::Gone => {
                    self.health.record(url, Health::Alive, Instant::now());
                    let reason = format!("410 Gone at {}", spec::format_time(chrono::Utc::now()));
                    if let Ok(mut d) = self.disabled.lock() {
                        d.insert(url.clone());
                    }
                    tracing::warn!(destination = %name, url = %url, "receiver answered 410 Gone: URL disabled");
                    disabled.push((url.clone(), reason));
                    "gone"
                }
                Verdict::Reject => {
                    self.health.record(url, Health::Alive, Instant::now());
                    "rejected"
                }
            };
            if outcome != "delivered" {
                if first_failure.is_none() {
                    first_failure = Some((s.status, s.error.clone().unwrap_or_default()));
                }
                if excerpt.is_empty() {
                    excerpt = s.excerpt.clone();
                }
            }
            metrics::counter!("switchyard_delivery_attempts_total", "destination" => name.clone(), "outcome" => outcome).increment(1);
            metrics::histogram!("switchyard_delivery_attempt_seconds", "destination" => name.clone())
                .record(s.latency.as_secs_f64());
            attempts.push(Attempt {
                destination: name.clone(),
                url: url.clone(),
                message_id: job.message_ids.first().cloned().unwrap_or_default(),
                events: job.message_ids.len() as u32,
                at_ms,
                status: s.status,
                latency_ms: s.latency.as_millis() as u64,
                error: s.error.clone(),
                outcome: outcome.to_string(),
            });
        }
        if !sent.is_empty() {
            job.attempts += 1;
        }
        if let Some((status, error)) = first_failure {
            job.last_status = status;
            job.last_error = error;
        }
        let resolution = if delivered {
            Resolution::Delivered
        } else if retry || wait_until.is_some() {
            let now_i = Instant::now();
            let mut next_ms = i64::MAX;
            if retry {
                let delay = self
                    .policy
                    .delay(job.attempts.max(1))
                    .max(retry_after.unwrap_or_default());
                next_ms = at_ms + delay.as_millis() as i64;
            }
            if let Some(w) = wait_until {
                next_ms = next_ms.min(instant_to_ms(w, now_i, at_ms));
            }
            let deadline = job.first_attempt_ms + self.policy.max_age.as_millis() as i64;
            if next_ms > deadline {
                let age = Duration::from_millis((at_ms - job.first_attempt_ms).max(0) as u64);
                job.last_error = format!(
                    "gave up after {} attempts over {}s (max_retry_age {}s): {}",
                    job.attempts,
                    age.as_secs(),
                    self.policy.max_age.as_secs(),
                    if job.last_error.is_empty() {
                        "receiver unavailable"
                    } else {
                        &job.last_error
                    }
                );
                Resolution::Dead { excerpt }
            } else {
                if job.last_error.is_empty() {
                    job.last_error =
                        "deferred: receiver paused (circuit breaker or slow-down)".into();
                }
                Resolution::Schedule { next_ms }
            }
        } else {
            if job.last_status.is_some_and(|s| s != 410) {
                job.last_error = format!("{} (not retried)", job.last_error);
            }
            Resolution::Dead { excerpt }
        };
        JobResult {
            job,
            resolution,
            attempts,
            disabled,
        }
    }

    /// Runs jobs with bounded concurrency and folds their results into one commit.
    async fn run_round(&self, jobs: Vec<Job>, cursor: Option<u64>) -> DeliveryCommit {
        let name = self.config.name.clone();
        let mut commit = DeliveryCommit {
            destination: name.clone(),
            cursor,
            ..Default::default()
        };
        let results: Vec<JobResult> = stream::iter(jobs)
            .map(|job| self.run_job(job))
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        let now = now_ms();
        for r in results {
            commit.attempts.extend(r.attempts);
            commit.disabled_urls.extend(r.disabled);
            let events = r.job.message_ids.len() as u64;
            match r.resolution {
                Resolution::Delivered => {
                    metrics::counter!("switchyard_events_delivered_total", "destination" => name.clone()).increment(events);
                    if let Some(received) = r.job.received_ms {
                        metrics::histogram!("switchyard_delivery_lag_seconds", "destination" => name.clone())
                            .record((now - received).max(0) as f64 / 1000.0);
                    }
                    if r.job.retry_id != 0 {
                        commit.removed_retries.push(r.job.retry_id);
                    }
                }
                Resolution::Schedule { next_ms } => {
                    commit.retries.push(RetryEntry {
                        id: r.job.retry_id,
                        destination: name.clone(),
                        url: r.job.url,
                        message_ids: r.job.message_ids,
                        body: r.job.body,
                        webhook_id: r.job.webhook_id,
                        attempts: r.job.attempts,
                        first_attempt_ms: r.job.first_attempt_ms,
                        next_attempt_ms: next_ms,
                        last_status: r.job.last_status,
                        last_error: r.job.last_error,
                    });
                }
                Resolution::Dead { excerpt } => {
                    metrics::counter!("switchyard_events_dead_lettered_total", "destination" => name.clone()).increment(events);
                    tracing::warn!(destination = %name, message_id = %r.job.message_ids.first().map(String::as_str).unwrap_or(""),
                        attempts = r.job.attempts, error = %r.job.last_error, "delivery dead-lettered");
                    if r.job.retry_id != 0 {
                        commit.removed_retries.push(r.job.retry_id);
                    }
                    commit.dead_letters.push(DeadLetter {
                        id: 0,
                        destination: name.clone(),
                        url: r.job.url,
                        message_ids: r.job.message_ids,
                        body: r.job.body,
                        webhook_id: r.job.webhook_id,
                        attempts: r.job.attempts,
                        first_attempt_ms: r.job.first_attempt_ms,
                        failed_ms: now,
                        last_status: r.job.last_status,
                        last_error: r.job.last_error,
                        response_excerpt: excerpt,
                    });
                }
            }
        }
        commit
    }

    /// Writes a commit, retrying storage errors: what was sent must be recorded.
    async fn commit(&self, commit: DeliveryCommit) {
        let scheduled = commit.retries.iter().any(|r| r.id == 0);
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.store.commit_delivery(commit.clone()).await {
                Ok(_) => break,
                Err(store::StoreError::Closed) => return,
                Err(e) => {
                    tracing::error!(destination = %self.config.name, error = %e, "cannot record a delivery round; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if scheduled {
            self.retry_wake.notify_one();
        }
    }

    async fn fresh_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let name = self.config.name.clone();
        let mut head_rx = self.store.subscribe();
        let mut cursor = loop {
            match self.store.cursor(&name).await {
                Ok(c) => break c.unwrap_or(0),
                Err(e) => {
                    tracing::error!(destination = %name, error = %e, "cannot read the cursor; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if *shutdown.borrow() {
                        return;
                    }
                }
            }
        };
        let batch_wait = Duration::from_millis(self.config.batch_max_wait_ms);
        let read_limit = READ_LIMIT.max(self.config.batch_size * 4);
        loop {
            let stopping = *shutdown.borrow();
            let head = *head_rx.borrow_and_update();
            if head <= cursor {
                if stopping {
                    return;
                }
                tokio::select! {
                    _ = head_rx.changed() => continue,
                    _ = shutdown.changed() => continue,
                }
            }
            let (events, scanned_to) = match self
                .store
                .read_events(&self.config.sources, cursor, SCAN_LIMIT, read_limit)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(destination = %name, error = %e, "cannot read the event log; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Batch mode: wait (bounded) for a partial batch to fill up.
            if !stopping && !events.is_empty() && events.len() < self.config.batch_size {
                let oldest = events[0].received_ms;
                let wait_ms = oldest + batch_wait.as_millis() as i64 - now_ms();
                if wait_ms > 0 {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
                        _ = head_rx.changed() => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            }
            if !self.config.enabled {
                // A disabled destination keeps its cursor: nothing is skipped.
                if stopping {
                    return;
                }
                let _ = shutdown.changed().await;
                continue;
            }
            let jobs = self.jobs_for(&events);
            let commit = self.run_round(jobs, Some(scanned_to)).await;
            self.commit(commit).await;
            cursor = scanned_to;
        }
    }

    async fn retry_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let name = self.config.name.clone();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let due = match self.store.due_retries(&name, now_ms(), 512).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(destination = %name, error = %e, "cannot read the retry schedule");
                    Vec::new()
                }
            };
            if !due.is_empty() && self.config.enabled {
                let jobs = due
                    .into_iter()
                    .map(|r| Job {
                        retry_id: r.id,
                        url: r.url,
                        message_ids: r.message_ids,
                        body: r.body,
                        webhook_id: r.webhook_id,
                        attempts: r.attempts,
                        first_attempt_ms: r.first_attempt_ms,
                        received_ms: None,
                        last_status: r.last_status,
                        last_error: r.last_error,
                    })
                    .collect();
                let commit = self.run_round(jobs, None).await;
                self.commit(commit).await;
                continue;
            }
            let next = self.store.next_retry_ms(&name).await.ok().flatten();
            let wait = next
                .map(|n| Duration::from_millis((n - now_ms()).max(0) as u64))
                .unwrap_or(Duration::from_secs(5))
                .clamp(Duration::from_millis(5), Duration::from_secs(5));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.retry_wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn gauge_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let name = self.config.name.clone();
        loop {
            let backlog = self.store.backlog(&name).await.unwrap_or(0);
            let retries = self.store.retry_count(&name).await.unwrap_or(0);
            metrics::gauge!("switchyard_queue_depth", "destination" => name.clone())
                .set(backlog as f64);
            metrics::gauge!("switchyard_retry_queue_depth", "destination" => name.clone())
                .set(retries as f64);
            for url in &self.config.urls {
                metrics::gauge!("switchyard_circuit_open", "destination" => name.clone(), "url" => url.clone())
                    .set(if self.health.is_open(url) { 1.0 } else { 0.0 });
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
