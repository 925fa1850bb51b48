//! Scenarios 3 to 6 of tests/netlab.rs: a singleton's holder cut into the minority, lossy
//! links, the metered profile's idle bytes, and a frozen device.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::{
    self, Watch, apply, census, events, exactly, lease, metric, now, per_host, power_off, report,
    secs, sleeper, views,
};
use crate::support::netns::NetLab;
use crate::support::{Fleet, wait_for};

/// Logs `EPOCH_SECONDS start|alive|stop TOKEN` lines every 100 ms to its own file under
/// `$OUT`; all namespaces share the host's clock, so lines of instances on different hosts
/// compare.
const LOGGER: &str = r#"log="$OUT/$STARLING_NODE-$$.log"
t="${STARLING_LEASE_TOKEN:-0}"
trap 'echo "$(date +%s.%N) stop $t" >> "$log"; exit 0' TERM
echo "$(date +%s.%N) start $t" >> "$log"
while :; do echo "$(date +%s.%N) alive $t" >> "$log"; sleep 0.1; done"#;

/// One instance as its log tells it.
#[derive(Debug)]
struct Instance {
    file: String,
    token: u64,
    first: f64,
    last: f64,
    stopped: bool,
}

fn instances(dir: &std::path::Path) -> Vec<Instance> {
    let mut out: Vec<Instance> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            let lines: Vec<(f64, &str, u64)> = text
                .lines()
                .filter_map(|l| {
                    let mut w = l.split(' ');
                    Some((w.next()?.parse().ok()?, w.next()?, w.next()?.parse().ok()?))
                })
                .collect();
            Some(Instance {
                file: e.file_name().to_string_lossy().into_owned(),
                token: lines.first()?.2,
                first: lines.first()?.0,
                last: lines.last()?.0,
                stopped: lines.iter().any(|l| l.1 == "stop"),
            })
        })
        .collect();
    out.sort_by(|a, b| a.first.total_cmp(&b.first));
    out
}

/// Instances never overlap in time (each ends before the next starts) and tokens grow.
fn one_at_a_time(all: &[Instance]) {
    for pair in all.windows(2) {
        assert!(
            pair[0].last < pair[1].first,
            "{} ran until {:.3}, after {} started at {:.3}: {all:#?}",
            pair[0].file,
            pair[0].last,
            pair[1].file,
            pair[1].first
        );
        assert!(
            pair[1].token > pair[0].token,
            "tokens grow from one instance to the next: {all:#?}"
        );
    }
}

pub fn holder_cut_into_the_minority(lab: &NetLab, fleet: &Fleet) {
    let marker = common::marker(3);
    let out = fleet.tmp.path().join("singleton-logs");
    std::fs::create_dir_all(&out).expect("log dir");
    apply(
        fleet,
        0,
        "leader",
        &format!(
            "name = \"leader\"\nsingleton = true\nlease_ttl = \"2s\"\ncommand = \"sh\"\n\
             args = [\"-c\", '''{LOGGER}''', \"{marker}\"]\nenv = {{ OUT = \"{}\" }}\n\
             [resources]\ncpu = \"10m\"\nmemory = \"8Mi\"\n",
            out.display()
        ),
    );
    let first = wait_for("one instance", Duration::from_secs(40), || {
        let live = census(lab, "sh", &marker);
        (live.len() == 1).then(|| live[0].clone())
    });
    let holder = first.host;
    let holder_name = fleet.nodes[holder].name.clone();
    let (_, token) = wait_for("node-1 lists the holder", Duration::from_secs(20), || {
        lease(fleet, 0, "leader").filter(|(h, _)| *h == holder_name)
    });
    let voters: Vec<String> = fleet
        .json(0, &["voters"])
        .and_then(|v| {
            v["voters"].as_array().map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
        })
        .expect("voters");
    let is_voter = |h: usize| voters.contains(&fleet.nodes[h].name);
    // The holder and the host that costs the majority the fewest voters.
    let partner = (0..5)
        .filter(|h| *h != holder)
        .min_by_key(|h| (is_voter(*h), *h))
        .expect("partner");
    let minority = [holder, partner];
    let majority: Vec<usize> = (0..5).filter(|h| !minority.contains(h)).collect();
    let majority_voters = majority.iter().filter(|h| is_voter(**h)).count();
    assert!(
        majority_voters * 2 > voters.len(),
        "the 3 hold a majority of the voters {voters:?}"
    );

    let cut_at = now();
    lab.partition(&[&minority, &majority]);
    let cut = Instant::now();
    let mut most = 0;
    let next = loop {
        let live = census(lab, "sh", &marker);
        most = most.max(live.len());
        if let Some(p) = live.iter().find(|p| majority.contains(&p.host))
            && !live.iter().any(|p| p.pid == first.pid)
        {
            break p.clone();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(40),
            "no instance on the majority 40 s after the cut: {live:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let took_over = cut.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let logs = instances(&out);
    one_at_a_time(&logs);
    let old = logs
        .iter()
        .find(|i| i.file.ends_with(&format!("-{}.log", first.pid)))
        .expect("the first instance's log");
    let new = logs
        .iter()
        .find(|i| i.file.ends_with(&format!("-{}.log", next.pid)))
        .expect("the new instance's log");
    assert!(new.token > token, "token {} after {token}", new.token);

    lab.heal_all();
    std::thread::sleep(Duration::from_secs(10));
    let live = census(lab, "sh", &marker);
    assert_eq!(live.len(), 1, "one instance after the heal: {live:?}");
    let leases: Vec<_> = (0..5).map(|i| lease(fleet, i, "leader")).collect();
    assert!(
        leases.iter().all(|l| l.is_some() && *l == leases[0]),
        "every node lists one holder after the heal: {leases:?}"
    );
    let logs = instances(&out);
    one_at_a_time(&logs);
    report(
        "3. A singleton's holder cut into the minority (5 hosts, lan, lease TTL 2 s)",
        &format!(
            "| figure | value |\n|---|---|\n\
             | voters | {voters:?} |\n\
             | minority (holder first) | {}, {} |\n\
             | old instance's last log line | {:.2} s after the cut ({}) |\n\
             | new instance's first log line | {:.2} s after the cut, on {} |\n\
             | gap without an active instance | {:.2} s |\n\
             | tokens | {token} -> {} |\n\
             | new instance seen by the census | {} s after the cut; most instances at once {most} |\n\
             | after the heal (10 s) | one instance, every node lists {:?} |\n\
             | instances in all (logs) | {}, none overlapping |\n",
            fleet.nodes[holder].name,
            fleet.nodes[partner].name,
            old.last - cut_at,
            if old.stopped {
                "a stop line: SIGTERM"
            } else {
                "no stop line: killed"
            },
            new.first - cut_at,
            fleet.nodes[next.host].name,
            new.first - old.last,
            new.token,
            secs(took_over),
            leases[0],
            logs.len(),
        ),
    );
}

/// The profile's `down after`, the failover bound adds 5 s to (verdict, claim, start).
fn down_after(profile: &str) -> Duration {
    Duration::from_millis(match profile {
        "lan" => 400,
        "wan" => 4_000,
        _ => 6_000,
    })
}

pub fn lossy_links(lab: &NetLab, fleet: &mut Fleet, profile: &str) {
    let long = std::env::var_os("STARLING_NETLAB_LONG").is_some();
    let window = Duration::from_secs(if long { 600 } else { 60 });
    let marker = common::marker(4);
    let lead_marker = common::marker(40);
    apply(fleet, 0, "steady", &sleeper("steady", 10, &marker, ""));
    apply(
        fleet,
        0,
        "lead",
        &sleeper("lead", 1, &lead_marker, "singleton = true"),
    );
    let want = BTreeMap::from([("steady".to_string(), 10)]);
    let mut watch = Watch::new();
    let (_, start) = watch
        .until(lab, "sleep", &marker, Duration::from_secs(60), |p| {
            exactly(p, &want)
        })
        .expect("10 replicas once each");
    let lead = wait_for("one lead instance", Duration::from_secs(40), || {
        let live = census(lab, "sleep", &lead_marker);
        (live.len() == 1).then(|| live[0].clone())
    });
    let holder = wait_for("the lease listed", Duration::from_secs(20), || {
        lease(fleet, 0, "lead").filter(|(h, _)| *h == fleet.nodes[lead.host].name)
    });
    let failovers = |lab: &NetLab| -> Vec<Option<f64>> {
        (0..5)
            .map(|i| metric(lab, i, "starling_failover_events_total"))
            .collect()
    };
    let failovers_before = failovers(lab);

    lab.lossy_links(10);
    let began = Instant::now();
    let (mut moved, mut samples, mut suspect, mut down, mut unanswered) = (
        BTreeMap::new(),
        0,
        Vec::<String>::new(),
        Vec::<String>::new(),
        0,
    );
    let mut lead_changes = 0;
    let mut polls = 0;
    while began.elapsed() < window {
        let now_procs = census(lab, "sleep", &marker);
        for p in &start {
            if !now_procs.iter().any(|q| q.pid == p.pid) {
                moved
                    .entry(p.index)
                    .or_insert_with(|| secs(began.elapsed()));
            }
        }
        if census(lab, "sleep", &lead_marker).first().map(|p| p.pid) != Some(lead.pid) {
            lead_changes += 1;
        }
        samples += 1;
        if samples % 5 == 0 {
            polls += 5;
            for i in 0..5 {
                let Some(view) = views(fleet, i) else {
                    unanswered += 1;
                    continue;
                };
                for (node, state) in view {
                    let seen = format!(
                        "{} saw {node} {state} at {} s",
                        i + 1,
                        secs(began.elapsed())
                    );
                    match state.as_str() {
                        "alive" => {}
                        "suspect" => suspect.push(seen),
                        _ => down.push(seen),
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    // Suspicion resolves: every host lists every member alive, still on the lossy links.
    let resolved = Instant::now();
    wait_for("every view all alive", Duration::from_secs(20), || {
        (0..5)
            .all(|i| views(fleet, i).is_some_and(|v| v.values().all(|s| s == "alive")))
            .then_some(())
    });
    let resolved = resolved.elapsed();
    let holders: Vec<_> = (0..5).map(|i| lease(fleet, i, "lead")).collect();
    let failovers_after = failovers(lab);
    let (downs, missing) = events(fleet, 0, "node-down", window + Duration::from_secs(5));
    let verdicts: f64 = failovers_before
        .iter()
        .zip(&failovers_after)
        .map(|(a, b)| b.unwrap_or(0.0) - a.unwrap_or(0.0))
        .sum();

    // Then a host dies on those same links (not the lease holder: its replicas only).
    let victim = (1..5)
        .filter(|h| *h != lead.host)
        .max_by_key(|h| start.iter().filter(|p| p.host == *h).count())
        .expect("victim");
    let victims = start.iter().filter(|p| p.host == victim).count();
    power_off(lab, fleet, victim);
    let mut failover = Watch::new();
    let replaced = failover.until(lab, "sleep", &marker, Duration::from_secs(60), |p| {
        exactly(p, &want)
    });
    let bound = down_after(profile) + Duration::from_secs(5);
    // Ten sightings show the pattern; a 10-minute run has dozens.
    let first_ten = |v: &[String]| v.iter().take(10).cloned().collect::<Vec<_>>();
    report(
        &format!("4. 10% loss on every link ({profile} profile, 5 hosts)"),
        &format!(
            "Every host drops 10% of the packets it sends (nftables, `meta random`), so every \
             path between two hosts loses 10% each way; no delay or jitter (no `tc netem` \
             here).\n\n\
             | figure | value |\n|---|---|\n\
             | lossy window | {} s (`STARLING_NETLAB_LONG=1`: 600 s) |\n\
             | replicas moved or restarted (of 10) | {} {moved:?} |\n\
             | samples where the singleton's instance was not the first one | {lead_changes} |\n\
             | lease holder and token before / after (per node) | {holder:?} / {holders:?} |\n\
             | down verdicts (`starling_failover_events_total`, all agents) | {verdicts} |\n\
             | `node-down` events in the window | {} (nodes that did not answer the query: {missing}) |\n\
             | `get nodes` on every host every 5 s ({polls} calls): suspect sightings | {} (first ones: {:?}) |\n\
             | down sightings | {} {:?} |\n\
             | every host lists every member alive | {} s after the window |\n\
             | `get nodes` calls that failed | {unanswered} |\n\
             | then {} dies ({victims} replicas): replaced in | {} (bound: down after + 5 s = {} s) |\n",
            window.as_secs(),
            moved.len(),
            downs.len(),
            suspect.len(),
            first_ten(&suspect),
            down.len(),
            first_ten(&down),
            secs(resolved),
            fleet.nodes[victim].name,
            replaced
                .as_ref()
                .map_or("not within 60 s".into(), |(d, _)| format!("{} s", secs(*d))),
            secs(bound),
        ),
    );
    assert!(moved.is_empty(), "replicas moved on lossy links: {moved:?}");
    assert_eq!(lead_changes, 0, "the singleton's instance changed");
    assert!(
        holders.iter().all(|h| *h == Some(holder.clone())),
        "the lease changed hands: {holder:?} -> {holders:?}"
    );
    assert_eq!(verdicts, 0.0, "a live node was declared down");
    assert!(downs.is_empty(), "node-down events: {downs:?}");
    assert!(down.is_empty(), "a live node was listed down: {down:?}");
    let (took, _) = replaced.expect("the dead host's replicas replaced within 60 s");
    assert!(took <= bound, "failover took {took:?}, bound {bound:?}");
}

pub fn metered(lab: &NetLab, fleet: &mut Fleet) {
    let window = Duration::from_secs(30);
    // Let joins and first syncs pass.
    std::thread::sleep(Duration::from_secs(5));
    let counters = |lab: &NetLab| -> Vec<(f64, f64)> {
        (0..5)
            .map(|i| {
                let out = metric(lab, i, "starling_gossip_bytes_total{direction=\"out\"}");
                let inn = metric(lab, i, "starling_gossip_bytes_total{direction=\"in\"}");
                (out.expect("bytes out"), inn.expect("bytes in"))
            })
            .collect()
    };
    let before = counters(lab);
    let wire_before: Vec<(u64, u64)> = (0..5).map(|i| lab.link_bytes(i)).collect();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let wire_after: Vec<(u64, u64)> = (0..5).map(|i| lab.link_bytes(i)).collect();
    let secs_f = t0.elapsed().as_secs_f64();
    let after = counters(lab);
    let sent: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(a, b)| (b.0 - a.0) / secs_f)
        .collect();
    let received: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(a, b)| (b.1 - a.1) / secs_f)
        .collect();
    let wire: Vec<f64> = wire_before
        .iter()
        .zip(&wire_after)
        .map(|(a, b)| (b.0 - a.0) as f64 / secs_f)
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let month_gb = |bps: f64| bps * 30.0 * 86_400.0 / 1e9;

    // Still fails over within 10 s.
    let marker = common::marker(5);
    apply(fleet, 0, "frugal", &sleeper("frugal", 10, &marker, ""));
    let want = BTreeMap::from([("frugal".to_string(), 10)]);
    let mut watch = Watch::new();
    let (_, start) = watch
        .until(lab, "sleep", &marker, Duration::from_secs(60), |p| {
            exactly(p, &want)
        })
        .expect("10 replicas once each");
    let victim = (1..5)
        .max_by_key(|h| start.iter().filter(|p| p.host == *h).count())
        .expect("victim");
    let victims = per_host(lab, &start)[victim];
    power_off(lab, fleet, victim);
    let mut failover = Watch::new();
    let replaced = failover.until(lab, "sleep", &marker, Duration::from_secs(60), |p| {
        exactly(p, &want)
    });
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    report(
        "5. Metered profile: idle bytes and failover (5 hosts)",
        &format!(
            "| figure | value |\n|---|---|\n\
             | idle window | {secs_f:.0} s, no workloads |\n\
             | gossip + probe bytes sent per node (agent counter) | {:.0} B/s mean ({}); {:.2} GB a month |\n\
             | received per node (agent counter) | {:.0} B/s mean ({}) |\n\
             | everything each host sent on its link (IP headers, QUIC included) | {:.0} B/s mean ({}); {:.2} GB a month |\n\
             | then {} dies ({victims} of 10 replicas): replaced in | {} (goal: 10 s) |\n",
            mean(&sent),
            fmt(&sent),
            month_gb(mean(&sent)),
            mean(&received),
            fmt(&received),
            mean(&wire),
            fmt(&wire),
            month_gb(mean(&wire)),
            fleet.nodes[victim].name,
            replaced
                .as_ref()
                .map_or("not within 60 s".into(), |(d, _)| format!("{} s", secs(*d))),
        ),
    );
    assert!(
        mean(&sent) <= 1024.0,
        "the metered profile sends {:.0} B/s per node idle at 5 hosts (goal 1 KB/s)",
        mean(&sent)
    );
    let (took, _) = replaced.expect("replaced within 60 s");
    assert!(
        took <= Duration::from_secs(10),
        "metered failover took {took:?}"
    );
}

/// Scenario 6: a device freezes (every process SIGSTOPped, its link up) for 20 s. The others
/// replace its replicas; when it wakes, its stale copies go and every replica runs once.
pub fn frozen_device(lab: &NetLab, fleet: &Fleet) {
    let marker = common::marker(6);
    apply(fleet, 0, "spread", &sleeper("spread", 20, &marker, ""));
    let want = BTreeMap::from([("spread".to_string(), 20)]);
    let (_, start) = Watch::new()
        .until(lab, "sleep", &marker, Duration::from_secs(60), |p| {
            exactly(p, &want)
        })
        .expect("20 replicas, once each, within 60 s");
    let counts = per_host(lab, &start);
    let victim = (1..lab.hosts)
        .max_by_key(|h| (counts[*h], usize::MAX - h))
        .expect("a host");
    let name = fleet.nodes[victim].name.clone();

    lab.freeze(victim, true);
    let frozen_at = Instant::now();
    // Its frozen copies still exist but serve nothing: count the other hosts'.
    let elsewhere = |p: &[common::Proc]| -> Vec<common::Proc> {
        p.iter().filter(|x| x.host != victim).cloned().collect()
    };
    let replaced = Watch::new().until(lab, "sleep", &marker, Duration::from_secs(19), |p| {
        exactly(&elsewhere(p), &want)
    });
    let replaced_in = replaced.as_ref().map(|(d, _)| *d);
    let remaining = Duration::from_secs(20).saturating_sub(frozen_at.elapsed());
    std::thread::sleep(remaining);

    lab.freeze(victim, false);
    let woke = Instant::now();
    let mut back = Watch::new();
    let mut stable_since: Option<Instant> = None;
    let settled = back.until(lab, "sleep", &marker, Duration::from_secs(90), |p| {
        if exactly(p, &want) {
            let since = *stable_since.get_or_insert_with(Instant::now);
            since.elapsed() >= Duration::from_secs(10)
        } else {
            stable_since = None;
            false
        }
    });
    let views_after: Vec<_> = (0..lab.hosts).map(|i| views(fleet, i)).collect();
    report(
        "6. A device freezes for 20 s, link up (5 hosts, 20 replicas, lan)",
        &format!(
            "| figure | value |\n|---|---|\n\
             | frozen host (SIGSTOP to every process) | {name} ({} replicas) |\n\
             | its replicas running on the other hosts | {} |\n\
             | after it woke: 20 processes, once each, for 10 s | {} |\n\
             | duplicate replica-seconds after it woke | {:.1} (most processes at once: {}) |\n",
            counts[victim],
            replaced_in.map_or("not within 19 s".into(), |d| format!(
                "{} s after the freeze",
                secs(d)
            )),
            settled
                .as_ref()
                .map_or("not within 90 s".into(), |(d, _)| format!(
                    "{} s after it woke (includes the 10 s)",
                    secs(woke.elapsed().min(*d))
                )),
            back.duplicate_seconds,
            back.most,
        ),
    );
    assert!(
        replaced_in.is_some(),
        "{name}'s replicas were not running elsewhere within 19 s of its freeze"
    );
    let (_, end) = settled.unwrap_or_else(|| {
        let now = census(lab, "sleep", &marker);
        panic!(
            "not exactly 20 processes, once each, 90 s after {name} woke: per host {:?}",
            per_host(lab, &now)
        )
    });
    assert_eq!(end.len(), 20);
    for (i, v) in views_after.iter().enumerate() {
        if let Some(v) = v {
            assert!(
                v.values().all(|s| s == "alive"),
                "node-{} still doubts a member after the wake: {v:?}",
                i + 1
            );
        }
    }
}
