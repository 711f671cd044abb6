//! Root tests of fault injection on the bare lab network (no agents): each of the four placements
//! drops the echo packets it names, in the direction it names, and nothing else (other
//! interface, other family, neighbour discovery); random rates, replacing, coexisting and
//! clearing faults.
//!
//! The probes are ICMP echoes sent from raw sockets bound to one node's interface, like the
//! agents' (and like `ping -c 3 -W 1`): three requests, one second for the replies.

use std::{
    io,
    mem::MaybeUninit,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU16, Ordering},
    thread,
    time::{Duration, Instant},
};

use meshdoctor_api::{Direction, Family, Packet, Segment};
use meshdoctor_lab::{
    Fault, LabConfig, LabError, Network, in_netns, is_root,
    plan::{ETH0, LabInterface, NET1, SWITCH_NS, node_addr, node_ns},
};

/// How long after the last request the replies may take (`ping -W 1`).
const REPLY_WAIT: Duration = Duration::from_secs(1);

fn can_run(test: &str) -> bool {
    if !is_root() {
        eprintln!("skipped {test}: fault injection needs root (network namespaces, nftables)");
    }
    is_root()
}

/// What one round of echoes got.
#[derive(Debug)]
struct Echoes {
    /// Requests the kernel refused to send (a drop in the output hook gives `EPERM`).
    send_errors: u16,
    /// Distinct requests answered.
    replies: u16,
}

/// A raw ICMP(v6) socket in `ns`, bound to `iface` and `src` (it stays in that namespace).
fn echo_socket(ns: &str, iface: &str, src: IpAddr) -> OwnedFd {
    let (domain, proto) = match src {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
    };
    let open = || -> io::Result<OwnedFd> {
        // SAFETY: plain socket(2); the fd is owned by the OwnedFd from here on.
        let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, open descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the option value is the interface name and its length.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                iface.as_ptr().cast(),
                iface.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: bind with a valid sockaddr of the given length.
        let rc = with_sockaddr(src, |sa, len| unsafe {
            libc::bind(fd.as_raw_fd(), sa, len)
        });
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: the option value is a timeval.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    };
    in_netns(ns, open)
        .unwrap()
        .unwrap_or_else(|e| panic!("raw ICMP socket on {iface} {src} in {ns}: {e}"))
}

/// Calls `f` with `addr` as a sockaddr.
fn with_sockaddr<T>(
    addr: IpAddr,
    f: impl FnOnce(*const libc::sockaddr, libc::socklen_t) -> T,
) -> T {
    match addr {
        IpAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            f(
                (&raw const sa).cast(),
                std::mem::size_of_val(&sa) as libc::socklen_t,
            )
        }
        IpAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            f(
                (&raw const sa).cast(),
                std::mem::size_of_val(&sa) as libc::socklen_t,
            )
        }
    }
}

fn icmp_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A fresh echo identifier per call, so replies to an earlier call are never counted.
fn next_id() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    (std::process::id() as u16).wrapping_mul(31) ^ NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Sends `count` echo requests from node `from` to node `to` over `iface` in `family`, `gap`
/// apart, and counts the replies arriving up to [`REPLY_WAIT`] after the last request.
fn echo(
    from: usize,
    to: usize,
    iface: &LabInterface,
    family: Family,
    count: u16,
    gap: Duration,
) -> Echoes {
    let (src, dst) = (node_addr(from, iface, family), node_addr(to, iface, family));
    let sock = echo_socket(&node_ns(from), iface.name, src);
    let id = next_id();
    let mut send_errors = 0;
    for seq in 0..count {
        let mut packet = [0u8; 16];
        packet[0] = match family {
            Family::Ipv4 => 8,
            // The kernel fills in ICMPv6 checksums of raw sockets.
            Family::Ipv6 => 128,
        };
        packet[4..6].copy_from_slice(&id.to_be_bytes());
        packet[6..8].copy_from_slice(&seq.to_be_bytes());
        packet[8..].copy_from_slice(b"mdlabflt");
        if family == Family::Ipv4 {
            let sum = icmp_checksum(&packet);
            packet[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        // SAFETY: sendto with a valid buffer and sockaddr.
        let rc = with_sockaddr(dst, |sa, len| unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                sa,
                len,
            )
        });
        if rc < 0 {
            send_errors += 1;
        }
        thread::sleep(gap);
    }
    let mut answered = vec![false; usize::from(count)];
    let deadline = Instant::now() + REPLY_WAIT;
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    while Instant::now() < deadline && answered.iter().any(|a| !a) {
        // SAFETY: recv into a buffer of the given length; a timeout returns -1.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else {
            continue;
        };
        // SAFETY: recv initialised the first n bytes.
        let data = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
        // IPv4 raw sockets get the IP header too, ICMPv6 ones only the ICMPv6 message.
        let (icmp, reply_type) = match family {
            Family::Ipv4 => (data.get(usize::from(data[0] & 0x0f) * 4..), 0),
            Family::Ipv6 => (Some(data), 129),
        };
        let Some(icmp) = icmp.filter(|m| m.len() >= 8 && m[0] == reply_type) else {
            continue;
        };
        if icmp[4..6] == id.to_be_bytes() {
            let seq = usize::from(u16::from_be_bytes([icmp[6], icmp[7]]));
            if let Some(a) = answered.get_mut(seq) {
                *a = true;
            }
        }
    }
    Echoes {
        send_errors,
        replies: answered.iter().filter(|a| **a).count() as u16,
    }
}

/// Three echoes from `from` to `to`: true when all are answered, false when none is.
fn reaches(from: usize, to: usize, iface: &LabInterface, family: Family) -> bool {
    let e = echo(from, to, iface, family, 3, Duration::from_millis(20));
    assert!(
        e.replies == 0 || e.replies == 3,
        "node-{from} -> node-{to} {} {family}: a partial answer at 0% or 100% loss: {e:?}",
        iface.name
    );
    e.replies == 3
}

fn fault(spec: &str) -> Fault {
    spec.parse().unwrap_or_else(|e| panic!("{e}"))
}

/// `nft list tables` in the namespace `ns`, one line per table.
fn nft_tables(ns: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "tables"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn each_placement_drops_its_packets_in_its_direction_only() {
    if !can_run("each_placement_drops_its_packets_in_its_direction_only") {
        return;
    }
    let net = Network::build(2).unwrap();
    // After the build, which may wait for another test's lab.
    let started = Instant::now();
    // A healthy network first: whatever fails later is the fault's doing.
    for iface in [ETH0, NET1] {
        for family in [Family::Ipv4, Family::Ipv6] {
            assert!(reaches(1, 2, &iface, family) && reaches(2, 1, &iface, family));
        }
    }
    let placements = [
        (Segment::Link, Direction::Egress),
        (Segment::Link, Direction::Ingress),
        (Segment::Stack, Direction::Ingress),
        (Segment::Stack, Direction::Egress),
    ];
    for (segment, direction) in placements {
        // node-2's eth0, IPv4, every echo packet: node-1's echoes to it fail, whichever of the
        // request (ingress) or the reply (egress) is dropped; the other interface and the
        // other family still work.
        let both = Fault {
            node: 2,
            interface: "eth0".into(),
            direction,
            family: Family::Ipv4,
            rate: 100.0,
            segment,
            packets: None,
            protocol: meshdoctor_api::Protocol::Icmp,
        };
        net.inject(&both).unwrap();
        assert!(!reaches(1, 2, &ETH0, Family::Ipv4), "{both}");
        assert_eq!(net.fault_drops(&both).unwrap(), 3, "{both}");
        assert!(
            reaches(1, 2, &NET1, Family::Ipv4),
            "{both}: net1 is not faulted"
        );
        assert!(
            reaches(1, 2, &ETH0, Family::Ipv6),
            "{both}: IPv6 is not faulted"
        );
        net.remove_fault(&both).unwrap();

        // One ICMP type only: the direction decides which node's echoes fail. Egress drops
        // node-2's own requests (its echoes fail) or its replies (node-1's echoes fail);
        // ingress drops the requests reaching node-2 (node-1's fail) or the replies reaching
        // it (node-2's fail). The echoes the other way cross the place with the other type.
        for packets in [Packet::Request, Packet::Reply] {
            let f = Fault {
                packets: Some(packets),
                ..both.clone()
            };
            let (failing, working) =
                if (direction == Direction::Egress) == (packets == Packet::Request) {
                    (2, 1)
                } else {
                    (1, 2)
                };
            let other = |n: usize| 3 - n;
            net.inject(&f).unwrap();
            assert!(
                !reaches(failing, other(failing), &ETH0, Family::Ipv4),
                "{f}: node-{failing}'s echoes should fail"
            );
            assert!(
                reaches(working, other(working), &ETH0, Family::Ipv4),
                "{f}: node-{working}'s echoes should work"
            );
            assert_eq!(
                net.fault_drops(&f).unwrap(),
                3,
                "{f}: only the failing echoes' {packets:?}s are dropped"
            );
            net.remove_fault(&f).unwrap();
        }
    }

    // IPv6: echoes fail, neighbour discovery crossing the same place does not. The neighbour
    // caches start empty, so node-1 must resolve node-2 (a solicitation into node-2, an
    // advertisement out of it) while the fault is on.
    let n2_eth0_v6 = node_addr(2, &ETH0, Family::Ipv6).to_string();
    for (segment, direction) in placements {
        let f = Fault {
            node: 2,
            interface: "eth0".into(),
            direction,
            family: Family::Ipv6,
            rate: 100.0,
            segment,
            packets: None,
            protocol: meshdoctor_api::Protocol::Icmp,
        };
        for node in [1, 2] {
            net.exec(node, &["ip", "-6", "neigh", "flush", "dev", "eth0"])
                .unwrap();
        }
        net.inject(&f).unwrap();
        assert!(!reaches(1, 2, &ETH0, Family::Ipv6), "{f}");
        assert_eq!(net.fault_drops(&f).unwrap(), 3, "{f}");
        let neigh = net
            .exec(
                1,
                &["ip", "-6", "neigh", "show", &n2_eth0_v6, "dev", "eth0"],
            )
            .unwrap();
        let neigh = String::from_utf8_lossy(&neigh.stdout);
        assert!(
            neigh.contains("lladdr"),
            "{f}: node-1 could not resolve node-2 ({neigh:?}): neighbour discovery was dropped"
        );
        assert!(
            reaches(1, 2, &ETH0, Family::Ipv4),
            "{f}: IPv4 is not faulted"
        );
        assert!(
            reaches(1, 2, &NET1, Family::Ipv6),
            "{f}: net1 is not faulted"
        );
        net.remove_fault(&f).unwrap();
    }
    eprintln!(
        "four placements, both families, took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn random_rate_replace_coexist_and_clear() {
    if !can_run("random_rate_replace_coexist_and_clear") {
        return;
    }
    let net = Network::build(2).unwrap();
    // After the build, which may wait for another test's lab.
    let started = Instant::now();

    // Loading a fault at the place of another replaces it: one table, the new rate.
    net.inject(&fault("node-2:eth0:ingress:ipv4:100:link:requests"))
        .unwrap();
    let f30 = fault("node-2:eth0:ingress:ipv4:30:link:requests");
    net.inject(&f30).unwrap();
    let tables = nft_tables(SWITCH_NS);
    assert_eq!(
        tables,
        [format!("table bridge {}", f30.table())],
        "one table per place"
    );
    // 200 requests at 30%: Binomial(200, 0.3) is 60 ± 6.5; [30, 95] misses by > 4.5 sigma.
    let e = echo(1, 2, &ETH0, Family::Ipv4, 200, Duration::from_millis(2));
    let drops = net.fault_drops(&f30).unwrap();
    assert_eq!(e.send_errors, 0);
    assert_eq!(
        drops,
        u64::from(200 - e.replies),
        "every lost echo is a counted drop"
    );
    assert!((30..=95).contains(&drops), "30% of 200 dropped {drops}");
    net.remove_fault(&f30).unwrap();
    // Removing a fault that is not there is fine.
    net.remove_fault(&f30).unwrap();

    // Faults on one node coexist; clearing stops them all and leaves other nft rules alone.
    net.nft(1, "table inet custom {}\n").unwrap();
    let into = fault("2:eth0:ingress:4:100:stack:requests");
    let out_of = fault("2:eth0:egress:4:100:stack:requests");
    let link = fault("2:net1:egress:6:100");
    for f in [&into, &out_of, &link] {
        net.inject(f).unwrap();
    }
    assert!(!reaches(1, 2, &ETH0, Family::Ipv4), "{into}");
    let refused = echo(2, 1, &ETH0, Family::Ipv4, 3, Duration::from_millis(20));
    assert_eq!(
        (refused.send_errors, refused.replies),
        (3, 0),
        "{out_of}: an output-hook drop refuses the send"
    );
    assert!(!reaches(1, 2, &NET1, Family::Ipv6), "{link}");
    for f in [&into, &out_of, &link] {
        assert_eq!(net.fault_drops(f).unwrap(), 3, "{f}");
    }
    net.clear_faults().unwrap();
    assert!(reaches(1, 2, &ETH0, Family::Ipv4) && reaches(2, 1, &ETH0, Family::Ipv4));
    assert!(reaches(1, 2, &NET1, Family::Ipv6));
    assert_eq!(nft_tables(SWITCH_NS), Vec::<String>::new());
    assert_eq!(nft_tables(&node_ns(1)), ["table inet custom"]);
    assert!(matches!(
        net.fault_drops(&into),
        Err(LabError::Command { .. })
    ));
    // Faults are checked against the lab.
    let err = net
        .inject(&fault("node-3:eth0:egress:ipv4:30"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "fault node-3:eth0:egress:ipv4:30%:link: no node 3 in a lab of 2 nodes \
         (nodes are node-1..node-2)"
    );
    eprintln!(
        "rates, replacing and clearing took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// No root needed: the faults are checked before anything is built or started.
#[test]
fn lab_up_refuses_a_fault_outside_the_lab() {
    let mut cfg = LabConfig::new(4);
    cfg.bin_dir = "/nonexistent".into();
    cfg.faults = vec![
        fault("node-2:eth0:egress:ipv4:30"),
        fault("node-9:net1:ingress:ipv6:5"),
    ];
    let err = meshdoctor_lab::Lab::up(cfg)
        .err()
        .expect("a fault on node-9 of 4");
    assert!(
        matches!(&err, LabError::BadFault { fault, .. } if fault.starts_with("node-9:net1")),
        "{err}"
    );
    assert!(
        err.to_string().contains("no node 9 in a lab of 4 nodes"),
        "{err}"
    );
}
