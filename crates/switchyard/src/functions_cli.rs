//! `switchyard functions …`: work with functions without a server.

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct FunctionsArgs {
    #[command(subcommand)]
    pub command: FunctionsCommand,
}

#[derive(Debug, Subcommand)]
pub enum FunctionsCommand {
    /// Run a function file once against a payload (source) or an event
    /// (destination), offline: nothing is stored or delivered.
    ///
    /// Prints a report, or with --json one JSON document; exits 1 when the
    /// function failed.
    Test(TestArgs),
    /// Create a function on a running server from a file.
    ///
    /// Prints its version and whether it is deployed; --json prints the
    /// API's answer.
    Create {
        name: String,
        /// `source` or `destination`.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        file: PathBuf,
        /// Declared settings: a JSON array of {name, type, required, encrypted}.
        #[arg(long)]
        settings_schema: Option<PathBuf>,
        /// Deploy it at once.
        #[arg(long)]
        deploy: bool,
    },
    /// Save a file as a function's next version on a running server.
    ///
    /// Prints the version and where it runs now; --json prints the API's
    /// answer.
    Update {
        name: String,
        #[arg(long)]
        file: PathBuf,
        /// Deploy it at once, wherever the function runs.
        #[arg(long)]
        deploy: bool,
    },
    /// Deploy a function's latest (or given) version wherever it runs.
    ///
    /// Prints the version and where it runs now; --json prints the API's
    /// answer.
    Deploy {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// List the functions of a running server.
    List,
    /// Logs of a deployed function, from a running server.
    Logs {
        #[command(flatten)]
        args: crate::api_cli::LogsArgs,
        /// Keep printing new lines as they come.
        #[arg(long, conflicts_with = "before")]
        follow: bool,
    },
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The function's JavaScript file.
    pub file: PathBuf,
    /// Source function input: {"payload": {"body", "headers", "url" | "queryParameters"}, "settings": {…}}.
    #[arg(long, conflicts_with = "event")]
    pub payload: Option<PathBuf>,
    /// Destination function input: one Spec event (or an array, for onBatch).
    #[arg(long)]
    pub event: Option<PathBuf>,
    /// Settings as a JSON object (override the fixture's).
    #[arg(long)]
    pub settings: Option<PathBuf>,
    /// Answers for fetch, by URL prefix: [{"url", "status", "headers", "body"}]
    /// (other URLs are answered 200 {}). Every request is listed.
    #[arg(long, conflicts_with = "live_fetch")]
    pub fetch_mock: Option<PathBuf>,
    /// Let fetch reach the network (public addresses only, and the hosts of
    /// --fetch-allow) instead of answering from mocks.
    #[arg(long)]
    pub live_fetch: bool,
    /// With --live-fetch: hosts allowed even at private or loopback
    /// addresses (comma-separated), as `fetch_allow` on a server.
    #[arg(long, value_delimiter = ',', requires = "live_fetch")]
    pub fetch_allow: Vec<String>,
    /// Time budget in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// The global `--json`: one JSON document instead of a readable report.
    #[arg(skip)]
    pub json: bool,
}

fn read_json(path: &Path, what: &str) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{what} {} is not valid JSON", path.display()))
}

/// How `fetch` is answered in a test run: from the network under the
/// policy, or from the mocks (200 `{}` for any other URL).
fn fetch_mode(args: &TestArgs) -> anyhow::Result<functions::FetchMode> {
    if args.live_fetch {
        return Ok(functions::FetchMode::Live(Arc::new(
            functions::FetchPolicy {
                allow: args.fetch_allow.clone(),
                deny: Vec::new(),
            },
        )));
    }
    let mocks: Vec<functions::MockResponse> = match &args.fetch_mock {
        Some(p) => serde_json::from_value(read_json(p, "fetch mock")?).with_context(|| {
            format!(
                "{}: expected [{{\"url\", \"status\", \"headers\", \"body\"}}]",
                p.display()
            )
        })?,
        None => Vec::new(),
    };
    Ok(functions::FetchMode::Mock(Arc::new(mocks)))
}

fn print_requests(requests: &[functions::RecordedRequest]) {
    println!("requests ({}):", requests.len());
    for r in requests {
        println!("  {} {} {}", r.method, r.url, r.body);
    }
}

fn error_json(e: &Option<functions::FunctionError>) -> Value {
    match e {
        None => Value::Null,
        Some(e) => json!({"name": e.name, "message": e.message, "line": e.line}),
    }
}

/// Returns the process exit code: 0 when the function succeeded, 1 when it failed.
pub fn run(args: FunctionsArgs) -> anyhow::Result<i32> {
    let FunctionsCommand::Test(args) = args.command else {
        unreachable!("remote subcommands run on the async path")
    };
    let source = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read function {}", args.file.display()))?;
    let file_name = args
        .file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "function.js".into());
    let code = functions::FunctionCode::new(&file_name, &file_name, &source);
    let limits = functions::Limits {
        timeout: std::time::Duration::from_millis(args.timeout_ms),
        ..functions::Limits::default()
    };
    let explicit_settings = args
        .settings
        .as_deref()
        .map(|p| read_json(p, "settings"))
        .transpose()?;
    match (&args.payload, &args.event) {
        (Some(payload_path), None) => {
            let fixture = read_json(payload_path, "payload")?;
            let payload = fixture
                .get("payload")
                .ok_or_else(|| anyhow!("{}: expected {{\"payload\": {{…}}, \"settings\": {{…}}}}", payload_path.display()))?;
            let request = functions::fixture_request(payload)
                .map_err(|e| anyhow!("{}: {e}", payload_path.display()))?;
            let settings = explicit_settings
                .or_else(|| fixture.get("settings").cloned())
                .unwrap_or_else(|| json!({}));
            let outcome =
                functions::run_source_once(&code, &request, &settings, &limits, fetch_mode(&args)?);
            let mut error = outcome.error.clone();
            if error.is_none() {
                if let Err(e) = delivery::source_functions::normalize_emitted(&outcome.messages, &spec::Limits::default()) {
                    error = Some(e);
                }
            }
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "events": outcome.messages,
                        "objects": outcome.objects,
                        "requests": outcome.requests,
                        "logs": outcome.logs,
                        "error": error_json(&error),
                    }))?
                );
            } else {
                println!("events ({}):", outcome.messages.len());
                for m in &outcome.messages {
                    println!("  {}", serde_json::to_string(m)?);
                }
                if !outcome.objects.is_empty() {
                    println!("objects ({}):", outcome.objects.len());
                    for o in &outcome.objects {
                        println!("  {}/{} {}", o.collection, o.id, o.properties);
                    }
                }
                if !outcome.requests.is_empty() {
                    print_requests(&outcome.requests);
                }
                print_logs(&outcome.logs);
                print_error(&error, &file_name);
            }
            Ok(if error.is_some() { 1 } else { 0 })
        }
        (None, Some(event_path)) => {
            let event = read_json(event_path, "event")?;
            let settings = explicit_settings.unwrap_or_else(|| json!({}));
            let outcome =
                functions::run_destination_once(&code, &event, &settings, &limits, fetch_mode(&args)?);
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "result": outcome.result,
                        "requests": outcome.requests,
                        "logs": outcome.logs,
                        "error": error_json(&outcome.error),
                    }))?
                );
            } else {
                print_requests(&outcome.requests);
                if let Some(result) = &outcome.result {
                    println!("result: {result}");
                }
                print_logs(&outcome.logs);
                print_error(&outcome.error, &file_name);
            }
            Ok(if outcome.error.is_some() { 1 } else { 0 })
        }
        _ => bail!("give --payload PAYLOAD.json (source function) or --event EVENT.json (destination function)"),
    }
}

fn print_logs(logs: &[functions::LogLine]) {
    if !logs.is_empty() {
        println!("logs:");
        for l in logs {
            println!("  [{}] {}", l.level, l.message);
        }
    }
}

fn print_error(error: &Option<functions::FunctionError>, file: &str) {
    if let Some(e) = error {
        match e.line {
            Some(line) => println!("error: {}: {} ({file}:{line})", e.name, e.message),
            None => println!("error: {}: {}", e.name, e.message),
        }
    }
}
