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
// Entries live in pages and are moved a few times each; boxing the workload would cost an
// allocation per entry for nothing.
#[allow(clippy::large_enum_variant)]
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
        let wins = super::lww_wins(&register, &slot.register, |r| object_register_hash(&key, r));
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

impl DesiredState {
    /// Workloads whose spec references `key`, with whether that reference reloads by file.
    pub fn users_of(&self, key: &ObjectKey) -> Vec<(WorkloadName, bool)> {
        use crate::objects::ObjectKind;
        use crate::spec::Reload;
        self.workloads()
            .filter_map(|(name, revision)| {
                let spec = &revision.spec;
                let reload = match key.kind {
                    ObjectKind::Secret => spec
                        .secrets
                        .iter()
                        .find(|r| r.name == key.name.as_str())
                        .map(|r| r.reload),
                    ObjectKind::Config => spec
                        .configs
                        .iter()
                        .find(|r| r.name == key.name.as_str())
                        .map(|r| r.reload),
                };
                reload.map(|r| (name.clone(), matches!(r, Reload::File(_))))
            })
            .collect()
    }

    /// The versions (markers) of the objects `spec` references that this state holds: what a
    /// revision written now pins.
    pub fn pins(&self, spec: &crate::spec::WorkloadSpec) -> BTreeMap<ObjectKey, Timestamp> {
        object_refs(spec)
            .filter_map(|key| {
                let marker = self
                    .object(&key)
                    .map(|_| self.objects[&key].register.marker.clone());
                marker.map(|m| (key, m))
            })
            .collect()
    }

    /// Why a replica of `spec` pinned to `pins` cannot start on `me` yet, or `None` when every
    /// secret and config it references is here, new enough, and (secrets) sealed to `me`.
    pub fn missing_input(
        &self,
        spec: &crate::spec::WorkloadSpec,
        pins: &BTreeMap<ObjectKey, Timestamp>,
        me: &NodeId,
    ) -> Option<String> {
        use crate::objects::ObjectKind;
        for key in object_refs(spec) {
            let (kind, label) = match key.kind {
                ObjectKind::Secret => ("Secret", "secret"),
                ObjectKind::Config => ("Config", "config"),
            };
            let Some(slot) = self.objects.get(&key).filter(|s| s.register.val.is_some()) else {
                return Some(format!("{kind}NotFound: {}", key.name));
            };
            if pins
                .get(&key)
                .is_some_and(|pin| slot.register.marker < *pin)
            {
                return Some(format!(
                    "waiting for {label} {}'s version {} to arrive",
                    key.name, pins[&key].physical_ms
                ));
            }
            if key.kind == ObjectKind::Secret && !slot.seals.contains_key(me) {
                return Some(format!(
                    "SecretNotSealed: {} is not sealed to this node (written when this node could not run it; set it again)",
                    key.name
                ));
            }
        }
        for r in spec.secrets.iter().filter(|r| r.env.is_some()) {
            let key = ObjectKey::secret(WorkloadName::new(r.name.clone()).ok()?);
            let version = self.object(&key)?;
            match &r.key {
                Some(k) if !version.keys.contains(k) => {
                    return Some(format!("SecretKeyNotFound: {} has no entry {k:?}", r.name));
                }
                None if version.keys.len() != 1 => {
                    return Some(format!(
                        "SecretKeyNotFound: {} has {} entries; say which one `env` gets with `key`",
                        r.name,
                        version.keys.len()
                    ));
                }
                _ => {}
            }
        }
        None
    }

    /// The nodes a new version of secret `name` is sealed to: of `nodes` (every member with a
    /// published key), those that may run a workload that uses it; every member while no
    /// workload uses it yet, so it can be referenced later.
    pub fn recipients(
        &self,
        name: &WorkloadName,
        nodes: &[(&crate::placement::NodeView, [u8; 32])],
    ) -> Vec<(NodeId, [u8; 32])> {
        let key = ObjectKey::secret(name.clone());
        let users: Vec<&crate::spec::WorkloadSpec> = self
            .users_of(&key)
            .iter()
            .filter_map(|(w, _)| self.get(w).map(|r| &r.spec))
            .collect();
        nodes
            .iter()
            .filter(|(view, _)| {
                users.is_empty() || users.iter().any(|s| crate::placement::may_run(view, s))
            })
            .map(|(view, public)| (view.id.clone(), *public))
            .collect()
    }
}

/// The objects a spec references, as keys (names that are not labels cannot be in a valid
/// spec, and are skipped).
pub fn object_refs(spec: &crate::spec::WorkloadSpec) -> impl Iterator<Item = ObjectKey> + '_ {
    let secrets = spec.secrets.iter().filter_map(|r| {
        WorkloadName::new(r.name.clone())
            .ok()
            .map(ObjectKey::secret)
    });
    let configs = spec.configs.iter().filter_map(|r| {
        WorkloadName::new(r.name.clone())
            .ok()
            .map(ObjectKey::config)
    });
    secrets.chain(configs)
}
