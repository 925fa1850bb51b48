//! The node's durable state: identity, desired state, last assignment, last fleet view.
//!
//! Every file is written atomically: write a temporary file, fsync it, rename it over the old
//! one, fsync the directory. A power cut leaves either the old or the new file, never a torn
//! one. Each file carries a magic, a format version and a checksum, so a damaged file is
//! refused with its path instead of being half-read.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use starling_protocol::NodeId;
use starling_protocol::desired::DesiredState;
use starling_protocol::hash::hash64;
use starling_protocol::placement::{FleetView, ReplicaId};

/// File magic: "STRL".
const MAGIC: [u8; 4] = *b"STRL";
/// On-disk format version.
const FORMAT_VERSION: u16 = 1;
/// Largest state file read back (64 MiB): far above any real desired state.
const FILE_BYTES_MAX: u64 = 64 << 20;

/// Errors of the store; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file exists but cannot be trusted.
    #[error("{path} is damaged ({why}); move it aside to start from an empty state, or restore it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Who this node is, fixed when its data dir is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The node id.
    pub node: NodeId,
    /// When the data dir was created (ms since the epoch).
    pub created_ms: u64,
}

/// A node's data directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the data dir `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Store { dir })
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The identity, if the dir has one.
    pub fn identity(&self) -> Result<Option<Identity>, StoreError> {
        self.read("identity.bin")
    }

    /// Stores the identity (done once, at creation).
    pub fn write_identity(&self, identity: &Identity) -> Result<(), StoreError> {
        self.write("identity.bin", identity)
    }

    /// The desired state (empty when never written).
    pub fn desired(&self) -> Result<DesiredState, StoreError> {
        Ok(self.read("desired.bin")?.unwrap_or_default())
    }

    /// Stores the desired state durably; the API answers only after this returns.
    pub fn write_desired(&self, desired: &DesiredState) -> Result<(), StoreError> {
        self.write("desired.bin", desired)
    }

    /// The replicas this node ran, with revisions.
    pub fn assignment(&self) -> Result<Vec<(ReplicaId, u64)>, StoreError> {
        Ok(self.read("assignment.bin")?.unwrap_or_default())
    }

    /// Stores the replicas this node runs.
    pub fn write_assignment(&self, assignment: &[(ReplicaId, u64)]) -> Result<(), StoreError> {
        self.write("assignment.bin", &assignment.to_vec())
    }

    /// The fleet as last seen.
    pub fn view(&self) -> Result<Option<FleetView>, StoreError> {
        self.read("view.bin")
    }

    /// Stores the fleet view.
    pub fn write_view(&self, view: &FleetView) -> Result<(), StoreError> {
        self.write("view.bin", view)
    }

    /// A small named state file (checksummed), if present.
    pub fn read_value<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        self.read(name)
    }

    /// Stores a small named state file durably (write, fsync, rename, fsync dir).
    pub fn write_value<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        self.write(name, value)
    }

    fn write<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        let body = postcard::to_allocvec(value).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        let mut bytes = Vec::with_capacity(body.len() + 14);
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&hash64(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        write_atomic(&path, &bytes)
    }

    fn read<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        let path = self.dir.join(name);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let corrupt = |why: String| StoreError::Corrupt {
            path: path.clone(),
            why,
        };
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        if len > FILE_BYTES_MAX {
            return Err(corrupt(format!(
                "{len} bytes, over the limit of {FILE_BYTES_MAX}"
            )));
        }
        let bytes = fs::read(&path).map_err(io)?;
        if bytes.len() < 14 || bytes[..4] != MAGIC {
            return Err(corrupt("not a Starling state file".into()));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {version}, this build reads {FORMAT_VERSION}"
            )));
        }
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&bytes[6..14]);
        let body = &bytes[14..];
        if u64::from_le_bytes(sum) != hash64(body) {
            return Err(corrupt("checksum mismatch".into()));
        }
        postcard::from_bytes(body)
            .map(Some)
            .map_err(|e| corrupt(e.to_string()))
    }
}

/// Writes `bytes` to `path` so that a crash at any point leaves the old or the new contents.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StoreError::Io { path: p, source }
    };
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use starling_protocol::WorkloadName;

    use super::*;

    #[test]
    fn state_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        assert!(store.identity().expect("read").is_none());
        let identity = Identity {
            node: NodeId::new("n1").expect("valid"),
            created_ms: 5,
        };
        store.write_identity(&identity).expect("write");
        let assignment = vec![(
            ReplicaId {
                workload: WorkloadName::new("web").expect("valid"),
                index: 2,
            },
            7,
        )];
        store.write_assignment(&assignment).expect("write");
        let again = Store::open(dir.path()).expect("open");
        assert_eq!(again.identity().expect("read"), Some(identity));
        assert_eq!(again.assignment().expect("read"), assignment);
        assert!(again.desired().expect("read").is_empty());
        assert!(
            !dir.path().join("assignment.tmp").exists(),
            "no temporary file left behind"
        );
    }

    #[test]
    fn a_damaged_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.write_assignment(&[]).expect("write");
        let path = dir.path().join("assignment.bin");
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).expect("write");
        let err = store.assignment().expect_err("damaged");
        assert!(
            err.to_string()
                .contains("assignment.bin is damaged (checksum mismatch)"),
            "{err}"
        );
        fs::write(&path, b"garbage").expect("write");
        assert!(
            store
                .assignment()
                .expect_err("damaged")
                .to_string()
                .contains("not a Starling state file")
        );
    }
}
