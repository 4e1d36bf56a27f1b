//! The OpenAPI document of every route, served at `/api/v1/openapi.json`.
//! [`ROUTES`] is the one list of what the server answers; a test checks that
//! each listed route exists and behaves as documented.

use serde_json::{json, Map, Value};

/// How a route authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    WriteKey,
    FunctionToken,
    /// A management token; read-only tokens may use GET routes only.
    Api,
}

/// (method, path, auth, summary)
pub const ROUTES: &[(&str, &str, Auth, &str)] = &[
    (
        "post",
        "/v1/track",
        Auth::WriteKey,
        "Record an action (Segment track)",
    ),
    (
        "post",
        "/v1/identify",
        Auth::WriteKey,
        "Tie a user to traits (Segment identify)",
    ),
    ("post", "/v1/page", Auth::WriteKey, "Record a page view"),
    ("post", "/v1/screen", Auth::WriteKey, "Record a screen view"),
    (
        "post",
        "/v1/group",
        Auth::WriteKey,
        "Associate a user with a group",
    ),
    ("post", "/v1/alias", Auth::WriteKey, "Merge two identities"),
    (
        "post",
        "/v1/batch",
        Auth::WriteKey,
        "Several messages; invalid items are reported, valid ones stored",
    ),
    ("post", "/v1/import", Auth::WriteKey, "Same as /v1/batch"),
    // The paths analytics.js posts to.
    ("post", "/v1/t", Auth::WriteKey, "Same as /v1/track"),
    ("post", "/v1/i", Auth::WriteKey, "Same as /v1/identify"),
    ("post", "/v1/p", Auth::WriteKey, "Same as /v1/page"),
    ("post", "/v1/s", Auth::WriteKey, "Same as /v1/screen"),
    ("post", "/v1/g", Auth::WriteKey, "Same as /v1/group"),
    ("post", "/v1/a", Auth::WriteKey, "Same as /v1/alias"),
    (
        "post",
        "/v1/b",
        Auth::WriteKey,
        "Same as /v1/batch; the body may also be a bare array of messages",
    ),
    (
        "post",
        "/v1/m",
        Auth::None,
        "analytics.js's reports about itself: answered 200 and dropped",
    ),
    (
        "get",
        "/v1/projects/{write_key}/settings",
        Auth::None,
        "analytics.js settings naming this host as its API host (for `cdnURL`)",
    ),
    (
        "post",
        "/functions/{slug}",
        Auth::FunctionToken,
        "Webhook into a source function (token in query or header)",
    ),
    (
        "post",
        "/functions/{slug}/{token}",
        Auth::FunctionToken,
        "Webhook into a source function (token in the path)",
    ),
    ("get", "/healthz", Auth::None, "Liveness"),
    ("get", "/metrics", Auth::None, "Prometheus metrics"),
    ("get", "/api/v1/openapi.json", Auth::None, "This document"),
    ("get", "/api/v1/tokens", Auth::Api, "List API tokens"),
    (
        "post",
        "/api/v1/tokens",
        Auth::Api,
        "Create an API token ({name, read_only}); shown once",
    ),
    (
        "delete",
        "/api/v1/tokens/{id}",
        Auth::Api,
        "Revoke an API token",
    ),
    (
        "get",
        "/api/v1/deletions",
        Auth::Api,
        "User deletion requests",
    ),
    (
        "post",
        "/api/v1/deletions",
        Auth::Api,
        "Delete a user ({userId}): notify destinations, purge stored data",
    ),
    (
        "get",
        "/api/v1/deletions/{id}",
        Auth::Api,
        "A deletion request and the delivery of its notices",
    ),
    (
        "get",
        "/api/v1/functions",
        Auth::Api,
        "Functions, their latest and deployed versions",
    ),
    (
        "post",
        "/api/v1/functions",
        Auth::Api,
        "Create a function ({name, kind, code, settings?, timeout_ms?, memory_mb?, deploy?})",
    ),
    (
        "get",
        "/api/v1/functions/{name}",
        Auth::Api,
        "A function and its latest code",
    ),
    (
        "put",
        "/api/v1/functions/{name}",
        Auth::Api,
        "Save new code as the next version ({code, settings?, deploy?})",
    ),
    (
        "get",
        "/api/v1/functions/{name}/versions",
        Auth::Api,
        "A function's versions",
    ),
    (
        "post",
        "/api/v1/functions/{name}/deploy",
        Auth::Api,
        "Deploy the latest (or {version}); running sources and destinations switch at once",
    ),
    (
        "post",
        "/api/v1/functions/{name}/test",
        Auth::Api,
        "Run once without side effects ({payload} or {event}, settings, code?, fetch_mock?)",
    ),
    ("post", "/api/v1/sources", Auth::Api, "Create a source: tracking {slug, write_key?} or function {slug, kind: function, function, settings?, respond?, token?}; credentials shown once"),
    ("delete", "/api/v1/sources/{slug}", Auth::Api, "Delete a source: its credentials stop working; stored events are still delivered"),
    ("get", "/api/v1/sources/{slug}", Auth::Api, "One source (credentials and settings masked)"),
    ("patch", "/api/v1/sources/{slug}", Auth::Api, "Change a function source's function, settings, respond or capture"),
    ("post", "/api/v1/sources/{slug}/rotate", Auth::Api, "Rotate a source's write key or function token; shown once"),
    ("get", "/api/v1/sources/{slug}/events", Auth::Api, "Recent events of a source (the debugger backlog)"),
    ("get", "/api/v1/sources/{slug}/capture", Auth::Api, "The webhook catcher's mode (always or window) and open window"),
    ("post", "/api/v1/sources/{slug}/capture", Auth::Api, "Open the capture window ({minutes?}, default 5)"),
    ("get", "/api/v1/sources/{slug}/logs/stream", Auth::Api, "A source function's logs, live, as Server-Sent Events"),
    ("get", "/api/v1/destinations/{name}/logs/stream", Auth::Api, "A destination function's logs, live, as Server-Sent Events"),
    ("get", "/api/v1/sources/{slug}/events/stream", Auth::Api, "Live events of a source as Server-Sent Events"),
    ("post", "/api/v1/destinations", Auth::Api, "Create a destination (the fields of [[destinations]])"),
    ("get", "/api/v1/destinations/{name}", Auth::Api, "A destination's configuration (secrets masked) and digest"),
    ("put", "/api/v1/destinations/{name}", Auth::Api, "Replace a destination's configuration; the cursor is kept"),
    ("delete", "/api/v1/destinations/{name}", Auth::Api, "Stop and remove a destination, with its cursor, retries, dead letters and attempts (disable it instead to keep its place)"),
    (
        "get",
        "/api/v1/sources",
        Auth::Api,
        "Sources (credentials masked)",
    ),
    (
        "get",
        "/api/v1/destinations",
        Auth::Api,
        "Destinations, backlog and retries",
    ),
    (
        "get",
        "/api/v1/sources/{slug}/rejections",
        Auth::Api,
        "Batch items refused by validation",
    ),
    (
        "get",
        "/api/v1/sources/{slug}/captures",
        Auth::Api,
        "The webhook catcher: 10 most recent raw requests",
    ),
    (
        "get",
        "/api/v1/sources/{slug}/logs",
        Auth::Api,
        "Source function logs",
    ),
    (
        "get",
        "/api/v1/sources/{slug}/function",
        Auth::Api,
        "Source function and its health",
    ),
    (
        "post",
        "/api/v1/sources/{slug}/function/resume",
        Auth::Api,
        "Resume a paused source function",
    ),
    (
        "get",
        "/api/v1/sources/{slug}/deadletters",
        Auth::Api,
        "Raw requests whose function failed 5 times",
    ),
    (
        "post",
        "/api/v1/sources/{slug}/deadletters/replay",
        Auth::Api,
        "Run failed raw requests again ({ids} or all)",
    ),
    (
        "get",
        "/api/v1/sources/{slug}/objects",
        Auth::Api,
        "Objects set by the source function (?collection=&id=)",
    ),
    (
        "post",
        "/api/v1/sources/{slug}/test",
        Auth::Api,
        "Test the source function without side effects",
    ),
    (
        "get",
        "/api/v1/destinations/{name}/attempts",
        Auth::Api,
        "Delivery attempts, newest first",
    ),
    (
        "get",
        "/api/v1/destinations/{name}/logs",
        Auth::Api,
        "Destination function logs",
    ),
    ("delete", "/api/v1/destinations/{name}/deadletters", Auth::Api, "Discard dead letters ({ids?, since_ms?, until_ms?}; none = all)"),
    (
        "get",
        "/api/v1/destinations/{name}/deadletters",
        Auth::Api,
        "Deliveries given up on",
    ),
    (
        "post",
        "/api/v1/destinations/{name}/deadletters/replay",
        Auth::Api,
        "Deliver dead letters again ({ids} or all)",
    ),
    (
        "post",
        "/api/v1/destinations/{name}/urls/enable",
        Auth::Api,
        "Re-enable URLs disabled by 410 Gone ({url} or all)",
    ),
];

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string"}
                }
            }
        }
    })
}

/// Builds the OpenAPI 3.0 document.
pub fn build() -> Value {
    let mut paths = Map::new();
    for (method, path, auth, summary) in ROUTES {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let security = match auth {
            Auth::None => json!([]),
            Auth::WriteKey => json!([{"writeKey": []}]),
            Auth::FunctionToken => json!([{"functionToken": []}, {"functionTokenQuery": []}]),
            Auth::Api => json!([{"apiToken": []}]),
        };
        let mut op = json!({
            "summary": summary,
            "operationId": format!("{method}_{}", path.trim_matches('/').replace(['/', '{', '}', '.'], "_")),
            "security": security,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                "400": {"description": "Invalid input", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "401": {"description": "Missing or wrong credentials", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            }
        });
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if *method == "post" {
            op["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": {"type": "object"}}}});
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "switchyard",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Segment-compatible tracking API, source-function webhooks and the management API."
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": error_schema()},
            "securitySchemes": {
                "writeKey": {"type": "http", "scheme": "basic", "description": "The write key as the user name, empty password"},
                "functionToken": {"type": "apiKey", "in": "header", "name": "X-Segment-Source-Function-Token"},
                "functionTokenQuery": {"type": "apiKey", "in": "query", "name": "token"},
                "apiToken": {"type": "http", "scheme": "bearer"}
            }
        }
    })
}

pub async fn document() -> axum::Json<Value> {
    axum::Json(build())
}
