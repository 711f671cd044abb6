//! Controller metrics (prometheus-client). Labels stay per task, node and interface, never
//! per pair, so cardinality does not grow with the square of the node count.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicI64, AtomicU64},
    },
};

use meshdoctor_api::{Finding, RoundReport, RoundStatus};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoundLabels {
    task: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
}

/// A finding's place: what an alert names.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlaceLabels {
    task: String,
    node: String,
    interface: String,
    network: String,
    family: String,
    direction: String,
    segment: String,
}

impl PlaceLabels {
    fn of(task: &str, f: &Finding) -> Self {
        Self {
            task: task.into(),
            node: f.node.clone(),
            interface: f.interface.clone(),
            network: f.network.clone(),
            family: f.family.to_string(),
            direction: f.direction.to_string(),
            segment: f.segment.to_string(),
        }
    }
}

/// Application requests of a task by outcome: `success`, `failure` or `not_sent`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    task: String,
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    task: String,
    node: String,
    reason: String,
}

pub struct Metrics {
    registry: Registry,
    rounds: Family<RoundLabels, Counter>,
    sent: Family<TaskLabels, Counter>,
    lost: Family<TaskLabels, Counter>,
    agents: Gauge<i64, AtomicI64>,
    late_reports: Counter,
    loss_ratio: Family<PlaceLabels, Gauge<f64, AtomicU64>>,
    findings: Family<TaskLabels, Gauge<i64, AtomicI64>>,
    drops: Family<DropLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    mean_latency: Family<TaskLabels, Gauge<f64, AtomicU64>>,
    /// The places each task's latest round set a loss ratio for, so that a place that recovered
    /// loses its series instead of showing its old ratio forever.
    places: Mutex<HashMap<String, HashSet<PlaceLabels>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let (rounds, sent, lost) = (Family::default(), Family::default(), Family::default());
        let (agents, late_reports) = (Gauge::default(), Counter::default());
        let mut registry = Registry::default();
        registry.register(
            "meshdoctor_rounds",
            "Rounds closed, by task and status",
            rounds.clone(),
        );
        registry.register(
            "meshdoctor_probes_sent",
            "Probes sent by agents that reported",
            sent.clone(),
        );
        registry.register(
            "meshdoctor_probes_lost",
            "Probes sent whose reply did not come back in time",
            lost.clone(),
        );
        registry.register("meshdoctor_agents", "Registered agents", agents.clone());
        registry.register(
            "meshdoctor_reports_late",
            "Agent reports that arrived for no open round (late or unknown)",
            late_reports.clone(),
        );
        let (loss_ratio, findings, drops) =
            (Family::default(), Family::default(), Family::default());
        registry.register(
            "meshdoctor_interface_loss_ratio",
            "Estimated loss ratio of each faulty interface (place) the latest round localized, \
             over the packets it loses; absent when the place is healthy",
            loss_ratio.clone(),
        );
        registry.register(
            "meshdoctor_interface_findings",
            "Faulty interfaces the latest round of each task localized (0 when healthy)",
            findings.clone(),
        );
        registry.register(
            "meshdoctor_probe_drops",
            "Lost probe packets the kernel dropped (kfree_skb), by node and drop reason",
            drops.clone(),
        );
        let (requests, mean_latency) = (Family::default(), Family::default());
        registry.register(
            "meshdoctor_app_requests",
            "AppHttpHealthy and NetDns requests of agents that reported, by task and result \
             (success, failure, not_sent: planned but not sent by the agent)",
            requests.clone(),
        );
        registry.register(
            "meshdoctor_app_mean_latency_seconds",
            "Mean latency of the successful requests of each application task's latest round; \
             absent when none succeeded",
            mean_latency.clone(),
        );
        Self {
            registry,
            requests,
            mean_latency,
            rounds,
            sent,
            lost,
            agents,
            late_reports,
            loss_ratio,
            findings,
            drops,
            places: Mutex::default(),
        }
    }
}

impl Metrics {
    pub fn round_closed(&self, report: &RoundReport) {
        let status = match report.status {
            RoundStatus::Succeed => "succeed",
            RoundStatus::Fail => "fail",
        };
        self.rounds
            .get_or_create(&RoundLabels {
                task: report.task.clone(),
                status: status.into(),
            })
            .inc();
        let task = TaskLabels {
            task: report.task.clone(),
        };
        if let Some(app) = &report.app {
            let s = &app.summary;
            for (result, n) in [
                ("success", s.successes),
                ("failure", s.failures),
                ("not_sent", s.not_sent),
            ] {
                self.requests
                    .get_or_create(&RequestLabels {
                        task: report.task.clone(),
                        result: result.into(),
                    })
                    .inc_by(n);
            }
            match s.mean_latency_ms {
                Some(ms) => {
                    self.mean_latency.get_or_create(&task).set(ms / 1000.0);
                }
                None => {
                    self.mean_latency.remove(&task);
                }
            }
            return;
        }
        self.sent.get_or_create(&task).inc_by(report.summary.sent);
        self.lost.get_or_create(&task).inc_by(report.summary.lost);
        self.findings
            .get_or_create(&task)
            .set(report.findings.len() as i64);

        let current: HashSet<PlaceLabels> = report
            .findings
            .iter()
            .map(|f| {
                let labels = PlaceLabels::of(&report.task, f);
                self.loss_ratio.get_or_create(&labels).set(f.loss_ratio);
                labels
            })
            .collect();
        let mut places = self.places.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = places.insert(report.task.clone(), current.clone());
        for stale in previous.unwrap_or_default().difference(&current) {
            self.loss_ratio.remove(stale);
        }
        drop(places);

        let mut drops: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for d in report.paths.iter().flat_map(|p| &p.drops) {
            *drops.entry((&d.node, &d.reason)).or_default() += u64::from(d.count);
        }
        for ((node, reason), count) in drops {
            let labels = DropLabels {
                task: report.task.clone(),
                node: node.into(),
                reason: reason.into(),
            };
            self.drops.get_or_create(&labels).inc_by(count);
        }
    }

    pub fn set_agents(&self, n: usize) {
        self.agents.set(n as i64);
    }

    pub fn late_report(&self) {
        self.late_reports.inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::{Packet, ProbeDrop};

    use super::*;
    use crate::{
        fixtures::{mk_finding, mk_round},
        join::{
            join,
            tests::{mk_plans, mk_report, mk_reports},
        },
    };

    /// A failed round of `task` with findings on `nodes`, whose path 0 lost probes 3 and 4 to
    /// node-2's netfilter.
    fn mk_lossy_round(task: &str, round: u32, nodes: &[&str]) -> RoundReport {
        let plans = mk_plans();
        let mut reports = mk_reports(vec![
            mk_report(&plans, "node-1", &[3, 4]),
            mk_report(&plans, "node-2", &[]),
        ]);
        let drop = |seq| ProbeDrop {
            path: 0,
            seq,
            packet: Packet::Request,
            reason: "NETFILTER_DROP".into(),
            location: "nft_do_chain+0x4c1".into(),
            interface: None,
        };
        reports.get_mut("node-2").unwrap().drops = vec![drop(3), drop(4)];
        let mut report = mk_round(task, round, RoundStatus::Fail);
        report.paths = join(&plans, &reports).paths;
        report.findings = nodes.iter().map(|n| mk_finding(n)).collect();
        report
    }

    fn ratio_line(task: &str, node: &str) -> String {
        format!(
            "meshdoctor_interface_loss_ratio{{task=\"{task}\",node=\"{node}\",interface=\"net1\",\
             network=\"sec\",family=\"ipv4\",direction=\"ingress\",segment=\"link\"}} 0.2\n"
        )
    }

    #[test]
    fn findings_follow_the_latest_round_and_drops_add_up() {
        let m = Metrics::default();
        m.round_closed(&mk_lossy_round("mesh", 1, &["node-3", "node-4"]));
        m.round_closed(&mk_lossy_round("other", 1, &["node-4"]));
        let text = m.encode().unwrap();
        for line in [
            ratio_line("mesh", "node-3"),
            ratio_line("mesh", "node-4"),
            ratio_line("other", "node-4"),
            "meshdoctor_interface_findings{task=\"mesh\"} 2\n".into(),
            "meshdoctor_probe_drops_total{task=\"mesh\",node=\"node-2\",reason=\"NETFILTER_DROP\"} 2\n"
                .into(),
        ] {
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }

        // node-4 recovered in mesh: its series goes, other's stays.
        m.round_closed(&mk_lossy_round("mesh", 2, &["node-3"]));
        let text = m.encode().unwrap();
        assert!(!text.contains(&ratio_line("mesh", "node-4")), "{text}");
        for line in [
            ratio_line("mesh", "node-3"),
            ratio_line("other", "node-4"),
            "meshdoctor_interface_findings{task=\"mesh\"} 1\n".into(),
            "meshdoctor_probe_drops_total{task=\"mesh\",node=\"node-2\",reason=\"NETFILTER_DROP\"} 4\n"
                .into(),
        ] {
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }

        m.round_closed(&mk_round("mesh", 3, RoundStatus::Succeed));
        let text = m.encode().unwrap();
        assert!(!text.contains("task=\"mesh\",node=\"node-3\""), "{text}");
        assert!(text.contains("meshdoctor_interface_findings{task=\"mesh\"} 0\n"));
    }

    #[test]
    fn app_rounds_count_requests_not_probes() {
        let m = Metrics::default();
        let mut round = mk_round("web", 1, RoundStatus::Fail);
        round.app = Some(meshdoctor_api::AppRoundReport {
            kind: meshdoctor_api::TaskKind::AppHttpHealthy,
            target: "GET http://web/".into(),
            expected: "200".into(),
            summary: meshdoctor_api::AppSummary {
                requests: 38,
                successes: 30,
                failures: 8,
                not_sent: 2,
                mean_latency_ms: Some(1.5),
                ..Default::default()
            },
            agents: vec![],
        });
        m.round_closed(&round);
        let text = m.encode().unwrap();
        for line in [
            "meshdoctor_app_requests_total{task=\"web\",result=\"success\"} 30\n",
            "meshdoctor_app_requests_total{task=\"web\",result=\"failure\"} 8\n",
            "meshdoctor_app_requests_total{task=\"web\",result=\"not_sent\"} 2\n",
            "meshdoctor_app_mean_latency_seconds{task=\"web\"} 0.0015\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            !text.contains("meshdoctor_probes_sent_total{task=\"web\"}"),
            "{text}"
        );
        round.app.as_mut().unwrap().summary.mean_latency_ms = None;
        m.round_closed(&round);
        assert!(
            !m.encode()
                .unwrap()
                .contains("meshdoctor_app_mean_latency_seconds{")
        );
    }
}
