//! The fast path of normalization: it reads the request text once and copies
//! each value out in canonical form, instead of building a `serde_json::Value`
//! tree and writing it out again. Parsing and re-serializing the tree was
//! more than half of the CPU time of `/v1/batch` (see BENCHMARKS.md).
//!
//! The fast path must produce exactly the bytes of the tree path: compact
//! JSON, integral floats as integers, strings escaped as `serde_json` (and
//! `JSON.stringify`) escapes them. Whatever it does not handle itself, it
//! declines (`None`): invalid JSON, escaped keys, duplicate keys, deep
//! nesting, very large objects, batch-level `context`, and every message the
//! Spec refuses. The tree path then runs and owns every error message, so the
//! fast path can never accept what the tree path would refuse.

use crate::{fill, message, Field, Fields, Message, MessageType, RequestContext, SpecError};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::ops::Range;

/// Deeper nesting is left to the tree path, which refuses 128 levels or more.
const MAX_DEPTH: usize = 100;
/// Objects with more keys are left to the tree path (the duplicate-key check
/// here is quadratic).
const MAX_KEYS: usize = 64;

/// The tree path for a message given as JSON text. On error the parsed
/// message is given back, when the text was valid JSON, so a caller can show
/// what was refused.
#[allow(clippy::result_large_err)] // the error path is the rare one
fn normalize_tree(
    text: &str,
    forced_type: Option<MessageType>,
    ctx: &RequestContext<'_>,
) -> Result<Message, (SpecError, Option<Value>)> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        (
            SpecError::invalid(None, format!("malformed JSON: {e}")),
            None,
        )
    })?;
    crate::normalize_or_return(value, forced_type, ctx).map_err(|(e, v)| (e, Some(v)))
}

/// The fast path alone: the normalized message, or `None` when the tree path
/// must handle this text (including every text it would refuse).
pub fn normalize_fast(
    text: &str,
    forced_type: Option<MessageType>,
    ctx: &RequestContext<'_>,
) -> Option<Message> {
    RawMessage::parse(text).and_then(|m| m.normalize(forced_type, ctx))
}

/// Where the scanner copies what it reads.
trait Out {
    fn put(&mut self, bytes: &[u8]);
}

impl Out for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Reads without copying (validation and spans only).
struct Skip;

impl Out for Skip {
    fn put(&mut self, _: &[u8]) {}
}

/// A JSON reader over validated UTF-8 that writes the canonical form of what
/// it reads. Every method answers `None` for "not handled here".
struct Scanner<'a> {
    text: &'a str,
    at: usize,
    /// Keys of the objects being read, innermost last (duplicate check).
    keys: Vec<&'a str>,
    /// Whether what was read differs from its canonical form (whitespace,
    /// escapes, non-canonical numbers): only then is it written out piece
    /// by piece; otherwise it is copied as one slice.
    dirty: bool,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            text,
            at: 0,
            keys: Vec::new(),
            dirty: false,
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Reads the items of the container just opened, up to and past its
    /// `close` byte, with `each` reading one item (given its index).
    /// Whitespace around items is skipped; `inner` marks it not canonical.
    fn items(
        &mut self,
        close: u8,
        inner: bool,
        mut each: impl FnMut(&mut Self, usize) -> Option<()>,
    ) -> Option<()> {
        let skip = |s: &mut Self| {
            if inner {
                s.skip_inner_ws()
            } else {
                s.skip_ws()
            }
        };
        skip(self);
        if self.peek()? == close {
            self.at += 1;
            return Some(());
        }
        let mut index = 0;
        loop {
            skip(self);
            each(self, index)?;
            skip(self);
            match self.peek()? {
                b',' => self.at += 1,
                byte if byte == close => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
            index += 1;
        }
    }

    /// Whitespace inside a value: not canonical.
    fn skip_inner_ws(&mut self) {
        let from = self.at;
        self.skip_ws();
        self.dirty |= self.at != from;
    }

    /// Reads one value (after optional whitespace, which is not part of
    /// it) and appends its canonical form to `out`.
    fn canonical_value(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<&'a str> {
        self.skip_ws();
        self.dirty = false;
        let text = self.value(&mut Skip, depth)?;
        if self.dirty {
            Scanner::new(text).value(out, depth)?;
        } else {
            out.extend_from_slice(text.as_bytes());
        }
        Some(text)
    }

    /// The offset of the next `"`, `\\` or control byte from `self.at`,
    /// eight bytes at a time.
    fn string_stop(&self) -> Option<usize> {
        let rest = self.bytes().get(self.at..)?;
        let mut words = rest.chunks_exact(8);
        let mut skipped = 0;
        for word in words.by_ref() {
            let mut eight = [0u8; 8];
            eight.copy_from_slice(word);
            let stops = string_stops(u64::from_le_bytes(eight));
            if stops != 0 {
                return Some(self.at + skipped + (stops.trailing_zeros() / 8) as usize);
            }
            skipped += 8;
        }
        let n = words
            .remainder()
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        Some(self.at + skipped + n)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_ws();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.at == self.text.len()
    }

    /// Reads one value starting at `self.at` and returns its span.
    fn value(&mut self, out: &mut impl Out, depth: usize) -> Option<&'a str> {
        if depth > MAX_DEPTH {
            return None;
        }
        let start = self.at;
        match self.peek()? {
            b'{' => self.object(out, depth)?,
            b'[' => self.array(out, depth)?,
            b'"' => self.string(out)?,
            b't' => self.literal("true", out)?,
            b'f' => self.literal("false", out)?,
            b'n' => self.literal("null", out)?,
            b'-' | b'0'..=b'9' => self.number(out)?,
            _ => return None,
        }
        self.text.get(start..self.at)
    }

    fn object(&mut self, out: &mut impl Out, depth: usize) -> Option<()> {
        self.at += 1;
        out.put(b"{");
        let mark = self.keys.len();
        self.items(b'}', true, |s, index| {
            if index > 0 {
                out.put(b",");
            }
            let key = s.key(mark)?;
            out.put(b"\"");
            out.put(key.as_bytes());
            out.put(b"\":");
            s.skip_inner_ws();
            (s.peek()? == b':').then_some(())?;
            s.at += 1;
            s.skip_inner_ws();
            s.value(out, depth + 1).map(drop)
        })?;
        out.put(b"}");
        self.keys.truncate(mark);
        Some(())
    }

    /// An object key (at `self.at`) with no escapes, not seen before in
    /// this object.
    fn key(&mut self, mark: usize) -> Option<&'a str> {
        (self.peek()? == b'"').then_some(())?;
        self.at += 1;
        let start = self.at;
        self.at = self.string_stop()?;
        (self.peek()? == b'"').then_some(())?;
        let key = self.text.get(start..self.at)?;
        self.at += 1;
        let siblings = &self.keys[mark..];
        if siblings.len() >= MAX_KEYS || siblings.contains(&key) {
            return None;
        }
        self.keys.push(key);
        Some(key)
    }

    fn array(&mut self, out: &mut impl Out, depth: usize) -> Option<()> {
        self.at += 1;
        out.put(b"[");
        self.items(b']', true, |s, index| {
            if index > 0 {
                out.put(b",");
            }
            s.value(out, depth + 1).map(drop)
        })?;
        out.put(b"]");
        Some(())
    }

    fn string(&mut self, out: &mut impl Out) -> Option<()> {
        let start = self.at;
        self.at += 1;
        let mut escaped = false;
        loop {
            self.at = self.string_stop()?;
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.at += 2;
                }
                _ => return None,
            }
        }
        self.at += 1;
        let token = self.text.get(start..self.at)?;
        self.dirty |= escaped;
        if escaped {
            // Escapes are written back the way serde_json writes them.
            let decoded: String = serde_json::from_str(token).ok()?;
            out.put(serde_json::to_string(&decoded).ok()?.as_bytes());
        } else {
            out.put(token.as_bytes());
        }
        Some(())
    }

    fn literal(&mut self, word: &str, out: &mut impl Out) -> Option<()> {
        let end = self.at + word.len();
        (self.text.get(self.at..end)? == word).then_some(())?;
        self.at = end;
        out.put(word.as_bytes());
        Some(())
    }

    fn number(&mut self, out: &mut impl Out) -> Option<()> {
        let start = self.at;
        while matches!(
            self.peek(),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        ) {
            self.at += 1;
        }
        let token = self.text.get(start..self.at)?;
        if token.contains(['.', 'e', 'E']) {
            if float_is_canonical(token) {
                out.put(token.as_bytes());
                return Some(());
            }
            let canonical = canonical_float(token)?;
            self.dirty |= canonical != token;
            out.put(canonical.as_bytes());
        } else {
            // Long integers may be u64 or f64 in the tree path: left to it.
            is_plain_integer(token).then(|| out.put(token.as_bytes()))?;
        }
        Some(())
    }
}

/// A word whose lowest set bit is the high bit of the first byte of `word`
/// (little-endian) that is `"`, `\\` or below 0x20; 0 when none is. Bits
/// above the first flagged byte may be wrong (borrows), never below it.
fn string_stops(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    (below(quote, 1) | below(backslash, 1) | below(word, 0x20)) & HIGHS
}

/// An integer that serde_json reads as an integer and writes back unchanged:
/// no leading zero, not `-0`, at most 18 digits (so it fits an i64).
fn is_plain_integer(token: &str) -> bool {
    let digits = token.strip_prefix('-').unwrap_or(token);
    !digits.is_empty()
        && digits.len() <= 18
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" && token == "0" || !digits.starts_with('0'))
}

/// Whether `token` is a plain decimal that [`canonical_float`] gives back
/// unchanged, told from its text alone (the usual prices and ratios: three
/// of them in a typical event, each a parse and a `String` otherwise): at
/// most 15 significant digits, so the nearest `f64` prints back as exactly
/// those digits; no exponent, no trailing zero, not below 0.001, so it
/// prints in the same notation.
fn float_is_canonical(token: &str) -> bool {
    let digits = token.strip_prefix('-').unwrap_or(token);
    let Some((int, fraction)) = digits.split_once('.') else {
        return false;
    };
    let digits_only = !fraction.is_empty() && fraction.bytes().all(|b| b.is_ascii_digit());
    if !is_plain_integer(int) || !digits_only || fraction.ends_with('0') {
        return false;
    }
    let significant = if int == "0" {
        let zeros = fraction.len() - fraction.trim_start_matches('0').len();
        if zeros > 2 {
            return false;
        }
        fraction.len() - zeros
    } else {
        int.len() + fraction.len()
    };
    significant <= 15
}

/// What the tree path writes for a number it read as a float: integral
/// values within 2^53 as integers, others as `JSON.stringify` writes a
/// double. Parsed by serde_json itself, so rounding is the same.
fn canonical_float(token: &str) -> Option<String> {
    let value: f64 = serde_json::from_str(token).ok()?;
    if value.fract() == 0.0 && value.abs() < 9.007_199_254_740_992e15 {
        Some((value as i64).to_string())
    } else {
        Some(crate::js_f64_text(value))
    }
}

/// One top-level field of a [`RawMessage`].
struct Entry<'a> {
    key: Cow<'a, str>,
    /// The value as the client sent it (`None` once normalization set it).
    sent: Option<&'a str>,
    /// The value's canonical text in [`RawMessage::values`].
    canonical: Range<usize>,
}

/// A message read by the fast path: its top-level fields, each with its
/// value already in canonical form.
struct RawMessage<'a> {
    entries: Vec<Entry<'a>>,
    values: Vec<u8>,
    /// Batch-level `context`/`integrations` would have to be merged in.
    needs_tree: bool,
}

impl<'a> RawMessage<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let mut scanner = Scanner::new(text);
        scanner.skip_ws();
        let message = Self::read(&mut scanner)?;
        scanner.at_end().then_some(message)
    }

    /// Reads one message object at the scanner's position.
    fn read(scanner: &mut Scanner<'a>) -> Option<Self> {
        let mut values = Vec::with_capacity(1024);
        let mut entries = Vec::with_capacity(16);
        let mark = scanner.keys.len();
        scanner.expect(b'{')?;
        scanner.items(b'}', false, |s, _| {
            let key = s.key(mark)?;
            s.expect(b':')?;
            let start = values.len();
            let sent = s.canonical_value(&mut values, 1)?;
            entries.push(Entry {
                key: Cow::Borrowed(key),
                sent: Some(sent),
                canonical: start..values.len(),
            });
            Some(())
        })?;
        scanner.keys.truncate(mark);
        Some(RawMessage {
            entries,
            values,
            needs_tree: false,
        })
    }

    fn entry(&self, key: &str) -> Option<&Entry<'a>> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// Validates and normalizes; `None` leaves the message to the tree path.
    fn normalize(
        mut self,
        forced_type: Option<MessageType>,
        ctx: &RequestContext<'_>,
    ) -> Option<Message> {
        let (kind, message_id, user_id) = fill(&mut self, forced_type, ctx).ok()?;
        if self.needs_tree {
            return None;
        }
        let mut json = Vec::with_capacity(self.values.len() + 16 * self.entries.len());
        json.push(b'{');
        for (i, entry) in self.entries.iter().enumerate() {
            if i > 0 {
                json.push(b',');
            }
            json.push(b'"');
            json.extend_from_slice(entry.key.as_bytes());
            json.extend_from_slice(b"\":");
            json.extend_from_slice(&self.values[entry.canonical.clone()]);
        }
        json.push(b'}');
        message(json, kind, message_id, user_id, ctx).ok()
    }
}

impl RawMessage<'_> {
    /// Points `key` at a value just written to `values`: in place when the
    /// key exists, last otherwise.
    fn put_entry(&mut self, key: &'static str, canonical: Range<usize>) {
        match self.entries.iter_mut().find(|e| e.key == key) {
            Some(entry) => {
                entry.sent = None;
                entry.canonical = canonical;
            }
            None => self.entries.push(Entry {
                key: Cow::Borrowed(key),
                sent: None,
                canonical,
            }),
        }
    }
}

impl Fields for RawMessage<'_> {
    fn field(&self, key: &str) -> Field<'_> {
        let Some(entry) = self.entry(key) else {
            return Field::Absent;
        };
        let canonical = &self.values[entry.canonical.clone()];
        match canonical.first() {
            Some(b'n') => Field::Null,
            Some(b'{') => Field::Object,
            Some(b'"') => {
                let inner = &canonical[1..canonical.len() - 1];
                match (inner.contains(&b'\\'), std::str::from_utf8(inner)) {
                    (false, Ok(s)) => Field::Str(Cow::Borrowed(s)),
                    // Decoding cannot fail: the scanner wrote this text.
                    _ => serde_json::from_slice::<String>(canonical)
                        .map_or(Field::Other, |s| Field::Str(Cow::Owned(s))),
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                // As the client sent it: the tree path reads identifiers
                // before it canonicalizes numbers.
                let sent = entry.sent.unwrap_or_default();
                serde_json::from_str::<serde_json::Number>(sent)
                    .map_or(Field::Other, |n| Field::Number(n.to_string()))
            }
            _ => Field::Other,
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.entry(key).is_some()
    }

    fn set_str(&mut self, key: &'static str, value: &str) {
        let start = self.values.len();
        if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            // Ids and timestamps: nothing to escape.
            self.values.push(b'"');
            self.values.extend_from_slice(value.as_bytes());
            self.values.push(b'"');
        } else {
            // Serializing a string cannot fail.
            let _ = serde_json::to_writer(&mut self.values, value);
        }
        let canonical = start..self.values.len();
        self.put_entry(key, canonical);
    }

    fn set_int(&mut self, key: &'static str, value: i64) {
        use std::io::Write;
        let start = self.values.len();
        // Written in place: every message takes this path (`version`).
        let _ = write!(self.values, "{value}");
        let canonical = start..self.values.len();
        self.put_entry(key, canonical);
    }

    fn remove(&mut self, key: &str) {
        self.entries.retain(|e| e.key != key);
    }

    fn merge_under(&mut self, _key: &str, defaults: Option<&Map<String, Value>>) {
        if defaults.is_some() {
            self.needs_tree = true;
        }
    }
}

/// One message of a [`RawBatch`]: its text, and its fields when the fast
/// path could read them.
pub struct RawItem<'a> {
    pub text: &'a str,
    message: Option<RawMessage<'a>>,
}

impl RawItem<'_> {
    /// Normalizes the item: the fast path when it applies, the tree path
    /// otherwise.
    #[allow(clippy::result_large_err)] // the error path is the rare one
    pub fn normalize(
        self,
        ctx: &RequestContext<'_>,
    ) -> Result<Message, (SpecError, Option<Value>)> {
        match self.message.and_then(|m| m.normalize(None, ctx)) {
            Some(message) => Ok(message),
            None => normalize_tree(self.text, None, ctx),
        }
    }
}

/// A `/v1/batch` body read by the fast path: the items (each read once, in
/// the same pass) and the batch-level fields.
pub struct RawBatch<'a> {
    pub items: Vec<RawItem<'a>>,
    pub sent_at: Option<Value>,
    pub context: Option<Map<String, Value>>,
    pub integrations: Option<Map<String, Value>>,
    pub write_key: Option<String>,
}

impl<'a> RawBatch<'a> {
    /// Reads a batch body; `None` when the tree path must read it (invalid
    /// JSON, no `batch` array, unusual batch-level fields …).
    pub fn parse(text: &'a str) -> Option<Self> {
        let mut scanner = Scanner::new(text);
        let mut batch = RawBatch {
            items: Vec::new(),
            sent_at: None,
            context: None,
            integrations: None,
            write_key: None,
        };
        let mut saw_batch = false;
        scanner.expect(b'{')?;
        scanner.items(b'}', false, |s, _| {
            let key = s.key(0)?;
            s.expect(b':')?;
            s.skip_ws();
            if key == "batch" {
                saw_batch = true;
                s.expect(b'[')?;
                return s.items(b']', false, |s, _| {
                    batch.items.push(Self::item(s)?);
                    Some(())
                });
            }
            let text = s.value(&mut Skip, 1)?;
            let parse = || serde_json::from_str::<Value>(text).ok();
            match key {
                "sentAt" => batch.sent_at = Some(parse()?),
                "writeKey" => batch.write_key = Some(serde_json::from_str(text).ok()?),
                "context" | "integrations" => {
                    let map = match parse()? {
                        Value::Object(map) => Some(map),
                        Value::Null => None,
                        _ => return None,
                    };
                    if key == "context" {
                        batch.context = map;
                    } else {
                        batch.integrations = map;
                    }
                }
                _ => {}
            }
            Some(())
        })?;
        (saw_batch && scanner.at_end()).then_some(batch)
    }

    /// One item: read as a message, or only delimited when the fast path
    /// cannot read it (the tree path will).
    fn item(scanner: &mut Scanner<'a>) -> Option<RawItem<'a>> {
        let start = scanner.at;
        let mark = scanner.keys.len();
        if let Some(message) = RawMessage::read(scanner) {
            let text = scanner.text.get(start..scanner.at)?;
            return Some(RawItem {
                text,
                message: Some(message),
            });
        }
        scanner.at = start;
        scanner.keys.truncate(mark);
        let text = scanner.value(&mut Skip, 2)?;
        Some(RawItem {
            text,
            message: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{normalize, Limits};
    use chrono::{DateTime, Utc};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The fast path's bytes, or `None` when it declines.
    fn fast(text: &str, forced: Option<MessageType>, ctx: &RequestContext<'_>) -> Option<Vec<u8>> {
        RawMessage::parse(text)
            .and_then(|m| m.normalize(forced, ctx))
            .map(|m| m.json)
    }

    #[test]
    fn string_stops_are_found_as_byte_by_byte() {
        let naive = |text: &str, at: usize| {
            text.as_bytes()[at..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .map(|n| at + n)
        };
        // Every stop byte, and bytes next to them in value, at every place
        // of a word and past the words, among multi-byte characters.
        let mut texts = vec![String::new(), "plain text with no stop at all".to_string()];
        for stop in ["\"", "\\", "\n", "\u{1f}", "\u{0}", "\t"] {
            for before in 0..20 {
                for filler in ["a", "é", "!", "#", "[", "]", "\u{7f}", " ", "\u{20ac}"] {
                    texts.push(format!("{}{stop}tail\"", filler.repeat(before)));
                }
            }
        }
        for text in &texts {
            for at in (0..=text.len()).filter(|&at| text.is_char_boundary(at)) {
                let mut scanner = Scanner::new(text);
                scanner.at = at;
                assert_eq!(scanner.string_stop(), naive(text, at), "{text:?} from {at}");
            }
        }
    }

    #[test]
    fn floats_taken_as_they_are_print_back_unchanged() {
        for token in [
            "19.99",
            "42.5",
            "-0.25",
            "0.001",
            "123456789012.345",
            "-9.87654321",
        ] {
            assert!(float_is_canonical(token), "{token}");
        }
        for token in [
            "1.50", "1e3", "0.0001", "01.5", "1.", ".5", "-", "1.2.3", "1.0",
        ] {
            assert!(!float_is_canonical(token), "{token}");
        }
        // Every token the check accepts, against serde_json's own round trip.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut accepted = 0;
        for _ in 0..200_000 {
            let mut token = String::new();
            if next(4) == 0 {
                token.push('-');
            }
            match next(3) {
                0 => token.push('0'),
                _ => (0..1 + next(16)).for_each(|_| token.push(char::from(b'0' + next(10) as u8))),
            }
            token.push('.');
            (0..1 + next(17)).for_each(|_| token.push(char::from(b'0' + next(10) as u8)));
            if float_is_canonical(&token) {
                accepted += 1;
                assert_eq!(canonical_float(&token).as_deref(), Some(token.as_str()));
            }
        }
        assert!(accepted > 20_000, "only {accepted} accepted");
    }

    fn tree(text: &str, forced: Option<MessageType>, ctx: &RequestContext<'_>) -> Option<Vec<u8>> {
        let value: Value = serde_json::from_str(text).ok()?;
        normalize(value, forced, ctx).ok().map(|m| m.json)
    }

    /// Messages the fast path must take, and whose bytes must equal the
    /// tree path's.
    const TAKEN: &[&str] = &[
        r#"{"userId":"u1","event":"Order Completed","messageId":"m1","properties":{"revenue":39.95,"qty":2,"total":2.0,"tags":["a","b"],"ok":true,"none":null,"nested":{"deep":[1,{"x":1e2}]}}}"#,
        r#"{ "type" : "track", "userId" : 42, "event" : "E", "messageId":"m2", "timestamp":"2024-01-01T00:00:00Z", "sentAt":"2024-01-01T00:00:05.000Z" }"#,
        r#"{"anonymousId":"a","event":"caf\u00e9 \"quoted\" \/ \n","messageId":"m3","properties":{"s":"\ud83d\ude00","u":"ünïcödé ✓"}}"#,
        r#"{"userId":"u","event":"E","messageId":"m4","writeKey":"secret","context":{"ip":"1.2.3.4"},"integrations":{"All":false}}"#,
        r#"{"userId":"u","event":"E","messageId":"m5","properties":{"big":123456789012345678,"neg":-0.0,"small":1.5e-7,"huge":1e300,"exp":2.5E3,"z":0,"n":-12}}"#,
        r#"{"userId":"u","event":"E","messageId":"m6","timestamp":"2024-01-01T00:00:00","originalTimestamp":null}"#,
        r#"{"userId":"u","event":"E","messageId":"m7","properties":{}, "traits":[] }"#,
        r#"{"userId":5.0,"event":"E","messageId":"m8"}"#,
    ];

    #[test]
    fn fast_path_equals_tree_path() {
        let limits = Limits::default();
        let mut ctx = RequestContext::new(at("2024-01-01T00:00:10Z"), &limits);
        let sent_at = Value::String("2024-01-01T00:00:09Z".into());
        for with_sent_at in [false, true] {
            if with_sent_at {
                ctx.sent_at = Some(&sent_at);
            }
            for text in TAKEN {
                let forced = Some(MessageType::Track);
                let expected = tree(text, forced, &ctx);
                let got = fast(text, forced, &ctx);
                match (&expected, &got) {
                    (Some(e), Some(g)) => assert_eq!(
                        String::from_utf8_lossy(g),
                        String::from_utf8_lossy(e),
                        "input {text}"
                    ),
                    // `traits: []` is refused by both paths.
                    (None, None) => assert!(text.contains("\"traits\":[]")),
                    _ => panic!("paths disagree on {text}: tree {expected:?}, fast {got:?}"),
                }
            }
        }
    }

    #[test]
    fn fast_path_declines_what_it_does_not_handle() {
        let limits = Limits::default();
        let ctx = RequestContext::new(at("2024-01-01T00:00:10Z"), &limits);
        let declined = [
            r#"{"userId":"u","event":"E","messageId":"m","messageId":"n"}"#,
            r#"{"userId":"u","event":"E","properties":{"a":1,"a":2}}"#,
            r#"{"user\u0049d":"u","event":"E"}"#,
            r#"{"userId":"u","event":"E","properties":{"n":01}}"#,
            r#"{"userId":"u","event":"E","properties":{"n":-0}}"#,
            r#"{"userId":"u","event":"E"} trailing"#,
            r#"{"userId":"u","event":"E","properties":{"n":1e999}}"#,
            r#"{"userId":"u"}"#,
            r#"{"event":"E"}"#,
            r#"{"userId":"u","event":"E","timestamp":"yesterday"}"#,
            r#"{"userId":"u","event":"E","properties":[1]}"#,
            r#"[1,2]"#,
            r#"{"userId":"u","event":"E","properties":{"n":12345678901234567890}}"#,
            // Raw control bytes in strings, short and long.
            "{\"userId\":\"u\",\"event\":\"a\tb\"}",
            "{\"userId\":\"u\",\"event\":\"E\",\"properties\":{\"url\":\"https://example.test/a/very/long/path/indeed?q=1\u{1}&r=2\"}}",
        ];
        for text in declined {
            assert!(
                fast(text, Some(MessageType::Track), &ctx).is_none(),
                "fast path took {text}"
            );
        }
        let deep = format!(
            r#"{{"userId":"u","event":"E","properties":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(fast(&deep, Some(MessageType::Track), &ctx).is_none());
    }

    #[test]
    fn batch_context_sends_items_to_the_tree_path() {
        let limits = Limits::default();
        let mut ctx = RequestContext::new(at("2024-01-01T00:00:10Z"), &limits);
        let batch = RawBatch::parse(
            r#"{"batch":[{"type":"track","userId":"u","event":"E","messageId":"m"}],"context":{"library":{"name":"x"}},"writeKey":"k"}"#,
        )
        .unwrap();
        assert_eq!(batch.write_key.as_deref(), Some("k"));
        ctx.context = batch.context.as_ref();
        let item = batch.items.into_iter().next().unwrap();
        assert!(fast(item.text, None, &ctx).is_none());
        let m = item.normalize(&ctx).unwrap();
        let s = String::from_utf8(m.json).unwrap();
        assert!(s.contains(r#""context":{"library":{"name":"x"}}"#), "{s}");
    }

    #[test]
    fn batch_spans_are_the_items() {
        let batch = RawBatch::parse(
            r#" { "sentAt" : "2024-01-01T00:00:00Z", "batch" : [ {"a":1} , {"b":[2,3]} ] } "#,
        )
        .unwrap();
        let texts: Vec<&str> = batch.items.iter().map(|i| i.text).collect();
        assert_eq!(texts, vec![r#"{"a":1}"#, r#"{"b":[2,3]}"#]);
        assert_eq!(
            batch.sent_at,
            Some(Value::String("2024-01-01T00:00:00Z".into()))
        );
        assert!(RawBatch::parse(r#"{"batch":{}}"#).is_none());
        assert!(RawBatch::parse(r#"{"sentAt":"x"}"#).is_none());
        assert!(RawBatch::parse(r#"{"batch":[1,}"#).is_none());
    }

    /// A small generator of messages, so the two paths are compared on more
    /// shapes than the hand-written ones.
    #[test]
    fn generated_messages_agree() {
        let limits = Limits::default();
        let ctx = RequestContext::new(at("2024-01-01T00:00:10Z"), &limits);
        let scalars = [
            "0",
            "7",
            "-3",
            "1.0",
            "2.50",
            "1e3",
            "-1.25e-3",
            "true",
            "false",
            "null",
            "\"\"",
            "\"x\"",
            "\"a\\tb\"",
            "\"\\u00e9\"",
            "\"é\"",
            "123456789012345678",
            "0.1",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut taken = 0;
        for i in 0..2000 {
            let mut props = String::from("{");
            for k in 0..next(6) {
                if k > 0 {
                    props.push(',');
                }
                let value = match next(4) {
                    0 => format!(
                        "[{},{}]",
                        scalars[next(scalars.len())],
                        scalars[next(scalars.len())]
                    ),
                    1 => format!("{{\"in\":{}}}", scalars[next(scalars.len())]),
                    _ => scalars[next(scalars.len())].to_string(),
                };
                props.push_str(&format!("\"k{k}\" : {value}"));
            }
            props.push('}');
            let user = ["\"u\"", "12", "\"\"", "null", "3.0", "[1]"][next(6)];
            let event = ["\"E\"", "\" \"", "1", "null"][next(4)];
            let text = format!(
                r#"{{"userId":{user},"anonymousId":"a{i}","event":{event},"messageId":"m{i}","properties":{props}}}"#
            );
            let expected = tree(&text, None, &ctx).map(|_| ());
            assert!(expected.is_none(), "no type: the tree path refuses {text}");
            for forced in [Some(MessageType::Track), Some(MessageType::Identify)] {
                let expected = tree(&text, forced, &ctx);
                let got = fast(&text, forced, &ctx);
                if let Some(g) = &got {
                    taken += 1;
                    assert_eq!(Some(g), expected.as_ref(), "input {text}");
                } else {
                    // Declining is allowed only for what the tree path refuses.
                    assert!(expected.is_none(), "fast path declined valid {text}");
                }
            }
        }
        assert!(taken > 1000, "the fast path took only {taken} messages");
    }
}
