//! The anti-fraud state at city scale, without a broker: a month of
//! records for `--people` people (pensions for 30 %, contributions for
//! 60 %, unemployment benefit for 2 %, deaths for 0.1 %, with planted
//! overlaps) applied through the app's own rules and store, committed every
//! `--batch` records with offsets, as the app does; then a round of
//! corrections and deletions; then a restart.
//!
//! ```text
//! cargo run --release -p govbus-fraud --example scale -- --people 10000000
//! ```
//!
//! Prints the catch-up rate, peak and final RSS, the store's size and the
//! restart time (open the store, read the offsets, apply one batch).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use govbus_fraud::{apply, Change, Feed, Input, RuleParams, Status, TxnKv};
use govbus_state::{Store, DEFAULT_CACHE_BYTES};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.replace('_', "").parse().expect("a number"))
        .unwrap_or(default)
}

fn person(i: u64) -> String {
    // splitmix64: pseudonyms land all over the key space, as real ones do.
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    format!("ps_{:016x}", z ^ (z >> 31))
}

/// The records of person `i` for May 2026.
fn records_of(i: u64, out: &mut Vec<Change>) {
    let p = person(i);
    let set = |feed: Feed, key: String, value: Input| Change {
        feed,
        key,
        version: 1,
        value: Some(value),
    };
    let month = "2026-05".to_owned();
    let kind = i % 10;
    if kind < 3 {
        let key = format!("PP-{i:010}");
        out.push(set(
            Feed::Pensions,
            key.clone(),
            Input::Benefit {
                dataset: govbus_fraud::PENSIONS,
                record: key,
                person: p.clone(),
                month: month.clone(),
                amount: "3125.40".into(),
            },
        ));
    } else if kind < 9 {
        let key = format!("SC-{i:010}");
        out.push(set(
            Feed::Contributions,
            key.clone(),
            Input::Contribution {
                record: key,
                person: p.clone(),
                month: month.clone(),
                employer_amount: Some("640.00".into()),
            },
        ));
    }
    // 2 % get unemployment benefit; those with i % 1000 in {1, 5} are
    // pensioners or employed (planted), the rest are not.
    if i % 50 == 9 || i % 1000 == 1 || i % 1000 == 5 {
        let key = format!("UB-{i:010}");
        out.push(set(
            Feed::Unemployment,
            key.clone(),
            Input::Benefit {
                dataset: govbus_fraud::UNEMPLOYMENT,
                record: key,
                person: p.clone(),
                month: month.clone(),
                amount: "1890.00".into(),
            },
        ));
    }
    // 0.1 % died in March (pensioners: their May pension is planted fraud).
    if i % 1000 == 2 {
        let key = format!("DR-{i:010}");
        out.push(set(
            Feed::Deaths,
            key.clone(),
            Input::Death {
                record: key,
                person: p,
                month: "2026-03".into(),
            },
        ));
    }
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Applies `changes` in batches of `batch`, each one commit with its offset.
fn run(
    store: &Store,
    changes: &mut dyn Iterator<Item = Change>,
    batch: usize,
    offset: &mut i64,
) -> (u64, u64, u64) {
    let params = RuleParams::default();
    let (mut n, mut raised, mut withdrawn) = (0u64, 0u64, 0u64);
    loop {
        let chunk: Vec<Change> = changes.take(batch).collect();
        if chunk.is_empty() {
            break;
        }
        let tx = store.write().unwrap();
        {
            let mut kv = TxnKv::open(&tx).unwrap();
            for c in &chunk {
                for o in apply(&mut kv, &params, c).unwrap().outcomes {
                    raised += u64::from(o.raises());
                    withdrawn += u64::from(o.withdraws());
                }
            }
        }
        *offset += chunk.len() as i64;
        tx.set_offset("view.bench", 0, *offset).unwrap();
        tx.commit().unwrap();
        n += chunk.len() as u64;
    }
    (n, raised, withdrawn)
}

fn main() {
    let people = arg("--people", 1_000_000);
    let batch = arg("--batch", 5_000) as usize;
    let dir =
        tempfile::tempdir_in(std::env::var("SCALE_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let path = dir.path().join(govbus_fraud::STORE_FILE);
    println!("people {people}, batch {batch}, store {}", path.display());

    let store = Store::open(&path, DEFAULT_CACHE_BYTES).unwrap();
    let mut offset = 0i64;
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut changes = (0..people).flat_map(move |i| {
        buf.clear();
        records_of(i, &mut buf);
        std::mem::take(&mut buf)
    });
    let (n, raised, _) = run(&store, &mut changes, batch, &mut offset);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "catch-up: {n} records in {secs:.1} s = {:.0} records/s; {raised} alerts raised",
        n as f64 / secs
    );
    println!(
        "RSS after catch-up: {} MiB (peak {} MiB); store {} MiB",
        rss_kib("VmRSS:") / 1024,
        rss_kib("VmHWM:") / 1024,
        std::fs::metadata(&path).map_or(0, |m| m.len()) >> 20
    );

    // Corrections: 1 % of the deaths deleted, 1 % of the pensioners' May
    // pension moved to April, every planted pensioner's unemployment deleted.
    let started = Instant::now();
    let mut fixes = (0..people).filter_map(|i| {
        let version = 2;
        if i % 1000 == 2 && i % 100_000 < 1000 {
            return Some(Change {
                feed: Feed::Deaths,
                key: format!("DR-{i:010}"),
                version,
                value: None,
            });
        }
        if i % 1000 == 1 {
            return Some(Change {
                feed: Feed::Unemployment,
                key: format!("UB-{i:010}"),
                version,
                value: None,
            });
        }
        if i % 10 < 3 && i % 100 == 20 {
            let key = format!("PP-{i:010}");
            return Some(Change {
                feed: Feed::Pensions,
                key: key.clone(),
                version,
                value: Some(Input::Benefit {
                    dataset: govbus_fraud::PENSIONS,
                    record: key,
                    person: person(i),
                    month: "2026-04".into(),
                    amount: "3125.40".into(),
                }),
            });
        }
        None
    });
    let (n, raised, withdrawn) = run(&store, &mut fixes, batch, &mut offset);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "corrections: {n} in {secs:.1} s = {:.0} records/s; {raised} raised, {withdrawn} withdrawn",
        n as f64 / secs
    );
    drop(store);

    // Restart: open, read the offsets, apply one batch of new records.
    let started = Instant::now();
    let store = Store::open(&path, DEFAULT_CACHE_BYTES).unwrap();
    let resume = store.read().unwrap().offsets("view.bench").unwrap();
    let opened = started.elapsed();
    assert_eq!(resume.get(&0), Some(&offset));
    let mut more = (people..people + (batch as u64)).flat_map(|i| {
        let mut v = Vec::new();
        records_of(i, &mut v);
        v
    });
    run(&store, &mut more.by_ref().take(batch), batch, &mut offset);
    println!(
        "restart: store open and offsets read in {:.0} ms; first batch applied after {:.0} ms",
        opened.as_secs_f64() * 1000.0,
        started.elapsed().as_secs_f64() * 1000.0
    );
    let standing = {
        let tx = store.write().unwrap();
        let mut kv = TxnKv::open(&tx).unwrap();
        let n = govbus_fraud::alerts(&mut kv)
            .unwrap()
            .values()
            .filter(|a| a.status == Status::Standing)
            .count();
        drop(kv);
        tx.commit().unwrap();
        n
    };
    println!(
        "alerts standing at the end: {standing}; peak RSS {} MiB",
        rss_kib("VmHWM:") / 1024
    );
}
