//! The command that starts an instance: its program (or the fence around it) with its
//! arguments, its directory, its clean environment and its log.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use starling_protocol::spec::WorkloadSpec;

use super::Inner;
use super::logs::log_file;
use crate::runtime::StartRequest;
use crate::runtime::fence::{self, check_program};
use crate::runtime::ports::{self, PortMap};

impl Inner {
    /// The command that starts an instance: its program and arguments with `${port.NAME}`
    /// replaced, in the replica's directory, with a clean environment (`files_env` naming its
    /// secrets and configs among it) and both output streams appended to the replica's log
    /// (and whether a fence runs it).
    pub(super) fn command(
        &self,
        request: &StartRequest,
        ports: &PortMap,
        files_env: &[(&'static str, PathBuf)],
    ) -> Result<(tokio::process::Command, bool), String> {
        let (replica, spec) = (&request.replica, &request.spec);
        let Some(program) = &spec.command else {
            return Err("the process runtime needs `command` in the spec".into());
        };
        let dir = self.replica_dir(replica);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let log_path = log_file(&dir);
        self.rotate_one(&log_path);
        let cannot_open = |e| format!("cannot open the log {}: {e}", log_path.display());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(cannot_open)?;
        let stderr = log.try_clone().map_err(cannot_open)?;
        let search_path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let program = ports::substitute(program, ports);
        let args: Vec<String> = spec
            .args
            .iter()
            .map(|a| ports::substitute(a, ports))
            .collect();
        let (mut command, fenced) = self.launcher(spec, &program, &args, &dir, &search_path)?;
        command
            .env_clear()
            .env("PATH", &search_path)
            .env("HOME", &dir)
            .env("LANG", "C.UTF-8")
            .envs(&spec.env)
            .env("STARLING_WORKLOAD", replica.workload.as_str())
            .env("STARLING_REPLICA", replica.index.to_string())
            .env("STARLING_NODE", request.node.as_str())
            .env("STARLING_REVISION", request.revision.to_string())
            .envs(ports::env(ports))
            .envs(files_env.iter().cloned())
            .envs(request.env.iter().cloned())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(false);
        Ok((command, fenced))
    }

    /// What to execute for an instance: its program with `args`, or for a singleton the fence
    /// around them (then also whether it is fenced).
    fn launcher(
        &self,
        spec: &WorkloadSpec,
        program: &str,
        args: &[String],
        dir: &Path,
        search_path: &OsStr,
    ) -> Result<(tokio::process::Command, bool), String> {
        match self
            .config
            .fence_program
            .as_ref()
            .filter(|_| spec.singleton)
        {
            Some(fence) => {
                check_program(program, search_path)?;
                let lease_file = dir.join(fence::LEASE_FILE_NAME);
                let mut command = tokio::process::Command::new(fence);
                command.args(fence::fence_args(&lease_file, program, args));
                Ok((command, true))
            }
            None => {
                let mut command = tokio::process::Command::new(program);
                command.args(args);
                Ok((command, false))
            }
        }
    }
}
