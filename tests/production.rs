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

/// A config text, its environment, and the problem `govbus check` names.
type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);

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
            .env_remove("GOVBUS_HOUSING_FUND_WEBHOOK_SECRET")
            .env("GOVBUS_LEDGER_KEY", "an auditor's ledger key, 32 bytes");
        for (k, v) in env {
            if v.is_empty() {
                c.env_remove(k);
            } else {
                c.env(k, v);
            }
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

    // (config text, environment, the problem `check` names)
    let cases: Vec<Case> = vec![
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
            with_ports(&shipped),
            vec![secrets[0], secrets[1], ("GOVBUS_LEDGER_KEY", "")],
            "GOVBUS_LEDGER_KEY is not set",
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
        // The live interfaces pseudonymise too: a deployment without sinks
        // needs the secret as much.
        (
            {
                let t = with_ports(&shipped);
                let (sink, fraud) = (t.find("\n[sink]").unwrap(), t.find("\n[fraud]").unwrap());
                format!("{}{}", &t[..sink], &t[fraud..])
            },
            vec![secrets[1]],
            "[query] GOVBUS_PSEUDONYM_SECRET is not set",
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

/// The ```sh block of README.md that contains `marker`.
fn readme_block(marker: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split_once("\n```").map(|(b, _)| b))
        .find(|b| b.contains(marker))
        .unwrap_or_else(|| panic!("README.md has no sh block with `{marker}`"))
        .to_owned()
}

/// A README block as its commands (continuation lines joined), each with the
/// output the README shows for it: the `# ` lines right below it.
fn commands(block: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        if pending.is_empty() {
            if let Some(shown) = line.strip_prefix("# ") {
                if let Some((_, expected)) = out.last_mut() {
                    expected.push(shown.to_owned());
                }
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
        }
        pending.push_str(line);
        pending.push('\n');
        if !line.trim_end().ends_with('\\') {
            out.push((std::mem::take(&mut pending), Vec::new()));
        }
    }
    out
}

/// A README command without its trailing comment, so arguments can follow.
fn bare(command: &str) -> String {
    let command = command.trim_end();
    let (head, last) = command.rsplit_once('\n').unwrap_or(("", command));
    let last = last.split_once("  #").map_or(last, |(c, _)| c).trim_end();
    if head.is_empty() {
        last.to_owned()
    } else {
        format!("{head}\n{last}")
    }
}

/// Whether `line` matches `pattern`, in which `...` and `…` stand for anything.
fn matches(pattern: &str, line: &str) -> bool {
    let pattern = pattern.replace('…', "...");
    let mut parts = pattern.split("...");
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = line.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(p);
        }
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// Every output line the README shows for a command is in what it printed.
fn assert_shown(command: &str, expected: &[String], out: &Output) {
    let printed = text(out);
    for e in expected {
        assert!(
            printed.lines().any(|l| matches(e, l)),
            "README shows `{e}` for\n{command}\nbut it printed:\n{printed}"
        );
    }
}

/// `sh -c SCRIPT` in `dir` with the built `govbus` first on PATH, as an
/// operator who followed the README's install step.
fn sh(script: &str, dir: &std::path::Path, env: &[(&str, &str)]) -> Command {
    let bin_dir = govbus_bin().parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("sh");
    c.args(["-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env("GOVBUS_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run_sh(script: &str, dir: &std::path::Path, env: &[(&str, &str)]) -> Output {
    sh(script, dir, env).output().unwrap()
}

/// Starts `script` in the background; its output goes to `<dir>/<name>.log`.
fn spawn_sh(
    name: &str,
    script: &str,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> std::process::Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut c = sh(&format!("exec {script}"), dir, env);
    c.stdout(log.try_clone().unwrap()).stderr(log);
    govbus_testkit::spawn(c).unwrap()
}

/// Waits (60 s at most) until something listens on `port`; else shows the log.
fn wait_for(name: &str, port: u16, dir: &std::path::Path) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{name} does not listen on {port}:\n{}",
            std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The README's production flow, from its own commands, on a namespace with
/// no topics: router, a gateway with a credential from `credential new`,
/// curl, `govbus publish`, the registry with Python's stock
/// `AvroSerializer`, a sink into PostgreSQL, and `govbus report`.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_production_flow_runs_as_written_from_router_to_report() {
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::new(format!("{}.", unique("readme")));
    let prefix = topics.prefix().to_owned();
    let ns = format!(" --topic-prefix {prefix}");
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let repo = repo();
    let pg = govbus_testkit::PgSchema::create().await.unwrap();
    let conninfo = govbus_testkit::PgSchema::conninfo_default();
    let here = |cmd: &str, port: u16, from: &str| {
        cmd.replace("127.0.0.1:9092", &bootstrap)
            .replace("kafka:9092", &bootstrap)
            .replace(from, &format!("127.0.0.1:{port}"))
            .replace("target/release/govbus", "govbus")
    };

    // Running the router against a broker (with a group of its own).
    let router_block = readme_block("govbus router --bootstrap 127.0.0.1:9092");
    assert!(
        router_block.contains("cargo build --release -p govbus"),
        "{router_block}"
    );
    let router_cmd = commands(&router_block)
        .into_iter()
        .map(|(c, _)| c)
        .find(|c| c.contains("govbus router"))
        .unwrap();
    let router_port = common::free_port();
    let mut router = spawn_sh(
        "router",
        &format!(
            "{}{ns} --group {} --kafka session.timeout.ms=6000",
            bare(&here(&router_cmd, router_port, "127.0.0.1:9464")),
            unique("router")
        ),
        work,
        &[],
    );

    // Publishing by HTTP: credentials, gateway.
    let http_block = readme_block("govbus credential new --department hrss");
    let steps = commands(&http_block);
    let mut tokens = std::collections::HashMap::new();
    for dept in ["hrss", "civil_affairs"] {
        let script: String = steps
            .iter()
            .map(|(c, _)| c.as_str())
            .filter(|c| !c.contains("govbus gateway"))
            .map(|c| c.replace("hrss", dept))
            .collect();
        let out = run_sh(&format!("set -e\n{script}echo \"$TOKEN\""), work, &[]);
        assert!(out.status.success(), "{}", text(&out));
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            token.len() >= 32 && token.chars().all(|c| c.is_ascii_hexdigit()),
            "a token: {}",
            text(&out)
        );
        tokens.insert(dept, token);
    }
    let creds = std::fs::read_to_string(work.join("credentials.toml")).unwrap();
    assert_eq!(creds.matches("[[credential]]").count(), 2, "{creds}");
    assert!(!creds.contains(&tokens["hrss"]), "only hashes: {creds}");
    let gateway_cmd = steps
        .iter()
        .map(|(c, _)| c)
        .find(|c| c.contains("govbus gateway"))
        .unwrap();
    let gw_port = common::free_port();
    let mut gateway = spawn_sh(
        "gateway",
        &format!(
            "{}{ns}",
            bare(&here(gateway_cmd, gw_port, "127.0.0.1:8080"))
        ),
        work,
        &[],
    );
    wait_for("gateway", gw_port, work);
    let gw = format!("127.0.0.1:{gw_port}");

    // The department's developer: curl, then `govbus publish`.
    let dev = commands(&readme_block("Idempotency-Key: pensions-2026-10-batch-1"));
    assert_eq!(dev.len(), 2, "curl and publish: {dev:?}");
    let (curl_cmd, curl_shown) = &dev[0];
    let curl_cmd = curl_cmd.replace("127.0.0.1:8080", &gw);
    // The gateway provisions the topics at start: retry until it answers 200.
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let out = run_sh(&curl_cmd, &repo, &[("TOKEN", &tokens["hrss"])]);
        if text(&out).starts_with("{\"accepted\"") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_shown(&curl_cmd, curl_shown, &out);
    let (publish_cmd, publish_shown) = &dev[1];
    let gw_url = format!("http://{gw}");
    let out = run_sh(
        publish_cmd,
        &repo,
        &[("TOKEN", &tokens["hrss"]), ("GOVBUS_GATEWAY", &gw_url)],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "published with a rejection: {}",
        text(&out)
    );
    assert_shown(publish_cmd, publish_shown, &out);
    // Deaths for the sink, the same curl with civil affairs' token.
    let deaths = curl_cmd
        .replace("hrss.pension_payment", "civil_affairs.death_registration")
        .replace("pensions-2026-10-batch-1", "deaths-2026-11-batch-1");
    let out = run_sh(&deaths, &repo, &[("TOKEN", &tokens["civil_affairs"])]);
    let answer: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    let deaths_accepted = answer["accepted"].as_u64().unwrap();
    assert!(deaths_accepted >= 2, "{answer}");

    // Publishing by Kafka, with the schema registry and a stock serializer.
    let reg_cmd = commands(&readme_block("govbus registry --listen"))
        .remove(0)
        .0;
    let reg_port = common::free_port();
    let mut registry = spawn_sh(
        "registry",
        &format!("{}{ns}", bare(&here(&reg_cmd, reg_port, "127.0.0.1:8081"))),
        work,
        &[],
    );
    wait_for("registry", reg_port, work);
    let out =
        Command::new(std::env::var("GOVBUS_TEST_PYTHON").unwrap_or_else(|_| "python3".into()))
            .arg(repo.join("tests/python/publish_with_registry.py"))
            .args(["--registry", &format!("http://127.0.0.1:{reg_port}")])
            .args(["--bootstrap", &bootstrap, "--topic", &topics.ingest("hrss")])
            .args([
                "--data-subject",
                &format!("{}-value", topics.data("hrss.pension_payment")),
            ])
            .output()
            .unwrap();
    assert!(out.status.success(), "python publisher: {}", text(&out));
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        py["latest_id"], py["framed_id"],
        "framed with the catalog's id"
    );

    // Everything reached the canonical topic: 2 (curl) + 2 (publish) + 1 (Kafka).
    let routed = common::records_with_ids(&topics.data("hrss.pension_payment"), 5);
    let keys: std::collections::BTreeSet<String> = routed
        .iter()
        .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
        .collect();
    assert!(
        keys.contains("PP202699000001"),
        "the Kafka record: {keys:?}"
    );
    assert!(
        routed
            .iter()
            .map(|r| r.header(govbus_kafka::headers::CE_ID))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            >= 5,
        "{} routed",
        routed.len()
    );

    // Receiving data: the shipped catalog, its PostgreSQL grant pointed at a
    // throwaway schema; the sink's secrets and subscriber credentials as the
    // README makes them.
    let catalog = work.join("schemas");
    govbus_testkit::copy_dir(&repo.join("schemas"), &catalog).unwrap();
    let grant = catalog.join("subscriptions/hrss_deaths_pension_stop.toml");
    let shipped = std::fs::read_to_string(&grant).unwrap();
    let table = format!("{}.civil_affairs_deaths", pg.name());
    std::fs::write(
        &grant,
        shipped.replace("govbus_feed.civil_affairs_deaths", &table),
    )
    .unwrap();
    let sink_block = readme_block("govbus sink --bootstrap");
    let mut setup = String::from("set -e\n");
    let mut sink_cmd = None;
    for (c, _) in commands(&sink_block) {
        if c.contains("govbus sink") {
            sink_cmd = Some(c);
        } else {
            setup.push_str(&c);
        }
    }
    let env = run_sh(&format!("{setup}env"), work, &[]);
    assert!(env.status.success(), "{}", text(&env));
    let env_text = String::from_utf8_lossy(&env.stdout).into_owned();
    let exported: Vec<(String, String)> = env_text
        .lines()
        .filter(|l| l.starts_with("GOVBUS_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for var in [
        "GOVBUS_PSEUDONYM_SECRET",
        "GOVBUS_HOUSING_FUND_WEBHOOK_SECRET",
        "GOVBUS_LEDGER_KEY",
    ] {
        assert!(
            exported.iter().any(|(k, v)| k == var && v.len() >= 16),
            "the README's sink setup sets {var}: {env_text}"
        );
    }
    let subscribers = std::fs::read_to_string(work.join("subscribers.toml"))
        .expect("the README's sink setup writes subscribers.toml");
    assert!(subscribers.contains("public_security"), "{subscribers}");
    let sink_port = common::free_port();
    let sink_cmd = sink_cmd
        .unwrap()
        .replace("127.0.0.1:9092", &bootstrap)
        .replace("host=127.0.0.1 user=postgres dbname=test", &conninfo);
    let env_refs: Vec<(&str, &str)> = exported
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut sink = spawn_sh(
        "sink",
        &format!(
            "{}{ns} --listen 127.0.0.1:{sink_port} --kafka session.timeout.ms=6000",
            bare(&sink_cmd)
        ),
        work,
        &env_refs,
    );
    wait_for("sink", sink_port, work);
    let client = pg.client().await.unwrap();
    let mut rows = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        rows = client
            .query(
                &format!("SELECT registration_no, deceased_id_number FROM \"{}\".civil_affairs_deaths ORDER BY 1", pg.name()),
                &[],
            )
            .await
            .unwrap_or_default();
        if rows.len() as u64 >= deaths_accepted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(rows.len() as u64, deaths_accepted, "the live table");
    assert_eq!(rows[0].get::<_, String>(0), "DR-2026-00012345");
    assert_eq!(
        rows[0].get::<_, String>(1),
        "11010519491231002X",
        "the grant's clear treatment"
    );

    // The scorecards.
    let report_line = std::fs::read_to_string(repo.join("README.md"))
        .unwrap()
        .lines()
        .skip_while(|l| !l.starts_with("`govbus report --bootstrap"))
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let report_cmd = report_line
        .trim_start_matches('`')
        .split('`')
        .next()
        .unwrap()
        .to_owned();
    assert!(report_cmd.contains("--out report/"), "{report_cmd}");
    let report_cmd = format!(
        "{}{ns} --metrics http://{gw}/metrics --metrics http://127.0.0.1:{sink_port}/metrics",
        report_cmd.replace("kafka:9092", &bootstrap).replace(
            "http://govbus:9464/metrics",
            &format!("http://127.0.0.1:{router_port}/metrics")
        )
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (out, json) = loop {
        let out = run_sh(&report_cmd, work, &[]);
        assert!(out.status.success(), "{report_cmd}: {}", text(&out));
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(work.join("report/report.json")).unwrap())
                .unwrap();
        let delivered = json["departments"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|d| d["subscriptions"].as_array().unwrap().iter())
            .find(|s| s["id"] == "hrss_deaths_pension_stop")
            .map(|s| s["delivered"].as_u64().unwrap_or(0));
        if delivered == Some(deaths_accepted) || Instant::now() > deadline {
            break (out, json);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    for f in ["report.md", "report.html", "report.json"] {
        assert!(text(&out).contains(f), "{}", text(&out));
    }
    let dept = |id: &str| {
        json["departments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .unwrap()
            .clone()
    };
    let hrss = dept("hrss");
    assert_eq!(hrss["records_published"], 5, "{hrss}");
    assert_eq!(hrss["records_rejected"], 1, "the CSV row: {hrss}");
    let civil = dept("civil_affairs");
    assert_eq!(civil["records_published"], deaths_accepted, "{civil}");
    let sub = civil["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "hrss_deaths_pension_stop")
        .unwrap();
    assert_eq!(sub["delivered"], deaths_accepted, "{sub}");
    let md = std::fs::read_to_string(work.join("report/report.md")).unwrap();
    for (dataset, n) in [
        ("hrss.pension_payment", 5),
        ("civil_affairs.death_registration", deaths_accepted),
    ] {
        assert!(
            md.lines()
                .any(|l| l.starts_with(&format!("| {dataset} "))
                    && l.contains(&format!(" | {n} | "))),
            "{dataset} with {n} records in report.md:\n{md}"
        );
    }

    for c in [&mut sink, &mut registry, &mut gateway, &mut router] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Every TOML grant the README shows is, byte for byte, a file of
/// `schemas/subscriptions/` — the one it links just above the block.
#[test]
fn the_readme_grant_example_is_the_shipped_file() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut checked = 0;
    for (before, block) in readme
        .split("```toml\n")
        .zip(readme.split("```toml\n").skip(1))
    {
        let block = block.split_once("```\n").map_or(block, |(b, _)| b);
        if !block.contains("subscriber = ") {
            continue;
        }
        let link = before
            .rsplit("](schemas/subscriptions/")
            .next()
            .and_then(|l| l.split_once(')'))
            .map(|(f, _)| f)
            .expect("the block follows a link to its file");
        let file =
            std::fs::read_to_string(repo().join("schemas/subscriptions").join(link)).unwrap();
        assert_eq!(
            block, file,
            "README's grant vs schemas/subscriptions/{link}"
        );
        checked += 1;
    }
    assert!(checked >= 1, "the README shows a grant");
}
