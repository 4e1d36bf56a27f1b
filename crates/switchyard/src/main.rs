//! The `switchyard` command: parses arguments and wires the crates together.

mod api_cli;
mod apply;
mod bench;
mod config;
mod functions_cli;
mod serve;

use clap::{Parser, Subcommand};

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (tracking API, delivery workers, metrics).
    Serve(serve::ServeArgs),
    /// Work with functions (offline test runs).
    Functions(functions_cli::FunctionsArgs),
    /// Sources of a running server.
    Sources {
        #[command(flatten)]
        remote: api_cli::Remote,
        #[command(subcommand)]
        command: api_cli::SourcesCommand,
    },
    /// Destinations of a running server.
    Destinations {
        #[command(flatten)]
        remote: api_cli::Remote,
        #[command(subcommand)]
        command: api_cli::DestinationsCommand,
    },
    /// Dead letters: list and replay.
    Deadletters {
        #[command(flatten)]
        remote: api_cli::Remote,
        #[command(subcommand)]
        command: api_cli::DeadLettersCommand,
    },
    /// Function logs of a source or destination.
    Logs {
        #[command(flatten)]
        remote: api_cli::Remote,
        #[command(flatten)]
        args: api_cli::LogsArgs,
    },
    /// Print a source's events live, one JSON line each.
    Tail {
        #[command(flatten)]
        remote: api_cli::Remote,
        source: String,
    },
    /// Delete a user: notify destinations, purge stored data.
    DeleteUser {
        #[command(flatten)]
        remote: api_cli::Remote,
        user_id: String,
    },
    /// Reconcile a running server to a configuration file (prints the plan first).
    Apply {
        #[command(flatten)]
        remote: api_cli::Remote,
        #[command(flatten)]
        args: apply::ApplyArgs,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Measure throughput and latency against a server started for the run.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
        use clap::CommandFactory;
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "switchyard",
            &mut std::io::stdout(),
        );
        return std::process::ExitCode::SUCCESS;
    }
    if let Command::Functions(functions_cli::FunctionsArgs { command }) = cli.command {
        use functions_cli::FunctionsCommand as F;
        let (remote, call) = match command {
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
                remote,
                args,
                follow,
            } => (
                remote,
                if follow {
                    api_cli::Call::FollowLogs(args)
                } else {
                    api_cli::Call::Logs(args)
                },
            ),
            F::List { remote } => (
                remote,
                api_cli::Call::Raw(
                    reqwest::Method::GET,
                    "/api/v1/functions".into(),
                    None,
                    &["name", "kind", "deployed_version", "latest_version"],
                ),
            ),
            F::Deploy {
                remote,
                name,
                version,
            } => (
                remote,
                api_cli::Call::Raw(
                    reqwest::Method::POST,
                    format!("/api/v1/functions/{name}/deploy"),
                    Some(serde_json::json!({ "version": version })),
                    &[],
                ),
            ),
            F::Create {
                remote,
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
                (
                    remote,
                    api_cli::Call::Raw(
                        reqwest::Method::POST,
                        "/api/v1/functions".into(),
                        Some(body),
                        &[],
                    ),
                )
            }
            F::Update {
                remote,
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
                    remote,
                    api_cli::Call::Raw(
                        reqwest::Method::PUT,
                        format!("/api/v1/functions/{name}"),
                        Some(serde_json::json!({"code": code, "deploy": deploy})),
                        &[],
                    ),
                )
            }
        };
        return match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => match rt.block_on(api_cli::run(remote, call)) {
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
            Command::Apply { remote, args } => apply::run(remote, args).await,
            Command::Sources { remote, command } => {
                api_cli::run(remote, api_cli::Call::Sources(command)).await
            }
            Command::Destinations { remote, command } => {
                api_cli::run(remote, api_cli::Call::Destinations(command)).await
            }
            Command::Deadletters { remote, command } => {
                api_cli::run(remote, api_cli::Call::DeadLetters(command)).await
            }
            Command::Logs { remote, args } => api_cli::run(remote, api_cli::Call::Logs(args)).await,
            Command::Tail { remote, source } => {
                api_cli::run(remote, api_cli::Call::Tail(source)).await
            }
            Command::DeleteUser { remote, user_id } => {
                api_cli::run(remote, api_cli::Call::DeleteUser(user_id)).await
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
