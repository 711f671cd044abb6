//! The round driver: the async IO around the pure core. It executes what the task table
//! decides ([`crate::task_table`]: start or stop a task's schedule, publish its status), runs
//! each task's schedule ([`crate::schedule`]), and runs each round:
//!
//! 1. gather what the round needs from outside: the roster, the backend's Service targets,
//!    the TLS files the task names (read here, on the controller's host);
//! 2. plan it ([`round::plan`], pure) and open it in the [`Mailbox`], which tags and publishes
//!    the plans `start_delay` before the start;
//! 3. wait until every agent reported or the report deadline;
//! 4. close it ([`round::close`], pure) and hand the report to the [`Sinks`] and the task's
//!    status to the backend.
//!
//! Locks are std mutexes held only for short, await-free sections; planning holds none.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use meshdoctor_api::{
    AgentReport, RoundPlan, Task, TaskKind, TaskSpec as _, TaskStatus, TlsMaterial,
    views::{AgentView, TaskFindings, TaskView},
};
use tokio::task::AbortHandle;
use tracing::{error, info, warn};

use crate::{
    apps::target::{TargetError, TlsFile, TlsPart, tls_files},
    backend::{Backend, Standalone},
    limits::{self, Limits},
    lock,
    mailbox::{Collected, Mailbox, ReportError},
    mesh::{RoundMeta, shape::Budget},
    now_ms,
    round::{self, Inputs},
    schedule::{
        effective_start_ms, first_start_ms, next_start_ms, report_deadline_ms, round_deadline_ms,
        round_wanted,
    },
    sinks::{Sinks, metrics::Metrics, store::ReportStore},
    task_table::{Change, Resume, Start, TaskDef, TaskId, TaskSource, TaskTable},
};

/// Round timing knobs (the controller's `--wait-agents`, `--start-delay`, `--report-grace`).
#[derive(Debug, Clone)]
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
    /// Limits on a round's mesh: the probe budget per agent, the most pair-paths.
    pub budget: Budget,
    /// The only directory whose files tasks may name as TLS files (`--tls-dir`): the
    /// controller ships them to every agent, so a task must not name its token or /proc.
    pub tls_dir: PathBuf,
    /// Where and how fast tasks may make agents send.
    pub limits: Limits,
}

/// The controller's `--tls-dir` unless told otherwise.
pub const DEFAULT_TLS_DIR: &str = "/etc/meshdoctor/tls";

/// The task table and the schedules running for it: a runner per source whose table entry
/// started one, kept in step by [`Controller::execute`], their only writer.
struct Tasks {
    table: TaskTable,
    runners: BTreeMap<TaskSource, AbortHandle>,
}

/// The controller: its parts, each with one job, and the loops that drive them.
pub struct Controller {
    settings: Settings,
    /// Who takes part, Service targets, where status goes ([`Standalone`] unless a backend is
    /// set).
    backend: RwLock<Arc<dyn Backend>>,
    roster: crate::roster::Roster,
    mailbox: Mailbox,
    tasks: Mutex<Tasks>,
    /// Tasks whose interrupted rounds were looked for ([`Controller::record_interrupted`]).
    interrupted_checked: Mutex<std::collections::BTreeSet<String>>,
    sinks: Sinks,
}

async fn sleep_until_ms(at_ms: u64) {
    tokio::time::sleep(Duration::from_millis(at_ms.saturating_sub(now_ms()))).await;
}

/// Reads the TLS files of a round's target, on the controller's host, into the PEM material
/// its plans carry; `None` when there are none. Only files inside `dir` are read (symlinks and
/// `..` resolved first). An error names the field and the path.
async fn read_tls(files: &[TlsFile], dir: &Path) -> Result<Option<TlsMaterial>, TargetError> {
    let Some(first) = files.first() else {
        return Ok(None);
    };
    // Resolved once for all the files; an error names the first file's field.
    let inside = tokio::fs::canonicalize(dir)
        .await
        .map_err(|e| TargetError::TlsDir {
            field: first.field,
            dir: dir.display().to_string(),
            reason: e.to_string(),
        })?;
    let mut tls = TlsMaterial::default();
    for f in files {
        let unreadable = |e: std::io::Error| TargetError::Unreadable {
            field: f.field,
            path: f.path.clone(),
            reason: e.to_string(),
        };
        let outside = || TargetError::OutsideTlsDir {
            field: f.field,
            path: f.path.clone(),
            dir: inside.display().to_string(),
        };
        // Before touching the file, so that a task cannot learn what exists elsewhere; and
        // again once symlinks are resolved.
        let named = Path::new(&f.path);
        if !lexically_inside(dir, named) && !lexically_inside(&inside, named) {
            return Err(outside());
        }
        let file = tokio::fs::canonicalize(inside.join(&f.path))
            .await
            .map_err(unreadable)?;
        if !file.starts_with(&inside) {
            return Err(outside());
        }
        let pem = tokio::fs::read_to_string(&file).await.map_err(unreadable)?;
        let part = match f.part {
            TlsPart::Ca => &mut tls.ca_pem,
            TlsPart::Cert => &mut tls.cert_pem,
            TlsPart::Key => &mut tls.key_pem,
        };
        *part = Some(pem);
    }
    Ok((tls != TlsMaterial::default()).then_some(tls))
}

/// Whether `path`, taken from `dir` (an absolute `path` stands alone), stays inside `dir` once
/// its `.` and `..` are applied, without looking at the file system.
fn lexically_inside(dir: &Path, path: &Path) -> bool {
    use std::path::Component;
    let mut at = PathBuf::new();
    for c in dir.join(path).components() {
        match c {
            Component::ParentDir => {
                at.pop();
            }
            Component::CurDir => {}
            c => at.push(c),
        }
    }
    at.starts_with(dir) && at != dir
}

impl Controller {
    pub fn new(settings: Settings, store: ReportStore) -> Arc<Self> {
        let (max_history, pair_metrics) = (settings.max_history, settings.pair_metrics);
        Arc::new(Self {
            settings,
            backend: RwLock::new(Arc::new(Standalone::default())),
            roster: Default::default(),
            mailbox: Mailbox::default(),
            tasks: Mutex::new(Tasks {
                table: TaskTable::new(max_history),
                runners: BTreeMap::new(),
            }),
            sinks: Sinks::new(store, Metrics::new(pair_metrics)),
            interrupted_checked: Mutex::default(),
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

    /// Why the latest round report could not be stored, if it could not (readiness).
    pub async fn store_failure(&self) -> Option<String> {
        self.sinks.store_failure().await
    }

    pub fn store(&self) -> &ReportStore {
        &self.sinks.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.sinks.metrics
    }

    /// Adds or replaces an agent (agents re-register on restart with their current interfaces).
    pub fn register(&self, registration: meshdoctor_api::AgentRegistration) {
        self.roster
            .register(registration, |agents| self.sinks.metrics.set_agents(agents));
    }

    pub fn agents(&self) -> Vec<AgentView> {
        self.roster.agents()
    }

    /// Plans for `node` with a round tag above `after`, oldest first, waiting up to `wait` for
    /// one when there is none yet; `None` when the node is not registered (the agent must
    /// register again, e.g. after a controller restart).
    pub async fn wait_plans(
        &self,
        node: &str,
        after: u32,
        wait: Duration,
    ) -> Option<Vec<Arc<RoundPlan>>> {
        if !self.roster.seen(node) {
            return None;
        }
        Some(self.mailbox.wait_plans(node, after, wait).await)
    }

    /// Takes an agent's report for an open round; a repeated report replaces the earlier one.
    /// The most bytes `node`'s report on round `tag` may have; why it is refused unread.
    pub fn report_limit(&self, node: &str, tag: u32) -> Result<u64, ReportError> {
        let limit = self.mailbox.report_limit(node, tag);
        if let Err(ReportError::NoOpenRound(_)) = limit {
            self.sinks.metrics.late_report();
        }
        limit
    }

    /// Takes `report`, folded into its round (CPU work: called off the async workers).
    pub fn accept_report(&self, report: AgentReport) -> Result<(), ReportError> {
        let node = report.node.clone();
        let delivered = self.mailbox.deliver(report);
        match &delivered {
            Ok(()) => self.sinks.metrics.report_received(&node),
            Err(ReportError::NoOpenRound(_)) => self.sinks.metrics.late_report(),
            Err(_) => {}
        }
        delivered
    }

    pub fn tasks(&self) -> Vec<TaskView> {
        lock(&self.tasks).table.views()
    }

    /// The latest round's findings of every loaded NetReach task that has a round (application
    /// rounds localize nothing).
    pub async fn findings(&self) -> Vec<TaskFindings> {
        let names = lock(&self.tasks).table.names_of(TaskKind::NetReach);
        self.sinks.findings.of(names, &self.sinks.store).await
    }

    /// Makes the running tasks match the definitions: new ones start, changed ones restart
    /// (rounds already open finish under the old spec), removed ones stop (rounds already open
    /// finish and are stored).
    pub fn sync_tasks(self: &Arc<Self>, defs: Vec<TaskDef>) {
        self.sync_tasks_seeded(defs, BTreeMap::new());
    }

    /// [`Self::sync_tasks`], where a task that is new to this controller continues from the
    /// status in `seeds` (by source) when there is one: the status an earlier controller
    /// wrote for the same spec (Kubernetes: a restart or a new leader), so rounds already
    /// done are not run again and the history continues.
    pub fn sync_tasks_seeded(
        self: &Arc<Self>,
        defs: Vec<TaskDef>,
        seeds: BTreeMap<TaskSource, TaskStatus>,
    ) {
        let open = self.mailbox.open_rounds();
        let mut tasks = lock(&self.tasks);
        let changes = tasks.table.apply(defs, seeds, &open, now_ms());
        self.execute(&mut tasks, changes);
    }

    /// Carries out the table's changes. Runs under the tasks lock, so that changes are executed
    /// in the order they were decided; nothing here blocks.
    fn execute(self: &Arc<Self>, tasks: &mut Tasks, changes: Vec<Change>) {
        let backend = self.backend();
        for change in changes {
            match change {
                Change::Stop(source) => {
                    if let Some(runner) = tasks.runners.remove(&source) {
                        info!(%source, "stopping the task's schedule");
                        runner.abort();
                    }
                }
                Change::Invalid { source, error } => {
                    warn!(%source, "skipping an invalid task: {error}");
                }
                Change::Status(source, status) => backend.status_changed(&source, &status),
                Change::Start {
                    id,
                    task,
                    resume,
                    why,
                } => {
                    match why {
                        Start::Loaded => {
                            info!(task = id.name, kind = %task.kind(), source = %id.source, "task loaded")
                        }
                        Start::Changed => info!(
                            task = id.name, source = %id.source,
                            "task changed; its schedule restarts"
                        ),
                        Start::Resumed => {
                            info!(
                                task = id.name,
                                done = resume.done,
                                "task continues from its status"
                            )
                        }
                    }
                    for w in task.warnings() {
                        warn!(task = id.name, "{w}");
                    }
                    let source = id.source.clone();
                    let runner = tokio::spawn(self.clone().run_task(id, task, resume));
                    tasks.runners.insert(source, runner.abort_handle());
                }
            }
        }
    }

    /// A task's schedule loop: waits for the roster, then starts rounds on schedule.
    async fn run_task(self: Arc<Self>, id: TaskId, task: Arc<Task>, mut resume: Resume) {
        self.roster.wait_for(self.settings.wait_agents).await;
        // An interrupted round was a round of the task: it counts, as in the status.
        resume.done = resume
            .done
            .saturating_add(self.record_interrupted(&id, &task).await);
        let offset = self
            .sinks
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
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let schedule = task.schedule();
        let round_number = task.schedule_plan().round_number;
        let round_timeout = task.round_timeout();
        let mut scheduled = first_start_ms(&schedule, now_ms().saturating_add(delay_ms));
        for n in 1..=u32::MAX {
            if !round_wanted(round_number, n.saturating_add(resume.done)) {
                break;
            }
            let Some(this) = scheduled else {
                info!(task = task.name(), "the cron schedule fires no more");
                break;
            };
            scheduled = next_start_ms(&schedule, this);
            sleep_until_ms(this.saturating_sub(delay_ms)).await;
            let start = effective_start_ms(this, now_ms(), delay);
            let next = scheduled.filter(|_| {
                round_wanted(
                    round_number,
                    n.saturating_add(resume.done).saturating_add(1),
                )
            });
            let deadline = round_deadline_ms(start, round_timeout, next);
            let round = offset.max(resume.last_round).unwrap_or(0).saturating_add(n);
            tokio::spawn(
                self.clone()
                    .run_round(id.clone(), task.clone(), round, start, deadline),
            );
        }
    }

    /// Stores and records as failed the rounds of `task` an earlier controller started and
    /// never closed, so that their numbers are taken and the status shows them; how many. Once
    /// per task name: later, running marks are this controller's own rounds.
    async fn record_interrupted(self: &Arc<Self>, id: &TaskId, task: &Task) -> u32 {
        if !lock(&self.interrupted_checked).insert(task.name().to_string()) {
            return 0;
        }
        let store = &self.sinks.store;
        let rounds = store.interrupted(task.name()).await.unwrap_or_else(|e| {
            warn!(
                task = task.name(),
                "cannot look for interrupted rounds: {e}"
            );
            vec![]
        });
        let count = u32::try_from(rounds.len()).unwrap_or(u32::MAX);
        for (round, start_ms) in rounds {
            warn!(task = task.name(), round, "{}", round::INTERRUPTED);
            let now = now_ms();
            let report = self
                .sinks
                .store(round::interrupted(task.name(), round, start_ms, now))
                .await;
            let mut tasks = lock(&self.tasks);
            if let Some(change) = tasks.table.record(id, &report, now, now) {
                self.execute(&mut tasks, vec![change]);
            }
        }
        count
    }

    /// What a round of `task` needs from outside the pure core.
    async fn gather(&self, task: &Task) -> Inputs {
        let backend = self.backend();
        let roster = backend.roster(
            self.roster
                .registrations(|agents| self.sinks.metrics.set_agents(agents)),
        );
        let (service_targets, target_problems) = match task.as_net_reach() {
            Some(net_reach) => backend.service_targets(net_reach),
            None => (vec![], vec![]),
        };
        Inputs {
            roster,
            service_targets,
            target_problems,
            tls: read_tls(&tls_files(task), &self.settings.tls_dir).await,
        }
    }

    /// One round: gather, plan, publish, collect, close, hand the report on.
    async fn run_round(
        self: Arc<Self>,
        id: TaskId,
        task: Arc<Task>,
        round: u32,
        start_ms: u64,
        round_deadline_ms: u64,
    ) {
        let deadline = report_deadline_ms(
            &task.load(),
            start_ms,
            round_deadline_ms,
            self.settings.report_grace,
        );
        if let Err(e) = self
            .sinks
            .store
            .mark_running(&id.name, round, start_ms)
            .await
        {
            warn!(task = id.name, round, "cannot mark the round running: {e}");
        }
        let inputs = self.gather(&task).await;
        let meta = RoundMeta {
            task: &id.name,
            round,
            start_at_ms: start_ms,
            report_deadline_ms: deadline,
            budget: self.settings.budget,
        };
        let (planned, plans) = round::plan(&task, inputs, meta);
        let plans = plans.and_then(|p| {
            limits::check(&p, &self.settings.limits)?;
            Ok(p)
        });
        let collected = match plans {
            Ok(plans) => {
                let agents = plans.len();
                let opened = self.mailbox.open(&id.name, round, plans);
                info!(
                    task = id.name,
                    round,
                    round_tag = opened.tag,
                    agents,
                    "round published"
                );
                tokio::select! {
                    () = sleep_until_ms(deadline) => {}
                    () = opened.all_reported.notified() => {}
                }
                // Only this round closes its tag: it is still open.
                Ok(self.mailbox.close(opened.tag).unwrap_or(Collected {
                    tag: opened.tag,
                    ..Collected::default()
                }))
            }
            Err(e) => {
                warn!(task = id.name, round, "cannot plan the round: {e}");
                Err(e)
            }
        };
        // Closing and accounting go over every path: off the async workers.
        let ctl = self.clone();
        let closing = tokio::task::spawn_blocking(move || {
            let closed = round::close(&task, planned, collected, now_ms());
            ctl.sinks.account(&closed);
            closed.report
        });
        let report = match closing.await {
            Ok(report) => report,
            Err(e) => {
                error!(task = id.name, round, "closing the round failed: {e}");
                return;
            }
        };
        // Stored first: a status that counts the round points to a report that is there.
        let report = self.sinks.store(report).await;
        {
            let mut tasks = lock(&self.tasks);
            if let Some(change) = tasks.table.record(&id, &report, deadline, now_ms()) {
                self.execute(&mut tasks, vec![change]);
            }
        }
        drop(report);
        let _ = tokio::task::spawn_blocking(crate::release_freed_memory).await;
    }
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::{
        AgentRegistration, AppTarget, DnsPlan, DnsProtocol, DnsRecord, RoundReport, RoundStatus,
        routes::RoundRef,
    };

    use super::*;
    use crate::{
        apps::{
            target::{app_target, spec_label},
            tests::{dns_task, dns_task_over, http_task},
        },
        fixtures::temp_dir,
        task_table::tests::mk_def,
    };

    /// [`settings`] for one agent with `dir` as the TLS directory, without limits.
    fn settings_in(dir: &std::path::Path) -> Settings {
        Settings {
            tls_dir: dir.to_path_buf(),
            limits: Default::default(),
            ..settings(1)
        }
    }

    fn settings(wait_agents: usize) -> Settings {
        Settings {
            wait_agents,
            start_delay: Duration::from_millis(100),
            report_grace: Duration::from_millis(100),
            max_history: 10,
            pair_metrics: false,
            budget: Default::default(),
            tls_dir: DEFAULT_TLS_DIR.into(),
            limits: Default::default(),
        }
    }

    fn mk_task_def(name: &str) -> TaskDef {
        mk_def(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: meshdoctor.io/v1beta1\nkind: NetReach\nmetadata: {{name: {name}}}\nspec: {{}}\n"
            ),
        )
    }

    fn status(ctl: &Controller, name: &str) -> TaskStatus {
        let view = ctl.tasks().into_iter().find(|t| t.name == name).unwrap();
        view.status.unwrap()
    }

    /// The TLS material of `task`'s files, read from `dir`, made its target.
    async fn resolve_target(task: &Task, dir: &Path) -> Result<meshdoctor_api::AppTarget, String> {
        read_tls(&tls_files(task), dir)
            .await
            .and_then(|tls| app_target(task, tls))
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn syncing_starts_and_stops_schedules() {
        let dir = temp_dir("sync");
        // No agent ever registers: schedules wait.
        let ctl = Controller::new(settings(99), ReportStore::new(&dir));
        ctl.sync_tasks(vec![mk_task_def("mesh"), mk_task_def("web")]);
        let runners = |ctl: &Controller| -> Vec<String> {
            lock(&ctl.tasks)
                .runners
                .keys()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(runners(&ctl), ["mesh.yaml", "web.yaml"]);
        ctl.sync_tasks(vec![mk_task_def("web")]);
        assert_eq!(runners(&ctl), ["web.yaml"]);
        assert_eq!(ctl.tasks().len(), 1);
        ctl.sync_tasks(vec![]);
        assert!(runners(&ctl).is_empty() && ctl.tasks().is_empty());
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
            labels: Default::default(),
        });
        ctl.sync_tasks(vec![mk_task_def("mesh")]);
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
            labels: Default::default(),
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
        ctl.sync_tasks(vec![mk_def("web.yaml", web)]);
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

    /// Task `web` of `rounds` rounds 3 s apart, an https check whose CA file is missing in the
    /// TLS directory `dir`: its rounds fail at once, before any agent runs. The task and the
    /// missing file.
    fn web_without_its_ca(dir: &Path, rounds: u32) -> (TaskDef, PathBuf) {
        let missing = dir.join("nonexistent/ca.pem");
        let web = format!(
            "apiVersion: meshdoctor.io/v1beta1\nkind: AppHttpHealthy\nmetadata: {{name: web}}\n\
             spec:\n  schedule: {{schedule: '@every 3s', roundNumber: {rounds}}}\n  \
             request: {{qps: 10, durationInSecond: 1}}\n  \
             target: {{host: 'https://web', method: GET, tlsCaFile: {}}}\n",
            missing.display()
        );
        (mk_def("web.yaml", &web), missing)
    }

    /// A restarted standalone controller continues each task from the status the previous one
    /// saved: a one-round task that ran does not run again, and its history is kept.
    #[tokio::test]
    async fn a_restarted_controller_continues_from_the_saved_status() {
        use crate::status_files::StatusFiles;

        let dir = temp_dir("saved-status");
        let saved = dir.join("status");
        let start = |files: StatusFiles| {
            let ctl = Controller::new(settings_in(&dir), ReportStore::new(&dir));
            ctl.set_backend(Arc::new(Standalone::saving(files)));
            register(&ctl, "node-1");
            ctl
        };
        let first = start(StatusFiles::new(saved.clone()));
        first.sync_tasks(vec![web_without_its_ca(&dir, 1).0]);
        let started = std::time::Instant::now();
        let seeds = loop {
            let seeds = StatusFiles::new(saved.clone()).load();
            if seeds.values().any(|s| s.finish) {
                break seeds;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "{seeds:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        first.sync_tasks(vec![]);
        let second = start(StatusFiles::new(saved.clone()));
        second.sync_tasks_seeded(vec![web_without_its_ca(&dir, 1).0], seeds);
        // Time for a round to start if one were due.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = status(&second, "web");
        assert_eq!(
            (s.done_round, s.finish, s.history.len()),
            (1, true, 1),
            "{s:?}"
        );
        assert_eq!(s.history[0].round_number, 1, "{s:?}");
        assert_eq!(second.store().latest_round("web").await.unwrap(), Some(1));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A round an earlier controller started and never closed (it left the round's running
    /// mark) is stored and recorded as interrupted, and its number is not used again.
    #[tokio::test]
    async fn an_interrupted_round_is_recorded_and_its_number_not_reused() {
        let dir = temp_dir("interrupted");
        let store = ReportStore::new(&dir);
        store.mark_running("web", 4, 1_000).await.unwrap();
        let ctl = Controller::new(settings_in(&dir), store.clone());
        register(&ctl, "node-1");
        ctl.sync_tasks(vec![web_without_its_ca(&dir, 2).0]);
        let started = std::time::Instant::now();
        let mut rounds = loop {
            let history = status(&ctl, "web").history;
            if history.len() >= 2 {
                break history
                    .iter()
                    .map(|h| (h.round_number, h.status))
                    .collect::<Vec<_>>();
            }
            assert!(started.elapsed() < Duration::from_secs(20), "{history:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        rounds.sort_by_key(|(n, _)| *n);
        assert_eq!(rounds, [(4, RoundStatus::Fail), (5, RoundStatus::Fail)]);
        // The interrupted round counts: two rounds of two, no third.
        let s = status(&ctl, "web");
        assert_eq!((s.done_round, s.finish), (2, true), "{s:?}");
        // Past the time of a third round: none ran.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(store.latest_round("web").await.unwrap(), Some(5));
        let json = store
            .read("web", RoundRef::Number(4))
            .await
            .unwrap()
            .unwrap();
        let interrupted: RoundReport = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            (interrupted.failure_reasons, interrupted.start_ms),
            (vec![round::INTERRUPTED.to_string()], 1_000)
        );
        assert_eq!(store.interrupted("web").await.unwrap(), []);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A round whose report cannot be written (here the reports directory is a file) is a
    /// failed round in the status, saying why, and readiness fails until the store can take a
    /// write again.
    #[tokio::test]
    async fn a_report_that_cannot_be_stored_fails_its_round_and_readiness() {
        let dir = temp_dir("store-fails");
        std::fs::write(dir.join("reports"), "not a directory").unwrap();
        let ctl = Controller::new(settings(1), ReportStore::new(&dir));
        register(&ctl, "node-1");
        ctl.sync_tasks(vec![mk_task_def("mesh")]);
        let started = std::time::Instant::now();
        let history = loop {
            let history = status(&ctl, "mesh").history;
            if !history.is_empty() {
                break history;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no round recorded"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(history[0].status, RoundStatus::Fail, "{history:?}");
        assert!(
            history[0]
                .failure_reasons
                .iter()
                .any(|r| r.starts_with("the round's report could not be stored: ")),
            "{history:?}"
        );
        let failure = ctl.store_failure().await.expect("readiness fails");
        assert!(
            failure.starts_with("the round's report could not be stored: "),
            "{failure}"
        );
        std::fs::remove_file(dir.join("reports")).unwrap();
        assert_eq!(ctl.store_failure().await, None, "readiness is back");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn an_unreadable_tls_file_fails_the_round_before_any_agent_runs() {
        let dir = temp_dir("app-tls");
        let ctl = Controller::new(settings_in(&dir), ReportStore::new(&dir));
        register(&ctl, "node-1");
        let (web, missing) = web_without_its_ca(&dir, 1);
        ctl.sync_tasks(vec![web]);
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
                .starts_with(&format!("spec.target.tlsCaFile: cannot read {missing:?}")),
            "{:?}",
            report.failure_reasons
        );
        assert_eq!(report.app.as_ref().unwrap().target, "GET https://web");
        // It never started: it does not end before its start, in the report or the history.
        assert!(report.start_ms <= report.end_ms, "{report:?}");
        // The status is recorded just after the report is stored.
        let started = std::time::Instant::now();
        let history = loop {
            if let Some(first) = status(&ctl, "web").history.front().cloned() {
                break first;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "round never recorded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(history.start_ms <= history.end_ms, "{history:?}");
        assert!(
            ctl.wait_plans("node-1", 0, Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn tls_files_are_read_on_the_controller_and_shipped_as_pem() {
        let dir = crate::fixtures::temp_dir("tls");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "CA PEM").unwrap();
        let task = http_task(
            &format!(", host: 'https://web', tlsCaFile: {}", ca.display()),
            "",
        );
        let target = resolve_target(&task, &dir).await.unwrap();
        let AppTarget::Http(h) = target else {
            panic!("not http")
        };
        assert_eq!(
            h.tls,
            Some(TlsMaterial {
                ca_pem: Some("CA PEM".into()),
                ..Default::default()
            })
        );
        // A missing file names the field and the path.
        let missing = dir.join("nope.pem");
        let task = http_task(
            &format!(
                ", host: 'https://web', tlsCertFile: {0}, tlsKeyFile: {0}",
                missing.display()
            ),
            "",
        );
        let err = resolve_target(&task, &dir).await.unwrap_err();
        assert!(
            err.starts_with("spec.target.tlsCertFile: cannot read")
                && err.contains("nope.pem")
                && err.contains("on the controller"),
            "{err}"
        );
        // Plain http ships no TLS material (the task warns that it is unused).
        let plain = http_task(&format!(", host: web, tlsCaFile: {}", ca.display()), "");
        let Ok(AppTarget::Http(h)) = resolve_target(&plain, &dir).await else {
            panic!("not http")
        };
        assert_eq!(h.tls, None);
        // A DNS target without TLS files resolves too.
        assert!(
            resolve_target(&dns_task("{targetUser: {server: 192.0.2.1}}"), &dir)
                .await
                .is_ok()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A task may name only files in the controller's TLS directory: not its token, not
    /// /proc, not by `..` nor through a symlink.
    #[tokio::test]
    async fn tls_files_outside_the_tls_directory_are_refused() {
        let base = crate::fixtures::temp_dir("tls-dir");
        let dir = base.join("tls");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), "CA PEM").unwrap();
        std::fs::write(base.join("token"), "secret").unwrap();
        std::os::unix::fs::symlink(base.join("token"), dir.join("link.pem")).unwrap();
        let ca_task =
            |path: &str| http_task(&format!(", host: 'https://web', tlsCaFile: '{path}'"), "");
        let ca = dir.join("ca.pem").display().to_string();
        let AppTarget::Http(h) = resolve_target(&ca_task(&ca), &dir).await.unwrap() else {
            panic!("not http")
        };
        assert_eq!(h.tls.unwrap().ca_pem.as_deref(), Some("CA PEM"));
        let token = base.join("token").display().to_string();
        let climbing = format!("{}/../token", dir.display());
        let link = dir.join("link.pem").display().to_string();
        for path in [
            token.as_str(),
            "/proc/self/environ",
            &climbing,
            &link,
            "/nonexistent/x.pem",
        ] {
            let err = resolve_target(&ca_task(path), &dir).await.unwrap_err();
            assert!(
                err.starts_with("spec.target.tlsCaFile: ")
                    && err.contains("is outside the controller's TLS directory")
                    && err.contains("--tls-dir"),
                "{path}: {err}"
            );
        }
        // A TLS directory that is not there is named.
        let err = resolve_target(&ca_task(&ca), &base.join("none"))
            .await
            .unwrap_err();
        assert!(
            err.contains("the controller's TLS directory") && err.contains("none"),
            "{err}"
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    #[tokio::test]
    async fn dns_over_tls_ships_the_ca_and_server_name_and_defaults_to_853() {
        let dir = crate::fixtures::temp_dir("dns-tls");
        let ca = dir.join("dns-ca.pem");
        std::fs::write(&ca, "DNS CA PEM").unwrap();
        let user = format!(
            "{{targetUser: {{server: 192.0.2.254, tlsCaFile: {}, tlsServerName: dns.lab.test}}}}",
            ca.display()
        );
        let dot = dns_task_over("tcp-tls", &user);
        let Ok(AppTarget::Dns(d)) = resolve_target(&dot, &dir).await else {
            panic!("not dns")
        };
        assert_eq!(
            d,
            DnsPlan {
                server: "192.0.2.254:853".parse().unwrap(),
                protocol: DnsProtocol::TcpTls,
                domain: "web.lab.test.".into(),
                record: DnsRecord::A,
                tls_server_name: Some("dns.lab.test".into()),
                tls_ca_pem: Some("DNS CA PEM".into()),
            }
        );
        assert_eq!(spec_label(&dot), "tcp-tls 192.0.2.254:853 web.lab.test.");

        // Without the TLS fields: no CA (webpki roots) and the IP as the name; a port given
        // stays.
        let bare = dns_task_over("tcp-tls", "{targetUser: {server: 192.0.2.254, port: 8853}}");
        let Ok(AppTarget::Dns(d)) = resolve_target(&bare, &dir).await else {
            panic!("not dns")
        };
        assert_eq!(d.server.port(), 8853);
        assert_eq!((d.tls_ca_pem, d.tls_server_name), (None, None));

        // udp and tcp keep port 53 and ship nothing TLS, not even a CA file that is missing.
        let missing = dir.join("nope.pem");
        let unused = format!(
            "{{targetUser: {{server: 192.0.2.254, tlsCaFile: {}, tlsServerName: dns.lab.test}}}}",
            missing.display()
        );
        for protocol in ["udp", "tcp"] {
            let Ok(AppTarget::Dns(d)) =
                resolve_target(&dns_task_over(protocol, &unused), &dir).await
            else {
                panic!("{protocol}: not dns")
            };
            assert_eq!(d.server.port(), 53, "{protocol}");
            assert_eq!(
                (d.tls_ca_pem, d.tls_server_name),
                (None, None),
                "{protocol}"
            );
        }
        // Over tcp-tls the missing file fails the round, naming the field and the path.
        let err = resolve_target(&dns_task_over("tcp-tls", &unused), &dir)
            .await
            .unwrap_err();
        assert!(
            err.starts_with("spec.target.targetUser.tlsCaFile: cannot read")
                && err.contains("nope.pem")
                && err.contains("on the controller"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
