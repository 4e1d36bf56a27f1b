//! The `switchyard` command: parses arguments and wires the crates together.

mod api_cli;
mod apply;
mod bench;
mod config;
mod functions_cli;
mod serve;

use anyhow::Context;
use clap::{Parser, Subcommand};
use functions_cli::FunctionsCommand as F;

/// mimalloc instead of glibc malloc: the ingest path allocates per message on
/// the HTTP threads and frees on the store writer, and glibc's arena locks and
/// consolidation were a fifth of the server's CPU time (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Self-hosted event router: Segment-compatible tracking API, durable log, signed and retried webhooks"
)]
struct Cli {
    #[command(flatten)]
    connection: api_cli::Connection,
    #[command(flatten)]
    output: api_cli::Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (tracking API, delivery workers, metrics).
    Serve(serve::ServeArgs),
    /// Functions: test one offline, or create, update, deploy, list them and
    /// read their logs on a running server.
    Functions(functions_cli::FunctionsArgs),
    /// Sources of a running server.
    Sources {
        #[command(subcommand)]
        command: api_cli::SourcesCommand,
    },
    /// Destinations of a running server.
    Destinations {
        #[command(subcommand)]
        command: api_cli::DestinationsCommand,
    },
    /// Dead letters: list, replay and discard.
    Deadletters {
        #[command(subcommand)]
        command: api_cli::DeadLettersCommand,
    },
    /// API tokens of a running server.
    Tokens {
        #[command(subcommand)]
        command: api_cli::TokensCommand,
    },
    /// Function logs of a source or destination.
    Logs {
        #[command(flatten)]
        args: api_cli::LogsArgs,
    },
    /// Print a source's events live: a line each (time, type, name, user),
    /// or with --json each event as one JSON object per line.
    Tail { source: String },
    /// Delete a user: notify destinations, purge stored data.
    DeleteUser { user_id: String },
    /// Reconcile a running server to a configuration file (prints the plan first).
    Apply {
        #[command(flatten)]
        args: apply::ApplyArgs,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Measure throughput and latency against a server started for the run.
    Bench(bench::BenchArgs),
}

/// The commands that call no running server, by their path of subcommands,
/// with the global options they have no use for. Those are kept out of
/// their help and refused on their command line: `serve --token`
/// especially reads as the server's own token, which is `--admin-token`,
/// and `--json` would be silently ignored by the commands that print no
/// JSON (`functions test` and `bench` do: their report as one JSON
/// document).
const OFFLINE: &[(&[&str], &[&str])] = &[
    (&["serve"], &["server", "token", "json"]),
    (&["bench"], &["server", "token"]),
    (&["completions"], &["server", "token", "json"]),
    (&["functions", "test"], &["server", "token"]),
];

/// The command line parser: [`Cli`], where each command of [`OFFLINE`] has
/// hidden arguments of its own for the globals it refuses. A subcommand
/// with an argument of a global's id does not get the global, so it stays
/// out of its help; the value still reaches the top level, where
/// [`global_misplaced`] finds it.
fn cli_command() -> clap::Command {
    fn hide(cmd: clap::Command, path: &[&str], ids: &[&'static str]) -> clap::Command {
        match path {
            [] => cmd.args(ids.iter().map(|id| {
                clap::Arg::new(*id).long(*id).hide(true).action(match *id {
                    "json" => clap::ArgAction::SetTrue,
                    _ => clap::ArgAction::Set,
                })
            })),
            [first, rest @ ..] => cmd.mut_subcommand(*first, |sc| hide(sc, rest, ids)),
        }
    }
    use clap::CommandFactory;
    OFFLINE
        .iter()
        .fold(Cli::command(), |cmd, (path, ids)| hide(cmd, path, ids))
}

/// An explanation when `--server`, `--token` or `--json` was given on the
/// command line to a command that has no use for it (the environment
/// variables of the first two are ignored there: they are usually set for
/// the whole shell).
fn global_misplaced(matches: &clap::ArgMatches, command: &Command) -> Option<String> {
    let given = |id: &str| {
        matches!(
            matches.value_source(id),
            Some(clap::parser::ValueSource::CommandLine)
        )
    };
    let name = match command {
        Command::Serve(_) => "serve",
        Command::Bench(_) => "bench",
        Command::Completions { .. } => "completions",
        Command::Functions(functions_cli::FunctionsArgs {
            command: functions_cli::FunctionsCommand::Test(_),
        }) => "functions test",
        _ => return None,
    };
    if given("token") {
        return Some(match command {
            Command::Serve(_) => "`--token` is for the commands that call a running server; \
                                  `serve` sets its admin token with `--admin-token` (or SWITCHYARD_ADMIN_TOKEN)"
                .to_string(),
            _ => format!("`switchyard {name}` calls no running server: `--token` is for the commands that do"),
        });
    }
    if given("json") && !matches!(command, Command::Functions(_) | Command::Bench(_)) {
        return Some(format!(
            "`switchyard {name}` prints no JSON: `--json` is for the commands that do"
        ));
    }
    if given("server") {
        return Some(match command {
            Command::Serve(_) => "`--server` names a running server to call; \
                                  `serve` listens where `--listen` says (or SWITCHYARD_LISTEN)"
                .to_string(),
            _ => format!("`switchyard {name}` calls no running server: `--server` is for the commands that do"),
        });
    }
    None
}

/// Whether `error` comes from writing to a reader that went away (`| head`).
fn broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The exit code of a command's result: 1 when the server refused (or a
/// function failed), 2 for usage and connection errors; 0 when the output's
/// reader went away (when `piped`: the CLI's commands, not `serve` or
/// `bench`), as other Unix tools do.
fn exit_code(result: anyhow::Result<()>, piped: bool) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if piped && broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            let failure = e.downcast_ref::<api_cli::ApiFailure>().is_some();
            std::process::ExitCode::from(if failure { 1 } else { 2 })
        }
    }
}

/// The body of a function's code file, or a usage error.
fn read_code(file: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

/// The declared settings of `functions create --settings-schema`: a JSON
/// array, or an error that says where the JSON is wrong.
fn read_settings_schema(file: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) if v.is_array() => Ok(v),
        Ok(_) => Err(anyhow::anyhow!(
            "{} is not a JSON array of settings ([{{\"name\", \"type\", \"required\", \"encrypted\"}}])",
            file.display()
        )),
        // serde_json's message ends with the line and column.
        Err(e) => Err(anyhow::anyhow!("{} is not valid JSON: {e}", file.display())),
    }
}

/// What a `functions …` subcommand that calls a server calls.
fn functions_call(command: F) -> anyhow::Result<api_cli::Call> {
    Ok(match command {
        F::Test(_) => unreachable!("functions test calls no server"),
        F::Logs { args, follow } => match follow {
            true => api_cli::Call::FollowLogs(args),
            false => api_cli::Call::Logs(args),
        },
        F::List => api_cli::Call::ListFunctions,
        F::Deploy { name, version } => api_cli::Call::DeployFunction(name, version),
        F::Create {
            name,
            kind,
            file,
            settings_schema,
            deploy,
        } => {
            let code = read_code(&file)?;
            let mut body =
                serde_json::json!({"name": name, "kind": kind, "code": code, "deploy": deploy});
            if let Some(p) = settings_schema {
                body["settings"] = read_settings_schema(&p)?;
            }
            api_cli::Call::CreateFunction(body)
        }
        F::Update { name, file, deploy } => api_cli::Call::UpdateFunction(
            name,
            serde_json::json!({"code": read_code(&file)?, "deploy": deploy}),
        ),
    })
}

fn main() -> std::process::ExitCode {
    let mut command = cli_command();
    let matches = command.get_matches_mut();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.format(&mut command).exit(),
    };
    if let Some(message) = global_misplaced(&matches, &cli.command) {
        command
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    let connection = cli.connection;
    let json = cli.output.json;
    let piped = !matches!(cli.command, Command::Serve(_) | Command::Bench(_));
    // The CLI's output is often piped (`| head`): a reader that goes away
    // ends it quietly, as it does other Unix tools, instead of a panic on
    // the next `println!`. Not by restoring SIGPIPE's default action: the
    // HTTP client writes its requests with `writev`, which raises SIGPIPE
    // on a connection the server closed, and that must stay an error the
    // client handles, not a silent death. Writes that return their error
    // instead of panicking are handled by [`exit_code`].
    if piped {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or_default();
            if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
                std::process::exit(0);
            }
            report(info);
        }));
    }
    if let Command::Completions { shell } = cli.command {
        // Written from a buffer, not by `generate` itself: it panics on a
        // write error, a reader gone away included.
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cli_command(), "switchyard", &mut script);
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        return exit_code(
            out.write_all(&script)
                .and_then(|()| out.flush())
                .context("cannot write the script"),
            true,
        );
    }
    /// What runs on the async runtime.
    enum Job {
        Serve(serve::ServeArgs),
        Bench(bench::BenchArgs),
        Apply(apply::ApplyArgs),
        Call(api_cli::Call),
    }
    let job = match cli.command {
        Command::Completions { .. } => unreachable!("printed above"),
        Command::Functions(functions_cli::FunctionsArgs {
            command: F::Test(mut args),
        }) => {
            args.json = json;
            return match functions_cli::run(functions_cli::FunctionsArgs {
                command: F::Test(args),
            }) {
                Ok(code) => std::process::ExitCode::from(code as u8),
                Err(e) if broken_pipe(&e) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard: {e:#}");
                    std::process::ExitCode::from(2)
                }
            };
        }
        Command::Functions(functions_cli::FunctionsArgs { command }) => {
            match functions_call(command) {
                Ok(call) => Job::Call(call),
                Err(e) => return exit_code(Err(e), piped),
            }
        }
        Command::Serve(args) => Job::Serve(args),
        Command::Bench(mut args) => {
            // Its own `--json` takes the flag after `bench`; one before it
            // is the global's.
            args.json |= json;
            Job::Bench(args)
        }
        Command::Apply { args } => Job::Apply(args),
        Command::Sources { command } => Job::Call(api_cli::Call::Sources(command)),
        Command::Destinations { command } => Job::Call(api_cli::Call::Destinations(command)),
        Command::Deadletters { command } => Job::Call(api_cli::Call::DeadLetters(command)),
        Command::Tokens { command } => Job::Call(api_cli::Call::Tokens(command)),
        Command::Logs { args } => Job::Call(api_cli::Call::Logs(args)),
        Command::Tail { source } => Job::Call(api_cli::Call::Tail(source)),
        Command::DeleteUser { user_id } => Job::Call(api_cli::Call::DeleteUser(user_id)),
    };
    // Only the commands that call a server read the environment: a shell
    // sets it for all of them, and the others must not fail on it.
    let connection = match job {
        Job::Call(_) | Job::Apply(_) => match connection.with_environment() {
            Ok(c) => c,
            Err(message) => command
                .error(clap::error::ErrorKind::InvalidValue, message)
                .exit(),
        },
        Job::Serve(_) | Job::Bench(_) => connection,
    };
    let remote = || api_cli::Remote::new(&connection, json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match job {
            Job::Serve(args) => serve::run(args).await,
            Job::Bench(args) => bench::run(args).await,
            Job::Apply(args) => apply::run(remote(), args).await,
            Job::Call(call) => api_cli::run(remote(), call).await,
        }
    });
    exit_code(result, piped)
}

/// Installs the TLS provider for the HTTP clients of the CLI.
pub fn install_tls() {
    delivery::install_crypto_provider();
}

#[cfg(test)]
mod tests {
    /// Clap's own checks of every command and flag (a conflict naming an
    /// argument a command lacks, say), which otherwise fail only when that
    /// command is run.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
