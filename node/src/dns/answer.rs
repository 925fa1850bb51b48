//! One DNS message in, one answer out: decoding, the answer from the service table, encoding
//! and truncation. No sockets, no clock: the server's tasks call [`respond`] per message.
//!
//! What it promises its caller, whatever the bytes: no panic; at most one allocation sized by
//! the message before the question is known to be single (hickory-proto reserves room for as
//! many questions as the header claims, so the header is read alone first and anything but one
//! question is refused with FORMERR); an answer no longer than the transport allows (512 bytes
//! on UDP without EDNS, the client's EDNS size up to [`UDP_PAYLOAD_BYTES_MAX`], 65,535 on TCP);
//! and an [`Outcome`] for every message, for the counters.

use std::collections::BTreeSet;
use std::net::IpAddr;

use hickory_proto::ProtoError;
use hickory_proto::op::{
    Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use starling_protocol::service::{
    DOMAIN, Lookup, Service, ServicePort, ServiceTable, replica_addresses, replica_host,
};
use starling_protocol::spec::PortProtocol;

use super::{INSTANCE_TTL_SECS, NEGATIVE_TTL_SECS, SERVICE_TTL_SECS, ServiceAnswer};

/// Largest UDP answer sent to an EDNS client, whatever size it offers: the DNS flag day 2020
/// value, small enough never to be fragmented on any path.
pub const UDP_PAYLOAD_BYTES_MAX: u16 = 1232;

/// Largest UDP answer to a client without EDNS (RFC 1035).
const UDP_PLAIN_BYTES_MAX: u16 = 512;

/// What became of one message (each is one counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// NOERROR with records.
    Answered,
    /// NOERROR without records.
    NoData,
    /// NXDOMAIN.
    NxDomain,
    /// REFUSED.
    Refused,
    /// NOTIMP or BADVERS.
    NotImplemented,
    /// SERVFAIL.
    ServFail,
    /// FORMERR, or dropped.
    Malformed,
}

/// How the message came, which bounds the answer's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Datagrams: 512 bytes, or what EDNS allows.
    Udp,
    /// Length-prefixed messages: 65,535 bytes.
    Tcp,
}

/// The answer to send (none: drop the message) and what to count.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) bytes: Option<Vec<u8>>,
    pub(crate) outcome: Outcome,
    /// The answer did not fit and was cut to its question with TC set.
    pub(crate) truncated: bool,
}

/// The zone's own records, built once.
#[derive(Debug, Clone)]
pub(crate) struct Zone {
    soa: Record,
}

impl Zone {
    /// The apex `svc.starling.` and its SOA, whose minimum is the negative-caching TTL.
    pub(crate) fn new() -> Result<Zone, ProtoError> {
        let apex = Name::from_ascii(format!("{DOMAIN}."))?;
        let rname = Name::from_ascii("nobody.invalid.")?;
        // Serial, refresh, retry and expire matter only to secondaries, and there are none:
        // every agent answers from its own table.
        let soa = SOA::new(apex.clone(), rname, 1, 3600, 600, 86_400, NEGATIVE_TTL_SECS);
        let soa = Record::from_rdata(apex, NEGATIVE_TTL_SECS, RData::SOA(soa));
        Ok(Zone { soa })
    }
}

/// Answers one message from `table`; `service_answer` says what `NAME.svc.starling` resolves
/// to on the socket it came in on.
pub(crate) fn respond(
    request: &[u8],
    table: &ServiceTable,
    zone: &Zone,
    service_answer: ServiceAnswer,
    transport: Transport,
) -> Reply {
    let Ok(header) = Header::read(&mut BinDecoder::new(request)) else {
        return dropped();
    };
    // Never answer a response: two servers could otherwise bounce one packet forever.
    if header.metadata.message_type == MessageType::Response {
        return dropped();
    }
    let mut metadata = Metadata::response_from_request(&header.metadata);
    if header.metadata.op_code != OpCode::Query {
        metadata.response_code = ResponseCode::NotImp;
        return error(metadata, Outcome::NotImplemented);
    }
    if header.counts.queries != 1 {
        metadata.response_code = ResponseCode::FormErr;
        return error(metadata, Outcome::Malformed);
    }
    let Ok(message) = Message::from_vec(request) else {
        metadata.response_code = ResponseCode::FormErr;
        return error(metadata, Outcome::Malformed);
    };
    let Some(query) = message.queries.first() else {
        metadata.response_code = ResponseCode::FormErr;
        return error(metadata, Outcome::Malformed);
    };
    let size_max = match (transport, &message.edns) {
        (Transport::Tcp, _) => u16::MAX,
        (Transport::Udp, None) => UDP_PLAIN_BYTES_MAX,
        (Transport::Udp, Some(edns)) => edns
            .max_payload()
            .clamp(UDP_PLAIN_BYTES_MAX, UDP_PAYLOAD_BYTES_MAX),
    };
    let mut response = Message::new(metadata.id, MessageType::Response, OpCode::Query);
    response.metadata = metadata;
    response.add_query(query.clone());
    if let Some(edns) = &message.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(UDP_PAYLOAD_BYTES_MAX);
        response.set_edns(ours);
        if edns.version() > 0 {
            response.metadata.response_code = ResponseCode::BADVERS;
            return encode(response, Outcome::NotImplemented, size_max);
        }
    }
    let outcome = answer(&mut response, query, table, zone, service_answer);
    encode(response, outcome, size_max)
}

/// What a question's name is to this server.
enum Target<'a> {
    /// `svc.starling` itself: it exists, with its SOA.
    Apex,
    /// A name the table knows, or does not.
    Table(Lookup<'a>),
    /// `_tcp.NAME` or `_udp.NAME` of a service with such ports: a name that exists only because
    /// names below it do (an empty non-terminal). NXDOMAIN would tell resolvers that follow RFC
    /// 8020 that nothing below it exists, the SRV names included.
    EmptyNonTerminal,
}

/// Fills `response` for `query`; returns its outcome.
fn answer(
    response: &mut Message,
    query: &Query,
    table: &ServiceTable,
    zone: &Zone,
    service_answer: ServiceAnswer,
) -> Outcome {
    if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
        response.metadata.response_code = ResponseCode::Refused;
        return Outcome::Refused;
    }
    let owner = query.name();
    let qtype = query.query_type();
    let text = name_text(owner);
    let target = if text.eq_ignore_ascii_case(DOMAIN) {
        Target::Apex
    } else {
        match table.lookup(&text) {
            Lookup::Unknown if empty_non_terminal(table, &text) => Target::EmptyNonTerminal,
            lookup => Target::Table(lookup),
        }
    };
    let (answers, additionals) = match target {
        Target::Table(Lookup::Outside) => {
            // Not ours, and we do not forward: REFUSED makes a stub resolver ask its next
            // server, and without AA nobody takes it as the last word.
            response.metadata.response_code = ResponseCode::Refused;
            return Outcome::Refused;
        }
        Target::Table(Lookup::Unknown) => {
            response.metadata.authoritative = true;
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authority(zone.soa.clone());
            return Outcome::NxDomain;
        }
        Target::Apex if wants(qtype, RecordType::SOA) => {
            (vec![with_owner(zone.soa.clone(), owner)], Vec::new())
        }
        Target::Apex | Target::EmptyNonTerminal => (Vec::new(), Vec::new()),
        Target::Table(Lookup::Service(service)) => {
            let address = match service_answer {
                ServiceAnswer::ServiceAddress => IpAddr::V4(service.address),
                ServiceAnswer::Fixed(address) => address,
            };
            let answers = address_records(owner, [address], qtype, SERVICE_TTL_SECS);
            (answers, Vec::new())
        }
        Target::Table(Lookup::Port(service, port)) if wants(qtype, RecordType::SRV) => {
            srv_records(owner, service, port)
        }
        Target::Table(Lookup::Port(..)) => (Vec::new(), Vec::new()),
        Target::Table(Lookup::Replica(service, index)) => {
            let addresses = replica_addresses(service, index);
            let answers = address_records(owner, addresses, qtype, INSTANCE_TTL_SECS);
            (answers, Vec::new())
        }
    };
    response.metadata.authoritative = true;
    if answers.is_empty() {
        response.add_authority(zone.soa.clone());
        return Outcome::NoData;
    }
    response.insert_answers(answers);
    response.insert_additionals(additionals);
    Outcome::Answered
}

/// One SRV record per ready instance of `port`, and the addresses of their targets as
/// additional records (saving the client a lookup per target).
fn srv_records(owner: &Name, service: &Service, port: &ServicePort) -> (Vec<Record>, Vec<Record>) {
    let mut answers = Vec::new();
    let mut replicas = BTreeSet::new();
    for instance in service.ready(&port.name) {
        // Workload names are DNS labels, so this never fails; if it did, leaving the one
        // instance out beats failing the whole answer.
        let Ok(target) = Name::from_ascii(replica_host(&instance.replica)) else {
            continue;
        };
        // Equal priorities and weights: every ready instance is as good as another; the
        // local proxy, not SRV, is where balancing is done.
        let srv = SRV::new(0, 1, instance.address.port(), target.clone());
        answers.push(Record::from_rdata(
            owner.clone(),
            INSTANCE_TTL_SECS,
            RData::SRV(srv),
        ));
        replicas.insert((instance.replica.index, target));
    }
    let mut additionals = Vec::new();
    for (index, target) in replicas {
        let addresses = replica_addresses(service, index);
        additionals.extend(address_records(
            &target,
            addresses,
            RecordType::ANY,
            INSTANCE_TTL_SECS,
        ));
    }
    (answers, additionals)
}

/// A and AAAA records of `addresses` that `qtype` asks for.
fn address_records(
    owner: &Name,
    addresses: impl IntoIterator<Item = IpAddr>,
    qtype: RecordType,
    ttl_secs: u32,
) -> Vec<Record> {
    addresses
        .into_iter()
        .filter_map(|address| {
            let rdata = match address {
                IpAddr::V4(v4) if wants(qtype, RecordType::A) => RData::A(A(v4)),
                IpAddr::V6(v6) if wants(qtype, RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                _ => return None,
            };
            Some(Record::from_rdata(owner.clone(), ttl_secs, rdata))
        })
        .collect()
}

/// Whether a question of type `qtype` is answered by records of type `rtype`.
fn wants(qtype: RecordType, rtype: RecordType) -> bool {
    qtype == rtype || qtype == RecordType::ANY
}

fn with_owner(mut record: Record, owner: &Name) -> Record {
    record.name = owner.clone();
    record
}

/// The name as dotted text for [`ServiceTable::lookup`]. Bytes that cannot be in a service
/// name become `?`, so a label holding a dot (possible on the wire) stays one label and
/// matches nothing, instead of posing as two.
fn name_text(name: &Name) -> String {
    let mut text = String::with_capacity(name.len());
    for label in name.iter() {
        if !text.is_empty() {
            text.push('.');
        }
        text.extend(label.iter().map(|&byte| {
            if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
                char::from(byte)
            } else {
                '?'
            }
        }));
    }
    text
}

/// Whether `text` is `_tcp.NAME.svc.starling` or `_udp.NAME.svc.starling` of a service with a
/// port of that protocol.
fn empty_non_terminal(table: &ServiceTable, text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    let Some(head) = text.strip_suffix(DOMAIN).and_then(|h| h.strip_suffix('.')) else {
        return false;
    };
    let Some((proto, name)) = head.split_once('.') else {
        return false;
    };
    let protocol = match proto {
        "_tcp" => PortProtocol::Tcp,
        "_udp" => PortProtocol::Udp,
        _ => return false,
    };
    matches!(table.lookup(&format!("{name}.{DOMAIN}")), Lookup::Service(service)
        if service.ports.iter().any(|p| p.protocol == protocol))
}

/// A message that gets no answer.
fn dropped() -> Reply {
    Reply {
        bytes: None,
        outcome: Outcome::Malformed,
        truncated: false,
    }
}

/// A header-only answer (the question could not be read, or is not answered).
fn error(metadata: Metadata, outcome: Outcome) -> Reply {
    let mut response = Message::new(metadata.id, MessageType::Response, metadata.op_code);
    response.metadata = metadata;
    Reply {
        bytes: response.to_vec().ok(),
        outcome,
        truncated: false,
    }
}

/// Encodes `response` within `size_max` bytes: whole if it fits; else without its additional
/// records (they are optional, RFC 2181 section 9); else its question alone with TC set, so
/// the client asks again over TCP.
fn encode(mut response: Message, outcome: Outcome, size_max: u16) -> Reply {
    let fits = |bytes: &Vec<u8>| bytes.len() <= usize::from(size_max);
    if let Some(bytes) = response.to_vec().ok().filter(fits) {
        return reply(bytes, outcome, false);
    }
    response.additionals.clear();
    if let Some(bytes) = response.to_vec().ok().filter(fits) {
        return reply(bytes, outcome, false);
    }
    response.answers.clear();
    response.authorities.clear();
    response.metadata.truncation = true;
    if let Some(bytes) = response.to_vec().ok().filter(fits) {
        return reply(bytes, outcome, true);
    }
    // Only a question too long for the transport gets here, and a question is at most 260
    // bytes on the wire: unreachable, but answered rather than dropped if it ever is.
    response.queries.clear();
    response.edns = None;
    response.metadata.truncation = false;
    response.metadata.response_code = ResponseCode::ServFail;
    Reply {
        bytes: response.to_vec().ok(),
        outcome: Outcome::ServFail,
        truncated: false,
    }
}

fn reply(bytes: Vec<u8>, outcome: Outcome, truncated: bool) -> Reply {
    Reply {
        bytes: Some(bytes),
        outcome,
        truncated,
    }
}
