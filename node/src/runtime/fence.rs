//! The fence around a singleton's process instance: what the agent and `starling fence` share.
//!
//! The agent stops a singleton's active instance the moment its lease can no longer be renewed,
//! but only while the agent lives. Replicas outlive their agent on purpose (the next agent adopts
//! them), so an agent killed outright (SIGKILL, the OOM killer) would leave its instance acting
//! after the lease lapsed, next to the instance of the node that holds the lease next. The process
//! runtime therefore starts singleton instances under `starling fence`, a small supervisor
//! (the same binary) that reads the lease file the agent keeps in the replica's directory and
//! stops the command itself once the deadline written there has passed without renewal.
//!
//! This module holds the two sides' contract: the file's format ([`LeaseFile`], written by the
//! agent at every grant, renewal and loss, read by the fence) and the fence's command line.
//! The runtime's side of it (the fence is the tracked pid, a stop signals it rather than the
//! group) is in [`super::process`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The lease file's name in a replica's directory (`STARLING_LEASE_FILE` names it relative to
/// the replica's working directory).
pub const LEASE_FILE_NAME: &str = "lease";

/// Default grace between SIGTERM and SIGKILL when the fence stops its command: the agent's own
/// grace after a lost lease, so both ways of stopping fit in the lease's drift margin.
pub const GRACE_MS_DEFAULT: u64 = 100;

/// Default time the fence waits for a readable lease file after its start before it stops the
/// command: the agent writes the file before it starts the instance, so only a failed write
/// (or a file removed by hand) leaves it missing, and an instance must not run unfenced forever.
pub const LEASE_WAIT_MS_DEFAULT: u64 = 10_000;

/// The exit code of a fence that stopped its command (sysexits' `EX_TEMPFAIL`: a later start,
/// with a renewed lease, may succeed).
pub const FENCED_EXIT_CODE: u8 = 75;

/// What the `lease` file says: a singleton's lease as this node sees it.
///
/// Text of `key=value` lines, one per field, in the order below. Readers ignore keys they do
/// not know, so fields can be added. The agent replaces the file atomically (rename), so a
/// reader never sees half of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseFile {
    /// Whether this node holds the lease now (its instance is the active one).
    pub active: bool,
    /// The fencing token while active, else 0.
    pub token: u64,
    /// The epoch of the newest record of the lease this node knows (0: none).
    pub epoch: u64,
    /// The node holding the lease per that record.
    pub holder: Option<String>,
    /// While active: the wall-clock instant (ms since the Unix epoch) until which this node may
    /// act without a renewal; 0 when not active.
    pub act_until_unix_ms: u64,
}

impl LeaseFile {
    /// The file's text.
    pub fn render(&self) -> String {
        format!(
            "active={}\ntoken={}\nepoch={}\nholder={}\nact_until_unix_ms={}\n",
            self.active,
            self.token,
            self.epoch,
            self.holder.as_deref().unwrap_or(""),
            self.act_until_unix_ms
        )
    }

    /// Reads the file's text. `active` and `act_until_unix_ms` must be there (they are what a
    /// fence acts on); the other fields default to none.
    pub fn parse(text: &str) -> Result<LeaseFile, String> {
        let mut file = LeaseFile {
            active: false,
            token: 0,
            epoch: 0,
            holder: None,
            act_until_unix_ms: 0,
        };
        let (mut active, mut act_until) = (false, false);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("line {line:?} is not key=value"));
            };
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{key}: {v:?} is not a whole number"))
            };
            match key {
                "active" => {
                    file.active = match value {
                        "true" => true,
                        "false" => false,
                        other => return Err(format!("active: {other:?} is not true or false")),
                    };
                    active = true;
                }
                "token" => file.token = number(value)?,
                "epoch" => file.epoch = number(value)?,
                "holder" => file.holder = Some(value.to_string()).filter(|h| !h.is_empty()),
                "act_until_unix_ms" => {
                    file.act_until_unix_ms = number(value)?;
                    act_until = true;
                }
                _ => {}
            }
        }
        match (active, act_until) {
            (true, true) => Ok(file),
            (false, _) => Err("no active= line".into()),
            (true, false) => Err("no act_until_unix_ms= line".into()),
        }
    }
}

/// The arguments that make `fence_program` run `program args` fenced by `lease_file`.
pub fn fence_args(lease_file: &Path, program: &str, args: &[String]) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec![
        "fence".into(),
        "--lease-file".into(),
        lease_file.into(),
        "--".into(),
        program.into(),
    ];
    out.extend(args.iter().map(OsString::from));
    out
}

/// Checks that `program` can be started as the fence would start it (a path, or a name looked
/// up in `search_path`), so a missing command fails the start with the same reason as without
/// a fence rather than as an exit of the fence.
pub fn check_program(program: &str, search_path: &std::ffi::OsStr) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        std::env::split_paths(search_path)
            .map(|dir| dir.join(program))
            .collect()
    };
    let mut not_executable = false;
    for candidate in candidates {
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            return Ok(candidate);
        }
        not_executable = true;
    }
    Err(if not_executable {
        format!("command not executable: {program}")
    } else {
        format!("command not found: {program}")
    })
}

/// The live children of process `pid` (from `/proc`), for moving a fence's command into the
/// instance's cgroups when the fence may have forked it before the fence itself was moved.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| stat_fields(child).is_some_and(|f| f.parent == pid && f.state != 'Z'))
        .collect()
}

/// The fields of `/proc/<pid>/stat` the fence and the runtime look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFields {
    /// One-letter state (`Z` for a zombie).
    pub state: char,
    /// The parent's pid.
    pub parent: u32,
    /// The process group.
    pub group: u32,
}

/// Reads a process's state, parent and group, or `None` if it is gone.
pub fn stat_fields(pid: u32) -> Option<StatFields> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let parent = rest.next()?.parse().ok()?;
    let group = rest.next()?.parse().ok()?;
    Some(StatFields {
        state,
        parent,
        group,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_reads_back_what_was_written() {
        let file = LeaseFile {
            active: true,
            token: 7,
            epoch: 7,
            holder: Some("node-2".into()),
            act_until_unix_ms: 1_700_000_000_123,
        };
        assert_eq!(LeaseFile::parse(&file.render()), Ok(file.clone()));
        let none = LeaseFile {
            active: false,
            holder: None,
            token: 0,
            act_until_unix_ms: 0,
            ..file
        };
        assert_eq!(LeaseFile::parse(&none.render()), Ok(none));
    }

    #[test]
    fn a_file_without_the_fields_a_fence_acts_on_is_refused() {
        assert!(LeaseFile::parse("").is_err(), "empty: written by nobody");
        assert!(LeaseFile::parse("active=true\n").is_err());
        assert!(LeaseFile::parse("act_until_unix_ms=5\n").is_err());
        assert!(LeaseFile::parse("active=yes\nact_until_unix_ms=5\n").is_err());
        assert!(LeaseFile::parse("active=true\nact_until_unix_ms=soon\n").is_err());
        let later = LeaseFile::parse("active=true\nact_until_unix_ms=5\nnew_field=x\n");
        assert_eq!(
            later.map(|f| f.act_until_unix_ms),
            Ok(5),
            "unknown keys ignored"
        );
    }

    #[test]
    fn programs_are_checked_as_the_fence_would_start_them() {
        let path = std::ffi::OsString::from("/nonexistent:/bin:/usr/bin");
        assert!(check_program("sh", &path).is_ok());
        assert_eq!(
            check_program("no-such-command-here", &path),
            Err("command not found: no-such-command-here".into())
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "data").expect("write");
        let plain = plain.to_string_lossy().into_owned();
        assert_eq!(
            check_program(&plain, &path),
            Err(format!("command not executable: {plain}"))
        );
    }

    #[test]
    fn children_are_found_by_their_parent() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let me = std::process::id();
        assert!(children_of(me).contains(&child.id()));
        let fields = stat_fields(child.id()).expect("alive");
        assert_eq!(fields.parent, me);
        let _ = child.kill();
        let _ = child.wait();
    }
}
