//! The source-function door: `POST /functions/{source}`.
//!
//! The token comes in the path (`/functions/{source}/{token}`), the query
//! (`?token=`) or a header (`X-Segment-Source-Function-Token`, or
//! `X-Switchyard-Token`). The raw request (body exactly as received, any
//! content type) is stored durably before the answer; the function runs from
//! the store. The function sees the request as the sender made it (its URL
//! with the token, its `Authorization`), since senders sign what they send
//! (Twilio signs the whole URL); only switchyard's own token headers are
//! dropped. The API shows stored requests with their credentials redacted
//! ([`redacted_request_url`]).

use crate::body::read_body;
use crate::error::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use functions::RawRequest;
use serde_json::json;
use std::sync::Arc;

pub const TOKEN_HEADERS: [&str; 2] = ["x-segment-source-function-token", "x-switchyard-token"];

/// The `token` of a query string, percent-decoded.
fn query_token(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

/// Shown in place of a credential in stored requests the API returns.
const REDACTED: &str = "[redacted]";

/// A stored request as the API shows it (captures, dead letters): the
/// function token and the sender's `Authorization` redacted wherever they
/// appear (URL, headers, body).
pub fn redacted_request(request: RawRequest) -> RawRequest {
    let credentials = delivery::source_functions::request_credentials(&request);
    let redact = |text: &str| delivery::source_functions::redact(&credentials, text);
    RawRequest {
        url: redact(&request.url),
        headers: request
            .headers
            .iter()
            .map(|(k, v)| {
                let v = if is_credential_header(k) {
                    REDACTED.to_string()
                } else {
                    redact(v)
                };
                (k.clone(), v)
            })
            .collect(),
        body: match std::str::from_utf8(&request.body) {
            Ok(text) => redact(text).into_bytes(),
            Err(_) => request.body,
        },
        method: request.method,
    }
}

/// Whether a header of a stored request is a credential the API must not
/// show: the sender's `Authorization` reaches the function, not the API.
pub fn is_credential_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization") || TOKEN_HEADERS.contains(&name)
}

/// The URL the sender called, as the function sees it: behind a proxy, the
/// proxy's `X-Forwarded-Proto` and `X-Forwarded-Host` give its public form.
fn called_url(headers: &HeaderMap, path_and_query: &str) -> String {
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let scheme = match first("x-forwarded-proto") {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    // Only a host[:port]: any other character (`/`, `?`, `#`, `@`) would
    // move the path into another part of the URL, out of a signature's
    // reach and of the token's redaction.
    let is_host = |h: &&str| {
        h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']' | '_'))
    };
    let host = first("x-forwarded-host")
        .filter(is_host)
        .or_else(|| first(axum::http::header::HOST.as_str()).filter(is_host))
        .unwrap_or("localhost");
    format!("{scheme}://{host}{path_and_query}")
}

async fn handle(
    state: Arc<AppState>,
    slug: String,
    path_token: Option<String>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let query_token = query_token(uri.query());
    let header_token = TOKEN_HEADERS.iter().find_map(|h| {
        headers
            .get(*h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let token = path_token.or(query_token).or(header_token).ok_or_else(|| {
        ApiError::unauthorized(
            "missing function token: put it in the URL (/functions/{source}/{token} or ?token=) or in the X-Segment-Source-Function-Token header",
        )
    })?;
    let authorized = state.source_for_function_token(&token);
    if authorized.as_deref() != Some(slug.as_str()) {
        return Err(ApiError::unauthorized(format!(
            "invalid token for source {slug:?}"
        )));
    }
    let runner = state
        .runner
        .as_ref()
        .and_then(|r| {
            r.source(&slug)
                .map(|s| (r.clone(), s.respond_inline, s.capture_always, s.unavailable))
        })
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no function source {slug:?}: it is unknown or a tracking source"
            ))
        })?;
    let (runner, inline, capture_always, unavailable) = runner;
    if let (true, Some(reason)) = (inline, &unavailable) {
        // The sender waits for the function's own answer, which cannot come:
        // not stored, so the sender's retry is the only copy.
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "function_unavailable",
            format!("source {slug:?}: its function cannot run ({reason}); send again later"),
        ));
    }
    let capture = capture_always || state.capturing(&slug);
    // The body exactly as received: no decompression, no re-encoding.
    let bytes = read_body(&HeaderMap::new(), body, state.max_function_body_bytes).await?;
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request = RawRequest {
        method: method.to_string(),
        url: called_url(&headers, path_and_query),
        headers: headers
            .iter()
            .filter(|(k, _)| !TOKEN_HEADERS.contains(&k.as_str()))
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: bytes.into(),
    };
    let stored = serde_json::to_vec(&request)
        .map_err(|e| ApiError::bad_request("bad_request", e.to_string()))?;
    let id = state
        .store
        .append_raw(
            &slug,
            stored.clone(),
            if inline { "inline" } else { "pending" },
            capture,
        )
        .await
        .map_err(|e| ApiError::unavailable(format!("request not stored, retry later: {e}")))?;
    metrics::counter!("switchyard_function_requests_total", "source" => slug.clone()).increment(1);
    if !inline {
        runner.wake();
        return Ok(Json(json!({"success": true})).into_response());
    }
    let record = store::RawRecord {
        id,
        source: slug.clone(),
        received_ms: chrono::Utc::now().timestamp_millis(),
        request: stored,
        attempts: 0,
        next_attempt_ms: 0,
        state: "inline".into(),
        last_error: String::new(),
    };
    match runner.answer_inline(&record).await {
        Ok(Some(answer)) => {
            let mut response = Response::new(Body::from(answer.body));
            *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
            // Appended, not inserted: each value of a name repeated (two
            // Set-Cookie lines) is a line of its own, as the function gave it.
            for (k, v) in answer.headers {
                if let (Ok(k), Ok(v)) = (
                    axum::http::HeaderName::from_bytes(k.as_bytes()),
                    axum::http::HeaderValue::from_str(&v),
                ) {
                    response.headers_mut().append(k, v);
                }
            }
            Ok(response)
        }
        Ok(None) => Ok(Json(json!({"success": true})).into_response()),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "function_failed",
            format!("the function failed: {e} (switchyard does not retry a request it answered with an error: send it again; it is kept in the source's dead letters)"),
        )),
    }
}

/// `POST /functions/{source}`.
pub async fn without_token(
    State(state): State<Arc<AppState>>,
    Path(slug): Path<String>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, slug, None, method, uri, headers, body)
        .await
        .unwrap_or_else(|e| e.into_response())
}

/// `POST /functions/{source}/{token}`.
pub async fn with_token(
    State(state): State<Arc<AppState>>,
    Path((slug, token)): Path<(String, String)>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, slug, Some(token), method, uri, headers, body)
        .await
        .unwrap_or_else(|e| e.into_response())
}
