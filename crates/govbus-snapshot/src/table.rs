//! Reading a dump: CSV (UTF-8 or GBK/GB 18030), JSON (an array), NDJSON, or
//! XLSX (the first sheet), as rows of named cells with their line numbers.
//! CSV and NDJSON stream; a JSON array and a workbook are read whole.
//!
//! What is refused before any row is read: a CSV whose first line is longer
//! than [`MAX_HEADER_BYTES`] (garbage, or a file without line breaks — it
//! has no header), any line longer than [`MAX_LINE_BYTES`], a `.json` file
//! that does not start with `[`, and a file declared GBK / GB 18030 whose
//! bytes are valid UTF-8 with non-ASCII text (decoding it as GBK would
//! publish mojibake). Memory stays bounded by these limits for streamed
//! formats.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::Value as Json;

pub use govbus_adapter::row::{Cell, Encoding, Row, RowError};

/// A dump that cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Opening or reading failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The cause (in the message, not a `source`: an error chain
        /// printed in full would say it twice).
        error: std::io::Error,
    },
    /// The bytes are not in the declared encoding.
    #[error("{path}:{line}: not valid {encoding}; set `encoding` in the mapping file (utf-8, gbk or gb18030) to the file's encoding")]
    Encoding {
        /// The file.
        path: String,
        /// The line where decoding failed.
        line: u64,
        /// What was expected.
        encoding: &'static str,
    },
    /// The file is UTF-8 but the mapping declares a GBK-family encoding.
    #[error("{path}: the file is UTF-8 (it holds non-ASCII text that is valid UTF-8), but the mapping declares {encoding}; read as {encoding} it would be garbled. Set encoding = \"utf-8\" in the mapping file")]
    Utf8DeclaredGbk {
        /// The file.
        path: String,
        /// What the mapping declares.
        encoding: &'static str,
    },
    /// Anything else that stops the whole file (bad JSON, bad workbook).
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The file formats a dump can come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// An Excel workbook; the first sheet, with a header row.
    Xlsx,
}

impl Format {
    /// The format a file name says.
    pub fn of(path: &Path) -> Option<Format> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv" | "txt") => Some(Format::Csv),
            Some("json") => Some(Format::Json),
            Some("ndjson" | "jsonl") => Some(Format::Ndjson),
            Some("xlsx" | "xlsm" | "xls") => Some(Format::Xlsx),
            _ => None,
        }
    }
}

/// Transcodes GBK / GB 18030 to UTF-8 as it is read, counting lines so that
/// a malformed sequence can be reported where it is.
struct Transcoder<R> {
    inner: R,
    decoder: encoding_rs::Decoder,
    input: Vec<u8>,
    output: Vec<u8>,
    out_pos: usize,
    eof: bool,
    lines: u64,
    malformed: Option<u64>,
}

impl<R: Read> Read for Transcoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.out_pos >= self.output.len() {
            if let Some(line) = self.malformed {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("malformed at line {line}"),
                ));
            }
            if self.eof {
                return Ok(0);
            }
            self.input.resize(64 * 1024, 0);
            let n = self.inner.read(&mut self.input)?;
            self.input.truncate(n);
            let last = n == 0;
            self.eof = last;
            self.output.clear();
            self.output.resize(
                self.decoder
                    .max_utf8_buffer_length_without_replacement(n)
                    .unwrap_or(n * 3 + 16),
                0,
            );
            self.out_pos = 0;
            let (result, read, written) = self.decoder.decode_to_utf8_without_replacement(
                &self.input,
                &mut self.output,
                last,
            );
            self.output.truncate(written);
            let newlines = self.output.iter().filter(|b| **b == b'\n').count() as u64;
            if let encoding_rs::DecoderResult::Malformed(_, _) = result {
                self.malformed = Some(self.lines + newlines + 1);
                let _ = read;
            }
            self.lines += newlines;
        }
        let n = buf.len().min(self.output.len() - self.out_pos);
        buf[..n].copy_from_slice(&self.output[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

/// Rows of a dump, in file order.
pub type Rows = Box<dyn Iterator<Item = Result<Result<Row, RowError>, TableError>>>;

/// An opened dump: its header (CSV and XLSX) and its rows.
pub struct Table {
    /// The column names of the header row; `None` for JSON and NDJSON,
    /// whose rows name their own fields.
    pub columns: Option<Vec<String>>,
    /// The rows after the header.
    pub rows: Rows,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

/// The longest first line of a CSV dump: a header naming a few hundred
/// columns fits many times over; anything longer is not a header.
pub const MAX_HEADER_BYTES: usize = 1 << 20;
/// The longest line of any streamed dump (a row, or an NDJSON object).
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Stops a reader at a line longer than the limit, so that a file without
/// line breaks is refused after reading a bounded amount, never buffered whole
/// (the CSV and line readers grow their buffer to the longest line).
struct LineLimit<R> {
    inner: R,
    /// Bytes since the last line break.
    run: usize,
    /// Line breaks seen.
    lines: u64,
    /// Limit of the first line (a CSV header), then of every line.
    first: usize,
    limit: usize,
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = &buf[..n];
        match got.iter().position(|b| *b == b'\n') {
            None => self.run += n,
            Some(first) => {
                self.run += first;
                self.check()?;
                self.lines += got.iter().filter(|b| **b == b'\n').count() as u64;
                let last = got.iter().rposition(|b| *b == b'\n').unwrap_or(first);
                self.run = n - 1 - last;
            }
        }
        self.check()?;
        Ok(n)
    }
}

impl<R> LineLimit<R> {
    fn new(inner: R, first: usize, limit: usize) -> LineLimit<R> {
        LineLimit {
            inner,
            run: 0,
            lines: 0,
            first,
            limit,
        }
    }
    fn check(&self) -> std::io::Result<()> {
        let limit = if self.lines == 0 {
            self.first
        } else {
            self.limit
        };
        if self.run <= limit {
            return Ok(());
        }
        let mib = limit >> 20;
        Err(std::io::Error::other(
            if self.lines == 0 && self.first < self.limit {
                format!("no header row: the first line is longer than {mib} MiB (a dump starts with one header line naming its columns); not a table dump")
            } else {
                format!(
                    "line {} is longer than {mib} MiB; not a table dump",
                    self.lines + 1
                )
            },
        ))
    }
}

/// Whether the file is valid UTF-8 and holds non-ASCII text: then it is not
/// GBK (real GBK text is almost never valid UTF-8), and decoding it as GBK
/// would turn every Chinese character into mojibake.
fn utf8_with_non_ascii(path: &Path) -> std::io::Result<bool> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry = 0usize;
    let mut non_ascii = false;
    loop {
        let n = f.read(&mut buf[carry..])?;
        if n == 0 {
            return Ok(carry == 0 && non_ascii);
        }
        let end = carry + n;
        non_ascii |= !buf[..end].is_ascii();
        match std::str::from_utf8(&buf[..end]) {
            Ok(_) => carry = 0,
            // An invalid sequence: not UTF-8.
            Err(e) if e.error_len().is_some() => return Ok(false),
            // A sequence cut by the buffer's end: keep it for the next read.
            Err(e) => {
                let valid = e.valid_up_to();
                buf.copy_within(valid..end, 0);
                carry = end - valid;
            }
        }
    }
}

/// Whether the first non-blank byte (after a byte-order mark) is `[`.
fn starts_with_bracket(path: &Path) -> std::io::Result<bool> {
    let mut head = Vec::new();
    BufReader::new(File::open(path)?)
        .take(MAX_HEADER_BYTES as u64)
        .read_to_end(&mut head)?;
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&head);
    Ok(head.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'['))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TableError + '_ {
    move |error| TableError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// Opens a dump. Row-level problems come back as `Ok(Err(RowError))`;
/// problems that stop the whole file as `Err(TableError)`.
pub fn open(path: &Path, format: Format, encoding: Encoding) -> Result<Table, TableError> {
    let file = File::open(path).map_err(io(path))?;
    let shown = path.display().to_string();
    if encoding != Encoding::Utf8
        && format != Format::Xlsx
        && utf8_with_non_ascii(path).map_err(io(path))?
    {
        return Err(TableError::Utf8DeclaredGbk {
            path: shown,
            encoding: encoding.name(),
        });
    }
    let rows = |rows: Rows| Table {
        columns: None,
        rows,
    };
    match format {
        Format::Xlsx => xlsx(path),
        Format::Json => {
            if !starts_with_bracket(path).map_err(io(path))? {
                return Err(TableError::Format {
                    path: shown,
                    message:
                        "expected a JSON array of objects (use .ndjson for one object per line)"
                            .into(),
                });
            }
            let bytes = read_text(file, encoding, &shown)?;
            let v: Json = govbus_validate::parse_json(&bytes).map_err(|e| TableError::Format {
                path: shown.clone(),
                message: match e {
                    govbus_validate::JsonError::Syntax { .. } => {
                        format!("not a JSON array of objects: {e}")
                    }
                    other => format!("{other}; nothing was published"),
                },
            })?;
            let Json::Array(items) = v else {
                return Err(TableError::Format {
                    path: shown,
                    message:
                        "expected a JSON array of objects (use .ndjson for one object per line)"
                            .into(),
                });
            };
            Ok(rows(Box::new(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| Ok(object_row(i as u64 + 1, v, "element"))),
            )))
        }
        Format::Ndjson => {
            let source: Box<dyn Read> = match encoding {
                Encoding::Utf8 => Box::new(file),
                e => Box::new(transcoder(file, e)),
            };
            let reader = BufReader::new(LineLimit::new(source, MAX_LINE_BYTES, MAX_LINE_BYTES));
            let mut line = 0u64;
            let enc = encoding;
            Ok(rows(Box::new(reader.split(b'\n').filter_map(move |l| {
                line += 1;
                match l {
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        Some(Err(TableError::Encoding {
                            path: shown.clone(),
                            line: malformed_line(&e).unwrap_or(line),
                            encoding: enc.name(),
                        }))
                    }
                    Err(e) => Some(Err(TableError::Io {
                        path: shown.clone(),
                        error: e,
                    })),
                    Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => None,
                    Ok(bytes) => match std::str::from_utf8(&bytes) {
                        Err(_) => Some(Err(TableError::Encoding {
                            path: shown.clone(),
                            line,
                            encoding: enc.name(),
                        })),
                        Ok(text) => Some(Ok(match govbus_validate::parse_json(text.as_bytes()) {
                            Ok(v) => object_row(line, v, "line"),
                            Err(e) => Err(RowError {
                                line,
                                message: format!("not a JSON object: {e}"),
                            }),
                        })),
                    },
                }
            }))))
        }
        Format::Csv => csv_rows(file, encoding, shown),
    }
}

fn transcoder(file: File, e: Encoding) -> Transcoder<File> {
    let enc = match e {
        Encoding::Gbk => encoding_rs::GBK,
        _ => encoding_rs::GB18030,
    };
    Transcoder {
        inner: file,
        decoder: enc.new_decoder_without_bom_handling(),
        input: Vec::new(),
        output: Vec::new(),
        out_pos: 0,
        eof: false,
        lines: 0,
        malformed: None,
    }
}

fn read_text(file: File, encoding: Encoding, shown: &str) -> Result<Vec<u8>, TableError> {
    let mut bytes = Vec::new();
    match encoding {
        Encoding::Utf8 => BufReader::new(file).read_to_end(&mut bytes),
        e => transcoder(file, e).read_to_end(&mut bytes),
    }
    .map_err(|error| TableError::Io {
        path: shown.to_owned(),
        error,
    })?;
    Ok(bytes)
}

fn object_row(line: u64, v: Json, what: &str) -> Result<Row, RowError> {
    match v {
        Json::Object(o) => Ok(Row {
            line,
            cells: o.into_iter().map(|(k, v)| (k, Cell::Json(v))).collect(),
        }),
        other => Err(RowError {
            line,
            message: format!("{what} is {} instead of an object", kind(&other)),
        }),
    }
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn csv_rows(file: File, encoding: Encoding, shown: String) -> Result<Table, TableError> {
    let source: Box<dyn Read> = match encoding {
        Encoding::Utf8 => Box::new(BufReader::new(file)),
        e => Box::new(transcoder(file, e)),
    };
    let source = LineLimit::new(source, MAX_HEADER_BYTES, MAX_LINE_BYTES);
    let reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(false)
        .from_reader(source);
    let mut records = reader.into_byte_records();
    let header = match records.next() {
        None => {
            return Err(TableError::Format {
                path: shown,
                message: "empty file: a CSV dump starts with a header row".into(),
            })
        }
        Some(Err(e)) => return Err(csv_error(&shown, e, encoding)),
        Some(Ok(h)) => h,
    };
    let mut names = Vec::with_capacity(header.len());
    for (i, raw) in header.iter().enumerate() {
        let raw = if i == 0 {
            raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw)
        } else {
            raw
        };
        let name = std::str::from_utf8(raw).map_err(|_| TableError::Encoding {
            path: shown.clone(),
            line: 1,
            encoding: encoding.name(),
        })?;
        names.push(name.trim().to_owned());
    }
    let columns = Some(names.clone());
    let rows: Rows = Box::new(records.map(move |r| {
        let r = r.map_err(|e| csv_error(&shown, e, encoding))?;
        let line = r.position().map_or(0, |p| p.line());
        if r.len() != names.len() {
            return Ok(Err(RowError {
                line,
                message: format!(
                    "{} cells, but the header has {} columns",
                    r.len(),
                    names.len()
                ),
            }));
        }
        let mut cells = Vec::with_capacity(r.len());
        for (name, raw) in names.iter().zip(r.iter()) {
            let text = std::str::from_utf8(raw).map_err(|_| TableError::Encoding {
                path: shown.clone(),
                line,
                encoding: encoding.name(),
            })?;
            cells.push((name.clone(), Cell::Text(text.to_owned())));
        }
        Ok(Ok(Row { line, cells }))
    }));
    Ok(Table { columns, rows })
}

fn csv_error(path: &str, e: csv::Error, encoding: Encoding) -> TableError {
    let line = e.position().map_or(0, |p| p.line());
    match e.into_kind() {
        csv::ErrorKind::Io(source) if source.kind() == std::io::ErrorKind::InvalidData => {
            TableError::Encoding {
                path: path.to_owned(),
                line: malformed_line(&source).unwrap_or(line),
                encoding: encoding.name(),
            }
        }
        csv::ErrorKind::Io(error) => TableError::Io {
            path: path.to_owned(),
            error,
        },
        other => TableError::Format {
            path: path.to_owned(),
            message: format!("line {line}: {other:?}"),
        },
    }
}

/// The line a [`Transcoder`] reported.
fn malformed_line(e: &std::io::Error) -> Option<u64> {
    e.to_string().rsplit(' ').next()?.parse().ok()
}

fn xlsx(path: &Path) -> Result<Table, TableError> {
    use calamine::{Data, Reader, Sheets};
    let shown = path.display().to_string();
    let fail = |message: String| TableError::Format {
        path: shown.clone(),
        message,
    };
    let mut book = calamine::open_workbook_auto(path)
        .map_err(|e| fail(format!("not a readable workbook: {e}")))?;
    // Serials count days from 1899-12-30 or, in the 1904 system (Excel for
    // Mac's old default), from 1904-01-01: 1462 days apart.
    let date1904 = match &book {
        Sheets::Xlsx(x) => x.has_1904_epoch(),
        Sheets::Xls(x) => x.has_1904_epoch(),
        Sheets::Xlsb(_) | Sheets::Ods(_) => false,
    };
    let range = book
        .worksheet_range_at(0)
        .ok_or_else(|| fail("the workbook has no sheet".into()))?
        .map_err(|e| fail(format!("first sheet: {e}")))?;
    let mut rows = range.rows();
    let header: Vec<String> = rows
        .next()
        .ok_or_else(|| fail("the first sheet is empty: it starts with a header row".into()))?
        .iter()
        .map(|c| match c {
            Data::String(s) => s.trim().to_owned(),
            other => other.to_string(),
        })
        .collect();
    let (start_row, _) = range.start().unwrap_or((0, 0));
    let body: Vec<Result<Result<Row, RowError>, TableError>> = rows
        .enumerate()
        .filter(|(_, r)| r.iter().any(|c| *c != Data::Empty))
        .map(|(i, r)| {
            let line = u64::from(start_row) + i as u64 + 2;
            let mut cells = Vec::with_capacity(header.len());
            for (name, c) in header.iter().zip(r) {
                let cell = match c {
                    Data::Int(v) => Cell::Json(Json::from(*v)),
                    Data::Float(f) => Cell::Json(
                        serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
                    ),
                    Data::String(s) | Data::DateTimeIso(s) | Data::DurationIso(s) => {
                        Cell::Text(s.clone())
                    }
                    Data::Bool(b) => Cell::Json(Json::Bool(*b)),
                    Data::DateTime(d) => Cell::Serial {
                        value: d.as_f64(),
                        date1904,
                    },
                    Data::Empty => Cell::Text(String::new()),
                    Data::Error(e) => {
                        return Ok(Err(RowError {
                            line,
                            message: format!("column `{name}` holds a spreadsheet error ({e})"),
                        }))
                    }
                };
                cells.push((name.clone(), cell));
            }
            Ok(Ok(Row { line, cells }))
        })
        .collect();
    Ok(Table {
        columns: Some(header),
        rows: Box::new(body.into_iter()),
    })
}
