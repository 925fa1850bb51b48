//! Epidemic dissemination for the fast model: news, who knows it, and the shared state every
//! node's knowledge maps to.
//!
//! Two kinds of news spread by push-pull between random pairs each round (a pair ends the
//! round knowing what either knew at its start, as the fleet's anti-entropy does):
//! - A node's status is a rumour with one bit per node; a newer status of the same node
//!   replaces the older one in flight. Once every up node has it, it retires into the table a
//!   booting node learns first.
//! - Membership verdicts and desired-state writes are numbered in one log each, and a node
//!   knows a prefix of each log (as a chitchat peer applies a node's newer versions with all
//!   before them). So nodes that know the same prefix share one view and one desired state:
//!   10,000 cores hold a handful of copies between them, and the plan of each copy is
//!   computed once. The prefix every up node knows is the base.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use starling_core::node::{Plan, Planner, compute_plan};
use starling_protocol::WorkloadName;
use starling_protocol::desired::{DesiredState, Revision};
use starling_protocol::hlc::Timestamp;
use starling_protocol::placement::{FleetView, Liveness, NodeView};
use starling_protocol::status::NodeStatus;

/// One bit per node.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bits {
    words: Vec<u64>,
    ones: usize,
}

impl Bits {
    pub fn get(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Sets bit `i`; true if it was clear.
    pub fn set(&mut self, i: usize) -> bool {
        if self.words.len() <= i / 64 {
            self.words.resize(i / 64 + 1, 0);
        }
        let (w, b) = (i / 64, 1u64 << (i % 64));
        let was = self.words[w] & b != 0;
        self.words[w] |= b;
        self.ones += usize::from(!was);
        !was
    }

    pub fn clear(&mut self, i: usize) {
        if let Some(w) = self.words.get_mut(i / 64) {
            let b = 1u64 << (i % 64);
            self.ones -= usize::from(*w & b != 0);
            *w &= !b;
        }
    }

    /// Bits set.
    pub fn ones(&self) -> usize {
        self.ones
    }
}

/// A membership record: `node` at `incarnation` is `liveness` (a later incarnation wins; at
/// the same incarnation Down beats Suspect beats Alive, as the detector's verdicts do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    pub node: usize,
    pub incarnation: u64,
    pub liveness: Liveness,
}

impl Member {
    pub fn order(&self) -> (u64, Liveness) {
        (self.incarnation, self.liveness)
    }
}

/// A desired-state write.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub name: WorkloadName,
    pub revision: Option<Revision>,
    pub at: Timestamp,
}

/// A status on its way round the fleet.
#[derive(Debug)]
pub(crate) struct Rumour {
    pub origin: usize,
    pub status: Arc<NodeStatus>,
    pub knows: Bits,
    /// Encoded size, for the traffic figures.
    pub bytes: u64,
}

/// All news: statuses in flight, the membership and write logs, and what they add up to.
#[derive(Debug, Default)]
pub(crate) struct News {
    pub rumours: Vec<Rumour>,
    /// Status rumours still spreading (indexes into `rumours`).
    pub active: Vec<u32>,
    /// Each node's latest retired status (what a booting node learns from its first peers).
    pub statuses: BTreeMap<usize, Arc<NodeStatus>>,
    pub members: Vec<Member>,
    pub writes: Vec<Write>,
    /// The view after each prefix of the member log still in use, and the desired state after
    /// each prefix of the write log. The lowest key is the base: every up node knows it.
    views: BTreeMap<u32, Arc<FleetView>>,
    desireds: BTreeMap<u32, Arc<DesiredState>>,
}

impl News {
    /// Starts with the fleet every node knows.
    pub fn new(view: FleetView, desired: DesiredState) -> Self {
        News {
            views: [(0, Arc::new(view))].into(),
            desireds: [(0, Arc::new(desired))].into(),
            ..News::default()
        }
    }

    pub fn start_status(&mut self, origin: usize, status: Arc<NodeStatus>, bytes: u64) -> u32 {
        let id = self.rumours.len() as u32;
        let mut knows = Bits::default();
        knows.set(origin);
        // A node's newer status replaces its older one, which then stops spreading: whoever
        // has not heard the old one hears the new one instead.
        let rumours = &mut self.rumours;
        self.active.retain(|r| {
            let old = &mut rumours[*r as usize];
            let superseded = old.origin == origin;
            if superseded {
                old.knows = Bits::default();
            }
            !superseded
        });
        self.rumours.push(Rumour {
            origin,
            status,
            knows,
            bytes,
        });
        self.active.push(id);
        id
    }

    /// Appends a membership record; returns the prefix length that includes it.
    pub fn start_member(&mut self, member: Member) -> u32 {
        self.members.push(member);
        self.members.len() as u32
    }

    /// Appends a write; returns the prefix length that includes it.
    pub fn start_write(&mut self, write: Write) -> u32 {
        self.writes.push(write);
        self.writes.len() as u32
    }

    /// The lowest member prefix still kept (every up node knows at least this much).
    pub fn member_base(&self) -> u32 {
        self.views.keys().next().copied().unwrap_or(0)
    }

    pub fn write_base(&self) -> u32 {
        self.desireds.keys().next().copied().unwrap_or(0)
    }

    pub fn base_view(&self) -> Arc<FleetView> {
        self.views.values().next().cloned().unwrap_or_default()
    }

    pub fn base_desired(&self) -> Arc<DesiredState> {
        self.desireds.values().next().cloned().unwrap_or_default()
    }

    /// The view after the first `upto` member records (at least the base). A view that differs
    /// from the one it was built on only in who is suspected is registered with `planner` as
    /// placing the same (placement and the majority rule count a suspect as alive).
    pub fn view(
        &mut self,
        upto: u32,
        planner: &SharedPlanner,
        describe: impl Fn(usize) -> NodeView,
    ) -> Arc<FleetView> {
        let upto = upto.max(self.member_base());
        if let Some(v) = self.views.get(&upto) {
            return v.clone();
        }
        let (&from, start) = self
            .views
            .range(..upto)
            .next_back()
            .map(|(k, v)| (k, v.clone()))
            .unwrap_or((&0, Arc::default()));
        let mut view = FleetView::clone(&start);
        let mut moves_replicas = false;
        let mut records: BTreeMap<usize, Member> = BTreeMap::new();
        for m in &self.members[from as usize..upto as usize] {
            apply_member(&mut records, *m);
        }
        for (node, m) in records {
            let entry = view.nodes.entry(describe(node).id).or_insert_with(|| {
                moves_replicas = true;
                let mut fresh = describe(node);
                fresh.liveness = Liveness::Down;
                fresh
            });
            // The record decides unless the view already holds a later one (the log may hold
            // an older verdict after a newer refutation).
            let current = self.members[..from as usize]
                .iter()
                .filter(|x| x.node == node)
                .map(Member::order)
                .max();
            if current.is_none_or(|c| m.order() > c) {
                moves_replicas |=
                    (entry.liveness == Liveness::Down) != (m.liveness == Liveness::Down);
                entry.liveness = m.liveness;
            }
        }
        let view = Arc::new(view);
        if !moves_replicas {
            planner.alias(&view, &start);
        }
        self.views.insert(upto, view.clone());
        view
    }

    /// The desired state after the first `upto` writes (at least the base).
    pub fn desired(&mut self, upto: u32) -> Arc<DesiredState> {
        let upto = upto.max(self.write_base());
        if let Some(d) = self.desireds.get(&upto) {
            return d.clone();
        }
        let (&from, start) = self
            .desireds
            .range(..upto)
            .next_back()
            .map(|(k, v)| (k, v.clone()))
            .unwrap_or((&0, Arc::default()));
        let mut desired = DesiredState::clone(&start);
        for w in &self.writes[from as usize..upto as usize] {
            desired.write(w.name.clone(), w.revision.clone(), w.at.clone());
        }
        let desired = Arc::new(desired);
        self.desireds.insert(upto, desired.clone());
        desired
    }

    /// Every up node knows the first `members` records and `writes` writes: they become the
    /// base, and copies for shorter prefixes that no core holds are dropped.
    pub fn fold(
        &mut self,
        members: u32,
        writes: u32,
        planner: &SharedPlanner,
        describe: impl Fn(usize) -> NodeView,
    ) {
        if members > self.member_base() {
            self.view(members, planner, describe);
            // The base is the lowest key; cores still holding a shorter prefix keep their
            // copy, but nothing is built on it again.
            let stale: Vec<u32> = self.views.range(..members).map(|(k, _)| *k).collect();
            for k in stale {
                self.views.remove(&k);
            }
        }
        if writes > self.write_base() {
            self.desired(writes);
            let stale: Vec<u32> = self.desireds.range(..writes).map(|(k, _)| *k).collect();
            for k in stale {
                self.desireds.remove(&k);
            }
        }
    }

    /// Drops copies of prefixes beyond the base that nobody holds any more.
    pub fn sweep(&mut self) {
        let (mb, wb) = (self.member_base(), self.write_base());
        self.views
            .retain(|k, v| *k == mb || Arc::strong_count(v) > 1);
        self.desireds
            .retain(|k, d| *k == wb || Arc::strong_count(d) > 1);
    }
}

fn apply_member(records: &mut BTreeMap<usize, Member>, m: Member) {
    let newer = records.get(&m.node).is_none_or(|r| m.order() > r.order());
    if newer {
        records.insert(m.node, m);
    }
}

/// Plans shared between every core that works from the same view and desired state (the same
/// allocations: the model interns them). A plan is a pure function of its inputs, so sharing
/// changes no decision; it turns 10,000 identical computations into one.
#[derive(Debug, Default)]
pub(crate) struct SharedPlanner {
    memo: Mutex<BTreeMap<(usize, usize, bool), Memo>>,
    censuses: Mutex<BTreeMap<usize, Census>>,
    /// Views that place exactly like another (they differ only in suspects), by address.
    aliases: Mutex<BTreeMap<usize, Alias>>,
    /// The self-test's deliberate bug (`RunOptions::bug_minority_takes_over`): a minority
    /// side replaces what it cannot see.
    minority_may_replace: bool,
}

/// A view (weakly held, see [`Memo`]) and its (known, not down) counts.
type Census = (Weak<FleetView>, (usize, usize));
/// A view (weakly held) and the view it places like.
type Alias = (Weak<FleetView>, Arc<FleetView>);

#[derive(Debug)]
struct Memo {
    // Weak references keep the allocations (not the values) alive, so the addresses in the
    // key cannot be reused by another view while the entry exists, yet pin no memory.
    view: Weak<FleetView>,
    desired: Weak<DesiredState>,
    plan: Arc<Plan>,
}

impl SharedPlanner {
    /// A planner with nothing shared yet; `minority_may_replace` injects the self-test's bug.
    pub fn new(minority_may_replace: bool) -> Self {
        SharedPlanner {
            minority_may_replace,
            ..SharedPlanner::default()
        }
    }

    /// `view` places exactly like `like`: plan it as `like`.
    pub fn alias(&self, view: &Arc<FleetView>, like: &Arc<FleetView>) {
        let mut aliases = self.aliases.lock().unwrap_or_else(PoisonError::into_inner);
        let like = match aliases.get(&(Arc::as_ptr(like) as usize)) {
            Some((weak, root)) if weak.strong_count() > 0 => root.clone(),
            _ => like.clone(),
        };
        aliases.insert(Arc::as_ptr(view) as usize, (Arc::downgrade(view), like));
    }

    fn representative(&self, view: &Arc<FleetView>) -> Arc<FleetView> {
        let aliases = self.aliases.lock().unwrap_or_else(PoisonError::into_inner);
        match aliases.get(&(Arc::as_ptr(view) as usize)) {
            Some((weak, root)) if weak.strong_count() > 0 => root.clone(),
            _ => view.clone(),
        }
    }

    /// Forgets plans whose inputs no core holds any more.
    pub fn sweep(&self) {
        let mut memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        memo.retain(|_, m| m.view.strong_count() > 0 && m.desired.strong_count() > 0);
        drop(memo);
        let mut censuses = self.censuses.lock().unwrap_or_else(PoisonError::into_inner);
        censuses.retain(|_, (view, _)| view.strong_count() > 0);
        drop(censuses);
        let mut aliases = self.aliases.lock().unwrap_or_else(PoisonError::into_inner);
        aliases.retain(|_, (view, _)| view.strong_count() > 0);
    }
}

impl Planner for SharedPlanner {
    fn minority_may_replace(&self) -> bool {
        self.minority_may_replace
    }

    fn census(&self, view: &Arc<FleetView>) -> (usize, usize) {
        // Not the representative: views that differ only in who is suspected share plans,
        // but not a census, since a suspect does not count towards the majority.
        let mut censuses = self.censuses.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = censuses
            .entry(Arc::as_ptr(view) as usize)
            .or_insert_with(|| (Arc::downgrade(view), starling_core::node::census(view)));
        entry.1
    }

    fn plan(
        &self,
        view: &Arc<FleetView>,
        desired: &Arc<DesiredState>,
        majority: bool,
    ) -> Arc<Plan> {
        let view = &self.representative(view);
        let key = (
            Arc::as_ptr(view) as usize,
            Arc::as_ptr(desired) as usize,
            majority,
        );
        let mut memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = memo.get(&key) {
            return m.plan.clone();
        }
        let plan = Arc::new(Plan::new(compute_plan(view, desired, majority)));
        memo.insert(
            key,
            Memo {
                view: Arc::downgrade(view),
                desired: Arc::downgrade(desired),
                plan: plan.clone(),
            },
        );
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_set_get_clear() {
        let mut b = Bits::default();
        assert!(!b.get(700));
        assert!(b.set(700));
        assert!(!b.set(700));
        assert!(b.get(700) && !b.get(699));
        assert_eq!(b.ones(), 1);
        b.clear(700);
        b.clear(700);
        assert!(!b.get(700));
        assert_eq!(b.ones(), 0);
    }

    #[test]
    fn a_newer_status_replaces_the_older_one_in_flight() {
        let mut n = News::default();
        let s = Arc::new(NodeStatus::default());
        let a = n.start_status(3, s.clone(), 10);
        let other = n.start_status(4, s.clone(), 10);
        let b = n.start_status(3, s, 10);
        assert_eq!(n.active, vec![other, b]);
        assert!(a < b);
    }

    #[test]
    fn views_follow_the_member_log_and_fold_into_the_base() {
        let id = |i: usize| starling_protocol::NodeId::new(format!("n{i}")).expect("id");
        let describe = |i: usize| NodeView {
            id: id(i),
            labels: BTreeMap::new(),
            arch: "x86_64".into(),
            runtimes: Default::default(),
            capacity: Default::default(),
            weight: 1,
            liveness: Liveness::Alive,
            departure: Default::default(),
        };
        let mut view = FleetView::default();
        for i in 0..3 {
            view.nodes.insert(id(i), describe(i));
        }
        let mut n = News::new(view, DesiredState::new());
        let planner = SharedPlanner::default();
        let m = |node, incarnation, liveness| Member {
            node,
            incarnation,
            liveness,
        };
        let down = n.start_member(m(1, 1, Liveness::Down));
        let back = n.start_member(m(1, 2, Liveness::Alive));
        let joined = n.start_member(m(3, 1, Liveness::Alive));
        assert_eq!(
            n.view(0, &planner, describe).nodes[&id(1)].liveness,
            Liveness::Alive
        );
        assert_eq!(
            n.view(down, &planner, describe).nodes[&id(1)].liveness,
            Liveness::Down
        );
        assert_eq!(
            n.view(back, &planner, describe).nodes[&id(1)].liveness,
            Liveness::Alive
        );
        assert!(!n.view(back, &planner, describe).nodes.contains_key(&id(3)));
        assert_eq!(n.view(joined, &planner, describe).nodes.len(), 4);
        let before = n.view(joined, &planner, describe);
        n.fold(back, 0, &planner, describe);
        assert_eq!(n.member_base(), back);
        assert_eq!(
            n.view(0, &planner, describe).nodes[&id(1)].liveness,
            Liveness::Alive
        );
        assert!(
            Arc::ptr_eq(&n.view(joined, &planner, describe), &before),
            "kept while held"
        );
        // A suspect places like the view it was built on: one plan for both.
        let suspected = n.start_member(m(2, 1, Liveness::Suspect));
        let desired = Arc::new(DesiredState::new());
        let a = planner.plan(&before, &desired, true);
        let b = planner.plan(&n.view(suspected, &planner, describe), &desired, true);
        assert!(Arc::ptr_eq(&a, &b));
        let gone = n.start_member(m(2, 1, Liveness::Down));
        let c = planner.plan(&n.view(gone, &planner, describe), &desired, true);
        assert!(!Arc::ptr_eq(&a, &c), "a node going down is planned afresh");
    }

    #[test]
    fn membership_records_order_by_incarnation_then_verdict() {
        let mut records = BTreeMap::new();
        let m = |incarnation, liveness| Member {
            node: 1,
            incarnation,
            liveness,
        };
        apply_member(&mut records, m(2, Liveness::Alive));
        apply_member(&mut records, m(1, Liveness::Down));
        assert_eq!(
            records[&1].liveness,
            Liveness::Alive,
            "older incarnation loses"
        );
        apply_member(&mut records, m(2, Liveness::Down));
        assert_eq!(records[&1].liveness, Liveness::Down);
        apply_member(&mut records, m(2, Liveness::Suspect));
        assert_eq!(records[&1].liveness, Liveness::Down, "down beats suspect");
        apply_member(&mut records, m(3, Liveness::Alive));
        assert_eq!(records[&1].liveness, Liveness::Alive, "a refutation wins");
    }
}
