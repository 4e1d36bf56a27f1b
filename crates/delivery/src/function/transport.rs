//! Runs a destination function's handler for each delivery, with Segment's
//! error semantics: `RetryError`, timeouts and memory kills are retried with
//! the destination's backoff; `EventNotSupported`, `InvalidEventPayload`,
//! `ValidationError` and other errors are not retried but kept in dead
//! letters (with the error and stack); `DropEvent` and types without a
//! handler are skipped on purpose and recorded.

use crate::retry::RetryPolicy;
use crate::sink::{now_ms, retry_or_give_up, Job, JobResult, Resolution, Transport};
use functions::{DestinationOutcome, ErrorKind, FunctionCode, Limits, Pool};
use serde_json::Value;
use std::sync::Arc;
use store::{Attempt, FunctionLog, Store};

/// The destination function's transport.
pub struct FunctionTransport {
    pub name: String,
    pub code: Arc<FunctionCode>,
    pub settings: Value,
    pub limits: Limits,
    pub pool: Arc<Pool>,
    pub store: Arc<dyn Store>,
    pub policy: RetryPolicy,
    pub retry_unknown_errors: bool,
    /// Values of encrypted settings: redacted from logs and errors.
    pub secrets: Vec<String>,
}

/// Errors that are the event's fault: never retried.
const PERMANENT: [&str; 3] = [
    "EventNotSupported",
    "InvalidEventPayload",
    "ValidationError",
];

impl FunctionTransport {
    fn attempt(&self, job: &Job, outcome: &str, error: Option<String>, latency_ms: u64) -> Attempt {
        Attempt {
            id: 0,
            destination: self.name.clone(),
            url: format!("function:{}", self.code.name),
            message_id: job.message_ids.first().cloned().unwrap_or_default(),
            events: job.message_ids.len() as u32,
            at_ms: now_ms(),
            status: None,
            latency_ms,
            error,
            outcome: outcome.to_string(),
        }
    }

    /// Splits a batch by the per-event statuses `onBatch` returned.
    fn partial(&self, job: Job, statuses: &[Value], at_ms: i64) -> Vec<(Job, Resolution)> {
        // A single event handed to `onBatch` (the function has no handler of
        // its own for its type) comes back as a batch of one.
        let single = job.body.first() != Some(&b'[');
        let events: Vec<Value> = if single {
            serde_json::from_slice(&job.body).map(|e| vec![e])
        } else {
            serde_json::from_slice(&job.body)
        }
        .unwrap_or_default();
        let mut delivered = (Vec::new(), Vec::new());
        let mut retry = (Vec::new(), Vec::new(), String::new());
        let mut dead = (Vec::new(), Vec::new(), String::new());
        for (i, (event, id)) in events.iter().zip(&job.message_ids).enumerate() {
            let entry = statuses.get(i);
            let status = entry
                .and_then(|s| s.get("status"))
                .and_then(Value::as_u64)
                .unwrap_or(200);
            let message = entry
                .and_then(|s| s.get("errormessage").or_else(|| s.get("errorMessage")))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let target = if status < 300 {
                delivered.0.push(event.clone());
                delivered.1.push(id.clone());
                continue;
            } else if status == 429 || status >= 500 {
                retry.2 = format!("onBatch reported {status}: {message}");
                &mut retry
            } else {
                dead.2 = format!("onBatch reported {status}: {message} (not retried)");
                &mut dead
            };
            target.0.push(event.clone());
            target.1.push(id.clone());
        }
        let sub = |events: Vec<Value>, ids: Vec<String>, error: String| Job {
            body: match (single, events.as_slice()) {
                (true, [event]) => serde_json::to_vec(event),
                _ => serde_json::to_vec(&events),
            }
            .unwrap_or_default(),
            message_ids: ids,
            last_error: error,
            retry_id: 0,
            ..job.clone()
        };
        let mut out = Vec::new();
        if !delivered.1.is_empty() {
            let mut d = sub(delivered.0, delivered.1, String::new());
            d.retry_id = job.retry_id;
            out.push((d, Resolution::Delivered));
        }
        if !retry.1.is_empty() {
            let mut r = sub(retry.0, retry.1, retry.2);
            let res =
                retry_or_give_up(&self.policy, &mut r, at_ms, None, None, true, String::new());
            out.push((r, res));
        }
        if !dead.1.is_empty() {
            out.push((
                sub(dead.0, dead.1, dead.2),
                Resolution::Dead {
                    excerpt: String::new(),
                },
            ));
        }
        if job.retry_id != 0 && out.iter().all(|(j, _)| j.retry_id != job.retry_id) {
            // The original retry entry is replaced by the split parts.
            out.push((
                Job {
                    message_ids: vec![],
                    ..job.clone()
                },
                Resolution::Skipped { reason: "split" },
            ));
        }
        out
    }

    fn redact(&self, text: &str) -> String {
        crate::source_functions::redact(&self.secrets, text)
    }

    async fn record_logs(&self, outcome: &DestinationOutcome) {
        if outcome.logs.is_empty() {
            return;
        }
        let logs = outcome
            .logs
            .iter()
            .map(|l| FunctionLog {
                at_ms: l.at_ms,
                level: l.level.clone(),
                message: self.redact(&l.message),
            })
            .collect();
        if let Err(e) = self
            .store
            .append_logs(&format!("destination:{}", self.name), logs)
            .await
        {
            tracing::warn!(destination = %self.name, error = %e, "cannot store function logs");
        }
    }
}

#[async_trait::async_trait]
impl Transport for FunctionTransport {
    fn fanout_targets(&self) -> Vec<Option<String>> {
        vec![None]
    }

    async fn deliver(&self, mut job: Job) -> JobResult {
        let started = std::time::Instant::now();
        let event = String::from_utf8_lossy(&job.body).into_owned();
        let outcome = self
            .pool
            .run_destination(self.code.clone(), event, &self.settings, self.limits)
            .await;
        let latency = started.elapsed().as_millis() as u64;
        metrics::histogram!("switchyard_function_duration_seconds", "destination" => self.name.clone())
            .record(started.elapsed().as_secs_f64());
        let result = match &outcome.error {
            None => "ok",
            Some(e) if e.kind == ErrorKind::Unsupported => "unsupported",
            Some(e) if e.name == "DropEvent" => "dropped",
            Some(_) => "error",
        };
        metrics::counter!("switchyard_function_invocations_total", "destination" => self.name.clone(), "outcome" => result)
            .increment(1);
        self.record_logs(&outcome).await;
        job.attempts += 1;
        let at_ms = now_ms();
        let (outcomes, attempt) = match &outcome.error {
            None => match (&outcome.result, outcome.batch) {
                (Some(Value::Array(statuses)), true)
                    if statuses.iter().any(|s| s.get("status").is_some()) =>
                {
                    let parts = self.partial(job.clone(), statuses, at_ms);
                    let failed = parts
                        .iter()
                        .filter(|(_, r)| {
                            !matches!(r, Resolution::Delivered | Resolution::Skipped { .. })
                        })
                        .count();
                    let attempt = self.attempt(
                        &job,
                        if failed == 0 { "delivered" } else { "partial" },
                        (failed > 0).then(|| format!("{failed} of {} parts failed", parts.len())),
                        latency,
                    );
                    (parts, attempt)
                }
                _ => {
                    let attempt = self.attempt(&job, "delivered", None, latency);
                    (vec![(job, Resolution::Delivered)], attempt)
                }
            },
            Some(e) => {
                let message = self.redact(&e.to_string());
                job.last_error = if e.stack.is_empty() {
                    message.clone()
                } else {
                    format!("{message}\n{}", self.redact(&e.stack))
                };
                if e.kind == ErrorKind::Unsupported {
                    let attempt = self.attempt(&job, "unsupported", Some(message), latency);
                    (
                        vec![(
                            job,
                            Resolution::Skipped {
                                reason: "unsupported",
                            },
                        )],
                        attempt,
                    )
                } else if e.name == "DropEvent" {
                    let attempt = self.attempt(&job, "dropped", Some(message), latency);
                    (
                        vec![(job, Resolution::Skipped { reason: "dropped" })],
                        attempt,
                    )
                } else {
                    let retryable = e.name == "RetryError"
                        || matches!(
                            e.kind,
                            ErrorKind::Timeout | ErrorKind::Memory | ErrorKind::Internal
                        )
                        || (self.retry_unknown_errors && !PERMANENT.contains(&e.name.as_str()));
                    if retryable {
                        let res = retry_or_give_up(
                            &self.policy,
                            &mut job,
                            at_ms,
                            None,
                            None,
                            true,
                            String::new(),
                        );
                        let label = if matches!(res, Resolution::Dead { .. }) {
                            "dead_letter"
                        } else {
                            "retry"
                        };
                        let attempt = self.attempt(&job, label, Some(message), latency);
                        (vec![(job, res)], attempt)
                    } else {
                        job.last_error = format!("{} (not retried)", job.last_error);
                        let attempt = self.attempt(&job, "dead_letter", Some(message), latency);
                        (
                            vec![(
                                job,
                                Resolution::Dead {
                                    excerpt: String::new(),
                                },
                            )],
                            attempt,
                        )
                    }
                }
            }
        };
        JobResult {
            outcomes,
            attempts: vec![attempt],
            disabled: vec![],
        }
    }
}
