//! Runtimes: how a node actually runs a replica.
//!
//! A runtime starts and stops replicas on request and reports what happens to them as
//! [`RuntimeEvent`]s on the channel it was built with; the core turns those into decisions.
//! The process runtime (plain child processes, in cgroups where the host allows) is the
//! embedded default; `docker` runs containers through the Docker or Podman API behind the same
//! trait; `fence` stops a singleton's instance when its lease can no longer be renewed.

pub mod cgroup;
pub mod docker;
pub mod fence;
pub mod ports;
pub mod process;
pub mod usage;

use std::future::Future;
use std::time::Duration;

use starling_protocol::NodeId;
use starling_protocol::placement::ReplicaId;
use starling_protocol::spec::WorkloadSpec;

pub use starling_core::node::RuntimeEvent;

/// Where runtimes and health probers report to the agent loop: a bounded channel whose
/// senders wait when it is full ([`crate::channel::Sender::send`]). Never dropped: a lost
/// `Exited` would leave the core believing the replica still runs.
pub type EventSender = crate::channel::Sender<RuntimeEvent>;

/// What the core asked a runtime to start.
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    pub replica: ReplicaId,
    /// The core's instance number for this start; every event about it carries it back.
    pub instance: u64,
    /// Revision of the spec.
    pub revision: u64,
    /// The spec to run.
    pub spec: WorkloadSpec,
    /// The node running it (for labels and `STARLING_NODE`).
    pub node: NodeId,
    /// Variables the agent adds to the environment (a singleton's lease), after the spec's.
    pub env: Vec<(String, String)>,
    /// DNS servers a container is given, in order (the agent's on the bridge gateway, then
    /// the host's own; empty: the engine's default). Processes use the host's resolver.
    pub dns: Vec<std::net::IpAddr>,
    /// Secrets and configs the instance receives, already decrypted; ready before it starts
    /// (see [`crate::secrets::files`]). A process finds them through `STARLING_SECRETS_DIR`
    /// and `STARLING_CONFIGS_DIR`, a container at each set's target.
    pub files: Vec<FileSet>,
}

/// Whether a file set holds a secret or a config. Configs are not secret, but are delivered
/// the same way: only their files' modes (0444 rather than 0400) and their directory differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileKind {
    /// Under `secrets/`, files 0400; a container's default target is `/run/secrets/NAME`.
    Secret,
    /// Under `configs/`, files 0444; a container's default target is `/run/configs/NAME`.
    Config,
}

/// One secret or config as a replica receives it: a directory with one file per entry.
///
/// `Debug` shows entry names and sizes, never contents; the contents are wiped from memory
/// when the set is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct FileSet {
    /// Secret or config.
    pub kind: FileKind,
    /// The object's name, a DNS label: the name of its directory.
    pub name: String,
    /// File name (`[A-Za-z0-9._-]`, not `.` or `..`, at most 253 bytes) and content, each
    /// name once.
    pub entries: Vec<(String, zeroize::Zeroizing<Vec<u8>>)>,
    /// Containers: the absolute directory it appears at inside the container (`None`: the
    /// kind's default). Processes: must be `None` (they are told the directory instead).
    pub target: Option<String>,
}

impl std::fmt::Debug for FileSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries: Vec<String> = self
            .entries
            .iter()
            .map(|(name, content)| format!("{name} ({} bytes)", content.len()))
            .collect();
        f.debug_struct("FileSet")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("entries", &entries)
            .field("target", &self.target)
            .finish()
    }
}

/// Errors a runtime reports synchronously (asynchronous outcomes are events).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The replica is not known to this runtime.
    #[error("replica {0} is not running here")]
    NotRunning(String),
    /// An operating-system error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What the runtime was doing.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// An instance's secrets or configs could not be delivered: no memory-backed filesystem,
    /// a refused file set, or an error writing it.
    #[error(transparent)]
    Files(#[from] crate::secrets::files::FilesError),
}

/// A way of running replicas. Implementations report every outcome as a [`RuntimeEvent`]:
/// `start` returning `Ok` means the request was accepted, not that the replica runs.
pub trait Runtime: Send + Sync + 'static {
    /// Starts an instance of a replica, also while another instance of it runs (a start-first
    /// update). Reports `Started` or `StartFailed`, later `Exited`.
    fn start(&self, request: StartRequest) -> impl Future<Output = ()> + Send;

    /// Stops an instance: SIGTERM (or the runtime's equivalent), then a hard kill after
    /// `grace`. Reports `Exited` when it is gone. Stopping an unknown instance is a no-op.
    fn stop(
        &self,
        replica: &ReplicaId,
        instance: u64,
        grace: Duration,
    ) -> impl Future<Output = ()> + Send;

    /// Finds instances still running from before an agent restart and takes them over, two of
    /// one replica included. Reports one `Adopted` per instance; returns how many.
    fn adopt(&self) -> impl Future<Output = usize> + Send;

    /// Rewrites a running instance's secrets and configs in place with `files` (each file
    /// atomically: written beside it, then renamed over it; entries no longer present are
    /// removed, as are sets), then sends it `signal` (e.g. `libc::SIGHUP`) if given, so it
    /// can re-read them without a restart. `files` holds the sets the instance started with;
    /// a set it did not start with needs a new instance (a container could not see it).
    /// Errors: `NotRunning` for an instance not running here, `Files` when writing failed.
    fn refresh_files(
        &self,
        replica: &ReplicaId,
        instance: u64,
        files: Vec<FileSet>,
        signal: Option<i32>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The last `lines` lines of a replica's log (stdout and stderr interleaved; for two
    /// instances at once, the process runtime's shared log or the newest container's).
    fn log_tail(
        &self,
        replica: &ReplicaId,
        lines: usize,
    ) -> impl Future<Output = Vec<String>> + Send;
}

/// Runs `runtime.adopt()` while taking the events it reports off `events`, and returns how
/// many it adopted with those events (in order). The queue is bounded and its reader (the
/// agent loop) does not run yet during adoption, so awaiting `adopt` alone would wedge once
/// more replicas are adopted than the queue holds. What is returned is bounded by what the
/// previous agent left running.
pub async fn adopt_draining<R: Runtime>(
    runtime: &R,
    events: &mut tokio::sync::mpsc::Receiver<RuntimeEvent>,
) -> (usize, Vec<RuntimeEvent>) {
    let mut taken = Vec::new();
    let adoption = runtime.adopt();
    tokio::pin!(adoption);
    let adopted = loop {
        tokio::select! {
            adopted = &mut adoption => break adopted,
            Some(event) = events.recv() => taken.push(event),
        }
    };
    while let Ok(event) = events.try_recv() {
        taken.push(event);
    }
    (adopted, taken)
}

/// Every runtime this node has: the process runtime, and the container engines that answered
/// at start. Requests go to the runtime the spec names; a container workload for an engine
/// that is not (or no longer) there fails with `RuntimeUnavailable`, which the core reports
/// and retries at its back-off.
pub struct Runtimes {
    /// Plain processes (always there).
    pub process: process::ProcessRuntime,
    /// Docker and Podman, when their sockets answered.
    pub containers: Vec<docker::ContainerRuntime>,
    events: EventSender,
    node: NodeId,
}

impl Runtimes {
    /// The process runtime plus every container engine in `engines` that answers, each
    /// waited for as `settings` says.
    pub async fn new(
        process: process::ProcessRuntime,
        engines: &[(spec::RuntimeKind, std::path::PathBuf)],
        settings: docker::EngineSettings,
        node: NodeId,
        events: EventSender,
    ) -> Self {
        let mut containers = Vec::new();
        for (kind, socket) in engines {
            let Some(c) = docker::ContainerRuntime::connect(
                *kind,
                socket,
                node.clone(),
                events.clone(),
                settings,
            )
            .await
            else {
                continue;
            };
            if c.available().await {
                tracing::info!(runtime = ?kind, socket = %socket.display(), "container engine found");
            } else {
                tracing::info!(
                    runtime = ?kind,
                    socket = %socket.display(),
                    "no container engine answers there yet; {kind:?} workloads go elsewhere until one does",
                );
            }
            // One area for all runtimes: its leftovers are wiped after every runtime adopted.
            containers.push(c.with_files(process.files_area().clone()));
        }
        Runtimes {
            process,
            containers,
            events,
            node,
        }
    }

    /// Runtimes that can run workloads now (engines are asked each time).
    pub async fn available(&self) -> std::collections::BTreeSet<spec::RuntimeKind> {
        let mut kinds: std::collections::BTreeSet<spec::RuntimeKind> =
            [spec::RuntimeKind::Process].into();
        for c in &self.containers {
            if c.available().await {
                kinds.insert(c.kind());
            }
        }
        kinds
    }

    /// The container engine running an instance of `replica`, if one does (where its logs
    /// are read).
    pub fn container_of(&self, replica: &ReplicaId) -> Option<&docker::ContainerRuntime> {
        self.containers.iter().find(|c| c.holds(replica))
    }

    /// The container engine running this instance of `replica`, if one does. Per instance:
    /// an update that moves a workload between runtimes has its old instance in one and its
    /// new instance in the other.
    pub fn container_of_instance(
        &self,
        replica: &ReplicaId,
        instance: u64,
    ) -> Option<&docker::ContainerRuntime> {
        self.containers
            .iter()
            .find(|c| c.holds_instance(replica, instance))
    }

    /// `ports` as a health probe on this host reaches them for a running instance: each with
    /// `container_port` set to its [`Self::host_port`] (left as it is when that is unknown).
    pub fn reachable_ports(
        &self,
        replica: &ReplicaId,
        instance: u64,
        ports: &[spec::PortSpec],
    ) -> Vec<spec::PortSpec> {
        ports
            .iter()
            .map(|p| {
                let mut p = p.clone();
                if let Some(host) = self.host_port(replica, instance, &p) {
                    p.container_port = host;
                }
                p
            })
            .collect()
    }

    /// The port on this host where a running instance's `port` is reachable: the one the
    /// engine bound for a container, the fixed or picked one for a process. `None` when the
    /// instance does not run here or its revision has no such port.
    pub fn host_port(
        &self,
        replica: &ReplicaId,
        instance: u64,
        port: &spec::PortSpec,
    ) -> Option<u16> {
        match self.container_of_instance(replica, instance) {
            Some(engine) => engine.host_port(replica, instance, port),
            None => self.process.host_port(replica, instance, port),
        }
    }
}

use starling_protocol::spec;

impl Runtime for Runtimes {
    async fn start(&self, request: StartRequest) {
        let kind = request.spec.runtime;
        if kind == spec::RuntimeKind::Process {
            return self.process.start(request).await;
        }
        match self.containers.iter().find(|c| c.kind() == kind) {
            Some(engine) if engine.available().await => engine.start(request).await,
            _ => {
                let _ = self
                    .events
                    .send(RuntimeEvent::StartFailed {
                        replica: request.replica,
                        instance: request.instance,
                        reason: format!(
                            "RuntimeUnavailable: {} on node {}",
                            format!("{kind:?}").to_lowercase(),
                            self.node
                        ),
                    })
                    .await;
            }
        }
    }

    async fn stop(&self, replica: &ReplicaId, instance: u64, grace: Duration) {
        match self.container_of_instance(replica, instance) {
            Some(engine) => engine.stop(replica, instance, grace).await,
            None => self.process.stop(replica, instance, grace).await,
        }
    }

    async fn adopt(&self) -> usize {
        let mut adopted = self.process.adopt().await;
        for c in &self.containers {
            adopted += c.adopt().await;
        }
        // Secrets of instances no runtime took over belong to nothing that runs: wipe them.
        // An engine that does not answer now has adopted nothing, so its instances' files go
        // too; its containers are no longer this agent's.
        let live = self
            .containers
            .iter()
            .flat_map(|c| c.live_instances())
            .chain(self.process.live_instances());
        let keep = live
            .map(|(replica, instance)| crate::secrets::files::instance_dir_name(&replica, instance))
            .collect();
        let wiped = self.process.files_area().wipe_except(&keep);
        if wiped > 0 {
            tracing::info!("wiped the secrets and configs of {wiped} instances not adopted");
        }
        adopted
    }

    async fn refresh_files(
        &self,
        replica: &ReplicaId,
        instance: u64,
        files: Vec<FileSet>,
        signal: Option<i32>,
    ) -> Result<(), RuntimeError> {
        match self.container_of_instance(replica, instance) {
            Some(engine) => engine.refresh_files(replica, instance, files, signal).await,
            None => {
                self.process
                    .refresh_files(replica, instance, files, signal)
                    .await
            }
        }
    }

    async fn log_tail(&self, replica: &ReplicaId, lines: usize) -> Vec<String> {
        match self.container_of(replica) {
            Some(engine) => engine.log_tail(replica, lines).await,
            None => self.process.log_tail(replica, lines).await,
        }
    }
}
