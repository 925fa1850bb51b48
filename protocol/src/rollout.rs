//! Rolling updates with no master: which replica may move to a new revision, now.
//!
//! Every node runs the same pure [`gate`] over the replicas' gossiped status, for the
//! replicas it runs itself, and moves one only when the gate opens. Replicas move in index
//! order, in batches of `update.batch_size` (a canary rollout's first batch is its canaries,
//! and the rest wait for a promote). A batch may begin only when every replica of the batches
//! before it runs the new revision and has been healthy for `update.min_healthy`; within a
//! batch, a replica moves only if the budget still holds when every replica before it in the
//! batch moves too:
//! - start-first: the old instance keeps serving until the new one settles, so a move costs a
//!   surge instance: at most `max_surge` serving replicas of the batch move at once;
//! - stop-first: a move takes the replica down, so the replicas outside the moving part of
//!   the batch must still leave at least `replicas - max_unavailable` serving.
//!
//! Why this is safe without coordination: each replica's decision assumes that every replica
//! before it in its batch moves too, so the set of replicas that actually move at once is
//! always one that the last of them checked. A stale view only sees less progress (status
//! reports can be late, never early), so it holds a replica back; it never lets one go early.
//! A replica that is not serving anyway (crash looping, not started) moves at no cost.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::desired::Revision;
use crate::spec::UpdateOrder;
use crate::status::{ReplicaState, ReplicaStatus};

/// What the fleet's reports say of one replica (all reports of its index merged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// Some report runs the target revision.
    pub on_target: bool,
    /// Some report runs the target revision healthy for `min_healthy`: this replica is done.
    pub updated: bool,
    /// Some instance of it serves (the current one, or an old one beside it).
    pub serving: bool,
    /// A report on the target revision is crash looping.
    pub failing: bool,
}

/// The replicas of one workload as reported, by index.
pub type Observations = BTreeMap<u32, Observed>;

/// Merges status reports (index, status) of one workload's replicas against `target`.
pub fn observe<'a>(
    target: u64,
    reports: impl IntoIterator<Item = (u32, &'a ReplicaStatus)>,
) -> Observations {
    let mut seen = Observations::new();
    for (index, status) in reports {
        let o = seen.entry(index).or_default();
        let on_target = status.revision == target && status.is_active();
        o.on_target |= on_target;
        // Done once its old instance is gone too: until then it still counts as a surge.
        o.updated |=
            on_target && status.settled && status.is_available() && status.outgoing.is_none();
        o.serving |= status.is_serving();
        o.failing |= on_target && status.state == ReplicaState::CrashLoop;
    }
    seen
}

/// Whether a replica may move to the target revision now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Gate {
    /// Move it.
    Go,
    /// Not yet, because of this.
    Wait(Hold),
}

/// Why a replica waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hold {
    /// The rollout is paused.
    Paused,
    /// A canary rollout waits for a promote after this many canaries.
    Promote {
        /// Canaries.
        canaries: u32,
    },
    /// A replica of an earlier batch has not settled on the new revision.
    EarlierBatch {
        /// Its index.
        index: u32,
    },
    /// Moving it now would run more than `max_surge` extra instances.
    Surge,
    /// Moving it now would leave fewer than `replicas - max_unavailable` serving.
    Unavailable,
}

/// The first index of the batch that holds `index`.
pub fn batch_start(revision: &Revision, index: u32) -> u32 {
    let update = &revision.spec.update;
    let batch = update.batch_size.max(1);
    match update.canary {
        Some(c) if index < c.count => 0,
        Some(c) => c.count + (index - c.count) / batch * batch,
        None => index / batch * batch,
    }
}

/// Whether replica `index` of `revision`'s workload may move to it now, given what the
/// fleet reports and whether this node saw the canaries promote themselves
/// (`update.canary.auto_promote_after`). See the module docs for the rule.
pub fn gate(revision: &Revision, index: u32, seen: &Observations, auto_promoted: bool) -> Gate {
    let spec = &revision.spec;
    let update = &spec.update;
    let control = &revision.rollout;
    if control.paused {
        return Gate::Wait(Hold::Paused);
    }
    if let Some(canary) = update.canary
        && index >= canary.count
        && !control.promoted
        && !auto_promoted
    {
        return Gate::Wait(Hold::Promote {
            canaries: canary.count,
        });
    }
    let start = batch_start(revision, index);
    // A replica nobody reports starts on the new revision when it is placed: it holds no
    // batch back.
    if let Some((&earlier, _)) = seen.range(..start).find(|(_, o)| !o.updated) {
        return Gate::Wait(Hold::EarlierBatch { index: earlier });
    }
    let moving = |j: u32| j >= start && j <= index && !seen.get(&j).is_some_and(|o| o.updated);
    match update.order {
        UpdateOrder::StartFirst => {
            let surge = (start..=index)
                .filter(|&j| moving(j) && seen.get(&j).is_some_and(|o| o.serving))
                .count();
            let mine_serves = seen.get(&index).is_some_and(|o| o.serving);
            if mine_serves && surge > update.max_surge as usize {
                return Gate::Wait(Hold::Surge);
            }
        }
        UpdateOrder::StopFirst => {
            let serving_after = seen
                .range(..spec.replicas)
                .filter(|(j, o)| o.serving && !moving(**j))
                .count();
            let floor = spec.replicas.saturating_sub(update.max_unavailable) as usize;
            let mine_serves = seen.get(&index).is_some_and(|o| o.serving);
            if mine_serves && serving_after < floor {
                return Gate::Wait(Hold::Unavailable);
            }
        }
    }
    Gate::Go
}

/// Whether every canary of a canary rollout is done (the clock of `auto_promote_after`
/// starts then); `false` for a rollout without canaries.
pub fn canaries_settled(revision: &Revision, seen: &Observations) -> bool {
    let Some(canary) = revision.spec.update.canary else {
        return false;
    };
    let count = canary.count.min(revision.spec.replicas);
    (0..count).all(|i| seen.get(&i).is_some_and(|o| o.updated))
}

/// A rollout's progress as the fleet reports it, for `rollout status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Replicas asked for.
    pub replicas: u32,
    /// Replicas on the new revision and settled.
    pub updated: u32,
    /// Replicas on the new revision, not settled yet.
    pub pending: u32,
    /// Replicas on the new revision that crash loop.
    pub failing: u32,
    /// Replicas with an instance serving (either revision).
    pub serving: u32,
}

impl Progress {
    /// Counts the replicas below `replicas` in `seen`.
    pub fn of(replicas: u32, seen: &Observations) -> Progress {
        let mut p = Progress {
            replicas,
            ..Progress::default()
        };
        for o in seen.range(..replicas).map(|(_, o)| o) {
            p.updated += u32::from(o.updated);
            p.pending += u32::from(o.on_target && !o.updated && !o.failing);
            p.failing += u32::from(o.failing);
            p.serving += u32::from(o.serving);
        }
        p
    }

    /// Every replica runs the new revision, settled.
    pub fn complete(&self) -> bool {
        self.updated >= self.replicas
    }
}

#[cfg(test)]
mod tests;
