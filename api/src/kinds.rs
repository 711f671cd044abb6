//! The small enums every stage of the data flow names, from the task spec through the plan to
//! the reports: the task kind, the address family, the probe protocol, the DNS transport, the
//! HTTP method and header, and how an agent timestamps. A leaf: it depends on nothing else in
//! the crate, so that tasks, plans and reports can all use it without depending on each other.

use std::{fmt, net::IpAddr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The kind of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskKind {
    NetReach,
    AppHttpHealthy,
    /// Spelled `Netdns` by kdoctor; both spellings are accepted.
    #[serde(alias = "Netdns")]
    NetDns,
}

impl TaskKind {
    pub const ALL: [TaskKind; 3] = [Self::NetReach, Self::AppHttpHealthy, Self::NetDns];

    /// The kind named by a document's `kind`, in either spelling.
    pub fn from_kind(kind: &str) -> Option<Self> {
        match kind {
            "NetReach" => Some(Self::NetReach),
            "AppHttpHealthy" => Some(Self::AppHttpHealthy),
            "NetDns" | "Netdns" => Some(Self::NetDns),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NetReach => "NetReach",
            Self::AppHttpHealthy => "AppHttpHealthy",
            Self::NetDns => "NetDns",
        }
    }

    /// The plural of the kind's custom resource (`kubectl get netreaches`), which also names
    /// a task object in messages: `netreaches/mesh`. Spelled here as well as in the kube derive
    /// because this module builds without kube; the controller's tests check they agree.
    pub fn plural(self) -> &'static str {
        match self {
            Self::NetReach => "netreaches",
            Self::AppHttpHealthy => "apphttphealthies",
            Self::NetDns => "netdnses",
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::Ipv4,
            IpAddr::V6(_) => Self::Ipv6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        })
    }
}

/// NetReach probe protocol (`spec.request.protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// ICMP / ICMPv6 echo, answered by the peer's kernel.
    #[default]
    Icmp,
    /// A UDP datagram answered by the peer agent's responder: crosses port-based policy,
    /// conntrack and a user-space receiver, which ICMP does not.
    Udp,
    /// A TCP connect to the peer agent's responder: the SYN is the request, the SYN-ACK the
    /// reply; what services' traffic meets (SYN policy, conntrack, the listen backlog).
    Tcp,
    /// An HTTP GET over a fresh TCP connection to the peer agent's responder: the connect
    /// probe plus a user-space server answering; kdoctor's NetReach probe.
    Http,
}

impl Protocol {
    /// Whether the probe is a TCP connection, recognized by the observers from its 4-tuple
    /// ([`crate::plan::TCP_PROBE_PORT_BASE`]) instead of a cookie in its payload.
    pub fn is_tcp(self) -> bool {
        matches!(self, Self::Tcp | Self::Http)
    }

    /// The lowercase name the task spec uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Icmp => "icmp",
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Http => "http",
        }
    }

    pub const ALL: [Protocol; 4] = [Self::Icmp, Self::Udp, Self::Tcp, Self::Http];
}

impl std::str::FromStr for Protocol {
    type Err = String;

    /// A [`Protocol::name`], in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("expected icmp, tcp, udp or http, got {s:?}"))
    }
}

/// DNS transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
pub enum DnsProtocol {
    #[default]
    #[serde(rename = "udp")]
    Udp,
    #[serde(rename = "tcp")]
    Tcp,
    /// DNS over TLS. kdoctor does not verify the server's certificate; meshdoctor always does.
    #[serde(rename = "tcp-tls")]
    TcpTls,
}

impl DnsProtocol {
    /// The server port when `targetUser.port` is omitted: 853 for DNS over TLS (RFC 7858; kdoctor
    /// keeps 53, where no DoT server listens), 53 otherwise.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Udp | Self::Tcp => 53,
            Self::TcpTls => 853,
        }
    }

    /// kdoctor's name of the transport: `udp`, `tcp`, `tcp-tls`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::TcpTls => "tcp-tls",
        }
    }
}

/// The HTTP methods kdoctor's CRD allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Patch,
    Head,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Patch => "PATCH",
            Self::Head => "HEAD",
        }
    }
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request header, written `"Key: Value"` and split on the first `:` only, so a value may
/// contain `:` (kdoctor splits on every `:` and keeps the first piece).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

impl HttpHeader {
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some((name, value)) = s.split_once(':') else {
            return Err(format!("expected \"Key: Value\", got {s:?} (no ':')"));
        };
        let name = name.trim();
        // RFC 9110 token characters.
        let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(tchar) {
            return Err(format!(
                "header name {name:?} in {s:?} is not an HTTP token (letters, digits, \
                 !#$%&'*+-.^_`|~)"
            ));
        }
        let value = value.trim();
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(format!(
                "header value of {name:?} contains a control character (CR, LF, NUL, ...)"
            ));
        }
        Ok(Self {
            name: name.into(),
            value: value.into(),
        })
    }
}

impl fmt::Display for HttpHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.value)
    }
}

impl Serialize for HttpHeader {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HttpHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// How an agent timestamps probe packets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Timestamping {
    /// eBPF TC observers on every probed interface, `bpf_ktime_get_ns`.
    #[default]
    Ebpf,
    /// No eBPF: user-space timestamps only, no per-hook presence.
    Socket,
}

impl fmt::Display for Timestamping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ebpf => "ebpf",
            Self::Socket => "socket",
        })
    }
}

/// Which pairs a round probes: `full` (every pair), `sampled` (`peers` per agent on a hash
/// ring, rotated each round), `topology` (every pair inside a domain, `peers` across), `auto`
/// (the full mesh while it fits the controller's probe budget, else the best shape that does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum MeshMode {
    Full,
    Sampled,
    Topology,
    #[default]
    Auto,
}

impl MeshMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Sampled => "sampled",
            Self::Topology => "topology",
            Self::Auto => "auto",
        }
    }
}

impl std::fmt::Display for MeshMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
