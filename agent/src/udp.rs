//! UDP probes: a datagram whose payload is the cookie the eBPF observers match on (magic +
//! probe id) and a kind byte. The peer agent's responder echoes it with the kind set to reply,
//! so request and reply carry the same id and both are timestamped at every hook, like ICMP.
//!
//! UDP crosses what ICMP does not: port-based policy, conntrack and NAT, and a user-space
//! receiver, so its loss and stack time include the peer agent's socket and scheduling.

use std::{
    io,
    net::{Ipv6Addr, SocketAddr},
};

use meshdoctor_agent_common::{COOKIE_LEN, Kind, PROBE_MAGIC, UDP_KIND_OFFSET, put_nonce};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tracing::warn;

/// Probe payload length: the cookie, the kind, padding to 32 bytes like a small ping.
pub const PAYLOAD_LEN: usize = 32;

/// The payload of the request for `probe_id` from a socket with `nonce`.
pub fn request(probe_id: u64, nonce: u64) -> [u8; PAYLOAD_LEN] {
    let mut p = [0u8; PAYLOAD_LEN];
    p[..4].copy_from_slice(&PROBE_MAGIC.to_be_bytes());
    p[4..COOKIE_LEN].copy_from_slice(&probe_id.to_be_bytes());
    p[UDP_KIND_OFFSET] = Kind::Request as u8;
    put_nonce(&mut p, nonce);
    p
}

/// The probe id and kind of a probe datagram; `None` for anything else (short, foreign or
/// hostile bytes).
pub fn parse(payload: &[u8]) -> Option<(u64, Kind)> {
    if payload.len() < PAYLOAD_LEN || payload[..4] != PROBE_MAGIC.to_be_bytes() {
        return None;
    }
    let kind = match payload[UDP_KIND_OFFSET] {
        k if k == Kind::Request as u8 => Kind::Request,
        k if k == Kind::Reply as u8 => Kind::Reply,
        _ => return None,
    };
    let id = u64::from_be_bytes(payload[4..COOKIE_LEN].try_into().ok()?);
    Some((id, kind))
}

/// A dual-stack socket on `port` of every address, for [`respond`].
pub fn responder_socket(port: u16) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(false)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    UdpSocket::from_std(s.into())
}

/// Answers probe requests until the socket fails: each valid request goes back to its sender
/// as a reply of the same size. Anything else is ignored, so the responder cannot be used to
/// amplify traffic or answer foreign datagrams.
pub async fn respond(socket: UdpSocket) -> io::Error {
    let mut buf = [0u8; 512];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // An ICMP error for an earlier reply surfaces here on some kernels: not fatal.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return e,
        };
        let datagram = &mut buf[..n];
        if !matches!(parse(datagram), Some((_, Kind::Request))) {
            continue;
        }
        datagram[UDP_KIND_OFFSET] = Kind::Reply as u8;
        if let Err(e) = socket.send_to(datagram, from).await {
            warn!(%from, "UDP probe reply: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn payload_round_trip_and_rejects() {
        let p = request(0xdead_beef_0001_0002, 5);
        assert_eq!(parse(&p), Some((0xdead_beef_0001_0002, Kind::Request)));
        assert_eq!(parse(&p[..20]), None);
        let mut foreign = p;
        foreign[0] ^= 1;
        assert_eq!(parse(&foreign), None);
        let mut bad_kind = p;
        bad_kind[UDP_KIND_OFFSET] = 7;
        assert_eq!(parse(&bad_kind), None);
    }

    #[tokio::test]
    async fn responder_answers_probes_only_over_both_families() {
        let responder = responder_socket(0).unwrap();
        let port = responder.local_addr().unwrap().port();
        let task = tokio::spawn(respond(responder));
        for dst in [
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        ] {
            let bind: SocketAddr = if dst.is_ipv4() {
                "127.0.0.1:0".parse().unwrap()
            } else {
                "[::1]:0".parse().unwrap()
            };
            let client = UdpSocket::bind(bind).await.unwrap();
            client
                .send_to(b"not a probe at all, but long enough", dst)
                .await
                .unwrap();
            client.send_to(&request(42, 5), dst).await.unwrap();
            let mut buf = [0u8; 64];
            let (n, from) =
                tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf))
                    .await
                    .expect("a reply in time")
                    .unwrap();
            assert_eq!(from, dst);
            // The first datagram was ignored: the first reply is the probe's.
            assert_eq!(parse(&buf[..n]), Some((42, Kind::Reply)));
            assert_eq!(n, PAYLOAD_LEN);
            // The nonce comes back as it was sent.
            assert_eq!(meshdoctor_agent_common::nonce_of(&buf[..n]), Some(5));
        }
        task.abort();
    }
}
