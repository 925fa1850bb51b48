//! Cluster identity: the cluster CA, node and user certificates, and join tokens.
//!
//! `starling init` makes a CA; every node and operator gets a certificate signed by it, so QUIC
//! with mutual TLS refuses anyone else. A join token carries the CA's SHA-256 fingerprint and a
//! one-time secret (kubeadm's CA-hash pattern): a joining node checks it talks to the right
//! cluster before it trusts anything, and the secret cannot be used twice.
//!
//! No clock here: certificates use rcgen's fixed validity window, and revocation (a removed
//! node's certificate) is a list of serials checked after the handshake, not expiry.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use ring::digest::{SHA256, digest};
use starling_protocol::NodeId;
use starling_protocol::access::OperatorRole;

/// Errors of identity handling; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Key or certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The token is not a Starling join token.
    #[error("join token: {0}")]
    Token(String),
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An agent: serves and dials QUIC.
    Node,
    /// An operator or script using the CLI: dials only, with what its role allows.
    User(OperatorRole),
}

/// The DNS name that says who holds a certificate (see `net::tls`):
/// - a node: `<id>.node.starling`;
/// - an admin: `<name>.user.starling`, as every user certificate carried before roles, so
///   those stay admins and an admin's certificate works on agents of any version;
/// - a deployer or viewer: `<name>.<role>.starling`. An agent that predates roles finds no
///   name it knows in those and refuses them, rather than take them for admins.
pub fn holder_dns_name(role: Role, name: &str) -> String {
    match role {
        Role::Node => format!("{name}.node.starling"),
        Role::User(OperatorRole::Admin) => format!("{name}.user.starling"),
        Role::User(role) => format!("{name}.{role}.starling"),
    }
}

/// The holder named by one DNS name of a certificate, as [`holder_dns_name`] wrote it; None
/// for any other name (`node.starling`, which every node certificate carries too).
pub fn holder_of_dns_name(dns: &str) -> Option<(Role, String)> {
    let (name, kind) = dns.strip_suffix(".starling")?.rsplit_once('.')?;
    let role = match kind {
        "node" => Role::Node,
        "user" => Role::User(OperatorRole::Admin),
        "deployer" => Role::User(OperatorRole::Deployer),
        "viewer" => Role::User(OperatorRole::Viewer),
        _ => return None,
    };
    Some((role, name.to_string()))
}

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (keep it on the machine it belongs to).
    pub key_pem: String,
}

/// The cluster's certificate authority.
pub struct ClusterCa {
    cluster: String,
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

fn ca_params(cluster: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Starling");
    dn.push(DnType::CommonName, format!("{cluster} cluster CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn cert_err(e: rcgen::Error) -> IdentityError {
    IdentityError::Certificate(e.to_string())
}

impl ClusterCa {
    /// A new CA for the cluster named `cluster`.
    pub fn create(cluster: &str) -> Result<Self, IdentityError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = ca_params(cluster).self_signed(&key).map_err(cert_err)?;
        Ok(ClusterCa {
            cluster: cluster.to_string(),
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    /// The CA as stored by [`ClusterCa::create`]: its certificate and key in PEM.
    pub fn load(cluster: &str, cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_err)?;
        let der = pem_body(cert_pem)
            .ok_or_else(|| IdentityError::Certificate("the CA certificate is not PEM".into()))?;
        Ok(ClusterCa {
            cluster: cluster.to_string(),
            cert_pem: cert_pem.to_string(),
            cert_der: der,
            key,
        })
    }

    /// The CA certificate (distribute it; it is public).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (keep it on the machine that signs).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the CA certificate's DER: what a join token pins.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint_of(&self.cert_der)
    }

    /// Signs a certificate for a node (server and client auth, SAN = the node id) or a user
    /// (client auth only, SAN = the name and role, see [`holder_dns_name`]).
    pub fn issue(&self, role: Role, name: &NodeId) -> Result<Issued, IdentityError> {
        // DNS names say who the holder is (see `net::tls`); dialers verify `node.starling`.
        let holder = holder_dns_name(role, name.as_str());
        let names = match role {
            Role::Node => vec![crate::net::tls::NODE_SERVER_NAME.to_string(), holder],
            Role::User(_) => vec![holder],
        };
        let mut params = CertificateParams::new(names).map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Starling");
        dn.push(
            DnType::OrganizationalUnitName,
            if role == Role::Node { "node" } else { "user" },
        );
        dn.push(DnType::CommonName, name.as_str());
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match role {
            Role::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::User(_) => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let key = KeyPair::generate().map_err(cert_err)?;
        let issuer = Issuer::new(ca_params(&self.cluster), &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// SHA-256 of DER bytes.
pub fn fingerprint_of(der: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, der).as_ref());
    out
}

/// The DER bytes inside a PEM document (its first block).
pub fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return None;
    }
    decode_base64(&body)
}

fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    decode_base64(&body)
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// What a node needs to join: whom to trust, a one-time secret, and where to knock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate.
    pub ca_fingerprint: [u8; 32],
    /// One-time secret, spent by the first join that presents it.
    pub secret: [u8; 16],
    /// Peers to contact (`host:port`).
    pub seeds: Vec<String>,
}

const TOKEN_PREFIX: &str = "stl1";

impl JoinToken {
    /// The token as one copy-pasteable line: `stl1.<fingerprint>.<secret>.<seeds>.<check>`.
    pub fn encode(&self) -> String {
        let body = format!(
            "{TOKEN_PREFIX}.{}.{}.{}",
            hex(&self.ca_fingerprint),
            hex(&self.secret),
            self.seeds.join(",")
        );
        let check = hex(&fingerprint_of(body.as_bytes())[..4]);
        format!("{body}.{check}")
    }

    /// Parses a token; errors say which part is wrong.
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let text = text.trim();
        let bad = |what: &str| {
            IdentityError::Token(format!(
                "{what}; copy the whole token printed by `starling init` or `starling token create`"
            ))
        };
        let (body, check) = text
            .rsplit_once('.')
            .ok_or_else(|| bad("not a Starling join token"))?;
        let parts: Vec<&str> = body.splitn(4, '.').collect();
        if parts.len() != 4 || parts[0] != TOKEN_PREFIX {
            return Err(bad("not a Starling join token (it starts with stl1.)"));
        }
        if hex(&fingerprint_of(body.as_bytes())[..4]) != check {
            return Err(bad("the token is damaged (its checksum does not match)"));
        }
        let mut ca_fingerprint = [0u8; 32];
        unhex(parts[1], &mut ca_fingerprint)
            .ok_or_else(|| bad("the CA fingerprint is not 64 hex digits"))?;
        let mut secret = [0u8; 16];
        unhex(parts[2], &mut secret).ok_or_else(|| bad("the secret is not 32 hex digits"))?;
        let seeds = parts[3]
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        Ok(JoinToken {
            ca_fingerprint,
            secret,
            seeds,
        })
    }
}

/// The node id a new data dir gets when none is asked for: the host's short name, a dash and
/// four random hex digits (`gw-3f9a`). Devices flashed from one image share their host name
/// and `/etc/machine-id`, so neither alone tells them apart; the random part is drawn once,
/// when the data dir is created, and stored with the id, so it never changes afterwards.
pub fn default_node_id(host_name: &str, suffix: [u8; 2]) -> NodeId {
    const FALLBACK: &str = "node";
    // Room for the dash and four digits within one DNS label.
    let room = starling_protocol::names::WORKLOAD_NAME_BYTES_MAX - 5;
    let short = host_name.trim().split('.').next().unwrap_or_default();
    let cleaned: String = short
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(room)
        .collect();
    let cleaned = cleaned.trim_matches('-');
    let base = if cleaned.is_empty() {
        FALLBACK
    } else {
        cleaned
    };
    // Lowercase letters, digits and inner dashes within one DNS label: a valid node id by
    // construction, so this cannot fail.
    NodeId::new(format!("{base}-{}", hex(&suffix))).expect("a DNS label is a valid node id")
}

/// [`default_node_id`] for this host: its name from the kernel, a suffix from the operating
/// system's random generator. Call it only when a data dir is created.
pub fn host_node_id() -> NodeId {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let mut suffix = [0u8; 2];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut suffix).is_err() {
        // Without the OS generator, the process id still differs between most devices.
        let pid = std::process::id();
        suffix = [(pid >> 8) as u8, pid as u8];
    }
    default_node_id(&name, suffix)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(text: &str, out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_issues_node_and_user_certificates_and_survives_a_reload() {
        let ca = ClusterCa::create("edge").expect("ca");
        let node = ca
            .issue(Role::Node, &NodeId::new("gw-17").expect("id"))
            .expect("node cert");
        assert!(node.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(node.key_pem.contains("PRIVATE KEY"));
        let reloaded = ClusterCa::load("edge", ca.cert_pem(), &ca.key_pem()).expect("reload");
        assert_eq!(
            reloaded.fingerprint(),
            ca.fingerprint(),
            "the fingerprint is the certificate's, stable across reloads"
        );
        assert!(
            reloaded
                .issue(
                    Role::User(OperatorRole::Viewer),
                    &NodeId::new("alice").expect("id")
                )
                .is_ok()
        );
        assert_ne!(
            ClusterCa::create("edge").expect("ca").fingerprint(),
            ca.fingerprint(),
            "every CA is new"
        );
        assert!(
            format!("{ca:?}").contains("edge") && !format!("{ca:?}").contains("PRIVATE"),
            "no key in debug output"
        );
    }

    #[test]
    fn holder_names_round_trip_and_certificates_before_roles_are_admins() {
        let holders = [
            (Role::Node, "gw-1"),
            (Role::User(OperatorRole::Admin), "ada"),
            (Role::User(OperatorRole::Deployer), "dee"),
            (Role::User(OperatorRole::Viewer), "eve.ops"),
            // A name may look like a role or a kind: the last label before the zone decides.
            (Role::User(OperatorRole::Viewer), "x.user"),
            (Role::User(OperatorRole::Admin), "y.node"),
        ];
        for (role, name) in holders {
            let dns = holder_dns_name(role, name);
            assert_eq!(
                holder_of_dns_name(&dns),
                Some((role, name.to_string())),
                "{dns}"
            );
        }
        // What `starling user add` wrote before roles: an admin, under the same name.
        assert_eq!(
            holder_of_dns_name("alice.user.starling"),
            Some((Role::User(OperatorRole::Admin), "alice".into()))
        );
        // The restricted roles use names an agent before roles does not know (it refuses
        // them instead of taking them for admins).
        assert_eq!(
            holder_dns_name(Role::User(OperatorRole::Viewer), "eve"),
            "eve.viewer.starling"
        );
        for other in [
            "node.starling",
            "a.auditor.starling",
            "a.user.example",
            "starling",
        ] {
            assert_eq!(holder_of_dns_name(other), None, "{other}");
        }
    }

    #[test]
    fn the_default_node_id_is_the_short_host_name_with_a_suffix() {
        let id = |host: &str| default_node_id(host, [0x3f, 0x9a]).to_string();
        assert_eq!(id("gw-17\n"), "gw-17-3f9a");
        assert_eq!(id("Edge_Box.example.com"), "edge-box-3f9a");
        assert_eq!(id(""), "node-3f9a", "no host name");
        assert_eq!(id("--"), "node-3f9a");
        let long = "a".repeat(200);
        let long_id = id(&long);
        assert_eq!(long_id.len(), 63, "one DNS label: {long_id}");
        assert!(long_id.ends_with("-3f9a"));
        assert_ne!(
            default_node_id("gw", [0, 1]),
            default_node_id("gw", [0, 2]),
            "two devices with one host name differ"
        );
    }

    #[test]
    fn a_join_token_round_trips_and_damage_is_named() {
        let token = JoinToken {
            ca_fingerprint: [0xab; 32],
            secret: [7; 16],
            seeds: vec!["10.0.0.1:7946".into(), "gw-2:7946".into()],
        };
        let text = token.encode();
        assert!(text.starts_with("stl1."));
        assert_eq!(JoinToken::parse(&text).expect("parses"), token);
        let mut damaged = text.clone().into_bytes();
        damaged[10] = if damaged[10] == b'0' { b'1' } else { b'0' };
        let err =
            JoinToken::parse(&String::from_utf8(damaged).expect("utf-8")).expect_err("damaged");
        assert!(err.to_string().contains("checksum does not match"), "{err}");
        assert!(
            JoinToken::parse("hello")
                .expect_err("garbage")
                .to_string()
                .contains("not a Starling join token")
        );
    }
}
