//! The `vibebase` binary: `vibebase serve` runs the platform; every other subcommand is a client of its
//! API, configured by `VIBEBASE_URL` and `VIBEBASE_KEY`.

mod cli;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vibebase", version, about = "Self-hosted infrastructure for vibe-coding platforms")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the platform.
    Serve(serve::ServeArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn main() -> std::process::ExitCode {
    // The sandbox's own processes: dispatched before anything else starts (the agent confines itself
    // while it is still single-threaded).
    match std::env::args().nth(1).as_deref() {
        Some(sandbox::AGENT_COMMAND) => return exit(sandbox::agent::run()),
        Some(sandbox::LAUNCH_COMMAND) => return exit(sandbox::launch::run()),
        _ => {}
    }
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            cli::fail(&format!("cannot start the async runtime: {e}"));
            return std::process::ExitCode::from(1);
        }
    };
    match args.command {
        Command::Serve(a) => match runtime.block_on(serve::run(a)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                cli::fail(&format!("{e:#}"));
                std::process::ExitCode::from(1)
            }
        },
        Command::Client(c) => runtime.block_on(cli::run(c)),
    }
}

fn exit(code: i32) -> std::process::ExitCode {
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
