//! The spec document as operators write it (TOML or JSON).
//!
//! Every field is optional where a default exists, numbers are wide (`i64`) and enumerations are
//! text, so that [`SpecDoc::validate`] can report a bad value with its path and the value seen
//! instead of stopping at the first type error. Unknown fields are recorded while parsing and
//! reported by `validate` as errors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::SpecErrors;
use super::{
    HealthCheck, LeaseMode, PartitionPolicy, PlacementStrategy, PortProtocol, Probe, PullPolicy,
    RestartMode, RuntimeKind, ScalingMetric, UpdateOrder, WorkloadSpec,
};
use crate::quantity::{QuantityText, format_duration_ms};

/// A workload spec document. Parse with [`SpecDoc::from_toml`] or [`SpecDoc::from_json`],
/// then call [`SpecDoc::validate`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)] // the fields are documented on WorkloadSpec and in docs/SPEC.md
pub struct SpecDoc {
    pub name: Option<String>,
    pub runtime: Option<String>,
    pub image: Option<String>,
    pub image_pull_policy: Option<String>,
    pub command: Option<String>,
    pub args: Option<Vec<String>>,
    pub replicas: Option<i64>,
    pub priority: Option<i64>,
    pub singleton: Option<bool>,
    pub standbys: Option<i64>,
    pub lease_mode: Option<String>,
    pub lease_ttl: Option<QuantityText>,
    pub placement: Option<String>,
    pub partition: Option<String>,
    pub resources: Option<ResourcesDoc>,
    pub constraints: Option<ConstraintsDoc>,
    pub ports: Option<Vec<PortDoc>>,
    pub env: Option<BTreeMap<String, String>>,
    pub uses: Option<Vec<String>>,
    pub configs: Option<Vec<ConfigDoc>>,
    pub secrets: Option<Vec<SecretDoc>>,
    pub health: Option<HealthDoc>,
    pub restart: Option<RestartDoc>,
    pub update: Option<UpdateDoc>,
    pub scaling: Option<ScalingDoc>,
    /// Paths of fields the parser did not know; `validate` reports each as an error.
    #[serde(skip)]
    pub unknown_fields: Vec<String>,
}

/// `[resources]`: requests (`cpu`, `memory`) and limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ResourcesDoc {
    pub cpu: Option<QuantityText>,
    pub memory: Option<QuantityText>,
    pub cpu_limit: Option<QuantityText>,
    pub memory_limit: Option<QuantityText>,
}

/// `[constraints]`: required node labels and allowed architectures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ConstraintsDoc {
    pub labels: Option<BTreeMap<String, String>>,
    pub arch: Option<Vec<String>>,
}

/// `[[ports]]`: a named port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct PortDoc {
    pub name: Option<String>,
    pub port: Option<i64>,
    pub host_port: Option<i64>,
    pub protocol: Option<String>,
}

/// `[[configs]]`: a config object mounted at a path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ConfigDoc {
    pub name: Option<String>,
    pub path: Option<String>,
    pub reload: Option<String>,
    pub reload_signal: Option<String>,
}

/// `[[secrets]]`: a secret delivered as an env var and/or a file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct SecretDoc {
    pub name: Option<String>,
    pub env: Option<String>,
    pub key: Option<String>,
    pub path: Option<String>,
    pub reload: Option<String>,
    pub reload_signal: Option<String>,
}

/// `[health]`: exactly one of `exec`, `tcp`, `http`, plus timing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct HealthDoc {
    pub exec: Option<Vec<String>>,
    pub tcp: Option<String>,
    pub http: Option<HttpProbeDoc>,
    pub interval: Option<QuantityText>,
    pub timeout: Option<QuantityText>,
    pub failure_threshold: Option<i64>,
    pub initial_delay: Option<QuantityText>,
}

/// `health.http`: the port name and path to GET.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct HttpProbeDoc {
    pub port: Option<String>,
    pub path: Option<String>,
}

/// `[restart]`: policy and back-off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct RestartDoc {
    pub policy: Option<String>,
    pub max_retries: Option<i64>,
    pub backoff_initial: Option<QuantityText>,
    pub backoff_max: Option<QuantityText>,
    pub reset_after: Option<QuantityText>,
}

/// `[update]`: rolling update strategy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct UpdateDoc {
    pub strategy: Option<String>,
    pub batch_size: Option<i64>,
    pub max_unavailable: Option<i64>,
    pub max_surge: Option<i64>,
    pub min_healthy: Option<QuantityText>,
    pub health_deadline: Option<QuantityText>,
    pub auto_rollback: Option<bool>,
    pub order: Option<String>,
    pub canary: Option<i64>,
    pub auto_promote_after: Option<QuantityText>,
}

/// `[scaling]`: automatic scaling bounds and metric.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ScalingDoc {
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub metric: Option<String>,
    pub target: Option<i64>,
}

impl SpecDoc {
    /// Parses TOML. A syntax or type error is returned at once (with its line and column);
    /// unknown fields are kept for `validate` to report alongside every other problem.
    pub fn from_toml(text: &str) -> Result<SpecDoc, SpecErrors> {
        let mut unknown = Vec::new();
        let deserializer = toml::Deserializer::parse(text).map_err(|e| {
            SpecErrors::single("", format!("not valid TOML: {}", e.to_string().trim()))
        })?;
        let mut doc: SpecDoc = serde_ignored::deserialize(deserializer, |path| {
            unknown.push(field_path(&path.to_string()))
        })
        .map_err(|e| SpecErrors::single("", plain_types(e.to_string().trim(), "a table")))?;
        doc.unknown_fields = unknown;
        Ok(doc)
    }

    /// Parses JSON, like [`SpecDoc::from_toml`].
    pub fn from_json(text: &str) -> Result<SpecDoc, SpecErrors> {
        let mut unknown = Vec::new();
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let mut doc: SpecDoc = serde_ignored::deserialize(&mut deserializer, |path| {
            unknown.push(field_path(&path.to_string()))
        })
        .map_err(|e| {
            SpecErrors::single(
                "",
                format!(
                    "not valid JSON: {}",
                    plain_types(&e.to_string(), "an object")
                ),
            )
        })?;
        deserializer
            .end()
            .map_err(|e| SpecErrors::single("", format!("not valid JSON: {e}")))?;
        doc.unknown_fields = unknown;
        Ok(doc)
    }
}

/// Replaces the Rust type names serde puts in a type error (`expected i64`, `expected struct
/// HealthDoc`) with what an operator writes instead; `table` is what a section is called in
/// the document's format.
fn plain_types(message: &str, table: &str) -> String {
    let message = message
        .replace("expected i64", "expected a whole number")
        .replace("expected a sequence", "expected a list")
        .replace("expected a map", &format!("expected {table}"));
    match message.split_once("expected struct ") {
        Some((before, rest)) => {
            let name_end = rest
                .find(|ch: char| !ch.is_ascii_alphanumeric())
                .unwrap_or(rest.len());
            format!("{before}expected {table}{}", &rest[name_end..])
        }
        None => message,
    }
}

/// Turns serde_ignored's path (`health.?.intervall`, `ports.0.nme`) into the field paths
/// validation uses (`health.intervall`, `ports[0].nme`).
fn field_path(raw: &str) -> String {
    let mut out = String::new();
    for segment in raw.split('.').filter(|s| *s != "?") {
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

/// The canonical document of a validated spec: every default spelled out, quantities in the
/// units `validate` reads back to the same numbers.
pub(super) fn to_doc(spec: &WorkloadSpec) -> SpecDoc {
    let r = &spec.resources;
    SpecDoc {
        name: Some(spec.name.to_string()),
        runtime: Some(runtime_text(spec.runtime).into()),
        image: spec.image.clone(),
        image_pull_policy: Some(pull_policy_text(spec.image_pull_policy).into()),
        command: spec.command.clone(),
        args: Some(spec.args.clone()),
        replicas: Some(spec.replicas.into()),
        priority: Some(spec.priority.into()),
        singleton: Some(spec.singleton),
        standbys: spec.singleton.then(|| spec.lease.standbys.into()),
        lease_mode: spec
            .singleton
            .then(|| lease_mode_text(spec.lease.mode).into()),
        lease_ttl: spec.singleton.then(|| duration_text(spec.lease.ttl_ms)),
        placement: Some(placement_text(spec.placement).into()),
        partition: Some(partition_text(spec.partition).into()),
        resources: Some(ResourcesDoc {
            cpu: Some(r.cpu_request.to_string().as_str().into()),
            memory: Some(r.memory_request.to_string().as_str().into()),
            cpu_limit: r.cpu_limit.map(|c| c.to_string().as_str().into()),
            memory_limit: r.memory_limit.map(|m| m.to_string().as_str().into()),
        }),
        constraints: Some(ConstraintsDoc {
            labels: Some(spec.constraints.labels.clone()),
            arch: Some(spec.constraints.arch.iter().cloned().collect()),
        }),
        ports: Some(
            spec.ports
                .iter()
                .map(|p| PortDoc {
                    name: Some(p.name.clone()),
                    port: Some(p.container_port.into()),
                    host_port: p.host_port.map(i64::from),
                    protocol: Some(protocol_text(p.protocol).into()),
                })
                .collect(),
        ),
        env: Some(spec.env.clone()),
        uses: (!spec.uses.is_empty()).then(|| spec.uses.iter().map(|u| u.to_string()).collect()),
        configs: Some(
            spec.configs
                .iter()
                .map(|c| ConfigDoc {
                    name: Some(c.name.clone()),
                    path: c.path.clone(),
                    reload: Some(reload_text(c.reload).into()),
                    reload_signal: reload_signal_text(c.reload),
                })
                .collect(),
        ),
        secrets: Some(
            spec.secrets
                .iter()
                .map(|s| SecretDoc {
                    name: Some(s.name.clone()),
                    env: s.env.clone(),
                    key: s.key.clone(),
                    path: s.path.clone(),
                    reload: Some(reload_text(s.reload).into()),
                    reload_signal: reload_signal_text(s.reload),
                })
                .collect(),
        ),
        health: spec.health.as_ref().map(health_doc),
        restart: Some(restart_doc(spec)),
        update: Some(UpdateDoc {
            strategy: Some(
                if spec.update.canary.is_some() {
                    "canary"
                } else {
                    "rolling"
                }
                .into(),
            ),
            batch_size: Some(spec.update.batch_size.into()),
            max_unavailable: Some(spec.update.max_unavailable.into()),
            max_surge: Some(spec.update.max_surge.into()),
            min_healthy: Some(duration_text(spec.update.min_healthy_ms)),
            health_deadline: Some(duration_text(spec.update.health_deadline_ms)),
            auto_rollback: Some(spec.update.auto_rollback),
            order: Some(
                match spec.update.order {
                    UpdateOrder::StartFirst => "start-first",
                    UpdateOrder::StopFirst => "stop-first",
                }
                .into(),
            ),
            canary: spec.update.canary.map(|c| c.count.into()),
            auto_promote_after: spec
                .update
                .canary
                .and_then(|c| c.auto_promote_after_ms)
                .map(duration_text),
        }),
        scaling: spec.scaling.as_ref().map(|s| ScalingDoc {
            min: Some(s.min.into()),
            max: Some(s.max.into()),
            metric: Some(match &s.metric {
                ScalingMetric::Cpu => "cpu".into(),
                ScalingMetric::Custom(name) => name.clone(),
            }),
            target: i64::try_from(s.target).ok(),
        }),
        unknown_fields: Vec::new(),
    }
}

fn health_doc(h: &HealthCheck) -> HealthDoc {
    let mut doc = HealthDoc {
        interval: Some(duration_text(h.interval_ms)),
        timeout: Some(duration_text(h.timeout_ms)),
        failure_threshold: Some(h.failure_threshold.into()),
        initial_delay: Some(duration_text(h.initial_delay_ms)),
        ..HealthDoc::default()
    };
    match &h.probe {
        Probe::Exec { command } => doc.exec = Some(command.clone()),
        Probe::Tcp { port } => doc.tcp = Some(port.clone()),
        Probe::Http { port, path } => {
            doc.http = Some(HttpProbeDoc {
                port: Some(port.clone()),
                path: Some(path.clone()),
            })
        }
    }
    doc
}

fn restart_doc(spec: &WorkloadSpec) -> RestartDoc {
    let r = &spec.restart;
    let (policy, max_retries) = match r.mode {
        RestartMode::Always => ("always", None),
        RestartMode::OnFailure { max_retries } => ("on-failure", Some(max_retries.into())),
        RestartMode::Never => ("never", None),
    };
    RestartDoc {
        policy: Some(policy.into()),
        max_retries,
        backoff_initial: Some(duration_text(r.backoff_initial_ms)),
        backoff_max: Some(duration_text(r.backoff_max_ms)),
        reset_after: Some(duration_text(r.reset_after_ms)),
    }
}

fn duration_text(ms: u64) -> QuantityText {
    QuantityText(format_duration_ms(ms))
}

pub(super) fn lease_mode_text(m: LeaseMode) -> &'static str {
    match m {
        LeaseMode::Quorum => "quorum",
        LeaseMode::Local => "local",
    }
}

pub(super) fn runtime_text(r: RuntimeKind) -> &'static str {
    match r {
        RuntimeKind::Process => "process",
        RuntimeKind::Docker => "docker",
        RuntimeKind::Podman => "podman",
    }
}

fn pull_policy_text(p: PullPolicy) -> &'static str {
    match p {
        PullPolicy::Never => "never",
        PullPolicy::IfNotPresent => "if-not-present",
        PullPolicy::Always => "always",
    }
}

fn placement_text(p: PlacementStrategy) -> &'static str {
    match p {
        PlacementStrategy::Spread => "spread",
        PlacementStrategy::BinPack => "bin-pack",
    }
}

fn partition_text(p: PartitionPolicy) -> &'static str {
    match p {
        PartitionPolicy::Consistency => "consistency",
        PartitionPolicy::Availability => "availability",
    }
}

fn protocol_text(p: PortProtocol) -> &'static str {
    match p {
        PortProtocol::Tcp => "tcp",
        PortProtocol::Udp => "udp",
    }
}

fn reload_text(reload: super::Reload) -> &'static str {
    match reload {
        super::Reload::Restart => "restart",
        super::Reload::File(_) => "file",
    }
}

fn reload_signal_text(reload: super::Reload) -> Option<String> {
    match reload {
        super::Reload::Restart => None,
        super::Reload::File(signal) => Some(signal.as_str().into()),
    }
}
