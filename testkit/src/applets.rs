//! The applets of `starling-test-tools`, the one workspace-built program in the container
//! tests' image: the network clients those tests run inside containers and a fresh Debian
//! machine does not have (`nslookup`, `wget`). Everything else in the image is the host's
//! own shell and coreutils (see [`crate::docker`]).
//!
//! Only the standard library is used: `build.rs` compiles this file on its own with `rustc`
//! (no Cargo, no crates), so the program exists before any test runs. Each applet does just
//! what the tests ask of it, with busybox's output where a test reads it.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs as _, UdpSocket};
use std::time::Duration;

/// The names the image links to the program; it runs the applet its `argv[0]` names.
pub const NAMES: &[&str] = &["nslookup", "wget"];

/// How long one DNS attempt or one HTTP connect/read may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// DNS attempts before `nslookup` gives up (UDP may drop a datagram).
const DNS_ATTEMPTS: u32 = 2;

/// Runs the applet named by `args[0]` (or by `args[1]` when called by the program's own
/// name) and returns its exit status.
pub fn main(args: Vec<String>) -> i32 {
    let mut args = args.into_iter();
    let called = args.next().unwrap_or_default();
    let mut name = called.rsplit('/').next().unwrap_or_default().to_string();
    if !NAMES.contains(&name.as_str()) {
        name = args.next().unwrap_or_default();
    }
    let rest: Vec<String> = args.collect();
    let result = match name.as_str() {
        "nslookup" => nslookup(&rest),
        "wget" => wget(&rest),
        other => Err(format!(
            "no applet {other:?}; this program runs {}",
            NAMES.join(", ")
        )),
    };
    match result {
        Ok(()) => 0,
        Err(why) => {
            let _ = writeln!(std::io::stderr(), "{name}: {why}");
            1
        }
    }
}

/// `nslookup NAME [SERVER[:PORT]]`: one A query to SERVER or the first `nameserver` of
/// /etc/resolv.conf, printed as busybox prints it (answers last, one `Address:` line each).
fn nslookup(args: &[String]) -> Result<(), String> {
    let (name, server) = match args {
        [name] => (name, resolver()?),
        [name, server] => (name, server_address(server)?),
        _ => return Err("usage: nslookup NAME [SERVER]".into()),
    };
    let id = (std::process::id() & 0xffff) as u16;
    let request = dns_query(id, name)?;
    let response = exchange(server, &request)?;
    println!("Server:\t\t{}", server.ip());
    println!("Address:\t{server}\n");
    match parse_dns_response(id, &response)? {
        DnsAnswer::NxDomain => {
            println!("** server can't find {name}: NXDOMAIN");
            Err(format!("{name}: NXDOMAIN"))
        }
        DnsAnswer::Addresses(addresses) if addresses.is_empty() => {
            println!("*** Can't find {name}: No answer");
            Err(format!("{name}: no A record"))
        }
        DnsAnswer::Addresses(addresses) => {
            for address in addresses {
                println!("Name:\t{name}\nAddress: {address}");
            }
            Ok(())
        }
    }
}

fn resolver() -> Result<SocketAddr, String> {
    let conf = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| format!("/etc/resolv.conf: {e}"))?;
    let server = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .ok_or("/etc/resolv.conf names no nameserver")?;
    server_address(server)
}

/// `ADDRESS` (port 53) or `ADDRESS:PORT`.
fn server_address(server: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = server.parse() {
        return Ok(address);
    }
    let ip: IpAddr = server
        .parse()
        .map_err(|e| format!("server {server:?}: {e}"))?;
    Ok(SocketAddr::new(ip, 53))
}

fn exchange(server: SocketAddr, request: &[u8]) -> Result<Vec<u8>, String> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).map_err(|e| format!("bind: {e}"))?;
    socket
        .connect(server)
        .map_err(|e| format!("{server}: {e}"))?;
    socket
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut last = String::new();
    for _ in 0..DNS_ATTEMPTS {
        socket.send(request).map_err(|e| format!("{server}: {e}"))?;
        let mut buffer = [0u8; 1500];
        match socket.recv(&mut buffer) {
            Ok(n) => return Ok(buffer[..n].to_vec()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("no answer from {server}: {last}"))
}

/// What a DNS response says about the name asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum DnsAnswer {
    /// The name does not exist (RCODE 3).
    NxDomain,
    /// The A records of the answer section, in order (none: the name has no address).
    Addresses(Vec<Ipv4Addr>),
}

/// A recursive A query for `name` with `id`.
pub fn dns_query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(18 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    // Flags: recursion desired; one question, no other records.
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "{name:?} is not a domain name (a label of 1 to 63 bytes)"
            ));
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    if out.len() - 12 > 255 {
        return Err(format!("{name:?} is longer than 255 bytes"));
    }
    // QTYPE A, QCLASS IN.
    out.extend_from_slice(&[0, 1, 0, 1]);
    Ok(out)
}

/// Reads a response to the query with `id`: its RCODE and the A records of its answers.
pub fn parse_dns_response(id: u16, msg: &[u8]) -> Result<DnsAnswer, String> {
    let truncated = || "a truncated DNS response".to_string();
    let header = msg.get(..12).ok_or_else(truncated)?;
    let word = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
    if word(0) != id {
        return Err(format!("a response to query {} (asked {id})", word(0)));
    }
    match word(2) & 0x000f {
        0 => {}
        3 => return Ok(DnsAnswer::NxDomain),
        rcode => return Err(format!("the server answered RCODE {rcode}")),
    }
    let mut at = 12;
    for _ in 0..word(4) {
        at = skip_name(msg, at).ok_or_else(truncated)? + 4;
    }
    let mut addresses = Vec::new();
    for _ in 0..word(6) {
        at = skip_name(msg, at).ok_or_else(truncated)?;
        let fixed = msg.get(at..at + 10).ok_or_else(truncated)?;
        let (kind, class) = (
            u16::from_be_bytes([fixed[0], fixed[1]]),
            u16::from_be_bytes([fixed[2], fixed[3]]),
        );
        let length = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let data = msg.get(at + 10..at + 10 + length).ok_or_else(truncated)?;
        if let ((1, 1), [a, b, c, d]) = ((kind, class), data) {
            addresses.push(Ipv4Addr::new(*a, *b, *c, *d));
        }
        at += 10 + length;
    }
    Ok(DnsAnswer::Addresses(addresses))
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let length = *msg.get(at)?;
        match length {
            0 => return Some(at + 1),
            // A pointer ends the name where it stands.
            l if l & 0xc0 == 0xc0 => return msg.get(at + 1).map(|_| at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

/// `wget [-q] [-O FILE|-] URL`: an HTTP/1.0 GET; the body goes to FILE (`-`: stdout); a
/// status other than 2xx fails, as busybox's does.
fn wget(args: &[String]) -> Result<(), String> {
    let mut output = None;
    let mut url = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-q" => {}
            "-O" => output = Some(args.next().ok_or("-O needs a file name")?.clone()),
            a if a.starts_with('-') => return Err(format!("unsupported option {a}")),
            a => url = Some(a.to_string()),
        }
    }
    let url = url.ok_or("usage: wget [-q] [-O FILE] URL")?;
    let target = HttpUrl::parse(&url)?;
    let body = http_get(&target)?;
    match output.as_deref() {
        None => {
            let file = target.path.rsplit('/').next().filter(|f| !f.is_empty());
            let file = file.unwrap_or("index.html");
            std::fs::write(file, body).map_err(|e| format!("{file}: {e}"))
        }
        Some("-") => std::io::stdout()
            .write_all(&body)
            .map_err(|e| format!("stdout: {e}")),
        Some(file) => std::fs::write(file, body).map_err(|e| format!("{file}: {e}")),
    }
}

/// The parts of an `http://` URL.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// The host as written (a name or an address; IPv6 in brackets).
    pub host: String,
    /// The port, 80 unless given.
    pub port: u16,
    /// The path and query, `/` at least.
    pub path: String,
}

impl HttpUrl {
    /// Splits `http://HOST[:PORT][/PATH]`.
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        // The port follows the last colon unless it is inside an IPv6 address's brackets.
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                let port = port
                    .parse()
                    .map_err(|_| format!("{url:?}: port {port:?} is not a number"))?;
                (host, port)
            }
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("{url:?} names no host"));
        }
        Ok(HttpUrl {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

fn http_get(url: &HttpUrl) -> Result<Vec<u8>, String> {
    let host = url.host.trim_start_matches('[').trim_end_matches(']');
    let address = (host, url.port)
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", url.host))?
        .next()
        .ok_or_else(|| format!("{}: no address", url.host))?;
    let mut stream =
        TcpStream::connect_timeout(&address, TIMEOUT).map_err(|e| format!("{address}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}:{}\r\nUser-Agent: starling-test-tools\r\n\r\n",
        url.path, url.host, url.port
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{address}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("{address}: {e}"))?;
    let (status, body) = split_http_response(&response)?;
    if !(200..300).contains(&status) {
        return Err(format!("server returned error: HTTP {status}"));
    }
    Ok(body.to_vec())
}

/// The status code and the body of a whole HTTP/1.x response (the server closed after it).
pub fn split_http_response(response: &[u8]) -> Result<(u16, &[u8]), String> {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the response has no end of headers")?;
    let head = String::from_utf8_lossy(&response[..end]);
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    Ok((status, &response[end + 4..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response to `dns_query(7, "web.svc")` with a compressed answer name.
    fn response(rcode: u8, answers: &[[u8; 4]]) -> Vec<u8> {
        let mut msg = dns_query(7, "web.svc").expect("query");
        msg[2] = 0x81;
        msg[3] = 0x80 | rcode;
        msg[7] = answers.len() as u8;
        for address in answers {
            // Name: a pointer to the question's name at offset 12; A, IN, TTL 5, 4 bytes.
            msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
            msg.extend_from_slice(address);
        }
        msg
    }

    #[test]
    fn a_query_holds_the_labels_and_asks_for_a_records() {
        let query = dns_query(0x1234, "web.svc.starling.").expect("query");
        assert_eq!(&query[..2], &[0x12, 0x34]);
        assert_eq!(
            &query[12..],
            b"\x03web\x03svc\x08starling\x00\x00\x01\x00\x01"
        );
        assert!(dns_query(1, "a..b").is_err());
        assert!(dns_query(1, &"x".repeat(64)).is_err());
    }

    #[test]
    fn answers_are_read_past_compressed_names_and_nxdomain_is_told_apart() {
        let msg = response(0, &[[172, 17, 0, 1], [10, 0, 0, 2]]);
        assert_eq!(
            parse_dns_response(7, &msg),
            Ok(DnsAnswer::Addresses(vec![
                Ipv4Addr::new(172, 17, 0, 1),
                Ipv4Addr::new(10, 0, 0, 2)
            ]))
        );
        assert_eq!(
            parse_dns_response(7, &response(3, &[])),
            Ok(DnsAnswer::NxDomain)
        );
        assert!(parse_dns_response(8, &msg).is_err(), "another query's id");
        assert!(parse_dns_response(7, &msg[..msg.len() - 2]).is_err());
        assert!(parse_dns_response(7, &response(2, &[])).is_err());
    }

    #[test]
    fn urls_split_into_host_port_and_path() {
        assert_eq!(
            HttpUrl::parse("http://172.17.0.1:8080/"),
            Ok(HttpUrl {
                host: "172.17.0.1".into(),
                port: 8080,
                path: "/".into()
            })
        );
        let url = HttpUrl::parse("http://[::1]/a?b").expect("url");
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("[::1]", 80, "/a?b")
        );
        assert!(HttpUrl::parse("https://x/").is_err());
        assert!(HttpUrl::parse("http://x:web/").is_err());
        assert!(HttpUrl::parse("http://:80/").is_err());
    }

    #[test]
    fn a_response_gives_its_status_and_body() {
        let response = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nhello\r\n\r\nthere";
        assert_eq!(
            split_http_response(response),
            Ok((200, &b"hello\r\n\r\nthere"[..]))
        );
        assert_eq!(
            split_http_response(b"HTTP/1.1 404 Not Found\r\n\r\n"),
            Ok((404, &b""[..]))
        );
        assert!(split_http_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(split_http_response(b"SSH-2.0\r\n\r\n").is_err());
    }
}
