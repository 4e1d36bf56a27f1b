//! Reading request bodies safely: a size cap before and after decompression,
//! UTF-8 and JSON checks with messages a person can act on.

use crate::error::ApiError;
use crate::listen::BodyTimeout;
use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, OptionalFromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::de::DeserializeOwned;
use std::io::Read;

/// A JSON request body of the management API, refused in the one error
/// shape: `400 invalid_body` naming what is wrong, `408 body_timeout` for a
/// body that stalled (axum's own `Json` answers in plain text). Take it as
/// `Result<JsonBody<T>, ApiError>` to check credentials before the body.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match <Json<T> as FromRequest<S>>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(refused_json(rejection)),
        }
    }
}

/// An optional body: an empty one (whatever its `Content-Type`) is `None`.
/// Any other is read as JSON whatever its `Content-Type` says: `curl -d`
/// sends form-encoded, and a selection ignored for it would replay or
/// discard every dead letter instead of the few it names.
impl<T: DeserializeOwned, S: Send + Sync> OptionalFromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Option<Self>, ApiError> {
        let bytes = match Bytes::from_request(request, state).await {
            Ok(bytes) => bytes,
            Err(rejection) => {
                return Err(match cause::<BodyTimeout>(&rejection) {
                    Some(timeout) => body_timeout(timeout),
                    None => ApiError::bad_request("invalid_body", rejection.body_text()),
                })
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(value)) => Ok(Some(JsonBody(value))),
            Err(rejection) => Err(refused_json(rejection)),
        }
    }
}

fn refused_json(rejection: JsonRejection) -> ApiError {
    match cause::<BodyTimeout>(&rejection) {
        Some(timeout) => body_timeout(timeout),
        None => {
            let text = rejection.body_text();
            let field = named_field(&text);
            ApiError::bad_request("invalid_body", text).with_field(field)
        }
    }
}

/// The field serde names in "unknown field `x`", "missing field `x`" or
/// "…: x: invalid type…" (axum puts the path of the failing field first).
pub(crate) fn named_field(message: &str) -> Option<String> {
    for marker in ["unknown field `", "missing field `"] {
        if let Some(start) = message.find(marker).map(|i| i + marker.len()) {
            return message[start..].split('`').next().map(str::to_string);
        }
    }
    // "Failed to deserialize …: <path>: <what is wrong>"
    let path = message.split(": ").nth(1)?;
    (!path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.[]".contains(c)))
    .then(|| path.to_string())
}

/// Query parameters of the management API, refused in the one error shape
/// (`400 invalid_query` naming the parameter) instead of axum's plain text.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(QueryParams(value)),
            Err(rejection) => {
                let text = rejection.body_text();
                let field = named_field(&text);
                let message = text.replace("Failed to deserialize query string: ", "");
                Err(
                    ApiError::bad_request("invalid_query", format!("bad query string: {message}"))
                        .with_field(field),
                )
            }
        }
    }
}

fn body_timeout(timeout: &BodyTimeout) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        timeout.to_string(),
    )
}

/// The first error of type `E` in the chain of `error`'s causes.
fn cause<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}

/// Reads the body (at most `limit` bytes on the wire) and inflates gzip (at
/// most `limit` bytes once inflated, so a gzip bomb is refused, not expanded).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let raw = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit")
        {
            ApiError::too_large(format!("request body exceeds the limit of {limit} bytes"))
        } else if let Some(timeout) = cause::<BodyTimeout>(&e) {
            body_timeout(timeout)
        } else {
            ApiError::bad_request("bad_body", format!("cannot read the request body: {e}"))
        }
    })?;
    let encoding = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(raw),
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::new();
            // Every member: RFC 1952 allows several in one body (and then
            // nothing else, so trailing bytes are an error).
            let mut decoder = flate2::read::MultiGzDecoder::new(&raw[..]).take(limit as u64 + 1);
            decoder.read_to_end(&mut out).map_err(|e| {
                ApiError::bad_request("bad_gzip", format!("the body is not valid gzip: {e}"))
            })?;
            if out.len() > limit {
                return Err(ApiError::too_large(format!(
                    "decompressed request body exceeds the limit of {limit} bytes"
                )));
            }
            Ok(out.into())
        }
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!("Content-Encoding {other:?} is not supported; use gzip or none"),
        )),
    }
}

/// Parses a JSON body, with distinct messages for bad UTF-8, bad syntax and
/// excessive nesting.
pub fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            return Err(ApiError::bad_request(
                "invalid_utf8",
                format!(
                    "the body is not valid UTF-8 (first bad byte at offset {})",
                    e.valid_up_to()
                ),
            ))
        }
    };
    serde_json::from_str(text)
        .or_else(|e| {
            // Lone surrogates are valid JSON that serde_json refuses; only a body
            // that failed pays for the look.
            spec::replace_lone_surrogates(text)
                .and_then(|repaired| serde_json::from_str(&repaired).ok())
                .ok_or(e)
        })
        .map_err(|e| {
            if e.to_string().contains("recursion limit") {
                ApiError::bad_request(
                    "json_too_deep",
                    "the JSON body is nested 128 levels deep or more (at most 127)",
                )
            } else if bytes.iter().all(u8::is_ascii_whitespace) {
                ApiError::bad_request(
                    "malformed_json",
                    "the body is empty; expected a JSON object",
                )
            } else {
                ApiError::bad_request("malformed_json", format!("malformed JSON: {e}"))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::named_field;

    #[test]
    fn the_field_is_read_from_serde_messages() {
        for (message, field) in [
            ("Failed to deserialize the JSON body into the target type: unknown field `bogus`, expected one of `a`, `b` at line 1 column 9", Some("bogus")),
            ("Failed to deserialize the JSON body into the target type: missing field `name` at line 1 column 2", Some("name")),
            ("Failed to deserialize the JSON body into the target type: name: invalid type: integer `5`, expected a string at line 1 column 10", Some("name")),
            ("Failed to deserialize query string: limit: invalid digit found in string", Some("limit")),
            ("Failed to deserialize the JSON body into the target type: invalid type: map, expected a string at line 1 column 1", None),
        ] {
            assert_eq!(named_field(message).as_deref(), field, "{message}");
        }
    }
}
