//! `starling rollout status|pause|resume|promote`, and the follower `apply --wait` shares
//! with `rollout status --watch`.
//!
//! Exit codes of a follower, for scripts: 0 the revision rolled out (every replica on it,
//! settled); 2 it was rolled back, or is itself an automatic rollback (the reason goes to
//! stderr); 1 it fails with no rollback coming (failing replicas and `auto_rollback` off, or
//! no previous revision), another revision replaced it, or the agent could not be asked.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use starling_node::api::Client;
use starling_protocol::WorkloadName;
use starling_protocol::api::RolloutReport;
use starling_protocol::wire::{ApiRequest, ApiResponse, RolloutAction};

use super::client::{Target, ask};
use super::workloads::WorkloadArg;
use crate::output::progress::{self, Progress};
use crate::output::{self, Format};

/// `starling rollout ...`.
#[derive(clap::Subcommand)]
pub enum RolloutCommand {
    /// How far the current revision has rolled out (exit 2 if it is an automatic rollback).
    Status(StatusArgs),
    /// Stop moving replicas to the current revision until `rollout resume`.
    Pause(WorkloadArg),
    /// Go on with a paused rollout.
    Resume(WorkloadArg),
    /// Let a canary rollout go on past its canaries.
    Promote(WorkloadArg),
}

/// `starling rollout status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// The workload.
    name: WorkloadName,
    /// Follow the rollout, printing a line whenever it changes, until it completes (exit 0),
    /// is rolled back (exit 2) or fails (exit 1).
    #[arg(short, long)]
    watch: bool,
}

/// How often a follower asks.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Failed asks in a row before a follower gives up (10 s at the poll interval): an agent
/// restarting or a connection refused over a cap is retried, a gone fleet is not.
const POLL_FAILURES_MAX: u32 = 20;

/// Runs a `rollout` subcommand.
pub fn run(target: &Target, what: RolloutCommand, format: Format) -> anyhow::Result<ExitCode> {
    let (name, action) = match what {
        RolloutCommand::Status(args) if args.watch => {
            return follow(target, &args.name, None, format, Shown::Watch);
        }
        RolloutCommand::Status(args) => return status(target, args.name, format),
        RolloutCommand::Pause(w) => (w.name, RolloutAction::Pause),
        RolloutCommand::Resume(w) => (w.name, RolloutAction::Resume),
        RolloutCommand::Promote(w) => (w.name, RolloutAction::Promote),
    };
    let answer = ask(
        target,
        &ApiRequest::Rollout {
            name: name.clone(),
            action,
        },
    )?;
    match (&answer, format) {
        (ApiResponse::Written { changed, at, .. }, Format::Table) => {
            let done = match action {
                RolloutAction::Pause => "paused",
                RolloutAction::Resume => "resumed",
                RolloutAction::Promote => "promoted",
            };
            let already = if *changed { "" } else { "already " };
            println!(
                "{name}: rollout {already}{done} (written at peer {} as {})",
                at.node,
                written_id(&answer)
            );
            Ok(ExitCode::SUCCESS)
        }
        _ => Ok(output::print(&answer, format)),
    }
}

/// The revision id of a `Written` answer.
fn written_id(answer: &ApiResponse) -> String {
    match answer {
        ApiResponse::Written { revision, at, .. } => starling_protocol::desired::RevisionId {
            number: *revision,
            at: at.clone(),
        }
        .to_string(),
        _ => String::new(),
    }
}

/// `rollout status NAME`: printed once; exit 2 if the current revision is an automatic
/// rollback, so a script notices without parsing.
fn status(target: &Target, name: WorkloadName, format: Format) -> anyhow::Result<ExitCode> {
    let answer = ask(target, &ApiRequest::RolloutStatus { name })?;
    let code = output::print(&answer, format);
    match &answer {
        ApiResponse::Rollout(report) if report.automatic_rollback().is_some() => {
            Ok(ExitCode::from(2))
        }
        _ => Ok(code),
    }
}

/// Where a followed rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Still moving, paused, or waiting for a promote: ask again.
    Going,
    /// Every replica runs the followed revision, settled. Exit 0.
    Complete,
    /// The followed revision was rolled back, or is an automatic rollback itself. Exit 2.
    RolledBack(String),
    /// It fails and nothing will roll it back, or another revision replaced it. Exit 1.
    Failed(String),
}

impl Verdict {
    /// The last line a follower prints for scripts.
    pub fn json(&self) -> serde_json::Value {
        let (verdict, message) = match self {
            Verdict::Going => ("going", None),
            Verdict::Complete => ("complete", None),
            Verdict::RolledBack(why) => ("rolled_back", Some(why)),
            Verdict::Failed(why) => ("failed", Some(why)),
        };
        json!({ "verdict": verdict, "message": message, "exit_code": self.code() })
    }

    /// How it ended, in a word or two, for the summary line of a follower's progress.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Going => "still rolling out",
            Verdict::Complete => "rolled out",
            Verdict::RolledBack(_) => "rolled back",
            Verdict::Failed(_) => "failed",
        }
    }

    /// The exit code of a follower that ends here.
    pub fn code(&self) -> u8 {
        match self {
            Verdict::Going | Verdict::Complete => 0,
            Verdict::Failed(_) => 1,
            Verdict::RolledBack(_) => 2,
        }
    }
}

/// Where the rollout of revision `followed` stands, by `report` (the workload's current one).
pub fn verdict(report: &RolloutReport, followed: u64) -> Verdict {
    let name = &report.name;
    if report.revision != followed {
        return match &report.rollback_of {
            Some(of) if of.number == followed => Verdict::RolledBack(format!(
                "{name}: revision {followed} was rolled back by revision {}: {}",
                report.revision,
                of.failure.as_deref().unwrap_or("by hand")
            )),
            _ => Verdict::Failed(format!(
                "{name}: revision {followed} was replaced by revision {} before it rolled out",
                report.revision
            )),
        };
    }
    if let Some(of) = report.automatic_rollback() {
        return Verdict::RolledBack(format!(
            "{name}: revision {followed} is an automatic rollback of revision {}, whose rollout \
             failed: {}",
            of.number,
            of.failure.as_deref().unwrap_or_default()
        ));
    }
    if report.complete() {
        return Verdict::Complete;
    }
    let failing = report.progress.failing;
    // The fleet rolls back a failing revision only with auto_rollback, something to go back
    // to, and never a rollback itself (that could swing back and forth).
    let no_rollback = if !report.auto_rollback {
        Some("[update] auto_rollback is off")
    } else if report.previous.is_none() {
        Some("there is no previous revision to roll back to")
    } else if report.rollback_of.is_some() {
        Some("it is a rollback, which the fleet never rolls back")
    } else {
        None
    };
    if failing > 0
        && let Some(why) = no_rollback
    {
        return Verdict::Failed(format!(
            "{name}: revision {followed} fails: {failing} replica(s) crash loop on it and {why}; \
             fix the spec and apply it again, or starling rollback {name}"
        ));
    }
    Verdict::Going
}

/// How a follower shows a rollout on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// `rollout status --watch`: the rollout is the output, a line (or object) on stdout per
    /// change.
    Watch,
    /// `apply --wait`: live progress on stderr; stdout gets only where the rollout ended (its
    /// last line or object, then the verdict), so `-o json` stays the answer and nothing else.
    Wait,
}

/// Follows `name`'s rollout of revision `followed` (default: the current one) until a
/// verdict, showing it as `shown` says; returns the verdict's exit code.
pub fn follow(
    target: &Target,
    name: &WorkloadName,
    followed: Option<u64>,
    format: Format,
    shown: Shown,
) -> anyhow::Result<ExitCode> {
    super::client::runtime()?.block_on(async {
        let request = ApiRequest::RolloutStatus { name: name.clone() };
        let mut poller = Poller::default();
        let mut progress = Progress::stderr();
        let started = Instant::now();
        let mut followed = followed;
        let mut printed = String::new();
        loop {
            let answer = poller.ask(target, &request, &mut progress).await;
            let report = match answer {
                Ok(ApiResponse::Rollout(report)) => report,
                other => {
                    // The live line goes before the error, which would otherwise end it.
                    progress.clear();
                    return Ok(output::print(&other?, format));
                }
            };
            let followed = *followed.get_or_insert(report.revision);
            let verdict = verdict(&report, followed);
            let text = match format {
                Format::Table => output::rollout::line(&report),
                Format::Json => output::rollout::json(&report).to_string(),
            };
            let going = verdict == Verdict::Going;
            match shown {
                Shown::Watch if text != printed => {
                    println!("{text}");
                    printed = text;
                }
                Shown::Watch => {}
                Shown::Wait if going => {
                    let state = progress::rollout_state(&report);
                    progress.update(&state, &progress::with_elapsed(&state, started.elapsed()));
                }
                Shown::Wait => {
                    let took = progress::elapsed(started.elapsed());
                    progress.say(&format!(
                        "{name}: revision {followed} {} after {took}",
                        verdict.word()
                    ));
                    println!("{text}");
                }
            }
            match (&verdict, format) {
                (Verdict::Going, _) => {
                    tokio::time::sleep(POLL_INTERVAL).await;
                    continue;
                }
                (Verdict::Complete, Format::Table) => {
                    println!("{name}: revision {followed} rolled out");
                }
                (Verdict::RolledBack(why) | Verdict::Failed(why), Format::Table) => {
                    eprintln!("{why}");
                }
                (_, Format::Json) => println!("{}", verdict.json()),
            }
            poller.close().await;
            return Ok(ExitCode::from(verdict.code()));
        }
    })
}

/// One connection for every ask of a follower, made again when it breaks.
#[derive(Default)]
struct Poller {
    client: Option<Client>,
    failures: u32,
}

impl Poller {
    async fn ask(
        &mut self,
        target: &Target,
        request: &ApiRequest,
        progress: &mut Progress,
    ) -> anyhow::Result<ApiResponse> {
        loop {
            let answer = match self.client.as_mut() {
                Some(client) => client.call(request).await.map_err(anyhow::Error::from),
                None => match target.connect().await {
                    Ok(client) => {
                        self.client = Some(client);
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            match answer {
                Ok(answer) => {
                    self.failures = 0;
                    return Ok(answer);
                }
                Err(e) => {
                    self.client = None;
                    self.failures += 1;
                    if self.failures >= POLL_FAILURES_MAX {
                        return Err(e).with_context(|| {
                            format!("the agent did not answer {POLL_FAILURES_MAX} times in a row")
                        });
                    }
                    if self.failures == 1 {
                        progress.say(&format!("asking again: {e:#}"));
                    }
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
        }
    }

    async fn close(self) {
        if let Some(client) = self.client {
            client.close().await;
        }
    }
}

#[cfg(test)]
mod tests;
