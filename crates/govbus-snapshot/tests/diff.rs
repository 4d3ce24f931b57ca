//! Dumps v1 → v2 → v3 produce exactly the expected changes, in key order,
//! with stable ids and source versions; malformed dumps fail clearly; a run
//! interrupted half way repeats exactly the same changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use govbus_catalog::Catalog;
use govbus_snapshot::mapping::MappingFile;
use govbus_snapshot::table::Encoding;
use govbus_snapshot::{run, Change, Options, Publisher, Quiet, SnapshotError};
use govbus_validate::Engine;

const DS: &str = "hrss.pension_payment";
const HEADER: &str = "发放流水号,身份证号码,姓名,养老保险类型,发放月份,金额,发放时间,备注";

fn catalog() -> &'static (Catalog, Engine) {
    static C: std::sync::OnceLock<(Catalog, Engine)> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        let c =
            Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")).unwrap();
        let e = Engine::new(&c).unwrap();
        (c, e)
    })
}

fn mapping(encoding: Encoding) -> MappingFile {
    let text = r#"
dataset = "hrss.pension_payment"
timezone = "+08:00"
[columns]
payment_id = "发放流水号"
recipient_id_number = "身份证号码"
recipient_name = "姓名"
pension_type = "养老保险类型"
pay_month = "发放月份"
amount = "金额"
paid_at = "发放时间"
"#;
    let mut m: MappingFile = toml::from_str(text).unwrap();
    m.encoding = encoding;
    m
}

/// A row: id suffix, amount; valid ID numbers and a local date-time in dump style.
fn row(n: u32, amount: &str) -> String {
    format!("PP{n:04},１１０１０５１９４９１２３１００２Ｘ,张建国,ENTERPRISE_EMPLOYEE,2026-10,{amount},2026/10/15 10:00,备注{n}")
}

#[derive(Default)]
struct Collect {
    changes: Vec<Change>,
    fail_after: Option<usize>,
}

impl Publisher for Collect {
    fn publish(&mut self, c: &Change) -> Result<(), govbus_snapshot::PublishError> {
        if self.fail_after.is_some_and(|n| self.changes.len() >= n) {
            return Err(govbus_snapshot::PublishError::Other("broker gone".into()));
        }
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
    fn dump(&self, name: &str, rows: &[String]) -> PathBuf {
        let path = self.tmp.path().join(name);
        std::fs::write(&path, format!("{HEADER}\n{}\n", rows.join("\n"))).unwrap();
        path
    }
    fn opts(&self, file: &Path) -> Options {
        Options {
            dataset: DS.into(),
            file: file.to_path_buf(),
            format: None,
            mapping: mapping(Encoding::Utf8),
            state_dir: self.tmp.path().join("state"),
            dry_run: false,
            max_delete_fraction: 0.5,
            sort_memory: 4096,
        }
    }
    fn run(
        &self,
        opts: &Options,
    ) -> (Result<govbus_snapshot::Summary, SnapshotError>, Vec<Change>) {
        let mut p = Collect::default();
        let (c, e) = catalog();
        let r = run(c, e, opts, &Quiet, &mut p);
        (r, p.changes)
    }
}

fn ops(changes: &[Change]) -> Vec<(String, &'static str)> {
    changes.iter().map(|c| (c.key.clone(), c.op)).collect()
}

fn k(s: &str) -> String {
    s.to_owned()
}

#[test]
fn dumps_v1_v2_v3_publish_exactly_the_changes() {
    let d = Dir::new();
    // v1: five payments.
    let v1 = d.dump(
        "v1.csv",
        &(1..=5).map(|n| row(n, "100.00")).collect::<Vec<_>>(),
    );
    let (s, c) = d.run(&d.opts(&v1));
    let s = s.unwrap();
    assert_eq!((s.creates, s.updates, s.deletes, s.unchanged), (5, 0, 0, 0));
    assert_eq!(
        ops(&c),
        (1..=5)
            .map(|n| (format!("PP{n:04}"), "create"))
            .collect::<Vec<_>>()
    );
    let v1_version = c[0].version;
    // The run's version and the dump's hash: unique across state directories.
    assert!(
        c[0].id
            .starts_with(&format!("snap-hrss.pension_payment-{v1_version}-"))
            && c[0].id.ends_with("-1"),
        "{}",
        c[0].id
    );
    assert!(c
        .iter()
        .all(|x| x.version == v1_version && x.value.is_some()));

    // v2: PP0002 changes, PP0003 disappears, PP0006 is new, the rest are equal.
    let mut rows: Vec<String> = (1..=6)
        .filter(|n| *n != 3)
        .map(|n| row(n, "100.00"))
        .collect();
    rows[1] = row(2, "120.50");
    let v2 = d.dump("v2.csv", &rows);
    let (s, c) = d.run(&d.opts(&v2));
    let s = s.unwrap();
    assert_eq!((s.creates, s.updates, s.deletes, s.unchanged), (1, 1, 1, 3));
    assert_eq!(
        ops(&c),
        [
            (k("PP0002"), "update"),
            (k("PP0003"), "delete"),
            (k("PP0006"), "create")
        ]
    );
    assert!(c[1].value.is_none(), "a delete has no value");
    assert!(
        c.iter().all(|x| x.version > v1_version),
        "versions grow per run"
    );
    assert!(
        c[0].id
            .starts_with(&format!("snap-hrss.pension_payment-{}-", c[0].version))
            && c[0].id.ends_with("-1"),
        "{}",
        c[0].id
    );

    // v3: PP0004 fails validation (its key is kept, not deleted), PP0005 disappears,
    // PP0001 appears twice (the last one wins).
    let rows = vec![
        row(1, "100.00"),
        row(2, "120.50"),
        row(4, "100.00").replace("ENTERPRISE_EMPLOYEE,2026-10", "ENTERPRISE_EMPLOYEE,2026-13"),
        row(6, "100.00"),
        row(1, "101.00"),
    ];
    let v3 = d.dump("v3.csv", &rows);
    let (s, c) = d.run(&d.opts(&v3));
    let s = s.unwrap();
    assert_eq!(ops(&c), [(k("PP0001"), "update"), (k("PP0005"), "delete")]);
    assert_eq!(s.invalid.len(), 1);
    assert_eq!(
        (s.invalid[0].line, s.invalid[0].reason),
        (4, "pattern_mismatch")
    );
    assert_eq!(s.invalid[0].field.as_deref(), Some("pay_month"));
    assert_eq!(s.duplicate_lines, vec![2]);

    // The same dump again: nothing to publish.
    let (s, c) = d.run(&d.opts(&v3));
    assert!(c.is_empty());
    assert_eq!(s.unwrap().unchanged, 3);
}

#[test]
fn a_run_interrupted_half_way_repeats_the_same_changes() {
    let d = Dir::new();
    let v1 = d.dump(
        "v1.csv",
        &(1..=40).map(|n| row(n, "100.00")).collect::<Vec<_>>(),
    );
    let (c_, e_) = catalog();
    let mut broken = Collect {
        fail_after: Some(17),
        ..Collect::default()
    };
    let err = run(c_, e_, &d.opts(&v1), &Quiet, &mut broken).unwrap_err();
    assert!(matches!(err, SnapshotError::Publish(_)), "{err}");
    assert_eq!(broken.changes.len(), 17);
    // Another dump is refused while the first is unfinished.
    let other = d.dump("other.csv", &[row(1, "1.00")]);
    let err = d.run(&d.opts(&other)).0.unwrap_err();
    assert!(err.to_string().contains("govbus snapshot rebuild"), "{err}");
    // The same dump again publishes all 40, the first 17 identical to before.
    let (s, again) = d.run(&d.opts(&v1));
    assert_eq!(s.unwrap().creates, 40);
    assert_eq!(again[..17], broken.changes[..]);
    let (_, none) = d.run(&d.opts(&v1));
    assert!(none.is_empty(), "committed after the complete run");
}

#[test]
fn gbk_full_width_and_local_dates_are_normalised() {
    let d = Dir::new();
    let text = format!("{HEADER}\n{}\n", row(1, "１，２００．５０"));
    let (gbk, _, bad) = encoding_rs::GBK.encode(&text);
    assert!(!bad);
    let path = d.tmp.path().join("gbk.csv");
    std::fs::write(&path, &gbk).unwrap();
    let mut opts = d.opts(&path);
    opts.mapping.encoding = Encoding::Gbk;
    let (s, c) = d.run(&opts);
    let s = s.unwrap();
    assert!(s.invalid.is_empty(), "{:?}", s.invalid);
    assert_eq!(c.len(), 1);
    // Read as UTF-8, the same bytes are an encoding error with its line.
    let mut utf8 = d.opts(&path);
    utf8.mapping.encoding = Encoding::Utf8;
    let err = d.run(&utf8).0.unwrap_err().to_string();
    assert!(
        err.contains("gbk.csv:1: not valid UTF-8") && err.contains("encoding"),
        "{err}"
    );
}

#[test]
fn malformed_dumps_fail_clearly_with_line_numbers() {
    let d = Dir::new();
    let v1 = d.dump(
        "v1.csv",
        &(1..=3).map(|n| row(n, "100.00")).collect::<Vec<_>>(),
    );
    d.run(&d.opts(&v1)).0.unwrap();
    // A ragged row: reported with its line; deletes withheld this run.
    let ragged = d.dump(
        "ragged.csv",
        &[row(1, "100.00"), "PP0002,only,three".into()],
    );
    let (s, c) = d.run(&d.opts(&ragged));
    let s = s.unwrap();
    assert_eq!(
        s.unreadable,
        vec![(3, "3 cells, but the header has 8 columns".to_owned())]
    );
    assert!(s
        .deletes_withheld
        .as_deref()
        .unwrap_or("")
        .contains("could not be read"));
    assert!(c.iter().all(|x| x.op != "delete"));
    // A missing key column stops the run before anything is published.
    let path = d.tmp.path().join("nokey.csv");
    std::fs::write(&path, "身份证号码,姓名\n11010519491231002X,张三\n").unwrap();
    let err = d.run(&d.opts(&path)).0.unwrap_err().to_string();
    assert!(
        err.contains("no column `发放流水号` for key field `payment_id`"),
        "{err}"
    );
    // Most of the dataset vanishing is withheld, not published.
    let d2 = Dir::new();
    let many = d2.dump(
        "many.csv",
        &(1..=30).map(|n| row(n, "100.00")).collect::<Vec<_>>(),
    );
    d2.run(&d2.opts(&many)).0.unwrap();
    let (s, c) = d2.run(&d2.opts(&d2.dump("tiny.csv", &[row(1, "100.00")])));
    assert!(c.is_empty());
    assert!(s.unwrap().deletes_withheld.unwrap().contains("29 of 30"));
}

#[test]
fn a_state_directory_of_another_dataset_is_refused() {
    let d = Dir::new();
    let v1 = d.dump("v1.csv", &[row(1, "100.00")]);
    let (s, _) = d.run(&d.opts(&v1));
    assert_eq!(s.unwrap().creates, 1);
    // Another dataset pointed at the same state would diff against the
    // wrong rows (found by the demo, which once shared one directory).
    let mut other = d.opts(&v1);
    other.dataset = "hrss.unemployment_benefit_payment".into();
    let (s, c) = d.run(&other);
    let e = s.unwrap_err().to_string();
    assert!(
        e.contains(
            "holds the state of hrss.pension_payment, not hrss.unemployment_benefit_payment"
        ),
        "{e}"
    );
    assert!(c.is_empty());
}

#[test]
fn a_dry_run_publishes_nothing_and_keeps_the_state() {
    let d = Dir::new();
    let v1 = d.dump(
        "v1.csv",
        &(1..=3).map(|n| row(n, "100.00")).collect::<Vec<_>>(),
    );
    let mut opts = d.opts(&v1);
    opts.dry_run = true;
    let (s, c) = d.run(&opts);
    assert_eq!(s.unwrap().creates, 3);
    assert!(c.is_empty());
    let (s, _) = d.run(&d.opts(&v1));
    assert_eq!(s.unwrap().creates, 3, "the dry run changed nothing");
}

#[test]
fn json_ndjson_and_xlsx_dumps() {
    let d = Dir::new();
    let rec = |n: u32| {
        serde_json::json!({"发放流水号": format!("PP{n:04}"), "身份证号码": "11010519491231002X", "姓名": "张建国",
            "养老保险类型": "CIVIL_SERVANT", "发放月份": "2026-10", "金额": 88.5, "发放时间": "20261015 100000"})
    };
    let json = d.tmp.path().join("d.json");
    std::fs::write(&json, serde_json::to_string(&vec![rec(1), rec(2)]).unwrap()).unwrap();
    let (s, _) = d.run(&d.opts(&json));
    assert_eq!(s.unwrap().creates, 2);
    let nd = d.tmp.path().join("d.ndjson");
    std::fs::write(&nd, format!("{}\n\n{}\n[1]\n", rec(1), rec(3))).unwrap();
    let (s, c) = d.run(&d.opts(&nd));
    let s = s.unwrap();
    assert_eq!(
        s.unreadable,
        vec![(4, "line is an array instead of an object".to_owned())]
    );
    assert_eq!(
        ops(&c),
        [(k("PP0003"), "create")],
        "no delete while a row is unreadable"
    );

    // An Excel workbook with a real date cell, written by Python's zipfile.
    let xlsx = d.tmp.path().join("d.xlsx");
    let status = std::process::Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/make_xlsx.py"))
        .arg(&xlsx)
        .status()
        .unwrap();
    assert!(status.success());
    let d3 = Dir::new();
    let (s, c) = d3.run(&d3.opts(&xlsx));
    let s = s.unwrap();
    assert!(s.invalid.is_empty() && s.unreadable.is_empty(), "{s:?}");
    assert_eq!(ops(&c), [(k("PP0001"), "create"), (k("PP0002"), "create")]);
}

/// A row that fails validation keeps its record (neither updated nor
/// deleted) — found by the key the engine derives, which writes a resident
/// ID's check character `x` as `X`. Before, the row's key kept the `x`, the
/// state's `X` matched nothing, and the record the row should protect was
/// deleted.
#[test]
fn a_rejected_row_keeps_its_record_whatever_the_case_of_its_check_character() {
    let dir = Dir::new();
    let mapping: MappingFile = toml::from_str(
        r#"
dataset = "public_security.household_registration"
timezone = "+08:00"
[columns]
id_number = "id_number"
name = "name"
gender = "gender"
birth_date = "birth_date"
ethnicity = "ethnicity"
address = "address"
household_no = "household_no"
status = "status"
phone = "phone"
updated_at = "updated_at"
"#,
    )
    .unwrap();
    let header =
        "id_number,name,gender,birth_date,ethnicity,address,household_no,status,phone,updated_at";
    let person = |id: &str, name: &str| {
        format!("{id},{name},MALE,1949-12-31,汉族,北京市东城区,110101000777,ACTIVE,,2026-11-01 12:00:00")
    };
    let dump = |file: &str, rows: &[String]| {
        let path = dir.tmp.path().join(file);
        std::fs::write(&path, format!("{header}\n{}\n", rows.join("\n"))).unwrap();
        Options {
            dataset: "public_security.household_registration".into(),
            mapping: mapping.clone(),
            ..dir.opts(&path)
        }
    };
    let others = [
        person("330102198808081239", "陈思远"),
        person("110101201001010023", "王芳"),
    ];
    let v1 = dump(
        "v1.csv",
        &[
            vec![person("11010519491231002x", "张建国")],
            others.to_vec(),
        ]
        .concat(),
    );
    let (r, changes) = dir.run(&v1);
    r.unwrap();
    assert!(
        ops(&changes).contains(&(k("11010519491231002X"), "create")),
        "{:?}",
        ops(&changes)
    );
    // Tonight the row is there but invalid (no name): the record stays.
    let v2 = dump(
        "v2.csv",
        &[vec![person("11010519491231002x", "")], others.to_vec()].concat(),
    );
    let (r, changes) = dir.run(&v2);
    let summary = r.unwrap();
    assert_eq!(summary.invalid.len(), 1);
    assert!(
        changes.is_empty(),
        "nothing changes, nothing is deleted: {:?}",
        ops(&changes)
    );
}
