//! Functions through the API: create, save new versions, deploy (sources and
//! destinations running the function switch at once), list versions, test
//! without side effects. Function sources are created under `/sources`.

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::manage::require_token;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use delivery::catalog::{FunctionSpec, LoadedFunction, SourceBinding};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

fn unavailable(e: store::StoreError) -> ApiError {
    ApiError::unavailable(e.to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionBody {
    name: Option<String>,
    kind: Option<String>,
    code: String,
    #[serde(default)]
    settings: Option<Vec<delivery::catalog::SettingDecl>>,
    timeout_ms: Option<u64>,
    memory_mb: Option<usize>,
    /// Deploy the saved version at once.
    #[serde(default)]
    deploy: bool,
}

async fn record(state: &AppState, name: &str) -> Result<Option<store::FunctionRecord>, ApiError> {
    Ok(state
        .store
        .functions()
        .await
        .map_err(unavailable)?
        .into_iter()
        .find(|f| f.name == name))
}

/// The declarations a new version gets: the body's, over `previous` (the
/// latest version's).
fn candidate_spec(body: &FunctionBody, previous: Option<FunctionSpec>) -> FunctionSpec {
    let mut spec = previous.unwrap_or_default();
    if let Some(s) = &body.settings {
        spec.settings = s.clone();
    }
    if body.timeout_ms.is_some() {
        spec.timeout_ms = body.timeout_ms;
    }
    if body.memory_mb.is_some() {
        spec.memory_mb = body.memory_mb;
    }
    spec
}

/// Checks that code loads and defines a handler of its kind (`invalid_code`).
async fn check_code(
    name: &str,
    kind: &str,
    text: &str,
    spec: FunctionSpec,
) -> Result<LoadedFunction, ApiError> {
    let (name, kind, text) = (name.to_string(), kind.to_string(), text.to_string());
    tokio::task::spawn_blocking(move || LoadedFunction::check(&name, &kind, 0, &text, spec))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .map_err(|e| ApiError::bad_request("invalid_code", e).with_field(Some("code".into())))
}

async fn save(
    state: &AppState,
    name: &str,
    kind: &str,
    text: &str,
    spec: &FunctionSpec,
) -> Result<u32, ApiError> {
    state
        .store
        .save_function(
            name,
            kind,
            text,
            &serde_json::to_string(spec).unwrap_or_default(),
        )
        .await
        .map_err(unavailable)
}

/// Everything that runs a function, put together again to run a new
/// version: nothing is switched (or stored) until all of it is ready.
struct RollOut {
    sources: Vec<delivery::source_functions::SourceFunction>,
    destinations: Vec<(String, delivery::DestinationSpec)>,
}

/// Puts together every source and destination running `name` with `f`; a
/// source or destination that cannot run it refuses the deploy
/// (`deploy_failed`), and what runs now keeps running.
async fn plan_roll_out(
    state: &AppState,
    name: &str,
    f: &LoadedFunction,
) -> Result<RollOut, ApiError> {
    let mut sources = Vec::new();
    if let Some(runner) = &state.runner {
        for s in runner.sources_of_function(name) {
            let binding = SourceBinding {
                function: name.to_string(),
                settings: s.settings.clone(),
                respond: Some(s.respond_mode().into()),
                capture: Some(s.capture_mode().into()),
            };
            sources.push(
                delivery::catalog::source_function_with(f, &s.slug, &binding)
                    .map_err(|e| ApiError::bad_request("deploy_failed", e))?,
            );
        }
    }
    let mut destinations = Vec::new();
    for (dest, config, _) in state.store.destinations().await.map_err(unavailable)? {
        let Ok(parsed) = serde_json::from_str::<Value>(&config)
            .map_err(|e| e.to_string())
            .and_then(|mut v| state.keyring.open_config(&mut v).map(|_| v))
            .and_then(|v| {
                serde_json::from_value::<delivery::DestinationConfig>(v).map_err(|e| e.to_string())
            })
        else {
            continue;
        };
        if let delivery::DestinationConfig::Function(d) = &parsed {
            if d.function == name {
                let pool = state.runner.as_ref().map(|r| r.pool().clone());
                let spec = delivery::catalog::destination_with(
                    &state.store,
                    pool.as_ref(),
                    &parsed,
                    Some(f),
                )
                .await
                .map_err(|e| ApiError::bad_request("deploy_failed", e))?;
                destinations.push((dest, spec));
            }
        }
    }
    Ok(RollOut {
        sources,
        destinations,
    })
}

/// Switches what [`plan_roll_out`] put together, once the deploy is stored.
async fn switch(state: &AppState, plan: RollOut) -> Result<Value, ApiError> {
    let mut sources = Vec::new();
    if let Some(runner) = &state.runner {
        for s in plan.sources {
            sources.push(s.slug.clone());
            runner.upsert(s);
        }
    }
    let mut destinations = Vec::new();
    for (name, spec) in plan.destinations {
        state
            .engine
            .replace(spec)
            .await
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, "conflict", e))?;
        destinations.push(name);
    }
    Ok(json!({"sources": sources, "destinations": destinations}))
}

/// Deploys a stored version: checks that everything running the function
/// can run it, then stores the deploy, then switches.
async fn deploy_checked(
    state: &AppState,
    name: &str,
    version: u32,
    f: &LoadedFunction,
) -> Result<Value, ApiError> {
    let plan = plan_roll_out(state, name, f).await?;
    if !state
        .store
        .deploy_function(name, version)
        .await
        .map_err(unavailable)?
    {
        return Err(
            ApiError::not_found(format!("function {name:?} has no version {version}"))
                .with_field(Some("version".into())),
        );
    }
    switch(state, plan).await
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let all = state.store.functions().await.map_err(unavailable)?;
    Ok(Json(json!({ "data": all })))
}

/// `POST /api/v1/functions`: `{name, kind, code, settings?, timeout_ms?, memory_mb?, deploy?}`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<JsonBody<FunctionBody>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_token(&state, &headers)?;
    let JsonBody(body) = body?;
    let name = body
        .name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("invalid_body", "`name` is required")
                .with_field(Some("name".into()))
        })?;
    let kind = body.kind.clone().unwrap_or_default();
    if !matches!(kind.as_str(), "source" | "destination") {
        return Err(ApiError::bad_request(
            "invalid_body",
            "`kind` must be \"source\" or \"destination\"",
        )
        .with_field(Some("kind".into())));
    }
    if record(&state, &name).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("function {name:?} exists; PUT /api/v1/functions/{name} saves a new version"),
        ));
    }
    let spec = candidate_spec(&body, None);
    let checked = check_code(&name, &kind, &body.code, spec.clone()).await?;
    let version = save(&state, &name, &kind, &body.code, &spec).await?;
    if body.deploy {
        deploy_checked(&state, &name, version, &checked).await?;
    }
    let f = record(&state, &name).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "function": f, "version": version })),
    ))
}

/// `PUT /api/v1/functions/{name}`: saves new code (and declarations) as the next version.
pub async fn update(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<JsonBody<FunctionBody>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let JsonBody(body) = body?;
    let existing = record(&state, &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown function {name:?}")))?;
    if body.kind.as_deref().is_some_and(|k| k != existing.kind) {
        return Err(
            ApiError::bad_request("invalid_body", "a function's kind cannot change")
                .with_field(Some("kind".into())),
        );
    }
    // Declarations not given carry over from the latest version.
    let previous: FunctionSpec = state
        .store
        .function_version(&name, Some(existing.latest_version))
        .await
        .map_err(unavailable)?
        .map(|v| v.settings)
        .or(Some(existing.settings.clone()))
        .and_then(|s| serde_json::from_value(s).ok())
        .unwrap_or_default();
    let spec = candidate_spec(&body, Some(previous));
    let checked = check_code(&name, &existing.kind, &body.code, spec.clone()).await?;
    let mut rolled = Value::Null;
    let version = if body.deploy {
        // Refused before anything is saved: a deploy that fails changes nothing.
        let plan = plan_roll_out(&state, &name, &checked).await?;
        let version = save(&state, &name, &existing.kind, &body.code, &spec).await?;
        state
            .store
            .deploy_function(&name, version)
            .await
            .map_err(unavailable)?;
        rolled = switch(&state, plan).await?;
        version
    } else {
        save(&state, &name, &existing.kind, &body.code, &spec).await?
    };
    Ok(Json(
        json!({ "function": record(&state, &name).await?, "version": version, "deployed_to": rolled }),
    ))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let f = record(&state, &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown function {name:?}")))?;
    let latest = state
        .store
        .function_code(&name, Some(f.latest_version))
        .await
        .map_err(unavailable)?
        .map(|(_, code)| code);
    Ok(Json(json!({ "function": f, "code": latest })))
}

pub async fn versions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let f = record(&state, &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown function {name:?}")))?;
    let versions = state
        .store
        .function_versions(&name)
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({
        "data": versions.iter().map(|(v, at, bytes)| json!({"version": v, "created_ms": at, "bytes": bytes, "deployed": *v == f.deployed_version})).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    version: Option<u32>,
}

/// `POST /api/v1/functions/{name}/deploy`: the latest (or given) version runs from now on.
pub async fn deploy(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Option<JsonBody<DeployBody>>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let f = record(&state, &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown function {name:?}")))?;
    let version = body?
        .and_then(|JsonBody(b)| b.version)
        .unwrap_or(f.latest_version);
    let Some(stored) = state
        .store
        .function_version(&name, Some(version))
        .await
        .map_err(unavailable)?
    else {
        return Err(
            ApiError::not_found(format!("function {name:?} has no version {version}"))
                .with_field(Some("version".into())),
        );
    };
    let spec: FunctionSpec = serde_json::from_value(stored.settings).unwrap_or_default();
    let checked = check_code(&name, &f.kind, &stored.code, spec)
        .await
        .map_err(|e| match e.status {
            StatusCode::BAD_REQUEST => ApiError::bad_request("deploy_failed", e.body.message),
            _ => e,
        })?;
    let rolled = deploy_checked(&state, &name, version, &checked).await?;
    Ok(Json(
        json!({ "name": name, "deployed_version": version, "deployed_to": rolled }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestBody {
    /// Unsaved code; default: the deployed version (or `version`).
    code: Option<String>,
    version: Option<u32>,
    /// Source functions: a fixture `{body, headers, url | queryParameters}`.
    payload: Option<Value>,
    /// Destination functions: a Spec event (or an array, for onBatch).
    event: Option<Value>,
    #[serde(default)]
    settings: Value,
    /// Destination functions: answers for fetch by URL prefix.
    #[serde(default)]
    fetch_mock: Vec<functions::MockResponse>,
    /// Really send the function's requests (under the fetch policy) instead of mocking them.
    #[serde(default)]
    live_fetch: bool,
}

/// `POST /api/v1/functions/{name}/test`: runs once, nothing stored or delivered;
/// `fetch` is answered by `fetch_mock` (or 200 `{}`) and recorded.
pub async fn test(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<JsonBody<TestBody>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    require_token(&state, &headers)?;
    let JsonBody(body) = body?;
    let f = record(&state, &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown function {name:?}")))?;
    let version = body
        .version
        .or(Some(f.latest_version).filter(|_| f.deployed_version == 0));
    let stored = state
        .store
        .function_version(&name, version)
        .await
        .map_err(unavailable)?;
    // The declarations (limits, which settings are encrypted) of the version
    // tested, or of the deployed one for unsaved code.
    let spec: FunctionSpec = stored
        .as_ref()
        .map(|v| v.settings.clone())
        .and_then(|s| serde_json::from_value(s).ok())
        .unwrap_or_default();
    let text = match body.code {
        Some(c) => c,
        None => stored
            .map(|v| v.code)
            .ok_or_else(|| ApiError::not_found(format!("function {name:?}: no such version")))?,
    };
    let code = functions::FunctionCode::new(&name, &format!("{name}.js"), &text);
    let limits = spec.limits();
    let settings = if body.settings.is_null() {
        json!({})
    } else {
        body.settings
    };
    let mode = if body.live_fetch {
        functions::FetchMode::Live(Arc::new(state.fetch_policy.clone()))
    } else {
        functions::FetchMode::Mock(Arc::new(body.fetch_mock))
    };
    let spec_limits = state.limits;
    // Encrypted settings never leave through an API: not in logs, errors,
    // nor the requests the function made.
    let secrets = spec.secrets(&settings);
    let redact = |text: &str| delivery::source_functions::redact(&secrets, text);
    let error_json = |e: &Option<functions::FunctionError>| {
        e.as_ref().map(
            |e| json!({"name": e.name, "message": redact(&e.message), "line": e.line, "kind": e.kind}),
        )
    };
    let logs_json = |logs: &[functions::LogLine]| {
        logs.iter()
            .map(|l| json!({"at_ms": l.at_ms, "level": l.level, "message": redact(&l.message)}))
            .collect::<Vec<_>>()
    };
    let requests_json =
        |r: &[functions::RecordedRequest]| delivery::source_functions::redact_requests(&secrets, r);
    match (f.kind.as_str(), body.payload, body.event) {
        ("source", Some(payload), None) => {
            let request = functions::fixture_request(&payload).map_err(|e| {
                ApiError::bad_request("invalid_payload", e).with_field(Some("payload".into()))
            })?;
            let out = tokio::task::spawn_blocking(move || {
                functions::run_source_once(&code, &request, &settings, &limits, mode)
            })
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
            let mut error = out.error.clone();
            if error.is_none() {
                if let Err(e) =
                    delivery::source_functions::normalize_emitted(&out.messages, &spec_limits)
                {
                    error = Some(e);
                }
            }
            Ok(Json(
                json!({"events": out.messages, "objects": out.objects, "logs": logs_json(&out.logs), "requests": requests_json(&out.requests), "error": error_json(&error)}),
            ))
        }
        ("destination", None, Some(event)) => {
            let out = tokio::task::spawn_blocking(move || {
                functions::run_destination_once(&code, &event, &settings, &limits, mode)
            })
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
            Ok(Json(
                json!({"result": out.result, "requests": requests_json(&out.requests), "logs": logs_json(&out.logs), "error": error_json(&out.error)}),
            ))
        }
        ("source", _, _) => Err(ApiError::bad_request(
            "invalid_test",
            "a source function is tested with `payload`",
        )),
        _ => Err(ApiError::bad_request(
            "invalid_test",
            "a destination function is tested with `event`",
        )),
    }
}
