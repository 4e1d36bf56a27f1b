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
    // Webhook senders use more than POST (a GET challenge, a PUT of a
    // record): the function's door takes every method.
    ("get", "/functions/{slug}", Auth::FunctionToken, "Same as POST"),
    ("put", "/functions/{slug}", Auth::FunctionToken, "Same as POST"),
    ("patch", "/functions/{slug}", Auth::FunctionToken, "Same as POST"),
    ("delete", "/functions/{slug}", Auth::FunctionToken, "Same as POST"),
    ("get", "/functions/{slug}/{token}", Auth::FunctionToken, "Same as POST"),
    ("put", "/functions/{slug}/{token}", Auth::FunctionToken, "Same as POST"),
    ("patch", "/functions/{slug}/{token}", Auth::FunctionToken, "Same as POST"),
    ("delete", "/functions/{slug}/{token}", Auth::FunctionToken, "Same as POST"),
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
        "User deletion requests, oldest first, paged (`limit`, `after`)",
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
    ("get", "/api/v1/sources/{slug}/events", Auth::Api, "Recent events of a source (the debugger backlog), newest first"),
    ("get", "/api/v1/sources/{slug}/capture", Auth::Api, "The webhook catcher's mode (always or window) and open window"),
    ("post", "/api/v1/sources/{slug}/capture", Auth::Api, "Open the capture window ({minutes?}, default 5)"),
    ("get", "/api/v1/sources/{slug}/logs/stream", Auth::Api, "A source function's logs, live, as Server-Sent Events"),
    ("get", "/api/v1/destinations/{name}/logs/stream", Auth::Api, "A destination function's logs, live, as Server-Sent Events"),
    ("get", "/api/v1/sources/{slug}/events/stream", Auth::Api, "Live events of a source as Server-Sent Events"),
    ("post", "/api/v1/destinations", Auth::Api, "Create a destination (the fields of [[destinations]])"),
    ("get", "/api/v1/destinations/{name}", Auth::Api, "A destination's configuration (secrets masked) and digest"),
    ("put", "/api/v1/destinations/{name}", Auth::Api, "Replace a destination's configuration; the cursor is kept"),
    ("patch", "/api/v1/destinations/{name}", Auth::Api, "Change some fields of a destination's configuration (null removes one; headers and settings merged by name); the cursor is kept"),
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
        "Batch items refused by validation, newest first",
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
        "Source function logs, newest first",
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
        "Raw requests whose function failed 5 times, newest first, with how many in all",
    ),
    (
        "post",
        "/api/v1/sources/{slug}/deadletters/replay",
        Auth::Api,
        "Run failed raw requests again ({ids} or all): {replayed, not_found}, the ids given that matched no dead request",
    ),
    (
        "get",
        "/api/v1/sources/{slug}/objects",
        Auth::Api,
        "Objects set by the source function, by collection and id (?collection=&id=)",
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
        "Destination function logs, newest first",
    ),
    ("delete", "/api/v1/destinations/{name}/deadletters", Auth::Api, "Discard dead letters ({ids?, since_ms?, until_ms?}; none = all): {discarded, not_found}, the ids given that matched no dead letter"),
    (
        "get",
        "/api/v1/destinations/{name}/deadletters",
        Auth::Api,
        "Deliveries given up on, oldest first",
    ),
    (
        "post",
        "/api/v1/destinations/{name}/deadletters/replay",
        Auth::Api,
        "Deliver dead letters again ({ids} or all): {replayed, not_found}, the ids given that matched no dead letter",
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

/// Query parameters of a route: (name, schema type, description).
fn query_parameters(method: &str, path: &str) -> Vec<(&'static str, &'static str, &'static str)> {
    const LIMIT: (&str, &str, &str) = (
        "limit",
        "integer",
        "At most this many (default 100; 1 to 1000, others are refused)",
    );
    const BEFORE: (&str, &str, &str) = (
        "before",
        "integer",
        "Only older rows (a smaller id; for events, an earlier log position): the `next_before` of the page before",
    );
    if method != "get" {
        return Vec::new();
    }
    match path.rsplit('/').next().unwrap_or_default() {
        "attempts" => vec![
            LIMIT,
            ("outcome", "string", "Only this outcome: delivered, retry, rejected, gone, partial, dead_letter, unsupported, dropped"),
            BEFORE,
        ],
        "deadletters" if path.starts_with("/api/v1/destinations/") => vec![
            LIMIT,
            ("after", "integer", "Only dead letters with a greater id: the `next_after` of the page before"),
        ],
        "events" => vec![
            ("limit", "integer", "At most this many (default 50; 1 to 1000, others are refused)"),
            BEFORE,
        ],
        "deadletters" | "logs" | "rejections" => vec![LIMIT, BEFORE],
        "objects" => vec![
            ("collection", "string", "Only this collection"),
            ("id", "string", "Only this object id"),
            LIMIT,
            ("after", "string", "Only objects after this one in (collection, id) order: the `next_after` of the page before, as given (an opaque string)"),
        ],
        "deletions" => vec![
            LIMIT,
            ("after", "string", "Only deletions made after this one (by time, then id): the `next_after` of the page before, as given (an opaque string)"),
        ],
        _ => Vec::new(),
    }
}

/// The answer of a paged list: its rows, each with the fields named in
/// `keys`, and the cursor of the next page (`null` on the last).
fn page_schema(method: &str, path: &str) -> Option<Value> {
    if method != "get" {
        return None;
    }
    let id = json!({"type": "integer", "description": "Unique and increasing: the cursor of newest-first pages"});
    let (items, cursor) = match path.rsplit('/').next().unwrap_or_default() {
        "attempts" => (
            json!({"id": id, "at_ms": {"type": "integer"}, "outcome": {"type": "string"}}),
            "next_before",
        ),
        "deadletters" if path.starts_with("/api/v1/destinations/") => (
            json!({"id": {"type": "integer"}, "failed_ms": {"type": "integer"}, "message_ids": {"type": "array", "items": {"type": "string"}}}),
            "next_after",
        ),
        "deadletters" => (
            json!({"id": id, "received_ms": {"type": "integer"}, "last_error": {"type": "string"}}),
            "next_before",
        ),
        "logs" => (
            json!({"id": id, "at_ms": {"type": "integer"}, "level": {"type": "string"}, "message": {"type": "string"}}),
            "next_before",
        ),
        "rejections" => (
            json!({"id": id, "at_ms": {"type": "integer"}, "index": {"type": "integer"}, "reason": {"type": "string"}}),
            "next_before",
        ),
        // The messages as stored; their log positions are only in the cursor.
        "events" if path.starts_with("/api/v1/sources/") => (
            json!({"messageId": {"type": "string"}, "type": {"type": "string"}}),
            "next_before",
        ),
        "objects" => (
            json!({"collection": {"type": "string"}, "id": {"type": "string"}, "properties": {"type": "object"}, "updated_ms": {"type": "integer"}}),
            "next_after",
        ),
        "deletions" => (
            json!({"id": {"type": "string"}, "userId": {"type": "string"}, "created_at": {"type": "string"}, "status": {"type": "string"}}),
            "next_after",
        ),
        _ => return None,
    };
    let cursor_schema = if cursor == "next_before" {
        json!({"type": "integer", "nullable": true, "description": "After a full page: pass it as `before` for the next (older) page; null on a shorter page, the last"})
    } else if path.ends_with("/objects") || path.ends_with("/deletions") {
        json!({"type": "string", "nullable": true, "description": "After a full page: pass it as `after` for the next page; null on a shorter page, the last"})
    } else {
        json!({"type": "integer", "nullable": true, "description": "After a full page: pass it as `after` for the next page; null on a shorter page, the last"})
    };
    let mut schema = json!({
        "type": "object",
        "required": ["data", cursor],
        "properties": {
            "data": {"type": "array", "items": {"type": "object", "properties": items}},
            cursor: cursor_schema,
        }
    });
    if path.ends_with("/deadletters") {
        schema["properties"]["total"] =
            json!({"type": "integer", "description": "How many there are in all"});
        schema["required"] = json!(["data", "total", cursor]);
    }
    Some(schema)
}

/// The JSON body a route takes: (schema, required).
fn request_body(method: &str, path: &str) -> Option<(Value, bool)> {
    let object = |properties: Value, required: &[&str]| {
        let mut schema =
            json!({"type": "object", "additionalProperties": false, "properties": properties});
        // OpenAPI 3.0 wants a non-empty `required`, or none.
        if !required.is_empty() {
            schema["required"] = json!(required);
        }
        schema
    };
    let selection = || {
        object(
            json!({
                "ids": {"type": "array", "items": {"type": "integer"}},
                "since_ms": {"type": "integer", "description": "Failed at or after (Unix ms)"},
                "until_ms": {"type": "integer", "description": "Failed before (Unix ms)"}
            }),
            &[],
        )
    };
    let body = match (method, path) {
        ("post", "/api/v1/tokens") => (
            object(
                json!({"name": {"type": "string"}, "read_only": {"type": "boolean"}}),
                &["name"],
            ),
            true,
        ),
        ("post", "/api/v1/sources") => (
            object(
                json!({
                    "slug": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
                    "kind": {"type": "string", "enum": ["tracking", "function"]},
                    "write_key": {"type": "string", "minLength": 1},
                    "function": {"type": "string"},
                    "settings": {"type": "object"},
                    "respond": {"type": "string", "enum": ["ack", "function"]},
                    "capture": {"type": "string", "enum": ["always", "window"]},
                    "token": {"type": "string", "minLength": 1}
                }),
                &["slug"],
            ),
            true,
        ),
        ("patch", "/api/v1/sources/{slug}") => (
            object(
                json!({
                    "function": {"type": "string"},
                    "settings": {"type": "object", "description": "Merged into the current settings; null removes one, \"********\" keeps it"},
                    "respond": {"type": "string", "enum": ["ack", "function"]},
                    "capture": {"type": "string", "enum": ["always", "window"]}
                }),
                &[],
            ),
            true,
        ),
        ("post", "/api/v1/sources/{slug}/rotate") => (
            object(
                json!({
                    "write_key": {"type": "string", "minLength": 1},
                    "token": {"type": "string", "minLength": 1},
                    "dry_run": {"type": "boolean"}
                }),
                &[],
            ),
            false,
        ),
        ("post", "/api/v1/deletions") => (
            object(
                json!({"userId": {"type": "string", "minLength": 1}}),
                &["userId"],
            ),
            true,
        ),
        ("post", "/api/v1/destinations") | ("put", "/api/v1/destinations/{name}") => (
            json!({"type": "object", "description": "A destination as in switchyard.toml's [[destinations]] (kind webhooks or function); \"********\" keeps a stored secret"}),
            true,
        ),
        ("patch", "/api/v1/destinations/{name}") => (
            json!({"type": "object", "description": "Fields of [[destinations]] to change; the others are kept. null removes a field (back to its default); headers and settings are merged by name (null removes one; header names ignore case); urls, sources and filter are replaced whole; \"********\" keeps a stored secret; kind cannot change (use PUT). Unknown fields are refused by name. The answer's `changed` is false when the configuration stays as it was (nothing is restarted)"}),
            true,
        ),
        (_, p)
            if p.ends_with("/deadletters/replay")
                || (method == "delete" && p.ends_with("/deadletters")) =>
        {
            (selection(), false)
        }
        ("post", _) | ("put", _) | ("patch", _) if path.starts_with("/api/v1/") => {
            (json!({"type": "object"}), false)
        }
        ("post", p) if p.starts_with("/v1/") => (
            json!({"type": "object", "description": "A Segment Spec message; a batch is {\"batch\": [messages], \"context\"?, \"integrations\"?, \"sentAt\"?}. JSON, or text/plain holding JSON; gzip with Content-Encoding: gzip"}),
            true,
        ),
        _ => return None,
    };
    Some(body)
}

/// The answers a route gives besides 200, by what it does.
fn responses(method: &str, path: &str, auth: Auth) -> Value {
    let error = |description: &str| json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let creates = method == "post"
        && matches!(
            path,
            "/api/v1/tokens"
                | "/api/v1/sources"
                | "/api/v1/destinations"
                | "/api/v1/deletions"
                | "/api/v1/functions"
        );
    let mut out = Map::new();
    let ok = if path == "/metrics" {
        json!({"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}})
    } else {
        let schema = page_schema(method, path).unwrap_or_else(|| json!({"type": "object"}));
        json!({"description": "OK", "content": {"application/json": {"schema": schema}}})
    };
    out.insert(if creates { "201" } else { "200" }.into(), ok);
    if path == "/v1/projects/{write_key}/settings" {
        out.insert("404".into(), error("No source has this write key"));
    }
    if auth != Auth::None || path.starts_with("/v1/") {
        out.insert(
            "400".into(),
            error("Invalid input: the error names the field"),
        );
    }
    if auth != Auth::None {
        out.insert("401".into(), error("Missing or wrong credentials"));
    }
    if auth == Auth::Api {
        if method != "get" {
            out.insert("403".into(), error("A read-only token may only GET"));
        }
        if path.contains('{') {
            out.insert("404".into(), error("No such resource"));
        }
        if creates
            || path.ends_with("/rotate")
            || method == "put"
            || (method == "patch" && path == "/api/v1/destinations/{name}")
        {
            out.insert(
                "409".into(),
                error("Conflicts with what exists (a name or write key already taken)"),
            );
        }
    }
    if matches!(auth, Auth::WriteKey | Auth::FunctionToken) {
        out.insert("408".into(), error("The body stalled past client_timeout"));
        out.insert("413".into(), error("Body or message over its limit"));
        out.insert("503".into(), error("The store is unavailable: retry"));
    }
    if auth == Auth::WriteKey {
        out.insert("415".into(), error("Content-Encoding other than gzip"));
    }
    Value::Object(out)
}

/// Builds the OpenAPI 3.0 document.
pub fn build() -> Value {
    let mut paths = Map::new();
    for (method, path, auth, summary) in ROUTES {
        let mut params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        params.extend(query_parameters(method, path).into_iter().map(|(name, kind, description)| {
            json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": kind}})
        }));
        let security = match auth {
            Auth::None => json!([]),
            Auth::WriteKey => json!([{"writeKey": []}]),
            Auth::FunctionToken => json!([{"functionToken": []}, {"functionTokenQuery": []}]),
            Auth::Api => json!([{"apiToken": []}]),
        };
        let description = match auth {
            Auth::Api if *method == "get" => "Any management token, read-only ones included.",
            Auth::Api => "The admin token or a full API token; a read-only token gets 403.",
            _ => "",
        };
        let mut op = json!({
            "summary": summary,
            "operationId": format!("{method}_{}", path.trim_matches('/').replace(['/', '{', '}', '.'], "_")),
            "security": security,
            "responses": responses(method, path, *auth),
        });
        if !description.is_empty() {
            op["description"] = Value::String(description.into());
        }
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if let Some((schema, required)) = request_body(method, path) {
            op["requestBody"] =
                json!({"required": required, "content": {"application/json": {"schema": schema}}});
        }
        if *auth == Auth::FunctionToken {
            op["requestBody"] = json!({"required": false, "description": "Any body of any content type, up to 2 MB: the function reads it", "content": {"*/*": {"schema": {}}}});
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "switchyard",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Segment-compatible tracking API, source-function webhooks and the management API. Errors are {\"error\": {\"code\", \"message\", \"field\"?}}."
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
