//! `govbus catalog check|list`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use govbus_catalog::Catalog;
use govbus_validate::Engine;
use serde_json::json;

use super::{print_table, Format};
use crate::catalog_source;

#[derive(Subcommand)]
pub enum CatalogCommand {
    /// Load and cross-check everything; report every problem with its file and path (exit 1 if any).
    Check(CheckArgs),
    /// Print the datasets, their owners, keys, versions and schema ids.
    List(ListArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// Catalog directory (departments.toml, datasets/). Default: the embedded sample catalog.
    dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct ListArgs {
    /// Catalog directory. Default: the embedded sample catalog.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(cmd: CatalogCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CatalogCommand::Check(a) => check(a),
        CatalogCommand::List(a) => list(a),
    }
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let source = catalog_source::describe(args.dir.as_deref());
    let catalog = match catalog_source::load(args.dir.as_deref()) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems.0 {
                eprintln!("{p}");
            }
            eprintln!(
                "catalog check failed: {} problem(s) in {source}",
                problems.0.len()
            );
            return Ok(ExitCode::from(1));
        }
    };
    // The validator compiles every rule; anything it cannot compile is a catalog problem too.
    if let Err(e) = Engine::new(&catalog) {
        eprintln!("{}: -: {e}", catalog.root().display());
        eprintln!("catalog check failed: 1 problem(s) in {source}");
        return Ok(ExitCode::from(1));
    }
    let versions: usize = catalog.datasets().map(|d| d.versions.len()).sum();
    println!(
        "catalog OK: {} departments, {} datasets, {} schema versions, {} subscriptions ({source})",
        catalog.departments().count(),
        catalog.datasets().count(),
        versions,
        catalog.subscriptions().count()
    );
    Ok(ExitCode::SUCCESS)
}

fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog_source::load_checked(args.catalog.as_deref())?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&to_json(&catalog))?),
        Format::Table => {
            let rows: Vec<Vec<String>> = catalog
                .datasets()
                .map(|d| {
                    vec![
                        d.name.clone(),
                        d.owner.clone(),
                        d.title_zh.clone(),
                        d.classification.as_str().to_owned(),
                        d.key.join(","),
                        format!("v{} (id {})", d.latest().version, d.latest().id),
                        d.rules.len().to_string(),
                        d.personal_data.len().to_string(),
                        humantime_short(d.freshness),
                    ]
                })
                .collect();
            print_table(
                &[
                    "DATASET",
                    "OWNER",
                    "TITLE",
                    "CLASS",
                    "KEY",
                    "LATEST",
                    "RULES",
                    "PII",
                    "FRESHNESS",
                ],
                &rows,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn humantime_short(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn to_json(catalog: &Catalog) -> serde_json::Value {
    json!({
        "departments": catalog.departments().collect::<Vec<_>>(),
        "datasets": catalog.datasets().map(|d| json!({
            "name": d.name,
            "owner": d.owner,
            "title_zh": d.title_zh,
            "title_en": d.title_en,
            "classification": d.classification,
            "key": d.key,
            "freshness_seconds": d.freshness.as_secs(),
            "compatibility": d.compatibility,
            "personal_data": d.personal_data,
            "rules": d.rules.iter().map(|r| json!({"field": r.field, "check": r.check.name()})).collect::<Vec<_>>(),
            "topic": d.topic(),
            "versions": d.versions.iter().map(|v| json!({"version": v.version, "schema_id": v.id})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
