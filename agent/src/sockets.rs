//! The socket a round probes through, for any protocol: one per source interface and address,
//! bound to both, shared by every target of that source (for TCP, a connection per probe
//! behind the same interface).

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use meshdoctor_agent_common::Kind;
use meshdoctor_api::{PlannedTarget, Protocol};
use socket2::{Domain, Socket, Type};
use tokio::{
    net::UdpSocket,
    sync::{Mutex, mpsc},
};

use crate::{
    icmp::{EchoSocket, echo_request, monotonic_ns},
    tcp, udp,
};

/// What became of a probe: its reply's monotonic receive time, or why it failed after it was
/// sent (a refused connection, an HTTP error status).
pub type Outcome = Result<u64, String>;

pub enum ProbeSocket {
    Icmp(EchoSocket),
    Udp(UdpSocket),
    /// TCP and HTTP: a connection per probe; outcomes come back through a channel.
    Tcp(TcpProbes),
}

/// The TCP side of [`ProbeSocket`]: each probe's connection runs in its own task, bounded by
/// the probe timeout, and reports its outcome here.
pub struct TcpProbes {
    protocol: Protocol,
    timeout: Duration,
    tx: mpsc::UnboundedSender<(u64, Outcome)>,
    rx: Mutex<mpsc::UnboundedReceiver<(u64, Outcome)>>,
}

impl ProbeSocket {
    /// Opens the socket of `protocol` bound to `interface` and `src`; a TCP probe waits at most
    /// `timeout` for its outcome. Needs CAP_NET_RAW for ICMP and for binding to a device.
    pub fn open(
        protocol: Protocol,
        interface: &str,
        src: IpAddr,
        timeout: Duration,
    ) -> io::Result<Self> {
        match protocol {
            Protocol::Icmp => EchoSocket::open(interface, src).map(Self::Icmp),
            Protocol::Tcp | Protocol::Http => {
                let (tx, rx) = mpsc::unbounded_channel();
                Ok(Self::Tcp(TcpProbes {
                    protocol,
                    timeout,
                    tx,
                    rx: Mutex::new(rx),
                }))
            }
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
                // The identifier is informational (replies are matched by the cookie): the
                // path's low bits.
                s.send(
                    t.dst_addr,
                    &echo_request(t.family, t.path as u16, seq, probe_id),
                )
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
            Self::Tcp(p) => {
                let stream = tcp::connect(t, seq)?;
                let (protocol, timeout, tx) = (p.protocol, p.timeout, p.tx.clone());
                tokio::spawn(async move {
                    let outcome = match tokio::time::timeout(
                        timeout,
                        tcp::complete(protocol, stream),
                    )
                    .await
                    {
                        Ok(Ok(())) => Ok(monotonic_ns()),
                        Ok(Err(e)) => Err(e),
                        // Lost, as an unanswered echo: no failure of its own.
                        Err(_) => return,
                    };
                    let _ = tx.send((probe_id, outcome));
                });
                Ok(())
            }
        }
    }

    /// Waits for the outcome of the next of our probes that has one: its probe id and the
    /// monotonic time its reply was read, or its failure.
    pub async fn recv(&self) -> io::Result<(u64, Outcome)> {
        match self {
            Self::Icmp(s) => s.recv().await.map(|(id, t)| (id, Ok(t))),
            Self::Tcp(p) => p.rx.lock().await.recv().await.ok_or_else(|| {
                io::Error::new(io::ErrorKind::BrokenPipe, "TCP probe channel closed")
            }),
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
                        return Ok((id, Ok(t)));
                    }
                }
            }
        }
    }
}
