//! Secrets and configs into replicas: opened at start (here, where the replica runs, and
//! nowhere else), delivered as files (and a secret's variable), and rewritten in place with a
//! signal when a `reload = "file"` reference gets a new version.
//!
//! Whether a replica may start at all (everything it references is here, new enough, and
//! sealed to this node) is the core's decision (`NodeCore::start`); an open that still fails
//! here (a seal that does not open with this node's key) fails the start with its reason.

use std::collections::BTreeMap;

use starling_protocol::WorkloadName;
use starling_protocol::desired::objects::object_refs;
use starling_protocol::hlc::Timestamp;
use starling_protocol::objects::{ObjectKey, ObjectKind};
use starling_protocol::placement::ReplicaId;
use starling_protocol::spec::{Reload, ReloadSignal, RuntimeKind, WorkloadSpec};

use super::About;
use super::Agent;
use crate::runtime::{FileKind, FileSet, Runtime};
use starling_protocol::events::EventKind;

/// What one live instance was given.
pub(super) struct Delivered {
    spec: WorkloadSpec,
    versions: BTreeMap<ObjectKey, Timestamp>,
}

/// What a replica receives: file sets, variables, and the versions they came from.
pub(super) struct Inputs {
    pub files: Vec<FileSet>,
    pub env: Vec<(String, String)>,
    versions: BTreeMap<ObjectKey, Timestamp>,
}

impl Agent {
    /// Opens everything `spec` references for a start on this node.
    pub(super) fn inputs_for(&self, spec: &WorkloadSpec) -> Result<Inputs, String> {
        let is_process = spec.runtime == RuntimeKind::Process;
        let mut inputs = Inputs {
            files: Vec::new(),
            env: Vec::new(),
            versions: BTreeMap::new(),
        };
        for r in &spec.secrets {
            let key = object_key(ObjectKind::Secret, &r.name)?;
            let entries = self.open_object(&key)?;
            if let Some(var) = &r.env {
                let value = match &r.key {
                    Some(k) => entries.iter().find(|(n, _)| n == k),
                    None if entries.len() == 1 => entries.first(),
                    None => None,
                }
                .ok_or_else(|| format!("SecretKeyNotFound: {} has no entry for `env`", r.name))?;
                let text = std::str::from_utf8(&value.1).map_err(|_| {
                    format!(
                        "secret {} entry {:?} is not UTF-8 text: it cannot be a variable; read it from its file",
                        r.name, value.0
                    )
                })?;
                inputs.env.push((var.clone(), text.to_string()));
            }
            inputs.files.push(FileSet {
                kind: FileKind::Secret,
                name: r.name.clone(),
                entries,
                target: if is_process { None } else { r.path.clone() },
            });
            self.pin(&mut inputs, key);
        }
        for r in &spec.configs {
            let key = object_key(ObjectKind::Config, &r.name)?;
            let entries = self.open_object(&key)?;
            inputs.files.push(FileSet {
                kind: FileKind::Config,
                name: r.name.clone(),
                entries,
                target: if is_process { None } else { r.path.clone() },
            });
            self.pin(&mut inputs, key);
        }
        Ok(inputs)
    }

    fn pin(&self, inputs: &mut Inputs, key: ObjectKey) {
        if let Some(at) = self.core.desired().object_marker(&key) {
            inputs.versions.insert(key, at.clone());
        }
    }

    /// Remembers what an instance was given, for later reloads.
    pub(super) fn delivered_to(
        &mut self,
        replica: ReplicaId,
        instance: u64,
        spec: WorkloadSpec,
        inputs: &Inputs,
    ) {
        if inputs.versions.is_empty() {
            return;
        }
        self.delivered.insert(
            (replica, instance),
            Delivered {
                spec,
                versions: inputs.versions.clone(),
            },
        );
    }

    /// Forgets an instance that is gone.
    pub(super) fn forget_delivered(&mut self, replica: &ReplicaId, instance: u64) {
        self.delivered.remove(&(replica.clone(), instance));
    }

    /// Rewrites the files of instances whose `reload = "file"` references have a new version
    /// here, and signals them. Run after each loop turn; cheap when nothing changed.
    pub(super) fn reload_files(&mut self) {
        let desired = self.core.desired();
        let mut due: Vec<(ReplicaId, u64, Option<i32>)> = Vec::new();
        for ((replica, instance), d) in &self.delivered {
            let mut signal = None;
            let mut stale = false;
            for key in object_refs(&d.spec) {
                let reload = reload_of(&d.spec, &key);
                let Reload::File(sig) = reload else {
                    continue;
                };
                let now = desired.object(&key).and(desired.object_marker(&key));
                if now.is_some() && now != d.versions.get(&key) {
                    stale = true;
                    signal = signal.or(signal_number(sig));
                }
            }
            if stale {
                due.push((replica.clone(), *instance, signal));
            }
        }
        for (replica, instance, signal) in due {
            let Some(spec) = self
                .delivered
                .get(&(replica.clone(), instance))
                .map(|d| d.spec.clone())
            else {
                continue;
            };
            let inputs = match self.inputs_for(&spec) {
                Ok(inputs) => inputs,
                Err(why) => {
                    tracing::warn!(workload = %replica.workload, index = replica.index, "cannot reload files: {why}");
                    // Tried again only at the next version: record what is here now.
                    if let Some(d) = self.delivered.get_mut(&(replica.clone(), instance)) {
                        d.versions = self.core.desired().pins(&spec);
                    }
                    continue;
                }
            };
            self.note(
                EventKind::FilesReloaded,
                About::Replica(&replica),
                format!(
                    "rewrote the files of {}/{} instance {instance} (new version){}",
                    replica.workload,
                    replica.index,
                    if signal.is_some() {
                        " and signalled it"
                    } else {
                        ""
                    }
                ),
            );
            if let Some(d) = self.delivered.get_mut(&(replica.clone(), instance)) {
                d.versions = inputs.versions.clone();
            }
            let runtime = self.runtime.clone();
            let files = inputs.files;
            let r = replica.clone();
            self.in_order(replica, async move {
                if let Err(e) = runtime.refresh_files(&r, instance, files, signal).await {
                    tracing::warn!(workload = %r.workload, index = r.index, "file reload failed: {e}");
                }
            });
        }
    }
}

fn object_key(kind: ObjectKind, name: &str) -> Result<ObjectKey, String> {
    let name = WorkloadName::new(name).map_err(|e| format!("{kind} name {name:?}: {e}"))?;
    Ok(ObjectKey { kind, name })
}

fn reload_of(spec: &WorkloadSpec, key: &ObjectKey) -> Reload {
    let name = key.name.as_str();
    match key.kind {
        ObjectKind::Secret => spec
            .secrets
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.reload),
        ObjectKind::Config => spec
            .configs
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.reload),
    }
    .unwrap_or_default()
}

fn signal_number(signal: ReloadSignal) -> Option<i32> {
    match signal {
        ReloadSignal::None => None,
        ReloadSignal::Hup => Some(nix::libc::SIGHUP),
        ReloadSignal::Usr1 => Some(nix::libc::SIGUSR1),
        ReloadSignal::Usr2 => Some(nix::libc::SIGUSR2),
    }
}
