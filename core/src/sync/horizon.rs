//! The sync machine's part in tombstone collection (the rules are in
//! `starling_protocol::desired::tombstones`): when this node may collect, what a peer's summary
//! makes it forget, and when it takes a peer's horizon.

use starling_protocol::NodeId;
use starling_protocol::desired::DesiredState;
use starling_protocol::desired::tombstones::Summary;

use super::{Sync, SyncOutput};

impl Sync {
    /// Whether this node is the only member of its fleet (it is then always in sync). The
    /// shell says so at each gossip read, before [`Sync::handle_tick`].
    pub fn set_alone(&mut self, alone: bool) {
        self.alone = alone;
    }

    /// The last time this node was in sync with a peer, if ever.
    pub fn in_sync_at(&self) -> Option<u64> {
        self.in_sync_at
    }

    /// The horizon this node may move to now: `grace` before the earlier of now and the last
    /// time it was in sync. A node cut off from the fleet may have missed writes since, so it
    /// claims nothing past that.
    pub fn own_horizon(&self, now: u64) -> Option<u64> {
        let since = self.in_sync_at?.min(now);
        since.checked_sub(self.config.tombstone_grace_ms)
    }

    /// Every `collect_every_ms`: collects the tombstones older than the node's own horizon,
    /// when there are any (a horizon that collects nothing is not worth a store write).
    pub(super) fn collect(&mut self, now: u64, desired: &DesiredState) {
        if now < self.next_collect_at {
            return;
        }
        self.next_collect_at = now.saturating_add(self.config.collect_every_ms);
        let Some(horizon) = self.own_horizon(now) else {
            return;
        };
        if desired.tombstones_before(horizon) > 0 {
            self.out.push_back(SyncOutput::Shed {
                from: None,
                forget: Vec::new(),
                horizon: Some(horizon),
            });
        }
    }

    /// A peer's summary: entries it lacks that were written before its horizon were deleted
    /// and collected there; this node forgets them before it pulls.
    pub(super) fn on_summary(&mut self, from: &NodeId, summary: &Summary, desired: &DesiredState) {
        let forget = desired.outdated_by(summary);
        if !forget.is_empty() {
            self.out.push_back(SyncOutput::Shed {
                from: Some(from.clone()),
                forget,
                horizon: None,
            });
        }
    }

    /// A pull brought everything the peer had that this node lacked: this node is now as
    /// complete as the peer, so it takes the peer's horizon (when later than its own).
    pub(super) fn on_pull_done(
        &mut self,
        now: u64,
        from: &NodeId,
        horizon: Option<u64>,
        desired: &DesiredState,
    ) {
        self.in_sync_at = Some(now);
        let Some(theirs) = horizon else {
            return;
        };
        if desired.horizon().is_none_or(|mine| theirs > mine) {
            self.out.push_back(SyncOutput::Shed {
                from: Some(from.clone()),
                forget: Vec::new(),
                horizon: Some(theirs),
            });
        }
    }
}

/// What a [`SyncOutput::Shed`] made of the desired state.
#[derive(Debug, Clone)]
pub struct Shed {
    /// The state afterwards, when it changed: store it, then hand it to the node core.
    pub next: Option<DesiredState>,
    /// Entries forgotten because a peer showed them deleted and collected.
    pub forgotten: usize,
    /// Tombstones collected below the new horizon.
    pub collected: usize,
}

/// Carries out a [`SyncOutput::Shed`] on a copy of `desired` (the shell stores the copy before
/// the node core sees it, as with merges).
pub fn shed(
    desired: &DesiredState,
    forget: &[starling_protocol::desired::Key],
    horizon: Option<u64>,
) -> Shed {
    let mut next = desired.clone();
    let forgotten = next.forget(forget);
    let collected = horizon.map_or(0, |h| next.raise_horizon(h));
    Shed {
        next: (next != *desired).then_some(next),
        forgotten,
        collected,
    }
}
