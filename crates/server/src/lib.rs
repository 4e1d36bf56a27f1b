//! switchyard's HTTP doors: the Segment-compatible Tracking API, health,
//! Prometheus metrics and the pipeline's read/repair endpoints.
//!
//! Handlers translate HTTP to calls of the spec, store and delivery crates;
//! they hold no business logic of their own.

pub mod admin;
pub mod body;
pub mod error;
mod finish;
pub mod functions;
pub mod functions_api;
pub mod listen;
pub mod manage;
pub mod openapi;
pub mod tracking;

use axum::extract::DefaultBodyLimit;
use axum::routing::{any, delete, get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use spec::{Limits, MessageType};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use store::secrets::Keyring;
use store::Store;

/// A source as the tracking API meets it: its slug and its event counters,
/// resolved once per write key instead of once per request.
pub struct TrackingSource {
    pub slug: String,
    pub received: metrics::Counter,
    pub rejected: metrics::Counter,
    pub stored: metrics::Counter,
    pub duplicates: metrics::Counter,
}

impl TrackingSource {
    fn new(slug: String) -> Self {
        let counter = |name: &'static str| metrics::counter!(name, "source" => slug.clone());
        TrackingSource {
            received: counter("switchyard_events_received_total"),
            rejected: counter("switchyard_events_rejected_total"),
            stored: counter("switchyard_events_stored_total"),
            duplicates: counter("switchyard_events_duplicate_total"),
            slug,
        }
    }
}

/// Most write keys remembered as verified; past it the cache starts over
/// (a flood of distinct valid keys costs HMACs again, never memory).
const MAX_VERIFIED_WRITE_KEYS: usize = 4096;

/// Write key (in the clear, as every request carries it) → its source.
/// Emptied, and its generation bumped, whenever a write key changes.
#[derive(Default)]
struct WriteKeyCache {
    generation: u64,
    sources: HashMap<String, Arc<TrackingSource>>,
}

/// Everything a handler may use.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub limits: Limits,
    pub keyring: Keyring,
    /// Write-key digest → source slug.
    write_keys: RwLock<HashMap<String, String>>,
    /// Write keys already verified, so that a request pays neither an HMAC
    /// nor counter registrations.
    write_key_cache: RwLock<WriteKeyCache>,
    admin_token_hash: RwLock<Option<String>>,
    /// Open capture windows: source slug → until (Unix ms).
    capture_windows: RwLock<HashMap<String, i64>>,
    /// API token digest → read-only?
    api_tokens: RwLock<HashMap<String, bool>>,
    /// Function-token digest → source slug.
    function_tokens: RwLock<HashMap<String, String>>,
    /// Runs source functions (absent when no source has one).
    pub runner: Option<Arc<delivery::source_functions::SourceRunner>>,
    /// Largest raw request a function endpoint accepts (Segment: 2 MB).
    pub max_function_body_bytes: usize,
    /// Turns true when the server begins a graceful shutdown (see [`AppState::begin_shutdown`]).
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Who functions may call, for test runs that really send (`live_fetch`).
    pub fetch_policy: ::functions::FetchPolicy,
    /// The running destinations.
    pub engine: Arc<delivery::Engine>,
    pub metrics: Option<PrometheusHandle>,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        limits: Limits,
        keyring: Keyring,
        engine: Arc<delivery::Engine>,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        AppState {
            store,
            limits,
            keyring,
            write_keys: RwLock::new(HashMap::new()),
            write_key_cache: RwLock::new(WriteKeyCache::default()),
            admin_token_hash: RwLock::new(None),
            function_tokens: RwLock::new(HashMap::new()),
            api_tokens: RwLock::new(HashMap::new()),
            capture_windows: RwLock::new(HashMap::new()),
            runner: None,
            max_function_body_bytes: 2 * 1024 * 1024,
            fetch_policy: ::functions::FetchPolicy::default(),
            stopping: tokio::sync::watch::channel(false).0,
            engine,
            metrics,
        }
    }

    /// Registers a source's write-key digest.
    pub fn set_write_key_hash(&self, slug: &str, hash: &str) {
        if let Ok(mut keys) = self.write_keys.write() {
            keys.retain(|_, s| s != slug);
            keys.insert(hash.to_string(), slug.to_string());
        }
        self.forget_verified_write_keys();
    }

    /// Whether a source is still served (it has a write key or a token).
    pub fn serves_source(&self, slug: &str) -> bool {
        let named = |map: &RwLock<HashMap<String, String>>| {
            map.read().is_ok_and(|m| m.values().any(|s| s == slug))
        };
        named(&self.write_keys) || named(&self.function_tokens)
    }

    /// Forgets every credential of a source.
    pub fn forget_source(&self, slug: &str) {
        if let Ok(mut keys) = self.write_keys.write() {
            keys.retain(|_, s| s != slug);
        }
        self.forget_verified_write_keys();
        if let Ok(mut tokens) = self.function_tokens.write() {
            tokens.retain(|_, s| s != slug);
        }
    }

    /// Opens a source's capture window until `until_ms`.
    pub fn open_capture(&self, slug: &str, until_ms: i64) {
        if let Ok(mut w) = self.capture_windows.write() {
            w.insert(slug.to_string(), until_ms);
        }
    }

    pub fn capture_until(&self, slug: &str) -> Option<i64> {
        self.capture_windows.read().ok()?.get(slug).copied()
    }

    /// Whether a source's capture window is open now.
    pub fn capturing(&self, slug: &str) -> bool {
        self.capture_until(slug)
            .is_some_and(|until| chrono::Utc::now().timestamp_millis() < until)
    }

    /// Ends live streams (SSE) so that a graceful shutdown is not held up.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Registers a function source's token digest.
    pub fn set_function_token_hash(&self, slug: &str, hash: &str) {
        if let Ok(mut tokens) = self.function_tokens.write() {
            tokens.retain(|_, s| s != slug);
            tokens.insert(hash.to_string(), slug.to_string());
        }
    }

    pub fn source_for_function_token(&self, token: &str) -> Option<String> {
        let digest = self.keyring.hash(token);
        self.function_tokens.read().ok()?.get(&digest).cloned()
    }

    pub fn set_admin_token_hash(&self, hash: Option<String>) {
        if let Ok(mut h) = self.admin_token_hash.write() {
            *h = hash;
        }
    }

    /// The source whose write key is `key`, if any.
    pub fn source_for_write_key(&self, key: &str) -> Option<Arc<TrackingSource>> {
        let generation = {
            let cache = self.write_key_cache.read().ok()?;
            if let Some(source) = cache.sources.get(key) {
                return Some(source.clone());
            }
            cache.generation
        };
        let digest = self.keyring.hash(key);
        let slug = self.write_keys.read().ok()?.get(&digest).cloned()?;
        let source = Arc::new(TrackingSource::new(slug));
        if let Ok(mut cache) = self.write_key_cache.write() {
            // A key that changed since the lookup above is not cached: the
            // change bumped the generation after updating `write_keys`.
            if cache.generation == generation {
                if cache.sources.len() >= MAX_VERIFIED_WRITE_KEYS {
                    cache.sources.clear();
                }
                cache.sources.insert(key.to_string(), source.clone());
            }
        }
        Some(source)
    }

    fn forget_verified_write_keys(&self) {
        if let Ok(mut cache) = self.write_key_cache.write() {
            cache.generation += 1;
            cache.sources.clear();
        }
    }

    /// Registers (or, with `None`, forgets) an API token digest.
    pub fn set_api_token(&self, digest: &str, read_only: Option<bool>) {
        if let Ok(mut tokens) = self.api_tokens.write() {
            match read_only {
                Some(r) => {
                    tokens.insert(digest.to_string(), r);
                }
                None => {
                    tokens.remove(digest);
                }
            }
        }
    }

    /// `Some(read_only)` for a valid management token, `None` otherwise.
    pub fn token_access(&self, token: &str) -> Option<bool> {
        let digest = self.keyring.hash(token);
        let bootstrap = self
            .admin_token_hash
            .read()
            .ok()
            .and_then(|h| h.clone())
            .is_some_and(|h| constant_time_eq(h.as_bytes(), digest.as_bytes()));
        if bootstrap {
            return Some(false);
        }
        self.api_tokens.read().ok()?.get(&digest).copied()
    }

    pub fn is_admin_token(&self, token: &str) -> bool {
        self.token_access(token).is_some()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn metrics(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> String {
    state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default()
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> error::ApiError {
    error::ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} is not allowed on {}; the OpenAPI document at /api/v1/openapi.json lists each route's methods",
            uri.path()
        ),
    )
}

async fn not_found(uri: axum::http::Uri) -> error::ApiError {
    error::ApiError::not_found(format!("no route for {}", uri.path()))
}

/// The router of every door.
pub fn router(state: Arc<AppState>) -> Router {
    // The tracking API is the hot path, and the management guard has
    // nothing to check there: it is merged in after the guard and after
    // `finish::run_to_end` (its handlers finish their appends themselves,
    // in `tracking::store_events`, without a middleware per request).
    // Each door also answers at its first letter (`/v1/t`, `/v1/b`, …),
    // where analytics.js posts, and to a browser's CORS preflight.
    let mut tracking_api = Router::new();
    for kind in MessageType::CLIENT_TYPES {
        let door = post(move |s, r| tracking::single(s, kind, r)).options(tracking::preflight);
        let name = kind.as_str();
        tracking_api = tracking_api
            .route(&format!("/v1/{name}"), door.clone())
            .route(&format!("/v1/{}", &name[..1]), door);
    }
    let batch_door = post(tracking::batch).options(tracking::preflight);
    let tracking_api = tracking_api
        .route("/v1/batch", batch_door.clone())
        .route("/v1/import", batch_door.clone())
        .route("/v1/b", batch_door)
        .route(
            "/v1/m",
            post(tracking::client_metrics).options(tracking::preflight),
        )
        .route(
            "/v1/projects/{write_key}/settings",
            get(tracking::browser_settings),
        );
    Router::new()
        .route("/functions/{slug}", any(functions::without_token))
        .route("/functions/{slug}/{token}", any(functions::with_token))
        .route("/api/v1/sources/{slug}/captures", get(admin::captures))
        .route("/api/v1/sources/{slug}/logs", get(admin::function_logs))
        .route(
            "/api/v1/sources/{slug}/capture",
            get(manage::capture_status).post(manage::start_capture),
        )
        .route(
            "/api/v1/sources/{slug}/logs/stream",
            get(manage::stream_source_logs),
        )
        .route(
            "/api/v1/destinations/{name}/logs/stream",
            get(manage::stream_destination_logs),
        )
        .route(
            "/api/v1/sources/{slug}/function",
            get(admin::function_health),
        )
        .route(
            "/api/v1/sources/{slug}/function/resume",
            post(admin::resume_function),
        )
        .route(
            "/api/v1/sources/{slug}/deadletters",
            get(admin::source_dead_letters),
        )
        .route(
            "/api/v1/sources/{slug}/deadletters/replay",
            post(admin::replay_source),
        )
        .route("/api/v1/sources/{slug}/objects", get(admin::objects))
        .route("/api/v1/sources/{slug}/test", post(admin::test_function))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route(
            "/api/v1/functions",
            get(functions_api::list).post(functions_api::create),
        )
        .route(
            "/api/v1/functions/{name}",
            get(functions_api::get).put(functions_api::update),
        )
        .route(
            "/api/v1/functions/{name}/versions",
            get(functions_api::versions),
        )
        .route(
            "/api/v1/functions/{name}/deploy",
            post(functions_api::deploy),
        )
        .route("/api/v1/functions/{name}/test", post(functions_api::test))
        .route(
            "/api/v1/tokens",
            get(manage::list_tokens).post(manage::create_token),
        )
        .route("/api/v1/tokens/{id}", delete(manage::revoke_token))
        .route(
            "/api/v1/deletions",
            get(manage::list_deletions).post(manage::create_deletion),
        )
        .route("/api/v1/deletions/{id}", get(manage::get_deletion))
        .route(
            "/api/v1/sources",
            get(manage::list_sources).post(manage::create_source),
        )
        .route(
            "/api/v1/sources/{slug}",
            get(manage::get_source)
                .patch(manage::update_source)
                .delete(manage::delete_source),
        )
        .route("/api/v1/sources/{slug}/rotate", post(manage::rotate_source))
        .route("/api/v1/sources/{slug}/events", get(manage::recent_events))
        .route(
            "/api/v1/sources/{slug}/events/stream",
            get(manage::stream_events),
        )
        .route(
            "/api/v1/destinations",
            get(manage::list_destinations).post(manage::create_destination),
        )
        .route(
            "/api/v1/destinations/{name}",
            get(manage::get_destination)
                .put(manage::put_destination)
                .patch(manage::patch_destination)
                .delete(manage::delete_destination),
        )
        .route("/api/v1/sources/{slug}/rejections", get(admin::rejections))
        .route("/api/v1/destinations/{name}/attempts", get(admin::attempts))
        .route(
            "/api/v1/destinations/{name}/logs",
            get(admin::destination_logs),
        )
        .route(
            "/api/v1/destinations/{name}/deadletters",
            get(admin::dead_letters).delete(admin::discard),
        )
        .route(
            "/api/v1/destinations/{name}/deadletters/replay",
            post(admin::replay),
        )
        .route(
            "/api/v1/destinations/{name}/urls/enable",
            post(admin::enable_urls),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            manage::read_only_guard,
        ))
        .layer(axum::middleware::from_fn(finish::run_to_end))
        .merge(tracking_api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies are capped by the handlers themselves, with JSON errors.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}
