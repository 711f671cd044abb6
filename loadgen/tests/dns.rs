//! DnsRequester against a real unbound started by each test (static zone `meshdoctor.test.`
//! only, everything else refused, so nothing leaves 127.0.0.1), over UDP, TCP and DNS over TLS
//! with a CA generated here; plus a scripted UDP server for stray, wrong and truncated replies.
//! Every test skips itself, saying so, when unbound is not installed.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use meshdoctor_lab::{TestCa, UnboundConfig, UnboundTls, die_with_parent};
use meshdoctor_loadgen::dns::{
    DnsError, DnsReply, DnsRequester, DnsTarget, Rcode, RecordType, Transport,
};
use meshdoctor_loadgen::{LoadSpec, Outcome, Requester, run};

const ZONE_A: &str = "192.0.2.7";
const ZONE_AAAA: &str = "2001:db8::7";
const TLS_NAME: &str = "dns.meshdoctor.test";
/// Bound on any single query in these tests.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

fn unbound_binary() -> Option<PathBuf> {
    let candidates = [PathBuf::from("/usr/sbin/unbound")].into_iter().chain(
        std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("unbound"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
    );
    candidates.into_iter().find(|p| p.is_file())
}

macro_rules! unbound_or_skip {
    ($extra:expr) => {
        match Unbound::start($extra) {
            Some(unbound) => unbound,
            None => {
                eprintln!("skipped: unbound not installed");
                return;
            }
        }
    };
}

/// An unbound serving the static test zone on free ports of 127.0.0.1; killed on drop.
struct Unbound {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    tls_port: u16,
    ca_pem: Vec<u8>,
}

fn free_port_udp_and_tcp() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn free_port_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA and a server certificate it signed for `TLS_NAME` and 127.0.0.1: (ca pem, cert pem,
/// key pem).
fn make_certs() -> (String, String, String) {
    let ca = TestCa::new("meshdoctor test CA");
    let server = ca.server(&[TLS_NAME, "127.0.0.1"]);
    (ca.cert_pem, server.cert, server.key)
}

/// Removes the directories of test processes that were killed before their Drop ran.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("meshdoctor-dns-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Unbound {
    /// Starts unbound with the test zone plus `extra` local-data lines; `None` when unbound is
    /// not installed. Panics when it does not come up within a few tries.
    fn start(extra: &[String]) -> Option<Self> {
        let binary = unbound_binary()?;
        remove_stale_dirs();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "meshdoctor-dns-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, cert, key) = make_certs();
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();

        for _attempt in 0..5 {
            let port = free_port_udp_and_tcp();
            let tls_port = free_port_tcp();
            if tls_port == port {
                continue;
            }
            let conf = config(&dir, port, tls_port, extra);
            std::fs::write(dir.join("unbound.conf"), conf).unwrap();
            let log = std::fs::File::create(dir.join("unbound.log")).unwrap();
            let mut command = Command::new(&binary);
            die_with_parent(&mut command);
            let mut child = command
                .arg("-d")
                .arg("-c")
                .arg(dir.join("unbound.conf"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn unbound");
            let deadline = Instant::now() + Duration::from_secs(10);
            let up = loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break false;
                }
                let listening = [port, tls_port].iter().all(|p| {
                    TcpStream::connect_timeout(
                        &SocketAddr::from(([127, 0, 0, 1], *p)),
                        Duration::from_millis(100),
                    )
                    .is_ok()
                });
                if listening {
                    break true;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if up {
                return Some(Self {
                    child: Some(child),
                    dir,
                    port,
                    tls_port,
                    ca_pem: ca.into_bytes(),
                });
            }
            eprintln!(
                "unbound did not come up on {port}/{tls_port}, retrying: {}",
                std::fs::read_to_string(dir.join("unbound.log")).unwrap_or_default()
            );
        }
        panic!("unbound did not start; see {}", dir.display());
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls_port))
    }

    fn tls(&self, server_name: &str, with_ca: bool) -> Transport {
        Transport::TcpTls {
            server_name: server_name.to_string(),
            ca_pem: with_ca.then(|| self.ca_pem.clone()),
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A stopped (SIGSTOP) unbound still dies of SIGKILL.
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(dir: &Path, port: u16, tls_port: u16, extra: &[String]) -> String {
    UnboundConfig {
        dir: dir.to_path_buf(),
        addr: IpAddr::from([127, 0, 0, 1]),
        port,
        tls: Some(UnboundTls {
            port: tls_port,
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }),
        allow: vec!["127.0.0.0/8".into()],
        zone: "meshdoctor.test.".into(),
        records: [
            format!("a.meshdoctor.test. A {ZONE_A}"),
            format!("a.meshdoctor.test. AAAA {ZONE_AAAA}"),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        .collect(),
    }
    .render()
}

fn requester(
    server: SocketAddr,
    transport: Transport,
    domain: &str,
    record: RecordType,
) -> DnsRequester {
    DnsRequester::new(DnsTarget::new(server, transport, domain, record)).unwrap()
}

async fn bounded(r: &DnsRequester) -> Result<DnsReply, DnsError> {
    tokio::time::timeout(QUERY_TIMEOUT, r.query())
        .await
        .expect("query timed out")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_a_and_aaaa() {
    let unbound = unbound_or_skip!(&[]);
    let a = requester(
        unbound.addr(),
        Transport::Udp,
        "a.meshdoctor.test",
        RecordType::A,
    );
    let reply = bounded(&a).await.unwrap();
    assert_eq!(reply.rcode, Rcode::NOERROR);
    assert!(reply.success);
    assert_eq!(reply.answers, vec![ip(ZONE_A)]);
    assert!(!reply.truncated);
    assert!(reply.bytes > 12);

    let aaaa = requester(
        unbound.addr(),
        Transport::Udp,
        "a.meshdoctor.test.",
        RecordType::Aaaa,
    );
    let reply = bounded(&aaaa).await.unwrap();
    assert_eq!(reply.rcode, Rcode::NOERROR);
    assert_eq!(reply.answers, vec![ip(ZONE_AAAA)]);

    // The runner's view.
    match a.request().await {
        Outcome::Reply {
            code,
            success,
            bytes,
        } => {
            assert_eq!(code, "NOERROR");
            assert!(success);
            // The same reply with a 4-byte address instead of a 16-byte one.
            assert_eq!(bytes as usize, reply.bytes - 12);
        }
        other => panic!("{other:?}"),
    }
    let c = a.counters();
    assert_eq!((c.unmatched, c.wrong_question, c.malformed), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_fails_by_default_and_passes_when_accepted() {
    let unbound = unbound_or_skip!(&[]);
    let missing = requester(
        unbound.addr(),
        Transport::Udp,
        "missing.meshdoctor.test",
        RecordType::A,
    );
    let reply = bounded(&missing).await.unwrap();
    assert_eq!(reply.rcode, Rcode::NXDOMAIN);
    assert!(!reply.success);
    assert!(reply.answers.is_empty());
    assert_eq!(
        missing.request().await,
        Outcome::Reply {
            code: "NXDOMAIN".into(),
            success: false,
            bytes: reply.bytes as u64
        }
    );

    let mut target = DnsTarget::new(
        unbound.addr(),
        Transport::Udp,
        "missing.meshdoctor.test",
        RecordType::A,
    );
    target.success_rcodes = vec![Rcode::NOERROR, "nxdomain".parse().unwrap()];
    let accepting = DnsRequester::new(target).unwrap();
    match accepting.request().await {
        Outcome::Reply { code, success, .. } => {
            assert_eq!(code, "NXDOMAIN");
            assert!(success);
        }
        other => panic!("{other:?}"),
    }

    // Outside the zone unbound refuses (it never recurses in these tests).
    let outside = requester(unbound.addr(), Transport::Udp, "example.com", RecordType::A);
    let reply = bounded(&outside).await.unwrap();
    assert_eq!((reply.rcode, reply.success), (Rcode::REFUSED, false));

    // A name that exists without the asked type: NOERROR with no answer (NODATA) succeeds.
    let nodata = DnsRequester::new(DnsTarget::new(
        unbound.addr(),
        Transport::Tcp,
        "meshdoctor.test",
        RecordType::A,
    ))
    .unwrap();
    let reply = bounded(&nodata).await.unwrap();
    assert_eq!(reply.rcode, Rcode::NOERROR);
    assert!(reply.success && reply.answers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_pipelines_on_one_connection() {
    let unbound = unbound_or_skip!(&[]);
    let tcp = Arc::new(
        requester(
            unbound.addr(),
            Transport::Tcp,
            "a.meshdoctor.test",
            RecordType::A,
        )
        .with_pool_size(1),
    );
    let reply = bounded(&tcp).await.unwrap();
    assert_eq!(
        (reply.rcode, reply.answers.clone()),
        (Rcode::NOERROR, vec![ip(ZONE_A)])
    );

    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let tcp = tcp.clone();
        set.spawn(async move {
            let (name, record, want) = if i % 2 == 0 {
                ("a.meshdoctor.test", RecordType::A, ip(ZONE_A))
            } else {
                ("a.meshdoctor.test", RecordType::Aaaa, ip(ZONE_AAAA))
            };
            let reply = tokio::time::timeout(QUERY_TIMEOUT, tcp.query_name(name, record))
                .await
                .expect("timed out")
                .unwrap();
            assert_eq!(reply.answers, vec![want]);
        });
    }
    while let Some(done) = set.join_next().await {
        done.unwrap();
    }
    let c = tcp.counters();
    assert_eq!(c.connects, 1, "one pipelined connection: {c:?}");
    assert_eq!((c.unmatched, c.wrong_question, c.malformed), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verifies_the_server_certificate() {
    let unbound = unbound_or_skip!(&[]);
    for name in [TLS_NAME, "127.0.0.1"] {
        let tls = requester(
            unbound.tls_addr(),
            unbound.tls(name, true),
            "a.meshdoctor.test",
            RecordType::Aaaa,
        );
        let reply = bounded(&tls)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(reply.rcode, Rcode::NOERROR);
        assert_eq!(reply.answers, vec![ip(ZONE_AAAA)]);
        // Several queries reuse the connection.
        for _ in 0..5 {
            assert!(bounded(&tls).await.unwrap().success);
        }
        // Two pooled connections, reused.
        assert_eq!(tls.counters().connects, 2);
    }

    // Without the CA (webpki roots only) and with a name the certificate does not carry.
    for (name, with_ca) in [(TLS_NAME, false), ("other.meshdoctor.test", true)] {
        let tls = requester(
            unbound.tls_addr(),
            unbound.tls(name, with_ca),
            "a.meshdoctor.test",
            RecordType::A,
        );
        let err = bounded(&tls).await.unwrap_err();
        assert_eq!(err.kind, "tls", "{name} ca={with_ca}: {err}");
        match tls.request().await {
            Outcome::Error { kind, detail } => {
                assert_eq!(kind, "tls");
                assert!(detail.to_lowercase().contains("certificate"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_server_fails_with_the_right_kind() {
    let mut unbound = unbound_or_skip!(&[]);
    let udp = requester(
        unbound.addr(),
        Transport::Udp,
        "a.meshdoctor.test",
        RecordType::A,
    );
    let tcp = requester(
        unbound.addr(),
        Transport::Tcp,
        "a.meshdoctor.test",
        RecordType::A,
    )
    .with_pool_size(1);
    assert!(bounded(&udp).await.unwrap().success);
    assert!(bounded(&tcp).await.unwrap().success);
    unbound.stop();

    // UDP: loopback answers with ICMP port unreachable.
    for _ in 0..3 {
        let err = bounded(&udp).await.unwrap_err();
        assert_eq!(err.kind, "refused", "{err}");
    }
    // TCP: the open connection is found closed, then connecting is refused.
    let mut kinds = Vec::new();
    for _ in 0..3 {
        kinds.push(bounded(&tcp).await.unwrap_err().kind);
    }
    assert!(
        kinds
            .iter()
            .all(|k| ["closed", "connect", "io"].contains(k)),
        "{kinds:?}"
    );
    assert_eq!(*kinds.last().unwrap(), "connect", "{kinds:?}");
    let fresh = requester(
        unbound.addr(),
        Transport::Tcp,
        "a.meshdoctor.test",
        RecordType::A,
    );
    assert_eq!(
        match fresh.request().await {
            Outcome::Error { kind, .. } => kind,
            other => panic!("{other:?}"),
        },
        "connect"
    );
    let tls = requester(
        unbound.tls_addr(),
        unbound.tls(TLS_NAME, true),
        "a.meshdoctor.test",
        RecordType::A,
    );
    assert_eq!(bounded(&tls).await.unwrap_err().kind, "connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_udp_queries_in_flight_are_matched() {
    const N: u32 = 500;
    let extra: Vec<String> = (0..N)
        .map(|i| format!("n{i}.meshdoctor.test. A 10.0.{}.{}", i / 256, i % 256))
        .collect();
    let unbound = unbound_or_skip!(&extra);
    let udp = Arc::new(
        requester(
            unbound.addr(),
            Transport::Udp,
            "a.meshdoctor.test",
            RecordType::A,
        )
        .with_pool_size(2),
    );
    // Opens the sockets.
    assert!(bounded(&udp).await.unwrap().success);

    // Freeze the server so that every query is outstanding at once, then let it answer.
    unbound.signal("STOP");
    let mut set = tokio::task::JoinSet::new();
    for i in 0..N {
        let udp = udp.clone();
        set.spawn(async move {
            let name = format!("n{i}.meshdoctor.test");
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                udp.query_name(&name, RecordType::A),
            )
            .await
            .unwrap_or_else(|_| panic!("{name} timed out"))
            .unwrap();
            assert!(reply.success);
            assert_eq!(
                reply.answers,
                vec![IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8])],
                "{name}"
            );
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    unbound.signal("CONT");
    while let Some(done) = set.join_next().await {
        done.unwrap();
    }
    let c = udp.counters();
    assert_eq!(
        (c.unmatched, c.wrong_question, c.malformed),
        (0, 0, 0),
        "{c:?}"
    );
}

/// A scripted UDP server: for each query, the replies `script` makes of it, in order.
fn scripted_server(script: fn(&[u8]) -> Vec<Vec<u8>>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            for reply in script(&buf[..len]) {
                let _ = socket.send_to(&reply, from);
            }
        }
    });
    addr
}

/// A reply to `query` with no records: QR set, the given rcode and extra flag bits, EDNS
/// record dropped.
fn bare_reply(query: &[u8], rcode: u8, flags: u8) -> Vec<u8> {
    let mut reply = query.to_vec();
    reply[2] |= 0x80 | flags;
    reply[3] = (reply[3] & 0xf0) | rcode;
    reply[10] = 0;
    reply[11] = 0; // no additional (the query's OPT record is cut below)
    // Header plus question: name, type, class.
    let mut at = 12;
    while reply[at] != 0 {
        at += 1 + reply[at] as usize;
    }
    reply.truncate(at + 5);
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strays_wrong_questions_and_garbage_are_ignored() {
    let server = scripted_server(|query| {
        let real = bare_reply(query, 0, 0);
        let mut wrong_id = real.clone();
        wrong_id[1] ^= 0x55;
        let mut wrong_question = real.clone();
        wrong_question[13] ^= 0x01; // first letter of the name
        let mut not_a_response = real.clone();
        not_a_response[2] &= 0x7f;
        let mut bad_question = real.clone();
        bad_question[12] = 0xc0; // a compression pointer where the name starts
        vec![
            vec![0xde, 0xad],
            wrong_id,
            wrong_question,
            not_a_response,
            bad_question,
            real,
        ]
    });
    let r = requester(server, Transport::Udp, "a.meshdoctor.test", RecordType::A).with_pool_size(1);
    for _ in 0..3 {
        let reply = tokio::time::timeout(QUERY_TIMEOUT, r.query())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.rcode, Rcode::NOERROR);
        assert!(reply.success && reply.answers.is_empty());
    }
    let c = r.counters();
    assert_eq!(c.unmatched, 3, "{c:?}");
    assert_eq!(c.wrong_question, 6, "{c:?}");
    assert_eq!(c.malformed, 6, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_udp_reply_is_judged_by_its_rcode() {
    let server = scripted_server(|query| vec![bare_reply(query, 0, 0x02)]);
    let r = requester(server, Transport::Udp, "a.meshdoctor.test", RecordType::A);
    let reply = tokio::time::timeout(QUERY_TIMEOUT, r.query())
        .await
        .unwrap()
        .unwrap();
    assert!(reply.truncated);
    assert_eq!((reply.rcode, reply.success), (Rcode::NOERROR, true));
    assert_eq!(r.counters().truncated, 1);

    let server = scripted_server(|query| vec![bare_reply(query, 2, 0x02)]);
    let r = requester(server, Transport::Udp, "a.meshdoctor.test", RecordType::A);
    assert_eq!(
        r.request().await,
        Outcome::Reply {
            code: "SERVFAIL".into(),
            success: false,
            bytes: (12 + 19 + 4) as u64
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_matched_reply_is_a_protocol_error() {
    let server = scripted_server(|query| {
        let mut reply = bare_reply(query, 0, 0);
        reply[7] = 1; // announces one answer that is not there
        vec![reply]
    });
    let r = requester(server, Transport::Udp, "a.meshdoctor.test", RecordType::A);
    match r.request().await {
        Outcome::Error { kind, .. } => assert_eq!(kind, "protocol"),
        other => panic!("{other:?}"),
    }
}

fn spec(qps: u32, secs: u64) -> LoadSpec {
    LoadSpec {
        qps,
        duration: Duration::from_secs(secs),
        timeout: Duration::from_millis(500),
        max_in_flight: 100,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_through_the_runner() {
    let mut unbound = unbound_or_skip!(&[]);
    let server = unbound.addr();
    let tls = unbound.tls(TLS_NAME, true);
    // Every transport answers every request of a round.
    for (addr, transport) in [
        (server, Transport::Udp),
        (server, Transport::Tcp),
        (unbound.tls_addr(), tls),
    ] {
        let name = transport.name();
        let r = Arc::new(requester(
            addr,
            transport,
            "a.meshdoctor.test",
            RecordType::A,
        ));
        let stats = run(r.clone(), &spec(200, 1)).await;
        assert_eq!(stats.planned, 200, "{name}: {stats:?}");
        assert_eq!(stats.requests, 200, "{name}: {stats:?}");
        assert_eq!(stats.successes, 200, "{name}: {stats:?}");
        assert_eq!(stats.codes.get("NOERROR"), Some(&200), "{name}: {stats:?}");
        assert!(stats.errors.is_empty(), "{name}: {stats:?}");
        assert!(stats.latency.is_some(), "{name}: {stats:?}");
        assert_eq!(r.counters().unmatched, 0, "{name}");
    }

    // NXDOMAIN fails the round's requests with their rcode.
    let missing = Arc::new(requester(
        server,
        Transport::Udp,
        "missing.meshdoctor.test",
        RecordType::Aaaa,
    ));
    let stats = run(missing, &spec(50, 1)).await;
    assert_eq!((stats.requests, stats.successes), (50, 0), "{stats:?}");
    assert_eq!(stats.codes.get("NXDOMAIN"), Some(&50), "{stats:?}");
    assert!(stats.latency.is_none());

    // A frozen server: UDP requests time out (nothing refuses them).
    let udp = Arc::new(requester(
        server,
        Transport::Udp,
        "a.meshdoctor.test",
        RecordType::A,
    ));
    unbound.signal("STOP");
    let stats = run(udp.clone(), &spec(20, 1)).await;
    assert_eq!((stats.requests, stats.successes), (20, 0), "{stats:?}");
    assert_eq!(stats.errors.get("timeout"), Some(&20), "{stats:?}");
    unbound.signal("CONT");

    // A stopped server: UDP refused, TCP cannot connect.
    unbound.stop();
    let stats = run(udp, &spec(20, 1)).await;
    assert_eq!(stats.successes, 0, "{stats:?}");
    assert_eq!(stats.errors.get("refused"), Some(&20), "{stats:?}");
    let tcp = Arc::new(requester(
        server,
        Transport::Tcp,
        "a.meshdoctor.test",
        RecordType::A,
    ));
    let stats = run(tcp, &spec(20, 1)).await;
    assert_eq!(stats.successes, 0, "{stats:?}");
    assert_eq!(stats.errors.get("connect"), Some(&20), "{stats:?}");
}
