//! Test bed for the root tests of the eBPF programs: two network namespaces joined by a veth
//! pair, and a raw-socket pinger that sends the agent's own probe packets.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use meshdoctor_agent_common::ProbeEvent;
use meshdoctor_api::{Family, probe_id};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::{
    icmp::{echo, echo_request},
    observer::{EventStream, Observer},
};

/// ICMP ident of the test's echo requests, to tell their replies from others.
pub(crate) const IDENT: u16 = 0x4d44;

pub(crate) const ADDR_A4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub(crate) const ADDR_B4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub(crate) const ADDR_A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x231, 0, 0, 0, 0, 1);
pub(crate) const ADDR_B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x231, 0, 0, 0, 0, 2);

pub(crate) fn skip_unless_root() -> bool {
    let skip = !meshdoctor_lab::is_root();
    if skip {
        println!("skipped: needs root");
    }
    skip
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Netns A (observer side) and B (responder) joined by veth `veth_a` <-> `veth_b`; both
/// namespaces (and with them the veths) are deleted on drop, also when a test panics.
pub(crate) struct Pair {
    pub ns_a: String,
    pub ns_b: String,
    pub veth_a: String,
}

impl Pair {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let pair = Self {
            ns_a: format!("mdobs-a-{id}"),
            ns_b: format!("mdobs-b-{id}"),
            veth_a: format!("oa{id}"),
        };
        let veth_b = format!("ob{id}");
        assert!(veth_b.len() <= 15, "interface name {veth_b} too long");
        ip(&["netns", "add", &pair.ns_a]);
        ip(&["netns", "add", &pair.ns_b]);
        ip(&[
            "link",
            "add",
            &pair.veth_a,
            "netns",
            &pair.ns_a,
            "type",
            "veth",
            "peer",
            "name",
            &veth_b,
            "netns",
            &pair.ns_b,
        ]);
        for (ns, dev, a4, a6) in [
            (&pair.ns_a, &pair.veth_a, ADDR_A4, ADDR_A6),
            (&pair.ns_b, &veth_b, ADDR_B4, ADDR_B6),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{a4}/24"), "dev", dev]);
            // nodad: no 1-2 s wait for duplicate address detection.
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{a6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Runs `f` on a fresh thread that first joins netns `ns`; sockets, links and maps
    /// created there keep that netns.
    pub fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        meshdoctor_lab::in_netns(ns, f).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Raw ICMP/ICMPv6 echo socket of the calling thread's netns.
pub(crate) struct Pinger {
    pub sock: Socket,
    dst: SockAddr,
    v6: bool,
}

impl Pinger {
    pub fn new(dst: IpAddr) -> Self {
        let sock = match dst {
            IpAddr::V4(_) => Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)),
            IpAddr::V6(_) => Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)),
        }
        .expect("raw socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Self {
            sock,
            dst: SocketAddr::new(dst, 0).into(),
            v6: dst.is_ipv6(),
        }
    }

    pub fn family(&self) -> Family {
        if self.v6 { Family::Ipv6 } else { Family::Ipv4 }
    }

    /// Sends the agent's own probe packet for `probe_id` (path 1, sequence `seq`), as
    /// `icmp::echo_request` builds it, with ident 0x4d44.
    pub fn probe(&self, tag: u32, seq: u16) {
        let pkt = echo_request(self.family(), IDENT, seq, probe_id(tag, 1, seq), 0);
        self.sock.send_to(&pkt, &self.dst).expect("send probe");
    }

    /// Sends an ordinary echo request: no cookie.
    pub fn plain(&self, seq: u16) {
        let pkt = echo(self.family(), IDENT, seq, b"plain ping..");
        self.sock.send_to(&pkt, &self.dst).expect("send echo");
    }

    /// Collects the sequence numbers of echo replies until `want` are in or `timeout`.
    pub fn replies(&self, want: usize, timeout: Duration) -> HashSet<u16> {
        let deadline = Instant::now() + timeout;
        let mut seen = HashSet::new();
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        while seen.len() < want && Instant::now() < deadline {
            let Ok(n) = self.sock.recv(&mut buf) else {
                continue;
            };
            // SAFETY: recv initialised the first n bytes.
            let data: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            let icmp = if self.v6 {
                &data[..]
            } else {
                &data[usize::from(data[0] & 0x0f) * 4..]
            };
            let reply_type = if self.v6 { 129 } else { 0 };
            if icmp.len() >= 8 && icmp[0] == reply_type && icmp[4..6] == IDENT.to_be_bytes() {
                seen.insert(u16::from_be_bytes([icmp[6], icmp[7]]));
            }
        }
        seen
    }
}

/// Reads events until `want` arrived, then keeps listening briefly so that unexpected
/// extra events are caught too.
pub(crate) fn collect(
    rt: &tokio::runtime::Runtime,
    stream: &mut EventStream,
    want: usize,
) -> Vec<ProbeEvent> {
    rt.block_on(async {
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while events.len() < want {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) | Err(_) => break,
            }
        }
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(300), stream.next()).await
        {
            events.push(ev);
        }
        events
    })
}

/// A runtime of the calling thread and the observer's event stream registered with it.
pub(crate) fn event_stream(obs: &mut Observer) -> (tokio::runtime::Runtime, EventStream) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = {
        let _rt = rt.enter();
        obs.events().unwrap()
    };
    (rt, stream)
}
