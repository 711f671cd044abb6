//! Root test of the bare lab network: every node reaches every other over both networks and both
//! families, nothing routes out, and teardown leaves no namespace behind.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use meshdoctor_api::Family;
use meshdoctor_lab::{
    LabError, Network, in_netns, is_root,
    plan::{CONTROLLER_HOST, CONTROLLER_NS, ETH0, INTERFACES, NS_PREFIX, node_addr, node_ns},
};

fn lab_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(NS_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// A UDP socket bound to `addr` inside `ns`; it stays in that namespace.
fn socket_in(ns: &str, addr: IpAddr) -> UdpSocket {
    let sock = in_netns(ns, || UdpSocket::bind(SocketAddr::new(addr, 0)))
        .unwrap()
        .unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"));
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock
}

/// Sends a datagram from `src` (in `src_ns`) to `dst` (in `dst_ns`) and back; checks both ends
/// see each other's address, i.e. the traffic crossed the bridge of that network.
fn round_trip(src_ns: &str, src: IpAddr, dst_ns: &str, dst: IpAddr) {
    let client = socket_in(src_ns, src);
    let server = socket_in(dst_ns, dst);
    let server_addr = server.local_addr().unwrap();
    client.send_to(b"ping", server_addr).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = server
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("{src} -> {dst}: {e}"));
    assert_eq!((&buf[..n], from.ip()), (&b"ping"[..], src));
    server.send_to(b"pong", from).unwrap();
    let (n, from) = client
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("{dst} -> {src}: {e}"));
    assert_eq!((&buf[..n], from), (&b"pong"[..], server_addr));
}

#[test]
fn two_node_network_is_reachable_and_torn_down() {
    if !is_root() {
        eprintln!("skipped: the lab network needs root");
        return;
    }
    let net = Network::build(2).unwrap();
    assert_eq!(
        lab_namespaces().len(),
        4,
        "switch, two nodes, controller: {:?}",
        lab_namespaces()
    );

    for iface in INTERFACES {
        for family in [Family::Ipv4, Family::Ipv6] {
            round_trip(
                &node_ns(1),
                node_addr(1, &iface, family),
                &node_ns(2),
                node_addr(2, &iface, family),
            );
        }
    }
    // Agents reach the controller over eth0, in both families.
    for family in [Family::Ipv4, Family::Ipv6] {
        round_trip(
            &node_ns(2),
            node_addr(2, &ETH0, family),
            CONTROLLER_NS,
            ETH0.addr(CONTROLLER_HOST, family),
        );
    }

    // No way out of the lab.
    for args in [["ip", "-4", "route"], ["ip", "-6", "route"]] {
        let routes = String::from_utf8(net.exec(1, &args).unwrap().stdout).unwrap();
        assert!(!routes.contains("default"), "{routes}");
    }
    // exec reports a failing command with its stderr, and refuses unknown nodes.
    let err = net
        .exec(1, &["ip", "link", "show", "nosuchdev"])
        .unwrap_err();
    assert!(
        matches!(&err, LabError::Command { command, stderr, .. }
            if command.contains("nosuchdev") && !stderr.is_empty()),
        "{err}"
    );
    assert!(matches!(
        net.exec(3, &["true"]),
        Err(LabError::NoSuchNode { node: 3, nodes: 2 })
    ));

    drop(net);
    assert_eq!(lab_namespaces(), Vec::<String>::new());
}
