//! The trace hashes: running hashes of what a run did, so two runs of one seed can be compared
//! by one number each.
//!
//! - The trace hash covers every processed event (its virtual time, kind and node), what it
//!   carried (the message delivered, the runtime's report, the verdict), and every action each
//!   core decided (start or stop of which replica and instance at which revision, the status it
//!   published, the assignment it persisted, lease campaigns). A changed decision changes it
//!   even when nothing changes when.
//! - The schedule hash covers the events' times, kinds and nodes alone. Two runs with equal
//!   schedules and different trace hashes decided differently at the same moments.
//!
//! Payloads are hashed through their postcard encoding, the wire's own, folded as it is
//! written (no buffer), so the hash is stable across builds and platforms as the encoding is.

use postcard::ser_flavors::Flavor;
use serde::Serialize;
use starling_core::node::Action;
use starling_protocol::hash::mix64;

/// The run's running hashes. See the module docs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trace {
    hash: u64,
    schedule: u64,
}

impl Trace {
    /// The hashes of a run with `seed`, before its first event.
    pub fn new(seed: u64) -> Self {
        Trace {
            hash: seed,
            schedule: seed,
        }
    }

    /// An event processed at `at_ms`; `code` is its kind and node.
    pub fn event(&mut self, at_ms: u64, code: u64) {
        let step = at_ms.rotate_left(17) ^ code;
        self.hash = mix64(self.hash ^ step);
        self.schedule = mix64(self.schedule ^ step);
    }

    /// What the current event carries (or any value that tells what happened in it).
    pub fn payload(&mut self, value: &(impl Serialize + ?Sized)) {
        self.hash = mix64(self.hash ^ fold(value));
    }

    /// Node `i`'s core decided `action`.
    pub fn action(&mut self, i: usize, action: &Action) {
        self.payload(&(i as u64, action));
    }

    /// Everything so far: the trace hash.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The schedule so far: the schedule hash.
    pub fn schedule(&self) -> u64 {
        self.schedule
    }
}

/// The hash of `value`'s postcard encoding.
fn fold(value: &(impl Serialize + ?Sized)) -> u64 {
    match postcard::serialize_with_flavor(value, Fold::default()) {
        Ok(hash) => hash,
        // Postcard fails on a full buffer (a fold has none) or on a value serde cannot
        // describe with lengths up front (none of the simulator's types): a bug, not a run.
        Err(e) => panic!("the trace cannot encode a payload: {e}"),
    }
}

/// A postcard output that folds the bytes into a hash, eight at a time, instead of keeping
/// them.
#[derive(Default)]
struct Fold {
    hash: u64,
    word: u64,
    bytes: u64,
}

impl Flavor for Fold {
    type Output = u64;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.word = self.word << 8 | u64::from(byte);
        self.bytes += 1;
        if self.bytes.is_multiple_of(8) {
            self.hash = mix64(self.hash ^ self.word);
            self.word = 0;
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<u64> {
        // The length goes in, so a short tail of zero bytes still counts.
        Ok(mix64(self.hash ^ self.word ^ self.bytes.rotate_left(32)))
    }
}

#[cfg(test)]
mod tests {
    use starling_core::node::Action;
    use starling_protocol::placement::ReplicaId;
    use starling_protocol::spec::WorkloadSpec;

    use super::*;

    fn start(revision: u64, instance: u64) -> Action {
        let spec = WorkloadSpec::from_toml("name = \"web\"\ncommand = \"web\"\n").expect("spec");
        Action::Start {
            replica: ReplicaId {
                workload: spec.name.clone(),
                index: 0,
            },
            instance,
            revision,
            spec: Box::new(spec),
        }
    }

    /// The same events with the same decisions: one hash. A decision that differs in its
    /// payload alone (the revision, the instance): another trace hash, the same schedule hash.
    #[test]
    fn a_changed_decision_changes_the_trace_hash_but_not_the_schedule() {
        let run = |action: Action| {
            let mut trace = Trace::new(7);
            trace.event(1_000, 3 | 2 << 8);
            trace.action(2, &action);
            trace.event(1_050, 4 | 2 << 8);
            trace
        };
        let (a, b) = (run(start(1, 10)), run(start(1, 10)));
        assert_eq!((a.hash(), a.schedule()), (b.hash(), b.schedule()));
        for changed in [run(start(2, 10)), run(start(1, 11))] {
            assert_ne!(a.hash(), changed.hash());
            assert_eq!(a.schedule(), changed.schedule());
        }
        let mut other_node = Trace::new(7);
        other_node.event(1_000, 3 | 2 << 8);
        other_node.action(3, &start(1, 10));
        other_node.event(1_050, 4 | 2 << 8);
        assert_ne!(a.hash(), other_node.hash(), "who decided counts too");
    }

    #[test]
    fn a_fold_sees_every_byte_and_the_length() {
        let hashes: Vec<u64> = [&[][..], &[0], &[0, 0], &[1], &[0; 8], &[0; 9], &[1; 9]]
            .iter()
            .map(fold)
            .collect();
        for (k, h) in hashes.iter().enumerate() {
            assert!(!hashes[..k].contains(h), "{hashes:?}");
        }
        assert_eq!(fold(&[1u8, 2, 3][..]), fold(&[1u8, 2, 3][..]));
    }
}
