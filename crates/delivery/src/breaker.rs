//! Per-URL health: a circuit breaker and a slow-down gate.
//!
//! A receiver that keeps failing opens its breaker: deliveries to it are
//! deferred (not attempted, not counted as attempts) until a single probe
//! half-opens it. A receiver that says "slow down" (429, 502, 504) is paused
//! for its `Retry-After` or a growing delay. Either way a dead receiver stops
//! eating the worker pool, and retries are not burned against it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Breaker tuning.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Outcomes remembered per URL.
    pub window: usize,
    /// Fewest outcomes before the breaker may open.
    pub min_samples: usize,
    /// Failure share that opens the breaker.
    pub failure_rate: f64,
    /// First open period; doubles on each failed probe.
    pub open_for: Duration,
    pub max_open_for: Duration,
    /// Longest slow-down pause without a `Retry-After`.
    pub max_slow_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: 20,
            min_samples: 10,
            failure_rate: 0.5,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(120),
            max_slow_down: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Closed,
    Open { until: Instant, period: Duration },
    HalfOpen { period: Duration },
}

#[derive(Debug)]
struct UrlState {
    outcomes: VecDeque<bool>,
    breaker: BreakerState,
    slow_until: Option<Instant>,
    slow_level: u32,
}

impl UrlState {
    fn new() -> Self {
        UrlState {
            outcomes: VecDeque::new(),
            breaker: BreakerState::Closed,
            slow_until: None,
            slow_level: 0,
        }
    }
}

/// May a request go to a URL now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// Not before this instant.
    Wait(Instant),
}

/// What an attempt told us about a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The receiver answered (2xx, or a 4xx that is our fault, not its).
    Alive,
    /// Timeout, connection error, 5xx.
    Failing,
    /// 429/502/504: slow down, for `retry_after` when given.
    SlowDown(Option<Duration>),
}

/// Health of every URL of one destination.
#[derive(Debug, Default)]
pub struct UrlHealth {
    config: BreakerConfig,
    urls: Mutex<HashMap<String, UrlState>>,
}

impl UrlHealth {
    pub fn new(config: BreakerConfig) -> Self {
        UrlHealth {
            config,
            urls: Mutex::new(HashMap::new()),
        }
    }

    /// Asks to send to `url` now. In half-open state exactly one caller gets
    /// `Go` (the probe); the others wait for its outcome.
    pub fn gate(&self, url: &str, now: Instant) -> Gate {
        let Ok(mut urls) = self.urls.lock() else {
            return Gate::Go;
        };
        let state = urls.entry(url.to_string()).or_insert_with(UrlState::new);
        if let Some(until) = state.slow_until {
            if until > now {
                return Gate::Wait(until);
            }
            state.slow_until = None;
        }
        match state.breaker {
            BreakerState::Closed => Gate::Go,
            BreakerState::Open { until, period } => {
                if until > now {
                    Gate::Wait(until)
                } else {
                    state.breaker = BreakerState::HalfOpen { period };
                    Gate::Go
                }
            }
            BreakerState::HalfOpen { .. } => Gate::Wait(now + Duration::from_secs(1)),
        }
    }

    /// Records the outcome of an attempt to `url`.
    pub fn record(&self, url: &str, health: Health, now: Instant) {
        let Ok(mut urls) = self.urls.lock() else {
            return;
        };
        let cfg = self.config;
        let state = urls.entry(url.to_string()).or_insert_with(UrlState::new);
        let failed = !matches!(health, Health::Alive);
        match health {
            Health::SlowDown(retry_after) => {
                state.slow_level = state.slow_level.saturating_add(1);
                let pause = retry_after.unwrap_or_else(|| {
                    Duration::from_secs(1u64 << (state.slow_level - 1).min(10))
                        .min(cfg.max_slow_down)
                });
                state.slow_until = Some(now + pause.min(Duration::from_secs(3600)));
            }
            Health::Alive => state.slow_level = 0,
            Health::Failing => {}
        }
        match state.breaker {
            BreakerState::HalfOpen { period } => {
                if failed {
                    let period = (period * 2).min(cfg.max_open_for);
                    state.breaker = BreakerState::Open {
                        until: now + period,
                        period,
                    };
                } else {
                    state.breaker = BreakerState::Closed;
                    state.outcomes.clear();
                }
                return;
            }
            BreakerState::Open { .. } => return,
            BreakerState::Closed => {}
        }
        state.outcomes.push_back(failed);
        while state.outcomes.len() > cfg.window {
            state.outcomes.pop_front();
        }
        let failures = state.outcomes.iter().filter(|f| **f).count();
        if state.outcomes.len() >= cfg.min_samples
            && failures as f64 / state.outcomes.len() as f64 >= cfg.failure_rate
        {
            state.breaker = BreakerState::Open {
                until: now + cfg.open_for,
                period: cfg.open_for,
            };
            state.outcomes.clear();
            tracing::warn!(url, "circuit breaker opened: the receiver keeps failing");
        }
    }

    /// Whether the breaker of `url` is open (for display and metrics).
    pub fn is_open(&self, url: &str) -> bool {
        self.urls
            .lock()
            .ok()
            .and_then(|u| {
                u.get(url)
                    .map(|s| !matches!(s.breaker, BreakerState::Closed))
            })
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_and_probes_once() {
        let h = UrlHealth::new(BreakerConfig::default());
        let t0 = Instant::now();
        for _ in 0..9 {
            h.record("u", Health::Failing, t0);
            assert_eq!(h.gate("u", t0), Gate::Go);
        }
        h.record("u", Health::Failing, t0);
        assert!(matches!(h.gate("u", t0), Gate::Wait(_)));
        let later = t0 + Duration::from_secs(6);
        assert_eq!(h.gate("u", later), Gate::Go, "the probe");
        assert!(
            matches!(h.gate("u", later), Gate::Wait(_)),
            "only one probe"
        );
        h.record("u", Health::Failing, later);
        // Failed probe: open twice as long.
        assert!(matches!(
            h.gate("u", later + Duration::from_secs(6)),
            Gate::Wait(_)
        ));
        let much_later = later + Duration::from_secs(11);
        assert_eq!(h.gate("u", much_later), Gate::Go);
        h.record("u", Health::Alive, much_later);
        assert_eq!(h.gate("u", much_later), Gate::Go);
        assert!(!h.is_open("u"));
    }

    #[test]
    fn mostly_healthy_urls_stay_closed() {
        let h = UrlHealth::new(BreakerConfig::default());
        let t0 = Instant::now();
        for i in 0..100 {
            h.record(
                "u",
                if i % 3 == 0 {
                    Health::Failing
                } else {
                    Health::Alive
                },
                t0,
            );
        }
        assert_eq!(h.gate("u", t0), Gate::Go);
    }

    #[test]
    fn slow_down_honours_retry_after_and_grows_without_it() {
        let h = UrlHealth::new(BreakerConfig::default());
        let t0 = Instant::now();
        h.record("u", Health::SlowDown(Some(Duration::from_secs(30))), t0);
        assert_eq!(h.gate("u", t0), Gate::Wait(t0 + Duration::from_secs(30)));
        assert_eq!(h.gate("u", t0 + Duration::from_secs(30)), Gate::Go);
        h.record("u", Health::SlowDown(None), t0);
        assert_eq!(h.gate("u", t0), Gate::Wait(t0 + Duration::from_secs(2)));
        h.record("u", Health::Alive, t0 + Duration::from_secs(3));
        h.record("u", Health::SlowDown(None), t0);
        assert_eq!(h.gate("u", t0), Gate::Wait(t0 + Duration::from_secs(1)));
        assert_eq!(h.gate("other", t0), Gate::Go);
    }
}
