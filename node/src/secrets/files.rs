//! The files of an instance's secrets and configs, kept on a memory-backed filesystem only.
//!
//! A [`FileArea`] is one agent's root directory for them, on tmpfs or ramfs, created 0700. It
//! is chosen on first use from, in order: `/run/starling/<hash>` (when `/run` is tmpfs and the
//! agent may write there), `$XDG_RUNTIME_DIR/starling/<hash>`, `/dev/shm/starling-<uid>/<hash>`;
//! `<hash>` is a short hash of the agent's data directory, so two agents on one host never
//! share a root, and one agent finds its root again after a restart. Each candidate is checked
//! with statfs; when none is memory-backed the write fails with "no tmpfs for secrets: ..."
//! (and so does the instance's start): secrets never reach a disk.
//!
//! Under the root each instance has its directory, `<workload>-<index>-<instance>`, holding
//! `secrets/<NAME>/<entry>` and `configs/<NAME>/<entry>`. Directories are 0700, secret files
//! 0400 and config files 0444, all owned by the agent's user, which is the user its replicas
//! run as (neither runtime has a user option yet; one that gets it must chown to it).
//!
//! Each file is written atomically: into a temporary file in its set's directory, then renamed
//! over the entry, so a replica re-reading it sees the old content or the new, never a part.
//! The set's directory itself stays, which is what lets a container see a rewrite through the
//! bind mount of that directory. A rewrite removes entries and sets no longer given. Wiping an
//! instance overwrites its files with zeros before unlinking them: tmpfs pages are not cleared
//! when freed. The instance directory is derived from the replica and instance alone, so an
//! adopted instance's files are found again after an agent restart; the directories no
//! adopted instance claims are wiped then ([`FileArea::wipe_except`]).

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use starling_protocol::placement::ReplicaId;

use crate::runtime::{FileKind, FileSet};

pub use self::rules::{TARGET_BYTES_MAX, check};

/// Longest entry (file) name, in bytes.
pub const ENTRY_NAME_BYTES_MAX: usize = 253;
/// Most file sets one instance receives.
pub const FILE_SETS_MAX: usize = 64;
/// Most entries in one file set.
pub const ENTRIES_PER_SET_MAX: usize = 256;

/// Mode of every directory: only the owner may list or enter it.
const DIR_MODE: u32 = 0o700;
/// Name of the file an entry is written to before it is renamed over the entry. `~` is never
/// in an entry's name, so it cannot clash with one.
const TEMP_NAME: &str = "~writing";
/// Deepest a wipe descends below an instance directory (kind, set, entry), plus one: anything
/// deeper was not written here.
const WIPE_DEPTH_MAX: u32 = 4;
/// statfs magic numbers of the memory-backed filesystems (linux/magic.h).
const TMPFS_MAGIC: i128 = 0x0102_1994;
const RAMFS_MAGIC: i128 = 0x8584_58f6;

/// Why files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// No candidate root is on tmpfs or ramfs (each candidate's reason, in order).
    #[error("no tmpfs for secrets: {0}")]
    NoTmpfs(String),
    /// A file set breaks a rule (a name, a target, a limit); nothing was written.
    #[error("{0}")]
    Refused(String),
    /// The filesystem said no, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What was being written or removed.
        what: String,
        /// The error.
        source: io::Error,
    },
}

impl FileKind {
    /// The directory of this kind's sets in an instance's directory.
    pub fn dir_name(self) -> &'static str {
        match self {
            FileKind::Secret => "secrets",
            FileKind::Config => "configs",
        }
    }

    /// The mode of this kind's files: secrets are for their owner alone.
    pub fn file_mode(self) -> u32 {
        match self {
            FileKind::Secret => 0o400,
            FileKind::Config => 0o444,
        }
    }

    pub(super) fn noun(self) -> &'static str {
        match self {
            FileKind::Secret => "secret",
            FileKind::Config => "config",
        }
    }
}

impl FileSet {
    /// Where a container sees this set: its target, or `/run/secrets/NAME` (secrets) or
    /// `/run/configs/NAME` (configs).
    pub fn container_target(&self) -> String {
        self.target
            .clone()
            .unwrap_or_else(|| format!("/run/{}/{}", self.kind.dir_name(), self.name))
    }
}

/// Whether file sets may name a target (containers) or must not (processes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Targets {
    /// A container: each set is mounted at its target.
    Allowed,
    /// A process: it is told the directory, a target would be ignored.
    Refused,
}

/// One agent's memory-backed root for its instances' files, chosen on first use (see the
/// module doc). Cheap to clone; clones share the choice, so the process and container
/// runtimes of one agent use one root.
#[derive(Debug, Clone)]
pub struct FileArea {
    inner: Arc<Area>,
}

#[derive(Debug)]
struct Area {
    candidates: Vec<Candidate>,
    /// Candidates left out before any was tried, and why (for the "no tmpfs" reason).
    skipped: Vec<String>,
    /// The index of the candidate in use.
    chosen: Mutex<Option<usize>>,
    /// Held while writing or wiping: two rewrites of one set would share its temporary file.
    writing: Mutex<()>,
}

/// A possible root: `base` must exist on tmpfs; `below` are created under it, each 0700 and
/// owned by the agent's user (an existing one someone else owns is refused: `/dev/shm` is
/// writable by all).
#[derive(Debug)]
struct Candidate {
    base: PathBuf,
    below: Vec<String>,
}

impl FileArea {
    /// The area of the agent whose data directory is `data_dir` (any directory unique to the
    /// agent will do; the process runtime passes its state directory).
    pub fn for_data_dir(data_dir: &Path) -> Self {
        // Not canonicalized: the directory may not exist yet, and the hash must not change
        // once it does.
        let absolute = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        Self::for_key(absolute.as_os_str().as_bytes())
    }

    /// The area identified by `key` (the bytes hashed into its root's name).
    pub fn for_key(key: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, key);
        let hash: String = digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let uid = nix::unistd::geteuid();
        let mut candidates = vec![Candidate {
            base: PathBuf::from("/run"),
            below: vec!["starling".into(), hash.clone()],
        }];
        let mut skipped = Vec::new();
        match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
            Some(dir) if dir.is_absolute() => candidates.push(Candidate {
                base: dir,
                below: vec!["starling".into(), hash.clone()],
            }),
            Some(_) => skipped.push("$XDG_RUNTIME_DIR is not an absolute path".to_string()),
            None => skipped.push("$XDG_RUNTIME_DIR is not set".to_string()),
        }
        candidates.push(Candidate {
            base: PathBuf::from("/dev/shm"),
            below: vec![format!("starling-{uid}"), hash],
        });
        Self::new(candidates, skipped)
    }

    /// An area at `dir` exactly (tests; an operator's choice): its parent must exist on
    /// tmpfs or ramfs.
    pub fn at(dir: &Path) -> Self {
        let candidate = match (dir.parent(), dir.file_name()) {
            (Some(parent), Some(name)) => Candidate {
                base: parent.to_path_buf(),
                below: vec![name.to_string_lossy().into_owned()],
            },
            _ => Candidate {
                base: dir.to_path_buf(),
                below: Vec::new(),
            },
        };
        Self::new(vec![candidate], Vec::new())
    }

    fn new(candidates: Vec<Candidate>, skipped: Vec<String>) -> Self {
        FileArea {
            inner: Arc::new(Area {
                candidates,
                skipped,
                chosen: Mutex::new(None),
                writing: Mutex::new(()),
            }),
        }
    }

    /// The root, created if needed (0700) and checked to be memory-backed; or why there is
    /// none.
    pub fn root(&self) -> Result<PathBuf, FilesError> {
        let area = &self.inner;
        let mut chosen = lock(&area.chosen);
        // Made again if it went (a cleaned /run/user), in the same place.
        if let Some(dir) = (*chosen).and_then(|i| area.candidates[i].prepare().ok()) {
            return Ok(dir);
        }
        let mut reasons = Vec::new();
        for (i, candidate) in area.candidates.iter().enumerate() {
            match candidate.prepare() {
                Ok(dir) => {
                    *chosen = Some(i);
                    return Ok(dir);
                }
                Err(why) => reasons.push(why),
            }
        }
        reasons.extend(area.skipped.iter().cloned());
        Err(FilesError::NoTmpfs(reasons.join("; ")))
    }

    /// The root when it exists already (nothing is created): where a wipe looks.
    fn existing_root(&self) -> Option<PathBuf> {
        let area = &self.inner;
        let mut chosen = lock(&area.chosen);
        if let Some(i) = *chosen {
            return Some(area.candidates[i].path()).filter(|p| p.is_dir());
        }
        let (i, dir) = area.candidates.iter().enumerate().find_map(|(i, c)| {
            let dir = c.path();
            (dir.is_dir() && memory_backed(&dir).is_ok()).then_some((i, dir))
        })?;
        *chosen = Some(i);
        Some(dir)
    }

    /// The directory of an instance's files, when it has one.
    pub fn instance_dir(&self, replica: &ReplicaId, instance: u64) -> Option<PathBuf> {
        let dir = self
            .existing_root()?
            .join(instance_dir_name(replica, instance));
        dir.is_dir().then_some(dir)
    }

    /// Writes a new instance's files before it starts and returns its directory. Sets are
    /// checked first ([`check`]); on any failure nothing of the instance's is left.
    pub fn write(
        &self,
        replica: &ReplicaId,
        instance: u64,
        files: &[FileSet],
        targets: Targets,
    ) -> Result<PathBuf, FilesError> {
        check(files, targets)?;
        let dir = self.root()?.join(instance_dir_name(replica, instance));
        let _writing = lock(&self.inner.writing);
        let written = make_private_dir(&dir).and_then(|()| sync(&dir, files));
        if written.is_err() {
            let _ = wipe_path(&dir, WIPE_DEPTH_MAX);
        }
        written.map(|()| dir)
    }

    /// Rewrites a running instance's files in place: `files` are the sets it started with
    /// (a new one is refused: a container could not see it); entries and sets no longer
    /// given are removed.
    pub fn refresh(
        &self,
        replica: &ReplicaId,
        instance: u64,
        files: &[FileSet],
        targets: Targets,
    ) -> Result<(), FilesError> {
        check(files, targets)?;
        let Some(dir) = self.instance_dir(replica, instance) else {
            if files.is_empty() {
                return Ok(());
            }
            return Err(FilesError::Refused(format!(
                "{}/{} instance {instance} started without secrets or configs; giving it some needs a new instance",
                replica.workload, replica.index
            )));
        };
        if let Some(new) = files
            .iter()
            .find(|set| !dir.join(set.kind.dir_name()).join(&set.name).is_dir())
        {
            return Err(FilesError::Refused(format!(
                "{} {} is new to {}/{} instance {instance}: a set it did not start with needs a new instance",
                new.kind.noun(),
                new.name,
                replica.workload,
                replica.index
            )));
        }
        let _writing = lock(&self.inner.writing);
        sync(&dir, files)
    }

    /// Wipes an instance's files (zeros, then unlink), when it is gone. A failure is logged:
    /// the caller has nothing better to do about it.
    pub fn wipe(&self, replica: &ReplicaId, instance: u64) {
        let Some(root) = self.existing_root() else {
            return;
        };
        let dir = root.join(instance_dir_name(replica, instance));
        let _writing = lock(&self.inner.writing);
        match wipe_path(&dir, WIPE_DEPTH_MAX) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!("cannot wipe {}: {e}", dir.display());
            }
            _ => {}
        }
    }

    /// Wipes every instance directory not named in `keep` (see [`instance_dir_name`]): after
    /// an agent restart, the files of instances nobody adopted. Returns how many it wiped.
    pub fn wipe_except(&self, keep: &BTreeSet<String>) -> usize {
        let Some(root) = self.existing_root() else {
            return 0;
        };
        let Ok(entries) = fs::read_dir(&root) else {
            return 0;
        };
        let _writing = lock(&self.inner.writing);
        let mut wiped = 0;
        for entry in entries.flatten() {
            if keep.contains(entry.file_name().to_string_lossy().as_ref()) {
                continue;
            }
            match wipe_path(&entry.path(), WIPE_DEPTH_MAX) {
                Ok(()) => wiped += 1,
                Err(e) => tracing::warn!("cannot wipe {}: {e}", entry.path().display()),
            }
        }
        wiped
    }
}

/// The name of an instance's directory under the root. Unambiguous although workload names
/// hold `-`: index and instance are the last two fields, and are numbers.
pub fn instance_dir_name(replica: &ReplicaId, instance: u64) -> String {
    format!("{}-{}-{instance}", replica.workload, replica.index)
}

impl Candidate {
    fn path(&self) -> PathBuf {
        let mut dir = self.base.clone();
        dir.extend(&self.below);
        dir
    }

    /// Creates the root below `base` (or checks what is there) and returns it, or says why
    /// this candidate cannot be used.
    fn prepare(&self) -> Result<PathBuf, String> {
        memory_backed(&self.base)?;
        let mut dir = self.base.clone();
        for part in &self.below {
            dir.push(part);
            match fs::DirBuilder::new().mode(DIR_MODE).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
            }
            owned_private(&dir)?;
        }
        // A mount below the base could be something else.
        memory_backed(&dir)?;
        Ok(dir)
    }
}

/// Whether `path` is on tmpfs or ramfs.
fn memory_backed(path: &Path) -> Result<(), String> {
    let stat = nix::sys::statfs::statfs(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let magic = i128::from(stat.filesystem_type().0);
    if magic == TMPFS_MAGIC || magic == RAMFS_MAGIC {
        Ok(())
    } else {
        Err(format!(
            "{} is not tmpfs or ramfs (filesystem magic {magic:#x})",
            path.display()
        ))
    }
}

/// `dir` is a directory (not a link to one) the agent's user owns, made 0700 if it was not.
fn owned_private(dir: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let uid = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != uid {
        return Err(format!(
            "{} is not a directory owned by uid {uid}; remove it or set $XDG_RUNTIME_DIR",
            dir.display()
        ));
    }
    if meta.mode() & 0o7777 != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| format!("cannot make {} private: {e}", dir.display()))?;
    }
    Ok(())
}

fn make_private_dir(dir: &Path) -> Result<(), FilesError> {
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_error("create", dir, e)),
        _ => owned_private(dir).map_err(FilesError::Refused),
    }
}

/// Makes an instance directory hold exactly `files`: each set written, entries and sets not
/// in `files` removed.
fn sync(dir: &Path, files: &[FileSet]) -> Result<(), FilesError> {
    for set in files {
        let kind_dir = dir.join(set.kind.dir_name());
        make_private_dir(&kind_dir)?;
        let set_dir = kind_dir.join(&set.name);
        make_private_dir(&set_dir)?;
        for (name, content) in &set.entries {
            write_entry(&set_dir, name, content, set.kind.file_mode())?;
        }
        let keep: BTreeSet<&str> = set.entries.iter().map(|(n, _)| n.as_str()).collect();
        // Entries are files: depth 1 leaves anything nested deeper in place, with an error.
        remove_others(&set_dir, &keep, 1)?;
    }
    for kind in [FileKind::Secret, FileKind::Config] {
        let keep: BTreeSet<&str> = files
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.name.as_str())
            .collect();
        // Sets hold files.
        remove_others(&dir.join(kind.dir_name()), &keep, 2)?;
    }
    Ok(())
}

/// Wipes what `dir` holds beyond `keep` (nothing when `dir` does not exist).
fn remove_others(dir: &Path, keep: &BTreeSet<&str>, depth: u32) -> Result<(), FilesError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("list", dir, e)),
    };
    for entry in entries.flatten() {
        if !keep.contains(entry.file_name().to_string_lossy().as_ref()) {
            let path = entry.path();
            wipe_path(&path, depth).map_err(|e| io_error("remove", &path, e))?;
        }
    }
    Ok(())
}

/// Writes one entry atomically: a temporary file beside it, given its mode, renamed over it.
fn write_entry(dir: &Path, name: &str, content: &[u8], mode: u32) -> Result<(), FilesError> {
    let temp = dir.join(TEMP_NAME);
    // Left by a write cut short; wiped, as it may hold a secret.
    let _ = wipe_path(&temp, 0);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| io_error("create", &temp, e))?;
    let written = file
        .write_all(content)
        .and_then(|()| file.set_permissions(fs::Permissions::from_mode(mode)));
    drop(file);
    let target = dir.join(name);
    let renamed = written.and_then(|()| fs::rename(&temp, &target));
    if let Err(e) = renamed {
        let _ = wipe_path(&temp, 0);
        return Err(io_error("write", &target, e));
    }
    Ok(())
}

/// Removes `path` and, for a directory, what it holds down to `depth` levels; files are
/// overwritten with zeros first. Links are removed, never followed. Carries on past a failure
/// and returns the first.
fn wipe_path(path: &Path, depth: u32) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        if meta.is_file() {
            // Best effort: the unlink below is what matters.
            let _ = zero_file(path, meta.len());
        }
        return fs::remove_file(path);
    }
    if depth == 0 {
        return Err(io::Error::other(format!(
            "{} is nested deeper than anything written here",
            path.display()
        )));
    }
    let mut first_error = None;
    for entry in fs::read_dir(path)? {
        if let Err(e) = entry.and_then(|e| wipe_path(&e.path(), depth - 1)) {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => fs::remove_dir(path),
    }
}

/// Overwrites a file's content with zeros in place (on tmpfs, the same pages).
fn zero_file(path: &Path, len: u64) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    let mut file = OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)?;
    let zeros = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let chunk = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        file.write_all(&zeros[..chunk])?;
        left -= chunk as u64;
    }
    Ok(())
}

fn io_error(doing: &str, path: &Path, source: io::Error) -> FilesError {
    FilesError::Io {
        what: format!("cannot {doing} {}", path.display()),
        source,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing is left half-done under these locks that a later holder could trip on.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

mod rules;
#[cfg(test)]
mod tests;
