use proptest::prelude::*;

use super::*;

fn spec(name: &str, ports: &str) -> WorkloadSpec {
    WorkloadSpec::from_toml(&format!(
        "name = \"{name}\"\ncommand = \"sleep\"\nreplicas = 3\n{ports}"
    ))
    .expect("valid spec")
}

fn web() -> WorkloadSpec {
    spec(
        "web",
        "[[ports]]\nname = \"http\"\nport = 8080\n[[ports]]\nname = \"stats\"\nport = 9000\nprotocol = \"udp\"\n",
    )
}

fn node(n: &str) -> NodeId {
    NodeId::new(n).expect("node id")
}

fn entry(index: u32, port: &str, address: &str, state: EndpointState) -> String {
    Endpoint {
        replica: ReplicaId {
            workload: WorkloadName::new("web").expect("name"),
            index,
        },
        port: port.into(),
        address: address.parse().expect("address"),
        state,
    }
    .entry()
}

#[test]
fn entries_round_trip_and_ready_reads_as_before() {
    let ready = entry(2, "http", "10.0.0.2:31000", EndpointState::Ready);
    assert_eq!(ready, "web/2/http=10.0.0.2:31000");
    for state in [
        EndpointState::Ready,
        EndpointState::Unhealthy,
        EndpointState::Draining,
    ] {
        let text = entry(1, "http", "[::1]:80", state);
        assert_eq!(Endpoint::parse(&text).map(|e| e.state), Some(state));
    }
    for bad in [
        "",
        "web/1/http",
        "web/1/http=nowhere",
        "web/x/http=1.2.3.4:5",
        "Web/1/http=1.2.3.4:5",
        "web/1/=1.2.3.4:5",
        "web/1/http=1.2.3.4:5;sleeping",
        "web/1/http=1.2.3.4:99999",
    ] {
        assert_eq!(Endpoint::parse(bad), None, "{bad:?} must not parse");
    }
}

#[test]
fn the_table_leaves_out_down_nodes_and_unknown_ports() {
    let a = [
        entry(0, "http", "10.0.0.1:31000", EndpointState::Ready),
        entry(0, "nope", "10.0.0.1:31001", EndpointState::Ready),
        "other/0/http=10.0.0.1:5".to_string(),
        "garbage".to_string(),
    ];
    let b = [entry(1, "http", "10.0.0.2:31000", EndpointState::Unhealthy)];
    let c = [entry(2, "http", "10.0.0.3:31000", EndpointState::Ready)];
    let (na, nb, nc) = (node("a"), node("b"), node("c"));
    let specs = [web()];
    let table = ServiceTable::build(
        &specs,
        &na,
        [
            (&na, Liveness::Alive, &a[..]),
            (&nb, Liveness::Suspect, &b[..]),
            (&nc, Liveness::Down, &c[..]),
        ],
    );
    let web = &table.services[&WorkloadName::new("web").expect("name")];
    assert_eq!(web.instances.len(), 2, "{:?}", web.instances);
    let ready: Vec<_> = web.ready("http").map(|i| i.node.as_str()).collect();
    assert_eq!(ready, ["a"]);
    assert!(web.instances.iter().all(|i| i.local == (i.node == na)));
}

#[test]
fn names_resolve_in_the_zone_only() {
    let na = node("a");
    let entries = [entry(1, "http", "10.0.0.1:31000", EndpointState::Ready)];
    let specs = [web()];
    let table = ServiceTable::build(&specs, &na, [(&na, Liveness::Alive, &entries[..])]);
    assert!(matches!(
        table.lookup("WEB.svc.starling."),
        Lookup::Service(s) if s.name.as_str() == "web"
    ));
    assert!(matches!(
        table.lookup("_http._tcp.web.svc.starling"),
        Lookup::Port(_, p) if p.port == 8080
    ));
    assert!(matches!(
        table.lookup("_stats._udp.web.svc.starling"),
        Lookup::Port(_, p) if p.protocol == PortProtocol::Udp
    ));
    assert!(matches!(
        table.lookup("r1.web.svc.starling"),
        Lookup::Replica(_, 1)
    ));
    for unknown in [
        "svc.starling",
        "db.svc.starling",
        "_stats._tcp.web.svc.starling",
        "_http._sctp.web.svc.starling",
        "r7.web.svc.starling",
        "a.b.c.d.web.svc.starling",
        "-x-.svc.starling",
    ] {
        assert_eq!(table.lookup(unknown), Lookup::Unknown, "{unknown}");
    }
    for outside in ["example.com", "websvc.starling", "starling", ""] {
        assert_eq!(table.lookup(outside), Lookup::Outside, "{outside}");
    }
}

#[test]
fn env_names_are_shell_words() {
    let name = WorkloadName::new("my-db").expect("name");
    assert_eq!(env_name(&name, "pg-wire"), "STARLING_SVC_MY_DB_PG_WIRE");
}

fn table_of(instances: &[(bool, EndpointState)]) -> Service {
    Service {
        name: WorkloadName::new("web").expect("name"),
        address: Ipv4Addr::new(127, 64, 0, 1),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: PortProtocol::Tcp,
        }],
        instances: instances
            .iter()
            .enumerate()
            .map(|(i, (local, state))| Instance {
                node: node(if *local { "me" } else { "peer" }),
                replica: ReplicaId {
                    workload: WorkloadName::new("web").expect("name"),
                    index: i as u32,
                },
                port: "http".into(),
                address: SocketAddr::from(([10, 0, 0, 1], 30000 + i as u16)),
                state: *state,
                local: *local,
            })
            .collect(),
    }
}

fn states() -> impl Strategy<Value = EndpointState> {
    prop_oneof![
        Just(EndpointState::Ready),
        Just(EndpointState::Unhealthy),
        Just(EndpointState::Draining)
    ]
}

proptest! {
    /// The address of each name depends only on the set of names, never on order or on who
    /// computes it, and no two services share one.
    #[test]
    fn service_addresses_are_stable_and_distinct(
        names in proptest::collection::btree_set("[a-z][a-z0-9]{0,6}", 0..40),
    ) {
        let names: BTreeSet<WorkloadName> = names
            .into_iter()
            .map(|n| WorkloadName::new(n).expect("name"))
            .collect();
        let addresses = service_addresses(&names);
        prop_assert_eq!(addresses.len(), names.len());
        let distinct: BTreeSet<_> = addresses.values().collect();
        prop_assert_eq!(distinct.len(), names.len());
        for address in addresses.values() {
            let o = address.octets();
            prop_assert!(o[0] == 127 && (64..128).contains(&o[1]) && o[3] != 0 && o[3] != 255);
        }
        // A name alone gets its hashed slot: adding names moves only colliding ones.
        for (name, address) in &addresses {
            let alone = service_addresses(&BTreeSet::from([name.clone()]));
            if alone[name] != *address {
                prop_assert!(addresses.values().any(|a| *a == alone[name]));
            }
        }
    }

    /// A pick is always a ready instance not yet tried, a local one whenever one is ready,
    /// and never the busier of the two drawn.
    #[test]
    fn pick_takes_ready_untried_local_first(
        shape in proptest::collection::vec((any::<bool>(), states()), 0..8),
        tried_mask in any::<u8>(),
        load in proptest::collection::vec(0u64..5, 8),
        draw in (any::<u64>(), any::<u64>()),
    ) {
        let service = table_of(&shape);
        let tried: Vec<SocketAddr> = service
            .instances
            .iter()
            .enumerate()
            .filter(|(i, _)| tried_mask & (1 << i) != 0)
            .map(|(_, i)| i.address)
            .collect();
        let active = |a: &SocketAddr| load[(a.port() - 30000) as usize];
        let eligible: Vec<&Instance> = service
            .instances
            .iter()
            .filter(|i| i.state == EndpointState::Ready && !tried.contains(&i.address))
            .collect();
        match pick(&service, "http", &tried, active, draw) {
            None => prop_assert!(eligible.is_empty()),
            Some(chosen) => {
                prop_assert!(eligible.contains(&chosen));
                if eligible.iter().any(|i| i.local) {
                    prop_assert!(chosen.local);
                }
                let pool: Vec<&&Instance> = eligible
                    .iter()
                    .filter(|i| i.local == chosen.local)
                    .collect();
                let least = pool.iter().map(|i| active(&i.address)).min();
                if pool.len() == 2 {
                    prop_assert_eq!(Some(active(&chosen.address)), least);
                }
            }
        }
    }
}

/// Over many draws, the two-choice pick spreads new connections over every ready instance.
#[test]
fn pick_spreads_over_every_ready_instance() {
    let service = table_of(&[
        (false, EndpointState::Ready),
        (false, EndpointState::Ready),
        (false, EndpointState::Draining),
        (false, EndpointState::Ready),
    ]);
    let mut counts = BTreeMap::<SocketAddr, u64>::new();
    let mut state = 1u64;
    for _ in 0..3000 {
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let draw = (next(), next());
        let chosen = pick(
            &service,
            "http",
            &[],
            |a| counts.get(a).copied().unwrap_or(0),
            draw,
        )
        .expect("a ready instance");
        *counts.entry(chosen.address).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|&c| (900..=1100).contains(&c)),
        "{counts:?}"
    );
}
