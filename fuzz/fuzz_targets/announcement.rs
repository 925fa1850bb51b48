//! LAN discovery's announcements (the identify record's agent version any device on the LAN
//! can send) and the admission messages (JSON over the discovered channel). Parsing never
//! panics; what parses prints back to the same announcement; a member's decision about it is
//! total.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use starling_protocol::lan::{AdmitAnswer, AdmitOffer, Announcement, Role, classify};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<AdmitOffer>(data);
    let _ = serde_json::from_slice::<AdmitAnswer>(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(heard) = Announcement::parse(text) else {
        return;
    };
    let printed = heard.encode();
    match Announcement::parse(&printed) {
        Ok(again) => assert_eq!(again, heard, "round trip changed {printed:?}"),
        Err(e) => panic!("a printed announcement does not parse: {e}: {printed:?}"),
    }
    let me = Role::Member {
        cluster: "00112233445566ff".into(),
    };
    let _ = classify(&me, &heard, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)));
    let _ = classify(&Role::Pending, &heard, IpAddr::V4(Ipv4Addr::LOCALHOST));
});
