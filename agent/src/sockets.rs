//! The socket a round probes through, for any protocol: one per source interface and address,
//! bound to both, shared by every target of that source.

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use meshdoctor_agent_common::Kind;
use meshdoctor_api::{PlannedTarget, Protocol};
use socket2::{Domain, Socket, Type};
use tokio::net::UdpSocket;

use crate::{
    icmp::{EchoSocket, echo_request, monotonic_ns},
    udp,
};

pub enum ProbeSocket {
    Icmp(EchoSocket),
    Udp(UdpSocket),
}

impl ProbeSocket {
    /// Opens the socket of `protocol` bound to `interface` and `src`. Needs CAP_NET_RAW for
    /// ICMP and for binding to a device.
    pub fn open(protocol: Protocol, interface: &str, src: IpAddr) -> io::Result<Self> {
        match protocol {
            Protocol::Icmp => EchoSocket::open(interface, src).map(Self::Icmp),
            Protocol::Udp => {
                let domain = match src {
                    IpAddr::V4(_) => Domain::IPV4,
                    IpAddr::V6(_) => Domain::IPV6,
                };
                let s = Socket::new(domain, Type::DGRAM, Some(socket2::Protocol::UDP))?;
                s.bind_device(Some(interface.as_bytes()))?;
                s.bind(&SocketAddr::new(src, 0).into())?;
                s.set_nonblocking(true)?;
                UdpSocket::from_std(s.into()).map(Self::Udp)
            }
        }
    }

    /// Sends probe `seq` (id `probe_id`) of target `t`.
    pub async fn send(&self, t: &PlannedTarget, seq: u16, probe_id: u64) -> io::Result<()> {
        match self {
            Self::Icmp(s) => {
                s.send(t.dst_addr, &echo_request(t.family, t.path, seq, probe_id))
                    .await
            }
            Self::Udp(s) => {
                let port = t.dst_port.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotConnected,
                        format!("{} runs no UDP probe responder", t.dst_node),
                    )
                })?;
                s.send_to(&udp::request(probe_id), (t.dst_addr, port))
                    .await
                    .map(|_| ())
            }
        }
    }

    /// Waits for the next reply to one of our probes; returns its probe id and the monotonic
    /// time it was read.
    pub async fn recv(&self) -> io::Result<(u64, u64)> {
        match self {
            Self::Icmp(s) => s.recv().await,
            Self::Udp(s) => {
                let mut buf = [0u8; 512];
                loop {
                    let n = match s.recv(&mut buf).await {
                        Ok(n) => n,
                        // The ICMP error of an earlier probe (port unreachable): that probe is
                        // lost, the socket is fine.
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                        Err(e) => return Err(e),
                    };
                    let t = monotonic_ns();
                    if let Some((id, Kind::Reply)) = udp::parse(&buf[..n]) {
                        return Ok((id, t));
                    }
                }
            }
        }
    }
}
