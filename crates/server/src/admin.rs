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

/// The query of every paged list: `limit`, the list's cursor and its
/// filters. [`Paging::checked`] refuses what the list does not take.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    limit: Option<usize>,
    /// Attempts: only this outcome (`delivered`, `retry`, `rejected`, `gone`, `dead_letter`, …).
    outcome: Option<String>,
    /// Objects: only this collection.
    collection: Option<String>,
    /// Objects: only this object id.
    id: Option<String>,
    /// Oldest-first lists: only rows after this one, the `next_after` of
    /// the page before. A dead letter id, or an object's key as
    /// [`object_cursor`] writes it; read by [`Paging::checked`].
    after: Option<String>,
    /// Newest-first lists: only rows with a smaller id (an event's log
    /// position), the `next_before` of the page before.
    before: Option<i64>,
    /// Set by [`Paging::checked`], like the two below.
    #[serde(skip)]
    default_limit: Option<usize>,
    #[serde(skip)]
    after_id: Option<i64>,
    #[serde(skip)]
    after_key: Option<(String, String)>,
}

/// How a list is paged: which cursor parameter it takes.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Cursor {
    /// Oldest first, by id: `after` / `next_after` (dead letters).
    After,
    /// Oldest first, by a key of strings: `after` / `next_after`, opaque
    /// (objects, by collection and id).
    AfterKey,
    /// Newest first, by id: `before` / `next_before` (the others).
    Before,
}

/// A list's paging: its cursor, the filters it takes besides `limit`, and
/// its page size when `limit` is not given.
#[derive(Clone, Copy)]
pub(crate) struct List {
    cursor: Cursor,
    filters: &'static [&'static str],
    default_limit: usize,
}

impl List {
    const fn new(cursor: Cursor) -> Self {
        List {
            cursor,
            filters: &[],
            default_limit: 100,
        }
    }
}

pub(crate) const ATTEMPTS: List = List {
    filters: &["outcome"],
    ..List::new(Cursor::Before)
};
pub(crate) const DEAD_LETTERS: List = List::new(Cursor::After);
pub(crate) const NEWEST_FIRST: List = List::new(Cursor::Before);
/// The debugger backlog keeps its smaller default page.
pub(crate) const EVENTS: List = List {
    default_limit: 50,
    ..List::new(Cursor::Before)
};
pub(crate) const OBJECTS: List = List {
    filters: &["collection", "id"],
    ..List::new(Cursor::AfterKey)
};
/// User deletions, oldest first by (creation time, id): ids are random.
pub(crate) const DELETIONS: List = List::new(Cursor::AfterKey);

/// The largest page a list gives.
const MAX_PAGE: usize = 1000;

const PAGING_HELP: &str = "dead letters, objects and deletions (oldest first) take `after`, the other lists (newest first) `before`: the `next_after` or `next_before` of the page before";

impl Paging {
    /// The list's default when not given; never above [`MAX_PAGE`] ([`Paging::checked`] refuses more).
    pub(crate) fn limit(&self) -> usize {
        self.limit
            .or(self.default_limit)
            .unwrap_or(100)
            .min(MAX_PAGE)
    }

    /// Refuses `limit=0` by name instead of answering an empty page, a
    /// cursor or filter the list does not take, and an `after` that is not
    /// one of the list's cursors.
    pub(crate) fn checked(mut self, list: List) -> Result<Self, ApiError> {
        let invalid = |name: &str, message: String| {
            ApiError::bad_request("invalid_query", message).with_field(Some(name.into()))
        };
        let takes_after = matches!(list.cursor, Cursor::After | Cursor::AfterKey);
        for (name, given, takes) in [
            ("after", self.after.is_some(), takes_after),
            (
                "before",
                self.before.is_some(),
                list.cursor == Cursor::Before,
            ),
        ] {
            if given && !takes {
                return Err(invalid(
                    name,
                    format!("`{name}` does not page this list: {PAGING_HELP}"),
                ));
            }
        }
        for (name, given) in [
            ("outcome", self.outcome.is_some()),
            ("collection", self.collection.is_some()),
            ("id", self.id.is_some()),
        ] {
            if given && !list.filters.contains(&name) {
                return Err(invalid(name, format!("`{name}` does not filter this list")));
            }
        }
        if self.limit.is_some_and(|l| l == 0 || l > MAX_PAGE) {
            return Err(invalid(
                "limit",
                format!("`limit` must be 1 to {MAX_PAGE}: page with the list's cursor for more"),
            ));
        }
        // Ids and log positions start at 1: a cursor below it is a
        // client's mistake, not an empty list.
        if self.before.is_some_and(|b| b < 1) {
            return Err(invalid(
                "before",
                format!("`before` is not a cursor of this list: {PAGING_HELP}"),
            ));
        }
        if let Some(after) = &self.after {
            let not_a_cursor = || {
                invalid(
                    "after",
                    format!("`after` is not a cursor of this list: {PAGING_HELP}"),
                )
            };
            match list.cursor {
                Cursor::After => self.after_id = Some(after.parse().map_err(|_| not_a_cursor())?),
                Cursor::AfterKey => {
                    self.after_key = Some(read_key_cursor(after).ok_or_else(not_a_cursor)?)
                }
                Cursor::Before => {}
            }
        }
        self.default_limit = Some(list.default_limit);
        Ok(self)
    }

    /// `next_before` of a page whose last row has `last`: a full page may
    /// have older rows behind it, a short one is the last.
    pub(crate) fn next_before(&self, len: usize, last: Option<i64>) -> Option<i64> {
        (len == self.limit()).then_some(last).flatten()
    }

    pub(crate) fn before(&self) -> Option<i64> {
        self.before
    }

    /// The `after` of a list keyed by two strings, read by [`Paging::checked`].
    pub(crate) fn after_key(&self) -> Option<&(String, String)> {
        self.after_key.as_ref()
    }

    /// `next_after` of a page of a list keyed by two strings: a full page
    /// may have more behind it.
    pub(crate) fn next_after_key(&self, len: usize, last: Option<(&str, &str)>) -> Option<String> {
        (len == self.limit())
            .then(|| last.map(|(a, b)| key_cursor(a, b)))
            .flatten()
    }
}

/// A key of two strings as an `after` cursor (an object's collection and
/// id, a deletion's time and id): URL-safe base64 of the JSON array
/// `[first, second]`, which any two strings make and no separator can
/// confuse.
fn key_cursor(first: &str, second: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!([first, second]).to_string())
}

fn read_key_cursor(cursor: &str) -> Option<(String, String)> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
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
    let paging = paging.checked(NEWEST_FIRST)?;
    let items = state
        .store
        .rejections(&source, paging.before, paging.limit())
        .await
        .map_err(store_error)?;
    let next_before = paging.next_before(items.len(), items.last().map(|r| r.id));
    Ok(Json(json!({ "data": items, "next_before": next_before })))
}

pub async fn attempts(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(destination): Path<String>,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let paging = paging.checked(ATTEMPTS)?;
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
    let next_before = paging.next_before(items.len(), items.last().map(|a| a.id));
    Ok(Json(json!({ "data": items, "next_before": next_before })))
}

pub async fn dead_letters(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(destination): Path<String>,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let paging = paging.checked(DEAD_LETTERS)?;
    known_destination(&state, &destination).await?;
    let items = state
        .store
        .dead_letters(&destination, paging.after_id, paging.limit())
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

/// The ids of `asked` that are not in `taken`, once each, in the order
/// asked: named in the answer of a replay or discard (`not_found`), so that
/// a mistyped id is not lost in a count. The answer is still 200: the ids
/// that matched were taken, and a client tells them apart by this list.
fn not_found(asked: Option<&[i64]>, taken: &[i64]) -> Vec<i64> {
    let mut missing: Vec<i64> = Vec::new();
    for id in asked.unwrap_or_default() {
        if !taken.contains(id) && !missing.contains(id) {
            missing.push(*id);
        }
    }
    missing
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
    let asked = selection.ids.clone();
    let replayed = state
        .store
        .replay_dead_letters(&destination, selection)
        .await
        .map_err(store_error)?;
    sink.wake_retries();
    Ok(Json(json!({
        "replayed": replayed.len(),
        "not_found": not_found(asked.as_deref(), &replayed),
    })))
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
    let asked = selection.ids.clone();
    let discarded = state
        .store
        .discard_dead_letters(&destination, selection)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({
        "discarded": discarded.len(),
        "not_found": not_found(asked.as_deref(), &discarded),
    })))
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
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no function source {slug:?}: it is unknown or a tracking source"
            ))
        })
}

fn raw_to_json(r: &store::RawRecord) -> Value {
    let request: Value = serde_json::from_slice::<functions::RawRequest>(&r.request)
        .map(crate::functions::redacted_request)
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
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("unexpected query {q:?}: the catcher keeps a source's 10 newest requests, and shows them all"),
        ));
    }
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
    let paging = paging.checked(NEWEST_FIRST)?;
    crate::manage::find_source(&state, &slug).await?;
    let items = state
        .store
        .function_logs(&slug, paging.before, paging.limit())
        .await
        .map_err(store_error)?;
    let next_before = paging.next_before(items.len(), items.last().map(|l| l.id));
    Ok(Json(json!({ "data": items, "next_before": next_before })))
}

pub async fn function_health(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let runner = runner_for(&state, &slug)?;
    let source = runner.source(&slug).map(|s| {
        json!({"function": s.code.name, "version": s.code.version, "respond": s.respond_mode()})
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
    let paging = paging.checked(NEWEST_FIRST)?;
    let items = state
        .store
        .raw_requests(&slug, "dead", paging.before, paging.limit())
        .await
        .map_err(store_error)?;
    let next_before = paging.next_before(items.len(), items.last().map(|r| r.id));
    let total = state
        .store
        .raw_request_count(&slug, "dead")
        .await
        .map_err(store_error)?;
    Ok(Json(json!({
        "data": items.iter().map(raw_to_json).collect::<Vec<_>>(),
        "total": total,
        "next_before": next_before,
    })))
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
    let asked = ids.clone();
    let replayed = state
        .store
        .replay_raw(&slug, ids)
        .await
        .map_err(store_error)?;
    runner.wake();
    Ok(Json(json!({
        "replayed": replayed.len(),
        "not_found": not_found(asked.as_deref(), &replayed),
    })))
}

pub async fn objects(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let paging = paging.checked(OBJECTS)?;
    let items = state
        .store
        .objects(
            &slug,
            paging.collection.clone(),
            paging.id.clone(),
            paging.after_key.clone(),
            paging.limit(),
        )
        .await
        .map_err(store_error)?;
    // A full page may have more behind it: the next one starts after its last key.
    let next_after = paging.next_after_key(
        items.len(),
        items.last().map(|o| (o.collection.as_str(), o.id.as_str())),
    );
    Ok(Json(json!({ "data": items, "next_after": next_after })))
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
            "no function source {slug:?}: it is unknown or a tracking source"
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
    let paging = paging.checked(NEWEST_FIRST)?;
    known_destination(&state, &destination).await?;
    let items = state
        .store
        .function_logs(
            &format!("destination:{destination}"),
            paging.before,
            paging.limit(),
        )
        .await
        .map_err(store_error)?;
    let next_before = paging.next_before(items.len(), items.last().map(|l| l.id));
    Ok(Json(json!({ "data": items, "next_before": next_before })))
}
