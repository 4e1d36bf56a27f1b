//! Destination filters: which events a destination receives.
//!
//! ```toml
//! filter = { types = ["track"], events = ["Order Completed"], conditions = [
//!   { field = "properties.plan", op = "eq", value = "pro" },
//! ] }
//! ```
//! An event passes when its type is listed (or `types` is empty), its event
//! name is listed (or `events` is empty, or it is not a track), and every
//! condition holds.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(default)]
    pub types: Vec<String>,
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// A dot path into the event, e.g. `properties.plan` or `context.library.name`.
    pub field: String,
    pub op: Op,
    #[serde(default)]
    pub value: Option<Value>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Ne,
    Exists,
    Missing,
    Contains,
    In,
}

fn lookup<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(event, |v, key| v.get(key))
}

/// Compares loosely: `"1"` equals `1`, as people writing filters expect.
fn loosely_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::Number(n)) | (Value::Number(n), Value::String(x)) => {
            x == &n.to_string()
        }
        _ => a == b,
    }
}

impl Condition {
    fn holds(&self, event: &Value) -> bool {
        let found = lookup(event, &self.field);
        let value = self.value.as_ref().unwrap_or(&Value::Null);
        match self.op {
            Op::Exists => found.is_some_and(|v| !v.is_null()),
            Op::Missing => found.is_none_or(Value::is_null),
            Op::Eq => found.is_some_and(|f| loosely_equal(f, value)),
            Op::Ne => !found.is_some_and(|f| loosely_equal(f, value)),
            Op::Contains => match (found, value) {
                (Some(Value::String(s)), Value::String(needle)) => s.contains(needle.as_str()),
                (Some(Value::Array(items)), v) => items.iter().any(|i| loosely_equal(i, v)),
                _ => false,
            },
            Op::In => match (found, value) {
                (Some(f), Value::Array(options)) => options.iter().any(|o| loosely_equal(f, o)),
                _ => false,
            },
        }
    }
}

impl Filter {
    pub fn validate(&self) -> Result<(), String> {
        for c in &self.conditions {
            if c.field.is_empty() {
                return Err("a condition needs a `field`".into());
            }
            let needs_value = !matches!(c.op, Op::Exists | Op::Missing);
            if needs_value && c.value.is_none() {
                return Err(format!("condition on {:?} needs a `value`", c.field));
            }
            if c.op == Op::In && !c.value.as_ref().is_some_and(Value::is_array) {
                return Err(format!(
                    "condition on {:?}: `in` needs an array `value`",
                    c.field
                ));
            }
        }
        Ok(())
    }

    pub fn matches(&self, event: &Value) -> bool {
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !self.types.is_empty() && !self.types.iter().any(|t| t == kind) {
            return false;
        }
        if !self.events.is_empty() && kind == "track" {
            let name = event
                .get("event")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !self.events.iter().any(|e| e == name) {
                return false;
            }
        }
        self.conditions.iter().all(|c| c.holds(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(toml_text: &str) -> Filter {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn types_events_and_conditions() {
        let f = filter(
            r#"types = ["track", "identify"]
events = ["Order Completed"]
conditions = [{ field = "properties.plan", op = "in", value = ["pro", "team"] }, { field = "context.test", op = "missing" }]"#,
        );
        f.validate().unwrap();
        assert!(f.matches(
            &json!({"type": "track", "event": "Order Completed", "properties": {"plan": "pro"}})
        ));
        assert!(
            !f.matches(&json!({"type": "track", "event": "Other", "properties": {"plan": "pro"}}))
        );
        assert!(!f.matches(&json!({"type": "page", "properties": {"plan": "pro"}})));
        assert!(!f.matches(
            &json!({"type": "track", "event": "Order Completed", "properties": {"plan": "free"}})
        ));
        assert!(!f.matches(&json!({"type": "track", "event": "Order Completed", "properties": {"plan": "pro"}, "context": {"test": true}})));
        assert!(f.matches(&json!({"type": "identify", "properties": {"plan": "team"}})));
    }

    #[test]
    fn loose_equality_and_validation() {
        let f = filter(r#"conditions = [{ field = "properties.n", op = "eq", value = "3" }]"#);
        assert!(f.matches(&json!({"properties": {"n": 3}})));
        let bad = filter(r#"conditions = [{ field = "x", op = "eq" }]"#);
        assert!(bad.validate().is_err());
        let contains =
            filter(r#"conditions = [{ field = "event", op = "contains", value = "Order" }]"#);
        assert!(contains.matches(&json!({"event": "Order Completed"})));
    }
}
