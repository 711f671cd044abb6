//! `NetDns` (kdoctor's `Netdns`): every agent sends DNS queries to one server at a fixed rate.
//!
//! The target is either a server of the user's choice (`targetUser`) or a cluster DNS Service
//! (`targetDns`, resolved to its ClusterIPs by the Kubernetes backend), never both. kdoctor's
//! webhook sets no defaults for Netdns (a TODO); here every field has its CRD default, with
//! `perRequestTimeoutInMS` at 500 ms instead of the CRD's 5 ms.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{
    Invalid, Kind, MAX_DNS_QPS, Metadata, SchedulePlan, SuccessCondition, TaskKind, TaskSpec,
    default_duration, default_qps, default_timeout, netreach::agent_spec_warning, validate_expect,
    validate_label, validate_name, validate_request, yes,
};

/// `request.domain` when omitted (kdoctor's CRD default).
pub const DEFAULT_DNS_DOMAIN: &str = "kubernetes.default.svc.cluster.local";

/// A NetDns task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetDns {
    pub api_version: String,
    /// `NetDns`, or kdoctor's spelling `Netdns`, as written.
    pub kind: String,
    pub metadata: Metadata,
    pub spec: NetDnsSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetDnsSpec {
    /// kdoctor's per-task agent workload: accepted, not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_spec: Option<serde_yaml::Value>,
    /// Declared but unused in kdoctor; accepted and unused here too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_agent_node_selector: Option<serde_yaml::Value>,
    #[serde(default)]
    pub schedule: SchedulePlan,
    #[serde(default)]
    pub request: NetDnsRequest,
    #[serde(default)]
    pub expect: SuccessCondition,
    /// Exactly one of `targetUser` and `targetDns`.
    #[serde(default)]
    pub target: NetDnsTarget,
}

/// kdoctor's `NetdnsRequest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetDnsRequest {
    /// Queries per second per agent and server.
    #[serde(default = "default_qps")]
    pub qps: u32,
    #[serde(default = "default_duration")]
    pub duration_in_second: u32,
    #[serde(default = "default_timeout", rename = "perRequestTimeoutInMS")]
    pub per_request_timeout_in_ms: u32,
    /// The name to resolve, made fully qualified (a trailing `.`) when loaded.
    #[serde(default = "default_domain")]
    pub domain: String,
    #[serde(default)]
    pub protocol: DnsProtocol,
}

impl Default for NetDnsRequest {
    fn default() -> Self {
        Self {
            qps: default_qps(),
            duration_in_second: default_duration(),
            per_request_timeout_in_ms: default_timeout(),
            domain: default_domain(),
            protocol: DnsProtocol::default(),
        }
    }
}

fn default_domain() -> String {
    DEFAULT_DNS_DOMAIN.into()
}

/// DNS transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsProtocol {
    #[default]
    #[serde(rename = "udp")]
    Udp,
    #[serde(rename = "tcp")]
    Tcp,
    /// DNS over TLS. kdoctor does not verify the server's certificate.
    #[serde(rename = "tcp-tls")]
    TcpTls,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetDnsTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_user: Option<NetDnsTargetUser>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_dns: Option<NetDnsTargetDns>,
    /// kdoctor: keep every latency sample. meshdoctor always measures latency.
    #[serde(default)]
    pub enable_latency_metric: bool,
}

/// A DNS server of the user's choice: an IPv4 server is asked for `A`, an IPv6 one for `AAAA`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetDnsTargetUser {
    /// The server's IP address.
    pub server: String,
    #[serde(default = "default_dns_port")]
    pub port: u16,
}

fn default_dns_port() -> u16 {
    53
}

impl NetDnsTargetUser {
    /// The server's address; valid once the task passed validation.
    pub fn ip(&self) -> Option<IpAddr> {
        self.server.parse().ok()
    }
}

/// A cluster DNS Service, queried on each of its ClusterIPs (Kubernetes backend). Without
/// `serviceName`, the CoreDNS Service in `kube-system` (kdoctor's behaviour).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetDnsTargetDns {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_namespace: Option<String>,
    /// Query the IPv4 ClusterIPs for `A`.
    #[serde(default = "yes", rename = "testIPv4")]
    pub test_ipv4: bool,
    /// Query the IPv6 ClusterIPs for `AAAA`.
    #[serde(default, rename = "testIPv6")]
    pub test_ipv6: bool,
}

/// Makes `domain` fully qualified.
fn fqdn(domain: &str) -> String {
    let d = domain.trim();
    if d.ends_with('.') {
        d.to_string()
    } else {
        format!("{d}.")
    }
}

fn validate_domain(domain: &str) -> Result<(), Invalid> {
    let field = "spec.request.domain";
    let name = domain.strip_suffix('.').unwrap_or(domain);
    if name.is_empty() {
        return Err(Invalid::new(field, "must name a domain"));
    }
    if name.len() > 253 {
        return Err(Invalid::new(
            field,
            format!("{domain:?} is longer than 253 characters"),
        ));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(Invalid::new(
                field,
                format!(
                    "{domain:?} is not a domain name: label {label:?} must be 1-63 letters, \
                     digits, '-' or '_'"
                ),
            ));
        }
    }
    Ok(())
}

impl Kind for NetDns {
    const KIND: TaskKind = TaskKind::NetDns;

    fn normalize(&mut self) {
        let r = &mut self.spec.request;
        r.domain = fqdn(&r.domain);
    }

    fn validate(&self) -> Result<(), Invalid> {
        validate_name(&self.metadata.name)?;
        let sp = &self.spec;
        sp.schedule.validate()?;
        validate_request(TaskKind::NetDns, MAX_DNS_QPS, self.load(), &sp.schedule)?;
        validate_domain(&sp.request.domain)?;
        validate_expect(sp.expect.success_rate, sp.expect.mean_access_delay_in_ms)?;
        match (&sp.target.target_user, &sp.target.target_dns) {
            (Some(_), Some(_)) => Err(Invalid::new(
                "spec.target",
                "set exactly one of targetUser and targetDns, not both",
            )),
            (None, None) => Err(Invalid::new(
                "spec.target",
                "set one of targetUser {server, port} (a DNS server) or targetDns \
                 {serviceName, serviceNamespace} (a cluster DNS Service)",
            )),
            (Some(user), None) => {
                if user.ip().is_none() {
                    return Err(Invalid::new(
                        "spec.target.targetUser.server",
                        format!("expected an IP address, got {:?}", user.server),
                    ));
                }
                if user.port == 0 {
                    return Err(Invalid::new(
                        "spec.target.targetUser.port",
                        "must be 1..=65535, got 0",
                    ));
                }
                Ok(())
            }
            (None, Some(dns)) => {
                let f = |n: &str| format!("spec.target.targetDns.{n}");
                if let Some(name) = &dns.service_name {
                    validate_label(&f("serviceName"), name)?;
                    let Some(ns) = &dns.service_namespace else {
                        return Err(Invalid::new(
                            f("serviceNamespace"),
                            "required with serviceName",
                        ));
                    };
                    validate_label(&f("serviceNamespace"), ns)?;
                } else if dns.service_namespace.is_some() {
                    return Err(Invalid::new(
                        f("serviceName"),
                        "required with serviceNamespace (without both, the CoreDNS Service in \
                         kube-system is used)",
                    ));
                }
                if !dns.test_ipv4 && !dns.test_ipv6 {
                    return Err(Invalid::new(
                        "spec.target.targetDns",
                        "at least one of testIPv4 and testIPv6 must be true",
                    ));
                }
                Ok(())
            }
        }
    }
}

impl NetDns {
    super::parsers!();
}

impl TaskSpec for NetDns {
    super::common_accessors!();

    fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.spec.agent_spec.is_some() {
            w.push(agent_spec_warning());
        }
        if self.spec.source_agent_node_selector.is_some() {
            w.push(
                "spec.sourceAgentNodeSelector: ignored (kdoctor declares it but never uses it)"
                    .into(),
            );
        }
        if self.spec.target.target_dns.is_some() {
            w.push(
                "spec.target.targetDns: cluster DNS Services are resolved by the Kubernetes \
                 backend only"
                    .into(),
            );
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::tests::assert_err;

    const GOOD: &str = "
apiVersion: meshdoctor.io/v1beta1
kind: NetDns
metadata:
  name: dns
spec:
  schedule:
    schedule: '@every 1m'
    roundNumber: 10
  request:
    qps: 100
    durationInSecond: 5
    domain: example.org
    protocol: tcp
  target:
    targetUser:
      server: 'fd00::53'
";

    #[test]
    fn parses_with_defaults() {
        let t = NetDns::from_yaml("f", GOOD).unwrap();
        let r = &t.spec.request;
        assert_eq!(
            (r.domain.as_str(), r.protocol),
            ("example.org.", DnsProtocol::Tcp)
        );
        assert_eq!(r.per_request_timeout_in_ms, 500);
        let user = t.spec.target.target_user.as_ref().unwrap();
        assert_eq!(
            (user.ip(), user.port),
            (Some("fd00::53".parse().unwrap()), 53)
        );
        assert!(t.warnings().is_empty());

        let kdoctor = "
apiVersion: kdoctor.io/v1beta1
kind: Netdns
metadata:
  name: netdns-cluster
spec:
  schedule:
    schedule: 0 1
    roundNumber: 2
  sourceAgentNodeSelector:
    matchLabels: {kubernetes.io/os: linux}
  target:
    targetDns:
      testIPv6: true
  request:
    protocol: tcp-tls
  expect:
    successRate: 1
";
        let t = NetDns::from_yaml("f", kdoctor).unwrap();
        assert_eq!(
            t.spec.request.domain,
            "kubernetes.default.svc.cluster.local."
        );
        assert_eq!(t.spec.request.protocol, DnsProtocol::TcpTls);
        let dns = t.spec.target.target_dns.as_ref().unwrap();
        // testIPv4 keeps its default when omitted next to testIPv6.
        assert!(dns.test_ipv4 && dns.test_ipv6 && dns.service_name.is_none());
        let w = t.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("spec.sourceAgentNodeSelector: "), "{w:?}");
        assert!(w[1].starts_with("spec.target.targetDns: "), "{w:?}");
    }

    #[test]
    fn bad_input_names_the_field() {
        for (from, to, field, says) in [
            (
                "    targetUser:\n      server: 'fd00::53'\n",
                "    targetUser: {server: 10.0.0.10}\n    targetDns: {serviceName: coredns, serviceNamespace: kube-system}\n",
                "spec.target",
                "set exactly one of targetUser and targetDns, not both",
            ),
            (
                "    targetUser:\n      server: 'fd00::53'\n",
                "    enableLatencyMetric: true\n",
                "spec.target",
                "set one of targetUser",
            ),
            (
                "'fd00::53'",
                "dns.example",
                "spec.target.targetUser.server",
                "expected an IP address, got \"dns.example\"",
            ),
            (
                "'fd00::53'",
                "'fd00::53'\n      port: 0",
                "spec.target.targetUser.port",
                "must be 1..=65535",
            ),
            (
                "'fd00::53'",
                "'fd00::53'\n      port: 65536",
                "spec.target.targetUser.port",
                "invalid value: integer `65536`",
            ),
            (
                "protocol: tcp",
                "protocol: doh",
                "spec.request.protocol",
                "unknown variant `doh`, expected one of `udp`, `tcp`, `tcp-tls`",
            ),
            (
                "domain: example.org",
                "domain: 'exa mple.org'",
                "spec.request.domain",
                "label \"exa mple\"",
            ),
            (
                "domain: example.org",
                "domain: a..b",
                "spec.request.domain",
                "label \"\"",
            ),
            (
                "domain: example.org",
                "domain: '.'",
                "spec.request.domain",
                "must name a domain",
            ),
            (
                "qps: 100",
                "qps: 50001",
                "spec.request.qps",
                "must be 1..=50000 (NetDns",
            ),
            (
                "durationInSecond: 5",
                "durationInSecond: 60",
                "spec.request.durationInSecond",
                "1m0.5s) is longer than the 1m0s between @every rounds",
            ),
            (
                "roundNumber: 10",
                "roundNumber: 0",
                "spec.schedule.roundNumber",
                "must be -1 (forever) or at least 1",
            ),
            (
                "  target:\n",
                "  expect: {statusCode: 200}\n  target:\n",
                "spec.expect.statusCode",
                "unknown field `statusCode`",
            ),
        ] {
            let yaml = GOOD.replace(from, to);
            assert_ne!(yaml, GOOD, "{from}");
            assert_err(&yaml, field, says);
        }
        let dns = |body: &str| {
            GOOD.replace(
                "    targetUser:\n      server: 'fd00::53'\n",
                &format!("    targetDns: {body}\n"),
            )
        };
        assert!(NetDns::from_yaml("f", &dns("{}")).is_ok());
        assert_err(
            &dns("{serviceName: coredns}"),
            "spec.target.targetDns.serviceNamespace",
            "required with serviceName",
        );
        assert_err(
            &dns("{serviceNamespace: kube-system}"),
            "spec.target.targetDns.serviceName",
            "required with serviceNamespace",
        );
        assert_err(
            &dns("{serviceName: CoreDNS, serviceNamespace: kube-system}"),
            "spec.target.targetDns.serviceName",
            "not a Kubernetes name",
        );
        assert_err(
            &dns("{testIPv4: false}"),
            "spec.target.targetDns",
            "at least one of testIPv4 and testIPv6",
        );
    }
}
