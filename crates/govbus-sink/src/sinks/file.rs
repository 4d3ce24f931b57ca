//! The file sink: rolling JSONL or CSV files in a directory.
//!
//! Each batch is appended to the open file `<sub>-<start>.jsonl.part` and
//! fsynced before the batch's offsets move. A file is closed — renamed to
//! `<sub>-<start>.jsonl` and the directory fsynced — after `roll_records`
//! records or `roll_interval`. Readers take closed files only. A crash
//! between fsync and offset commit repeats the batch in the next file
//! (at-least-once; every line carries its event `id`). A `.part` file found
//! at start is closed first.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use govbus_catalog::FileFormat;
use serde_json::{Map, Value as Json};

use crate::event::Delivery;

/// Envelope columns of CSV files, before the record's fields.
pub const CSV_ENVELOPE: [&str; 5] = ["id", "op", "time", "sourceversion", "subject"];

/// An open rolling file set.
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    subscription: String,
    format: FileFormat,
    roll_records: usize,
    roll_interval: Duration,
    columns: Vec<String>,
    open: Option<Open>,
}

#[derive(Debug)]
struct Open {
    file: File,
    part: PathBuf,
    done: PathBuf,
    records: usize,
    since: Instant,
}

fn ext(format: FileFormat) -> &'static str {
    match format {
        FileFormat::Jsonl => "jsonl",
        FileFormat::Csv => "csv",
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FileSink {
    /// Opens `dir` (created if missing) and closes any `.part` file left by
    /// a previous run. `columns` are the delivered fields, for CSV headers.
    pub fn open(
        dir: &Path,
        subscription: &str,
        format: FileFormat,
        roll_records: usize,
        roll_interval: Duration,
        columns: Vec<String>,
    ) -> std::io::Result<FileSink> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(&format!("{subscription}-")) && name.ends_with(".part") {
                let done = path.with_extension("");
                std::fs::rename(&path, &done)?;
                tracing::info!(message = "Closed a file left open by an earlier run.", file = %done.display());
            }
        }
        sync_dir(dir)?;
        Ok(FileSink {
            dir: dir.to_path_buf(),
            subscription: subscription.to_owned(),
            format,
            roll_records,
            roll_interval,
            columns,
            open: None,
        })
    }

    fn start(&mut self) -> std::io::Result<&mut Open> {
        if self.open.is_none() {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let done = self.dir.join(format!(
                "{}-{ms:013}.{}",
                self.subscription,
                ext(self.format)
            ));
            let part = done.with_extension(format!("{}.part", ext(self.format)));
            let mut file = OpenOptions::new().create(true).append(true).open(&part)?;
            if self.format == FileFormat::Csv {
                let mut w = csv::Writer::from_writer(Vec::new());
                let header: Vec<&str> = CSV_ENVELOPE
                    .iter()
                    .copied()
                    .chain(self.columns.iter().map(String::as_str))
                    .collect();
                w.write_record(&header)?;
                file.write_all(&w.into_inner().map_err(|e| e.into_error())?)?;
            }
            sync_dir(&self.dir)?;
            self.open = Some(Open {
                file,
                part,
                done,
                records: 0,
                since: Instant::now(),
            });
        }
        self.open
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no open file"))
    }

    fn encode(&self, events: &[Delivery]) -> std::io::Result<Vec<u8>> {
        match self.format {
            FileFormat::Jsonl => {
                let mut buf = Vec::new();
                for e in events {
                    serde_json::to_writer(&mut buf, &e.cloudevent(""))?;
                    buf.push(b'\n');
                }
                Ok(buf)
            }
            FileFormat::Csv => {
                let mut w = csv::Writer::from_writer(Vec::new());
                let empty = Map::new();
                for e in events {
                    let data = e.data.as_ref().unwrap_or(&empty);
                    let mut row = vec![
                        e.id.clone(),
                        e.op.clone(),
                        e.time.clone(),
                        e.source_version.to_string(),
                        e.subject.clone(),
                    ];
                    row.extend(self.columns.iter().map(|c| match data.get(c) {
                        None | Some(Json::Null) => String::new(),
                        Some(Json::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                    }));
                    w.write_record(&row)?;
                }
                w.into_inner().map_err(|e| e.into_error())
            }
        }
    }

    /// Appends `events` and fsyncs; rolls the file when it is full or old.
    pub fn write(&mut self, events: &[Delivery]) -> std::io::Result<()> {
        let buf = self.encode(events)?;
        let open = self.start()?;
        open.file.write_all(&buf)?;
        open.file.sync_data()?;
        open.records += events.len();
        self.roll_if_due()
    }

    /// Closes the open file if it is full or older than the roll interval.
    pub fn roll_if_due(&mut self) -> std::io::Result<()> {
        let due = self.open.as_ref().is_some_and(|o| {
            o.records >= self.roll_records || o.since.elapsed() >= self.roll_interval
        });
        if due {
            self.close()?;
        }
        Ok(())
    }

    /// Closes the open file: rename, then fsync the directory.
    pub fn close(&mut self) -> std::io::Result<()> {
        if let Some(o) = self.open.take() {
            o.file.sync_all()?;
            std::fs::rename(&o.part, &o.done)?;
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}
