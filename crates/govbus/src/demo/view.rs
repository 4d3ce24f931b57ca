//! The demo's live terminal view and its closing summary.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use super::generate::Path;
use crate::promtext::{self, Sample};
use crate::up::System;

/// Where an operator, a department developer and an app developer look.
pub fn where_to_look(
    system: &System,
    sse_token: &str,
    counter_token: &str,
    dir: &FsPath,
    webhook: bool,
    postgres: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(m) = system.addrs.metrics {
        out.push(format!("metrics    http://{m}/metrics"));
    }
    if let Some(g) = system.addrs.gateway {
        out.push(format!("gateway    http://{g}/v1/datasets/{{dataset}}/records   (OpenAPI: http://{g}/openapi.json)"));
    }
    if let Some(r) = system.addrs.registry {
        out.push(format!("registry   http://{r}/subjects"));
    }
    if let Some(q) = system.addrs.query {
        out.push(format!(
            "counter    curl -H 'Authorization: Bearer {counter_token}' http://{q}/v1/query/hrss_deaths_counter_check/by/deceased_id_number/<ID>"
        ));
    }
    if let Some(s) = system.addrs.sink {
        out.push(format!(
            "live SSE   curl -N -H 'Authorization: Bearer {sse_token}' http://{s}/v1/subscriptions/public_security_deaths_live/events"
        ));
    }
    out.push(format!(
        "DLQ        govbus dlq list --bootstrap {} --department hrss",
        system.bootstrap
    ));
    out.push(format!(
        "files      {}",
        dir.join("var/deliveries/health_deaths_statistics")
            .display()
    ));
    if webhook {
        out.push(
            "webhook    http://127.0.0.1:8788/govbus/deaths (housing fund; signatures checked)"
                .to_owned(),
        );
    }
    if postgres {
        out.push("postgres   table govbus_feed.civil_affairs_deaths".to_owned());
    }
    out
}

/// The screen: redrawn in place on a terminal, a line every 5 s otherwise.
pub struct Screen {
    live: bool,
    header: String,
    where_to_look: Vec<String>,
    paths: Vec<(&'static str, Path)>,
    last_routed: f64,
    ticks: u64,
}

fn sum(s: &[Sample], name: &str, f: &[(&str, &str)]) -> f64 {
    promtext::sum(s, name, f)
}

impl Screen {
    /// A screen for a run on `bootstrap`.
    pub fn new(
        live: bool,
        bootstrap: String,
        embedded: bool,
        where_to_look: Vec<String>,
        paths: Vec<(&'static str, Path)>,
    ) -> Screen {
        let broker = if embedded {
            format!("embedded broker at {bootstrap}")
        } else {
            format!("broker {bootstrap}")
        };
        Screen {
            live,
            header: broker,
            where_to_look,
            paths,
            last_routed: 0.0,
            ticks: 0,
        }
    }

    /// Prints where to look (once, for a plain run).
    pub fn print_where(&self) {
        println!("where to look:");
        for l in &self.where_to_look {
            println!("  {l}");
        }
    }

    /// One frame from the metrics text.
    #[allow(clippy::too_many_arguments)]
    pub fn draw(
        &mut self,
        metrics: &str,
        elapsed: Duration,
        duration: Duration,
        found: usize,
        planted: usize,
        by_rule: &BTreeMap<&'static str, usize>,
        per_rule: usize,
    ) {
        self.ticks += 1;
        let s = promtext::parse(metrics);
        let routed = sum(&s, "govbus_router_records_routed_total", &[]);
        let rate = routed - self.last_routed;
        self.last_routed = routed;
        let rejected_router = sum(&s, "govbus_router_records_rejected_total", &[]);
        let lag = sum(&s, "govbus_router_consumer_lag", &[]);
        if !self.live {
            if self.ticks % 5 == 0 {
                println!(
                    "t={:>3}s routed={routed:.0} rejected_at_router={rejected_router:.0} router_lag={lag:.0} alerts={found}/{planted}",
                    elapsed.as_secs()
                );
            }
            return;
        }
        let mut out = Vec::new();
        let phase = if elapsed < duration {
            "publishing"
        } else {
            "draining"
        };
        out.push(format!(
            "\x1b[1mgovbus demo\x1b[0m  {:>3}s / {}s {phase}  ·  {}  ·  Ctrl-C stops",
            elapsed.as_secs(),
            duration.as_secs(),
            self.header
        ));
        out.push(String::new());
        out.push(format!(
            "\x1b[1m{:<45} {:<10} {:>6} {:>9} {:>9}\x1b[0m",
            "PUBLISHED (dataset)", "PATH", "SENT", "ON BUS", "REJECTED"
        ));
        for &(ds, path) in &self.paths {
            let sent = sum(&s, "govbus_demo_records_sent_total", &[("dataset", ds)]);
            let on_bus = sum(&s, "govbus_router_records_routed_total", &[("dataset", ds)]);
            let rejected = rejections_for(&s, ds);
            out.push(format!(
                "{ds:<45} {:<10} {sent:>6.0} {on_bus:>9.0} {rejected:>9.0}",
                path.name()
            ));
        }
        out.push(format!("router: {routed:.0} routed ({rate:.0}/s), {rejected_router:.0} to dead-letter topics, lag {lag:.0}"));
        out.push(String::new());
        let mut reasons: BTreeMap<String, f64> = BTreeMap::new();
        for x in &s {
            let reason = match x.name.as_str() {
                "govbus_router_records_rejected_total"
                | "govbus_snapshot_rejected_rows_total"
                | "govbus_capture_rejected_total" => x.label("reason"),
                "govbus_gateway_records_total" if x.label("outcome") != "accepted" => {
                    x.label("outcome")
                }
                _ => continue,
            };
            *reasons.entry(reason.to_owned()).or_default() += x.value;
        }
        let reasons: Vec<String> = reasons
            .iter()
            .filter(|(_, n)| **n > 0.0)
            .map(|(r, n)| format!("{r} {n:.0}"))
            .collect();
        out.push(format!(
            "\x1b[1mREJECTIONS BY REASON\x1b[0m  {}",
            if reasons.is_empty() {
                "none yet".to_owned()
            } else {
                reasons.join(" · ")
            }
        ));
        out.push(String::new());
        out.push(format!(
            "\x1b[1m{:<32} {:>9} {:>6}\x1b[0m",
            "DELIVERED (subscription)", "EVENTS", "LAG"
        ));
        let mut subs: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        for x in &s {
            match x.name.as_str() {
                "govbus_sink_delivered_total" => {
                    subs.entry(x.label("subscription")).or_default().0 += x.value
                }
                "govbus_sink_lag_records" => {
                    subs.entry(x.label("subscription")).or_default().1 += x.value
                }
                _ => {}
            }
        }
        for (sub, (d, l)) in &subs {
            out.push(format!("{sub:<32} {d:>9.0} {l:>6.0}"));
        }
        let webhook = sum(
            &s,
            "govbus_demo_webhook_events_total",
            &[("verified", "yes")],
        );
        if webhook > 0.0 {
            out.push(format!(
                "webhook receiver: {webhook:.0} events with a valid signature"
            ));
        }
        out.push(String::new());
        let rules: Vec<String> = by_rule
            .iter()
            .map(|(r, n)| format!("{r} {n}/{per_rule}"))
            .collect();
        out.push(format!(
            "\x1b[1mFRAUD ALERTS\x1b[0m  {found} found / {planted} planted   {}",
            rules.join(" · ")
        ));
        out.push(String::new());
        out.push("\x1b[1mWHERE TO LOOK\x1b[0m".to_owned());
        out.extend(self.where_to_look.iter().map(|l| format!("  {l}")));
        let mut stdout = std::io::stdout().lock();
        // Home and clear, then the frame: long lines may wrap, so counting
        // lines to move back over would drift.
        let _ = write!(stdout, "\x1b[H\x1b[J");
        for l in &out {
            let _ = writeln!(stdout, "{l}");
        }
        let _ = stdout.flush();
    }

    /// Leaves the last frame on screen.
    pub fn finish(&mut self) {
        if self.live {
            println!();
        }
    }
}

/// Rejections of one dataset at the gateway, the table dump and the router.
fn rejections_for(s: &[Sample], dataset: &str) -> f64 {
    s.iter()
        .filter(|x| x.label("dataset") == dataset)
        .filter(|x| match x.name.as_str() {
            "govbus_router_records_rejected_total"
            | "govbus_snapshot_rejected_rows_total"
            | "govbus_capture_rejected_total" => true,
            "govbus_gateway_records_total" => x.label("outcome") != "accepted",
            _ => false,
        })
        .map(|x| x.value)
        .sum()
}

/// The closing summary.
pub fn print_summary(v: &super::Verdict, files: &[PathBuf], interrupted: bool) {
    println!(
        "{}",
        if interrupted {
            "demo interrupted; summary so far:"
        } else {
            "demo finished:"
        }
    );
    for (ds, c) in &v.sent {
        println!(
            "  {ds:<45} {:<10} sent {:>5} valid, {:>3} invalid",
            c.path.name(),
            c.valid,
            c.invalid
        );
    }
    for (rule, p) in &v.planted {
        println!(
            "  fraud {rule:<28} found {} of {p} planted",
            v.found.get(rule).copied().unwrap_or(0)
        );
    }
    println!(
        "  unexpected alerts: {}, duplicate alerts: {} (alert updates: {})",
        v.unexpected, v.duplicates, v.updates
    );
    let d = &v.detection_ms;
    println!(
        "  detection latency (last matching record published → alert on the bus), {} cases: p50 {} ms, max {} ms",
        d.cases, d.p50, d.max
    );
    if let Some(c) = &v.counter {
        println!(
            "  pension counter (live interface, 核验): a registered death → {}; a living claimant → {}; answered in {} ms",
            c.deceased, c.living, c.answer_ms
        );
    }
    for f in files {
        println!("  report: {}", f.display());
    }
}
