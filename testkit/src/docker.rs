//! The container tests' image, built where the tests run and imported into the local engine
//! (`docker import`; no registry is reachable, none is needed).
//!
//! Its root filesystem holds, under `/bin`:
//! - the host's shell and the coreutils and `sed` the tests' commands use ([`HOST_TOOLS`]),
//!   copied with the shared libraries `ldd` names for them, at the same paths, so the
//!   dynamic loader finds them as it does on the host. Every Debian machine has these.
//! - `starling-test-tools` (see [`crate::applets`]), linked as `nslookup` and `wget`: the
//!   network clients a fresh machine lacks.
//!
//! The tag carries a hash of every file and link in the image, so a change of the applets,
//! of the host's tools or of this layout makes a new image instead of reusing a stale one
//! (an image from the busybox days has another name altogether). Test processes that start
//! together take turns through a lock file, so one imports and the others find the image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Programs the tests run inside containers, taken from the host: `sh -c` scripts with
/// `sleep`, `echo`, `cat`, `sed`, `tail`; `true` and `false` for exec checks.
pub const HOST_TOOLS: &[&str] = &["sh", "sleep", "echo", "true", "false", "cat", "sed", "tail"];

/// Where host tools are looked for, in order.
const HOST_DIRS: &[&str] = &["/usr/bin", "/bin"];

/// The image's repository; its tag is `LAYOUT-HASH`.
const REPOSITORY: &str = "starling-test/tools";

/// Bumped when the way the root filesystem is laid out changes (it is in the hash too).
const LAYOUT: u32 = 3;

/// The applets' program, compiled by `build.rs`.
const TOOLS: &str = env!("STARLING_TESTKIT_TOOLS");

/// The test image's name, built on first use in this process; `None` when no Docker engine
/// answers (the caller skips, after the reason is printed).
///
/// # Panics
/// When `STARLING_REQUIRE_DOCKER` is set and no engine answers, and when the image cannot be
/// built (a host tool or `ldd` missing, `tar` or `docker import` failing): with the reason.
pub fn test_image() -> Option<&'static str> {
    if !engine_answers() {
        assert!(
            std::env::var_os("STARLING_REQUIRE_DOCKER").is_none(),
            "STARLING_REQUIRE_DOCKER is set but no Docker Engine answers"
        );
        eprintln!(
            "skipping: no Docker Engine answers (set STARLING_REQUIRE_DOCKER=1 to fail instead)"
        );
        return None;
    }
    static IMAGE: OnceLock<String> = OnceLock::new();
    Some(IMAGE.get_or_init(build).as_str())
}

fn engine_answers() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Lays out the root filesystem, names it by its contents, and imports it unless the engine
/// already has that name.
fn build() -> String {
    let root = tempfile::tempdir().expect("a temporary directory for the image's root");
    let layout = layout();
    let mut hash = Fnv::default();
    hash.write(&LAYOUT.to_le_bytes());
    for (path, entry) in &layout {
        let target = root.path().join(path);
        std::fs::create_dir_all(target.parent().expect("inside the root"))
            .unwrap_or_else(|e| panic!("{}: {e}", target.display()));
        hash.write(path.as_os_str().as_encoded_bytes());
        match entry {
            Entry::Copy(source) => {
                let bytes = std::fs::read(source)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", source.display()));
                hash.write(&bytes);
                std::fs::write(&target, &bytes)
                    .unwrap_or_else(|e| panic!("{}: {e}", target.display()));
                let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
                std::fs::set_permissions(&target, executable)
                    .unwrap_or_else(|e| panic!("{}: {e}", target.display()));
            }
            Entry::Link(to) => {
                hash.write(to.as_bytes());
                std::os::unix::fs::symlink(to, &target)
                    .unwrap_or_else(|e| panic!("{}: {e}", target.display()));
            }
        }
    }
    let image = format!("{REPOSITORY}:{LAYOUT}-{:016x}", hash.0);
    // Test processes run side by side (nextest runs one per test): one imports, the others
    // wait and find the image, instead of each importing and leaving untagged copies. A lock
    // that cannot be had (another user's file) only costs such a copy.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("starling-test-image.lock"));
    let _turn = lock.ok().filter(|file| file.lock().is_ok());
    if !docker(&["image", "inspect", &image]).status.success() {
        import(root.path(), &image);
    }
    image
}

/// One path of the image's root filesystem.
enum Entry {
    /// A copy of this host file.
    Copy(PathBuf),
    /// A symbolic link to this name.
    Link(&'static str),
}

/// Every path of the image, relative to its root, sorted (the hash depends on the order).
fn layout() -> BTreeMap<PathBuf, Entry> {
    let mut layout = BTreeMap::new();
    let mut add_program = |name: &str, source: PathBuf| {
        for library in shared_libraries(&source) {
            let inside = library
                .strip_prefix("/")
                .expect("ldd names absolute paths")
                .to_path_buf();
            layout.insert(inside, Entry::Copy(library));
        }
        layout.insert(Path::new("bin").join(name), Entry::Copy(source));
    };
    for tool in HOST_TOOLS {
        add_program(tool, host_tool(tool));
    }
    add_program("starling-test-tools", PathBuf::from(TOOLS));
    for applet in crate::applets::NAMES {
        layout.insert(
            Path::new("bin").join(applet),
            Entry::Link("starling-test-tools"),
        );
    }
    layout
}

fn host_tool(name: &str) -> PathBuf {
    HOST_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!(
                "the host has no `{name}` in {HOST_DIRS:?}: the container tests copy it into \
                 their image (Debian's dash, coreutils and sed provide these)"
            )
        })
}

/// The shared libraries and the loader `program` needs, as `ldd` finds them on this host;
/// none for a static program.
fn shared_libraries(program: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running ldd (Debian's libc-bin) on {}: {e}",
                program.display()
            )
        });
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() && text.contains("not a dynamic executable") {
        return Vec::new();
    }
    assert!(
        out.status.success(),
        "ldd {}: {}{}",
        program.display(),
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_ldd(&text)
}

/// The file paths of `ldd` output: `libc.so.6 => /lib/.../libc.so.6 (0x...)` and the loader's
/// own `/lib64/ld-linux-x86-64.so.2 (0x...)`; the kernel's vDSO has no file and is left out.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.trim(),
                None => line,
            };
            let path = path.split(" (").next().unwrap_or_default().trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn import(root: &Path, image: &str) {
    let archive = root.with_extension("tar");
    let status = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(root)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .expect("tar runs");
    assert!(status.success(), "tar of the test image's root: {status}");
    let out = Command::new("docker")
        .arg("import")
        .arg(&archive)
        .arg(image)
        .output()
        .expect("the docker CLI runs");
    let _ = std::fs::remove_file(&archive);
    assert!(
        out.status.success(),
        "docker import {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs")
}

/// FNV-1a, 64 bits: a stable name for the image's contents (not a defence against anyone).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        // The length first, so that ("ab", "c") and ("a", "bc") differ.
        for byte in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_names_libraries_and_the_loader_but_not_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd6c5f0000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e1c000000)\n\
                    \tlibgone.so.1 => not found\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f0e1c400000)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn the_layout_holds_every_tool_and_applet_with_the_shell_s_loader() {
        let layout = layout();
        for name in HOST_TOOLS
            .iter()
            .chain(crate::applets::NAMES)
            .chain(&["starling-test-tools"])
        {
            assert!(layout.contains_key(&Path::new("bin").join(name)), "{name}");
        }
        // The shell is dynamically linked on Debian: its loader is in the image.
        let libraries = shared_libraries(&host_tool("sh"));
        assert!(!libraries.is_empty(), "ldd finds the shell's libc");
        for library in libraries {
            let inside = library.strip_prefix("/").expect("absolute");
            assert!(layout.contains_key(inside), "{}", library.display());
        }
    }

    /// The image's shell runs the tests' kind of script with every host tool, and the
    /// applets answer by their names inside it.
    #[test]
    fn the_image_runs_the_tests_commands() {
        let Some(image) = test_image() else {
            return;
        };
        let script = "echo start; sleep 0.1; echo one two | sed -n 's/^one *//p' | tail -n 1; \
                      cat /etc/hostname >/dev/null && true && ! false && echo tools; \
                      wget -q -O - http://127.0.0.1:1/ 2>&1; nslookup bad..name 2>&1";
        let out = docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            image,
            "sh",
            "-c",
            script,
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.get(..3),
            Some(&["start", "two", "tools"][..]),
            "{text}"
        );
        // The applets themselves answered (a missing one would be the shell's "not found").
        assert!(
            lines
                .get(3)
                .is_some_and(|l| l.starts_with("wget: 127.0.0.1:1: ")),
            "{text}"
        );
        assert!(
            lines
                .get(4)
                .is_some_and(|l| l.starts_with("nslookup: \"bad..name\"")),
            "{text}"
        );
        // A second call in this process reuses the image by its name.
        assert_eq!(test_image(), Some(image));
    }

    #[test]
    fn the_applets_program_runs_its_applets_by_name() {
        let out = Command::new(TOOLS).arg("nothing").output().expect("runs");
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("nslookup, wget"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // wget against a one-shot server on loopback.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).expect("request");
            stream
                .write_all(b"HTTP/1.0 200 OK\r\n\r\nhello")
                .expect("reply");
            String::from_utf8_lossy(&request[..n]).to_string()
        });
        let out = Command::new(TOOLS)
            .args(["wget", "-q", "-O", "-"])
            .arg(format!("http://127.0.0.1:{port}/x"))
            .output()
            .expect("runs");
        let request = server.join().expect("server");
        assert!(request.starts_with("GET /x HTTP/1.0\r\n"), "{request}");
        assert_eq!(
            (out.status.code(), out.stdout.as_slice()),
            (Some(0), &b"hello"[..]),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// nslookup against a one-answer server on loopback: busybox's `Address:` lines, the
    /// answer last; then NXDOMAIN said and failed.
    #[test]
    fn nslookup_prints_the_answer_last_and_fails_on_nxdomain() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let address = server.local_addr().expect("addr");
        let answer = std::thread::spawn(move || {
            for rcode in [0u8, 3] {
                let mut query = [0u8; 512];
                let (n, from) = server.recv_from(&mut query).expect("query");
                let mut reply = query[..n].to_vec();
                reply[2] = 0x81;
                reply[3] = 0x80 | rcode;
                if rcode == 0 {
                    reply[7] = 1;
                    reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 9, 8, 7]);
                }
                server.send_to(&reply, from).expect("reply");
            }
        });
        let lookup = |name: &str| {
            Command::new(TOOLS)
                .args(["nslookup", name, &address.to_string()])
                .output()
                .expect("runs")
        };
        let found = lookup("web.svc.starling");
        let text = String::from_utf8_lossy(&found.stdout);
        assert_eq!(found.status.code(), Some(0), "{text}");
        assert_eq!(text.lines().last(), Some("Address: 10.9.8.7"), "{text}");
        let missing = lookup("nothing.svc.starling");
        answer.join().expect("server");
        assert_eq!(missing.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&missing.stdout).contains("NXDOMAIN"),
            "{}",
            String::from_utf8_lossy(&missing.stdout)
        );
    }
}
