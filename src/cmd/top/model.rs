//! What `top` shows, as plain data: the last [`Snapshot`] of the fleet, the operator's
//! [`View`] of it (pane, sort, filter, followed workload), and the rows each pane shows.
//! Keys change the view ([`View::handle_key`]); nothing here touches a terminal or a socket,
//! so every rule is testable.

use starling_protocol::WorkloadName;
use starling_protocol::api::{LeaseRow, NodeRow, ReplicaRow, WorkloadRow};
use starling_protocol::events::Event;
use starling_protocol::placement::Liveness;
use starling_protocol::quantity::Millicores;
use starling_protocol::{NodeId, placement::Departure};

use crate::output::answers::{human_bytes, read_replica};

/// The fleet as the node asked saw it at one refresh.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The node that answered (its `--peer`, or the local agent).
    pub source: String,
    pub nodes: Vec<NodeRow>,
    pub workloads: Vec<WorkloadRow>,
    pub replicas: Vec<ReplicaRow>,
    pub leases: Vec<LeaseRow>,
    /// The fleet's newest events, oldest first.
    pub events: Vec<Event>,
    /// Members whose events are missing, and why.
    pub events_missing: Vec<(NodeId, String)>,
    /// Why the last refresh failed, if it did (the rest is then the previous snapshot's).
    pub error: Option<String>,
}

/// The panes, in tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Nodes,
    Workloads,
    Replicas,
    Leases,
    Events,
}

impl Pane {
    pub const ALL: [Pane; 5] = [
        Pane::Nodes,
        Pane::Workloads,
        Pane::Replicas,
        Pane::Leases,
        Pane::Events,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Pane::Nodes => "Nodes",
            Pane::Workloads => "Workloads",
            Pane::Replicas => "Replicas",
            Pane::Leases => "Leases",
            Pane::Events => "Events",
        }
    }

    /// The column headers of the pane.
    pub fn header(self) -> &'static [&'static str] {
        match self {
            Pane::Nodes => &["NODE", "STATE", "CPU", "MEMORY", "REPLICAS", "IN USE"],
            Pane::Workloads => &["NAME", "REVISION", "AVAILABLE", "RUNTIME"],
            Pane::Replicas => &["REPLICA", "NODE", "STATE", "HEALTH", "RESTARTS", "REASON"],
            Pane::Leases => &["LEASE", "HOLDER", "EPOCH", "TOKEN", "EXPIRES IN"],
            Pane::Events => &["TIME (UTC)", "NODE", "KIND", "WHAT", "EVENT"],
        }
    }

    fn index(self) -> usize {
        Pane::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
}

/// A key `top` acts on (mapped from the terminal's key events by `top::run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    Tab,
    BackTab,
    Up,
    Down,
    /// Ctrl-C.
    Interrupt,
}

/// What the loop does after a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Quit,
}

/// The operator's view: where the focus is, how each pane is sorted, what is filtered and
/// which workload is followed.
#[derive(Debug, Clone)]
pub struct View {
    pub pane: Pane,
    /// Sort column of each pane (by [`Pane::ALL`] order).
    pub sort: [usize; 5],
    /// Rows must contain this text (any cell, any case); empty: no filter.
    pub filter: String,
    /// The filter is being typed (`/` until Enter or Esc).
    pub editing: bool,
    /// Only this workload's replicas, leases and events.
    pub followed: Option<WorkloadName>,
    /// The selected row of each pane.
    pub selected: [usize; 5],
}

impl Default for View {
    fn default() -> Self {
        View {
            pane: Pane::Nodes,
            sort: [0; 5],
            filter: String::new(),
            editing: false,
            followed: None,
            selected: [0; 5],
        }
    }
}

impl View {
    /// Applies one key against the snapshot on screen.
    pub fn handle_key(&mut self, key: Key, snapshot: &Snapshot) -> Control {
        if key == Key::Interrupt {
            return Control::Quit;
        }
        if self.editing {
            match key {
                Key::Enter => self.editing = false,
                Key::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Char(c) if !c.is_control() && self.filter.len() < 64 => self.filter.push(c),
                _ => {}
            }
            return Control::Continue;
        }
        let pane = self.pane.index();
        match key {
            Key::Char('q') => return Control::Quit,
            Key::Tab => self.pane = Pane::ALL[(pane + 1) % Pane::ALL.len()],
            Key::BackTab => self.pane = Pane::ALL[(pane + Pane::ALL.len() - 1) % Pane::ALL.len()],
            Key::Char('s') => self.sort[pane] = (self.sort[pane] + 1) % self.pane.header().len(),
            Key::Char('/') => self.editing = true,
            Key::Up | Key::Char('k') => self.selected[pane] = self.selected[pane].saturating_sub(1),
            Key::Down | Key::Char('j') => {
                let last = rows(self.pane, snapshot, self).len().saturating_sub(1);
                self.selected[pane] = (self.selected[pane] + 1).min(last);
            }
            Key::Enter | Key::Char('f') => self.followed = self.selected_workload(snapshot),
            Key::Esc => {
                self.filter.clear();
                self.followed = None;
            }
            _ => {}
        }
        Control::Continue
    }

    /// The workload of the selected row, in a pane whose rows name one.
    fn selected_workload(&self, snapshot: &Snapshot) -> Option<WorkloadName> {
        let rows = rows(self.pane, snapshot, self);
        let row = rows.get(self.selected[self.pane.index()].min(rows.len().saturating_sub(1)))?;
        let name = match self.pane {
            Pane::Workloads | Pane::Leases => row.first()?.clone(),
            Pane::Replicas => row.first()?.split('/').next()?.to_string(),
            Pane::Events => row.get(3)?.split('/').next()?.to_string(),
            Pane::Nodes => return self.followed.clone(),
        };
        WorkloadName::new(name)
            .ok()
            .or_else(|| self.followed.clone())
    }

    /// The sort column of `pane`.
    pub fn sort_of(&self, pane: Pane) -> usize {
        self.sort[pane.index()]
    }

    /// The selected row of `pane`, within its rows.
    pub fn selected_of(&self, pane: Pane, rows: usize) -> Option<usize> {
        (rows > 0).then(|| self.selected[pane.index()].min(rows - 1))
    }
}

/// The rows `pane` shows: followed, filtered, sorted. Events stay in time order unless
/// sorted by another column.
pub fn rows(pane: Pane, snapshot: &Snapshot, view: &View) -> Vec<Vec<String>> {
    let followed = |w: &WorkloadName| view.followed.as_ref().is_none_or(|f| f == w);
    let mut rows: Vec<Vec<String>> = match pane {
        Pane::Nodes => snapshot.nodes.iter().map(node_row).collect(),
        Pane::Workloads => snapshot.workloads.iter().map(workload_row).collect(),
        Pane::Replicas => snapshot
            .replicas
            .iter()
            .filter(|r| followed(&r.replica.workload))
            .map(replica_row)
            .collect(),
        Pane::Leases => snapshot
            .leases
            .iter()
            .filter(|l| followed(&l.name))
            .map(lease_row)
            .collect(),
        Pane::Events => snapshot
            .events
            .iter()
            .filter(|e| view.followed.is_none() || e.workload.as_ref().is_some_and(followed))
            .map(|e| {
                vec![
                    crate::output::utc(e.at.physical_ms),
                    e.node().to_string(),
                    e.kind.to_string(),
                    crate::output::what(e),
                    e.text.clone(),
                ]
            })
            .collect(),
    };
    let needle = view.filter.to_lowercase();
    if !needle.is_empty() {
        rows.retain(|row| row.iter().any(|c| c.to_lowercase().contains(&needle)));
    }
    let column = view.sort_of(pane);
    // Numbers sort as numbers, the rest as text; stable, so ties keep the answer's order.
    rows.sort_by(|a, b| {
        let (a, b) = (&a[column], &b[column]);
        match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.cmp(b),
        }
    });
    if pane == Pane::Events && column == 0 {
        // Newest first, so the latest events are in view without scrolling.
        rows.reverse();
    }
    rows
}

fn node_row(n: &NodeRow) -> Vec<String> {
    let v = &n.view;
    let mut state = match v.liveness {
        Liveness::Alive => "alive",
        Liveness::Suspect => "suspect",
        Liveness::Down => "down",
    }
    .to_string();
    match n.departure {
        Departure::Staying => {}
        Departure::Restarting { .. } => state.push_str(", restarting"),
        Departure::Draining => state.push_str(", draining"),
    }
    vec![
        v.id.to_string(),
        state,
        format!("{}/{}", n.reserved.cpu, v.capacity.cpu),
        format!(
            "{}/{}",
            human_bytes(n.reserved.memory.0),
            human_bytes(v.capacity.memory.0)
        ),
        n.replicas.to_string(),
        n.usage.map_or("-".into(), |u| {
            format!("{}/{}", Millicores(u.cpu.0), human_bytes(u.memory.0))
        }),
    ]
}

fn workload_row(w: &WorkloadRow) -> Vec<String> {
    vec![
        w.name.to_string(),
        w.revision.to_string(),
        format!("{}/{}", w.available, w.replicas),
        format!("{:?}", w.runtime).to_lowercase(),
    ]
}

fn replica_row(r: &ReplicaRow) -> Vec<String> {
    let reading = read_replica(&r.place);
    vec![
        format!("{}/{}", r.replica.workload, r.replica.index),
        reading.node.unwrap_or_else(|| "-".into()),
        reading.state,
        reading.health.to_string(),
        reading.restarts.to_string(),
        reading.reason.unwrap_or_default(),
    ]
}

fn lease_row(l: &LeaseRow) -> Vec<String> {
    vec![
        l.name.to_string(),
        l.holder.as_ref().map_or("-".into(), |h| h.to_string()),
        l.epoch.to_string(),
        l.fencing_token.to_string(),
        if l.expires_in_ms > 0 {
            format!("{:.1}s", l.expires_in_ms as f64 / 1000.0)
        } else {
            "expired".into()
        },
    ]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use starling_protocol::api::{ReplicaPlace, Usage};
    use starling_protocol::events::EventKind;
    use starling_protocol::hlc::Timestamp;
    use starling_protocol::placement::{Capacity, NodeView, ReplicaId};
    use starling_protocol::quantity::Bytes;
    use starling_protocol::spec::RuntimeKind;
    use starling_protocol::status::{ReplicaState, ReplicaStatus};

    fn node(name: &str, liveness: Liveness) -> NodeRow {
        NodeRow {
            view: NodeView {
                id: NodeId::new(name).expect("valid"),
                labels: Default::default(),
                arch: "x86_64".into(),
                runtimes: [RuntimeKind::Process].into(),
                capacity: Capacity {
                    cpu: Millicores(2000),
                    memory: Bytes(1 << 30),
                },
                weight: 1,
                liveness,
                departure: Departure::Staying,
            },
            departure: Departure::Staying,
            replicas: 1,
            reserved: Capacity {
                cpu: Millicores(10),
                memory: Bytes(1 << 20),
            },
            usage: Some(Usage {
                cpu: Millicores(100),
                memory: Bytes(1 << 28),
            }),
            store_error: None,
            generation: 1,
        }
    }

    fn replica(workload: &str, index: u32, on: &str) -> ReplicaRow {
        ReplicaRow {
            replica: ReplicaId {
                workload: WorkloadName::new(workload).expect("valid"),
                index,
            },
            place: ReplicaPlace::On {
                node: NodeId::new(on).expect("valid"),
                liveness: Some(Liveness::Alive),
                status: ReplicaStatus {
                    revision: 1,
                    state: ReplicaState::Running,
                    healthy: true,
                    restarts: 0,
                    last_exit_code: None,
                    reason: None,
                    settled: true,
                    outgoing: None,
                },
            },
        }
    }

    fn workload(name: &str) -> WorkloadRow {
        WorkloadRow {
            name: WorkloadName::new(name).expect("valid"),
            revision: 1,
            available: 1,
            replicas: 1,
            runtime: RuntimeKind::Process,
            command: Some("sleep".into()),
            image: None,
        }
    }

    fn event(ms: u64, on: &str, workload: &str, text: &str) -> Event {
        Event::new(
            Timestamp {
                physical_ms: ms,
                logical: 0,
                node: NodeId::new(on).expect("valid"),
            },
            EventKind::ReplicaStarted,
            Some(WorkloadName::new(workload).expect("valid")),
            Some(0),
            text.into(),
        )
    }

    /// A fleet of three where node-3 is down, with two workloads.
    pub(crate) fn snapshot() -> Snapshot {
        Snapshot {
            source: "127.0.0.1:7946".into(),
            nodes: vec![
                node("node-1", Liveness::Alive),
                node("node-2", Liveness::Alive),
                node("node-3", Liveness::Down),
            ],
            workloads: vec![workload("web"), workload("db")],
            replicas: vec![replica("web", 0, "node-1"), replica("db", 0, "node-2")],
            leases: Vec::new(),
            events: vec![
                event(1_000, "node-1", "web", "starting web/0"),
                event(2_000, "node-2", "db", "starting db/0"),
            ],
            events_missing: vec![(NodeId::new("node-3").expect("valid"), "down".into())],
            error: None,
        }
    }

    fn keys(view: &mut View, snapshot: &Snapshot, keys: &[Key]) {
        for key in keys {
            assert_eq!(view.handle_key(*key, snapshot), Control::Continue);
        }
    }

    #[test]
    fn the_filter_hides_rows_without_the_text_and_esc_clears_it() {
        let snap = snapshot();
        let mut view = View::default();
        keys(
            &mut view,
            &snap,
            &[
                Key::Char('/'),
                Key::Char('N'),
                Key::Char('o'),
                Key::Char('d'),
                Key::Char('e'),
                Key::Char('-'),
                Key::Char('2'),
                Key::Enter,
            ],
        );
        assert_eq!(view.filter, "Node-2");
        let nodes = rows(Pane::Nodes, &snap, &view);
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0][0], "node-2");
        keys(&mut view, &snap, &[Key::Esc]);
        assert_eq!(rows(Pane::Nodes, &snap, &view).len(), 3);
    }

    #[test]
    fn s_cycles_the_sort_column_of_the_focused_pane() {
        let snap = snapshot();
        let mut view = View::default();
        keys(&mut view, &snap, &[Key::Tab]);
        assert_eq!(view.pane, Pane::Workloads);
        let names = |view: &View| -> Vec<String> {
            rows(Pane::Workloads, &snap, view)
                .into_iter()
                .map(|r| r[0].clone())
                .collect()
        };
        assert_eq!(names(&view), ["db", "web"], "sorted by name");
        keys(&mut view, &snap, &[Key::Char('s')]);
        assert_eq!(view.sort_of(Pane::Workloads), 1);
        assert_eq!(view.sort_of(Pane::Nodes), 0, "other panes keep theirs");
    }

    #[test]
    fn following_a_workload_shows_only_its_replicas_and_events() {
        let snap = snapshot();
        let mut view = View::default();
        // Workloads sorted by name: db, web; select web and follow it.
        keys(&mut view, &snap, &[Key::Tab, Key::Down, Key::Enter]);
        assert_eq!(view.followed.as_ref().map(|w| w.as_str()), Some("web"));
        let replicas = rows(Pane::Replicas, &snap, &view);
        assert_eq!(replicas.len(), 1);
        assert_eq!(replicas[0][0], "web/0");
        let events = rows(Pane::Events, &snap, &view);
        assert_eq!(events.len(), 1);
        assert!(events[0][4].contains("web/0"));
        keys(&mut view, &snap, &[Key::Esc]);
        assert_eq!(rows(Pane::Events, &snap, &view).len(), 2);
    }

    #[test]
    fn q_and_ctrl_c_quit_but_not_while_typing_a_filter() {
        let snap = snapshot();
        let mut view = View::default();
        assert_eq!(view.handle_key(Key::Char('q'), &snap), Control::Quit);
        view.editing = true;
        assert_eq!(view.handle_key(Key::Char('q'), &snap), Control::Continue);
        assert_eq!(view.filter, "q");
        assert_eq!(view.handle_key(Key::Interrupt, &snap), Control::Quit);
    }
}
