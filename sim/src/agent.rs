//! Agent restarts: the agent process goes away while its replicas keep running, and the next
//! agent adopts them (`RuntimeEvent::Adopted`, before anything else reaches the new core).
//!
//! - Unplanned (the agent is killed): the core, detector and elector vanish at once; the node
//!   answers no probe, gossip or lease message. Its replicas run on. A singleton that follows
//!   its lease runs under `starling fence`, which stops it once the lease deadline the agent
//!   last wrote passes without a renewal; the simulation stops it at that deadline plus the
//!   fence's grace.
//! - Planned (`--on-stop leave`): the node first announces `Departure::Restarting` with a
//!   deadline (`gossip.restart_window` after now). Its own view carries it, so its core stops
//!   its singleton instances and gives their leases up once they exited; every peer it sees
//!   alive and can reach hears it at once (the agent's QUIC push), and so does every node
//!   those reach (gossip relays it); the rest hear it from its heartbeats (a key of its gossip
//!   state). Detectors hold it `Suspect`, never `Down`, until the deadline. The agent goes once
//!   no singleton instance runs and it holds no lease, or after the agent's bound. A node that
//!   boots or resumes meanwhile learns every member's announcement at once, as a real one syncs
//!   every member's gossip state on its first exchanges.
//! - The next agent starts `downtime` after the old one went, from the same disk (its stored
//!   view included): a new generation, `Departure::Staying` again (its heartbeats tell the
//!   peers).

use starling_core::node::RuntimeEvent;
use starling_protocol::placement::{Departure, Liveness};

use crate::host::{Fleet, HostEvent, Power};
use crate::world::{Event, World};

/// A planned restart under way on a node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Leaving {
    /// When the agent goes with whatever is left (simulator time).
    pub give_up_at_ms: u64,
    /// How long it stays away once gone.
    pub downtime_ms: u64,
}

/// Longest a departing agent waits for its singletons to stop and its leases to go: the
/// agent's announce timeout (2 s) plus its stop grace (at most 5 s).
pub(crate) const LEAVE_BOUND_MS: u64 = 7_000;

/// How often a departing agent looks whether it may go. The agent re-checks after every event
/// of its loop; 50 ms is the simulated runtime's stop delay, so it goes within one stop of
/// being done.
const LEAVE_CHECK_EVERY_MS: u64 = 50;

/// How long `starling fence` takes to stop its command once the lease deadline passed (its
/// default SIGTERM grace).
const FENCE_GRACE_MS: u64 = 100;

impl World<'_> {
    /// The fault: node `i`'s agent restarts, announced first when `planned`.
    pub(crate) fn agent_restart(&mut self, i: usize, downtime_ms: u64, planned: bool) {
        if self.nodes[i].host.power != Power::Up {
            let id = &self.nodes[i].host.id;
            self.note(format!("agent-restart: {id} is not up; nothing restarts"));
            return;
        }
        if planned {
            self.announce_departure(i, downtime_ms);
        } else {
            self.agent_stop(i, downtime_ms);
        }
    }

    /// Node `from` told node `j` of its planned absence (or, `Staying`, that it is back).
    pub(crate) fn hear_departure(&mut self, j: usize, from: usize, departure: Departure) {
        let heard = self.nodes[j].departures_heard.get(&from).copied();
        if heard.unwrap_or_default() == departure {
            return;
        }
        if departure == Departure::Staying {
            self.nodes[j].departures_heard.remove(&from);
        } else {
            self.nodes[j].departures_heard.insert(from, departure);
        }
        let id = self.nodes[from].host.id.clone();
        if let Some(d) = self.nodes[j].detector.as_mut() {
            d.handle_departure(&id, departure);
        }
    }

    /// A booting node `i` learns the announcements of every member at once.
    pub(crate) fn learn_departures(&mut self, i: usize) {
        let departing: Vec<(usize, Departure)> = (0..self.nodes.len())
            .filter(|m| *m != i && self.nodes[*m].host.power != Power::Gone)
            .map(|m| (m, self.nodes[m].departure))
            .filter(|(_, d)| *d != Departure::Staying)
            .collect();
        self.nodes[i].departures_heard.clear();
        for (m, departure) in departing {
            self.hear_departure(i, m, departure);
        }
    }

    /// The replicas still running on node `i` go to its new core as adopted, each with a
    /// passing health probe shortly after (the agent probes what it adopts).
    pub(crate) fn adopt(&mut self, i: usize) {
        let found: Vec<_> = self.nodes[i]
            .host
            .instances
            .iter()
            .map(|(r, x)| (r.clone(), x.instance, x.revision, x.spec.health.is_some()))
            .collect();
        for (replica, instance, revision, probed) in found {
            self.note(format!(
                "{} adopts {}/{}",
                self.nodes[i].host.id, replica.workload, replica.index
            ));
            let adopted = RuntimeEvent::Adopted {
                replica: replica.clone(),
                instance,
                revision,
            };
            self.with_core(i, |core, now| core.handle_runtime(now, adopted));
            if probed {
                let ok = RuntimeEvent::Health {
                    replica,
                    instance,
                    ok: true,
                    detail: String::new(),
                };
                self.schedule(self.now + 50, Event::Host(i, HostEvent::Runtime(ok)));
            }
        }
    }

    fn announce_departure(&mut self, i: usize, downtime_ms: u64) {
        let back_by_ms = self.node_now(i) + self.scenario.gossip.restart_window_ms;
        let departure = Departure::Restarting { back_by_ms };
        self.nodes[i].departure = departure;
        self.nodes[i].leaving = Some(Leaving {
            give_up_at_ms: self.now + LEAVE_BOUND_MS,
            downtime_ms,
        });
        self.note(format!(
            "{} announces a restart, back by {back_by_ms} ms on its clock",
            self.nodes[i].host.id
        ));
        for j in self.told_of_departure(i) {
            self.hear_departure(j, i, departure);
            self.refresh_view(j);
        }
        self.refresh_view(i);
        let boots = self.nodes[i].boots;
        self.schedule(
            self.now + LEAVE_CHECK_EVERY_MS,
            Event::DepartCheck(i, boots),
        );
    }

    /// The nodes that learn node `i`'s announcement at once: the push reaches every peer it
    /// sees alive over a working link, and gossip relays it to every node those reach in turn
    /// (a node that could not hear it then learns it from `i`'s heartbeats, or at its boot).
    fn told_of_departure(&self, i: usize) -> Vec<usize> {
        let listening = |j: usize| self.nodes[j].host.power == Power::Up;
        let mut told: std::collections::BTreeSet<usize> = (0..self.nodes.len())
            .filter(|j| {
                *j != i
                    && listening(*j)
                    && !self.blocked.contains(&(i, *j))
                    && self.nodes[i]
                        .view
                        .nodes
                        .get(&self.nodes[*j].host.id)
                        .is_some_and(|v| v.liveness == Liveness::Alive)
            })
            .collect();
        let mut frontier: Vec<usize> = told.iter().copied().collect();
        while let Some(k) = frontier.pop() {
            for j in 0..self.nodes.len() {
                if j != i && listening(j) && !told.contains(&j) && !self.blocked.contains(&(k, j)) {
                    told.insert(j);
                    frontier.push(j);
                }
            }
        }
        told.into_iter().collect()
    }

    /// A departing agent goes once its singletons and leases are gone, or at its bound.
    pub(crate) fn departure_check(&mut self, i: usize, boots: u64) {
        let Some(leaving) = self.nodes[i].leaving else {
            return;
        };
        if boots != self.nodes[i].boots || self.nodes[i].host.power != Power::Up {
            return;
        }
        let done = self.singletons_and_leases_gone(i);
        if !done && self.now < leaving.give_up_at_ms {
            self.schedule(
                self.now + LEAVE_CHECK_EVERY_MS,
                Event::DepartCheck(i, boots),
            );
            return;
        }
        if !done {
            self.note(format!(
                "{} stops before its departure finished: a singleton or a lease is still here",
                self.nodes[i].host.id
            ));
        }
        self.agent_stop(i, leaving.downtime_ms);
        self.returns.depart(self.now, i);
    }

    /// What the agent waits for before it goes (`departure_done` of `--on-stop leave`): no
    /// singleton instance left, no lease held.
    fn singletons_and_leases_gone(&self, i: usize) -> bool {
        let node = &self.nodes[i];
        let now = self.node_now(i);
        let runs_singleton = node.host.core.as_ref().is_some_and(|core| {
            core.instances().iter().any(|(replica, _)| {
                core.desired()
                    .get(&replica.workload)
                    .is_some_and(|rev| rev.spec.singleton)
            })
        });
        let holds_lease = node.leases.elector.as_ref().is_some_and(|e| {
            e.table()
                .iter()
                .any(|lease| e.holds(&lease.name, now).is_some())
        });
        !runs_singleton && !holds_lease
    }

    /// Node `i`'s agent process goes away; its replicas keep running.
    fn agent_stop(&mut self, i: usize, downtime_ms: u64) {
        self.note(format!(
            "{} agent stops; {} replicas keep running",
            self.nodes[i].host.id,
            self.nodes[i].host.instances.len()
        ));
        self.fence(i);
        crate::return_check::track(self);
        if self.nodes[i].departure == Departure::Staying {
            self.returns.left(i);
        }
        let node = &mut self.nodes[i];
        node.host.power = Power::AgentDown;
        node.host.lose_agent();
        node.detector = None;
        node.detector_timer_at = None;
        node.held.clear();
        node.leaving = None;
        let boots = node.boots;
        self.drop_elector(i);
        self.schedule(self.now + downtime_ms, Event::AgentReturn(i, boots));
    }

    /// Each instance here of a singleton that follows its lease stops at the lease deadline
    /// the agent last knew (at once if it held none): its fence sees no renewal.
    fn fence(&mut self, i: usize) {
        let now = self.node_now(i);
        let skew = self.nodes[i].host.skew_ms;
        let fenced: Vec<_> = self.nodes[i]
            .host
            .instances
            .iter()
            .filter(|(_, x)| crate::checks::follows_lease(&x.spec))
            .map(|(r, x)| (r.clone(), x.instance))
            .collect();
        for (replica, instance) in fenced {
            let until = self.nodes[i]
                .leases
                .elector
                .as_ref()
                .and_then(|e| e.view(&replica.workload).may_act_until_ms)
                .filter(|t| *t > now)
                .map_or(self.now, |t| (t as i64 - skew).max(self.now as i64) as u64);
            let exited = RuntimeEvent::Exited {
                replica,
                instance,
                code: Some(75),
                log_tail: vec!["fenced: the lease was not renewed".into()],
            };
            self.schedule(
                until + FENCE_GRACE_MS,
                Event::Host(i, HostEvent::Runtime(exited)),
            );
        }
    }

    /// The next agent of node `i` starts (unless the node crashed or went meanwhile).
    pub(crate) fn agent_return(&mut self, i: usize, boots: u64) {
        if self.nodes[i].host.power == Power::AgentDown && self.nodes[i].boots == boots {
            self.note(format!("{} agent starts again", self.nodes[i].host.id));
            self.boot(i);
        }
    }
}
