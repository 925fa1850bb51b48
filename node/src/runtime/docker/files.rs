//! An instance's secrets and configs in a container: written to its directory on tmpfs
//! before the container is created, each set's directory bind-mounted read-only at its
//! target (the directory, not its files: a rewrite renames new files into it, which a mount
//! of a single file would never show), rewritten and signalled on a refresh.

use bollard::models::{Mount, MountType};
use bollard::query_parameters::KillContainerOptionsBuilder;
use nix::sys::signal::Signal;
use starling_protocol::placement::ReplicaId;

use super::ContainerRuntime;
use crate::runtime::{FileSet, RuntimeError, StartRequest};
use crate::secrets::files::Targets;

impl ContainerRuntime {
    /// Writes a new instance's files and returns their mounts, or says why it cannot start
    /// (no tmpfs, a refused set). Nothing is left behind on failure.
    pub(super) fn place_files(&self, request: &StartRequest) -> Result<Vec<Mount>, String> {
        if request.files.is_empty() {
            return Ok(Vec::new());
        }
        let dir = self
            .files
            .write(
                &request.replica,
                request.instance,
                &request.files,
                Targets::Allowed,
            )
            .map_err(|e| e.to_string())?;
        let mut mounts = Vec::new();
        for set in &request.files {
            let source = dir.join(set.kind.dir_name()).join(&set.name);
            let Some(source) = source.to_str() else {
                self.files.wipe(&request.replica, request.instance);
                return Err(format!(
                    "{} is not UTF-8; the engine cannot mount it",
                    source.display()
                ));
            };
            mounts.push(Mount {
                target: Some(set.container_target()),
                source: Some(source.to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            });
        }
        Ok(mounts)
    }

    /// Rewrites a running instance's files (see [`crate::runtime::Runtime::refresh_files`]),
    /// then has the engine send the container `signal`. Targets cannot move: a container's
    /// mounts are fixed when it is created.
    pub async fn refresh_files(
        &self,
        replica: &ReplicaId,
        instance: u64,
        files: Vec<FileSet>,
        signal: Option<i32>,
    ) -> Result<(), RuntimeError> {
        // Checked before anything is rewritten, so a bad signal changes nothing.
        let signal = signal
            .map(|number| {
                Signal::try_from(number).map_err(|e| RuntimeError::Io {
                    what: format!("signal {number}"),
                    source: e.into(),
                })
            })
            .transpose()?;
        let Some(container) = self
            .lock()
            .get(&(replica.clone(), instance))
            .map(|i| i.container.clone())
        else {
            return Err(RuntimeError::NotRunning(format!(
                "{}/{} instance {instance}",
                replica.workload, replica.index
            )));
        };
        self.files
            .refresh(replica, instance, &files, Targets::Allowed)?;
        let Some(signal) = signal else {
            return Ok(());
        };
        let not_sent = |why: String| RuntimeError::Io {
            what: format!("cannot send {signal} to container {container}"),
            source: std::io::Error::other(why),
        };
        let docker = self.docker().map_err(not_sent)?;
        let options = KillContainerOptionsBuilder::default()
            .signal(signal.as_str())
            .build();
        docker
            .kill_container(&container, Some(options))
            .await
            .map_err(|e| not_sent(self.explain(e)))
    }
}
