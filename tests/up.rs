//! `starling up` end to end: the live view's IN USE column shows the one machine all its
//! agents share, the same on every live row; a fleet in a temporary dir is removed after a
//! clean stop, and one in `--dir` is kept, each saying so last.

use std::path::Path;
use std::process::{Command, Output};

mod support;

use support::BIN;

/// One `up` at a time: each checks ports free and binds them only when its agents start, so
/// two fleets started side by side could pick the same ones.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn up(tmp: &Path, args: &[&str]) -> Output {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let temp = tmp.join("temp");
    std::fs::create_dir_all(&temp).expect("temp dir");
    let specs = tmp.join("specs");
    std::fs::create_dir_all(&specs).expect("an empty specs dir");
    Command::new(BIN)
        .arg("up")
        .arg("--specs")
        .arg(&specs)
        .args(args)
        // Where `up` makes its temporary dir (std::env::temp_dir).
        .env("TMPDIR", &temp)
        .output()
        .expect("starling up runs")
}

/// The IN USE cell of the last row drawn for `node`.
fn in_use(text: &str, node: &str) -> Option<String> {
    let header = text.lines().rfind(|l| l.starts_with("NODE "))?;
    let column = header.find("IN USE")?;
    let row = text.lines().rfind(|l| l.starts_with(&format!("{node} ")))?;
    row.get(column..)?
        .split_whitespace()
        .next()
        .map(str::to_string)
}

#[test]
fn a_temporary_fleet_is_removed_and_every_row_shows_the_one_host() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Rounds are a second apart; a node publishes its first measure after two samples (5 s).
    let out = up(tmp.path(), &["--nodes", "2", "--rounds", "12"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with("stopped; removed "), "{text}");
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("temp"))
        .expect("temp dir")
        .collect();
    assert!(left.is_empty(), "the fleet's dir is gone: {left:?}");
    let first = in_use(&text, "node-1").expect("node-1's row");
    assert_ne!(first, "-", "a measure after 12 s:\n{text}");
    assert_eq!(
        in_use(&text, "node-2").as_deref(),
        Some(first.as_str()),
        "one host, one figure:\n{text}"
    );
}

#[test]
fn a_fleet_in_its_own_dir_is_kept_and_the_way_to_remove_it_printed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("kept");
    let dir_text = dir.to_str().expect("utf-8");
    let out = up(
        tmp.path(),
        &["--nodes", "1", "--rounds", "1", "--dir", dir_text],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().last(),
        Some(
            format!("stopped; data kept in {dir_text} (--dir); remove it with: rm -rf {dir_text}")
                .as_str()
        ),
        "{text}"
    );
    assert!(dir.join("node-1/agent.log").exists(), "the logs are kept");
}
