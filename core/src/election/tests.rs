use starling_protocol::hlc::Timestamp;

use super::*;

const TTL: u64 = 2_000;
const DRIFT: u64 = 200;

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("valid")
}

/// An elector for node `node` restored from `memory` at `now`.
fn elector(node: &str, memory: Option<VoterMemory>, now: u64) -> Elector {
    Elector::new(
        ElectorConfig {
            node: id(node),
            max_drift_ms: DRIFT,
        },
        memory,
        now,
    )
}

fn lease_name() -> LeaseName {
    LeaseName::new("db").expect("valid")
}

fn quorum() -> Candidacy {
    Candidacy {
        ttl_ms: TTL,
        mode: LeaseMode::Quorum,
    }
}

/// A tiny fleet of electors on one clock with instant delivery, and a cut set.
struct Fleet {
    now: u64,
    nodes: BTreeMap<NodeId, Elector>,
    cut: BTreeSet<NodeId>,
    /// (node, held) transitions in order.
    log: Vec<(u64, NodeId, bool, u64)>,
}

impl Fleet {
    fn new(names: &[&str]) -> Self {
        let voters = Voters {
            version: 1,
            nodes: names.iter().map(|n| id(n)).collect(),
        };
        let nodes = names
            .iter()
            .map(|n| {
                let mut e = elector(n, Some(VoterMemory::default()), 0);
                e.set_voters(voters.clone());
                (id(n), e)
            })
            .collect();
        Fleet {
            now: 0,
            nodes,
            cut: BTreeSet::new(),
            log: Vec::new(),
        }
    }

    fn reachable(&self, a: &NodeId, b: &NodeId) -> bool {
        a == b || (self.cut.contains(a) == self.cut.contains(b))
    }

    fn pump(&mut self) {
        loop {
            let mut moved = false;
            let names: Vec<NodeId> = self.nodes.keys().cloned().collect();
            for n in &names {
                while let Some(out) = self.nodes.get_mut(n).and_then(|e| e.poll_output()) {
                    moved = true;
                    match out {
                        ElectionOutput::Send { to, message } => {
                            if self.reachable(n, &to)
                                && let Some(e) = self.nodes.get_mut(&to)
                            {
                                e.handle_message(self.now, n, message);
                            }
                        }
                        ElectionOutput::Holding { lease, .. } => {
                            if !self
                                .log
                                .iter()
                                .rev()
                                .find(|l| &l.1 == n)
                                .is_some_and(|l| l.2)
                            {
                                self.log
                                    .push((self.now, n.clone(), true, lease.fencing_token));
                            }
                        }
                        ElectionOutput::Lost { .. } => {
                            self.log.push((self.now, n.clone(), false, 0));
                        }
                        ElectionOutput::Persist(_) => {}
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// Runs to `until`, firing timeouts in order.
    fn run_to(&mut self, until: u64) {
        loop {
            self.pump();
            let next = self.nodes.values().filter_map(|e| e.poll_timeout()).min();
            match next {
                Some(t) if t <= until => {
                    self.now = t.max(self.now);
                    for e in self.nodes.values_mut() {
                        e.handle_timeout(self.now);
                    }
                }
                _ => break,
            }
        }
        self.now = until;
        self.pump();
    }

    fn holders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, e)| e.holds(&lease_name(), self.now).is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn want(&mut self, n: &str) {
        let now = self.now;
        if let Some(e) = self.nodes.get_mut(&id(n)) {
            e.want(now, &lease_name(), quorum());
        }
        self.pump();
    }
}

#[test]
fn a_majority_of_grants_elects_and_renewals_keep_the_token() {
    let mut f = Fleet::new(&["a", "b", "c"]);
    f.want("a");
    assert_eq!(f.holders(), vec![id("a")]);
    let token = f.nodes[&id("a")]
        .holds(&lease_name(), 0)
        .map(|l| l.fencing_token);
    assert_eq!(token, Some(1));
    f.want("b");
    f.run_to(20_000);
    assert_eq!(f.holders(), vec![id("a")], "renewals keep a; b is refused");
    assert_eq!(
        f.nodes[&id("a")]
            .holds(&lease_name(), f.now)
            .map(|l| l.fencing_token),
        Some(1)
    );
    assert!(
        f.nodes[&id("b")]
            .view(&lease_name())
            .waiting_for
            .contains("promised to a")
    );
}

#[test]
fn a_crashed_holder_is_replaced_after_its_grants_lapse_with_a_larger_token() {
    let mut f = Fleet::new(&["a", "b", "c"]);
    f.want("a");
    f.want("b");
    f.run_to(5_000);
    let crashed_at = f.now;
    let last_may_act = f.nodes[&id("a")].view(&lease_name()).may_act_until_ms;
    f.nodes.remove(&id("a"));
    f.run_to(crashed_at + TTL + 100);
    assert_eq!(f.holders(), vec![id("b")]);
    let (acquired_at, _, _, token) = f
        .log
        .iter()
        .find(|l| l.1 == id("b") && l.2)
        .cloned()
        .expect("b acquired");
    assert!(token > 1, "token {token}");
    assert!(
        Some(acquired_at) >= last_may_act,
        "b held before a stopped acting"
    );
}

#[test]
fn a_holder_cut_into_a_minority_steps_down_before_the_majority_elects() {
    let mut f = Fleet::new(&["a", "b", "c", "d", "e"]);
    f.want("a");
    f.want("b");
    f.run_to(3_000);
    f.cut = [id("a"), id("c")].into_iter().collect();
    f.run_to(3_000 + 3 * TTL);
    assert_eq!(f.holders(), vec![id("b")]);
    let a_lost = f
        .log
        .iter()
        .find(|l| l.1 == id("a") && !l.2)
        .map(|l| l.0)
        .expect("a stepped down");
    let b_won = f
        .log
        .iter()
        .find(|l| l.1 == id("b") && l.2)
        .map(|l| l.0)
        .expect("b elected");
    assert!(a_lost <= b_won, "a lost at {a_lost}, b won at {b_won}");
}

#[test]
fn an_even_split_elects_nobody() {
    let mut f = Fleet::new(&["a", "b", "c", "d"]);
    f.cut = [id("a"), id("b")].into_iter().collect();
    f.want("a");
    f.want("c");
    f.run_to(10_000);
    assert!(f.holders().is_empty());
    assert!(
        f.nodes[&id("a")]
            .view(&lease_name())
            .may_act_until_ms
            .is_none()
    );
}

#[test]
fn a_release_lets_the_next_candidate_in_within_a_quarter_ttl() {
    let mut f = Fleet::new(&["a", "b", "c"]);
    f.want("a");
    f.want("b");
    f.run_to(1_000);
    if let Some(e) = f.nodes.get_mut(&id("a")) {
        e.unwant(&lease_name());
    }
    f.pump();
    f.run_to(1_000 + TTL / 4 + 40);
    assert_eq!(f.holders(), vec![id("b")]);
}

#[test]
fn a_restarted_voter_grants_nothing_for_the_longest_grant_and_keeps_its_epochs() {
    let mut f = Fleet::new(&["a"]);
    f.want("a");
    let memory = match f.log.first() {
        Some((_, _, true, 1)) => f.nodes[&id("a")].memory.clone(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(memory.highest.get(&lease_name()).map(|h| h.0), Some(1));
    let mut restarted = elector("a", Some(memory), 1_000);
    restarted.set_voters(f.nodes[&id("a")].voters().clone());
    restarted.want(1_000, &lease_name(), quorum());
    assert!(restarted.holds(&lease_name(), 1_000).is_none());
    let mut t = 1_000;
    while restarted.holds(&lease_name(), t).is_none() && t < 10_000 {
        t = restarted.poll_timeout().expect("a timer");
        restarted.handle_timeout(t);
    }
    assert!(t >= 1_000 + TTL, "granted at {t}");
    assert_eq!(
        restarted.holds(&lease_name(), t).map(|l| l.fencing_token),
        Some(2)
    );
}

#[test]
fn a_request_counted_in_another_voter_set_is_refused() {
    let mut f = Fleet::new(&["a", "b", "c"]);
    for n in ["b", "c"] {
        if let Some(e) = f.nodes.get_mut(&id(n)) {
            e.set_voters(Voters {
                version: 2,
                nodes: e.voters().nodes.clone(),
            });
        }
    }
    f.want("a");
    f.run_to(500);
    assert!(f.holders().is_empty());
    assert!(
        f.nodes[&id("a")]
            .view(&lease_name())
            .waiting_for
            .contains("version")
    );
}

#[test]
fn local_mode_elects_on_each_side_and_the_higher_epoch_wins_on_heal() {
    let local = Candidacy {
        ttl_ms: TTL,
        mode: LeaseMode::Local,
    };
    let mut a = elector("a", Some(VoterMemory::default()), 0);
    let mut b = elector("b", Some(VoterMemory::default()), 0);
    a.want(0, &lease_name(), local);
    let first = a.holds(&lease_name(), 0).cloned().expect("a holds");
    b.handle_record(0, first.clone());
    b.want(0, &lease_name(), local);
    assert!(b.holds(&lease_name(), 0).is_none(), "b sees a's record");
    // Partitioned: b no longer hears a; a's record lapses on b's clock and b takes epoch 2.
    b.handle_timeout(first.expires_at_ms());
    let second = b
        .holds(&lease_name(), first.expires_at_ms())
        .cloned()
        .expect("b holds");
    assert_eq!(second.epoch, 2);
    // Heal: a hears b's higher epoch and steps down.
    a.handle_record(first.expires_at_ms(), second);
    assert!(a.holds(&lease_name(), first.expires_at_ms()).is_none());
    let lost =
        std::iter::from_fn(|| a.poll_output()).any(|o| matches!(o, ElectionOutput::Lost { .. }));
    assert!(lost);
}

#[test]
fn a_grant_for_someone_else_is_refused() {
    let mut e = elector("v", Some(VoterMemory::default()), 0);
    e.set_voters(Voters {
        version: 0,
        nodes: [id("v")].into_iter().collect(),
    });
    let forged = Lease::first(
        lease_name(),
        id("a"),
        Timestamp {
            physical_ms: 0,
            logical: 0,
            node: id("a"),
        },
        TTL,
    );
    let reply = e.answer(
        0,
        &id("mallory"),
        &GrantRequest {
            lease: forged,
            voters: 0,
        },
    );
    assert!(!reply.granted);
}

#[test]
fn a_refused_candidate_keeps_its_epoch_instead_of_burning_tokens() {
    let mut f = Fleet::new(&["a", "b", "c"]);
    f.want("a");
    f.want("b");
    f.run_to(10_000);
    assert_eq!(f.holders(), vec![id("a")]);
    // b was refused for 10 s, retrying; it then gets the lease right after a's epoch.
    if let Some(e) = f.nodes.get_mut(&id("a")) {
        e.unwant(&lease_name());
    }
    f.pump();
    f.run_to(11_000);
    assert_eq!(f.holders(), vec![id("b")]);
    assert_eq!(
        f.nodes[&id("b")]
            .holds(&lease_name(), f.now)
            .map(|l| l.fencing_token),
        Some(2)
    );
}

#[test]
fn a_voter_without_memory_grants_nothing_for_one_lease_duration() {
    let mut e = elector("v", None, 10_000);
    e.set_voters(Voters {
        version: 0,
        nodes: [id("v")].into_iter().collect(),
    });
    e.want(10_000, &lease_name(), quorum());
    assert!(e.holds(&lease_name(), 10_000).is_none());
    assert!(
        e.view(&lease_name())
            .waiting_for
            .contains("without its voting memory")
    );
    let mut t = 10_000;
    while e.holds(&lease_name(), t).is_none() && t < 20_000 {
        t = e.poll_timeout().expect("a timer");
        e.handle_timeout(t);
    }
    assert!(t >= 10_000 + TTL + DRIFT, "granted at {t}");
}
