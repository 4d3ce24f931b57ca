//! `govbus report`: per-department scorecards from a running system.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use govbus_kafka::topics::Topics;

use crate::catalog_source;

#[derive(Args)]
pub struct ReportArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "GOVBUS_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// A `/metrics` URL of a govbus component (repeatable: gateway, sinks, `govbus up`).
    #[arg(long = "metrics", value_name = "URL")]
    metrics: Vec<String>,
    /// Catalog directory. Default: the embedded sample catalog.
    #[arg(long, env = "GOVBUS_CATALOG")]
    catalog: Option<PathBuf>,
    /// Topic namespace prefix.
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Where to write report.md, report.html and report.json.
    #[arg(long, default_value = "report")]
    out: PathBuf,
}

/// Fetches each URL's text; a URL that does not answer is an error (a
/// report silently missing a component's numbers would mislead).
pub fn fetch_metrics(urls: &[String]) -> anyhow::Result<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let mut text = String::new();
    for url in urls {
        let body = agent
            .get(url)
            .call()
            .with_context(|| format!("GET {url}"))?
            .body_mut()
            .read_to_string()
            .with_context(|| format!("read {url}"))?;
        text.push_str(&body);
        text.push('\n');
    }
    Ok(text)
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog_source::load_checked(args.catalog.as_deref())?;
    let metrics = fetch_metrics(&args.metrics)?;
    if args.metrics.is_empty() {
        eprintln!("note: no --metrics URL given: gateway and table-dump rejections and deliveries will show as 0");
    }
    let report = crate::report::gather(
        &catalog,
        &args.bootstrap,
        &Topics::new(args.topic_prefix),
        &metrics,
        govbus_sink::run::now_ms(),
    )?;
    for p in report.write(&args.out)? {
        println!("wrote {}", super::escape(&p.display().to_string()));
    }
    Ok(ExitCode::SUCCESS)
}
