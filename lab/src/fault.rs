//! Fault injection with nftables: see [`Fault`].

use std::{fmt, str::FromStr};

use meshdoctor_agent_common::{PROBE_MAGIC, UDP_KIND_OFFSET};
use meshdoctor_api::{Direction, Family, Packet, Protocol, Segment, TCP_PROBE_PORT_BASE};

use crate::{
    LabError,
    plan::{INTERFACES, SWITCH_NS, node_ns, switch_port},
};

/// The spec syntax, quoted by every parse error.
pub const FAULT_SYNTAX: &str =
    "NODE:IFACE:DIR:FAMILY:RATE[:link|stack][:requests|replies][:icmp|udp|tcp|http]";
/// Every fault table's name starts with this;
/// [`Network::clear_faults`](crate::Network::clear_faults) finds them by it.
pub const FAULT_TABLE_PREFIX: &str = "lab_fault_";
/// `numgen random mod RATE_SCALE < permille`: the rate's resolution is 0.1%.
const RATE_SCALE: u32 = 1000;

/// Random loss of the probe packets of one protocol at one place of the lab, made with nftables
/// (never netem), injected with [`Lab::inject`](crate::Lab::inject),
/// [`LabConfig::faults`](crate::LabConfig::faults) or [`Network::inject`](crate::Network::inject).
///
/// A fault names a node, one of its interfaces, a direction, an address family, a loss rate
/// and a [`Segment`]:
///
/// - **link** loss happens outside the node, in the switch ([`SWITCH_NS`]): an egress fault
///   drops the node's packets as they enter the bridge from its port (they left the node and
///   never arrive anywhere); an ingress fault drops packets toward the node as the bridge
///   forwards them to its port (they left the peer and never reach the node).
/// - **stack** loss happens inside the node: an ingress fault drops in the input hook (after the
///   interface, before the socket or the kernel's ICMP responder); an egress fault drops in the
///   output hook (before the interface; a local sender sees `EPERM`).
///
/// Only probe packets of the fault's family and protocol match: ICMP / ICMPv6 echo requests and
/// replies (the default), UDP datagrams with the probe cookie, or the SYN and SYN-ACK of TCP
/// probe connections (client port from `TCP_PROBE_PORT_BASE`: also HTTP probes' handshakes);
/// optionally only requests or only replies. Neighbour discovery, ARP and the agents' traffic
/// with the controller are never touched. Every
/// fault is one nft table of its own (see [`Fault::table`]), so faults at different places
/// coexist, also on one node, and loading a fault at the place of an earlier one replaces it.
///
/// The spec syntax, for `cargo xtask lab --fault` and tests:
/// `NODE:IFACE:DIR:FAMILY:RATE[:link|stack][:requests|replies][:icmp|udp|tcp|http]`, e.g.
/// `node-2:net1:egress:ipv6:30`, `3:eth0:ingress:4:2.5%:stack:replies` or
/// `2:eth0:ingress:4:50:tcp`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// Node number, from 1.
    pub node: usize,
    /// One of the lab's interfaces ([`INTERFACES`]): `eth0` or `net1`.
    pub interface: String,
    /// From the node's point of view: packets it receives (ingress) or sends (egress).
    pub direction: Direction,
    pub family: Family,
    /// Loss rate in percent, `0 < rate <= 100`, in steps of 0.1.
    pub rate: f64,
    /// Outside the node, in the switch (link), or inside it (stack).
    pub segment: Segment,
    /// Only requests or only replies; `None` drops both.
    pub packets: Option<Packet>,
    /// The probes whose packets are dropped. `Http` drops the same packets as `Tcp` (the
    /// handshake of its connection); it names the task protocol a test runs.
    pub protocol: Protocol,
}

/// A `--fault` spec that does not parse. Every message quotes the whole spec, names the field
/// at fault and says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultParseError {
    #[error("fault {spec:?}: expected {FAULT_SYNTAX}, got {fields} field(s)")]
    Shape { spec: String, fields: usize },
    #[error("fault {spec:?}: NODE is {value:?}, expected a node number >= 1, as `node-N` or `N`")]
    Node { spec: String, value: String },
    #[error(
        "fault {spec:?}: IFACE is {value:?}, expected a lab interface: {}",
        interface_names()
    )]
    Interface { spec: String, value: String },
    #[error("fault {spec:?}: DIR is {value:?}, expected ingress or egress")]
    Direction { spec: String, value: String },
    #[error("fault {spec:?}: FAMILY is {value:?}, expected ipv4 or ipv6 (or 4, 6, v4, v6)")]
    Family { spec: String, value: String },
    #[error(
        "fault {spec:?}: RATE is {value:?}, expected a percentage in (0, 100] in steps of 0.1, \
         e.g. 30, 30% or 2.5"
    )]
    Rate { spec: String, value: String },
    #[error(
        "fault {spec:?}: {value:?} after RATE, expected the SEGMENT (link or stack), the PACKETS \
         (requests or replies) and the PROTOCOL (icmp, udp, tcp or http), each optional, in that order"
    )]
    Trailing { spec: String, value: String },
}

fn interface_names() -> String {
    INTERFACES
        .iter()
        .map(|i| i.name)
        .collect::<Vec<_>>()
        .join(" or ")
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

fn segment_name(s: Segment) -> &'static str {
    match s {
        Segment::Link => "link",
        Segment::Stack => "stack",
    }
}

fn packets_name(p: Packet) -> &'static str {
    match p {
        Packet::Request => "requests",
        Packet::Reply => "replies",
    }
}

/// `30`, `30%`, `2.5`, `100.0` -> permille; at most one decimal, nothing else (no signs,
/// exponents, `inf`).
fn parse_permille(value: &str) -> Option<u32> {
    let number = value.strip_suffix('%').unwrap_or(value);
    let (int, frac) = match number.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (number, "0"),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) || frac.len() > 1 || int.len() > 3 {
        return None;
    }
    let permille = int.parse::<u32>().ok()? * 10 + frac.parse::<u32>().ok()?;
    (1..=RATE_SCALE).contains(&permille).then_some(permille)
}

impl FromStr for Fault {
    type Err = FaultParseError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let fields: Vec<&str> = spec.split(':').collect();
        if !(5..=8).contains(&fields.len()) {
            return Err(FaultParseError::Shape {
                spec: spec.into(),
                fields: fields.len(),
            });
        }
        let owned = |v: &str| (spec.to_string(), v.to_string());
        let is = |v: &str, word: &str| v.eq_ignore_ascii_case(word);

        let node_field = fields[0];
        let number = node_field
            .get(..5)
            .filter(|p| is(p, "node-"))
            .map_or(node_field, |_| &node_field[5..]);
        let node = number
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1 && number.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                let (spec, value) = owned(node_field);
                FaultParseError::Node { spec, value }
            })?;

        let interface = INTERFACES
            .iter()
            .find(|i| is(fields[1], i.name))
            .map(|i| i.name.to_string())
            .ok_or_else(|| {
                let (spec, value) = owned(fields[1]);
                FaultParseError::Interface { spec, value }
            })?;

        let direction = match fields[2] {
            d if is(d, "ingress") => Direction::Ingress,
            d if is(d, "egress") => Direction::Egress,
            d => {
                let (spec, value) = owned(d);
                return Err(FaultParseError::Direction { spec, value });
            }
        };

        let family = match fields[3] {
            f if ["ipv4", "v4", "4"].iter().any(|w| is(f, w)) => Family::Ipv4,
            f if ["ipv6", "v6", "6"].iter().any(|w| is(f, w)) => Family::Ipv6,
            f => {
                let (spec, value) = owned(f);
                return Err(FaultParseError::Family { spec, value });
            }
        };

        let permille = parse_permille(fields[4]).ok_or_else(|| {
            let (spec, value) = owned(fields[4]);
            FaultParseError::Rate { spec, value }
        })?;

        let mut rest = fields[5..].iter().copied().peekable();
        let segment = match rest.peek() {
            Some(s) if is(s, "link") => Some(Segment::Link),
            Some(s) if is(s, "stack") => Some(Segment::Stack),
            _ => None,
        };
        if segment.is_some() {
            rest.next();
        }
        let packets = match rest.peek() {
            Some(p) if is(p, "requests") => Some(Packet::Request),
            Some(p) if is(p, "replies") => Some(Packet::Reply),
            _ => None,
        };
        if packets.is_some() {
            rest.next();
        }
        let protocol = match rest.peek() {
            Some(p) if is(p, "icmp") => Some(Protocol::Icmp),
            Some(p) if is(p, "udp") => Some(Protocol::Udp),
            Some(p) if is(p, "tcp") => Some(Protocol::Tcp),
            Some(p) if is(p, "http") => Some(Protocol::Http),
            _ => None,
        };
        if protocol.is_some() {
            rest.next();
        }
        if let Some(extra) = rest.next() {
            let (spec, value) = owned(extra);
            return Err(FaultParseError::Trailing { spec, value });
        }

        Ok(Fault {
            node,
            interface,
            direction,
            family,
            rate: f64::from(permille) / 10.0,
            segment: segment.unwrap_or(Segment::Link),
            packets,
            protocol: protocol.unwrap_or_default(),
        })
    }
}

/// The canonical spec, which parses back to the same fault:
/// `node-2:net1:egress:ipv6:2.5%:link`, with `:requests` or `:replies` when restricted and
/// `:udp`, `:tcp` or `:http` for those probes.
impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node-{}:{}:{}:{}:{}:{}",
            self.node,
            self.interface,
            direction_name(self.direction),
            self.family,
            self.rate_text(),
            segment_name(self.segment)
        )?;
        if let Some(p) = self.packets {
            write!(f, ":{}", packets_name(p))?;
        }
        if self.protocol != Protocol::Icmp {
            write!(f, ":{}", self.protocol.name())?;
        }
        Ok(())
    }
}

impl Fault {
    /// `rate` in tenths of a percent, when it is a valid rate (`0 < rate <= 100`, a multiple of
    /// 0.1).
    fn permille(&self) -> Option<u32> {
        let scaled = self.rate * 10.0;
        let rounded = scaled.round();
        let valid = scaled.is_finite()
            && (scaled - rounded).abs() < 1e-6
            && (1.0..=f64::from(RATE_SCALE)).contains(&rounded);
        valid.then_some(rounded as u32)
    }

    /// The rate as written in the canonical spec: `30%`, `2.5%`.
    fn rate_text(&self) -> String {
        match self.permille() {
            Some(p) if p % 10 == 0 => format!("{}%", p / 10),
            Some(p) => format!("{}.{}%", p / 10, p % 10),
            None => format!("{}%", self.rate),
        }
    }

    /// Checks the fault against a lab of `nodes` nodes: the node exists, the interface is one
    /// of the lab's, the rate is in (0, 100] in steps of 0.1. The error names the fault.
    pub fn check(&self, nodes: usize) -> Result<(), LabError> {
        let bad = |reason: String| LabError::BadFault {
            fault: self.to_string(),
            reason,
        };
        if !(1..=nodes).contains(&self.node) {
            return Err(bad(format!(
                "no node {} in a lab of {nodes} nodes (nodes are node-1..node-{nodes})",
                self.node
            )));
        }
        if !INTERFACES.iter().any(|i| i.name == self.interface) {
            return Err(bad(format!(
                "no interface {:?} on the lab's nodes (they have {})",
                self.interface,
                interface_names()
            )));
        }
        if self.permille().is_none() {
            return Err(bad(format!(
                "rate {}% is not in (0, 100] in steps of 0.1",
                self.rate
            )));
        }
        Ok(())
    }

    /// The nft table holding this fault, unique per place: node, interface, direction, family,
    /// segment and packets (not the rate), e.g. `lab_fault_n2_net1_egress_ipv6_link_replies`.
    pub fn table(&self) -> String {
        let mut name = format!(
            "{FAULT_TABLE_PREFIX}n{}_{}_{}_{}_{}",
            self.node,
            self.interface,
            direction_name(self.direction),
            self.family,
            segment_name(self.segment)
        );
        if let Some(p) = self.packets {
            name.push('_');
            name.push_str(packets_name(p));
        }
        if self.protocol != Protocol::Icmp {
            name.push('_');
            name.push_str(self.protocol.name());
        }
        name
    }

    /// The nft family of [`table`](Self::table): `bridge` in the switch, `inet` in a node.
    pub fn nft_family(&self) -> &'static str {
        match self.segment {
            Segment::Link => "bridge",
            Segment::Stack => "inet",
        }
    }

    /// The namespace the table lives in: the switch for link faults, the node for stack faults.
    pub fn namespace(&self) -> String {
        match self.segment {
            Segment::Link => SWITCH_NS.to_string(),
            Segment::Stack => node_ns(self.node),
        }
    }

    /// The nft matches on this fault's packets, one rule each: probe packets of its family and
    /// protocol, requests, replies or both.
    fn packet_matches(&self) -> Vec<String> {
        let (l3, icmp) = match self.family {
            Family::Ipv4 => ("ip protocol", "icmp"),
            Family::Ipv6 => ("ip6 nexthdr", "icmpv6"),
        };
        let wanted = |p: Packet| self.packets.is_none_or(|only| only == p);
        match self.protocol {
            Protocol::Icmp => {
                let types = match self.packets {
                    None => "{ echo-request, echo-reply }",
                    Some(Packet::Request) => "echo-request",
                    Some(Packet::Reply) => "echo-reply",
                };
                vec![format!("{icmp} type {types}")]
            }
            // The cookie's magic right after the UDP header, then the kind byte.
            Protocol::Udp => {
                let kind = match self.packets {
                    None => String::new(),
                    Some(p) => format!(
                        " @th,{},8 {}",
                        (8 + UDP_KIND_OFFSET) * 8,
                        match p {
                            Packet::Request => 0,
                            Packet::Reply => 1,
                        }
                    ),
                };
                vec![format!("{l3} udp @th,64,32 {PROBE_MAGIC:#x}{kind}")]
            }
            Protocol::Tcp | Protocol::Http => {
                let ports = format!("{TCP_PROBE_PORT_BASE}-65535");
                let mut rules = Vec::new();
                if wanted(Packet::Request) {
                    rules.push(format!(
                        "{l3} tcp tcp sport {ports} tcp flags & (syn | ack) == syn"
                    ));
                }
                if wanted(Packet::Reply) {
                    rules.push(format!(
                        "{l3} tcp tcp dport {ports} tcp flags & (syn | ack) == syn | ack"
                    ));
                }
                rules
            }
        }
    }

    /// The ruleset loading this fault with `nft -f -` in [`namespace`](Self::namespace). It
    /// first deletes a table of the same name, so loading it replaces a fault at the same place
    /// (and resets its counter). Call [`check`](Self::check) first: an invalid rate is loaded
    /// as 100%.
    pub fn ruleset(&self) -> String {
        let (hook, device) = match (self.segment, self.direction) {
            // In the switch: the node's packets come in from its port; packets for the node
            // go out of its port.
            (Segment::Link, Direction::Egress) => {
                ("forward", format!("iifname \"{}\"", self.port()))
            }
            (Segment::Link, Direction::Ingress) => {
                ("forward", format!("oifname \"{}\"", self.port()))
            }
            (Segment::Stack, Direction::Ingress) => {
                ("input", format!("iifname \"{}\"", self.interface))
            }
            (Segment::Stack, Direction::Egress) => {
                ("output", format!("oifname \"{}\"", self.interface))
            }
        };
        let random = match self.permille() {
            Some(p) if p < RATE_SCALE => format!(" numgen random mod {RATE_SCALE} < {p}"),
            _ => String::new(),
        };
        let (family, table) = (self.nft_family(), self.table());
        let rules: String = self
            .packet_matches()
            .iter()
            .map(|m| format!("\t\t{device} {m}{random} counter drop\n"))
            .collect();
        format!(
            "# {self}\n\
             table {family} {table} {{}}\n\
             delete table {family} {table}\n\
             table {family} {table} {{\n\
             \tchain {hook} {{\n\
             \t\ttype filter hook {hook} priority 0; policy accept;\n\
             {rules}\
             \t}}\n\
             }}\n"
        )
    }

    /// The switch-side port of the fault's interface.
    fn port(&self) -> String {
        let iface = INTERFACES
            .iter()
            .find(|i| i.name == self.interface)
            .copied()
            .unwrap_or(INTERFACES[0]);
        switch_port(&format!("n{}", self.node), &iface)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> Result<Fault, FaultParseError> {
        spec.parse()
    }

    fn fault(node: usize, interface: &str, direction: Direction, family: Family) -> Fault {
        Fault {
            node,
            interface: interface.into(),
            direction,
            family,
            rate: 30.0,
            segment: Segment::Link,
            packets: None,
            protocol: Protocol::Icmp,
        }
    }

    #[test]
    fn parses_every_field_and_its_aliases() {
        let f = parse("node-2:net1:egress:ipv6:30").unwrap();
        assert_eq!(f, fault(2, "net1", Direction::Egress, Family::Ipv6));
        assert_eq!(
            parse("2:eth0:ingress:4:2.5%:stack:replies").unwrap(),
            Fault {
                rate: 2.5,
                segment: Segment::Stack,
                packets: Some(Packet::Reply),
                ..fault(2, "eth0", Direction::Ingress, Family::Ipv4)
            }
        );
        assert_eq!(parse("3:eth0:egress:v6:100").unwrap().rate, 100.0);
        assert_eq!(parse("3:eth0:egress:V4:0.1").unwrap().rate, 0.1);
        assert_eq!(parse("3:eth0:egress:6:100.0%").unwrap().rate, 100.0);
        assert_eq!(
            parse("Node-3:ETH0:Egress:IPv4:30:Link").unwrap(),
            fault(3, "eth0", Direction::Egress, Family::Ipv4)
        );
        // PACKETS without SEGMENT keeps the default segment.
        let f = parse("1:net1:ingress:ipv4:50:requests").unwrap();
        assert_eq!(
            (f.segment, f.packets),
            (Segment::Link, Some(Packet::Request))
        );
    }

    #[test]
    fn display_is_the_canonical_spec_and_parses_back() {
        for (spec, canonical) in [
            ("2:net1:egress:6:30", "node-2:net1:egress:ipv6:30%:link"),
            (
                "node-12:eth0:ingress:v4:2.5%:stack:replies",
                "node-12:eth0:ingress:ipv4:2.5%:stack:replies",
            ),
            (
                "1:eth0:egress:4:0.1:requests",
                "node-1:eth0:egress:ipv4:0.1%:link:requests",
            ),
            (
                "1:eth0:egress:4:100.0:stack",
                "node-1:eth0:egress:ipv4:100%:stack",
            ),
            (
                "2:eth0:ingress:4:50:TCP",
                "node-2:eth0:ingress:ipv4:50%:link:tcp",
            ),
            (
                "2:eth0:ingress:6:5:stack:replies:http",
                "node-2:eth0:ingress:ipv6:5%:stack:replies:http",
            ),
            (
                "2:eth0:ingress:6:5:icmp",
                "node-2:eth0:ingress:ipv6:5%:link",
            ),
        ] {
            let f = parse(spec).unwrap();
            assert_eq!(f.to_string(), canonical);
            assert_eq!(parse(canonical).unwrap(), f);
        }
        // Every combination round-trips.
        for direction in [Direction::Ingress, Direction::Egress] {
            for family in [Family::Ipv4, Family::Ipv6] {
                for segment in [Segment::Link, Segment::Stack] {
                    for packets in [None, Some(Packet::Request), Some(Packet::Reply)] {
                        for rate in [0.1, 7.5, 30.0, 99.9, 100.0] {
                            let f = Fault {
                                rate,
                                segment,
                                packets,
                                ..fault(7, "net1", direction, family)
                            };
                            assert_eq!(parse(&f.to_string()).unwrap(), f, "{f}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_parse_error_names_the_spec_the_field_and_what_was_expected() {
        let cases: [(&str, &str); 22] = [
            ("", "got 1 field(s)"),
            (
                "node-2:eth0:egress:ipv4",
                "expected NODE:IFACE:DIR:FAMILY:RATE",
            ),
            ("1:eth0:egress:ipv4:30:link:replies:tcp:x", "got 9 field(s)"),
            ("node-0:eth0:egress:ipv4:30", "NODE is \"node-0\""),
            ("0:eth0:egress:ipv4:30", "NODE is \"0\""),
            ("n2:eth0:egress:ipv4:30", "NODE is \"n2\""),
            ("node-+2:eth0:egress:ipv4:30", "NODE is \"node-+2\""),
            ("node-:eth0:egress:ipv4:30", "NODE is \"node-\""),
            (
                "2:eth1:egress:ipv4:30",
                "IFACE is \"eth1\", expected a lab interface: eth0 or net1",
            ),
            (
                "2:eth0:out:ipv4:30",
                "DIR is \"out\", expected ingress or egress",
            ),
            (
                "2:eth0:egress:ip:30",
                "FAMILY is \"ip\", expected ipv4 or ipv6",
            ),
            (
                "2:eth0:egress:ipv4:0",
                "RATE is \"0\", expected a percentage in (0, 100]",
            ),
            ("2:eth0:egress:ipv4:0.0", "RATE is \"0.0\""),
            ("2:eth0:egress:ipv4:100.1", "RATE is \"100.1\""),
            (
                "2:eth0:egress:ipv4:2.55",
                "RATE is \"2.55\", expected a percentage in (0, 100] in steps of 0.1",
            ),
            ("2:eth0:egress:ipv4:-5", "RATE is \"-5\""),
            ("2:eth0:egress:ipv4:1e1", "RATE is \"1e1\""),
            ("2:eth0:egress:ipv4:inf", "RATE is \"inf\""),
            ("2:eth0:egress:ipv4:%", "RATE is \"%\""),
            (
                "2:eth0:egress:ipv4:30:wire",
                "\"wire\" after RATE, expected the SEGMENT (link or stack)",
            ),
            ("2:eth0:egress:ipv4:30:replies:link", "\"link\" after RATE"),
            ("2:eth0:egress:ipv4:30:link:stack", "\"stack\" after RATE"),
        ];
        for (spec, expected) in cases {
            let err = parse(spec).expect_err(spec).to_string();
            assert!(
                err.starts_with(&format!("fault {spec:?}: ")),
                "{spec}: {err}"
            );
            assert!(err.contains(expected), "{spec}: {err}");
        }
        assert_eq!(
            parse("2:eth0:egress:ipv4:abc"),
            Err(FaultParseError::Rate {
                spec: "2:eth0:egress:ipv4:abc".into(),
                value: "abc".into()
            })
        );
        assert!(matches!(
            parse("2:eth0:egress:ipv4:30:link:all"),
            Err(FaultParseError::Trailing { value, .. }) if value == "all"
        ));
    }

    #[test]
    fn check_names_the_fault_and_what_the_lab_lacks() {
        let f = parse("node-9:eth0:egress:ipv4:30").unwrap();
        let err = f.check(4).unwrap_err().to_string();
        assert_eq!(
            err,
            "fault node-9:eth0:egress:ipv4:30%:link: no node 9 in a lab of 4 nodes \
             (nodes are node-1..node-4)"
        );
        assert!(f.check(9).is_ok());
        let f = Fault {
            interface: "eth1".into(),
            ..parse("1:eth0:egress:ipv4:30").unwrap()
        };
        assert!(
            f.check(2)
                .unwrap_err()
                .to_string()
                .contains("no interface \"eth1\"")
        );
        for rate in [0.0, 0.05, 100.5, f64::NAN] {
            let f = Fault {
                rate,
                ..parse("1:eth0:egress:ipv4:30").unwrap()
            };
            assert!(
                f.check(2)
                    .unwrap_err()
                    .to_string()
                    .contains("not in (0, 100]"),
                "{rate}"
            );
        }
    }

    #[test]
    fn each_placement_has_its_own_table_hook_and_match() {
        let link_egress = parse("2:eth0:egress:ipv4:30").unwrap();
        assert_eq!(link_egress.namespace(), "mdlab-sw");
        assert_eq!(link_egress.table(), "lab_fault_n2_eth0_egress_ipv4_link");
        assert_eq!(
            link_egress.ruleset(),
            "# node-2:eth0:egress:ipv4:30%:link\n\
             table bridge lab_fault_n2_eth0_egress_ipv4_link {}\n\
             delete table bridge lab_fault_n2_eth0_egress_ipv4_link\n\
             table bridge lab_fault_n2_eth0_egress_ipv4_link {\n\
             \tchain forward {\n\
             \t\ttype filter hook forward priority 0; policy accept;\n\
             \t\tiifname \"n2-eth0\" icmp type { echo-request, echo-reply } \
             numgen random mod 1000 < 300 counter drop\n\
             \t}\n\
             }\n"
        );
        let rule = |spec: &str| {
            let f = parse(spec).unwrap();
            let rs = f.ruleset();
            let line = rs.lines().nth(6).unwrap().trim().to_string();
            let hook = rs.lines().nth(5).unwrap().trim().to_string();
            (f.namespace(), f.nft_family(), hook, line)
        };
        assert_eq!(
            rule("3:net1:ingress:6:2.5:link:requests"),
            (
                "mdlab-sw".into(),
                "bridge",
                "type filter hook forward priority 0; policy accept;".into(),
                "oifname \"n3-net1\" icmpv6 type echo-request numgen random mod 1000 < 25 counter drop"
                    .into()
            )
        );
        assert_eq!(
            rule("3:net1:ingress:4:100:stack:replies"),
            (
                "mdlab-n3".into(),
                "inet",
                "type filter hook input priority 0; policy accept;".into(),
                "iifname \"net1\" icmp type echo-reply counter drop".into()
            )
        );
        assert_eq!(
            rule("3:eth0:egress:6:0.1:stack"),
            (
                "mdlab-n3".into(),
                "inet",
                "type filter hook output priority 0; policy accept;".into(),
                "oifname \"eth0\" icmpv6 type { echo-request, echo-reply } \
                 numgen random mod 1000 < 1 counter drop"
                    .into()
            )
        );
        // TCP: the probe handshake only (client ports from 61440); both kinds, one rule each.
        let tcp = parse("2:eth0:ingress:4:50:stack:tcp").unwrap();
        assert_eq!(tcp.table(), "lab_fault_n2_eth0_ingress_ipv4_stack_tcp");
        let rules: Vec<String> = tcp
            .ruleset()
            .lines()
            .filter(|l| l.contains("drop"))
            .map(|l| l.trim().to_string())
            .collect();
        assert_eq!(
            rules,
            [
                "iifname \"eth0\" ip protocol tcp tcp sport 61440-65535 \
                 tcp flags & (syn | ack) == syn numgen random mod 1000 < 500 counter drop",
                "iifname \"eth0\" ip protocol tcp tcp dport 61440-65535 \
                 tcp flags & (syn | ack) == syn | ack numgen random mod 1000 < 500 counter drop"
            ]
        );
        assert_eq!(
            rule("2:eth0:ingress:6:100:stack:replies:http").3,
            "iifname \"eth0\" ip6 nexthdr tcp tcp dport 61440-65535 \
             tcp flags & (syn | ack) == syn | ack counter drop"
        );
        // UDP: the probe cookie's magic after the header, and the kind byte.
        assert_eq!(
            rule("2:net1:egress:6:100:link:requests:udp").3,
            "iifname \"n2-net1\" ip6 nexthdr udp @th,64,32 0x4d445042 @th,160,8 0 counter drop"
        );
        // Faults differing in anything but the rate get different tables.
        let tables: std::collections::HashSet<String> = [
            "2:eth0:egress:4:30",
            "2:eth0:egress:4:30:link:requests",
            "2:eth0:egress:4:30:link:replies",
            "2:eth0:egress:4:30:stack",
            "2:eth0:egress:4:30:link:udp",
            "2:eth0:egress:4:30:link:tcp",
            "2:eth0:egress:6:30",
            "2:eth0:ingress:4:30",
            "2:net1:egress:4:30",
            "3:eth0:egress:4:30",
        ]
        .iter()
        .map(|s| parse(s).unwrap().table())
        .collect();
        assert_eq!(tables.len(), 10);
        assert_eq!(
            parse("2:eth0:egress:4:30").unwrap().table(),
            parse("2:eth0:egress:4:75").unwrap().table()
        );
    }
}
