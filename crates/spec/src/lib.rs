//! Segment Spec messages: validation and normalization.
//!
//! Pure functions, no I/O. The HTTP layer hands in parsed JSON and the time it
//! received the request; this crate answers with either a normalized message
//! (the exact bytes that are stored and later delivered) or an error that names
//! the offending field.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::fmt;

mod raw;

pub use raw::{normalize_fast, RawBatch, RawItem};

/// The six Spec calls the Tracking API accepts, plus `delete` (user deletion
/// notices that switchyard itself emits to destinations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
    Delete,
}

impl MessageType {
    /// The types a client may send (not `delete`, which only switchyard emits).
    pub const CLIENT_TYPES: [MessageType; 6] = [
        MessageType::Track,
        MessageType::Identify,
        MessageType::Page,
        MessageType::Screen,
        MessageType::Group,
        MessageType::Alias,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Track => "track",
            MessageType::Identify => "identify",
            MessageType::Page => "page",
            MessageType::Screen => "screen",
            MessageType::Group => "group",
            MessageType::Alias => "alias",
            MessageType::Delete => "delete",
        }
    }

    /// Parses a client-sent `type`; `delete` is not accepted from clients.
    pub fn from_client(s: &str) -> Option<MessageType> {
        Self::CLIENT_TYPES.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Size limits. Defaults are Segment's documented HTTP API limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single message, serialized (32 KB).
    pub max_message_bytes: usize,
    /// Largest request body, after decompression (500 KB).
    pub max_batch_bytes: usize,
    /// Most messages in one batch request (2,500).
    pub max_batch_events: usize,
    /// Longest `messageId` accepted: 99 characters (the issue's "under 100").
    pub max_message_id_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 32 * 1024,
            max_batch_bytes: 500 * 1024,
            max_batch_events: 2500,
            max_message_id_chars: 99,
        }
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    pub kind: SpecErrorKind,
    /// The JSON field at fault, when one is.
    pub field: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecErrorKind {
    /// The message breaks the Spec (400).
    Invalid,
    /// The message is larger than a limit (413).
    TooLarge,
}

impl SpecErrorKind {
    pub fn code(self) -> &'static str {
        match self {
            SpecErrorKind::Invalid => "invalid_message",
            SpecErrorKind::TooLarge => "message_too_large",
        }
    }
}

impl SpecError {
    pub fn invalid(field: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        SpecError {
            kind: SpecErrorKind::Invalid,
            field: field.into(),
            message: message.into(),
        }
    }

    fn missing(field: &str, what: &str) -> Self {
        Self::invalid(
            Some(field.to_string()),
            format!("{what} requires `{field}`"),
        )
    }
}

/// A validated, normalized message ready for the event log.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: MessageType,
    pub message_id: String,
    /// `userId` as a string, when the message has one (used for user deletion).
    pub user_id: Option<String>,
    /// The message serialized as compact JSON: exactly what is stored and sent.
    pub json: Vec<u8>,
}

/// Context that applies to every message of one request.
#[derive(Debug, Clone)]
pub struct RequestContext<'a> {
    pub received_at: DateTime<Utc>,
    /// `received_at` formatted once for every message of the request.
    received_at_text: String,
    pub limits: &'a Limits,
    /// Batch-level `sentAt`, applied to messages that carry none.
    pub sent_at: Option<&'a Value>,
    /// Batch-level `context`, merged under each message's own.
    pub context: Option<&'a Map<String, Value>>,
    /// Batch-level `integrations`, merged under each message's own.
    pub integrations: Option<&'a Map<String, Value>>,
}

impl<'a> RequestContext<'a> {
    pub fn new(received_at: DateTime<Utc>, limits: &'a Limits) -> Self {
        RequestContext {
            received_at,
            received_at_text: format_time(received_at),
            limits,
            sent_at: None,
            context: None,
            integrations: None,
        }
    }
}

/// Formats a time the way Segment does: RFC 3339, milliseconds, `Z`.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn not_a_date(field: &str) -> SpecError {
    SpecError::invalid(
        Some(field.to_string()),
        format!("`{field}` must be an ISO 8601 date string"),
    )
}

/// An optional date field: absent or null is `None`.
fn optional_time(field: &str, v: Field<'_>) -> Result<Option<DateTime<Utc>>, SpecError> {
    match v {
        Field::Absent | Field::Null => Ok(None),
        Field::Str(s) => parse_time(field, &s).map(Some),
        _ => Err(not_a_date(field)),
    }
}

fn parse_time(field: &str, s: &str) -> Result<DateTime<Utc>, SpecError> {
    parse_iso8601(s).ok_or_else(|| {
        SpecError::invalid(
            Some(field.to_string()),
            format!("`{field}` is not a valid ISO 8601 date: {s:?}"),
        )
    })
}

/// Reads the ISO 8601 forms clients send: RFC 3339, and also an offset
/// without a colon (`+0000`), no seconds (`T10:00Z`), a space for `T`, lower
/// case `t`/`z`, no offset at all (read as UTC), or a bare date (midnight
/// UTC), as analytics.js's own date parser does. Years outside 0000–9999
/// are refused: they cannot be written back in the same form.
pub fn parse_iso8601(s: &str) -> Option<DateTime<Utc>> {
    let in_range = |t: DateTime<Utc>| {
        // A leap second (`…:60`) is read as the last instant of the second
        // before it: written back as `:60`, JavaScript's Date could not read it.
        let t = if chrono::Timelike::nanosecond(&t) >= 1_000_000_000 {
            chrono::Timelike::with_nanosecond(&t, 999_999_999).unwrap_or(t)
        } else {
            t
        };
        (0..=9999)
            .contains(&chrono::Datelike::year(&t))
            .then_some(t)
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return in_range(t.with_timezone(&Utc));
    }
    let mut text = s.trim().to_ascii_uppercase();
    if text.len() > 10 && text.as_bytes()[10] == b' ' {
        text.replace_range(10..11, "T");
    }
    if let Some(naive) = text.strip_suffix('Z') {
        return ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
            .iter()
            .find_map(|f| chrono::NaiveDateTime::parse_from_str(naive, f).ok())
            .and_then(|n| in_range(n.and_utc()));
    }
    ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z"]
        .iter()
        .find_map(|f| DateTime::parse_from_str(&text, f).ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
                .iter()
                .find_map(|f| chrono::NaiveDateTime::parse_from_str(&text, f).ok())
                .map(|n| n.and_utc())
        })
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|n| n.and_utc())
        })
        .and_then(in_range)
}

/// Replaces each lone UTF-16 surrogate escape (`\ud83d` not followed by its
/// low half, or a low half alone) with `\ufffd`, as Go's and JavaScript's
/// JSON decoders do; `serde_json` refuses such text. An emoji cut in half by
/// `slice` is enough to produce one, and refusing it would cost a whole
/// batch. `None` when there is none to replace.
pub fn replace_lone_surrogates(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let unit = |at: usize| {
        let hex = bytes.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let escape_at = |at: usize| bytes.get(at) == Some(&b'\\') && bytes.get(at + 1) == Some(&b'u');
    let (mut repaired, mut copied, mut at) = (String::new(), 0, 0);
    while let Some(offset) = bytes[at..].iter().position(|&b| b == b'\\') {
        let escape = at + offset;
        at = escape + 2; // past `\x`, so an escaped backslash is skipped whole
        if bytes.get(escape + 1) != Some(&b'u') {
            continue;
        }
        let Some(first) = unit(escape + 2) else {
            continue;
        };
        at = escape + 6;
        let lone = match first {
            0xD800..=0xDBFF => {
                let paired =
                    escape_at(at) && unit(at + 2).is_some_and(|u| (0xDC00..=0xDFFF).contains(&u));
                if paired {
                    at += 6;
                }
                !paired
            }
            0xDC00..=0xDFFF => true,
            _ => false,
        };
        if lone {
            repaired.push_str(&text[copied..escape]);
            repaired.push_str("\\ufffd");
            copied = at;
        }
    }
    if copied == 0 {
        return None;
    }
    repaired.push_str(&text[copied..]);
    Some(repaired)
}

/// One top-level field of a message, as validation sees it.
enum Field<'v> {
    Absent,
    Null,
    Str(Cow<'v, str>),
    /// A number, written as `serde_json::Number` displays it.
    Number(String),
    Object,
    /// A boolean or an array.
    Other,
}

/// The top-level fields of a message being normalized. Validation rules are
/// written once, against this trait; it is implemented by a parsed
/// `serde_json` map and by the request bytes themselves (the fast path of
/// the `raw` module), which must give the same answer byte for byte.
trait Fields {
    fn field(&self, key: &str) -> Field<'_>;
    fn contains(&self, key: &str) -> bool;
    /// Sets a string field, in place when it exists, last otherwise. Keys
    /// are the Spec's own names, so a new one costs no allocation.
    fn set_str(&mut self, key: &'static str, value: &str);
    /// Sets an integer field, as `set_str` does a string.
    fn set_int(&mut self, key: &'static str, value: i64);
    /// Removes a field, keeping the order of the others.
    fn remove(&mut self, key: &str);
    /// Merges `defaults` under the object `key` (keys already there win).
    fn merge_under(&mut self, key: &str, defaults: Option<&Map<String, Value>>);
}

impl Fields for Map<String, Value> {
    fn field(&self, key: &str) -> Field<'_> {
        match self.get(key) {
            None => Field::Absent,
            Some(Value::Null) => Field::Null,
            Some(Value::String(s)) => Field::Str(Cow::Borrowed(s)),
            Some(Value::Number(n)) => Field::Number(n.to_string()),
            Some(Value::Object(_)) => Field::Object,
            Some(_) => Field::Other,
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.contains_key(key)
    }

    fn set_str(&mut self, key: &'static str, value: &str) {
        self.insert(key.to_string(), Value::String(value.to_string()));
    }

    fn set_int(&mut self, key: &'static str, value: i64) {
        self.insert(key.to_string(), Value::Number(value.into()));
    }

    fn remove(&mut self, key: &str) {
        self.shift_remove(key);
    }

    fn merge_under(&mut self, key: &str, defaults: Option<&Map<String, Value>>) {
        let Some(defaults) = defaults else { return };
        match self.get_mut(key) {
            Some(Value::Object(mine)) => {
                for (k, v) in defaults {
                    if !mine.contains_key(k) {
                        mine.insert(k.clone(), v.clone());
                    }
                }
            }
            None | Some(Value::Null) => {
                self.insert(key.to_string(), Value::Object(defaults.clone()));
            }
            Some(_) => {}
        }
    }
}

/// An identifier field: Segment accepts strings and numbers. A number is
/// written back as the string JavaScript's `String(n)` gives (`77.0` → `"77"`):
/// the Spec types identifiers as strings, the SDKs that check send them so,
/// and a user deletion then finds the user by the id every destination saw.
fn identifier(obj: &mut impl Fields, field: &'static str) -> Result<Option<String>, SpecError> {
    match obj.field(field) {
        Field::Absent | Field::Null => Ok(None),
        Field::Str(s) if s.is_empty() => Ok(None),
        Field::Str(s) => Ok(Some(s.into_owned())),
        Field::Number(n) => {
            let text = js_number_text(&n);
            obj.set_str(field, &text);
            Ok(Some(text))
        }
        _ => Err(SpecError::invalid(
            Some(field.to_string()),
            format!("`{field}` must be a string or a number"),
        )),
    }
}

/// `String(n)` in JavaScript, for a number as `serde_json` displays it.
/// Integers `serde_json` holds exactly are kept digit for digit; others are
/// written as [`js_f64_text`] writes them.
fn js_number_text(n: &str) -> String {
    if n.bytes()
        .enumerate()
        .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-'))
    {
        return n.to_string();
    }
    match n.parse::<f64>() {
        Ok(f) if f.is_finite() => js_f64_text(f),
        _ => n.to_string(),
    }
}

/// A double as ECMAScript's Number::toString (and so `JSON.stringify`)
/// writes it: the shortest digits that read back as the same double, in full
/// from 1e-6 up to 1e21, with an exponent (`1e+21`, `1.5e-7`) outside.
/// Receivers that check a signature over `JSON.stringify(body)` need the
/// very same text.
pub(crate) fn js_f64_text(f: f64) -> String {
    if f == 0.0 || !f.is_finite() {
        return "0".into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.2345e20".
    let scientific = format!("{:e}", f.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits = mantissa.replace('.', "");
    let k = digits.len() as i32;
    // The decimal point goes after `point` digits.
    let point = exponent + 1;
    let body = if k <= point && point <= 21 {
        format!("{digits}{}", "0".repeat((point - k) as usize))
    } else if 0 < point && point <= 21 {
        format!(
            "{}.{}",
            &digits[..point as usize],
            &digits[point as usize..]
        )
    } else if -6 < point && point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else {
        let sign = if exponent >= 0 { '+' } else { '-' };
        let mantissa = if k == 1 {
            digits.clone()
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        format!("{mantissa}e{sign}{}", exponent.abs())
    };
    if f < 0.0 {
        format!("-{body}")
    } else {
        body
    }
}

/// Compact JSON with doubles written as JavaScript writes them.
struct JsNumbers;

impl serde_json::ser::Formatter for JsNumbers {
    fn write_f64<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f64,
    ) -> std::io::Result<()> {
        writer.write_all(js_f64_text(value).as_bytes())
    }
}

/// A message's JSON as it is stored and sent: compact, numbers as
/// `JSON.stringify` writes them.
fn to_js_json(value: &Value) -> serde_json::Result<Vec<u8>> {
    use serde::Serialize;
    let mut out = Vec::with_capacity(256);
    value.serialize(&mut serde_json::Serializer::with_formatter(
        &mut out, JsNumbers,
    ))?;
    Ok(out)
}

fn require_object(obj: &impl Fields, field: &str) -> Result<(), SpecError> {
    match obj.field(field) {
        Field::Absent | Field::Null | Field::Object => Ok(()),
        _ => Err(SpecError::invalid(
            Some(field.to_string()),
            format!("`{field}` must be an object"),
        )),
    }
}

/// Rewrites integral floats as integers, so that the bytes switchyard sends are
/// the bytes `JSON.stringify` produces for the same value (`1.0` → `1`): Segment
/// receivers verify signatures by re-serializing the parsed body in JavaScript.
fn canonicalize_numbers(v: &mut Value, depth: usize) {
    if depth > 256 {
        return;
    }
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                if !n.is_i64()
                    && !n.is_u64()
                    && f.fract() == 0.0
                    && f.abs() < 9.007_199_254_740_992e15
                {
                    *n = Number::from(f as i64);
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| canonicalize_numbers(i, depth + 1)),
        Value::Object(map) => map
            .values_mut()
            .for_each(|i| canonicalize_numbers(i, depth + 1)),
        _ => {}
    }
}

/// The `version` normalization gives a message that carries none.
pub const SPEC_VERSION: i64 = 1;

/// Upper bound of the bytes normalization adds to a message (`messageId`,
/// `receivedAt`, `timestamp`, `originalTimestamp`, `sentAt`, `type`).
pub const NORMALIZATION_OVERHEAD: usize = 256;

/// Validates and normalizes one message.
///
/// `forced_type` is the type implied by the endpoint (`/v1/track` …); batch items
/// pass `None` and are typed by their own `type` field.
pub fn normalize(
    value: Value,
    forced_type: Option<MessageType>,
    ctx: &RequestContext<'_>,
) -> Result<Message, SpecError> {
    normalize_or_return(value, forced_type, ctx).map_err(|(e, _)| e)
}

/// Like [`normalize`], but gives the (partly normalized) message back with
/// the error, so a caller can show what was refused without having copied
/// every valid message beforehand.
#[allow(clippy::result_large_err)] // the error path is the rare one
pub fn normalize_or_return(
    value: Value,
    forced_type: Option<MessageType>,
    ctx: &RequestContext<'_>,
) -> Result<Message, (SpecError, Value)> {
    let mut obj = match value {
        Value::Object(obj) => obj,
        other => {
            return Err((
                SpecError::invalid(None, "a message must be a JSON object"),
                other,
            ))
        }
    };
    match fill(&mut obj, forced_type, ctx) {
        Ok((kind, message_id, user_id)) => {
            finish(obj, kind, message_id, user_id, ctx).map_err(|e| (e, Value::Null))
        }
        Err(e) => Err((e, Value::Object(obj))),
    }
}

/// Validates and fills one message in place; returns its type, id and user.
fn fill(
    obj: &mut impl Fields,
    forced_type: Option<MessageType>,
    ctx: &RequestContext<'_>,
) -> Result<(MessageType, String, Option<String>), SpecError> {
    let kind = match forced_type {
        Some(t) => t,
        None => match obj.field("type") {
            Field::Str(s) => MessageType::from_client(&s).ok_or_else(|| {
                SpecError::invalid(
                    Some("type".to_string()),
                    format!(
                        "unknown message type {s:?}: expected one of track, identify, page, screen, group, alias"
                    ),
                )
            })?,
            Field::Absent => {
                return Err(SpecError::invalid(
                    Some("type".to_string()),
                    "a batch item requires `type`",
                ))
            }
            _ => {
                return Err(SpecError::invalid(
                    Some("type".to_string()),
                    "`type` must be a string",
                ))
            }
        },
    };
    // Batch items already name their type as it is written back.
    if forced_type.is_some() || !matches!(obj.field("type"), Field::Str(s) if s == kind.as_str()) {
        obj.set_str("type", kind.as_str());
    }
    // The write key is a credential: it never travels further than the door.
    obj.remove("writeKey");

    let user_id = identifier(obj, "userId")?;
    let anonymous_id = identifier(obj, "anonymousId")?;
    if user_id.is_none() && anonymous_id.is_none() && kind != MessageType::Delete {
        return Err(SpecError::invalid(
            Some("userId".to_string()),
            format!("{kind} requires `userId` or `anonymousId`"),
        ));
    }
    match kind {
        MessageType::Track => match obj.field("event") {
            Field::Str(s) if !s.trim().is_empty() => {}
            Field::Str(_) | Field::Absent | Field::Null => {
                return Err(SpecError::missing("event", "track"))
            }
            _ => {
                return Err(SpecError::invalid(
                    Some("event".to_string()),
                    "`event` must be a string",
                ))
            }
        },
        MessageType::Group => {
            if identifier(obj, "groupId")?.is_none() {
                return Err(SpecError::missing("groupId", "group"));
            }
        }
        MessageType::Alias => {
            if identifier(obj, "previousId")?.is_none() {
                return Err(SpecError::missing("previousId", "alias"));
            }
        }
        MessageType::Page | MessageType::Screen => {
            if !matches!(
                obj.field("name"),
                Field::Absent | Field::Null | Field::Str(_)
            ) {
                return Err(SpecError::invalid(
                    Some("name".to_string()),
                    "`name` must be a string",
                ));
            }
        }
        MessageType::Identify | MessageType::Delete => {}
    }
    for field in ["properties", "traits", "context", "integrations"] {
        require_object(obj, field)?;
    }

    let message_id = match obj.field("messageId") {
        Field::Absent | Field::Null => {
            let id = uuid::Uuid::new_v4().to_string();
            obj.set_str("messageId", &id);
            id
        }
        Field::Str(s) if s.is_empty() => {
            return Err(SpecError::invalid(
                Some("messageId".to_string()),
                "`messageId` must not be empty",
            ))
        }
        Field::Str(s) => {
            let chars = s.chars().count();
            if chars > ctx.limits.max_message_id_chars {
                return Err(SpecError::invalid(
                    Some("messageId".to_string()),
                    format!(
                        "`messageId` is {chars} characters long; the limit is {}",
                        ctx.limits.max_message_id_chars
                    ),
                ));
            }
            s.into_owned()
        }
        _ => {
            return Err(SpecError::invalid(
                Some("messageId".to_string()),
                "`messageId` must be a string",
            ))
        }
    };

    obj.merge_under("context", ctx.context);
    obj.merge_under("integrations", ctx.integrations);

    // Clock-skew correction, as Segment does it: the client's `timestamp` is
    // kept as `originalTimestamp`, and `timestamp` becomes
    // receivedAt - (sentAt - originalTimestamp).
    let original = optional_time("timestamp", obj.field("timestamp"))?;
    let sent_at = match obj.field("sentAt") {
        Field::Absent => match ctx.sent_at {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(parse_time("sentAt", s)?),
            Some(_) => return Err(not_a_date("sentAt")),
        },
        own => optional_time("sentAt", own)?,
    };
    let timestamp = match (original, sent_at) {
        // A correction that leaves years 0000–9999 (a client clock off by
        // millennia) would not be a date anyone can read: the client's
        // `timestamp` is kept instead.
        (Some(orig), Some(sent)) => ctx
            .received_at
            .checked_sub_signed(sent - orig)
            .filter(|t| (0..=9999).contains(&chrono::Datelike::year(t)))
            .unwrap_or(orig),
        (Some(orig), None) => orig,
        (None, _) => ctx.received_at,
    };
    if let Some(orig) = original {
        if !obj.contains("originalTimestamp") {
            obj.set_str("originalTimestamp", &format_time(orig));
        }
    }
    if let Some(sent) = sent_at {
        obj.set_str("sentAt", &format_time(sent));
    }
    if timestamp == ctx.received_at {
        obj.set_str("timestamp", &ctx.received_at_text);
    } else {
        obj.set_str("timestamp", &format_time(timestamp));
    }
    obj.set_str("receivedAt", &ctx.received_at_text);
    // The Spec's `version`: the Tracking API version that received the
    // message, as in every example of Segment's Webhooks destination.
    if !obj.contains("version") {
        obj.set_int("version", SPEC_VERSION);
    }

    Ok((kind, message_id, user_id))
}

/// Serializes a filled message and checks its size.
fn finish(
    obj: Map<String, Value>,
    kind: MessageType,
    message_id: String,
    user_id: Option<String>,
    ctx: &RequestContext<'_>,
) -> Result<Message, SpecError> {
    let mut value = Value::Object(obj);
    canonicalize_numbers(&mut value, 0);
    let json = to_js_json(&value)
        .map_err(|e| SpecError::invalid(None, format!("message cannot be serialized: {e}")))?;
    message(json, kind, message_id, user_id, ctx)
}

/// The normalized message, once its size is checked.
fn message(
    json: Vec<u8>,
    kind: MessageType,
    message_id: String,
    user_id: Option<String>,
    ctx: &RequestContext<'_>,
) -> Result<Message, SpecError> {
    // The limit applies to the message as the client sent it: the fields
    // normalization adds (timestamps, messageId) do not count against it.
    if json.len() > ctx.limits.max_message_bytes + NORMALIZATION_OVERHEAD {
        return Err(SpecError {
            kind: SpecErrorKind::TooLarge,
            field: None,
            message: format!(
                "message is about {} bytes; the limit is {} bytes",
                json.len().saturating_sub(NORMALIZATION_OVERHEAD),
                ctx.limits.max_message_bytes
            ),
        });
    }
    Ok(Message {
        kind,
        message_id,
        user_id,
        json,
    })
}

/// Builds the `delete` notice sent to destinations for a user deletion request.
pub fn delete_notice(user_id: &str, message_id: &str, at: DateTime<Utc>) -> Message {
    let value = serde_json::json!({
        "type": "delete",
        "userId": user_id,
        "messageId": message_id,
        "timestamp": format_time(at),
        "version": SPEC_VERSION,
    });
    Message {
        kind: MessageType::Delete,
        message_id: message_id.to_string(),
        user_id: Some(user_id.to_string()),
        json: serde_json::to_vec(&value).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn run(v: Value, t: Option<MessageType>) -> Result<Value, SpecError> {
        let limits = Limits::default();
        let ctx = RequestContext::new(at("2024-01-01T00:00:10Z"), &limits);
        normalize(v, t, &ctx).map(|m| serde_json::from_slice(&m.json).unwrap())
    }

    #[test]
    fn track_requires_event() {
        let err = run(json!({"userId": "u1"}), Some(MessageType::Track)).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("event"));
        assert_eq!(err.kind, SpecErrorKind::Invalid);
        let err = run(
            json!({"userId": "u1", "event": 5}),
            Some(MessageType::Track),
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("event"));
    }

    #[test]
    fn every_call_needs_an_identity() {
        for t in MessageType::CLIENT_TYPES {
            let err = run(
                json!({"event": "x", "groupId": "g", "previousId": "p"}),
                Some(t),
            )
            .unwrap_err();
            assert_eq!(err.field.as_deref(), Some("userId"), "{t}");
        }
        assert!(run(
            json!({"anonymousId": "a", "event": "x"}),
            Some(MessageType::Track)
        )
        .is_ok());
        assert!(run(json!({"userId": 42}), Some(MessageType::Identify)).is_ok());
        let err = run(json!({"userId": true}), Some(MessageType::Identify)).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("userId"));
    }

    #[test]
    fn group_and_alias_need_their_ids() {
        let err = run(json!({"userId": "u"}), Some(MessageType::Group)).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("groupId"));
        let err = run(json!({"userId": "u"}), Some(MessageType::Alias)).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("previousId"));
        assert!(run(
            json!({"userId": "u", "groupId": "g"}),
            Some(MessageType::Group)
        )
        .is_ok());
        assert!(run(
            json!({"userId": "u", "previousId": "p"}),
            Some(MessageType::Alias)
        )
        .is_ok());
    }

    #[test]
    fn batch_items_are_typed_by_type() {
        let err = run(json!({"userId": "u"}), None).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("type"));
        let err = run(json!({"userId": "u", "type": "purchase"}), None).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("type"));
        let err = run(json!({"userId": "u", "type": "delete"}), None).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("type"));
        let v = run(json!({"userId": "u", "type": "page", "name": "Home"}), None).unwrap();
        assert_eq!(v["type"], "page");
    }

    #[test]
    fn endpoint_type_wins_over_body_type() {
        let v = run(
            json!({"userId": "u", "type": "page"}),
            Some(MessageType::Identify),
        )
        .unwrap();
        assert_eq!(v["type"], "identify");
    }

    #[test]
    fn properties_must_be_objects() {
        let err = run(
            json!({"userId": "u", "event": "e", "properties": [1]}),
            Some(MessageType::Track),
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("properties"));
    }

    #[test]
    fn fills_message_id_and_received_at_and_drops_write_key() {
        let v = run(
            json!({"userId": "u", "writeKey": "secret"}),
            Some(MessageType::Identify),
        )
        .unwrap();
        assert_eq!(v["messageId"].as_str().unwrap().len(), 36);
        assert_eq!(v["receivedAt"], "2024-01-01T00:00:10.000Z");
        assert_eq!(v["timestamp"], "2024-01-01T00:00:10.000Z");
        assert!(v.get("writeKey").is_none());
    }

    #[test]
    fn message_id_limits() {
        let long = "x".repeat(100);
        let err = run(
            json!({"userId": "u", "messageId": long}),
            Some(MessageType::Identify),
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("messageId"));
        let ok = "x".repeat(99);
        assert!(run(
            json!({"userId": "u", "messageId": ok}),
            Some(MessageType::Identify)
        )
        .is_ok());
        let err = run(
            json!({"userId": "u", "messageId": 7}),
            Some(MessageType::Identify),
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("messageId"));
    }

    #[test]
    fn corrects_clock_skew_by_sent_at() {
        // The client's clock is 1 hour fast: it stamped the event 2 s before sending.
        let v = run(
            json!({"userId": "u", "timestamp": "2024-01-01T01:00:05Z", "sentAt": "2024-01-01T01:00:07Z"}),
            Some(MessageType::Identify),
        )
        .unwrap();
        assert_eq!(v["originalTimestamp"], "2024-01-01T01:00:05.000Z");
        assert_eq!(v["timestamp"], "2024-01-01T00:00:08.000Z");
        assert_eq!(v["sentAt"], "2024-01-01T01:00:07.000Z");
    }

    #[test]
    fn keeps_timestamp_without_sent_at() {
        let v = run(
            json!({"userId": "u", "timestamp": "2012-12-02T00:30:08.276Z"}),
            Some(MessageType::Identify),
        )
        .unwrap();
        assert_eq!(v["timestamp"], "2012-12-02T00:30:08.276Z");
        assert_eq!(v["originalTimestamp"], "2012-12-02T00:30:08.276Z");
    }

    #[test]
    fn bad_timestamp_is_named() {
        let err = run(
            json!({"userId": "u", "timestamp": "yesterday"}),
            Some(MessageType::Identify),
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("timestamp"));
    }

    #[test]
    fn batch_context_merges_under_message_context() {
        let limits = Limits::default();
        let batch_ctx = json!({"library": {"name": "batch"}, "ip": "1.2.3.4"});
        let mut ctx = RequestContext::new(at("2024-01-01T00:00:10Z"), &limits);
        ctx.context = batch_ctx.as_object();
        let m = normalize(
            json!({"userId": "u", "type": "identify", "context": {"library": {"name": "own"}}}),
            None,
            &ctx,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&m.json).unwrap();
        assert_eq!(v["context"]["library"]["name"], "own");
        assert_eq!(v["context"]["ip"], "1.2.3.4");
    }

    #[test]
    fn oversize_message_is_too_large() {
        let big = "x".repeat(33 * 1024);
        let err = run(
            json!({"userId": "u", "event": "e", "properties": {"blob": big}}),
            Some(MessageType::Track),
        )
        .unwrap_err();
        assert_eq!(err.kind, SpecErrorKind::TooLarge);
    }

    #[test]
    fn integral_floats_serialize_like_javascript() {
        let v: Value = serde_json::from_str(
            r#"{"userId":"u","event":"e","properties":{"a":1.0,"b":39.95,"c":[2.0]}}"#,
        )
        .unwrap();
        let limits = Limits::default();
        let ctx = RequestContext::new(at("2024-01-01T00:00:10Z"), &limits);
        let m = normalize(v, Some(MessageType::Track), &ctx).unwrap();
        let s = String::from_utf8(m.json).unwrap();
        assert!(
            s.contains(r#""properties":{"a":1,"b":39.95,"c":[2]}"#),
            "{s}"
        );
    }

    #[test]
    fn every_double_is_written_as_json_stringify_writes_it() {
        // What Node 20 prints for JSON.stringify of each, by both paths.
        let text = r#"{"userId":"u","event":"e","messageId":"m1","properties":{"big":123456789012345680000,"huge":1e21,"tiny":1.5e-7,"small":0.000001,"neg0":-0.0,"exp":2.5E+3,"long":0.1234567890123456789}}"#;
        let want = r#""properties":{"big":123456789012345680000,"huge":1e+21,"tiny":1.5e-7,"small":0.000001,"neg0":0,"exp":2500,"long":0.12345678901234568}"#;
        let limits = Limits::default();
        let ctx = RequestContext::new(at("2024-01-01T00:00:10Z"), &limits);
        let tree = normalize(
            serde_json::from_str(text).unwrap(),
            Some(MessageType::Track),
            &ctx,
        )
        .unwrap();
        let tree = String::from_utf8(tree.json).unwrap();
        assert!(tree.contains(want), "{tree}");
        // The fast path writes what the tree path writes, or leaves the
        // message to it; without the 21-digit integer it takes it.
        if let Some(fast) = normalize_fast(text, Some(MessageType::Track), &ctx) {
            assert_eq!(String::from_utf8(fast.json).unwrap(), tree);
        }
        let text = text.replace("\"big\":123456789012345680000,", "");
        let tree = normalize(
            serde_json::from_str(&text).unwrap(),
            Some(MessageType::Track),
            &ctx,
        )
        .unwrap();
        let fast =
            normalize_fast(&text, Some(MessageType::Track), &ctx).expect("the fast path takes it");
        assert_eq!(
            String::from_utf8(fast.json).unwrap(),
            String::from_utf8(tree.json).unwrap()
        );
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let cases = [
            // An emoji cut in half, at the end and inside a string.
            (r#"{"a":"Great \ud83d"}"#, Some(r#"{"a":"Great \ufffd"}"#)),
            (r#"["\uD83Dx","\ude00"]"#, Some(r#"["\ufffdx","\ufffd"]"#)),
            // Two high halves in a row: each is alone.
            (r#""\ud83d\ud83d""#, Some(r#""\ufffd\ufffd""#)),
            // A whole pair, other escapes and an escaped backslash before `u`.
            (r#""\ud83d\ude00 \u00e9 \n""#, None),
            (r#""\\ud83d""#, None),
            ("no escapes at all", None),
        ];
        for (text, want) in cases {
            assert_eq!(replace_lone_surrogates(text).as_deref(), want, "{text}");
        }
        let fixed = replace_lone_surrogates(r#"{"a":"Great \ud83d"}"#).unwrap();
        let v: Value = serde_json::from_str(&fixed).unwrap();
        assert_eq!(v["a"], "Great \u{fffd}");
    }

    #[test]
    fn iso_8601_dates_in_the_forms_clients_send() {
        for (text, want) in [
            ("2024-01-01T10:00:00.123Z", Some("2024-01-01T10:00:00.123Z")),
            ("2024-01-01T10:00:00+0200", Some("2024-01-01T08:00:00.000Z")),
            (
                "2024-01-01T10:00:00.5-05:30",
                Some("2024-01-01T15:30:00.500Z"),
            ),
            ("2024-01-01T10:00Z", Some("2024-01-01T10:00:00.000Z")),
            ("2024-01-01T10:00+01:00", Some("2024-01-01T09:00:00.000Z")),
            ("2024-01-01 10:00:00", Some("2024-01-01T10:00:00.000Z")),
            ("2024-01-01t10:00:00z", Some("2024-01-01T10:00:00.000Z")),
            ("2024-01-01T10:00:00", Some("2024-01-01T10:00:00.000Z")),
            ("2024-01-01", Some("2024-01-01T00:00:00.000Z")),
            ("2016-12-31T23:59:60Z", Some("2016-12-31T23:59:59.999Z")),
            ("2024-13-01", None),
            ("yesterday", None),
            ("1700000000", None),
        ] {
            assert_eq!(
                parse_iso8601(text).map(format_time).as_deref(),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn numeric_identifiers_are_written_as_javascript_strings() {
        let v = run(
            json!({"userId": 77.0, "anonymousId": 1.5, "groupId": 12, "event": "e"}),
            Some(MessageType::Track),
        )
        .unwrap();
        assert_eq!(
            (&v["userId"], &v["anonymousId"]),
            (&json!("77"), &json!("1.5"))
        );
        // Only the identifiers: a number elsewhere stays a number.
        assert_eq!(v["groupId"], 12);
        let v = run(
            json!({"userId": 5, "groupId": 1e21}),
            Some(MessageType::Group),
        )
        .unwrap();
        assert_eq!(
            (&v["userId"], &v["groupId"]),
            (&json!("5"), &json!("1e+21"))
        );
        for (n, text) in [
            ("-3", "-3"),
            ("0.000001", "0.000001"),
            ("1e-7", "1e-7"),
            ("123.456", "123.456"),
            ("-0.5", "-0.5"),
            ("1.2345678901234568e20", "123456789012345680000"),
            ("1e21", "1e+21"),
            ("1.5e-7", "1.5e-7"),
            ("18446744073709551615", "18446744073709551615"),
        ] {
            assert_eq!(js_number_text(n), text);
        }
    }

    #[test]
    fn a_correction_out_of_the_calendar_keeps_the_clients_timestamp() {
        let v = run(
            json!({"userId": "u", "timestamp": "9999-01-01T00:00:00Z", "sentAt": "0001-01-01T00:00:00Z"}),
            Some(MessageType::Identify),
        )
        .unwrap();
        assert_eq!(v["timestamp"], "9999-01-01T00:00:00.000Z");
    }

    #[test]
    fn the_spec_version_is_set_unless_the_message_has_one() {
        let v = run(json!({"userId": "u"}), Some(MessageType::Identify)).unwrap();
        assert_eq!(v["version"], 1);
        let v = run(
            json!({"userId": "u", "version": 2}),
            Some(MessageType::Identify),
        )
        .unwrap();
        assert_eq!(v["version"], 2);
    }

    #[test]
    fn preserves_key_order() {
        let v: Value =
            serde_json::from_str(r#"{"userId":"u","event":"e","properties":{"z":1,"a":2}}"#)
                .unwrap();
        let limits = Limits::default();
        let ctx = RequestContext::new(at("2024-01-01T00:00:10Z"), &limits);
        let m = normalize(v, Some(MessageType::Track), &ctx).unwrap();
        let s = String::from_utf8(m.json).unwrap();
        assert!(
            s.starts_with(r#"{"userId":"u","event":"e","properties":{"z":1,"a":2},"type":"track""#),
            "{s}"
        );
    }
}
