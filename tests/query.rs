//! Live interfaces end to end: records published to `ingest.civil_affairs`
//! → router → `data.*` → `govbus query`'s state → lookups and verifications
//! over real HTTP, under each grant's policy, recorded in the ledger; and the
//! state store's recovery (kill -9 during a catch-up, a deleted store).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, govbus_bin, new_credential, repo, spawn_router, wait_listening};
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_testkit::{create_topic, producer_config, unique, Broker, ProduceStall, Storage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value as Json};

const DEATHS: &str = "civil_affairs.death_registration";

fn id_number(i: usize) -> String {
    govbus_testkit::ids::with_check(&format!("{:06}19500101{:03}", 110_105 + i / 1000, i % 1000))
}

fn death(i: usize, v: u64) -> Json {
    json!({
        "registration_no": format!("DR-2026-{i:08}"),
        "deceased_id_number": id_number(i),
        "deceased_name": "欧阳娜娜",
        "gender": "FEMALE",
        "birth_date": "1950-01-01",
        "death_date": format!("2026-01-{:02}", 1 + v),
        "death_place": "北京市朝阳区",
        "death_cause_category": if i % 2 == 0 { "natural" } else { "accident" },
        "registering_office": "朝阳区民政局",
        "registered_at": "2026-01-20T08:00:00.000Z",
        "informant_phone": "13800138000",
    })
}

fn key(i: usize) -> String {
    format!("DR-2026-{i:08}")
}

/// A raw HTTP/1.1 exchange on loopback: (status, headers, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> (u16, String, String) {
    http_with(port, method, path, token, body, "")
}

/// [`http`] with `extra` header lines (each ending in `\r\n`).
fn http_with(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
    extra: &str,
) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    if let Some(b) = body {
        let _ = s.write_all(b);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // A chunked body: take the JSON between the chunk sizes.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, head.to_owned(), body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn json_of(body: &str) -> Json {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

struct Deployment {
    bootstrap: String,
    topics: Topics,
    catalog: tempfile::TempDir,
    state: tempfile::TempDir,
    token: String,
    other_token: String,
    credentials: std::path::PathBuf,
}

const GRANT: &str = r#"
subscriber = "hrss"
dataset = "civil_affairs.death_registration"
purpose = "养老金领取资格核验 / pension counter check"

[fields]
include = ["deceased_id_number", "deceased_name", "death_date"]

[sink]
type = "api"
operations = ["lookup", "verify"]
rate = 100000
batch_max = 100
"#;

impl Deployment {
    async fn start(grants: &[(&str, String)]) -> Deployment {
        Deployment::start_on(Broker::shared().bootstrap(), grants).await
    }

    /// A deployment on a broker of the test's own.
    async fn start_on(bootstrap: String, grants: &[(&str, String)]) -> Deployment {
        let topics = Topics::new(format!("{}.", unique("q")));
        create_topic(&bootstrap, &topics.ingest("civil_affairs"), 2)
            .await
            .unwrap();
        create_topic(&bootstrap, &topics.data(DEATHS), 3)
            .await
            .unwrap();
        let catalog = tempfile::tempdir().unwrap();
        govbus_testkit::copy_dir(&repo().join("schemas"), catalog.path()).unwrap();
        std::fs::remove_dir_all(catalog.path().join("subscriptions")).unwrap();
        std::fs::create_dir(catalog.path().join("subscriptions")).unwrap();
        for (id, text) in grants {
            write_grant(catalog.path(), id, text);
        }
        let state = tempfile::tempdir().unwrap();
        let other_dir = state.path().join("other");
        std::fs::create_dir(&other_dir).unwrap();
        let (token, credentials) = new_credential("hrss", state.path());
        let (other_token, other) = new_credential("housing_fund", &other_dir);
        let mut both = std::fs::read_to_string(&credentials).unwrap();
        both.push_str(&std::fs::read_to_string(&other).unwrap());
        std::fs::write(&credentials, both).unwrap();
        Deployment {
            bootstrap,
            topics,
            catalog,
            state,
            token: format!("Bearer {token}"),
            other_token: format!("Bearer {other_token}"),
            credentials,
        }
    }

    fn query(&self) -> (Child, u16) {
        self.query_with(|_| {})
    }

    /// [`Deployment::query`], its command adjusted by `setup` first.
    fn query_with(&self, setup: impl FnOnce(&mut Command)) -> (Child, u16) {
        let port = free_port();
        let log = std::fs::File::create(self.state.path().join("query.log")).unwrap();
        let mut cmd = Command::new(govbus_bin());
        cmd.args(["query", "--bootstrap", &self.bootstrap])
            .args(["--topic-prefix", self.topics.prefix()])
            .args(["--catalog", self.catalog.path().to_str().unwrap()])
            .args([
                "--state-dir",
                self.state.path().join("state").to_str().unwrap(),
            ])
            .args(["--credentials", self.credentials.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("GOVBUS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        setup(&mut cmd);
        let child = govbus_testkit::spawn(cmd).unwrap();
        wait_listening(port);
        (child, port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("query.log")).unwrap_or_default()
    }

    /// Publishes through the router, one acknowledged record at a time.
    async fn publish(&self, changes: &[(usize, u64, &str)]) {
        let producer: FutureProducer = producer_config(&self.bootstrap).create().unwrap();
        for (i, v, op) in changes {
            let (id, version) = (format!("evt-{i}-{v}"), v.to_string());
            let headers = h::owned([
                (h::CE_TYPE, DEATHS.as_bytes()),
                (h::CE_ID, id.as_bytes()),
                (h::CE_OP, op.as_bytes()),
                (h::CE_SOURCEVERSION, version.as_bytes()),
            ]);
            let body = (*op != "delete").then(|| death(*i, *v).to_string());
            let k = key(*i);
            let topic = self.topics.ingest("civil_affairs");
            let mut r = FutureRecord::to(&topic).key(k.as_bytes()).headers(headers);
            if let Some(b) = &body {
                r = r.payload(b.as_bytes());
            }
            producer
                .send(r, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }
}

/// Method, path, Authorization, body, expected status.
type BadCall<'a> = (&'a str, &'a str, Option<&'a str>, Option<Vec<u8>>, u16);

fn write_grant(catalog: &Path, id: &str, text: &str) {
    std::fs::write(
        catalog.join("subscriptions").join(format!("{id}.toml")),
        text,
    )
    .unwrap();
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric(port: u16, name: &str) -> f64 {
    let (_, _, body) = http(port, "GET", "/metrics", None, None);
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn lookups_and_verifications_answer_under_the_grant_and_are_audited() {
    let filtered = GRANT
        .replace(
            "[fields]",
            "filter = [\"death_cause_category == natural\"]\n\n[fields]",
        )
        .replace("\"lookup\", \"verify\"", "\"verify\"");
    let natural_lookup = GRANT.replace(
        "[fields]",
        "filter = [\"death_cause_category == natural\"]\n\n[fields]",
    );
    let expired = GRANT.replace("[fields]", "valid_until = \"2020-01-01\"\n\n[fields]");
    let future = GRANT.replace("[fields]", "valid_from = \"2099-01-01\"\n\n[fields]");
    let slow = GRANT.replace("rate = 100000", "rate = 3");
    let d = Deployment::start(&[
        ("counter", GRANT.to_owned()),
        ("natural_only", filtered),
        ("slow", slow),
        ("natural_lookup", natural_lookup),
        ("expired", expired),
        ("future", future),
        ("revocable", GRANT.to_owned()),
    ])
    .await;
    let dir = d.catalog.path().to_str().unwrap().to_owned();
    let mut router = spawn_router(
        &Broker::shared().bootstrap(),
        &d.topics,
        &["--catalog", &dir],
    );
    d.publish(&[(1, 1, "create"), (2, 1, "create"), (3, 1, "create")])
        .await;
    let (_q, port) = d.query();
    let t = Some(d.token.as_str());
    wait_until(
        "the state to hold record 3",
        Duration::from_secs(60),
        || {
            http(
                port,
                "GET",
                &format!("/v1/query/counter/records/{}", key(3)),
                t,
                None,
            )
            .0 == 200
        },
    );

    // One record by key: through the policy (ID number and name masked, the
    // phone not delivered), with version and freshness.
    let (status, _, body) = http(
        port,
        "GET",
        &format!("/v1/query/counter/records/{}", key(2)),
        t,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let rec = json_of(&body);
    assert_eq!(rec["sourceversion"], "1");
    assert_eq!(rec["data"]["death_date"], "2026-01-02");
    assert!(rec["data"].get("informant_phone").is_none(), "{body}");
    assert!(rec["freshness"]["lag"].is_number(), "{body}");
    assert!(
        govbus_testkit::ids::valid_ids_in(&body).is_empty(),
        "a clear ID number left: {body}"
    );
    assert!(!body.contains("欧阳娜娜"), "a clear name left: {body}");

    // By the declared lookup field (the caller holds the ID number).
    let (status, _, body) = http(
        port,
        "GET",
        &format!("/v1/query/counter/by/deceased_id_number/{}", id_number(1)),
        t,
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body)["records"].as_array().unwrap().len(), 1);
    assert!(
        govbus_testkit::ids::valid_ids_in(&body).is_empty(),
        "{body}"
    );
    // x/X is one ID number.
    let lower = id_number(1).to_lowercase();
    if lower != id_number(1) {
        assert_eq!(
            http(
                port,
                "GET",
                &format!("/v1/query/counter/by/deceased_id_number/{lower}"),
                t,
                None
            )
            .0,
            200
        );
    }

    // Absent: 404; batch: per key.
    assert_eq!(
        http(
            port,
            "GET",
            &format!("/v1/query/counter/records/{}", key(99)),
            t,
            None
        )
        .0,
        404
    );
    let req = json!({"keys": [key(1), key(99), key(3)]}).to_string();
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/query/counter/batch",
        t,
        Some(req.as_bytes()),
    );
    assert_eq!(status, 200, "{body}");
    let found: Vec<bool> = json_of(&body)["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["found"].as_bool().unwrap())
        .collect();
    assert_eq!(found, [true, false, true]);
    assert!(
        govbus_testkit::ids::valid_ids_in(&body).is_empty(),
        "{body}"
    );

    // Verify: per field, never a stored value.
    let req = json!({"key": key(1), "fields": {"deceased_name": "欧阳娜娜", "death_date": "2026-01-09", "deceased_id_number": id_number(1)}}).to_string();
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/query/counter/verify",
        t,
        Some(req.as_bytes()),
    );
    assert_eq!(status, 200, "{body}");
    let v = json_of(&body);
    assert_eq!(v["record"], "found");
    assert_eq!(
        v["fields"],
        json!({"deceased_name": "match", "death_date": "no_match", "deceased_id_number": "match"})
    );
    assert!(
        !body.contains("2026-01-02")
            && !body.contains("欧阳")
            && !body.contains(&id_number(1)[..6]),
        "a stored value left: {body}"
    );
    let req = json!({"field": "deceased_id_number", "value": id_number(2), "fields": {"deceased_name": "张三"}}).to_string();
    let v = json_of(
        &http(
            port,
            "POST",
            "/v1/query/counter/verify",
            t,
            Some(req.as_bytes()),
        )
        .2,
    );
    assert_eq!(v["fields"]["deceased_name"], "no_match");

    // The row filter: record 1 (accident) is outside `natural_only`: it
    // verifies as no such record, exactly as an absent one.
    let req = |k: String| json!({"key": k, "fields": {"deceased_name": "欧阳娜娜"}}).to_string();
    let v1 = json_of(
        &http(
            port,
            "POST",
            "/v1/query/natural_only/verify",
            t,
            Some(req(key(1)).as_bytes()),
        )
        .2,
    );
    let v99 = json_of(
        &http(
            port,
            "POST",
            "/v1/query/natural_only/verify",
            t,
            Some(req(key(99)).as_bytes()),
        )
        .2,
    );
    assert_eq!(v1["record"], "no_such_record");
    assert_eq!(v1["fields"], v99["fields"]);
    let v2 = json_of(
        &http(
            port,
            "POST",
            "/v1/query/natural_only/verify",
            t,
            Some(req(key(2)).as_bytes()),
        )
        .2,
    );
    assert_eq!(v2["fields"]["deceased_name"], "match");
    // ... and that grant allows verify only.
    assert_eq!(
        http(
            port,
            "GET",
            &format!("/v1/query/natural_only/records/{}", key(2)),
            t,
            None
        )
        .0,
        403
    );

    // Bad input and wrong credentials: each a clear error, nothing served.
    let bad: Vec<BadCall> = vec![
        (
            "GET",
            "/v1/query/counter/records/DR-2026-00000001",
            None,
            None,
            401,
        ),
        (
            "GET",
            "/v1/query/counter/records/DR-2026-00000001",
            Some("Basic aHJzczp4"),
            None,
            401,
        ),
        (
            "GET",
            "/v1/query/counter/records/DR-2026-00000001",
            Some("Bearer not-a-token"),
            None,
            401,
        ),
        (
            "GET",
            "/v1/query/counter/records/DR-2026-00000001",
            Some(d.other_token.as_str()),
            None,
            403,
        ),
        (
            "GET",
            "/v1/query/nope/records/DR-2026-00000001",
            t,
            None,
            404,
        ),
        ("GET", "/v1/query/counter/by/deceased_name/x", t, None, 400),
        (
            "GET",
            "/v1/query/counter/by/informant_phone/13800138000",
            t,
            None,
            400,
        ),
        ("GET", "/v1/query/counter/records/a%00b", t, None, 400),
        ("GET", "/v1/query/counter/records/%FF%FE", t, None, 400),
        (
            "GET",
            "/v1/query/counter/records/..%2F..%2Fmetrics",
            t,
            None,
            404,
        ),
        (
            "GET",
            "/v1/query/counter/records/DR?min_version=x",
            t,
            None,
            400,
        ),
        (
            "GET",
            "/v1/query/counter/records/DR?min_version=1&wait=1h",
            t,
            None,
            400,
        ),
        (
            "POST",
            "/v1/query/counter/batch",
            t,
            Some(b"{not json".to_vec()),
            400,
        ),
        (
            "POST",
            "/v1/query/counter/batch",
            t,
            Some(b"{\"keys\": [], \"extra\": 1}".to_vec()),
            400,
        ),
        (
            "POST",
            "/v1/query/counter/batch",
            t,
            Some(
                json!({"keys": (0..101).map(key).collect::<Vec<_>>()})
                    .to_string()
                    .into_bytes(),
            ),
            413,
        ),
        (
            "POST",
            "/v1/query/counter/batch",
            t,
            Some(vec![b' '; 2 << 20]),
            413,
        ),
        (
            "POST",
            "/v1/query/counter/verify",
            t,
            Some(
                json!({"key": key(1), "fields": {"informant_phone": "13800138000"}})
                    .to_string()
                    .into_bytes(),
            ),
            403,
        ),
        (
            "POST",
            "/v1/query/counter/verify",
            t,
            Some(
                json!({"key": key(1), "fields": {"no_such": "x"}})
                    .to_string()
                    .into_bytes(),
            ),
            400,
        ),
        (
            "POST",
            "/v1/query/counter/verify",
            t,
            Some(json!({"key": key(1)}).to_string().into_bytes()),
            400,
        ),
    ];
    for (method, path, token, body, want) in bad {
        let (status, _, text) = http(port, method, path, token, body.as_deref());
        assert_eq!(status, want, "{method} {path}: {text}");
        let v = json_of(&text);
        assert!(
            v["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{method} {path}: no detail: {text}"
        );
        assert!(
            v.get("data").is_none() && v.get("records").is_none(),
            "{text}"
        );
    }

    // Outside the row filter is exactly absent: by key, by field, and when
    // waiting for a version (a filtered key waits like one never published).
    let (s1, _, b1) = http(
        port,
        "GET",
        &format!("/v1/query/natural_lookup/records/{}", key(1)),
        t,
        None,
    );
    let (s99, _, b99) = http(
        port,
        "GET",
        &format!("/v1/query/natural_lookup/records/{}", key(99)),
        t,
        None,
    );
    assert_eq!((s1, s99), (404, 404));
    assert_eq!(json_of(&b1)["detail"], json_of(&b99)["detail"]);
    assert_eq!(
        http(
            port,
            "GET",
            &format!(
                "/v1/query/natural_lookup/by/deceased_id_number/{}",
                id_number(1)
            ),
            t,
            None
        )
        .0,
        404
    );
    assert_eq!(
        http(
            port,
            "GET",
            &format!(
                "/v1/query/natural_lookup/by/deceased_id_number/{}",
                id_number(2)
            ),
            t,
            None
        )
        .0,
        200
    );
    for k in [key(1), key(99)] {
        let (s, _, _) = http(
            port,
            "GET",
            &format!("/v1/query/natural_lookup/records/{k}?min_version=1&wait=300ms"),
            t,
            None,
        );
        assert_eq!(s, 409, "{k}");
    }
    // The validity window.
    for id in ["expired", "future"] {
        let (s, _, body) = http(
            port,
            "GET",
            &format!("/v1/query/{id}/records/{}", key(1)),
            t,
            None,
        );
        assert_eq!(s, 403, "{id}: {body}");
        assert_eq!(json_of(&body)["error"], "grant_inactive", "{body}");
    }

    // Publish, then read the new version consistently; a delete reads as absent.
    d.publish(&[(2, 2, "update")]).await;
    let (status, _, body) = http(
        port,
        "GET",
        &format!(
            "/v1/query/counter/records/{}?min_version=2&wait=10s",
            key(2)
        ),
        t,
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body)["sourceversion"], "2");
    d.publish(&[(2, 3, "delete")]).await;
    wait_until("the delete to apply", Duration::from_secs(10), || {
        http(
            port,
            "GET",
            &format!("/v1/query/counter/records/{}", key(2)),
            t,
            None,
        )
        .0 == 404
    });
    let (status, head, _) = http(
        port,
        "GET",
        &format!(
            "/v1/query/counter/records/{}?min_version=9&wait=300ms",
            key(3)
        ),
        t,
        None,
    );
    assert_eq!(status, 409);
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");

    // The grant's rate: above it, 429 with Retry-After.
    let statuses: Vec<(u16, String)> = (0..10)
        .map(|_| {
            let (s, head, _) = http(
                port,
                "GET",
                &format!("/v1/query/slow/records/{}", key(1)),
                t,
                None,
            );
            (s, head)
        })
        .collect();
    let limited: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert!(
        !limited.is_empty(),
        "no 429 in {:?}",
        statuses.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    assert!(limited
        .iter()
        .all(|(_, h)| h.to_ascii_lowercase().contains("retry-after")));

    // Revocation stops answers within 5 s.
    assert_eq!(
        http(
            port,
            "GET",
            &format!("/v1/query/revocable/records/{}", key(1)),
            t,
            None
        )
        .0,
        200
    );
    write_grant(
        d.catalog.path(),
        "revocable",
        &GRANT.replace("[fields]", "revoked = true\n\n[fields]"),
    );
    let revoked_at = Instant::now();
    wait_until(
        "the revoked grant to stop answering",
        Duration::from_secs(5),
        || {
            http(
                port,
                "GET",
                &format!("/v1/query/revocable/records/{}", key(1)),
                t,
                None,
            )
            .0 == 403
        },
    );
    eprintln!("revocation took effect in {:?}", revoked_at.elapsed());

    // The OpenAPI document is served.
    let (status, _, body) = http(port, "GET", "/v1/query/openapi.json", None, None);
    assert_eq!(status, 200);
    let doc = json_of(&body);
    assert!(doc["paths"].get("/v1/query/{sub}/verify").is_some());
    // Every operation documents the process's own faults (500) and the
    // state or ledger being unavailable (503), which every one can answer.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for status in ["500", "503"] {
                assert!(
                    op["responses"].get(status).is_some(),
                    "{method} {path} does not document {status}"
                );
            }
        }
    }

    // Every answered call is in the ledger, by keyed hash, never by value.
    assert!(metric(port, "govbus_query_calls_total") >= 10.0);
    let out = Command::new(govbus_bin())
        .args([
            "audit",
            "query",
            "--bootstrap",
            &Broker::shared().bootstrap(),
            "--topic-prefix",
            d.topics.prefix(),
        ])
        .args([
            "--subscription",
            "counter",
            "--looked-up",
            &id_number(2),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls: Vec<Json> = json_of(&text)
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["calls"].as_array().unwrap().clone())
        .collect();
    assert!(calls.iter().any(|c| c["operation"] == "verify"), "{text}");
    let ledger = Command::new(govbus_bin())
        .args([
            "audit",
            "export",
            "--bootstrap",
            &Broker::shared().bootstrap(),
            "--topic-prefix",
            d.topics.prefix(),
        ])
        .output()
        .unwrap();
    let ledger = String::from_utf8_lossy(&ledger.stdout);
    assert!(ledger.contains("\"sink\":\"api\""), "{ledger}");
    assert!(
        !ledger.contains(&id_number(1)) && !ledger.contains(&key(1)),
        "a looked-up value in the ledger"
    );
    let log = d.log();
    assert!(
        !log.contains(&id_number(1)) && !log.contains("欧阳"),
        "personal data in the log:\n{log}"
    );

    // The standalone `govbus query` follows its credentials file: the hrss
    // token removed (housing_fund's kept), it is refused within seconds.
    let path = "/v1/query/counter/records/DR-2026-00000001";
    assert_ne!(http(port, "GET", path, t, None).0, 401);
    let text = std::fs::read_to_string(&d.credentials).unwrap();
    let kept = &text[text.rfind("[[credential]]").unwrap()..];
    assert!(kept.contains("housing_fund"), "{kept}");
    std::fs::write(&d.credentials, kept).unwrap();
    wait_until("the removed token refused", Duration::from_secs(5), || {
        http(port, "GET", path, t, None).0 == 401
    });
    assert_ne!(
        http(port, "GET", path, Some(d.other_token.as_str()), None).0,
        401,
        "the token left in the file still works"
    );
    let _ = router.kill();
    let _ = router.wait();
}

/// Produces `n` canonical records straight into `data.<deaths>`: keys
/// `0..keys`, versions growing, every seventh change a delete. Returns the
/// last-write-wins model: key → Some(version) live, None deleted.
async fn produce_canonical(d: &Deployment, n: usize, keys: usize) -> BTreeMap<usize, Option<u64>> {
    let catalog = govbus_catalog::Catalog::load(&repo().join("schemas")).unwrap();
    let engine = govbus_validate::Engine::new(&catalog).unwrap();
    let ctx = govbus_validate::Context::now();
    let producer: FutureProducer = producer_config(&d.bootstrap)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let topic = d.topics.data(DEATHS);
    let mut model = BTreeMap::new();
    let mut pending = Vec::new();
    for j in 0..n {
        let i = j % keys;
        let v = (j / keys) as u64 + 1;
        let delete = j % 7 == 6;
        let value = (!delete).then(|| {
            engine
                .validate_json(DEATHS, death(i, v % 20).to_string().as_bytes(), &ctx)
                .unwrap()
                .value
        });
        model.insert(i, (!delete).then_some(v));
        let (id, version, k) = (format!("c-{j}"), v.to_string(), key(i));
        let op = if delete { "delete" } else { "update" };
        let headers = h::owned([
            (h::CE_ID, id.as_bytes()),
            (h::CE_SUBJECT, k.as_bytes()),
            (h::CE_SOURCEVERSION, version.as_bytes()),
            (h::CE_OP, op.as_bytes()),
        ]);
        let mut r = FutureRecord::to(&topic).key(k.as_bytes()).headers(headers);
        if let Some(v) = &value {
            r = r.payload(v);
        }
        pending.push(producer.send_result(r).map_err(|(e, _)| e).unwrap());
        if pending.len() >= 5000 {
            for p in pending.drain(..) {
                p.await.unwrap().map_err(|(e, _)| e).unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    model
}

/// Checks every key of `model` through batch lookups.
fn state_equals(port: u16, token: &str, model: &BTreeMap<usize, Option<u64>>) {
    let keys: Vec<usize> = model.keys().copied().collect();
    for chunk in keys.chunks(100) {
        let req = json!({"keys": chunk.iter().map(|i| key(*i)).collect::<Vec<_>>()}).to_string();
        let (status, _, body) = http(
            port,
            "POST",
            "/v1/query/counter/batch",
            Some(token),
            Some(req.as_bytes()),
        );
        assert_eq!(status, 200, "{body}");
        for (i, r) in chunk
            .iter()
            .zip(json_of(&body)["results"].as_array().unwrap())
        {
            let got = r["found"].as_bool().unwrap().then(|| {
                r["record"]["sourceversion"]
                    .as_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            });
            assert_eq!(got, model[i], "key {i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_state_resumes_after_kill_9_without_starting_over_and_a_lost_store_is_rebuilt() {
    const N: usize = 200_000;
    let d = Deployment::start(&[("counter", GRANT.to_owned())]).await;
    let model = produce_canonical(&d, N, 20_000).await;
    let t = d.token.clone();

    // Kill -9 in the middle of the catch-up.
    let (mut q, port) = d.query();
    wait_until("some of the catch-up", Duration::from_secs(120), || {
        metric(port, "govbus_query_state_applied_total") >= 30_000.0
    });
    q.kill().unwrap();
    q.wait().unwrap();
    let before = committed_offsets(&d);
    assert!(before > 0, "nothing was committed before the kill");

    // Restarted: it resumes from the store's offsets, not from the beginning.
    let (mut q, port) = d.query();
    wait_until("the catch-up to finish", Duration::from_secs(300), || {
        http(port, "GET", "/ready", None, None).0 == 200
    });
    let applied = metric(port, "govbus_query_state_applied_total");
    assert!(
        applied <= (N - before) as f64 + 5_000.0,
        "applied {applied} after the restart: it started over (resumed at {before})"
    );
    assert!(d.log().contains("State builder started."), "{}", d.log());
    state_equals(port, &t, &model);
    q.kill().unwrap();
    q.wait().unwrap();

    // A lost store is rebuilt from the topic: the same state.
    std::fs::remove_dir_all(d.state.path().join("state")).unwrap();
    let (mut q, port) = d.query();
    wait_until("the rebuild", Duration::from_secs(300), || {
        http(port, "GET", "/ready", None, None).0 == 200
    });
    assert_eq!(metric(port, "govbus_query_state_applied_total") as usize, N);
    state_equals(port, &t, &model);
    // A damaged store too.
    q.kill().unwrap();
    q.wait().unwrap();
    let file = d.state.path().join("state").join("query-state.redb");
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 3).unwrap();
    drop(f);
    let (_q, port) = d.query();
    wait_until(
        "the rebuild of a damaged store",
        Duration::from_secs(300),
        || http(port, "GET", "/ready", None, None).0 == 200,
    );
    state_equals(port, &t, &model);
}

/// Records applied before the kill, by the offsets the store committed
/// (the position a restart resumes from), read from the query log line.
fn committed_offsets(d: &Deployment) -> usize {
    // The next start logs its resume position; start-and-stop is not needed:
    // the offsets are in the store, read them directly.
    let path = d.state.path().join("state").join("query-state.redb");
    let store = govbus_state::Store::open(&path, 1 << 20).unwrap();
    let offsets = store
        .read()
        .unwrap()
        .offsets(&d.topics.data(DEATHS))
        .unwrap();
    offsets.values().map(|o| usize::try_from(*o).unwrap()).sum()
}

/// The broker stops acknowledging the ledger's writes (its Produce requests
/// are held by a proxy; reads go on, so the state stays current) under a
/// running `govbus query`: calls are refused 503 `audit_unavailable` with
/// `Retry-After` — never answered without their entry — within the entry
/// deadline (5 s) plus the acknowledgement wait (10 s), and counted by
/// reason. Released, calls are answered again; every call answered 200 is
/// on the ledger (which may also hold the calls whose entries were in
/// flight during the stall: the documented over-record); SIGTERM closes the
/// chain.
#[tokio::test(flavor = "multi_thread")]
async fn calls_the_ledger_cannot_record_are_refused_and_every_answer_is_on_the_ledger() {
    let stall = ProduceStall::bind().unwrap();
    let broker = Broker::start_behind(Storage::Memory, stall.port()).unwrap();
    stall.forward_to(broker.port());
    let d = Deployment::start_on(stall.bootstrap(), &[("counter", GRANT.to_owned())]).await;
    let model = produce_canonical(&d, 50, 50).await;
    let live = *model.iter().find(|(_, v)| v.is_some()).unwrap().0;
    let path = format!("/v1/query/counter/records/{}", key(live));
    let (mut q, port) = d.query();
    wait_until("the state", Duration::from_secs(60), || {
        http(port, "GET", "/ready", None, None).0 == 200
    });
    let t = d.token.clone();
    let mut answered = 0usize;
    for _ in 0..5 {
        let (status, _, body) = http(port, "GET", &path, Some(&t), None);
        assert_eq!(status, 200, "{body}");
        answered += 1;
    }

    // Writes stall. One call is put into the first round's entry, one into
    // the second's; both rounds wait on the broker, so the two calls after
    // them are never put into an entry (usually: see below).
    stall.hold(true);
    let calls: Vec<_> = (0..4)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(if i < 3 { 400 } else { 0 }));
            let (path, t) = (path.clone(), t.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let r = http(port, "GET", &path, Some(&t), None);
                (r, started.elapsed())
            })
        })
        .collect();
    for c in calls {
        let ((status, head, body), took) = c.join().unwrap();
        assert_eq!(status, 503, "answered while the ledger was down: {body}");
        assert!(body.contains("audit_unavailable"), "{body}");
        assert!(
            !body.contains(&id_number(live)),
            "a record in a refusal: {body}"
        );
        assert!(
            head.to_ascii_lowercase().contains("retry-after: 2"),
            "{head}"
        );
        assert!(took < Duration::from_secs(20), "refused after {took:?}");
    }
    let refused = |reason: &str| {
        metric(
            port,
            &format!("govbus_query_audit_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    // On a slow machine two calls may share a round: then more are taken
    // (ack_late) and fewer never taken (not_taken).
    let metrics = || http(port, "GET", "/metrics", None, None).2;
    let late = refused("ack_late");
    assert_eq!(refused("not_taken") + late, 4.0, "{}", metrics());
    assert!(late >= 1.0, "{}", metrics());

    // Released: answered again once the held entries are acknowledged.
    stall.hold(false);
    wait_until("calls answered again", Duration::from_secs(120), || {
        let ok = http(port, "GET", &path, Some(&t), None).0 == 200;
        answered += usize::from(ok);
        ok
    });
    for _ in 0..5 {
        assert_eq!(http(port, "GET", &path, Some(&t), None).0, 200);
        answered += 1;
    }

    // A clean stop writes the close entry once every round is acknowledged.
    Command::new("kill")
        .args(["-TERM", &q.id().to_string()])
        .status()
        .unwrap();
    let exited = q.wait().unwrap();
    assert!(exited.success(), "{exited:?}\n{}", d.log());
    assert!(
        d.log().contains("Query ledger chain closed."),
        "{}",
        d.log()
    );
    let audit = |args: &[&str]| {
        let out = Command::new(govbus_bin())
            .args(["audit"])
            .args(args)
            .args(["--bootstrap", &d.bootstrap])
            .args(["--topic-prefix", d.topics.prefix()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let verified = json_of(&audit(&["verify", "--format", "json"]));
    assert_eq!(verified["findings"], json!([]), "{verified}");
    assert_eq!(verified["open_chains"], json!([]), "{verified}");
    let on_ledger: usize = audit(&["export"])
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(|e| e["sink"] == "api")
        .flat_map(|e| e["calls"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["status"] == 200)
        .count();
    // At most the calls whose entries were in flight are over-recorded.
    assert!(
        (answered..=answered + late as usize).contains(&on_ledger),
        "{answered} calls answered 200, {on_ledger} on the ledger"
    );
}

/// Issue 16, traces: a live-interface call makes a span continuing the
/// caller's `traceparent`, named by its operation; the span holds neither
/// the looked-up value nor the answer (the path is never an attribute).
#[tokio::test(flavor = "multi_thread")]
async fn a_call_is_traced_without_the_looked_up_value() {
    let d = Deployment::start(&[("counter", GRANT.to_owned())]).await;
    let dir = d.catalog.path().to_str().unwrap().to_owned();
    let mut router = spawn_router(
        &Broker::shared().bootstrap(),
        &d.topics,
        &["--catalog", &dir],
    );
    d.publish(&[(7, 1, "create")]).await;
    let otlp = common::Otlp::start(d.state.path());
    let (mut q, port) = d.query_with(|cmd| otlp.export_to(cmd));
    let t = Some(d.token.as_str());
    let path = format!("/v1/query/counter/by/deceased_id_number/{}", id_number(7));
    wait_until(
        "the state to hold record 7",
        Duration::from_secs(60),
        || http(port, "GET", &path, t, None).0 == 200,
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (status, _, body) = http_with(
        port,
        "GET",
        &path,
        t,
        None,
        &format!("traceparent: 00-{trace_id}-00f067aa0ba902b7-01\r\n"),
    );
    assert_eq!(status, 200, "{body}");
    let mut span = Json::Null;
    wait_until("the call's span", Duration::from_secs(20), || {
        span = otlp
            .spans()
            .into_iter()
            .find(|s| s["trace_id"] == trace_id)
            .unwrap_or(Json::Null);
        !span.is_null()
    });
    assert_eq!(span["name"], "govbus.query call");
    assert_eq!(span["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(span["attributes"]["govbus.operation"], "lookup_by");
    assert_eq!(span["attributes"]["http.response.status_code"], "200");
    let all = serde_json::to_string(&otlp.spans()).unwrap();
    assert!(
        govbus_testkit::ids::valid_ids_in(&all).is_empty() && !all.contains(&key(7)),
        "a looked-up value in a span: {all}"
    );
    for c in [&mut q, &mut router] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
