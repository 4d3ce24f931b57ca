//! The matching rules, free of Kafka and of storage: what the feeds say,
//! what an alert is, and the rules as pure functions of the current records.
//!
//! An alert is named by its rule and the benefit payment it concerns, so one
//! payment has at most one alert per rule. Whether it *stands* depends only
//! on the current version of every record (see [`oracle`], the batch form of
//! the rules, and `state::apply`, the incremental form the app runs): the
//! order in which creates, corrections and deletions arrive does not matter.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The death registrations feed.
pub const DEATHS: &str = "civil_affairs.death_registration";
/// The pension payments feed.
pub const PENSIONS: &str = "hrss.pension_payment";
/// The unemployment benefit payments feed.
pub const UNEMPLOYMENT: &str = "hrss.unemployment_benefit_payment";
/// The social insurance contributions feed.
pub const CONTRIBUTIONS: &str = "hrss.social_insurance_contribution";
/// The dataset the alerts are published as.
pub const ALERTS: &str = "hrss.fraud_alert";

/// What the app flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// A pension or unemployment benefit for a month after the recipient's death.
    PaidAfterDeath,
    /// Unemployment benefit in a month in which the person also received a pension.
    UnemploymentWithPension,
    /// Unemployment benefit in a month for which an employer paid social insurance for the person.
    UnemploymentWhileEmployed,
}

impl Rule {
    /// Every rule, in report order.
    pub const ALL: [Rule; 3] = [
        Rule::PaidAfterDeath,
        Rule::UnemploymentWithPension,
        Rule::UnemploymentWhileEmployed,
    ];

    /// The code used in `hrss.fraud_alert.rule` and metric labels.
    pub fn code(self) -> &'static str {
        match self {
            Rule::PaidAfterDeath => "paid_after_death",
            Rule::UnemploymentWithPension => "unemployment_with_pension",
            Rule::UnemploymentWhileEmployed => "unemployment_while_employed",
        }
    }

    /// The rule with this code.
    pub fn from_code(code: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// One of the four feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feed {
    /// [`DEATHS`].
    Deaths,
    /// [`PENSIONS`].
    Pensions,
    /// [`UNEMPLOYMENT`].
    Unemployment,
    /// [`CONTRIBUTIONS`].
    Contributions,
}

impl Feed {
    /// Every feed.
    pub const ALL: [Feed; 4] = [
        Feed::Deaths,
        Feed::Pensions,
        Feed::Unemployment,
        Feed::Contributions,
    ];

    /// The dataset name.
    pub fn dataset(self) -> &'static str {
        match self {
            Feed::Deaths => DEATHS,
            Feed::Pensions => PENSIONS,
            Feed::Unemployment => UNEMPLOYMENT,
            Feed::Contributions => CONTRIBUTIONS,
        }
    }

    /// The feed of a dataset name.
    pub fn of(dataset: &str) -> Option<Feed> {
        Feed::ALL.into_iter().find(|f| f.dataset() == dataset)
    }

    /// Whether its records are benefit payments (the records alerts are about).
    pub fn is_benefit(self) -> bool {
        matches!(self, Feed::Pensions | Feed::Unemployment)
    }
}

/// One record of a feed, reduced to what the rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A death registration.
    Death {
        /// Registration number.
        record: String,
        /// The person (a pseudonym).
        person: String,
        /// `YYYY-MM` of the death date.
        month: String,
    },
    /// A pension or unemployment benefit payment.
    Benefit {
        /// [`PENSIONS`] or [`UNEMPLOYMENT`].
        dataset: &'static str,
        /// Payment id.
        record: String,
        /// The person (a pseudonym).
        person: String,
        /// `YYYY-MM` the payment is for.
        month: String,
        /// Amount, as published (a decimal string).
        amount: String,
    },
    /// A social insurance contribution.
    Contribution {
        /// Contribution id.
        record: String,
        /// The person (a pseudonym).
        person: String,
        /// `YYYY-MM` it was paid for.
        month: String,
        /// The employer's share, when the grant includes `employer_amount`.
        employer_amount: Option<String>,
    },
}

/// Why a feed record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// Not one of the four feeds.
    #[error("not a feed of this app: {0}")]
    UnknownDataset(String),
    /// A field the rules need is missing or not a string (the grant must include it).
    #[error(
        "{dataset}: field {field} is missing or not text (is it in the subscription's fields?)"
    )]
    Field {
        /// The feed.
        dataset: &'static str,
        /// The field.
        field: &'static str,
    },
}

type Object = serde_json::Map<String, serde_json::Value>;

fn text(v: &Object, dataset: &'static str, field: &'static str) -> Result<String, InputError> {
    match v.get(field) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
        _ => Err(InputError::Field { dataset, field }),
    }
}

impl Input {
    /// Reads a delivered record (the JSON a Kafka view carries) of `dataset`.
    pub fn from_json(dataset: &str, value: &Object) -> Result<Input, InputError> {
        fn month_of(date: String) -> String {
            date.chars().take(7).collect()
        }
        Ok(match dataset {
            DEATHS => Input::Death {
                record: text(value, DEATHS, "registration_no")?,
                person: text(value, DEATHS, "deceased_id_number")?,
                month: month_of(text(value, DEATHS, "death_date")?),
            },
            PENSIONS => Input::Benefit {
                dataset: PENSIONS,
                record: text(value, PENSIONS, "payment_id")?,
                person: text(value, PENSIONS, "recipient_id_number")?,
                month: text(value, PENSIONS, "pay_month")?,
                amount: text(value, PENSIONS, "amount")?,
            },
            UNEMPLOYMENT => Input::Benefit {
                dataset: UNEMPLOYMENT,
                record: text(value, UNEMPLOYMENT, "payment_id")?,
                person: text(value, UNEMPLOYMENT, "recipient_id_number")?,
                month: text(value, UNEMPLOYMENT, "benefit_month")?,
                amount: text(value, UNEMPLOYMENT, "amount")?,
            },
            CONTRIBUTIONS => Input::Contribution {
                record: text(value, CONTRIBUTIONS, "contribution_id")?,
                person: text(value, CONTRIBUTIONS, "insured_id_number")?,
                month: text(value, CONTRIBUTIONS, "contribution_month")?,
                employer_amount: text(value, CONTRIBUTIONS, "employer_amount").ok(),
            },
            other => return Err(InputError::UnknownDataset(other.to_owned())),
        })
    }

    /// The feed it came from.
    pub fn feed(&self) -> Feed {
        match self {
            Input::Death { .. } => Feed::Deaths,
            Input::Benefit { dataset, .. } if *dataset == PENSIONS => Feed::Pensions,
            Input::Benefit { .. } => Feed::Unemployment,
            Input::Contribution { .. } => Feed::Contributions,
        }
    }

    /// The record's key in its feed.
    pub fn record(&self) -> &str {
        match self {
            Input::Death { record, .. }
            | Input::Benefit { record, .. }
            | Input::Contribution { record, .. } => record,
        }
    }

    /// The person it is about.
    pub fn person(&self) -> &str {
        match self {
            Input::Death { person, .. }
            | Input::Benefit { person, .. }
            | Input::Contribution { person, .. } => person,
        }
    }

    /// Its month (`YYYY-MM`).
    pub fn month(&self) -> &str {
        match self {
            Input::Death { month, .. }
            | Input::Benefit { month, .. }
            | Input::Contribution { month, .. } => month,
        }
    }
}

/// A change to one record of a feed: a create or update (`value`) or a
/// delete (`None`), at a source version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The feed.
    pub feed: Feed,
    /// The record's key (the Kafka key of the view: the record id).
    pub key: String,
    /// The source version (`ce_sourceversion`): an older one never
    /// overwrites a newer one; an equal one does (arrival order decides).
    pub version: u64,
    /// The record after the change; `None` for a delete.
    pub value: Option<Input>,
}

/// Rule parameters that are a department's decision, not the app's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleParams {
    /// Whether a contribution shows employment only when its employer share
    /// (`employer_amount`) is above zero. Default `false`: every
    /// contribution counts. A contribution whose amount is not in the grant
    /// (the sample grant `hrss_fraud_contributions` leaves it out) counts
    /// either way: to use this parameter, add `employer_amount` to the grant.
    #[serde(default)]
    pub employed_needs_employer_amount: bool,
}

impl RuleParams {
    /// Whether a contribution shows that the person was employed that month.
    pub fn shows_employment(&self, employer_amount: Option<&str>) -> bool {
        match employer_amount {
            Some(a) if self.employed_needs_employer_amount => is_positive(a),
            _ => true,
        }
    }
}

/// Whether a decimal string is above zero.
fn is_positive(amount: &str) -> bool {
    let a = amount.trim();
    !a.starts_with('-') && a.bytes().any(|b| (b'1'..=b'9').contains(&b))
}

/// A match, as published in `hrss.fraud_alert`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// `fa-` + 24 hex digits of SHA-256(rule, benefit dataset, benefit record).
    pub alert_id: String,
    /// The rule.
    pub rule: Rule,
    /// The person (the subscriber's pseudonym).
    pub person_ref: String,
    /// The benefit month.
    pub month: String,
    /// The payment's dataset.
    pub benefit_dataset: String,
    /// The payment's key.
    pub benefit_record: String,
    /// The payment's amount, with at least two decimal places (as published).
    pub amount: String,
    /// The contradicting record's dataset.
    pub evidence_dataset: String,
    /// The contradicting record's key: of several, the first (earliest
    /// death month, then smallest key), so the choice does not depend on
    /// arrival order.
    pub evidence_record: String,
}

/// The id of the alert `rule` raises for a payment.
pub fn alert_id(rule: Rule, benefit_dataset: &str, benefit_record: &str) -> String {
    let mut h = Sha256::new();
    for part in [rule.code(), benefit_dataset, benefit_record] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("fa-{hex}")
}

/// A benefit payment, as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Payment<'a> {
    /// Pensions or unemployment.
    pub feed: Feed,
    /// Payment id.
    pub record: &'a str,
    /// The person.
    pub person: &'a str,
    /// `YYYY-MM`.
    pub month: &'a str,
    /// Amount.
    pub amount: &'a str,
}

/// The other records of the payment's person that the rules read, already
/// chosen by the caller: `death` is the person's earliest death as
/// `(month, registration)`; `pension` and `contribution` the smallest key of
/// a pension and of a contribution showing employment in the payment's month.
#[derive(Debug, Clone, Copy, Default)]
pub struct Evidence<'a> {
    /// The earliest death registration of the person.
    pub death: Option<(&'a str, &'a str)>,
    /// The first pension in the payment's month.
    pub pension: Option<&'a str>,
    /// The first contribution showing employment in the payment's month.
    pub contribution: Option<&'a str>,
}

/// The alerts a payment should have, one slot per rule in [`Rule::ALL`] order.
pub fn judge(p: &Payment<'_>, e: &Evidence<'_>) -> [Option<Alert>; 3] {
    let alert = |rule: Rule, evidence: Feed, record: &str| Alert {
        alert_id: alert_id(rule, p.feed.dataset(), p.record),
        rule,
        person_ref: p.person.to_owned(),
        month: p.month.to_owned(),
        benefit_dataset: p.feed.dataset().to_owned(),
        benefit_record: p.record.to_owned(),
        amount: two_places(p.amount),
        evidence_dataset: evidence.dataset().to_owned(),
        evidence_record: record.to_owned(),
    };
    let unemployment = p.feed == Feed::Unemployment;
    [
        e.death
            .filter(|(month, _)| p.month > *month)
            .map(|(_, reg)| alert(Rule::PaidAfterDeath, Feed::Deaths, reg)),
        e.pension
            .filter(|_| unemployment)
            .map(|r| alert(Rule::UnemploymentWithPension, Feed::Pensions, r)),
        e.contribution
            .filter(|_| unemployment)
            .map(|r| alert(Rule::UnemploymentWhileEmployed, Feed::Contributions, r)),
    ]
}

/// A decimal string with at least two places (payments are whole cents; the
/// feeds may carry trailing zeros, `1234.5000`).
pub fn two_places(amount: &str) -> String {
    match amount.split_once('.') {
        Some((whole, frac)) => {
            let frac = frac.trim_end_matches('0');
            let frac = if frac.len() < 2 {
                format!("{frac:0<2}")
            } else {
                frac.to_owned()
            };
            format!("{whole}.{frac}")
        }
        None => format!("{amount}.00"),
    }
}

/// The rules applied to a whole set of current records at once: every
/// alert that stands, by id. The app computes the same incrementally; this
/// is the reference it is tested against (and what a batch re-run gives).
pub fn oracle(records: &[Input], params: &RuleParams) -> BTreeMap<String, Alert> {
    let mut out = BTreeMap::new();
    for r in records {
        let Input::Benefit {
            record,
            person,
            month,
            amount,
            ..
        } = r
        else {
            continue;
        };
        let p = Payment {
            feed: r.feed(),
            record,
            person,
            month,
            amount,
        };
        let mut e = Evidence::default();
        for o in records.iter().filter(|o| o.person() == person.as_str()) {
            let key = o.record();
            match o {
                Input::Death { month, .. } => {
                    let this = (month.as_str(), key);
                    e.death = Some(e.death.map_or(this, |d| d.min(this)));
                }
                Input::Benefit {
                    dataset, month: m, ..
                } if *dataset == PENSIONS && m == month => {
                    e.pension = Some(e.pension.map_or(key, |x| x.min(key)));
                }
                Input::Contribution {
                    month: m,
                    employer_amount,
                    ..
                } if m == month && params.shows_employment(employer_amount.as_deref()) => {
                    e.contribution = Some(e.contribution.map_or(key, |x| x.min(key)));
                }
                _ => {}
            }
        }
        for a in judge(&p, &e).into_iter().flatten() {
            out.insert(a.alert_id.clone(), a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn feed_records_are_read_with_clear_errors() {
        let v = serde_json::json!({"registration_no": "DR-1", "deceased_id_number": "ps_x", "death_date": "2026-03-05"});
        assert_eq!(
            Input::from_json(DEATHS, v.as_object().unwrap()).unwrap(),
            Input::Death {
                record: "DR-1".into(),
                person: "ps_x".into(),
                month: "2026-03".into()
            }
        );
        let missing = serde_json::json!({"payment_id": "P"});
        let e = Input::from_json(PENSIONS, missing.as_object().unwrap()).unwrap_err();
        assert!(e.to_string().contains("recipient_id_number"), "{e}");
        assert!(Input::from_json("x.y", missing.as_object().unwrap()).is_err());
        let c = serde_json::json!({"contribution_id": "C", "insured_id_number": "p", "contribution_month": "2026-01", "employer_amount": "0.00"});
        match Input::from_json(CONTRIBUTIONS, c.as_object().unwrap()).unwrap() {
            Input::Contribution {
                employer_amount, ..
            } => assert_eq!(employer_amount.as_deref(), Some("0.00")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_employer_amount_parameter_decides_what_shows_employment() {
        let default = RuleParams::default();
        let strict = RuleParams {
            employed_needs_employer_amount: true,
        };
        for (amount, by_default, strictly) in [
            (None, true, true),
            (Some("0.00"), true, false),
            (Some("0"), true, false),
            (Some("-5.00"), true, false),
            (Some("0.01"), true, true),
            (Some("1200.00"), true, true),
        ] {
            assert_eq!(default.shows_employment(amount), by_default, "{amount:?}");
            assert_eq!(strict.shows_employment(amount), strictly, "{amount:?}");
        }
    }

    #[test]
    fn amounts_keep_two_places() {
        assert_eq!(two_places("1234.5000"), "1234.50");
        assert_eq!(two_places("1234.0000"), "1234.00");
        assert_eq!(two_places("7"), "7.00");
        assert_eq!(two_places("0.125"), "0.125");
    }

    #[test]
    fn ids_are_stable() {
        let a = alert_id(Rule::PaidAfterDeath, PENSIONS, "P-2");
        assert!(a.starts_with("fa-") && a.len() == 27);
        assert_eq!(a, alert_id(Rule::PaidAfterDeath, PENSIONS, "P-2"));
        assert_ne!(a, alert_id(Rule::PaidAfterDeath, UNEMPLOYMENT, "P-2"));
    }
}
