//! Secrets and configs inside the desired state, and the keys and entries sync ships for both
//! kinds of register.
//!
//! Objects share the workloads' digest buckets (an object's bucket is the hash of `kind/name`,
//! which no workload name can equal: workload names have no '/'), so one anti-entropy pass
//! finds differing workloads and objects alike.

use std::collections::BTreeMap;

use crdts::LWWReg;
use serde::{Deserialize, Serialize};

use super::writes::truncate;
use super::{BY_MAX, DesiredEntry, DesiredState, EntryError};
use crate::hash::{hash64, hash128};
use crate::hlc::Timestamp;
use crate::names::{NodeId, WorkloadName};
use crate::objects::{ObjectEntry, ObjectError, ObjectKey, ObjectRegister, ObjectVersion, Seal};

/// The key of any register in the desired state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Key {
    /// A workload.
    Workload(WorkloadName),
    /// A secret or a config.
    Object(ObjectKey),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Workload(name) => write!(f, "{name}"),
            Key::Object(key) => write!(f, "{key}"),
        }
    }
}

impl Key {
    /// Encoded bytes of the key in a pull request (a bound, not exact).
    pub fn len_hint(&self) -> usize {
        match self {
            Key::Workload(name) => name.as_str().len() + 2,
            Key::Object(key) => key.name.as_str().len() + 3,
        }
    }
}

/// Any entry of the desired state, as it travels and rests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// A workload's entry.
    Workload(DesiredEntry),
    /// A secret's or config's entry.
    Object(ObjectEntry),
}

impl Entry {
    /// The entry's key.
    pub fn key(&self) -> Key {
        match self {
            Entry::Workload(e) => Key::Workload(e.name.clone()),
            Entry::Object(e) => Key::Object(e.key.clone()),
        }
    }

    /// The entry's register marker (the write it holds).
    pub fn marker(&self) -> &Timestamp {
        match self {
            Entry::Workload(e) => &e.register.marker,
            Entry::Object(e) => &e.register.marker,
        }
    }

    /// Checks an entry from a peer or the disk.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Entry::Workload(e) => e.check().map_err(|e: EntryError| e.to_string()),
            Entry::Object(e) => e.check().map_err(|e: ObjectError| e.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ObjectSlot {
    pub(super) register: ObjectRegister,
    pub(super) seals: BTreeMap<NodeId, Seal>,
    pub(super) hash: u128,
}

/// The digest bucket of an object.
pub(super) fn object_bucket(key: &ObjectKey) -> usize {
    (hash64(key.to_string().as_bytes()) % super::DIGEST_BUCKETS as u64) as usize
}

fn object_hash(key: &ObjectKey, register: &ObjectRegister, seals: &BTreeMap<NodeId, Seal>) -> u128 {
    let bytes = postcard::to_allocvec(&(key, register, seals)).unwrap_or_default();
    hash128(&bytes)
}

fn object_register_hash(key: &ObjectKey, register: &ObjectRegister) -> u128 {
    let bytes = postcard::to_allocvec(&(key, register)).unwrap_or_default();
    hash128(&bytes)
}

impl DesiredState {
    /// The live version of an object.
    pub fn object(&self, key: &ObjectKey) -> Option<&ObjectVersion> {
        self.objects.get(key).and_then(|s| s.register.val.as_ref())
    }

    /// The register marker of an object, tombstones included.
    pub fn object_marker(&self, key: &ObjectKey) -> Option<&Timestamp> {
        self.objects.get(key).map(|s| &s.register.marker)
    }

    /// The seals of an object's current version.
    pub fn seals(&self, key: &ObjectKey) -> Option<&BTreeMap<NodeId, Seal>> {
        self.objects.get(key).map(|s| &s.seals)
    }

    /// Live objects in key order (secrets, then configs), with their register markers.
    pub fn objects(&self) -> impl Iterator<Item = (&ObjectKey, &ObjectVersion, &Timestamp)> {
        self.objects
            .iter()
            .filter_map(|(k, s)| s.register.val.as_ref().map(|v| (k, v, &s.register.marker)))
    }

    /// The entry of an object as it travels.
    pub fn object_entry(&self, key: &ObjectKey) -> Option<ObjectEntry> {
        self.objects.get(key).map(|s| ObjectEntry {
            key: key.clone(),
            register: s.register.clone(),
            seals: s.seals.clone(),
        })
    }

    /// Records a local write of an object (`None` deletes) stamped `at` on behalf of `by`, with
    /// the seals of the new version. Returns whether it won.
    pub fn write_object(
        &mut self,
        key: ObjectKey,
        mut value: Option<ObjectVersion>,
        seals: BTreeMap<NodeId, Seal>,
        at: Timestamp,
        by: &str,
    ) -> bool {
        if let Some(v) = value.as_mut() {
            v.by = truncate(by, BY_MAX);
        }
        self.merge_object(ObjectEntry {
            key: key.clone(),
            register: LWWReg {
                val: value,
                marker: at.clone(),
            },
            seals,
        });
        self.objects
            .get(&key)
            .is_some_and(|s| s.register.marker == at)
    }

    /// Adds seals to the current version of `key` (a reseal). Seals of another version are
    /// dropped. Returns whether the state changed.
    pub fn add_seals(&mut self, key: &ObjectKey, seals: BTreeMap<NodeId, Seal>) -> bool {
        let Some(mut entry) = self.object_entry(key) else {
            return false;
        };
        entry.seals = seals;
        self.merge_object(entry)
    }

    /// Merges one object entry. Returns whether the state changed.
    pub fn merge_object(&mut self, entry: ObjectEntry) -> bool {
        let ObjectEntry {
            key,
            register,
            seals,
        } = entry;
        let bucket = object_bucket(&key);
        let Some(slot) = self.objects.get_mut(&key) else {
            let seals = ObjectEntry::merge_seals(
                register.val.as_ref().map(|v| v.id),
                &BTreeMap::new(),
                seals,
            );
            let hash = object_hash(&key, &register, &seals);
            self.buckets[bucket] ^= hash;
            self.objects.insert(
                key,
                ObjectSlot {
                    register,
                    seals,
                    hash,
                },
            );
            return true;
        };
        let wins = match register.marker.cmp(&slot.register.marker) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => {
                register != slot.register
                    && object_register_hash(&key, &register)
                        > object_register_hash(&key, &slot.register)
            }
        };
        let register = if wins {
            register
        } else {
            slot.register.clone()
        };
        let seals =
            ObjectEntry::merge_seals(register.val.as_ref().map(|v| v.id), &slot.seals, seals);
        if register == slot.register && seals == slot.seals {
            return false;
        }
        let hash = object_hash(&key, &register, &seals);
        self.buckets[bucket] ^= slot.hash ^ hash;
        *slot = ObjectSlot {
            register,
            seals,
            hash,
        };
        true
    }

    /// Merges any entry. Returns whether the state changed.
    pub fn merge_any(&mut self, entry: Entry) -> bool {
        match entry {
            Entry::Workload(e) => self.merge_entry(e),
            Entry::Object(e) => self.merge_object(e),
        }
    }

    /// The entry for `key`, if this state has one.
    pub fn any_entry(&self, key: &Key) -> Option<Entry> {
        match key {
            Key::Workload(name) => self.entry(name).map(Entry::Workload),
            Key::Object(key) => self.object_entry(key).map(Entry::Object),
        }
    }

    /// Every entry of either kind, tombstones included: workloads, then objects.
    pub fn all_entries(&self) -> Vec<Entry> {
        let workloads = self
            .slots
            .keys()
            .filter_map(|n| self.entry(n))
            .map(Entry::Workload);
        let objects = self
            .objects
            .keys()
            .filter_map(|k| self.object_entry(k))
            .map(Entry::Object);
        workloads.chain(objects).collect()
    }

    /// Builds a state from stored entries, refusing any that fails its check.
    pub fn from_entries(entries: Vec<Entry>) -> Result<Self, String> {
        let mut state = DesiredState::new();
        for entry in entries {
            entry.check()?;
            state.merge_any(entry);
        }
        Ok(state)
    }

    /// Builds a state from workload entries alone (desired.bin formats before objects).
    pub fn from_workload_entries(entries: Vec<DesiredEntry>) -> Result<Self, String> {
        Self::from_entries(entries.into_iter().map(Entry::Workload).collect())
    }

    /// The entries of workloads `names` (those this state has), as they travel.
    pub fn export_entries(&self, names: &[WorkloadName]) -> Vec<Entry> {
        self.export(names)
            .into_iter()
            .map(Entry::Workload)
            .collect()
    }

    /// Number of objects, tombstones included.
    pub fn object_count(&self) -> usize {
        self.objects.len()
    }
}
