//! Application rounds over the lab, kdoctor style: every agent loads one target and the
//! controller aggregates. The targets are real servers started by the test inside the lab's
//! controller namespace (`mdlab-ctl`, 192.0.2.254): nginx (plain HTTP, HTTPS with a CA and a
//! client certificate generated here) and unbound (a static zone over UDP, TCP and DNS over TLS
//! with a certificate from the same CA). Healthy targets succeed with latency from every agent;
//! failing ones (a stopped server, a client certificate missing, a server certificate from
//! another CA or for another name, an unexpected status, NXDOMAIN) fail the round with the cause
//! in the reason.
//!
//! Each test is one lab with several one-round tasks running side by side, 10 requests/s for
//! 2 s per agent. They skip themselves, saying so, when not root or when nginx or unbound is
//! not installed.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use meshdoctor_api::{AgentAppState, RoundReport, RoundStatus};
use meshdoctor_e2e::{can_run, find_program, start_nginx};
use meshdoctor_lab::{
    Lab, LabConfig, LabServer, TestCa, UnboundConfig, UnboundTls, plan::CONTROLLER_NS,
};
use meshdoctor_table as table;

/// The servers' address: the controller namespace's eth0, on the pod network.
const SERVER: &str = "192.0.2.254";
/// The DNS name the servers' certificate carries besides [`SERVER`].
const SERVER_NAME: &str = "dns.lab.test";
const NODES: usize = 3;
const QPS: u64 = 10;
const SECS: u64 = 2;
/// Requests each agent sends in a round.
const PER_AGENT: u64 = QPS * SECS;
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// The binary, or `None` after saying why the test is skipped.
fn server_or_skip(test: &str, name: &str) -> Option<PathBuf> {
    let found = find_program(name);
    if found.is_none() {
        eprintln!("skipped {test}: {name} is not installed (cargo xtask setup installs it)");
    }
    found
}

/// A lab of [`NODES`] nodes running no task yet, and a fresh `<sub>` directory for a server's
/// files in the controller's TLS directory, where tasks may name them.
fn lab_with_dir(sub: &str) -> (Lab, PathBuf) {
    let mut cfg = LabConfig::new(NODES);
    cfg.tasks.clear();
    let lab = Lab::up(cfg).expect("lab up");
    let dir = lab.tls_dir().join(sub);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (lab, dir)
}

fn wait_listening(server: &mut LabServer, port: u16) {
    let addr: SocketAddr = format!("{SERVER}:{port}").parse().unwrap();
    server
        .wait_listening(addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{} did not come up: {e}", server.name()));
}

/// A one-round task starting at once: the common head, then `spec` (request, expect, target).
fn task(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: meshdoctor.io/v1beta1
kind: {kind}
metadata:
  name: {name}
spec:
  schedule:
    schedule: \"0 1\"
    roundNumber: 1
{spec}"
    )
}

fn http_task(name: &str, url: &str, extra_target: &str) -> String {
    task(
        "AppHttpHealthy",
        name,
        &format!(
            "  request:
    qps: {QPS}
    durationInSecond: {SECS}
    perRequestTimeoutInMS: 1000
  expect:
    successRate: 1
    meanAccessDelayInMs: 1000
    statusCode: 200
  target:
    host: {url}
    method: GET
{extra_target}"
        ),
    )
}

/// A NetDns task asking [`SERVER`] for `domain` over `protocol`, on the protocol's default
/// port; `extra_user` adds fields to `targetUser` (indented lines).
fn dns_task(name: &str, domain: &str, protocol: &str, extra_user: &str) -> String {
    task(
        "NetDns",
        name,
        &format!(
            "  request:
    qps: {QPS}
    durationInSecond: {SECS}
    perRequestTimeoutInMS: 1000
    domain: {domain}
    protocol: {protocol}
  expect:
    successRate: 1
    meanAccessDelayInMs: 1000
  target:
    targetUser:
      server: {SERVER}
{extra_user}"
        ),
    )
}

/// Adds every task, then waits for round 1 of each and prints it.
fn run_rounds(lab: &Lab, tasks: &[(&str, String)]) -> Vec<RoundReport> {
    for (name, yaml) in tasks {
        lab.add_task(&format!("{name}.yaml"), yaml)
            .expect("add task");
    }
    tasks
        .iter()
        .map(|(name, _)| {
            let r = lab
                .wait_round(name, 1, ROUND_TIMEOUT)
                .unwrap_or_else(|e| panic!("round 1 of {name}: {e}"));
            eprintln!("\n{}{}", table::render_table(&r), table::summary_line(&r));
            r
        })
        .collect()
}

/// Every agent sent every request and all succeeded with `code`, with ordered latency.
fn assert_all_succeeded(r: &RoundReport, code: &str) {
    assert_eq!(
        r.status,
        RoundStatus::Succeed,
        "{}: {:?}",
        r.task,
        r.failure_reasons
    );
    let app = r.app.as_ref().expect("an application report");
    assert_eq!(app.agents.len(), NODES, "{}", r.task);
    for a in &app.agents {
        let who = format!("{} {}", r.task, a.node);
        assert_eq!(a.state, AgentAppState::Ok, "{who}: {a:?}");
        let s = a.stats.as_ref().expect("stats");
        assert_eq!(
            (s.planned, s.requests, s.successes, s.not_sent),
            (PER_AGENT, PER_AGENT, PER_AGENT, 0),
            "{who}: {s:?}"
        );
        assert_eq!(s.codes.get(code), Some(&PER_AGENT), "{who}: {s:?}");
        assert!(s.errors.is_empty(), "{who}: {s:?}");
        let l = s.latency.expect("latency of successes");
        assert!(
            0 < l.min
                && l.min <= l.p50
                && l.p50 <= l.p90
                && l.p90 <= l.p95
                && l.p95 <= l.p99
                && l.p99 <= l.max
                && l.max < 1_000_000,
            "{who}: {l:?}"
        );
        assert!(
            l.mean >= l.min as f64 && l.mean <= l.max as f64,
            "{who}: {l:?}"
        );
        assert!(s.tps > 0.0, "{who}: {s:?}");
    }
    let s = &app.summary;
    let total = PER_AGENT * NODES as u64;
    assert_eq!((s.requests, s.successes, s.failures), (total, total, 0));
    assert_eq!(s.success_rate, Some(1.0));
    assert!(s.mean_latency_ms.is_some_and(|ms| ms > 0.0 && ms < 1000.0));
    assert!(s.worst_agents.is_empty());
}

/// The round failed, every agent sent every request and none succeeded, and one reason names
/// each agent's failures as `expected` says.
fn assert_all_failed(r: &RoundReport, expected: &str) {
    assert_eq!(r.status, RoundStatus::Fail, "{}", r.task);
    let app = r.app.as_ref().expect("an application report");
    assert_eq!(app.summary.requests, PER_AGENT * NODES as u64, "{}", r.task);
    assert_eq!(app.summary.successes, 0, "{}", r.task);
    assert!(
        r.not_reported.is_empty(),
        "{}: {:?}",
        r.task,
        r.not_reported
    );
    let reason = r
        .failure_reasons
        .iter()
        .find(|r| r.starts_with("success rate 0.0000 is below the expected 1"))
        .unwrap_or_else(|| {
            panic!(
                "{}: no success-rate reason in {:?}",
                r.task, r.failure_reasons
            )
        });
    for a in &app.agents {
        let want = format!(
            "{}: {PER_AGENT} of {PER_AGENT} requests failed: {expected}",
            a.node
        );
        assert!(
            reason.contains(&want),
            "{}: {want:?} not in {reason:?}",
            r.task
        );
        assert_eq!(a.state, AgentAppState::Failures, "{}", r.task);
    }
}

/// A CA, a server certificate it signed for [`SERVER`] and [`SERVER_NAME`] and a client
/// certificate it signed, plus an unrelated CA (`other-ca.pem`), written as PEM files into
/// `dir`.
fn write_pki(dir: &Path) {
    let ca = TestCa::new("meshdoctor lab CA");
    let server = ca.server(&[SERVER, SERVER_NAME]);
    let client = ca.client("probe");
    for (file, pem) in [
        ("other-ca.pem", TestCa::new("some other CA").cert_pem),
        ("ca.pem", ca.cert_pem),
        ("server.pem", server.cert),
        ("server.key", server.key),
        ("client.pem", client.cert),
        ("client.key", client.key),
    ] {
        std::fs::write(dir.join(file), pem).unwrap();
    }
}

#[test]
fn http_rounds_against_nginx_in_the_lab() {
    const TEST: &str = "http_rounds_against_nginx_in_the_lab";
    if !can_run(TEST) {
        return;
    }
    let Some(nginx_bin) = server_or_skip(TEST, "nginx") else {
        return;
    };
    let (lab, dir) = lab_with_dir("nginx");
    write_pki(&dir);
    let d = dir.display();
    let mut nginx = start_nginx(
        &lab,
        &nginx_bin,
        "nginx",
        &dir,
        &format!(
            "  server {{ listen {SERVER}:8080;\n\
                 location = / {{ return 200 \"hello\\n\"; }}\n\
                 location / {{ return 404; }} }}\n\
               server {{ listen {SERVER}:8443 ssl;\n\
                 ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key;\n\
                 ssl_client_certificate {d}/ca.pem; ssl_verify_client on;\n\
                 location / {{ return 200 \"secret\\n\"; }} }}\n"
        ),
    );
    wait_listening(&mut nginx, 8080);
    wait_listening(&mut nginx, 8443);
    // A server that was there and is stopped: its port refuses connections.
    let mut gone = start_nginx(
        &lab,
        &nginx_bin,
        "nginx-stopped",
        &dir,
        &format!("  server {{ listen {SERVER}:8081; location / {{ return 200; }} }}\n"),
    );
    wait_listening(&mut gone, 8081);
    gone.stop();

    let tls_files = format!(
        "    tlsCaFile: {d}/ca.pem\n    tlsCertFile: {d}/client.pem\n    tlsKeyFile: {d}/client.key\n"
    );
    let reports = run_rounds(
        &lab,
        &[
            (
                "web",
                http_task("web", &format!("http://{SERVER}:8080/"), ""),
            ),
            (
                "web-mtls",
                http_task("web-mtls", &format!("https://{SERVER}:8443/"), &tls_files),
            ),
            (
                "web-no-client-cert",
                http_task(
                    "web-no-client-cert",
                    &format!("https://{SERVER}:8443/"),
                    &format!("    tlsCaFile: {d}/ca.pem\n"),
                ),
            ),
            (
                "web-wrong-ca",
                http_task(
                    "web-wrong-ca",
                    &format!("https://{SERVER}:8443/"),
                    &format!(
                        "    tlsCaFile: {d}/other-ca.pem\n    tlsCertFile: {d}/client.pem\n    \
                         tlsKeyFile: {d}/client.key\n"
                    ),
                ),
            ),
            (
                "web-missing",
                http_task("web-missing", &format!("http://{SERVER}:8080/missing"), ""),
            ),
            (
                "web-stopped",
                http_task("web-stopped", &format!("http://{SERVER}:8081/"), ""),
            ),
        ],
    );
    drop(nginx);
    let [web, mtls, no_cert, wrong_ca, missing, stopped] = reports.try_into().unwrap();

    assert_all_succeeded(&web, "200");
    let s = web.app.as_ref().unwrap().agents[0].stats.clone().unwrap();
    assert_eq!(
        s.bytes,
        PER_AGENT * 6,
        "the body \"hello\\n\" of every reply: {s:?}"
    );
    assert_eq!(
        web.app.as_ref().unwrap().target,
        format!("GET http://{SERVER}:8080/")
    );

    // The CA, client certificate and key were read by the controller and shipped in the plan.
    assert_all_succeeded(&mtls, "200");
    // Without the client certificate nginx answers 400 ("No required SSL certificate").
    assert_all_failed(&no_cert, "codes 400 (20), expected 200");
    // The agents refuse a server certificate that does not chain to the task's CA.
    assert_all_failed(
        &wrong_ca,
        "tls errors (20: invalid peer certificate: UnknownIssuer)",
    );
    assert_all_failed(&missing, "codes 404 (20), expected 200");
    assert_all_failed(&stopped, "connect errors (20: Connection refused");
    let errors = &stopped.app.as_ref().unwrap().summary.errors;
    assert_eq!(errors.get("connect"), Some(&(PER_AGENT * NODES as u64)));
}

/// Starts unbound in the controller namespace, serving the static zone `lab.test.` (with
/// `web.lab.test. A 192.0.2.254`) on [`SERVER`], port 53 over UDP and TCP and port 853 over
/// TLS with the certificate of [`write_pki`], and refusing everything else.
fn start_unbound(lab: &Lab, bin: &Path, dir: &Path) -> LabServer {
    write_pki(dir);
    let conf = UnboundConfig {
        dir: dir.to_path_buf(),
        addr: SERVER.parse::<IpAddr>().unwrap(),
        port: 53,
        tls: Some(UnboundTls {
            port: 853,
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }),
        allow: vec!["192.0.2.0/24".into(), "198.51.100.0/24".into()],
        zone: "lab.test.".into(),
        records: vec![format!("web.lab.test. A {SERVER}")],
    };
    let conf_path = dir.join("unbound.conf");
    std::fs::write(&conf_path, conf.render()).unwrap();
    lab.spawn_server(
        "unbound",
        CONTROLLER_NS,
        bin,
        &["-d", "-c", &conf_path.display().to_string()],
    )
    .expect("start unbound")
}

#[test]
fn dns_rounds_against_unbound_in_the_lab() {
    const TEST: &str = "dns_rounds_against_unbound_in_the_lab";
    if !can_run(TEST) {
        return;
    }
    let Some(unbound_bin) = server_or_skip(TEST, "unbound") else {
        return;
    };
    let (lab, dir) = lab_with_dir("unbound");
    let mut unbound = start_unbound(&lab, &unbound_bin, &dir);
    // unbound serves TCP on the same port: listening there means it is up.
    wait_listening(&mut unbound, 53);
    wait_listening(&mut unbound, 853);

    let d = dir.display();
    let ca = format!("      tlsCaFile: {d}/ca.pem\n");
    let dot_task = |name: &'static str, extra_user: &str| {
        (name, dns_task(name, "web.lab.test", "tcp-tls", extra_user))
    };
    let reports = run_rounds(
        &lab,
        &[
            ("dns", dns_task("dns", "web.lab.test", "udp", "")),
            ("dns-tcp", dns_task("dns-tcp", "web.lab.test", "tcp", "")),
            ("dns-nx", dns_task("dns-nx", "missing.lab.test", "udp", "")),
            // DNS over TLS on the default port 853, verified for the server's IP address.
            dot_task("dot", &ca),
            dot_task(
                "dot-name",
                &format!("{ca}      tlsServerName: {SERVER_NAME}\n"),
            ),
            dot_task(
                "dot-wrong-ca",
                &format!("      tlsCaFile: {d}/other-ca.pem\n"),
            ),
            dot_task(
                "dot-wrong-name",
                &format!("{ca}      tlsServerName: other.lab.test\n"),
            ),
            // No CA: the webpki roots, which do not know the lab's CA (never unverified).
            dot_task("dot-no-ca", ""),
        ],
    );
    drop(unbound);
    let [udp, tcp, nx, dot, dot_name, wrong_ca, wrong_name, no_ca] = reports.try_into().unwrap();

    assert_all_succeeded(&udp, "NOERROR");
    assert_eq!(
        udp.app.as_ref().unwrap().target,
        format!("udp {SERVER}:53 A web.lab.test.")
    );
    assert_all_succeeded(&tcp, "NOERROR");
    // kdoctor counts NXDOMAIN as success; here it fails the round and says so.
    assert_all_failed(&nx, "rcode NXDOMAIN (20), expected NOERROR");

    // The controller read the CA file and shipped it; every agent verified unbound's
    // certificate, for the IP address or for the name.
    assert_all_succeeded(&dot, "NOERROR");
    assert_eq!(
        dot.app.as_ref().unwrap().target,
        format!("tcp-tls {SERVER}:853 A web.lab.test.")
    );
    assert_all_succeeded(&dot_name, "NOERROR");
    let unknown_ca = "tls errors (20: invalid peer certificate: UnknownIssuer)";
    for (r, error) in [
        (&wrong_ca, unknown_ca),
        (
            &wrong_name,
            "tls errors (20: invalid peer certificate: certificate not valid for name \
             \"other.lab.test\"",
        ),
        (&no_ca, unknown_ca),
    ] {
        assert_all_failed(r, error);
        let errors = &r.app.as_ref().unwrap().summary.errors;
        assert_eq!(errors.len(), 1, "{}: {errors:?}", r.task);
    }
}
