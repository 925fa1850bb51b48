use std::collections::BTreeMap;

use proptest::prelude::*;

use super::seal::{Draw, NodeKeys, SealError, open_for, seal_secret, seal_to};
use super::*;
use crate::desired::{DesiredState, Entry};

fn node(n: &str) -> NodeId {
    NodeId::new(n).expect("valid")
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::secret(WorkloadName::new(name).expect("valid"))
}

fn at(ms: u64, n: &str) -> Timestamp {
    Timestamp {
        physical_ms: ms,
        logical: 0,
        node: node(n),
    }
}

fn keys(seed: u8) -> NodeKeys {
    NodeKeys::from_secret([seed; 32])
}

fn draw(seed: u8) -> Draw {
    Draw {
        id: u128::from(seed) * 7 + 1,
        data_key: [seed.wrapping_add(100); 32],
        nonce: [seed; 24],
    }
}

/// A secret version sealed to `recipients` (name, key seed).
fn sealed(name: &str, value: &[u8], recipients: &[(&str, u8)], seed: u8) -> ObjectEntry {
    let k = key(name);
    let entries = vec![("password".to_string(), value.to_vec())];
    let (version, data_key) = seal_secret(&k, entries, draw(seed)).expect("seals");
    let seals = recipients
        .iter()
        .map(|(n, s)| {
            let seal = seal_to(
                &data_key,
                &k,
                version.id,
                &node(n),
                &keys(*s).public(),
                [seed ^ s; 32],
            )
            .expect("seals to the node");
            (node(n), seal)
        })
        .collect();
    ObjectEntry {
        key: k,
        register: LWWReg {
            val: Some(version),
            marker: at(u64::from(seed) * 10, "w"),
        },
        seals,
    }
}

#[test]
fn a_recipient_opens_the_secret_and_no_one_else_does() {
    let entry = sealed("db", b"MARKER-hunter2", &[("a", 1), ("c", 3)], 9);
    entry.check().expect("well formed");
    let plain = open_for(&entry, &node("c"), &keys(3)).expect("c opens it");
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0].0, "password");
    assert_eq!(&plain[0].1[..], b"MARKER-hunter2");
    // b holds the whole entry but no seal.
    assert!(matches!(
        open_for(&entry, &node("b"), &keys(2)),
        Err(SealError::NotSealed { .. })
    ));
    // a's seal with c's key, or c's name with a's key: nothing opens.
    assert!(open_for(&entry, &node("a"), &keys(3)).is_err());
    assert!(open_for(&entry, &node("c"), &keys(1)).is_err());
    // The plaintext appears nowhere in what travels.
    let bytes = postcard::to_allocvec(&entry).expect("encodes");
    assert!(!bytes.windows(6).any(|w| w == b"MARKER"));
}

#[test]
fn a_removed_node_cannot_open_a_version_written_after_its_removal() {
    // x ran the workload: it was sealed the first version and still has its private key.
    let before = sealed("db", b"old", &[("a", 1), ("x", 24)], 5);
    assert!(open_for(&before, &node("x"), &keys(24)).is_ok());
    // After `node remove x`, the writer seals the next version to the members only.
    let after = sealed("db", b"new", &[("a", 1)], 6);
    let mut state = DesiredState::new();
    state.merge_object(before);
    state.merge_object(after);
    let current = state.object_entry(&key("db")).expect("present");
    assert_eq!(
        current.seals.keys().cloned().collect::<Vec<_>>(),
        vec![node("a")],
        "the old version's seals are gone with it"
    );
    assert!(open_for(&current, &node("x"), &keys(24)).is_err());
    // Even a seal x kept from the old version does not open the new one.
    let mut forged = current.clone();
    let old_seal = sealed("db", b"old", &[("x", 24)], 5).seals[&node("x")].clone();
    forged.seals.insert(node("x"), old_seal);
    assert!(
        forged.check().is_err(),
        "a seal of another version is refused"
    );
    assert!(open_for(&forged, &node("x"), &keys(24)).is_err());
    let plain = open_for(&current, &node("a"), &keys(1)).expect("a opens");
    assert_eq!(&plain[0].1[..], b"new");
}

#[test]
fn altered_ciphertext_or_a_moved_version_fails_to_open() {
    let entry = sealed("db", b"secret-value", &[("a", 1)], 3);
    let mut altered = entry.clone();
    if let Some(ObjectVersion {
        body: Body::Sealed { ciphertext, .. },
        ..
    }) = altered.register.val.as_mut()
    {
        ciphertext[0] ^= 1;
    }
    assert!(matches!(
        open_for(&altered, &node("a"), &keys(1)),
        Err(SealError::Corrupt { .. })
    ));
    // The same bytes under another secret's name: the associated data differs.
    let mut moved = entry.clone();
    moved.key = key("other");
    assert!(open_for(&moved, &node("a"), &keys(1)).is_err());
}

#[test]
fn check_refuses_secrets_in_clear_and_malformed_versions() {
    let clear = ObjectVersion::clear(1, vec![("a".into(), b"x".to_vec())]).expect("valid");
    let as_secret = ObjectEntry {
        key: key("db"),
        register: LWWReg {
            val: Some(clear.clone()),
            marker: at(1, "w"),
        },
        seals: BTreeMap::new(),
    };
    let err = as_secret.check().expect_err("refused");
    assert!(err.to_string().contains("in clear"), "{err}");
    let config = ObjectEntry {
        key: ObjectKey::config(WorkloadName::new("app").expect("valid")),
        ..as_secret.clone()
    };
    config.check().expect("a config in clear is fine");
    let mut lying = config.clone();
    if let Some(v) = lying.register.val.as_mut() {
        v.size = 99;
    }
    assert!(lying.check().is_err());
    assert!(check_entries(&[("../etc".into(), vec![])]).is_err());
    assert!(check_entries(&[("a".into(), vec![0; OBJECT_BYTES_MAX + 1])]).is_err());
    assert!(check_entries(&[("a".into(), vec![1]), ("a".into(), vec![2])]).is_err());
}

/// Any mix of versions and reseals of one secret, merged in any order and grouping, ends in
/// the same state (the register is LWW; the seals a join filtered to the winning version).
fn arb_entry() -> impl Strategy<Value = ObjectEntry> {
    (1u8..4, proptest::collection::vec((0usize..4, 0u8..3), 0..4)).prop_map(|(v, seals)| {
        let names = ["a", "b", "c", "d"];
        let mut entry = sealed("db", b"v", &[], v);
        let id = entry.register.val.as_ref().map(|x| x.id).unwrap_or(0);
        for (n, salt) in seals {
            entry.seals.insert(
                node(names[n]),
                Seal {
                    version: id,
                    ephemeral: [salt; 32],
                    wrapped: vec![salt; seal::WRAPPED_BYTES],
                },
            );
        }
        entry
    })
}

fn merged(entries: &[ObjectEntry]) -> DesiredState {
    let mut s = DesiredState::new();
    for e in entries {
        s.merge_any(Entry::Object(e.clone()));
    }
    s
}

proptest! {
    #[test]
    fn object_merge_is_commutative_associative_and_idempotent(
        a in arb_entry(), b in arb_entry(), c in arb_entry()
    ) {
        let abc = merged(&[a.clone(), b.clone(), c.clone()]);
        let cba = merged(&[c.clone(), b.clone(), a.clone()]);
        prop_assert_eq!(&abc, &cba);
        let mut left = merged(&[a.clone(), b.clone()]);
        left.merge(&merged(std::slice::from_ref(&c)));
        let mut right = merged(std::slice::from_ref(&a));
        right.merge(&merged(&[b.clone(), c.clone()]));
        prop_assert_eq!(&left, &right);
        let mut twice = abc.clone();
        twice.merge(&abc);
        prop_assert_eq!(&twice, &abc);
        prop_assert_eq!(abc.digest(), cba.digest());
        let entry = abc.object_entry(&key("db")).expect("present");
        let id = entry.register.val.as_ref().map(|v| v.id);
        prop_assert!(entry.seals.values().all(|s| Some(s.version) == id));
    }
}
