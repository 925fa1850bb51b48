//! `starling fence --lease-file PATH -- COMMAND ARGS...`: runs a singleton's command and stops
//! it once the lease deadline in the file passes unrenewed (why: `starling_node::runtime::fence`).
//!
//! It runs next to every fenced instance, so it stays one small synchronous process: std and
//! `nix`, no async runtime. Three threads: the main one watches the lease file and the command's
//! exit; one waits for the command (`waitpid` blocks); one takes the forwarded signals with
//! `sigwait`, so no handler (and no unsafe code) is needed. Those signals are blocked before any
//! thread exists, so every thread inherits the mask. The command is started with `posix_spawn`
//! rather than std's `Command`, which would pass that mask (and std's ignored SIGPIPE) on
//! through exec: the command starts with no signal blocked and SIGPIPE at its default.
//!
//! The rules:
//! - The command inherits environment, directory and stdio, and runs in the fence's process
//!   group, which the fence leads (it makes its own group if started inside another).
//! - SIGTERM is passed on to the whole group (the runtime stops an instance by signalling the
//!   fence alone; it used to signal the group). SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2
//!   go to the command alone, as they would have reached it without a fence.
//! - The fence exits as the command did: the same code, or the same signal.
//! - Once the file has said `active=true`, the newest `act_until_unix_ms` it showed is a
//!   deadline: past it, the fence stops the group (SIGTERM, SIGKILL after the grace), says why
//!   on stderr and exits with [`FENCED_EXIT_CODE`]. A later `active=false` does not lift the
//!   deadline (the agent stops an instance whose lease it lost); a standby that was never
//!   active is never stopped.
//! - A file that stays missing or unreadable for `--lease-wait-ms` after the start stops the
//!   command the same way: nothing then proves this instance may act.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawnp};
use nix::sys::signal::{SigSet, Signal, kill, killpg};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, getpgrp, getpid, setpgid};
use starling_node::clock::now_ms;
use starling_node::runtime::fence::{FENCED_EXIT_CODE, LeaseFile, stat_fields};

/// How often the lease file is read.
const POLL: Duration = Duration::from_millis(100);
/// How long after a deadline the fence acts. A live agent stops its instance itself at the
/// deadline and records it as a lost lease; this head start lets it win that race, so an
/// exit of the fence is not mistaken for a crash. Well inside the lease's drift margin.
const LATE: Duration = Duration::from_millis(20);
/// How long the fence waits for its command to be reaped after SIGKILL.
const REAP_WAIT: Duration = Duration::from_secs(5);

/// What `starling fence` was asked to do.
#[derive(clap::Args)]
pub struct FenceArgs {
    /// The lease file the agent keeps in the replica's directory.
    #[arg(long)]
    lease_file: PathBuf,
    /// Milliseconds between SIGTERM and SIGKILL when the lease ran out.
    #[arg(long, default_value_t = starling_node::runtime::fence::GRACE_MS_DEFAULT)]
    grace_ms: u64,
    /// Milliseconds a missing or unreadable lease file is tolerated after the start.
    #[arg(long, default_value_t = starling_node::runtime::fence::LEASE_WAIT_MS_DEFAULT)]
    lease_wait_ms: u64,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

impl FenceArgs {
    /// Between SIGTERM and SIGKILL when the lease ran out.
    fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }

    /// How long a missing or unreadable file is tolerated after the start.
    fn lease_wait(&self) -> Duration {
        Duration::from_millis(self.lease_wait_ms)
    }
}

/// Runs the command fenced; returns when it is gone (or never, when the fence ends by the
/// signal that ended the command).
pub fn run(args: FenceArgs) -> anyhow::Result<ExitCode> {
    let forwarded = forwarded_signals();
    // First, while this is the only thread: every thread started later inherits the mask.
    forwarded.thread_block()?;
    let leads_group = lead_own_group();
    let Some(program) = args.command.first() else {
        anyhow::bail!("starling fence: no command given after --");
    };
    let child = match spawn(&args.command) {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "starling fence: cannot start {}: {}",
                program.to_string_lossy(),
                e.desc()
            );
            // As a shell says it: not found, or found but not startable.
            let code = if e == Errno::ENOENT { 127 } else { 126 };
            return Ok(ExitCode::from(code));
        }
    };
    let command = Group {
        child,
        leads_group,
        fencing: Arc::new(AtomicBool::new(false)),
        reaped: Arc::new(AtomicBool::new(false)),
    };
    let exits = wait_in_thread(child, command.reaped.clone());
    let signals = command.clone();
    std::thread::spawn(move || forward_signals(&forwarded, &signals));
    let watched = watch(&args, &exits);
    match watched {
        Watched::Exited(status) => Ok(exit_like(status)),
        Watched::Fence(reason) => {
            eprintln!(
                "starling fence: {reason}; stopping {} (pid {})",
                program.to_string_lossy(),
                command.child
            );
            Ok(command.fence(&exits, args.grace()))
        }
    }
}

/// Starts the command with an empty signal mask and SIGPIPE at its default, in the
/// fence's process group, with the fence's environment, directory and stdio.
fn spawn(command: &[OsString]) -> Result<Pid, Errno> {
    let c_string = |bytes: Vec<u8>| CString::new(bytes).map_err(|_| Errno::EINVAL);
    let argv = command
        .iter()
        .map(|a| c_string(a.as_bytes().to_vec()))
        .collect::<Result<Vec<CString>, Errno>>()?;
    let env = std::env::vars_os()
        .map(|(key, value)| {
            let mut pair = key.into_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            c_string(pair)
        })
        .collect::<Result<Vec<CString>, Errno>>()?;
    let Some(program) = argv.first() else {
        return Err(Errno::EINVAL);
    };
    let mut attr = PosixSpawnAttr::init()?;
    let mut defaults = SigSet::empty();
    defaults.add(Signal::SIGPIPE);
    attr.set_sigdefault(&defaults)?;
    attr.set_sigmask(&SigSet::empty())?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK,
    )?;
    posix_spawnp(program, &PosixSpawnFileActions::init()?, &attr, &argv, &env)
}

/// The command as the fence signals it.
#[derive(Clone)]
struct Group {
    child: Pid,
    /// The fence leads the process group the command runs in (true unless `setpgid` failed).
    leads_group: bool,
    /// Set once the fence stops the command on its own: signals are not passed on any more.
    fencing: Arc<AtomicBool>,
    /// Set once the command was reaped: its pid may name another process from then on.
    reaped: Arc<AtomicBool>,
}

enum Watched {
    Exited(nix::Result<WaitStatus>),
    Fence(String),
}

/// Watches the lease file until the command exits or the lease says to stop it.
fn watch(args: &FenceArgs, exits: &Receiver<nix::Result<WaitStatus>>) -> Watched {
    let started = Instant::now();
    let mut read_once = false;
    // The newest deadline the file showed while active.
    let mut deadline_ms: Option<u64> = None;
    loop {
        match read_lease(&args.lease_file) {
            Ok(lease) => {
                read_once = true;
                if lease.active {
                    deadline_ms = deadline_ms.max(Some(lease.act_until_unix_ms));
                }
            }
            Err(why) if !read_once && started.elapsed() >= args.lease_wait() => {
                return Watched::Fence(format!(
                    "no readable lease file within {} ms of the start ({why}): nothing shows \
                     this instance may act",
                    args.lease_wait().as_millis()
                ));
            }
            Err(_) => {}
        }
        let now_ms = now_ms();
        let late_ms = LATE.as_millis() as u64;
        let mut wait = POLL;
        if let Some(deadline) = deadline_ms {
            if now_ms >= deadline + late_ms {
                return Watched::Fence(format!(
                    "the lease in {} ran out {} ms ago (act_until_unix_ms={deadline}) without \
                     a renewal: the agent is gone or cut off from its voters",
                    args.lease_file.display(),
                    now_ms - deadline
                ));
            }
            // Wake at the deadline rather than up to a poll later.
            wait = wait.min(Duration::from_millis(deadline + late_ms - now_ms));
        }
        match exits.recv_timeout(wait) {
            Ok(status) => return Watched::Exited(status),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Watched::Exited(Err(Errno::ECHILD)),
        }
    }
}

fn read_lease(path: &Path) -> Result<LeaseFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    LeaseFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Group {
    /// Stops the command because the lease says so: SIGTERM to the group, SIGKILL after
    /// `grace`, then whatever is left in the group. Returns the fence's exit code.
    fn fence(&self, exits: &Receiver<nix::Result<WaitStatus>>, grace: Duration) -> ExitCode {
        self.fencing.store(true, Ordering::SeqCst);
        self.signal_all(Signal::SIGTERM);
        if exits.recv_timeout(grace).is_err() {
            self.signal_command(Signal::SIGKILL);
            let _ = exits.recv_timeout(REAP_WAIT);
        }
        if self.leads_group && self.others_in_group() {
            // Helpers the command left (say, a shell's background job) must not act on
            // either; killing the group ends the fence too, after its line on stderr.
            let _ = killpg(getpgrp(), Signal::SIGKILL);
        }
        ExitCode::from(FENCED_EXIT_CODE)
    }

    /// To the whole group (the fence too: its sigwait thread drops the echo) or the command.
    fn signal_all(&self, signal: Signal) -> bool {
        if self.leads_group {
            killpg(getpgrp(), signal).is_ok()
        } else {
            self.signal_command(signal)
        }
    }

    fn signal_command(&self, signal: Signal) -> bool {
        // Once reaped, the pid may already be someone else's.
        if self.reaped.load(Ordering::SeqCst) {
            return false;
        }
        kill(self.child, signal).is_ok()
    }

    /// Whether any live process other than the fence is still in its group.
    fn others_in_group(&self) -> bool {
        let (me, group) = (std::process::id(), getpgrp().as_raw());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return true;
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != me)
            .filter_map(stat_fields)
            .any(|f| f.state != 'Z' && i32::try_from(f.group).is_ok_and(|g| g == group))
    }
}

fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(signal);
    }
    set
}

/// Passes on the signals the fence receives, until the process ends.
fn forward_signals(set: &SigSet, command: &Group) {
    // A SIGTERM passed on to the group comes back to the fence once (it is in the group);
    // that echo is dropped, a SIGTERM after it is passed on again.
    let mut echo_due = false;
    while let Ok(signal) = set.wait() {
        if command.fencing.load(Ordering::SeqCst) {
            continue;
        }
        if signal == Signal::SIGTERM && command.leads_group {
            if !std::mem::take(&mut echo_due) {
                echo_due = command.signal_all(signal);
            }
        } else {
            command.signal_command(signal);
        }
    }
}

/// Makes the fence lead its own process group, so the group holds only the fence, its command
/// and what that starts. The runtime starts it that way already.
fn lead_own_group() -> bool {
    if getpgrp() != getpid() {
        let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    }
    getpgrp() == getpid()
}

fn wait_in_thread(child: Pid, reaped: Arc<AtomicBool>) -> Receiver<nix::Result<WaitStatus>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let status = loop {
            match waitpid(child, None) {
                Err(Errno::EINTR) => continue,
                // Only an exit or a death ends the wait (no WUNTRACED, no WCONTINUED).
                other => break other,
            }
        };
        reaped.store(true, Ordering::SeqCst);
        let _ = tx.send(status);
    });
    rx
}

/// The fence's own exit, as the command's: its code, or death by its signal.
fn exit_like(status: nix::Result<WaitStatus>) -> ExitCode {
    let signal = match status {
        Ok(WaitStatus::Exited(_, code)) => return ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Ok(WaitStatus::Signaled(_, signal, _)) => signal,
        Ok(other) => {
            eprintln!("starling fence: unexpected state of the command: {other:?}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("starling fence: lost track of the command: {}", e.desc());
            return ExitCode::FAILURE;
        }
    };
    // The command dumped its core already (if at all); the fence's would overwrite it.
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    let mut own = SigSet::empty();
    own.add(signal);
    let _ = own.thread_unblock();
    let _ = nix::sys::signal::raise(signal);
    // Still here: a signal whose default is to be ignored (std ignores SIGPIPE). Say it as a
    // shell would.
    ExitCode::from(u8::try_from(128 + signal as i32).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_signals_leave_the_rest_alone() {
        let set = forwarded_signals();
        assert!(set.contains(Signal::SIGTERM) && set.contains(Signal::SIGUSR1));
        assert!(!set.contains(Signal::SIGCHLD) && !set.contains(Signal::SIGPIPE));
    }
}
