//! Invariant 4 — at most one valid holder per lease at any instant of simulator time — and the
//! lease facts of the report.
//!
//! A node is a *valid holder* of a lease from the moment its elector emits `Holding` until its
//! `may_act_until_ms` (read on its own clock, converted to simulator time with its skew at that
//! moment, and converted again whenever its clock jumps), or until it emits `Lost` or crashes,
//! whichever comes first. A renewal extends the open span. A clock that jumps back before the
//! elector noticed the deadline passed (no `Lost` yet) makes the node a holder again — its
//! elector would say it holds — so that starts a new span. Only quorum leases are checked:
//! a local-mode lease may have one holder per side of a partition by design.
//! The fencing token of each new holder must also be larger than every earlier holder's.

use std::collections::{BTreeMap, BTreeSet};

use starling_protocol::lease::{Lease, LeaseName};

/// A span of simulator time during which a node was a valid holder of a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderSpan {
    /// The node (an index into `RunReport::node_names`).
    pub node: usize,
    /// When it became holder.
    pub from_ms: u64,
    /// When it stopped being one (the end of the run if it still held then).
    pub until_ms: u64,
    /// Its fencing token.
    pub token: u64,
}

/// What the report says about one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseFacts {
    /// The lease (a singleton's workload name).
    pub name: String,
    /// Quorum mode (checked) or local mode.
    pub quorum: bool,
    /// Grants that made a node holder (distinct holder and token).
    pub elections: usize,
    /// Times the holder became another node.
    pub holder_changes: usize,
    /// Simulator time with no valid holder, from the first campaign to the end of the run.
    pub without_holder_ms: u64,
    /// The longest of those stretches.
    pub longest_gap_ms: u64,
    /// The largest fencing token granted.
    pub max_token: u64,
    /// The shortest time from one holder's end to another node becoming holder (how close
    /// the election came to the safety margin).
    pub tightest_handover_ms: Option<u64>,
    /// The holder at the end, if any.
    pub holder_at_end: Option<usize>,
    /// Why nobody holds it at the end (empty when somebody does).
    pub why_no_holder: String,
    /// Every span of a valid holder, in order of start.
    pub spans: Vec<HolderSpan>,
}

/// A broken lease invariant: its name and what was seen.
pub(crate) type Broken = (&'static str, String);

#[derive(Debug, Clone)]
struct Span {
    node: usize,
    from_ms: u64,
    /// Simulator time the span ends (or ended).
    until_ms: u64,
    /// The holder's own deadline, on its clock.
    may_act_node_ms: u64,
    token: u64,
    /// Ended by `Lost`, a crash or a newer grant (`until_ms` is then when). A span that is not
    /// closed but whose `until_ms` passed may come back if the holder's clock jumps back.
    closed: bool,
}

impl Span {
    fn valid_at(&self, now_ms: u64) -> bool {
        !self.closed && now_ms < self.until_ms
    }
}

#[derive(Debug, Default)]
struct Track {
    quorum: bool,
    first_wanted_ms: Option<u64>,
    spans: Vec<Span>,
    /// The largest token granted and to whom.
    max_token: Option<(u64, usize)>,
}

/// Every lease's holder spans, kept as the run goes.
#[derive(Debug, Default)]
pub(crate) struct LeaseLog {
    leases: BTreeMap<LeaseName, Track>,
}

/// A node-clock time in simulator time, given the node's skew (as the timers convert it).
fn to_sim(node_ms: u64, skew_ms: i64) -> u64 {
    (node_ms as i64 - skew_ms).max(0) as u64
}

fn secs(ms: u64) -> String {
    format!("{:.3} s", ms as f64 / 1000.0)
}

impl LeaseLog {
    /// The nodes whose grant of `name` is valid at `now_ms`.
    pub fn holders_at(&self, name: &LeaseName, now_ms: u64) -> Vec<usize> {
        self.leases.get(name).map_or_else(Vec::new, |t| {
            t.spans
                .iter()
                .filter(|s| s.valid_at(now_ms))
                .map(|s| s.node)
                .collect()
        })
    }

    /// A node started campaigning for `name`: the clock of "time without a holder" starts.
    pub fn wanted(&mut self, now_ms: u64, name: &LeaseName) {
        self.leases
            .entry(name.clone())
            .or_default()
            .first_wanted_ms
            .get_or_insert(now_ms);
    }

    /// Node `node` (skew `skew_ms`) says it holds `lease` and may act until `may_act_node_ms`
    /// on its clock. Returns the invariant it breaks, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn holding(
        &mut self,
        now_ms: u64,
        node: usize,
        lease: &Lease,
        may_act_node_ms: u64,
        skew_ms: i64,
        quorum: bool,
        ids: &dyn Fn(usize) -> String,
    ) -> Option<Broken> {
        let track = self.leases.entry(lease.name.clone()).or_default();
        track.first_wanted_ms.get_or_insert(now_ms);
        track.quorum = quorum;
        let until_ms = to_sim(may_act_node_ms, skew_ms).max(now_ms);
        let token = lease.fencing_token;
        if let Some(open) = track
            .spans
            .iter_mut()
            .rev()
            .find(|s| s.node == node && !s.closed)
        {
            if open.token == token && open.valid_at(now_ms) {
                // A renewal: the same grant, acting longer.
                open.until_ms = until_ms;
                open.may_act_node_ms = may_act_node_ms;
                return None;
            }
            open.until_ms = open.until_ms.min(now_ms);
            open.closed = true;
        }
        let mut broken = None;
        if quorum {
            if let Some((max, by)) = track.max_token
                && (token < max || (token == max && by != node))
            {
                broken = Some((
                    "lease-fencing-token",
                    format!(
                        "{} holds {} with fencing token {token}, but {} was granted token {max} before",
                        ids(node),
                        lease.name,
                        ids(by)
                    ),
                ));
            }
            if let Some(other) = track
                .spans
                .iter()
                .find(|s| s.node != node && s.valid_at(now_ms))
            {
                broken = Some((
                    "lease-holders",
                    format!(
                        "{} holds {} (token {token}) while {} (token {}) may still act until {} \
                         ({} on its own clock): two valid holders",
                        ids(node),
                        lease.name,
                        ids(other.node),
                        other.token,
                        secs(other.until_ms),
                        secs(other.may_act_node_ms)
                    ),
                ));
            }
        }
        if track.max_token.is_none_or(|(max, _)| token > max) {
            track.max_token = Some((token, node));
        }
        track.spans.push(Span {
            node,
            from_ms: now_ms,
            until_ms,
            may_act_node_ms,
            token,
            closed: false,
        });
        broken
    }

    /// Node `node`'s elector says it lost `name`.
    pub fn lost(&mut self, now_ms: u64, node: usize, name: &LeaseName) {
        if let Some(track) = self.leases.get_mut(name) {
            close(track, now_ms, node);
        }
    }

    /// Node `node` crashed (or left): it holds nothing any more.
    pub fn crashed(&mut self, now_ms: u64, node: usize) {
        for track in self.leases.values_mut() {
            close(track, now_ms, node);
        }
    }

    /// Node `node`'s clock jumped: its deadlines fall at other simulator times now.
    pub fn skewed(
        &mut self,
        now_ms: u64,
        node: usize,
        skew_ms: i64,
        ids: &dyn Fn(usize) -> String,
    ) -> Option<Broken> {
        for track in self.leases.values_mut() {
            let Some(k) = track
                .spans
                .iter()
                .rposition(|s| s.node == node && !s.closed)
            else {
                continue;
            };
            let span = &mut track.spans[k];
            let until_ms = to_sim(span.may_act_node_ms, skew_ms);
            if span.valid_at(now_ms) {
                span.until_ms = until_ms.max(now_ms);
            } else if until_ms > now_ms {
                // Its deadline had passed, but its elector had not noticed: now it holds again.
                span.closed = true;
                let revived = Span {
                    from_ms: now_ms,
                    until_ms,
                    closed: false,
                    ..span.clone()
                };
                track.spans.push(revived);
            }
        }
        self.check(now_ms, ids)
    }

    /// At most one valid holder of each quorum lease now.
    pub fn check(&self, now_ms: u64, ids: &dyn Fn(usize) -> String) -> Option<Broken> {
        for (name, track) in self.leases.iter().filter(|(_, t)| t.quorum) {
            let valid: Vec<&Span> = track.spans.iter().filter(|s| s.valid_at(now_ms)).collect();
            let holders: BTreeSet<usize> = valid.iter().map(|s| s.node).collect();
            if holders.len() > 1 {
                let list = valid
                    .iter()
                    .map(|s| {
                        format!(
                            "{} (token {}, until {})",
                            ids(s.node),
                            s.token,
                            secs(s.until_ms)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Some((
                    "lease-holders",
                    format!("{name} has {} valid holders: {list}", holders.len()),
                ));
            }
        }
        None
    }

    /// The facts of every lease at `end_ms` (without `why_no_holder`, which needs the world).
    pub fn facts(&self, end_ms: u64) -> Vec<LeaseFacts> {
        self.leases
            .iter()
            .map(|(name, track)| facts_of(name, track, end_ms))
            .collect()
    }
}

fn close(track: &mut Track, now_ms: u64, node: usize) {
    for span in track
        .spans
        .iter_mut()
        .filter(|s| s.node == node && !s.closed)
    {
        span.until_ms = span.until_ms.min(now_ms);
        span.closed = true;
    }
}

fn facts_of(name: &LeaseName, track: &Track, end_ms: u64) -> LeaseFacts {
    let spans: Vec<HolderSpan> = track
        .spans
        .iter()
        .map(|s| HolderSpan {
            node: s.node,
            from_ms: s.from_ms,
            until_ms: s.until_ms.min(end_ms).max(s.from_ms),
            token: s.token,
        })
        .collect();
    let elections = spans
        .iter()
        .map(|s| (s.node, s.token))
        .collect::<BTreeSet<_>>()
        .len();
    let holder_changes = spans.windows(2).filter(|w| w[0].node != w[1].node).count();
    // Gaps: from the first campaign to the end, the stretches no span covers.
    let start = track.first_wanted_ms.unwrap_or(end_ms);
    let (mut without, mut longest, mut covered_to) = (0u64, 0u64, start);
    for s in &spans {
        if s.from_ms > covered_to {
            let gap = s.from_ms - covered_to;
            without += gap;
            longest = longest.max(gap);
        }
        covered_to = covered_to.max(s.until_ms);
    }
    if end_ms > covered_to {
        let gap = end_ms - covered_to;
        without += gap;
        longest = longest.max(gap);
    }
    let mut tightest: Option<u64> = None;
    for (k, s) in spans.iter().enumerate() {
        let before = spans[..k]
            .iter()
            .filter(|p| p.node != s.node)
            .map(|p| p.until_ms)
            .max();
        if let Some(end) = before {
            let gap = s.from_ms.saturating_sub(end);
            tightest = Some(tightest.map_or(gap, |t| t.min(gap)));
        }
    }
    let holder_at_end = track
        .spans
        .iter()
        .find(|s| s.valid_at(end_ms))
        .map(|s| s.node);
    LeaseFacts {
        name: name.to_string(),
        quorum: track.quorum,
        elections,
        holder_changes,
        without_holder_ms: without,
        longest_gap_ms: longest,
        max_token: track.max_token.map_or(0, |(t, _)| t),
        tightest_handover_ms: tightest,
        holder_at_end,
        why_no_holder: String::new(),
        spans,
    }
}

#[cfg(test)]
mod tests {
    use starling_protocol::NodeId;
    use starling_protocol::hlc::Timestamp;

    use super::*;

    fn lease(holder: &str, token: u64) -> Lease {
        let node = NodeId::new(holder).expect("valid");
        Lease {
            name: LeaseName::new("db").expect("valid"),
            holder: node.clone(),
            epoch: token,
            granted_at: Timestamp {
                physical_ms: 0,
                logical: 0,
                node,
            },
            duration_ms: 2_000,
            fencing_token: token,
        }
    }

    fn ids(i: usize) -> String {
        format!("n{i}")
    }

    #[test]
    fn spans_that_touch_are_fine_and_overlaps_are_caught() {
        let mut log = LeaseLog::default();
        assert!(
            log.holding(0, 0, &lease("a", 1), 1_500, 0, true, &ids)
                .is_none()
        );
        // Renewal extends.
        assert!(
            log.holding(700, 0, &lease("a", 1), 2_200, 0, true, &ids)
                .is_none()
        );
        // b at exactly a's end: fine.
        assert!(
            log.holding(2_200, 1, &lease("b", 2), 3_700, 0, true, &ids)
                .is_none()
        );
        // a again before b's end: two holders.
        let broken = log.holding(3_000, 0, &lease("a", 3), 4_500, 0, true, &ids);
        assert_eq!(broken.map(|b| b.0), Some("lease-holders"));
    }

    #[test]
    fn a_clock_that_jumps_back_extends_the_span_and_tokens_must_grow() {
        let mut log = LeaseLog::default();
        assert!(
            log.holding(0, 0, &lease("a", 2), 1_500, 0, true, &ids)
                .is_none()
        );
        // a's clock falls 1 s behind: it acts until 2.5 s of simulator time.
        assert!(log.skewed(1_000, 0, -1_000, &ids).is_none());
        let broken = log.holding(2_000, 1, &lease("b", 3), 3_500, 0, true, &ids);
        assert_eq!(broken.map(|b| b.0), Some("lease-holders"));
        // Two jumps at one instant: +2 s (past its deadline) then -7 s: it holds again.
        let mut log = LeaseLog::default();
        log.holding(0, 0, &lease("a", 2), 1_500, 0, true, &ids);
        assert!(log.skewed(1_000, 0, 2_000, &ids).is_none());
        assert!(log.skewed(1_000, 0, -5_000, &ids).is_none());
        let broken = log.holding(5_000, 1, &lease("b", 3), 6_500, 0, true, &ids);
        assert_eq!(broken.map(|b| b.0), Some("lease-holders"));
        let mut log = LeaseLog::default();
        log.holding(0, 0, &lease("a", 2), 1_500, 0, true, &ids);
        let broken = log.holding(2_000, 1, &lease("b", 2), 3_500, 0, true, &ids);
        assert_eq!(broken.map(|b| b.0), Some("lease-fencing-token"));
    }

    #[test]
    fn local_leases_are_not_checked_and_facts_count_gaps() {
        let mut log = LeaseLog::default();
        log.wanted(0, &LeaseName::new("db").expect("valid"));
        log.holding(1_000, 0, &lease("a", 1), 3_000, 0, false, &ids);
        assert!(
            log.holding(2_000, 1, &lease("b", 1), 4_000, 0, false, &ids)
                .is_none()
        );
        log.lost(3_500, 1, &LeaseName::new("db").expect("valid"));
        let facts = log.facts(10_000);
        assert_eq!(facts.len(), 1);
        let f = &facts[0];
        assert_eq!((f.elections, f.holder_changes, f.max_token), (2, 1, 1));
        assert_eq!(
            (f.without_holder_ms, f.longest_gap_ms),
            (1_000 + 6_500, 6_500)
        );
        assert_eq!(f.holder_at_end, None);
    }
}
