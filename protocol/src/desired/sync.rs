//! Anti-entropy in bounded pages, and the checked merge every receiver runs.
//!
//! One QUIC message carries at most [`crate::wire::MESSAGE_BYTES_MAX`]; a node that missed more
//! than that (a week offline, a few large specs) must still catch up. So a pull asks for names,
//! the peer answers with the entries that fit in [`PAGE_BYTES`] (always at least one), and the
//! puller asks again for the rest ([`PullPlan`]). Each page is merged and stored on its own, so
//! a pull cut short keeps what arrived and the next round asks only for what is still missing.
//!
//! The agent and the simulator both run these functions, so the simulator exercises the same
//! page boundaries and the same refusals as a real node.

use crate::desired::{DesiredState, Entry, Key};
use crate::hlc::Hlc;

/// Encoded bytes of entries in one page (256 KiB): a few seconds on a slow cellular link, so a
/// page never runs into a request's timeout there. An entry larger than this (specs may hold
/// up to 1 MiB of text) travels alone in its page, still far below a message's limit.
pub const PAGE_BYTES: usize = 256 << 10;

/// Encoded bytes of names in one pull request (names are at most 63 bytes: thousands fit).
pub const PULL_NAMES_BYTES: usize = 256 << 10;

/// Encoded size of one entry, as it travels.
pub fn encoded_len(entry: &Entry) -> usize {
    // postcard of plain serde data cannot fail; 0 would only make one page larger.
    postcard::experimental::serialized_size(entry).unwrap_or(0)
}

impl DesiredState {
    /// The entries for `names` (those this state has), in the asked order, up to `budget`
    /// encoded bytes. The first entry found always goes, whatever its size, so every pull makes
    /// progress; the caller asks again for the names after the last one returned.
    pub fn export_page(&self, names: &[Key], budget: usize) -> Vec<Entry> {
        let mut page = Vec::new();
        let mut used = 0;
        for entry in names.iter().filter_map(|n| self.any_entry(n)) {
            let len = encoded_len(&entry);
            if !page.is_empty() && used + len > budget {
                break;
            }
            used += len;
            page.push(entry);
        }
        page
    }

    /// Splits `entries` into pages of at most `budget` encoded bytes (one entry may exceed it
    /// alone), for pushes of many entries.
    pub fn paginate(entries: Vec<Entry>, budget: usize) -> Vec<Vec<Entry>> {
        let mut pages: Vec<Vec<Entry>> = Vec::new();
        let mut used = 0;
        for entry in entries {
            let len = encoded_len(&entry);
            match pages.last_mut() {
                Some(page) if used + len <= budget => {
                    used += len;
                    page.push(entry);
                }
                _ => {
                    used = len;
                    pages.push(vec![entry]);
                }
            }
        }
        pages
    }
}

/// What a puller still wants from one peer, asked page after page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullPlan {
    remaining: Vec<Key>,
    asked: usize,
}

impl PullPlan {
    /// A plan for the names a summary showed this node lacks or holds differently.
    pub fn new(wanted: Vec<Key>) -> Self {
        PullPlan {
            remaining: wanted,
            asked: 0,
        }
    }

    /// The names to ask for next (bounded by [`PULL_NAMES_BYTES`]), or `None` when done.
    pub fn next_request(&mut self) -> Option<Vec<Key>> {
        if self.remaining.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let count = self
            .remaining
            .iter()
            .take_while(|n| {
                bytes += n.len_hint();
                bytes <= PULL_NAMES_BYTES
            })
            .count()
            .max(1);
        self.asked = count;
        Some(self.remaining[..count].to_vec())
    }

    /// Takes the answer to the last request. The peer answers in the asked order and stops
    /// at its page budget, so every asked name up to the last one returned is settled (a name
    /// it skipped before that one it no longer holds). Returns whether more is left to ask;
    /// an empty answer ends the plan (the peer has none of the rest).
    pub fn received(&mut self, page: &[Entry]) -> bool {
        let asked = self.asked.min(self.remaining.len());
        self.asked = 0;
        let settled = page
            .last()
            .and_then(|last| {
                let key = last.key();
                self.remaining[..asked].iter().position(|n| *n == key)
            })
            .map(|i| i + 1);
        match settled {
            Some(n) => {
                self.remaining.drain(..n);
                !self.remaining.is_empty()
            }
            None => {
                self.remaining.clear();
                false
            }
        }
    }

    /// Names not yet received.
    pub fn remaining(&self) -> &[Key] {
        &self.remaining
    }
}

/// What [`DesiredState::merge_checked`] did with a batch of entries from a peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Entries that changed the state.
    pub changed: usize,
    /// Entries refused, with the workload and why (invalid spec, clock too far ahead).
    pub refused: Vec<(Key, String)>,
}

impl DesiredState {
    /// Merges entries received from a peer: each must pass [`Entry::check`] and the
    /// clock-drift check of `hlc` (which then moves past its marker); refused entries change
    /// nothing. The caller stores the result before acting on it.
    pub fn merge_checked(
        &mut self,
        entries: Vec<Entry>,
        hlc: &mut Hlc,
        now_ms: u64,
    ) -> MergeReport {
        let mut report = MergeReport::default();
        for entry in entries {
            if let Err(e) = entry.check() {
                report.refused.push((entry.key(), e));
                continue;
            }
            if let Err(e) = hlc.update(entry.marker(), now_ms) {
                report.refused.push((entry.key(), e.to_string()));
                continue;
            }
            if self.below_horizon(&entry.key(), entry.marker()) {
                report.refused.push((
                    entry.key(),
                    format!(
                        "written at {} ms, before this node's tombstone horizon ({} ms): it was deleted and collected here, or it did not reach this node within the tombstone grace",
                        entry.marker().physical_ms,
                        self.horizon().unwrap_or(0)
                    ),
                ));
                continue;
            }
            if self.merge_any(entry) {
                report.changed += 1;
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use crdts::LWWReg;
    use proptest::prelude::*;

    use super::*;
    use crate::desired::{DesiredEntry, Revision};
    use crate::hlc::Timestamp;
    use crate::names::NodeId;
    use crate::names::WorkloadName;
    use crate::spec::WorkloadSpec;

    /// A spec whose encoded entry is about `bytes` long (a large env map, as in the report
    /// that found the 4 MiB wall).
    fn entry(name: &str, bytes: usize, at: u64) -> Entry {
        Entry::Workload(workload_entry(name, bytes, at))
    }

    fn workload_entry(name: &str, bytes: usize, at: u64) -> DesiredEntry {
        let value = "x".repeat(bytes.max(1));
        let spec = WorkloadSpec::from_toml(&format!(
            "name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"60\"]\nreplicas = 0\n[env]\nBIG = \"{value}\""
        ))
        .expect("valid spec");
        DesiredEntry {
            name: WorkloadName::new(name).expect("valid name"),
            register: LWWReg {
                val: Some(Revision::first(spec)),
                marker: Timestamp {
                    physical_ms: at,
                    logical: 0,
                    node: NodeId::new("n1").expect("valid id"),
                },
            },
            writes: Vec::new(),
        }
    }

    fn state(entries: &[Entry]) -> DesiredState {
        let mut s = DesiredState::new();
        for e in entries {
            s.merge_any(e.clone());
        }
        s
    }

    /// Runs a whole paged pull of everything `peer` has and `me` lacks, as the agent does.
    /// Returns the pages' encoded sizes.
    fn pull_all(me: &mut DesiredState, peer: &DesiredState, budget: usize) -> Vec<usize> {
        let buckets = me.digest().diff(&peer.digest());
        let wanted = me.wanted(&peer.summary(&buckets));
        let mut plan = PullPlan::new(wanted);
        let mut hlc = Hlc::new(NodeId::new("me").expect("valid id"), 5_000);
        let mut sizes = Vec::new();
        while let Some(names) = plan.next_request() {
            let page = peer.export_page(&names, budget);
            sizes.push(page.iter().map(encoded_len).sum());
            let more = plan.received(&page);
            let report = me.merge_checked(page, &mut hlc, 10_000);
            assert!(report.refused.is_empty(), "{:?}", report.refused);
            if !more {
                break;
            }
            assert!(sizes.len() < 10_000, "the plan must end");
        }
        sizes
    }

    #[test]
    fn a_backlog_far_above_one_message_arrives_in_pages() {
        // Five specs of ~0.98 MiB: 4.9 MiB, over the 4 MiB a message may carry.
        let entries: Vec<_> = (0..5)
            .map(|i| entry(&format!("big-{i}"), 1_000_000, 100 + i))
            .collect();
        let peer = state(&entries);
        let total: usize = entries.iter().map(encoded_len).sum();
        assert!(total > crate::wire::MESSAGE_BYTES_MAX, "{total}");
        let mut me = DesiredState::new();
        let sizes = pull_all(&mut me, &peer, PAGE_BYTES);
        assert_eq!(me, peer);
        assert_eq!(sizes.len(), 5, "one large spec per page: {sizes:?}");
        assert!(sizes.iter().all(|s| *s < crate::wire::MESSAGE_BYTES_MAX));
    }

    #[test]
    fn a_page_holds_at_least_one_entry_and_stops_at_its_budget() {
        let entries: Vec<_> = (0..10)
            .map(|i| entry(&format!("w{i}"), 1_000, 100 + i))
            .collect();
        let peer = state(&entries);
        let names: Vec<_> = entries.iter().map(|e| e.key()).collect();
        let one = encoded_len(&entries[0]);
        assert_eq!(peer.export_page(&names, 0).len(), 1);
        assert_eq!(peer.export_page(&names, one * 3 + one / 2).len(), 3);
        assert_eq!(peer.export_page(&names, usize::MAX).len(), 10);
        let pages = DesiredState::paginate(entries.clone(), one * 4);
        assert_eq!(
            pages.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        assert_eq!(pages.concat(), entries);
    }

    #[test]
    fn names_the_peer_no_longer_has_do_not_stall_the_plan() {
        let entries: Vec<_> = (0..6)
            .map(|i| entry(&format!("w{i}"), 100, 100 + i))
            .collect();
        let peer = state(&entries[3..]);
        let mut plan = PullPlan::new(entries.iter().map(|e| e.key()).collect());
        let names = plan.next_request().expect("something to ask");
        let page = peer.export_page(&names, encoded_len(&entries[3]));
        assert_eq!(page.len(), 1);
        assert!(plan.received(&page), "w4 and w5 are left");
        assert_eq!(plan.remaining().len(), 2);
        let names = plan.next_request().expect("the rest");
        let page = peer.export_page(&names, usize::MAX);
        assert!(!plan.received(&page));
        assert!(plan.next_request().is_none());
        // A peer that has none of what is asked ends the plan at once.
        let mut plan = PullPlan::new(vec![Key::Workload(
            WorkloadName::new("gone").expect("valid"),
        )]);
        let names = plan.next_request().expect("one");
        assert!(!plan.received(&peer.export_page(&names, usize::MAX)));
        assert!(plan.next_request().is_none());
    }

    #[test]
    fn merge_checked_refuses_bad_entries_by_name_and_keeps_the_rest() {
        let good = entry("good", 10, 100);
        let mut mismatched = workload_entry("bad", 10, 100);
        mismatched.name = WorkloadName::new("other").expect("valid");
        let mut ahead = workload_entry("ahead", 10, 100);
        ahead.register.marker.physical_ms = 10_000_000;
        let (mismatched, ahead) = (Entry::Workload(mismatched), Entry::Workload(ahead));
        let mut me = DesiredState::new();
        let mut hlc = Hlc::new(NodeId::new("me").expect("valid id"), 5_000);
        let report = me.merge_checked(vec![mismatched, good.clone(), ahead], &mut hlc, 10_000);
        assert_eq!(report.changed, 1);
        let refused: Vec<_> = report.refused.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(refused, vec!["other", "ahead"]);
        assert!(
            report.refused[1].1.contains("ahead"),
            "{:?}",
            report.refused
        );
        assert_eq!(me, state(&[good]));
    }

    proptest! {
        /// Any backlog, any page budget: the paged pull ends with the peer's entries, and no
        /// page is over budget unless it holds a single entry.
        #[test]
        fn paged_pulls_converge(
            sizes in proptest::collection::vec(1usize..5_000, 0..40),
            mine in proptest::collection::vec(any::<bool>(), 40),
            budget in 1usize..20_000,
        ) {
            let entries: Vec<_> = sizes
                .iter()
                .enumerate()
                .map(|(i, s)| entry(&format!("w{i}"), *s, 100 + i as u64))
                .collect();
            let peer = state(&entries);
            let held: Vec<_> = entries
                .iter()
                .zip(&mine)
                .filter(|(_, m)| **m)
                .map(|(e, _)| e.clone())
                .collect();
            let mut me = state(&held);
            pull_all(&mut me, &peer, budget);
            prop_assert_eq!(me, peer);
            for page in DesiredState::paginate(entries.clone(), budget) {
                let bytes: usize = page.iter().map(encoded_len).sum();
                prop_assert!(page.len() == 1 || bytes <= budget);
            }
        }
    }
}
