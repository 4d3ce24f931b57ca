//! Which embedded engine holds govbus's keyed state: redb or fjall.
//!
//! The workload is the state builder's and the lookup interface's: batches
//! of upserts (1,000 records of ~200 bytes, one offsets row in the same
//! atomic commit), then random point reads. Each engine runs in its own
//! child process so that RSS is its own.
//!
//!   cargo run --release --manifest-path tools/engine-choice/Cargo.toml -- [keys]

use std::time::Instant;

const BATCH: usize = 1000;

fn key(i: u64) -> [u8; 18] {
    let mut k = *b"11010119900000000X";
    let s = format!("{:016}", i.wrapping_mul(2654435761) % 10_000_000_000_000_000);
    k[..16].copy_from_slice(s.as_bytes());
    k
}

fn value(i: u64) -> Vec<u8> {
    let mut v = vec![b'v'; 200];
    v[..8].copy_from_slice(&i.to_be_bytes());
    v
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn dir_size(p: &std::path::Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() { dir_size(&e.path()) } else { m.len() };
    }
    n
}

fn rng(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn report(engine: &str, keys: u64, load: f64, reads: u64, read_s: f64, reopen: f64, dir: &std::path::Path) {
    println!(
        "{engine:6} load {:>9.0} rec/s | point reads {:>9.0} /s | reopen {:>6.1} ms | RSS {:>6} MiB | disk {:>6} MiB",
        keys as f64 / load,
        reads as f64 / read_s,
        reopen * 1000.0,
        rss_kib() / 1024,
        dir_size(dir) / (1 << 20)
    );
}

fn run_redb(keys: u64, dir: &std::path::Path) {
    use redb::{ReadableDatabase, TableDefinition};
    const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
    const O: TableDefinition<u32, i64> = TableDefinition::new("offsets");
    let path = dir.join("state.redb");
    let db = open_redb(&path);
    let t0 = Instant::now();
    let mut i = 0;
    while i < keys {
        let mut tx = db.begin_write().unwrap();
        tx.set_durability(redb::Durability::Immediate).unwrap();
        {
            let mut t = tx.open_table(T).unwrap();
            for j in i..(i + BATCH as u64).min(keys) {
                t.insert(&key(j)[..], &value(j)[..]).unwrap();
            }
            let mut o = tx.open_table(O).unwrap();
            o.insert(0, i as i64).unwrap();
        }
        tx.commit().unwrap();
        i += BATCH as u64;
    }
    let load = t0.elapsed().as_secs_f64();
    drop(db);
    let t1 = Instant::now();
    let db = open_redb(&path);
    let reopen = t1.elapsed().as_secs_f64();
    let reads = 200_000;
    let mut s = 88172645463325252u64;
    let t2 = Instant::now();
    let tx = db.begin_read().unwrap();
    let t = tx.open_table(T).unwrap();
    for _ in 0..reads {
        let k = key(rng(&mut s) % keys);
        assert!(t.get(&k[..]).unwrap().is_some());
    }
    report("redb", keys, load, reads, t2.elapsed().as_secs_f64(), reopen, dir);
}

/// redb's page cache, bounded (its default is 1 GiB): 64 MiB, as govbus opens it.
fn open_redb(path: &std::path::Path) -> redb::Database {
    redb::Database::builder()
        .set_cache_size(64 << 20)
        .create(path)
        .unwrap()
}

fn run_fjall(keys: u64, dir: &std::path::Path) {
    use fjall::{Database, KeyspaceCreateOptions, PersistMode};
    let path = dir.join("state.fjall");
    let db = Database::builder(&path).open().unwrap();
    let t = db.keyspace("records", KeyspaceCreateOptions::default).unwrap();
    let o = db.keyspace("offsets", KeyspaceCreateOptions::default).unwrap();
    let t0 = Instant::now();
    let mut i = 0;
    while i < keys {
        let mut b = db.batch().durability(Some(PersistMode::SyncData));
        for j in i..(i + BATCH as u64).min(keys) {
            b.insert(&t, key(j).to_vec(), value(j));
        }
        b.insert(&o, 0u32.to_be_bytes().to_vec(), (i as i64).to_be_bytes().to_vec());
        b.commit().unwrap();
        i += BATCH as u64;
    }
    let load = t0.elapsed().as_secs_f64();
    drop((t, o, db));
    let t1 = Instant::now();
    let db = Database::builder(&path).open().unwrap();
    let t = db.keyspace("records", KeyspaceCreateOptions::default).unwrap();
    let reopen = t1.elapsed().as_secs_f64();
    let reads = 200_000;
    let mut s = 88172645463325252u64;
    let t2 = Instant::now();
    for _ in 0..reads {
        let k = key(rng(&mut s) % keys);
        assert!(t.get(k).unwrap().is_some());
    }
    report("fjall", keys, load, reads, t2.elapsed().as_secs_f64(), reopen, dir);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 {
        let keys: u64 = args[2].parse().unwrap();
        let dir = tempfile_dir();
        match args[1].as_str() {
            "redb" => run_redb(keys, &dir),
            _ => run_fjall(keys, &dir),
        }
        std::fs::remove_dir_all(&dir).ok();
        return;
    }
    let keys = args.get(1).map_or(1_000_000, |k| k.parse().unwrap());
    println!("{keys} keys of ~218 bytes, {BATCH} per atomic commit (records + offsets row, fsync), 200,000 random point reads");
    for engine in ["redb", "fjall"] {
        let st = std::process::Command::new(&args[0])
            .args([engine, &keys.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("engine-choice-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
