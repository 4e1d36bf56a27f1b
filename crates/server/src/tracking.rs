//! The Segment-compatible Tracking API: `/v1/track` … `/v1/batch`.
//!
//! Auth, body reading, and the mapping of spec errors to HTTP answers live
//! here; validation and normalization are the spec crate's, storage the store's.

use crate::body::{parse_json, read_body};
use crate::error::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
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

/// Resolves the source of a request from its write key (header first, then body).
fn authenticate(state: &AppState, headers: &HeaderMap, body: &Value) -> Result<String, ApiError> {
    let key = match basic_user(headers)? {
        Some(k) => k,
        None => match body.get("writeKey") {
            Some(Value::String(k)) => k.clone(),
            _ => {
                return Err(ApiError::unauthorized(
                    "missing write key: send it as the HTTP Basic user name or as `writeKey` in the body",
                ))
            }
        },
    };
    state
        .source_for_write_key(&key)
        .ok_or_else(|| ApiError::unauthorized("invalid write key"))
}

async fn read_request(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(String, Value), ApiError> {
    let bytes = read_body(headers, body, state.limits.max_batch_bytes).await?;
    let value = parse_json(&bytes)?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid_message",
            "the body must be a JSON object",
        ));
    }
    let source = authenticate(state, headers, &value)?;
    Ok((source, value))
}

async fn store_events(
    state: &AppState,
    source: &str,
    events: Vec<NewEvent>,
    rejections: Vec<Rejection>,
) -> Result<store::AppendReceipt, ApiError> {
    let received = events.len() + rejections.len();
    metrics::counter!("switchyard_events_received_total", "source" => source.to_string())
        .increment(received as u64);
    if !rejections.is_empty() {
        metrics::counter!("switchyard_events_rejected_total", "source" => source.to_string())
            .increment(rejections.len() as u64);
    }
    let receipt = state
        .store
        .append(source, events, rejections)
        .await
        .map_err(|e| {
            tracing::error!(source, error = %e, "cannot store events");
            ApiError::unavailable(format!("events not stored, retry later: {e}"))
        })?;
    metrics::counter!("switchyard_events_stored_total", "source" => source.to_string())
        .increment(receipt.stored as u64);
    if receipt.duplicates > 0 {
        metrics::counter!("switchyard_events_duplicate_total", "source" => source.to_string())
            .increment(receipt.duplicates as u64);
    }
    Ok(receipt)
}

/// `POST /v1/{track,identify,page,screen,group,alias}`.
pub async fn single(
    State(state): State<Arc<AppState>>,
    kind: MessageType,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result: Result<(), ApiError> = async {
        let (source, value) = read_request(&state, &headers, body).await?;
        let received_at = chrono::Utc::now();
        let ctx = RequestContext::new(received_at, &state.limits);
        let message = spec::normalize(value, Some(kind), &ctx)?;
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
    match result {
        Ok(()) => Json(json!({"success": true})).into_response(),
        Err(e) => e.into_response(),
    }
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

/// `POST /v1/batch` and `/v1/import`: valid items are stored, each invalid one
/// is recorded and reported; only a batch with no valid item is refused.
pub async fn batch(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let result: Result<Response, ApiError> = async {
        let (source, mut value) = read_request(&state, &headers, body).await?;
        let items = match value.get_mut("batch").map(Value::take) {
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(ApiError::bad_request("invalid_batch", "`batch` must be an array")
                    .with_field(Some("batch".into())))
            }
            None => {
                return Err(ApiError::bad_request("invalid_batch", "the body requires a `batch` array")
                    .with_field(Some("batch".into())))
            }
        };
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
        ctx.sent_at = value.get("sentAt");
        ctx.context = value.get("context").and_then(Value::as_object);
        ctx.integrations = value.get("integrations").and_then(Value::as_object);
        let mut events = Vec::with_capacity(items.len());
        let mut rejections = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            match spec::normalize_or_return(item, None, &ctx) {
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
            tracing::warn!(source = %source, rejected = rejections.len(), "batch refused: no valid message");
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
            tracing::warn!(source = %source, index = r.index, field = ?r.field, reason = %r.reason, "batch item rejected");
        }
        store_events(&state, &source, events, rejections).await?;
        let mut response = json!({"success": true});
        if !report.is_empty() {
            response["rejected"] = Value::Array(report);
        }
        Ok(Json(response).into_response())
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}
