//! Leader election in the simulation: every node runs the real `election::Elector`, driven the
//! way the node core is.
//!
//! - The core's `Campaign`/`Withdraw` become `want`/`unwant`; the elector's `Send`s travel as
//!   [`Msg::Lease`](crate::world::Msg) over the simulated network (latency, loss, partitions,
//!   cuts, pauses); `Holding`/`Lost` go to the core (`handle_lease`) and to the invariant-4
//!   log; `Persist` writes the voter memory to the simulated disk (kept across a crash, lost
//!   with the disk).
//! - A holder publishes its lease record in its gossip state (a versioned delta on the
//!   heartbeat, like its status); peers merge it with `handle_record`.
//! - Timers are node-clock deadlines converted to simulator time with the node's skew, like
//!   the core's, and re-armed when the clock jumps.
//! - Voters: the nodes labelled `voter=true`, else every initial node; one fixed set,
//!   version 1.

use std::collections::BTreeMap;

use starling_core::election::{Candidacy, ElectionOutput, Elector, ElectorConfig, Voters};
use starling_core::node::LeaseWant;
use starling_protocol::lease::{Lease, LeaseMessage, LeaseName};
use starling_protocol::spec::{LeaseMode, WorkloadSpec};

use crate::host::Fleet;
use crate::world::{Event, Msg, World};

/// A node's lease state next to its elector.
#[derive(Debug, Default)]
pub(crate) struct NodeLeases {
    /// The elector, while the node is up.
    pub elector: Option<Elector>,
    /// The pending elector timer (simulator time), armed once per deadline.
    pub timer_at: Option<u64>,
    /// The fencing token the core was last told, per lease held here.
    pub told: BTreeMap<LeaseName, u64>,
    /// How each lease is campaigned for (from the core's `Campaign`).
    pub modes: BTreeMap<LeaseName, LeaseMode>,
    /// The records this node publishes in its gossip state, and their version.
    pub records: BTreeMap<LeaseName, Lease>,
    pub version: u64,
    /// The version of each peer's records merged here.
    pub peer_versions: BTreeMap<usize, u64>,
}

/// The fixed voter set of a scenario: nodes labelled `voter=true`, else every initial node.
pub(crate) fn voters_of(world: &World) -> Voters {
    let labelled: Vec<&crate::world::SimNode> = world
        .nodes
        .iter()
        .filter(|n| n.host.labels.get("voter").is_some_and(|v| v == "true"))
        .collect();
    let nodes = if labelled.is_empty() {
        world.nodes.iter().map(|n| n.host.id.clone()).collect()
    } else {
        labelled.iter().map(|n| n.host.id.clone()).collect()
    };
    Voters { version: 1, nodes }
}

impl World<'_> {
    /// A new elector for node `i` from the voter memory on its disk, at its clock.
    pub(crate) fn boot_elector(&mut self, i: usize) {
        let now = self.node_now(i);
        let config = ElectorConfig {
            node: self.nodes[i].host.id.clone(),
            max_drift_ms: self.scenario.leases.max_drift_ms,
        };
        let mut elector = Elector::new(config, self.nodes[i].disk.voter.clone(), now);
        elector.set_voters(self.voters.clone());
        let leases = &mut self.nodes[i].leases;
        leases.elector = Some(elector);
        leases.timer_at = None;
        leases.told.clear();
        leases.modes.clear();
        leases.peer_versions.clear();
        if !leases.records.is_empty() {
            leases.records.clear();
            leases.version += 1;
        }
    }

    /// Node `i` crashed: its elector and everything it held are gone.
    pub(crate) fn drop_elector(&mut self, i: usize) {
        let leases = &mut self.nodes[i].leases;
        leases.elector = None;
        leases.timer_at = None;
        leases.told.clear();
        self.lease_log.crashed(self.now, i);
    }

    /// The core's `Campaign`.
    pub(crate) fn campaign(&mut self, i: usize, lease: LeaseName, want: LeaseWant) {
        let now = self.node_now(i);
        self.lease_log.wanted(self.now, &lease);
        let node = &mut self.nodes[i].leases;
        node.modes.insert(lease.clone(), want.mode);
        if let Some(e) = node.elector.as_mut() {
            let candidacy = Candidacy {
                ttl_ms: want.ttl_ms,
                mode: want.mode,
            };
            e.want(now, &lease, candidacy);
        }
        self.flush_elector(i);
    }

    /// The core's `Withdraw`.
    pub(crate) fn withdraw(&mut self, i: usize, lease: LeaseName) {
        if let Some(e) = self.nodes[i].leases.elector.as_mut() {
            e.unwant(&lease);
        }
        self.flush_elector(i);
    }

    /// Node `i`'s elector timer fired.
    pub(crate) fn elector_timer(&mut self, i: usize) {
        if self.nodes[i].leases.timer_at == Some(self.now) {
            self.nodes[i].leases.timer_at = None;
        }
        let now = self.node_now(i);
        if let Some(e) = self.nodes[i].leases.elector.as_mut() {
            e.handle_timeout(now);
        }
        self.flush_elector(i);
    }

    /// An election message from `from` reached `to`.
    pub(crate) fn deliver_lease(&mut self, from: usize, to: usize, message: LeaseMessage) {
        let now = self.node_now(to);
        let from_id = self.nodes[from].host.id.clone();
        if let Some(e) = self.nodes[to].leases.elector.as_mut() {
            e.handle_message(now, &from_id, message);
        }
        self.flush_elector(to);
    }

    /// The lease records of `from`'s gossip state, at `version`, reached `to`.
    pub(crate) fn merge_records(
        &mut self,
        from: usize,
        to: usize,
        version: u64,
        records: Vec<Lease>,
    ) {
        let now = self.node_now(to);
        let node = &mut self.nodes[to].leases;
        if node.peer_versions.get(&from).is_some_and(|v| *v >= version) {
            return;
        }
        node.peer_versions.insert(from, version);
        if let Some(e) = node.elector.as_mut() {
            for record in records {
                e.handle_record(now, record);
            }
        }
        self.flush_elector(to);
    }

    /// What node `i` gossips about leases to `peer`: its records, when `peer` has not merged
    /// this version yet (nothing at all for a node that never held a lease).
    pub(crate) fn records_for(&self, i: usize, peer: usize) -> Option<(u64, Vec<Lease>)> {
        let mine = &self.nodes[i].leases;
        if mine.version == 0 || self.nodes[peer].leases.peer_versions.get(&i) == Some(&mine.version)
        {
            return None;
        }
        Some((mine.version, mine.records.values().cloned().collect()))
    }

    /// Node `i`'s clock jumped: move its hold to the new simulator time, check, re-arm.
    pub(crate) fn skew_changed(&mut self, i: usize) {
        let nodes = &self.nodes;
        let skew = nodes[i].host.skew_ms;
        if let Some((invariant, detail)) = self
            .lease_log
            .skewed(self.now, i, skew, &|j| nodes[j].host.id.to_string())
        {
            self.checker.fail(invariant, detail);
        }
        self.flush_elector(i);
    }

    /// Invariant 4 at a sample.
    pub(crate) fn check_leases(&mut self) {
        let nodes = &self.nodes;
        if let Some((invariant, detail)) = self
            .lease_log
            .check(self.now, &|j| nodes[j].host.id.to_string())
        {
            self.checker.fail(invariant, detail);
        }
    }

    /// Carries out what node `i`'s elector asks, then re-arms its timer.
    pub(crate) fn flush_elector(&mut self, i: usize) {
        let Some(e) = self.nodes[i].leases.elector.as_mut() else {
            return;
        };
        let mut outputs = Vec::new();
        while let Some(o) = e.poll_output() {
            outputs.push(o);
        }
        let deadline = e.poll_timeout();
        for output in outputs {
            match output {
                ElectionOutput::Send { to, message } => {
                    if let Some(&j) = self.index.get(&to) {
                        self.send(i, j, Msg::Lease(message));
                    }
                }
                ElectionOutput::Persist(memory) => self.nodes[i].disk.voter = Some(memory),
                ElectionOutput::Holding {
                    lease,
                    may_act_until_ms,
                } => self.on_holding(i, lease, may_act_until_ms),
                ElectionOutput::Lost { name, reason } => self.on_lost(i, name, &reason),
            }
        }
        if let Some(t) = deadline {
            let at = (t as i64 - self.nodes[i].host.skew_ms).max(self.now as i64) as u64;
            if self.nodes[i]
                .leases
                .timer_at
                .is_none_or(|armed| at < armed || armed < self.now)
            {
                self.nodes[i].leases.timer_at = Some(at);
                self.schedule(at, Event::ElectorTimer(i));
            }
        }
    }

    fn on_holding(&mut self, i: usize, lease: Lease, may_act_until_ms: u64) {
        let name = lease.name.clone();
        let token = lease.fencing_token;
        let quorum = self.nodes[i].leases.modes.get(&name) != Some(&LeaseMode::Local);
        let nodes = &self.nodes;
        let broken = self.lease_log.holding(
            self.now,
            i,
            &lease,
            may_act_until_ms,
            nodes[i].host.skew_ms,
            quorum,
            &|j| nodes[j].host.id.to_string(),
        );
        if let Some((invariant, detail)) = broken {
            self.checker.fail(invariant, detail);
        }
        let leases = &mut self.nodes[i].leases;
        leases.records.insert(name.clone(), lease);
        leases.version += 1;
        if leases.told.get(&name) != Some(&token) {
            leases.told.insert(name.clone(), token);
            self.note(format!(
                "{} holds lease {name} (token {token}, may act until {} ms on its clock)",
                self.nodes[i].host.id, may_act_until_ms
            ));
            self.with_core(i, |core, now| core.handle_lease(now, name, Some(token)));
        }
    }

    fn on_lost(&mut self, i: usize, name: LeaseName, reason: &str) {
        self.lease_log.lost(self.now, i, &name);
        if self.nodes[i].leases.told.remove(&name).is_some() {
            self.note(format!(
                "{} lost lease {name}: {reason}",
                self.nodes[i].host.id
            ));
            self.with_core(i, |core, now| core.handle_lease(now, name, None));
        }
    }

    /// Whether some side of the fleet now could elect a holder of a lease of `spec`: local
    /// leases always can; a quorum lease needs a side (nodes up and reaching each other both
    /// ways) with a majority of the voters.
    pub(crate) fn holder_possible(&self, spec: &WorkloadSpec) -> bool {
        spec.lease.mode == LeaseMode::Local || self.largest_voter_side() >= self.voters.majority()
    }

    /// The most voters on one side of the fleet (up and connected both ways).
    pub(crate) fn largest_voter_side(&self) -> usize {
        let up: Vec<usize> = self.up().collect();
        let mut side: BTreeMap<usize, usize> = up.iter().map(|&i| (i, i)).collect();
        fn root(side: &BTreeMap<usize, usize>, mut i: usize) -> usize {
            while let Some(&p) = side.get(&i).filter(|p| **p != i) {
                i = p;
            }
            i
        }
        for (k, &a) in up.iter().enumerate() {
            for &b in &up[k + 1..] {
                if !self.blocked.contains(&(a, b)) && !self.blocked.contains(&(b, a)) {
                    let (ra, rb) = (root(&side, a), root(&side, b));
                    if ra != rb {
                        side.insert(ra.max(rb), ra.min(rb));
                    }
                }
            }
        }
        let mut voters_on: BTreeMap<usize, usize> = BTreeMap::new();
        for &i in &up {
            if self.voters.nodes.contains(&self.nodes[i].host.id) {
                *voters_on.entry(root(&side, i)).or_default() += 1;
            }
        }
        voters_on.values().copied().max().unwrap_or(0)
    }

    /// The lease facts for the report, with why nobody holds a lease at the end.
    pub(crate) fn lease_facts(&self) -> Vec<crate::LeaseFacts> {
        let mut facts = self.lease_log.facts(self.now);
        for f in facts.iter_mut().filter(|f| f.holder_at_end.is_none()) {
            f.why_no_holder = self.why_no_holder(&f.name, f.quorum);
        }
        facts
    }

    fn why_no_holder(&self, name: &str, quorum: bool) -> String {
        let total = self.voters.nodes.len();
        let largest = self.largest_voter_side();
        if quorum && largest < self.voters.majority() {
            return format!(
                "no side has a majority of the {total} voters: largest side sees {largest}"
            );
        }
        let Ok(lease) = LeaseName::new(name) else {
            return String::new();
        };
        let waiting: Vec<String> = self
            .up()
            .filter_map(|i| {
                let view = self.nodes[i].leases.elector.as_ref()?.view(&lease);
                view.wanted
                    .then(|| format!("{} waits ({})", self.nodes[i].host.id, view.waiting_for))
            })
            .collect();
        if waiting.is_empty() {
            "no node that is up campaigns for it".to_string()
        } else {
            waiting.join("; ")
        }
    }
}
