//! The human view of a round report: the faulty interfaces, one row per pair-path, then a
//! one-line verdict. Shared by the CLI and the lab so that both print the same tables.

use std::cmp::Ordering;

use std::collections::BTreeMap;

use meshdoctor_api::{
    AgentAppState, AppRoundReport, Finding, MeshMode, Packet, PathResult, PathState, RoundReport,
    RoundStatus, RttStats,
};

/// Orders `node-2` before `node-10`: names compare by their text, then by a trailing number.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn split(s: &str) -> (&str, Option<u64>) {
        let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (text, num) = s.split_at(s.len() - digits);
        (text, num.parse().ok())
    }
    split(a).cmp(&split(b)).then_with(|| a.cmp(b))
}

fn path_order(a: &PathResult, b: &PathResult) -> Ordering {
    natural_cmp(&a.src_node, &b.src_node)
        .then_with(|| natural_cmp(&a.dst_node, &b.dst_node))
        .then_with(|| a.src_interface.cmp(&b.src_interface))
        .then_with(|| a.dst_interface.cmp(&b.dst_interface))
        .then_with(|| a.family.cmp(&b.family))
}

fn us(stats: Option<&RttStats>, pick: fn(&RttStats) -> f32) -> String {
    stats.map_or_else(|| "-".into(), |s| format!("{:.1}", pick(s)))
}

/// Lays out `rows` under `header`, columns two spaces apart, right-aligning the columns
/// `right` names (numbers) so that their digits line up; one table style for every view.
fn layout<const N: usize>(
    header: [&str; N],
    rows: &[[String; N]],
    right: impl Fn(usize) -> bool,
) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String; N]| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            let pad = " ".repeat(width - cell.chars().count());
            if i > 0 {
                out.push_str("  ");
            }
            if right(i) {
                out.push_str(&pad);
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&pad);
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&header.map(String::from));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// One row per pair-path, sorted by source, destination, interface and family: counts, loss,
/// where it was lost and the kernel's top drop reason, and the kernel (hook to hook) and
/// user-space RTT percentiles in microseconds. SENT counts the probes the source attempted,
/// failed sends included (they are lost), so that LOST / SENT is the loss.
///
/// An application round (AppHttpHealthy, NetDns) has no pair-paths: its table is
/// [`render_app_table`], one row per agent.
pub fn render_table(report: &RoundReport) -> String {
    if let Some(app) = &report.app {
        return render_app_table(app);
    }
    const HEADER: [&str; 15] = [
        "SRC",
        "DST",
        "IFACE",
        "NETWORK",
        "FAMILY",
        "STATE",
        "SENT",
        "LOST",
        "LOSS%",
        "SEGMENT",
        "REASON",
        "KRTT50µs",
        "KRTT99µs",
        "URTT50µs",
        "URTT99µs",
    ];
    /// Columns from SENT on are numbers, right-aligned, except the text ones: where the lost
    /// probes were lost, and why.
    const FIRST_NUMERIC: usize = 6;
    const SEGMENT: usize = 9;
    const REASON: usize = 10;

    let mut paths: Vec<&PathResult> = report.paths.iter().collect();
    paths.sort_by(|a, b| path_order(a, b));
    let rows: Vec<[String; 15]> = paths
        .into_iter()
        .map(|p| {
            let iface = if p.src_interface == p.dst_interface {
                p.src_interface.to_string()
            } else {
                format!("{}>{}", p.src_interface, p.dst_interface)
            };
            let state = match p.state {
                PathState::Ok => "ok",
                PathState::Lossy => "lossy",
                PathState::NotReported => "not-reported",
            };
            [
                p.src_node.to_string(),
                p.dst_node.to_string(),
                iface,
                p.network.to_string(),
                p.family.to_string(),
                state.into(),
                (p.sent + p.send_failed).to_string(),
                p.lost.to_string(),
                format!("{:.1}", p.loss_ratio * 100.0),
                p.segments.dominant().unwrap_or("-").into(),
                p.top_reason().unwrap_or("-").into(),
                us(p.kernel_rtt.as_ref(), |s| s.p50_us),
                us(p.kernel_rtt.as_ref(), |s| s.p99_us),
                us(p.user_rtt.as_ref(), |s| s.p50_us),
                us(p.user_rtt.as_ref(), |s| s.p99_us),
            ]
        })
        .collect();
    layout(HEADER, &rows, |i| {
        i >= FIRST_NUMERIC && i != SEGMENT && i != REASON
    })
}

/// `key×count` pairs, most frequent first, at most 3 and `+N more`.
fn counts(map: &BTreeMap<String, u64>) -> String {
    const SHOWN: usize = 3;
    if map.is_empty() {
        return "-".into();
    }
    let mut sorted: Vec<(&String, &u64)> = map.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let mut shown: Vec<String> = sorted
        .iter()
        .take(SHOWN)
        .map(|(k, n)| format!("{k}×{n}"))
        .collect();
    if sorted.len() > SHOWN {
        shown.push(format!("+{} more", sorted.len() - SHOWN));
    }
    shown.join(",")
}

/// One row per agent of an application round, sorted by node: requests sent, succeeded,
/// failed and not sent (the agent's own shortfall), the success rate, requests per second,
/// latency of the successful requests in microseconds, replies by code and errors by kind.
pub fn render_app_table(app: &AppRoundReport) -> String {
    const HEADER: [&str; 16] = [
        "NODE", "STATE", "REQ", "OK", "FAIL", "UNSENT", "SUCCESS%", "TPS", "MINµs", "MEANµs",
        "P50µs", "P90µs", "P99µs", "MAXµs", "CODES", "ERRORS",
    ];
    const FIRST_NUMERIC: usize = 2;
    const CODES: usize = 14;

    let mut agents: Vec<_> = app.agents.iter().collect();
    agents.sort_by(|a, b| natural_cmp(&a.node, &b.node));
    let rows: Vec<[String; 16]> = agents
        .into_iter()
        .map(|a| {
            let state = match a.state {
                AgentAppState::Ok => "ok",
                AgentAppState::Failures => "failures",
                AgentAppState::Error => "error",
                AgentAppState::NotReported => "not-reported",
            };
            let dash = || "-".to_string();
            let Some(s) = &a.stats else {
                let mut row: [String; 16] = std::array::from_fn(|_| dash());
                row[0] = a.node.clone();
                row[1] = state.into();
                return row;
            };
            let lat = |pick: fn(&meshdoctor_api::LatencyUs) -> String| {
                s.latency.as_ref().map_or_else(dash, pick)
            };
            let errors = match &a.error {
                Some(e) => e.clone(),
                None => counts(&s.errors),
            };
            [
                a.node.clone(),
                state.into(),
                s.requests.to_string(),
                s.successes.to_string(),
                (s.requests - s.successes.min(s.requests)).to_string(),
                s.not_sent.to_string(),
                a.success_rate
                    .map_or_else(dash, |r| format!("{:.1}", r * 100.0)),
                format!("{:.1}", s.tps),
                lat(|l| l.min.to_string()),
                lat(|l| format!("{:.0}", l.mean)),
                lat(|l| l.p50.to_string()),
                lat(|l| l.p90.to_string()),
                lat(|l| l.p99.to_string()),
                lat(|l| l.max.to_string()),
                counts(&s.codes),
                errors,
            ]
        })
        .collect();
    layout(HEADER, &rows, |i| (FIRST_NUMERIC..CODES).contains(&i))
}

/// The summary of an application round: its target, the totals over the agents, and the
/// mean latency of the successful requests.
fn app_summary_line(report: &RoundReport, app: &AppRoundReport, status: &str) -> String {
    let s = &app.summary;
    let rate = s
        .success_rate
        .map_or_else(|| "-".into(), |r| format!("{:.2}%", r * 100.0));
    let mut line = format!(
        "{} round {} {status}: {} {} (success: {}): {} agents ({} reported), {} requests, \
         {} succeeded ({rate}), {} failed, {} not sent",
        report.task,
        report.round,
        app.kind,
        app.target,
        app.expected,
        s.agents,
        s.reported,
        s.requests,
        s.successes,
        s.failures,
        s.not_sent,
    );
    if let Some(ms) = s.mean_latency_ms {
        line.push_str(&format!(", mean latency {ms:.3} ms"));
    }
    if let (Some(min), Some(max)) = (s.min_latency_us, s.max_latency_us) {
        line.push_str(&format!(" (min {min} µs, max {max} µs)"));
    }
    line
}

/// Drop reasons shown per finding; the JSON report has them all.
const TOP_REASONS: usize = 2;

/// `reason@function×count` for the top reasons: the kernel function without its offset, which
/// names the dropping subsystem (`nft_do_chain`) and is stable across kernel builds.
fn reasons(finding: &Finding) -> String {
    if finding.drop_reasons.is_empty() {
        return "-".into();
    }
    let mut shown: Vec<String> = finding
        .drop_reasons
        .iter()
        .take(TOP_REASONS)
        .map(|r| {
            let function = r.location.split('+').next().unwrap_or_default();
            format!("{}@{function}×{}", r.reason, r.count)
        })
        .collect();
    let more = finding.drop_reasons.len().saturating_sub(TOP_REASONS);
    if more > 0 {
        shown.push(format!("+{more} more"));
    }
    shown.join(", ")
}

/// One row per faulty interface, in the given (worst first) order: the place, the packets it
/// loses, the estimated loss ratio with its confidence interval, the counts behind it, how
/// many node pairs show it, and the kernel's drop reasons. Meant above the pair table: it
/// answers "where", the pair table "what".
pub fn render_findings(findings: &[Finding]) -> String {
    const HEADER: [&str; 11] = [
        "NODE",
        "IFACE",
        "NETWORK",
        "FAMILY",
        "DIR",
        "SEGMENT",
        "PACKETS",
        "LOSS",
        "LOST/PROBES",
        "PAIRS",
        "REASONS",
    ];
    const LOST: usize = 8;
    const PAIRS: usize = 9;

    if findings.is_empty() {
        return "no faulty interface found\n".into();
    }
    let rows: Vec<[String; 11]> = findings
        .iter()
        .map(|f| {
            let packets: Vec<String> = f.packets.iter().map(Packet::to_string).collect();
            // A way between domains has no node or interface of its own.
            let (node, interface) = match &f.to_zone {
                Some(to) => (format!("{} → {to}", f.zone), "*".into()),
                None => (f.node.clone(), f.interface.clone()),
            };
            [
                node,
                interface,
                f.network.clone(),
                f.family.to_string(),
                f.direction.to_string(),
                f.segment.to_string(),
                packets.join("+"),
                format!(
                    "{:.1}% [{:.1}–{:.1}]",
                    f.loss_ratio * 100.0,
                    f.interval.low * 100.0,
                    f.interval.high * 100.0
                ),
                format!("{}/{}", f.lost, f.probes),
                f.pairs().to_string(),
                reasons(f),
            ]
        })
        .collect();
    layout(HEADER, &rows, |i| i == LOST || i == PAIRS)
}

/// One line: verdict, paths, loss and mean RTT; then who did not report and why the round
/// failed, one line each.
pub fn summary_line(report: &RoundReport) -> String {
    let status = match report.status {
        RoundStatus::Succeed => "succeeded",
        RoundStatus::Fail => "FAILED",
    };
    let mut line = match &report.app {
        Some(app) => app_summary_line(report, app, status),
        None => mesh_summary_line(report, status),
    };
    if !report.not_reported.is_empty() {
        line.push_str(&format!(
            "\nnot reported: {}",
            report.not_reported.join(", ")
        ));
    }
    for reason in &report.failure_reasons {
        line.push_str(&format!("\n  - {reason}"));
    }
    for warning in &report.warnings {
        line.push_str(&format!("\n  ! {warning}"));
    }
    line
}

/// The NetReach part of [`summary_line`]: loss and kernel vs user-space RTT.
fn mesh_summary_line(report: &RoundReport, status: &str) -> String {
    let s = &report.summary;
    let loss = if s.sent == 0 {
        0.0
    } else {
        s.lost as f64 / s.sent as f64 * 100.0
    };
    let rtt = s
        .mean_rtt_ms
        .map_or_else(String::new, |ms| format!(", mean RTT {ms:.3} ms"));
    let mut line = format!(
        "{} round {} {status}: {} paths ({} lossy), {} sent, {} lost ({loss:.2}%){rtt}",
        report.task, report.round, s.paths, s.lossy_paths, s.sent, s.lost,
    );
    if let (Some(k), Some(u)) = (s.kernel_rtt, s.user_rtt) {
        line.push_str(&format!(
            "\nRTT over {} probes, p50/p99 µs: kernel {:.1}/{:.1}, user space {:.1}/{:.1}",
            u.count, k.p50_us, k.p99_us, u.p50_us, u.p99_us
        ));
    }
    // A sampled mesh says how much of the mesh it covered (the full one is kdoctor's).
    if let Some(m) = &report.mesh
        && let Some(peers) = m.peers
    {
        let across = if m.mode == MeshMode::Topology {
            " across domains"
        } else {
            ""
        };
        let rounds = match m.coverage_rounds {
            1 => "each round".to_string(),
            n => format!("within {n} rounds"),
        };
        line.push_str(&format!(
            "
mesh: {}, {peers} peers per agent, network and family{across} (every pair \
             {rounds}), up to {} probe packets/s per agent (budget {})",
            m.mode, m.max_agent_rate, m.budget
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshdoctor_api::{Direction, Family, Histogram, RoundStatus, RoundSummary, Segment};

    #[test]
    fn natural_order_of_node_names() {
        let mut names = ["node-10", "node-2", "node-1", "a"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, ["a", "node-1", "node-2", "node-10"]);
    }

    fn path(src: &str, dst: &str, iface: &str, family: Family, sent: u32, lost: u32) -> PathResult {
        let segments = meshdoctor_api::LossSegments {
            dst_stack: lost,
            ..Default::default()
        };
        PathResult {
            kernel_rtt: RttStats::from_histogram(&Histogram::from_iter([40_000, 50_000, 120_000])),
            ..PathResult::test(src, dst, (iface, iface), family, sent).with_loss(lost, segments)
        }
    }

    #[test]
    fn table_rows_are_sorted_and_aligned() {
        let report = RoundReport {
            task: "mesh".into(),
            round: 1,
            round_tag: 1,
            status: RoundStatus::Fail,
            failure_reasons: vec!["loss".into()],
            start_ms: 0,
            end_ms: 1,
            expected_agents: vec!["node-1".into(), "node-2".into(), "node-10".into()],
            not_reported: Vec::new(),
            findings: Vec::new(),
            summary: RoundSummary {
                paths: 3,
                lossy_paths: 1,
                sent: 150,
                received: 145,
                lost: 5,
                success_rate: 145.0 / 150.0,
                mean_rtt_ms: None,
                unobserved_events: 0,
                ..Default::default()
            },
            paths: vec![
                path("node-10", "node-1", "eth0", Family::Ipv4, 50, 0),
                path("node-2", "node-1", "net1", Family::Ipv6, 50, 5),
                path("node-2", "node-1", "eth0", Family::Ipv6, 50, 0),
            ],
            app: None,
            mesh: None,
            warnings: vec![],
            zones: Default::default(),
        };
        let mut report = report;
        // 5 of its 50 probes failed to send: still 50 attempted, 5 lost.
        (report.paths[1].sent, report.paths[1].send_failed) = (45, 5);
        report.paths[1].drops = vec![mk_drop("NETFILTER_DROP", 4), mk_drop("IP_INADDRERRORS", 1)];
        let table = render_table(&report);
        let mut with_probes = report.clone();
        with_probes.summary.kernel_rtt =
            RttStats::from_histogram(&Histogram::from_iter([40_000, 60_000]));
        with_probes.summary.user_rtt =
            RttStats::from_histogram(&Histogram::from_iter([90_000, 110_000]));
        assert_eq!(
            summary_line(&with_probes),
            "mesh round 1 FAILED: 3 paths (1 lossy), 150 sent, 5 lost (3.33%)\n\
             RTT over 2 probes, p50/p99 µs: kernel 40.0/60.0, user space 90.0/110.0\n  - loss"
        );
        // A sampled mesh says how much it covered; warnings follow the failure reasons.
        let mut sampled = with_probes.clone();
        sampled.mesh = Some(meshdoctor_api::MeshSummary {
            mode: MeshMode::Sampled,
            peers: Some(6),
            coverage_rounds: 834,
            max_agent_rate: 960,
            budget: 1000,
        });
        sampled.warnings = vec!["over budget".into()];
        let line = summary_line(&sampled);
        assert!(
            line.ends_with(
                "\nmesh: sampled, 6 peers per agent, network and family (every pair within 834 \
                 rounds), up to 960 probe packets/s per agent (budget 1000)\n  - loss\n  ! over \
                 budget"
            ),
            "{line}"
        );
        let expected = "\
SRC      DST     IFACE  NETWORK  FAMILY  STATE  SENT  LOST  LOSS%  SEGMENT   REASON          KRTT50µs  KRTT99µs  URTT50µs  URTT99µs
node-2   node-1  eth0   eth0     ipv6    ok       50     0    0.0  -         -                   51.2     120.0         -         -
node-2   node-1  net1   net1     ipv6    lossy    50     5   10.0  dstStack  NETFILTER_DROP      51.2     120.0         -         -
node-10  node-1  eth0   eth0     ipv4    ok       50     0    0.0  -         -                   51.2     120.0         -         -
";
        assert_eq!(table, expected);
    }

    #[test]
    fn app_rounds_have_one_row_per_agent() {
        use meshdoctor_api::{AgentApp, AppSummary, LatencyUs, LoadStats, TaskKind};
        let stats =
            |requests: u64, ok: u64, codes: &[(&str, u64)], errors: &[(&str, u64)]| LoadStats {
                planned: 20,
                requests,
                successes: ok,
                not_sent: 20 - requests,
                codes: codes.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
                errors: errors.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
                bytes: 0,
                tps: 10.0,
                latency: (ok > 0).then_some(LatencyUs {
                    min: 100,
                    mean: 150.4,
                    max: 900,
                    p50: 140,
                    p90: 200,
                    p95: 300,
                    p99: 800,
                }),
                duration_ms: 2000,
                ..Default::default()
            };
        let agent = |node: &str, state, s: Option<LoadStats>| AgentApp {
            node: node.into(),
            state,
            error: None,
            success_rate: s
                .as_ref()
                .filter(|s| s.requests > 0)
                .map(|s| s.successes as f64 / s.requests as f64),
            failures: None,
            stats: s,
        };
        let app = AppRoundReport {
            kind: TaskKind::AppHttpHealthy,
            target: "GET http://192.0.2.254:8080/".into(),
            expected: "200".into(),
            summary: AppSummary {
                agents: 3,
                reported: 2,
                planned: 40,
                requests: 38,
                successes: 28,
                failures: 10,
                not_sent: 2,
                success_rate: Some(28.0 / 38.0),
                mean_latency_ms: Some(0.1504),
                min_latency_us: Some(100),
                max_latency_us: Some(900),
                tps: 20.0,
                ..Default::default()
            },
            agents: vec![
                agent("node-10", AgentAppState::NotReported, None),
                agent(
                    "node-2",
                    AgentAppState::Failures,
                    Some(stats(18, 8, &[("200", 8), ("404", 6)], &[("connect", 4)])),
                ),
                agent(
                    "node-1",
                    AgentAppState::Ok,
                    Some(stats(20, 20, &[("200", 20)], &[])),
                ),
            ],
        };
        let mut report = meshdoctor_api::RoundReport {
            task: "web".into(),
            round: 2,
            round_tag: 9,
            status: RoundStatus::Fail,
            failure_reasons: vec!["agents did not report: node-10".into()],
            start_ms: 0,
            end_ms: 1,
            expected_agents: vec!["node-1".into(), "node-2".into(), "node-10".into()],
            not_reported: vec!["node-10".into()],
            findings: vec![],
            summary: RoundSummary {
                paths: 0,
                lossy_paths: 0,
                sent: 38,
                received: 28,
                lost: 10,
                success_rate: 28.0 / 38.0,
                mean_rtt_ms: Some(0.1504),
                unobserved_events: 0,
                ..Default::default()
            },
            paths: vec![],
            app: Some(app),
            mesh: None,
            warnings: vec![],
            zones: Default::default(),
        };
        let expected = "\
NODE     STATE         REQ  OK  FAIL  UNSENT  SUCCESS%   TPS  MINµs  MEANµs  P50µs  P90µs  P99µs  MAXµs  CODES        ERRORS
node-1   ok             20  20     0       0     100.0  10.0    100     150    140    200    800    900  200×20       -
node-2   failures       18   8    10       2      44.4  10.0    100     150    140    200    800    900  200×8,404×6  connect×4
node-10  not-reported    -   -     -       -         -     -      -       -      -      -      -      -  -            -
";
        assert_eq!(render_table(&report), expected);
        assert_eq!(
            summary_line(&report),
            "web round 2 FAILED: AppHttpHealthy GET http://192.0.2.254:8080/ (success: 200): \
             3 agents (2 reported), 38 requests, 28 succeeded (73.68%), 10 failed, 2 not sent, \
             mean latency 0.150 ms (min 100 µs, max 900 µs)\nnot reported: node-10\n  \
             - agents did not report: node-10"
        );
        report.app.as_mut().unwrap().agents[1].error = Some("tls ca.crt: no certificate".into());
        assert!(render_table(&report).contains("tls ca.crt: no certificate"));
    }

    fn mk_drop(reason: &str, count: u32) -> meshdoctor_api::DropCount {
        meshdoctor_api::DropCount {
            node: "node-1".into(),
            packet: Packet::Request,
            reason: reason.into(),
            location: "nft_do_chain+0x4c1".into(),
            count,
        }
    }

    fn mk_evidence(
        src: &str,
        dst: &str,
        segment: meshdoctor_api::PathSegment,
    ) -> meshdoctor_api::Evidence {
        meshdoctor_api::Evidence {
            segment,
            lost: 10,
            probes: 50,
            ..meshdoctor_api::Evidence::test(src, dst)
        }
    }

    /// A finding on `node`'s net1 with evidence from node-1/node-2/node-4 (node-4 both ways).
    fn mk_finding(node: &str, direction: Direction, segment: Segment) -> Finding {
        use meshdoctor_api::PathSegment::{Forward, Reply};
        Finding {
            network: "net1".into(),
            direction,
            segment,
            packets: vec![Packet::Request, Packet::Reply],
            interval: meshdoctor_api::Interval {
                low: 0.12345,
                high: 0.30001,
                level: 0.99,
            },
            drop_reasons: vec![],
            evidence: vec![
                mk_evidence("node-1", node, Forward),
                mk_evidence("node-2", node, Forward),
                mk_evidence(node, "node-4", Reply),
                mk_evidence("node-4", node, Forward),
            ],
            ..Finding::test(node)
        }
    }

    #[test]
    fn findings_table_names_place_ratio_and_reasons() {
        let link = mk_finding("node-3", Direction::Ingress, Segment::Link);
        let mut stack = mk_finding("node-10", Direction::Egress, Segment::Stack);
        stack.packets = vec![Packet::Reply];
        stack.family = Family::Ipv6;
        stack.lost = 5;
        stack.probes = 1000;
        stack.loss_ratio = 0.005;
        stack.drop_reasons = ["NETFILTER_DROP", "NOSOCKET", "OTHERHOST"]
            .iter()
            .zip([3, 1, 1])
            .map(|(reason, count)| meshdoctor_api::ReasonCount {
                reason: (*reason).into(),
                location: "nft_do_chain+0x4c1".into(),
                count,
            })
            .collect();
        stack.drop_reasons[1].location = "0xffffffff81a2b3c4".into();
        let mut across = mk_finding("", Direction::Egress, Segment::Link);
        across.interface.clear();
        (across.zone, across.to_zone) = ("zone-a".into(), Some("zone-b".into()));
        let expected = "\
NODE             IFACE  NETWORK  FAMILY  DIR      SEGMENT  PACKETS        LOSS               LOST/PROBES  PAIRS  REASONS
node-3           net1   net1     ipv4    ingress  link     request+reply  20.0% [12.3–30.0]       30/150      3  -
node-10          net1   net1     ipv6    egress   stack    reply          0.5% [12.3–30.0]        5/1000      3  NETFILTER_DROP@nft_do_chain×3, NOSOCKET@0xffffffff81a2b3c4×1, +1 more
zone-a → zone-b  *      net1     ipv4    egress   link     request+reply  20.0% [12.3–30.0]       30/150      3  -
";
        assert_eq!(render_findings(&[link, stack, across]), expected);
    }

    #[test]
    fn no_findings_is_said_plainly() {
        assert_eq!(render_findings(&[]), "no faulty interface found\n");
    }

    #[test]
    fn pairs_count_both_directions_of_a_pair_once() {
        let mut f = mk_finding("node-3", Direction::Ingress, Segment::Link);
        assert_eq!(f.pairs(), 3);
        f.evidence.truncate(2);
        assert_eq!(f.pairs(), 2);
        f.evidence.clear();
        assert_eq!(f.pairs(), 0);
    }
}
