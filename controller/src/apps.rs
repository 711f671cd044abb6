//! Application rounds (AppHttpHealthy, NetDns), kdoctor style: every agent of the roster loads
//! the task's one target at the task's qps for its duration, and the controller aggregates.
//!
//! - [`resolve_target`] turns the task's spec into the [`AppTarget`] every plan carries. In the
//!   standalone backend the TLS files (AppHttpHealthy's `tlsCaFile`, `tlsCertFile`,
//!   `tlsKeyFile`; a `tcp-tls` NetDns's `targetUser.tlsCaFile`) are read here, on the
//!   controller's host, and their PEM contents go into the plan: agents need no access to the
//!   controller's files. A file that cannot be read, or a spec field only the Kubernetes
//!   backend can act on (`bodyConfigmapName`, `tlsSecretName`, `targetDns`), fails the round
//!   with a reason naming the field instead of running a different request than the task says.
//! - [`build_app_plans`] gives every agent the same plan, with the in-flight bound of
//!   [`app_max_in_flight`].
//! - [`judge`] aggregates the agents' [`LoadStats`] and judges them against `expect`:
//!   `successRate` over the requests of all agents, `meanAccessDelayInMs` over the successful
//!   requests only, `statusCode` through the agents' success counting, requests not sent
//!   (kdoctor's `existsNotSendRequests`) as a reason of their own, and agents that did not
//!   report or could not run the load. Every reason names its cause: the agents, the error
//!   kinds, the unexpected codes.

use meshdoctor_api::TaskSpec as _;
use std::collections::BTreeMap;

use meshdoctor_api::{
    AgentApp, AgentAppState, AgentRegistration, AgentReport, AppPlan, AppRoundReport, AppSummary,
    AppTarget, DnsPlan, DnsProtocol, DnsRecord, HttpPlan, LoadStats, RoundPlan, RoundSummary, Task,
    TaskKind, TlsMaterial, app_max_in_flight,
    task::{AppHttpHealthyTarget, NetDnsSpec},
};

use crate::mesh::RoundMeta;

/// Agents named in a success-rate reason, worst first.
const WORST_AGENTS: usize = 3;

/// Reads the file of `spec.target.{field}`, if set, on the controller's host; an error names
/// the field and the path.
async fn read(field: &str, path: Option<&String>) -> Result<Option<String>, String> {
    let Some(path) = path else {
        return Ok(None);
    };
    tokio::fs::read_to_string(path)
        .await
        .map(Some)
        .map_err(|e| format!("spec.target.{field}: cannot read {path:?} on the controller: {e}"))
}

/// Reads the TLS files of an https AppHttpHealthy target on the controller's host; `None` for
/// plain http (the task warns that its TLS settings are unused) or when no file is set.
pub async fn read_tls(target: &AppHttpHealthyTarget) -> Result<Option<TlsMaterial>, String> {
    if !target.host.starts_with("https://") {
        return Ok(None);
    }
    let tls = TlsMaterial {
        ca_pem: read("tlsCaFile", target.tls_ca_file.as_ref()).await?,
        cert_pem: read("tlsCertFile", target.tls_cert_file.as_ref()).await?,
        key_pem: read("tlsKeyFile", target.tls_key_file.as_ref()).await?,
    };
    Ok((tls != TlsMaterial::default()).then_some(tls))
}

/// Reads the CA file (`targetUser.tlsCaFile`) of a `tcp-tls` NetDns task on the controller's
/// host, as the `ca_pem` of the material; `None` for udp and tcp (the task warns that its TLS
/// settings are unused) or without the file (the agents then use the webpki roots).
pub async fn read_dns_tls(spec: &NetDnsSpec) -> Result<Option<TlsMaterial>, String> {
    let Some(user) = &spec.target.target_user else {
        return Ok(None);
    };
    if spec.request.protocol != DnsProtocol::TcpTls {
        return Ok(None);
    }
    let ca_pem = read("targetUser.tlsCaFile", user.tls_ca_file.as_ref()).await?;
    Ok(ca_pem.map(|ca_pem| TlsMaterial {
        ca_pem: Some(ca_pem),
        ..Default::default()
    }))
}

/// The target of an application task's rounds, with its TLS files read; an error names the
/// field that keeps the round from running here. `None` for NetReach.
pub async fn resolve_target(task: &Task) -> Option<Result<AppTarget, String>> {
    let tls = match task {
        Task::NetReach(_) => return None,
        Task::AppHttpHealthy(t) => read_tls(&t.spec.target).await,
        Task::NetDns(t) => read_dns_tls(&t.spec).await,
    };
    Some(tls.and_then(|tls| app_target(task, tls)))
}

/// The target of an application task (pure): `tls` is the PEM material read for it (NetDns:
/// only its `ca_pem`, the `tlsCaFile`).
pub fn app_target(task: &Task, tls: Option<TlsMaterial>) -> Result<AppTarget, String> {
    match task {
        Task::NetReach(_) => Err("NetReach rounds have no application target".into()),
        Task::AppHttpHealthy(t) => {
            let target = &t.spec.target;
            if target.body_configmap_name.is_some() {
                return Err(
                    "spec.target.bodyConfigmapName: ConfigMaps are read by the Kubernetes \
                     backend only; use spec.target.body"
                        .into(),
                );
            }
            if target.tls_secret_name.is_some() {
                return Err(
                    "spec.target.tlsSecretName: Secrets are read by the Kubernetes backend \
                     only; use spec.target.tlsCaFile, tlsCertFile and tlsKeyFile"
                        .into(),
                );
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
                return Err(
                    "spec.target.targetDns: cluster DNS Services are resolved by the Kubernetes \
                     backend only; use spec.target.targetUser {server, port}"
                        .into(),
                );
            };
            let protocol = spec.request.protocol;
            let server = user.addr(protocol).ok_or_else(|| {
                format!(
                    "spec.target.targetUser.server: {:?} is not an IP address",
                    user.server
                )
            })?;
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
                round_tag: meta.round_tag,
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

/// Which replies succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuccessCodes {
    /// `expect.statusCode`.
    HttpStatus(u16),
    /// No `statusCode`: any 2xx or 3xx.
    HttpOk,
    /// DNS: NOERROR only (kdoctor counts NXDOMAIN as success: a defect).
    DnsNoError,
}

impl SuccessCodes {
    pub fn is_success(self, code: &str) -> bool {
        match self {
            Self::HttpStatus(want) => code == want.to_string(),
            Self::HttpOk => code.len() == 3 && (code.starts_with('2') || code.starts_with('3')),
            Self::DnsNoError => code == "NOERROR",
        }
    }
}

impl std::fmt::Display for SuccessCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HttpStatus(code) => write!(f, "{code}"),
            Self::HttpOk => f.write_str("2xx or 3xx"),
            Self::DnsNoError => f.write_str("NOERROR"),
        }
    }
}

/// An application task's `expect`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AppExpect {
    pub kind: TaskKind,
    pub success_rate: f64,
    pub mean_access_delay_in_ms: u64,
    pub codes: SuccessCodes,
}

impl AppExpect {
    /// `None` for NetReach.
    pub fn of(task: &Task) -> Option<Self> {
        match task {
            Task::NetReach(_) => None,
            Task::AppHttpHealthy(t) => {
                let e = &t.spec.expect;
                Some(Self {
                    kind: TaskKind::AppHttpHealthy,
                    success_rate: e.success_rate,
                    mean_access_delay_in_ms: e.mean_access_delay_in_ms,
                    codes: e
                        .status_code
                        .map_or(SuccessCodes::HttpOk, SuccessCodes::HttpStatus),
                })
            }
            Task::NetDns(t) => {
                let e = &t.spec.expect;
                Some(Self {
                    kind: TaskKind::NetDns,
                    success_rate: e.success_rate,
                    mean_access_delay_in_ms: e.mean_access_delay_in_ms,
                    codes: SuccessCodes::DnsNoError,
                })
            }
        }
    }
}

/// A judged application round.
#[derive(Debug, Clone, PartialEq)]
pub struct AppJudged {
    pub app: AppRoundReport,
    /// The round's totals in the shared summary (requests as `sent`, successes as `received`).
    pub summary: RoundSummary,
    /// Nodes with a plan but no report, sorted.
    pub not_reported: Vec<String>,
    /// Why the round fails; empty when it succeeds.
    pub reasons: Vec<String>,
}

/// `{n} of {requests} requests failed: connect errors (38: Connection refused (os error 111)),
/// timeout errors (2: no reply within 1000 ms); codes 404 (40), expected 200`, each error kind
/// with the first error's message when the agent reported one; `None` without failures.
pub fn describe_failures(kind: TaskKind, codes: SuccessCodes, s: &LoadStats) -> Option<String> {
    let failed = s.requests.saturating_sub(s.successes);
    if failed == 0 {
        return None;
    }
    let mut parts = Vec::new();
    if !s.errors.is_empty() {
        parts.push(
            by_count(&s.errors)
                .iter()
                .map(|(kind, n)| match s.error_examples.get(*kind) {
                    Some(example) => format!("{kind} errors ({n}: {example})"),
                    None => format!("{kind} errors ({n})"),
                })
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let bad: BTreeMap<String, u64> = s
        .codes
        .iter()
        .filter(|(code, _)| !codes.is_success(code))
        .map(|(c, n)| (c.clone(), *n))
        .collect();
    if !bad.is_empty() {
        let word = if kind == TaskKind::NetDns {
            "rcode"
        } else {
            "codes"
        };
        let list: Vec<String> = by_count(&bad)
            .iter()
            .map(|(code, n)| format!("{code} ({n})"))
            .collect();
        parts.push(format!("{word} {}, expected {codes}", list.join(", ")));
    }
    if parts.is_empty() {
        // Failures the agent counted but did not break down (an agent bug): say so.
        parts.push("no error kind or code recorded".into());
    }
    Some(format!(
        "{failed} of {} requests failed: {}",
        s.requests,
        parts.join("; ")
    ))
}

/// Entries most frequent first, then by key.
fn by_count(map: &BTreeMap<String, u64>) -> Vec<(&String, u64)> {
    let mut v: Vec<(&String, u64)> = map.iter().map(|(k, n)| (k, *n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    v
}

/// Requests the pacing of `plan` calls for (as the agents' runner counts them).
fn planned_requests(plan: &RoundPlan) -> u64 {
    u64::from(plan.qps) * plan.duration_ms / 1000
}

/// Aggregates and judges the reports of an application round against `expect`.
pub fn judge(
    expect: &AppExpect,
    target: &str,
    plans: &BTreeMap<String, RoundPlan>,
    reports: &BTreeMap<String, AgentReport>,
) -> AppJudged {
    let mut agents = Vec::new();
    let mut not_reported = Vec::new();
    let mut agent_reasons = Vec::new();
    let mut s = AppSummary {
        agents: u32::try_from(plans.len()).unwrap_or(u32::MAX),
        ..Default::default()
    };
    // Sum of (mean latency x successes) in µs, for the mean over every success.
    let mut latency_sum_us = 0.0;
    let mut slowest: Option<(&str, f64)> = None;
    let mut unsent: Vec<(&str, u64)> = Vec::new();
    let mut max_in_flight = None;

    for (node, plan) in plans {
        max_in_flight = max_in_flight.or(plan.app.as_ref().map(|a| a.max_in_flight));
        let Some(report) = reports.get(node) else {
            not_reported.push(node.clone());
            agents.push(AgentApp {
                node: node.clone(),
                state: AgentAppState::NotReported,
                error: None,
                success_rate: None,
                failures: None,
                stats: None,
            });
            continue;
        };
        s.reported += 1;
        let Some(result) = &report.app else {
            let error = "its report has no application result (an agent too old for \
                         application rounds?)"
                .to_string();
            agent_reasons.push(format!("{node}: {error}"));
            s.planned += planned_requests(plan);
            agents.push(AgentApp {
                node: node.clone(),
                state: AgentAppState::Error,
                error: Some(error),
                success_rate: None,
                failures: None,
                stats: None,
            });
            continue;
        };
        let st = &result.stats;
        s.planned += st.planned;
        s.requests += st.requests;
        s.successes += st.successes;
        s.not_sent += st.not_sent;
        s.tps += st.tps;
        for (code, n) in &st.codes {
            *s.codes.entry(code.clone()).or_default() += n;
        }
        for (kind, n) in &st.errors {
            *s.errors.entry(kind.clone()).or_default() += n;
        }
        if let Some(l) = &st.latency {
            latency_sum_us += l.mean * st.successes as f64;
            s.min_latency_us = Some(s.min_latency_us.map_or(l.min, |m| m.min(l.min)));
            s.max_latency_us = Some(s.max_latency_us.map_or(l.max, |m| m.max(l.max)));
            if slowest.is_none_or(|(_, mean)| l.mean > mean) {
                slowest = Some((node, l.mean));
            }
        }
        if st.not_sent > 0 {
            unsent.push((node, st.not_sent));
        }
        let failures = describe_failures(expect.kind, expect.codes, st);
        let state = if let Some(e) = &result.error {
            agent_reasons.push(format!("{node}: cannot run the load: {e}"));
            AgentAppState::Error
        } else if failures.is_some() || st.not_sent > 0 || st.requests == 0 {
            AgentAppState::Failures
        } else {
            AgentAppState::Ok
        };
        agents.push(AgentApp {
            node: node.clone(),
            state,
            error: result.error.clone(),
            success_rate: (st.requests > 0).then(|| st.successes as f64 / st.requests as f64),
            failures,
            stats: Some(st.clone()),
        });
    }

    s.failures = s.requests.saturating_sub(s.successes);
    s.success_rate = (s.requests > 0).then(|| s.successes as f64 / s.requests as f64);
    s.mean_latency_ms = (s.successes > 0).then(|| latency_sum_us / s.successes as f64 / 1000.0);
    let mut worst: Vec<&AgentApp> = agents
        .iter()
        .filter(|a| matches!(a.state, AgentAppState::Failures | AgentAppState::Error))
        .collect();
    let shortfall = |a: &AgentApp| {
        a.stats.as_ref().map_or(0, |st| {
            st.requests.saturating_sub(st.successes) + st.not_sent
        })
    };
    worst.sort_by(|a, b| {
        (b.state == AgentAppState::Error)
            .cmp(&(a.state == AgentAppState::Error))
            .then_with(|| shortfall(b).cmp(&shortfall(a)))
    });
    s.worst_agents = worst
        .iter()
        .take(WORST_AGENTS)
        .map(|a| a.node.clone())
        .collect();

    let mut reasons = Vec::new();
    if !not_reported.is_empty() {
        reasons.push(format!(
            "agents did not report: {}",
            not_reported.join(", ")
        ));
    }
    reasons.extend(agent_reasons);
    if plans.is_empty() {
        reasons.push("no agent ran the round (none registered)".into());
    } else if s.requests == 0 && reasons.is_empty() {
        reasons.push(format!(
            "no request was sent ({} planned over {} agents)",
            s.planned, s.reported
        ));
    }
    if let Some(rate) = s.success_rate
        && rate < expect.success_rate
    {
        let failing: Vec<String> = worst
            .iter()
            .filter_map(|a| a.failures.as_ref().map(|f| format!("{}: {f}", a.node)))
            .collect();
        let mut detail = failing
            .iter()
            .take(WORST_AGENTS)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        if failing.len() > WORST_AGENTS {
            detail.push_str(&format!("; +{} more agents", failing.len() - WORST_AGENTS));
        }
        reasons.push(format!(
            "success rate {rate:.4} is below the expected {}: {} of {} requests succeeded ({detail})",
            expect.success_rate, s.successes, s.requests
        ));
    }
    if s.not_sent > 0 {
        let by_node: Vec<String> = unsent.iter().map(|(n, c)| format!("{n} ({c})")).collect();
        let bound = max_in_flight.map_or_else(String::new, |m| format!(" of {m}"));
        reasons.push(format!(
            "{} of {} planned requests were not sent: the agents reached their in-flight \
             bound{bound} or fell behind their pace (the prober's shortfall, not the target's \
             failures): {}",
            s.not_sent,
            s.planned,
            by_node.join(", ")
        ));
    }
    if let Some(mean) = s.mean_latency_ms
        && mean > expect.mean_access_delay_in_ms as f64
    {
        let slow = slowest.map_or_else(String::new, |(node, us)| {
            format!(" (slowest: {node} {:.3} ms)", us / 1000.0)
        });
        reasons.push(format!(
            "mean latency {mean:.3} ms is above the expected {} ms{slow}",
            expect.mean_access_delay_in_ms
        ));
    }

    let summary = RoundSummary {
        paths: 0,
        lossy_paths: 0,
        sent: s.requests,
        received: s.successes,
        lost: s.failures,
        success_rate: s.success_rate.unwrap_or(0.0),
        mean_rtt_ms: s.mean_latency_ms,
        unobserved_events: 0,
    };
    AppJudged {
        app: AppRoundReport {
            kind: expect.kind,
            target: target.to_string(),
            expected: expect.codes.to_string(),
            summary: s,
            agents,
        },
        summary,
        not_reported,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::{AppResult, LatencyUs, Timestamping};

    use super::*;
    use crate::mesh::tests::{mk_agent, mk_meta};

    fn http_task(extra_target: &str, expect: &str) -> Task {
        Task::from_yaml(
            "web.yaml",
            &format!(
                "apiVersion: meshdoctor.io/v1beta1\nkind: AppHttpHealthy\nmetadata: {{name: web}}\n\
                 spec:\n  request: {{qps: 10, durationInSecond: 2, perRequestTimeoutInMS: 500}}\n  \
                 expect: {{successRate: 1{expect}}}\n  target: {{method: GET{extra_target}}}\n"
            ),
        )
        .unwrap()
    }

    fn dns_task(target: &str) -> Task {
        dns_task_over("tcp", target)
    }

    fn dns_task_over(protocol: &str, target: &str) -> Task {
        Task::from_yaml(
            "dns.yaml",
            &format!(
                "apiVersion: meshdoctor.io/v1beta1\nkind: NetDns\nmetadata: {{name: dns}}\n\
                 spec:\n  request: {{qps: 5, durationInSecond: 2, domain: web.lab.test, protocol: {protocol}}}\n  \
                 target: {target}\n"
            ),
        )
        .unwrap()
    }

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
                .starts_with("spec.target.bodyConfigmapName:")
        );
        let secret = http_task(
            ", host: 'https://web', tlsSecretName: s, tlsSecretNamespace: ns",
            "",
        );
        assert!(
            app_target(&secret, None)
                .unwrap_err()
                .starts_with("spec.target.tlsSecretName:")
        );
        let cluster = dns_task("{targetDns: {}}");
        assert!(
            app_target(&cluster, None)
                .unwrap_err()
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

    #[tokio::test]
    async fn tls_files_are_read_on_the_controller_and_shipped_as_pem() {
        let dir = crate::fixtures::temp_dir("tls");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "CA PEM").unwrap();
        let task = http_task(
            &format!(", host: 'https://web', tlsCaFile: {}", ca.display()),
            "",
        );
        let target = resolve_target(&task).await.unwrap().unwrap();
        let AppTarget::Http(h) = target else {
            panic!("not http")
        };
        assert_eq!(
            h.tls,
            Some(TlsMaterial {
                ca_pem: Some("CA PEM".into()),
                ..Default::default()
            })
        );
        // A missing file names the field and the path.
        let missing = dir.join("nope.pem");
        let task = http_task(
            &format!(
                ", host: 'https://web', tlsCertFile: {0}, tlsKeyFile: {0}",
                missing.display()
            ),
            "",
        );
        let err = resolve_target(&task).await.unwrap().unwrap_err();
        assert!(
            err.starts_with("spec.target.tlsCertFile: cannot read")
                && err.contains("nope.pem")
                && err.contains("on the controller"),
            "{err}"
        );
        // Plain http ships no TLS material (the task warns that it is unused).
        let plain = http_task(&format!(", host: web, tlsCaFile: {}", ca.display()), "");
        let Some(Ok(AppTarget::Http(h))) = resolve_target(&plain).await else {
            panic!("not http")
        };
        assert_eq!(h.tls, None);
        assert!(
            resolve_target(&dns_task("{targetUser: {server: 192.0.2.1}}"))
                .await
                .is_some()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn dns_over_tls_ships_the_ca_and_server_name_and_defaults_to_853() {
        let dir = crate::fixtures::temp_dir("dns-tls");
        let ca = dir.join("dns-ca.pem");
        std::fs::write(&ca, "DNS CA PEM").unwrap();
        let user = format!(
            "{{targetUser: {{server: 192.0.2.254, tlsCaFile: {}, tlsServerName: dns.lab.test}}}}",
            ca.display()
        );
        let dot = dns_task_over("tcp-tls", &user);
        let Some(Ok(AppTarget::Dns(d))) = resolve_target(&dot).await else {
            panic!("not dns")
        };
        assert_eq!(
            d,
            DnsPlan {
                server: "192.0.2.254:853".parse().unwrap(),
                protocol: DnsProtocol::TcpTls,
                domain: "web.lab.test.".into(),
                record: DnsRecord::A,
                tls_server_name: Some("dns.lab.test".into()),
                tls_ca_pem: Some("DNS CA PEM".into()),
            }
        );
        assert_eq!(spec_label(&dot), "tcp-tls 192.0.2.254:853 web.lab.test.");

        // Without the TLS fields: no CA (webpki roots) and the IP as the name; a port given
        // stays.
        let bare = dns_task_over("tcp-tls", "{targetUser: {server: 192.0.2.254, port: 8853}}");
        let Some(Ok(AppTarget::Dns(d))) = resolve_target(&bare).await else {
            panic!("not dns")
        };
        assert_eq!(d.server.port(), 8853);
        assert_eq!((d.tls_ca_pem, d.tls_server_name), (None, None));

        // udp and tcp keep port 53 and ship nothing TLS, not even a CA file that is missing.
        let missing = dir.join("nope.pem");
        let unused = format!(
            "{{targetUser: {{server: 192.0.2.254, tlsCaFile: {}, tlsServerName: dns.lab.test}}}}",
            missing.display()
        );
        for protocol in ["udp", "tcp"] {
            let Some(Ok(AppTarget::Dns(d))) =
                resolve_target(&dns_task_over(protocol, &unused)).await
            else {
                panic!("{protocol}: not dns")
            };
            assert_eq!(d.server.port(), 53, "{protocol}");
            assert_eq!(
                (d.tls_ca_pem, d.tls_server_name),
                (None, None),
                "{protocol}"
            );
        }
        // Over tcp-tls the missing file fails the round, naming the field and the path.
        let err = resolve_target(&dns_task_over("tcp-tls", &unused))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            err.starts_with("spec.target.targetUser.tlsCaFile: cannot read")
                && err.contains("nope.pem")
                && err.contains("on the controller"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
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
            assert_eq!(
                (p.qps, p.duration_ms, p.timeout_ms, p.round_tag),
                (10, 2000, 500, 7)
            );
            assert!(p.targets.is_empty());
            let app = p.app.as_ref().unwrap();
            assert_eq!(app.target, target);
            assert_eq!(app.max_in_flight, 10);
        }
    }

    fn stats(requests: u64, ok: u64, codes: &[(&str, u64)], errors: &[(&str, u64)]) -> LoadStats {
        LoadStats {
            planned: 20,
            requests,
            successes: ok,
            not_sent: 20 - requests,
            codes: codes.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            errors: errors.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            bytes: 0,
            tps: requests as f64 / 2.0,
            latency: (ok > 0).then_some(LatencyUs {
                min: 200,
                mean: 1000.0,
                max: 3000,
                p50: 900,
                p90: 1500,
                p95: 2000,
                p99: 2900,
            }),
            duration_ms: 2000,
            error_examples: BTreeMap::new(),
        }
    }

    fn report(node: &str, plan: &RoundPlan, app: Option<AppResult>) -> AgentReport {
        AgentReport {
            app,
            ..AgentReport::on_plan(node, plan, Timestamping::Ebpf)
        }
    }

    fn result(s: LoadStats) -> Option<AppResult> {
        Some(AppResult {
            target: "GET http://web/".into(),
            error: None,
            stats: s,
        })
    }

    /// Judges `task` with node-i reporting `results[i-1]` (`None`: no report).
    fn judged(task: &Task, results: Vec<Option<Option<AppResult>>>) -> AppJudged {
        let target = app_target(task, None).unwrap();
        let roster: Vec<_> = (1..=results.len() as u8).map(mk_agent).collect();
        let plans = build_app_plans(task, &target, &roster, mk_meta());
        let reports = results
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let node = format!("node-{}", i + 1);
                r.map(|app| (node.clone(), report(&node, &plans[&node], app)))
            })
            .collect();
        judge(
            &AppExpect::of(task).unwrap(),
            &target.label(),
            &plans,
            &reports,
        )
    }

    #[test]
    fn healthy_round_aggregates_every_agent() {
        let task = http_task(", host: web", "");
        let ok = || Some(result(stats(20, 20, &[("200", 20)], &[])));
        let j = judged(&task, vec![ok(), ok(), ok()]);
        assert!(j.reasons.is_empty(), "{:?}", j.reasons);
        let s = &j.app.summary;
        assert_eq!(
            (s.agents, s.reported, s.planned, s.requests, s.successes),
            (3, 3, 60, 60, 60)
        );
        assert_eq!((s.success_rate, s.mean_latency_ms), (Some(1.0), Some(1.0)));
        assert_eq!(
            (s.min_latency_us, s.max_latency_us),
            (Some(200), Some(3000))
        );
        assert_eq!(s.codes["200"], 60);
        assert!(s.worst_agents.is_empty());
        assert!(j.app.agents.iter().all(|a| a.state == AgentAppState::Ok));
        assert_eq!(j.app.expected, "2xx or 3xx");
        assert_eq!(
            (j.summary.sent, j.summary.received, j.summary.lost),
            (60, 60, 0)
        );
    }

    #[test]
    fn refused_connections_name_the_agents_and_error_kinds() {
        let task = http_task(", host: web", "");
        // node-1 says what its first connect error was; node-2, an older agent, does not.
        let refused = stats(20, 0, &[], &[("connect", 20)]);
        let with_example = LoadStats {
            error_examples: [(
                "connect".to_string(),
                "Connection refused (os error 111)".to_string(),
            )]
            .into(),
            ..refused.clone()
        };
        let j = judged(
            &task,
            vec![Some(result(with_example)), Some(result(refused))],
        );
        assert_eq!(
            j.reasons,
            [
                "success rate 0.0000 is below the expected 1: 0 of 40 requests succeeded \
                 (node-1: 20 of 20 requests failed: connect errors (20: Connection refused \
                 (os error 111)); node-2: 20 of 20 requests failed: connect errors (20))"
            ]
        );
        assert_eq!(j.app.summary.mean_latency_ms, None);
        assert_eq!(j.app.summary.worst_agents, ["node-1", "node-2"]);
        assert_eq!(j.app.agents[0].state, AgentAppState::Failures);
    }

    #[test]
    fn wrong_status_and_rcode_name_the_codes() {
        let task = http_task(", host: web", ", statusCode: 200");
        let j = judged(
            &task,
            vec![Some(result(LoadStats {
                error_examples: [
                    ("timeout".into(), "no reply within 1000 ms".into()),
                    // An example of a kind without errors is not shown.
                    ("tls".into(), "unused".into()),
                ]
                .into(),
                ..stats(20, 0, &[("404", 18)], &[("timeout", 2)])
            }))],
        );
        assert_eq!(
            j.app.agents[0].failures.as_deref(),
            Some(
                "20 of 20 requests failed: timeout errors (2: no reply within 1000 ms); \
                 codes 404 (18), expected 200"
            )
        );
        assert!(j.reasons[0].contains("node-1: 20 of 20 requests failed"));

        let dns = dns_task("{targetUser: {server: 192.0.2.254}}");
        let nx = || Some(result(stats(20, 0, &[("NXDOMAIN", 20)], &[])));
        let j = judged(&dns, vec![nx()]);
        assert!(
            j.reasons[0].contains(
                "node-1: 20 of 20 requests failed: rcode NXDOMAIN (20), expected NOERROR"
            ),
            "{:?}",
            j.reasons
        );
    }

    #[test]
    fn a_lenient_success_rate_lets_some_failures_pass() {
        let task = http_task(", host: web", "").clone();
        let Task::AppHttpHealthy(mut t) = task else {
            unreachable!()
        };
        t.spec.expect.success_rate = 0.9;
        let task = Task::AppHttpHealthy(t);
        let j = judged(
            &task,
            vec![
                Some(result(stats(20, 19, &[("200", 19), ("500", 1)], &[]))),
                Some(result(stats(20, 20, &[("200", 20)], &[]))),
            ],
        );
        assert!(j.reasons.is_empty(), "{:?}", j.reasons);
        assert_eq!(j.app.summary.worst_agents, ["node-1"]);
        assert_eq!(
            j.app.agents[0].failures.as_deref(),
            Some("1 of 20 requests failed: codes 500 (1), expected 2xx or 3xx")
        );
    }

    #[test]
    fn unsent_requests_fail_with_their_own_reason() {
        let task = http_task(", host: web", "");
        let j = judged(
            &task,
            vec![
                Some(result(stats(17, 17, &[("200", 17)], &[]))),
                Some(result(stats(20, 20, &[("200", 20)], &[]))),
            ],
        );
        assert_eq!(
            j.reasons,
            [
                "3 of 40 planned requests were not sent: the agents reached their in-flight \
                 bound of 10 or fell behind their pace (the prober's shortfall, not the \
                 target's failures): node-1 (3)"
            ]
        );
        assert_eq!(j.app.agents[0].state, AgentAppState::Failures);
    }

    #[test]
    fn slow_round_fails_on_the_mean_of_successes() {
        let task = http_task(", host: web", ", meanAccessDelayInMs: 1");
        let mut slow = stats(20, 10, &[("200", 10)], &[("timeout", 10)]);
        slow.latency.as_mut().unwrap().mean = 4000.0;
        let j = judged(
            &task,
            vec![
                Some(result(slow)),
                Some(result(stats(20, 20, &[("200", 20)], &[]))),
            ],
        );
        // (4 ms x 10 + 1 ms x 20) / 30 successes; the timeouts are not in the mean.
        assert_eq!(j.app.summary.mean_latency_ms, Some(2.0));
        assert_eq!(
            j.reasons[1],
            "mean latency 2.000 ms is above the expected 1 ms (slowest: node-1 4.000 ms)"
        );
    }

    #[test]
    fn agents_that_did_not_report_or_could_not_run_are_named() {
        let task = http_task(", host: web", "");
        let broken = Some(AppResult {
            target: "GET http://web/".into(),
            error: Some("tls ca.crt: no certificate in PEM".into()),
            stats: LoadStats {
                planned: 20,
                ..Default::default()
            },
        });
        let j = judged(&task, vec![None, Some(broken), Some(None)]);
        assert_eq!(
            j.reasons,
            [
                "agents did not report: node-1",
                "node-2: cannot run the load: tls ca.crt: no certificate in PEM",
                "node-3: its report has no application result (an agent too old for \
                 application rounds?)",
            ]
        );
        assert_eq!(j.not_reported, ["node-1"]);
        let states: Vec<_> = j.app.agents.iter().map(|a| a.state).collect();
        assert_eq!(
            states,
            [
                AgentAppState::NotReported,
                AgentAppState::Error,
                AgentAppState::Error
            ]
        );
        assert_eq!(j.app.summary.worst_agents, ["node-2", "node-3"]);
        assert_eq!((j.app.summary.reported, j.app.summary.planned), (2, 40));
    }

    #[test]
    fn nothing_sent_or_no_agent_fails() {
        let task = http_task(", host: web", "");
        let idle = Some(result(LoadStats {
            planned: 20,
            ..Default::default()
        }));
        let j = judged(&task, vec![idle]);
        assert_eq!(
            j.reasons,
            ["no request was sent (20 planned over 1 agents)"]
        );
        let j = judged(&task, vec![]);
        assert_eq!(j.reasons, ["no agent ran the round (none registered)"]);
    }

    #[test]
    fn success_codes() {
        assert!(SuccessCodes::HttpOk.is_success("204") && SuccessCodes::HttpOk.is_success("301"));
        assert!(!SuccessCodes::HttpOk.is_success("404") && !SuccessCodes::HttpOk.is_success("2"));
        assert!(SuccessCodes::HttpStatus(404).is_success("404"));
        assert!(!SuccessCodes::HttpStatus(200).is_success("201"));
        assert!(!SuccessCodes::DnsNoError.is_success("NXDOMAIN"));
    }
}
