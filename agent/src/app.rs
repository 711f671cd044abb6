//! Application rounds (AppHttpHealthy, NetDns): the plan's one target, loaded with
//! [`meshdoctor_loadgen`] at the plan's qps for its duration, each request bounded by the
//! plan's timeout and at most `max_in_flight` outstanding; the statistics go into the report.
//!
//! Nothing here panics on a bad plan: a target the agent cannot build a requester for (TLS
//! material that does not parse, a URL or domain loadgen rejects) or a plan beyond the agent's
//! caps or its own limits (`--allow-targets`, `--max-probe-rate`) is reported as the round's
//! `error`, with no request sent, and the controller fails the round with that reason.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use meshdoctor_api::{
    AgentReport, AppPlan, AppResult, AppTarget, DnsPlan, DnsProtocol, DnsRecord, HttpPlan,
    LoadStats, MAX_APP_IN_FLIGHT, RoundPlan,
    task::{MAX_APP_HTTP_QPS, MAX_DNS_QPS, MAX_DURATION_IN_SECOND, MAX_PER_REQUEST_TIMEOUT_IN_MS},
};
use meshdoctor_loadgen::{
    LoadSpec,
    dns::{DnsRequester, DnsTarget, RecordType, Transport},
    http::{HttpRequester, HttpTarget, TlsConfig},
};
use tracing::{info, warn};

use crate::{round::wait_until_ms, runtime::Agent};

/// Runs the application plan and returns the report to post.
pub async fn run(agent: &Agent, plan: &RoundPlan, app: &AppPlan) -> AgentReport {
    let target = app.target.label();
    let planned = u64::from(plan.qps) * plan.duration_ms / 1000;
    // Held for the whole load: rounds running at once share the rate cap.
    let share = agent.guard.share(u64::from(plan.qps));
    let spec = match agent.guard.app_refusal(plan, &share) {
        Some(why) => Err(why),
        None => load_spec(plan, app),
    };
    let outcome = match spec {
        Ok(spec) => match &app.target {
            AppTarget::Http(h) => match http_requester(h, spec.max_in_flight) {
                Ok(r) => Ok(load(plan, Arc::new(r), &spec).await),
                Err(e) => Err(e),
            },
            AppTarget::Dns(d) => match dns_requester(d) {
                Ok(r) => Ok(load(plan, Arc::new(r), &spec).await),
                Err(e) => Err(e),
            },
        },
        Err(e) => Err(e),
    };
    let (stats, error) = match outcome {
        Ok(stats) => {
            info!(
                task = %plan.task, round = plan.round, %target, requests = stats.requests,
                successes = stats.successes, not_sent = stats.not_sent, "load done"
            );
            (stats, None)
        }
        Err(e) => {
            warn!(task = %plan.task, round = plan.round, %target, "cannot run the load: {e}");
            (
                LoadStats {
                    planned,
                    ..Default::default()
                },
                Some(e),
            )
        }
    };
    agent.metrics.count_requests(
        stats.successes,
        stats.requests.saturating_sub(stats.successes),
        stats.not_sent,
    );
    AgentReport {
        app: Some(AppResult {
            target,
            error,
            stats,
        }),
        ..AgentReport::on_plan(agent.node.clone(), plan, agent.timestamping)
    }
}

/// Waits for the round's start, then loads the target.
async fn load<R: meshdoctor_loadgen::Requester>(
    plan: &RoundPlan,
    requester: Arc<R>,
    spec: &LoadSpec,
) -> LoadStats {
    wait_until_ms(plan.start_at_ms).await;
    meshdoctor_loadgen::run(requester, spec).await
}

/// The load of the plan, within the agent's caps: a plan beyond them is refused, not trimmed,
/// so that the report says the round did not run as planned.
fn load_spec(plan: &RoundPlan, app: &AppPlan) -> Result<LoadSpec, String> {
    let (max_qps, kind) = match app.target {
        AppTarget::Http(_) => (MAX_APP_HTTP_QPS, "AppHttpHealthy"),
        AppTarget::Dns(_) => (MAX_DNS_QPS, "NetDns"),
    };
    if plan.qps == 0 || plan.qps > max_qps {
        return Err(format!(
            "plan qps {} is outside the agent's {kind} cap 1..={max_qps}",
            plan.qps
        ));
    }
    let max_duration_ms = u64::from(MAX_DURATION_IN_SECOND) * 1000;
    if plan.duration_ms > max_duration_ms {
        return Err(format!(
            "plan duration {} ms is above the agent's cap of {max_duration_ms} ms",
            plan.duration_ms
        ));
    }
    if plan.timeout_ms == 0 || plan.timeout_ms > u64::from(MAX_PER_REQUEST_TIMEOUT_IN_MS) {
        return Err(format!(
            "plan per-request timeout {} ms is outside the agent's cap 1..={MAX_PER_REQUEST_TIMEOUT_IN_MS} ms",
            plan.timeout_ms
        ));
    }
    if app.max_in_flight == 0 || app.max_in_flight > MAX_APP_IN_FLIGHT {
        return Err(format!(
            "plan in-flight bound {} is outside the agent's cap 1..={MAX_APP_IN_FLIGHT}",
            app.max_in_flight
        ));
    }
    Ok(LoadSpec {
        qps: plan.qps,
        duration: Duration::from_millis(plan.duration_ms),
        timeout: Duration::from_millis(plan.timeout_ms),
        max_in_flight: app.max_in_flight as usize,
    })
}

/// PEM text from the plan, as loadgen takes it.
fn pem(p: &Option<String>) -> Option<Vec<u8>> {
    p.as_ref().map(|p| p.clone().into_bytes())
}

fn http_requester(h: &HttpPlan, max_in_flight: usize) -> Result<HttpRequester, String> {
    let target = HttpTarget {
        url: h.url.clone(),
        method: h.method.as_str().into(),
        headers: h
            .headers
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        body: h.body.clone().map(Bytes::from),
        http2: h.http2,
        tls: h.tls.as_ref().map(|t| TlsConfig {
            ca_pem: pem(&t.ca_pem),
            client_cert_pem: pem(&t.cert_pem),
            client_key_pem: pem(&t.key_pem),
        }),
        expect_status: h.expect_status,
    };
    HttpRequester::new(&target, max_in_flight).map_err(|e| e.to_string())
}

fn dns_requester(d: &DnsPlan) -> Result<DnsRequester, String> {
    let transport = match d.protocol {
        DnsProtocol::Udp => Transport::Udp,
        DnsProtocol::Tcp => Transport::Tcp,
        // Always verified (kdoctor does not verify at all): for the task's server name or the
        // server's IP address, against its CA or the webpki roots.
        DnsProtocol::TcpTls => Transport::TcpTls {
            server_name: d.server_name(),
            ca_pem: pem(&d.tls_ca_pem),
        },
    };
    let record = match d.record {
        DnsRecord::A => RecordType::A,
        DnsRecord::Aaaa => RecordType::Aaaa,
    };
    DnsRequester::new(DnsTarget::new(
        d.server,
        transport,
        d.domain.clone(),
        record,
    ))
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::{HttpMethod, TlsMaterial};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn mk_plan(target: AppTarget) -> (RoundPlan, AppPlan) {
        let app = AppPlan {
            target,
            max_in_flight: 8,
        };
        let plan = RoundPlan {
            task: "web".into(),
            round: 1,
            round_tag: 9,
            protocol: Default::default(),
            start_at_ms: 0,
            duration_ms: 500,
            qps: 20,
            timeout_ms: 300,
            report_deadline_ms: u64::MAX,
            targets: vec![],
            incoming: vec![],
            app: Some(app.clone()),
        };
        (plan, app)
    }

    fn http(url: String, tls: Option<TlsMaterial>) -> AppTarget {
        AppTarget::Http(HttpPlan {
            url,
            method: HttpMethod::Get,
            headers: vec![],
            body: None,
            http2: false,
            tls,
            expect_status: Some(200),
        })
    }

    async fn run_plan(target: AppTarget) -> AppResult {
        let (plan, app) = mk_plan(target);
        let report = run(&Agent::for_test("node-1"), &plan, &app).await;
        assert_eq!((report.node.as_str(), report.round_tag), ("node-1", 9));
        assert!(report.sent.is_empty() && report.answered.is_empty());
        report.app.expect("an application result")
    }

    /// A port nothing listens on.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn bad_tls_material_is_the_reports_error_not_a_panic() {
        let tls = TlsMaterial {
            ca_pem: Some("not a PEM".into()),
            ..Default::default()
        };
        let r = run_plan(http("https://127.0.0.1:1/".into(), Some(tls))).await;
        let error = r.error.expect("an error");
        assert!(error.contains("ca.crt"), "{error}");
        assert_eq!((r.stats.planned, r.stats.requests), (10, 0));
        assert_eq!(r.target, "GET https://127.0.0.1:1/");
    }

    #[tokio::test]
    async fn plans_beyond_the_caps_are_refused() {
        let (mut plan, mut app) = mk_plan(http("http://127.0.0.1:1/".into(), None));
        plan.qps = MAX_APP_HTTP_QPS + 1;
        let e = load_spec(&plan, &app).unwrap_err();
        assert!(e.contains("qps") && e.contains("cap"), "{e}");
        plan.qps = 10;
        app.max_in_flight = MAX_APP_IN_FLIGHT + 1;
        assert!(load_spec(&plan, &app).unwrap_err().contains("in-flight"));
        app.max_in_flight = 4;
        let spec = load_spec(&plan, &app).unwrap();
        assert_eq!((spec.qps, spec.max_in_flight), (10, 4));
        assert_eq!(spec.timeout, Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_closed_port_gives_connect_errors() {
        let r = run_plan(http(format!("http://127.0.0.1:{}/", closed_port()), None)).await;
        assert_eq!(r.error, None);
        assert_eq!((r.stats.requests, r.stats.successes), (10, 0));
        assert_eq!(r.stats.errors.get("connect"), Some(&10), "{:?}", r.stats);
    }

    #[tokio::test]
    async fn a_dns_plan_builds_its_requester() {
        let r = run_plan(AppTarget::Dns(DnsPlan {
            server: format!("127.0.0.1:{}", closed_port()).parse().unwrap(),
            protocol: DnsProtocol::Tcp,
            domain: "web.lab.test.".into(),
            record: DnsRecord::A,
            tls_server_name: None,
            tls_ca_pem: None,
        }))
        .await;
        assert_eq!(r.error, None);
        assert_eq!(r.stats.requests, 10);
        assert_eq!(r.stats.successes, 0);
        assert!(!r.stats.errors.is_empty(), "{:?}", r.stats);
    }

    #[tokio::test]
    async fn a_dns_over_tls_plan_with_bad_tls_settings_is_the_reports_error() {
        let dot = |tls_server_name: Option<&str>, tls_ca_pem: Option<&str>| {
            AppTarget::Dns(DnsPlan {
                server: "192.0.2.254:853".parse().unwrap(),
                protocol: DnsProtocol::TcpTls,
                domain: "web.lab.test.".into(),
                record: DnsRecord::A,
                tls_server_name: tls_server_name.map(Into::into),
                tls_ca_pem: tls_ca_pem.map(Into::into),
            })
        };
        for (target, says) in [
            (dot(None, Some("not a PEM")), "transport.ca_pem"),
            (
                dot(Some("bad name!"), None),
                "transport.server_name \"bad name!\"",
            ),
        ] {
            let r = run_plan(target).await;
            let error = r.error.expect("an error");
            assert!(error.starts_with(says), "{error}");
            assert_eq!((r.stats.planned, r.stats.requests), (10, 0));
            assert_eq!(r.target, "tcp-tls 192.0.2.254:853 A web.lab.test.");
        }
        // Without either, the requester verifies the IP address against the webpki roots.
        let AppTarget::Dns(d) = dot(None, None) else {
            unreachable!()
        };
        assert!(dns_requester(&d).is_ok());
    }

    #[tokio::test]
    async fn a_serving_target_succeeds_with_latency() {
        // A minimal keep-alive HTTP/1.1 server: every request gets a 200.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let Ok(n) = conn.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            if conn.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let r = run_plan(http(format!("http://127.0.0.1:{port}/"), None)).await;
        server.abort();
        assert_eq!(r.error, None);
        assert_eq!((r.stats.requests, r.stats.successes), (10, 10), "{r:?}");
        assert_eq!(r.stats.codes.get("200"), Some(&10));
        assert!(r.stats.latency.is_some_and(|l| l.min > 0));
    }
}
