//! Fleet events: what each node recorded about itself and the fleet, stamped with its hybrid
//! logical clock so events of different nodes read in one order.
//!
//! Each node keeps its own events (see `node::events`); `starling get events` asks the node it
//! contacts, which asks its live peers ([`EventQuery`] with [`EventScope::ThisNode`]) and
//! merges the answers with [`merge`]: sorted by [`Timestamp`], duplicates dropped, capped.
//! Every size here is bounded, and [`Event::check`] refuses what a peer or a damaged file
//! could carry beyond the bounds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hlc::Timestamp;
use crate::names::{NodeId, WorkloadName};

/// Longest sentence of an event, in bytes; longer ones are cut at a character boundary by
/// [`Event::new`].
pub const TEXT_BYTES_MAX: usize = 512;
/// Most events one answer carries: at most about 1.2 MiB encoded, well inside a message.
pub const EVENTS_LIMIT_MAX: u32 = 2_000;
/// Most peers an answer names as not answering.
pub const MISSING_MAX: usize = 1_024;

/// One event a node recorded. `at.node` is the node that recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, by the recording node's hybrid logical clock.
    pub at: Timestamp,
    /// What kind of thing happened, for filters and scripts.
    pub kind: EventKind,
    /// The workload it concerns, if one.
    pub workload: Option<WorkloadName>,
    /// The replica index it concerns, if one (of `workload`).
    pub replica: Option<u32>,
    /// What happened, in a sentence (at most [`TEXT_BYTES_MAX`] bytes).
    pub text: String,
}

/// What an [`Event`] is about. Variants are numbered by position on the wire and on disk:
/// new ones go last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A peer was declared down by this node's failure detector.
    NodeDown,
    /// A peer that was down is alive again.
    NodeUp,
    /// This node started a replica that a down node ran.
    Failover,
    /// A replica instance was started here.
    ReplicaStarted,
    /// A replica instance was stopped here on purpose.
    ReplicaStopped,
    /// A replica instance exited by itself.
    ReplicaExited,
    /// A replica instance could not be started.
    StartFailed,
    /// A replica keeps failing (back-off at its ceiling, or restarts given up).
    CrashLoop,
    /// This node campaigns for a lease.
    LeaseCampaign,
    /// This node was granted a lease.
    LeaseWon {
        /// The grant's epoch.
        epoch: u64,
        /// Its fencing token.
        fencing_token: u64,
    },
    /// This node lost a lease.
    LeaseLost {
        /// The fencing token it held, when it held one.
        fencing_token: Option<u64>,
    },
    /// A replica failed its rollout's health gate.
    RolloutFailed,
    /// A rollout was paused, resumed or promoted, or moved on.
    RolloutStep,
    /// A failed rollout is rolled back.
    RolledBack,
    /// The autoscaler changed a replica count.
    Scaled,
    /// A workload was written or deleted through this node.
    WorkloadWritten,
    /// A secret or config was written or deleted through this node.
    ObjectWritten,
    /// A replica's secret or config files were rewritten.
    FilesReloaded,
    /// This node's side of a partition lost or regained a majority.
    Partition,
    /// Membership: a node enrolled, announced its departure, was revoked; voters; keys.
    Membership,
    /// The agent itself: rejoining after a restart, stopping.
    Agent,
}

impl EventKind {
    /// A short name for tables and filters (`node-down`, `lease-won`).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::NodeDown => "node-down",
            EventKind::NodeUp => "node-up",
            EventKind::Failover => "failover",
            EventKind::ReplicaStarted => "started",
            EventKind::ReplicaStopped => "stopped",
            EventKind::ReplicaExited => "exited",
            EventKind::StartFailed => "start-failed",
            EventKind::CrashLoop => "crash-loop",
            EventKind::LeaseCampaign => "lease-campaign",
            EventKind::LeaseWon { .. } => "lease-won",
            EventKind::LeaseLost { .. } => "lease-lost",
            EventKind::RolloutFailed => "rollout-failed",
            EventKind::RolloutStep => "rollout",
            EventKind::RolledBack => "rolled-back",
            EventKind::Scaled => "scaled",
            EventKind::WorkloadWritten => "written",
            EventKind::ObjectWritten => "object-written",
            EventKind::FilesReloaded => "files-reloaded",
            EventKind::Partition => "partition",
            EventKind::Membership => "membership",
            EventKind::Agent => "agent",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Event {
    /// An event recorded at `at`, its text cut to [`TEXT_BYTES_MAX`] bytes.
    pub fn new(
        at: Timestamp,
        kind: EventKind,
        workload: Option<WorkloadName>,
        replica: Option<u32>,
        mut text: String,
    ) -> Self {
        if text.len() > TEXT_BYTES_MAX {
            let mut end = TEXT_BYTES_MAX - '…'.len_utf8();
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        Event {
            at,
            kind,
            workload,
            replica,
            text,
        }
    }

    /// The node that recorded it.
    pub fn node(&self) -> &NodeId {
        &self.at.node
    }

    /// `Err` naming the field when the event is beyond its bounds (from a peer or a file).
    pub fn check(&self) -> Result<(), String> {
        if self.text.len() > TEXT_BYTES_MAX {
            return Err(format!(
                "event.text: at most {TEXT_BYTES_MAX} bytes, got {}",
                self.text.len()
            ));
        }
        if self.replica.is_some() && self.workload.is_none() {
            return Err("event.replica: a replica index needs a workload".into());
        }
        if self.replica.is_some_and(|r| r > crate::spec::REPLICAS_MAX) {
            return Err(format!(
                "event.replica: at most {}, got {:?}",
                crate::spec::REPLICAS_MAX,
                self.replica
            ));
        }
        Ok(())
    }

    /// Whether the event matches a query's filters (not its limit).
    pub fn matches(&self, query: &EventQuery) -> bool {
        query
            .workload
            .as_ref()
            .is_none_or(|w| self.workload.as_ref() == Some(w))
            && query.since.as_ref().is_none_or(|s| &self.at > s)
    }
}

/// `starling get events`: which events, from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventQuery {
    /// Only the events of this workload.
    pub workload: Option<WorkloadName>,
    /// Only events after this point of hybrid logical time. With it, the answer holds the
    /// first `limit` events after it (so a follower pages forward without a gap); without
    /// it, the newest `limit` events.
    pub since: Option<Timestamp>,
    /// Most events in the answer (at most [`EVENTS_LIMIT_MAX`]).
    pub limit: u32,
    /// The whole fleet, or the answering node alone.
    pub scope: EventScope,
}

/// Where an [`EventQuery`] looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventScope {
    /// The answering node asks every live peer and merges their events with its own.
    Fleet,
    /// The answering node's own events (what a node asks its peers for).
    ThisNode,
}

impl EventQuery {
    /// `Err` naming the field when the query asks beyond the bounds.
    pub fn check(&self) -> Result<(), String> {
        if self.limit == 0 || self.limit > EVENTS_LIMIT_MAX {
            return Err(format!(
                "limit: between 1 and {EVENTS_LIMIT_MAX}, got {}",
                self.limit
            ));
        }
        Ok(())
    }

    /// Picks the answer from events in HLC order, as the query's doc says: the first `limit`
    /// after `since`, or the newest `limit`; and whether more matched.
    pub fn pick<'a>(
        &self,
        ordered: impl DoubleEndedIterator<Item = &'a Event>,
    ) -> (Vec<Event>, bool) {
        let limit = self.limit.min(EVENTS_LIMIT_MAX) as usize;
        let mut matching = ordered.filter(|e| e.matches(self));
        let picked: Vec<Event> = if self.since.is_some() {
            matching.by_ref().take(limit).cloned().collect()
        } else {
            let mut newest: Vec<Event> = matching.by_ref().rev().take(limit).cloned().collect();
            newest.reverse();
            newest
        };
        (picked, matching.next().is_some())
    }
}

/// The answer to an [`EventQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventPage {
    /// The events, oldest first by hybrid logical time, each once.
    pub events: Vec<Event>,
    /// Nodes whose events are in the answer (the answering node first).
    pub answered: Vec<NodeId>,
    /// Members whose events are not in the answer, and why (down, or no answer in time).
    pub missing: Vec<(NodeId, String)>,
    /// More events matched than `limit`: ask again with a later `since` for the rest.
    pub truncated: bool,
}

impl EventPage {
    /// `Err` naming the field when the page is beyond its bounds.
    pub fn check(&self) -> Result<(), String> {
        if self.events.len() > EVENTS_LIMIT_MAX as usize {
            return Err(format!(
                "events: at most {EVENTS_LIMIT_MAX}, got {}",
                self.events.len()
            ));
        }
        if self.answered.len() > MISSING_MAX || self.missing.len() > MISSING_MAX {
            return Err(format!(
                "answered, missing: at most {MISSING_MAX} nodes each"
            ));
        }
        if let Some((node, why)) = self
            .missing
            .iter()
            .find(|(_, why)| why.len() > TEXT_BYTES_MAX)
        {
            return Err(format!(
                "missing[{node}]: at most {TEXT_BYTES_MAX} bytes of reason, got {}",
                why.len()
            ));
        }
        self.events.iter().try_for_each(Event::check)
    }
}

/// Merges pages of several nodes into one answer to `query`: events in HLC order, each once
/// (an event is named by its timestamp, which no two events share), picked as the query says.
pub fn merge(query: &EventQuery, pages: impl IntoIterator<Item = EventPage>) -> EventPage {
    let mut all: BTreeMap<Timestamp, Event> = BTreeMap::new();
    let mut out = EventPage::default();
    for page in pages {
        out.truncated |= page.truncated;
        for node in page.answered {
            if !out.answered.contains(&node) {
                out.answered.push(node);
            }
        }
        out.missing.extend(page.missing);
        for event in page.events {
            all.entry(event.at.clone()).or_insert(event);
        }
    }
    out.missing.retain(|(node, _)| !out.answered.contains(node));
    out.missing.truncate(MISSING_MAX);
    out.answered.truncate(MISSING_MAX);
    let (events, more) = query.pick(all.values());
    out.events = events;
    out.truncated |= more;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, node: &str) -> Timestamp {
        Timestamp {
            physical_ms: ms,
            logical: 0,
            node: NodeId::new(node).expect("valid"),
        }
    }

    fn event(ms: u64, node: &str, workload: Option<&str>) -> Event {
        Event::new(
            at(ms, node),
            EventKind::ReplicaStarted,
            workload.map(|w| WorkloadName::new(w).expect("valid")),
            workload.map(|_| 0),
            format!("event at {ms} on {node}"),
        )
    }

    fn query(limit: u32) -> EventQuery {
        EventQuery {
            workload: None,
            since: None,
            limit,
            scope: EventScope::Fleet,
        }
    }

    fn page(node: &str, events: Vec<Event>) -> EventPage {
        EventPage {
            events,
            answered: vec![NodeId::new(node).expect("valid")],
            ..EventPage::default()
        }
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary_and_pass_the_check() {
        let e = Event::new(
            at(1, "n1"),
            EventKind::Agent,
            None,
            None,
            "é".repeat(TEXT_BYTES_MAX),
        );
        assert!(e.text.len() <= TEXT_BYTES_MAX, "{}", e.text.len());
        assert!(e.text.ends_with('…'));
        e.check().expect("within bounds");
        let mut long = e.clone();
        long.text = "x".repeat(TEXT_BYTES_MAX + 1);
        assert!(
            long.check()
                .expect_err("too long")
                .starts_with("event.text")
        );
    }

    #[test]
    fn merge_orders_by_hlc_drops_duplicates_and_keeps_the_newest_within_the_limit() {
        let a = page("n1", vec![event(10, "n1", None), event(30, "n1", None)]);
        // n2 relays one of n1's events too (a duplicate) and one of its own in between.
        let b = page("n2", vec![event(20, "n2", None), event(30, "n1", None)]);
        let merged = merge(&query(10), [a.clone(), b.clone()]);
        let order: Vec<u64> = merged.events.iter().map(|e| e.at.physical_ms).collect();
        assert_eq!(order, [10, 20, 30]);
        assert!(!merged.truncated);
        assert_eq!(merged.answered.len(), 2);
        let newest = merge(&query(2), [a, b]);
        let order: Vec<u64> = newest.events.iter().map(|e| e.at.physical_ms).collect();
        assert_eq!(order, [20, 30]);
        assert!(newest.truncated);
    }

    #[test]
    fn since_pages_forward_from_the_cursor_and_workload_filters() {
        let events = (1..=5)
            .map(|i| event(i * 10, "n1", (i % 2 == 0).then_some("web")))
            .collect();
        let mut q = query(2);
        q.since = Some(at(10, "n1"));
        let first = merge(&q, [page("n1", events)]);
        let order: Vec<u64> = first.events.iter().map(|e| e.at.physical_ms).collect();
        assert_eq!(order, [20, 30], "the first two after the cursor");
        assert!(first.truncated);
        q.workload = Some(WorkloadName::new("web").expect("valid"));
        q.limit = 10;
        let web = merge(&q, [page("n1", first.events)]);
        assert!(
            web.events
                .iter()
                .all(|e| e.workload.as_ref().is_some_and(|w| w.as_str() == "web"))
        );
        assert_eq!(web.events.len(), 1);
    }

    #[test]
    fn a_peer_that_answered_elsewhere_is_not_listed_missing() {
        let mut a = page("n1", Vec::new());
        a.missing
            .push((NodeId::new("n2").expect("valid"), "timeout".into()));
        a.missing
            .push((NodeId::new("n3").expect("valid"), "down".into()));
        let merged = merge(&query(10), [a, page("n2", Vec::new())]);
        let missing: Vec<&str> = merged.missing.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(missing, ["n3"]);
    }

    #[test]
    fn queries_and_pages_beyond_their_bounds_are_refused() {
        assert!(query(0).check().is_err());
        assert!(query(EVENTS_LIMIT_MAX + 1).check().is_err());
        query(EVENTS_LIMIT_MAX).check().expect("at the bound");
        let mut orphan = event(1, "n1", None);
        orphan.replica = Some(3);
        assert!(page("n1", vec![orphan]).check().is_err());
        let mut too_many = page("n1", Vec::new());
        too_many.events = vec![event(1, "n1", None); EVENTS_LIMIT_MAX as usize + 1];
        assert!(too_many.check().is_err());
    }

    #[test]
    fn an_event_round_trips_through_postcard_and_json() {
        let mut e = event(42, "n1", Some("web"));
        e.kind = EventKind::LeaseWon {
            epoch: 3,
            fencing_token: 7,
        };
        let bytes = postcard::to_allocvec(&e).expect("encodes");
        let back: Event = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, e);
        let json = serde_json::to_string(&e).expect("json");
        let back: Event = serde_json::from_str(&json).expect("json back");
        assert_eq!(back, e);
    }
}
