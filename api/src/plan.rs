//! The agent <-> controller contract before a round: who the agent is, and what it must probe.
//!
//! An agent learns everything from its plan (peers, addresses, interfaces, pace); it never asks
//! Kubernetes. That keeps the agent free of RBAC and makes the plan the single cap on what an
//! agent will send.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use serde::{Deserialize, Serialize};

pub use meshdoctor_agent_common::{MAX_PATHS, MAX_PROBES_PER_PATH, PathId};

use crate::{
    Name,
    kinds::{DnsProtocol, Family, HttpHeader, HttpMethod, Protocol, Timestamping},
};

/// What an agent tells the controller when it starts, and again whenever it re-registers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRegistration {
    /// Node name: agents are identified by node, as in kdoctor.
    pub node: String,
    pub interfaces: Vec<InterfaceInfo>,
    /// How this agent timestamps probes (eBPF at TC, or the socket fallback).
    pub timestamping: Timestamping,
    /// Port of its probe responders on every address, the same number for UDP (echo) and TCP
    /// (connect and HTTP GET probes); `None` when it runs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_port: Option<u16>,
    /// Its node's labels, where a NetReach's `mesh.topologyKey` finds the node's topology
    /// domain: given by the agent (`--label`, `--zone`) in standalone; in Kubernetes the
    /// controller replaces them with the Node object's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One interface an agent can probe from and answer on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Also NetReach's `spec.target.remoteAgents[].interfaces` (another cluster's registrations,
// copied into the task), hence a schema in the CRD.
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InterfaceInfo {
    /// Name inside the agent's network namespace (`eth0`, `net1`).
    pub name: String,
    /// Network the interface belongs to (the multus network name; the interface name if unknown).
    /// Full meshes pair interfaces of the same network.
    pub network: String,
    /// Its IPv4 address, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    /// Its IPv6 address, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
}

impl InterfaceInfo {
    pub fn addr(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::Ipv4 => self.ipv4.map(IpAddr::V4),
            Family::Ipv6 => self.ipv6.map(IpAddr::V6),
        }
    }
}

/// TCP probes leave from source port `TCP_PROBE_PORT_BASE + seq`: with the path's addresses
/// and the destination port, the 4-tuple names the probe, so that both ends' observers can
/// timestamp the SYN and SYN-ACK without a cookie (a SYN carries no payload). The range sits
/// above Linux's default ephemeral ports (32768-60999), so it does not collide with other
/// connections, and probes close with a reset, so no TIME_WAIT blocks the next round.
pub const TCP_PROBE_PORT_BASE: u16 = meshdoctor_agent_common::TCP_PORT_BASE;
/// Most TCP probes per path and round: the ports from [`TCP_PROBE_PORT_BASE`] to 65535.
pub const MAX_TCP_PROBES_PER_PATH: u32 = 65536 - TCP_PROBE_PORT_BASE as u32;

/// One round of one task, as one agent must run it.
///
/// NetReach: every agent of the round gets a plan, also one with no targets: the plan arms its
/// eBPF observers with the round tag so that it records the probes it answers.
///
/// AppHttpHealthy and NetDns: every agent of the roster gets the same plan with `app` set (and
/// no `targets`): it loads that one target at `qps` for `duration_ms`, each request bounded by
/// `timeout_ms`, as kdoctor's agents do; `protocol` is unused. A NetReach plan has no `app`
/// field at all, so its JSON is what it was before application rounds existed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoundPlan {
    pub task: String,
    pub round: u32,
    /// Unique per round across the controller's lifetime; the top 32 bits of every probe id.
    pub round_tag: u32,
    pub protocol: Protocol,
    /// Wall-clock start (Unix milliseconds); agents wait for it so that all are armed first.
    pub start_at_ms: u64,
    pub duration_ms: u64,
    /// Probes per second per target.
    pub qps: u32,
    pub timeout_ms: u64,
    /// The controller stops waiting for this agent's report at this wall-clock time.
    pub report_deadline_ms: u64,
    pub targets: Vec<PlannedTarget>,
    /// TCP and HTTP rounds: the paths toward this agent, so that its observers recognize the
    /// SYNs it answers (ICMP and UDP probes carry their id; a SYN cannot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incoming: Vec<IncomingPath>,
    /// Application rounds only: the target to load; `None` for NetReach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppPlan>,
}

impl RoundPlan {
    /// The protocol that probes `target`: its own, else the round's.
    pub fn protocol_of(&self, target: &PlannedTarget) -> Protocol {
        target.protocol.unwrap_or(self.protocol)
    }

    /// Probes planned per target: `qps x duration`, at least one.
    pub fn probes_per_target(&self) -> u32 {
        ((u64::from(self.qps) * self.duration_ms) / 1000).max(1) as u32
    }
}

/// Most requests an agent keeps outstanding in one application round, whatever the qps and
/// timeout: a bound on sockets (one per in-flight HTTP/1.1 request) and memory per round.
pub const MAX_APP_IN_FLIGHT: u32 = 512;

/// The in-flight bound of an application round: `2 x ceil(qps x timeout)`, within
/// `2..=`[`MAX_APP_IN_FLIGHT`].
///
/// A target answering within the timeout never has more than about `qps x timeout` requests
/// outstanding (a request is due every `1/qps`, and each is done by its timeout), so the bound
/// only bites when the prober itself falls behind; the factor 2 absorbs timer jitter, so that a
/// silent target (every request timing out) shows as timeouts, not as requests not sent.
/// Requests due while the bound is reached are not sent and reported apart (kdoctor has no
/// bound: a slow target makes its agent spawn without limit).
pub fn app_max_in_flight(qps: u32, timeout_ms: u64) -> u32 {
    let in_timeout = (u64::from(qps) * timeout_ms).div_ceil(1000);
    in_timeout
        .saturating_mul(2)
        .clamp(2, u64::from(MAX_APP_IN_FLIGHT)) as u32
}

/// The load of an application round, the same for every agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppPlan {
    pub target: AppTarget,
    /// Most requests outstanding at once ([`app_max_in_flight`]).
    pub max_in_flight: u32,
}

/// What an application round requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum AppTarget {
    /// AppHttpHealthy.
    Http(HttpPlan),
    /// NetDns.
    Dns(DnsPlan),
}

impl AppTarget {
    /// A short human name of the target for reports: `GET https://host/path`,
    /// `udp 192.0.2.254:53 A web.lab.test.`.
    pub fn label(&self) -> String {
        match self {
            Self::Http(h) => format!(
                "{} {}{}",
                h.method,
                h.url,
                if h.http2 { " (HTTP/2)" } else { "" }
            ),
            Self::Dns(d) => format!(
                "{} {} {} {}",
                d.protocol.name(),
                d.server,
                d.record,
                d.domain
            ),
        }
    }
}

/// An AppHttpHealthy target, resolved by the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPlan {
    /// `http://` or `https://` URL.
    pub url: String,
    pub method: HttpMethod,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default)]
    pub http2: bool,
    /// https only; `None` verifies the server against the built-in webpki roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsMaterial>,
    /// `expect.statusCode`: a reply with another status is a failure. Without it any 2xx or
    /// 3xx reply succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
}

/// TLS material as PEM text, shipped in the plan.
///
/// In the standalone backend the controller reads the task's `tlsCaFile`, `tlsCertFile` and
/// `tlsKeyFile` *on its own host* when it plans a round, and sends their contents to every
/// agent: agents need no access to the controller's files, and a file that cannot be read fails
/// the round with a reason naming it. The client key therefore travels over the agent channel,
/// which must be trusted (bearer token; served only to registered agents). Its `Debug` output
/// redacts the key.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsMaterial {
    /// CA certificates the server must chain to, instead of the webpki roots (`ca.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Client certificate chain for mTLS (`tls.crt`), with `key_pem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
    /// Client private key (`tls.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = |p: &Option<String>| p.as_ref().map(|p| format!("{} bytes", p.len()));
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &len(&self.ca_pem))
            .field("cert_pem", &len(&self.cert_pem))
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A NetDns target, resolved by the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsPlan {
    pub server: SocketAddr,
    pub protocol: DnsProtocol,
    /// Fully qualified name to resolve.
    pub domain: String,
    /// kdoctor's rule: `A` for an IPv4 server, `AAAA` for an IPv6 one.
    pub record: DnsRecord,
    /// `tcp-tls` only: the name the server's certificate must carry (`tlsServerName`); `None`
    /// verifies it for the server's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// `tcp-tls` only: the CA certificates (PEM) the server must chain to, read from
    /// `tlsCaFile` by the controller; `None` verifies it against the built-in webpki roots.
    /// Verification is never skipped (kdoctor skips it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_pem: Option<String>,
}

impl DnsPlan {
    /// The name the server's certificate is verified for: `tls_server_name`, or the server's
    /// IP address.
    pub fn server_name(&self) -> String {
        self.tls_server_name
            .clone()
            .unwrap_or_else(|| self.server.ip().to_string())
    }
}

/// The record type a NetDns round asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsRecord {
    A,
    #[serde(rename = "AAAA")]
    Aaaa,
}

impl DnsRecord {
    /// kdoctor's rule: an IPv4 server is asked for `A`, an IPv6 server for `AAAA`.
    pub fn for_server(server: &IpAddr) -> Self {
        match server.to_canonical() {
            IpAddr::V4(_) => Self::A,
            IpAddr::V6(_) => Self::Aaaa,
        }
    }
}

impl std::fmt::Display for DnsRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::A => "A",
            Self::Aaaa => "AAAA",
        })
    }
}

/// One directed pair-path: from this agent's interface to a peer's interface, in one family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedTarget {
    /// Index of the pair-path within the round; bits 16..32 of its probe ids.
    pub path: PathId,
    pub dst_node: Name,
    pub src_interface: Name,
    pub dst_interface: Name,
    pub network: Name,
    pub family: Family,
    pub src_addr: IpAddr,
    pub dst_addr: IpAddr,
    /// UDP, TCP and HTTP probes: the destination agent's responder port; `None` when it runs
    /// none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// A listed address (NetReach `target.addresses`), not an agent: `dst_node` is the
    /// address as listed, and nobody reports the destination's hooks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// The protocol that probes this target when not the plan's: the Service targets of an
    /// icmp round are probed over http. [`RoundPlan::protocol_of`] says which applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

/// A pair-path toward an agent, as that agent's observers must know it in TCP rounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncomingPath {
    pub path: PathId,
    pub src_addr: IpAddr,
    pub dst_addr: IpAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_per_target_is_qps_times_duration() {
        let plan = RoundPlan {
            task: "t".into(),
            round: 1,
            round_tag: 1,
            protocol: Protocol::Icmp,
            start_at_ms: 0,
            duration_ms: 2500,
            qps: 10,
            timeout_ms: 500,
            report_deadline_ms: 0,
            targets: vec![],
            incoming: vec![],
            app: None,
        };
        assert_eq!(plan.probes_per_target(), 25);
    }

    #[test]
    fn net_reach_plans_have_no_app_field() {
        let json = r#"{"task":"t","round":1,"roundTag":1,"protocol":"icmp","startAtMs":0,"durationMs":1000,"qps":1,"timeoutMs":500,"reportDeadlineMs":0,"targets":[]}"#;
        let plan: RoundPlan = serde_json::from_str(json).unwrap();
        assert_eq!(plan.app, None);
        assert_eq!(serde_json::to_string(&plan).unwrap(), json);
    }

    #[test]
    fn app_plans_round_trip() {
        let http = AppPlan {
            target: AppTarget::Http(HttpPlan {
                url: "https://192.0.2.254:8443/".into(),
                method: HttpMethod::Get,
                headers: vec![HttpHeader::parse("X-Probe: a:b").unwrap()],
                body: None,
                http2: false,
                tls: Some(TlsMaterial {
                    ca_pem: Some("CA".into()),
                    cert_pem: Some("CERT".into()),
                    key_pem: Some("SECRET KEY".into()),
                }),
                expect_status: Some(200),
            }),
            max_in_flight: 4,
        };
        let json = serde_json::to_value(&http).unwrap();
        assert_eq!(json["target"]["kind"], "http");
        assert_eq!(json["target"]["method"], "GET");
        assert_eq!(json["target"]["headers"][0], "X-Probe: a:b");
        assert_eq!(serde_json::from_value::<AppPlan>(json).unwrap(), http);
        assert_eq!(http.target.label(), "GET https://192.0.2.254:8443/");
        let AppTarget::Http(h) = &http.target else {
            unreachable!()
        };
        let debug = format!("{:?}", h.tls);
        assert!(
            !debug.contains("SECRET") && debug.contains("redacted"),
            "{debug}"
        );

        let dns = AppTarget::Dns(DnsPlan {
            server: "192.0.2.254:53".parse().unwrap(),
            protocol: DnsProtocol::TcpTls,
            domain: "web.lab.test.".into(),
            record: DnsRecord::for_server(&"192.0.2.254".parse().unwrap()),
            tls_server_name: None,
            tls_ca_pem: None,
        });
        let json = serde_json::to_value(&dns).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "dns", "server": "192.0.2.254:53", "protocol": "tcp-tls",
                               "domain": "web.lab.test.", "record": "A"})
        );
        assert_eq!(dns.label(), "tcp-tls 192.0.2.254:53 A web.lab.test.");
        assert_eq!(
            DnsRecord::for_server(&"2001:db8::1".parse().unwrap()),
            DnsRecord::Aaaa
        );
    }

    #[test]
    fn dns_plans_carry_the_tls_name_and_ca_only_when_set() {
        // A plan written before the TLS fields existed still reads, and verifies for the IP.
        let old = r#"{"server":"[2001:db8::53]:853","protocol":"tcp-tls","domain":"a.test.","record":"AAAA"}"#;
        let plan: DnsPlan = serde_json::from_str(old).unwrap();
        assert_eq!(
            (plan.tls_server_name.as_deref(), plan.tls_ca_pem.as_deref()),
            (None, None)
        );
        assert_eq!(plan.server_name(), "2001:db8::53");
        assert_eq!(serde_json::to_string(&plan).unwrap(), old);

        let tls = DnsPlan {
            tls_server_name: Some("dns.lab.test".into()),
            tls_ca_pem: Some("CA PEM".into()),
            ..plan
        };
        let json = serde_json::to_value(&tls).unwrap();
        assert_eq!(json["tlsServerName"], "dns.lab.test");
        assert_eq!(json["tlsCaPem"], "CA PEM");
        assert_eq!(serde_json::from_value::<DnsPlan>(json).unwrap(), tls);
        assert_eq!(tls.server_name(), "dns.lab.test");
    }

    #[test]
    fn in_flight_bound_is_twice_the_requests_within_a_timeout() {
        assert_eq!(app_max_in_flight(10, 500), 10);
        assert_eq!(app_max_in_flight(5, 500), 6);
        assert_eq!(app_max_in_flight(1, 100), 2);
        assert_eq!(app_max_in_flight(0, 500), 2);
        assert_eq!(app_max_in_flight(50_000, 60_000), MAX_APP_IN_FLIGHT);
    }
}
