//! `respond` against arbitrary bytes: it never panics, never answers a response, and never
//! writes more than the transport allows.

use proptest::prelude::*;

use super::*;
use crate::dns::answer::{Outcome, Transport, Zone, respond};

fn answers(bytes: &[u8], table: &ServiceTable, zone: &Zone) {
    for transport in [Transport::Udp, Transport::Tcp] {
        let reply = respond(bytes, table, zone, ServiceAnswer::ServiceAddress, transport);
        if let Some(out) = &reply.bytes {
            let size_max = match transport {
                Transport::Udp => usize::from(UDP_PAYLOAD_BYTES_MAX),
                Transport::Tcp => usize::from(u16::MAX),
            };
            assert!(
                out.len() <= size_max,
                "{} bytes over {transport:?}",
                out.len()
            );
            let answer = Message::from_vec(out).expect("our own answers decode");
            assert_eq!(answer.metadata.message_type, MessageType::Response);
        }
        if bytes.get(2).is_some_and(|flags| flags & 0x80 != 0) {
            assert!(reply.bytes.is_none(), "a response was answered");
            assert_eq!(reply.outcome, Outcome::Malformed);
        }
    }
}

/// A valid query for a name of the table, to mutate.
fn valid_query(rtype: RecordType) -> Vec<u8> {
    query("_http._tcp.web.svc.starling.", rtype, Some(1232))
        .to_vec()
        .expect("encode")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let zone = Zone::new().expect("zone");
        answers(&bytes, &table(&web_entries()), &zone);
    }

    #[test]
    fn mutated_queries_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        srv in any::<bool>(),
    ) {
        let zone = Zone::new().expect("zone");
        let mut bytes = valid_query(if srv { RecordType::SRV } else { RecordType::ANY });
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        bytes.truncate(cut.index(bytes.len() + 1).max(1));
        answers(&bytes, &table(&web_entries()), &zone);
    }
}
