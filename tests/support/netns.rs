//! Hosts as network namespaces: each agent gets its own namespace (its own loopback, so the
//! service addresses and DNS port of one do not collide with another's), a veth pair to a
//! bridge in the root namespace, and its own address in a /24. A host's link can lose a share
//! of its packets or be cut entirely (nftables inside its namespace) for partitions.
//!
//! Needs root, iproute2 and nftables. Tests call [`NetLab::required`] first: without namespaces they fail
//! when `STARLING_REQUIRE_NETNS` is set (CI), and skip otherwise.

use std::net::Ipv4Addr;
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

    /// Drops host `i`'s traffic on its link both ways: `percent` of packets, chosen at random
    /// (100: the host is cut off). nftables, not `tc netem`: kernels built without netem (this
    /// CI's) still have it. Loopback inside the host is untouched.
    pub fn loss(&self, i: usize, percent: u32) {
        self.heal(i);
        let threshold = (u64::from(percent.min(100)) * 0x8000_0000 / 100).min(0x8000_0000);
        let rule = if percent >= 100 {
            String::new()
        } else {
            format!("meta random & 0x7fffffff < {threshold} ")
        };
        let script = format!(
            "add table inet stlcut\n\
             add chain inet stlcut in {{ type filter hook input priority 0; policy accept; }}\n\
             add chain inet stlcut out {{ type filter hook output priority 0; policy accept; }}\n\
             add rule inet stlcut in iifname \"eth0\" {rule}drop\n\
             add rule inet stlcut out oifname \"eth0\" {rule}drop\n"
        );
        let file = std::env::temp_dir().join(format!("{}-loss.nft", self.ns(i)));
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

    /// Cuts host `i` off from every other host (and the root namespace).
    pub fn cut(&self, i: usize) {
        self.loss(i, 100);
    }

    /// Removes what `loss` or `cut` set on host `i`.
    pub fn heal(&self, i: usize) {
        let _ = self.nft(i, "delete table inet stlcut");
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
