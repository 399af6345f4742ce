//! MapImage: the complete contents of the policy maps for one generation, as plain sorted maps
//! of sg-common keys and values. The compiler produces it (pure); the dataplane writes it
//! (diff against what is loaded, then the generation flip); the test kit's lookup oracle
//! (`sg_testkit::lookup`) reads it like the kernel.
//!
//! Rule counter slots live here too: a slot is the index of a rule's counter in the kernel and
//! must stay the same across applies for an unchanged rule id.

use std::collections::BTreeMap;

use sg_common::{IfaceConf, IfaceKey, PeerData, PeerVal, PortKey, PortPage};

use crate::policy::RuleId;

/// An LPM trie key as the kernel sees it: a prefix length in bits over `data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LpmKey<T> {
    pub prefix_len: u32,
    pub data: T,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapImage {
    /// 0 or 1: the value [`sg_common::maps::ACTIVE`] takes when this image goes live. Every
    /// scope and class id in the image carries it in its top bit, so the next image can be
    /// written beside the live one.
    pub generation: u32,
    pub ifaces: BTreeMap<IfaceKey, IfaceConf>,
    pub peers: BTreeMap<LpmKey<PeerData>, PeerVal>,
    pub ports: BTreeMap<PortKey, PortPage>,
    pub slots: SlotTable,
}

/// Rule id <-> counter slot. Slot 0 is never used ([`sg_common::NO_RULE_SLOT`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotTable {
    pub by_rule: BTreeMap<RuleId, u32>,
    /// Where the search for a free slot starts next time: freed slots are not reused at once,
    /// so a long-lived flow opened by a deleted rule does not charge a newly added rule.
    pub cursor: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub struct SlotsExhausted {
    pub capacity: u32,
    pub needed: usize,
}

impl std::fmt::Display for SlotsExhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the policy has {} rules but the dataplane has {} counter slots; hint: raise the \
             rule slot capacity",
            self.needed,
            self.capacity - 1
        )
    }
}

impl std::error::Error for SlotsExhausted {}

impl SlotTable {
    /// Slots for `ids`: an id that had a slot in `previous` keeps it; a new id takes the next
    /// free slot after `previous.cursor` (wrapping, skipping 0 and slots in use).
    pub fn assign<'a>(
        previous: &SlotTable,
        ids: impl IntoIterator<Item = &'a RuleId>,
        capacity: u32,
    ) -> Result<SlotTable, SlotsExhausted> {
        let ids: Vec<&RuleId> = ids.into_iter().collect();
        if ids.len() as u64 >= u64::from(capacity) {
            return Err(SlotsExhausted {
                capacity,
                needed: ids.len(),
            });
        }
        let mut by_rule = BTreeMap::new();
        let mut used = std::collections::BTreeSet::new();
        for id in &ids {
            if let Some(&s) = previous.by_rule.get(*id)
                && s != 0
                && s < capacity
            {
                by_rule.insert((*id).clone(), s);
                used.insert(s);
            }
        }
        let mut cursor = previous.cursor;
        for id in ids {
            if by_rule.contains_key(id) {
                continue;
            }
            loop {
                cursor = if cursor + 1 >= capacity {
                    1
                } else {
                    cursor + 1
                };
                if !used.contains(&cursor) {
                    break;
                }
            }
            used.insert(cursor);
            by_rule.insert(id.clone(), cursor);
        }
        Ok(SlotTable { by_rule, cursor })
    }

    pub fn slot(&self, id: &RuleId) -> Option<u32> {
        self.by_rule.get(id).copied()
    }

    /// The rule a slot belongs to (linear: for display and tests, not per packet).
    pub fn rule(&self, slot: u32) -> Option<&RuleId> {
        self.by_rule
            .iter()
            .find(|(_, s)| **s == slot)
            .map(|(r, _)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<RuleId> {
        v.iter().map(|s| RuleId(s.to_string())).collect()
    }

    #[test]
    fn unchanged_rule_keeps_its_slot_and_freed_slots_are_not_reused_at_once() {
        let a = ids(&["sgr-a", "sgr-b", "sgr-c"]);
        let t1 = SlotTable::assign(&SlotTable::default(), &a, 100).unwrap();
        let b = ids(&["sgr-a", "sgr-c", "sgr-d"]);
        let t2 = SlotTable::assign(&t1, &b, 100).unwrap();
        assert_eq!(t1.slot(&a[0]), t2.slot(&a[0]));
        assert_eq!(t1.slot(&a[2]), t2.slot(&a[2]));
        let freed = t1.slot(&a[1]).unwrap();
        assert_ne!(
            t2.slot(&b[2]),
            Some(freed),
            "slot of removed sgr-b reused at once"
        );
        assert!(t2.by_rule.values().all(|&s| s != 0));
    }

    #[test]
    fn wraps_and_reports_exhaustion() {
        let a = ids(&["sgr-1", "sgr-2", "sgr-3"]);
        let t = SlotTable::assign(
            &SlotTable {
                by_rule: BTreeMap::new(),
                cursor: 3,
            },
            &a,
            5,
        )
        .unwrap();
        let mut slots: Vec<u32> = t.by_rule.values().copied().collect();
        slots.sort();
        assert_eq!(slots, vec![1, 2, 4]);
        assert!(SlotTable::assign(&SlotTable::default(), &a, 3).is_err());
    }
}
