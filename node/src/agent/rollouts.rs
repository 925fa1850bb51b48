//! The agent's part in rollouts: writing the rollback the core asked for, showing a rollout
//! as this node sees it (`starling rollout status`), and the operator's hand on it. Which
//! replica moves when, and when a rollout failed, is decided in the core
//! (`starling_core::node`).
//!
//! Progress is never written anywhere: it is read from this node's status and every live
//! peer's last one, with the same `rollout::observe` every node's gate uses, so what an
//! operator sees is what the fleet decides by. Pause, resume and promote are writes of the
//! current revision with one flag changed: the number stays, so no replica sees a new
//! template, and the write is last-writer-wins like any other.

use tokio::sync::oneshot;

use starling_protocol::WorkloadName;
use starling_protocol::api::{CanaryReport, RolloutReport};
use starling_protocol::desired::{Revision, RevisionId, RolloutControl};
use starling_protocol::placement::Liveness;
use starling_protocol::rollout::{self, Progress};
use starling_protocol::status::ReplicaStatus;
use starling_protocol::wire::{ApiResponse, RolloutAction};

use super::About;
use super::Agent;
use super::handlers::{WriteOutcome, error, not_found};
use starling_protocol::events::EventKind;

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
        self.note(EventKind::RolledBack, About::Workload(&workload), format!(
            "rolling {workload} back from revision {revision} to the template of revision {}: {reason}",
            current.previous.as_ref().map_or(0, |p| p.number)
        ));
        let by = format!("{} (auto-rollback)", self.node);
        let outcome = self.write(workload, Some(back), &by);
        // Nobody waits for this answer; the push still goes to every live peer.
        let (reply, _) = oneshot::channel();
        self.answer(outcome, reply);
    }

    /// `starling rollout status NAME`.
    pub(super) fn rollout_status(&self, name: &WorkloadName) -> ApiResponse {
        match self.rollout_report(name) {
            Some(report) => ApiResponse::Rollout(Box::new(report)),
            None => not_found(name),
        }
    }

    /// The rollout of `name`'s current revision, from this node's status and the last status
    /// of every peer not seen down (a down node's report is history, not a serving replica).
    pub(super) fn rollout_report(&self, name: &WorkloadName) -> Option<RolloutReport> {
        let revision = self.core.desired().get(name)?;
        let view = self.core.view();
        let own = self.core.status();
        let peers = self
            .core
            .peer_statuses()
            .iter()
            .filter(|(node, _)| {
                view.nodes
                    .get(*node)
                    .is_some_and(|n| n.liveness != Liveness::Down)
            })
            .map(|(_, status)| &**status);
        let reports = std::iter::once(&own)
            .chain(peers)
            .flat_map(|s| s.replicas.iter())
            .filter(|(id, _)| &id.workload == name)
            .map(|(id, status)| (id.index, status));
        Some(report(
            revision,
            self.core.desired().revision_id(name),
            reports,
        ))
    }

    /// `starling rollout pause|resume|promote NAME`: the current revision written again with
    /// its flag changed, or a refusal that changes nothing.
    pub(super) fn rollout_control(
        &mut self,
        name: WorkloadName,
        action: RolloutAction,
        by: &str,
    ) -> WriteOutcome {
        let Some(report) = self.rollout_report(&name) else {
            return not_found(&name).into();
        };
        let Some(current) = self.core.desired().get(&name).cloned() else {
            return not_found(&name).into();
        };
        match controlled(&current, action, &report.progress) {
            Err(why) => error(format!("{name}: {why}; nothing was changed")).into(),
            Ok(None) => ApiResponse::Written {
                revision: current.number,
                at: report
                    .id
                    .map_or_else(|| self.hlc.last().clone(), |id| id.at),
                name,
                changed: false,
            }
            .into(),
            Ok(Some(revision)) => {
                // `write` stamps who asked and the lineage; the number must survive it, or
                // every replica would see a new template and move again.
                debug_assert_eq!(revision.number, current.number);
                self.note(
                    EventKind::RolloutStep,
                    About::Workload(&name),
                    format!(
                        "{action} the rollout of {name} revision {}, by {by}",
                        current.number
                    ),
                );
                self.write(name, Some(revision), by)
            }
        }
    }
}

/// The rollout of `revision` from status reports (replica index, status) of its replicas.
pub(super) fn report<'a>(
    revision: &Revision,
    id: Option<RevisionId>,
    reports: impl IntoIterator<Item = (u32, &'a ReplicaStatus)>,
) -> RolloutReport {
    let seen = rollout::observe(revision.number, reports);
    let spec = &revision.spec;
    let control = &revision.rollout;
    RolloutReport {
        name: spec.name.clone(),
        revision: revision.number,
        id,
        previous: revision.previous.as_ref().map(|p| p.number),
        progress: Progress::of(spec.replicas, &seen),
        paused: control.paused,
        canary: spec.update.canary.map(|c| CanaryReport {
            count: c.count,
            promoted: control.promoted,
            settled: rollout::canaries_settled(revision, &seen),
            auto_promote_after_ms: c.auto_promote_after_ms,
        }),
        rollback_of: control.rollback_of.clone(),
        auto_rollback: spec.update.auto_rollback,
    }
}

/// The revision `action` writes over `current` (`None`: it already says so), or why there
/// is nothing to act on. `progress` is this node's view of the rollout.
pub(super) fn controlled(
    current: &Revision,
    action: RolloutAction,
    progress: &Progress,
) -> Result<Option<Revision>, String> {
    let number = current.number;
    let control = &current.rollout;
    let rolling = || {
        if current.previous.is_none() {
            return Err(format!(
                "revision {number} is the first one, so there is no rollout to {action}"
            ));
        }
        if progress.complete() {
            return Err(format!(
                "the rollout of revision {number} is complete: nothing to {action}"
            ));
        }
        Ok(())
    };
    let with = |rollout: RolloutControl| {
        Some(Revision {
            rollout,
            ..current.clone()
        })
    };
    match action {
        RolloutAction::Pause if control.paused => Ok(None),
        RolloutAction::Pause => rolling().map(|()| {
            with(RolloutControl {
                paused: true,
                ..control.clone()
            })
        }),
        // A resume is always allowed: a paused revision must never be stuck paused.
        RolloutAction::Resume if !control.paused => Ok(None),
        RolloutAction::Resume => Ok(with(RolloutControl {
            paused: false,
            ..control.clone()
        })),
        RolloutAction::Promote if current.spec.update.canary.is_none() => Err(format!(
            "revision {number} is not a canary rollout ([update] has no canary): nothing to \
             promote"
        )),
        RolloutAction::Promote if control.promoted => Ok(None),
        RolloutAction::Promote => rolling().map(|()| {
            with(RolloutControl {
                promoted: true,
                ..control.clone()
            })
        }),
    }
}

#[cfg(test)]
mod tests;
