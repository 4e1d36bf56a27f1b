//! CLI commands that talk to a running server's management API.

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the running server is and how to authenticate: global options, so
/// that they go before the subcommand or after it. `serve`, `bench`,
/// `completions` and `functions test` refuse them (see `main.rs`): none of
/// them calls a running server, and `serve` sets its own admin token with
/// `--admin-token`.
#[derive(Debug, Args)]
pub struct Connection {
    /// The base URL of the running server to call.
    #[arg(
        long,
        env = "SWITCHYARD_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true,
        help_heading = "Connection"
    )]
    pub server: String,
    /// The API token to call it with: its admin token, or one made with
    /// `POST /api/v1/tokens`.
    #[arg(
        long,
        env = "SWITCHYARD_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = "Connection"
    )]
    pub token: Option<String>,
}

/// How a command that calls a running server prints its answer.
#[derive(Debug, Args)]
pub struct Output {
    /// Print the API's JSON instead of a table or a summary.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A running server to call, and how to print its answers.
#[derive(Debug, Clone)]
pub struct Remote {
    pub server: String,
    pub token: Option<String>,
    pub json: bool,
}

impl Remote {
    pub fn new(connection: &Connection, output: Output) -> Remote {
        Remote {
            server: connection.server.clone(),
            token: connection.token.clone(),
            json: output.json,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum SourcesCommand {
    /// List sources.
    List,
    /// Create a source: tracking (default) or, with --function, a function source.
    Create {
        slug: String,
        /// Run this function on the source's webhooks.
        #[arg(long)]
        function: Option<String>,
        /// The function's settings, as a JSON object.
        #[arg(long)]
        settings: Option<String>,
        /// `ack` (default) or `function` (the function answers the sender).
        #[arg(long)]
        respond: Option<String>,
        /// The webhook catcher, which keeps raw requests for `sources captures`
        /// and `sources test`: `always` (the default: the 10 most recent) or
        /// `window` (only while a window is open: `sources capture-window`).
        #[arg(long, value_parser = ["always", "window"], requires = "function")]
        capture: Option<String>,
    },
    /// Change a function source: its function, settings, `respond` or `capture`.
    #[command(group(
        clap::ArgGroup::new("change")
            .args(["function", "settings", "respond", "capture"])
            .required(true)
            .multiple(true)
    ))]
    Update {
        slug: String,
        /// Run this function instead.
        #[arg(long)]
        function: Option<String>,
        /// Settings to change, as a JSON object merged into the current ones
        /// (`null` removes one).
        #[arg(long)]
        settings: Option<String>,
        /// `ack` or `function` (the function answers the sender).
        #[arg(long)]
        respond: Option<String>,
        /// `always`: capture every request (the 10 most recent are kept);
        /// `window`: only while a window is open (`sources capture-window`).
        #[arg(long, value_parser = ["always", "window"])]
        capture: Option<String>,
    },
    /// Open a function source's capture window (for `--capture window` sources).
    ///
    /// A source with `--capture window` keeps the requests it receives until
    /// the window closes; one with `always` keeps them anyway. A window
    /// cannot be closed early.
    CaptureWindow {
        slug: String,
        /// How long the window stays open, in minutes (1 to 60).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
        minutes: u64,
    },
    /// Run a source's function on a captured (or given) request, without side effects.
    Test {
        slug: String,
        /// A capture id (see `sources captures`).
        #[arg(long, required_unless_present = "payload")]
        capture: Option<i64>,
        /// A fixture file {"payload": {...}, "settings": {...}}.
        #[arg(long)]
        payload: Option<std::path::PathBuf>,
        /// Unsaved code to run instead of the deployed function.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// The webhook catcher: recent raw requests of a function source.
    Captures { slug: String },
    /// Batch items refused by validation.
    Rejections { slug: String },
    /// Objects set by a source function.
    Objects {
        slug: String,
        #[arg(long)]
        collection: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DestinationsCommand {
    /// List destinations with their backlog.
    List,
    /// Create a webhooks destination.
    Create {
        name: String,
        #[arg(long = "source", required = true)]
        sources: Vec<String>,
        #[arg(long = "url", required = true)]
        urls: Vec<String>,
        #[arg(long)]
        secret: Option<String>,
        /// `first-success` (default) or `all`.
        #[arg(long)]
        fanout: Option<String>,
    },
    /// Stop and remove a destination.
    Delete { name: String },
    /// Delivery attempts, newest first.
    Attempts {
        name: String,
        #[arg(short = 'n', default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Dead letters of a destination, oldest first (or of a function source with --source).
    List {
        #[arg(long, required_unless_present = "source", conflicts_with = "source")]
        destination: Option<String>,
        #[arg(long)]
        source: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(short = 'n', long, default_value_t = 100)]
        limit: usize,
        /// Only those with a greater id (destinations; the next page starts
        /// after the last id shown).
        #[arg(long, conflicts_with = "source")]
        after: Option<i64>,
    },
    /// Deliver dead letters again (all, or --id …).
    Replay {
        #[arg(long, required_unless_present = "source", conflicts_with = "source")]
        destination: Option<String>,
        #[arg(long)]
        source: Option<String>,
        #[arg(long = "id")]
        ids: Vec<i64>,
        /// Only those that failed at or after this time (Unix ms).
        #[arg(long)]
        since_ms: Option<i64>,
        /// Only those that failed before this time (Unix ms).
        #[arg(long)]
        until_ms: Option<i64>,
    },
    /// Delete dead letters of a destination for good (all, or --id …).
    Discard {
        #[arg(long)]
        destination: String,
        #[arg(long = "id")]
        ids: Vec<i64>,
    },
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Logs of a source function.
    #[arg(
        long,
        required_unless_present = "destination",
        conflicts_with = "destination"
    )]
    pub source: Option<String>,
    /// Logs of a destination function.
    #[arg(long)]
    pub destination: Option<String>,
    #[arg(short = 'n', default_value_t = 100)]
    pub limit: usize,
}

pub enum Call {
    Sources(SourcesCommand),
    Destinations(DestinationsCommand),
    DeadLetters(DeadLettersCommand),
    Logs(LogsArgs),
    DeleteUser(String),
    Tail(String),
    FollowLogs(LogsArgs),
    /// `POST /api/v1/functions` with this body.
    CreateFunction(Value),
    /// `PUT /api/v1/functions/{name}` with this body.
    UpdateFunction(String, Value),
    /// (method, path, body, the columns of `data` to print as a table;
    /// none: the JSON as it came)
    Raw(
        reqwest::Method,
        String,
        Option<Value>,
        &'static [&'static str],
    ),
}

/// A client of a running server's management API.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for `remote`; fails without a token.
    pub fn new(remote: &Remote) -> anyhow::Result<Client> {
        crate::install_tls();
        Ok(Client {
            base: remote.server.clone(),
            token: remote
                .token
                .clone()
                .ok_or_else(|| anyhow!("an API token is needed: --token or SWITCHYARD_TOKEN"))?,
            http: reqwest::Client::new(),
        })
    }

    /// Sends a request; a non-2xx answer is an [`ApiFailure`] with the server's message.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.exchange(method, path, body).await?;
        if !status.is_success() {
            return Err(failure(status, &value));
        }
        Ok(value)
    }

    /// [`Client::send`] without a body, where 404 (no such thing) is `None`.
    pub async fn send_optional(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<Option<Value>> {
        let (status, value) = self.exchange(method, path, None).await?;
        match status {
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => Ok(Some(value)),
            status => Err(failure(status, &value)),
        }
    }

    /// Sends a request and gives the answer whatever its status.
    pub async fn exchange(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base.trim_end_matches('/')))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }
}

/// The [`ApiFailure`] of a non-2xx answer, with the server's message.
pub fn failure(status: reqwest::StatusCode, answer: &Value) -> anyhow::Error {
    let message = answer["error"]["message"]
        .as_str()
        .unwrap_or("request failed");
    ApiFailure(format!("{status}: {message}")).into()
}

/// A refusal from the server (exit code 1), as opposed to a usage or connection error (2).
#[derive(Debug)]
pub struct ApiFailure(pub String);

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ApiFailure {}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.replace('\n', " "),
        other => other.to_string(),
    }
}

/// Prints rows of `data` as a table of `columns`.
fn table(data: &Value, columns: &[&str]) {
    let rows: Vec<Vec<String>> = data
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
                .collect()
        })
        .unwrap_or_default();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count().min(60))
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    // Every column but the last is cut at 60 characters; the last (a
    // message, an error) is shown whole.
    let last = columns.len().saturating_sub(1);
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == last {
                    c.clone()
                } else {
                    let c: String = c.chars().take(60).collect();
                    format!("{c:<w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!(
        "{}",
        line(columns.iter().map(|c| c.to_uppercase()).collect())
    );
    for r in rows {
        println!("{}", line(r));
    }
}

pub async fn run(remote: Remote, call: Call) -> anyhow::Result<()> {
    let client = Client::new(&remote)?;
    use reqwest::Method;
    let (value, columns): (Value, &[&str]) = match call {
        Call::Raw(method, path, body, columns) => {
            (client.send(method, &path, body).await?, columns)
        }
        Call::Sources(SourcesCommand::Create {
            slug,
            function,
            settings,
            respond,
            capture,
        }) => {
            let mut body = json!({ "slug": slug });
            if let Some(f) = function {
                body["kind"] = json!("function");
                body["function"] = json!(f);
                if let Some(s) = settings {
                    body["settings"] =
                        serde_json::from_str(&s).context("--settings must be a JSON object")?;
                }
                if let Some(r) = respond {
                    body["respond"] = json!(r);
                }
                if let Some(c) = capture {
                    body["capture"] = json!(c);
                }
            }
            let windowed = body["capture"] == "window";
            let v = client
                .send(Method::POST, "/api/v1/sources", Some(body))
                .await?;
            if !remote.json {
                match v["token"].as_str() {
                    Some(token) => {
                        println!("source {}: token {token} (shown once)", cell(&v["slug"]));
                        println!(
                            "webhook URL: {}/functions/{}/{token}",
                            client.base.trim_end_matches('/'),
                            cell(&v["slug"])
                        );
                        if windowed {
                            println!(
                                "it keeps requests only while a capture window is open: \
                                 `switchyard sources capture-window {}`",
                                cell(&v["slug"])
                            );
                        }
                    }
                    None => println!(
                        "source {}: write key {} (shown once)",
                        cell(&v["slug"]),
                        cell(&v["write_key"])
                    ),
                }
                return Ok(());
            }
            (v, &[])
        }
        Call::Sources(SourcesCommand::Update {
            slug,
            function,
            settings,
            respond,
            capture,
        }) => {
            let mut body = json!({});
            if let Some(f) = function {
                body["function"] = json!(f);
            }
            if let Some(s) = settings {
                body["settings"] =
                    serde_json::from_str(&s).context("--settings must be a JSON object")?;
            }
            if let Some(r) = respond {
                body["respond"] = json!(r);
            }
            if let Some(c) = capture {
                body["capture"] = json!(c);
            }
            let v = client
                .send(
                    Method::PATCH,
                    &format!("/api/v1/sources/{slug}"),
                    Some(body),
                )
                .await?;
            if !remote.json {
                println!(
                    "source {} changed: function {}, respond {}, capture {}",
                    cell(&v["slug"]),
                    cell(&v["function"]),
                    cell(&v["respond"]),
                    cell(&v["capture"])
                );
                return Ok(());
            }
            (v, &[])
        }
        Call::Sources(SourcesCommand::CaptureWindow { slug, minutes }) => {
            let v = client
                .send(
                    Method::POST,
                    &format!("/api/v1/sources/{slug}/capture"),
                    Some(json!({ "minutes": minutes })),
                )
                .await?;
            if !remote.json {
                let until = v["capturing_until_ms"]
                    .as_i64()
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map_or_else(
                        || cell(&v["capturing_until_ms"]),
                        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                    );
                println!("source {slug}: capture window open until {until}");
                if v["mode"] == "always" {
                    // The window is harmless then, but the user probably
                    // expected it to matter.
                    println!(
                        "(its capture is `always`: it keeps requests with or without a window; \
                         `sources update {slug} --capture window` keeps them only in windows)"
                    );
                }
                return Ok(());
            }
            (v, &[])
        }
        Call::CreateFunction(body) => {
            let v = client
                .send(Method::POST, "/api/v1/functions", Some(body))
                .await?;
            if !remote.json {
                let f = &v["function"];
                let name = cell(&f["name"]);
                let deployed = f["deployed_version"].as_u64().unwrap_or(0);
                let state = if deployed > 0 && f["deployed_version"] == v["version"] {
                    "deployed".to_string()
                } else {
                    format!("not deployed (`switchyard functions deploy {name}`)")
                };
                println!(
                    "function {name} created: a {} function, version {}, {state}",
                    cell(&f["kind"]),
                    cell(&v["version"])
                );
                return Ok(());
            }
            (v, &[])
        }
        Call::UpdateFunction(name, body) => {
            let path = format!("/api/v1/functions/{name}");
            // The server saves no new version of code and declarations equal
            // to the latest's, and answers with that version: only the
            // latest before tells whether anything was saved. A failure here
            // is left to the PUT to report.
            let before = match remote.json {
                true => None,
                false => client
                    .send_optional(Method::GET, &path)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|f| f["function"]["latest_version"].as_u64()),
            };
            let v = client.send(Method::PUT, &path, Some(body)).await?;
            if !remote.json {
                println!("{}", function_saved(&v, before));
                return Ok(());
            }
            (v, &[])
        }
        Call::Sources(SourcesCommand::Test {
            slug,
            capture,
            payload,
            file,
        }) => {
            let mut body = json!({});
            if let Some(id) = capture {
                body["capture_id"] = json!(id);
            }
            if let Some(p) = payload {
                let fixture: Value = serde_json::from_str(
                    &std::fs::read_to_string(&p)
                        .with_context(|| format!("cannot read {}", p.display()))?,
                )
                .with_context(|| format!("{} is not JSON", p.display()))?;
                body["payload"] = fixture.get("payload").cloned().unwrap_or(fixture.clone());
                if let Some(s) = fixture.get("settings") {
                    body["settings"] = s.clone();
                }
            }
            if let Some(f) = file {
                body["code"] = json!(std::fs::read_to_string(&f)
                    .with_context(|| format!("cannot read {}", f.display()))?);
            }
            let v = client
                .send(
                    Method::POST,
                    &format!("/api/v1/sources/{slug}/test"),
                    Some(body),
                )
                .await?;
            if !remote.json {
                println!(
                    "events ({}):",
                    v["events"].as_array().map_or(0, |a| a.len())
                );
                for e in v["events"].as_array().cloned().unwrap_or_default() {
                    println!("  {e}");
                }
                for l in v["logs"].as_array().cloned().unwrap_or_default() {
                    println!("  [{}] {}", cell(&l["level"]), cell(&l["message"]));
                }
                if !v["error"].is_null() {
                    println!(
                        "error: {}: {} (line {})",
                        cell(&v["error"]["name"]),
                        cell(&v["error"]["message"]),
                        cell(&v["error"]["line"])
                    );
                    return Err(ApiFailure("the function failed".into()).into());
                }
                return Ok(());
            }
            (v, &[])
        }
        Call::Destinations(DestinationsCommand::Create {
            name,
            sources,
            urls,
            secret,
            fanout,
        }) => {
            let mut body =
                json!({"name": name, "kind": "webhooks", "sources": sources, "urls": urls});
            if let Some(s) = secret {
                body["shared_secret"] = json!(s);
            }
            if let Some(f) = fanout {
                body["fanout"] = json!(f);
            }
            let v = client
                .send(Method::POST, "/api/v1/destinations", Some(body))
                .await?;
            if !remote.json {
                println!("destination {} created", cell(&v["name"]));
                return Ok(());
            }
            (v, &[])
        }
        Call::Destinations(DestinationsCommand::Delete { name }) => {
            let v = client
                .send(
                    Method::DELETE,
                    &format!("/api/v1/destinations/{name}"),
                    None,
                )
                .await?;
            if !remote.json {
                println!("destination {name} deleted");
                return Ok(());
            }
            (v, &[])
        }
        Call::Sources(SourcesCommand::List) => (
            client.send(Method::GET, "/api/v1/sources", None).await?,
            &["slug", "kind", "created_ms"],
        ),
        Call::Sources(SourcesCommand::Captures { slug }) => (
            client
                .send(
                    Method::GET,
                    &format!("/api/v1/sources/{slug}/captures"),
                    None,
                )
                .await?,
            &["id", "received_ms", "request"],
        ),
        Call::Sources(SourcesCommand::Rejections { slug }) => (
            client
                .send(
                    Method::GET,
                    &format!("/api/v1/sources/{slug}/rejections"),
                    None,
                )
                .await?,
            &["at_ms", "index", "field", "reason"],
        ),
        Call::Sources(SourcesCommand::Objects { slug, collection }) => {
            let q = collection
                .map(|c| format!("?collection={c}"))
                .unwrap_or_default();
            (
                client
                    .send(
                        Method::GET,
                        &format!("/api/v1/sources/{slug}/objects{q}"),
                        None,
                    )
                    .await?,
                &["collection", "id", "properties"],
            )
        }
        Call::Destinations(DestinationsCommand::List) => (
            client
                .send(Method::GET, "/api/v1/destinations", None)
                .await?,
            &["name", "sources", "backlog", "retries", "enabled"],
        ),
        Call::Destinations(DestinationsCommand::Attempts { name, limit }) => (
            client
                .send(
                    Method::GET,
                    &format!("/api/v1/destinations/{name}/attempts?limit={limit}"),
                    None,
                )
                .await?,
            &[
                "at_ms",
                "message_id",
                "url",
                "status",
                "latency_ms",
                "outcome",
                "error",
            ],
        ),
        Call::DeadLetters(DeadLettersCommand::List {
            destination,
            source,
            limit,
            after,
        }) => match (destination, source) {
            (Some(d), _) => {
                let mut path = format!("/api/v1/destinations/{d}/deadletters?limit={limit}");
                if let Some(a) = after {
                    path.push_str(&format!("&after={a}"));
                }
                let v = client.send(Method::GET, &path, None).await?;
                if !remote.json {
                    table(
                        &v["data"],
                        &["id", "message_ids", "attempts", "last_status", "last_error"],
                    );
                    let shown = v["data"].as_array().map_or(0, Vec::len);
                    match v["next_after"].as_i64() {
                        Some(next) => println!(
                            "{shown} shown of {} in all; next: --after {next}",
                            cell(&v["total"])
                        ),
                        None => println!("{shown} shown of {} in all", cell(&v["total"])),
                    }
                    return Ok(());
                }
                (v, &[])
            }
            (None, Some(s)) => (
                client
                    .send(
                        Method::GET,
                        &format!("/api/v1/sources/{s}/deadletters?limit={limit}"),
                        None,
                    )
                    .await?,
                &["id", "received_ms", "attempts", "last_error"],
            ),
            _ => unreachable!("clap requires one"),
        },
        Call::DeadLetters(DeadLettersCommand::Discard { destination, ids }) => {
            let body = if ids.is_empty() {
                json!({})
            } else {
                json!({ "ids": ids })
            };
            let v = client
                .send(
                    Method::DELETE,
                    &format!("/api/v1/destinations/{destination}/deadletters"),
                    Some(body),
                )
                .await?;
            if !remote.json {
                println!("discarded {}", cell(&v["discarded"]));
                return Ok(());
            }
            (v, &[])
        }
        Call::DeadLetters(DeadLettersCommand::Replay {
            destination,
            source,
            ids,
            since_ms,
            until_ms,
        }) => {
            if let (Some(d), true, None, None) = (&destination, ids.is_empty(), since_ms, until_ms)
            {
                return replay_all(&client, d, remote.json).await;
            }
            let mut body = if ids.is_empty() {
                json!({})
            } else {
                json!({ "ids": ids })
            };
            if destination.is_some() {
                if let Some(t) = since_ms {
                    body["since_ms"] = json!(t);
                }
                if let Some(t) = until_ms {
                    body["until_ms"] = json!(t);
                }
            }
            let path = match (destination, source) {
                (Some(d), _) => format!("/api/v1/destinations/{d}/deadletters/replay"),
                (None, Some(s)) => format!("/api/v1/sources/{s}/deadletters/replay"),
                _ => unreachable!("clap requires one"),
            };
            let v = client.send(Method::POST, &path, Some(body)).await?;
            if !remote.json {
                println!("replayed {}", cell(&v["replayed"]));
                return Ok(());
            }
            (v, &[])
        }
        Call::Logs(args) => {
            let path = match (&args.source, &args.destination) {
                (Some(s), _) => format!("/api/v1/sources/{s}/logs?limit={}", args.limit),
                (None, Some(d)) => format!("/api/v1/destinations/{d}/logs?limit={}", args.limit),
                _ => unreachable!("clap requires one"),
            };
            (
                client.send(Method::GET, &path, None).await?,
                &["at_ms", "level", "message"],
            )
        }
        Call::Tail(slug) => return tail(&client, &slug).await,
        Call::FollowLogs(args) => return follow_logs(&client, &args).await,
        Call::DeleteUser(user) => {
            let v = client
                .send(
                    Method::POST,
                    "/api/v1/deletions",
                    Some(json!({ "userId": user })),
                )
                .await?;
            if !remote.json {
                println!(
                    "deletion {}: {} source(s) notified, purged {}",
                    cell(&v["id"]),
                    v["notices"].as_array().map_or(0, |n| n.len()),
                    v["purged"]
                );
                return Ok(());
            }
            (v, &[])
        }
    };
    if remote.json || columns.is_empty() {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        table(&value["data"], columns);
    }
    Ok(())
}

/// One line on a version saved with `PUT /api/v1/functions/{name}`: its
/// number (or that the file was the latest version already, when `before`,
/// the latest version before, says so), and where it runs now or which
/// version still runs.
fn function_saved(v: &Value, before: Option<u64>) -> String {
    let f = &v["function"];
    let name = cell(&f["name"]);
    let saved = match (v["version"].as_u64(), before) {
        (Some(version), Some(before)) if version <= before => {
            format!("the file is version {version} already, nothing saved")
        }
        _ => format!("version {} saved", cell(&v["version"])),
    };
    let deployed = f["deployed_version"].as_u64().unwrap_or(0);
    // `deployed_to` is there only when this call deployed.
    let state = if v["deployed_to"].is_object() {
        let names = |kind: &str| -> Vec<String> {
            v["deployed_to"][kind]
                .as_array()
                .map(|a| a.iter().map(cell).collect())
                .unwrap_or_default()
        };
        let (sources, destinations) = (names("sources"), names("destinations"));
        let mut runs = Vec::new();
        if !sources.is_empty() {
            runs.push(format!("source(s) {}", sources.join(", ")));
        }
        if !destinations.is_empty() {
            runs.push(format!("destination(s) {}", destinations.join(", ")));
        }
        if runs.is_empty() {
            "deployed, nothing runs it yet".to_string()
        } else {
            format!("deployed, running on {}", runs.join(" and "))
        }
    } else if deployed > 0 && f["deployed_version"] == v["version"] {
        "it is the version deployed".to_string()
    } else if deployed > 0 {
        format!(
            "not deployed: version {deployed} still runs (`switchyard functions deploy {name}`)"
        )
    } else {
        format!("not deployed (`switchyard functions deploy {name}`)")
    };
    format!("function {name}: {saved}; {state}")
}

/// Prints each event of a source as it is stored (one JSON line per event).
async fn tail(client: &Client, slug: &str) -> anyhow::Result<()> {
    let mut resp = client
        .http
        .get(format!(
            "{}/api/v1/sources/{slug}/events/stream",
            client.base.trim_end_matches('/')
        ))
        .bearer_auth(&client.token)
        .send()
        .await
        .with_context(|| format!("cannot reach {}", client.base))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        return Err(ApiFailure(format!(
            "{status}: {}",
            v["error"]["message"].as_str().unwrap_or("request failed")
        ))
        .into());
    }
    let mut buffer = String::new();
    use std::io::Write;
    let mut out = std::io::stdout();
    while let Some(chunk) = resp.chunk().await.context("the stream broke")? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                writeln!(out, "{}", data.trim_start())?;
                out.flush()?;
            }
        }
    }
    // A live stream only ends from the server's side.
    Err(ApiFailure(format!(
        "the server ended the stream of {slug:?} (it is stopping, the token was revoked or the source deleted)"
    ))
    .into())
}

/// Prints function logs, then new lines as they come (polling once a second).
async fn follow_logs(client: &Client, args: &LogsArgs) -> anyhow::Result<()> {
    let base = match (&args.source, &args.destination) {
        (Some(s), _) => format!("/api/v1/sources/{s}/logs"),
        (None, Some(d)) => format!("/api/v1/destinations/{d}/logs"),
        _ => unreachable!("clap requires one"),
    };
    let mut seen: std::collections::HashSet<(i64, String)> = std::collections::HashSet::new();
    let mut first = true;
    loop {
        let limit = if first { args.limit } else { 1000 };
        let v = client
            .send(reqwest::Method::GET, &format!("{base}?limit={limit}"), None)
            .await?;
        let mut lines: Vec<Value> = v["data"].as_array().cloned().unwrap_or_default();
        lines.reverse();
        for l in lines {
            let key = (
                l["at_ms"].as_i64().unwrap_or(0),
                l["message"].as_str().unwrap_or("").to_string(),
            );
            if seen.insert(key) {
                println!(
                    "{} [{}] {}",
                    cell(&l["at_ms"]),
                    cell(&l["level"]),
                    cell(&l["message"])
                );
            }
        }
        first = false;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Replays every dead letter of a destination in chunks, with a progress bar
/// (on a terminal) — thousands of dead letters do not make one long silent call.
/// The ids are listed first: a dead letter that fails again during the run
/// comes back with a new id, and is not replayed twice by one command.
async fn replay_all(client: &Client, destination: &str, json_out: bool) -> anyhow::Result<()> {
    use reqwest::Method;
    const CHUNK: usize = 200;
    let mut ids: Vec<i64> = Vec::new();
    let mut after: Option<i64> = None;
    loop {
        let mut list = format!("/api/v1/destinations/{destination}/deadletters?limit=1000");
        if let Some(a) = after {
            list.push_str(&format!("&after={a}"));
        }
        let page = client.send(Method::GET, &list, None).await?;
        ids.extend(
            page["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["id"].as_i64()),
        );
        match page["next_after"].as_i64() {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let bar = indicatif::ProgressBar::new(ids.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} dead letters replayed ({eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut replayed = 0u64;
    for chunk in ids.chunks(CHUNK) {
        let v = client
            .send(
                Method::POST,
                &format!("/api/v1/destinations/{destination}/deadletters/replay"),
                Some(json!({ "ids": chunk })),
            )
            .await?;
        let n = v["replayed"].as_u64().unwrap_or(0);
        replayed += n;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if json_out {
        println!("{}", json!({ "replayed": replayed }));
    } else {
        println!("replayed {replayed}");
    }
    Ok(())
}
