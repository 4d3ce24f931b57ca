//! On-disk sorted entries: the external sort of a dump (bounded memory for
//! any number of rows) and the state file of the last published snapshot.
//!
//! An entry is `key, 16-byte content hash, seq, version, value`, length-
//! prefixed. Runs are sorted by key then seq; the merge yields one entry per
//! key — the one with the highest seq (the last row of a key in the dump,
//! the last offset of a key in a topic) — and the seqs it dropped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// One keyed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The record key.
    pub key: String,
    /// First 16 bytes of SHA-256 of the canonical value.
    pub hash: [u8; 16],
    /// Line in the dump, or offset in a topic: the later one wins.
    pub seq: u64,
    /// The source version it was published with (state files).
    pub version: u64,
    /// The canonical value (runs of a dump); empty in state files.
    pub value: Vec<u8>,
}

impl Entry {
    fn size(&self) -> usize {
        self.key.len() + self.value.len() + 64
    }
}

fn write_entry(w: &mut impl Write, e: &Entry) -> io::Result<()> {
    let key_len = u32::try_from(e.key.len()).map_err(|_| io::Error::other("key too long"))?;
    let val_len = u32::try_from(e.value.len()).map_err(|_| io::Error::other("value too long"))?;
    w.write_all(&key_len.to_le_bytes())?;
    w.write_all(e.key.as_bytes())?;
    w.write_all(&e.hash)?;
    w.write_all(&e.seq.to_le_bytes())?;
    w.write_all(&e.version.to_le_bytes())?;
    w.write_all(&val_len.to_le_bytes())?;
    w.write_all(&e.value)
}

fn read_entry(r: &mut impl Read) -> io::Result<Option<Entry>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let mut key = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut key)?;
    let mut hash = [0u8; 16];
    r.read_exact(&mut hash)?;
    let mut n = [0u8; 8];
    r.read_exact(&mut n)?;
    let seq = u64::from_le_bytes(n);
    r.read_exact(&mut n)?;
    let version = u64::from_le_bytes(n);
    r.read_exact(&mut len)?;
    let mut value = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut value)?;
    let key =
        String::from_utf8(key).map_err(|_| io::Error::other("corrupt entry: key is not UTF-8"))?;
    Ok(Some(Entry {
        key,
        hash,
        seq,
        version,
        value,
    }))
}

/// Writes entries to a file (already in key order).
#[derive(Debug)]
pub struct EntryWriter {
    out: BufWriter<File>,
    path: PathBuf,
    /// Entries written.
    pub count: u64,
}

impl EntryWriter {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> io::Result<EntryWriter> {
        Ok(EntryWriter {
            out: BufWriter::with_capacity(256 * 1024, File::create(path)?),
            path: path.to_path_buf(),
            count: 0,
        })
    }

    /// Appends one entry.
    pub fn push(&mut self, e: &Entry) -> io::Result<()> {
        self.count += 1;
        write_entry(&mut self.out, e)
    }

    /// Flushes and fsyncs; returns the path.
    pub fn finish(self) -> io::Result<PathBuf> {
        let file = self
            .out
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        Ok(self.path)
    }
}

/// Reads a file of entries in order.
#[derive(Debug)]
pub struct EntryReader {
    input: Option<BufReader<File>>,
}

impl EntryReader {
    /// Opens `path`; a missing file reads as empty.
    pub fn open(path: &Path) -> io::Result<EntryReader> {
        match File::open(path) {
            Ok(f) => Ok(EntryReader {
                input: Some(BufReader::with_capacity(256 * 1024, f)),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(EntryReader { input: None }),
            Err(e) => Err(e),
        }
    }

    /// The next entry.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        match &mut self.input {
            None => Ok(None),
            Some(r) => read_entry(r),
        }
    }
}

/// Collects entries in sorted runs of at most `memory` bytes each.
#[derive(Debug)]
pub struct Runs {
    dir: PathBuf,
    memory: usize,
    buf: Vec<Entry>,
    bytes: usize,
    runs: Vec<PathBuf>,
}

impl Runs {
    /// Runs spill into `dir` (created if missing).
    pub fn new(dir: &Path, memory: usize) -> io::Result<Runs> {
        std::fs::create_dir_all(dir)?;
        Ok(Runs {
            dir: dir.to_path_buf(),
            memory: memory.max(1024),
            buf: Vec::new(),
            bytes: 0,
            runs: Vec::new(),
        })
    }

    /// Adds an entry, spilling a sorted run when the buffer is full.
    pub fn push(&mut self, e: Entry) -> io::Result<()> {
        self.bytes += e.size();
        self.buf.push(e);
        if self.bytes >= self.memory {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.buf
            .sort_unstable_by(|a, b| a.key.cmp(&b.key).then(a.seq.cmp(&b.seq)));
        let path = self.dir.join(format!("run-{:05}", self.runs.len()));
        let mut w = EntryWriter::create(&path)?;
        for e in self.buf.drain(..) {
            w.push(&e)?;
        }
        self.runs.push(w.finish()?);
        self.bytes = 0;
        Ok(())
    }

    /// Spills the rest; the run files, for [`Merge::open`].
    pub fn finish(mut self) -> io::Result<Vec<PathBuf>> {
        self.spill()?;
        Ok(self.runs)
    }
}

/// The k-way merge of sorted runs: one entry per key, the highest seq.
#[derive(Debug)]
pub struct Merge {
    readers: Vec<EntryReader>,
    heads: BinaryHeap<Reverse<(String, u64, usize)>>,
    pending: Vec<Option<Entry>>,
}

impl Merge {
    /// Opens the runs.
    pub fn open(runs: &[PathBuf]) -> io::Result<Merge> {
        let mut m = Merge {
            readers: Vec::with_capacity(runs.len()),
            heads: BinaryHeap::new(),
            pending: Vec::with_capacity(runs.len()),
        };
        for (i, r) in runs.iter().enumerate() {
            let mut reader = EntryReader::open(r)?;
            let first = reader.next_entry()?;
            if let Some(e) = &first {
                m.heads.push(Reverse((e.key.clone(), e.seq, i)));
            }
            m.pending.push(first);
            m.readers.push(reader);
        }
        Ok(m)
    }

    fn pop(&mut self) -> io::Result<Option<Entry>> {
        let Some(Reverse((_, _, i))) = self.heads.pop() else {
            return Ok(None);
        };
        let e = self.pending[i].take();
        let next = self.readers[i].next_entry()?;
        if let Some(n) = &next {
            self.heads.push(Reverse((n.key.clone(), n.seq, i)));
        }
        self.pending[i] = next;
        Ok(e)
    }

    /// The next key's winning entry and the seqs of the entries it replaced.
    pub fn next_key(&mut self) -> io::Result<Option<(Entry, Vec<u64>)>> {
        let Some(mut best) = self.pop()? else {
            return Ok(None);
        };
        let mut dropped = Vec::new();
        while self
            .heads
            .peek()
            .is_some_and(|Reverse((k, _, _))| *k == best.key)
        {
            if let Some(e) = self.pop()? {
                dropped.push(best.seq);
                best = e;
            }
        }
        Ok(Some((best, dropped)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(key: &str, seq: u64) -> Entry {
        Entry {
            key: key.into(),
            hash: [seq as u8; 16],
            seq,
            version: 0,
            value: vec![1, 2, 3],
        }
    }

    #[test]
    fn merges_runs_keeping_the_last_of_each_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = Runs::new(dir.path(), 1024).unwrap();
        let keys = ["m", "a", "z", "a", "q", "m", "b"];
        for (i, k) in keys.iter().cycle().take(700).enumerate() {
            runs.push(e(k, i as u64)).unwrap();
        }
        let files = runs.finish().unwrap();
        assert!(files.len() > 3, "several runs: {}", files.len());
        let mut m = Merge::open(&files).unwrap();
        let mut out = Vec::new();
        while let Some((entry, dropped)) = m.next_key().unwrap() {
            out.push((entry.key.clone(), entry.seq, dropped.len()));
        }
        let got: Vec<&str> = out.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(got, ["a", "b", "m", "q", "z"]);
        for (k, seq, _) in &out {
            let last = (0..700u64)
                .filter(|i| keys[(*i as usize) % keys.len()] == k)
                .max()
                .unwrap();
            assert_eq!(*seq, last, "{k}");
        }
        assert_eq!(out.iter().map(|(_, _, d)| d).sum::<usize>(), 700 - 5);
    }
}
