//! meshdoctor's own parts failing in the lab, each with what the round reports, the task's
//! status and the metrics must show: nothing lost without a trace, nothing counted as packet
//! loss. The controller restarted mid-round, an agent restarted mid-round, an agent cut off
//! from the controller (its report late, then never), and a full disk under the controller's
//! data. (A full ring buffer: `tests/mesh.rs`.)

use std::{
    path::Path,
    thread::sleep,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use meshdoctor_api::{
    PathState, RoundReport, RoundStatus, TaskStatus,
    routes::{self, RoundRef},
    views::TaskView,
};
use meshdoctor_e2e::{can_run, metric_sum};
use meshdoctor_lab::{Lab, LabConfig, LabError, MeshTask, plan::CONTROLLER_PORT};

/// Three nodes: 24 pair-paths (6 ordered pairs, 2 interfaces, 2 families).
const NODES: usize = 3;
const PATHS: usize = 24;
/// The rounds' pace: 10 probes/s for 4 s on every pair-path, so 40 per path.
const QPS: u32 = 10;
const SECS: u32 = 4;

/// A lab of [`NODES`] running `rounds` rounds of the ICMP mesh task `mesh`, one per `every`.
fn lab(rounds: i64, every: &str, tune: impl FnOnce(&mut LabConfig)) -> Lab {
    let mut cfg = LabConfig::new(NODES);
    let schedule = format!("@every {every}");
    let task = MeshTask {
        schedule: &schedule,
        rounds,
        ..MeshTask::new("mesh", QPS, SECS)
    };
    cfg.tasks = vec![("mesh.yaml".into(), task.yaml())];
    tune(&mut cfg);
    Lab::up(cfg).expect("lab up")
}

/// A lab of `rounds` rounds, one every 15 s, whose lab process `process` is killed while round
/// 1 probes and started again at once.
fn restarted_mid_round(rounds: i64, process: &str) -> Lab {
    let mut lab = lab(rounds, "15s", |_| {});
    // Round 1 starts about a second after the agents registered and probes for 4 s.
    sleep(Duration::from_millis(2500));
    lab.restart(process)
        .unwrap_or_else(|e| panic!("restart {process}: {e}"));
    lab
}

fn wait_round(lab: &Lab, round: u32) -> RoundReport {
    let r = lab
        .wait_round("mesh", round, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
    eprintln!("round {round}: {:?} {:?}", r.status, r.failure_reasons);
    eprintln!("{}", meshdoctor_table::render_table(&r));
    r
}

/// A round in which every agent reported and every probe came back.
fn assert_healthy(r: &RoundReport) {
    assert_eq!(
        (r.status, &r.not_reported),
        (RoundStatus::Succeed, &vec![]),
        "round {}: {:?}",
        r.round,
        r.failure_reasons
    );
    assert_eq!(r.paths.len(), PATHS);
    for p in &r.paths {
        assert_eq!(
            (p.state, p.sent, p.lost),
            (PathState::Ok, QPS * SECS, 0),
            "{p:?}"
        );
    }
}

fn status(lab: &Lab) -> TaskStatus {
    let views: Vec<TaskView> =
        serde_json::from_value(lab.controller_get(routes::TASKS).expect("GET the tasks"))
            .expect("task views");
    let view = views
        .into_iter()
        .find(|v| v.name == "mesh")
        .expect("task mesh");
    view.status.expect("the task has a status")
}

fn controller_metric(lab: &Lab, name: &str) -> f64 {
    let (code, text) = lab.controller_text(routes::METRICS).expect("GET /metrics");
    assert_eq!(code, 200, "{text}");
    metric_sum(&text, name)
}

fn agent_metric(lab: &Lab, node: usize, name: &str) -> f64 {
    metric_sum(&lab.agent_metrics(node).expect("agent metrics"), name)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn sleep_until_ms(at_ms: u64) {
    sleep(Duration::from_millis(at_ms.saturating_sub(now_ms())));
}

/// The controller is killed while round 1 probes and started again at once. The restarted
/// controller finds round 1 marked running and records it as interrupted (stored, failed,
/// saying why), continues the numbering and the status from disk (rounds 2 and 3, three in
/// all as `roundNumber` asks, not five), and counts the agents' round-1 reports, which reach
/// it after the restart, as late; each agent counts its report as not delivered.
#[test]
fn a_controller_restarted_mid_round_records_the_round_interrupted_and_goes_on() {
    if !can_run("a_controller_restarted_mid_round_records_the_round_interrupted_and_goes_on") {
        return;
    }
    let lab = restarted_mid_round(3, "controller");
    let r1 = wait_round(&lab, 1);
    assert_eq!(r1.status, RoundStatus::Fail);
    assert!(
        r1.failure_reasons
            .iter()
            .any(|r| r.starts_with("interrupted")),
        "{:?}",
        r1.failure_reasons
    );
    assert_eq!(r1.summary.lost, 0, "an interruption is no packet loss");
    assert_healthy(&wait_round(&lab, 2));
    assert_healthy(&wait_round(&lab, 3));
    // No fourth round: the interrupted one counts.
    sleep(Duration::from_secs(17));
    let s = status(&lab);
    assert!(s.finish, "{s:?}");
    assert_eq!(s.done_round, 3);
    let history: Vec<(u32, RoundStatus)> = s
        .history
        .iter()
        .map(|h| (h.round_number, h.status))
        .collect();
    assert_eq!(
        history,
        [
            (3, RoundStatus::Succeed),
            (2, RoundStatus::Succeed),
            (1, RoundStatus::Fail)
        ]
    );
    let r4 = lab.controller_get(&routes::task_round("mesh", RoundRef::Number(4)));
    assert!(
        matches!(
            r4,
            Err(LabError::Http {
                status: Some(404),
                ..
            })
        ),
        "{r4:?}"
    );
    // Every agent's round-1 report: refused as late by the restarted controller, counted on
    // both sides.
    assert_eq!(
        controller_metric(&lab, "meshdoctor_reports_late_total"),
        NODES as f64
    );
    for node in 1..=NODES {
        assert_eq!(
            agent_metric(&lab, node, "meshdoctor_agent_report_failures_total"),
            1.0,
            "node-{node}"
        );
    }
}

/// node-3's agent is killed while round 1 probes and started again at once. It registers
/// again, is handed round 1's plan and keeps to the round's window: the probes whose time
/// passed while it was down are reported withheld (never sent late, never loss), the rest
/// sent. Round 2 is whole.
#[test]
fn an_agent_restarted_mid_round_keeps_to_the_rounds_window_and_the_next_is_whole() {
    if !can_run("an_agent_restarted_mid_round_keeps_to_the_rounds_window_and_the_next_is_whole") {
        return;
    }
    let lab = restarted_mid_round(2, "node-3");
    let r1 = wait_round(&lab, 1);
    assert!(r1.not_reported.is_empty(), "{:?}", r1.not_reported);
    assert_eq!(r1.summary.lost, 0, "a restart is no packet loss");
    assert_eq!(r1.paths.len(), PATHS);
    for p in &r1.paths {
        assert_eq!(p.lost, 0, "{p:?}");
        if p.src_node != "node-3" {
            assert_eq!((p.state, p.sent), (PathState::Ok, QPS * SECS), "{p:?}");
            continue;
        }
        let late = p
            .errors
            .iter()
            .find(|(why, _)| why.contains("(re)started after the round began"))
            .map_or(0, |(_, n)| *n);
        assert!(late > 0 && p.sent > 0, "{p:?}");
        assert_eq!(p.sent + late, p.planned, "{p:?}");
    }
    assert_healthy(&wait_round(&lab, 2));
}

/// node-3's agent cannot reach the controller (its packets to the controller's port are
/// dropped) from mid-round 1 until after its first report attempt timed out: the report gets
/// through on a retry, late but before the deadline, and round 1 is whole. In round 2 the cut
/// lasts past the deadline: node-3 is named as not reported, its paths are not reported
/// (never loss), everyone else's are whole, and the agent counts the report it could not
/// deliver.
#[test]
fn an_agent_cut_off_from_the_controller_reports_late_or_is_named() {
    if !can_run("an_agent_cut_off_from_the_controller_reports_late_or_is_named") {
        return;
    }
    // Report deadline: start + 4 s + 1 s + 25 s.
    let lab = lab(2, "35s", |cfg| {
        cfg.controller_args = ["--report-grace", "25s"].map(String::from).to_vec();
    });
    let cut = |on: bool| {
        if on {
            let rules = format!(
                "table inet mdchaos {{\n chain out {{\n  type filter hook output priority 0;\n  \
                 tcp dport {CONTROLLER_PORT} drop\n }}\n}}\n"
            );
            lab.nft(NODES, &rules).expect("cut node-3 off");
        } else {
            lab.exec(NODES, &["nft", "delete", "table", "inet", "mdchaos"])
                .expect("reconnect node-3");
        }
    };
    let up = now_ms();
    // Round 1 probes from about a second after the agents registered; node-3 reports after
    // 5 s, and its first attempt hangs for 10 s.
    sleep_until_ms(up + 2_000);
    cut(true);
    sleep_until_ms(up + 18_000);
    cut(false);
    let r1 = wait_round(&lab, 1);
    assert_healthy(&r1);
    assert!(agent_metric(&lab, NODES, "meshdoctor_agent_report_retries_total") >= 1.0);
    assert_eq!(
        agent_metric(&lab, NODES, "meshdoctor_agent_report_failures_total"),
        0.0
    );

    let start2 = r1.start_ms + 35_000;
    sleep_until_ms(start2 + 2_000);
    cut(true);
    sleep_until_ms(start2 + 33_000);
    cut(false);
    let r2 = wait_round(&lab, 2);
    assert_eq!(r2.status, RoundStatus::Fail);
    assert_eq!(r2.not_reported, vec!["node-3".to_string()]);
    assert!(
        r2.failure_reasons.iter().any(|f| f.contains("node-3")),
        "{:?}",
        r2.failure_reasons
    );
    assert_eq!(r2.paths.len(), PATHS);
    for p in &r2.paths {
        if p.src_node == "node-3" {
            assert_eq!((p.state, p.lost), (PathState::NotReported, 0), "{p:?}");
        } else {
            // node-3's kernel still answers; only its report is missing.
            assert_eq!(
                (p.state, p.sent, p.lost),
                (PathState::Ok, QPS * SECS, 0),
                "{p:?}"
            );
            assert_eq!(p.dst_reported, p.dst_node != "node-3", "{p:?}");
        }
    }
    assert_eq!(r2.summary.lost, 0);
    assert_eq!(
        agent_metric(&lab, NODES, "meshdoctor_agent_report_failures_total"),
        1.0
    );
}

/// The controller's data dir is a 2 MiB tmpfs. After round 1 is stored, a file fills it:
/// round 2's report cannot be stored, so its status entry is a failed round saying why,
/// `GET` of it answers 404, a metric counts the failure, `/readyz` answers 503 with why and
/// no temporary file is left behind. Once there is room again, readiness is back at once and
/// round 3 is stored.
#[test]
fn a_full_disk_fails_the_round_and_readiness_until_there_is_room() {
    if !can_run("a_full_disk_fails_the_round_and_readiness_until_there_is_room") {
        return;
    }
    let lab = lab(3, "15s", |cfg| cfg.data_size_kib = Some(2048));
    assert_healthy(&wait_round(&lab, 1));
    let data = lab.dir().join("data");
    let filler = data.join("filler");
    fill(&filler);

    let deadline = Instant::now() + Duration::from_secs(60);
    let entry = loop {
        if let Some(h) = status(&lab)
            .history
            .into_iter()
            .find(|h| h.round_number == 2)
        {
            break h;
        }
        assert!(Instant::now() < deadline, "round 2 never closed");
        sleep(Duration::from_millis(300));
    };
    assert_eq!(entry.status, RoundStatus::Fail);
    assert!(
        entry
            .failure_reasons
            .iter()
            .any(|r| r.starts_with("the round's report could not be stored: ")),
        "{:?}",
        entry.failure_reasons
    );
    let r2 = lab.controller_get(&routes::task_round("mesh", RoundRef::Number(2)));
    assert!(
        matches!(
            r2,
            Err(LabError::Http {
                status: Some(404),
                ..
            })
        ),
        "{r2:?}"
    );
    assert_eq!(
        controller_metric(&lab, "meshdoctor_report_store_failures_total"),
        1.0
    );
    let (code, why) = lab.controller_text(routes::READYZ).expect("GET /readyz");
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("could not be stored"), "{why}");
    let leftovers = temporary_files(&data);
    assert!(leftovers.is_empty(), "{leftovers:?}");

    std::fs::remove_file(&filler).expect("make room");
    let (code, why) = lab.controller_text(routes::READYZ).expect("GET /readyz");
    assert_eq!(code, 200, "{why}");
    assert_healthy(&wait_round(&lab, 3));
    assert_eq!(
        controller_metric(&lab, "meshdoctor_report_store_failures_total"),
        1.0
    );
}

/// Writes `path` until its filesystem is full.
fn fill(path: &Path) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
                break;
            }
        }
    }
}

/// Files under `dir` whose name ends in `.tmp`.
fn temporary_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "tmp") {
                out.push(path);
            }
        }
    }
    out
}
