//! Which interfaces the agent probes over, and their addresses.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
};

use meshdoctor_api::InterfaceInfo;

/// An interface to probe over, as named on the command line: `net1` or `net1=<network>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceArg {
    pub name: String,
    pub network: String,
}

impl std::str::FromStr for InterfaceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, network) = s.split_once('=').unwrap_or((s, s));
        let ok = |x: &str| !x.is_empty() && !x.contains(char::is_whitespace);
        if !ok(name) || !ok(network) || name.len() > 15 {
            return Err(format!(
                "expected INTERFACE or INTERFACE=NETWORK (interface names have at most 15 characters), got {s:?}"
            ));
        }
        Ok(Self {
            name: name.into(),
            network: network.into(),
        })
    }
}

/// An interface with its index in the agent's network namespace.
#[derive(Debug, Clone)]
pub struct Interface {
    pub info: InterfaceInfo,
    pub ifindex: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("listing interfaces: {0}")]
    List(#[source] nix::Error),
    #[error("interface {0:?} does not exist in this network namespace")]
    Missing(String),
    #[error("interface {0:?} has neither an IPv4 nor a global IPv6 address")]
    NoAddress(String),
    #[error("no interface to probe over: every interface is down or loopback")]
    None,
}

/// Resolves the interfaces to probe over: the given ones, or every interface that is up and not
/// loopback. Picks each interface's first IPv4 and first non-link-local IPv6 address.
pub fn discover(wanted: &[InterfaceArg]) -> Result<Vec<Interface>, InterfaceError> {
    let mut found: BTreeMap<String, (Option<IpAddr>, Option<IpAddr>, bool)> = BTreeMap::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(InterfaceError::List)? {
        use nix::net::if_::InterfaceFlags as F;
        let usable = ifa.flags.contains(F::IFF_UP) && !ifa.flags.contains(F::IFF_LOOPBACK);
        let e = found.entry(ifa.interface_name.clone()).or_default();
        e.2 |= usable;
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            e.0.get_or_insert(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6()
            && !is_link_local(&v6.ip())
        {
            e.1.get_or_insert(IpAddr::V6(v6.ip()));
        }
    }
    let chosen: Vec<InterfaceArg> = if wanted.is_empty() {
        found
            .iter()
            .filter(|(_, (_, _, usable))| *usable)
            .map(|(name, _)| InterfaceArg {
                name: name.clone(),
                network: name.clone(),
            })
            .collect()
    } else {
        wanted.to_vec()
    };
    if chosen.is_empty() {
        return Err(InterfaceError::None);
    }
    chosen
        .into_iter()
        .map(|arg| {
            let (v4, v6, _) = found
                .get(&arg.name)
                .ok_or_else(|| InterfaceError::Missing(arg.name.clone()))?;
            if v4.is_none() && v6.is_none() {
                return Err(InterfaceError::NoAddress(arg.name));
            }
            let ifindex = nix::net::if_::if_nametoindex(arg.name.as_str())
                .map_err(|_| InterfaceError::Missing(arg.name.clone()))?;
            Ok(Interface {
                info: InterfaceInfo {
                    name: arg.name,
                    network: arg.network,
                    ipv4: v4.and_then(|a| match a {
                        IpAddr::V4(a) => Some(a),
                        IpAddr::V6(_) => None,
                    }),
                    ipv6: v6.and_then(|a| match a {
                        IpAddr::V6(a) => Some(a),
                        IpAddr::V4(_) => None,
                    }),
                },
                ifindex,
            })
        })
        .collect()
}

fn is_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_arg_forms() {
        let a: InterfaceArg = "net1=macvlan-a".parse().unwrap();
        assert_eq!((a.name.as_str(), a.network.as_str()), ("net1", "macvlan-a"));
        let b: InterfaceArg = "eth0".parse().unwrap();
        assert_eq!(b.network, "eth0");
        for bad in ["", "=x", "eth0=", "a b", "averyveryverylongname"] {
            assert!(bad.parse::<InterfaceArg>().is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_is_found_when_named() {
        // `lo` exists in every netns; asking for it by name bypasses the up/non-loopback rule.
        let lo = discover(&["lo=local".parse().unwrap()]).unwrap();
        assert_eq!(lo[0].info.ipv4, Some(std::net::Ipv4Addr::LOCALHOST));
        assert!(matches!(
            discover(&["nosuchif0".parse().unwrap()]),
            Err(InterfaceError::Missing(_))
        ));
        assert!(is_link_local(&"fe80::1".parse().unwrap()));
        assert!(!is_link_local(&"2001:db8::1".parse().unwrap()));
    }
}
