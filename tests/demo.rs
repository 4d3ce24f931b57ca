//! `govbus demo`, the anti-fraud app, `govbus report`, `govbus up` and
//! `govbus check`, as a user runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

fn demo(dir: &std::path::Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(common::govbus_bin());
    cmd.args(["demo", "--plain", "--port-base", "0", "--dir"])
        .arg(dir)
        .args(extra)
        .env("GOVBUS_LOG", "warn")
        .env_remove("GOVBUS_POSTGRES")
        .env_remove("GOVBUS_MYSQL");
    cmd
}

fn json(path: &std::path::Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// What the demo's summary promises, checked against the report the same
/// run wrote from the broker and the metrics.
fn assert_report_matches(dir: &std::path::Path) {
    let summary = json(&dir.join("summary.json"));
    let report = json(&dir.join("report/report.json"));
    let mut rejected_by_dept: std::collections::BTreeMap<String, u64> = Default::default();
    let datasets: Vec<&Json> = report["departments"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["datasets"].as_array().unwrap())
        .collect();
    for (ds, sent) in summary["sent"].as_object().unwrap() {
        let line = datasets.iter().find(|d| d["name"] == ds.as_str()).unwrap();
        assert_eq!(
            line["records"], sent["valid"],
            "{ds}: records on the bus vs valid records sent"
        );
        assert!(
            sent["invalid"].as_u64().unwrap() > 0,
            "{ds} sent no invalid records"
        );
        let owner = ds.split('.').next().unwrap().to_owned();
        *rejected_by_dept.entry(owner).or_default() += sent["invalid"].as_u64().unwrap();
    }
    let planted: u64 = summary["planted"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let alerts = datasets
        .iter()
        .find(|d| d["name"] == "hrss.fraud_alert")
        .unwrap();
    assert_eq!(
        alerts["records"].as_u64().unwrap(),
        planted,
        "alerts published through govbus"
    );
    for d in report["departments"].as_array().unwrap() {
        let id = d["id"].as_str().unwrap();
        let expected = rejected_by_dept.get(id).copied().unwrap_or(0);
        assert_eq!(
            d["records_rejected"].as_u64().unwrap(),
            expected,
            "{id}: rejections"
        );
        if expected > 0 {
            assert_eq!(
                d["datasets_publishing"], d["datasets_declared"],
                "{id}: every declared dataset publishes"
            );
            assert_eq!(d["mount_rate"].as_f64().unwrap(), 1.0, "{id}");
        }
    }
    // Deliveries are counted per grant; the webhook receiver checked signatures.
    let civil = report["departments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "civil_affairs")
        .unwrap();
    let deaths_valid = summary["sent"]["civil_affairs.death_registration"]["valid"]
        .as_u64()
        .unwrap();
    let file_sub = civil["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "health_deaths_statistics")
        .unwrap();
    assert_eq!(file_sub["delivered"].as_u64().unwrap(), deaths_valid);
    let md = std::fs::read_to_string(dir.join("report/report.md")).unwrap();
    assert!(
        md.contains("| civil_affairs 民政局 | 1 | 1 | 100.0 % |"),
        "{md}"
    );
    let html = std::fs::read_to_string(dir.join("report/report.html")).unwrap();
    assert!(
        html.contains("<svg") && html.contains("Mount rate"),
        "the HTML report has its charts"
    );
    // The file sink delivered below the demo's directory.
    let files = std::fs::read_dir(dir.join("var/deliveries/health_deaths_statistics"))
        .unwrap()
        .count();
    assert!(files > 0);
}

#[test]
fn the_demo_finds_exactly_the_planted_fraud_and_reports_every_department() {
    let dir = tempfile::tempdir().unwrap();
    let out = demo(dir.path(), &["--duration", "30s"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "fraud paid_after_death             found 3 of 3 planted",
        "fraud unemployment_with_pension    found 3 of 3 planted",
        "fraud unemployment_while_employed  found 3 of 3 planted",
        "unexpected alerts: 0, duplicate alerts: 0",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert_report_matches(dir.path());
}

/// `--postgres` and `--mysql`: HRSS's contributions come from a PostgreSQL
/// table through the WAL capture and market regulation's enterprises from
/// a MariaDB table through the binlog capture, invalid rows included; the
/// scorecard counts what each capture published and rejected, and the demo
/// leaves no replication slot behind.
#[test]
fn the_demo_captures_departments_from_postgresql_and_mysql() {
    let _machine = common::mariadb_exclusive();
    let dir = tempfile::tempdir().unwrap();
    let conninfo = govbus_testkit::PgSchema::conninfo_default();
    let out = demo(
        dir.path(),
        &[
            "--duration",
            "15s",
            "--postgres",
            &conninfo,
            "--mysql",
            "mysql://root@127.0.0.1:3306/test",
        ],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "hrss.social_insurance_contribution            postgres",
        "market_regulation.enterprise_registration     mysql",
        "unexpected alerts: 0, duplicate alerts: 0",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert_report_matches(dir.path());
    let slots = std::process::Command::new("psql")
        .arg(&conninfo)
        .arg("-Atc")
        .arg("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'govbus_demo'")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&slots.stdout).trim(), "0");
}

/// Reads `name` from a Prometheus exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn the_fraud_app_killed_mid_run_neither_misses_nor_repeats_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("fraud-state");
    let mut child = demo(
        dir.path(),
        &[
            "--duration",
            "40s",
            "--fraud-cases",
            "5",
            "--external-fraud-app",
            "--seed",
            "11",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let bootstrap = loop {
        let l = lines.next().expect("the demo printed its broker").unwrap();
        if let Some(b) = l.strip_prefix("bootstrap=") {
            break b.to_owned();
        }
    };
    let start_app = |port: u16, fail_point: &str| {
        let mut cmd = Command::new(common::govbus_bin());
        cmd.args(["fraud", "--bootstrap", &bootstrap, "--state-dir"])
            .arg(&state)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("GOVBUS_LOG", "warn")
            .env("GOVBUS_FRAUD_FAIL_POINT", fail_point)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        govbus_testkit::spawn(cmd).unwrap()
    };
    // First run: dies right after the broker acknowledged its first alerts,
    // before the checkpoint that covers them (the worst moment).
    let mut app = start_app(common::free_port(), "after_publish");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = app.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(90) {
            app.kill().unwrap();
            app.wait().unwrap();
            panic!("the first run did not reach its fail point within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "the first run aborted at the fail point");
    // Second run: recovers those alerts from its own output, is killed -9
    // as soon as it has published more.
    let port = common::free_port();
    let mut app = start_app(port, "");
    common::wait_listening(port);
    let started = Instant::now();
    let (recovered, published_before_kill) = loop {
        let text = common::http_get(port, "/metrics");
        let n = metric(&text, "govbus_fraud_alerts_total");
        if n >= 1.0 {
            break (metric(&text, "govbus_fraud_recovered_alerts"), n);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no alert within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        recovered >= 1.0,
        "the alerts of the aborted run were found in the output"
    );
    app.kill().unwrap();
    app.wait().unwrap();
    assert!(
        published_before_kill < 14.0,
        "the kill came before the last alert"
    );
    // Third run, from whatever checkpoint the second one left.
    std::thread::sleep(Duration::from_secs(1));
    let port = common::free_port();
    let mut app = start_app(port, "");
    // The demo waits for the alerts, then checks them: missing, unexpected
    // and duplicated alerts make it fail.
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    app.kill().unwrap();
    app.wait().unwrap();
    let text = rest.join("\n");
    assert!(status.success(), "{text}");
    for l in text.lines().filter(|l| l.contains("duplicate alerts")) {
        println!("{}", l.trim());
    }
    // The demo corrects nothing, so an alert that changed after the kills
    // flapped: the restart published a state the killed run had moved past.
    assert!(
        text.contains("unexpected alerts: 0, duplicate alerts: 0 (alert updates: 0)"),
        "{text}"
    );
    for rule in [
        "paid_after_death",
        "unemployment_with_pension",
        "unemployment_while_employed",
    ] {
        let line = format!("fraud {rule:<28} found 5 of 5 planted");
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    let summary = json(&dir.path().join("summary.json"));
    assert_eq!(summary["duplicates"], 0);
    assert_eq!(summary["missing"].as_array().unwrap().len(), 0);
}

#[test]
fn check_names_each_problem_and_up_runs_a_config_on_a_real_broker() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[sink]\nsubscriptions = [\"no_such_grant\"]\n[gateway]\ncredentials = \"missing.toml\"\n",
    )
    .unwrap();
    let out = Command::new(common::govbus_bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("[sink] subscriptions: no_such_grant is not in the catalog"),
        "{err}"
    );
    assert!(
        err.contains("[gateway] credentials:") && err.contains("missing.toml"),
        "{err}"
    );

    // A good config on the shared Tansu broker: gateway + router + metrics in one process.
    let bootstrap = govbus_testkit::Broker::shared().bootstrap();
    let topics = govbus_kafka::topics::Topics::new(format!("{}.", govbus_testkit::unique("up")));
    let (token, creds) = common::new_credential("hrss", dir.path());
    let config = dir.path().join("govbus.toml");
    std::fs::write(
        &config,
        format!(
            "topic_prefix = \"{}\"\n[broker]\nbootstrap = \"{bootstrap}\"\nkafka = {{ \"session.timeout.ms\" = \"6000\" }}\n[metrics]\nlisten = \"127.0.0.1:0\"\n[gateway]\nlisten = \"127.0.0.1:0\"\ncredentials = \"{}\"\n[router]\ngroup = \"{}\"\n",
            topics.prefix(),
            creds.display(),
            govbus_testkit::unique("up-router")
        ),
    )
    .unwrap();
    let out = Command::new(common::govbus_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("config OK"));
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(govbus_testkit::create_topic(
            &bootstrap,
            &topics.ingest("hrss"),
            1,
        ))
        .unwrap();
    let up = common::Up::start(&config);
    let (gw, metrics) = (up.port("gateway"), up.port("metrics"));
    let body = r#"[{"payment_id":"PP-UP-1","recipient_id_number":"11010519491231002X","recipient_name":"张建国","pension_type":"ENTERPRISE_EMPLOYEE","pay_month":"2026-10","amount":"3000.00","paid_at":"2026-10-15T02:00:00Z"}]"#;
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-H",
        ])
        .arg(format!("Authorization: Bearer {token}"))
        .args(["-H", "content-type: application/json", "--data", body])
        .arg(format!(
            "http://127.0.0.1:{gw}/v1/datasets/hrss.pension_payment/records"
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let started = Instant::now();
    loop {
        let text = common::http_get(metrics, "/metrics");
        if metric(&text, "govbus_router_records_routed_total") >= 1.0 {
            assert!(
                text.contains("govbus_gateway_records_total"),
                "one /metrics for every component"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not routed within 60 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Readiness comes from the client's statistics (every second).
    let started = Instant::now();
    loop {
        let ready = common::http_get(metrics, "/ready");
        if ready.contains("200 OK") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not ready:\n{ready}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The HTTP status of a request (a live stream is cut after 2 s; its status
/// is what the server answered first).
fn status(method: &str, url: &str, token: &str, body: Option<&str>) -> String {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "2",
    ])
    .args(["-X", method, "-H"])
    .arg(format!("Authorization: Bearer {token}"));
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "--data", b]);
    }
    let out = cmd.arg(url).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every component that takes subscriber or publisher tokens (gateway, live
/// streams, live interfaces) follows the credentials file while it runs: a
/// token removed from it is refused within seconds, without a restart.
#[test]
fn a_token_removed_from_the_credentials_file_is_refused_everywhere_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = govbus_testkit::Broker::shared().bootstrap();
    let topics = govbus_kafka::topics::Topics::new(format!("{}.", govbus_testkit::unique("cred")));
    let (hrss, creds) = common::new_credential("hrss", dir.path());
    let (police_dir, spare_dir) = (dir.path().join("police"), dir.path().join("spare"));
    std::fs::create_dir_all(&police_dir).unwrap();
    std::fs::create_dir_all(&spare_dir).unwrap();
    let (police, police_creds) = common::new_credential("public_security", &police_dir);
    let (_, spare_creds) = common::new_credential("hrss", &spare_dir);
    let both = std::fs::read_to_string(&creds).unwrap()
        + "\n"
        + &std::fs::read_to_string(&police_creds).unwrap();
    std::fs::write(&creds, &both).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for t in [
        topics.ingest("hrss"),
        topics.data("civil_affairs.death_registration"),
    ] {
        rt.block_on(govbus_testkit::create_topic(&bootstrap, &t, 1))
            .unwrap();
    }
    let config = dir.path().join("govbus.toml");
    std::fs::write(
        &config,
        format!(
            "topic_prefix = \"{prefix}\"\n[broker]\nbootstrap = \"{bootstrap}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [gateway]\nlisten = \"127.0.0.1:0\"\ncredentials = \"{c}\"\n\
             [sink]\nlisten = \"127.0.0.1:0\"\ncredentials = \"{c}\"\nsubscriptions = [\"public_security_deaths_live\"]\n\
             [query]\nlisten = \"127.0.0.1:0\"\ncredentials = \"{c}\"\nstate_dir = \"{q}\"\n",
            prefix = topics.prefix(),
            c = creds.display(),
            q = dir.path().join("query").display(),
        ),
    )
    .unwrap();
    let up = common::Up::start(&config);
    let body = r#"[{"payment_id":"PP-CRED-1","recipient_id_number":"11010519491231002X","recipient_name":"张建国","pension_type":"ENTERPRISE_EMPLOYEE","pay_month":"2026-10","amount":"3000.00","paid_at":"2026-10-15T02:00:00Z"}]"#;
    let gateway = format!(
        "http://127.0.0.1:{}/v1/datasets/hrss.pension_payment/records",
        up.port("gateway")
    );
    let stream = format!(
        "http://127.0.0.1:{}/v1/subscriptions/public_security_deaths_live/events",
        up.port("sink")
    );
    let lookup = format!(
        "http://127.0.0.1:{}/v1/query/hrss_deaths_counter_check/records/DR-1",
        up.port("query")
    );
    let calls = || {
        [
            status("POST", &gateway, &hrss, Some(body)),
            status("GET", &stream, &police, None),
            status("GET", &lookup, &hrss, None),
        ]
    };
    let before = calls();
    assert!(
        before.iter().all(|s| s != "401" && s != "000"),
        "the listed tokens are accepted (gateway, live stream, live interface): {before:?}"
    );
    // The department's tokens are revoked: the file now lists another one.
    std::fs::write(&creds, std::fs::read_to_string(&spare_creds).unwrap()).unwrap();
    let revoked = Instant::now();
    loop {
        let now = calls();
        if now.iter().all(|s| s == "401") {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "5 s after the tokens were removed: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "refused everywhere {:.1} s after the file changed",
        revoked.elapsed().as_secs_f64()
    );
    // A broken file is not applied: the tokens it would drop keep working.
    std::fs::write(&creds, both).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(calls().iter().all(|s| s != "401"), "the tokens are back");
    std::fs::write(&creds, "[[credential]]\ndepartment = \"no_such\"\n").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let after = calls();
    assert!(
        after.iter().all(|s| s != "401"),
        "an unusable file keeps the previous credentials: {after:?}"
    );
}
