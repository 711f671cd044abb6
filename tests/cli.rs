//! `meshdoctor check` and `meshdoctor resume` end to end: the built CLI, run inside the lab's
//! controller namespace with the lab's token, against the real controller and agents.
//!
//! A healthy 3-node mesh checks clean (exit 0); with node-2's net1 dropping every IPv4 packet it
//! receives, check exits 1 and its table names node-2 and net1; once the fault is gone, resume
//! probes exactly the pair-paths that failed (read back from its JSON report) and exits 0.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use meshdoctor_api::RoundReport;
use meshdoctor_e2e::can_run;
use meshdoctor_lab::{
    Fault, Lab, LabConfig, MeshTask, default_bin_dir,
    plan::{CONTROLLER_NS, SECOND_CONTROLLER_PORT},
};

/// Probing per check: 50 probes per pair-path, enough to see a 100% fault for certain.
const DURATION: &str = "2";
const QPS: &str = "25";

/// Runs `meshdoctor ARGS` inside the controller's namespace against the lab's controller.
fn meshdoctor(lab: &Lab, state: &Path, args: &[&str]) -> Output {
    let cli = default_bin_dir().join("meshdoctor");
    assert!(cli.is_file(), "{} missing: cargo build", cli.display());
    let output = Command::new("ip")
        .args(["netns", "exec", CONTROLLER_NS])
        .arg(&cli)
        .args(["--controller", "https://[::1]:7070", "--token-file"])
        .arg(lab.admin_token_path())
        .arg("--ca-file")
        .arg(lab.ca_path())
        .args(args)
        // Only the commands that keep a state file take --state.
        .args(
            ["check", "resume", "clean"]
                .contains(&args[0])
                .then_some([Path::new("--state"), state])
                .into_iter()
                .flatten(),
        )
        .output()
        .expect("running ip netns exec");
    eprintln!(
        "meshdoctor {}: {}\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// (src node, dst node, network, family) of each pair-path of a report matching `keep`.
fn pair_paths(
    report: &RoundReport,
    keep: impl Fn(&meshdoctor_api::PathResult) -> bool,
) -> BTreeSet<(String, String, String, String)> {
    report
        .paths
        .iter()
        .filter(|p| keep(p))
        .map(|p| {
            (
                p.src_node.to_string(),
                p.dst_node.to_string(),
                p.network.to_string(),
                p.family.to_string(),
            )
        })
        .collect()
}

/// The round report in `-o json` output: under `.report` for check and resume, the whole
/// document for report.
fn json_report(output: &Output) -> RoundReport {
    let mut value: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("meshdoctor -o json prints JSON");
    if let Some(report) = value.get_mut("report") {
        value = report.take();
    }
    serde_json::from_value(value).expect("a round report")
}

/// Removes `fault`, then `resume` must come back clean having probed exactly `failed`.
fn repair_and_resume(
    lab: &Lab,
    state: &Path,
    fault: &Fault,
    failed: &BTreeSet<(String, String, String, String)>,
) {
    lab.remove_fault(fault).unwrap();
    let resumed = meshdoctor(lab, state, &["resume", "-o", "json"]);
    assert_eq!(
        resumed.status.code(),
        Some(0),
        "resume after the repair is clean"
    );
    assert_eq!(
        &pair_paths(&json_report(&resumed), |_| true),
        failed,
        "resume probes the failed pair-paths and nothing else"
    );
}

fn state_file(lab: &Lab) -> PathBuf {
    lab.dir().join("meshdoctor-resume.json")
}

#[test]
fn check_finds_the_faulty_interface_and_resume_clears_it() {
    if !can_run("check_finds_the_faulty_interface_and_resume_clears_it") {
        return;
    }
    let mut cfg = LabConfig::new(3);
    cfg.tasks.clear();
    let lab = Lab::up(cfg).expect("lab up");
    let state = state_file(&lab);
    let check = ["check", "--duration", DURATION, "--qps", QPS, "--ipv6"];

    let healthy = meshdoctor(&lab, &state, &check);
    assert_eq!(
        healthy.status.code(),
        Some(0),
        "a healthy mesh checks clean"
    );

    let fault: Fault = "node-2:net1:ingress:ipv4:100:link".parse().unwrap();
    lab.inject(&fault).unwrap();
    let faulty = meshdoctor(&lab, &state, &[&check[..], &["--keep"]].concat());
    assert_eq!(faulty.status.code(), Some(1), "the check must fail");
    let text = String::from_utf8_lossy(&faulty.stdout);
    let findings = text.split("FAILED PAIR-PATHS").next().unwrap_or_default();
    let finding = findings
        .lines()
        .find(|l| l.starts_with("node-2 ") && l.contains("net1"))
        .unwrap_or_else(|| panic!("no finding row for node-2 net1 in\n{text}"));
    assert!(finding.contains("ingress"), "{finding}");
    assert_eq!(
        findings.lines().filter(|l| l.starts_with("node-")).count(),
        1,
        "one faulty interface, nothing else: {findings}"
    );

    // The kept task's report, as JSON: which pair-paths failed.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let task = saved["lastTask"]
        .as_str()
        .expect("the state names the task");
    let report = json_report(&meshdoctor(&lab, &state, &["report", task, "-o", "json"]));
    let failed = pair_paths(&report, |p| p.lost > 0);
    // node-2's net1 drops every IPv4 packet it receives: requests to it and replies to it.
    let expected: BTreeSet<_> = [("node-1", "node-2"), ("node-3", "node-2")]
        .into_iter()
        .chain([("node-2", "node-1"), ("node-2", "node-3")])
        .map(|(s, d)| (s.into(), d.into(), "net1".into(), "ipv4".into()))
        .collect();
    assert_eq!(failed, expected);
    assert_eq!(meshdoctor(&lab, &state, &["clean"]).status.code(), Some(0));
    // clean removed the state file with the task: check again to record the failures.
    assert_eq!(meshdoctor(&lab, &state, &check).status.code(), Some(1));

    repair_and_resume(&lab, &state, &fault, &expected);
    let again = meshdoctor(&lab, &state, &["resume"]);
    assert_eq!(again.status.code(), Some(0));
}

/// NetDoctor's cross-cluster check: node-1 and node-2 belong to the lab's first controller,
/// node-3 and node-4 to a second one (a second cluster on a routable network). `check
/// --dst-controller` on the first probes the second's agents from the first's; with node-4's
/// net1 dropping what it receives, exactly the pair-paths to it over net1 fail, and after the
/// repair resume re-probes those alone.
#[test]
fn cross_cluster_check_probes_the_other_clusters_agents() {
    if !can_run("cross_cluster_check_probes_the_other_clusters_agents") {
        return;
    }
    let mut cfg = LabConfig::new(4);
    cfg.tasks.clear();
    cfg.second_cluster = 2;
    let lab = Lab::up(cfg).expect("lab up");
    let state = state_file(&lab);
    let dst = format!("https://[::1]:{SECOND_CONTROLLER_PORT}");
    let (dst_token, dst_ca) = (lab.reader_token_path(), lab.ca_path());
    let check = [
        "check",
        "-o",
        "json",
        "--duration",
        DURATION,
        "--qps",
        QPS,
        "--dst-controller",
        &dst,
        "--dst-name",
        "east",
        "--dst-token-file",
        dst_token.to_str().unwrap(),
        "--dst-ca-file",
        dst_ca.to_str().unwrap(),
        // IPv4 alone: the fault below is IPv4's (both families are the default here).
        "--no-ipv6",
    ];
    let cross = |dsts: &[&str], networks: &[&str]| -> BTreeSet<_> {
        let mut out = BTreeSet::new();
        for src in ["node-1", "node-2"] {
            for dst in dsts {
                for net in networks {
                    out.insert((
                        src.into(),
                        format!("east/{dst}"),
                        net.to_string(),
                        "ipv4".into(),
                    ));
                }
            }
        }
        out
    };

    let healthy = meshdoctor(&lab, &state, &check);
    assert_eq!(
        healthy.status.code(),
        Some(0),
        "the two clusters reach each other"
    );
    let report = json_report(&healthy);
    assert_eq!(
        pair_paths(&report, |_| true),
        cross(&["node-3", "node-4"], &["default", "net1"]),
        "every agent of the first cluster probes every agent of the second, network by network"
    );
    assert!(
        report
            .paths
            .iter()
            .all(|p| p.external && p.received == p.sent)
    );

    let fault: Fault = "node-4:net1:ingress:ipv4:100:link".parse().unwrap();
    lab.inject(&fault).unwrap();
    let faulty = meshdoctor(&lab, &state, &check);
    assert_eq!(faulty.status.code(), Some(1), "the check must fail");
    let report = json_report(&faulty);
    assert_eq!(
        pair_paths(&report, |p| p.lost > 0),
        cross(&["node-4"], &["net1"])
    );

    repair_and_resume(&lab, &state, &fault, &cross(&["node-4"], &["net1"]));
}

/// `findings --watch` follows a periodic task's rounds as they finish, naming the faulty
/// interface in each; `check` without a family flag probes both families, since every lab
/// agent has both.
#[test]
fn findings_watch_follows_rounds_and_check_probes_both_families() {
    if !can_run("findings_watch_follows_rounds_and_check_probes_both_families") {
        return;
    }
    let mut cfg = LabConfig::new(3);
    cfg.tasks = vec![(
        "mesh.yaml".into(),
        MeshTask {
            schedule: "@every 4s",
            rounds: 3,
            ..MeshTask::new("mesh", 25, 1)
        }
        .yaml(),
    )];
    cfg.faults = vec!["node-2:net1:ingress:ipv4:100:link".parse().unwrap()];
    let lab = Lab::up(cfg).expect("lab up");
    let state = state_file(&lab);
    lab.wait_round("mesh", 1, Duration::from_secs(60))
        .expect("round 1");
    let watched = meshdoctor(
        &lab,
        &state,
        &["findings", "--watch", "--rounds", "2", "--interval", "1"],
    );
    assert_eq!(
        watched.status.code(),
        Some(1),
        "findings exit 1 when there are some"
    );
    let text = String::from_utf8_lossy(&watched.stdout);
    let rounds: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("mesh round "))
        .collect();
    assert_eq!(
        rounds,
        [
            "mesh round 1: 1 finding(s)",
            "mesh round 2: 1 finding(s)",
            "mesh round 3: 1 finding(s)"
        ],
        "{text}"
    );
    let rows = text
        .lines()
        .filter(|l| l.starts_with("node-2 ") && l.contains("net1"));
    assert_eq!(rows.count(), 3, "node-2 net1 in every round: {text}");

    let checked = meshdoctor(
        &lab,
        &state,
        &["check", "--duration", "1", "--qps", QPS, "-o", "json"],
    );
    let families: BTreeSet<String> = pair_paths(&json_report(&checked), |_| true)
        .into_iter()
        .map(|(_, _, _, family)| family)
        .collect();
    assert_eq!(families, BTreeSet::from(["ipv4".into(), "ipv6".into()]));
}
