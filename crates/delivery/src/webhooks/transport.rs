//! Sends webhooks deliveries: every URL of the destination (first success
//! wins) or one URL (`fanout = "all"`), behind per-URL circuit breakers.

use super::config::{Fanout, WebhooksConfig};
use super::request_builder;
use super::service::{self, Sent};
use crate::breaker::{BreakerConfig, Gate, Health, UrlHealth};
use crate::retry::{classify, RetryPolicy, Verdict};
use crate::sink::{instant_to_ms, now_ms, retry_or_give_up, Job, JobResult, Resolution, Transport};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Attempt, Store};

/// The Webhooks destination's transport.
pub struct WebhooksTransport {
    config: WebhooksConfig,
    store: Arc<dyn Store>,
    client: reqwest::Client,
    health: UrlHealth,
    disabled: Mutex<HashSet<String>>,
    policy: RetryPolicy,
}

impl WebhooksTransport {
    pub async fn new(config: WebhooksConfig, store: Arc<dyn Store>) -> Result<Self, String> {
        config.validate()?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let client = service::client(timeout, config.ca_file.as_deref())
            .map_err(|e| format!("destination {:?}: {e}", config.name))?;
        let disabled = store
            .disabled_urls(&config.name)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(url, _)| url)
            .collect();
        Ok(WebhooksTransport {
            policy: config.retry_policy(),
            config,
            store,
            client,
            health: UrlHealth::new(BreakerConfig::default()),
            disabled: Mutex::new(disabled),
        })
    }

    fn is_disabled(&self, url: &str) -> bool {
        self.disabled
            .lock()
            .map(|d| d.contains(url))
            .unwrap_or(false)
    }
}

#[async_trait::async_trait]
impl Transport for WebhooksTransport {
    fn fanout_targets(&self) -> Vec<Option<String>> {
        match self.config.fanout {
            Fanout::FirstSuccess => vec![None],
            Fanout::All => self.config.urls.iter().cloned().map(Some).collect(),
        }
    }

    async fn reload_disabled(&self) -> Result<Vec<(String, String)>, store::StoreError> {
        let disabled = self.store.disabled_urls(&self.config.name).await?;
        if let Ok(mut set) = self.disabled.lock() {
            *set = disabled.iter().map(|(u, _)| u.clone()).collect();
        }
        Ok(disabled)
    }

    fn report_gauges(&self, destination: &str) {
        for url in &self.config.urls {
            metrics::gauge!("switchyard_circuit_open", "destination" => destination.to_string(), "url" => url.clone())
                .set(if self.health.is_open(url) { 1.0 } else { 0.0 });
        }
    }

    async fn deliver(&self, mut job: Job) -> JobResult {
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
                outcomes: vec![(
                    job,
                    Resolution::Dead {
                        excerpt: String::new(),
                    },
                )],
                attempts: vec![],
                disabled: vec![],
            };
        }
        let now = Instant::now();
        let mut go = Vec::new();
        let mut wait_until: Option<Instant> = None;
        // The URLs a retry should try again: those paused now, and below
        // those that answered with a retryable failure (not a 4xx).
        let mut again = Vec::new();
        // At the end of its retry window a delivery is tried whatever the
        // breaker says: nothing is dead-lettered without a last real attempt
        // (the receiver may be back while its breaker is still open).
        let last_chance = now_ms() >= job.first_attempt_ms + self.policy.max_age.as_millis() as i64;
        for url in live {
            match self.health.gate(&url, now) {
                Gate::Wait(at) if !last_chance => {
                    wait_until = Some(wait_until.map_or(at, |w| w.min(at)));
                    again.push(url);
                }
                Gate::Go | Gate::Wait(_) => go.push(url),
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
                    again.push(url.clone());
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
                id: 0,
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
        // The first-success rule over several URLs: a retry goes to the
        // URLs that may still take the message, not to one that refused it
        // with a 4xx ("not retried"). A job names one URL at most, so this
        // narrows it when one is left.
        let narrowed = job.url.is_none() && self.config.urls.len() > 1 && again.len() == 1;
        if narrowed {
            job.url = again.pop();
        }
        let resolution = if delivered {
            Resolution::Delivered
        } else if retry || wait_until.is_some() {
            let now_i = Instant::now();
            let not_before = wait_until.map(|w| instant_to_ms(w, now_i, at_ms));
            retry_or_give_up(
                &self.policy,
                &mut job,
                at_ms,
                retry_after,
                not_before,
                retry,
                excerpt,
            )
        } else {
            if job.last_status.is_some_and(|s| s != 410) {
                job.last_error = format!("{} (not retried)", job.last_error);
            }
            Resolution::Dead { excerpt }
        };
        if narrowed && matches!(resolution, Resolution::Dead { .. }) {
            // A dead letter replays to every URL, as the message first went.
            job.url = None;
        }
        JobResult {
            outcomes: vec![(job, resolution)],
            attempts,
            disabled,
        }
    }
}
