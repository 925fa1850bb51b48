//! Hosts as network namespaces: each agent gets its own namespace (its own loopback, so the
//! service addresses and DNS port of one do not collide with another's), a veth pair to a
//! bridge in the root namespace, and its own address in a /24. A host's link can lose a share
//! of its packets, be cut entirely or one way, or the hosts split into groups that cannot
//! reach each other (nftables inside each namespace); a host can be powered off (every process
//! in its namespace killed) and its processes listed.
//!
//! Delay, jitter, duplication and reordering are not offered: they need `tc netem`, which this
//! CI's kernel lacks (`Specified qdisc kind is unknown`); nftables only drops.
//!
//! Needs root, iproute2 and nftables. Tests call [`NetLab::required`] first: without namespaces they fail
//! when `STARLING_REQUIRE_NETNS` is set (CI), and skip otherwise.

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A bridge and one namespace per host; everything is removed on drop.
pub struct NetLab {
    id: u32,
    pub hosts: usize,
    subnet: [u8; 3],
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

impl NetLab {
    /// Whether namespaces can be made here; `None` means skip (panics under
    /// `STARLING_REQUIRE_NETNS`).
    pub fn required(test: &str) -> Option<()> {
        let probe = format!("stlprobe{}", std::process::id());
        let ok = ip(&["netns", "add", &probe]).is_ok();
        let _ = ip(&["netns", "del", &probe]);
        // Cuts and loss are nftables rules: without `nft` the lab cannot partition.
        let nft = Command::new("nft")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok && nft {
            return Some(());
        }
        if std::env::var_os("STARLING_REQUIRE_NETNS").is_some() {
            panic!(
                "{test}: network namespaces are required (STARLING_REQUIRE_NETNS is set) but `ip netns add` or `nft` fails: run as root with iproute2 and nftables"
            );
        }
        eprintln!(
            "skipping {test}: network namespaces unavailable (needs root, iproute2 and nftables)"
        );
        None
    }

    /// `hosts` namespaces on one bridge, addresses 10.X.Y.1.. with the bridge at .254.
    pub fn create(hosts: usize) -> NetLab {
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let id = (std::process::id() % 10_000) * 10 + n % 10;
        let lab = NetLab {
            id,
            hosts,
            subnet: [10, 180 + (id % 60) as u8, ((id / 60) % 250) as u8],
        };
        let bridge = lab.bridge();
        let _ = ip(&["link", "del", &bridge]);
        must(&["link", "add", &bridge, "type", "bridge"]);
        must(&[
            "addr",
            "add",
            &format!("{}/24", lab.gateway()),
            "dev",
            &bridge,
        ]);
        must(&["link", "set", &bridge, "up"]);
        // With br_netfilter loaded, bridged frames pass the FORWARD chain, whose policy a
        // Docker engine sets to DROP: let the lab's own traffic through (removed on drop).
        lab.forward("-I");
        for i in 0..hosts {
            let ns = lab.ns(i);
            let outside = lab.veth(i);
            let _ = ip(&["netns", "del", &ns]);
            must(&["netns", "add", &ns]);
            must(&[
                "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            must(&["link", "set", &outside, "master", &bridge]);
            must(&["link", "set", &outside, "up"]);
            let addr = format!("{}/24", lab.addr(i));
            must(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            must(&["-n", &ns, "link", "set", "eth0", "up"]);
            must(&["-n", &ns, "link", "set", "lo", "up"]);
            // `ip netns exec` mounts this over /etc/resolv.conf inside the namespace.
            let etc = format!("/etc/netns/{ns}");
            std::fs::create_dir_all(&etc).expect("/etc/netns");
            std::fs::write(
                format!("{etc}/resolv.conf"),
                format!("nameserver {}\noptions timeout:1 attempts:2\n", lab.addr(i)),
            )
            .expect("resolv.conf");
        }
        lab
    }

    fn forward(&self, op: &str) {
        let bridge = self.bridge();
        let _ = Command::new("iptables")
            .args([op, "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"])
            .output();
    }

    fn bridge(&self) -> String {
        format!("stlb{}", self.id)
    }

    /// The namespace of host `i`.
    pub fn ns(&self, i: usize) -> String {
        format!("stl{}n{i}", self.id)
    }

    fn veth(&self, i: usize) -> String {
        format!("stv{}n{i}", self.id)
    }

    /// The address of host `i`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, i as u8 + 1)
    }

    /// The root namespace's address on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 254)
    }

    /// The command prefix that runs a program on host `i`.
    pub fn exec(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(i)]
    }

    /// Runs `nft` with `script` inside host `i`'s namespace.
    fn nft(&self, i: usize, script: &str) -> Result<(), String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(i), "nft", script])
            .output()
            .map_err(|e| format!("nft: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft {script}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Replaces host `i`'s rules with these drop rules: `input` for packets arriving on its
    /// link, `output` for packets leaving on it (nftables expressions before `drop`, e.g.
    /// `""` for everything). Loopback inside the host is untouched.
    fn rules(&self, i: usize, input: &[String], output: &[String]) {
        self.heal(i);
        let mut script = String::from(
            "add table inet stlcut\n\
             add chain inet stlcut in { type filter hook input priority 0; policy accept; }\n\
             add chain inet stlcut out { type filter hook output priority 0; policy accept; }\n",
        );
        for rule in input {
            script.push_str(&format!(
                "add rule inet stlcut in iifname \"eth0\" {rule}drop\n"
            ));
        }
        for rule in output {
            script.push_str(&format!(
                "add rule inet stlcut out oifname \"eth0\" {rule}drop\n"
            ));
        }
        let file = std::env::temp_dir().join(format!("{}-rules.nft", self.ns(i)));
        std::fs::write(&file, script).expect("nft script");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(i), "nft", "-f"])
            .arg(&file)
            .output()
            .expect("nft runs");
        let _ = std::fs::remove_file(&file);
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The nftables expression that matches `percent` of packets at random (empty at 100).
    fn share(percent: u32) -> String {
        if percent >= 100 {
            return String::new();
        }
        let threshold = u64::from(percent) * 0x8000_0000 / 100;
        format!("meta random & 0x7fffffff < {threshold} ")
    }

    /// Drops host `i`'s traffic on its link both ways: `percent` of packets, chosen at random
    /// (100: the host is cut off). nftables, not `tc netem`: kernels built without netem (this
    /// CI's) still have it. Loopback inside the host is untouched.
    pub fn loss(&self, i: usize, percent: u32) {
        let rule = vec![Self::share(percent)];
        self.rules(i, &rule, &rule);
    }

    /// Drops `percent` of the packets host `i` sends on its link. Set on every host, each
    /// packet between two hosts crosses one such rule, so every path loses exactly `percent`
    /// (with [`NetLab::loss`] on both ends a packet would face two draws).
    pub fn loss_out(&self, i: usize, percent: u32) {
        self.rules(i, &[], &[Self::share(percent)]);
    }

    /// [`NetLab::loss_out`] on every host.
    pub fn lossy_links(&self, percent: u32) {
        for i in 0..self.hosts {
            self.loss_out(i, percent);
        }
    }

    /// Cuts host `i` off from every other host (and the root namespace).
    pub fn cut(&self, i: usize) {
        self.loss(i, 100);
    }

    /// Cuts one direction of host `i`'s link: with `inbound` it still sends but hears
    /// nothing, without it hears everything and its packets go nowhere.
    pub fn cut_one_way(&self, i: usize, inbound: bool) {
        let all = vec![String::new()];
        if inbound {
            self.rules(i, &all, &[]);
        } else {
            self.rules(i, &[], &all);
        }
    }

    /// Splits the hosts into `groups` that cannot reach each other; every host still reaches
    /// the root namespace (the test's CLI and metrics scrapes). Hosts in no group are left
    /// as they are.
    pub fn partition(&self, groups: &[&[usize]]) {
        for (g, group) in groups.iter().enumerate() {
            let others: Vec<String> = groups
                .iter()
                .enumerate()
                .filter(|(h, _)| *h != g)
                .flat_map(|(_, hosts)| hosts.iter().map(|h| self.addr(*h).to_string()))
                .collect();
            if others.is_empty() {
                continue;
            }
            let set = others.join(", ");
            for &i in group.iter() {
                self.rules(
                    i,
                    &[format!("ip saddr {{ {set} }} ")],
                    &[format!("ip daddr {{ {set} }} ")],
                );
            }
        }
    }

    /// Removes what `loss` or `cut` set on host `i`.
    pub fn heal(&self, i: usize) {
        let _ = self.nft(i, "delete table inet stlcut");
    }

    /// [`NetLab::heal`] on every host.
    pub fn heal_all(&self) {
        for i in 0..self.hosts {
            self.heal(i);
        }
    }

    /// The processes in host `i`'s namespace (its agent, fences, replicas), from `/proc`.
    pub fn pids(&self, i: usize) -> Vec<i32> {
        let Ok(ns) = std::fs::metadata(format!("/run/netns/{}", self.ns(i))) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::metadata(format!("/proc/{pid}/ns/net"))
                    .is_ok_and(|m| m.dev() == ns.dev() && m.ino() == ns.ino())
            })
            .collect()
    }

    /// Which host's namespace process `pid` runs in.
    pub fn host_of(&self, pid: i32) -> Option<usize> {
        let of = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
        (0..self.hosts).find(|i| {
            std::fs::metadata(format!("/run/netns/{}", self.ns(*i)))
                .is_ok_and(|m| m.dev() == of.dev() && m.ino() == of.ino())
        })
    }

    /// Bytes host `i` sent and received on its link, every header included (the counters of
    /// its veth's outer end, which receives what the host sends).
    pub fn link_bytes(&self, i: usize) -> (u64, u64) {
        let read = |what: &str| {
            std::fs::read_to_string(format!(
                "/sys/class/net/{}/statistics/{what}_bytes",
                self.veth(i)
            ))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
        };
        (read("rx"), read("tx"))
    }

    /// Freezes (`SIGSTOP`) or wakes (`SIGCONT`) every process in host `i`'s namespace: a
    /// device that stalls (swapping, a hung bus, a debugger) with its link still up.
    pub fn freeze(&self, i: usize, frozen: bool) {
        let signal = if frozen {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        for pid in self.pids(i) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Power off host `i`: its link cut first (no last words), then SIGKILL to every process
    /// in its namespace, until none is left.
    pub fn power_off(&self, i: usize) {
        self.cut(i);
        for _ in 0..50 {
            let pids = self.pids(i);
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("host {i} still has processes: {:?}", self.pids(i));
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.ns(i)]);
            let _ = ip(&["link", "del", &self.veth(i)]);
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.ns(i)));
        }
        let _ = ip(&["link", "del", &self.bridge()]);
        self.forward("-D");
    }
}
