//! Live progress of the CLI's long operations (`apply --wait`, `image load`, `join`), always
//! on stderr so that stdout (`-o json` above all) carries only the command's answer.
//!
//! Two halves: pure functions from where an operation stands to one line of text (tested
//! without a terminal), and [`Progress`], the writer that decides how a line reaches the
//! reader. On a terminal the current line is redrawn in place (carriage return, clear line);
//! anywhere else (a log, CI, a pipe) a line is written only when the state changes, with no
//! control characters at all, so a log of a ten-minute wait stays a few readable lines.

use std::io::{self, IsTerminal as _, Write};
use std::time::Duration;

use starling_node::cluster::JoinStep;
use starling_protocol::NodeId;
use starling_protocol::api::RolloutReport;

use super::answers::human_bytes;

/// Returns to the start of the line and clears it (ANSI "erase in line", understood by every
/// terminal a CLI meets today).
const CLEAR_LINE: &str = "\r\x1b[2K";

/// How long an operation has run: `850 ms` below a second, `12 s`, `3 min 05 s`.
pub fn elapsed(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        format!("{} ms", d.as_millis())
    } else if secs < 60 {
        format!("{secs} s")
    } else {
        format!("{} min {:02} s", secs / 60, secs % 60)
    }
}

/// Where a followed rollout stands, without the time (what changes when the rollout moves):
/// `web: 1/3 replicas updated and healthy, 1 pending, 0 failing, 3 serving, revision 4 (from 3)`,
/// then what it waits for (paused, a promote).
pub fn rollout_state(r: &RolloutReport) -> String {
    let p = &r.progress;
    let from = match (&r.rollback_of, r.previous) {
        (Some(of), _) => format!(" (rollback of {})", of.number),
        (None, Some(previous)) => format!(" (from {previous})"),
        (None, None) => String::new(),
    };
    let mut text = format!(
        "{}: {}/{} replicas updated and healthy, {} pending, {} failing, {} serving, revision {}{from}",
        r.name, p.updated, p.replicas, p.pending, p.failing, p.serving, r.revision
    );
    for state in super::rollout::states(r) {
        text.push_str(", ");
        text.push_str(&state);
    }
    text
}

/// A state line with how long the operation has run: `STATE, 12 s`.
pub fn with_elapsed(state: &str, d: Duration) -> String {
    format!("{state}, {}", elapsed(d))
}

/// Bytes sent of a transfer: `image.tar: 12.0Mi of 40.0Mi (30%), 8.0Mi/s, 1 s`. The rate is
/// the mean since the start: an engine reads in bursts, so the last interval's rate jumps.
pub fn transfer(what: &str, sent: u64, total: u64, d: Duration) -> String {
    let percent = (sent.saturating_mul(100)).checked_div(total).unwrap_or(100);
    let millis = d.as_millis().max(1);
    let rate = u64::try_from(u128::from(sent) * 1000 / millis).unwrap_or(u64::MAX);
    format!(
        "{what}: {} of {} ({percent}%), {}/s, {}",
        human_bytes(sent),
        human_bytes(total),
        human_bytes(rate),
        elapsed(d)
    )
}

/// A step of a join as the joiner reads it (`elapsed`: since the join began).
pub fn join_step(step: &JoinStep<'_>, node: &NodeId, d: Duration) -> String {
    match step {
        JoinStep::Contacting(seed, addr) => format!(
            "join: contacting {seed} ({addr}): TLS handshake pinned to the token's cluster CA, \
             then the token's secret"
        ),
        JoinStep::Unanswered(seed, why) => {
            format!("join: {seed} did not answer ({why}); trying the next seed")
        }
        JoinStep::Accepted(seed) => format!(
            "join: {seed} accepted node {node}: certificate and cluster keys received after {}",
            elapsed(d)
        ),
        JoinStep::Waiting(wait) => format!(
            "join: no seed answered; trying them again in {} ({} so far)",
            elapsed(*wait),
            elapsed(d)
        ),
    }
}

/// `line` cut to `width` columns (counted in chars, which is what a terminal draws for the
/// text this CLI prints): a wrapped line would defeat the carriage return, which only goes
/// back to the start of the last row. The cut is made before the last [`KEPT_END`] chars,
/// marked `…`, so the time at the end of a line (what moves on every redraw) stays in view.
pub fn fit(line: &str, width: usize) -> String {
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= width {
        return line.to_string();
    }
    let end = KEPT_END.min(width / 2);
    let start = width.saturating_sub(end + 1);
    let mut cut: String = chars[..start].iter().collect();
    cut.push('…');
    cut.extend(&chars[chars.len() - end..]);
    cut
}

/// Chars kept at the end of a line [`fit`] cuts: `, 3 min 05 s`.
const KEPT_END: usize = 12;

/// Writes progress lines: redrawn in place on a terminal, one line per change otherwise.
/// Write errors are ignored on purpose: progress is a courtesy, and a closed stderr must not
/// fail an operation that itself went well.
pub struct Progress<W: Write = io::Stderr> {
    out: W,
    /// Redraw in place (a terminal) or append lines (anything else).
    tty: bool,
    /// Columns of the terminal (only used when `tty`).
    width: usize,
    /// The state last written as a line, so that a log gets a line per change, not per tick.
    last_state: Option<String>,
    /// A line is drawn and not ended (terminal only): cleared before anything else is written.
    live: bool,
}

impl Progress {
    /// Progress on stderr, in place when stderr is a terminal.
    pub fn stderr() -> Self {
        let err = io::stderr();
        let tty = err.is_terminal();
        Progress::new(err, tty, terminal_width())
    }
}

impl<W: Write> Progress<W> {
    /// Progress into `out`; `tty` says whether it is a terminal `width` columns wide.
    pub fn new(out: W, tty: bool, width: usize) -> Self {
        Progress {
            out,
            tty,
            width: width.max(10),
            last_state: None,
            live: false,
        }
    }

    /// Shows where the operation stands: `line` is `state` with what changes on every tick
    /// (the time, a rate). A terminal gets `line` redrawn every time; a log gets `line` only
    /// when `state` differs from the last one written.
    pub fn update(&mut self, state: &str, line: &str) {
        if self.tty {
            let _ = write!(self.out, "{CLEAR_LINE}{}", fit(line, self.width));
            let _ = self.out.flush();
            self.live = true;
        } else if self.last_state.as_deref() != Some(state) {
            let _ = writeln!(self.out, "{line}");
            let _ = self.out.flush();
        }
        self.last_state = Some(state.to_string());
    }

    /// A line that stays (a step done, a note, the final summary): on a terminal it replaces
    /// the live line, which the next [`update`](Self::update) draws again below it.
    pub fn say(&mut self, line: &str) {
        self.clear();
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }

    /// Removes the live line from a terminal (before the command prints its answer).
    pub fn clear(&mut self) {
        if self.live {
            let _ = write!(self.out, "{CLEAR_LINE}");
            let _ = self.out.flush();
            self.live = false;
        }
    }

    /// What was written, for tests.
    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// The terminal's width: asked of the terminal when the build has crossterm (`top`), else
/// `$COLUMNS`, else 80.
fn terminal_width() -> usize {
    // A pseudo-terminal nobody sized (`script`, some CI runners) says 0 columns.
    #[cfg(feature = "top")]
    if let Ok((columns @ 1.., _)) = ratatui::crossterm::terminal::size() {
        return usize::from(columns);
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(80)
}

#[cfg(test)]
mod tests;
