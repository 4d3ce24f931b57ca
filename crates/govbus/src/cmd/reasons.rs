//! `govbus reasons`: the bounded list of rejection codes.

use std::process::ExitCode;

use clap::Args;
use govbus_validate::Reason;
use serde_json::json;

use super::{print_table, Format};

#[derive(Args)]
pub struct ReasonsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(args: ReasonsArgs) -> anyhow::Result<ExitCode> {
    match args.format {
        Format::Json => {
            let list: Vec<_> = Reason::ALL
                .iter()
                .map(|r| json!({"code": r.code(), "description": r.description()}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = Reason::ALL
                .iter()
                .map(|r| vec![r.code().to_owned(), r.description().to_owned()])
                .collect();
            print_table(&["CODE", "MEANING"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}
