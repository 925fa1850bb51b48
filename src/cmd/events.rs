//! `starling get events`: the fleet's events, which the node asked gathers from its live peers
//! and merges by HLC. `--follow` asks again every second from the newest event seen and
//! prints only new ones until Ctrl-C.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use starling_protocol::events::{EVENTS_LIMIT_MAX, EventPage, EventQuery, EventScope};
use starling_protocol::hlc::Timestamp;
use starling_protocol::quantity::parse_duration_ms;
use starling_protocol::wire::{ApiRequest, ApiResponse};
use starling_protocol::{NodeId, WorkloadName};

use super::client::{Target, ask, runtime};
use crate::output::{self, Format};

/// The flags of `get events` (refused with any other kind).
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct EventArgs {
    /// Events: only those of this workload.
    #[arg(long, value_name = "WORKLOAD")]
    pub workload: Option<WorkloadName>,
    /// Events: keep printing new ones until Ctrl-C (asks every second).
    #[arg(long)]
    pub follow: bool,
    /// Events: only those of the last DURATION (`30s`, `10m`, `1h30m`).
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Events: most to print (the newest ones; default 200, at most 2000).
    #[arg(long)]
    pub limit: Option<u32>,
}

/// How often `--follow` asks.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);
/// How far before the newest event seen `--follow` asks again: a node whose clock runs a
/// little behind records events with timestamps older than ones already printed, and they
/// must not be missed (those already printed are not printed twice).
const FOLLOW_LOOKBACK_MS: u64 = 10_000;

/// `starling get events`.
pub fn run(target: &Target, args: EventArgs, format: Format) -> anyhow::Result<ExitCode> {
    let query = query(&args, starling_node::clock::now_ms())?;
    if !args.follow {
        return Ok(output::print(
            &ask(target, &ApiRequest::Events(query))?,
            format,
        ));
    }
    runtime()?.block_on(follow(target, query, format))
}

/// Refuses the events flags with another kind of `get`, which would silently ignore them.
pub fn refuse_with_other_kinds(args: &EventArgs) -> anyhow::Result<()> {
    if *args != EventArgs::default() {
        anyhow::bail!("--workload, --follow, --since and --limit go with `starling get events`");
    }
    Ok(())
}

/// The query the flags ask for, at wall time `now_ms`.
fn query(args: &EventArgs, now_ms: u64) -> anyhow::Result<EventQuery> {
    let since = match &args.since {
        Some(text) => {
            let ago = parse_duration_ms(text).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
            Some(just_before(now_ms.saturating_sub(ago)))
        }
        None => None,
    };
    let limit = args.limit.unwrap_or(200);
    if limit == 0 || limit > EVENTS_LIMIT_MAX {
        anyhow::bail!("--limit: between 1 and {EVENTS_LIMIT_MAX}, got {limit}");
    }
    Ok(EventQuery {
        workload: args.workload.clone(),
        since,
        limit,
        scope: EventScope::Fleet,
    })
}

/// A cursor just before everything recorded at or after `ms` (ties within that millisecond
/// are not worth a node id that sorts last).
fn just_before(ms: u64) -> Timestamp {
    Timestamp {
        physical_ms: ms.saturating_sub(1),
        logical: u32::MAX,
        node: NodeId::new("z").expect("`z` is a valid node id"),
    }
}

/// Prints what is there, then every new event until Ctrl-C.
async fn follow(target: &Target, first: EventQuery, format: Format) -> anyhow::Result<ExitCode> {
    let mut client = target.connect().await?;
    let page = match client.call(&ApiRequest::Events(first.clone())).await? {
        ApiResponse::Events(page) => page,
        other => return Ok(output::print(&other, format)),
    };
    let mut printer = Printer::new(format);
    let mut seen = BTreeSet::new();
    printer.page(&page, &mut seen);
    let mut query = EventQuery {
        limit: EVENTS_LIMIT_MAX,
        ..first
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
        }
        if let Some(newest) = seen.last() {
            query.since = Some(just_before(
                newest.physical_ms.saturating_sub(FOLLOW_LOOKBACK_MS),
            ));
        }
        match client.call(&ApiRequest::Events(query.clone())).await {
            Ok(ApiResponse::Events(page)) => printer.page(&page, &mut seen),
            Ok(other) => {
                output::print(&other, Format::Table);
            }
            Err(e) => {
                // The node may be restarting: say so and try it again at the next tick.
                eprintln!("(no answer: {e}; trying again)");
                if let Ok(again) = target.connect().await {
                    client = again;
                }
            }
        }
        // What is older than the lookback window is never asked for again.
        if let Some(newest) = seen.last().map(|t| t.physical_ms) {
            let horizon = newest.saturating_sub(2 * FOLLOW_LOOKBACK_MS);
            seen.retain(|t| t.physical_ms >= horizon);
        }
    }
    client.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Prints followed events as they come: one row (or one JSON object) per event.
struct Printer {
    format: Format,
    header: bool,
    missing: BTreeSet<NodeId>,
}

impl Printer {
    fn new(format: Format) -> Self {
        Printer {
            format,
            header: false,
            missing: BTreeSet::new(),
        }
    }

    fn page(&mut self, page: &EventPage, seen: &mut BTreeSet<Timestamp>) {
        // Said once per change, not at every poll.
        let missing: BTreeSet<NodeId> = page.missing.iter().map(|(n, _)| n.clone()).collect();
        if missing != self.missing {
            for (node, why) in page
                .missing
                .iter()
                .filter(|(n, _)| !self.missing.contains(n))
            {
                eprintln!("(no events from {node}: {why})");
            }
            self.missing = missing;
        }
        for event in &page.events {
            if !seen.insert(event.at.clone()) {
                continue;
            }
            match self.format {
                Format::Json => println!("{}", output::event_json(event)),
                Format::Table => {
                    if !self.header {
                        println!("{}", output::event_line_header());
                        self.header = true;
                    }
                    println!("{}", output::event_line(event));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_cursor_just_before_the_duration_ago() {
        let args = EventArgs {
            since: Some("10m".into()),
            ..EventArgs::default()
        };
        let q = query(&args, 1_000_000).expect("valid");
        let since = q.since.expect("a cursor");
        assert_eq!(since.physical_ms, 1_000_000 - 600_000 - 1);
        assert_eq!(q.limit, 200);
        assert_eq!(q.scope, EventScope::Fleet);
        let bad = EventArgs {
            limit: Some(0),
            ..EventArgs::default()
        };
        assert!(query(&bad, 0).is_err());
        let bad = EventArgs {
            since: Some("yesterday".into()),
            ..EventArgs::default()
        };
        assert!(
            query(&bad, 0)
                .expect_err("refused")
                .to_string()
                .contains("--since")
        );
    }
}
