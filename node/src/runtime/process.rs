//! The process runtime: replicas as plain child processes of the agent (the embedded default;
//! no container engine needed).
//!
//! Each replica instance runs in its own process group, in its own directory
//! `<state>/replicas/<workload>-<index>/`, with stdout and stderr appended straight to
//! `output.log` there. Writing to a file rather than a pipe lets a replica outlive the agent
//! (a pipe would break with the agent and kill the writer with SIGPIPE); the file is kept
//! bounded by copy-and-truncate rotation, which works because it is opened with O_APPEND.
//! `instance.json` records pid and kernel start time so a restarted agent re-adopts exactly
//! the processes it started (a reused pid has another start time) and never starts a duplicate.
//! CPU and memory limits go through cgroups when the host lets the agent write them (see
//! [`super::cgroup`]; a process joins its group just after spawn, a short unlimited window).
//!
//! A replica gets a clean environment: its spec's `env`, the `STARLING_*` variables, `PATH`,
//! `HOME` (its directory) and `LANG`, never the agent's own variables, which may hold paths to
//! keys or tokens. Dropping the runtime leaves replicas running (they are the next agent's to
//! adopt); the task waiting on each child keeps reaping and reporting it until it exits.
//!
//! A singleton's instance runs under `starling fence` when `fence_program` is set (see
//! [`super::fence`]): the fence is the group's leader and the tracked pid, its command runs in
//! the same group. A stop then sends SIGTERM to the fence alone, which passes it on to the
//! group once (signalling the group ourselves would hand the command a second SIGTERM, which
//! many programs take as "quit now"); the SIGKILL after the grace still goes to the group.
//!
//! When an instance's leader exits, the rest of its process group is killed so nothing it
//! started lingers as an orphan. That `killpg` runs after the leader was reaped, so in theory
//! its pid could already name a new group; Linux hands out pids cyclically, which makes that
//! reuse within microseconds practically impossible.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use starling_protocol::WorkloadName;
use starling_protocol::placement::ReplicaId;

use super::cgroup::{Cgroups, InstanceGroups};
use super::fence::{self, check_program};
use super::{EventSender, Runtime, RuntimeEvent, StartRequest};
use crate::store::write_atomic;

/// Settings of the process runtime.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// A replica's `output.log` is rotated past this size. Default 1 MiB.
    pub log_bytes_max: u64,
    /// Rotated logs kept (`output.log.1` ..). Default 2.
    pub log_files_kept: u32,
    /// How often adopted processes (not our children) are checked for exit, and logs for
    /// size (default 500 ms; at least [`POLL_INTERVAL_MIN`] for logs).
    pub poll_interval: Duration,
    /// How often a stop checks whether the instance is gone before its grace runs out
    /// (default 25 ms): the delay between an exit and the stop returning.
    pub stop_check_interval: Duration,
    /// The `starling` binary that runs singleton instances under `starling fence`, which stops
    /// them when their lease runs out even if the agent is gone. Default: none (unfenced).
    pub fence_program: Option<PathBuf>,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            log_bytes_max: 1 << 20,
            log_files_kept: 2,
            poll_interval: Duration::from_millis(500),
            stop_check_interval: Duration::from_millis(25),
            fence_program: None,
        }
    }
}

/// Shortest interval of the log-rotation task, whatever `poll_interval` says: rotation reads
/// every replica's log size, which must not become a busy loop.
pub const POLL_INTERVAL_MIN: Duration = Duration::from_millis(100);

/// Lines of log attached to an exit report.
const EXIT_LOG_LINES: usize = 20;
/// Most bytes of log attached to an exit report (it travels to the core and into events).
const EXIT_LOG_BYTES_MAX: u64 = 16 << 10;
/// Most bytes read from the end of a log to answer `log_tail`.
const TAIL_BYTES_MAX: u64 = 1 << 20;
/// Bytes read per step when scanning a log backwards for its last lines.
const TAIL_CHUNK_BYTES: u64 = 8 << 10;

/// What `instance.json` records about a running instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InstanceFile {
    pid: u32,
    start_time: u64,
    instance: u64,
    revision: u64,
    workload: String,
    index: u32,
    /// The pid is a fence's; absent in records written before fences existed.
    #[serde(default)]
    fenced: bool,
}

#[derive(Debug)]
struct Running {
    instance: u64,
    pid: u32,
    groups: InstanceGroups,
    fenced: bool,
}

struct Inner {
    state_dir: PathBuf,
    events: EventSender,
    config: ProcessConfig,
    cgroups: Result<Cgroups, String>,
    running: Mutex<BTreeMap<ReplicaId, Running>>,
}

/// The process runtime. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct ProcessRuntime {
    inner: Arc<Inner>,
}

impl ProcessRuntime {
    /// A runtime keeping its files under `state_dir` and reporting on `events`. Must be called
    /// inside a tokio runtime (it starts the log-rotation task).
    pub fn new(state_dir: PathBuf, events: EventSender, config: ProcessConfig) -> Self {
        let cgroups = Cgroups::detect();
        if let Err(why) = &cgroups {
            tracing::warn!("{why}: cpu/memory limits of process replicas will not be enforced");
        }
        let inner = Arc::new(Inner {
            state_dir,
            events,
            config,
            cgroups,
            running: Mutex::new(BTreeMap::new()),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let interval = inner.config.poll_interval.max(POLL_INTERVAL_MIN);
                inner.rotate_logs();
                drop(inner);
                tokio::time::sleep(interval).await;
            }
        });
        ProcessRuntime { inner }
    }

    /// Whether cpu/memory limits are enforced on this host.
    pub fn limits_enforced(&self) -> bool {
        self.inner.cgroups.is_ok()
    }

    /// One line for the start-up log about limits.
    pub fn limits_status(&self) -> String {
        match &self.inner.cgroups {
            Ok(c) => c.describe(),
            Err(why) => format!("{why}: cpu/memory limits will NOT be enforced"),
        }
    }

    /// The directory of a replica.
    pub fn replica_dir(&self, replica: &ReplicaId) -> PathBuf {
        self.inner.replica_dir(replica)
    }

    /// The pid of a replica's running instance.
    pub fn pid(&self, replica: &ReplicaId) -> Option<u32> {
        self.inner.lock().get(replica).map(|r| r.pid)
    }

    /// The cgroup directories of a replica's running instance (none without limits), where
    /// `runtime::usage` reads its CPU time.
    pub fn cgroup_dirs(&self, replica: &ReplicaId) -> Vec<PathBuf> {
        let running = self.inner.lock();
        running
            .get(replica)
            .map_or_else(Vec::new, |r| r.groups.dirs().to_vec())
    }
}

impl Runtime for ProcessRuntime {
    async fn start(&self, request: StartRequest) {
        let inner = self.inner.clone();
        let (replica, instance) = (request.replica.clone(), request.instance);
        if let Err(reason) = inner.clone().spawn(request).await {
            let _ = inner
                .events
                .send(RuntimeEvent::StartFailed {
                    replica,
                    instance,
                    reason,
                })
                .await;
        }
    }

    async fn stop(&self, replica: &ReplicaId, instance: u64, grace: Duration) {
        let Some(pid) = self.inner.pid_of(replica, instance) else {
            return;
        };
        if self.inner.is_fenced(replica) {
            signal_one(pid, Signal::SIGTERM);
        } else {
            signal_group(pid, Signal::SIGTERM);
        }
        let deadline = crate::clock::monotonic() + grace;
        while crate::clock::monotonic() < deadline {
            if self.inner.pid_of(replica, instance).is_none() {
                return;
            }
            tokio::time::sleep(self.inner.config.stop_check_interval).await;
        }
        if self.inner.pid_of(replica, instance).is_some() {
            tracing::warn!(
                "{}/{} did not stop within {grace:?} of SIGTERM; sending SIGKILL",
                replica.workload,
                replica.index
            );
            signal_group(pid, Signal::SIGKILL);
        }
    }

    async fn adopt(&self) -> usize {
        let inner = self.inner.clone();
        let Ok(entries) = fs::read_dir(inner.state_dir.join("replicas")) else {
            return 0;
        };
        let mut adopted = 0;
        for entry in entries.flatten() {
            let file = entry.path().join("instance.json");
            let Some((replica, record)) = read_record(&file) else {
                continue;
            };
            let tracked = inner.lock().get(&replica).map(|r| r.instance);
            if let Some(tracked) = tracked {
                // Started or adopted by this agent process already: adopting twice is a no-op.
                // A record of another instance can only be left over from a failed write;
                // taking it over would lose track of the instance this agent runs.
                if tracked != record.instance {
                    tracing::warn!(
                        "{}: instance {tracked} runs here; not adopting instance {}",
                        file.display(),
                        record.instance
                    );
                }
                continue;
            }
            if start_time(record.pid) != Some(record.start_time) {
                // Gone, or the pid now belongs to someone else: never adopt a stranger.
                let _ = fs::remove_file(&file);
                continue;
            }
            let groups = match &inner.cgroups {
                Ok(cgroups) => cgroups.existing(&group_name(&replica, record.instance)),
                Err(_) => InstanceGroups::default(),
            };
            let running = Running {
                instance: record.instance,
                pid: record.pid,
                groups,
                fenced: record.fenced,
            };
            inner.lock().insert(replica.clone(), running);
            let _ = inner
                .events
                .send(RuntimeEvent::Adopted {
                    replica: replica.clone(),
                    instance: record.instance,
                    revision: record.revision,
                })
                .await;
            tokio::spawn(inner.clone().watch_adopted(replica, record));
            adopted += 1;
        }
        adopted
    }

    async fn log_tail(&self, replica: &ReplicaId, lines: usize) -> Vec<String> {
        let log = self.inner.replica_dir(replica).join("output.log");
        tail_lines(&log, lines, TAIL_BYTES_MAX)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ReplicaId, Running>> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts and
        // removes), so a poisoned lock is still usable.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn replica_dir(&self, replica: &ReplicaId) -> PathBuf {
        self.state_dir
            .join("replicas")
            .join(format!("{}-{}", replica.workload, replica.index))
    }

    fn is_fenced(&self, replica: &ReplicaId) -> bool {
        self.lock().get(replica).is_some_and(|r| r.fenced)
    }

    fn pid_of(&self, replica: &ReplicaId, instance: u64) -> Option<u32> {
        self.lock()
            .get(replica)
            .filter(|r| r.instance == instance)
            .map(|r| r.pid)
    }

    async fn spawn(self: Arc<Self>, request: StartRequest) -> Result<(), String> {
        let StartRequest {
            replica,
            instance,
            revision,
            spec,
            node,
            env: extra_env,
        } = request;
        let Some(program) = spec.command.clone() else {
            return Err("the process runtime needs `command` in the spec".into());
        };
        if let Some(existing) = self.lock().get(&replica) {
            return Err(format!(
                "instance {} of this replica is still running here",
                existing.instance
            ));
        }
        let dir = self.replica_dir(&replica);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let log_path = dir.join("output.log");
        self.rotate_one(&log_path);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open the log {}: {e}", log_path.display()))?;
        let stderr = log
            .try_clone()
            .map_err(|e| format!("cannot open the log {}: {e}", log_path.display()))?;
        let search_path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let (mut command, fenced) = self.launcher(&spec, &program, &dir, &search_path)?;
        command
            .env_clear()
            .env("PATH", &search_path)
            .env("HOME", &dir)
            .env("LANG", "C.UTF-8")
            .envs(&spec.env)
            .env("STARLING_WORKLOAD", replica.workload.as_str())
            .env("STARLING_REPLICA", replica.index.to_string())
            .env("STARLING_NODE", node.as_str())
            .env("STARLING_REVISION", revision.to_string())
            .envs(extra_env)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(false);
        let launched = command
            .as_std()
            .get_program()
            .to_string_lossy()
            .into_owned();
        let mut child = command.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("command not found: {launched}"),
            std::io::ErrorKind::PermissionDenied => format!("command not executable: {launched}"),
            _ => format!("cannot start {launched}: {e}"),
        })?;
        let Some(pid) = child.id() else {
            return Err(format!("{program} exited before it could be tracked"));
        };
        let groups = self.limit(&replica, instance, pid, &spec, fenced);
        let record = InstanceFile {
            pid,
            start_time: start_time(pid).unwrap_or(0),
            instance,
            revision,
            workload: replica.workload.to_string(),
            index: replica.index,
            fenced,
        };
        if let Ok(bytes) = serde_json::to_vec(&record)
            && let Err(e) = write_atomic(&dir.join("instance.json"), &bytes)
        {
            tracing::warn!(
                "{}/{}: cannot record the instance, it will not be adopted after an agent restart: {e}",
                replica.workload,
                replica.index
            );
        }
        self.lock().insert(
            replica.clone(),
            Running {
                instance,
                pid,
                groups,
                fenced,
            },
        );
        let _ = self
            .events
            .send(RuntimeEvent::Started {
                replica: replica.clone(),
                instance,
            })
            .await;
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => status.code(),
                Err(_) => None,
            };
            self.finish(&replica, instance, pid, code).await;
        });
        Ok(())
    }

    /// What to execute for an instance: its program, or for a singleton the fence around it
    /// (then also whether it is fenced).
    fn launcher(
        &self,
        spec: &starling_protocol::spec::WorkloadSpec,
        program: &str,
        dir: &Path,
        search_path: &std::ffi::OsStr,
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
                command.args(fence::fence_args(&lease_file, program, &spec.args));
                Ok((command, true))
            }
            None => {
                let mut command = tokio::process::Command::new(program);
                command.args(&spec.args);
                Ok((command, false))
            }
        }
    }

    /// Puts the new process into its cgroups when its spec sets limits and the host allows it.
    fn limit(
        &self,
        replica: &ReplicaId,
        instance: u64,
        pid: u32,
        spec: &starling_protocol::spec::WorkloadSpec,
        fenced: bool,
    ) -> InstanceGroups {
        let Ok(cgroups) = &self.cgroups else {
            return InstanceGroups::default();
        };
        let name = group_name(replica, instance);
        let (cpu, memory) = (spec.resources.cpu_limit, spec.resources.memory_limit);
        match cgroups
            .create(&name, cpu, memory)
            .and_then(|g| g.attach(pid).map(|_| g))
        {
            Ok(groups) => {
                if fenced {
                    // The fence may have forked its command before it was moved: move that one
                    // too (whatever the fence forks from now on starts inside the groups). A
                    // child that is already gone needs no limit, hence no error.
                    for child in fence::children_of(pid) {
                        let _ = groups.attach(child);
                    }
                }
                groups
            }
            Err(e) => {
                tracing::warn!(
                    "{}/{}: limits not applied: {e}",
                    replica.workload,
                    replica.index
                );
                InstanceGroups::default()
            }
        }
    }

    /// The instance's leader exited: clean up and report.
    async fn finish(&self, replica: &ReplicaId, instance: u64, pid: u32, code: Option<i32>) {
        // Children the leader left behind in its group would be orphans: end them too.
        signal_group(pid, Signal::SIGKILL);
        let removed = {
            let mut running = self.lock();
            match running.get(replica) {
                Some(r) if r.instance == instance => running.remove(replica),
                _ => None,
            }
        };
        if let Some(r) = removed {
            if r.groups.is_limited() {
                tokio::spawn(r.groups.remove());
            }
            let file = self.replica_dir(replica).join("instance.json");
            let _ = fs::remove_file(file);
        }
        let log = self.replica_dir(replica).join("output.log");
        let log_tail = tail_lines(&log, EXIT_LOG_LINES, EXIT_LOG_BYTES_MAX);
        let _ = self
            .events
            .send(RuntimeEvent::Exited {
                replica: replica.clone(),
                instance,
                code,
                log_tail,
            })
            .await;
    }

    /// Watches a process this agent did not spawn (adopted) until it is gone.
    async fn watch_adopted(self: Arc<Self>, replica: ReplicaId, record: InstanceFile) {
        loop {
            tokio::time::sleep(self.config.poll_interval).await;
            if start_time(record.pid) != Some(record.start_time) {
                self.finish(&replica, record.instance, record.pid, None)
                    .await;
                return;
            }
            if self.pid_of(&replica, record.instance).is_none() {
                return;
            }
        }
    }

    fn rotate_logs(&self) {
        let dirs: Vec<PathBuf> = self.lock().keys().map(|r| self.replica_dir(r)).collect();
        for dir in dirs {
            self.rotate_one(&dir.join("output.log"));
        }
    }

    /// Copy-and-truncate rotation of one log past `log_bytes_max`.
    fn rotate_one(&self, log: &Path) {
        let size = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        if size <= self.config.log_bytes_max {
            return;
        }
        let kept = self.config.log_files_kept.max(1);
        let rotated = |n: u32| PathBuf::from(format!("{}.{n}", log.display()));
        let _ = fs::remove_file(rotated(kept));
        for n in (1..kept).rev() {
            let _ = fs::rename(rotated(n), rotated(n + 1));
        }
        if let Err(e) = fs::copy(log, rotated(1))
            .and_then(|_| OpenOptions::new().write(true).open(log)?.set_len(0))
        {
            tracing::warn!("cannot rotate {}: {e}", log.display());
        }
    }
}

fn signal_one(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
    }
}

fn signal_group(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// The kernel start time of a live, non-zombie process (field 22 of `/proc/<pid>/stat`).
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Reads an `instance.json` and checks it names the replica whose directory holds it.
fn read_record(file: &Path) -> Option<(ReplicaId, InstanceFile)> {
    let text = fs::read_to_string(file).ok()?;
    let parsed = serde_json::from_str::<InstanceFile>(&text)
        .map_err(|e| e.to_string())
        .and_then(|record| {
            let workload = WorkloadName::new(record.workload.clone()).map_err(|e| e.to_string())?;
            let replica = ReplicaId {
                workload,
                index: record.index,
            };
            // A record copied into another replica's directory would mix up logs and groups.
            let dir = file.parent().and_then(Path::file_name);
            let expected = format!("{}-{}", replica.workload, replica.index);
            if dir.and_then(|d| d.to_str()) == Some(expected.as_str()) {
                Ok((replica, record))
            } else {
                Err(format!("it names replica {expected}, not its directory"))
            }
        });
    match parsed {
        Ok(found) => Some(found),
        Err(why) => {
            tracing::warn!("ignoring {}: {why}", file.display());
            None
        }
    }
}

/// The cgroup name of one instance: unique per instance, so a replacement never meets the
/// group of its predecessor still being removed.
fn group_name(replica: &ReplicaId, instance: u64) -> String {
    format!("{}-{}-{instance}", replica.workload, replica.index)
}

/// The last `n` lines of a file, read backwards in chunks and at most `bytes_max` from its
/// end (so a line longer than that comes back cut at its start).
fn tail_lines(path: &Path, n: usize, bytes_max: u64) -> Vec<String> {
    let Ok(mut file) = fs::File::open(path) else {
        return Vec::new();
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let floor = size.saturating_sub(bytes_max);
    let (mut start, mut newlines) = (size, 0usize);
    let mut bytes: Vec<u8> = Vec::new();
    // n complete lines need n + 1 newlines: each line's own and the one before the first.
    while n > 0 && start > floor && newlines <= n {
        let from = start.saturating_sub(TAIL_CHUNK_BYTES).max(floor);
        // `start - from` is at most TAIL_CHUNK_BYTES, so the cast cannot truncate.
        let mut chunk = vec![0u8; (start - from) as usize];
        // A read cut short by a concurrent rotation (truncate) ends the scan with what we have.
        if file.seek(SeekFrom::Start(from)).is_err() || file.read_exact(&mut chunk).is_err() {
            break;
        }
        newlines += chunk.iter().filter(|&&b| b == b'\n').count();
        chunk.extend_from_slice(&bytes);
        bytes = chunk;
        start = from;
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

#[cfg(test)]
mod tests;
