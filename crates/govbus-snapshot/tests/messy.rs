//! Messy and careless publishers (issue #13, "Nothing accepted is lost or
//! altered"): header-only and mismatched dumps, garbage, sharp shrinks,
//! Excel's two date systems, full-width text, a UTF-8 file declared GBK, and
//! a dry run that must leave no trace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};

use govbus_catalog::Catalog;
use govbus_snapshot::mapping::{Mapper, MappingFile};
use govbus_snapshot::table::{self, Encoding, Format};
use govbus_snapshot::{run, Change, Options, Publisher, Quiet, SnapshotError, Summary};
use govbus_validate::Engine;
use serde_json::{json, Value as Json};

const DS: &str = "hrss.pension_payment";
const HEADER: &str = "发放流水号,身份证号码,姓名,养老保险类型,发放月份,金额,发放时间";
const COLUMNS: [&str; 7] = [
    "发放流水号",
    "身份证号码",
    "姓名",
    "养老保险类型",
    "发放月份",
    "金额",
    "发放时间",
];

fn catalog() -> &'static (Catalog, Engine) {
    static C: std::sync::OnceLock<(Catalog, Engine)> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        let c =
            Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")).unwrap();
        let e = Engine::new(&c).unwrap();
        (c, e)
    })
}

fn mapping() -> MappingFile {
    toml::from_str(
        r#"
dataset = "hrss.pension_payment"
[columns]
payment_id = "发放流水号"
recipient_id_number = "身份证号码"
recipient_name = "姓名"
pension_type = "养老保险类型"
pay_month = "发放月份"
amount = "金额"
paid_at = "发放时间"
"#,
    )
    .unwrap()
}

fn row(n: u32) -> String {
    format!(
        "PP{n:04},11010519491231002X,张建国,ENTERPRISE_EMPLOYEE,2026-10,100.00,2026/10/15 10:00"
    )
}

fn rec(n: u32) -> Json {
    json!({"发放流水号": format!("PP{n:04}"), "身份证号码": "11010519491231002X", "姓名": "张建国",
        "养老保险类型": "CIVIL_SERVANT", "发放月份": "2026-10", "金额": 88.5, "发放时间": "2026-10-15 10:00:00"})
}

#[derive(Default)]
struct Collect {
    changes: Vec<Change>,
}

impl Publisher for Collect {
    fn publish(&mut self, c: &Change) -> Result<(), govbus_snapshot::PublishError> {
        self.changes.push(c.clone());
        Ok(())
    }
    fn flush(&mut self) -> Result<(), govbus_snapshot::PublishError> {
        Ok(())
    }
}

struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    fn csv(&self, name: &str, rows: impl IntoIterator<Item = u32>) -> PathBuf {
        let body: String = rows.into_iter().map(|n| format!("{}\n", row(n))).collect();
        self.write(name, format!("{HEADER}\n{body}"))
    }
    fn opts(&self, file: &Path) -> Options {
        Options {
            dataset: DS.into(),
            file: file.to_path_buf(),
            format: None,
            mapping: mapping(),
            state_dir: self.path("state"),
            dry_run: false,
            max_delete_fraction: 0.5,
            sort_memory: 4096,
        }
    }
    fn run_opts(&self, opts: &Options) -> (Result<Summary, SnapshotError>, Vec<Change>) {
        let mut p = Collect::default();
        let (c, e) = catalog();
        let r = run(c, e, opts, &Quiet, &mut p);
        (r, p.changes)
    }
    fn run(&self, file: &Path) -> (Result<Summary, SnapshotError>, Vec<Change>) {
        self.run_opts(&self.opts(file))
    }
    /// Publishes `n` rows as the previous generation.
    fn with_state(n: u32) -> Dir {
        let d = Dir::new();
        let v1 = d.csv("v1.csv", 1..=n);
        let (s, c) = d.run(&v1);
        assert_eq!(s.unwrap().creates, u64::from(n));
        assert_eq!(c.len(), n as usize);
        d
    }
    /// The state still holds all `n` records: the same full dump is unchanged.
    fn assert_state_intact(&self, n: u32) {
        let again = self.csv("again.csv", 1..=n);
        let (s, c) = self.run(&again);
        let s = s.unwrap();
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(s.unchanged, u64::from(n), "{s:?}");
    }
}

fn deletes(c: &[Change]) -> usize {
    c.iter().filter(|c| c.op == "delete").count()
}

// ---------------------------------------------------------------- workbooks

/// A minimal .xlsx: one sheet of rows; numbers in `date_cols` carry a date
/// format; `date1904` sets the workbook's date system.
fn xlsx(path: &Path, rows: &[Vec<Json>], date_cols: &[usize], date1904: bool) {
    fn col(j: usize) -> String {
        char::from(b'A' + u8::try_from(j).unwrap()).to_string()
    }
    let mut sheet = String::from(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>"#,
    );
    for (i, r) in rows.iter().enumerate() {
        let n = i + 1;
        sheet += &format!(r#"<row r="{n}">"#);
        for (j, v) in r.iter().enumerate() {
            let at = format!("{}{n}", col(j));
            match v {
                Json::String(s) => {
                    sheet += &format!(r#"<c r="{at}" t="inlineStr"><is><t>{s}</t></is></c>"#)
                }
                Json::Number(x) => {
                    let style = if i > 0 && date_cols.contains(&j) {
                        r#" s="1""#
                    } else {
                        ""
                    };
                    sheet += &format!(r#"<c r="{at}"{style}><v>{x}</v></c>"#);
                }
                _ => {}
            }
        }
        sheet += "</row>";
    }
    sheet += "</sheetData></worksheet>";
    let styles = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><numFmts count="1"><numFmt numFmtId="164" formatCode="yyyy/m/d h:mm"/></numFmts><fonts count="1"><font/></fonts><fills count="1"><fill/></fills><borders count="1"><border/></borders><cellStyleXfs count="1"><xf/></cellStyleXfs><cellXfs count="2"><xf numFmtId="0"/><xf numFmtId="164" applyNumberFormat="1"/></cellXfs></styleSheet>"#;
    let pr = if date1904 {
        r#"<workbookPr date1904="1"/>"#
    } else {
        ""
    };
    let workbook = format!(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">{pr}<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>"#
    );
    let wb_rels = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/><Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles" Target="styles.xml"/></Relationships>"#;
    let rels = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>"#;
    let types = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/><Override PartName="/xl/styles.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/></Types>"#;
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let o =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, body) in [
        ("[Content_Types].xml", types),
        ("_rels/.rels", rels),
        ("xl/workbook.xml", workbook.as_str()),
        ("xl/_rels/workbook.xml.rels", wb_rels),
        ("xl/styles.xml", styles),
        ("xl/worksheets/sheet1.xml", sheet.as_str()),
    ] {
        z.start_file(name, o).unwrap();
        z.write_all(body.as_bytes()).unwrap();
    }
    z.finish().unwrap();
}

fn header_row(cols: &[&str]) -> Vec<Json> {
    cols.iter().map(|c| json!(c)).collect()
}

// ------------------------------------------------ 1. header-only, mismatched

#[test]
fn a_header_only_dump_publishes_no_deletes() {
    let d = Dir::with_state(5);
    for (name, body) in [
        ("header-only.csv", format!("{HEADER}\n")),
        ("header-only-no-newline.csv", HEADER.to_owned()),
        ("empty.ndjson", String::new()),
        ("blank-lines.ndjson", "\n\n".to_owned()),
        ("empty-array.json", "[]".to_owned()),
    ] {
        let p = d.write(name, body);
        let (s, c) = d.run(&p);
        let s = s.unwrap();
        assert_eq!(deletes(&c), 0, "{name}: {c:?}");
        assert!(
            s.deletes_withheld
                .as_deref()
                .is_some_and(|w| w.contains("5 of 5")),
            "{name}: {s:?}"
        );
        d.assert_state_intact(5);
    }
    // The same for a workbook with only its header row.
    let x = d.path("header-only.xlsx");
    xlsx(&x, &[header_row(&COLUMNS)], &[], false);
    let (s, c) = d.run(&x);
    assert_eq!(deletes(&c), 0);
    assert!(s.unwrap().deletes_withheld.is_some());
    d.assert_state_intact(5);
}

#[test]
fn a_header_that_does_not_match_the_mapping_is_refused_before_any_row() {
    let d = Dir::with_state(5);
    let check = |p: &Path, want: &[&str]| {
        let (s, c) = d.run(p);
        let e = s.unwrap_err();
        assert!(matches!(e, SnapshotError::Columns { .. }), "{e}");
        let e = e.to_string();
        for w in want {
            assert!(e.contains(w), "{}: `{w}` not in: {e}", p.display());
        }
        assert!(c.is_empty());
        d.assert_state_intact(5);
    };
    // Another table's header, no rows at all: no key column.
    let other = d.write("other.csv", "统一社会信用代码,企业名称,法定代表人\n");
    check(
        &other,
        &[
            "no column `发放流水号` for key field `payment_id`",
            "`金额`",
            "`发放时间`",
            "统一社会信用代码",
        ],
    );
    // The key is there, mapped columns are not (every missing one named).
    let partial = d.write(
        "partial.csv",
        format!(
            "发放流水号,身份证号码,姓名\n{}\n",
            "PP0001,11010519491231002X,张建国"
        ),
    );
    check(
        &partial,
        &["`养老保险类型`", "`发放月份`", "`金额`", "`发放时间`"],
    );
    // The same header in a workbook.
    let x = d.path("other.xlsx");
    xlsx(
        &x,
        &[header_row(&["统一社会信用代码", "企业名称"])],
        &[],
        false,
    );
    check(&x, &["no column `发放流水号` for key field `payment_id`"]);
    // NDJSON has no header: its first object must hold the key.
    let nd = d.write("other.ndjson", "{\"统一社会信用代码\": \"x\"}\n");
    check(&nd, &["no column `发放流水号` for key field `payment_id`"]);
    // An object keyed by its values: the refusal names none of them (it is
    // logged), only how many members the first record has.
    let keyed = d.write(
        "keyed.ndjson",
        "{\"11010519491231002X\": {\"姓名\": \"张建国\"}, \"13800138000\": 1}\n",
    );
    check(
        &keyed,
        &[
            "no column `发放流水号` for key field `payment_id`",
            "its first record has 2 members",
        ],
    );
    let (s, _) = d.run(&keyed);
    let e = s.unwrap_err().to_string();
    assert!(
        !e.contains("11010519491231002X") && !e.contains("13800138000"),
        "{e}"
    );
    // A header row that would drive the operator's terminal is shown
    // escaped.
    let escapes = d.write("escapes.csv", "\u{1b}[2J\u{1b}]0;owned\u{7},金额\n");
    check(&escapes, &["`\\u{1b}[2J\\u{1b}]0;owned\\u{7}`"]);
    let (s, _) = d.run(&escapes);
    let e = s.unwrap_err().to_string();
    assert!(!e.chars().any(char::is_control), "{e:?}");
}

#[test]
fn garbage_and_one_huge_line_are_refused() {
    let d = Dir::with_state(5);
    // One 40 MiB line: no header row within the bound.
    let huge = d.path("huge.csv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&huge).unwrap());
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..40 {
            f.write_all(&chunk).unwrap();
        }
    }
    let (s, c) = d.run(&huge);
    let e = s.unwrap_err().to_string();
    assert!(e.contains("no header row"), "{e}");
    assert!(c.is_empty());
    // The same as NDJSON: a line longer than any record can be.
    let nd = d.path("huge.ndjson");
    std::fs::copy(&huge, &nd).unwrap();
    let (s, c) = d.run(&nd);
    let e = s.unwrap_err().to_string();
    assert!(e.contains("longer than"), "{e}");
    assert!(c.is_empty());
    // Binary junk with line breaks: not a header of this mapping.
    let junk: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 & 0x7f)
        .collect();
    let p = d.write("junk.csv", &junk);
    let (s, c) = d.run(&p);
    assert!(s.is_err());
    assert!(c.is_empty());
    // A .json file that is not an array is refused without reading it whole.
    let j = d.write("junk.json", "garbage garbage");
    assert!(d.run(&j).0.is_err());
    d.assert_state_intact(5);
}

#[test]
fn a_sharp_shrink_withholds_deletes_whatever_the_count() {
    // 3 of 4 would go: no absolute floor lets it through.
    let d = Dir::with_state(4);
    let small = d.csv("small.csv", [1]);
    let (s, c) = d.run(&small);
    let s = s.unwrap();
    assert_eq!(deletes(&c), 0, "{c:?}");
    assert_eq!(s.deletes, 3);
    let why = s.deletes_withheld.unwrap();
    assert!(
        why.contains("3 of 4") && why.contains("--max-deletes"),
        "{why}"
    );
    d.assert_state_intact(4);
    // Under the limit, deletes go out.
    let most = d.csv("most.csv", 1..=3);
    let (s, c) = d.run(&most);
    assert!(s.unwrap().deletes_withheld.is_none());
    assert_eq!(deletes(&c), 1);
    // An NDJSON dump that shrinks the same way is withheld too.
    let d = Dir::with_state(4);
    let p = d.write("x.ndjson", format!("{}\n", rec(1)));
    let (s, c) = d.run(&p);
    assert_eq!(deletes(&c), 0);
    assert!(s.unwrap().deletes_withheld.unwrap().contains("3 of 4"));
}

// ------------------------------------------------------------ 3. Excel dates

fn household_mapper() -> Mapper {
    let (c, _) = catalog();
    Mapper::new(
        &MappingFile::default(),
        c.dataset("public_security.household_registration").unwrap(),
    )
    .unwrap()
}

/// birth_date of each row of a workbook with serials in the date column, or
/// why the row cannot be read.
fn birth_dates(serials: &[f64], date1904: bool) -> Vec<Result<Json, String>> {
    let d = Dir::new();
    let p = d.path("dates.xlsx");
    let mut rows = vec![header_row(&["id_number", "birth_date"])];
    for s in serials {
        rows.push(vec![json!("11010519491231002X"), json!(s)]);
    }
    xlsx(&p, &rows, &[1], date1904);
    let m = household_mapper();
    table::open(&p, Format::Xlsx, Encoding::Utf8)
        .unwrap()
        .rows
        .map(|r| {
            let r = r.unwrap().unwrap();
            m.record(&r)
                .map(|rec| rec["birth_date"].clone())
                .map_err(|e| e.message)
        })
        .collect()
}

#[test]
fn excel_dates_are_exact_in_both_date_systems() {
    // 1904 system: serial 0 is 1904-01-01.
    assert_eq!(
        birth_dates(&[43_834.0, 0.0, 1.0], true),
        [
            Ok(json!("2024-01-05")),
            Ok(json!("1904-01-01")),
            Ok(json!("1904-01-02"))
        ]
    );
    // 1900 system, with Excel's phantom 1900-02-29 (serial 60).
    assert_eq!(
        birth_dates(&[45_296.0, 1.0, 59.0, 61.0, 45_078.0], false),
        [
            Ok(json!("2024-01-05")),
            Ok(json!("1900-01-01")),
            Ok(json!("1900-02-28")),
            Ok(json!("1900-03-01")),
            Ok(json!("2023-06-01")),
        ]
    );
    // Serial 60 names a day that does not exist: the row is unreadable,
    // never published as a neighbouring day.
    let v = birth_dates(&[60.0], false);
    assert!(matches!(&v[0], Err(e) if e.contains("1900-02-29")), "{v:?}");
}

#[test]
fn excel_timestamps_in_a_1904_workbook_publish_the_right_day() {
    let d = Dir::new();
    let p = d.path("pay.xlsx");
    let mut rows = vec![header_row(&COLUMNS)];
    // 2024-01-05 10:00 in the 1904 system.
    rows.push(vec![
        json!("PP0001"),
        json!("11010519491231002X"),
        json!("张建国"),
        json!("CIVIL_SERVANT"),
        json!("2024-01"),
        json!(88.5),
        json!(43_834.416_666_666_7),
    ]);
    xlsx(&p, &rows, &[6], true);
    let (c, _) = catalog();
    let m = Mapper::new(&mapping(), c.dataset(DS).unwrap()).unwrap();
    let t = table::open(&p, Format::Xlsx, Encoding::Utf8).unwrap();
    let recs: Vec<_> = t
        .rows
        .map(|r| m.record(&r.unwrap().unwrap()).unwrap())
        .collect();
    assert_eq!(recs[0]["paid_at"], json!("2024-01-05T10:00:00+08:00"));
}

// ------------------------------------------------------ 4. text kept as is

#[test]
fn free_text_is_kept_as_written_identity_fields_get_ascii_digits() {
    let (c, _) = catalog();
    let ds = c
        .dataset("market_regulation.enterprise_registration")
        .unwrap();
    let m = Mapper::new(&MappingFile::default(), ds).unwrap();
    let cells = [
        ("credit_code", "９１３３０１０６ＭＡ２ＨＸＸＸＸ０Ｘ"),
        ("enterprise_name", "杭州某某科技有限公司（滨江分公司）"),
        ("legal_representative", "张　三"),
        ("enterprise_type", "limited_liability"),
        ("registered_capital", "１，０００．５０"),
        ("status", "ACTIVE"),
        ("established_date", "２０２３/０６/０１"),
        ("address", "滨江区网商路６９９号　３幢"),
        (
            "business_scope",
            "软件开发；：ＡＰＰ运营（依法须经批准的项目）",
        ),
        ("contact_phone", "１３８００１３８０００"),
    ];
    let row = table::Row {
        line: 2,
        cells: cells
            .iter()
            .map(|(k, v)| ((*k).to_owned(), table::Cell::Text((*v).to_owned())))
            .collect(),
    };
    let r = m.record(&row).unwrap();
    assert_eq!(r["credit_code"], json!("91330106MA2HXXXX0X"));
    assert_eq!(r["contact_phone"], json!("13800138000"));
    assert_eq!(r["registered_capital"], json!("1000.50"));
    assert_eq!(r["established_date"], json!("2023-06-01"));
    for f in [
        "enterprise_name",
        "legal_representative",
        "address",
        "business_scope",
    ] {
        let want = cells.iter().find(|(k, _)| *k == f).unwrap().1;
        assert_eq!(r[f], json!(want), "{f} is free text: kept exactly");
    }
}

#[test]
fn full_width_text_reaches_the_topic_unchanged() {
    let d = Dir::new();
    let name = "张建国（滨江分公司）；：ＡＰＰ";
    let p = d.write(
        "fw.csv",
        format!(
            "{HEADER}\nPP0001,１１０１０５１９４９１２３１００２Ｘ,{name},ENTERPRISE_EMPLOYEE,2026-10,100.00,2026/10/15 10:00\n"
        ),
    );
    let (s, c) = d.run(&p);
    let s = s.unwrap();
    assert!(s.invalid.is_empty(), "{:?}", s.invalid);
    let value = c[0].value.as_ref().unwrap();
    let has = |needle: &[u8]| value.windows(needle.len()).any(|w| w == needle);
    assert!(has(name.as_bytes()), "the name as written is in the record");
    assert!(has(b"11010519491231002X"), "the ID number in ASCII");
}

// ------------------------------------------------ 5. encodings and dry runs

#[test]
fn a_utf8_file_declared_gbk_is_refused() {
    let d = Dir::with_state(2);
    let p = d.csv("utf8.csv", 1..=2);
    for enc in [Encoding::Gbk, Encoding::Gb18030] {
        let mut o = d.opts(&p);
        o.mapping.encoding = enc;
        let (s, c) = d.run_opts(&o);
        let e = s.unwrap_err().to_string();
        assert!(e.contains("encoding = \"utf-8\""), "{e}");
        assert!(c.is_empty());
    }
    let nd = d.write("utf8.ndjson", format!("{}\n", rec(1)));
    let mut o = d.opts(&nd);
    o.mapping.encoding = Encoding::Gbk;
    assert!(d.run_opts(&o).0.unwrap_err().to_string().contains("utf-8"));
    // A real GBK file with the same text still works.
    let text = format!("{HEADER}\n{}\n{}\n", row(1), row(2));
    let (gbk, _, bad) = encoding_rs::GBK.encode(&text);
    assert!(!bad);
    let g = d.write("gbk.csv", &gbk);
    let mut o = d.opts(&g);
    o.mapping.encoding = Encoding::Gbk;
    let (s, c) = d.run_opts(&o);
    assert_eq!(s.unwrap().unchanged, 2);
    assert!(c.is_empty());
}

#[test]
fn a_dry_run_leaves_no_state_directory() {
    let d = Dir::new();
    let v1 = d.csv("v1.csv", 1..=3);
    let mut o = d.opts(&v1);
    o.dry_run = true;
    o.state_dir = d.path("deep/state");
    let (s, c) = d.run_opts(&o);
    assert_eq!(s.unwrap().creates, 3);
    assert!(c.is_empty());
    assert!(
        !d.path("deep").exists(),
        "a dry run created the state directory"
    );
    // With a state, a dry run reads it and writes nothing into it.
    let d = Dir::with_state(3);
    let before: Vec<_> = std::fs::read_dir(d.path("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let v2 = d.csv("v2.csv", 1..=4);
    let mut o = d.opts(&v2);
    o.dry_run = true;
    let (s, _) = d.run_opts(&o);
    assert_eq!(s.unwrap().creates, 1);
    let after: Vec<_> = std::fs::read_dir(d.path("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after);
}

// ------------------------------------------------------------ event ids

/// Event ids never repeat for different changes: a second state directory
/// (a lost or rebuilt state) starts its generations again, but its ids do
/// not collide with the first one's; a killed run's re-run repeats its own.
#[test]
fn event_ids_are_unique_across_state_directories() {
    let a = Dir::new();
    let b = Dir::new();
    let dump = a.csv("v1.csv", 1..=5);
    let (_, first) = a.run(&dump);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let (_, second) = b.run(&dump);
    assert_eq!((first.len(), second.len()), (5, 5));
    let ids: std::collections::HashSet<&str> =
        first.iter().chain(&second).map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), 10, "{ids:?}");
}
