//! The agent's side of leader election: drives [`starling_core::election::Elector`] with the wall
//! clock, carries its grant requests over QUIC (replies come back into the loop), publishes
//! held records in gossip (`lease.<name>`), keeps the fleet's voter set (gossip key `voters`,
//! last writer wins by HLC stamp), tells the core what it holds, and shows workloads their
//! lease: the token file in the replica's directory and the board behind `/v1/leases/NAME`.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use starling_protocol::api::{LeaseHere, LeaseRow, Voter};
use starling_protocol::hlc::Timestamp;
use starling_protocol::lease::{Lease, LeaseMessage, LeaseName};
use starling_protocol::placement::ReplicaId;
use starling_protocol::spec::{LEASE_TTL_MAX_MS, LEASE_TTL_MIN_MS, LeaseMode};
use starling_protocol::wire::{ApiResponse, PeerMessage};
use starling_protocol::{NodeId, WorkloadName};
use tokio::sync::{mpsc, oneshot};

use super::About;
use super::Agent;
use super::handlers::error;
use super::metrics::{LeaseBoard, LeaseInfo};
use crate::clock::now_ms;
use crate::runtime::fence::{LEASE_FILE_NAME, LeaseFile};
use starling_core::election::{
    Candidacy, ElectionOutput, Elector, ElectorConfig, VoterMemory, Voters,
};
use starling_core::node::LeaseWant;
use starling_protocol::events::EventKind;

/// The fleet's voters as written by one node at one instant; the newest stamp wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterRecord {
    /// When and where it was set.
    pub stamp: Timestamp,
    /// The voters.
    pub nodes: BTreeSet<NodeId>,
}

impl starling_protocol::wire::Check for VoterRecord {
    fn check(&self) -> Result<(), String> {
        if self.nodes.len() > VOTERS_MAX {
            return Err(format!(
                "voters: at most {VOTERS_MAX}, got {}",
                self.nodes.len()
            ));
        }
        Ok(())
    }
}

/// Most nodes in a voter set (an odd handful is what a quorum wants; this bounds a peer's).
const VOTERS_MAX: usize = 1_024;

/// Grant replies queued for the loop: one per voter per lease per round, so a node holding a
/// few dozen leases against five voters fits a whole round; past it the exchange tasks wait
/// for the loop (back-pressure; each task ends by its grant timeout's answer at the latest).
const LEASE_REPLIES_QUEUE: usize = 256;

impl VoterRecord {
    /// The set with the version grant requests carry.
    pub fn voters(&self) -> Voters {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        Voters {
            version: starling_protocol::hash::hash64(&bytes),
            nodes: self.nodes.clone(),
        }
    }
}

/// Lease state of the agent.
pub(super) struct Leases {
    pub elector: Elector,
    pub board: Arc<LeaseBoard>,
    pub replies_tx: crate::channel::Sender<(NodeId, LeaseMessage)>,
    pub voters: Option<VoterRecord>,
    /// Leases acquired for scripts through the API (the core must not withdraw them).
    pub scripts: BTreeSet<LeaseName>,
    /// API calls waiting for a lease: (name, deadline, reply).
    pub waiters: Vec<(LeaseName, u64, oneshot::Sender<ApiResponse>)>,
    /// Where the `/v1/leases` endpoint listens, for workloads' environment.
    pub url: Option<String>,
    /// Election messages still on their way (a departing agent waits for its releases).
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Leases {
    /// Election messages sent and not yet answered or failed.
    pub fn sends_in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Leases {
    pub fn new(
        node: NodeId,
        max_drift_ms: u64,
        memory: Option<VoterMemory>,
        voters: Option<VoterRecord>,
        counts: Arc<crate::channel::ChannelCounts>,
    ) -> (Self, mpsc::Receiver<(NodeId, LeaseMessage)>) {
        let (replies_tx, replies_rx) = crate::channel::bounded(LEASE_REPLIES_QUEUE, counts);
        let mut elector = Elector::new(ElectorConfig { node, max_drift_ms }, memory, now_ms());
        if let Some(record) = &voters {
            elector.set_voters(record.voters());
        }
        let leases = Leases {
            elector,
            board: Arc::default(),
            replies_tx,
            voters,
            scripts: BTreeSet::new(),
            waiters: Vec::new(),
            url: None,
            in_flight: Arc::default(),
        };
        (leases, replies_rx)
    }
}

impl Agent {
    /// The core wants this node to campaign for a singleton's lease.
    pub(super) fn campaign(&mut self, lease: WorkloadName, want: LeaseWant) {
        if want.mode == LeaseMode::Quorum {
            self.ensure_voters();
        }
        self.leases.elector.want(
            now_ms(),
            &lease,
            Candidacy {
                ttl_ms: want.ttl_ms,
                mode: want.mode,
            },
        );
        self.note(
            EventKind::LeaseCampaign,
            About::Workload(&lease),
            format!(
                "campaigning for lease {lease} ({:?}, ttl {} ms)",
                want.mode, want.ttl_ms
            ),
        );
        self.drive_elector();
    }

    /// The core no longer wants this node to hold the lease.
    pub(super) fn withdraw(&mut self, lease: WorkloadName) {
        if self.leases.scripts.contains(&lease) {
            return;
        }
        self.leases.elector.unwant(&lease);
        self.drive_elector();
    }

    /// Carries out what the elector decided, in order (a voter's memory is stored before the
    /// answers that rely on it leave).
    pub(super) fn drive_elector(&mut self) {
        let now = now_ms();
        while let Some(output) = self.leases.elector.poll_output() {
            match output {
                ElectionOutput::Persist(memory) => {
                    if let Err(e) = self.store.write_value("election.bin", &memory) {
                        tracing::error!("cannot store the voter's memory: {e}");
                    }
                }
                ElectionOutput::Send { to, message } => self.send_lease_message(to, message),
                ElectionOutput::Holding { lease, .. } => {
                    let name = lease.name.clone();
                    // Renewals keep the token; only a new grant concerns the core.
                    if self.core.held_token(&name) != Some(lease.fencing_token) {
                        let kind = EventKind::LeaseWon {
                            epoch: lease.epoch,
                            fencing_token: lease.fencing_token,
                        };
                        self.note(
                            kind,
                            About::Workload(&name),
                            format!(
                                "holding lease {name}: epoch {}, fencing token {}",
                                lease.epoch, lease.fencing_token
                            ),
                        );
                        let token = lease.fencing_token;
                        self.decide(|core| core.handle_lease(now, name.clone(), Some(token)));
                    }
                    self.answer_waiters(&name, Some(&lease));
                    self.show_lease(&name);
                    if let Some(fleet) = self.fleet.as_mut() {
                        fleet.publish_lease(&lease);
                    }
                }
                ElectionOutput::Lost { name, reason } => {
                    let kind = EventKind::LeaseLost {
                        fencing_token: self.core.held_token(&name),
                    };
                    self.note(
                        kind,
                        About::Workload(&name),
                        format!("lost lease {name}: {reason}"),
                    );
                    self.decide(|core| core.handle_lease(now, name.clone(), None));
                    self.show_lease(&name);
                }
            }
        }
        let due: Vec<LeaseName> = self
            .leases
            .waiters
            .iter()
            .filter(|w| now >= w.1)
            .map(|w| w.0.clone())
            .collect();
        for name in due {
            self.answer_waiters(&name, None);
        }
    }

    /// When the elector or a waiting API call next needs the loop.
    pub(super) fn lease_deadline(&self) -> Option<u64> {
        let waiter = self.leases.waiters.iter().map(|w| w.1).min();
        [self.leases.elector.poll_timeout(), waiter]
            .into_iter()
            .flatten()
            .min()
    }

    fn send_lease_message(&mut self, to: NodeId, message: LeaseMessage) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let Some(addr) = fleet.quic_addr_of(&to) else {
            return;
        };
        let quic = fleet.quic.clone();
        let replies = self.leases.replies_tx.clone();
        let in_flight = self.leases.in_flight.clone();
        let timeout = self.config.fleet.exchanges.lease_grant_timeout;
        in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let answer = quic.peer(addr, PeerMessage::Lease(message), timeout).await;
            in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            if let Ok(PeerMessage::Lease(reply @ LeaseMessage::Reply(_))) = answer {
                // A task can wait for room; a late reply is judged by the elector, which
                // counts a grant from when it was asked for.
                let _ = replies.send((to, reply)).await;
            }
        });
    }

    /// A peer's election message over QUIC; requests are answered on the same stream.
    pub(super) fn on_lease_message(&mut self, from: &NodeId, message: LeaseMessage) -> PeerMessage {
        let now = now_ms();
        let answer = match message {
            LeaseMessage::Request(request) => {
                let reply = self.leases.elector.answer(now, from, &request);
                PeerMessage::Lease(LeaseMessage::Reply(reply))
            }
            other => {
                self.leases.elector.handle_message(now, from, other);
                PeerMessage::Stored
            }
        };
        // Persist (and anything else) before the answer leaves.
        self.drive_elector();
        answer
    }

    /// A reply to one of this node's grant requests.
    pub(super) fn on_lease_reply(&mut self, from: NodeId, message: LeaseMessage) {
        self.leases.elector.handle_message(now_ms(), &from, message);
        self.drive_elector();
    }

    /// Lease records and voter sets heard in gossip.
    pub(super) fn on_heard_leases(&mut self, records: Vec<Lease>, voters: Vec<VoterRecord>) {
        let now = now_ms();
        for record in records {
            let name = record.name.clone();
            self.leases.elector.handle_record(now, record);
            self.show_lease(&name);
        }
        for record in voters {
            self.adopt_voters(record, false);
        }
        self.drive_elector();
    }

    /// Defines the voter set if nobody has yet: nodes labelled `voter=true`, else every
    /// member known now. Fixed from then on until changed with `starling voters set`.
    fn ensure_voters(&mut self) {
        if self.leases.voters.is_some() {
            return;
        }
        let view = self.core.view();
        let labelled: BTreeSet<NodeId> = view
            .nodes
            .values()
            .filter(|n| n.labels.get("voter").is_some_and(|v| v == "true"))
            .map(|n| n.id.clone())
            .collect();
        let nodes = if labelled.is_empty() {
            view.nodes.keys().cloned().collect()
        } else {
            labelled
        };
        let stamp = self.hlc.tick(now_ms());
        self.adopt_voters(VoterRecord { stamp, nodes }, true);
    }

    /// Takes a voter record if it is newer than ours; stores and publishes it.
    fn adopt_voters(&mut self, record: VoterRecord, ours: bool) {
        if self
            .leases
            .voters
            .as_ref()
            .is_some_and(|v| v.stamp >= record.stamp)
        {
            return;
        }
        if let Err(e) = self.store.write_value("voters.bin", &record) {
            tracing::error!("cannot store the voter set: {e}");
            return;
        }
        let names: Vec<&str> = record.nodes.iter().map(|n| n.as_str()).collect();
        self.note(
            EventKind::Membership,
            About::Node,
            format!(
                "lease voters {}: {}",
                if ours { "defined here" } else { "adopted" },
                names.join(", ")
            ),
        );
        self.leases.elector.set_voters(record.voters());
        if let Some(fleet) = self.fleet.as_mut() {
            fleet.publish_voters(&record);
        }
        self.leases.voters = Some(record);
    }

    /// `starling voters [set ...]`.
    pub(super) fn voters_api(&mut self, set: Option<Vec<NodeId>>, force: bool) -> ApiResponse {
        if let Some(nodes) = set {
            let new: BTreeSet<NodeId> = nodes.into_iter().collect();
            if new.is_empty() {
                return error("a voter set needs at least one node".into());
            }
            let known = self.core.view();
            if let Some(unknown) = new.iter().find(|n| !known.nodes.contains_key(*n)) {
                return error(format!("{unknown} is not a member of this fleet"));
            }
            if let Some(old) = &self.leases.voters {
                let changed = old.nodes.symmetric_difference(&new).count();
                if changed > 1 && !force {
                    return error(format!(
                        "this changes {changed} voters at once; change one at a time (so every \
                         old and new majority overlap), or pass --force"
                    ));
                }
            }
            let stamp = self.hlc.tick(now_ms());
            self.adopt_voters(VoterRecord { stamp, nodes: new }, true);
        }
        let voters = self.leases.voters.as_ref().map_or_else(Vec::new, |v| {
            v.nodes
                .iter()
                .map(|n| Voter {
                    node: n.clone(),
                    liveness: self.core.view().nodes.get(n).map(|v| v.liveness),
                })
                .collect()
        });
        ApiResponse::Voters {
            voters,
            version: self.leases.elector.voters().version,
        }
    }

    /// `starling lease acquire NAME`: campaign on this node until released.
    pub(super) fn acquire(
        &mut self,
        name: LeaseName,
        ttl_ms: u64,
        wait_ms: u64,
        reply: oneshot::Sender<ApiResponse>,
    ) {
        if self
            .core
            .desired()
            .get(&name)
            .is_some_and(|r| r.spec.singleton)
        {
            let _ = reply.send(error(format!(
                "lease {name} belongs to the singleton workload {name}; pick another name"
            )));
            return;
        }
        if !(LEASE_TTL_MIN_MS..=LEASE_TTL_MAX_MS).contains(&ttl_ms) {
            let _ = reply.send(error(format!(
                "ttl: must be between {LEASE_TTL_MIN_MS} and {LEASE_TTL_MAX_MS} ms, got {ttl_ms}"
            )));
            return;
        }
        self.ensure_voters();
        let now = now_ms();
        self.leases.scripts.insert(name.clone());
        self.leases.elector.want(
            now,
            &name,
            Candidacy {
                ttl_ms,
                mode: LeaseMode::Quorum,
            },
        );
        self.leases.waiters.push((name, now + wait_ms, reply));
        self.drive_elector();
    }

    /// `starling lease release NAME`.
    pub(super) fn release(&mut self, name: &LeaseName) -> ApiResponse {
        if !self.leases.scripts.remove(name) {
            return error(format!(
                "lease {name} was not acquired through this node's API"
            ));
        }
        self.leases.elector.unwant(name);
        self.drive_elector();
        ApiResponse::Leases(self.lease_rows())
    }

    /// `starling get leases`: every lease known here or wanted here.
    pub(super) fn lease_rows(&self) -> Vec<LeaseRow> {
        let now = now_ms();
        let elector = &self.leases.elector;
        let mut names: BTreeSet<LeaseName> =
            elector.table().iter().map(|l| l.name.clone()).collect();
        names.extend(elector.wanted().cloned());
        names
            .into_iter()
            .map(|name| {
                let view = elector.view(&name);
                let here = if elector.holds(&name, now).is_some() {
                    LeaseHere::Holder
                } else if view.wanted {
                    LeaseHere::Candidate {
                        waiting_for: view.waiting_for,
                    }
                } else {
                    LeaseHere::Bystander
                };
                let record = view.record.as_ref();
                LeaseRow {
                    holder: record.map(|l| l.holder.clone()),
                    epoch: record.map_or(0, |l| l.epoch),
                    fencing_token: record.map_or(0, |l| l.fencing_token),
                    expires_in_ms: record.map_or(0, |l| l.expires_at_ms().saturating_sub(now)),
                    here,
                    name,
                }
            })
            .collect()
    }

    fn answer_waiters(&mut self, name: &LeaseName, held: Option<&Lease>) {
        let now = now_ms();
        let waiting_for = self.leases.elector.view(name).waiting_for;
        let waiters = std::mem::take(&mut self.leases.waiters);
        for (n, deadline, reply) in waiters {
            if &n != name {
                self.leases.waiters.push((n, deadline, reply));
                continue;
            }
            match held {
                Some(lease) => {
                    let _ = reply.send(ApiResponse::Lease(lease.clone()));
                }
                None if now >= deadline => {
                    let _ = reply.send(error(format!(
                        "lease {name} not held yet (this node keeps campaigning until \
                         `starling lease release {name}`): {waiting_for}"
                    )));
                }
                None => self.leases.waiters.push((n, deadline, reply)),
            }
        }
    }

    /// Updates what workloads see: the board behind `/v1/leases/NAME` and the `lease` file
    /// in the directory of every local replica of the workload. Runs at every grant, renewal
    /// and loss, so the file's deadline moves forward with each renewal: a fenced instance
    /// (`runtime::fence`) stops itself once that deadline passes unrenewed.
    fn show_lease(&mut self, name: &LeaseName) {
        let info = self.lease_info(name);
        let file = lease_file_of(&info).render();
        self.leases.board.set(info);
        for (replica, _) in self.core.instances() {
            if &replica.workload == name {
                self.write_lease_file(&replica, &file);
            }
        }
    }

    /// Writes the `lease` file of a singleton replica about to start, so its fence reads a
    /// valid deadline (or `active=false`) from its first look.
    pub(super) fn prepare_lease_file(&self, replica: &ReplicaId) {
        let file = lease_file_of(&self.lease_info(&replica.workload)).render();
        self.write_lease_file(replica, &file);
    }

    fn lease_info(&self, name: &LeaseName) -> LeaseInfo {
        let now = now_ms();
        let view = self.leases.elector.view(name);
        let held = self.leases.elector.holds(name, now);
        LeaseInfo {
            name: name.to_string(),
            node: self.node.to_string(),
            active: held.is_some(),
            holder: view.record.as_ref().map(|l| l.holder.to_string()),
            epoch: view.record.as_ref().map_or(0, |l| l.epoch),
            token: held.map_or(0, |l| l.fencing_token),
            act_until_unix_ms: held.and(view.may_act_until_ms).unwrap_or(0),
        }
    }

    /// Replaces a replica's `lease` file by renaming a complete one over it: a fence polling
    /// it must never read half a file. Not fsynced: after a crash of the host the deadline in
    /// it has passed anyway.
    fn write_lease_file(&self, replica: &ReplicaId, text: &str) {
        // The runtime may not have made the directory yet: the start is in flight.
        let dir = self
            .store
            .dir()
            .join("runtime")
            .join("replicas")
            .join(format!("{}-{}", replica.workload, replica.index));
        let path = dir.join(LEASE_FILE_NAME);
        // Gossip repeats records often; an unchanged file need not be replaced.
        if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
            return;
        }
        let temp = dir.join(format!(".{LEASE_FILE_NAME}.tmp"));
        if let Err(e) = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&temp, text))
            .and_then(|()| std::fs::rename(&temp, &path))
        {
            // A stale lease file misleads the instance: as loud as a failed state write.
            let failure = format!("{}: {e}", path.display());
            self.store.health().record_failure(&failure);
        }
    }

    /// Environment for a singleton's instance: its lease, token (if held now) and where to
    /// poll.
    pub(super) fn lease_env(&self, name: &WorkloadName) -> Vec<(String, String)> {
        let mut env = vec![("STARLING_LEASE".to_string(), name.to_string())];
        if let Some(token) = self.core.held_token(name) {
            env.push(("STARLING_LEASE_TOKEN".into(), token.to_string()));
        }
        if let Some(url) = &self.leases.url {
            env.push((
                "STARLING_LEASE_URL".into(),
                format!("{url}/v1/leases/{name}"),
            ));
        }
        env.push(("STARLING_LEASE_FILE".into(), LEASE_FILE_NAME.into()));
        env
    }
}

/// What the `lease` file says, from what the board says.
fn lease_file_of(info: &LeaseInfo) -> LeaseFile {
    LeaseFile {
        active: info.active,
        token: info.token,
        epoch: info.epoch,
        holder: info.holder.clone(),
        act_until_unix_ms: info.act_until_unix_ms,
    }
}
