//! A row as every adapter reads it: cells by column name, whatever the
//! source (a CSV or JSON dump, a workbook, a database row).

use serde_json::Value as Json;

/// One cell of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Text (CSV, or a string cell).
    Text(String),
    /// A typed JSON value (JSON input, numbers and booleans from a workbook).
    Json(Json),
    /// An Excel date/time serial number and the workbook's date system.
    Serial {
        /// Days since the epoch of the date system, fraction = time of day.
        value: f64,
        /// The workbook uses the 1904 date system (`<workbookPr date1904="1"/>`).
        date1904: bool,
    },
}

/// A row: its line (1-based; the row number in a workbook) and its cells by
/// column name.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Where it starts in the file.
    pub line: u64,
    /// `(column, cell)` in column order.
    pub cells: Vec<(String, Cell)>,
}

/// A row that could not be read; the run goes on without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// Where it starts.
    pub line: u64,
    /// What is wrong, without the row's content.
    pub message: String,
}

/// The character encoding of a CSV or NDJSON dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 (a leading byte-order mark is skipped).
    #[default]
    #[serde(rename = "utf-8", alias = "utf8")]
    Utf8,
    /// GBK, decoded as GB 18030 (a superset).
    Gbk,
    /// GB 18030.
    Gb18030,
}

impl Encoding {
    /// Its name as an operator writes it.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Utf8 => "UTF-8",
            Encoding::Gbk => "GBK",
            Encoding::Gb18030 => "GB 18030",
        }
    }
}
