//! `govbus subscriptions list`: every grant in the catalog and its state.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use govbus_catalog::{Selection, SinkSpec};

use crate::catalog_source;
use crate::cmd::{print_table, Format};

#[derive(Subcommand)]
pub enum SubscriptionsCommand {
    /// List every subscription: subscriber, dataset, sink, state, policy.
    List(ListArgs),
}

#[derive(Args)]
pub struct ListArgs {
    /// Catalog directory. Default: the embedded sample catalog.
    #[arg(long, env = "GOVBUS_CATALOG")]
    catalog: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(cmd: SubscriptionsCommand) -> anyhow::Result<ExitCode> {
    let SubscriptionsCommand::List(a) = cmd;
    let catalog = catalog_source::load_checked(a.catalog.as_deref())?;
    let now = govbus_sink::run::now_ms();
    if a.format == Format::Json {
        let all: Vec<_> = catalog
            .subscriptions()
            .map(|s| {
                serde_json::json!({
                    "id": s.id,
                    "subscriber": s.subscriber,
                    "dataset": s.dataset,
                    "sink": s.sink,
                    "state": s.inactive_reason(now).unwrap_or("active"),
                    "purpose": s.purpose,
                    "selection": s.selection,
                    "treatments": s.treatments,
                    "filter": s.filter,
                    "valid_from": s.valid_from.map(govbus_catalog::time::format_rfc3339_millis),
                    "valid_until": s.valid_until.map(govbus_catalog::time::format_rfc3339_millis),
                    "policy_version": s.policy_version,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = catalog
        .subscriptions()
        .map(|s| {
            let fields = match &s.selection {
                Selection::All => "all".to_owned(),
                Selection::Include(f) => format!("only {}", f.len()),
                Selection::Exclude(f) => format!("all but {}", f.len()),
            };
            let key = catalog
                .dataset(&s.dataset)
                .map(|d| d.key.clone())
                .unwrap_or_default();
            let treated: Vec<String> = s
                .treatments
                .iter()
                .filter(|(f, _)| s.delivers(f, &key))
                .map(|(f, t)| format!("{f}={}", t.as_str()))
                .collect();
            let sink = match &s.sink {
                SinkSpec::Webhook { url, .. } => format!("webhook {url}"),
                SinkSpec::Postgres { table, .. } => format!("postgres {table}"),
                SinkSpec::File { dir, .. } => format!("file {}", dir.display()),
                SinkSpec::Sse => format!("sse /v1/subscriptions/{}/events", s.id),
                SinkSpec::KafkaView => format!("kafka view.{}", s.id),
                SinkSpec::Api { operations, .. } => format!(
                    "api /v1/query/{}/ ({})",
                    s.id,
                    operations
                        .iter()
                        .map(|o| o.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            vec![
                s.id.clone(),
                s.subscriber.clone(),
                s.dataset.clone(),
                sink,
                s.inactive_reason(now).unwrap_or("active").to_owned(),
                fields,
                treated.join(" "),
                if s.filter.is_empty() {
                    "-".into()
                } else {
                    format!("{} predicates", s.filter.len())
                },
                s.policy_version.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "SUBSCRIBER",
            "DATASET",
            "SINK",
            "STATE",
            "FIELDS",
            "PERSONAL DATA",
            "FILTER",
            "POLICY",
        ],
        &rows,
    );
    println!(
        "{} subscriptions in {}",
        rows.len(),
        catalog_source::describe(a.catalog.as_deref())
    );
    Ok(ExitCode::SUCCESS)
}
