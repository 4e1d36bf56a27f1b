//! Read and repair endpoints for what the pipeline did (`/api/v1/…`), behind
//! the admin token: rejected batch items, delivery attempts, dead letters
//! and their replay, disabled URLs.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::unauthorized("missing admin token: send `Authorization: Bearer <token>`")
        })?;
    if state.is_admin_token(token.trim()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("invalid admin token"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    limit: Option<usize>,
}

impl Paging {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }
}

fn store_error(e: store::StoreError) -> ApiError {
    match e {
        store::StoreError::UnknownSource(s) => ApiError::not_found(format!("unknown source {s:?}")),
        other => ApiError::unavailable(other.to_string()),
    }
}

fn known_destination<'a>(
    state: &'a AppState,
    name: &str,
) -> Result<&'a Arc<delivery::WebhooksSink>, ApiError> {
    state
        .destinations
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("unknown destination {name:?}")))
}

pub async fn rejections(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(source): Path<String>,
    Query(paging): Query<Paging>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
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
    Query(paging): Query<Paging>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    known_destination(&state, &destination)?;
    let items = state
        .store
        .attempts(&destination, paging.limit())
        .await
        .map_err(store_error)?;
    Ok(Json(json!({ "data": items })))
}

pub async fn dead_letters(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(destination): Path<String>,
    Query(paging): Query<Paging>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    known_destination(&state, &destination)?;
    let items = state
        .store
        .dead_letters(&destination, paging.limit())
        .await
        .map_err(store_error)?;
    let data: Vec<Value> = items
        .into_iter()
        .map(|d| {
            let body: Value = serde_json::from_slice(&d.body).unwrap_or(Value::Null);
            let mut v = serde_json::to_value(&d).unwrap_or(Value::Null);
            v["body"] = body;
            v
        })
        .collect();
    Ok(Json(json!({ "data": data })))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Dead letter ids; absent = all of the destination's.
    ids: Option<Vec<i64>>,
}

pub async fn replay(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(destination): Path<String>,
    body: Option<Json<ReplayRequest>>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let sink = known_destination(&state, &destination)?.clone();
    let ids = body.and_then(|Json(b)| b.ids);
    let replayed = state
        .store
        .replay_dead_letters(&destination, ids)
        .await
        .map_err(store_error)?;
    sink.wake_retries();
    Ok(Json(json!({ "replayed": replayed })))
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
    body: Option<Json<EnableRequest>>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let sink = known_destination(&state, &destination)?.clone();
    let url = body.and_then(|Json(b)| b.url);
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
