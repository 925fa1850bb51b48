//! Workload specs: what an operator asks the fleet to run.
//!
//! Two shapes of the same thing:
//! - [`SpecDoc`] is the document as written in TOML or JSON, with quantities as text
//!   (`"256Mi"`) and every field optional where a default exists. It is never sent between nodes.
//! - [`WorkloadSpec`] is the validated, typed spec: [`SpecDoc::validate`] is the only way to
//!   build one from user input, and it reports every problem at once, each with its field path.
//!   It is plain serde data, so it is also the form stored on disk and sent on the wire;
//!   [`WorkloadSpec::check`] re-validates a spec decoded from untrusted bytes.

mod doc;
mod error;
mod validate;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use doc::{
    ConfigDoc, ConstraintsDoc, HealthDoc, HttpProbeDoc, PortDoc, ResourcesDoc, RestartDoc,
    ScalingDoc, SecretDoc, SpecDoc, UpdateDoc,
};
pub use error::{FieldError, SpecErrors};
pub use validate::{LEASE_TTL_MAX_MS, LEASE_TTL_MIN_MS, STANDBYS_MAX};

use crate::names::WorkloadName;
use crate::quantity::{Bytes, Millicores};

/// Most replicas one workload may ask for.
pub const REPLICAS_MAX: u32 = 10_000;

/// The validated description of a workload. Build it with [`SpecDoc::validate`] or
/// [`WorkloadSpec::from_toml`]; values of this type passed every check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Unique name in the fleet; also its DNS name.
    pub name: WorkloadName,
    /// Which runtime runs it; placement only picks nodes that have it.
    pub runtime: RuntimeKind,
    /// Container image (docker/podman).
    pub image: Option<String>,
    /// When a container runtime may pull the image.
    pub image_pull_policy: PullPolicy,
    /// Program to run (process runtime), or the container's entrypoint override.
    pub command: Option<String>,
    /// Arguments to `command`.
    pub args: Vec<String>,
    /// How many copies to run (for a singleton: 1 active instance).
    pub replicas: u32,
    /// Placement priority: higher priorities are placed first when capacity is short.
    pub priority: i32,
    /// CPU and memory requests (what placement reserves) and limits (what the runtime enforces).
    pub resources: Resources,
    /// Where the workload may run.
    pub constraints: Constraints,
    /// Spread replicas over nodes, or pack them onto as few nodes as possible.
    pub placement: PlacementStrategy,
    /// What a side of a network partition may do about replicas it cannot see.
    pub partition: PartitionPolicy,
    /// Named ports the workload listens on.
    pub ports: Vec<PortSpec>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Services this workload dials: each port of each gets `STARLING_SVC_<NAME>_<PORT>`, the
    /// address of the local proxy in front of it (see `protocol::service`).
    pub uses: Vec<WorkloadName>,
    /// Configuration objects mounted into the workload.
    pub configs: Vec<ConfigRef>,
    /// Secrets, decrypted only on the node that runs a replica.
    pub secrets: Vec<SecretRef>,
    /// How to tell a replica is healthy.
    pub health: Option<HealthCheck>,
    /// What to do when a replica exits.
    pub restart: RestartPolicy,
    /// How a new revision replaces the old one.
    pub update: UpdateStrategy,
    /// Automatic scaling between bounds.
    pub scaling: Option<ScalingPolicy>,
    /// Exactly one active instance, elected through a lease.
    pub singleton: bool,
    /// How a singleton's lease is held (ignored unless `singleton`).
    pub lease: LeaseSettings,
}

/// A singleton's lease: how it is elected, how long a grant lasts, and how many warm standbys
/// run beside the active instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseSettings {
    /// Quorum (at most one holder, needs a majority of voters) or local (one per side).
    pub mode: LeaseMode,
    /// How long one grant lasts; a holder that cannot renew stops before this runs out.
    pub ttl_ms: u64,
    /// Instances started beside the active one that take over when it goes (not active).
    pub standbys: u32,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            mode: LeaseMode::Quorum,
            ttl_ms: DEFAULT_LEASE_TTL_MS,
            standbys: 0,
        }
    }
}

/// A lease's TTL when the spec names none.
pub const DEFAULT_LEASE_TTL_MS: u64 = 10_000;

/// How a lease is elected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LeaseMode {
    /// A majority of the fleet's voters must grant it: never two holders, none on a side
    /// without a majority (CP).
    #[default]
    Quorum,
    /// Each side of a partition elects its own holder; on heal the higher epoch wins and the
    /// other steps down (AP).
    Local,
}

/// Runtimes a node can offer and a workload can ask for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// A plain child process of the agent (the embedded default, no daemon needed).
    #[default]
    Process,
    /// A container through the Docker Engine API.
    Docker,
    /// A container through Podman's Docker-compatible API.
    Podman,
}

/// When a container image may be pulled from a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Never pull: the image must be loaded on the node (`starling image load`).
    Never,
    /// Pull only when the node does not have the image.
    #[default]
    IfNotPresent,
    /// Pull before every start.
    Always,
}

/// Requests are reserved by placement; limits are enforced by the runtime when it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Resources {
    /// CPU reserved per replica.
    pub cpu_request: Millicores,
    /// CPU ceiling per replica, if any.
    pub cpu_limit: Option<Millicores>,
    /// Memory reserved per replica.
    pub memory_request: Bytes,
    /// Memory ceiling per replica, if any.
    pub memory_limit: Option<Bytes>,
}

/// Hard placement constraints; a node must satisfy all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Constraints {
    /// Labels the node must carry, with these exact values.
    pub labels: BTreeMap<String, String>,
    /// CPU architectures allowed (empty: any), as Rust's `std::env::consts::ARCH` names them.
    pub arch: BTreeSet<String>,
}

/// How replicas of one workload are laid out over nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementStrategy {
    /// No two replicas on one node while another node fits (the default).
    #[default]
    Spread,
    /// Fill nodes in one fleet-wide order, so fewer nodes are busy.
    BinPack,
}

/// What a partitioned side may do about replicas held by nodes it cannot see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionPolicy {
    /// Only a side that sees a majority of the known members replaces missing replicas.
    #[default]
    Consistency,
    /// Every side replaces missing replicas; duplicates are accepted while split.
    Availability,
}

/// A named port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// Name used by health checks and service discovery (a DNS label).
    pub name: String,
    /// Port the workload listens on.
    pub container_port: u16,
    /// Fixed host port, or `None` to let the agent pick one.
    pub host_port: Option<u16>,
    /// Transport protocol.
    pub protocol: PortProtocol,
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// A reference to a config object: its entries as files in a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRef {
    /// Name of the config object in the fleet.
    pub name: String,
    /// Containers: the directory that holds the entries (default `/run/configs/NAME`).
    /// Processes have no private filesystem: theirs is `$STARLING_CONFIGS_DIR/NAME`.
    pub path: Option<String>,
    /// What a new version does to a running replica.
    pub reload: Reload,
}

/// A reference to a secret: its entries as files on a memory filesystem, and optionally one
/// entry as an environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    /// Name of the secret in the fleet.
    pub name: String,
    /// Environment variable that receives one entry's value.
    pub env: Option<String>,
    /// The entry `env` receives (`None`: the secret's only entry).
    pub key: Option<String>,
    /// Containers: the directory that holds the entries (default `/run/secrets/NAME`).
    /// Processes have no private filesystem: theirs is `$STARLING_SECRETS_DIR/NAME`.
    pub path: Option<String>,
    /// What a new version does to a running replica.
    pub reload: Reload,
}

/// What a new version of a secret or config does to the replicas that use it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reload {
    /// A rolling update: the replicas restart on the new version under the workload's update
    /// strategy and health gates.
    #[default]
    Restart,
    /// The files are rewritten in place and the replica is sent this signal.
    File(ReloadSignal),
}

/// The signal a replica gets after its files were rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReloadSignal {
    /// No signal: the workload watches its files.
    None,
    /// SIGHUP.
    Hup,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2.
    Usr2,
}

impl ReloadSignal {
    /// The signal's name as specs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadSignal::None => "none",
            ReloadSignal::Hup => "SIGHUP",
            ReloadSignal::Usr1 => "SIGUSR1",
            ReloadSignal::Usr2 => "SIGUSR2",
        }
    }

    /// Parses a spec's `reload_signal`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(ReloadSignal::None),
            "SIGHUP" | "HUP" => Ok(ReloadSignal::Hup),
            "SIGUSR1" | "USR1" => Ok(ReloadSignal::Usr1),
            "SIGUSR2" | "USR2" => Ok(ReloadSignal::Usr2),
            other => Err(format!(
                "unknown signal {other:?}: use SIGHUP, SIGUSR1, SIGUSR2 or \"none\""
            )),
        }
    }
}

/// A health check and its timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What to probe.
    pub probe: Probe,
    /// Time between probes.
    pub interval_ms: u64,
    /// A probe slower than this fails.
    pub timeout_ms: u64,
    /// Consecutive failures before the replica is unhealthy.
    pub failure_threshold: u32,
    /// Grace after start before failures count.
    pub initial_delay_ms: u64,
}

/// The kinds of probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    /// Run a command (inside the container for container runtimes); exit 0 is healthy.
    Exec {
        /// Program and arguments.
        command: Vec<String>,
    },
    /// Open a TCP connection to a named port.
    Tcp {
        /// Name of a port in `ports`.
        port: String,
    },
    /// GET a path on a named port; a 2xx or 3xx answer is healthy.
    Http {
        /// Name of a port in `ports`.
        port: String,
        /// Request path, starting with `/`.
        path: String,
    },
}

/// What happens when a replica exits, and how fast it is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// When to restart.
    pub mode: RestartMode,
    /// First back-off delay; doubles on each failure.
    pub backoff_initial_ms: u64,
    /// Back-off ceiling.
    pub backoff_max_ms: u64,
    /// A replica that has run this long resets its back-off and failure count.
    pub reset_after_ms: u64,
}

/// When to restart an exited replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartMode {
    /// Always restart, whatever the exit code.
    Always,
    /// Restart after a non-zero exit, at most `max_retries` times in a row.
    OnFailure {
        /// Consecutive failed restarts before the replica is reported as `CrashLoop`.
        max_retries: u32,
    },
    /// Never restart.
    Never,
}

/// How a new revision rolls out (see `protocol::rollout` for the gate every node applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStrategy {
    /// Replicas moved to the new revision together, in index order.
    pub batch_size: u32,
    /// Replicas the update may take below `replicas` available at once (stop-first).
    pub max_unavailable: u32,
    /// Instances the update may run above `replicas` at once (start-first).
    pub max_surge: u32,
    /// How long a new instance must stay healthy before it counts as updated.
    pub min_healthy_ms: u64,
    /// A new instance not healthy within this time (or crash looping) fails the rollout.
    pub health_deadline_ms: u64,
    /// Roll back to the previous revision when the rollout fails.
    pub auto_rollback: bool,
    /// Whether a replica's new instance starts before its old one stops.
    pub order: UpdateOrder,
    /// `Some`: a canary rollout that stops after this many replicas until promoted.
    pub canary: Option<Canary>,
}

/// The order of stop and start when one replica moves to a new revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Start the new instance beside the old one; stop the old once the new is healthy.
    #[default]
    StartFirst,
    /// Stop the old instance, then start the new one.
    StopFirst,
}

/// A canary rollout: the first `count` replicas (by index) move, then the rollout waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    /// Replicas on the new revision before the rollout waits for a promote.
    pub count: u32,
    /// Promote by itself once the canaries have been healthy this long (`None`: by hand).
    pub auto_promote_after_ms: Option<u64>,
}

/// Automatic scaling between bounds on a metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalingPolicy {
    /// Fewest replicas.
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// The metric that drives scaling.
    pub metric: ScalingMetric,
    /// Target value of the metric per replica (percent for CPU).
    pub target: u64,
}

/// Metrics that can drive scaling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScalingMetric {
    /// Average CPU use as a percent of the request.
    Cpu,
    /// A metric the workload reports to its agent, by name.
    Custom(String),
}

impl WorkloadSpec {
    /// Parses and validates a TOML spec. All problems are returned, each with its field path.
    pub fn from_toml(text: &str) -> Result<Self, SpecErrors> {
        SpecDoc::from_toml(text)?.validate()
    }

    /// Parses and validates a JSON spec. All problems are returned, each with its field path.
    pub fn from_json(text: &str) -> Result<Self, SpecErrors> {
        SpecDoc::from_json(text)?.validate()
    }

    /// Checks a spec that did not come through [`SpecDoc::validate`] (e.g. decoded from the
    /// wire): it must survive a round trip through its document unchanged.
    pub fn check(&self) -> Result<(), SpecErrors> {
        let again = self.to_doc().validate()?;
        if &again != self {
            return Err(SpecErrors::single(
                "",
                "spec is not in canonical form (it changes when validated again)",
            ));
        }
        Ok(())
    }

    /// The spec as a document, with defaults spelled out.
    pub fn to_doc(&self) -> SpecDoc {
        doc::to_doc(self)
    }

    /// The spec as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.to_doc()).unwrap_or_else(|e| format!("# not printable: {e}"))
    }

    /// Host ports a replica binds on its node, which no other replica there may bind: the ports
    /// its spec fixes with `host_port`, whatever the runtime. A port without one takes a free
    /// port per instance (the agent picks it for a process and hands it over as
    /// `STARLING_PORT_<NAME>` and `${port.NAME}`; the engine picks it for a container), so
    /// replicas of one workload can share a node.
    pub fn host_ports(&self) -> Vec<(u16, PortProtocol)> {
        self.ports
            .iter()
            .filter_map(|p| p.host_port.map(|h| (h, p.protocol)))
            .collect()
    }

    /// Replicas counted for placement: a singleton has one active instance plus its standbys.
    pub fn replicas_to_place(&self) -> u32 {
        if self.singleton {
            self.replicas.min(1) * (1 + self.lease.standbys)
        } else {
            self.replicas
        }
    }
}

impl RestartPolicy {
    /// Defaults: restart always, back-off from 100 ms doubling to 30 s, reset after 60 s of run.
    pub const DEFAULT: RestartPolicy = RestartPolicy {
        mode: RestartMode::Always,
        backoff_initial_ms: 100,
        backoff_max_ms: 30_000,
        reset_after_ms: 60_000,
    };
}

impl UpdateStrategy {
    /// Defaults: one replica at a time, start-first with one surge and none unavailable,
    /// healthy for 5 s to count, 5 minutes to get healthy, roll back on failure.
    pub const DEFAULT: UpdateStrategy = UpdateStrategy {
        batch_size: 1,
        max_unavailable: 0,
        max_surge: 1,
        min_healthy_ms: 5_000,
        health_deadline_ms: 300_000,
        auto_rollback: true,
        order: UpdateOrder::StartFirst,
        canary: None,
    };

    /// Defaults for a workload whose instances cannot run two at once on a node (a singleton,
    /// or a fixed host port): stop-first, one replica unavailable at a time.
    pub const STOP_FIRST: UpdateStrategy = UpdateStrategy {
        max_unavailable: 1,
        max_surge: 0,
        order: UpdateOrder::StopFirst,
        ..UpdateStrategy::DEFAULT
    };
}
