//! Scripted tests of the node core: hand-fed events, a hand-advanced clock, a fake runtime.

use std::collections::{BTreeMap, BTreeSet};

use starling_protocol::desired::{DesiredState, Revision};
use starling_protocol::hlc::Timestamp;
use starling_protocol::placement::{Capacity, Departure, FleetView, Liveness, NodeView, ReplicaId};
use starling_protocol::quantity::{Bytes, Millicores};
use starling_protocol::spec::{RuntimeKind, WorkloadSpec};
use starling_protocol::status::ReplicaState;
use starling_protocol::{NodeId, WorkloadName};

use super::*;

fn id(n: &str) -> NodeId {
    NodeId::new(n).expect("valid id")
}

fn node_view(n: &str, liveness: Liveness) -> NodeView {
    NodeView {
        id: id(n),
        labels: BTreeMap::new(),
        arch: "x86_64".into(),
        runtimes: [RuntimeKind::Process].into(),
        capacity: Capacity {
            cpu: Millicores(64_000),
            memory: Bytes(64 << 30),
        },
        weight: 1,
        liveness,
        departure: Default::default(),
    }
}

fn view(nodes: &[(&str, Liveness)]) -> FleetView {
    FleetView {
        nodes: nodes
            .iter()
            .map(|(n, l)| (id(n), node_view(n, *l)))
            .collect(),
    }
}

fn spec(name: &str, replicas: u32, extra: &str) -> WorkloadSpec {
    WorkloadSpec::from_toml(&format!(
        "name = \"{name}\"\ncommand = \"sleep\"\nreplicas = {replicas}\n{extra}"
    ))
    .expect("valid spec")
}

fn desired_of(specs: &[WorkloadSpec]) -> DesiredState {
    let mut d = DesiredState::new();
    for (i, s) in specs.iter().enumerate() {
        d.write(
            s.name.clone(),
            Some(Revision::first(s.clone())),
            Timestamp {
                physical_ms: 1 + i as u64,
                logical: 0,
                node: id("n1"),
            },
        );
    }
    d
}

fn replica(w: &str, index: u32) -> ReplicaId {
    ReplicaId {
        workload: WorkloadName::new(w).expect("valid"),
        index,
    }
}

fn config(n: &str) -> CoreConfig {
    CoreConfig {
        node: id(n),
        settle_ms: 1_000,
        move_hold_ms: 10_000,
        handover_timeout_ms: 120_000,
        instance_base: 1,
        scale: crate::scale::ScaleConfig::default(),
    }
}

/// A single core with a fake runtime that records starts and stops.
struct Single {
    core: NodeCore,
    now: u64,
    running: BTreeMap<ReplicaId, u64>,
    starts: Vec<(u64, ReplicaId, u64)>,
    stops: Vec<(ReplicaId, StopReason)>,
    events: Vec<CoreEvent>,
    /// (lease, campaign or withdraw) in order.
    campaigns: Vec<(WorkloadName, bool)>,
    rollbacks: Vec<(WorkloadName, u64)>,
    scales: Vec<(WorkloadName, u32, u32)>,
    /// Every instance the runtime runs (a start-first move runs two of one replica).
    live: std::collections::BTreeSet<(ReplicaId, u64)>,
    /// Most instances live at once since the last reset.
    peak: usize,
}

impl Single {
    fn new(specs: &[WorkloadSpec]) -> Self {
        let mut s = Single {
            core: NodeCore::new(config("n1"), Restored::default()),
            now: 0,
            running: BTreeMap::new(),
            starts: Vec::new(),
            stops: Vec::new(),
            events: Vec::new(),
            campaigns: Vec::new(),
            rollbacks: Vec::new(),
            scales: Vec::new(),
            live: Default::default(),
            peak: 0,
        };
        s.core.handle_view(0, view(&[("n1", Liveness::Alive)]));
        s.core.handle_desired(0, desired_of(specs));
        s.drain();
        s
    }

    /// Applies actions: starts succeed at once unless `fail_start`; stops exit at once.
    fn drain(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Start {
                    replica, instance, ..
                } => {
                    self.starts.push((self.now, replica.clone(), instance));
                    self.running.insert(replica.clone(), instance);
                    self.live.insert((replica.clone(), instance));
                    self.peak = self.peak.max(self.live.len());
                    self.core
                        .handle_runtime(self.now, RuntimeEvent::Started { replica, instance });
                }
                Action::Stop {
                    replica,
                    instance,
                    reason,
                } => {
                    self.stops.push((replica.clone(), reason));
                    if self.running.get(&replica) == Some(&instance) {
                        self.running.remove(&replica);
                    }
                    self.live.remove(&(replica.clone(), instance));
                    self.core.handle_runtime(
                        self.now,
                        RuntimeEvent::Exited {
                            replica,
                            instance,
                            code: None,
                            log_tail: vec![],
                        },
                    );
                }
                Action::Event(e) => self.events.push(e),
                Action::Campaign { lease, .. } => self.campaigns.push((lease, true)),
                Action::Withdraw { lease } => self.campaigns.push((lease, false)),
                Action::RollBack {
                    workload, revision, ..
                } => self.rollbacks.push((workload, revision)),
                Action::Scale {
                    workload, from, to, ..
                } => self.scales.push((workload, from, to)),
                Action::Publish(_) | Action::PersistAssignment(_) => {}
            }
        }
    }

    /// Runs timers until `until`.
    fn advance(&mut self, until: u64) {
        while let Some(t) = self.core.poll_timeout().filter(|t| *t <= until) {
            self.now = t.max(self.now);
            self.core.handle_timeout(self.now);
            self.drain();
        }
        self.now = until;
        self.core.handle_timeout(until);
        self.drain();
    }

    fn exit(&mut self, r: &ReplicaId, code: i32) {
        let instance = self.running.remove(r).expect("running");
        self.live.remove(&(r.clone(), instance));
        self.core.handle_runtime(
            self.now,
            RuntimeEvent::Exited {
                replica: r.clone(),
                instance,
                code: Some(code),
                log_tail: vec!["boom".into()],
            },
        );
        self.drain();
    }

    fn state(&self, r: &ReplicaId) -> Option<ReplicaState> {
        self.core.status().replicas.get(r).map(|s| s.state)
    }
}

#[test]
fn a_replica_starts_only_after_the_settle_interval() {
    let mut s = Single::new(&[spec("web", 1, "")]);
    assert!(s.starts.is_empty(), "claimed, not started");
    assert_eq!(s.state(&replica("web", 0)), Some(ReplicaState::Claimed));
    assert_eq!(s.core.poll_timeout(), Some(1_000));
    s.advance(999);
    assert!(s.starts.is_empty());
    s.advance(1_000);
    assert_eq!(s.starts.len(), 1);
    assert_eq!(s.state(&replica("web", 0)), Some(ReplicaState::Running));
}

#[test]
fn crash_restarts_with_exponential_back_off_and_resets_after_a_stable_run() {
    let mut s = Single::new(&[spec(
        "web",
        1,
        "[restart]\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\nreset_after = \"60s\"",
    )]);
    s.advance(1_000);
    let r = replica("web", 0);
    let mut gaps = Vec::new();
    for _ in 0..6 {
        let exited_at = s.now;
        s.exit(&r, 1);
        assert_eq!(
            s.state(&r),
            Some(if gaps.len() >= 4 {
                ReplicaState::CrashLoop
            } else {
                ReplicaState::BackingOff
            })
        );
        let next = s.core.poll_timeout().expect("a restart is scheduled");
        gaps.push(next - exited_at);
        s.advance(next);
        assert_eq!(s.state(&r), Some(ReplicaState::Running));
    }
    assert_eq!(
        gaps,
        vec![100, 200, 400, 800, 1_000, 1_000],
        "doubling, capped at backoff_max"
    );
    s.advance(s.now + 60_000);
    let exited_at = s.now;
    s.exit(&r, 1);
    assert_eq!(
        s.core.poll_timeout(),
        Some(exited_at + 100),
        "a stable run resets the back-off"
    );
    assert_eq!(s.core.status().replicas[&r].restarts, 6);
}

#[test]
fn on_failure_gives_up_after_max_retries_and_reports_crash_loop() {
    let mut s = Single::new(&[spec(
        "job",
        1,
        "[restart]\npolicy = \"on-failure\"\nmax_retries = 2",
    )]);
    s.advance(1_000);
    let r = replica("job", 0);
    for _ in 0..2 {
        s.exit(&r, 7);
        let t = s.core.poll_timeout().expect("retry scheduled");
        s.advance(t);
    }
    s.exit(&r, 7);
    let status = s.core.status().replicas[&r].clone();
    assert_eq!(status.state, ReplicaState::CrashLoop);
    assert_eq!(status.last_exit_code, Some(7));
    assert!(
        matches!(&s.events[..], [CoreEvent::CrashLoop { exit_code: Some(7), gave_up: true, log_tail, .. }] if log_tail == &vec!["boom".to_string()])
    );
    let starts = s.starts.len();
    s.advance(s.now + 600_000);
    assert_eq!(s.starts.len(), starts, "no restart after giving up");
}

#[test]
fn on_failure_does_not_restart_after_success_and_never_does_not_restart() {
    let mut s = Single::new(&[
        spec("job", 1, "[restart]\npolicy = \"on-failure\""),
        spec("once", 1, "[restart]\npolicy = \"never\""),
    ]);
    s.advance(1_000);
    s.exit(&replica("job", 0), 0);
    s.exit(&replica("once", 0), 1);
    s.advance(100_000);
    assert_eq!(s.starts.len(), 2);
    assert_eq!(s.state(&replica("job", 0)), Some(ReplicaState::Exited));
    assert_eq!(s.state(&replica("once", 0)), Some(ReplicaState::Exited));
}

#[test]
fn always_reports_crash_loop_but_keeps_restarting() {
    let mut s = Single::new(&[spec("web", 1, "")]);
    s.advance(1_000);
    let r = replica("web", 0);
    for _ in 0..5 {
        s.exit(&r, 1);
        let t = s.core.poll_timeout().expect("retry");
        s.advance(t);
    }
    assert_eq!(
        s.events
            .iter()
            .filter(|e| matches!(e, CoreEvent::CrashLoop { gave_up: false, .. }))
            .count(),
        1
    );
    assert_eq!(s.starts.len(), 6);
}

#[test]
fn a_start_failure_is_reported_and_retried_with_back_off() {
    let mut s = Single::new(&[spec("web", 1, "")]);
    s.advance(1_000);
    let r = replica("web", 0);
    let instance = s.running.remove(&r).expect("running");
    // Pretend the instance was never started: the runtime reports why.
    s.core.handle_runtime(
        s.now,
        RuntimeEvent::StartFailed {
            replica: r.clone(),
            instance,
            reason: "command not found: sleep".into(),
        },
    );
    s.drain();
    let status = s.core.status().replicas[&r].clone();
    assert_eq!(status.state, ReplicaState::BackingOff);
    assert_eq!(status.reason.as_deref(), Some("command not found: sleep"));
}

#[test]
fn stale_runtime_events_are_ignored() {
    let mut s = Single::new(&[spec("web", 1, "")]);
    s.advance(1_000);
    let r = replica("web", 0);
    s.core.handle_runtime(
        s.now,
        RuntimeEvent::Exited {
            replica: r.clone(),
            instance: 999,
            code: Some(1),
            log_tail: vec![],
        },
    );
    s.drain();
    assert_eq!(s.state(&r), Some(ReplicaState::Running));
}

#[test]
fn failing_health_checks_restart_the_replica_and_it_is_not_available_meanwhile() {
    let mut s = Single::new(&[spec(
        "web",
        1,
        "[health]\nexec = [\"check\"]\nfailure_threshold = 2",
    )]);
    s.advance(1_000);
    let r = replica("web", 0);
    let instance = s.running[&r];
    assert!(
        !s.core.status().replicas[&r].healthy,
        "unhealthy until the first probe passes"
    );
    s.core.handle_runtime(
        s.now,
        RuntimeEvent::Health {
            replica: r.clone(),
            instance,
            ok: true,
            detail: "exit 0".into(),
        },
    );
    assert!(s.core.status().replicas[&r].is_available());
    s.core.handle_runtime(
        s.now,
        RuntimeEvent::Health {
            replica: r.clone(),
            instance,
            ok: false,
            detail: "exit 1".into(),
        },
    );
    s.drain();
    assert!(s.stops.is_empty(), "one failure is below the threshold");
    s.core.handle_runtime(
        s.now,
        RuntimeEvent::Health {
            replica: r.clone(),
            instance,
            ok: false,
            detail: "exit 1".into(),
        },
    );
    s.drain();
    assert_eq!(s.stops, vec![(r.clone(), StopReason::Unhealthy)]);
    let t = s.core.poll_timeout().expect("restart scheduled");
    s.advance(t);
    assert_eq!(s.starts.len(), 2);
}

impl Single {
    fn desired_rev(&self, w: &str) -> Revision {
        self.core
            .desired()
            .get(&WorkloadName::new(w).expect("valid"))
            .cloned()
            .expect("desired")
    }
}

fn desired_at(revisions: &[Revision], ms: u64) -> DesiredState {
    let mut d = DesiredState::new();
    for r in revisions {
        d.write(
            r.spec.name.clone(),
            Some(r.clone()),
            Timestamp {
                physical_ms: ms,
                logical: 0,
                node: id("n1"),
            },
        );
    }
    d
}

/// Several cores wired together: statuses published by one are delivered to the others that
/// see it; each has its own view (so views can disagree); starts succeed at once.
struct Fleet {
    cores: BTreeMap<NodeId, NodeCore>,
    now: u64,
    running: BTreeSet<(NodeId, ReplicaId)>,
    instances: BTreeMap<(NodeId, ReplicaId), u64>,
    started: Vec<(NodeId, ReplicaId)>,
    handovers: Vec<(NodeId, ReplicaId)>,
    /// Who each node can hear from (None: everyone).
    hears: BTreeMap<NodeId, BTreeSet<NodeId>>,
    healthy_on_start: bool,
}

impl Fleet {
    fn new(names: &[&str], specs: &[WorkloadSpec]) -> Self {
        let all: Vec<(&str, Liveness)> = names.iter().map(|n| (*n, Liveness::Alive)).collect();
        let mut f = Fleet {
            cores: names
                .iter()
                .map(|n| (id(n), NodeCore::new(config(n), Restored::default())))
                .collect(),
            now: 0,
            running: BTreeSet::new(),
            instances: BTreeMap::new(),
            started: Vec::new(),
            handovers: Vec::new(),
            hears: BTreeMap::new(),
            healthy_on_start: true,
        };
        for n in names {
            f.set_view(n, &all);
        }
        let d = desired_of(specs);
        for core in f.cores.values_mut() {
            core.handle_desired(0, d.clone());
        }
        f.pump();
        f
    }

    fn set_view(&mut self, n: &str, nodes: &[(&str, Liveness)]) {
        let now = self.now;
        self.cores
            .get_mut(&id(n))
            .expect("core")
            .handle_view(now, view(nodes));
        self.pump();
        self.regossip();
    }

    /// Gossip state persists: whoever can hear a node gets its latest status again.
    fn regossip(&mut self) {
        let now = self.now;
        let statuses: Vec<(NodeId, starling_protocol::status::NodeStatus)> = self
            .cores
            .iter()
            .map(|(n, c)| (n.clone(), c.status()))
            .collect();
        for (n, status) in statuses {
            let receivers: Vec<NodeId> = self.cores.keys().filter(|m| **m != n).cloned().collect();
            for m in receivers {
                if self.hears.get(&m).is_none_or(|h| h.contains(&n)) {
                    self.cores.get_mut(&m).expect("core").handle_peer_status(
                        now,
                        n.clone(),
                        status.clone(),
                    );
                }
            }
        }
        self.pump();
    }

    fn pump(&mut self) {
        for _ in 0..1_000 {
            let mut progressed = false;
            let names: Vec<NodeId> = self.cores.keys().cloned().collect();
            for n in names {
                while let Some(action) = self.cores.get_mut(&n).expect("core").poll_action() {
                    progressed = true;
                    self.apply(&n, action);
                }
            }
            if !progressed {
                return;
            }
        }
        panic!("actions did not quiesce");
    }

    fn apply(&mut self, n: &NodeId, action: Action) {
        let now = self.now;
        match action {
            Action::Start {
                replica, instance, ..
            } => {
                self.running.insert((n.clone(), replica.clone()));
                self.instances
                    .insert((n.clone(), replica.clone()), instance);
                self.started.push((n.clone(), replica.clone()));
                let core = self.cores.get_mut(n).expect("core");
                core.handle_runtime(
                    now,
                    RuntimeEvent::Started {
                        replica: replica.clone(),
                        instance,
                    },
                );
                if self.healthy_on_start {
                    core.handle_runtime(
                        now,
                        RuntimeEvent::Health {
                            replica,
                            instance,
                            ok: true,
                            detail: String::new(),
                        },
                    );
                }
            }
            Action::Stop {
                replica,
                instance,
                reason,
            } => {
                self.running.remove(&(n.clone(), replica.clone()));
                if reason == StopReason::HandedOver {
                    self.handovers.push((n.clone(), replica.clone()));
                }
                let core = self.cores.get_mut(n).expect("core");
                core.handle_runtime(
                    now,
                    RuntimeEvent::Exited {
                        replica,
                        instance,
                        code: None,
                        log_tail: vec![],
                    },
                );
            }
            Action::Publish(status) => {
                let receivers: Vec<NodeId> =
                    self.cores.keys().filter(|m| *m != n).cloned().collect();
                for m in receivers {
                    if self.hears.get(&m).is_none_or(|h| h.contains(n)) {
                        self.cores.get_mut(&m).expect("core").handle_peer_status(
                            now,
                            n.clone(),
                            status.clone(),
                        );
                    }
                }
            }
            Action::PersistAssignment(_)
            | Action::Event(_)
            | Action::Campaign { .. }
            | Action::Withdraw { .. }
            | Action::RollBack { .. }
            | Action::Scale { .. } => {}
        }
    }

    fn advance(&mut self, until: u64) {
        loop {
            let next = self
                .cores
                .values()
                .filter_map(|c| c.poll_timeout())
                .filter(|t| *t <= until)
                .min();
            let Some(t) = next else { break };
            self.now = t.max(self.now);
            let now = self.now;
            for core in self.cores.values_mut() {
                if core.poll_timeout().is_some_and(|d| d <= now) {
                    core.handle_timeout(now);
                }
            }
            self.pump();
        }
        self.now = until;
        let now = self.now;
        for core in self.cores.values_mut() {
            core.handle_timeout(now);
        }
        self.pump();
    }

    fn holders(&self, r: &ReplicaId) -> Vec<NodeId> {
        self.running
            .iter()
            .filter(|(_, x)| x == r)
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn copies_per_replica(&self) -> BTreeMap<ReplicaId, usize> {
        let mut m = BTreeMap::new();
        for (_, r) in &self.running {
            *m.entry(r.clone()).or_insert(0) += 1;
        }
        m
    }
}

#[test]
fn every_replica_runs_exactly_once_on_a_converged_fleet() {
    let mut f = Fleet::new(
        &["n1", "n2", "n3", "n4"],
        &[spec("web", 3, ""), spec("db", 1, "")],
    );
    f.advance(5_000);
    let copies = f.copies_per_replica();
    assert_eq!(copies.len(), 4);
    assert!(copies.values().all(|c| *c == 1), "{copies:?}");
}

#[test]
fn a_down_node_s_replicas_are_claimed_by_the_next_hrw_node() {
    let names = ["n1", "n2", "n3", "n4"];
    let mut f = Fleet::new(&names, &[spec("web", 3, ""), spec("db", 2, "")]);
    f.advance(5_000);
    let victim = f
        .running
        .iter()
        .next()
        .map(|(n, _)| n.clone())
        .expect("something runs");
    let lost: Vec<ReplicaId> = f
        .running
        .iter()
        .filter(|(n, _)| *n == victim)
        .map(|(_, r)| r.clone())
        .collect();
    f.cores.remove(&victim);
    f.running.retain(|(n, _)| *n != victim);
    let survivors: Vec<(&str, Liveness)> = names
        .iter()
        .map(|n| {
            (
                *n,
                if id(n) == victim {
                    Liveness::Down
                } else {
                    Liveness::Alive
                },
            )
        })
        .collect();
    let expected = starling_protocol::placement::plan(
        &view(&survivors),
        f.cores.values().next().expect("core").desired(),
    );
    for n in names.iter().filter(|n| id(n) != victim) {
        f.set_view(n, &survivors);
    }
    f.advance(7_000);
    for r in &lost {
        assert_eq!(
            f.holders(r),
            vec![expected.placed[r].clone()],
            "{r:?} runs on its next HRW node"
        );
    }
    assert!(f.copies_per_replica().values().all(|c| *c == 1));
}

#[test]
fn a_suspected_node_keeps_its_replicas() {
    let names = ["n1", "n2", "n3"];
    let mut f = Fleet::new(&names, &[spec("web", 3, "")]);
    f.advance(5_000);
    let before = f.running.clone();
    let suspect: Vec<(&str, Liveness)> = vec![
        ("n1", Liveness::Alive),
        ("n2", Liveness::Suspect),
        ("n3", Liveness::Alive),
    ];
    for n in ["n1", "n3"] {
        f.set_view(n, &suspect);
    }
    f.advance(60_000);
    let alive: Vec<(&str, Liveness)> = names.iter().map(|n| (*n, Liveness::Alive)).collect();
    for n in ["n1", "n3"] {
        f.set_view(n, &alive);
    }
    f.advance(120_000);
    assert_eq!(f.running, before, "suspect-then-alive moves nothing");
    assert_eq!(f.started.len(), 3);
}

#[test]
fn disagreeing_views_converge_to_exactly_one_copy() {
    let mut f = Fleet::new(&["n1", "n2"], &[]);
    // Each node believes the other is down, and they cannot hear each other.
    f.hears.insert(id("n1"), BTreeSet::new());
    f.hears.insert(id("n2"), BTreeSet::new());
    f.set_view("n1", &[("n1", Liveness::Alive), ("n2", Liveness::Down)]);
    f.set_view("n2", &[("n1", Liveness::Down), ("n2", Liveness::Alive)]);
    // 1 of 2 visible is not a majority: use availability mode so both sides act.
    let d = desired_of(&[spec("web", 1, "partition = \"availability\"")]);
    for core in f.cores.values_mut() {
        core.handle_desired(0, d.clone());
    }
    f.pump();
    f.advance(5_000);
    assert_eq!(
        f.holders(&replica("web", 0)).len(),
        2,
        "both sides run it while split"
    );
    // Heal: views agree, statuses flow again.
    f.hears.clear();
    let all = [("n1", Liveness::Alive), ("n2", Liveness::Alive)];
    f.set_view("n1", &all);
    f.set_view("n2", &all);
    f.advance(30_000);
    assert_eq!(
        f.holders(&replica("web", 0)).len(),
        1,
        "exactly one copy after views converge"
    );
    assert_eq!(
        f.handovers.len(),
        1,
        "the surplus copy was handed over, not just killed"
    );
}

#[test]
fn a_higher_ranked_competing_claim_wins_the_settle() {
    let mut f = Fleet::new(&["n1", "n2"], &[]);
    // n1 thinks n2 is down and vice versa, but they hear each other's claims.
    f.set_view("n1", &[("n1", Liveness::Alive), ("n2", Liveness::Down)]);
    f.set_view("n2", &[("n1", Liveness::Down), ("n2", Liveness::Alive)]);
    let d = desired_of(&[spec("web", 1, "partition = \"availability\"")]);
    for core in f.cores.values_mut() {
        core.handle_desired(0, d.clone());
    }
    f.pump();
    // A claim counts only from a node seen live: make both see each other alive but keep
    // their plans apart by mocking only the liveness used for ranking.
    f.set_view("n1", &[("n1", Liveness::Alive), ("n2", Liveness::Suspect)]);
    f.set_view("n2", &[("n1", Liveness::Suspect), ("n2", Liveness::Alive)]);
    f.advance(5_000);
    assert_eq!(
        f.holders(&replica("web", 0)).len(),
        1,
        "only the higher-ranked claimant started"
    );
}

#[test]
fn a_minority_side_takes_over_nothing_and_keeps_its_own() {
    let names = ["n1", "n2", "n3", "n4", "n5"];
    let mut f = Fleet::new(&names, &[spec("web", 5, "")]);
    f.advance(5_000);
    let before = f.running.clone();
    // n1 and n2 are cut off from n3..n5.
    let minority: Vec<(&str, Liveness)> = names
        .iter()
        .map(|n| {
            (
                *n,
                if ["n1", "n2"].contains(n) {
                    Liveness::Alive
                } else {
                    Liveness::Down
                },
            )
        })
        .collect();
    let majority: Vec<(&str, Liveness)> = names
        .iter()
        .map(|n| {
            (
                *n,
                if ["n1", "n2"].contains(n) {
                    Liveness::Down
                } else {
                    Liveness::Alive
                },
            )
        })
        .collect();
    for n in ["n1", "n2"] {
        f.hears.insert(id(n), [id("n1"), id("n2")].into());
        f.set_view(n, &minority);
    }
    for n in ["n3", "n4", "n5"] {
        f.hears.insert(id(n), [id("n3"), id("n4"), id("n5")].into());
        f.set_view(n, &majority);
    }
    f.advance(60_000);
    for (n, r) in &before {
        if ["n1", "n2"].contains(&n.as_str()) {
            assert!(
                f.running.contains(&(n.clone(), r.clone())),
                "the minority keeps its own"
            );
        }
    }
    let minority_started = f
        .started
        .iter()
        .filter(|(n, _)| ["n1", "n2"].contains(&n.as_str()))
        .count();
    let minority_before = before
        .iter()
        .filter(|(n, _)| ["n1", "n2"].contains(&n.as_str()))
        .count();
    assert_eq!(
        minority_started, minority_before,
        "the minority started no replacements"
    );
    assert!(
        f.copies_per_replica().values().all(|c| *c >= 1),
        "the majority replaced what it lost"
    );
    assert!(f.cores[&id("n1")].has_majority().eq(&false));
}

#[test]
fn a_rebooted_node_with_no_peers_restarts_exactly_its_last_assignment() {
    let specs = [spec("web", 3, ""), spec("db", 1, "")];
    let last = vec![(replica("web", 1), 1), (replica("db", 0), 1)];
    let restored = Restored {
        desired: desired_of(&specs),
        last_assignment: last.clone(),
        view: view(&[
            ("n1", Liveness::Alive),
            ("n2", Liveness::Down),
            ("n3", Liveness::Down),
        ]),
        rejoin_until_ms: None,
    };
    let mut core = NodeCore::new(config("n1"), restored);
    core.handle_timeout(0);
    core.handle_timeout(1_000);
    let mut started = Vec::new();
    while let Some(a) = core.poll_action() {
        if let Action::Start { replica, .. } = a {
            started.push((replica, 1));
        }
    }
    started.sort();
    let mut expected = last;
    expected.sort();
    assert_eq!(started, expected);
}

#[test]
fn a_returning_node_takes_back_its_replica_only_after_the_hold_and_without_a_gap() {
    let names = ["n1", "n2", "n3"];
    let mut f = Fleet::new(&names, &[spec("web", 1, "")]);
    f.advance(5_000);
    let r = replica("web", 0);
    let home = f.holders(&r)[0].clone();
    let others: Vec<NodeId> = names.iter().map(|n| id(n)).filter(|n| *n != home).collect();
    // The home node goes down; the replica moves.
    let down: Vec<(&str, Liveness)> = names
        .iter()
        .map(|n| {
            (
                *n,
                if id(n) == home {
                    Liveness::Down
                } else {
                    Liveness::Alive
                },
            )
        })
        .collect();
    f.running.retain(|(n, _)| *n != home);
    f.cores.insert(
        home.clone(),
        NodeCore::new(config(home.as_str()), Restored::default()),
    );
    f.hears.insert(home.clone(), BTreeSet::new());
    for n in &others {
        f.hears.insert(n.clone(), others.iter().cloned().collect());
        f.set_view(n.as_str(), &down);
    }
    f.advance(10_000);
    let interim = f.holders(&r);
    assert_eq!(interim.len(), 1);
    assert_ne!(interim[0], home);
    // It comes back with an empty memory: everyone sees everyone again.
    f.hears.clear();
    let alive: Vec<(&str, Liveness)> = names.iter().map(|n| (*n, Liveness::Alive)).collect();
    let desired = f.cores[&others[0]].desired().clone();
    f.cores
        .get_mut(&home)
        .expect("core")
        .handle_desired(f.now, desired);
    for n in names {
        f.set_view(n, &alive);
    }
    let back_at = f.now;
    f.advance(back_at + 9_000);
    assert_eq!(f.holders(&r), interim, "not moved back before the hold");
    f.advance(back_at + 20_000);
    assert_eq!(
        f.holders(&r),
        vec![home.clone()],
        "moved back home, old copy handed over"
    );
    assert_eq!(f.handovers, vec![(interim[0].clone(), r.clone())]);
}

#[test]
fn the_old_copy_is_not_stopped_before_the_new_one_is_healthy() {
    let names = ["n1", "n2", "n3"];
    let mut f = Fleet::new(&names, &[spec("web", 1, "[health]\nexec = [\"check\"]")]);
    f.advance(5_000);
    let r = replica("web", 0);
    let holder = f.holders(&r)[0].clone();
    // Make the replica's planned home another node by giving it a much higher weight.
    let target = names
        .iter()
        .map(|n| id(n))
        .find(|n| *n != holder)
        .expect("another node");
    f.healthy_on_start = false;
    let weighted: FleetView = {
        let mut v = view(
            &names
                .iter()
                .map(|n| (*n, Liveness::Alive))
                .collect::<Vec<_>>(),
        );
        v.nodes.get_mut(&target).expect("node").weight = 1_000_000;
        v
    };
    let now = f.now;
    for core in f.cores.values_mut() {
        core.handle_view(now, weighted.clone());
    }
    f.pump();
    f.advance(now + 30_000);
    let mut holders = f.holders(&r);
    holders.sort();
    let mut both = vec![holder.clone(), target.clone()];
    both.sort();
    assert_eq!(
        holders, both,
        "the new copy runs but is not healthy: the old one stays"
    );
    let instance = f.instances[&(target.clone(), r.clone())];
    let now = f.now;
    f.cores.get_mut(&target).expect("core").handle_runtime(
        now,
        RuntimeEvent::Health {
            replica: r.clone(),
            instance,
            ok: true,
            detail: String::new(),
        },
    );
    f.pump();
    assert_eq!(f.holders(&r), vec![target]);
}

#[test]
fn adoption_replaces_a_mere_claim_and_never_runs_two_copies() {
    let specs = [spec("web", 2, "")];
    let restored = Restored {
        desired: desired_of(&specs),
        last_assignment: vec![],
        view: view(&[("n1", Liveness::Alive)]),
        rejoin_until_ms: None,
    };
    let mut core = NodeCore::new(config("n1"), restored);
    // The first adoption triggers a reconcile that claims web/1 before its adoption arrives.
    core.handle_runtime(
        0,
        RuntimeEvent::Adopted {
            replica: replica("web", 0),
            instance: 7,
            revision: 1,
        },
    );
    core.handle_runtime(
        0,
        RuntimeEvent::Adopted {
            replica: replica("web", 1),
            instance: 8,
            revision: 1,
        },
    );
    core.handle_runtime(
        0,
        RuntimeEvent::Adopted {
            replica: replica("web", 1),
            instance: 9,
            revision: 1,
        },
    );
    core.handle_timeout(5_000);
    let mut actions = Vec::new();
    while let Some(a) = core.poll_action() {
        actions.push(a);
    }
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Start { .. })),
        "nothing new started: {actions:?}"
    );
    let stops: Vec<u64> = actions
        .iter()
        .filter_map(|a| {
            if let Action::Stop { instance, .. } = a {
                Some(*instance)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(stops, vec![9], "only the duplicate copy is stopped");
    assert_eq!(
        core.instances(),
        vec![(replica("web", 0), 7), (replica("web", 1), 8)]
    );
}

#[test]
fn a_node_never_starts_more_than_it_has_room_for_even_during_a_handover() {
    // Room for one 100m replica. The plan (name order) gives the node `a`; `b`, adopted from
    // before, is no longer planned anywhere but keeps running until its handover times out.
    let mut small = view(&[("n1", Liveness::Alive)]);
    small.nodes.get_mut(&id("n1")).expect("node").capacity = Capacity {
        cpu: Millicores(150),
        memory: Bytes(1 << 30),
    };
    let specs = [spec("a", 1, ""), spec("b", 1, "")];
    let restored = Restored {
        desired: desired_of(&specs),
        last_assignment: vec![],
        view: small,
        rejoin_until_ms: None,
    };
    let mut core = NodeCore::new(config("n1"), restored);
    core.handle_runtime(
        0,
        RuntimeEvent::Adopted {
            replica: replica("b", 0),
            instance: 5,
            revision: 1,
        },
    );
    core.handle_timeout(2_000);
    let drain = |core: &mut NodeCore| std::iter::from_fn(|| core.poll_action()).collect::<Vec<_>>();
    let actions = drain(&mut core);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Start { .. })),
        "no room for a while b runs: {actions:?}"
    );
    assert_eq!(
        core.poll_timeout(),
        Some(120_000),
        "the handover timeout is the next deadline"
    );
    core.handle_timeout(120_000);
    let actions = drain(&mut core);
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Stop {
            instance: 5,
            reason: StopReason::HandedOver,
            ..
        }
    )));
    core.handle_runtime(
        120_010,
        RuntimeEvent::Exited {
            replica: replica("b", 0),
            instance: 5,
            code: None,
            log_tail: vec![],
        },
    );
    let actions = drain(&mut core);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Start { replica: r, .. } if *r == replica("a", 0))),
        "a starts once b is gone"
    );
}

#[test]
fn a_singleton_runs_only_while_its_lease_is_held_and_stops_the_moment_it_is_lost() {
    let s1 = spec("leader", 1, "singleton = true\nlease_ttl = \"2s\"");
    let mut s = Single::new(&[s1]);
    let name = s1_name();
    assert_eq!(
        s.campaigns,
        vec![(name.clone(), true)],
        "the placed node campaigns"
    );
    s.advance(5_000);
    assert!(s.starts.is_empty(), "nothing runs before the lease is held");
    s.core.handle_lease(5_000, name.clone(), Some(7));
    s.drain();
    assert_eq!(s.starts.len(), 1, "starts at once, no claim settle");
    assert_eq!(s.core.held_token(&name), Some(7));
    s.core.handle_lease(6_000, name.clone(), None);
    s.drain();
    assert_eq!(s.stops.last().map(|x| x.1), Some(StopReason::LeaseLost));
    s.advance(20_000);
    assert_eq!(s.starts.len(), 1, "no restart without the lease");
    assert!(s.running.is_empty());
}

#[test]
fn standbys_run_without_the_lease_and_restart_as_standbys_after_losing_it() {
    let s1 = spec("leader", 1, "singleton = true\nstandbys = 1");
    let mut s = Single::new(&[s1]);
    let name = s1_name();
    s.advance(3_000);
    assert_eq!(
        s.running.len(),
        2,
        "active + standby both run (one node here)"
    );
    assert!(
        s.campaigns.contains(&(name.clone(), true)),
        "a running node campaigns"
    );
    s.core.handle_lease(3_000, name.clone(), Some(1));
    s.drain();
    s.core.handle_lease(4_000, name.clone(), None);
    s.drain();
    let lost = s
        .stops
        .iter()
        .filter(|x| x.1 == StopReason::LeaseLost)
        .count();
    assert_eq!(lost, 2, "both instances stop when the lease is lost");
    s.advance(10_000);
    assert_eq!(s.running.len(), 2, "they come back as standbys");
}

#[test]
fn deleting_a_singleton_withdraws_its_campaign() {
    let s1 = spec("leader", 1, "singleton = true");
    let mut s = Single::new(std::slice::from_ref(&s1));
    let mut d = desired_of(&[s1]);
    d.write(
        s1_name(),
        None,
        Timestamp {
            physical_ms: 100,
            logical: 0,
            node: id("n1"),
        },
    );
    s.core.handle_desired(100, d);
    s.drain();
    assert_eq!(s.campaigns.last(), Some(&(s1_name(), false)));
}

fn s1_name() -> WorkloadName {
    WorkloadName::new("leader").expect("valid")
}

#[test]
fn a_holder_placed_elsewhere_withdraws_once_after_the_move_hold() {
    let s1 = spec("leader", 1, "singleton = true");
    let mut s = Single::new(&[s1]);
    let name = s1_name();
    s.core.handle_lease(0, name.clone(), Some(1));
    s.drain();
    // A node that ranks first for replica 0 appears: placement moves the singleton there.
    let mut both = view(&[("n1", Liveness::Alive)]);
    for candidate in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        both.nodes
            .insert(id(candidate), node_view(candidate, Liveness::Alive));
    }
    s.core.handle_view(100, both);
    s.drain();
    let placed_here = s.core.plan().and_then(|p| {
        p.placed.get(&ReplicaId {
            workload: name.clone(),
            index: 0,
        })
    }) == Some(&id("n1"));
    assert!(!placed_here, "some other node ranks first");
    s.advance(5_000);
    assert!(
        !s.campaigns.contains(&(name.clone(), false)),
        "held through the move hold"
    );
    s.advance(10_200);
    assert_eq!(
        s.campaigns.last(),
        Some(&(name.clone(), false)),
        "withdrawn after it"
    );
    let before = s.campaigns.len();
    // Until the elector reports the loss, the core does not campaign again.
    s.advance(12_000);
    assert_eq!(s.campaigns.len(), before, "{:?}", s.campaigns);
    s.core.handle_lease(12_000, name.clone(), None);
    s.drain();
    s.advance(20_000);
    assert_eq!(s.campaigns.len(), before, "{:?}", s.campaigns);
}

#[test]
fn a_status_about_someone_else_s_replica_is_kept_for_later_decisions() {
    // A status that touches none of this node's replicas does not re-plan, but it is kept: when
    // placement later moves the replica here, the copy that status reports running elsewhere
    // makes it a move (held for move_hold_ms), not a replacement.
    let specs = [spec("web", 1, "")];
    let desired = desired_of(&specs);
    let r = replica("web", 0);
    let all = view(&[
        ("n1", Liveness::Alive),
        ("n2", Liveness::Alive),
        ("n3", Liveness::Alive),
    ]);
    let owner = compute_plan(&all, &desired, true).placed[&r].clone();
    let mut without_owner = all.clone();
    if let Some(v) = without_owner.nodes.get_mut(&owner) {
        v.liveness = Liveness::Down;
    }
    let me = compute_plan(&without_owner, &desired, true).placed[&r].clone();
    let runner = all
        .nodes
        .keys()
        .find(|n| **n != owner && **n != me)
        .expect("a third node")
        .clone();
    let mut core = NodeCore::new(config(me.as_str()), Restored::default());
    core.handle_view(0, all);
    core.handle_desired(0, desired);
    let running = NodeStatus {
        replicas: [(
            r.clone(),
            starling_protocol::status::ReplicaStatus {
                revision: 1,
                state: ReplicaState::Running,
                healthy: true,
                restarts: 0,
                last_exit_code: None,
                reason: None,
                settled: true,
                outgoing: None,
            },
        )]
        .into(),
        reserved: Capacity::default(),
    };
    core.handle_peer_status(0, runner.clone(), running);
    assert!(core.peer_statuses().contains_key(&runner));
    core.handle_view(100, without_owner);
    let mut starts = Vec::new();
    let mut now = 100;
    while let Some(t) = core.poll_timeout().filter(|t| *t <= 20_000) {
        now = t.max(now);
        core.handle_timeout(now);
        while let Some(a) = core.poll_action() {
            if let Action::Start { replica, .. } = a {
                starts.push((now, replica));
            }
        }
    }
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert!(
        starts[0].0 >= 100 + 10_000,
        "started at {} ms: the running copy was forgotten",
        starts[0].0
    );
}

#[test]
fn the_plan_index_lists_each_node_s_replicas_in_order() {
    let specs = [spec("web", 5, ""), spec("db", 3, "")];
    let all = view(&[("n1", Liveness::Alive), ("n2", Liveness::Alive)]);
    let assignment = compute_plan(&all, &desired_of(&specs), true);
    let plan = Plan::new(assignment.clone());
    for n in ["n1", "n2", "n9"] {
        let expected: Vec<ReplicaId> = assignment.for_node(&id(n)).cloned().collect();
        assert_eq!(plan.on(&id(n)), expected.as_slice());
    }
    assert_eq!(plan.on(&id("n1")).len() + plan.on(&id("n2")).len(), 8);
}

#[test]
fn a_restarted_node_hears_the_fleet_before_it_acts_and_takes_back_only_by_the_move_rules() {
    let names = ["n1", "n2", "n3"];
    let mut f = Fleet::new(&names, &[spec("web", 1, "")]);
    f.advance(5_000);
    let r = replica("web", 0);
    let home = f.holders(&r)[0].clone();
    let others: Vec<NodeId> = names.iter().map(|n| id(n)).filter(|n| *n != home).collect();
    let with_home = |l: Liveness| -> Vec<(&str, Liveness)> {
        names
            .iter()
            .map(|n| (*n, if id(n) == home { l } else { Liveness::Alive }))
            .collect()
    };
    // The home node crashes with its replica; the fleet replaces it.
    f.running.retain(|(n, _)| *n != home);
    f.hears.insert(home.clone(), BTreeSet::new());
    for n in &others {
        f.hears.insert(n.clone(), others.iter().cloned().collect());
        f.set_view(n.as_str(), &with_home(Liveness::Down));
    }
    f.advance(10_000);
    let interim = f.holders(&r);
    assert_eq!(interim.len(), 1);
    // It restarts from its disk: its last assignment and the fleet as it last saw it, all
    // alive, so on its own it would start the replica again at once.
    let restored = Restored {
        desired: f.cores[&others[0]].desired().clone(),
        last_assignment: vec![(r.clone(), 1)],
        view: view(&with_home(Liveness::Alive)),
        rejoin_until_ms: Some(f.now + 5_000),
    };
    f.cores
        .insert(home.clone(), NodeCore::new(config(home.as_str()), restored));
    let back_at = f.now;
    let core = f.cores.get_mut(&home).expect("core");
    core.handle_view(back_at, view(&with_home(Liveness::Alive)));
    // Its desired state is a peer's copy, so it caught up at once: what it waits for here is
    // the fleet's status.
    core.handle_desired_synced(back_at);
    assert!(core.is_rejoining(), "nothing heard yet");
    core.handle_timeout(back_at + 3_000);
    assert!(core.is_rejoining());
    while let Some(action) = core.poll_action() {
        assert!(
            !matches!(action, Action::Start { .. } | Action::PersistAssignment(_)),
            "acted before hearing the fleet: {action:?}"
        );
    }
    // Gossip reaches it (and it them): it learns the replica runs elsewhere.
    f.now = back_at + 3_000;
    f.hears.clear();
    for n in names {
        f.set_view(n, &with_home(Liveness::Alive));
    }
    assert!(!f.cores[&home].is_rejoining(), "heard every live peer");
    f.advance(f.now + 9_000);
    assert_eq!(f.holders(&r), interim, "a move waits out the hold");
    f.advance(f.now + 10_000);
    assert_eq!(
        f.holders(&r),
        vec![home.clone()],
        "moved back by the move rules"
    );
    assert_eq!(f.handovers, vec![(interim[0].clone(), r.clone())]);
}

#[test]
fn a_restarted_node_that_hears_nobody_restarts_its_last_assignment_after_the_wait() {
    let specs = [spec("web", 3, ""), spec("db", 1, "")];
    let last = vec![(replica("web", 1), 1), (replica("db", 0), 1)];
    let all_alive = [
        ("n1", Liveness::Alive),
        ("n2", Liveness::Alive),
        ("n3", Liveness::Alive),
    ];
    let restored = Restored {
        desired: desired_of(&specs),
        last_assignment: last.clone(),
        view: view(&all_alive),
        rejoin_until_ms: Some(5_000),
    };
    let mut core = NodeCore::new(config("n1"), restored);
    core.handle_view(0, view(&all_alive));
    // Its detector gives up on the peers it cannot reach.
    let alone = [
        ("n1", Liveness::Alive),
        ("n2", Liveness::Down),
        ("n3", Liveness::Down),
    ];
    core.handle_view(1_000, view(&alone));
    assert_eq!(core.poll_timeout(), Some(5_000), "waits for the deadline");
    core.handle_timeout(5_000);
    core.handle_timeout(6_000);
    let mut started = Vec::new();
    let mut rejoined = None;
    while let Some(a) = core.poll_action() {
        match a {
            Action::Start { replica, .. } => started.push((replica, 1)),
            Action::Event(CoreEvent::Rejoined { heard, timed_out }) => {
                rejoined = Some((heard, timed_out));
            }
            _ => {}
        }
    }
    assert_eq!(rejoined, Some((0, true)));
    started.sort();
    let mut expected = last;
    expected.sort();
    assert_eq!(started, expected, "the offline-reboot rule, after the wait");
}

#[test]
fn a_held_rejoin_wait_acts_on_nothing_until_the_shell_releases_it() {
    let specs = [spec("web", 3, "")];
    let last = vec![(replica("web", 1), 1)];
    let alone = [
        ("n1", Liveness::Alive),
        ("n2", Liveness::Down),
        ("n3", Liveness::Down),
    ];
    let restored = Restored {
        desired: desired_of(&specs),
        last_assignment: last.clone(),
        view: view(&alone),
        rejoin_until_ms: Some(5_000),
    };
    let mut core = NodeCore::new(config("n1"), restored);
    // The shell heard its own id from another live process and checks it.
    core.handle_rejoin_hold(0, true);
    core.handle_view(0, view(&alone));
    core.handle_timeout(5_000);
    core.handle_timeout(9_000);
    assert!(core.is_rejoining(), "the deadline does not end a held wait");
    assert_eq!(
        core.poll_timeout(),
        None,
        "no deadline to spin on while held"
    );
    while let Some(a) = core.poll_action() {
        assert!(
            !matches!(a, Action::Start { .. } | Action::PersistAssignment(_)),
            "acted while held: {a:?}"
        );
    }
    core.handle_rejoin_hold(9_500, false);
    assert!(
        !core.is_rejoining(),
        "released past its deadline: the wait is over"
    );
    core.handle_timeout(12_000);
    let started: Vec<_> = std::iter::from_fn(|| core.poll_action())
        .filter_map(|a| match a {
            Action::Start { replica, .. } => Some((replica, 1)),
            _ => None,
        })
        .collect();
    assert_eq!(started, last, "then the ordinary rules apply");
}

#[test]
fn a_departing_holder_stops_its_singleton_before_it_gives_the_lease_up() {
    let s1 = spec("leader", 1, "singleton = true\nlease_ttl = \"2s\"");
    let mut s = Single::new(&[s1]);
    let name = s1_name();
    s.core.handle_lease(1_000, name.clone(), Some(7));
    s.drain();
    assert_eq!(s.starts.len(), 1);
    let instance = s.running[&replica("leader", 0)];
    let mut leaving = view(&[("n1", Liveness::Alive)]);
    if let Some(me) = leaving.nodes.get_mut(&id("n1")) {
        me.departure = Departure::Restarting { back_by_ms: 60_000 };
    }
    s.core.handle_view(2_000, leaving);
    let mut actions = Vec::new();
    while let Some(a) = s.core.poll_action() {
        actions.push(a);
    }
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Stop {
                reason: StopReason::LeaseLost,
                ..
            }
        )),
        "the instance stops: {actions:?}"
    );
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Withdraw { .. })),
        "the lease stays until the instance is gone: {actions:?}"
    );
    s.core.handle_runtime(
        2_050,
        RuntimeEvent::Exited {
            replica: replica("leader", 0),
            instance,
            code: None,
            log_tail: vec![],
        },
    );
    let mut withdrew = false;
    while let Some(a) = s.core.poll_action() {
        withdrew |= matches!(a, Action::Withdraw { ref lease } if *lease == name);
    }
    assert!(withdrew, "given up once the instance exited");
}

#[test]
fn a_draining_node_s_replicas_start_elsewhere_without_the_move_hold() {
    let names = ["n1", "n2", "n3"];
    let mut f = Fleet::new(&names, &[spec("web", 2, "")]);
    f.advance(5_000);
    let r = replica("web", 0);
    let drained = f.holders(&r)[0].clone();
    let mut draining = view(
        &names
            .iter()
            .map(|n| (*n, Liveness::Alive))
            .collect::<Vec<_>>(),
    );
    if let Some(n) = draining.nodes.get_mut(&drained) {
        n.departure = Departure::Draining;
    }
    let now = f.now;
    for core in f.cores.values_mut() {
        core.handle_view(now, draining.clone());
    }
    f.pump();
    f.regossip();
    f.advance(now + 3_000);
    assert!(
        f.running.iter().all(|(n, _)| *n != drained),
        "the draining node runs nothing within the settle, not the 10 s hold"
    );
    assert_eq!(
        f.copies_per_replica().values().copied().collect::<Vec<_>>(),
        vec![1, 1]
    );
    assert!(
        f.handovers.iter().all(|(n, _)| *n == drained),
        "stopped by handover"
    );
    assert!(!f.handovers.is_empty());
}

mod rollouts;
mod scaling;
