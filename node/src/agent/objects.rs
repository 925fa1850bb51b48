//! API requests on secrets and configs: writes (and the rollouts they start), deletes,
//! listings and the recipients a client seals a secret to.
//!
//! A secret reaches this node already sealed (the CLI seals it to the recipients this node
//! named): the node stamps and stores ciphertext and seals, never plaintext.

use std::collections::BTreeMap;

use starling_protocol::NodeId;
use starling_protocol::WorkloadName;
use starling_protocol::api::ObjectRow;
use starling_protocol::desired::{DesiredState, Key};
use starling_protocol::objects::{ObjectEntry, ObjectKey, ObjectKind, ObjectVersion, Seal};
use starling_protocol::wire::ApiResponse;

use super::About;
use super::Agent;
use super::handlers::{Push, WriteOutcome, error};
use crate::clock::now_ms;
use starling_protocol::events::EventKind;

impl Agent {
    /// Stores a new version of a secret or config, and for every workload that references it
    /// with `reload = "restart"`, a new revision pinned to it (the rolling update moves the
    /// replicas under that workload's own strategy and health gates).
    pub(super) fn object_set(
        &mut self,
        key: ObjectKey,
        version: ObjectVersion,
        seals: BTreeMap<NodeId, Seal>,
        by: &str,
    ) -> WriteOutcome {
        if key.kind == ObjectKind::Secret && seals.is_empty() {
            return error(format!(
                "{key}: sealed to no node, so no node could ever open it; nothing was changed"
            ))
            .into();
        }
        let now = now_ms();
        let at = self.hlc.tick(now);
        let mut next: DesiredState = self.core.desired().clone();
        next.write_object(key.clone(), Some(version), seals, at.clone(), by);
        let mut keys = vec![Key::Object(key.clone())];
        let (mut rolled, mut reloaded) = (Vec::new(), Vec::new());
        for (workload, by_file) in next.users_of(&key) {
            if by_file {
                reloaded.push(workload);
                continue;
            }
            let Some(current) = next.get(&workload).cloned() else {
                continue;
            };
            let revision = current.with_inputs(next.pins(&current.spec));
            let stamp = self.hlc.tick(now);
            next.write_by(workload.clone(), Some(revision), stamp, by);
            keys.push(Key::Workload(workload.clone()));
            rolled.push(workload);
        }
        self.store_objects(next, keys, now, || {
            format!(
                "wrote {key} (version {}, by {by}){}",
                at.physical_ms,
                if rolled.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; rolling {}",
                        rolled
                            .iter()
                            .map(|w| w.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )
        })
        .map_or_else(WriteOutcome::from, |push| WriteOutcome {
            response: ApiResponse::ObjectWritten {
                key: key.clone(),
                at: at.clone(),
                rolled: rolled.clone(),
                reloaded: reloaded.clone(),
            },
            push: Some(push),
        })
    }

    /// Deletes a secret or config. Workloads that reference it keep running; replicas that
    /// start from now on wait with `SecretNotFound`/`ConfigNotFound`.
    pub(super) fn object_delete(&mut self, key: ObjectKey, by: &str) -> WriteOutcome {
        if self.core.desired().object(&key).is_none() {
            return error(format!("no {} named {}", key.kind, key.name)).into();
        }
        let now = now_ms();
        let at = self.hlc.tick(now);
        let mut next: DesiredState = self.core.desired().clone();
        next.write_object(key.clone(), None, BTreeMap::new(), at.clone(), by);
        let users: Vec<WorkloadName> = next.users_of(&key).into_iter().map(|(w, _)| w).collect();
        self.store_objects(next, vec![Key::Object(key.clone())], now, || {
            format!("deleted {key} (by {by})")
        })
        .map_or_else(WriteOutcome::from, |push| WriteOutcome {
            response: ApiResponse::ObjectWritten {
                key: key.clone(),
                at: at.clone(),
                rolled: Vec::new(),
                reloaded: users.clone(),
            },
            push: Some(push),
        })
    }

    /// Stores `next` durably, then hands it to the core. `Err` is the refusal to answer.
    fn store_objects(
        &mut self,
        next: DesiredState,
        keys: Vec<Key>,
        now: u64,
        note: impl FnOnce() -> String,
    ) -> Result<Push, ApiResponse> {
        if let Err(e) = self.store.write_desired(&next) {
            return Err(error(format!(
                "could not store the change, nothing was changed: {e}"
            )));
        }
        self.note(EventKind::ObjectWritten, About::Node, note());
        self.decide(|core| core.handle_desired(now, next));
        Ok(Push { keys, acks: 0 })
    }

    /// Secrets or configs with their metadata; values never leave here.
    pub(super) fn object_list(&self, kind: ObjectKind) -> ApiResponse {
        let desired = self.core.desired();
        let rows = desired
            .objects()
            .filter(|(key, _, _)| key.kind == kind)
            .map(|(key, version, at)| ObjectRow {
                key: key.clone(),
                at: at.clone(),
                by: version.by.clone(),
                size: version.size,
                keys: version.keys.clone(),
                sealed_to: desired
                    .seals(key)
                    .map(|s| s.keys().cloned().collect())
                    .unwrap_or_default(),
                used_by: desired.users_of(key).into_iter().map(|(w, _)| w).collect(),
            })
            .collect();
        ApiResponse::Objects(rows)
    }

    /// The nodes a new version of secret `name` is to be sealed to, with their public keys:
    /// members that published a key and may run a workload that uses it.
    pub(super) fn secret_recipients(&self, name: WorkloadName) -> ApiResponse {
        let mut nodes: Vec<(starling_protocol::placement::NodeView, [u8; 32])> = Vec::new();
        let view = self.core.view();
        let mine = view
            .nodes
            .get(&self.node)
            .map(|v| (v.clone(), self.seal_keys.public()));
        nodes.extend(mine);
        if let Some(fleet) = &self.fleet {
            for (id, peer) in &fleet.peers {
                if let (Some(public), Some(view)) = (peer.seal_key, view.nodes.get(id)) {
                    nodes.push((view.clone(), public));
                }
            }
        }
        let refs: Vec<_> = nodes.iter().map(|(v, k)| (v, *k)).collect();
        let recipients = self.core.desired().recipients(&name, &refs);
        if recipients.is_empty() {
            return error(format!(
                "no node may run a workload that uses secret {name}, so none could open it; check the workloads' constraints"
            ));
        }
        ApiResponse::Recipients(recipients)
    }

    /// Opens the entries of `key` for a replica that starts or reloads here.
    pub(super) fn open_object(
        &self,
        key: &ObjectKey,
    ) -> Result<starling_protocol::objects::seal::Plain, String> {
        let desired = self.core.desired();
        let entry: ObjectEntry = desired
            .object_entry(key)
            .filter(|e| e.register.val.is_some())
            .ok_or_else(|| format!("{}NotFound: {}", capitalized(key.kind), key.name))?;
        match key.kind {
            ObjectKind::Secret => {
                starling_protocol::objects::seal::open_for(&entry, &self.node, &self.seal_keys)
                    .map_err(|e| e.to_string())
            }
            ObjectKind::Config => match entry.register.val.map(|v| v.body) {
                Some(starling_protocol::objects::Body::Clear(entries)) => Ok(entries
                    .into_iter()
                    .map(|(k, v)| (k, zeroize::Zeroizing::new(v)))
                    .collect()),
                _ => Err(format!("{key} is not stored in clear")),
            },
        }
    }
}

fn capitalized(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Secret => "Secret",
        ObjectKind::Config => "Config",
    }
}
