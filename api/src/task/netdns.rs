//! `NetDns` (kdoctor's `Netdns`): every agent sends DNS queries to one server at a fixed rate.
//!
//! The target is either a server of the user's choice (`targetUser`) or a cluster DNS Service
//! (`targetDns`, resolved to its ClusterIPs by the Kubernetes backend), never both. kdoctor's
//! webhook sets no defaults for Netdns (a TODO); here every field has its CRD default, with
//! `perRequestTimeoutInMS` at 500 ms instead of the CRD's 5 ms.
//!
//! DNS over TLS (`protocol: tcp-tls`) differs from kdoctor, which skips certificate
//! verification and keeps port 53: here the server's certificate is always verified, against
//! meshdoctor's `targetUser.tlsCaFile` (a PEM file the controller reads and ships in the plan) or
//! the built-in webpki roots, for the name `targetUser.tlsServerName` (by default the server's
//! IP address, which the certificate must then carry); and an omitted `port` is 853 (RFC 7858),
//! not 53.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::{
    Invalid, Kind, MAX_DNS_QPS, Metadata, SchedulePlan, SuccessCondition, TaskSpec,
    agent_spec_warning, default_duration, default_qps, default_timeout, validate_common,
    validate_expect, validate_file, validate_label, yes,
};
use crate::{DnsProtocol, TaskKind};

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

/// `spec` of a NetDns task.
///
/// With the `crd` feature it also derives `NetDnsResource`, the Kubernetes custom resource
/// (`netdnses.meshdoctor.io`); see [`super::NetReachSpec`] for why a task file and a custom
/// resource have separate roots. kdoctor's kind is spelled `Netdns`; the CRD serves `NetDns`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(kube::CustomResource, schemars::JsonSchema))]
#[cfg_attr(
    feature = "crd",
    kube(
        group = "meshdoctor.io",
        version = "v1beta1",
        kind = "NetDns",
        root = "NetDnsResource",
        plural = "netdnses",
        category = "meshdoctor",
        status = "crate::status::TaskStatus",
        doc = "A NetDns task: every agent sends DNS queries to one server at a fixed rate.",
    )
)]
#[cfg_attr(
    feature = "crd",
    schemars(
        description = crate::crd_schema::SPEC_DESCRIPTION,
        transform = crate::crd_schema::plain_docs,
        transform = crate::crd_schema::netdns_target_required
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetDnsSpec {
    /// kdoctor's per-task agent workload: accepted, not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "crd",
        schemars(schema_with = "crate::crd_schema::preserved_object")
    )]
    pub agent_spec: Option<serde_yaml::Value>,
    /// Declared but unused in kdoctor; accepted and unused here too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "crd",
        schemars(schema_with = "crate::crd_schema::preserved_object")
    )]
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
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetDnsRequest {
    /// Queries per second per agent and server.
    #[serde(default = "default_qps")]
    #[cfg_attr(feature = "crd", schemars(range(min = 1, max = MAX_DNS_QPS)))]
    pub qps: u32,
    #[serde(default = "default_duration")]
    #[cfg_attr(feature = "crd", schemars(range(min = 1, max = super::MAX_DURATION_IN_SECOND)))]
    pub duration_in_second: u32,
    #[serde(default = "default_timeout", rename = "perRequestTimeoutInMS")]
    #[cfg_attr(
        feature = "crd",
        schemars(range(min = 1, max = super::MAX_PER_REQUEST_TIMEOUT_IN_MS))
    )]
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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "crd",
    schemars(extend("x-kubernetes-validations" = [{
        "rule": "has(self.targetUser) != has(self.targetDns)",
        "message": "set exactly one of targetUser (a DNS server) and targetDns (a cluster DNS \
                    Service)",
    }]))
)]
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
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetDnsTargetUser {
    /// The server's IP address.
    pub server: String,
    /// Omitted: [`DnsProtocol::default_port`] of `request.protocol` (see [`Self::port`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "crd", schemars(range(min = 1)))]
    pub port: Option<u16>,
    /// meshdoctor's extension, `tcp-tls` only: the CA bundle (PEM file, absolute path read by
    /// the controller when it plans a round and shipped in the plan) the server's certificate
    /// must chain to. Without it the built-in webpki roots are used; verification is never
    /// skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<String>,
    /// meshdoctor's extension, `tcp-tls` only: the DNS name (or IP address) the server's
    /// certificate must carry. Without it, the server's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
}

impl NetDnsTargetUser {
    /// The server's address; valid once the task passed validation.
    pub fn ip(&self) -> Option<IpAddr> {
        self.server.parse().ok()
    }

    /// The port queried over `protocol`: `port`, or the protocol's default.
    pub fn port(&self, protocol: DnsProtocol) -> u16 {
        self.port.unwrap_or(protocol.default_port())
    }

    /// The server's socket address over `protocol`; `None` before validation.
    pub fn addr(&self, protocol: DnsProtocol) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.ip()?, self.port(protocol)))
    }

    /// The TLS fields that are set, by their YAML names.
    fn tls_fields(&self) -> Vec<&'static str> {
        [
            ("tlsCaFile", self.tls_ca_file.is_some()),
            ("tlsServerName", self.tls_server_name.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// A cluster DNS Service, queried on each of its ClusterIPs (Kubernetes backend). Without
/// `serviceName`, the CoreDNS Service in `kube-system` (kdoctor's behaviour).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "crd",
    schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "has(self.serviceName) == has(self.serviceNamespace)",
            "message": "serviceName and serviceNamespace go together (without both, the CoreDNS \
                        Service in kube-system is used)",
        },
        {
            "rule": "self.testIPv4 || self.testIPv6",
            "message": "at least one of testIPv4 and testIPv6 must be true",
        },
    ]))
)]
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

/// Checks a domain name (`spec.request.domain`, `tlsServerName`) for `field`.
fn validate_domain(field: &str, domain: &str) -> Result<(), Invalid> {
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

/// Checks `targetUser`'s TLS fields, whatever the protocol (unused ones only warn).
fn validate_tls(user: &NetDnsTargetUser) -> Result<(), Invalid> {
    let f = |n: &str| format!("spec.target.targetUser.{n}");
    validate_file(&f("tlsCaFile"), user.tls_ca_file.as_ref())?;
    if let Some(name) = &user.tls_server_name
        && name.parse::<IpAddr>().is_err()
    {
        let field = f("tlsServerName");
        let not_a_name = |reason: String| {
            Invalid::new(
                &field,
                format!("expected a DNS name or an IP address: {reason}"),
            )
        };
        validate_domain(&field, name).map_err(|e| not_a_name(e.reason))?;
        // As TLS reads it: a last label of digits only would make it an IPv4 address.
        let last = name
            .trim_end_matches('.')
            .rsplit('.')
            .next()
            .unwrap_or_default();
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return Err(not_a_name(format!(
                "{name:?} is neither (its last label {last:?} is all digits)"
            )));
        }
    }
    Ok(())
}

impl Kind for NetDns {
    const KIND: TaskKind = TaskKind::NetDns;
    const MAX_QPS: u32 = MAX_DNS_QPS;

    fn normalize(&mut self) {
        let r = &mut self.spec.request;
        r.domain = fqdn(&r.domain);
    }

    fn validate(&self) -> Result<(), Invalid> {
        validate_common(self)?;
        let sp = &self.spec;
        validate_domain("spec.request.domain", &sp.request.domain)?;
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
                if user.port == Some(0) {
                    return Err(Invalid::new(
                        "spec.target.targetUser.port",
                        "must be 1..=65535, got 0",
                    ));
                }
                validate_tls(user)
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
        let protocol = self.spec.request.protocol;
        if let Some(user) = &self.spec.target.target_user
            && protocol != DnsProtocol::TcpTls
        {
            for field in user.tls_fields() {
                w.push(format!(
                    "spec.target.targetUser.{field}: not used: spec.request.protocol is {}, not \
                     tcp-tls",
                    protocol.name()
                ));
            }
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
            (user.ip(), user.port(r.protocol)),
            (Some("fd00::53".parse().unwrap()), 53)
        );
        assert_eq!(
            user.addr(r.protocol),
            Some("[fd00::53]:53".parse().unwrap())
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
    fn dns_over_tls_defaults_to_853_and_takes_a_ca_and_a_server_name() {
        let tls = GOOD.replace("protocol: tcp", "protocol: tcp-tls").replace(
            "'fd00::53'\n",
            "'fd00::53'\n      tlsCaFile: /etc/meshdoctor/dns-ca.pem\n      \
             tlsServerName: dns.example\n",
        );
        let t = NetDns::from_yaml("f", &tls).unwrap();
        let user = t.spec.target.target_user.as_ref().unwrap();
        assert_eq!(user.port, None);
        assert_eq!(user.port(DnsProtocol::TcpTls), 853);
        assert_eq!(
            user.addr(t.spec.request.protocol),
            Some("[fd00::53]:853".parse().unwrap())
        );
        assert_eq!(
            user.tls_ca_file.as_deref(),
            Some("/etc/meshdoctor/dns-ca.pem")
        );
        assert_eq!(user.tls_server_name.as_deref(), Some("dns.example"));
        assert!(t.warnings().is_empty(), "{:?}", t.warnings());
        // Written back, the omitted port stays omitted (853 is the protocol's, not the file's).
        let yaml = serde_yaml::to_string(&t).unwrap();
        assert!(!yaml.contains("port:"), "{yaml}");
        assert_eq!(NetDns::from_yaml("f", &yaml).unwrap(), t);

        // An explicit port wins, whatever the protocol; an IP address is a valid server name.
        let explicit = tls
            .replace("'fd00::53'\n", "'fd00::53'\n      port: 5353\n")
            .replace("dns.example", "'fd00::53'");
        let t = NetDns::from_yaml("f", &explicit).unwrap();
        let user = t.spec.target.target_user.as_ref().unwrap();
        assert_eq!(user.port(t.spec.request.protocol), 5353);

        // udp and tcp keep 53 and warn, per field, that the TLS settings are unused.
        for protocol in ["udp", "tcp"] {
            let plain = tls.replace("protocol: tcp-tls", &format!("protocol: {protocol}"));
            let t = NetDns::from_yaml("f", &plain).unwrap();
            let user = t.spec.target.target_user.as_ref().unwrap();
            assert_eq!(user.port(t.spec.request.protocol), 53);
            let w = t.warnings();
            assert_eq!(
                w,
                [
                    format!(
                        "spec.target.targetUser.tlsCaFile: not used: spec.request.protocol is \
                         {protocol}, not tcp-tls"
                    ),
                    format!(
                        "spec.target.targetUser.tlsServerName: not used: spec.request.protocol \
                         is {protocol}, not tcp-tls"
                    ),
                ]
            );
        }
    }

    #[test]
    fn bad_tls_fields_name_the_field() {
        let tls = GOOD.replace("protocol: tcp", "protocol: tcp-tls");
        let user =
            |extra: &str| tls.replace("'fd00::53'\n", &format!("'fd00::53'\n      {extra}\n"));
        for (extra, field, says) in [
            (
                "tlsCaFile: ca.pem",
                "spec.target.targetUser.tlsCaFile",
                "must be an absolute path (read by the controller), got \"ca.pem\"",
            ),
            (
                "tlsServerName: 'dns example'",
                "spec.target.targetUser.tlsServerName",
                "expected a DNS name or an IP address: \"dns example\" is not a domain name",
            ),
            (
                "tlsServerName: ''",
                "spec.target.targetUser.tlsServerName",
                "expected a DNS name or an IP address: must name a domain",
            ),
            (
                "tlsServerName: 'dns..example'",
                "spec.target.targetUser.tlsServerName",
                "label \"\"",
            ),
            (
                "tlsServerName: '192.0.2'",
                "spec.target.targetUser.tlsServerName",
                "\"192.0.2\" is neither (its last label \"2\" is all digits)",
            ),
            (
                "tlsCertFile: /c.pem",
                "spec.target.targetUser.tlsCertFile",
                "unknown field `tlsCertFile`, expected one of `server`, `port`, `tlsCaFile`, \
                 `tlsServerName`",
            ),
            (
                "port: 0",
                "spec.target.targetUser.port",
                "must be 1..=65535, got 0",
            ),
        ] {
            assert_err(&user(extra), field, says);
        }
        // A bad TLS field is an error even when the protocol does not use it.
        assert_err(
            &user("tlsCaFile: ca.pem").replace("protocol: tcp-tls", "protocol: udp"),
            "spec.target.targetUser.tlsCaFile",
            "must be an absolute path",
        );
        for name in [
            "dns.example.",
            "192.0.2.53",
            "'2001:db8::53'",
            "_dot.example",
        ] {
            let yaml = user(&format!("tlsServerName: {name}"));
            assert!(NetDns::from_yaml("f", &yaml).is_ok(), "{name}");
        }
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
