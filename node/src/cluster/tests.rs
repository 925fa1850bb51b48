use super::*;

#[test]
fn material_round_trips_and_tokens_are_checked_by_any_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeId::new("n1").expect("id");
    let m = Membership::init("edge", &node).expect("init");
    m.save(dir.path()).expect("save");
    assert!(Membership::exists(dir.path()));
    let loaded = Membership::load(dir.path()).expect("load");
    assert_eq!(loaded.gossip_keys, m.gossip_keys);
    let token = m.token(vec!["127.0.0.1:7946".into()]).expect("token");
    assert!(
        loaded.check_secret(&token.secret).is_some(),
        "a member accepts it"
    );
    let mut forged = token.secret;
    forged[12] ^= 1;
    assert!(
        loaded.check_secret(&forged).is_none(),
        "a forged secret is refused"
    );
    let mut rotated = m.clone();
    let id = rotated.new_key();
    assert_eq!(
        rotated.gossip_keys[0].0, 1,
        "a new key is installed, not used"
    );
    let mut peer = loaded.clone();
    assert!(
        peer.merge_keys(&rotated.gossip_keys, 1),
        "the peer learns the key"
    );
    assert_eq!(peer.gossip_keys[0].0, 1);
    assert!(
        peer.merge_keys(&rotated.gossip_keys, id),
        "then switches to it"
    );
    assert_eq!(peer.gossip_keys[0].0, id);
    assert!(
        !peer.merge_keys(&m.gossip_keys, 1),
        "an older primary does not win back"
    );
    let other = Membership::init("edge", &node).expect("init");
    assert!(
        other.check_secret(&token.secret).is_none(),
        "another cluster refuses it"
    );
    assert!(m.tls().is_ok());
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn member_and_operator_material_is_private() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let m = Membership::init("edge", &NodeId::new("n1").expect("id")).expect("init");
    m.save(&data).expect("save");
    Membership::write_advertise(&data, "127.0.0.1:7946".parse().expect("addr")).expect("advertise");
    let cluster = data.join("cluster");
    assert_eq!(mode(&cluster), 0o700);
    let mut files = 0;
    for entry in fs::read_dir(&cluster).expect("list") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files += 1;
    }
    assert!(
        files >= 8,
        "name, ca.pem, ca.key, gossip.keys, seeds, node.*, advertise"
    );
    let client = ClientDir {
        dir: root.path().join("operator"),
    };
    client
        .write(
            &m,
            &NodeId::new("admin").expect("id"),
            OperatorRole::Admin,
            &[],
        )
        .expect("user");
    assert_eq!(mode(&client.dir), 0o700);
    for name in ["user.key", "user.pem", "ca.pem", "peers"] {
        assert_eq!(mode(&client.dir.join(name)), 0o600, "{name}");
    }
    assert!(check_key_permissions(&data).is_ok());
}

#[test]
fn a_key_open_to_others_is_refused_by_name_mode_and_fix() {
    let root = tempfile::tempdir().expect("tempdir");
    let m = Membership::init("edge", &NodeId::new("n1").expect("id")).expect("init");
    m.save(root.path()).expect("save");
    let key = root.path().join("cluster/node.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = check_key_permissions(root.path()).expect_err("refused");
    assert_eq!(err.0, vec![(key.clone(), 0o644)]);
    let text = err.to_string();
    assert!(text.contains(&key.display().to_string()), "{text}");
    assert!(text.contains("0644"), "{text}");
    assert!(
        text.contains(&format!("chmod 600 {}", key.display())),
        "{text}"
    );
    let ca = root.path().join("cluster/ca.key");
    fs::set_permissions(&ca, fs::Permissions::from_mode(0o620)).expect("chmod");
    assert_eq!(
        check_key_permissions(root.path())
            .expect_err("refused")
            .0
            .len(),
        2,
        "every exposed key is named, group-writable ones too"
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::set_permissions(&ca, fs::Permissions::from_mode(0o400)).expect("chmod");
    assert!(check_key_permissions(root.path()).is_ok());
    assert!(
        check_key_permissions(&root.path().join("elsewhere")).is_ok(),
        "nothing to check yet: a node that has not joined"
    );
}

#[test]
fn join_passes_back_off_doubling_to_a_cap_and_spread_boards_apart() {
    let a = NodeId::new("board-01").expect("id");
    let waits: Vec<u128> = (1..=8).map(|p| join_backoff(&a, p).as_millis()).collect();
    for (pass, w) in waits.iter().enumerate() {
        let base = 1_000u128 << pass.min(4);
        assert!(
            (base..=base + base / 2).contains(w),
            "pass {}: {w} ms",
            pass + 1
        );
    }
    assert_eq!(waits[5], waits[7], "capped");
    // Boards that failed together come back at different moments.
    let distinct: std::collections::BTreeSet<u128> = (0..20)
        .map(|i| {
            let n = NodeId::new(format!("board-{i:02}")).expect("id");
            join_backoff(&n, 3).as_millis()
        })
        .collect();
    assert!(distinct.len() >= 15, "{distinct:?}");
}
