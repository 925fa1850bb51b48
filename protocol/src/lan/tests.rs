use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use proptest::prelude::*;

use super::*;

fn node(name: &str) -> NodeId {
    NodeId::new(name).expect("valid name")
}

fn member(name: &str, cluster: &str) -> Announcement {
    Announcement {
        node: node(name),
        base: "10.0.0.5:7946".parse().expect("addr"),
        role: Role::Member {
            cluster: cluster.into(),
        },
    }
}

const TAG: &str = "00112233445566ff";

#[test]
fn announcements_round_trip_and_bad_ones_name_the_part() {
    let m = member("board-7", TAG);
    assert_eq!(
        m.encode(),
        "starling/1 member board-7 10.0.0.5:7946 00112233445566ff"
    );
    assert_eq!(Announcement::parse(&m.encode()), Ok(m));
    let p = Announcement {
        node: node("kiosk"),
        base: "0.0.0.0:7946".parse().expect("addr"),
        role: Role::Pending,
    };
    assert_eq!(Announcement::parse(&p.encode()), Ok(p));

    let err = |text: &str| Announcement::parse(text).expect_err(text);
    assert!(err("ipfs/0.1.0").contains("not a starling announcement"));
    assert!(err("starling/1 boss x 1.2.3.4:1").contains("unknown role"));
    assert!(err("starling/1 pending Bad_Name 1.2.3.4:1").contains("node name"));
    assert!(err("starling/1 pending ok here").contains("base address"));
    assert!(err("starling/1 member ok 1.2.3.4:1 xyz").contains("cluster tag"));
    // A future version is not misread as this one.
    assert!(err("starling/2 pending ok 1.2.3.4:1").contains("not a starling announcement"));
}

#[test]
fn a_member_seeds_its_own_cluster_at_the_observed_address_and_lists_waiting_devices() {
    let me = Role::Member {
        cluster: TAG.into(),
    };
    let observed = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20));
    // The announcement claims 10.0.0.5; the seed is where the connection came from.
    assert_eq!(
        classify(&me, &member("b", TAG), observed),
        Found::Seed {
            node: node("b"),
            base: SocketAddr::new(observed, 7946),
        }
    );
    assert!(matches!(
        classify(&me, &member("b", "ffffffffffffffff"), observed),
        Found::Ignored(_)
    ));
    let waiting = Announcement {
        role: Role::Pending,
        ..member("new-board", TAG)
    };
    assert_eq!(
        classify(&me, &waiting, observed),
        Found::Waiting(node("new-board"))
    );
    // A waiting device acts on nothing it hears.
    assert!(matches!(
        classify(&Role::Pending, &member("b", TAG), observed),
        Found::Ignored(_)
    ));
}

fn addr(last: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), 7946)
}

#[test]
fn the_book_lists_waits_expires_and_refuses_ambiguous_names() {
    let mut book = PendingBook::default();
    book.seen("peer-a", node("a"), addr(1), 1_000);
    book.seen("peer-b", node("b"), addr(2), 2_000);
    book.seen("peer-a", node("a"), addr(1), 5_000);
    let rows = book.rows(6_000);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].node, node("a"));
    assert_eq!(rows[0].waiting_ms, 5_000, "waiting counts from first seen");
    assert_eq!(rows[0].address, "10.0.0.1:7946");

    let picked = book.pick(&[node("a"), node("zz")], false);
    assert_eq!(picked[0], (node("a"), Ok("peer-a".to_string())));
    assert!(
        picked[1]
            .1
            .as_ref()
            .expect_err("not waiting")
            .contains("not waiting")
    );

    // Two devices announcing one name: neither is admitted by name or by --all.
    book.seen("peer-c", node("a"), addr(3), 6_000);
    let all = book.pick(&[], true);
    assert_eq!(all.len(), 2);
    let a = all.iter().find(|(n, _)| *n == node("a")).expect("a listed");
    assert!(a.1.as_ref().expect_err("ambiguous").contains("2 devices"));
    let b = all.iter().find(|(n, _)| *n == node("b")).expect("b listed");
    assert_eq!(b.1, Ok("peer-b".to_string()));

    // mDNS still holds a's second device: touched, it outlives the expiry below.
    book.touch("peer-c", 60_000);
    assert_eq!(book.peers().len(), 3);
    // b joined: it now announces itself a member.
    book.forget_node(&node("b"));
    // a's first device stopped being seen long ago.
    book.expire(66_000, 59_000);
    let left: Vec<String> = book.rows(70_000).into_iter().map(|r| r.peer).collect();
    assert_eq!(left, vec!["peer-c".to_string()]);
}

#[test]
fn the_book_is_bounded_and_drops_the_device_seen_longest_ago() {
    let mut book = PendingBook::default();
    for i in 0..PENDING_MAX as u64 {
        book.seen(&format!("p{i}"), node(&format!("n{i}")), addr(1), 1_000 + i);
    }
    book.seen("p-new", node("fresh"), addr(2), 10_000_000);
    let rows = book.rows(10_000_000);
    assert_eq!(rows.len(), PENDING_MAX);
    assert!(rows.iter().all(|r| r.peer != "p0"), "the oldest went");
    assert!(rows.iter().any(|r| r.peer == "p-new"));
}

proptest! {
    /// Announcements come from anyone on the LAN: parsing never panics, and what parses
    /// encodes back to the same text.
    #[test]
    fn parsing_any_announcement_never_panics(text in ".{0,120}") {
        if let Ok(a) = Announcement::parse(&text) {
            prop_assert_eq!(Announcement::parse(&a.encode()), Ok(a));
        }
    }

    #[test]
    fn parsing_near_announcements_never_panics(
        role in prop::sample::select(vec!["member", "pending", "x", ""]),
        name in "[a-z0-9.-]{0,70}",
        base in "[0-9.:]{0,24}",
        tag in "[0-9a-fA-F]{0,20}",
    ) {
        let text = format!("starling/1 {role} {name} {base} {tag}");
        let _ = Announcement::parse(&text);
        let _ = Announcement::parse(text.trim_end());
    }
}
