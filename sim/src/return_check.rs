//! Invariant 7, `returning-duplicates`: a node that comes back makes no replica run twice for
//! longer than one make-before-break handover.
//!
//! A return is a restart from the disk (a crash, a reboot) or a new agent adopting the
//! replicas that outlived the old one. From the return on, per replica, the checker adds up the
//! time during which the returned node runs a copy and another node runs one too. Each replica
//! may have one handover's worth ([`handover_bound_ms`]): the node taking its replica back
//! after the move hold, or the copy started elsewhere while it was away giving way to the copy
//! it adopted. When several of the nodes running a replica came back (a rolling reboot), the
//! time counts against the one that came back last: the return that caused the handover.
//!
//! Copies count on nodes that are up, and on nodes whose agent is away for an announced
//! restart. A paused node's copies are frozen (as in the convergence check), and the copies of
//! an agent killed outright are invisible to the fleet until its next agent reports them: the
//! fleet rightly replaces them, and the duplicates they make are counted against that node's
//! own return.
//!
//! A planned restart (`agent-restart` with `planned = true`) is counted from the moment its
//! agent goes: its replicas keep running, peers were told, and nobody may start them while it
//! is away, so a copy started elsewhere meanwhile runs twice from its start. An unplanned
//! agent restart longer than the detection time is counted from the return only: the fleet
//! could not know that its replicas survived, and replacing them was right.
//!
//! The counts of a return end at the next fault (a new cause of moves: the replicas that
//! fault moves are its own business, and a rolling reboot moves the same replica between
//! nodes that came back earlier), or when the node goes again; its next return starts afresh.
//! A planned restart still away keeps its counts across faults.

use std::collections::BTreeMap;

use starling_protocol::placement::{Departure, ReplicaId};

use crate::host::Power;
use crate::scenario::Scenario;
use crate::world::{SimNode, World};

/// The duplicate time each replica may have next to one returned node: one make-before-break
/// handover, from the new copy running to the old copy gone. In the simulation that is the new
/// copy's first health probe (50 ms after its start), its status reaching the old node (its
/// next heartbeat: up to one gossip interval, plus a latency), the old node's view counting the
/// returned node alive again (its own next gossip round: one more interval), one lost heartbeat
/// (one more interval and latency before the status comes again), and the stop (50 ms).
pub(crate) fn handover_bound_ms(scenario: &Scenario) -> u64 {
    let interval = scenario.gossip.interval_ms;
    let latency = scenario.network.latency_ms.1;
    50 + 3 * interval + 2 * latency + 50
}

/// The duplicate time counted next to each node back from a restart.
pub(crate) struct ReturnLog {
    bound_ms: u64,
    episodes: BTreeMap<usize, Episode>,
    /// Per replica running twice next to a returned node: that node, and since when.
    open: BTreeMap<ReplicaId, (usize, u64)>,
    /// Returns counted, and the most duplicate time one replica had next to one of them.
    pub returns: u64,
    pub overlap_ms_max: u64,
}

struct Episode {
    /// When counting began (the return, or a planned restart's going away).
    since_ms: u64,
    /// When the node came back (`None` while a planned restart is still away).
    back_at_ms: Option<u64>,
    /// A planned restart still away: its return keeps this episode.
    away: bool,
    /// Per replica: duplicate time of overlaps that ended.
    overlap_ms: BTreeMap<ReplicaId, u64>,
}

impl Episode {
    fn new(since_ms: u64, away: bool) -> Self {
        Episode {
            since_ms,
            back_at_ms: (!away).then_some(since_ms),
            away,
            overlap_ms: BTreeMap::new(),
        }
    }
}

impl ReturnLog {
    pub fn new(scenario: &Scenario) -> Self {
        ReturnLog {
            bound_ms: handover_bound_ms(scenario),
            episodes: BTreeMap::new(),
            open: BTreeMap::new(),
            returns: 0,
            overlap_ms_max: 0,
        }
    }

    /// The handover bound in force.
    pub fn bound_ms(&self) -> u64 {
        self.bound_ms
    }

    /// Node `i`'s agent goes for a planned restart: count from now.
    pub fn depart(&mut self, now_ms: u64, i: usize) {
        self.returns += 1;
        self.episodes.insert(i, Episode::new(now_ms, true));
    }

    /// When node `i` last came back from a restart, while it has not gone again.
    pub fn back_at_ms(&self, i: usize) -> Option<u64> {
        self.episodes.get(&i).and_then(|e| e.back_at_ms)
    }

    /// Node `i` went without announcing it (a crash, a killed agent): its counts end.
    pub fn left(&mut self, i: usize) {
        self.episodes.remove(&i);
    }

    /// A fault fires: the counts of every return end, but for planned restarts still away.
    fn fault(&mut self) {
        self.episodes.retain(|_, e| e.away);
    }

    /// Node `i` booted (`boots` counts this boot): a return unless it is its first.
    pub fn back(&mut self, now_ms: u64, i: usize, boots: u64) {
        if boots <= 1 {
            return;
        }
        match self.episodes.get_mut(&i) {
            Some(e) if e.away => {
                e.away = false;
                e.back_at_ms = Some(now_ms);
            }
            _ => {
                self.returns += 1;
                self.episodes.insert(i, Episode::new(now_ms, false));
            }
        }
    }
}

/// Whether a node's running copies count: it is up, or only its agent is away and it said so.
fn counts(node: &SimNode) -> bool {
    match node.host.power {
        Power::Up => true,
        Power::AgentDown => node.departure != Departure::Staying,
        _ => false,
    }
}

fn runs(node: &SimNode, replica: &ReplicaId) -> bool {
    counts(node) && node.host.instances.get(replica).is_some_and(|x| x.running)
}

/// Brings the overlaps up to date after running copies may have changed, then checks.
pub(crate) fn track(world: &mut World) {
    let log = &mut world.returns;
    if log.episodes.is_empty() && log.open.is_empty() {
        return;
    }
    let now = world.now;
    let nodes = &world.nodes;
    // Each replica that a returned node runs next to another copy, with the returned node
    // that came back last among its runners.
    let mut doubled: BTreeMap<ReplicaId, usize> = BTreeMap::new();
    for &i in log.episodes.keys() {
        for r in nodes[i]
            .host
            .instances
            .keys()
            .filter(|r| runs(&nodes[i], r))
        {
            if doubled.contains_key(r) {
                continue;
            }
            let runners: Vec<usize> = (0..nodes.len()).filter(|j| runs(&nodes[*j], r)).collect();
            if runners.len() < 2 {
                continue;
            }
            let latest = runners
                .iter()
                .filter_map(|j| log.episodes.get(j).map(|e| (e.since_ms, *j)))
                .max_by_key(|(since, j)| (*since, std::cmp::Reverse(*j)));
            if let Some((_, owner)) = latest {
                doubled.insert(r.clone(), owner);
            }
        }
    }
    let ended: Vec<ReplicaId> = log
        .open
        .iter()
        .filter(|(r, (owner, _))| doubled.get(*r) != Some(owner))
        .map(|(r, _)| r.clone())
        .collect();
    for r in ended {
        if let Some((owner, since)) = log.open.remove(&r)
            && let Some(e) = log.episodes.get_mut(&owner)
        {
            *e.overlap_ms.entry(r).or_insert(0) += now - since;
        }
    }
    for (r, owner) in doubled {
        log.open.entry(r).or_insert((owner, now));
    }
    check(world);
}

/// A fault is about to fire: the counts so far are checked, then the returns before it end.
pub(crate) fn fault(world: &mut World) {
    track(world);
    world.returns.fault();
    track(world);
}

/// At every sample: an overlap under way may outgrow the bound without any copy changing.
pub(crate) fn sample(world: &mut World) {
    check(world);
}

fn check(world: &mut World) {
    let now = world.now;
    let log = &world.returns;
    let bound = log.bound_ms;
    let mut totals: BTreeMap<(usize, ReplicaId), u64> = BTreeMap::new();
    for (&i, episode) in &log.episodes {
        for (r, ms) in &episode.overlap_ms {
            totals.insert((i, r.clone()), *ms);
        }
    }
    for (r, (owner, since)) in &log.open {
        if log.episodes.contains_key(owner) {
            *totals.entry((*owner, r.clone())).or_insert(0) += now - since;
        }
    }
    let most = totals.values().copied().max().unwrap_or(0);
    world.returns.overlap_ms_max = world.returns.overlap_ms_max.max(most);
    let Some(((i, replica), total)) = totals
        .into_iter()
        .filter(|(_, t)| *t > bound)
        .max_by_key(|(_, t)| *t)
    else {
        return;
    };
    let since_ms = world.returns.episodes.get(&i).map_or(0, |e| e.since_ms);
    let others: Vec<String> = world
        .nodes
        .iter()
        .enumerate()
        .filter(|(j, n)| *j != i && runs(n, &replica))
        .map(|(_, n)| n.host.id.to_string())
        .collect();
    let detail = format!(
        "{} (counted from {:.3} s) has run {}/{} next to another copy for {total} ms, over \
         one handover ({bound} ms); now also on: {}",
        world.nodes[i].host.id,
        since_ms as f64 / 1000.0,
        replica.workload,
        replica.index,
        if others.is_empty() {
            "no other node".to_string()
        } else {
            others.join(", ")
        }
    );
    world.checker.fail("returning-duplicates", detail);
}
