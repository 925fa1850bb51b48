//! Detectors wired together over an in-memory network with cuttable links, in virtual time.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

fn id(n: usize) -> NodeId {
    NodeId::new(format!("n{n:02}")).expect("valid id")
}

struct Net {
    nodes: BTreeMap<NodeId, Detector>,
    /// Nodes that are down (answer nothing, send nothing).
    dead: BTreeSet<NodeId>,
    /// Directed links that drop messages.
    cut: BTreeSet<(NodeId, NodeId)>,
    now: u64,
    messages: u64,
}

impl Net {
    fn new(n: usize) -> Self {
        let members: BTreeSet<NodeId> = (0..n).map(id).collect();
        let mut nodes = BTreeMap::new();
        for m in &members {
            let mut d = Detector::new(DetectorConfig::default(), m.clone(), 1);
            d.handle_members(0, members.clone());
            nodes.insert(m.clone(), d);
        }
        Net {
            nodes,
            dead: BTreeSet::new(),
            cut: BTreeSet::new(),
            now: 0,
            messages: 0,
        }
    }

    /// Delivers every queued message (instantly) and gossips every verdict to everyone alive.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
            for from in &ids {
                let mut out = Vec::new();
                let mut verdicts = Vec::new();
                let d = self.nodes.get_mut(from).expect("node");
                while let Some(t) = d.poll_transmit() {
                    out.push(t);
                }
                while let Some(v) = d.poll_verdict() {
                    verdicts.push(v);
                }
                if self.dead.contains(from) {
                    continue;
                }
                for (to, msg) in out {
                    moved = true;
                    self.messages += 1;
                    if self.dead.contains(&to) || self.cut.contains(&(from.clone(), to.clone())) {
                        continue;
                    }
                    let now = self.now;
                    self.nodes
                        .get_mut(&to)
                        .expect("node")
                        .handle_message(now, from, &msg);
                }
                for v in verdicts {
                    moved = true;
                    for to in &ids {
                        if !self.dead.contains(to) && to != from {
                            self.nodes
                                .get_mut(to)
                                .expect("node")
                                .handle_verdict(v.clone());
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("messages did not quiesce");
    }

    fn run_until(&mut self, until: u64) {
        loop {
            let next = self
                .nodes
                .iter()
                .filter(|(n, _)| !self.dead.contains(*n))
                .filter_map(|(_, d)| d.poll_timeout())
                .min();
            match next {
                Some(t) if t <= until => {
                    self.now = t.max(self.now);
                    let now = self.now;
                    let alive: Vec<NodeId> = self
                        .nodes
                        .keys()
                        .filter(|n| !self.dead.contains(*n))
                        .cloned()
                        .collect();
                    for (n, d) in self.nodes.iter_mut() {
                        if !self.dead.contains(n) {
                            d.handle_timeout(now);
                            // Calm gossip: state from every reachable live node stays fresh.
                            for m in alive.iter().filter(|m| {
                                *m != n && !self.cut.contains(&((*m).clone(), n.clone()))
                            }) {
                                d.handle_heard(now, m);
                            }
                        }
                    }
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = until;
    }

    fn seen_by_all(&self, node: &NodeId) -> BTreeSet<Liveness> {
        self.nodes
            .iter()
            .filter(|(n, _)| !self.dead.contains(*n) && *n != node)
            .map(|(_, d)| d.liveness(node, self.now))
            .collect()
    }
}

#[test]
fn every_node_has_exactly_k_watchers_and_they_are_stable() {
    let members: Vec<NodeId> = (0..20).map(id).collect();
    for m in &members {
        let w = watchers_of(m, &members, 3);
        assert_eq!(w.len(), 3);
        assert!(!w.contains(m));
    }
    // Removing a node changes only the watcher sets it was part of.
    let fewer: Vec<NodeId> = members.iter().filter(|m| **m != id(7)).cloned().collect();
    for m in fewer.iter() {
        let before = watchers_of(m, &members, 3);
        let after = watchers_of(m, &fewer, 3);
        if !before.contains(&id(7)) {
            assert_eq!(before, after);
        }
    }
}

#[test]
fn a_dead_node_is_suspected_then_declared_down_by_everyone() {
    let mut net = Net::new(10);
    net.run_until(2_000);
    assert_eq!(net.seen_by_all(&id(4)), [Liveness::Alive].into());
    net.dead.insert(id(4));
    let died = net.now;
    net.run_until(died + 700);
    assert!(
        net.seen_by_all(&id(4)).contains(&Liveness::Suspect),
        "suspected after one failed probe round"
    );
    assert!(
        !net.seen_by_all(&id(4)).contains(&Liveness::Down),
        "not down yet"
    );
    net.run_until(died + 2_500);
    assert_eq!(
        net.seen_by_all(&id(4)),
        [Liveness::Down].into(),
        "declared down everywhere"
    );
    assert_eq!(
        net.seen_by_all(&id(3)),
        [Liveness::Alive].into(),
        "the others stay alive"
    );
}

#[test]
fn a_single_bad_link_is_bridged_by_indirect_probes() {
    let mut net = Net::new(8);
    net.run_until(1_000);
    let target = id(5);
    let watcher = watchers_of(&target, net.nodes.keys(), 3)[0].clone();
    net.cut.insert((watcher.clone(), target.clone()));
    net.cut.insert((target.clone(), watcher.clone()));
    net.run_until(20_000);
    assert_eq!(
        net.nodes[&watcher].liveness(&target, net.now),
        Liveness::Alive,
        "helpers vouch for it"
    );
    assert_eq!(net.seen_by_all(&target), [Liveness::Alive].into());
}

#[test]
fn probing_cost_per_node_does_not_grow_with_the_fleet() {
    let per_node_per_second = |n: usize| {
        let mut net = Net::new(n);
        net.run_until(10_000);
        net.messages as f64 / n as f64 / 10.0
    };
    let (small, large) = (per_node_per_second(10), per_node_per_second(60));
    assert!(
        large <= small * 1.2,
        "{small} vs {large} messages per node per second"
    );
}

#[test]
fn a_suspected_node_refutes_with_a_higher_incarnation() {
    let mut net = Net::new(6);
    net.run_until(1_000);
    let target = id(2);
    let watcher = watchers_of(&target, net.nodes.keys(), 3)[0].clone();
    let stale = Verdict {
        node: target.clone(),
        state: Liveness::Suspect,
        incarnation: 1,
        watcher: watcher.clone(),
    };
    let bystander = net
        .nodes
        .keys()
        .find(|n| **n != target && !watchers_of(&target, net.nodes.keys(), 3).contains(n))
        .cloned()
        .expect("a bystander");
    net.nodes
        .get_mut(&bystander)
        .expect("node")
        .handle_verdict(stale.clone());
    assert_eq!(
        net.nodes[&bystander].liveness(&target, net.now),
        Liveness::Suspect
    );
    net.nodes
        .get_mut(&target)
        .expect("node")
        .handle_verdict(stale);
    let incarnation = net.nodes[&target].incarnation();
    assert_eq!(incarnation, 2);
    net.nodes
        .get_mut(&bystander)
        .expect("node")
        .handle_incarnation(&target, incarnation);
    assert_eq!(
        net.nodes[&bystander].liveness(&target, net.now),
        Liveness::Alive,
        "refuted"
    );
}

#[test]
fn a_side_that_hears_nothing_of_a_node_counts_it_down_after_the_stale_time() {
    let mut net = Net::new(6);
    net.run_until(1_000);
    // Cut n00 off from everyone in both directions: no probe and no verdict reaches it.
    let lone = id(0);
    for other in (1..6).map(id) {
        net.cut.insert((lone.clone(), other.clone()));
        net.cut.insert((other.clone(), lone.clone()));
    }
    net.run_until(4_000);
    let views: Vec<Liveness> = (1..6)
        .map(|n| net.nodes[&lone].liveness(&id(n), net.now))
        .collect();
    assert!(
        views.contains(&Liveness::Alive),
        "before the stale time, unwatched nodes still look alive: {views:?}"
    );
    net.run_until(8_000);
    let views: Vec<Liveness> = (1..6)
        .map(|n| net.nodes[&lone].liveness(&id(n), net.now))
        .collect();
    assert!(views.iter().all(|l| *l == Liveness::Down), "{views:?}");
}

#[test]
fn a_dead_node_whose_new_incarnation_arrives_late_is_still_declared_down() {
    // The node restarted (a higher incarnation) and died again before its watchers heard of
    // the new incarnation; the others heard first. The watchers' verdicts at the old
    // incarnation count for nobody who knows the new one, so they must judge again.
    let mut net = Net::new(10);
    net.run_until(2_000);
    net.dead.insert(id(4));
    let died = net.now;
    net.run_until(died + 2_500);
    assert_eq!(net.seen_by_all(&id(4)), [Liveness::Down].into());
    for d in net.nodes.values_mut() {
        d.handle_incarnation(&id(4), 7);
    }
    assert!(
        !net.seen_by_all(&id(4)).contains(&Liveness::Down),
        "the old verdicts are refuted by the new incarnation"
    );
    let learned = net.now;
    net.run_until(learned + 2_500);
    assert_eq!(
        net.seen_by_all(&id(4)),
        [Liveness::Down].into(),
        "judged again at the new incarnation and declared down everywhere"
    );
}

#[test]
fn a_node_restarting_on_purpose_is_suspect_not_down_until_its_deadline() {
    let mut net = Net::new(10);
    net.run_until(2_000);
    let back_by = net.now + 5_000;
    for d in net.nodes.values_mut() {
        d.handle_departure(
            &id(4),
            Departure::Restarting {
                back_by_ms: back_by,
            },
        );
    }
    net.dead.insert(id(4));
    net.run_until(back_by - 100);
    assert_eq!(
        net.seen_by_all(&id(4)),
        [Liveness::Suspect].into(),
        "held as suspect while it restarts"
    );
    net.run_until(back_by + 100);
    assert_eq!(
        net.seen_by_all(&id(4)),
        [Liveness::Down].into(),
        "down once the deadline passed without it"
    );
}

#[test]
fn a_drain_or_a_return_lifts_the_hold() {
    let mut net = Net::new(10);
    net.run_until(2_000);
    let back_by = net.now + 60_000;
    for d in net.nodes.values_mut() {
        d.handle_departure(
            &id(4),
            Departure::Restarting {
                back_by_ms: back_by,
            },
        );
        d.handle_departure(&id(4), Departure::Staying);
    }
    net.dead.insert(id(4));
    let died = net.now;
    net.run_until(died + 2_500);
    assert_eq!(net.seen_by_all(&id(4)), [Liveness::Down].into());
}

/// When `watcher`'s own probe state of `target` first turns `Down` (checked every 50 ms).
fn first_down(net: &mut Net, watcher: &NodeId, target: &NodeId, until: u64) -> Option<u64> {
    while net.now < until {
        let next = net.now + 50;
        net.run_until(next);
        if net.nodes[watcher].probes.get(target).and_then(|p| p.state) == Some(Liveness::Down) {
            return Some(net.now);
        }
    }
    None
}

#[test]
fn a_watcher_alone_in_failing_waits_longer_than_confirmed_ones() {
    // Dead node: every watcher fails at once, they confirm each other, and each declares it
    // down after `down_after_ms` as before.
    let mut net = Net::new(8);
    net.run_until(1_000);
    let target = id(5);
    let watchers = watchers_of(&target, net.nodes.keys(), 3);
    net.dead.insert(target.clone());
    let died = net.now;
    let down_at = first_down(&mut net, &watchers[0], &target, died + 10_000).expect("down");
    let confirmed = down_at - died;
    // As fast as before confirmations shortened anything (`a_dead_node_is_..._by_everyone`).
    assert!(confirmed <= 2_500, "a confirmed death took {confirmed} ms");

    // A live node that one watcher alone cannot reach (its every outgoing link is cut, so its
    // helpers cannot vouch either): no other watcher confirms, so it waits three times longer.
    let mut net = Net::new(8);
    net.run_until(1_000);
    let lone = watchers[0].clone();
    for other in (0..8).map(id).filter(|n| *n != lone) {
        net.cut.insert((lone.clone(), other));
    }
    let cut_at = net.now;
    let down_at = first_down(&mut net, &lone, &target, cut_at + 10_000).expect("down");
    let alone = down_at - cut_at;
    assert!(alone >= 3_000, "a lone watcher declared down after {alone} ms");
    assert!(alone > confirmed + 1_000, "alone {alone} ms, confirmed {confirmed} ms");
    // One watcher's verdict is no majority: nobody else takes it for down.
    for (n, d) in &net.nodes {
        if *n != lone {
            assert_ne!(d.liveness(&target, net.now), Liveness::Down, "seen by {n}");
        }
    }
}

#[test]
fn a_suspected_node_refutes_and_stretches_its_own_probing_until_answers_return() {
    let mut net = Net::new(6);
    net.run_until(1_000);
    let me = id(2);
    let incarnation = net.nodes[&me].incarnation();
    // Everyone suspects it: a verdict at its incarnation arrives.
    let watcher = watchers_of(&me, net.nodes.keys(), 3)[0].clone();
    net.nodes.get_mut(&me).expect("node").handle_verdict(Verdict {
        node: me.clone(),
        state: Liveness::Suspect,
        incarnation,
        watcher,
    });
    let d = &net.nodes[&me];
    assert_eq!(d.incarnation(), incarnation + 1, "refuted");
    assert_eq!(d.health_penalty(), 1);
    // Stretched probing: its next probe waits twice the direct timeout.
    assert_eq!(d.scaled(100), 200);
    // Answered probes bring it back to full speed.
    net.run_until(3_000);
    assert_eq!(net.nodes[&me].health_penalty(), 0);
}

#[test]
fn the_health_penalty_is_bounded() {
    let mut d = Detector::new(DetectorConfig::default(), id(0), 1);
    d.handle_members(0, (0..4).map(id).collect());
    for _ in 0..20 {
        let inc = d.incarnation();
        d.handle_verdict(Verdict {
            node: id(0),
            state: Liveness::Down,
            incarnation: inc,
            watcher: id(1),
        });
    }
    assert_eq!(d.health_penalty(), DetectorConfig::default().max_health_penalty);
    assert_eq!(d.incarnation(), 21);
}
