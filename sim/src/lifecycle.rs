//! A simulated node's life: joining the fleet, booting (fresh or from its disk, with the
//! rejoin wait an agent has) and crashing.

use std::collections::{BTreeMap, BTreeSet};

use starling_core::membership::{Detector, DetectorConfig};
use starling_core::node::{NodeCore, Restored};
use starling_protocol::placement::{Departure, FleetView, Liveness};
use starling_protocol::status::NodeStatus;

use crate::host::Host;
use crate::leases::NodeLeases;
use crate::scenario::DetectorModel;
use crate::world::*;

impl World<'_> {
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let host = Host::new(self.scenario, i);
        self.index.insert(host.id.clone(), i);
        self.nodes.push(SimNode {
            host,
            disk: Disk::default(),
            heartbeat: 0,
            last_heard: BTreeMap::new(),
            known: BTreeSet::new(),
            view: FleetView::default(),
            status: NodeStatus::default(),
            status_version: 0,
            peer_versions: BTreeMap::new(),
            sync: starling_core::sync::Sync::new(self.sync_config()),
            roots: BTreeMap::new(),
            held: Vec::new(),
            detector: None,
            boots: 0,
            detector_timer_at: None,
            verdicts: BTreeMap::new(),
            verdict_version: 0,
            peer_verdict_versions: BTreeMap::new(),
            leases: NodeLeases::default(),
            departure: Departure::Staying,
            departures_heard: BTreeMap::new(),
            leaving: None,
        });
        i
    }

    /// Starts (or restarts) node `i` from its disk. Replicas still running there (the agent
    /// restarted, its processes did not) are reported to the new core as adopted before
    /// anything else, as the agent does.
    pub fn boot(&mut self, i: usize) {
        let config = self.cores.next(&self.nodes[i].host.id);
        let sync = starling_core::sync::Sync::new(self.sync_config());
        let node = &mut self.nodes[i];
        node.last_heard.clear();
        node.peer_versions.clear();
        node.peer_verdict_versions.clear();
        node.verdicts.clear();
        node.verdict_version += 1;
        // A new agent: no pull or push of the old one survives.
        node.sync = sync;
        node.roots.clear();
        node.heartbeat += 1;
        node.departure = Departure::Staying;
        node.leaving = None;
        // A restart listens for the fleet before it acts, as the agent does; the fleet's
        // first start has nobody to listen for.
        let rejoin_until_ms = (node.boots > 0).then(|| {
            (self.now as i64 + node.host.skew_ms) as u64 + self.scenario.gossip.rejoin_wait_ms
        });
        // The agent restores the fleet as it last saw it, with itself back and staying.
        let mut view = node.disk.view.clone();
        if let Some(me) = view.nodes.get_mut(&node.host.id) {
            me.liveness = Liveness::Alive;
            me.departure = Departure::Staying;
        }
        let restored = Restored {
            desired: node.disk.desired.clone(),
            last_assignment: node.host.assignment.clone(),
            view,
            rejoin_until_ms,
        };
        let core = NodeCore::with_planner(config, restored, self.cores.planner());
        node.host.boot(core, &node.disk.desired);
        node.boots += 1;
        node.detector = None;
        if self.scenario.gossip.detector == DetectorModel::Watchers {
            let config = DetectorConfig {
                down_after_ms: self.scenario.gossip.down_after_ms,
                stale_after_ms: self.scenario.gossip.down_after_ms.max(2_000) * 2,
                ..DetectorConfig::default()
            };
            node.detector = Some(Detector::new(config, node.host.id.clone(), node.boots));
        }
        node.view = FleetView::default();
        // The elector first, as the agent builds it before the core: a core that acts on its
        // first adoption (no rejoin wait) may campaign at once.
        self.boot_elector(i);
        self.adopt(i);
        self.learn_departures(i);
        self.update_detector_members(i);
        self.refresh_view(i);
        self.returns.back(self.now, i, self.nodes[i].boots);
        let first_tick = self.now + self.rng.range(1, self.scenario.gossip.interval_ms);
        let boots = self.nodes[i].boots;
        self.schedule(first_tick, Event::GossipTick(i, boots));
    }

    /// Stops node `i`: memory and processes are gone, the disk stays.
    pub fn crash(&mut self, i: usize) {
        crate::return_check::track(self);
        self.returns.left(i);
        let node = &mut self.nodes[i];
        node.host.crash();
        node.detector_timer_at = None;
        node.held.clear();
        node.leaving = None;
        self.drop_elector(i);
    }
}
