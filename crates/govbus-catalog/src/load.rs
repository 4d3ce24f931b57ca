//! Loading and cross-checking the catalog directory.
//!
//! ```text
//! schemas/
//!   departments.toml                      [[department]] id, name_zh, name_en
//!   datasets/<owner>.<name>/dataset.toml  owner, key, rules, personal data, ...
//!   datasets/<owner>.<name>/v1.avsc       Avro schema versions, v1..vN
//! ```
//!
//! Every problem is collected, with its file and the path inside it; nothing
//! stops at the first.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use serde::Deserialize;

use crate::fields::{self, FieldInfo, FieldKind};
use crate::ids::schema_id;
use crate::model::{
    Classification, Compatibility, Dataset, Department, LookupField, PiiTag, SchemaId,
    SchemaVersion,
};
use crate::rules::{Check, Rule, RuleSpec};
use crate::subscriptions::{load_subscription, Subscription};

/// Key prefix of compatibility-level changes in the schema log.
pub const CONFIG_KEY_PREFIX: &str = "config:";

/// One thing wrong with the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file it is in (or the directory, for a missing file).
    pub file: PathBuf,
    /// Where in the file: a TOML key path like `rule[2].field`, or `-`.
    pub path: String,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.file.display(),
            self.path,
            self.message
        )
    }
}

/// Everything wrong with a catalog, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// The data catalog (数据目录): departments, datasets and their schemas.
#[derive(Debug, Clone)]
pub struct Catalog {
    root: PathBuf,
    /// The files it was built from, so that a registered version is checked
    /// by exactly the same code as a version on disk ([`Catalog::with_version`]).
    files: BTreeMap<PathBuf, String>,
    departments: BTreeMap<String, Department>,
    datasets: BTreeMap<String, Dataset>,
    by_id: HashMap<SchemaId, (String, u32)>,
    subscriptions: BTreeMap<String, Subscription>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DepartmentsFile {
    #[serde(default)]
    department: Vec<DepartmentSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DepartmentSpec {
    id: String,
    name_zh: String,
    name_en: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetSpec {
    owner: Option<String>,
    title_zh: String,
    title_en: String,
    classification: Classification,
    key: Vec<String>,
    /// A duration like `"24h"`.
    freshness: String,
    /// Defaults to `BACKWARD`.
    #[serde(default)]
    compatibility: Compatibility,
    #[serde(default)]
    personal_data: BTreeMap<String, PiiTag>,
    #[serde(default, rename = "rule")]
    rules: Vec<toml::Value>,
    #[serde(default)]
    lookup: Vec<LookupSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupSpec {
    field: String,
    #[serde(default)]
    unique: bool,
}

pub(crate) fn is_ident(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether `name` is a well-formed dataset name, `<owner>.<name>`.
pub fn is_dataset_name(name: &str) -> bool {
    name.split_once('.')
        .is_some_and(|(o, n)| is_ident(o) && is_ident(n))
}

pub(crate) struct Collector {
    pub(crate) problems: Vec<Problem>,
}

impl Collector {
    pub(crate) fn push(
        &mut self,
        file: &Path,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            file: file.to_path_buf(),
            path: path.into(),
            message: message.into(),
        });
    }
}

pub(crate) fn toml_problem(c: &mut Collector, file: &Path, e: &toml::de::Error) {
    let msg = e.message().to_owned();
    let loc = match e.span() {
        Some(span) => format!("byte {}", span.start),
        None => "-".to_owned(),
    };
    c.push(file, loc, msg);
}

impl Catalog {
    /// Whether `other` was built from exactly the same files (a reload that
    /// changed nothing).
    pub fn same_sources(&self, other: &Catalog) -> bool {
        self.files == other.files
    }

    /// Every subscription (grant), by id, whether active or not.
    pub fn subscriptions(&self) -> impl Iterator<Item = &Subscription> {
        self.subscriptions.values()
    }

    /// The subscription `id`.
    pub fn subscription(&self, id: &str) -> Option<&Subscription> {
        self.subscriptions.get(id)
    }

    /// Reads and cross-checks the catalog under `dir`.
    pub fn load(dir: &Path) -> Result<Catalog, Problems> {
        let files = read_tree(dir).map_err(|p| Problems(vec![p]))?;
        Catalog::from_files(dir, &files)
    }

    /// Builds the catalog from file contents keyed by path relative to `root`
    /// (`departments.toml`, `datasets/x.y/dataset.toml`, `datasets/x.y/v1.avsc`).
    /// This is how an embedded catalog is loaded without touching the disk.
    pub fn from_files(root: &Path, files: &BTreeMap<PathBuf, String>) -> Result<Catalog, Problems> {
        let mut c = Collector {
            problems: Vec::new(),
        };
        let departments = load_departments(root, files, &mut c);

        let mut dataset_files: BTreeMap<String, BTreeMap<String, (&PathBuf, &String)>> =
            BTreeMap::new();
        let mut subscription_files: Vec<(String, &String)> = Vec::new();
        for (path, text) in files {
            let mut parts = path
                .components()
                .map(|p| p.as_os_str().to_string_lossy().into_owned());
            let (Some(top), Some(ds), Some(file), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                let sub_id = path
                    .strip_prefix("subscriptions")
                    .ok()
                    .filter(|rest| rest.components().count() == 1)
                    .and_then(|rest| rest.to_str())
                    .and_then(|name| name.strip_suffix(".toml"));
                if let Some(id) = sub_id {
                    subscription_files.push((id.to_owned(), text));
                } else if path != Path::new("departments.toml") {
                    c.push(&root.join(path), "-", "unexpected file; the catalog holds departments.toml, datasets/<owner>.<name>/{dataset.toml,v<N>.avsc} and subscriptions/<id>.toml");
                }
                continue;
            };
            if top != "datasets" {
                c.push(&root.join(path), "-", "unexpected file outside datasets/");
                continue;
            }
            dataset_files
                .entry(ds)
                .or_default()
                .insert(file, (path, text));
        }

        let mut datasets = BTreeMap::new();
        for (name, dir_files) in &dataset_files {
            if let Some(ds) = load_dataset(root, name, dir_files, &departments, &mut c) {
                datasets.insert(name.clone(), ds);
            }
        }

        let by_id = index_schema_ids(&datasets, &mut c);
        let declared: std::collections::BTreeSet<String> = dataset_files.keys().cloned().collect();
        let mut subscriptions = BTreeMap::new();
        for (id, text) in subscription_files {
            if let Some(s) =
                load_subscription(root, &id, text, &departments, &datasets, &declared, &mut c)
            {
                subscriptions.insert(id, s);
            }
        }
        if c.problems.is_empty() {
            Ok(Catalog {
                root: root.to_path_buf(),
                files: files.clone(),
                departments,
                datasets,
                by_id,
                subscriptions,
            })
        } else {
            Err(Problems(c.problems))
        }
    }

    /// The catalog with one more schema version of `dataset` — as if
    /// `datasets/<dataset>/v<N+1>.avsc` held `schema` — after every check a
    /// catalog on disk gets (parsing, compatibility with the dataset's mode,
    /// key and rule fields, schema-id collisions). A schema identical to an
    /// existing version of the dataset changes nothing and returns `self`'s copy.
    pub fn with_version(&self, dataset: &str, schema: &str) -> Result<Catalog, Problems> {
        let problem = |m: String| {
            Problems(vec![Problem {
                file: self.root.join("datasets").join(dataset),
                path: "-".into(),
                message: m,
            }])
        };
        let ds = self
            .datasets
            .get(dataset)
            .ok_or_else(|| problem(format!("no dataset `{dataset}` in the catalog")))?;
        let parsed =
            Schema::parse_str(schema).map_err(|e| problem(format!("invalid Avro schema: {e}")))?;
        if ds
            .versions
            .iter()
            .any(|v| v.canonical_form == parsed.canonical_form())
        {
            return Ok(self.clone());
        }
        let next = ds.latest().version + 1;
        let mut files = self.files.clone();
        files.insert(
            PathBuf::from("datasets")
                .join(dataset)
                .join(format!("v{next}.avsc")),
            schema.to_owned(),
        );
        Catalog::from_files(&self.root, &files)
    }

    /// Applies one change recorded in the schema log: key `<dataset>` with an
    /// Avro schema ([`Catalog::with_version`]), or key
    /// `config:<dataset>` ([`CONFIG_KEY_PREFIX`]) with a level name
    /// ([`Catalog::with_compatibility`]).
    pub fn apply_change(&self, key: &str, value: &str) -> Result<Catalog, Problems> {
        match key.strip_prefix(CONFIG_KEY_PREFIX) {
            Some(dataset) => {
                let level = Compatibility::parse(value).ok_or_else(|| {
                    Problems(vec![Problem {
                        file: self.root.join("datasets").join(dataset),
                        path: "compatibility".into(),
                        message: format!("`{value}` is not a compatibility level"),
                    }])
                })?;
                self.with_compatibility(dataset, level)
            }
            None => self.with_version(key, value),
        }
    }

    /// The catalog with `dataset`'s compatibility level changed — as if its
    /// `dataset.toml` said so — after every check (so a level its existing
    /// versions violate is refused).
    pub fn with_compatibility(
        &self,
        dataset: &str,
        level: Compatibility,
    ) -> Result<Catalog, Problems> {
        let rel = PathBuf::from("datasets").join(dataset).join("dataset.toml");
        let Some(text) = self.files.get(&rel) else {
            return Err(Problems(vec![Problem {
                file: self.root.join(&rel),
                path: "-".into(),
                message: format!("no dataset `{dataset}` in the catalog"),
            }]));
        };
        // Top-level keys precede the first table, so the new line goes first.
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("compatibility"))
            .collect();
        let edited = format!(
            "compatibility = \"{}\"\n{}\n",
            level.as_str(),
            kept.join("\n")
        );
        let mut files = self.files.clone();
        files.insert(rel, edited);
        Catalog::from_files(&self.root, &files)
    }

    /// The directory it was loaded from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// All departments, by id.
    pub fn departments(&self) -> impl Iterator<Item = &Department> {
        self.departments.values()
    }

    /// One department.
    pub fn department(&self, id: &str) -> Option<&Department> {
        self.departments.get(id)
    }

    /// All datasets, by name.
    pub fn datasets(&self) -> impl Iterator<Item = &Dataset> {
        self.datasets.values()
    }

    /// One dataset.
    pub fn dataset(&self, name: &str) -> Option<&Dataset> {
        self.datasets.get(name)
    }

    /// The dataset and version a schema id belongs to.
    pub fn schema(&self, id: SchemaId) -> Option<(&Dataset, &SchemaVersion)> {
        let (name, version) = self.by_id.get(&id)?;
        let ds = self.datasets.get(name)?;
        Some((ds, ds.version(*version)?))
    }
}

/// Reads every file under `dir` into memory, keyed by relative path.
fn read_tree(dir: &Path) -> Result<BTreeMap<PathBuf, String>, Problem> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    let problem = |file: &Path, e: std::io::Error| Problem {
        file: file.to_path_buf(),
        path: "-".to_owned(),
        message: format!("cannot read: {e}"),
    };
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| problem(&d, e))?;
        for entry in entries {
            let path = entry.map_err(|e| problem(&d, e))?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let text = std::fs::read_to_string(&path).map_err(|e| problem(&path, e))?;
                let rel = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
                out.insert(rel, text);
            }
        }
    }
    Ok(out)
}

fn load_departments(
    root: &Path,
    files: &BTreeMap<PathBuf, String>,
    c: &mut Collector,
) -> BTreeMap<String, Department> {
    let file = root.join("departments.toml");
    let mut out = BTreeMap::new();
    let Some(text) = files.get(Path::new("departments.toml")) else {
        c.push(&file, "-", "missing: the catalog needs a departments.toml");
        return out;
    };
    let parsed: DepartmentsFile = match toml::from_str(text) {
        Ok(p) => p,
        Err(e) => {
            toml_problem(c, &file, &e);
            return out;
        }
    };
    for (i, d) in parsed.department.into_iter().enumerate() {
        if !is_ident(&d.id) {
            c.push(
                &file,
                format!("department[{i}].id"),
                format!("`{}` is not a valid id: use [a-z][a-z0-9_]*", d.id),
            );
        } else if out.contains_key(&d.id) {
            c.push(
                &file,
                format!("department[{i}].id"),
                format!("department `{}` is defined twice", d.id),
            );
        } else {
            out.insert(
                d.id.clone(),
                Department {
                    id: d.id,
                    name_zh: d.name_zh,
                    name_en: d.name_en,
                },
            );
        }
    }
    out
}

fn load_dataset(
    root: &Path,
    name: &str,
    dir_files: &BTreeMap<String, (&PathBuf, &String)>,
    departments: &BTreeMap<String, Department>,
    c: &mut Collector,
) -> Option<Dataset> {
    let dir = root.join("datasets").join(name);
    let file = dir.join("dataset.toml");
    let problems_before = c.problems.len();
    if !is_dataset_name(name) {
        c.push(
            &dir,
            "-",
            "a dataset directory is named <owner>.<name>, both [a-z][a-z0-9_]*",
        );
        return None;
    }
    let Some((_, text)) = dir_files.get("dataset.toml") else {
        c.push(
            &file,
            "-",
            "missing: every dataset directory needs a dataset.toml",
        );
        return None;
    };
    let spec: DatasetSpec = match toml::from_str(text) {
        Ok(s) => s,
        Err(e) => {
            toml_problem(c, &file, &e);
            return None;
        }
    };

    let prefix = name.split_once('.').map_or(name, |(o, _)| o);
    let owner = match spec.owner {
        None => {
            c.push(
                &file,
                "owner",
                "missing owner: every dataset has exactly one owner department (一数一源)",
            );
            String::new()
        }
        Some(o) => {
            if !departments.contains_key(&o) {
                c.push(
                    &file,
                    "owner",
                    format!("owner `{o}` is not a department in departments.toml"),
                );
            } else if o != prefix {
                c.push(
                    &file,
                    "owner",
                    format!("owner `{o}` does not match the dataset name prefix `{prefix}`"),
                );
            }
            o
        }
    };
    let freshness = match humantime::parse_duration(&spec.freshness) {
        Ok(d) => d,
        Err(e) => {
            c.push(
                &file,
                "freshness",
                format!("not a duration like \"24h\": {e}"),
            );
            std::time::Duration::ZERO
        }
    };

    let versions = load_versions(&dir, dir_files, c);
    if versions.is_empty() {
        if !dir_files.keys().any(|f| f.ends_with(".avsc")) {
            c.push(&dir, "-", "no schema: add v1.avsc");
        }
        return None;
    }
    let latest = &versions[versions.len() - 1];
    let latest_fields: HashMap<&str, FieldInfo> =
        fields::top_level(&latest.schema).into_iter().collect();

    if spec.key.is_empty() {
        c.push(&file, "key", "a dataset needs at least one key field");
    }
    for (i, k) in spec.key.iter().enumerate() {
        for v in &versions {
            match fields::top_level(&v.schema)
                .into_iter()
                .find(|(n, _)| n == k)
            {
                None => c.push(
                    &file,
                    format!("key[{i}]"),
                    format!("key field `{k}` does not exist in v{}", v.version),
                ),
                Some((_, info)) if info.nullable || !info.kind.is_key_kind() => c.push(
                    &file,
                    format!("key[{i}]"),
                    format!(
                        "key field `{k}` must be a non-null string, int, long or enum in v{}",
                        v.version
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    for field in spec.personal_data.keys() {
        if !latest_fields.contains_key(field.as_str()) {
            c.push(
                &file,
                format!("personal_data.{field}"),
                format!("field `{field}` does not exist in v{}", latest.version),
            );
        }
    }

    let mut lookup: Vec<LookupField> = Vec::new();
    for (i, l) in spec.lookup.iter().enumerate() {
        let path = format!("lookup[{i}].field");
        match latest_fields.get(l.field.as_str()) {
            None => c.push(
                &file,
                path,
                format!(
                    "field `{}` does not exist in v{}",
                    l.field.escape_debug(),
                    latest.version
                ),
            ),
            Some(info)
                if !(info.kind.is_key_kind() || info.kind == crate::fields::FieldKind::Date) =>
            {
                c.push(
                    &file,
                    path,
                    format!(
                        "`{}`: a lookup field is a string, int, long, enum or date",
                        l.field
                    ),
                )
            }
            Some(_) if spec.key == [l.field.clone()] => c.push(
                &file,
                path,
                format!(
                    "`{}` is the key: records are looked up by key already",
                    l.field
                ),
            ),
            Some(_) if lookup.iter().any(|x| x.field == l.field) => {
                c.push(&file, path, format!("`{}` is declared twice", l.field))
            }
            Some(_) => lookup.push(LookupField {
                field: l.field.clone(),
                unique: l.unique,
            }),
        }
    }

    let rules = load_rules(&file, &spec.rules, &versions, c);
    check_compatibility(spec.compatibility, &versions, c);

    if c.problems.len() > problems_before {
        return None;
    }
    Some(Dataset {
        name: name.to_owned(),
        owner,
        title_zh: spec.title_zh,
        title_en: spec.title_en,
        classification: spec.classification,
        key: spec.key,
        freshness,
        compatibility: spec.compatibility,
        personal_data: spec.personal_data,
        rules,
        lookup,
        versions,
        file,
    })
}

fn load_versions(
    dir: &Path,
    dir_files: &BTreeMap<String, (&PathBuf, &String)>,
    c: &mut Collector,
) -> Vec<SchemaVersion> {
    let mut numbered = BTreeMap::new();
    for (fname, (_, text)) in dir_files {
        if fname == "dataset.toml" {
            continue;
        }
        let version = fname
            .strip_prefix('v')
            .and_then(|r| r.strip_suffix(".avsc"))
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n > 0);
        match version {
            Some(v) => {
                numbered.insert(v, (dir.join(fname), *text));
            }
            None => c.push(
                &dir.join(fname),
                "-",
                "unexpected file; schema versions are named v1.avsc, v2.avsc, ...",
            ),
        }
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (expected, (v, (file, text))) in (1u32..).zip(&numbered) {
        if *v != expected {
            c.push(file, "-", format!("versions must be numbered 1, 2, ... without gaps: found v{v} where v{expected} was expected"));
            ok = false;
            break;
        }
        let schema = match Schema::parse_str(text) {
            Ok(s) => s,
            Err(e) => {
                c.push(file, "-", format!("invalid Avro schema: {e}"));
                ok = false;
                continue;
            }
        };
        if !matches!(schema, Schema::Record(_)) {
            c.push(file, "type", "a dataset schema must be an Avro record");
            ok = false;
            continue;
        }
        let canonical_form = schema.canonical_form();
        out.push(SchemaVersion {
            version: *v,
            id: schema_id(&canonical_form),
            schema,
            canonical_form,
            source: (*text).clone(),
            file: file.clone(),
        });
    }
    if ok {
        out
    } else {
        Vec::new()
    }
}

fn load_rules(
    file: &Path,
    specs: &[toml::Value],
    versions: &[SchemaVersion],
    c: &mut Collector,
) -> Vec<Rule> {
    let mut rules = Vec::new();
    let Some(latest) = versions.last() else {
        return rules;
    };
    for (i, value) in specs.iter().enumerate() {
        let path = format!("rule[{i}]");
        let spec = match RuleSpec::deserialize(value.clone()) {
            Ok(s) => s,
            Err(e) => {
                c.push(file, &path, e.message().to_owned());
                continue;
            }
        };
        let field = spec.field().to_owned();
        let rule = match spec.into_rule() {
            Ok(r) => r,
            Err(problems) => {
                for (param, msg) in problems {
                    c.push(file, format!("{path}.{param}"), msg);
                }
                continue;
            }
        };
        let Some(latest_info) = field_in(&latest.schema, &field) else {
            c.push(
                file,
                format!("{path}.field"),
                format!(
                    "rule `{}` names field `{field}`, which does not exist in v{}",
                    rule.check.name(),
                    latest.version
                ),
            );
            continue;
        };
        let mut ok = true;
        for v in versions {
            let Some(info) = field_in(&v.schema, &field) else {
                continue;
            };
            if let Some(needs) = rule.check.unsupported_on(&info.kind) {
                c.push(
                    file,
                    format!("{path}.field"),
                    format!(
                        "rule `{}` needs {needs}, but `{field}` is {:?} in v{}",
                        rule.check.name(),
                        info.kind,
                        v.version
                    ),
                );
                ok = false;
            }
        }
        match (&rule.check, &latest_info.kind) {
            (Check::NotBefore { other }, _) => match field_in(&latest.schema, other) {
                None => {
                    c.push(
                        file,
                        format!("{path}.other"),
                        format!("field `{other}` does not exist in v{}", latest.version),
                    );
                    ok = false;
                }
                Some(o) if !o.kind.is_temporal() => {
                    c.push(
                        file,
                        format!("{path}.other"),
                        format!("field `{other}` is not a date or timestamp"),
                    );
                    ok = false;
                }
                Some(_) => {}
            },
            (Check::OneOf(values), FieldKind::Enum(symbols)) => {
                for v in values.iter().filter(|v| !symbols.contains(v)) {
                    c.push(
                        file,
                        format!("{path}.values"),
                        format!("`{v}` is not a symbol of enum field `{field}`"),
                    );
                    ok = false;
                }
            }
            (Check::DecimalScale(max), FieldKind::Decimal { scale, .. }) if max >= scale => {
                c.push(
                    file,
                    format!("{path}.max_scale"),
                    format!("max_scale {max} has no effect: the schema's scale is already {scale}"),
                );
                ok = false;
            }
            _ => {}
        }
        if ok {
            rules.push(rule);
        }
    }
    rules
}

fn field_in(schema: &Schema, name: &str) -> Option<FieldInfo> {
    fields::top_level(schema)
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, i)| i)
}

fn check_compatibility(mode: Compatibility, versions: &[SchemaVersion], c: &mut Collector) {
    for (i, new) in versions.iter().enumerate().skip(1) {
        let earlier: &[SchemaVersion] = if mode.transitive() {
            &versions[..i]
        } else {
            &versions[i - 1..i]
        };
        for old in earlier {
            let mut fail = |direction: &str, e: String| {
                c.push(
                    &new.file,
                    "compatibility",
                    format!(
                        "v{} is not {} compatible with v{} ({direction}): {e}",
                        new.version,
                        mode.as_str(),
                        old.version
                    ),
                );
            };
            if mode.backward() {
                if let Err(e) = fully_readable(&old.schema, &new.schema) {
                    fail("the new schema cannot read old data", e);
                }
            }
            if mode.forward() {
                if let Err(e) = fully_readable(&new.schema, &old.schema) {
                    fail("the old schema cannot read new data", e);
                }
            }
        }
    }
}

/// Whether every datum written with `writer` can be read with `reader`.
/// apache-avro's "partial" compatibility (some data would fail to resolve,
/// e.g. a union narrowed to one branch) counts as incompatible.
fn fully_readable(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(apache_avro::schema_compatibility::Compatibility::Full) => Ok(()),
        Ok(_) => Err(
            "only partially compatible: some data written with one cannot be read with the other"
                .to_owned(),
        ),
        Err(e) => Err(e.to_string()),
    }
}

fn index_schema_ids(
    datasets: &BTreeMap<String, Dataset>,
    c: &mut Collector,
) -> HashMap<SchemaId, (String, u32)> {
    let mut by_id: HashMap<SchemaId, (String, u32)> = HashMap::new();
    for ds in datasets.values() {
        for v in &ds.versions {
            if let Some((other, ov)) = by_id.get(&v.id) {
                let same = datasets
                    .get(other)
                    .and_then(|o| o.version(*ov))
                    .is_some_and(|o| o.canonical_form == v.canonical_form);
                let message = if same {
                    format!("schema is identical to {other} v{ov}: give each dataset its own record name or namespace")
                } else {
                    format!("schema id {} collides with {other} v{ov}: rename the record (e.g. add a namespace segment) so its canonical form differs", v.id)
                };
                c.push(&v.file, "-", message);
            } else {
                by_id.insert(v.id, (ds.name.clone(), v.version));
            }
        }
    }
    by_id
}
