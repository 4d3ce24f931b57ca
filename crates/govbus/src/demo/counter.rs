//! The counter clerk (柜台核验): at the end of the run, the pension counter
//! verifies two claimants against the live death register through the live
//! interface — one registered deceased, one not — as its system would.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use govbus_catalog::Catalog;
use govbus_kafka::topics::Topics;
use serde::Serialize;
use serde_json::{json, Value as Json};

/// The grant the counter uses (`schemas/subscriptions/hrss_deaths_counter_check.toml`).
pub const GRANT: &str = "hrss_deaths_counter_check";
const DEATHS: &str = "civil_affairs.death_registration";

/// What the counter was told.
#[derive(Debug, Default, Serialize)]
pub struct CounterCheck {
    /// A registered death, verified by ID number and name: `found` + `match`.
    pub deceased: String,
    /// A living person's ID number: `no_such_record`.
    pub living: String,
    /// Time to answer the first verification, milliseconds.
    pub answer_ms: u64,
}

fn post(addr: SocketAddr, path: &str, token: &str, body: &str) -> anyhow::Result<Json> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: demo\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(serde_json::from_str(body)?)
}

/// Verifies one registered death (read from `data.<deaths>`, as the clerk
/// would have the claimant's papers) and one living person.
pub fn check(
    addr: SocketAddr,
    token: &str,
    bootstrap: &str,
    topics: &Topics,
    catalog: &Catalog,
) -> anyhow::Result<CounterCheck> {
    let records = govbus_kafka::read::read_all(
        bootstrap,
        &topics.data(DEATHS),
        Duration::from_millis(500),
        Duration::from_secs(20),
    )?;
    let clear = records
        .iter()
        .rev()
        .filter_map(|r| r.value.as_deref())
        .find_map(|v| govbus_sink::decode::to_json_generic(catalog, v).ok())
        .ok_or_else(|| anyhow::anyhow!("no death registration on the bus yet"))?;
    let text = |f: &str| clear.get(f).and_then(Json::as_str).unwrap_or("").to_owned();
    let path = format!("/v1/query/{GRANT}/verify");
    let started = Instant::now();
    let mut answer = Json::Null;
    // The state may still be applying the last records: retry briefly.
    while started.elapsed() < Duration::from_secs(10) {
        answer = post(
            addr,
            &path,
            token,
            &json!({"field": "deceased_id_number", "value": text("deceased_id_number"),
                    "fields": {"deceased_name": text("deceased_name")}})
            .to_string(),
        )?;
        if answer["record"] == "found" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let answer_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let living = post(
        addr,
        &path,
        token,
        &json!({"field": "deceased_id_number", "value": "11010519800101001X",
                "fields": {"deceased_name": "王小明"}})
        .to_string(),
    )?;
    let say = |a: &Json| {
        format!(
            "{} (deceased_name: {})",
            a["record"].as_str().unwrap_or("?"),
            a["fields"]["deceased_name"].as_str().unwrap_or("?")
        )
    };
    Ok(CounterCheck {
        deceased: say(&answer),
        living: say(&living),
        answer_ms,
    })
}
