//! The desired state: what the operator asked the fleet to run, as a state-based CRDT.
//!
//! Workload name -> last-writer-wins register of `Option<Revision>` marked by an HLC
//! [`Timestamp`] (`None` is a tombstone: the workload was deleted). The registers are the `crdts`
//! crate's `LWWReg`, held in a `BTreeMap` and merged entry-wise (crdts' own `Map` needs
//! `ResetRemove`, which `LWWReg` lacks). Merge is a join: commutative, associative and idempotent,
//! so nodes converge whatever order, duplication or batching the network delivers writes in.
//!
//! Equal markers with different values cannot come from honest HLCs (the node id is part of the
//! marker) but the merge still picks one deterministically (the larger entry hash), so even then
//! every node ends with the same state.
//!
//! Each entry's 128-bit hash is XOR-folded into one of [`DIGEST_BUCKETS`] buckets by name hash;
//! [`DesiredState::digest`] builds a Merkle tree over them (see [`digest`]) so two nodes find the
//! names that differ in O(difference · log buckets) without shipping the whole state.

pub mod digest;
pub mod legacy;
pub mod objects;
pub mod sync;
pub mod tombstones;
pub mod writes;

use std::collections::BTreeMap;

use crdts::LWWReg;
use serde::{Deserialize, Serialize};

pub use digest::{DIGEST_BUCKETS, Digest};
pub use objects::{Entry, Key};
pub use sync::{MergeReport, PAGE_BYTES, PullPlan};
pub use writes::{BY_MAX, LINEAGE_MAX, RevisionId, RevisionMatch, WRITES_KEPT, WriteRecord};
use writes::{keep_newest, record_of, truncate};

use crate::hash::{hash64, hash128};
use crate::hlc::Timestamp;
use crate::names::WorkloadName;
use crate::objects::ObjectKey;
use crate::spec::{SpecErrors, WorkloadSpec};
use objects::{ObjectSlot, object_bucket};

/// One version of a workload's spec. It carries the revision before it, so a rollback needs
/// no history store; only one step back is kept, which bounds the size of every entry.
///
/// A revision's number counts template changes; two peers that take a write of the same
/// workload at once both make number N+1. What names one write is the number together with
/// its register's HLC marker ([`RevisionId`]), which no two writers share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// Counts template changes of this workload since it was created: 1, 2, ...
    pub number: u64,
    /// The spec of this revision.
    pub spec: WorkloadSpec,
    /// The revision this one replaced, if any.
    pub previous: Option<PreviousRevision>,
    /// Markers of the writes this one was made over (the register the writer held, then that
    /// one's lineage), newest first, at most [`LINEAGE_MAX`]: a write seen by a node that is
    /// neither this one nor in its lineage was overwritten without its writer knowing.
    pub lineage: Vec<Timestamp>,
    /// Who asked for this write (an operator's certificate name, a node, or the local socket).
    pub by: String,
    /// What operators and failed health gates said about this revision's rollout.
    pub rollout: RolloutControl,
    /// The versions (register markers) of the secrets and configs this revision runs with: a
    /// replica of it starts only once its node holds at least these. A new version of an
    /// object with `reload = "restart"` writes a new revision that pins it, and the rolling
    /// update moves the replicas.
    pub inputs: BTreeMap<ObjectKey, Timestamp>,
}

/// The rollout state that lives in the desired state (progress itself is not written: every
/// node derives it from the replicas' gossiped status, see `protocol::rollout`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutControl {
    /// `rollout pause`: no replica moves to this revision until `rollout resume`.
    pub paused: bool,
    /// `rollout promote` of a canary rollout: the replicas past the canaries may move.
    pub promoted: bool,
    /// This revision brings back the one before the one it replaced.
    pub rollback_of: Option<RollbackOf>,
}

/// The revision a rollback replaced, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackOf {
    /// Number of the revision rolled back.
    pub number: u64,
    /// Why its rollout failed (at most [`FAILURE_MAX`] bytes); `None` for a rollback by hand.
    pub failure: Option<String>,
}

/// Most object versions a revision pins ([`Revision::inputs`]).
pub const INPUTS_MAX: usize = 256;

/// Longest [`RollbackOf::failure`].
pub const FAILURE_MAX: usize = 256;

/// The revision a [`Revision`] replaced.
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousRevision {
    pub number: u64,
    pub spec: WorkloadSpec,
}

/// A register's contents: the revision, or `None` for a deleted workload.
pub type Register = LWWReg<Option<Revision>, Timestamp>;

/// One entry of the desired state, as shipped between nodes and stored on disk.
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredEntry {
    /// The workload.
    pub name: WorkloadName,
    pub register: Register,
    /// The newest writes of this workload any node has seen (the register's own included),
    /// newest first, at most [`WRITES_KEPT`]; merged as a set, so a write that lost to a
    /// concurrent one is still on record everywhere (see [`DesiredState::overwritten`]).
    pub writes: Vec<WriteRecord>,
}

/// Why an entry received from elsewhere was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The entry's name and its spec's name differ.
    #[error("entry {entry} holds a spec named {spec}")]
    NameMismatch {
        /// Name of the entry.
        entry: WorkloadName,
        /// Name inside the spec.
        spec: WorkloadName,
    },
    /// A list or text in the entry is over its bound.
    #[error("entry {entry}: {what}")]
    Oversized {
        /// Name of the entry.
        entry: WorkloadName,
        /// Which field, how long, and its bound.
        what: String,
    },
    /// The spec fails validation.
    #[error("entry {entry}: invalid spec: {errors}")]
    InvalidSpec {
        /// Name of the entry.
        entry: WorkloadName,
        /// What is wrong.
        errors: SpecErrors,
    },
}

/// One line of a [`DesiredState::summary`]: enough to tell whether two entries differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryItem {
    /// The workload or object.
    pub name: Key,
    /// The marker of its register.
    pub marker: Timestamp,
    /// The hash of the whole entry (equal markers with different values still differ here).
    pub hash: u128,
}

/// The desired-state CRDT. See the module docs for its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    slots: BTreeMap<WorkloadName, Slot>,
    objects: BTreeMap<ObjectKey, ObjectSlot>,
    /// XOR of the hashes of the entries whose names fall in each bucket.
    buckets: Vec<u128>,
    /// The tombstone horizon (wall ms), once this state has one: see [`tombstones`].
    horizon: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    register: Register,
    writes: Vec<WriteRecord>,
    hash: u128,
}

impl Revision {
    /// The first revision of a new workload.
    pub fn first(spec: WorkloadSpec) -> Self {
        Revision {
            number: 1,
            spec,
            previous: None,
            lineage: Vec::new(),
            by: String::new(),
            rollout: RolloutControl::default(),
            inputs: BTreeMap::new(),
        }
    }

    /// The revision that replaces this one with `spec`. A spec that differs only in its replica
    /// count is a scale, not a new revision: the number and history stay.
    pub fn next(&self, spec: WorkloadSpec) -> Self {
        if same_template(&self.spec, &spec) {
            return Revision {
                spec,
                ..self.clone()
            };
        }
        Revision {
            number: self.number + 1,
            spec,
            previous: Some(PreviousRevision {
                number: self.number,
                spec: self.spec.clone(),
            }),
            lineage: Vec::new(),
            by: String::new(),
            rollout: RolloutControl::default(),
            inputs: self.inputs.clone(),
        }
    }

    /// The same spec pinned to new object versions: a new revision, so the rolling update
    /// moves every replica onto them.
    pub fn with_inputs(&self, inputs: BTreeMap<ObjectKey, Timestamp>) -> Self {
        Revision {
            number: self.number + 1,
            spec: self.spec.clone(),
            previous: Some(PreviousRevision {
                number: self.number,
                spec: self.spec.clone(),
            }),
            lineage: Vec::new(),
            by: String::new(),
            rollout: RolloutControl::default(),
            inputs,
        }
    }

    /// A new revision that brings back the previous spec (keeping the current replica count),
    /// or `None` when there is nothing to roll back to. `failure` says why the rollout of this
    /// one failed (`None`: rolled back by hand).
    pub fn rollback(&self, failure: Option<String>) -> Option<Self> {
        let previous = self.previous.as_ref()?;
        let mut spec = previous.spec.clone();
        spec.replicas = self.spec.replicas;
        Some(Revision {
            number: self.number + 1,
            spec,
            previous: Some(PreviousRevision {
                number: self.number,
                spec: self.spec.clone(),
            }),
            lineage: Vec::new(),
            by: String::new(),
            rollout: RolloutControl {
                rollback_of: Some(RollbackOf {
                    number: self.number,
                    failure: failure.map(|f| truncate(&f, FAILURE_MAX)),
                }),
                ..RolloutControl::default()
            },
            // Objects keep only their newest version: a rollback runs the old spec with it.
            inputs: self.inputs.clone(),
        })
    }

    /// The spec of a revision whose rollout failed and was rolled back, when `spec` would
    /// bring that same template back: re-applying it needs `--force`.
    pub fn failed_template(&self, spec: &WorkloadSpec) -> Option<&RollbackOf> {
        let rollback = self.rollout.rollback_of.as_ref()?;
        rollback.failure.as_ref()?;
        let previous = self.previous.as_ref()?;
        same_template(&previous.spec, spec).then_some(rollback)
    }
}

/// Specs equal but for the replica count: a scale, not a new template.
pub fn same_template(a: &WorkloadSpec, b: &WorkloadSpec) -> bool {
    let mut b = b.clone();
    b.replicas = a.replicas;
    *a == b
}

impl DesiredEntry {
    /// Checks an entry received from a peer or read from disk: names agree and specs validate.
    pub fn check(&self) -> Result<(), EntryError> {
        let bounded = |what: &str, len: usize, max: usize| {
            if len > max {
                Err(EntryError::Oversized {
                    entry: self.name.clone(),
                    what: format!("{what}: {len}, at most {max}"),
                })
            } else {
                Ok(())
            }
        };
        bounded("writes", self.writes.len(), WRITES_KEPT)?;
        for w in &self.writes {
            bounded("writes[].by (bytes)", w.by.len(), BY_MAX)?;
        }
        let Some(revision) = &self.register.val else {
            return Ok(());
        };
        bounded("lineage", revision.lineage.len(), LINEAGE_MAX)?;
        bounded("inputs", revision.inputs.len(), INPUTS_MAX)?;
        bounded("by (bytes)", revision.by.len(), BY_MAX)?;
        if let Some(failure) = revision
            .rollout
            .rollback_of
            .as_ref()
            .and_then(|r| r.failure.as_ref())
        {
            bounded("rollback_of.failure (bytes)", failure.len(), FAILURE_MAX)?;
        }
        let specs =
            std::iter::once(&revision.spec).chain(revision.previous.as_ref().map(|p| &p.spec));
        for spec in specs {
            if spec.name != self.name {
                return Err(EntryError::NameMismatch {
                    entry: self.name.clone(),
                    spec: spec.name.clone(),
                });
            }
            spec.check().map_err(|errors| EntryError::InvalidSpec {
                entry: self.name.clone(),
                errors,
            })?;
        }
        Ok(())
    }
}

impl Default for DesiredState {
    fn default() -> Self {
        Self::new()
    }
}

impl DesiredState {
    /// An empty state.
    pub fn new() -> Self {
        DesiredState {
            slots: BTreeMap::new(),
            objects: BTreeMap::new(),
            buckets: vec![0; DIGEST_BUCKETS],
            horizon: None,
        }
    }

    /// The live revision of `name`: `None` when unknown or deleted.
    pub fn get(&self, name: &WorkloadName) -> Option<&Revision> {
        self.slots.get(name).and_then(|s| s.register.val.as_ref())
    }

    /// The register of `name`, tombstones included.
    pub fn register(&self, name: &WorkloadName) -> Option<&Register> {
        self.slots.get(name).map(|s| &s.register)
    }

    /// Live workloads in name order.
    pub fn workloads(&self) -> impl Iterator<Item = (&WorkloadName, &Revision)> {
        self.slots
            .iter()
            .filter_map(|(n, s)| s.register.val.as_ref().map(|r| (n, r)))
    }

    /// Every entry, tombstones included, in name order.
    pub fn entries(&self) -> impl Iterator<Item = (&WorkloadName, &Register)> {
        self.slots.iter().map(|(n, s)| (n, &s.register))
    }

    /// Number of workload entries, tombstones included.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when there are no entries at all, of either kind.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.objects.is_empty()
    }

    /// The newest marker in the state, to resume a node's HLC after a restart.
    pub fn newest_timestamp(&self) -> Option<&Timestamp> {
        let workloads = self.slots.values().map(|s| &s.register.marker);
        let objects = self.objects.values().map(|s| &s.register.marker);
        workloads.chain(objects).max()
    }

    /// Records a local write (`None` deletes) stamped `at`. Returns whether it won: a write
    /// older than the entry's current marker loses, exactly as in a merge (and stays on
    /// record among the entry's writes).
    pub fn write(&mut self, name: WorkloadName, value: Option<Revision>, at: Timestamp) -> bool {
        self.write_by(name, value, at, "")
    }

    /// [`DesiredState::write`] on behalf of `by` (truncated to [`BY_MAX`]): the revision
    /// records who asked and the lineage of writes it was made over.
    pub fn write_by(
        &mut self,
        name: WorkloadName,
        mut value: Option<Revision>,
        at: Timestamp,
        by: &str,
    ) -> bool {
        let by = truncate(by, BY_MAX);
        if let Some(revision) = value.as_mut() {
            revision.by = by.clone();
            revision.lineage = match self.slots.get(&name) {
                None => Vec::new(),
                Some(slot) => std::iter::once(slot.register.marker.clone())
                    .chain(slot.register.val.iter().flat_map(|r| r.lineage.clone()))
                    .take(LINEAGE_MAX)
                    .collect(),
            };
        }
        let number = value.as_ref().map_or(0, |r| r.number);
        self.merge_entry(DesiredEntry {
            name: name.clone(),
            register: LWWReg {
                val: value,
                marker: at.clone(),
            },
            writes: vec![WriteRecord {
                at: at.clone(),
                number,
                by,
            }],
        });
        self.slots
            .get(&name)
            .is_some_and(|s| s.register.marker == at)
    }

    /// Merges one entry. Returns whether the state changed.
    ///
    /// The register is last-writer-wins by marker; the write records are a set (keyed by
    /// marker) of which the newest [`WRITES_KEPT`] stay. Both are joins, so the merge is too.
    pub fn merge_entry(&mut self, entry: DesiredEntry) -> bool {
        let DesiredEntry {
            name,
            register,
            writes,
        } = entry;
        let bucket = bucket_of(&name);
        let Some(slot) = self.slots.get_mut(&name) else {
            let writes = keep_newest(writes.into_iter().chain([record_of(&register)]));
            let hash = entry_hash(&name, &register, &writes);
            self.buckets[bucket] ^= hash;
            self.slots.insert(
                name,
                Slot {
                    register,
                    writes,
                    hash,
                },
            );
            return true;
        };
        let wins = lww_wins(&register, &slot.register, |r| register_hash(&name, r));
        let writes = keep_newest(
            slot.writes
                .iter()
                .cloned()
                .chain(writes)
                .chain([record_of(&register)]),
        );
        if !wins && writes == slot.writes {
            return false;
        }
        let register = if wins {
            register
        } else {
            slot.register.clone()
        };
        let hash = entry_hash(&name, &register, &writes);
        self.buckets[bucket] ^= slot.hash ^ hash;
        *slot = Slot {
            register,
            writes,
            hash,
        };
        true
    }

    /// Merges another state into this one (the CRDT join). Returns how many entries changed.
    pub fn merge(&mut self, other: &DesiredState) -> usize {
        let mut changed = 0;
        for (name, slot) in &other.slots {
            let mine = self.slots.get(name);
            // Skip the clone and rehash when the entry is already identical (the common case).
            if mine
                .is_some_and(|m| m.hash == slot.hash && m.register.marker == slot.register.marker)
            {
                continue;
            }
            let entry = DesiredEntry {
                name: name.clone(),
                register: slot.register.clone(),
                writes: slot.writes.clone(),
            };
            changed += usize::from(self.merge_entry(entry));
        }
        for (key, slot) in &other.objects {
            let mine = self.objects.get(key);
            if mine.is_some_and(|m| m.hash == slot.hash) {
                continue;
            }
            if let Some(entry) = other.object_entry(key) {
                changed += usize::from(self.merge_object(entry));
            }
        }
        changed
    }

    /// The Merkle digest of the whole state.
    pub fn digest(&self) -> Digest {
        Digest::from_buckets(&self.buckets)
    }

    /// Names, markers and entry hashes of the entries in `buckets` (as found by
    /// [`Digest::diff`]), for a peer to compare with its own.
    pub fn summary(&self, buckets: &[usize]) -> Vec<SummaryItem> {
        let wanted: std::collections::BTreeSet<usize> = buckets.iter().copied().collect();
        let workloads = self
            .slots
            .iter()
            .filter(|(n, _)| wanted.contains(&bucket_of(n)))
            .map(|(n, s)| SummaryItem {
                name: Key::Workload(n.clone()),
                marker: s.register.marker.clone(),
                hash: s.hash,
            });
        let objects = self
            .objects
            .iter()
            .filter(|(k, _)| wanted.contains(&object_bucket(k)))
            .map(|(k, s)| SummaryItem {
                name: Key::Object(k.clone()),
                marker: s.register.marker.clone(),
                hash: s.hash,
            });
        workloads.chain(objects).collect()
    }

    /// Of a peer's summary, the keys whose entry this state lacks or holds differently:
    /// what to pull from that peer.
    pub fn wanted(&self, peer_summary: &[SummaryItem]) -> Vec<Key> {
        peer_summary
            .iter()
            .filter(|item| {
                let mine = match &item.name {
                    Key::Workload(n) => self.slots.get(n).map(|s| s.hash),
                    Key::Object(k) => self.objects.get(k).map(|s| s.hash),
                };
                mine != Some(item.hash)
            })
            .map(|item| item.name.clone())
            .collect()
    }

    /// The entries for `names` (those this state has), to ship to a peer.
    pub fn export(&self, names: &[WorkloadName]) -> Vec<DesiredEntry> {
        names.iter().filter_map(|n| self.entry(n)).collect()
    }

    /// The entry of `name` as it travels, if this state has one.
    pub fn entry(&self, name: &WorkloadName) -> Option<DesiredEntry> {
        self.slots.get(name).map(|s| DesiredEntry {
            name: name.clone(),
            register: s.register.clone(),
            writes: s.writes.clone(),
        })
    }
}

/// Whether `new` replaces `old` in a last-writer-wins register: the later marker; on equal
/// markers (the same write unless a peer is broken) the larger hash, so every node picks the
/// same. Workload and object registers share this rule.
pub(crate) fn lww_wins<T: PartialEq>(
    new: &LWWReg<T, Timestamp>,
    old: &LWWReg<T, Timestamp>,
    hash: impl Fn(&LWWReg<T, Timestamp>) -> u128,
) -> bool {
    match new.marker.cmp(&old.marker) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => new != old && hash(new) > hash(old),
    }
}

/// The digest bucket of a workload name.
pub fn bucket_of(name: &WorkloadName) -> usize {
    (hash64(name.as_str().as_bytes()) % DIGEST_BUCKETS as u64) as usize
}

fn entry_hash(name: &WorkloadName, register: &Register, writes: &[WriteRecord]) -> u128 {
    // postcard of plain serde data cannot fail; an empty fallback would only weaken the digest.
    let bytes = postcard::to_allocvec(&(name, register, writes)).unwrap_or_default();
    hash128(&bytes)
}

fn register_hash(name: &WorkloadName, register: &Register) -> u128 {
    let bytes = postcard::to_allocvec(&(name, register)).unwrap_or_default();
    hash128(&bytes)
}

/// Stored as its horizon, then every entry (desired.bin format 6; format 5 was the entries
/// alone, see [`legacy::decode_v5`]).
impl Serialize for DesiredState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (self.horizon, self.all_entries()).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for DesiredState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (horizon, entries) = <(Option<u64>, Vec<Entry>)>::deserialize(deserializer)?;
        let mut state = DesiredState::from_entries(entries).map_err(serde::de::Error::custom)?;
        state.horizon = horizon;
        Ok(state)
    }
}

#[cfg(test)]
mod tests;
