//! Secrets and configs: named objects in the desired state that workloads reference.
//!
//! An object is a set of entries (file name -> bytes), versioned as a last-writer-wins
//! register beside the workloads (see [`crate::desired`]), so it replicates, survives
//! partitions and merges like a spec. A config travels in clear. A secret travels only as
//! ciphertext: XChaCha20-Poly1305 under a data key drawn for that version alone, and the data
//! key sealed to each node that may run a workload using the secret ([`seal`]). A node that
//! holds no seal for a version cannot read it, whatever else it holds.
//!
//! Seals are a grow-only map (node -> seal) of the register's current version: a node that
//! can open a version may seal it to a node that became eligible later (a reseal), and a new
//! version (a new writer's data key) drops every seal of the old one. Merging keeps the seals
//! of the winning version only, so the pair stays a join (see [`ObjectEntry::merge_seals`]).

pub mod seal;

use std::collections::BTreeMap;
use std::fmt;

use crdts::LWWReg;
use serde::{Deserialize, Serialize};

use crate::desired::BY_MAX;
use crate::hlc::Timestamp;
use crate::names::{NodeId, WorkloadName};

/// Largest object: the sum of its entries' bytes (1 MiB).
pub const OBJECT_BYTES_MAX: usize = 1 << 20;
/// Most entries in one object.
pub const ENTRIES_MAX: usize = 64;
/// Longest entry name (a file name).
pub const ENTRY_NAME_BYTES_MAX: usize = 253;
/// Most seals on one version: nodes that may open it.
pub const SEALS_MAX: usize = 10_000;
/// What sealing adds to a secret's plaintext: the entries' framing and the AEAD tag.
const SEALED_OVERHEAD_MAX: usize = 64 * 1024;

/// What kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    /// Encrypted; opened only where a replica that uses it runs.
    Secret,
    /// In clear.
    Config,
}

impl ObjectKind {
    /// The kind as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Secret => "secret",
            ObjectKind::Config => "config",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object's identity: kind and name (a DNS label, like a workload's).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// Secret or config.
    pub kind: ObjectKind,
    /// Its name.
    pub name: WorkloadName,
}

impl ObjectKey {
    /// A secret's key.
    pub fn secret(name: WorkloadName) -> Self {
        ObjectKey {
            kind: ObjectKind::Secret,
            name,
        }
    }

    /// A config's key.
    pub fn config(name: WorkloadName) -> Self {
        ObjectKey {
            kind: ObjectKind::Config,
            name,
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// One version of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectVersion {
    /// Drawn at random by the writer: binds the ciphertext and every seal to this version.
    pub id: u128,
    /// Who wrote it (an operator's certificate name, or the local socket).
    pub by: String,
    /// Entry names, sorted: metadata, shown by `get` (values never are).
    pub keys: Vec<String>,
    /// Plaintext bytes, all entries together.
    pub size: u64,
    /// The entries, in clear (configs) or sealed (secrets).
    pub body: Body,
}

/// An object's entries as they travel and rest.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A config's entries.
    Clear(Vec<(String, Vec<u8>)>),
    /// A secret's entries, encrypted under the version's data key ([`seal`]).
    Sealed {
        /// XChaCha20-Poly1305 nonce.
        nonce: [u8; 24],
        /// The encrypted entries and tag.
        ciphertext: Vec<u8>,
    },
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A config's values are not secret, but Debug output ends up in logs; keep them out.
        match self {
            Body::Clear(entries) => write!(f, "Clear({} entries)", entries.len()),
            Body::Sealed { ciphertext, .. } => write!(f, "Sealed({} bytes)", ciphertext.len()),
        }
    }
}

/// A version's data key, sealed to one node's public key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Seal {
    /// The version it opens ([`ObjectVersion::id`]).
    pub version: u128,
    /// The sealer's one-time X25519 public key.
    pub ephemeral: [u8; 32],
    /// The data key, encrypted (32 bytes and a 16-byte tag).
    pub wrapped: Vec<u8>,
}

/// An object's register: the version, or `None` once deleted.
pub type ObjectRegister = LWWReg<Option<ObjectVersion>, Timestamp>;

/// One object as shipped between nodes and stored on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// Which object.
    pub key: ObjectKey,
    /// Its current version.
    pub register: ObjectRegister,
    /// Seals of the current version's data key, by node (secrets only).
    pub seals: BTreeMap<NodeId, Seal>,
}

/// Why an object entry from elsewhere was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {what}")]
pub struct ObjectError {
    /// The object.
    pub key: ObjectKey,
    /// What is wrong.
    pub what: String,
}

/// Checks an entry name: a plain file name.
pub fn check_entry_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > ENTRY_NAME_BYTES_MAX {
        return Err(format!(
            "entry name {name:?} must be 1 to {ENTRY_NAME_BYTES_MAX} bytes"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("entry name {name:?} is not a file name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "entry name {name:?} has {c:?}: use letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Checks a set of entries a writer offers: names, count, total size. Returns the sorted
/// names and the total size.
pub fn check_entries(entries: &[(String, Vec<u8>)]) -> Result<(Vec<String>, u64), String> {
    if entries.is_empty() {
        return Err("has no entries: give at least one value".into());
    }
    if entries.len() > ENTRIES_MAX {
        return Err(format!(
            "has {} entries, at most {ENTRIES_MAX}",
            entries.len()
        ));
    }
    let mut keys = Vec::with_capacity(entries.len());
    let mut size = 0usize;
    for (name, value) in entries {
        check_entry_name(name)?;
        size += value.len();
        keys.push(name.clone());
    }
    if size > OBJECT_BYTES_MAX {
        return Err(format!(
            "is {size} bytes, over the limit of {OBJECT_BYTES_MAX} bytes (1 MiB)"
        ));
    }
    keys.sort();
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("has entry {:?} twice", w[0]));
    }
    Ok((keys, size as u64))
}

impl ObjectVersion {
    /// A config version in clear.
    pub fn clear(id: u128, entries: Vec<(String, Vec<u8>)>) -> Result<Self, String> {
        let (keys, size) = check_entries(&entries)?;
        let mut entries = entries;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(ObjectVersion {
            id,
            by: String::new(),
            keys,
            size,
            body: Body::Clear(entries),
        })
    }
}

impl ObjectEntry {
    /// Checks an entry received from a peer, a client or the disk: bounds, and that the body
    /// fits the kind (no secret in clear) and every seal opens this version.
    pub fn check(&self) -> Result<(), ObjectError> {
        let fail = |what: String| {
            Err(ObjectError {
                key: self.key.clone(),
                what,
            })
        };
        let Some(version) = &self.register.val else {
            if !self.seals.is_empty() {
                return fail("a deleted object carries seals".into());
            }
            return Ok(());
        };
        if version.by.len() > BY_MAX {
            return fail(format!("by: {} bytes, at most {BY_MAX}", version.by.len()));
        }
        if version.keys.is_empty() || version.keys.len() > ENTRIES_MAX {
            return fail(format!(
                "{} entries, 1 to {ENTRIES_MAX} allowed",
                version.keys.len()
            ));
        }
        for name in &version.keys {
            if let Err(e) = check_entry_name(name) {
                return fail(e);
            }
        }
        if version.keys.windows(2).any(|w| w[0] >= w[1]) {
            return fail("entry names are not sorted and distinct".into());
        }
        if version.size > OBJECT_BYTES_MAX as u64 {
            return fail(format!(
                "{} bytes, over the limit of {OBJECT_BYTES_MAX}",
                version.size
            ));
        }
        match (&version.body, self.key.kind) {
            (Body::Clear(entries), ObjectKind::Config) => {
                let names: Vec<&String> = entries.iter().map(|(n, _)| n).collect();
                let size: usize = entries.iter().map(|(_, v)| v.len()).sum();
                if names.iter().copied().ne(version.keys.iter()) || size as u64 != version.size {
                    return fail("entries disagree with their names or size".into());
                }
                if !self.seals.is_empty() {
                    return fail("a config carries seals".into());
                }
            }
            (Body::Sealed { ciphertext, .. }, ObjectKind::Secret) => {
                if ciphertext.len() > OBJECT_BYTES_MAX + SEALED_OVERHEAD_MAX {
                    return fail(format!("ciphertext of {} bytes", ciphertext.len()));
                }
            }
            (Body::Clear(_), ObjectKind::Secret) => {
                return fail("a secret in clear: secrets travel sealed only".into());
            }
            (Body::Sealed { .. }, ObjectKind::Config) => {
                return fail("a config is sealed: configs travel in clear".into());
            }
        }
        if self.seals.len() > SEALS_MAX {
            return fail(format!("{} seals, at most {SEALS_MAX}", self.seals.len()));
        }
        if let Some((node, _)) = self
            .seals
            .iter()
            .find(|(_, s)| s.version != version.id || s.wrapped.len() != seal::WRAPPED_BYTES)
        {
            return fail(format!("the seal for {node} does not fit this version"));
        }
        Ok(())
    }

    /// The seals that survive a merge: those of `version` from both sides; where both sides
    /// sealed to one node (two holders resealed at once), the smaller seal, so every node keeps
    /// the same one.
    pub fn merge_seals(
        version: Option<u128>,
        a: &BTreeMap<NodeId, Seal>,
        b: BTreeMap<NodeId, Seal>,
    ) -> BTreeMap<NodeId, Seal> {
        let Some(id) = version else {
            return BTreeMap::new();
        };
        let mut out: BTreeMap<NodeId, Seal> = a
            .iter()
            .filter(|(_, s)| s.version == id)
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        for (node, seal) in b.into_iter().filter(|(_, s)| s.version == id) {
            match out.get(&node) {
                Some(mine) if *mine <= seal => {}
                _ => {
                    out.insert(node, seal);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
