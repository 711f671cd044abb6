//! The image run for real: the lab's agents and controller as podman containers of the image
//! `cargo xtask image` builds, each in its lab namespace with the security context its workload
//! declares in the rendered manifests (`meshdoctor_lab::Containers`), checked from the host
//! in each container's /proc status: exactly the capabilities asked for, a seccomp filter, no
//! new privileges, a read-only root.
//!
//! Two manifests: the seccomp-localhost overlay (the agent under the shipped profile
//! deploy/seccomp/meshdoctor/agent.json) must find what the process lab finds, with eBPF;
//! the base (RuntimeDefault) shows what podman's default profile refuses, and that the agent
//! says so and names the fix.

use std::{collections::BTreeSet, fs, process::Command, time::Duration};

use meshdoctor_api::{Finding, RoundReport};
use meshdoctor_e2e::{can_run, setup_has_run, workspace_root};
use meshdoctor_lab::{
    Containers, Fault, Lab, LabConfig, MeshTask, SECCOMP_ROOT, container_name, render,
};

/// A fault the process lab finds in its first round (tests/localization.rs).
const FAULT: &str = "node-2:net1:egress:ipv4:100:link";
const NODES: usize = 4;

/// CAP_NET_ADMIN (12), CAP_NET_RAW (13), CAP_PERFMON (38), CAP_BPF (39): the agent's four.
const AGENT_CAPS: u64 = (1 << 12) | (1 << 13) | (1 << 38) | (1 << 39);

/// The image, or `None` (skipped) when it was not built; under `cargo xtask test`, which
/// builds it, a missing image fails.
fn image(test: &str) -> Option<String> {
    if !can_run(test) {
        return None;
    }
    let image = meshdoctor_ops::image();
    let exists = Command::new("podman")
        .args(["image", "exists", &image])
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        let msg = format!("{test}: no image {image} in podman's store: run `cargo xtask image`");
        assert!(!setup_has_run(), "{msg} (cargo xtask test builds it)");
        eprintln!("skipped {msg}");
    }
    exists.then_some(image)
}

fn containers(image: &str, manifests: &str) -> Containers {
    let rendered = render(&workspace_root().join(manifests)).expect("render the manifests");
    Containers::from_manifests(image, &rendered, &workspace_root().join(SECCOMP_ROOT))
        .expect("security contexts of the manifests")
}

/// What one round of a lab showed.
struct Run {
    report: RoundReport,
    /// With containers: what the kernel says of them.
    effective: Option<Effective>,
    /// node-1's agent log, read before the next lab replaces it.
    agent_log: String,
}

/// A 4-node lab with `FAULT` (or none), one round of the default ICMP mesh.
fn one_round(containers: Option<Containers>, faulty: bool) -> Run {
    let mut cfg = LabConfig::new(NODES);
    cfg.tasks = vec![(
        "mesh.yaml".into(),
        MeshTask {
            rounds: 1,
            ..MeshTask::new("mesh", 50, 2)
        }
        .yaml(),
    )];
    if faulty {
        cfg.faults = vec![FAULT.parse::<Fault>().unwrap()];
    }
    let in_containers = containers.is_some();
    cfg.containers = containers;
    let lab = Lab::up(cfg).expect("lab up");
    let effective = in_containers.then(Effective::read);
    let report = lab
        .wait_round("mesh", 1, Duration::from_secs(60))
        .expect("round report");
    let agent_log = fs::read_to_string(lab.log_path("node-1")).unwrap_or_default();
    Run {
        report,
        effective,
        agent_log,
    }
}

/// Where each finding is.
fn places(findings: &[Finding]) -> BTreeSet<String> {
    findings
        .iter()
        .map(|f| {
            format!(
                "{} {} {:?} {:?} {:?}",
                f.node, f.interface, f.family, f.direction, f.segment
            )
        })
        .collect()
}

/// What the kernel says of a container's main process.
struct Status {
    cap_eff: u64,
    cap_bnd: u64,
    seccomp: String,
    no_new_privs: String,
    /// The mount options of its root.
    root_options: String,
}

/// The effective security of the agent on node-1 and of the controller.
struct Effective {
    agent: Status,
    controller: Status,
}

impl Effective {
    fn read() -> Self {
        Self {
            agent: Status::of(&container_name("node-1")),
            controller: Status::of(&container_name("controller")),
        }
    }
}

impl Status {
    fn of(container: &str) -> Self {
        let out = Command::new("podman")
            .args(["inspect", "--format", "{{.State.Pid}}", container])
            .output()
            .expect("podman inspect");
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success() && pid != "0",
            "{container} is not running: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("{container}: no {name} in /proc/{pid}/status"))
                .trim()
                .to_string()
        };
        let hex = |name: &str| u64::from_str_radix(&field(name), 16).unwrap();
        let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        // Fields: id parent major:minor root mount-point options ...; the root is "/".
        // The last mount on "/" is the one the process sees.
        let root_options = mountinfo
            .lines()
            .rev()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 5 && f[4] == "/")
            .map(|f| f[5].to_string())
            .unwrap_or_default();
        Self {
            cap_eff: hex("CapEff:"),
            cap_bnd: hex("CapBnd:"),
            seccomp: field("Seccomp:"),
            no_new_privs: field("NoNewPrivs:"),
            root_options,
        }
    }

    /// Exactly `caps`, filtered, no new privileges, read-only root.
    fn check(&self, who: &str, caps: u64, problems: &mut Vec<String>) {
        if self.cap_eff != caps || self.cap_bnd != caps {
            problems.push(format!(
                "{who}: capabilities effective {:#x}, bounding {:#x}, expected exactly {caps:#x}",
                self.cap_eff, self.cap_bnd
            ));
        }
        if self.seccomp != "2" {
            problems.push(format!("{who}: Seccomp {} (2 is a filter)", self.seccomp));
        }
        if self.no_new_privs != "1" {
            problems.push(format!("{who}: NoNewPrivs {}", self.no_new_privs));
        }
        if !self.root_options.split(',').any(|o| o == "ro") {
            problems.push(format!("{who}: root mounted {}", self.root_options));
        }
    }
}

/// Every path that got replies has kernel RTTs: the eBPF observers ran.
fn ebpf_timed(report: &RoundReport) -> bool {
    report
        .paths
        .iter()
        .filter(|p| p.received > 0)
        .all(|p| p.kernel_rtt.is_some())
}

#[test]
fn containers_under_the_shipped_profile_find_what_processes_find() {
    let test = "containers_under_the_shipped_profile_find_what_processes_find";
    let Some(image) = image(test) else {
        return;
    };
    let processes = one_round(None, true).report;
    let Run {
        report: contained,
        effective,
        ..
    } = one_round(
        Some(containers(&image, "deploy/overlays/seccomp-localhost")),
        true,
    );
    let effective = effective.expect("containers ran");
    let mut problems = Vec::new();
    effective.agent.check("agent", AGENT_CAPS, &mut problems);
    effective.controller.check("controller", 0, &mut problems);
    let (expected, found) = (places(&processes.findings), places(&contained.findings));
    eprintln!("processes: {expected:?}\ncontainers: {found:?}");
    if expected.len() != 1 || found != expected {
        problems.push(format!(
            "the injected {FAULT} gave {expected:?} as processes and {found:?} in containers"
        ));
    }
    if !ebpf_timed(&contained) {
        problems.push("the contained agents did not time probes with eBPF".into());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_runtime_default_profile_refuses_bpf_and_the_agent_names_the_fix() {
    let test = "the_runtime_default_profile_refuses_bpf_and_the_agent_names_the_fix";
    let Some(image) = image(test) else {
        return;
    };
    let Run {
        report,
        effective,
        agent_log: log,
    } = one_round(Some(containers(&image, "deploy")), false);
    let effective = effective.expect("containers ran");
    let mut problems = Vec::new();
    effective.agent.check("agent", AGENT_CAPS, &mut problems);
    // A healthy mesh still: over the sockets' timestamps, with no finding.
    if !report.findings.is_empty() || report.summary.lost > 0 {
        problems.push(format!(
            "a healthy containerized mesh lost {} probes: {:?}",
            report.summary.lost,
            places(&report.findings)
        ));
    }
    if report.paths.iter().any(|p| p.kernel_rtt.is_some()) {
        problems.push("kernel RTTs without eBPF: podman's default profile allowed bpf()".into());
    }
    if !log.contains("deploy/seccomp/meshdoctor/agent.json") {
        problems.push(format!(
            "the agent's log does not name the shipped profile:\n{}",
            log.lines().take(5).collect::<Vec<_>>().join("\n")
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
