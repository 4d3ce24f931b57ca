//! `govbus`: the one binary. Each capability is a subcommand; this is the only
//! crate that knows every component.

mod catalog_source;
mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "govbus",
    version,
    about = "Real-time data exchange bus for a city's government departments"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check and list the data catalog (数据目录).
    #[command(subcommand)]
    Catalog(cmd::catalog::CatalogCommand),
    /// Validate records (JSON array or NDJSON) against a dataset, offline.
    Validate(cmd::validate::ValidateArgs),
    /// List the rejection reason codes and what each means.
    Reasons(cmd::reasons::ReasonsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Catalog(c) => cmd::catalog::run(c),
        Command::Validate(a) => cmd::validate::run(a),
        Command::Reasons(a) => cmd::reasons::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
