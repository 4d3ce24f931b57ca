//! The file sink: rolling JSONL or CSV files in a directory.
//!
//! Each batch is appended to the open file `<sub>-<ms>-<n>.jsonl.part` and
//! fsynced before the batch's offsets move. A file is closed — renamed to
//! `<sub>-<ms>-<n>.jsonl` and the directory fsynced — after `roll_records`
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

use govbus_catalog::Subscription;

use super::{Batch, DestinationError, Progress, Sink};
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
    rolled: u64,
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
            rolled: 0,
        })
    }

    fn start(&mut self) -> std::io::Result<&mut Open> {
        if self.open.is_none() {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            // Time, then a counter: names sort in delivery order and never collide.
            self.rolled += 1;
            let done = self.dir.join(format!(
                "{}-{ms:013}-{:06}.{}",
                self.subscription,
                self.rolled,
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

    fn encode(&self, events: &[Delivery], policy_version: &str) -> std::io::Result<Vec<u8>> {
        match self.format {
            FileFormat::Jsonl => {
                let mut buf = Vec::new();
                for e in events {
                    serde_json::to_writer(&mut buf, &e.cloudevent_ref(policy_version))?;
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
    pub fn write(&mut self, events: &[Delivery], policy_version: &str) -> std::io::Result<()> {
        let buf = self.encode(events, policy_version)?;
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

impl Sink for FileSink {
    /// A CSV file's header is the grant's fields: a new field policy starts
    /// a new file (a newly granted field would otherwise never reach it).
    fn reopens_for(&self, _next: &Subscription) -> bool {
        self.format == FileFormat::Csv
    }

    async fn deliver(&mut self, batch: Batch<'_>) -> Progress {
        let sub = batch.policy.subscription();
        // Appends and fsyncs: off the async worker.
        match govbus_kafka::stage::blocking(|| self.write(batch.events, &sub.policy_version)) {
            Ok(()) => Progress::all(batch.events.len()),
            Err(e) => Progress::failed(format!("file sink: {e}")),
        }
    }

    async fn idle(
        &mut self,
        _caught_up: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), DestinationError> {
        govbus_kafka::stage::blocking(|| self.roll_if_due()).map_err(DestinationError::File)
    }

    fn close(&mut self) -> Result<(), DestinationError> {
        govbus_kafka::stage::blocking(|| FileSink::close(self)).map_err(DestinationError::File)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(i: i64, op: &str) -> Delivery {
        let data = (op != "delete").then(|| {
            let mut m = Map::new();
            m.insert("name".into(), Json::String("欧*".into()));
            m.insert("amount".into(), Json::String("12.50".into()));
            m
        });
        Delivery {
            id: format!("e{i}"),
            source: "/departments/hrss".into(),
            dataset: "hrss.pension_payment".into(),
            subject: format!("k{i}"),
            time: "2026-01-01T00:00:00.000Z".into(),
            op: op.into(),
            source_version: 1,
            data,
            partition: 0,
            offset: i,
            timestamp_ms: 0,
            traceparent: None,
        }
    }

    fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(ext))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn jsonl_lines_carry_the_policy_version() {
        // Regression: JSON lines once carried an empty policy version.
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::open(
            dir.path(),
            "s",
            FileFormat::Jsonl,
            10,
            Duration::from_secs(3600),
            Vec::new(),
        )
        .unwrap();
        sink.write(&[delivery(0, "create")], "pv9").unwrap();
        let part = files(dir.path(), ".jsonl.part");
        let line: Json =
            serde_json::from_str(std::fs::read_to_string(&part[0]).unwrap().trim()).unwrap();
        assert_eq!(line["policyversion"], "pv9");
        assert_eq!(line["id"], "e0");
    }

    #[test]
    fn csv_files_roll_and_a_left_part_file_is_closed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let cols = vec!["name".to_owned(), "amount".to_owned()];
        let mut sink = FileSink::open(
            dir.path(),
            "s",
            FileFormat::Csv,
            3,
            Duration::from_secs(3600),
            cols.clone(),
        )
        .unwrap();
        sink.write(&[delivery(0, "create"), delivery(1, "create")], "pv1")
            .unwrap();
        assert_eq!(files(dir.path(), ".csv.part").len(), 1, "still open");
        sink.write(&[delivery(2, "delete")], "pv1").unwrap();
        let done = files(dir.path(), ".csv");
        assert_eq!(done.len(), 1, "rolled after 3 records");
        let text = std::fs::read_to_string(&done[0]).unwrap();
        assert_eq!(
            text,
            "id,op,time,sourceversion,subject,name,amount\n\
             e0,create,2026-01-01T00:00:00.000Z,1,k0,欧*,12.50\n\
             e1,create,2026-01-01T00:00:00.000Z,1,k1,欧*,12.50\n\
             e2,delete,2026-01-01T00:00:00.000Z,1,k2,,\n"
        );
        sink.write(&[delivery(3, "create")], "pv1").unwrap();
        drop(sink); // a crash: the part file stays
        let _ = FileSink::open(
            dir.path(),
            "s",
            FileFormat::Csv,
            3,
            Duration::from_secs(3600),
            cols,
        )
        .unwrap();
        assert_eq!(
            files(dir.path(), ".csv").len(),
            2,
            "closed at the next start"
        );
        assert!(files(dir.path(), ".part").is_empty());
    }
}
