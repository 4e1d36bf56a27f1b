//! The `switchyard` command: parses arguments and wires the crates together.

mod api_cli;
mod apply;
mod bench;
mod config;
mod functions_cli;
mod serve;

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
        #[command(flatten)]
        output: api_cli::Output,
        #[command(subcommand)]
        command: api_cli::SourcesCommand,
    },
    /// Destinations of a running server.
    Destinations {
        #[command(flatten)]
        output: api_cli::Output,
        #[command(subcommand)]
        command: api_cli::DestinationsCommand,
    },
    /// Dead letters: list and replay.
    Deadletters {
        #[command(flatten)]
        output: api_cli::Output,
        #[command(subcommand)]
        command: api_cli::DeadLettersCommand,
    },
    /// Function logs of a source or destination.
    Logs {
        #[command(flatten)]
        output: api_cli::Output,
        #[command(flatten)]
        args: api_cli::LogsArgs,
    },
    /// Print a source's events live, one JSON line each.
    Tail {
        #[command(flatten)]
        output: api_cli::Output,
        source: String,
    },
    /// Delete a user: notify destinations, purge stored data.
    DeleteUser {
        #[command(flatten)]
        output: api_cli::Output,
        user_id: String,
    },
    /// Reconcile a running server to a configuration file (prints the plan first).
    Apply {
        #[command(flatten)]
        output: api_cli::Output,
        #[command(flatten)]
        args: apply::ApplyArgs,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Measure throughput and latency against a server started for the run.
    Bench(bench::BenchArgs),
}

/// The commands that call no running server, by their path of subcommands.
/// The global `--server` and `--token` are kept out of their help and
/// refused on their command line: `serve --token` especially reads as the
/// server's own token, which is `--admin-token`.
const OFFLINE: &[&[&str]] = &[
    &["serve"],
    &["bench"],
    &["completions"],
    &["functions", "test"],
];

/// The command line parser: [`Cli`], where each command of [`OFFLINE`] has
/// hidden `--server` and `--token` of its own. A subcommand with an argument
/// of a global's id does not get the global, so it stays out of its help;
/// the value still reaches the top level, where [`connection_misplaced`]
/// finds it.
fn cli_command() -> clap::Command {
    fn hide_connection(cmd: clap::Command, path: &[&str]) -> clap::Command {
        match path {
            [] => cmd.args(["server", "token"].map(|id| {
                clap::Arg::new(id)
                    .long(id)
                    .hide(true)
                    .action(clap::ArgAction::Set)
            })),
            [first, rest @ ..] => cmd.mut_subcommand(*first, |sc| hide_connection(sc, rest)),
        }
    }
    use clap::CommandFactory;
    OFFLINE
        .iter()
        .fold(Cli::command(), |cmd, path| hide_connection(cmd, path))
}

/// An explanation when `--server` or `--token` was given on the command line
/// to a command that calls no server (their environment variables are
/// ignored there: they are usually set for the whole shell).
fn connection_misplaced(matches: &clap::ArgMatches, command: &Command) -> Option<String> {
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

fn main() -> std::process::ExitCode {
    let mut command = cli_command();
    let matches = command.get_matches_mut();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.format(&mut command).exit(),
    };
    if let Some(message) = connection_misplaced(&matches, &cli.command) {
        command
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    let connection = cli.connection;
    // The CLI's output is often piped (`| head`): a reader that goes away
    // ends it quietly, as it does other Unix tools, instead of a panic on
    // the next `println!`. Not by restoring SIGPIPE's default action: the
    // HTTP client writes its requests with `writev`, which raises SIGPIPE
    // on a connection the server closed, and that must stay an error the
    // client handles, not a silent death.
    if !matches!(cli.command, Command::Serve(_) | Command::Bench(_)) {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .unwrap_or_default();
            if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
                std::process::exit(0);
            }
            report(info);
        }));
    }
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut cli_command(),
            "switchyard",
            &mut std::io::stdout(),
        );
        return std::process::ExitCode::SUCCESS;
    }
    let remote = |output| api_cli::Remote::new(&connection, output);
    if let Command::Functions(functions_cli::FunctionsArgs { command }) = cli.command {
        let (output, call) = match command {
            F::Test(args) => {
                return match functions_cli::run(functions_cli::FunctionsArgs {
                    command: F::Test(args),
                }) {
                    Ok(code) => std::process::ExitCode::from(code as u8),
                    Err(e) => {
                        eprintln!("switchyard: {e:#}");
                        std::process::ExitCode::from(2)
                    }
                };
            }
            F::Logs {
                output,
                args,
                follow,
            } => (
                output,
                if follow {
                    api_cli::Call::FollowLogs(args)
                } else {
                    api_cli::Call::Logs(args)
                },
            ),
            F::List { output } => (
                output,
                api_cli::Call::Raw(
                    reqwest::Method::GET,
                    "/api/v1/functions".into(),
                    None,
                    &["name", "kind", "deployed_version", "latest_version"],
                ),
            ),
            F::Deploy {
                output,
                name,
                version,
            } => (
                output,
                api_cli::Call::Raw(
                    reqwest::Method::POST,
                    format!("/api/v1/functions/{name}/deploy"),
                    Some(serde_json::json!({ "version": version })),
                    &[],
                ),
            ),
            F::Create {
                output,
                name,
                kind,
                file,
                settings_schema,
                deploy,
            } => {
                let code = match std::fs::read_to_string(&file) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("switchyard: cannot read {}: {e}", file.display());
                        return std::process::ExitCode::from(2);
                    }
                };
                let mut body =
                    serde_json::json!({"name": name, "kind": kind, "code": code, "deploy": deploy});
                if let Some(p) = settings_schema {
                    match std::fs::read_to_string(&p)
                        .ok()
                        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    {
                        Some(v) => body["settings"] = v,
                        None => {
                            eprintln!(
                                "switchyard: {} is not a JSON array of settings",
                                p.display()
                            );
                            return std::process::ExitCode::from(2);
                        }
                    }
                }
                (output, api_cli::Call::CreateFunction(body))
            }
            F::Update {
                output,
                name,
                file,
                deploy,
            } => {
                let code = match std::fs::read_to_string(&file) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("switchyard: cannot read {}: {e}", file.display());
                        return std::process::ExitCode::from(2);
                    }
                };
                (
                    output,
                    api_cli::Call::UpdateFunction(
                        name,
                        serde_json::json!({"code": code, "deploy": deploy}),
                    ),
                )
            }
        };
        return match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => match rt.block_on(api_cli::run(remote(output), call)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard: {e:#}");
                    let failure = e.downcast_ref::<api_cli::ApiFailure>().is_some();
                    std::process::ExitCode::from(if failure { 1 } else { 2 })
                }
            },
            Err(e) => {
                eprintln!("switchyard: {e}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Functions(_) | Command::Completions { .. } => Ok(()),
            Command::Apply { output, args } => apply::run(remote(output), args).await,
            Command::Sources { output, command } => {
                api_cli::run(remote(output), api_cli::Call::Sources(command)).await
            }
            Command::Destinations { output, command } => {
                api_cli::run(remote(output), api_cli::Call::Destinations(command)).await
            }
            Command::Deadletters { output, command } => {
                api_cli::run(remote(output), api_cli::Call::DeadLetters(command)).await
            }
            Command::Logs { output, args } => {
                api_cli::run(remote(output), api_cli::Call::Logs(args)).await
            }
            Command::Tail { output, source } => {
                api_cli::run(remote(output), api_cli::Call::Tail(source)).await
            }
            Command::DeleteUser { output, user_id } => {
                api_cli::run(remote(output), api_cli::Call::DeleteUser(user_id)).await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<api_cli::ApiFailure>().is_some() => {
            eprintln!("switchyard: {e:#}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Installs the TLS provider for the HTTP clients of the CLI.
pub fn install_tls() {
    delivery::install_crypto_provider();
}
