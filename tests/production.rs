//! The README's production path on a real broker that does not create topics
//! by itself (Tansu creates none on produce), from an empty namespace:
//! topics are provisioned by govbus (`govbus topics ensure`, or the gateway
//! and router at start), and a missing topic is answered with an error that
//! names it — never "the broker is not keeping up".
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{govbus_bin, repo, spawn};
use govbus_kafka::topics::Topics;
use govbus_testkit::{unique, Broker};

fn govbus(args: &[&str], token: Option<&str>) -> Output {
    let mut c = Command::new(govbus_bin());
    c.args(args).current_dir(repo());
    if let Some(t) = token {
        c.env("GOVBUS_TOKEN", t);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether `topic` exists on the shared broker.
fn exists(topic: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", Broker::shared().bootstrap())
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let m = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    m.topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
}

/// `curl` as the README shows it: (HTTP status, body).
fn curl(url: &str, token: &str, body: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-X", "POST", url])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ])
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = t.rsplit_once('\n').unwrap_or((&t, "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn start_gateway(
    bootstrap: &str,
    creds: &std::path::Path,
    prefix: &str,
    extra: &[&str],
) -> (std::process::Child, String) {
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "gateway",
        "--bootstrap",
        bootstrap,
        "--credentials",
        creds.to_str().unwrap(),
        "--listen",
        &listen,
        "--topic-prefix",
        prefix,
    ];
    args.extend(extra);
    let child = spawn(&args);
    common::wait_listening(port);
    (child, format!("http://127.0.0.1:{port}"))
}

#[test]
fn the_production_path_provisions_topics_and_names_a_missing_one() {
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::new(format!("{}.", unique("prod")));
    let prefix = topics.prefix().to_owned();
    let ingest = topics.ingest("hrss");
    let dir = tempfile::tempdir().unwrap();
    let (token, creds) = common::new_credential("hrss", dir.path());
    let record =
        std::fs::read_to_string(repo().join("examples/records/hrss.pension_payment.json")).unwrap();
    let path = "/v1/datasets/hrss.pension_payment/records";

    // 1. A dry run lists every topic and creates none.
    let dry = govbus(
        &[
            "topics",
            "ensure",
            "--dry-run",
            "--topic-prefix",
            &prefix,
            "--bootstrap",
            "127.0.0.1:1",
        ],
        None,
    );
    assert!(dry.status.success(), "{}", text(&dry));
    let listing = text(&dry);
    for t in [
        &ingest,
        &topics.data("hrss.pension_payment"),
        &topics.dlq("hrss"),
        &topics.audit(),
        &topics.idempotency(),
    ] {
        assert!(listing.contains(t.as_str()), "{t} in the plan: {listing}");
    }
    assert!(listing.contains("cleanup.policy=compact"), "{listing}");
    assert!(!exists(&ingest), "a dry run creates nothing");

    // 2. A gateway told not to create topics, on an empty namespace: a clear
    //    error naming the missing topic, at once.
    let (mut gw, url) = start_gateway(&bootstrap, &creds, &prefix, &["--no-create-topics"]);
    let started = Instant::now();
    let (status, body) = curl(&format!("{url}{path}"), &token, &record);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("topic_missing") && body.contains(&ingest),
        "{body}"
    );
    assert!(!body.contains("not keeping up"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered at once"
    );
    // `govbus publish` says the same.
    let csv = repo().join("examples/records/hrss.pension_payment.csv");
    let out = govbus(
        &[
            "publish",
            "--dataset",
            "hrss.pension_payment",
            csv.to_str().unwrap(),
            "--gateway",
            &url,
        ],
        Some(&token),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "nothing published: {}",
        text(&out)
    );
    assert!(text(&out).contains(&ingest), "{}", text(&out));
    let _ = gw.kill();
    let _ = gw.wait();

    // 3. `govbus topics ensure` creates them; a second run creates nothing.
    let args = [
        "topics",
        "ensure",
        "--topic-prefix",
        &prefix,
        "--bootstrap",
        &bootstrap,
    ];
    let first = govbus(&args, None);
    assert!(first.status.success(), "{}", text(&first));
    assert!(exists(&ingest), "{}", text(&first));
    let again = govbus(&args, None);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains(" 0 created"),
        "idempotent: {}",
        text(&again)
    );

    // 4. On a fresh namespace, a gateway and router with default settings
    //    provision everything themselves; the README's flow then works.
    let topics2 = Topics::new(format!("{}.", unique("prod")));
    let (mut gw, url) = start_gateway(&bootstrap, &creds, topics2.prefix(), &[]);
    let mut router = common::spawn_router(&bootstrap, &topics2, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, body) = loop {
        let (s, b) = curl(&format!("{url}{path}"), &token, &record);
        if s == 200 || Instant::now() > deadline {
            break (s, b);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"accepted\":2"), "{body}");
    let out = govbus(
        &[
            "publish",
            "--dataset",
            "hrss.pension_payment",
            csv.to_str().unwrap(),
            "--gateway",
            &url,
        ],
        Some(&token),
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "published, one row rejected: {}",
        text(&out)
    );
    let routed = common::records_with_ids(&topics2.data("hrss.pension_payment"), 4);
    assert!(
        routed.len() >= 4,
        "routed to the canonical topic: {}",
        routed.len()
    );
    for c in [&mut gw, &mut router] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn a_credential_for_an_unknown_department_is_refused() {
    let out = govbus(&["credential", "new", "--department", "nosuch"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("`nosuch` is not a department"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("token_sha256"), "no entry printed");
}

/// `govbus check --config` on the shipped file and on each misconfiguration:
/// exit 0, or exit 1 with the specific problem.
#[test]
fn check_config_catches_what_up_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo().join("schemas"), dir.path().join("schemas")).unwrap();
    std::fs::create_dir(dir.path().join("deploy")).unwrap();
    std::fs::copy(
        repo().join("deploy/credentials.toml"),
        dir.path().join("deploy/credentials.toml"),
    )
    .unwrap();
    // The shipped file, with port 0 so the check does not race other tests for 8080.
    let shipped = std::fs::read_to_string(repo().join("deploy/govbus.toml")).unwrap();
    let with_ports = |text: &str| {
        let mut out = String::new();
        for line in text.lines() {
            if line.starts_with("listen = ") {
                out.push_str("listen = \"127.0.0.1:0\"\n");
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    };
    let config = dir.path().join("deploy/govbus.toml");
    let check = |text: &str, env: &[(&str, &str)]| {
        std::fs::write(&config, text).unwrap();
        let mut c = Command::new(govbus_bin());
        c.args(["check", "--config"]).arg(&config);
        c.env_remove("GOVBUS_PSEUDONYM_SECRET")
            .env_remove("GOVBUS_HOUSING_FUND_WEBHOOK_SECRET");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let secrets = [
        ("GOVBUS_PSEUDONYM_SECRET", "0123456789abcdef0123"),
        (
            "GOVBUS_HOUSING_FUND_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ),
    ];
    let ok = check(&with_ports(&shipped), &secrets);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));

    // Run from the repository root on the real file too: paths resolve from the file.
    let mut c = Command::new(govbus_bin());
    c.args(["check", "--config", "deploy/govbus.toml"])
        .current_dir(repo());
    let real = c.output().unwrap();
    assert!(
        !text(&real).contains("deploy/schemas: -: cannot read"),
        "{}",
        text(&real)
    );

    let cases: Vec<(String, Vec<(&str, &str)>, &str)> = vec![
        (
            with_ports(&shipped),
            vec![secrets[1]],
            "GOVBUS_PSEUDONYM_SECRET is not set",
        ),
        (
            with_ports(&shipped),
            vec![("GOVBUS_PSEUDONYM_SECRET", "short"), secrets[1]],
            "holds 5 bytes; it needs at least 16",
        ),
        (
            with_ports(&shipped),
            vec![secrets[0]],
            "GOVBUS_HOUSING_FUND_WEBHOOK_SECRET is not set",
        ),
        (
            with_ports(&shipped).replace("catalog = \"../schemas\"", "catalog = \"schemas\""),
            secrets.to_vec(),
            "relative to the config file",
        ),
        (
            with_ports(&shipped).replace(
                "credentials = \"credentials.toml\"",
                "credentials = \"missing.toml\"",
            ),
            secrets.to_vec(),
            "missing.toml",
        ),
    ];
    for (text_, env, expected) in cases {
        let out = check(&text_, &env);
        assert_eq!(out.status.code(), Some(1), "{expected}: {}", text(&out));
        assert!(text(&out).contains(expected), "{expected}: {}", text(&out));
    }
    // A port another process holds.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let taken = with_ports(&shipped).replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
        1,
    );
    let out = check(&taken, &secrets);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cannot bind it now"), "{}", text(&out));
}
