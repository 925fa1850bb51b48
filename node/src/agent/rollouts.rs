//! The agent's part in rollouts: writing the rollback the core asked for. Which replica moves
//! when, and when a rollout failed, is decided in the core (`starling_core::node`).

use tokio::sync::oneshot;

use starling_protocol::WorkloadName;

use super::Agent;

impl Agent {
    /// Writes the rollback of `workload`'s `revision` if it is still the current revision
    /// (another node's rollback may have arrived first: then there is nothing to do) and
    /// pushes it to peers like an operator's write.
    pub(super) fn roll_back(&mut self, workload: WorkloadName, revision: u64, reason: String) {
        let Some(current) = self.core.desired().get(&workload).cloned() else {
            return;
        };
        if current.number != revision || current.rollout.rollback_of.is_some() {
            return;
        }
        let Some(back) = current.rollback(Some(reason.clone())) else {
            return;
        };
        self.note(format!(
            "rolling {workload} back from revision {revision} to the template of revision {}: {reason}",
            current.previous.as_ref().map_or(0, |p| p.number)
        ));
        let by = format!("{} (auto-rollback)", self.node);
        let outcome = self.write(workload, Some(back), &by);
        // Nobody waits for this answer; the push still goes to every live peer.
        let (reply, _) = oneshot::channel();
        self.answer(outcome, reply);
    }
}
