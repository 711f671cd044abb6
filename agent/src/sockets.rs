//! The socket a round probes through, for any protocol: one per source interface and address,
//! bound to both, shared by every target of that source (for TCP, a connection per probe
//! behind the same interface).

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use meshdoctor_agent_common::{Kind, nonce_of};
use meshdoctor_api::{PlannedTarget, Protocol};
use socket2::{Domain, Socket, Type};
use tokio::{
    net::UdpSocket,
    sync::{Mutex, mpsc},
};

use crate::{
    icmp::{EchoSocket, echo_request, monotonic_ns, random_nonce},
    tcp, udp,
};

/// What a probe socket read of one of its probes.
pub struct Reply {
    pub id: u64,
    pub outcome: Outcome,
    /// Where a reply came from; `None` for TCP and HTTP, whose connection was to the target.
    pub from: Option<IpAddr>,
    /// It carried the socket's nonce (TCP and HTTP: always): it answers a request this socket
    /// sent, not one a host forged from the predictable probe id.
    pub genuine: bool,
}

/// What became of a probe: its reply's monotonic receive time, or why it failed after it was
/// sent (a refused connection, an HTTP error status).
pub type Outcome = Result<u64, String>;

pub enum ProbeSocket {
    Icmp(EchoSocket),
    /// With the nonce its requests carry (see `NONCE_OFFSET`).
    Udp(UdpSocket, u64),
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
                UdpSocket::from_std(s.into()).map(|s| Self::Udp(s, random_nonce()))
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
                    &echo_request(t.family, t.path as u16, seq, probe_id, s.nonce()),
                )
                .await
            }
            Self::Udp(s, nonce) => {
                let port = t.dst_port.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotConnected,
                        format!("{} runs no UDP probe responder", t.dst_node),
                    )
                })?;
                s.send_to(&udp::request(probe_id, *nonce), (t.dst_addr, port))
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

    /// Waits for the outcome of the next of our probes that has one (a reply, or the failure
    /// of a TCP or HTTP probe), with what tells whether a reply is genuine.
    pub async fn recv(&self) -> io::Result<Reply> {
        match self {
            Self::Icmp(s) => s.recv().await.map(|r| Reply {
                id: r.id,
                outcome: Ok(r.at_ns),
                from: Some(r.from),
                genuine: r.genuine,
            }),
            Self::Tcp(p) => {
                let (id, outcome) = p.rx.lock().await.recv().await.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::BrokenPipe, "TCP probe channel closed")
                })?;
                Ok(Reply {
                    id,
                    outcome,
                    from: None,
                    genuine: true,
                })
            }
            Self::Udp(s, nonce) => {
                let mut buf = [0u8; 512];
                loop {
                    let (n, from) = match s.recv_from(&mut buf).await {
                        Ok(r) => r,
                        // The ICMP error of an earlier probe (port unreachable): that probe is
                        // lost, the socket is fine.
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                        Err(e) => return Err(e),
                    };
                    let t = monotonic_ns();
                    let payload = &buf[..n];
                    if let Some((id, Kind::Reply)) = udp::parse(payload) {
                        return Ok(Reply {
                            id,
                            outcome: Ok(t),
                            from: Some(from.ip()),
                            genuine: nonce_of(payload) == Some(*nonce),
                        });
                    }
                }
            }
        }
    }
}
