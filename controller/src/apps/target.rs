//! An application task's target and plans (pure): the [`AppTarget`] every plan carries, built
//! from the spec and the PEM contents of the TLS files it names ([`tls_files`], read by the
//! driver), and the same plan for every agent.

use meshdoctor_api::TaskSpec as _;
use std::collections::BTreeMap;

use meshdoctor_api::{
    AgentRegistration, AppPlan, AppTarget, DnsPlan, DnsProtocol, DnsRecord, HttpPlan, RoundPlan,
    Task, TlsMaterial, app_max_in_flight,
};

use crate::mesh::RoundMeta;

/// Which part of the [`TlsMaterial`] a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPart {
    Ca,
    Cert,
    Key,
}

/// A TLS file a task's target names, which the controller reads before each round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    /// The field below `spec.target` that names it, for messages: `tlsCaFile`.
    pub field: &'static str,
    pub part: TlsPart,
    pub path: String,
}

/// The TLS files of `task`'s target, in the order they are read: an https AppHttpHealthy's
/// `tlsCaFile`, `tlsCertFile`, `tlsKeyFile`, a `tcp-tls` NetDns's `targetUser.tlsCaFile`. None
/// for NetReach, plain http, or udp and tcp DNS (whose tasks warn that TLS settings are unused).
pub fn tls_files(task: &Task) -> Vec<TlsFile> {
    let file =
        |field, part, path: &Option<String>| path.clone().map(|path| TlsFile { field, part, path });
    match task {
        Task::NetReach(_) => vec![],
        Task::AppHttpHealthy(t) => {
            let target = &t.spec.target;
            if !target.host.starts_with("https://") {
                return vec![];
            }
            [
                file("tlsCaFile", TlsPart::Ca, &target.tls_ca_file),
                file("tlsCertFile", TlsPart::Cert, &target.tls_cert_file),
                file("tlsKeyFile", TlsPart::Key, &target.tls_key_file),
            ]
            .into_iter()
            .flatten()
            .collect()
        }
        Task::NetDns(t) => match &t.spec.target.target_user {
            Some(user) if t.spec.request.protocol == DnsProtocol::TcpTls => {
                file("targetUser.tlsCaFile", TlsPart::Ca, &user.tls_ca_file)
                    .into_iter()
                    .collect()
            }
            _ => vec![],
        },
    }
}

/// Why an application round cannot be planned from its task: each names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// A TLS file ([`tls_files`]) could not be read on the controller's host.
    #[error("spec.target.{field}: cannot read {path:?} on the controller: {reason}")]
    Unreadable {
        field: &'static str,
        path: String,
        reason: String,
    },
    /// A TLS file outside the controller's `--tls-dir`: the controller ships what it reads to
    /// every agent, so it reads nothing else.
    #[error(
        "spec.target.{field}: {path:?} is outside the controller's TLS directory {dir} \
         (--tls-dir): put the file there (Kubernetes: mount it there, or name a Secret with \
         tlsSecretName)"
    )]
    OutsideTlsDir {
        field: &'static str,
        path: String,
        dir: String,
    },
    /// The controller's `--tls-dir` itself cannot be read.
    #[error("spec.target.{field}: the controller's TLS directory {dir} (--tls-dir): {reason}")]
    TlsDir {
        field: &'static str,
        dir: String,
        reason: String,
    },
    /// A field only the Kubernetes backend can act on: what to use instead.
    #[error("spec.target.{field}: {why}")]
    KubernetesOnly {
        field: &'static str,
        why: &'static str,
    },
    #[error("spec.target.targetUser.server: {0:?} is not an IP address")]
    NotAnIp(String),
    #[error("NetReach rounds have no application target")]
    NotAnApplication,
}

/// The target of an application task (pure): `tls` is the PEM material read for it (NetDns:
/// only its `ca_pem`, the `tlsCaFile`).
pub fn app_target(task: &Task, tls: Option<TlsMaterial>) -> Result<AppTarget, TargetError> {
    match task {
        Task::NetReach(_) => Err(TargetError::NotAnApplication),
        Task::AppHttpHealthy(t) => {
            let target = &t.spec.target;
            if target.body_configmap_name.is_some() {
                return Err(TargetError::KubernetesOnly {
                    field: "bodyConfigmapName",
                    why: "ConfigMaps are read by the Kubernetes backend only; use spec.target.body",
                });
            }
            if target.tls_secret_name.is_some() {
                return Err(TargetError::KubernetesOnly {
                    field: "tlsSecretName",
                    why: "Secrets are read by the Kubernetes backend only; use \
                          spec.target.tlsCaFile, tlsCertFile and tlsKeyFile",
                });
            }
            Ok(AppTarget::Http(HttpPlan {
                url: target.host.clone(),
                method: target.method,
                headers: target.header.clone(),
                body: target.body.clone(),
                http2: target.http2,
                tls,
                expect_status: t.spec.expect.status_code,
            }))
        }
        Task::NetDns(t) => {
            let spec = &t.spec;
            let Some(user) = &spec.target.target_user else {
                return Err(TargetError::KubernetesOnly {
                    field: "targetDns",
                    why: "cluster DNS Services are resolved by the Kubernetes backend only; use \
                          spec.target.targetUser {server, port}",
                });
            };
            let protocol = spec.request.protocol;
            let server = user
                .addr(protocol)
                .ok_or_else(|| TargetError::NotAnIp(user.server.clone()))?;
            // udp and tcp ignore the TLS settings (the task warns), as plain http does.
            let dot = protocol == DnsProtocol::TcpTls;
            Ok(AppTarget::Dns(DnsPlan {
                server,
                protocol,
                domain: spec.request.domain.clone(),
                record: DnsRecord::for_server(&server.ip()),
                tls_server_name: user.tls_server_name.clone().filter(|_| dot),
                tls_ca_pem: tls.and_then(|t| t.ca_pem).filter(|_| dot),
            }))
        }
    }
}

/// A name for the task's target when it could not be resolved, for the report.
pub fn spec_label(task: &Task) -> String {
    match task {
        Task::NetReach(t) => t.name().to_string(),
        Task::AppHttpHealthy(t) => format!("{} {}", t.spec.target.method, t.spec.target.host),
        Task::NetDns(t) => {
            let r = &t.spec.request;
            let server = t.spec.target.target_user.as_ref().map_or_else(
                || "cluster DNS".to_string(),
                |u| match u.addr(r.protocol) {
                    Some(addr) => addr.to_string(),
                    None => u.server.clone(),
                },
            );
            format!("{} {server} {}", r.protocol.name(), r.domain)
        }
    }
}

/// The same plan for every agent of the roster (de-duplicated by node).
pub fn build_app_plans(
    task: &Task,
    target: &AppTarget,
    roster: &[AgentRegistration],
    meta: RoundMeta<'_>,
) -> BTreeMap<String, RoundPlan> {
    let load = task.load();
    let duration_ms = u64::try_from(load.duration.as_millis()).unwrap_or(u64::MAX);
    let timeout_ms = u64::try_from(load.per_request_timeout.as_millis()).unwrap_or(u64::MAX);
    roster
        .iter()
        .map(|agent| {
            let plan = RoundPlan {
                task: meta.task.to_string(),
                round: meta.round,
                // Set when the mailbox opens the round.
                round_tag: 0,
                protocol: Default::default(),
                start_at_ms: meta.start_at_ms,
                duration_ms,
                qps: load.qps,
                timeout_ms,
                report_deadline_ms: meta.report_deadline_ms,
                targets: vec![],
                incoming: vec![],
                app: Some(AppPlan {
                    target: target.clone(),
                    max_in_flight: app_max_in_flight(load.qps, timeout_ms),
                }),
            };
            (agent.node.clone(), plan)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        apps::tests::{dns_task, dns_task_over, http_task},
        mesh::tests::{mk_agent, mk_meta},
    };

    #[test]
    fn http_target_carries_the_spec() {
        let task = http_task(
            ", host: 'web:8080/x', http2: true, body: hi, header: ['X-A: b:c']",
            ", statusCode: 204",
        );
        let AppTarget::Http(h) = app_target(&task, None).unwrap() else {
            panic!("not http")
        };
        assert_eq!(h.url, "http://web:8080/x");
        assert_eq!(h.headers[0].to_string(), "X-A: b:c");
        assert_eq!(
            (h.body.as_deref(), h.http2, h.expect_status),
            (Some("hi"), true, Some(204))
        );
        assert_eq!(spec_label(&task), "GET http://web:8080/x");
    }

    #[test]
    fn kubernetes_only_sources_fail_the_round_by_field() {
        let cm = http_task(
            ", host: web, bodyConfigmapName: b, bodyConfigmapNamespace: ns",
            "",
        );
        assert!(
            app_target(&cm, None)
                .unwrap_err()
                .to_string()
                .starts_with("spec.target.bodyConfigmapName:")
        );
        let secret = http_task(
            ", host: 'https://web', tlsSecretName: s, tlsSecretNamespace: ns",
            "",
        );
        assert!(
            app_target(&secret, None)
                .unwrap_err()
                .to_string()
                .starts_with("spec.target.tlsSecretName:")
        );
        let cluster = dns_task("{targetDns: {}}");
        assert!(
            app_target(&cluster, None)
                .unwrap_err()
                .to_string()
                .starts_with("spec.target.targetDns:")
        );
        assert_eq!(spec_label(&cluster), "tcp cluster DNS web.lab.test.");
    }

    #[test]
    fn dns_target_asks_a_for_v4_and_aaaa_for_v6() {
        let v4 = dns_task("{targetUser: {server: 192.0.2.254}}");
        assert_eq!(
            app_target(&v4, None).unwrap(),
            AppTarget::Dns(DnsPlan {
                server: "192.0.2.254:53".parse().unwrap(),
                protocol: DnsProtocol::Tcp,
                domain: "web.lab.test.".into(),
                record: DnsRecord::A,
                tls_server_name: None,
                tls_ca_pem: None,
            })
        );
        let v6 = dns_task("{targetUser: {server: '2001:db8::1', port: 5353}}");
        let AppTarget::Dns(d) = app_target(&v6, None).unwrap() else {
            panic!("not dns")
        };
        assert_eq!(
            (d.server.to_string(), d.record),
            ("[2001:db8::1]:5353".into(), DnsRecord::Aaaa)
        );
        assert_eq!(spec_label(&v6), "tcp [2001:db8::1]:5353 web.lab.test.");
    }

    #[test]
    fn every_agent_gets_the_same_bounded_plan() {
        let task = http_task(", host: web", "");
        let target = app_target(&task, None).unwrap();
        let roster: Vec<_> = (1..=3).map(mk_agent).collect();
        let plans = build_app_plans(&task, &target, &roster, mk_meta());
        assert_eq!(plans.len(), 3);
        for (node, p) in &plans {
            assert!(node.starts_with("node-"));
            // The mailbox tags the plans when it opens the round.
            assert_eq!(
                (p.qps, p.duration_ms, p.timeout_ms, p.round_tag),
                (10, 2000, 500, 0)
            );
            assert!(p.targets.is_empty());
            let app = p.app.as_ref().unwrap();
            assert_eq!(app.target, target);
            assert_eq!(app.max_in_flight, 10);
        }
    }

    #[test]
    fn tls_files_are_those_the_protocol_uses() {
        let https = http_task(
            ", host: 'https://web', tlsCaFile: /ca.pem, tlsCertFile: /c.pem, tlsKeyFile: /k.pem",
            "",
        );
        let fields: Vec<_> = tls_files(&https)
            .iter()
            .map(|f| (f.field, f.part))
            .collect();
        assert_eq!(
            fields,
            [
                ("tlsCaFile", TlsPart::Ca),
                ("tlsCertFile", TlsPart::Cert),
                ("tlsKeyFile", TlsPart::Key)
            ]
        );
        assert!(tls_files(&http_task(", host: web, tlsCaFile: /ca.pem", "")).is_empty());
        let user = "{targetUser: {server: 192.0.2.254, tlsCaFile: /ca.pem}}";
        assert_eq!(
            tls_files(&dns_task_over("tcp-tls", user)),
            [TlsFile {
                field: "targetUser.tlsCaFile",
                part: TlsPart::Ca,
                path: "/ca.pem".into()
            }]
        );
        assert!(tls_files(&dns_task_over("udp", user)).is_empty());
    }
}
