//! Applying a scenario's faults to the world.
//!
//! Timed faults (rolling reboots, churn) are expanded into single steps at the start; node
//! selectors are resolved when a step fires, so `holder:web` means "whoever runs web then".

use std::collections::BTreeSet;

use starling_protocol::NodeId;

use crate::host::{Fleet, Power};
use crate::scenario::{FaultKind, Selector};
use crate::world::{Event, World};

/// One fault action at one time: a scenario fault as written, or one step of an expanded
/// timed fault (a rolling reboot becomes crashes and restarts; churn becomes joins and leaves).
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Fault(FaultKind),
    Join,
    Leave,
}

/// The node an operator's write goes to: the first selected node that is up (none: noted).
pub(crate) fn writer(world: &mut impl Fleet, selector: &Selector) -> Option<usize> {
    let up = resolve(world, selector)
        .into_iter()
        .find(|i| world.power(*i) == Power::Up);
    if up.is_none() {
        world.note("write: no selected node is up; nothing written".into());
    }
    up
}

/// Expands the scenario's faults into timed steps.
pub(crate) fn expand(world: &mut impl Fleet) -> Vec<(u64, Step)> {
    let mut steps = Vec::new();
    let mut churned = 0u32;
    for fault in world.scenario().faults.clone() {
        let at = fault.at_ms;
        match &fault.kind {
            FaultKind::RollingReboot {
                nodes,
                downtime_ms,
                gap_ms,
            } => {
                let order = resolve(world, nodes);
                let mut t = at;
                for i in order {
                    let one = vec![world.id(i).to_string()];
                    steps.push((t, Step::Fault(FaultKind::Crash(one.clone()))));
                    steps.push((t + downtime_ms, Step::Fault(FaultKind::Restart(one))));
                    t += downtime_ms + gap_ms;
                }
            }
            FaultKind::Churn {
                per_minute,
                duration_ms,
            } => {
                let every = 60_000 / u64::from((*per_minute).max(1));
                let mut t = at;
                while t < at + duration_ms {
                    steps.push((t, Step::Leave));
                    steps.push((t + every / 2, Step::Join));
                    t += every;
                }
            }
            FaultKind::SpecChurn {
                node,
                per_minute,
                duration_ms,
                lifetime_ms,
            } => {
                let every = 60_000 / u64::from((*per_minute).max(1));
                let mut t = at;
                while t < at + duration_ms {
                    churned += 1;
                    if let Some((name, spec)) = crate::deletes::churn_spec(churned) {
                        let node = node.clone();
                        let write = FaultKind::Write {
                            node: node.clone(),
                            spec: Box::new(spec),
                        };
                        steps.push((t, Step::Fault(write)));
                        let delete = FaultKind::Delete { node, name };
                        steps.push((t + lifetime_ms, Step::Fault(delete)));
                    }
                    t += every;
                }
            }
            kind => steps.push((at, Step::Fault(kind.clone()))),
        }
    }
    steps.sort_by_key(|(t, _)| *t);
    steps
}

/// When the last step's effect is over (a pause, flap or agent restart lasts beyond its
/// start; a planned agent restart may first take the agent's whole departure bound).
pub(crate) fn last_end_ms(steps: &[(u64, Step)]) -> u64 {
    steps
        .iter()
        .map(|(at, step)| match step {
            Step::Fault(
                FaultKind::Pause { duration_ms, .. } | FaultKind::Flap { duration_ms, .. },
            ) => at + duration_ms,
            Step::Fault(FaultKind::AgentRestart {
                downtime_ms,
                planned,
                ..
            }) => {
                let leaving_ms = if *planned {
                    crate::agent::LEAVE_BOUND_MS
                } else {
                    0
                };
                at + leaving_ms + downtime_ms
            }
            _ => *at,
        })
        .max()
        .unwrap_or(0)
}

/// Resolves a selector against the world now. Unknown names resolve to nothing (and are
/// noted in the trace), so a typo shows in the report instead of stopping the run.
pub(crate) fn resolve(world: &mut impl Fleet, selector: &Selector) -> Vec<usize> {
    let mut out = BTreeSet::new();
    let present: Vec<usize> = (0..world.node_count())
        .filter(|i| world.power(*i) != Power::Gone)
        .collect();
    for item in selector {
        if item == "all" {
            out.extend(present.iter().copied());
        } else if let Some(site) = item.strip_prefix("site=") {
            out.extend(
                present
                    .iter()
                    .copied()
                    .filter(|i| world.site(*i) == Some(site)),
            );
        } else if let Some(name) = item.strip_prefix("holder:") {
            out.extend(present.iter().copied().filter(|i| world.runs(*i, name)));
        } else if let Some(count) = item.strip_prefix("random:") {
            let n = match count.strip_suffix('%') {
                Some(p) => p
                    .parse::<usize>()
                    .map(|p| present.len() * p / 100)
                    .unwrap_or(0),
                None => count.parse::<usize>().unwrap_or(0),
            };
            // Drawn among nodes that are up, so "random:30%" crashes 30% of a healthy fleet.
            let mut pool: Vec<usize> = present
                .iter()
                .copied()
                .filter(|i| world.power(*i) == Power::Up)
                .collect();
            for _ in 0..n.min(pool.len()) {
                let k = world.rng().range(0, pool.len() as u64 - 1) as usize;
                out.insert(pool.swap_remove(k));
            }
        } else if let Some(i) = NodeId::new(item.clone())
            .ok()
            .and_then(|id| world.index_of(&id))
        {
            out.insert(i);
        } else {
            world.note(format!("selector {item:?} matches no node"));
        }
    }
    out.into_iter().collect()
}

pub(crate) fn apply(world: &mut World, k: usize) {
    let step = world.expanded_faults[k].1.clone();
    world.note(format!("fault: {step:?}"));
    world.checker.fault_seen(world.now);
    crate::return_check::fault(world);
    match step {
        Step::Fault(FaultKind::Crash(s)) => {
            for i in resolve(world, &s) {
                world.crash(i);
            }
        }
        Step::Fault(FaultKind::Restart(s)) => {
            for i in resolve(world, &s) {
                if world.nodes[i].host.power == Power::Crashed {
                    world.boot(i);
                }
            }
        }
        Step::Fault(FaultKind::AgentRestart {
            nodes,
            downtime_ms,
            planned,
        }) => {
            for i in resolve(world, &nodes) {
                world.agent_restart(i, downtime_ms, planned);
            }
        }
        Step::Fault(FaultKind::DiskLoss(s)) => {
            for i in resolve(world, &s) {
                world.crash(i);
                world.nodes[i].host.assignment.clear();
                world.nodes[i].disk = Default::default();
                world.nodes[i].disk.voter = None;
            }
        }
        Step::Fault(FaultKind::Partition(groups)) => {
            let mut sides: Vec<Vec<usize>> = groups.iter().map(|g| resolve(world, g)).collect();
            let placed: BTreeSet<usize> = sides.iter().flatten().copied().collect();
            sides.push(
                (0..world.nodes.len())
                    .filter(|i| !placed.contains(i))
                    .collect(),
            );
            for (x, side) in sides.iter().enumerate() {
                for (y, other) in sides.iter().enumerate() {
                    if x != y {
                        for &a in side {
                            for &b in other {
                                world.blocked.insert((a, b));
                            }
                        }
                    }
                }
            }
        }
        Step::Fault(FaultKind::Cut { from, to }) => {
            let (from, to) = (resolve(world, &from), resolve(world, &to));
            for &a in &from {
                for &b in &to {
                    world.blocked.insert((a, b));
                }
            }
        }
        Step::Fault(FaultKind::Heal) => world.blocked.clear(),
        Step::Fault(FaultKind::Skew { nodes, skew_ms }) => {
            for i in resolve(world, &nodes) {
                world.nodes[i].host.skew_ms += skew_ms;
                world.skew_changed(i);
            }
        }
        Step::Fault(FaultKind::Pause { nodes, duration_ms }) => {
            for i in resolve(world, &nodes) {
                if world.nodes[i].host.power == Power::Up {
                    world.nodes[i].host.power = Power::Paused {
                        until_ms: world.now + duration_ms,
                    };
                    world.schedule(world.now + duration_ms, Event::Resume(i));
                }
            }
        }
        Step::Fault(FaultKind::Flap {
            a,
            b,
            period_ms,
            duration_ms,
        }) => {
            let (a, b) = (resolve(world, &a), resolve(world, &b));
            let mut t = world.now;
            let mut down = true;
            while t < world.now + duration_ms {
                world.schedule(
                    t,
                    Event::LinkToggle {
                        a: a.clone(),
                        b: b.clone(),
                        down,
                    },
                );
                down = !down;
                t += period_ms;
            }
            world.schedule(
                world.now + duration_ms,
                Event::LinkToggle { a, b, down: false },
            );
        }
        Step::Join => {
            let i = world.add_node();
            let members: BTreeSet<usize> = (0..world.nodes.len())
                .filter(|m| world.nodes[*m].host.power != Power::Gone)
                .collect();
            world.nodes[i].known = members;
            world.boot(i);
            for n in 0..world.nodes.len() {
                if n != i && world.nodes[n].host.power != Power::Gone {
                    world.nodes[n].known.insert(i);
                    world.update_detector_members(n);
                }
            }
        }
        Step::Leave => {
            // The oldest present node leaves for good (a decommission): its peers forget it.
            let leaving = (0..world.nodes.len()).find(|i| world.nodes[*i].host.power == Power::Up);
            if let Some(i) = leaving {
                world.crash(i);
                world.nodes[i].host.power = Power::Gone;
                for n in 0..world.nodes.len() {
                    world.nodes[n].known.remove(&i);
                    world.update_detector_members(n);
                }
            }
        }
        // Expanded into crashes/restarts and joins/leaves by `expand`; never a step of its own.
        Step::Fault(FaultKind::RollingReboot { .. } | FaultKind::Churn { .. }) => {}
        Step::Fault(FaultKind::Write { node, spec }) => {
            if let Some(i) = writer(world, &node) {
                world.write(i, *spec);
            }
        }
        Step::Fault(FaultKind::Delete { node, name }) => {
            if let Some(i) = writer(world, &node) {
                world.delete(i, name);
            }
        }
        Step::Fault(FaultKind::SpecChurn { .. }) => {}
        Step::Fault(FaultKind::WriteSecret { node, name, value }) => {
            if let Some(i) = writer(world, &node) {
                world.write_secret(i, name, &value);
            }
        }
    }
}

pub(crate) fn toggle_links(world: &mut World, a: &[usize], b: &[usize], down: bool) {
    for &x in a {
        for &y in b {
            for pair in [(x, y), (y, x)] {
                if down {
                    world.blocked.insert(pair);
                } else {
                    world.blocked.remove(&pair);
                }
            }
        }
    }
}
