//! Entry formats written by earlier builds, read once and converted (stored desired state
//! survives an upgrade; nothing is lost because the format grew).
//!
//! Format 1 (before revision ids): revisions had no lineage and no author, entries no write
//! records. Converted entries start with the record of their own write only.
//!
//! Format 2 (before rollouts): specs' `[update]` had no order, minimum healthy time or canary,
//! and revisions no rollout control. Converted specs get the defaults `validate` would give
//! them (stop-first where two instances cannot share a node), revisions an empty control.
//!
//! Format 3: see [`v3`]. Format 4: see [`v4`]. Format 5 was today's entries without the
//! tombstone horizon ([`decode_v5`]): such a state has none yet.
//!
//! Formats 1 to 4 referenced configs by a file path and secrets by a variable and/or a file
//! (both accepted and ignored then); they convert to references of the same names, with the
//! path dropped for processes (which have no private filesystem).

mod v3;
mod v4;
pub use v3::decode_v3;
pub use v4::decode_v4;

/// Decodes a desired state stored in format 5 (postcard of its entries, no horizon).
pub fn decode_v5(bytes: &[u8]) -> Result<DesiredState, String> {
    let entries: Vec<super::Entry> = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
    DesiredState::from_entries(entries)
}

use std::collections::BTreeMap;

use crdts::LWWReg;
use serde::Deserialize;

use super::{DesiredEntry, DesiredState, PreviousRevision, Revision, RolloutControl, WriteRecord};
use crate::hlc::Timestamp;
use crate::names::WorkloadName;
use crate::spec::{
    ConfigRef, Constraints, HealthCheck, LeaseSettings, PartitionPolicy, PlacementStrategy,
    PortSpec, PullPolicy, Reload, Resources, RestartPolicy, RuntimeKind, ScalingPolicy, SecretRef,
    UpdateOrder, UpdateStrategy, WorkloadSpec,
};

/// A config reference as formats 1 to 4 stored it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct ConfigRefV4 {
    pub(super) name: String,
    pub(super) path: String,
}

/// A secret reference as formats 1 to 4 stored it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct SecretRefV4 {
    pub(super) name: String,
    pub(super) env: Option<String>,
    pub(super) path: Option<String>,
}

/// Converts old references; a process's paths are dropped (see the module docs).
pub(super) fn convert_refs(
    runtime: RuntimeKind,
    configs: Vec<ConfigRefV4>,
    secrets: Vec<SecretRefV4>,
) -> (Vec<ConfigRef>, Vec<SecretRef>) {
    let keep = runtime != RuntimeKind::Process;
    let configs = configs
        .into_iter()
        .map(|c| ConfigRef {
            name: c.name,
            path: keep.then_some(c.path),
            reload: Reload::Restart,
        })
        .collect();
    let secrets = secrets
        .into_iter()
        .map(|s| SecretRef {
            name: s.name,
            env: s.env,
            key: None,
            path: s.path.filter(|_| keep),
            reload: Reload::Restart,
        })
        .collect();
    (configs, secrets)
}

/// Old references of current ones, for tests that write old formats.
#[cfg(test)]
pub(super) fn old_refs(spec: &WorkloadSpec) -> (Vec<ConfigRefV4>, Vec<SecretRefV4>) {
    (
        spec.configs
            .iter()
            .map(|c| ConfigRefV4 {
                name: c.name.clone(),
                path: c.path.clone().unwrap_or_default(),
            })
            .collect(),
        spec.secrets
            .iter()
            .map(|s| SecretRefV4 {
                name: s.name.clone(),
                env: s.env.clone(),
                path: s.path.clone(),
            })
            .collect(),
    )
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct UpdateV2 {
    batch_size: u32,
    max_unavailable: u32,
    max_surge: u32,
    health_deadline_ms: u64,
    auto_rollback: bool,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct SpecV2 {
    name: WorkloadName,
    runtime: RuntimeKind,
    image: Option<String>,
    image_pull_policy: PullPolicy,
    command: Option<String>,
    args: Vec<String>,
    replicas: u32,
    priority: i32,
    resources: Resources,
    constraints: Constraints,
    placement: PlacementStrategy,
    partition: PartitionPolicy,
    ports: Vec<PortSpec>,
    env: BTreeMap<String, String>,
    configs: Vec<ConfigRefV4>,
    secrets: Vec<SecretRefV4>,
    health: Option<HealthCheck>,
    restart: RestartPolicy,
    update: UpdateV2,
    scaling: Option<ScalingPolicy>,
    singleton: bool,
    lease: LeaseSettings,
}

impl SpecV2 {
    fn convert(self) -> WorkloadSpec {
        let (configs, secrets) = convert_refs(self.runtime, self.configs, self.secrets);
        let stop_first_only = self.singleton || self.ports.iter().any(|p| p.host_port.is_some());
        let u = self.update;
        let (order, max_unavailable, max_surge) = if stop_first_only || u.max_surge == 0 {
            (UpdateOrder::StopFirst, u.max_unavailable.max(1), 0)
        } else {
            (UpdateOrder::StartFirst, u.max_unavailable, u.max_surge)
        };
        WorkloadSpec {
            name: self.name,
            runtime: self.runtime,
            image: self.image,
            image_pull_policy: self.image_pull_policy,
            command: self.command,
            args: self.args,
            replicas: self.replicas,
            priority: self.priority,
            resources: self.resources,
            constraints: self.constraints,
            placement: self.placement,
            partition: self.partition,
            ports: self.ports,
            env: self.env,
            uses: Vec::new(),
            configs,
            secrets,
            health: self.health,
            restart: self.restart,
            update: UpdateStrategy {
                batch_size: u.batch_size,
                max_unavailable,
                max_surge,
                min_healthy_ms: UpdateStrategy::DEFAULT.min_healthy_ms,
                health_deadline_ms: u.health_deadline_ms,
                auto_rollback: u.auto_rollback,
                order,
                canary: None,
            },
            scaling: self.scaling,
            singleton: self.singleton,
            lease: self.lease,
        }
    }
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct PreviousV2 {
    number: u64,
    spec: SpecV2,
}

impl PreviousV2 {
    fn convert(self) -> PreviousRevision {
        PreviousRevision {
            number: self.number,
            spec: self.spec.convert(),
        }
    }
}

#[derive(Deserialize)]
struct RevisionV2 {
    number: u64,
    spec: SpecV2,
    previous: Option<PreviousV2>,
    lineage: Vec<Timestamp>,
    by: String,
}

#[derive(Deserialize)]
struct EntryV2 {
    name: WorkloadName,
    register: LWWReg<Option<RevisionV2>, Timestamp>,
    writes: Vec<WriteRecord>,
}

/// Decodes a desired state stored in format 2 (postcard of its entries).
pub fn decode_v2(bytes: &[u8]) -> Result<DesiredState, String> {
    let entries: Vec<EntryV2> = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
    let mut state = DesiredState::new();
    for old in entries {
        let entry = DesiredEntry {
            name: old.name,
            register: LWWReg {
                val: old.register.val.map(|r| Revision {
                    number: r.number,
                    spec: r.spec.convert(),
                    previous: r.previous.map(PreviousV2::convert),
                    lineage: r.lineage,
                    by: r.by,
                    rollout: RolloutControl::default(),
                    inputs: Default::default(),
                }),
                marker: old.register.marker,
            },
            writes: old.writes,
        };
        entry.check().map_err(|e| e.to_string())?;
        state.merge_entry(entry);
    }
    Ok(state)
}

#[derive(Deserialize)]
struct RevisionV1 {
    number: u64,
    spec: SpecV2,
    previous: Option<PreviousV2>,
}

#[derive(Deserialize)]
struct EntryV1 {
    name: WorkloadName,
    register: LWWReg<Option<RevisionV1>, Timestamp>,
}

/// Decodes a desired state stored in format 1 (postcard of its entries).
pub fn decode_v1(bytes: &[u8]) -> Result<DesiredState, String> {
    let entries: Vec<EntryV1> = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
    let mut state = DesiredState::new();
    for old in entries {
        let entry = DesiredEntry {
            name: old.name,
            register: LWWReg {
                val: old.register.val.map(|r| Revision {
                    number: r.number,
                    spec: r.spec.convert(),
                    previous: r.previous.map(PreviousV2::convert),
                    lineage: Vec::new(),
                    by: String::new(),
                    rollout: RolloutControl::default(),
                    inputs: Default::default(),
                }),
                marker: old.register.marker,
            },
            writes: Vec::new(),
        };
        entry.check().map_err(|e| e.to_string())?;
        state.merge_entry(entry);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::names::NodeId;

    #[derive(Serialize)]
    struct RevisionV1Out {
        number: u64,
        spec: SpecV2,
        previous: Option<PreviousV2>,
    }

    #[derive(Serialize)]
    struct RevisionV2Out {
        number: u64,
        spec: SpecV2,
        previous: Option<PreviousV2>,
        lineage: Vec<Timestamp>,
        by: String,
    }

    #[derive(Serialize)]
    struct EntryV2Out {
        name: WorkloadName,
        register: LWWReg<Option<RevisionV2Out>, Timestamp>,
        writes: Vec<WriteRecord>,
    }

    /// A spec as format 2 stored it.
    fn v2(spec: &WorkloadSpec) -> SpecV2 {
        let s = spec.clone();
        SpecV2 {
            name: s.name,
            runtime: s.runtime,
            image: s.image,
            image_pull_policy: s.image_pull_policy,
            command: s.command,
            args: s.args,
            replicas: s.replicas,
            priority: s.priority,
            resources: s.resources,
            constraints: s.constraints,
            placement: s.placement,
            partition: s.partition,
            ports: s.ports,
            env: s.env,
            configs: old_refs(spec).0,
            secrets: old_refs(spec).1,
            health: s.health,
            restart: s.restart,
            update: UpdateV2 {
                batch_size: s.update.batch_size,
                max_unavailable: s.update.max_unavailable,
                max_surge: s.update.max_surge,
                health_deadline_ms: s.update.health_deadline_ms,
                auto_rollback: s.update.auto_rollback,
            },
            scaling: s.scaling,
            singleton: s.singleton,
            lease: s.lease,
        }
    }

    #[test]
    fn a_format_2_state_reads_back_with_rollout_defaults() {
        let web = WorkloadSpec::from_toml("name = \"web\"\ncommand = \"sleep\"\nreplicas = 2")
            .expect("valid");
        let fixed = WorkloadSpec::from_toml(
            "name = \"db\"\ncommand = \"sleep\"\n[[ports]]\nname = \"pg\"\nport = 5432\nhost_port = 5432",
        )
        .expect("valid");
        let marker = Timestamp {
            physical_ms: 42,
            logical: 1,
            node: NodeId::new("n1").expect("valid"),
        };
        let record = WriteRecord {
            at: marker.clone(),
            number: 2,
            by: "alice".into(),
        };
        let entry = |spec: &WorkloadSpec| EntryV2Out {
            name: spec.name.clone(),
            register: LWWReg {
                val: Some(RevisionV2Out {
                    number: 2,
                    spec: v2(spec),
                    previous: Some(PreviousV2 {
                        number: 1,
                        spec: v2(spec),
                    }),
                    lineage: vec![marker.clone()],
                    by: "alice".into(),
                }),
                marker: marker.clone(),
            },
            writes: vec![record.clone()],
        };
        let bytes = postcard::to_allocvec(&vec![entry(&web), entry(&fixed)]).expect("encodes");
        let state = decode_v2(&bytes).expect("decodes");
        let got = state.get(&web.name).expect("web is there");
        assert_eq!(got.spec, web, "defaults of today: start-first");
        assert_eq!(got.by, "alice");
        assert_eq!(got.lineage, vec![marker.clone()]);
        let db = state.get(&fixed.name).expect("db is there");
        assert_eq!(db.spec, fixed, "a fixed host port converts to stop-first");
        assert_eq!(db.spec.update.order, UpdateOrder::StopFirst);
        assert_eq!(state.overwritten(&web.name), Vec::new());
        assert!(decode_v2(b"\x01\x02garbage").is_err());
    }

    #[derive(Serialize)]
    struct EntryV1Out {
        name: WorkloadName,
        register: LWWReg<Option<RevisionV1Out>, Timestamp>,
    }

    #[test]
    fn a_format_1_state_reads_back_with_its_writes() {
        let spec = WorkloadSpec::from_toml("name = \"web\"\ncommand = \"sleep\"\nreplicas = 2")
            .expect("valid");
        let marker = Timestamp {
            physical_ms: 42,
            logical: 1,
            node: NodeId::new("n1").expect("valid"),
        };
        let old = vec![
            EntryV1Out {
                name: WorkloadName::new("web").expect("valid"),
                register: LWWReg {
                    val: Some(RevisionV1Out {
                        number: 3,
                        spec: v2(&spec),
                        previous: None,
                    }),
                    marker: marker.clone(),
                },
            },
            EntryV1Out {
                name: WorkloadName::new("gone").expect("valid"),
                register: LWWReg {
                    val: None,
                    marker: marker.clone(),
                },
            },
        ];
        let bytes = postcard::to_allocvec(&old).expect("encodes");
        let state = decode_v1(&bytes).expect("decodes");
        let web = WorkloadName::new("web").expect("valid");
        assert_eq!(
            state.get(&web).map(|r| (r.number, &r.spec)),
            Some((3, &spec))
        );
        assert_eq!(state.len(), 2, "the tombstone stays");
        assert_eq!(state.revision_id(&web).map(|id| id.at), Some(marker));
        assert!(state.overwritten(&web).is_empty());
        // Today's format does not read as format 1, and the reverse: versions tell them apart.
        assert!(decode_v1(b"\x01\x02garbage").is_err());
    }
}
