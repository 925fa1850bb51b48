//! Files on tmpfs: the root, modes, atomic rewrites, wipes and the names refused.

use std::os::unix::fs::MetadataExt as _;

use starling_protocol::WorkloadName;
use zeroize::Zeroizing;

use super::*;

fn replica(w: &str) -> ReplicaId {
    ReplicaId {
        workload: WorkloadName::new(w).expect("valid"),
        index: 0,
    }
}

pub(crate) fn set(kind: FileKind, name: &str, entries: &[(&str, &str)]) -> FileSet {
    FileSet {
        kind,
        name: name.to_string(),
        entries: entries
            .iter()
            .map(|(k, v)| (k.to_string(), Zeroizing::new(v.as_bytes().to_vec())))
            .collect(),
        target: None,
    }
}

/// A fresh directory on a memory-backed filesystem, removed when dropped.
pub(crate) fn tmpfs_dir() -> tempfile::TempDir {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/dev/shm")])
        .find(|p| memory_backed(p).is_ok())
        .expect("a tmpfs at $XDG_RUNTIME_DIR or /dev/shm");
    tempfile::tempdir_in(base).expect("tempdir on tmpfs")
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("exists").mode() & 0o7777
}

#[test]
fn the_chosen_root_is_on_tmpfs_and_private() {
    let area = FileArea::for_key(format!("files-test-{}", std::process::id()).as_bytes());
    let root = area.root().expect("a tmpfs root on this host");
    let magic = i128::from(
        nix::sys::statfs::statfs(&root)
            .expect("statfs")
            .filesystem_type()
            .0,
    );
    assert!(magic == TMPFS_MAGIC || magic == RAMFS_MAGIC, "{magic:#x}");
    assert_eq!(mode(&root), 0o700);
    assert_eq!(area.root().expect("again"), root, "the same root each time");
    fs::remove_dir(&root).expect("empty root removed");
}

#[test]
fn a_root_on_a_disk_is_refused() {
    let base = [
        std::env::temp_dir(),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    ]
    .into_iter()
    .find(|p| memory_backed(p).is_err())
    .expect("a directory on a disk");
    let disk = tempfile::tempdir_in(base).expect("tempdir");
    let area = FileArea::at(&disk.path().join("root"));
    let secret = [set(FileKind::Secret, "db", &[("password", "hunter2")])];
    let err = area
        .write(&replica("w"), 1, &secret, Targets::Refused)
        .expect_err("never on a disk");
    assert!(
        err.to_string().starts_with("no tmpfs for secrets: "),
        "{err}"
    );
    assert!(!disk.path().join("root").exists(), "nothing created");
}

#[test]
fn files_are_written_with_private_modes() {
    let tmp = tmpfs_dir();
    let area = FileArea::at(&tmp.path().join("root"));
    let files = [
        set(FileKind::Secret, "db", &[("password", "hunter2")]),
        set(FileKind::Config, "app", &[("app.toml", "x = 1")]),
    ];
    let dir = area
        .write(&replica("w"), 7, &files, Targets::Refused)
        .expect("written");
    assert_eq!(dir, tmp.path().join("root/w-0-7"));
    assert_eq!(area.instance_dir(&replica("w"), 7), Some(dir.clone()));
    for d in ["", "secrets", "secrets/db", "configs", "configs/app"] {
        assert_eq!(mode(&dir.join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&tmp.path().join("root")), 0o700);
    assert_eq!(mode(&dir.join("secrets/db/password")), 0o400);
    assert_eq!(mode(&dir.join("configs/app/app.toml")), 0o444);
    let uid = nix::unistd::geteuid().as_raw();
    assert_eq!(
        fs::metadata(dir.join("secrets/db/password"))
            .expect("file")
            .uid(),
        uid
    );
    assert_eq!(
        fs::read_to_string(dir.join("secrets/db/password")).expect("read"),
        "hunter2"
    );
}

#[test]
fn a_refresh_replaces_files_by_rename_and_removes_dropped_entries() {
    let tmp = tmpfs_dir();
    let area = FileArea::at(&tmp.path().join("root"));
    let first = [
        set(
            FileKind::Secret,
            "db",
            &[("password", "old"), ("user", "app")],
        ),
        set(FileKind::Secret, "api", &[("token", "t1")]),
    ];
    let dir = area
        .write(&replica("w"), 1, &first, Targets::Refused)
        .expect("written");
    let set_dir = dir.join("secrets/db");
    let (set_inode, old_inode) = (
        fs::metadata(&set_dir).expect("dir").ino(),
        fs::metadata(set_dir.join("password")).expect("file").ino(),
    );
    // Someone reading the old file keeps what they opened.
    let held = fs::File::open(set_dir.join("password")).expect("open");
    let second = [set(FileKind::Secret, "db", &[("password", "new")])];
    area.refresh(&replica("w"), 1, &second, Targets::Refused)
        .expect("refreshed");
    assert_eq!(
        fs::read_to_string(set_dir.join("password")).expect("read"),
        "new"
    );
    assert_ne!(
        fs::metadata(set_dir.join("password")).expect("file").ino(),
        old_inode,
        "a new file renamed over the old one, not a rewrite in place"
    );
    assert_eq!(
        fs::metadata(&set_dir).expect("dir").ino(),
        set_inode,
        "the set's directory stays (a container's bind mount shows it)"
    );
    assert_eq!(mode(&set_dir.join("password")), 0o400);
    assert_eq!(std::io::read_to_string(held).expect("held"), "old");
    let left: Vec<String> = fs::read_dir(&set_dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["password"], "dropped entry and temporary file gone");
    assert!(
        !dir.join("secrets/api").exists(),
        "a dropped set is removed"
    );
}

#[test]
fn a_refresh_cannot_add_a_set_the_instance_did_not_start_with() {
    let tmp = tmpfs_dir();
    let area = FileArea::at(&tmp.path().join("root"));
    let first = [set(FileKind::Secret, "db", &[("password", "p")])];
    area.write(&replica("w"), 1, &first, Targets::Refused)
        .expect("written");
    let more = [
        set(FileKind::Secret, "db", &[("password", "p")]),
        set(FileKind::Config, "app", &[("a", "b")]),
    ];
    let err = area
        .refresh(&replica("w"), 1, &more, Targets::Refused)
        .expect_err("new set");
    assert!(err.to_string().contains("config app is new"), "{err}");
    let err = area
        .refresh(&replica("w"), 2, &first, Targets::Refused)
        .expect_err("instance without files");
    assert!(err.to_string().contains("started without"), "{err}");
}

#[test]
fn a_wipe_zeroes_and_removes_everything_of_the_instance_alone() {
    let tmp = tmpfs_dir();
    let area = FileArea::at(&tmp.path().join("root"));
    let files = [
        set(FileKind::Secret, "db", &[("password", "hunter2")]),
        set(FileKind::Config, "app", &[("a", "b")]),
    ];
    let dir = area
        .write(&replica("w"), 1, &files, Targets::Refused)
        .expect("written");
    let other = area
        .write(&replica("w"), 2, &files, Targets::Refused)
        .expect("written");
    // A second link to the file shows what the wipe did to its content.
    let witness = tmp.path().join("witness");
    fs::hard_link(dir.join("secrets/db/password"), &witness).expect("link");
    area.wipe(&replica("w"), 1);
    assert!(!dir.exists(), "the instance's directory is gone");
    assert_eq!(
        fs::read(&witness).expect("witness"),
        [0u8; 7],
        "zeroed first"
    );
    assert!(
        other.join("secrets/db/password").exists(),
        "instance 2 keeps its own"
    );
    area.wipe(&replica("w"), 1);
}

#[test]
fn leftovers_of_instances_not_adopted_are_wiped() {
    let tmp = tmpfs_dir();
    let area = FileArea::at(&tmp.path().join("root"));
    let files = [set(FileKind::Secret, "db", &[("password", "p")])];
    for (w, i) in [("a-1", 2), ("a", 1), ("b", 3)] {
        area.write(&replica(w), i, &files, Targets::Refused)
            .expect("written");
    }
    // A restarted agent: a fresh area on the same root.
    let again = FileArea::at(&tmp.path().join("root"));
    let keep = [instance_dir_name(&replica("a-1"), 2)].into();
    assert_eq!(again.wipe_except(&keep), 2);
    assert!(again.instance_dir(&replica("a-1"), 2).is_some());
    assert!(again.instance_dir(&replica("a"), 1).is_none());
    assert!(again.instance_dir(&replica("b"), 3).is_none());
}

#[test]
fn bad_names_and_targets_are_refused_before_anything_is_written() {
    let tmp = tmpfs_dir();
    let area = FileArea::at(&tmp.path().join("root"));
    let long = "a".repeat(ENTRY_NAME_BYTES_MAX + 1);
    for bad in ["..", ".", "", "a/b", "a b", "~writing", long.as_str()] {
        let files = [set(FileKind::Secret, "db", &[(bad, "x")])];
        let err = area
            .write(&replica("w"), 1, &files, Targets::Refused)
            .expect_err(bad);
        assert!(matches!(err, FilesError::Refused(_)), "{bad:?}: {err}");
    }
    let fine = "a".repeat(ENTRY_NAME_BYTES_MAX);
    check(
        &[set(
            FileKind::Secret,
            "db",
            &[(fine.as_str(), "x"), (".env", "y")],
        )],
        Targets::Refused,
    )
    .expect("the longest name, a leading dot");
    for bad in ["Db", "../x", "a/b", "", "-a"] {
        let files = [set(FileKind::Config, bad, &[("k", "v")])];
        assert!(check(&files, Targets::Allowed).is_err(), "set name {bad:?}");
    }
    let twice = [
        set(FileKind::Secret, "db", &[("k", "v")]),
        set(FileKind::Secret, "db", &[("k", "v")]),
    ];
    assert!(check(&twice, Targets::Allowed).is_err(), "a set twice");
    let dup = [set(FileKind::Secret, "db", &[("k", "v"), ("k", "w")])];
    assert!(check(&dup, Targets::Allowed).is_err(), "an entry twice");
    let mut targeted = set(FileKind::Secret, "db", &[("k", "v")]);
    targeted.target = Some("/etc/db".into());
    check(std::slice::from_ref(&targeted), Targets::Allowed).expect("a container's target");
    assert!(
        check(std::slice::from_ref(&targeted), Targets::Refused).is_err(),
        "a process has no target"
    );
    for bad in [
        "etc/db",
        "/",
        "/etc/../root",
        "/a/./b",
        "/a:b",
        "/a//b",
        "/a/",
    ] {
        targeted.target = Some(bad.into());
        assert!(
            check(std::slice::from_ref(&targeted), Targets::Allowed).is_err(),
            "target {bad:?}"
        );
    }
    targeted.target = Some("/run/secrets/api".into());
    let clash = [targeted, set(FileKind::Secret, "api", &[("k", "v")])];
    assert!(check(&clash, Targets::Allowed).is_err(), "one target twice");
    assert!(!tmp.path().join("root/w-0-1").exists(), "nothing written");
}
