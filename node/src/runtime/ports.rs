//! The ports an instance listens on, and how it is told about them.
//!
//! A port with a `host_port` is fixed: the instance listens on that number. A process port
//! without one gets a free port picked per instance when it starts, so two instances of one
//! replica (a start-first update) or two replicas of one workload can share a node. Whatever
//! the number, the instance learns it two ways: the variable `STARLING_PORT_<NAME>` (the port's
//! name upper-cased, `-` as `_`) and `${port.NAME}` written in its `command` or `args`, which
//! the runtime replaces before it starts the instance (validation accepts only names declared
//! in `[[ports]]`).
//!
//! Picking binds port 0 on the wildcard address, reads the number the kernel chose and closes
//! the socket, so the port is free on every address when it is handed over. Nothing holds it
//! between that moment and the instance's own bind: another program may take it first (the
//! instance then fails to bind and exits, and is restarted with a new pick). The runtime never
//! hands out a port one of its own live instances holds, which the kernel could pick again
//! because that instance may not have bound it yet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};

use serde::{Deserialize, Serialize};
use starling_protocol::spec::{PortProtocol, PortSpec};

/// Where each port of one instance listens, by port name.
pub type PortMap = BTreeMap<String, Bound>;

/// One port an instance listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    /// The port number on the node.
    pub port: u16,
    /// Its transport.
    pub protocol: PortProtocol,
}

/// Picks tried per port before a start fails: the kernel's choice collides with a port of our
/// own live instances only by chance, so a few tries are plenty.
const PICK_ATTEMPTS_MAX: usize = 16;

/// The ports a new instance listens on: each fixed `host_port` as it is, a free port for the
/// others. `held` are the ports this runtime's live instances listen on: a fixed port among
/// them fails the start with a reason naming it (two instances cannot both bind it), a picked
/// one is never handed out again.
pub fn assign(ports: &[PortSpec], held: &BTreeSet<(u16, PortProtocol)>) -> Result<PortMap, String> {
    let mut taken = held.clone();
    let mut out = PortMap::new();
    for port in ports {
        let number = match port.host_port {
            Some(fixed) if held.contains(&(fixed, port.protocol)) => {
                return Err(format!(
                    "port {} ({fixed}/{}) is held by another instance on this node: a fixed \
                     host port serves one instance at a time",
                    port.name,
                    protocol_name(port.protocol)
                ));
            }
            Some(fixed) => fixed,
            None => pick(port, &taken)?,
        };
        taken.insert((number, port.protocol));
        out.insert(
            port.name.clone(),
            Bound {
                port: number,
                protocol: port.protocol,
            },
        );
    }
    Ok(out)
}

/// The variables that tell an instance its ports: `STARLING_PORT_HTTP=41234`.
pub fn env(ports: &PortMap) -> Vec<(String, String)> {
    ports
        .iter()
        .map(|(name, bound)| (env_name(name), bound.port.to_string()))
        .collect()
}

/// `STARLING_PORT_<NAME>`: port names are DNS labels (lowercase letters, digits, `-`), so no
/// two names give one variable.
pub fn env_name(port: &str) -> String {
    format!("STARLING_PORT_{}", port.to_uppercase().replace('-', "_"))
}

/// `text` with every `${port.NAME}` of a port in `ports` replaced by its number. Anything
/// else, other `${...}` included (a shell's own variables in `sh -c`), is left as it is.
pub fn substitute(text: &str, ports: &PortMap) -> String {
    const OPEN: &str = "${port.";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + OPEN.len()..];
        let found = after
            .find('}')
            .and_then(|end| Some((ports.get(&after[..end])?, end)));
        match found {
            Some((bound, end)) => {
                out.push_str(&bound.port.to_string());
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(OPEN);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The ports the instances of `maps` listen on.
pub fn held<'a>(maps: impl IntoIterator<Item = &'a PortMap>) -> BTreeSet<(u16, PortProtocol)> {
    maps.into_iter()
        .flat_map(|map| map.values().map(|b| (b.port, b.protocol)))
        .collect()
}

fn pick(port: &PortSpec, taken: &BTreeSet<(u16, PortProtocol)>) -> Result<u16, String> {
    let mut last_error = None;
    for _ in 0..PICK_ATTEMPTS_MAX {
        match free_port(port.protocol) {
            Ok(number) if !taken.contains(&(number, port.protocol)) => return Ok(number),
            Ok(_) => {}
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(e) => format!(
            "cannot find a free {} port for port {}: {e}",
            protocol_name(port.protocol),
            port.name
        ),
        None => format!(
            "cannot find a free {} port for port {}: the kernel kept offering ports of this \
             node's own instances",
            protocol_name(port.protocol),
            port.name
        ),
    })
}

/// A port the kernel says is free now. The IPv6 wildcard also covers IPv4 on a dual-stack
/// host; a host without IPv6 gets the IPv4 wildcard.
fn free_port(protocol: PortProtocol) -> std::io::Result<u16> {
    let wildcards = [
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
    ];
    let bound = match protocol {
        PortProtocol::Tcp => TcpListener::bind(&wildcards[..]).and_then(|l| l.local_addr()),
        PortProtocol::Udp => UdpSocket::bind(&wildcards[..]).and_then(|s| s.local_addr()),
    };
    bound.map(|addr| addr.port())
}

fn protocol_name(protocol: PortProtocol) -> &'static str {
    match protocol {
        PortProtocol::Tcp => "tcp",
        PortProtocol::Udp => "udp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, host_port: Option<u16>, protocol: PortProtocol) -> PortSpec {
        PortSpec {
            name: name.into(),
            container_port: 8080,
            host_port,
            protocol,
        }
    }

    #[test]
    fn unfixed_ports_get_distinct_free_ports_and_fixed_ones_stay() {
        let specs = [
            port("http", None, PortProtocol::Tcp),
            port("admin-api", None, PortProtocol::Tcp),
            port("dns", None, PortProtocol::Udp),
            port("fixed", Some(18_080), PortProtocol::Tcp),
        ];
        let first = assign(&specs, &BTreeSet::new()).expect("ports");
        assert_eq!(first["fixed"].port, 18_080);
        assert_eq!(first["dns"].protocol, PortProtocol::Udp);
        assert_ne!(first["http"].port, first["admin-api"].port);
        assert!(first.values().all(|b| b.port != 0));
        // Free now: nothing holds a picked port until the instance binds it.
        TcpListener::bind(("0.0.0.0", first["http"].port)).expect("the picked port is free");
        // A second instance never gets what the first holds.
        let held = held([&first]);
        for _ in 0..20 {
            let again = assign(&specs[..3], &held).expect("ports");
            assert!(
                again.iter().all(|(name, b)| first[name] != *b),
                "{first:?} {again:?}"
            );
        }
    }

    #[test]
    fn a_fixed_port_held_by_another_instance_fails_the_start_with_its_name() {
        let specs = [port("web", Some(18_081), PortProtocol::Tcp)];
        let held = BTreeSet::from([(18_081, PortProtocol::Tcp)]);
        let why = assign(&specs, &held).expect_err("held");
        assert!(why.contains("port web (18081/tcp) is held"), "{why}");
        // The same number over UDP is another port.
        let udp = [port("web", Some(18_081), PortProtocol::Udp)];
        assert_eq!(assign(&udp, &held).expect("free")["web"].port, 18_081);
    }

    #[test]
    fn port_references_are_replaced_and_everything_else_is_kept() {
        let tcp = |port| Bound {
            port,
            protocol: PortProtocol::Tcp,
        };
        let ports = PortMap::from([("http".into(), tcp(41_234)), ("admin-api".into(), tcp(7))]);
        assert_eq!(
            substitute("--listen=:${port.http} --admin ${port.admin-api}", &ports),
            "--listen=:41234 --admin 7"
        );
        assert_eq!(substitute("${port.http}${port.http}", &ports), "4123441234");
        for kept in [
            "${port.other}",
            "${port.http",
            "${#x} $HOME ${PORT}",
            "plain",
        ] {
            assert_eq!(substitute(kept, &ports), kept);
        }
        assert_eq!(
            env(&ports),
            [
                ("STARLING_PORT_ADMIN_API".to_string(), "7".to_string()),
                ("STARLING_PORT_HTTP".to_string(), "41234".to_string())
            ]
        );
    }
}
