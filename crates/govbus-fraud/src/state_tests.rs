#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::detect::{alert_id, oracle, CONTRIBUTIONS, DEATHS, PENSIONS, UNEMPLOYMENT};

fn death(reg: &str, person: &str, month: &str) -> Input {
    Input::Death {
        record: reg.into(),
        person: person.into(),
        month: month.into(),
    }
}
fn pay(dataset: &'static str, id: &str, person: &str, month: &str) -> Input {
    Input::Benefit {
        dataset,
        record: id.into(),
        person: person.into(),
        month: month.into(),
        amount: "100.00".into(),
    }
}
fn contrib(id: &str, person: &str, month: &str, employer: Option<&str>) -> Input {
    Input::Contribution {
        record: id.into(),
        person: person.into(),
        month: month.into(),
        employer_amount: employer.map(str::to_owned),
    }
}
fn set(v: u64, input: Input) -> Change {
    Change {
        feed: input.feed(),
        key: input.record().to_owned(),
        version: v,
        value: Some(input),
    }
}
fn del(v: u64, feed: Feed, key: &str) -> Change {
    Change {
        feed,
        key: key.into(),
        version: v,
        value: None,
    }
}

/// One step: the change and what it should do to the alerts, as
/// `(rule, payment, "raise" | "update" | "withdraw:<reason>")`.
type Step<'a> = (Change, &'a [(Rule, &'a str, &'a str)]);

fn check(steps: Vec<Step<'_>>) {
    let mut d = Detector::default();
    for (i, (change, want)) in steps.into_iter().enumerate() {
        let got: BTreeSet<(Rule, String, String)> = d
            .apply(&change)
            .into_iter()
            .map(|o| {
                let what = if o.raises() {
                    "raise".to_owned()
                } else if let (true, Status::Withdrawn(r)) = (o.withdraws(), o.after.status) {
                    format!("withdraw:{}", r.code())
                } else {
                    "update".to_owned()
                };
                (o.after.alert.rule, o.after.alert.benefit_record, what)
            })
            .collect();
        let want: BTreeSet<(Rule, String, String)> = want
            .iter()
            .map(|(r, p, w)| (*r, (*p).to_owned(), (*w).to_owned()))
            .collect();
        assert_eq!(got, want, "step {i}: {change:?}");
        let records = d.records();
        assert_eq!(
            d.standing(),
            oracle(&records, &RuleParams::default()),
            "step {i}: standing alerts vs the oracle"
        );
    }
}

use Rule::*;

#[test]
fn a_payment_after_death_is_flagged_in_either_order_and_not_in_the_death_month() {
    check(vec![
        (set(1, death("D1", "a", "2026-03")), &[]),
        (set(1, pay(PENSIONS, "P1", "a", "2026-03")), &[]),
        (
            set(1, pay(PENSIONS, "P2", "a", "2026-04")),
            &[(PaidAfterDeath, "P2", "raise")],
        ),
        (set(1, pay(UNEMPLOYMENT, "U1", "b", "2026-05")), &[]),
        (
            set(1, death("D2", "b", "2026-04")),
            &[(PaidAfterDeath, "U1", "raise")],
        ),
        // Replaying a record changes nothing.
        (set(1, death("D2", "b", "2026-04")), &[]),
    ]);
}

#[test]
fn a_deleted_death_withdraws_its_alerts_and_raises_no_new_ones() {
    check(vec![
        (set(1, pay(PENSIONS, "P1", "a", "2026-05")), &[]),
        (
            set(1, death("D1", "a", "2026-03")),
            &[(PaidAfterDeath, "P1", "raise")],
        ),
        (
            del(2, Feed::Deaths, "D1"),
            &[(PaidAfterDeath, "P1", "withdraw:evidence_deleted")],
        ),
        (set(1, pay(PENSIONS, "P2", "a", "2026-06")), &[]),
        // The delete's tombstone keeps a late, older version out.
        (set(1, death("D1", "a", "2026-03")), &[]),
    ]);
}

#[test]
fn a_death_corrected_to_a_later_month_withdraws_what_it_no_longer_contradicts() {
    check(vec![
        (set(1, pay(PENSIONS, "P3", "a", "2026-03")), &[]),
        (set(1, pay(PENSIONS, "P5", "a", "2026-05")), &[]),
        (set(1, pay(PENSIONS, "P6", "a", "2026-06")), &[]),
        (
            set(1, death("D1", "a", "2026-02")),
            &[
                (PaidAfterDeath, "P3", "raise"),
                (PaidAfterDeath, "P5", "raise"),
                (PaidAfterDeath, "P6", "raise"),
            ],
        ),
        (
            set(2, death("D1", "a", "2026-05")),
            &[
                (PaidAfterDeath, "P3", "withdraw:evidence_corrected"),
                (PaidAfterDeath, "P5", "withdraw:evidence_corrected"),
            ],
        ),
        // Back to an earlier month: raised again.
        (
            set(3, death("D1", "a", "2026-04")),
            &[(PaidAfterDeath, "P5", "raise")],
        ),
    ]);
}

#[test]
fn a_corrected_payment_month_is_matched_as_corrected() {
    check(vec![
        (set(1, pay(PENSIONS, "P1", "a", "2026-02")), &[]),
        (set(2, pay(PENSIONS, "P1", "a", "2026-05")), &[]),
        (
            set(1, death("D1", "a", "2026-03")),
            &[(PaidAfterDeath, "P1", "raise")],
        ),
        (
            set(3, pay(PENSIONS, "P1", "a", "2026-03")),
            &[(PaidAfterDeath, "P1", "withdraw:payment_corrected")],
        ),
    ]);
}

#[test]
fn a_contribution_moved_to_another_month_leaves_the_first() {
    check(vec![
        (set(1, pay(UNEMPLOYMENT, "U2", "a", "2026-02")), &[]),
        (set(1, pay(UNEMPLOYMENT, "U3", "a", "2026-03")), &[]),
        (
            set(1, contrib("C1", "a", "2026-02", None)),
            &[(UnemploymentWhileEmployed, "U2", "raise")],
        ),
        (
            set(2, contrib("C1", "a", "2026-03", None)),
            &[
                (
                    UnemploymentWhileEmployed,
                    "U2",
                    "withdraw:evidence_corrected",
                ),
                (UnemploymentWhileEmployed, "U3", "raise"),
            ],
        ),
        (
            del(3, Feed::Contributions, "C1"),
            &[(UnemploymentWhileEmployed, "U3", "withdraw:evidence_deleted")],
        ),
    ]);
}

#[test]
fn a_pension_reassigned_to_another_person_never_names_the_dead_one() {
    check(vec![
        (set(1, pay(PENSIONS, "P1", "A", "2026-05")), &[]),
        (set(2, pay(PENSIONS, "P1", "B", "2026-05")), &[]),
        (set(1, death("DA", "A", "2026-01")), &[]),
    ]);
    // The other order: the alert on A is withdrawn when the pension moves to B.
    check(vec![
        (set(1, death("DA", "A", "2026-01")), &[]),
        (
            set(1, pay(PENSIONS, "P1", "A", "2026-05")),
            &[(PaidAfterDeath, "P1", "raise")],
        ),
        (
            set(2, pay(PENSIONS, "P1", "B", "2026-05")),
            &[(PaidAfterDeath, "P1", "withdraw:payment_corrected")],
        ),
        // B dies later: raised again, now naming B and B's death.
        (
            set(1, death("DB", "B", "2026-02")),
            &[(PaidAfterDeath, "P1", "raise")],
        ),
    ]);
    let mut d = Detector::default();
    for c in [
        set(1, death("DA", "A", "2026-01")),
        set(1, pay(PENSIONS, "P1", "A", "2026-05")),
        set(2, pay(PENSIONS, "P1", "B", "2026-05")),
        set(1, death("DB", "B", "2026-02")),
    ] {
        d.apply(&c);
    }
    let a = &d.standing()[&alert_id(PaidAfterDeath, PENSIONS, "P1")];
    assert_eq!(
        (a.person_ref.as_str(), a.evidence_record.as_str()),
        ("B", "DB")
    );
}

#[test]
fn unemployment_with_a_pension_names_the_first_pension_and_survives_losing_one() {
    check(vec![
        (set(1, pay(UNEMPLOYMENT, "U1", "a", "2026-05")), &[]),
        (set(1, pay(PENSIONS, "P9", "a", "2026-06")), &[]),
        (
            set(1, pay(PENSIONS, "P5", "a", "2026-05")),
            &[(UnemploymentWithPension, "U1", "raise")],
        ),
        // A second pension with a smaller key becomes the evidence (an update).
        (
            set(1, pay(PENSIONS, "P1", "a", "2026-05")),
            &[(UnemploymentWithPension, "U1", "update")],
        ),
        (
            del(2, Feed::Pensions, "P1"),
            &[(UnemploymentWithPension, "U1", "update")],
        ),
        (
            del(2, Feed::Pensions, "P5"),
            &[(UnemploymentWithPension, "U1", "withdraw:evidence_deleted")],
        ),
        // The payment itself deleted: nothing left to withdraw.
        (del(2, Feed::Unemployment, "U1"), &[]),
    ]);
    check(vec![
        (set(1, pay(UNEMPLOYMENT, "U1", "a", "2026-05")), &[]),
        (
            set(1, pay(PENSIONS, "P5", "a", "2026-05")),
            &[(UnemploymentWithPension, "U1", "raise")],
        ),
        (
            del(2, Feed::Unemployment, "U1"),
            &[(UnemploymentWithPension, "U1", "withdraw:payment_deleted")],
        ),
    ]);
}

#[test]
fn an_older_version_never_overwrites_a_newer_one() {
    check(vec![
        (set(5, pay(PENSIONS, "P1", "a", "2026-05")), &[]),
        (
            set(1, death("D1", "a", "2026-01")),
            &[(PaidAfterDeath, "P1", "raise")],
        ),
        // An older correction of the payment arrives late: ignored.
        (set(4, pay(PENSIONS, "P1", "a", "2026-01")), &[]),
        (del(3, Feed::Pensions, "P1"), &[]),
    ]);
}

#[test]
fn the_employer_amount_parameter_is_applied() {
    let strict = RuleParams {
        employed_needs_employer_amount: true,
    };
    let mut d = Detector::new(strict);
    d.apply(&set(1, pay(UNEMPLOYMENT, "U1", "a", "2026-05")));
    assert!(d
        .apply(&set(1, contrib("C1", "a", "2026-05", Some("0.00"))))
        .is_empty());
    let o = d.apply(&set(2, contrib("C1", "a", "2026-05", Some("310.00"))));
    assert_eq!(o.len(), 1);
    assert!(o[0].raises());
    let mut lenient = Detector::default();
    lenient.apply(&set(1, pay(UNEMPLOYMENT, "U1", "a", "2026-05")));
    assert_eq!(
        lenient
            .apply(&set(1, contrib("C1", "a", "2026-05", Some("0.00"))))
            .len(),
        1
    );
}

#[test]
fn observe_keeps_the_old_interface() {
    let mut d = Detector::default();
    assert!(d.observe(contrib("C1", "p3", "2026-02", None)).is_empty());
    let a = d.observe(pay(UNEMPLOYMENT, "U8", "p3", "2026-02"));
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].evidence_dataset, CONTRIBUTIONS);
    assert!(d.observe(contrib("C3", "p3", "2026-02", None)).is_empty());
    assert!(d.observe(death("D", "other", "2026-01")).is_empty());
    assert_eq!(a[0].evidence_record, "C1");
    assert_eq!(d.raised(), 1);
    let _ = DEATHS;
}

// ---- the model: random histories against the batch oracle ----

const PEOPLE: [&str; 3] = ["pa", "pb", "pc"];
const MONTHS: [&str; 4] = ["2026-01", "2026-02", "2026-03", "2026-04"];

/// A random change to one of a few keys per feed: every field a rule
/// reads (person, month, employer amount) varies, and a third are deletes.
fn arb_change() -> impl Strategy<Value = Change> {
    (
        0..4usize,
        0..3usize,
        0..3usize,
        0..3usize,
        0..4usize,
        0..3usize,
    )
        .prop_map(|(f, k, del, person, month, amount)| {
            let feed = Feed::ALL[f];
            let key = format!("{}{k}", &feed.dataset()[..3]);
            let (p, m) = (PEOPLE[person], MONTHS[month]);
            let value = (del != 0).then(|| match feed {
                Feed::Deaths => death(&key, p, m),
                Feed::Pensions => pay(PENSIONS, &key, p, m),
                Feed::Unemployment => pay(UNEMPLOYMENT, &key, p, m),
                Feed::Contributions => {
                    contrib(&key, p, m, [None, Some("0.00"), Some("12.50")][amount])
                }
            });
            Change {
                feed,
                key,
                version: 0,
                value,
            }
        })
}

/// Histories with a distinct version per change (its position), delivered
/// in a random order.
fn arb_history() -> impl Strategy<Value = (Vec<Change>, Vec<Change>)> {
    proptest::collection::vec(arb_change(), 0..60).prop_flat_map(|mut h| {
        for (i, c) in h.iter_mut().enumerate() {
            c.version = i as u64 + 1;
        }
        (Just(h.clone()), Just(h).prop_shuffle())
    })
}

/// The current records after `delivered`, last-write-wins by version.
fn final_records(delivered: &[Change]) -> Vec<Input> {
    let mut m: BTreeMap<(Feed, String), &Change> = BTreeMap::new();
    for c in delivered {
        let k = (c.feed, c.key.clone());
        if m.get(&k).is_none_or(|o| c.version >= o.version) {
            m.insert(k, c);
        }
    }
    m.values().filter_map(|c| c.value.clone()).collect()
}

fn run(
    params: RuleParams,
    delivered: &[Change],
) -> (BTreeMap<String, Alert>, BTreeSet<String>, BTreeSet<String>) {
    let mut d = Detector::new(params);
    let mut ever = BTreeSet::new();
    for c in delivered {
        for o in d.apply(c) {
            ever.insert(o.after.alert.alert_id.clone());
        }
    }
    let withdrawn = d
        .alerts()
        .into_iter()
        .filter(|(_, r)| r.status != Status::Standing)
        .map(|(id, _)| id)
        .collect();
    (d.standing(), withdrawn, ever)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Any history, in any order: the alerts standing at the end are the
    /// oracle's over the final records; the withdrawn ones are exactly the
    /// raised ones the final records no longer support.
    #[test]
    fn standing_alerts_equal_the_oracle_in_any_arrival_order(
        (history, shuffled) in arb_history(),
        strict in any::<bool>(),
    ) {
        let params = RuleParams { employed_needs_employer_amount: strict };
        let want = oracle(&final_records(&history), &params);
        for delivered in [&history, &shuffled] {
            let (standing, withdrawn, ever) = run(params, delivered);
            prop_assert_eq!(&standing, &want);
            let unsupported: BTreeSet<String> =
                ever.iter().filter(|id| !want.contains_key(*id)).cloned().collect();
            prop_assert_eq!(withdrawn, unsupported);
        }
    }
}
