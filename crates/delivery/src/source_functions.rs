//! Runs source functions over the raw requests stored by the function
//! endpoints, and turns what they emit into events in the log.
//!
//! The HTTP door stores each raw request durably before answering; this
//! worker runs the source's function on it (in the functions pool), validates
//! and normalizes the messages with the spec crate, and stores them with the
//! request's completion in one transaction. A failed run is retried with
//! exponential backoff (5 attempts, as Segment does), then dead-lettered with
//! its error: never dropped. A function that keeps failing is paused with a
//! visible reason, so one broken function cannot eat the worker pool.

use functions::{FunctionCode, FunctionError, HttpAnswer, Limits, Pool, RawRequest, SourceOutcome};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{FunctionLog, NewEvent, RawRecord, Store};
use tokio::sync::{watch, Notify};

/// Attempts before a raw request is dead-lettered (Segment: 5).
pub const MAX_ATTEMPTS: u32 = 5;
/// Requests in a row whose first run failed, after which a function is
/// marked degraded (a retry that succeeds makes it healthy again).
pub const DEGRADED_AFTER: u32 = 5;
/// Requests in a row whose first run failed, after which a function is paused.
pub const PAUSED_AFTER: u32 = 25;

/// A function source as configured.
#[derive(Debug, Clone)]
pub struct SourceFunction {
    pub slug: String,
    pub code: Arc<FunctionCode>,
    pub settings: Value,
    pub limits: Limits,
    /// Run inline and answer the sender with what the function returns.
    pub respond_inline: bool,
    /// Values of encrypted settings: redacted from logs and errors.
    pub secrets: Vec<String>,
    /// Keep every request in the catcher (`false`: only during a capture window).
    pub capture_always: bool,
    /// Why the function cannot run (it does not load, or the source's
    /// settings do not fit it): its requests wait, as when paused.
    pub unavailable: Option<String>,
}

impl SourceFunction {
    /// `respond` as configured: `function` (the function answers the
    /// sender) or `ack`.
    pub fn respond_mode(&self) -> &'static str {
        if self.respond_inline {
            "function"
        } else {
            "ack"
        }
    }

    /// `capture` as configured: `always` or `window`.
    pub fn capture_mode(&self) -> &'static str {
        if self.capture_always {
            "always"
        } else {
            "window"
        }
    }

    /// Replaces every secret value in `text` with `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        redact(&self.secrets, text)
    }

    /// [`redact_requests`] with this source's secrets.
    pub fn redact_requests(
        &self,
        requests: &[functions::RecordedRequest],
    ) -> Vec<functions::RecordedRequest> {
        redact_requests(&self.secrets, requests)
    }
}

/// Replaces every non-empty secret in `text` with `[redacted]`.
pub fn redact(secrets: &[String], text: &str) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(s.as_str(), "[redacted]");
    }
    out
}

/// The credentials of a stored request that the function sees but the
/// logs, errors and API must not show: the function token of its URL
/// (`/functions/{source}/{token}` or `?token=`), as written there and
/// decoded, and the sender's `Authorization` value with its credential
/// part (`Bearer abc` → also `abc`), since a function may log either.
pub fn request_credentials(request: &functions::RawRequest) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(url) = url::Url::parse(&request.url) {
        if let Some(segments) = url.path_segments() {
            let segments: Vec<&str> = segments.collect();
            if let ["functions", _, token] = segments.as_slice() {
                found.push(token.to_string());
                found.extend(percent_decoded(token).filter(|decoded| decoded.as_str() != *token));
            }
        }
        for pair in url.query().unwrap_or("").split('&') {
            if let Some(raw) = pair.strip_prefix("token=") {
                found.push(raw.to_string());
                found.extend(percent_decoded(&raw.replace('+', " ")));
            }
        }
    }
    for (name, value) in &request.headers {
        if name.eq_ignore_ascii_case("authorization") {
            found.push(value.clone());
            if let Some((_, credential)) = value.trim().split_once(' ') {
                found.push(credential.trim().to_string());
            }
        }
    }
    found.retain(|s| !s.is_empty());
    found.sort();
    found.dedup();
    // The longest first: a credential inside another is replaced after it.
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found
}

fn percent_decoded(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|d| d.into_owned())
}

/// The requests a test run made, with every secret replaced by `[redacted]`
/// (URL, header values and body): the usual place of a key is a header.
pub fn redact_requests(
    secrets: &[String],
    requests: &[functions::RecordedRequest],
) -> Vec<functions::RecordedRequest> {
    requests
        .iter()
        .map(|r| functions::RecordedRequest {
            method: r.method.clone(),
            url: redact(secrets, &r.url),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), redact(secrets, v)))
                .collect(),
            body: redact(secrets, &r.body),
        })
        .collect()
}

/// Health of a source's function, as shown by the API and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FunctionHealth {
    /// `healthy`, `degraded`, `paused` (failed too often: resumed by the
    /// API) or `failed` (cannot run: fixed by a deploy or a settings change).
    pub status: &'static str,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

/// Works the raw-request queue of every function source.
pub struct SourceRunner {
    store: Arc<dyn Store>,
    pool: Arc<Pool>,
    sources: std::sync::RwLock<HashMap<String, SourceFunction>>,
    spec_limits: spec::Limits,
    health: Mutex<HashMap<String, FunctionHealth>>,
    wake: Notify,
    /// Delay before the first retry of a failed run (default 1 s).
    pub retry_initial: Duration,
}

/// The store's meta key holding a source's pause (kept across restarts).
fn pause_key(slug: &str) -> String {
    format!("source_function_paused:{slug}")
}

/// The health of a source as it starts.
fn initial_health(source: &SourceFunction) -> FunctionHealth {
    match &source.unavailable {
        Some(reason) => FunctionHealth {
            status: "failed",
            consecutive_failures: 0,
            last_error: Some(reason.clone()),
        },
        None => FunctionHealth {
            status: "healthy",
            ..Default::default()
        },
    }
}

/// Exponential backoff between runs of one request: 1, 2, 4, 8 × `initial`.
fn backoff(initial: Duration, attempts: u32) -> Duration {
    initial * (1u32 << attempts.saturating_sub(1).min(10))
}

fn to_logs(lines: &[functions::LogLine]) -> Vec<FunctionLog> {
    lines
        .iter()
        .map(|l| FunctionLog {
            at_ms: l.at_ms,
            level: l.level.clone(),
            message: l.message.clone(),
        })
        .collect()
}

/// Validates and normalizes what a function emitted: all or nothing.
pub fn normalize_emitted(
    messages: &[Value],
    limits: &spec::Limits,
) -> Result<Vec<NewEvent>, FunctionError> {
    let ctx = spec::RequestContext::new(chrono::Utc::now(), limits);
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            spec::normalize(m.clone(), None, &ctx)
                .map(|n| NewEvent {
                    message_id: n.message_id,
                    user_id: n.user_id,
                    json: n.json,
                })
                .map_err(|e| FunctionError {
                    kind: functions::ErrorKind::Thrown,
                    name: "ValidationError".into(),
                    message: format!("emitted message {i} is invalid: {}", e.message),
                    line: None,
                    stack: String::new(),
                })
        })
        .collect()
}

impl SourceRunner {
    pub fn new(
        store: Arc<dyn Store>,
        pool: Arc<Pool>,
        sources: Vec<SourceFunction>,
        spec_limits: spec::Limits,
        retry_initial: Duration,
    ) -> Arc<SourceRunner> {
        let health = sources
            .iter()
            .map(|s| (s.slug.clone(), initial_health(s)))
            .collect();
        Arc::new(SourceRunner {
            store,
            pool,
            sources: std::sync::RwLock::new(
                sources.into_iter().map(|s| (s.slug.clone(), s)).collect(),
            ),
            spec_limits,
            health: Mutex::new(health),
            wake: Notify::new(),
            retry_initial,
        })
    }

    /// The function source `slug`, as configured now.
    pub fn source(&self, slug: &str) -> Option<SourceFunction> {
        self.sources.read().ok()?.get(slug).cloned()
    }

    /// Pauses again the sources paused when the server stopped (a pause
    /// lasts until resumed through the API, restarts included).
    pub async fn restore_pauses(&self) {
        let slugs: Vec<String> = self
            .sources
            .read()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        for slug in slugs {
            let saved = match self.store.get_meta(&pause_key(&slug)).await {
                Ok(Some(saved)) if !saved.is_empty() => saved,
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(source = %slug, error = %e, "cannot read whether the source function was paused");
                    continue;
                }
            };
            let saved: Value = serde_json::from_str(&saved).unwrap_or_default();
            let Ok(mut all) = self.health.lock() else {
                return;
            };
            let h = all.entry(slug.clone()).or_default();
            // A function that cannot run shows why; once it can, it runs.
            if h.status == "failed" {
                continue;
            }
            *h = FunctionHealth {
                status: "paused",
                consecutive_failures: saved["consecutive_failures"].as_u64().unwrap_or(0) as u32,
                last_error: saved["last_error"].as_str().map(str::to_string),
            };
            tracing::warn!(source = %slug, "source function paused before the restart: its requests wait until it is resumed (POST /api/v1/sources/{slug}/function/resume)");
        }
    }

    /// Writes (or clears) a source's pause in the store, in the background
    /// for callers that cannot wait.
    fn persist_pause_later(&self, slug: &str, health: Option<FunctionHealth>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        let slug = slug.to_string();
        runtime.spawn(async move { persist_pause(store.as_ref(), &slug, health.as_ref()).await });
    }

    /// Adds or replaces a function source (a deploy or a new source): the
    /// next run of its requests uses it.
    pub fn upsert(&self, source: SourceFunction) {
        let mut new_source = false;
        if let Ok(mut h) = self.health.lock() {
            let entry = h.entry(source.slug.clone()).or_insert_with(|| {
                new_source = true;
                initial_health(&source)
            });
            match &source.unavailable {
                Some(_) => *entry = initial_health(&source),
                None if entry.status == "failed" => *entry = initial_health(&source),
                None => {}
            }
        }
        if new_source {
            // A source made again under a deleted one's slug starts afresh.
            self.persist_pause_later(&source.slug, None);
        }
        if let Ok(mut all) = self.sources.write() {
            all.insert(source.slug.clone(), source);
        }
        self.wake.notify_one();
    }

    /// Stops running a source's function (the source was deleted).
    pub fn remove(&self, slug: &str) {
        if let Ok(mut all) = self.sources.write() {
            all.remove(slug);
        }
        if let Ok(mut h) = self.health.lock() {
            h.remove(slug);
        }
        self.persist_pause_later(slug, None);
    }

    /// Sources running the function `name`.
    pub fn sources_of_function(&self, name: &str) -> Vec<SourceFunction> {
        self.sources
            .read()
            .map(|all| {
                all.values()
                    .filter(|s| s.code.name == name)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub fn spec_limits(&self) -> &spec::Limits {
        &self.spec_limits
    }

    /// The function health of a source.
    pub fn health(&self, slug: &str) -> Option<FunctionHealth> {
        self.health.lock().ok()?.get(slug).cloned()
    }

    /// Resumes a paused function (its pending requests run again). A
    /// function that cannot run (`failed`) stays so: a deploy or a settings
    /// change that lets it run resumes it.
    pub fn resume(&self, slug: &str) {
        if let Ok(mut h) = self.health.lock() {
            if let Some(entry) = h.get_mut(slug) {
                if entry.status == "failed" {
                    return;
                }
                entry.status = "healthy";
                entry.consecutive_failures = 0;
            }
        }
        self.persist_pause_later(slug, None);
        self.wake.notify_one();
    }

    /// Wakes the worker (a raw request was stored or replayed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Records a run's result; returns the health when it just turned paused.
    fn record_result(&self, slug: &str, error: Option<&FunctionError>) -> Option<FunctionHealth> {
        let Ok(mut all) = self.health.lock() else {
            return None;
        };
        let h = all.entry(slug.to_string()).or_default();
        match error {
            None => {
                *h = FunctionHealth {
                    status: "healthy",
                    consecutive_failures: 0,
                    last_error: h.last_error.take(),
                }
            }
            Some(e) => {
                h.consecutive_failures += 1;
                h.last_error = Some(e.to_string());
                let before = h.status;
                h.status = if h.consecutive_failures >= PAUSED_AFTER {
                    "paused"
                } else if h.consecutive_failures >= DEGRADED_AFTER {
                    "degraded"
                } else {
                    "healthy"
                };
                if h.status != before {
                    tracing::warn!(source = slug, status = h.status, failures = h.consecutive_failures,
                        error = %e, "source function health changed");
                    if h.status == "paused" {
                        return Some(h.clone());
                    }
                }
            }
        }
        None
    }

    /// Runs the function on one stored request and records the result.
    /// Returns the outcome (for inline answers).
    pub async fn process(&self, record: &RawRecord) -> Result<SourceOutcome, String> {
        let Some(source) = self.source(&record.source) else {
            return Err(format!("source {:?} has no function", record.source));
        };
        if let Some(reason) = &source.unavailable {
            // The request stays as it is (pending), for when it can run.
            return Err(format!(
                "source {:?}: its function cannot run: {reason}",
                record.source
            ));
        }
        let request: RawRequest = serde_json::from_slice(&record.request)
            .map_err(|e| format!("stored request {} is unreadable: {e}", record.id))?;
        let started = std::time::Instant::now();
        let mut outcome = self
            .pool
            .run_source(
                source.code.clone(),
                &request,
                &source.settings,
                source.limits,
            )
            .await;
        metrics::histogram!("switchyard_function_duration_seconds", "source" => source.slug.clone())
            .record(started.elapsed().as_secs_f64());
        let events = match &outcome.error {
            None => match normalize_emitted(&outcome.messages, &self.spec_limits) {
                Ok(events) => Some(events),
                Err(e) => {
                    outcome.error = Some(e);
                    None
                }
            },
            Some(_) => None,
        };
        // The request's own token joins the settings' secrets: a function
        // logging `request.url` must not publish the source's credential.
        let mut secrets = source.secrets.clone();
        secrets.extend(request_credentials(&request));
        let mut logs = to_logs(&outcome.logs);
        for l in &mut logs {
            l.message = redact(&secrets, &l.message);
        }
        if let Some(e) = &mut outcome.error {
            e.message = redact(&secrets, &e.message);
            e.stack = redact(&secrets, &e.stack);
        }
        match events {
            Some(events) => {
                let objects = outcome
                    .objects
                    .iter()
                    .map(|o| (o.collection.clone(), o.id.clone(), o.properties.clone()))
                    .collect();
                let count = events.len();
                let receipt = self
                    .store
                    .complete_raw(record.id, &source.slug, events, objects, logs)
                    .await
                    .map_err(|e| e.to_string())?;
                metrics::counter!("switchyard_function_invocations_total", "source" => source.slug.clone(), "outcome" => "ok").increment(1);
                metrics::counter!("switchyard_events_received_total", "source" => source.slug.clone()).increment(count as u64);
                metrics::counter!("switchyard_events_stored_total", "source" => source.slug.clone()).increment(receipt.stored as u64);
                self.record_result(&source.slug, None);
            }
            None => {
                let error = outcome.error.clone().unwrap_or_else(|| FunctionError {
                    kind: functions::ErrorKind::Internal,
                    name: "Error".into(),
                    message: "unknown failure".into(),
                    line: None,
                    stack: String::new(),
                });
                let attempts = record.attempts + 1;
                // A run answering its sender (`respond = "function"`) that
                // fails tells the sender so (500), and senders of webhooks
                // send again on a 5xx: retrying here too would run the
                // request twice. It waits in the dead letters instead.
                let answered_sender = record.state == "inline";
                let next = (attempts < MAX_ATTEMPTS && !answered_sender).then(|| {
                    chrono::Utc::now().timestamp_millis()
                        + backoff(self.retry_initial, attempts).as_millis() as i64
                });
                logs.push(FunctionLog {
                    at_ms: chrono::Utc::now().timestamp_millis(),
                    level: "error".into(),
                    message: if answered_sender {
                        format!(
                            "{error} — answered 500 (the sender may send it again), dead-lettered"
                        )
                    } else {
                        format!(
                            "{error} — attempt {attempts} of {MAX_ATTEMPTS}{}",
                            if next.is_some() {
                                ", will retry"
                            } else {
                                ", dead-lettered"
                            }
                        )
                    },
                });
                self.store
                    .fail_raw(
                        record.id,
                        &source.slug,
                        attempts,
                        next,
                        error.to_string(),
                        logs,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                metrics::counter!("switchyard_function_invocations_total", "source" => source.slug.clone(), "outcome" => "error").increment(1);
                tracing::warn!(source = %source.slug, request = record.id, attempts, error = %error, "source function failed");
                // Health counts requests, not runs: the retries of one bad
                // request (a provider's test ping the function rejects) must
                // not pause the source for every good request behind it.
                if record.attempts == 0 {
                    if let Some(paused) = self.record_result(&source.slug, Some(&error)) {
                        persist_pause(self.store.as_ref(), &source.slug, Some(&paused)).await;
                    }
                }
            }
        }
        Ok(outcome)
    }

    /// Runs inline for a `respond = "function"` source: the answer the sender gets.
    pub async fn answer_inline(&self, record: &RawRecord) -> Result<Option<HttpAnswer>, String> {
        let outcome = self.process(record).await?;
        match outcome.error {
            None => Ok(outcome.response),
            Some(e) => Err(e.to_string()),
        }
    }

    fn active_sources(&self) -> Vec<String> {
        let health = self.health.lock().ok();
        let sources = self
            .sources
            .read()
            .map(|s| s.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        sources
            .into_iter()
            .filter(|s| {
                health
                    .as_ref()
                    .and_then(|h| h.get(s))
                    .is_none_or(|h| !matches!(h.status, "paused" | "failed"))
            })
            .collect()
    }

    /// The worker loop; stops when `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let concurrency = 8;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let active = self.active_sources();
            let now = chrono::Utc::now().timestamp_millis();
            let due = match self.store.due_raw(&active, now, 256).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the raw request queue");
                    Vec::new()
                }
            };
            if !due.is_empty() {
                use futures_util::stream::{self, StreamExt};
                let this = &self;
                let stopping = shutdown.clone();
                // A stop takes no more of the batch: the runs under way
                // finish, the rest stay queued in the store for the next
                // start (a batch of slow runs would hold a stop for minutes).
                stream::iter(due)
                    .take_while(|_| std::future::ready(!*stopping.borrow()))
                    .for_each_concurrent(concurrency, |record| async move {
                        if let Err(e) = this.process(&record).await {
                            tracing::error!(request = record.id, error = %e, "cannot record a source function run");
                        }
                    })
                    .await;
                continue;
            }
            let next = self.store.next_raw_ms(&active).await.ok().flatten();
            let wait = next
                .map(|n| Duration::from_millis((n - now).max(0) as u64))
                .unwrap_or(Duration::from_secs(5))
                .clamp(Duration::from_millis(5), Duration::from_secs(5));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// Writes a source's pause (`None`: not paused) where a restart finds it.
async fn persist_pause(store: &dyn Store, slug: &str, paused: Option<&FunctionHealth>) {
    let value = paused
        .map(|h| serde_json::to_string(h).unwrap_or_default())
        .unwrap_or_default();
    if let Err(e) = store.put_meta(&pause_key(slug), &value).await {
        tracing::error!(source = %slug, error = %e, "cannot record the source function's pause: a restart would resume it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_requests_lose_their_secrets() {
        let request = functions::RecordedRequest {
            method: "POST".into(),
            url: "https://api.example.com/v1?key=sk_live_123".into(),
            headers: [(
                "authorization".to_string(),
                "Bearer sk_live_123".to_string(),
            )]
            .into_iter()
            .collect(),
            body: r#"{"token":"sk_live_123"}"#.into(),
        };
        let secrets = vec!["sk_live_123".to_string()];
        let out = redact_requests(&secrets, &[request]);
        let text = serde_json::to_string(&out).unwrap();
        assert!(!text.contains("sk_live_123"), "{text}");
        assert_eq!(out[0].headers["authorization"], "Bearer [redacted]");
        assert_eq!(out[0].url, "https://api.example.com/v1?key=[redacted]");
        assert_eq!(out[0].body, r#"{"token":"[redacted]"}"#);
    }
}
