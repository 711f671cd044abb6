//! Where probes and load may go: the allowlist of the controller (`--allow-targets`, what
//! tasks may name) and, again, of each agent (what it agrees to send whatever its controller
//! asks), so that neither a mistaken task nor a compromised controller turns the agents into a
//! traffic cannon toward an arbitrary address. Both sides match the same way, here.

use std::{fmt, net::IpAddr, str::FromStr};

use crate::{AppTarget, RoundPlan};

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// An address block (a single address is a /32 or /128).
    Net { addr: IpAddr, prefix: u8 },
    /// A host name, exact, or `*.suffix` for every name below `suffix`.
    Host(String),
}

impl FromStr for Allowed {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "expected a CIDR (10.0.0.0/8, 2001:db8::/32), an address or a host name \
                 (api.example.com, *.svc.cluster.local), got {s:?}"
            )
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        if let Ok(addr) = addr.parse::<IpAddr>() {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = prefix.unwrap_or(max);
            // An IPv4-mapped block shorter than /96 would reach beyond IPv4's mapped range.
            let mapped = addr.is_ipv6() && addr.to_canonical().is_ipv4();
            if prefix > max || mapped && prefix < 96 {
                return Err(bad());
            }
            return Ok(Self::Net { addr, prefix });
        }
        let name = s.strip_prefix("*.").unwrap_or(s);
        let valid = prefix.is_none()
            && !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(bad());
        }
        Ok(Self::Host(s.to_ascii_lowercase()))
    }
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Net { addr, prefix } => write!(f, "{addr}/{prefix}"),
            Self::Host(h) => f.write_str(h),
        }
    }
}

impl Allowed {
    fn admits_addr(&self, ip: IpAddr) -> bool {
        let Self::Net { addr, prefix } = *self else {
            return false;
        };
        // An IPv4-mapped IPv6 address (::ffff:10.0.0.1) is its IPv4 address.
        match (addr.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(have)) => {
                let prefix = if addr.is_ipv6() {
                    prefix.saturating_sub(96)
                } else {
                    prefix
                };
                same_prefix(u32::from(net).into(), u32::from(have).into(), 32, prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(have)) => {
                same_prefix(net.into(), have.into(), 128, prefix)
            }
            _ => false,
        }
    }

    fn admits_host(&self, host: &str) -> bool {
        let Self::Host(allowed) = self else {
            return false;
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match allowed.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
            None => host == *allowed,
        }
    }
}

/// Whether `a` and `b`, numbers `width` bits wide, share their first `prefix` bits.
fn same_prefix(a: u128, b: u128, width: u32, prefix: u8) -> bool {
    let shift = width - u32::from(prefix).min(width);
    shift >= width || a >> shift == b >> shift
}

/// The allowed destinations; empty allows every one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<Allowed>);

impl AllowList {
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    pub fn admits_addr(&self, ip: IpAddr) -> bool {
        self.is_open() || self.0.iter().any(|a| a.admits_addr(ip))
    }

    /// A URL's or a server's host: an address literal (`[2001:db8::1]` too) by blocks, a name
    /// by names.
    pub fn admits_host(&self, host: &str) -> bool {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            Ok(ip) => self.admits_addr(ip),
            Err(_) => self.is_open() || self.0.iter().any(|a| a.admits_host(host)),
        }
    }

    /// The destinations of `plan` this list does not admit, each once: the probe targets for
    /// which `which` is true, and the application target.
    pub fn refused(
        &self,
        plan: &RoundPlan,
        which: impl Fn(&crate::PlannedTarget) -> bool,
    ) -> Vec<String> {
        if self.is_open() {
            return Vec::new();
        }
        let mut out: Vec<String> = plan
            .targets
            .iter()
            .filter(|t| which(t) && !self.admits_addr(t.dst_addr))
            .map(|t| t.dst_addr.to_string())
            .collect();
        match plan.app.as_ref().map(|a| &a.target) {
            Some(AppTarget::Http(h)) => {
                let host = url::Url::parse(&h.url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_string))
                    .unwrap_or_default();
                if !self.admits_host(&host) {
                    out.push(h.url.clone());
                }
            }
            Some(AppTarget::Dns(d)) if !self.admits_addr(d.server.ip()) => {
                out.push(d.server.to_string());
            }
            _ => {}
        }
        out.sort();
        out.dedup();
        out
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&all.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList(entries.iter().map(|e| e.parse().unwrap()).collect())
    }

    #[test]
    fn blocks_and_names_admit_what_they_cover() {
        let l = list(&[
            "10.0.0.0/8",
            "2001:db8::/32",
            "192.0.2.7",
            "*.svc.cluster.local",
            "api.example.com",
        ]);
        for ok in ["10.1.2.3", "2001:db8:1::5", "192.0.2.7", "::ffff:10.9.9.9"] {
            assert!(l.admits_addr(ok.parse().unwrap()), "{ok}");
        }
        for no in ["11.0.0.1", "2001:db9::1", "192.0.2.8", "::1"] {
            assert!(!l.admits_addr(no.parse().unwrap()), "{no}");
        }
        for ok in [
            "web.ns.svc.cluster.local",
            "API.example.com.",
            "[2001:db8::1]",
            "10.0.0.1",
        ] {
            assert!(l.admits_host(ok), "{ok}");
        }
        for no in [
            "svc.cluster.local",
            "evil.com",
            "api.example.com.evil.com",
            "x.example.com",
        ] {
            assert!(!l.admits_host(no), "{no}");
        }
        assert!(
            AllowList::default().admits_host("anything")
                && list(&["0.0.0.0/0"]).admits_addr("8.8.8.8".parse().unwrap())
        );
    }

    #[test]
    fn bad_entries_say_what_was_expected() {
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "",
            "*.",
            "a..b",
            "host/8",
            "ex ample",
        ] {
            let e = bad.parse::<Allowed>().unwrap_err();
            assert!(
                e.contains("expected a CIDR") && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
        assert_eq!(
            list(&["10.0.0.1", "Web.Example.com"]).to_string(),
            "10.0.0.1/32, web.example.com"
        );
    }
}
