//! ICMP and ICMPv6 echo probes over raw sockets bound to one interface and source address.
//!
//! The probe's payload starts with the cookie the eBPF observers match on (magic + probe id),
//! and the peer's kernel echoes it back unchanged, so request and reply carry the same id.

use std::{
    io,
    mem::MaybeUninit,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
};

use meshdoctor_agent_common::{COOKIE_LEN, COOKIE_OFFSET, PROBE_MAGIC, nonce_of, put_nonce};
use meshdoctor_api::Family;
use pnet_packet::{
    Packet,
    icmp::{IcmpPacket, IcmpTypes, checksum, echo_request::MutableEchoRequestPacket},
    icmpv6::{Icmpv6Packet, Icmpv6Types},
    ipv4::Ipv4Packet,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{Interest, unix::AsyncFd};

/// Total ICMP payload: the cookie, padded to a round 32 bytes like a small ping.
const PAYLOAD_LEN: usize = 32 - COOKIE_OFFSET;

/// Builds an echo request carrying `probe_id` in its cookie, and the sending socket's
/// `nonce` after it.
pub fn echo_request(family: Family, ident: u16, seq: u16, probe_id: u64, nonce: u64) -> Vec<u8> {
    let mut payload = [0u8; PAYLOAD_LEN];
    payload[..4].copy_from_slice(&PROBE_MAGIC.to_be_bytes());
    payload[4..COOKIE_LEN].copy_from_slice(&probe_id.to_be_bytes());
    put_nonce(&mut payload, nonce);
    echo(family, ident, seq, &payload)
}

/// Builds an echo request with any payload after the 8-byte header (checksum filled for IPv4;
/// the kernel computes it for ICMPv6 raw sockets).
pub fn echo(family: Family, ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; COOKIE_OFFSET];
    buf[0] = match family {
        Family::Ipv4 => IcmpTypes::EchoRequest.0,
        Family::Ipv6 => Icmpv6Types::EchoRequest.0,
    };
    buf[4..6].copy_from_slice(&ident.to_be_bytes());
    buf[6..8].copy_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(payload);
    if family == Family::Ipv4
        && let Some(mut pkt) = MutableEchoRequestPacket::new(&mut buf)
    {
        let sum = checksum(&IcmpPacket::new(pkt.packet()).expect("buffer holds a header"));
        pkt.set_checksum(sum);
    }
    buf
}

/// Extracts the probe id and the nonce from a received datagram if it is one of our echo
/// replies.
///
/// `datagram` is what a raw socket returns: with the IPv4 header for IPv4, without one for
/// IPv6. Anything else (other ICMP, truncated or hostile bytes) gives `None`.
pub fn parse_echo_reply(family: Family, datagram: &[u8]) -> Option<(u64, u64)> {
    let icmp: &[u8] = match family {
        Family::Ipv4 => {
            let ip = Ipv4Packet::new(datagram)?;
            let hlen = usize::from(ip.get_header_length()) * 4;
            let icmp = datagram.get(hlen..)?;
            (IcmpPacket::new(icmp)?.get_icmp_type() == IcmpTypes::EchoReply).then_some(icmp)?
        }
        Family::Ipv6 => (Icmpv6Packet::new(datagram)?.get_icmpv6_type() == Icmpv6Types::EchoReply)
            .then_some(datagram)?,
    };
    let payload = icmp.get(COOKIE_OFFSET..)?;
    let cookie = payload.get(..COOKIE_LEN)?;
    let (magic, id) = cookie.split_at(4);
    if u32::from_be_bytes(magic.try_into().ok()?) != PROBE_MAGIC {
        return None;
    }
    Some((u64::from_be_bytes(id.try_into().ok()?), nonce_of(payload)?))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` uses, so user-space and kernel
/// timestamps are comparable.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A raw echo socket pinned to one interface and source address, so probes leave (and replies
/// come back) on the interface the plan names, not wherever routing would send them.
pub struct EchoSocket {
    fd: AsyncFd<Socket>,
    family: Family,
    /// Sent in every request, expected in every reply (see `NONCE_OFFSET`).
    nonce: u64,
}

impl EchoSocket {
    pub fn open(interface: &str, src: IpAddr) -> io::Result<Self> {
        let family = Family::of(&src);
        let (domain, proto) = match family {
            Family::Ipv4 => (Domain::IPV4, Protocol::ICMPV4),
            Family::Ipv6 => (Domain::IPV6, Protocol::ICMPV6),
        };
        let sock = Socket::new(domain, Type::RAW, Some(proto))?;
        sock.bind_device(Some(interface.as_bytes()))?;
        sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
        sock.set_nonblocking(true)?;
        if family == Family::Ipv6 {
            only_echo_replies_v6(&sock)?;
        }
        // SAFETY: the socket owns its fd and keeps it open until the AsyncFd drops it.
        let fd = unsafe {
            AsyncFd::register_with_interest(sock, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(io::Error::from)?;
        Ok(Self {
            fd,
            family,
            nonce: random_nonce(),
        })
    }

    /// The nonce its requests carry (see `NONCE_OFFSET`).
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// Sends one probe.
    pub async fn send(&self, dst: IpAddr, packet: &[u8]) -> io::Result<()> {
        let addr = SockAddr::from(SocketAddr::new(dst, 0));
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|s| s.get_ref().send_to(packet, &addr)) {
                Ok(res) => return res.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits for the next echo reply with one of our cookies.
    pub async fn recv(&self) -> io::Result<EchoReply> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard.try_io(|s| s.get_ref().recv_from(&mut buf));
            let t = monotonic_ns();
            match res {
                Ok(Ok((n, from))) => {
                    // SAFETY: recv_from initialised the first n bytes.
                    let data = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
                    let (Some((id, nonce)), Some(from)) =
                        (parse_echo_reply(self.family, data), from.as_socket())
                    else {
                        continue;
                    };
                    return Ok(EchoReply {
                        id,
                        from: from.ip(),
                        genuine: nonce == self.nonce,
                        at_ns: t,
                    });
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// An echo reply with one of our cookies, as read.
pub struct EchoReply {
    pub id: u64,
    /// The address it came from.
    pub from: IpAddr,
    /// It carried the socket's nonce: it answers a request the socket sent.
    pub genuine: bool,
    /// When it was read (monotonic).
    pub at_ns: u64,
}

/// A nonce for a probe socket (see `NONCE_OFFSET`): 64 bits from the standard library's
/// randomly keyed SipHash, which the OS seeds; unpredictable to anyone off this host.
pub fn random_nonce() -> u64 {
    use std::hash::BuildHasher as _;
    std::collections::hash_map::RandomState::new().hash_one(monotonic_ns())
}

/// Raw ICMPv6 sockets see all ICMPv6 (neighbour discovery included); let the kernel pass only
/// echo replies (RFC 3542 ICMP6_FILTER).
fn only_echo_replies_v6(sock: &Socket) -> io::Result<()> {
    const ICMP6_FILTER: libc::c_int = 1;
    let mut filter = [u32::MAX; 8]; // a set bit blocks the type
    let t = usize::from(Icmpv6Types::EchoReply.0);
    filter[t / 32] &= !(1 << (t % 32));
    // SAFETY: the option value is a 32-byte icmp6_filter, as the kernel expects.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_ICMPV6,
            ICMP6_FILTER,
            filter.as_ptr().cast(),
            std::mem::size_of_val(&filter) as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_reply(mut req: Vec<u8>, family: Family) -> Vec<u8> {
        req[0] = match family {
            Family::Ipv4 => 0,
            Family::Ipv6 => 129,
        };
        req
    }

    #[test]
    fn request_carries_cookie_and_valid_checksum() {
        let pkt = echo_request(Family::Ipv4, 7, 9, 0x1122_3344_5566_7788, 0xabcd);
        assert_eq!(pkt.len(), 32);
        assert_eq!(&pkt[8..12], b"MDPB");
        assert_eq!(&pkt[12..20], &0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(&pkt[21..29], &0xabcdu64.to_be_bytes());
        assert_eq!(&pkt[4..8], &[0, 7, 0, 9]);
        // A packet with a correct checksum sums to zero (one's complement).
        let sum = checksum(&IcmpPacket::new(&pkt).unwrap());
        assert_eq!(sum, u16::from_be_bytes([pkt[2], pkt[3]]));
    }

    #[test]
    fn parses_v4_reply_after_ip_header_and_v6_without() {
        let icmp = as_reply(echo_request(Family::Ipv4, 1, 2, 42, 7), Family::Ipv4);
        let mut dgram = vec![
            0x45, 0, 0, 52, 0, 0, 0, 0, 64, 1, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2,
        ];
        dgram.extend_from_slice(&icmp);
        assert_eq!(parse_echo_reply(Family::Ipv4, &dgram), Some((42, 7)));
        let v6 = as_reply(echo_request(Family::Ipv6, 1, 2, 43, 8), Family::Ipv6);
        assert_eq!(parse_echo_reply(Family::Ipv6, &v6), Some((43, 8)));
    }

    #[test]
    fn rejects_requests_foreign_and_hostile_bytes() {
        let req = echo_request(Family::Ipv6, 1, 2, 43, 9);
        assert_eq!(parse_echo_reply(Family::Ipv6, &req), None);
        let mut foreign = as_reply(req, Family::Ipv6);
        foreign[8] ^= 0xff;
        assert_eq!(parse_echo_reply(Family::Ipv6, &foreign), None);
        for len in 0..40 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 0x45) as u8).collect();
            assert_eq!(parse_echo_reply(Family::Ipv4, &junk), None);
            assert_eq!(parse_echo_reply(Family::Ipv6, &junk), None);
        }
        // IHL pointing past the end.
        assert_eq!(parse_echo_reply(Family::Ipv4, &[0x4f; 20]), None);
    }
}
