//! The demo's synthetic city: people, payments, deaths, employers and
//! enterprises, with a known number of planted fraud cases and a known
//! number of invalid records from every department.
//!
//! Everything is derived from a seed, so a run can be repeated exactly. The
//! people are drawn from disjoint pools (pensioners, unemployed, employed,
//! deceased) so that ordinary records can never match a rule by accident;
//! each planted case uses people of its own, and raises exactly one alert.

use std::collections::BTreeMap;

use govbus_fraud::{Rule, CONTRIBUTIONS, DEATHS, PENSIONS, UNEMPLOYMENT};
use serde::Serialize;
use serde_json::{json, Value as Json};

/// The enterprise registrations feed.
pub const ENTERPRISES: &str = "market_regulation.enterprise_registration";

/// How a department's records reach the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// `POST /v1/datasets/{dataset}/records`.
    Gateway,
    /// JSON records with CloudEvents headers, produced to `ingest.<dept>`.
    Kafka,
    /// A CSV table dump, diffed by `govbus snapshot`.
    TableDump,
    /// Rows written to a PostgreSQL table, read from the WAL by `govbus capture postgres`.
    PostgresCapture,
    /// Rows written to a MySQL table, read from the binlog by `govbus capture mysql`.
    MysqlCapture,
}

impl Path {
    /// As shown and as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            Path::Gateway => "gateway",
            Path::Kafka => "kafka",
            Path::TableDump => "table_dump",
            Path::PostgresCapture => "postgres",
            Path::MysqlCapture => "mysql",
        }
    }
}

/// The path of each dataset the demo publishes.
pub const STREAMS: [(&str, Path); 5] = [
    (DEATHS, Path::Gateway),
    (PENSIONS, Path::Kafka),
    (UNEMPLOYMENT, Path::Gateway),
    (CONTRIBUTIONS, Path::TableDump),
    (ENTERPRISES, Path::TableDump),
];

/// The path of each dataset in this run: with a PostgreSQL database the
/// contributions come from a captured table instead of dumps, with a MySQL
/// database the enterprise registrations do.
pub fn paths(postgres: bool, mysql: bool) -> Vec<(&'static str, Path)> {
    STREAMS
        .iter()
        .map(|&(ds, path)| match ds {
            CONTRIBUTIONS if postgres => (ds, Path::PostgresCapture),
            ENTERPRISES if mysql => (ds, Path::MysqlCapture),
            _ => (ds, path),
        })
        .collect()
}

/// One record to send: valid or deliberately not.
#[derive(Debug, Clone)]
pub struct Item {
    /// The record, as the department's system would send it.
    pub record: Json,
    /// Whether the bus must accept it.
    pub valid: bool,
}

/// What one second of the demo sends, per dataset.
#[derive(Debug, Default)]
pub struct Round {
    /// dataset → records.
    pub items: BTreeMap<&'static str, Vec<Item>>,
}

/// A planted case: the payment the app must flag, and under which rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Planted {
    /// The rule.
    pub rule: Rule,
    /// The payment's dataset.
    pub benefit_dataset: &'static str,
    /// The payment's key.
    pub benefit_record: String,
}

/// SplitMix64: small, fast, deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const SURNAMES: [&str; 16] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
];
const GIVEN: [&str; 16] = [
    "伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟",
    "涛",
];
const REGIONS: [&str; 4] = ["440303", "440304", "440305", "440306"];
const OFFICES: [&str; 3] = ["福田区民政局", "罗湖区民政局", "南山区民政局"];
const EMPLOYERS: [&str; 4] = [
    "深圳市鹏城科技有限公司",
    "深圳市南海物流有限公司",
    "深圳市福田建设集团",
    "深圳市前海数据服务有限公司",
];
const TYPES: [&str; 3] = ["limited_liability", "joint_stock", "sole_proprietorship"];

/// A person of the synthetic city.
#[derive(Debug, Clone)]
struct Person {
    id: String,
    name: String,
    birth: String,
}

fn resident_id(region: &str, birth: &str, seq: u64) -> String {
    let first17 = format!("{region}{}{:03}", birth.replace('-', ""), seq % 1000);
    let mut b = [0u8; 17];
    b.copy_from_slice(first17.as_bytes());
    format!(
        "{first17}{}",
        govbus_validate::resident_id_check_char(&b) as char
    )
}

/// A valid unified social credit code (GB 32100) from a number.
fn credit_code(n: u64) -> String {
    let first17 = format!("91440300{:09}", n % 1_000_000_000);
    let check = govbus_validate::credit_code_check_char(first17.as_bytes()).unwrap_or(b'0');
    format!("{first17}{}", check as char)
}

fn month(m: u32) -> String {
    format!("2026-{m:02}")
}

/// The demo's whole script.
#[derive(Debug)]
pub struct Script {
    /// What to send in each second.
    pub rounds: Vec<Round>,
    /// The cases the app must find.
    pub planted: Vec<Planted>,
    /// Benefit record → the round in which the last record of its case is
    /// published (table dumps publish every fifth round).
    pub completes: BTreeMap<String, usize>,
}

/// The round in which a table-dump row added in `round` is published.
pub fn dump_round(round: usize, rounds: usize) -> usize {
    let r = round + (4 - round % 5);
    r.min(rounds - 1)
}

#[cfg(test)]
impl Script {
    /// Valid and invalid records per dataset, over the whole script.
    pub fn counts(&self) -> BTreeMap<&'static str, (u64, u64)> {
        let mut out: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
        for r in &self.rounds {
            for (ds, items) in &r.items {
                let e = out.entry(ds).or_default();
                for i in items {
                    if i.valid {
                        e.0 += 1;
                    } else {
                        e.1 += 1;
                    }
                }
            }
        }
        out
    }
}

struct Builder {
    rng: Rng,
    seq: u64,
    now_ms: i64,
    paid_at: String,
    rounds: Vec<Round>,
}

impl Builder {
    fn person(&mut self, born_from: i64, born_to: i64) -> Person {
        self.seq += 1;
        let year = born_from + self.rng.below((born_to - born_from + 1) as u64) as i64;
        let birth = format!(
            "{year}-{:02}-{:02}",
            1 + self.rng.below(12),
            1 + self.rng.below(28)
        );
        let region = *self.rng.pick(&REGIONS);
        Person {
            id: resident_id(region, &birth, self.seq),
            name: format!("{}{}", self.rng.pick(&SURNAMES), self.rng.pick(&GIVEN)),
            birth,
        }
    }

    fn push(&mut self, round: usize, dataset: &'static str, record: Json, valid: bool) {
        let r = round.min(self.rounds.len() - 1);
        self.rounds[r]
            .items
            .entry(dataset)
            .or_default()
            .push(Item { record, valid });
    }

    fn death(&mut self, p: &Person, death_month: u32) -> (String, Json) {
        self.seq += 1;
        let no = format!("DR-2026-{:08}", self.seq);
        let day = 1 + self.rng.below(28);
        let office = *self.rng.pick(&OFFICES);
        let rec = json!({
            "registration_no": no,
            "deceased_id_number": p.id,
            "deceased_name": p.name,
            "gender": if self.seq % 2 == 0 { "MALE" } else { "FEMALE" },
            "birth_date": p.birth,
            "death_date": format!("{}-{day:02}", month(death_month)),
            "death_place": "深圳市人民医院",
            "death_cause_category": *self.rng.pick(&["natural", "disease", "accident"]),
            "registering_office": office,
            "registered_at": govbus_catalog::time::format_rfc3339_millis(self.now_ms - 60_000),
            "informant_phone": format!("139{:08}", self.seq % 100_000_000),
        });
        (no, rec)
    }

    fn pension(&mut self, p: &Person, m: u32) -> (String, Json) {
        self.seq += 1;
        let id = format!("PP-{:09}", self.seq);
        let rec = json!({
            "payment_id": id,
            "recipient_id_number": p.id,
            "recipient_name": p.name,
            "pension_type": "ENTERPRISE_EMPLOYEE",
            "pay_month": month(m),
            "amount": format!("{}.{:02}", 2000 + self.rng.below(4000), self.rng.below(100)),
            "paid_at": self.paid_at,
        });
        (id, rec)
    }

    fn unemployment(&mut self, p: &Person, m: u32) -> (String, Json) {
        self.seq += 1;
        let id = format!("UB-{:09}", self.seq);
        let rec = json!({
            "payment_id": id,
            "recipient_id_number": p.id,
            "recipient_name": p.name,
            "benefit_month": month(m),
            "amount": format!("{}.00", 1500 + self.rng.below(800)),
            "insured_region": *self.rng.pick(&REGIONS),
            "paid_at": self.paid_at,
        });
        (id, rec)
    }

    fn contribution(&mut self, p: &Person, m: u32) -> (String, Json) {
        self.seq += 1;
        let id = format!("SI-{:09}", self.seq);
        let employer = self.rng.below(EMPLOYERS.len() as u64);
        let base = 5000 + self.rng.below(20_000);
        let rec = json!({
            "contribution_id": id,
            "insured_id_number": p.id,
            "insured_name": p.name,
            "employer_credit_code": credit_code(1000 + employer),
            "employer_name": EMPLOYERS[employer as usize],
            "insurance_type": "PENSION",
            "contribution_month": month(m),
            "base_amount": format!("{base}.00"),
            "employer_amount": format!("{}.00", base * 16 / 100),
            "employee_amount": format!("{}.00", base * 8 / 100),
            "paid_at": self.paid_at,
        });
        (id, rec)
    }

    fn enterprise(&mut self, n: u64, status: &str) -> Json {
        let rep = self.person(1960, 1995);
        json!({
            "credit_code": credit_code(500_000 + n),
            "enterprise_name": format!("深圳市示例{n}号科技有限公司"),
            "legal_representative": rep.name,
            "enterprise_type": *self.rng.pick(&TYPES),
            "registered_capital": format!("{}.00", 100_000 * (1 + n % 50)),
            "status": status,
            "established_date": format!("20{:02}-0{}-1{}", 10 + n % 15, 1 + n % 9, n % 9),
            "address": format!("深圳市南山区科技园{}栋", n % 40),
            "business_scope": "软件开发；信息技术咨询服务",
            "contact_phone": format!("137{:08}", n),
        })
    }
}

/// Builds the script: `seconds` rounds of `rate` records per second for the
/// busiest stream, `cases` planted cases per rule, and some invalid records
/// from every department. `now_ms` dates the timestamps.
pub fn script(seed: u64, seconds: usize, rate: usize, cases: usize, now_ms: i64) -> Script {
    let seconds = seconds.max(4);
    let mut b = Builder {
        rng: Rng::new(seed),
        seq: 0,
        now_ms,
        paid_at: govbus_catalog::time::format_rfc3339_millis(now_ms - 3_600_000),
        rounds: (0..seconds).map(|_| Round::default()).collect(),
    };
    let rate = rate.max(4);
    // Ordinary people: disjoint pools.
    let pensioners: Vec<Person> = (0..200).map(|_| b.person(1945, 1960)).collect();
    let unemployed: Vec<Person> = (0..120).map(|_| b.person(1975, 1995)).collect();
    let employed: Vec<Person> = (0..200).map(|_| b.person(1970, 2000)).collect();
    let mut enterprises = 0u64;
    for r in 0..seconds {
        for _ in 0..rate {
            let p = pensioners[b.rng.below(200) as usize].clone();
            let m = 1 + b.rng.below(10) as u32;
            let (_, rec) = b.pension(&p, m);
            b.push(r, PENSIONS, rec, true);
        }
        for _ in 0..rate / 2 {
            let p = unemployed[b.rng.below(120) as usize].clone();
            let m = 1 + b.rng.below(10) as u32;
            let (_, rec) = b.unemployment(&p, m);
            b.push(r, UNEMPLOYMENT, rec, true);
            let e = employed[b.rng.below(200) as usize].clone();
            let m = 1 + b.rng.below(10) as u32;
            let (_, rec) = b.contribution(&e, m);
            b.push(r, CONTRIBUTIONS, rec, true);
        }
        for _ in 0..rate / 4 {
            // The deceased receive nothing: a pool of their own.
            let p = b.person(1925, 1950);
            let m = 1 + b.rng.below(10) as u32;
            let (_, rec) = b.death(&p, m);
            b.push(r, DEATHS, rec, true);
        }
        for _ in 0..(rate / 10).max(1) {
            enterprises += 1;
            let rec = b.enterprise(enterprises, "ACTIVE");
            b.push(r, ENTERPRISES, rec, true);
        }
        // Invalid records: one per stream every other second.
        if r % 2 == 1 {
            let p = b.person(1930, 1950);
            let (_, mut rec) = b.death(&p, 5);
            let id = rec["deceased_id_number"].as_str().unwrap_or("").to_owned();
            let flip = if id.ends_with('1') { "2" } else { "1" };
            rec["deceased_id_number"] = json!(format!("{}{flip}", &id[..17]));
            b.push(r, DEATHS, rec, false);
            let p = pensioners[b.rng.below(200) as usize].clone();
            let (_, mut rec) = b.pension(&p, 3);
            rec["pay_month"] = json!("2026-13");
            b.push(r, PENSIONS, rec, false);
            let p = unemployed[b.rng.below(120) as usize].clone();
            let (_, mut rec) = b.unemployment(&p, 3);
            rec["insured_region"] = json!("44030");
            b.push(r, UNEMPLOYMENT, rec, false);
            let e = employed[b.rng.below(200) as usize].clone();
            let (_, mut rec) = b.contribution(&e, 2);
            rec["employer_credit_code"] = json!("91440300MA5ABCDEF0");
            b.push(r, CONTRIBUTIONS, rec, false);
            enterprises += 1;
            let mut rec = b.enterprise(enterprises, "ACTIVE");
            rec["contact_phone"] = json!("1234");
            b.push(r, ENTERPRISES, rec, false);
        }
    }
    // Planted cases, spread over the first 60 % of the run; the two halves
    // of a case arrive in either order, up to two seconds apart.
    let mut planted = Vec::new();
    let mut completes = BTreeMap::new();
    let span = (seconds * 6 / 10).max(1);
    for (k, rule) in Rule::ALL.into_iter().enumerate() {
        for i in 0..cases {
            let at = (i * span / cases.max(1) + k) % span;
            let (first, second) = if i % 2 == 0 {
                (at, at + 2)
            } else {
                (at + 2, at)
            };
            match rule {
                Rule::PaidAfterDeath => {
                    let p = b.person(1940, 1955);
                    let (_, ok) = b.pension(&p, 2);
                    b.push(first, PENSIONS, ok, true);
                    let (_, death) = b.death(&p, 3);
                    b.push(first, DEATHS, death, true);
                    let (id, after) = b.pension(&p, 5);
                    b.push(second, PENSIONS, after, true);
                    completes.insert(id.clone(), first.max(second).min(seconds - 1));
                    planted.push(Planted {
                        rule,
                        benefit_dataset: PENSIONS,
                        benefit_record: id,
                    });
                }
                Rule::UnemploymentWithPension => {
                    let p = b.person(1960, 1966);
                    let (_, pension) = b.pension(&p, 4);
                    b.push(first, PENSIONS, pension, true);
                    let (id, benefit) = b.unemployment(&p, 4);
                    b.push(second, UNEMPLOYMENT, benefit, true);
                    let (_, other) = b.unemployment(&p, 7);
                    b.push(second, UNEMPLOYMENT, other, true);
                    completes.insert(id.clone(), first.max(second).min(seconds - 1));
                    planted.push(Planted {
                        rule,
                        benefit_dataset: UNEMPLOYMENT,
                        benefit_record: id,
                    });
                }
                Rule::UnemploymentWhileEmployed => {
                    let p = b.person(1980, 1998);
                    let (_, c) = b.contribution(&p, 6);
                    b.push(first, CONTRIBUTIONS, c, true);
                    let (id, benefit) = b.unemployment(&p, 6);
                    b.push(second, UNEMPLOYMENT, benefit, true);
                    let (_, other) = b.unemployment(&p, 8);
                    b.push(second, UNEMPLOYMENT, other, true);
                    let last =
                        dump_round(first.min(seconds - 1), seconds).max(second.min(seconds - 1));
                    completes.insert(id.clone(), last);
                    planted.push(Planted {
                        rule,
                        benefit_dataset: UNEMPLOYMENT,
                        benefit_record: id,
                    });
                }
            }
        }
    }
    planted.sort();
    Script {
        rounds: b.rounds,
        planted,
        completes,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use govbus_fraud::{Detector, Input};

    fn catalog() -> govbus_catalog::Catalog {
        crate::catalog_source::load(None).unwrap()
    }

    /// The script's own promise, checked without Kafka: the valid records
    /// pass the engine, the invalid ones fail it, and the rules applied to
    /// the valid ones find exactly the planted cases.
    #[test]
    fn valid_records_pass_invalid_fail_and_the_rules_find_exactly_the_planted() {
        let catalog = catalog();
        let engine = govbus_validate::Engine::new(&catalog).unwrap();
        let now = crate::demo::now_ms();
        let s = script(7, 12, 20, 4, now);
        assert_eq!(s.planted.len(), 12);
        let ctx = govbus_validate::Context::at(now);
        let mut detector = Detector::default();
        let mut found = Vec::new();
        for r in &s.rounds {
            for (ds, items) in &r.items {
                for item in items {
                    let bytes = serde_json::to_vec(&item.record).unwrap();
                    let verdict = engine.dataset(ds).unwrap().validate_json(&bytes, &ctx);
                    assert_eq!(
                        verdict.is_ok(),
                        item.valid,
                        "{ds}: {:?} {}",
                        verdict.err(),
                        item.record
                    );
                    if !item.valid || *ds == ENTERPRISES {
                        continue;
                    }
                    // The app sees pseudonyms; the raw id is as good a join key here.
                    let v = item.record.as_object().unwrap();
                    found.extend(detector.observe(Input::from_json(ds, v).unwrap()));
                }
            }
        }
        let mut got: Vec<Planted> = found
            .iter()
            .map(|a| Planted {
                rule: a.rule,
                benefit_dataset: if a.benefit_dataset == PENSIONS {
                    PENSIONS
                } else {
                    UNEMPLOYMENT
                },
                benefit_record: a.benefit_record.clone(),
            })
            .collect();
        got.sort();
        assert_eq!(got, s.planted);
        let counts = s.counts();
        for (ds, _) in STREAMS {
            let (valid, invalid) = counts[ds];
            assert!(
                valid > 0 && invalid > 0,
                "{ds}: {valid} valid, {invalid} invalid"
            );
        }
    }

    #[test]
    fn table_dumps_are_published_every_fifth_second_and_at_the_end() {
        assert_eq!(
            [0, 4, 5, 9, 18].map(|r| dump_round(r, 20)),
            [4, 4, 9, 9, 19]
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_script() {
        let a = script(1, 5, 8, 2, 1_700_000_000_000);
        let b = script(1, 5, 8, 2, 1_700_000_000_000);
        assert_eq!(a.counts(), b.counts());
        assert_eq!(a.planted, b.planted);
    }
}
