//! The current state of one dataset: every key's newest record, by source
//! version, with its declared lookup fields indexed.
//!
//! - **Last write wins by source version.** A change whose version is lower
//!   than the stored one is stale and ignored; an equal version is a replay
//!   (or a re-publication) and replaces the stored record, as compaction of
//!   the topic would.
//! - **A delete removes the key** from lookups and indexes. It leaves a
//!   tombstone (the version and event id, no value), so that an older
//!   version arriving after the delete is recognised as stale instead of
//!   bringing the record back.
//! - **Lookup fields** (declared per dataset in the catalog) are indexed as
//!   `field, value → key`; a value may name several keys.
//!
//! Tables: `rec:<dataset>` (key → [`Entry`]) and `idx:<dataset>`.
//! Metadata: `count:<dataset>` (live keys) and `applied:<dataset>` (the
//! newest applied change's time).

use crate::codec::{Reader, Writer};
use crate::{ReadTxn, StateError, Table, WriteTxn};

/// One change of a record, as consumed from `data.<dataset>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The record key (`ce_subject`).
    pub key: String,
    /// The source version (`ce_sourceversion`).
    pub version: u64,
    /// The framed canonical value; `None` deletes the key.
    pub value: Option<Vec<u8>>,
    /// When the change happened (milliseconds since the epoch).
    pub time_ms: i64,
    /// The event id (`ce_id`).
    pub id: String,
    /// `(lookup field, value)` pairs of the record (empty for a delete).
    pub index: Vec<(String, String)>,
}

/// A stored record: live, or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Source version.
    pub version: u64,
    /// When the change happened (milliseconds since the epoch).
    pub time_ms: i64,
    /// The event id of the change that wrote it.
    pub id: String,
    /// The framed canonical value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// The indexed lookup-field values.
    pub index: Vec<(String, String)>,
}

const ENTRY_FORMAT: u8 = 1;

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(ENTRY_FORMAT)
            .u64(self.version)
            .i64(self.time_ms)
            .str(&self.id);
        match &self.value {
            Some(v) => w.u8(1).bytes(v),
            None => w.u8(0),
        };
        w.u64(self.index.len() as u64);
        for (f, v) in &self.index {
            w.str(f).str(v);
        }
        w.0
    }

    fn decode(buf: &[u8]) -> Result<Entry, StateError> {
        let mut r = Reader::new(buf, "record entry");
        if r.u8()? != ENTRY_FORMAT {
            return Err(StateError::Corrupt(
                "record entry of an unknown format".into(),
            ));
        }
        let version = r.u64()?;
        let time_ms = r.i64()?;
        let id = r.str()?.to_owned();
        let value = match r.u8()? {
            0 => None,
            _ => Some(r.bytes()?.to_vec()),
        };
        let n = r.u64()?;
        let mut index = Vec::new();
        for _ in 0..n {
            index.push((r.str()?.to_owned(), r.str()?.to_owned()));
        }
        Ok(Entry {
            version,
            time_ms,
            id,
            value,
            index,
        })
    }

    /// Whether it holds a record (not a tombstone).
    pub fn is_live(&self) -> bool {
        self.value.is_some()
    }
}

/// What applying a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Records written (created or replaced).
    pub written: u64,
    /// Keys deleted.
    pub deleted: u64,
    /// Changes older than the stored version, ignored.
    pub stale: u64,
    /// Live keys after the batch.
    pub live: u64,
    /// The newest change time applied so far (milliseconds).
    pub newest_ms: i64,
}

fn rec_table(dataset: &str) -> String {
    format!("rec:{dataset}")
}

fn idx_table(dataset: &str) -> String {
    format!("idx:{dataset}")
}

fn index_prefix(field: &str, value: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.str(field).str(value);
    w.0
}

fn index_key(field: &str, value: &str, key: &str) -> Vec<u8> {
    let mut k = index_prefix(field, value);
    k.extend_from_slice(key.as_bytes());
    k
}

fn meta_i64(bytes: Option<Vec<u8>>) -> i64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, i64::from_be_bytes)
}

/// Applies `changes`, in order, to the state of `dataset` inside `tx`.
pub fn apply(tx: &WriteTxn, dataset: &str, changes: &[Change]) -> Result<Applied, StateError> {
    let mut rec = tx.table(&rec_table(dataset))?;
    let mut idx = tx.table(&idx_table(dataset))?;
    let count_key = format!("count:{dataset}");
    let applied_key = format!("applied:{dataset}");
    let mut live = meta_i64(tx.meta(&count_key)?);
    let mut out = Applied {
        newest_ms: meta_i64(tx.meta(&applied_key)?),
        ..Applied::default()
    };
    for c in changes {
        let prev = rec
            .get(c.key.as_bytes())?
            .map(|b| Entry::decode(&b))
            .transpose()?;
        if prev.as_ref().is_some_and(|p| p.version > c.version) {
            out.stale += 1;
            continue;
        }
        if let Some(p) = &prev {
            for (f, v) in &p.index {
                idx.delete(&index_key(f, v, &c.key))?;
            }
            if p.is_live() {
                live -= 1;
            }
        }
        let entry = Entry {
            version: c.version,
            time_ms: c.time_ms,
            id: c.id.clone(),
            value: c.value.clone(),
            index: if c.value.is_some() {
                c.index.clone()
            } else {
                Vec::new()
            },
        };
        for (f, v) in &entry.index {
            idx.put(&index_key(f, v, &c.key), b"")?;
        }
        if entry.is_live() {
            live += 1;
            out.written += 1;
        } else {
            out.deleted += 1;
        }
        rec.put(c.key.as_bytes(), &entry.encode())?;
        out.newest_ms = out.newest_ms.max(c.time_ms);
    }
    tx.set_meta(&count_key, &live.to_be_bytes())?;
    tx.set_meta(&applied_key, &out.newest_ms.to_be_bytes())?;
    out.live = u64::try_from(live).unwrap_or(0);
    Ok(out)
}

/// Forgets the whole state of `dataset` (its layout changed: it is rebuilt).
pub fn clear(tx: &WriteTxn, dataset: &str) -> Result<(), StateError> {
    tx.drop_table(&rec_table(dataset))?;
    tx.drop_table(&idx_table(dataset))?;
    tx.set_meta(&format!("count:{dataset}"), &0i64.to_be_bytes())?;
    tx.set_meta(&format!("applied:{dataset}"), &0i64.to_be_bytes())?;
    Ok(())
}

/// The stored entry of `key` (a tombstone included; see [`Entry::is_live`]).
pub fn get(r: &ReadTxn, dataset: &str, key: &str) -> Result<Option<Entry>, StateError> {
    Records::open(r, dataset)?.get(key)
}

/// A dataset's records in one read snapshot, its table opened once: for
/// many lookups in a row (a batch), each a single tree descent.
#[allow(missing_debug_implementations)]
pub struct Records(Option<Table>);

impl Records {
    /// The records of `dataset` in `r` (none yet: every lookup finds nothing).
    pub fn open(r: &ReadTxn, dataset: &str) -> Result<Records, StateError> {
        Ok(Records(r.table(&rec_table(dataset))?))
    }

    /// The stored entry of `key` (a tombstone included).
    pub fn get(&self, key: &str) -> Result<Option<Entry>, StateError> {
        let Some(t) = &self.0 else {
            return Ok(None);
        };
        t.get_with(key.as_bytes(), Entry::decode)?.transpose()
    }
}

/// Up to `limit` keys whose lookup field `field` holds `value`, in key order.
pub fn keys_by(
    r: &ReadTxn,
    dataset: &str,
    field: &str,
    value: &str,
    limit: usize,
) -> Result<Vec<String>, StateError> {
    let Some(t) = r.table(&idx_table(dataset))? else {
        return Ok(Vec::new());
    };
    let prefix = index_prefix(field, value);
    t.scan_prefix(&prefix, limit)?
        .into_iter()
        .map(|(k, _)| {
            String::from_utf8(k[prefix.len()..].to_vec())
                .map_err(|_| StateError::Corrupt("index key is not UTF-8".into()))
        })
        .collect()
}

/// Up to `limit` keys whose lookup field `field` holds `value`, after the
/// key `after` (the last of a previous page), in key order.
pub fn keys_by_after(
    r: &ReadTxn,
    dataset: &str,
    field: &str,
    value: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<String>, StateError> {
    let Some(t) = r.table(&idx_table(dataset))? else {
        return Ok(Vec::new());
    };
    let prefix = index_prefix(field, value);
    t.scan_prefix_after(&prefix, &index_key(field, value, after), limit)?
        .into_iter()
        .map(|(k, _)| {
            String::from_utf8(k[prefix.len()..].to_vec())
                .map_err(|_| StateError::Corrupt("index key is not UTF-8".into()))
        })
        .collect()
}

/// Live keys and the newest applied change time (milliseconds) of `dataset`.
pub fn stats(r: &ReadTxn, dataset: &str) -> Result<(u64, i64), StateError> {
    let live = meta_i64(r.meta(&format!("count:{dataset}"))?);
    let newest = meta_i64(r.meta(&format!("applied:{dataset}"))?);
    Ok((u64::try_from(live).unwrap_or(0), newest))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::Store;

    fn change(key: &str, version: u64, value: Option<&str>, city: &str) -> Change {
        Change {
            key: key.into(),
            version,
            value: value.map(|v| v.as_bytes().to_vec()),
            time_ms: i64::try_from(version).unwrap_or(0) * 10,
            id: format!("{key}-{version}"),
            index: if value.is_some() {
                vec![("city".into(), city.into())]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn an_older_version_never_overwrites_and_a_delete_stays_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb"), 1 << 20).unwrap();
        let tx = s.write().unwrap();
        let a = apply(
            &tx,
            "d.x",
            &[
                change("k", 2, Some("two"), "a"),
                change("k", 1, Some("one"), "b"),
                change("j", 1, Some("j1"), "a"),
                change("j", 3, None, ""),
                change("j", 2, Some("j2"), "a"),
            ],
        )
        .unwrap();
        tx.commit().unwrap();
        assert_eq!((a.written, a.deleted, a.stale, a.live), (2, 1, 2, 1));
        let r = s.read().unwrap();
        assert_eq!(
            get(&r, "d.x", "k").unwrap().unwrap().value.unwrap(),
            b"two".to_vec()
        );
        assert!(!get(&r, "d.x", "j").unwrap().unwrap().is_live());
        assert_eq!(keys_by(&r, "d.x", "city", "a", 10).unwrap(), vec!["k"]);
        assert!(keys_by_after(&r, "d.x", "city", "a", "k", 10)
            .unwrap()
            .is_empty());
        assert_eq!(
            keys_by_after(&r, "d.x", "city", "a", "", 10).unwrap(),
            vec!["k"]
        );
        assert!(keys_by(&r, "d.x", "city", "b", 10).unwrap().is_empty());
        assert_eq!(stats(&r, "d.x").unwrap(), (1, 30));
    }

    /// One step of a history: a key (of a few), a version, set or delete.
    fn arb_change() -> impl Strategy<Value = Change> {
        (0..6u8, 0..8u64, proptest::option::of(0..4u8), 0..3u8).prop_map(|(k, v, val, city)| {
            let value = val.map(|x| format!("v{x}"));
            change(&format!("k{k}"), v, value.as_deref(), &format!("c{city}"))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Random creates, updates, deletes and out-of-order versions, in
        /// random batch sizes, across a reopen: the store equals a
        /// last-write-wins model, its index included.
        #[test]
        fn the_store_equals_a_last_write_wins_model(
            history in proptest::collection::vec(arb_change(), 0..80),
            cut in 1..20usize,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s.redb");
            let mut model: BTreeMap<String, Change> = BTreeMap::new();
            for c in &history {
                if model.get(&c.key).is_none_or(|m| c.version >= m.version) {
                    model.insert(c.key.clone(), c.clone());
                }
            }
            for (i, batch) in history.chunks(cut).enumerate() {
                let s = Store::open(&path, 1 << 20).unwrap();
                let tx = s.write().unwrap();
                apply(&tx, "d.x", batch).unwrap();
                tx.set_offset("data.d.x", 0, i64::try_from(i).unwrap()).unwrap();
                tx.commit().unwrap();
            }
            let s = Store::open(&path, 1 << 20).unwrap();
            let r = s.read().unwrap();
            let mut live = 0;
            for k in 0..6u8 {
                let key = format!("k{k}");
                let got = get(&r, "d.x", &key).unwrap();
                match model.get(&key) {
                    None => prop_assert!(got.is_none()),
                    Some(m) => {
                        let got = got.unwrap();
                        prop_assert_eq!(got.version, m.version);
                        prop_assert_eq!(&got.value, &m.value);
                        live += u64::from(m.value.is_some());
                    }
                }
            }
            prop_assert_eq!(stats(&r, "d.x").unwrap().0, live);
            for city in ["c0", "c1", "c2"] {
                let want: Vec<String> = model
                    .values()
                    .filter(|m| m.value.is_some() && m.index.iter().any(|(_, v)| v == city))
                    .map(|m| m.key.clone())
                    .collect();
                prop_assert_eq!(keys_by(&r, "d.x", "city", city, 100).unwrap(), want);
            }
        }
    }
}
