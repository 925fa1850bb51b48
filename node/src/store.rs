//! The node's durable state: identity, desired state, last assignment, last fleet view.
//!
//! Every file is written atomically: write a temporary file, fsync it, rename it over the old
//! one, fsync the directory. A power cut leaves either the old or the new file, never a torn
//! one. Each file carries a magic, a format version and a checksum, so a damaged file is
//! refused with its path instead of being half-read.
//!
//! Everything here is private to the agent's user: files are created 0600 (the temporary file
//! already, so there is no moment when they are readable by others) and the data dir 0700,
//! because the state holds specs and the dir holds keys and the API socket.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
/// Format of `desired.bin`: 4 since `uses` (3: rollouts; 2: revision ids and write records;
/// 1 to 3 are still read).
const DESIRED_VERSION: u16 = 6;
/// Largest state file read back (64 MiB): far above any real desired state.
const FILE_BYTES_MAX: u64 = 64 << 20;
/// Mode of every file written: the owner reads and writes, nobody else anything.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the data dir and of the dirs holding keys.
pub const DIR_MODE: u32 = 0o700;
/// Permission bits for anyone but the owner.
const OTHERS_BITS: u32 = 0o077;

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
    health: Arc<StoreHealth>,
}

/// Whether the node's state can be written. A store that cannot write refuses every API write
/// and leaves lease files stale, so its failures are counted and kept for `/metrics`, the log
/// and `starling get nodes` rather than only answered to the caller who hit them.
#[derive(Debug, Default)]
pub struct StoreHealth {
    errors: AtomicU64,
    /// The last failure, until a write succeeds again.
    problem: Mutex<Option<String>>,
}

impl StoreHealth {
    /// Failed writes since the agent started.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The last failure while writes still fail; `None` once one succeeds.
    pub fn problem(&self) -> Option<String> {
        self.lock().clone()
    }

    /// Counts and logs a failed write (of the store's files or of a file it looks after,
    /// such as a replica's lease file).
    pub fn record_failure(&self, error: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!("cannot write this node's state: {error}");
        *self.lock() = Some(error.to_string());
    }

    /// Marks the store healthy again after a successful write.
    pub fn record_success(&self) {
        let mut problem = self.lock();
        if problem.take().is_some() {
            tracing::info!("this node's state can be written again");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.problem.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store {
    /// Opens the data dir `dir`, creating it 0700 if needed and tightening it to 0700 if
    /// others have access (see [`create_private_dir`]).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        create_private_dir(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Store {
            dir,
            health: Arc::default(),
        })
    }

    /// Its write failures, shared with whoever reports them.
    pub fn health(&self) -> Arc<StoreHealth> {
        self.health.clone()
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

    /// The desired state (empty when never written). A state stored by an earlier build
    /// (format 1, before revision ids; format 2, before rollouts; format 3, before `uses`; format 4, before secrets and configs; format 5, before the tombstone horizon) is
    /// converted as it is read.
    pub fn desired(&self) -> Result<DesiredState, StoreError> {
        let path = self.dir.join("desired.bin");
        match self.read_body(
            "desired.bin",
            &[FORMAT_VERSION, 2, 3, 4, 5, DESIRED_VERSION],
        )? {
            None => Ok(DesiredState::default()),
            Some((1, body)) => starling_protocol::desired::legacy::decode_v1(&body)
                .map_err(|why| StoreError::Corrupt { path, why }),
            Some((2, body)) => starling_protocol::desired::legacy::decode_v2(&body)
                .map_err(|why| StoreError::Corrupt { path, why }),
            Some((3, body)) => starling_protocol::desired::legacy::decode_v3(&body)
                .map_err(|why| StoreError::Corrupt { path, why }),
            Some((4, body)) => starling_protocol::desired::legacy::decode_v4(&body)
                .map_err(|why| StoreError::Corrupt { path, why }),
            Some((5, body)) => starling_protocol::desired::legacy::decode_v5(&body)
                .map_err(|why| StoreError::Corrupt { path, why }),
            Some((_, body)) => postcard::from_bytes(&body).map_err(|e| StoreError::Corrupt {
                path,
                why: e.to_string(),
            }),
        }
    }

    /// Stores the desired state durably; the API answers only after this returns.
    pub fn write_desired(&self, desired: &DesiredState) -> Result<(), StoreError> {
        self.write_as("desired.bin", DESIRED_VERSION, desired)
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

    /// The generation of a new start of this node: the wall clock, but always above the
    /// generation of the start before (kept in `generation.bin`). Peers refuse packets from an
    /// older generation than one they heard (replay protection) and gossip ignores it, so a
    /// start on a clock set back (a device without a real-time clock, before NTP) would
    /// otherwise leave the node unheard until the clock caught up with its previous start.
    pub fn next_generation(&self, now_ms: u64) -> Result<u64, StoreError> {
        let last: Option<u64> = self.read("generation.bin")?;
        let next = now_ms.max(last.map_or(0, |l| l.saturating_add(1)));
        self.write("generation.bin", &next)?;
        Ok(next)
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
        self.write_as(name, FORMAT_VERSION, value)
    }

    fn write_as<T: Serialize>(
        &self,
        name: &str,
        version: u16,
        value: &T,
    ) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        let body = postcard::to_allocvec(value).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        let mut bytes = Vec::with_capacity(body.len() + 14);
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&hash64(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        let written = write_atomic(&path, &bytes);
        match &written {
            Ok(()) => self.health.record_success(),
            Err(e) => self.health.record_failure(e),
        }
        written
    }

    fn read<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        let Some((_, body)) = self.read_body(name, &[FORMAT_VERSION])? else {
            return Ok(None);
        };
        postcard::from_bytes(&body)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: self.dir.join(name),
                why: e.to_string(),
            })
    }

    /// The checked body of a state file and its format version, one of `versions`.
    fn read_body(
        &self,
        name: &str,
        versions: &[u16],
    ) -> Result<Option<(u16, Vec<u8>)>, StoreError> {
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
        let mut bytes = fs::read(&path).map_err(io)?;
        if bytes.len() < 14 || bytes[..4] != MAGIC {
            return Err(corrupt("not a Starling state file".into()));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if !versions.contains(&version) {
            return Err(corrupt(format!(
                "format version {version}, this build reads {versions:?}"
            )));
        }
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&bytes[6..14]);
        if u64::from_le_bytes(sum) != hash64(&bytes[14..]) {
            return Err(corrupt("checksum mismatch".into()));
        }
        // The body in place: the desired state can be tens of MiB, no second copy.
        bytes.drain(..14);
        Ok(Some((version, bytes)))
    }
}

/// Creates `dir` private to this user: 0700 when created, and tightened to 0700 when it
/// exists with bits for others (a dir made by an older version, or by `mkdir`). Missing
/// parents get the default mode: they hold nothing of ours.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = fs::metadata(dir)?.permissions().mode();
            if mode & OTHERS_BITS != 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))?;
                tracing::info!(
                    "{} was mode {:04o}; tightened to {DIR_MODE:04o}",
                    dir.display(),
                    mode & 0o7777
                );
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `path` so that a crash at any point leaves the old or the new contents.
/// The file ends up 0600 whatever mode an older one had: the rename replaces it with the
/// temporary file, which is created 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StoreError::Io { path: p, source }
    };
    let tmp = path.with_extension("tmp");
    // A temporary file left by a crash keeps the mode it was made with: start a new one.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp)(e)),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
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
    fn generations_grow_across_starts_whatever_the_clock_did() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        assert_eq!(store.next_generation(1_000_000).expect("first"), 1_000_000);
        // The clock was set back ten minutes before the next start.
        assert_eq!(store.next_generation(400_000).expect("second"), 1_000_001);
        let again = Store::open(dir.path()).expect("open");
        assert_eq!(again.next_generation(400_100).expect("third"), 1_000_002);
        // Once the clock is ahead again it leads.
        assert_eq!(again.next_generation(2_000_000).expect("fourth"), 2_000_000);
    }

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

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn the_data_dir_is_created_0700_and_state_files_0600() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("data");
        let store = Store::open(&dir).expect("open");
        assert_eq!(mode(&dir), 0o700);
        store
            .write_desired(&DesiredState::default())
            .expect("write");
        store.write_assignment(&[]).expect("write");
        for name in ["desired.bin", "assignment.bin"] {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
    }

    #[test]
    fn a_wider_data_dir_is_tightened_and_old_files_replaced_private() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("data");
        fs::create_dir(&dir).expect("mkdir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let desired = dir.join("desired.bin");
        fs::write(&desired, b"old").expect("write");
        fs::set_permissions(&desired, fs::Permissions::from_mode(0o644)).expect("chmod");
        // A temporary file a crash left behind, readable by all.
        let stale = dir.join("desired.tmp");
        fs::write(&stale, b"half").expect("write");
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o666)).expect("chmod");
        let store = Store::open(&dir).expect("open");
        assert_eq!(mode(&dir), 0o700);
        store
            .write_desired(&DesiredState::default())
            .expect("write");
        assert_eq!(mode(&desired), 0o600);
        assert!(!stale.exists());
    }

    #[test]
    fn a_failed_write_is_counted_and_kept_until_a_write_succeeds() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("data");
        let store = Store::open(&dir).expect("open");
        let health = store.health();
        // The dir vanishing makes the temporary file impossible to create, as EMFILE would.
        fs::remove_dir(&dir).expect("rmdir");
        let err = store.write_assignment(&[]).expect_err("no dir");
        assert_eq!(health.errors(), 1);
        let problem = health.problem().expect("failing");
        assert!(
            problem.contains("assignment.tmp"),
            "{problem} names the file"
        );
        assert_eq!(problem, err.to_string());
        create_private_dir(&dir).expect("mkdir");
        store.write_assignment(&[]).expect("write");
        assert_eq!(health.problem(), None, "healthy again");
        assert_eq!(health.errors(), 1, "the count stays");
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
