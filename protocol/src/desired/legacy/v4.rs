//! Format 4 (before secrets and configs): references had their old shape (see [`super`]), and
//! revisions pinned no object versions. Converted revisions pin nothing.

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
pub(super) struct SpecV4 {
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
    uses: Vec<WorkloadName>,
    configs: Vec<ConfigRefV4>,
    secrets: Vec<SecretRefV4>,
    health: Option<HealthCheck>,
    restart: RestartPolicy,
    update: UpdateStrategy,
    scaling: Option<ScalingPolicy>,
    singleton: bool,
    lease: LeaseSettings,
}

impl SpecV4 {
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
            uses: self.uses,
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
struct PreviousV4 {
    number: u64,
    spec: SpecV4,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct RevisionV4 {
    number: u64,
    spec: SpecV4,
    previous: Option<PreviousV4>,
    lineage: Vec<Timestamp>,
    by: String,
    rollout: RolloutControl,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct EntryV4 {
    name: WorkloadName,
    register: LWWReg<Option<RevisionV4>, Timestamp>,
    writes: Vec<WriteRecord>,
}

/// Decodes a desired state stored in format 4 (postcard of its entries).
pub fn decode_v4(bytes: &[u8]) -> Result<DesiredState, String> {
    let entries: Vec<EntryV4> = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
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

    #[test]
    fn a_format_4_state_reads_back_with_its_references_and_no_pins() {
        let web = WorkloadSpec::from_toml(
            "name = \"web\"\nruntime = \"docker\"\nimage = \"busybox:2\"\nuses = [\"db\"]\n[[secrets]]\nname = \"pw\"\nenv = \"PW\"\npath = \"/run/secrets/pw\"",
        )
        .expect("valid");
        let s = web.clone();
        let (configs, secrets) = old_refs(&s);
        let old = SpecV4 {
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
            uses: s.uses,
            configs,
            secrets,
            health: s.health,
            restart: s.restart,
            update: s.update,
            scaling: s.scaling,
            singleton: s.singleton,
            lease: s.lease,
        };
        let marker = Timestamp {
            physical_ms: 42,
            logical: 1,
            node: NodeId::new("n1").expect("valid"),
        };
        let entry = EntryV4 {
            name: web.name.clone(),
            register: LWWReg {
                val: Some(RevisionV4 {
                    number: 1,
                    spec: old,
                    previous: None,
                    lineage: Vec::new(),
                    by: "alice".into(),
                    rollout: RolloutControl::default(),
                }),
                marker,
            },
            writes: Vec::new(),
        };
        let bytes = postcard::to_allocvec(&vec![entry]).expect("encodes");
        let state = decode_v4(&bytes).expect("decodes");
        let got = state.get(&web.name).expect("web is there");
        assert_eq!(got.spec, web);
        assert!(got.inputs.is_empty());
    }
}
