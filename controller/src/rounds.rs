//! The standalone backend's shared state and round driver: the agent roster, the open rounds
//! with their plans and reports, the tasks and their status.
//!
//! Each task runs a schedule loop that spawns one tokio task per round; a round publishes its
//! plans `start_delay` before its start, collects reports until all agents reported or the
//! deadline, then judges and writes the report. Locks are std mutexes held only for short,
//! await-free sections.
//!
//! - NetReach: a full mesh of pair-paths ([`crate::mesh`]), then the pure join, judge and
//!   localization.
//! - AppHttpHealthy and NetDns: every agent of the roster loads the task's one target
//!   ([`crate::apps`]); the target is resolved when the round is planned (TLS files are read
//!   then, on the controller's host, and shipped in the plan), and the agents' load statistics
//!   are aggregated and judged.
//!
//! Tasks follow their files while the controller runs ([`Controller::sync_tasks`]):
//! - a new file starts its task's schedule clock;
//! - a file whose task changed (its parsed content; comments and formatting do not count)
//!   restarts the schedule clock from the change, with the new spec; the status keeps its
//!   history (see [`crate::status`]);
//! - a removed file stops its schedule and drops the task from `GET /v1/tasks`. Rounds already
//!   published finish: agents run their plans, the round is joined and its report stored
//!   (`GET /v1/tasks/{name}/rounds/{n}` still serves it), so no agent report is refused
//!   half-way; only the removed task's status is not updated.

use meshdoctor_api::TaskSpec as _;
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use meshdoctor_api::{
    AgentRegistration, AgentReport, Finding, RoundPlan, RoundReport, RoundStatus, Task, TaskKind,
    TaskStatus,
    status::{Condition, ConditionStatus},
};
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{Notify, watch},
    task::AbortHandle,
};
use tracing::{info, warn};

use crate::{
    apps::{self, AppExpect},
    backend::{Backend, Standalone},
    join::join,
    judge::failure_reasons,
    localize::{LocalizeConfig, localize},
    mesh::{RoundMeta, build_plans},
    metrics::Metrics,
    now_ms,
    schedule::{
        effective_start_ms, first_start_ms, next_start_ms, report_deadline_ms, round_deadline_ms,
        round_wanted,
    },
    store::{ReportStore, RoundRef, StoreError},
    tasks::{TaskFile, TasksDir},
};

/// Round timing knobs (the controller's `--wait-agents`, `--start-delay`, `--report-grace`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// A task's schedule clock starts once this many agents registered.
    pub wait_agents: usize,
    /// Plans are published this long before the round starts, so every agent is armed.
    pub start_delay: Duration,
    /// Extra time for reports after duration + per-request timeout.
    pub report_grace: Duration,
    /// Round history entries kept per task (kdoctor's `crdMaxHistory`, default 10).
    pub max_history: usize,
    /// Export per-pair series (`meshdoctor_pair_loss_ratio`), which grow with nodes squared.
    pub pair_metrics: bool,
}

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

/// An agent of the roster, as `GET /v1/agents` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    #[serde(flatten)]
    pub registration: AgentRegistration,
    pub last_seen_ms: u64,
}

/// A task, as `GET /v1/tasks` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    pub name: String,
    pub file: String,
    /// `None` when the file is invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<TaskKind>,
    /// `spec.schedule.schedule` (kdoctor's `schedule` printer column).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Accepted fields that are not acted on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
}

/// The faulty interfaces of a task's latest round, as `GET /v1/findings` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskFindings {
    pub task: String,
    pub round: u32,
    pub findings: Vec<Finding>,
}

struct OpenRound {
    task: String,
    round: u32,
    plans: BTreeMap<String, RoundPlan>,
    reports: BTreeMap<String, AgentReport>,
    all_reported: Arc<Notify>,
}

/// Open rounds by tag, and the next tag; one lock so that tags are published in order and an
/// agent's `after` cursor never skips a round.
struct Rounds {
    next_tag: u32,
    open: BTreeMap<u32, OpenRound>,
}

/// Where a task's schedule starts: after the rounds its seeded status already counts (a
/// finished task's schedule wants no more).
#[derive(Debug, Clone, Copy)]
struct Resume {
    /// Rounds of the current spec already done.
    done: u32,
    /// The newest round number in the history (rounds are numbered on from it).
    last_round: Option<u32>,
}

/// Condition type: the spec was read and validated (`False`: why it cannot run).
pub const VALID: &str = "Valid";
/// Condition type: the latest closed round ran under the current spec (`False` while rounds of
/// a replaced spec are still open).
pub const CURRENT: &str = "Current";

fn condition(type_: &str, ok: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        reason: reason.into(),
        message,
        last_transition_ms: now_ms(),
        observed_generation: None,
    }
}

struct TaskEntry {
    source: TaskFile,
    /// Distinguishes this incarnation of the task from an earlier one with the same file, so
    /// rounds of a replaced spec do not count toward the new one's rounds.
    generation: u64,
    /// The status of the task this file last defined, with that task's name: kept across spec
    /// changes, and across an invalid edit for when the file is fixed, while the name stays.
    status: Option<(String, TaskStatus)>,
    runner: Option<AbortHandle>,
}

pub struct Controller {
    settings: Settings,
    /// Who takes part, Service targets, where status goes ([`Standalone`] unless a backend is
    /// set).
    backend: RwLock<Arc<dyn Backend>>,
    /// Whether this controller serves agents (`GET /readyz`): always in standalone, only while
    /// leading in Kubernetes, so that the Service sends agents to the leader.
    ready: AtomicBool,
    store: ReportStore,
    metrics: Metrics,
    roster: Mutex<BTreeMap<String, AgentView>>,
    /// Roster size, watched by schedule loops waiting for `wait_agents`.
    roster_size: watch::Sender<usize>,
    rounds: Mutex<Rounds>,
    /// Latest published round tag, watched by long-polling agents.
    published: watch::Sender<u32>,
    /// Tasks by file.
    tasks: Mutex<BTreeMap<String, TaskEntry>>,
    /// The standalone backend's tasks directory, which `PUT`/`DELETE /v1/tasks/{name}`
    /// write to; unset with the Kubernetes backend, whose tasks are objects.
    tasks_dir: OnceLock<TasksDir>,
    generations: Mutex<u64>,
    /// Latest round's findings by task name; filled from the stored reports on first use, so
    /// that a restarted controller still answers before its next round.
    findings: Mutex<BTreeMap<String, TaskFindings>>,
}

/// Locks without panicking: a poisoned lock still holds consistent data here, because no
/// section leaves a structure half-updated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn sleep_until_ms(at_ms: u64) {
    tokio::time::sleep(Duration::from_millis(at_ms.saturating_sub(now_ms()))).await;
}

impl Controller {
    pub fn new(settings: Settings, store: ReportStore) -> Arc<Self> {
        // Round tags start at the Unix time in seconds so they keep growing across restarts.
        let first_tag = (now_ms() / 1000) as u32;
        Arc::new(Self {
            settings,
            backend: RwLock::new(Arc::new(Standalone)),
            ready: AtomicBool::new(true),
            store,
            metrics: Metrics::new(settings.pair_metrics),
            roster: Mutex::default(),
            roster_size: watch::Sender::new(0),
            rounds: Mutex::new(Rounds {
                next_tag: first_tag,
                open: BTreeMap::new(),
            }),
            published: watch::Sender::new(0),
            tasks: Mutex::default(),
            tasks_dir: OnceLock::new(),
            generations: Mutex::new(0),
            findings: Mutex::default(),
        })
    }

    /// Replaces the standalone backend (before tasks are synced).
    pub fn set_backend(&self, backend: Arc<dyn Backend>) {
        *self.backend.write().unwrap_or_else(PoisonError::into_inner) = backend;
    }

    fn backend(&self) -> Arc<dyn Backend> {
        self.backend
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `dir` this controller's task source (standalone), read and written by
    /// [`TasksDir`]; the first call wins.
    pub fn set_tasks_dir(&self, dir: PathBuf) -> &TasksDir {
        self.tasks_dir.get_or_init(|| TasksDir::new(dir))
    }

    /// The tasks directory, when tasks come from one.
    pub fn tasks_dir(&self) -> Option<&TasksDir> {
        self.tasks_dir.get()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn store(&self) -> &ReportStore {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Adds or replaces an agent (agents re-register on restart with their current interfaces).
    pub fn register(&self, registration: AgentRegistration) {
        let mut roster = lock(&self.roster);
        info!(node = %registration.node, interfaces = registration.interfaces.len(), "agent registered");
        let node = registration.node.clone();
        roster.insert(
            node,
            AgentView {
                registration,
                last_seen_ms: now_ms(),
            },
        );
        self.metrics.set_agents(roster.len());
        self.roster_size.send_replace(roster.len());
    }

    pub fn agents(&self) -> Vec<AgentView> {
        lock(&self.roster).values().cloned().collect()
    }

    /// Plans for `node` with a round tag above `after`, oldest first; `None` when the node is
    /// not registered (the agent must register again, e.g. after a controller restart).
    fn plans_after(&self, node: &str, after: u32) -> Option<Vec<RoundPlan>> {
        if let Some(agent) = lock(&self.roster).get_mut(node) {
            agent.last_seen_ms = now_ms();
        } else {
            return None;
        }
        let rounds = lock(&self.rounds);
        Some(
            rounds
                .open
                .range(after.saturating_add(1)..)
                .filter_map(|(_, r)| r.plans.get(node).cloned())
                .collect(),
        )
    }

    /// Like [`Self::plans_after`], waiting up to `wait` for a plan when there is none yet.
    pub async fn wait_plans(
        &self,
        node: &str,
        after: u32,
        wait: Duration,
    ) -> Option<Vec<RoundPlan>> {
        let mut published = self.published.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let plans = self.plans_after(node, after)?;
            if !plans.is_empty() {
                return Some(plans);
            }
            if tokio::time::timeout_at(deadline, published.changed())
                .await
                .is_err()
            {
                return Some(plans);
            }
        }
    }

    /// Takes an agent's report for an open round; a repeated report replaces the earlier one.
    pub fn accept_report(&self, report: AgentReport) -> Result<(), ReportError> {
        let mut rounds = lock(&self.rounds);
        let tag = report.round_tag;
        let Some(round) = rounds.open.get_mut(&tag) else {
            self.metrics.late_report();
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
        self.metrics.report_received(&report.node);
        round.reports.insert(report.node.clone(), report);
        if round.reports.len() == round.plans.len() {
            round.all_reported.notify_one();
        }
        Ok(())
    }

    pub fn tasks(&self) -> Vec<TaskView> {
        let tasks = lock(&self.tasks);
        let mut views: Vec<TaskView> = tasks
            .values()
            .map(|t| {
                let task = t.source.task.as_ref().ok();
                let warnings = task.map(|t| t.warnings()).unwrap_or_default();
                TaskView {
                    name: t.source.name.clone(),
                    file: t.source.file.clone(),
                    kind: task.map(|t| t.kind()),
                    schedule: task.map(|t| t.schedule_plan().schedule.clone()),
                    error: t.source.task.as_ref().err().cloned(),
                    warnings,
                    status: task
                        .and(t.status.as_ref())
                        .map(|(_, status)| status.clone()),
                }
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.file.cmp(&b.file)));
        views
    }

    /// The latest round's findings of every loaded NetReach task that has a round, by task
    /// name (application rounds localize nothing). A task whose stored report cannot be read is
    /// left out (and logged), not the whole answer.
    pub async fn findings(&self) -> Vec<TaskFindings> {
        let names: std::collections::BTreeSet<String> = lock(&self.tasks)
            .values()
            .filter(|t| {
                t.source
                    .task
                    .as_ref()
                    .is_ok_and(|t| t.kind() == TaskKind::NetReach)
            })
            .map(|t| t.source.name.clone())
            .collect();
        let mut out = Vec::new();
        for name in names {
            let cached = lock(&self.findings).get(&name).cloned();
            let latest = match cached {
                Some(f) => Some(f),
                None => self.stored_findings(&name).await.unwrap_or_else(|e| {
                    warn!(task = name, "no findings: {e}");
                    None
                }),
            };
            out.extend(latest);
        }
        out
    }

    /// The findings of a task's latest stored round, remembered unless a round closed meanwhile.
    async fn stored_findings(&self, task: &str) -> Result<Option<TaskFindings>, StoreError> {
        /// Only what findings need of a stored report, which can be large (per-probe samples).
        #[derive(Deserialize)]
        struct Stored {
            round: u32,
            #[serde(default)]
            findings: Vec<Finding>,
        }
        let Some(json) = self.store.read(task, RoundRef::Latest).await? else {
            return Ok(None);
        };
        let stored: Stored =
            serde_json::from_slice(&json).map_err(|source| StoreError::Decode {
                task: task.into(),
                source,
            })?;
        let latest = TaskFindings {
            task: task.into(),
            round: stored.round,
            findings: stored.findings,
        };
        Ok(Some(self.remember_findings(latest)))
    }

    /// Keeps `latest` unless a later round of its task is already known; returns the latest.
    fn remember_findings(&self, latest: TaskFindings) -> TaskFindings {
        let mut findings = lock(&self.findings);
        let entry = findings
            .entry(latest.task.clone())
            .or_insert_with(|| latest.clone());
        if entry.round < latest.round {
            *entry = latest;
        }
        entry.clone()
    }

    /// Makes the running tasks match the task files: new files start, changed files restart
    /// (rounds already open finish under the old spec), removed files stop (rounds already
    /// open finish and are stored; see the module docs).
    pub fn sync_tasks(self: &Arc<Self>, files: Vec<TaskFile>) {
        self.sync_tasks_seeded(files, BTreeMap::new());
    }

    /// [`Self::sync_tasks`], where a task that is new to this controller continues from the
    /// status in `seeds` (by source) when there is one: the status an earlier controller
    /// wrote for the same spec (Kubernetes: a restart or a new leader), so rounds already
    /// done are not run again and the history continues.
    pub fn sync_tasks_seeded(
        self: &Arc<Self>,
        files: Vec<TaskFile>,
        mut seeds: BTreeMap<String, TaskStatus>,
    ) {
        let backend = self.backend();
        let mut tasks = lock(&self.tasks);
        let keep: std::collections::HashSet<&str> = files.iter().map(|f| f.file.as_str()).collect();
        tasks.retain(|file, entry| {
            let kept = keep.contains(file.as_str());
            if !kept {
                info!(file, "task file removed; stopping its schedule");
                if let Some(r) = &entry.runner {
                    r.abort();
                }
            }
            kept
        });
        for source in files {
            if tasks.get(&source.file).is_some_and(|e| e.source == source) {
                continue;
            }
            let previous = tasks.remove(&source.file);
            if let Some(r) = previous.as_ref().and_then(|e| e.runner.as_ref()) {
                r.abort();
            }
            let kept = previous.and_then(|e| e.status);
            let seed = seeds.remove(&source.file);
            let generation = {
                let mut g = lock(&self.generations);
                *g += 1;
                *g
            };
            let (status, runner) = match &source.task {
                Err(e) => {
                    warn!("skipping invalid task file: {e}");
                    let (owner, mut status) = kept
                        .or(seed.map(|s| (source.name.clone(), s)))
                        .unwrap_or_else(|| {
                            (
                                source.name.clone(),
                                TaskStatus::new(0, self.settings.max_history),
                            )
                        });
                    status.set_condition(condition(VALID, false, "InvalidSpec", e.clone()));
                    backend.status_changed(&source.file, &status);
                    (Some((owner, status)), None)
                }
                Ok(task) => {
                    let rounds = task.schedule_plan().round_number;
                    let mut status = match kept {
                        Some((name, mut status)) if name == task.name() => {
                            info!(
                                task = task.name(),
                                file = source.file,
                                "task changed; its schedule restarts"
                            );
                            status.restart(rounds);
                            let open: Vec<String> = lock(&self.rounds)
                                .open
                                .values()
                                .filter(|r| r.task == task.name())
                                .map(|r| r.round.to_string())
                                .collect();
                            if !open.is_empty() {
                                status.set_condition(condition(
                                    CURRENT,
                                    false,
                                    "SpecChangedMidRound",
                                    format!(
                                        "the spec changed while round {} was running: it \
                                         finishes under the previous spec and does not count \
                                         toward doneRound; the schedule restarted with the \
                                         new spec",
                                        open.join(", ")
                                    ),
                                ));
                            }
                            status
                        }
                        _ => match seed {
                            Some(mut seeded) => {
                                info!(
                                    task = task.name(),
                                    done = seeded.done_round,
                                    "task continues from its status"
                                );
                                seeded.expected_round = rounds;
                                seeded
                            }
                            None => {
                                info!(task = task.name(), kind = %task.kind(), file = source.file, "task loaded");
                                TaskStatus::new(rounds, self.settings.max_history)
                            }
                        },
                    };
                    let warnings = task.warnings();
                    for w in &warnings {
                        warn!(task = task.name(), "{w}");
                    }
                    let message = if warnings.is_empty() {
                        "the spec is valid".to_string()
                    } else {
                        format!("the spec is valid; {}", warnings.join("; "))
                    };
                    status.set_condition(condition(VALID, true, "Valid", message));
                    backend.status_changed(&source.file, &status);
                    let resume = Resume {
                        done: u32::try_from(status.done_round).unwrap_or(u32::MAX),
                        last_round: status.history.iter().map(|h| h.round_number).max(),
                    };
                    let runner = tokio::spawn(self.clone().run_task(
                        source.file.clone(),
                        generation,
                        task.clone(),
                        resume,
                    ));
                    (
                        Some((task.name().to_string(), status)),
                        Some(runner.abort_handle()),
                    )
                }
            };
            tasks.insert(
                source.file.clone(),
                TaskEntry {
                    source,
                    generation,
                    status,
                    runner,
                },
            );
        }
    }

    /// A task's schedule loop: waits for the roster, then starts rounds on schedule.
    async fn run_task(
        self: Arc<Self>,
        file: String,
        generation: u64,
        task: Arc<Task>,
        resume: Resume,
    ) {
        let mut size = self.roster_size.subscribe();
        if size
            .wait_for(|&n| n >= self.settings.wait_agents)
            .await
            .is_err()
        {
            return;
        }
        let offset = self
            .store
            .latest_round(task.name())
            .await
            .unwrap_or_else(|e| {
                warn!(
                    task = task.name(),
                    "cannot read earlier reports, numbering rounds from 1: {e}"
                );
                None
            });
        let delay = self.settings.start_delay;
        let clock_start = now_ms() + delay.as_millis() as u64;
        let schedule = task.schedule();
        let round_number = task.schedule_plan().round_number;
        let round_timeout = task.round_timeout();
        let mut scheduled = first_start_ms(&schedule, clock_start);
        for n in 1..=u32::MAX {
            if !round_wanted(round_number, n.saturating_add(resume.done)) {
                break;
            }
            let Some(this) = scheduled else {
                info!(task = task.name(), "the cron schedule fires no more");
                break;
            };
            scheduled = next_start_ms(&schedule, this);
            sleep_until_ms(this.saturating_sub(delay.as_millis() as u64)).await;
            let start = effective_start_ms(this, now_ms(), delay);
            let next = scheduled.filter(|_| {
                round_wanted(
                    round_number,
                    n.saturating_add(resume.done).saturating_add(1),
                )
            });
            let deadline = round_deadline_ms(start, round_timeout, next);
            let round = offset.max(resume.last_round).unwrap_or(0).saturating_add(n);
            tokio::spawn(self.clone().run_round(
                file.clone(),
                generation,
                task.clone(),
                round,
                start,
                deadline,
            ));
        }
    }

    /// One round: publish plans, collect reports, join (NetReach) or aggregate (application
    /// rounds), judge, store, account.
    async fn run_round(
        self: Arc<Self>,
        file: String,
        generation: u64,
        task: Arc<Task>,
        round: u32,
        start_ms: u64,
        round_deadline_ms: u64,
    ) {
        let name = task.name().to_string();
        let deadline = report_deadline_ms(
            &task.load(),
            start_ms,
            round_deadline_ms,
            self.settings.report_grace,
        );
        let backend = self.backend();
        let registered: Vec<AgentRegistration> = lock(&self.roster)
            .values()
            .map(|a| a.registration.clone())
            .collect();
        let roster = backend.roster(registered);
        // NetReach: the Service targets, and why some it asks for cannot be probed.
        let (service_targets, target_problems) = match &*task {
            Task::NetReach(net_reach) => backend.service_targets(net_reach),
            _ => (vec![], vec![]),
        };
        let expected_agents: Vec<String> = roster.iter().map(|a| a.node.clone()).collect();
        // Application rounds: the target, with its TLS files read, before any lock is taken.
        let app_target = apps::resolve_target(&task).await;

        let (round_tag, planned) = {
            let mut rounds = lock(&self.rounds);
            let round_tag = rounds.next_tag;
            rounds.next_tag = rounds.next_tag.wrapping_add(1);
            let meta = RoundMeta {
                task: &name,
                round,
                round_tag,
                start_at_ms: start_ms,
                report_deadline_ms: deadline,
            };
            let plans = match (&*task, &app_target) {
                (Task::NetReach(net_reach), _) => {
                    build_plans(net_reach, &roster, &service_targets, meta)
                        .map_err(|e| e.to_string())
                }
                (_, Some(Ok(target))) => Ok(apps::build_app_plans(&task, target, &roster, meta)),
                (_, Some(Err(e))) => Err(e.clone()),
                (_, None) => Err(format!("{} rounds have no target", task.kind())),
            };
            let planned = plans.map(|plans| {
                let all_reported = Arc::new(Notify::new());
                // With no agent there is nothing to wait for.
                if plans.is_empty() {
                    all_reported.notify_one();
                }
                let open = OpenRound {
                    task: name.clone(),
                    round,
                    plans,
                    reports: BTreeMap::new(),
                    all_reported: all_reported.clone(),
                };
                rounds.open.insert(round_tag, open);
                all_reported
            });
            (round_tag, planned)
        };

        let (plans, reports, mut reasons) = match planned {
            Ok(all_reported) => {
                self.published.send_replace(round_tag);
                info!(
                    task = name,
                    round,
                    round_tag,
                    agents = roster.len(),
                    "round published"
                );
                tokio::select! {
                    () = sleep_until_ms(deadline) => {}
                    () = all_reported.notified() => {}
                }
                let open = lock(&self.rounds).open.remove(&round_tag);
                open.map_or_else(Default::default, |o| (o.plans, o.reports, target_problems))
            }
            Err(e) => {
                warn!(task = name, round, "cannot plan the round: {e}");
                (BTreeMap::new(), BTreeMap::new(), vec![e.to_string()])
            }
        };

        let planning_failed = !reasons.is_empty();
        // What the kind's join and judge make of the reports; the rest is the same for all.
        let (not_reported, summary, paths, findings, app) = match AppExpect::of(&task) {
            // NetReach.
            None => {
                let joined = join(&plans, &reports);
                if let Task::NetReach(net_reach) = &*task {
                    reasons.extend(failure_reasons(&net_reach.spec.expect, &joined));
                }
                let findings = localize(&joined.paths, &joined.losses, &LocalizeConfig::default());
                (
                    joined.not_reported,
                    joined.summary,
                    joined.paths,
                    findings,
                    None,
                )
            }
            Some(expect) => {
                let label = match &app_target {
                    Some(Ok(target)) => target.label(),
                    _ => apps::spec_label(&task),
                };
                let judged = apps::judge(&expect, &label, &plans, &reports);
                // A round that could not be planned ran nothing: its reason says why, and the
                // empty aggregate's ("no agent ran the round") would only mislead.
                if !planning_failed {
                    reasons.extend(judged.reasons);
                }
                (
                    judged.not_reported,
                    judged.summary,
                    vec![],
                    vec![],
                    Some(judged.app),
                )
            }
        };
        let report = RoundReport {
            task: name.clone(),
            round,
            round_tag,
            status: if reasons.is_empty() {
                RoundStatus::Succeed
            } else {
                RoundStatus::Fail
            },
            failure_reasons: reasons,
            start_ms,
            end_ms: now_ms(),
            expected_agents,
            not_reported,
            summary,
            findings,
            paths,
            app,
        };
        match self.store.write(&report).await {
            Ok(path) => info!(
                task = name, round, status = ?report.status, reasons = ?report.failure_reasons,
                path = %path.display(), "round closed"
            ),
            Err(e) => warn!(
                task = name,
                round, "round closed but its report was not stored: {e}"
            ),
        }
        self.metrics.round_closed(&report);
        if report.app.is_none() {
            self.remember_findings(TaskFindings {
                task: name.clone(),
                round,
                findings: report.findings.clone(),
            });
        }
        let mut tasks = lock(&self.tasks);
        if let Some(entry) = tasks.get_mut(&file)
            && let Some((owner, status)) = &mut entry.status
            && *owner == name
        {
            let current = entry.generation == generation;
            status.record(&report, deadline, current);
            if current {
                status.set_condition(condition(
                    CURRENT,
                    true,
                    "Current",
                    format!("round {round} ran under the current spec"),
                ));
            }
            backend.status_changed(&file, status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::temp_dir;

    fn mk_task_file(name: &str) -> TaskFile {
        mk_file(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: meshdoctor.io/v1beta1\nkind: NetReach\nmetadata: {{name: {name}}}\nspec: {{}}\n"
            ),
        )
    }

    fn mk_file(file: &str, yaml: &str) -> TaskFile {
        let task = Task::from_yaml(file, yaml)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        TaskFile {
            name: task.as_ref().map_or("invalid".into(), |t| t.name().into()),
            file: file.into(),
            task,
        }
    }

    fn settings(wait_agents: usize) -> Settings {
        Settings {
            wait_agents,
            start_delay: Duration::from_millis(100),
            report_grace: Duration::from_millis(100),
            max_history: 10,
            pair_metrics: false,
        }
    }

    /// Records a closed round into a task's status, as `run_round` does.
    fn close_round(ctl: &Controller, file: &str, round: u32, current: bool) {
        let mut tasks = lock(&ctl.tasks);
        let (name, status) = tasks.get_mut(file).unwrap().status.as_mut().unwrap();
        let report = RoundReport::test(name, round, RoundStatus::Succeed);
        status.record(&report, report.end_ms, current);
    }

    fn status(ctl: &Controller, name: &str) -> TaskStatus {
        let view = ctl.tasks().into_iter().find(|t| t.name == name).unwrap();
        view.status.unwrap()
    }

    #[tokio::test]
    async fn tasks_are_added_changed_and_removed_while_running() {
        let dir = temp_dir("sync");
        // No agent ever registers: schedules wait, and rounds are closed by hand.
        let ctl = Controller::new(settings(99), ReportStore::new(&dir));
        let mesh = "apiVersion: meshdoctor.io/v1beta1\nkind: NetReach\nmetadata: {name: mesh}\n\
                    spec: {schedule: {schedule: '@every 10s', roundNumber: 2}}\n";
        let web = "apiVersion: meshdoctor.io/v1beta1\nkind: AppHttpHealthy\nmetadata: {name: web}\n\
                   spec: {target: {host: 'web:8080', method: GET}}\n";
        ctl.sync_tasks(vec![mk_file("mesh.yaml", mesh)]);
        close_round(&ctl, "mesh.yaml", 1, true);
        close_round(&ctl, "mesh.yaml", 2, true);
        assert!(status(&ctl, "mesh").finish);

        // Added: an AppHttpHealthy task is listed with its status and scheduled.
        ctl.sync_tasks(vec![mk_file("mesh.yaml", mesh), mk_file("web.yaml", web)]);
        let views = ctl.tasks();
        assert_eq!(views.len(), 2);
        let w = &views[1];
        assert_eq!(
            (w.name.as_str(), w.kind),
            ("web", Some(TaskKind::AppHttpHealthy))
        );
        assert_eq!(w.schedule.as_deref(), Some("0 1"));
        assert!(w.warnings.is_empty(), "{:?}", w.warnings);
        let st = w.status.as_ref().unwrap();
        assert_eq!(
            (st.expected_round, st.done_round, st.last_round_status),
            (1, 0, meshdoctor_api::LastRoundStatus::Unknown)
        );
        assert!(lock(&ctl.tasks)["web.yaml"].runner.is_some());

        // Unchanged: nothing restarts.
        let generation = lock(&ctl.tasks)["mesh.yaml"].generation;
        ctl.sync_tasks(vec![mk_file("mesh.yaml", mesh), mk_file("web.yaml", web)]);
        assert_eq!(lock(&ctl.tasks)["mesh.yaml"].generation, generation);

        // Changed: the schedule restarts with the new roundNumber, the history stays, and a
        // late round of the old spec lands in the history without counting.
        let changed = mesh.replace("roundNumber: 2", "roundNumber: -1");
        ctl.sync_tasks(vec![
            mk_file("mesh.yaml", &changed),
            mk_file("web.yaml", web),
        ]);
        assert_ne!(lock(&ctl.tasks)["mesh.yaml"].generation, generation);
        let st = status(&ctl, "mesh");
        assert_eq!(
            (st.expected_round, st.done_round, st.finish),
            (-1, 0, false)
        );
        assert_eq!(st.history.len(), 2);
        close_round(&ctl, "mesh.yaml", 3, false);
        assert_eq!(status(&ctl, "mesh").done_round, 0);
        assert_eq!(status(&ctl, "mesh").history.len(), 3);

        // An invalid edit shows the error; fixing it brings the history back.
        let broken = changed.replace("'@every 10s'", "'@every 10'");
        ctl.sync_tasks(vec![mk_file("mesh.yaml", &broken)]);
        let views = ctl.tasks();
        assert_eq!(views.len(), 1, "web.yaml was removed");
        assert!(
            views[0]
                .error
                .as_ref()
                .unwrap()
                .contains("mesh.yaml: spec.schedule.schedule: @every: missing unit")
        );
        assert!(views[0].status.is_none() && views[0].kind.is_none());
        ctl.sync_tasks(vec![mk_file("mesh.yaml", &changed)]);
        assert_eq!(status(&ctl, "mesh").history.len(), 3);

        // Renamed: another task, with a fresh status.
        let renamed = changed.replace("name: mesh", "name: mesh2");
        ctl.sync_tasks(vec![mk_file("mesh.yaml", &renamed)]);
        assert!(status(&ctl, "mesh2").history.is_empty());

        // Removed: gone from the list.
        ctl.sync_tasks(vec![]);
        assert!(ctl.tasks().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_round_in_flight_finishes_after_its_file_is_removed() {
        let dir = temp_dir("removed");
        let ctl = Controller::new(settings(1), ReportStore::new(&dir));
        ctl.register(AgentRegistration {
            node: "node-1".into(),
            interfaces: vec![],
            timestamping: meshdoctor_api::Timestamping::Ebpf,
            probe_port: None,
        });
        ctl.sync_tasks(vec![mk_task_file("mesh")]);
        let plan = ctl
            .wait_plans("node-1", 0, Duration::from_secs(5))
            .await
            .unwrap()
            .remove(0);
        ctl.sync_tasks(vec![]);
        assert!(ctl.tasks().is_empty());
        // The agent's report is still taken, and the round is joined and stored.
        ctl.accept_report(AgentReport::on_plan(
            "node-1",
            &plan,
            meshdoctor_api::Timestamping::Ebpf,
        ))
        .unwrap();
        stored_round(&ctl, "mesh").await;
        assert!(ctl.tasks().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn register(ctl: &Controller, node: &str) {
        ctl.register(AgentRegistration {
            node: node.into(),
            interfaces: vec![],
            timestamping: meshdoctor_api::Timestamping::Ebpf,
            probe_port: None,
        });
    }

    /// Polls the store until round 1 of `task` is there.
    async fn stored_round(ctl: &Controller, task: &str) -> RoundReport {
        let started = std::time::Instant::now();
        loop {
            if let Some(json) = ctl.store().read(task, RoundRef::Latest).await.unwrap() {
                return serde_json::from_slice(&json).unwrap();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "round never stored"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn an_app_round_plans_every_agent_and_judges_their_load() {
        let dir = temp_dir("app");
        let ctl = Controller::new(settings(2), ReportStore::new(&dir));
        register(&ctl, "node-1");
        register(&ctl, "node-2");
        let web = "apiVersion: meshdoctor.io/v1beta1\nkind: AppHttpHealthy\nmetadata: {name: web}\n\
                   spec:\n  request: {qps: 10, durationInSecond: 1, perRequestTimeoutInMS: 200}\n  \
                   expect: {statusCode: 200}\n  target: {host: 'web:8080', method: GET}\n";
        ctl.sync_tasks(vec![mk_file("web.yaml", web)]);
        for node in ["node-1", "node-2"] {
            let plan = ctl
                .wait_plans(node, 0, Duration::from_secs(5))
                .await
                .unwrap()
                .remove(0);
            let app = plan.app.as_ref().expect("an application plan");
            assert_eq!(app.target.label(), "GET http://web:8080");
            assert_eq!(
                (plan.qps, plan.duration_ms, plan.timeout_ms),
                (10, 1000, 200)
            );
            assert!(plan.targets.is_empty());
            let (requests, ok, code) = if node == "node-1" {
                (10, 10, "200")
            } else {
                (10, 0, "404")
            };
            ctl.accept_report(AgentReport {
                app: Some(meshdoctor_api::AppResult {
                    target: app.target.label(),
                    error: None,
                    stats: meshdoctor_api::LoadStats {
                        planned: 10,
                        requests,
                        successes: ok,
                        codes: [(code.to_string(), requests)].into(),
                        ..Default::default()
                    },
                }),
                ..AgentReport::on_plan(node, &plan, meshdoctor_api::Timestamping::Ebpf)
            })
            .unwrap();
        }
        let report = stored_round(&ctl, "web").await;
        assert_eq!(report.status, RoundStatus::Fail);
        assert_eq!(
            report.failure_reasons,
            [
                "success rate 0.5000 is below the expected 1: 10 of 20 requests succeeded \
                 (node-2: 10 of 10 requests failed: codes 404 (10), expected 200)"
            ]
        );
        let app = report.app.as_ref().unwrap();
        assert_eq!(app.agents.len(), 2);
        assert_eq!((report.summary.sent, report.summary.received), (20, 10));
        assert!(report.paths.is_empty() && report.findings.is_empty());
        assert_eq!(status(&ctl, "web").done_round, 1);
        // Application rounds localize nothing, so they have no findings entry.
        assert!(ctl.findings().await.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn an_unreadable_tls_file_fails_the_round_before_any_agent_runs() {
        let dir = temp_dir("app-tls");
        let ctl = Controller::new(settings(1), ReportStore::new(&dir));
        register(&ctl, "node-1");
        let web = "apiVersion: meshdoctor.io/v1beta1\nkind: AppHttpHealthy\nmetadata: {name: web}\n\
                   spec:\n  request: {qps: 10, durationInSecond: 1}\n  \
                   target: {host: 'https://web', method: GET, tlsCaFile: /nonexistent/ca.pem}\n";
        ctl.sync_tasks(vec![mk_file("web.yaml", web)]);
        let report = stored_round(&ctl, "web").await;
        assert_eq!(report.status, RoundStatus::Fail);
        assert_eq!(
            report.failure_reasons.len(),
            1,
            "{:?}",
            report.failure_reasons
        );
        assert!(
            report.failure_reasons[0]
                .starts_with("spec.target.tlsCaFile: cannot read \"/nonexistent/ca.pem\""),
            "{:?}",
            report.failure_reasons
        );
        assert_eq!(report.app.as_ref().unwrap().target, "GET https://web");
        assert!(
            ctl.wait_plans("node-1", 0, Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn findings_are_the_latest_round_of_each_task() {
        let dir = temp_dir("findings");
        let store = ReportStore::new(&dir);
        let mut lossy = RoundReport::test("mesh", 4, RoundStatus::Fail);
        lossy.findings = vec![Finding::test("node-3")];
        store.write(&lossy).await.unwrap();
        store
            .write(&RoundReport::test("mesh", 3, RoundStatus::Succeed))
            .await
            .unwrap();
        // A stored report of a task that is no longer loaded is not shown.
        store
            .write(&RoundReport::test("gone", 1, RoundStatus::Fail))
            .await
            .unwrap();
        let ctl = Controller::new(settings(99), store);
        let broken = TaskFile {
            task: Err("spec: invalid".into()),
            ..mk_task_file("broken")
        };
        ctl.sync_tasks(vec![mk_task_file("mesh"), mk_task_file("idle"), broken]);

        // After a restart, from the store; tasks without a round have no entry.
        let stored = TaskFindings {
            task: "mesh".into(),
            round: 4,
            findings: vec![Finding::test("node-3")],
        };
        assert_eq!(ctl.findings().await, std::slice::from_ref(&stored));

        // A closed round replaces them, an older one does not.
        let healthy = TaskFindings {
            round: 5,
            findings: vec![],
            ..stored.clone()
        };
        ctl.remember_findings(healthy.clone());
        ctl.remember_findings(stored);
        assert_eq!(ctl.findings().await, [healthy]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
