//! Department scorecards (`govbus report`): what each department declared
//! in the catalog against what the running system shows it publishing.
//!
//! The counts come from the system, not the config: records published and
//! their freshness from the canonical topics, router rejections from the
//! dead-letter topics, gateway and table-dump rejections and deliveries from
//! the components' `/metrics`. The catalog only names what was promised.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use govbus_catalog::Catalog;
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use serde::Serialize;

use crate::promtext::{self, Sample};

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// When it was made (RFC 3339).
    pub generated_at: String,
    /// Per department, in catalog order.
    pub departments: Vec<Card>,
    /// The anti-fraud app's alerts, when its metrics were given.
    pub fraud: Option<FraudLine>,
    /// How much of what is published is used (the city's 8.5 % figure).
    pub usage: Usage,
}

/// Datasets actually consumed — delivered to a subscriber or called through
/// a live interface — over datasets with data on the bus.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    /// Datasets with records in their canonical topic.
    pub datasets_published: usize,
    /// Of those, datasets with at least one delivery or answered call.
    pub datasets_used: usize,
    /// used / published; `None` when nothing is published.
    pub rate: Option<f64>,
}

/// The anti-fraud app's alerts, from its gauges (kept in its store, so
/// they survive restarts): raised = standing + withdrawn.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FraudLine {
    /// Alerts ever raised.
    pub raised: u64,
    /// Alerts the current records support.
    pub standing: u64,
    /// Alerts withdrawn after a correction or deletion of their records.
    pub withdrawn: u64,
}

/// One department's scorecard.
#[derive(Debug, Serialize)]
pub struct Card {
    /// Department id.
    pub id: String,
    /// Chinese name.
    pub name_zh: String,
    /// English name.
    pub name_en: String,
    /// Datasets it owns in the catalog.
    pub datasets_declared: usize,
    /// Of those, how many have data on the bus.
    pub datasets_publishing: usize,
    /// publishing / declared (挂接率); `None` for a department that owns none.
    pub mount_rate: Option<f64>,
    /// Records in its canonical topics.
    pub records_published: u64,
    /// Records refused, at the gateway, the table-dump adapter or the router.
    pub records_rejected: u64,
    /// rejected / (published + rejected).
    pub rejection_rate: Option<f64>,
    /// Rejections by reason code.
    pub rejections: BTreeMap<String, u64>,
    /// Its datasets.
    pub datasets: Vec<DatasetLine>,
    /// Grants on its datasets, with deliveries.
    pub subscriptions: Vec<SubscriptionLine>,
}

/// One dataset's line.
#[derive(Debug, Serialize)]
pub struct DatasetLine {
    /// Dataset name.
    pub name: String,
    /// Title.
    pub title_zh: String,
    /// Records in `data.<dataset>`.
    pub records: u64,
    /// Age of the newest record, seconds.
    pub newest_age_seconds: Option<f64>,
    /// The catalog's freshness promise, seconds.
    pub freshness_sla_seconds: u64,
    /// Whether the newest record is within the promise.
    pub fresh: bool,
}

/// One grant's line.
#[derive(Debug, Serialize)]
pub struct SubscriptionLine {
    /// Subscription id.
    pub id: String,
    /// Receiving department.
    pub subscriber: String,
    /// Dataset.
    pub dataset: String,
    /// Sink type.
    pub sink: String,
    /// Events delivered (from the sink's metrics).
    pub delivered: u64,
    /// Live-interface calls answered (from `govbus query`'s metrics).
    pub calls: u64,
    /// Whether the sink reports it active (`None`: no sink metrics seen).
    pub active: Option<bool>,
}

/// What a topic holds, as far as the report cares.
#[derive(Debug, Default, Clone)]
struct TopicCount {
    records: u64,
    newest_ms: Option<i64>,
    reasons: BTreeMap<String, u64>,
}

/// Reads each topic to its end, in parallel.
fn count_topics(
    bootstrap: &str,
    topics: Vec<String>,
) -> anyhow::Result<BTreeMap<String, TopicCount>> {
    let handles: Vec<_> = topics
        .into_iter()
        .map(|topic| {
            let bootstrap = bootstrap.to_owned();
            std::thread::spawn(move || {
                let mut c = TopicCount::default();
                let r = govbus_kafka::read::each(
                    &bootstrap,
                    &topic,
                    Duration::from_millis(1500),
                    Duration::from_secs(120),
                    |r| {
                        c.records += 1;
                        c.newest_ms = c.newest_ms.max(r.timestamp_ms);
                        let reason = r.header(h::ERROR_REASON);
                        if !reason.is_empty() {
                            *c.reasons.entry(reason.to_owned()).or_default() += 1;
                        }
                    },
                );
                (topic, r.map(|()| c))
            })
        })
        .collect();
    let mut out = BTreeMap::new();
    for hnd in handles {
        let (topic, r) = hnd
            .join()
            .map_err(|_| anyhow::anyhow!("a topic reader panicked"))?;
        // A topic that does not exist yet holds nothing.
        out.insert(topic, r.unwrap_or_default());
    }
    Ok(out)
}

/// Builds the report from the broker and the metrics text of the components.
pub fn gather(
    catalog: &Catalog,
    bootstrap: &str,
    topics: &Topics,
    metrics: &str,
    now_ms: i64,
) -> anyhow::Result<Report> {
    let samples = promtext::parse(metrics);
    let mut names: Vec<String> = catalog.datasets().map(|d| topics.data(&d.name)).collect();
    names.extend(catalog.departments().map(|d| topics.dlq(&d.id)));
    let counts = count_topics(bootstrap, names)?;
    let count = |t: &str| counts.get(t).cloned().unwrap_or_default();
    let has_sink_metrics = samples.iter().any(|s| s.name == "govbus_sink_active");
    let mut departments = Vec::new();
    for d in catalog.departments() {
        let mut rejections = count(&topics.dlq(&d.id)).reasons;
        for s in samples_of(&samples, "govbus_gateway_records_total", &d.id) {
            let outcome = s.label("outcome");
            if outcome != "accepted" && s.value > 0.0 {
                *rejections.entry(outcome.to_owned()).or_default() += s.value as u64;
            }
        }
        for s in samples_of(&samples, "govbus_snapshot_rejected_rows_total", &d.id)
            .chain(samples_of(&samples, "govbus_capture_rejected_total", &d.id))
        {
            if s.value > 0.0 {
                *rejections.entry(s.label("reason").to_owned()).or_default() += s.value as u64;
            }
        }
        let mut datasets = Vec::new();
        let mut subscriptions = Vec::new();
        for ds in catalog.datasets().filter(|ds| ds.owner == d.id) {
            let c = count(&topics.data(&ds.name));
            let age = c.newest_ms.map(|t| ((now_ms - t).max(0) as f64) / 1000.0);
            let sla = ds.freshness.as_secs();
            datasets.push(DatasetLine {
                name: ds.name.clone(),
                title_zh: ds.title_zh.clone(),
                records: c.records,
                newest_age_seconds: age,
                freshness_sla_seconds: sla,
                fresh: age.is_some_and(|a| a <= sla as f64),
            });
            for s in catalog.subscriptions().filter(|s| s.dataset == ds.name) {
                let filter = [("subscription", s.id.as_str())];
                subscriptions.push(SubscriptionLine {
                    id: s.id.clone(),
                    subscriber: s.subscriber.clone(),
                    dataset: s.dataset.clone(),
                    sink: s.sink.kind().to_owned(),
                    delivered: promtext::sum(&samples, "govbus_sink_delivered_total", &filter)
                        as u64,
                    calls: promtext::sum(
                        &samples,
                        "govbus_query_calls_total",
                        &[("subscription", s.id.as_str()), ("status", "200")],
                    ) as u64,
                    active: if s.sink.kind() == "api" {
                        samples
                            .iter()
                            .any(|x| x.name == "govbus_query_grant_active")
                            .then(|| {
                                promtext::sum(&samples, "govbus_query_grant_active", &filter) > 0.0
                            })
                    } else {
                        has_sink_metrics
                            .then(|| promtext::sum(&samples, "govbus_sink_active", &filter) > 0.0)
                    },
                });
            }
        }
        let declared = datasets.len();
        let publishing = datasets.iter().filter(|l| l.records > 0).count();
        let published: u64 = datasets.iter().map(|l| l.records).sum();
        let rejected: u64 = rejections.values().sum();
        let attempted = published + rejected;
        departments.push(Card {
            id: d.id.clone(),
            name_zh: d.name_zh.clone(),
            name_en: d.name_en.clone(),
            datasets_declared: declared,
            datasets_publishing: publishing,
            mount_rate: (declared > 0).then(|| publishing as f64 / declared as f64),
            records_published: published,
            records_rejected: rejected,
            rejection_rate: (attempted > 0).then(|| rejected as f64 / attempted as f64),
            rejections,
            datasets,
            subscriptions,
        });
    }
    let fraud = samples
        .iter()
        .any(|s| s.name == "govbus_fraud_alerts_standing")
        .then(|| {
            let standing = promtext::sum(&samples, "govbus_fraud_alerts_standing", &[]) as u64;
            let withdrawn = promtext::sum(&samples, "govbus_fraud_alerts_withdrawn", &[]) as u64;
            FraudLine {
                raised: standing + withdrawn,
                standing,
                withdrawn,
            }
        });
    let lines = || departments.iter().flat_map(|c| c.datasets.iter());
    let published: Vec<&str> = lines()
        .filter(|l| l.records > 0)
        .map(|l| l.name.as_str())
        .collect();
    let used = published
        .iter()
        .filter(|ds| {
            departments
                .iter()
                .flat_map(|c| c.subscriptions.iter())
                .any(|s| s.dataset == **ds && (s.delivered > 0 || s.calls > 0))
        })
        .count();
    let usage = Usage {
        datasets_published: published.len(),
        datasets_used: used,
        rate: (!published.is_empty()).then(|| used as f64 / published.len() as f64),
    };
    Ok(Report {
        generated_at: govbus_catalog::time::format_rfc3339_millis(now_ms),
        departments,
        fraud,
        usage,
    })
}

fn samples_of<'s>(
    samples: &'s [Sample],
    name: &'s str,
    department: &'s str,
) -> impl Iterator<Item = &'s Sample> {
    samples
        .iter()
        .filter(move |s| s.name == name && s.label("department") == department)
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "—".to_owned(), |v| format!("{:.1} %", v * 100.0))
}

fn age(seconds: Option<f64>) -> String {
    match seconds {
        None => "never".to_owned(),
        Some(s) if s < 120.0 => format!("{s:.0} s ago"),
        Some(s) if s < 7200.0 => format!("{:.0} min ago", s / 60.0),
        Some(s) => format!("{:.1} h ago", s / 3600.0),
    }
}

impl Report {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        o.push_str("# govbus department scorecard / 部门数据共享评分\n\n");
        o.push_str(&format!(
            "Generated {} from the running system: records and freshness from the canonical topics, rejections from the dead-letter topics and the components' metrics.\n\n",
            md(&self.generated_at)
        ));
        o.push_str("| Department | Declared | Publishing | Mount rate | Published | Rejected | Rejection rate | Deliveries |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for c in &self.departments {
            let delivered: u64 = c.subscriptions.iter().map(|s| s.delivered).sum();
            o.push_str(&format!(
                "| {} {} | {} | {} | {} | {} | {} | {} | {} |\n",
                md(&c.id),
                md(&c.name_zh),
                c.datasets_declared,
                c.datasets_publishing,
                pct(c.mount_rate),
                c.records_published,
                c.records_rejected,
                pct(c.rejection_rate),
                delivered
            ));
        }
        o.push_str(&format!(
            "\nUsage rate (datasets delivered or called / datasets published): {} ({} of {})\n",
            pct(self.usage.rate),
            self.usage.datasets_used,
            self.usage.datasets_published
        ));
        o.push_str("\n## Mount rate (datasets with data / declared)\n\n```\n");
        for c in self.departments.iter().filter(|c| c.datasets_declared > 0) {
            let rate = c.mount_rate.unwrap_or(0.0);
            let bar = "█".repeat((rate * 30.0).round() as usize);
            // Inside a code block only a line break could escape it.
            let id = crate::cmd::escape(&c.id);
            o.push_str(&format!("{id:<18} {bar:<30} {}\n", pct(c.mount_rate)));
        }
        o.push_str("```\n");
        if let Some(f) = &self.fraud {
            o.push_str(&format!(
                "\n## Fraud alerts / 社保待遇疑点\n\n| Raised | Standing | Withdrawn |\n|---:|---:|---:|\n| {} | {} | {} |\n",
                f.raised, f.standing, f.withdrawn
            ));
        }
        for c in &self.departments {
            o.push_str(&format!(
                "\n## {} {} ({})\n\n",
                md(&c.name_zh),
                md(&c.name_en),
                md(&c.id)
            ));
            if c.datasets_declared == 0 {
                o.push_str("Owns no datasets (a subscriber only).\n");
                continue;
            }
            o.push_str(
                "| Dataset | Records | Newest | Freshness SLA | Fresh |\n|---|---:|---|---|---|\n",
            );
            for d in &c.datasets {
                o.push_str(&format!(
                    "| {} {} | {} | {} | {} | {} |\n",
                    md(&d.name),
                    md(&d.title_zh),
                    d.records,
                    age(d.newest_age_seconds),
                    humantime::format_duration(Duration::from_secs(d.freshness_sla_seconds)),
                    if d.fresh { "yes" } else { "**no**" }
                ));
            }
            if !c.rejections.is_empty() {
                o.push_str("\n| Rejection reason | Records |\n|---|---:|\n");
                for (r, n) in &c.rejections {
                    o.push_str(&format!("| `{}` | {n} |\n", md(r)));
                }
            }
            if !c.subscriptions.is_empty() {
                o.push_str("\n| Subscription | Subscriber | Dataset | Sink | Active | Delivered | Calls |\n|---|---|---|---|---|---:|---:|\n");
                for s in &c.subscriptions {
                    o.push_str(&format!(
                        "| {} | {} | {} | {} | {} | {} | {} |\n",
                        md(&s.id),
                        md(&s.subscriber),
                        md(&s.dataset),
                        md(&s.sink),
                        s.active.map_or("?", |a| if a { "yes" } else { "no" }),
                        s.delivered,
                        s.calls
                    ));
                }
            }
        }
        o
    }

    /// The report as one self-contained HTML page with SVG charts.
    pub fn html(&self) -> String {
        let owners: Vec<&Card> = self
            .departments
            .iter()
            .filter(|c| c.datasets_declared > 0)
            .collect();
        let mount: Vec<(String, f64, String)> = owners
            .iter()
            .map(|c| (c.id.clone(), c.mount_rate.unwrap_or(0.0), pct(c.mount_rate)))
            .collect();
        let published: Vec<(String, f64, String)> = owners
            .iter()
            .map(|c| {
                (
                    c.id.clone(),
                    c.records_published as f64,
                    c.records_published.to_string(),
                )
            })
            .collect();
        let rejected: Vec<(String, f64, String)> = owners
            .iter()
            .map(|c| {
                (
                    c.id.clone(),
                    c.rejection_rate.unwrap_or(0.0),
                    pct(c.rejection_rate),
                )
            })
            .collect();
        let mut o = String::from(
            "<!doctype html>\n<html lang=\"zh\"><head><meta charset=\"utf-8\"><title>govbus department scorecard</title>\n<style>body{font-family:system-ui,'Noto Sans CJK SC',sans-serif;margin:2em;max-width:70em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}td.n{text-align:right}.bad{color:#b00;font-weight:bold}.charts{display:flex;flex-wrap:wrap;gap:2em}h2{margin-top:2em}</style></head><body>\n",
        );
        o.push_str("<h1>govbus department scorecard / 部门数据共享评分</h1>\n");
        o.push_str(&format!(
            "<p>Generated {} from the running system (canonical topics, dead-letter topics, component metrics).</p>\n<div class=\"charts\">\n",
            esc(&self.generated_at)
        ));
        o.push_str(&bar_chart("Mount rate (挂接率)", &mount, 1.0));
        let max = published.iter().map(|r| r.1).fold(1.0, f64::max);
        o.push_str(&bar_chart("Records published", &published, max));
        o.push_str(&bar_chart("Rejection rate", &rejected, 1.0));
        o.push_str("</div>\n<table><tr><th>Department</th><th>Declared</th><th>Publishing</th><th>Mount rate</th><th>Published</th><th>Rejected</th><th>Rejection rate</th></tr>\n");
        for c in &self.departments {
            o.push_str(&format!(
                "<tr><td>{} {}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>\n",
                esc(&c.id), esc(&c.name_zh), c.datasets_declared, c.datasets_publishing, pct(c.mount_rate),
                c.records_published, c.records_rejected, pct(c.rejection_rate)
            ));
        }
        o.push_str("</table>\n");
        for c in owners {
            o.push_str(&format!(
                "<h2>{} {} ({})</h2>\n<table><tr><th>Dataset</th><th>Records</th><th>Newest</th><th>Freshness SLA</th></tr>\n",
                esc(&c.name_zh), esc(&c.name_en), esc(&c.id)
            ));
            for d in &c.datasets {
                let class = if d.fresh { "" } else { " class=bad" };
                o.push_str(&format!(
                    "<tr><td>{} {}</td><td class=n>{}</td><td{class}>{}</td><td>{}</td></tr>\n",
                    esc(&d.name),
                    esc(&d.title_zh),
                    d.records,
                    age(d.newest_age_seconds),
                    humantime::format_duration(Duration::from_secs(d.freshness_sla_seconds))
                ));
            }
            o.push_str("</table>\n");
            if !c.rejections.is_empty() {
                let rows: Vec<(String, f64, String)> = c
                    .rejections
                    .iter()
                    .map(|(r, n)| (r.clone(), *n as f64, n.to_string()))
                    .collect();
                let max = rows.iter().map(|r| r.1).fold(1.0, f64::max);
                o.push_str(&bar_chart("Rejections by reason", &rows, max));
            }
            if !c.subscriptions.is_empty() {
                o.push_str("<table><tr><th>Subscription</th><th>Subscriber</th><th>Sink</th><th>Active</th><th>Delivered</th></tr>\n");
                for s in &c.subscriptions {
                    o.push_str(&format!(
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=n>{}</td></tr>\n",
                        esc(&s.id),
                        esc(&s.subscriber),
                        esc(&s.sink),
                        s.active.map_or("?", |a| if a { "yes" } else { "no" }),
                        s.delivered
                    ));
                }
                o.push_str("</table>\n");
            }
        }
        o.push_str("</body></html>\n");
        o
    }

    /// Writes `report.md`, `report.html` and `report.json` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let files = [
            ("report.md", self.markdown()),
            ("report.html", self.html()),
            ("report.json", serde_json::to_string_pretty(self)?),
        ];
        let mut out = Vec::new();
        for (name, text) in files {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
            out.push(p);
        }
        Ok(out)
    }
}

/// Text for HTML: markup characters as entities, and control and bidi
/// characters shown escaped (the page is also read with `cat` and `less`).
fn esc(s: &str) -> String {
    crate::cmd::escape(s)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Text for a Markdown line or table cell: control and bidi characters shown
/// escaped (so input cannot start a line of its own: a heading, a row), and
/// the characters that would end a cell or a code span or open a link
/// backslash-escaped, `<` and `>` as entities (no raw HTML).
fn md(s: &str) -> String {
    let mut out = String::new();
    for c in crate::cmd::escape(s).chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\\' | '|' | '`' | '[' | ']' | '*' | '&' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// A horizontal bar chart as inline SVG: (label, value, text) per bar.
fn bar_chart(title: &str, rows: &[(String, f64, String)], max: f64) -> String {
    let row_h = 22;
    let (label_w, bar_w) = (150, 260);
    let height = 30 + rows.len() * row_h;
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"{}\"><text x=\"0\" y=\"16\" font-weight=\"bold\" font-size=\"14\">{}</text>\n",
        label_w + bar_w + 90,
        esc(title),
        esc(title)
    );
    for (i, (label, value, text)) in rows.iter().enumerate() {
        let y = 28 + i * row_h;
        let w = if max > 0.0 {
            (value / max * bar_w as f64).max(0.0)
        } else {
            0.0
        };
        o.push_str(&format!(
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text><rect x=\"{label_w}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"#3b7dd8\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>\n",
            y + 14,
            esc(label),
            row_h - 6,
            label_w as f64 + w + 6.0,
            y + 14,
            esc(text)
        ));
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report whose every text field is `text`.
    fn report_of(text: &str) -> Report {
        Report {
            generated_at: text.to_owned(),
            departments: vec![Card {
                id: text.to_owned(),
                name_zh: text.to_owned(),
                name_en: text.to_owned(),
                datasets_declared: 1,
                datasets_publishing: 1,
                mount_rate: Some(1.0),
                records_published: 1,
                records_rejected: 1,
                rejection_rate: Some(0.5),
                rejections: BTreeMap::from([(text.to_owned(), 1)]),
                datasets: vec![DatasetLine {
                    name: text.to_owned(),
                    title_zh: text.to_owned(),
                    records: 1,
                    newest_age_seconds: Some(1.0),
                    freshness_sla_seconds: 60,
                    fresh: true,
                }],
                subscriptions: vec![SubscriptionLine {
                    id: text.to_owned(),
                    subscriber: text.to_owned(),
                    dataset: text.to_owned(),
                    sink: text.to_owned(),
                    delivered: 1,
                    calls: 1,
                    active: Some(true),
                }],
            }],
            fraud: None,
            usage: Usage {
                datasets_published: 1,
                datasets_used: 1,
                rate: Some(1.0),
            },
        }
    }

    #[test]
    fn the_fraud_line_shows_raised_standing_and_withdrawn() {
        let mut r = report_of("x");
        assert!(!r.markdown().contains("Fraud alerts"));
        r.fraud = Some(FraudLine {
            raised: 5,
            standing: 3,
            withdrawn: 2,
        });
        assert!(r.markdown().contains("| Raised | Standing | Withdrawn |"));
        assert!(r.markdown().contains("| 5 | 3 | 2 |"));
    }

    #[test]
    fn input_text_cannot_forge_report_lines_markup_or_terminal_output() {
        let hostile = "a\n\u{1b}[2J|</td><script>alert(1)</script>`\r\u{202e}## forged";
        let plain = report_of("plain");
        let bad = report_of(hostile);
        for (what, good, text) in [
            ("markdown", plain.markdown(), bad.markdown()),
            ("html", plain.html(), bad.html()),
        ] {
            assert_eq!(
                text.lines().count(),
                good.lines().count(),
                "{what}: input forged lines:\n{text}"
            );
            assert!(
                !text.contains(['\u{1b}', '\r', '\u{202e}']),
                "{what}: raw control text:\n{text}"
            );
            // Outside code blocks (where markup is shown as text).
            let markup = text
                .split("```")
                .step_by(2)
                .any(|outside| outside.contains("<script"));
            assert!(!markup, "{what}: raw markup:\n{text}");
            assert!(
                !text.lines().any(|l| l.starts_with("## forged")),
                "{what}:\n{text}"
            );
        }
        // Markdown table rows keep their cell count: `|` in input is escaped.
        let md = bad.markdown();
        let cells = |l: &str| l.replace("\\|", "").matches('|').count();
        for (good, bad) in plain
            .markdown()
            .lines()
            .zip(md.lines())
            .filter(|(good, _)| good.starts_with('|'))
        {
            assert_eq!(cells(good), cells(bad), "{bad}");
        }
    }

    #[test]
    fn charts_escape_and_scale() {
        let svg = bar_chart(
            "a<b",
            &[
                ("x&y".into(), 5.0, "5".into()),
                ("z".into(), 10.0, "10".into()),
            ],
            10.0,
        );
        assert!(svg.contains("a&lt;b") && svg.contains("x&amp;y"));
        assert!(
            svg.contains("width=\"130.0\"") && svg.contains("width=\"260.0\""),
            "{svg}"
        );
    }
}
