//! TCP and HTTP probes: one fresh connection per probe, from source port
//! `TCP_PROBE_PORT_BASE + seq`, to the peer agent's responder.
//!
//! A SYN carries no payload for a cookie, so the probe is named by its 4-tuple: both ends'
//! observers look the path up by (client address, server address, server port) and read the
//! sequence number from the client port. The SYN is the request, the SYN-ACK the reply, both
//! timestamped at every hook like an echo. A TCP probe succeeds when the connection is
//! established; an HTTP probe when a GET over it is answered `200`. Every probe closes with a
//! reset (`SO_LINGER` 0): no TIME_WAIT is left to block the same port in the next round, and
//! the server is not kept busy.
//!
//! The responder answers both on the agent's probe port: a connection that sends nothing is a
//! TCP probe and is dropped when the client resets it; one that sends a GET gets `200 ok`.

use std::{
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    sync::Arc,
    time::Duration,
};

use meshdoctor_agent_common::{IpFamily, TcpPath, TcpPathKey};
use meshdoctor_api::{PlannedTarget, Protocol, RoundPlan, TCP_PROBE_PORT_BASE};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::debug;

const _: () = assert!(TCP_PROBE_PORT_BASE == meshdoctor_agent_common::TCP_PORT_BASE);

/// SYN retransmissions before `connect` gives up: one, so that a lost SYN is retried once
/// (after the kernel's 1 s initial RTO) when the probe timeout allows, and a dead peer costs
/// a socket for seconds, not the default two minutes.
const SYN_RETRIES: libc::c_int = 1;

/// Largest HTTP response head (and request head, at the responder) read before giving up.
const MAX_HEAD: usize = 2048;

/// What the HTTP probe sends. `Host` is not checked by the responder.
const HTTP_REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nHost: meshdoctor\r\nUser-Agent: meshdoctor-agent\r\n\r\n";

/// What the responder answers a GET with.
pub(crate) const HTTP_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";

/// The TCP probe paths of a round as this agent's observers must know them: its own targets
/// probed over tcp or http (it is the client; in an icmp round, its Service targets) and the
/// paths toward it (it is the server, on `own_port`) in a tcp or http round.
pub fn round_paths(plan: &RoundPlan, own_port: Option<u16>) -> Vec<(TcpPathKey, TcpPath)> {
    let value = |path| TcpPath {
        round_tag: plan.round_tag,
        path,
    };
    let outgoing = plan
        .targets
        .iter()
        .filter(|t| plan.protocol_of(t).is_tcp())
        .filter_map(|t| {
            Some((
                path_key(t.src_addr, t.dst_addr, t.dst_port?)?,
                value(t.path),
            ))
        });
    let incoming = plan
        .incoming
        .iter()
        .filter(|_| plan.protocol.is_tcp())
        .filter_map(|p| Some((path_key(p.src_addr, p.dst_addr, own_port?)?, value(p.path))));
    outgoing.chain(incoming).collect()
}

/// The observers' key of the probes from `client` to `server:port`; `None` across families.
fn path_key(client: IpAddr, server: IpAddr, port: u16) -> Option<TcpPathKey> {
    let mut key = TcpPathKey {
        server_port: port,
        ..TcpPathKey::default()
    };
    match (client, server) {
        (IpAddr::V4(c), IpAddr::V4(s)) => {
            key.family = IpFamily::V4 as u8;
            key.client[..4].copy_from_slice(&c.octets());
            key.server[..4].copy_from_slice(&s.octets());
        }
        (IpAddr::V6(c), IpAddr::V6(s)) => {
            key.family = IpFamily::V6 as u8;
            key.client = c.octets();
            key.server = s.octets();
        }
        _ => return None,
    }
    Some(key)
}

/// Starts probe `seq` of `t`: the synchronous part (socket, bind to the interface and the
/// probe's source port, the non-blocking `connect` that emits the SYN). An error here means
/// the SYN was not sent (the port is taken, the network unreachable, the stack refused it).
pub fn connect(t: &PlannedTarget, seq: u16) -> io::Result<TcpStream> {
    let port = t.dst_port.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotConnected,
            format!("{} runs no probe responder", t.dst_node),
        )
    })?;
    let src_port = TCP_PROBE_PORT_BASE.checked_add(seq).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("probe {seq} is beyond the TCP probe ports"),
        )
    })?;
    let sock = Socket::new(
        Domain::for_address(SocketAddr::new(t.src_addr, 0)),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // Other paths from this address use the same source port toward other peers.
    sock.set_reuse_address(true)?;
    sock.bind_device(Some(t.src_interface.as_bytes()))?;
    sock.bind(&SockAddr::from(SocketAddr::new(t.src_addr, src_port)))?;
    sock.set_linger(Some(Duration::ZERO))?;
    sock.set_tcp_nodelay(true)?;
    set_syn_retries(&sock)?;
    sock.set_nonblocking(true)?;
    match sock.connect(&SockAddr::from(SocketAddr::new(t.dst_addr, port))) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    TcpStream::from_std(std::net::TcpStream::from(sock))
}

fn set_syn_retries(sock: &Socket) -> io::Result<()> {
    // SAFETY: valid fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&SYN_RETRIES as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Completes a probe started by [`connect`]: waits for the handshake, and for HTTP a 2xx or
/// 3xx response. `Err` is why it failed (the caller bounds the wait with the probe timeout).
pub async fn complete(protocol: Protocol, stream: TcpStream) -> Result<(), String> {
    stream.writable().await.map_err(|e| error_kind(&e))?;
    if let Some(e) = stream.take_error().map_err(|e| error_kind(&e))? {
        return Err(error_kind(&e));
    }
    // Writable with no error can still mean a failed connect on some kernels: ask the peer.
    stream.peer_addr().map_err(|e| error_kind(&e))?;
    if protocol == Protocol::Http {
        http_get(stream).await?;
    }
    Ok(())
}

async fn http_get(mut stream: TcpStream) -> Result<(), String> {
    stream
        .write_all(HTTP_REQUEST)
        .await
        .map_err(|e| error_kind(&e))?;
    let mut buf = [0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| error_kind(&e))?;
        if n == 0 {
            return Err("connection closed before the response".into());
        }
        len += n;
        match check_response(&buf[..len]) {
            Some(r) => return r,
            None if len == buf.len() => return Err("response head too long".into()),
            None => {}
        }
    }
}

/// Judges a response once its head and body are complete: `None` while more is needed.
fn check_response(bytes: &[u8]) -> Option<Result<(), String>> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..head_end]).ok();
    let Some(head) = head else {
        return Some(Err("malformed response".into()));
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .and_then(|l| l.get(2..5))
        .and_then(|c| c.parse::<u16>().ok());
    let Some(status) = status else {
        return Some(Err("malformed response".into()));
    };
    let content_length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if bytes.len() - head_end < content_length {
        return None;
    }
    // The agents' responder answers 200; a listed server may redirect.
    Some(if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP status {status}"))
    })
}

/// A short, stable name of a connection error for counting (`connection refused`), not the
/// full message with its errno.
fn error_kind(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connection refused".into(),
        Some(libc::ECONNRESET) => "connection reset".into(),
        Some(libc::ETIMEDOUT) => "connect timed out (SYN retries exhausted)".into(),
        Some(libc::EHOSTUNREACH) => "host unreachable".into(),
        Some(libc::ENETUNREACH) => "network unreachable".into(),
        _ => e.to_string(),
    }
}

/// Most connections the responder serves at once; more are closed at once. Probes close within
/// their timeout, so a mesh never gets near it; it bounds what a flood can cost.
const MAX_CONNECTIONS: usize = 1024;

/// Most connections one source address holds at once; more from it are closed at once. A
/// peer's probes need a handful (each closes within its timeout, and a peer probes at most a
/// few hundred times a second); a host holding connections open takes this many slots, not
/// all of them, so the other peers' probes are still answered.
const PER_SOURCE: usize = 64;

/// How long the responder waits for a request or for the client to close.
const RESPONDER_IDLE: Duration = Duration::from_secs(2);

/// The connections each source address holds; a [`SourceSlot`] gives its own back.
#[derive(Default)]
struct Sources(std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>);

/// One connection of a source, counted while it lives.
struct SourceSlot {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Sources {
    /// A slot for one more connection from `ip`, unless it holds [`PER_SOURCE`] already.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(ip).or_default();
        if *n >= PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut held = self.sources.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// A dual-stack listener on `port` of every address, for [`respond`].
pub fn responder_listener(port: u16) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::IPV6, Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_only_v6(false)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Serves TCP and HTTP probes until the listener fails.
pub async fn respond(listener: TcpListener) -> io::Error {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let sources = Arc::new(Sources::default());
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if is_transient(&e) => {
                debug!("probe responder accept: {e}");
                continue;
            }
            Err(e) => return e,
        };
        let Some(source) = sources.take(from.ip().to_canonical()) else {
            debug!(%from, "probe responder: {PER_SOURCE} connections from this address already");
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%from, "probe responder busy: connection closed");
            continue;
        };
        tokio::spawn(async move {
            let _slots = (slot, source);
            if let Err(e) = serve(stream).await {
                debug!(%from, "probe connection: {e}");
            }
        });
    }
}

/// Errors of one connection attempt that `accept` reports and that leave the listener fine.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// One connection: answer a GET, then wait for the client to close. One deadline covers the
/// whole request rather than each read, so a client sending a byte now and then holds a slot
/// no longer than an honest probe does, and cannot starve the probes of the others.
async fn serve(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; MAX_HEAD];
    let head = tokio::time::timeout(RESPONDER_IDLE, async {
        let mut len = 0;
        loop {
            let n = stream.read(&mut buf[len..]).await?;
            if n == 0 {
                // A TCP probe: connected, nothing to say.
                return Ok(false);
            }
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if len == buf.len() {
                return Ok(false);
            }
        }
    })
    .await;
    match head {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) | Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
    }
    if !buf.starts_with(b"GET ") {
        stream
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            .await?;
    } else {
        stream.write_all(HTTP_RESPONSE).await?;
    }
    // The client closes (with a reset): reading until then keeps TIME_WAIT on its side.
    let _ = tokio::time::timeout(RESPONDER_IDLE, stream.read(&mut buf)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that sends its request a byte at a time, each within the old per-read
    /// timeout, is cut off at the request's deadline, while it is still sending.
    #[tokio::test]
    async fn a_slow_client_is_cut_off_at_the_request_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(stream).await
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        let request = b"GET / HTTP/1.1\r\nHost: a-very-slow-client.example\r\n\r\n";
        let step = RESPONDER_IDLE / 4;
        let mut sent = 0;
        for byte in request {
            if client.write_all(&[*byte]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(step).await;
            let mut probe = [0u8; 1];
            // The server closed: a read ends (or fails) at once instead of waiting.
            let read = tokio::time::timeout(Duration::from_millis(1), client.read(&mut probe));
            if let Ok(Ok(0) | Err(_)) = read.await {
                break;
            }
        }
        assert!(
            sent < request.len() / 2,
            "the slow client sent {sent} of {} bytes before being cut off",
            request.len()
        );
    }

    /// One address holding connections open takes its share of the responder, not all of it:
    /// from another address a probe is still answered.
    #[tokio::test]
    async fn one_address_cannot_take_every_connection() {
        let listener = responder_listener(0).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(respond(listener));
        let v4 = SocketAddr::from(([127, 0, 0, 1], port));
        let mut held = Vec::new();
        for _ in 0..PER_SOURCE {
            held.push(TcpStream::connect(v4).await.unwrap());
        }
        // Let the responder take them all before the next one.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let answered = |addr: SocketAddr| async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf)).await;
            matches!(n, Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 200"))
        };
        assert!(
            !answered(v4).await,
            "a connection over the address's share was served"
        );
        assert!(answered(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await);
        drop(held);
        server.abort();
    }

    #[test]
    fn responses_are_judged_when_complete() {
        assert_eq!(check_response(b"HTTP/1.1 200 OK\r\nContent-Len"), None);
        assert_eq!(check_response(HTTP_RESPONSE), Some(Ok(())));
        assert_eq!(
            check_response(b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n"),
            Some(Ok(()))
        );
        assert_eq!(
            check_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok"),
            None
        );
        assert_eq!(
            check_response(b"HTTP/1.0 503 Busy\r\ncontent-length: 0\r\n\r\n"),
            Some(Err("HTTP status 503".into()))
        );
        for garbage in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 2\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert_eq!(
                check_response(garbage),
                Some(Err("malformed response".into())),
                "{garbage:?}"
            );
        }
    }
}
