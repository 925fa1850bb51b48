use starling_protocol::WorkloadName;
use starling_protocol::placement::{Capacity, NodeView, ReplicaId, Unplaceable};
use starling_protocol::spec::RuntimeKind;
use starling_protocol::status::ReplicaStatus;

use super::*;

fn id(name: &str) -> NodeId {
    NodeId::new(name).expect("valid node id")
}

fn node(name: &str, liveness: Liveness, generation: u64) -> NodeRow {
    NodeRow {
        view: NodeView {
            id: id(name),
            labels: Default::default(),
            arch: "x86_64".into(),
            runtimes: [RuntimeKind::Process].into(),
            capacity: Capacity::default(),
            weight: 1,
            liveness,
            departure: Departure::Staying,
        },
        departure: Departure::Staying,
        replicas: 0,
        reserved: Capacity::default(),
        usage: None,
        store_error: None,
        generation,
    }
}

fn workload(name: &str, replicas: u32) -> WorkloadRow {
    WorkloadRow {
        name: WorkloadName::new(name).expect("valid workload name"),
        revision: 1,
        available: 0,
        replicas,
        runtime: RuntimeKind::Process,
        command: Some("sleep".into()),
        image: None,
    }
}

fn replica(
    workload: &str,
    index: u32,
    on: &str,
    liveness: Liveness,
    state: ReplicaState,
) -> ReplicaRow {
    ReplicaRow {
        replica: ReplicaId {
            workload: WorkloadName::new(workload).expect("valid workload name"),
            index,
        },
        place: ReplicaPlace::On {
            node: id(on),
            liveness: Some(liveness),
            status: ReplicaStatus {
                revision: 1,
                state,
                healthy: state == ReplicaState::Running,
                restarts: 0,
                last_exit_code: None,
                reason: None,
                settled: true,
                outgoing: None,
            },
        },
    }
}

/// Three nodes, node-2 restarted into generation 200; `web` has 3 replicas all running.
fn fleet() -> Listings {
    use Liveness::Alive;
    use ReplicaState::Running;
    Listings {
        nodes: vec![
            node("node-1", Alive, 100),
            node("node-2", Alive, 200),
            node("node-3", Alive, 100),
        ],
        workloads: vec![workload("web", 3)],
        replicas: vec![
            replica("web", 0, "node-1", Alive, Running),
            replica("web", 1, "node-2", Alive, Running),
            replica("web", 2, "node-3", Alive, Running),
        ],
    }
}

const HEALTHY_AFTER_150: Want = Want {
    restarted_after: Some(150),
    healthy: true,
};

#[test]
fn a_node_back_in_a_newer_life_with_every_replica_running_has_rejoined() {
    assert_eq!(
        rejoined(&id("node-2"), HEALTHY_AFTER_150, &fleet()),
        Ok(200)
    );
}

#[test]
fn the_same_generation_is_not_a_restart() {
    let why = rejoined(
        &id("node-2"),
        Want {
            restarted_after: Some(200),
            healthy: false,
        },
        &fleet(),
    )
    .expect_err("generation 200 is not newer than 200");
    assert!(why.contains("node-2 still runs generation 200"), "{why}");
}

#[test]
fn an_unknown_or_unheard_node_is_waited_for_by_name() {
    let why = rejoined(&id("node-9"), HEALTHY_AFTER_150, &fleet()).expect_err("not a member");
    assert!(why.contains("node-9 is not a member"), "{why}");
    let mut listings = fleet();
    listings.nodes[1].generation = 0;
    let why = rejoined(&id("node-2"), HEALTHY_AFTER_150, &listings).expect_err("never heard");
    assert!(why.contains("node-2 has not been heard"), "{why}");
}

#[test]
fn a_new_life_that_is_not_alive_or_still_departing_is_not_back() {
    let mut listings = fleet();
    listings.nodes[1].view.liveness = Liveness::Suspect;
    let why = rejoined(&id("node-2"), HEALTHY_AFTER_150, &listings).expect_err("suspect");
    assert!(why.contains("node-2 is suspect"), "{why}");
    let mut listings = fleet();
    listings.nodes[1].departure = Departure::Restarting { back_by_ms: 1 };
    let why = rejoined(&id("node-2"), HEALTHY_AFTER_150, &listings).expect_err("restarting");
    assert!(why.contains("announced a restart"), "{why}");
}

#[test]
fn a_missing_replica_keeps_the_wait_going_and_is_named() {
    let mut listings = fleet();
    // The restarted node's new life has not reported its replica yet.
    listings.replicas.remove(1);
    let why = rejoined(&id("node-2"), HEALTHY_AFTER_150, &listings).expect_err("2 of 3");
    assert_eq!(why, "web: 2/3 replicas running healthy");
    // Without --healthy only the node itself counts.
    let only_node = Want {
        restarted_after: Some(150),
        healthy: false,
    };
    assert_eq!(rejoined(&id("node-2"), only_node, &listings), Ok(200));
}

#[test]
fn pending_unhealthy_or_down_copies_do_not_count() {
    for (state, liveness) in [
        (ReplicaState::Claimed, Liveness::Alive),
        (ReplicaState::Starting, Liveness::Alive),
        (ReplicaState::BackingOff, Liveness::Alive),
        (ReplicaState::CrashLoop, Liveness::Alive),
        (ReplicaState::Running, Liveness::Down),
    ] {
        let mut listings = fleet();
        listings.replicas[1] = replica("web", 1, "node-2", liveness, state);
        let why = rejoined(&id("node-2"), HEALTHY_AFTER_150, &listings)
            .expect_err("one replica is not available");
        assert!(
            why.starts_with("web: 2/3"),
            "{state:?} on a {liveness:?} node: {why}"
        );
    }
    let mut listings = fleet();
    if let ReplicaPlace::On { status, .. } = &mut listings.replicas[1].place {
        status.healthy = false;
    }
    assert!(rejoined(&id("node-2"), HEALTHY_AFTER_150, &listings).is_err());
}

#[test]
fn two_copies_of_one_replica_do_not_hide_a_missing_one() {
    let mut listings = fleet();
    // A move in progress: replica 0 twice, replica 2 nowhere.
    listings.replicas[2] = replica("web", 0, "node-3", Liveness::Alive, ReplicaState::Running);
    let why = rejoined(&id("node-2"), HEALTHY_AFTER_150, &listings).expect_err("2 missing");
    assert_eq!(why, "web: 2/3 replicas running healthy");
}

#[test]
fn unplaced_replicas_are_reported_and_leftovers_past_the_count_ignored() {
    let mut listings = fleet();
    listings.workloads.push(workload("db", 2));
    listings.replicas.push(replica(
        "db",
        0,
        "node-1",
        Liveness::Alive,
        ReplicaState::Running,
    ));
    listings.replicas.push(ReplicaRow {
        replica: ReplicaId {
            workload: WorkloadName::new("db").expect("valid"),
            index: 1,
        },
        place: ReplicaPlace::Unplaced {
            revision: 1,
            why: Unplaceable::NoNodes,
        },
    });
    let why = rejoined(&id("node-2"), HEALTHY_AFTER_150, &listings).expect_err("db short");
    assert_eq!(why, "db: 1/2 replicas running healthy, 1 unplaced");
    // Scaled down to 1: index 1 is no longer wanted, so db is complete.
    listings.workloads[1].replicas = 1;
    listings.replicas.pop();
    listings.replicas.push(replica(
        "db",
        1,
        "node-3",
        Liveness::Alive,
        ReplicaState::Stopping,
    ));
    assert_eq!(
        rejoined(&id("node-2"), HEALTHY_AFTER_150, &listings),
        Ok(200)
    );
}

#[test]
fn a_replica_its_policy_left_exited_counts_as_in_place() {
    let mut listings = fleet();
    listings.replicas[1] = replica("web", 1, "node-2", Liveness::Alive, ReplicaState::Exited);
    assert_eq!(
        rejoined(&id("node-2"), HEALTHY_AFTER_150, &listings),
        Ok(200)
    );
}
