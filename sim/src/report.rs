//! The run's summary (text) and picture (a self-contained SVG timeline).

use std::fmt::Write as _;

use crate::{LeaseFacts, RunReport};

/// The summary an operator reads first, ending with the command that reproduces the run.
pub fn summary(report: &RunReport, scenario_path: &str) -> String {
    let mut out = String::new();
    let c = &report.counters;
    let seconds = (report.duration_ms as f64 / 1000.0).max(0.001);
    let per_node = (report.nodes.max(1) as f64) * seconds;
    let _ = writeln!(out, "scenario   {} (seed {})", report.scenario, report.seed);
    let _ = writeln!(
        out,
        "simulated  {:.1} s, {} nodes, trace {:016x}",
        seconds, report.nodes, report.trace_hash
    );
    match report.converged_at_ms {
        Some(t) => {
            let _ = writeln!(
                out,
                "converged  {:.1} s after the last fault (at {:.1} s)",
                (t.saturating_sub(report.last_fault_end_ms)) as f64 / 1000.0,
                t as f64 / 1000.0
            );
        }
        None => {
            let _ = writeln!(out, "converged  not within the run");
        }
    }
    let _ = writeln!(
        out,
        "starts     {} ({} moved from another node)",
        c.starts, c.moved
    );
    let _ = writeln!(
        out,
        "duplicates {:.1} replica-seconds of surplus copies",
        c.duplicate_run_ms as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "traffic    {:.1} messages and {:.0} bytes per node per second",
        c.messages as f64 / per_node,
        c.bytes as f64 / per_node
    );
    match c.write_rounds {
        Some(rounds) => {
            let _ = writeln!(
                out,
                "writes     {} acknowledged; the slowest reached every up node in {rounds} rounds",
                c.writes
            );
        }
        None => {
            let _ = writeln!(out, "writes     {} acknowledged", c.writes);
        }
    }
    if c.tombstones_collected > 0 || c.entries_forgotten > 0 {
        let _ = writeln!(
            out,
            "tombstones {} collected, {} entries forgotten on a peer's summary; largest desired state {} entries",
            c.tombstones_collected, c.entries_forgotten, c.desired_entries_max
        );
    }
    if c.doubt_ms > 0 {
        let _ = writeln!(
            out,
            "doubts     up nodes held suspect by a peer {:.1} s in all ({:.1} s of it down); longest {:.1} s",
            c.doubt_ms as f64 / 1000.0,
            c.doubt_down_ms as f64 / 1000.0,
            c.doubt_longest_ms as f64 / 1000.0
        );
    }
    if c.scales > 0 {
        let _ = writeln!(
            out,
            "scales     {} replica counts written by autoscalers",
            c.scales
        );
    }
    if c.rollbacks > 0 {
        let _ = writeln!(
            out,
            "rollbacks  {} written by failed health gates",
            c.rollbacks
        );
    }
    if report.returns.returns > 0 {
        let r = &report.returns;
        let _ = writeln!(
            out,
            "returns    {} nodes back from a restart; a replica ran twice next to one for at most {} ms (one handover: {} ms)",
            r.returns, r.duplicate_ms_max, r.bound_ms
        );
    }
    for lease in &report.leases {
        let _ = writeln!(out, "lease      {}", lease_line(report, lease));
    }
    match &report.violation {
        None => {
            let _ = writeln!(out, "invariants all held");
            if let Some(e) = &report.expected_violation {
                let _ = writeln!(
                    out,
                    "NOT AS EXPECTED  the scenario is built to break {e}, and the run did not detect it"
                );
            }
        }
        Some(v) => {
            let _ = writeln!(
                out,
                "VIOLATION  {} at {:.3} s: {}",
                v.invariant,
                v.at_ms as f64 / 1000.0,
                v.detail
            );
            match &report.expected_violation {
                Some(e) if e == &v.invariant => {
                    let _ = writeln!(
                        out,
                        "expected   the scenario is built to break {e}: detected as it should be"
                    );
                }
                Some(e) => {
                    let _ = writeln!(
                        out,
                        "NOT AS EXPECTED  the scenario is built to break {e}, not {}",
                        v.invariant
                    );
                }
                None => {}
            }
            let _ = writeln!(out, "trace (last events):");
            for line in &v.trace {
                let _ = writeln!(out, "  {line}");
            }
            let _ = writeln!(
                out,
                "reproduce with: starling sim {scenario_path} --seed {}",
                report.seed
            );
        }
    }
    out
}

/// One line of lease facts: elections, gaps, tokens, and who holds it at the end (or why
/// nobody does).
fn lease_line(report: &RunReport, lease: &LeaseFacts) -> String {
    let name = |i: usize| report.node_names.get(i).map_or("?", String::as_str);
    let end = match lease.holder_at_end {
        Some(i) => format!("held by {} at the end", name(i)),
        None if lease.why_no_holder.is_empty() => "no holder at the end".to_string(),
        None => format!("no holder at the end: {}", lease.why_no_holder),
    };
    let tightest = lease
        .tightest_handover_ms
        .map_or(String::new(), |t| format!(" (tightest handover {t} ms)"));
    format!(
        "{} ({}): {} elections, {} holder changes{tightest}, {:.1} s without a holder (longest {:.1} s), max token {}; {end}",
        lease.name,
        if lease.quorum { "quorum" } else { "local" },
        lease.elections,
        lease.holder_changes,
        lease.without_holder_ms as f64 / 1000.0,
        lease.longest_gap_ms as f64 / 1000.0,
        lease.max_token
    )
}

/// A color per node for the lease rows (golden-angle hues: neighbours differ).
fn holder_color(node: usize) -> String {
    format!("hsl({},65%,45%)", (node * 137 + 200) % 360)
}

/// Colors of node states (see `Sample::node_states`).
const STATE_COLORS: [&str; 6] = [
    "#4caf50", "#9e9e9e", "#ffc107", "#eeeeee", "#ff7043", "#64b5f6",
];
const STATE_NAMES: [&str; 6] = [
    "up",
    "crashed",
    "paused",
    "gone",
    "minority side",
    "agent restarting",
];

/// A self-contained SVG: replica counts over time on top, one row per node below, fault
/// markers across both.
pub fn svg(report: &RunReport) -> String {
    let width = 1000.0;
    let left = 90.0;
    let plot = width - left - 20.0;
    let rows = report.node_names.len().min(80);
    let chart_h = 160.0;
    let row_h = 10.0;
    let lease_h = 14.0;
    let lease_rows = report.leases.len().min(20);
    let leases_h = if lease_rows > 0 {
        10.0 + lease_rows as f64 * lease_h
    } else {
        0.0
    };
    let height = 60.0 + chart_h + 30.0 + rows as f64 * row_h + leases_h + 40.0;
    let t_max = report.duration_ms.max(1) as f64;
    let x = |t: u64| left + plot * t as f64 / t_max;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = format!(
        "{} — seed {}{}",
        report.scenario,
        report.seed,
        report
            .violation
            .as_ref()
            .map_or(String::new(), |v| format!(" — VIOLATION: {}", v.invariant))
    );
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(&title)
    );
    let top = 40.0;
    let max_count = report
        .samples
        .iter()
        .map(|p| p.running.max(p.desired))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let y = |v: usize| top + chart_h - chart_h * v as f64 / max_count;
    let line = |f: &dyn Fn(&crate::Sample) -> usize| {
        report
            .samples
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.at_ms), y(f(p))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#1976d2" stroke-width="1.5" points="{}"/>"##,
        line(&|p| p.desired)
    );
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#43a047" stroke-width="1.5" points="{}"/>"##,
        line(&|p| p.running)
    );
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#e53935" stroke-width="1.5" points="{}"/>"##,
        line(&|p| p.surplus)
    );
    let _ = writeln!(
        s,
        r#"<text x="4" y="{:.0}">replicas</text><text x="4" y="{:.0}">0..{}</text>"#,
        top + 12.0,
        top + 26.0,
        max_count
    );
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="{:.0}" fill="#1976d2">desired</text><text x="{:.0}" y="{:.0}" fill="#43a047">running</text><text x="{:.0}" y="{:.0}" fill="#e53935">surplus copies</text>"##,
        top + chart_h + 14.0,
        left + 60.0,
        top + chart_h + 14.0,
        left + 120.0,
        top + chart_h + 14.0
    );
    let rows_top = top + chart_h + 30.0;
    for (n, name) in report.node_names.iter().take(rows).enumerate() {
        let ry = rows_top + n as f64 * row_h;
        let _ = writeln!(
            s,
            r#"<text x="4" y="{:.1}" font-size="9">{}</text>"#,
            ry + 8.0,
            escape(name)
        );
        let mut start = 0usize;
        for k in 1..=report.samples.len() {
            let state = |i: usize| {
                report
                    .samples
                    .get(i)
                    .and_then(|p| p.node_states.get(n))
                    .copied()
            };
            if k == report.samples.len() || state(k) != state(start) {
                if let Some(st) = state(start) {
                    let (x0, x1) = (
                        x(report.samples[start].at_ms),
                        x(report
                            .samples
                            .get(k)
                            .map_or(report.duration_ms, |p| p.at_ms)),
                    );
                    let _ = writeln!(
                        s,
                        r#"<rect x="{x0:.1}" y="{ry:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                        (x1 - x0).max(0.5),
                        row_h - 2.0,
                        STATE_COLORS[usize::from(st).min(STATE_COLORS.len() - 1)]
                    );
                }
                start = k;
            }
        }
    }
    let leases_top = rows_top + rows as f64 * row_h + 10.0;
    for (k, lease) in report.leases.iter().take(lease_rows).enumerate() {
        let ry = leases_top + k as f64 * lease_h;
        let _ = writeln!(
            s,
            r##"<text x="4" y="{:.1}" font-size="9">lease {}</text><rect x="{left}" y="{ry:.1}" width="{plot:.1}" height="{:.1}" fill="#f5f5f5"/>"##,
            ry + 10.0,
            escape(&lease.name),
            lease_h - 2.0
        );
        for span in &lease.spans {
            let (x0, x1) = (x(span.from_ms), x(span.until_ms));
            let holder = report.node_names.get(span.node).map_or("?", String::as_str);
            let _ = writeln!(
                s,
                r#"<rect x="{x0:.1}" y="{ry:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} token {} {:.1}-{:.1} s</title></rect>"#,
                (x1 - x0).max(0.5),
                lease_h - 2.0,
                holder_color(span.node),
                escape(holder),
                span.token,
                span.from_ms as f64 / 1000.0,
                span.until_ms as f64 / 1000.0
            );
            if x1 - x0 > 6.0 * holder.len() as f64 {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" font-size="9" fill="white">{}</text>"#,
                    x0 + 2.0,
                    ry + 10.0,
                    escape(holder)
                );
            }
        }
    }
    let bottom = leases_top - 10.0 + leases_h;
    for t in &report.faults_at {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{bottom:.1}" stroke="#6a1b9a" stroke-dasharray="3,3"/>"##,
            x(*t),
        );
    }
    if let Some(t) = report.converged_at_ms {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{1:.1}" stroke="#2e7d32" stroke-width="2"/><text x="{0:.1}" y="{2:.1}" fill="#2e7d32">converged</text>"##,
            x(t),
            bottom,
            top - 4.0
        );
    }
    let legend_y = bottom + 20.0;
    for (k, name) in STATE_NAMES.iter().enumerate() {
        let lx = left + k as f64 * 105.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}">{name}</text>"#,
            legend_y - 9.0,
            STATE_COLORS[k],
            lx + 14.0,
            legend_y
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{legend_y:.1}" fill="#6a1b9a">- - fault</text>"##,
        left + 640.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="{:.1}">0 s</text><text x="{:.1}" y="{:.1}" text-anchor="end">{:.0} s</text>"#,
        legend_y + 16.0,
        left + plot,
        legend_y + 16.0,
        t_max / 1000.0
    );
    s.push_str("</svg>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
