//! Sends one request and reports what happened, never more than the timeout.

use super::request_builder::OutgoingRequest;
use crate::retry::parse_retry_after;
use std::time::{Duration, Instant};

/// Longest excerpt of a response body kept for dead letters.
const EXCERPT_BYTES: usize = 1024;

/// The result of one HTTP attempt.
#[derive(Debug, Clone)]
pub struct Sent {
    /// `None`: no response (timeout, connection or TLS error).
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub latency: Duration,
    pub error: Option<String>,
    /// The start of the response body.
    pub excerpt: String,
}

/// Builds the HTTP client of a destination: verified TLS (self-signed
/// certificates refused), optional extra CA file, no redirects.
pub fn client(
    timeout: Duration,
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::Client, String> {
    crate::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("invalid CA file {}: {e}", path.display()))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", error_chain(&e)))
}

pub use functions::error_chain;

/// Sends `request`; every failure is folded into [`Sent`].
pub async fn send(client: &reqwest::Client, request: OutgoingRequest, timeout: Duration) -> Sent {
    let started = Instant::now();
    let mut builder = client.post(&request.url).body(request.body);
    for (k, v) in &request.headers {
        builder = builder.header(k, v);
    }
    let response = builder.send().await;
    match response {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
            let mut excerpt = Vec::new();
            let remaining = timeout.saturating_sub(started.elapsed());
            let _ = tokio::time::timeout(remaining, async {
                while excerpt.len() < EXCERPT_BYTES {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                        _ => break,
                    }
                }
            })
            .await;
            excerpt.truncate(EXCERPT_BYTES);
            Sent {
                status: Some(status),
                retry_after,
                latency: started.elapsed(),
                error: if (200..300).contains(&status) {
                    None
                } else {
                    Some(format!("HTTP {status}"))
                },
                excerpt: String::from_utf8_lossy(&excerpt).into_owned(),
            }
        }
        Err(e) => {
            let error = if e.is_timeout() {
                format!("timed out after {} ms", timeout.as_millis())
            } else if e.is_connect() {
                format!("connection failed: {}", error_chain(&e))
            } else {
                error_chain(&e)
            };
            Sent {
                status: None,
                retry_after: None,
                latency: started.elapsed(),
                error: Some(error),
                excerpt: String::new(),
            }
        }
    }
}
