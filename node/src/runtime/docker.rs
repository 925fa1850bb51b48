//! Containers through the Docker Engine API (bollard); Podman through its Docker-compatible
//! socket, with the same code.
//!
//! Each instance is one container named `starling-<workload>-<index>-<instance>` and labelled
//! `starling.workload`, `starling.replica`, `starling.revision`, `starling.node` and
//! `starling.instance`, so an agent that restarts finds its containers again (adoption) and
//! removes the ones that are no longer planned. Instances are tracked by replica and instance
//! number, so two containers of one replica run side by side in a start-first update, each
//! stopped, watched and adopted on its own. Restarts are Starling's (Docker's restart
//! policy is `no`): an exit is reported and the core decides, with its back-off. Images are
//! never pulled when the policy says `never` or the image is present; a missing image is a
//! clear `ImageNotFound` start failure, retried at the core's back-off, not a tight loop.
//!
//! An instance's secrets and configs are written to its directory on tmpfs before its
//! container is created, and each set's directory is bind-mounted read-only at its target
//! (see `docker/files.rs`); they are wiped when the container is removed.

// bollard's API takes and returns HashMaps (labels, filters, port maps); nothing here
// iterates them to make a decision.
#![allow(clippy::disallowed_types)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt as _;
use starling_protocol::NodeId;
use starling_protocol::WorkloadName;
use starling_protocol::placement::ReplicaId;
use starling_protocol::spec::{PortSpec, RuntimeKind, WorkloadSpec};

use self::create::port_key;
use super::{RuntimeEvent, StartRequest};
use crate::secrets::files::FileArea;

/// Label keys.
const LABEL_WORKLOAD: &str = "starling.workload";
const LABEL_REPLICA: &str = "starling.replica";
const LABEL_REVISION: &str = "starling.revision";
const LABEL_NODE: &str = "starling.node";
const LABEL_INSTANCE: &str = "starling.instance";

/// One instance: its replica and the core's instance number.
type Key = (ReplicaId, u64);

/// A running container instance.
#[derive(Debug, Clone)]
struct Instance {
    container: String,
    /// `<container port>/<protocol>` -> host port, as the engine bound it.
    ports: BTreeMap<String, u16>,
}

/// How long the agent waits for a container engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    /// Longest wait for the engine to answer whether it is there (version negotiation, ping;
    /// default 2 s): an engine that does not answer in time counts as absent for now.
    pub answer_timeout: Duration,
    /// Longest wait for any other request to the engine (the API client's timeout; default
    /// 30 s). Whole seconds; at least one.
    pub request_timeout: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            answer_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A container engine reached through its Docker-compatible API.
pub struct ContainerRuntime {
    /// Its timeouts.
    settings: EngineSettings,
    /// Where the engine listens.
    socket: PathBuf,
    /// The client, once the engine answered and the API version was agreed (an engine that
    /// was not up when the agent started is picked up when it answers).
    client: std::sync::RwLock<Option<Docker>>,
    kind: RuntimeKind,
    node: NodeId,
    events: super::EventSender,
    running: Arc<Mutex<BTreeMap<Key, Instance>>>,
    /// Where instances' secrets and configs are (shared with the process runtime in an
    /// agent, see [`Self::with_files`]).
    files: FileArea,
}

/// Where each engine listens by default.
pub fn default_socket(kind: RuntimeKind) -> Option<PathBuf> {
    match kind {
        RuntimeKind::Process => None,
        RuntimeKind::Docker => Some(
            std::env::var("DOCKER_HOST")
                .ok()
                .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock")),
        ),
        RuntimeKind::Podman => Some(
            std::env::var("XDG_RUNTIME_DIR")
                .ok()
                .map(|d| PathBuf::from(d).join("podman/podman.sock"))
                .filter(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from("/run/podman/podman.sock")),
        ),
    }
}

fn container_name(replica: &ReplicaId, instance: u64) -> String {
    format!("starling-{}-{}-{instance}", replica.workload, replica.index)
}

impl ContainerRuntime {
    /// A client of the engine at `socket`. `None` only when the path cannot be used at all;
    /// an engine that does not answer yet is kept and asked again (see [`Self::available`]),
    /// so a daemon that starts after the agent is picked up.
    pub async fn connect(
        kind: RuntimeKind,
        socket: &std::path::Path,
        node: NodeId,
        events: super::EventSender,
        settings: EngineSettings,
    ) -> Option<Self> {
        socket.to_str()?;
        let files = FileArea::for_key(format!("{kind:?} {} {node}", socket.display()).as_bytes());
        let runtime = ContainerRuntime {
            settings,
            socket: socket.to_path_buf(),
            client: std::sync::RwLock::new(None),
            kind,
            node,
            events,
            running: Arc::default(),
            files,
        };
        runtime.available().await;
        Some(runtime)
    }

    /// The client, or why there is none (the engine has not answered yet).
    fn docker(&self) -> Result<Docker, String> {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                format!(
                    "RuntimeUnavailable: {} on node {} (no engine at {})",
                    self.engine(),
                    self.node,
                    self.socket.display()
                )
            })
    }

    /// The address containers on the engine's default bridge reach the host at (its gateway),
    /// where the agent serves them DNS and the proxy; `None` when the engine does not answer
    /// or has no such network.
    pub async fn bridge_gateway(&self) -> Option<std::net::IpAddr> {
        let network = self
            .docker()
            .ok()?
            .inspect_network("bridge", None)
            .await
            .ok()?;
        let configs = network.ipam?.config?;
        let gateway = configs
            .iter()
            .find_map(|c| c.gateway.as_deref()?.parse().ok());
        // Some engines leave the gateway out of the default bridge's config; they give it the
        // subnet's first address, as the engine's own default is.
        gateway.or_else(|| {
            configs.iter().find_map(|c| {
                let (network, _) = c.subnet.as_deref()?.split_once('/')?;
                let network: std::net::Ipv4Addr = network.parse().ok()?;
                Some(std::net::IpAddr::V4((u32::from(network) + 1).into()))
            })
        })
    }

    /// Whether the engine answers now (connecting and agreeing on the API version the first
    /// time it does).
    pub async fn available(&self) -> bool {
        let docker = match self.docker() {
            Ok(docker) => docker,
            Err(_) => {
                let Some(path) = self.socket.to_str() else {
                    return false;
                };
                let request_timeout_s = self.settings.request_timeout.as_secs().max(1);
                let Ok(fresh) = Docker::connect_with_unix(
                    path,
                    request_timeout_s,
                    bollard::API_DEFAULT_VERSION,
                ) else {
                    return false;
                };
                let answer_timeout = self.settings.answer_timeout;
                let Ok(Ok(agreed)) =
                    tokio::time::timeout(answer_timeout, fresh.negotiate_version()).await
                else {
                    return false;
                };
                *self.client.write().unwrap_or_else(|e| e.into_inner()) = Some(agreed.clone());
                agreed
            }
        };
        matches!(
            tokio::time::timeout(self.settings.answer_timeout, docker.ping()).await,
            Ok(Ok(_))
        )
    }

    /// The runtime writing instances' secrets and configs to `files` (an agent gives all its
    /// runtimes one area, whose leftovers it wipes after adoption).
    pub fn with_files(mut self, files: FileArea) -> Self {
        self.files = files;
        self
    }

    /// Every running instance, by replica and instance number.
    pub fn live_instances(&self) -> Vec<(ReplicaId, u64)> {
        self.lock().keys().cloned().collect()
    }

    /// Which runtime this is.
    pub fn kind(&self) -> RuntimeKind {
        self.kind
    }

    /// Whether this runtime runs any instance of `replica` now.
    pub fn holds(&self, replica: &ReplicaId) -> bool {
        self.newest(replica).is_some()
    }

    /// Whether this runtime runs this instance of `replica` now.
    pub fn holds_instance(&self, replica: &ReplicaId, instance: u64) -> bool {
        self.lock().contains_key(&(replica.clone(), instance))
    }

    /// The host port a running instance's `port` is reachable at, as the engine bound it.
    pub fn host_port(&self, replica: &ReplicaId, instance: u64, port: &PortSpec) -> Option<u16> {
        self.lock()
            .get(&(replica.clone(), instance))?
            .ports
            .get(&port_key(port))
            .copied()
    }

    /// The client and container to ask for a replica's stats (`runtime::usage`): its newest
    /// instance's.
    pub fn stats_target(&self, replica: &ReplicaId) -> Option<(Docker, String)> {
        let container = self.newest(replica)?;
        Some((self.docker().ok()?, container))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Instance>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The container of `replica`'s newest running instance: what its logs are read from.
    fn newest(&self, replica: &ReplicaId) -> Option<String> {
        self.lock()
            .range((replica.clone(), 0)..=(replica.clone(), u64::MAX))
            .next_back()
            .map(|(_, i)| i.container.clone())
    }

    fn engine(&self) -> &'static str {
        match self.kind {
            RuntimeKind::Podman => "podman",
            _ => "docker",
        }
    }

    /// Starts a replica's container. Reports `Started` or `StartFailed`.
    pub async fn start(&self, request: StartRequest) {
        let (replica, instance) = (request.replica.clone(), request.instance);
        match self.create_and_start(&request).await {
            Ok(started) => {
                self.lock()
                    .insert((replica.clone(), instance), started.clone());
                let _ = self
                    .events
                    .send(RuntimeEvent::Started {
                        replica: replica.clone(),
                        instance,
                    })
                    .await;
                self.watch((replica, instance), started);
            }
            Err(reason) => {
                let _ = self
                    .events
                    .send(RuntimeEvent::StartFailed {
                        replica,
                        instance,
                        reason,
                    })
                    .await;
            }
        }
    }

    async fn create_and_start(&self, request: &StartRequest) -> Result<Instance, String> {
        let docker = self.docker()?;
        let spec = &request.spec;
        let image = spec
            .image
            .clone()
            .ok_or_else(|| "the spec names no image".to_string())?;
        self.ensure_image(&image, spec.image_pull_policy).await?;
        let name = container_name(&request.replica, request.instance);
        // A container left by a crash between create and start would block the name.
        remove(&docker, &name).await;
        let mounts = self.place_files(request)?;
        let body = self.container_body(request, image, mounts);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = match docker.create_container(Some(options), body).await {
            Ok(created) => created,
            Err(e) => {
                self.files.wipe(&request.replica, request.instance);
                return Err(self.explain(e));
            }
        };
        if let Err(e) = docker.start_container(&created.id, None).await {
            remove(&docker, &created.id).await;
            self.files.wipe(&request.replica, request.instance);
            return Err(self.explain(e));
        }
        let ports = self.ports_of(&docker, &created.id).await;
        Ok(Instance {
            container: created.id,
            ports,
        })
    }

    /// Waits for the container to exit, then reports it and removes the container.
    fn watch(&self, key: Key, instance: Instance) {
        let Ok(docker) = self.docker() else {
            return;
        };
        let events = self.events.clone();
        let running = self.running.clone();
        let files = self.files.clone();
        tokio::spawn(async move {
            let options = WaitContainerOptionsBuilder::default()
                .condition("not-running")
                .build();
            let mut wait = docker.wait_container(&instance.container, Some(options));
            let mut code = None;
            while let Some(step) = wait.next().await {
                match step {
                    Ok(r) => code = i32::try_from(r.status_code).ok(),
                    // bollard reports a non-zero exit as an error carrying the code.
                    Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => {
                        code = i32::try_from(c).ok();
                    }
                    Err(_) => {}
                }
            }
            let log_tail = tail(&docker, &instance.container, 5).await;
            remove(&docker, &instance.container).await;
            files.wipe(&key.0, key.1);
            // Only this instance: a sibling of the same replica keeps running.
            running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            // Killed by a signal shows as 128 + signal; report it as a signal, like processes.
            let code = code.filter(|c| *c < 128 || *c > 128 + 64);
            let _ = events
                .send(RuntimeEvent::Exited {
                    replica: key.0,
                    instance: key.1,
                    code,
                    log_tail,
                })
                .await;
        });
    }

    /// Stops an instance: the engine's stop (SIGTERM, then SIGKILL after `grace`).
    pub async fn stop(&self, replica: &ReplicaId, instance: u64, grace: Duration) {
        let Some(container) = self
            .lock()
            .get(&(replica.clone(), instance))
            .map(|i| i.container.clone())
        else {
            return;
        };
        let Ok(docker) = self.docker() else {
            return;
        };
        let options = StopContainerOptionsBuilder::default()
            .t(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX).max(1))
            .build();
        if let Err(e) = docker.stop_container(&container, Some(options)).await {
            tracing::warn!(
                "{}/{} instance {instance}: {} stop failed ({e}); removing it by force",
                replica.workload,
                replica.index,
                self.engine()
            );
            remove(&docker, &container).await;
        }
    }

    /// Finds this node's labelled containers: running ones are taken over (reported as
    /// `Adopted`), exited ones removed. Returns how many were adopted.
    pub async fn adopt(&self) -> usize {
        let Ok(docker) = self.docker() else {
            return 0;
        };
        let filters: HashMap<String, Vec<String>> = [(
            "label".to_string(),
            vec![format!("{LABEL_NODE}={}", self.node)],
        )]
        .into();
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let Ok(list) = docker.list_containers(Some(options)).await else {
            return 0;
        };
        let mut adopted = 0;
        for summary in list {
            let Some(id) = summary.id.clone() else {
                continue;
            };
            let labels = summary.labels.clone().unwrap_or_default();
            let parsed = (|| {
                let workload = WorkloadName::new(labels.get(LABEL_WORKLOAD)?.as_str()).ok()?;
                let index = labels.get(LABEL_REPLICA)?.parse::<u32>().ok()?;
                let instance = labels.get(LABEL_INSTANCE)?.parse::<u64>().ok()?;
                let revision = labels.get(LABEL_REVISION)?.parse::<u64>().ok()?;
                Some((ReplicaId { workload, index }, instance, revision))
            })();
            let running = summary
                .state
                .is_some_and(|s| s == bollard::models::ContainerSummaryStateEnum::RUNNING);
            let Some((replica, instance, revision)) = parsed.filter(|_| running) else {
                remove(&docker, &id).await;
                continue;
            };
            let ports = self.ports_of(&docker, &id).await;
            let record = Instance {
                container: id,
                ports,
            };
            let key = (replica.clone(), instance);
            self.lock().insert(key.clone(), record.clone());
            let _ = self
                .events
                .send(RuntimeEvent::Adopted {
                    replica: replica.clone(),
                    instance,
                    revision,
                })
                .await;
            self.watch(key, record);
            adopted += 1;
        }
        adopted
    }

    /// Every host port the engine bound for a container, by `<container port>/<protocol>`
    /// (the same key whether the container was started or adopted).
    async fn ports_of(&self, docker: &Docker, id: &str) -> BTreeMap<String, u16> {
        let Ok(inspect) = docker.inspect_container(id, None).await else {
            return BTreeMap::new();
        };
        inspect
            .network_settings
            .and_then(|n| n.ports)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(key, bindings)| {
                let host = bindings?
                    .iter()
                    .find_map(|b| b.host_port.as_ref()?.parse::<u16>().ok())?;
                Some((key, host))
            })
            .collect()
    }

    /// The last `lines` lines of the log of a replica's newest container.
    pub async fn log_tail(&self, replica: &ReplicaId, lines: usize) -> Vec<String> {
        let Some(container) = self.newest(replica) else {
            return Vec::new();
        };
        match self.docker() {
            Ok(docker) => tail(&docker, &container, lines).await,
            Err(_) => Vec::new(),
        }
    }

    /// New log lines of a replica's newest container as they come (after the current end).
    pub fn follow(
        &self,
        replica: &ReplicaId,
    ) -> Option<impl futures_util::Stream<Item = String> + Send + 'static> {
        let container = self.newest(replica)?;
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(true)
            .tail("0")
            .build();
        let stream = self.docker().ok()?.logs(&container, Some(options));
        Some(stream.filter_map(|chunk| async move { chunk.ok().map(|c| c.to_string()) }))
    }

    /// Runs `command` inside an instance's container (an exec health check).
    pub async fn exec(
        &self,
        replica: &ReplicaId,
        instance: u64,
        command: &[String],
    ) -> Result<i64, String> {
        let Some(container) = self
            .lock()
            .get(&(replica.clone(), instance))
            .map(|i| i.container.clone())
        else {
            return Err("the container is not running".into());
        };
        let docker = self.docker()?;
        let exec = docker
            .create_exec(
                &container,
                bollard::models::ExecConfig {
                    cmd: Some(command.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        match docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| e.to_string())?
        {
            bollard::exec::StartExecResults::Attached { mut output, .. } => {
                while output.next().await.is_some() {}
            }
            bollard::exec::StartExecResults::Detached => {}
        }
        let inspect = docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(inspect.exit_code.unwrap_or(-1))
    }

    pub(super) fn explain(&self, e: bollard::errors::Error) -> String {
        format!("{} on node {}: {e}", self.engine(), self.node)
    }
}

/// Removes a container whatever its state; a failure means it is already gone.
async fn remove(docker: &Docker, container: &str) {
    let options = RemoveContainerOptionsBuilder::default().force(true).build();
    let _ = docker.remove_container(container, Some(options)).await;
}

async fn tail(docker: &Docker, container: &str, lines: usize) -> Vec<String> {
    let options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail(&lines.to_string())
        .build();
    let mut stream = docker.logs(container, Some(options));
    let mut text = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        text.push_str(&chunk.to_string());
    }
    text.lines().map(str::to_string).collect()
}

/// Whether `spec` runs in a container.
pub fn is_container(spec: &WorkloadSpec) -> bool {
    matches!(spec.runtime, RuntimeKind::Docker | RuntimeKind::Podman)
}

mod create;
mod files;
#[cfg(test)]
mod tests;
