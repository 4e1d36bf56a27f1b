//! The `switchyard` command: parses arguments and wires the crates together.

mod bench;
mod config;
mod functions_cli;
mod serve;

use clap::{Parser, Subcommand};

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
    /// Measure throughput and latency against a server started for the run.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Functions(args) = cli.command {
        return match functions_cli::run(args) {
            Ok(code) => std::process::ExitCode::from(code as u8),
            Err(e) => {
                eprintln!("switchyard: {e:#}");
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
            Command::Functions(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
