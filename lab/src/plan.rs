//! The lab's fixed layout: namespace names, node names, interfaces and addresses.
//!
//! Documentation prefixes only (192.0.2.0/24, 198.51.100.0/24, 2001:db8::/32) in namespaces
//! without any uplink or default route, so no probe can ever leave the machine.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use meshdoctor_api::Family;

/// Every lab namespace starts with this; leftovers are found by it.
pub const NS_PREFIX: &str = "mdlab-";
/// The "switch": holds the two bridges, one per network.
pub const SWITCH_NS: &str = "mdlab-sw";
/// The controller "pod".
pub const CONTROLLER_NS: &str = "mdlab-ctl";
/// Host number of the controller on the `eth0` network.
pub const CONTROLLER_HOST: u8 = 254;
pub const CONTROLLER_PORT: u16 = 7070;
/// How agents reach the controller.
pub const CONTROLLER_URL: &str = "https://192.0.2.254:7070";
/// Port of the second cluster's controller (`LabConfig::second_cluster`), which runs next to the
/// first one in [`CONTROLLER_NS`].
pub const SECOND_CONTROLLER_PORT: u16 = 7071;
/// How the second cluster's agents reach their controller.
pub const SECOND_CONTROLLER_URL: &str = "https://192.0.2.254:7071";
/// Where each agent serves its API and `/metrics`, inside its node.
pub const AGENT_PORT: u16 = 9090;
/// Node `i` has host number `i` on every network, below the controller's.
pub const MAX_NODES: usize = CONTROLLER_HOST as usize - 1;

/// One of the two lab networks, as seen from a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabInterface {
    /// Interface name inside a node (and the controller for `eth0`).
    pub name: &'static str,
    /// Network name the agent is told (`--interface <name>=<network>`).
    pub network: &'static str,
    /// Bridge in [`SWITCH_NS`] joining the network.
    pub bridge: &'static str,
    v4_prefix: [u8; 3],
    v6_subnet: u16,
}

/// The pod network: 192.0.2.0/24 and 2001:db8:0:1::/64.
pub const ETH0: LabInterface = LabInterface {
    name: "eth0",
    network: "default",
    bridge: "br-eth0",
    v4_prefix: [192, 0, 2],
    v6_subnet: 1,
};

/// The multus-like secondary network: 198.51.100.0/24 and 2001:db8:0:2::/64.
pub const NET1: LabInterface = LabInterface {
    name: "net1",
    network: "net1",
    bridge: "br-net1",
    v4_prefix: [198, 51, 100],
    v6_subnet: 2,
};

/// Every node has both interfaces.
pub const INTERFACES: [LabInterface; 2] = [ETH0, NET1];

impl LabInterface {
    pub fn ipv4(&self, host: u8) -> Ipv4Addr {
        let [a, b, c] = self.v4_prefix;
        Ipv4Addr::new(a, b, c, host)
    }

    pub fn ipv6(&self, host: u8) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0, self.v6_subnet, 0, 0, 0, host.into())
    }

    pub fn addr(&self, host: u8, family: Family) -> IpAddr {
        match family {
            Family::Ipv4 => self.ipv4(host).into(),
            Family::Ipv6 => self.ipv6(host).into(),
        }
    }

    /// Prefix lengths of the two subnets.
    pub fn prefix_len(family: Family) -> u8 {
        match family {
            Family::Ipv4 => 24,
            Family::Ipv6 => 64,
        }
    }
}

/// Namespace of node `i` (1-based).
pub fn node_ns(i: usize) -> String {
    format!("{NS_PREFIX}n{i}")
}

/// Node name of node `i`, as the agent registers it.
pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// Host number of node `i` on every network; valid for `1..=MAX_NODES`.
pub fn node_host(i: usize) -> u8 {
    debug_assert!((1..=MAX_NODES).contains(&i));
    i as u8
}

/// Address of node `i` on `iface` in `family`.
pub fn node_addr(i: usize, iface: &LabInterface, family: Family) -> IpAddr {
    iface.addr(node_host(i), family)
}

/// One of the lab's two clusters. Both share the lab network (every node reaches every other),
/// each has its own controller in [`CONTROLLER_NS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// The controller on [`CONTROLLER_PORT`]; every node when there is no second cluster.
    First,
    /// The controller on [`SECOND_CONTROLLER_PORT`]: the last `second_cluster` nodes.
    Second,
}

impl Cluster {
    /// Port the cluster's controller listens on.
    pub fn controller_port(self) -> u16 {
        match self {
            Cluster::First => CONTROLLER_PORT,
            Cluster::Second => SECOND_CONTROLLER_PORT,
        }
    }

    /// How the cluster's agents reach their controller.
    pub fn controller_url(self) -> &'static str {
        match self {
            Cluster::First => CONTROLLER_URL,
            Cluster::Second => SECOND_CONTROLLER_URL,
        }
    }
}

/// The cluster of node `i` (1-based) in a lab of `nodes` nodes whose last `second_cluster` form
/// the second cluster.
pub fn cluster_of(i: usize, nodes: usize, second_cluster: usize) -> Cluster {
    debug_assert!((1..=nodes).contains(&i) && second_cluster < nodes);
    if i > nodes - second_cluster {
        Cluster::Second
    } else {
        Cluster::First
    }
}

/// The topology zone of node `i` (1-based) in a lab of `nodes` nodes split into `zones`
/// consecutive blocks (`zone-1`, `zone-2`, ...); none when `zones` is 0.
pub fn zone_of(i: usize, nodes: usize, zones: usize) -> Option<String> {
    (zones > 0).then(|| format!("zone-{}", (i - 1) * zones / nodes.max(1) + 1))
}

/// Name of the switch-side veth of `iface` for the namespace called `owner` (e.g. `n3-net1`);
/// at most 15 bytes for every node number the plan allows.
pub(crate) fn switch_port(owner: &str, iface: &LabInterface) -> String {
    format!("{owner}-{}", iface.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_are_consecutive_blocks() {
        let zones: Vec<_> = (1..=5).map(|i| zone_of(i, 5, 2).unwrap()).collect();
        assert_eq!(zones, ["zone-1", "zone-1", "zone-1", "zone-2", "zone-2"]);
        assert_eq!(zone_of(3, 5, 0), None);
    }

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(node_addr(1, &ETH0, Family::Ipv4).to_string(), "192.0.2.1");
        assert_eq!(
            node_addr(12, &ETH0, Family::Ipv6).to_string(),
            "2001:db8:0:1::c"
        );
        assert_eq!(
            node_addr(3, &NET1, Family::Ipv4).to_string(),
            "198.51.100.3"
        );
        assert_eq!(
            node_addr(253, &NET1, Family::Ipv6).to_string(),
            "2001:db8:0:2::fd"
        );
        assert_eq!(ETH0.ipv4(CONTROLLER_HOST).to_string(), "192.0.2.254");
        assert_eq!(ETH0.ipv6(CONTROLLER_HOST).to_string(), "2001:db8:0:1::fe");
        assert_eq!(
            CONTROLLER_URL,
            format!("https://{}:{CONTROLLER_PORT}", ETH0.ipv4(CONTROLLER_HOST))
        );
        assert_eq!(
            SECOND_CONTROLLER_URL,
            format!(
                "https://{}:{SECOND_CONTROLLER_PORT}",
                ETH0.ipv4(CONTROLLER_HOST)
            )
        );
    }

    #[test]
    fn the_last_nodes_form_the_second_cluster() {
        let clusters = |nodes, second| -> Vec<Cluster> {
            (1..=nodes).map(|i| cluster_of(i, nodes, second)).collect()
        };
        use Cluster::{First, Second};
        assert_eq!(clusters(3, 0), [First, First, First]);
        assert_eq!(clusters(3, 1), [First, First, Second]);
        assert_eq!(clusters(4, 2), [First, First, Second, Second]);
        assert_eq!(clusters(2, 1), [First, Second]);
        assert_eq!(First.controller_url(), CONTROLLER_URL);
        assert_eq!(Second.controller_url(), SECOND_CONTROLLER_URL);
        assert_eq!(First.controller_port(), CONTROLLER_PORT);
        assert_eq!(Second.controller_port(), SECOND_CONTROLLER_PORT);
    }

    #[test]
    fn names_fit_the_kernel_limits() {
        assert_eq!(node_ns(2), "mdlab-n2");
        assert_eq!(node_name(2), "node-2");
        for iface in INTERFACES {
            assert!(switch_port(&format!("n{MAX_NODES}"), &iface).len() <= 15);
            assert!(switch_port("ctl", &iface).len() <= 15);
        }
    }
}
