//! The agent's side of leader election: drives `crate::election` over QUIC and gossip.

use starling_protocol::WorkloadName;

use super::Agent;
use crate::core::LeaseWant;

impl Agent {
    pub(super) fn campaign(&mut self, lease: WorkloadName, want: LeaseWant) {
        let _ = (lease, want);
    }

    pub(super) fn withdraw(&mut self, lease: WorkloadName) {
        let _ = lease;
    }
}
