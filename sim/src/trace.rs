//! The trace hash: a running hash of the processed events (virtual time, kind, node), so two
//! runs of one seed can be compared by one number.

use starling_protocol::hash::mix64;

/// The run's running hashes. See the module docs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trace {
    hash: u64,
}

impl Trace {
    /// A trace for the run with `seed`.
    pub fn new(seed: u64) -> Self {
        Trace { hash: seed }
    }

    /// An event processed at `at_ms`; `code` is its kind and node.
    pub fn event(&mut self, at_ms: u64, code: u64) {
        self.hash = mix64(self.hash ^ at_ms.rotate_left(17) ^ code);
    }

    /// A value the model folds in (what a gossip round delivered).
    pub fn mix(&mut self, value: u64) {
        self.hash = mix64(self.hash ^ value);
    }

    /// The hash of everything so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }
}
