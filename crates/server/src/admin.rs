//! Read and repair endpoints for what the pipeline did (`/api/v1/…`), behind
//! the admin token: rejected batch items, delivery attempts, dead letters
//! and their replay, disabled URLs.

use crate::body::{JsonBody, QueryParams};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    crate::manage::require_token(state, headers)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    limit: Option<usize>,
    /// Attempts: only this outcome (`delivered`, `retry`, `rejected`, `gone`, `dead_letter`, …).
    outcome: Option<String>,
    /// Dead letters (oldest first): only those with a greater id, the
    /// `next_after` of the page before.
    after: Option<i64>,
    /// Attempts (newest first): only those with a smaller id, the
    /// `next_before` of the page before.
    before: Option<i64>,
}

/// How a list is paged: which cursor parameter it takes, if any.
#[derive(Clone, Copy, PartialEq)]
enum Cursor {
    None,
    After,
    Before,
}

impl Paging {
    /// 100 by default, at most 1000 (a larger one is read as 1000).
    fn limit(&self) -> usize {
        self.limit.unwrap_or(100).min(1000)
    }

    /// Refuses `limit=0` by name instead of answering an empty page, and a
    /// cursor parameter the list does not take.
    fn checked(self, cursor: Cursor) -> Result<Self, ApiError> {
        for (name, given, takes) in [
            ("after", self.after.is_some(), Cursor::After),
            ("before", self.before.is_some(), Cursor::Before),
        ] {
            if given && cursor != takes {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "`{name}` does not page this list: dead letters take `after`, attempts `before`; others give the newest `limit` (at most 1000)"
                    ),
                )
                .with_field(Some(name.into())));
            }
        }
        if self.limit == Some(0) {
            return Err(ApiError::bad_request(
                "invalid_query",
                "`limit` must be at least 1 (at most 1000)",
            )
            .with_field(Some("limit".into())));
        }
        Ok(self)
    }
}

fn store_error(e: store::StoreError) -> ApiError {
    match e {
        store::StoreError::UnknownSource(s) => ApiError::not_found(format!("unknown source {s:?}")),
        other => ApiError::unavailable(other.to_string()),
    }
}

async fn known_destination(state: &AppState, name: &str) -> Result<Arc<delivery::Sink>, ApiError> {
    state
        .engine
        .sink(name)
        .await
        .ok_or_else(|| ApiError::not_found(format!("unknown destination {name:?}")))
}

pub async fn rejections(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(source): Path<String>,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let paging = paging.checked(Cursor::None)?;
    let items = state
        .store
        .rejections(&source, paging.limit())
        .await
        .map_err(store_error)?;
    Ok(Json(json!({ "data": items })))
}

pub async fn attempts(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(destination): Path<String>,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let paging = paging.checked(Cursor::Before)?;
    known_destination(&state, &destination).await?;
    if let Some(outcome) = &paging.outcome {
        if !store::ATTEMPT_OUTCOMES.contains(&outcome.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!(
                    "unknown outcome {outcome:?}: expected one of {}",
                    store::ATTEMPT_OUTCOMES.join(", ")
                ),
            )
            .with_field(Some("outcome".into())));
        }
    }
    let items = state
        .store
        .attempts(
            &destination,
            paging.before,
            paging.limit(),
            paging.outcome.clone(),
        )
        .await
        .map_err(store_error)?;
    // A full page may have older ones behind it: the next page is before its last id.
    let next_before = (items.len() == paging.limit())
        .then(|| items.last().map(|a| a.id))
        .flatten();
    Ok(Json(json!({ "data": items, "next_before": next_before })))
}

pub async fn dead_letters(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(destination): Path<String>,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let paging = paging.checked(Cursor::After)?;
    known_destination(&state, &destination).await?;
    let items = state
        .store
        .dead_letters(&destination, paging.after, paging.limit())
        .await
        .map_err(store_error)?;
    // A full page may have more behind it: the next one starts after its last id.
    let next_after = (items.len() == paging.limit())
        .then(|| items.last().map(|d| d.id))
        .flatten();
    let data: Vec<Value> = items
        .into_iter()
        .map(|d| {
            let body: Value = serde_json::from_slice(&d.body).unwrap_or(Value::Null);
            let mut v = serde_json::to_value(&d).unwrap_or(Value::Null);
            v["body"] = body;
            v
        })
        .collect();
    let total = state
        .store
        .dead_letter_count(&destination)
        .await
        .map_err(store_error)?;
    Ok(Json(
        json!({ "data": data, "total": total, "next_after": next_after }),
    ))
}

/// Refuses a selection given in the query string (`?id=1`): replay and
/// discard read theirs from the body, and with no body they take every
/// dead letter, so an ignored `?id=1` discarded them all.
fn selection_not_in_query(query: Option<&str>) -> Result<(), ApiError> {
    match query {
        Some(q) if !q.is_empty() => Err(ApiError::bad_request(
            "invalid_query",
            format!("unexpected query {q:?}: the selection goes in the JSON body ({{\"ids\": [1, 2]}}, or \"since_ms\"/\"until_ms\"); with no body, every dead letter is taken"),
        )),
        _ => Ok(()),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Dead letter ids; absent = all of the destination's.
    ids: Option<Vec<i64>>,
    /// Only those that failed at or after this time (Unix ms).
    since_ms: Option<i64>,
    /// Only those that failed before this time (Unix ms).
    until_ms: Option<i64>,
}

impl ReplayRequest {
    /// The selection: ids, or a time range, or neither (all); ids with a
    /// range would select only the ids inside it, which is never what is meant.
    fn selection(self) -> Result<store::Selection, ApiError> {
        if self.ids.is_some() && (self.since_ms.is_some() || self.until_ms.is_some()) {
            return Err(ApiError::bad_request(
                "invalid_body",
                "give `ids`, or a time range (`since_ms`, `until_ms`), not both",
            )
            .with_field(Some("ids".into())));
        }
        Ok(store::Selection {
            ids: self.ids,
            since_ms: self.since_ms,
            until_ms: self.until_ms,
        })
    }
}

pub async fn replay(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(destination): Path<String>,
    RawQuery(query): RawQuery,
    body: Result<Option<JsonBody<ReplayRequest>>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    selection_not_in_query(query.as_deref())?;
    let sink = known_destination(&state, &destination).await?;
    let selection = body?
        .map(|JsonBody(b)| b.selection())
        .transpose()?
        .unwrap_or_default();
    let replayed = state
        .store
        .replay_dead_letters(&destination, selection)
        .await
        .map_err(store_error)?;
    sink.wake_retries();
    Ok(Json(json!({ "replayed": replayed })))
}

/// `DELETE /api/v1/destinations/{name}/deadletters`: discards dead letters
/// (body `{ids?, since_ms?, until_ms?}`; none = all).
pub async fn discard(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(destination): Path<String>,
    RawQuery(query): RawQuery,
    body: Result<Option<JsonBody<ReplayRequest>>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    selection_not_in_query(query.as_deref())?;
    if state.engine.sink(&destination).await.is_none()
        && !state
            .store
            .destinations()
            .await
            .map_err(store_error)?
            .iter()
            .any(|(n, _, _)| *n == destination)
    {
        return Err(ApiError::not_found(format!(
            "unknown destination {destination:?}"
        )));
    }
    let selection = body?
        .map(|JsonBody(b)| b.selection())
        .transpose()?
        .unwrap_or_default();
    let discarded = state
        .store
        .discard_dead_letters(&destination, selection)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({ "discarded": discarded })))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EnableRequest {
    url: Option<String>,
}

pub async fn enable_urls(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(destination): Path<String>,
    body: Result<Option<JsonBody<EnableRequest>>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let sink = known_destination(&state, &destination).await?;
    let url = body?.and_then(|JsonBody(b)| b.url);
    state
        .store
        .enable_urls(&destination, url)
        .await
        .map_err(store_error)?;
    let disabled = sink.reload_disabled().await.map_err(store_error)?;
    Ok(Json(json!({
        "disabled": disabled.into_iter().map(|(url, reason)| json!({"url": url, "reason": reason})).collect::<Vec<_>>(),
    })))
}

fn runner_for<'a>(
    state: &'a AppState,
    slug: &str,
) -> Result<&'a Arc<delivery::source_functions::SourceRunner>, ApiError> {
    state
        .runner
        .as_ref()
        .filter(|r| r.source(slug).is_some())
        .ok_or_else(|| ApiError::not_found(format!("source {slug:?} has no function")))
}

fn raw_to_json(r: &store::RawRecord) -> Value {
    let request: Value = serde_json::from_slice::<functions::RawRequest>(&r.request)
        .map(|req| {
            json!({
                "method": req.method,
                "url": req.url,
                "headers": req.headers,
                "body": String::from_utf8_lossy(&req.body),
            })
        })
        .unwrap_or(Value::Null);
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    v["request"] = request;
    v
}

/// The webhook catcher: the source's 10 most recent raw requests.
pub async fn captures(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let items = state.store.captures(&slug).await.map_err(store_error)?;
    Ok(Json(
        json!({ "data": items.iter().map(raw_to_json).collect::<Vec<_>>() }),
    ))
}

pub async fn function_logs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let paging = paging.checked(Cursor::None)?;
    crate::manage::find_source(&state, &slug).await?;
    let items = state
        .store
        .function_logs(&slug, paging.limit())
        .await
        .map_err(store_error)?;
    Ok(Json(json!({ "data": items })))
}

pub async fn function_health(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let runner = runner_for(&state, &slug)?;
    let source = runner.source(&slug).map(|s| {
        json!({"function": s.code.name, "version": s.code.version, "respond": if s.respond_inline { "function" } else { "ack" }})
    });
    Ok(Json(
        json!({ "source": slug, "function": source, "health": runner.health(&slug) }),
    ))
}

pub async fn resume_function(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let runner = runner_for(&state, &slug)?;
    runner.resume(&slug);
    Ok(Json(json!({ "health": runner.health(&slug) })))
}

pub async fn source_dead_letters(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let paging = paging.checked(Cursor::None)?;
    let items = state
        .store
        .raw_requests(&slug, "dead", paging.limit())
        .await
        .map_err(store_error)?;
    Ok(Json(
        json!({ "data": items.iter().map(raw_to_json).collect::<Vec<_>>() }),
    ))
}

pub async fn replay_source(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
    RawQuery(query): RawQuery,
    body: Result<Option<JsonBody<ReplayRequest>>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    selection_not_in_query(query.as_deref())?;
    let runner = runner_for(&state, &slug)?.clone();
    let ids = body?.and_then(|JsonBody(b)| b.ids);
    let replayed = state
        .store
        .replay_raw(&slug, ids)
        .await
        .map_err(store_error)?;
    runner.wake();
    Ok(Json(json!({ "replayed": replayed })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectQuery {
    collection: Option<String>,
    id: Option<String>,
    limit: Option<usize>,
}

pub async fn objects(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
    QueryParams(q): QueryParams<ObjectQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let items = state
        .store
        .objects(
            &slug,
            q.collection,
            q.id,
            q.limit.unwrap_or(100).clamp(1, 1000),
        )
        .await
        .map_err(store_error)?;
    Ok(Json(json!({ "data": items })))
}

/// A test run without side effects: nothing is stored or delivered.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// Unsaved code to run instead of the deployed function.
    code: Option<String>,
    /// A captured request to run on (id from the captures list).
    capture_id: Option<i64>,
    /// A payload in the functions-library fixture shape: {body, headers, url | queryParameters}.
    payload: Option<Value>,
    /// Settings merged over the source's (`null` removes one, the mask keeps it).
    settings: Option<Value>,
}

pub async fn test_function(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
    body: Result<JsonBody<TestRequest>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let JsonBody(req) = body?;
    let runner = runner_for(&state, &slug)?;
    let Some(source) = runner.source(&slug) else {
        return Err(ApiError::not_found(format!(
            "source {slug:?} has no function"
        )));
    };
    let raw = match (req.capture_id, &req.payload) {
        (Some(id), None) => {
            let captures = state.store.captures(&slug).await.map_err(store_error)?;
            let record = captures.into_iter().find(|c| c.id == id).ok_or_else(|| {
                ApiError::not_found(format!("no capture {id} for source {slug:?}"))
            })?;
            serde_json::from_slice::<functions::RawRequest>(&record.request)
                .map_err(|e| ApiError::bad_request("bad_capture", e.to_string()))?
        }
        (None, Some(payload)) => functions::fixture_request(payload).map_err(|e| {
            ApiError::bad_request("invalid_payload", e).with_field(Some("payload".into()))
        })?,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_test",
                "give exactly one of `capture_id` or `payload`",
            ))
        }
    };
    let code = match req.code {
        Some(code) => {
            functions::FunctionCode::new(&source.code.name, &source.code.file_name, &code)
        }
        None => (*source.code).clone(),
    };
    // Given settings are merged over the source's own, as a PATCH would
    // merge them: a test can change one, or keep a secret by its mask.
    let settings = match req.settings {
        Some(changes) => crate::manage::merged_settings(&source.settings, changes)?,
        None => source.settings.clone(),
    };
    let limits = source.limits;
    let spec_limits = *runner.spec_limits();
    let outcome = tokio::task::spawn_blocking(move || {
        // Live fetch is a side effect: tests answer every fetch with 200 {}.
        functions::run_source_once(
            &code,
            &raw,
            &settings,
            &limits,
            functions::FetchMode::Mock(Arc::new(Vec::new())),
        )
    })
    .await
    .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let mut error = outcome.error.clone();
    if error.is_none() {
        if let Err(e) =
            delivery::source_functions::normalize_emitted(&outcome.messages, &spec_limits)
        {
            error = Some(e);
        }
    }
    // Encrypted settings never leave through an API, logs included.
    if let Some(e) = &mut error {
        e.message = source.redact(&e.message);
    }
    let logs: Vec<Value> = outcome
        .logs
        .iter()
        .map(|l| json!({"at_ms": l.at_ms, "level": l.level, "message": source.redact(&l.message)}))
        .collect();
    Ok(Json(json!({
        "events": outcome.messages,
        "objects": outcome.objects,
        "logs": logs,
        "requests": source.redact_requests(&outcome.requests),
        "error": error.map(|e| json!({"name": e.name, "message": e.message, "line": e.line, "kind": e.kind})),
    })))
}

/// Logs of a destination function's runs.
pub async fn destination_logs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(destination): Path<String>,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let paging = paging.checked(Cursor::None)?;
    known_destination(&state, &destination).await?;
    let items = state
        .store
        .function_logs(&format!("destination:{destination}"), paging.limit())
        .await
        .map_err(store_error)?;
    Ok(Json(json!({ "data": items })))
}
