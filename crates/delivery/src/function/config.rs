//! What a user writes for a destination function, and its validation.

use crate::filter::Filter;
use crate::retry::{duration_from_str, RetryPolicy};
use serde::Deserialize;
use std::time::Duration;

fn default_true() -> bool {
    true
}
/// Events per `onBatch` call when `batch_size` is not given and the function
/// defines `onBatch` (Segment's default).
pub const DEFAULT_ONBATCH_SIZE: usize = 20;
fn default_batch_wait_ms() -> u64 {
    10_000
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
    std::thread::available_parallelism()
        .map(|n| n.get() * 4)
        .unwrap_or(8)
}

/// A destination function, as written in `switchyard.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionDestinationConfig {
    pub name: String,
    #[serde(default)]
    pub sources: Vec<String>,
    /// A `[[functions]]` entry with `kind = "destination"`.
    pub function: String,
    /// Values for the function's declared settings.
    #[serde(default)]
    pub settings: toml::Table,
    /// Events per `onBatch` call, up to 1,000. Not given: 20 when the function
    /// defines `onBatch` (Segment's default), else 1 (each event to its
    /// type's handler at once). See [`FunctionDestinationConfig::batch_size_for`].
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Longest wait for a batch to fill (Segment: 10 s).
    #[serde(default = "default_batch_wait_ms")]
    pub batch_max_wait_ms: u64,
    #[serde(
        default = "default_max_retry_age",
        deserialize_with = "duration_from_str"
    )]
    pub max_retry_age: Duration,
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    #[serde(
        default = "default_retry_max_delay",
        deserialize_with = "duration_from_str"
    )]
    pub retry_max_delay: Duration,
    /// Invocations in flight at once (default: 4 per core).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Also retry errors other than `RetryError`, timeouts and memory kills.
    #[serde(default)]
    pub retry_unknown_errors: bool,
    #[serde(default)]
    pub filter: Option<Filter>,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl FunctionDestinationConfig {
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(self.retry_initial_ms.max(1)),
            max_delay: self.retry_max_delay.max(Duration::from_millis(1)),
            max_age: self.max_retry_age,
        }
    }

    /// Events per delivery for a function that does (or does not) define
    /// `onBatch`: batches go only to `onBatch`, so without it every event
    /// goes alone to its type's handler.
    pub fn batch_size_for(&self, has_on_batch: bool) -> usize {
        match (has_on_batch, self.batch_size) {
            (false, _) => 1,
            (true, Some(n)) => n,
            (true, None) => DEFAULT_ONBATCH_SIZE,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if self.batch_size.is_some_and(|n| n == 0 || n > 1000) {
            return Err(format!(
                "destination {name:?}: `batch_size` must be between 1 and 1000"
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> FunctionDestinationConfig {
        toml::from_str(&format!("name = \"d\"\nfunction = \"f\"\n{extra}")).unwrap()
    }

    #[test]
    fn onbatch_functions_get_segments_batches_unless_told_otherwise() {
        let default = config("");
        assert_eq!(default.batch_size_for(true), 20);
        assert_eq!(default.batch_max_wait_ms, 10_000);
        // Single-event handlers keep getting each event at once.
        assert_eq!(default.batch_size_for(false), 1);
        assert_eq!(config("batch_size = 1").batch_size_for(true), 1);
        assert_eq!(config("batch_size = 50").batch_size_for(true), 50);
        assert_eq!(config("batch_size = 50").batch_size_for(false), 1);
        assert!(config("batch_size = 0").validate().is_err());
        assert!(config("batch_size = 1001").validate().is_err());
    }
}
