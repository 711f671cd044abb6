//! What the agent's raw and UDP sockets receive from the network: echo replies of both
//! families (IPv4 with its header) and UDP probe datagrams.
#![no_main]

use meshdoctor_agent::{icmp, udp};
use meshdoctor_api::Family;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = icmp::parse_echo_reply(Family::Ipv4, data);
    let _ = icmp::parse_echo_reply(Family::Ipv6, data);
    let _ = udp::parse(data);
});
