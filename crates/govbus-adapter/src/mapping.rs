//! From a department's columns to the dataset's fields.
//!
//! A mapping file (TOML) names, for each field, the column it comes from in
//! the department's dump, and the dump's encoding and local time zone:
//!
//! ```toml
//! dataset = "hrss.pension_payment"
//! encoding = "gbk"            # utf-8 (default), gbk, gb18030
//! timezone = "+08:00"         # for date-times written without an offset
//!
//! [columns]                   # field = "column header in the dump"
//! payment_id = "发放流水号"
//! recipient_id_number = "身份证号码"
//! ```
//!
//! Without a mapping file, every field is read from the column of the same
//! name. Values are normalised by the field's type, and only there: in
//! identity fields (ID number, credit code, phone, account number — by their
//! rules or personal-data tags) full-width digits and letters become ASCII;
//! numbers, dates such as `2023/6/1`, `20230601` or `2023年6月1日` and local
//! date-times (which get the time zone) are parsed; an empty cell in a
//! nullable field is null. Any other text is kept exactly as written.
//! Validation then checks the record exactly as the gateway would.

use std::collections::BTreeMap;
use std::path::Path;

use govbus_catalog::fields::{top_level, FieldKind};
use govbus_catalog::{Check, Dataset, PiiTag};
use serde::Deserialize;
use serde_json::{Map, Value as Json};

use crate::normalize;
use crate::row::{Cell, Encoding, Row, RowError};

/// A mapping file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    /// The dataset the dump is of (the command line may give it instead).
    pub dataset: Option<String>,
    /// The dump's character encoding.
    #[serde(default)]
    pub encoding: Encoding,
    /// Offset for local date-times, `+08:00` by default.
    pub timezone: Option<String>,
    /// `field = "column"`.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

/// Why a mapping file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The file cannot be read. (The I/O error is in the message, not a
    /// `source`: an error chain printed in full would say it twice.)
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
    /// The file is not a mapping file (TOML syntax, unknown or mistyped keys).
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
}

impl MappingFile {
    /// Reads and parses a mapping file.
    pub fn load(path: &Path) -> Result<MappingFile, MappingError> {
        let shown = || path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| MappingError::Read {
            path: shown(),
            error,
        })?;
        toml::from_str(&text).map_err(|e| MappingError::Parse {
            path: shown(),
            message: e.message().to_owned(),
        })
    }
}

/// A column a dump lacks (within [`ColumnsError`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingColumn {
    /// The column's header, as the mapping names it.
    pub column: String,
    /// The field it maps to.
    pub field: String,
    /// Whether that field is part of the dataset's key.
    pub key: bool,
}

/// A dump whose columns do not match the mapping: what is missing, and the
/// columns a header row has (each cut to 40 characters, at most 30 shown).
/// A dump without a header row (JSON, NDJSON) is described by how many
/// members its first record has, not their names: an object's member
/// names can be values (an object keyed by ID number), and this text
/// reaches the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}the dump does not match the mapping: {}; {}", line_prefix(*line), missing_list(missing), shown)]
pub struct ColumnsError {
    /// The line of the first record, when the dump has no header row.
    pub line: Option<u64>,
    /// Every column the mapping needs and the dump lacks.
    pub missing: Vec<MissingColumn>,
    /// What the dump has, as shown to the operator.
    pub shown: String,
}

fn line_prefix(line: Option<u64>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

fn missing_list(missing: &[MissingColumn]) -> String {
    missing
        .iter()
        .map(|m| {
            format!(
                "no column `{}` for {} field `{}`",
                m.column,
                if m.key { "key" } else { "mapped" },
                m.field
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

struct FieldMap {
    field: String,
    column: String,
    kind: FieldKind,
    nullable: bool,
    identity: bool,
}

/// Whether a field holds an identity value — an ID number, credit code,
/// phone or account number, by its rules or its personal-data tag — whose
/// full-width digits and letters are written in ASCII.
fn is_identity(dataset: &Dataset, field: &str) -> bool {
    dataset.rules.iter().any(|r| {
        r.field == field
            && matches!(
                r.check,
                Check::ResidentId | Check::CreditCode | Check::MobilePhone
            )
    }) || matches!(
        dataset.personal_data.get(field),
        Some(PiiTag::IdNumber | PiiTag::Phone | PiiTag::BankAccount)
    )
}

/// At most `n` characters of a column name, for messages about garbage.
/// A header as the operator is shown it: cut to `n` characters, control
/// characters (an escape sequence that would drive the terminal) written
/// as escapes.
fn short(name: &str, n: usize) -> String {
    let cut = match name.char_indices().nth(n) {
        Some((i, _)) => &name[..i],
        None => name,
    };
    let mut out: String = cut
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    if cut.len() < name.len() {
        out.push('…');
    }
    out
}

/// A compiled mapping for one dataset.
pub struct Mapper {
    fields: Vec<FieldMap>,
    key: Vec<String>,
    offset: String,
    explicit: bool,
}

impl std::fmt::Debug for Mapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapper")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn offset_ok(o: &str) -> bool {
    let b = o.as_bytes();
    o == "Z"
        || (b.len() == 6
            && matches!(b[0], b'+' | b'-')
            && b[3] == b':'
            && b[1..3].iter().chain(&b[4..6]).all(u8::is_ascii_digit))
}

impl Mapper {
    /// Compiles `mapping` for `dataset`'s latest schema; every problem named.
    pub fn new(mapping: &MappingFile, dataset: &Dataset) -> Result<Mapper, Vec<String>> {
        let mut problems = Vec::new();
        let kinds = top_level(&dataset.latest().schema);
        for field in mapping.columns.keys() {
            if !kinds.iter().any(|(n, _)| n == field) {
                problems.push(format!(
                    "columns.{field}: `{field}` is not a field of {} (fields: {})",
                    dataset.name,
                    kinds.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        let explicit = !mapping.columns.is_empty();
        if explicit {
            for k in &dataset.key {
                if !mapping.columns.contains_key(k) {
                    problems.push(format!(
                        "columns: key field `{k}` has no column; add `{k} = \"<column>\"`"
                    ));
                }
            }
        }
        let offset = mapping.timezone.clone().unwrap_or_else(|| "+08:00".into());
        if !offset_ok(&offset) {
            problems.push(format!("timezone: `{offset}` is not an offset like +08:00"));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let fields = kinds
            .into_iter()
            .filter_map(|(name, info)| {
                let column = if explicit {
                    mapping.columns.get(name)?.clone()
                } else {
                    name.to_owned()
                };
                Some(FieldMap {
                    identity: is_identity(dataset, name),
                    field: name.to_owned(),
                    column,
                    kind: info.kind,
                    nullable: info.nullable,
                })
            })
            .collect();
        Ok(Mapper {
            fields,
            key: dataset.key.clone(),
            offset,
            explicit,
        })
    }

    /// Checks a dump's columns before any row is read: every key field's
    /// column must be there (a dump without its key cannot be diffed: every
    /// record would look deleted), and with an explicit mapping every mapped
    /// column too. Names every missing column at once.
    pub fn check_header(&self, columns: &[String]) -> Result<(), ColumnsError> {
        self.check(columns.iter().map(String::as_str), true)
    }

    /// The same check on the first row of a dump without a header row (JSON,
    /// NDJSON): only the key fields, since an object may leave out a field
    /// that is null.
    pub fn check_columns(&self, row: &Row) -> Result<(), ColumnsError> {
        self.check(row.cells.iter().map(|(n, _)| n.as_str()), false)
            .map_err(|e| ColumnsError {
                line: Some(row.line),
                ..e
            })
    }

    fn check<'a>(
        &self,
        columns: impl Iterator<Item = &'a str> + Clone,
        tabular: bool,
    ) -> Result<(), ColumnsError> {
        let mut missing = Vec::new();
        for f in &self.fields {
            let key = self.key.contains(&f.field);
            if (key || (tabular && self.explicit)) && !columns.clone().any(|c| c == f.column) {
                missing.push(MissingColumn {
                    column: f.column.clone(),
                    field: f.field.clone(),
                    key,
                });
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let shown = if tabular {
            let all: Vec<String> = columns.map(|c| format!("`{}`", short(c, 40))).collect();
            if all.len() > 30 {
                format!(
                    "its columns are: {}, … ({} in all)",
                    all[..30].join(", "),
                    all.len()
                )
            } else {
                format!("its columns are: {}", all.join(", "))
            }
        } else {
            let n = columns.count();
            format!(
                "its first record has {n} member{} (not listed: a member's name can be a value)",
                if n == 1 { "" } else { "s" }
            )
        };
        Err(ColumnsError {
            line: None,
            missing,
            shown,
        })
    }

    /// The record the row stands for, typed and normalised.
    pub fn record(&self, row: &Row) -> Result<Map<String, Json>, RowError> {
        let mut out = Map::with_capacity(self.fields.len());
        for f in &self.fields {
            let Some((_, cell)) = row.cells.iter().find(|(n, _)| *n == f.column) else {
                if self.key.contains(&f.field) {
                    return Err(RowError {
                        line: row.line,
                        message: format!(
                            "no value for key field `{}` (column `{}`)",
                            f.field, f.column
                        ),
                    });
                }
                continue;
            };
            let value = self.value(f, cell).map_err(|message| RowError {
                line: row.line,
                message: format!("column `{}`: {message}", f.column),
            })?;
            out.insert(f.field.clone(), value);
        }
        Ok(out)
    }

    /// A cell as the field's value. Only identity fields and fields parsed
    /// by type are normalised; any other text goes on exactly as written.
    fn value(&self, f: &FieldMap, cell: &Cell) -> Result<Json, String> {
        let raw = match cell {
            Cell::Json(Json::String(s)) | Cell::Text(s) => s.clone(),
            Cell::Json(Json::Number(n)) if f.kind == FieldKind::Date => n.to_string(),
            Cell::Json(v) => return Ok(v.clone()),
            Cell::Serial { value, date1904 } => normalize::excel_serial(*value, *date1904)
                .ok_or_else(|| {
                    format!(
                        "Excel date serial {value} is not a day in 1900..=9999{}",
                        if *date1904 {
                            ""
                        } else {
                            " (serial 60 is Excel's 1900-02-29, which does not exist)"
                        }
                    )
                })?,
        };
        if raw.is_empty() && f.nullable {
            return Ok(Json::Null);
        }
        let typed = matches!(
            f.kind,
            FieldKind::Int
                | FieldKind::Long
                | FieldKind::Float
                | FieldKind::Double
                | FieldKind::Boolean
                | FieldKind::Date
                | FieldKind::TimestampMillis
                | FieldKind::TimestampMicros
                | FieldKind::Decimal { .. }
        );
        if !typed {
            let text = if f.identity {
                normalize::identity(&raw)
            } else {
                raw
            };
            return Ok(if text.is_empty() && f.nullable {
                Json::Null
            } else {
                Json::String(text)
            });
        }
        let text = normalize::halfwidth(&raw);
        if text.is_empty() && f.nullable {
            return Ok(Json::Null);
        }
        let parsed = match &f.kind {
            FieldKind::Int | FieldKind::Long => ungrouped(&text)
                .and_then(|t| t.parse::<i64>().ok())
                .map(Json::from),
            FieldKind::Float | FieldKind::Double => ungrouped(&text)
                .and_then(|t| t.parse::<f64>().ok())
                .and_then(|v| serde_json::Number::from_f64(v).map(Json::Number)),
            FieldKind::Boolean => match text.as_str() {
                "true" | "TRUE" | "1" | "是" | "Y" | "y" => Some(Json::Bool(true)),
                "false" | "FALSE" | "0" | "否" | "N" | "n" => Some(Json::Bool(false)),
                _ => None,
            },
            FieldKind::Date => date_part(&text).and_then(normalize::date).map(Json::String),
            FieldKind::TimestampMillis | FieldKind::TimestampMicros => {
                normalize::timestamp(&text, &self.offset).map(Json::String)
            }
            FieldKind::Decimal { .. } => {
                ungrouped(text.trim_start_matches(['¥', '￥'])).map(Json::String)
            }
            _ => None,
        };
        // Unparseable values go on as written: validation names the field and why.
        Ok(parsed.unwrap_or(Json::String(raw)))
    }

    /// The record key (fields joined with `/`, escaped as the engine does),
    /// when every key field has a value: a row that fails validation but has
    /// a key is kept, not deleted.
    pub fn key_of(&self, record: &Map<String, Json>) -> Option<String> {
        let mut parts = Vec::with_capacity(self.key.len());
        for k in &self.key {
            let v = match record.get(k)? {
                Json::String(s) if !s.is_empty() => s.clone(),
                Json::Number(n) => n.to_string(),
                _ => return None,
            };
            parts.push(if self.key.len() > 1 {
                v.replace('%', "%25").replace('/', "%2F")
            } else {
                v
            });
        }
        Some(parts.join("/"))
    }
}

/// `text` without thousands separators, when it has none or groups its
/// integer digits by three (`1,234,567.5`); `None` for any other comma
/// (`1,5` is a decimal comma or a typo, never 15), so the value goes to
/// validation as written and is rejected with its field named.
fn ungrouped(text: &str) -> Option<String> {
    if !text.contains(',') {
        return Some(text.to_owned());
    }
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let int = body.split('.').next().unwrap_or("");
    let mut groups = int.split(',');
    let first = groups.next().unwrap_or("");
    let digits = |g: &str| g.bytes().all(|b| b.is_ascii_digit());
    let grouped = (1..=3).contains(&first.len())
        && digits(first)
        && groups.all(|g| g.len() == 3 && digits(g))
        && !body[int.len()..].contains(',');
    grouped.then(|| text.replace(',', ""))
}

/// The date of a date column's cell: the date alone, or followed by a time
/// of day without a zone (a database export's `2023-06-01 00:00:00`). A
/// zone would make the date another one elsewhere, and other text after it
/// (`2023-06-01 待核实`) is not a date: both go to validation as written.
fn date_part(text: &str) -> Option<&str> {
    let Some((date, rest)) = text.split_once([' ', 'T']) else {
        return Some(text);
    };
    let mut parts = rest.trim().splitn(3, ':');
    let (h, m, sec) = (parts.next()?, parts.next()?, parts.next().unwrap_or("00"));
    let two = |p: &str| (1..=2).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, "0"));
    let time = two(h)
        && two(m)
        && two(whole)
        && !frac.is_empty()
        && frac.bytes().all(|b| b.is_ascii_digit());
    time.then_some(date)
}

#[cfg(test)]
mod cell_tests {
    use super::*;

    #[test]
    fn thousands_separators_are_removed_only_where_they_group_by_three() {
        for (text, want) in [
            ("1234.5", Some("1234.5")),
            ("1,234.50", Some("1234.50")),
            ("-12,345,678", Some("-12345678")),
            ("1,5", None),
            ("1,2,3", None),
            ("12,34", None),
            (",123", None),
            ("1,234,5", None),
            ("1,234.5,0", None),
            ("1234,567", None),
        ] {
            assert_eq!(ungrouped(text).as_deref(), want, "{text}");
        }
    }

    #[test]
    fn a_date_cell_may_carry_a_time_of_day_but_no_zone_nor_other_text() {
        for (text, want) in [
            ("2023-06-01", Some("2023-06-01")),
            ("2023-06-01 00:00:00", Some("2023-06-01")),
            ("2023-06-01 10:15", Some("2023-06-01")),
            ("2023-06-01T10:15:00.123", Some("2023-06-01")),
            ("2023/6/1 0:00", Some("2023/6/1")),
            ("2023-06-01 待核实", None),
            ("2023-06-01T20:00:00-05:00", None),
            ("2023-06-01T20:00:00Z", None),
            ("2023-06-01 10", None),
        ] {
            assert_eq!(date_part(text), want, "{text}");
        }
    }
}
