use proptest::prelude::*;

use super::*;

fn node(i: usize, cpu_m: u32, mem_mi: u64) -> NodeView {
    NodeView {
        id: NodeId::new(format!("node-{i:03}")).expect("valid id"),
        labels: [("zone".to_string(), ["a", "b", "c"][i % 3].to_string())].into(),
        arch: if i % 4 == 3 {
            "aarch64".into()
        } else {
            "x86_64".into()
        },
        runtimes: if i.is_multiple_of(2) {
            [RuntimeKind::Process, RuntimeKind::Docker].into()
        } else {
            [RuntimeKind::Process].into()
        },
        capacity: Capacity {
            cpu: Millicores(cpu_m),
            memory: Bytes(mem_mi << 20),
        },
        weight: 1,
        liveness: Liveness::Alive,
        departure: Default::default(),
    }
}

fn fleet(n: usize, cpu_m: u32, mem_mi: u64) -> FleetView {
    FleetView {
        nodes: (0..n)
            .map(|i| node(i, cpu_m, mem_mi))
            .map(|v| (v.id.clone(), v))
            .collect(),
    }
}

fn spec(name: &str, replicas: u32, cpu_m: u32, extra: &str) -> WorkloadSpec {
    WorkloadSpec::from_toml(&format!(
        "name = \"{name}\"\ncommand = \"sleep\"\nreplicas = {replicas}\n{extra}\n[resources]\ncpu = \"{cpu_m}m\"\nmemory = \"16Mi\"\n"
    ))
    .expect("valid spec")
}

fn workloads(counts: &[(u32, u32, bool)]) -> Vec<WorkloadSpec> {
    counts
        .iter()
        .enumerate()
        .map(|(i, &(replicas, cpu, pack))| {
            spec(
                &format!("w{i}"),
                replicas,
                cpu,
                if pack { "placement = \"bin-pack\"" } else { "" },
            )
        })
        .collect()
}

fn node_sets(a: &Assignment) -> BTreeMap<WorkloadName, BTreeSet<NodeId>> {
    let mut out: BTreeMap<WorkloadName, BTreeSet<NodeId>> = BTreeMap::new();
    for (r, n) in &a.placed {
        out.entry(r.workload.clone()).or_default().insert(n.clone());
    }
    out
}

fn assert_capacity_holds(
    view: &FleetView,
    specs: &[WorkloadSpec],
    a: &Assignment,
) -> Result<(), TestCaseError> {
    for (id, node) in &view.nodes {
        let (mut cpu, mut mem) = (0u64, 0u64);
        for r in a.for_node(id) {
            let s = specs
                .iter()
                .find(|s| s.name == r.workload)
                .expect("placed workload exists");
            cpu += u64::from(s.resources.cpu_request.0);
            mem += s.resources.memory_request.0;
        }
        prop_assert!(
            cpu <= u64::from(node.capacity.cpu.0),
            "{id} over-committed on cpu"
        );
        prop_assert!(
            mem <= node.capacity.memory.0,
            "{id} over-committed on memory"
        );
    }
    Ok(())
}

fn counts() -> impl Strategy<Value = Vec<(u32, u32, bool)>> {
    proptest::collection::vec((1u32..5, 10u32..400, proptest::bool::weighted(0.2)), 1..30)
}

proptest! {
    #[test]
    fn same_input_gives_the_same_plan(n in 1usize..30, c in counts()) {
        let view = fleet(n, 2000, 4096);
        let specs = workloads(&c);
        let a = plan_specs(&view, &specs);
        let mut reversed: Vec<&WorkloadSpec> = specs.iter().collect();
        reversed.reverse();
        prop_assert_eq!(&a, &plan_specs(&view, reversed));
        prop_assert_eq!(a.placed.len() + a.unplaced.len(), specs.iter().map(|s| s.replicas as usize).sum::<usize>());
    }

    #[test]
    fn no_node_is_over_committed(n in 1usize..20, cap in 100u32..2000, c in counts()) {
        let view = fleet(n, cap, 256);
        let specs = workloads(&c);
        let a = plan_specs(&view, &specs);
        assert_capacity_holds(&view, &specs, &a)?;
        for reason in a.unplaced.values() {
            prop_assert!(matches!(reason, Unplaceable::NoCapacity { .. }), "unexpected reason {reason}");
        }
    }

    /// With room to spare, removing a node moves only the replicas it held, and each workload's
    /// node set changes at most by swapping the departed node for one other.
    #[test]
    fn node_loss_moves_only_its_replicas(n in 3usize..30, gone in 0usize..30, c in counts()) {
        let mut view = fleet(n, 1_000_000, 1 << 20);
        let specs = workloads(&c);
        let before = plan_specs(&view, &specs);
        let gone_id = view.nodes.keys().nth(gone % n).cloned().expect("node exists");
        view.nodes.get_mut(&gone_id).expect("node exists").liveness = Liveness::Down;
        let after = plan_specs(&view, &specs);
        prop_assert!(after.unplaced.is_empty());
        let (sets_before, sets_after) = (node_sets(&before), node_sets(&after));
        for (w, set) in &sets_before {
            if set.contains(&gone_id) {
                let lost: BTreeSet<_> = set.difference(&sets_after[w]).collect();
                let gained: BTreeSet<_> = sets_after[w].difference(set).collect();
                prop_assert_eq!(lost.into_iter().collect::<Vec<_>>(), vec![&gone_id]);
                prop_assert!(gained.len() <= 1);
            } else {
                for (r, n) in before.placed.iter().filter(|(r, _)| &r.workload == w) {
                    prop_assert_eq!(Some(n), after.placed.get(r), "replica {:?} of an unaffected workload moved", r);
                }
            }
        }
        prop_assert!(after.for_node(&gone_id).next().is_none());
    }

    /// Every replica that moves when a node joins moves to the new node (spread, ample room).
    #[test]
    fn node_join_moves_replicas_only_to_the_new_node(n in 2usize..30, c in counts()) {
        let specs: Vec<WorkloadSpec> = workloads(&c).into_iter().map(|mut s| { s.replicas = 1; s }).collect();
        let mut view = fleet(n, 1_000_000, 1 << 20);
        let before = plan_specs(&view, &specs);
        let joined = node(n, 1_000_000, 1 << 20);
        let joined_id = joined.id.clone();
        view.nodes.insert(joined_id.clone(), joined);
        let after = plan_specs(&view, &specs);
        for (r, n) in &after.placed {
            if before.placed.get(r) != Some(n) {
                prop_assert_eq!(n, &joined_id);
            }
        }
    }

    #[test]
    fn suspect_nodes_keep_their_replicas(n in 2usize..20, which in 0usize..20, c in counts()) {
        let mut view = fleet(n, 1_000_000, 1 << 20);
        let specs = workloads(&c);
        let before = plan_specs(&view, &specs);
        let id = view.nodes.keys().nth(which % n).cloned().expect("node exists");
        view.nodes.get_mut(&id).expect("node exists").liveness = Liveness::Suspect;
        prop_assert_eq!(before, plan_specs(&view, &specs));
    }
}

#[test]
fn a_joining_node_takes_about_one_nth_of_the_replicas() {
    let specs: Vec<WorkloadSpec> = (0..2000)
        .map(|i| spec(&format!("w{i}"), 1, 10, ""))
        .collect();
    let mut view = fleet(20, 1_000_000, 1 << 20);
    let before = plan_specs(&view, &specs);
    let joined = node(20, 1_000_000, 1 << 20);
    view.nodes.insert(joined.id.clone(), joined);
    let after = plan_specs(&view, &specs);
    let moved = before
        .placed
        .iter()
        .filter(|(r, n)| after.placed.get(*r) != Some(*n))
        .count();
    // Expected 2000/21 ≈ 95; a fair hash lands well within a factor of 1.5.
    assert!(
        (63..=143).contains(&moved),
        "moved {moved} of 2000 replicas"
    );
}

#[test]
fn spread_keeps_replicas_of_one_workload_apart() {
    let view = fleet(5, 100_000, 1 << 16);
    let a = plan_specs(&view, &[spec("web", 5, 100, "")]);
    assert_eq!(
        node_sets(&a)[&WorkloadName::new("web").expect("valid")].len(),
        5
    );
    let crowded = plan_specs(&view, &[spec("web", 8, 100, "")]);
    assert_eq!(
        crowded.placed.len(),
        8,
        "spread is soft: it doubles up when nodes run out"
    );
}

#[test]
fn bin_pack_fills_one_node_before_the_next() {
    let view = fleet(10, 1000, 1 << 16);
    let specs = vec![
        spec("a", 4, 250, "placement = \"bin-pack\""),
        spec("b", 4, 250, "placement = \"bin-pack\""),
    ];
    let a = plan_specs(&view, &specs);
    let used: BTreeSet<&NodeId> = a.placed.values().collect();
    assert_eq!(
        used.len(),
        2,
        "8 replicas of 250m fill exactly two 1000m nodes"
    );
}

#[test]
fn heavier_nodes_get_more_replicas() {
    let mut view = fleet(10, 1_000_000, 1 << 20);
    let heavy = view.nodes.keys().next().cloned().expect("node");
    view.nodes.get_mut(&heavy).expect("node").weight = 5;
    let specs: Vec<WorkloadSpec> = (0..1400)
        .map(|i| spec(&format!("w{i}"), 1, 10, ""))
        .collect();
    let a = plan_specs(&view, &specs);
    let on_heavy = a.for_node(&heavy).count();
    // Weight 5 of a total 14: expect 500 of 1400.
    assert!((400..=600).contains(&on_heavy), "heavy node got {on_heavy}");
}

#[test]
fn unplaceable_replicas_name_the_constraint_that_failed() {
    let view = fleet(8, 1000, 1024);
    let specs = vec![
        spec("arm", 1, 10, "[constraints]\narch = [\"riscv64\"]"),
        spec("zoned", 1, 10, "[constraints]\nlabels = { zone = \"z\" }"),
        spec("huge", 1, 5000, ""),
        WorkloadSpec::from_toml("name = \"pod\"\nruntime = \"podman\"\nimage = \"x\"")
            .expect("valid"),
    ];
    let a = plan_specs(&view, &specs);
    let reason = |w: &str| {
        a.unplaced[&ReplicaId {
            workload: WorkloadName::new(w).expect("valid"),
            index: 0,
        }]
            .to_string()
    };
    assert_eq!(
        reason("arm"),
        "no live node with the runtime has architecture riscv64"
    );
    assert_eq!(reason("zoned"), "no eligible node has label zone=z");
    assert!(
        reason("huge").starts_with("not enough capacity: needs cpu 5 and memory 16Mi"),
        "{}",
        reason("huge")
    );
    assert_eq!(reason("pod"), "no live node offers the podman runtime");
    let docker =
        WorkloadSpec::from_toml("name = \"d\"\nruntime = \"docker\"\nimage = \"x\"\nreplicas = 4")
            .expect("valid");
    let a = plan_specs(&view, &[docker]);
    assert!(
        a.placed
            .values()
            .all(|n| view.nodes[n].runtimes.contains(&RuntimeKind::Docker))
    );
}

#[test]
fn higher_priority_is_placed_first_when_capacity_is_short() {
    let view = fleet(1, 1000, 1024);
    let specs = vec![
        spec("aaa", 1, 800, ""),
        spec("zzz", 1, 800, "priority = 10"),
    ];
    let a = plan_specs(&view, &specs);
    assert!(a.placed.keys().any(|r| r.workload.as_str() == "zzz"));
    assert!(a.unplaced.keys().any(|r| r.workload.as_str() == "aaa"));
}

#[test]
fn singletons_place_one_instance() {
    let view = fleet(3, 1000, 1024);
    let s = spec("leader", 1, 10, "singleton = true");
    assert_eq!(plan_specs(&view, &[s]).placed.len(), 1);
}

#[test]
fn a_draining_node_gets_nothing_and_only_its_replicas_move() {
    let view = fleet(6, 10_000, 10_240);
    let specs = workloads(&[(12, 10, false), (4, 10, true)]);
    let before = plan_specs(&view, &specs);
    let drained = NodeId::new("node-002").expect("id");
    let mut draining = view.clone();
    if let Some(n) = draining.nodes.get_mut(&drained) {
        n.departure = Departure::Draining;
    }
    let after = plan_specs(&draining, &specs);
    assert_eq!(
        after.placed.len(),
        before.placed.len(),
        "everything still placed"
    );
    let count = |a: &Assignment| {
        let mut per: BTreeMap<(WorkloadName, NodeId), usize> = BTreeMap::new();
        for (r, n) in &a.placed {
            *per.entry((r.workload.clone(), n.clone())).or_default() += 1;
        }
        per
    };
    let (was, now) = (count(&before), count(&after));
    for ((workload, node), n) in &was {
        if *node != drained {
            // Under spread a replica index may change node (see the module docs); what a
            // staying node runs of each workload never shrinks.
            assert!(
                now.get(&(workload.clone(), node.clone())) >= Some(n),
                "{workload} moved off {node}"
            );
        }
    }
    assert!(
        after.placed.values().all(|n| *n != drained),
        "a draining node got a replica"
    );
}

#[test]
fn a_restarting_node_keeps_its_replicas_but_takes_no_singleton() {
    let view = fleet(5, 10_000, 10_240);
    let leader = spec("leader", 1, 10, "singleton = true");
    let web = spec("web", 10, 10, "");
    let before = plan_specs(&view, &[leader.clone(), web.clone()]);
    let holder = before.placed[&ReplicaId {
        workload: leader.name.clone(),
        index: 0,
    }]
        .clone();
    let mut restarting = view.clone();
    if let Some(n) = restarting.nodes.get_mut(&holder) {
        n.departure = Departure::Restarting { back_by_ms: 1 };
    }
    let after = plan_specs(&restarting, &[leader.clone(), web]);
    for (replica, node) in &before.placed {
        if replica.workload == leader.name {
            assert_ne!(after.placed[replica], holder, "the singleton moves off");
        } else {
            assert_eq!(after.placed[replica], *node, "{replica:?} stays put");
        }
    }
}

proptest! {
    /// The threshold prefilter in the hot loop picks exactly the node an exhaustive comparison
    /// of scores picks, whatever the mix of weights.
    #[test]
    fn prefiltered_choice_equals_exhaustive_choice(weights in proptest::collection::vec(1u32..6, 1..40), keys in proptest::collection::vec(any::<u64>(), 1..20)) {
        let mut view = fleet(weights.len(), 1_000_000, 1 << 20);
        for (node, w) in view.nodes.values_mut().zip(&weights) {
            node.weight = *w;
        }
        let planner = Planner::new(&view);
        let s = spec("w", 1, 10, "");
        let all: Vec<u32> = (0..weights.len() as u32).collect();
        for key in keys {
            let fast = planner.best_node(&s, key, &all, false);
            let mut exhaustive: Option<(usize, Score)> = None;
            for n in 0..weights.len() {
                let score = Score::new(planner.hash_and_class[n].0, planner.weights[n], key);
                if exhaustive.as_ref().is_none_or(|(_, b)| score.beats(b)) {
                    exhaustive = Some((n, score));
                }
            }
            prop_assert_eq!(fast, exhaustive.map(|(n, _)| n));
        }
    }
}

#[test]
fn replicas_binding_the_same_host_port_never_share_a_node() {
    let view = fleet(2, 100_000, 1 << 16);
    let fixed = "[[ports]]\nname = \"http\"\nport = 8080\nhost_port = 8080";
    let web = spec("web", 3, 10, fixed);
    let other = spec("other", 1, 10, fixed);
    let udp = spec(
        "dns",
        2,
        10,
        "[[ports]]\nname = \"dns\"\nport = 8080\nhost_port = 8080\nprotocol = \"udp\"",
    );
    let a = plan_specs(&view, &[web, other, udp]);
    // "other" sorts first and takes 8080/tcp on one node; "web" gets the other node only.
    let tcp_users: Vec<&NodeId> = a
        .placed
        .iter()
        .filter(|(r, _)| r.workload.as_str() != "dns")
        .map(|(_, n)| n)
        .collect();
    assert_eq!(tcp_users.len(), 2);
    assert_ne!(
        tcp_users[0], tcp_users[1],
        "never two 8080/tcp users on one node"
    );
    let reason = a.unplaced[&ReplicaId {
        workload: WorkloadName::new("web").expect("valid"),
        index: 2,
    }]
        .to_string();
    assert_eq!(
        reason,
        "host port 8080/tcp already taken on every eligible node (2) with room"
    );
    assert_eq!(
        a.placed
            .keys()
            .filter(|r| r.workload.as_str() == "dns")
            .count(),
        2,
        "udp 8080 does not clash with tcp 8080"
    );
}

#[test]
fn replicas_without_a_fixed_host_port_share_a_node() {
    // Each process instance gets its own picked port, so nothing keeps them apart.
    let view = fleet(1, 100_000, 1 << 16);
    let web = spec("web", 3, 10, "[[ports]]\nname = \"http\"\nport = 8080");
    let a = plan_specs(&view, &[web]);
    assert_eq!(a.placed.len(), 3, "{:?}", a.unplaced);
}
