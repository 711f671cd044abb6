//! DNS requests (NetDns): one question, asked over UDP, TCP or DNS over TLS, judged by its rcode.
//!
//! [`DnsRequester`] is a [`Requester`] for the load runner. It builds its query once with
//! hickory-proto (recursion desired, EDNS0 with a 1232-byte UDP payload) and only patches the
//! message id for each request; replies are parsed with [`hickory_proto::op::Message`].
//!
//! Transports, on tokio sockets directly:
//!
//! - **UDP**: a small pool of connected UDP sockets (the kernel drops datagrams from any other
//!   source). Each in-flight query holds a message id unique on its socket until it completes or
//!   is abandoned (the runner's timeout drops it); ids are handed out sequentially, so an id
//!   comes back only after 65536 other queries on that socket, long after a late reply to its
//!   previous owner could arrive. One receiver task per socket dispatches every reply to the
//!   waiting query by id, after checking that it is a response whose question is the query's
//!   (names compared case-insensitively). Replies too short for a header, that are not
//!   responses, whose id nobody waits for (late replies after a timeout, strays) or whose
//!   question differs are counted in [`DnsCounters`] and ignored: the query goes on waiting for
//!   its real reply.
//! - **TCP**: a few persistent connections with 2-byte length framing and pipelining: many
//!   queries outstanding on one connection, matched by id on that connection. A writer task
//!   batches queued queries into one write. A connection that fails or is closed by the server
//!   fails its outstanding queries and is replaced by the next request. Connecting runs in its
//!   own task (bounded by [`CONNECT_TIMEOUT`]), so a per-request timeout shorter than a TLS
//!   handshake does not keep the connection from ever coming up.
//! - **TCP-TLS** (DNS over TLS): the same over rustls, verifying the server's certificate and
//!   name against the given CA, or the webpki roots when none is given. Verification is always
//!   on (kdoctor skips it).
//!
//! Judging a reply: the rcode (extended with EDNS) names the [`Outcome::Reply`] code
//! (`"NOERROR"`, `"NXDOMAIN"`, ...) and the request succeeds when it is one of the target's
//! `success_rcodes`, by default NOERROR only (kdoctor counts NXDOMAIN as success: a defect).
//! A reply that matched its query but does not parse as a DNS message is an
//! [`Outcome::Error`] of kind `protocol`.
//!
//! Truncated UDP replies (TC bit): the server answered, and its rcode is authoritative even when
//! the records did not fit, so the reply is judged by its rcode like any other and counted in
//! [`DnsCounters::truncated`]; it is not retried over TCP, which would mix another transport's
//! latency into the round. A truncated reply whose records do not parse is still judged by the
//! rcode in its header.
//!
//! Error kinds: `connect` (TCP connect failed or timed out), `tls` (handshake or certificate
//! verification failed), `refused` (ICMP port unreachable on UDP: every query outstanding on
//! that socket fails, since the ICMP error does not say which one it was for), `closed` (the
//! server closed the connection with the query outstanding), `io` (any other socket error),
//! `protocol` (unparseable reply), `busy` (all 65536 ids of a socket or connection in use).
//! Timeouts are the runner's.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::{Outcome, Requester};

/// How long a TCP connect plus TLS handshake may take before every query waiting for it fails
/// with `connect` (or `tls`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// EDNS0 UDP payload size advertised in queries (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;

/// Default number of UDP sockets per target.
pub const DEFAULT_UDP_SOCKETS: usize = 4;
/// Default number of TCP (or TLS) connections per target.
pub const DEFAULT_STREAM_CONNECTIONS: usize = 2;

/// What to ask, where and how, and which rcodes count as success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTarget {
    pub server: SocketAddr,
    pub transport: Transport,
    /// Name to resolve; made fully qualified (kdoctor's `request.domain`).
    pub domain: String,
    pub record: RecordType,
    /// Rcodes counted as success; [`DnsTarget::new`] sets `[NOERROR]`.
    pub success_rcodes: Vec<Rcode>,
}

impl DnsTarget {
    /// A target whose only successful rcode is NOERROR.
    pub fn new(
        server: SocketAddr,
        transport: Transport,
        domain: impl Into<String>,
        record: RecordType,
    ) -> Self {
        Self {
            server,
            transport,
            domain: domain.into(),
            record,
            success_rcodes: vec![Rcode::NOERROR],
        }
    }
}

/// DNS transport (kdoctor's `request.protocol`: `udp`, `tcp`, `tcp-tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    /// DNS over TLS. `server_name` is the name (or IP address) the server's certificate must
    /// carry; `ca_pem` holds the trusted CA certificates in PEM, the webpki roots when `None`.
    TcpTls {
        server_name: String,
        ca_pem: Option<Vec<u8>>,
    },
}

impl Transport {
    /// The kdoctor name: `udp`, `tcp` or `tcp-tls`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::TcpTls { .. } => "tcp-tls",
        }
    }
}

/// The record type asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    A,
    Aaaa,
}

impl RecordType {
    /// kdoctor's rule: an IPv4 server is asked for `A`, an IPv6 server for `AAAA`.
    pub fn for_server(server: &SocketAddr) -> Self {
        match server.ip().to_canonical() {
            IpAddr::V4(_) => Self::A,
            IpAddr::V6(_) => Self::Aaaa,
        }
    }

    fn hickory(self) -> hickory_proto::rr::RecordType {
        match self {
            Self::A => hickory_proto::rr::RecordType::A,
            Self::Aaaa => hickory_proto::rr::RecordType::AAAA,
        }
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::A => "A",
            Self::Aaaa => "AAAA",
        })
    }
}

/// A DNS response code (12 bits with EDNS), named by its IANA mnemonic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rcode(pub u16);

const RCODE_NAMES: [(u16, &str); 21] = [
    (0, "NOERROR"),
    (1, "FORMERR"),
    (2, "SERVFAIL"),
    (3, "NXDOMAIN"),
    (4, "NOTIMP"),
    (5, "REFUSED"),
    (6, "YXDOMAIN"),
    (7, "YXRRSET"),
    (8, "NXRRSET"),
    (9, "NOTAUTH"),
    (10, "NOTZONE"),
    (11, "DSOTYPENI"),
    (16, "BADVERS"),
    (17, "BADKEY"),
    (18, "BADTIME"),
    (19, "BADMODE"),
    (20, "BADNAME"),
    (21, "BADALG"),
    (22, "BADTRUNC"),
    (23, "BADCOOKIE"),
    // Alias: 16 is BADSIG in TSIG context; parsed, never printed.
    (16, "BADSIG"),
];

impl Rcode {
    pub const NOERROR: Self = Self(0);
    pub const FORMERR: Self = Self(1);
    pub const SERVFAIL: Self = Self(2);
    pub const NXDOMAIN: Self = Self(3);
    pub const NOTIMP: Self = Self(4);
    pub const REFUSED: Self = Self(5);

    /// The mnemonic (`NOERROR`, `NXDOMAIN`, ...), `RCODE<n>` for unassigned values.
    pub fn name(self) -> String {
        match RCODE_NAMES.iter().find(|(code, _)| *code == self.0) {
            Some((_, name)) => (*name).to_string(),
            None => format!("RCODE{}", self.0),
        }
    }
}

impl fmt::Display for Rcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Parses a mnemonic (any case), `RCODE<n>` or a plain number up to 4095.
impl FromStr for Rcode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        if let Some((code, _)) = RCODE_NAMES.iter().find(|(_, name)| *name == upper) {
            return Ok(Self(*code));
        }
        let digits = upper.strip_prefix("RCODE").unwrap_or(&upper);
        match digits.parse::<u16>() {
            Ok(code) if code <= 0x0fff => Ok(Self(code)),
            _ => Err(format!("unknown DNS rcode {s:?}")),
        }
    }
}

/// Invalid [`DnsTarget`]: the message names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsTargetError {
    #[error("server: port 0")]
    ServerPort,
    #[error("domain {domain:?}: {reason}")]
    Domain { domain: String, reason: String },
    #[error("success_rcodes: empty, no reply could succeed")]
    NoSuccessRcodes,
    #[error("transport.server_name {name:?}: {reason}")]
    ServerName { name: String, reason: String },
    #[error("transport.ca_pem: {0}")]
    CaPem(String),
    #[error("transport: {0}")]
    Tls(String),
}

/// A reply matched to its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsReply {
    pub rcode: Rcode,
    /// The rcode is one of the target's success rcodes.
    pub success: bool,
    /// A and AAAA addresses in the answer section, in order.
    pub answers: Vec<IpAddr>,
    /// Number of records in the answer section (CNAMEs included).
    pub answer_count: usize,
    /// The TC bit was set (UDP only).
    pub truncated: bool,
    /// Size of the DNS message (without the TCP length prefix).
    pub bytes: usize,
}

/// No usable reply; `kind` is one of the labels listed in the module docs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct DnsError {
    pub kind: &'static str,
    pub detail: String,
}

impl DnsError {
    fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    fn io(kind: &'static str, err: &io::Error) -> Self {
        Self::new(kind, err.to_string())
    }
}

/// What the receivers saw besides the replies they delivered. Monotonic over the requester's
/// life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsCounters {
    /// Replies whose id no query was waiting for (late replies after a timeout, strays).
    pub unmatched: u64,
    /// Replies with a waiting id but another question.
    pub wrong_question: u64,
    /// Datagrams or frames too short or not responses, ignored.
    pub malformed: u64,
    /// Delivered replies with the TC bit.
    pub truncated: u64,
    /// Connections (TCP or TLS) opened.
    pub connects: u64,
}

#[derive(Default)]
struct Counters {
    unmatched: AtomicU64,
    wrong_question: AtomicU64,
    malformed: AtomicU64,
    truncated: AtomicU64,
    connects: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DnsCounters {
        DnsCounters {
            unmatched: self.unmatched.load(Ordering::Relaxed),
            wrong_question: self.wrong_question.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            truncated: self.truncated.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
        }
    }
}

/// A query's wire form with id 0, built once, and the range of its question section.
#[derive(Debug, Clone)]
struct Question {
    wire: Arc<[u8]>,
    question_end: usize,
}

const HEADER_LEN: usize = 12;

impl Question {
    fn build(name: &Name, record: RecordType) -> Result<Self, String> {
        let mut message = Message::new(0, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(name.clone(), record.hickory()));
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        message.set_edns(edns);
        let wire = message.to_vec().map_err(|e| e.to_string())?;
        let question_end = question_end(&wire).ok_or("query encodes without a question")?;
        Ok(Self {
            wire: wire.into(),
            question_end,
        })
    }

    fn with_id(&self, id: u16, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.wire);
        let start = out.len() - self.wire.len();
        out[start..start + 2].copy_from_slice(&id.to_be_bytes());
    }
}

/// End of the first question of a message (name, type, class) if it has exactly one and it is
/// written without compression (as a question's name always is: nothing precedes it).
fn question_end(msg: &[u8]) -> Option<usize> {
    if msg.len() < HEADER_LEN || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let mut at = HEADER_LEN;
    loop {
        let len = *msg.get(at)? as usize;
        if len == 0 {
            at += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        at += 1 + len;
    }
    let end = at + 4;
    (end <= msg.len()).then_some(end)
}

/// What a receiver hands to the waiting query.
type Delivery = Result<Received, DnsError>;

#[derive(Debug)]
struct Received {
    /// `None` for a truncated reply whose records do not parse.
    message: Option<Message>,
    rcode: Rcode,
    truncated: bool,
    bytes: usize,
}

struct Waiter {
    question: Arc<[u8]>,
    question_end: usize,
    tx: oneshot::Sender<Delivery>,
}

#[derive(Default)]
struct PendingState {
    waiters: HashMap<u16, Waiter>,
    next_id: u16,
    /// Set when a connection is gone: no more queries are registered on it.
    closed: Option<DnsError>,
}

/// Outstanding queries of one socket or connection, by id.
#[derive(Default)]
struct Pending {
    state: Mutex<PendingState>,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, PendingState> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a free id for `question`; the returned guard frees it when dropped.
    fn register(
        &self,
        question: &Question,
    ) -> Result<(u16, oneshot::Receiver<Delivery>, IdGuard<'_>), DnsError> {
        let mut state = self.lock();
        if let Some(err) = &state.closed {
            return Err(err.clone());
        }
        if state.waiters.len() > usize::from(u16::MAX) {
            return Err(DnsError::new("busy", "all 65536 message ids are in use"));
        }
        let mut id = state.next_id;
        while state.waiters.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        state.next_id = id.wrapping_add(1);
        let (tx, rx) = oneshot::channel();
        state.waiters.insert(
            id,
            Waiter {
                question: question.wire.clone(),
                question_end: question.question_end,
                tx,
            },
        );
        Ok((id, rx, IdGuard { pending: self, id }))
    }

    /// Hands a reply to its query, or counts why it cannot.
    fn dispatch(&self, msg: &[u8], counters: &Counters) {
        // Header: id, QR bit (response), question count 1.
        if msg.len() < HEADER_LEN || msg[2] & 0x80 == 0 {
            Counters::bump(&counters.malformed);
            return;
        }
        let id = u16::from_be_bytes([msg[0], msg[1]]);
        let waiter = {
            let mut state = self.lock();
            let Some(waiter) = state.waiters.get(&id) else {
                drop(state);
                Counters::bump(&counters.unmatched);
                return;
            };
            let asked = &waiter.question[HEADER_LEN..waiter.question_end];
            let same = question_end(msg)
                .is_some_and(|end| msg[HEADER_LEN..end].eq_ignore_ascii_case(asked));
            if !same {
                drop(state);
                Counters::bump(&counters.wrong_question);
                return;
            }
            state.waiters.remove(&id).expect("present")
        };
        let truncated = msg[2] & 0x02 != 0;
        let header_rcode = Rcode(u16::from(msg[3] & 0x0f));
        let delivery = match Message::from_vec(msg) {
            Ok(message) => Ok(Received {
                rcode: Rcode(u16::from(message.metadata.response_code)),
                message: Some(message),
                truncated,
                bytes: msg.len(),
            }),
            Err(_) if truncated => Ok(Received {
                message: None,
                rcode: header_rcode,
                truncated,
                bytes: msg.len(),
            }),
            Err(e) => Err(DnsError::new("protocol", format!("unparseable reply: {e}"))),
        };
        if truncated {
            Counters::bump(&counters.truncated);
        }
        // The query may have been abandoned meanwhile: nothing to do then.
        let _ = waiter.tx.send(delivery);
    }

    /// Fails every outstanding query; `close` also refuses new ones.
    fn fail_all(&self, err: DnsError, close: bool) {
        let waiters: Vec<Waiter> = {
            let mut state = self.lock();
            if close && state.closed.is_none() {
                state.closed = Some(err.clone());
            }
            state.waiters.drain().map(|(_, w)| w).collect()
        };
        for waiter in waiters {
            let _ = waiter.tx.send(Err(err.clone()));
        }
    }

    fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }
}

/// Frees a query's id when the query ends, however it ends (reply, error, or dropped by the
/// runner's timeout).
struct IdGuard<'a> {
    pending: &'a Pending,
    id: u16,
}

impl Drop for IdGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().waiters.remove(&self.id);
    }
}

async fn wait(rx: oneshot::Receiver<Delivery>) -> Delivery {
    rx.await
        .unwrap_or_else(|_| Err(DnsError::new("io", "receiver task ended")))
}

// ---------------------------------------------------------------------------------------------
// UDP

struct UdpSlot {
    socket: tokio::net::UdpSocket,
    pending: Pending,
}

struct UdpPool {
    slots: Vec<Arc<UdpSlot>>,
    receivers: Vec<AbortHandle>,
}

impl Drop for UdpPool {
    fn drop(&mut self) {
        for receiver in &self.receivers {
            receiver.abort();
        }
    }
}

impl UdpPool {
    /// Binds and connects the sockets and starts their receivers (inside a tokio runtime).
    fn open(server: SocketAddr, size: usize, counters: &Arc<Counters>) -> io::Result<Self> {
        let mut slots = Vec::with_capacity(size);
        let mut receivers = Vec::with_capacity(size);
        for _ in 0..size {
            let domain = socket2::Domain::for_address(server);
            let socket =
                socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
            // Room for bursts of replies; the kernel caps it at net.core.rmem_max.
            let _ = socket.set_recv_buffer_size(4 << 20);
            socket.set_nonblocking(true)?;
            socket.connect(&server.into())?;
            let socket = tokio::net::UdpSocket::from_std(socket.into())?;
            let slot = Arc::new(UdpSlot {
                socket,
                pending: Pending::default(),
            });
            let task = tokio::spawn(udp_receive(slot.clone(), counters.clone()));
            receivers.push(task.abort_handle());
            slots.push(slot);
        }
        Ok(Self { slots, receivers })
    }
}

async fn udp_receive(slot: Arc<UdpSlot>, counters: Arc<Counters>) {
    let mut buf = vec![0u8; 65535];
    loop {
        match slot.socket.recv(&mut buf).await {
            Ok(len) => slot.pending.dispatch(&buf[..len], &counters),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                slot.pending.fail_all(DnsError::io("refused", &e), false);
            }
            Err(e) => {
                slot.pending.fail_all(DnsError::io("io", &e), false);
                // Do not spin on a persistent error.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn udp_query(slot: &UdpSlot, question: &Question) -> Delivery {
    let (id, rx, _guard) = slot.pending.register(question)?;
    let mut buf = Vec::with_capacity(question.wire.len());
    question.with_id(id, &mut buf);
    if let Err(e) = slot.socket.send(&buf).await {
        let kind = if e.kind() == io::ErrorKind::ConnectionRefused {
            "refused"
        } else {
            "io"
        };
        return Err(DnsError::io(kind, &e));
    }
    wait(rx).await
}

// ---------------------------------------------------------------------------------------------
// TCP and TLS

/// One live (or just failed) TCP or TLS connection.
struct Conn {
    pending: Pending,
    /// Framed queries (length prefix included) for the writer task.
    tx: mpsc::UnboundedSender<Vec<u8>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|e| e.into_inner());
        for task in tasks.iter() {
            task.abort();
        }
    }
}

type ConnectResult = Option<Result<Arc<Conn>, DnsError>>;

enum SlotState {
    Empty,
    Connecting(watch::Receiver<ConnectResult>),
    Up(Arc<Conn>),
}

struct StreamSlot {
    state: Mutex<SlotState>,
}

#[derive(Clone)]
struct StreamConfig {
    server: SocketAddr,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    counters: Arc<Counters>,
}

impl StreamSlot {
    /// The slot's live connection, connecting (once, for every waiter) when there is none.
    async fn conn(self: &Arc<Self>, config: &StreamConfig) -> Result<Arc<Conn>, DnsError> {
        let mut rx = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match &*state {
                SlotState::Up(conn) if !conn.pending.is_closed() => return Ok(conn.clone()),
                SlotState::Connecting(rx) => rx.clone(),
                SlotState::Up(_) | SlotState::Empty => {
                    let (tx, rx) = watch::channel(None);
                    *state = SlotState::Connecting(rx.clone());
                    let slot = self.clone();
                    let config = config.clone();
                    tokio::spawn(async move {
                        let result =
                            match tokio::time::timeout(CONNECT_TIMEOUT, connect(&config)).await {
                                Ok(result) => result,
                                Err(_) => Err(DnsError::new(
                                    "connect",
                                    format!("no connection within {CONNECT_TIMEOUT:?}"),
                                )),
                            };
                        {
                            let mut state = slot.state.lock().unwrap_or_else(|e| e.into_inner());
                            *state = match &result {
                                Ok(conn) => SlotState::Up(conn.clone()),
                                Err(_) => SlotState::Empty,
                            };
                        }
                        let _ = tx.send(Some(result));
                    });
                    rx
                }
            }
        };
        let result = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| DnsError::new("connect", "connect task ended"))?;
        result.clone().expect("waited for Some")
    }
}

async fn connect(config: &StreamConfig) -> Result<Arc<Conn>, DnsError> {
    let tcp = tokio::net::TcpStream::connect(config.server)
        .await
        .map_err(|e| DnsError::io("connect", &e))?;
    let _ = tcp.set_nodelay(true);
    Counters::bump(&config.counters.connects);
    match &config.tls {
        None => Ok(start_conn(tcp, &config.counters)),
        Some((connector, name)) => {
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| DnsError::io("tls", &e))?;
            Ok(start_conn(tls, &config.counters))
        }
    }
}

fn start_conn<S>(stream: S, counters: &Arc<Counters>) -> Arc<Conn>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (reader, writer) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let conn = Arc::new(Conn {
        pending: Pending::default(),
        tx,
        tasks: Mutex::new(Vec::new()),
    });
    // The tasks hold a weak reference: the connection goes away with its slot and requests.
    let read = tokio::spawn(stream_read(reader, Arc::downgrade(&conn), counters.clone()));
    let write = tokio::spawn(stream_write(writer, rx, Arc::downgrade(&conn)));
    conn.tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend([read.abort_handle(), write.abort_handle()]);
    conn
}

async fn stream_read<R>(mut reader: R, conn: std::sync::Weak<Conn>, counters: Arc<Counters>)
where
    R: AsyncRead + Unpin,
{
    let mut reader = tokio::io::BufReader::with_capacity(64 << 10, &mut reader);
    let mut buf = vec![0u8; 65535];
    let err = loop {
        let len = match reader.read_u16().await {
            Ok(len) => usize::from(len),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                break DnsError::new("closed", "server closed the connection");
            }
            Err(e) => break DnsError::io("io", &e),
        };
        if let Err(e) = reader.read_exact(&mut buf[..len]).await {
            break DnsError::io("io", &e);
        }
        let Some(conn) = conn.upgrade() else { return };
        conn.pending.dispatch(&buf[..len], &counters);
    };
    if let Some(conn) = conn.upgrade() {
        conn.pending.fail_all(err, true);
    }
}

async fn stream_write<W>(
    mut writer: W,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    conn: std::sync::Weak<Conn>,
) where
    W: AsyncWrite + Unpin,
{
    let mut batch = Vec::with_capacity(16 << 10);
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < (64 << 10) {
            match rx.try_recv() {
                Ok(next) => batch.extend_from_slice(&next),
                Err(_) => break,
            }
        }
        let written = async {
            writer.write_all(&batch).await?;
            writer.flush().await
        };
        if let Err(e) = written.await {
            if let Some(conn) = conn.upgrade() {
                conn.pending.fail_all(DnsError::io("io", &e), true);
            }
            return;
        }
    }
}

async fn stream_query(conn: &Conn, question: &Question) -> Delivery {
    let (id, rx, _guard) = conn.pending.register(question)?;
    let len = u16::try_from(question.wire.len()).expect("a query is short");
    let mut frame = Vec::with_capacity(2 + question.wire.len());
    frame.extend_from_slice(&len.to_be_bytes());
    question.with_id(id, &mut frame);
    if conn.tx.send(frame).is_err() {
        return Err(DnsError::new("io", "connection writer ended"));
    }
    wait(rx).await
}

// ---------------------------------------------------------------------------------------------
// The requester

enum Pool {
    Udp {
        size: usize,
        sockets: OnceLock<UdpPool>,
    },
    Stream {
        slots: Vec<Arc<StreamSlot>>,
        config: StreamConfig,
    },
}

/// Sends the target's query and judges the reply; see the module docs.
pub struct DnsRequester {
    server: SocketAddr,
    transport: &'static str,
    name: Name,
    record: RecordType,
    question: Question,
    success: Vec<Rcode>,
    pool: Pool,
    next: AtomicUsize,
    counters: Arc<Counters>,
}

impl fmt::Debug for DnsRequester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsRequester")
            .field("server", &self.server)
            .field("transport", &self.transport)
            .field("name", &self.name.to_string())
            .field("record", &self.record)
            .field("success", &self.success)
            .finish_non_exhaustive()
    }
}

/// Parses a domain into a fully qualified name; `field` names it in errors.
fn parse_domain(domain: &str) -> Result<Name, String> {
    let trimmed = domain.trim();
    if trimmed.is_empty() {
        return Err("empty".into());
    }
    if let Some(c) = trimmed
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("contains {c:?}"));
    }
    if trimmed.contains("..") || (trimmed.starts_with('.') && trimmed != ".") {
        return Err("empty label".into());
    }
    let mut name = Name::from_utf8(trimmed).map_err(|e| e.to_string())?;
    name.set_fqdn(true);
    Ok(name)
}

fn tls_connector(
    server_name: &str,
    ca_pem: Option<&[u8]>,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), DnsTargetError> {
    let name =
        ServerName::try_from(server_name.to_string()).map_err(|e| DnsTargetError::ServerName {
            name: server_name.to_string(),
            reason: e.to_string(),
        })?;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            let mut found = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| DnsTargetError::CaPem(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| DnsTargetError::CaPem(e.to_string()))?;
                found += 1;
            }
            if found == 0 {
                return Err(DnsTargetError::CaPem("no certificate in PEM".into()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    // An explicit provider: the process default is ambiguous when several are compiled in.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DnsTargetError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

impl DnsRequester {
    /// Checks the target and prepares the query. Sockets are opened by the first request
    /// (inside the runtime that runs it).
    pub fn new(target: DnsTarget) -> Result<Self, DnsTargetError> {
        if target.server.port() == 0 {
            return Err(DnsTargetError::ServerPort);
        }
        if target.success_rcodes.is_empty() {
            return Err(DnsTargetError::NoSuccessRcodes);
        }
        let domain_err = |reason: String| DnsTargetError::Domain {
            domain: target.domain.clone(),
            reason,
        };
        let name = parse_domain(&target.domain).map_err(domain_err)?;
        let question = Question::build(&name, target.record).map_err(domain_err)?;
        let counters = Arc::new(Counters::default());
        let pool = match &target.transport {
            Transport::Udp => Pool::Udp {
                size: DEFAULT_UDP_SOCKETS,
                sockets: OnceLock::new(),
            },
            Transport::Tcp => Self::stream_pool(target.server, None, &counters),
            Transport::TcpTls {
                server_name,
                ca_pem,
            } => {
                let tls = tls_connector(server_name, ca_pem.as_deref())?;
                Self::stream_pool(target.server, Some(tls), &counters)
            }
        };
        Ok(Self {
            server: target.server,
            transport: target.transport.name(),
            name,
            record: target.record,
            question,
            success: target.success_rcodes,
            pool,
            next: AtomicUsize::new(0),
            counters,
        })
    }

    fn stream_pool(
        server: SocketAddr,
        tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
        counters: &Arc<Counters>,
    ) -> Pool {
        Pool::Stream {
            slots: (0..DEFAULT_STREAM_CONNECTIONS)
                .map(|_| {
                    Arc::new(StreamSlot {
                        state: Mutex::new(SlotState::Empty),
                    })
                })
                .collect(),
            config: StreamConfig {
                server,
                tls,
                counters: counters.clone(),
            },
        }
    }

    /// Uses `n` (at least 1) UDP sockets or TCP/TLS connections instead of the default.
    pub fn with_pool_size(mut self, n: usize) -> Self {
        let n = n.max(1);
        match &mut self.pool {
            Pool::Udp { size, .. } => *size = n,
            Pool::Stream { slots, .. } => {
                slots.resize_with(n, || {
                    Arc::new(StreamSlot {
                        state: Mutex::new(SlotState::Empty),
                    })
                });
            }
        }
        self
    }

    /// The fully qualified name asked for.
    pub fn domain(&self) -> String {
        self.name.to_string()
    }

    pub fn record(&self) -> RecordType {
        self.record
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// What the receivers ignored so far, and connections opened.
    pub fn counters(&self) -> DnsCounters {
        self.counters.snapshot()
    }

    /// Asks the target's question once.
    pub async fn query(&self) -> Result<DnsReply, DnsError> {
        self.exchange(&self.question).await
    }

    /// Asks another question over the same sockets and connections, judged by the same
    /// success rcodes (for tests and tools; the runner uses [`DnsRequester::query`]).
    pub async fn query_name(&self, domain: &str, record: RecordType) -> Result<DnsReply, DnsError> {
        let name = parse_domain(domain).map_err(|e| DnsError::new("domain", e))?;
        let question = Question::build(&name, record).map_err(|e| DnsError::new("domain", e))?;
        self.exchange(&question).await
    }

    async fn exchange(&self, question: &Question) -> Result<DnsReply, DnsError> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let received = match &self.pool {
            Pool::Udp { size, sockets } => {
                let pool = match sockets.get() {
                    Some(pool) => pool,
                    None => {
                        let pool = UdpPool::open(self.server, *size, &self.counters)
                            .map_err(|e| DnsError::io("io", &e))?;
                        // A concurrent first request may have won: its pool is kept.
                        let _ = sockets.set(pool);
                        sockets.get().expect("set above")
                    }
                };
                let slot = &pool.slots[turn % pool.slots.len()];
                udp_query(slot, question).await?
            }
            Pool::Stream { slots, config } => {
                let conn = slots[turn % slots.len()].conn(config).await?;
                stream_query(&conn, question).await?
            }
        };
        Ok(self.judge(received))
    }

    fn judge(&self, received: Received) -> DnsReply {
        let (answers, answer_count) = match &received.message {
            Some(message) => (
                message
                    .answers
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                        _ => None,
                    })
                    .collect(),
                message.answers.len(),
            ),
            None => (Vec::new(), 0),
        };
        DnsReply {
            rcode: received.rcode,
            success: self.success.contains(&received.rcode),
            answers,
            answer_count,
            truncated: received.truncated,
            bytes: received.bytes,
        }
    }
}

/// The runner's view of a query.
pub fn outcome(result: Result<DnsReply, DnsError>) -> Outcome {
    match result {
        Ok(reply) => Outcome::Reply {
            code: reply.rcode.name(),
            success: reply.success,
            bytes: reply.bytes as u64,
        },
        Err(err) => Outcome::Error {
            kind: err.kind,
            detail: err.detail,
        },
    }
}

impl Requester for DnsRequester {
    async fn request(&self) -> Outcome {
        outcome(self.query().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(domain: &str) -> DnsTarget {
        DnsTarget::new(
            "127.0.0.1:53".parse().unwrap(),
            Transport::Udp,
            domain,
            RecordType::A,
        )
    }

    #[test]
    fn rcode_names_round_trip() {
        assert_eq!(Rcode::NOERROR.name(), "NOERROR");
        assert_eq!(Rcode::NXDOMAIN.to_string(), "NXDOMAIN");
        assert_eq!(Rcode(16).name(), "BADVERS");
        assert_eq!(Rcode(99).name(), "RCODE99");
        assert_eq!("nxdomain".parse::<Rcode>(), Ok(Rcode::NXDOMAIN));
        assert_eq!("ServFail".parse::<Rcode>(), Ok(Rcode::SERVFAIL));
        assert_eq!("RCODE99".parse::<Rcode>(), Ok(Rcode(99)));
        assert_eq!("5".parse::<Rcode>(), Ok(Rcode::REFUSED));
        assert!("NOPE".parse::<Rcode>().is_err());
        assert!("5000".parse::<Rcode>().is_err());
    }

    #[test]
    fn domain_is_made_fqdn() {
        let r = DnsRequester::new(target("kubernetes.default.svc.cluster.local")).unwrap();
        assert_eq!(r.domain(), "kubernetes.default.svc.cluster.local.");
        let r = DnsRequester::new(target("Example.COM.")).unwrap();
        assert_eq!(r.domain().to_ascii_lowercase(), "example.com.");
    }

    #[test]
    fn bad_targets_name_the_field() {
        for bad in [
            "",
            " ",
            "a b.example",
            "a..b",
            ".a",
            &"x".repeat(64),
            "a\u{0}b",
        ] {
            let err = DnsRequester::new(target(bad)).unwrap_err();
            assert!(
                matches!(err, DnsTargetError::Domain { .. }),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().starts_with("domain "), "{err}");
        }
        let long = vec!["abcdefghij"; 30].join(".");
        assert!(matches!(
            DnsRequester::new(target(&long)),
            Err(DnsTargetError::Domain { .. })
        ));

        let mut t = target("a.example");
        t.success_rcodes.clear();
        assert_eq!(
            DnsRequester::new(t).unwrap_err(),
            DnsTargetError::NoSuccessRcodes
        );

        let mut t = target("a.example");
        t.server.set_port(0);
        assert_eq!(
            DnsRequester::new(t).unwrap_err(),
            DnsTargetError::ServerPort
        );

        let mut t = target("a.example");
        t.transport = Transport::TcpTls {
            server_name: "bad name!".into(),
            ca_pem: None,
        };
        let err = DnsRequester::new(t).unwrap_err();
        assert!(
            err.to_string().starts_with("transport.server_name"),
            "{err}"
        );

        let mut t = target("a.example");
        t.transport = Transport::TcpTls {
            server_name: "dns.example".into(),
            ca_pem: Some(b"not a pem".to_vec()),
        };
        let err = DnsRequester::new(t).unwrap_err();
        assert!(err.to_string().starts_with("transport.ca_pem"), "{err}");
    }

    #[test]
    fn record_for_server_family() {
        assert_eq!(
            RecordType::for_server(&"10.96.0.10:53".parse().unwrap()),
            RecordType::A
        );
        assert_eq!(
            RecordType::for_server(&"[fd00::a]:53".parse().unwrap()),
            RecordType::Aaaa
        );
    }

    fn reply_to(query: &[u8], rcode: u8, flags: u8) -> Vec<u8> {
        let mut reply = query.to_vec();
        reply[2] |= 0x80 | flags;
        reply[3] = (reply[3] & 0xf0) | rcode;
        reply
    }

    #[test]
    fn dispatch_matches_id_and_question_and_counts_the_rest() {
        let counters = Counters::default();
        let pending = Pending::default();
        let name = parse_domain("a.example").unwrap();
        let q = Question::build(&name, RecordType::A).unwrap();
        let other = Question::build(&parse_domain("b.example").unwrap(), RecordType::A).unwrap();
        let (id, mut rx, _guard) = pending.register(&q).unwrap();
        let mut wire = Vec::new();
        q.with_id(id, &mut wire);

        // Garbage, a query (no QR bit), an unknown id, another question: all ignored.
        pending.dispatch(&[1, 2, 3], &counters);
        pending.dispatch(&wire, &counters);
        let mut stray = reply_to(&wire, 0, 0);
        stray[0..2].copy_from_slice(&id.wrapping_add(7).to_be_bytes());
        pending.dispatch(&stray, &counters);
        let mut wrong = Vec::new();
        other.with_id(id, &mut wrong);
        pending.dispatch(&reply_to(&wrong, 0, 0), &counters);
        assert!(rx.try_recv().is_err());
        let c = counters.snapshot();
        assert_eq!((c.malformed, c.unmatched, c.wrong_question), (2, 1, 1));

        // The real reply, with the name in another case (0x20), is delivered.
        let mut real = reply_to(&wire, 3, 0);
        real[HEADER_LEN + 1] = b'A';
        pending.dispatch(&real, &counters);
        let got = rx.try_recv().unwrap().unwrap();
        assert_eq!(got.rcode, Rcode::NXDOMAIN);
        assert!(!got.truncated);
    }

    #[test]
    fn ids_are_unique_while_outstanding_and_freed_on_drop() {
        let pending = Pending::default();
        let q = Question::build(&parse_domain("a.example").unwrap(), RecordType::A).unwrap();
        let mut held = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for _ in 0..1000 {
            let (id, rx, guard) = pending.register(&q).unwrap();
            assert!(ids.insert(id));
            held.push((rx, guard));
        }
        held.truncate(10);
        assert_eq!(pending.lock().waiters.len(), 10);
        drop(held);
        assert!(pending.lock().waiters.is_empty());
    }

    #[test]
    fn truncated_unparseable_reply_is_judged_by_header_rcode_and_garbage_is_protocol() {
        let counters = Counters::default();
        let pending = Pending::default();
        let q = Question::build(&parse_domain("a.example").unwrap(), RecordType::A).unwrap();

        let (id, mut rx, _g) = pending.register(&q).unwrap();
        let mut wire = Vec::new();
        q.with_id(id, &mut wire);
        let mut reply = reply_to(&wire, 0, 0x02);
        reply[7] = 1; // one answer announced, none present
        pending.dispatch(&reply, &counters);
        let got = rx.try_recv().unwrap().unwrap();
        assert!(got.truncated && got.message.is_none());
        assert_eq!(got.rcode, Rcode::NOERROR);
        assert_eq!(counters.snapshot().truncated, 1);

        let (id, mut rx, _g) = pending.register(&q).unwrap();
        let mut wire = Vec::new();
        q.with_id(id, &mut wire);
        let mut reply = reply_to(&wire, 0, 0);
        reply[7] = 1;
        pending.dispatch(&reply, &counters);
        let err = rx.try_recv().unwrap().unwrap_err();
        assert_eq!(err.kind, "protocol");
    }
}
