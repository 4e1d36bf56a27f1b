//! What a user writes for a Webhooks destination, and its validation.

use crate::retry::{duration_from_str, RetryPolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Most URLs one Webhooks destination may have (Segment's limit).
pub const MAX_URLS: usize = 5;

/// How a request is signed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureScheme {
    /// `X-Signature`: hex HMAC-SHA1 of the body (of the first event in batch mode).
    #[default]
    Segment,
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature` (HMAC-SHA256).
    StandardWebhooks,
}

/// Which URLs must accept a delivery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fanout {
    /// Segment's classic rule: every URL is sent the event; once any accepts,
    /// the event is delivered and the others are not retried.
    #[default]
    FirstSuccess,
    /// Each URL is its own delivery, retried and dead-lettered on its own.
    All,
}

fn default_true() -> bool {
    true
}
fn default_batch_size() -> usize {
    1
}
fn default_batch_wait_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_max_retry_age() -> Duration {
    Duration::from_secs(4 * 3600)
}
fn default_retry_initial_ms() -> u64 {
    1000
}
fn default_retry_max_delay() -> Duration {
    Duration::from_secs(600)
}
fn default_concurrency() -> usize {
    64
}

/// Headers a destination's `headers` cannot set: the connection's framing
/// (a wrong `Content-Length` or `Host` breaks the request) and the signatures,
/// which a receiver would otherwise get twice. `Content-Type` and `User-Agent`
/// may be replaced.
pub const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// A Webhooks destination, as written in `switchyard.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    pub name: String,
    /// Sources whose events this destination receives.
    #[serde(default)]
    pub sources: Vec<String>,
    /// 1 to 5 URLs.
    pub urls: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub shared_secret: Option<String>,
    /// During a secret rotation: the old secret, which signs beside the new one
    /// (Standard Webhooks only: its header carries several signatures).
    pub previous_shared_secret: Option<String>,
    #[serde(default)]
    pub signature: SignatureScheme,
    #[serde(default)]
    pub fanout: Fanout,
    /// Events per request; above 1 the body is a JSON array.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest wait for a batch to fill.
    #[serde(default = "default_batch_wait_ms")]
    pub batch_max_wait_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(
        default = "default_max_retry_age",
        deserialize_with = "duration_from_str"
    )]
    pub max_retry_age: Duration,
    /// Delay before the first retry; doubles each time.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    #[serde(
        default = "default_retry_max_delay",
        deserialize_with = "duration_from_str"
    )]
    pub retry_max_delay: Duration,
    /// A PEM file of extra trusted CA certificates (for receivers with a private CA).
    pub ca_file: Option<PathBuf>,
    /// Requests in flight at once for this destination.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Which events this destination receives (all when absent).
    #[serde(default)]
    pub filter: Option<crate::filter::Filter>,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl WebhooksConfig {
    /// A configuration with defaults, for code and tests.
    pub fn new(name: &str, sources: &[&str], urls: &[&str]) -> Self {
        WebhooksConfig {
            name: name.to_string(),
            sources: sources.iter().map(|s| s.to_string()).collect(),
            urls: urls.iter().map(|s| s.to_string()).collect(),
            headers: BTreeMap::new(),
            shared_secret: None,
            previous_shared_secret: None,
            signature: SignatureScheme::default(),
            fanout: Fanout::default(),
            batch_size: default_batch_size(),
            batch_max_wait_ms: default_batch_wait_ms(),
            timeout_ms: default_timeout_ms(),
            max_retry_age: default_max_retry_age(),
            retry_initial_ms: default_retry_initial_ms(),
            retry_max_delay: default_retry_max_delay(),
            ca_file: None,
            concurrency: default_concurrency(),
            filter: None,
            enabled: true,
        }
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(self.retry_initial_ms.max(1)),
            max_delay: self.retry_max_delay.max(Duration::from_millis(1)),
            max_age: self.max_retry_age,
        }
    }

    /// Checks what serde cannot; the message names the destination and field.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if self.urls.is_empty() || self.urls.len() > MAX_URLS {
            return Err(format!(
                "destination {name:?}: `urls` must list 1 to {MAX_URLS} URLs, got {}",
                self.urls.len()
            ));
        }
        for url in &self.urls {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| format!("destination {name:?}: invalid URL {url:?}: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!(
                    "destination {name:?}: URL {url:?} must be http or https"
                ));
            }
        }
        for (k, v) in &self.headers {
            reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("destination {name:?}: invalid header name {k:?}"))?;
            if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "destination {name:?}: header {k:?} is set by switchyard and cannot be given in `headers` \
                     (reserved: {})",
                    RESERVED_HEADERS.join(", ")
                ));
            }
            reqwest::header::HeaderValue::from_str(v)
                .map_err(|_| format!("destination {name:?}: invalid value for header {k:?}"))?;
        }
        if self.batch_size == 0 || self.batch_size > 1000 {
            return Err(format!(
                "destination {name:?}: `batch_size` must be between 1 and 1000"
            ));
        }
        if self.timeout_ms == 0 {
            return Err(format!(
                "destination {name:?}: `timeout_ms` must be positive"
            ));
        }
        if self.concurrency == 0 {
            return Err(format!(
                "destination {name:?}: `concurrency` must be positive"
            ));
        }
        if let Some(f) = &self.filter {
            f.validate()
                .map_err(|e| format!("destination {name:?}: filter: {e}"))?;
        }
        if self.previous_shared_secret.is_some() && self.shared_secret.is_none() {
            return Err(format!(
                "destination {name:?}: `previous_shared_secret` needs `shared_secret`"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_may_replace_the_content_type_but_not_framing_or_signatures() {
        let with_header = |k: &str| {
            let mut config = WebhooksConfig::new("hook", &["web"], &["http://127.0.0.1:9/"]);
            config.headers.insert(k.into(), "x".into());
            config.validate()
        };
        assert_eq!(with_header("X-Env"), Ok(()));
        assert_eq!(with_header("Content-Type"), Ok(()));
        assert_eq!(with_header("User-Agent"), Ok(()));
        for reserved in ["Host", "content-length", "X-Signature", "Webhook-Signature"] {
            let err = with_header(reserved).unwrap_err();
            assert!(
                err.contains(&format!("header {reserved:?} is set by switchyard")),
                "{err}"
            );
        }
    }
}
