//! Format 3 (before service discovery): specs had no `uses`. Converted specs use nothing.

use std::collections::BTreeMap;

use crdts::LWWReg;
use serde::Deserialize;

use super::super::{
    DesiredEntry, DesiredState, PreviousRevision, Revision, RolloutControl, WriteRecord,
};
use super::{ConfigRefV4, SecretRefV4, convert_refs};
use crate::hlc::Timestamp;
use crate::names::WorkloadName;
use crate::spec::{
    Constraints, HealthCheck, LeaseSettings, PartitionPolicy, PlacementStrategy, PortSpec,
    PullPolicy, Resources, RestartPolicy, RuntimeKind, ScalingPolicy, UpdateStrategy, WorkloadSpec,
};

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct SpecV3 {
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
    update: UpdateStrategy,
    scaling: Option<ScalingPolicy>,
    singleton: bool,
    lease: LeaseSettings,
}

impl SpecV3 {
    fn convert(self) -> WorkloadSpec {
        let (configs, secrets) = convert_refs(self.runtime, self.configs, self.secrets);
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
            update: self.update,
            scaling: self.scaling,
            singleton: self.singleton,
            lease: self.lease,
        }
    }
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct PreviousV3 {
    number: u64,
    spec: SpecV3,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct RevisionV3 {
    number: u64,
    spec: SpecV3,
    previous: Option<PreviousV3>,
    lineage: Vec<Timestamp>,
    by: String,
    rollout: RolloutControl,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct EntryV3 {
    name: WorkloadName,
    register: LWWReg<Option<RevisionV3>, Timestamp>,
    writes: Vec<WriteRecord>,
}

/// Decodes a desired state stored in format 3 (postcard of its entries).
pub fn decode_v3(bytes: &[u8]) -> Result<DesiredState, String> {
    let entries: Vec<EntryV3> = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
    let mut state = DesiredState::new();
    for old in entries {
        let entry = DesiredEntry {
            name: old.name,
            register: LWWReg {
                val: old.register.val.map(|r| Revision {
                    number: r.number,
                    spec: r.spec.convert(),
                    previous: r.previous.map(|p| PreviousRevision {
                        number: p.number,
                        spec: p.spec.convert(),
                    }),
                    lineage: r.lineage,
                    by: r.by,
                    rollout: r.rollout,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::legacy::old_refs;
    use crate::names::NodeId;

    fn v3(spec: &WorkloadSpec) -> SpecV3 {
        let s = spec.clone();
        SpecV3 {
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
            update: s.update,
            scaling: s.scaling,
            singleton: s.singleton,
            lease: s.lease,
        }
    }

    #[test]
    fn a_format_3_state_reads_back_using_nothing() {
        let web = WorkloadSpec::from_toml(
            "name = \"web\"\ncommand = \"sleep\"\nreplicas = 2\n[update]\norder = \"stop-first\"",
        )
        .expect("valid");
        let marker = Timestamp {
            physical_ms: 42,
            logical: 1,
            node: NodeId::new("n1").expect("valid"),
        };
        let control = RolloutControl {
            paused: true,
            ..RolloutControl::default()
        };
        let entry = EntryV3 {
            name: web.name.clone(),
            register: LWWReg {
                val: Some(RevisionV3 {
                    number: 2,
                    spec: v3(&web),
                    previous: Some(PreviousV3 {
                        number: 1,
                        spec: v3(&web),
                    }),
                    lineage: vec![marker.clone()],
                    by: "alice".into(),
                    rollout: control.clone(),
                }),
                marker: marker.clone(),
            },
            writes: Vec::new(),
        };
        let bytes = postcard::to_allocvec(&vec![entry]).expect("encodes");
        let state = decode_v3(&bytes).expect("decodes");
        let got = state.get(&web.name).expect("web is there");
        assert_eq!(got.spec, web);
        assert!(got.spec.uses.is_empty());
        assert_eq!(got.rollout, control);
        assert_eq!(got.previous.as_ref().map(|p| p.number), Some(1));
        assert!(decode_v3(b"\x01\x02garbage").is_err());
    }
}
