//! The open rounds: the plans agents long-poll for, and the reports they post back, by round
//! tag. A round is opened with its plans (already built, outside any lock), given the next tag
//! and published; its reports are taken until it is closed, which hands plans and reports to
//! the round's close.
//!
//! Tags are assigned and published under one lock, in order, so that an agent's `after` cursor
//! never skips a round. They start at the Unix time in seconds, so they keep growing across
//! controller restarts; 0 is never a published round's tag.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use meshdoctor_api::{AgentReport, RoundPlan, agent_report::max_report_bytes};
use tokio::sync::{Notify, watch};

use crate::{ByNode, join::fold::Received, now_ms};

/// A report the controller cannot take.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ReportError {
    #[error("no open round with tag {0} (late report, or the round is unknown)")]
    NoOpenRound(u32),
    #[error("round tag {tag} belongs to task {task:?} round {round}, not to the report's")]
    Mismatch { tag: u32, task: String, round: u32 },
    #[error("node {node:?} has no plan in round tag {tag}")]
    NotPlanned { tag: u32, node: String },
}

struct OpenRound {
    task: String,
    round: u32,
    /// Shared with the long-polls that serve them: a poll takes a pointer under the lock, not a
    /// copy of the plan.
    plans: ByNode<Arc<RoundPlan>>,
    /// The reports so far, folded per path as they arrive.
    received: Received,
    all_reported: Arc<Notify>,
}

struct Rounds {
    next_tag: u32,
    open: BTreeMap<u32, OpenRound>,
}

/// What a closed round collected (nothing, tag 0, for a round that was never opened).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collected {
    pub tag: u32,
    pub plans: ByNode<RoundPlan>,
    pub received: Received,
}

/// An opened round: its tag, and what fires once every planned agent reported.
pub struct Opened {
    pub tag: u32,
    pub all_reported: Arc<Notify>,
}

pub struct Mailbox {
    rounds: Mutex<Rounds>,
    /// Latest published round tag, watched by long-polling agents.
    published: watch::Sender<u32>,
}

impl Default for Mailbox {
    fn default() -> Self {
        Self {
            rounds: Mutex::new(Rounds {
                next_tag: (now_ms() / 1000) as u32,
                open: BTreeMap::new(),
            }),
            published: watch::Sender::new(0),
        }
    }
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Rounds> {
        crate::lock(&self.rounds)
    }

    /// Opens round `round` of `task` with `plans`, tags them and publishes them.
    pub fn open(&self, task: &str, round: u32, mut plans: ByNode<RoundPlan>) -> Opened {
        let all_reported = Arc::new(Notify::new());
        // With no agent there is nothing to wait for.
        if plans.is_empty() {
            all_reported.notify_one();
        }
        let received = Received::new(&plans);
        let mut rounds = self.lock();
        let tag = rounds.next_tag;
        rounds.next_tag = rounds.next_tag.wrapping_add(1);
        for plan in plans.values_mut() {
            plan.round_tag = tag;
        }
        let plans = plans.into_iter().map(|(n, p)| (n, Arc::new(p))).collect();
        rounds.open.insert(
            tag,
            OpenRound {
                task: task.into(),
                round,
                plans,
                received,
                all_reported: all_reported.clone(),
            },
        );
        self.published.send_replace(tag);
        Opened { tag, all_reported }
    }

    /// Plans for `node` with a round tag above `after`, oldest first.
    fn plans_after(&self, node: &str, after: u32) -> Vec<Arc<RoundPlan>> {
        self.lock()
            .open
            .range(after.saturating_add(1)..)
            .filter_map(|(_, r)| r.plans.get(node).cloned())
            .collect()
    }

    /// Plans for `node` with a round tag above `after`, oldest first, waiting up to `wait` for
    /// one when there is none yet.
    pub async fn wait_plans(&self, node: &str, after: u32, wait: Duration) -> Vec<Arc<RoundPlan>> {
        let mut published = self.published.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let plans = self.plans_after(node, after);
            if !plans.is_empty()
                || tokio::time::timeout_at(deadline, published.changed())
                    .await
                    .is_err()
            {
                return plans;
            }
        }
    }

    /// The most bytes `node`'s report on round `tag` may have: what its plan can justify.
    pub fn report_limit(&self, node: &str, tag: u32) -> Result<u64, ReportError> {
        let rounds = self.lock();
        let round = rounds.open.get(&tag).ok_or(ReportError::NoOpenRound(tag))?;
        let plan = round
            .plans
            .get(node)
            .ok_or_else(|| ReportError::NotPlanned {
                tag,
                node: node.into(),
            })?;
        Ok(max_report_bytes(plan, round.received.paths_toward(node)))
    }

    /// Takes an agent's report for an open round, folded into the round's paths; a repeated
    /// report replaces the earlier one. The report is taken apart (trimmed to the plan, its
    /// times summarized: most of the work) between two short holds of the lock, so plan polls
    /// and other reports do not wait on it.
    pub fn deliver(&self, report: AgentReport) -> Result<(), ReportError> {
        let tag = report.round_tag;
        let layout = {
            let rounds = self.lock();
            let Some(round) = rounds.open.get(&tag) else {
                return Err(ReportError::NoOpenRound(tag));
            };
            if round.task != report.task || round.round != report.round {
                return Err(ReportError::Mismatch {
                    tag,
                    task: round.task.clone(),
                    round: round.round,
                });
            }
            if !round.plans.contains_key(&report.node) {
                return Err(ReportError::NotPlanned {
                    tag,
                    node: report.node,
                });
            }
            round.received.layout().clone()
        };
        let node = report.node.clone();
        let sorted = layout
            .sort(report)
            .ok_or(ReportError::NotPlanned { tag, node })?;
        let mut rounds = self.lock();
        // The round may have closed meanwhile.
        let round = rounds
            .open
            .get_mut(&tag)
            .filter(|r| Arc::ptr_eq(r.received.layout(), &layout))
            .ok_or(ReportError::NoOpenRound(tag))?;
        round.received.place(sorted);
        if round.received.nodes.len() == round.plans.len() {
            round.all_reported.notify_one();
        }
        Ok(())
    }

    /// Closes round `tag`: what it collected. Later reports are refused.
    pub fn close(&self, tag: u32) -> Option<Collected> {
        self.lock().open.remove(&tag).map(|r| Collected {
            tag,
            // The polls that served them are done with them by now.
            plans: r
                .plans
                .into_iter()
                .map(|(n, p)| (n, Arc::unwrap_or_clone(p)))
                .collect(),
            received: r.received,
        })
    }

    /// The rounds still open, by task name.
    pub fn open_rounds(&self) -> BTreeMap<String, Vec<u32>> {
        let mut open: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for r in self.lock().open.values() {
            open.entry(r.task.clone()).or_default().push(r.round);
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::{Protocol, Timestamping};

    use super::*;

    fn plan(task: &str) -> RoundPlan {
        RoundPlan {
            task: task.into(),
            round: 1,
            round_tag: 0,
            protocol: Protocol::Icmp,
            start_at_ms: 0,
            duration_ms: 1000,
            qps: 1,
            timeout_ms: 100,
            report_deadline_ms: 0,
            targets: vec![],
            incoming: vec![],
            app: None,
        }
    }

    #[tokio::test]
    async fn rounds_are_tagged_in_order_and_collect_their_reports() {
        let mailbox = Mailbox::default();
        let plans = |task: &str| ByNode::from([("node-1".to_string(), plan(task))]);
        let a = mailbox.open("a", 1, plans("a"));
        let b = mailbox.open("b", 1, plans("b"));
        assert_eq!(b.tag, a.tag + 1);
        let got = mailbox.wait_plans("node-1", 0, Duration::ZERO).await;
        assert_eq!(
            got.iter()
                .map(|p| (p.task.as_str(), p.round_tag))
                .collect::<Vec<_>>(),
            [("a", a.tag), ("b", b.tag)]
        );
        assert!(
            mailbox
                .wait_plans("node-1", b.tag, Duration::ZERO)
                .await
                .is_empty()
        );
        assert!(
            mailbox
                .wait_plans("node-2", 0, Duration::ZERO)
                .await
                .is_empty()
        );
        assert_eq!(
            mailbox.open_rounds(),
            BTreeMap::from([("a".into(), vec![1]), ("b".into(), vec![1])])
        );

        let report = AgentReport::on_plan("node-1", &got[0], Timestamping::Ebpf);
        assert_eq!(
            mailbox.deliver(AgentReport {
                round: 2,
                ..report.clone()
            }),
            Err(ReportError::Mismatch {
                tag: a.tag,
                task: "a".into(),
                round: 1
            })
        );
        assert_eq!(
            mailbox.deliver(AgentReport {
                node: "node-9".into(),
                ..report.clone()
            }),
            Err(ReportError::NotPlanned {
                tag: a.tag,
                node: "node-9".into()
            })
        );
        mailbox.deliver(report.clone()).unwrap();
        // Every planned agent reported.
        tokio::time::timeout(Duration::from_secs(1), a.all_reported.notified())
            .await
            .unwrap();
        let collected = mailbox.close(a.tag).unwrap();
        assert_eq!(collected.received.nodes["node-1"], report);
        assert_eq!(
            mailbox.deliver(report),
            Err(ReportError::NoOpenRound(a.tag))
        );
    }
}
