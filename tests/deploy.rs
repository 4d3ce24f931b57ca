//! The deployment kit: the compose file and Grafana provisioning parse, the
//! alert rules pass promtool, every metric the rules and the dashboard use
//! is one govbus defines, and a real Prometheus scrapes a running govbus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// YAML → JSON with PyYAML (installed with the Python test clients).
fn yaml(path: &std::path::Path) -> Json {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn compose_and_grafana_provisioning_parse_and_name_what_they_need() {
    let repo = common::repo();
    let compose = yaml(&repo.join("docker-compose.yml"));
    let services = compose["services"].as_object().unwrap();
    for s in [
        "kafka",
        "postgres",
        "govbus",
        "router",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(s), "compose has no {s} service");
    }
    let kafka = &services["kafka"];
    assert!(kafka["image"]
        .as_str()
        .unwrap()
        .starts_with("apache/kafka:"));
    assert_eq!(
        kafka["environment"]["KAFKA_PROCESS_ROLES"], "broker,controller",
        "KRaft, no ZooKeeper"
    );
    // Every file the compose file mounts from the repository exists.
    for svc in services.values() {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            if let Some(rel) = src.strip_prefix("./") {
                assert!(
                    repo.join(rel).exists(),
                    "compose mounts {src}, which does not exist"
                );
            }
        }
    }
    assert!(repo
        .join(services["govbus"]["build"]["dockerfile"].as_str().unwrap())
        .exists());
    let ds = yaml(&repo.join("deploy/grafana/provisioning/datasources/prometheus.yml"));
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    let dash = yaml(&repo.join("deploy/grafana/provisioning/dashboards/govbus.yml"));
    assert_eq!(
        dash["providers"][0]["options"]["path"],
        "/var/lib/grafana/dashboards"
    );
}

/// Every `govbus_*` name in `text`, without histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("govbus_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        out.insert(name.to_owned());
        rest = &tail[end..];
    }
    out
}

/// Every metric name the Rust sources register (string literals).
fn defined_metrics() -> BTreeSet<String> {
    fn walk(dir: &std::path::Path, out: &mut String) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let mut src = String::new();
    walk(&common::repo().join("crates"), &mut src);
    // Every `"govbus_…"` literal: found by its opening quote, not by the
    // parity of quotes (a `'"'` char literal anywhere would flip it).
    src.match_indices("\"govbus_")
        .filter_map(|(i, _)| {
            let name = &src[i + 1..];
            let end = name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
            (name[end..].starts_with('"')).then(|| name[..end].to_owned())
        })
        .collect()
}

#[test]
fn alert_rules_pass_promtool_and_use_only_metrics_govbus_defines() {
    let repo = common::repo();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo.join("deploy/prometheus/alerts.yml"))
        .output()
        .expect("promtool (Debian package prometheus; scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(repo.join("deploy/prometheus"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let defined = defined_metrics();
    let rules = std::fs::read_to_string(repo.join("deploy/prometheus/alerts.yml")).unwrap();
    let dashboard: Json = serde_json::from_str(
        &std::fs::read_to_string(repo.join("deploy/grafana/dashboards/govbus.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in [
        "per department",
        "Rejections by reason",
        "Lag per subscription",
        "End-to-end latency",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel for {want}: {titles:?}"
        );
    }
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_owned())
        })
        .collect();
    let used: BTreeSet<String> = metric_names(&rules)
        .into_iter()
        .chain(exprs.iter().flat_map(|e| metric_names(e)))
        .collect();
    assert!(used.len() >= 12, "{used:?}");
    let unknown: Vec<&String> = used.iter().filter(|m| !defined.contains(*m)).collect();
    assert!(
        unknown.is_empty(),
        "the rules or dashboard use metrics govbus does not define: {unknown:?}"
    );
}

fn get(port: u16, path: &str) -> Json {
    let text = common::http_get(port, path);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(Json::Null)
}

#[test]
fn a_real_prometheus_scrapes_govbus_and_evaluates_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("govbus.toml");
    // Every component on the embedded broker, on free ports.
    std::fs::write(
        &config,
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[registry]\nlisten = \"127.0.0.1:0\"\n[gateway]\nlisten = \"127.0.0.1:0\"\n[router]\n[sink]\nlisten = \"127.0.0.1:0\"\nsubscriptions = [\"hrss_fraud_deaths\"]\n",
    )
    .unwrap();
    let up = common::Up::start(&config);
    let metrics = up.port("metrics");

    let prom = common::free_port();
    std::fs::copy(
        common::repo().join("deploy/prometheus/alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("prometheus.yml"), format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alerts.yml]\nscrape_configs:\n  - job_name: govbus\n    static_configs:\n      - targets: [\"127.0.0.1:{metrics}\"]\n"
    )).unwrap();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!(
        "--config.file={}",
        dir.path().join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.path().join("tsdb").display()
    ))
    .arg(format!("--web.listen-address=127.0.0.1:{prom}"))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut prometheus =
        govbus_testkit::spawn(cmd).expect("prometheus (Debian package; scripts/test installs it)");
    common::wait_listening(prom);

    let started = Instant::now();
    let (ready, freshness) = loop {
        let r = get(prom, "/api/v1/query?query=govbus_router_ready");
        let f = get(prom, "/api/v1/query?query=govbus_catalog_freshness_seconds%7Bdataset%3D%22civil_affairs.death_registration%22%7D");
        let value = |v: &Json| {
            v["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned)
        };
        if let (Some(a), Some(b)) = (value(&r), value(&f)) {
            break (a, b);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Prometheus has no govbus metric after 60 s: {r}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(ready, "1", "the router reports itself connected");
    assert_eq!(freshness, "86400", "the catalog's 24 h promise for deaths");
    // The rules load and evaluate without errors against real govbus series.
    let expected = std::fs::read_to_string(common::repo().join("deploy/prometheus/alerts.yml"))
        .unwrap()
        .matches("- alert:")
        .count();
    let started = Instant::now();
    loop {
        let rules = get(prom, "/api/v1/rules");
        let all: Vec<&Json> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        if all.len() == expected && all.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "rules not all healthy: {rules}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    prometheus.kill().unwrap();
    prometheus.wait().unwrap();
}
