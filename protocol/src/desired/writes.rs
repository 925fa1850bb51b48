//! Who wrote what: revision ids, the write records every entry keeps, and which writes were
//! overwritten by a concurrent write (see [`DesiredState::overwritten`]).

use serde::{Deserialize, Serialize};

use super::{DesiredState, Register};
use crate::hlc::Timestamp;
use crate::names::WorkloadName;

/// Ancestors a revision remembers ([`super::Revision::lineage`]).
pub const LINEAGE_MAX: usize = 8;
/// Writes an entry remembers ([`super::DesiredEntry::writes`]).
pub const WRITES_KEPT: usize = 8;
/// Longest [`super::Revision::by`] and [`WriteRecord::by`].
pub const BY_MAX: usize = 128;

/// One write of a workload as every node remembers it (newest [`WRITES_KEPT`] per workload).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WriteRecord {
    /// The write's HLC stamp: when, and which peer took it.
    pub at: Timestamp,
    /// The revision number it wrote (0: it deleted the workload).
    pub number: u64,
    /// Who asked for it ([`super::Revision::by`]; empty when not known).
    pub by: String,
}

impl WriteRecord {
    /// The identity of the write this records.
    pub fn id(&self) -> RevisionId {
        RevisionId {
            number: self.number,
            at: self.at.clone(),
        }
    }
}

/// The identity of one write: revision number and HLC stamp, shown `N@NODE:MS.LOGICAL`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionId {
    /// The revision number.
    pub number: u64,
    /// The register's marker.
    pub at: Timestamp,
}

impl std::fmt::Display for RevisionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}:{}.{}",
            self.number, self.at.node, self.at.physical_ms, self.at.logical
        )
    }
}

/// What `apply --if-revision` compares with: a number alone, or a whole [`RevisionId`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevisionMatch {
    /// The current revision number (0: the workload must not exist).
    Number(u64),
    /// The exact write.
    Id(RevisionId),
}

impl std::str::FromStr for RevisionMatch {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?} is not a revision: give a number (2) or a revision id as shown by \
                 apply and describe (2@node-1:1764867785123.0)"
            )
        };
        let Some((number, rest)) = text.split_once('@') else {
            return text.parse().map(RevisionMatch::Number).map_err(|_| bad());
        };
        let number = number.parse().map_err(|_| bad())?;
        let (node, stamp) = rest.rsplit_once(':').ok_or_else(bad)?;
        let (physical, logical) = stamp.split_once('.').ok_or_else(bad)?;
        Ok(RevisionMatch::Id(RevisionId {
            number,
            at: Timestamp {
                physical_ms: physical.parse().map_err(|_| bad())?,
                logical: logical.parse().map_err(|_| bad())?,
                node: crate::names::NodeId::new(node).map_err(|_| bad())?,
            },
        }))
    }
}

impl RevisionMatch {
    /// Whether the current write (`None`: no live workload) is the one asked for.
    pub fn matches(&self, current: Option<&RevisionId>) -> bool {
        match (self, current) {
            (RevisionMatch::Number(0), None) => true,
            (RevisionMatch::Number(n), Some(id)) => id.number == *n,
            (RevisionMatch::Id(want), Some(id)) => want == id,
            _ => false,
        }
    }
}

impl DesiredState {
    /// The identity of `name`'s current write, if it is live.
    pub fn revision_id(&self, name: &WorkloadName) -> Option<RevisionId> {
        let register = &self.slots.get(name)?.register;
        register.val.as_ref().map(|r| RevisionId {
            number: r.number,
            at: register.marker.clone(),
        })
    }

    /// Writes of `name` that were overwritten by a concurrent write (one whose writer had not
    /// seen them), newest first: what two operators racing each other lost. Writes older than
    /// what the current revision's lineage reaches back to, or than a delete it was made over,
    /// are history, not races.
    pub fn overwritten(&self, name: &WorkloadName) -> Vec<WriteRecord> {
        let Some(slot) = self.slots.get(name) else {
            return Vec::new();
        };
        let current = &slot.register;
        let lineage: &[Timestamp] = current.val.as_ref().map_or(&[], |r| &r.lineage);
        let deleted_before = slot
            .writes
            .iter()
            .filter(|w| w.number == 0 && lineage.contains(&w.at))
            .map(|w| &w.at)
            .max();
        let reach = (lineage.len() >= LINEAGE_MAX)
            .then(|| lineage.last())
            .flatten();
        slot.writes
            .iter()
            .filter(|w| {
                w.at != current.marker
                    && !lineage.contains(&w.at)
                    && deleted_before.is_none_or(|d| w.at > *d)
                    && reach.is_none_or(|r| w.at > *r)
            })
            .cloned()
            .collect()
    }
}

/// The record of the write a register holds.
pub(super) fn record_of(register: &Register) -> WriteRecord {
    WriteRecord {
        at: register.marker.clone(),
        number: register.val.as_ref().map_or(0, |r| r.number),
        by: register
            .val
            .as_ref()
            .map_or_else(String::new, |r| r.by.clone()),
    }
}

/// The newest [`WRITES_KEPT`] records by marker, one per marker (the greatest record when
/// two disagree, so every node keeps the same one).
pub(super) fn keep_newest(records: impl Iterator<Item = WriteRecord>) -> Vec<WriteRecord> {
    let mut all: Vec<WriteRecord> = records.collect();
    all.sort_by(|a, b| b.cmp(a));
    all.dedup_by(|later, kept| later.at == kept.at);
    all.truncate(WRITES_KEPT);
    all
}

pub(super) fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
