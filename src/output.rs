//! Output for people (aligned tables) and for scripts (`-o json`). A node answers with typed
//! data ([`ApiResponse`]); how it reads is decided here, and only here.

pub(crate) mod answers;
mod events;
pub mod progress;
pub mod rollout;
mod services;

use std::fmt::Write as _;
use std::process::ExitCode;

use serde_json::json;
use starling_protocol::desired::RevisionId;
use starling_protocol::wire::ApiResponse;

pub use events::{event_json, event_line, event_line_header};
#[cfg(feature = "top")]
pub use events::{utc, what};

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// Prints an answer for people or scripts; returns the exit code it implies (1 for an error).
/// An error for people goes to stderr with one line per field error.
pub fn print(response: &ApiResponse, format: Format) -> ExitCode {
    match (response, format) {
        (ApiResponse::Error(error), Format::Table) => {
            eprintln!("error: {}", error.message);
            for field in &error.fields {
                eprintln!("  {field}");
            }
        }
        (ApiResponse::LogChunk { lines, .. }, _) => {
            for line in lines {
                println!("{line}");
            }
        }
        (_, Format::Json) => println!("{}", json(response)),
        (_, Format::Table) => print!("{}", text(response)),
    }
    let refused = match response {
        ApiResponse::Error(_) => true,
        // A device that was not admitted fails the command, as an error would.
        ApiResponse::Admitted(rows) => rows.iter().any(|r| r.error.is_some()),
        _ => false,
    };
    if refused {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// An answer as people read it: a table, or a sentence for a write or a lease.
pub fn text(response: &ApiResponse) -> String {
    match response {
        ApiResponse::Written {
            name,
            revision,
            at,
            changed,
        } => {
            // The number alone can name two writes made at two peers at once; the id cannot.
            let id = RevisionId {
                number: *revision,
                at: at.clone(),
            };
            match (changed, revision) {
                (false, _) => format!("{name} unchanged (revision {id})\n"),
                (true, 0) => format!("{name} deleted\n"),
                (true, _) => format!("{name} written (revision {id})\n"),
            }
        }
        ApiResponse::Lease(lease) => format!(
            "{} held by {} (epoch {}, token {})\n",
            lease.name, lease.holder, lease.epoch, lease.fencing_token
        ),
        ApiResponse::LogChunk { lines, .. } => lines.iter().map(|l| format!("{l}\n")).collect(),
        ApiResponse::Error(error) => format!("error: {}\n", error.message),
        ApiResponse::Rollout(report) => format!("{}\n", rollout::line(report)),
        ApiResponse::ObjectWritten {
            key,
            at,
            rolled,
            reloaded,
        } => {
            let mut line = format!("{key} written (version {})", at.physical_ms);
            if !rolled.is_empty() {
                let names: Vec<&str> = rolled.iter().map(|w| w.as_str()).collect();
                line.push_str(&format!("; rolling out to {}", names.join(", ")));
            }
            if !reloaded.is_empty() {
                let names: Vec<&str> = reloaded.iter().map(|w| w.as_str()).collect();
                line.push_str(&format!("; files rewritten in {}", names.join(", ")));
            }
            format!("{line}\n")
        }
        ApiResponse::Events(page) => format!(
            "{}{}",
            answers::table(response).map_or_else(String::new, |t| t.render()),
            events::notes(page)
        ),
        ApiResponse::Services { answered_by, .. } => format!(
            "{}(as node {answered_by} sees the fleet)\n",
            answers::table(response).map_or_else(String::new, |t| t.render())
        ),
        listing => answers::table(listing).map_or_else(String::new, |t| t.render()),
    }
}

/// An answer as scripts read it. The keys are an interface: scripts and tests depend on them.
pub fn json(response: &ApiResponse) -> serde_json::Value {
    match response {
        ApiResponse::Written {
            name,
            revision,
            at,
            changed,
        } => {
            let id = RevisionId {
                number: *revision,
                at: at.clone(),
            };
            json!({
                "name": name, "revision": revision, "revision_id": id.to_string(),
                "changed": changed,
            })
        }
        ApiResponse::Lease(lease) => json!({
            "name": lease.name.as_str(), "holder": lease.holder.as_str(), "epoch": lease.epoch,
            "token": lease.fencing_token,
        }),
        ApiResponse::LogChunk { lines, end } => json!({ "lines": lines, "end": end }),
        ApiResponse::Error(error) => json!({
            "error": error.message,
            "fields": error.fields.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
        }),
        ApiResponse::Rollout(report) => rollout::json(report),
        ApiResponse::ObjectWritten {
            key,
            at,
            rolled,
            reloaded,
        } => json!({
            "kind": key.kind.as_str(), "name": key.name.as_str(),
            "version": at.physical_ms, "node": at.node.as_str(),
            "rolled": rolled, "reloaded": reloaded,
        }),
        listing => answers::json(listing),
    }
}

/// A table: a header row and rows of cells, printed with columns aligned.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(
            cells.len(),
            self.header.len(),
            "a row has one cell per column"
        );
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}
