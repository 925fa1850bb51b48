//! Draws a [`Snapshot`] as the operator's [`View`] asks: a pure function of both, so a test
//! renders it into ratatui's `TestBackend` and reads the cells.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState};

use super::model::{Pane, Snapshot, View, rows};

/// The keys, as the bottom line shows them.
const HELP: &str = " Tab/Shift-Tab pane · s sort · / filter · Enter/f follow workload · Esc clear · j/k select · q quit";

/// Draws the whole screen.
pub fn render(frame: &mut Frame, snapshot: &Snapshot, view: &View) {
    let [title, top, middle, bottom, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Percentage(30),
        Constraint::Percentage(28),
        Constraint::Min(6),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let [nodes, workloads] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(top);
    let [replicas, leases] =
        Layout::horizontal([Constraint::Percentage(62), Constraint::Percentage(38)]).areas(middle);
    frame.render_widget(Paragraph::new(title_line(snapshot, view)), title);
    for (pane, area) in [
        (Pane::Nodes, nodes),
        (Pane::Workloads, workloads),
        (Pane::Replicas, replicas),
        (Pane::Leases, leases),
        (Pane::Events, bottom),
    ] {
        pane_table(frame, snapshot, view, pane, area);
    }
    let bottom_line = if view.editing {
        Line::from(vec![
            Span::styled(" filter: ", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(view.filter.clone()),
            Span::styled("▏", Style::new().fg(Color::Yellow)),
            Span::raw("  (Enter keeps it, Esc clears it)"),
        ])
    } else {
        Line::from(Span::styled(HELP, Style::new().fg(Color::DarkGray)))
    };
    frame.render_widget(Paragraph::new(bottom_line), help);
}

fn title_line(snapshot: &Snapshot, view: &View) -> Line<'static> {
    let alive = snapshot
        .nodes
        .iter()
        .filter(|n| n.view.liveness != starling_protocol::placement::Liveness::Down)
        .count();
    let mut spans = vec![
        Span::styled(" starling top ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "· {} · nodes {alive}/{} up · workloads {} · replicas {}",
            snapshot.source,
            snapshot.nodes.len(),
            snapshot.workloads.len(),
            snapshot.replicas.len()
        )),
    ];
    if let Some(w) = &view.followed {
        spans.push(Span::styled(
            format!(" · following {w}"),
            Style::new().fg(Color::Cyan),
        ));
    }
    if !view.filter.is_empty() && !view.editing {
        spans.push(Span::styled(
            format!(" · filter \"{}\"", view.filter),
            Style::new().fg(Color::Yellow),
        ));
    }
    if let Some(error) = &snapshot.error {
        spans.push(Span::styled(
            format!(" · {error}"),
            Style::new().fg(Color::Red),
        ));
    }
    Line::from(spans)
}

fn pane_table(frame: &mut Frame, snapshot: &Snapshot, view: &View, pane: Pane, area: Rect) {
    let shown = rows(pane, snapshot, view);
    let header = pane.header();
    let sort = view.sort_of(pane);
    let focused = view.pane == pane;
    let mut title = format!(" {} ({}) · by {} ", pane.title(), shown.len(), header[sort]);
    if pane == Pane::Events && !snapshot.events_missing.is_empty() {
        let names: Vec<&str> = snapshot
            .events_missing
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        title.push_str(&format!("· none from {} ", names.join(", ")));
    }
    let border = if focused {
        Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
    } else {
        Style::new().fg(Color::DarkGray)
    };
    let block = Block::bordered().title(title).border_style(border);
    let widths = widths(header, &shown);
    let table = Table::new(
        shown.iter().map(|cells| {
            let style = row_style(pane, cells);
            Row::new(cells.clone()).style(style)
        }),
        widths,
    )
    .header(Row::new(header.to_vec()).style(Style::new().add_modifier(Modifier::BOLD)))
    .block(block)
    .row_highlight_style(if focused {
        Style::new().add_modifier(Modifier::REVERSED)
    } else {
        Style::new()
    });
    let mut state = TableState::default().with_selected(view.selected_of(pane, shown.len()));
    frame.render_stateful_widget(table, area, &mut state);
}

/// A down node, an unhealthy replica and a failure event stand out.
fn row_style(pane: Pane, cells: &[String]) -> Style {
    let cell = |i: usize| cells.get(i).map_or("", String::as_str);
    let bad = match pane {
        Pane::Nodes => cell(1).starts_with("down"),
        Pane::Replicas => cell(3) == "unhealthy" || cell(2) == "Unknown" || cell(2) == "Exited",
        Pane::Events => matches!(
            cell(2),
            "node-down" | "crash-loop" | "start-failed" | "rollout-failed" | "lease-lost"
        ),
        Pane::Workloads | Pane::Leases => false,
    };
    let warn = match pane {
        Pane::Nodes => cell(1).starts_with("suspect"),
        Pane::Events => matches!(cell(2), "failover" | "rolled-back"),
        _ => false,
    };
    if bad {
        Style::new().fg(Color::Red)
    } else if warn {
        Style::new().fg(Color::Yellow)
    } else {
        Style::new()
    }
}

/// Each column as wide as its widest cell (at most 40), the last one takes what is left.
fn widths(header: &[&str], rows: &[Vec<String>]) -> Vec<Constraint> {
    let last = header.len() - 1;
    (0..header.len())
        .map(|i| {
            if i == last {
                return Constraint::Fill(1);
            }
            let widest = rows
                .iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0);
            Constraint::Length(widest.min(40) as u16)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::super::model::{Key, tests::snapshot};
    use super::*;

    /// The screen's text, one string per line.
    fn screen(snapshot: &Snapshot, view: &View) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(140, 40)).expect("test terminal");
        terminal
            .draw(|frame| render(frame, snapshot, view))
            .expect("draws");
        let buffer = terminal.backend().buffer();
        let area = buffer.area;
        (0..area.height)
            .map(|y| {
                (0..area.width)
                    .map(|x| buffer[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect()
    }

    fn line_with<'a>(lines: &'a [String], text: &str) -> Option<&'a String> {
        lines.iter().find(|l| l.contains(text))
    }

    #[test]
    fn nodes_are_listed_and_a_down_node_reads_down_in_red() {
        let snap = snapshot();
        let view = View::default();
        let lines = screen(&snap, &view);
        for node in ["node-1", "node-2", "node-3"] {
            assert!(line_with(&lines, node).is_some(), "{node} on screen");
        }
        let row = line_with(&lines, "node-3").expect("node-3's row");
        assert!(row.contains("down"), "{row}");
        assert!(lines[0].contains("nodes 2/3 up"), "{}", lines[0]);
        // The style of node-3's state cell is red.
        let mut terminal = Terminal::new(TestBackend::new(140, 40)).expect("test terminal");
        terminal
            .draw(|frame| render(frame, &snap, &view))
            .expect("draws");
        let buffer = terminal.backend().buffer();
        let y = lines
            .iter()
            .position(|l| l.contains("node-3"))
            .expect("node-3's row");
        let x = lines[y][..lines[y].find("down").expect("down")]
            .chars()
            .count();
        assert_eq!(buffer[(x as u16, y as u16)].fg, Color::Red);
        assert!(
            line_with(&lines, "none from node-3").is_some(),
            "the events pane names the node whose events are missing"
        );
    }

    #[test]
    fn filtering_hides_rows_on_screen() {
        let snap = snapshot();
        let mut view = View::default();
        for key in [Key::Char('/'), Key::Char('d'), Key::Char('b'), Key::Enter] {
            view.handle_key(key, &snap);
        }
        let lines = screen(&snap, &view);
        assert!(line_with(&lines, "db/0").is_some());
        assert!(
            line_with(&lines, "web/0").is_none(),
            "web's rows are filtered out"
        );
        assert!(line_with(&lines, "filter \"db\"").is_some());
    }

    #[test]
    fn a_followed_workload_is_named_and_others_replicas_are_hidden() {
        let snap = snapshot();
        let mut view = View::default();
        for key in [Key::Tab, Key::Enter] {
            view.handle_key(key, &snap);
        }
        let lines = screen(&snap, &view);
        assert!(lines[0].contains("following db"), "{}", lines[0]);
        assert!(line_with(&lines, "db/0").is_some());
        assert!(line_with(&lines, "web/0").is_none());
    }
}
