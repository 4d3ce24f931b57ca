//! The conservation checker: for one run, every event published against
//! what a subscriber received. Lost must be zero; duplicates are counted
//! (at-least-once delivery repeats after a crash); per-key order is checked
//! on first deliveries (a redelivered stretch may repeat older versions, but
//! no key may *first* receive a version older than one it already has).

use std::collections::{BTreeMap, HashMap, HashSet};

/// One delivered event, in the order the subscriber saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Event id (`ce_id`).
    pub id: String,
    /// Record key (`ce_subject`).
    pub key: String,
    /// Source version (`ce_sourceversion`).
    pub version: i64,
}

/// What the checker found for one sink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Events published.
    pub published: usize,
    /// Events received, duplicates included.
    pub received: usize,
    /// Published events never received (ids, up to 20 shown).
    pub lost: Vec<String>,
    /// How many lost in all.
    pub lost_count: usize,
    /// Receipts beyond the first of an event.
    pub duplicates: usize,
    /// Received ids that were never published.
    pub unexpected: usize,
    /// Keys whose first deliveries went backwards in version (up to 20 shown).
    pub out_of_order: Vec<String>,
}

impl Verdict {
    /// Nothing lost, nothing unexpected, order kept.
    pub fn holds(&self) -> bool {
        self.lost_count == 0 && self.unexpected == 0 && self.out_of_order.is_empty()
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "published {}, received {} ({} duplicates), lost {}, unexpected {}, keys out of order {}",
            self.published,
            self.received,
            self.duplicates,
            self.lost_count,
            self.unexpected,
            self.out_of_order.len()
        )?;
        if !self.lost.is_empty() {
            write!(f, "; lost e.g. {:?}", self.lost)?;
        }
        if !self.out_of_order.is_empty() {
            write!(f, "; out of order e.g. {:?}", self.out_of_order)?;
        }
        Ok(())
    }
}

/// Compares `published` event ids with what one sink `received`.
pub fn check(published: &[String], received: &[Received]) -> Verdict {
    let expected: HashSet<&str> = published.iter().map(String::as_str).collect();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut v = Verdict {
        published: expected.len(),
        received: received.len(),
        ..Verdict::default()
    };
    let mut newest: HashMap<&str, i64> = HashMap::new();
    let mut disordered: BTreeMap<&str, ()> = BTreeMap::new();
    for r in received {
        if !expected.contains(r.id.as_str()) {
            v.unexpected += 1;
            continue;
        }
        if !seen.insert(r.id.as_str()) {
            v.duplicates += 1;
            continue;
        }
        let last = newest.entry(r.key.as_str()).or_insert(i64::MIN);
        if r.version < *last {
            disordered.insert(r.key.as_str(), ());
        }
        *last = (*last).max(r.version);
    }
    let lost: Vec<&String> = published
        .iter()
        .filter(|id| !seen.contains(id.as_str()))
        .collect();
    v.lost_count = lost.len();
    v.lost = lost.into_iter().take(20).cloned().collect();
    v.out_of_order = disordered
        .keys()
        .take(20)
        .map(|k| (*k).to_owned())
        .collect();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str, key: &str, version: i64) -> Received {
        Received {
            id: id.into(),
            key: key.into(),
            version,
        }
    }

    #[test]
    fn counts_loss_duplicates_strays_and_order() {
        let published: Vec<String> = ["a1", "a2", "b1", "b2", "c1"].map(String::from).to_vec();
        let got = [
            r("a1", "a", 1),
            r("b1", "b", 1),
            r("a2", "a", 2),
            r("a1", "a", 1), // a redelivered stretch: a duplicate, not disorder
            r("a2", "a", 2),
            r("b2", "b", 0), // b's first delivery of a lower version: disorder
            r("zz", "z", 1), // never published
        ];
        let v = check(&published, &got);
        assert_eq!(v.lost, ["c1"]);
        assert_eq!((v.duplicates, v.unexpected), (2, 1));
        assert_eq!(v.out_of_order, ["b"]);
        assert!(!v.holds());
        let clean = check(&published[..2], &[got[0].clone(), got[2].clone()]);
        assert!(clean.holds(), "{clean}");
    }
}
