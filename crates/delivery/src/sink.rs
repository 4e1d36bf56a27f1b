//! The one driver every destination kind shares (the Vector pattern: one
//! shape for every sink). A [`Sink`] follows the log through the
//! destination's cursor and works its retry schedule; a [`Transport`] (one
//! per kind: webhooks, function) delivers one job and says what happened.
//!
//! Two loops per destination, so a backlog of failing retries never holds up
//! fresh events: the fresh loop follows the log (cursor advanced only after
//! each event is delivered, scheduled for retry, skipped or dead-lettered, in
//! the same transaction), and the retry loop works the retry schedule.

use crate::retry::RetryPolicy;
use futures_util::stream::{self, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Attempt, DeadLetter, DeliveryCommit, RetryEntry, Store, StoredEvent};
use tokio::sync::{watch, Notify};

/// Events read from the log per round.
const READ_LIMIT: usize = 2000;
/// A round of the log stops taking jobs after this long, and what it did is
/// committed: a slow destination (a function whose upstream takes 300 ms)
/// would otherwise hold a round of 2000 events for minutes, with its cursor,
/// attempts and metrics standing still, and a crash would send all of it
/// again. The jobs not taken are read again by the next round.
const ROUND_TIME: Duration = Duration::from_secs(1);
/// Log positions scanned per round when looking for this destination's sources.
const SCAN_LIMIT: u64 = 100_000;

/// One unit of delivery: one event, or one batch, to one target or all of them.
#[derive(Debug, Clone)]
pub struct Job {
    /// The retry entry this job came from; 0 for a fresh job.
    pub retry_id: i64,
    /// The URL of a `fanout = "all"` webhooks delivery; `None` otherwise.
    pub url: Option<String>,
    pub message_ids: Vec<String>,
    /// One event's JSON, or a JSON array of events.
    pub body: Vec<u8>,
    pub webhook_id: String,
    pub attempts: u32,
    pub first_attempt_ms: i64,
    /// When the oldest event of a fresh job was received (lag metric).
    pub received_ms: Option<i64>,
    /// Log position of the job's first event (fresh jobs; 0 for retries).
    pub first_seq: u64,
    pub last_status: Option<u16>,
    pub last_error: String,
}

/// What becomes of a job after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    Delivered,
    Schedule {
        next_ms: i64,
    },
    Dead {
        excerpt: String,
    },
    /// Resolved without delivery, on purpose (no handler, `DropEvent`): recorded, not retried.
    Skipped {
        reason: &'static str,
    },
}

/// What a transport reports for one job. Usually one outcome; a partially
/// failed batch splits into several.
#[derive(Debug)]
pub struct JobResult {
    pub outcomes: Vec<(Job, Resolution)>,
    pub attempts: Vec<Attempt>,
    /// URLs switched off (410 Gone): (url, reason).
    pub disabled: Vec<(String, String)>,
}

/// Delivers jobs for one destination kind.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Targets each event is delivered to as separate jobs (`[None]`: one job).
    fn fanout_targets(&self) -> Vec<Option<String>>;
    /// One attempt at a job.
    async fn deliver(&self, job: Job) -> JobResult;
    /// Re-reads disabled targets from the store; returns them.
    async fn reload_disabled(&self) -> Result<Vec<(String, String)>, store::StoreError> {
        Ok(Vec::new())
    }
    /// Publishes kind-specific gauges.
    fn report_gauges(&self, _destination: &str) {}
}

/// How a sink reads and batches, whatever its kind.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub name: String,
    pub sources: Vec<String>,
    pub batch_size: usize,
    pub batch_max_wait_ms: u64,
    pub concurrency: usize,
    pub enabled: bool,
    /// Events that do not pass are not delivered (the cursor moves past them).
    pub filter: Option<crate::filter::Filter>,
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn instant_to_ms(at: Instant, now: Instant, now_ms: i64) -> i64 {
    now_ms + at.saturating_duration_since(now).as_millis() as i64
}

/// The resolution of a failed attempt that may be retried: scheduled within
/// the policy's maximum age, dead-lettered beyond it. A retry that would
/// fall past the maximum age is brought forward to it, so the last try is
/// made at the end of the window (a long backoff or an open circuit breaker
/// never gives up before `max_retry_age` has passed).
pub(crate) fn retry_or_give_up(
    policy: &RetryPolicy,
    job: &mut Job,
    at_ms: i64,
    retry_after: Option<Duration>,
    not_before_ms: Option<i64>,
    retried: bool,
    excerpt: String,
) -> Resolution {
    let mut next_ms = i64::MAX;
    if retried {
        let delay = policy
            .delay(job.attempts.max(1))
            .max(retry_after.unwrap_or_default());
        next_ms = at_ms + delay.as_millis() as i64;
    }
    if let Some(w) = not_before_ms {
        next_ms = next_ms.min(w);
    }
    let deadline = job.first_attempt_ms + policy.max_age.as_millis() as i64;
    next_ms = next_ms.min(deadline);
    if at_ms >= deadline {
        let age = Duration::from_millis((at_ms - job.first_attempt_ms).max(0) as u64);
        job.last_error = format!(
            "gave up after {} attempts over {}s (max_retry_age {}s): {}",
            job.attempts,
            age.as_secs(),
            policy.max_age.as_secs(),
            if job.last_error.is_empty() {
                "receiver unavailable"
            } else {
                &job.last_error
            }
        );
        Resolution::Dead { excerpt }
    } else {
        if job.last_error.is_empty() {
            job.last_error = "deferred: receiver paused (circuit breaker or slow-down)".into();
        }
        Resolution::Schedule { next_ms }
    }
}

struct JobOutcome {
    job: Job,
}

/// A running destination: its settings, its store and its transport.
pub struct Sink {
    settings: SinkSettings,
    store: Arc<dyn Store>,
    transport: Arc<dyn Transport>,
    retry_wake: Notify,
}

impl Sink {
    /// Fixes the cursor before any HTTP request is accepted, so a new
    /// destination starts exactly at the head and never skips an event.
    pub async fn new(
        settings: SinkSettings,
        store: Arc<dyn Store>,
        transport: Arc<dyn Transport>,
    ) -> Result<Arc<Sink>, String> {
        store
            .init_cursor(&settings.name)
            .await
            .map_err(|e| format!("destination {:?}: {e}", settings.name))?;
        Ok(Arc::new(Sink {
            settings,
            store,
            transport,
            retry_wake: Notify::new(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    pub fn settings(&self) -> &SinkSettings {
        &self.settings
    }

    /// Re-reads the disabled URLs from the store (after one was re-enabled).
    pub async fn reload_disabled(&self) -> Result<Vec<(String, String)>, store::StoreError> {
        self.transport.reload_disabled().await
    }

    /// Wakes the retry loop (after a replay was requested).
    pub fn wake_retries(&self) {
        self.retry_wake.notify_one();
    }

    /// Starts the loops; they stop when `shutdown` turns true, after
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
        let filtered: Vec<StoredEvent>;
        let events = match &self.settings.filter {
            None => events,
            Some(filter) => {
                filtered = events
                    .iter()
                    .filter(|e| {
                        serde_json::from_slice::<serde_json::Value>(&e.json)
                            .is_ok_and(|v| filter.matches(&v))
                    })
                    .cloned()
                    .collect();
                let skipped = events.len() - filtered.len();
                if skipped > 0 {
                    metrics::counter!("switchyard_events_filtered_total", "destination" => self.settings.name.clone())
                        .increment(skipped as u64);
                }
                &filtered
            }
        };
        let now = now_ms();
        let targets = self.transport.fanout_targets();
        let mut jobs = Vec::new();
        for chunk in events.chunks(self.settings.batch_size.max(1)) {
            // Unique across the destination's sources (a messageId is unique
            // only within its source; slugs never hold a '.'), and the same
            // on every retry and replay of the message.
            let first = &chunk[0];
            let (body, webhook_id) = if self.settings.batch_size == 1 {
                (
                    first.json.clone(),
                    format!("msg_{}.{}", first.source, first.message_id),
                )
            } else {
                (
                    crate::webhooks::request_builder::batch_body(
                        chunk.iter().map(|e| e.json.as_slice()),
                    ),
                    format!(
                        "batch_{}.{}_{}",
                        first.source,
                        first.message_id,
                        chunk.len()
                    ),
                )
            };
            for target in &targets {
                jobs.push(Job {
                    retry_id: 0,
                    url: target.clone(),
                    message_ids: chunk.iter().map(|e| e.message_id.clone()).collect(),
                    body: body.clone(),
                    webhook_id: webhook_id.clone(),
                    attempts: 0,
                    first_attempt_ms: now,
                    received_ms: chunk.iter().map(|e| e.received_ms).min(),
                    first_seq: chunk[0].seq,
                    last_status: None,
                    last_error: String::new(),
                });
            }
        }
        jobs
    }

    /// Runs jobs with bounded concurrency and folds their results into one commit.
    ///
    /// On shutdown, or once a round of the log has run [`ROUND_TIME`], no
    /// new job is started (those in flight finish); the cursor then stops
    /// before the first job not attempted, so the rest is taken by the next
    /// round (or at the next start).
    async fn run_round(
        &self,
        jobs: Vec<Job>,
        cursor: Option<u64>,
        shutdown: &watch::Receiver<bool>,
    ) -> DeliveryCommit {
        let name = self.settings.name.clone();
        let firsts: Vec<u64> = jobs.iter().map(|j| j.first_seq).collect();
        let attempted: Vec<usize> = Vec::new();
        let attempted = std::sync::Mutex::new(attempted);
        let started = Instant::now();
        // Rounds of the log (with a cursor) end on time; a round of due
        // retries is bounded by the retries due.
        let timed = cursor.is_some();
        let results: Vec<JobResult> = stream::iter(jobs.into_iter().enumerate())
            .take_while(|(i, _)| {
                // A round ends on time only between chunks of the log: the
                // jobs of one chunk (one per URL with `fanout = "all"`) are
                // all taken, or the chunk is read again and some URL gets
                // it twice.
                let new_chunk = *i == 0 || firsts[*i] != firsts[*i - 1];
                let on_time = !timed || !new_chunk || started.elapsed() < ROUND_TIME;
                std::future::ready(!*shutdown.borrow() && (*i == 0 || on_time))
            })
            .map(|(i, job)| {
                if let Ok(mut a) = attempted.lock() {
                    a.push(i);
                }
                self.transport.deliver(job)
            })
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        let attempted = attempted.into_inner().unwrap_or_default();
        let cursor = match cursor {
            Some(c) if attempted.len() < firsts.len() => {
                let done: std::collections::HashSet<usize> = attempted.into_iter().collect();
                let first_left = (0..firsts.len())
                    .filter(|i| !done.contains(i))
                    .map(|i| firsts[i])
                    .min()
                    .unwrap_or(c + 1);
                Some(first_left.saturating_sub(1).min(c))
            }
            other => other,
        };
        let mut commit = DeliveryCommit {
            destination: name.clone(),
            cursor,
            ..Default::default()
        };
        let now = now_ms();
        let outcomes: Vec<(Job, Resolution)> = results
            .into_iter()
            .flat_map(|r| {
                commit.attempts.extend(r.attempts);
                commit.disabled_urls.extend(r.disabled);
                r.outcomes
            })
            .collect();
        for (job, resolution) in outcomes {
            let r = JobOutcome { job };
            let events = r.job.message_ids.len() as u64;
            match resolution {
                Resolution::Skipped { reason } => {
                    metrics::counter!("switchyard_events_skipped_total", "destination" => name.clone(), "reason" => reason).increment(events);
                    if r.job.retry_id != 0 {
                        commit.removed_retries.push(r.job.retry_id);
                    }
                }
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
                    tracing::error!(destination = %self.settings.name, error = %e, "cannot record a delivery round; retrying");
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
        let name = self.settings.name.clone();
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
        let batch_wait = Duration::from_millis(self.settings.batch_max_wait_ms);
        let read_limit = READ_LIMIT.max(self.settings.batch_size * 4);
        loop {
            // Stopping: the round in progress was recorded; what is left of
            // the backlog stays behind the cursor and resumes at the next start.
            if *shutdown.borrow() {
                return;
            }
            let head = *head_rx.borrow_and_update();
            if head <= cursor {
                tokio::select! {
                    _ = head_rx.changed() => continue,
                    _ = shutdown.changed() => continue,
                }
            }
            let (events, scanned_to) = match self
                .store
                .read_events(&self.settings.sources, cursor, SCAN_LIMIT, read_limit)
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
            if !events.is_empty() && events.len() < self.settings.batch_size {
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
            if !self.settings.enabled {
                // A disabled destination keeps its cursor: nothing is skipped.
                let _ = shutdown.changed().await;
                continue;
            }
            let jobs = self.jobs_for(&events);
            let commit = self.run_round(jobs, Some(scanned_to), &shutdown).await;
            let reached = commit.cursor.unwrap_or(scanned_to);
            self.commit(commit).await;
            cursor = reached;
        }
    }

    async fn retry_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let name = self.settings.name.clone();
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
            if !due.is_empty() && self.settings.enabled {
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
                        first_seq: 0,
                        last_status: r.last_status,
                        last_error: r.last_error,
                    })
                    .collect();
                let commit = self.run_round(jobs, None, &shutdown).await;
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
        let name = self.settings.name.clone();
        loop {
            let backlog = self.store.backlog(&name).await.unwrap_or(0);
            let retries = self.store.retry_count(&name).await.unwrap_or(0);
            metrics::gauge!("switchyard_queue_depth", "destination" => name.clone())
                .set(backlog as f64);
            metrics::gauge!("switchyard_retry_queue_depth", "destination" => name.clone())
                .set(retries as f64);
            self.transport.report_gauges(&name);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(first_attempt_ms: i64, attempts: u32) -> Job {
        Job {
            retry_id: 1,
            url: None,
            message_ids: vec!["m".into()],
            body: b"{}".to_vec(),
            webhook_id: "msg_m".into(),
            attempts,
            first_attempt_ms,
            received_ms: None,
            first_seq: 0,
            last_status: Some(500),
            last_error: "HTTP 500".into(),
        }
    }

    #[test]
    fn the_last_retry_is_made_at_the_end_of_the_window_not_given_up_before() {
        let policy = RetryPolicy {
            initial: Duration::from_secs(16),
            max_delay: Duration::from_secs(600),
            max_age: Duration::from_secs(60),
        };
        // 30 s in, a backoff of at least 16 s: it would have given up at once.
        let at = 30_000;
        let r = retry_or_give_up(&policy, &mut job(0, 3), at, None, None, true, String::new());
        let Resolution::Schedule { next_ms } = r else {
            panic!("{r:?}")
        };
        assert!(next_ms > at && next_ms <= 60_000, "{next_ms}");
        // A circuit breaker that stays open past the window: the same.
        let r = retry_or_give_up(
            &policy,
            &mut job(0, 1),
            at,
            None,
            Some(90_000),
            false,
            String::new(),
        );
        assert_eq!(r, Resolution::Schedule { next_ms: 60_000 });
        // At the end of the window it is dead-lettered, with its last error.
        let mut late = job(0, 6);
        let r = retry_or_give_up(&policy, &mut late, 60_000, None, None, true, "oops".into());
        assert_eq!(
            r,
            Resolution::Dead {
                excerpt: "oops".into()
            }
        );
        assert!(
            late.last_error
                .starts_with("gave up after 6 attempts over 60s"),
            "{}",
            late.last_error
        );
    }
}
