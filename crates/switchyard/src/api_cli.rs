//! CLI commands that talk to a running server's management API.

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the running server is and how to authenticate: global options, so
/// that they go before the subcommand or after it. `serve`, `bench`,
/// `completions` and `functions test` refuse them (see `main.rs`): none of
/// them calls a running server, and `serve` sets its own admin token with
/// `--admin-token`.
///
/// Their environment variables are read by [`Connection::with_environment`]
/// rather than by clap: clap counts a value from the environment as given,
/// and writes `--server <SERVER> --token <TOKEN>` into the usage line of
/// every error of a shell that sets them.
#[derive(Debug, Args)]
pub struct Connection {
    /// The base URL of the running server to call (`HOST:PORT` alone means
    /// `http://HOST:PORT`) [env: SWITCHYARD_SERVER] [default:
    /// http://127.0.0.1:8080].
    #[arg(long, value_parser = server_url, global = true, help_heading = "Connection")]
    pub server: Option<String>,
    /// The API token to call it with: its admin token, or one made with
    /// `switchyard tokens create` [env: SWITCHYARD_TOKEN].
    #[arg(long, global = true, help_heading = "Connection")]
    pub token: Option<String>,
}

impl Connection {
    /// The options, with `SWITCHYARD_SERVER` and `SWITCHYARD_TOKEN` for
    /// those not given (an empty variable is not set, as for clap), and the
    /// default server; an invalid `SWITCHYARD_SERVER` is an error naming it.
    pub fn with_environment(self) -> Result<Connection, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let server = match (self.server, var("SWITCHYARD_SERVER")) {
            (Some(s), _) => s,
            (None, Some(s)) => server_url(&s)
                .map_err(|e| format!("invalid value {s:?} for SWITCHYARD_SERVER: {e}"))?,
            (None, None) => "http://127.0.0.1:8080".to_string(),
        };
        Ok(Connection {
            server: Some(server),
            token: self.token.or_else(|| var("SWITCHYARD_TOKEN")),
        })
    }
}

/// `--server`: a URL of scheme http or https, or a bare `HOST:PORT` (read as
/// `http://`), since that is what `serve --listen` takes and prints. Checked
/// here so that a typo is a usage error naming the flag, not the HTTP
/// client's "relative URL without a base" at the first call.
fn server_url(given: &str) -> Result<String, String> {
    let given = given.trim();
    let example = "give a URL such as http://127.0.0.1:8080 or https://router.example.com, \
                   or HOST:PORT for http://";
    let (url, bare) = match given.contains("://") {
        true => (given.to_string(), false),
        false => (format!("http://{given}"), true),
    };
    let parsed = reqwest::Url::parse(&url).map_err(|e| format!("not a URL ({e}): {example}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme must be http or https, not {:?}: {example}",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("no host: {example}"));
    }
    if bare && (parsed.path() != "/" || !parsed.username().is_empty()) {
        return Err(format!("not HOST:PORT nor a URL: {example}"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("a server URL has no query or fragment: {example}"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// How the commands print: global, so that `--json` goes before the
/// subcommand or after it. Every command that calls a server gives the API's
/// JSON with it (`tail` and `functions logs --follow`: one object per line), and
/// `functions test` its report as JSON; `serve`, `bench` and `completions`
/// print no JSON and refuse it (see `main.rs`).
#[derive(Debug, Args)]
pub struct Output {
    /// Print JSON instead of tables and summary lines: the API's answer
    /// (`tail` and `functions logs --follow`: one object per line; `functions test`:
    /// its report).
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
    /// `connection` as [`Connection::with_environment`] made it.
    pub fn new(connection: &Connection, json: bool) -> Remote {
        Remote {
            server: connection
                .server
                .clone()
                .unwrap_or_else(|| "http://127.0.0.1:8080".to_string()),
            token: connection.token.clone(),
            json,
        }
    }
}

/// A management API path: `/api/v1`, then `segments`, each percent-encoded
/// (a slug or a function name may hold `/`, `?`, `#` or a space, and must
/// stay one segment), then the `query` pairs that have a value, encoded
/// alike. Every path the CLI calls is built here.
pub fn api_path(segments: &[&str], query: &[(&str, Option<String>)]) -> String {
    let mut path = String::from("/api/v1");
    for segment in segments {
        path.push('/');
        path.push_str(&percent_encoded(segment));
    }
    let mut separator = '?';
    for (name, value) in query {
        if let Some(value) = value {
            path.push(separator);
            separator = '&';
            path.push_str(&percent_encoded(name));
            path.push('=');
            path.push_str(&percent_encoded(value));
        }
    }
    path
}

/// Every byte but RFC 3986's unreserved characters as `%XX`: safe in a path
/// segment and in a query value alike.
fn percent_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[derive(Debug, Subcommand)]
pub enum SourcesCommand {
    /// List sources, with the function and capture mode of function sources.
    List,
    /// One source: its kind, function, `respond` and capture mode.
    Show { slug: String },
    /// Create a source: tracking (default) or, with --function, a function source.
    Create {
        slug: String,
        /// Run this function on the source's webhooks.
        #[arg(long)]
        function: Option<String>,
        /// The function's settings, as a JSON object (function sources only).
        #[arg(long, requires = "function")]
        settings: Option<String>,
        /// `ack` (default) or `function` (the function answers the sender;
        /// function sources only).
        #[arg(long, requires = "function")]
        respond: Option<String>,
        /// The webhook catcher, which keeps raw requests for `sources captures`
        /// and `sources test`: `always` (the default: the 10 most recent) or
        /// `window` (only while a window is open: `sources capture-window`).
        #[arg(long, value_parser = ["always", "window"], requires = "function")]
        capture: Option<String>,
        /// A tracking source's write key, instead of a generated one (the
        /// key an app's SDK is already configured with, say).
        #[arg(long, conflicts_with = "function")]
        write_key: Option<String>,
        /// A function source's token, instead of a generated one (not
        /// `--token`, which is the API token this command uses).
        #[arg(long, requires = "function")]
        source_token: Option<String>,
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
    /// Delete a source: its write key or token stops working at once; the
    /// events it stored are still delivered.
    Delete { slug: String },
    /// Give a source a new write key (tracking) or token (function source);
    /// the old one stops working at once.
    ///
    /// Generated and printed once, or the one given with --write-key
    /// (tracking sources) or --source-token (function sources).
    #[command(group(clap::ArgGroup::new("given").args(["write_key", "source_token"])))]
    Rotate {
        slug: String,
        /// Set this write key instead of a generated one (tracking sources).
        #[arg(long, conflicts_with = "source_token")]
        write_key: Option<String>,
        /// Set this token instead of a generated one (function sources; not
        /// `--token`, which is the API token this command uses).
        #[arg(long)]
        source_token: Option<String>,
        /// Only tell whether the --write-key or --source-token given differs
        /// from the current one; nothing changes.
        #[arg(long, requires = "given")]
        dry_run: bool,
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
    /// Batch items refused by validation, newest first.
    Rejections {
        slug: String,
        /// How many (1 to 1000).
        #[arg(short = 'n', long = "limit", default_value_t = 100)]
        limit: usize,
        /// Only older ones: the `--before` a full page ends with.
        #[arg(long)]
        before: Option<i64>,
    },
    /// Objects set by a source function, by collection, then id.
    Objects {
        slug: String,
        #[arg(long)]
        collection: Option<String>,
        /// Only the object of this id.
        #[arg(long)]
        id: Option<String>,
        /// How many (1 to 1000).
        #[arg(short = 'n', long = "limit", default_value_t = 100)]
        limit: usize,
        /// Only those after this one: the `--after` a full page ends with.
        #[arg(long)]
        after: Option<String>,
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
    /// Stop and remove a destination (its cursor, retries, dead letters and
    /// attempts go with it: `disable` keeps them).
    Delete { name: String },
    /// Start delivering again to a destination that was disabled, from where
    /// it stopped.
    Enable { name: String },
    /// Stop delivering to a destination and keep its place: events wait for
    /// `enable`.
    Disable { name: String },
    /// The URLs a destination disabled after they answered `410 Gone`.
    Urls {
        #[command(subcommand)]
        command: UrlsCommand,
    },
    /// Delivery attempts, newest first.
    Attempts {
        name: String,
        /// How many (1 to 1000).
        #[arg(short = 'n', long = "limit", default_value_t = 50)]
        limit: usize,
        /// Only older ones: the `--before` a full page ends with.
        #[arg(long)]
        before: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UrlsCommand {
    /// Deliver to a destination's disabled URLs again (all, or --url).
    Enable {
        name: String,
        /// Only this URL.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// List the API tokens (the admin token is not one of them).
    List,
    /// Make an API token; it is printed once.
    Create {
        /// What it is for (shown by `tokens list`).
        name: String,
        /// It may only read (`GET`).
        #[arg(long)]
        read_only: bool,
    },
    /// Revoke an API token: it stops working at once, open streams included.
    Revoke {
        /// Its id (see `tokens list`).
        id: i64,
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
        /// Only those with a greater id (destinations, oldest first: the
        /// `--after` a full page ends with).
        #[arg(long, conflicts_with = "source")]
        after: Option<i64>,
        /// Only those with a smaller id (sources, newest first: the
        /// `--before` a full page ends with).
        #[arg(long, conflicts_with = "destination")]
        before: Option<i64>,
    },
    /// Deliver dead letters again (all, or --id …; an --id that matches no
    /// dead letter is an error, exit 1, naming it).
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
    /// Delete dead letters of a destination for good: those of --id …, or
    /// every one with --all (an --id that matches no dead letter is an
    /// error, exit 1, naming it).
    #[command(group(
        clap::ArgGroup::new("which")
            .args(["ids", "all"])
            .required(true)
    ))]
    Discard {
        #[arg(long)]
        destination: String,
        /// A dead letter's id (see `deadletters list`); repeat for more.
        #[arg(long = "id")]
        ids: Vec<i64>,
        /// Every dead letter of the destination.
        #[arg(long)]
        all: bool,
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
    /// How many (1 to 1000), newest first.
    #[arg(short = 'n', long = "limit", default_value_t = 100)]
    pub limit: usize,
    /// Only older lines: the `--before` a full page ends with (not with
    /// `functions logs --follow`).
    #[arg(long)]
    pub before: Option<i64>,
}

pub enum Call {
    Sources(SourcesCommand),
    Tokens(TokensCommand),
    Destinations(DestinationsCommand),
    DeadLetters(DeadLettersCommand),
    Logs(LogsArgs),
    DeleteUser(String),
    Tail(String),
    /// `functions list`.
    ListFunctions,
    FollowLogs(LogsArgs),
    /// `POST /api/v1/functions` with this body.
    CreateFunction(Value),
    /// `PUT /api/v1/functions/{name}` with this body.
    UpdateFunction(String, Value),
    /// `POST /api/v1/functions/{name}/deploy` of this version (the latest
    /// without one).
    DeployFunction(String, Option<u32>),
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
        // A list of names (a destination's sources, a dead letter's
        // message ids) reads as one; JSON's brackets and quotes are noise.
        Value::Array(items) if items.iter().all(|i| !i.is_array() && !i.is_object()) => {
            match items.is_empty() {
                true => "-".into(),
                false => items.iter().map(cell).collect::<Vec<_>>().join(", "),
            }
        }
        other => other.to_string(),
    }
}

/// The columns that hold Unix milliseconds: tables show them as RFC 3339
/// UTC times under their name without `_ms`; `--json` keeps the numbers.
/// Named one by one: `latency_ms` is a duration.
const TIME_COLUMNS: &[&str] = &["created_ms", "at_ms", "received_ms", "updated_ms"];

/// Unix milliseconds as an RFC 3339 UTC time; anything else as [`cell`].
fn time_cell(v: &Value) -> String {
    v.as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || cell(v),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
}

/// Prints rows of `data` as a table of `columns`.
fn table(data: &Value, columns: &[&str]) {
    let rows: Vec<Vec<String>> = data
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    columns
                        .iter()
                        .map(|c| match TIME_COLUMNS.contains(c) {
                            true => time_cell(&r[*c]),
                            false => cell(&r[*c]),
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    let headers: Vec<String> = columns
        .iter()
        .map(|c| match TIME_COLUMNS.contains(c) {
            true => c.trim_end_matches("_ms").to_uppercase(),
            false => c.to_uppercase(),
        })
        .collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].chars().count().min(60))
                .max()
                .unwrap_or(0)
                .max(h.len())
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
    println!("{}", line(headers));
    for r in rows {
        println!("{}", line(r));
    }
}

/// The body of a function source's `--settings`.
fn settings_object(text: &str) -> anyhow::Result<Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(anyhow!("--settings must be a JSON object")),
        Err(e) => Err(anyhow!("--settings is not JSON: {e}")),
    }
}

/// What a command shows once its calls are made. [`show`] prints it, in
/// one place: the API's answer as JSON with `--json`, else its [`Text`].
pub struct Shown {
    /// The API's answer: what `--json` prints.
    answer: Value,
    text: Text,
    /// A failure to report after the output (the function failed, an id
    /// matched no dead letter): the exit code says it, whatever the format.
    failure: Option<anyhow::Error>,
}

/// How a command's answer reads without `--json`.
enum Text {
    /// Lines saying what was done.
    Lines(Vec<String>),
    /// The answer's `data` as a table of these columns, then where the
    /// next page starts when it is a full page.
    Page(&'static [&'static str]),
    /// These rows as a table of these columns, then these lines.
    Table(Value, &'static [&'static str], Vec<String>),
    /// Printed already as it came, JSON included: live streams, a replay
    /// with its progress bar.
    Printed,
}

impl Shown {
    fn lines(answer: Value, lines: Vec<String>) -> Shown {
        Shown {
            answer,
            text: Text::Lines(lines),
            failure: None,
        }
    }

    fn line(answer: Value, line: String) -> Shown {
        Shown::lines(answer, vec![line])
    }

    fn page(answer: Value, columns: &'static [&'static str]) -> Shown {
        Shown {
            answer,
            text: Text::Page(columns),
            failure: None,
        }
    }

    fn table(
        answer: Value,
        rows: Value,
        columns: &'static [&'static str],
        lines: Vec<String>,
    ) -> Shown {
        Shown {
            answer,
            text: Text::Table(rows, columns, lines),
            failure: None,
        }
    }

    fn printed() -> Shown {
        Shown {
            answer: Value::Null,
            text: Text::Printed,
            failure: None,
        }
    }

    fn failing(mut self, failure: Option<anyhow::Error>) -> Shown {
        self.failure = failure;
        self
    }
}

/// Prints what a command shows (see [`Shown`]) and gives back its failure.
fn show(shown: Shown, json: bool) -> anyhow::Result<()> {
    match shown.text {
        Text::Printed => {}
        _ if json => println!("{}", serde_json::to_string_pretty(&shown.answer)?),
        Text::Lines(lines) => {
            for line in lines {
                println!("{line}");
            }
        }
        Text::Page(columns) => {
            table(&shown.answer["data"], columns);
            // A full page says where the next one starts: the list goes on.
            if let Some(next) = shown.answer["next_before"].as_i64() {
                println!("more: --before {next}");
            } else if let Some(next) = shown.answer["next_after"].as_str() {
                println!("more: --after {next}");
            }
        }
        Text::Table(rows, columns, lines) => {
            table(&rows, columns);
            for line in lines {
                println!("{line}");
            }
        }
    }
    shown.failure.map_or(Ok(()), Err)
}

pub async fn run(remote: Remote, call: Call) -> anyhow::Result<()> {
    let client = Client::new(&remote)?;
    let shown = answer(&client, &remote, call).await?;
    show(shown, remote.json)
}

/// Makes the calls of a command and says what it shows.
async fn answer(client: &Client, remote: &Remote, call: Call) -> anyhow::Result<Shown> {
    use reqwest::Method;
    Ok(match call {
        Call::Sources(SourcesCommand::Create {
            slug,
            function,
            settings,
            respond,
            capture,
            write_key,
            source_token,
        }) => {
            let mut body = json!({ "slug": slug });
            if let Some(k) = write_key {
                body["write_key"] = json!(k);
            }
            if let Some(t) = source_token {
                body["token"] = json!(t);
            }
            // clap refuses --settings, --respond and --capture without
            // --function: a tracking source has none of them.
            if let Some(f) = function {
                body["kind"] = json!("function");
                body["function"] = json!(f);
                if let Some(s) = settings {
                    body["settings"] = settings_object(&s)?;
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
                .send(Method::POST, &api_path(&["sources"], &[]), Some(body))
                .await?;
            let lines = match v["token"].as_str() {
                Some(token) => {
                    let mut lines = vec![
                        format!("source {}: token {token} (shown once)", cell(&v["slug"])),
                        format!("webhook URL: {}", webhook_url(client, &v["slug"], token)),
                    ];
                    if windowed {
                        lines.push(format!(
                            "it keeps requests only while a capture window is open: \
                             `switchyard sources capture-window {}`",
                            cell(&v["slug"])
                        ));
                    }
                    lines
                }
                None => vec![format!(
                    "source {}: write key {} (shown once)",
                    cell(&v["slug"]),
                    cell(&v["write_key"])
                )],
            };
            Shown::lines(v, lines)
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
                body["settings"] = settings_object(&s)?;
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
                    &api_path(&["sources", &slug], &[]),
                    Some(body),
                )
                .await?;
            let line = format!(
                "source {} changed: function {}, respond {}, capture {}",
                cell(&v["slug"]),
                cell(&v["function"]),
                cell(&v["respond"]),
                cell(&v["capture"])
            );
            Shown::line(v, line)
        }
        Call::Sources(SourcesCommand::Show { slug }) => {
            let v = client
                .send(Method::GET, &api_path(&["sources", &slug], &[]), None)
                .await?;
            let rows = json!([source_row(&v, &v["function"])]);
            Shown::table(v, rows, SOURCE_COLUMNS, Vec::new())
        }
        Call::Sources(SourcesCommand::List) => {
            let v = client
                .send(Method::GET, &api_path(&["sources"], &[]), None)
                .await?;
            let rows: Vec<Value> = v["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| source_row(s, &s["function"]))
                .collect();
            Shown::table(v, Value::Array(rows), SOURCE_COLUMNS, Vec::new())
        }
        Call::Sources(SourcesCommand::Delete { slug }) => {
            let v = client
                .send(Method::DELETE, &api_path(&["sources", &slug], &[]), None)
                .await?;
            Shown::line(
                v,
                format!("source {slug} deleted (its stored events are still delivered)"),
            )
        }
        Call::Sources(SourcesCommand::Rotate {
            slug,
            write_key,
            source_token,
            dry_run,
        }) => {
            let mut body = json!({});
            if let Some(k) = &write_key {
                body["write_key"] = json!(k);
            }
            if let Some(t) = &source_token {
                body["token"] = json!(t);
            }
            if dry_run {
                body["dry_run"] = json!(true);
            }
            let v = client
                .send(
                    Method::POST,
                    &api_path(&["sources", &slug, "rotate"], &[]),
                    Some(body),
                )
                .await?;
            let differs = v["changed"].as_bool().unwrap_or(true);
            let lines = if dry_run {
                let what = if write_key.is_some() {
                    "write key"
                } else {
                    "token"
                };
                vec![match differs {
                    true => {
                        format!(
                            "source {slug}: the {what} given differs from its own; nothing changed"
                        )
                    }
                    false => {
                        format!(
                            "source {slug}: the {what} given is its own already; nothing changed"
                        )
                    }
                }]
            } else if source_token.is_some() {
                vec![match differs {
                    true => format!(
                        "source {slug}: token set to the one given (the old one stops working now)"
                    ),
                    false => format!("source {slug}: the token given was its own already"),
                }]
            } else if let Some(token) = v["token"].as_str().filter(|t| *t != "********") {
                vec![
                    format!("source {slug}: new token {token} (shown once; the old one stops working now)"),
                    format!("webhook URL: {}", webhook_url(client, &v["slug"], token)),
                ]
            } else if write_key.is_some() {
                vec![match differs {
                    true => format!("source {slug}: write key set to the one given (the old one stops working now)"),
                    false => format!("source {slug}: the write key given was its own already"),
                }]
            } else {
                vec![format!(
                    "source {slug}: new write key {} (shown once; the old one stops working now)",
                    cell(&v["write_key"])
                )]
            };
            Shown::lines(v, lines)
        }
        Call::Sources(SourcesCommand::CaptureWindow { slug, minutes }) => {
            let v = client
                .send(
                    Method::POST,
                    &api_path(&["sources", &slug, "capture"], &[]),
                    Some(json!({ "minutes": minutes })),
                )
                .await?;
            let mut lines = vec![format!(
                "source {slug}: capture window open until {}",
                time_cell(&v["capturing_until_ms"])
            )];
            if v["mode"] == "always" {
                // The window is harmless then, but the user probably
                // expected it to matter.
                lines.push(format!(
                    "(its capture is `always`: it keeps requests with or without a window; \
                     `sources update {slug} --capture window` keeps them only in windows)"
                ));
            }
            Shown::lines(v, lines)
        }
        Call::CreateFunction(body) => {
            let v = client
                .send(Method::POST, &api_path(&["functions"], &[]), Some(body))
                .await?;
            let f = &v["function"];
            let name = cell(&f["name"]);
            let deployed = f["deployed_version"].as_u64().unwrap_or(0);
            let state = if deployed > 0 && f["deployed_version"] == v["version"] {
                "deployed".to_string()
            } else {
                format!("not deployed (`switchyard functions deploy {name}`)")
            };
            let line = format!(
                "function {name} created: a {} function, version {}, {state}",
                cell(&f["kind"]),
                cell(&v["version"])
            );
            Shown::line(v, line)
        }
        Call::UpdateFunction(name, body) => {
            let path = api_path(&["functions", &name], &[]);
            // The server saves no new version of code and declarations equal
            // to the latest's, and answers with that version: only the
            // latest before tells whether anything was saved. A failure here
            // is left to the PUT to report; `--json` has no use for it.
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
            let line = function_saved(&v, before);
            Shown::line(v, line)
        }
        Call::DeployFunction(name, version) => {
            let v = client
                .send(
                    Method::POST,
                    &api_path(&["functions", &name, "deploy"], &[]),
                    Some(json!({ "version": version })),
                )
                .await?;
            let line = format!(
                "function {}: version {} {}",
                cell(&v["name"]),
                cell(&v["deployed_version"]),
                deployed_to(&v["deployed_to"])
            );
            Shown::line(v, line)
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
                    &api_path(&["sources", &slug, "test"], &[]),
                    Some(body),
                )
                .await?;
            let lines = test_lines(&v);
            // The exit code says whether the function failed, whatever the
            // output's format: scripts check it with and without --json.
            let failure =
                (!v["error"].is_null()).then(|| ApiFailure("the function failed".into()).into());
            Shown::lines(v, lines).failing(failure)
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
                .send(Method::POST, &api_path(&["destinations"], &[]), Some(body))
                .await?;
            let line = format!("destination {} created", cell(&v["name"]));
            Shown::line(v, line)
        }
        Call::Destinations(DestinationsCommand::Delete { name }) => {
            let v = client
                .send(
                    Method::DELETE,
                    &api_path(&["destinations", &name], &[]),
                    None,
                )
                .await?;
            Shown::line(v, format!("destination {name} deleted"))
        }
        Call::Destinations(DestinationsCommand::Enable { name }) => {
            set_enabled(client, &name, true).await?
        }
        Call::Destinations(DestinationsCommand::Disable { name }) => {
            set_enabled(client, &name, false).await?
        }
        Call::Destinations(DestinationsCommand::Urls {
            command: UrlsCommand::Enable { name, url },
        }) => {
            let body = url.as_ref().map(|u| json!({ "url": u }));
            let v = client
                .send(
                    Method::POST,
                    &api_path(&["destinations", &name, "urls", "enable"], &[]),
                    body,
                )
                .await?;
            let still: Vec<String> = v["disabled"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| cell(&d["url"]))
                .collect();
            let enabled = match &url {
                Some(u) => format!("destination {name}: {u} enabled"),
                None => format!("destination {name}: its URLs enabled"),
            };
            let line = match still.is_empty() {
                true => enabled,
                false => format!("{enabled}; still disabled: {}", still.join(", ")),
            };
            Shown::line(v, line)
        }
        Call::Sources(SourcesCommand::Captures { slug }) => Shown::page(
            client
                .send(
                    Method::GET,
                    &api_path(&["sources", &slug, "captures"], &[]),
                    None,
                )
                .await?,
            &["id", "received_ms", "request"],
        ),
        Call::Sources(SourcesCommand::Rejections {
            slug,
            limit,
            before,
        }) => Shown::page(
            client
                .send(
                    Method::GET,
                    &api_path(
                        &["sources", &slug, "rejections"],
                        &[
                            ("limit", Some(limit.to_string())),
                            ("before", before.map(|b| b.to_string())),
                        ],
                    ),
                    None,
                )
                .await?,
            &["at_ms", "index", "field", "reason"],
        ),
        Call::Sources(SourcesCommand::Objects {
            slug,
            collection,
            id,
            limit,
            after,
        }) => Shown::page(
            client
                .send(
                    Method::GET,
                    &api_path(
                        &["sources", &slug, "objects"],
                        &[
                            ("collection", collection),
                            ("id", id),
                            ("limit", Some(limit.to_string())),
                            ("after", after),
                        ],
                    ),
                    None,
                )
                .await?,
            &["collection", "id", "updated_ms", "properties"],
        ),
        Call::Destinations(DestinationsCommand::List) => Shown::page(
            client
                .send(Method::GET, &api_path(&["destinations"], &[]), None)
                .await?,
            &["name", "sources", "backlog", "retries", "enabled"],
        ),
        Call::Destinations(DestinationsCommand::Attempts {
            name,
            limit,
            before,
        }) => Shown::page(
            client
                .send(
                    Method::GET,
                    &api_path(
                        &["destinations", &name, "attempts"],
                        &[
                            ("limit", Some(limit.to_string())),
                            ("before", before.map(|b| b.to_string())),
                        ],
                    ),
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
        Call::Tokens(TokensCommand::List) => Shown::page(
            client
                .send(Method::GET, &api_path(&["tokens"], &[]), None)
                .await?,
            &["id", "name", "read_only", "created_ms"],
        ),
        Call::Tokens(TokensCommand::Create { name, read_only }) => {
            let v = client
                .send(
                    Method::POST,
                    &api_path(&["tokens"], &[]),
                    Some(json!({ "name": name, "read_only": read_only })),
                )
                .await?;
            let line = format!(
                "{} token {} ({}): {} (shown once)",
                if read_only { "read-only" } else { "API" },
                cell(&v["id"]),
                cell(&v["name"]),
                cell(&v["token"])
            );
            Shown::line(v, line)
        }
        Call::Tokens(TokensCommand::Revoke { id }) => {
            let v = client
                .send(
                    Method::DELETE,
                    &api_path(&["tokens", &id.to_string()], &[]),
                    None,
                )
                .await?;
            Shown::line(v, format!("token {id} revoked"))
        }
        Call::DeadLetters(DeadLettersCommand::List {
            destination,
            source,
            limit,
            after,
            before,
        }) => {
            let (path, columns): (String, &'static [&'static str]) = match (destination, source) {
                (Some(d), _) => (
                    api_path(
                        &["destinations", &d, "deadletters"],
                        &[
                            ("limit", Some(limit.to_string())),
                            ("after", after.map(|a| a.to_string())),
                        ],
                    ),
                    &["id", "message_ids", "attempts", "last_status", "last_error"],
                ),
                (None, Some(s)) => (
                    api_path(
                        &["sources", &s, "deadletters"],
                        &[
                            ("limit", Some(limit.to_string())),
                            ("before", before.map(|b| b.to_string())),
                        ],
                    ),
                    &["id", "received_ms", "attempts", "last_error"],
                ),
                _ => unreachable!("clap requires one"),
            };
            let v = client.send(Method::GET, &path, None).await?;
            let rows = v["data"].clone();
            let summary = dead_letters_summary(&v);
            Shown::table(v, rows, columns, vec![summary])
        }
        Call::DeadLetters(DeadLettersCommand::Discard {
            destination,
            ids,
            all,
        }) => {
            // An empty body discards every one: sent only with --all, which
            // clap requires when no --id is given.
            let body = match all {
                true => json!({}),
                false => json!({ "ids": ids }),
            };
            let v = client
                .send(
                    Method::DELETE,
                    &api_path(&["destinations", &destination, "deadletters"], &[]),
                    Some(body),
                )
                .await?;
            let failure = ids_not_found(
                &v,
                &ids,
                "discarded",
                &format!("destination {destination:?}: unknown, or replayed or discarded already"),
            );
            let line = format!("discarded {}", cell(&v["discarded"]));
            Shown::line(v, line).failing(failure)
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
                replay_all(client, d, remote.json).await?;
                return Ok(Shown::printed());
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
            let (path, missing) = match (destination, source) {
                (Some(d), _) => (
                    api_path(&["destinations", &d, "deadletters", "replay"], &[]),
                    format!("destination {d:?}: unknown, or replayed or discarded already"),
                ),
                (None, Some(s)) => (
                    api_path(&["sources", &s, "deadletters", "replay"], &[]),
                    format!("source {s:?}: unknown, or replayed already"),
                ),
                _ => unreachable!("clap requires one"),
            };
            let v = client.send(Method::POST, &path, Some(body)).await?;
            let failure = ids_not_found(&v, &ids, "replayed", &missing);
            let line = format!("replayed {}", cell(&v["replayed"]));
            Shown::line(v, line).failing(failure)
        }
        Call::Logs(args) => Shown::page(
            client
                .send(
                    Method::GET,
                    &logs_page_path(
                        &args,
                        &[
                            ("limit", Some(args.limit.to_string())),
                            ("before", args.before.map(|b| b.to_string())),
                        ],
                    ),
                    None,
                )
                .await?,
            &["at_ms", "level", "message"],
        ),
        Call::Tail(slug) => {
            tail(client, &slug, remote.json).await?;
            Shown::printed()
        }
        Call::ListFunctions => {
            let v = client
                .send(Method::GET, &api_path(&["functions"], &[]), None)
                .await?;
            let mut rows = v["data"].clone();
            // Versions count from 1: 0 is the API's "never deployed".
            for f in rows.as_array_mut().into_iter().flatten() {
                if f["deployed_version"] == 0 {
                    f["deployed_version"] = Value::Null;
                }
            }
            Shown::table(
                v,
                rows,
                &["name", "kind", "deployed_version", "latest_version"],
                Vec::new(),
            )
        }
        Call::FollowLogs(args) => {
            follow_logs(client, &args, remote.json).await?;
            Shown::printed()
        }
        Call::DeleteUser(user) => {
            let v = client
                .send(
                    Method::POST,
                    &api_path(&["deletions"], &[]),
                    Some(json!({ "userId": user })),
                )
                .await?;
            let line = format!(
                "deletion {}: {} source(s) notified, purged {}",
                cell(&v["id"]),
                v["notices"].as_array().map_or(0, |n| n.len()),
                v["purged"]
            );
            Shown::line(v, line)
        }
    })
}

/// The lines of `sources test`: the messages and objects the function
/// emitted, its logs and its error.
fn test_lines(v: &Value) -> Vec<String> {
    let mut lines = vec![format!(
        "events ({}):",
        v["events"].as_array().map_or(0, |a| a.len())
    )];
    for e in v["events"].as_array().into_iter().flatten() {
        lines.push(format!("  {e}"));
    }
    // As `functions test` prints them offline.
    let objects = v["objects"].as_array().cloned().unwrap_or_default();
    if !objects.is_empty() {
        lines.push(format!("objects ({}):", objects.len()));
        for o in &objects {
            lines.push(format!(
                "  {}/{} {}",
                cell(&o["collection"]),
                cell(&o["id"]),
                o["properties"]
            ));
        }
    }
    for l in v["logs"].as_array().into_iter().flatten() {
        lines.push(format!("  [{}] {}", cell(&l["level"]), cell(&l["message"])));
    }
    if !v["error"].is_null() {
        lines.push(format!(
            "error: {}: {} (line {})",
            cell(&v["error"]["name"]),
            cell(&v["error"]["message"]),
            cell(&v["error"]["line"])
        ));
    }
    lines
}

/// The columns of `sources list` and `sources show`.
const SOURCE_COLUMNS: &[&str] = &[
    "slug",
    "kind",
    "function",
    "respond",
    "capture",
    "created_ms",
];

/// A row of [`SOURCE_COLUMNS`]: `source` as the API gives it, with its
/// `function` (name, `respond`, `capture`). The function's `version` is
/// left out: it is a digest of its code, not the number `functions list`
/// shows.
fn source_row(source: &Value, function: &Value) -> Value {
    json!({
        "slug": source["slug"],
        "kind": source["kind"],
        "function": function["name"],
        "respond": function["respond"],
        "capture": function["capture"],
        "created_ms": source["created_ms"],
    })
}

/// The last line of a dead-letter listing: how many it shows, how many
/// there are in all, and where the next page starts.
fn dead_letters_summary(v: &Value) -> String {
    let shown = v["data"].as_array().map_or(0, Vec::len);
    let total = cell(&v["total"]);
    match (v["next_after"].as_i64(), v["next_before"].as_i64()) {
        (Some(next), _) => format!("{shown} shown of {total} in all; next: --after {next}"),
        (None, Some(next)) => format!("{shown} shown of {total} in all; next: --before {next}"),
        (None, None) => format!("{shown} shown of {total} in all"),
    }
}

/// An error when `asked`, the ids given with --id, named dead letters that
/// are not there: the others were replayed or discarded (the answer said
/// how many), but a mistyped id must not pass as done. `counted` is the
/// answer's count of those taken; `whose` says where none was found and why.
fn ids_not_found(v: &Value, asked: &[i64], counted: &str, whose: &str) -> Option<anyhow::Error> {
    let message = match v["not_found"].as_array() {
        Some(missing) => {
            let ids: Vec<String> = missing.iter().map(cell).collect();
            match ids.len() {
                0 => return None,
                1 => format!("no dead letter {} for {whose}", ids[0]),
                _ => format!("no dead letters {} for {whose}", ids.join(", ")),
            }
        }
        // A server that does not name them still counts those it took.
        None => {
            let mut distinct = asked.to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            let taken = v[counted].as_u64().unwrap_or(0) as usize;
            match distinct.len().saturating_sub(taken) {
                0 => return None,
                n => format!("{n} of the ids given matched no dead letter for {whose}"),
            }
        }
    };
    Some(ApiFailure(message).into())
}

/// A function source's webhook URL, token included.
fn webhook_url(client: &Client, slug: &Value, token: &str) -> String {
    format!(
        "{}/functions/{}/{}",
        client.base.trim_end_matches('/'),
        percent_encoded(&cell(slug)),
        percent_encoded(token)
    )
}

/// A page of the logs of `args`' source or destination (`limit`, `before`).
fn logs_page_path(args: &LogsArgs, query: &[(&str, Option<String>)]) -> String {
    match (&args.source, &args.destination) {
        (Some(s), _) => api_path(&["sources", s, "logs"], query),
        (None, Some(d)) => api_path(&["destinations", d, "logs"], query),
        _ => unreachable!("clap requires one"),
    }
}

/// `destinations enable|disable`: a PATCH of `enabled` alone, so that a
/// change made to another field meanwhile is not written back over; the
/// answer's `changed` tells whether it was in that state already.
async fn set_enabled(client: &Client, name: &str, enabled: bool) -> anyhow::Result<Shown> {
    let v = client
        .send(
            reqwest::Method::PATCH,
            &api_path(&["destinations", name], &[]),
            Some(json!({ "enabled": enabled })),
        )
        .await?;
    let word = if enabled { "enabled" } else { "disabled" };
    let line = if v["changed"] == false {
        format!("destination {name} is {word} already")
    } else if enabled {
        format!("destination {name} enabled: it delivers from where it stopped")
    } else {
        format!("destination {name} disabled: its events wait for `switchyard destinations enable {name}`")
    };
    Ok(Shown::line(v, line))
}

/// Where a deploy put a function: `deployed_to` of the API's answer
/// (`{sources, destinations}`).
fn deployed_to(to: &Value) -> String {
    let names = |kind: &str| -> Vec<String> {
        to[kind]
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
        deployed_to(&v["deployed_to"])
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

/// One line on an event of `tail`: when it was received, its type, what it
/// is (the event or page name) and who sent it.
fn event_line(event: &Value) -> String {
    let at = match &event["receivedAt"] {
        Value::Null => cell(&event["timestamp"]),
        at => cell(at),
    };
    let what = [&event["event"], &event["name"], &event["groupId"]]
        .into_iter()
        .find(|v| !v.is_null())
        .map_or_else(|| "-".to_string(), |v| v.to_string());
    let who = match (&event["userId"], &event["anonymousId"]) {
        (Value::Null, Value::Null) => "-".to_string(),
        (Value::Null, anonymous) => format!("anonymous {}", cell(anonymous)),
        (user, _) => format!("user {}", cell(user)),
    };
    format!("{at}  {}  {what}  {who}", cell(&event["type"]))
}

/// Prints each event of a source as it is stored: a line each, or the
/// event as one JSON object per line with `json`.
async fn tail(client: &Client, slug: &str, json: bool) -> anyhow::Result<()> {
    let mut resp = client
        .http
        .get(format!(
            "{}{}",
            client.base.trim_end_matches('/'),
            api_path(&["sources", slug, "events", "stream"], &[])
        ))
        .bearer_auth(&client.token)
        .send()
        .await
        .with_context(|| format!("cannot reach {}", client.base))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        return Err(failure(status, &v));
    }
    let mut buffer = String::new();
    use std::io::Write;
    let mut out = std::io::stdout();
    while let Some(chunk) = resp.chunk().await.context("the stream broke")? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                let data = data.trim_start();
                if json {
                    writeln!(out, "{data}")?;
                } else {
                    match serde_json::from_str::<Value>(data) {
                        Ok(event) => writeln!(out, "{}", event_line(&event))?,
                        Err(_) => writeln!(out, "{data}")?,
                    }
                }
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
/// Lines are followed by their id, unique and increasing: each is printed
/// once, however many are alike or written in one millisecond, and a burst
/// larger than a page between two polls is read back page by page.
async fn follow_logs(client: &Client, args: &LogsArgs, json: bool) -> anyhow::Result<()> {
    let id = |line: &Value| line["id"].as_i64().unwrap_or(0);
    let mut last: Option<i64> = None;
    loop {
        let mut fresh: Vec<Value> = Vec::new();
        let mut before: Option<i64> = None;
        loop {
            // The first look shows the newest `-n`; later ones read back to
            // the last line printed.
            let limit = if last.is_none() { args.limit } else { 1000 };
            let mut query = vec![("limit", Some(limit.to_string()))];
            query.push(("before", before.map(|b| b.to_string())));
            let v = client
                .send(reqwest::Method::GET, &logs_page_path(args, &query), None)
                .await?;
            let page: Vec<Value> = v["data"].as_array().cloned().unwrap_or_default();
            let reached = page.iter().any(|l| Some(id(l)) <= last);
            fresh.extend(page.into_iter().filter(|l| Some(id(l)) > last));
            before = v["next_before"].as_i64();
            if last.is_none() || reached || before.is_none() {
                break;
            }
        }
        fresh.sort_by_key(id);
        for l in &fresh {
            if json {
                println!("{l}");
            } else {
                println!(
                    "{} [{}] {}",
                    time_cell(&l["at_ms"]),
                    cell(&l["level"]),
                    cell(&l["message"])
                );
            }
        }
        last = fresh.last().map(id).max(last).or(Some(0));
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
        let list = api_path(
            &["destinations", destination, "deadletters"],
            &[
                ("limit", Some("1000".into())),
                ("after", after.map(|a| a.to_string())),
            ],
        );
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
    let path = api_path(&["destinations", destination, "deadletters", "replay"], &[]);
    for chunk in ids.chunks(CHUNK) {
        let v = client
            .send(Method::POST, &path, Some(json!({ "ids": chunk })))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries_are_percent_encoded() {
        assert_eq!(
            api_path(
                &["sources", "a/b c", "objects"],
                &[("collection", Some("a b&c=d".into())), ("id", None)]
            ),
            "/api/v1/sources/a%2Fb%20c/objects?collection=a%20b%26c%3Dd"
        );
        assert_eq!(
            api_path(&["functions", "x?y#z"], &[("limit", Some("5".into()))]),
            "/api/v1/functions/x%3Fy%23z?limit=5"
        );
        assert_eq!(api_path(&["tokens"], &[]), "/api/v1/tokens");
        assert_eq!(percent_encoded("é"), "%C3%A9");
    }

    #[test]
    fn a_server_is_a_url_or_host_and_port() {
        assert_eq!(
            server_url("127.0.0.1:8080").as_deref(),
            Ok("http://127.0.0.1:8080")
        );
        assert_eq!(
            server_url("localhost:9").as_deref(),
            Ok("http://localhost:9")
        );
        assert_eq!(
            server_url("https://router.internal/prefix/").as_deref(),
            Ok("https://router.internal/prefix")
        );
        for wrong in [
            "ftp://x",
            "http://",
            "127.0.0.1:8080/x",
            "a b:1",
            "http://x?y",
            ":8080",
        ] {
            assert!(server_url(wrong).is_err(), "{wrong}");
        }
    }

    #[test]
    fn tables_show_times() {
        assert_eq!(time_cell(&json!(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(time_cell(&Value::Null), "-");
    }
}
