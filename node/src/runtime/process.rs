//! The process runtime: replicas as plain child processes of the agent (the embedded default;
//! no container engine needed).
//!
//! Each instance runs in its own process group. The instances of one replica share its
//! directory `<state>/replicas/<workload>-<index>/` (their working directory and `HOME`), and
//! their stdout and stderr are appended straight to `output.log` there (see
//! `process/logs.rs`). Writing to a file rather than a pipe lets a replica outlive the agent
//! (a pipe would break with the agent and kill the writer with SIGPIPE). Instances are tracked
//! by replica and instance number, so two of one replica run side by side in a start-first
//! update; each has its own record on disk, which lets a restarted agent re-adopt exactly the
//! processes it started (see `process/instances.rs`) and never start a duplicate. CPU and
//! memory limits go through cgroups, one group per instance, when the host lets the agent
//! write them (see [`super::cgroup`]; a process joins its group just after spawn, a short
//! unlimited window).
//!
//! An instance gets a clean environment: its spec's `env`, the `STARLING_*` variables (its
//! ports among them, see [`super::ports`]), `PATH`, `HOME` and `LANG`, never the agent's own
//! variables, which may hold paths to keys or tokens. Dropping the runtime leaves instances
//! running (they are the next agent's to adopt); the task waiting on each child keeps reaping
//! and reporting it until it exits.
//!
//! An instance's secrets and configs are written before it is spawned, to its directory on
//! tmpfs (see [`crate::secrets::files`]), which its environment names:
//! `STARLING_SECRETS_DIR` and `STARLING_CONFIGS_DIR` (each only when it has files of that
//! kind). A refresh rewrites them in place and signals the instance as a stop would (see
//! `process/files.rs`); they are wiped when the instance is gone.
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

mod command;
mod files;
mod instances;
mod logs;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use starling_protocol::placement::ReplicaId;
use starling_protocol::spec::{PortSpec, WorkloadSpec};

use self::instances::{InstanceFile, start_time};
use self::logs::{log_file, tail_lines};
use super::cgroup::{Cgroups, InstanceGroups};
use super::fence;
use super::ports::{self, PortMap};
use super::{EventSender, FileSet, Runtime, RuntimeError, RuntimeEvent, StartRequest};
use crate::secrets::files::FileArea;

pub use self::files::{CONFIGS_DIR_ENV, SECRETS_DIR_ENV};

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
    /// Where instances' secrets and configs are written. Default: the area of the state
    /// directory (see [`FileArea::for_data_dir`]).
    pub files_area: Option<FileArea>,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            log_bytes_max: 1 << 20,
            log_files_kept: 2,
            poll_interval: Duration::from_millis(500),
            stop_check_interval: Duration::from_millis(25),
            fence_program: None,
            files_area: None,
        }
    }
}

/// Shortest interval of the log-rotation task, whatever `poll_interval` says: rotation reads
/// every replica's log size, which must not become a busy loop.
pub const POLL_INTERVAL_MIN: Duration = Duration::from_millis(100);

/// Most live instances of one replica: the old and the new of a start-first update, and one
/// more still being reaped after its stop gave up waiting (SIGKILL sent). A start past it fails
/// rather than letting a runaway caller fill the node with copies.
pub const INSTANCES_PER_REPLICA_MAX: usize = 3;

/// Lines of log attached to an exit report.
const EXIT_LOG_LINES: usize = 20;
/// Most bytes of log attached to an exit report (it travels to the core and into events).
const EXIT_LOG_BYTES_MAX: u64 = 16 << 10;
/// Most bytes read from the end of a log to answer `log_tail`.
const TAIL_BYTES_MAX: u64 = 1 << 20;

/// One instance: its replica and the core's instance number.
type Key = (ReplicaId, u64);

#[derive(Debug)]
struct Running {
    /// What is on disk about it (pid, fence, ports).
    record: InstanceFile,
    groups: InstanceGroups,
}

/// The instances this runtime knows, behind one lock.
#[derive(Debug, Default)]
struct Instances {
    live: BTreeMap<Key, Running>,
    /// Ports of instances being started: held from their pick until the instance is live, so
    /// two starts at once never get one port.
    starting: BTreeMap<Key, PortMap>,
}

struct Inner {
    state_dir: PathBuf,
    events: EventSender,
    config: ProcessConfig,
    cgroups: Result<Cgroups, String>,
    /// Where instances' secrets and configs are.
    files: FileArea,
    running: Mutex<Instances>,
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
        let files = config
            .files_area
            .clone()
            .unwrap_or_else(|| FileArea::for_data_dir(&state_dir));
        let inner = Arc::new(Inner {
            state_dir,
            events,
            config,
            cgroups,
            files,
            running: Mutex::new(Instances::default()),
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

    /// The directory of a replica, shared by its instances.
    pub fn replica_dir(&self, replica: &ReplicaId) -> PathBuf {
        self.inner.replica_dir(replica)
    }

    /// Where this runtime writes instances' secrets and configs.
    pub fn files_area(&self) -> &FileArea {
        &self.inner.files
    }

    /// Every live instance, by replica and instance number.
    pub fn live_instances(&self) -> Vec<(ReplicaId, u64)> {
        self.inner.lock().live.keys().cloned().collect()
    }

    /// The pid of a live instance (its fence's for a fenced one).
    pub fn pid(&self, replica: &ReplicaId, instance: u64) -> Option<u32> {
        self.inner.pid_of(replica, instance)
    }

    /// The port `port` of a live instance listens on: its fixed host port or the one picked at
    /// its start. For an instance an older build started (its record names no ports), the
    /// port its spec gave, which is what that build made it listen on. `None` when the
    /// instance is not live here, or its revision had no such port.
    pub fn host_port(&self, replica: &ReplicaId, instance: u64, port: &PortSpec) -> Option<u16> {
        let running = self.inner.lock();
        let record = &running.live.get(&(replica.clone(), instance))?.record;
        match &record.ports {
            Some(ports) => ports
                .get(&port.name)
                .filter(|b| b.protocol == port.protocol)
                .map(|b| b.port),
            None => Some(port.host_port.unwrap_or(port.container_port)),
        }
    }

    /// The cgroup directories of a replica's newest running instance (none without limits),
    /// where `runtime::usage` reads its CPU time.
    pub fn cgroup_dirs(&self, replica: &ReplicaId) -> Vec<PathBuf> {
        let running = self.inner.lock();
        running
            .live
            .range((replica.clone(), 0)..=(replica.clone(), u64::MAX))
            .next_back()
            .map_or_else(Vec::new, |(_, r)| r.groups.dirs().to_vec())
    }

    /// The pid of a replica's newest live instance (what `runtime::usage` meters).
    pub fn newest_pid(&self, replica: &ReplicaId) -> Option<u32> {
        let instance = {
            let running = self.inner.lock();
            running
                .live
                .range((replica.clone(), 0)..=(replica.clone(), u64::MAX))
                .next_back()
                .map(|((_, i), _)| *i)?
        };
        self.pid(replica, instance)
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
        if self.inner.is_fenced(replica, instance) {
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
                "{}/{} instance {instance} did not stop within {grace:?} of SIGTERM; sending SIGKILL",
                replica.workload,
                replica.index
            );
            signal_group(pid, Signal::SIGKILL);
        }
    }

    /// Finds every live instance recorded under the state directory, two of one replica
    /// included, and reports each as `Adopted`. Records of gone processes are removed; records
    /// an older build wrote (`instance.json` alone) are read too.
    async fn adopt(&self) -> usize {
        self.inner.adopt().await
    }

    async fn refresh_files(
        &self,
        replica: &ReplicaId,
        instance: u64,
        files: Vec<FileSet>,
        signal: Option<i32>,
    ) -> Result<(), RuntimeError> {
        self.inner.refresh_files(replica, instance, &files, signal)
    }

    /// The replica's log, shared by its instances (see `process/logs.rs`).
    async fn log_tail(&self, replica: &ReplicaId, lines: usize) -> Vec<String> {
        tail_lines(
            &log_file(&self.inner.replica_dir(replica)),
            lines,
            TAIL_BYTES_MAX,
        )
    }
}

/// Takes back the ports held for a start that did not get as far as a live instance.
struct Reservation<'a> {
    inner: &'a Inner,
    key: Key,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.inner.lock().starting.remove(&self.key);
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Instances> {
        // A panic while holding the lock cannot leave the maps half-updated (single inserts and
        // removes), so a poisoned lock is still usable.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn replica_dir(&self, replica: &ReplicaId) -> PathBuf {
        self.state_dir
            .join("replicas")
            .join(format!("{}-{}", replica.workload, replica.index))
    }

    fn is_fenced(&self, replica: &ReplicaId, instance: u64) -> bool {
        self.lock()
            .live
            .get(&(replica.clone(), instance))
            .is_some_and(|r| r.record.fenced)
    }

    fn pid_of(&self, replica: &ReplicaId, instance: u64) -> Option<u32> {
        self.lock()
            .live
            .get(&(replica.clone(), instance))
            .map(|r| r.record.pid)
    }

    /// Claims `key` for a start and picks its ports, or says why it cannot start: it is
    /// already live or starting, or its replica has as many instances as it may.
    fn reserve(
        &self,
        key: &Key,
        spec: &WorkloadSpec,
    ) -> Result<(Reservation<'_>, PortMap), String> {
        let mut running = self.lock();
        if running.live.contains_key(key) || running.starting.contains_key(key) {
            return Err(format!(
                "instance {} of this replica already runs here",
                key.1
            ));
        }
        let replica = &key.0;
        let siblings = running
            .live
            .range((replica.clone(), 0)..=(replica.clone(), u64::MAX))
            .count()
            + running
                .starting
                .range((replica.clone(), 0)..=(replica.clone(), u64::MAX))
                .count();
        if siblings >= INSTANCES_PER_REPLICA_MAX {
            return Err(format!(
                "{siblings} instances of this replica already run here, the most there may be"
            ));
        }
        let held = ports::held(
            running
                .live
                .values()
                .filter_map(|r| r.record.ports.as_ref())
                .chain(running.starting.values()),
        );
        let assigned = ports::assign(&spec.ports, &held)?;
        running.starting.insert(key.clone(), assigned.clone());
        let reservation = Reservation {
            inner: self,
            key: key.clone(),
        };
        Ok((reservation, assigned))
    }

    async fn spawn(self: Arc<Self>, request: StartRequest) -> Result<(), String> {
        let key = (request.replica.clone(), request.instance);
        let (reservation, ports) = self.reserve(&key, &request.spec)?;
        // Wiped again unless the instance gets as far as running.
        let files = self.place_files(&request)?;
        let (mut command, fenced) = self.command(&request, &ports, files.env())?;
        let StartRequest {
            replica,
            instance,
            revision,
            spec,
            ..
        } = request;
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
            return Err(format!("{launched} exited before it could be tracked"));
        };
        // Its exit wipes them from now on (see `finish`).
        files.keep();
        let groups = self.limit(&replica, instance, pid, &spec, fenced);
        let record = InstanceFile {
            pid,
            start_time: start_time(pid).unwrap_or(0),
            instance,
            revision,
            workload: replica.workload.to_string(),
            index: replica.index,
            fenced,
            ports: Some(ports),
        };
        self.write_record(&replica, &record);
        {
            let mut running = self.lock();
            running.live.insert(key.clone(), Running { record, groups });
            running.starting.remove(&key);
            self.refresh_summary(&replica, &running);
        }
        drop(reservation);
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
            self.finish(&key, pid, code).await;
        });
        Ok(())
    }

    /// Puts the new process into its cgroups when its spec sets limits and the host allows it.
    fn limit(
        &self,
        replica: &ReplicaId,
        instance: u64,
        pid: u32,
        spec: &WorkloadSpec,
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
    async fn finish(&self, key: &Key, pid: u32, code: Option<i32>) {
        // Children the leader left behind in its group would be orphans: end them too.
        signal_group(pid, Signal::SIGKILL);
        let (replica, instance) = (&key.0, key.1);
        let dir = self.replica_dir(replica);
        {
            let mut running = self.lock();
            // Only the instance that ended: a sibling of the same replica keeps running.
            if let Some(r) = running.live.remove(key) {
                if r.groups.is_limited() {
                    tokio::spawn(r.groups.remove());
                }
                let _ = fs::remove_file(instances::record_file(&dir, instance));
                self.refresh_summary(replica, &running);
            }
        }
        self.files.wipe(replica, instance);
        let log_tail = tail_lines(&log_file(&dir), EXIT_LOG_LINES, EXIT_LOG_BYTES_MAX);
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
    async fn watch_adopted(self: Arc<Self>, key: Key, record: InstanceFile) {
        loop {
            tokio::time::sleep(self.config.poll_interval).await;
            if start_time(record.pid) != Some(record.start_time) {
                self.finish(&key, record.pid, None).await;
                return;
            }
            if self.pid_of(&key.0, key.1).is_none() {
                return;
            }
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

/// The cgroup name of one instance: unique per instance, so two instances of a replica never
/// share limits, and a replacement never meets the group of its predecessor being removed.
fn group_name(replica: &ReplicaId, instance: u64) -> String {
    format!("{}-{}-{instance}", replica.workload, replica.index)
}

#[cfg(test)]
mod tests;
