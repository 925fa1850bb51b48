//! Scenario files: the fleet, its workloads, a timeline of faults, and how long to run.
//!
//! ```toml
//! name = "site partition and heal"
//! duration = "5m"
//! [fleet]
//! nodes = 9
//! sites = ["a", "b", "c"]
//! [[workloads]]            # the same spec format as `starling apply`
//! name = "web"
//! command = "web"
//! replicas = 6
//! [[faults]]
//! at = "1m"
//! kind = "partition"
//! groups = [["site=a"], ["site=b", "site=c"]]
//! [[faults]]
//! at = "3m"
//! kind = "heal"
//! ```
//!
//! Cores: `[core] settle = "100ms"` (the claim settle; default 1 s, the agent's is 100 ms).
//! Leases: `[leases] max_drift = "500ms"` (the electors' clock-drift bound, default 500 ms);
//! voters are the nodes labelled `voter = "true"` (`[[fleet.labels]] nodes = [...]` with the
//! labels as keys), else every initial node. `[check] expect_violation = "lease-holders"`
//! marks a scenario built to break an invariant (the tests assert it is detected).

use std::collections::BTreeMap;

use serde::Deserialize;
use starling_protocol::quantity::{parse_cpu, parse_duration_ms, parse_memory};
use starling_protocol::spec::{SpecDoc, WorkloadSpec};

/// A parsed, checked scenario (times in ms).
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    /// How long to run.
    pub duration_ms: u64,
    /// Fleet shape.
    pub fleet: Fleet,
    /// Network behaviour.
    pub network: Network,
    /// Gossip and failure detection.
    pub gossip: Gossip,
    /// Simulated runtime.
    pub runtime: RuntimeModel,
    /// Workloads applied at time 0 on the first node.
    pub workloads: Vec<WorkloadSpec>,
    /// The timeline.
    pub faults: Vec<Fault>,
    /// Liveness bound: after the last fault, the fleet must converge within this.
    pub converge_within_ms: u64,
    /// Leader election settings.
    pub leases: LeaseModel,
    /// Settings of every node's core.
    pub core: CoreModel,
    /// The invariant this scenario is built to break (a run that breaks another one, or
    /// none, is a failure of the scenario).
    pub expect_violation: Option<String>,
}

/// The node cores' settings a scenario may change (the rest are `CoreConfig`'s defaults).
#[derive(Debug, Clone)]
pub struct CoreModel {
    /// How long a claim waits for competing claims before its replica starts
    /// (`CoreConfig::settle_ms`, default 1 s; the agent's `--settle-ms` defaults to 100 ms).
    pub settle_ms: u64,
}

/// Leader election in the simulation.
#[derive(Debug, Clone)]
pub struct LeaseModel {
    /// The electors' bound on clock drift over one lease (`ElectorConfig::max_drift_ms`).
    pub max_drift_ms: u64,
}

/// Fleet shape.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Initial node count.
    pub nodes: usize,
    /// Site labels, assigned round-robin (`site=<name>`).
    pub sites: Vec<String>,
    /// CPU per node, millicores.
    pub cpu_millicores: u32,
    /// Memory per node, bytes.
    pub memory_bytes: u64,
    /// Extra labels: (node ids, labels each of them gets).
    pub labels: Vec<(Vec<String>, BTreeMap<String, String>)>,
}

/// Network model.
#[derive(Debug, Clone)]
pub struct Network {
    /// One-way latency range, uniform.
    pub latency_ms: (u64, u64),
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
}

/// Gossip model.
#[derive(Debug, Clone)]
pub struct Gossip {
    /// Heartbeat and status round.
    pub interval_ms: u64,
    /// Silence after which a peer is suspected.
    pub suspect_after_ms: u64,
    /// Silence after which a peer is declared down.
    pub down_after_ms: u64,
    /// How nodes decide who is down.
    pub detector: DetectorModel,
    /// Which level of gossip simulation runs.
    pub model: GossipModel,
    /// How long a restarted node waits to hear the fleet before it acts (the agent's
    /// `--rejoin-wait-ms`).
    pub rejoin_wait_ms: u64,
    /// How long peers hold the replicas of a node that announced a planned restart (the
    /// agent's `--restart-window-ms`; `agent-restart` faults with `planned = true`).
    pub restart_window_ms: u64,
    /// Encoded bytes of desired-state entries per anti-entropy page (the agent's
    /// `starling_protocol::desired::PAGE_BYTES`); small values exercise paging.
    pub page_bytes: usize,
    /// How long a sync request waits for its answer (the sync machine's
    /// `request_timeout_ms`). The agent waits 15 s because QUIC retransmits what the link
    /// loses; here a lost message is gone, so the default is 5 s.
    pub sync_timeout_ms: u64,
    /// How long a tombstone is kept (the sync machine's `tombstone_grace_ms`; the agent's
    /// `--tombstone-grace`). Default 7 days, as the agent's.
    pub tombstone_grace_ms: u64,
    /// How often nodes look for tombstones to collect. Default 60 s.
    pub collect_every_ms: u64,
}

/// The two levels of gossip simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipModel {
    /// Every message over the simulated network (heartbeats, statuses, anti-entropy, probes):
    /// tens of nodes.
    Mesh,
    /// Epidemic rounds: each round every node reconciles with `fanout` random peers, and k
    /// watchers declare a silent node suspect and down after the configured rounds. Scales to
    /// 10,000+ nodes (see `fast`).
    Fast {
        /// Peers contacted per node per round.
        fanout: usize,
    },
}

/// Failure detection in the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectorModel {
    /// Modelled: a peer not heard from (gossip heartbeat) for `suspect_after` is suspected and
    /// for `down_after` is down.
    Silence,
    /// The real `node::membership::Detector`: k watchers with direct and indirect probes over
    /// the simulated network, verdicts spread to every member.
    Watchers,
}

/// Simulated runtime.
#[derive(Debug, Clone)]
pub struct RuntimeModel {
    /// Time from start request to running, range.
    pub start_delay_ms: (u64, u64),
    /// Random replica crashes per replica per hour.
    pub crash_rate_per_hour: f64,
    /// Per workload, the value of its scaling metric every running replica reports (its
    /// autoscaler's input); workloads not named report nothing.
    pub load: BTreeMap<String, u64>,
}

/// One fault at one time.
#[derive(Debug, Clone)]
pub struct Fault {
    /// When.
    pub at_ms: u64,
    /// What.
    pub kind: FaultKind,
}

/// Which nodes a fault applies to: node ids, `site=X`, `random:N`, `random:30%`,
/// `holder:<workload>` (nodes running it at that moment), `all`.
pub type Selector = Vec<String>;

/// The faults a scenario can inject.
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone)]
pub enum FaultKind {
    /// Processes die, memory is lost, the disk is kept.
    Crash(Selector),
    /// Crashed nodes start again from their disks.
    Restart(Selector),
    /// Crash and lose the disk; a later restart is a fresh node with the same id.
    DiskLoss(Selector),
    /// Split into groups that cannot reach each other (nodes in no group form one more group).
    Partition(Vec<Selector>),
    /// `from` stops reaching `to` (one way).
    Cut {
        /// Senders.
        from: Selector,
        /// Receivers.
        to: Selector,
    },
    /// Every link works again.
    Heal,
    /// Clocks jump by `skew_ms` (may be negative).
    Skew {
        /// Nodes.
        nodes: Selector,
        /// Offset added.
        skew_ms: i64,
    },
    /// The node freezes for a while (no timers, no messages), then resumes.
    Pause {
        /// Nodes.
        nodes: Selector,
        /// For how long.
        duration_ms: u64,
    },
    /// The links between two sets go down and up every `period_ms` for `duration_ms`.
    Flap {
        /// One side.
        a: Selector,
        /// Other side.
        b: Selector,
        /// Half-period.
        period_ms: u64,
        /// Total time.
        duration_ms: u64,
    },
    /// Each node in turn: crash, stay down `downtime_ms`, restart; `gap_ms` between nodes.
    RollingReboot {
        /// Nodes, in order.
        nodes: Selector,
        /// Downtime each.
        downtime_ms: u64,
        /// From one restart to the next crash.
        gap_ms: u64,
    },
    /// The agent process stops and starts again `downtime_ms` later; its replicas keep running
    /// and the new agent adopts them. `planned`: it first announces a restart
    /// (`Departure::Restarting`, as `--on-stop leave` does), gives its singletons and leases
    /// up, then goes.
    AgentRestart {
        /// Nodes.
        nodes: Selector,
        /// From the agent going away to its new start.
        downtime_ms: u64,
        /// Announced first (`--on-stop leave`), or killed outright.
        planned: bool,
    },
    /// Nodes join and leave at `per_minute` each for `duration_ms`.
    Churn {
        /// Joins and leaves per minute.
        per_minute: u32,
        /// For how long.
        duration_ms: u64,
    },
    /// An API write at a node (acknowledged once stored on its disk).
    Write {
        /// Where.
        node: Selector,
        spec: Box<WorkloadSpec>,
    },
    /// `starling delete NAME` at a node: a tombstone, acknowledged once stored.
    Delete {
        /// Where.
        node: Selector,
        /// The workload.
        name: starling_protocol::WorkloadName,
    },
    /// Create/delete churn: `per_minute` new workloads (`churn-1`, `churn-2`, ...) written at
    /// the `node` selector over `duration_ms`, each deleted `lifetime_ms` after its creation.
    SpecChurn {
        /// Where the writes go.
        node: Selector,
        per_minute: u32,
        duration_ms: u64,
        lifetime_ms: u64,
    },
    /// `secret set NAME` at a node: `value` sealed to every node of the fleet (each simulated
    /// node's key derives from its id), stored and pushed like any write.
    WriteSecret {
        /// Where.
        node: Selector,
        /// The secret.
        name: starling_protocol::WorkloadName,
        /// Its one entry's value.
        value: String,
    },
}

/// A scenario that cannot be used, with the field at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ScenarioError(pub String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    name: String,
    #[serde(default)]
    description: Option<String>,
    duration: String,
    #[serde(default)]
    fleet: FleetDoc,
    #[serde(default)]
    network: NetworkDoc,
    #[serde(default)]
    gossip: GossipDoc,
    #[serde(default)]
    runtime: RuntimeDoc,
    #[serde(default)]
    workloads: Vec<toml::Table>,
    #[serde(default)]
    faults: Vec<FaultDoc>,
    #[serde(default)]
    check: CheckDoc,
    #[serde(default)]
    leases: LeasesDoc,
    #[serde(default)]
    core: CoreDoc,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CoreDoc {
    settle: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FleetDoc {
    nodes: Option<usize>,
    #[serde(default)]
    sites: Vec<String>,
    cpu: Option<String>,
    memory: Option<String>,
    #[serde(default)]
    labels: Vec<LabelsDoc>,
}

#[derive(Deserialize)]
struct LabelsDoc {
    nodes: Vec<String>,
    #[serde(flatten)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LeasesDoc {
    max_drift: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NetworkDoc {
    latency: Option<[String; 2]>,
    loss: Option<f64>,
    duplicate: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GossipDoc {
    interval: Option<String>,
    suspect_after: Option<String>,
    down_after: Option<String>,
    detector: Option<String>,
    model: Option<String>,
    fanout: Option<usize>,
    rejoin_wait: Option<String>,
    restart_window: Option<String>,
    page_bytes: Option<usize>,
    sync_timeout: Option<String>,
    tombstone_grace: Option<String>,
    collect_every: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuntimeDoc {
    start_delay: Option<[String; 2]>,
    crash_rate_per_hour: Option<f64>,
    #[serde(default)]
    load: BTreeMap<String, u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CheckDoc {
    converge_within: Option<String>,
    expect_violation: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultDoc {
    at: String,
    kind: String,
    #[serde(default)]
    nodes: Vec<String>,
    #[serde(default)]
    groups: Vec<Vec<String>>,
    #[serde(default)]
    to: Vec<String>,
    skew: Option<String>,
    duration: Option<String>,
    period: Option<String>,
    downtime: Option<String>,
    gap: Option<String>,
    per_minute: Option<u32>,
    spec: Option<toml::Table>,
    planned: Option<bool>,
    name: Option<String>,
    value: Option<String>,
    lifetime: Option<String>,
}

/// Largest fleet a scenario may ask for.
pub const NODES_MAX: usize = 20_000;

impl Scenario {
    /// Parses and checks a scenario; errors name the field.
    pub fn from_toml(text: &str) -> Result<Scenario, ScenarioError> {
        let doc: Doc = toml::from_str(text).map_err(|e| {
            ScenarioError(format!("not a valid scenario: {}", e.to_string().trim()))
        })?;
        let _ = doc.description;
        let ms = |field: &str, text: &str| {
            parse_duration_ms(text).map_err(|e| ScenarioError(format!("{field}: {e}")))
        };
        let opt_ms = |field: &str, text: &Option<String>, default: u64| {
            text.as_deref().map_or(Ok(default), |t| ms(field, t))
        };
        let nodes = doc.fleet.nodes.unwrap_or(5);
        if nodes == 0 || nodes > NODES_MAX {
            return Err(ScenarioError(format!(
                "fleet.nodes: must be between 1 and {NODES_MAX}, got {nodes}"
            )));
        }
        let cpu = parse_cpu(doc.fleet.cpu.as_deref().unwrap_or("4"))
            .map_err(|e| ScenarioError(format!("fleet.cpu: {e}")))?;
        let memory = parse_memory(doc.fleet.memory.as_deref().unwrap_or("8Gi"))
            .map_err(|e| ScenarioError(format!("fleet.memory: {e}")))?;
        let latency = match &doc.network.latency {
            Some([lo, hi]) => (ms("network.latency[0]", lo)?, ms("network.latency[1]", hi)?),
            None => (1, 20),
        };
        let start_delay = match &doc.runtime.start_delay {
            Some([lo, hi]) => (
                ms("runtime.start_delay[0]", lo)?,
                ms("runtime.start_delay[1]", hi)?,
            ),
            None => (100, 400),
        };
        let probability = |field: &str, p: Option<f64>| match p.unwrap_or(0.0) {
            p if (0.0..=0.5).contains(&p) => Ok(p),
            p => Err(ScenarioError(format!(
                "{field}: must be between 0 and 0.5, got {p}"
            ))),
        };
        let gossip = Gossip {
            interval_ms: opt_ms("gossip.interval", &doc.gossip.interval, 500)?.max(10),
            suspect_after_ms: opt_ms("gossip.suspect_after", &doc.gossip.suspect_after, 1_500)?,
            down_after_ms: opt_ms("gossip.down_after", &doc.gossip.down_after, 3_000)?,
            rejoin_wait_ms: opt_ms("gossip.rejoin_wait", &doc.gossip.rejoin_wait, 5_000)?,
            restart_window_ms: opt_ms("gossip.restart_window", &doc.gossip.restart_window, 60_000)?,
            page_bytes: match doc.gossip.page_bytes {
                None => starling_protocol::desired::PAGE_BYTES,
                Some(0) => {
                    return Err(ScenarioError(
                        "gossip.page_bytes: must be at least 1 (one entry always travels)".into(),
                    ));
                }
                Some(n) => n.min(starling_protocol::desired::PAGE_BYTES),
            },
            sync_timeout_ms: opt_ms("gossip.sync_timeout", &doc.gossip.sync_timeout, 5_000)?.max(1),
            tombstone_grace_ms: opt_ms(
                "gossip.tombstone_grace",
                &doc.gossip.tombstone_grace,
                7 * 24 * 3_600_000,
            )?,
            collect_every_ms: opt_ms("gossip.collect_every", &doc.gossip.collect_every, 60_000)?
                .max(1),
            detector: match doc.gossip.detector.as_deref() {
                None | Some("silence") => DetectorModel::Silence,
                Some("watchers") => DetectorModel::Watchers,
                Some(other) => {
                    return Err(ScenarioError(format!(
                        "gossip.detector: must be silence or watchers, got {other:?}"
                    )));
                }
            },
            model: match (doc.gossip.model.as_deref(), doc.gossip.fanout) {
                (None | Some("mesh"), None) => GossipModel::Mesh,
                (None | Some("mesh"), Some(_)) => {
                    return Err(ScenarioError(
                        "gossip.fanout: only the fast model has a fanout (model = \"fast\")".into(),
                    ));
                }
                (Some("fast"), fanout) => match fanout.unwrap_or(3) {
                    f @ 1..=16 => GossipModel::Fast { fanout: f },
                    f => {
                        return Err(ScenarioError(format!(
                            "gossip.fanout: must be between 1 and 16, got {f}"
                        )));
                    }
                },
                (Some(other), _) => {
                    return Err(ScenarioError(format!(
                        "gossip.model: must be mesh or fast, got {other:?}"
                    )));
                }
            },
        };
        if gossip.down_after_ms < gossip.suspect_after_ms {
            return Err(ScenarioError(
                "gossip.down_after: must be at least gossip.suspect_after".into(),
            ));
        }
        let mut workloads = Vec::new();
        for (i, table) in doc.workloads.into_iter().enumerate() {
            workloads.push(spec_of(&format!("workloads[{i}]"), table)?);
        }
        let mut faults = Vec::new();
        for (i, f) in doc.faults.into_iter().enumerate() {
            faults.push(fault_of(&format!("faults[{i}]"), f)?);
        }
        faults.sort_by_key(|f| f.at_ms);
        let mut labels = Vec::new();
        for (i, l) in doc.fleet.labels.into_iter().enumerate() {
            if l.nodes.is_empty() || l.labels.is_empty() {
                return Err(ScenarioError(format!(
                    "fleet.labels[{i}]: needs nodes = [...] and at least one label"
                )));
            }
            labels.push((l.nodes, l.labels));
        }
        if gossip.model != GossipModel::Mesh {
            fast_model_supports(&workloads, &faults)?;
        }
        Ok(Scenario {
            name: doc.name,
            duration_ms: ms("duration", &doc.duration)?,
            fleet: Fleet {
                nodes,
                sites: doc.fleet.sites,
                cpu_millicores: cpu.0,
                memory_bytes: memory.0,
                labels,
            },
            network: Network {
                latency_ms: (latency.0.min(latency.1), latency.0.max(latency.1)),
                loss: probability("network.loss", doc.network.loss)?,
                duplicate: probability("network.duplicate", doc.network.duplicate)?,
            },
            gossip,
            runtime: RuntimeModel {
                start_delay_ms: (
                    start_delay.0.min(start_delay.1),
                    start_delay.0.max(start_delay.1),
                ),
                crash_rate_per_hour: doc.runtime.crash_rate_per_hour.unwrap_or(0.0).max(0.0),
                load: doc.runtime.load.clone(),
            },
            workloads,
            faults,
            converge_within_ms: opt_ms(
                "check.converge_within",
                &doc.check.converge_within,
                60_000,
            )?,
            leases: LeaseModel {
                max_drift_ms: opt_ms("leases.max_drift", &doc.leases.max_drift, 500)?,
            },
            core: CoreModel {
                settle_ms: opt_ms("core.settle", &doc.core.settle, 1_000)?,
            },
            expect_violation: doc.check.expect_violation,
        })
    }
}

/// The fast model has no network links (so no partitions, cuts or flaps), no elector (so
/// no singleton that follows a lease) and no agent apart from its core (so no agent restart);
/// a scenario that needs them names the field to change.
fn fast_model_supports(workloads: &[WorkloadSpec], faults: &[Fault]) -> Result<(), ScenarioError> {
    for (i, w) in workloads.iter().enumerate() {
        if w.singleton {
            return Err(ScenarioError(format!(
                "workloads[{i}].singleton: leases need the mesh model (gossip.model = \"mesh\")"
            )));
        }
    }
    for (i, f) in faults.iter().enumerate() {
        let kind = match f.kind {
            FaultKind::Partition(_) => "partition",
            FaultKind::Cut { .. } => "cut",
            FaultKind::Heal => "heal",
            FaultKind::Flap { .. } => "flap",
            FaultKind::WriteSecret { .. } => "write-secret",
            FaultKind::Delete { .. } => "delete",
            FaultKind::SpecChurn { .. } => "spec-churn",
            FaultKind::AgentRestart { .. } => {
                return Err(ScenarioError(format!(
                    "faults[{i}].kind: agent-restart needs agents whose replicas outlive them, \
                     which only the mesh model has (gossip.model = \"mesh\")"
                )));
            }
            _ => continue,
        };
        return Err(ScenarioError(format!(
            "faults[{i}].kind: {kind} needs network links, which only the mesh model has \
             (gossip.model = \"mesh\")"
        )));
    }
    Ok(())
}

fn spec_of(path: &str, table: toml::Table) -> Result<WorkloadSpec, ScenarioError> {
    let text = toml::to_string(&table).map_err(|e| ScenarioError(format!("{path}: {e}")))?;
    SpecDoc::from_toml(&text)
        .and_then(|d| d.validate())
        .map_err(|errors| {
            ScenarioError(
                errors
                    .errors()
                    .iter()
                    .map(|e| format!("{path}.{e}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })
}

fn fault_of(path: &str, f: FaultDoc) -> Result<Fault, ScenarioError> {
    let ms = |field: &str, text: &Option<String>| -> Result<u64, ScenarioError> {
        let text = text.as_deref().ok_or_else(|| {
            ScenarioError(format!("{path}.{field}: is required for kind {}", f.kind))
        })?;
        parse_duration_ms(text).map_err(|e| ScenarioError(format!("{path}.{field}: {e}")))
    };
    let at_ms = parse_duration_ms(&f.at).map_err(|e| ScenarioError(format!("{path}.at: {e}")))?;
    let nodes = || -> Result<Selector, ScenarioError> {
        if f.nodes.is_empty() {
            Err(ScenarioError(format!(
                "{path}.nodes: is required for kind {}",
                f.kind
            )))
        } else {
            Ok(f.nodes.clone())
        }
    };
    if f.planned.is_some() && f.kind != "agent-restart" {
        return Err(ScenarioError(format!(
            "{path}.planned: only kind agent-restart has it, not {}",
            f.kind
        )));
    }
    let kind = match f.kind.as_str() {
        "crash" => FaultKind::Crash(nodes()?),
        "restart" => FaultKind::Restart(nodes()?),
        "disk-loss" => FaultKind::DiskLoss(nodes()?),
        "partition" if f.groups.is_empty() => {
            return Err(ScenarioError(format!(
                "{path}.groups: is required for a partition"
            )));
        }
        "partition" => FaultKind::Partition(f.groups.clone()),
        "cut" => FaultKind::Cut {
            from: nodes()?,
            to: f.to.clone(),
        },
        "heal" => FaultKind::Heal,
        "skew" => {
            let text = f
                .skew
                .clone()
                .ok_or_else(|| ScenarioError(format!("{path}.skew: is required for kind skew")))?;
            let (negative, abs) = text
                .strip_prefix('-')
                .map_or((false, text.as_str()), |t| (true, t));
            let v = parse_duration_ms(abs)
                .map_err(|e| ScenarioError(format!("{path}.skew: {e}")))?
                as i64;
            FaultKind::Skew {
                nodes: nodes()?,
                skew_ms: if negative { -v } else { v },
            }
        }
        "pause" => FaultKind::Pause {
            nodes: nodes()?,
            duration_ms: ms("duration", &f.duration)?,
        },
        "flap" => FaultKind::Flap {
            a: nodes()?,
            b: f.to.clone(),
            period_ms: ms("period", &f.period)?.max(1),
            duration_ms: ms("duration", &f.duration)?,
        },
        "agent-restart" => FaultKind::AgentRestart {
            nodes: nodes()?,
            downtime_ms: ms("downtime", &f.downtime)?,
            planned: f.planned.unwrap_or(false),
        },
        "rolling-reboot" => FaultKind::RollingReboot {
            nodes: nodes()?,
            downtime_ms: ms("downtime", &f.downtime)?,
            gap_ms: ms("gap", &f.gap)?,
        },
        "churn" => FaultKind::Churn {
            per_minute: f.per_minute.ok_or_else(|| {
                ScenarioError(format!("{path}.per_minute: is required for kind churn"))
            })?,
            duration_ms: ms("duration", &f.duration)?,
        },
        "write" => {
            let table = f
                .spec
                .clone()
                .ok_or_else(|| ScenarioError(format!("{path}.spec: is required for kind write")))?;
            FaultKind::Write {
                node: nodes()?,
                spec: Box::new(spec_of(&format!("{path}.spec"), table)?),
            }
        }
        "delete" => FaultKind::Delete {
            node: nodes()?,
            name: starling_protocol::WorkloadName::new(f.name.clone().ok_or_else(|| {
                ScenarioError(format!("{path}.name: is required for kind delete"))
            })?)
            .map_err(|e| ScenarioError(format!("{path}.name: {e}")))?,
        },
        "spec-churn" => FaultKind::SpecChurn {
            node: nodes()?,
            per_minute: f.per_minute.ok_or_else(|| {
                ScenarioError(format!(
                    "{path}.per_minute: is required for kind spec-churn"
                ))
            })?,
            duration_ms: ms("duration", &f.duration)?,
            lifetime_ms: ms("lifetime", &f.lifetime)?,
        },
        "write-secret" => {
            let name = f.name.clone().ok_or_else(|| {
                ScenarioError(format!("{path}.name: is required for kind write-secret"))
            })?;
            FaultKind::WriteSecret {
                node: nodes()?,
                name: starling_protocol::WorkloadName::new(name)
                    .map_err(|e| ScenarioError(format!("{path}.name: {e}")))?,
                value: f.value.clone().ok_or_else(|| {
                    ScenarioError(format!("{path}.value: is required for kind write-secret"))
                })?,
            }
        }
        other => {
            return Err(ScenarioError(format!(
                "{path}.kind: unknown fault {other:?}; use crash, restart, agent-restart, disk-loss, partition, cut, heal, skew, pause, flap, rolling-reboot, churn, write, delete, spec-churn or write-secret"
            )));
        }
    };
    Ok(Fault { at_ms, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_parses_with_defaults_and_sorted_faults() {
        let s = Scenario::from_toml(
            "name = \"t\"\nduration = \"2m\"\n[[workloads]]\nname = \"web\"\ncommand = \"w\"\n[[faults]]\nat = \"90s\"\nkind = \"heal\"\n[[faults]]\nat = \"30s\"\nkind = \"crash\"\nnodes = [\"node-1\"]\n",
        )
        .expect("valid");
        assert_eq!(
            (s.duration_ms, s.fleet.nodes, s.gossip.interval_ms),
            (120_000, 5, 500)
        );
        assert_eq!(
            s.faults.iter().map(|f| f.at_ms).collect::<Vec<_>>(),
            vec![30_000, 90_000]
        );
    }

    #[test]
    fn labels_leases_and_an_expected_violation_parse() {
        let s = Scenario::from_toml(
            "name = \"t\"\nduration = \"1m\"\n[fleet]\nnodes = 4\n[[fleet.labels]]\nnodes = [\"node-01\", \"node-02\"]\nvoter = \"true\"\n[leases]\nmax_drift = \"250ms\"\n[check]\nexpect_violation = \"lease-holders\"\n",
        )
        .expect("valid");
        assert_eq!(s.leases.max_drift_ms, 250);
        assert_eq!(s.expect_violation.as_deref(), Some("lease-holders"));
        assert_eq!(s.fleet.labels.len(), 1);
        assert_eq!(s.fleet.labels[0].0, vec!["node-01", "node-02"]);
        assert_eq!(
            s.fleet.labels[0].1.get("voter").map(String::as_str),
            Some("true")
        );
        let e = Scenario::from_toml(
            "name = \"t\"\nduration = \"1m\"\n[[fleet.labels]]\nnodes = [\"node-01\"]\n",
        )
        .expect_err("no label");
        assert!(e.to_string().starts_with("fleet.labels[0]:"), "{e}");
        let e = Scenario::from_toml(
            "name = \"t\"\nduration = \"1m\"\n[leases]\nmax_drift = \"soon\"\n",
        )
        .expect_err("bad drift");
        assert!(e.to_string().starts_with("leases.max_drift:"), "{e}");
    }

    #[test]
    fn agent_restarts_and_core_settings_parse_and_the_fast_model_refuses_them() {
        let text = "name = \"t\"\nduration = \"2m\"\n[gossip]\nrestart_window = \"30s\"\n[core]\nsettle = \"100ms\"\n[[faults]]\nat = \"1m\"\nkind = \"agent-restart\"\nnodes = [\"node-01\"]\ndowntime = \"20s\"\nplanned = true\n";
        let s = Scenario::from_toml(text).expect("valid");
        assert_eq!(
            (s.gossip.restart_window_ms, s.core.settle_ms),
            (30_000, 100)
        );
        assert!(matches!(
            s.faults[0].kind,
            FaultKind::AgentRestart {
                downtime_ms: 20_000,
                planned: true,
                ..
            }
        ));
        let defaults = Scenario::from_toml("name = \"t\"\nduration = \"1m\"\n").expect("valid");
        assert_eq!(
            (defaults.gossip.restart_window_ms, defaults.core.settle_ms),
            (60_000, 1_000)
        );
        let fast = text.replace("[gossip]\n", "[gossip]\nmodel = \"fast\"\n");
        let e = Scenario::from_toml(&fast).expect_err("fast model");
        assert!(
            e.to_string()
                .starts_with("faults[0].kind: agent-restart needs"),
            "{e}"
        );
        let e = Scenario::from_toml(&text.replace("agent-restart", "restart"))
            .expect_err("planned on a crash restart");
        assert!(e.to_string().starts_with("faults[0].planned:"), "{e}");
        let e = Scenario::from_toml(&text.replace("downtime = \"20s\"\n", ""))
            .expect_err("no downtime");
        assert_eq!(
            e.to_string(),
            "faults[0].downtime: is required for kind agent-restart"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = Scenario::from_toml(
            "name = \"t\"\nduration = \"2m\"\n[[faults]]\nat = \"1m\"\nkind = \"crash\"\n",
        )
        .expect_err("no nodes");
        assert_eq!(e.to_string(), "faults[0].nodes: is required for kind crash");
        let e = Scenario::from_toml(
            "name = \"t\"\nduration = \"2m\"\n[[workloads]]\nname = \"Bad\"\ncommand = \"x\"\n",
        )
        .expect_err("bad spec");
        assert!(e.to_string().starts_with("workloads[0].name:"), "{e}");
        let e =
            Scenario::from_toml("name = \"t\"\nduration = \"soon\"\n").expect_err("bad duration");
        assert!(e.to_string().starts_with("duration:"), "{e}");
    }
}
