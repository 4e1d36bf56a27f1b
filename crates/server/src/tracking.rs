//! The Segment-compatible Tracking API: `/v1/track` … `/v1/batch`.
//!
//! Auth, body reading, and the mapping of spec errors to HTTP answers live
//! here; validation and normalization are the spec crate's, storage the store's.

use crate::body::{parse_json, read_body};
use crate::error::ApiError;
use crate::finish::FinishOnDrop;
use crate::{AppState, TrackingSource};
use axum::extract::Request;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};
use spec::{MessageType, RequestContext};
use std::sync::Arc;
use store::{NewEvent, Rejection};

/// The write key from `Authorization: Basic base64(writeKey:)`.
fn basic_user(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return Err(ApiError::unauthorized(
            "use HTTP Basic auth with the write key as the user name and an empty password",
        ));
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| ApiError::unauthorized("the Basic credentials are not valid base64"))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| ApiError::unauthorized("the Basic credentials are not valid UTF-8"))?;
    let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
    Ok(Some(user.to_string()))
}

/// Resolves the source of a request from its write key: `header_key` is
/// what [`basic_user`] read, which wins over `writeKey` in the body.
fn authenticate(
    state: &AppState,
    header_key: Result<Option<String>, ApiError>,
    body_key: Option<String>,
) -> Result<Arc<TrackingSource>, ApiError> {
    let key = match header_key? {
        Some(k) => k,
        None => body_key.ok_or_else(|| {
            ApiError::unauthorized(
                "missing write key: send it as the HTTP Basic user name or as `writeKey` in the body",
            )
        })?,
    };
    state
        .source_for_write_key(&key)
        .ok_or_else(|| ApiError::unauthorized("invalid write key"))
}

/// `writeKey` from a parsed body, when it is a string.
fn body_write_key(body: &serde_json::Map<String, Value>) -> Option<String> {
    body.get("writeKey")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Parses a body that must be a JSON object (the tree path).
fn parse_object(bytes: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match parse_json(bytes)? {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::bad_request(
            "invalid_message",
            "the body must be a JSON object",
        )),
    }
}

async fn store_events(
    state: &AppState,
    source: &Arc<TrackingSource>,
    events: Vec<NewEvent>,
    rejections: Vec<Rejection>,
) -> Result<store::AppendReceipt, ApiError> {
    // Counters are atomics shared by every core: one left alone costs nothing.
    source
        .received
        .increment((events.len() + rejections.len()) as u64);
    if !rejections.is_empty() {
        source.rejected.increment(rejections.len() as u64);
    }
    let (store, source) = (state.store.clone(), source.clone());
    FinishOnDrop::new(async move {
        let receipt = store
            .append(&source.slug, events, rejections)
            .await
            .map_err(|e| {
                tracing::error!(source = %source.slug, error = %e, "cannot store events");
                ApiError::unavailable(format!("events not stored, retry later: {e}"))
            })?;
        source.stored.increment(receipt.stored as u64);
        if receipt.duplicates > 0 {
            source.duplicates.increment(receipt.duplicates as u64);
        }
        Ok(receipt)
    })
    .await
}

/// Lets a web page read the answer: analytics.js posts from the page's
/// origin, and a write key is public by design, so any origin may.
fn allow_any_origin(request: &HeaderMap, mut response: Response) -> Response {
    if request.contains_key(header::ORIGIN) {
        response.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    response
}

/// `OPTIONS` on a tracking door: the CORS preflight a browser sends before
/// a cross-origin POST with `Authorization` or a JSON content type. The
/// headers asked for are allowed, and the answer is cached for a day.
pub async fn preflight(request: HeaderMap) -> Response {
    let asked = request
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or(HeaderValue::from_static(
            "authorization, content-type, content-encoding",
        ));
    (
        StatusCode::NO_CONTENT,
        [
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST, OPTIONS"),
            ),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, asked),
            (
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            ),
        ],
    )
        .into_response()
}

/// `POST /v1/m`: analytics.js's reports about itself (counters of its own
/// calls and errors), which Segment collects for its own use. The settings
/// turn them off; a page that turns them back on gets a 200 and the report
/// is dropped: switchyard stores events, not the library's telemetry. The
/// body is read (capped like one message) so that the connection stays
/// usable, and never parsed.
pub async fn client_metrics(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let answer = match read_body(&parts.headers, body, state.limits.max_message_bytes).await {
        Ok(_) => success(),
        Err(e) => e.into_response(),
    };
    allow_any_origin(&parts.headers, answer)
}

/// `GET /v1/projects/{writeKey}/settings`: the settings analytics.js loads
/// from its CDN before anything else. Given switchyard's address as its
/// `cdnURL`, it then sends every call here: the settings name this host (as
/// the request reached it, `X-Forwarded-Proto` telling the scheme behind a
/// proxy) as the Segment.io integration's API host. Client-side metrics are
/// switched off, as switchyard does not collect them.
pub async fn browser_settings(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(write_key): axum::extract::Path<String>,
    request: HeaderMap,
) -> Response {
    let response = match state.source_for_write_key(&write_key) {
        None => ApiError::not_found("no source has this write key").into_response(),
        Some(_) => {
            let host = request
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            let protocol = request
                .get("x-forwarded-proto")
                .and_then(|h| h.to_str().ok())
                .filter(|p| *p == "https" || *p == "http")
                .unwrap_or("http");
            Json(json!({
                "integrations": {
                    "Segment.io": {
                        "apiKey": write_key,
                        "apiHost": format!("{host}/v1"),
                        "protocol": protocol,
                        "unbundledIntegrations": [],
                        "addBundledMetadata": true,
                        "maybeBundledConfigIds": {},
                    }
                },
                "plan": {
                    "track": {"__default": {"enabled": true, "integrations": {}}},
                    "identify": {"__default": {"enabled": true}},
                    "group": {"__default": {"enabled": true}},
                },
                "edgeFunction": {},
                "analyticsNextEnabled": true,
                "middlewareSettings": {},
                "enabledMiddleware": {},
                "metrics": {"sampleRate": 0},
                "legacyVideoPluginsEnabled": false,
                "remotePlugins": [],
            }))
            .into_response()
        }
    };
    allow_any_origin(&request, response)
}

/// `{"success": true}`, the answer of every accepted call, built without
/// JSON serialization.
fn success() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        r#"{"success":true}"#,
    )
        .into_response()
}

/// `POST /v1/{track,identify,page,screen,group,alias}`. The request is taken
/// whole: the `HeaderMap` extractor would clone every header.
pub async fn single(
    State(state): State<Arc<AppState>>,
    kind: MessageType,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let result: Result<(), ApiError> = async {
        let bytes = read_body(headers, body, state.limits.max_batch_bytes).await?;
        // A single call's body is its message: its limit is measured on the
        // bytes as sent (decompressed), spaces and escapes included.
        if bytes.len() > state.limits.max_message_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "message_too_large",
                format!(
                    "message is {} bytes as sent; the limit is {} bytes",
                    bytes.len(),
                    state.limits.max_message_bytes
                ),
            ));
        }
        let received_at = chrono::Utc::now();
        let ctx = RequestContext::new(received_at, &state.limits);
        // The fast path reads the bytes directly; whatever it declines (every
        // refused message among them) goes through the tree path, which
        // owns the error messages.
        // A write key in the body is only read by the tree path.
        let header_key = basic_user(headers);
        let fast = match &header_key {
            Ok(Some(_)) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| spec::normalize_fast(text, Some(kind), &ctx)),
            _ => None,
        };
        let (source, message) = match fast {
            Some(message) => (authenticate(&state, header_key, None)?, message),
            None => {
                let body = parse_object(&bytes)?;
                let source = authenticate(&state, header_key, body_write_key(&body))?;
                (
                    source,
                    spec::normalize(Value::Object(body), Some(kind), &ctx)?,
                )
            }
        };
        store_events(
            &state,
            &source,
            vec![NewEvent {
                message_id: message.message_id,
                user_id: message.user_id,
                json: message.json,
            }],
            vec![],
        )
        .await?;
        Ok(())
    }
    .await;
    let response = match result {
        Ok(()) => success(),
        Err(e) => e.into_response(),
    };
    allow_any_origin(headers, response)
}

fn excerpt(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 256 {
        let mut cut = 256;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// One message of a batch, as the fast path or the tree path read it.
enum BatchItem<'a> {
    Raw(spec::RawItem<'a>),
    Parsed(Value),
}

/// A `/v1/batch` body once authenticated, read by either path.
struct BatchBody<'a> {
    source: Arc<TrackingSource>,
    items: Vec<BatchItem<'a>>,
    sent_at: Option<Value>,
    context: Option<serde_json::Map<String, Value>>,
    integrations: Option<serde_json::Map<String, Value>>,
}

impl BatchBody<'_> {
    /// A batch sent as a bare array: the write key is the first one a
    /// message carries, unless the request has one of its own.
    fn from_array(
        state: &AppState,
        headers: &HeaderMap,
        items: Vec<Value>,
    ) -> Result<Self, ApiError> {
        let body_key = items
            .iter()
            .find_map(|item| item.get("writeKey").and_then(Value::as_str))
            .map(str::to_string);
        Ok(BatchBody {
            source: authenticate(state, basic_user(headers), body_key)?,
            items: items.into_iter().map(BatchItem::Parsed).collect(),
            sent_at: None,
            context: None,
            integrations: None,
        })
    }

    /// The tree path: parses the whole body, with its precise errors.
    fn parse(state: &AppState, headers: &HeaderMap, bytes: &[u8]) -> Result<Self, ApiError> {
        let mut body = match parse_json(bytes)? {
            Value::Object(body) => body,
            // Older analytics.js posts its batches as a bare array, each
            // message with its `writeKey`.
            Value::Array(items) => return Self::from_array(state, headers, items),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_batch",
                    "the body must be a JSON object with a `batch` array",
                ))
            }
        };
        let source = authenticate(state, basic_user(headers), body_write_key(&body))?;
        let items = match body.shift_remove("batch") {
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(
                    ApiError::bad_request("invalid_batch", "`batch` must be an array")
                        .with_field(Some("batch".into())),
                )
            }
            None => {
                return Err(ApiError::bad_request(
                    "invalid_batch",
                    "the body requires a `batch` array",
                )
                .with_field(Some("batch".into())))
            }
        };
        let object = |v: Option<Value>| match v {
            Some(Value::Object(map)) => Some(map),
            _ => None,
        };
        Ok(BatchBody {
            source,
            items: items.into_iter().map(BatchItem::Parsed).collect(),
            sent_at: body.shift_remove("sentAt"),
            context: object(body.shift_remove("context")),
            integrations: object(body.shift_remove("integrations")),
        })
    }
}

/// `POST /v1/batch` and `/v1/import`: valid items are stored, each invalid one
/// is recorded and reported; only a batch with no valid item is refused.
pub async fn batch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let result: Result<Response, ApiError> = async {
        let bytes = read_body(headers, body, state.limits.max_batch_bytes).await?;
        let body = match std::str::from_utf8(&bytes).ok().and_then(spec::RawBatch::parse) {
            Some(raw) => BatchBody {
                source: authenticate(&state, basic_user(headers), raw.write_key)?,
                items: raw.items.into_iter().map(BatchItem::Raw).collect(),
                sent_at: raw.sent_at,
                context: raw.context,
                integrations: raw.integrations,
            },
            None => BatchBody::parse(&state, headers, &bytes)?,
        };
        let items = body.items;
        if items.is_empty() {
            return Err(ApiError::bad_request("invalid_batch", "`batch` contains no messages")
                .with_field(Some("batch".into())));
        }
        if items.len() > state.limits.max_batch_events {
            return Err(ApiError::bad_request(
                "batch_too_large",
                format!(
                    "`batch` has {} messages; the limit is {}",
                    items.len(),
                    state.limits.max_batch_events
                ),
            )
            .with_field(Some("batch".into())));
        }
        let received_at = chrono::Utc::now();
        let mut ctx = RequestContext::new(received_at, &state.limits);
        ctx.sent_at = body.sent_at.as_ref();
        ctx.context = body.context.as_ref();
        ctx.integrations = body.integrations.as_ref();
        let source = body.source;
        let mut events = Vec::with_capacity(items.len());
        let mut rejections = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            let normalized = match item {
                BatchItem::Raw(item) => {
                    let text = item.text;
                    item.normalize(&ctx)
                        .map_err(|(e, item)| (e, item.unwrap_or_else(|| Value::String(text.to_string()))))
                }
                BatchItem::Parsed(item) => spec::normalize_or_return(item, None, &ctx),
            };
            match normalized {
                Ok(m) => events.push(NewEvent {
                    message_id: m.message_id,
                    user_id: m.user_id,
                    json: m.json,
                }),
                // Only refused items pay for their excerpt.
                Err((e, item)) => rejections.push(Rejection {
                    index,
                    field: e.field,
                    reason: e.message,
                    excerpt: excerpt(&item),
                }),
            }
        }
        if events.is_empty() {
            let first = &rejections[0];
            tracing::warn!(source = %source.slug, rejected = rejections.len(), "batch refused: no valid message");
            return Ok((
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "error": {
                        "code": "invalid_batch",
                        "message": format!("no valid message in the batch; item 0: {}", first.reason),
                        "field": first.field.as_ref().map(|f| format!("batch[0].{f}")),
                    },
                    "rejected": rejections.iter().map(|r| json!({"index": r.index, "field": r.field, "message": r.reason})).collect::<Vec<_>>(),
                })),
            )
                .into_response());
        }
        let report: Vec<Value> = rejections
            .iter()
            .map(|r| json!({"index": r.index, "field": r.field, "message": r.reason}))
            .collect();
        for r in &rejections {
            tracing::warn!(source = %source.slug, index = r.index, field = ?r.field, reason = %r.reason, "batch item rejected");
        }
        store_events(&state, &source, events, rejections).await?;
        if report.is_empty() {
            return Ok(success());
        }
        Ok(Json(json!({"success": true, "rejected": report})).into_response())
    }
    .await;
    allow_any_origin(headers, result.unwrap_or_else(|e| e.into_response()))
}
