//! Management resources: API tokens, user deletion, and the lists of sources
//! and destinations. Read-only tokens may only read (`GET`).

use crate::body::{JsonBody, QueryParams};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use store::secrets::generate_credential;

/// The token of `Authorization: Bearer <token>` (the scheme in any case,
/// as RFC 7235 has it).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Ends a live stream at its next event once the request's token is
/// revoked: a revocation takes effect on the streams already open too.
fn while_token_valid<S>(
    state: Arc<AppState>,
    headers: &HeaderMap,
    events: S,
) -> impl futures_util::Stream<Item = S::Item>
where
    S: futures_util::Stream,
{
    use futures_util::StreamExt;
    let token = bearer(headers).unwrap_or_default().to_string();
    events.take_while(move |_| std::future::ready(state.token_access(&token).is_some()))
}

/// Any valid management token (read-only included).
pub fn require_token(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError::unauthorized("missing API token: send `Authorization: Bearer <token>`")
    })?;
    state
        .token_access(token)
        .map(|_| ())
        .ok_or_else(|| ApiError::unauthorized("invalid API token"))
}

/// Whether the request's token may change things (an admin or full API
/// token). Digests of configurations that hold secrets are shown only to
/// such tokens: a read-only viewer could otherwise test guesses of a weak
/// secret against them offline.
fn may_change(state: &AppState, headers: &HeaderMap) -> bool {
    bearer(headers).and_then(|t| state.token_access(t)) == Some(false)
}

/// Refuses writes (anything but GET/HEAD) to `/api/v1/…` with a read-only token.
pub async fn read_only_guard(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path.starts_with("/api/v1/") && !matches!(*request.method(), Method::GET | Method::HEAD) {
        if let Some(true) = bearer(request.headers()).and_then(|t| state.token_access(t)) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "read_only_token",
                "this token is read-only; use an admin token for changes",
            )
            .into_response();
        }
    }
    next.run(request).await
}

fn unavailable(e: store::StoreError) -> ApiError {
    ApiError::unavailable(e.to_string())
}

/// The stored record of source `slug`, or a 404.
pub(crate) async fn find_source(
    state: &AppState,
    slug: &str,
) -> Result<store::SourceRecord, ApiError> {
    state
        .store
        .sources()
        .await
        .map_err(unavailable)?
        .into_iter()
        .find(|s| s.slug == slug)
        .ok_or_else(|| ApiError::not_found(format!("unknown source {slug:?}")))
}

pub async fn list_tokens(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let tokens = state.store.tokens().await.map_err(unavailable)?;
    Ok(Json(json!({ "data": tokens })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    #[serde(default)]
    read_only: bool,
}

pub async fn create_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<JsonBody<NewToken>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_token(&state, &headers)?;
    let JsonBody(req) = body?;
    if req.name.trim().is_empty() {
        return Err(
            ApiError::bad_request("invalid_body", "`name` must not be empty")
                .with_field(Some("name".into())),
        );
    }
    let token = generate_credential(if req.read_only { "syr_" } else { "sya_" });
    let digest = state.keyring.hash(&token);
    let record = state
        .store
        .create_token(&req.name, &digest, req.read_only)
        .await
        .map_err(unavailable)?;
    state.set_api_token(&digest, Some(req.read_only));
    let mut v = serde_json::to_value(&record).unwrap_or(Value::Null);
    v["token"] = Value::String(token);
    v["note"] = Value::String("the token is shown once; only its digest is stored".into());
    Ok((StatusCode::CREATED, Json(v)))
}

pub async fn revoke_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let id: i64 = id.parse().map_err(|_| {
        ApiError::not_found(format!(
            "no token {id:?}: token ids are numbers (GET /api/v1/tokens lists them)"
        ))
    })?;
    let tokens = state.store.tokens().await.map_err(unavailable)?;
    let Some(token) = tokens.into_iter().find(|t| t.id == id) else {
        return Err(ApiError::not_found(format!("no token {id}")));
    };
    state.store.revoke_token(id).await.map_err(unavailable)?;
    state.set_api_token(&token.hash, None);
    Ok(Json(json!({ "revoked": id })))
}

pub async fn list_sources(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let sources = state.store.sources().await.map_err(unavailable)?;
    let data: Vec<Value> = sources
        .into_iter()
        .map(|s| {
            let function = state
                .runner
                .as_ref()
                .and_then(|r| r.source(&s.slug))
                // As `GET /sources/{slug}` shows it, settings aside: a list
                // needs no second request per function source.
                .map(|f| {
                    json!({
                        "name": f.code.name,
                        "version": f.code.version,
                        "respond": f.respond_mode(),
                        "capture": f.capture_mode(),
                    })
                });
            let source = json!({
                "slug": s.slug,
                "kind": s.kind,
                "created_ms": s.created_ms,
                "write_key": s.write_key_hash.as_ref().map(|_| "********"),
                "token": s.token_hash.as_ref().map(|_| "********"),
                "function": function,
            });
            source
        })
        .collect();
    Ok(Json(json!({ "data": data })))
}

pub async fn list_destinations(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let full = may_change(&state, &headers);
    let running = state.engine.names().await;
    let mut data = Vec::new();
    for name in &running {
        let Some(sink) = state.engine.sink(name).await else {
            continue;
        };
        let s = sink.settings();
        data.push(json!({
            "name": name,
            "running": true,
            "sources": s.sources,
            "batch_size": s.batch_size,
            "enabled": s.enabled,
            "backlog": state.store.backlog(name).await.map_err(unavailable)?,
            "retries": state.store.retry_count(name).await.map_err(unavailable)?,
            "disabled_urls": state.store.disabled_urls(name).await.map_err(unavailable)?
                .into_iter().map(|(url, reason)| json!({"url": if full { url } else { url_password_masked(&url) }, "reason": reason})).collect::<Vec<_>>(),
        }));
    }
    // Configured but not running (its function could not start at the
    // start): listed, so its waiting events are not out of sight.
    for (name, config, _) in state.store.destinations().await.map_err(unavailable)? {
        if running.contains(&name) {
            continue;
        }
        let config: Value = serde_json::from_str(&config).unwrap_or(Value::Null);
        data.push(json!({
            "name": name,
            "running": false,
            "sources": config["sources"],
            "backlog": state.store.backlog(&name).await.map_err(unavailable)?,
            "retries": state.store.retry_count(&name).await.map_err(unavailable)?,
            "note": "not running: see the server log for why; its events wait behind its cursor",
        }));
    }
    Ok(Json(json!({ "data": data })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDeletion {
    #[serde(rename = "userId")]
    user_id: String,
}

/// `POST /api/v1/deletions`: forwards `{"type":"delete","userId"}` to every
/// destination of the sources that hold the user's events (through the log:
/// signed, retried, `onDelete` for functions), then purges the user's stored
/// events, raw requests, captures, objects, retries and dead letters.
pub async fn create_deletion(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<JsonBody<NewDeletion>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_token(&state, &headers)?;
    let JsonBody(req) = body?;
    let user_id = req.user_id.trim().to_string();
    if user_id.is_empty() {
        return Err(
            ApiError::bad_request("invalid_body", "`userId` must not be empty")
                .with_field(Some("userId".into())),
        );
    }
    let id = format!("del_{}", uuid_like());
    let sources = state
        .store
        .sources_of_user(&user_id)
        .await
        .map_err(unavailable)?;
    // Recorded before any work, with the sources to notify: a deletion cut
    // short by a crash is finished at the next start (`resume_deletions`).
    let record = json!({
        "id": id,
        "userId": user_id,
        "created_at": spec::format_time(chrono::Utc::now()),
        "status": "running",
        "affected_sources": sources,
        "note": "delete notices are delivered like any event: see each destination's attempts for their message_id",
    });
    save_deletion(&state, &record).await?;
    let record = carry_out_deletion(&state, record).await?;
    Ok((StatusCode::CREATED, Json(record)))
}

async fn save_deletion(state: &AppState, record: &Value) -> Result<(), ApiError> {
    let id = record["id"].as_str().unwrap_or_default();
    state
        .store
        .put_meta(&format!("deletion:{id}"), &record.to_string())
        .await
        .map_err(unavailable)
}

/// Sends the delete notices of a recorded deletion through the log and
/// purges the user's data, then records it completed. Running it again is
/// harmless: a notice has the same `messageId` each time (deduplicated),
/// and a purge finds only what is left.
async fn carry_out_deletion(state: &AppState, mut record: Value) -> Result<Value, ApiError> {
    let id = record["id"].as_str().unwrap_or_default().to_string();
    let user_id = record["userId"].as_str().unwrap_or_default().to_string();
    let at = record["created_at"]
        .as_str()
        .and_then(spec::parse_iso8601)
        .unwrap_or_else(chrono::Utc::now);
    let sources: Vec<String> = record["affected_sources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    let mut notices = Vec::new();
    for source in &sources {
        let message_id = format!("{id}_{source}");
        let notice = spec::delete_notice(&user_id, &message_id, at);
        let appended = state
            .store
            .append(
                source,
                vec![store::NewEvent {
                    message_id: notice.message_id.clone(),
                    user_id: notice.user_id.clone(),
                    json: notice.json,
                }],
                vec![],
            )
            .await;
        match appended {
            Ok(_) => notices.push(json!({"source": source, "message_id": message_id})),
            // A source deleted since has no destinations left to tell.
            Err(store::StoreError::UnknownSource(_)) => {}
            Err(e) => return Err(unavailable(e)),
        }
    }
    let keep = notices
        .iter()
        .filter_map(|n| n["message_id"].as_str().map(str::to_string))
        .collect();
    let purged = state
        .store
        .purge_user(&user_id, keep)
        .await
        .map_err(unavailable)?;
    record["status"] = json!("completed");
    record["notices"] = json!(notices);
    record["purged"] = json!(purged);
    save_deletion(state, &record).await?;
    tracing::info!(deletion = %id, sources = sources.len(), "user deletion completed");
    Ok(record)
}

/// Finishes the user deletions a crash cut short (recorded `running`).
pub async fn resume_deletions(state: &AppState) {
    let records = match state.store.metas_with_prefix("deletion:").await {
        Ok(records) => records,
        Err(e) => {
            tracing::error!(error = %e, "cannot read user deletions to resume");
            return;
        }
    };
    for (_, text) in records {
        let Ok(record) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if record["status"] != "running" {
            continue;
        }
        let id = record["id"].clone();
        tracing::warn!(deletion = %id, "a user deletion was cut short: finishing it");
        if let Err(e) = carry_out_deletion(state, record).await {
            tracing::error!(deletion = %id, error = %e.body.message, "cannot finish a user deletion; it is tried again at the next start");
        }
    }
}

fn uuid_like() -> String {
    store::secrets::generate_credential("")
}

pub async fn get_deletion(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let stored = state
        .store
        .get_meta(&format!("deletion:{id}"))
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ApiError::not_found(format!("no deletion {id}")))?;
    let mut record: Value = serde_json::from_str(&stored).unwrap_or(Value::Null);
    // Progress of the notices, from the destinations' attempt logs.
    let mut deliveries = Vec::new();
    for name in state.engine.names().await {
        let name = &name;
        let attempts = state
            .store
            .attempts(name, None, 1000, None)
            .await
            .map_err(unavailable)?;
        for n in record["notices"].as_array().cloned().unwrap_or_default() {
            let mid = n["message_id"].as_str().unwrap_or_default();
            if let Some(a) = attempts.iter().find(|a| a.message_id == mid) {
                deliveries.push(json!({"destination": name, "message_id": mid, "outcome": a.outcome, "at_ms": a.at_ms}));
            }
        }
    }
    record["deliveries"] = Value::Array(deliveries);
    Ok(Json(record))
}

pub async fn list_deletions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(paging): QueryParams<crate::admin::Paging>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let paging = paging.checked(crate::admin::DELETIONS)?;
    let key = |d: &Value| {
        (
            d["created_at"].as_str().unwrap_or_default().to_string(),
            d["id"].as_str().unwrap_or_default().to_string(),
        )
    };
    // Oldest first, as they were made; the random id only breaks ties.
    let mut all: Vec<((String, String), Value)> = state
        .store
        .metas_with_prefix("deletion:")
        .await
        .map_err(unavailable)?
        .into_iter()
        .filter_map(|(_, record)| serde_json::from_str::<Value>(&record).ok())
        .map(|d| (key(&d), d))
        .filter(|(k, _)| paging.after_key().is_none_or(|after| k > after))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all.truncate(paging.limit());
    let next_after = paging.next_after_key(
        all.len(),
        all.last().map(|((a, b), _)| (a.as_str(), b.as_str())),
    );
    let data: Vec<Value> = all.into_iter().map(|(_, d)| d).collect();
    Ok(Json(json!({ "data": data, "next_after": next_after })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSource {
    slug: String,
    #[serde(default = "tracking_kind")]
    kind: String,
    /// Tracking sources. Optional: generated (and returned once) when absent.
    write_key: Option<String>,
    /// Function sources: the function to run.
    function: Option<String>,
    /// Function sources: values for the function's declared settings.
    #[serde(default)]
    settings: Value,
    /// Function sources: `ack` (default) or `function`.
    respond: Option<String>,
    /// Function sources: `always` (default) or `window`.
    capture: Option<String>,
    /// Function sources. Optional: generated (and returned once) when absent.
    token: Option<String>,
}

fn tracking_kind() -> String {
    "tracking".into()
}

/// `POST /api/v1/sources`: a new tracking source, live at once.
pub async fn create_source(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<JsonBody<NewSource>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_token(&state, &headers)?;
    let JsonBody(req) = body?;
    if !matches!(req.kind.as_str(), "tracking" | "function") {
        return Err(ApiError::bad_request(
            "invalid_kind",
            "`kind` must be \"tracking\" or \"function\"",
        )
        .with_field(Some("kind".into())));
    }
    let valid = !req.slug.is_empty()
        && req
            .slug
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(ApiError::bad_request(
            "invalid_slug",
            "`slug` must use only letters, digits, '-' and '_'",
        )
        .with_field(Some("slug".into())));
    }
    // A field of the other kind would be ignored: the caller meant
    // something this source will not do.
    let tracking = req.kind == "tracking";
    let foreign = if tracking {
        [
            ("function", req.function.is_some()),
            ("settings", !req.settings.is_null()),
            ("respond", req.respond.is_some()),
            ("capture", req.capture.is_some()),
            ("token", req.token.is_some()),
        ]
        .into_iter()
        .find(|(_, given)| *given)
    } else {
        Some(("write_key", req.write_key.is_some())).filter(|(_, given)| *given)
    };
    if let Some((field, _)) = foreign {
        let (other, this) = if tracking {
            ("function", "tracking")
        } else {
            ("tracking", "function")
        };
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("`{field}` is for {other} sources; this is a {this} source (`kind`)"),
        )
        .with_field(Some(field.into())));
    }
    let existing = state.store.sources().await.map_err(unavailable)?;
    if existing.iter().any(|s| s.slug == req.slug) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("source {:?} exists", req.slug),
        ));
    }
    if req.kind == "function" {
        return create_function_source(&state, req).await;
    }
    let key = req.write_key.unwrap_or_else(|| generate_credential("wk_"));
    if key.is_empty() {
        return Err(
            ApiError::bad_request("invalid_write_key", "`write_key` must not be empty")
                .with_field(Some("write_key".into())),
        );
    }
    let digest = state.keyring.hash(&key);
    write_key_is_free(&existing, &req.slug, &digest)?;
    let record = state
        .store
        .put_source(store::SourceRecord {
            slug: req.slug.clone(),
            kind: "tracking".into(),
            write_key_hash: Some(digest.clone()),
            token_hash: None,
            created_ms: chrono::Utc::now().timestamp_millis(),
            config: None,
        })
        .await
        .map_err(unavailable)?;
    state.set_write_key_hash(&record.slug, &digest);
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"slug": record.slug, "kind": record.kind, "write_key": key, "note": "the write key is shown once; only its digest is stored"}),
        ),
    ))
}

async fn create_function_source(
    state: &AppState,
    req: NewSource,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some(runner) = &state.runner else {
        return Err(ApiError::unavailable(
            "functions are not enabled on this server",
        ));
    };
    let function = req.function.clone().ok_or_else(|| {
        ApiError::bad_request("invalid_body", "a function source needs `function`")
            .with_field(Some("function".into()))
    })?;
    let binding = delivery::catalog::SourceBinding {
        function,
        settings: if req.settings.is_null() {
            json!({})
        } else {
            req.settings.clone()
        },
        respond: Some(req.respond.clone().unwrap_or_else(|| "ack".into())),
        capture: req.capture.clone(),
    };
    let source = delivery::catalog::source_function(state.store.as_ref(), &req.slug, &binding)
        .await
        .map_err(|e| ApiError::bad_request("invalid_source", e))?;
    let token = req
        .token
        .clone()
        .unwrap_or_else(|| generate_credential("tok_"));
    let digest = state.keyring.hash(&token);
    state
        .store
        .put_source(store::SourceRecord {
            slug: req.slug.clone(),
            kind: "function".into(),
            write_key_hash: None,
            token_hash: Some(digest.clone()),
            created_ms: chrono::Utc::now().timestamp_millis(),
            config: Some({
                // Settings are encrypted at rest with the master key.
                let mut sealed = serde_json::to_value(&binding).unwrap_or(Value::Null);
                state.keyring.seal_config(&mut sealed);
                sealed.to_string()
            }),
        })
        .await
        .map_err(unavailable)?;
    runner.upsert(source);
    state.set_function_token_hash(&req.slug, &digest);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "slug": req.slug,
            "kind": "function",
            "function": binding.function,
            "token": token,
            "url": format!("/functions/{}/{token}", req.slug),
            "note": "the token is shown once; only its digest is stored",
        })),
    ))
}

/// Refuses a write key (by its digest) that a source other than `slug`
/// has: a write key names the source its events go to, and a second source
/// with it would silently take the first one's events.
fn write_key_is_free(
    sources: &[store::SourceRecord],
    slug: &str,
    digest: &str,
) -> Result<(), ApiError> {
    match sources
        .iter()
        .find(|s| s.slug != slug && s.write_key_hash.as_deref() == Some(digest))
    {
        Some(owner) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "this write key already belongs to source {:?}; each source needs its own",
                owner.slug
            ),
        )
        .with_field(Some("write_key".into()))),
        None => Ok(()),
    }
}

/// The body of `POST /api/v1/sources/{slug}/rotate`, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// Tracking sources: the new write key (generated when absent).
    write_key: Option<String>,
    /// Function sources: the new token (generated when absent).
    token: Option<String>,
    /// Only say whether the given credential differs from the current one
    /// (`apply` plans with it); nothing changes.
    #[serde(default)]
    dry_run: bool,
}

/// `POST /api/v1/sources/{slug}/rotate`: a new write key (tracking) or token
/// (function source), given or generated; the old one stops working at once.
pub async fn rotate_source(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
    body: Result<Option<JsonBody<Rotation>>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let rotation = body?.map(|JsonBody(r)| r).unwrap_or_default();
    let sources = state.store.sources().await.map_err(unavailable)?;
    let source = sources
        .iter()
        .find(|s| s.slug == slug)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("unknown source {slug:?}")))?;
    let function = source.kind == "function";
    let (given, field, wrong) = if function {
        (rotation.token, "token", rotation.write_key.is_some())
    } else {
        (rotation.write_key, "write_key", rotation.token.is_some())
    };
    if wrong {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!(
                "source {slug:?} is a {} source: its credential is `{field}`",
                source.kind
            ),
        ));
    }
    if given.as_deref() == Some("") {
        return Err(
            ApiError::bad_request("invalid_body", format!("`{field}` must not be empty"))
                .with_field(Some(field.into())),
        );
    }
    if rotation.dry_run && given.is_none() {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("`dry_run` compares a given `{field}`: name one"),
        ));
    }
    let secret = given
        .clone()
        .unwrap_or_else(|| generate_credential(if function { "tok_" } else { "wk_" }));
    let digest = state.keyring.hash(&secret);
    let current = if function {
        &source.token_hash
    } else {
        &source.write_key_hash
    };
    let changed = current.as_deref() != Some(digest.as_str());
    if rotation.dry_run {
        return Ok(Json(json!({"slug": slug, "changed": changed})));
    }
    if !function {
        write_key_is_free(&sources, &slug, &digest)?;
    }
    state
        .store
        .put_source(store::SourceRecord {
            write_key_hash: (!function).then(|| digest.clone()),
            token_hash: function.then(|| digest.clone()),
            ..source
        })
        .await
        .map_err(unavailable)?;
    // A credential the caller gave is not shown back.
    let shown = if given.is_some() {
        Value::String("********".into())
    } else {
        Value::String(secret)
    };
    if function {
        state.set_function_token_hash(&slug, &digest);
    } else {
        state.set_write_key_hash(&slug, &digest);
    }
    let note = if given.is_some() {
        "set to the value given"
    } else {
        "shown once; only its digest is stored"
    };
    Ok(Json(
        json!({"slug": slug, field: shown, "changed": changed, "note": note}),
    ))
}

/// `GET /api/v1/sources/{slug}/events`: the debugger backlog, newest first,
/// paged by log position (`before` / `next_before`).
pub async fn recent_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
    crate::body::QueryParams(paging): crate::body::QueryParams<crate::admin::Paging>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let paging = paging.checked(crate::admin::EVENTS)?;
    // A negative position is below every event: an empty page, not an error.
    let before = paging.before().map(|b| u64::try_from(b).unwrap_or(0));
    let events = state
        .store
        .recent_events(&slug, before, paging.limit())
        .await
        .map_err(|e| match e {
            store::StoreError::UnknownSource(s) => {
                ApiError::not_found(format!("unknown source {s:?}"))
            }
            other => unavailable(other),
        })?;
    let data: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_slice(&e.json).unwrap_or(Value::Null))
        .collect();
    // Items are the events as stored, so the position is only in the cursor.
    let next_before = paging.next_before(
        events.len(),
        events.last().and_then(|e| i64::try_from(e.seq).ok()),
    );
    Ok(Json(json!({ "data": data, "next_before": next_before })))
}

/// `GET /api/v1/sources/{slug}/events/stream`: the live debugger, as
/// Server-Sent Events (one `data:` line of JSON per stored event).
pub async fn stream_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::stream;
    require_token(&state, &headers)?;
    find_source(&state, &slug).await?;
    let rx = state.store.subscribe();
    let cursor = *rx.borrow();
    let app = state.clone();
    let sources = vec![slug];
    let events = stream::unfold(
        (
            app,
            rx,
            cursor,
            std::collections::VecDeque::<Value>::new(),
            (sources, state.stopping.subscribe()),
        ),
        |(app, mut rx, mut cursor, mut pending, (sources, mut stopping))| async move {
            loop {
                // Live streams end when the server stops, so that a connected
                // `tail` never holds up a graceful shutdown, and when their
                // source is deleted, so that it does not wait forever.
                if *stopping.borrow() || !app.serves_source(&sources[0]) {
                    return None;
                }
                if let Some(next) = pending.pop_front() {
                    let event = Event::default().data(next.to_string());
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        (app, rx, cursor, pending, (sources, stopping)),
                    ));
                }
                if *rx.borrow_and_update() <= cursor {
                    tokio::select! {
                        changed = rx.changed() => if changed.is_err() { return None },
                        _ = stopping.changed() => return None,
                        // To see a deletion of the source while all is quiet.
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
                match app.store.read_events(&sources, cursor, 100_000, 500).await {
                    Ok((events, upto)) => {
                        cursor = upto;
                        pending.extend(
                            events
                                .iter()
                                .map(|e| serde_json::from_slice(&e.json).unwrap_or(Value::Null)),
                        );
                    }
                    Err(_) => return None,
                }
            }
        },
    );
    Ok(Sse::new(while_token_valid(state, &headers, events))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A digest of a configuration (secrets included, never shown), so that
/// `switchyard apply` can tell whether a destination changed.
pub fn config_digest(config: &Value) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(config.to_string().as_bytes()))
}

/// A digest of a function source's binding, the way [`config_digest`] is of
/// a destination's: object keys sorted at every depth, `respond` and
/// `capture` at their defaults when absent, so that the same binding from a
/// file or from the API digests alike.
pub fn binding_digest(binding: &delivery::catalog::SourceBinding) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&map[k])))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    config_digest(&json!({
        "function": binding.function,
        "settings": sorted(&binding.settings),
        "respond": binding.respond.as_deref().unwrap_or("ack"),
        "capture": binding.capture.as_deref().unwrap_or("always"),
    }))
}

/// What a secret is shown as. Sent back in a change, it means "unchanged".
const MASK: &str = "********";

/// The secrets of a destination configuration: signing secrets, and every
/// function setting (encrypted ones cannot be told apart here).
const SECRET_KEYS: [&str; 2] = ["shared_secret", "previous_shared_secret"];

/// Masks secrets in a stored destination configuration. A read-only token
/// also gets header values and URL passwords masked: receivers' API keys
/// live there, and such a token is for looking, not for copying them.
fn masked(mut config: Value, read_only: bool) -> Value {
    for key in SECRET_KEYS {
        if config.get(key).is_some_and(|v| !v.is_null()) {
            config[key] = Value::String(MASK.into());
        }
    }
    if let Some(settings) = config.get_mut("settings").and_then(Value::as_object_mut) {
        for v in settings.values_mut() {
            *v = Value::String(MASK.into());
        }
    }
    if read_only {
        if let Some(headers) = config.get_mut("headers").and_then(Value::as_object_mut) {
            for v in headers.values_mut() {
                *v = Value::String(MASK.into());
            }
        }
        if let Some(urls) = config.get_mut("urls").and_then(Value::as_array_mut) {
            for url in urls.iter_mut() {
                if let Some(u) = url.as_str() {
                    *url = Value::String(url_password_masked(u));
                }
            }
        }
    }
    config
}

/// `https://user:secret@host/x` → `https://user:********@host/x`.
pub fn url_password_masked(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    match authority[..at].find(':') {
        Some(colon) => format!(
            "{}{}:{MASK}{}",
            &url[..scheme_end],
            &authority[..colon],
            &url[scheme_end + at..]
        ),
        None => url.to_string(),
    }
}

/// `changes` merged into a source's `current` settings, as PATCH merges: a
/// setting given `null` is removed, one given the mask keeps its stored value.
pub(crate) fn merged_settings(current: &Value, changes: Value) -> Result<Value, ApiError> {
    let Value::Object(mut changes) = changes else {
        return Err(
            ApiError::bad_request("invalid_body", "`settings` must be an object")
                .with_field(Some("settings".into())),
        );
    };
    masked_settings_kept(&mut changes, Some(current))?;
    let mut merged = current.as_object().cloned().unwrap_or_default();
    for (name, value) in changes {
        if value.is_null() {
            merged.shift_remove(&name);
        } else {
            merged.insert(name, value);
        }
    }
    Ok(Value::Object(merged))
}

/// Puts the `stored` value back for each setting given as the mask; a mask
/// with no stored value behind it is refused.
fn masked_settings_kept(
    settings: &mut serde_json::Map<String, Value>,
    stored: Option<&Value>,
) -> Result<(), ApiError> {
    for (name, v) in settings.iter_mut() {
        if v.as_str() == Some(MASK) {
            match stored.and_then(|s| s.get(name)) {
                Some(old) => *v = old.clone(),
                None => return Err(mask_without_value(format!("settings.{name}"))),
            }
        }
    }
    Ok(())
}

fn mask_without_value(field: String) -> ApiError {
    ApiError::bad_request(
        "invalid_body",
        format!("`{field}` is the mask {MASK:?}, and there is no stored value to keep: give the value itself"),
    )
    .with_field(Some(field))
}

/// Puts the stored secret back wherever a change sends the mask: a client
/// that reads a configuration, edits one field and writes it back must not
/// set its secrets to `********`. A mask with nothing stored behind it is
/// refused.
fn unmasked(mut body: Value, stored: Option<&Value>) -> Result<Value, ApiError> {
    let is_mask = |v: Option<&Value>| v.and_then(Value::as_str) == Some(MASK);
    let missing = mask_without_value;
    for key in SECRET_KEYS {
        if is_mask(body.get(key)) {
            match stored.and_then(|s| s.get(key)).filter(|v| !v.is_null()) {
                Some(v) => body[key] = v.clone(),
                None => return Err(missing(key.to_string())),
            }
        }
    }
    if let Some(settings) = body.get_mut("settings").and_then(Value::as_object_mut) {
        masked_settings_kept(settings, stored.and_then(|s| s.get("settings")))?;
    }
    // Header values and URL passwords, as a read-only token is shown them.
    if let Some(headers) = body.get_mut("headers").and_then(Value::as_object_mut) {
        for (name, v) in headers.iter_mut() {
            if is_mask(Some(v)) {
                let kept = stored
                    .and_then(|s| s.get("headers"))
                    .and_then(Value::as_object)
                    .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
                    .map(|(_, old)| old.clone());
                match kept {
                    Some(old) => *v = old,
                    None => return Err(missing(format!("headers.{name}"))),
                }
            }
        }
    }
    if let Some(urls) = body.get_mut("urls").and_then(Value::as_array_mut) {
        for url in urls.iter_mut() {
            let Some(text) = url.as_str().filter(|u| u.contains(&format!(":{MASK}@"))) else {
                continue;
            };
            let kept = stored
                .and_then(|s| s.get("urls"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .find(|old| url_password_masked(old) == text)
                .map(str::to_string);
            match kept {
                Some(old) => *url = Value::String(old),
                None => return Err(missing("urls".into())),
            }
        }
    }
    Ok(body)
}

async fn stored_destination(
    state: &AppState,
    name: &str,
) -> Result<Option<(Value, String)>, ApiError> {
    let all = state.store.destinations().await.map_err(unavailable)?;
    Ok(all
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, config, origin)| {
            let mut v: Value = serde_json::from_str(&config).unwrap_or(Value::Null);
            if let Err(e) = state.keyring.open_config(&mut v) {
                tracing::error!(destination = name, error = %e, "cannot decrypt a stored destination");
            }
            (v, origin)
        }))
}

pub async fn get_destination(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let (config, origin) = stored_destination(&state, &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown destination {name:?}")))?;
    let full = may_change(&state, &headers);
    let digest = full.then(|| config_digest(&config));
    Ok(Json(json!({
        "name": name,
        "origin": origin,
        "running": state.engine.sink(&name).await.is_some(),
        "digest": digest,
        "config": masked(config, !full),
    })))
}

/// Parses, checks and starts (or replaces) a webhooks destination from JSON.
async fn apply_destination(
    state: &AppState,
    name: &str,
    mut body: Value,
    previous: Option<&Value>,
) -> Result<Value, ApiError> {
    let replace = previous.is_some();
    let Some(obj) = body.as_object_mut() else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body must be a JSON object",
        ));
    };
    match obj.get("name") {
        None => {
            obj.insert("name".into(), Value::String(name.to_string()));
        }
        Some(Value::String(n)) if n == name => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "`name` must match the destination in the URL",
            )
            .with_field(Some("name".into())))
        }
    }
    obj.entry("kind")
        .or_insert_with(|| Value::String("webhooks".into()));
    let config: delivery::DestinationConfig =
        serde_json::from_value(body.clone()).map_err(|e| {
            let message = e.to_string();
            let field = crate::body::named_field(&message);
            ApiError::bad_request("invalid_destination", message).with_field(field)
        })?;
    let known: Vec<String> = state
        .store
        .sources()
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|s| s.slug)
        .collect();
    // A source deleted since the destination named it may stay named: its
    // stored events are still to be delivered, and the destination must not
    // have to drop them to change anything else.
    let named_before = |s: &String| {
        previous
            .and_then(|p| p["sources"].as_array())
            .is_some_and(|before| before.iter().any(|b| b.as_str() == Some(s.as_str())))
    };
    if let Some(missing) = config
        .sources()
        .iter()
        .find(|s| !known.contains(s) && !named_before(s))
    {
        return Err(
            ApiError::bad_request("unknown_source", format!("unknown source {missing:?}"))
                .with_field(Some("sources".into())),
        );
    }
    if let delivery::DestinationConfig::Webhooks(w) = &config {
        w.validate()
            .map_err(|e| ApiError::bad_request("invalid_destination", e))?;
    }
    let pool = state.runner.as_ref().map(|r| r.pool().clone());
    let spec = delivery::catalog::destination(&state.store, pool.as_ref(), &config)
        .await
        .map_err(|e| ApiError::bad_request("invalid_destination", e))?;
    if replace {
        // A changed configuration switches URLs disabled by 410 back on.
        state
            .store
            .enable_urls(name, None)
            .await
            .map_err(unavailable)?;
        state.engine.replace(spec).await
    } else {
        state.engine.add(spec).await
    }
    .map_err(|e| ApiError::new(StatusCode::CONFLICT, "conflict", e))?;
    state
        .store
        .put_destination(name, &sealed(state, &body), "api")
        .await
        .map_err(unavailable)?;
    let enabled = body["enabled"].as_bool().unwrap_or(true);
    Ok(
        json!({"name": name, "origin": "api", "running": true, "enabled": enabled, "config": masked(body, false)}),
    )
}

/// The configuration as stored: secrets encrypted with the master key.
fn sealed(state: &AppState, config: &Value) -> String {
    let mut v = config.clone();
    state.keyring.seal_config(&mut v);
    v.to_string()
}

/// `POST /api/v1/destinations`: a new webhooks destination, live at once
/// (it receives events stored from now on).
pub async fn create_destination(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<JsonBody<Value>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_token(&state, &headers)?;
    let JsonBody(body) = body?;
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("invalid_body", "`name` is required, as a non-empty string")
                .with_field(Some("name".into()))
        })?
        .to_string();
    if stored_destination(&state, &name).await?.is_some()
        || state.engine.sink(&name).await.is_some()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("destination {name:?} exists"),
        ));
    }
    let body = unmasked(body, None)?;
    let out = apply_destination(&state, &name, body, None).await?;
    Ok((StatusCode::CREATED, Json(out)))
}

/// `PUT /api/v1/destinations/{name}`: replaces the configuration (urls,
/// headers, secret, batching, filter, enabled…); the cursor is kept.
pub async fn put_destination(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<JsonBody<Value>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let JsonBody(body) = body?;
    let Some((stored, _)) = stored_destination(&state, &name).await? else {
        return Err(ApiError::not_found(format!("unknown destination {name:?}")));
    };
    let body = unmasked(body, Some(&stored))?;
    Ok(Json(
        apply_destination(&state, &name, body, Some(&stored)).await?,
    ))
}

/// `PATCH /api/v1/destinations/{name}`: changes the fields given and keeps
/// the others (see [`merged_destination`]); the cursor is kept. A patch
/// that leaves the configuration as it is changes nothing, the running
/// destination included, and says so with `"changed": false`.
pub async fn patch_destination(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<JsonBody<Value>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let JsonBody(changes) = body?;
    let Value::Object(changes) = changes else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body must be a JSON object of the fields to change",
        ));
    };
    let Some((stored, origin)) = stored_destination(&state, &name).await? else {
        return Err(ApiError::not_found(format!("unknown destination {name:?}")));
    };
    let kind = stored["kind"].as_str().unwrap_or("webhooks").to_string();
    if changes
        .get("kind")
        .is_some_and(|k| k.as_str() != Some(kind.as_str()))
    {
        // Merged, the fields of the old kind would stay beside the new
        // one's: a new kind is a new configuration as a whole.
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("a PATCH cannot change `kind` (this destination is a {kind} one): replace the whole configuration with PUT"),
        )
        .with_field(Some("kind".into())));
    }
    let merged = unmasked(merged_destination(&stored, changes), Some(&stored))?;
    let effective = |config: &Value| {
        let mut config = config.clone();
        if let Some(obj) = config.as_object_mut() {
            obj.entry("name")
                .or_insert_with(|| Value::String(name.clone()));
            obj.entry("kind")
                .or_insert_with(|| Value::String("webhooks".into()));
        }
        serde_json::from_value::<delivery::DestinationConfig>(config).ok()
    };
    // Compared as parsed, so that a field given its default value
    // (`"enabled": true` where it was never written) is no change.
    if let (Some(before), Some(after)) = (effective(&stored), effective(&merged)) {
        if before == after {
            let enabled = stored["enabled"].as_bool().unwrap_or(true);
            return Ok(Json(json!({
                "name": name,
                "origin": origin,
                "running": state.engine.sink(&name).await.is_some(),
                "enabled": enabled,
                "changed": false,
                "config": masked(stored, false),
            })));
        }
    }
    let mut out = apply_destination(&state, &name, merged, Some(&stored)).await?;
    out["changed"] = json!(true);
    Ok(Json(out))
}

/// `changes` merged into a destination's `current` configuration, as PATCH
/// merges: a field given replaces the stored one and `null` removes it
/// (back to its default); `headers` and `settings` are merged by name in
/// the same way, as a source's settings are (header names ignoring case,
/// as HTTP does). A list (`urls`, `sources`) or a `filter` is replaced
/// whole: merged item by item, neither could be shortened or reordered.
fn merged_destination(current: &Value, changes: serde_json::Map<String, Value>) -> Value {
    let mut merged = current.as_object().cloned().unwrap_or_default();
    for (field, value) in changes {
        match (field.as_str(), value) {
            (_, Value::Null) => {
                merged.shift_remove(&field);
            }
            ("headers" | "settings", Value::Object(entries)) => {
                let mut inner = merged
                    .get(&field)
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                for (key, v) in entries {
                    if field == "headers" {
                        let other_case = inner
                            .keys()
                            .find(|k| k.eq_ignore_ascii_case(&key) && **k != key)
                            .cloned();
                        if let Some(old) = other_case {
                            inner.shift_remove(&old);
                        }
                    }
                    if v.is_null() {
                        inner.shift_remove(&key);
                    } else {
                        inner.insert(key, v);
                    }
                }
                merged.insert(field, Value::Object(inner));
            }
            (_, value) => {
                merged.insert(field, value);
            }
        }
    }
    Value::Object(merged)
}

/// `DELETE /api/v1/destinations/{name}`: stops it and forgets it: its
/// configuration, cursor, retries, dead letters, attempts and logs. A
/// destination made again under the name starts afresh (to stop one for a
/// while and keep its place, set `enabled = false`).
pub async fn delete_destination(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let stopped = state.engine.remove(&name).await;
    let existed = state
        .store
        .delete_destination(&name)
        .await
        .map_err(unavailable)?;
    if !stopped && !existed {
        return Err(ApiError::not_found(format!("unknown destination {name:?}")));
    }
    Ok(Json(json!({"deleted": name})))
}

/// `DELETE /api/v1/sources/{slug}`: the source stops accepting events at once
/// (its write key or token stops working); events already stored are still
/// delivered.
pub async fn delete_source(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    if !state
        .store
        .delete_source(&slug)
        .await
        .map_err(unavailable)?
    {
        return Err(ApiError::not_found(format!("unknown source {slug:?}")));
    }
    state.forget_source(&slug);
    if let Some(runner) = &state.runner {
        runner.remove(&slug);
    }
    Ok(Json(json!({ "deleted": slug })))
}

/// Function logs as Server-Sent Events: the newest lines first seen, then
/// each new line as it is written (checked twice a second).
async fn stream_logs(state: Arc<AppState>, headers: &HeaderMap, owner: String) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::stream;
    let stopping = state.stopping.subscribe();
    // The newest line's id sent: ids are unique and grow, so two equal lines
    // written in the same millisecond are both sent, and nothing is kept
    // per line for as long as the stream stays open.
    let sent: i64 = 0;
    let lines = stream::unfold(
        (
            state.clone(),
            owner,
            sent,
            std::collections::VecDeque::<Value>::new(),
            stopping,
        ),
        |(state, owner, mut sent, mut pending, mut stopping)| async move {
            loop {
                if *stopping.borrow() {
                    return None;
                }
                if let Some(next) = pending.pop_front() {
                    let event = Event::default().data(next.to_string());
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        (state, owner, sent, pending, stopping),
                    ));
                }
                let Ok(mut lines) = state.store.function_logs(&owner, None, 500).await else {
                    return None;
                };
                lines.reverse();
                let since = sent;
                for l in lines.into_iter().filter(|l| l.id > since) {
                    sent = l.id;
                    pending.push_back(serde_json::to_value(&l).unwrap_or(Value::Null));
                }
                if pending.is_empty() {
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                        _ = stopping.changed() => return None,
                    }
                }
            }
        },
    );
    Sse::new(while_token_valid(state, headers, lines))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /api/v1/sources/{slug}/logs/stream`: a source function's logs, live.
pub async fn stream_source_logs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
) -> Result<Response, ApiError> {
    require_token(&state, &headers)?;
    find_source(&state, &slug).await?;
    Ok(stream_logs(state, &headers, slug).await)
}

/// `GET /api/v1/destinations/{name}/logs/stream`: a destination function's logs, live.
pub async fn stream_destination_logs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    require_token(&state, &headers)?;
    if state.engine.sink(&name).await.is_none() {
        return Err(ApiError::not_found(format!("unknown destination {name:?}")));
    }
    Ok(stream_logs(state, &headers, format!("destination:{name}")).await)
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// How long to capture (default 5, at most 60).
    minutes: Option<u64>,
}

/// `POST /api/v1/sources/{slug}/capture`: opens the webhook catcher's capture
/// window (for sources with `capture = "window"`; others always capture).
pub async fn start_capture(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
    body: Result<Option<JsonBody<CaptureRequest>>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let source = state
        .runner
        .as_ref()
        .and_then(|r| r.source(&slug))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no function source {slug:?}: it is unknown or a tracking source"
            ))
        })?;
    let minutes = body?
        .and_then(|JsonBody(b)| b.minutes)
        .unwrap_or(5)
        .clamp(1, 60);
    let until = chrono::Utc::now().timestamp_millis() + (minutes * 60_000) as i64;
    state.open_capture(&slug, until);
    Ok(Json(json!({
        "source": slug,
        "mode": source.capture_mode(),
        "capturing_until_ms": until,
    })))
}

/// `GET /api/v1/sources/{slug}/capture`: the catcher's mode and window.
pub async fn capture_status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let source = state
        .runner
        .as_ref()
        .and_then(|r| r.source(&slug))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no function source {slug:?}: it is unknown or a tracking source"
            ))
        })?;
    Ok(Json(json!({
        "source": slug,
        "mode": source.capture_mode(),
        "capturing": source.capture_always || state.capturing(&slug),
        "capturing_until_ms": state.capture_until(&slug),
    })))
}

/// `GET /api/v1/sources/{slug}`: one source (credentials and settings masked).
pub async fn get_source(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let source = find_source(&state, &slug).await?;
    let show_digest = may_change(&state, &headers);
    let function = state.runner.as_ref().and_then(|r| r.source(&slug)).map(|f| {
        let respond = f.respond_mode();
        let capture = f.capture_mode();
        let digest = show_digest.then(|| {
            binding_digest(&delivery::catalog::SourceBinding {
                function: f.code.name.clone(),
                settings: f.settings.clone(),
                respond: Some(respond.into()),
                capture: Some(capture.into()),
            })
        });
        json!({
            "name": f.code.name,
            "version": f.code.version,
            "respond": respond,
            "capture": capture,
            "settings": f.settings.as_object().map(|m| m.keys().map(|k| (k.clone(), json!("********"))).collect::<serde_json::Map<_, _>>()),
            "digest": digest,
        })
    });
    Ok(Json(json!({
        "slug": source.slug,
        "kind": source.kind,
        "created_ms": source.created_ms,
        "write_key": source.write_key_hash.as_ref().map(|_| "********"),
        "token": source.token_hash.as_ref().map(|_| "********"),
        "function": function,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceUpdate {
    function: Option<String>,
    settings: Option<Value>,
    respond: Option<String>,
    capture: Option<String>,
}

/// `PATCH /api/v1/sources/{slug}`: changes a function source's function,
/// settings, `respond` or `capture`; takes effect with the next request.
pub async fn update_source(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(slug): Path<String>,
    body: Result<JsonBody<SourceUpdate>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let JsonBody(update) = body?;
    let record = find_source(&state, &slug).await?;
    let (Some(runner), Some(current)) = (
        &state.runner,
        state.runner.as_ref().and_then(|r| r.source(&slug)),
    ) else {
        return Err(ApiError::bad_request(
            "not_a_function_source",
            "only function sources have settings to change; a tracking source's key is changed with /rotate",
        ));
    };
    let settings = match update.settings {
        None => current.settings.clone(),
        Some(changes) => merged_settings(&current.settings, changes)?,
    };
    let binding = delivery::catalog::SourceBinding {
        function: update.function.unwrap_or_else(|| current.code.name.clone()),
        settings,
        respond: Some(
            update
                .respond
                .unwrap_or_else(|| current.respond_mode().into()),
        ),
        capture: Some(
            update
                .capture
                .unwrap_or_else(|| current.capture_mode().into()),
        ),
    };
    let rebuilt = delivery::catalog::source_function(state.store.as_ref(), &slug, &binding)
        .await
        .map_err(|e| ApiError::bad_request("invalid_source", e))?;
    let mut sealed = serde_json::to_value(&binding).unwrap_or(Value::Null);
    state.keyring.seal_config(&mut sealed);
    state
        .store
        .put_source(store::SourceRecord {
            config: Some(sealed.to_string()),
            write_key_hash: None,
            token_hash: None,
            ..record
        })
        .await
        .map_err(unavailable)?;
    runner.upsert(rebuilt);
    Ok(Json(
        json!({"slug": slug, "function": binding.function, "respond": binding.respond, "capture": binding.capture}),
    ))
}
