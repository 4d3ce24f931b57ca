//! The matching rules, free of Kafka: records go in, alerts come out.
//!
//! Every record is matched against what arrived before it, in whichever
//! order the four feeds deliver: a death that arrives after the payments it
//! contradicts raises the same alerts as one that arrives first. An alert is
//! named by its rule and the benefit payment it concerns, so one payment
//! raises at most one alert per rule, whatever the number of matching
//! records and however often the input is replayed.

use std::collections::{BTreeMap, BTreeSet};

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

impl Input {
    /// Reads a delivered record (the JSON a Kafka view carries) of `dataset`.
    pub fn from_json(
        dataset: &str,
        value: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Input, InputError> {
        fn text(
            v: &serde_json::Map<String, serde_json::Value>,
            dataset: &'static str,
            field: &'static str,
        ) -> Result<String, InputError> {
            match v.get(field) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                _ => Err(InputError::Field { dataset, field }),
            }
        }
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
            },
            other => return Err(InputError::UnknownDataset(other.to_owned())),
        })
    }
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
    /// The payment's amount.
    pub amount: String,
    /// The contradicting record's dataset.
    pub evidence_dataset: String,
    /// The contradicting record's key.
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Payment {
    dataset: String,
    record: String,
    month: String,
    amount: String,
}

/// Everything the rules remember; serialisable, so that a restart resumes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detector {
    /// person → (death month, registration).
    deaths: BTreeMap<String, (String, String)>,
    /// person → payments (pension and unemployment).
    payments: BTreeMap<String, Vec<Payment>>,
    /// person → month → first contribution id.
    contributions: BTreeMap<String, BTreeMap<String, String>>,
    /// Alerts already raised.
    raised: BTreeSet<String>,
}

impl Detector {
    /// Takes in one record; returns the alerts it raises that were not raised before.
    pub fn observe(&mut self, input: Input) -> Vec<Alert> {
        let mut found = Vec::new();
        match input {
            Input::Death {
                record,
                person,
                month,
            } => {
                for p in self.payments.get(&person).into_iter().flatten() {
                    if p.month > month {
                        found.push(alert(Rule::PaidAfterDeath, &person, p, DEATHS, &record));
                    }
                }
                let entry = self
                    .deaths
                    .entry(person)
                    .or_insert_with(|| (month.clone(), record.clone()));
                if month < entry.0 {
                    *entry = (month, record);
                }
            }
            Input::Benefit {
                dataset,
                record,
                person,
                month,
                amount,
            } => {
                let p = Payment {
                    dataset: dataset.to_owned(),
                    record,
                    month,
                    amount,
                };
                if let Some((death_month, registration)) = self.deaths.get(&person) {
                    if p.month > *death_month {
                        found.push(alert(
                            Rule::PaidAfterDeath,
                            &person,
                            &p,
                            DEATHS,
                            registration,
                        ));
                    }
                }
                let others = self.payments.get(&person).into_iter().flatten();
                for other in others.filter(|o| o.month == p.month && o.dataset != p.dataset) {
                    // The unemployment payment is the one in question.
                    let (benefit, evidence) = if p.dataset == UNEMPLOYMENT {
                        (&p, other)
                    } else {
                        (other, &p)
                    };
                    found.push(alert(
                        Rule::UnemploymentWithPension,
                        &person,
                        benefit,
                        PENSIONS,
                        &evidence.record,
                    ));
                }
                if p.dataset == UNEMPLOYMENT {
                    if let Some(c) = self
                        .contributions
                        .get(&person)
                        .and_then(|m| m.get(&p.month))
                    {
                        found.push(alert(
                            Rule::UnemploymentWhileEmployed,
                            &person,
                            &p,
                            CONTRIBUTIONS,
                            c,
                        ));
                    }
                }
                let list = self.payments.entry(person).or_default();
                if !list
                    .iter()
                    .any(|o| o.dataset == p.dataset && o.record == p.record)
                {
                    list.push(p);
                }
            }
            Input::Contribution {
                record,
                person,
                month,
            } => {
                for p in self.payments.get(&person).into_iter().flatten() {
                    if p.dataset == UNEMPLOYMENT && p.month == month {
                        found.push(alert(
                            Rule::UnemploymentWhileEmployed,
                            &person,
                            p,
                            CONTRIBUTIONS,
                            &record,
                        ));
                    }
                }
                self.contributions
                    .entry(person)
                    .or_default()
                    .entry(month)
                    .or_insert(record);
            }
        }
        found.retain(|a| self.raised.insert(a.alert_id.clone()));
        found
    }

    /// Marks an alert as raised (it was found in the output after a restart).
    pub fn already_raised(&mut self, alert_id: &str) {
        self.raised.insert(alert_id.to_owned());
    }

    /// How many alerts have been raised.
    pub fn raised(&self) -> usize {
        self.raised.len()
    }
}

fn alert(rule: Rule, person: &str, p: &Payment, evidence_dataset: &str, evidence: &str) -> Alert {
    Alert {
        alert_id: alert_id(rule, &p.dataset, &p.record),
        rule,
        person_ref: person.to_owned(),
        month: p.month.clone(),
        benefit_dataset: p.dataset.clone(),
        benefit_record: p.record.clone(),
        amount: p.amount.clone(),
        evidence_dataset: evidence_dataset.to_owned(),
        evidence_record: evidence.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn death(person: &str, month: &str) -> Input {
        Input::Death {
            record: format!("DR-{person}"),
            person: person.into(),
            month: month.into(),
        }
    }
    fn benefit(dataset: &'static str, id: &str, person: &str, month: &str) -> Input {
        Input::Benefit {
            dataset,
            record: id.into(),
            person: person.into(),
            month: month.into(),
            amount: "100.00".into(),
        }
    }
    fn contribution(id: &str, person: &str, month: &str) -> Input {
        Input::Contribution {
            record: id.into(),
            person: person.into(),
            month: month.into(),
        }
    }
    fn rules(alerts: &[Alert]) -> Vec<Rule> {
        alerts.iter().map(|a| a.rule).collect()
    }

    #[test]
    fn a_payment_after_death_is_flagged_in_either_order() {
        let mut d = Detector::default();
        assert!(d.observe(death("p1", "2026-03")).is_empty());
        assert!(
            d.observe(benefit(PENSIONS, "P-1", "p1", "2026-03"))
                .is_empty(),
            "same month is fine"
        );
        let a = d.observe(benefit(PENSIONS, "P-2", "p1", "2026-04"));
        assert_eq!(rules(&a), [Rule::PaidAfterDeath]);
        assert_eq!(a[0].evidence_record, "DR-p1");

        let mut late = Detector::default();
        assert!(late
            .observe(benefit(UNEMPLOYMENT, "U-2", "p1", "2026-04"))
            .is_empty());
        let b = late.observe(death("p1", "2026-03"));
        assert_eq!(rules(&b), [Rule::PaidAfterDeath]);
        assert_eq!(b[0].benefit_record, "U-2");
    }

    #[test]
    fn unemployment_with_a_pension_in_the_same_month_is_flagged_once() {
        let mut d = Detector::default();
        assert!(d
            .observe(benefit(UNEMPLOYMENT, "U-1", "p2", "2026-05"))
            .is_empty());
        assert!(d
            .observe(benefit(PENSIONS, "P-9", "p2", "2026-06"))
            .is_empty());
        let a = d.observe(benefit(PENSIONS, "P-1", "p2", "2026-05"));
        assert_eq!(rules(&a), [Rule::UnemploymentWithPension]);
        assert_eq!(
            (a[0].benefit_record.as_str(), a[0].evidence_record.as_str()),
            ("U-1", "P-1")
        );
        // A second pension that month does not raise the same alert again.
        assert!(d
            .observe(benefit(PENSIONS, "P-2", "p2", "2026-05"))
            .is_empty());
        // Replaying the unemployment payment neither.
        assert!(d
            .observe(benefit(UNEMPLOYMENT, "U-1", "p2", "2026-05"))
            .is_empty());
        assert_eq!(d.raised(), 1);
    }

    #[test]
    fn unemployment_while_an_employer_paid_contributions_is_flagged() {
        let mut d = Detector::default();
        assert!(d.observe(contribution("C-1", "p3", "2026-02")).is_empty());
        assert!(d
            .observe(benefit(UNEMPLOYMENT, "U-7", "p3", "2026-03"))
            .is_empty());
        let a = d.observe(benefit(UNEMPLOYMENT, "U-8", "p3", "2026-02"));
        assert_eq!(rules(&a), [Rule::UnemploymentWhileEmployed]);
        let b = d.observe(contribution("C-2", "p3", "2026-03"));
        assert_eq!(rules(&b), [Rule::UnemploymentWhileEmployed]);
        assert_eq!(b[0].benefit_record, "U-7");
        assert!(d.observe(contribution("C-3", "p3", "2026-03")).is_empty());
    }

    #[test]
    fn other_people_and_other_months_raise_nothing() {
        let mut d = Detector::default();
        d.observe(death("a", "2026-01"));
        d.observe(contribution("C", "b", "2026-05"));
        d.observe(benefit(PENSIONS, "P", "c", "2026-05"));
        assert!(d
            .observe(benefit(UNEMPLOYMENT, "U", "d", "2026-05"))
            .is_empty());
        assert!(d
            .observe(benefit(PENSIONS, "P2", "b", "2026-05"))
            .is_empty());
    }

    #[test]
    fn ids_are_stable_and_state_round_trips() {
        let mut d = Detector::default();
        d.observe(death("p1", "2026-03"));
        let a = d.observe(benefit(PENSIONS, "P-2", "p1", "2026-04"));
        assert_eq!(
            a[0].alert_id,
            alert_id(Rule::PaidAfterDeath, PENSIONS, "P-2")
        );
        assert!(a[0].alert_id.starts_with("fa-") && a[0].alert_id.len() == 27);
        let saved = serde_json::to_string(&d).unwrap();
        let mut back: Detector = serde_json::from_str(&saved).unwrap();
        assert_eq!(back, d);
        assert!(back
            .observe(benefit(PENSIONS, "P-2", "p1", "2026-04"))
            .is_empty());
    }

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
    }
}
