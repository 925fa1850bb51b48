//! The rules file sets must follow before anything of theirs is written: names, limits,
//! targets.

use std::collections::BTreeSet;

use starling_protocol::WorkloadName;

use super::{ENTRIES_PER_SET_MAX, ENTRY_NAME_BYTES_MAX, FILE_SETS_MAX, FilesError, Targets};
use crate::runtime::{FileKind, FileSet};

/// Longest container target, in bytes (far below PATH_MAX: it is one mount point).
pub const TARGET_BYTES_MAX: usize = 1024;

/// Checks file sets before anything is written: names (a set's is a DNS label, an entry's is
/// `[A-Za-z0-9._-]`, not `.` or `..`, at most [`ENTRY_NAME_BYTES_MAX`] bytes), each set and
/// entry once, the limits, and targets (absolute, plain, each once; none for a process).
pub fn check(files: &[FileSet], targets: Targets) -> Result<(), FilesError> {
    let refuse = |why: String| Err(FilesError::Refused(why));
    if files.len() > FILE_SETS_MAX {
        return refuse(format!(
            "{} secrets and configs, more than the {FILE_SETS_MAX} one instance may have",
            files.len()
        ));
    }
    let mut sets = BTreeSet::new();
    let mut mounts = BTreeSet::new();
    for set in files {
        let what = format!("{} {:?}", set.kind.noun(), set.name);
        if let Err(e) = WorkloadName::new(set.name.as_str()) {
            return refuse(format!("{what}: its name {e}"));
        }
        if !sets.insert((set.kind, set.name.as_str())) {
            return refuse(format!("{what} is given twice"));
        }
        if set.entries.len() > ENTRIES_PER_SET_MAX {
            return refuse(format!(
                "{what} has {} entries, more than {ENTRIES_PER_SET_MAX}",
                set.entries.len()
            ));
        }
        let mut names = BTreeSet::new();
        for (name, _) in &set.entries {
            check_entry_name(name).map_err(|why| FilesError::Refused(format!("{what}: {why}")))?;
            if !names.insert(name.as_str()) {
                return refuse(format!("{what}: entry {name:?} is given twice"));
            }
        }
        match (targets, &set.target) {
            (Targets::Refused, Some(target)) => {
                return refuse(format!(
                    "{what}: target {target:?} is for containers; a process finds it under ${}",
                    match set.kind {
                        FileKind::Secret => "STARLING_SECRETS_DIR",
                        FileKind::Config => "STARLING_CONFIGS_DIR",
                    }
                ));
            }
            (Targets::Allowed, _) => {
                let target = set.container_target();
                check_target(&target)
                    .map_err(|why| FilesError::Refused(format!("{what}: {why}")))?;
                if !mounts.insert(target.clone()) {
                    return refuse(format!("{what}: target {target:?} is taken by another set"));
                }
            }
            (Targets::Refused, None) => {}
        }
    }
    Ok(())
}

fn check_entry_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("entry name {name:?} is not a file name"));
    }
    if name.len() > ENTRY_NAME_BYTES_MAX {
        return Err(format!(
            "entry name of {} bytes, more than {ENTRY_NAME_BYTES_MAX}",
            name.len()
        ));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(bad) => Err(format!(
            "entry name {name:?} may hold only letters, digits, '.', '_' and '-', found {bad:?}"
        )),
        None => Ok(()),
    }
}

fn check_target(target: &str) -> Result<(), String> {
    // On the text itself: `Path::components` would quietly drop a `.` or a trailing `/`.
    let plain = target.strip_prefix('/').is_some_and(|below| {
        below
            .split('/')
            .all(|part| !matches!(part, "" | "." | ".."))
    });
    if !plain || target.contains(':') || target.len() > TARGET_BYTES_MAX {
        return Err(format!(
            "target {target:?} must be an absolute directory below / without '.', '..', '//' or ':', at most {TARGET_BYTES_MAX} bytes"
        ));
    }
    Ok(())
}
