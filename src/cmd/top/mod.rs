//! `starling top`: a live full-screen view of the fleet for a terminal (an SSH session):
//! nodes, workloads, replicas, leases and the fleet's events, refreshed every second over the
//! same API the other commands use.
//!
//! Three parts: `model` (the snapshot, the operator's view and what keys do), `render` (a
//! pure function of both), and this loop, which owns the terminal. A thread fetches
//! snapshots so a slow node never freezes the keys. The terminal is restored on `q`,
//! Ctrl-C, an error, and a panic (ratatui's `init` installs the hook).

mod model;
mod render;

use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers};
use starling_protocol::events::{EventQuery, EventScope};
use starling_protocol::wire::{ApiRequest, ApiResponse, ObjectKind};

use super::client::{Target, runtime};
use model::{Control, Key, Snapshot, View};

/// `starling top`.
#[derive(clap::Args)]
pub struct TopArgs {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1)]
    interval: u64,
}

/// Most events the events pane holds.
const EVENTS_SHOWN: u32 = 200;
/// How long a key waits to be read before the screen is redrawn anyway.
const KEY_WAIT: Duration = Duration::from_millis(100);

/// Runs the view until `q` or Ctrl-C.
pub fn run(target: &Target, args: TopArgs) -> anyhow::Result<ExitCode> {
    let interval = Duration::from_secs(args.interval.clamp(1, 3600));
    // The first snapshot before the screen switches, so a fleet that cannot be reached is
    // an ordinary error on an ordinary terminal.
    let source = target
        .peer
        .clone()
        .unwrap_or_else(|| format!("local agent ({})", target.data_dir.display()));
    let first = runtime()?.block_on(fetch(target, &source))?;
    let snapshots = spawn_fetcher(target.clone(), source, interval);
    let mut terminal = ratatui::try_init().context("cannot take over the terminal")?;
    let result = ui_loop(&mut terminal, first, &snapshots);
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

fn ui_loop(
    terminal: &mut ratatui::DefaultTerminal,
    first: Snapshot,
    snapshots: &mpsc::Receiver<Result<Snapshot, String>>,
) -> anyhow::Result<()> {
    let mut snapshot = first;
    let mut view = View::default();
    loop {
        loop {
            match snapshots.try_recv() {
                Ok(Ok(next)) => snapshot = next,
                // Keep showing the last good snapshot, with what went wrong on top.
                Ok(Err(why)) => snapshot.error = Some(why),
                Err(mpsc::TryRecvError::Empty) => break,
                // Only a panic ends the fetcher (its hook restored the terminal already).
                Err(mpsc::TryRecvError::Disconnected) => {
                    anyhow::bail!("the refresh thread stopped")
                }
            }
        }
        terminal
            .draw(|frame| render::render(frame, &snapshot, &view))
            .context("cannot draw")?;
        if !event::poll(KEY_WAIT).context("cannot read the terminal")? {
            continue;
        }
        let TermEvent::Key(press) = event::read().context("cannot read the terminal")? else {
            continue;
        };
        if press.kind != KeyEventKind::Press {
            continue;
        }
        let key = match press.code {
            KeyCode::Char('c') if press.modifiers.contains(KeyModifiers::CONTROL) => Key::Interrupt,
            KeyCode::Char(c) => Key::Char(c),
            KeyCode::Enter => Key::Enter,
            KeyCode::Esc => Key::Esc,
            KeyCode::Backspace => Key::Backspace,
            KeyCode::Tab => Key::Tab,
            KeyCode::BackTab => Key::BackTab,
            KeyCode::Up => Key::Up,
            KeyCode::Down => Key::Down,
            _ => continue,
        };
        if view.handle_key(key, &snapshot) == Control::Quit {
            return Ok(());
        }
    }
}

/// A thread that sends a snapshot every `interval` until the receiver is gone.
fn spawn_fetcher(
    target: Target,
    source: String,
    interval: Duration,
) -> mpsc::Receiver<Result<Snapshot, String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok(rt) = runtime() else {
            let _ = tx.send(Err("cannot start the async runtime".into()));
            return;
        };
        loop {
            let started = Instant::now();
            let next = rt
                .block_on(fetch(&target, &source))
                .map_err(|e| format!("refresh failed: {e:#}"));
            if tx.send(next).is_err() {
                return;
            }
            std::thread::sleep(interval.saturating_sub(started.elapsed()));
        }
    });
    rx
}

/// One snapshot: the listings and the fleet's newest events, over one connection.
async fn fetch(target: &Target, source: &str) -> anyhow::Result<Snapshot> {
    let mut client = target.connect().await?;
    let mut snapshot = Snapshot {
        source: source.to_string(),
        ..Snapshot::default()
    };
    let requests = [
        ApiRequest::Get {
            kind: ObjectKind::Nodes,
        },
        ApiRequest::Get {
            kind: ObjectKind::Workloads,
        },
        ApiRequest::Status,
        ApiRequest::Get {
            kind: ObjectKind::Leases,
        },
        ApiRequest::Events(EventQuery {
            workload: None,
            since: None,
            limit: EVENTS_SHOWN,
            scope: EventScope::Fleet,
        }),
    ];
    for request in &requests {
        match client.call(request).await? {
            // A node of an older build has no events: show the rest.
            ApiResponse::Error(e) if matches!(request, ApiRequest::Events(_)) => {
                snapshot.error = Some(format!("no events: {}", e.message));
            }
            ApiResponse::Nodes(rows) => snapshot.nodes = rows,
            ApiResponse::Workloads(rows) => snapshot.workloads = rows,
            ApiResponse::Replicas(rows) => snapshot.replicas = rows,
            ApiResponse::Leases(rows) => snapshot.leases = rows,
            ApiResponse::Events(page) => {
                snapshot.events = page.events;
                snapshot.events_missing = page.missing;
            }
            ApiResponse::Error(e) => anyhow::bail!("{}", e.message),
            _ => anyhow::bail!("the node answered something unexpected"),
        }
    }
    client.close().await;
    Ok(snapshot)
}
