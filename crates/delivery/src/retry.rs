//! Retry policy: which failures are retried, and when.

use rand::Rng;
use std::time::Duration;

/// Exponential backoff with jitter, bounded by a maximum age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Longest delay between two tries.
    pub max_delay: Duration,
    /// Give up (dead-letter) once a delivery is this old.
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(1),
            max_delay: Duration::from_secs(600),
            max_age: Duration::from_secs(4 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The delay ceiling after `attempts` failed tries (1 = the first failure).
    pub fn ceiling(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        self.initial.saturating_mul(1u32 << exp).min(self.max_delay)
    }

    /// The delay before the next try: uniformly drawn from the upper half of
    /// the ceiling, so retries of many deliveries spread out instead of
    /// arriving together, yet never come back much earlier than planned.
    pub fn delay(&self, attempts: u32) -> Duration {
        let ceiling = self.ceiling(attempts);
        let half = ceiling / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

/// What one HTTP attempt means for the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Delivered,
    /// Timeout, connection error, 5xx, 429: try again later. `retry_after` is
    /// the receiver's own `Retry-After`, when it gave one.
    Retry {
        retry_after: Option<Duration>,
        /// 429, 502, 504: the receiver asks us to slow down.
        slow_down: bool,
    },
    /// 410 Gone: the URL is switched off.
    Gone,
    /// Any other status: retrying would not help.
    Reject,
}

/// Classifies an HTTP status (`None` = no response: timeout or connection error).
pub fn classify(status: Option<u16>, retry_after: Option<Duration>) -> Verdict {
    match status {
        None => Verdict::Retry {
            retry_after: None,
            slow_down: false,
        },
        Some(s) if (200..300).contains(&s) => Verdict::Delivered,
        Some(410) => Verdict::Gone,
        Some(429 | 502 | 504) => Verdict::Retry {
            retry_after,
            slow_down: true,
        },
        Some(s) if s >= 500 => Verdict::Retry {
            retry_after,
            slow_down: false,
        },
        Some(408) => Verdict::Retry {
            retry_after,
            slow_down: false,
        },
        Some(_) => Verdict::Reject,
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - now;
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// Serde helper: a duration written as `"4h"`, `"30s"` … (see [`parse_duration`]).
pub fn duration_from_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Parses durations like `500ms`, `30s`, `15m`, `4h`, `1d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration {s:?}: expected a number and a unit, e.g. \"4h\"")
    })?;
    let ms = match unit.trim() {
        "ms" => n,
        "" | "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        other => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m, h or d)"
            ))
        }
    };
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_secs(1));
        assert_eq!(p.ceiling(2), Duration::from_secs(2));
        assert_eq!(p.ceiling(5), Duration::from_secs(16));
        assert_eq!(p.ceiling(50), Duration::from_secs(600));
        for attempts in 1..40 {
            let d = p.delay(attempts);
            assert!(
                d >= p.ceiling(attempts) / 2 && d <= p.ceiling(attempts),
                "{attempts}: {d:?}"
            );
        }
    }

    #[test]
    fn jitter_spreads_retries() {
        let p = RetryPolicy::default();
        let delays: std::collections::HashSet<_> = (0..50).map(|_| p.delay(10)).collect();
        assert!(delays.len() > 10);
    }

    #[test]
    fn four_hours_hold_many_attempts() {
        let p = RetryPolicy::default();
        let (mut total, mut n) = (Duration::ZERO, 0);
        while total < p.max_age {
            n += 1;
            total += p.ceiling(n);
        }
        assert!(n > 20, "only {n} attempts in four hours");
    }

    #[test]
    fn classifies_statuses() {
        assert_eq!(classify(Some(200), None), Verdict::Delivered);
        assert_eq!(classify(Some(204), None), Verdict::Delivered);
        assert_eq!(classify(Some(400), None), Verdict::Reject);
        assert_eq!(classify(Some(401), None), Verdict::Reject);
        assert_eq!(classify(Some(404), None), Verdict::Reject);
        assert_eq!(classify(Some(410), None), Verdict::Gone);
        assert_eq!(
            classify(Some(500), None),
            Verdict::Retry {
                retry_after: None,
                slow_down: false
            }
        );
        assert_eq!(
            classify(None, None),
            Verdict::Retry {
                retry_after: None,
                slow_down: false
            }
        );
        let ra = Some(Duration::from_secs(7));
        assert_eq!(
            classify(Some(429), ra),
            Verdict::Retry {
                retry_after: ra,
                slow_down: true
            }
        );
        assert!(matches!(
            classify(Some(502), None),
            Verdict::Retry {
                slow_down: true,
                ..
            }
        ));
        assert!(matches!(
            classify(Some(504), None),
            Verdict::Retry {
                slow_down: true,
                ..
            }
        ));
        assert!(matches!(
            classify(Some(503), None),
            Verdict::Retry {
                slow_down: false,
                ..
            }
        ));
    }

    #[test]
    fn parses_retry_after() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(14400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("4 hours").is_err());
        assert!(parse_duration("h").is_err());
    }
}
