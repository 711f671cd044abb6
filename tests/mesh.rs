//! Full-mesh rounds over the lab (ICMP, UDP, TCP, HTTP, listed addresses): real agents, real
//! eBPF observers, real kernel drops.

use std::time::Duration;

use meshdoctor_api::{Family, PathResult, PathState, RoundReport, RoundStatus};
use meshdoctor_e2e::{binomial_interval, can_run};
use meshdoctor_lab::{Lab, LabConfig};

/// Brings a lab up with `faults` (lab `--fault` specs) in place before any agent starts, and
/// returns round 1 of the `mesh` task.
fn run_round(nodes: usize, qps: u32, secs: u32, faults: &[&str]) -> RoundReport {
    let mut cfg = LabConfig::new(nodes);
    cfg.tasks = vec![(
        "mesh.yaml".into(),
        meshdoctor_lab::task_yaml("mesh", qps, secs),
    )];
    cfg.faults = faults
        .iter()
        .map(|f| f.parse().expect("fault spec"))
        .collect();
    let lab = Lab::up(cfg).expect("lab up");
    let report = lab
        .wait_round("mesh", 1, Duration::from_secs(u64::from(secs) + 60))
        .expect("round 1 report");
    eprintln!("{}", meshdoctor_table::render_table(&report));
    report
}

fn toward(p: &PathResult, node: &str, iface: &str) -> bool {
    p.dst_node == node && p.dst_interface == iface
}

#[test]
fn healthy_full_mesh_has_no_loss_and_kernel_rtt_for_every_probe() {
    if !can_run("healthy_full_mesh_has_no_loss_and_kernel_rtt_for_every_probe") {
        return;
    }
    let r = run_round(4, 10, 5, &[]);
    assert_eq!(r.status, RoundStatus::Succeed, "{:?}", r.failure_reasons);
    assert!(r.not_reported.is_empty());
    // 4 x 3 ordered pairs x 2 interfaces x 2 families.
    assert_eq!(r.paths.len(), 48);
    for f in [Family::Ipv4, Family::Ipv6] {
        for iface in ["eth0", "net1"] {
            let n = r
                .paths
                .iter()
                .filter(|p| p.family == f && p.src_interface == iface)
                .count();
            assert_eq!(n, 12, "{f} {iface}");
        }
    }
    for p in &r.paths {
        let name = format!(
            "{} -> {} {} {}",
            p.src_node, p.dst_node, p.src_interface, p.family
        );
        assert_eq!(p.state, PathState::Ok, "{name}");
        assert_eq!((p.planned, p.sent, p.lost), (50, 50, 0), "{name}");
        let h = &p.hooks;
        assert_eq!(
            (
                h.src_egress,
                h.dst_ingress,
                h.dst_egress,
                h.src_ingress,
                h.delivered
            ),
            (50, 50, 50, 50, 50),
            "{name}"
        );
        // Every probe has a kernel and a user RTT and a destination stack time; the network
        // RTT is the kernel RTT less the mean stack time.
        assert!(
            p.lost_probes.is_empty(),
            "{name}: lost probes of a healthy path"
        );
        let stats = |s: Option<meshdoctor_api::RttStats>, what: &str| {
            s.unwrap_or_else(|| panic!("{name}: no {what} statistics"))
        };
        let (k, u) = (stats(p.kernel_rtt, "kernel"), stats(p.user_rtt, "user"));
        let (stack, net) = (stats(p.dst_stack, "stack"), stats(p.network_rtt, "network"));
        assert_eq!(
            (k.count, u.count, stack.count, net.count),
            (50, 50, 50, 50),
            "{name}"
        );
        assert!(k.min_us > 0.0 && stack.min_us > 0.0, "{name}");
        // To the nanosecond (the summaries' resolution).
        assert!(
            (net.mean_us - (k.mean_us - stack.mean_us)).abs() <= 1e-3,
            "{name}: network {net:?}, kernel {k:?}, stack {stack:?}"
        );
        assert!(
            k.min_us <= u.min_us && k.p50_us <= u.p50_us,
            "{name}: kernel RTT {k:?} above user RTT {u:?}"
        );
    }
}

#[test]
fn dropping_echo_requests_on_one_interface_fails_exactly_the_paths_toward_it() {
    if !can_run("dropping_echo_requests_on_one_interface_fails_exactly_the_paths_toward_it") {
        return;
    }
    let r = run_round(
        4,
        10,
        5,
        &[
            "node-2:net1:ingress:ipv4:100:stack:requests",
            "node-2:net1:ingress:ipv6:100:stack:requests",
        ],
    );
    assert_eq!(r.status, RoundStatus::Fail);
    assert_eq!(r.paths.len(), 48);
    let faulty: Vec<&PathResult> = r
        .paths
        .iter()
        .filter(|p| toward(p, "node-2", "net1"))
        .collect();
    assert_eq!(faulty.len(), 6, "3 sources x 2 families");
    for p in &r.paths {
        let name = format!(
            "{} -> {} {} {}",
            p.src_node, p.dst_node, p.src_interface, p.family
        );
        if toward(p, "node-2", "net1") {
            assert_eq!((p.sent, p.lost, p.loss_ratio), (50, 50, 1.0), "{name}");
            // The requests left the source and reached node-2's ingress hook: the drop is
            // inside node-2, after TC ingress (netfilter input), and no reply was sent.
            assert_eq!(
                (p.hooks.src_egress, p.hooks.dst_ingress, p.hooks.dst_egress),
                (50, 50, 0),
                "{name}"
            );
        } else {
            assert_eq!((p.sent, p.lost), (50, 0), "{name}");
        }
    }
}

#[test]
fn random_loss_estimate_lies_in_the_binomial_interval() {
    if !can_run("random_loss_estimate_lies_in_the_binomial_interval") {
        return;
    }
    // 20% of the IPv4 echo requests arriving on node-2's net1; every other path is clean.
    let r = run_round(2, 100, 6, &["node-2:net1:ingress:ipv4:20:stack:requests"]);
    assert_eq!(r.paths.len(), 8);
    for p in &r.paths {
        let name = format!(
            "{} -> {} {} {}",
            p.src_node, p.dst_node, p.src_interface, p.family
        );
        assert_eq!(p.sent, 600, "{name}");
        if toward(p, "node-2", "net1") && p.family == Family::Ipv4 {
            let (lo, hi) = binomial_interval(p.sent, 0.2, 0.999);
            eprintln!(
                "faulty path loss {:.4}, 99.9% interval [{lo:.4}, {hi:.4}]",
                p.loss_ratio
            );
            assert!(
                (lo..=hi).contains(&p.loss_ratio),
                "{name}: loss {} outside [{lo}, {hi}]",
                p.loss_ratio
            );
        } else {
            assert_eq!(p.lost, 0, "{name}");
        }
    }
}

#[test]
fn an_agent_dying_mid_round_is_named_and_the_others_data_is_kept() {
    if !can_run("an_agent_dying_mid_round_is_named_and_the_others_data_is_kept") {
        return;
    }
    let mut cfg = LabConfig::new(4);
    cfg.tasks = vec![("mesh.yaml".into(), meshdoctor_lab::task_yaml("mesh", 10, 5))];
    let mut lab = Lab::up(cfg).expect("lab up");
    // The round starts about a second after the last agent registered; kill node-3's agent
    // while it is probing.
    std::thread::sleep(Duration::from_millis(2500));
    lab.kill("node-3").expect("kill node-3");
    let r = lab
        .wait_round("mesh", 1, Duration::from_secs(60))
        .expect("round 1 report");
    eprintln!("{}", meshdoctor_table::render_table(&r));
    assert_eq!(r.status, RoundStatus::Fail);
    assert_eq!(r.not_reported, vec!["node-3".to_string()]);
    assert!(
        r.failure_reasons.iter().any(|f| f.contains("node-3")),
        "{:?}",
        r.failure_reasons
    );
    assert_eq!(r.paths.len(), 48);
    for p in &r.paths {
        let name = format!(
            "{} -> {} {} {}",
            p.src_node, p.dst_node, p.src_interface, p.family
        );
        if p.src_node == "node-3" {
            // Nothing is known of what node-3 sent: not reported, never loss.
            assert_eq!((p.state, p.lost), (PathState::NotReported, 0), "{name}");
        } else {
            // node-3's kernel still answers; only its own hooks are missing.
            assert_eq!((p.state, p.sent, p.lost), (PathState::Ok, 50, 0), "{name}");
            assert_eq!(p.dst_reported, p.dst_node != "node-3", "{name}");
        }
    }
    assert_eq!(r.summary.lost, 0);
}

#[test]
fn a_full_ring_buffer_makes_loss_unobserved_never_misplaced() {
    if !can_run("a_full_ring_buffer_makes_loss_unobserved_never_misplaced") {
        return;
    }
    // A one-page ring buffer, kept at that size, cannot hold the events of 500 probes/s on 12 paths per agent,
    // so the kernel drops events; 30% of node-2's IPv4 requests on eth0 are really lost.
    let mut cfg = LabConfig::new(4);
    cfg.tasks = vec![(
        "mesh.yaml".into(),
        meshdoctor_lab::task_yaml("mesh", 500, 2),
    )];
    cfg.agent_args = ["--event-buffer-kib", "4", "--fixed-observer-maps"]
        .map(String::from)
        .to_vec();
    cfg.faults = vec!["node-2:eth0:ingress:ipv4:30:stack".parse().unwrap()];
    let lab = Lab::up(cfg).expect("lab up");
    let r = lab
        .wait_round("mesh", 1, Duration::from_secs(60))
        .expect("round 1 report");
    eprintln!("{}", meshdoctor_table::render_table(&r));
    eprintln!("unobserved events: {}", r.summary.unobserved_events);
    assert!(
        r.summary.unobserved_events > 0,
        "the ring buffer never overflowed"
    );
    assert!(r.summary.lost > 0);
    assert!(
        r.paths.iter().any(|p| p.segments.unobserved > 0),
        "missed events must make loss unobserved"
    );
    // Whatever could still be placed points at the injected fault, nowhere else.
    for f in &r.findings {
        assert_eq!(
            (f.node.as_str(), f.interface.as_str(), f.family),
            ("node-2", "eth0", Family::Ipv4),
            "{f:?}"
        );
    }
    for p in &r.paths {
        let s = p.segments;
        assert_eq!(
            s.src_send + s.forward + s.dst_stack + s.reply + s.src_receive + s.unobserved,
            p.lost,
            "{p:?}"
        );
    }
}

/// A full mesh over `protocol`, answered by the peer agents' responders: every probe is
/// timestamped at all four hooks and comes back.
fn mesh_answered_by_the_agents(name: &str, protocol: &'static str) {
    if !can_run(name) {
        return;
    }
    let mut cfg = LabConfig::new(3);
    let yaml = meshdoctor_lab::MeshTask {
        protocol,
        ..meshdoctor_lab::MeshTask::new("mesh", 20, 2)
    }
    .yaml();
    cfg.tasks = vec![("mesh.yaml".into(), yaml)];
    let lab = Lab::up(cfg).expect("lab up");
    let r = lab
        .wait_round("mesh", 1, Duration::from_secs(60))
        .expect("round 1 report");
    eprintln!("{}", meshdoctor_table::render_table(&r));
    assert_eq!(r.status, RoundStatus::Succeed, "{:?}", r.failure_reasons);
    // 3 x 2 ordered pairs x 2 interfaces x 2 families.
    assert_eq!(r.paths.len(), 24);
    for p in &r.paths {
        let h = &p.hooks;
        assert_eq!(
            (
                p.sent,
                p.lost,
                h.src_egress,
                h.dst_ingress,
                h.dst_egress,
                h.src_ingress
            ),
            (40, 0, 40, 40, 40, 40),
            "{} -> {} {} {}",
            p.src_node,
            p.dst_node,
            p.src_interface,
            p.family
        );
        // The destination's stack time is real: the reply came from its stack (the SYN-ACK
        // from its kernel, the UDP reply from its responder), after the request arrived; a
        // network RTT exists only for a probe whose stack time is below its kernel RTT.
        let count = |s: Option<meshdoctor_api::RttStats>| s.map_or(0, |s| s.count);
        assert_eq!(
            (count(p.dst_stack), count(p.network_rtt)),
            (40, 40),
            "{:?} {:?}",
            p.dst_stack,
            p.network_rtt
        );
    }
}

#[test]
fn udp_full_mesh_is_answered_by_the_agents_and_timestamped_at_every_hook() {
    mesh_answered_by_the_agents(
        "udp_full_mesh_is_answered_by_the_agents_and_timestamped_at_every_hook",
        "udp",
    );
}

/// SYN and SYN-ACK are the request and reply, named by their 4-tuple.
#[test]
fn tcp_full_mesh_connects_to_the_agents_and_timestamps_syn_and_syn_ack() {
    mesh_answered_by_the_agents(
        "tcp_full_mesh_connects_to_the_agents_and_timestamps_syn_and_syn_ack",
        "tcp",
    );
}

#[test]
fn http_full_mesh_gets_from_the_agents_and_timestamps_the_handshake() {
    mesh_answered_by_the_agents(
        "http_full_mesh_gets_from_the_agents_and_timestamps_the_handshake",
        "http",
    );
}

/// `target.addresses`: probed from every agent's eth0, only the source's hooks see them, and
/// what went wrong is named by the source's socket or placed `beyond` it.
#[test]
fn listed_addresses_are_probed_from_every_agent_and_failures_named() {
    if !can_run("listed_addresses_are_probed_from_every_agent_and_failures_named") {
        return;
    }
    use meshdoctor_lab::plan::{AGENT_PORT, CONTROLLER_HOST, ETH0};
    // node-1's probe responder (an agent, but listed: nobody reports its side), node-2's
    // metrics endpoint (it answers GET / with 404), a closed port, and an address nobody has.
    let responder = format!("{}:9091", ETH0.ipv4(1));
    let metrics = format!("[{}]:{AGENT_PORT}", ETH0.ipv6(2));
    let closed = format!("{}:9", ETH0.ipv4(CONTROLLER_HOST));
    let nobody = format!("{}:9091", ETH0.ipv4(CONTROLLER_HOST - 4));
    let yaml = format!(
        "apiVersion: meshdoctor.io/v1beta1
kind: NetReach
metadata: {{name: listed}}
spec:
  schedule: {{schedule: '0 1', roundNumber: 1}}
  request: {{protocol: http, qps: 10, durationInSecond: 2, perRequestTimeoutInMS: 500}}
  target:
    ipv4: true
    ipv6: true
    endpoint: false
    addresses: ['{responder}', '{metrics}', '{closed}', '{nobody}']
"
    );
    let mut cfg = LabConfig::new(3);
    cfg.tasks = vec![("listed.yaml".into(), yaml)];
    let lab = Lab::up(cfg).expect("lab up");
    let r = lab
        .wait_round("listed", 1, Duration::from_secs(60))
        .expect("round 1 report");
    eprintln!("{}", meshdoctor_table::render_table(&r));
    assert_eq!(r.status, RoundStatus::Fail);
    // 3 agents x 4 addresses, from eth0 only, but for each agent's own address (node-1's
    // responder, node-2's metrics): those packets would never leave the node.
    assert_eq!(r.paths.len(), 10);
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    for p in &r.paths {
        let what = format!("{} -> {}", p.src_node, p.dst_node);
        assert_eq!(p.src_interface, "eth0", "{what}");
        assert!(!p.dst_reported, "{what}");
        assert_eq!(p.sent, 20, "{what}");
        let (lost, errors, segment) = (p.lost, &p.errors, p.segments.dominant());
        if p.dst_node == responder {
            assert_ne!(p.src_node, "node-1", "an agent probed its own address");
            assert_eq!((lost, segment), (0, None), "{what}: {errors:?}");
        } else if p.dst_node == metrics {
            // Connected (the SYN-ACK came in), then a 4xx answer.
            assert_ne!(p.src_node, "node-2", "an agent probed its own address");
            assert_eq!(lost, 20, "{what}");
            assert_eq!(p.hooks.src_ingress, 20, "{what}");
            assert!(
                errors[0].0.starts_with("HTTP status 4"),
                "{what}: {errors:?}"
            );
        } else if p.dst_node == closed {
            assert_eq!((lost, segment), (20, Some("beyond")), "{what}");
            assert_eq!(errors, &[("connection refused".to_string(), 20)], "{what}");
        } else {
            // No neighbour answers: the SYNs wait for address resolution in the source's
            // stack and never reach its interface.
            assert_eq!(p.dst_node, nobody);
            assert_eq!((lost, segment), (20, Some("srcSend")), "{what}");
            assert_eq!(p.hooks.src_egress, 0, "{what}");
        }
    }
}

/// The controller's limits fail a round that names a destination outside `--allow-targets` or
/// asks more than `--max-qps`, before any agent probes; the agents hold their own limits again
/// (`--allow-targets`, `--max-probe-rate`) on what the controller let through: what they
/// withhold is said on its path and never counted as loss.
#[test]
fn limits_hold_in_the_controller_and_again_in_the_agents() {
    if !can_run("limits_hold_in_the_controller_and_again_in_the_agents") {
        return;
    }
    let task = |name: &str, qps: u32, addresses: &str| {
        format!(
            "apiVersion: meshdoctor.io/v1beta1
kind: NetReach
metadata: {{name: {name}}}
spec:
  schedule: {{schedule: '0 1', roundNumber: 1}}
  request: {{qps: {qps}, durationInSecond: 2, perRequestTimeoutInMS: 500}}
  target: {{ipv4: true, ipv6: false, addresses: [{addresses}]}}
"
        )
    };
    let mut cfg = LabConfig::new(2);
    cfg.tasks = vec![
        ("outside.yaml".into(), task("outside", 10, "'203.0.113.9'")),
        ("fast.yaml".into(), task("fast", 60, "")),
        // 192.0.2.200: allowed by the controller, not by the agents.
        ("guarded.yaml".into(), task("guarded", 20, "'192.0.2.200'")),
    ];
    cfg.controller_args = [
        "--allow-targets",
        "192.0.2.0/24,198.51.100.0/24",
        "--max-qps",
        "50",
    ]
    .map(String::from)
    .to_vec();
    cfg.agent_args = [
        "--allow-targets",
        "192.0.2.0/25,198.51.100.0/24",
        "--max-probe-rate",
        "30",
    ]
    .map(String::from)
    .to_vec();
    let lab = Lab::up(cfg).expect("lab up");
    let wait = Duration::from_secs(60);

    for (name, says) in [
        (
            "outside",
            [
                "203.0.113.9",
                "--allow-targets (192.0.2.0/24, 198.51.100.0/24)",
            ],
        ),
        ("fast", ["spec.request.qps 60", "--max-qps 50"]),
    ] {
        let r = lab.wait_round(name, 1, wait).expect("round 1 report");
        assert_eq!(r.status, RoundStatus::Fail, "{name}");
        assert!(r.paths.is_empty(), "{name}: probed anyway");
        let why = r.failure_reasons.join("; ");
        assert!(says.iter().all(|s| why.contains(s)), "{name}: {why}");
    }

    let r = lab.wait_round("guarded", 1, wait).expect("round 1 report");
    eprintln!("{}", meshdoctor_table::render_table(&r));
    // Each agent: eth0 and net1 toward its peer, 20 qps for 2 s each (80 probes, 40/s with
    // the listed address's), held to 30/s: 60 sent; the listed address none.
    assert_eq!(r.paths.len(), 2 * 3);
    for p in &r.paths {
        let what = format!("{} -> {} ({})", p.src_node, p.dst_node, p.src_interface);
        let errors: Vec<&str> = p.errors.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(
            (p.lost, p.send_failed),
            (0, 0),
            "{what}: withheld counted as loss"
        );
        if p.external {
            assert_eq!(p.sent, 0, "{what}");
            assert_eq!(p.errors.len(), 1, "{what}: {errors:?}");
            assert!(
                errors[0].contains("192.0.2.200 is outside this agent's --allow-targets"),
                "{what}: {errors:?}"
            );
            assert_eq!(p.errors[0].1, p.planned, "{what}");
        } else {
            assert_eq!(p.sent, 30, "{what}");
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains("this agent's --max-probe-rate 30 left it 30")),
                "{what}: {errors:?}"
            );
        }
    }
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}
