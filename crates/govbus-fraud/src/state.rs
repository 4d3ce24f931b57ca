//! What the app remembers, and the incremental form of the rules over it.
//!
//! The state is three byte-keyed tables, kept by any [`Kv`] (the on-disk
//! store in the app, a map in tests):
//!
//! - [`Tbl::Records`]: the current version of every input record, by feed and
//!   key, last-write-wins by source version; a delete leaves a tombstone
//!   (its version), so a late, older version cannot bring the record back;
//! - [`Tbl::Index`]: the live records by person (deaths) and by person and
//!   month (payments, contributions) — what the rules look up;
//! - [`Tbl::Alerts`]: every alert ever raised, standing or withdrawn, with
//!   the content last published — so a restart neither repeats nor loses one.
//!
//! [`apply`] takes one [`Change`]: it replaces the record, then re-judges
//! every payment the old or the new version could have taken part in (the
//! person's payments for a death; the payment itself, and for a pension the
//! person's unemployment payments that month; for a contribution the
//! person's unemployment payments that month) and reconciles their alerts:
//! raise, update, withdraw. An alert stands iff the current records support
//! it, whatever the order they arrived in ([`crate::detect::oracle`]).

use std::collections::{BTreeMap, BTreeSet};

use govbus_state::codec::{Reader, Writer};
use govbus_state::{Row, StateError};

use crate::detect::{judge, Alert, Change, Evidence, Feed, Input, Payment, Rule, RuleParams};

/// The app's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tbl {
    /// Current record versions (and tombstones).
    Records,
    /// Lookup index of live records.
    Index,
    /// Alerts raised, standing or withdrawn.
    Alerts,
}

impl Tbl {
    /// Every table.
    pub const ALL: [Tbl; 3] = [Tbl::Records, Tbl::Index, Tbl::Alerts];

    /// The table's name in the store.
    pub fn name(self) -> &'static str {
        match self {
            Tbl::Records => "fraud.records",
            Tbl::Index => "fraud.index",
            Tbl::Alerts => "fraud.alerts",
        }
    }
}

/// A byte key/value store with tables: the on-disk store inside a write
/// transaction, or a map.
pub trait Kv {
    /// The value of `key`.
    fn get(&mut self, t: Tbl, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;
    /// Sets `key`.
    fn put(&mut self, t: Tbl, key: &[u8], value: &[u8]) -> Result<(), StateError>;
    /// Removes `key`.
    fn delete(&mut self, t: Tbl, key: &[u8]) -> Result<(), StateError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan(&mut self, t: Tbl, prefix: &[u8]) -> Result<Vec<Row>, StateError>;
}

/// Why a standing alert was withdrawn: what changed in the records it named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The benefit payment was deleted.
    PaymentDeleted,
    /// The payment was corrected (another person or month) and no longer matches.
    PaymentCorrected,
    /// The contradicting record was deleted (and no other one supports the alert).
    EvidenceDeleted,
    /// The contradicting record was corrected (and no other one supports the alert).
    EvidenceCorrected,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 4] = [
        Reason::PaymentDeleted,
        Reason::PaymentCorrected,
        Reason::EvidenceDeleted,
        Reason::EvidenceCorrected,
    ];

    /// The code in `hrss.fraud_alert.withdrawn_reason`.
    pub fn code(self) -> &'static str {
        match self {
            Reason::PaymentDeleted => "payment_deleted",
            Reason::PaymentCorrected => "payment_corrected",
            Reason::EvidenceDeleted => "evidence_deleted",
            Reason::EvidenceCorrected => "evidence_corrected",
        }
    }

    /// The reason with this code.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// Whether an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The current records support it.
    Standing,
    /// It was raised, and the records no longer support it.
    Withdrawn(Reason),
}

impl Status {
    /// `standing` or `withdrawn`, as in `hrss.fraud_alert.status`.
    pub fn code(self) -> &'static str {
        match self {
            Status::Standing => "standing",
            Status::Withdrawn(_) => "withdrawn",
        }
    }
}

/// An alert as last published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRow {
    /// Counts the alert's publications, from 1 (its `ce_sourceversion`).
    pub version: u64,
    /// Standing or withdrawn.
    pub status: Status,
    /// The content (for a withdrawn alert, the content it stood with last).
    pub alert: Alert,
}

/// A change of one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The alert before (`None`: never raised).
    pub before: Option<AlertRow>,
    /// The alert now.
    pub after: AlertRow,
}

impl Outcome {
    /// Whether this raises the alert (new, or standing again after a withdrawal).
    pub fn raises(&self) -> bool {
        self.after.status == Status::Standing
            && self
                .before
                .as_ref()
                .is_none_or(|b| b.status != Status::Standing)
    }

    /// Whether this withdraws a standing alert.
    pub fn withdraws(&self) -> bool {
        self.after.status != Status::Standing
            && self
                .before
                .as_ref()
                .is_some_and(|b| b.status == Status::Standing)
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The change was older than the stored version: ignored.
    pub stale: bool,
    /// Alerts raised, updated or withdrawn, in order.
    pub outcomes: Vec<Outcome>,
}

fn tag(f: Feed) -> u8 {
    match f {
        Feed::Deaths => b'd',
        Feed::Pensions => b'p',
        Feed::Unemployment => b'u',
        Feed::Contributions => b'c',
    }
}

fn feed_of(t: u8) -> Result<Feed, StateError> {
    Feed::ALL
        .into_iter()
        .find(|f| tag(*f) == t)
        .ok_or_else(|| StateError::Corrupt("unknown feed tag".into()))
}

const RECORD_FORMAT: u8 = 1;
const ALERT_FORMAT: u8 = 1;

/// A stored record: its version, and its value unless deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Source version.
    pub version: u64,
    /// The record; `None` for a tombstone.
    pub value: Option<Input>,
}

fn record_key(feed: Feed, key: &str) -> Vec<u8> {
    let mut k = vec![tag(feed)];
    k.extend_from_slice(key.as_bytes());
    k
}

fn encode_record(s: &Stored) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(RECORD_FORMAT).u64(s.version);
    match &s.value {
        None => {
            w.u8(0);
        }
        Some(Input::Death { person, month, .. }) => {
            w.u8(1).str(person).str(month);
        }
        Some(Input::Benefit {
            person,
            month,
            amount,
            ..
        }) => {
            w.u8(1).str(person).str(month).str(amount);
        }
        Some(Input::Contribution {
            person,
            month,
            employer_amount,
            ..
        }) => {
            w.u8(1).str(person).str(month);
            match employer_amount {
                Some(a) => w.u8(1).str(a),
                None => w.u8(0),
            };
        }
    }
    w.0
}

fn decode_record(feed: Feed, key: &str, buf: &[u8]) -> Result<Stored, StateError> {
    let mut r = Reader::new(buf, "fraud record");
    if r.u8()? != RECORD_FORMAT {
        return Err(StateError::Corrupt(
            "fraud record of an unknown format".into(),
        ));
    }
    let version = r.u64()?;
    if r.u8()? == 0 {
        return Ok(Stored {
            version,
            value: None,
        });
    }
    let record = key.to_owned();
    let person = r.str()?.to_owned();
    let month = r.str()?.to_owned();
    let value = match feed {
        Feed::Deaths => Input::Death {
            record,
            person,
            month,
        },
        Feed::Pensions | Feed::Unemployment => Input::Benefit {
            dataset: feed.dataset(),
            record,
            person,
            month,
            amount: r.str()?.to_owned(),
        },
        Feed::Contributions => Input::Contribution {
            record,
            person,
            month,
            employer_amount: match r.u8()? {
                0 => None,
                _ => Some(r.str()?.to_owned()),
            },
        },
    };
    Ok(Stored {
        version,
        value: Some(value),
    })
}

/// The index entry of a live record: deaths by person, the others by
/// person and month. Strings are length-prefixed, so a prefix never
/// matches a longer person or month.
fn index_key(input: &Input) -> Vec<u8> {
    let mut w = Writer::default();
    match input {
        Input::Death { record, person, .. } => w.u8(b'd').str(person).str(record),
        Input::Benefit {
            record,
            person,
            month,
            ..
        } => w
            .u8(b'p')
            .str(person)
            .str(month)
            .u8(tag(input.feed()))
            .str(record),
        Input::Contribution {
            record,
            person,
            month,
            ..
        } => w.u8(b'c').str(person).str(month).str(record),
    };
    w.0
}

fn index_value(input: &Input) -> Vec<u8> {
    match input {
        // The death month, so the rules need not read the record.
        Input::Death { month, .. } => {
            let mut w = Writer::default();
            w.str(month);
            w.0
        }
        _ => Vec::new(),
    }
}

/// Reads and writes the tables in the layout above.
struct Layout<'k, K: Kv> {
    kv: &'k mut K,
}

impl<K: Kv> Layout<'_, K> {
    fn record(&mut self, feed: Feed, key: &str) -> Result<Option<Stored>, StateError> {
        self.kv
            .get(Tbl::Records, &record_key(feed, key))?
            .map(|b| decode_record(feed, key, &b))
            .transpose()
    }

    fn put_record(&mut self, feed: Feed, key: &str, s: &Stored) -> Result<(), StateError> {
        self.kv
            .put(Tbl::Records, &record_key(feed, key), &encode_record(s))
    }

    /// Deaths of `person`: `(month, registration)`, in registration order.
    fn deaths_of(&mut self, person: &str) -> Result<Vec<(String, String)>, StateError> {
        let mut w = Writer::default();
        w.u8(b'd').str(person);
        let prefix = w.0;
        let mut out = Vec::new();
        for (k, v) in self.kv.scan(Tbl::Index, &prefix)? {
            let reg = Reader::new(&k[prefix.len()..], "death index key")
                .str()?
                .to_owned();
            let month = Reader::new(&v, "death index value").str()?.to_owned();
            out.push((month, reg));
        }
        Ok(out)
    }

    /// Payments of `person`, optionally only of one month and feed.
    fn payments_of(
        &mut self,
        person: &str,
        month_feed: Option<(&str, Feed)>,
    ) -> Result<Vec<(Feed, String)>, StateError> {
        let mut w = Writer::default();
        w.u8(b'p').str(person);
        let base = w.0.len();
        if let Some((month, feed)) = month_feed {
            w.str(month).u8(tag(feed));
        }
        let prefix = w.0;
        let mut out = Vec::new();
        for (k, _) in self.kv.scan(Tbl::Index, &prefix)? {
            let mut r = Reader::new(&k[base..], "payment index key");
            let _month = r.str()?;
            let feed = feed_of(r.u8()?)?;
            out.push((feed, r.str()?.to_owned()));
        }
        Ok(out)
    }

    /// Contributions of `person` for `month`, in key order.
    fn contributions_of(&mut self, person: &str, month: &str) -> Result<Vec<String>, StateError> {
        let mut w = Writer::default();
        w.u8(b'c').str(person).str(month);
        let prefix = w.0;
        let mut out = Vec::new();
        for (k, _) in self.kv.scan(Tbl::Index, &prefix)? {
            out.push(
                Reader::new(&k[prefix.len()..], "contribution index key")
                    .str()?
                    .to_owned(),
            );
        }
        Ok(out)
    }

    fn alert(&mut self, id: &str) -> Result<Option<AlertRow>, StateError> {
        self.kv
            .get(Tbl::Alerts, id.as_bytes())?
            .map(|b| decode_alert(id, &b))
            .transpose()
    }

    fn put_alert(&mut self, row: &AlertRow) -> Result<(), StateError> {
        self.kv.put(
            Tbl::Alerts,
            row.alert.alert_id.as_bytes(),
            &encode_alert(row),
        )
    }

    /// The alerts the payment `(feed, key)` should have now.
    fn judge(
        &mut self,
        params: &RuleParams,
        feed: Feed,
        key: &str,
    ) -> Result<[Option<Alert>; 3], StateError> {
        let Some(Input::Benefit {
            record,
            person,
            month,
            amount,
            ..
        }) = self.record(feed, key)?.and_then(|s| s.value)
        else {
            return Ok([None, None, None]);
        };
        let deaths = self.deaths_of(&person)?;
        let (mut pensions, mut contributions) = (Vec::new(), Vec::new());
        if feed == Feed::Unemployment {
            pensions = self.payments_of(&person, Some((&month, Feed::Pensions)))?;
            for c in self.contributions_of(&person, &month)? {
                let amount = match self.record(Feed::Contributions, &c)?.and_then(|s| s.value) {
                    Some(Input::Contribution {
                        employer_amount, ..
                    }) => employer_amount,
                    _ => continue,
                };
                if params.shows_employment(amount.as_deref()) {
                    contributions.push(c);
                }
            }
        }
        let evidence = Evidence {
            death: deaths.iter().map(|(m, r)| (m.as_str(), r.as_str())).min(),
            pension: pensions.iter().map(|(_, r)| r.as_str()).min(),
            contribution: contributions.iter().map(String::as_str).min(),
        };
        let p = Payment {
            feed,
            record: &record,
            person: &person,
            month: &month,
            amount: &amount,
        };
        Ok(judge(&p, &evidence))
    }

    /// Why `row`, standing, no longer does.
    fn reason(&mut self, row: &AlertRow) -> Result<Reason, StateError> {
        let a = &row.alert;
        let payment = Feed::of(&a.benefit_dataset)
            .map(|f| self.record(f, &a.benefit_record))
            .transpose()?
            .flatten()
            .and_then(|s| s.value);
        match payment {
            None => return Ok(Reason::PaymentDeleted),
            Some(p) if p.person() != a.person_ref || p.month() != a.month => {
                return Ok(Reason::PaymentCorrected)
            }
            Some(_) => {}
        }
        let evidence = Feed::of(&a.evidence_dataset)
            .map(|f| self.record(f, &a.evidence_record))
            .transpose()?
            .flatten()
            .and_then(|s| s.value);
        Ok(match evidence {
            None => Reason::EvidenceDeleted,
            Some(_) => Reason::EvidenceCorrected,
        })
    }
}

fn encode_alert(row: &AlertRow) -> Vec<u8> {
    let a = &row.alert;
    let mut w = Writer::default();
    w.u8(ALERT_FORMAT).u64(row.version);
    match row.status {
        Status::Standing => w.u8(0),
        Status::Withdrawn(r) => w.u8(1).str(r.code()),
    };
    w.str(a.rule.code())
        .str(&a.person_ref)
        .str(&a.month)
        .str(&a.benefit_dataset)
        .str(&a.benefit_record)
        .str(&a.amount)
        .str(&a.evidence_dataset)
        .str(&a.evidence_record);
    w.0
}

fn decode_alert(id: &str, buf: &[u8]) -> Result<AlertRow, StateError> {
    let corrupt = |what: &str| StateError::Corrupt(format!("fraud alert: {what}"));
    let mut r = Reader::new(buf, "fraud alert");
    if r.u8()? != ALERT_FORMAT {
        return Err(corrupt("unknown format"));
    }
    let version = r.u64()?;
    let status = match r.u8()? {
        0 => Status::Standing,
        _ => Status::Withdrawn(Reason::from_code(r.str()?).ok_or_else(|| corrupt("reason"))?),
    };
    let rule = Rule::from_code(r.str()?).ok_or_else(|| corrupt("rule"))?;
    let mut s = || r.str().map(str::to_owned);
    Ok(AlertRow {
        version,
        status,
        alert: Alert {
            alert_id: id.to_owned(),
            rule,
            person_ref: s()?,
            month: s()?,
            benefit_dataset: s()?,
            benefit_record: s()?,
            amount: s()?,
            evidence_dataset: s()?,
            evidence_record: s()?,
        },
    })
}

/// The payments whose alerts a record's version can take part in.
fn touched<K: Kv>(
    layout: &mut Layout<'_, K>,
    input: &Input,
    out: &mut BTreeSet<(Feed, String)>,
) -> Result<(), StateError> {
    match input {
        Input::Death { person, .. } => out.extend(layout.payments_of(person, None)?),
        Input::Benefit {
            record,
            person,
            month,
            ..
        } => {
            out.insert((input.feed(), record.clone()));
            if input.feed() == Feed::Pensions {
                out.extend(layout.payments_of(person, Some((month, Feed::Unemployment)))?);
            }
        }
        Input::Contribution { person, month, .. } => {
            out.extend(layout.payments_of(person, Some((month, Feed::Unemployment)))?)
        }
    }
    Ok(())
}

/// Applies one change: replaces the record (unless the stored version is
/// newer), re-judges every payment it touches and reconciles their alerts.
pub fn apply<K: Kv>(
    kv: &mut K,
    params: &RuleParams,
    change: &Change,
) -> Result<Applied, StateError> {
    let mut l = Layout { kv };
    let prev = l.record(change.feed, &change.key)?;
    if prev.as_ref().is_some_and(|p| p.version > change.version) {
        return Ok(Applied {
            stale: true,
            outcomes: Vec::new(),
        });
    }
    // The key is the record's identity; a value naming another id is read
    // as the keyed record (the view's key is authoritative).
    let value = change.value.clone().map(|v| rekey(v, &change.key));
    let old = prev.and_then(|p| p.value);
    if let Some(o) = &old {
        l.kv.delete(Tbl::Index, &index_key(o))?;
    }
    if let Some(n) = &value {
        l.kv.put(Tbl::Index, &index_key(n), &index_value(n))?;
    }
    l.put_record(
        change.feed,
        &change.key,
        &Stored {
            version: change.version,
            value: value.clone(),
        },
    )?;
    let mut payments = BTreeSet::new();
    if change.feed.is_benefit() {
        payments.insert((change.feed, change.key.clone()));
    }
    for v in old.iter().chain(value.iter()) {
        touched(&mut l, v, &mut payments)?;
    }
    let mut outcomes = Vec::new();
    for (feed, key) in payments {
        let desired = l.judge(params, feed, &key)?;
        for (rule, want) in Rule::ALL.into_iter().zip(desired) {
            let id = crate::detect::alert_id(rule, feed.dataset(), &key);
            let before = l.alert(&id)?;
            let after = match (&before, want) {
                (None, None) => continue,
                (Some(b), None) => {
                    if b.status != Status::Standing {
                        continue;
                    }
                    AlertRow {
                        version: b.version + 1,
                        status: Status::Withdrawn(l.reason(b)?),
                        alert: b.alert.clone(),
                    }
                }
                (Some(b), Some(a)) if b.status == Status::Standing && b.alert == a => continue,
                (b, Some(a)) => AlertRow {
                    version: b.as_ref().map_or(1, |b| b.version + 1),
                    status: Status::Standing,
                    alert: a,
                },
            };
            l.put_alert(&after)?;
            outcomes.push(Outcome { before, after });
        }
    }
    Ok(Applied {
        stale: false,
        outcomes,
    })
}

fn rekey(mut v: Input, key: &str) -> Input {
    match &mut v {
        Input::Death { record, .. }
        | Input::Benefit { record, .. }
        | Input::Contribution { record, .. } => {
            if record != key {
                key.clone_into(record);
            }
        }
    }
    v
}

/// Records an alert as published (found in the app's own output at
/// start): a row with a higher version than the stored one replaces it.
/// Returns the replacement, if it was one.
pub fn recover_alert<K: Kv>(kv: &mut K, row: &AlertRow) -> Result<Option<Outcome>, StateError> {
    let mut l = Layout { kv };
    let before = l.alert(&row.alert.alert_id)?;
    if before.as_ref().is_some_and(|s| s.version >= row.version) {
        return Ok(None);
    }
    l.put_alert(row)?;
    Ok(Some(Outcome {
        before,
        after: row.clone(),
    }))
}

/// Every alert in the table, by id (tests and small tools; it reads the whole table).
pub fn alerts<K: Kv>(kv: &mut K) -> Result<BTreeMap<String, AlertRow>, StateError> {
    let mut out = BTreeMap::new();
    for (k, v) in kv.scan(Tbl::Alerts, b"")? {
        let id = String::from_utf8(k).map_err(|_| StateError::Corrupt("alert id".into()))?;
        let row = decode_alert(&id, &v)?;
        out.insert(id, row);
    }
    Ok(out)
}

/// The current records (tests: the oracle's input).
pub fn records<K: Kv>(kv: &mut K) -> Result<Vec<Input>, StateError> {
    let mut out = Vec::new();
    for (k, v) in kv.scan(Tbl::Records, b"")? {
        let Some((&t, key)) = k.split_first() else {
            continue;
        };
        let key = std::str::from_utf8(key).map_err(|_| StateError::Corrupt("record key".into()))?;
        if let Some(v) = decode_record(feed_of(t)?, key, &v)?.value {
            out.push(v);
        }
    }
    Ok(out)
}

/// A [`Kv`] in memory.
#[derive(Debug, Clone, Default)]
pub struct MemKv {
    tables: BTreeMap<Tbl, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Kv for MemKv {
    fn get(&mut self, t: Tbl, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.tables.get(&t).and_then(|m| m.get(key)).cloned())
    }

    fn put(&mut self, t: Tbl, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.tables
            .entry(t)
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, t: Tbl, key: &[u8]) -> Result<(), StateError> {
        if let Some(m) = self.tables.get_mut(&t) {
            m.remove(key);
        }
        Ok(())
    }

    fn scan(&mut self, t: Tbl, prefix: &[u8]) -> Result<Vec<Row>, StateError> {
        Ok(self
            .tables
            .get(&t)
            .into_iter()
            .flat_map(|m| m.range(prefix.to_vec()..))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// The tables of a store write transaction, opened once for a batch.
#[allow(missing_debug_implementations)]
pub struct TxnKv<'t> {
    tables: Vec<govbus_state::TableMut<'t>>,
}

impl<'t> TxnKv<'t> {
    /// Opens the app's tables in `tx`.
    pub fn open(tx: &'t govbus_state::WriteTxn) -> Result<TxnKv<'t>, StateError> {
        let tables = Tbl::ALL
            .into_iter()
            .map(|t| tx.table(t.name()))
            .collect::<Result<_, _>>()?;
        Ok(TxnKv { tables })
    }

    fn t(&mut self, t: Tbl) -> &mut govbus_state::TableMut<'t> {
        let i = Tbl::ALL.iter().position(|x| *x == t).unwrap_or(0);
        &mut self.tables[i]
    }
}

impl Kv for TxnKv<'_> {
    fn get(&mut self, t: Tbl, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.t(t).get(key)
    }

    fn put(&mut self, t: Tbl, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.t(t).put(key, value)
    }

    fn delete(&mut self, t: Tbl, key: &[u8]) -> Result<(), StateError> {
        self.t(t).delete(key).map(|_| ())
    }

    fn scan(&mut self, t: Tbl, prefix: &[u8]) -> Result<Vec<Row>, StateError> {
        self.t(t).scan_prefix(prefix, usize::MAX)
    }
}

/// The rules with their state in memory: what tests, the demo's generator
/// and one-off analyses use. The app runs the same [`apply`] on the store.
#[derive(Debug, Clone, Default)]
pub struct Detector {
    kv: MemKv,
    params: RuleParams,
}

impl Detector {
    /// A detector with these rule parameters.
    pub fn new(params: RuleParams) -> Detector {
        Detector {
            kv: MemKv::default(),
            params,
        }
    }

    /// Applies one change; the alerts it raised, updated or withdrew.
    pub fn apply(&mut self, change: &Change) -> Vec<Outcome> {
        // A map never fails and only holds what this code wrote.
        apply(&mut self.kv, &self.params, change)
            .map(|a| a.outcomes)
            .unwrap_or_default()
    }

    /// Takes in one record as a create at version 0 (a later arrival of
    /// the same key replaces it); returns the alerts it raised.
    pub fn observe(&mut self, input: Input) -> Vec<Alert> {
        let change = Change {
            feed: input.feed(),
            key: input.record().to_owned(),
            version: 0,
            value: Some(input),
        };
        self.apply(&change)
            .into_iter()
            .filter(Outcome::raises)
            .map(|o| o.after.alert)
            .collect()
    }

    /// Every alert raised so far, standing or withdrawn, by id.
    pub fn alerts(&mut self) -> BTreeMap<String, AlertRow> {
        alerts(&mut self.kv).unwrap_or_default()
    }

    /// The alerts standing now, by id.
    pub fn standing(&mut self) -> BTreeMap<String, Alert> {
        self.alerts()
            .into_iter()
            .filter(|(_, r)| r.status == Status::Standing)
            .map(|(id, r)| (id, r.alert))
            .collect()
    }

    /// The current records.
    pub fn records(&mut self) -> Vec<Input> {
        records(&mut self.kv).unwrap_or_default()
    }

    /// How many alerts stand.
    pub fn raised(&mut self) -> usize {
        self.standing().len()
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
