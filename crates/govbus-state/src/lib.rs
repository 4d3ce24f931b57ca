//! Keyed state built from Kafka topics, on disk, with its input position.
//!
//! Two users share this crate: the live interfaces (`govbus query`), whose
//! state is the current value of every record key of a dataset, and the
//! anti-fraud app, whose state is what its rules have seen. Both need the
//! same three things, and get them from [`Store`]:
//!
//! - **atomic progress**: the records a batch changed and the offsets that
//!   batch consumed commit in one transaction ([`WriteTxn::set_offset`]), so a
//!   restart resumes exactly where the last commit stopped: nothing replayed
//!   from the beginning, nothing skipped;
//! - **bounded memory**: the state lives in an embedded B-tree file (redb,
//!   chosen over fjall by measurement, see ARCHITECTURE.md) with a fixed page
//!   cache, so RSS does not grow with the number of keys;
//! - **recovery**: a store that does not open (corrupt, truncated, written by
//!   an incompatible version) is moved aside and rebuilt from the topics
//!   ([`Store::open_or_rebuild`]), which hold every key's current value
//!   (canonical topics are compacted, deletes are tombstones).
//!
//! [`records`] is the last-write-wins record state of one dataset on top of
//! the store: an older source version never overwrites a newer one, a delete
//! removes the key (and keeps a small tombstone so that a late, older version
//! cannot bring it back), and declared lookup fields are indexed.
//!
//! This crate does no Kafka I/O: callers consume, then apply and commit.

pub mod codec;
pub mod records;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};

/// What went wrong with a state store. Never holds a record value.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store file could not be opened or created.
    #[error("state store {path}: {detail}")]
    Open {
        /// The store file.
        path: PathBuf,
        /// What the engine said.
        detail: String,
    },
    /// The store file cannot be read or written (permissions, disk): not a
    /// reason to throw it away.
    #[error("state store {path}: {detail}")]
    Io {
        /// The store file.
        path: PathBuf,
        /// What the system said.
        detail: String,
    },
    /// Another process holds the store (two instances on one directory).
    #[error(
        "state store {0} is in use by another process; give each instance its own --state-dir"
    )]
    InUse(PathBuf),
    /// A read or write failed.
    #[error("state store: {0}")]
    Storage(String),
    /// A stored entry does not decode: the file is damaged or from another version.
    #[error("state store entry is damaged: {0}")]
    Corrupt(String),
}

/// A stored `(key, value)` pair.
pub type Row = (Vec<u8>, Vec<u8>);

fn storage<E: Into<redb::Error>>(e: E) -> StateError {
    match e.into() {
        redb::Error::Corrupted(d) => StateError::Corrupt(d),
        other => StateError::Storage(other.to_string()),
    }
}

/// Page cache of a store, bytes: bounded, so memory does not grow with the
/// state (redb's default is 1 GiB).
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

const OFFSETS: TableDefinition<&str, i64> = TableDefinition::new("_offsets");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("_meta");

/// One store file. Cheap to share (`Arc` inside); one writer at a time,
/// readers never block.
#[derive(Debug, Clone)]
pub struct Store {
    db: std::sync::Arc<redb::Database>,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Store, StateError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StateError::Open {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
        }
        // redb's debug builds panic on some damage instead of returning
        // `Corrupted`: a panic while opening is damage too.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            redb::Database::builder()
                .set_cache_size(cache_bytes)
                .create(path)
        }))
        .map_err(|_| StateError::Open {
            path: path.to_owned(),
            detail: "the file is damaged (the engine gave up reading it)".into(),
        })?;
        let db = opened.map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StateError::InUse(path.to_owned()),
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if !matches!(
                    io.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
                ) =>
            {
                StateError::Io {
                    path: path.to_owned(),
                    detail: io.to_string(),
                }
            }
            other => StateError::Open {
                path: path.to_owned(),
                detail: other.to_string(),
            },
        })?;
        let store = Store {
            db: std::sync::Arc::new(db),
            path: path.to_owned(),
        };
        // Create the bookkeeping tables, so readers never meet a missing one.
        let tx = store.write()?;
        tx.tx.open_table(OFFSETS).map_err(storage)?;
        tx.tx.open_table(META).map_err(storage)?;
        tx.commit()?;
        Ok(store)
    }

    /// Opens the store at `path`; one that cannot be opened because it is
    /// damaged or written by an incompatible version (not for want of
    /// permission or disk, [`StateError::Io`]) is renamed to
    /// `<path>.broken-<unix seconds>` and a new, empty one is created, so the
    /// caller rebuilds it from the topics. Returns why it was rebuilt.
    pub fn open_or_rebuild(
        path: &Path,
        cache_bytes: usize,
    ) -> Result<(Store, Option<String>), StateError> {
        match Store::open(path, cache_bytes) {
            Ok(s) => Ok((s, None)),
            Err(e @ (StateError::InUse(_) | StateError::Io { .. })) => Err(e),
            Err(e) => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let aside = path.with_extension(format!("broken-{secs}"));
                std::fs::rename(path, &aside).map_err(|r| StateError::Open {
                    path: path.to_owned(),
                    detail: format!("{e}; and it could not be moved aside: {r}"),
                })?;
                let why = format!("{e} (moved to {})", aside.display());
                Ok((Store::open(path, cache_bytes)?, Some(why)))
            }
        }
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts the one write transaction (waits for a running one to commit).
    pub fn write(&self) -> Result<WriteTxn, StateError> {
        let mut tx = self.db.begin_write().map_err(storage)?;
        tx.set_durability(redb::Durability::Immediate)
            .map_err(|e| StateError::Storage(e.to_string()))?;
        Ok(WriteTxn { tx })
    }

    /// A consistent snapshot for reading: it sees every commit made before it
    /// started and none after.
    pub fn read(&self) -> Result<ReadTxn, StateError> {
        Ok(ReadTxn {
            tx: self.db.begin_read().map_err(storage)?,
        })
    }
}

fn offset_key(topic: &str, partition: i32) -> String {
    format!("{topic}\u{0}{partition}")
}

/// The offsets of `topic` in an offsets table (of a read or a write transaction).
fn offsets_in<T: ReadableTable<&'static str, i64>>(
    t: &T,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, StateError> {
    let prefix = format!("{topic}\u{0}");
    let rows = t
        .range(prefix.as_str()..)
        .map_err(storage)?
        .map(|r| {
            r.map(|(k, v)| (k.value().to_owned(), v.value()))
                .map_err(storage)
        })
        .take_while(|r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)));
    parse_offsets(topic, rows)
}

fn parse_offsets<'a>(
    topic: &str,
    rows: impl Iterator<Item = Result<(String, i64), StateError>> + 'a,
) -> Result<BTreeMap<i32, i64>, StateError> {
    let mut out = BTreeMap::new();
    for row in rows {
        let (k, v) = row?;
        let Some(p) = k.strip_prefix(topic).and_then(|r| r.strip_prefix('\u{0}')) else {
            continue;
        };
        let p = p
            .parse::<i32>()
            .map_err(|_| StateError::Corrupt(format!("offset row `{}`", k.escape_debug())))?;
        out.insert(p, v);
    }
    Ok(out)
}

/// The write transaction: record changes, offsets and metadata commit
/// together or not at all.
#[allow(missing_debug_implementations)]
pub struct WriteTxn {
    tx: redb::WriteTransaction,
}

impl WriteTxn {
    /// A table of byte keys and values, created when first written.
    pub fn table(&self, name: &str) -> Result<TableMut<'_>, StateError> {
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(name);
        Ok(TableMut {
            t: self.tx.open_table(def).map_err(storage)?,
        })
    }

    /// Removes a whole table (a dataset whose layout changed, say).
    pub fn drop_table(&self, name: &str) -> Result<(), StateError> {
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(name);
        self.tx.delete_table(def).map_err(storage)?;
        Ok(())
    }

    /// Records that `partition` of `topic` is consumed up to, not including,
    /// `next`.
    pub fn set_offset(&self, topic: &str, partition: i32, next: i64) -> Result<(), StateError> {
        let mut t = self.tx.open_table(OFFSETS).map_err(storage)?;
        t.insert(offset_key(topic, partition).as_str(), next)
            .map_err(storage)?;
        Ok(())
    }

    /// Forgets every offset of `topic` (the next start reads it from the beginning).
    pub fn clear_offsets(&self, topic: &str) -> Result<(), StateError> {
        let keys: Vec<i32> = self.offsets(topic)?.into_keys().collect();
        let mut t = self.tx.open_table(OFFSETS).map_err(storage)?;
        for p in keys {
            t.remove(offset_key(topic, p).as_str()).map_err(storage)?;
        }
        Ok(())
    }

    /// The committed-or-pending offsets of `topic`: partition → next offset.
    pub fn offsets(&self, topic: &str) -> Result<BTreeMap<i32, i64>, StateError> {
        offsets_in(&self.tx.open_table(OFFSETS).map_err(storage)?, topic)
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let t = self.tx.open_table(META).map_err(storage)?;
        let v = t.get(key).map_err(storage)?.map(|g| g.value().to_vec());
        Ok(v)
    }

    /// Sets a metadata value.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        let mut t = self.tx.open_table(META).map_err(storage)?;
        t.insert(key, value).map_err(storage)?;
        Ok(())
    }

    /// Makes every change durable (fsync) and visible to new readers.
    pub fn commit(self) -> Result<(), StateError> {
        self.tx.commit().map_err(storage)
    }
}

/// A table inside a write transaction.
#[allow(missing_debug_implementations)]
pub struct TableMut<'t> {
    t: redb::Table<'t, &'static [u8], &'static [u8]>,
}

impl TableMut<'_> {
    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .t
            .get(key)
            .map_err(storage)?
            .map(|g| g.value().to_vec()))
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.t.insert(key, value).map_err(storage)?;
        Ok(())
    }

    /// Removes `key`; whether it was there.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, StateError> {
        Ok(self.t.remove(key).map_err(storage)?.is_some())
    }

    /// Up to `limit` entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<Row>, StateError> {
        scan(&self.t, prefix, limit)
    }

    /// Number of entries.
    pub fn len(&self) -> Result<u64, StateError> {
        self.t.len().map_err(storage)
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> Result<bool, StateError> {
        Ok(self.len()? == 0)
    }
}

fn scan<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    prefix: &[u8],
    limit: usize,
) -> Result<Vec<Row>, StateError> {
    let mut out = Vec::new();
    for row in t.range::<&[u8]>(prefix..).map_err(storage)? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = row.map_err(storage)?;
        if !k.value().starts_with(prefix) {
            break;
        }
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

/// A read snapshot.
#[allow(missing_debug_implementations)]
pub struct ReadTxn {
    tx: redb::ReadTransaction,
}

impl ReadTxn {
    /// A table, or `None` when nothing was ever written to it.
    pub fn table(&self, name: &str) -> Result<Option<Table>, StateError> {
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(name);
        match self.tx.open_table(def) {
            Ok(t) => Ok(Some(Table { t })),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(storage(e)),
        }
    }

    /// The committed offsets of `topic`: partition → next offset.
    pub fn offsets(&self, topic: &str) -> Result<BTreeMap<i32, i64>, StateError> {
        offsets_in(&self.tx.open_table(OFFSETS).map_err(storage)?, topic)
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let t = self.tx.open_table(META).map_err(storage)?;
        let v = t.get(key).map_err(storage)?.map(|g| g.value().to_vec());
        Ok(v)
    }

    /// Names of every user table.
    pub fn tables(&self) -> Result<Vec<String>, StateError> {
        Ok(self
            .tx
            .list_tables()
            .map_err(storage)?
            .map(|h| h.name().to_owned())
            .filter(|n| !n.starts_with('_'))
            .collect())
    }
}

/// A table in a read snapshot.
#[allow(missing_debug_implementations)]
pub struct Table {
    t: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl Table {
    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.get_with(key, <[u8]>::to_vec)
    }

    /// `f` of the value of `key`, read in place (no copy of the value).
    pub fn get_with<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, StateError> {
        Ok(self.t.get(key).map_err(storage)?.map(|g| f(g.value())))
    }

    /// Up to `limit` entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<Row>, StateError> {
        scan(&self.t, prefix, limit)
    }

    /// Up to `limit` entries whose key starts with `prefix` and comes after
    /// `after` (the key a previous page ended with), in key order.
    pub fn scan_prefix_after(
        &self,
        prefix: &[u8],
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, StateError> {
        let mut out = Vec::new();
        let range = (
            std::ops::Bound::Excluded(after),
            std::ops::Bound::Unbounded::<&[u8]>,
        );
        for row in self.t.range::<&[u8]>(range).map_err(storage)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(storage)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Number of entries.
    pub fn len(&self) -> Result<u64, StateError> {
        self.t.len().map_err(storage)
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> Result<bool, StateError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_commit_with_the_data_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = Store::open(&path, 1 << 20).unwrap();
            let tx = s.write().unwrap();
            tx.table("t").unwrap().put(b"k", b"v").unwrap();
            tx.set_offset("data.a.b", 0, 7).unwrap();
            tx.set_offset("data.a.b", 2, 9).unwrap();
            tx.set_offset("data.a.bc", 1, 100).unwrap();
            tx.commit().unwrap();
            // Not committed: neither the row nor the offset.
            let tx = s.write().unwrap();
            tx.table("t").unwrap().put(b"k2", b"v").unwrap();
            tx.set_offset("data.a.b", 0, 8).unwrap();
            drop(tx);
        }
        let s = Store::open(&path, 1 << 20).unwrap();
        let r = s.read().unwrap();
        assert_eq!(
            r.offsets("data.a.b").unwrap(),
            BTreeMap::from([(0, 7), (2, 9)])
        );
        let t = r.table("t").unwrap().unwrap();
        assert_eq!(t.get(b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(t.get(b"k2").unwrap(), None);
        assert!(r.table("never").unwrap().is_none());
        let w = s.write().unwrap();
        assert_eq!(w.offsets("data.a.bc").unwrap(), BTreeMap::from([(1, 100)]));
        w.clear_offsets("data.a.b").unwrap();
        w.commit().unwrap();
        assert!(s.read().unwrap().offsets("data.a.b").unwrap().is_empty());
    }

    #[test]
    fn a_damaged_store_is_moved_aside_and_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        std::fs::write(
            &path,
            b"this is not a redb file, it is garbage of some length",
        )
        .unwrap();
        let (s, why) = Store::open_or_rebuild(&path, 1 << 20).unwrap();
        assert!(why.is_some());
        assert!(s.read().unwrap().offsets("x").unwrap().is_empty());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("broken-"))
            .collect();
        assert_eq!(aside.len(), 1);
    }

    #[test]
    fn prefix_scans_stop_at_the_prefix_and_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb"), 1 << 20).unwrap();
        let tx = s.write().unwrap();
        {
            let mut t = tx.table("t").unwrap();
            for k in ["a\0", "a\0x", "a\0y", "ab", "b"] {
                t.put(k.as_bytes(), b"").unwrap();
            }
            assert_eq!(t.scan_prefix(b"a\0", 10).unwrap().len(), 3);
            assert_eq!(t.scan_prefix(b"a\0", 2).unwrap().len(), 2);
        }
        tx.commit().unwrap();
        let r = s.read().unwrap();
        let t = r.table("t").unwrap().unwrap();
        assert_eq!(t.scan_prefix(b"a", 10).unwrap().len(), 4);
        assert_eq!(t.len().unwrap(), 5);
    }
}
