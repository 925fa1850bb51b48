//! An instance's secrets and configs in the process runtime: written before its process is
//! spawned and named to it by its environment, rewritten and signalled on a refresh, wiped
//! when the start fails (here) or the instance is gone (`finish`).

use std::path::PathBuf;

use nix::sys::signal::Signal;
use starling_protocol::placement::ReplicaId;

use super::{Inner, signal_group, signal_one};
use crate::runtime::{FileKind, FileSet, RuntimeError, StartRequest};
use crate::secrets::files::Targets;

/// The variable naming the directory of an instance's secrets (one subdirectory per secret).
pub const SECRETS_DIR_ENV: &str = "STARLING_SECRETS_DIR";
/// The variable naming the directory of an instance's configs (one subdirectory per config).
pub const CONFIGS_DIR_ENV: &str = "STARLING_CONFIGS_DIR";

/// The files of an instance being started: wiped when dropped, unless [`Self::keep`] said
/// the instance runs.
pub(super) struct PlacedFiles<'a> {
    inner: &'a Inner,
    replica: ReplicaId,
    instance: u64,
    env: Vec<(&'static str, PathBuf)>,
    kept: bool,
}

impl PlacedFiles<'_> {
    /// The variables naming the directories, for the instance's environment.
    pub(super) fn env(&self) -> &[(&'static str, PathBuf)] {
        &self.env
    }

    /// The instance runs: its exit wipes the files from now on.
    pub(super) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for PlacedFiles<'_> {
    fn drop(&mut self) {
        if !self.kept && !self.env.is_empty() {
            self.inner.files.wipe(&self.replica, self.instance);
        }
    }
}

impl Inner {
    /// Writes a new instance's files, or says why it cannot start (no tmpfs, a refused set).
    pub(super) fn place_files(&self, request: &StartRequest) -> Result<PlacedFiles<'_>, String> {
        let (replica, instance) = (&request.replica, request.instance);
        let mut env = Vec::new();
        if !request.files.is_empty() {
            let dir = self
                .files
                .write(replica, instance, &request.files, Targets::Refused)
                .map_err(|e| e.to_string())?;
            for (kind, var) in [
                (FileKind::Secret, SECRETS_DIR_ENV),
                (FileKind::Config, CONFIGS_DIR_ENV),
            ] {
                if request.files.iter().any(|set| set.kind == kind) {
                    env.push((var, dir.join(kind.dir_name())));
                }
            }
        }
        Ok(PlacedFiles {
            inner: self,
            replica: replica.clone(),
            instance,
            env,
            kept: false,
        })
    }

    /// Rewrites a live instance's files, then signals it as a stop would: a fenced instance
    /// through its fence (which passes the signal on to its command), any other as a group.
    pub(super) fn refresh_files(
        &self,
        replica: &ReplicaId,
        instance: u64,
        files: &[FileSet],
        signal: Option<i32>,
    ) -> Result<(), RuntimeError> {
        let not_running = || {
            RuntimeError::NotRunning(format!(
                "{}/{} instance {instance}",
                replica.workload, replica.index
            ))
        };
        // Checked before anything is rewritten, so a bad signal changes nothing.
        let signal = signal
            .map(|number| {
                Signal::try_from(number).map_err(|e| RuntimeError::Io {
                    what: format!("signal {number}"),
                    source: e.into(),
                })
            })
            .transpose()?;
        if self.pid_of(replica, instance).is_none() {
            return Err(not_running());
        }
        self.files
            .refresh(replica, instance, files, Targets::Refused)?;
        let Some(signal) = signal else {
            return Ok(());
        };
        // Looked up again: the instance may have exited while its files were written.
        let pid = self.pid_of(replica, instance).ok_or_else(not_running)?;
        if self.is_fenced(replica, instance) {
            signal_one(pid, signal);
        } else {
            signal_group(pid, signal);
        }
        Ok(())
    }
}
