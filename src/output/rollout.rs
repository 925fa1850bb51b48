//! How a rollout reads: the one line `rollout status` prints (and `--watch` prints again
//! whenever it changes), and the revision history `describe` shows, both ways.

use serde_json::{Map, Value, json};
use starling_protocol::api::{AutoscalerReport, Description, RolloutReport};
use starling_protocol::desired::{RollbackOf, WRITES_KEPT, WriteRecord};
use starling_protocol::quantity::format_duration_ms;
use starling_protocol::spec::{ScalingMetric, ScalingPolicy, UpdateOrder, UpdateStrategy};

/// `web: revision 3 (from 2): 4/6 updated, 1 pending, 0 failing, 6 serving, paused`.
pub fn line(r: &RolloutReport) -> String {
    format!("{}: {}", r.name, summary(r))
}

/// [`line`] without the workload's name, for a row of `describe`.
pub fn summary(r: &RolloutReport) -> String {
    let p = &r.progress;
    let from = match (&r.rollback_of, r.previous) {
        (Some(RollbackOf { number, failure }), _) => match failure {
            Some(why) => format!(" (rollback of {number}, whose rollout failed: {why})"),
            None => format!(" (rollback of {number}, by hand)"),
        },
        (None, Some(previous)) => format!(" (from {previous})"),
        (None, None) => String::new(),
    };
    let mut text = format!(
        "revision {}{from}: {}/{} updated, {} pending, {} failing, {} serving",
        r.revision, p.updated, p.replicas, p.pending, p.failing, p.serving
    );
    for state in states(r) {
        text.push_str(", ");
        text.push_str(&state);
    }
    text
}

/// What a rollout waits for, or that it is done.
pub(crate) fn states(r: &RolloutReport) -> Vec<String> {
    if r.complete() {
        return vec!["complete".into()];
    }
    let mut states = Vec::new();
    if r.paused {
        states.push(format!("paused (starling rollout resume {})", r.name));
    }
    if let Some(canary) = r.canary.filter(|c| !c.promoted) {
        states.push(if r.waiting_for_promote() {
            let by_itself = canary.auto_promote_after_ms.map_or_else(String::new, |ms| {
                format!(
                    ", or by itself {} after they settled",
                    format_duration_ms(ms)
                )
            });
            format!(
                "canaries settled: waiting for starling rollout promote {}{by_itself}",
                r.name
            )
        } else {
            format!("canary: the first {} replica(s) move first", canary.count)
        });
    }
    states
}

/// The report for scripts. The keys are an interface, like every `-o json` answer.
pub fn json(r: &RolloutReport) -> Value {
    let p = &r.progress;
    json!({
        "name": r.name,
        "revision": r.revision,
        "revision_id": r.id.as_ref().map(|id| id.to_string()),
        "previous_revision": r.previous,
        "replicas": p.replicas,
        "updated": p.updated,
        "pending": p.pending,
        "failing": p.failing,
        "serving": p.serving,
        "paused": r.paused,
        "canary": r.canary.map(|c| json!({
            "count": c.count,
            "promoted": c.promoted,
            "settled": c.settled,
            "auto_promote_after_ms": c.auto_promote_after_ms,
        })),
        "waiting_for_promote": r.waiting_for_promote(),
        "rollback_of": r.rollback_of.as_ref().map(|of| json!({
            "revision": of.number,
            "failure": of.failure,
            "automatic": of.failure.is_some(),
        })),
        "auto_rollback": r.auto_rollback,
        "complete": r.complete(),
    })
}

/// `[update]` in one line: `rolling, batches of 1, max surge 1, max unavailable 0, ...`.
pub fn update_text(u: &UpdateStrategy) -> String {
    let kind = match u.canary {
        Some(c) => {
            let promote = c.auto_promote_after_ms.map_or_else(
                || "promoted by hand".to_string(),
                |ms| format!("promoted {} after they settle", format_duration_ms(ms)),
            );
            format!("canary ({} first, {promote})", c.count)
        }
        None => "rolling".into(),
    };
    let order = match u.order {
        UpdateOrder::StartFirst => "start-first",
        UpdateOrder::StopFirst => "stop-first",
    };
    format!(
        "{kind}, batches of {}, {order}, max surge {}, max unavailable {}, healthy for {} \
         to count, {} to get healthy, {}",
        u.batch_size,
        u.max_surge,
        u.max_unavailable,
        format_duration_ms(u.min_healthy_ms),
        format_duration_ms(u.health_deadline_ms),
        if u.auto_rollback {
            "rolls back by itself on failure"
        } else {
            "no automatic rollback"
        }
    )
}

/// `[scaling]` in one line, or the fixed count.
pub fn scaling_text(scaling: Option<&ScalingPolicy>, replicas: u32) -> String {
    let Some(s) = scaling else {
        return format!("fixed at {replicas} replica(s) (starling scale)");
    };
    let metric = match &s.metric {
        ScalingMetric::Cpu => format!("CPU at {}% of the request", s.target),
        ScalingMetric::Custom(name) => format!("{name} at {} per replica", s.target),
    };
    format!("{} to {} replicas on {metric}", s.min, s.max)
}

/// How one revision's time as the current one ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End<'a> {
    /// It is the current revision.
    Current,
    /// A new template replaced it: the write that did.
    Replaced(&'a WriteRecord),
    /// The next revision brings back the one before it: the write, and why (`None`: by hand).
    RolledBack(&'a WriteRecord, Option<&'a str>),
    /// The workload was deleted (and later created again).
    Deleted(&'a WriteRecord),
}

/// One revision number's run of writes: its first write on record, later writes of the same
/// number (scale, pause, resume, promote), and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stay<'a> {
    first: &'a WriteRecord,
    later: Vec<&'a WriteRecord>,
    end: End<'a>,
}

/// The revisions the write records tell of, oldest first. Writes that lost to a concurrent
/// one are left out (`describe` lists them as overwritten). Only the current revision says
/// whether it is a rollback, so an older rollback reads as a replacement.
fn stays<'a>(
    writes: &'a [WriteRecord],
    overwritten: &[WriteRecord],
    rollback_of: Option<&'a RollbackOf>,
) -> Vec<Stay<'a>> {
    let mut kept: Vec<&WriteRecord> = writes
        .iter()
        .filter(|w| !overwritten.iter().any(|o| o.at == w.at))
        .collect();
    kept.sort_by(|a, b| a.at.cmp(&b.at));
    let mut runs: Vec<Vec<&WriteRecord>> = Vec::new();
    for w in kept {
        match runs.last_mut() {
            Some(run) if run[0].number == w.number => run.push(w),
            _ => runs.push(vec![w]),
        }
    }
    let last = runs.len().saturating_sub(1);
    let mut stays = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let first = run[0];
        // A delete is no revision; it only ends the one before it.
        if first.number == 0 {
            continue;
        }
        let end = match runs.get(i + 1).map(|next| next[0]) {
            None => End::Current,
            Some(next) if next.number == 0 => End::Deleted(next),
            Some(next) => match rollback_of {
                Some(of) if i + 1 == last && of.number == first.number => {
                    End::RolledBack(next, of.failure.as_deref())
                }
                _ => End::Replaced(next),
            },
        };
        stays.push(Stay {
            first,
            later: run[1..].to_vec(),
            end,
        });
    }
    stays
}

/// The revision history of a description: (row label, text) pairs for people, and JSON.
pub fn history(
    writes: &[WriteRecord],
    overwritten: &[WriteRecord],
    rollback_of: Option<&RollbackOf>,
    now_ms: u64,
) -> (Vec<(String, String)>, Value) {
    let stays = stays(writes, overwritten, rollback_of);
    let mut rows: Vec<(String, String)> = stays
        .iter()
        .map(|s| (format!("revision {}", s.first.number), s.text(now_ms)))
        .collect();
    if writes.len() >= WRITES_KEPT {
        rows.push((
            "history".into(),
            format!("older writes are not kept (the newest {WRITES_KEPT} are)"),
        ));
    }
    (rows, stays.iter().map(Stay::json).collect())
}

/// The rows `describe` shows about rollouts (the current one, the update strategy, scaling,
/// the revision history) and the same for scripts, as keys of the description's object.
pub fn description(d: &Description) -> (Vec<(String, String)>, Map<String, Value>) {
    let mut rows = vec![
        ("rollout".to_string(), summary(&d.rollout)),
        ("update".to_string(), update_text(&d.spec.update)),
        (
            "scaling".to_string(),
            scaling_text(d.spec.scaling.as_ref(), d.spec.replicas),
        ),
    ];
    let (history, history_json) = history(
        &d.writes,
        &d.overwritten,
        d.rollout.rollback_of.as_ref(),
        d.now_ms,
    );
    rows.extend(history);
    if let Some(a) = &d.autoscaler {
        rows.push(("autoscaler".to_string(), autoscaler_text(a, d.now_ms)));
    }
    let mut keys = Map::new();
    keys.insert("rollout".into(), json(&d.rollout));
    keys.insert("history".into(), history_json);
    keys.insert(
        "update".into(),
        serde_json::to_value(d.spec.update).unwrap_or(Value::Null),
    );
    keys.insert(
        "scaling".into(),
        serde_json::to_value(&d.spec.scaling).unwrap_or(Value::Null),
    );
    if let Some(a) = &d.autoscaler {
        keys.insert(
            "autoscaler".into(),
            json!({
                "scaler": a.scaler.as_ref().map(|n| n.to_string()),
                "answered_by_scaler": a.answered_by_scaler,
                "average": a.average,
                "decisions": a.decisions.iter().map(|(at, from, to, why)| json!({
                    "at_ms": at, "from": from, "to": to, "why": why,
                })).collect::<Vec<_>>(),
            }),
        );
    }
    (rows, keys)
}

/// Who scales the workload, what it sees and its last decisions (newest last).
fn autoscaler_text(a: &AutoscalerReport, now_ms: u64) -> String {
    let who = match (&a.scaler, a.answered_by_scaler) {
        (Some(node), true) => format!("scaled by {node} (this node)"),
        (Some(node), false) => format!("scaled by {node} (ask it for its decisions)"),
        (None, _) => "no scaler elected yet".to_string(),
    };
    let mut text = match a.average {
        Some(avg) => format!("{who}; average {avg} per replica"),
        None => who,
    };
    for (at, from, to, why) in a.decisions.iter().rev().take(5).rev() {
        let ago = now_ms.saturating_sub(*at) / 1_000;
        text.push_str(&format!("\n  {ago}s ago: {from} -> {to}: {why}"));
    }
    text
}

/// ` by WHO`, or nothing when the writer is not known.
fn by(w: &WriteRecord) -> String {
    if w.by.is_empty() {
        String::new()
    } else {
        format!(" by {}", w.by)
    }
}

impl Stay<'_> {
    /// For people: who wrote it, later writes of it, how it ended; ages by the answering
    /// node's clock (`now_ms`), to the second, as the rest of `describe`.
    fn text(&self, now_ms: u64) -> String {
        let ago = |w: &WriteRecord| {
            format_duration_ms(now_ms.saturating_sub(w.at.physical_ms) / 1000 * 1000)
        };
        let first = self.first;
        let mut text = format!(
            "written {} ago{} at peer {}",
            ago(first),
            by(first),
            first.at.node
        );
        if let Some(last) = self.later.last() {
            text.push_str(&format!(
                ", then {} write(s) of the same revision (scale, pause, resume or promote), \
                 the last {} ago{}",
                self.later.len(),
                ago(last),
                by(last)
            ));
        }
        let end = match &self.end {
            End::Current => "current".to_string(),
            End::Replaced(w) => {
                format!("replaced by revision {} {} ago{}", w.number, ago(w), by(w))
            }
            End::RolledBack(w, failure) => format!(
                "rolled back {} ago{} (revision {}): {}",
                ago(w),
                by(w),
                w.number,
                failure.unwrap_or("by hand")
            ),
            End::Deleted(w) => format!("deleted {} ago{}", ago(w), by(w)),
        };
        format!("{text}; {end}")
    }

    fn json(&self) -> Value {
        let (ended, end_write, failure) = match &self.end {
            End::Current => ("current", None, None),
            End::Replaced(w) => ("replaced", Some(*w), None),
            End::RolledBack(w, failure) => ("rolled_back", Some(*w), *failure),
            End::Deleted(w) => ("deleted", Some(*w), None),
        };
        json!({
            "revision": self.first.number,
            "written_at_ms": self.first.at.physical_ms,
            "written_at_peer": self.first.at.node.to_string(),
            "written_by": self.first.by,
            "later_writes": self.later.len(),
            "ended": ended,
            "ended_at_ms": end_write.map(|w| w.at.physical_ms),
            "ended_by": end_write.map(|w| w.by.clone()),
            "next_revision": end_write.map(|w| w.number).filter(|n| *n > 0),
            "failure": failure,
        })
    }
}

#[cfg(test)]
mod tests;
