//! Temporary: trace hashes of every scenario (not committed).
#![allow(missing_docs)]
use starling_sim::{RunOptions, Scenario, run};
use std::path::PathBuf;

#[test]
#[ignore]
fn print_hashes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for p in files {
        let s = Scenario::from_toml(&std::fs::read_to_string(&p).unwrap()).unwrap();
        for seed in [1u64, 2] {
            let t = std::time::Instant::now();
            let r = run(&s, seed, RunOptions::default());
            println!(
                "HASH {} {seed} {:016x} {} {:?} {:.2}s",
                p.file_name().unwrap().to_string_lossy(),
                r.trace_hash,
                r.counters.bytes,
                r.violation.map(|v| v.invariant),
                t.elapsed().as_secs_f64()
            );
        }
    }
}

#[test]
#[ignore]
fn print_one() {
    let path = std::env::var("SCEN").unwrap();
    let seed: u64 = std::env::var("SEED")
        .map(|s| s.parse().unwrap())
        .unwrap_or(1);
    let s = Scenario::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let r = run(&s, seed, RunOptions::default());
    print!("{}", starling_sim::report::summary(&r, &path));
    if let Ok(out) = std::env::var("SVG") {
        std::fs::write(out, starling_sim::report::svg(&r)).unwrap();
    }
}

#[test]
#[ignore]
fn sweep() {
    let files: Vec<String> = std::env::var("SCENS")
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    let a: u64 = std::env::var("FROM").unwrap().parse().unwrap();
    let b: u64 = std::env::var("TO").unwrap().parse().unwrap();
    for path in files {
        let s = Scenario::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let t = std::time::Instant::now();
        let next = std::sync::atomic::AtomicU64::new(a);
        let fails = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|sc| {
            for _ in 0..2 {
                sc.spawn(|| {
                    loop {
                        let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if seed >= b {
                            return;
                        }
                        let r = run(&s, seed, RunOptions::default());
                        if !r.as_expected() {
                            fails.lock().unwrap().push((
                                seed,
                                r.violation.map(|v| {
                                    format!(
                                        "{} at {:.3}: {}",
                                        v.invariant,
                                        v.at_ms as f64 / 1000.0,
                                        v.detail
                                    )
                                }),
                            ));
                        }
                    }
                });
            }
        });
        let mut f = fails.into_inner().unwrap();
        f.sort();
        println!(
            "SWEEP {path}: {} seeds, {} failed, {:.1}s",
            b - a,
            f.len(),
            t.elapsed().as_secs_f64()
        );
        for (seed, v) in f.iter().take(10) {
            println!("  seed {seed}: {v:?}");
        }
    }
}
